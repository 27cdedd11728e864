"""NDJSON streaming: upstream SSE events -> Ollama lines, written as they arrive.

`ndjson_stream` opens the upstream stream and translates it; `open_ndjson_stream` runs it up to
its first line before the response starts, so an error before the first byte still gets a real
status (ollama-api.md §1.6). After the first byte, a failure becomes one last `{"error": ...}`
line and no `done` chunk. `NDJSONResponse` writes the lines and always closes the upstream
stream. The client leaving cancels it at once (`guard.RequestGuard` cancels the handler, which
cancels the upstream request); when the shutdown grace period ends, the guard writes the
response's `error_chunk` and ends it.
`StreamedResponse` and `open_stream` are the same machinery for any media type (the `/v1`
surface relays SSE through them, see `openai_routes.py`).
"""

from __future__ import annotations

import time
from collections.abc import AsyncGenerator, Callable
from typing import Any

import anyio
import orjson
from starlette.responses import Response
from starlette.types import Receive, Scope, Send

from gateway.errors import GatewayError, error_body, upstream_fault
from gateway.guard import GUARD_SCOPE_KEY
from gateway.logs import RequestRecord
from gateway.routemap import Target
from gateway.translators.base import StreamingTranslator
from gateway.upstream import UpstreamClients

NDJSON_MEDIA_TYPE = "application/x-ndjson"
_dumps: Callable[[Any], bytes] = orjson.dumps
_now = time.monotonic


async def ndjson_stream(
    clients: UpstreamClients, translator: StreamingTranslator[Any], target: Target, body: dict[str, Any], record: RequestRecord
) -> AsyncGenerator[bytes, None]:
    """The NDJSON body: one write per upstream network read, each line ending in a newline."""
    started = False
    try:
        async with clients.stream(target, translator.upstream_path, body, translator.request.model) as events:
            async for batch in events.batches():
                lines: list[bytes] = []
                failure: GatewayError | None = None
                try:
                    for event in batch:
                        lines.extend(_dumps(chunk) for chunk in translator.feed(event))
                except GatewayError as exc:
                    failure = exc  # the lines before it in this read are still the client's
                if lines:
                    record.chunks += len(lines)
                    started = True
                    yield b"\n".join(lines) + b"\n"
                if failure is not None:
                    raise failure
            if not events.saw_done and not translator.saw_finish_reason:
                # Without [DONE] a stream is complete only if it said why it finished: a stream
                # cut short is never answered with a made-up `done` chunk.
                raise upstream_fault("incomplete", upstream=target.upstream_name)
            final = translator.finish()
            record.chunks += len(final)
            record.tokens(translator.prompt_tokens, translator.completion_tokens)
            started = True
            yield b"".join(_dumps(chunk) + b"\n" for chunk in final)
    except GatewayError as exc:
        if not started:
            raise
        exc.message = clients.scrub(exc.message)
        record.fail(exc, after_first_byte=True)
        yield error_body(exc.message) + b"\n"


async def open_ndjson_stream(lines: AsyncGenerator[bytes, None], headers: dict[str, str]) -> NDJSONResponse:
    """Run the stream to its first line (raising GatewayError before any byte is sent)."""
    first = await _first_chunk(lines)
    return NDJSONResponse(first, lines, headers)


async def open_stream(chunks: AsyncGenerator[bytes, None], headers: dict[str, str], media_type: str) -> StreamedResponse:
    """`open_ndjson_stream` for any media type; a stream that ends at once has an empty body."""
    try:
        first = await _first_chunk(chunks)
    except StopAsyncIteration:
        first = b""
    return StreamedResponse(first, chunks, headers, media_type)


async def _first_chunk(chunks: AsyncGenerator[bytes, None]) -> bytes:
    try:
        return await chunks.__anext__()
    except BaseException:
        await chunks.aclose()
        raise


class StreamedResponse(Response):
    """A 200 stream whose first chunk is already known; the rest is written as it comes."""

    def __init__(self, first: bytes, rest: AsyncGenerator[bytes, None], headers: dict[str, str], media_type: str) -> None:
        super().__init__(status_code=200, headers=headers, media_type=media_type)
        del self.headers["content-length"]
        self._first = first
        self._rest = rest

    def error_chunk(self, message: str) -> bytes:
        """The last chunk of a stream stopped by the gateway (shutdown), in this stream's framing."""
        if self.media_type == NDJSON_MEDIA_TYPE:
            return error_body(message) + b"\n"
        if self.media_type is not None and self.media_type.startswith("text/event-stream"):
            return b"data: " + orjson.dumps({"error": {"message": message, "type": "server_error"}}) + b"\n\n"
        return b""

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        guard = scope.get(GUARD_SCOPE_KEY)
        if guard is None:
            await self._watching_disconnect(scope, receive, send)
            return
        # The guard cancels this on disconnect; it only needs to know while the body is open,
        # and when a write is waiting (on a client that stopped reading: `GATEWAY_SEND_TIMEOUT`).
        try:
            await send({"type": "http.response.start", "status": 200, "headers": self.raw_headers})
            guard.open_stream = self
            guard.sending_since = _now()
            await send({"type": "http.response.body", "body": self._first, "more_body": True})
            guard.sending_since = 0.0
            async for chunk in self._rest:
                guard.sending_since = _now()
                await send({"type": "http.response.body", "body": chunk, "more_body": True})
                guard.sending_since = 0.0
            guard.open_stream = None
            await send({"type": "http.response.body", "body": b"", "more_body": False})
        finally:
            with anyio.CancelScope(shield=True):
                await self._rest.aclose()

    async def _watching_disconnect(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Without the guard (an app assembled otherwise): watch for the disconnect here."""
        try:
            async with anyio.create_task_group() as group:
                group.start_soon(_cancel_on_disconnect, receive, group.cancel_scope, scope)
                await send({"type": "http.response.start", "status": 200, "headers": self.raw_headers})
                await send({"type": "http.response.body", "body": self._first, "more_body": True})
                async for line in self._rest:
                    await send({"type": "http.response.body", "body": line, "more_body": True})
                await send({"type": "http.response.body", "body": b"", "more_body": False})
                group.cancel_scope.cancel()
        finally:
            with anyio.CancelScope(shield=True):
                await self._rest.aclose()


class NDJSONResponse(StreamedResponse):
    """A 200 NDJSON stream whose first line is already known."""

    media_type = NDJSON_MEDIA_TYPE

    def __init__(self, first: bytes, rest: AsyncGenerator[bytes, None], headers: dict[str, str]) -> None:
        super().__init__(first, rest, headers, NDJSON_MEDIA_TYPE)


async def _cancel_on_disconnect(receive: Receive, cancel_scope: anyio.CancelScope, scope: Scope) -> None:
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            record = scope.get("state", {}).get("record")
            if record is not None:
                record.outcome = "client_disconnected"
            cancel_scope.cancel()
            return
