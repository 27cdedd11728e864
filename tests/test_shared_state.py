"""The `SharedState` contract (gateway/upstream/sharedstate.py), the same tests against both
stores: `RedisState` over a real `redis-server`, `LocalState` over a state directory. Several
"workers" are several store instances (their own connections) or several processes
(tests/shared_state_worker.py); a killed process's lease is freed after its ttl; Redis stopped
mid-run fails open, with one warning per outage."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from structlog.testing import capture_logs

from gateway.routing.loader import load_route_map
from gateway.upstream.clients import UpstreamClients
from gateway.upstream.localstate import LocalState
from gateway.upstream.redisstate import RedisState
from gateway.upstream.sharedstate import SharedState
from tests.conftest import ROOT, RunningGateway, routes_yaml
from tests.fake_upstream import FakeUpstream
from tests.redis_support import RedisServer, redis_server  # noqa: F401 - the fixture

Opener = Callable[[], SharedState]


@pytest.fixture(params=["redis", "local"])
def spec(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """Where the store lives: a redis:// URL, or a state directory."""
    if request.param == "redis":
        yield request.getfixturevalue("redis_server").url
    else:
        state_dir = tmp_path / "state"
        state_dir.mkdir()
        yield str(state_dir)


def opener(spec: str) -> Opener:
    return lambda: RedisState(spec) if spec.startswith("redis://") else LocalState(Path(spec))


def run(coroutine_factory: Callable[[], object]) -> None:
    asyncio.run(coroutine_factory())  # type: ignore[arg-type]


def test_a_window_takes_up_to_its_limit_then_says_when_it_fits_again(spec: str) -> None:
    async def scenario() -> None:
        first, second = opener(spec)(), opener(spec)()
        assert [await first.take("w", 1, 3, 60) for _ in range(2)] == [None, None]
        assert await second.take("w", 1, 3, 60) is None
        waited = await first.take("w", 1, 3, 60)
        assert waited is not None and 59 <= waited <= 62  # the first request leaves the window after a minute
        assert await second.take("w", 0, 3, 60) is not None  # full: a take of 0 says so
        assert await second.take("other", 0, 3, 60) is None
        for store in (first, second):
            await store.close()

    run(scenario)


def test_a_window_forgets_what_is_older_than_it(spec: str) -> None:
    async def scenario() -> None:
        store = opener(spec)()
        assert await store.take("short", 2, 2, 0.6) is None
        waited = await store.take("short", 1, 2, 0.6)
        assert waited is not None and 0.5 <= waited <= 0.65
        await asyncio.sleep(waited)
        assert await store.take("short", 1, 2, 0.6) is None
        await store.close()

    run(scenario)


def test_add_counts_unconditionally_and_a_take_of_zero_sees_it(spec: str) -> None:
    async def scenario() -> None:
        store = opener(spec)()
        assert await store.take("tokens", 0, 1000, 60) is None
        await store.add("tokens", 700, 60)
        assert await store.take("tokens", 0, 1000, 60) is None  # 700 of 1000: not full yet
        await store.add("tokens", 700, 60)  # over the limit: added all the same
        waited = await store.take("tokens", 0, 1000, 60)
        assert waited is not None and waited > 59
        assert await store.take("tokens", 1, 2000, 60) is None  # another limit on the same count
        await store.close()

    run(scenario)


def test_leases_up_to_the_limit_across_stores_and_a_release_frees_one(spec: str) -> None:
    async def scenario() -> None:
        first, second = opener(spec)(), opener(spec)()
        held = [await first.acquire("l", 2, 5), await second.acquire("l", 2, 5)]
        assert all(lease is not None for lease in held)
        assert await first.acquire("l", 2, 5) is None
        assert await second.acquire("l", 2, 5) is None
        lease = held[0]
        assert lease is not None and lease.key == "l"
        await first.release(lease)
        await first.release(lease)  # a second release frees nothing more
        again = await second.acquire("l", 2, 5)
        assert again is not None
        assert await first.acquire("l", 2, 5) is None
        assert await first.acquire("l", 3, 5) is not None  # the limit is the caller's
        for store in (first, second):
            await store.close()

    run(scenario)


def test_a_held_lease_is_renewed_past_its_ttl_and_handed_back_at_close(spec: str) -> None:
    async def scenario() -> None:
        holder, other = opener(spec)(), opener(spec)()
        assert await holder.acquire("renewed", 1, 0.3) is not None
        await asyncio.sleep(1.0)  # three ttls: alive only because the holder renews it
        assert await other.acquire("renewed", 1, 0.3) is None
        await holder.close()
        assert await other.acquire("renewed", 1, 0.3) is not None
        await other.close()

    run(scenario)


def test_a_cooldown_after_failures_in_a_row_then_one_probe(spec: str) -> None:
    async def scenario() -> None:
        first, second = opener(spec)(), opener(spec)()
        await first.failed("up", 3, 0.5)
        await second.failed("up", 3, 0.5)
        assert await first.cooling("up", 5) == 0.0
        await first.succeeded("up")  # the row ends: two more failures do not cool it
        await first.failed("up", 3, 0.5)
        await second.failed("up", 3, 0.5)
        assert await second.cooling("up", 5) == 0.0
        await second.failed("up", 3, 0.5)
        left = await first.cooling("up", 5)
        assert 0.3 < left <= 0.5
        await first.failed("up", 3, 0.5)  # a failure while cooling (in flight before) does not extend it
        await asyncio.sleep(left + 0.05)
        assert await second.cooling("up", 5) == 0.0  # the probe
        waiting = await first.cooling("up", 5)
        assert 4 < waiting <= 5  # the others wait for the probe (at most its ttl)
        await second.failed("up", 3, 0.5)  # the probe failed: cooled again at once
        again = await first.cooling("up", 5)
        assert 0.3 < again <= 0.5
        await asyncio.sleep(again + 0.05)
        assert await first.cooling("up", 5) == 0.0
        await first.succeeded("up")
        assert [await store.cooling("up", 5) for store in (first, second)] == [0.0, 0.0]
        for store in (first, second):
            await store.close()

    run(scenario)


def test_a_probe_that_never_reports_is_handed_on_after_its_ttl(spec: str) -> None:
    async def scenario() -> None:
        store = opener(spec)()
        await store.failed("up", 1, 0.2)
        await asyncio.sleep(0.25)
        assert await store.cooling("up", 0.3) == 0.0
        assert await store.cooling("up", 0.3) > 0
        await asyncio.sleep(0.35)
        assert await store.cooling("up", 0.3) == 0.0
        await store.close()

    run(scenario)


def workers(spec: str, count: int, *args: str) -> list[subprocess.Popen[str]]:
    at = time.time() + 2.0  # every process started and connected before they go
    return [
        subprocess.Popen([sys.executable, "-m", "tests.shared_state_worker", spec, str(at), *args],
                         cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for _ in range(count)
    ]


def results(processes: list[subprocess.Popen[str]]) -> list[object]:
    answers = []
    for process in processes:
        out, err = process.communicate(timeout=30)
        assert process.returncode == 0, err
        answers.append(json.loads(out.splitlines()[0]))
    return answers


def test_two_processes_share_a_window_and_a_lease_limit(spec: str) -> None:
    takes = results(workers(spec, 2, "take", "rpm", "15", "10", "60"))
    assert sum(takes) == 10, takes  # type: ignore[arg-type]  # per process it would be 20
    held = results(workers(spec, 2, "hold", "parallel", "5", "3", "0.3", "1.5"))
    assert sum(held) == 3  # type: ignore[arg-type]


def test_workers_whose_first_operations_come_together_all_reach_a_fresh_state_file(tmp_path: Path) -> None:
    # Six processes open one new file at the same instant: each must wait its turn to switch it to
    # WAL, not count an outage (fail open: its takes would not be counted at all).
    for attempt in range(3):
        state_dir = tmp_path / f"state-{attempt}"
        state_dir.mkdir()
        takes = results(workers(str(state_dir), 6, "take", "rpm", "3", "100", "60"))
        assert takes == [3] * 6, takes


def test_a_killed_process_frees_its_lease_after_its_ttl(spec: str) -> None:
    (process,) = workers(spec, 1, "hold-forever", "crash", "1", "1.0")
    assert process.stdout is not None
    assert json.loads(process.stdout.readline()) == "held"

    async def scenario() -> None:
        store = opener(spec)()
        await asyncio.sleep(2.0)  # two ttls: still held, renewed by its live holder
        assert await store.acquire("crash", 1, 1.0) is None
        os.kill(process.pid, signal.SIGKILL)
        process.wait(5)
        killed = time.monotonic()
        assert await store.acquire("crash", 1, 1.0) is None  # at most a ttl, at least 2/3 of one, to go
        while (lease := await store.acquire("crash", 1, 1.0)) is None:
            assert time.monotonic() - killed < 1.5, "the dead process's lease outlived its ttl"
            await asyncio.sleep(0.05)
        await store.close()

    try:
        run(scenario)
    finally:
        process.kill()
        process.communicate(timeout=5)  # reaped, its pipes closed


def test_exactly_one_of_several_concurrent_processes_gets_the_probe(spec: str) -> None:
    async def cool() -> None:
        store = opener(spec)()
        await store.failed("probe", 1, 1.0)  # cooled for 1 s: the workers below ask 2 s from now
        await store.close()

    run(cool)
    answers = results(workers(spec, 5, "cooling", "probe", "10"))
    assert answers.count(0.0) == 1, answers
    assert all(0 < answer <= 10 for answer in answers if answer != 0.0)  # type: ignore[operator]


def test_redis_stopped_fails_open_with_one_warning_then_recovers(redis_server: RedisServer) -> None:  # noqa: F811
    async def scenario() -> None:
        store = RedisState(redis_server.url, timeout=0.5)
        assert await store.take("w", 1, 1, 60) is None
        assert await store.take("w", 1, 1, 60) is not None
        assert await store.acquire("l", 1, 5) is not None
        redis_server.stop()
        with capture_logs() as logs:
            started = time.monotonic()
            for _ in range(50):  # open: nothing refused, the lease unbacked
                assert await store.take("w", 1, 1, 60) is None
                lease = await store.acquire("l", 1, 5)
                assert lease is not None
                await store.release(lease)
                assert await store.cooling("c", 5) == 0.0
            assert time.monotonic() - started < 1.0  # one failed call, then not tried for a second
        warnings = [entry for entry in logs if entry["event"] == "shared_state_unreachable"]
        assert len(warnings) == 1 and warnings[0]["failing"] == "open", logs
        redis_server.start()  # empty: it kept nothing (no persistence)
        await asyncio.sleep(1.1)
        with capture_logs() as logs:
            assert await store.take("w", 1, 1, 60) is None
            assert await store.take("w", 1, 1, 60) is not None
        assert [entry["event"] for entry in logs] == ["shared_state_reachable_again"]
        await store.close()

    run(scenario)


def test_the_state_directory_store_is_shared_by_files_not_memory(tmp_path: Path) -> None:
    async def scenario() -> None:
        first, second = LocalState(tmp_path), LocalState(tmp_path)
        assert await first.take("w", 1, 1, 60) is None
        assert await second.take("w", 1, 1, 60) is not None
        alone = LocalState(None)  # no state directory: this process's memory only
        assert await alone.take("w", 1, 1, 60) is None
        for store in (first, second, alone):
            await store.close()
        assert (tmp_path / "shared-state.sqlite3").exists()

    run(scenario)


def test_a_state_directory_whose_database_cannot_be_opened_fails_open(tmp_path: Path) -> None:
    """The database opens at the first operation (a gateway without per-key limits never opens it):
    one that cannot be opened is an outage like any other, answered open and said once."""
    async def scenario() -> None:
        store = LocalState(tmp_path / "missing")  # no such directory: sqlite3 cannot create the file
        with capture_logs() as logs:
            for _ in range(3):
                assert await store.take("w", 1, 1, 60) is None  # open: a limit of 1 refuses nothing
        await store.close()
        assert [entry["event"] for entry in logs] == ["shared_state_unreachable"]
        assert not (tmp_path / "missing").exists()

    run(scenario)


def test_serve_makes_a_state_directory_for_the_run_and_removes_it(upstream: FakeUpstream, tmp_path: Path) -> None:
    routes = tmp_path / "routes.yaml"
    routes.write_text(routes_yaml(upstream.url))
    gateway = RunningGateway(routes, tmp_path / "gateway.log", workers=2)
    try:
        environ = Path(f"/proc/{gateway.process.pid}/environ").read_bytes().split(b"\0")
        state_dir = Path(next(entry for entry in environ if entry.startswith(b"GATEWAY_STATE_DIR=")).split(b"=", 1)[1].decode())
        assert state_dir.is_dir()  # the workers open its database at their first operation (localstate.py)
    finally:
        gateway.stop()
    assert not state_dir.exists()


def test_a_reloaded_client_set_keeps_the_workers_store(upstream: FakeUpstream, tmp_path: Path) -> None:
    routes = tmp_path / "routes.yaml"
    routes.write_text(routes_yaml(upstream.url))
    route_map = load_route_map(routes)

    async def scenario() -> None:
        store = LocalState(tmp_path)
        first = UpstreamClients(route_map, shared=store)
        reloaded = UpstreamClients(load_route_map(routes), previous=first)
        assert first.shared is store and reloaded.shared is store
        await store.close()

    run(scenario)


def test_every_redis_key_has_an_expiry_no_longer_than_what_it_holds(redis_server: RedisServer) -> None:  # noqa: F811
    """A replica that crashes leaves nothing in Redis for longer than it means: after each kind
    of write, every `ollama-gateway:` key has an expiry, bounded by its window, its lease's ttl
    or its cooldown plus the margin."""
    import redis as sync_redis

    from gateway.upstream.sharedstate import COOLDOWN_MARGIN

    async def scenario() -> None:
        store = RedisState(redis_server.url)
        assert await store.take("win", 1, 5, 60) is None
        await store.add("tok", 50, 60)
        assert await store.acquire("lease", 2, 5) is not None
        for _ in range(2):
            await store.failed("cool", 2, 3)
        assert await store.cooling("cool", 3) > 0
        await store.failed("row", 3, 3)  # a row of failures not yet a cooldown
        client = sync_redis.Redis.from_url(redis_server.url)
        keys = sorted(key.decode() for key in client.keys("*"))
        assert keys == [f"ollama-gateway:{name}" for name in ("cool", "lease", "row", "tok", "win")]
        ttls = {key.removeprefix("ollama-gateway:"): client.pttl(key) / 1000 for key in keys}
        assert all(ttl > 0 for ttl in ttls.values()), ttls
        assert ttls["win"] <= 61 and ttls["tok"] <= 61  # the window and one slot
        assert ttls["lease"] <= 5
        assert ttls["cool"] <= 3 + COOLDOWN_MARGIN and ttls["row"] <= 3 + COOLDOWN_MARGIN
        client.close()
        await store.close()

    run(scenario)


def test_a_redis_that_does_not_answer_costs_its_timeout_once_then_nothing_for_a_second() -> None:
    """A server that takes the connection and never answers (a host gone from the network, a
    stuck Redis): the first call waits `timeout`, fails open, and the calls of the next second
    are answered open at once (README: Redis unreachable)."""
    import socket

    silent = socket.socket()
    silent.bind(("127.0.0.1", 0))
    silent.listen(16)  # the kernel completes the handshakes; nobody ever reads or answers
    port = silent.getsockname()[1]

    async def scenario() -> None:
        store = RedisState(f"redis://127.0.0.1:{port}/0", timeout=0.3)
        with capture_logs() as logs:
            started = time.monotonic()
            assert await store.take("w", 1, 1, 60) is None
            first = time.monotonic() - started
            started = time.monotonic()
            for _ in range(20):
                assert await store.take("w", 1, 1, 60) is None
                assert await store.cooling("c", 5) == 0.0
            rest = time.monotonic() - started
        assert 0.25 <= first < 1.0 and rest < 0.1, (first, rest)
        assert [entry["event"] for entry in logs] == ["shared_state_unreachable"]
        await store.close()

    try:
        run(scenario)
    finally:
        silent.close()


def test_the_state_directory_store_does_not_follow_the_wall_clock(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The workers of one machine share its monotonic clock; a wall clock stepped back an hour
    (NTP, a VM resumed) must not keep a minute's counts, or a dead worker's lease, for an hour."""
    state_dir = tmp_path / "state"
    state_dir.mkdir()

    async def scenario() -> None:
        store = LocalState(state_dir)
        assert await store.take("w", 1, 1, 0.5) is None
        real = time.time_ns()
        monkeypatch.setattr(time, "time_ns", lambda: real - 3600 * 10**9)
        waited = await store.take("w", 1, 1, 0.5)
        assert waited is not None and waited <= 0.6
        await asyncio.sleep(waited)
        assert await store.take("w", 1, 1, 0.5) is None
        await store.close()

    run(scenario)


def test_redis_entries_from_a_clock_stepped_back_do_not_count_for_the_step(redis_server: RedisServer) -> None:  # noqa: F811
    """What was written while the Redis server's clock ran an hour ahead (then stepped back:
    NTP, a VM resumed): a window's slot past the current one and a lease expiring later than
    any renewal could have set it are dropped, not counted for an hour."""
    import redis as sync_redis

    client = sync_redis.Redis.from_url(redis_server.url)
    seconds, micros = client.time()
    now_ms = seconds * 1000 + micros // 1000
    ahead = now_ms + 3600 * 1000
    client.hset("ollama-gateway:w", str(ahead // 1000), 5)  # slots of one second (60 s / 60)
    client.pexpire("ollama-gateway:w", 3700 * 1000)
    client.zadd("ollama-gateway:l", {"ahead": ahead + 5000})  # a lease of ttl 5 s, an hour ahead
    client.pexpire("ollama-gateway:l", 3700 * 1000)

    async def scenario() -> None:
        store = RedisState(redis_server.url)
        assert await store.take("w", 1, 5, 60) is None  # the five counted "in the future" are gone
        assert await store.acquire("l", 1, 5) is not None
        await store.close()

    run(scenario)
    client.close()
