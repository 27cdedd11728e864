"""Ollama's timestamps and the durations on a final chunk, measured by the gateway.

Ollama writes `created_at` as Go's RFC 3339 with nanoseconds, UTC, trailing zeros trimmed
(`2026-11-25T17:03:12.104593Z`), and every duration as integer nanoseconds. The gateway's four
instants (openai-mapping.md §3.4): request received, upstream called, first token, last token.
"""

from __future__ import annotations

import time
from datetime import UTC, datetime

_second_cache: tuple[int, str] = (-1, "")


def rfc3339(ns: int) -> str:
    """UTC RFC 3339 with up to nine fractional digits, trailing zeros trimmed, as Go prints."""
    global _second_cache
    seconds, fraction = divmod(ns, 1_000_000_000)
    cached_second, prefix = _second_cache
    if cached_second != seconds:
        prefix = datetime.fromtimestamp(seconds, UTC).strftime("%Y-%m-%dT%H:%M:%S")
        _second_cache = (seconds, prefix)
    if fraction:
        return f"{prefix}.{fraction:09d}".rstrip("0") + "Z"
    return prefix + "Z"


def now_rfc3339() -> str:
    return rfc3339(time.time_ns())


class RequestClock:
    """The instants of one request, in `perf_counter_ns` units."""

    __slots__ = ("received", "upstream_called", "first_token", "last_token")

    def __init__(self, received: int | None = None) -> None:
        self.received = received if received is not None else time.perf_counter_ns()
        self.upstream_called = 0
        self.first_token = 0
        self.last_token = 0

    def mark_upstream_called(self) -> None:
        self.upstream_called = time.perf_counter_ns()

    def mark_token(self) -> None:
        now = time.perf_counter_ns()
        if not self.first_token:
            self.first_token = now
        self.last_token = now

    def metrics(self, prompt_tokens: int, completion_tokens: int) -> dict[str, int]:
        """The six metrics of a final chunk; each duration at least 1 ns (clients divide by them)."""
        now = time.perf_counter_ns()
        called = self.upstream_called or now
        first = self.first_token or now
        last = self.last_token or now
        if not self.first_token:
            # Not streamed (or nothing streamed): split the upstream's time by token counts.
            upstream = max(now - called, 2)
            share = prompt_tokens / (prompt_tokens + completion_tokens) if prompt_tokens + completion_tokens else 0.5
            prompt_duration = int(upstream * share)
            eval_duration = upstream - prompt_duration
        else:
            prompt_duration = first - called
            eval_duration = last - first
        return {
            "total_duration": max(now - self.received, 1),
            "load_duration": max(called - self.received, 1),
            "prompt_eval_count": prompt_tokens,
            "prompt_eval_duration": max(prompt_duration, 1),
            "eval_count": completion_tokens,
            "eval_duration": max(eval_duration, 1),
        }

    def elapsed_ns(self) -> int:
        return max(time.perf_counter_ns() - self.received, 1)
