"""One call to an upstream over its aiohttp session: a JSON answer, an event stream, or a relay.

    post_json(client, path, body)     -> the upstream's JSON object (at most the answer limit)
    open_events(client, path, body)   -> EventStream: decoded SSE events, by network read
    open_relay(client, path, body)    -> Relay: the answer's bytes as they arrive (`/v1`)
    list_models(client, timeout)      -> the `data` of GET /models (discovery)

Each failure is classified once, where it happens (`faults.py`): a transport failure by whether
the status line had arrived, an error status from its body. Bodies are parsed with orjson and
streams with `sse.SSEDecoder`: no model object per request or per chunk. The caller holds the
worker's upstream slot (`limiter.UpstreamLimiter`) around each call and closes what it opened.

What `/v1` relays (`Relay`) is scrubbed of the route map's secrets: a body that is not an event
stream as a whole, and in a stream every network read from the first one that mentions `error`
on. The healthy reads of a stream are relayed unparsed, so a secret a model writes into its
completion is not masked there.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator, AsyncIterator, Callable, Iterator, Mapping
from typing import Any

import aiohttp
import orjson

from gateway.errors import GatewayError, UpstreamUnavailable
from gateway.upstream.clients import UpstreamClient
from gateway.upstream.faults import (
    Origin,
    excerpt,
    fault,
    not_event_stream,
    relayed_fault,
    status_fault,
    transport_fault,
)
from gateway.upstream.redact import Secrets
from gateway.upstream.sse import MalformedEvent, SSEDecoder

_ERROR_BODY_LIMIT = 64 * 1024  # how much of an error status's body is read to explain it
_SNIFF_BYTES = 16  # enough to tell `data:`/`:`/`event:` from JSON or HTML
_NOT_SSE_LIMIT = 64 * 1024  # how much of a body that is not an event stream is read to explain it
_SSE_STARTS = (b"data:", b":", b"event:", b"id:", b"retry:")
_EAGER_CHUNKS = 8  # how many HTTP chunks a stream is read by, at most, before its first chunk leaves


async def _send(
    client: UpstreamClient, path: str, body: bytes, model_name: str, *, relay: bool = False,
    headers: Mapping[str, str] | None = None, query: str = "", content_type: str | None = None,
) -> aiohttp.ClientResponse:
    """POST and wait for the status line; an error status is read, closed and raised.

    `headers` (the client's own, passed through) go with the upstream's, which win; `query` is
    added to the URL after the upstream's own parameters; `content_type` replaces the upstream's
    `application/json` (a relayed multipart form keeps the client's, with its boundary)."""
    origin = client.origin
    sent = client.request_headers() if headers is None else {**headers, **client.request_headers()}
    if content_type is not None:
        sent = {**sent, "Content-Type": content_type}
    try:
        response = await client.session.post(
            client.url(path, query), data=body, headers=sent, timeout=client.timeout,
            allow_redirects=False, compress=None,
        )
    except aiohttp.ClientError as exc:
        raise transport_fault(exc, origin, answering=False) from exc
    except TimeoutError as exc:
        raise transport_fault(exc, origin, answering=False) from exc
    if response.status < 400:
        return response
    try:
        content = await _read(response, _ERROR_BODY_LIMIT, origin, truncate=True)
    finally:
        response.close()
    if relay:
        raise relayed_fault(response.status, content, response.headers, origin, model_name)
    raise status_fault(response.status, content, response.headers, origin, model_name)


async def _read(response: aiohttp.ClientResponse, limit: int, origin: Origin, *, truncate: bool = False) -> bytes:
    """The body, at most `limit` bytes: beyond it the "too_large" fault (502), or cut (`truncate`)."""
    declared = response.content_length
    if declared is not None and declared > limit and not truncate:
        raise fault("too_large", origin, str(limit))
    parts: list[bytes] = []
    size = 0
    content = response.content
    try:
        while True:
            data = await content.readany()
            if not data:
                break
            size += len(data)
            if size > limit:
                if truncate:
                    parts.append(data[: len(data) - (size - limit)])
                    break
                raise fault("too_large", origin, str(limit))
            parts.append(data)
    except (aiohttp.ClientError, TimeoutError) as exc:
        raise transport_fault(exc, origin, answering=True) from exc
    return b"".join(parts)


async def post_json(client: UpstreamClient, path: str, body: bytes, model_name: str, limit: int) -> dict[str, Any]:
    """POST a JSON body and return the upstream's JSON object."""
    response = await _send(client, path, body, model_name)
    try:
        content = await _read(response, limit, client.origin)
    finally:
        response.release()
    try:
        answer = orjson.loads(content)
    except orjson.JSONDecodeError as exc:
        raise fault("not_json", client.origin, excerpt(content, client.origin.secrets)) from exc
    if not isinstance(answer, dict):
        raise fault("not_object", client.origin)
    return answer


async def open_events(client: UpstreamClient, path: str, body: bytes, model_name: str) -> EventStream:
    """POST a streaming request; the status is checked before this returns. Close the stream."""
    return EventStream(await _send(client, path, body, model_name), client.origin, model_name)


async def open_relay(
    client: UpstreamClient, path: str, body: bytes, model_name: str, limit: int, on_close: Callable[[], None] | None = None,
    *, headers: Mapping[str, str] | None = None, query: str = "", content_type: str | None = None,
) -> Relay:
    """POST `body` as is and return the upstream's un-read answer (the `/v1` surface). Close it.

    An upstream error status raises `UpstreamRelayed` with the upstream's own status and error
    object (credential problems still become 502).
    """
    response = await _send(client, path, body, model_name, relay=True, headers=headers, query=query, content_type=content_type)
    return Relay(response, client.origin, limit, on_close)


class EventStream:
    """The decoded SSE events of one upstream response."""

    __slots__ = ("_response", "_origin", "_model_name", "_decoder", "started")

    def __init__(self, response: aiohttp.ClientResponse, origin: Origin, model_name: str) -> None:
        self._response = response
        self._origin = origin
        self._model_name = model_name
        self._decoder = SSEDecoder()
        # Until the caller sets this (its first chunk has left), reads are one HTTP chunk each.
        self.started = False

    @property
    def saw_done(self) -> bool:
        """True once the `[DONE]` sentinel arrived."""
        return self._decoder.done

    async def reads(self) -> AsyncIterator[Iterator[dict[str, Any]]]:
        """Per network read, its events, decoded lazily as they are taken (the first event of a
        read is translated and sent before the rest of it is parsed). Take each read's events to
        the end before asking for the next read."""
        try:
            reads = self._reads()
            if "event-stream" not in self._response.headers.get("content-type", ""):
                reads = self._sniffed(reads)
            async for data in reads:
                yield self._events(data)
                if self._decoder.done:
                    return
            tail = self._decoder.close()
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise transport_fault(exc, self._origin, answering=True) from exc
        except MalformedEvent as exc:
            raise fault("malformed_event", self._origin, str(exc)) from exc
        if tail:
            yield iter(tail)

    async def _reads(self) -> AsyncIterator[bytes]:
        """The body by network read; until `started` (at most `_EAGER_CHUNKS` times), by HTTP
        chunk, which servers send one event each: a fast upstream's first read can hold hundreds
        of events, and aiohttp's `readany` joins them all (about 0.3 ms for 512) before the first
        could be passed on. A stream whose first line waits for many events (tool calls being
        collected) goes back to whole reads, which cost less per event."""
        content = self._response.content
        for _ in range(_EAGER_CHUNKS):
            if self.started:
                break
            data, end_of_chunk = await content.readchunk()
            if data:
                yield data
            elif not end_of_chunk:
                return
        while True:
            data = await content.readany()
            if not data:
                return
            yield data

    def _events(self, data: bytes) -> Iterator[dict[str, Any]]:
        try:
            yield from self._decoder.events(data)
        except MalformedEvent as exc:
            raise fault("malformed_event", self._origin, str(exc)) from exc

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
            raise not_event_stream(body, self._response.headers, self._origin, self._model_name)
        if head:
            yield head
        async for data in reads:
            yield data

    def close(self) -> None:
        """Give the connection back (the body was read to its end) or drop it (the upstream stops)."""
        _close(self._response)


class Relay:
    """An upstream answer passed through as bytes: its content type, then its body as it arrives.

    The body is scrubbed of the route map's secrets: whole when it is read whole (`read`), and
    in a stream (`chunks`) from the first network read that mentions `error` on (an error event
    such as `data: {"error": ...}` or `event: error`, and whatever follows it). The other reads
    of a stream pass unparsed and unscrubbed: a scan per chunk is what the hot path cannot pay.
    """

    __slots__ = ("_response", "_origin", "_limit", "_on_close")

    def __init__(
        self, response: aiohttp.ClientResponse, origin: Origin, limit: int, on_close: Callable[[], None] | None = None
    ) -> None:
        self._response = response
        self._origin = origin
        self._limit = limit  # for `read()`, the non-streamed answer
        self._on_close = on_close  # gives back the upstream slot, once

    @property
    def _secrets(self) -> Secrets:
        return self._origin.secrets

    @property
    def status(self) -> int:
        return self._response.status

    @property
    def content_type(self) -> str:
        return self._secrets.scrub(self._response.headers.get("content-type", "application/json"))

    @property
    def is_event_stream(self) -> bool:
        return self.content_type.lower().startswith("text/event-stream")

    async def read(self) -> bytes:
        """The whole body (at most the answer limit), scrubbed."""
        return self._secrets.scrub_bytes(await _read(self._response, self._limit, self._origin))

    async def chunks(self) -> AsyncGenerator[bytes, None]:
        """The body in network reads (decompressed if the upstream compressed it), error reads scrubbed."""
        scrub = self._secrets.scrub_bytes
        scrubbing = False
        try:
            async for data in _reads(self._response):
                # `error` in a read: an error event (or its start); a secret cut across two reads
                # is masked in both halves, as a prefix and as a suffix, since every later read is
                # scrubbed too.
                if scrubbing or b"error" in data:
                    scrubbing = True
                    data = scrub(data)
                yield data
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise transport_fault(exc, self._origin, answering=True) from exc

    def also_on_close(self, callback: Callable[[], None]) -> None:
        """Run `callback` too when the relay is closed (after what was there already)."""
        previous = self._on_close

        def both() -> None:
            try:
                if previous is not None:
                    previous()
            finally:
                callback()

        self._on_close = both

    def close(self) -> None:
        try:
            _close(self._response)
        finally:
            on_close, self._on_close = self._on_close, None
            if on_close is not None:
                on_close()


async def _reads(response: aiohttp.ClientResponse) -> AsyncIterator[bytes]:
    content = response.content
    while True:
        data = await content.readany()
        if not data:
            return
        yield data


def _close(response: aiohttp.ClientResponse) -> None:
    if response.content.at_eof():
        response.release()
    else:
        response.close()


async def list_models(client: UpstreamClient, timeout: float, limit: int) -> list[dict[str, Any]]:
    """The `data` of the upstream's `GET /models` (discovery); GatewayError on any failure."""
    name = client.name
    try:
        async with client.session.get(
            client.url("/models"), headers=client.request_headers(),
            timeout=aiohttp.ClientTimeout(total=timeout, sock_connect=client.timeout.sock_connect),
            allow_redirects=False,
        ) as response:
            if response.status >= 400:
                raise UpstreamUnavailable(f"upstream '{name}' answered {response.status} to GET /models")
            content = await _read(response, limit, client.origin)
    except GatewayError as exc:
        if isinstance(exc, UpstreamUnavailable) and exc.message.endswith("to GET /models"):
            raise
        raise UpstreamUnavailable(f"upstream '{name}' GET /models failed: {exc.message}") from exc
    except (aiohttp.ClientError, TimeoutError) as exc:
        detail = transport_fault(exc, client.origin, answering=False).message
        raise UpstreamUnavailable(f"upstream '{name}' GET /models failed: {detail}") from exc
    try:
        body = orjson.loads(content)
    except orjson.JSONDecodeError as exc:
        raise UpstreamUnavailable(f"upstream '{name}' sent a model list that is not JSON") from exc
    data = body.get("data") if isinstance(body, dict) else body
    if not isinstance(data, list):
        raise UpstreamUnavailable(f"upstream '{name}' sent a model list without 'data'")
    return [entry for entry in data if isinstance(entry, dict)]
