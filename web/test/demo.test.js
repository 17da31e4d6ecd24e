import { readFileSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { afterEach, beforeEach, describe, expect, it, vi } from 'vitest';
import { FakeServer, FakeSocketServer, flush } from './fakes.js';

// The demo pages run against the fakes in jsdom; Chromium tests cover the real server.

function loadBody(file) {
  const html = readFileSync(join(dirname(fileURLToPath(import.meta.url)), '..', file), 'utf8');
  document.body.innerHTML = new DOMParser().parseFromString(html, 'text/html').body.innerHTML;
}

const $ = (selector) => document.querySelector(selector);

let server;
let sockets;

beforeEach(() => {
  vi.resetModules();
  server = new FakeServer();
  sockets = new FakeSocketServer('accept');
  vi.stubGlobal('fetch', server.fetch);
  vi.stubGlobal(
    'WebSocket',
    vi.fn(function WebSocket(url) {
      return sockets.create(url);
    }),
  );
  sessionStorage.clear();
});

afterEach(() => {
  window.presence?.stopSession();
  delete window.presence;
  document.body.innerHTML = '';
});

describe('chat page', () => {
  it('shows the live session in its panel: id, websocket transport, state, status and keepalive time', async () => {
    loadBody('chat.html');
    await import('/static/demo/chat.js');
    await flush();

    const [session] = server.sessions.values();
    expect($('#session-id').textContent).toBe(session.id);
    expect($('#transport').textContent).toBe('websocket');
    expect($('#status').textContent).toBe('connected');
    expect($('#state').textContent).toBe('active');
    expect($('#last-keepalive').getAttribute('datetime')).toMatch(/^\d{4}-\d\d-\d\dT/);
    expect(sessionStorage.getItem('presence.sessionId')).toBe(session.id);
    expect(sockets.last.url).toBe(`ws://${location.host}/api/v1/chat/sessions/${session.id}/ws`);
  });

  it('continues the session stored in this tab rather than creating another', async () => {
    const existing = server.addSession();
    sessionStorage.setItem('presence.sessionId', existing.id);
    loadBody('chat.html');
    await import('/static/demo/chat.js');
    await flush();
    expect($('#session-id').textContent).toBe(existing.id);
    expect(server.calls('POST', '/sessions')).toHaveLength(0);
  });

  it('cleans up all sessions when "Back to Hub" is pressed', async () => {
    vi.spyOn(console, 'error').mockImplementation(() => {}); // jsdom cannot navigate
    loadBody('chat.html');
    await import('/static/demo/chat.js');
    await flush();
    expect($('#back-to-hub').textContent).toContain('Back to Hub');
    $('#back-to-hub').click();
    await flush();
    expect(server.calls('POST', '/sessions/cleanup').map((r) => [r.body, r.init.keepalive])).toEqual([[{ type: 'all' }, true]]);
    expect(server.sessions.size).toBe(0);
    expect($('#status').textContent).toBe('idle');
  });
});

describe('hub page', () => {
  it('lists the sessions as #sessions rows with data-session-id and state, and "Clean up all" empties it', async () => {
    const a = server.addSession({ state: 'active', transport: 'websocket' });
    const b = server.addSession({ state: 'away', transport: 'http' });
    loadBody('hub.html');
    await import('/static/demo/hub.js');
    await flush();

    const rows = [...document.querySelectorAll('#sessions tr[data-session-id]')];
    expect(rows.map((row) => row.dataset.sessionId).sort()).toEqual([a.id, b.id].sort());
    const row = $(`#sessions tr[data-session-id="${b.id}"]`);
    expect(row.textContent).toContain('away');
    expect(row.textContent).toContain('http');
    expect($('#open-chat').getAttribute('href')).toBe('/chat');
    expect($('#empty').hidden).toBe(true);

    $('#cleanup-all').click();
    await flush();
    expect(server.calls('POST', '/sessions/cleanup').map((r) => r.body)).toEqual([{ type: 'all' }]);
    expect(document.querySelectorAll('#sessions tr')).toHaveLength(0);
    expect($('#empty').hidden).toBe(false);
    expect($('#hub-message').textContent).toBe('Cleaned up 2 sessions.');
  });
});
