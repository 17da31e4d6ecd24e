// useChatSession: a React view of one ChatSessionManager.
//
// The hook only creates the manager, subscribes to its events in useEffect and
// cleans up; every decision lives in the manager, which is tested without React.

import { useCallback, useEffect, useState } from 'react';
import { ChatSessionManager } from './chatSessionManager.js';

const EVENTS = ['statuschange', 'sessionchange', 'session-replaced', 'ended', 'error'];

function read(manager) {
  return {
    isSessionActive: manager.isSessionActive,
    sessionId: manager.sessionId,
    status: manager.status,
    transport: manager.transport,
    state: manager.state,
    lastKeepalive: manager.lastKeepalive,
    session: manager.session,
  };
}

/**
 * One chat session for the calling component.
 *
 * @param {object} [options] `baseUrl` plus the ChatSessionManager options; read
 *   once, when the manager is created. `manager` uses an existing manager.
 */
export function useChatSession(options = {}) {
  const [manager] = useState(() => {
    const { baseUrl, manager: existing, ...managerOptions } = options;
    return existing ?? new ChatSessionManager(baseUrl, managerOptions);
  });
  const [snapshot, setSnapshot] = useState(() => read(manager));
  const [error, setError] = useState(null);

  useEffect(() => {
    const update = (event) => {
      if (event?.type === 'error') setError(event.detail?.error ?? null);
      setSnapshot(read(manager));
    };
    for (const type of EVENTS) manager.addEventListener(type, update);
    // Events may have fired between render and this effect.
    setSnapshot(read(manager));
    return () => {
      for (const type of EVENTS) manager.removeEventListener(type, update);
      // StrictMode runs this and the effect again at once: the page's second
      // startSession(id) then takes over the first one's request still in
      // flight (ChatSessionManager keeps it), so the remount gets the same
      // session; at a real unmount, a session that request made is deleted.
      manager.stopSession();
    };
  }, [manager]);

  // Stable identities, so `useEffect(..., [startSession, stopSession])` in a
  // page runs once rather than on every render.
  const startSession = useCallback(
    (id) => {
      setError(null);
      return manager.startSession(id);
    },
    [manager],
  );
  const stopSession = useCallback(() => manager.stopSession(), [manager]);
  const navigateToHub = useCallback((url) => manager.navigateToHub(url), [manager]);
  const cleanupSessions = useCallback((type, ids) => manager.cleanupSessions(type, ids), [manager]);

  return {
    startSession,
    stopSession,
    navigateToHub,
    cleanupSessions,
    ...snapshot,
    error,
    manager,
  };
}

export default useChatSession;

// The package's React entry ('@presence/client/react') is this module: it
// carries the presence hook too.
export { PresenceContext, PresenceProvider, usePresence } from './usePresence.js';
