import { readFileSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { afterEach, beforeEach, describe, expect, it, vi } from 'vitest';
import { FakeServer, FakeSocketServer, flush } from './fakes.js';
import { diff, memberOf, presenceSent, sync, withPresence } from './presenceFakes.js';

// The demo pages' presence parts against the fakes in jsdom; Chromium tests
// (tests/browser/test_presence_page.py) cover the real server.

function loadBody(file) {
  const html = readFileSync(join(dirname(fileURLToPath(import.meta.url)), '..', file), 'utf8');
  document.body.innerHTML = new DOMParser().parseFromString(html, 'text/html').body.innerHTML;
}

const $ = (selector) => document.querySelector(selector);
const items = (selector) => [...document.querySelectorAll(selector)];

let server;
let sockets;
let presence;

beforeEach(() => {
  vi.resetModules();
  server = new FakeServer();
  presence = withPresence(server);
  sockets = new FakeSocketServer('accept');
  vi.stubGlobal('fetch', server.fetch);
  vi.stubGlobal(
    'WebSocket',
    vi.fn(function WebSocket(url) {
      return sockets.create(url);
    }),
  );
  sessionStorage.clear();
  localStorage.clear();
});

afterEach(() => {
  window.presence?.stopSession();
  delete window.presence;
  document.body.innerHTML = '';
  history.replaceState({}, '', '/');
});

async function openChat(path) {
  history.replaceState({}, '', path);
  loadBody('chat.html');
  await import('/static/demo/chat.js');
  await flush();
}

describe('chat page presence', () => {
  it('joins the room named in ?room= with this browser\u2019s name, and shares the connection', async () => {
    localStorage.setItem('presence.demo.identity', JSON.stringify({ name: 'Ada 123', client: 'c-ada' }));
    await openChat('/chat?room=team:42');
    expect(window.presence.shareConnection).toBe(true);
    expect(presenceSent(sockets.last)).toEqual([{ type: 'presence.join', room: 'team:42', meta: { name: 'Ada 123', client: 'c-ada' } }]);
    expect($('#room-name').textContent).toBe('team:42');
    expect($('#your-name').textContent).toBe('Ada 123');
  });

  it('joins #general by default, and for a name the server would refuse', async () => {
    await openChat('/chat?room=not%20a%20room');
    expect(presenceSent(sockets.last)[0].room).toBe('general');
    expect($('#activity').textContent).toContain('is not a room name');
  });

  it('lists the members under "Online": a status dot, the tab count, and "(you)"; joins and leaves are told with the reason in words', async () => {
    localStorage.setItem('presence.demo.identity', JSON.stringify({ name: 'Ada 123', client: 'c-ada' }));
    await openChat('/chat?room=x');
    const list = document.getElementById($('#members').getAttribute('aria-labelledby'));
    expect(list.textContent).toBe('Online');
    sockets.last.receive(
      sync('x', 1, [memberOf('u1', { meta: { name: 'Ada 123', client: 'c-ada' }, sessions: 2 }), memberOf('u2', { meta: { name: 'Bob 456', client: 'c-bob' }, status: 'away' })]),
    );
    const rows = items('#members li');
    expect(rows.map((li) => li.dataset.user)).toEqual(['u1', 'u2']);
    expect(rows[0].textContent).toContain('(you)');
    expect(rows[0].textContent).toContain('2 tabs');
    expect(rows[1].querySelector('.dot').dataset.status).toBe('away');
    expect(rows[1].textContent).toContain('1 tab');
    expect($('#online-count').textContent).toBe('2');
    expect($('#members-status').textContent).toContain('Live');

    sockets.last.receive(diff('x', 2, { joins: [memberOf('u3', { meta: { name: 'Cy 789' } })], count: 3 }));
    expect($('#room-log').textContent).toContain('Cy 789 joined');
    const reasons = { left: 'Cy 789 left', closed: 'Bob 456 left (closed the tab)' };
    sockets.last.receive(diff('x', 3, { leaves: [{ user: 'u3', reason: 'left' }], count: 2 }));
    sockets.last.receive(diff('x', 4, { leaves: [{ user: 'u2', reason: 'closed' }], count: 1 }));
    const log = items('#room-log li').map((li) => li.textContent);
    expect(log[1]).toContain(reasons.left);
    expect(log[1]).not.toContain('(');
    expect(log[0]).toContain(reasons.closed);
    expect(items('#members li').map((li) => li.dataset.user)).toEqual(['u1']);
  });

  it('says every other reason in words', async () => {
    await openChat('/chat?room=x');
    const members = ['a', 'b', 'c', 'd'].map((u) => memberOf(u, { meta: { name: u.toUpperCase() } }));
    sockets.last.receive(sync('x', 1, members));
    const leaves = [
      { user: 'a', reason: 'timeout' },
      { user: 'b', reason: 'node_down' },
      { user: 'c', reason: 'ended' },
      { user: 'd', reason: 'expired' },
    ];
    sockets.last.receive(diff('x', 2, { leaves, count: 0 }));
    const log = $('#room-log').textContent;
    expect(log).toContain('A left (lost connection)');
    expect(log).toContain('B left (server restarted)');
    expect(log).toContain('C left (session ended)');
    expect(log).toContain('D left (session expired)');
  });

  it('shows what keeps the session alive: the socket since it opened, and the last snapshot', async () => {
    await openChat('/chat');
    expect($('#kept-alive-by').textContent).toBe('by the socket since');
    expect($('#last-keepalive').getAttribute('datetime')).toMatch(/^\d{4}-\d\d-\d\dT/);
    expect($('#last-snapshot').getAttribute('datetime')).toMatch(/^\d{4}-\d\d-\d\dT/);
  });
});

describe('hub page rooms', () => {
  it('lists the rooms with their counts, each a link into its chat', async () => {
    presence.put('general', memberOf('a'));
    presence.put('general', memberOf('b'));
    presence.put('team:42', memberOf('a'));
    loadBody('hub.html');
    await import('/static/demo/hub.js');
    await flush();
    const rows = items('#rooms li');
    expect(rows.map((li) => li.dataset.room)).toEqual(['general', 'team:42']);
    expect(rows[0].textContent).toContain('2 online');
    expect(rows[1].querySelector('a').getAttribute('href')).toBe('/chat?room=team%3A42');
    expect($('#rooms-empty').hidden).toBe(true);
  });

  it('says when nobody is in a room, and when the list cannot be read', async () => {
    loadBody('hub.html');
    await import('/static/demo/hub.js');
    await flush();
    expect($('#rooms-empty').hidden).toBe(false);
    presence.listFailure = { status: 503, body: { error: { code: 'store_unavailable', message: 'try later' } } };
    $('#refresh').click();
    await flush();
    expect($('#rooms-message').textContent).toContain('try later');
    expect($('#rooms-empty').hidden).toBe(true);
  });
});
