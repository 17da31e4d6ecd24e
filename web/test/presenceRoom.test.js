import { afterEach, beforeEach, describe, expect, it, vi } from 'vitest';
import { PresenceRoom, UPDATE_INTERVAL_MS, checkRoom } from '../src/presenceRoom.js';
import * as index from '../src/index.js';
import { flush, resetVisibility, setVisibility } from './fakes.js';
import { diff, memberOf, presenceSent, setupPresence, sync } from './presenceFakes.js';

const SECOND = 1000;

beforeEach(() => {
  vi.useFakeTimers({ toFake: ['setTimeout', 'clearTimeout', 'setInterval', 'clearInterval', 'Date'] });
});

afterEach(() => {
  vi.useRealTimers();
  resetVisibility();
});

function record(room, types = ['sync', 'join', 'leave', 'update', 'change', 'error']) {
  const events = [];
  for (const type of types) room.addEventListener(type, (event) => events.push({ type, detail: event.detail }));
  events.of = (type) => events.filter((e) => e.type === type).map((e) => e.detail);
  return events;
}

async function connected(options) {
  const fixture = setupPresence(options);
  await fixture.manager.startSession(null);
  await flush();
  expect(fixture.manager.status).toBe('connected');
  return fixture;
}

describe('the room object', () => {
  it('join sends presence.join with the meta and returns one EventTarget per room', async () => {
    const { manager, sockets } = await connected();
    const room = manager.join('general', { name: 'Ada' });
    expect(room).toBeInstanceOf(PresenceRoom);
    expect(room).toBeInstanceOf(EventTarget);
    expect(manager.join('general', { name: 'Ada' })).toBe(room);
    expect(manager.watch('general')).toBe(room);
    expect(manager.room('general')).toBe(room);
    await flush();
    expect(presenceSent(sockets.last)).toEqual([{ type: 'presence.join', room: 'general', meta: { name: 'Ada' } }]);
    expect(room.status).toBe('syncing');
    expect(index.PresenceRoom).toBe(PresenceRoom);
    manager.stopSession();
  });

  it('a sync fills members (a Map by user), count and seq; diffs apply joins, updates and leaves with their reasons', async () => {
    const { manager, sockets } = await connected();
    const room = manager.join('general');
    const events = record(room);
    await flush();
    const ada = memberOf('ada');
    sockets.last.receive(sync('general', 7, [ada, memberOf('bob', { status: 'away', sessions: 2 })]));
    expect(room.status).toBe('live');
    expect(room.seq).toBe(7);
    expect(room.count).toBe(2);
    expect(room.members).toBeInstanceOf(Map);
    expect([...room.members.keys()]).toEqual(['ada', 'bob']);
    expect(room.members.get('bob')).toMatchObject({ status: 'away', sessions: 2 });
    expect(events.of('sync')).toHaveLength(1);
    // The first sync is the starting list, not a stream of joins.
    expect(events.of('join')).toEqual([]);

    const before = room.members;
    const adaObject = room.members.get('ada');
    sockets.last.receive(
      diff('general', 8, {
        joins: [memberOf('cy')],
        updates: [memberOf('bob', { status: 'online', sessions: 2 })],
        leaves: [{ user: 'ada', reason: 'closed', last_seen: '2026-12-01T10:05:00.000Z' }],
        count: 2,
      }),
    );
    expect(room.seq).toBe(8);
    expect(room.count).toBe(2);
    expect([...room.members.keys()].sort()).toEqual(['bob', 'cy']);
    expect(room.members).not.toBe(before);
    expect(events.of('leave')).toEqual([{ user: 'ada', reason: 'closed', lastSeen: '2026-12-01T10:05:00.000Z', member: adaObject }]);
    expect(events.of('join').map((e) => e.user)).toEqual(['cy']);
    expect(events.of('update').map((e) => [e.user, e.previous.status, e.member.status])).toEqual([['bob', 'away', 'online']]);

    // An old diff (already in the sync) changes nothing.
    const after = room.members;
    sockets.last.receive(diff('general', 8, { joins: [memberOf('zed')], count: 3 }));
    expect(room.members).toBe(after);
    manager.stopSession();
  });

  it('a diff is each user as they are at its window\'s end: a leave of one never held, or a join of one held alike, is no event', async () => {
    // A sync read inside a window already has what that window did: its diff then
    // tells a member who came and went (a leave), one held already (a join or update).
    const { manager, sockets } = await connected();
    const room = manager.watch('lobby');
    const events = record(room, ['join', 'leave', 'update']);
    await flush();
    sockets.last.receive(sync('lobby', 3, [memberOf('ada'), memberOf('bob')]));
    sockets.last.receive(
      diff('lobby', 4, {
        joins: [memberOf('ada')],
        updates: [memberOf('bob'), memberOf('cy')],
        leaves: [{ user: 'zed', reason: 'node_down', last_seen: '2026-12-01T10:05:00.000Z' }],
        count: 3,
      }),
    );
    expect(room.seq).toBe(4);
    expect([...room.members.keys()].sort()).toEqual(['ada', 'bob', 'cy']);
    expect(events.map((e) => [e.type, e.detail.user])).toEqual([['join', 'cy']]);
    sockets.last.receive(
      diff('lobby', 5, {
        joins: [memberOf('bob', { status: 'away' })],
        leaves: [{ user: 'ada', reason: 'node_down', last_seen: '2026-12-01T10:06:00.000Z' }],
        count: 2,
      }),
    );
    expect(events.slice(1).map((e) => [e.type, e.detail.user])).toEqual([
      ['leave', 'ada'],
      ['update', 'bob'],
    ]);
    expect(events.at(-1).detail.previous.status).toBe('online');
    manager.stopSession();
  });

  it('keeps the Map and each unchanged member object when a sync brings nothing new', async () => {
    const { manager, sockets } = await connected();
    const room = manager.watch('lobby');
    await flush();
    sockets.last.receive(sync('lobby', 1, [memberOf('ada'), memberOf('bob')]));
    const members = room.members;
    const bob = room.members.get('bob');
    sockets.last.receive(sync('lobby', 1, [memberOf('ada'), memberOf('bob')]));
    expect(room.members).toBe(members);
    sockets.last.receive(sync('lobby', 2, [memberOf('ada', { status: 'away' }), memberOf('bob')]));
    expect(room.members).not.toBe(members);
    expect(room.members.get('bob')).toBe(bob);
    manager.stopSession();
  });

  it('watch is counted: the room is unwatched after as many unwatch() calls, and then closed', async () => {
    const { manager, sockets } = await connected();
    const room = manager.watch('lobby');
    manager.watch('lobby');
    await flush();
    expect(presenceSent(sockets.last)).toEqual([{ type: 'presence.watch', room: 'lobby' }]);
    manager.unwatch('lobby');
    await flush();
    expect(presenceSent(sockets.last)).toHaveLength(1);
    manager.unwatch('lobby');
    await flush();
    expect(presenceSent(sockets.last).at(-1)).toEqual({ type: 'presence.unwatch', room: 'lobby' });
    expect(room.status).toBe('closed');
    expect(manager.room('lobby')).toBeNull();
    expect(manager.unwatch('lobby')).toBe(false);
    manager.stopSession();
  });

  it('update sends presence.update; leave sends presence.leave, and a watcher keeps the room with a fresh watch', async () => {
    const { manager, sockets, events } = await connected();
    manager.watch('general');
    manager.join('general', { typing: false });
    await flush();
    await vi.advanceTimersByTimeAsync(SECOND);
    manager.update('general', { typing: true });
    await flush();
    manager.leave('general');
    await flush();
    expect(presenceSent(sockets.last)).toEqual([
      { type: 'presence.join', room: 'general', meta: { typing: false } },
      { type: 'presence.update', room: 'general', meta: { typing: true } },
      { type: 'presence.leave', room: 'general' },
      { type: 'presence.watch', room: 'general' },
    ]);
    expect(manager.room('general').status).toBe('syncing');
    // Updating a room this tab is not in is an error event, never a throw.
    expect(manager.update('general', {})).toBe(false);
    expect(events.of('error').at(-1).detail.context).toBe('presence');
    manager.stopSession();
  });

  it('sends a fast-changing meta at most every 250 ms, the latest winning, and leaves no timer when stopped', async () => {
    const { manager, sockets } = await connected();
    manager.join('general', { n: 0 });
    await flush();
    for (let n = 1; n <= 50; n += 1) {
      manager.update('general', { n });
      await vi.advanceTimersByTimeAsync(20); // a keystroke every 20 ms for a second
    }
    await vi.advanceTimersByTimeAsync(UPDATE_INTERVAL_MS);
    const sent = presenceSent(sockets.last);
    expect(sent[0]).toEqual({ type: 'presence.join', room: 'general', meta: { n: 0 } });
    expect(sent.length).toBeLessThanOrEqual(1 + Math.ceil((50 * 20) / UPDATE_INTERVAL_MS) + 1);
    expect(sent.at(-1)).toEqual({ type: 'presence.update', room: 'general', meta: { n: 50 } });
    manager.update('general', { n: 51 });
    await flush();
    manager.update('general', { n: 52 });
    await flush();
    manager.stopSession();
    expect(vi.getTimerCount()).toBe(0);
  });

  it('a leave and a join in the same tick (React StrictMode) send nothing', async () => {
    const { manager, sockets } = await connected();
    const room = manager.join('general', { a: 1 });
    await flush();
    manager.leave('general');
    expect(manager.join('general', { a: 1 })).toBe(room);
    await flush();
    expect(presenceSent(sockets.last)).toEqual([{ type: 'presence.join', room: 'general', meta: { a: 1 } }]);
    manager.stopSession();
  });

  it('refuses a bad room name with a TypeError before anything is sent', async () => {
    const { manager, sockets } = await connected();
    for (const bad of ['', 'a b', 'x'.repeat(129), 42, null, 'é']) {
      expect(() => manager.join(bad)).toThrow(TypeError);
      expect(() => manager.watch(bad)).toThrow(TypeError);
    }
    expect(checkRoom('team:42@x_y.z-1')).toBe('team:42@x_y.z-1');
    await flush();
    expect(presenceSent(sockets.last)).toEqual([]);
    manager.stopSession();
  });

  it('a server refusal naming the room becomes the room\u2019s error and status', async () => {
    const { manager, sockets } = await connected();
    const room = manager.join('secret');
    const events = record(room);
    await flush();
    sockets.last.receive({ type: 'error', code: 'room_forbidden', message: 'not yours', room: 'secret' });
    expect(room.status).toBe('error');
    expect(room.error).toMatchObject({ code: 'room_forbidden', message: 'not yours' });
    expect(events.of('error')).toHaveLength(1);
    // A diff or sync for another room goes to that room only.
    sockets.last.receive(sync('other', 1, [memberOf('ada')]));
    expect(room.members.size).toBe(0);
    manager.stopSession();
  });

  it('a join refused for a passing reason (store_unavailable) is sent again after a jittered delay, once, and not after the sync', async () => {
    const { manager, sockets, events } = await connected();
    const room = manager.join('general', { name: 'Ada' });
    await flush();
    const join = { type: 'presence.join', room: 'general', meta: { name: 'Ada' } };
    expect(presenceSent(sockets.last)).toEqual([join]);
    sockets.last.receive({ type: 'error', code: 'store_unavailable', message: 'try later', room: 'general' });
    sockets.last.receive({ type: 'error', code: 'store_unavailable', message: 'try later', room: 'general' });
    expect(events.of('error').filter((e) => e.detail.context === 'presence')).toHaveLength(2);
    await vi.advanceTimersByTimeAsync(1000); // attempt 0: within 1 s
    expect(presenceSent(sockets.last)).toEqual([join, join]);
    // Refused again: the next try is within 2 s, and only one is sent for it.
    sockets.last.receive({ type: 'error', code: 'store_unavailable', message: 'try later', room: 'general' });
    await vi.advanceTimersByTimeAsync(2000);
    expect(presenceSent(sockets.last)).toEqual([join, join, join]);
    // Taken: the sync comes, and nothing more is sent.
    sockets.last.receive(sync('general', 1, [memberOf('ada')]));
    expect(room.status).toBe('live');
    await vi.advanceTimersByTimeAsync(60_000);
    expect(presenceSent(sockets.last)).toEqual([join, join, join]);
    manager.stopSession();
  });

  it('a refusal that is final (room_forbidden) is not asked again', async () => {
    const { manager, sockets } = await connected();
    const room = manager.join('secret');
    await flush();
    sockets.last.receive({ type: 'error', code: 'room_forbidden', message: 'not yours', room: 'secret' });
    await vi.advanceTimersByTimeAsync(60_000);
    expect(presenceSent(sockets.last)).toHaveLength(1);
    expect(room.status).toBe('error');
    manager.stopSession();
  });

  it('a presence message it cannot read is an error event, never a throw, and changes nothing', async () => {
    const { manager, sockets, events } = await connected();
    const room = manager.watch('general');
    await flush();
    sockets.last.receive(sync('general', 1, [memberOf('ada')]));
    const members = room.members;
    for (const bad of [
      { type: 'presence.sync', room: 'general', seq: 2, count: 1, members: null },
      { type: 'presence.sync', room: 'general', seq: 3, count: 1, members: [null] },
      diff('general', 2, { joins: [null], count: 2 }),
      { type: 'presence.diff', room: { not: 'a name' }, seq: 2 },
    ]) {
      expect(() => sockets.last.receive(bad)).not.toThrow();
    }
    expect(room.members).toBe(members);
    expect(events.of('error').filter((e) => e.detail.context === 'presence').length).toBeGreaterThanOrEqual(3);
    manager.stopSession();
  });
});

describe('gaps in seq', () => {
  it('a diff that skips a seq is not applied: the room asks for a sync and ignores diffs until it comes', async () => {
    const { manager, sockets } = await connected();
    const room = manager.watch('general');
    const events = record(room);
    await flush();
    sockets.last.receive(sync('general', 3, [memberOf('ada'), memberOf('bob')]));
    const members = room.members;
    sockets.last.receive(diff('general', 5, { joins: [memberOf('cy')], count: 3 }));
    expect(room.members).toBe(members);
    expect(room.seq).toBe(3);
    expect(room.status).toBe('syncing');
    expect(presenceSent(sockets.last)).toEqual([
      { type: 'presence.watch', room: 'general' },
      { type: 'presence.watch', room: 'general' },
    ]);
    // Still in flight before the sync: not applied, no second request.
    sockets.last.receive(diff('general', 6, { leaves: [{ user: 'ada', reason: 'left' }], count: 2 }));
    expect(room.members.has('ada')).toBe(true);
    expect(presenceSent(sockets.last)).toHaveLength(2);

    // The sync is the truth; what changed since the last list is told as events.
    sockets.last.receive(sync('general', 6, [memberOf('bob'), memberOf('cy')]));
    expect(room.status).toBe('live');
    expect(room.seq).toBe(6);
    expect([...room.members.keys()]).toEqual(['bob', 'cy']);
    expect(events.of('join')).toEqual([{ user: 'cy', member: room.members.get('cy'), synced: true }]);
    expect(events.of('leave')).toMatchObject([{ user: 'ada', reason: null, synced: true }]);
    sockets.last.receive(diff('general', 7, { joins: [memberOf('dee')], count: 3 }));
    expect(room.members.has('dee')).toBe(true);
    manager.stopSession();
  });

  it('a truncated diff is not applied either: a sync is asked for', async () => {
    const { manager, sockets } = await connected();
    const room = manager.watch('big');
    await flush();
    sockets.last.receive(sync('big', 1, [memberOf('ada')]));
    sockets.last.receive(diff('big', 2, { joins: [memberOf('bob')], count: 5000, truncated: true }));
    expect(room.members.has('bob')).toBe(false);
    expect(room.status).toBe('syncing');
    expect(presenceSent(sockets.last).at(-1)).toEqual({ type: 'presence.watch', room: 'big' });
    manager.stopSession();
  });

  it('a diff before the first sync is ignored', async () => {
    const { manager, sockets } = await connected();
    const room = manager.watch('general');
    await flush();
    sockets.last.receive(diff('general', 0, { joins: [memberOf('ada')], count: 1 }));
    expect(room.members.size).toBe(0);
    expect(presenceSent(sockets.last)).toHaveLength(1);
    manager.stopSession();
  });

  it('a sync with `next` reads the rest over REST, leaving users a diff touched meanwhile as the diff made them', async () => {
    const { manager, sockets, presence } = await connected({ pageSize: 2 });
    for (const user of ['a', 'b', 'c', 'd', 'e']) presence.put('big', memberOf(user));
    const room = manager.watch('big');
    await flush();
    sockets.last.receive(sync('big', 5, [memberOf('a'), memberOf('b')], { count: 5, next: '2' }));
    // While the pages load, 'd' leaves.
    sockets.last.receive(diff('big', 6, { leaves: [{ user: 'd', reason: 'timeout' }], count: 4 }));
    await flush();
    await flush();
    expect(presence.polls('big').map((r) => r.url)).toEqual(['/api/v1/presence/rooms/big?cursor=2', '/api/v1/presence/rooms/big?cursor=4']);
    expect([...room.members.keys()].sort()).toEqual(['a', 'b', 'c', 'e']);
    expect(room.count).toBe(4);
    manager.stopSession();
  });
});

describe('large rooms', () => {
  it('a fresh sync with `next` keeps the known members until the pages say who left and who came', async () => {
    const { manager, sockets, presence } = await connected({ pageSize: 2 });
    const room = manager.watch('big');
    await flush();
    sockets.last.receive(sync('big', 1, ['a', 'b', 'c', 'd', 'e'].map((u) => memberOf(u))));
    const events = record(room);
    // Meanwhile d left and f came; the server holds a, b, c, e, f.
    for (const user of ['a', 'b', 'c', 'e', 'f']) presence.put('big', memberOf(user));
    sockets.last.receive(sync('big', 9, [memberOf('a'), memberOf('b')], { count: 5, next: '2' }));
    // The first page alone is not taken for the list: nobody left yet.
    expect(events.of('leave')).toEqual([]);
    expect(room.members.size).toBe(5);
    await flush();
    await flush();
    expect([...room.members.keys()].sort()).toEqual(['a', 'b', 'c', 'e', 'f']);
    expect(events.of('leave').map((e) => [e.user, e.reason, e.synced])).toEqual([['d', null, true]]);
    expect(events.of('join').map((e) => e.user)).toEqual(['f']);
    manager.stopSession();
  });
});

describe('reconnects and the REST fallback', () => {
  it('re-sends joins (with the latest meta) and watches on every new socket', async () => {
    const { manager, sockets } = await connected();
    manager.join('general', { v: 1 });
    manager.watch('lobby');
    await flush();
    manager.update('general', { v: 2 });
    await flush();
    const first = sockets.last;
    first.drop(1006);
    await flush();
    expect(manager.status).toBe('polling');
    expect(manager.room('general').status).toBe('polling');
    await vi.advanceTimersByTimeAsync(SECOND);
    await flush();
    expect(sockets.last).not.toBe(first);
    expect(manager.status).toBe('connected');
    expect(presenceSent(sockets.last)).toEqual([
      { type: 'presence.join', room: 'general', meta: { v: 2 } },
      { type: 'presence.watch', room: 'lobby' },
    ]);
    expect(manager.room('general').status).toBe('syncing');
    manager.stopSession();
  });

  it('over REST joins with a POST, polls the members at the heartbeat rhythm, and says the list is polled', async () => {
    const { manager, server, sockets, presence } = setupPresence({ sockets: 'refuse', options: { heartbeatIntervalMs: 10 * SECOND, backoff: { baseMs: 3_600_000, capMs: 3_600_000 } } });
    presence.put('general', memberOf('ada'));
    const room = manager.join('general', { name: 'Me' });
    expect(room.status).toBe('offline');
    const events = record(room);
    await manager.startSession(null);
    await flush();
    await flush();
    expect(manager.status).toBe('polling');
    expect(sockets.sockets).toHaveLength(1);
    const joins = server.calls('POST', /\/rooms\/general$/);
    expect(joins.map((r) => r.body)).toEqual([{ meta: { name: 'Me' } }]);
    expect(room.status).toBe('polling');
    expect([...room.members.keys()].sort()).toEqual(['ada', 'me']);
    expect(room.members.get('me').meta).toEqual({ name: 'Me' });
    const polled = presence.polls('general').length;
    expect(polled).toBe(1);

    // Someone comes; the next poll, one heartbeat interval later, shows them.
    presence.put('general', memberOf('bob'));
    await vi.advanceTimersByTimeAsync(10 * SECOND - 1);
    expect(room.members.has('bob')).toBe(false);
    await vi.advanceTimersByTimeAsync(1);
    await flush();
    expect(room.members.has('bob')).toBe(true);
    expect(events.of('join').map((e) => [e.user, e.synced])).toEqual([['bob', true]]);
    presence.remove('general', 'ada');
    await vi.advanceTimersByTimeAsync(10 * SECOND);
    await flush();
    expect(events.of('leave').map((e) => [e.user, e.reason])).toEqual([['ada', null]]);
    expect(presence.polls('general')).toHaveLength(3);

    // Leaving over REST is a DELETE; then polling stops.
    manager.leave('general');
    await flush();
    expect(server.calls('DELETE', /\/rooms\/general$/)).toHaveLength(1);
    expect(room.status).toBe('closed');
    await vi.advanceTimersByTimeAsync(30 * SECOND);
    expect(presence.polls('general')).toHaveLength(3);
    manager.stopSession();
  });

  it('polls at the server\u2019s heartbeat interval when it is shorter than the client\u2019s', async () => {
    const { manager, server, presence } = setupPresence({ sockets: 'refuse', options: { backoff: { baseMs: 3_600_000, capMs: 3_600_000 } } });
    const session = server.addSession({ heartbeat_interval: 5 });
    manager.watch('general');
    await manager.startSession(session.id);
    await flush();
    await flush();
    expect(manager.status).toBe('polling');
    const start = presence.polls('general').length;
    await vi.advanceTimersByTimeAsync(15 * SECOND);
    await flush();
    expect(presence.polls('general').length - start).toBe(3);
    manager.stopSession();
  });

  it('a hidden tab stops polling; shown again it joins and polls at once', async () => {
    const { manager, server, presence } = setupPresence({ sockets: 'refuse', options: { heartbeatIntervalMs: 10 * SECOND, backoff: { baseMs: 3_600_000, capMs: 3_600_000 } } });
    const room = manager.join('general');
    await manager.startSession(null);
    await flush();
    await flush();
    setVisibility('hidden');
    expect(room.status).toBe('paused');
    const polls = presence.polls('general').length;
    await vi.advanceTimersByTimeAsync(60 * SECOND);
    expect(presence.polls('general')).toHaveLength(polls);
    setVisibility('visible');
    await flush();
    await flush();
    expect(room.status).toBe('polling');
    expect(server.calls('POST', /\/rooms\/general$/)).toHaveLength(2);
    expect(presence.polls('general').length).toBe(polls + 1);
    manager.stopSession();
  });

  it('from REST back to the socket, the join is sent over the socket and polling stops', async () => {
    const { manager, sockets, presence } = setupPresence({ sockets: 'manual', options: { heartbeatIntervalMs: 10 * SECOND } });
    const room = manager.join('general', { n: 1 });
    await manager.startSession(null);
    await flush();
    sockets.last.refuse();
    await flush();
    await flush();
    expect(room.status).toBe('polling');
    await vi.advanceTimersByTimeAsync(SECOND);
    sockets.last.accept();
    await flush();
    expect(manager.status).toBe('connected');
    expect(presenceSent(sockets.last)).toEqual([{ type: 'presence.join', room: 'general', meta: { n: 1 } }]);
    const polls = presence.polls('general').length;
    await vi.advanceTimersByTimeAsync(60 * SECOND);
    expect(presence.polls('general')).toHaveLength(polls);
    manager.stopSession();
  });

  it('a room left while no transport was up is left over REST once one is', async () => {
    const { manager, server, sockets } = setupPresence({ sockets: 'manual' });
    manager.join('general');
    await manager.startSession(null);
    await flush();
    sockets.last.accept();
    await flush();
    setVisibility('hidden');
    sockets.last.drop(1006); // paused: nothing is told to anyone
    expect(manager.status).toBe('paused');
    manager.leave('general');
    await flush();
    expect(server.calls('DELETE', /\/rooms\/general$/)).toHaveLength(0);
    setVisibility('visible');
    await flush();
    await flush();
    expect(server.calls('DELETE', /\/rooms\/general$/)).toHaveLength(1);
    manager.stopSession();
  });

  it('a REST refusal (403) is the room\u2019s error and is not retried on every poll', async () => {
    const { manager, server, presence } = setupPresence({ sockets: 'refuse', options: { heartbeatIntervalMs: 10 * SECOND, backoff: { baseMs: 3_600_000, capMs: 3_600_000 } } });
    presence.refuse.set('secret', { status: 403, code: 'room_forbidden' });
    const room = manager.join('secret');
    await manager.startSession(null);
    await flush();
    await flush();
    expect(room.status).toBe('error');
    expect(room.error.code).toBe('room_forbidden');
    await vi.advanceTimersByTimeAsync(30 * SECOND);
    expect(server.calls('POST', /\/rooms\/secret$/)).toHaveLength(1);
    manager.stopSession();
  });

  it('stopSession leaves no timer behind and the rooms say they are offline; a new start joins again', async () => {
    const { manager, sockets } = setupPresence({ sockets: 'refuse', options: { backoff: { baseMs: 3_600_000, capMs: 3_600_000 } } });
    const room = manager.join('general');
    await manager.startSession(null);
    await flush();
    await flush();
    expect(room.status).toBe('polling');
    manager.stopSession();
    expect(room.status).toBe('offline');
    expect(vi.getTimerCount()).toBe(0);
    sockets.behaviour = 'accept';
    await manager.startSession(manager.sessionId);
    await flush();
    expect(presenceSent(sockets.last)).toEqual([{ type: 'presence.join', room: 'general', meta: null }]);
    manager.stopSession();
  });
});
