"""Health probes and Prometheus metrics, through the real server with two Granian workers.

A scrape on any worker reports the whole replica (prometheus-client's multi-process mode over a
private directory the CLI makes per run), labels stay bounded, the probes are open with `auth`
on while `/metrics` is not, and readiness turns 503 the moment SIGTERM starts the drain.
"""

from __future__ import annotations

import http.client
import json
import re
import signal
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import psutil
import pytest

from tests.client_support import wait_for
from tests.conftest import API_KEY, RunningGateway, routes_yaml
from tests.fake_upstream import FakeUpstream, Reply, chat_chunks

CHAT = "/v1/chat/completions"
USER_HI = [{"role": "user", "content": "hi"}]
CLIENT_KEY = "gw-client-key-0123456789"


@pytest.fixture
def own_upstream() -> Iterator[FakeUpstream]:
    server = FakeUpstream().start()
    yield server
    server.stop()


@pytest.fixture
def two_workers(own_upstream: FakeUpstream, tmp_path: Path) -> Iterator[RunningGateway]:
    routes = tmp_path / "routes.yaml"
    routes.write_text(routes_yaml(own_upstream.url))
    running = RunningGateway(routes, tmp_path / "gateway.log", workers=2, env={"GATEWAY_SHUTDOWN_GRACE": "60"})
    yield running
    running.stop()


def scrape(url: str, key: str | None = None) -> str:
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    # A fresh connection each time: the kernel spreads them over the workers' sockets.
    response = httpx.get(url + "/metrics", headers=headers, timeout=10)
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("text/plain")
    return response.text


def sample(text: str, name: str, **labels: str) -> float:
    """The sum of the samples of `name` whose labels include `labels` (0 if none)."""
    total = 0.0
    for line in text.splitlines():
        match = re.match(r"^([a-zA-Z_:][\w:]*)(?:\{(.*)\})? (\S+)$", line)
        if match is None or match.group(1) != name:
            continue
        found = dict(re.findall(r'(\w+)="((?:[^"\\]|\\.)*)"', match.group(2) or ""))
        if all(found.get(key) == value for key, value in labels.items()):
            total += float(match.group(3))
    return total


def worker_pids(gateway: RunningGateway) -> list[int]:
    return [child.pid for child in psutil.Process(gateway.process.pid).children(recursive=True)]


def metrics_dir(gateway: RunningGateway) -> Path:
    """The workers' PROMETHEUS_MULTIPROC_DIR, seen in their memory maps (the files are mmapped)."""
    for mapping in psutil.Process(worker_pids(gateway)[0]).memory_maps():
        if "ollama-gateway-metrics-" in mapping.path:
            return Path(mapping.path).parent
    raise AssertionError("no metrics file mapped")


def chat(url: str, model: str = "tiny", stream: bool = False) -> httpx.Response:
    return httpx.post(url + "/api/chat", json={"model": model, "messages": USER_HI, "stream": stream}, timeout=30)


def test_every_scrape_counts_the_requests_of_both_workers(two_workers: RunningGateway) -> None:
    count = 24
    for _ in range(count):  # a fresh connection each: served by both workers
        assert chat(two_workers.url).status_code == 200
    directory = metrics_dir(two_workers)
    served_by = {int(path.stem.rsplit("_", 1)[1]) for path in directory.glob("counter_*.db")}
    assert len(served_by & set(worker_pids(two_workers))) == 2, "both workers served requests and wrote their counts"
    for _ in range(8):  # scrapes land on either worker: each reports all the requests
        text = scrape(two_workers.url)
        assert sample(text, "gateway_requests_total", endpoint="/api/chat", model="tiny:latest", upstream="fake", status="200") == count
        assert sample(text, "gateway_request_duration_seconds_count", endpoint="/api/chat") == count
        assert sample(text, "gateway_overhead_seconds_count", endpoint="/api/chat") == count
        assert sample(text, "gateway_tokens_total", model="tiny:latest", upstream="fake", kind="prompt") == 12 * count
        assert sample(text, "gateway_tokens_total", model="tiny:latest", upstream="fake", kind="completion") == 3 * count
        assert sample(text, "gateway_upstream_attempts_total", upstream="fake", outcome="ok") == count
    # The gateway's own share is a small part of each request (the upstream answers at once here).
    overhead = sample(text, "gateway_overhead_seconds_sum", endpoint="/api/chat")
    duration = sample(text, "gateway_request_duration_seconds_sum", endpoint="/api/chat")
    assert 0 < overhead < duration
    two_workers.stop()
    assert not directory.exists(), "the CLI removes its metrics directory at exit"


def test_labels_stay_bounded(two_workers: RunningGateway) -> None:
    assert chat(two_workers.url, model="no-such-model-4f2a").status_code == 404
    assert chat(two_workers.url, model="fake/anything-9c1d").status_code == 200
    assert chat(two_workers.url, model="deadmodel").status_code == 502
    assert httpx.get(two_workers.url + "/api/nowhere-7e1b", timeout=10).status_code == 404
    assert httpx.post(two_workers.url + "/v1/models/whatever-3b7f", timeout=10).status_code in (404, 405)
    text = scrape(two_workers.url)
    for client_string in ("no-such-model-4f2a", "anything-9c1d", "nowhere-7e1b", "whatever-3b7f"):
        assert client_string not in text
    assert sample(text, "gateway_requests_total", endpoint="/api/chat", model="unrouted", upstream="none", status="404") == 1
    assert sample(text, "gateway_requests_total", endpoint="/api/chat", model="fake/*", upstream="fake", status="200") == 1
    assert sample(text, "gateway_requests_total", endpoint="other", status="404") == 1
    assert sample(text, "gateway_upstream_attempts_total", upstream="dead", outcome="error") == 1
    assert sample(text, "gateway_requests_total", endpoint="/api/chat", model="deadmodel:latest", upstream="dead", status="502") == 1


def test_streams_in_flight_and_time_to_first_chunk(two_workers: RunningGateway, own_upstream: FakeUpstream) -> None:
    own_upstream.enqueue(CHAT, Reply.sse(chat_chunks(["tick"] * 10), delay=0.3))
    started = threading.Event()

    def read() -> int:
        body = {"model": "tiny", "messages": USER_HI}
        with httpx.stream("POST", two_workers.url + "/api/chat", json=body, timeout=60) as response:
            for _ in response.iter_lines():
                started.set()
            return response.status_code

    with ThreadPoolExecutor(1) as pool:
        reader = pool.submit(read)
        assert started.wait(20)
        # Whichever worker the scrape lands on, it sees the stream the other may be serving.
        assert all(sample(scrape(two_workers.url), "gateway_streams_in_flight") == 1 for _ in range(4))
        assert reader.result(60) == 200
    assert wait_for(lambda: sample(scrape(two_workers.url), "gateway_request_duration_seconds_count", endpoint="/api/chat") == 1)
    text = scrape(two_workers.url)
    assert sample(text, "gateway_streams_in_flight") == 0
    assert sample(text, "gateway_time_to_first_chunk_seconds_count", endpoint="/api/chat", model="tiny:latest") == 1
    # The stream took ~3 s, nearly all of it waiting on the upstream: not the gateway's overhead.
    assert sample(text, "gateway_request_duration_seconds_sum", endpoint="/api/chat") > 2.5
    assert sample(text, "gateway_overhead_seconds_sum", endpoint="/api/chat") < 1.0


def test_a_killed_worker_leaves_its_counts_but_not_its_streams(two_workers: RunningGateway, own_upstream: FakeUpstream) -> None:
    for _ in range(10):  # served by both workers, the one killed below included
        assert chat(two_workers.url).status_code == 200
    own_upstream.enqueue(CHAT, Reply.sse(chat_chunks(["tick"] * 200), delay=0.1))
    connection = http.client.HTTPConnection("127.0.0.1", two_workers.port, timeout=30)
    body = json.dumps({"model": "tiny", "messages": USER_HI})
    connection.request("POST", "/api/chat", body=body, headers={"Content-Type": "application/json"})
    response = connection.getresponse()
    assert response.status == 200 and response.readline()
    worker = serving_worker(two_workers, connection)
    (survivor,) = [pid for pid in worker_pids(two_workers) if pid != worker]
    assert sample(scrape(two_workers.url), "gateway_streams_in_flight") == 1
    psutil.Process(worker).kill()
    connection.close()
    # Granian respawns the worker: its share of the live gauge goes, what it served stays counted
    # (the stream it was writing was never answered: not counted).
    assert wait_for(lambda: len(worker_pids(two_workers)) == 2 and worker not in worker_pids(two_workers), 30)
    replacement = next(pid for pid in worker_pids(two_workers) if pid != survivor)
    assert wait_for(lambda: _scrape_or_empty(two_workers.url).count("gateway_streams_in_flight 0.0") == 1, 30)
    assert sample(scrape(two_workers.url), "gateway_requests_total", endpoint="/api/chat") == 10
    # Stopped at once, while the replacement may still be starting: nothing is left running.
    two_workers.stop()
    assert wait_for(lambda: not psutil.pid_exists(replacement) or psutil.Process(replacement).status() == psutil.STATUS_ZOMBIE, 20)


def _scrape_or_empty(url: str) -> str:
    try:
        return scrape(url)
    except (httpx.HTTPError, AssertionError):
        return ""


def serving_worker(gateway: RunningGateway, connection: http.client.HTTPConnection) -> int:
    """The pid of the worker at the other end of `connection`."""
    assert connection.sock is not None
    local_port = connection.sock.getsockname()[1]
    for pid in worker_pids(gateway):
        for conn in psutil.Process(pid).net_connections(kind="tcp"):
            if conn.raddr and conn.raddr.port == local_port:
                return pid
    raise AssertionError("no worker holds the connection")


def test_readiness_turns_503_when_sigterm_starts_the_drain(own_upstream: FakeUpstream, tmp_path: Path) -> None:
    """With GATEWAY_SHUTDOWN_DELAY, SIGTERM fails readiness on every worker at once while they go
    on serving (new connections included); then Granian stops accepting and the drain lets the
    stream in flight finish."""
    routes = tmp_path / "routes.yaml"
    routes.write_text(routes_yaml(own_upstream.url))
    gateway = RunningGateway(routes, tmp_path / "gateway.log", workers=2,
                             env={"GATEWAY_SHUTDOWN_GRACE": "60", "GATEWAY_SHUTDOWN_DELAY": "3"})
    try:
        # A slow stream in flight (about 8 s) keeps its worker draining after the delay.
        own_upstream.enqueue(CHAT, Reply.sse(chat_chunks(["tick"] * 40), delay=0.2))
        stream = http.client.HTTPConnection("127.0.0.1", gateway.port, timeout=60)
        stream.request("POST", "/api/chat", body=json.dumps({"model": "tiny", "messages": USER_HI}),
                       headers={"Content-Type": "application/json"})
        response = stream.getresponse()
        assert response.status == 200 and response.readline()
        assert httpx.get(gateway.url + "/health/ready", timeout=10).json() == {"status": "ok"}

        signalled = time.monotonic()
        gateway.process.send_signal(signal.SIGTERM)
        assert wait_for(lambda: httpx.get(gateway.url + "/health/ready", timeout=10).status_code == 503, 2)
        # Both workers say so (fresh connections land on either), and both still serve.
        for _ in range(6):
            ready = httpx.get(gateway.url + "/health/ready", timeout=10)
            assert (ready.status_code, ready.json()) == (503, {"status": "draining"})
            assert httpx.get(gateway.url + "/health/live", timeout=10).status_code == 200
        assert chat(gateway.url).status_code == 200
        assert time.monotonic() - signalled < 3, "all of this within the delay"
        # The stream in flight still ends normally, after Granian has stopped accepting.
        lines = [json.loads(line) for line in response.read().splitlines() if line.strip()]
        assert lines[-1]["done"] is True
        with pytest.raises(httpx.ConnectError):
            httpx.get(gateway.url + "/health/live", timeout=2)
        assert gateway.process.wait(30) == 0
        assert '"event":"leaving"' in gateway.log_text()
    finally:
        stream.close()
        gateway.stop()


def test_health_is_open_with_auth_on_and_metrics_are_not(own_upstream: FakeUpstream, tmp_path: Path) -> None:
    routes = tmp_path / "routes.yaml"
    routes.write_text(routes_yaml(own_upstream.url) + f"""
auth:
  keys:
    - {{key: "{CLIENT_KEY}"}}
""")
    gateway = RunningGateway(routes, tmp_path / "gateway.log", workers=2)
    try:
        for path in ("/health/live", "/health/ready"):
            response = httpx.get(gateway.url + path, timeout=10)
            assert (response.status_code, response.json()) == (200, {"status": "ok"})
            assert httpx.head(gateway.url + path, timeout=10).status_code == 200
        assert httpx.get(gateway.url + "/api/tags", timeout=10).status_code == 401
        denied = httpx.get(gateway.url + "/metrics", timeout=10)
        assert (denied.status_code, denied.json()) == (401, {"error": "unauthorized"})
        assert httpx.get(gateway.url + "/metrics", headers={"Authorization": f"Bearer {API_KEY}"}, timeout=10).status_code == 401
        text = scrape(gateway.url, CLIENT_KEY)
        assert sample(text, "gateway_requests_total", endpoint="/metrics", status="401") == 2
        assert sample(text, "gateway_requests_total", endpoint="/health/ready", status="200") >= 1
    finally:
        gateway.stop()


def test_fallbacks_relays_and_reloads_are_counted(own_upstream: FakeUpstream, tmp_path: Path) -> None:
    routes = tmp_path / "routes.yaml"
    text = routes_yaml(own_upstream.url, "  - {name: rescued, upstream: dead, fallbacks: [tiny]}\n")
    routes.write_text(text)
    gateway = RunningGateway(routes, tmp_path / "gateway.log", workers=2)
    try:
        # A failed try on `dead`, then the fallback on `fake`: two attempts, one request.
        assert chat(gateway.url, model="rescued").status_code == 200
        relayed = httpx.post(gateway.url + "/v1/chat/completions", json={"model": "tiny", "messages": USER_HI}, timeout=30)
        assert relayed.status_code == 200
        text_now = scrape(gateway.url)
        assert sample(text_now, "gateway_upstream_attempts_total", upstream="dead", outcome="error") == 1
        assert sample(text_now, "gateway_upstream_attempts_total", upstream="fake", outcome="ok") == 2
        assert sample(text_now, "gateway_requests_total", endpoint="/api/chat", model="rescued:latest", upstream="fake",
                      status="200") == 1
        assert sample(text_now, "gateway_requests_total", endpoint="/v1/chat/completions", model="tiny:latest",
                      upstream="fake", status="200") == 1

        # One edit reloads in each worker; a broken file is rejected by each.
        routes.write_text(text + "  - {name: extra, upstream: fake}\n")
        assert wait_for(lambda: sample(scrape(gateway.url), "gateway_route_map_reloads_total", result="ok") == 2, 30)
        routes.write_text("models: [")
        assert wait_for(lambda: sample(scrape(gateway.url), "gateway_route_map_reloads_total", result="rejected") == 2, 30)
        assert sample(scrape(gateway.url), "gateway_route_map_reloads_total", result="ok") == 2
    finally:
        gateway.stop()


def test_a_stop_right_after_a_respawn_leaves_no_worker_behind(own_upstream: FakeUpstream, tmp_path: Path) -> None:
    """A worker gets the master's signal handlers when forked, until Granian installs its own; a
    SIGTERM in between used to be taken for the master's and lost, and the worker ran on alone."""
    routes = tmp_path / "routes.yaml"
    routes.write_text(routes_yaml(own_upstream.url))
    gateway = RunningGateway(routes, tmp_path / "gateway.log", workers=2)
    try:
        first = worker_pids(gateway)
        psutil.Process(first[0]).kill()
        assert wait_for(lambda: len(set(worker_pids(gateway)) - set(first)) == 1, 30)
        (replacement,) = set(worker_pids(gateway)) - set(first)
        gateway.process.send_signal(signal.SIGTERM)  # at once, while the replacement starts
        assert gateway.process.wait(30) == 0
        assert wait_for(lambda: not psutil.pid_exists(replacement), 20), "the replacement outlived the master"
    finally:
        gateway.stop()
