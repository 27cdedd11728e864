"""The spans of a request (OpenTelemetry, the `otel` extra; imported only when on, tracing.py).

    <METHOD> <path>            SERVER   the request, parent: the client's `traceparent`, if any
      translate                INTERNAL routing and translating the request (record marks)
      <operation> <model>      CLIENT   each upstream attempt, to its first byte, answer or failure
      stream                   INTERNAL the stream to the client, to its end (record marks)

Attributes follow the GenAI semantic conventions: `gen_ai.operation.name` (chat,
text_completion, embeddings), `gen_ai.request.model` (the client's name on the request, the
upstream's id on an attempt), `gen_ai.response.model`, `gen_ai.usage.input_tokens` /
`output_tokens`, `gen_ai.response.finish_reasons`, and the upstream as `server.address` /
`server.port`; plus the HTTP ones and `gateway.request_id` (the log's request id). A failed
attempt, a 5xx and a stream broken after its first byte are errors on their span (status and
`error.type`; an attempt's also as an exception event). No prompt, completion or key is an
attribute.

Only the server span and the attempts' spans are live (an attempt's id goes to the upstream in
`traceparent`); translate and stream are made at the request's end from `RequestRecord`'s
perf_counter marks, moved to the wall clock by one offset taken at startup. Spans leave in
batches (the SDK's BatchSpanProcessor, its OTEL_BSP_* settings) over OTLP/HTTP protobuf.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import Any
from urllib.parse import urlsplit

from opentelemetry import trace
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk.resources import SERVICE_NAME, Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor
from opentelemetry.trace import Span, SpanKind, Status, StatusCode
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator
from starlette.types import Scope

from gateway import __version__
from gateway.errors import GatewayError
from gateway.logs import RequestRecord
from gateway.routing.resolver import Target

DEFAULT_SERVICE_NAME = "ollama-gateway"
_OPERATIONS = {
    "/api/chat": "chat", "/v1/chat/completions": "chat", "/v1/messages": "chat", "/v1/responses": "chat",
    "/api/generate": "text_completion", "/v1/completions": "text_completion",
    "/api/embed": "embeddings", "/api/embeddings": "embeddings", "/v1/embeddings": "embeddings",
}
_TRACE_HEADERS = (b"traceparent", b"tracestate")
# A broken stream is an error even though its status was 200.
_FAILED_OUTCOMES = ("error_after_first_byte", "crashed")


class Tracing:
    """The tracer of one worker and the spans of each request."""

    def __init__(self, provider: TracerProvider) -> None:
        self.provider = provider
        self.tracer = provider.get_tracer("ollama-gateway", __version__)
        self.propagator = TraceContextTextMapPropagator()
        self.offset = time.time_ns() - time.perf_counter_ns()  # perf_counter_ns + offset: epoch ns
        self._addresses: dict[str, tuple[str, int | None]] = {}
        attributes = provider.resource.attributes
        self.service_name = str(attributes.get(SERVICE_NAME, DEFAULT_SERVICE_NAME))

    @classmethod
    def from_environment(cls, environ: Mapping[str, str]) -> Tracing:
        named = environ.get("OTEL_SERVICE_NAME") or "service.name=" in environ.get("OTEL_RESOURCE_ATTRIBUTES", "")
        resource = Resource.create({} if named else {SERVICE_NAME: DEFAULT_SERVICE_NAME})
        provider = TracerProvider(resource=resource)  # the sampler from OTEL_TRACES_SAMPLER, if set
        provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))  # OTEL_EXPORTER_OTLP_* read here
        return cls(provider)

    def shutdown(self) -> None:
        self.provider.shutdown()

    def start_request(self, scope: Scope, record: RequestRecord) -> Span:
        carrier = {name.decode("latin-1"): value.decode("latin-1") for name, value in scope["headers"] if name in _TRACE_HEADERS}
        parent = self.propagator.extract(carrier) if carrier else None
        return self.tracer.start_span(
            f"{record.method} {record.path}", context=parent, kind=SpanKind.SERVER, start_time=record.started + self.offset,
            attributes={"http.request.method": record.method, "url.path": record.path, "gateway.request_id": record.request_id},
        )

    def start_attempt(self, record: RequestRecord, target: Target, attempt: int) -> tuple[Span, dict[str, str]]:
        """A client span for one upstream attempt, and the trace headers that go with the call."""
        operation = _OPERATIONS.get(record.path)
        host, port = self._address(target)
        attributes: dict[str, Any] = {
            "gen_ai.request.model": target.upstream_model, "server.address": host,
            "gateway.upstream": target.upstream_name, "gateway.route": target.route.name, "gateway.attempt": attempt,
        }
        if operation is not None:
            attributes["gen_ai.operation.name"] = operation
        if port is not None:
            attributes["server.port"] = port
        span = self.tracer.start_span(
            f"{operation or 'call'} {target.upstream_model}", context=trace.set_span_in_context(record.span),
            kind=SpanKind.CLIENT, attributes=attributes,
        )
        carrier: dict[str, str] = {}
        self.propagator.inject(carrier, context=trace.set_span_in_context(span))
        return span, carrier

    def _address(self, target: Target) -> tuple[str, int | None]:
        """The upstream's host and port (`server.address`), parsed once per base URL."""
        url = target.upstream.request_url
        address = self._addresses.get(url)
        if address is None:
            parts = urlsplit(url)
            address = self._addresses[url] = (parts.hostname or "", parts.port)
        return address

    def end_attempt(self, span: Span, error: GatewayError | None) -> None:
        if error is not None:
            span.set_attribute("error.type", type(error).__name__)
            span.set_attribute("http.response.status_code", error.status_code)
            span.record_exception(error, escaped=True)
            span.set_status(Status(StatusCode.ERROR, error.message))
        span.end()

    def end_request(self, record: RequestRecord, fields: dict[str, Any]) -> None:
        """The server span ended with the record's outcome, its stage spans made from the marks;
        the trace id added to the summary line's `fields`."""
        span: Span = record.span
        end = time.perf_counter_ns()
        offset = self.offset
        fields["trace_id"] = format(span.get_span_context().trace_id, "032x")
        if not span.is_recording():  # not sampled (OTEL_TRACES_SAMPLER, or the client's flags)
            span.end(end + offset)
            return
        context = trace.set_span_in_context(span)
        if record.validated and record.translated:
            self.tracer.start_span("translate", context=context, start_time=record.validated + offset).end(record.translated + offset)
        if record.streamed and record.answered:
            stream = self.tracer.start_span("stream", context=context, start_time=record.answered + offset,
                                            attributes={"gateway.chunks": record.chunks})
            if record.outcome == "error_after_first_byte":
                stream.set_status(Status(StatusCode.ERROR, record.error))
            stream.end(record.streamed + offset)
        span.set_attributes(_request_attributes(record))
        if record.status >= 500 or record.outcome in _FAILED_OUTCOMES:
            span.set_attribute("error.type", record.outcome if record.status < 500 else str(record.status))
            span.set_status(Status(StatusCode.ERROR, record.error))
        span.end(end + offset)


def _request_attributes(record: RequestRecord) -> dict[str, Any]:
    attributes: dict[str, Any] = {"http.response.status_code": record.status, "gateway.outcome": record.outcome}
    operation = _OPERATIONS.get(record.path)
    if operation is not None:
        attributes["gen_ai.operation.name"] = operation
    for name, value in (
        ("gen_ai.request.model", record.model), ("gen_ai.response.model", record.upstream_model),
        ("gen_ai.usage.input_tokens", record.prompt_tokens), ("gen_ai.usage.output_tokens", record.completion_tokens),
        ("gateway.upstream", record.upstream),
    ):
        if value is not None:
            attributes[name] = value
    if record.done_reason is not None:
        attributes["gen_ai.response.finish_reasons"] = [record.done_reason]
    if record.attempt_ns:
        attributes["gateway.attempts"] = len(record.attempt_ns)
    return attributes
