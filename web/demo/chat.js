// The /chat demo page: one ChatSessionManager, the room's members live, a
// live panel, a local mock chat. `/chat?room=NAME` (default general).

import { ChatSessionManager, ROOM_PATTERN, getOrCreateSessionId } from '/static/src/index.js';

// shareConnection: the tabs of this browser share one socket where the
// browser can (Web Locks, BroadcastChannel); each keeps its own session.
const manager = new ChatSessionManager('/api/v1/chat', { shareConnection: true });
const $ = (id) => document.getElementById(id);

const HINTS = {
  idle: 'Not keeping a session alive.',
  connecting: 'Connecting…',
  connected: 'WebSocket open: the server’s ping frames keep the session alive, with no HTTP requests.',
  polling: 'WebSocket unavailable: a heartbeat request every 30 s keeps the session alive while the socket is retried.',
  paused: 'Tab hidden: heartbeats are paused until you come back.',
  ended: 'The session has ended.',
  error: 'Could not reach the server.',
};

function timeOf(date) {
  return date.toLocaleTimeString([], { hour: '2-digit', minute: '2-digit', second: '2-digit' });
}

function setPill(element, value, label = value) {
  element.textContent = label || '—';
  element.dataset.value = value ?? '';
}

function setTime(element, date, empty = '') {
  if (date) {
    element.textContent = timeOf(date);
    element.dateTime = date.toISOString();
  } else {
    element.textContent = empty;
    element.removeAttribute('datetime');
  }
}

// What is true about keepalives: while the socket is open the server's pings
// keep the session alive (no message, so nothing to time but the opening);
// over REST, each heartbeat's answer.
let socketSince = null;
let lastSnapshot = null;

function render() {
  $('session-id').textContent = manager.sessionId ?? '—';
  setPill($('status'), manager.status);
  setPill($('transport'), manager.transport);
  // An ended session has no state left, whatever its last snapshot said.
  setPill($('state'), manager.status === 'ended' ? '' : manager.state ?? '');
  if (manager.status === 'connected') {
    $('kept-alive-by').textContent = 'by the socket since';
    setTime($('last-keepalive'), socketSince);
  } else if (manager.transport === 'http' && manager.lastKeepalive) {
    $('kept-alive-by').textContent = 'by a heartbeat at';
    setTime($('last-keepalive'), manager.lastKeepalive);
  } else {
    $('kept-alive-by').textContent = '—';
    setTime($('last-keepalive'), null);
  }
  setTime($('last-snapshot'), lastSnapshot, '—');
  $('transport-hint').textContent = HINTS[manager.status] ?? '';
}

// --- presence ----------------------------------------------------------------

const requested = new URLSearchParams(location.search).get('room');
const roomName = requested && ROOM_PATTERN.test(requested) ? requested : 'general';

// A name for this browser (localStorage: the same in all its tabs), sent as
// this tab's meta so that the others see who is who. `client` tells "you".
function identity() {
  const NAMES = ['Ada', 'Grace', 'Linus', 'Alan', 'Edsger', 'Barbara', 'Ken', 'Margaret', 'Dennis', 'Frances', 'Donald', 'Radia'];
  try {
    const kept = JSON.parse(localStorage.getItem('presence.demo.identity') ?? 'null');
    if (kept?.name && kept?.client) return kept;
  } catch {
    // Storage disabled or garbled: a new name for this page.
  }
  const fresh = {
    name: `${NAMES[Math.floor(Math.random() * NAMES.length)]} ${Math.floor(100 + Math.random() * 900)}`,
    client: Math.random().toString(36).slice(2, 10),
  };
  try {
    localStorage.setItem('presence.demo.identity', JSON.stringify(fresh));
  } catch {
    // As above.
  }
  return fresh;
}

const me = identity();

// Why someone left, in words.
const LEFT = {
  left: null,
  closed: 'closed the tab',
  timeout: 'lost connection',
  node_down: 'server restarted',
  ended: 'session ended',
  expired: 'session expired',
};

const MEMBER_HINTS = {
  connecting: 'Connecting…',
  syncing: 'Updating the list…',
  live: 'Live: joins and leaves arrive over the WebSocket as they happen.',
  polling: 'The WebSocket is down: this list is polled over HTTP every heartbeat.',
  paused: 'Tab hidden: the list is not polled until you come back.',
  offline: 'Not in the room right now.',
  error: 'The server refused this room.',
  closed: 'Not in the room.',
};

function nameOf(member) {
  const name = member?.meta?.name;
  return typeof name === 'string' && name ? name : member?.user ?? 'Someone';
}

function memberItem(member) {
  const item = document.createElement('li');
  item.className = 'member';
  item.dataset.user = member.user;
  item.dataset.status = member.status;
  const mine = member.meta?.client === me.client;
  if (mine) item.dataset.you = 'true';
  const dot = document.createElement('span');
  dot.className = 'dot';
  dot.dataset.status = member.status;
  dot.setAttribute('aria-hidden', 'true');
  const name = document.createElement('span');
  name.className = 'member-name';
  name.textContent = nameOf(member);
  item.append(dot, name);
  if (mine) {
    const you = document.createElement('span');
    you.className = 'you';
    you.textContent = '(you)';
    item.append(' ', you);
  }
  const status = document.createElement('span');
  status.className = 'member-status';
  status.textContent = member.status;
  const tabs = document.createElement('span');
  tabs.className = 'tabs';
  tabs.textContent = `${member.sessions} ${member.sessions === 1 ? 'tab' : 'tabs'}`;
  item.append(' ', status, ' ', tabs);
  return item;
}

function renderMembers(room) {
  const members = [...room.members.values()].sort((a, b) => {
    const mine = (m) => (m.meta?.client === me.client ? 0 : 1);
    return mine(a) - mine(b) || nameOf(a).localeCompare(nameOf(b));
  });
  $('members').replaceChildren(...members.map(memberItem));
  $('online-count').textContent = String(room.count);
  $('online-count').setAttribute('aria-label', `${room.count} online`);
  $('members-status').textContent = room.partial ? 'Only part of the list: the server’s store is away.' : MEMBER_HINTS[room.status] ?? '';
  $('members').dataset.status = room.status;
}

// One timed line at the top of a log list (the room's or the session's), the newest 30 kept.
function logTo(listId, text, kind) {
  const list = $(listId);
  const item = document.createElement('li');
  item.dataset.kind = kind;
  const time = document.createElement('time');
  const now = new Date();
  time.dateTime = now.toISOString();
  time.textContent = timeOf(now);
  item.append(time, ` ${text}`);
  list.prepend(item);
  while (list.children.length > 30) list.lastElementChild.remove();
}

function logRoom(text, kind = 'info') {
  logTo('room-log', text, kind);
}

$('room-name').textContent = roomName;
$('room-label').textContent = roomName;
$('your-name').textContent = me.name;
document.title = `#${roomName} · Presence`;

const room = manager.join(roomName, { name: me.name, client: me.client });
room.addEventListener('change', () => renderMembers(room));
room.addEventListener('join', (event) => {
  const { member } = event.detail;
  logRoom(member.meta?.client === me.client ? `You joined #${roomName}` : `${nameOf(member)} joined`);
});
room.addEventListener('leave', (event) => {
  const { reason } = event.detail;
  const why = reason && reason in LEFT ? LEFT[reason] : reason;
  logRoom(`${nameOf(event.detail.member)} left${why ? ` (${why})` : ''}`, 'warn');
});
room.addEventListener('error', (event) => {
  logRoom(`Could not join #${roomName}: ${event.detail.error?.message ?? event.detail.error}`, 'error');
});
if (requested && requested !== roomName) logActivity(`“${requested}” is not a room name; joined #${roomName}`, 'warn');

function logActivity(text, kind = 'info') {
  logTo('activity', text, kind);
}

function showBanner(text) {
  $('banner-text').textContent = text;
  $('banner').hidden = false;
}

function addMessage(author, text) {
  const item = document.createElement('li');
  item.className = `message ${author === 'you' ? 'mine' : 'theirs'}`;
  const who = document.createElement('span');
  who.className = 'author';
  who.textContent = author === 'you' ? 'You' : 'Presence bot';
  const body = document.createElement('p');
  body.textContent = text;
  item.append(who, body);
  const list = $('messages');
  list.append(item);
  list.scrollTop = list.scrollHeight;
}

const ENDED = {
  deleted: 'it was deleted',
  cleanup: 'it was cleaned up, perhaps from another tab',
  expired: 'it expired',
  not_found: 'the server no longer knows it',
};

manager.addEventListener('statuschange', (event) => {
  if (event.detail.status === 'connected') socketSince = new Date();
  render();
  if (event.detail.status === 'connected') logActivity('WebSocket open');
  if (event.detail.status === 'polling' && event.detail.previous !== 'paused') logActivity('Falling back to HTTP heartbeats', 'warn');
  if (event.detail.status === 'paused') logActivity('Tab hidden: heartbeats paused');
});
manager.addEventListener('sessionchange', () => {
  lastSnapshot = new Date();
  render();
});
manager.addEventListener('session-replaced', (event) => {
  logActivity(`Session ${event.detail.oldId.slice(0, 8)}… was gone; started ${event.detail.newId.slice(0, 8)}…`, 'warn');
});
manager.addEventListener('ended', (event) => {
  const why = ENDED[event.detail.reason] ?? event.detail.reason;
  logActivity(`Session ended: ${why}`, 'warn');
  showBanner(`This session has ended: ${why}.`);
});
manager.addEventListener('error', (event) => {
  const { error, context } = event.detail;
  logActivity(`${context}: ${error?.message ?? error}`, 'error');
  if (manager.status === 'error') showBanner('Could not start a session. Is the server running?');
});

$('back-to-hub').addEventListener('click', async (event) => {
  event.currentTarget.disabled = true;
  await manager.navigateToHub('/hub');
});

$('new-session').addEventListener('click', async () => {
  $('banner').hidden = true;
  const session = await manager.startSession(null);
  if (session) logActivity(`Started session ${session.id.slice(0, 8)}…`);
});

$('composer').addEventListener('submit', (event) => {
  event.preventDefault();
  const input = $('message');
  const text = input.value.trim();
  if (!text) return;
  input.value = '';
  addMessage('you', text);
  // A stand-in reply: the chat itself is local; only the session is real.
  setTimeout(() => {
    const via = manager.transport === 'none' ? 'nothing right now' : `over ${manager.transport === 'websocket' ? 'the WebSocket' : 'HTTP'}`;
    addMessage('bot', `Noted. Your session is kept alive ${via}.`);
  }, 400);
});

addMessage('bot', `Hi! This chat is a mock, but the session behind it and the list of who is in #${roomName} are live: open this page in another browser to see each other; refresh and nothing changes; go back to the hub and the session is cleaned up.`);
render();
renderMembers(room);

const previous = getOrCreateSessionId();
manager.startSession(previous).then((session) => {
  if (!session) return;
  logActivity(previous === session.id ? `Continued session ${session.id.slice(0, 8)}…` : `Started session ${session.id.slice(0, 8)}…`);
});

// For tests and curious developers: the page's manager.
window.presence = manager;
