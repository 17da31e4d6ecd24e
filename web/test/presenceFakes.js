// Presence beside the fakes of fakes.js: the REST rooms (join, leave, pages of
// members) in memory, and helpers to play the server's socket messages.

import { vi } from 'vitest';
import { BASE, FakeResponse, setup } from './fakes.js';

export const PRESENCE = '/api/v1/presence';

export function memberOf(user, overrides = {}) {
  return { user, status: 'online', sessions: 1, meta: null, since: '2026-12-01T10:00:00.000Z', ...overrides };
}

/**
 * A FakeServer that also answers the presence routes: a session's REST joins
 * make user `user` a member; `GET /api/v1/presence/rooms/{room}` pages the
 * members `pageSize` at a time.
 */
export function withPresence(server, { user = 'me', pageSize = 1000 } = {}) {
  const rooms = new Map(); // room -> {seq, members: Map}
  const original = server.fetch.getMockImplementation();
  const roomOf = (name) => {
    if (!rooms.has(name)) rooms.set(name, { seq: 0, members: new Map() });
    return rooms.get(name);
  };
  const presence = {
    rooms,
    refuse: new Map(), // room -> {status, code}
    listFailure: null, // {status, body} for GET /api/v1/presence/rooms
    room: roomOf,
    /** Someone else comes into `name` (or changes). */
    put(name, member) {
      const room = roomOf(name);
      room.members.set(member.user, member);
      room.seq += 1;
    },
    remove(name, userName) {
      const room = roomOf(name);
      room.members.delete(userName);
      room.seq += 1;
    },
    polls(name) {
      return server.requests.filter((r) => r.method === 'GET' && r.url.startsWith(`${PRESENCE}/rooms/${name}`));
    },
  };
  server.fetch.mockImplementation(async (url, init = {}) => {
    const href = String(url);
    const method = init.method ?? 'GET';
    const body = typeof init.body === 'string' && init.body ? JSON.parse(init.body) : null;
    const rest = /^\/sessions\/([^/]+)\/rooms\/([^/?]+)$/.exec(href.startsWith(BASE) ? href.slice(BASE.length) : '');
    if (rest) {
      server.requests.push({ method, url: href, path: href.slice(BASE.length), body, init });
      const name = decodeURIComponent(rest[2]);
      const refusal = presence.refuse.get(name);
      if (refusal) return new FakeResponse(refusal.status, { error: { code: refusal.code, message: 'refused' } });
      if (!server.sessions.has(decodeURIComponent(rest[1]))) return new FakeResponse(404, { error: { code: 'session_not_found', message: 'No such session' } });
      if (method === 'POST') {
        const joined = roomOf(name).members.has(user);
        presence.put(name, memberOf(user, { meta: body?.meta ?? null }));
        return new FakeResponse(200, { room: name, result: joined ? 'updated' : 'joined' });
      }
      if (method === 'DELETE') {
        if (!roomOf(name).members.has(user)) return new FakeResponse(404, { error: { code: 'not_in_room', message: 'not in room' } });
        presence.remove(name, user);
        return new FakeResponse(204);
      }
    }
    if (href === `${PRESENCE}/rooms` && method === 'GET') {
      server.requests.push({ method, url: href, path: href, body, init });
      if (presence.listFailure) return new FakeResponse(presence.listFailure.status, presence.listFailure.body);
      const list = [...rooms].map(([room, { members }]) => ({ room, count: members.size })).filter((r) => r.count > 0);
      list.sort((a, b) => b.count - a.count);
      return new FakeResponse(200, { rooms: list });
    }
    const page = new RegExp(`^${PRESENCE}/rooms/([^/?]+)(?:\\?cursor=(\\d+))?$`).exec(href);
    if (page && method === 'GET') {
      server.requests.push({ method, url: href, path: href, body, init });
      const name = decodeURIComponent(page[1]);
      const refusal = presence.refuse.get(name);
      if (refusal) return new FakeResponse(refusal.status, { error: { code: refusal.code, message: 'refused' } });
      const room = roomOf(name);
      const all = [...room.members.values()];
      const start = Number(page[2] ?? 0);
      const members = all.slice(start, start + pageSize);
      const next = start + pageSize < all.length ? String(start + pageSize) : null;
      return new FakeResponse(200, { room: name, seq: room.seq, count: all.length, members, next });
    }
    return original(url, init);
  });
  return presence;
}

/** setup() from fakes.js with the presence routes and a short server heartbeat. */
export function setupPresence({ sockets = 'accept', options = {}, user, pageSize } = {}) {
  const fixture = setup({ sockets, options });
  const presence = withPresence(fixture.server, { user, pageSize });
  return { ...fixture, presence };
}

/** The presence messages a fake socket was sent. */
export function presenceSent(socket) {
  return socket.sent.filter((m) => String(m.type).startsWith('presence.'));
}

export function sync(room, seq, members, extra = {}) {
  return { type: 'presence.sync', room, seq, count: members.length, members, next: null, ...extra };
}

export function diff(room, seq, { joins = [], updates = [], leaves = [], count = 0, ...extra } = {}) {
  return { type: 'presence.diff', room, seq, joins, updates, leaves, count, ...extra };
}

export { vi };
