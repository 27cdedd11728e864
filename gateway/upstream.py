"""Calls to the OpenAI-compatible upstreams: the only module that imports `openai`.

One `AsyncOpenAI` client per upstream per worker, made at start-up and closed at shutdown, with
a connection pool sized for many concurrent streams and keep-alive on. Requests go through the
SDK's client (base URL, auth, headers, timeouts, retries before the first byte, status errors),
but as raw responses: bodies are parsed with orjson and streams with `sse.SSEDecoder`, so no SDK
model object is built per request or per chunk (issue 3).

`upstream_errors()` maps every SDK and transport failure onto `errors.GatewayError`, with the
upstream's own message and never a credential.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from typing import Any

import httpx2
import openai
import orjson

from gateway.errors import GatewayError, ModelNotFound, UpstreamRejected, UpstreamTimeout, UpstreamUnavailable, ollama_status
from gateway.routemap import RouteMap, Target, UpstreamConfig
from gateway.sse import MalformedEvent, SSEDecoder

_JSON_HEADERS = {"Content-Type": "application/json"}
_POOL_LIMITS = httpx2.Limits(max_connections=4096, max_keepalive_connections=512, keepalive_expiry=30.0)
_CONNECT_TIMEOUT = 10.0
_MESSAGE_LIMIT = 1000


class UpstreamClients:
    """The per-worker set of upstream clients, by upstream name."""

    def __init__(self, route_map: RouteMap) -> None:
        self._clients = {name: _make_client(config) for name, config in route_map.upstreams.items()}

    async def aclose(self) -> None:
        for client in self._clients.values():
            await client.close()

    def _client(self, target: Target) -> openai.AsyncOpenAI:
        variable = target.upstream.missing_key_variable
        if variable:
            raise UpstreamUnavailable(
                f"upstream '{target.upstream_name}' has no API key: set the environment variable {variable}"
            )
        return self._clients[target.upstream_name]

    async def post(self, target: Target, path: str, body: dict[str, Any], model_name: str) -> dict[str, Any]:
        """POST a JSON body and return the upstream's JSON answer."""
        client = self._client(target)
        with upstream_errors(target, model_name):
            response = await client.post(
                path, cast_to=httpx2.Response, content=orjson.dumps(body), options={"headers": _JSON_HEADERS}
            )
            content = await response.aread()
        try:
            answer = orjson.loads(content)
        except orjson.JSONDecodeError as exc:
            raise UpstreamUnavailable(f"upstream '{target.upstream_name}' sent a body that is not JSON") from exc
        if not isinstance(answer, dict):
            raise UpstreamUnavailable(f"upstream '{target.upstream_name}' sent JSON that is not an object")
        return answer

    @asynccontextmanager
    async def stream(
        self, target: Target, path: str, body: dict[str, Any], model_name: str
    ) -> AsyncIterator[EventStream]:
        """POST a streaming request; the status is checked before this yields."""
        client = self._client(target)
        with upstream_errors(target, model_name):
            response = await client.post(
                path,
                cast_to=httpx2.Response,
                content=orjson.dumps(body),
                options={"headers": _JSON_HEADERS},
                stream=True,
            )
        try:
            yield EventStream(response, target, model_name)
        finally:
            await response.aclose()


class EventStream:
    """The decoded SSE events of one upstream response."""

    __slots__ = ("_response", "_target", "_model_name", "_decoder")

    def __init__(self, response: httpx2.Response, target: Target, model_name: str) -> None:
        self._response = response
        self._target = target
        self._model_name = model_name
        self._decoder = SSEDecoder()

    @property
    def saw_done(self) -> bool:
        """True once the `[DONE]` sentinel arrived."""
        return self._decoder.done

    async def batches(self) -> AsyncIterator[list[dict[str, Any]]]:
        """Events grouped as they arrived in network reads (each read may hold several events)."""
        decoder = self._decoder
        with upstream_errors(self._target, self._model_name):
            try:
                async for data in self._response.aiter_bytes():
                    events = decoder.feed(data)
                    if events:
                        yield events
                    if decoder.done:
                        return
                tail = decoder.close()
            except MalformedEvent as exc:
                raise UpstreamUnavailable(f"upstream '{self._target.upstream_name}': {exc}") from exc
        if tail:
            yield tail


@contextmanager
def upstream_errors(target: Target, model_name: str) -> Iterator[None]:
    """Translate SDK and transport exceptions into gateway errors, most specific first."""
    name = target.upstream_name
    try:
        yield
    except GatewayError:
        raise
    except openai.APIStatusError as exc:
        raise _status_error(exc.status_code, exc.body, exc.response.headers, target, model_name) from exc
    except openai.APITimeoutError as exc:
        raise UpstreamTimeout(f"upstream '{name}' timed out") from exc
    except openai.APIConnectionError as exc:
        raise UpstreamUnavailable(f"upstream '{name}' is unreachable: {_cause(exc, target.upstream)}") from exc
    except httpx2.TimeoutException as exc:
        raise UpstreamTimeout(f"upstream '{name}' timed out while streaming") from exc
    except httpx2.HTTPError as exc:
        raise UpstreamUnavailable(f"upstream '{name}' connection failed: {_scrub(str(exc) or type(exc).__name__, target.upstream)}") from exc
    except openai.APIError as exc:
        raise UpstreamUnavailable(_scrub(_message_of(exc.body) or exc.message, target.upstream)) from exc


def _status_error(
    status: int, body: object, headers: httpx2.Headers, target: Target, model_name: str
) -> GatewayError:
    name = target.upstream_name
    message = _message_of(body)
    if status in (401, 403):
        # Never the upstream's text here: OpenAI's 401 message quotes part of the key.
        return UpstreamUnavailable(f"upstream '{name}' rejected the gateway's credentials ({status}); check its api_key")
    if status == 404 and _is_model_not_found(body, message):
        return ModelNotFound(model_name)
    if status == 404:
        return UpstreamUnavailable(f"upstream '{name}' answered 404 at {target.upstream.base_url}: {message or 'not found'}")
    response_headers = {}
    retry_after = headers.get("retry-after")
    if retry_after is not None:
        response_headers["Retry-After"] = retry_after
    text = _scrub(message or f"upstream '{name}' answered {status}", target.upstream)
    return UpstreamRejected(text, status_code=ollama_status(status), headers=response_headers)


def _message_of(body: object) -> str:
    """The upstream's own message: `{"error": {"message": ...}}`, `{"message": ...}`, or the text."""
    if isinstance(body, dict):
        error = body.get("error", body)
        if isinstance(error, dict):
            message = error.get("message") or error.get("detail")
            if message:
                return str(message)[:_MESSAGE_LIMIT]
        elif isinstance(error, str) and error:
            return error[:_MESSAGE_LIMIT]
        detail = body.get("detail")
        if detail:
            return str(detail)[:_MESSAGE_LIMIT]
        return ""
    if isinstance(body, str):
        return body.strip()[:_MESSAGE_LIMIT]
    return ""


def _is_model_not_found(body: object, message: str) -> bool:
    error = body.get("error", body) if isinstance(body, dict) else None
    if isinstance(error, dict) and error.get("code") == "model_not_found":
        return True
    return "model" in message.lower()


def _cause(exc: BaseException, config: UpstreamConfig) -> str:
    """The innermost transport error's text (refused, DNS, TLS), without the SDK's wrapper."""
    cause: BaseException | None = exc
    text = ""
    while cause is not None:
        if str(cause) and not isinstance(cause, openai.APIError):
            text = str(cause)
        cause = cause.__cause__ or cause.__context__
    return _scrub(text or "connection error", config)


def _scrub(text: str, config: UpstreamConfig) -> str:
    """Belt and braces: a credential never leaves in a message."""
    if config.api_key is not None:
        key = config.api_key.get_secret_value()
        if key and key in text:
            text = text.replace(key, "***")
    return text


def _make_client(config: UpstreamConfig) -> openai.AsyncOpenAI:
    timeout = httpx2.Timeout(config.timeout, connect=min(_CONNECT_TIMEOUT, config.timeout))
    return openai.AsyncOpenAI(
        base_url=config.base_url,
        # An upstream without a key (a local server) must not pick up OPENAI_API_KEY from the
        # environment: the SDK would send it to whatever base_url says.
        api_key=config.api_key.get_secret_value() if config.api_key is not None else "no-key",
        timeout=timeout,
        max_retries=config.max_retries,
        default_headers=config.headers,
        http_client=httpx2.AsyncClient(limits=_POOL_LIMITS, timeout=timeout),
    )
