import { readFileSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { afterEach, beforeEach, describe, expect, it, vi } from 'vitest';
import { FakeWebSocket, flush } from './fakes.js';

// The admin page against a fake socket in jsdom: what each admin.* message draws, and
// what the page sends. Chromium tests (tests/browser/test_admin_page.py) cover the
// real server.

function loadBody(file) {
  const html = readFileSync(join(dirname(fileURLToPath(import.meta.url)), '..', file), 'utf8');
  document.body.innerHTML = new DOMParser().parseFromString(html, 'text/html').body.innerHTML;
}

const $ = (selector) => document.querySelector(selector);
let sockets;

function status(overrides = {}) {
  const at = Date.UTC(2026, 11, 1, 12, 30);
  return {
    at,
    process: 'p-a',
    processes: [
      { holder: 'p-a', host: 'web-1', pid: 10, started: at - 90_000, sockets: 3, sessions: 3, users: 2, at, lease_age: 0.4, self: true },
      { holder: 'p-b', host: 'web-2', pid: 11, started: at - 3_600_000, sockets: 1, sessions: 1, users: 1, at, lease_age: 1.2, self: false },
    ],
    store: { store: 'redis', degraded: false, pending_writes: 0, status: 'ready' },
    webhooks: { health: { configured: false, message: 'webhooks not configured' }, dead_letters: [] },
    series: [
      { minute: at - 120_000, sockets: 2, users: 2 },
      { minute: at - 60_000, sockets: 4, users: 3 },
      { minute: at, sockets: 4, users: 3 },
    ],
    ...overrides,
  };
}

const ada = { user: 'u1', status: 'online', sessions: 2, name: 'Ada', since: '2026-12-01T12:00:00Z' };
const bob = { user: 'u2', status: 'away', sessions: 1, since: '2026-12-01T12:01:00Z' };

beforeEach(() => {
  vi.resetModules();
  sockets = [];
  vi.stubGlobal(
    'WebSocket',
    Object.assign(
      vi.fn(function WebSocket(url) {
        const socket = new FakeWebSocket(url);
        sockets.push(socket);
        return socket;
      }),
      { OPEN: 1 },
    ),
  );
  vi.stubGlobal('fetch', vi.fn(async () => new Response(null, { status: 200 })));
});

afterEach(() => {
  window.admin?.close();
  delete window.admin;
  document.body.innerHTML = '';
});

async function open() {
  loadBody('admin.html');
  await import('/static/demo/admin.js');
  const socket = sockets.at(-1);
  socket.accept();
  return socket;
}

describe('admin page', () => {
  it('connects to the admin socket and draws the snapshot: totals, processes, store, chart', async () => {
    const socket = await open();
    expect(socket.url).toBe(`ws://${location.host}/api/v1/admin/ws`);
    expect($('#connection').textContent).toBe('Live');
    socket.receive({ type: 'admin.snapshot', rooms: [{ room: 'general', count: 2, seq: 1, members: [ada, bob] }], events: [], status: status() });
    await flush();
    expect($('#stat-sockets').textContent).toBe('4');
    expect($('#stat-users').textContent).toBe('3');
    expect($('#stat-processes').textContent).toBe('2');
    expect($('#stat-rooms').textContent).toBe('1');
    expect([...document.querySelectorAll('#processes tr')].map((tr) => tr.dataset.holder)).toEqual(['p-a', 'p-b']);
    expect($('#processes tr').textContent).toContain('0.4 s');
    expect($('#store-state').textContent).toBe('ready');
    expect($('#chart svg').getAttribute('aria-label')).toBe('Now 4 sockets and 3 users online; peak 4 in the last hour');
    expect(document.querySelectorAll('#chart polyline')).toHaveLength(2);
    const members = [...document.querySelectorAll('[aria-label="Members of general"] li')].map((li) => li.textContent);
    expect(members).toEqual(['Adaonline2 tabs', 'u2away1 tab']);
  });

  it('applies a room as it changes and names users in events by their meta', async () => {
    const socket = await open();
    socket.receive({ type: 'admin.snapshot', rooms: [], events: [], status: status() });
    socket.receive({ type: 'admin.event', event: { kind: 'member.joined', room: 'general', user: 'u1', at: Date.now() } });
    socket.receive({ type: 'admin.room', room: 'general', count: 1, seq: 2, members: [ada] });
    await flush();
    expect($('#events').textContent).toContain('Ada joined general');
    socket.receive({ type: 'admin.event', event: { kind: 'member.left', room: 'general', user: 'u1', reason: 'timeout', at: Date.now() } });
    socket.receive({ type: 'admin.room', room: 'general', count: 0, seq: 3, members: [] });
    await flush();
    expect($('#events li').textContent).toContain('Ada left general (lost connection)');
    expect($('#rooms').children).toHaveLength(0);
    expect($('#rooms-empty').hidden).toBe(false);
  });

  it('says the store is degraded with its problem in words', async () => {
    const socket = await open();
    const store = { store: 'memory', degraded: true, pending_writes: 7, status: 'degraded', problem: 'Redis unreachable since 12:29' };
    socket.receive({ type: 'admin.snapshot', rooms: [], events: [], status: status({ store }) });
    await flush();
    expect($('#store-state').textContent).toBe('degraded');
    expect($('#store').textContent).toContain('7');
    expect($('#store').textContent).toContain('Redis unreachable since 12:29');
  });

  it('lists dead letters with a labelled Replay button that sends admin.replay, then refreshes', async () => {
    const socket = await open();
    const webhooks = {
      health: {
        configured: true,
        durable: true,
        receivers: [{ where: 'https://hooks.example.com:443', waiting: 2, dead: 1, delivered: 9, failures: 3, retries: 3, lag: 0.2, last_error: 'HTTP 500', last_success: null }],
      },
      dead_letters: [{ id: '0/1-0', type: 'member.joined', error: 'HTTP 500' }],
    };
    socket.receive({ type: 'admin.snapshot', rooms: [], events: [], status: status({ webhooks }) });
    await flush();
    expect($('#webhooks-health').textContent).toBe('1 receiver · 2 waiting · 1 dead');
    expect($('#receivers').textContent).toContain('https://hooks.example.com:443');
    expect($('#receivers').textContent).toContain('last error: HTTP 500');
    const button = document.querySelector('button[aria-label="Replay dead letter 0/1-0"]');
    expect(button.closest('li').textContent).toContain('HTTP 500');
    button.click();
    expect(socket.sent.at(-1)).toEqual({ type: 'admin.replay', id: '0/1-0' });
    expect(button.disabled).toBe(true);
    socket.receive({ type: 'admin.replayed', id: '0/1-0' });
    expect(socket.sent.at(-1)).toEqual({ type: 'admin.refresh' });
  });

  it('shows the sign-in form again when the socket closes and the login is gone', async () => {
    vi.useFakeTimers();
    const reload = vi.fn();
    vi.stubGlobal('location', { ...window.location, host: window.location.host, protocol: 'http:', reload });
    fetch.mockResolvedValue(new Response(null, { status: 401 }));
    const socket = await open();
    socket.drop(1006);
    expect($('#connection').textContent).toBe('Reconnecting…');
    await vi.advanceTimersByTimeAsync(1000);
    expect(fetch).toHaveBeenCalledWith('/admin', expect.objectContaining({ credentials: 'same-origin' }));
    expect(reload).toHaveBeenCalled();
    vi.useRealTimers();
  });
});
