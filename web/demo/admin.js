// The admin page: one WebSocket to /api/v1/admin/ws (the admin cookie authenticates
// it), admin.* messages parsed once here and drawn into the page. No chart library:
// the chart is inline SVG.

const LEFT = {
  left: 'left',
  closed: 'closed the tab',
  timeout: 'lost connection',
  node_down: 'server down',
  ended: 'session ended',
  expired: 'session expired',
};
const MAX_EVENTS = 60;
const SVG = 'http://www.w3.org/2000/svg';

/** The admin socket: reconnects with capped backoff, and says each message as an event. */
export class AdminFeed extends EventTarget {
  #socket = null;
  #attempt = 0;
  #closed = false;

  connect() {
    const scheme = location.protocol === 'https:' ? 'wss' : 'ws';
    const socket = new WebSocket(`${scheme}://${location.host}/api/v1/admin/ws`);
    this.#socket = socket;
    socket.addEventListener('open', () => {
      this.#attempt = 0;
      this.dispatchEvent(new CustomEvent('state', { detail: 'connected' }));
    });
    socket.addEventListener('message', (event) => {
      let message;
      try {
        message = JSON.parse(event.data);
      } catch {
        return;
      }
      if (message && typeof message.type === 'string') {
        this.dispatchEvent(new CustomEvent(message.type, { detail: message }));
      }
    });
    socket.addEventListener('close', () => {
      if (this.#closed) return;
      this.dispatchEvent(new CustomEvent('state', { detail: 'disconnected' }));
      const delay = Math.min(10_000, 500 * 2 ** this.#attempt++) * (0.5 + Math.random() / 2);
      setTimeout(() => this.#reconnect(), delay);
    });
  }

  async #reconnect() {
    // A refused handshake says nothing to a script: ask the page whether we are still
    // signed in, and show the sign-in form if not.
    try {
      const response = await fetch('/admin', { credentials: 'same-origin', cache: 'no-store' });
      if (response.status === 401) {
        location.reload();
        return;
      }
    } catch {
      // The server is away: try the socket again anyway.
    }
    this.connect();
  }

  send(message) {
    if (this.#socket?.readyState === WebSocket.OPEN) {
      this.#socket.send(JSON.stringify(message));
      return true;
    }
    return false;
  }

  close() {
    this.#closed = true;
    this.#socket?.close();
  }
}

const $ = (id) => document.getElementById(id);

function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [name, value] of Object.entries(attrs)) {
    if (name === 'text') node.textContent = value;
    else node.setAttribute(name, value);
  }
  node.append(...children);
  return node;
}

function age(seconds) {
  if (seconds == null) return '—';
  if (seconds < 10) return `${seconds.toFixed(1)} s`;
  if (seconds < 120) return `${Math.round(seconds)} s`;
  if (seconds < 7200) return `${Math.round(seconds / 60)} min`;
  return `${Math.round(seconds / 3600)} h`;
}

function clock(ms) {
  return new Date(ms).toLocaleTimeString([], { hour: '2-digit', minute: '2-digit', second: '2-digit' });
}

// The demo pages put a display name in the meta; otherwise the user id is all there is.
function nameOf(member) {
  const name = member.name ?? member.meta?.name;
  return typeof name === 'string' && name ? name : member.user;
}

// Events carry user ids; the rooms' members give the names known for them.
function userName(user) {
  for (const room of rooms.values()) {
    const member = room.members.find((m) => m.user === user);
    if (member) return nameOf(member);
  }
  return names.get(user) ?? user;
}

const names = new Map();
const rooms = new Map();
let events = [];

function drawRooms() {
  for (const room of rooms.values()) for (const member of room.members) names.set(member.user, nameOf(member));
  const list = $('rooms');
  const sorted = [...rooms.values()].filter((r) => r.count > 0).sort((a, b) => b.count - a.count || a.room.localeCompare(b.room));
  list.replaceChildren(
    ...sorted.map((room) => {
      const members = el('ul', { class: 'admin-members', 'aria-label': `Members of ${room.room}` });
      for (const member of room.members) {
        const tabs = member.sessions === 1 ? '1 tab' : `${member.sessions} tabs`;
        members.append(
          el(
            'li',
            { class: 'member', 'data-user': member.user },
            el('span', { class: 'dot', 'data-status': member.status, 'aria-hidden': 'true' }),
            el('span', { class: 'member-name', text: nameOf(member), title: member.user }),
            el('span', { class: 'member-status', text: member.status }),
            el('span', { class: 'tabs', text: tabs }),
          ),
        );
      }
      const more = room.count > room.members.length ? el('p', { class: 'muted', text: `and ${room.count - room.members.length} more` }) : '';
      return el(
        'li',
        { class: 'admin-room', 'data-room': room.room },
        el('h3', {}, el('span', { class: 'room-hash', 'aria-hidden': 'true', text: '#' }), room.room, el('span', { class: 'count', 'aria-label': `${room.count} members`, text: String(room.count) })),
        members,
        more,
      );
    }),
  );
  $('rooms-empty').hidden = sorted.length > 0;
  $('stat-rooms').textContent = String(sorted.length);
}

function describe(event) {
  switch (event.kind) {
    case 'member.joined':
      return `${userName(event.user)} joined ${event.room}`;
    case 'member.left':
      return `${userName(event.user)} left ${event.room} (${LEFT[event.reason] ?? event.reason})`;
    case 'member.status':
      return `${userName(event.user)} is ${event.status} in ${event.room}`;
    case 'session.ended':
      return `a session of ${userName(event.user)} ended (${event.reason})`;
    case 'webhook.replayed':
      return `dead letter ${event.id} replayed`;
    default:
      return event.kind;
  }
}

function drawEvents() {
  $('events').replaceChildren(
    ...events.map((event) =>
      el('li', { 'data-kind': event.kind }, el('time', { datetime: new Date(event.at).toISOString(), text: clock(event.at) }), ' ', describe(event)),
    ),
  );
  $('events-empty').hidden = events.length > 0;
}

function drawChart(series, now) {
  const width = 960;
  const height = 200;
  const pad = { left: 36, right: 12, top: 12, bottom: 24 };
  const end = Math.floor(now / 60_000) * 60_000;
  const start = end - 59 * 60_000;
  const top = Math.max(4, ...series.map((s) => Math.max(s.sockets, s.users)));
  const x = (minute) => pad.left + ((minute - start) / (end - start)) * (width - pad.left - pad.right);
  const y = (value) => height - pad.bottom - (value / top) * (height - pad.top - pad.bottom);
  const svg = document.createElementNS(SVG, 'svg');
  svg.setAttribute('viewBox', `0 0 ${width} ${height}`);
  svg.setAttribute('role', 'img');
  const last = series.at(-1);
  svg.setAttribute('aria-label', last ? `Now ${last.sockets} sockets and ${last.users} users online; peak ${top} in the last hour` : 'No samples yet');
  const add = (tag, attrs, text) => {
    const node = document.createElementNS(SVG, tag);
    for (const [name, value] of Object.entries(attrs)) node.setAttribute(name, value);
    if (text != null) node.textContent = text;
    svg.append(node);
    return node;
  };
  for (const value of [0, top / 2, top]) {
    add('line', { x1: pad.left, x2: width - pad.right, y1: y(value), y2: y(value), class: 'grid' });
    add('text', { x: pad.left - 6, y: y(value) + 4, 'text-anchor': 'end', class: 'axis' }, String(Math.round(value)));
  }
  for (const minute of [start, start + 30 * 60_000, end]) {
    const label = minute === end ? 'now' : `−${Math.round((end - minute) / 60_000)} min`;
    add('text', { x: x(minute), y: height - 6, 'text-anchor': minute === start ? 'start' : minute === end ? 'end' : 'middle', class: 'axis' }, label);
  }
  const shown = series.filter((s) => s.minute >= start);
  for (const key of ['users', 'sockets']) {
    const points = shown.map((s) => `${x(s.minute).toFixed(1)},${y(s[key]).toFixed(1)}`);
    if (points.length === 1) points.push(`${(x(shown[0].minute) + 4).toFixed(1)},${y(shown[0][key]).toFixed(1)}`);
    if (points.length) add('polyline', { points: points.join(' '), class: `line ${key}` });
    for (const s of shown.slice(-1)) add('circle', { cx: x(s.minute), cy: y(s[key]), r: 3.5, class: `point ${key}` });
  }
  $('chart').replaceChildren(svg);
}

function drawStatus(status) {
  const procs = status.processes ?? [];
  $('stat-sockets').textContent = String(procs.reduce((n, p) => n + p.sockets, 0));
  $('stat-users').textContent = String(procs.reduce((n, p) => n + p.users, 0));
  $('stat-processes').textContent = String(procs.length);
  $('processes').replaceChildren(
    ...procs.map((p) =>
      el(
        'tr',
        { 'data-holder': p.holder },
        el('td', {}, el('code', { text: p.holder }), p.self ? el('span', { class: 'you', text: ' (this page’s)' }) : ''),
        el('td', { text: `${p.host} · ${p.pid}` }),
        el('td', { text: String(p.sockets) }),
        el('td', { text: String(p.users) }),
        el('td', { text: p.lease_age == null ? 'no lease' : age(p.lease_age) }),
        el('td', { text: age((status.at - p.started) / 1000) }),
      ),
    ),
  );
  const store = status.store ?? {};
  const state = $('store-state');
  state.textContent = store.status ?? '–';
  state.dataset.value = store.status === 'ready' ? 'active' : 'error';
  const facts = [
    ['State', store.status],
    ['Serving from', store.store],
    ['Journal (writes pending)', String(store.pending_writes ?? 0)],
  ];
  // /readyz's sentence when it has one (what is wrong, in words), else the raw error.
  const problem = store.problem ?? store.error;
  if (problem) facts.push(['Problem', problem]);
  if (store.unreachable_since) facts.push(['Unreachable since', store.unreachable_since]);
  $('store').replaceChildren(...facts.flatMap(([name, value]) => [el('dt', { text: name }), el('dd', { text: value ?? '–' })]));
  drawWebhooks(status.webhooks ?? {});
  drawChart(status.series ?? [], status.at);
}

function drawWebhooks(webhooks) {
  const health = webhooks.health ?? {};
  const line = $('webhooks-health');
  const receivers = Array.isArray(health.receivers) ? health.receivers : [];
  if (!health.configured) {
    line.textContent = health.message ?? 'webhooks not configured';
  } else if (health.error) {
    line.textContent = `Webhook state unavailable: ${health.error}`;
  } else {
    const dead = receivers.reduce((n, r) => n + (r.dead ?? 0), 0);
    const waiting = receivers.reduce((n, r) => n + (r.waiting ?? 0), 0);
    line.textContent = `${receivers.length} receiver${receivers.length === 1 ? '' : 's'} · ${waiting} waiting · ${dead} dead${health.durable === false ? ' · not durable (memory store)' : ''}`;
  }
  $('receivers').replaceChildren(
    ...receivers.map((r) => {
      const facts = [`delivered ${r.delivered ?? 0}`, `failures ${r.failures ?? 0}`, `retries ${r.retries ?? 0}`, `lag ${age(r.lag ?? 0)}`];
      const ok = !r.last_error || (r.last_success ?? 0) * 1000 > Date.now() - 60_000;
      return el(
        'li',
        { 'data-where': r.where ?? '' },
        el('span', { class: 'dot', 'data-status': ok ? 'online' : 'away', 'aria-hidden': 'true' }),
        el('code', { text: r.where ?? '' }),
        el('span', { class: 'muted', text: ` ${facts.join(' · ')}${r.last_error ? ` · last error: ${r.last_error}` : ''}` }),
      );
    }),
  );
  const letters = webhooks.dead_letters ?? [];
  $('dead-letters').replaceChildren(
    ...letters.map((letter) => {
      const button = el('button', { class: 'button small', type: 'button', 'aria-label': `Replay dead letter ${letter.id}`, text: 'Replay' });
      button.addEventListener('click', () => {
        button.disabled = true;
        feed.send({ type: 'admin.replay', id: letter.id });
      });
      const tries = letter.attempts ? `${letter.attempts} attempt${letter.attempts === 1 ? '' : 's'}` : null;
      const what = [letter.type, letter.to, letter.error, tries].filter(Boolean).join(' · ');
      return el('li', { 'data-id': letter.id, 'data-event': letter.event ?? '' }, el('div', {}, el('code', { text: letter.id }), el('p', { class: 'muted', text: what })), button);
    }),
  );
  $('dead-empty').hidden = letters.length > 0;
}

const feed = new AdminFeed();
window.admin = feed;

feed.addEventListener('state', (event) => {
  const pill = $('connection');
  pill.dataset.value = event.detail;
  pill.textContent = event.detail === 'connected' ? 'Live' : 'Reconnecting…';
});
feed.addEventListener('admin.snapshot', ({ detail }) => {
  rooms.clear();
  for (const room of detail.rooms) rooms.set(room.room, room);
  events = [...detail.events].reverse().slice(0, MAX_EVENTS);
  drawRooms();
  drawEvents();
  drawStatus(detail.status);
  document.body.dataset.loaded = 'true';
});
feed.addEventListener('admin.status', ({ detail }) => drawStatus(detail.status));
feed.addEventListener('admin.room', ({ detail }) => {
  rooms.set(detail.room, detail);
  drawRooms();
  drawEvents(); // names of members just seen, for the events about them
});
feed.addEventListener('admin.event', ({ detail }) => {
  events = [detail.event, ...events].slice(0, MAX_EVENTS);
  drawEvents();
});
feed.addEventListener('admin.replayed', () => feed.send({ type: 'admin.refresh' }));
feed.addEventListener('error', ({ detail }) => {
  const line = $('webhooks-health');
  if (detail.code === 'dead_letter_not_found' || detail.code === 'webhooks_not_configured') line.textContent = detail.message;
  feed.send({ type: 'admin.refresh' });
});

$('sign-out').addEventListener('click', async () => {
  feed.close();
  await fetch('/api/v1/admin/logout', { method: 'POST', credentials: 'same-origin' });
  location.reload();
});

feed.connect();
