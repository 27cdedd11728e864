"""Validity checks for every response the load generator receives.

A check is a callable ``check(body) -> None | str``: None when the body is a correct answer to
the request that was sent, else a short reason. The direct (client -> fake upstream) path is
checked byte for byte against what the upstream renders; Ollama-shaped answers are parsed and
compared field by field with what a correct gateway must say (see `bench_fixtures`).
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from typing import Any

import bench_fixtures as fx

try:
    import orjson

    loads: Callable[[bytes], object] = orjson.loads
except ImportError:  # pragma: no cover - the project venv has orjson
    loads = json.loads

Check = Callable[[bytes], "str | None"]


def exact_bytes(expected: bytes, what: str) -> Check:
    """A check that the body is exactly `expected` (used for the direct path)."""

    def check(body: bytes) -> str | None:
        return None if body == expected else f"{what}: body differs from what the upstream sent"

    return check


def direct_chat_check(model: str) -> Check:
    """Direct POST /v1/chat/completions, non-streamed."""
    return exact_bytes(fx.chat_completion_body(model), "direct chat")


def direct_stream_check(model: str, chunks: int) -> Check:
    """Direct POST /v1/chat/completions, streamed (body after chunked decoding)."""
    return exact_bytes(b"".join(fx.sse_events(model, chunks)), "direct stream")


def direct_embed_check(model: str, count: int) -> Check:
    """Direct POST /v1/embeddings."""
    return exact_bytes(fx.embeddings_body(model, count), "direct embed")


def _duration_problem(obj: dict[str, Any], require_total: bool) -> str | None:
    """None if every `*_duration` field is a non-negative int (and total_duration exists)."""
    if require_total and "total_duration" not in obj:
        return "no total_duration"
    for key, value in obj.items():
        if key.endswith("_duration") and (type(value) is not int or value < 0):
            return f"{key} is not a non-negative integer: {value!r}"
    return None


def _final_fields_problem(obj: dict[str, Any], model: str, completion_tokens: int) -> str | None:
    """Checks shared by the non-streamed answer and the final stream line."""
    if obj.get("model") != model:
        return f"model {obj.get('model')!r} != {model!r}"
    if not isinstance(obj.get("done_reason"), str) or not obj["done_reason"]:
        return "no done_reason"
    if "eval_count" in obj and obj["eval_count"] != completion_tokens:
        return f"eval_count {obj['eval_count']!r} != {completion_tokens}"
    if "prompt_eval_count" in obj and obj["prompt_eval_count"] != fx.PROMPT_TOKENS:
        return f"prompt_eval_count {obj['prompt_eval_count']!r} != {fx.PROMPT_TOKENS}"
    return _duration_problem(obj, require_total=True)


def ollama_chat_check(model: str) -> Check:
    """Ollama POST /api/chat with stream false: one JSON object, done true, the exact text."""

    def check(body: bytes) -> str | None:
        try:
            obj = loads(body)
        except ValueError:
            return "chat: body is not JSON"
        if not isinstance(obj, dict):
            return "chat: body is not an object"
        if obj.get("done") is not True:
            return "chat: done is not true"
        message = obj.get("message")
        if not isinstance(message, dict) or message.get("role") != "assistant":
            return "chat: no assistant message"
        if message.get("content") != fx.CHAT_TEXT:
            return f"chat: wrong content {str(message.get('content'))[:60]!r}"
        problem = _final_fields_problem(obj, model, fx.CHAT_COMPLETION_TOKENS)
        return f"chat: {problem}" if problem else None

    return check


def ollama_stream_check(model: str, chunks: int) -> Check:
    """Ollama POST /api/chat with stream true: NDJSON, done false on every line but the last,
    whose done is true with a done_reason; the message contents concatenate to the text."""
    expected_text = fx.stream_text(chunks)

    def check(body: bytes) -> str | None:
        if not body.endswith(b"\n"):
            return "stream: last line not newline-terminated"
        lines = body[:-1].split(b"\n")
        parts: list[str] = []
        last = len(lines) - 1
        for number, line in enumerate(lines):
            try:
                obj = loads(line)
            except ValueError:
                return f"stream: line {number} is not JSON"
            if not isinstance(obj, dict):
                return f"stream: line {number} is not an object"
            done = obj.get("done")
            if number < last and done is not False:
                return f"stream: line {number} of {last + 1} has done={done!r} (only the last may be done)"
            message = obj.get("message")
            if not isinstance(message, dict) or not isinstance(message.get("content"), str):
                return f"stream: line {number} has no message.content"
            parts.append(message["content"])
        final = loads(lines[last])
        if not isinstance(final, dict) or final.get("done") is not True:
            return "stream: last line is not done:true"
        problem = _final_fields_problem(final, model, chunks)
        if problem:
            return f"stream final line: {problem}"
        if "".join(parts) != expected_text:
            return f"stream: content differs ({len(''.join(parts))} chars, want {len(expected_text)})"
        return None

    return check


def _vectors_problem(vectors: object, count: int) -> str | None:
    """None if `vectors` are the expected `count` unit-length vectors (direction preserved)."""
    if not isinstance(vectors, list) or len(vectors) != count:
        return f"embed: want {count} vectors"
    for index, vector in enumerate(vectors):
        if not isinstance(vector, list) or len(vector) != fx.EMBED_DIMS:
            return f"embed: vector {index} does not have {fx.EMBED_DIMS} numbers"
        norm = math.sqrt(math.fsum(v * v for v in vector))
        if abs(norm - 1.0) > 1e-5:
            return f"embed: vector {index} is not L2-normalised (norm {norm:.4f})"
        expected = fx.normalized_embedding(index)
        if max(abs(a - b) for a, b in zip(vector, expected)) > 1e-6:
            return f"embed: vector {index} differs from the upstream's (normalised) vector"
    return None


def ollama_embed_check(model: str, count: int) -> Check:
    """Ollama POST /api/embed: `count` L2-normalised vectors equal to the upstream's.

    Checking 6,144 floats in Python is slow, and a gateway answers the same request with the
    same bytes, so the `embeddings` array is validated once per distinct byte string and then
    compared (memcmp); the rest of the object is parsed every time.
    """
    verdicts: dict[bytes, str | None] = {}

    def check(body: bytes) -> str | None:
        key_at = body.find(b'"embeddings"')
        start = body.find(b"[", key_at)
        end = body.find(b"]]", start)
        if key_at < 0 or start < 0 or end < 0:
            return "embed: no embeddings array"
        array = body[start:end + 2]
        verdict = verdicts.get(array, "unseen")
        if verdict == "unseen":
            try:
                verdict = _vectors_problem(loads(array), count)
            except ValueError:
                verdict = "embed: embeddings array is not JSON"
            if len(verdicts) < 64:
                verdicts[array] = verdict
        if verdict:
            return verdict
        try:
            rest = loads(body[:start] + b"[]" + body[end + 2:])
        except ValueError:
            return "embed: body is not JSON"
        if not isinstance(rest, dict) or rest.get("model") != model:
            return "embed: wrong or missing model"
        problem = _duration_problem(rest, require_total=False)
        return f"embed: {problem}" if problem else None

    return check
