import { afterEach, beforeEach, describe, expect, it, vi } from 'vitest';
import ChatSessionManagerDefault, { ChatSessionManager, PresenceError, getOrCreateSessionId } from '../src/chatSessionManager.js';
import * as index from '../src/index.js';
import { BASE, FakeServer, FakeSocketServer, MemoryStorage, flush, resetVisibility, setVisibility, setup } from './fakes.js';

const KEY = 'presence.sessionId';
const SECOND = 1000;

beforeEach(() => {
  // setImmediate stays real: only the manager's own timers are under test.
  vi.useFakeTimers({ toFake: ['setTimeout', 'clearTimeout', 'setInterval', 'clearInterval', 'Date'] });
});

afterEach(() => {
  vi.useRealTimers();
  resetVisibility();
});

describe('module surface', () => {
  it('exports the class as default and named, and index re-exports the plain-JS API', () => {
    expect(ChatSessionManagerDefault).toBe(ChatSessionManager);
    expect(index.default).toBe(ChatSessionManager);
    expect(index.ChatSessionManager).toBe(ChatSessionManager);
    expect(typeof index.getOrCreateSessionId).toBe('function');
    expect(typeof index.backoffDelay).toBe('function');
    expect(new ChatSessionManager()).toBeInstanceOf(EventTarget);
  });

  it('starts idle with the spec defaults', () => {
    const manager = new ChatSessionManager();
    expect(manager.baseUrl).toBe('/api/v1/chat');
    expect(manager.heartbeatIntervalMs).toBe(30_000);
    expect(manager.status).toBe('idle');
    expect(manager.isSessionActive).toBe(false);
    expect(manager.sessionId).toBeNull();
    expect(manager.transport).toBe('none');
    expect(manager.state).toBeNull();
    expect(manager.lastKeepalive).toBeNull();
    expect(manager.session).toBeNull();
  });
});

describe('getOrCreateSessionId', () => {
  it('returns null when this tab has no id yet, and the stored id once there is one', () => {
    const storage = new MemoryStorage();
    expect(getOrCreateSessionId(storage)).toBeNull();
    storage.setItem(KEY, 'abc');
    expect(getOrCreateSessionId(storage)).toBe('abc');
    expect(getOrCreateSessionId(storage, 'other.key')).toBeNull();
  });

  it('reads window.sessionStorage by default', () => {
    sessionStorage.setItem(KEY, 'from-session-storage');
    try {
      expect(getOrCreateSessionId()).toBe('from-session-storage');
    } finally {
      sessionStorage.removeItem(KEY);
    }
  });

  it('returns null instead of throwing when storage is unavailable', () => {
    const broken = {
      getItem() {
        throw new DOMException('denied', 'SecurityError');
      },
    };
    expect(getOrCreateSessionId(broken)).toBeNull();
    expect(getOrCreateSessionId(null)).toBeNull();
  });
});

describe('startSession', () => {
  it('without an id creates a session, stores its id and opens the socket for it', async () => {
    const { manager, server, sockets, storage, events } = setup();
    const session = await manager.startSession(undefined);
    expect(server.requests.map((r) => `${r.method} ${r.url}`)).toEqual(['POST /api/v1/chat/sessions']);
    expect(server.requests[0].init.credentials).toBe('same-origin');
    expect(session.id).toHaveLength(22);
    expect(manager.sessionId).toBe(session.id);
    expect(storage.getItem(KEY)).toBe(session.id);
    expect(manager.status).toBe('connecting');

    await flush();
    expect(sockets.sockets).toHaveLength(1);
    expect(sockets.last.url).toBe(`ws://${location.host}/api/v1/chat/sessions/${session.id}/ws`);
    expect(manager.status).toBe('connected');
    expect(manager.transport).toBe('websocket');
    expect(manager.isSessionActive).toBe(true);
    expect(events.of('statuschange').map((e) => e.detail.status)).toEqual(['connecting', 'connected']);
    expect(events.of('session-replaced')).toEqual([]);
    manager.stopSession();
  });

  it('with a known id continues that session without creating one', async () => {
    const { manager, server } = setup();
    const existing = server.addSession({ state: 'away' });
    await manager.startSession(existing.id);
    expect(server.requests.map((r) => `${r.method} ${r.path}`)).toEqual([`GET /sessions/${existing.id}`]);
    expect(manager.sessionId).toBe(existing.id);
    expect(manager.state).toBe('away');
    manager.stopSession();
  });

  it('with an id the server answers 404 for creates a new session and dispatches session-replaced', async () => {
    const { manager, server, storage, events } = setup();
    storage.setItem(KEY, 'gone-gone-gone-gone-00');
    const session = await manager.startSession(getOrCreateSessionId(storage));
    expect(server.requests.map((r) => `${r.method} ${r.path}`)).toEqual(['GET /sessions/gone-gone-gone-gone-00', 'POST /sessions']);
    expect(events.of('session-replaced').map((e) => e.detail)).toEqual([{ oldId: 'gone-gone-gone-gone-00', newId: session.id, reason: 'not_found' }]);
    expect(manager.sessionId).toBe(session.id);
    expect(storage.getItem(KEY)).toBe(session.id);
    await flush();
    expect(manager.status).toBe('connected');
    manager.stopSession();
  });

  it('continues the stored session after a refresh, and a new tab (empty storage) gets its own', async () => {
    const tab = setup();
    const first = await tab.manager.startSession(getOrCreateSessionId(tab.storage));
    tab.manager.stopSession(); // the page unloads

    const refreshed = new ChatSessionManager(BASE, { fetch: tab.server.fetch, webSocketFactory: tab.sockets.create, storage: tab.storage });
    const again = await refreshed.startSession(getOrCreateSessionId(tab.storage));
    expect(again.id).toBe(first.id);
    refreshed.stopSession();

    const otherTab = new ChatSessionManager(BASE, { fetch: tab.server.fetch, webSocketFactory: tab.sockets.create, storage: new MemoryStorage() });
    const own = await otherTab.startSession(getOrCreateSessionId(new MemoryStorage()));
    expect(own.id).not.toBe(first.id);
    otherTab.stopSession();
  });

  it('turns a network failure into status error and an error event, never a rejection', async () => {
    const { manager, server, events } = setup();
    server.fail('POST', '/sessions', 'network');
    await expect(manager.startSession(null)).resolves.toBeNull();
    expect(manager.status).toBe('error');
    expect(manager.isSessionActive).toBe(false);
    expect(events.of('error')).toHaveLength(1);
    expect(events.of('error')[0].detail.context).toBe('startSession');
    expect(events.of('error')[0].detail.error).toBeInstanceOf(TypeError);
    expect(vi.getTimerCount()).toBe(0);
  });

  it('reports the server error code and status on a failed create', async () => {
    const { manager, server, events } = setup();
    server.fail('POST', '/sessions', { status: 503, body: { error: { code: 'store_unavailable', message: 'Try later' } } });
    await manager.startSession(null);
    const { error } = events.of('error')[0].detail;
    expect(error).toBeInstanceOf(PresenceError);
    expect(error).toMatchObject({ status: 503, code: 'store_unavailable', message: 'Try later' });
    expect(manager.status).toBe('error');
  });

  it('sends Authorization: Bearer on REST and ?token= on the socket when given a token function', async () => {
    const { manager, server, sockets } = setup({ options: { token: async () => 'jwt.abc.def' } });
    await manager.startSession(null);
    await flush();
    expect(server.requests[0].init.headers.Authorization).toBe('Bearer jwt.abc.def');
    expect(new URL(sockets.last.url).searchParams.get('token')).toBe('jwt.abc.def');
    manager.stopSession();
  });

  it('builds wss:// from an absolute https base URL', async () => {
    const server = new FakeServer();
    const sockets = new FakeSocketServer('manual');
    const manager = new ChatSessionManager('https://chat.example.test/api/v1/chat/', {
      fetch: (url, init) => server.fetch(String(url).replace('https://chat.example.test', ''), init),
      webSocketFactory: sockets.create,
      storage: null,
    });
    const session = await manager.startSession(null);
    await flush();
    expect(sockets.last.url).toBe(`wss://chat.example.test/api/v1/chat/sessions/${session.id}/ws`);
    manager.stopSession();
  });

  it('a second startSession supersedes the first: one socket, the latest session', async () => {
    const { manager, server, sockets } = setup();
    const a = server.addSession();
    const b = server.addSession();
    const first = manager.startSession(a.id);
    const second = manager.startSession(b.id);
    await expect(first).resolves.toBeNull();
    await expect(second).resolves.toMatchObject({ id: b.id });
    await flush();
    expect(sockets.sockets).toHaveLength(1);
    expect(sockets.last.url).toContain(b.id);
    manager.stopSession();
  });
});

describe('over the WebSocket', () => {
  it('sends no HTTP heartbeat while the socket is open, however long', async () => {
    const { manager, server } = setup();
    await manager.startSession(null);
    await flush();
    expect(manager.transport).toBe('websocket');
    await vi.advanceTimersByTimeAsync(10 * 60 * SECOND);
    expect(server.heartbeats()).toHaveLength(0);
    expect(server.requests).toHaveLength(1); // the create
    expect(vi.getTimerCount()).toBe(0);
    manager.stopSession();
  });

  it('takes snapshot messages as the session: state and lastKeepalive follow', async () => {
    const { manager, sockets, events } = setup();
    const session = await manager.startSession(null);
    await flush();
    vi.setSystemTime(new Date('2030-01-01T10:00:00Z'));
    sockets.last.receive({ type: 'snapshot', session: { ...session, state: 'away', transport: 'websocket' } });
    expect(manager.state).toBe('away');
    expect(manager.session.transport).toBe('websocket');
    expect(manager.lastKeepalive).toEqual(new Date('2030-01-01T10:00:00Z'));
    expect(events.of('sessionchange').at(-1).detail.session.state).toBe('away');
    manager.stopSession();
  });

  it('reports hidden and visible on the socket, with no HTTP request', async () => {
    const { manager, sockets, server } = setup();
    await manager.startSession(null);
    await flush();
    setVisibility('hidden');
    await vi.advanceTimersByTimeAsync(90 * SECOND);
    setVisibility('visible');
    expect(sockets.last.sent).toEqual([
      { type: 'visibility', state: 'hidden' },
      { type: 'visibility', state: 'visible' },
    ]);
    expect(manager.status).toBe('connected');
    expect(server.requests).toHaveLength(1);
    manager.stopSession();
  });

  it('says hidden as soon as a socket opens in a hidden tab', async () => {
    const { manager, sockets } = setup({ sockets: 'manual' });
    await manager.startSession(null);
    await flush();
    setVisibility('hidden');
    sockets.last.accept();
    expect(sockets.last.sent).toEqual([{ type: 'visibility', state: 'hidden' }]);
    manager.stopSession();
  });

  it('reports a server error message as an error event and stays connected', async () => {
    const { manager, sockets, events } = setup();
    await manager.startSession(null);
    await flush();
    sockets.last.receive({ type: 'error', code: 'bad_message', message: 'unknown type' });
    sockets.last.receive('not json');
    sockets.last.receive({ type: 'from-the-future' });
    expect(events.of('error').map((e) => e.detail.context)).toEqual(['websocket', 'websocket']);
    expect(events.of('error')[0].detail.error).toMatchObject({ code: 'bad_message', message: 'unknown type' });
    expect(manager.status).toBe('connected');
    manager.stopSession();
  });

  it('falls back to REST when an open socket drops, and stops REST once the socket is back', async () => {
    const { manager, server, sockets } = setup({ sockets: 'manual' });
    await manager.startSession(null);
    await flush();
    sockets.last.accept();
    sockets.last.drop(1006);
    await flush();
    expect(manager.status).toBe('polling');
    expect(manager.transport).toBe('http');
    expect(server.heartbeats()).toHaveLength(1); // at once, to learn whether the session still exists

    await vi.advanceTimersByTimeAsync(250); // backoffDelay(0) with random 0.5
    expect(sockets.sockets).toHaveLength(2);
    sockets.last.accept();
    expect(manager.status).toBe('connected');
    await vi.advanceTimersByTimeAsync(5 * 60 * SECOND);
    expect(server.heartbeats()).toHaveLength(1);
    expect(vi.getTimerCount()).toBe(0);
    manager.stopSession();
  });
});

describe('REST heartbeat when the socket cannot open', () => {
  it('sends a heartbeat at once, then one every 30 s', async () => {
    const { manager, server, sockets } = setup({ sockets: 'refuse' });
    const session = await manager.startSession(null);
    await flush();
    expect(manager.status).toBe('polling');
    expect(manager.transport).toBe('http');
    expect(server.heartbeats()).toHaveLength(1);
    expect(server.heartbeats()[0].url).toBe(`/api/v1/chat/sessions/${session.id}/heartbeat`);

    for (let beat = 2; beat <= 5; beat += 1) {
      await vi.advanceTimersByTimeAsync(30 * SECOND - 1);
      expect(server.heartbeats()).toHaveLength(beat - 1);
      await vi.advanceTimersByTimeAsync(1);
      expect(server.heartbeats()).toHaveLength(beat);
    }
    // Meanwhile the socket kept being retried.
    expect(sockets.sockets.length).toBeGreaterThan(5);
    manager.stopSession();
  });

  it('honours heartbeatIntervalMs set after construction', async () => {
    const { manager, server } = setup({ sockets: 'refuse' });
    manager.heartbeatIntervalMs = 5 * SECOND;
    await manager.startSession(null);
    await flush();
    await vi.advanceTimersByTimeAsync(20 * SECOND);
    expect(server.heartbeats()).toHaveLength(5);
    manager.stopSession();
  });

  it('sends one away heartbeat on hiding and none after, one active at once on return, then every 30 s', async () => {
    const { manager, server, sockets } = setup({ sockets: 'refuse' });
    await manager.startSession(null);
    await flush();
    await vi.advanceTimersByTimeAsync(30 * SECOND);
    expect(server.heartbeats()).toHaveLength(2);
    expect(server.heartbeats().map((r) => r.body.state)).toEqual(['active', 'active']);

    await vi.advanceTimersByTimeAsync(10 * SECOND);
    setVisibility('hidden');
    expect(manager.status).toBe('paused');
    expect(manager.transport).toBe('http');
    await flush();
    expect(server.heartbeats()).toHaveLength(3);
    expect(server.heartbeats()[2].body).toEqual({ state: 'away' });
    const socketsWhenHidden = sockets.sockets.length;
    await vi.advanceTimersByTimeAsync(5 * 60 * SECOND);
    expect(server.heartbeats()).toHaveLength(3);
    expect(sockets.sockets).toHaveLength(socketsWhenHidden); // no socket retries either
    expect(vi.getTimerCount()).toBe(0);

    setVisibility('visible');
    await flush();
    expect(manager.status).toBe('polling');
    expect(server.heartbeats()).toHaveLength(4);
    expect(server.heartbeats()[3].body).toEqual({ state: 'active' });
    await vi.advanceTimersByTimeAsync(30 * SECOND - 1);
    expect(server.heartbeats()).toHaveLength(4);
    await vi.advanceTimersByTimeAsync(1);
    expect(server.heartbeats()).toHaveLength(5);
    await vi.advanceTimersByTimeAsync(30 * SECOND);
    expect(server.heartbeats()).toHaveLength(6);
    manager.stopSession();
  });

  it('updates session, state and lastKeepalive from each heartbeat reply', async () => {
    const { manager } = setup({ sockets: 'refuse' });
    await manager.startSession(null);
    await flush();
    const before = manager.lastKeepalive.getTime();
    await vi.advanceTimersByTimeAsync(30 * SECOND);
    expect(manager.lastKeepalive.getTime()).toBe(before + 30 * SECOND);
    expect(manager.session.transport).toBe('http');
    expect(manager.state).toBe('active');
    manager.stopSession();
  });

  it('keeps polling through a failed heartbeat, reporting it as an error event', async () => {
    const { manager, server, events } = setup({ sockets: 'refuse' });
    server.fail('POST', /heartbeat$/, 'network', { times: 1 });
    await manager.startSession(null);
    await flush();
    expect(events.of('error').map((e) => e.detail.context)).toEqual(['heartbeat']);
    expect(manager.status).toBe('polling');
    await vi.advanceTimersByTimeAsync(30 * SECOND);
    expect(server.heartbeats()).toHaveLength(2);
    expect(manager.status).toBe('polling');
    manager.stopSession();
  });

  it('ends on a heartbeat 404 and never retries against the deleted session', async () => {
    const { manager, server, sockets, events, storage } = setup({ sockets: 'refuse' });
    const session = await manager.startSession(null);
    await flush();
    server.sessions.delete(session.id);
    await vi.advanceTimersByTimeAsync(30 * SECOND);
    expect(manager.status).toBe('ended');
    expect(manager.isSessionActive).toBe(false);
    expect(events.of('ended').map((e) => e.detail)).toEqual([{ reason: 'not_found', sessionId: session.id }]);
    expect(storage.getItem(KEY)).toBeNull();
    expect(vi.getTimerCount()).toBe(0);

    const requests = server.requests.length;
    const opened = sockets.sockets.length;
    await vi.advanceTimersByTimeAsync(10 * 60 * SECOND);
    expect(server.requests).toHaveLength(requests);
    expect(sockets.sockets).toHaveLength(opened);
  });
});

describe('a session the server ends', () => {
  it('stops everything on an ended message: status ended, ended event, socket closed, no reconnects', async () => {
    const { manager, server, sockets, events } = setup();
    const session = await manager.startSession(null);
    await flush();
    const socket = sockets.last;
    socket.receive({ type: 'ended', reason: 'expired' });
    socket.drop(1000); // the server closes right after
    await flush();

    expect(manager.status).toBe('ended');
    expect(events.of('ended').map((e) => e.detail)).toEqual([{ reason: 'expired', sessionId: session.id }]);
    expect(socket.closedWith).toEqual({ code: 1000, reason: undefined });
    expect(vi.getTimerCount()).toBe(0);

    await vi.advanceTimersByTimeAsync(10 * 60 * SECOND);
    expect(sockets.sockets).toHaveLength(1);
    expect(server.heartbeats()).toHaveLength(0);
    setVisibility('hidden');
    setVisibility('visible');
    await vi.advanceTimersByTimeAsync(60 * SECOND);
    expect(server.heartbeats()).toHaveLength(0);
    expect(sockets.sockets).toHaveLength(1);
  });

  it('ends when a cleanup it ran deleted its own session', async () => {
    const { manager, server, events } = setup();
    const session = await manager.startSession(null);
    const other = server.addSession();
    await flush();
    const result = await manager.cleanupSessions('specific', [session.id, other.id]);
    expect(result).toEqual({ deleted: 2, session_ids: [session.id, other.id] });
    expect(manager.status).toBe('ended');
    expect(events.of('ended')[0].detail.reason).toBe('cleanup');
  });
});

describe('pagehide', () => {
  it('sends a text/plain beacon {"type":"inactive"} to the cleanup URL', async () => {
    const sendBeacon = vi.fn(() => true);
    Object.defineProperty(navigator, 'sendBeacon', { configurable: true, value: sendBeacon });
    try {
      const server = new FakeServer();
      const sockets = new FakeSocketServer('accept');
      const manager = new ChatSessionManager(BASE, { fetch: server.fetch, webSocketFactory: sockets.create, storage: null });
      await manager.startSession(null);
      await flush();
      window.dispatchEvent(new Event('pagehide'));

      expect(sendBeacon).toHaveBeenCalledTimes(1);
      const [url, blob] = sendBeacon.mock.calls[0];
      expect(url).toBe('/api/v1/chat/sessions/cleanup');
      expect(blob).toBeInstanceOf(Blob);
      expect(blob.type).toBe('text/plain');
      expect(JSON.parse(await blob.text())).toEqual({ type: 'inactive' });
      // The current session is not stopped: a refresh continues it.
      expect(manager.status).toBe('connected');
      manager.stopSession();
    } finally {
      delete navigator.sendBeacon;
    }
  });

  it('uses a keepalive fetch with the bearer token instead when a token is configured', async () => {
    const { manager, server, sendBeacon } = setup({ options: { token: () => 'jwt.t' } });
    await manager.startSession(null);
    await flush();
    window.dispatchEvent(new Event('pagehide'));
    await flush();
    expect(sendBeacon).not.toHaveBeenCalled();
    const [beacon] = server.calls('POST', '/sessions/cleanup');
    expect(beacon.init).toMatchObject({ keepalive: true, headers: { Authorization: 'Bearer jwt.t' } });
    expect(beacon.init.body.type).toBe('text/plain');
    expect(JSON.parse(await beacon.init.body.text())).toEqual({ type: 'inactive' });
    manager.stopSession();
  });
});

describe('navigateToHub', () => {
  function ordered(context) {
    const log = [];
    const { server, sockets, navigate } = context;
    const fetch = server.fetch.getMockImplementation();
    server.fetch.mockImplementation(async (url, init) => {
      log.push(`fetch ${init?.method ?? 'GET'} ${url}`);
      const response = await fetch(url, init);
      log.push(`response ${response.status}`);
      return response;
    });
    navigate.mockImplementation((url) => {
      log.push(`navigate ${url} (socket ${sockets.last?.closedWith?.code}, timers ${vi.getTimerCount()})`);
    });
    return log;
  }

  it('cleans up all with keepalive, then closes the socket and timers, then navigates', async () => {
    const context = setup();
    const { manager, server, sockets, navigate, events } = context;
    await manager.startSession(null);
    await flush();
    const log = ordered(context);

    await manager.navigateToHub('/hub');
    expect(log).toEqual(['fetch POST /api/v1/chat/sessions/cleanup', 'response 200', 'navigate /hub (socket 1000, timers 0)']);
    const [cleanup] = server.calls('POST', '/sessions/cleanup');
    expect(cleanup.body).toEqual({ type: 'all' });
    expect(cleanup.init).toMatchObject({ keepalive: true, credentials: 'same-origin', headers: { 'Content-Type': 'application/json' } });
    expect(navigate).toHaveBeenCalledWith('/hub');
    expect(manager.status).toBe('idle');
    expect(sockets.live).toHaveLength(0);
    expect(events.of('error')).toHaveLength(0);
    expect(server.sessions.size).toBe(0);
  });

  it('defaults to /hub and forgets the deleted session id, so the next chat is a new session', async () => {
    const { manager, navigate, storage } = setup();
    await manager.startSession(null);
    await manager.navigateToHub();
    expect(navigate).toHaveBeenCalledWith('/hub');
    expect(getOrCreateSessionId(storage)).toBeNull();
  });

  it('still stops and navigates when cleanup answers 500, after an error event', async () => {
    const context = setup();
    const { manager, server, events, storage } = context;
    const session = await manager.startSession(null);
    await flush();
    server.fail('POST', '/sessions/cleanup', { status: 500, body: { error: { code: 'internal', message: 'boom' } } });
    const log = ordered(context);
    manager.addEventListener('error', () => log.push('error event'));

    await expect(manager.navigateToHub('/hub')).resolves.toBeUndefined();
    expect(log).toEqual(['fetch POST /api/v1/chat/sessions/cleanup', 'response 500', 'error event', 'navigate /hub (socket 1000, timers 0)']);
    expect(events.of('error').at(-1).detail).toMatchObject({ context: 'navigateToHub', error: { status: 500, code: 'internal' } });
    expect(manager.status).toBe('idle');
    // The session was not deleted, so this tab may still continue it.
    expect(storage.getItem(KEY)).toBe(session.id);
  });

  it('still stops and navigates when the cleanup request fails on the network', async () => {
    const context = setup();
    const { manager, server, navigate, events } = context;
    await manager.startSession(null);
    await flush();
    server.fail('POST', '/sessions/cleanup', 'network');
    await manager.navigateToHub('/elsewhere');
    expect(navigate).toHaveBeenCalledWith('/elsewhere');
    expect(events.of('error').at(-1).detail.error).toBeInstanceOf(TypeError);
    expect(vi.getTimerCount()).toBe(0);
    expect(context.sockets.live).toHaveLength(0);
  });
});

describe('cleanupSessions', () => {
  it("sends session_ids only for 'specific' and resolves to the server's JSON", async () => {
    const { manager, server } = setup();
    const a = server.addSession();
    const b = server.addSession();
    await expect(manager.cleanupSessions('specific', [a.id])).resolves.toEqual({ deleted: 1, session_ids: [a.id] });
    await expect(manager.cleanupSessions('inactive', [b.id])).resolves.toEqual({ deleted: 0, session_ids: [] });
    await expect(manager.cleanupSessions('all')).resolves.toEqual({ deleted: 1, session_ids: [b.id] });
    expect(server.calls('POST', '/sessions/cleanup').map((r) => r.body)).toEqual([
      { type: 'specific', session_ids: [a.id] },
      { type: 'inactive' },
      { type: 'all' },
    ]);
  });

  it('keeps the current session running when it was not among those deleted', async () => {
    const { manager } = setup();
    await manager.startSession(null);
    await flush();
    await manager.cleanupSessions('inactive');
    expect(manager.status).toBe('connected');
    manager.stopSession();
  });

  it('resolves null with an error event for an unknown type or a failed request', async () => {
    const { manager, server, events } = setup();
    await expect(manager.cleanupSessions('everything')).resolves.toBeNull();
    server.fail('POST', '/sessions/cleanup', { status: 502, body: '<html>Bad gateway</html>' });
    await expect(manager.cleanupSessions('all')).resolves.toBeNull();
    expect(events.of('error').map((e) => e.detail.error.status)).toEqual([null, 502]);
    expect(server.calls('POST', '/sessions/cleanup')).toHaveLength(1);
  });
});

describe('listSessions', () => {
  it("returns the user's sessions from GET /sessions", async () => {
    const { manager, server } = setup();
    const a = server.addSession();
    await expect(manager.listSessions()).resolves.toEqual([a]);
  });
});

describe('stopSession', () => {
  it('closes the socket with 1000, clears timers and listeners, goes idle, and deletes nothing', async () => {
    const { manager, server, sockets, sendBeacon } = setup({ sockets: 'manual' });
    const session = await manager.startSession(null);
    await flush();
    sockets.last.refuse();
    await vi.advanceTimersByTimeAsync(250); // the retry's handshake is now pending
    expect(manager.status).toBe('polling');
    expect(vi.getTimerCount()).toBeGreaterThan(0);
    const socket = sockets.last;
    expect(socket.readyState).toBe(0);

    manager.stopSession();
    expect(socket.closedWith).toEqual({ code: 1000, reason: undefined });
    expect(manager.status).toBe('idle');
    expect(manager.transport).toBe('none');
    expect(manager.isSessionActive).toBe(false);
    expect(vi.getTimerCount()).toBe(0);
    expect(server.sessions.has(session.id)).toBe(true);
    expect(server.calls('DELETE', /.*/)).toHaveLength(0);

    const requests = server.requests.length;
    setVisibility('hidden');
    setVisibility('visible');
    window.dispatchEvent(new Event('pagehide'));
    await vi.advanceTimersByTimeAsync(5 * 60 * SECOND);
    expect(server.requests).toHaveLength(requests);
    expect(sendBeacon).not.toHaveBeenCalled();
    expect(sockets.sockets).toHaveLength(2);
  });

  it('makes a pending startSession resolve null without opening a socket', async () => {
    const { manager, sockets } = setup();
    const pending = manager.startSession(null);
    manager.stopSession();
    await expect(pending).resolves.toBeNull();
    await flush();
    expect(sockets.sockets).toHaveLength(0);
    expect(manager.status).toBe('idle');
  });
});
