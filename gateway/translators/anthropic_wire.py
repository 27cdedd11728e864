"""Anthropic's wire shapes shared by the Messages translator and its handler: the SSE framing,
the error object and status for a GatewayError (503 -> 529 `overloaded_error`), and an upstream's
"context too long" reworded as Anthropic says it (`prompt is too long: N tokens > M maximum`),
the wording that makes Claude Code compact its context (agents-api.md)."""

from __future__ import annotations

import re
from typing import Any

import orjson

from gateway.errors import BadRequest, GatewayError, UpstreamRelayed

SSE_MEDIA_TYPE = "text/event-stream; charset=utf-8"
_ERROR_TYPES = {
    400: "invalid_request_error", 401: "authentication_error", 402: "billing_error", 403: "permission_error",
    404: "not_found_error", 413: "request_too_large", 429: "rate_limit_error", 500: "api_error",
    504: "timeout_error", 529: "overloaded_error",
}
_OVERFLOW = re.compile(
    r"context.{0,20}(length|window|size|limit)|too many tokens|prompt is too long|context_length_exceeded|reduce the length",
    re.IGNORECASE,
)
_OPENAI_OVERFLOW = re.compile(r"maximum context length is (\d+) tokens.*?(?:resulted in|requested) (\d+) tokens", re.IGNORECASE | re.DOTALL)
_SPLIT_OVERFLOW = re.compile(r"\((\d+) in the messages, (\d+) in the completion\)")


def anthropic_status(error: GatewayError) -> tuple[int, str]:
    """The status and Anthropic error type a GatewayError is answered with (a native upstream's
    own error, `UpstreamRelayed`, keeps its status and type)."""
    if isinstance(error, UpstreamRelayed) and isinstance(error.error.get("type"), str):
        return error.status_code, str(error.error["type"])
    status = 529 if error.status_code == 503 else error.status_code
    kind = _ERROR_TYPES.get(status) or ("invalid_request_error" if status < 500 else "api_error")
    return status, kind


def error_object(error: GatewayError) -> dict[str, Any]:
    return {"type": "error", "error": {"type": anthropic_status(error)[1], "message": error.message}}


class AnthropicSSE:
    """Anthropic's framing: `event: <type>` and `data: <JSON>` per event; a failure is an `error` event."""

    media_type = SSE_MEDIA_TYPE

    def encode(self, chunks: list[dict[str, Any]]) -> bytes:
        return b"".join(b"event: " + chunk["type"].encode() + b"\ndata: " + orjson.dumps(chunk) + b"\n\n" for chunk in chunks)

    def error_chunk(self, error: GatewayError) -> bytes:
        return self.encode([error_object(error)])


def context_overflow(error: GatewayError) -> GatewayError | None:
    """An upstream 400 saying the prompt does not fit, in Anthropic's words; None for any other
    error, and for a native Messages upstream's own (relayed as it is)."""
    if isinstance(error, UpstreamRelayed) or error.status_code not in (400, 413) or not _OVERFLOW.search(error.message):
        return None
    if error.message.startswith(("prompt is too long", "input length and")):
        return BadRequest(error.message)
    split, openai = _SPLIT_OVERFLOW.search(error.message), _OPENAI_OVERFLOW.search(error.message)
    if split and openai:
        return BadRequest(f"input length and `max_tokens` exceed context limit: {split[1]} + {split[2]} > {openai[1]}")
    if openai:
        return BadRequest(f"prompt is too long: {openai[2]} tokens > {openai[1]} maximum")
    return BadRequest(f"prompt is too long: {error.message}")
