// Test doubles: an in-memory Presence REST server behind a fake fetch, a fake
// WebSocket whose handshake a test accepts or refuses, and small helpers.

import { vi } from 'vitest';
import { ChatSessionManager } from '../src/chatSessionManager.js';

export const BASE = '/api/v1/chat';

/** Let pending promise chains (fake fetch, response.text()) run to the end. */
export async function flush() {
  for (let i = 0; i < 20; i += 1) await Promise.resolve();
}

/** A Response with just what the manager reads. */
export class FakeResponse {
  constructor(status, body) {
    this.status = status;
    this.ok = status >= 200 && status < 300;
    this.body = body === undefined ? '' : typeof body === 'string' ? body : JSON.stringify(body);
  }

  async text() {
    return this.body;
  }

  async json() {
    return JSON.parse(this.body);
  }
}

let counter = 0;

export function makeSession(overrides = {}) {
  counter += 1;
  const now = new Date().toISOString();
  return {
    // 22 base64url characters, like the server's ids.
    id: `s${String(counter).padStart(4, '0')}`.padEnd(22, 'A'),
    created_at: now,
    last_seen: now,
    expires_at: now,
    transport: 'none',
    state: 'active',
    data: null,
    ...overrides,
  };
}

/**
 * The server contract in memory. `fetch` is a vi.fn; every call is logged in
 * `requests`; `fail()` makes a route answer with an error or a network failure.
 */
export class FakeServer {
  sessions = new Map();
  requests = [];
  #failures = [];

  fetch = vi.fn((url, init = {}) => this.#handle(String(url), init));

  addSession(overrides) {
    const session = makeSession(overrides);
    this.sessions.set(session.id, session);
    return session;
  }

  /** Make `method path` answer `{status, body}` or, with 'network', reject. */
  fail(method, path, answer, { times = Infinity } = {}) {
    this.#failures.push({ method, path, answer, times });
  }

  calls(method, pathPattern) {
    return this.requests.filter((r) => r.method === method && (pathPattern instanceof RegExp ? pathPattern.test(r.path) : r.path === pathPattern));
  }

  heartbeats() {
    return this.calls('POST', /^\/sessions\/[^/]+\/heartbeat$/);
  }

  async #handle(url, init) {
    const method = init.method ?? 'GET';
    const path = url.startsWith(BASE) ? url.slice(BASE.length) : url;
    const body = typeof init.body === 'string' && init.body ? JSON.parse(init.body) : init.body ?? null;
    const request = { method, url, path, body, init };
    this.requests.push(request);

    const failure = this.#failures.find((f) => f.method === method && (f.path instanceof RegExp ? f.path.test(path) : f.path === path) && f.times > 0);
    if (failure) {
      failure.times -= 1;
      if (failure.answer === 'network') throw new TypeError('Failed to fetch');
      return new FakeResponse(failure.answer.status, failure.answer.body);
    }
    return this.#route(method, path, body);
  }

  #route(method, path, body) {
    const notFound = () => new FakeResponse(404, { error: { code: 'session_not_found', message: 'No such session' } });
    if (method === 'POST' && path === '/sessions') {
      const session = this.addSession(body?.data ? { data: body.data } : {});
      return new FakeResponse(201, session);
    }
    if (method === 'GET' && path === '/sessions') {
      return new FakeResponse(200, { sessions: [...this.sessions.values()] });
    }
    if (method === 'POST' && path === '/sessions/cleanup') {
      let ids = [];
      if (body?.type === 'all') ids = [...this.sessions.keys()];
      else if (body?.type === 'specific') ids = (body.session_ids ?? []).filter((id) => this.sessions.has(id));
      for (const id of ids) this.sessions.delete(id);
      return new FakeResponse(200, { deleted: ids.length, session_ids: ids });
    }
    let match = /^\/sessions\/([^/]+)\/heartbeat$/.exec(path);
    if (method === 'POST' && match) {
      const session = this.sessions.get(decodeURIComponent(match[1]));
      if (!session) return notFound();
      session.last_seen = new Date().toISOString();
      session.transport = 'http';
      return new FakeResponse(200, session);
    }
    match = /^\/sessions\/([^/]+)$/.exec(path);
    if (match) {
      const id = decodeURIComponent(match[1]);
      if (!this.sessions.has(id)) return notFound();
      if (method === 'GET') return new FakeResponse(200, this.sessions.get(id));
      if (method === 'DELETE') {
        this.sessions.delete(id);
        return new FakeResponse(204);
      }
    }
    return new FakeResponse(405, { error: { code: 'method_not_allowed', message: `${method} ${path}` } });
  }
}

function closeEvent(code, wasClean) {
  return Object.assign(new Event('close'), { code, reason: '', wasClean });
}

/** A WebSocket whose server side the test plays. */
export class FakeWebSocket extends EventTarget {
  static CONNECTING = 0;
  static OPEN = 1;
  static CLOSING = 2;
  static CLOSED = 3;

  readyState = FakeWebSocket.CONNECTING;
  /** Messages the client sent, parsed. */
  sent = [];
  /** The arguments of the client's close() call, or null. */
  closedWith = null;

  constructor(url) {
    super();
    this.url = url;
  }

  /** Complete the handshake. */
  accept() {
    this.readyState = FakeWebSocket.OPEN;
    this.dispatchEvent(new Event('open'));
  }

  /** Refuse the handshake, as the server does for an unknown session: no open, close 1006. */
  refuse() {
    this.readyState = FakeWebSocket.CLOSED;
    this.dispatchEvent(new Event('error'));
    this.dispatchEvent(closeEvent(1006, false));
  }

  /** The server sends a JSON message. */
  receive(message) {
    this.dispatchEvent(new MessageEvent('message', { data: typeof message === 'string' ? message : JSON.stringify(message) }));
  }

  /** The connection goes away from the server's side. */
  drop(code = 1006) {
    this.readyState = FakeWebSocket.CLOSED;
    this.dispatchEvent(closeEvent(code, code === 1000));
  }

  send(data) {
    if (this.readyState !== FakeWebSocket.OPEN) throw new DOMException('Still in CONNECTING state.', 'InvalidStateError');
    this.sent.push(JSON.parse(data));
  }

  close(code, reason) {
    this.closedWith = { code, reason };
    if (this.readyState >= FakeWebSocket.CLOSING) return;
    this.readyState = FakeWebSocket.CLOSING;
    // Browsers report the close asynchronously.
    queueMicrotask(() => {
      this.readyState = FakeWebSocket.CLOSED;
      this.dispatchEvent(closeEvent(code ?? 1005, true));
    });
  }
}

/**
 * Hands out FakeWebSockets. `behaviour` decides each new handshake on the next
 * microtask: 'accept', 'refuse', or 'manual' (the test calls accept()/refuse()).
 */
export class FakeSocketServer {
  sockets = [];

  constructor(behaviour = 'accept') {
    this.behaviour = behaviour;
  }

  create = vi.fn((url) => {
    const socket = new FakeWebSocket(url);
    this.sockets.push(socket);
    const behaviour = this.behaviour;
    queueMicrotask(() => {
      if (socket.readyState !== FakeWebSocket.CONNECTING) return;
      if (behaviour === 'accept') socket.accept();
      else if (behaviour === 'refuse') socket.refuse();
    });
    return socket;
  });

  get last() {
    return this.sockets.at(-1) ?? null;
  }

  /** Sockets the client still holds open or opening. */
  get live() {
    return this.sockets.filter((s) => s.readyState <= FakeWebSocket.OPEN);
  }
}

/** sessionStorage stand-in. */
export class MemoryStorage {
  #items = new Map();

  getItem(key) {
    return this.#items.has(key) ? this.#items.get(key) : null;
  }

  setItem(key, value) {
    this.#items.set(key, String(value));
  }

  removeItem(key) {
    this.#items.delete(key);
  }
}

/** Pretend the tab was hidden or shown, as the browser would report it. */
export function setVisibility(state) {
  Object.defineProperty(document, 'visibilityState', { configurable: true, get: () => state });
  Object.defineProperty(document, 'hidden', { configurable: true, get: () => state === 'hidden' });
  document.dispatchEvent(new Event('visibilitychange'));
}

export function resetVisibility() {
  delete document.visibilityState;
  delete document.hidden;
}

/** Record every event a manager dispatches, in order. */
export function recordEvents(manager, types = ['statuschange', 'sessionchange', 'session-replaced', 'ended', 'error']) {
  const events = [];
  for (const type of types) manager.addEventListener(type, (event) => events.push({ type, detail: event.detail }));
  events.of = (type) => events.filter((e) => e.type === type);
  return events;
}

/** A manager wired to fakes, plus the fakes. */
export function setup({ sockets = 'accept', options = {} } = {}) {
  const server = new FakeServer();
  const socketServer = new FakeSocketServer(sockets);
  const storage = new MemoryStorage();
  const navigate = vi.fn();
  const sendBeacon = vi.fn(() => true);
  const manager = new ChatSessionManager(BASE, {
    fetch: server.fetch,
    webSocketFactory: socketServer.create,
    storage,
    navigate,
    sendBeacon,
    random: () => 0.5,
    ...options,
  });
  const events = recordEvents(manager);
  return { server, sockets: socketServer, storage, navigate, sendBeacon, manager, events };
}
