"""Turn recorded benchmark runs into markdown: medians, min-max, per-repeat ratios, validity, goals.

Ratios are computed per repeat (gateway and the other target measured back to back in the
same repeat) and then summarised, so slow drift of a noisy machine largely cancels out
(`bench_stats`). Every ratio is "gateway ÷ other": above 1 is better for throughput (↑), below
1 is better for times, CPU and memory (↓). The goals (the issues' targets) come from `bench_goals`.
"""

from __future__ import annotations

import os
import platform
import subprocess
import sys
from pathlib import Path
from typing import Any

from bench_goals import judge_run
from bench_stats import Runs, cell, fmt_number, median, pairwise, ratio

MAIN_TARGETS = ("direct", "gateway", "floor", "proxy")
COMPARED = ("direct", "floor", "proxy")
PACKAGES = ("ollama-gateway", "granian", "fastapi", "starlette", "pydantic", "httpx", "uvloop", "orjson")


# --- machine ---------------------------------------------------------------------------------------------------

def machine_info(proxy_version: str | None, gateway_command: list[str] | None) -> dict[str, Any]:
    """CPU, cores, memory, OS, Python and package versions, git revision."""
    from importlib import metadata

    cpu = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    memory_gib = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    versions = {}
    for name in PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = "-"
    versions["ollama-openai-proxy"] = proxy_version or "-"
    repo = Path(__file__).resolve().parent.parent
    revision = subprocess.run(["git", "-C", str(repo), "describe", "--always", "--dirty"],
                              capture_output=True, text=True, check=False).stdout.strip() or "no commits"
    return {
        "cpu": cpu, "cores": os.cpu_count(), "memory_gib": round(memory_gib, 1),
        "os": f"{platform.system()} {platform.release()}", "python": platform.python_version(),
        "packages": versions, "git": revision, "gateway_command": gateway_command,
        "argv": sys.argv,
    }


# --- tables ------------------------------------------------------------------------------------------------------

def table(header: list[str], rows: list[list[str]], text_columns: tuple[int, ...] = (0,)) -> str:
    """A markdown table; numbers right-aligned, `text_columns` left-aligned."""
    rule = ["---" if i in text_columns else "---:" for i in range(len(header))]
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(rule) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def main_rows(runs: Runs, results: dict[str, Any]) -> list[list[str]]:
    """Rows of the main comparison table."""
    profile = results.get("profile", {})
    chunks = profile.get("long_stream_chunks", 512)
    slow_n = profile.get("slow_streams", 1000)
    rows: list[list[str]] = []

    def value_row(label: str, metric: str, ratio_to_direct: bool = True) -> None:
        d, g, f, p = (runs.get(t, metric) for t in MAIN_TARGETS)
        ratios = [cell(pairwise(g, other, ratio), "×") for other in (d, f, p)]
        if not ratio_to_direct:
            ratios[0] = "—"
        rows.append([label, cell(d), cell(g), cell(f), cell(p), *ratios])

    def added_row(label: str, metric: str, scale: float = 1.0) -> None:
        d = runs.get("direct", metric)
        g, f, p = (pairwise(runs.get(t, metric), d, lambda x, y: (x - y) * scale) for t in ("gateway", "floor", "proxy"))
        rows.append([label, "—", cell(g), cell(f), cell(p), "—", cell(pairwise(g, f, ratio), "×"),
                     cell(pairwise(g, p, ratio), "×")])

    value_row("chat c=1 latency p50 (ms) ↓", "lat_p50_ms")
    value_row("chat c=1 latency p99 (ms) ↓", "lat_p99_ms")
    added_row("**added latency p50** vs direct (ms) ↓", "lat_p50_ms")
    added_row("added latency p99 vs direct (ms) ↓", "lat_p99_ms")
    for scenario, unit in (("chat", "req/s"), ("stream64", "streams/s"), ("embed16", "req/s")):
        name = {"chat": "chat", "stream64": "stream, 64 chunks", "embed16": "embed, 16 inputs"}[scenario]
        for concurrency in profile.get("concurrencies", (32, 128)):
            value_row(f"**{name}** c={concurrency} ({unit}) ↑", f"{scenario}_c{concurrency}_rps")
    value_row(f"{chunks}-chunk stream: time to first line (ms) ↓", "s512_ttfb_ms")
    added_row(f"{chunks}-chunk stream: **first line after the direct path's** (ms) ↓", "s512_ttfb_ms")
    value_row(f"{chunks}-chunk stream: total (ms) ↓", "s512_total_ms")
    added_row(f"**added wall time per chunk** ({chunks}-chunk stream, µs) ↓", "s512_total_ms", 1000 / chunks)
    value_row("server CPU per chunk, whole stream (µs) ↓ ¹", "s512_cpu_us_per_chunk")
    value_row("server CPU per extra chunk, 512 vs 16 (µs) ↓ ¹", "s512_marginal_cpu_us_per_chunk")
    value_row(f"{slow_n} slow streams: **peak RSS** of the process tree (MiB) ↓ ²", "slow_peak_rss_mib", False)
    value_row(f"{slow_n} slow streams: peak PSS (MiB) ↓ ²", "slow_peak_pss_mib", False)
    value_row(f"{slow_n} slow streams: RSS just before, after a warm-up (MiB) ↓", "slow_before_rss_mib", False)
    value_row(f"{slow_n} slow streams: **completed and valid** (of {slow_n}) ↑", "slow_valid", False)
    value_row(f"{slow_n} slow streams: most open at one instant ↑", "slow_peak_streaming", False)
    value_row(f"{slow_n} slow streams: wall time (s) ↓", "slow_wall_s", False)
    return rows


def cpu_rows(runs: Runs, concurrency: int) -> list[list[str]]:
    """CPU cost per request at one concurrency, from /proc utime+stime over the timed window."""
    rows = []
    for scenario, name in (("chat", "chat"), ("stream64", "stream, 64 chunks"), ("embed16", "embed, 16 inputs")):
        key = f"{scenario}_c{concurrency}"
        upstream = runs.get("direct", f"{key}_server_cpu_us")
        loadgen = runs.get("direct", f"{key}_loadgen_cpu_us")
        gateway, floor, proxy = (runs.get(t, f"{key}_server_cpu_us") for t in ("gateway", "floor", "proxy"))
        capacity = [1e6 / v if v else None for v in gateway]
        rows.append([f"{name} c={concurrency}", cell(upstream), cell(loadgen), cell(gateway), cell(capacity),
                     cell(floor), cell(proxy), cell(pairwise(gateway, floor, ratio), "×"),
                     cell(pairwise(gateway, proxy, ratio), "×")])
    return rows


def multi_rows(main: Runs, multi: Runs, workers: int, concurrency: int) -> list[list[str]]:
    """The scaling table: unpinned direct, 1 worker and N workers, and their ratios."""
    rows = []
    for scenario, name in (("chat", "chat"), ("stream64", "stream, 64 chunks"), ("embed16", "embed, 16 inputs")):
        metric = f"{scenario}_c{concurrency}_rps"
        direct, one, many = (multi.get(t, metric) for t in ("direct", "gateway", "gateway_n"))
        pinned = main.get("gateway", metric)
        same_phase = pairwise(many, one, ratio)
        vs_pinned = pairwise(many, pinned, ratio)
        rows.append([f"{name} c={concurrency}", cell(direct), cell(pinned), cell(one), cell(many),
                     cell(same_phase, "×"), cell(vs_pinned, "×"),
                     cell([v / workers if v is not None else None for v in vs_pinned])])
    return rows


def validity_section(results: dict[str, Any]) -> str:
    """Per target: responses checked, invalid, errors, and the most common reasons."""
    validity = results.get("validity", {})
    rows, reasons = [], []
    order = [*MAIN_TARGETS, "gateway_n"]
    for target, scenarios in sorted(validity.items(), key=lambda kv: order.index(kv[0]) if kv[0] in order else 99):
        completed = sum(s["completed"] for s in scenarios.values())
        valid = sum(s["valid"] for s in scenarios.values())
        invalid = sum(s["invalid"] for s in scenarios.values())
        errors = sum(s["errors"] for s in scenarios.values())
        bad = [name for name, s in scenarios.items() if s["invalid"] or s["errors"]]
        rows.append([target, f"{completed:,}", f"{valid:,}", f"{invalid:,}", f"{errors:,}", ", ".join(bad) or "none"])
        for name, s in scenarios.items():
            for reason, count in sorted(s["reasons"].items(), key=lambda kv: -kv[1])[:2]:
                reasons.append(f"- {target} / {name}: {count:,}× {reason}")
    text = table(["target", "responses", "valid", "invalid", "transport errors", "scenarios with problems"], rows,
                 text_columns=(0, 5))
    if reasons:
        text += "\n\nMost common problems:\n\n" + "\n".join(reasons[:30])
    return text


def goals_section(results: dict[str, Any]) -> str:
    """The issues' targets, judged PASS/FAIL on this run (`bench_goals`), one list per issue."""
    lines: list[str] = []
    section = None
    for goal in judge_run(results):
        if goal.section != section:
            section = goal.section
            lines += ["", f"{section}:", ""] if lines else [f"{section}:", ""]
        lines.append(f"- **{goal.verdict}** {goal.label}: {goal.shown}")
    return "\n".join(lines)


def headroom_lines(main: Runs, results: dict[str, Any]) -> list[str]:
    """Is the load generator (plus fake upstream) far from being the bottleneck? And memory detail."""
    lines = []
    for concurrency in results.get("profile", {}).get("concurrencies", (32,))[:1]:
        direct = median(main.get("direct", f"chat_c{concurrency}_rps"))
        gateway = median(main.get("gateway", f"chat_c{concurrency}_rps"))
        floor = median(main.get("floor", f"chat_c{concurrency}_rps"))
        loadgen = median(main.get("direct", f"chat_c{concurrency}_loadgen_cpu_us"))
        upstream = median(main.get("direct", f"chat_c{concurrency}_server_cpu_us"))
        if direct and gateway and loadgen and upstream:
            lines.append(
                f"Headroom: load generator + fake upstream together on one core do {fmt_number(direct)} chat req/s "
                f"(c={concurrency}), {fmt_number(direct / gateway)}× the gateway's rate; per request the fake "
                f"upstream spends {fmt_number(upstream)} µs CPU and the load generator (including the validity "
                f"check) {fmt_number(loadgen)} µs."
                + (f" The floor does {fmt_number(floor)} req/s, {fmt_number(direct / floor)}× below that ceiling."
                   if floor else ""))
    for target, label in (("gateway", "gateway"), ("floor", "floor"), ("proxy", "ollama-openai-proxy")):
        snapshots = results.get("rss_at_peak_by_process", {}).get(target) or []
        if snapshots:
            parts = ", ".join(f"{name}: {mib} MiB" for name, mib in snapshots[-1].items())
            lines.append(f"RSS by process at the {label}'s peak (last repeat): {parts}.")
    return [line + "\n" for line in lines]


def render(results: dict[str, Any]) -> str:
    """The whole markdown report."""
    meta = results.get("meta", {})
    profile = results.get("profile", {})
    main, multi = Runs(results, "main"), Runs(results, "multi")
    packages = ", ".join(f"{k} {v}" for k, v in meta.get("packages", {}).items())
    repeats = profile.get("repeats", 1)
    parts = [
        "## Benchmark",
        "",
        (f"Machine: {meta.get('cpu')}, {meta.get('cores')} cores, {meta.get('memory_gib')} GiB, {meta.get('os')}, "
         f"Python {meta.get('python')}. Versions: {packages}. Revision: {meta.get('git')}."),
        "",
        (f"Each cell: median of {repeats} repeat(s) (min–max). Ratios are gateway ÷ other, per repeat. "
         "The floor is a bare FastAPI-on-Granian translator (`scripts/bench_floor.py`) started and pinned "
         "like the gateway: the least this stack can cost. "
         "↑ higher is better, ↓ lower is better. Absolute numbers on a shared machine are noisy; "
         "the ratios from one run are what count."),
        "",
    ]
    parts += [f"- {note}" for note in results.get("notes", [])]
    parts += ["", table(["metric", "direct", "gateway, 1 worker", "floor, 1 worker", "ollama-openai-proxy",
                         "gateway ÷ direct", "gateway ÷ floor", "gateway ÷ proxy"], main_rows(main, results)), ""]
    parts += [
        ("¹ CPU time (user+system, /proc) of the server's process tree during the timed window; for "
         "\"direct\" the server is the fake upstream. The marginal figure, (CPU per 512-chunk stream − CPU "
         "per 16-chunk stream) ÷ 496, leaves out the per-request cost."),
        ("² RSS summed over the process tree (Granian: main process + worker), sampled every 100 ms; "
         "PSS counts shared pages once. The \"direct\" column is the fake upstream's. Each slow-stream "
         "repeat runs on a freshly started, warmed-up server; the gateway and the floor run it every repeat, "
         "the direct path and ollama-openai-proxy are references and run it once (`slow_reference_repeats`)."),
        "",
        *headroom_lines(main, results),
        "### CPU cost per request (µs, less noisy than wall-clock rates)",
        "",
    ]
    for concurrency in profile.get("concurrencies", (32, 128))[:1]:
        parts += [table(["scenario", "fake upstream", "load generator", "gateway", "⇒ gateway req/s per core",
                         "floor", "ollama-openai-proxy", "gateway ÷ floor", "gateway ÷ proxy"],
                        cpu_rows(main, concurrency)), ""]
    if multi.has("gateway_n"):
        workers = results.get("workers", 1)
        concurrency = profile.get("multi_concurrency", 128)
        parts += [
            f"### Scaling: {workers} workers, nothing pinned",
            "",
            table(["scenario", "direct (unpinned)", "1 worker (pinned, main run)", "1 worker (unpinned)",
                   f"{workers} workers", f"{workers}w ÷ 1w (same phase)", f"{workers}w ÷ 1w pinned",
                   f"efficiency (÷ {workers})"], multi_rows(main, multi, workers, concurrency)),
            "",
        ]
    parts += ["### Validity (every response checked)", "", validity_section(results), "",
              "### Targets (informational, judged on this run's medians of per-repeat ratios)", "",
              goals_section(results), ""]
    profiles = results.get("profiles") or {}
    if profiles:
        parts += ["### py-spy profile of the 1-worker gateway", ""]
        for name, text in profiles.items():
            parts += [f"{name}:", "", "```", text, "```", ""]
    parts.append(f"Run took {results.get('elapsed_s', 0):.0f} s; server logs in {results.get('log_dir')}.")
    return "\n".join(parts)


if __name__ == "__main__":
    import json

    # Re-render a saved run: python scripts/bench_report.py results.json
    print(render(json.loads(Path(sys.argv[1]).read_text())))
