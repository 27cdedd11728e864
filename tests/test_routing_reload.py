"""Hot reload of routes.yaml, end to end: file edits and SIGHUP reach every Granian worker, an
invalid file leaves the old map in force, and a request in flight finishes on its own map."""

from __future__ import annotations

import json
import os
import signal
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.conftest import RunningGateway
from tests.fake_upstream import FakeUpstream, Reply, chat_chunks

CHAT = "/v1/chat/completions"
USER_HI = [{"role": "user", "content": "hi"}]
WORKERS = 2


@pytest.fixture(scope="module")
def first() -> Iterator[FakeUpstream]:
    server = FakeUpstream().start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def second() -> Iterator[FakeUpstream]:
    server = FakeUpstream().start()
    yield server
    server.stop()


@pytest.fixture(autouse=True)
def _reset(first: FakeUpstream, second: FakeUpstream) -> None:
    first.reset()
    second.reset()


def routes_to(upstream: FakeUpstream, name: str = "one", extra: str = "") -> str:
    return f"""
upstreams:
  {name}: {{base_url: "{upstream.url}", max_retries: 0, cooldown: false}}
models:
  - {{name: m, upstream: {name}, model: model-of-{name}}}
{extra}"""


def start(tmp_path: Path, text: str, routes: Path | None = None) -> RunningGateway:
    routes = routes or tmp_path / "routes.yaml"
    routes.write_text(text)
    return RunningGateway(routes, tmp_path / "gateway.log", workers=WORKERS)


@pytest.fixture
def running(request: pytest.FixtureRequest) -> Iterator[list[RunningGateway]]:
    started: list[RunningGateway] = []
    yield started
    for gateway in started:
        gateway.stop()


def events(gateway: RunningGateway, name: str) -> list[dict[str, Any]]:
    found = []
    for raw in gateway.log_text().splitlines():
        if raw.startswith("{") and f'"{name}"' in raw:
            line = json.loads(raw)
            if line.get("event") == name:
                found.append(line)
    return found


def wait_for(condition: Callable[[], bool], what: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def wait_for_workers(gateway: RunningGateway, event: str, count: int, **fields: Any) -> list[dict[str, Any]]:
    """Wait until `count` lines of `event` (with these fields), one per worker, are logged."""

    def matching() -> list[dict[str, Any]]:
        return [line for line in events(gateway, event) if all(line.get(k) == v for k, v in fields.items())]

    wait_for(lambda: len({line["worker_pid"] for line in matching()}) >= WORKERS and len(matching()) >= count,
             f"{count} {event} lines")
    return matching()


def chat_model(gateway: RunningGateway) -> str:
    """The upstream model id that served a request to `m`."""
    response = httpx.post(gateway.url + "/api/chat", json={"model": "m", "messages": USER_HI, "stream": False}, timeout=30)
    assert response.status_code == 200, response.text
    return str(response.json()["message"]["content"])


def served_by(gateway: RunningGateway, first: FakeUpstream, second: FakeUpstream, requests: int = 12) -> set[str]:
    first.reset()
    second.reset()
    for _ in range(requests):
        chat_model(gateway)
    return {name for name, server in (("first", first), ("second", second)) if server.received}


def test_editing_the_file_takes_effect_in_every_worker(
    tmp_path: Path, running: list[RunningGateway], first: FakeUpstream, second: FakeUpstream
) -> None:
    gateway = start(tmp_path, routes_to(first))
    running.append(gateway)
    assert served_by(gateway, first, second) == {"first"}
    (tmp_path / "routes.yaml").write_text(routes_to(second, "two", "  - {name: added, upstream: two}\n"))
    wait_for_workers(gateway, "routes_reloaded", WORKERS, reason="file")
    assert served_by(gateway, first, second) == {"second"}
    assert second.last(CHAT).json["model"] == "model-of-two"
    names = {m["name"] for m in httpx.get(gateway.url + "/api/tags").json()["models"]}
    assert names == {"m:latest", "added:latest"}


def test_an_invalid_file_is_rejected_and_the_old_map_stays(
    tmp_path: Path, running: list[RunningGateway], first: FakeUpstream, second: FakeUpstream
) -> None:
    gateway = start(tmp_path, routes_to(first))
    running.append(gateway)
    routes = tmp_path / "routes.yaml"
    routes.write_text("upstreams: [this is not\n")
    rejected = wait_for_workers(gateway, "routes_reload_rejected", WORKERS)
    assert "not valid YAML" in rejected[0]["error"] and rejected[0]["level"] == "error"
    assert served_by(gateway, first, second) == {"first"}
    routes.write_text(routes_to(second).replace("upstream: one", "upstream: nowhere"))
    wait_for(lambda: len(events(gateway, "routes_reload_rejected")) >= 2 * WORKERS, "the second rejection")
    assert "'nowhere' is not defined" in events(gateway, "routes_reload_rejected")[-1]["error"]
    assert served_by(gateway, first, second) == {"first"}
    routes.write_text(routes_to(second, "two"))
    wait_for_workers(gateway, "routes_reloaded", WORKERS)
    assert served_by(gateway, first, second) == {"second"}


def test_sighup_reloads_every_worker_without_respawning(
    tmp_path: Path, running: list[RunningGateway], first: FakeUpstream, second: FakeUpstream
) -> None:
    """The watched path is a symlink to a file elsewhere, so only SIGHUP can tell the workers."""
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    real = elsewhere / "real.yaml"
    real.write_text(routes_to(first))
    watched = tmp_path / "conf"
    watched.mkdir()
    (watched / "routes.yaml").symlink_to(real)
    gateway = RunningGateway(watched / "routes.yaml", tmp_path / "gateway.log", workers=WORKERS)
    running.append(gateway)
    assert served_by(gateway, first, second) == {"first"}
    real.write_text(routes_to(second, "two"))
    os.kill(gateway.process.pid, signal.SIGHUP)
    wait_for_workers(gateway, "routes_reloaded", WORKERS, reason="sighup")
    assert served_by(gateway, first, second) == {"second"}
    assert "respawning" not in gateway.log_text().lower()
    assert gateway.process.poll() is None


def test_a_stream_in_flight_finishes_on_the_map_it_started_with(
    tmp_path: Path, running: list[RunningGateway], first: FakeUpstream, second: FakeUpstream
) -> None:
    gateway = start(tmp_path, routes_to(first))
    running.append(gateway)
    pieces = [f"p{i} " for i in range(15)]
    first.enqueue(CHAT, Reply.sse(chat_chunks(pieces), delay=0.15))
    with httpx.Client(timeout=30) as client, client.stream(
        "POST", gateway.url + "/api/chat", json={"model": "m", "messages": USER_HI}
    ) as stream:
        lines = stream.iter_lines()
        received = [json.loads(next(lines))]
        # The upstream it runs on is gone from the new map: its client must stay open until the end.
        (tmp_path / "routes.yaml").write_text(routes_to(second, "two"))
        wait_for_workers(gateway, "routes_reloaded", WORKERS, reason="file")
        fresh = httpx.post(gateway.url + "/api/chat", json={"model": "m", "messages": USER_HI, "stream": False}, timeout=30)
        assert fresh.status_code == 200 and second.last(CHAT).json["model"] == "model-of-two"
        received += [json.loads(line) for line in lines]
    assert "".join(line["message"]["content"] for line in received) == "".join(pieces)
    assert received[-1]["done"] is True and not any("error" in line for line in received)
    assert [r.json["model"] for r in first.received if r.path == CHAT] == ["model-of-one"]
    wait_for(lambda: first.connections == 0, "the retired upstream client to close its connections")
