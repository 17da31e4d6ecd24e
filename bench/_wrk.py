"""The wrk Lua script that heartbeats sessions round-robin, shared by ``bench/rest.py``
and ``tests/test_recovery_under_load.py``.

Each request is formatted once in ``init``; ``request`` only cycles through them, so the
script costs wrk next to nothing per request. The script prints ``status <code> <count>``
lines when wrk is done and, with ``track_seen``, a ``seen <session id> <last_seen>`` line
per session with the latest ``last_seen`` that a 200 acknowledged (a match on every body:
keep it out of a benchmark).
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

_SEEN_RESPONSE = """
  if status == 200 then
    local sid = string.match(body, '"id":"([^"]+)"')
    local at = string.match(body, '"last_seen":"([^"]+)"')
    -- ISO 8601 times of one fixed shape: later is greater.
    if sid and at and (seen[sid] == nil or at > seen[sid]) then seen[sid] = at end
  end"""

_SEEN_DONE = """
    for sid, at in pairs(thread:get("seen")) do
      if latest[sid] == nil or at > latest[sid] then latest[sid] = at end
    end"""

_SEEN_PRINT = """
  for sid, at in pairs(latest) do
    io.write(string.format("seen %s %s\\n", sid, at))
  end"""


def heartbeat_script(
    path: Path,
    requests: Iterable[tuple[str, str]],
    *,
    writer: str,
    track_seen: bool = False,
) -> Path:
    """Write to ``path`` a script POSTing ``{}`` to each ``(path, bearer token)`` in turn."""
    entries = ",\n".join(f'  {{"{url}", "Bearer {bearer}"}}' for url, bearer in requests)
    seen = track_seen
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(
        f"""-- Written by {writer}.
local entries = {{
{entries}
}}
local requests = {{}}
local i = 0
local threads = {{}}
statuses = {{}}
seen = {{}}
function setup(thread)
  table.insert(threads, thread)
end
function init(args)
  for n, e in ipairs(entries) do
    requests[n] = wrk.format("POST", e[1], {{
      ["Authorization"] = e[2],
      ["Content-Type"] = "application/json",
    }}, "{{}}")
  end
  i = math.random(#requests)
end
function request()
  i = i % #requests + 1
  return requests[i]
end
function response(status, headers, body)
  statuses[status] = (statuses[status] or 0) + 1{_SEEN_RESPONSE if seen else ""}
end
function done(summary, latency, requests)
  local total, latest = {{}}, {{}}
  for _, thread in ipairs(threads) do
    for status, count in pairs(thread:get("statuses")) do
      total[status] = (total[status] or 0) + count
    end{_SEEN_DONE if seen else ""}
  end
  for status, count in pairs(total) do
    io.write(string.format("status %d %d\\n", status, count))
  end{_SEEN_PRINT if seen else ""}
end
"""
    )
    return path
