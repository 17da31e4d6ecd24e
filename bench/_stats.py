"""Numbers over rounds: median and spread, least-squares slope, percentiles."""

from __future__ import annotations

import statistics
from collections.abc import Iterable, Sequence


def summary(values: Iterable[float]) -> dict[str, float]:
    """Median and spread (min, max) of the rounds."""
    data = sorted(values)
    if not data:
        return {"median": float("nan"), "min": float("nan"), "max": float("nan"), "n": 0}
    return {"median": statistics.median(data), "min": data[0], "max": data[-1], "n": len(data)}


def slope(xs: Sequence[float], ys: Sequence[float]) -> float:
    """Least-squares slope of ys over xs."""
    if len(xs) < 2:
        return float("nan")
    return statistics.linear_regression(xs, ys).slope


def percentile(sorted_values: Sequence[float], q: float) -> float:
    if not sorted_values:
        return float("nan")
    index = min(len(sorted_values) - 1, max(0, round(q / 100 * (len(sorted_values) - 1))))
    return sorted_values[index]
