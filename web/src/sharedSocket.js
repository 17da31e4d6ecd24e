// SharedSocket: one WebSocket per browser, shared by the tabs of one origin.
//
// Every tab that opts in (`shareConnection: true`) runs one SharedSocket node.
// The nodes elect a leader through the Web Locks API: each asks for the same
// lock, the browser grants it to one, and hands it to the next in line the
// moment that tab closes or crashes. The leader holds the one WebSocket; the
// other tabs speak to it through a BroadcastChannel.
//
// What a tab gets is a `VirtualSocket`, shaped like a WebSocket (readyState,
// send, close, open/message/close events), so ChatSessionManager drives it as
// it drives a real one. Each tab keeps its own session: the leader opens the
// socket with the first session asked for and attaches every further one with
// `session.attach` (the server checks each as it checks a handshake); every
// message a tab sends is tagged with its session, and what the server says
// about a session (its snapshot, `ended`, an `error` that names it) goes to the
// tabs of that session only. Room messages (`presence.sync`, `presence.diff`)
// are the socket's, not a session's: they go to every tab that watches or
// joined the room. Watches are counted per room, so one tab's unwatch does not
// stop the room for another.
//
// Hand-over: when a new leader takes the lock, the links of the old one close
// with code 1012 (service restart) and their managers reconnect through the
// new leader at once. The server sees the old socket close and the sessions
// come back on the new one within its grace, so nobody is seen to leave.
//
// A tab that closes without a word (a crash) is noticed through a second lock
// that each node holds for its life: the leader queues for it and is granted it
// when the tab is gone, then detaches that tab's sessions.

const CLOSE_NORMAL = 1000;
const CLOSE_ABNORMAL = 1006;
/** The close code of a link whose leader went away: reconnect at once. */
export const CLOSE_HANDOVER = 1012;
const CONNECTING = 0;
const OPEN = 1;
const CLOSING = 2;
const CLOSED = 3;

/** How long a tab waits for a leader to open its link before it gives up (and falls back). */
export const DEFAULT_OPEN_TIMEOUT_MS = 3_000;
export const DEFAULT_SHARE_NAME = 'presence';

/** True when this browser has what sharing needs: Web Locks and BroadcastChannel. */
export function sharedSocketSupported(env = globalThis) {
  return typeof env?.navigator?.locks?.request === 'function' && typeof env?.BroadcastChannel === 'function';
}

function randomId() {
  const bytes = new Uint8Array(9);
  globalThis.crypto.getRandomValues(bytes);
  return Array.from(bytes, (b) => b.toString(16).padStart(2, '0')).join('');
}

function closeEvent(code, reason = '') {
  const event = new Event('close');
  return Object.assign(event, { code, reason, wasClean: code === CLOSE_NORMAL });
}

/**
 * A tab's view of the shared socket for one of its sessions. Built by
 * `SharedSocket.connect()`; the node drives its state.
 */
export class VirtualSocket extends EventTarget {
  readyState = CONNECTING;
  #send;
  #close;

  constructor(url, session, send, close) {
    super();
    this.url = url;
    this.session = session;
    this.#send = send;
    this.#close = close;
  }

  send(data) {
    if (this.readyState !== OPEN) throw new DOMException('The shared socket is not open.', 'InvalidStateError');
    this.#send(String(data));
  }

  close(code = CLOSE_NORMAL, reason = '') {
    if (this.readyState >= CLOSING) return;
    this.readyState = CLOSING;
    this.#close();
    // A WebSocket reports its close asynchronously; so does this.
    queueMicrotask(() => this._closed(code, reason));
  }

  _opened() {
    if (this.readyState !== CONNECTING) return;
    this.readyState = OPEN;
    this.dispatchEvent(new Event('open'));
  }

  _message(data) {
    if (this.readyState === OPEN) this.dispatchEvent(new MessageEvent('message', { data }));
  }

  _closed(code, reason = '') {
    if (this.readyState === CLOSED) return;
    this.readyState = CLOSED;
    this.dispatchEvent(closeEvent(code, reason));
  }
}

/**
 * The leader's side: the one real socket and every tab's link over it.
 * Each entry is one link (a tab's session); `deliver(kind, data, code)` reaches it.
 */
class Hub {
  #factory;
  #watchNode;
  #entries = new Map();
  #socket = null;
  #own = null;
  #ownGone = false;

  constructor(factory, watchNode) {
    this.#factory = factory;
    this.#watchNode = watchNode;
  }

  get size() {
    return this.#entries.size;
  }

  open(key, node, session, url, deliver) {
    if (this.#entries.has(key)) return;
    // rooms: each room this link watches (bit 1) or joined (bit 2).
    const entry = { key, node, session, url, deliver, state: 'waiting', rooms: new Map(), ended: false };
    this.#entries.set(key, entry);
    this.#watchNode(node);
    if (this.#socket === null) this.#connect(entry);
    else if (this.#socket.readyState === OPEN) this.#attach(entry);
  }

  send(key, data) {
    const entry = this.#entries.get(key);
    if (!entry || entry.state !== 'open' || this.#socket?.readyState !== OPEN) return;
    let message;
    try {
      message = JSON.parse(data);
    } catch {
      return; // The manager only sends JSON; anything else is not ours to forward.
    }
    if (!message || typeof message !== 'object') return;
    if (message.session === undefined) message.session = entry.session;
    const room = typeof message.room === 'string' ? message.room : null;
    switch (message.type) {
      case 'presence.watch':
      case 'presence.join':
        if (room !== null) entry.rooms.set(room, (entry.rooms.get(room) ?? 0) | (message.type === 'presence.join' ? 2 : 1));
        break;
      case 'presence.unwatch':
        if (room !== null) {
          this.#dropInterest(entry, room, 1);
          // Watching is the socket's: another tab may still want the room.
          if (this.#interested(room)) return;
        }
        break;
      case 'presence.leave':
        if (room !== null) {
          this.#dropInterest(entry, room, 2);
          this.#raw(message);
          // The server stops watching a room that none of the socket's
          // sessions is in any more; another tab may still watch it.
          if (this.#interested(room)) this.#raw({ type: 'presence.watch', room });
          return;
        }
        break;
      default:
        break;
    }
    this.#raw(message);
  }

  close(key) {
    const entry = this.#entries.get(key);
    if (!entry) return;
    this.#entries.delete(key);
    this.#release(entry);
  }

  /** Every link of a tab that is gone. */
  nodeGone(node) {
    for (const entry of [...this.#entries.values()]) {
      if (entry.node !== node) continue;
      this.#entries.delete(entry.key);
      this.#release(entry);
    }
  }

  /** The leader steps down (its node is disposed): every link closes. */
  dispose() {
    const socket = this.#socket;
    this.#socket = null;
    this.#closeAll(CLOSE_HANDOVER);
    if (socket) this.#shut(socket);
  }

  #release(entry) {
    const socket = this.#socket;
    if (socket === null) return;
    if (this.#entries.size === 0) {
      this.#socket = null;
      this.#shut(socket);
      return;
    }
    const sameSession = [...this.#entries.values()].some((other) => other.session === entry.session);
    if (!sameSession && entry.session === this.#own && !this.#ownGone) {
      // The server lets go of the socket's own session only when the socket
      // closes: the other tabs reconnect at once, over a new one.
      this.#socket = null;
      this.#shut(socket);
      this.#closeAll(CLOSE_HANDOVER);
      return;
    }
    if (socket.readyState !== OPEN) return;
    if (!sameSession && !entry.ended && entry.state !== 'waiting') {
      this.#raw({ type: 'session.detach', session: entry.session });
    }
    for (const room of entry.rooms.keys()) {
      if (!this.#interested(room)) this.#raw({ type: 'presence.unwatch', room });
    }
  }

  #dropInterest(entry, room, bit) {
    const left = (entry.rooms.get(room) ?? 0) & ~bit;
    if (left) entry.rooms.set(room, left);
    else entry.rooms.delete(room);
  }

  #interested(room) {
    for (const entry of this.#entries.values()) if (entry.rooms.has(room)) return true;
    return false;
  }

  #connect(first) {
    let socket;
    try {
      socket = this.#factory(first.url);
    } catch {
      this.#entries.delete(first.key);
      first.deliver('close', null, CLOSE_ABNORMAL);
      return;
    }
    this.#socket = socket;
    this.#own = first.session;
    this.#ownGone = false;
    socket.addEventListener('open', () => {
      if (socket !== this.#socket) return;
      for (const entry of this.#entries.values()) {
        if (entry.session === this.#own && entry.state === 'waiting') {
          entry.state = 'open';
          entry.deliver('open');
        } else if (entry.state === 'waiting') {
          this.#attach(entry);
        }
      }
    });
    socket.addEventListener('message', (event) => {
      if (socket === this.#socket) this.#onMessage(event.data);
    });
    socket.addEventListener('close', (event) => {
      if (socket !== this.#socket) return;
      this.#socket = null;
      // A server restarting closes with 1012 too; that is no hand-over between
      // tabs, and the tabs must fall back and back off as for any drop.
      const code = event.code === CLOSE_HANDOVER || !event.code ? CLOSE_ABNORMAL : event.code;
      this.#closeAll(code);
    });
  }

  #attach(entry) {
    entry.state = 'attaching';
    this.#raw({ type: 'session.attach', session: entry.session });
  }

  #onMessage(data) {
    let message;
    try {
      message = JSON.parse(data);
    } catch {
      // Not ours to judge: every tab's manager reports it.
      this.#broadcast(data, () => true);
      return;
    }
    const type = message?.type;
    let session = typeof message?.session === 'string' ? message.session : null;
    if (type === 'snapshot') session = message.session?.id ?? null;
    else if (type === 'ended' && session === null) {
      session = this.#own;
      this.#ownGone = true;
    }
    if (session !== null) {
      for (const entry of [...this.#entries.values()]) {
        if (entry.session !== session) continue;
        if (type === 'ended') entry.ended = true;
        if (entry.state === 'attaching') {
          if (type === 'error') {
            // Refused as a handshake would be: the tab falls back as it would.
            this.#entries.delete(entry.key);
            entry.deliver('close', null, CLOSE_ABNORMAL);
            continue;
          }
          entry.state = 'open';
          entry.deliver('open');
        }
        if (entry.state === 'open') entry.deliver('message', data);
      }
      return;
    }
    const room = typeof message?.room === 'string' ? message.room : null;
    this.#broadcast(data, (entry) => room === null || entry.rooms.has(room));
  }

  #broadcast(data, wanted) {
    for (const entry of this.#entries.values()) if (entry.state === 'open' && wanted(entry)) entry.deliver('message', data);
  }

  #closeAll(code) {
    const entries = [...this.#entries.values()];
    this.#entries.clear();
    for (const entry of entries) entry.deliver('close', null, code);
  }

  #raw(message) {
    try {
      this.#socket?.send(JSON.stringify(message));
    } catch {
      // Closing: its close event ends every link.
    }
  }

  #shut(socket) {
    try {
      if (socket.readyState === CONNECTING || socket.readyState === OPEN) socket.close(CLOSE_NORMAL);
    } catch {
      // Already closing.
    }
  }
}

/**
 * One tab's node of the shared socket. Use `sharedSocketFor()` to get the
 * tab's one node for a name; `new SharedSocket()` is for tests.
 *
 * @param {object} options
 * @param {string} [options.name] Names the lock and channel; tabs with the same name share.
 * @param {object} [options.locks] Default navigator.locks.
 * @param {Function} [options.BroadcastChannel] Default globalThis.BroadcastChannel.
 * @param {Function} [options.webSocketFactory] Opens the real socket; default `new WebSocket(url)`.
 * @param {number} [options.openTimeoutMs] How long a link waits for a leader.
 */
export class SharedSocket {
  #id = randomId();
  #name;
  #locks;
  #channel;
  #factory;
  #openTimeoutMs;
  #links = new Map();
  #hub = null;
  #leader = null;
  #ready;
  #release = null;
  #closed = false;
  #watched = new Set();

  constructor({
    name = DEFAULT_SHARE_NAME,
    locks = globalThis.navigator?.locks,
    BroadcastChannel: Channel = globalThis.BroadcastChannel,
    webSocketFactory = (url) => new WebSocket(url),
    openTimeoutMs = DEFAULT_OPEN_TIMEOUT_MS,
  } = {}) {
    this.#name = `presence.share:${name}`;
    this.#locks = locks;
    this.#factory = webSocketFactory;
    this.#openTimeoutMs = openTimeoutMs;
    this.#channel = new Channel(this.#name);
    this.#channel.addEventListener('message', (event) => this.#onChannel(event.data));
    const held = new Promise((resolve) => {
      this.#release = resolve;
    });
    this.#ready = new Promise((resolve) => {
      // This node's life lock: held until the tab goes, so the leader can tell.
      this.#locks.request(`${this.#name}:node:${this.#id}`, () => {
        resolve();
        return held;
      });
    }).then(() => {
      if (this.#closed) return;
      this.#locks.request(`${this.#name}:leader`, () => {
        if (this.#closed) return undefined;
        this.#lead();
        return held;
      });
      this.#post({ type: 'who' });
    });
  }

  /** This node's id (random per tab). */
  get id() {
    return this.#id;
  }

  /** True while this tab holds the one socket. */
  get isLeader() {
    return this.#hub !== null;
  }

  /** The leader this node knows of (its own id when it leads), or null. */
  get leader() {
    return this.#leader;
  }

  /** Resolves once this node holds its life lock and has asked for the leadership. */
  get ready() {
    return this.#ready;
  }

  /**
   * A socket-like link for `session`, carried by the leader's socket.
   * `url` is this tab's socket URL; the leader uses it when it opens the socket.
   */
  connect(url, session) {
    const linkId = randomId();
    const link = new VirtualSocket(
      url,
      session,
      (data) => this.#linkSend(linkId, data),
      () => this.#linkClose(linkId),
    );
    const state = { link, session, url, leader: null, timer: null };
    this.#links.set(linkId, state);
    state.timer = setTimeout(() => {
      state.timer = null;
      if (link.readyState !== CONNECTING) return;
      // Given up: the leader, if it has the link, lets go of it too.
      this.#linkClose(linkId);
      link._closed(CLOSE_ABNORMAL);
    }, this.#openTimeoutMs);
    this.#ready.then(() => this.#request(linkId));
    return link;
  }

  /** Leave the share: release both locks and the channel; this tab's links close. */
  close() {
    if (this.#closed) return;
    this.#closed = true;
    this.#hub?.dispose();
    this.#hub = null;
    for (const linkId of [...this.#links.keys()]) this.#drop(linkId, CLOSE_HANDOVER);
    this.#release?.();
    this.#channel.close();
  }

  // --- this tab's links --------------------------------------------------------

  #request(linkId) {
    const state = this.#links.get(linkId);
    if (!state || this.#closed || state.link.readyState !== CONNECTING) return;
    if (this.#hub) {
      state.leader = this.#id;
      this.#hub.open(`${this.#id}:${linkId}`, this.#id, state.session, state.url, (kind, data, code) => this.#deliver(linkId, kind, data, code));
    } else {
      // Whoever leads answers; with no leader yet, the request is sent again
      // when one announces itself.
      this.#post({ type: 'open', link: linkId, session: state.session, url: state.url });
    }
  }

  #linkSend(linkId, data) {
    const state = this.#links.get(linkId);
    if (!state) return;
    if (state.leader === this.#id && this.#hub) this.#hub.send(`${this.#id}:${linkId}`, data);
    else this.#post({ type: 'send', to: state.leader, link: linkId, data });
  }

  #linkClose(linkId) {
    const state = this.#links.get(linkId);
    if (!state) return;
    this.#links.delete(linkId);
    if (state.timer !== null) clearTimeout(state.timer);
    if (state.leader === this.#id && this.#hub) this.#hub.close(`${this.#id}:${linkId}`);
    else this.#post({ type: 'close', to: state.leader, link: linkId });
  }

  #deliver(linkId, kind, data, code) {
    const state = this.#links.get(linkId);
    if (!state) return;
    if (kind === 'open') {
      if (state.timer !== null) clearTimeout(state.timer);
      state.timer = null;
      state.link._opened();
    } else if (kind === 'message') {
      state.link._message(data);
    } else if (kind === 'close') {
      this.#drop(linkId, code ?? CLOSE_ABNORMAL);
    }
  }

  #drop(linkId, code) {
    const state = this.#links.get(linkId);
    if (!state) return;
    this.#links.delete(linkId);
    if (state.timer !== null) clearTimeout(state.timer);
    state.link._closed(code);
  }

  // --- leadership --------------------------------------------------------------

  #lead() {
    this.#hub = new Hub(this.#factory, (node) => this.#watchNode(node));
    this.#leader = this.#id;
    // Links carried by the previous leader are gone with it.
    for (const [linkId, state] of [...this.#links]) {
      if (state.leader !== null) this.#drop(linkId, CLOSE_HANDOVER);
      else this.#request(linkId);
    }
    this.#post({ type: 'leader' });
  }

  #watchNode(node) {
    if (node === this.#id || this.#watched.has(node)) return;
    this.#watched.add(node);
    // Granted only once that tab is gone (it holds the lock for its life).
    this.#locks.request(`${this.#name}:node:${node}`, () => {
      this.#watched.delete(node);
      this.#hub?.nodeGone(node);
    });
  }

  #post(message) {
    if (this.#closed) return;
    try {
      this.#channel.postMessage({ ...message, from: this.#id });
    } catch {
      // A closed channel: this node is going away.
    }
  }

  #onChannel(message) {
    if (!message || typeof message !== 'object' || this.#closed) return;
    const { type, from } = message;
    if (typeof from !== 'string' || from === this.#id) return;
    const hub = this.#hub;
    if (hub) {
      if (type === 'who') {
        this.#post({ type: 'leader' });
        return;
      }
      if (typeof message.link !== 'string') return;
      const key = `${from}:${message.link}`;
      if (type === 'open' && typeof message.session === 'string') {
        hub.open(key, from, message.session, String(message.url), (kind, data, code) =>
          this.#post({ type: 'event', to: from, link: message.link, kind, data, code }),
        );
      } else if (type === 'send' && message.to === this.#id) hub.send(key, message.data);
      else if (type === 'close' && message.to === this.#id) hub.close(key);
      return;
    }
    if (type === 'leader') {
      this.#leader = from;
      for (const [linkId, state] of [...this.#links]) {
        if (state.leader === null) this.#request(linkId);
        else if (state.leader !== from) this.#drop(linkId, CLOSE_HANDOVER);
      }
    } else if (type === 'event' && message.to === this.#id) {
      const state = this.#links.get(message.link);
      if (!state) {
        // A link this tab closed already: tell the leader to let go of it too.
        if (message.kind === 'open') this.#post({ type: 'close', to: from, link: message.link });
        return;
      }
      if (state.leader === null) state.leader = from;
      if (state.leader === from) this.#deliver(message.link, message.kind, message.data, message.code);
    }
  }
}

// By lock manager, then name: a tab has one navigator.locks, so one node per
// name per tab (tests give each pretend tab its own lock manager).
const nodes = new WeakMap();

/**
 * This tab's one node for `name` (made on first use, kept for the tab's life),
 * so that every manager of the tab shares it.
 */
export function sharedSocketFor(options = {}) {
  const name = options.name ?? DEFAULT_SHARE_NAME;
  const locks = options.locks ?? globalThis.navigator?.locks;
  let byName = nodes.get(locks);
  if (!byName) {
    byName = new Map();
    nodes.set(locks, byName);
  }
  let node = byName.get(name);
  if (!node) {
    node = new SharedSocket({ ...options, name, locks });
    byName.set(name, node);
  }
  return node;
}
