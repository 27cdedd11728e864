"""Shared fixtures: a fake upstream on loopback and the gateway running for real under Granian."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.fake_upstream import FakeUpstream

ROOT = Path(__file__).resolve().parent.parent
API_KEY = "sk-test-marker-0123456789abcdef"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def closed_port() -> int:
    """A loopback port nothing listens on (connections are refused)."""
    return free_port()


def routes_yaml(upstream_url: str, extra_models: str = "") -> str:
    # Cooldowns off: these tests script failures of one upstream request after request, and
    # each expects its own request's failure, not the skip that 3 in a row would start
    # (cooldowns have their own tests, tests/test_targets.py).
    return f"""
upstreams:
  fake:
    base_url: {upstream_url}
    api_key: ${{TEST_UPSTREAM_KEY}}
    max_retries: 0
    timeout: 30
    cooldown: false
  keyless:
    base_url: {upstream_url}
    api_key: ${{TEST_MISSING_KEY}}
    max_retries: 0
    cooldown: false
  dead:
    base_url: http://127.0.0.1:{closed_port()}/v1
    max_retries: 0
    cooldown: false
models:
  - name: tiny
    upstream: fake
    model: up-model
    capabilities: [completion, tools]
    context_length: 4096
  - name: embedder
    upstream: fake
    model: up-embed
    capabilities: [embedding]
  - name: nokey
    upstream: keyless
  - name: deadmodel
    upstream: dead
{extra_models}
  - name: "fake/*"
    upstream: fake
"""


class RunningGateway:
    """An `ollama-gateway serve` subprocess; `url` is its base URL, `log` its combined output file."""

    def __init__(
        self, routes: Path, log: Path, workers: int = 1, env: dict[str, str] | None = None, log_level: str = "info"
    ) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = log
        environ = {**os.environ, "TEST_UPSTREAM_KEY": API_KEY, **(env or {})}
        environ.pop("TEST_MISSING_KEY", None)
        self._log_file = log.open("wb")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "gateway", "serve", "--routes", str(routes), "--port", str(self.port),
             "--workers", str(workers), "--log-format", "json", "--log-level", log_level],
            cwd=ROOT, env=environ, stdout=self._log_file, stderr=subprocess.STDOUT,
        )
        # With several workers the port answers as soon as the first is up: wait for all of them
        # (each logs `started`, at info level), so a test never races a worker still starting.
        self._wait_ready(workers if log_level in ("debug", "info") else 1)

    def _wait_ready(self, workers: int) -> None:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"gateway exited: {self.log.read_text()}")
            try:
                if httpx.get(self.url + "/", timeout=1).status_code == 200 and self._started_workers() >= workers:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
        raise RuntimeError(f"gateway did not start: {self.log.read_text()}")

    def _started_workers(self) -> int:
        return sum('"event":"started"' in line for line in self.log.read_text(errors="replace").splitlines())

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(15)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(5)
        self._log_file.close()

    def log_text(self) -> str:
        self._log_file.flush()
        return self.log.read_text(errors="replace")

    def log_text_after(self, request_id: str, seconds: float = 10.0) -> str:
        """The log once the request's summary line is in it: it is written after the response's
        last byte, so a client can see the answer before the line exists."""
        marker = f'"request_id":"{request_id}"'
        deadline = time.monotonic() + seconds
        while True:
            text = self.log_text()
            if any(marker in line and '"event":"request"' in line for line in text.splitlines()):
                return text
            if time.monotonic() > deadline:
                return text
            time.sleep(0.02)


@pytest.fixture(scope="session")
def upstream() -> Iterator[FakeUpstream]:
    server = FakeUpstream().start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def gateway(upstream: FakeUpstream, tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningGateway]:
    folder = tmp_path_factory.mktemp("gateway")
    routes = folder / "routes.yaml"
    routes.write_text(routes_yaml(upstream.url))
    running = RunningGateway(routes, folder / "gateway.log")
    yield running
    running.stop()


@pytest.fixture(autouse=True)
def _fresh_upstream(request: pytest.FixtureRequest) -> Iterator[None]:
    if "upstream" in request.fixturenames:
        upstream: FakeUpstream = request.getfixturevalue("upstream")
        upstream.reset()
    yield
