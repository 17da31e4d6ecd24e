import type { WebSocketLike } from './chatSessionManager.js';

/** Close code of a link whose leader went away; the manager reconnects at once. */
export const CLOSE_HANDOVER: 1012;
export const DEFAULT_OPEN_TIMEOUT_MS: 3000;
export const DEFAULT_SHARE_NAME: 'presence';

/** True when `env` (default globalThis) has Web Locks and BroadcastChannel. */
export function sharedSocketSupported(env?: { navigator?: { locks?: unknown }; BroadcastChannel?: unknown }): boolean;

export interface SharedSocketOptions {
  /** Tabs share with the tabs of the same name. Default 'presence'. */
  name?: string;
  /** Default navigator.locks. */
  locks?: Pick<LockManager, 'request'>;
  /** Default globalThis.BroadcastChannel. */
  BroadcastChannel?: typeof BroadcastChannel;
  /** Opens the real socket (leader only). Default `url => new WebSocket(url)`. */
  webSocketFactory?: (url: string) => WebSocketLike;
  /** How long a link waits for a leader before it closes with 1006. Default 3000. */
  openTimeoutMs?: number;
}

/** A tab's link for one session, shaped like a WebSocket. */
export class VirtualSocket extends EventTarget implements WebSocketLike {
  readonly url: string;
  readonly session: string;
  readonly readyState: number;
  /** Sends a JSON message; the leader tags it with this link's session. */
  send(data: string): void;
  close(code?: number, reason?: string): void;
}

/** One tab's node of the share: a follower, or the leader holding the one socket. */
export class SharedSocket {
  constructor(options?: SharedSocketOptions);
  readonly id: string;
  readonly isLeader: boolean;
  /** The leader this node knows of, or null. */
  readonly leader: string | null;
  /** Resolves once the node holds its life lock and has asked for the leadership. */
  readonly ready: Promise<void>;
  /** A link for `session`; `url` is the socket URL the leader uses if it opens the socket. */
  connect(url: string, session: string): VirtualSocket;
  /** Releases both locks and the channel; this tab's links close with 1012. */
  close(): void;
}

/** This tab's one node for `options.name` (made on first use). */
export function sharedSocketFor(options?: SharedSocketOptions): SharedSocket;
