"""A real OpenAI-compatible HTTP server on 127.0.0.1 that replays scripted replies.

It runs aiohttp in a background thread, records every request it receives (method, path,
headers, JSON body), and answers each path from a FIFO of scripted `Reply`s, or with a small
default answer when nothing is scripted. Replies can be JSON, SSE streams (one network write per
event, optionally paced), raw bytes, or a fixture from `references/openai-examples/`.

Fault modes (for tests/test_faults.py and scripts/soak.py): `stall` seconds before the status
line (or, with `stall_after=N`, after the Nth event), `cut_after=N` drops the TCP connection
after N events with no end-of-body, `abort` drops it before answering, and an event given as
`bytes` is written exactly as given (so one SSE event can be split across network reads).
`in_flight` counts requests being handled and `connections` open TCP connections; handlers are
cancelled when the gateway hangs up, so both fall back to zero when nothing leaks.
"""

from __future__ import annotations

import asyncio
import json
import threading
from collections import defaultdict, deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from aiohttp import web

EXAMPLES = Path(__file__).resolve().parent.parent / "references" / "openai-examples"


@dataclass
class Received:
    method: str
    path: str
    headers: dict[str, str]
    json: Any
    query: str = ""
    raw: bytes = b""  # the body as it arrived (a multipart form, say)


@dataclass
class Reply:
    status: int = 200
    json_body: Any = None
    events: list[str | bytes] | None = None  # SSE: each item is one write (str: an event's text; bytes: as is)
    raw: bytes | None = None
    content_type: str = "application/json"
    headers: dict[str, str] = field(default_factory=dict)
    delay: float = 0.0  # seconds before each SSE event
    stall: float = 0.0  # seconds of silence: before the status line, or after `stall_after` events
    stall_after: int | None = None
    cut_after: int | None = None  # drop the connection after this many events (no end of body)
    abort: bool = False  # drop the connection without answering

    @classmethod
    def json(cls, body: Any, status: int = 200, headers: dict[str, str] | None = None) -> Reply:
        return cls(status=status, json_body=body, headers=headers or {})

    @classmethod
    def sse(cls, chunks: list[Any], *, done: bool = True, delay: float = 0.0, **faults: Any) -> Reply:
        """Chunks are dicts (sent as `data: <json>`) or strings/bytes (sent verbatim as one write)."""
        events: list[str | bytes] = [c if isinstance(c, (str, bytes)) else f"data: {json.dumps(c)}\n\n" for c in chunks]
        if done:
            events.append("data: [DONE]\n\n")
        return cls(events=events, content_type="text/event-stream", delay=delay, **faults)

    @classmethod
    def fixture(cls, provider: str, feature: str, *, delay: float = 0.0) -> Reply:
        """A recorded or documented response from references/openai-examples/PROVIDER/FEATURE.json."""
        example = load_example(provider, feature)
        response = example["response"]
        headers = {k: v for k, v in response.get("headers", {}).items() if k.lower() != "content-type"}
        content_type = response.get("headers", {}).get("content-type", "application/json")
        if "body_text" in response:
            text = response["body_text"]
            if "text/event-stream" in content_type:
                events = [part + "\n\n" for part in text.split("\n\n") if part.strip()]
                return cls(status=response["status"], events=events, content_type="text/event-stream", headers=headers, delay=delay)
            return cls(status=response["status"], raw=text.encode(), content_type=content_type, headers=headers)
        return cls(status=response["status"], json_body=response["body"], headers=headers)


def load_example(provider: str, feature: str) -> dict[str, Any]:
    return json.loads((EXAMPLES / provider / f"{feature}.json").read_text())


def chat_completion(content: str = "Hello there.", *, model: str = "up-model", finish_reason: str = "stop",
                    usage: tuple[int, int] | None = (12, 3), **message: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "id": "chatcmpl-1",
        "object": "chat.completion",
        "created": 1764090192,
        "model": model,
        "choices": [{"index": 0, "message": {"role": "assistant", "content": content, **message}, "finish_reason": finish_reason}],
    }
    if usage:
        body["usage"] = {"prompt_tokens": usage[0], "completion_tokens": usage[1], "total_tokens": sum(usage)}
    return body


def chat_chunks(pieces: list[str], *, model: str = "up-model", finish_reason: str = "stop",
                usage: tuple[int, int] | None = (12, 3)) -> list[dict[str, Any]]:
    """An OpenAI stream: a role-only first delta, one delta per piece, the finish, the usage chunk."""
    def chunk(delta: dict[str, Any], finish: str | None = None) -> dict[str, Any]:
        return {"id": "chatcmpl-1", "object": "chat.completion.chunk", "created": 1764090192, "model": model,
                "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]}
    chunks = [chunk({"role": "assistant", "content": ""})]
    chunks += [chunk({"content": piece}) for piece in pieces]
    chunks.append(chunk({}, finish_reason))
    if usage:
        chunks.append({"id": "chatcmpl-1", "object": "chat.completion.chunk", "created": 1764090192, "model": model,
                       "choices": [], "usage": {"prompt_tokens": usage[0], "completion_tokens": usage[1], "total_tokens": sum(usage)}})
    return chunks


def embeddings_body(vectors: list[list[float]], *, prompt_tokens: int = 5, order: list[int] | None = None) -> dict[str, Any]:
    indices = order or list(range(len(vectors)))
    return {
        "object": "list",
        "data": [{"object": "embedding", "index": i, "embedding": vectors[i]} for i in indices],
        "model": "up-embed",
        "usage": {"prompt_tokens": prompt_tokens, "total_tokens": prompt_tokens},
    }


class FakeUpstream:
    """The server; `url` is its OpenAI base URL (ending in /v1)."""

    def __init__(self) -> None:
        self.received: list[Received] = []
        self._replies: dict[str, deque[Reply]] = defaultdict(deque)
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._runner: web.AppRunner | None = None
        self.port = 0
        self.open_connections = 0  # SSE responses being written
        self.in_flight = 0  # requests being handled, whatever the reply

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def start(self) -> FakeUpstream:
        self._thread.start()
        asyncio.run_coroutine_threadsafe(self._start(), self._loop).result(10)
        return self

    def stop(self) -> None:
        if self._runner is not None:
            asyncio.run_coroutine_threadsafe(self._runner.cleanup(), self._loop).result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(5)
        self._loop.close()

    @property
    def connections(self) -> int:
        """Open TCP connections (idle keep-alive ones included)."""
        assert self._runner is not None and self._runner.server is not None
        return len(self._runner.server.connections)

    def reset(self) -> None:
        self.received.clear()
        self._replies.clear()

    def enqueue(self, path: str, *replies: Reply) -> None:
        """Script the next replies for `path` (e.g. "/v1/chat/completions"), in order."""
        self._replies[path].extend(replies)

    def last(self, path: str = "/v1/chat/completions") -> Received:
        matching = [r for r in self.received if r.path == path]
        assert matching, f"the upstream received nothing at {path}"
        return matching[-1]

    async def _start(self) -> None:
        app = web.Application(client_max_size=64 * 1024 * 1024)
        app.router.add_route("*", "/{tail:.*}", self._handle)
        # handler_cancellation: a request the gateway abandons stops here too (and leaves in_flight).
        self._runner = web.AppRunner(app, access_log=None, handle_signals=False, handler_cancellation=True)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        server = site._server
        assert server is not None
        self.port = server.sockets[0].getsockname()[1]  # type: ignore[union-attr]

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        self.in_flight += 1
        try:
            raw = await request.read()
            try:
                body = json.loads(raw) if raw else None
            except ValueError:
                body = raw.decode(errors="replace")
            self.received.append(Received(request.method, request.path, dict(request.headers), body, request.query_string, raw))
            queue = self._replies.get(request.path)
            reply = queue.popleft() if queue else self._default(request.path, body)
            return await self._send(request, reply)
        finally:
            self.in_flight -= 1

    def _default(self, path: str, body: Any) -> Reply:
        if path.endswith("/chat/completions"):
            if isinstance(body, dict) and body.get("stream"):
                return Reply.sse(chat_chunks(["Hello", " there", "."]))
            return Reply.json(chat_completion())
        if path.endswith("/embeddings"):
            count = len(body["input"]) if isinstance(body, dict) and isinstance(body.get("input"), list) else 1
            return Reply.json(embeddings_body([[3.0, 4.0, 0.0] for _ in range(count)]))
        if path.endswith("/models"):
            return Reply.json({"object": "list", "data": [{"id": "up-model", "object": "model", "created": 0, "owned_by": "test"}]})
        return Reply.json({"error": {"message": f"no route {path}", "type": "invalid_request_error"}}, status=404)

    async def _send(self, request: web.Request, reply: Reply) -> web.StreamResponse:
        if reply.stall and reply.stall_after is None:
            await asyncio.sleep(reply.stall)
        if reply.abort:
            return _drop(request)
        if reply.events is None:
            data = reply.raw if reply.raw is not None else json.dumps(reply.json_body).encode()
            return web.Response(body=data, status=reply.status, headers={"Content-Type": reply.content_type, **reply.headers})
        response = web.StreamResponse(status=reply.status, headers={"Content-Type": reply.content_type, **reply.headers})
        await response.prepare(request)
        self.open_connections += 1
        try:
            for sent, event in enumerate(reply.events):
                if sent == reply.cut_after:
                    return _drop(request, response)
                if sent == reply.stall_after:
                    await asyncio.sleep(reply.stall)
                if reply.delay:
                    await asyncio.sleep(reply.delay)
                await response.write(event if isinstance(event, bytes) else event.encode())
            if reply.cut_after is not None and reply.cut_after >= len(reply.events):
                return _drop(request, response)
            await response.write_eof()
        finally:
            self.open_connections -= 1
        return response


def _drop(request: web.Request, response: web.StreamResponse | None = None) -> web.StreamResponse:
    """Close the TCP connection at once: no status line, or a body with no end (chunked, unterminated)."""
    transport = request.transport
    if transport is not None:
        transport.abort()
    return response if response is not None else web.Response(status=500)
