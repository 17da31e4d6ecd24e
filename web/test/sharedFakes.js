// A pretend browser for the shared socket: one Web Locks manager and one
// BroadcastChannel bus per origin, seen by several tabs, each of which can
// close (its locks released, its channels closed) or crash (the same, without
// a word to anyone).

import { FakeWebSocket } from './fakes.js';

class FakeLockManager {
  #held = new Map(); // name -> { tab, release }
  #queue = new Map(); // name -> [{ tab, callback, resolve, reject }]

  request(tab, name, options, callback) {
    if (typeof options === 'function') {
      callback = options;
      options = {};
    }
    return new Promise((resolve, reject) => {
      const waiter = { tab, callback, resolve, reject };
      if (options?.ifAvailable && this.#held.has(name)) {
        Promise.resolve(callback(null)).then(resolve, reject);
        return;
      }
      const queue = this.#queue.get(name) ?? [];
      queue.push(waiter);
      this.#queue.set(name, queue);
      this.#grant(name);
    });
  }

  heldBy(name) {
    return this.#held.get(name)?.tab ?? null;
  }

  /** A tab went away: what it held is released, what it waited for forgotten. */
  forget(tab) {
    for (const [name, queue] of this.#queue) this.#queue.set(name, queue.filter((w) => w.tab !== tab));
    for (const [name, holder] of [...this.#held]) {
      if (holder.tab !== tab) continue;
      this.#held.delete(name);
      this.#grant(name);
    }
  }

  #grant(name) {
    if (this.#held.has(name)) return;
    const queue = this.#queue.get(name) ?? [];
    const waiter = queue.shift();
    if (!waiter) return;
    const holder = { tab: waiter.tab };
    this.#held.set(name, holder);
    // Granted as a task would be, after what is running now.
    queueMicrotask(() => {
      if (waiter.tab.gone) {
        this.#release(name, holder);
        return;
      }
      Promise.resolve()
        .then(() => waiter.callback({ name, mode: 'exclusive' }))
        .then(waiter.resolve, waiter.reject)
        .finally(() => this.#release(name, holder));
    });
  }

  #release(name, holder) {
    if (this.#held.get(name) !== holder) return;
    this.#held.delete(name);
    this.#grant(name);
  }
}

class FakeBus {
  channels = new Set();
  /** Every message posted, as [name, data]. */
  log = [];

  post(sender, name, data) {
    this.log.push([name, data]);
    const copy = structuredClone(data);
    for (const channel of this.channels) {
      if (channel === sender || channel.name !== name || channel.closed) continue;
      // A BroadcastChannel delivers asynchronously.
      queueMicrotask(() => channel._deliver(structuredClone(copy)));
    }
  }
}

export class FakeBrowser {
  locks = new FakeLockManager();
  bus = new FakeBus();
  tabs = [];

  tab() {
    const tab = new FakeTab(this);
    this.tabs.push(tab);
    return tab;
  }
}

export class FakeTab {
  gone = false;

  constructor(browser) {
    const tab = this;
    this.browser = browser;
    this.locks = { request: (name, options, callback) => browser.locks.request(tab, name, options, callback) };
    this.channels = [];
    this.BroadcastChannel = class extends EventTarget {
      closed = false;

      constructor(name) {
        super();
        this.name = name;
        browser.bus.channels.add(this);
        tab.channels.push(this);
      }

      postMessage(data) {
        if (this.closed) throw new DOMException('closed', 'InvalidStateError');
        browser.bus.post(this, this.name, data);
      }

      close() {
        this.closed = true;
        browser.bus.channels.delete(this);
      }

      _deliver(data) {
        if (!this.closed && !tab.gone) this.dispatchEvent(new MessageEvent('message', { data }));
      }
    };
  }

  /** The tab closes or crashes: the browser releases its locks and channels. */
  crash() {
    this.gone = true;
    for (const channel of this.channels) channel.close();
    this.browser.locks.forget(this);
  }
}

/**
 * The server's side of real sockets that carry several sessions: it accepts
 * each handshake, sends the session's snapshot, answers `session.attach` with
 * the attached session's snapshot (or an error for an id it does not know),
 * and keeps, per socket, the sessions it carries.
 */
export class SharingServer {
  sockets = [];
  /** Ids `session.attach` refuses. */
  refuse = new Set();
  manual = false;

  create = (url) => {
    const socket = new FakeWebSocket(url);
    const own = decodeURIComponent(/\/sessions\/([^/]+)\/ws/.exec(url)[1]);
    socket.carried = new Set([own]);
    const send = socket.send.bind(socket);
    socket.send = (data) => {
      send(data);
      const message = JSON.parse(data);
      if (message.type === 'session.attach') {
        queueMicrotask(() => {
          if (socket.readyState !== FakeWebSocket.OPEN) return;
          if (this.refuse.has(message.session)) {
            socket.receive({ type: 'error', code: 'session_not_found', message: 'no such session', session: message.session });
            return;
          }
          socket.carried.add(message.session);
          socket.receive({ type: 'snapshot', session: { id: message.session, state: 'active', heartbeat_interval: 30 } });
        });
      } else if (message.type === 'session.detach') {
        socket.carried.delete(message.session);
      }
    };
    this.sockets.push(socket);
    socket.open = () => {
      if (socket.readyState !== FakeWebSocket.CONNECTING) return;
      socket.accept();
      socket.receive({ type: 'snapshot', session: { id: own, state: 'active', heartbeat_interval: 30 } });
    };
    // manual: the test opens each socket itself, with socket.open().
    if (!this.manual) queueMicrotask(socket.open);
    return socket;
  };

  /** Sockets open now. */
  get live() {
    return this.sockets.filter((s) => s.readyState === FakeWebSocket.OPEN);
  }

  /** Messages of `type` that clients sent over any socket. */
  sent(type) {
    return this.sockets.flatMap((s) => s.sent.filter((m) => m.type === type));
  }
}
