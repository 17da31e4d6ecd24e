"""Commands packed by hiredis (in C) instead of redis-py's asyncio connection (in Python).

redis-py's synchronous client packs with ``hiredis.pack_command`` when hiredis is
installed; its asyncio connection (``AbstractConnection.pack_command``, redis-py 8.1)
never does, and packs each argument in Python: an encode, a ``str(len).encode()`` and a
join of six parts. That is what the refresher's tick pays once per session: at 15,000
sessions its one ``EVALSHA`` has about 36,000 arguments, packed in 30 ms by redis-py and
in 3.8 ms by hiredis (the same bytes; ``bench/analysis.md``, "The idle steady window"), and
while it packs the event loop answers nothing else.

:func:`packing_with_hiredis` swaps a pool's connection class for a subclass of it (so a
``rediss://`` or ``unix://`` pool keeps its own) whose ``pack_command`` gives the
arguments to hiredis. hiredis takes ``str`` (UTF-8, strict, as redis-py's encoder
does), ``bytes``, ``int`` and ``float`` (formatted as ``repr`` formats them, as
redis-py's); anything else it refuses, and the call is packed by redis-py's own
``pack_command``, which encodes what it can and raises what it raises today
(``DataError`` for ``None`` or a ``bool``). Replies are not touched: the parser is
redis-py's hiredis one already.

The cluster client builds its nodes' connections from a class it fixes itself, so it
packs as redis-py does.
"""

from __future__ import annotations

from typing import Any

from hiredis import pack_command
from redis.asyncio.connection import AbstractConnection, ConnectionPool

__all__ = ["packing_with_hiredis"]

# One subclass for each connection class a pool was given.
_classes: dict[type[AbstractConnection], type[AbstractConnection]] = {}


def _packed(cls: type[AbstractConnection]) -> type[AbstractConnection]:
    packed = _classes.get(cls)
    if packed is None:

        class Packed(cls):  # type: ignore[valid-type,misc]
            def pack_command(self, *args: Any) -> list[bytes]:
                first = args[0]
                # redis-py splits a command name of several words ("CLIENT SETNAME").
                if (isinstance(first, str) and " " in first) or (
                    isinstance(first, bytes) and b" " in first
                ):
                    return list(super().pack_command(*args))
                try:
                    return [pack_command(args)]
                except TypeError:  # an argument hiredis does not take: redis-py's way
                    return list(super().pack_command(*args))

        Packed.__name__ = Packed.__qualname__ = f"HiredisPacked{cls.__name__}"
        packed = _classes[cls] = Packed
    return packed


def packing_with_hiredis(pool: ConnectionPool) -> ConnectionPool:
    """Makes the connections ``pool`` opens from now on pack with hiredis; returns the
    pool."""
    pool.connection_class = _packed(pool.connection_class)
    return pool
