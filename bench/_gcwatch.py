"""Logs every garbage collection of the oldest generation that stops the process for
longer than ``threshold`` seconds (``GC PAUSE: ...``): with tens of thousands of
long-lived sockets such a pass walks every object they own, and the event loop waits."""

from __future__ import annotations

import gc
import sys
import time
from typing import Any


def install(threshold: float = 0.05) -> None:
    started = 0.0

    def watch(phase: str, info: dict[str, Any]) -> None:
        nonlocal started
        if info.get("generation") != 2:
            return
        if phase == "start":
            started = time.perf_counter()
            return
        pause = time.perf_counter() - started
        if pause >= threshold:
            # Printed rather than logged: a log handler may allocate and collect again.
            print(f"GC PAUSE: generation 2 took {pause * 1000:.0f} ms", file=sys.stderr, flush=True)

    gc.callbacks.append(watch)
