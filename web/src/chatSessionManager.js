// ChatSessionManager: keeps one Presence chat session alive from a browser tab.
//
// WebSocket first: while the socket is open the server's ping frames keep the
// session alive (the browser answers them itself), so no HTTP request is made.
// When the socket cannot open or drops, the manager falls back to
// `POST .../heartbeat` every `heartbeatIntervalMs` and keeps retrying the
// socket with capped exponential backoff and full jitter.
//
// Plain ES module, no build step. Every failure becomes an `error` event and a
// status; nothing here throws into the page.
//
// Presence (join, leave, update, watch) lives in presenceRoom.js; the manager
// only carries its messages and tells it when the transport changes.

import { PresenceRooms } from './presenceRoom.js';

export const DEFAULT_BASE_URL = '/api/v1/chat';
export const DEFAULT_STORAGE_KEY = 'presence.sessionId';
export const DEFAULT_HEARTBEAT_INTERVAL_MS = 30_000;
export const DEFAULT_BACKOFF = Object.freeze({ baseMs: 500, capMs: 30_000, stableMs: 10_000 });

// WebSocket readyState values; named here because injected fakes may not carry
// the static constants.
const SOCKET_CONNECTING = 0;
const SOCKET_OPEN = 1;
// RFC 6455 close codes.
const CLOSE_NORMAL = 1000;

const ACTIVE_STATUSES = new Set(['connecting', 'connected', 'polling', 'paused']);
const CLEANUP_TYPES = new Set(['all', 'inactive', 'specific']);

/**
 * A failed request or a server-reported problem.
 *
 * `status` is the HTTP status (or null), `code` the server's error code from
 * `{"error": {"code", "message"}}` (or null).
 */
export class PresenceError extends Error {
  constructor(message, { status = null, code = null, cause } = {}) {
    super(message, cause === undefined ? undefined : { cause });
    this.name = 'PresenceError';
    this.status = status;
    this.code = code;
  }
}

/**
 * Delay before reconnect attempt `attempt` (0-based): "full jitter", a uniform
 * draw in [0, min(capMs, baseMs * 2 ** attempt)), so clients that lost the same
 * server at the same moment do not all come back at the same moment.
 */
export function backoffDelay(attempt, { baseMs = DEFAULT_BACKOFF.baseMs, capMs = DEFAULT_BACKOFF.capMs } = {}, random = Math.random) {
  const exponent = Math.max(0, Math.floor(Number(attempt) || 0));
  // 2 ** 1100 is Infinity, which min() turns into the cap: no overflow to guard.
  const ceiling = Math.min(capMs, baseMs * 2 ** exponent);
  return random() * ceiling;
}

function defaultStorage() {
  // Reading sessionStorage throws a SecurityError in sandboxed iframes and
  // with storage disabled; such a page simply gets a new session each load.
  try {
    return globalThis.sessionStorage ?? null;
  } catch {
    return null;
  }
}

/**
 * The session id this tab keeps in sessionStorage, or null when it has none.
 *
 * sessionStorage is per tab and survives a refresh, so a refresh continues the
 * same session and a new tab gets its own. Pass the result to
 * `startSession()`: null makes it create a session, and the manager stores the
 * id it ends up with.
 */
export function getOrCreateSessionId(storage = defaultStorage(), key = DEFAULT_STORAGE_KEY) {
  try {
    return storage?.getItem(key) || null;
  } catch {
    return null;
  }
}

function presenceUrlFor(baseUrl) {
  // '/api/v1/chat' -> '/api/v1/presence', for an absolute base too.
  return /\/chat$/.test(baseUrl) ? baseUrl.replace(/\/chat$/, '/presence') : `${baseUrl}/../presence`;
}

function hasDocument() {
  return typeof globalThis.document !== 'undefined' && globalThis.document !== null;
}

function isHidden() {
  return hasDocument() && globalThis.document.visibilityState === 'hidden';
}

function serverError(status, data, fallback) {
  const error = data && typeof data === 'object' ? data.error : null;
  return new PresenceError(error?.message || `${fallback} (HTTP ${status})`, {
    status,
    code: error?.code ?? null,
  });
}

export class ChatSessionManager extends EventTarget {
  /** Milliseconds between REST heartbeats while the socket is down. */
  heartbeatIntervalMs = DEFAULT_HEARTBEAT_INTERVAL_MS;

  #baseUrl;
  #fetchImpl;
  #webSocketFactory;
  #storage;
  #storageKey;
  #navigate;
  #random;
  #backoff;
  #tokenFn;
  #sendBeacon;

  #status = 'idle';
  #sessionId = null;
  #session = null;
  #lastKeepalive = null;

  // Bumped by every start, stop and end: async work that finds a different
  // value when it resumes belongs to a run that is over and does nothing.
  #generation = 0;
  #socket = null;
  #socketListeners = [];
  #socketOpenedAt = null;
  #attempt = 0;
  #heartbeatTimer = null;
  #reconnectTimer = null;
  #heartbeatInFlight = false;
  #pageListeners = [];
  #lastToken = null;
  #presence;
  #presenceUrl;
  #shareConnection;

  /**
   * @param {string} [baseUrl] REST base, a path or an absolute http(s) URL.
   * @param {object} [options] Injection points; see chatSessionManager.d.ts.
   */
  constructor(baseUrl = DEFAULT_BASE_URL, options = {}) {
    super();
    this.#baseUrl = String(baseUrl ?? DEFAULT_BASE_URL).replace(/\/+$/, '');
    this.#fetchImpl = options.fetch ?? null;
    this.#webSocketFactory = options.webSocketFactory ?? null;
    this.#storage = 'storage' in options ? options.storage : defaultStorage();
    this.#storageKey = options.storageKey ?? DEFAULT_STORAGE_KEY;
    this.#navigate = options.navigate ?? null;
    this.#random = options.random ?? Math.random;
    this.#backoff = { ...DEFAULT_BACKOFF, ...options.backoff };
    this.#tokenFn = options.token ?? null;
    this.#sendBeacon = options.sendBeacon ?? null;
    if (options.heartbeatIntervalMs !== undefined) this.heartbeatIntervalMs = options.heartbeatIntervalMs;
    this.#shareConnection = Boolean(options.shareConnection);
    this.#presenceUrl = String(options.presenceUrl ?? presenceUrlFor(this.#baseUrl)).replace(/\/+$/, '');
    this.#presence = new PresenceRooms({
      send: (message) => this.#send(message),
      request: (method, url, body) => this.#request(method, null, { url, body }),
      sessionId: () => this.#sessionId,
      status: () => this.#status,
      intervalMs: () => this.#presenceIntervalMs(),
      chatUrl: this.#baseUrl,
      presenceUrl: this.#presenceUrl,
      report: (error, context) => this.#report(error, context),
    });
    this.addEventListener('statuschange', (event) => this.#presence.statusChanged(event.detail.status));
  }

  /** Whether this manager was asked to share one socket among the origin's tabs. */
  get shareConnection() {
    return this.#shareConnection;
  }

  /** The presence REST base (`/api/v1/presence` beside `/api/v1/chat`). */
  get presenceUrl() {
    return this.#presenceUrl;
  }

  // --- presence --------------------------------------------------------------

  /**
   * Be present in `room` with `meta` (again with a new meta: an update), for
   * as long as this tab keeps the session, across reconnects and REST.
   *
   * @returns {PresenceRoom} The room, its members kept live.
   * @throws {TypeError} For a name the server would refuse.
   */
  join(room, meta = null) {
    return this.#presence.join(room, meta);
  }

  /** Leave `room` (watching it stops too, unless `watch()` holds it). */
  leave(room) {
    return this.#presence.leave(room);
  }

  /** Set this tab's meta in a room it joined; false (and an `error` event) otherwise. */
  update(room, meta) {
    return this.#presence.update(room, meta);
  }

  /**
   * See `room`'s members without being in it. Each call holds the room until
   * a matching `unwatch()`.
   *
   * @returns {PresenceRoom}
   */
  watch(room) {
    return this.#presence.watch(room);
  }

  unwatch(room) {
    return this.#presence.unwatch(room);
  }

  /** The room object of a room joined or watched, or null. */
  room(room) {
    return this.#presence.get(room);
  }

  #presenceIntervalMs() {
    // The server's HEARTBEAT_INTERVAL, when its snapshot says it, bounds the
    // rhythm: a REST member is present only while it comes within twice that.
    const server = Number(this.#session?.heartbeat_interval) * 1000;
    return server > 0 ? Math.min(this.heartbeatIntervalMs, server) : this.heartbeatIntervalMs;
  }

  /** The REST base URL, without a trailing slash. */
  get baseUrl() {
    return this.#baseUrl;
  }

  /** 'idle' | 'connecting' | 'connected' | 'polling' | 'paused' | 'ended' | 'error' */
  get status() {
    return this.#status;
  }

  /** True from startSession() until stopSession(), an end or a fatal error. */
  get isSessionActive() {
    return ACTIVE_STATUSES.has(this.#status);
  }

  get sessionId() {
    return this.#sessionId;
  }

  /** How this tab keeps the session alive right now. */
  get transport() {
    if (this.#status === 'connected') return 'websocket';
    if (this.#status === 'polling' || this.#status === 'paused') return 'http';
    return 'none';
  }

  /** The server's view of the session: 'active' | 'away' | 'disconnected', or null. */
  get state() {
    return this.#session?.state ?? null;
  }

  /** When the server last confirmed the session (socket open or message, heartbeat reply). */
  get lastKeepalive() {
    return this.#lastKeepalive;
  }

  /** The last session object the server sent. */
  get session() {
    return this.#session;
  }

  /**
   * Continue session `id`, or create one when `id` is empty or unknown to the
   * server (then a `session-replaced` event tells the page), and keep it alive.
   *
   * @returns {Promise<object|null>} The session, or null if starting failed
   *   (an `error` event says why) or was superseded by a stop or another start.
   */
  async startSession(id) {
    if (id && id === this.#sessionId && this.isSessionActive) return this.#session;
    this.#teardown();
    const generation = this.#generation;
    this.#session = null;
    this.#sessionId = null;
    this.#lastKeepalive = null;
    this.#attempt = 0;
    this.#setStatus('connecting');
    this.#listenToPage();
    try {
      let session = null;
      if (id) {
        const response = await this.#request('GET', `/sessions/${encodeURIComponent(id)}`);
        if (generation !== this.#generation) return null;
        if (response.ok) session = response.data;
        else if (response.status !== 404) throw serverError(response.status, response.data, 'Could not load the session');
      }
      const replaced = Boolean(id) && session === null;
      if (session === null) {
        const response = await this.#request('POST', '/sessions', { body: {} });
        if (generation !== this.#generation) return null;
        if (!response.ok) throw serverError(response.status, response.data, 'Could not create a session');
        session = response.data;
      }
      if (!session || typeof session.id !== 'string') throw new PresenceError('The server sent no session');
      this.#sessionId = session.id;
      this.#remember(session.id);
      this.#adopt(session);
      if (replaced) this.#emit('session-replaced', { oldId: id, newId: session.id });
      // A listener may have stopped us in reaction to an event above.
      if (generation !== this.#generation) return null;
      this.#connect();
      return session;
    } catch (error) {
      if (generation !== this.#generation) return null;
      this.#fail(error, 'startSession');
      return null;
    }
  }

  /**
   * Stop keeping the session alive: close the socket, clear every timer and
   * listener. The session stays on the server (it expires by its TTL).
   */
  stopSession() {
    this.#teardown();
    this.#setStatus('idle');
  }

  /**
   * Clean up all of this user's sessions, stop, then go to `url`. Navigates
   * even if the cleanup fails, after an `error` event.
   */
  async navigateToHub(url = '/hub') {
    let failure = null;
    try {
      // keepalive: the request must outlive this page, which is about to go.
      const response = await this.#request('POST', '/sessions/cleanup', { body: { type: 'all' }, keepalive: true });
      if (!response.ok) failure = serverError(response.status, response.data, 'Session cleanup failed');
      else this.#forget(this.#sessionId);
    } catch (error) {
      failure = error;
    }
    this.stopSession();
    if (failure) this.#report(failure, 'navigateToHub');
    try {
      (this.#navigate ?? ((target) => globalThis.location.assign(target)))(url);
    } catch (error) {
      this.#report(error, 'navigate');
    }
  }

  /**
   * Delete sessions on the server: 'all' of this user's, the 'inactive' ones,
   * or the 'specific' ids given. Ends this manager if its session is deleted.
   *
   * @returns {Promise<{deleted: number, session_ids: string[]}|null>} The
   *   server's answer, or null after an `error` event.
   */
  async cleanupSessions(type, ids) {
    if (!CLEANUP_TYPES.has(type)) {
      this.#report(new PresenceError(`Unknown cleanup type: ${type}`), 'cleanupSessions');
      return null;
    }
    const body = { type };
    if (type === 'specific') body.session_ids = Array.from(ids ?? []);
    try {
      const response = await this.#request('POST', '/sessions/cleanup', { body });
      if (!response.ok) throw serverError(response.status, response.data, 'Session cleanup failed');
      const result = response.data ?? { deleted: 0, session_ids: [] };
      if (this.#sessionId && Array.isArray(result.session_ids) && result.session_ids.includes(this.#sessionId)) {
        this.#forget(this.#sessionId);
        this.#end('cleanup');
      }
      return result;
    } catch (error) {
      this.#report(error, 'cleanupSessions');
      return null;
    }
  }

  /**
   * This user's sessions, as the hub lists them.
   *
   * @returns {Promise<object[]|null>} The sessions, or null after an `error` event.
   */
  async listSessions() {
    try {
      const response = await this.#request('GET', '/sessions');
      if (!response.ok) throw serverError(response.status, response.data, 'Could not list sessions');
      return Array.isArray(response.data?.sessions) ? response.data.sessions : [];
    } catch (error) {
      this.#report(error, 'listSessions');
      return null;
    }
  }

  // --- transport -------------------------------------------------------------

  async #connect() {
    this.#closeSocket();
    const generation = this.#generation;
    let socket;
    try {
      const url = await this.#socketUrl();
      if (generation !== this.#generation) return;
      socket = (this.#webSocketFactory ?? ((target) => new WebSocket(target)))(url);
    } catch (error) {
      if (generation !== this.#generation) return;
      this.#report(error, 'websocket');
      this.#onSocketLost();
      return;
    }
    this.#socket = socket;
    this.#socketOpenedAt = null;
    const on = (type, handler) => {
      const listener = (event) => {
        if (socket === this.#socket) handler(event);
      };
      socket.addEventListener(type, listener);
      this.#socketListeners.push([socket, type, listener]);
    };
    on('open', () => this.#onSocketOpen());
    on('message', (event) => this.#onSocketMessage(event));
    on('close', () => this.#onSocketClose());
    // 'error' carries no detail in browsers and is always followed by 'close'.
  }

  async #socketUrl() {
    const path = `${this.#baseUrl}/sessions/${encodeURIComponent(this.#sessionId)}/ws`;
    const url = new URL(path, globalThis.location?.href);
    if (url.protocol === 'https:') url.protocol = 'wss:';
    else if (url.protocol === 'http:') url.protocol = 'ws:';
    const token = await this.#currentToken();
    // Browsers cannot set headers on a WebSocket handshake: the query is the
    // only way to carry a bearer token there.
    if (token) url.searchParams.set('token', token);
    return url.href;
  }

  #onSocketOpen() {
    this.#socketOpenedAt = Date.now();
    this.#stopPolling();
    this.#lastKeepalive = new Date();
    this.#setStatus('connected');
    if (isHidden()) this.#send({ type: 'visibility', state: 'hidden' });
  }

  #onSocketMessage(event) {
    let message;
    try {
      message = JSON.parse(event.data);
    } catch (error) {
      this.#report(new PresenceError('The server sent a message that is not JSON', { cause: error }), 'websocket');
      return;
    }
    this.#lastKeepalive = new Date();
    switch (message?.type) {
      case 'snapshot':
        if (message.session) this.#adopt(message.session);
        break;
      case 'ended':
        this.#forget(this.#sessionId);
        this.#end(message.reason ?? 'ended');
        break;
      case 'error':
        if (message.room) this.#presence.receive(message);
        this.#report(new PresenceError(message.message ?? 'The server rejected a message', { code: message.code ?? null }), 'websocket');
        break;
      case 'presence.sync':
      case 'presence.diff':
        this.#presence.receive(message);
        break;
      default:
        // Unknown types are ignored so that a newer server can add some.
        break;
    }
  }

  #onSocketClose() {
    const openedAt = this.#socketOpenedAt;
    this.#dropSocket();
    // A socket that stayed up a while means the server is healthy again; one
    // that drops right after opening must not reset the backoff, or a flapping
    // server would be hit at full rate.
    if (openedAt !== null && Date.now() - openedAt >= this.#backoff.stableMs) this.#attempt = 0;
    if (!this.isSessionActive) return;
    // Any close we did not ask for (1006 for a refused handshake, 1001 for a
    // server going away, ...) means the same thing here: fall back and retry.
    this.#onSocketLost();
  }

  #onSocketLost() {
    const wasPolling = this.#status === 'polling' || this.#status === 'paused';
    if (isHidden()) {
      this.#setStatus('paused');
      return;
    }
    this.#setStatus('polling');
    if (!wasPolling) {
      // A refused handshake looks the same as a server that is down; only a
      // REST heartbeat can tell that the session itself is gone (404).
      this.#heartbeat();
      this.#startHeartbeatTimer();
    }
    this.#scheduleReconnect();
  }

  #scheduleReconnect() {
    this.#clearReconnect();
    const delay = backoffDelay(this.#attempt, this.#backoff, this.#random);
    this.#attempt += 1;
    this.#reconnectTimer = setTimeout(() => {
      this.#reconnectTimer = null;
      // A handshake may still be pending from before the tab was hidden.
      if (this.#status === 'polling' && this.#socket === null) this.#connect();
    }, delay);
  }

  #send(message) {
    const socket = this.#socket;
    if (!socket || socket.readyState !== SOCKET_OPEN) return false;
    try {
      socket.send(JSON.stringify(message));
      return true;
    } catch (error) {
      this.#report(error, 'websocket');
      return false;
    }
  }

  #dropSocket() {
    for (const [target, type, listener] of this.#socketListeners) target.removeEventListener(type, listener);
    this.#socketListeners = [];
    this.#socket = null;
    this.#socketOpenedAt = null;
  }

  #closeSocket() {
    const socket = this.#socket;
    this.#dropSocket();
    if (socket && (socket.readyState === SOCKET_CONNECTING || socket.readyState === SOCKET_OPEN)) {
      try {
        socket.close(CLOSE_NORMAL);
      } catch {
        // Already closing; nothing left to release.
      }
    }
  }

  // --- REST heartbeat --------------------------------------------------------

  #startHeartbeatTimer() {
    this.#clearHeartbeatTimer();
    this.#heartbeatTimer = setInterval(() => this.#heartbeat(), this.heartbeatIntervalMs);
  }

  async #heartbeat() {
    if (this.#heartbeatInFlight || !this.#sessionId) return;
    const generation = this.#generation;
    this.#heartbeatInFlight = true;
    try {
      const response = await this.#request('POST', `/sessions/${encodeURIComponent(this.#sessionId)}/heartbeat`);
      if (generation !== this.#generation) return;
      if (response.status === 404) {
        this.#forget(this.#sessionId);
        this.#end('not_found');
      } else if (!response.ok) {
        this.#report(serverError(response.status, response.data, 'Heartbeat failed'), 'heartbeat');
      } else {
        this.#lastKeepalive = new Date();
        if (response.data) this.#adopt(response.data);
      }
    } catch (error) {
      if (generation === this.#generation) this.#report(error, 'heartbeat');
    } finally {
      if (generation === this.#generation) this.#heartbeatInFlight = false;
    }
  }

  #stopPolling() {
    this.#clearHeartbeatTimer();
    this.#clearReconnect();
  }

  #clearHeartbeatTimer() {
    if (this.#heartbeatTimer !== null) clearInterval(this.#heartbeatTimer);
    this.#heartbeatTimer = null;
  }

  #clearReconnect() {
    if (this.#reconnectTimer !== null) clearTimeout(this.#reconnectTimer);
    this.#reconnectTimer = null;
  }

  // --- page events -----------------------------------------------------------

  #listenToPage() {
    this.#unlistenToPage();
    if (hasDocument()) this.#pageListen(globalThis.document, 'visibilitychange', () => this.#onVisibilityChange());
    if (typeof globalThis.addEventListener === 'function') this.#pageListen(globalThis, 'pagehide', () => this.#onPageHide());
  }

  #pageListen(target, type, listener) {
    target.addEventListener(type, listener);
    this.#pageListeners.push([target, type, listener]);
  }

  #unlistenToPage() {
    for (const [target, type, listener] of this.#pageListeners) target.removeEventListener(type, listener);
    this.#pageListeners = [];
  }

  #onVisibilityChange() {
    const hidden = isHidden();
    if (this.#status === 'connected') {
      // The server marks the session away; the socket itself stays open.
      this.#send({ type: 'visibility', state: hidden ? 'hidden' : 'visible' });
    } else if (hidden && this.#status === 'polling') {
      this.#stopPolling();
      this.#setStatus('paused');
    } else if (!hidden && this.#status === 'paused') {
      this.#setStatus('polling');
      this.#heartbeat();
      this.#startHeartbeatTimer();
      this.#scheduleReconnect();
    }
  }

  #onPageHide() {
    // Only 'inactive': a refresh fires pagehide too, and the current session
    // must survive it. text/plain keeps the beacon a CORS-simple request.
    const url = `${this.#baseUrl}/sessions/cleanup`;
    const body = new Blob([JSON.stringify({ type: 'inactive' })], { type: 'text/plain' });
    try {
      if (this.#tokenFn) {
        // A beacon cannot carry an Authorization header; a keepalive fetch can.
        // The token must be at hand synchronously: the page is going away.
        this.#fetch(url, {
          method: 'POST',
          body,
          keepalive: true,
          credentials: 'same-origin',
          headers: this.#lastToken ? { Authorization: `Bearer ${this.#lastToken}` } : {},
        }).catch(() => {});
        return;
      }
      const beacon = this.#sendBeacon ?? globalThis.navigator?.sendBeacon?.bind(globalThis.navigator);
      if (beacon) beacon(url, body);
      else this.#fetch(url, { method: 'POST', body, keepalive: true, credentials: 'same-origin' }).catch(() => {});
    } catch (error) {
      this.#report(error, 'pagehide');
    }
  }

  // --- state -----------------------------------------------------------------

  #adopt(session) {
    this.#session = session;
    this.#lastKeepalive = new Date();
    this.#emit('sessionchange', { session });
  }

  #remember(id) {
    try {
      this.#storage?.setItem(this.#storageKey, id);
    } catch {
      // Storage full or disabled: the session simply won't survive a refresh.
    }
  }

  #forget(id) {
    try {
      if (id && this.#storage?.getItem(this.#storageKey) === id) this.#storage.removeItem(this.#storageKey);
    } catch {
      // As in #remember.
    }
  }

  #teardown() {
    this.#generation += 1;
    this.#heartbeatInFlight = false;
    this.#stopPolling();
    this.#closeSocket();
    this.#unlistenToPage();
  }

  #end(reason) {
    if (!this.isSessionActive) return;
    this.#teardown();
    this.#setStatus('ended');
    this.#emit('ended', { reason, sessionId: this.#sessionId });
  }

  #fail(error, context) {
    this.#teardown();
    this.#setStatus('error');
    this.#report(error, context);
  }

  #report(error, context) {
    this.#emit('error', { error, context });
  }

  #setStatus(status) {
    if (status === this.#status) return;
    const previous = this.#status;
    this.#status = status;
    this.#emit('statuschange', { status, previous });
  }

  #emit(type, detail) {
    this.dispatchEvent(new CustomEvent(type, { detail }));
  }

  // --- HTTP edge -------------------------------------------------------------

  #fetch(url, init) {
    return (this.#fetchImpl ?? globalThis.fetch.bind(globalThis))(url, init);
  }

  async #currentToken() {
    if (!this.#tokenFn) return null;
    this.#lastToken = (await this.#tokenFn()) || null;
    return this.#lastToken;
  }

  async #request(method, path, { body, keepalive = false, url = null } = {}) {
    const headers = { Accept: 'application/json' };
    const init = { method, headers, credentials: 'same-origin' };
    if (body !== undefined) {
      headers['Content-Type'] = 'application/json';
      init.body = JSON.stringify(body);
    }
    if (keepalive) init.keepalive = true;
    const token = await this.#currentToken();
    if (token) headers.Authorization = `Bearer ${token}`;
    const response = await this.#fetch(url ?? `${this.#baseUrl}${path}`, init);
    const text = await response.text();
    let data = null;
    if (text) {
      try {
        data = JSON.parse(text);
      } catch (error) {
        // A proxy's HTML error page is expected on a failure; not on success.
        if (response.ok) throw new PresenceError('The server sent a response that is not JSON', { status: response.status, cause: error });
      }
    }
    return { status: response.status, ok: response.ok, data };
  }
}

export default ChatSessionManager;
