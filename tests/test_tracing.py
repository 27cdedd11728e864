"""Tracing a request through its stages, end to end under Granian: the summary line's stage times,
the debug-level stage events, and OpenTelemetry spans exported over OTLP/HTTP to a real receiver
on loopback (decoded with opentelemetry-proto), the client's trace carried on to the upstream."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.conftest import API_KEY, ROOT, RunningGateway, closed_port, routes_yaml
from tests.fake_upstream import FakeUpstream, Reply, chat_chunks

USER_HI = [{"role": "user", "content": "hi"}]
STAGES = ("body_ms", "route_ms", "upstream_ms", "stream_ms")
CLIENT_TRACE = "0af7651916cd43dd8448eb211c80319c"
CLIENT_SPAN = "b7ad6b7169203331"


def lines_of(gateway: RunningGateway, request_id: str) -> list[dict[str, Any]]:
    text = gateway.log_text_after(request_id)
    return [json.loads(raw) for raw in text.splitlines() if raw.startswith("{") and f'"request_id":"{request_id}"' in raw]


def summary(gateway: RunningGateway, request_id: str) -> dict[str, Any]:
    found = [line for line in lines_of(gateway, request_id) if line["event"] == "request"]
    assert len(found) == 1, found
    return found[0]


def chat(gateway: RunningGateway, model: str, *, stream: bool, content: str = "hi",
         headers: dict[str, str] | None = None) -> tuple[httpx.Response, str]:
    request_id = uuid.uuid4().hex
    response = httpx.post(gateway.url + "/api/chat", json={"model": model, "messages": [{"role": "user", "content": content}],
                                                           "stream": stream},
                          headers={"X-Request-Id": request_id, **(headers or {})}, timeout=30)
    return response, request_id


def assert_stages_add_up(line: dict[str, Any], stages: tuple[str, ...] = STAGES) -> None:
    assert [name for name in STAGES if name in line] == list(stages), line
    total = sum(line[name] for name in stages)
    assert abs(total - line["duration_ms"]) <= 0.001 * len(stages) + 0.0005, line
    assert 0 <= line["gateway_ms"] <= line["duration_ms"] + 0.001


# ---- stage times on the summary line (info level, the shared gateway) ----


def test_a_streamed_chat_has_its_stage_times_adding_up_to_the_total(gateway: RunningGateway, upstream: FakeUpstream) -> None:
    upstream.enqueue("/v1/chat/completions", Reply.sse(chat_chunks(["Hel", "lo"]), delay=0.05))
    response, request_id = chat(gateway, "tiny", stream=True)
    assert response.status_code == 200
    line = summary(gateway, request_id)
    assert_stages_add_up(line)
    assert line["attempts"] == 1 and len(line["upstream_attempts_ms"]) == 1
    assert line["upstream_attempts_ms"][0] <= line["upstream_ms"] + 0.001
    # The first event comes 50 ms after the status line, and four more follow 50 ms apart.
    assert line["upstream_ms"] >= 45 and line["stream_ms"] >= 150, line
    own = line["duration_ms"] - line["upstream_attempts_ms"][0] - line["stream_ms"]
    assert abs(line["gateway_ms"] - own) <= 0.005, "the gateway's share: the total less the upstream's waits"
    assert line["gateway_ms"] < line["duration_ms"] / 2, line
    assert not [entry for entry in lines_of(gateway, request_id) if entry["event"] != "request"], "no stage events at info"


def test_a_json_chat_and_a_missing_model_have_the_stages_they_reached(gateway: RunningGateway) -> None:
    response, request_id = chat(gateway, "tiny", stream=False)
    assert response.status_code == 200
    line = summary(gateway, request_id)
    assert_stages_add_up(line)
    assert line["attempts"] == 1
    assert abs(line["gateway_ms"] - (line["duration_ms"] - line["upstream_attempts_ms"][0])) <= 0.005
    response, request_id = chat(gateway, "no-such-model", stream=False)
    assert response.status_code == 404
    line = summary(gateway, request_id)
    assert_stages_add_up(line, ("body_ms", "route_ms"))
    assert "attempts" not in line and line["gateway_ms"] == pytest.approx(line["duration_ms"], abs=0.002)
    request_id = uuid.uuid4().hex
    assert httpx.get(gateway.url + "/api/tags", headers={"X-Request-Id": request_id}).status_code == 200
    line = summary(gateway, request_id)
    assert not [name for name in (*STAGES, "gateway_ms") if name in line], "no model, no stages"


# ---- stage events at debug level ----


@pytest.fixture(scope="module")
def backup() -> Iterator[FakeUpstream]:
    server = FakeUpstream().start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def debug_gateway(upstream: FakeUpstream, backup: FakeUpstream, tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningGateway]:
    folder = tmp_path_factory.mktemp("tracing-debug")
    routes = folder / "routes.yaml"
    extra = f"""
  - name: falls
    upstream: dead
    fallbacks: [spare]
  - name: spare
    upstream: backup
    model: b-model
"""
    text = routes_yaml(upstream.url, extra).replace("models:\n", f"  backup:\n    base_url: {backup.url}\n    max_retries: 0\nmodels:\n", 1)
    routes.write_text(text)
    running = RunningGateway(routes, folder / "gateway.log", log_level="debug")
    yield running
    running.stop()


def events_of(gateway: RunningGateway, request_id: str) -> list[dict[str, Any]]:
    return [line for line in lines_of(gateway, request_id) if line["event"] not in ("upstream_attempt", "upstream_retry")]


def test_debug_events_trace_a_streamed_chat(debug_gateway: RunningGateway) -> None:
    secret_prompt = "prompt-marker-" + uuid.uuid4().hex
    response, request_id = chat(debug_gateway, "tiny", stream=True, content=secret_prompt,
                                headers={"Authorization": "Bearer client-key-marker"})
    assert response.status_code == 200
    events = events_of(debug_gateway, request_id)
    assert [e["event"] for e in events] == [
        "validated", "routed", "translated", "upstream_called", "upstream_first_byte", "stream_finished", "request",
    ]
    validated, routed, translated, called, first, finished, _ = events
    assert validated["endpoint"] == "/api/chat" and validated["model"] == "tiny"
    assert (routed["route"], routed["upstream"], routed["upstream_model"]) == ("tiny", "fake", "up-model")
    assert translated["upstream_path"] == "/chat/completions" and translated["options_dropped"] == []
    assert called["attempt"] == first["attempt"] == 1 and called["upstream"] == "fake"
    assert finished["chunks"] >= 3 and finished["done_reason"] == "stop"
    assert (finished["prompt_tokens"], finished["completion_tokens"]) == (12, 3)
    assert all(e["level"] == "debug" for e in events[:-1])
    text = debug_gateway.log_text()
    assert secret_prompt not in text, "never the prompt"
    assert API_KEY not in text and "client-key-marker" not in text, "never a key"


def test_debug_events_trace_a_failed_upstream(debug_gateway: RunningGateway) -> None:
    response, request_id = chat(debug_gateway, "deadmodel", stream=True)
    assert response.status_code == 502
    events = events_of(debug_gateway, request_id)
    assert [e["event"] for e in events] == ["validated", "routed", "translated", "upstream_called", "upstream_answered",
                                            "failed", "request"]
    answered, failed, line = events[-3:]
    assert answered["outcome"] == "failed" and answered["status"] == 502 and answered["attempt"] == 1
    assert (failed["where"], failed["why"], failed["status"]) == ("upstream", line["error"], 502), failed
    assert answered["error"] == line["error"], (answered, line)
    assert_stages_add_up(line, ("body_ms", "route_ms", "upstream_ms"))
    assert line["attempts"] == 1


def test_debug_events_trace_a_fallback(debug_gateway: RunningGateway, backup: FakeUpstream) -> None:
    response, request_id = chat(debug_gateway, "falls", stream=False)
    assert response.status_code == 200 and response.json()["message"]["content"] == "Hello there."
    events = events_of(debug_gateway, request_id)
    assert [e["event"] for e in events] == [
        "validated", "routed", "translated", "upstream_called", "upstream_answered",
        "translated", "upstream_called", "upstream_answered", "request",
    ]
    assert [(e["upstream"], e["attempt"]) for e in events if e["event"] == "upstream_called"] == [("dead", 1), ("backup", 2)]
    answers = [e for e in events if e["event"] == "upstream_answered"]
    assert [(a["outcome"], a["status"]) for a in answers] == [("failed", 502), ("ok", 200)]
    line = events[-1]
    assert line["upstream"] == "backup" and line["attempts"] == 2 and len(line["upstream_attempts_ms"]) == 2
    assert_stages_add_up(line)
    assert backup.last().json["model"] == "b-model"


# ---- OpenTelemetry ----


class Collector:
    """A real OTLP/HTTP receiver on loopback: POST /v1/traces, protobuf bodies kept decoded."""

    def __init__(self) -> None:
        from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

        self.spans: list[tuple[dict[str, Any], Any]] = []  # (resource attributes, span)
        self.paths: list[str] = []
        collector = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                collector.paths.append(self.path)
                exported = ExportTraceServiceRequest()
                exported.ParseFromString(body)
                for resource_spans in exported.resource_spans:
                    resource = attributes(resource_spans.resource.attributes)
                    for scope_spans in resource_spans.scope_spans:
                        collector.spans.extend((resource, span) for span in scope_spans.spans)
                self.send_response(200)
                self.send_header("Content-Type", "application/x-protobuf")
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def trace(self, trace_id: str, count: int, seconds: float = 15.0) -> list[Any]:
        deadline = time.monotonic() + seconds
        while True:
            found = [span for _, span in self.spans if span.trace_id.hex() == trace_id]
            if len(found) >= count or time.monotonic() > deadline:
                return found
            time.sleep(0.05)

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def attributes(pairs: Any) -> dict[str, Any]:
    values: dict[str, Any] = {}
    for pair in pairs:
        kind = pair.value.WhichOneof("value")
        value = getattr(pair.value, kind)
        values[pair.key] = [getattr(v, v.WhichOneof("value")) for v in value.values] if kind == "array_value" else value
    return values


@pytest.fixture(scope="module")
def collector() -> Iterator[Collector]:
    pytest.importorskip("opentelemetry.sdk", reason="the otel extra (pip install -e '.[otel]')")
    server = Collector()
    yield server
    server.close()


@pytest.fixture(scope="module")
def traced_gateway(upstream: FakeUpstream, collector: Collector, tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningGateway]:
    folder = tmp_path_factory.mktemp("tracing-otel")
    routes = folder / "routes.yaml"
    routes.write_text(routes_yaml(upstream.url))
    env = {"OTEL_EXPORTER_OTLP_ENDPOINT": collector.url, "OTEL_SERVICE_NAME": "gateway-under-test",
           "OTEL_BSP_SCHEDULE_DELAY": "50"}
    running = RunningGateway(routes, folder / "gateway.log", env=env)
    yield running
    running.stop()


def test_spans_reach_an_otlp_receiver_in_the_clients_trace(traced_gateway: RunningGateway, upstream: FakeUpstream,
                                                           collector: Collector) -> None:
    from opentelemetry.proto.trace.v1.trace_pb2 import Span, Status

    traceparent = f"00-{CLIENT_TRACE}-{CLIENT_SPAN}-01"
    response, request_id = chat(traced_gateway, "tiny", stream=True, headers={"traceparent": traceparent})
    assert response.status_code == 200
    spans = {span.name: span for span in collector.trace(CLIENT_TRACE, 4)}
    assert set(spans) == {"POST /api/chat", "translate", "chat up-model", "stream"}, list(spans)
    server, attempt = spans["POST /api/chat"], spans["chat up-model"]
    assert server.parent_span_id.hex() == CLIENT_SPAN, "the client's span is the parent"
    assert server.kind == Span.SPAN_KIND_SERVER and attempt.kind == Span.SPAN_KIND_CLIENT
    for child in ("translate", "chat up-model", "stream"):
        assert spans[child].parent_span_id == server.span_id
    assert server.start_time_unix_nano <= spans["translate"].start_time_unix_nano <= attempt.start_time_unix_nano
    assert attempt.end_time_unix_nano <= spans["stream"].end_time_unix_nano <= server.end_time_unix_nano
    values = attributes(server.attributes)
    assert values["gen_ai.operation.name"] == "chat" and values["gen_ai.request.model"] == "tiny"
    assert values["gen_ai.response.model"] == "up-model"
    assert (values["gen_ai.usage.input_tokens"], values["gen_ai.usage.output_tokens"]) == (12, 3)
    assert values["gen_ai.response.finish_reasons"] == ["stop"] and values["gateway.request_id"] == request_id
    assert values["http.response.status_code"] == 200 and server.status.code != Status.STATUS_CODE_ERROR
    called = attributes(attempt.attributes)
    assert called["server.address"] == "127.0.0.1" and called["server.port"] == upstream.port
    assert called["gen_ai.request.model"] == "up-model" and called["gen_ai.operation.name"] == "chat"
    resources = [resource for resource, span in collector.spans if span.trace_id.hex() == CLIENT_TRACE]
    assert resources[0]["service.name"] == "gateway-under-test"
    assert collector.paths[0] == "/v1/traces"
    # The upstream's request carries the trace on, its parent the attempt's span.
    sent = {name.lower(): value for name, value in upstream.last().headers.items()}
    assert sent["traceparent"] == f"00-{CLIENT_TRACE}-{attempt.span_id.hex()}-01"
    assert summary(traced_gateway, request_id)["trace_id"] == CLIENT_TRACE


def test_a_failed_attempt_is_an_error_on_its_span(traced_gateway: RunningGateway, collector: Collector) -> None:
    from opentelemetry.proto.trace.v1.trace_pb2 import Status

    trace_id = uuid.uuid4().hex
    response, request_id = chat(traced_gateway, "deadmodel", stream=False, headers={"traceparent": f"00-{trace_id}-{CLIENT_SPAN}-01"})
    assert response.status_code == 502
    spans = {span.name: span for span in collector.trace(trace_id, 3)}
    assert set(spans) == {"POST /api/chat", "translate", "chat deadmodel"}, list(spans)
    attempt, server = spans["chat deadmodel"], spans["POST /api/chat"]
    assert attempt.status.code == Status.STATUS_CODE_ERROR and "unreachable" in attempt.status.message
    assert attributes(attempt.attributes)["error.type"] == "UpstreamUnavailable"
    assert [event.name for event in attempt.events] == ["exception"]
    assert server.status.code == Status.STATUS_CODE_ERROR and attributes(server.attributes)["error.type"] == "502"
    assert summary(traced_gateway, request_id)["trace_id"] == trace_id


def test_a_request_without_traceparent_starts_its_own_trace(traced_gateway: RunningGateway, upstream: FakeUpstream,
                                                            collector: Collector) -> None:
    response = httpx.post(traced_gateway.url + "/v1/chat/completions", json={"model": "tiny", "messages": USER_HI}, timeout=30)
    assert response.status_code == 200
    request_id = response.headers["x-request-id"]
    trace_id = summary(traced_gateway, request_id)["trace_id"]
    spans = {span.name: span for span in collector.trace(trace_id, 3)}
    assert set(spans) == {"POST /v1/chat/completions", "translate", "chat up-model"}
    assert spans["POST /v1/chat/completions"].parent_span_id == b""
    assert upstream.last().headers["traceparent"].split("-")[1] == trace_id


def test_without_an_endpoint_nothing_of_the_otel_extra_is_imported(tmp_path: Path) -> None:
    """(opentelemetry-api itself is a dependency of FastAPI, whose own telemetry app.py turns off.)"""
    routes = tmp_path / "routes.yaml"
    routes.write_text(routes_yaml(f"http://127.0.0.1:{closed_port()}/v1"))
    script = ("import sys; from gateway.app import create_app; from gateway import tracing; create_app(); "
              "print(tracing.TRACER, sorted(m for m in sys.modules if m.startswith(('opentelemetry.sdk', 'opentelemetry.exporter', "
              "'opentelemetry.proto', 'gateway.otel'))))")
    environ = {key: value for key, value in os.environ.items() if not key.startswith("OTEL_")}
    result = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=60,
                            env={**environ, "GATEWAY_ROUTES": str(routes), "TEST_UPSTREAM_KEY": API_KEY})
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "None []"


def test_a_trace_the_client_did_not_sample_is_carried_on_but_not_exported(
    traced_gateway: RunningGateway, upstream: FakeUpstream, collector: Collector
) -> None:
    unsampled, sampled = uuid.uuid4().hex, uuid.uuid4().hex
    response, _ = chat(traced_gateway, "tiny", stream=True, headers={"traceparent": f"00-{unsampled}-{CLIENT_SPAN}-00"})
    assert response.status_code == 200
    carried = upstream.last().headers["traceparent"].split("-")
    assert (carried[1], carried[3]) == (unsampled, "00"), "the trace and its flags go on to the upstream"
    response, _ = chat(traced_gateway, "tiny", stream=True, headers={"traceparent": f"00-{sampled}-{CLIENT_SPAN}-01"})
    assert len(collector.trace(sampled, 4)) == 4, "a later request's spans arrived, so the batch was sent"
    assert collector.trace(unsampled, 1, seconds=0.5) == []


def test_an_endpoint_without_the_extra_warns_and_serves_without_spans(tmp_path: Path) -> None:
    routes = tmp_path / "routes.yaml"
    routes.write_text(routes_yaml(f"http://127.0.0.1:{closed_port()}/v1"))
    # The extra hidden from this process: `find_spec` answers None for a module set to None.
    script = ("import sys; sys.modules['opentelemetry.sdk'] = None; from gateway.app import create_app; "
              "from gateway import tracing; create_app(); print(tracing.TRACER, 'gateway.otel' in sys.modules)")
    environ = {key: value for key, value in os.environ.items() if not key.startswith("OTEL_")}
    result = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=60,
                            env={**environ, "GATEWAY_ROUTES": str(routes), "TEST_UPSTREAM_KEY": API_KEY,
                                 "GATEWAY_LOG_FORMAT": "json", "OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:4318"})
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "None False"
    warning = json.loads(next(line for line in result.stderr.splitlines() if "tracing_unavailable" in line))
    assert warning["level"] == "warning" and "ollama-gateway[otel]" in warning["reason"]
