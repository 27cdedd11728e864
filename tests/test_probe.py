"""`ollama-gateway check --probe`: every upstream's GET /models, with its key and its timeout."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import API_KEY, ROOT, closed_port
from tests.fake_upstream import FakeUpstream, Reply


@pytest.fixture
def own_upstream() -> Iterator[FakeUpstream]:
    server = FakeUpstream().start()
    yield server
    server.stop()


def check(routes: Path, *flags: str) -> subprocess.CompletedProcess[str]:
    environ = {**os.environ, "TEST_UPSTREAM_KEY": API_KEY}
    environ.pop("TEST_MISSING_KEY", None)
    return subprocess.run(
        [sys.executable, "-m", "gateway", "check", "--routes", str(routes), *flags],
        capture_output=True, text=True, cwd=ROOT, env=environ, timeout=60,
    )


def probe_rows(stdout: str) -> dict[str, str]:
    """UPSTREAM -> the rest of its row in the probe table."""
    table = stdout.split("UPSTREAM  ")[-1].splitlines()[1:]
    return {row.split()[0]: row for row in table if row.strip()}


def write_routes(folder: Path, upstreams: str) -> Path:
    routes = folder / "routes.yaml"
    names = re.findall(r"^  (\w+):", upstreams, flags=re.MULTILINE)
    models = "\n".join(f"  - {{name: m-{name}, upstream: {name}}}" for name in names)
    routes.write_text(f"upstreams:\n{upstreams}\nmodels:\n{models}\n")
    return routes


def test_probe_passes_when_every_upstream_answers(own_upstream: FakeUpstream, tmp_path: Path) -> None:
    routes = write_routes(tmp_path, f"""
  fake:
    base_url: {own_upstream.url}
    api_key: ${{TEST_UPSTREAM_KEY}}
  second:
    base_url: {own_upstream.url}
    api_key: ${{TEST_UPSTREAM_KEY}}
""")
    assert check(routes).returncode == 0
    assert not own_upstream.received, "check without --probe calls nothing"
    result = check(routes, "--probe")
    assert result.returncode == 0, result.stderr
    rows = probe_rows(result.stdout)
    assert set(rows) == {"fake", "second"}
    for row in rows.values():
        assert re.search(r"\bok\s+\d+ ms\s+1 model\(s\) listed", row), row
    calls = [received for received in own_upstream.received if received.path == "/v1/models"]
    assert len(calls) == 2 and all(call.method == "GET" for call in calls)
    assert all(call.headers.get("Authorization") == f"Bearer {API_KEY}" for call in calls)


def test_probe_fails_naming_each_upstream_that_failed(own_upstream: FakeUpstream, tmp_path: Path) -> None:
    own_upstream.enqueue("/v1/models", Reply.json({"error": {"message": "bad key"}}, status=401))
    routes = write_routes(tmp_path, f"""
  refused:
    base_url: {own_upstream.url}
    api_key: ${{TEST_UPSTREAM_KEY}}
  dead:
    base_url: http://127.0.0.1:{closed_port()}/v1
  keyless:
    base_url: {own_upstream.url}
    api_key: ${{TEST_MISSING_KEY}}
""")
    result = check(routes, "--probe")
    assert result.returncode == 1
    rows = probe_rows(result.stdout)
    assert "FAILED" in rows["refused"] and "answered 401" in rows["refused"]
    assert "FAILED" in rows["dead"]
    assert "FAILED" in rows["keyless"] and "TEST_MISSING_KEY" in rows["keyless"]
    assert "probe failed for upstream(s): refused, dead, keyless" in result.stderr
    assert API_KEY not in result.stdout + result.stderr


def test_probe_uses_the_upstreams_timeout(own_upstream: FakeUpstream, tmp_path: Path) -> None:
    slow = FakeUpstream().start()
    try:
        slow.enqueue("/v1/models", Reply(json_body={"data": []}, stall=10))
        routes = write_routes(tmp_path, f"""
  quick:
    base_url: {own_upstream.url}
    api_key: ${{TEST_UPSTREAM_KEY}}
  slow:
    base_url: {slow.url}
    api_key: ${{TEST_UPSTREAM_KEY}}
    discover_timeout: 1
""")
        result = check(routes, "--probe")
    finally:
        slow.stop()
    rows = probe_rows(result.stdout)
    assert result.returncode == 1, result.stdout
    assert " ok " in rows["quick"] and "FAILED" in rows["slow"], result.stdout
    assert int(re.findall(r"(\d+) ms", rows["slow"])[0]) < 5000, "given up after its discover_timeout"
    assert "probe failed for upstream(s): slow" in result.stderr
