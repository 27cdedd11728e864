"""Retries, fallbacks and timeouts, end to end: the gateway under Granian and several real loopback
upstreams, each failing in its own way (refused, silent, slow, 5xx, 429, 401, cut mid-stream)."""

from __future__ import annotations

import json
import socket
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx
import pytest

from gateway.errors import ServerBusy, UpstreamRejected, UpstreamTimeout, upstream_fault
from gateway.upstream.failover import retry_after_of, verdict_of
from tests.conftest import RunningGateway, closed_port
from tests.fake_upstream import FakeUpstream, Reply, chat_chunks, chat_completion

CHAT = "/v1/chat/completions"
USER_HI = [{"role": "user", "content": "hi"}]


class FailingUpstream(FakeUpstream):
    """Answers 503 to everything nothing was scripted for."""

    def _default(self, path: str, body: Any) -> Reply:
        return Reply.json({"error": {"message": "overloaded", "type": "server_error"}}, status=503)


class Blackhole:
    """A loopback port whose connections are never accepted: its backlog is full, so connects hang."""

    def __init__(self) -> None:
        self.server = socket.socket()
        self.server.bind(("127.0.0.1", 0))
        self.server.listen(0)
        self.port = self.server.getsockname()[1]
        self.filler = socket.create_connection(("127.0.0.1", self.port), timeout=2)

    def close(self) -> None:
        self.filler.close()
        self.server.close()


@pytest.fixture(scope="module")
def primary() -> Iterator[FakeUpstream]:
    server = FakeUpstream().start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def backup() -> Iterator[FakeUpstream]:
    server = FakeUpstream().start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def failing() -> Iterator[FakeUpstream]:
    server = FailingUpstream().start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def gateway(primary: FakeUpstream, backup: FakeUpstream, failing: FakeUpstream, tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningGateway]:
    hole = Blackhole()
    folder = tmp_path_factory.mktemp("failover")
    routes = folder / "routes.yaml"
    fast = "retry_backoff: 0.01, retry_backoff_max: 0.05"
    routes.write_text(f"""
upstreams:
  flaky:    {{base_url: "{primary.url}", max_retries: 2, {fast}, retry_after_max: 2, cooldown: false}}
  backup:   {{base_url: "{backup.url}", max_retries: 0, cooldown: false}}
  dead:     {{base_url: "http://127.0.0.1:{closed_port()}/v1", max_retries: 1, {fast}, cooldown: false}}
  hole:     {{base_url: "http://127.0.0.1:{hole.port}/v1", connect_timeout: 0.5, max_retries: 0, cooldown: false}}
  silent:   {{base_url: "{primary.url}", first_token_timeout: 1, max_retries: 0, cooldown: false}}
  bounded:  {{base_url: "{primary.url}", total_timeout: 1.5, max_retries: 0, cooldown: false}}
  failing:  {{base_url: "{failing.url}", max_retries: 0, cooldown: false}}
models:
  - {{name: flaky-m, upstream: flaky, model: a-model, fallbacks: [backup-m]}}
  - {{name: solo, upstream: flaky, model: a-model}}
  - {{name: backup-m, upstream: backup, model: b-model}}
  - {{name: dead-m, upstream: dead, fallbacks: [backup-m]}}
  - {{name: hole-m, upstream: hole, fallbacks: [backup-m]}}
  - {{name: silent-m, upstream: silent, model: a-model, fallbacks: [backup-m]}}
  - {{name: bounded-m, upstream: bounded, model: a-model, fallbacks: [backup-m]}}
  - {{name: failing-m, upstream: failing, fallbacks: [dead-m, backup-m]}}
""")
    running = RunningGateway(routes, folder / "gateway.log", workers=2)
    yield running
    running.stop()
    hole.close()


@pytest.fixture(autouse=True)
def _reset(primary: FakeUpstream, backup: FakeUpstream, failing: FakeUpstream) -> None:
    for server in (primary, backup, failing):
        server.reset()


def chat(gateway: RunningGateway, model: str, *, stream: bool = False) -> tuple[httpx.Response, str]:
    request_id = uuid.uuid4().hex
    response = httpx.post(gateway.url + "/api/chat", json={"model": model, "messages": USER_HI, "stream": stream},
                          headers={"X-Request-Id": request_id}, timeout=30)
    return response, request_id


def log_lines(gateway: RunningGateway, request_id: str, event: str) -> list[dict[str, Any]]:
    lines = []
    for raw in gateway.log_text_after(request_id).splitlines():
        if request_id in raw and raw.startswith("{"):
            line = json.loads(raw)
            if line.get("event") == event:
                lines.append(line)
    return lines


def ndjson(response: httpx.Response) -> list[dict[str, Any]]:
    return [json.loads(line) for line in response.text.splitlines()]


def test_connection_refused_is_retried_then_falls_back(gateway: RunningGateway, backup: FakeUpstream) -> None:
    response, request_id = chat(gateway, "dead-m")
    assert response.status_code == 200 and response.json()["message"]["content"] == "Hello there."
    assert response.json()["model"] == "dead-m", "the client's name, whoever answered"
    assert backup.last(CHAT).json["model"] == "b-model", "the fallback's body is built for the fallback"
    attempts = log_lines(gateway, request_id, "upstream_attempt")
    assert [(a["upstream"], a["outcome"]) for a in attempts] == [("dead", "failed"), ("dead", "failed"), ("backup", "ok")]
    assert "unreachable" in attempts[0]["error"]
    summary = log_lines(gateway, request_id, "request")[-1]
    assert summary["upstream"] == "backup" and summary["status"] == 200


def test_5xx_is_retried_on_the_same_upstream(gateway: RunningGateway, primary: FakeUpstream, backup: FakeUpstream) -> None:
    error = Reply.json({"error": {"message": "bad gateway", "type": "server_error"}}, status=502)
    primary.enqueue(CHAT, error, error, Reply.json(chat_completion("third time lucky")))
    response, _ = chat(gateway, "flaky-m")
    assert response.status_code == 200 and response.json()["message"]["content"] == "third time lucky"
    assert len([r for r in primary.received if r.path == CHAT]) == 3 and backup.received == []


def test_retries_exhausted_fall_back(gateway: RunningGateway, primary: FakeUpstream, backup: FakeUpstream) -> None:
    error = Reply.json({"error": {"message": "down", "type": "server_error"}}, status=500)
    primary.enqueue(CHAT, error, error, error)
    backup.enqueue(CHAT, Reply.sse(chat_chunks(["from", " backup"])))
    response, _ = chat(gateway, "flaky-m", stream=True)
    lines = ndjson(response)
    assert response.status_code == 200 and "".join(line["message"]["content"] for line in lines) == "from backup"
    assert lines[-1]["done"] is True
    assert len([r for r in primary.received if r.path == CHAT]) == 3


def test_without_fallbacks_the_last_error_is_answered(gateway: RunningGateway, primary: FakeUpstream) -> None:
    error = Reply.json({"error": {"message": "still down", "type": "server_error"}}, status=503)
    primary.enqueue(CHAT, error, error, error)
    response, _ = chat(gateway, "solo")
    assert (response.status_code, response.json()) == (503, {"error": "still down"})


def test_when_every_target_fails_the_answer_names_each_failure(gateway: RunningGateway, primary: FakeUpstream, backup: FakeUpstream) -> None:
    """A primary's failure (say, a missing key) is not hidden behind the last fallback's."""
    primary.enqueue(CHAT, *[Reply.json({"error": {"message": "primary down", "type": "server_error"}}, status=500)] * 3)
    backup.enqueue(CHAT, Reply.json({"error": {"message": "backup down", "type": "server_error"}}, status=502))
    response, _ = chat(gateway, "flaky-m")
    assert response.status_code == 502
    assert response.json() == {"error": "backup down (tried before: primary down)"}


def test_429_retry_after_is_honoured_within_the_cap(gateway: RunningGateway, primary: FakeUpstream, backup: FakeUpstream) -> None:
    limited = Reply.json({"error": {"message": "slow down", "type": "rate_limit"}}, status=429, headers={"Retry-After": "0.3"})
    primary.enqueue(CHAT, limited, Reply.json(chat_completion("after the wait")))
    response, request_id = chat(gateway, "flaky-m")
    assert response.json()["message"]["content"] == "after the wait" and backup.received == []
    assert [line["wait_s"] for line in log_lines(gateway, request_id, "upstream_retry")] == [0.3]


def test_429_retry_after_beyond_the_cap_falls_back_at_once(gateway: RunningGateway, primary: FakeUpstream, backup: FakeUpstream) -> None:
    primary.enqueue(CHAT, Reply.json({"error": {"message": "quota", "type": "rate_limit"}}, status=429, headers={"Retry-After": "120"}))
    response, request_id = chat(gateway, "flaky-m")
    assert response.status_code == 200 and backup.last(CHAT).json["model"] == "b-model"
    assert len([r for r in primary.received if r.path == CHAT]) == 1
    assert log_lines(gateway, request_id, "upstream_retry") == []


def test_a_rejected_request_is_neither_retried_nor_sent_elsewhere(gateway: RunningGateway, primary: FakeUpstream, backup: FakeUpstream) -> None:
    primary.enqueue(CHAT, Reply.json({"error": {"message": "the prompt is too long", "type": "invalid_request_error"}}, status=400))
    response, _ = chat(gateway, "flaky-m", stream=True)
    assert (response.status_code, response.json()) == (400, {"error": "the prompt is too long"})
    assert len(primary.received) == 1 and backup.received == []


def test_rejected_credentials_fall_back_without_retrying(gateway: RunningGateway, primary: FakeUpstream, backup: FakeUpstream) -> None:
    primary.enqueue(CHAT, Reply.json({"error": {"message": "bad key", "code": "invalid_api_key"}}, status=401))
    response, _ = chat(gateway, "flaky-m")
    assert response.status_code == 200 and len(primary.received) == 1 and len(backup.received) == 1


def test_connect_timeout_falls_back(gateway: RunningGateway, backup: FakeUpstream) -> None:
    response, request_id = chat(gateway, "hole-m", stream=True)
    assert response.status_code == 200 and ndjson(response)[-1]["done"] is True
    failed = log_lines(gateway, request_id, "upstream_attempt")[0]
    assert failed["upstream"] == "hole" and failed["status"] == 504


@pytest.mark.parametrize(
    "silence",
    [
        pytest.param({"stall": 10}, id="no-status-line"),
        pytest.param({"stall": 10, "stall_after": 0}, id="headers-then-nothing"),
        pytest.param({"stall": 10, "stall_after": 1}, id="role-chunk-then-nothing"),
    ],
)
def test_first_token_timeout_abandons_a_silent_stream_and_falls_back(
    gateway: RunningGateway, primary: FakeUpstream, backup: FakeUpstream, silence: dict[str, Any]
) -> None:
    primary.enqueue(CHAT, Reply.sse(chat_chunks(["never", " seen"]), **silence))
    backup.enqueue(CHAT, Reply.sse(chat_chunks(["rescued"])))
    response, request_id = chat(gateway, "silent-m", stream=True)
    assert [line["message"]["content"] for line in ndjson(response)] == ["rescued", ""]
    assert "first_token_timeout" in log_lines(gateway, request_id, "upstream_attempt")[0]["error"]


def test_total_timeout_before_the_answer_falls_back(gateway: RunningGateway, primary: FakeUpstream, backup: FakeUpstream) -> None:
    primary.enqueue(CHAT, Reply(json_body=chat_completion("too late"), stall=10))
    response, _ = chat(gateway, "bounded-m")
    assert response.status_code == 200 and response.json()["message"]["content"] == "Hello there."
    assert len(backup.received) == 1


def test_total_timeout_after_the_first_byte_ends_the_stream_with_an_error_line(
    gateway: RunningGateway, primary: FakeUpstream, backup: FakeUpstream
) -> None:
    primary.enqueue(CHAT, Reply.sse(chat_chunks([f"w{i} " for i in range(40)]), delay=0.1))
    response, _ = chat(gateway, "bounded-m", stream=True)
    lines = ndjson(response)
    assert response.status_code == 200 and lines[0]["message"]["content"]
    assert "total_timeout" in lines[-1]["error"] and not any(line.get("done") for line in lines)
    assert backup.received == [], "no fallback once the client has bytes"


def test_a_stream_cut_after_the_first_byte_is_not_retried(gateway: RunningGateway, primary: FakeUpstream, backup: FakeUpstream) -> None:
    primary.enqueue(CHAT, Reply.sse(chat_chunks(["partial", " more"]), cut_after=3))
    response, _ = chat(gateway, "flaky-m", stream=True)
    lines = ndjson(response)
    assert lines[0]["message"]["content"] == "partial" and "error" in lines[-1]
    assert len(primary.received) == 1 and backup.received == []


def test_a_broken_stream_before_the_first_byte_is_retried(gateway: RunningGateway, primary: FakeUpstream, backup: FakeUpstream) -> None:
    primary.enqueue(CHAT, Reply.sse(chat_chunks(["lost"]), cut_after=1), Reply.sse(chat_chunks(["kept"])))
    response, _ = chat(gateway, "flaky-m", stream=True)
    assert [line["message"]["content"] for line in ndjson(response)] == ["kept", ""]
    assert len(primary.received) == 2 and backup.received == []


def test_fallbacks_are_tried_in_order(gateway: RunningGateway, failing: FakeUpstream, backup: FakeUpstream) -> None:
    response, request_id = chat(gateway, "failing-m")
    assert response.status_code == 200
    assert [a["upstream"] for a in log_lines(gateway, request_id, "upstream_attempt")] == ["failing", "dead", "dead", "backup"]


def test_fallback_under_concurrent_load(gateway: RunningGateway, failing: FakeUpstream, backup: FakeUpstream) -> None:
    """Every request of a burst is answered by the fallback while the primary fails all of them."""
    count = 40

    def one(index: int) -> list[dict[str, Any]]:
        response, _ = chat(gateway, "failing-m", stream=index % 2 == 0)
        assert response.status_code == 200, response.text
        return ndjson(response)

    with ThreadPoolExecutor(max_workers=count) as pool:
        results = list(pool.map(one, range(count)))
    for lines in results:
        assert lines[-1]["done"] is True and "error" not in lines[-1]
    assert len([r for r in failing.received if r.path == CHAT]) == count
    assert len([r for r in backup.received if r.path == CHAT]) == count


def test_an_upstream_never_sees_the_clients_authorization(gateway: RunningGateway, primary: FakeUpstream) -> None:
    httpx.post(gateway.url + "/api/chat", json={"model": "solo", "messages": USER_HI, "stream": False},
               headers={"Authorization": "Bearer client-secret-123"}, timeout=30)
    assert primary.last(CHAT).headers.get("Authorization") != "Bearer client-secret-123"


def test_verdicts_and_retry_after() -> None:
    """Each failure carries its verdict from where it was classified (the fault table's rows)."""
    assert verdict_of(UpstreamTimeout("t")) == "retry"
    assert verdict_of(upstream_fault(429, upstream="u")) == "retry"
    assert verdict_of(upstream_fault(503, upstream="u")) == "retry"
    assert verdict_of(upstream_fault("refused", upstream="u")) == "retry"
    assert verdict_of(upstream_fault(401, upstream="u")) == "next"
    assert verdict_of(upstream_fault("model_not_found", upstream="u")) == "next"
    assert verdict_of(upstream_fault(400, upstream="u")) == "stop"
    # An error event's status, met outside the table, is judged the same way.
    assert verdict_of(UpstreamRejected("x", status_code=429)) == "retry"
    assert verdict_of(UpstreamRejected("bad", status_code=400)) == "stop"
    # The worker's own concurrency limit: a fallback would only queue behind the same limit again.
    assert verdict_of(ServerBusy("server busy")) == "stop"
    assert retry_after_of(UpstreamRejected("x", headers={"Retry-After": "2"})) == 2.0
    assert retry_after_of(UpstreamRejected("x", headers={"Retry-After": "Wed, 21 Oct 2015 07:28:00 GMT"})) == 0.0
    assert retry_after_of(UpstreamRejected("x")) is None

