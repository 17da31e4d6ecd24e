import { afterEach, beforeEach, describe, expect, it, vi } from 'vitest';
import { ChatSessionManager } from '../src/chatSessionManager.js';
import { CLOSE_HANDOVER, SharedSocket, sharedSocketSupported } from '../src/sharedSocket.js';
import { BASE, FakeServer, FakeSocketServer, FakeWebSocket, MemoryStorage, flush, recordEvents, resetVisibility, setVisibility } from './fakes.js';
import { FakeBrowser, SharingServer } from './sharedFakes.js';

const SECOND = 1000;
let names = 0;

beforeEach(() => {
  vi.useFakeTimers({ toFake: ['setTimeout', 'clearTimeout', 'setInterval', 'clearInterval', 'Date'] });
});

afterEach(() => {
  vi.useRealTimers();
  vi.unstubAllGlobals();
  resetVisibility();
});

async function settle(rounds = 5) {
  for (let i = 0; i < rounds; i += 1) await flush();
}

/** A browser with `count` tabs, each with its own sessionStorage and a sharing manager. */
function browserWithTabs(count) {
  const name = `test-${(names += 1)}`;
  const browser = new FakeBrowser();
  const server = new FakeServer();
  const sockets = new SharingServer();
  const tabs = [];
  for (let i = 0; i < count; i += 1) tabs.push(openTab());

  function openTab() {
    const tab = browser.tab();
    const manager = new ChatSessionManager(BASE, {
      fetch: server.fetch,
      webSocketFactory: sockets.create,
      storage: new MemoryStorage(),
      random: () => 0.5,
      shareConnection: { name, locks: tab.locks, BroadcastChannel: tab.BroadcastChannel },
    });
    const entry = { tab, manager, events: recordEvents(manager) };
    return entry;
  }
  return { browser, server, sockets, tabs, openTab, name };
}

async function startAll(tabs) {
  for (const { manager } of tabs) {
    await manager.startSession(null);
    await settle();
  }
}

describe('support', () => {
  it('needs both Web Locks and BroadcastChannel', () => {
    const locks = { request() {} };
    expect(sharedSocketSupported({ navigator: { locks }, BroadcastChannel: class {} })).toBe(true);
    expect(sharedSocketSupported({ navigator: {}, BroadcastChannel: class {} })).toBe(false);
    expect(sharedSocketSupported({ navigator: { locks } })).toBe(false);
    expect(sharedSocketSupported(undefined)).toBe(false);
  });

  it('without Web Locks each tab opens its own socket, as without the option', async () => {
    // jsdom has no navigator.locks, as some browsers and embedded views do not.
    expect(globalThis.navigator.locks).toBeUndefined();
    const server = new FakeServer();
    const sockets = new FakeSocketServer('accept');
    const managers = [0, 1].map(
      () => new ChatSessionManager(BASE, { fetch: server.fetch, webSocketFactory: sockets.create, storage: new MemoryStorage(), shareConnection: true }),
    );
    for (const manager of managers) await manager.startSession(null);
    await settle();
    expect(managers.map((m) => m.sharesConnection)).toEqual([false, false]);
    expect(managers.map((m) => m.status)).toEqual(['connected', 'connected']);
    expect(sockets.live).toHaveLength(2);
    for (const manager of managers) manager.stopSession();
  });

  it('without BroadcastChannel each tab opens its own socket', async () => {
    vi.stubGlobal('BroadcastChannel', undefined);
    const browser = new FakeBrowser();
    const server = new FakeServer();
    const sockets = new FakeSocketServer('accept');
    const manager = new ChatSessionManager(BASE, {
      fetch: server.fetch,
      webSocketFactory: sockets.create,
      storage: new MemoryStorage(),
      shareConnection: { locks: browser.tab().locks },
    });
    await manager.startSession(null);
    await settle();
    expect(manager.sharesConnection).toBe(false);
    expect(manager.status).toBe('connected');
    expect(sockets.sockets[0].url).toContain(`/sessions/${manager.sessionId}/ws`);
    manager.stopSession();
  });
});

describe('one socket for the tabs of a browser', () => {
  it('elects one leader whose one socket carries every tab its own session', async () => {
    const { browser, sockets, tabs, name } = browserWithTabs(3);
    await startAll(tabs);

    expect(tabs.map((t) => t.manager.status)).toEqual(['connected', 'connected', 'connected']);
    expect(tabs.map((t) => t.manager.transport)).toEqual(['websocket', 'websocket', 'websocket']);
    const ids = tabs.map((t) => t.manager.sessionId);
    expect(new Set(ids).size).toBe(3);
    expect(sockets.sockets).toHaveLength(1);
    expect(sockets.live).toHaveLength(1);
    expect([...sockets.live[0].carried].sort()).toEqual([...ids].sort());
    expect(sockets.sent('session.attach').map((m) => m.session)).toEqual(ids.slice(1));
    expect(browser.locks.heldBy(`presence.share:${name}:leader`)).toBe(tabs[0].tab);
    // Each tab got its own session's snapshot, not another's.
    for (const { manager } of tabs) expect(manager.session.id).toBe(manager.sessionId);
    for (const { events } of tabs) expect(events.of('error')).toEqual([]);
  });

  it("tags each tab's messages with its session, so visibility is per session", async () => {
    const { sockets, tabs } = browserWithTabs(2);
    await startAll(tabs);
    setVisibility('hidden');
    await settle();
    const visibility = sockets.sent('visibility');
    expect(visibility).toEqual(
      expect.arrayContaining([
        { type: 'visibility', state: 'hidden', session: tabs[0].manager.sessionId },
        { type: 'visibility', state: 'hidden', session: tabs[1].manager.sessionId },
      ]),
    );
    expect(visibility).toHaveLength(2);
  });

  it('gives the server a session.detach when a tab stops, and closes the socket with the last', async () => {
    const { sockets, tabs } = browserWithTabs(3);
    await startAll(tabs);
    const [first, second, third] = tabs;
    third.manager.stopSession();
    await settle();
    expect(sockets.sent('session.detach')).toEqual([{ type: 'session.detach', session: third.manager.sessionId }]);
    expect(sockets.live).toHaveLength(1);
    second.manager.stopSession();
    first.manager.stopSession();
    await settle();
    expect(sockets.live).toHaveLength(0);
  });

  it("detaches the session of a tab that crashed, found through its life lock", async () => {
    const { sockets, tabs } = browserWithTabs(3);
    await startAll(tabs);
    const crashedId = tabs[2].manager.sessionId;
    tabs[2].tab.crash();
    await settle();
    expect(sockets.sent('session.detach')).toEqual([{ type: 'session.detach', session: crashedId }]);
    expect([...sockets.live[0].carried]).not.toContain(crashedId);
    expect(tabs.slice(0, 2).map((t) => t.manager.status)).toEqual(['connected', 'connected']);
  });

  it('hands the socket over within 2 s when the leader crashes, every session kept, none replaced', async () => {
    const { server, sockets, tabs } = browserWithTabs(3);
    await startAll(tabs);
    const ids = tabs.map((t) => t.manager.sessionId);
    const first = sockets.live[0];
    const heartbeatsBefore = server.heartbeats().length;

    // The browser kills the tab: its locks and channels go, and its socket, without a word.
    tabs[0].tab.crash();
    first.readyState = FakeWebSocket.CLOSED;
    await vi.advanceTimersByTimeAsync(2 * SECOND);
    await settle();

    const survivors = tabs.slice(1);
    expect(survivors.map((t) => t.manager.status)).toEqual(['connected', 'connected']);
    expect(survivors.map((t) => t.manager.sessionId)).toEqual(ids.slice(1));
    expect(sockets.live.filter((s) => s !== first)).toHaveLength(1);
    const second = sockets.live.find((s) => s !== first);
    expect([...second.carried].sort()).toEqual(ids.slice(1).sort());
    for (const { events } of survivors) {
      expect(events.of('session-replaced')).toEqual([]);
      expect(events.of('ended')).toEqual([]);
      expect(events.of('error')).toEqual([]);
      // connected -> connecting (the hand-over) -> connected: a room can re-send its joins.
      expect(events.of('statuschange').map((e) => e.detail.status).slice(-2)).toEqual(['connecting', 'connected']);
    }
    // Taken over directly: no detour through REST heartbeats.
    expect(server.heartbeats().length).toBe(heartbeatsBefore);
  });

  it('a server restart (its socket closed with 1012) sends every tab to REST with backoff, then back', async () => {
    const { server, sockets, tabs } = browserWithTabs(2);
    await startAll(tabs);
    sockets.live[0].drop(1012);
    await settle();
    expect(tabs.map((t) => t.manager.status)).toEqual(['polling', 'polling']);
    expect(server.heartbeats()).toHaveLength(2);
    // random() is 0.5: the first retry comes after 250 ms, through one new socket.
    await vi.advanceTimersByTimeAsync(250);
    await settle();
    expect(tabs.map((t) => t.manager.status)).toEqual(['connected', 'connected']);
    expect(sockets.live).toHaveLength(1);
    expect(sockets.live[0].carried).toEqual(new Set(tabs.map((t) => t.manager.sessionId)));
  });

  it('a tab opened after a hand-over joins the new leader', async () => {
    const { sockets, tabs, openTab } = browserWithTabs(2);
    await startAll(tabs);
    tabs[0].tab.crash();
    sockets.live[0].readyState = FakeWebSocket.CLOSED;
    await settle(10);
    const late = openTab();
    await late.manager.startSession(null);
    await settle();
    expect(late.manager.status).toBe('connected');
    expect(sockets.live).toHaveLength(1);
    expect(sockets.live[0].carried).toEqual(new Set([tabs[1].manager.sessionId, late.manager.sessionId]));
  });

  it("reopens the socket for the others when the tab whose session opened it stops", async () => {
    const { sockets, tabs } = browserWithTabs(3);
    await startAll(tabs);
    // The leader's own session is the socket's; detaching it means closing the socket.
    tabs[0].manager.stopSession();
    await settle();
    expect(sockets.sockets[0].readyState).toBe(FakeWebSocket.CLOSED);
    expect(sockets.live).toHaveLength(1);
    expect(sockets.live[0].carried).toEqual(new Set([tabs[1].manager.sessionId, tabs[2].manager.sessionId]));
    expect(tabs.slice(1).map((t) => t.manager.status)).toEqual(['connected', 'connected']);
  });

  it('reopens with another session when the one the socket was opening for stops first', async () => {
    const { sockets, tabs } = browserWithTabs(2);
    sockets.manual = true;
    await startAll(tabs);
    const [first] = sockets.sockets;
    expect(sockets.sockets).toHaveLength(1);
    expect(first.url).toContain(tabs[0].manager.sessionId);
    tabs[0].manager.stopSession(); // before the handshake is done
    await settle();
    expect(first.closedWith?.code).toBe(1000);
    expect(sockets.sockets).toHaveLength(2);
    const second = sockets.sockets[1];
    expect(second.url).toContain(tabs[1].manager.sessionId);
    second.open();
    await settle();
    expect(tabs[1].manager.status).toBe('connected');
    expect(second.carried).toEqual(new Set([tabs[1].manager.sessionId]));
    expect(second.sent.filter((m) => m.type === 'session.attach')).toEqual([]);
  });

  it('lets go of a link that gave up waiting: the socket opened for it is not kept for it', async () => {
    const { sockets, tabs } = browserWithTabs(2);
    sockets.manual = true;
    await tabs[0].manager.startSession(null);
    await settle();
    await vi.advanceTimersByTimeAsync(SECOND);
    await tabs[1].manager.startSession(null);
    await settle();
    const [s0, s1] = tabs.map((t) => t.manager.sessionId);
    // The handshake takes longer than the first tab waits: it gives up and polls.
    await vi.advanceTimersByTimeAsync(2 * SECOND);
    await settle();
    expect(tabs[0].manager.status).toBe('polling');
    const [first, second] = sockets.sockets;
    expect(first.closedWith?.code).toBe(1000); // opened for the tab that gave up
    expect(second.url).toContain(s1); // the other tab's link came straight back
    second.open();
    await settle();
    expect(tabs[1].manager.status).toBe('connected');
    expect(second.carried).toEqual(new Set([s1]));
    // The first tab's next try (backoff) rides the socket that is open now.
    await vi.advanceTimersByTimeAsync(SECOND);
    await settle();
    expect(tabs[0].manager.status).toBe('connected');
    expect(second.carried).toEqual(new Set([s0, s1]));
    expect(sockets.sockets).toHaveLength(2);
  });

  it('falls back to REST for a tab whose session the server refuses to attach, and only for it', async () => {
    const { server, sockets, tabs } = browserWithTabs(2);
    await tabs[0].manager.startSession(null);
    await settle();
    // The second tab's session is not one the server will attach (another user's, say).
    const orig = server.fetch.getMockImplementation();
    server.fetch.mockImplementation(async (url, init) => {
      const response = await orig(url, init);
      if (init?.method === 'POST' && String(url).endsWith('/sessions')) sockets.refuse.add(JSON.parse(response.body).id);
      return response;
    });
    await tabs[1].manager.startSession(null);
    await settle();
    expect(tabs[0].manager.status).toBe('connected');
    expect(tabs[1].manager.status).toBe('polling');
    expect(server.heartbeats().map((r) => r.path)).toEqual([`/sessions/${tabs[1].manager.sessionId}/heartbeat`]);
  });

  it('falls back to REST when no leader answers in time, and tries again', async () => {
    const browser = new FakeBrowser();
    const tab = browser.tab();
    // Another page of the origin holds the leadership but never answers.
    browser.locks.request(browser.tab(), 'presence.share:stuck:leader', () => new Promise(() => {}));
    const server = new FakeServer();
    const sockets = new SharingServer();
    const manager = new ChatSessionManager(BASE, {
      fetch: server.fetch,
      webSocketFactory: sockets.create,
      storage: new MemoryStorage(),
      random: () => 0.5,
      shareConnection: { name: 'stuck', locks: tab.locks, BroadcastChannel: tab.BroadcastChannel, openTimeoutMs: 1000 },
    });
    await manager.startSession(null);
    await settle();
    expect(manager.status).toBe('connecting');
    await vi.advanceTimersByTimeAsync(1000);
    await settle();
    expect(manager.status).toBe('polling');
    expect(server.heartbeats()).toHaveLength(1);
    manager.stopSession();
  });
});

describe('presence through the shared socket', () => {
  function nodes(count) {
    const browser = new FakeBrowser();
    const sockets = new SharingServer();
    const name = `rooms-${(names += 1)}`;
    const list = [];
    for (let i = 0; i < count; i += 1) {
      const tab = browser.tab();
      list.push(new SharedSocket({ name, locks: tab.locks, BroadcastChannel: tab.BroadcastChannel, webSocketFactory: sockets.create }));
    }
    return { sockets, nodes: list };
  }

  async function links(list) {
    const result = [];
    for (const [i, node] of list.entries()) {
      await node.ready;
      const link = node.connect(`ws://x/api/v1/chat/sessions/session-${i}/ws`, `session-${i}`);
      link.received = [];
      link.addEventListener('message', (event) => link.received.push(JSON.parse(event.data)));
      result.push(link);
      await settle();
    }
    return result;
  }

  it("tags a tab's presence messages with its session and brings each tab the rooms it watches", async () => {
    const { sockets, nodes: list } = nodes(3);
    const [a, b, c] = await links(list);
    expect([a, b, c].map((l) => l.readyState)).toEqual([1, 1, 1]);
    b.send(JSON.stringify({ type: 'presence.join', room: 'general', meta: { name: 'B' } }));
    c.send(JSON.stringify({ type: 'presence.watch', room: 'other' }));
    await settle();
    const socket = sockets.live[0];
    expect(socket.sent.filter((m) => m.type.startsWith('presence.'))).toEqual([
      { type: 'presence.join', room: 'general', meta: { name: 'B' }, session: 'session-1' },
      { type: 'presence.watch', room: 'other', session: 'session-2' },
    ]);

    socket.receive({ type: 'presence.sync', room: 'general', seq: 1, count: 1, members: [], next: null });
    socket.receive({ type: 'presence.diff', room: 'other', seq: 2, joins: [], updates: [], leaves: [], count: 0 });
    socket.receive({ type: 'error', code: 'room_forbidden', message: 'no', room: 'x', session: 'session-2' });
    await settle();
    expect(a.received.map((m) => m.type)).toEqual(['snapshot']);
    expect(b.received.map((m) => `${m.type}:${m.room ?? ''}`)).toEqual(['snapshot:', 'presence.sync:general']);
    expect(c.received.map((m) => `${m.type}:${m.room ?? ''}`)).toEqual(['snapshot:', 'presence.diff:other', 'error:x']);
  });

  it("keeps a room watched while any tab wants it: one tab's unwatch or leave does not stop another's", async () => {
    const { sockets, nodes: list } = nodes(2);
    const [a, b] = await links(list);
    a.send(JSON.stringify({ type: 'presence.watch', room: 'r' }));
    b.send(JSON.stringify({ type: 'presence.join', room: 'r', meta: {} }));
    await settle();
    const socket = sockets.live[0];
    const presence = () => socket.sent.filter((m) => m.type.startsWith('presence.')).map((m) => m.type);
    expect(presence()).toEqual(['presence.watch', 'presence.join']);

    a.send(JSON.stringify({ type: 'presence.unwatch', room: 'r' }));
    await settle();
    expect(presence()).toEqual(['presence.watch', 'presence.join']); // b is still in it

    a.send(JSON.stringify({ type: 'presence.watch', room: 'r' }));
    b.send(JSON.stringify({ type: 'presence.leave', room: 'r' }));
    await settle();
    // The server stops watching a room none of the socket's sessions is in: watched again for a.
    expect(presence()).toEqual(['presence.watch', 'presence.join', 'presence.watch', 'presence.leave', 'presence.watch']);

    b.close();
    a.send(JSON.stringify({ type: 'presence.unwatch', room: 'r' }));
    await settle();
    expect(presence().at(-1)).toBe('presence.unwatch');
  });

  it('unwatches the rooms of a tab that went away when no other tab wants them', async () => {
    const { sockets, nodes: list } = nodes(2);
    const [, b] = await links(list);
    b.send(JSON.stringify({ type: 'presence.watch', room: 'only-b' }));
    await settle();
    list[1].close();
    await settle();
    const sent = sockets.live[0].sent;
    expect(sent.slice(-2)).toEqual([
      { type: 'session.detach', session: 'session-1' },
      { type: 'presence.unwatch', room: 'only-b' },
    ]);
  });

  it('ignores garbage on the channel: the leader and its links go on', async () => {
    const browser = new FakeBrowser();
    const sockets = new SharingServer();
    const tab = browser.tab();
    const leader = new SharedSocket({ name: 'garbage', locks: tab.locks, BroadcastChannel: tab.BroadcastChannel, webSocketFactory: sockets.create });
    await leader.ready;
    const link = leader.connect('ws://x/api/v1/chat/sessions/session-0/ws', 'session-0');
    await settle();
    const other = new (browser.tab().BroadcastChannel)('presence.share:garbage');
    for (const junk of [null, 42, 'text', [], {}, { type: 'open' }, { type: 'open', from: 7 }, { type: 'open', from: 'x', session: {} },
      { type: 'send', from: 'x', link: {}, data: 'not json' }, { type: 'send', from: 'x', to: leader.id, link: 'nope', data: '{"type":"visibility"}' },
      { type: 'close', from: 'x', to: leader.id, link: 'nope' }, { type: 'event', from: 'x', to: leader.id, link: 'nope', kind: 'close' }]) {
      other.postMessage(junk);
    }
    await settle();
    expect(leader.isLeader).toBe(true);
    expect(link.readyState).toBe(1);
    expect(sockets.live).toHaveLength(1);
    expect(sockets.live[0].sent.filter((m) => m.type !== 'session.attach')).toEqual([]);
    link.send(JSON.stringify({ type: 'visibility', state: 'hidden' }));
    expect(sockets.live[0].sent.at(-1)).toEqual({ type: 'visibility', state: 'hidden', session: 'session-0' });
  });

  it('closes the links with 1012 when the leader steps down, and the next leader takes them', async () => {
    const { sockets, nodes: list } = nodes(2);
    const [, b] = await links(list);
    const closes = [];
    b.addEventListener('close', (event) => closes.push(event.code));
    list[0].close();
    await settle();
    expect(closes).toEqual([CLOSE_HANDOVER]);
    expect(list[1].isLeader).toBe(true);
    const again = list[1].connect('ws://x/api/v1/chat/sessions/session-1/ws', 'session-1');
    await settle();
    expect(again.readyState).toBe(1);
    expect(sockets.live).toHaveLength(1);
    expect(sockets.live[0].carried).toEqual(new Set(['session-1']));
  });
});
