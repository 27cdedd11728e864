"""The upstream attempts of one request, as the exchange (exchange.py) makes them: timed, logged,
traced.

    Attempts.calling(target, path)   said by a call right before it sends: its request is
                                     translated, its wait starts, its span (tracing on) opens and
                                     the span's `traceparent` goes with the call (`tracing.CARRIED`,
                                     read by `UpstreamClient.request_headers`)
    Attempts.ended(error, ...)       the attempt's first byte, answer or failure: its wait on the
                                     record (`RequestRecord.attempted`), its span closed
    log_failure, log_wait            the `upstream_attempt` warning of a failed attempt, and the
                                     `upstream_retry` line of the wait before the next

At `--log-level debug` each attempt leaves `translated`, `upstream_called`, then
`upstream_first_byte` (a stream) or `upstream_answered` (status, outcome). Nothing here runs
per chunk; at `info` without tracing an attempt costs two clock reads and a few flag checks.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from contextvars import Token
from typing import Any

import structlog
from tenacity import RetryCallState

from gateway import logs, tracing
from gateway.errors import GatewayError
from gateway.logs import RequestRecord
from gateway.routing.resolver import Target

log = structlog.get_logger()


class Attempts:
    """The attempts of one request: how many so far, and the one in flight."""

    __slots__ = ("record", "number", "_called", "_span", "_carried")

    def __init__(self, record: RequestRecord) -> None:
        self.record = record
        self.number = 0
        self._called = 0
        self._span: Any = None
        self._carried: Token[Mapping[str, str] | None] | None = None

    def begin(self) -> None:
        self.number += 1
        self._called = 0

    def calling(self, target: Target, path: str, dropped: list[str] | None = None) -> None:
        """Said by the call right before it sends `path` to `target`: its request is translated."""
        record = self.record
        self._called = now = time.perf_counter_ns()
        if not record.translated:
            record.translated = now
        if logs.DEBUG:
            log.debug("translated", upstream_path=path, options_dropped=dropped or [], attempt=self.number)
            log.debug("upstream_called", upstream=target.upstream_name, upstream_model=target.upstream_model,
                      attempt=self.number)
        if record.span is not None:
            tracer = tracing.TRACER
            assert tracer is not None
            self._span, carried = tracer.start_attempt(record, target, self.number)
            self._carried = tracing.CARRIED.set(carried)

    def ended(self, error: GatewayError | None, *, failed: bool, streamed: bool = False, status: int = 200) -> int:
        """The attempt is over: answered (`streamed`: at its first byte) or `failed`. Now, in ns."""
        now = self.record.attempted(self._called or time.perf_counter_ns())
        if self._carried is not None:
            tracing.CARRIED.reset(self._carried)
            self._carried = None
        span, self._span = self._span, None
        if span is not None:
            tracer = tracing.TRACER
            if tracer is not None:
                tracer.end_attempt(span, error if failed else None)
        if logs.DEBUG:
            waited = round((now - (self._called or now)) / 1e6, 3)
            if not failed:
                if streamed:
                    log.debug("upstream_first_byte", attempt=self.number, ms=waited)
                else:
                    log.debug("upstream_answered", attempt=self.number, status=status, outcome="ok", ms=waited)
            elif error is not None:
                log.debug("upstream_answered", attempt=self.number, status=error.status_code, outcome="failed",
                          error=error.message, ms=waited)
        return now


def log_failure(target: Target, attempt: int, exc: GatewayError, fallback: bool = False) -> None:
    log.warning(
        "upstream_attempt", upstream=target.upstream_name, upstream_model=target.upstream_model, attempt=attempt,
        fallback=fallback, outcome="failed", status=exc.status_code, error=exc.message,
        then={"retry": "retry", "next": "fall back", "stop": "give up"}[exc.verdict],
    )


def log_wait(target: Target) -> Callable[[RetryCallState], None]:
    def logged(state: RetryCallState) -> None:
        wait = state.next_action.sleep if state.next_action is not None else 0.0
        log.info("upstream_retry", upstream=target.upstream_name, upstream_model=target.upstream_model, wait_s=round(wait, 3))

    return logged
