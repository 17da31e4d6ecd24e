// The /hub demo page: the rooms with their counts, the user's sessions and a
// way to clean them up.

import { ChatSessionManager, ROOM_PATTERN } from '/static/src/index.js';

const manager = new ChatSessionManager('/api/v1/chat');
const $ = (id) => document.getElementById(id);

function formatTime(iso) {
  if (!iso) return '—';
  const date = new Date(iso);
  if (Number.isNaN(date.getTime())) return iso;
  const sameDay = date.toDateString() === new Date().toDateString();
  return sameDay ? date.toLocaleTimeString() : date.toLocaleString();
}

function cell(content) {
  const td = document.createElement('td');
  td.append(content);
  return td;
}

function pill(value) {
  const span = document.createElement('span');
  span.className = 'pill';
  span.dataset.value = value ?? '';
  span.textContent = value ?? '—';
  return span;
}

function time(iso) {
  const element = document.createElement('time');
  if (iso) element.dateTime = iso;
  element.title = iso ?? '';
  element.textContent = formatTime(iso);
  return element;
}

function notice(text, kind = 'info') {
  const element = $('hub-message');
  element.textContent = text;
  element.dataset.kind = kind;
  element.hidden = !text;
}

function render(sessions) {
  const rows = [...sessions]
    .sort((a, b) => String(b.last_seen).localeCompare(String(a.last_seen)))
    .map((session) => {
      const row = document.createElement('tr');
      row.dataset.sessionId = session.id;
      const id = document.createElement('code');
      id.textContent = session.id;
      row.append(
        cell(id),
        cell(pill(session.state)),
        cell(pill(session.transport)),
        cell(time(session.created_at)),
        cell(time(session.last_seen)),
        cell(time(session.expires_at)),
      );
      return row;
    });
  $('sessions').replaceChildren(...rows);
  $('empty').hidden = rows.length > 0;
  $('cleanup-all').disabled = rows.length === 0;
}

function roomItem({ room, count }) {
  const item = document.createElement('li');
  item.dataset.room = room;
  const link = document.createElement('a');
  link.href = `/chat?room=${encodeURIComponent(room)}`;
  link.textContent = `#${room}`;
  const badge = document.createElement('span');
  badge.className = 'count';
  badge.textContent = `${count} online`;
  item.append(link, ' ', badge);
  return item;
}

async function loadRooms() {
  // The rooms this user may watch that have members (GET /api/v1/presence/rooms).
  try {
    const response = await fetch(`${manager.presenceUrl}/rooms`, { headers: { Accept: 'application/json' }, credentials: 'same-origin' });
    const data = await response.json().catch(() => null);
    if (!response.ok) throw new Error(data?.error?.message ?? `HTTP ${response.status}`);
    const rooms = Array.isArray(data?.rooms) ? data.rooms : [];
    $('rooms').replaceChildren(...rooms.map(roomItem));
    $('rooms-empty').hidden = rooms.length > 0;
    $('rooms-message').hidden = true;
  } catch (error) {
    // Said in the rooms' card: the sessions below may well be fine.
    $('rooms').replaceChildren();
    $('rooms-empty').hidden = true;
    $('rooms-message').textContent = `Could not list the rooms: ${error.message ?? error}`;
    $('rooms-message').hidden = false;
  }
}

async function load() {
  const [sessions] = await Promise.all([manager.listSessions(), loadRooms()]);
  if (sessions !== null) render(sessions);
  document.body.dataset.loaded = 'true';
}

$('open-room').addEventListener('submit', (event) => {
  event.preventDefault();
  const room = $('room-input').value.trim() || 'general';
  if (!ROOM_PATTERN.test(room)) {
    notice('A room name is 1 to 128 letters, digits or _ . : @ -', 'error');
    return;
  }
  location.assign(`/chat?room=${encodeURIComponent(room)}`);
});

manager.addEventListener('error', (event) => {
  notice(`Something went wrong: ${event.detail.error?.message ?? event.detail.error}`, 'error');
});

$('refresh').addEventListener('click', () => {
  notice('');
  load();
});

$('cleanup-all').addEventListener('click', async (event) => {
  const button = event.currentTarget;
  button.disabled = true;
  const result = await manager.cleanupSessions('all');
  if (result) notice(`Cleaned up ${result.deleted} session${result.deleted === 1 ? '' : 's'}.`);
  await load();
});

load();

window.presence = manager;
