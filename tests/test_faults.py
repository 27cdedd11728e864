"""Fault injection: every upstream fault and client fault gets the right Ollama answer.

The gateway runs for real under Granian against the loopback fake upstream, which misbehaves on
demand (tests/fake_upstream.py). Each row of `errors.UPSTREAM_FAULTS` has a case here, asserted
for `stream: false` and for `stream: true` before the first byte (a real status and a JSON
`{"error": ...}` body); faults that can happen mid-stream are also asserted after the first byte
(status 200, one last `{"error": ...}` line, no `done` chunk). The upstream key is a marker: the
last test runs every case again and looks for it in bodies, headers and the gateway's log.
"""

from __future__ import annotations

import json
import socket
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp
import httpx
import pytest
from aiohttp.client_reqrep import ConnectionKey

from gateway.errors import UPSTREAM_FAULTS
from gateway.upstream.faults import Origin, transport_fault
from gateway.upstream.redact import Secrets
from tests.client_support import first_line, raw_request, wait_for
from tests.conftest import RunningGateway, closed_port
from tests.fake_upstream import FakeUpstream, Reply, chat_chunks

CHAT = "/v1/chat/completions"
KEY = "sk-fault-marker-7f3a9c2e5b1d4086aa"
PROMPT = "prompt-marker-4be1c9 never to be logged"
COMPLETION = "completion-marker-90d2 never to be logged"
ANSWER_LIMIT = 256 * 1024  # GATEWAY_MAX_UPSTREAM_ANSWER_BYTES of the `faulty` gateway


@pytest.fixture(scope="module")
def full_backlog() -> Iterator[int]:
    """A loopback port whose accept queue is full: a connection attempt hangs (connect timeout)."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(0)
    port = int(listener.getsockname()[1])
    fillers = []
    for _ in range(4):
        filler = socket.socket()
        filler.setblocking(False)
        try:
            filler.connect(("127.0.0.1", port))
        except BlockingIOError:
            pass
        fillers.append(filler)
    yield port
    for sock in [*fillers, listener]:
        sock.close()


@pytest.fixture(scope="module")
def faulty(upstream: FakeUpstream, full_backlog: int, tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningGateway]:
    """A gateway whose upstreams fail in every way; debug logging, so the key check sees all."""
    folder = tmp_path_factory.mktemp("faults")
    routes = folder / "routes.yaml"
    routes.write_text(f"""
upstreams:
  fake: {{base_url: "{upstream.url}", api_key: "${{FAULT_KEY}}", max_retries: 0, timeout: 30, cooldown: false}}
  slow: {{base_url: "{upstream.url}", api_key: "${{FAULT_KEY}}", max_retries: 0, timeout: 1, cooldown: false}}
  refused: {{base_url: "http://127.0.0.1:{closed_port()}/v1", api_key: "${{FAULT_KEY}}", max_retries: 0, cooldown: false}}
  dns: {{base_url: "http://upstream.invalid/v1", api_key: "${{FAULT_KEY}}", max_retries: 0, cooldown: false}}
  tls: {{base_url: "https://127.0.0.1:{upstream.port}/v1", api_key: "${{FAULT_KEY}}", max_retries: 0, cooldown: false}}
  blackhole: {{base_url: "http://127.0.0.1:{full_backlog}/v1", api_key: "${{FAULT_KEY}}", max_retries: 0, connect_timeout: 1, cooldown: false}}
models:
  - {{name: tiny, upstream: fake, model: up-model}}
  - {{name: slow, upstream: slow, model: up-model}}
  - {{name: refused, upstream: refused}}
  - {{name: dns, upstream: dns}}
  - {{name: tls, upstream: tls}}
  - {{name: blackhole, upstream: blackhole}}
""")
    env = {"FAULT_KEY": KEY, "GATEWAY_LOG_LEVEL": "debug", "GATEWAY_MAX_UPSTREAM_ANSWER_BYTES": str(ANSWER_LIMIT)}
    running = RunningGateway(routes, folder / "gateway.log", env=env, log_level="debug")
    yield running
    running.stop()


@dataclass(frozen=True)
class Fault:
    """An upstream misbehaviour and the Ollama error it must become."""

    reply: Reply | None  # None: the fault is in the route (refused, DNS, TLS)
    status: int
    message: str  # the whole error message, or its start when `prefix`
    model: str = "tiny"
    prefix: bool = False
    headers: dict[str, str] = field(default_factory=dict)
    stream_message: str | None = None  # when a streaming request gets another message


def _error(status: int, message: str, **extra: object) -> Reply:
    return Reply.json({"error": {"message": message, "type": "invalid_request_error", **extra}}, status=status)


def _html(status: int) -> Reply:
    page = f"<html><head><title>{status}</title></head><body><h1>Bad gateway</h1><p>nginx</p></body></html>"
    return Reply(status=status, raw=page.encode(), content_type="text/html")


PROXY_PAGE = Reply(raw=b"<html><body><h1>Welcome to the proxy</h1></body></html>", content_type="text/html")

# One case per row of errors.UPSTREAM_FAULTS, named after it.
FAULTS = [
    pytest.param(Fault(_error(400, f"max_tokens is too large for key {KEY}"), 400, "max_tokens is too large for key ***"), id="400"),
    pytest.param(Fault(_error(401, f"Incorrect API key provided: {KEY}", code="invalid_api_key"), 502,
                       "upstream 'fake' rejected the gateway's credentials (401); check its api_key"), id="401"),
    pytest.param(Fault(_error(403, f"key {KEY} may not use this model"), 502,
                       "upstream 'fake' refused the gateway's credentials (403); check its api_key and its permissions"), id="403"),
    pytest.param(Fault(_error(404, "The model `up-model` does not exist or you do not have access to it.", code="model_not_found"),
                       404, "model 'tiny' not found"), id="404-model"),
    pytest.param(Fault(Reply(status=404, raw=b"404 page not found", content_type="text/plain"), 502,
                       "upstream 'fake' answered 404 at ", prefix=True), id="404-wrong-base-url"),
    pytest.param(Fault(_error(408, "request timed out upstream"), 504, "request timed out upstream"), id="408"),
    pytest.param(Fault(_error(409, "a request for this conversation is already running"), 503,
                       "a request for this conversation is already running"), id="409"),
    pytest.param(Fault(_error(413, "request entity too large: 3 images of 20 MB"), 400, "request entity too large: 3 images of 20 MB"), id="413"),
    pytest.param(Fault(_error(422, "messages.0.role: unknown role"), 400, "messages.0.role: unknown role"), id="422"),
    pytest.param(Fault(Reply.json({"error": {"message": "Rate limit reached, retry in 7s", "type": "rate_limit"}}, status=429,
                                  headers={"Retry-After": "7"}), 429, "Rate limit reached, retry in 7s", headers={"retry-after": "7"}), id="429"),
    pytest.param(Fault(_error(500, "the model crashed"), 500, "the model crashed"), id="500"),
    pytest.param(Fault(_html(502), 502, "502 Bad gateway nginx"), id="502-html"),
    pytest.param(Fault(_error(503, "the engine is currently overloaded"), 503, "the engine is currently overloaded"), id="503"),
    pytest.param(Fault(_error(504, "upstream of the upstream timed out"), 504, "upstream of the upstream timed out"), id="504"),
    pytest.param(Fault(_error(418, "I'm a teapot"), 400, "I'm a teapot"), id="other-4xx"),
    pytest.param(Fault(_error(520, "unknown error"), 502, "unknown error"), id="other-5xx"),
    pytest.param(Fault(None, 502, "upstream 'refused' is unreachable: connection refused at http://127.0.0.1:", model="refused", prefix=True),
                 id="connection-refused"),
    pytest.param(Fault(None, 502, "upstream 'dns' is unreachable: cannot resolve the host of http://upstream.invalid/v1 (",
                       model="dns", prefix=True), id="dns-failure"),
    pytest.param(Fault(None, 502, "upstream 'tls' is unreachable: TLS failed with https://127.0.0.1:", model="tls", prefix=True),
                 id="tls-failure"),
    pytest.param(Fault(None, 504, "upstream 'blackhole' could not be reached within 1 s", model="blackhole"), id="connect-timeout"),
    pytest.param(Fault(Reply(stall=4), 504, "upstream 'slow' did not answer within 1 s", model="slow"), id="read-timeout"),
    pytest.param(Fault(Reply(abort=True), 502, "upstream 'fake' closed the connection without answering"), id="no-answer"),
    pytest.param(Fault(PROXY_PAGE, 502, "upstream 'fake' sent a body that is not JSON: 'Welcome to the proxy'",
                       stream_message="upstream 'fake' did not send an event stream: 'Welcome to the proxy'"), id="body-not-json"),
    pytest.param(Fault(Reply.json([1, 2]), 502, "upstream 'fake' sent JSON that is not an object",
                       stream_message="upstream 'fake' did not send an event stream: '[1, 2]'"), id="json-not-object"),
    pytest.param(Fault(Reply(raw=b'{"id": "' + b"x" * ANSWER_LIMIT + b'"}'), 502,
                       f"upstream 'fake' sent an answer over the gateway's limit of {ANSWER_LIMIT} bytes",
                       stream_message="upstream 'fake' did not send an event stream: '{\"id\": \"xxx", prefix=True), id="answer-too-large"),
    pytest.param(Fault(Reply(events=['{"id": "chatcmpl-1", "choices": ['], cut_after=1), 502,
                       "upstream 'fake' closed the connection in the middle of its answer"), id="body-cut"),
    pytest.param(Fault(Reply(events=['{"id": "chatcmpl-1", ', "}"], stall_after=1, stall=4), 504,
                       "upstream 'slow' sent nothing for 1 s in the middle of its answer", model="slow",
                       stream_message="upstream 'slow' sent nothing for 1 s in the middle of its answer"), id="body-idle"),
    pytest.param(Fault(Reply(raw=b"this is not gzip", headers={"Content-Encoding": "gzip"}), 502, "upstream 'fake' failed: ",
                       prefix=True), id="body-not-gzip"),
]

# Faults of a stream, before its first byte: (reply, status, message). The same faults after the
# first byte are in MID_STREAM.
ROLE_ONLY = chat_chunks([])[:1]
STREAM_FAULTS = [
    pytest.param(Reply.sse(["data: {\"id\": oops\n\n"]), 502, "upstream 'fake' sent a malformed stream event: ", id="malformed-event"),
    pytest.param(Reply.sse(["data: [1, 2]\n\n"]), 502, "upstream 'fake' sent a malformed stream event: an event that is a JSON list",
                 id="event-not-object"),
    pytest.param(Reply.sse(ROLE_ONLY, done=False), 502, "upstream 'fake' ended the stream before it was complete", id="ends-without-done"),
    pytest.param(Reply.sse(ROLE_ONLY + ROLE_ONLY, cut_after=1), 502, "upstream 'fake' closed the connection in the middle of its answer",
                 id="cut"),
    pytest.param(PROXY_PAGE, 502, "upstream 'fake' did not send an event stream: 'Welcome to the proxy'", id="not-an-event-stream"),
    pytest.param(Reply.json({"error": {"message": "insufficient quota", "code": 429}}), 429, "insufficient quota",
                 id="json-error-instead-of-stream"),
]


def _mid_stream(*faults: str | bytes, **reply: object) -> Reply:
    return Reply.sse(chat_chunks(["Hel", "lo"])[:3] + list(faults), done=False, **reply)  # type: ignore[arg-type]


MID_STREAM = [
    pytest.param(_mid_stream("data: {\"choices\": [oops\n\n"), "upstream 'fake' sent a malformed stream event: ", "tiny", id="malformed-event"),
    pytest.param(_mid_stream(), "upstream 'fake' ended the stream before it was complete", "tiny", id="ends-without-done"),
    pytest.param(_mid_stream("data: {}\n\n", cut_after=3), "upstream 'fake' closed the connection in the middle of its answer", "tiny",
                 id="cut"),
    pytest.param(_mid_stream("data: {}\n\n", stall_after=3, stall=4), "upstream 'slow' sent nothing for 1 s in the middle of its answer",
                 "slow", id="idle-timeout"),
    pytest.param(_mid_stream(
        "data: " + json.dumps({"error": {"message": f"provider overloaded ({KEY})", "code": 503},
                               "choices": [{"index": 0, "delta": {}, "finish_reason": "error"}]}) + "\n\n"),
        "provider overloaded (***)", "tiny", id="error-event"),
]


def chat(gateway: RunningGateway, model: str, stream: bool, content: str = "hi") -> httpx.Response:
    body = {"model": model, "messages": [{"role": "user", "content": content}], "stream": stream}
    return httpx.post(gateway.url + "/api/chat", json=body, timeout=30)


def assert_ollama_error(response: httpx.Response, fault: Fault) -> None:
    assert response.status_code == fault.status, response.text
    assert response.headers["content-type"] == "application/json; charset=utf-8"
    body = response.json()
    assert list(body) == ["error"] and isinstance(body["error"], str)
    if fault.prefix:
        assert body["error"].startswith(fault.message), body["error"]
    else:
        assert body["error"] == fault.message
    for name, value in fault.headers.items():
        assert response.headers.get(name) == value


def ndjson(response: httpx.Response) -> list[dict[str, object]]:
    assert response.text.endswith("\n") and "\n\n" not in response.text
    return [json.loads(line) for line in response.text.splitlines()]


@pytest.mark.parametrize("fault", FAULTS)
def test_upstream_fault_without_streaming(faulty: RunningGateway, upstream: FakeUpstream, fault: Fault) -> None:
    if fault.reply is not None:
        upstream.enqueue(CHAT, fault.reply)
    assert_ollama_error(chat(faulty, fault.model, stream=False), fault)


@pytest.mark.parametrize("fault", FAULTS)
def test_upstream_fault_before_the_first_byte(faulty: RunningGateway, upstream: FakeUpstream, fault: Fault) -> None:
    if fault.reply is not None:
        upstream.enqueue(CHAT, fault.reply)
    if fault.stream_message is not None:
        fault = Fault(None, fault.status, fault.stream_message, model=fault.model, prefix=fault.prefix)
    assert_ollama_error(chat(faulty, fault.model, stream=True), fault)


@pytest.mark.parametrize(("reply", "status", "message"), STREAM_FAULTS)
def test_stream_fault_before_the_first_byte(faulty: RunningGateway, upstream: FakeUpstream, reply: Reply, status: int, message: str) -> None:
    upstream.enqueue(CHAT, reply)
    assert_ollama_error(chat(faulty, "tiny", stream=True), Fault(None, status, message, prefix=True))


@pytest.mark.parametrize(("reply", "message", "model"), MID_STREAM)
def test_stream_fault_after_the_first_byte_is_a_last_error_line(
    faulty: RunningGateway, upstream: FakeUpstream, reply: Reply, message: str, model: str
) -> None:
    upstream.enqueue(CHAT, reply)
    response = chat(faulty, model, stream=True)
    assert response.status_code == 200
    assert response.headers["content-type"] == "application/x-ndjson"
    lines = ndjson(response)
    assert [line["message"]["content"] for line in lines[:-1]] == ["Hel", "lo"]  # type: ignore[index]
    assert list(lines[-1]) == ["error"] and str(lines[-1]["error"]).startswith(message), lines[-1]
    assert not any(line.get("done") for line in lines)


def test_event_split_across_network_reads(faulty: RunningGateway, upstream: FakeUpstream) -> None:
    """Reads that end mid-field, mid-JSON, between \\r and \\n, inside a UTF-8 character."""
    text = "Grüße, 世界"
    stream = "".join(f"data: {json.dumps(chunk, ensure_ascii=False)}\r\n\r\n" for chunk in chat_chunks([text, "!"])) + "data: [DONE]\r\n\r\n"
    raw = stream.encode()
    cuts = sorted({2, 7, raw.index("ü".encode()) + 1, raw.index("世".encode()) + 2, raw.index(b"\r\n") + 1, len(raw) - 3})
    pieces = [raw[start:end] for start, end in zip([0, *cuts], [*cuts, len(raw)])]
    upstream.enqueue(CHAT, Reply(events=list(pieces), content_type="text/event-stream", delay=0.02))
    lines = ndjson(chat(faulty, "tiny", stream=True))
    assert [line["message"]["content"] for line in lines] == [text, "!", ""]  # type: ignore[index]
    assert [line["done"] for line in lines] == [False, False, True]


def test_stream_with_a_finish_reason_but_no_done_sentinel_completes(faulty: RunningGateway, upstream: FakeUpstream) -> None:
    """Some providers never send [DONE]: a stream that said why it finished is complete."""
    upstream.enqueue(CHAT, Reply.sse(chat_chunks(["ok"]), done=False))
    lines = ndjson(chat(faulty, "tiny", stream=True))
    assert lines[-1]["done"] is True and sum(bool(line.get("done")) for line in lines) == 1


def test_repeated_finish_and_done_give_one_done_chunk(faulty: RunningGateway, upstream: FakeUpstream) -> None:
    chunks = chat_chunks(["once"])
    upstream.enqueue(CHAT, Reply.sse([*chunks, chunks[-2], "data: [DONE]\n\n", chunks[1]]))
    lines = ndjson(chat(faulty, "tiny", stream=True))
    assert sum(bool(line.get("done")) for line in lines) == 1 and lines[-1]["done"] is True
    assert [line["message"]["content"] for line in lines] == ["once", ""]  # type: ignore[index]


def test_other_connection_failures_keep_the_innermost_cause() -> None:
    """The "connect" row: a failure that is not refused, DNS or TLS (here: no route to host)."""
    error = aiohttp.ClientConnectorError(
        ConnectionKey("upstream.example", 80, False, True, None, None, None), OSError(113, "No route to host")
    )
    origin = Origin("far", 1.0, 30.0, "http://upstream.example/v1", Secrets())
    fault = transport_fault(error, origin, answering=False)
    assert (fault.status_code, fault.message) == (502, "upstream 'far' is unreachable: [Errno 113] No route to host")
    assert fault.verdict == "retry"


# Where each row of the table is tested: a case id above, or the unit test just before.
ROW_TESTS = {
    400: "400", 401: "401", 403: "403", 404: "404-wrong-base-url", "model_not_found": "404-model", 408: "408",
    409: "409", 413: "413", 422: "422", 429: "429", 500: "500", 502: "502-html", 503: "503", 504: "504",
    "other_4xx": "other-4xx", "other_5xx": "other-5xx", "refused": "connection-refused", "dns": "dns-failure",
    "tls": "tls-failure", "connect": "unit", "connect_timeout": "connect-timeout", "timeout": "read-timeout",
    "no_answer": "no-answer", "transport": "body-not-gzip", "not_json": "body-not-json", "not_object": "json-not-object",
    "too_large": "answer-too-large", "not_event_stream": "not-an-event-stream", "malformed_event": "malformed-event", "incomplete": "ends-without-done",
    "cut": "cut", "idle": "idle-timeout", "error_event": "error-event",
}


def test_every_row_of_the_fault_table_has_a_case() -> None:
    assert set(ROW_TESTS) == set(UPSTREAM_FAULTS)
    case_ids = {param.id for param in [*FAULTS, *STREAM_FAULTS, *MID_STREAM]} | {"unit"}
    assert set(ROW_TESTS.values()) <= case_ids


# -- client faults ---------------------------------------------------------------------------------


@pytest.fixture
def lonely(tmp_path: Path) -> Iterator[tuple[RunningGateway, FakeUpstream]]:
    """A gateway with an upstream of its own, so every connection the upstream sees is ours."""
    server = FakeUpstream().start()
    routes = tmp_path / "routes.yaml"
    routes.write_text(f"""
upstreams:
  own: {{base_url: "{server.url}", api_key: "${{FAULT_KEY}}", max_retries: 0, timeout: 120, cooldown: false}}
models:
  - {{name: tiny, upstream: own, model: up-model}}
""")
    running = RunningGateway(routes, tmp_path / "gateway.log", env={"FAULT_KEY": KEY})
    yield running, server
    running.stop()
    server.stop()


@pytest.mark.parametrize(
    "mode",
    [
        pytest.param("non-streaming", id="stream-false-waiting-for-upstream"),
        pytest.param("before-first-byte", id="stream-true-waiting-for-first-token"),
        pytest.param("mid-stream", id="stream-true-after-first-line"),
    ],
)
def test_abandoned_requests_leave_no_upstream_connection(lonely: tuple[RunningGateway, FakeUpstream], mode: str) -> None:
    """200 clients hang up; every upstream request is cancelled (none left open, none finished)."""
    gateway, server = lonely
    batch, batches = 50, 4
    for _ in range(batches):
        if mode == "mid-stream":
            replies = [Reply.sse(chat_chunks(["x"] * 200), delay=0.3) for _ in range(batch)]
        else:
            replies = [Reply(stall=120) if mode == "non-streaming" else Reply.sse(chat_chunks(["x"]), stall=120)] * batch
        server.enqueue(CHAT, *replies)
        body = {"model": "tiny", "messages": [{"role": "user", "content": "hi"}], "stream": mode != "non-streaming"}
        socks = [raw_request(gateway.port, body) for _ in range(batch)]
        assert wait_for(lambda: server.in_flight == batch), server.in_flight
        if mode == "mid-stream":
            for sock in socks:
                first_line(sock)
        for sock in socks:
            sock.close()
        assert wait_for(lambda: server.in_flight == 0 and server.connections == 0), (server.in_flight, server.connections)
    assert len(server.received) == batch * batches

    def disconnects_logged() -> int:
        lines = [json.loads(line) for line in gateway.log_text().splitlines() if '"event":"request"' in line]
        return [line["outcome"] for line in lines].count("client_disconnected")

    assert wait_for(lambda: disconnects_logged() == batch * batches), disconnects_logged()


def test_requests_after_abandoned_ones_are_served(lonely: tuple[RunningGateway, FakeUpstream]) -> None:
    gateway, server = lonely
    server.enqueue(CHAT, Reply(stall=120))
    sock = raw_request(gateway.port, {"model": "tiny", "messages": [{"role": "user", "content": "hi"}], "stream": False})
    assert wait_for(lambda: server.in_flight == 1)
    sock.close()
    assert wait_for(lambda: server.in_flight == 0)
    assert chat(gateway, "tiny", stream=False).json()["message"]["content"] == "Hello there."


# -- secrets -----------------------------------------------------------------------------------------


def _all_faults(gateway: RunningGateway, upstream: FakeUpstream) -> list[httpx.Response]:
    responses = []
    for param in FAULTS:
        fault: Fault = param.values[0]  # type: ignore[assignment]
        for stream in (False, True):
            if fault.reply is not None:
                upstream.enqueue(CHAT, fault.reply)
            responses.append(chat(gateway, fault.model, stream, content=PROMPT))
    for param in STREAM_FAULTS:
        upstream.enqueue(CHAT, param.values[0])  # type: ignore[arg-type]
        responses.append(chat(gateway, "tiny", True, content=PROMPT))
    for param in MID_STREAM:
        upstream.enqueue(CHAT, param.values[0])  # type: ignore[arg-type]
        responses.append(chat(gateway, str(param.values[2]), True, content=PROMPT))
    upstream.enqueue(CHAT, Reply.sse(chat_chunks([COMPLETION])))
    responses.append(chat(gateway, "tiny", True, content=PROMPT))
    return responses


def test_no_fault_leaks_the_key_and_nothing_logs_prompts(faulty: RunningGateway, upstream: FakeUpstream) -> None:
    """Every fault above with a marker key: not in a body, a header or a log line (debug level)."""
    responses = _all_faults(faulty, upstream)
    assert len(responses) == 2 * len(FAULTS) + len(STREAM_FAULTS) + len(MID_STREAM) + 1
    request_ids = {response.headers["x-request-id"] for response in responses}
    assert wait_for(lambda: all(request_id in faulty.log_text() for request_id in request_ids))
    secret = KEY.removeprefix("sk-")
    for response in responses:
        assert secret not in response.text
        assert not any(secret in f"{name}: {value}" for name, value in response.headers.items())
    assert COMPLETION in responses[-1].text
    log = faulty.log_text()
    assert '"level":"debug"' in log or '"event":"request"' in log
    assert secret not in log
    assert PROMPT not in log and COMPLETION not in log


def test_prompts_and_completions_are_logged_only_when_asked(upstream: FakeUpstream, tmp_path: Path) -> None:
    routes = tmp_path / "routes.yaml"
    routes.write_text(f"""
upstreams:
  fake: {{base_url: "{upstream.url}", api_key: "${{FAULT_KEY}}", max_retries: 0, cooldown: false}}
models:
  - {{name: tiny, upstream: fake, model: up-model}}
""")
    running = RunningGateway(routes, tmp_path / "gateway.log", env={"FAULT_KEY": KEY, "GATEWAY_LOG_CONTENT": "true"},
                             log_level="debug")
    try:
        upstream.enqueue(CHAT, Reply.sse(chat_chunks([COMPLETION])))
        assert chat(running, "tiny", stream=True, content=PROMPT).status_code == 200
        # The `content` line is written once the response is over.
        assert wait_for(lambda: COMPLETION in running.log_text())
        log = running.log_text()
    finally:
        running.stop()
    assert PROMPT in log and COMPLETION in log
    assert KEY.removeprefix("sk-") not in log

