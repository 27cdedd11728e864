"""NDJSON streaming: upstream SSE events -> Ollama lines, written as they arrive.

`ndjson_stream` opens the upstream stream and translates it; `open_ndjson_stream` runs it up to
its first line before the response starts, so an error before the first byte still gets a real
status (ollama-api.md §1.6). After the first byte, a failure becomes one last `{"error": ...}`
line and no `done` chunk. `NDJSONResponse` writes the lines, stops the moment the client goes
away, and always closes the upstream stream (so a disconnect cancels the upstream request).
"""

from __future__ import annotations

from collections.abc import AsyncGenerator, Callable
from typing import Any

import anyio
import orjson
from starlette.responses import Response
from starlette.types import Receive, Scope, Send

from gateway.errors import GatewayError, UpstreamUnavailable, error_body
from gateway.logs import RequestRecord
from gateway.routemap import Target
from gateway.translators.base import StreamingTranslator
from gateway.upstream import UpstreamClients

NDJSON_MEDIA_TYPE = "application/x-ndjson"
_dumps: Callable[[Any], bytes] = orjson.dumps


async def ndjson_stream(
    clients: UpstreamClients, translator: StreamingTranslator[Any], target: Target, body: dict[str, Any], record: RequestRecord
) -> AsyncGenerator[bytes, None]:
    """The NDJSON body: one write per upstream network read, each line ending in a newline."""
    started = False
    try:
        async with clients.stream(target, translator.upstream_path, body, translator.request.model) as events:
            async for batch in events.batches():
                lines = [_dumps(chunk) for event in batch for chunk in translator.feed(event)]
                if lines:
                    record.chunks += len(lines)
                    started = True
                    yield b"\n".join(lines) + b"\n"
            if not events.saw_done and not translator.saw_finish_reason:
                raise UpstreamUnavailable(f"upstream '{target.upstream_name}' ended the stream before it was complete")
            final = translator.finish()
            record.chunks += len(final)
            record.tokens(translator.prompt_tokens, translator.completion_tokens)
            started = True
            yield b"".join(_dumps(chunk) + b"\n" for chunk in final)
    except GatewayError as exc:
        if not started:
            raise
        record.fail(exc, after_first_byte=True)
        yield error_body(exc.message) + b"\n"


async def open_ndjson_stream(lines: AsyncGenerator[bytes, None], headers: dict[str, str]) -> NDJSONResponse:
    """Run the stream to its first line (raising GatewayError before any byte is sent)."""
    try:
        first = await lines.__anext__()
    except BaseException:
        await lines.aclose()
        raise
    return NDJSONResponse(first, lines, headers)


class NDJSONResponse(Response):
    """A 200 NDJSON stream whose first line is already known."""

    media_type = NDJSON_MEDIA_TYPE

    def __init__(self, first: bytes, rest: AsyncGenerator[bytes, None], headers: dict[str, str]) -> None:
        super().__init__(status_code=200, headers=headers, media_type=NDJSON_MEDIA_TYPE)
        del self.headers["content-length"]
        self._first = first
        self._rest = rest

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
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


async def _cancel_on_disconnect(receive: Receive, cancel_scope: anyio.CancelScope, scope: Scope) -> None:
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            record = scope.get("state", {}).get("record")
            if record is not None:
                record.outcome = "client_disconnected"
            cancel_scope.cancel()
            return
