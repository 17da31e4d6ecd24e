"""``python -m bench._serve serve ...``: ``presence serve`` exactly, with two additions
for the benchmarks, neither of which changes what the service does unless asked:

- every time the Redis circuit breaker opens, the exception that opened it is logged
  (``BREAKER OPENED BY: ...``), so a benchmark can say why the service fell back to
  memory;
- generation-2 garbage collections longer than 50 ms are printed (``GC PAUSE: ...``,
  see :mod:`bench._gcwatch`);
"""

from __future__ import annotations

import logging
import sys
from typing import Any


def _log_breaker_causes() -> None:
    from presence.stores import fallback

    original = getattr(fallback.FallbackStore, "_trip", None)
    if original is None:  # the service changed; nothing to explain with
        return

    def trip(self: Any, *args: Any, **kwargs: Any) -> Any:
        if not getattr(self, "degraded", False):
            chain = []
            exc = sys.exc_info()[1]
            while exc is not None and len(chain) < 4:
                chain.append(f"{type(exc).__name__}: {exc}"[:120])
                exc = exc.__cause__ or exc.__context__
            logging.getLogger("presence").warning(
                "BREAKER OPENED BY: %s", " <- ".join(chain) or "no exception"
            )
        return original(self, *args, **kwargs)

    fallback.FallbackStore._trip = trip  # type: ignore[method-assign]


def main() -> int:
    from ._gcwatch import install

    install()
    _log_breaker_causes()
    from presence.cli import main as presence_main

    return presence_main(sys.argv[1:])


if __name__ == "__main__":
    sys.exit(main())
