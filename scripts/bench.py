#!/usr/bin/env python3
"""Benchmark the Ollama gateway against the direct path and ollama-openai-proxy, in one run.

    .venv/bin/python scripts/bench.py            # full run, about 8-10 minutes
    .venv/bin/python scripts/bench.py --quick    # smoke run, about 1-2 minutes
    .venv/bin/python scripts/bench.py --json bench.json
    .venv/bin/python scripts/bench.py --py-spy   # also profile the gateway (pip install py-spy)

What it does (see `--help` for knobs):

1. Starts a fake OpenAI-compatible upstream (`bench_upstream.py`, pre-rendered bytes) and
   measures the direct client -> upstream path: the ceiling of what the load generator and
   upstream can do together.
2. Starts the gateway (`ollama-gateway serve`, one worker) pinned to core 0, the floor
   (`bench_floor.py`: a bare FastAPI-on-Granian translator, the least this stack can cost,
   started with the gateway's Granian options, one worker) pinned the same way, and
   ollama-openai-proxy 0.7.0 (installed once from PyPI into a scratch venv under
   .bench/proxy-venv) pinned the same way; the upstream and this load
   generator share the other core(s).
3. Measures, repeated (3 times by default, interleaved so drift hits all targets alike):
   latency at c=1, throughput at c=32/128 (chat, 64-chunk streams, embed with 16 inputs),
   a 512-chunk stream (time to first line, per-chunk wall and CPU cost), and 1,000
   concurrent slow streams (peak RSS of the process tree; all must complete and be valid).
   Every response is checked for validity.
4. Runs the gateway again with N workers (N = CPU count), unpinned, for the scaling ratio.
5. Prints a markdown table (medians, min-max, ratios), the issues' targets judged PASS/FAIL on
   this run (`bench_goals.py`: mostly the gateway against the floor), and optionally writes raw
   JSON; `python scripts/bench_report.py FILE.json` re-renders a saved run.

The load generator is a raw-asyncio HTTP/1.1 client (`bench_client.py`) with keep-alive
connections and pre-built request bytes; the report shows its own CPU cost per request.
Nothing here asserts on timings: the numbers are for people, ratios from one run are what count.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Coroutine
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, TypeVar

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import bench_client as client
import bench_goals as goals
import bench_procs as procs
import bench_profile
import bench_report as report
import bench_targets as targets
from bench_checks import Check
from bench_client import Tally
from bench_targets import Target

REPO = Path(__file__).resolve().parent.parent
THROUGHPUT_SCENARIOS = ("chat", "stream64", "embed16")
T = TypeVar("T")


@dataclass
class Profile:
    """How long and how much: one for the full run, one for `--quick`."""

    repeats: int = 3
    latency_warmup_s: float = 0.3
    latency_window_s: float = 2.0
    throughput_warmup_s: float = 0.5
    throughput_window_s: float = 2.0
    throughput_min_completions: int = 200
    throughput_max_window_s: float = 6.0
    concurrencies: tuple[int, ...] = (32, 128)
    long_stream_chunks: int = 512
    short_stream_chunks: int = 16
    stream_window_s: float = 2.0
    slow_streams: int = 1000
    slow_chunks: int = 50
    slow_grace_s: float = 20.0
    slow_reference_repeats: int = 1
    slow_ramp_batch: int = 100
    slow_ramp_pause_s: float = 0.05
    multi_concurrency: int = 128

    @classmethod
    def quick(cls) -> Profile:
        """A smoke run: one repeat, short windows, 200 slow streams of 10 chunks."""
        return cls(repeats=1, latency_warmup_s=0.1, latency_window_s=0.5, throughput_warmup_s=0.2,
                   throughput_window_s=0.5, throughput_min_completions=50, throughput_max_window_s=2.0,
                   stream_window_s=0.5, slow_streams=200, slow_chunks=20)


def log(message: str) -> None:
    """Progress goes to stderr, the report to stdout."""
    print(f"[bench {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


class Recorder:
    """Collects per-repeat metrics and validity tallies, keyed by target and phase."""

    def __init__(self) -> None:
        self.runs: dict[str, dict[str, dict[str, list[float | None]]]] = {}
        self.validity: dict[str, dict[str, dict[str, Any]]] = {}
        self.breakdown: dict[str, list[dict[str, float]]] = {}

    def add(self, phase: str, target: str, metric: str, value: float | None) -> None:
        """Append one repeat's value of `metric`."""
        self.runs.setdefault(phase, {}).setdefault(target, {}).setdefault(metric, []).append(value)

    def tally(self, phase: str, target: str, scenario: str, tally: Tally) -> None:
        """Merge a validity tally; the run's own count of bad answers is kept as a metric too."""
        self.add(phase, target, f"bad: {scenario}", tally.invalid + tally.errors)
        entry = self.validity.setdefault(target, {}).setdefault(
            scenario, {"completed": 0, "valid": 0, "invalid": 0, "errors": 0, "reasons": {}})
        for key in ("completed", "valid", "invalid", "errors"):
            entry[key] += getattr(tally, key)
        for reason, count in tally.reasons.items():
            entry["reasons"][reason] = entry["reasons"].get(reason, 0) + count


class Bench:
    """Runs the measurements against a set of targets and records them."""

    def __init__(self, profile: Profile, upstream: procs.Service, recorder: Recorder) -> None:
        self.profile = profile
        self.upstream = upstream
        self.recorder = recorder

    def probes(self, target: Target) -> dict[str, Callable[[], float]]:
        """CPU-seconds readers: the target's server tree, the upstream, this load generator."""
        own_pid = os.getpid()
        found: dict[str, Callable[[], float]] = {"server": target.server.cpu_seconds,
                                                 "loadgen": lambda: procs.cpu_seconds(own_pid)}
        if target.server is not self.upstream:
            found["upstream"] = self.upstream.cpu_seconds
        return found

    async def latency(self, phase: str, target: Target) -> None:
        """c=1 non-streamed chat: p50 and p99 of the per-request wall time."""
        request, check = target.chat()
        p = self.profile
        result = await client.sequential(target.port, request, check, p.latency_warmup_s, p.latency_window_s,
                                         200_000, self.probes(target))
        self.recorder.tally(phase, target.name, "chat c=1", result.tally)
        lat = sorted(result.latencies)
        self.recorder.add(phase, target.name, "lat_p50_ms", percentile(lat, 50) * 1e3 if lat else None)
        self.recorder.add(phase, target.name, "lat_p99_ms", percentile(lat, 99) * 1e3 if lat else None)
        self.recorder.add(phase, target.name, "lat_n", len(lat))

    def scenario_request(self, target: Target, scenario: str) -> tuple[bytes, Check]:
        """Request bytes and check for a throughput scenario name."""
        if scenario == "chat":
            return target.chat()
        if scenario == "stream64":
            return target.stream(64)
        if scenario == "embed16":
            return target.embed(16)
        raise ValueError(scenario)

    async def throughput(self, phase: str, target: Target, scenario: str, concurrency: int) -> None:
        """Closed-loop throughput at `concurrency`, with CPU per request of each process."""
        request, check = self.scenario_request(target, scenario)
        p = self.profile
        result = await client.closed_loop(target.port, request, check, concurrency, p.throughput_warmup_s,
                                          p.throughput_window_s, p.throughput_min_completions,
                                          p.throughput_max_window_s, self.probes(target))
        self.recorder.tally(phase, target.name, f"{scenario} c={concurrency}", result.tally)
        key = f"{scenario}_c{concurrency}"
        self.recorder.add(phase, target.name, f"{key}_rps", result.rate)
        for probe, seconds in result.cpu.items():
            per_request = seconds / result.completions * 1e6 if result.completions else None
            self.recorder.add(phase, target.name, f"{key}_{probe}_cpu_us", per_request)

    async def long_stream(self, phase: str, target: Target) -> None:
        """512-chunk streams back to back: time to first line, total time, server CPU per chunk.

        A run of 16-chunk streams gives the marginal CPU cost of one more chunk:
        (CPU per 512-chunk stream - CPU per 16-chunk stream) / 496.
        """
        p = self.profile
        per_stream_cpu: dict[int, float | None] = {}
        for chunks in (p.long_stream_chunks, p.short_stream_chunks):
            request, check = target.stream(chunks)
            window = p.stream_window_s if chunks == p.long_stream_chunks else p.stream_window_s / 2
            result = await client.sequential(target.port, request, check, 0.2, window, 100_000,
                                             {"server": target.server.cpu_seconds}, track_first_line=True)
            self.recorder.tally(phase, target.name, f"stream{chunks} c=1", result.tally)
            count = len(result.latencies)
            per_stream_cpu[chunks] = result.cpu.get("server", 0.0) / count if count else None
            if chunks == p.long_stream_chunks:
                self.recorder.add(phase, target.name, "s512_ttfb_ms", median_or_none(result.first_line, 1e3))
                self.recorder.add(phase, target.name, "s512_total_ms", median_or_none(result.latencies, 1e3))
                cpu = per_stream_cpu[chunks]
                self.recorder.add(phase, target.name, "s512_cpu_us_per_chunk",
                                  cpu / chunks * 1e6 if cpu is not None else None)
            else:
                self.recorder.add(phase, target.name, "s16_total_ms", median_or_none(result.latencies, 1e3))
        long_cpu, short_cpu = per_stream_cpu[p.long_stream_chunks], per_stream_cpu[p.short_stream_chunks]
        marginal = None
        if long_cpu is not None and short_cpu is not None:
            marginal = (long_cpu - short_cpu) / (p.long_stream_chunks - p.short_stream_chunks) * 1e6
        self.recorder.add(phase, target.name, "s512_marginal_cpu_us_per_chunk", marginal)

    async def warm_up(self, target: Target) -> None:
        """A few seconds of every request kind on a fresh server (recorded under "warmup")."""
        for scenario in THROUGHPUT_SCENARIOS:
            request, check = self.scenario_request(target, scenario)
            result = await client.closed_loop(target.port, request, check, 8, 0.1, 0.3, 0, 1.0, {})
            self.recorder.tally("warmup", target.name, f"warm-up {scenario}", result.tally)

    async def slow_streams(self, phase: str, target: Target) -> None:
        """N concurrent slow streams (one chunk per 100 ms): peak RSS/PSS, all complete and valid."""
        p = self.profile
        request, check = target.stream(p.slow_chunks, slow=True)
        idle = procs.MemoryPeak(target.server.pid)
        idle.sample()
        timeout = p.slow_chunks * 0.1 + p.slow_grace_s
        with procs.MemoryPeak(target.server.pid) as memory:
            result = await client.hold_concurrent(target.port, request, check, p.slow_streams, p.slow_ramp_batch,
                                                  p.slow_ramp_pause_s, timeout)
        self.recorder.tally(phase, target.name, f"slow x{p.slow_streams}", result.tally)
        self.recorder.breakdown.setdefault(target.name, []).append(memory.peak_breakdown)
        mib = 1024 * 1024
        for metric, value in (
            ("slow_before_rss_mib", idle.peak_rss / mib), ("slow_peak_rss_mib", memory.peak_rss / mib),
            ("slow_peak_pss_mib", memory.peak_pss / mib), ("slow_processes", memory.peak_processes),
            ("slow_valid", result.tally.valid), ("slow_peak_streaming", result.peak_streaming),
            ("slow_wall_s", result.wall_s),
        ):
            self.recorder.add(phase, target.name, metric, value)


async def profile_gateway(bench: Bench, gateway: Target, log_dir: Path, seconds: float) -> dict[str, str]:
    """py-spy the gateway's worker under chat c=32 and under 512-chunk streams; text summaries."""
    py_spy = bench_profile.find_py_spy()
    if py_spy is None:
        return {"note": "py-spy not installed (pip install py-spy): no profile"}
    children = procs.children_of(gateway.server.pid)
    worker = children[0] if children else gateway.server.pid
    p = bench.profile
    cases = [("chat c=32", *gateway.chat(), 32),
             (f"{p.long_stream_chunks}-chunk stream c=1", *gateway.stream(p.long_stream_chunks), 1)]
    summaries = {}
    for name, request, check, concurrency in cases:
        log(f"py-spy: {name}")
        raw = log_dir / f"py-spy-{name.split()[0]}.txt"
        recorder = bench_profile.start_recording(py_spy, worker, seconds, raw)
        result = await client.closed_loop(gateway.port, request, check, concurrency, 0.3, seconds + 1.0, 0,
                                          seconds + 1.0, {})
        bench.recorder.tally("profile", gateway.name, name, result.tally)
        _, stderr = await asyncio.to_thread(recorder.communicate)
        if recorder.returncode != 0 or not raw.exists():
            summaries[name] = f"py-spy failed: {stderr.decode(errors='replace')[-300:]}"
        else:
            summaries[name] = bench_profile.summarise(raw)
    return summaries


def percentile(ordered: list[float], pct: float) -> float:
    """Nearest-rank percentile of an ascending list."""
    index = min(len(ordered) - 1, max(0, round(pct / 100 * len(ordered) + 0.5) - 1))
    return ordered[index]


def median_or_none(values: list[float], scale: float) -> float | None:
    """Median times `scale`, or None for no values."""
    return statistics.median(values) * scale if values else None


async def guarded(what: str, coro: object) -> None:
    """Run one measurement; a failure is logged and leaves a gap instead of ending the run."""
    try:
        await coro  # type: ignore[misc]
    except Exception as exc:  # noqa: BLE001 - keep benchmarking the other targets
        log(f"FAILED {what}: {type(exc).__name__}: {exc}")


async def main_phase(bench: Bench, all_targets: list[Target]) -> None:
    """The pinned comparison: latency, throughput, long streams; `repeats` times, interleaved."""
    p = bench.profile
    for repeat in range(p.repeats):
        log(f"repeat {repeat + 1}/{p.repeats}: latency c=1")
        for target in all_targets:
            await guarded(f"latency {target.name}", bench.latency("main", target))
        for scenario in THROUGHPUT_SCENARIOS:
            for concurrency in p.concurrencies:
                log(f"repeat {repeat + 1}/{p.repeats}: {scenario} c={concurrency}")
                for target in all_targets:
                    await guarded(f"{scenario} c={concurrency} {target.name}",
                                  bench.throughput("main", target, scenario, concurrency))
        log(f"repeat {repeat + 1}/{p.repeats}: {p.long_stream_chunks}-chunk streams")
        for target in all_targets:
            await guarded(f"long stream {target.name}", bench.long_stream("main", target))


async def slow_phase(bench: Bench, all_targets: list[Target]) -> None:
    """Slow streams, each repeat on a freshly started and warmed-up server.

    A fresh server per repeat makes the repeats independent (a process that once held 1,000
    streams keeps some of that memory, and ollama-openai-proxy's circuit breaker stays open
    after failures). The gateway and the floor (whose peak RSS is a target's yardstick) run
    every repeat; the direct path and the proxy are references: `slow_reference_repeats`.
    """
    p = bench.profile
    for repeat in range(p.repeats):
        log(f"repeat {repeat + 1}/{p.repeats}: {p.slow_streams} slow streams")
        for target in all_targets:
            if target.name not in ("gateway", "floor") and repeat >= p.slow_reference_repeats:
                continue
            await guarded(f"restart {target.name}", asyncio.to_thread(target.restart))
            await guarded(f"warm-up {target.name}", bench.warm_up(target))
            await guarded(f"slow streams {target.name}", bench.slow_streams("main", target))


async def multi_phase(bench: Bench, all_targets: list[Target]) -> None:
    """Unpinned: direct, the 1-worker gateway and the N-worker gateway, chat/stream/embed."""
    p = bench.profile
    for repeat in range(p.repeats):
        for scenario in THROUGHPUT_SCENARIOS:
            log(f"multi-worker repeat {repeat + 1}/{p.repeats}: {scenario} c={p.multi_concurrency}")
            for target in all_targets:
                await guarded(f"multi {scenario} {target.name}",
                              bench.throughput("multi", target, scenario, p.multi_concurrency))


def run_async(coro: Coroutine[Any, Any, T]) -> T:
    """Run on uvloop when available (the load generator's own speed matters)."""
    try:
        import uvloop
    except ImportError:
        return asyncio.run(coro)
    return uvloop.run(coro)


def run_profile(bench: Bench, gateway: Target, log_dir: Path) -> dict[str, str]:
    """Profile the (freshly restarted, warmed-up) 1-worker gateway."""
    gateway.restart()

    async def profile() -> dict[str, str]:
        await bench.warm_up(gateway)
        return await profile_gateway(bench, gateway, log_dir, seconds=6.0)

    return run_async(profile())


def plan_cores() -> tuple[set[int] | None, set[int] | None, str]:
    """(gateway cores, upstream + load generator cores, description)."""
    available = sorted(os.sched_getaffinity(0))
    if len(available) < 2:
        return None, None, "only one core available: nothing pinned (numbers mix all processes)"
    gateway, rest = {available[0]}, set(available[1:])
    return gateway, rest, (f"gateway, floor and proxy pinned to core {available[0]}; fake upstream and load generator "
                           f"on core(s) {','.join(map(str, sorted(rest)))}")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Command-line options."""
    parser = argparse.ArgumentParser(description="Benchmark the Ollama gateway (see the module docstring).")
    parser.add_argument("--quick", action="store_true", help="smoke run: 1 repeat, short windows, 200 slow streams")
    parser.add_argument("--json", type=Path, metavar="FILE", help="also write raw results as JSON")
    parser.add_argument("--repeats", type=int, help="repeats per measurement (default 3, --quick 1)")
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1, help="workers for the multi-worker run")
    parser.add_argument("--no-proxy", action="store_true", help="skip ollama-openai-proxy")
    parser.add_argument("--no-floor", action="store_true", help="skip the floor (bench_floor.py)")
    parser.add_argument("--today-chat-rps", type=float, default=goals.TODAY_CHAT_C32_RPS,
                        help="the gateway's chat req/s at c=32 before issue 10, for the '4 x today' target "
                             "(default: %(default)s, the README's run of 2026-11-25)")
    parser.add_argument("--no-multi", action="store_true", help="skip the multi-worker run")
    parser.add_argument("--py-spy", action="store_true",
                        help="also profile the gateway worker with py-spy (chat c=32, long stream) and print top frames")
    parser.add_argument("--gateway-bin", help="ollama-gateway executable (default: next to this Python)")
    parser.add_argument("--cache-dir", type=Path, default=REPO / ".bench",
                        help="where the ollama-openai-proxy venv lives (default: .bench/, git-ignored)")
    parser.add_argument("--log-dir", type=Path,
                        help="server logs, route map, py-spy output (default: .bench/run-YYYYmmdd-HHMMSS)")
    return parser.parse_args(argv)


def use_project_python() -> None:
    """Re-run under the repository's .venv Python if started with another interpreter."""
    venv = REPO / ".venv"
    python = venv / "bin" / "python"
    if python.exists() and Path(sys.prefix).resolve() != venv.resolve():
        os.execv(str(python), [str(python), os.path.abspath(__file__), *sys.argv[1:]])


def main(argv: list[str] | None = None) -> int:
    """Set up, measure, report; always stop what was started."""
    args = parse_args(argv)
    if argv is None:
        use_project_python()
    profile = Profile.quick() if args.quick else Profile()
    if args.repeats:
        profile.repeats = args.repeats
    log_dir = args.log_dir or args.cache_dir / time.strftime("run-%Y%m%d-%H%M%S")
    log_dir.mkdir(parents=True, exist_ok=True)
    fd_limit = procs.raise_fd_limit()
    gateway_cores, loadgen_cores, core_plan = plan_cores()
    gateway_command = targets.find_gateway_command(args.gateway_bin)
    notes: list[str] = [core_plan]
    if fd_limit < profile.slow_streams * 3:
        notes.append(f"open-file limit is only {fd_limit}: slow streams may fail for that reason")
    if gateway_command is None:
        notes.append("gateway not found (no ollama-gateway next to this Python, no gateway/cli.py): skipped")
    proxy_install = None
    if not args.no_proxy:
        try:
            proxy_install = targets.ensure_proxy(args.cache_dir)
        except (OSError, subprocess.CalledProcessError) as exc:
            notes.append(f"ollama-openai-proxy could not be installed ({exc}; see {args.cache_dir}/pip.log): skipped")

    upstream: procs.Service | None = None
    all_targets: list[Target] = []
    recorder = Recorder()
    started = time.monotonic()
    machine_load = procs.MachineLoad()
    profiles: dict[str, str] = {}
    try:
        upstream = targets.start_upstream(procs.free_port(), log_dir, loadgen_cores)
        direct = Target("direct", "direct (client→upstream)", "openai", upstream)
        all_targets.append(direct)
        routes = targets.write_routes(log_dir, upstream.port)
        main_targets = [direct]
        gateway: Target | None = None
        if gateway_command is not None:
            gateway_port = procs.free_port()

            def start_gateway_1w() -> procs.Service:
                return targets.start_gateway(gateway_command, routes, gateway_port, 1, log_dir, gateway_cores,
                                             "gateway-1w")

            gateway = Target("gateway", "gateway, 1 worker", "ollama", start_gateway_1w(), start_gateway_1w)
            main_targets.append(gateway)
        if not args.no_floor:
            floor_port = procs.free_port()

            def start_floor() -> procs.Service:
                return targets.start_floor(floor_port, upstream.port, log_dir, gateway_cores)

            main_targets.append(Target("floor", "floor, 1 worker", "ollama", start_floor(), start_floor))
        if proxy_install is not None:
            proxy_port = procs.free_port()

            def start_proxy() -> procs.Service:
                return targets.start_proxy(proxy_install, proxy_port, upstream.port, log_dir, gateway_cores)

            main_targets.append(Target("proxy", f"ollama-openai-proxy {proxy_install.version}", "ollama",
                                       start_proxy(), start_proxy))
        all_targets[:] = main_targets
        if loadgen_cores:
            os.sched_setaffinity(0, loadgen_cores)
        bench = Bench(profile, upstream, recorder)
        log(f"targets: {', '.join(t.name for t in main_targets)}; logs in {log_dir}")
        run_async(main_phase(bench, main_targets))
        run_async(slow_phase(bench, main_targets))
        if gateway is not None and args.py_spy:
            profiles.update(run_profile(bench, gateway, log_dir))

        multi_workers = args.workers
        if gateway is not None and gateway_command is not None and not args.no_multi:
            log("multi-worker run: restarting the 1-worker gateway, starting the N-worker one, unpinning all")
            gateway.restart()
            os.sched_setaffinity(0, set(range(os.cpu_count() or 1)))
            procs.set_affinity(upstream.pid, None)
            procs.set_affinity(gateway.server.pid, None)
            gateway_n = Target("gateway_n", f"gateway, {multi_workers} workers", "ollama",
                               targets.start_gateway(gateway_command, routes, procs.free_port(), multi_workers,
                                                     log_dir, None, f"gateway-{multi_workers}w"))
            all_targets.append(gateway_n)
            run_async(multi_phase(bench, [direct, gateway, gateway_n]))
            notes.append(f"multi-worker run: nothing pinned; on this {os.cpu_count()}-core machine the load "
                         "generator and the fake upstream share the cores with the gateway workers")
    finally:
        for target in reversed(all_targets):
            if target.server is not upstream:
                target.server.stop()
        if upstream is not None:
            upstream.stop()

    load = machine_load.finish()
    notes.append(f"other processes on this machine used {load['other_cpu_s']:.0f} CPU-seconds during the run "
                 f"({load['other_share']:.0%} of its capacity; steal {load['steal_share']:.1%}): the more, the "
                 "noisier the absolute numbers")
    results = {
        "machine_load": load,
        "meta": report.machine_info(proxy_install.version if proxy_install else None, gateway_command),
        "profile": asdict(profile),
        "workers": args.workers,
        "today_chat_c32_rps": args.today_chat_rps,
        "elapsed_s": time.monotonic() - started,
        "notes": notes,
        "runs": recorder.runs,
        "validity": recorder.validity,
        "rss_at_peak_by_process": recorder.breakdown,
        "profiles": profiles,
        "log_dir": str(log_dir),
    }
    results["goals"] = [{**asdict(goal), "verdict": goal.verdict} for goal in goals.judge_run(results)]
    if args.json:
        args.json.write_text(json.dumps(results, indent=2, sort_keys=True))
        log(f"raw results written to {args.json}")
    print(report.render(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
