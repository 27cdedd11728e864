"""Streams past their first chunk: the first-byte rule, the one place it is written.

    open_stream(chunks, framing, ...)   run `chunks` to its first chunk (raising any failure: a
                                        real status, and failover may still try elsewhere), then
                                        hand over an `OpenedStream` (`first`, then `rest`)
    Framing, NDJSON                     how a stream is framed: media type and error chunk

After the first chunk a failure becomes one last chunk in the stream's own framing
(`Framing.error_chunk`: an NDJSON `{"error": ...}` line, an SSE error event) and the stream
ends; never a `done` chunk. Deadlines (routes.yaml `first_token_timeout`, `total_timeout`) are
applied here, to the first chunk and to the whole stream.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator, Awaitable, Callable
from typing import Protocol

from gateway.errors import GatewayError, error_body
from gateway.logs import RequestRecord
from gateway.upstream.redact import Secrets

NDJSON_MEDIA_TYPE = "application/x-ndjson"


class Framing(Protocol):
    """How a stream is framed: its media type, and the last chunk that carries an error."""

    @property
    def media_type(self) -> str: ...

    def error_chunk(self, error: GatewayError) -> bytes: ...


class NDJSON:
    """Ollama's streams: one JSON object a line."""

    media_type = NDJSON_MEDIA_TYPE

    def error_chunk(self, error: GatewayError) -> bytes:
        return error_body(error.message) + b"\n"


NDJSON_FRAMING = NDJSON()


class OpenedStream:
    """A stream past its first chunk: `first`, then `rest` (which ends with an error chunk, if any)."""

    __slots__ = ("first", "rest", "framing", "record", "on_close")

    def __init__(self, first: bytes, rest: AsyncGenerator[bytes, None], framing: Framing, record: RequestRecord) -> None:
        self.first = first
        self.rest = rest
        self.framing = framing
        self.record = record
        # Awaited once the response has closed `rest` (http/streaming.py): gives back the
        # attempt's place on its upstream (admission.Hold), if it holds one.
        self.on_close: Callable[[], Awaitable[None]] | None = None

    @property
    def media_type(self) -> str:
        return self.framing.media_type

    def error_chunk(self, error: GatewayError) -> bytes:
        return self.framing.error_chunk(error)


async def open_stream(
    chunks: AsyncGenerator[bytes, None], framing: Framing, record: RequestRecord, secrets: Secrets,
    *,
    first_within: float | None = None,
    on_first_timeout: Callable[[], GatewayError] | None = None,
    deadline: float | None = None,
    on_deadline: Callable[[], GatewayError] | None = None,
    allow_empty: bool = False,
) -> OpenedStream:
    """Run `chunks` to its first chunk (raising any failure), then hand the rest over.

    `first_within` (seconds) bounds the wait for the first chunk and `deadline` (loop time) the
    whole stream, each failing with its own error. `allow_empty`: a stream that ends at once has
    an empty body (the `/v1` relay) instead of being an error.
    """
    limit, too_slow = first_within, on_first_timeout
    if deadline is not None:
        remaining = deadline - asyncio.get_running_loop().time()
        if limit is None or remaining < limit:
            limit, too_slow = remaining, on_deadline
    try:
        if limit is None:
            first = await anext(chunks)
        else:
            async with asyncio.timeout(limit):
                first = await anext(chunks)
    except StopAsyncIteration:
        await chunks.aclose()
        if not allow_empty:
            raise
        first = b""
    except TimeoutError as exc:
        await chunks.aclose()
        assert too_slow is not None
        raise too_slow() from exc
    except BaseException:
        await chunks.aclose()
        raise
    return OpenedStream(first, _after_first(chunks, framing, record, secrets, deadline, on_deadline), framing, record)


async def _after_first(
    chunks: AsyncGenerator[bytes, None], framing: Framing, record: RequestRecord, secrets: Secrets,
    deadline: float | None, too_slow: Callable[[], GatewayError] | None,
) -> AsyncGenerator[bytes, None]:
    try:
        if deadline is None:
            async for chunk in chunks:
                yield chunk
            return
        while True:
            try:
                async with asyncio.timeout_at(deadline):
                    chunk = await anext(chunks)
            except StopAsyncIteration:
                return
            except TimeoutError:
                assert too_slow is not None
                raise too_slow() from None
            yield chunk
    except GatewayError as exc:
        exc.message = secrets.scrub(exc.message)
        record.fail(exc, after_first_byte=True)
        yield framing.error_chunk(exc)
    finally:
        await chunks.aclose()
