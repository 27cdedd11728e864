"""Deterministic content shared by the fake upstream and the response checkers.

Everything the fake upstream says is a pure function of the request (model id, number of
embedding inputs), so a checker can recompute exactly what a correct gateway must return.

Model ids the fake upstream understands (any other id gets a plain chat completion):

* ``fake-stream-N``: a streamed chat completion of N content chunks.
* ``fake-slow-N``: the same, but one chunk every ``SLOW_CHUNK_INTERVAL_S`` seconds.
"""

from __future__ import annotations

import json
import math
import re
from functools import lru_cache

API_KEY = "bench-key"
CHAT_MODEL = "fake-chat"
EMBED_MODEL = "fake-embed"
EMBED_DIMS = 384
EMBED_INPUTS = 16
SLOW_CHUNK_INTERVAL_S = 0.1
CREATED = 1_700_000_000
PROMPT_TOKENS = 12

# Quotes, a tab, a backslash and non-ASCII text make a lazy re-encoder visibly wrong.
CHAT_TEXT = 'Hello from the fake upstream: "quoted", tab\t, back\\slash, unicode é ✓ — 42.'
CHAT_COMPLETION_TOKENS = 17

_CHUNKED_MODEL = re.compile(r"^fake-(stream|slow)-(\d+)$")


def stream_model(chunks: int) -> str:
    """The model id that makes the fake upstream stream `chunks` content chunks quickly."""
    return f"fake-stream-{chunks}"


def slow_model(chunks: int) -> str:
    """The model id that makes the fake upstream stream `chunks` chunks, one per interval."""
    return f"fake-slow-{chunks}"


def parse_stream_model(model: str) -> tuple[bool, int] | None:
    """(is_slow, chunk count) for a `fake-stream-N` / `fake-slow-N` id, else None."""
    match = _CHUNKED_MODEL.match(model)
    if match is None:
        return None
    return match.group(1) == "slow", min(int(match.group(2)), 100_000)


def chunk_text(index: int) -> str:
    """The content of stream chunk `index` (every 8th carries non-ASCII text)."""
    return f"é{index} " if index % 8 == 7 else f"tok{index} "


@lru_cache(maxsize=64)
def stream_text(chunks: int) -> str:
    """The whole assistant text of an N-chunk stream: the concatenation of its chunks."""
    return "".join(chunk_text(i) for i in range(chunks))


def embed_inputs(count: int = EMBED_INPUTS) -> list[str]:
    """The input strings the load generator sends to the embedding endpoints."""
    return [f"benchmark sentence number {i} about gateways" for i in range(count)]


@lru_cache(maxsize=64)
def raw_embedding(index: int, dims: int = EMBED_DIMS) -> tuple[float, ...]:
    """A deterministic, deliberately *not* unit-length vector for input `index`.

    Values come from a small LCG, rounded to 8 decimals the way OpenAI-style servers print
    them; a gateway that must L2-normalise (Ollama's /api/embed does) has real work to do.
    """
    state = (index + 1) * 2_654_435_761 % 2**32
    values = []
    for _ in range(dims):
        state = (1_103_515_245 * state + 12_345) % 2**31
        values.append(round(state / 2**31 * 2.0 - 1.0, 8))
    return tuple(values)


@lru_cache(maxsize=64)
def normalized_embedding(index: int, dims: int = EMBED_DIMS) -> tuple[float, ...]:
    """`raw_embedding` scaled to unit L2 norm: what Ollama's /api/embed must return."""
    vector = raw_embedding(index, dims)
    norm = math.sqrt(math.fsum(v * v for v in vector))
    return tuple(v / norm for v in vector)


def dumps(obj: object) -> bytes:
    """Compact JSON bytes, non-ASCII kept as UTF-8 (like most OpenAI-compatible servers)."""
    return json.dumps(obj, ensure_ascii=False, separators=(",", ":")).encode()


def chat_completion_body(model: str) -> bytes:
    """A non-streamed OpenAI chat completion, with usage."""
    return dumps(
        {
            "id": "chatcmpl-bench",
            "object": "chat.completion",
            "created": CREATED,
            "model": model,
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": CHAT_TEXT},
                    "logprobs": None,
                    "finish_reason": "stop",
                }
            ],
            "usage": {
                "prompt_tokens": PROMPT_TOKENS,
                "completion_tokens": CHAT_COMPLETION_TOKENS,
                "total_tokens": PROMPT_TOKENS + CHAT_COMPLETION_TOKENS,
            },
        }
    )


def _chunk_event(model: str, delta: dict[str, str], finish_reason: str | None,
                 usage: dict[str, int] | None = None) -> bytes:
    chunk: dict[str, object] = {
        "id": "chatcmpl-bench",
        "object": "chat.completion.chunk",
        "created": CREATED,
        "model": model,
        "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish_reason}]
        if usage is None
        else [],
    }
    if usage is not None:
        chunk["usage"] = usage
    return b"data: " + dumps(chunk) + b"\n\n"


def sse_events(model: str, chunks: int) -> list[bytes]:
    """The SSE events of an N-chunk stream, in order, each `data: ...\\n\\n`.

    A role-only first chunk, then N content chunks, then a finish chunk, a usage chunk
    (`choices: []`, as with `stream_options.include_usage`) and `data: [DONE]`.
    """
    events = [_chunk_event(model, {"role": "assistant", "content": ""}, None)]
    events += [_chunk_event(model, {"content": chunk_text(i)}, None) for i in range(chunks)]
    events.append(_chunk_event(model, {}, "stop"))
    usage = {"prompt_tokens": PROMPT_TOKENS, "completion_tokens": chunks, "total_tokens": PROMPT_TOKENS + chunks}
    events.append(_chunk_event(model, {}, None, usage=usage))
    events.append(b"data: [DONE]\n\n")
    return events


def embeddings_body(model: str, count: int, encoding_format: str = "float") -> bytes:
    """An OpenAI embeddings response for `count` inputs (base64 = little-endian float32)."""
    data = []
    for i in range(count):
        vector = raw_embedding(i)
        if encoding_format == "base64":
            import array
            import base64

            embedding: object = base64.b64encode(array.array("f", vector).tobytes()).decode()
        else:
            embedding = list(vector)
        data.append({"object": "embedding", "index": i, "embedding": embedding})
    return dumps(
        {
            "object": "list",
            "data": data,
            "model": model,
            "usage": {"prompt_tokens": 8 * count, "total_tokens": 8 * count},
        }
    )


def models_body() -> bytes:
    """GET /v1/models."""
    ids = [CHAT_MODEL, EMBED_MODEL, stream_model(64), stream_model(512), slow_model(40)]
    return dumps(
        {
            "object": "list",
            "data": [{"id": i, "object": "model", "created": CREATED, "owned_by": "bench"} for i in ids],
        }
    )
