#!/usr/bin/env python3
"""What tracing costs per request, in-process (no server: the numbers the busy bench cannot see).

    .venv/bin/python scripts/bench_tracing.py

1. The stage marks: a request's record with its marks set and its summary fields computed
   (the `request` line's stage times), against the same record before any mark (the fields a
   request without a model has): what every request pays at `info`.
2. The debug guards at `info`: the `if logs.DEBUG:` checks a request passes (about seven).
3. Spans (the otel extra): the request path's share (the server span, one attempt's span with its
   `traceparent`, the translate and stream spans at the end) with a batch processor whose
   exporter drops the batch, and the exporter's share (OTLP protobuf encoding of the same four
   spans), which runs on the SDK's export thread; and a request the sampler leaves out.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from gateway import logs  # noqa: E402
from gateway.logs import RequestRecord  # noqa: E402

ROUNDS = 20_000


def per_call(function: Callable[[], Any], rounds: int = ROUNDS) -> float:
    """Microseconds per call, the best of five runs."""
    best = float("inf")
    for _ in range(5):
        started = time.perf_counter()
        for _ in range(rounds):
            function()
        best = min(best, time.perf_counter() - started)
    return best / rounds * 1e6


def marked_record() -> RequestRecord:
    record = RequestRecord("0123456789abcdef", "POST", "/api/chat")
    record.validated = time.perf_counter_ns()
    record.translated = time.perf_counter_ns()
    began = time.perf_counter_ns()
    record.answered = record.attempted(began)
    record.streamed = time.perf_counter_ns()
    record.model, record.upstream, record.upstream_model = "tiny", "fake", "up-model"
    record.tokens(12, 3)
    record.chunks = 64
    return record


def plain_record() -> RequestRecord:
    record = RequestRecord("0123456789abcdef", "POST", "/api/chat")
    record.model, record.upstream, record.upstream_model = "tiny", "fake", "up-model"
    record.tokens(12, 3)
    record.chunks = 64
    return record


def guards() -> None:
    for _ in range(7):
        if logs.DEBUG:
            raise AssertionError


def spans() -> tuple[float, float, float] | None:
    try:
        from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans
        from opentelemetry.sdk.resources import Resource
        from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter, SpanExportResult
        from opentelemetry.sdk.trace.sampling import ALWAYS_OFF
    except ImportError:
        return None
    from gateway.otel import Tracing
    from gateway.routing.loader import load_route_map

    kept: list[ReadableSpan] = []

    class Dropping(SpanExporter):
        def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
            if len(kept) < 4:
                kept.extend(spans[: 4 - len(kept)])
            return SpanExportResult.SUCCESS

    provider = TracerProvider(resource=Resource.create({"service.name": "bench"}))
    provider.add_span_processor(BatchSpanProcessor(Dropping()))
    tracing = Tracing(provider)
    unsampled = Tracing(TracerProvider(sampler=ALWAYS_OFF))
    route_map = load_route_map("bench.yaml", text="upstreams:\n  fake: {base_url: 'http://127.0.0.1:8000/v1'}\nmodels:\n  - {name: tiny, upstream: fake, model: up-model}\n")
    target = route_map.resolve("tiny")
    assert target is not None
    scope = {"headers": [(b"host", b"127.0.0.1"), (b"traceparent", b"00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01")]}

    def one_request(tracing: Tracing, scope: dict[str, Any]) -> None:
        record = marked_record()
        record.span = tracing.start_request(scope, record)
        span, _ = tracing.start_attempt(record, target, 1)
        tracing.end_attempt(span, None)
        fields = record.fields()
        tracing.end_request(record, fields)

    bare = per_call(lambda: marked_record().fields(), 5_000)
    path = per_call(lambda: one_request(tracing, scope), 5_000) - bare
    skipped = per_call(lambda: one_request(unsampled, {"headers": []}), 5_000) - bare
    provider.force_flush()
    assert len(kept) == 4, kept
    encode = per_call(lambda: encode_spans(kept).SerializeToString(), 5_000)
    provider.shutdown()
    return path, encode, skipped


def main() -> None:
    marked = per_call(lambda: marked_record().fields())
    plain = per_call(lambda: plain_record().fields())
    print(f"stage marks and stage fields: {marked - plain:6.2f} µs per request "
          f"(record + fields: {marked:.2f} µs with the marks, {plain:.2f} µs without)")
    print(f"debug guards at info (7):     {per_call(guards):6.3f} µs per request")
    measured = spans()
    if measured is None:
        print("spans: the otel extra is not installed")
        return
    path, encode, skipped = measured
    print(f"spans, on the request path:   {path:6.1f} µs per request (4 spans, attributes, traceparent)")
    print(f"spans, OTLP encoding:         {encode:6.1f} µs per request (export thread)")
    print(f"spans on, request not sampled:{skipped:6.1f} µs per request (the sampler said no: traceparent only)")


if __name__ == "__main__":
    main()
