"""The streamed response: an `OpenedStream` (first chunk known, rest to come) written as it comes.

The exchange (upstream/exchange.py, with upstream/streams.py) opens a stream up to its first chunk, so an error before
the first byte still gets a real status, and ends it with its framing's error chunk when it fails
after. This only writes: the status line, the first chunk, each later chunk as it arrives, and
the end. The client leaving cancels it at once (`guard.GuardedRequest` cancels the handler,
which closes the stream and with it the upstream request); when the shutdown grace period ends,
the guard writes the stream's `error_chunk` and ends it.
"""

from __future__ import annotations

import time

import anyio
import structlog
from starlette.responses import Response
from starlette.types import Receive, Scope, Send

from gateway import logs
from gateway.errors import GatewayError
from gateway.http.guard import GUARD_SCOPE_KEY
from gateway.upstream.streams import OpenedStream

_now = time.monotonic
log = structlog.get_logger()


class StreamedResponse(Response):
    """A 200 stream whose first chunk is already known; the rest is written as it comes."""

    def __init__(self, stream: OpenedStream, headers: dict[str, str] | None = None) -> None:
        super().__init__(status_code=200, headers=headers, media_type=stream.media_type)
        del self.headers["content-length"]
        self._stream = stream

    def error_chunk(self, error: GatewayError) -> bytes:
        """The last chunk of a stream stopped by the gateway (shutdown), in this stream's framing."""
        return self._stream.error_chunk(error)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        guard = scope[GUARD_SCOPE_KEY]
        rest = self._stream.rest
        # The guard cancels this on disconnect; it only needs to know while the body is open,
        # and when a write is waiting (on a client that stopped reading: `GATEWAY_SEND_TIMEOUT`).
        from gateway import metrics  # the workers' only (gateway_streams_in_flight)

        metrics.stream_opened()
        try:
            await send({"type": "http.response.start", "status": 200, "headers": self.raw_headers})
            guard.open_stream = self
            guard.sending_since = _now()
            await send({"type": "http.response.body", "body": self._stream.first, "more_body": True})
            guard.sending_since = 0.0
            async for chunk in rest:
                guard.sending_since = _now()
                await send({"type": "http.response.body", "body": chunk, "more_body": True})
                guard.sending_since = 0.0
            guard.open_stream = None
            await send({"type": "http.response.body", "body": b"", "more_body": False})
        finally:
            metrics.stream_closed()
            with anyio.CancelScope(shield=True):
                await rest.aclose()
                if self._stream.on_close is not None:
                    await self._stream.on_close()
            record = self._stream.record
            record.streamed = time.perf_counter_ns()  # the end of the stream stage, however it ended
        if logs.DEBUG and record.outcome == "ok":  # a failure is the front layer's `failed` event
            log.debug("stream_finished", chunks=record.chunks, prompt_tokens=record.prompt_tokens,
                      completion_tokens=record.completion_tokens, done_reason=record.done_reason,
                      ms=round((record.streamed - record.answered) / 1e6, 3))
