/** A user's status across all their tabs and devices. */
export type MemberStatus = 'online' | 'away';

/** Why a member left: the server's reason, or null when a list comparison found it. */
export type LeaveReason = 'left' | 'closed' | 'timeout' | 'ended' | 'expired' | 'node_down' | null;

/**
 * 'connecting' (no list yet), 'live' (kept live over the socket), 'syncing'
 * (waiting for a fresh sync: a gap, a reconnect), 'polling' (the socket is down:
 * the list is polled over REST at the heartbeat rhythm), 'paused' (hidden while
 * polling), 'offline' (the session is not running), 'error' (the server refused
 * the room), 'closed' (left and unwatched).
 */
export type PresenceRoomStatus = 'connecting' | 'live' | 'syncing' | 'polling' | 'paused' | 'offline' | 'error' | 'closed';

/** A user present in a room, aggregated over their sessions there. Frozen. */
export interface PresenceMember {
  readonly user: string;
  readonly status: MemberStatus;
  /** How many of the user's sessions (tabs) are in the room. */
  readonly sessions: number;
  /** The meta most recently set by any of them. */
  readonly meta: unknown;
  /** ISO time the user came into the room. */
  readonly since: string | null;
}

export interface PresenceLeave {
  user: string;
  reason: LeaveReason;
  /** ISO time, or null when unknown. */
  lastSeen: string | null;
  /** The member as last known, or null. */
  member: PresenceMember | null;
  /** True when found by comparing a sync or a poll with the previous list. */
  synced?: true;
}

export interface PresenceRoomEventMap {
  sync: CustomEvent<{ members: ReadonlyMap<string, PresenceMember>; count: number; seq: number; partial: boolean }>;
  join: CustomEvent<{ user: string; member: PresenceMember; synced?: true }>;
  leave: CustomEvent<PresenceLeave>;
  update: CustomEvent<{ user: string; member: PresenceMember; previous: PresenceMember | null; synced?: true }>;
  /** Members, count, seq or status changed. */
  change: CustomEvent<Record<string, never>>;
  /** The server refused the room (forbidden, too many rooms, meta too large). */
  error: CustomEvent<{ error: Error & { code: string | null; status: number | null } }>;
}

/** A room's meta goes to the server at most this often (250 ms); the latest wins. */
export const UPDATE_INTERVAL_MS: 250;

/** A room name the server accepts: 1 to 128 of `[A-Za-z0-9_.:@-]`. */
export const ROOM_PATTERN: RegExp;

/** Throws a TypeError for a name the server would refuse; returns it otherwise. */
export function checkRoom(name: unknown): string;

/** One room as this tab sees it, from `manager.join()` or `manager.watch()`. */
export class PresenceRoom extends EventTarget {
  constructor(name: string);
  readonly name: string;
  /** Members by user: a new Map after each change, the same one otherwise. */
  readonly members: ReadonlyMap<string, PresenceMember>;
  /** Users in the room (may exceed `members.size` while further pages load). */
  readonly count: number;
  /** Seq of the last sync or diff applied; -1 before the first. */
  readonly seq: number;
  readonly status: PresenceRoomStatus;
  /** The server's list is only one process's (Redis away). */
  readonly partial: boolean;
  readonly error: (Error & { code: string | null; status: number | null }) | null;

  addEventListener<K extends keyof PresenceRoomEventMap>(
    type: K,
    listener: (event: PresenceRoomEventMap[K]) => void,
    options?: boolean | AddEventListenerOptions,
  ): void;
  addEventListener(type: string, listener: EventListenerOrEventListenerObject | null, options?: boolean | AddEventListenerOptions): void;
  removeEventListener<K extends keyof PresenceRoomEventMap>(
    type: K,
    listener: (event: PresenceRoomEventMap[K]) => void,
    options?: boolean | EventListenerOptions,
  ): void;
  removeEventListener(type: string, listener: EventListenerOrEventListenerObject | null, options?: boolean | EventListenerOptions): void;
}

export default PresenceRoom;
