"""Several deployments of one model, end to end: the gateway under Granian with two workers,
three loopback upstreams and the `ollama` SDK. Balancing (`weighted`, `least_busy`), failing
over to the next target before the first byte, cooldowns and `max_concurrent` leases shared
by the workers, and what `check` and the listings say about an entry with `targets`."""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import ollama
import pytest

from gateway.cli import main
from gateway.errors import SERVER_BUSY
from tests.client_support import raw_request, wait_for
from tests.conftest import RunningGateway
from tests.fake_upstream import FakeUpstream, Reply, chat_chunks, chat_completion
from tests.test_health_metrics import sample
from tests.redis_support import RedisServer, redis_server  # noqa: F401 - the fixture

CHAT = "/v1/chat/completions"
HI = [{"role": "user", "content": "hi"}]
SLOW = [{"role": "user", "content": "slow"}]


class Deployment(FakeUpstream):
    """Answers with its own name; a message "slow" gets a stream of 20 chunks 0.15 s apart;
    `failing` makes it answer 500 to everything."""

    def __init__(self, name: str) -> None:
        super().__init__()
        self.name = name
        self.failing = False

    def _default(self, path: str, body: Any) -> Reply:
        if self.failing:
            return Reply.json({"error": {"message": f"{self.name} is down", "type": "server_error"}}, status=500)
        if path.endswith("/chat/completions") and isinstance(body, dict):
            slow = any(message.get("content") == "slow" for message in body.get("messages", []))
            if any(message.get("content") == "stall" for message in body.get("messages", [])):
                return Reply(json_body=chat_completion(f"from {self.name}"), stall=5.0)
            if body.get("stream"):
                return Reply.sse(chat_chunks([self.name] * (20 if slow else 2)), delay=0.15 if slow else 0.0)
            return Reply.json(chat_completion(f"from {self.name}"))
        return super()._default(path, body)

    def chats(self) -> list[Any]:
        return [received.json for received in self.received if received.path == CHAT]


@pytest.fixture(scope="module")
def deployments() -> Iterator[dict[str, Deployment]]:
    servers = {name: Deployment(name).start() for name in ("a", "b", "c")}
    yield servers
    for server in servers.values():
        server.stop()


@pytest.fixture(autouse=True)
def _fresh(deployments: dict[str, Deployment]) -> None:
    for server in deployments.values():
        server.reset()
        server.failing = False


def _routes(deployments: dict[str, Deployment]) -> str:
    a, b, c = (deployments[name].url for name in ("a", "b", "c"))
    return f"""
upstreams:
  a: {{base_url: "{a}", max_retries: 0, cooldown: {{after_failures: 3, seconds: 3}}}}
  b: {{base_url: "{b}", max_retries: 0, cooldown: false}}
  c: {{base_url: "{c}", max_retries: 0, max_concurrent: 2}}
  c-again: {{base_url: "{c}", max_retries: 0}}
  c-timed: {{base_url: "{c}", max_retries: 0, max_concurrent: 1, total_timeout: 1, cooldown: false}}
  b-single: {{base_url: "{b}", max_retries: 0, max_concurrent: 1, cooldown: false}}
models:
  - name: split
    targets: [{{upstream: a, model: m-a, weight: 3}}, {{upstream: b, model: m-b}}]
    balance: weighted
  - name: pair
    model: m-pair
    targets: [{{upstream: a}}, {{upstream: b}}]
  - name: down-first
    targets: [{{upstream: b, model: m-down}}, {{upstream: c-again, model: m-up}}]
    balance: weighted
  - name: narrow
    upstream: c
  - name: spill
    targets: [{{upstream: c}}, {{upstream: b, model: m-spill}}]
  - name: guarded
    targets: [{{upstream: a, model: m-guarded}}, {{upstream: c-again}}]
    fallbacks: [narrow]
  - name: timed
    upstream: c-timed
  - name: single-first
    targets: [{{upstream: b-single, model: m-single}}, {{upstream: c-again}}]
    balance: weighted
  - name: single
    upstream: b-single
  - name: only-a
    targets: [{{upstream: a, model: m-only}}]
"""


@pytest.fixture(scope="module")
def gateway(deployments: dict[str, Deployment], tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningGateway]:
    folder = tmp_path_factory.mktemp("targets")
    routes = folder / "routes.yaml"
    routes.write_text(_routes(deployments))
    running = RunningGateway(routes, folder / "gateway.log", workers=2, env={"GATEWAY_QUEUE_TIMEOUT": "1.5"})
    yield running
    running.stop()


@pytest.fixture(scope="module")
def one_worker(deployments: dict[str, Deployment], tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningGateway]:
    """least_busy counts the requests in flight per worker: one worker makes its choice visible."""
    folder = tmp_path_factory.mktemp("targets-one")
    routes = folder / "routes.yaml"
    routes.write_text(_routes(deployments))
    running = RunningGateway(routes, folder / "gateway.log", workers=1)
    yield running
    running.stop()


def _chat(gateway: RunningGateway, model: str, messages: list[dict[str, str]] = HI) -> str:
    with ollama.Client(host=gateway.url) as client:
        return str(client.chat(model=model, messages=messages).message.content)


def _hold_stream(gateway: RunningGateway, model: str) -> Iterator[Any]:
    """A slow stream, opened up to its first chunk; iterate the rest (or close it) to end it."""
    client = ollama.Client(host=gateway.url)
    stream = client.chat(model=model, messages=SLOW, stream=True)
    next(stream)
    return stream


def test_weighted_splits_requests_by_weight_across_two_workers(gateway: RunningGateway, deployments: dict[str, Deployment]) -> None:
    with ThreadPoolExecutor(4) as pool:
        answers = list(pool.map(lambda _: _chat(gateway, "split"), range(40)))
    a, b = deployments["a"].chats(), deployments["b"].chats()
    assert answers.count("from a") == len(a) and answers.count("from b") == len(b) and len(a) + len(b) == 40
    # Smooth weighted round robin per worker: 3 of every 4 to a, within a step per worker.
    assert 27 <= len(a) <= 33, (len(a), len(b))
    assert {body["model"] for body in a} == {"m-a"} and {body["model"] for body in b} == {"m-b"}


def test_least_busy_sends_to_the_idle_target_while_the_other_holds_a_slow_stream(
    one_worker: RunningGateway, deployments: dict[str, Deployment],
) -> None:
    # Nothing in flight: equal targets take turns.
    answers = [_chat(one_worker, "pair") for _ in range(4)]
    assert sorted(answers) == ["from a", "from a", "from b", "from b"]
    stream = _hold_stream(one_worker, "pair")
    busy = "a" if deployments["a"].open_connections else "b"
    idle = "b" if busy == "a" else "a"
    try:
        answers = [_chat(one_worker, "pair") for _ in range(6)]
    finally:
        stream.close()
    assert answers == [f"from {idle}"] * 6
    assert {body["model"] for body in deployments[idle].chats()} == {"m-pair"}


def test_a_failing_target_is_retried_on_the_next_before_the_first_byte(
    gateway: RunningGateway, deployments: dict[str, Deployment],
) -> None:
    deployments["b"].failing = True  # b has no cooldown: every request chosen for it fails over
    request_ids = [f"fo-{uuid.uuid4().hex[:8]}-{n}" for n in range(8)]
    answers = []
    with httpx.Client(base_url=gateway.url, timeout=30) as http:
        for request_id in request_ids:
            response = http.post("/api/chat", json={"model": "down-first", "messages": HI, "stream": n_stream(request_id)},
                                 headers={"X-Request-Id": request_id})
            assert response.status_code == 200, response.text
            answers.append(response.text)
    down, up = deployments["b"].chats(), deployments["c"].chats()
    assert len(up) == 8, "every request was answered by the healthy target"
    assert 3 <= len(down) <= 5, "weighted 1:1 per worker: about half were tried on the failing one first"
    assert {body["model"] for body in down} == {"m-down"} and {body["model"] for body in up} == {"m-up"}
    assert all(body["messages"] == HI for body in down + up)
    assert all('"error"' not in answer and ("from c" in answer or '"content":"c"' in answer) for answer in answers)
    log = gateway.log_text_after(request_ids[-1])
    summaries = [json.loads(line) for line in log.splitlines() if '"event":"request"' in line and '"fo-' in line]
    assert summaries and {summary["upstream"] for summary in summaries} == {"c-again"}, "the line names the target used"
    metrics = httpx.get(gateway.url + "/metrics").text
    assert 'gateway_upstream_attempts_total{outcome="error",upstream="b"}' in metrics


def n_stream(request_id: str) -> bool:
    """Half the requests stream: the first-byte rule holds for both."""
    return request_id.endswith(("1", "3", "5", "7"))


def test_cooldown_skips_an_upstream_then_sends_exactly_one_probe(
    gateway: RunningGateway, deployments: dict[str, Deployment],
) -> None:
    a = deployments["a"]
    a.failing = True
    deadline = time.monotonic() + 20
    while len(a.chats()) < 3 and time.monotonic() < deadline:
        assert _chat(gateway, "guarded") == "from c", "a failing target is retried on the next"
    assert len(a.chats()) == 3
    cooled_at = time.monotonic()
    time.sleep(1.2)  # a worker trusts what the store said for up to a second (admission.STALE_S)
    while time.monotonic() < cooled_at + 2.6:
        assert _chat(gateway, "guarded") == "from c"
        time.sleep(0.05)
    assert len(a.chats()) == 3, "no request reaches an upstream cooling down"
    time.sleep(max(0.0, cooled_at + 3.6 - time.monotonic()))
    for _ in range(20):
        assert _chat(gateway, "guarded") == "from c"
        time.sleep(0.03)
    assert len(a.chats()) == 4, "once the cooldown is over, exactly one probe; it failed, so a cools down again"
    a.failing = False
    time.sleep(3.2)
    answers = [_chat(gateway, "guarded") for _ in range(12)]
    assert "from a" in answers, "a probe that succeeds ends the cooldown"


def test_every_target_cooling_is_a_503_that_says_so(gateway: RunningGateway, deployments: dict[str, Deployment]) -> None:
    a = deployments["a"]
    a.failing = True
    with httpx.Client(base_url=gateway.url, timeout=30) as http:
        for _ in range(3):
            failed = http.post("/api/chat", json={"model": "only-a", "messages": HI, "stream": False})
            assert failed.status_code == 500 and "a is down" in failed.json()["error"]
        time.sleep(1.2)  # past the workers' cached view (admission.STALE_S)
        response = http.post("/api/chat", json={"model": "only-a", "messages": HI, "stream": False})
        assert len(a.chats()) == 3
        assert response.status_code == 503, response.text
        error = response.json()["error"]
        assert "upstream 'a' is cooling down after 3 failures in a row" in error and "s left" in error
        assert 1 <= int(response.headers["retry-after"]) <= 3
        assert '"event":"upstream_skipped"' in gateway.log_text() and '"reason":"cooling"' in gateway.log_text()
        a.failing = False
        time.sleep(2.5)  # the cooldown ends; the next request is the probe, and it succeeds
        assert wait_for(lambda: http.post("/api/chat", json={"model": "only-a", "messages": HI, "stream": False}).status_code == 200,
                        seconds=5)
    assert _chat(gateway, "only-a") == "from a"


def test_max_concurrent_holds_across_workers_then_answers_server_busy(
    gateway: RunningGateway, deployments: dict[str, Deployment],
) -> None:
    streams = [_hold_stream(gateway, "narrow") for _ in range(2)]
    try:
        assert wait_for(lambda: deployments["c"].open_connections == 2)
        # Six more at once, on fresh connections (spread over both workers): a limit kept per
        # worker would let some through on a worker holding fewer than two streams.
        def third() -> tuple[int, Any, float]:
            started = time.monotonic()
            response = httpx.post(gateway.url + "/api/chat", json={"model": "narrow", "messages": HI, "stream": False},
                                  timeout=30)
            return response.status_code, response.json(), time.monotonic() - started

        with ThreadPoolExecutor(6) as pool:
            answers = list(pool.map(lambda _: third(), range(6)))
        for status, body, waited in answers:
            assert status == 503 and body == {"error": SERVER_BUSY}
            assert 1.4 <= waited < 5, "the request waited GATEWAY_QUEUE_TIMEOUT (1.5 s) for a lease"
        assert len(deployments["c"].chats()) == 2, "no request beyond the limit reached the upstream"
        # Counted as 503s of the routed entry (whichever worker scraped: the replica's total).
        assert wait_for(lambda: sample(httpx.get(gateway.url + "/metrics", timeout=10).text, "gateway_requests_total",
                                       endpoint="/api/chat", model="narrow:latest", status="503") >= 6)
        # Another target free: the request moves to it rather than waiting.
        started = time.monotonic()
        assert _chat(gateway, "spill") == "from b"
        assert time.monotonic() - started < 1.0
        assert deployments["b"].chats()[-1]["model"] == "m-spill"
    finally:
        for stream in streams:
            stream.close()
    # A lease comes back when its stream closes: a waiting request then gets through.
    streams = [_hold_stream(gateway, "narrow") for _ in range(2)]
    assert wait_for(lambda: deployments["c"].open_connections == 2)
    with ThreadPoolExecutor(1) as pool:
        started = time.monotonic()
        waiting = pool.submit(_chat, gateway, "narrow")
        time.sleep(0.5)
        assert not waiting.done(), "the third request waits for a lease"
        streams[0].close()  # the client hangs up: the gateway ends that stream and frees its lease
        assert waiting.result(10) == "from c"
        assert 0.5 <= time.monotonic() - started < 1.5
    streams[1].close()
    # Clients that hang up while their answers are awaited give their leases back too.
    sockets = [raw_request(gateway.port, {"model": "narrow", "messages": [{"role": "user", "content": "stall"}],
                                          "stream": False}) for _ in range(2)]
    assert wait_for(lambda: deployments["c"].in_flight == 2)
    for sock in sockets:
        sock.close()
    assert wait_for(lambda: deployments["c"].in_flight == 0)
    started = time.monotonic()
    with ThreadPoolExecutor(2) as pool:
        assert list(pool.map(lambda _: _chat(gateway, "narrow"), range(2))) == ["from c", "from c"]
    assert time.monotonic() - started < 1.0, "no lease was left behind"


def test_a_lease_comes_back_after_a_total_timeout_and_after_a_failure_before_the_first_byte(
    gateway: RunningGateway, deployments: dict[str, Deployment],
) -> None:
    # c-timed: max_concurrent 1, total_timeout 1 s; the slow stream takes 3 s, so it is cut after
    # its first chunks with an error line. Its one lease must be free at once for the next.
    with ollama.Client(host=gateway.url) as client:
        with pytest.raises(ollama.ResponseError, match="total_timeout|timed out|timeout"):
            list(client.chat(model="timed", messages=SLOW, stream=True))
    started = time.monotonic()
    assert _chat(gateway, "timed") == "from c"
    assert time.monotonic() - started < 1.0, "the timed-out stream kept its lease"
    # b-single: max_concurrent 1, answering 500: the try fails before the first byte and the
    # request falls over to the next target; the lease it took on b-single is given back.
    deployments["b"].failing = True
    for _ in range(3):
        assert _chat(gateway, "single-first") == "from c"
    assert deployments["b"].chats(), "b-single was tried first (weighted turns: not every time)"
    deployments["b"].failing = False
    started = time.monotonic()
    assert _chat(gateway, "single") == "from b"
    assert time.monotonic() - started < 1.0, "a failed try kept its lease"


def test_listings_and_show_describe_the_entry_with_its_first_target(gateway: RunningGateway) -> None:
    with ollama.Client(host=gateway.url) as client:
        names = [model.model for model in client.list().models]
        assert "split:latest" in names and "pair:latest" in names
        shown = client.show("split")
        assert "upstream 'a' as 'm-a'" in str(shown.modelfile)
        client.chat(model="split", messages=HI)
        assert "split:latest" in [model.model for model in client.ps().models]


def test_check_shows_targets_weights_balance_and_limits(
    deployments: dict[str, Deployment], tmp_path: Path, capsys: pytest.CaptureFixture[str],
) -> None:
    routes = tmp_path / "routes.yaml"
    routes.write_text(_routes(deployments))
    assert main(["check", "--routes", str(routes)]) == 0
    out = capsys.readouterr().out
    lines = out.splitlines()
    split = next(index for index, line in enumerate(lines) if line.startswith("split:latest"))
    assert "(weighted, 2 targets)" in lines[split] and "a (weight 3)" in lines[split] and "m-a" in lines[split]
    assert lines[split + 1].split()[:4] == ["target", "2", "b", "(weight"] and "m-b" in lines[split + 1]
    pair = next(line for line in lines if line.startswith("pair:latest"))
    assert "(least_busy, 2 targets)" in pair
    upstream_a = next(line for line in lines if line.startswith("a ") and "generic" in line)
    upstream_b = next(line for line in lines if line.startswith("b ") and "generic" in line)
    upstream_c = next(line for line in lines if line.startswith("c ") and "generic" in line)
    assert "3s after 3 failures" in upstream_a and " off " in upstream_b
    assert upstream_c.split()[3] == "2" and "30s after 3 failures" in upstream_c
    assert "MAX CONCURRENT" in out and "COOLDOWN" in out


def test_leases_and_cooldowns_hold_across_two_gateways_sharing_redis(
    deployments: dict[str, Deployment], tmp_path: Path, redis_server: RedisServer,  # noqa: F811
) -> None:
    """Two replicas (gateway processes of two workers each) with GATEWAY_REDIS_URL: one
    `max_concurrent` and one cooldown for both."""
    routes = tmp_path / "routes.yaml"
    routes.write_text(_routes(deployments))
    env = {"GATEWAY_REDIS_URL": redis_server.url, "GATEWAY_QUEUE_TIMEOUT": "1"}
    replicas = [RunningGateway(routes, tmp_path / f"gateway-{n}.log", workers=2, env=env) for n in range(2)]
    try:
        streams = [_hold_stream(replica, "narrow") for replica in replicas]  # one lease held by each
        assert wait_for(lambda: deployments["c"].open_connections == 2)
        for replica in replicas:
            response = httpx.post(replica.url + "/api/chat", json={"model": "narrow", "messages": HI, "stream": False},
                                  timeout=30)
            assert response.status_code == 503 and response.json() == {"error": SERVER_BUSY}
        assert len(deployments["c"].chats()) == 2
        for stream in streams:
            stream.close()
        # Three failures in a row, spread over the replicas, cool `a` down for both.
        deployments["a"].failing = True
        for n in range(3):
            failed = httpx.post(replicas[n % 2].url + "/api/chat", json={"model": "only-a", "messages": HI, "stream": False},
                                timeout=30)
            assert failed.status_code == 500
        time.sleep(1.2)  # past each worker's cached view (admission.STALE_S)
        for replica in replicas:
            response = httpx.post(replica.url + "/api/chat", json={"model": "only-a", "messages": HI, "stream": False},
                                  timeout=30)
            assert response.status_code == 503 and "is cooling down" in response.json()["error"]
        assert len(deployments["a"].chats()) == 3
    finally:
        for replica in replicas:
            replica.stop()


def test_a_worker_killed_while_it_holds_a_lease_frees_it_after_the_lease_ttl(
    deployments: dict[str, Deployment], tmp_path: Path,
) -> None:
    """kill -9 of the Granian worker streaming from an upstream at `max_concurrent: 1`: nothing
    can hand its lease back, so the respawned worker and the other one wait for its ttl
    (LEASE_TTL, 30 s) in the state directory, then the upstream is usable again."""
    import http.client

    import psutil

    from gateway.upstream.sharedstate import LEASE_TTL
    from tests.test_health_metrics import serving_worker, worker_pids

    routes = tmp_path / "routes.yaml"
    routes.write_text(f"""
upstreams:
  one: {{base_url: "{deployments['c'].url}", max_retries: 0, max_concurrent: 1, cooldown: false}}
models:
  - {{name: single, upstream: one}}
""")
    gateway = RunningGateway(routes, tmp_path / "gateway.log", workers=2, env={"GATEWAY_QUEUE_TIMEOUT": "0.5"})
    try:
        connection = http.client.HTTPConnection("127.0.0.1", gateway.port, timeout=30)
        connection.request("POST", "/api/chat", body=json.dumps({"model": "single", "messages": SLOW}),
                           headers={"Content-Type": "application/json"})
        response = connection.getresponse()
        assert response.status == 200 and response.readline()
        worker = serving_worker(gateway, connection)
        psutil.Process(worker).kill()
        killed = time.monotonic()
        connection.close()
        assert wait_for(lambda: len(worker_pids(gateway)) == 2 and worker not in worker_pids(gateway), 30)

        def status() -> int:
            return httpx.post(gateway.url + "/api/chat", json={"model": "single", "messages": HI, "stream": False},
                              timeout=30).status_code

        assert status() == 503  # the dead worker's lease is still counted
        while (answered := status()) == 503:
            assert time.monotonic() - killed < LEASE_TTL + 10, "the killed worker's lease was never freed"
            time.sleep(0.5)
        assert answered == 200
        assert time.monotonic() - killed >= LEASE_TTL - 11, "freed before its ttl (renewed every ttl / 3)"
    finally:
        gateway.stop()
