"""A cheap HTTP/1.1 load generator: raw asyncio Protocols, keep-alive, pre-built request bytes.

Each connection sends one request at a time (closed loop) and parses just enough of the
response: status line, Content-Length or chunked body. The caller hands in a `Check` for the
body; every response is checked (see `bench_checks`), inside the timed window, so a wrong
answer never counts as a fast one unnoticed.

Load patterns:

* `sequential`: one connection, back-to-back requests, per-request latency (and time to the
  first body line, for streams).
* `closed_loop`: C connections, each back-to-back, counting completions in a timed window.
* `hold_concurrent`: N connections opened in a ramp, one long request each, all at once.
"""

from __future__ import annotations

import asyncio
import gc
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from bench_checks import Check

_HEAD, _FIXED, _CHUNKED = 0, 1, 2
perf = time.perf_counter


def build_request(method: str, path: str, port: int, body: bytes = b"", headers: Sequence[str] = ()) -> bytes:
    """The full bytes of one HTTP/1.1 keep-alive request."""
    lines = [f"{method} {path} HTTP/1.1", f"Host: 127.0.0.1:{port}", *headers]
    if body or method == "POST":
        lines += ["Content-Type: application/json", f"Content-Length: {len(body)}"]
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


@dataclass
class Reply:
    """One response: status, decoded body, time its first body line arrived (0.0 if not tracked)."""

    status: int
    body: bytes
    first_line_at: float


class ClientConnection(asyncio.Protocol):
    """One keep-alive connection; `request()` returns a future of the `Reply`."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.closed = False
        self._buf = bytearray()
        self._waiter: asyncio.Future[Reply] | None = None
        self._state = _HEAD
        self._status = 0
        self._length = 0
        self._close_after = False
        self._parts: list[bytes] = []
        self._track_first_line = False
        self._first_line_at = 0.0

    # asyncio.Protocol -------------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        waiter, self._waiter = self._waiter, None
        if waiter is not None and not waiter.done():
            waiter.set_exception(ConnectionError(f"connection lost: {exc or 'closed by server'}"))

    def data_received(self, data: bytes) -> None:
        if self._waiter is None:
            return  # bytes nobody asked for: ignore (the next request's parse would fail)
        self._buf += data
        try:
            self._parse()
        except (ValueError, IndexError) as exc:
            waiter, self._waiter = self._waiter, None
            if waiter is not None and not waiter.done():
                waiter.set_exception(ConnectionError(f"bad HTTP response: {exc}"))
            if self.transport is not None:
                self.transport.close()

    # API --------------------------------------------------------------------------------
    def request(self, data: bytes, track_first_line: bool = False) -> asyncio.Future[Reply]:
        """Send `data` (a whole request) and return the future of its reply."""
        if self.closed or self.transport is None:
            raise ConnectionError("connection closed")
        waiter: asyncio.Future[Reply] = asyncio.get_running_loop().create_future()
        self._waiter = waiter
        self._state = _HEAD
        self._parts = []
        self._track_first_line = track_first_line
        self._first_line_at = 0.0
        self.transport.write(data)
        return waiter

    def close(self) -> None:
        """Close the connection."""
        if self.transport is not None:
            self.transport.close()

    # parsing ----------------------------------------------------------------------------
    def _parse(self) -> None:
        buf = self._buf
        if self._state == _HEAD:
            head_end = buf.find(b"\r\n\r\n")
            if head_end < 0:
                return
            head = bytes(buf[:head_end]).lower()
            del buf[:head_end + 4]
            self._status = int(head[9:12])
            self._close_after = b"\r\nconnection: close" in head
            length_at = head.find(b"\r\ncontent-length:")
            if length_at >= 0:
                line_end = head.find(b"\r\n", length_at + 2)
                self._length = int(head[length_at + 17:line_end if line_end >= 0 else len(head)])
                self._state = _FIXED
            elif b"\r\ntransfer-encoding: chunked" in head:
                self._state = _CHUNKED
            elif self._status in (204, 304) or 100 <= self._status < 200:
                self._length = 0
                self._state = _FIXED
            else:
                raise ValueError("response without Content-Length or chunked encoding")
        if self._state == _FIXED:
            if self._track_first_line and not self._first_line_at and b"\n" in buf:
                self._first_line_at = perf()
            if len(buf) >= self._length:
                body = bytes(buf[:self._length])
                del buf[:self._length]
                self._finish(body)
            return
        self._parse_chunks(buf)

    def _parse_chunks(self, buf: bytearray) -> None:
        pos = 0
        parts = self._parts
        while True:
            line_end = buf.find(b"\r\n", pos)
            if line_end < 0:
                break
            size = int(buf[pos:line_end].split(b";", 1)[0], 16)
            if size == 0:
                if len(buf) < line_end + 4:
                    break
                del buf[:line_end + 4]  # assumes no trailers (none of the servers send them)
                self._finish(b"".join(parts))
                return
            chunk_end = line_end + 2 + size
            if len(buf) < chunk_end + 2:
                break
            part = bytes(buf[line_end + 2:chunk_end])
            if self._track_first_line and not self._first_line_at and b"\n" in part:
                self._first_line_at = perf()
            parts.append(part)
            pos = chunk_end + 2
        if pos:
            del buf[:pos]

    def _finish(self, body: bytes) -> None:
        waiter, self._waiter = self._waiter, None
        self._state = _HEAD
        if waiter is not None and not waiter.done():
            waiter.set_result(Reply(self._status, body, self._first_line_at))
        if self._close_after and self.transport is not None:
            self.transport.close()


async def connect(port: int, host: str = "127.0.0.1") -> ClientConnection:
    """Open one connection."""
    loop = asyncio.get_running_loop()
    _, protocol = await loop.create_connection(ClientConnection, host, port)
    return protocol


@dataclass
class Tally:
    """Counts for one measurement: completions, invalid answers (with reasons), errors."""

    completed: int = 0
    valid: int = 0
    invalid: int = 0
    errors: int = 0
    reasons: Counter[str] = field(default_factory=Counter)

    def judge(self, reply: Reply, check: Check) -> bool:
        """Count `reply` and check it; True if it is valid."""
        self.completed += 1
        if reply.status != 200:
            problem: str | None = f"HTTP {reply.status}: {reply.body[:120]!r}"
        else:
            problem = check(reply.body)
        if problem is None:
            self.valid += 1
            return True
        self.invalid += 1
        if len(self.reasons) < 20 or problem in self.reasons:
            self.reasons[problem] += 1
        return False

    def error(self, exc: BaseException) -> None:
        """Count a transport-level failure (no response)."""
        self.errors += 1
        self.reasons[f"error: {type(exc).__name__}: {str(exc)[:100]}"] += 1

    def as_dict(self) -> dict[str, Any]:
        """Plain-data form for the JSON output."""
        return {
            "completed": self.completed,
            "valid": self.valid,
            "invalid": self.invalid,
            "errors": self.errors,
            "reasons": dict(self.reasons.most_common(5)),
        }


@dataclass
class SequentialResult:
    """Per-request wall times (s) of a c=1 run, and times to the first body line (s)."""

    latencies: list[float]
    first_line: list[float]
    tally: Tally
    cpu: dict[str, float]


async def sequential(port: int, request: bytes, check: Check, warmup_s: float, window_s: float,
                     max_requests: int, cpu_probes: dict[str, Callable[[], float]],
                     track_first_line: bool = False) -> SequentialResult:
    """Back-to-back requests on one connection: warm up, then time each request in the window.

    `cpu_probes` are read at the start and end of the window; the result holds their deltas.
    """
    conn = await connect(port)
    tally = Tally()
    latencies: list[float] = []
    first_line: list[float] = []
    try:
        deadline = perf() + warmup_s
        while perf() < deadline:
            tally.judge(await conn.request(request, track_first_line), check)
        gc.collect()
        gc.disable()
        cpu_start = {name: probe() for name, probe in cpu_probes.items()}
        start = perf()
        deadline = start + window_s
        while len(latencies) < max_requests:
            sent = perf()
            if sent >= deadline:
                break
            reply = await conn.request(request, track_first_line)
            done = perf()
            latencies.append(done - sent)
            if track_first_line:
                first_line.append((reply.first_line_at or done) - sent)
            tally.judge(reply, check)
        cpu = {name: probe() - cpu_start[name] for name, probe in cpu_probes.items()}
    except ConnectionError as exc:
        tally.error(exc)
        cpu = {}
    finally:
        gc.enable()
        conn.close()
    return SequentialResult(latencies, first_line, tally, cpu)


@dataclass
class ThroughputResult:
    """Completions per second in the window, and CPU seconds per probe in that window."""

    rate: float
    window_s: float
    completions: int
    tally: Tally
    cpu: dict[str, float]


async def _closed_loop_worker(conn: ClientConnection, port: int, request: bytes, check: Check, tally: Tally,
                              stop: list[bool]) -> None:
    """Send `request` back to back until told to stop; reconnect (bounded) on failure."""
    reconnects = 0
    while not stop[0]:
        try:
            reply = await conn.request(request)
        except ConnectionError as exc:
            tally.error(exc)
            reconnects += 1
            if reconnects > 50:
                return
            await asyncio.sleep(0.01)
            try:
                conn = await connect(port)
            except OSError as connect_exc:
                tally.error(connect_exc)
            continue
        tally.judge(reply, check)
    conn.close()


async def closed_loop(port: int, request: bytes, check: Check, concurrency: int, warmup_s: float,
                      window_s: float, min_completions: int, max_window_s: float,
                      cpu_probes: dict[str, Callable[[], float]]) -> ThroughputResult:
    """`concurrency` connections sending back to back; rate = completions in the timed window.

    The window lasts `window_s`, stretched (up to `max_window_s`) until `min_completions`
    responses arrived, so slow targets are not judged on a handful of completions.
    """
    conns = await asyncio.gather(*(connect(port) for _ in range(concurrency)))
    tally = Tally()
    stop = [False]
    workers = [asyncio.create_task(_closed_loop_worker(c, port, request, check, tally, stop)) for c in conns]
    gc.collect()
    gc.disable()
    try:
        await asyncio.sleep(warmup_s)
        count_start = tally.completed
        cpu_start = {name: probe() for name, probe in cpu_probes.items()}
        start = perf()
        while True:
            await asyncio.sleep(0.05)
            elapsed = perf() - start
            if elapsed >= max_window_s or (
                elapsed >= window_s and tally.completed - count_start >= min_completions
            ):
                break
        completions = tally.completed - count_start
        elapsed = perf() - start
        cpu = {name: probe() - cpu_start[name] for name, probe in cpu_probes.items()}
    finally:
        stop[0] = True
        gc.enable()
    _, pending = await asyncio.wait(workers, timeout=60)
    for task in pending:
        task.cancel()
        tally.error(TimeoutError("request still running 60 s after the window closed"))
    return ThroughputResult(completions / elapsed, elapsed, completions, tally, cpu)


@dataclass
class HoldResult:
    """How N simultaneous long requests went.

    `peak_streaming` is the largest number of responses that had sent their first body line
    and not yet finished at one instant: the number of streams truly open together.
    """

    requested: int
    peak_in_flight: int
    peak_streaming: int
    wall_s: float
    tally: Tally


def peak_overlap(intervals: list[tuple[float, float]]) -> int:
    """The largest number of (start, end) intervals covering one instant."""
    events = sorted([(s, 1) for s, _ in intervals] + [(e, -1) for _, e in intervals])
    peak = current = 0
    for _, step in events:
        current += step
        peak = max(peak, current)
    return peak


async def _hold_one(port: int, request: bytes, check: Check, tally: Tally, counters: dict[str, int],
                    intervals: list[tuple[float, float]]) -> None:
    """Open a connection, send one long request, wait for the whole answer."""
    try:
        conn = await connect(port)
    except OSError as exc:
        tally.error(exc)
        return
    counters["in_flight"] += 1
    counters["peak_in_flight"] = max(counters["peak_in_flight"], counters["in_flight"])
    try:
        reply = await conn.request(request, track_first_line=True)
        done = perf()
        if tally.judge(reply, check):
            intervals.append((reply.first_line_at or done, done))
    except ConnectionError as exc:
        tally.error(exc)
    finally:
        counters["in_flight"] -= 1
        conn.close()


async def hold_concurrent(port: int, request: bytes, check: Check, count: int, ramp_batch: int,
                          ramp_pause_s: float, timeout_s: float,
                          on_tick: Callable[[], None] | None = None) -> HoldResult:
    """Start `count` long requests (batches of `ramp_batch`, `ramp_pause_s` apart) and wait for all.

    `on_tick` runs about every 100 ms meanwhile (the caller samples memory there).
    """
    tally = Tally()
    counters = {"in_flight": 0, "peak_in_flight": 0}
    intervals: list[tuple[float, float]] = []
    start = perf()
    tasks: list[asyncio.Task[None]] = []
    for first in range(0, count, ramp_batch):
        for _ in range(min(ramp_batch, count - first)):
            tasks.append(asyncio.create_task(_hold_one(port, request, check, tally, counters, intervals)))
        await asyncio.sleep(ramp_pause_s)
        if on_tick is not None:
            on_tick()
    deadline = start + timeout_s
    pending = set(tasks)
    while pending and perf() < deadline:
        _, pending = await asyncio.wait(pending, timeout=0.1)
        if on_tick is not None:
            on_tick()
    for task in pending:
        task.cancel()
        tally.error(TimeoutError(f"stream not finished after {timeout_s:.0f} s"))
    if pending:
        await asyncio.wait(pending, timeout=5)
    return HoldResult(count, counters["peak_in_flight"], peak_overlap(intervals), perf() - start, tally)
