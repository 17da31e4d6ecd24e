// What an integrator hit following the spec literally, each case pinned down.

import { act, cleanup, render } from '@testing-library/react';
import { StrictMode, createElement as h, useEffect } from 'react';
import { afterEach, beforeEach, describe, expect, it, vi } from 'vitest';
import { getOrCreateSessionId } from '../src/chatSessionManager.js';
import { useChatSession } from '../src/useChatSession.js';
import { BASE, FakeServer, FakeSocketServer, MemoryStorage, flush, resetVisibility, setVisibility, setup } from './fakes.js';

const KEY = 'presence.sessionId';
const SECOND = 1000;
const UNAUTHORIZED = { status: 401, body: { error: { code: 'unauthorized', message: 'a valid token or identity cookie is required' } } };

beforeEach(() => {
  vi.useFakeTimers({ toFake: ['setTimeout', 'clearTimeout', 'setInterval', 'clearInterval', 'Date'] });
});

afterEach(() => {
  cleanup();
  vi.useRealTimers();
  resetVisibility();
});

describe('startSession never stops on a session it cannot have', () => {
  it('with no identity yet (401, a first visit in development mode) creates one and says session-replaced', async () => {
    const { manager, server, storage, events } = setup();
    storage.setItem(KEY, 'from-another-identity0');
    server.fail('GET', '/sessions/from-another-identity0', UNAUTHORIZED);
    const session = await manager.startSession(getOrCreateSessionId(storage));
    expect(session).not.toBeNull();
    expect(server.requests.map((r) => `${r.method} ${r.path}`)).toEqual(['GET /sessions/from-another-identity0', 'POST /sessions']);
    expect(events.of('session-replaced').map((e) => e.detail)).toEqual([
      { oldId: 'from-another-identity0', newId: session.id, reason: 'unauthorized' },
    ]);
    expect(events.of('error')).toEqual([]);
    expect(storage.getItem(KEY)).toBe(session.id);
    await flush();
    expect(manager.status).toBe('connected');
    manager.stopSession();
  });

  it.each([
    ['not an id (400)', 400],
    ['unknown or expired (404)', 404],
    ['refused by validation (422)', 422],
  ])('with an id that is %s creates a new session', async (_, status) => {
    const { manager, server, events } = setup();
    server.fail('GET', '/sessions/stale', { status, body: { error: { code: 'x', message: 'x' } } });
    const session = await manager.startSession('stale');
    expect(session?.id).toBeTruthy();
    expect(events.of('session-replaced').map((e) => e.detail.oldId)).toEqual(['stale']);
    expect(manager.isSessionActive).toBe(true);
    manager.stopSession();
  });

  it('still reports a server that cannot create a session (500) as an error', async () => {
    const { manager, server, events } = setup();
    server.fail('POST', '/sessions', { status: 500, body: { error: { code: 'internal', message: 'boom' } } });
    expect(await manager.startSession(null)).toBeNull();
    expect(manager.status).toBe('error');
    expect(events.of('error')[0].detail.error.status).toBe(500);
  });
});

describe('a 401 on a heartbeat means the identity is gone', () => {
  it('starts a new session and reports it, rather than poll in vain', async () => {
    const { manager, server, sockets, storage, events } = setup({ sockets: 'refuse' });
    const first = await manager.startSession(null);
    await flush();
    expect(manager.status).toBe('polling');
    server.fail('POST', `/sessions/${first.id}/heartbeat`, UNAUTHORIZED);
    await vi.advanceTimersByTimeAsync(30 * SECOND);
    await flush();
    const replaced = events.of('session-replaced').map((e) => e.detail);
    expect(replaced).toHaveLength(1);
    expect(replaced[0]).toMatchObject({ oldId: first.id, reason: 'unauthorized' });
    expect(replaced[0].newId).not.toBe(first.id);
    expect(manager.sessionId).toBe(replaced[0].newId);
    expect(storage.getItem(KEY)).toBe(replaced[0].newId);
    expect(manager.isSessionActive).toBe(true);
    expect(sockets.last.url).toContain(`/sessions/${replaced[0].newId}/ws`);
    expect(events.of('ended')).toEqual([]);
    manager.stopSession();
  });

  it('ends in error, saying why, when the new session gets a 401 too (cookies not sent)', async () => {
    const { manager, server, events } = setup({ sockets: 'refuse' });
    await manager.startSession(null);
    await flush();
    // Every heartbeat is refused: the browser never sends the identity it was given.
    server.fail('POST', /\/heartbeat$/, UNAUTHORIZED);
    await vi.advanceTimersByTimeAsync(30 * SECOND);
    await flush();
    expect(events.of('session-replaced')).toHaveLength(1);
    expect(manager.status).toBe('error');
    expect(events.of('error').at(-1).detail.error.message).toMatch(/credentials: 'include'/);
    expect(server.calls('POST', '/sessions')).toHaveLength(2);
    expect(vi.getTimerCount()).toBe(0);
  });

  it('replaces the identity again later, after a keepalive that worked in between', async () => {
    const { manager, server, events } = setup({ sockets: 'refuse' });
    const first = await manager.startSession(null);
    await flush();
    server.fail('POST', `/sessions/${first.id}/heartbeat`, UNAUTHORIZED);
    await vi.advanceTimersByTimeAsync(30 * SECOND);
    await flush();
    const second = manager.sessionId;
    await vi.advanceTimersByTimeAsync(30 * SECOND); // a heartbeat of the new session works
    server.fail('POST', `/sessions/${second}/heartbeat`, UNAUTHORIZED);
    await vi.advanceTimersByTimeAsync(30 * SECOND);
    await flush();
    expect(events.of('session-replaced').map((e) => e.detail.oldId)).toEqual([first.id, second]);
    expect(manager.isSessionActive).toBe(true);
    manager.stopSession();
  });

  it('ends in error when even a new session is refused (no identity can be had)', async () => {
    const { manager, server, events } = setup({ sockets: 'refuse' });
    const first = await manager.startSession(null);
    await flush();
    server.fail('POST', `/sessions/${first.id}/heartbeat`, UNAUTHORIZED);
    server.fail('POST', '/sessions', UNAUTHORIZED);
    await vi.advanceTimersByTimeAsync(30 * SECOND);
    await flush();
    expect(manager.status).toBe('error');
    expect(events.of('error').at(-1).detail.error.status).toBe(401);
    expect(vi.getTimerCount()).toBe(0);
  });
});

describe("the REST rhythm follows the server's heartbeat_interval", () => {
  it("beats at the server's interval when it is shorter than the client's", async () => {
    const { manager, server } = setup({ sockets: 'refuse' });
    server.fetch.mockImplementationOnce(async () => {
      const session = server.addSession({ heartbeat_interval: 5 });
      return { status: 201, ok: true, text: async () => JSON.stringify(session) };
    });
    await manager.startSession(null);
    await flush();
    expect(manager.effectiveHeartbeatIntervalMs).toBe(5 * SECOND);
    const before = server.heartbeats().length;
    await vi.advanceTimersByTimeAsync(20 * SECOND);
    expect(server.heartbeats().length - before).toBe(4);
    manager.stopSession();
  });

  it("keeps the client's own interval when it is the shorter", async () => {
    const { manager, server } = setup({ sockets: 'refuse', options: { heartbeatIntervalMs: 2 * SECOND } });
    const existing = server.addSession({ heartbeat_interval: 30 });
    await manager.startSession(existing.id);
    await flush();
    expect(manager.session.heartbeat_interval).toBe(30);
    expect(manager.effectiveHeartbeatIntervalMs).toBe(2 * SECOND);
    const before = server.heartbeats().length;
    await vi.advanceTimersByTimeAsync(10 * SECOND);
    expect(server.heartbeats().length - before).toBe(5);
    manager.stopSession();
  });
});

describe('a tab hidden over REST', () => {
  it('sends one away heartbeat when the socket drops while hidden, then nothing', async () => {
    const { manager, server, sockets } = setup({ sockets: 'accept' });
    await manager.startSession(null);
    await flush();
    setVisibility('hidden');
    sockets.last.drop(1006);
    await flush();
    expect(manager.status).toBe('paused');
    expect(server.heartbeats().map((r) => r.body)).toEqual([{ state: 'away' }]);
    await vi.advanceTimersByTimeAsync(5 * 60 * SECOND);
    expect(server.heartbeats()).toHaveLength(1);
    manager.stopSession();
  });
});

describe('a tab hidden over REST while a beat is on its way', () => {
  it('still says away, right after that beat', async () => {
    const { manager, server } = setup({ sockets: 'refuse' });
    await manager.startSession(null);
    await flush();
    let answer;
    const original = server.fetch.getMockImplementation();
    server.fetch.mockImplementationOnce((url, init) => new Promise((resolve) => {
      answer = () => resolve(original(url, init));
    }));
    await vi.advanceTimersByTimeAsync(30 * SECOND); // this beat hangs
    setVisibility('hidden');
    answer();
    await flush();
    expect(server.heartbeats().map((r) => r.body.state)).toEqual(['active', 'active', 'away']);
    await vi.advanceTimersByTimeAsync(5 * 60 * SECOND);
    expect(server.heartbeats()).toHaveLength(3);
    manager.stopSession();
  });
});

describe('credentials', () => {
  it("sends 'same-origin' by default and 'include' when asked, on every request and the pagehide cleanup", async () => {
    const plain = setup();
    await plain.manager.startSession(null);
    expect(new Set(plain.server.requests.map((r) => r.init.credentials))).toEqual(new Set(['same-origin']));
    plain.manager.stopSession();

    const cross = setup({ options: { credentials: 'include', token: undefined, sendBeacon: null } });
    await cross.manager.startSession(null);
    await cross.manager.listSessions();
    // No beacon here: the cleanup goes as a keepalive fetch, with the same credentials.
    Object.defineProperty(globalThis.navigator, 'sendBeacon', { configurable: true, value: undefined });
    try {
      globalThis.dispatchEvent(new Event('pagehide'));
    } finally {
      delete globalThis.navigator.sendBeacon;
    }
    expect(new Set(cross.server.requests.map((r) => r.init.credentials))).toEqual(new Set(['include']));
    expect(cross.server.calls('POST', '/sessions/cleanup')).toHaveLength(1);
    cross.manager.stopSession();
  });

  it('ignores a credentials value fetch does not know', async () => {
    const { manager, server } = setup({ options: { credentials: 'everything' } });
    await manager.startSession(null);
    expect(server.requests[0].init.credentials).toBe('same-origin');
    manager.stopSession();
  });
});

describe('React StrictMode', () => {
  function fakes() {
    const server = new FakeServer();
    const sockets = new FakeSocketServer('accept');
    const storage = new MemoryStorage();
    return { server, sockets, storage, options: { baseUrl: BASE, fetch: server.fetch, webSocketFactory: sockets.create, storage, navigate: vi.fn() } };
  }

  // The spec's ChatPage, as it writes it.
  function ChatPage({ options, seen }) {
    const { startSession, stopSession, sessionId, status } = useChatSession(options);
    seen?.push({ sessionId, status });
    useEffect(() => {
      startSession(getOrCreateSessionId(options.storage));
      return () => {
        stopSession();
      };
    }, [startSession, stopSession]);
    return h('span', null, status);
  }

  it('a first visit makes one session, not one per mount: the remount takes over the start in flight', async () => {
    const { server, sockets, storage, options } = fakes();
    const seen = [];
    render(h(StrictMode, null, h(ChatPage, { options, seen })));
    await act(async () => {
      await flush();
    });
    expect(server.calls('POST', '/sessions')).toHaveLength(1);
    expect(server.sessions.size).toBe(1);
    const [only] = server.sessions.keys();
    expect(storage.getItem(KEY)).toBe(only);
    expect(seen.at(-1)).toEqual({ sessionId: only, status: 'connected' });
    expect(sockets.live).toHaveLength(1);
  });

  it('a start in flight at a real unmount leaves no session behind', async () => {
    const { server, options } = fakes();
    let answer;
    const original = server.fetch.getMockImplementation();
    server.fetch.mockImplementationOnce((url, init) => new Promise((resolve) => {
      answer = () => resolve(original(url, init));
    }));
    const { unmount } = render(h(ChatPage, { options }));
    await act(async () => {
      await flush();
    });
    unmount();
    await act(async () => {
      answer();
      await flush();
    });
    expect(server.calls('POST', '/sessions')).toHaveLength(1);
    const created = [...server.calls('DELETE', /^\/sessions\/[^/]+$/)];
    expect(created).toHaveLength(1);
    expect(server.sessions.size).toBe(0);
  });

  it('a refresh under StrictMode continues the stored session', async () => {
    const { server, storage, options } = fakes();
    const existing = server.addSession();
    storage.setItem(KEY, existing.id);
    render(h(StrictMode, null, h(ChatPage, { options })));
    await act(async () => {
      await flush();
    });
    expect(server.calls('POST', '/sessions')).toHaveLength(0);
    expect(server.sessions.size).toBe(1);
    expect(storage.getItem(KEY)).toBe(existing.id);
  });
});
