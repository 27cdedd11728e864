"""Processes under test: starting them pinned, waiting for readiness, and reading /proc.

CPU time comes from /proc/PID/stat (utime + stime, which include the process's exited threads)
summed over the process tree; memory from /proc/PID/statm (RSS) and smaps_rollup (PSS).
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Self

CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
PAGE_SIZE = os.sysconf("SC_PAGE_SIZE")


def free_port() -> int:
    """A TCP port on 127.0.0.1 that is free right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def children_of(pid: int) -> list[int]:
    """Direct children of `pid` (all its threads' children)."""
    found: list[int] = []
    try:
        for task in os.listdir(f"/proc/{pid}/task"):
            try:
                text = Path(f"/proc/{pid}/task/{task}/children").read_text()
            except OSError:
                continue
            found += [int(p) for p in text.split()]
    except OSError:
        pass
    return found


def process_tree(pid: int) -> list[int]:
    """`pid` and all its descendants that are alive."""
    tree, todo = [], [pid]
    while todo:
        current = todo.pop()
        if os.path.exists(f"/proc/{current}"):
            tree.append(current)
            todo += children_of(current)
    return tree


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of one process (all its threads, alive or exited)."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return 0.0
    fields = text[text.rindex(")") + 2:].split()
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS


def tree_cpu_seconds(pid: int) -> float:
    """CPU seconds summed over the process tree of `pid`."""
    return sum(cpu_seconds(p) for p in process_tree(pid))


def rss_bytes(pid: int) -> int:
    """Resident set size of one process."""
    try:
        return int(Path(f"/proc/{pid}/statm").read_text().split()[1]) * PAGE_SIZE
    except (OSError, IndexError):
        return 0


def process_name(pid: int) -> str:
    """A short description of a process: its command line, shortened."""
    try:
        argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return "?"
    words = [os.path.basename(a.decode(errors="replace")) for a in argv[:3] if a]
    return " ".join(words)[:60]


def pss_bytes(pid: int) -> int:
    """Proportional set size of one process (shared pages split between their users)."""
    try:
        for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
            if line.startswith("Pss:"):
                return int(line.split()[1]) * 1024
    except (OSError, IndexError, ValueError):
        pass
    return 0


@dataclass
class MemoryPeak:
    """Peaks of the summed RSS and PSS of a process tree, sampled by a background thread."""

    pid: int
    interval_s: float = 0.1
    peak_rss: int = 0
    peak_pss: int = 0
    peak_processes: int = 0
    peak_breakdown: dict[str, float] = field(default_factory=dict)
    samples: int = 0
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def sample(self) -> None:
        """Take one sample now."""
        tree = process_tree(self.pid)
        per_process = {p: rss_bytes(p) for p in tree}
        total = sum(per_process.values())
        if total > self.peak_rss:
            self.peak_rss = total
            self.peak_breakdown = {f"{p} {process_name(p)}": round(v / 2**20, 1) for p, v in per_process.items()}
        self.peak_pss = max(self.peak_pss, sum(pss_bytes(p) for p in tree))
        self.peak_processes = max(self.peak_processes, len(tree))
        self.samples += 1

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            self.sample()

    def __enter__(self) -> Self:
        self.sample()
        self._thread = threading.Thread(target=self._run, name="rss-sampler", daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        self.sample()


def set_affinity(pid: int, cores: set[int] | None) -> None:
    """Pin every thread of `pid` and its descendants to `cores` (None: all cores)."""
    target = cores or set(range(os.cpu_count() or 1))
    for proc in process_tree(pid):
        try:
            for task in os.listdir(f"/proc/{proc}/task"):
                os.sched_setaffinity(int(task), target)
        except OSError:
            pass


def raise_fd_limit() -> int:
    """Raise this process's open-file soft limit to the hard limit (children inherit it)."""
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = hard if hard != resource.RLIM_INFINITY else max(soft, 65536)
    if soft < wanted:
        resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


@dataclass
class Service:
    """A process we started (in its own session, so its whole group can be stopped)."""

    name: str
    argv: list[str]
    port: int
    process: subprocess.Popen[bytes]
    log_path: Path
    cores: set[int] | None

    @property
    def pid(self) -> int:
        """The process id."""
        return self.process.pid

    def cpu_seconds(self) -> float:
        """CPU seconds of the whole process tree so far."""
        return tree_cpu_seconds(self.pid)

    def log_tail(self, lines: int = 20) -> str:
        """The last lines of its output."""
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    def stop(self, timeout_s: float = 10.0) -> None:
        """SIGTERM its process group, then SIGKILL it if it does not exit in time."""
        if self.process.poll() is not None:
            return
        try:
            os.killpg(self.process.pid, signal.SIGTERM)
        except ProcessLookupError:
            return
        try:
            self.process.wait(timeout_s)
        except subprocess.TimeoutExpired:
            try:
                os.killpg(self.process.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            self.process.wait(5)


def start_service(name: str, argv: Sequence[str], port: int, log_dir: Path, cores: set[int] | None,
                  env: dict[str, str] | None = None, cwd: Path | None = None) -> Service:
    """Start `argv` pinned to `cores` (None: not pinned), output to `log_dir/name.log`.

    Pinning is `taskset -c CORES argv...` (it execs, so the pid is the program's), which its
    threads and child processes (Granian's workers) inherit.
    """
    log_path = log_dir / f"{name}.log"
    command = list(argv)
    if cores:
        command = [shutil.which("taskset") or "taskset", "-c", ",".join(map(str, sorted(cores))), *command]
    with open(log_path, "wb") as log_file:
        process = subprocess.Popen(
            command, stdout=log_file, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            env={**os.environ, **(env or {})}, cwd=cwd, start_new_session=True,
        )
    return Service(name, command, port, process, log_path, cores)


def wait_ready(service: Service, path: str, expect: str, timeout_s: float = 60.0) -> None:
    """Poll GET `path` until it answers 200 with `expect` in the body; raise if it never does."""
    deadline = time.monotonic() + timeout_s
    last_error = ""
    while time.monotonic() < deadline:
        if service.process.poll() is not None:
            raise RuntimeError(f"{service.name} exited with {service.process.returncode}:\n{service.log_tail()}")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{service.port}{path}", timeout=2) as response:
                if response.status == 200 and expect in response.read().decode(errors="replace"):
                    return
        except OSError as exc:
            last_error = str(exc)
        time.sleep(0.1)
    raise RuntimeError(f"{service.name} not ready after {timeout_s:.0f} s ({last_error}):\n{service.log_tail()}")


def pip_install_venv(venv: Path, requirement: str, log: Path) -> None:
    """Create `venv` (with this interpreter) if missing and pip-install `requirement` into it."""
    python = venv / "bin" / "python"
    if not python.exists():
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    with open(log, "ab") as out:
        subprocess.run(
            [str(python), "-m", "pip", "install", "--disable-pip-version-check", "-q", requirement],
            check=True, stdout=out, stderr=subprocess.STDOUT,
        )


def _cpu_jiffies() -> tuple[int, int, int]:
    """(busy, steal, total) jiffies of the whole machine from /proc/stat."""
    fields = [int(v) for v in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    user, nice, system, idle, iowait, irq, softirq, steal = (fields + [0] * 8)[:8]
    busy = user + nice + system + irq + softirq
    return busy, steal, busy + idle + iowait + steal


class MachineLoad:
    """How much CPU processes other than this benchmark (and what it started) used meanwhile.

    Our own share is `os.times()` of this process plus its reaped children (every server we
    start is stopped and waited for before `finish`, and Granian reaps its workers).
    """

    def __init__(self) -> None:
        self._start_jiffies = _cpu_jiffies()
        self._start_times = os.times()
        self._start_wall = time.monotonic()

    def finish(self) -> dict[str, float]:
        """Other processes' CPU seconds and share of the machine, and steal, since creation."""
        busy0, steal0, total0 = self._start_jiffies
        busy1, steal1, total1 = _cpu_jiffies()
        t0, t1 = self._start_times, os.times()
        ours = sum(getattr(t1, k) - getattr(t0, k) for k in ("user", "system", "children_user", "children_system"))
        busy_s = (busy1 - busy0) / CLOCK_TICKS
        capacity_s = (total1 - total0) / CLOCK_TICKS or 1.0
        other = max(0.0, busy_s - ours)
        return {
            "wall_s": time.monotonic() - self._start_wall,
            "our_cpu_s": ours,
            "other_cpu_s": other,
            "other_share": other / capacity_s,
            "steal_share": (steal1 - steal0) / CLOCK_TICKS / capacity_s,
        }
