// The /chat demo page: one ChatSessionManager, a live panel, a local mock chat.

import { ChatSessionManager, getOrCreateSessionId } from '/static/src/index.js';

const manager = new ChatSessionManager('/api/v1/chat');
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

function render() {
  $('session-id').textContent = manager.sessionId ?? '—';
  setPill($('status'), manager.status);
  setPill($('transport'), manager.transport);
  // An ended session has no state left, whatever its last snapshot said.
  setPill($('state'), manager.status === 'ended' ? '' : manager.state ?? '');
  const keepalive = $('last-keepalive');
  if (manager.lastKeepalive) {
    keepalive.textContent = timeOf(manager.lastKeepalive);
    keepalive.dateTime = manager.lastKeepalive.toISOString();
  } else {
    keepalive.textContent = '—';
    keepalive.removeAttribute('datetime');
  }
  $('transport-hint').textContent = HINTS[manager.status] ?? '';
}

function logActivity(text, kind = 'info') {
  const item = document.createElement('li');
  item.dataset.kind = kind;
  const time = document.createElement('time');
  const now = new Date();
  time.dateTime = now.toISOString();
  time.textContent = timeOf(now);
  item.append(time, ` ${text}`);
  $('activity').prepend(item);
  while ($('activity').children.length > 30) $('activity').lastElementChild.remove();
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
  render();
  if (event.detail.status === 'connected') logActivity('WebSocket open');
  if (event.detail.status === 'polling' && event.detail.previous !== 'paused') logActivity('Falling back to HTTP heartbeats', 'warn');
  if (event.detail.status === 'paused') logActivity('Tab hidden: heartbeats paused');
});
manager.addEventListener('sessionchange', render);
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

addMessage('bot', 'Hi! This chat is a mock, but the session behind it is live: refresh the page and it continues; go back to the hub and it is cleaned up.');
render();

const previous = getOrCreateSessionId();
manager.startSession(previous).then((session) => {
  if (!session) return;
  logActivity(previous === session.id ? `Continued session ${session.id.slice(0, 8)}…` : `Started session ${session.id.slice(0, 8)}…`);
});

// For tests and curious developers: the page's manager.
window.presence = manager;
