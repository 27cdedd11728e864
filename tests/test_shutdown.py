"""Graceful shutdown: SIGTERM stops accepting, in-flight streams finish, then the workers close.

Granian stops accepting connections on SIGTERM and waits for requests in flight; the gateway
ends whatever is still running when `GATEWAY_SHUTDOWN_GRACE` runs out (a stream with one last
`{"error": ...}` line, a request without a response yet with 503), and Granian kills a worker
that is still alive a few seconds after that.
"""

from __future__ import annotations

import json
import signal
import threading
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

import anyio
import httpx
import pytest

from gateway.errors import SHUTTING_DOWN
from gateway.http.guard import Drain, RequestGuard
from gateway.logs import RequestRecord
from tests.client_support import wait_for
from tests.conftest import RunningGateway
from tests.fake_upstream import FakeUpstream, Reply, chat_chunks

CHAT = "/v1/chat/completions"
USER_HI = [{"role": "user", "content": "hi"}]
EXIT_BOUND = 60  # seconds: only to detect a hang


@pytest.fixture
def own_upstream() -> Iterator[FakeUpstream]:
    server = FakeUpstream().start()
    yield server
    server.stop()


def start_gateway(upstream: FakeUpstream, folder: Path, grace: float, workers: int = 1) -> RunningGateway:
    routes = folder / "routes.yaml"
    routes.write_text(f"""
upstreams:
  fake: {{base_url: "{upstream.url}", api_key: "${{TEST_UPSTREAM_KEY}}", max_retries: 0, timeout: 120, cooldown: false}}
models:
  - {{name: tiny, upstream: fake, model: up-model}}
""")
    return RunningGateway(routes, folder / "gateway.log", workers=workers, env={"GATEWAY_SHUTDOWN_GRACE": str(grace)})


def read_stream(url: str, started: threading.Event, stream: bool = True) -> tuple[int, list[dict[str, Any]]]:
    """A client reading a whole response; `started` is set once its first line (or body) is in."""
    body = {"model": "tiny", "messages": USER_HI, "stream": stream}
    with httpx.stream("POST", url + "/api/chat", json=body, timeout=120) as response:
        lines = []
        for line in response.iter_lines():
            lines.append(json.loads(line))
            started.set()
        started.set()
        return response.status_code, lines


def sigterm(gateway: RunningGateway) -> None:
    gateway.process.send_signal(signal.SIGTERM)


@pytest.mark.parametrize("workers", [pytest.param(1, id="one-worker"), pytest.param(2, id="two-workers")])
def test_in_flight_streams_finish_with_done_after_sigterm(own_upstream: FakeUpstream, tmp_path: Path, workers: int) -> None:
    gateway = start_gateway(own_upstream, tmp_path, grace=60, workers=workers)
    count = 6
    own_upstream.enqueue(CHAT, *[Reply.sse(chat_chunks(["tick"] * 25), delay=0.2) for _ in range(count)])
    try:
        with ThreadPoolExecutor(count) as pool:
            started = [threading.Event() for _ in range(count)]
            clients: list[Future[tuple[int, list[dict[str, Any]]]]] = [
                pool.submit(read_stream, gateway.url, event) for event in started
            ]
            assert all(event.wait(30) for event in started)
            sigterm(gateway)
            assert wait_for(lambda: _refused(gateway.url)), "still accepting connections after SIGTERM"
            results = [client.result(timeout=EXIT_BOUND) for client in clients]
        assert gateway.process.wait(EXIT_BOUND) == 0
    finally:
        gateway.stop()
    for status, lines in results:
        assert status == 200
        assert [line["message"]["content"] for line in lines[:-1]] == ["tick"] * 25
        assert lines[-1]["done"] is True and sum(bool(line.get("done")) for line in lines) == 1
    assert own_upstream.in_flight == 0


def test_past_the_grace_period_requests_end_cleanly(own_upstream: FakeUpstream, tmp_path: Path) -> None:
    """A stream gets a last error line (no `done`), a request still waiting for its upstream a 503."""
    gateway = start_gateway(own_upstream, tmp_path, grace=1)
    own_upstream.enqueue(CHAT, Reply.sse(chat_chunks(["tick"] * 600), delay=0.1), Reply(stall=600))
    try:
        with ThreadPoolExecutor(2) as pool:
            stream_started, waiting_started = threading.Event(), threading.Event()
            stream = pool.submit(read_stream, gateway.url, stream_started)
            assert stream_started.wait(30)
            waiting = pool.submit(read_stream, gateway.url, waiting_started, False)
            assert wait_for(lambda: own_upstream.in_flight == 2)
            sigterm(gateway)
            stream_status, stream_lines = stream.result(timeout=EXIT_BOUND)
            waiting_status, waiting_lines = waiting.result(timeout=EXIT_BOUND)
        assert gateway.process.wait(EXIT_BOUND) == 0
    finally:
        gateway.stop()
    assert stream_status == 200
    assert stream_lines[-1] == {"error": SHUTTING_DOWN}
    assert not any(line.get("done") for line in stream_lines) and len(stream_lines) < 600
    assert (waiting_status, waiting_lines) == (503, [{"error": SHUTTING_DOWN}])
    assert wait_for(lambda: own_upstream.in_flight == 0)


def test_a_request_arriving_while_draining_gets_503_and_close() -> None:
    """Granian closes idle connections on SIGTERM; a request that still reaches the app is refused."""

    async def app(scope: Any, receive: Any, send: Any) -> None:
        raise AssertionError("the app must not be called while draining")

    async def scenario() -> list[dict[str, Any]]:
        drain = Drain(grace=5)
        drain.closing = True
        sent: list[dict[str, Any]] = []

        async def send(message: dict[str, Any]) -> None:
            sent.append(message)

        async def receive() -> dict[str, Any]:
            return {"type": "http.request", "body": b"", "more_body": False}

        scope = {"type": "http", "method": "GET", "path": "/api/tags", "headers": []}
        record = RequestRecord("r", "GET", "/api/tags")
        await RequestGuard(app, drain=drain, max_body_bytes=1024).serve(scope, receive, send, record)
        return sent

    start, body = anyio.run(scenario)
    assert start["status"] == 503 and (b"connection", b"close") in start["headers"]
    assert json.loads(body["body"]) == {"error": SHUTTING_DOWN}


def _refused(url: str) -> bool:
    try:
        httpx.get(url + "/api/version", timeout=5)
    except httpx.ConnectError:
        return True
    except httpx.HTTPError:
        return False
    return False
