import { act, cleanup, render, screen } from '@testing-library/react';
import { StrictMode, createElement as h } from 'react';
import { afterEach, beforeEach, describe, expect, it, vi } from 'vitest';
import * as react from '../src/useChatSession.js';
import { PresenceProvider, usePresence } from '../src/usePresence.js';
import { flush } from './fakes.js';
import { diff, memberOf, presenceSent, setupPresence, sync } from './presenceFakes.js';

const SECOND = 1000;

async function settle() {
  await act(async () => {
    await flush();
  });
}

function Online({ room, options, renders }) {
  const presence = usePresence(room, options);
  renders?.push(presence);
  return h(
    'div',
    null,
    h('span', { 'data-testid': 'status' }, presence.status),
    h('span', { 'data-testid': 'count' }, String(presence.count)),
    h(
      'ul',
      { 'aria-label': 'Online' },
      [...presence.members.values()].map((m) => h('li', { key: m.user }, `${m.user} ${m.status}`)),
    ),
  );
}

const text = (id) => screen.getByTestId(id).textContent;
const items = () => screen.queryAllByRole('listitem').map((li) => li.textContent);

beforeEach(() => {
  vi.useFakeTimers({ toFake: ['setTimeout', 'clearTimeout', 'setInterval', 'clearInterval', 'Date'] });
});

afterEach(() => {
  cleanup();
  vi.useRealTimers();
});

describe('usePresence', () => {
  it('is exported from the react entry', () => {
    expect(react.usePresence).toBe(usePresence);
    expect(react.PresenceProvider).toBe(PresenceProvider);
  });

  it('joins the room, shows members and count live, and leaves on unmount', async () => {
    const { manager, sockets } = setupPresence();
    await manager.startSession(null);
    await flush();
    const view = render(h(Online, { room: 'general', options: { join: true, meta: { name: 'Ada' }, manager } }));
    await settle();
    expect(presenceSent(sockets.last)).toEqual([{ type: 'presence.join', room: 'general', meta: { name: 'Ada' } }]);
    expect(text('status')).toBe('syncing');
    await act(async () => sockets.last.receive(sync('general', 1, [memberOf('ada')])));
    expect(text('status')).toBe('live');
    expect(items()).toEqual(['ada online']);
    await act(async () => sockets.last.receive(diff('general', 2, { joins: [memberOf('bob', { status: 'away' })], count: 2 })));
    expect(items()).toEqual(['ada online', 'bob away']);
    expect(text('count')).toBe('2');
    view.unmount();
    await flush();
    expect(presenceSent(sockets.last).at(-1)).toEqual({ type: 'presence.leave', room: 'general' });
    manager.stopSession();
  });

  it('returns the same object and Map across renders until something changes', async () => {
    const { manager, sockets } = setupPresence();
    await manager.startSession(null);
    await flush();
    const renders = [];
    const view = render(h(Online, { room: 'general', options: { manager }, renders }));
    await settle();
    await act(async () => sockets.last.receive(sync('general', 1, [memberOf('ada')])));
    const live = renders.at(-1);
    view.rerender(h(Online, { room: 'general', options: { manager }, renders }));
    expect(renders.at(-1)).toBe(live);
    // A sync that changes nothing keeps them too.
    await act(async () => sockets.last.receive(sync('general', 1, [memberOf('ada')])));
    expect(renders.at(-1)).toBe(live);
    expect(renders.at(-1).members).toBe(live.members);
    await act(async () => sockets.last.receive(diff('general', 2, { joins: [memberOf('bob')], count: 2 })));
    expect(renders.at(-1)).not.toBe(live);
    expect(renders.at(-1).members.get('ada')).toBe(live.members.get('ada'));
    manager.stopSession();
  });

  it('takes the manager from PresenceProvider, and sends a changed meta as an update (same JSON: nothing)', async () => {
    const { manager, sockets } = setupPresence();
    await manager.startSession(null);
    await flush();
    const page = (meta) => h(PresenceProvider, { manager }, h(Online, { room: 'general', options: { join: true, meta } }));
    const view = render(page({ typing: false }));
    await settle();
    view.rerender(page({ typing: false }));
    await settle();
    await act(async () => vi.advanceTimersByTimeAsync(SECOND));
    view.rerender(page({ typing: true }));
    await settle();
    expect(presenceSent(sockets.last)).toEqual([
      { type: 'presence.join', room: 'general', meta: { typing: false } },
      { type: 'presence.update', room: 'general', meta: { typing: true } },
    ]);
    manager.stopSession();
  });

  it('under StrictMode (mount, unmount, mount) joins once and sends no leave', async () => {
    const { manager, sockets } = setupPresence();
    await manager.startSession(null);
    await flush();
    render(h(StrictMode, null, h(Online, { room: 'general', options: { join: true, manager } })));
    await settle();
    expect(presenceSent(sockets.last)).toEqual([{ type: 'presence.join', room: 'general', meta: null }]);
    manager.stopSession();
  });

  it('two components joining one room: the room is left when the last one unmounts', async () => {
    const { manager, sockets } = setupPresence();
    await manager.startSession(null);
    await flush();
    const page = (both) =>
      h('div', null, h(Online, { room: 'general', options: { join: true, manager } }), both ? h(Online, { room: 'general', options: { join: true, manager } }) : null);
    const view = render(page(true));
    await settle();
    view.rerender(page(false));
    await settle();
    expect(presenceSent(sockets.last)).toEqual([{ type: 'presence.join', room: 'general', meta: null }]);
    view.unmount();
    await flush();
    expect(presenceSent(sockets.last).at(-1)).toEqual({ type: 'presence.leave', room: 'general' });
    manager.stopSession();
  });

  it('says the list is polled over REST, and leaves no timer behind after unmount', async () => {
    const { manager, presence } = setupPresence({ sockets: 'refuse', options: { heartbeatIntervalMs: 10 * SECOND, backoff: { baseMs: 3_600_000, capMs: 3_600_000 } } });
    presence.put('general', memberOf('ada'));
    await manager.startSession(null);
    await flush();
    await flush();
    expect(manager.status).toBe('polling');
    const managerTimers = vi.getTimerCount();
    const view = render(h(Online, { room: 'general', options: { join: true, manager } }));
    await settle();
    await settle();
    expect(text('status')).toBe('polling');
    expect(items().sort()).toEqual(['ada online', 'me online']);
    expect(vi.getTimerCount()).toBe(managerTimers + 1);
    view.unmount();
    await flush();
    expect(vi.getTimerCount()).toBe(managerTimers);
    const polls = presence.polls('general').length;
    await vi.advanceTimersByTimeAsync(60 * SECOND);
    expect(presence.polls('general')).toHaveLength(polls);
    manager.stopSession();
    expect(vi.getTimerCount()).toBe(0);
  });

  it('with no manager or no room shows an empty offline list', async () => {
    render(h(Online, { room: null, options: {} }));
    await settle();
    expect(text('status')).toBe('offline');
    expect(items()).toEqual([]);
  });
});
