// Traverse browser SDK — signaling protocol v1 (docs/protocol.md), served by the binary at /sdk/traverse.js.
//
// Model: one `Room` owns one WebSocket at a time. The socket is disposable, the session is not: when a socket drops
// the room reconnects with jittered backoff, sends `resume` with the last stream `seq` it processed, and the server
// replays what it missed. Outbound messages are queued while no socket is usable and flushed, in order, once the
// session is back. Stream messages are deduplicated by `seq`, so a replay never reaches the app twice. The other
// direction works the same way: every outgoing `signal` and `broadcast` carries the session's own client `seq` and
// is kept until the server acknowledges it (`ack` in `pong` and `resumed`); after a resume whatever the server has
// not handled is resent, so a message written into a socket that was already dead is not lost either.
//
// On top of the room, `room.connect(peerId)` returns a `Peer`: an RTCPeerConnection that negotiates itself with
// MDN's "perfect negotiation" through the room's `signal` messages, with the join's `iceServers` applied and a
// data channel ready to use. Dependency-free; no build step. Documentation: docs/sdk.md.

/** SDK version; the protocol version it speaks is `PROTOCOL`. */
export const VERSION = '0.1.0';
export const PROTOCOL = 'traverse.v1';

/**
 * Reconnect delays in milliseconds (before jitter): the n-th attempt after a drop waits `RECONNECT_DELAYS_MS[n]`,
 * the last one repeats. Same schedule as LiveKit's client.
 */
export const RECONNECT_DELAYS_MS = Object.freeze([0, 300, 1200, 2700, 4800, 7000]);

/** Server messages that belong to the session's numbered stream (replayed after a resume). */
const STREAM_TYPES = new Set(['joined', 'peer-joined', 'peer-left', 'signal', 'broadcast', 'undeliverable', 'error']);

/**
 * @typedef {{urls: string | string[], username?: string, credential?: string}} IceServer
 * @typedef {{id: string, meta?: any}} PeerInfo
 * @typedef {'connecting' | 'open' | 'reconnecting' | 'closed'} RoomState
 *
 * @typedef {object} PeerOptions
 * @property {boolean} [dataChannel=true] open the SDK's data channel (negotiated, id 0, label "traverse"); both sides
 *   must agree
 * @property {RTCIceTransportPolicy} [iceTransportPolicy] `'relay'` forces TURN
 * @property {IceServer[] | ((servers: IceServer[]) => IceServer[])} [iceServers] replaces the join's servers, or
 *   filters them (see `filterIceServers`)
 * @property {MediaStream} [media] tracks to send
 * @property {RTCDataChannelInit} [channelOptions] extra options for the data channel (e.g. `{ordered: false}`)
 * @property {boolean} [restartOnFailure=true] call `restartIce()` when ICE fails
 *
 * @typedef {object} ConnectOptions
 * @property {string} room room name
 * @property {string} [url] WebSocket URL (`wss://host/ws`); http(s) URLs are converted. Default: `/ws` beside this
 *   module's own URL, else beside the page
 * @property {string} [token] signaling token (JWT), when the server has a signaling secret
 * @property {any} [meta] public metadata shown to the other peers (at most 1 KiB of JSON)
 * @property {boolean} [reconnect=true] reconnect and resume after a drop
 * @property {number[]} [reconnectDelaysMs] override `RECONNECT_DELAYS_MS`
 * @property {number} [maxReconnectAttempts=Infinity] give up (event `closed`) after this many failed attempts in a row
 * @property {number} [heartbeatMs] ping interval; default: the server's `heartbeatMs` from `joined`
 * @property {number} [deadAfterMs] declare the socket dead after this long without any server message; default
 *   2 × heartbeat + 2 s
 * @property {number} [connectTimeoutMs=10000] bound on opening a socket and getting `joined`/`resumed`
 * @property {number} [maxQueue=1000] bound on messages held by the SDK: queued while reconnecting, plus sent but not
 *   yet acknowledged by the server
 * @property {number} [maxMessageBytes=65536] refuse larger messages locally (the server closes with 1009)
 * @property {boolean} [subprotocol=true] ask for the WebSocket subprotocol `traverse.v1` (the server must echo it)
 * @property {boolean} [autoAccept=true] answer offers from peers you did not `connect()` to (event `peer-connection`)
 * @property {PeerOptions | ((peerId: string) => PeerOptions)} [peerOptions] options for peers created by
 *   `autoAccept`
 */

/**
 * Join a room. Resolves once the server answered `joined`; rejects with a `TraverseError` (with `.code`, e.g.
 * `token-invalid`, `room-full`) if the join is refused.
 * @param {ConnectOptions} options
 * @returns {Promise<Room>}
 */
export async function connect(options) {
  const room = new Room(options);
  await room._start();
  return room;
}

/** An error with a stable `code` from the protocol (or `connect-failed`, `timeout`, `closed` from the SDK). */
export class TraverseError extends Error {
  /** @param {string} code @param {string} message @param {object} [extra] */
  constructor(code, message, extra) {
    super(message);
    this.name = 'TraverseError';
    /** @type {string} */
    this.code = code;
    Object.assign(this, extra);
  }
}

/**
 * Keep only the URLs for which `keep(url)` is true; drop servers left without URLs.
 * `filterIceServers(room.iceServers, (u) => u.startsWith('turns:'))` forces TURN over TLS.
 * @param {IceServer[]} servers @param {(url: string) => boolean} keep @returns {IceServer[]}
 */
export function filterIceServers(servers, keep) {
  const out = [];
  for (const s of servers || []) {
    const urls = (Array.isArray(s.urls) ? s.urls : [s.urls]).filter(keep);
    if (urls.length) out.push({ ...s, urls });
  }
  return out;
}

/** @param {string | undefined} url */
function resolveWsUrl(url) {
  let base;
  try {
    base = new URL(import.meta.url);
    if (base.protocol !== 'http:' && base.protocol !== 'https:') base = undefined;
  } catch {
    base = undefined;
  }
  if (!base && typeof location !== 'undefined') base = new URL(location.href);
  const u = new URL(url || '/ws', base);
  if (u.protocol === 'http:') u.protocol = 'ws:';
  if (u.protocol === 'https:') u.protocol = 'wss:';
  return u;
}

const now = () => (typeof performance !== 'undefined' ? performance.now() : Date.now());

/**
 * A joined room. Events (listen with `room.on(name, fn)` — `fn` gets the event's detail — or `addEventListener`,
 * where the detail is `event.detail`):
 * - `joined` `{peerId, peers, rejoined}` — also after a fresh re-join when a resume failed (new `peerId`)
 * - `peer-joined` `{peer: {id, meta}}`, `peer-left` `{peerId}`
 * - `signal` `{from, data, seq, internal}` — `internal` when the SDK's peer connection consumed it
 * - `broadcast` `{from, data, seq}`
 * - `undeliverable` `{to, id, reason}` — a `signal` you sent could not be delivered: the recipient left
 *   (`peer-left`), or the server's memory budget for it is full (`queue-full` its session, `source-full` its address,
 *   `server-full` the server; retry later); reason `session-lost` (with
 *   `type` and `data`, for a `broadcast` too) when a failed resume ended the session before the server acknowledged
 *   the message: it may or may not have arrived
 * - `error` `{code, message, id?}` — from the server (`id`: the message it is about, e.g. `unknown-peer`), or from the
 *   SDK (`queue-full`, `negotiation-failed`, `sequence-gap`)
 * - `reconnecting` `{attempt, delayMs, code, reason}`, `resumed` `{replayed, seq, ack}`
 * - `closed` `{code, reason}` — final; the room is unusable
 * - `peer-connection` `{peer}` — a `Peer` created because a peer sent an offer (see `autoAccept`)
 */
export class Room extends EventTarget {
  /** @param {ConnectOptions} options */
  constructor(options) {
    super();
    if (!options || typeof options.room !== 'string' || !options.room) {
      throw new TypeError('Traverse.connect: options.room (a non-empty string) is required');
    }
    /** @private */ this._opts = {
      reconnect: true,
      reconnectDelaysMs: RECONNECT_DELAYS_MS,
      maxReconnectAttempts: Infinity,
      connectTimeoutMs: 10000,
      maxQueue: 1000,
      maxMessageBytes: 65536,
      autoAccept: true,
      ...options,
    };
    /** WebSocket URL in use. */
    this.url = resolveWsUrl(options.url).toString();
    /** Room name. */
    this.room = options.room;
    /** @type {string | null} this peer's id (changes only after a failed resume and a fresh join) */
    this.peerId = null;
    /** @type {string | null} */
    this.session = null;
    /** @type {Map<string, PeerInfo>} other peers in the room, by id */
    this.peers = new Map();
    /** @type {IceServer[]} STUN/TURN servers with a credential minted for this peer */
    this.iceServers = [];
    /** @type {string[]} capabilities granted by the join token (`caps`), passed through for the app */
    this.caps = [];
    /** @type {RoomState} */
    this.state = 'connecting';
    /** Highest stream `seq` processed. */
    this.lastSeq = 0;
    this.heartbeatMs = 10000;
    this.resumeGraceMs = 30000;
    /** Counters, for diagnostics and tests. */
    this.stats = { reconnects: 0, resumes: 0, rejoins: 0, duplicates: 0, gaps: 0, queued: 0, resent: 0, lost: 0 };
    /** @type {Map<string, Peer>} peer connections by remote peer id */
    this.connections = new Map();

    /** @private @type {WebSocket | null} */ this._ws = null;
    /** @private @type {'join' | 'resume' | null} what the current socket is doing before it is usable */
    this._handshake = null;
    /** @private */ this._usable = false;
    /** @private @type {{msg: object, internal: boolean}[]} not sent yet (no socket usable) */ this._outbox = [];
    /** @private @type {{msg: any, internal: boolean}[]} sent with a client `seq`, not yet acknowledged, in order */
    this._unacked = [];
    /** @private last client `seq` given out in this session */ this._clientSeq = 0;
    /** @private a ping asking for an early `ack` is on its way */ this._ackAsked = false;
    /** @private */ this._attempt = 0;
    /** @private */ this._timers = new Set();
    /** @private */ this._hbTimer = null;
    /** @private */ this._lastHeard = 0;
    /** @private */ this._msgId = 0;
    /** @private */ this._onOnline = () => {
      if (this.state === 'reconnecting' && !this._ws) this._reconnectNow();
    };
    if (typeof addEventListener === 'function') addEventListener('online', this._onOnline);
  }

  /**
   * Listen to an event; `fn` receives the event's detail. Returns a function that removes the listener.
   * @param {string} name @param {(detail: any) => void} fn @returns {() => void}
   */
  on(name, fn) {
    const h = (/** @type {any} */ e) => fn(e.detail);
    this.addEventListener(name, h);
    return () => this.removeEventListener(name, h);
  }

  /**
   * Resolves with the detail of the next `name` event for which `pred` holds, or rejects after `timeoutMs`.
   * @param {string} name @param {(detail: any) => boolean} [pred] @param {number} [timeoutMs]
   */
  once(name, pred = () => true, timeoutMs = 30000) {
    return new Promise((resolve, reject) => {
      const t = setTimeout(() => {
        off();
        reject(new TraverseError('timeout', `no '${name}' event within ${timeoutMs} ms`));
      }, timeoutMs);
      const off = this.on(name, (d) => {
        if (!pred(d)) return;
        clearTimeout(t);
        off();
        resolve(d);
      });
    });
  }

  /** Messages sent but not yet acknowledged by the server (resent after a resume if the server missed them). */
  get unacknowledged() {
    return this._unacked.length;
  }

  /**
   * Send `data` to one peer of the room. Queued while reconnecting. Returns the message id, which comes back in an
   * `undeliverable` event if the message cannot be delivered, or in an `error` event (`unknown-peer`).
   * @param {string} to @param {any} data @param {{id?: string}} [opts] @returns {string}
   */
  signal(to, data, opts = {}) {
    const id = opts.id ?? `m-${++this._msgId}`;
    this._send({ type: 'signal', to, data, id }, false);
    return id;
  }

  /** Send `data` to every other peer of the room. Queued while reconnecting. @param {any} data */
  broadcast(data) {
    this._send({ type: 'broadcast', data }, false);
  }

  /**
   * Leave the room: close every peer connection, tell the server (the others see `peer-left` at once), close the
   * socket. Resolves when the socket is closed (at most ~1 s).
   */
  async leave() {
    if (this.state === 'closed') return;
    const ws = this._ws;
    if (ws && ws.readyState === WebSocket.OPEN && this._usable) {
      try {
        this._write(ws, JSON.stringify({ type: 'leave' }));
      } catch {
        /* socket already going */
      }
      await new Promise((resolve) => {
        const t = setTimeout(resolve, 1000);
        ws.addEventListener('close', () => {
          clearTimeout(t);
          resolve(undefined);
        });
        // The server closes after `leave`; closing ourselves as well is harmless and bounds the wait.
        setTimeout(() => ws.readyState === WebSocket.OPEN && ws.close(1000, 'leave'), 200);
      });
    }
    this._finish(1000, 'left');
  }

  /**
   * Open (or return) a peer connection to `peerId`, negotiated through this room.
   * @param {string} peerId @param {PeerOptions} [options] @returns {Peer}
   */
  connect(peerId, options = {}) {
    if (this.state === 'closed') throw new TraverseError('closed', 'the room is closed');
    if (peerId === this.peerId) throw new TypeError('cannot connect to yourself');
    const existing = this.connections.get(peerId);
    if (existing && !existing.closed) return existing;
    const peer = new Peer(this, peerId, options, true);
    this.connections.set(peerId, peer);
    return peer;
  }

  /**
   * Test hook: drop the socket without `leave`, as a network failure would. The server keeps the session for its
   * grace period; the room reconnects and resumes, after `holdMs` more than the backoff says (an outage that lasts).
   * With `undetectedMs`, the socket first dies silently for that long: what the room writes is lost and nothing is
   * read, while the room still believes the socket works (a dead path not yet detected); then it is dropped.
   * @param {number} [holdMs] @param {number} [undetectedMs]
   */
  _debugDropSocket(holdMs = 0, undetectedMs = 0) {
    const ws = this._ws;
    if (!ws) return false;
    if (undetectedMs > 0) {
      /** @type {any} */ (ws)._debugDead = true;
      this._later(() => {
        if (this._ws === ws) this._debugDropSocket(holdMs);
      }, undetectedMs);
      return true;
    }
    this._debugHoldMs = holdMs;
    this._detach(ws);
    try {
      ws.close(4999, 'debug drop');
    } catch {
      /* already closed */
    }
    this._onDrop(1006, 'debug drop');
    return true;
  }

  // ---- internals --------------------------------------------------------------------------------------------

  /** @private */
  _emit(name, detail) {
    this.dispatchEvent(new CustomEvent(name, { detail }));
  }

  /** @private */
  _later(fn, ms) {
    const t = setTimeout(() => {
      this._timers.delete(t);
      fn();
    }, ms);
    this._timers.add(t);
    return t;
  }

  /** @private */
  _clearLater(t) {
    clearTimeout(t);
    this._timers.delete(t);
  }

  /** First join; resolves on `joined`, rejects on refusal. @private */
  _start() {
    return new Promise((resolve, reject) => {
      this._startWaiter = { resolve, reject };
      this._open('join');
    });
  }

  /** @private */
  _wsUrl(withJoinQuery) {
    const u = new URL(this.url);
    if (withJoinQuery) {
      // Checked before the upgrade: a refused join costs no socket (docs/protocol.md, Endpoints).
      u.searchParams.set('room', this.room);
      if (this._opts.token) u.searchParams.set('token', this._opts.token);
    }
    return u.toString();
  }

  /** Open a socket for a `join` or a `resume`. @private @param {'join' | 'resume'} kind */
  _open(kind) {
    this._handshake = kind;
    this._usable = false;
    let ws;
    try {
      ws = new WebSocket(this._wsUrl(kind === 'join'), this._opts.subprotocol === false ? undefined : PROTOCOL);
    } catch (err) {
      if (!this._failStart(new TraverseError('connect-failed', String(err)))) {
        this._later(() => this._onDrop(1006, String(err)), 0);
      }
      return;
    }
    this._ws = ws;
    let opened = false;
    const timeout = this._later(() => {
      if (this._ws !== ws || this._usable) return;
      this._detach(ws);
      try {
        ws.close(4000, 'handshake timeout');
      } catch {
        /* ignore */
      }
      this._onDrop(1006, 'handshake timeout', opened);
    }, this._opts.connectTimeoutMs);
    /** @type {any} */ (ws)._traverse = {
      open: () => {
        opened = true;
        this._lastHeard = now();
        if (kind === 'join') {
          const join = { type: 'join', room: this.room };
          if (this._opts.token) join.token = this._opts.token;
          if (this._opts.meta !== undefined) join.meta = this._opts.meta;
          this.lastSeq = 0;
          ws.send(JSON.stringify(join));
        } else {
          ws.send(JSON.stringify({ type: 'resume', session: this.session, lastSeq: this.lastSeq }));
        }
      },
      message: (/** @type {MessageEvent} */ e) => {
        if (this._ws !== ws || /** @type {any} */ (ws)._debugDead) return;
        this._lastHeard = now();
        let msg;
        try {
          msg = JSON.parse(e.data);
        } catch {
          this._emit('error', { code: 'bad-json', message: 'the server sent a frame that is not JSON' });
          return;
        }
        if (this._usable === false && (msg.type === 'joined' || msg.type === 'resumed')) this._clearLater(timeout);
        this._handle(msg);
      },
      close: (/** @type {CloseEvent} */ e) => {
        this._clearLater(timeout);
        if (this._ws !== ws) return;
        this._detach(ws);
        this._onDrop(e.code, e.reason, opened);
      },
    };
    ws.addEventListener('open', /** @type {any} */ (ws)._traverse.open);
    ws.addEventListener('message', /** @type {any} */ (ws)._traverse.message);
    ws.addEventListener('close', /** @type {any} */ (ws)._traverse.close);
  }

  /** Stop listening to a socket we are done with. @private @param {WebSocket} ws */
  _detach(ws) {
    const h = /** @type {any} */ (ws)._traverse;
    if (h) {
      ws.removeEventListener('open', h.open);
      ws.removeEventListener('message', h.message);
      ws.removeEventListener('close', h.close);
    }
    if (this._ws === ws) {
      this._ws = null;
      this._usable = false;
      this._stopHeartbeat();
    }
  }

  /** @private */
  _failStart(err) {
    const w = this._startWaiter;
    if (!w) return false;
    this._startWaiter = null;
    this._finish(err.closeCode ?? 1006, err.message, true);
    w.reject(err);
    return true;
  }

  /** @private @param {object} msg */
  _handle(msg) {
    const type = msg && msg.type;
    // An error answering a `join` or `resume` (token refused, resume-failed) is not part of a stream we follow.
    const handshakeError = type === 'error' && this._handshake !== null;
    if (STREAM_TYPES.has(type) && typeof msg.seq === 'number' && !handshakeError) {
      if (type === 'joined' && this._handshake === 'join') {
        // A new session: its stream starts again at 1.
        this.lastSeq = 0;
      }
      if (msg.seq <= this.lastSeq) {
        this.stats.duplicates++;
        return;
      }
      if (msg.seq !== this.lastSeq + 1) {
        this.stats.gaps++;
        this._emit('error', {
          code: 'sequence-gap',
          message: `stream jumped from seq ${this.lastSeq} to ${msg.seq}`,
          expected: this.lastSeq + 1,
          got: msg.seq,
        });
      }
      this.lastSeq = msg.seq;
    }
    switch (type) {
      case 'joined':
        return this._onJoined(msg);
      case 'resumed':
        return this._onResumed(msg);
      case 'pong':
        this._ackAsked = false;
        if (typeof msg.ack === 'number') this._acknowledge(msg.ack);
        return;
      case 'peer-joined':
        if (msg.peer && typeof msg.peer.id === 'string') this.peers.set(msg.peer.id, msg.peer);
        return this._emit('peer-joined', { peer: msg.peer, seq: msg.seq });
      case 'peer-left': {
        this.peers.delete(msg.peerId);
        const pc = this.connections.get(msg.peerId);
        if (pc) pc._close(false);
        return this._emit('peer-left', { peerId: msg.peerId, seq: msg.seq });
      }
      case 'signal':
        return this._onSignal(msg);
      case 'broadcast':
        return this._emit('broadcast', { from: msg.from, data: msg.data, seq: msg.seq });
      case 'undeliverable':
        return this._emit('undeliverable', { to: msg.to, id: msg.id, reason: msg.reason, seq: msg.seq });
      case 'error':
        return this._onError(msg);
      default:
        // Unknown server message: ignore (forward compatibility).
        return;
    }
  }

  /** @private */
  _onJoined(msg) {
    const rejoined = this.peerId !== null;
    if (rejoined) {
      // A failed resume ended the old session: its peer connections belong to an identity that is gone, and so do
      // the negotiation messages queued for them.
      for (const pc of this.connections.values()) pc._close(false);
      this.connections.clear();
      this._outbox = this._outbox.filter((m) => !m.internal);
      this.stats.rejoins++;
    }
    // A new session numbers its messages from 1 again. What the old one sent and never saw acknowledged may or may
    // not have arrived: it is reported below, not resent (the app decides, knowing it is a new identity now).
    const lost = this._unacked.filter((m) => !m.internal);
    this._unacked = [];
    this._clientSeq = 0;
    this.session = msg.session;
    this.peerId = msg.peerId;
    this.peers = new Map((msg.peers || []).map((p) => [p.id, p]));
    this.iceServers = msg.iceServers || [];
    this.caps = Array.isArray(msg.caps) ? msg.caps : [];
    if (typeof msg.heartbeatMs === 'number') this.heartbeatMs = msg.heartbeatMs;
    if (typeof msg.resumeGraceMs === 'number') this.resumeGraceMs = msg.resumeGraceMs;
    this._becameUsable();
    this._emit('joined', { peerId: this.peerId, peers: [...this.peers.values()], rejoined, seq: msg.seq });
    for (const { msg: m } of lost) {
      this.stats.lost++;
      this._emit('undeliverable', { to: m.to, id: m.id, reason: 'session-lost', type: m.type, data: m.data });
    }
    const w = this._startWaiter;
    if (w) {
      this._startWaiter = null;
      w.resolve(this);
    }
  }

  /** @private */
  _onResumed(msg) {
    this.stats.resumes++;
    if (typeof msg.ack === 'number') {
      this._acknowledge(msg.ack);
    } else {
      // A server without client sequence numbers would deliver a resent message twice: resend nothing.
      this._unacked = [];
    }
    // What the server has not handled (written into the dead socket) goes first, in order, then the queue.
    this._becameUsable(this._unacked);
    this._emit('resumed', { replayed: msg.replayed, seq: msg.seq, peerId: msg.peerId, ack: msg.ack });
  }

  /** The server has handled every client `seq` up to `ack`. @private @param {number} ack */
  _acknowledge(ack) {
    let n = 0;
    while (n < this._unacked.length && this._unacked[n].msg.seq <= ack) n++;
    if (n) this._unacked.splice(0, n);
  }

  /**
   * The socket is joined or resumed: heartbeats on, unacknowledged messages (after a resume) resent, queued
   * messages out. @private @param {{msg: any, internal: boolean}[]} [resend]
   */
  _becameUsable(resend = []) {
    this._handshake = null;
    this._usable = true;
    this._attempt = 0;
    this._ackAsked = false;
    this.state = 'open';
    this._startHeartbeat();
    const ws = /** @type {WebSocket} */ (this._ws);
    for (const m of resend) {
      this.stats.resent++;
      this._write(ws, JSON.stringify(m.msg));
    }
    const queued = this._outbox;
    this._outbox = [];
    for (const m of queued) this._transmit(m.msg, m.internal);
  }

  /** @private */
  _onError(msg) {
    const detail = { code: msg.code, message: msg.message, seq: msg.seq };
    if (typeof msg.id === 'string') detail.id = msg.id;
    if (this._startWaiter && this._handshake === 'join') {
      // A refused join (token, room full, …): the server closes right after; report the code to `connect()`.
      const err = new TraverseError(msg.code || 'join-failed', msg.message || 'join refused');
      this._failStart(err);
      return;
    }
    if (msg.code === 'resume-failed') {
      // The server closes with 4201 next; the close handler joins again.
      this._resumeFailed = true;
    }
    this._emit('error', detail);
  }

  /** @private */
  _onSignal(msg) {
    const d = msg.data;
    const isNegotiation = d && typeof d === 'object' && ('sdp' in d || 'candidate' in d || 'bye' in d);
    let peer = isNegotiation ? this.connections.get(msg.from) : undefined;
    if (isNegotiation && (!peer || peer.closed) && d.sdp && d.sdp.type === 'offer' && this._opts.autoAccept) {
      const po = this._opts.peerOptions;
      const options = typeof po === 'function' ? po(msg.from) : po || {};
      peer = new Peer(this, msg.from, options, false);
      this.connections.set(msg.from, peer);
      this._emit('peer-connection', { peer, peerId: msg.from });
    }
    const internal = !!(peer && !peer.closed);
    if (internal) peer._onSignal(d);
    this._emit('signal', { from: msg.from, data: d, seq: msg.seq, internal });
  }

  /** @private @param {object} msg @param {boolean} internal */
  _send(msg, internal) {
    if (this.state === 'closed') throw new TraverseError('closed', 'the room is closed');
    const text = JSON.stringify(msg);
    if (this._opts.maxMessageBytes && text.length > this._opts.maxMessageBytes / 4) {
      const bytes = new TextEncoder().encode(text).length;
      if (bytes > this._opts.maxMessageBytes) {
        throw new TraverseError('too-large', `message of ${bytes} bytes exceeds ${this._opts.maxMessageBytes}`);
      }
    }
    if (this._outbox.length + this._unacked.length >= this._opts.maxQueue) {
      this._emit('error', {
        code: 'queue-full',
        message: `${this._opts.maxQueue} messages are waiting to be sent or acknowledged; message dropped`,
        id: msg.id,
      });
      return;
    }
    const ws = this._ws;
    if (ws && this._usable && ws.readyState === WebSocket.OPEN) {
      this._transmit(msg, internal);
      return;
    }
    this._outbox.push({ msg, internal });
    this.stats.queued++;
  }

  /**
   * Number `msg` with the session's next client `seq`, keep it until acknowledged, write it to the usable socket.
   * @private @param {object} msg @param {boolean} internal
   */
  _transmit(msg, internal) {
    const numbered = { ...msg, seq: ++this._clientSeq };
    this._unacked.push({ msg: numbered, internal });
    const ws = /** @type {WebSocket} */ (this._ws);
    this._write(ws, JSON.stringify(numbered));
    if (!this._ackAsked && this._unacked.length >= Math.max(1, this._opts.maxQueue >> 1)) {
      // Half the bound is waiting for an acknowledgement: ask for one now rather than at the next heartbeat.
      this._ackAsked = true;
      this._write(ws, JSON.stringify({ type: 'ping', ack: this.lastSeq }));
    }
  }

  /** Write a frame (nothing when the debug hook made the socket silently dead). @private */
  _write(/** @type {WebSocket} */ ws, /** @type {string} */ text) {
    if (/** @type {any} */ (ws)._debugDead) return;
    ws.send(text);
  }

  /** @private */
  _startHeartbeat() {
    this._stopHeartbeat();
    const every = this._opts.heartbeatMs ?? this.heartbeatMs;
    const deadAfter = this._opts.deadAfterMs ?? 2 * every + 2000;
    this._lastHeard = now();
    this._hbTimer = setInterval(() => {
      const ws = this._ws;
      if (!ws || !this._usable) return;
      if (now() - this._lastHeard > deadAfter) {
        // No pong (nor anything else) for too long: the path is dead even if the socket does not know yet.
        this._detach(ws);
        try {
          ws.close(4000, 'heartbeat timeout');
        } catch {
          /* ignore */
        }
        this._onDrop(4200, 'no pong from server', true);
        return;
      }
      if (ws.readyState === WebSocket.OPEN) this._write(ws, JSON.stringify({ type: 'ping', ack: this.lastSeq }));
    }, Math.min(every, 1 << 30));
  }

  /** @private */
  _stopHeartbeat() {
    if (this._hbTimer !== null) clearInterval(this._hbTimer);
    this._hbTimer = null;
  }

  /**
   * The current socket is gone. Decide by close code (docs/protocol.md, Close codes) whether to retry, how soon, and
   * whether to resume or join afresh.
   * @private @param {number} code @param {string} reason @param {boolean} [opened]
   */
  async _onDrop(code, reason, opened = true) {
    if (this.state === 'closed') return;
    this._usable = false;
    this._stopHeartbeat();
    if (this._startWaiter) {
      // Never joined. Ask the HTTP twin of the join why, since browsers hide a refused upgrade's status.
      const why = opened ? null : await this._joinCheck();
      const err = why || new TraverseError('connect-failed', `socket closed (${code}) before joining: ${reason || ''}`);
      err.closeCode = code;
      this._failStart(err);
      return;
    }
    if (!this._opts.reconnect || (code >= 4000 && code <= 4099) || code === 1000) {
      this._finish(code, reason || 'closed by server');
      return;
    }
    if (code === 4201 || this._resumeFailed) {
      this._resumeFailed = false;
      this.session = null; // join afresh
    }
    if (this._attempt >= this._opts.maxReconnectAttempts) {
      this._finish(code, `gave up after ${this._attempt} reconnect attempts`);
      return;
    }
    const delays = this._opts.reconnectDelaysMs;
    // 4100–4199: retry with backoff (skip the immediate retry); 4200–4299 and network drops: start at 0.
    const step = this._attempt + (code >= 4100 && code <= 4199 ? 1 : 0);
    const base = delays[Math.min(step, delays.length - 1)];
    const delayMs = Math.round(base * (0.8 + 0.4 * Math.random())) + (this._debugHoldMs || 0);
    this._debugHoldMs = 0;
    this._attempt++;
    this.stats.reconnects++;
    this.state = 'reconnecting';
    this._emit('reconnecting', { attempt: this._attempt, delayMs, code, reason });
    this._retryTimer = this._later(() => this._reconnectNow(), delayMs);
  }

  /** @private */
  _reconnectNow() {
    if (this.state !== 'reconnecting') return;
    if (this._retryTimer) this._clearLater(this._retryTimer);
    this._retryTimer = null;
    if (this._ws) return;
    this._open(this.session ? 'resume' : 'join');
  }

  /** `GET /api/join-check`: the reason a join would be refused, or null. @private */
  async _joinCheck() {
    try {
      const u = new URL(this.url);
      u.protocol = u.protocol === 'wss:' ? 'https:' : 'http:';
      u.pathname = '/api/join-check';
      u.search = '';
      u.searchParams.set('room', this.room);
      if (this._opts.token) u.searchParams.set('token', this._opts.token);
      const ctl = typeof AbortController !== 'undefined' ? new AbortController() : null;
      const t = setTimeout(() => ctl && ctl.abort(), 3000);
      const res = await fetch(u, { signal: ctl ? ctl.signal : undefined });
      clearTimeout(t);
      const body = await res.json().catch(() => null);
      if (res.ok && body && body.ok) return null;
      return new TraverseError(body?.code || `http-${res.status}`, body?.message || `join refused (${res.status})`, {
        status: res.status,
      });
    } catch {
      return null;
    }
  }

  /** Final state. @private */
  _finish(code, reason, silent = false) {
    if (this.state === 'closed') return;
    this.state = 'closed';
    this._stopHeartbeat();
    for (const t of this._timers) clearTimeout(t);
    this._timers.clear();
    if (this._ws) {
      const ws = this._ws;
      this._detach(ws);
      try {
        ws.close(1000);
      } catch {
        /* ignore */
      }
    }
    for (const pc of this.connections.values()) pc._close(false);
    if (typeof removeEventListener === 'function') removeEventListener('online', this._onOnline);
    if (!silent) this._emit('closed', { code, reason });
  }
}

/**
 * A peer connection negotiated through a room with perfect negotiation (MDN): the peer with the lexicographically
 * smaller id is polite and rolls back its own offer on glare; the impolite one ignores the colliding offer.
 *
 * Events (`on(name, fn)` as on `Room`): `open` (data channel open), `message` `{data}`, `close`, `track`
 * `{track, streams}`, `state` `{connectionState, iceConnectionState}`, `error` `{code, message}`.
 */
export class Peer extends EventTarget {
  /**
   * @param {Room} room @param {string} peerId @param {PeerOptions} options
   * @param {boolean} initiator true when created by `room.connect()` (it creates the data channel at once)
   */
  constructor(room, peerId, options, initiator) {
    super();
    /** Remote peer id. */
    this.peerId = peerId;
    this.room = room;
    this.options = { dataChannel: true, restartOnFailure: true, ...options };
    /** Polite peer = the smaller id (docs/sdk.md). */
    this.polite = /** @type {string} */ (room.peerId) < peerId;
    this.closed = false;
    /** @type {RTCDataChannel | null} */
    this.channel = null;
    /** @type {MediaStream[]} remote streams */
    this.remoteStreams = [];

    const custom = this.options.iceServers;
    const iceServers = typeof custom === 'function' ? custom(room.iceServers) : custom || room.iceServers;
    /** @type {RTCConfiguration} */
    const config = { iceServers };
    if (this.options.iceTransportPolicy) config.iceTransportPolicy = this.options.iceTransportPolicy;
    /** The underlying RTCPeerConnection. */
    this.pc = new RTCPeerConnection(config);

    /** @private */ this._makingOffer = false;
    /** @private */ this._ignoreOffer = false;
    /** @private */ this._chain = Promise.resolve();
    /** Resolves when the data channel is open. */
    this.ready = new Promise((resolve, reject) => {
      this._readyWaiter = { resolve, reject };
    });
    this.ready.catch(() => {});

    const pc = this.pc;
    pc.onnegotiationneeded = async () => {
      try {
        this._makingOffer = true;
        await pc.setLocalDescription();
        this._signal({ sdp: pc.localDescription });
      } catch (err) {
        this._fail('negotiation-failed', err);
      } finally {
        this._makingOffer = false;
      }
    };
    pc.onicecandidate = ({ candidate }) => {
      if (candidate) this._signal({ candidate });
    };
    pc.oniceconnectionstatechange = () => {
      if (pc.iceConnectionState === 'failed' && this.options.restartOnFailure && !this.closed) pc.restartIce();
      this._emitState();
    };
    pc.onconnectionstatechange = () => this._emitState();
    pc.ontrack = ({ track, streams }) => {
      for (const s of streams) if (!this.remoteStreams.includes(s)) this.remoteStreams.push(s);
      this._emit('track', { track, streams });
    };

    // The initiator adds its tracks and creates the channel now (that starts negotiation); an auto-accepted peer
    // does so after applying the offer, so that it does not start a colliding offer of its own.
    /** @private */ this._pendingSetup = !initiator;
    if (initiator) this._setup();
  }

  /** @param {string} name @param {(detail: any) => void} fn @returns {() => void} */
  on(name, fn) {
    const h = (/** @type {any} */ e) => fn(e.detail);
    this.addEventListener(name, h);
    return () => this.removeEventListener(name, h);
  }

  /** Send on the data channel (string, Blob, ArrayBuffer or view). Throws if it is not open. */
  send(data) {
    if (!this.channel || this.channel.readyState !== 'open') {
      throw new TraverseError('not-open', 'the data channel is not open');
    }
    this.channel.send(data);
  }

  /** Add a media track (renegotiates). @param {MediaStreamTrack} track @param {...MediaStream} streams */
  addTrack(track, ...streams) {
    return this.pc.addTrack(track, ...streams);
  }

  /**
   * The selected ICE candidate pair, from getStats: `{local, remote, state, rtt}` where `local` and `remote` are
   * `{candidateType, protocol, relayProtocol, address, port, url}` (`relayProtocol`: `udp`, `tcp` or `tls` for a
   * local relay candidate). Null before ICE has selected a pair.
   */
  async getSelectedPair() {
    const stats = await this.pc.getStats();
    /** @type {any} */ let pair = null;
    stats.forEach((s) => {
      if (s.type === 'transport' && s.selectedCandidatePairId) pair = stats.get(s.selectedCandidatePairId) || pair;
    });
    if (!pair) {
      stats.forEach((s) => {
        if (s.type === 'candidate-pair' && (s.selected || (s.nominated && s.state === 'succeeded'))) pair = s;
      });
    }
    if (!pair) return null;
    const side = (/** @type {string} */ id) => {
      const c = stats.get(id);
      if (!c) return null;
      return {
        candidateType: c.candidateType,
        protocol: c.protocol,
        relayProtocol: c.relayProtocol,
        address: c.address ?? c.ip,
        port: c.port,
        url: c.url,
      };
    };
    return {
      local: side(pair.localCandidateId),
      remote: side(pair.remoteCandidateId),
      state: pair.state,
      rtt: pair.currentRoundTripTime,
    };
  }

  /** Close the connection (does not leave the room); the other side's `Peer` closes too. */
  close() {
    this._close(true);
  }

  /** @private @param {boolean} tellRemote */
  _close(tellRemote) {
    if (this.closed) return;
    // A `bye` lets the other side drop its half, so that a later connect() starts from a fresh RTCPeerConnection.
    if (tellRemote && this.room.state === 'open' && this.room.peers.has(this.peerId)) this._signal({ bye: true });
    this.closed = true;
    try {
      this.pc.close();
    } catch {
      /* ignore */
    }
    if (this.room.connections.get(this.peerId) === this) this.room.connections.delete(this.peerId);
    this._readyWaiter.reject(new TraverseError('closed', 'peer connection closed'));
    this._emit('close', {});
  }

  // ---- internals --------------------------------------------------------------------------------------------

  /** @private */
  _emit(name, detail) {
    this.dispatchEvent(new CustomEvent(name, { detail }));
  }

  /** @private */
  _emitState() {
    this._emit('state', {
      connectionState: this.pc.connectionState,
      iceConnectionState: this.pc.iceConnectionState,
    });
  }

  /** @private */
  _fail(code, err) {
    const detail = { code, message: String(err && err.message ? err.message : err), peerId: this.peerId };
    this._emit('error', detail);
    this.room._emit('error', detail);
  }

  /** @private */
  _signal(data) {
    if (this.closed || this.room.state === 'closed') return;
    this.room._send({ type: 'signal', to: this.peerId, data, id: `pc-${++this.room._msgId}` }, true);
  }

  /** Media tracks and the data channel. @private */
  _setup() {
    this._pendingSetup = false;
    if (this.options.media) {
      for (const track of this.options.media.getTracks()) this.pc.addTrack(track, this.options.media);
    }
    if (this.options.dataChannel) this._createChannel();
  }

  /** @private */
  _createChannel() {
    const ch = this.pc.createDataChannel('traverse', { ...this.options.channelOptions, negotiated: true, id: 0 });
    ch.binaryType = 'arraybuffer';
    ch.onopen = () => {
      this._readyWaiter.resolve(this);
      this._emit('open', {});
    };
    ch.onmessage = (e) => this._emit('message', { data: e.data });
    ch.onclose = () => {
      if (!this.closed) this._emit('channel-close', {});
    };
    this.channel = ch;
  }

  /** Apply a negotiation message in arrival order. @private */
  _onSignal(data) {
    this._chain = this._chain.then(() => this._applySignal(data)).catch((err) => this._fail('negotiation-failed', err));
  }

  /** @private */
  async _applySignal({ sdp, candidate, bye }) {
    if (this.closed) return;
    if (bye) {
      this._close(false);
      return;
    }
    const pc = this.pc;
    if (sdp) {
      const collision = sdp.type === 'offer' && (this._makingOffer || pc.signalingState !== 'stable');
      this._ignoreOffer = !this.polite && collision;
      if (this._ignoreOffer) return;
      if (collision && pc.signalingState === 'have-local-offer') {
        // Glare, and we are polite: roll our offer back, take theirs.
        await pc.setLocalDescription({ type: 'rollback' });
      }
      await pc.setRemoteDescription(sdp);
      if (this._pendingSetup) this._setup();
      if (sdp.type === 'offer') {
        await pc.setLocalDescription();
        this._signal({ sdp: pc.localDescription });
      }
    } else if (candidate) {
      try {
        await pc.addIceCandidate(candidate);
      } catch (err) {
        if (!this._ignoreOffer) throw err;
      }
    }
  }
}

/** Namespace object: `import Traverse from '/sdk/traverse.js'; await Traverse.connect({room: 'lobby'})`. */
const Traverse = { connect, Room, Peer, TraverseError, filterIceServers, VERSION, PROTOCOL, RECONNECT_DELAYS_MS };
export default Traverse;
