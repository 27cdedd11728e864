"""Turn recorded benchmark runs into markdown: medians, min-max, per-repeat ratios, validity.

Ratios are computed per repeat (gateway and the other target measured back to back in the
same repeat) and then summarised, so slow drift of a noisy machine largely cancels out.
Every ratio is "gateway ÷ other": above 1 is better for throughput (↑), below 1 is better for
times, CPU and memory (↓).
"""

from __future__ import annotations

import os
import platform
import statistics
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

Values = list[float | None]
MAIN_TARGETS = ("direct", "gateway", "proxy")
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


# --- statistics --------------------------------------------------------------------------------------------------

def present(values: Values) -> list[float]:
    """The values that were measured."""
    return [v for v in values if v is not None]


def pairwise(a: Values, b: Values, combine: Callable[[float, float], float | None]) -> Values:
    """Combine two per-repeat series element by element (None where either is missing)."""
    out: Values = []
    for x, y in zip(a, b):
        out.append(None if x is None or y is None else combine(x, y))
    return out


def ratio(x: float, y: float) -> float | None:
    """x ÷ y, None when y is zero."""
    return x / y if y else None


def fmt_number(value: float) -> str:
    """Three significant figures or so, thousands separated."""
    magnitude = abs(value)
    if magnitude >= 1000:
        return f"{value:,.0f}"
    if magnitude >= 100:
        return f"{value:.0f}"
    if magnitude >= 10:
        return f"{value:.1f}"
    if magnitude >= 1:
        return f"{value:.2f}"
    return f"{value:.3f}"


def cell(values: Values, suffix: str = "") -> str:
    """"median (min–max)" of the measured values; "—" if none."""
    found = present(values)
    if not found:
        return "—"
    middle = fmt_number(statistics.median(found)) + suffix
    if len(found) == 1:
        return middle
    return f"{middle} ({fmt_number(min(found))}–{fmt_number(max(found))})"


def median(values: Values) -> float | None:
    """Median of the measured values, or None."""
    found = present(values)
    return statistics.median(found) if found else None


# --- tables ------------------------------------------------------------------------------------------------------

class Runs:
    """Read access to one phase of recorded runs."""

    def __init__(self, results: dict[str, Any], phase: str) -> None:
        self.data = results.get("runs", {}).get(phase, {})

    def get(self, target: str, metric: str) -> Values:
        """Per-repeat values (empty if never measured)."""
        values: Values = self.data.get(target, {}).get(metric, [])
        return values

    def has(self, target: str) -> bool:
        """Whether `target` was measured at all in this phase."""
        return target in self.data


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
        d, g, p = (runs.get(t, metric) for t in MAIN_TARGETS)
        rows.append([label, cell(d), cell(g), cell(p),
                     cell(pairwise(g, d, ratio), "×") if ratio_to_direct else "—",
                     cell(pairwise(g, p, ratio), "×")])

    def added_row(label: str, metric: str, scale: float = 1.0) -> None:
        d = runs.get("direct", metric)
        g = pairwise(runs.get("gateway", metric), d, lambda x, y: (x - y) * scale)
        p = pairwise(runs.get("proxy", metric), d, lambda x, y: (x - y) * scale)
        rows.append([label, "—", cell(g), cell(p), "—", cell(pairwise(g, p, ratio), "×")])

    value_row("chat c=1 latency p50 (ms) ↓", "lat_p50_ms")
    value_row("chat c=1 latency p99 (ms) ↓", "lat_p99_ms")
    added_row("**added latency p50** vs direct (ms) ↓", "lat_p50_ms")
    added_row("added latency p99 vs direct (ms) ↓", "lat_p99_ms")
    for scenario, unit in (("chat", "req/s"), ("stream64", "streams/s"), ("embed16", "req/s")):
        name = {"chat": "chat", "stream64": "stream, 64 chunks", "embed16": "embed, 16 inputs"}[scenario]
        for concurrency in profile.get("concurrencies", (32, 128)):
            value_row(f"**{name}** c={concurrency} ({unit}) ↑", f"{scenario}_c{concurrency}_rps")
    value_row(f"{chunks}-chunk stream: time to first line (ms) ↓", "s512_ttfb_ms")
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
        gateway = runs.get("gateway", f"{key}_server_cpu_us")
        proxy = runs.get("proxy", f"{key}_server_cpu_us")
        capacity = [1e6 / v if v else None for v in gateway]
        rows.append([f"{name} c={concurrency}", cell(upstream), cell(loadgen), cell(gateway), cell(capacity),
                     cell(proxy), cell(pairwise(gateway, proxy, ratio), "×")])
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
    for target, scenarios in validity.items():
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


def targets_section(main: Runs, multi: Runs, results: dict[str, Any]) -> str:
    """The issue's targets, judged on this run's medians (informational, never asserted)."""
    profile = results.get("profile", {})
    chunks = profile.get("long_stream_chunks", 512)
    slow_n = profile.get("slow_streams", 1000)
    workers = results.get("workers", 1)
    lines = []

    def verdict(label: str, value: float | None, ok: Callable[[float], bool], shown: str) -> None:
        mark = "n/a" if value is None else ("✅" if ok(value) else "❌")
        lines.append(f"- {mark} {label}: {shown if value is not None else 'not measured'}")

    added = median(pairwise(main.get("gateway", "lat_p50_ms"), main.get("direct", "lat_p50_ms"), lambda x, y: x - y))
    verdict("added latency p50 ≤ 0.3 ms at c=1", added, lambda v: v <= 0.3, f"{fmt_number(added or 0)} ms")
    for concurrency in profile.get("concurrencies", (32, 128)):
        rate = median(main.get("gateway", f"chat_c{concurrency}_rps"))
        verdict(f"non-streaming chat ≥ 3,000 req/s (c={concurrency})", rate, lambda v: v >= 3000,
                f"{fmt_number(rate or 0)} req/s")
        times = median(pairwise(main.get("gateway", f"chat_c{concurrency}_rps"),
                                main.get("proxy", f"chat_c{concurrency}_rps"), ratio))
        verdict(f"≥ 10× ollama-openai-proxy (chat c={concurrency})", times, lambda v: v >= 10,
                f"{fmt_number(times or 0)}×")
    per_chunk = median(pairwise(main.get("gateway", "s512_total_ms"), main.get("direct", "s512_total_ms"),
                                lambda x, y: (x - y) * 1000 / chunks))
    verdict("streaming overhead ≤ 8 µs per chunk (wall, vs direct)", per_chunk, lambda v: v <= 8,
            f"{fmt_number(per_chunk or 0)} µs")
    cpu_chunk = median(main.get("gateway", "s512_marginal_cpu_us_per_chunk"))
    verdict("streaming overhead ≤ 8 µs per chunk (gateway CPU, marginal)", cpu_chunk, lambda v: v <= 8,
            f"{fmt_number(cpu_chunk or 0)} µs")
    rss = median(main.get("gateway", "slow_peak_rss_mib"))
    verdict(f"{slow_n} slow streams in ≤ 150 MiB total RSS", rss, lambda v: v <= 150, f"{fmt_number(rss or 0)} MiB")
    valid = present(main.get("gateway", "slow_valid"))
    worst = min(valid) if valid else None
    verdict(f"all {slow_n} slow streams complete and valid (every repeat)", worst, lambda v: v >= slow_n,
            f"worst repeat {fmt_number(worst or 0)} of {slow_n}")
    scale = median(pairwise(multi.get("gateway_n", f"chat_c{profile.get('multi_concurrency', 128)}_rps"),
                            main.get("gateway", f"chat_c{profile.get('multi_concurrency', 128)}_rps"), ratio))
    verdict(f"{workers} workers scale ≥ 0.8 × {workers} (chat, vs pinned 1 worker)", scale,
            lambda v: v >= 0.8 * workers, f"{fmt_number(scale or 0)}× (see the note on shared cores)")
    return "\n".join(lines)


def headroom_lines(main: Runs, results: dict[str, Any]) -> list[str]:
    """Is the load generator (plus fake upstream) far from being the bottleneck? And memory detail."""
    lines = []
    for concurrency in results.get("profile", {}).get("concurrencies", (32,))[:1]:
        direct = median(main.get("direct", f"chat_c{concurrency}_rps"))
        gateway = median(main.get("gateway", f"chat_c{concurrency}_rps"))
        loadgen = median(main.get("direct", f"chat_c{concurrency}_loadgen_cpu_us"))
        upstream = median(main.get("direct", f"chat_c{concurrency}_server_cpu_us"))
        if direct and gateway and loadgen and upstream:
            lines.append(
                f"Headroom: load generator + fake upstream together on one core do {fmt_number(direct)} chat req/s "
                f"(c={concurrency}), {fmt_number(direct / gateway)}× the gateway's rate; per request the fake "
                f"upstream spends {fmt_number(upstream)} µs CPU and the load generator (including the validity "
                f"check) {fmt_number(loadgen)} µs.")
    for target, label in (("gateway", "gateway"), ("proxy", "ollama-openai-proxy")):
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
         "↑ higher is better, ↓ lower is better. Absolute numbers on a shared machine are noisy; "
         "the ratios from one run are what count."),
        "",
    ]
    parts += [f"- {note}" for note in results.get("notes", [])]
    parts += ["", table(["metric", "direct", "gateway, 1 worker", "ollama-openai-proxy",
                         "gateway ÷ direct", "gateway ÷ proxy"], main_rows(main, results)), ""]
    parts += [
        ("¹ CPU time (user+system, /proc) of the server's process tree during the timed window; for "
         "\"direct\" the server is the fake upstream. The marginal figure, (CPU per 512-chunk stream − CPU "
         "per 16-chunk stream) ÷ 496, leaves out the per-request cost."),
        ("² RSS summed over the process tree (Granian: main process + worker), sampled every 100 ms; "
         "PSS counts shared pages once. The \"direct\" column is the fake upstream's. Each slow-stream "
         "repeat runs on a freshly started, warmed-up server; the direct path and ollama-openai-proxy are "
         "references and run it once (`slow_reference_repeats`)."),
        "",
        *headroom_lines(main, results),
        "### CPU cost per request (µs, less noisy than wall-clock rates)",
        "",
    ]
    for concurrency in profile.get("concurrencies", (32, 128))[:1]:
        parts += [table(["scenario", "fake upstream", "load generator", "gateway", "⇒ gateway req/s per core",
                         "ollama-openai-proxy", "gateway ÷ proxy"], cpu_rows(main, concurrency)), ""]
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
              "### Targets (issue item 2; informational, judged on this run's medians)", "",
              targets_section(main, multi, results), ""]
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
