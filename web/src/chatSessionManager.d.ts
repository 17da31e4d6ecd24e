import type { PresenceRoom } from './presenceRoom.js';

/** The server's session object. */
export interface Session {
  /** 22-character base64url id. */
  id: string;
  created_at: string;
  last_seen: string;
  expires_at: string;
  transport: Transport;
  state: SessionState;
  data: unknown;
  /** The server's HEARTBEAT_INTERVAL in seconds; the REST rhythm is never slower. */
  heartbeat_interval?: number;
}

export type SessionState = 'active' | 'away' | 'disconnected';
export type Transport = 'websocket' | 'http' | 'none';
export type SessionStatus = 'idle' | 'connecting' | 'connected' | 'polling' | 'paused' | 'ended' | 'error';
export type CleanupType = 'all' | 'inactive' | 'specific';

export interface CleanupResult {
  deleted: number;
  session_ids: string[];
}

export interface BackoffOptions {
  /** First retry ceiling in ms. Default 500. */
  baseMs?: number;
  /** Largest retry ceiling in ms. Default 30000. */
  capMs?: number;
  /** A socket open at least this long resets the backoff. Default 10000. */
  stableMs?: number;
}

/** The parts of a WebSocket the manager uses. */
export interface WebSocketLike {
  readonly readyState: number;
  send(data: string): void;
  close(code?: number, reason?: string): void;
  addEventListener(type: 'open' | 'message' | 'close' | 'error', listener: (event: any) => void): void;
  removeEventListener(type: 'open' | 'message' | 'close' | 'error', listener: (event: any) => void): void;
}

export interface StorageLike {
  getItem(key: string): string | null;
  setItem(key: string, value: string): void;
  removeItem(key: string): void;
}

export interface ChatSessionManagerOptions {
  /** Builds the socket; default `url => new WebSocket(url)`. */
  webSocketFactory?: (url: string) => WebSocketLike;
  /** Default: the global fetch. */
  fetch?: typeof fetch;
  /** Where the session id is kept; default sessionStorage. null keeps nothing. */
  storage?: StorageLike | null;
  /** Default 'presence.sessionId'. */
  storageKey?: string;
  /** Default `url => location.assign(url)`. */
  navigate?: (url: string) => void;
  /** Uniform [0, 1) source for backoff jitter; default Math.random. */
  random?: () => number;
  backoff?: BackoffOptions;
  /**
   * Returns a JWT. When given, REST requests send `Authorization: Bearer` and
   * the socket URL carries `?token=`.
   */
  token?: () => string | null | undefined | Promise<string | null | undefined>;
  /** Default navigator.sendBeacon. */
  sendBeacon?: (url: string, data: Blob) => boolean;
  /** Initial value of `heartbeatIntervalMs`. */
  heartbeatIntervalMs?: number;
  /**
   * Share one WebSocket among this origin's tabs (a leader elected through Web
   * Locks holds it, the others speak through a BroadcastChannel). Each tab keeps
   * its own session. Ignored, one socket per tab, where either API is missing.
   * An object names the share or injects the two APIs (tests).
   */
  shareConnection?: boolean | ShareConnectionOptions;
  /**
   * fetch's credentials mode for every request. Default 'same-origin';
   * 'include' for an API on another origin that allows this one with
   * credentials (PRESENCE_ALLOWED_ORIGINS), so its identity cookie is sent.
   */
  credentials?: RequestCredentials;
  /** The presence REST base; default the base URL with `/chat` replaced by `/presence`. */
  presenceUrl?: string;
}

export interface ShareConnectionOptions {
  /** Tabs share with the tabs of the same name. Default 'presence'. */
  name?: string;
  /** Default navigator.locks. */
  locks?: Pick<LockManager, 'request'>;
  /** Default globalThis.BroadcastChannel. */
  BroadcastChannel?: typeof BroadcastChannel;
  /** How long a tab waits for the leader to carry its session before it falls back. Default 3000. */
  openTimeoutMs?: number;
}

export interface ChatSessionManagerEventMap {
  statuschange: CustomEvent<{ status: SessionStatus; previous: SessionStatus }>;
  /** A new session snapshot (socket message or heartbeat reply). */
  sessionchange: CustomEvent<{ session: Session }>;
  /**
   * The session `oldId` could not be had and `newId` was created: startSession(id)
   * found it unknown ('not_found') or had no identity for it ('unauthorized'), or
   * a heartbeat's 401 said the identity was gone ('unauthorized').
   */
  'session-replaced': CustomEvent<{ oldId: string; newId: string; reason: 'not_found' | 'unauthorized' }>;
  /** The server ended the session; the manager stopped. */
  ended: CustomEvent<{ reason: string; sessionId: string | null }>;
  error: CustomEvent<{ error: unknown; context: string }>;
}

export class PresenceError extends Error {
  constructor(message: string, options?: { status?: number | null; code?: string | null; cause?: unknown });
  /** HTTP status, when the error came from a response. */
  status: number | null;
  /** The server's error code, e.g. "session_not_found". */
  code: string | null;
}

export const DEFAULT_BASE_URL: '/api/v1/chat';
export const DEFAULT_STORAGE_KEY: 'presence.sessionId';
export const DEFAULT_HEARTBEAT_INTERVAL_MS: 30000;
export const DEFAULT_BACKOFF: Readonly<Required<BackoffOptions>>;

/** Full-jitter delay: `random() * min(capMs, baseMs * 2 ** attempt)`. */
export function backoffDelay(attempt: number, backoff?: BackoffOptions, random?: () => number): number;

/** The id this tab keeps in sessionStorage, or null when it has none. */
export function getOrCreateSessionId(storage?: StorageLike | null, key?: string): string | null;

export class ChatSessionManager extends EventTarget {
  constructor(baseUrl?: string, options?: ChatSessionManagerOptions);

  /** Milliseconds between REST heartbeats while the socket is down. Default 30000. */
  heartbeatIntervalMs: number;

  readonly baseUrl: string;
  readonly status: SessionStatus;
  readonly isSessionActive: boolean;
  readonly sessionId: string | null;
  readonly transport: Transport;
  readonly state: SessionState | null;
  readonly lastKeepalive: Date | null;
  readonly session: Session | null;
  /** True when this manager's socket is the one its browser's tabs share. */
  readonly sharesConnection: boolean;
  /** The REST rhythm in use: min(heartbeatIntervalMs, the server's heartbeat_interval). */
  readonly effectiveHeartbeatIntervalMs: number;
  readonly shareConnection: boolean;
  readonly presenceUrl: string;

  /**
   * Be present in `room` with `meta` (again: a new meta), across reconnects and
   * the REST fallback, until `leave(room)`. Throws a TypeError for a bad name.
   */
  join(room: string, meta?: unknown): PresenceRoom;
  /** Leave `room`; false when this tab had not joined it. */
  leave(room: string): boolean;
  /** Set this tab's meta in a room it joined; false (and an `error` event) otherwise. */
  update(room: string, meta: unknown): boolean;
  /** See `room`'s members without being in it; each call holds it until an `unwatch()`. */
  watch(room: string): PresenceRoom;
  unwatch(room: string): boolean;
  /** The room object of a room joined or watched, or null. */
  room(room: string): PresenceRoom | null;

  /** Continue `id` (or create a session) and keep it alive. Null if it failed. */
  startSession(id?: string | null): Promise<Session | null>;
  /** Close the socket and clear timers and listeners; the session stays on the server. */
  stopSession(): void;
  /** Clean up all sessions (keepalive fetch), stop, then navigate, even if cleanup failed. */
  navigateToHub(url?: string): Promise<void>;
  cleanupSessions(type: 'specific', ids: Iterable<string>): Promise<CleanupResult | null>;
  cleanupSessions(type: 'all' | 'inactive'): Promise<CleanupResult | null>;
  /** This user's sessions, or null after an `error` event. */
  listSessions(): Promise<Session[] | null>;

  addEventListener<K extends keyof ChatSessionManagerEventMap>(
    type: K,
    listener: (event: ChatSessionManagerEventMap[K]) => void,
    options?: boolean | AddEventListenerOptions,
  ): void;
  addEventListener(type: string, listener: EventListenerOrEventListenerObject | null, options?: boolean | AddEventListenerOptions): void;
  removeEventListener<K extends keyof ChatSessionManagerEventMap>(
    type: K,
    listener: (event: ChatSessionManagerEventMap[K]) => void,
    options?: boolean | EventListenerOptions,
  ): void;
  removeEventListener(type: string, listener: EventListenerOrEventListenerObject | null, options?: boolean | EventListenerOptions): void;
}

export default ChatSessionManager;
