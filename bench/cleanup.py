"""``inactive`` cleanup: one call that deletes ``inactive`` sessions of one user among
many stored, timed for several store sizes.

The stores are written straight into Redis in the service's layout (see
:mod:`presence.keys`, :mod:`presence.stores._scripts`): a string key per session and
the user's sorted set scored by last_seen, with ``inactive`` of them seen two hours ago
and the rest now. Each call is :meth:`RedisStore.delete_inactive`, the call behind
``POST /sessions/cleanup {"type": "inactive"}``, timed from the client (one round trip
and the decoding of the ids) and inside Redis (the slowlog's duration). Between calls
the deleted sessions are written back, and sizes are interleaved within each round.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import asdict, dataclass
from typing import Any

from presence import keys
from presence.sessions import new_session_id
from presence.stores import RedisStore

from . import _procs, _redis, _servers, _stats

_HOUR_MS = 3_600_000
_PREFIX = "presence"


@dataclass(frozen=True)
class Sizes:
    stored: tuple[int, ...] = (10_000, 100_000, 1_000_000)
    inactive: tuple[int, ...] = (1_000,)
    # Extra points at the largest store: does the time follow the deleted count?
    inactive_at_largest: tuple[int, ...] = (100, 10_000)
    rounds: int = 5


FULL = Sizes()
QUICK = Sizes(stored=(200, 2_000), inactive=(50,), inactive_at_largest=(10,), rounds=1)


def run(sizes: Sizes = FULL) -> dict[str, Any]:
    with _redis.RedisServer("cleanup") as redis_server:
        return asyncio.run(_run(sizes, redis_server))


def _cases(sizes: Sizes) -> list[tuple[int, int]]:
    cases = [(stored, k) for stored in sizes.stored for k in sizes.inactive]
    largest = max(sizes.stored)
    cases += [(largest, k) for k in sizes.inactive_at_largest if (largest, k) not in cases]
    return cases


async def _run(sizes: Sizes, redis_server: _redis.RedisServer) -> dict[str, Any]:
    client = redis_server.client()
    now_ms = int(time.time() * 1000)
    cases = _cases(sizes)
    # One user per store size, holding (size - the usual inactive count) active sessions;
    # the inactive ones are written before each call, so a case with another count at
    # the largest size runs on the same user (its total is off by the difference).
    main_k = sizes.inactive[0]
    users = {stored: f"cleanup{stored}" for stored in sizes.stored}
    populated_s = {}
    for stored, user in users.items():
        started = time.monotonic()
        _populate(client, user, stored - main_k, now_ms)
        populated_s[str(stored)] = time.monotonic() - started
        _procs.log(f"cleanup: stored {stored - main_k:,} active sessions for {user}")
    store = RedisStore(
        redis_server.url,
        ttl=24 * 3600.0,
        max_sessions_per_user=_servers.MAX_SESSIONS_PER_USER,
        prefix=_PREFIX,
        timeout=5.0,
    )
    await store.open()
    calls = []
    try:
        for number in range(sizes.rounds):
            for stored, k in cases:
                user = users[stored]
                _populate(client, user, k, now_ms - 2 * _HOUR_MS)
                commands = _redis.CommandStats(client)
                commands.start()
                started = time.perf_counter()
                deleted = await store.delete_inactive(user, 3600.0, "cleanup")
                seconds = time.perf_counter() - started
                executed = commands.stop()
                calls.append(
                    {
                        "round": number,
                        "stored": stored,
                        "inactive": k,
                        "deleted": len(deleted),
                        "ms": seconds * 1000,
                        "redis_ms": executed.get("evalsha", {}).get("usec", 0) / 1000,
                        "evalsha_calls": executed.get("evalsha", {}).get("calls", 0),
                        "remaining": client.zcard(keys.index_key(_PREFIX, user)),
                        "expected_remaining": stored - main_k,
                    }
                )
    finally:
        await store.close()
    info = client.info("memory")
    summary = {}
    for stored, k in cases:
        mine = [c for c in calls if c["stored"] == stored and c["inactive"] == k]
        summary[f"{stored}x{k}"] = {
            "stored": stored,
            "inactive": k,
            "ms": _stats.summary(c["ms"] for c in mine),
            "redis_ms": _stats.summary(c["redis_ms"] for c in mine),
            "all_deleted": all(c["deleted"] == k for c in mine),
            "rest_kept": all(c["remaining"] == c["expected_remaining"] for c in mine),
        }
    return {
        "sizes": asdict(sizes),
        "calls": calls,
        "summary": summary,
        "populate_s": populated_s,
        "redis_used_mib": int(info["used_memory"]) / 1024 / 1024,
    }


def _populate(client: Any, user: str, count: int, seen_ms: int, batch: int = 20_000) -> None:
    """``count`` sessions of ``user`` last seen at ``seen_ms``, written as the CREATE
    script writes them (value ``<created>||<transport><state>|<data>``, PX = TTL)."""
    index = keys.index_key(_PREFIX, user)
    value = f"{seen_ms}||na|"
    ttl_ms = 24 * _HOUR_MS
    for start in range(0, count, batch):
        pipe = client.pipeline(transaction=False)
        ids = [new_session_id() for _ in range(min(batch, count - start))]
        for sid in ids:
            pipe.set(keys.session_key(_PREFIX, user, sid), value, px=ttl_ms)
        pipe.zadd(index, dict.fromkeys(ids, seen_ms))
        pipe.execute()
    client.pexpire(index, ttl_ms)
