"""Optional: sample the gateway worker with py-spy while the load generator drives it, and
summarise the hottest frames as text (`bench.py --py-spy`; needs `pip install py-spy`).

py-spy runs with `--gil`, so only the thread holding the GIL is sampled: idle thread-pool
threads do not drown the picture. Frames from the process/server bootstrap are dropped.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from collections import Counter
from pathlib import Path

_BOILERPLATE = ("granian/server", "multiprocessing/", "ollama-gateway:", "gateway/cli.py", "<module>")


def find_py_spy() -> str | None:
    """The py-spy executable next to this Python, or on PATH."""
    beside = Path(sys.executable).with_name("py-spy")
    return str(beside) if beside.exists() else shutil.which("py-spy")


def start_recording(py_spy: str, pid: int, seconds: float, output: Path) -> subprocess.Popen[bytes]:
    """Start py-spy on `pid` for `seconds`, raw (collapsed-stack) output to `output`."""
    return subprocess.Popen(
        [py_spy, "record", "--gil", "--nonblocking", "--format", "raw", "--rate", "200",
         "--duration", str(max(1, int(seconds))), "--output", str(output), "--pid", str(pid)],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
    )


def _package(frame: str) -> str:
    """The top-level package of a py-spy frame `function (path/file.py:line)`."""
    location = frame.rpartition(" (")[2]
    return location.split("/", 1)[0].split(".py", 1)[0] if "/" in location else location.split(":", 1)[0]


def summarise(raw: Path, top_self: int = 15, top_gateway: int = 15) -> str:
    """Own time by package and by frame, and inclusive time of the gateway's own frames."""
    own: Counter[str] = Counter()
    by_package: Counter[str] = Counter()
    gateway_inclusive: Counter[str] = Counter()
    total = 0
    for line in raw.read_text().splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        frames = [f for f in stack.split(";") if f and not any(b in f for b in _BOILERPLATE)]
        total += count
        if frames:
            own[frames[-1]] += count
            by_package[_package(frames[-1])] += count
        for frame in {f for f in frames if "(gateway/" in f}:
            gateway_inclusive[frame] += count
    if not total:
        return "(no samples)"

    def pct(n: int) -> str:
        return f"{100 * n / total:5.1f}%"

    lines = [f"{total} samples of the thread holding the GIL", "", "own time by package:"]
    lines += ["  " + ", ".join(f"{name} {100 * n / total:.0f}%" for name, n in by_package.most_common(12))]
    lines += ["", "own time by frame:"]
    lines += [f"  {pct(n)}  {frame}" for frame, n in own.most_common(top_self)]
    lines += ["", "inclusive time of gateway/ frames:"]
    lines += [f"  {pct(n)}  {frame}" for frame, n in gateway_inclusive.most_common(top_gateway)]
    return "\n".join(lines)
