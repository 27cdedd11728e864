"""OpenTelemetry spans, optional: on when the `otel` extra is installed and an OTLP endpoint is set.

`pip install 'ollama-gateway[otel]'` and the standard variables (`OTEL_EXPORTER_OTLP_ENDPOINT`
or `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`, `OTEL_SERVICE_NAME`, and the SDK's others: sampler,
batch delays, headers) turn tracing on; `OTEL_SDK_DISABLED=true` or `OTEL_TRACES_EXPORTER=none`
keep it off. `setup()` decides once per worker, at startup: without an endpoint nothing of
OpenTelemetry is imported, without the extra a warning says so, and either way `TRACER` stays
None, which is all the request path looks at (`record.span is None`: no span, no header).

When on, `gateway.otel.Tracing` makes the spans: one server span per request (the client's W3C
`traceparent` as its parent), a client span per upstream attempt, and, from the request record's
marks at its end, a span for the translation and one for the stream. `CARRIED` holds the trace
headers of the attempt in flight: `UpstreamClient.request_headers()` adds them to the call, so
the upstream's own spans join the trace.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from contextvars import ContextVar
from importlib.util import find_spec
from typing import TYPE_CHECKING

import structlog

if TYPE_CHECKING:
    from gateway.otel import Tracing

log = structlog.get_logger()

TRACER: Tracing | None = None
# The `traceparent` (and `tracestate`) of the upstream attempt in flight, set around the call.
CARRIED: ContextVar[Mapping[str, str] | None] = ContextVar("gateway_trace_headers", default=None)
_EXTRA = ("opentelemetry.sdk", "opentelemetry.exporter.otlp.proto.http")


def wanted(environ: Mapping[str, str]) -> bool:
    """Whether the environment asks for spans (an OTLP endpoint, and the SDK not disabled)."""
    if environ.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        return False
    if environ.get("OTEL_TRACES_EXPORTER", "otlp").strip().lower() == "none":
        return False
    return bool(environ.get("OTEL_EXPORTER_OTLP_ENDPOINT") or environ.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"))


def setup(environ: Mapping[str, str] = os.environ) -> None:
    """Once per worker, before it serves: spans on if asked for and installed."""
    global TRACER
    if TRACER is not None or not wanted(environ):
        return
    if not _installed():
        log.warning("tracing_unavailable", reason="an OTLP endpoint is set but the otel extra is not installed: "
                    "pip install 'ollama-gateway[otel]'")
        return
    from gateway.otel import Tracing

    TRACER = Tracing.from_environment(environ)
    log.info("tracing", exporter="otlp/http", service=TRACER.service_name)


def _installed() -> bool:
    try:
        return all(find_spec(name) is not None for name in _EXTRA)
    except ModuleNotFoundError:  # not even the `opentelemetry` namespace
        return False


def shutdown() -> None:
    """The spans still buffered sent (the worker stops)."""
    global TRACER
    tracer, TRACER = TRACER, None
    if tracer is not None:
        tracer.shutdown()
