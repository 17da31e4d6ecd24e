// Presence in the browser: who is in a room, live, over the manager's socket,
// or polled over REST while the socket is down.
//
// The manager owns one PresenceRooms; pages get a PresenceRoom per room from
// `manager.join()` / `manager.watch()`. What the page wants (joined with a meta,
// watched) is kept apart from what the current transport has been told, and a
// reconcile step, run once per microtask, sends only the difference. That is
// how joins and watches survive a reconnect (a new socket has been told
// nothing, so everything is sent again), a fallback to REST (joins become
// POSTs, the list is polled), and React StrictMode's unmount and remount in
// one tick (a leave and a join that cancel send nothing).
//
// A room's list is never wrong: a diff whose seq is not the next one (a gap)
// or one the server truncated is not applied; the room asks for a sync again
// (`presence.watch`) and waits for it.

/** A room name, as the server accepts it. */
export const ROOM_PATTERN = /^[A-Za-z0-9_.:@-]{1,128}$/;

// Pages of a room read over REST at most, for one sync or one poll (the
// server's page is PRESENCE_ROOM_LIST_LIMIT members, 1000 by default).
const MAX_PAGES = 50;
// A room's meta is sent at most this often (the latest wins): a page that sets
// it on every keystroke must not run into the server's message rate
// (PRESENCE_WS_MESSAGES_PER_SECOND, 10 by default), which closes the socket.
export const UPDATE_INTERVAL_MS = 250;
// Server error codes after which a room is not asked for again on this transport.
// A join or watch refused for a passing reason (the store busy, a rate limit) is asked
// again after a full-jitter delay, doubling from this base up to the cap, reset once the
// room's sync arrives.
const RETRY_BASE_MS = 1000;
const RETRY_CAP_MS = 30_000;

const REFUSALS = new Set(['room_forbidden', 'forbidden', 'invalid_room', 'too_many_rooms', 'invalid_body', 'invalid_message']);

function sameMember(a, b) {
  return (
    a.user === b.user &&
    a.status === b.status &&
    a.sessions === b.sessions &&
    a.since === b.since &&
    JSON.stringify(a.meta ?? null) === JSON.stringify(b.meta ?? null)
  );
}

function encodeMeta(meta) {
  return JSON.stringify(meta === undefined ? null : meta);
}

function member(raw) {
  // JSON.parse once at the edge: what reaches the page is a frozen plain object.
  return Object.freeze({
    user: String(raw.user),
    status: raw.status,
    sessions: Number(raw.sessions) || 0,
    meta: raw.meta ?? null,
    since: raw.since ?? null,
  });
}

/**
 * One room as this tab sees it. An `EventTarget`:
 *
 * - `sync` {members, count, seq, partial}: a full list arrived (socket sync or poll);
 * - `join` {user, member}, `leave` {user, reason, lastSeen, member},
 *   `update` {user, member, previous}: one member changed; `synced: true` when
 *   it was found by comparing a sync (or a poll) with the previous list, and
 *   then a leave's reason is null (the server said none);
 * - `change`: anything above, or `status`, changed;
 * - `error` {error}: the server refused this room (forbidden, too many rooms,
 *   meta too large, ...).
 *
 * `members` is a new Map after every change (and the same one otherwise), and a
 * member object is replaced only when that member changed, so a view can
 * compare identities.
 */
export class PresenceRoom extends EventTarget {
  #name;
  #members = new Map();
  #count = 0;
  #seq = -1;
  #status = 'connecting';
  #partial = false;
  #error = null;
  #synced = false;
  // Members kept from before a sync that had further pages, until those pages
  // say whether they are still there.
  #carried = new Set();
  #firstPages = false; // those pages complete the first list: no joins to tell

  constructor(name) {
    super();
    this.#name = name;
  }

  get name() {
    return this.#name;
  }

  /** Members by user: `{user, status, sessions, meta, since}`. */
  get members() {
    return this.#members;
  }

  /** How many users are in the room (may exceed `members.size` while pages load). */
  get count() {
    return this.#count;
  }

  /** The seq of the last sync or diff applied; -1 before the first. */
  get seq() {
    return this.#seq;
  }

  /**
   * 'connecting' (no list yet), 'live' (over the socket), 'syncing' (waiting for
   * a fresh sync after a gap or a reconnect), 'polling' (the socket is down: the
   * list is polled over REST), 'paused' (hidden while polling), 'offline' (the
   * session is not running), 'error' (the server refused the room), 'closed'.
   */
  get status() {
    return this.#status;
  }

  /** True when the server said its list is only one process's (Redis away). */
  get partial() {
    return this.#partial;
  }

  /** The server's last refusal for this room, or null. */
  get error() {
    return this.#error;
  }

  // --- driven by PresenceRooms -----------------------------------------------

  /** @internal */
  _setStatus(status) {
    if (status === this.#status) return;
    this.#status = status;
    if (status !== 'error') this.#error = null;
    this.#emit('change', {});
  }

  /** @internal */
  _fail(error) {
    this.#error = error;
    this.#status = 'error';
    this.#emit('error', { error });
    this.#emit('change', {});
  }

  /**
   * A full list: a socket sync or a REST page (with the rest of its pages).
   * @internal
   */
  _sync({ seq, count, members, partial = false, next: more = null }, status) {
    count = Number(count) || 0;
    const next = new Map();
    for (const raw of members) {
      const incoming = member(raw);
      const known = this.#members.get(incoming.user);
      next.set(incoming.user, known && sameMember(known, incoming) ? known : incoming);
    }
    this.#carried = new Set();
    this.#firstPages = !this.#synced;
    if (more) {
      // Only the first page: whoever is not on it may be on the next ones.
      for (const [user, known] of this.#members) {
        if (!next.has(user)) {
          next.set(user, known);
          this.#carried.add(user);
        }
      }
    }
    const changes = [];
    if (this.#synced) {
      for (const [user, now] of next) {
        const before = this.#members.get(user);
        if (!before) changes.push(['join', { user, member: now, synced: true }]);
        else if (before !== now) changes.push(['update', { user, member: now, previous: before, synced: true }]);
      }
      for (const [user, before] of this.#members) {
        if (!next.has(user)) changes.push(['leave', { user, reason: null, lastSeen: null, member: before, synced: true }]);
      }
    }
    const first = !this.#synced;
    const changed = first || changes.length > 0 || this.#count !== count || this.#seq !== seq || this.#partial !== Boolean(partial);
    this.#synced = true;
    // The same Map while nobody changed, so that a view comparing identities
    // does not redraw on every poll.
    if (first || changes.length > 0) this.#members = next;
    this.#count = count;
    this.#seq = seq;
    this.#partial = Boolean(partial);
    const statusChanged = status !== this.#status;
    this.#status = status;
    this.#error = null;
    this.#emit('sync', { members: this.#members, count, seq, partial: this.#partial });
    for (const [type, detail] of changes) this.#emit(type, detail);
    if (changed || statusChanged) this.#emit('change', {});
  }

  /**
   * Further members read over REST after a sync that had `next`; users a diff
   * touched since are left as the diff made them.
   * @internal
   */
  _more(members, touched) {
    const next = new Map(this.#members);
    const events = [];
    const seen = new Set();
    for (const raw of members) {
      const incoming = member(raw);
      seen.add(incoming.user);
      if (touched.has(incoming.user)) continue;
      const known = next.get(incoming.user);
      if (known && sameMember(known, incoming)) continue;
      next.set(incoming.user, incoming);
      if (known) events.push(['update', { user: incoming.user, member: incoming, previous: known, synced: true }]);
      else if (!this.#firstPages) events.push(['join', { user: incoming.user, member: incoming, synced: true }]);
    }
    for (const user of this.#carried) {
      if (seen.has(user) || touched.has(user) || !next.has(user)) continue;
      events.push(['leave', { user, reason: null, lastSeen: null, member: next.get(user), synced: true }]);
      next.delete(user);
    }
    this.#carried = new Set();
    if (next.size === this.#members.size && events.length === 0 && [...next].every(([user, m]) => this.#members.get(user) === m)) return;
    this.#members = next;
    for (const [type, detail] of events) this.#emit(type, detail);
    this.#emit('change', {});
  }

  /**
   * Applies a diff; false when it is not the next one (nothing applied).
   * @internal
   */
  _apply(diff, touched) {
    const seq = Number(diff.seq);
    if (seq <= this.#seq) return true; // already in the sync this list came from
    if (seq !== this.#seq + 1 || diff.truncated) return false;
    const next = new Map(this.#members);
    const events = [];
    // This list may come from a sync read inside the diff's window, which shows what
    // that window did already: a leave of someone it never held (who came and went
    // inside the window), or a join or update it holds alike, is no event.
    for (const raw of diff.leaves ?? []) {
      const user = String(raw.user);
      const before = next.get(user);
      touched?.add(user);
      if (before === undefined) continue;
      next.delete(user);
      events.push(['leave', { user, reason: raw.reason ?? null, lastSeen: raw.last_seen ?? null, member: before }]);
    }
    for (const raw of [...(diff.joins ?? []), ...(diff.updates ?? [])]) {
      const incoming = member(raw);
      const before = next.get(incoming.user);
      touched?.add(incoming.user);
      if (before && sameMember(before, incoming)) continue;
      next.set(incoming.user, incoming);
      if (before) events.push(['update', { user: incoming.user, member: incoming, previous: before }]);
      else events.push(['join', { user: incoming.user, member: incoming }]);
    }
    this.#members = next;
    this.#seq = seq;
    this.#count = Number(diff.count) || 0;
    for (const [type, detail] of events) this.#emit(type, detail);
    this.#emit('change', {});
    return true;
  }

  #emit(type, detail) {
    this.dispatchEvent(new CustomEvent(type, { detail }));
  }
}

/**
 * The rooms of one ChatSessionManager: what the page wants, what the current
 * transport was told, and the REST polling. Created by the manager, which
 * hands it a `port`:
 *
 * - `send(message)`: sends over the open socket; false when there is none;
 * - `request(method, url, body)`: a REST call, resolving to `{status, ok, data}`;
 * - `sessionId()`, `status()`, `intervalMs()`: the manager's current values;
 * - `chatUrl`, `presenceUrl`: the REST bases;
 * - `report(error, context)`: the manager's `error` event.
 */
export class PresenceRooms {
  #port;
  // name -> {room, joined, meta, watchers}: what the page wants.
  #wanted = new Map();
  // name -> {joined, meta, watching}: what the current transport was told.
  #applied = new Map();
  #transport = null; // 'socket' | 'rest' | null
  #session = null; // the session the applied state belongs to
  // Rooms joined on a transport that went away before their leave was sent.
  #departed = new Set();
  #scheduled = false;
  #pollTimer = null;
  #pollMs = null;
  #polling = new Set(); // rooms with a poll in flight
  #paging = new Map(); // room -> users touched by diffs while its pages load
  #updateTimers = new Map(); // room -> the timer of its next meta update
  #generation = 0;

  constructor(port) {
    this.#port = port;
  }

  /** The room object for `name`, if the page joined or watches it. */
  get(name) {
    return this.#wanted.get(name)?.room ?? null;
  }

  join(name, meta) {
    const entry = this.#want(name);
    entry.joined = true;
    entry.meta = meta === undefined ? null : meta;
    this.#schedule();
    return entry.room;
  }

  update(name, meta) {
    const entry = this.#wanted.get(checkRoom(name));
    if (!entry?.joined) {
      this.#port.report(new TypeError(`update(${JSON.stringify(name)}): this tab has not joined that room`), 'presence');
      return false;
    }
    entry.meta = meta === undefined ? null : meta;
    this.#schedule();
    return true;
  }

  leave(name) {
    const entry = this.#wanted.get(checkRoom(name));
    if (!entry?.joined) return false;
    entry.joined = false;
    this.#schedule();
    return true;
  }

  watch(name) {
    const entry = this.#want(name);
    entry.watchers += 1;
    this.#schedule();
    return entry.room;
  }

  unwatch(name) {
    const entry = this.#wanted.get(checkRoom(name));
    if (!entry || entry.watchers === 0) return false;
    entry.watchers -= 1;
    this.#schedule();
    return true;
  }

  /** The manager's status changed. */
  statusChanged(status) {
    if (status === 'connected') this.#switchTo('socket');
    else if (status === 'polling') this.#switchTo('rest');
    else this.#switchTo(null, status === 'paused' ? 'paused' : status === 'connecting' ? 'connecting' : 'offline');
  }

  /** A presence message from the socket (sync, diff, or an error naming a room). */
  receive(message) {
    if (this.#transport !== 'socket') return;
    try {
      this.#receive(message);
    } catch (error) {
      // A message this client cannot read (a newer or broken server): said, not thrown.
      this.#port.report(error, 'presence');
    }
  }

  #receive(message) {
    const entry = this.#wanted.get(message.room);
    if (!entry) return; // a room this tab has let go of; its unwatch is on the way
    const room = entry.room;
    if (message.type === 'presence.sync') {
      const applied = this.#applied.get(room.name);
      if (applied) applied.attempt = 0;
      this.#paging.delete(room.name);
      room._sync(message, 'live');
      if (message.next) this.#page(room, message.next);
    } else if (message.type === 'presence.diff') {
      if (room.status !== 'live') return; // a sync is on the way and covers it
      if (!room._apply(message, this.#paging.get(room.name))) this.#resync(room);
    } else if (message.type === 'error') {
      this.#refused(room, message.code, message.message);
    }
  }

  // --- desired state -----------------------------------------------------------

  #want(name) {
    checkRoom(name);
    let entry = this.#wanted.get(name);
    if (!entry) {
      entry = { room: new PresenceRoom(name), joined: false, meta: null, watchers: 0 };
      this.#wanted.set(name, entry);
      if (this.#transport === null) entry.room._setStatus(this.#idleStatus());
    }
    return entry;
  }

  #idleStatus() {
    const status = this.#port.status();
    if (status === 'paused') return 'paused';
    if (status === 'connecting') return 'connecting';
    return 'offline';
  }

  #schedule() {
    if (this.#scheduled) return;
    this.#scheduled = true;
    queueMicrotask(() => {
      this.#scheduled = false;
      this.#reconcile();
    });
  }

  #switchTo(transport, idleStatus = 'offline') {
    this.#generation += 1;
    this.#clearUpdateTimers();
    this.#paging.clear();
    this.#polling.clear();
    this.#stopPolling();
    if (transport !== null) {
      // A new transport has been told nothing. Rooms the old one joined that
      // the page has left since may be kept by the server through its grace:
      // they are left over REST, which works whatever holds the session.
      const session = this.#port.sessionId();
      if (session === this.#session) {
        for (const [name, applied] of this.#applied) {
          if (this.#toldJoined(applied) && !this.#wanted.get(name)?.joined) this.#departed.add(name);
        }
      } else {
        this.#departed.clear(); // another session: the old one's rooms go with it
      }
      this.#applied.clear();
      this.#session = session;
    }
    this.#transport = transport;
    for (const { room } of this.#wanted.values()) {
      room._setStatus(transport === 'socket' ? 'syncing' : transport === 'rest' ? 'polling' : idleStatus);
    }
    this.#reconcile();
  }

  #toldJoined(applied) {
    // A join still in flight may have been taken: it counts as told.
    return Boolean(applied && (applied.joined || applied.pending));
  }

  // --- telling the transport -------------------------------------------------

  #reconcile() {
    if (this.#departed.size > 0 && this.#transport !== null) {
      for (const name of [...this.#departed]) {
        if (this.#wanted.get(name)?.joined) continue; // joined again: nothing to leave
        this.#restLeave(name);
      }
      this.#departed.clear();
    }
    for (const [name, entry] of [...this.#wanted]) {
      const active = entry.joined || entry.watchers > 0;
      if (this.#transport === 'socket') this.#reconcileSocket(name, entry, active);
      else if (this.#transport === 'rest') this.#reconcileRest(name, entry, active);
      if (!active) {
        this.#clearUpdateTimer(name);
        if (this.#transport === null && this.#toldJoined(this.#applied.get(name))) this.#departed.add(name);
        this.#wanted.delete(name);
        this.#applied.delete(name);
        entry.room._setStatus('closed');
      }
    }
    if (this.#transport === 'rest') this.#startPolling();
  }

  #reconcileSocket(name, entry, active) {
    const applied = this.#applied.get(name) ?? { joined: false, meta: null, watching: false };
    if (applied.refused) return;
    const send = (message) => this.#port.send(message);
    if (entry.joined) {
      const meta = encodeMeta(entry.meta);
      if (!applied.joined) {
        if (!send({ type: 'presence.join', room: name, meta: entry.meta })) return;
        applied.updatedAt = Date.now();
        if (!applied.watching) entry.room._setStatus('syncing');
      } else if (applied.meta !== meta) {
        if (this.#throttled(name, applied)) return;
        if (!send({ type: 'presence.update', room: name, meta: entry.meta })) return;
        applied.updatedAt = Date.now();
      }
      this.#applied.set(name, { joined: true, meta, watching: true, updatedAt: applied.updatedAt ?? 0, attempt: applied.attempt });
      return;
    }
    if (applied.joined) {
      // presence.leave stops watching too.
      if (!send({ type: 'presence.leave', room: name })) return;
      applied.joined = false;
      applied.watching = false;
    }
    if (active && !applied.watching) {
      if (!send({ type: 'presence.watch', room: name })) return;
      applied.watching = true;
      entry.room._setStatus('syncing');
    } else if (!active && applied.watching) {
      send({ type: 'presence.unwatch', room: name });
      applied.watching = false;
    }
    this.#applied.set(name, applied);
  }

  #reconcileRest(name, entry, active) {
    const applied = this.#applied.get(name) ?? { joined: false, meta: null, watching: true };
    if (applied.refused || applied.pending) {
      this.#applied.set(name, applied);
      return;
    }
    const meta = encodeMeta(entry.meta);
    if (entry.joined && (!applied.joined || applied.meta !== meta)) {
      if (applied.joined && this.#throttled(name, applied)) {
        this.#applied.set(name, applied);
        return;
      }
      applied.updatedAt = Date.now();
      applied.pending = true;
      this.#applied.set(name, applied);
      this.#restJoin(name, entry.meta, meta, applied);
    } else if (!entry.joined && applied.joined) {
      applied.joined = false;
      this.#applied.set(name, applied);
      this.#restLeave(name);
    } else {
      this.#applied.set(name, applied);
    }
    if (!active) this.#applied.delete(name);
  }

  async #restJoin(name, meta, encoded, applied) {
    const generation = this.#generation;
    const session = this.#port.sessionId();
    try {
      const response = await this.#port.request('POST', `${this.#port.chatUrl}/sessions/${encodeURIComponent(session)}/rooms/${encodeURIComponent(name)}`, { meta });
      if (generation !== this.#generation) return;
      applied.pending = false;
      if (response.ok) {
        applied.joined = true;
        applied.meta = encoded;
        // The page may have changed its mind while the request was out.
        this.#schedule();
        this.#poll(name);
      } else if (response.status !== 404 && response.status < 500) {
        // 404: the session is gone, which the manager's heartbeat reports; 5xx
        // and 429-free network trouble: tried again on the next poll.
        applied.refused = true;
        this.#refused(this.#wanted.get(name)?.room, response.data?.error?.code, response.data?.error?.message, response.status);
      }
    } catch (error) {
      if (generation !== this.#generation) return;
      applied.pending = false;
      this.#port.report(error, 'presence');
    }
  }

  async #restLeave(name) {
    const session = this.#port.sessionId();
    if (!session) return;
    try {
      // 404 not_in_room is fine: the server had already let it go.
      await this.#port.request('DELETE', `${this.#port.chatUrl}/sessions/${encodeURIComponent(session)}/rooms/${encodeURIComponent(name)}`);
    } catch (error) {
      this.#port.report(error, 'presence');
    }
  }

  /** True when `name`'s last meta went out too recently; its next goes by a timer. */
  #throttled(name, applied) {
    const wait = (applied.updatedAt ?? 0) + UPDATE_INTERVAL_MS - Date.now();
    if (wait <= 0) return false;
    if (!this.#updateTimers.has(name)) {
      this.#updateTimers.set(
        name,
        setTimeout(() => {
          this.#updateTimers.delete(name);
          this.#reconcile();
        }, wait),
      );
    }
    return true;
  }

  #clearUpdateTimer(name) {
    const timer = this.#updateTimers.get(name);
    if (timer !== undefined) clearTimeout(timer);
    this.#updateTimers.delete(name);
  }

  #clearUpdateTimers() {
    for (const name of [...this.#updateTimers.keys()]) this.#clearUpdateTimer(name);
  }

  #resync(room) {
    const applied = this.#applied.get(room.name);
    room._setStatus('syncing');
    // Watching a room already watched makes the server send a fresh sync.
    if (!this.#port.send({ type: 'presence.watch', room: room.name }) && applied) applied.watching = false;
  }

  #refused(room, code, message, status = null) {
    if (!room) return;
    if (code === 'not_in_room') return; // a leave for a room the server had let go of
    const error = Object.assign(new Error(message || `The server refused the room ${room.name}`), { name: 'PresenceError', code: code ?? null, status });
    const applied = this.#applied.get(room.name);
    if (REFUSALS.has(code) || status !== null) {
      if (applied) applied.refused = true;
      room._fail(error);
    } else {
      // Anything else (the store busy, a rate limit): the socket stays; ask again.
      this.#port.report(error, 'presence');
      if (applied && (applied.joined || applied.watching)) this.#askAgain(room.name, applied);
    }
  }

  #askAgain(name, applied) {
    if (applied.retrying) return;
    applied.retrying = true;
    const attempt = applied.attempt ?? 0;
    const delay = Math.random() * Math.min(RETRY_CAP_MS, RETRY_BASE_MS * 2 ** attempt);
    setTimeout(() => {
      // Only if nothing was told since: a new transport or a leave has its own state.
      if (this.#applied.get(name) !== applied) return;
      this.#applied.set(name, { joined: false, meta: null, watching: false, attempt: attempt + 1 });
      this.#schedule();
    }, delay);
  }

  // --- pages and polling ---------------------------------------------------------

  async #readPages(name, cursor, generation) {
    const pages = [];
    for (let i = 0; i < MAX_PAGES; i += 1) {
      const query = cursor ? `?cursor=${encodeURIComponent(cursor)}` : '';
      const response = await this.#port.request('GET', `${this.#port.presenceUrl}/rooms/${encodeURIComponent(name)}${query}`);
      if (generation !== this.#generation) return null;
      if (!response.ok) return { failed: response };
      pages.push(response.data);
      cursor = response.data?.next;
      if (!cursor) break;
    }
    return { pages };
  }

  async #page(room, cursor) {
    const generation = this.#generation;
    const touched = new Set();
    this.#paging.set(room.name, touched);
    try {
      const result = await this.#readPages(room.name, cursor, generation);
      if (!result || this.#paging.get(room.name) !== touched) return;
      if (result.pages) room._more(result.pages.flatMap((page) => page?.members ?? []), touched);
    } catch (error) {
      if (generation === this.#generation) this.#port.report(error, 'presence');
    } finally {
      if (this.#paging.get(room.name) === touched) this.#paging.delete(room.name);
    }
  }

  #startPolling() {
    if (this.#wanted.size === 0) {
      this.#stopPolling(); // no timer left once the last room is let go of
      return;
    }
    const ms = this.#port.intervalMs();
    if (this.#pollTimer !== null && this.#pollMs === ms) return;
    this.#stopPolling();
    this.#pollMs = ms;
    this.#pollTimer = setInterval(() => this.#tick(), ms);
    // A room whose join is on its way is polled once the join is in.
    for (const name of this.#wanted.keys()) if (!this.#applied.get(name)?.pending) this.#poll(name);
  }

  #stopPolling() {
    if (this.#pollTimer !== null) clearInterval(this.#pollTimer);
    this.#pollTimer = null;
    this.#pollMs = null;
  }

  #tick() {
    if (this.#transport !== 'rest') return;
    if (this.#wanted.size === 0) {
      this.#stopPolling();
      return;
    }
    // A join the server could not take last time (503, network) is tried again.
    this.#reconcile();
    for (const name of this.#wanted.keys()) this.#poll(name);
  }

  async #poll(name) {
    if (this.#polling.has(name) || this.#transport !== 'rest') return;
    const generation = this.#generation;
    this.#polling.add(name);
    try {
      const result = await this.#readPages(name, null, generation);
      if (!result) return;
      const room = this.#wanted.get(name)?.room;
      if (!room || this.#applied.get(name)?.refused) return;
      if (result.failed) {
        const { status, data } = result.failed;
        if (status === 403 || status === 422) {
          const applied = this.#applied.get(name);
          if (applied) applied.refused = true;
          this.#refused(room, data?.error?.code, data?.error?.message, status);
        }
        return;
      }
      const [first] = result.pages;
      room._sync(
        {
          seq: first?.seq ?? -1,
          count: first?.count ?? 0,
          members: result.pages.flatMap((page) => page?.members ?? []),
          partial: result.pages.some((page) => page?.partial),
        },
        'polling',
      );
    } catch (error) {
      if (generation === this.#generation) this.#port.report(error, 'presence');
    } finally {
      if (generation === this.#generation) this.#polling.delete(name);
    }
  }
}

/** Throws a TypeError for a name the server would refuse (a programming error). */
export function checkRoom(name) {
  if (typeof name !== 'string' || !ROOM_PATTERN.test(name)) {
    throw new TypeError(`Not a room name: ${JSON.stringify(name)} (1 to 128 of A-Z a-z 0-9 _ . : @ -)`);
  }
  return name;
}

export default PresenceRoom;
