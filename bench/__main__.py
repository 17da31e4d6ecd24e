"""``python -m bench [--quick] [--out DIR] [NAME ...]``: runs benchmarks, then writes
``results.json``, ``RESULTS.md`` and ``results.png`` into the output folder.

A run of some benchmarks keeps the figures of the others already in ``results.json``,
so the report always has every section. ``--quick`` runs tiny sizes (a few seconds
each, for the tests) and writes into ``bench/.work/quick`` unless told otherwise, so
the committed results are never replaced by figures too small to mean anything.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from . import _harness as h
from . import (
    capacity,
    cleanup,
    fanout,
    idle,
    profile,
    reclaim,
    redis_memory,
    report,
    rest,
    storm,
)

BENCHMARKS: dict[str, tuple[Callable[[Any], dict[str, Any]], Any, Any]] = {
    "idle": (idle.run, idle.FULL, idle.QUICK),
    "capacity": (capacity.run, capacity.FULL, capacity.QUICK),
    "storm": (storm.run, storm.FULL, storm.QUICK),
    "rest": (rest.run, rest.FULL, rest.QUICK),
    "cleanup": (cleanup.run, cleanup.FULL, cleanup.QUICK),
    "redis_memory": (redis_memory.run, redis_memory.FULL, redis_memory.QUICK),
    "fanout": (fanout.run, fanout.FULL, fanout.QUICK),
    "reclaim": (reclaim.run, reclaim.FULL, reclaim.QUICK),
    "profile": (profile.run, profile.FULL, profile.QUICK),
}
# `profile` only explains figures; it runs when named.
DEFAULT = [name for name in BENCHMARKS if name != "profile"]


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    parser.add_argument("names", nargs="*", metavar="NAME", help=f"of {', '.join(BENCHMARKS)}")
    parser.add_argument("--quick", action="store_true", help="tiny sizes, seconds each")
    parser.add_argument("--out", type=Path, help="output folder (default bench/)")
    parser.add_argument("--note", default="", help="a line for the report's header")
    parser.add_argument(
        "--report", action="store_true", help="only write the report from results.json"
    )
    args = parser.parse_args(argv)
    names = [] if args.report else (args.names or DEFAULT)
    unknown = [name for name in names if name not in BENCHMARKS]
    if unknown:
        parser.error(f"unknown benchmark {unknown[0]!r}; choose from {', '.join(BENCHMARKS)}")
    out: Path = args.out or (h.WORK / "quick" if args.quick else h.REPO / "bench")
    out.mkdir(parents=True, exist_ok=True)
    results_path = out / "results.json"
    results: dict[str, Any] = {}
    if results_path.exists():
        results = json.loads(results_path.read_text())
    results.setdefault("benchmarks", {})
    for name in names:
        run, full, quick = BENCHMARKS[name]
        started = time.monotonic()
        h.log(f"{name}: starting")
        result = run(quick if args.quick else full)
        result["wall_seconds"] = time.monotonic() - started
        result["finished"] = time.strftime("%Y-%m-%d %H:%M:%S %Z")
        result["quick"] = args.quick
        result["machine"] = h.machine()
        results["benchmarks"][name] = result
        # Written after each benchmark, so an interrupted run keeps what it measured.
        results_path.write_text(json.dumps(results, indent=1, allow_nan=True) + "\n")
        h.log(f"{name}: done in {result['wall_seconds']:.0f} s")
    if names:
        results["machine"] = h.machine()
    if names or args.note:
        results["note"] = args.note
    results["generated"] = time.strftime("%Y-%m-%d %H:%M:%S %Z")
    results_path.write_text(json.dumps(results, indent=1, allow_nan=True) + "\n")
    report.write(results, out)
    h.log(f"wrote {out / 'RESULTS.md'} and {out / 'results.png'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
