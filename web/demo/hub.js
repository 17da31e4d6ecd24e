// The /hub demo page: the user's sessions and a way to clean them up.

import { ChatSessionManager } from '/static/src/index.js';

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

async function load() {
  const sessions = await manager.listSessions();
  if (sessions !== null) render(sessions);
  document.body.dataset.loaded = 'true';
}

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
