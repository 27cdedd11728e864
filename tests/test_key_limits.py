"""Per-key limits (routes.yaml `auth.keys[].limits`): the gateway under Granian with two workers,
a loopback upstream, the `ollama` SDK; a limit shared by the workers of one process through the
state directory, and by two processes of two workers each through one real `redis-server`;
Redis stopped mid-run fails open, as the README says."""

from __future__ import annotations

import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import ollama
import openai
import pytest

from tests.conftest import ROOT, RunningGateway
from tests.fake_upstream import FakeUpstream, Reply, chat_chunks
from tests.redis_support import RedisServer, redis_server  # noqa: F401 - the fixture

RPM_KEY = "gw-rpm-key-0123456789"
TPM_KEY = "gw-tpm-key-0123456789"
STREAM_TPM_KEY = "gw-stream-tpm-0123456789"
PARALLEL_KEY = "gw-parallel-0123456789"
ABANDON_KEY = "gw-abandon-key-0123456789"
ABANDON_MESSAGES_KEY = "gw-abandon-messages-0123456789"
FREE_KEY = "gw-free-key-0123456789"
USER_HI = [{"role": "user", "content": "hi"}]


def limited_routes(folder: Path, upstream_url: str, rpm: int = 5) -> Path:
    # No cooldown: its per-worker view asks the store about once a second (tests/test_targets.py),
    # and the store's call count here must show the limits' operations alone.
    routes = folder / "routes.yaml"
    routes.write_text(f"""
upstreams:
  up: {{base_url: "{upstream_url}", max_retries: 0, cooldown: false}}
models:
  - {{name: tiny, upstream: up, model: up-model}}
auth:
  keys:
    - {{key: {RPM_KEY}, limits: {{rpm: {rpm}}}}}
    - {{key: {TPM_KEY}, limits: {{tpm: 40}}}}
    - {{key: {STREAM_TPM_KEY}, limits: {{tpm: 40, rpm: 100}}}}
    - {{key: {PARALLEL_KEY}, limits: {{max_parallel: 2}}}}
    - {{key: {ABANDON_KEY}, limits: {{tpm: 40}}}}
    - {{key: {ABANDON_MESSAGES_KEY}, limits: {{tpm: 40}}}}
    - {{key: {FREE_KEY}}}
""")
    return routes


@pytest.fixture(scope="module")
def two_workers(upstream: FakeUpstream, tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningGateway]:
    folder = tmp_path_factory.mktemp("key-limits")
    gateway = RunningGateway(limited_routes(folder, upstream.url, rpm=10), folder / "gateway.log", workers=2)
    yield gateway
    gateway.stop()


def sdk(gateway: RunningGateway, key: str) -> ollama.Client:
    return ollama.Client(host=gateway.url, headers={"Authorization": f"Bearer {key}"})


def chat_fresh(url: str, key: str) -> httpx.Response:
    """One chat on a new connection (so the kernel spreads them over the workers)."""
    with httpx.Client(base_url=url, headers={"Authorization": f"Bearer {key}"}, timeout=10) as client:
        return client.post("/api/chat", json={"model": "tiny", "messages": USER_HI, "stream": False})


def test_rpm_is_shared_by_the_workers_and_answered_in_each_surface_shape(two_workers: RunningGateway) -> None:
    statuses = [chat_fresh(two_workers.url, RPM_KEY).status_code for _ in range(20)]
    assert statuses.count(200) == 10 and statuses.count(429) == 10, statuses  # 20 if each worker counted alone
    assert statuses[:10] == [200] * 10
    with sdk(two_workers, RPM_KEY) as client, pytest.raises(ollama.ResponseError) as refused:
        client.chat(model="tiny", messages=USER_HI)
    assert refused.value.status_code == 429
    assert "10 requests per minute" in refused.value.error
    answer = chat_fresh(two_workers.url, RPM_KEY)
    assert answer.status_code == 429 and set(answer.json()) == {"error"}  # Ollama's shape
    assert 50 <= int(answer.headers["Retry-After"]) <= 61  # the first request leaves the minute then
    with openai.OpenAI(base_url=two_workers.url + "/v1", api_key=RPM_KEY, max_retries=0) as client:
        with pytest.raises(openai.RateLimitError) as limited:
            client.chat.completions.create(model="tiny", messages=[{"role": "user", "content": "hi"}])
    assert "10 requests per minute" in limited.value.message
    assert int(limited.value.response.headers["Retry-After"]) >= 1
    messages = httpx.post(two_workers.url + "/v1/messages", headers={"x-api-key": RPM_KEY}, timeout=10,
                          json={"model": "tiny", "max_tokens": 10, "messages": USER_HI})
    assert messages.status_code == 429 and "Retry-After" in messages.headers
    assert messages.json()["type"] == "error" and messages.json()["error"]["type"] == "rate_limit_error"
    # Another key is not touched by this one's limit.
    assert chat_fresh(two_workers.url, FREE_KEY).status_code == 200
    # Counted like any status, over both workers, with no key label.
    scrape = httpx.get(two_workers.url + "/metrics", headers={"Authorization": f"Bearer {FREE_KEY}"}, timeout=10).text
    limited_lines = [line for line in scrape.splitlines()
                     if line.startswith("gateway_requests_total{") and 'status="429"' in line and 'endpoint="/api/chat"' in line]
    assert sum(float(line.rsplit(" ", 1)[1]) for line in limited_lines) == 12, limited_lines  # 10 + the SDK's + one
    assert not any(key in scrape for key in (RPM_KEY, FREE_KEY))


def test_tpm_counts_prompt_and_completion_tokens_after_each_answer(two_workers: RunningGateway) -> None:
    with sdk(two_workers, TPM_KEY) as client:
        for _ in range(3):  # 15 tokens each (12 + 3): 0, 15, 30 of 40 before each
            assert client.chat(model="tiny", messages=USER_HI).message.content == "Hello there."
        with pytest.raises(ollama.ResponseError) as refused:
            client.chat(model="tiny", messages=USER_HI)
    assert refused.value.status_code == 429 and "40 tokens per minute" in refused.value.error


def test_a_stream_adds_its_tokens_when_it_ends(two_workers: RunningGateway, upstream: FakeUpstream) -> None:
    with sdk(two_workers, STREAM_TPM_KEY) as client:
        for _ in range(3):
            upstream.enqueue("/v1/chat/completions", Reply.sse(chat_chunks(["Hel", "lo"], usage=(10, 5))))
            pieces = list(client.chat(model="tiny", messages=USER_HI, stream=True))
            assert pieces[-1].done and pieces[-1].prompt_eval_count == 10
        with pytest.raises(ollama.ResponseError) as refused:
            list(client.chat(model="tiny", messages=USER_HI, stream=True))
    assert refused.value.status_code == 429


def test_a_stream_the_client_abandons_still_counts_the_tokens_it_got(two_workers: RunningGateway, upstream: FakeUpstream) -> None:
    # The upstream's usage comes in its last chunk, which a client that hangs up never lets
    # arrive: what was streamed is counted by the estimate (four characters a token), else a
    # client could dodge its tpm by closing each stream before the end.
    upstream.enqueue("/v1/chat/completions", Reply.sse(chat_chunks(["x" * 40] * 30), delay=0.1))
    headers = {"Authorization": f"Bearer {ABANDON_KEY}"}
    with httpx.Client(base_url=two_workers.url, headers=headers, timeout=20) as client:
        with client.stream("POST", "/api/chat", json={"model": "tiny", "messages": USER_HI}) as response:
            lines = response.iter_lines()
            got = [next(lines) for _ in range(6)]  # 5 deltas of 10 tokens each after the role-only one
            assert all('"done":false' in line.replace(" ", "") for line in got)
    deadline = time.monotonic() + 5
    while upstream.open_connections:  # the gateway has closed the upstream stream: the request is over
        assert time.monotonic() < deadline, "the abandoned stream was never closed upstream"
        time.sleep(0.05)
    time.sleep(0.2)
    refused = chat_fresh(two_workers.url, ABANDON_KEY)  # the very next request: no answer of its own counted yet
    assert refused.status_code == 429 and "40 tokens per minute" in refused.json()["error"]


def test_an_abandoned_messages_stream_counts_too(two_workers: RunningGateway, upstream: FakeUpstream) -> None:
    # /v1/messages is translated (Anthropic's events framed by its translator): the same rule.
    upstream.enqueue("/v1/chat/completions", Reply.sse(chat_chunks(["x" * 40] * 30), delay=0.1))
    body = {"model": "tiny", "max_tokens": 500, "stream": True, "messages": USER_HI}
    with httpx.Client(base_url=two_workers.url, headers={"x-api-key": ABANDON_MESSAGES_KEY}, timeout=20) as client:
        with client.stream("POST", "/v1/messages", json=body) as response:
            assert response.status_code == 200
            lines = response.iter_lines()
            deltas = 0
            while deltas < 5:
                line = next(lines)
                deltas += line.startswith("data:") and "content_block_delta" in line  # 10 tokens each
    deadline = time.monotonic() + 5
    while upstream.open_connections:
        assert time.monotonic() < deadline, "the abandoned stream was never closed upstream"
        time.sleep(0.05)
    time.sleep(0.2)
    refused = httpx.post(two_workers.url + "/v1/messages", json={**body, "stream": False},
                         headers={"x-api-key": ABANDON_MESSAGES_KEY}, timeout=10)
    assert refused.status_code == 429 and refused.json()["error"]["type"] == "rate_limit_error"


def test_max_parallel_holds_a_lease_for_the_whole_stream(two_workers: RunningGateway, upstream: FakeUpstream) -> None:
    slow = Reply.sse(chat_chunks(["a", "b", "c", "d", "e"]), delay=0.3)
    upstream.enqueue("/v1/chat/completions", slow, slow)
    streamed: list[str] = []

    def stream() -> None:
        with httpx.Client(base_url=two_workers.url, headers={"Authorization": f"Bearer {PARALLEL_KEY}"}, timeout=20) as client:
            with client.stream("POST", "/api/chat", json={"model": "tiny", "messages": USER_HI}) as response:
                streamed.append(f"{response.status_code}:{len(list(response.iter_lines()))}")

    threads = [threading.Thread(target=stream) for _ in range(2)]
    for thread in threads:
        thread.start()
    deadline = time.monotonic() + 10
    while upstream.open_connections < 2:
        assert time.monotonic() < deadline, "the two slow streams never started"
        time.sleep(0.02)
    refused = chat_fresh(two_workers.url, PARALLEL_KEY)
    assert refused.status_code == 429 and refused.headers["Retry-After"] == "1"
    assert "2 requests in flight" in refused.json()["error"]
    for thread in threads:
        thread.join(20)
    assert streamed == ["200:6", "200:6"]  # 5 deltas, then the done chunk
    assert chat_fresh(two_workers.url, PARALLEL_KEY).status_code == 200  # both leases handed back


def test_a_client_that_hangs_up_mid_stream_hands_its_lease_back(two_workers: RunningGateway, upstream: FakeUpstream) -> None:
    slow = Reply.sse(chat_chunks(["a"] * 40), delay=0.25)
    upstream.enqueue("/v1/chat/completions", slow, slow)
    headers = {"Authorization": f"Bearer {PARALLEL_KEY}"}
    for _ in range(2):
        with httpx.Client(base_url=two_workers.url, headers=headers, timeout=20) as client:
            with client.stream("POST", "/api/chat", json={"model": "tiny", "messages": USER_HI}) as response:
                assert response.status_code == 200
                next(response.iter_lines())  # the first chunk, then the connection is closed
    deadline = time.monotonic() + 5
    while (status := chat_fresh(two_workers.url, PARALLEL_KEY).status_code) == 429:
        assert time.monotonic() < deadline, "the hung-up streams kept their leases"
        time.sleep(0.1)
    assert status == 200
    assert chat_fresh(two_workers.url, PARALLEL_KEY).status_code == 200  # both are free, not one


def test_check_shows_each_keys_limits_and_never_the_key(upstream: FakeUpstream, tmp_path: Path) -> None:
    routes = limited_routes(tmp_path, upstream.url)
    shown = subprocess.run([sys.executable, "-m", "gateway", "check", "--routes", str(routes)],
                           cwd=ROOT, capture_output=True, text=True, timeout=30)
    assert shown.returncode == 0, shown.stderr
    assert "5 requests/min" in shown.stdout and "100 requests/min, 40 tokens/min" in shown.stdout
    assert "2 at once" in shown.stdout
    assert not any(key in shown.stdout for key in (RPM_KEY, TPM_KEY, PARALLEL_KEY, FREE_KEY))
    routes.write_text(routes.read_text().replace("rpm: 5", "rpm: 0"))
    refused = subprocess.run([sys.executable, "-m", "gateway", "check", "--routes", str(routes)],
                             cwd=ROOT, capture_output=True, text=True, timeout=30)
    assert refused.returncode == 1 and "rpm" in refused.stderr


def redis_calls(server: RedisServer) -> int:
    """How many scripts the server has run (INFO commandstats)."""
    stats = subprocess.run(["redis-cli", "-p", str(server.port), "INFO", "commandstats"],
                           capture_output=True, text=True, timeout=10, check=True).stdout
    return sum(int(line.split("calls=")[1].split(",")[0]) for line in stats.splitlines()
               if line.startswith(("cmdstat_evalsha:", "cmdstat_eval:")))


@pytest.fixture
def redis_pair(upstream: FakeUpstream, redis_server: RedisServer, tmp_path: Path) -> Iterator[list[RunningGateway]]:  # noqa: F811
    routes = limited_routes(tmp_path, upstream.url, rpm=10)
    env = {"GATEWAY_REDIS_URL": redis_server.url}
    gateways = [RunningGateway(routes, tmp_path / f"gateway-{n}.log", workers=2, env=env) for n in range(2)]
    yield gateways
    for gateway in gateways:
        gateway.stop()


def test_the_limit_holds_across_two_processes_sharing_one_redis(redis_pair: list[RunningGateway], redis_server: RedisServer) -> None:  # noqa: F811
    before = redis_calls(redis_server)
    for gateway in redis_pair:  # a key without limits asks Redis nothing
        assert [chat_fresh(gateway.url, FREE_KEY).status_code for _ in range(5)] == [200] * 5
    assert redis_calls(redis_server) == before
    statuses = [chat_fresh(redis_pair[n % 2].url, RPM_KEY).status_code for n in range(30)]
    assert statuses.count(200) == 10, statuses  # 4 workers in 2 processes: one count
    assert redis_calls(redis_server) > before


def test_redis_stopped_mid_run_fails_open_loudly_then_limits_again(redis_pair: list[RunningGateway], redis_server: RedisServer) -> None:  # noqa: F811
    url = redis_pair[0].url
    assert [chat_fresh(url, RPM_KEY).status_code for _ in range(11)] == [200] * 10 + [429]
    redis_server.stop()
    assert [chat_fresh(url, RPM_KEY).status_code for _ in range(6)] == [200] * 6  # open: served, unlimited
    log = redis_pair[0].log_text()
    assert '"event":"shared_state_unreachable"' in log and '"failing":"open"' in log
    assert log.count('"event":"shared_state_unreachable"') <= 2  # once per worker, not per request
    redis_server.start()  # empty (no persistence): a fresh minute
    time.sleep(1.2)  # a worker that saw the failure tries again after a second
    statuses = [chat_fresh(url, RPM_KEY).status_code for _ in range(12)]
    assert statuses == [200] * 10 + [429] * 2, statuses
    assert '"event":"shared_state_reachable_again"' in redis_pair[0].log_text()


def test_a_reload_applies_new_limits_to_the_counts_and_leases_already_held(upstream: FakeUpstream, tmp_path: Path) -> None:
    """The counts live under the key's id in the store, not in the map: a reload that changes a
    key's limits applies them to the minute already counted and to the leases already held (a
    stream that began under the old map hands its lease back when it ends)."""
    from tests.client_support import wait_for
    from tests.test_health_metrics import sample, scrape

    routes = limited_routes(tmp_path, upstream.url, rpm=2)
    gateway = RunningGateway(routes, tmp_path / "gateway.log", workers=2)
    try:
        assert [chat_fresh(gateway.url, RPM_KEY).status_code for _ in range(3)] == [200, 200, 429]
        upstream.enqueue("/v1/chat/completions", Reply.sse(chat_chunks(["a"] * 12), delay=0.25))
        held = httpx.Client(base_url=gateway.url, headers={"Authorization": f"Bearer {PARALLEL_KEY}"}, timeout=20)
        with held, held.stream("POST", "/api/chat", json={"model": "tiny", "messages": USER_HI}) as stream:
            lines = stream.iter_lines()  # one iterator: a dropped one closes the response
            next(lines)
            # max_parallel 2 -> 1 while one lease is held; rpm 2 -> 3 with two requests counted.
            routes.write_text(routes.read_text().replace("rpm: 2}", "rpm: 3}").replace("max_parallel: 2", "max_parallel: 1"))
            assert wait_for(lambda: sample(scrape(gateway.url, FREE_KEY), "gateway_route_map_reloads_total", result="ok") == 2, 30)
            assert chat_fresh(gateway.url, PARALLEL_KEY).status_code == 429  # the held lease counts
            assert [chat_fresh(gateway.url, RPM_KEY).status_code for _ in range(2)] == [200, 429]
            assert len(list(lines)) > 5  # the old map's stream ends well
        deadline = time.monotonic() + 5
        while (status := chat_fresh(gateway.url, PARALLEL_KEY).status_code) == 429:
            assert time.monotonic() < deadline, "the stream begun before the reload kept its lease"
            time.sleep(0.1)
        assert status == 200
    finally:
        gateway.stop()
