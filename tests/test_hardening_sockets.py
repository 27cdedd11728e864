"""Sockets and workers (issue 9, points 1, 2 and 10's keepalive), through Granian with two workers.

A worker killed with SIGKILL is replaced while the other serves on; idle, silent, trickling and
non-reading clients are each bounded by a setting (`GATEWAY_HEADER_TIMEOUT`, `GATEWAY_BODY_TIMEOUT`,
`GATEWAY_SEND_TIMEOUT`, `GATEWAY_MAX_CONNECTIONS`), so a new client still gets an answer, or
Ollama's 503 "server busy" when the upstream slots are taken; accepted connections use TCP
keepalive. Socket counts and timeouts are as small as still show each fault; the waits only
detect hangs.
"""

from __future__ import annotations

import json
import os
import re
import resource
import select
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import psutil
import pytest

from gateway.errors import SERVER_BUSY
from gateway.settings import Settings
from tests.client_support import first_line, raw_request, wait_for
from tests.conftest import ROOT, RunningGateway
from tests.fake_upstream import FakeUpstream, Reply, chat_chunks

CHAT = "/v1/chat/completions"
USER_HI = [{"role": "user", "content": "hi"}]
WORKERS = 2
# More connections than Granian's default per-worker limit (backlog 1024 / workers) let two
# workers hold in all: beyond it, before this fix, a new client was not even accepted.
IDLE_SOCKETS = 1100
ANSWER_BOUND = 10  # seconds: below hyper's own 30 s header timeout, so only the settings can pass


@pytest.fixture(scope="module", autouse=True)
def _enough_files() -> None:
    """This process holds over a thousand sockets; the gateway raises its own limit (listener.py)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = 4096 if hard == resource.RLIM_INFINITY else min(4096, hard)
    if soft != resource.RLIM_INFINITY and soft < wanted:
        resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, hard))


def start(upstream: FakeUpstream, folder: Path, **env: str) -> RunningGateway:
    routes = folder / "routes.yaml"
    routes.write_text(f"""
upstreams:
  fake: {{base_url: "{upstream.url}", api_key: "${{TEST_UPSTREAM_KEY}}", max_retries: 0, timeout: 120, cooldown: false}}
models:
  - {{name: tiny, upstream: fake, model: up-model}}
""")
    return RunningGateway(routes, folder / "gateway.log", workers=WORKERS, env={f"GATEWAY_{k.upper()}": v for k, v in env.items()})


@pytest.fixture
def launch(upstream: FakeUpstream, tmp_path: Path) -> Iterator[Callable[..., RunningGateway]]:
    """Start the gateway with some `GATEWAY_*` settings (lower-case names, without the prefix)."""
    started: list[RunningGateway] = []

    def run(**env: str) -> RunningGateway:
        started.append(start(upstream, tmp_path, **env))
        return started[-1]

    yield run
    for gateway in started:
        gateway.stop()


def chat(gateway: RunningGateway, timeout: float = 30) -> httpx.Response:
    return httpx.post(gateway.url + "/api/chat", json={"model": "tiny", "messages": USER_HI, "stream": False}, timeout=timeout)


def workers(gateway: RunningGateway) -> set[int]:
    """The live worker processes (a killed one is a zombie until Granian reaps it)."""
    pids = set()
    for child in psutil.Process(gateway.process.pid).children():
        try:
            if child.status() != psutil.STATUS_ZOMBIE:
                pids.add(child.pid)
        except psutil.NoSuchProcess:
            pass
    return pids


def worker_serving(gateway: RunningGateway, client: socket.socket) -> int:
    """The worker that accepted `client`'s connection (the only one holding its socket)."""
    port = client.getsockname()[1]
    for pid in workers(gateway):
        if any(conn.raddr and conn.raddr.port == port for conn in psutil.Process(pid).net_connections("tcp")):
            return pid
    raise AssertionError("no worker holds the connection")


def read_to_end(sock: socket.socket) -> bytes:
    data = b""
    try:
        while chunk := sock.recv(65536):
            data += chunk
    except ConnectionResetError:
        pass
    return data


def closed_by_server(sock: socket.socket) -> bool:
    if not readable([sock], 0):
        return False
    try:
        return sock.recv(1, socket.MSG_PEEK) == b""
    except ConnectionResetError:
        return True


def readable(socks: list[socket.socket], timeout: float) -> list[socket.socket]:
    """`select` without its limit of 1,024 descriptors."""
    poller = select.poll()
    by_fd = {sock.fileno(): sock for sock in socks}
    for fd in by_fd:
        poller.register(fd, select.POLLIN)
    return [by_fd[fd] for fd, _ in poller.poll(timeout * 1000)]


def keep_alive_connection(gateway: RunningGateway) -> socket.socket:
    """A connection that has had one answered request and is now idle."""
    sock = socket.create_connection(("127.0.0.1", gateway.port), timeout=ANSWER_BOUND)
    sock.sendall(b"GET /api/version HTTP/1.1\r\nHost: gateway\r\n\r\n")
    answer = b""
    while b"}" not in answer:
        answer += sock.recv(4096)
    assert answer.startswith(b"HTTP/1.1 200")
    return sock


# -- 1. a worker that dies ---------------------------------------------------------------------------


class LightLoad:
    """One client thread asking for chats back to back, noting when each answer failed."""

    def __init__(self, gateway: RunningGateway) -> None:
        self.gateway = gateway
        self.results: list[tuple[float, bool]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                ok = chat(self.gateway, timeout=ANSWER_BOUND).status_code == 200
            except httpx.HTTPError:
                ok = False
            self.results.append((time.monotonic(), ok))
            time.sleep(0.02)

    def stop(self) -> list[tuple[float, bool]]:
        self._stop.set()
        self._thread.join(ANSWER_BOUND + 5)
        return self.results


def test_a_killed_worker_is_replaced_while_the_other_keeps_serving(launch: Callable[..., RunningGateway], upstream: FakeUpstream) -> None:
    running = launch()
    before = workers(running)
    assert len(before) == WORKERS
    upstream.enqueue(CHAT, Reply.sse(chat_chunks(["tick"] * 300), delay=0.05))
    stream = raw_request(running.port, {"model": "tiny", "messages": USER_HI, "stream": True})
    first_line(stream)
    victim = worker_serving(running, stream)
    load = LightLoad(running)
    assert wait_for(lambda: len(load.results) >= 5)
    os.kill(victim, signal.SIGKILL)
    killed_at = time.monotonic()

    # The client in flight on it: its connection drops, the stream ends without a `done` line.
    assert b'"done":true' not in read_to_end(stream)
    stream.close()
    assert wait_for(lambda: len(workers(running) - before) == 1 and running._started_workers() == WORKERS + 1)
    replacement = (workers(running) - before).pop()
    assert workers(running) == before - {victim} | {replacement}
    respawned_at = time.monotonic()
    assert wait_for(lambda: any(at > respawned_at for at, _ in load.results))
    results = load.stop()

    assert running.process.poll() is None
    assert all(chat(running).status_code == 200 for _ in range(10))
    assert [ok for at, ok in results if at > respawned_at] and all(ok for at, ok in results if at > respawned_at)
    assert all(ok for at, ok in results if at < killed_at)
    assert "Respawning worker" in running.log_text()
    assert wait_for(lambda: upstream.in_flight == 0)

    # SIGHUP still reaches every worker, the replacement included (routes.yaml reloads in each).
    running.process.send_signal(signal.SIGHUP)
    assert wait_for(lambda: _sighup_reloads(running) == before - {victim} | {replacement})


def _sighup_reloads(gateway: RunningGateway) -> set[int]:
    pids = set()
    for line in gateway.log_text().splitlines():
        if '"event":"routes_reloaded"' in line:
            record = json.loads(line)
            if record["reason"] == "sighup":
                pids.add(record["worker_pid"])
    return pids


# -- 2. idle and slow sockets ------------------------------------------------------------------------


def test_idle_sockets_leave_new_clients_an_answer_or_server_busy(launch: Callable[..., RunningGateway], upstream: FakeUpstream) -> None:
    """Over a thousand connected sockets that send nothing; a new client is still answered, and
    streams beyond the upstream limit get Ollama's 503 rather than waiting to be accepted."""
    running = launch(max_concurrent_upstream="8", queue_timeout="0.5")
    idle = [socket.create_connection(("127.0.0.1", running.port), timeout=ANSWER_BOUND) for _ in range(IDLE_SOCKETS)]
    try:
        assert httpx.get(running.url + "/api/version", timeout=ANSWER_BOUND).status_code == 200
        streams = 40  # more than both workers' 8 slots, whichever worker each lands on
        upstream.enqueue(CHAT, *[Reply.sse(chat_chunks(["x"] * 10), stall_after=3, stall=60) for _ in range(streams)])
        opened = [raw_request(running.port, {"model": "tiny", "messages": USER_HI, "stream": True}) for _ in range(streams)]
        with ThreadPoolExecutor(streams) as pool:
            answers = list(pool.map(_status_and_first_line, opened))
        served = [body for status, body in answers if status == 200]
        busy = [body for status, body in answers if status == 503]
        assert len(served) + len(busy) == streams
        assert 8 <= len(served) <= 8 * WORKERS and all(b'"message"' in body for body in served)
        assert all(json.loads(body) == {"error": SERVER_BUSY} for body in busy)
        for sock in opened:
            sock.close()
    finally:
        for sock in idle:
            sock.close()
    assert wait_for(lambda: upstream.in_flight == 0)
    upstream.reset()  # the stalled replies no request took
    assert chat(running).status_code == 200


def _status_and_first_line(sock: socket.socket) -> tuple[int, bytes]:
    """The status and the first body line (a stream's first chunk, or a whole error body)."""
    head = b""
    while b"\r\n\r\n" not in head:
        chunk = sock.recv(65536)
        assert chunk, head
        head += chunk
    status = int(head.split(b" ", 2)[1])
    body = head.split(b"\r\n\r\n", 1)[1]
    if status == 200:
        while b"\n" not in body.split(b"\r\n", 1)[-1]:
            body += sock.recv(65536)
        return status, body.split(b"\r\n", 1)[1].split(b"\n", 1)[0]
    length = int(re.search(rb"content-length: (\d+)", head.lower()).group(1))  # type: ignore[union-attr]
    while len(body) < length:
        body += sock.recv(65536)
    return status, body


def test_idle_connections_and_slow_headers_are_closed_after_the_header_timeout(launch: Callable[..., RunningGateway]) -> None:
    running = launch(header_timeout="1")
    kept = [keep_alive_connection(running) for _ in range(20)]
    silent = [socket.create_connection(("127.0.0.1", running.port), timeout=ANSWER_BOUND) for _ in range(20)]
    slow = socket.create_connection(("127.0.0.1", running.port), timeout=ANSWER_BOUND)
    slow.sendall(b"GET /api/version HTTP/1.1\r\nHost: gateway\r\nX-Slow: ")
    try:
        # Within the timeout a kept-alive connection is reused as usual.
        kept[0].sendall(b"GET /api/version HTTP/1.1\r\nHost: gateway\r\n\r\n")
        assert kept[0].recv(4096).startswith(b"HTTP/1.1 200")

        def all_closed() -> bool:
            try:
                slow.send(b"a")
            except OSError:
                pass
            return all(closed_by_server(sock) for sock in [*kept, *silent, slow])

        assert wait_for(all_closed, ANSWER_BOUND)
        assert httpx.get(running.url + "/api/version", timeout=ANSWER_BOUND).status_code == 200
    finally:
        for sock in [*kept, *silent, slow]:
            sock.close()


def test_a_body_trickled_too_slowly_gets_408_while_others_are_served(launch: Callable[..., RunningGateway], upstream: FakeUpstream) -> None:
    running = launch(body_timeout="1")
    count = 20
    trickles = []
    for _ in range(count):
        sock = socket.create_connection(("127.0.0.1", running.port), timeout=ANSWER_BOUND)
        sock.sendall(b"POST /api/chat HTTP/1.1\r\nHost: gateway\r\nContent-Type: application/json\r\n"
                     b"Content-Length: 5000\r\n\r\n{")
        sock.setblocking(False)
        trickles.append(sock)
    answers = dict.fromkeys(trickles, b"")
    try:
        assert chat(running, timeout=ANSWER_BOUND).status_code == 200
        deadline = time.monotonic() + ANSWER_BOUND
        while time.monotonic() < deadline and not all(b"}" in answer for answer in answers.values()):
            for sock in trickles:
                try:
                    sock.send(b" ")  # one byte a tick: the body would need minutes
                except OSError:
                    pass
            for sock in readable(trickles, 0.2):
                try:
                    answers[sock] += sock.recv(4096)
                except OSError:
                    pass
    finally:
        for sock in trickles:
            sock.close()
    for answer in answers.values():
        head, _, body = answer.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 408") and b"connection: close" in head.lower(), answer
        assert json.loads(body) == {"error": "request body not received in time (limit 1 s)"}
    assert len(upstream.received) == 1  # only the client that sent its body whole

    def logged() -> list[dict[str, object]]:  # each summary line is written just after its answer
        return [json.loads(line) for line in running.log_text().splitlines() if '"status":408' in line]

    assert wait_for(lambda: len(logged()) == count), len(logged())
    assert all(str(line["error"]).startswith("request body not received") for line in logged())


def test_a_client_that_stops_reading_a_stream_is_cut_off_and_frees_the_upstream(
    launch: Callable[..., RunningGateway], upstream: FakeUpstream
) -> None:
    """Granian's `send` waits once the socket buffers are full; the write times out instead."""
    running = launch(send_timeout="1")
    # Only a write that waits counts: an upstream slower than the timeout between chunks is fine.
    upstream.enqueue(CHAT, Reply.sse(chat_chunks(["slow", "ly"]), stall_after=2, stall=1.5))
    response = httpx.post(running.url + "/api/chat", json={"model": "tiny", "messages": USER_HI}, timeout=30)
    assert [line["done"] for line in map(json.loads, response.text.splitlines())] == [False, False, True]

    # 20 MB, more than the socket buffers between the gateway and the client hold, then a stall:
    # the upstream request ends only when the gateway cancels it, whatever the buffers took.
    upstream.enqueue(CHAT, Reply.sse(chat_chunks(["x" * 4000] * 5000), stall_after=5000, stall=60))
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.connect(("127.0.0.1", running.port))
    data = json.dumps({"model": "tiny", "messages": USER_HI, "stream": True}).encode()
    sock.sendall(b"POST /api/chat HTTP/1.1\r\nHost: gateway\r\nContent-Length: %d\r\n\r\n" % len(data) + data)
    try:
        assert wait_for(lambda: upstream.in_flight == 1)
        assert wait_for(lambda: upstream.in_flight == 0, ANSWER_BOUND)  # cancelled, its slot freed
        assert wait_for(lambda: "client stopped reading" in running.log_text())
        sock.settimeout(ANSWER_BOUND)
        assert b'"done":true' not in read_to_end(sock)  # what was buffered, then the end
    finally:
        sock.close()
    line = next(json.loads(line) for line in running.log_text().splitlines() if "client stopped reading" in line)
    assert line["status"] == 200 and line["error"] == "client stopped reading: a write waited more than 1 s"
    assert chat(running).status_code == 200


# -- 10. TCP keepalive on accepted connections --------------------------------------------------------


def test_accepted_connections_probe_a_silent_peer(launch: Callable[..., RunningGateway]) -> None:
    """The server side of a connection runs the keepalive timer (/proc/net/tcp `tr` 2), due within 5 s."""
    running = launch(tcp_keepalive="5")
    sock = keep_alive_connection(running)
    try:
        timer, due = _server_side_timer(running.port, sock.getsockname()[1])
        assert timer == 2 and 0 < due <= 5 * os.sysconf("SC_CLK_TCK")
    finally:
        sock.close()


def _server_side_timer(server_port: int, client_port: int) -> tuple[int, int]:
    """(timer kind, ticks until it fires) of the gateway's end of one loopback connection."""
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        local, remote, state, timer = fields[1], fields[2], fields[3], fields[5]
        if int(local.split(":")[1], 16) == server_port and int(remote.split(":")[1], 16) == client_port and state == "01":
            kind, due = timer.split(":")
            return int(kind, 16), int(due, 16)
    raise AssertionError("connection not found in /proc/net/tcp")


# -- settings ------------------------------------------------------------------------------------------


def test_the_connection_limit_must_exceed_the_upstream_limit() -> None:
    """Else requests waiting for an upstream slot fill the connections and the 503 is never reached."""
    with pytest.raises(ValueError, match="GATEWAY_MAX_CONNECTIONS"):
        Settings(max_concurrent_upstream=4096)
    assert Settings(max_concurrent_upstream=4096, max_connections=8192).max_connections == 8192


@pytest.mark.parametrize("hard", [pytest.param(None, id="hard-limit-above"), pytest.param(3000, id="hard-limit-below")])
def test_serve_raises_the_open_file_limit_the_workers_inherit(hard: int | None) -> None:
    """A worker must not run out of descriptors below GATEWAY_MAX_CONNECTIONS (Granian would spin
    on its accept); `ulimit -n` is often 1,024."""
    code = f"""
import resource
from gateway.listener import files_needed, raise_open_file_limit
soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
resource.setrlimit(resource.RLIMIT_NOFILE, (1024, {hard} or hard))
warning = raise_open_file_limit(files_needed(4096, 1024))
print(resource.getrlimit(resource.RLIMIT_NOFILE)[0], warning)
"""
    soft, hard_now = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard is None and hard_now != resource.RLIM_INFINITY and hard_now < 4096 + 1024 + 256:
        pytest.skip("this machine's hard open-file limit is below what the gateway asks for")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, check=True)
    limit, warning = result.stdout.split(" ", 1)
    if hard is None:
        assert (int(limit), warning.strip()) == (4096 + 1024 + 256, "None")
    else:
        assert int(limit) == hard and "raise `ulimit -n` or lower GATEWAY_MAX_CONNECTIONS" in warning


def test_every_limit_setting_has_a_row_with_its_default_in_the_readme() -> None:
    rows = {}
    for line in (ROOT / "README.md").read_text().splitlines():
        cells = [cell.strip() for cell in line.split("|")]
        if len(cells) > 4 and cells[2].startswith("`GATEWAY_"):
            rows[cells[2].split("`")[1]] = cells[3]
    assert set(Settings()._limits_environ()) <= set(rows)
    new = {"MAX_CONNECTIONS": "4096", "BACKLOG": "2048", "HEADER_TIMEOUT": "30", "BODY_TIMEOUT": "60",
           "SEND_TIMEOUT": "60", "TCP_KEEPALIVE": "60"}
    assert {name: rows[f"GATEWAY_{name}"] for name in new} == {name: f"`{value}`" for name, value in new.items()}
    defaults = Settings()
    assert {name: str(getattr(defaults, name.lower())).removesuffix(".0") for name in new} == new
