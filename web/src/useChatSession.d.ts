import type {
  ChatSessionManager,
  ChatSessionManagerOptions,
  CleanupResult,
  CleanupType,
  Session,
  SessionState,
  SessionStatus,
  Transport,
} from './chatSessionManager.js';

export interface UseChatSessionOptions extends ChatSessionManagerOptions {
  /** REST base; default '/api/v1/chat'. */
  baseUrl?: string;
  /** Use this manager instead of creating one. */
  manager?: ChatSessionManager;
}

export interface UseChatSessionResult {
  startSession(id?: string | null): Promise<Session | null>;
  stopSession(): void;
  navigateToHub(url?: string): Promise<void>;
  cleanupSessions(type: CleanupType, ids?: Iterable<string>): Promise<CleanupResult | null>;
  isSessionActive: boolean;
  sessionId: string | null;
  status: SessionStatus;
  transport: Transport;
  state: SessionState | null;
  lastKeepalive: Date | null;
  session: Session | null;
  /** The last `error` event's error, cleared by startSession. */
  error: unknown;
  manager: ChatSessionManager;
}

/** One chat session for the calling component; stops it on unmount. */
export function useChatSession(options?: UseChatSessionOptions): UseChatSessionResult;

export default useChatSession;

export { PresenceContext, PresenceProvider, UsePresenceOptions, UsePresenceResult, usePresence } from './usePresence.js';
