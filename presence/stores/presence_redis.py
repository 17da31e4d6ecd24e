"""Presence in Redis: a user's tabs in one hash of the user's slot, each room's members
and diffs in the room's slot, leases in a slot of their own (see :mod:`presence.keys`
and :mod:`presence.stores._presence_scripts`).

A change to a tab is one script in the user's slot, which works out the user's member
row in every room it changes; the rows are then applied to each room by a script in
the room's slot (rooms concurrently), versioned so that two processes' rows for one
user, applied in either order, leave the newer. A room's flush is one script that
publishes the diff it numbers, so diffs go out in ``seq`` order. Every operation that
spans a user and a room is idempotent: a retry after a timeout applies nothing twice.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from functools import partial
from typing import Any, TypeVar

from redis.commands.core import AsyncScript
from redis.exceptions import NoScriptError

from .. import events, keys
from .._shutdown import settle
from ..exceptions import StoreError, StoreUnavailable
from ..models import JSON, Diff, Member, Reason, RoomPage, Status, TabState, UserPresence
from . import _presence_scripts
from ._batch import Coalescer
from .presence_base import JoinResult
from .redis import RedisStore

logger = logging.getLogger(__name__)
_T = TypeVar("_T")

_STATE_LETTER = {"online": "o", "away": "a"}
_STATUSES: tuple[Status, ...] = ("online", "away", "offline")
# (holder, user) pairs remembered as registered, at most.
_REGISTERED_MAX = 100_000
# Users of a reaped process handled at once.
_REAP_BATCH = 100
# Scripts of one pass of the loop sent together in one pipeline, at most.
_SCRIPT_BATCH = 128
# In a batch, the one command that is not a script: a user added to a holder's users.
_SADD = "SADD"
# Users remembered as unsure (a call of theirs failed part-way), at most.
_UNSURE_MAX = 100_000


class RedisPresenceStore:
    """Presence in Redis, through a :class:`RedisStore`'s client and call bounds.

    Args:
        sessions: the session store whose client this one shares.
        keep: seconds a user's hash keeps their last_seen once they have no tab (the
            session TTL).
    """

    name = "redis"

    def __init__(self, sessions: RedisStore, *, keep: float) -> None:
        self.sessions = sessions
        self.prefix = sessions.prefix
        self.keep_ms = max(1, round(keep * 1000))
        self._scripts: dict[str, AsyncScript] = {}
        # Users already in a holder's users set in Redis (added before their first
        # hold there, so that a reaper finds them): forgotten past a bound, which only
        # costs one SADD again.
        self._registered: set[tuple[str, str]] = set()
        self._renewed: dict[str, float] = {}
        # Users a change of whom failed (no answer within the bound): it may have run
        # in their hash, its rows recorded as sent, without reaching the rooms. Their
        # next change here sends every row again (the USER script's ``resend``).
        self._unsure: dict[str, None] = {}
        # The scripts of one pass of the event loop (thousands of holds and joins in a
        # reconnect storm, each with its APPLYs) go to Redis in one pipeline: one pooled
        # connection and one call's overhead a batch, not one each. Not on a cluster,
        # where each script is sent to its own slot's node.
        self._batch: Coalescer[tuple[str, list[str], list[Any]], Any] | None = (
            None if sessions.cluster else Coalescer(self._send, max_batch=_SCRIPT_BATCH)
        )
        #: The webhook streams the scripts add events to (see :mod:`presence.webhooks`).
        self.webhook_streams: list[str] = []
        #: On a cluster, the scripts add them to the user's or room's outbox instead (a
        #: stream in the script's own slot), and this is told of each outbox that may
        #: have some, to move them on.
        self.webhook_outbox_added: Callable[[str], None] | None = None

    @property
    def publish_command(self) -> str:
        # A room's channel lives in the room's slot: on a cluster it is published to
        # the node that owns it alone (SPUBLISH), as the flush script's keys require.
        return "SPUBLISH" if self.sessions.cluster else "PUBLISH"

    async def open(self) -> None:
        client = self.sessions.client
        for name in ("USER", "APPLY", "FLUSH", "ROOM", "RENEW", "LAPSED", "FENCE", "REAPED"):
            self._scripts[name] = client.register_script(getattr(_presence_scripts, name))

    async def close(self) -> None:
        if self._batch is not None:
            await settle(self._batch.drain(), 2 * self.sessions.bound)

    # -- tabs -----------------------------------------------------------------------------

    async def hold(
        self, user: str, session_id: str, *, holder: str, state: TabState
    ) -> tuple[int, list[str]]:
        if (holder, user) not in self._registered:
            users_key = keys.holder_users_key(self.prefix, holder)
            if self._batch is None:
                await self._call_raw(self.sessions.client.sadd, users_key, user)
            else:
                await self._run(_SADD, [users_key], [user])
            if len(self._registered) >= _REGISTERED_MAX:
                self._registered.clear()
            self._registered.add((holder, user))
        reply, changed = await self._change(
            user, "hold", session_id, holder, _STATE_LETTER[state], "0"
        )
        return int(reply[1]), changed

    async def set_state(
        self, user: str, session_id: str, state: TabState, *, holder: str
    ) -> list[str]:
        _, changed = await self._change(user, "state", session_id, holder, _STATE_LETTER[state])
        return changed

    async def release(
        self, user: str, session_id: str, reason: Reason, *, holder: str, gen: int
    ) -> float | None:
        reply = await self._user(user, "release", session_id, holder, gen, reason)
        if reply[0] != "ok":
            return None
        return int(reply[1]) / 1000

    async def depart(self, user: str, session_id: str, *, since: float) -> list[str]:
        _, changed = await self._change(user, "depart", session_id, _ms(since))
        return changed

    async def join(
        self, user: str, session_id: str, room: str, meta: JSON, *, max_rooms: int
    ) -> tuple[JoinResult, list[str]]:
        reply, changed = await self._change(user, "join", session_id, room, _dump(meta), max_rooms)
        result: JoinResult = reply[0]
        return result, changed

    async def update(self, user: str, session_id: str, room: str, meta: JSON) -> list[str] | None:
        reply, changed = await self._change(user, "update", session_id, room, _dump(meta))
        if reply[0] != "ok":
            return None
        return changed

    async def leave(
        self, user: str, session_id: str, room: str, reason: Reason
    ) -> tuple[float, list[str]] | None:
        reply = await self._user(user, "leave", session_id, room, reason)
        if reply[0] != "ok":
            return None
        return int(reply[1]) / 1000, []

    async def reap(
        self,
        holder: str,
        *,
        if_lapsed: bool = False,
        progress: Callable[[list[str]], None] | None = None,
    ) -> tuple[list[str], list[tuple[str, str]]]:
        lease_keys = keys.lease_keys(self.prefix)
        if not int(await self._run("FENCE", lease_keys, [holder, "1" if if_lapsed else "0"])):
            return [], []  # renewed since it was found lapsed: alive
        client = self.sessions.client
        users_key = keys.holder_users_key(self.prefix, holder)
        renewed = self._renewed.pop(holder, None)
        renewed_ms = "" if renewed is None else str(_ms(renewed))
        changed: set[str] = set()
        reaped: list[tuple[str, str]] = []
        # A Redis outage in the middle is waited out, step by step, for as long as the
        # claim on the holder allows: what a step has in hand (a batch's rows) is not
        # lost, and nothing is done twice (the rows are versioned).
        patience = _Patience(keys.REAP_CLAIM / 2)
        cursor = 0
        while True:
            cursor, found = await patience.retry(
                partial(self._call_raw, client.sscan, users_key, cursor, count=_REAP_BATCH)
            )
            batch = list(dict.fromkeys(found))  # SSCAN may return a member twice
            replies: dict[str, Any] = {}
            while len(replies) < len(batch):
                todo = [user for user in batch if user not in replies]
                results = await asyncio.gather(
                    *(self._user(user, "reap", holder, renewed_ms or "0") for user in todo),
                    return_exceptions=True,
                )
                failed = None
                for user, result in zip(todo, results, strict=True):
                    if isinstance(result, StoreUnavailable):
                        failed = result
                    elif isinstance(result, BaseException):
                        raise result
                    else:
                        replies[user] = result
                if failed is not None:
                    await patience.wait(failed)
            # The batch's rows, room by room: one APPLY a room for all its users (rows
            # are versioned per user, so one script applies them as several would).
            rows: dict[str, list[Any]] = {}
            for user in batch:
                reply = replies[user]
                version = reply[2]
                for i in range(3, len(reply), 4):
                    rows.setdefault(reply[i], []).extend(
                        (user, version, reply[i + 1], reply[i + 2], reply[i + 3])
                    )
                if reply[0] == "ok" and reply[1]:
                    reaped += [(user, sid) for sid in str(reply[1]).split(",")]
            batch_changed = await self._apply_patiently(rows, patience)
            changed.update(batch_changed)
            if progress is not None and batch_changed:
                # The leaves stream out while the reap goes on: the rooms of each
                # batch can be flushed now, not once at the end.
                progress(batch_changed)
            if int(cursor) == 0:
                break
        await patience.retry(lambda: self._call_raw(client.delete, users_key))
        await patience.retry(lambda: self._run("REAPED", lease_keys, [holder]))
        return sorted(changed), reaped

    # -- rooms ----------------------------------------------------------------------------

    async def flush(self, room: str) -> Diff | None:
        flush_keys = keys.room_keys(self.prefix, room)
        outbox = None
        if self.webhook_outbox_added is not None:
            outbox = keys.room_outbox(self.prefix, room)
            flush_keys += [keys.room_event_seq_key(self.prefix, room), outbox]
        elif self.webhook_streams:
            flush_keys += [keys.room_event_seq_key(self.prefix, room), *self.webhook_streams]
        raw = await self._run(
            "FLUSH",
            flush_keys,
            [room, keys.room_channel(self.prefix, room), self.publish_command],
        )
        if not raw:
            return None
        if outbox is not None and self.webhook_outbox_added is not None:
            self.webhook_outbox_added(outbox)
        diff = events.decode_diff(raw)
        # The rooms' index, for listing them (one command a flush, not a join).
        index = keys.rooms_key(self.prefix)
        client = self.sessions.client
        if diff.count:
            await self._call_raw(client.zadd, index, {room: diff.count})
        else:
            await self._call_raw(client.zrem, index, room)
        return diff

    async def room(self, room: str, *, cursor: str | None = None, limit: int = 1000) -> RoomPage:
        room_keys = keys.room_keys(self.prefix, room)
        reply = await self._run(
            "ROOM", [room_keys[0], room_keys[1], room_keys[6]], [cursor or "", limit]
        )
        seq, count, following = int(reply[0]), int(reply[1]), reply[2]
        members = tuple(_member(reply[i], reply[i + 1]) for i in range(3, len(reply), 2))
        return RoomPage(room, seq, count, members, following or None)

    async def rooms(self, limit: int) -> list[tuple[str, int]]:
        pairs = await self._call_raw(
            self.sessions.client.zrevrange,
            keys.rooms_key(self.prefix),
            0,
            limit - 1,
            withscores=True,
        )
        return [(str(room), int(count)) for room, count in pairs]

    async def user(self, user: str) -> UserPresence:
        reply = await self._user(user, "user", "")
        status, sessions, seen = reply[0], int(reply[1]), reply[2]
        return UserPresence(
            user=user,
            status=status if status in _STATUSES else "offline",
            sessions=sessions,
            last_seen=int(seen) / 1000 if seen else None,
            rooms=tuple(sorted(reply[3:])),
        )

    async def tab_rooms(self, user: str, session_id: str) -> list[str]:
        return sorted(await self._user(user, "rooms", session_id))

    # -- leases ---------------------------------------------------------------------------

    async def renew(self, holder: str, ttl: float) -> bool:
        # A bound of its own: a renewal that waited behind a burst (a pooled connection
        # to free, a loop busy fanning out) still keeps the lease if it gets there.
        renewed = await self.sessions.call(
            self._scripts["RENEW"],
            keys=keys.lease_keys(self.prefix),
            args=[holder, _ms(ttl)],
            bound=keys.LEASE_RENEW_BOUND,
        )
        return bool(int(renewed))

    async def lapsed(self) -> list[tuple[str, float]]:
        reply = await self._run(
            "LAPSED", keys.lease_keys(self.prefix), [self.prefix, _ms(keys.REAP_CLAIM)]
        )
        out = []
        for i in range(0, len(reply), 2):
            renewed = int(reply[i + 1]) / 1000
            self._renewed[reply[i]] = renewed
            out.append((str(reply[i]), renewed))
        return out

    # -- internals ------------------------------------------------------------------------

    async def _user(self, user: str, op: str, *args: Any) -> Any:
        if self.webhook_outbox_added is None:
            return await self._run(
                "USER",
                [keys.tabs_key(self.prefix, user), *self.webhook_streams],
                [op, self.keep_ms, *args, user],
            )
        outbox = keys.user_outbox(self.prefix, user)
        reply = await self._run(
            "USER", [keys.tabs_key(self.prefix, user), outbox], [op, self.keep_ms, *args, user]
        )
        if op in ("hold", "depart", "reap"):  # the operations that tell
            self.webhook_outbox_added(outbox)
        return reply

    async def _change(self, user: str, op: str, *args: Any) -> tuple[Any, list[str]]:
        """A change to a user's tabs (``op`` of the USER script) and its rows applied
        to their rooms: the script's reply and the rooms changed.

        A change that fails (a call over its bound: it may have run in Redis, its
        rows recorded as sent, without their APPLYs) leaves the user unsure; their next
        change sends every one of their rows again, so that a retry, which finds its
        rows already sent and sends none, still brings the rooms right.
        """
        try:
            reply = await self._user(user, op, *args)
            changed = await self._apply(user, reply)
            if user in self._unsure:
                again = await self._apply(user, await self._user(user, "resend", ""))
                self._unsure.pop(user, None)
                changed = sorted({*changed, *again})
        except StoreError:
            self._unsure.pop(user, None)
            if len(self._unsure) >= _UNSURE_MAX:
                del self._unsure[next(iter(self._unsure))]
            self._unsure[user] = None
            raise
        return reply, changed

    async def _apply(self, user: str, reply: Sequence[Any]) -> list[str]:
        """Applies the rows a user script sent to their rooms, concurrently; returns
        the rooms changed."""
        version = reply[2]
        rows = {
            reply[i]: [user, version, reply[i + 1], reply[i + 2], reply[i + 3]]
            for i in range(3, len(reply), 4)
        }
        return await self._apply_rows(rows)

    async def _apply_rows(self, rows: dict[str, list[Any]]) -> list[str]:
        """Applies each room's rows (user, version, row, reason, seen, ...) in one
        script a room, rooms concurrently; returns the rooms changed."""
        if not rows:
            return []
        rooms = list(rows)
        results = await asyncio.gather(
            *(self._run("APPLY", keys.room_keys(self.prefix, room), rows[room]) for room in rooms)
        )
        return [room for room, changed in zip(rooms, results, strict=True) if changed]

    async def _apply_patiently(self, rows: dict[str, list[Any]], patience: _Patience) -> list[str]:
        """As :meth:`_apply_rows`, each room's script tried again while Redis is
        unavailable. A room applied already is not asked again, and one whose script
        failed is told as changed: a script that timed out may have run, and its retry
        then says nothing changed (a flush with nothing to say costs one script)."""
        changed: list[str] = []
        failed_once: set[str] = set()
        todo = list(rows)
        while todo:
            results = await asyncio.gather(
                *(
                    self._run("APPLY", keys.room_keys(self.prefix, room), rows[room])
                    for room in todo
                ),
                return_exceptions=True,
            )
            failed, again = None, []
            for room, result in zip(todo, results, strict=True):
                if isinstance(result, StoreUnavailable):
                    failed = result
                    again.append(room)
                    failed_once.add(room)
                elif isinstance(result, BaseException):
                    raise result
                elif result or room in failed_once:
                    changed.append(room)
            if failed is not None:
                await patience.wait(failed)
            todo = again
        return changed

    async def _run(self, script: str, script_keys: list[str], args: list[Any]) -> Any:
        if self._batch is None:
            return await self.sessions.call(self._scripts[script], keys=script_keys, args=args)
        reply = await self._batch.submit((script, script_keys, args))
        if isinstance(reply, _Failed):
            # Mapped as a call's own failure is (a refusal: StoreMisconfigured).
            await self.sessions.call(_reraise, reply.error)
        return reply

    async def _send(self, calls: list[tuple[str, list[str], list[Any]]]) -> list[Any]:
        """The scripts of one pass in one pipeline, under one call's bound; a script
        that failed on its own gives its caller the error (:class:`_Failed`)."""
        return await self.sessions.call(self._pipeline, calls)

    async def _pipeline(self, calls: list[tuple[str, list[str], list[Any]]]) -> list[Any]:
        client = self.sessions.client
        async with client.pipeline(transaction=False) as pipe:
            for name, script_keys, args in calls:
                if name == _SADD:
                    pipe.sadd(script_keys[0], *args)
                else:
                    pipe.evalsha(self._scripts[name].sha, len(script_keys), *script_keys, *args)
            replies = list(await pipe.execute(raise_on_error=False))
            # Redis lost its script cache (restarted, or SCRIPT FLUSH): those scripts did
            # not run; they are loaded and sent again.
            lost = [i for i, reply in enumerate(replies) if isinstance(reply, NoScriptError)]
            if lost:
                for name in sorted({calls[i][0] for i in lost}):
                    await client.script_load(self._scripts[name].script)
                for i in lost:
                    name, script_keys, args = calls[i]
                    pipe.evalsha(self._scripts[name].sha, len(script_keys), *script_keys, *args)
                for i, reply in zip(lost, await pipe.execute(raise_on_error=False), strict=True):
                    replies[i] = reply
        return [_Failed(r) if isinstance(r, Exception) else r for r in replies]

    async def _call_raw(self, fn: Any, *args: Any, **kwargs: Any) -> Any:
        return await self.sessions.call(fn, *args, **kwargs)


async def _reraise(error: Exception) -> None:
    raise error


class _Failed:
    """A script of a pipeline that failed on its own (the others ran)."""

    __slots__ = ("error",)

    def __init__(self, error: Exception) -> None:
        self.error = error


class _Patience:
    """Retries a step that found Redis unavailable, with a growing pause, until
    ``seconds`` have passed since it was made; then the step's failure is raised."""

    def __init__(self, seconds: float) -> None:
        self.deadline = time.monotonic() + seconds
        self.pause = 0.05

    async def retry(self, step: Callable[[], Awaitable[_T]]) -> _T:
        while True:
            try:
                return await step()
            except StoreUnavailable as exc:
                await self.wait(exc)

    async def wait(self, failure: StoreUnavailable) -> None:
        if time.monotonic() + self.pause > self.deadline:
            raise failure
        logger.warning("reap: Redis unavailable; resuming in %.2f s", self.pause)
        await asyncio.sleep(self.pause)
        self.pause = min(1.0, self.pause * 2)


def _ms(seconds: float) -> int:
    return int(seconds * 1000)


def _dump(meta: JSON) -> str:
    return json.dumps(meta, separators=(",", ":"), ensure_ascii=False)


def _member(user: str, row: str) -> Member:
    status, sessions, since, meta = row.split("|", 3)
    return Member(
        user,
        status if status in _STATUSES else "offline",
        int(sessions),
        json.loads(meta),
        int(since) / 1000,
    )
