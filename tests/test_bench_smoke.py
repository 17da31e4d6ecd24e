"""The benchmark suite in its tiny form, so that its scripts cannot rot.

Each benchmark runs as ``python -m bench --quick NAME`` into a temporary folder and its
output is checked for sense: the numbers are there and the requested sessions really
connected. No test asserts a timing; the figures of a quick run mean nothing.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from .utils import REPO, UNIT, redis_binary

pytestmark = [pytest.mark.slow, pytest.mark.redis]


def _run(name: str, out: Path) -> dict[str, Any]:
    if redis_binary() is None:
        if os.environ.get("PRESENCE_REQUIRE_REDIS") == "1":
            pytest.fail("PRESENCE_REQUIRE_REDIS=1 but redis-server is not installed")
        pytest.skip("redis-server is not installed; the benchmarks start their own")
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    done = subprocess.run(
        [sys.executable, "-m", "bench", "--quick", "--out", str(out), name],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=3000 * UNIT,
    )
    assert done.returncode == 0, done.stderr[-4000:]
    assert (out / "RESULTS.md").is_file()
    assert (out / "results.png").stat().st_size > 0
    results = json.loads((out / "results.json").read_text())
    result: dict[str, Any] = results["benchmarks"][name]
    assert result["quick"] is True
    return result


def _number(value: Any) -> bool:
    return isinstance(value, int | float) and math.isfinite(value)


def test_idle_connects_every_requested_socket(tmp_path: Path) -> None:
    """Every step of the idle benchmark holds the sockets it asked for, with readings."""
    result = _run("idle", tmp_path)
    assert result["summary"]["all_connected"] is True
    for r in result["rounds"]:
        assert _number(r["rss_kib_per_session"])
        assert _number(r["cpu_us_per_session_s"])
        for step in r["plateaus"]:
            assert step["open_clients"] == step["n"]
            assert step["handshakes"] > 0
            assert step["rss_kib"] > 0
            if r["kind"] == "service":
                assert step["server_sockets"] == step["n"]
                assert step["refresher_ticks"] >= 1
                assert _number(step["round_trips_per_tick"])
        # The reconnect storm at the top N: every dropped socket back, the stall probed.
        storm = r["storm"]
        assert storm["reopened"] == storm["count"] == 20
        assert storm["open_after"] == r["plateaus"][-1]["n"]
        assert storm["loop_stall"]["samples"] > 0
    assert result["summary"]["storm_all_back"] is True


def test_capacity_holds_every_session(tmp_path: Path) -> None:
    """The capacity run connects all its sessions over several processes, joins each to
    its room and watches it, samples them, and reads Redis's memory at each step."""
    result = _run("capacity", tmp_path)
    sizes = result["sizes"]
    assert result["connected"] == result["requested"] == sizes["sessions"]
    assert result["joins_accepted"] == result["watches_accepted"] == result["requested"]
    assert result["join_failures"] == {}
    assert all(n > 0 for n in result["errors"].values())
    assert result["never_connected"] == 0
    assert len(result["server_rss_mib"]) == sizes["processes"]
    assert result["samples"]
    assert result["missing_at_end"] >= 0 and result["members_missing_at_end"] >= 0
    assert result["samples"][-1]["redis_keys"] > 0
    assert result["members"] == sizes["sessions"] // sizes["per_user"]
    assert set(result["redis_memory"]) == {"before", "sessions", "sockets", "joined"}
    for key in ("rss_kib_per_session", "cpu_us_per_session_s", "redis_bytes_per_member"):
        assert _number(result[key])
    assert result["drops"] >= 0 and result["spurious_expiries"] >= 0


def test_storm_reconnects_after_a_restart(tmp_path: Path) -> None:
    """The storm restarts the server under connected clients and counts who came back;
    with rooms, it checks the rooms' member lists and the leaves the watchers were told."""
    result = _run("storm", tmp_path)
    for r in result["rounds"]:
        assert r["connected_before"] == result["sizes"]["clients"]
        assert r["lost"] == result["sizes"]["clients"]
        assert r["back"] >= 0
        assert r["errors_5xx"] >= 0
    # With rooms: every room's member list is right again, in Redis and in every
    # watcher's view, and no watcher is told a leave for a client back within the grace.
    (rooms,) = [r for r in result["rounds"] if r["kind"] == "presence"]
    presence = rooms["presence"]
    assert rooms["all_back"] is True
    assert _number(presence["right_s"]) and presence["right_at_end"] is True
    assert presence["watchers"] == result["sizes"]["watchers"]
    assert presence["leaves_for_clients_back_within_grace"] == 0
    assert presence["back_within_grace"] + presence["back_after_grace"] == rooms["lost"]
    assert presence["users_told_a_leave"] <= presence["back_after_grace"]
    assert set(presence["leaves_by_reason"]) <= {"closed", "timeout", "node_down"}
    assert presence["redis_missing_at_end"] == presence["redis_extra_at_end"] == 0
    views = presence["views_at_end"]
    assert views["views"] > 0 and views["wrong"] == views["missing"] == 0


def test_rest_heartbeats_are_answered(tmp_path: Path) -> None:
    """wrk's heartbeats reach both servers and every one is answered 200."""
    if shutil.which("wrk") is None:
        pytest.skip("wrk is not installed (scripts/bench installs it)")
    result = _run("rest", tmp_path)
    for r in result["rounds"]:
        assert r["requests"] > 0
        assert set(r["statuses"]) == {"200"}
        assert _number(r["p99_ms"])


def test_cleanup_deletes_exactly_the_inactive(tmp_path: Path) -> None:
    """Each timed cleanup deletes the inactive sessions and keeps the others."""
    result = _run("cleanup", tmp_path)
    for case in result["summary"].values():
        assert case["all_deleted"] and case["rest_kept"]
        assert _number(case["ms"]["median"])


def test_redis_memory_is_measured_per_variant(tmp_path: Path) -> None:
    """Every memory variant yields a positive figure per session."""
    result = _run("redis_memory", tmp_path)
    assert result["summary"]
    for summary in result["summary"].values():
        assert summary["median"] > 0


def test_profiles_are_collected(tmp_path: Path) -> None:
    """py-spy and tracemalloc profiles come back with samples and allocation sites."""
    if not (Path(sys.executable).parent / "py-spy").exists() and shutil.which("py-spy") is None:
        pytest.skip("py-spy is not installed (scripts/bench installs it)")
    result = _run("profile", tmp_path)
    # The quick run samples idle stacks too (Sizes.idle), or a quiet machine gives none.
    assert result["idle_service"]["own"] and result["idle_floor"]["own"]
    assert result["rest_service"]["own"]
    assert result["memory_service"]["by_line"]
    assert result["memory_floor"]["sockets"] > 0


def test_fanout_delivers_every_join_to_every_watcher(tmp_path: Path) -> None:
    """Every watcher of the room, on every process, gets every join, with the diffs
    published and the Redis commands counted."""
    result = _run("fanout", tmp_path)
    sizes = result["sizes"]
    assert result["summary"]["all_complete"] is True
    for r in result["rounds"]:
        assert r["watchers"] == sizes["watchers"]
        assert r["joins"] == sizes["joiners"]
        assert r["pairs_missing"] == 0
        assert r["watchers_complete"] == sizes["watchers"]
        assert r["pair_latency_s"]["n"] == sizes["watchers"] * sizes["joiners"]
        assert _number(r["pair_latency_s"]["p99"])
        assert _number(r["all_watchers_latency_s"]["p99"])
        # Coalesced: fewer diffs than joins reach each watcher, and every join is in one.
        assert 0 < r["diffs_published"] <= sizes["joiners"]
        assert r["messages_per_watcher"]["p50"] > 0
        assert r["naive"]["messages_per_watcher"] == sizes["joiners"]
        assert r["bytes_per_watcher"]["p50"] > 0
        assert r["redis"]["commands_per_join"] > 0
        assert r["redis"]["publish"] == r["diffs_published"]
        assert len(r["loop_stall_ms"]) == sizes["processes"]


def test_reclaim_tells_every_watcher_every_node_down_leave(tmp_path: Path) -> None:
    """Every watcher on the surviving processes is told each of the killed process's
    members' leaves, with reason node_down, and Redis holds none of them afterwards."""
    result = _run("reclaim", tmp_path)
    sizes = result["sizes"]
    assert result["summary"]["all_complete"] is True
    assert result["summary"]["redis_clean"] is True
    for r in result["rounds"]:
        assert r["members"] == sizes["members"]
        assert r["watchers_complete"] == sizes["watchers"]
        assert r["leaves_missing"] == 0
        assert r["watcher_leaves"] == [sizes["members"]] * sizes["watchers"]
        assert set(r["leaves_by_reason"]) == {"node_down"}
        assert _number(r["watcher_complete_s"]["max"])
        assert r["redis"]["commands_per_member"] > 0
        assert r["redis"]["commands"].get("evalsha", 0) > 0
        assert r["redis_after"] == {
            "room_rows": 0,
            "room_users": 0,
            "rooms_listed": 0,
            "tab_fields": 0,
            "leases_before": sizes["survivors"] + 1,
            "leases_after": sizes["survivors"],
        }
        assert len(r["loop_stall_ms"]) == sizes["survivors"]


def test_peers_connects_and_pings_every_socket(tmp_path: Path) -> None:
    """Presence, python-socketio and Node.js Socket.IO 4 each hold every socket asked for:
    the Socket.IO ones completed their namespace connect and answered the pings each
    window should hold, so that no figure is read off half-open sockets."""
    if shutil.which("node") is None or shutil.which("npm") is None:
        pytest.skip("node and npm are not installed; the peers benchmark needs them")
    result = _run("peers", tmp_path)
    summary = result["summary"]
    assert summary["kinds"] == ["service", "python-socketio", "node"]
    assert summary["all_connected"] is True
    assert summary["pings_flowing"] is True
    assert result["versions"]["socket.io"].startswith("4.")
    for r in result["rounds"]:
        assert _number(r["rss_kib_per_connection"])
        assert _number(r["cpu_us_per_connection_s"])
        for step in r["plateaus"]:
            assert step["open_clients"] == step["n"]
            assert step["rss_kib"] > 0
            if r["kind"] == "service":
                assert step["sio_connects"] is None
            else:
                assert step["sio_connects"] == step["n"]
            # Pings flowed through the window to every socket: protocol pings or Engine.IO
            # ones, answered.
            assert step["sockets_unpinged"] == 0
            assert step["sockets_checked"] == step["n"] + 10  # the warm-up's sockets too
            assert step["pongs"] >= step["pongs_expected"] * 0.75
    for ratio in ("rss_ratio_lighter", "cpu_ratio_lighter"):
        assert summary[ratio]["n"] == 1
