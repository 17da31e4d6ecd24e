"""A user's Redis keys are theirs alone: no ``sub`` maps to another user's hash tag.

The plain form of a tag is the id itself; every other id becomes a digest behind a
marker that the plain form cannot contain. The old marker, ``h:``, was plain itself, so
the user ``h:<digest>`` shared every key with the user whose digest it named.
"""

from __future__ import annotations

import hashlib
import re

import httpx
import pytest
from hypothesis import given
from hypothesis import strategies as st
from websockets.asyncio.client import connect
from websockets.exceptions import InvalidStatus

from presence import keys

from .utils import UNIT, make_settings, serve, token

BASE = "/api/v1/chat"
VICTIM = "alice+work@example.com"


def _old_digest_user(user: str) -> str:
    """The plain ``sub`` that named ``user``'s keys under the old scheme."""
    return "h:" + hashlib.blake2b(user.encode(), digest_size=12).hexdigest()


def _digest_lookalike(user: str) -> str:
    """A ``sub`` spelled like the new digest form of ``user``'s tag."""
    return keys.user_tag(user).strip("{}")


_PLAIN = st.from_regex(re.compile(r"[A-Za-z0-9_.:@\-]{1,64}"), fullmatch=True)
_ANY = st.text(min_size=1, max_size=300)
# Users whose id spells another user's tag, under the old scheme and the new one.
_CRAFTED = st.one_of(
    st.builds(_old_digest_user, _ANY),
    st.builds(_digest_lookalike, _ANY),
    st.builds(lambda user: "{" + user + "}", _ANY),
    st.builds(lambda user: keys.user_tag(user), _ANY),
)
USERS = st.one_of(_PLAIN, _ANY, _CRAFTED, st.just(VICTIM), st.just(_old_digest_user(VICTIM)))


@given(USERS, USERS)
def test_distinct_users_never_share_a_tag(first, second):
    """Two users share a tag exactly when they are the same user, whatever they are
    called: plain ids, long or unusual ones, and ids spelled like another's tag."""
    assert (keys.user_tag(first) == keys.user_tag(second)) == (first == second)


@given(USERS)
def test_the_tag_says_which_form_it_is(user):
    """A tag is either the plain id itself or the marker and a 128-bit digest, never
    anything a plain id could spell, and it has no brace inside to cut the hash tag."""
    inner = keys.user_tag(user)[1:-1]
    assert "{" not in inner and "}" not in inner
    if inner == user:
        assert re.fullmatch(r"[A-Za-z0-9_.:@\-]{1,64}", user)
    else:
        assert re.fullmatch(r"#[0-9a-f]{32}", inner)


def test_plain_users_keep_their_keys():
    """Keys of users with plain ids are spelled as before the fix, so their sessions in
    Redis are still found after an upgrade."""
    assert keys.lone_key("presence", "alice") == "presence:{alice}:one"
    assert keys.session_key("presence", "u-42@x.io", "abc") == "presence:{u-42@x.io}:s:abc"
    assert keys.index_key("presence", "7f3c:team") == "presence:{7f3c:team}:idx"


def test_a_lone_surrogate_in_a_sub_still_has_a_tag():
    """A ``sub`` with an unpaired surrogate (JSON allows one) gets a digest like any
    other unusual id rather than failing to encode."""
    assert keys.user_tag("\ud800x") != keys.user_tag("\ud801x")


@pytest.mark.redis
@pytest.mark.parametrize("attacker", [_old_digest_user(VICTIM), _digest_lookalike(VICTIM)])
async def test_a_user_named_like_another_users_tag_reaches_none_of_their_sessions(
    redis_url, attacker
):
    """The user named ``h:<digest of alice+work@example.com>`` (or spelled like the new
    digest form) lists, reads, heartbeats, deletes, cleans up and opens a socket on none
    of alice's sessions, through a real server on a real redis-server."""
    async with serve(make_settings(redis_url=redis_url)) as server:
        victim = {"authorization": f"Bearer {token(VICTIM)}"}
        thief = {"authorization": f"Bearer {token(attacker)}"}
        async with httpx.AsyncClient(base_url=server.http, timeout=50 * UNIT) as client:
            created = await client.post(f"{BASE}/sessions", json={}, headers=victim)
            assert created.status_code == 201
            sid = created.json()["id"]

            listed = await client.get(f"{BASE}/sessions", headers=thief)
            assert listed.status_code == 200 and listed.json() == {"sessions": []}
            for method, path in [
                ("GET", f"{BASE}/sessions/{sid}"),
                ("POST", f"{BASE}/sessions/{sid}/heartbeat"),
                ("DELETE", f"{BASE}/sessions/{sid}"),
            ]:
                response = await client.request(method, path, headers=thief)
                assert response.status_code == 404, (method, path, response.text)
            for body in [{"type": "all"}, {"type": "specific", "session_ids": [sid]}]:
                cleaned = await client.post(f"{BASE}/sessions/cleanup", json=body, headers=thief)
                assert cleaned.status_code == 200 and cleaned.json()["deleted"] == 0
            with pytest.raises(InvalidStatus) as refused:
                async with connect(f"{server.ws}{BASE}/sessions/{sid}/ws?token={token(attacker)}"):
                    pass
            assert refused.value.response.status_code == 404

            # Alice's session is untouched, and it still belongs to her.
            mine = await client.get(f"{BASE}/sessions/{sid}", headers=victim)
            assert mine.status_code == 200 and mine.json()["id"] == sid
