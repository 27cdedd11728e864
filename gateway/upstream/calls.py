"""Calls to the OpenAI-compatible upstreams: the only module that imports `openai`.

One `AsyncOpenAI` client per upstream per worker, made at start-up and closed at shutdown, with
a connection pool sized for many concurrent streams and keep-alive on. Requests go through the
SDK's client (base URL, auth, headers, timeouts, retries before the first byte, status errors),
but as raw responses: bodies are parsed with orjson and streams with `sse.SSEDecoder`, so no SDK
model object is built per request or per chunk (issue 3).

`upstream_errors()` classifies every SDK and transport failure (an upstream status, or a fault
such as "dns", "tls", "idle", "cut") and builds the error from `errors.UPSTREAM_FAULTS`, with the
upstream's own message and never a credential: every upstream text is scrubbed of the route
map's secrets (`redact.Secrets`) first and cut short after. Each upstream request holds a slot of
the worker's `limits.UpstreamLimiter` until its response is closed.

What `/v1` relays (`Relay`) is scrubbed too: an error object in every field, a body that is not
an event stream as a whole. An event stream is passed on as it arrives, and only the network
reads that mention `error` (and every read after the first such one) are scrubbed: the healthy
chunks of a stream are relayed unparsed, so a secret a model writes into its completion is not
masked there.
"""

from __future__ import annotations

import re
import socket
import ssl
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager, contextmanager
from typing import Any

import httpx2
import openai
import orjson

from gateway.errors import (
    GatewayError,
    UpstreamRelayed,
    UpstreamUnavailable,
    upstream_fault,
)
from gateway.upstream.limiter import UpstreamLimiter
from gateway.upstream.redact import CLIENT_KEY, Secrets
from gateway.routing.resolver import RouteMap, Target
from gateway.routing.schema import UpstreamConfig
from gateway.upstream.sse import MalformedEvent, SSEDecoder
from gateway.upstream.transport import AiohttpTransport

_JSON_HEADERS = {"Content-Type": "application/json"}
_MAX_CONNECTIONS = 4096  # per upstream per worker: room for thousands of concurrent streams
_KEEPALIVE_EXPIRY = 30.0
_MESSAGE_LIMIT = 1000  # characters of an upstream's message kept (after scrubbing)
_EXCERPT_LIMIT = 200
_EXCERPT_HEAD = 4096  # bytes of an unexpected body looked at for its excerpt
_SNIFF_BYTES = 16  # enough to tell `data:`/`:`/`event:` from JSON or HTML
_NOT_SSE_LIMIT = 64 * 1024  # how much of a body that is not an event stream is read to explain it
_SSE_STARTS = (b"data:", b":", b"event:", b"id:", b"retry:")
_TAG = re.compile(rb"<[^>]*>")


Client = openai.AsyncOpenAI


async def close_clients(clients: list[Client]) -> None:
    for client in clients:
        await client.close()


class UpstreamClients:
    """The per-worker set of upstream clients, by upstream name."""

    def __init__(
        self,
        route_map: RouteMap,
        previous: UpstreamClients | None = None,
        limiter: UpstreamLimiter | None = None,
        max_answer_bytes: int | None = None,
    ) -> None:
        # A reloaded map keeps the client (and its pooled connections) of every upstream whose
        # settings did not change (see reload.py).
        self._configs = dict(route_map.upstreams)
        self._clients: dict[str, Client] = {
            name: previous._clients[name]
            if previous is not None and previous._configs.get(name) == config
            else _make_client(config)
            for name, config in route_map.upstreams.items()
        }
        self.secrets = route_map.secrets
        # One limit per worker, whatever reloads happen: a reloaded set keeps its predecessor's.
        self.limiter: UpstreamLimiter = limiter or (previous.limiter if previous is not None else UpstreamLimiter(1 << 30, 0.0))
        # GATEWAY_MAX_UPSTREAM_ANSWER_BYTES: the most a non-streamed answer may be (502 beyond).
        self.max_answer_bytes: int = max_answer_bytes or (previous.max_answer_bytes if previous is not None else 1 << 62)

    def scrub(self, text: str) -> str:
        """`text` with every secret of the route map masked (for error messages of any origin)."""
        return self.secrets.scrub(text)

    async def aclose(self) -> None:
        for client in self._clients.values():
            await client.close()

    def left_out_of(self, successor: UpstreamClients) -> list[Client]:
        """This set's clients that `successor` does not reuse (to close once nothing uses them)."""
        kept = {id(client) for client in successor._clients.values()}
        return [client for client in self._clients.values() if id(client) not in kept]

    def uses(self, client: Client) -> bool:
        return any(mine is client for mine in self._clients.values())

    async def list_models(self, upstream_name: str, timeout: float) -> list[dict[str, Any]]:
        """The `data` of the upstream's `GET /models` (discovery); GatewayError on any failure."""
        client = self._clients[upstream_name]
        try:
            response = await client.get("/models", cast_to=httpx2.Response, options={"timeout": timeout})
            body = orjson.loads(await response.aread())
        except openai.APIStatusError as exc:
            raise UpstreamUnavailable(f"upstream '{upstream_name}' answered {exc.status_code} to GET /models") from exc
        except (openai.APIError, httpx2.HTTPError) as exc:
            raise UpstreamUnavailable(f"upstream '{upstream_name}' GET /models failed: {_cause(exc, self.secrets)}") from exc
        except orjson.JSONDecodeError as exc:
            raise UpstreamUnavailable(f"upstream '{upstream_name}' sent a model list that is not JSON") from exc
        data = body.get("data") if isinstance(body, dict) else body
        if not isinstance(data, list):
            raise UpstreamUnavailable(f"upstream '{upstream_name}' sent a model list without 'data'")
        return [entry for entry in data if isinstance(entry, dict)]

    def _client(self, target: Target) -> openai.AsyncOpenAI:
        variable = target.upstream.missing_key_variable
        if variable and not (target.upstream.pass_client_key and CLIENT_KEY.get()):
            raise UpstreamUnavailable(
                f"upstream '{target.upstream_name}' has no API key: set the environment variable {variable}"
            )
        return self._clients[target.upstream_name]

    async def post(self, target: Target, path: str, body: dict[str, Any], model_name: str) -> dict[str, Any]:
        """POST a JSON body and return the upstream's JSON answer."""
        client = self._client(target)
        async with self.limiter.slot():
            with upstream_errors(target, model_name, self.secrets):
                # stream=True: the SDK returns once the status line is in, so a failure while the
                # body is read is told apart ("cut", "idle") from one before it ("no_answer").
                response = await client.post(
                    path, cast_to=httpx2.Response, content=orjson.dumps(body), options={"headers": _JSON_HEADERS}, stream=True
                )
                try:
                    content = await read_capped(response, self.max_answer_bytes, target)
                finally:
                    await response.aclose()
        try:
            answer = orjson.loads(content)
        except orjson.JSONDecodeError as exc:
            raise _fault("not_json", target, self.secrets, _excerpt(content, self.secrets)) from exc
        if not isinstance(answer, dict):
            raise _fault("not_object", target, self.secrets)
        return answer

    @asynccontextmanager
    async def stream(
        self, target: Target, path: str, body: dict[str, Any], model_name: str
    ) -> AsyncIterator[EventStream]:
        """POST a streaming request; the status is checked before this yields."""
        client = self._client(target)
        async with self.limiter.slot():
            with upstream_errors(target, model_name, self.secrets):
                response = await client.post(
                    path,
                    cast_to=httpx2.Response,
                    content=orjson.dumps(body),
                    options={"headers": _JSON_HEADERS},
                    stream=True,
                )
            try:
                yield EventStream(response, target, model_name, self.secrets)
            finally:
                await response.aclose()

    async def relay(self, target: Target, path: str, content: bytes, model_name: str) -> Relay:
        """POST `content` as is and return the upstream's un-read answer (the `/v1` surface).

        The caller closes the returned `Relay`. An upstream error status raises `UpstreamRelayed`
        with the upstream's own status and error object; credential problems still become 502.
        """
        client = self._client(target)
        await self.limiter.acquire()
        try:
            with upstream_errors(target, model_name, self.secrets):
                try:
                    response = await client.post(
                        path, cast_to=httpx2.Response, content=content, options={"headers": _JSON_HEADERS}, stream=True
                    )
                except openai.APIStatusError as exc:
                    if exc.status_code in (401, 403):
                        raise  # upstream_errors: 502, and never the upstream's text (it may quote the key)
                    raise _relayed(exc.status_code, exc.body, exc.response.headers, target, self.secrets) from exc
        except BaseException:
            self.limiter.release()
            raise
        return Relay(response, target, model_name, self.secrets, self.limiter.release, self.max_answer_bytes)


class Relay:
    """An upstream answer passed through as bytes: its content type, then its body as it arrives.

    The body is scrubbed of the route map's secrets: whole when it is read whole (`read`), and
    in a stream (`chunks`) from the first network read that mentions `error` on (an error event
    such as `data: {"error": ...}` or `event: error`, and whatever follows it). The other reads
    of a stream pass unparsed and unscrubbed: a scan per chunk is what the hot path cannot pay.
    """

    __slots__ = ("_response", "_target", "_model_name", "_secrets", "_release", "_max_bytes")

    def __init__(
        self, response: httpx2.Response, target: Target, model_name: str, secrets: Secrets,
        release: Callable[[], None] | None = None, max_bytes: int = 1 << 62,
    ) -> None:
        self._response = response
        self._target = target
        self._model_name = model_name
        self._secrets = secrets
        self._release = release  # gives back the upstream slot, once
        self._max_bytes = max_bytes  # for `read()`, the non-streamed answer

    @property
    def content_type(self) -> str:
        return self._secrets.scrub(self._response.headers.get("content-type", "application/json"))

    @property
    def is_event_stream(self) -> bool:
        return self.content_type.lower().startswith("text/event-stream")

    async def read(self) -> bytes:
        """The whole body (at most the answer limit), scrubbed."""
        with upstream_errors(self._target, self._model_name, self._secrets):
            return self._secrets.scrub_bytes(await read_capped(self._response, self._max_bytes, self._target))

    async def chunks(self) -> AsyncGenerator[bytes, None]:
        """The body in network reads (decompressed if the upstream compressed it), error reads scrubbed."""
        scrub = self._secrets.scrub_bytes
        scrubbing = False
        with upstream_errors(self._target, self._model_name, self._secrets):
            async for data in self._response.aiter_bytes():
                # `error` in a read: an error event (or its start); a secret cut across two reads
                # is masked in both halves, as a prefix and as a suffix, since every later read is
                # scrubbed too.
                if scrubbing or b"error" in data:
                    scrubbing = True
                    data = scrub(data)
                yield data

    async def aclose(self) -> None:
        try:
            await self._response.aclose()
        finally:
            release, self._release = self._release, None
            if release is not None:
                release()


class EventStream:
    """The decoded SSE events of one upstream response."""

    __slots__ = ("_response", "_target", "_model_name", "_secrets", "_decoder")

    def __init__(self, response: httpx2.Response, target: Target, model_name: str, secrets: Secrets) -> None:
        self._response = response
        self._target = target
        self._model_name = model_name
        self._secrets = secrets
        self._decoder = SSEDecoder()

    @property
    def saw_done(self) -> bool:
        """True once the `[DONE]` sentinel arrived."""
        return self._decoder.done

    async def batches(self) -> AsyncIterator[list[dict[str, Any]]]:
        """Events grouped as they arrived in network reads (each read may hold several events)."""
        decoder = self._decoder
        with upstream_errors(self._target, self._model_name, self._secrets):
            reads: AsyncIterator[bytes] = self._response.aiter_bytes()
            if "event-stream" not in self._response.headers.get("content-type", ""):
                reads = self._sniffed(reads)
            async for data in reads:
                events = decoder.feed(data)
                if events:
                    yield events
                    decoder.feed(b"")  # raises a malformed event that followed these in the read
                if decoder.done:
                    return
            tail = decoder.close()
        if tail:
            yield tail

    async def _sniffed(self, reads: AsyncIterator[bytes]) -> AsyncIterator[bytes]:
        """The reads of a body not labelled as an event stream, if it reads as one all the same.

        Otherwise it is an answer the SSE decoder would silently skip (a JSON error object with
        status 200, an HTML page from a proxy): explain it instead.
        """
        head = b""
        async for data in reads:
            head += data
            if len(head) >= _SNIFF_BYTES:
                break
        if head and not head.lstrip(b"\xef\xbb\xbf \t\r\n").startswith(_SSE_STARTS):
            body = head
            async for data in reads:
                body += data
                if len(body) > _NOT_SSE_LIMIT:
                    break
            raise _not_event_stream(body, self._response.headers, self._target, self._model_name, self._secrets)
        if head:
            yield head
        async for data in reads:
            yield data


_NO_SECRETS = Secrets()  # for a detail that holds no upstream text (a number)


async def read_capped(response: httpx2.Response, limit: int, target: Target) -> bytes:
    """The whole body, or the "too_large" fault (502) as soon as it passes `limit` bytes."""
    declared = response.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        raise _fault("too_large", target, _NO_SECRETS, str(limit))
    parts: list[bytes] = []
    size = 0
    async for data in response.aiter_bytes():
        size += len(data)
        if size > limit:
            raise _fault("too_large", target, _NO_SECRETS, str(limit))
        parts.append(data)
    return b"".join(parts)


@contextmanager
def upstream_errors(target: Target, model_name: str, secrets: Secrets) -> Iterator[None]:
    """Classify SDK and transport exceptions, most specific first, into `UPSTREAM_FAULTS` rows.

    Before the status line the SDK wraps transport errors (`APIConnectionError`,
    `APITimeoutError`); while a body is read they come from httpx2 as they are.
    """
    try:
        yield
    except GatewayError:
        raise
    except openai.APIStatusError as exc:
        raise _status_error(exc.status_code, exc.body, exc.response.headers, target, model_name, secrets) from exc
    except openai.APITimeoutError as exc:
        raise _fault("connect_timeout" if _in_chain(exc, httpx2.ConnectTimeout) else "timeout", target, secrets) from exc
    except openai.APIConnectionError as exc:
        kind, detail = _connection_fault(exc)
        raise _fault(kind, target, secrets, detail) from exc
    except httpx2.TimeoutException as exc:
        raise _fault("idle", target, secrets) from exc
    except (httpx2.RemoteProtocolError, httpx2.NetworkError) as exc:
        raise _fault("cut", target, secrets) from exc
    except httpx2.HTTPError as exc:
        raise _fault("transport", target, secrets, str(exc) or type(exc).__name__) from exc
    except MalformedEvent as exc:
        raise _fault("malformed_event", target, secrets, str(exc)) from exc
    except openai.APIError as exc:
        raise _fault("error_event", target, secrets, _message_of(exc.body) or exc.message) from exc


def _fault(
    kind: int | str, target: Target, secrets: Secrets, detail: str = "", model_name: str = "",
    headers: dict[str, str] | None = None,
) -> GatewayError:
    """The row's error, with `detail` (upstream text) scrubbed and only then cut short."""
    config = target.upstream
    return upstream_fault(
        kind,
        upstream=target.upstream_name,
        detail=secrets.clip(detail, _MESSAGE_LIMIT),
        model=model_name,
        timeout=min(config.connect_timeout, config.timeout) if kind == "connect_timeout" else config.timeout,
        base_url=config.display_url,
        headers=headers,
    )


def _status_error(
    status: int, body: object, headers: httpx2.Headers, target: Target, model_name: str, secrets: Secrets
) -> GatewayError:
    """An upstream error status; 401 and 403 rows never quote the upstream (it may echo the key)."""
    message = _message_of(body)
    kind: int | str = status
    if status == 404:
        if _is_model_not_found(body, message):
            kind = "model_not_found"
        message = message or "not found"
    return _fault(kind, target, secrets, message, model_name, _retry_after(headers, secrets))


def _retry_after(headers: httpx2.Headers, secrets: Secrets) -> dict[str, str] | None:
    """The upstream's Retry-After, to pass on (an upstream's header value is scrubbed like its text)."""
    retry_after = headers.get("retry-after")
    return {"Retry-After": secrets.scrub(retry_after)} if retry_after else None


def _connection_fault(exc: BaseException) -> tuple[str, str]:
    """The row for a failure before the status line, by the innermost cause, and its text."""
    innermost = ""
    for cause in _chain(exc):
        if isinstance(cause, socket.gaierror):
            return "dns", str(cause)
        if isinstance(cause, ssl.SSLError):
            return "tls", str(cause)
        if isinstance(cause, ConnectionRefusedError):
            return "refused", ""
        if isinstance(cause, httpx2.RemoteProtocolError):
            return "no_answer", ""
        if str(cause) and not isinstance(cause, openai.APIError):
            innermost = str(cause)
    return "connect", innermost or "connection error"


def _not_event_stream(body: bytes, headers: httpx2.Headers, target: Target, model_name: str, secrets: Secrets) -> GatewayError:
    """A streaming request answered with something else: its error object, or an excerpt."""
    try:
        parsed = orjson.loads(body)
    except orjson.JSONDecodeError:
        parsed = None
    if isinstance(parsed, dict) and parsed.get("error"):
        error = parsed["error"]
        code = error.get("code") if isinstance(error, dict) else None
        if isinstance(code, int) and 400 <= code <= 599:
            return _status_error(code, parsed, headers, target, model_name, secrets)
        return _fault("error_event", target, secrets, _message_of(parsed))
    return _fault("not_event_stream", target, secrets, _excerpt(body, secrets))


def _chain(exc: BaseException) -> Iterator[BaseException]:
    cause: BaseException | None = exc
    seen = 0
    while cause is not None and seen < 32:
        yield cause
        cause = cause.__cause__ or cause.__context__
        seen += 1


def _in_chain(exc: BaseException, kind: type[BaseException]) -> bool:
    return any(isinstance(cause, kind) for cause in _chain(exc))


def _excerpt(content: bytes, secrets: Secrets) -> str:
    """A short, readable excerpt of a body that should have been JSON or SSE (tags dropped).

    Scrubbed before anything is cut or dropped (a tag stripped out of a secret would hide it
    from the scrub), and again once it is short.
    """
    if not content.strip():
        return "an empty body"
    head = secrets.scrub_bytes(content[:_EXCERPT_HEAD])
    text = b" ".join(_TAG.sub(b" ", head).split()).decode("utf-8", errors="replace")
    return repr(secrets.clip(text, _EXCERPT_LIMIT, "..."))


def _relayed(status: int, body: object, headers: httpx2.Headers, target: Target, secrets: Secrets) -> UpstreamRelayed:
    """The upstream's OpenAI error object (whatever else it holds too), every field scrubbed."""
    error: dict[str, object] = secrets.scrub_json(body) if isinstance(body, dict) else {}
    message = _message_of(body) or f"upstream '{target.upstream_name}' answered {status}"
    error["message"] = secrets.clip(message, _MESSAGE_LIMIT)
    return UpstreamRelayed(error, status_code=status, headers=_retry_after(headers, secrets))


def _message_of(body: object) -> str:
    """The upstream's own message, whole: `{"error": {"message": ...}}`, `{"message": ...}`, or the text.

    Whoever uses it scrubs it before cutting it short (`Secrets.clip`): a secret across the cut
    would otherwise lose its last characters and no longer be recognised.
    """
    if isinstance(body, dict):
        error = body.get("error", body)
        if isinstance(error, dict):
            message = error.get("message") or error.get("detail")
            if message:
                return str(message)
        elif isinstance(error, str) and error:
            return error
        detail = body.get("detail")
        if detail:
            return str(detail)
        return ""
    if isinstance(body, str):
        # A text or HTML error page (a proxy in front of the upstream): its words, not its markup.
        return " ".join(_TAG.sub(b" ", body.encode()).decode(errors="replace").split())
    return ""


def _is_model_not_found(body: object, message: str) -> bool:
    error = body.get("error", body) if isinstance(body, dict) else None
    if isinstance(error, dict) and error.get("code") == "model_not_found":
        return True
    return "model" in message.lower()


def _cause(exc: BaseException, secrets: Secrets) -> str:
    """The innermost transport error's text (refused, DNS, TLS), without the SDK's wrapper."""
    cause: BaseException | None = exc
    text = ""
    while cause is not None:
        if str(cause) and not isinstance(cause, openai.APIError):
            text = str(cause)
        cause = cause.__cause__ or cause.__context__
    return secrets.clip(text or "connection error", _MESSAGE_LIMIT)


def _make_client(config: UpstreamConfig) -> openai.AsyncOpenAI:
    timeout = httpx2.Timeout(config.timeout, connect=min(config.connect_timeout, config.timeout))
    hooks = _request_hooks(config)
    return openai.AsyncOpenAI(
        base_url=config.request_url,
        # An upstream without a key (a local server) must not pick up OPENAI_API_KEY from the
        # environment: the SDK would send it to whatever base_url says.
        api_key=config.api_key.get_secret_value() if config.api_key is not None else "no-key",
        timeout=timeout,
        # Retries are failover.py's (with fallbacks and Retry-After); `max_retries` is read there.
        max_retries=0,
        default_headers=_headers(config),
        default_query=config.query or None,
        http_client=httpx2.AsyncClient(
            transport=AiohttpTransport(max_connections=_MAX_CONNECTIONS, keepalive_expiry=_KEEPALIVE_EXPIRY),
            timeout=timeout,
            event_hooks={"request": hooks} if hooks else None,
        ),
    )


def _headers(config: UpstreamConfig) -> dict[str, str]:
    """The configured headers, and HTTP basic auth for a base_url with a user and password.

    The SDK's own `Authorization: Bearer` gives way to a configured `Authorization` header;
    routemap.py lets basic auth through only where nothing else needs that header, so the key
    (if any) goes straight into its own `auth_header`.
    """
    basic = config.basic_authorization
    if basic is None:
        return config.headers
    headers = {**config.headers, "Authorization": basic}
    if config.api_key is not None:
        headers[config.auth_header] = config.api_key.get_secret_value()
    return headers


def _request_hooks(config: UpstreamConfig) -> list[Any]:
    """Per-request header changes the SDK cannot express: the client's own key, another auth header.

    The SDK always sends `Authorization: Bearer <api_key>`; Azure's deployment URLs want the key
    in `api-key` instead (openai `lib/azure.py` does the same). Only upstreams that need a hook
    get one, so the others pay nothing.
    """
    hooks: list[Any] = []
    if config.pass_client_key:

        async def client_key(request: httpx2.Request) -> None:
            key = CLIENT_KEY.get()
            if key:
                request.headers["Authorization"] = f"Bearer {key}"

        hooks.append(client_key)
    header = config.auth_header
    if header.lower() != "authorization" and config.basic_authorization is None:

        async def move_key(request: httpx2.Request) -> None:
            value = request.headers.pop("Authorization", "")
            if value.startswith("Bearer ") and value != "Bearer no-key":
                request.headers[header] = value[len("Bearer ") :]

        hooks.append(move_key)
    return hooks
