"""``python -m bench [--quick] [--out DIR] [NAME ...]``: runs benchmarks, then writes
``results.json``, ``RESULTS.md`` and ``results.png`` into the output folder.

A run of some benchmarks keeps the figures of the others already in ``results.json``,
so the report always has every section. ``--quick`` runs tiny sizes (a few seconds
each, for the tests) and writes into ``bench/.work/quick`` unless told otherwise, so
the committed results are never replaced by figures too small to mean anything.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from . import (
    _procs,
    capacity,
    cleanup,
    fanout,
    idle,
    peers,
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
    "peers": (peers.run, peers.FULL, peers.QUICK),
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
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="FIELD=VALUE",
        help="change one of the sizes of the benchmarks named (e.g. steps=1000,5000 "
        "rounds=2 kinds=service,stock-floor); a list is comma-separated",
    )
    args = parser.parse_args(argv)
    names = [] if args.report else (args.names or DEFAULT)
    unknown = [name for name in names if name not in BENCHMARKS]
    if unknown:
        parser.error(f"unknown benchmark {unknown[0]!r}; choose from {', '.join(BENCHMARKS)}")
    out: Path = args.out or (_procs.WORK / "quick" if args.quick else _procs.REPO / "bench")
    out.mkdir(parents=True, exist_ok=True)
    if names:
        _procs.SAMPLER = _procs.QuietSampler().start()
    results_path = out / "results.json"
    results: dict[str, Any] = {}
    if results_path.exists():
        results = json.loads(results_path.read_text())
    results.setdefault("benchmarks", {})
    for name in names:
        run, full, quick = BENCHMARKS[name]
        try:
            sizes = with_changes(quick if args.quick else full, args.set)
        except ValueError as exc:
            parser.error(f"{name}: {exc}")
        started = time.monotonic()
        code = _procs.service_code()
        _procs.log(f"{name}: starting with {sizes} on {code}")
        result = run(sizes)
        result["wall_seconds"] = time.monotonic() - started
        # The code measured: read before the run, and again after it, in case it changed.
        result["service_code"] = code
        if _procs.service_code() != code:
            result["service_code_changed_to"] = _procs.service_code()
        result["quiet"] = _procs.quiet_since(started)
        result["finished"] = time.strftime("%Y-%m-%d %H:%M:%S %Z")
        result["quick"] = args.quick
        result["machine"] = _procs.machine()
        results["benchmarks"][name] = result
        # Written after each benchmark, so an interrupted run keeps what it measured.
        results_path.write_text(json.dumps(results, indent=1, allow_nan=True) + "\n")
        _procs.log(f"{name}: done in {result['wall_seconds']:.0f} s")
    if names:
        results["machine"] = _procs.machine()
    if names or args.note:
        results["note"] = args.note
    results["generated"] = time.strftime("%Y-%m-%d %H:%M:%S %Z")
    results_path.write_text(json.dumps(results, indent=1, allow_nan=True) + "\n")
    report.write(results, out)
    _procs.log(f"wrote {out / 'RESULTS.md'} and {out / 'results.png'}")
    return 0


def with_changes(sizes: Any, changes: Sequence[str]) -> Any:
    """``sizes`` (a frozen dataclass) with ``FIELD=VALUE`` changes, each value read as
    its field's default is typed (a tuple from a comma-separated list)."""
    values: dict[str, Any] = {}
    fields = {f.name: getattr(sizes, f.name) for f in dataclasses.fields(sizes)}
    for change in changes:
        name, sep, raw = change.partition("=")
        if not sep or name not in fields:
            raise ValueError(f"no size {name!r}; the sizes are {', '.join(fields)}")
        current = fields[name]
        if isinstance(current, tuple):
            kind = type(current[0]) if current else str
            values[name] = tuple(kind(item) for item in raw.split(",") if item)
        elif isinstance(current, bool):
            values[name] = raw.lower() in ("1", "true", "yes")
        else:
            values[name] = type(current)(raw)
    return dataclasses.replace(sizes, **values)


if __name__ == "__main__":
    sys.exit(main())
