"""The front layer: the one pure-ASGI layer every HTTP request passes before the router.

In order, for each request, with its headers read once:

    request id and record    X-Request-Id taken (or made) and echoed; the record the summary
                             line is written from when the response is over, disconnects included
    Host (hosts.py)          not one of ours (DNS rebinding): 403, empty body, before anything else
    CORS (cors.py)           a refused origin 403, a preflight 204; otherwise its headers added
    path prefix              `GATEWAY_ROOT_PATH` dropped from the front of the path (prefix.py)
    trailing slash           `/api/tags/` served as `/api/tags` (slashes.py)
    health probes            `/health/live` and `/health/ready` answered here, before auth
                             (observability.py)
    the map in force         pinned to the request (routing/live.py); a reload meanwhile does not
                             change it; the request context made (context.py)
    auth (auth.py)           routes.yaml `auth`: a request without a valid key gets 401
    key limits               a key's `limits` (keylimits.py): 429 with Retry-After beyond them;
                             a key without them costs nothing here
    the guard (guard.py)     body limit, cancellation on disconnect, the shutdown drain
    dispatch                 the hot endpoints (`Direct`: chat, generate, embed, the `/v1` relays)
                             called straight, without FastAPI's routing, exception middleware and
                             request handler; every other request goes to the FastAPI app

With `--log-level debug` a request that did not end well also leaves a `failed` event (the
stage it was in, why); with tracing on (tracing.py) its server span starts and ends here.
When the response is over, the request is counted in the metrics (gateway/metrics.py, its
endpoint label the route's path template) right after its summary line.

An exception no handler caught is answered with Ollama's JSON 500 and logged as one
`unhandled_exception` line (type, message, where), not a traceback per request. Nothing here runs
per streamed chunk but the send wrapper's two comparisons.
"""

from __future__ import annotations

import secrets as token_source
import time
from collections.abc import Awaitable, Callable, Mapping
from contextvars import Token
from typing import NamedTuple

import anyio
import structlog
from starlette.requests import Request
from starlette.responses import Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from gateway import logs, tracing
from gateway.errors import GatewayError, KeyLimited, error_response
from gateway.http.auth import bearer_value, is_open, unauthorized
from gateway.http.context import CONTEXT_KEY, RequestContext
from gateway.http.cors import Cors
from gateway.http.guard import Drain, RequestGuard
from gateway.http.hosts import HostPolicy, refusal
from gateway.http.keylimits import Admitted, admit, refuse
from gateway.http.prefix import without_root_path
from gateway.http.observability import HEALTH_METHODS, HEALTH_PATHS, answer_health
from gateway.http.slashes import without_trailing_slash
from gateway.logs import ContentLogMiddleware, RequestRecord
from gateway.routing.live import LiveGateway
from gateway.upstream.redact import CLIENT_KEY

log = structlog.get_logger()

_REQUEST_ID_HEADER = b"x-request-id"
_EMPTY = [(b"content-length", b"0")]


class Direct(NamedTuple):
    """A hot endpoint the front layer calls itself: its handler, and how its errors are answered."""

    handler: Callable[[Request], Awaitable[Response]]
    on_error: Callable[[Request, Exception], Awaitable[Response]]


class Front:
    """The front layer around the app (see the module docstring)."""

    def __init__(
        self, app: ASGIApp, *, live: LiveGateway, hosts: HostPolicy, cors: Cors, drain: Drain, max_body_bytes: int,
        log_content: bool = False, direct: Mapping[tuple[str, str], Direct] | None = None, root_path: str = "",
        endpoints: frozenset[str] = frozenset(),
    ) -> None:
        self.app = app
        self.root_path = root_path  # GATEWAY_ROOT_PATH (prefix.py); "" serves at the root only
        self.direct = dict(direct or {})
        # The paths that are their own metrics label (the app's routes without a parameter).
        self.endpoints = endpoints | {path for _, path in self.direct} | HEALTH_PATHS
        self.drain = drain
        self.live = live
        self.hosts = hosts
        self.cors = cors
        # Prompts and completions in the log only when asked (GATEWAY_LOG_CONTENT, debugging).
        inner: ASGIApp = ContentLogMiddleware(self._dispatch) if log_content else self._dispatch
        self.guard = RequestGuard(inner, drain=drain, max_body_bytes=max_body_bytes)

    async def _dispatch(self, scope: Scope, receive: Receive, send: Send) -> None:
        """A hot endpoint straight to its handler; anything else through FastAPI."""
        direct = self.direct.get((scope["method"], scope["path"]))
        if direct is None:
            await self.app(scope, receive, send)
            return
        request = Request(scope, receive)
        try:
            response = await direct.handler(request)
        except GatewayError as exc:
            response = await direct.on_error(request, exc)
        await response(scope, receive, send)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        host = origin = authorization = request_id = None
        foreign_host: str | None = None
        for name, value in scope["headers"]:
            if name == b"host":
                host = value.decode("latin-1")
                if foreign_host is None and not self.hosts.allows(host):
                    foreign_host = host
            elif name == b"origin":
                origin = value.decode("latin-1")
            elif name == b"authorization":
                authorization = value
            elif name == b"x-api-key" and authorization is None:  # Anthropic's clients
                authorization = b"Bearer " + value
            elif name == _REQUEST_ID_HEADER:
                request_id = _usable_request_id(value)
        request_id = request_id or token_source.token_hex(8)
        record = RequestRecord(request_id, scope["method"], scope["path"])
        tracer = tracing.TRACER
        if tracer is not None:
            record.span = tracer.start_request(scope, record)
        structlog.contextvars.bind_contextvars(request_id=request_id)
        added = [(_REQUEST_ID_HEADER, request_id.encode("latin-1"))]
        served = scope

        async def send_with_id(message: Message) -> None:
            if message["type"] == "http.response.start":
                record.status = message["status"]
                message["headers"] = [*message.get("headers", ()), *added]
            elif not record.first_byte and message.get("body"):
                record.first_byte = time.perf_counter_ns()
            await send(message)

        try:
            if foreign_host is not None:
                record.fail(refusal(foreign_host))
                await _answer(send_with_id, 403, _EMPTY)
                return
            status, cors_headers = self.cors.check(origin, host or "", scope["method"])
            if status is not None:
                await _answer(send_with_id, status, [*cors_headers, *_EMPTY])
                return
            added += cors_headers
            served = without_root_path(scope, self.root_path) if self.root_path else scope
            served = without_trailing_slash(served)
            await self._serve(served, receive, send_with_id, record, authorization)
        except Exception as exc:
            await self._crashed(exc, scope, receive, send_with_id, record)
        except BaseException as exc:
            record.outcome = "client_disconnected" if isinstance(exc, anyio.get_cancelled_exc_class()) else "crashed"
            raise
        finally:
            if record.status >= 500 and record.outcome == "ok":
                record.outcome = "error"
            if logs.DEBUG and record.outcome != "ok":
                log.debug("failed", where=record.stage(), why=record.error or record.outcome, status=record.status)
            if tracer is not None:
                fields = record.fields()
                tracer.end_request(record, fields)
                if logs.INFO:
                    logs.request_log().info("request", **fields)
            elif logs.INFO:
                logs.request_log().info("request", **record.fields())
            _observe(record, self._endpoint(served))
            structlog.contextvars.unbind_contextvars("request_id")

    def _endpoint(self, scope: Scope) -> str:
        """The metrics label of a request's path: itself if it is a route's, else the template
        of the route FastAPI matched, else `other` (never a raw path: labels stay bounded)."""
        path: str = scope["path"]
        if path in self.endpoints:
            return path
        template = getattr(scope.get("route"), "path", None)
        return template if isinstance(template, str) else "other"

    async def _serve(self, scope: Scope, receive: Receive, send: Send, record: RequestRecord, authorization: bytes | None) -> None:
        if scope["path"] in HEALTH_PATHS and scope["method"] in HEALTH_METHODS:
            await answer_health(send, scope["path"], scope["method"], loaded=self.live.loaded, ready=self.drain.ready)
            return
        snapshot = self.live.current
        state = snapshot.state
        context = RequestContext(record, state)
        scope[CONTEXT_KEY] = context
        key_token: Token[str | None] | None = None
        admitted: Admitted | None = None
        if state.auth is not None:
            if not is_open(scope["method"], scope["path"]):
                grant = context.grant = state.auth.check(authorization)
                if grant is None:
                    await unauthorized(send, scope["path"])
                    return
                if grant.limits is not None:  # a key without limits asks the store nothing
                    verdict = await admit(state.clients.shared, grant)
                    if isinstance(verdict, KeyLimited):
                        await refuse(scope, receive, send, verdict)
                        return
                    admitted = verdict
        elif snapshot.passes_client_key:
            key_token = CLIENT_KEY.set(bearer_value(authorization))
        snapshot.users += 1
        try:
            await self.guard.serve(scope, receive, send, record)
        finally:
            if admitted is not None:
                await admitted.done(record)
            snapshot.users -= 1
            if snapshot.retired and not snapshot.users:
                self.live.collect()
            if key_token is not None:
                CLIENT_KEY.reset(key_token)

    async def _crashed(self, exc: Exception, scope: Scope, receive: Receive, send: Send, record: RequestRecord) -> None:
        """A bug of ours, not the client's: one line and a JSON 500, not a traceback per request
        and the server's plain-text 500. A response already started is cut short (the server
        closes the connection without ending the body, as it would on a raise)."""
        error = exc if isinstance(exc, GatewayError) else None
        if error is None:
            text = self.live.secrets.scrub(f"{type(exc).__name__}: {exc}")  # no upstream key in the log
            log.error("unhandled_exception", exception=text, where=_where(exc))
            error = internal_error(record)
        record.fail(error, after_first_byte=bool(record.status))
        if not record.status:
            await error_response(error)(scope, receive, send)


def _observe(record: RequestRecord, endpoint: str) -> None:
    from gateway import metrics  # the workers' only: the Granian master never loads prometheus-client

    try:
        metrics.observe_request(record, endpoint)
    except Exception as exc:  # never the request's problem
        log.warning("metrics_failed", exception=f"{type(exc).__name__}: {exc}")


def internal_error(record: RequestRecord) -> GatewayError:
    """What a client gets for a bug of ours (FastAPI's routes answer it too, app.py)."""
    return GatewayError(f"internal error in the gateway (request id {record.request_id})", headers={"Connection": "close"})


async def _answer(send: Send, status: int, headers: list[tuple[bytes, bytes]]) -> None:
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": b"", "more_body": False})


def _usable_request_id(value: bytes) -> str | None:
    text = value.decode("latin-1")
    # Echoed into a header and logs: keep it short and printable.
    return text if 0 < len(text) <= 128 and text.isprintable() else None


def _where(exc: BaseException) -> str:
    """The innermost frame of the exception's traceback: `folder/file.py:line in function`."""
    tb = exc.__traceback__
    if tb is None:
        return "unknown"
    while tb.tb_next is not None:
        tb = tb.tb_next
    code = tb.tb_frame.f_code
    return f"{'/'.join(code.co_filename.split('/')[-2:])}:{tb.tb_lineno} in {code.co_name}"
