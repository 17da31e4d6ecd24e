"""Redis memory per stored session: the ``used_memory`` delta of ``sessions`` sessions
created through the service's Redis store, divided by their number.

Sessions are spread over users in three ways (1, 5 and 50 a user; a user's index costs
the same whatever its size up to Redis's listpack limit, so the fewer a user has, the
more each one carries). The floor is the session key alone -- the same name, value and
TTL written with ``SET PX`` -- with no index. Variants are interleaved within a round;
each starts from an empty, purged Redis.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from typing import Any

from presence import keys
from presence.sessions import new_session_id

from . import _clients, _procs, _redis, _stats


@dataclass(frozen=True)
class Sizes:
    sessions: int = 100_000
    per_user: tuple[int, ...] = (1, 5, 50)
    rounds: int = 3


FULL = Sizes()
QUICK = Sizes(sessions=2_000, per_user=(1, 50), rounds=1)


def run(sizes: Sizes = FULL) -> dict[str, Any]:
    variants = [f"service {n}/user" for n in sizes.per_user] + ["floor: key only"]
    measurements = []
    with _redis.RedisServer("memory") as redis_server:
        client = redis_server.client()
        for number in range(sizes.rounds):
            for variant in variants:
                client.flushall()
                client.memory_purge()
                time.sleep(0.2)
                before = int(client.info("memory")["used_memory"])
                if variant.startswith("floor"):
                    _keys_only(client, sizes.sessions)
                else:
                    per_user = int(variant.split()[1].split("/")[0])
                    owners = _clients.users_for(sizes.sessions, per_user, "m")
                    _clients.create_sessions(redis_server.url, owners, ttl=24 * 3600.0)
                after = int(client.info("memory")["used_memory"])
                count = client.dbsize()
                per_session = (after - before) / sizes.sessions
                measurements.append(
                    {
                        "round": number,
                        "variant": variant,
                        "bytes_per_session": per_session,
                        "keys": count,
                    }
                )
                _procs.log(f"redis memory {variant}: {per_session:.0f} B/session ({count} keys)")
    summary = {
        variant: _stats.summary(
            m["bytes_per_session"] for m in measurements if m["variant"] == variant
        )
        for variant in variants
    }
    return {"sizes": asdict(sizes), "measurements": measurements, "summary": summary}


def _keys_only(client: Any, count: int, batch: int = 10_000) -> None:
    now_ms = int(time.time() * 1000)
    for start in range(0, count, batch):
        pipe = client.pipeline(transaction=False)
        for i in range(start, min(count, start + batch)):
            # Same name length as the service's m<i> users and same value.
            key = keys.session_key("presence", f"m{i}", new_session_id())
            pipe.set(key, f"{now_ms}||na|", px=24 * 3_600_000)
        pipe.execute()
