// Public entry point: everything a page needs, with no dependency.
//
// The React hook is deliberately not re-exported here: it imports 'react',
// which a page loading this file with no build step (and no import map) could
// not resolve. Import it from '@presence/client/react'.

export {
  ChatSessionManager,
  PresenceError,
  backoffDelay,
  getOrCreateSessionId,
  DEFAULT_BASE_URL,
  DEFAULT_BACKOFF,
  DEFAULT_HEARTBEAT_INTERVAL_MS,
  DEFAULT_STORAGE_KEY,
  default,
} from './chatSessionManager.js';
export { sharedSocketSupported } from './sharedSocket.js';
export { PresenceRoom, ROOM_PATTERN } from './presenceRoom.js';
