"""The floor: a bare Ollama -> OpenAI translator, the least this stack (FastAPI on Granian) can cost.

    FLOOR_UPSTREAM=http://127.0.0.1:U/v1 FLOOR_API_KEY=KEY granian --interface asgi --factory \
        --loop uvloop --http 1 --working-dir scripts --port P bench_floor:create_app

`bench.py` runs it beside the gateway, with `gateway.cli.serve`'s Granian options (ASGI, factory,
uvloop, HTTP/1, one worker, no access log, same header buffer and kill timeout; see
`bench_targets.start_floor`), pinned to the same core. It serves only `POST /api/chat` (JSON and
NDJSON) and `POST /api/embed`, through one aiohttp session with no connection limit; it does no
validation, no logging and no error mapping, and passes model names through unchanged (the
bench's routes.yaml maps `"*"` to the fake upstream under the same name).

Streams are translated as they arrive: one NDJSON write per network read, the final `done` line
in the same write as the upstream's `[DONE]`. So the first line waits until the whole first read
is translated: the fake upstream writes a fast stream in one go, and for 512 chunks the floor's
first line comes with its last.

Embeddings: Ollama returns unit-length vectors. A vector that is already unit-length is passed
as it is; any other is normalised in Python (`math.hypot`, then one division per value). The
bench's fake upstream sends vectors that are deliberately not unit-length, so the floor
normalises every one, as the gateway must.
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import aiohttp
import orjson
from fastapi import FastAPI, Request
from fastapi.responses import Response, StreamingResponse


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


def _final(model: str, created: str, content: str, reason: str, usage: dict[str, Any], started: int) -> bytes:
    return orjson.dumps({
        "model": model, "created_at": created, "message": {"role": "assistant", "content": content}, "done": True,
        "done_reason": reason, "total_duration": time.perf_counter_ns() - started, "load_duration": 0,
        "prompt_eval_count": usage.get("prompt_tokens", 0), "eval_count": usage.get("completion_tokens", 0),
    })


def _unit(vector: list[float]) -> list[float]:
    norm = math.hypot(*vector)
    return vector if norm == 0.0 or abs(norm - 1.0) < 1e-9 else [value / norm for value in vector]


async def _ndjson(upstream: aiohttp.ClientResponse, model: str, started: int) -> AsyncIterator[bytes]:
    """Upstream SSE events -> Ollama NDJSON lines, one write per network read."""
    created, reason, pending = _now(), "stop", b""
    usage: dict[str, Any] = {}
    async with upstream:
        async for data in upstream.content.iter_any():
            *events, pending = (pending + data).split(b"\n\n")
            lines = []
            for event in events:
                if not event.startswith(b"data:"):
                    continue
                payload = event[5:].strip()
                if payload == b"[DONE]":
                    lines.append(_final(model, created, "", reason, usage, started) + b"\n")
                    continue
                chunk = orjson.loads(payload)
                usage = chunk.get("usage") or usage
                for choice in chunk["choices"]:
                    reason = choice.get("finish_reason") or reason
                    if content := choice["delta"].get("content"):
                        lines.append(orjson.dumps({"model": model, "created_at": created, "done": False,
                                                   "message": {"role": "assistant", "content": content}}) + b"\n")
            if lines:
                yield b"".join(lines)


def create_app() -> FastAPI:
    """The app, per Granian worker; the upstream comes from FLOOR_UPSTREAM and FLOOR_API_KEY."""
    base = os.environ["FLOOR_UPSTREAM"].rstrip("/")
    headers = {"Authorization": f"Bearer {os.environ['FLOOR_API_KEY']}", "Content-Type": "application/json"}
    sessions: list[aiohttp.ClientSession] = []

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        sessions.append(aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0), headers=headers))
        yield
        await sessions.pop().close()

    app = FastAPI(lifespan=lifespan, openapi_url=None, docs_url=None, redoc_url=None)

    @app.get("/")
    async def root() -> Response:
        return Response(b"Ollama is running", media_type="text/plain")

    @app.post("/api/chat")
    async def chat(request: Request) -> Response:
        started = time.perf_counter_ns()
        ask = orjson.loads(await request.body())
        model, options = ask["model"], ask.get("options") or {}
        body: dict[str, Any] = {"model": model, "messages": ask["messages"]}
        if "temperature" in options:
            body["temperature"] = options["temperature"]
        if "num_predict" in options:
            body["max_tokens"] = options["num_predict"]
        if ask.get("stream", True):
            body["stream"], body["stream_options"] = True, {"include_usage": True}
            upstream = await sessions[0].post(base + "/chat/completions", data=orjson.dumps(body))
            return StreamingResponse(_ndjson(upstream, model, started), media_type="application/x-ndjson")
        async with sessions[0].post(base + "/chat/completions", data=orjson.dumps(body)) as upstream:
            reply = orjson.loads(await upstream.read())
        choice = reply["choices"][0]
        final = _final(model, _now(), choice["message"].get("content") or "", choice.get("finish_reason") or "stop",
                       reply.get("usage") or {}, started)
        return Response(final, media_type="application/json")

    @app.post("/api/embed")
    async def embed(request: Request) -> Response:
        started = time.perf_counter_ns()
        ask = orjson.loads(await request.body())
        body = {"model": ask["model"], "input": ask["input"], "encoding_format": "float"}
        async with sessions[0].post(base + "/embeddings", data=orjson.dumps(body)) as upstream:
            reply = orjson.loads(await upstream.read())
        vectors = [_unit(item["embedding"]) for item in sorted(reply["data"], key=lambda item: item["index"])]
        return Response(orjson.dumps({
            "model": ask["model"], "embeddings": vectors, "total_duration": time.perf_counter_ns() - started,
            "load_duration": 0, "prompt_eval_count": (reply.get("usage") or {}).get("prompt_tokens", 0),
        }), media_type="application/json")

    return app
