"""The issues' performance targets, judged PASS/FAIL on one recorded run (informational only).

Named "goals" here because in `bench_targets.py` a target is a server under test. Each goal is
computed from the run itself: the gateway against the floor (`bench_floor.py`, the bare
translator) or the direct path, as per-repeat ratios or differences of two targets measured back
to back, then the median over the repeats. Nothing asserts on them: a noisy machine moves them.

Issue 10 (the request path, rebuilt) supersedes issue 2's absolute latency, chat-rate and
memory targets; issue 2's targets that issue 10 does not restate are still judged.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from bench_stats import Runs, Values, difference, fmt_number, median, pairwise, present, ratio

# The gateway's chat rate at c=32 before issue 10: the README's quiet-machine run of 2026-11-25
# (518 req/s, one worker pinned). Override with `bench.py --today-chat-rps`.
TODAY_CHAT_C32_RPS = 518.0
CONCURRENCY = 32


@dataclass
class Goal:
    """One target: the measured value (None: not measured) and whether it passes."""

    section: str
    label: str
    value: float | None
    passed: bool | None
    shown: str

    @property
    def verdict(self) -> str:
        """PASS, FAIL or n/a."""
        return "n/a" if self.passed is None else ("PASS" if self.passed else "FAIL")


class Judge:
    """Collects goals for one run."""

    def __init__(self, results: dict[str, Any]) -> None:
        self.results = results
        self.main = Runs(results, "main")
        self.multi = Runs(results, "multi")
        self.goals: list[Goal] = []
        self.section = ""

    def add(self, label: str, values: Values, ok: Callable[[float], bool], shown: Callable[[float], str]) -> None:
        """Judge the median of `values` with `ok`; `shown` describes it."""
        value = median(values)
        if value is None:
            self.goals.append(Goal(self.section, label, None, None, "not measured"))
        else:
            self.goals.append(Goal(self.section, label, value, ok(value), shown(value)))

    def versus(self, target: str, other: str, metric: str, combine: Callable[[float, float], float | None],
               phase: Runs | None = None, other_phase: Runs | None = None) -> Values:
        """Per-repeat `combine(target, other)` of one metric."""
        first, second = phase or self.main, other_phase or phase or self.main
        return pairwise(first.get(target, metric), second.get(other, metric), combine)


def _shown(value: float | None) -> str:
    """A number, or "—" when not measured."""
    return "—" if value is None else fmt_number(value)


def _bad_responses(results: dict[str, Any], target: str) -> list[float | None]:
    """[invalid + errors] over every scenario of `target`, or [] if it never ran."""
    scenarios = results.get("validity", {}).get(target)
    if not scenarios:
        return []
    return [float(sum(s["invalid"] + s["errors"] for s in scenarios.values()))]


def _responses(results: dict[str, Any], target: str) -> int:
    return sum(s["completed"] + s["errors"] for s in results.get("validity", {}).get(target, {}).values())


def issue10(judge: Judge) -> None:
    """Item 5 of issue 10: the gateway against the floor, one worker on one core."""
    results, main = judge.results, judge.main
    judge.section = "issue 10: against the floor (bare translator), one worker on one core"
    c = CONCURRENCY
    for scenario, name in (("chat", "chat"), ("stream64", "stream, 64 chunks"), ("embed16", "embed, 16 inputs")):
        metric = f"{scenario}_c{c}_rps"
        gateway, floor = median(main.get("gateway", metric)), median(main.get("floor", metric))

        def rates(v: float, g: float | None = gateway, f: float | None = floor) -> str:
            return f"{fmt_number(v)}× (gateway {_shown(g)}/s, floor {_shown(f)}/s)"

        judge.add(f"{name} c={c} ≥ 0.8 × the floor", judge.versus("gateway", "floor", metric, ratio),
                  lambda v: v >= 0.8, rates)
    today = float(results.get("today_chat_c32_rps") or TODAY_CHAT_C32_RPS)
    judge.add(f"chat c={c} ≥ 4 × today ({fmt_number(today)} req/s before issue 10)",
              [v / today if v is not None else None for v in main.get("gateway", f"chat_c{c}_rps")],
              lambda v: v >= 4, lambda v: f"{fmt_number(v)}× ({fmt_number(v * today)} req/s)")
    floor_added = median(judge.versus("floor", "direct", "lat_p50_ms", difference))
    judge.add("added latency p50 ≤ the floor's + 0.1 ms (chat c=1)",
              judge.versus("gateway", "floor", "lat_p50_ms", difference), lambda v: v <= 0.1,
              lambda v: f"{v:+.3f} ms over the floor (the floor adds {_shown(floor_added)} ms "
                        "to the direct path)")
    chunks = results.get("profile", {}).get("long_stream_chunks", 512)
    judge.add(f"{chunks}-chunk stream: first line ≤ 0.5 ms after the direct path's",
              judge.versus("gateway", "direct", "s512_ttfb_ms", difference), lambda v: v <= 0.5,
              lambda v: f"{fmt_number(v)} ms after (floor: "
                        f"{_shown(median(judge.versus('floor', 'direct', 's512_ttfb_ms', difference)))} ms)")
    slow_n = results.get("profile", {}).get("slow_streams", 1000)
    valid = present(main.get("gateway", "slow_valid"))
    judge.add(f"{slow_n} slow streams: all complete and valid (every repeat)", [min(valid)] if valid else [],
              lambda v: v >= slow_n, lambda v: f"worst repeat {fmt_number(v)} of {slow_n}")
    floor_rss = median(main.get("floor", "slow_peak_rss_mib"))
    judge.add(f"{slow_n} slow streams: peak RSS ≤ 1.1 × the floor's",
              judge.versus("gateway", "floor", "slow_peak_rss_mib", ratio), lambda v: v <= 1.1,
              lambda v: f"{fmt_number(v)}× (gateway {_shown(median(main.get('gateway', 'slow_peak_rss_mib')))} MiB, "
                        f"floor {_shown(floor_rss)} MiB)")
    for target, label in (("gateway", "every gateway response under load valid (embeddings compared after "
                                      "normalisation)"),
                          ("floor", "every floor response valid too, or its numbers do not count")):

        def bad(v: float, total: int = _responses(results, target)) -> str:
            return f"{v:,.0f} bad of {total:,}"

        judge.add(label, _bad_responses(results, target), lambda v: v == 0, bad)


def issue2(judge: Judge) -> None:
    """Issue 2's targets that issue 10 does not restate."""
    results, main, multi = judge.results, judge.main, judge.multi
    profile = results.get("profile", {})
    judge.section = "issue 2, not superseded"
    for c in profile.get("concurrencies", (32, 128)):
        judge.add(f"≥ 10× ollama-openai-proxy (chat c={c})", judge.versus("gateway", "proxy", f"chat_c{c}_rps", ratio),
                  lambda v: v >= 10, lambda v: f"{fmt_number(v)}×")
    chunks = profile.get("long_stream_chunks", 512)
    judge.add("streaming overhead ≤ 8 µs per chunk (wall, vs direct)",
              judge.versus("gateway", "direct", "s512_total_ms", lambda x, y: (x - y) * 1000 / chunks),
              lambda v: v <= 8, lambda v: f"{fmt_number(v)} µs")
    judge.add("streaming overhead ≤ 8 µs per chunk (gateway CPU, marginal)",
              main.get("gateway", "s512_marginal_cpu_us_per_chunk"), lambda v: v <= 8, lambda v: f"{fmt_number(v)} µs")
    workers = results.get("workers", 1)
    metric = f"chat_c{profile.get('multi_concurrency', 128)}_rps"
    judge.add(f"{workers} workers scale ≥ 0.8 × {workers} (chat, vs pinned 1 worker)",
              judge.versus("gateway_n", "gateway", metric, ratio, multi, main), lambda v: v >= 0.8 * workers,
              lambda v: f"{fmt_number(v)}× (see the note on shared cores)")


def judge_run(results: dict[str, Any]) -> list[Goal]:
    """Every goal, in report order."""
    judge = Judge(results)
    issue10(judge)
    issue2(judge)
    return judge.goals
