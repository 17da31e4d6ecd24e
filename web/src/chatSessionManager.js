// ChatSessionManager: keeps one Presence chat session alive from a browser tab.
//
// WebSocket first: while the socket is open the server's ping frames keep the
// session alive (the browser answers them itself), so no HTTP request is made.
// When the socket cannot open or drops, the manager falls back to
// `POST .../heartbeat` every `heartbeatIntervalMs` and keeps retrying the
// socket with capped exponential backoff and full jitter.
//
// With `shareConnection: true`, the tabs of one origin share one WebSocket
// (see sharedSocket.js); a browser without Web Locks or BroadcastChannel gets
// one socket per tab, as without the option.
//
// Plain ES module, no build step. Every failure becomes an `error` event and a
// status; nothing here throws into the page.
//
// Presence (join, leave, update, watch) lives in presenceRoom.js; the manager
// only carries its messages and tells it when the transport changes.

import { PresenceRooms } from './presenceRoom.js';

import { CLOSE_HANDOVER, sharedSocketFor, sharedSocketSupported } from './sharedSocket.js';

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

// Answers to GET /sessions/{id} that mean "no such session for you": create one.
// 401: no identity yet (a first visit in development mode) or one the server no
// longer knows; 404: unknown or expired; 400/422: not an id at all.
const REPLACE_ON = new Set([400, 401, 404, 422]);
const CREDENTIALS = new Set(['same-origin', 'include', 'omit']);

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
  #credentials;
  #share;

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
  #heartbeatTimerMs = null;
  #awayPending = false;
  #reconnectTimer = null;
  #heartbeatInFlight = false;
  #pageListeners = [];
  #lastToken = null;
  // The start whose request is in flight: { id, result, generation }.
  #inflight = null;
  // Set by a 401 on a heartbeat, cleared by the next keepalive that works.
  #identityLost = false;
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
    // 'include' sends the cookies to an API on another origin (which must allow
    // this origin with credentials, as PRESENCE_ALLOWED_ORIGINS does).
    this.#credentials = CREDENTIALS.has(options.credentials) ? options.credentials : 'same-origin';
    this.#share = null;
    const share = options.shareConnection;
    if (share) {
      const shareOptions = typeof share === 'object' ? share : {};
      const env = {
        navigator: { locks: shareOptions.locks ?? globalThis.navigator?.locks },
        BroadcastChannel: shareOptions.BroadcastChannel ?? globalThis.BroadcastChannel,
      };
      // Without either, each tab keeps its own socket: sharing is an optimisation.
      if (sharedSocketSupported(env)) {
        this.#share = {
          name: shareOptions.name,
          locks: env.navigator.locks,
          BroadcastChannel: env.BroadcastChannel,
          openTimeoutMs: shareOptions.openTimeoutMs,
        };
      }
    }
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
    return this.effectiveHeartbeatIntervalMs;
  }

  /** True when this manager's socket is the one its browser's tabs share. */
  get sharesConnection() {
    return this.#share !== null;
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
    const requested = id || null;
    // A start for the same id still in flight, left by a stop (React
    // StrictMode mounts, unmounts and mounts again at once): take its answer
    // over rather than ask again, so no second session is made.
    const inflight = this.#inflight?.id === requested ? this.#inflight : null;
    this.#teardown();
    const generation = this.#generation;
    this.#session = null;
    this.#sessionId = null;
    this.#lastKeepalive = null;
    this.#attempt = 0;
    this.#setStatus('connecting');
    this.#listenToPage();
    const found = inflight ?? { id: requested, result: this.#find(requested) };
    found.generation = generation;
    this.#inflight = found;
    try {
      const { session, reason, created } = await found.result;
      if (generation !== this.#generation) {
        if (found.generation !== this.#generation) {
          // Nobody took it over: a session made for a start that was stopped
          // would stay on the server, alive for its TTL, for no tab.
          if (this.#inflight === found) this.#inflight = null;
          if (created) this.#discard(session.id);
        }
        return null;
      }
      this.#inflight = null;
      return this.#begin(session, requested && session.id !== requested ? { oldId: requested, reason } : null, generation);
    } catch (error) {
      if (this.#inflight === found && found.generation === generation) this.#inflight = null;
      if (generation !== this.#generation) return null;
      this.#fail(error, 'startSession');
      return null;
    }
  }

  // The session `id` names, or a new one when the server has none for us.
  async #find(id) {
    if (id) {
      const response = await this.#request('GET', `/sessions/${encodeURIComponent(id)}`);
      if (response.ok) {
        if (!response.data || typeof response.data.id !== 'string') throw new PresenceError('The server sent no session');
        return { session: response.data, reason: null, created: false };
      }
      if (!REPLACE_ON.has(response.status)) throw serverError(response.status, response.data, 'Could not load the session');
      const reason = response.status === 401 ? 'unauthorized' : 'not_found';
      return { session: await this.#create(), reason, created: true };
    }
    return { session: await this.#create(), reason: null, created: true };
  }

  async #create() {
    // In development mode this POST is also what hands a first-time browser its
    // identity cookie.
    const response = await this.#request('POST', '/sessions', { body: {} });
    if (!response.ok) throw serverError(response.status, response.data, 'Could not create a session');
    const session = response.data;
    if (!session || typeof session.id !== 'string') throw new PresenceError('The server sent no session');
    return session;
  }

  #discard(id) {
    this.#forget(id);
    this.#request('DELETE', `/sessions/${encodeURIComponent(id)}`, { keepalive: true }).catch(() => {});
  }

  // Takes `session` as this tab's, says so if it replaced another, and connects.
  #begin(session, replaced, generation) {
    this.#sessionId = session.id;
    this.#remember(session.id);
    this.#adopt(session);
    if (replaced) this.#emit('session-replaced', { oldId: replaced.oldId, newId: session.id, reason: replaced.reason });
    // A listener may have stopped us in reaction to an event above.
    if (generation !== this.#generation) return null;
    this.#connect();
    return session;
  }

  // The server no longer knows who we are (a 401 on a heartbeat: a development
  // server restarted with a new key, a cookie cleared): the old session cannot
  // be reached any more, so start a new one rather than poll in vain.
  async #replaceIdentity() {
    const oldId = this.#sessionId;
    if (this.#identityLost) {
      // A second 401 with nothing kept alive in between: the server never got
      // an identity it could keep, and a new session would fare no better.
      this.#fail(
        new PresenceError(
          "The server does not recognise this browser's identity; cookies may not be sent (use credentials: 'include' for an API on another origin)",
          { status: 401, code: 'unauthorized' },
        ),
        'heartbeat',
      );
      return;
    }
    this.#identityLost = true;
    this.#teardown();
    const generation = this.#generation;
    this.#forget(oldId);
    this.#session = null;
    this.#sessionId = null;
    this.#attempt = 0;
    this.#setStatus('connecting');
    this.#listenToPage();
    try {
      const session = await this.#create();
      if (generation !== this.#generation) {
        this.#discard(session.id);
        return;
      }
      this.#begin(session, { oldId, reason: 'unauthorized' }, generation);
    } catch (error) {
      if (generation === this.#generation) this.#fail(error, 'heartbeat');
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
      socket = this.#openSocket(url);
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
    on('close', (event) => this.#onSocketClose(event));
    // 'error' carries no detail in browsers and is always followed by 'close'.
  }

  #openSocket(url) {
    const factory = this.#webSocketFactory ?? ((target) => new WebSocket(target));
    if (this.#share === null) return factory(url);
    // The tab's one node: every manager of the tab speaks through it.
    return sharedSocketFor({ ...this.#share, webSocketFactory: factory }).connect(url, this.#sessionId);
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
    this.#identityLost = false;
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

  #onSocketClose(event) {
    const openedAt = this.#socketOpenedAt;
    this.#dropSocket();
    if (this.#share !== null && event?.code === CLOSE_HANDOVER && this.isSessionActive) {
      // The tab that held the shared socket went away and another takes it
      // over: reconnect through it at once; the server's grace covers the gap.
      this.#setStatus('connecting');
      this.#connect();
      return;
    }
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
      // One beat says the tab is away (and finds out whether the session is
      // still there); then quiet until it is shown.
      if (!wasPolling) this.#heartbeat('away');
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

  /**
   * The REST rhythm in use: the shorter of `heartbeatIntervalMs` and the
   * server's `heartbeat_interval` (from its last session snapshot), so that a
   * server with a short TTL does not see the session expire between beats.
   */
  get effectiveHeartbeatIntervalMs() {
    const server = Number(this.#session?.heartbeat_interval);
    const own = this.heartbeatIntervalMs;
    return Number.isFinite(server) && server > 0 ? Math.min(own, server * 1000) : own;
  }

  #startHeartbeatTimer() {
    this.#clearHeartbeatTimer();
    const interval = this.effectiveHeartbeatIntervalMs;
    this.#heartbeatTimer = setInterval(() => this.#heartbeat(), interval);
    this.#heartbeatTimerMs = interval;
  }

  async #heartbeat(state = 'active') {
    if (!this.#sessionId) return;
    if (this.#heartbeatInFlight) {
      // The tab hid while a beat was on its way: say `away` right after it.
      if (state === 'away') this.#awayPending = true;
      return;
    }
    const generation = this.#generation;
    this.#heartbeatInFlight = true;
    try {
      const response = await this.#request('POST', `/sessions/${encodeURIComponent(this.#sessionId)}/heartbeat`, { body: { state } });
      if (generation !== this.#generation) return;
      if (response.status === 404) {
        this.#forget(this.#sessionId);
        this.#end('not_found');
      } else if (response.status === 401) {
        this.#heartbeatInFlight = false;
        this.#replaceIdentity();
      } else if (!response.ok) {
        this.#report(serverError(response.status, response.data, 'Heartbeat failed'), 'heartbeat');
      } else {
        this.#lastKeepalive = new Date();
        this.#identityLost = false;
        if (response.data) this.#adopt(response.data);
        // The server's interval may have come with this reply: beat at it.
        if (this.#heartbeatTimer !== null && this.#heartbeatTimerMs !== this.effectiveHeartbeatIntervalMs) this.#startHeartbeatTimer();
      }
    } catch (error) {
      if (generation === this.#generation) this.#report(error, 'heartbeat');
    } finally {
      if (generation === this.#generation) {
        this.#heartbeatInFlight = false;
        if (this.#awayPending) {
          this.#awayPending = false;
          if (this.#status === 'paused') this.#heartbeat('away');
        }
      }
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
      // Tell the server once, as the socket does, that the tab is away; then
      // stay quiet until it is shown again.
      this.#heartbeat('away');
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
          credentials: this.#credentials,
          headers: this.#lastToken ? { Authorization: `Bearer ${this.#lastToken}` } : {},
        }).catch(() => {});
        return;
      }
      const beacon = this.#sendBeacon ?? globalThis.navigator?.sendBeacon?.bind(globalThis.navigator);
      if (beacon) beacon(url, body);
      else this.#fetch(url, { method: 'POST', body, keepalive: true, credentials: this.#credentials }).catch(() => {});
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
    this.#awayPending = false;
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
    const init = { method, headers, credentials: this.#credentials };
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
