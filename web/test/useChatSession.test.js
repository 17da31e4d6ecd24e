import { act, cleanup, render, screen } from '@testing-library/react';
import { StrictMode, createElement as h, useEffect } from 'react';
import { afterEach, beforeEach, describe, expect, it, vi } from 'vitest';
import { getOrCreateSessionId } from '../src/chatSessionManager.js';
import { useChatSession } from '../src/useChatSession.js';
import { BASE, FakeServer, FakeSocketServer, MemoryStorage, flush } from './fakes.js';

const SECOND = 1000;

function fakes(behaviour = 'accept') {
  const server = new FakeServer();
  const sockets = new FakeSocketServer(behaviour);
  const storage = new MemoryStorage();
  const navigate = vi.fn();
  const options = { baseUrl: BASE, fetch: server.fetch, webSocketFactory: sockets.create, storage, navigate, random: () => 0.5 };
  return { server, sockets, storage, navigate, options };
}

// The spec's chat page, written without JSX.
function ChatPage({ options, renders }) {
  const chat = useChatSession(options);
  const { startSession, stopSession, navigateToHub } = chat;
  renders?.push(chat);

  useEffect(() => {
    startSession(getOrCreateSessionId(options.storage));
    return () => {
      stopSession();
    };
  }, [startSession, stopSession]);

  return h(
    'div',
    null,
    h('span', { 'data-testid': 'status' }, chat.status),
    h('span', { 'data-testid': 'transport' }, chat.transport),
    h('span', { 'data-testid': 'session-id' }, chat.sessionId ?? ''),
    h('span', { 'data-testid': 'state' }, chat.state ?? ''),
    h('span', { 'data-testid': 'active' }, String(chat.isSessionActive)),
    h('span', { 'data-testid': 'error' }, chat.error ? String(chat.error.message) : ''),
    h('button', { onClick: () => navigateToHub() }, 'Back to Hub'),
  );
}

const text = (id) => screen.getByTestId(id).textContent;

async function settle() {
  await act(async () => {
    await flush();
  });
}

beforeEach(() => {
  // setImmediate stays real for React's scheduler; the manager's timers are fake.
  vi.useFakeTimers({ toFake: ['setTimeout', 'clearTimeout', 'setInterval', 'clearInterval', 'Date'] });
});

afterEach(() => {
  cleanup();
  vi.useRealTimers();
});

describe('useChatSession', () => {
  it('starts the session on mount and shows it live over the WebSocket', async () => {
    const { server, sockets, storage, options } = fakes('accept');
    render(h(ChatPage, { options }));
    await settle();

    expect(server.calls('POST', '/sessions')).toHaveLength(1);
    expect(text('status')).toBe('connected');
    expect(text('transport')).toBe('websocket');
    expect(text('active')).toBe('true');
    expect(text('session-id')).toBe(storage.getItem('presence.sessionId'));
    expect(sockets.live).toHaveLength(1);

    await act(async () => {
      sockets.last.receive({ type: 'snapshot', session: { ...server.sessions.values().next().value, state: 'away' } });
    });
    expect(text('state')).toBe('away');
  });

  it('stops on unmount: socket closed, no timers left, no requests afterwards', async () => {
    const { server, sockets, options } = fakes('manual');
    const { unmount } = render(h(ChatPage, { options }));
    await settle();
    await act(async () => {
      sockets.last.refuse();
      await flush();
    });
    expect(text('status')).toBe('polling');
    expect(text('transport')).toBe('http');
    expect(vi.getTimerCount()).toBeGreaterThan(0);

    await act(async () => {
      await vi.advanceTimersByTimeAsync(250); // a socket retry is now mid-handshake
    });
    const pending = sockets.last;
    expect(pending.readyState).toBe(0);
    unmount();

    expect(vi.getTimerCount()).toBe(0);
    expect(pending.closedWith?.code).toBe(1000);
    expect(sockets.live).toHaveLength(0);
    const requests = server.requests.length;
    await vi.advanceTimersByTimeAsync(5 * 60 * SECOND);
    expect(server.requests).toHaveLength(requests);
  });

  it("returns stable callbacks, so the spec's effect on [startSession, stopSession] runs once", async () => {
    const { server, options } = fakes('accept');
    const renders = [];
    const { rerender } = render(h(ChatPage, { options, renders }));
    await settle();
    rerender(h(ChatPage, { options, renders }));
    rerender(h(ChatPage, { options, renders }));
    await settle();

    expect(renders.length).toBeGreaterThan(3);
    for (const name of ['startSession', 'stopSession', 'navigateToHub', 'cleanupSessions']) {
      expect(new Set(renders.map((r) => r[name])).size).toBe(1);
    }
    expect(new Set(renders.map((r) => r.manager)).size).toBe(1);
    expect(server.calls('POST', '/sessions')).toHaveLength(1);
  });

  it('ends up with exactly one live socket under StrictMode double mounting', async () => {
    const { sockets, options } = fakes('accept');
    const renders = [];
    const { unmount } = render(h(StrictMode, null, h(ChatPage, { options, renders })));
    await settle();
    expect(text('status')).toBe('connected');
    expect(sockets.live).toHaveLength(1);
    expect(sockets.last.url).toContain(renders.at(-1).sessionId);
    unmount();
    expect(sockets.live).toHaveLength(0);
    expect(vi.getTimerCount()).toBe(0);
  });

  it('shows a failed start as status error with the error, without throwing', async () => {
    const { server, options } = fakes('accept');
    server.fail('POST', '/sessions', 'network');
    render(h(ChatPage, { options }));
    await settle();
    expect(text('status')).toBe('error');
    expect(text('active')).toBe('false');
    expect(text('error')).toBe('Failed to fetch');
  });

  it('shows a session the server ended as status ended and inactive', async () => {
    const { sockets, options } = fakes('accept');
    render(h(ChatPage, { options }));
    await settle();
    await act(async () => {
      sockets.last.receive({ type: 'ended', reason: 'deleted' });
    });
    expect(text('status')).toBe('ended');
    expect(text('active')).toBe('false');
    expect(vi.getTimerCount()).toBe(0);
  });

  it('navigates to the hub through the manager after the cleanup request', async () => {
    const { server, navigate, options } = fakes('accept');
    render(h(ChatPage, { options }));
    await settle();
    await act(async () => {
      screen.getByRole('button', { name: 'Back to Hub' }).click();
      await flush();
    });
    expect(server.calls('POST', '/sessions/cleanup').map((r) => r.body)).toEqual([{ type: 'all' }]);
    expect(navigate).toHaveBeenCalledWith('/hub');
    expect(text('status')).toBe('idle');
  });
});
