import { afterEach, beforeEach, describe, expect, it, vi } from 'vitest';
import { ChatSessionManager, DEFAULT_BACKOFF, backoffDelay } from '../src/chatSessionManager.js';
import { BASE, FakeServer, FakeSocketServer, flush, setup } from './fakes.js';

const BACKOFF = { baseMs: 500, capMs: 30_000 };

describe('backoffDelay', () => {
  it('keeps every delay within [0, min(cap, base * 2^n)] for any random() in [0, 1)', () => {
    for (let attempt = 0; attempt <= 40; attempt += 1) {
      const ceiling = Math.min(BACKOFF.capMs, BACKOFF.baseMs * 2 ** attempt);
      for (const r of [0, 1e-9, 0.25, 0.5, 0.75, 1 - Number.EPSILON]) {
        const delay = backoffDelay(attempt, BACKOFF, () => r);
        expect(delay).toBeGreaterThanOrEqual(0);
        expect(delay).toBeLessThan(ceiling);
      }
    }
  });

  it('doubles the ceiling per attempt and never exceeds the cap', () => {
    const ceilings = Array.from({ length: 10 }, (_, attempt) => backoffDelay(attempt, BACKOFF, () => 1));
    expect(ceilings).toEqual([500, 1000, 2000, 4000, 8000, 16_000, 30_000, 30_000, 30_000, 30_000]);
    expect(backoffDelay(10_000, BACKOFF, () => 1)).toBe(30_000);
    expect(Number.isFinite(backoffDelay(5000, BACKOFF, () => 0.5))).toBe(true);
  });

  it('is full jitter: the delay is random() times the ceiling, with one draw per call', () => {
    const random = vi.fn().mockReturnValueOnce(0).mockReturnValueOnce(0.3).mockReturnValueOnce(0.9);
    expect(backoffDelay(3, BACKOFF, random)).toBe(0);
    expect(backoffDelay(3, BACKOFF, random)).toBeCloseTo(0.3 * 4000);
    expect(backoffDelay(3, BACKOFF, random)).toBeCloseTo(0.9 * 4000);
    expect(random).toHaveBeenCalledTimes(3);
  });

  it('defaults to base 500 ms and cap 30 s', () => {
    expect(DEFAULT_BACKOFF).toMatchObject(BACKOFF);
    expect(backoffDelay(0, undefined, () => 1)).toBe(500);
    expect(backoffDelay(20, {}, () => 1)).toBe(30_000);
  });
});

describe('socket reconnects', () => {
  beforeEach(() => {
    vi.useFakeTimers({ toFake: ['setTimeout', 'clearTimeout', 'setInterval', 'clearInterval', 'Date'] });
  });
  afterEach(() => {
    vi.useRealTimers();
  });

  it('retries a refused socket after backoffDelay(0), (1), (2)... drawn from the injected random', async () => {
    const random = vi.fn(() => 0.5);
    const { manager, sockets } = setup({ sockets: 'refuse', options: { random } });
    await manager.startSession(null);
    await flush();
    expect(sockets.sockets).toHaveLength(1);

    // Ceilings 500, 1000, 2000, 4000 ms; random 0.5 halves each.
    for (const [index, delay] of [250, 500, 1000, 2000].entries()) {
      await vi.advanceTimersByTimeAsync(delay - 1);
      expect(sockets.sockets).toHaveLength(index + 1);
      await vi.advanceTimersByTimeAsync(1);
      expect(sockets.sockets).toHaveLength(index + 2);
    }
    await flush();
    expect(random).toHaveBeenCalledTimes(5);
    manager.stopSession();
  });

  it('never waits longer than the cap between attempts, however many failed', async () => {
    const server = new FakeServer();
    const sockets = new FakeSocketServer('refuse');
    const times = [];
    const manager = new ChatSessionManager(BASE, {
      fetch: server.fetch,
      storage: null,
      random: () => 0.999,
      backoff: { baseMs: 500, capMs: 4000 },
      webSocketFactory: (url) => {
        times.push(Date.now());
        return sockets.create(url);
      },
    });
    await manager.startSession(null);
    await vi.advanceTimersByTimeAsync(120_000);
    const gaps = times.slice(1).map((t, i) => t - times[i]);
    expect(gaps.length).toBeGreaterThan(25);
    // The ramp: 0.999 * 500, 1000, 2000; then every gap sits just under the cap.
    for (const [i, expected] of [499.5, 999, 1998].entries()) expect(Math.abs(gaps[i] - expected)).toBeLessThanOrEqual(1);
    for (const gap of gaps) expect(gap).toBeLessThanOrEqual(4000);
    for (const gap of gaps.slice(3)) expect(gap).toBeGreaterThanOrEqual(3990);
    manager.stopSession();
  });

  it('resets the attempt count after a socket stayed open for stableMs, not after a brief open', async () => {
    const random = vi.fn(() => 1 - Number.EPSILON);
    const { manager, sockets } = setup({ sockets: 'manual', options: { random, backoff: { baseMs: 1000, capMs: 60_000, stableMs: 10_000 } } });
    await manager.startSession(null);
    await flush();
    sockets.last.refuse(); // attempt 0 -> next delay < 1 s
    await vi.advanceTimersByTimeAsync(1000);
    sockets.last.refuse(); // attempt 1 -> next delay < 2 s
    await vi.advanceTimersByTimeAsync(2000);
    expect(sockets.sockets).toHaveLength(3);

    // Open, but only briefly: backoff keeps growing (next delay < 4 s).
    sockets.last.accept();
    await vi.advanceTimersByTimeAsync(100);
    sockets.last.drop();
    await vi.advanceTimersByTimeAsync(2000);
    expect(sockets.sockets).toHaveLength(3);
    await vi.advanceTimersByTimeAsync(2000);
    expect(sockets.sockets).toHaveLength(4);

    // Open long enough: the next retry comes within the first ceiling again.
    sockets.last.accept();
    await vi.advanceTimersByTimeAsync(10_000);
    sockets.last.drop();
    await vi.advanceTimersByTimeAsync(1000);
    expect(sockets.sockets).toHaveLength(5);
    manager.stopSession();
  });
});
