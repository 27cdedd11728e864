"""Soak: many concurrent slow streams through the gateway, with client disconnects and upstream faults.

    python scripts/soak.py --duration 300 --concurrency 1000 --workers 2

Everything runs on this machine (loopback only) and stops by itself: a fault-injecting fake
upstream in its own process (tests/fake_upstream.py), the gateway under Granian
(`python -m gateway serve`), and one asyncio client process holding `--concurrency` streams open
for `--duration` seconds. Each request names the behaviour it wants from the upstream (a healthy
slow stream, a cut, a stall past the idle timeout, a malformed event, an error status, no answer)
or that the client will hang up, so every answer is checked against exactly what it should be.

Reported: requests by scenario, errors (an answer other than the expected one), truncated streams
(a body that ended with neither a `done` chunk nor an error line), upstream requests still open
after the clients are gone (leaked connections), and the peak memory (RSS) of every worker.
Exit status 0 only if there were no errors, no truncated streams and no leaks.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter, deque
from dataclasses import dataclass, field
from multiprocessing import Event, Process, Queue
from pathlib import Path
from typing import Any

import aiohttp
import psutil

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.fake_upstream import FakeUpstream, Reply, chat_chunks

IDLE_TIMEOUT = 5  # the upstream's `timeout` in the soak routes.yaml: the longest silence mid-stream
SCENARIOS = {  # name: weight
    "ok": 60,
    "slow_first_token": 8,
    "client_disconnect": 10,
    "client_leaves_early": 4,
    "cut": 4,
    "idle": 3,
    "malformed": 3,
    "http_500": 3,
    "http_429": 3,
    "no_answer": 2,
}


# -- the upstream (its own process) ------------------------------------------------------------------


class SoakUpstream(FakeUpstream):
    """Answers each request as its last message asks: `soak <scenario> <chunks> <interval>`."""

    def __init__(self) -> None:
        super().__init__()
        self.received = deque(maxlen=32)  # type: ignore[assignment]  # bounded: this runs for minutes
        self.requests = 0

    async def _handle(self, request: Any) -> Any:
        from aiohttp import web

        if request.path == "/_stats":
            # This request is in flight itself.
            return web.json_response({"in_flight": self.in_flight, "connections": self.connections - 1, "requests": self.requests})
        self.requests += 1
        return await super()._handle(request)

    def _default(self, path: str, body: Any) -> Reply:
        try:
            _, scenario, chunks, interval = body["messages"][-1]["content"].split()
        except (KeyError, TypeError, ValueError, IndexError):
            return super()._default(path, body)
        count, delay = int(chunks), float(interval)
        pieces = ["tok"] * count
        if scenario == "slow_first_token":
            return Reply.sse(chat_chunks(pieces), delay=delay, stall=3 * delay, stall_after=0)
        if scenario == "cut":
            return Reply.sse(chat_chunks(pieces), delay=delay, cut_after=1 + count // 2)
        if scenario == "idle":
            return Reply.sse(chat_chunks(pieces), delay=delay, stall_after=1 + count // 2, stall=IDLE_TIMEOUT + 3)
        if scenario == "malformed":
            events = chat_chunks(pieces)
            return Reply.sse([*events[: 1 + count // 2], "data: {\"choices\": [oops\n\n", *events[1 + count // 2 :]], delay=delay)
        if scenario == "http_500":
            return Reply.json({"error": {"message": "soak: the model crashed"}}, status=500)
        if scenario == "http_429":
            return Reply.json({"error": {"message": "soak: rate limited"}}, status=429, headers={"Retry-After": "3"})
        if scenario == "no_answer":
            return Reply(abort=True)
        return Reply.sse(chat_chunks(pieces), delay=delay)


def run_upstream(ports: Queue[int], stop: Any) -> None:
    server = SoakUpstream().start()
    ports.put(server.port)
    stop.wait()
    server.stop()


# -- the client ------------------------------------------------------------------------------------------


@dataclass
class Tally:
    requests: Counter[str] = field(default_factory=Counter)
    errors: Counter[str] = field(default_factory=Counter)
    error_examples: list[str] = field(default_factory=list)
    truncated: int = 0
    lines: int = 0
    first_byte_ms: list[float] = field(default_factory=list)

    def error(self, scenario: str, text: str) -> None:
        self.errors[scenario] += 1
        if len(self.error_examples) < 10:
            self.error_examples.append(f"{scenario}: {text[:300]}")


EXPECTED_LINE_ERRORS = {
    "cut": "closed the connection in the middle of its answer",
    "idle": f"sent nothing for {IDLE_TIMEOUT} s in the middle of its answer",
    "malformed": "sent a malformed stream event",
}
EXPECTED_STATUS = {"http_500": (500, "soak: the model crashed"), "http_429": (429, "soak: rate limited"),
                   "no_answer": (502, "closed the connection without answering")}


async def one_request(session: aiohttp.ClientSession, url: str, scenario: str, rng: random.Random, tally: Tally,
                      chunks: tuple[int, int], interval: float) -> None:
    count = rng.randint(*chunks)
    upstream_scenario = "ok" if scenario.startswith("client_") else scenario
    body = {"model": "soak", "messages": [{"role": "user", "content": f"soak {upstream_scenario} {count} {interval}"}]}
    tally.requests[scenario] += 1
    started = time.perf_counter()
    response = await session.post(url + "/api/chat", json=body)
    try:
        if scenario == "client_leaves_early":  # before the first line: the upstream may not have answered yet
            response.close()
            return
        if scenario in EXPECTED_STATUS:
            status, message = EXPECTED_STATUS[scenario]
            text = await response.text()
            if response.status != status or message not in text or (status == 429 and response.headers.get("Retry-After") != "3"):
                tally.error(scenario, f"{response.status} {text}")
            return
        if response.status != 200:
            tally.error(scenario, f"{response.status} {await response.text()}")
            return
        leave_after = rng.randint(1, max(1, count - 1)) if scenario == "client_disconnect" else None
        lines: list[dict[str, Any]] = []
        async for raw in response.content:
            if not lines:
                tally.first_byte_ms.append((time.perf_counter() - started) * 1000)
            if not raw.strip():
                tally.error(scenario, "blank line")
                continue
            lines.append(json.loads(raw))
            tally.lines += 1
            if leave_after is not None and len(lines) >= leave_after:
                response.close()
                return
        check_stream(scenario, count, lines, tally)
    finally:
        response.release()


def check_stream(scenario: str, count: int, lines: list[dict[str, Any]], tally: Tally) -> None:
    if not lines or not (lines[-1].get("done") is True or "error" in lines[-1]):
        tally.truncated += 1
        tally.error(scenario, f"truncated after {len(lines)} lines: {lines[-1:]}")
        return
    dones = sum(bool(line.get("done")) for line in lines)
    expected = EXPECTED_LINE_ERRORS.get(scenario)
    if expected is None:
        if dones != 1 or lines[-1].get("done") is not True or len(lines) != count + 1:
            tally.error(scenario, f"{len(lines)} lines, {dones} done, last {lines[-1]}")
    elif dones or expected not in str(lines[-1].get("error")):
        tally.error(scenario, f"{len(lines)} lines, {dones} done, last {lines[-1]}")


async def client_loop(index: int, url: str, deadline: float, tally: Tally, args: argparse.Namespace,
                      session: aiohttp.ClientSession) -> None:
    rng = random.Random(args.seed * 100_003 + index)
    names, weights = zip(*SCENARIOS.items())
    await asyncio.sleep(rng.random() * min(10.0, args.duration / 4))  # ramp up
    while time.monotonic() < deadline:
        scenario = rng.choices(names, weights)[0]
        try:
            await one_request(session, url, scenario, rng, tally, (args.min_chunks, args.max_chunks), args.interval)
        except (TimeoutError, aiohttp.ClientError, json.JSONDecodeError) as exc:
            tally.error(scenario, f"client: {type(exc).__name__}: {exc}")


async def run_clients(url: str, args: argparse.Namespace) -> Tally:
    tally = Tally()
    deadline = time.monotonic() + args.duration
    connector = aiohttp.TCPConnector(limit=0)
    timeout = aiohttp.ClientTimeout(total=None, sock_read=IDLE_TIMEOUT * 6)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
        await asyncio.gather(*(client_loop(i, url, deadline, tally, args, session) for i in range(args.concurrency)))
    return tally


# -- measuring the gateway ---------------------------------------------------------------------------


class MemorySampler(threading.Thread):
    """Peak RSS of the gateway's processes (by pid), sampled every `interval` seconds."""

    def __init__(self, main_pid: int, interval: float = 0.5) -> None:
        super().__init__(daemon=True)
        self.main = psutil.Process(main_pid)
        self.interval = interval
        self.peak: dict[int, int] = {}
        self.first: dict[int, int] = {}
        self.stop_event = threading.Event()

    def run(self) -> None:
        while not self.stop_event.is_set():
            for process in [self.main, *self.main.children(recursive=True)]:
                try:
                    rss = process.memory_info().rss
                except psutil.Error:
                    continue
                self.first.setdefault(process.pid, rss)
                self.peak[process.pid] = max(self.peak.get(process.pid, 0), rss)
            self.stop_event.wait(self.interval)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def upstream_stats(port: int) -> dict[str, int]:
    import urllib.request

    with urllib.request.urlopen(f"http://127.0.0.1:{port}/_stats", timeout=10) as answer:
        stats: dict[str, int] = json.loads(answer.read())
        return stats


def wait_ready(url: str, process: subprocess.Popen[bytes], seconds: float = 60) -> None:
    import urllib.request

    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise SystemExit("the gateway exited at start")
        try:
            with urllib.request.urlopen(url + "/", timeout=1):
                return
        except OSError:
            time.sleep(0.2)
    raise SystemExit("the gateway did not start")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--duration", type=float, default=300, help="seconds of load (default 300)")
    parser.add_argument("--concurrency", type=int, default=1000, help="streams held open at once (default 1000)")
    parser.add_argument("--workers", type=int, default=2, help="gateway workers (default 2)")
    parser.add_argument("--interval", type=float, default=1.0, help="seconds between chunks of a stream (default 1)")
    parser.add_argument("--min-chunks", type=int, default=10)
    parser.add_argument("--max-chunks", type=int, default=30)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--json", type=Path, help="also write the figures to this file")
    args = parser.parse_args()

    ports: Queue[int] = Queue()
    stop = Event()
    upstream = Process(target=run_upstream, args=(ports, stop), daemon=True)
    upstream.start()
    upstream_port = ports.get(timeout=30)
    folder = Path(tempfile.mkdtemp(prefix="soak-"))
    routes = folder / "routes.yaml"
    routes.write_text(f"""
upstreams:
  soak: {{base_url: "http://127.0.0.1:{upstream_port}/v1", api_key: "sk-soak", max_retries: 0, timeout: {IDLE_TIMEOUT}}}
models:
  - {{name: soak, upstream: soak, model: up-model}}
""")
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    log_path = folder / "gateway.log"
    with log_path.open("wb") as log_file:
        gateway = subprocess.Popen(
            [sys.executable, "-m", "gateway", "serve", "--routes", str(routes), "--port", str(port), "--workers",
             str(args.workers), "--log-format", "json", "--log-level", "info"],
            cwd=ROOT, stdout=log_file, stderr=subprocess.STDOUT, env={**os.environ, "GATEWAY_SHUTDOWN_GRACE": "10"},
        )
    try:
        wait_ready(url, gateway)
        sampler = MemorySampler(gateway.pid)
        sampler.start()
        print(f"soak: {args.concurrency} streams for {args.duration:.0f} s through {args.workers} worker(s); log {log_path}", flush=True)
        started = time.monotonic()
        tally = asyncio.run(run_clients(url, args))
        elapsed = time.monotonic() - started
        # Everything the clients opened is closed now: give the gateway a moment, then count.
        settle_deadline = time.monotonic() + 15
        stats = upstream_stats(upstream_port)
        while stats["in_flight"] and time.monotonic() < settle_deadline:
            time.sleep(0.5)
            stats = upstream_stats(upstream_port)
        sampler.stop_event.set()
        sampler.join()
        workers = [child.pid for child in psutil.Process(gateway.pid).children(recursive=True)]
    finally:
        gateway.send_signal(signal.SIGTERM)
        try:
            gateway.wait(60)
        except subprocess.TimeoutExpired:
            gateway.kill()
        stop.set()
        upstream.join(10)

    log_text = log_path.read_text(errors="replace")
    figures = report(args, tally, elapsed, stats, sampler, workers, log_text)
    if args.json:
        args.json.write_text(json.dumps(figures, indent=2))
    ok = not figures["errors"] and not figures["truncated_streams"] and not figures["leaked_upstream_requests"]
    return 0 if ok and not figures["gateway_crashes"] else 1


def report(args: argparse.Namespace, tally: Tally, elapsed: float, stats: dict[str, int], sampler: MemorySampler,
           workers: list[int], log_text: str) -> dict[str, Any]:
    mib = 1024 * 1024
    figures: dict[str, Any] = {
        "duration_s": round(elapsed, 1),
        "concurrency": args.concurrency,
        "workers": args.workers,
        "requests": sum(tally.requests.values()),
        "requests_by_scenario": dict(sorted(tally.requests.items())),
        "ndjson_lines_read": tally.lines,
        "errors": sum(tally.errors.values()),
        "errors_by_scenario": dict(tally.errors),
        "error_examples": tally.error_examples,
        "truncated_streams": tally.truncated,
        "leaked_upstream_requests": stats["in_flight"],
        "upstream_connections_left_open": stats["connections"],
        "upstream_requests_seen": stats["requests"],
        "first_byte_ms_p50": round(statistics.median(tally.first_byte_ms), 1) if tally.first_byte_ms else None,
        "first_byte_ms_p99": round(statistics.quantiles(tally.first_byte_ms, n=100)[98], 1) if len(tally.first_byte_ms) > 100 else None,
        "peak_rss_mib_by_worker": {str(pid): round(sampler.peak.get(pid, 0) / mib, 1) for pid in workers},
        "start_rss_mib_by_worker": {str(pid): round(sampler.first.get(pid, 0) / mib, 1) for pid in workers},
        "peak_rss_mib_main": round(sampler.peak.get(sampler.main.pid, 0) / mib, 1),
        "gateway_crashes": log_text.count('"outcome":"crashed"') + log_text.count("Traceback"),
    }
    print(json.dumps(figures, indent=2))
    return figures


if __name__ == "__main__":
    raise SystemExit(main())
