"""Summaries of recorded benchmark runs: per-repeat series, their medians, ratios and display.

A run records, per phase, target and metric, one value per repeat (None where a measurement
failed). Ratios and differences are taken per repeat (both targets measured back to back in the
same repeat) and then summarised, so slow drift of a noisy machine largely cancels out.
"""

from __future__ import annotations

import statistics
from collections.abc import Callable
from typing import Any

Values = list[float | None]


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


def difference(x: float, y: float) -> float:
    """x − y."""
    return x - y


def median(values: Values) -> float | None:
    """Median of the measured values, or None."""
    found = present(values)
    return statistics.median(found) if found else None


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
