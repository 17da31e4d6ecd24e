"""Numbers over rounds: median and spread, least-squares slope, percentiles."""

from __future__ import annotations

import statistics
from collections.abc import Callable, Iterable, Sequence
from typing import Any


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


def plateaus_summary(
    rounds: Sequence[dict[str, Any]],
    kinds: Sequence[str],
    connected: Callable[[dict[str, Any]], bool],
) -> dict[str, Any]:
    """What the idle-socket benchmarks (idle, peers) both sum up of their rounds' plateaus,
    by kind: the last step's handshake rate and longest ``/healthz`` stall, the handshakes
    refused over every step, and whether ``connected`` holds of every plateau."""
    return {
        "handshake_rate": {
            k: summary(r["plateaus"][-1]["handshake_rate"] for r in rounds if r["kind"] == k)
            for k in kinds
        },
        "loop_stall_max_ms": {
            k: summary(r["plateaus"][-1]["loop_stall"]["max_ms"] for r in rounds if r["kind"] == k)
            for k in kinds
        },
        "handshake_refusals": {
            k: sum(
                sum(p["handshake_failed"].values())
                for r in rounds
                if r["kind"] == k
                for p in r["plateaus"]
            )
            for k in kinds
        },
        "all_connected": all(connected(p) for r in rounds for p in r["plateaus"]),
    }
