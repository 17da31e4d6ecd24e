"""``python -m bench._serve serve ...``: ``presence serve`` exactly, with three additions
for the benchmarks, none of which changes what the service does unless asked:

- every time the Redis circuit breaker opens, the exception that opened it is logged
  (``BREAKER OPENED BY: ...``), so a benchmark can say why the service fell back to
  memory;
- generation-2 garbage collections longer than 50 ms are printed (``GC PAUSE: ...``,
  see :mod:`bench._gcwatch`);
- with ``BENCH_BLOCKING_POOL=<n>`` in the environment, the Redis client gets a
  ``BlockingConnectionPool`` of ``n`` connections (callers wait up to 5 s for one)
  instead of redis-py's default pool, which raises ``MaxConnectionsError`` past 100
  commands in flight. That is the change ``bench/analysis.md`` proposes for
  ``presence/stores/redis.py``, applied from outside so that its effect can be measured
  beside the service as it is.
"""

from __future__ import annotations

import logging
import os
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


def _blocking_pool(size: int) -> None:
    from redis.asyncio import BlockingConnectionPool, Redis

    def from_url(cls: type[Redis], url: str, **kwargs: Any) -> Redis:
        pool = BlockingConnectionPool.from_url(url, max_connections=size, timeout=5, **kwargs)
        return cls.from_pool(pool)

    Redis.from_url = classmethod(from_url)  # type: ignore[assignment, method-assign]


def main() -> int:
    from ._gcwatch import install

    install()
    _log_breaker_causes()
    size = os.environ.get("BENCH_BLOCKING_POOL")
    if size:
        _blocking_pool(int(size))
    from presence.cli import main as presence_main

    return presence_main(sys.argv[1:])


if __name__ == "__main__":
    sys.exit(main())
