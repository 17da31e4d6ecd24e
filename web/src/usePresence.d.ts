import type { Context, ReactNode } from 'react';
import type { ChatSessionManager } from './chatSessionManager.js';
import type { PresenceMember, PresenceRoom, PresenceRoomStatus } from './presenceRoom.js';

export interface UsePresenceOptions {
  /** Be present in the room (true), or only see it (false, the default). */
  join?: boolean;
  /** This tab's meta in the room (with `join`); a change (by JSON) is sent as an update. */
  meta?: unknown;
  /** The manager; default the one from `PresenceProvider`. */
  manager?: ChatSessionManager | null;
}

export interface UsePresenceResult {
  /** Members by user; the same Map until a member changes. */
  members: ReadonlyMap<string, PresenceMember>;
  count: number;
  /** 'polling' says the list is polled over REST; 'offline' with no manager or room. */
  status: PresenceRoomStatus;
  error: (Error & { code: string | null; status: number | null }) | null;
  room: PresenceRoom | null;
}

export const PresenceContext: Context<ChatSessionManager | null>;

export function PresenceProvider(props: { manager: ChatSessionManager; children?: ReactNode }): ReactNode;

/** Who is in `room`, live; joins or watches it while mounted. The same object until something changes. */
export function usePresence(room: string | null | undefined, options?: UsePresenceOptions): UsePresenceResult;

export default usePresence;
