// usePresence: a React view of one room of a ChatSessionManager.
//
// The hook only joins or watches the room in useEffect, subscribes to the room
// object's `change` event and lets go in the cleanup; every rule (reconnects,
// REST polling, gaps in seq) lives in presenceRoom.js, tested without React.
// It starts no timer of its own, so nothing of it is left after unmount.

import { createContext, createElement, useContext, useEffect, useRef, useState } from 'react';

/** The manager `usePresence` uses when it is given none. */
export const PresenceContext = createContext(null);

/** Makes `manager` the one `usePresence` uses below it. */
export function PresenceProvider({ manager, children }) {
  return createElement(PresenceContext.Provider, { value: manager }, children);
}

// How many mounted hooks join each room of each manager: the room is left when
// the last of them unmounts, not the first.
const joins = new WeakMap();

function hold(manager, room, meta) {
  let rooms = joins.get(manager);
  if (!rooms) joins.set(manager, (rooms = new Map()));
  rooms.set(room, (rooms.get(room) ?? 0) + 1);
  return manager.join(room, meta);
}

function release(manager, room) {
  const rooms = joins.get(manager);
  const held = (rooms?.get(room) ?? 1) - 1;
  if (held > 0) {
    rooms.set(room, held);
    return;
  }
  rooms?.delete(room);
  manager.leave(room);
}

const NO_MEMBERS = new Map();
const OFFLINE = Object.freeze({ members: NO_MEMBERS, count: 0, status: 'offline', error: null, room: null });

function read(room) {
  return { members: room.members, count: room.count, status: room.status, error: room.error, room };
}

function same(a, b) {
  return a.members === b.members && a.count === b.count && a.status === b.status && a.error === b.error && a.room === b.room;
}

/**
 * Who is in `room`, live.
 *
 * @param {string|null} room The room; null or empty watches nothing.
 * @param {object} [options] `join` (be present, not only watch), `meta` (this
 *   tab's meta there; a change is sent as an update), `manager` (default: the
 *   one from PresenceProvider).
 * @returns {{members: Map, count: number, status: string, error: Error|null, room: object|null}}
 *   The same object, and the same `members` Map, until something changes.
 */
export function usePresence(room, { join = false, meta = null, manager } = {}) {
  const fromContext = useContext(PresenceContext);
  const target = manager ?? fromContext ?? null;
  const [snapshot, setSnapshot] = useState(() => {
    const known = target && room ? target.room?.(room) : null;
    return known ? read(known) : OFFLINE;
  });
  const metaKey = JSON.stringify(meta ?? null);
  const latest = useRef({ meta, metaKey });
  // The meta the room was last given, so that a new object with the same JSON
  // sends nothing.
  const given = useRef(null);

  useEffect(() => {
    latest.current = { meta, metaKey };
  });

  useEffect(() => {
    if (!target || !room) {
      setSnapshot(OFFLINE);
      return undefined;
    }
    const handle = join ? hold(target, room, latest.current.meta) : target.watch(room);
    given.current = latest.current.metaKey;
    const update = () => {
      const next = read(handle);
      setSnapshot((previous) => (same(previous, next) ? previous : next));
    };
    handle.addEventListener('change', update);
    update();
    return () => {
      handle.removeEventListener('change', update);
      if (join) release(target, room);
      else target.unwatch(room);
    };
  }, [target, room, join]);

  useEffect(() => {
    if (!join || !target || !room || given.current === metaKey) return;
    given.current = metaKey;
    target.update(room, latest.current.meta);
  }, [target, room, join, metaKey]);

  return snapshot;
}

export default usePresence;
