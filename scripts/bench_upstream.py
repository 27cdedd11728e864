"""A fast fake OpenAI-compatible upstream for the benchmark (run: python bench_upstream.py --port P).

One asyncio Protocol (uvloop when importable) that parses just enough HTTP/1.1 (keep-alive,
Content-Length or chunked request bodies) and answers with pre-rendered bytes, cached per
(endpoint, model, ...):

* ``POST /v1/chat/completions``: a chat completion with usage, or, when the body says
  ``"stream": true``, an SSE stream whose length comes from the model id (see
  `bench_fixtures`), sent in one write (``fake-stream-N``) or one chunk every 100 ms
  (``fake-slow-N``). Each SSE event is one HTTP chunk, as real servers send them.
* ``POST /v1/embeddings``: one 384-dim vector per input (float or base64).
* ``GET /v1/models``.

Requests without ``Authorization: Bearer bench-key`` get a 401, so a gateway that drops the
configured key fails the benchmark's validity checks instead of looking fast.
Pipelined requests behind a slow stream are not supported (gateways do not pipeline).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import sys
from collections.abc import Callable

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import bench_fixtures as fx

try:
    import orjson

    _loads: Callable[[bytes], object] = orjson.loads
except ImportError:  # pragma: no cover - the project venv has orjson
    _loads = json.loads

_AUTH_OK = b"authorization: bearer " + fx.API_KEY.encode()
_MAX_CACHE = 4096


def _response(status: str, body: bytes, content_type: bytes = b"application/json") -> bytes:
    return (
        b"HTTP/1.1 " + status.encode() + b"\r\ncontent-type: " + content_type
        + b"\r\ncontent-length: " + str(len(body)).encode() + b"\r\n\r\n" + body
    )


_STREAM_HEAD = (
    b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ncache-control: no-cache\r\n"
    b"transfer-encoding: chunked\r\n\r\n"
)


def _http_chunk(data: bytes) -> bytes:
    return b"%x\r\n%s\r\n" % (len(data), data)


def _error(status: str, message: str) -> bytes:
    return _response(status, fx.dumps({"error": {"message": message, "type": "bench_error"}}))


class ResponseCache:
    """Pre-rendered response bytes, rendered once per key."""

    def __init__(self) -> None:
        self._items: dict[tuple[object, ...], bytes] = {}

    def get(self, key: tuple[object, ...], render: Callable[[], bytes]) -> bytes:
        """The cached bytes for `key`, rendering (and caching) them on first use."""
        found = self._items.get(key)
        if found is None:
            found = render()
            if len(self._items) >= _MAX_CACHE:
                self._items.clear()
            self._items[key] = found
        return found


CACHE = ResponseCache()


def render_chat(model: str) -> bytes:
    """A full HTTP response: non-streamed chat completion."""
    return _response("200 OK", fx.chat_completion_body(model))


def render_stream(model: str, chunks: int) -> bytes:
    """A full HTTP response: all SSE events of the stream, chunked, ready for one write."""
    events = fx.sse_events(model, chunks)
    return _STREAM_HEAD + b"".join(_http_chunk(e) for e in events) + b"0\r\n\r\n"


def render_embeddings(model: str, count: int, encoding_format: str) -> bytes:
    """A full HTTP response: embeddings for `count` inputs."""
    return _response("200 OK", fx.embeddings_body(model, count, encoding_format))


class SlowStream:
    """Writes one SSE event every `SLOW_CHUNK_INTERVAL_S` seconds until done or disconnected."""

    def __init__(self, loop: asyncio.AbstractEventLoop, transport: asyncio.Transport, model: str, chunks: int,
                 on_done: Callable[[], None]) -> None:
        self._loop = loop
        self._transport = transport
        self._events = fx.sse_events(model, chunks)
        self._next = 0
        self._on_done = on_done
        transport.write(_STREAM_HEAD + _http_chunk(self._events[0]))
        self._next = 1
        self._handle = loop.call_later(fx.SLOW_CHUNK_INTERVAL_S, self._tick)

    def _tick(self) -> None:
        if self._transport.is_closing():
            return
        events = self._events
        # After the last content chunk the tail (finish, usage, [DONE]) goes in one write.
        if self._next >= len(events) - 3:
            self._transport.write(b"".join(_http_chunk(e) for e in events[self._next:]) + b"0\r\n\r\n")
            self._on_done()
            return
        self._transport.write(_http_chunk(events[self._next]))
        self._next += 1
        self._handle = self._loop.call_later(fx.SLOW_CHUNK_INTERVAL_S, self._tick)

    def cancel(self) -> None:
        """Stop writing (the client went away)."""
        self._handle.cancel()


def _decode_chunked(buf: bytearray, start: int) -> tuple[bytes, int] | None:
    """Decode a chunked body beginning at `start`: (body, end offset), or None if incomplete."""
    parts: list[bytes] = []
    pos = start
    while True:
        line_end = buf.find(b"\r\n", pos)
        if line_end < 0:
            return None
        size = int(bytes(buf[pos:line_end]).split(b";", 1)[0], 16)
        if size == 0:
            trailer_end = buf.find(b"\r\n\r\n", line_end)
            if trailer_end < 0:
                return None
            return b"".join(parts), trailer_end + 4
        if len(buf) < line_end + 2 + size + 2:
            return None
        parts.append(bytes(buf[line_end + 2:line_end + 2 + size]))
        pos = line_end + 2 + size + 2


class UpstreamProtocol(asyncio.Protocol):
    """One client connection: parse requests, write cached responses."""

    def __init__(self) -> None:
        self._buf = bytearray()
        self._transport: asyncio.Transport | None = None
        self._slow: SlowStream | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = transport  # type: ignore[assignment]

    def connection_lost(self, exc: Exception | None) -> None:
        if self._slow is not None:
            self._slow.cancel()
            self._slow = None

    def data_received(self, data: bytes) -> None:
        buf = self._buf
        buf += data
        while self._slow is None:
            head_end = buf.find(b"\r\n\r\n")
            if head_end < 0:
                return
            head = bytes(buf[:head_end]).lower()
            body_start = head_end + 4
            cl_at = head.find(b"\r\ncontent-length:")
            if cl_at >= 0:
                cl_end = head.find(b"\r\n", cl_at + 2)
                length = int(head[cl_at + 17:cl_end if cl_end >= 0 else len(head)])
                if len(buf) < body_start + length:
                    return
                body = bytes(buf[body_start:body_start + length])
                consumed = body_start + length
            elif b"\r\ntransfer-encoding: chunked" in head:
                decoded = _decode_chunked(buf, body_start)
                if decoded is None:
                    return
                body, consumed = decoded
            else:
                body, consumed = b"", body_start
            del buf[:consumed]
            self._handle(head, body)

    def _handle(self, head: bytes, body: bytes) -> None:
        transport = self._transport
        assert transport is not None
        first_line = head[: head.find(b"\r\n")]
        parts = first_line.split(b" ")
        method = parts[0]
        path = parts[1].split(b"?", 1)[0] if len(parts) > 1 else b""
        if _AUTH_OK not in head:
            transport.write(_error("401 Unauthorized", "bench upstream: missing or wrong API key"))
            return
        if method == b"get" and path == b"/v1/models":
            transport.write(CACHE.get(("models",), lambda: _response("200 OK", fx.models_body())))
            return
        if method != b"post":
            transport.write(_error("404 Not Found", "bench upstream: unknown route"))
            return
        try:
            request = _loads(body)
            if not isinstance(request, dict):
                raise TypeError("body is not an object")
            model = str(request["model"])
        except (ValueError, KeyError, TypeError):
            transport.write(_error("400 Bad Request", "bench upstream: bad JSON body"))
            return
        if path == b"/v1/chat/completions":
            self._chat(transport, request, model)
        elif path == b"/v1/embeddings":
            inputs = request.get("input")
            count = len(inputs) if isinstance(inputs, list) else 1
            fmt = str(request.get("encoding_format") or "float")
            transport.write(CACHE.get(("emb", model, count, fmt), lambda: render_embeddings(model, count, fmt)))
        else:
            transport.write(_error("404 Not Found", "bench upstream: unknown route"))

    def _chat(self, transport: asyncio.Transport, request: dict[str, object], model: str) -> None:
        if request.get("stream") is not True:
            transport.write(CACHE.get(("chat", model), lambda: render_chat(model)))
            return
        parsed = fx.parse_stream_model(model)
        slow, chunks = parsed if parsed is not None else (False, 8)
        if slow:
            self._slow = SlowStream(asyncio.get_running_loop(), transport, model, chunks, self._slow_done)
        else:
            transport.write(CACHE.get(("stream", model, chunks), lambda: render_stream(model, chunks)))

    def _slow_done(self) -> None:
        self._slow = None
        if self._buf:
            self.data_received(b"")


async def serve(host: str, port: int) -> None:
    """Serve until SIGTERM/SIGINT."""
    loop = asyncio.get_running_loop()
    server = await loop.create_server(UpstreamProtocol, host, port, backlog=4096, reuse_address=True)
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    print(f"fake upstream listening on {host}:{port}", flush=True)
    await stop.wait()
    server.close()


def main() -> None:
    """Command-line entry point."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args()
    try:
        import uvloop

        uvloop.run(serve(args.host, args.port))
    except ImportError:
        asyncio.run(serve(args.host, args.port))


if __name__ == "__main__":
    main()
