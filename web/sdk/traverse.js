// Traverse browser SDK — signaling protocol v1 (docs/protocol.md), served by the binary at /sdk/traverse.js.
//
// Model: one `Room` owns one WebSocket at a time. The socket is disposable, the session is not: when a socket drops
// the room reconnects with jittered backoff, sends `resume` with the last stream `seq` it processed, and the server
// replays what it missed. Outbound messages are queued while no socket is usable and flushed, in order, once the
// session is back, no faster than the server's message rate (what is over it would be dropped). Stream messages are
// deduplicated by `seq`, so a replay never reaches the app twice, and a gap in them is a broken socket. The other
// direction works the same way: every outgoing `signal` and `broadcast` carries the session's own client `seq` and
// is kept until the server acknowledges it (`ack` in `pong` and `resumed`); after a resume whatever the server has
// not handled is resent, so a message written into a socket that was already dead is not lost either.
//
// On top of the room, `room.connect(peerId)` returns a `Peer`: an RTCPeerConnection that negotiates itself with
// MDN's "perfect negotiation" through the room's `signal` messages, with the join's `iceServers` applied and a
// data channel ready to use. Dependency-free; no build step. Documentation: docs/sdk.md.
//
// Published as the npm package `@traverse-rtc/sdk` (package.json beside this file). Its `traverse.d.ts` is generated
// from this file's JSDoc: after changing anything the JSDoc says, run `npm run types` in tests/sdk and commit the
// result (tests/sdk/types.test.mjs fails while it is stale, and runs `tsc --checkJs` over this file). A member that
// only its own class uses is `@private` (declared `private`, without its type); one that another class of this file
// uses (`room._send`) is `@internal`, and is left out of the declarations, as are the tests' `export {…}` and a
// `@typedef` only internals use, in a comment that says `@internal`.
//
// Inside, three parts, one mechanism each (the public API is `Room`, `Peer` and the functions; the rest is internal):
// - `Session` — the session protocol without I/O: frames in (`handleOpen`, `handleFrame`, `handleDisconnect`,
//   `send`), frames and events out (`pollTransmit`, `pollEvent`). It owns the numbered stream (dedup, gaps), the
//   join/resume handshake, the client `seq`, the queue, its pacing to the server's rate and the unacknowledged list.
//   No socket, no timer, no clock (the time is an argument): it is unit-tested in node (tests/sdk/session.test.mjs).
// - `Link` — the socket plumbing: one WebSocket at a time, its handshake timeout, heartbeats and dead-socket
//   detection, reconnects with jittered backoff. It carries frames and knows nothing of their meaning.
// - `Room` — the driver and the public API: it passes the link's frames to the session, writes what the session
//   transmits, and turns the session's events into the room's state (peers, `Peer`s) and events.

/** SDK version; the protocol version it speaks is `PROTOCOL`. */
export const VERSION = '0.1.0';
export const PROTOCOL = 'traverse.v1';

/**
 * Reconnect delays in milliseconds (before jitter): the n-th attempt after a drop waits `RECONNECT_DELAYS_MS[n]`,
 * the last one repeats. Same schedule as LiveKit's client. Used when the server asks to back off (4100-4199) and once
 * `FAST_RECONNECT.forMs` of an outage have passed.
 */
export const RECONNECT_DELAYS_MS = Object.freeze([0, 300, 1200, 2700, 4800, 7000]);

/**
 * While the server cannot be reached (a socket that did not open, a network drop, 4200-4299), attempts probe it
 * quickly: the n-th waits `stepMs` × n (0 for the first), at most `maxMs`, drawn in [½, 1] × that ("equal jitter":
 * a fleet that lost one node comes back spread over half a second, not in step), for `forMs` from the drop; then
 * `RECONNECT_DELAYS_MS` from where it stands. A restarted server is found at most `maxMs` after it answers again
 * (issue 11: the old schedule's 1.2 and 2.7 s steps made a restart cost 3.1-4.5 s). A probe of a server that is down
 * costs it nothing (a refused TCP connection) or a load balancer one refused request.
 */
export const FAST_RECONNECT = Object.freeze({ stepMs: 250, maxMs: 1000, forMs: 30000 });

// One `@typedef` per JSDoc comment: tsc gives the text between two typedefs of a comment to the one before.
/** @typedef {{urls: string | string[], username?: string, credential?: string}} IceServer */
/** @typedef {{id: string, meta?: any}} PeerInfo */
/** @typedef {'connecting' | 'open' | 'reconnecting' | 'closed'} RoomState */
/**
 * @typedef {{reconnects: number, resumes: number, rejoins: number, duplicates: number, gaps: number, queued: number,
 *   resent: number, lost: number, unsent: number}} RoomStats
 */

/**
 * @typedef {object} PeerOptions
 * @property {boolean} [dataChannel=true] open the SDK's data channel (negotiated, id 0, label "traverse"); both sides
 *   must agree
 * @property {RTCIceTransportPolicy} [iceTransportPolicy] `'relay'` forces TURN
 * @property {IceServer[] | ((servers: IceServer[]) => IceServer[])} [iceServers] replaces the join's servers, or
 *   filters them (see `filterIceServers`)
 * @property {MediaStream} [media] tracks to send
 * @property {RTCDataChannelInit} [channelOptions] extra options for the data channel (e.g. `{ordered: false}`)
 * @property {boolean} [restartOnFailure=true] restart ICE when the connection fails, stays disconnected or the
 *   network changes (`false`: never)
 * @property {RecoveryOptions | false} [recovery] when to restart ICE (default: the room's `recovery`)
 * @property {number} [maxFileBytes=2147483648] the most this side accepts from `sendFile` (kept in memory as a Blob):
 *   the largest file, and the announced bytes of every file being received from this peer at once; past it a file
 *   is cancelled at its start
 * @property {number} [maxIncomingFiles=4] files received from this peer at once; another is refused (`refused`)
 *   when its head arrives
 * @property {number} [maxOutgoingFiles=4] files `sendFile` sends to this peer at once (the receiver's default
 *   `maxIncomingFiles`); the others wait their turn, in call order
 * @property {number | false} [qualityIntervalMs=2000] how often the connection's quality is measured while it is
 *   up (`quality` events, `peer.quality`); `false`: never
 */

/**
 * @typedef {object} ConnectOptions
 * @property {string} room room name
 * @property {string | string[]} [url] WebSocket URL (`wss://host/ws`); http(s) URLs are converted. Default: `/ws`
 *   beside this module's own URL, else beside the page. Several (the nodes of a cluster): the first is joined; when
 *   the one in use cannot be reached (a socket that does not open, or closes with 4202) the next reconnect goes to
 *   the next one, round the list
 * @property {string} [token] signaling token (JWT), when the server has a signaling secret
 * @property {any} [meta] public metadata shown to the other peers (at most 1 KiB of JSON)
 * @property {boolean} [reconnect=true] reconnect and resume after a drop
 * @property {number[]} [reconnectDelaysMs] override `RECONNECT_DELAYS_MS`
 * @property {{stepMs?: number, maxMs?: number, forMs?: number} | false} [fastReconnect] override
 *   `FAST_RECONNECT`, the probing of a server that cannot be reached; `false`: `reconnectDelaysMs` only
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
 * @property {boolean} [reportOutcomes=true] send the server one `outcome` report per peer connection (connected,
 *   failed, or not connected after `outcomeTimeoutMs`): candidate types and counts, TURN errors, the browser — no
 *   addresses (docs/sdk.md, "Connection outcomes")
 * @property {number} [outcomeTimeoutMs=30000] a peer connection not connected after this long is reported `timeout`
 * @property {boolean} [leaveOnPageHide=true] leave the room when the page is hidden for good (`pagehide`: tab closed,
 *   navigation, reload), so the others see `peer-left` at once instead of after the resume grace
 * @property {RecoveryOptions | false} [recovery] when peer connections restart ICE (docs/sdk.md, "Calls that
 *   survive"); `false`: never
 * @property {number} [probeTimeoutMs=3000] when a peer connection's path breaks or the network changes, the signaling
 *   socket is pinged and declared dead if nothing arrives within this long
 * @property {boolean} [rejoinCalls=true] after a failed resume (a restarted server), keep the calls and find their
 *   peers' new ids (event `peer-rejoined`); `false`: close them
 * @property {false | (() => Promise<IceServer[]>)} [refreshIceServers] how a fresh TURN credential is fetched before
 *   the current one expires (and before an ICE restart); default: asked over the signaling socket (`ice-servers`),
 *   else `GET /api/ice-servers` with `token`; `false`: never
 */

/**
 * Why a `Peer` closed (its `close` event): `by` the side that ended it; `reason` `closed` (`peer.close()`), `bye`
 * (the other side's `close()`), `channel-closed` (the other side's data channel closed: its `Peer` or page went),
 * `peer-left`, `unknown-peer` (the server does not know the other peer), `replaced` (the other side called again
 * with a new connection), `room-closed`, `session-lost` (a failed resume with `rejoinCalls: false`).
 * @typedef {{by: 'local' | 'remote', reason: string}} PeerClose
 */

/**
 * The events of a `Room`, by name: the detail each one's listener gets.
 * @typedef {{
 *   'joined': {peerId: string, peers: PeerInfo[], rejoined: boolean, previousPeerId: string | null, seq?: number},
 *   'peer-joined': {peer: PeerInfo, seq?: number},
 *   'peer-left': {peerId: string, reason: 'left' | 'lost' | string, seq?: number},
 *   'peer-rejoined': {peerId: string, previousPeerId: string, peer: Peer},
 *   'signal': {from: string, data: any, seq?: number, internal: boolean},
 *   'broadcast': {from: string, data: any, seq?: number},
 *   'undeliverable': {to?: string, id?: string, reason: string, seq?: number, type?: 'signal' | 'broadcast',
 *     data?: any},
 *   'error': {code: string, message: string, id?: string, seq?: number, peerId?: string, expected?: number,
 *     got?: number, inARow?: number},
 *   'reconnecting': {attempt: number, delayMs: number, code: number, reason: string},
 *   'resumed': {replayed: number, seq: number, peerId?: string, ack?: number},
 *   'closed': {code: number, reason: string},
 *   'peer-connection': {peer: Peer, peerId: string},
 *   'ice-servers': {iceServers: IceServer[], expiresAt: number | null},
 *   'connection-diagnosis': ConnectionDiagnosis,
 *   'connection-failed': ConnectionDiagnosis,
 *   'connection-dropped': ConnectionDiagnosis,
 * }} RoomEventMap
 */

/**
 * @typedef {{peer: string, you: string, outcome: 'connected' | 'failed' | 'timeout' | 'dropped' | 'recovered',
 *   reason: string, step: string, message: string, seq?: number, path?: string, timeToConnectMs?: number,
 *   connectedMs?: number, recoveryMs?: number, cause?: string}} ConnectionDiagnosis
 */

/**
 * The events of a `Peer`, by name: the detail each one's listener gets (a `message`'s `data` is a string or an
 * `ArrayBuffer`).
 * @typedef {{
 *   'open': {},
 *   'message': {data: any},
 *   'close': PeerClose,
 *   'track': {track: MediaStreamTrack, streams: readonly MediaStream[]},
 *   'state': {connectionState: RTCPeerConnectionState, iceConnectionState: RTCIceConnectionState},
 *   'error': {code: string, message: string, peerId: string},
 *   'reconnecting': {cause: RecoveryCause, attempt: number, peerId: string},
 *   'reconnected': {cause: RecoveryCause, durationMs: number, attempts: number, peerId: string},
 *   'recovery-failed': {cause: RecoveryCause, attempts: number, peerId: string},
 *   'rejoined': {peerId: string, previousPeerId: string},
 *   'file-start': {id: string, name: string, size: number, type: string},
 *   'file-progress': FileProgress,
 *   'file': FileReceived,
 *   'file-cancel': FileCancel,
 *   'quality': ConnectionQuality,
 * }} PeerEventMap
 */

/** A `ConnectionQuality`'s `grade` (see there). @typedef {'good' | 'fair' | 'poor' | 'bad' | 'lost'} QualityGrade */

/**
 * How a connection carries media and data now, from `getStats` over the last interval: `grade` is the worst of its
 * measures against thresholds others use too (RTT 100/250/400 ms, jitter 5/10/30 ms, loss 1/3/8 % for good, fair,
 * poor; above: bad), or `lost` while ICE is disconnected. `jitterMs` and `lossPercent` need received media (RTP);
 * they are null on a data-only connection. `path`: `direct` or `relay`.
 * @typedef {{grade: QualityGrade, rttMs: number | null, jitterMs: number | null, lossPercent: number | null,
 *   path: 'direct' | 'relay' | null}} ConnectionQuality
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

/**
 * An error with a stable `code` from the protocol (or `connect-failed`, `timeout`, `closed`, `unknown-peer` from the
 * SDK; a file transfer's codes are listed at `FileErrorCode`). What else it carries depends on where it comes from.
 */
export class TraverseError extends Error {
  /**
   * @param {string} code @param {string} message
   * @param {{closeCode?: number, status?: number, peerId?: string, by?: 'local' | 'remote', reason?: string,
   *   file?: FileCancel}} [extra]
   */
  constructor(code, message, extra) {
    super(message);
    /** @type {string} */
    this.code = code;
    /** @type {number | undefined} the WebSocket close code, when a closing socket caused the error */
    this.closeCode = undefined;
    /** @type {number | undefined} the HTTP status of `/api/join-check`, when it gave the reason of a refused join */
    this.status = undefined;
    /** @type {string | undefined} the remote peer, for an error about one (`unknown-peer`) */
    this.peerId = undefined;
    /** @type {'local' | 'remote' | undefined} which side ended a file transfer (a `sendFile` rejection) */
    this.by = undefined;
    /** @type {string | undefined} why a file transfer ended, as the side that ended it said */
    this.reason = undefined;
    /** @type {FileCancel | undefined} the transfer a `sendFile` rejection is about (the `file-cancel` detail) */
    this.file = undefined;
    Object.assign(this, extra);
    this.name = 'TraverseError';
  }
}

/**
 * `on`, `once` and `off` over `EventTarget`, typed by an event map (event name → detail): a misspelt event name or
 * detail field does not compile in TypeScript.
 * @template {object} M
 */
class Emitter extends EventTarget {
  constructor() {
    super();
    /** @private @type {Map<string, Map<Function, EventListener>>} listeners added with `on`, by event name */
    this._handlers = new Map();
  }

  /**
   * Listen to an event; `fn` receives the event's detail. Returns a function that removes the listener (as
   * `off(name, fn)` does).
   * @template {keyof M & string} K
   * @overload
   * @param {K} name @param {(detail: M[K]) => void} fn @returns {() => void}
   */
  /**
   * An event name known only at run time (a `string` variable, not a literal, which must be an event's name): the
   * detail is untyped.
   * @template {string} N
   * @overload
   * @param {string extends N ? N : never} name @param {(detail: any) => void} fn @returns {() => void}
   */
  /** @param {string} name @param {(detail: any) => void} fn @returns {() => void} */
  on(name, fn) {
    let byFn = this._handlers.get(name);
    if (!byFn) this._handlers.set(name, (byFn = new Map()));
    if (!byFn.has(fn)) {
      const h = /** @type {EventListener} */ ((e) => fn(/** @type {CustomEvent} */ (e).detail));
      byFn.set(fn, h);
      this.addEventListener(name, h);
    }
    return () => this.off(name, fn);
  }

  /**
   * Remove a listener added with `on`.
   * @template {keyof M & string} K
   * @overload
   * @param {K} name @param {(detail: M[K]) => void} fn @returns {void}
   */
  /**
   * @template {string} N
   * @overload
   * @param {string extends N ? N : never} name @param {(detail: any) => void} fn @returns {void}
   */
  /** @param {string} name @param {(detail: any) => void} fn @returns {void} */
  off(name, fn) {
    const byFn = this._handlers.get(name);
    const h = byFn?.get(fn);
    if (!byFn || !h) return;
    byFn.delete(fn);
    this.removeEventListener(name, h);
  }

  /**
   * Resolves with the detail of the next `name` event for which `pred` holds, or rejects with `timeout` after
   * `timeoutMs`.
   * @template {keyof M & string} K
   * @overload
   * @param {K} name @param {(detail: M[K]) => boolean} [pred] @param {number} [timeoutMs]
   * @returns {Promise<M[K]>}
   */
  /**
   * @template {string} N
   * @overload
   * @param {string extends N ? N : never} name @param {(detail: any) => boolean} [pred] @param {number} [timeoutMs]
   * @returns {Promise<any>}
   */
  /**
   * @param {string} name @param {(detail: any) => boolean} [pred] @param {number} [timeoutMs]
   * @returns {Promise<any>}
   */
  once(name, pred = () => true, timeoutMs = 30000) {
    return new Promise((resolve, reject) => {
      const t = setTimeout(() => {
        off();
        reject(new TraverseError('timeout', `no '${name}' event within ${timeoutMs} ms`));
      }, timeoutMs);
      /** @param {any} d */
      const listener = (d) => {
        if (!pred(d)) return;
        clearTimeout(t);
        off();
        resolve(d);
      };
      const off = this.on(name, listener);
    });
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

/**
 * ICE servers as every browser takes them: a `stun:`/`stuns:` URL loses its `?transport=…` (Chrome 110 and later
 * refuse the whole configuration over it, coturn's docs still print it), and a server left without URLs goes (an
 * empty `urls` throws too). Said once on the console when it changed something.
 * @param {IceServer[]} servers @returns {IceServer[]}
 */
function usableIceServers(servers) {
  let changed = false;
  const out = [];
  for (const s of servers || []) {
    const given = Array.isArray(s.urls) ? s.urls : [s.urls];
    const urls = given.flatMap((u) => {
      if (typeof u !== 'string' || !u) return [];
      return [/^stuns?:/i.test(u) && u.includes('?') ? u.slice(0, u.indexOf('?')) : u];
    });
    const same = urls.length === given.length && urls.every((u, i) => u === given[i]);
    // Unchanged servers are passed as they were given (a `urls` string stays one).
    if (same && urls.length) out.push(s);
    else {
      changed = true;
      if (urls.length) out.push({ ...s, urls });
    }
  }
  if (changed && !usableIceServers.warned) {
    usableIceServers.warned = true;
    console.warn('traverse: ICE servers cleaned up (stun: URLs take no ?transport, and no server may lack URLs)');
  }
  return out;
}
/** @type {boolean} */ usableIceServers.warned = false;

/**
 * A joined room. Events (listen with `room.on(name, fn)` — `fn` gets the event's detail — or `addEventListener`,
 * where the detail is `event.detail`):
 * - `joined` `{peerId, peers, rejoined}` — also after a fresh re-join when a resume failed (new `peerId`)
 * - `peer-joined` `{peer: {id, meta}}`, `peer-left` `{peerId, reason}` (`left`, or `lost`: its session expired; a
 *   connected call with it stays while its media flows, for it to rejoin under a new id — `peer-rejoined`)
 * - `signal` `{from, data, seq, internal}` — `internal` when the SDK's peer connection consumed it
 * - `broadcast` `{from, data, seq}`
 * - `undeliverable` `{to, id, reason}` — a `signal` you sent could not be delivered: the recipient left
 *   (`peer-left`), or the server's memory budget for it is full (`queue-full` its session, `source-full` its address,
 *   `server-full` the server; retry later); reason `session-lost` (with `type` and `data`, for a `broadcast` too)
 *   when a failed resume, or `leave()` while reconnecting, ended the session before the server acknowledged the
 *   message: it may or may not have arrived; reason `not-sent` (with `type` and `data`, a `broadcast` too) when the
 *   room left before the server's message rate let it out: it was never written (`leave()`)
 * - `error` `{code, message, id?}` — from the server (`id`: the message it is about, e.g. `unknown-peer`), or from the
 *   SDK (`queue-full`, `negotiation-failed`, `sequence-gap`)
 * - `reconnecting` `{attempt, delayMs, code, reason}`, `resumed` `{replayed, seq, ack}`
 * - `closed` `{code, reason}` — final; the room is unusable
 * - `peer-connection` `{peer}` — a `Peer` created because a peer sent an offer (see `autoAccept`)
 * - `connection-diagnosis` `{peer, you, outcome, reason, step, message, path?, timeToConnectMs?, connectedMs?}` —
 *   the server's verdict on a peer connection, from both sides' outcome reports (`message` calls this peer "peer " +
 *   `you`); `connection-failed` with the same detail as well when it did not connect (`reason`: a stable code,
 *   docs/operations.md), `connection-dropped` when it connected and then dropped for good (`connectedMs`: how long
 *   it had been up)
 * @extends {Emitter<RoomEventMap>}
 */
export class Room extends Emitter {
  /** @param {ConnectOptions} options */
  constructor(options) {
    super();
    if (!options || typeof options.room !== 'string' || !options.room) {
      throw new TypeError('Traverse.connect: options.room (a non-empty string) is required');
    }
    /** @internal */ this._opts = {
      reconnect: true,
      reconnectDelaysMs: [...RECONNECT_DELAYS_MS],
      maxReconnectAttempts: Infinity,
      connectTimeoutMs: 10000,
      maxQueue: 1000,
      maxMessageBytes: 65536,
      autoAccept: true,
      reportOutcomes: true,
      outcomeTimeoutMs: 30000,
      ...options,
    };
    const urls = (Array.isArray(options.url) ? options.url : [options.url]).map((u) => resolveWsUrl(u).toString());
    /** Room name. */
    this.room = options.room;
    /** @type {string | null} this peer's id (changes only after a failed resume and a fresh join) */
    this.peerId = null;
    /** @type {Map<string, PeerInfo>} other peers in the room, by id */
    this.peers = new Map();
    /** @type {IceServer[]} STUN/TURN servers with a credential minted for this peer */
    this.iceServers = [];
    /** @type {string[]} capabilities granted by the join token (`caps`), passed through for the app */
    this.caps = [];
    this.heartbeatMs = 10000;
    this.resumeGraceMs = 30000;
    /** Counters, for diagnostics and tests. @type {RoomStats} */
    this.stats = {
      reconnects: 0,
      resumes: 0,
      rejoins: 0,
      duplicates: 0,
      gaps: 0,
      queued: 0,
      resent: 0,
      lost: 0,
      unsent: 0,
    };
    /** @type {Map<string, Peer>} peer connections by remote peer id */
    this.connections = new Map();

    /** @private */ this._session = new Session(this._opts, this.stats);
    /** @private */ this._link = new Link(urls, this._opts, {
      handshake: () => this._session.nextHandshake(),
      open: () => {
        this._session.handleOpen();
        this._drain();
      },
      frame: (text) => {
        this._session.handleFrame(text);
        this._drain();
      },
      ping: () => {
        // Heartbeats and probes go out on time, whatever waits for the rate: they use its margin (`RateBucket`).
        this._session.chargeFrame(now());
        return this._session.pingFrame();
      },
      drop: (code, reason, opened) => this._onDrop(code, reason, opened),
      unopenable: (err) =>
        this._failStart(new TraverseError('connect-failed', `could not open a WebSocket to ${this.url}: ${err}`)),
    });
    /** @private @type {{resolve: (room: Room) => void, reject: (err: any) => void} | null} `connect()` waiting */
    this._startWaiter = null;
    /** @private the session's events are being handed to the app (see `_drain`) */ this._dispatching = false;
    /** @private @type {ReturnType<typeof setTimeout> | undefined} the next message waiting for the rate (`_flush`) */
    this._paceTimer = undefined;
    /** @internal */ this._msgId = 0;
    /**
     * The `Peer` each recent negotiation message was sent for, by message id (`pc-N`), and the id it went to: the
     * server's `unknown-peer` about one closes that `Peer` (`_onError`). The last `SENT_FOR_MAX`.
     * @internal @type {Map<string, {peer: Peer, to: string}>}
     */
    this._sentFor = new Map();
    /** @private @type {Promise<void> | null} `leave()` under way (calling it again returns it) */
    this._leaving = null;
    /** @private @type {(() => void) | null} ends the wait of `_leave` (queue empty, socket gone, room closed) */
    this._leaveFlushed = null;
    /** @internal `leave` is written (or the room is past writing it): nothing more goes out */ this._left = false;
    /** @private the page-lifecycle hook (section "Leaving with the page") */
    this._onPageHide = () => this._leaveWithPage();
    if (this._opts.leaveOnPageHide !== false && typeof addEventListener === 'function') {
      addEventListener('pagehide', this._onPageHide);
    }
  }

  /** @type {RoomState} */
  get state() {
    return this._link.state;
  }

  /** WebSocket URL in use (one of `url`'s list). @type {string} */
  get url() {
    return this._link.url;
  }

  /** @type {string | null} the session id (a resume presents it) */
  get session() {
    return this._session.id;
  }

  /** Highest stream `seq` processed. */
  get lastSeq() {
    return this._session.lastSeq;
  }

  /** Messages sent but not yet acknowledged by the server (resent after a resume if the server missed them). */
  get unacknowledged() {
    return this._session.unacknowledged;
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
   * Leave the room: let the messages still waiting for the server's rate go out (in order, for at most 800 ms), tell
   * the server (the others see `peer-left` at once), close every peer connection and the socket. A message still
   * waiting then is not sent: each of yours is reported as `undeliverable` with reason `not-sent`. Nothing is
   * written after `leave`, and `signal`/`broadcast` throw `closed` from then on. Resolves when the socket is closed
   * (at most ~1 s); calling it again returns the same promise.
   * @returns {Promise<void>}
   */
  leave() {
    if (!this._leaving) this._leaving = this._leave();
    return this._leaving;
  }

  /**
   * Open (or return) a peer connection to `peerId`, negotiated through this room. Throws `unknown-peer` when
   * `peerId` is not in `room.peers` (it left, or never joined).
   * @param {string} peerId @param {PeerOptions} [options] @returns {Peer}
   */
  connect(peerId, options = {}) {
    if (this.state === 'closed') throw new TraverseError('closed', 'the room is closed');
    if (peerId === this.peerId) throw new TypeError('cannot connect to yourself');
    const existing = this.connections.get(peerId);
    if (existing && !existing.closed) return existing;
    if (!this.peers.has(peerId)) {
      throw new TraverseError(
        'unknown-peer',
        `there is no peer ${peerId} in room ${this.room} (it left, or never joined): connect to an id of room.peers`,
        { peerId },
      );
    }
    const peer = new Peer(this, peerId, options, true);
    this.connections.set(peerId, peer);
    return peer;
  }

  // ---- internals --------------------------------------------------------------------------------------------

  /** @internal @param {string} name @param {any} detail */
  _emit(name, detail) {
    this.dispatchEvent(new CustomEvent(name, { detail }));
  }

  /** First join; resolves on `joined`, rejects on refusal. @internal @returns {Promise<Room>} */
  _start() {
    return new Promise((resolve, reject) => {
      this._startWaiter = { resolve, reject };
      this._link.open();
    });
  }

  /** @internal @param {object} msg @param {boolean} internal */
  _send(msg, internal) {
    if (this.state === 'closed') throw new TraverseError('closed', 'the room is closed');
    if (this._left) {
      // `leave` is written: nothing may follow it. The SDK's own messages (a late candidate) are moot by now.
      if (internal) return;
      throw new TraverseError('closed', 'the room has left');
    }
    this._session.send(msg, internal, this._link.writable);
    this._drain();
  }

  /**
   * After every input to the session: write what it transmits, then hand its events over in order. An app
   * listener that sends gets its frame written at once; events it causes wait for the ones already in line.
   * @private
   */
  _drain() {
    const session = this._session;
    this._flush();
    if (this._dispatching) return;
    this._dispatching = true;
    try {
      for (let e = session.pollEvent(); e !== undefined; e = session.pollEvent()) {
        this._handleSessionEvent(e);
        this._flush();
      }
    } finally {
      this._dispatching = false;
    }
  }

  /**
   * Write what the session has for the socket now; if messages wait for the server's rate, come back when the next
   * may go (one timer, re-armed on every flush, cleared when the socket goes).
   * @private
   */
  _flush() {
    const session = this._session;
    if (!this._link.writable || this._left) return;
    const t = now();
    for (let f = session.pollTransmit(t); f !== undefined; f = session.pollTransmit(t)) this._link.write(f);
    clearTimeout(this._paceTimer);
    const wait = session.nextTransmitDelay(t);
    this._paceTimer = wait === null ? undefined : setTimeout(() => this._drain(), wait);
    if (this._leaveFlushed && !session.waiting) this._leaveFlushed();
  }

  /** @private @param {SessionEvent} e */
  _handleSessionEvent(e) {
    switch (e.type) {
      case 'joined':
        return this._onJoined(e.msg, e.rejoined, e.lost);
      case 'resumed':
        return this._onResumed(e.msg);
      case 'message':
        return this._onMessage(e.msg, e.handshake);
      case 'error':
        return this._emit('error', e.detail);
      case 'gap':
        // Resumed from `lastSeq` through the usual reconnect (its backoff grows if the replay gaps again).
        this._emit('error', e.detail);
        return this._link.restart('sequence-gap', e.detail.inARow);
    }
  }

  /** @private @param {any} msg @param {boolean} rejoined @param {any[]} lost */
  _onJoined(msg, rejoined, lost) {
    const previousPeerId = rejoined ? this.peerId : null;
    // A failed resume ended the old session (a restarted server): its calls wait to be found again (`_keepCalls`).
    if (rejoined) this._keepCalls(/** @type {string} */ (previousPeerId));
    this.peerId = msg.peerId;
    this.peers = new Map((msg.peers || []).map((p) => [p.id, p]));
    this.iceServers = msg.iceServers || [];
    this.caps = Array.isArray(msg.caps) ? msg.caps : [];
    if (typeof msg.heartbeatMs === 'number') this.heartbeatMs = msg.heartbeatMs;
    if (typeof msg.resumeGraceMs === 'number') this.resumeGraceMs = msg.resumeGraceMs;
    this._link.established(this._opts.heartbeatMs ?? this.heartbeatMs);
    /** @private the URL of the node the session was last established through */ this._establishedUrl = this.url;
    const peers = [...this.peers.values()];
    this._emit('joined', { peerId: this.peerId, peers, rejoined, previousPeerId, seq: msg.seq });
    if (rejoined) {
      this._announceRejoin(null);
      // A peer still in the room kept its session (only ours was lost): its id is the same, and it moves its side
      // of the call to our new id on the proof just sent. Ours carries on at once.
      for (const pc of this.connections.values()) if (pc._orphaned && this.peers.has(pc.peerId)) pc._rebind(pc.peerId);
    }
    this._scheduleIceRefresh();
    this._signalingBack();
    this._reportLost(lost);
    const w = this._startWaiter;
    if (w) {
      this._startWaiter = null;
      w.resolve(this);
    }
  }

  /** @private @param {any} msg */
  _onResumed(msg) {
    this._link.established(this._opts.heartbeatMs ?? this.heartbeatMs);
    this._emit('resumed', { replayed: msg.replayed, seq: msg.seq, peerId: msg.peerId, ack: msg.ack });
    if (this._establishedUrl !== this.url) {
      for (const pc of this.connections.values()) if (pc._recovery) pc._recovery.handleNodeLost();
    }
    this._establishedUrl = this.url;
    this._signalingBack();
  }

  /** A server message the session let through, in stream order. @private */
  _onMessage(msg, handshake) {
    switch (msg.type) {
      case 'peer-joined':
        if (msg.peer && typeof msg.peer.id === 'string') this.peers.set(msg.peer.id, msg.peer);
        if (msg.peer && typeof msg.peer.id === 'string') this._announceRejoin(msg.peer.id);
        return this._emit('peer-joined', { peer: msg.peer, seq: msg.seq });
      case 'peer-left': {
        this.peers.delete(msg.peerId);
        const pc = this.connections.get(msg.peerId);
        if (pc) {
          // A peer that was lost (its signaling cut off past the resume grace), not one that left, may still be on
          // the call: a connected call waits for it to come back under a new id and prove it (`_onRejoinSignal`).
          if (msg.reason === 'lost' && this._opts.rejoinCalls !== false && pc._mediaUp()) this._awaitRejoin(pc);
          else pc._close(false, { by: 'remote', reason: 'peer-left' });
        }
        return this._emit('peer-left', { peerId: msg.peerId, reason: msg.reason, seq: msg.seq });
      }
      case 'signal':
        return this._onSignal(msg);
      case 'broadcast':
        return this._emit('broadcast', { from: msg.from, data: msg.data, seq: msg.seq });
      case 'undeliverable':
        return this._emit('undeliverable', { to: msg.to, id: msg.id, reason: msg.reason, seq: msg.seq });
      case 'diagnosis':
        return this._onDiagnosis(msg);
      case 'ice-servers': {
        // The answer to our request (or a server's own push: taken the same way).
        const servers = Array.isArray(msg.iceServers) && msg.iceServers.length ? msg.iceServers : null;
        if (servers) this._setIceServers(servers);
        return this._answerIceAsk(servers);
      }
      case 'error':
        return this._onError(msg, handshake);
      default:
        // Unknown server message: ignore (forward compatibility).
        return;
    }
  }

  /** The server's post-mortem of a peer connection (docs/protocol.md, "Connection outcomes"). @private */
  _onDiagnosis(msg) {
    const detail = {
      peer: msg.peer,
      you: msg.you,
      outcome: msg.outcome,
      reason: msg.reason,
      step: msg.step,
      message: msg.message,
      seq: msg.seq,
    };
    if (typeof msg.path === 'string') detail.path = msg.path;
    if (typeof msg.timeToConnectMs === 'number') detail.timeToConnectMs = msg.timeToConnectMs;
    if (typeof msg.connectedMs === 'number') detail.connectedMs = msg.connectedMs;
    if (typeof msg.recoveryMs === 'number') detail.recoveryMs = msg.recoveryMs;
    if (typeof msg.cause === 'string') detail.cause = msg.cause;
    this._emit('connection-diagnosis', detail);
    if (msg.outcome === 'dropped') this._emit('connection-dropped', detail);
    else if (msg.outcome !== 'connected' && msg.outcome !== 'recovered') this._emit('connection-failed', detail);
  }

  /**
   * Sends a peer connection's outcome report (once per `Peer`), unless `reportOutcomes` is off. Numbered like a
   * `signal`, so a report written into a dying socket is resent after the resume and counted once.
   * @internal @param {string} peerId @param {OutcomeReport} report
   */
  _reportOutcome(peerId, report) {
    // A peer that has left cannot be paired any more; the server would drop the report. A drop is the exception:
    // the other peer leaving (or losing its network) while the call was broken is part of its story.
    const about = this.peers.has(peerId) || report.outcome === 'dropped';
    if (!this._opts.reportOutcomes || this.state === 'closed' || !about) return;
    try {
      this._send({ type: 'outcome', peer: peerId, report }, true);
    } catch {
      /* too large or closed: a report is best effort */
    }
  }

  /** @private @param {any} msg @param {'join' | 'resume' | null} handshake */
  _onError(msg, handshake) {
    if (msg.code === 'unknown-type' && this._iceAsk) {
      // A server older than `ice-servers`: HTTP it is, from now on.
      /** @private */ this._iceAskUnsupported = true;
      return this._answerIceAsk(null);
    }
    if (msg.code === 'unknown-peer' && typeof msg.id === 'string' && msg.id.startsWith('pc-')) {
      // About a message the SDK sent for a `Peer` (a peer that left, or an id that never was in the room): that
      // `Peer` ends, with `ready` rejected; its internal ids mean nothing to the app.
      const sent = this._sentFor.get(msg.id);
      const peer = sent?.peer;
      if (peer && !peer.closed && !peer._orphaned && peer.peerId === sent.to) {
        const message = `there is no peer ${sent.to} in room ${this.room}: it left, or never joined`;
        peer._close(false, { by: 'remote', reason: 'unknown-peer' }, new TraverseError('unknown-peer', message, { peerId: sent.to }));
      }
      return;
    }
    const detail = { code: msg.code, message: msg.message, seq: msg.seq };
    if (typeof msg.id === 'string') detail.id = msg.id;
    if (this._startWaiter && handshake === 'join') {
      // A refused join (token, room full, …): the server closes right after; report the code to `connect()`.
      const err = new TraverseError(msg.code || 'join-failed', msg.message || 'join refused');
      this._failStart(err);
      return;
    }
    this._emit('error', detail);
  }

  /** @private */
  _onSignal(msg) {
    const d = msg.data;
    if (d && typeof d === 'object' && d.rejoin && typeof d.rejoin === 'object') {
      this._onRejoinSignal(msg.from, d.rejoin);
      return this._emit('signal', { from: msg.from, data: d, seq: msg.seq, internal: true });
    }
    const isNegotiation = d && typeof d === 'object' && ('sdp' in d || 'candidate' in d || 'bye' in d);
    let peer = isNegotiation ? this.connections.get(msg.from) : undefined;
    if (peer && !peer.closed && d.sdp && d.sdp.type === 'offer' && peer._isNewRemote(d.sdp)) {
      // The first offer of another RTCPeerConnection (the other side closed its `Peer` and called again, and our
      // half never heard of the close): it is a new call, not a renegotiation of this one.
      peer._close(false, { by: 'remote', reason: 'replaced' });
      peer = undefined;
    }
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

  /** @private */
  _failStart(err) {
    const w = this._startWaiter;
    if (!w) return false;
    this._startWaiter = null;
    this._finish(err.closeCode ?? 1006, err.message, true);
    w.reject(err);
    return true;
  }

  /**
   * The current socket is gone. Decide by close code (docs/protocol.md, Close codes) whether to retry, how soon, and
   * whether to resume or join afresh.
   * @private @param {number} code @param {string} reason @param {boolean} [opened]
   */
  async _onDrop(code, reason, opened = true) {
    if (this.state === 'closed') return;
    clearTimeout(this._paceTimer);
    this._session.handleDisconnect(code);
    if (this._leaveFlushed) {
      // `leave()` is waiting for the queue to go out: it will not now; it reports it and closes the room.
      this._leaveFlushed();
      return;
    }
    if (this._startWaiter) {
      // Never joined. Ask the HTTP twin of the join why, since browsers hide a refused upgrade's status.
      const why = opened ? null : await joinCheck(this.url, this.room, this._opts.token);
      const err =
        why ||
        new TraverseError(
          'connect-failed',
          `could not join room ${this.room} at ${this.url}: the WebSocket closed (code ${code}${reason ? `, ${reason}` : ''}) ` +
            'before the server answered; check that the server is running and that the URL is its signaling ' +
            'endpoint (wss://host/ws)',
        );
      err.closeCode = code;
      this._failStart(err);
      return;
    }
    if (!this._link.retries(code)) {
      this._finish(code, reason || 'closed by server');
      return;
    }
    const next = this._link.scheduleRetry(code, opened);
    if (!next) {
      this._finish(code, `gave up after ${this._link.attempts} reconnect attempts`);
      return;
    }
    this.stats.reconnects++;
    this._emit('reconnecting', { attempt: next.attempt, delayMs: next.delayMs, code, reason });
  }

  /** Final state. @private */
  _finish(code, reason, silent = false) {
    if (this.state === 'closed') return;
    this._link.close();
    clearTimeout(this._paceTimer);
    if (this._leaveFlushed) this._leaveFlushed();
    if (typeof removeEventListener === 'function') removeEventListener('pagehide', this._onPageHide);
    clearTimeout(this._orphanTimer);
    clearTimeout(this._iceRefreshTimer);
    this._answerIceAsk(null);
    for (const pc of [...this.connections.values()]) pc._close(false, { by: 'local', reason: 'room-closed' });
    if (!silent) this._emit('closed', { code, reason });
  }

  // ---- leaving (docs/sdk.md, "Leaving is immediate") ----------------------------------------------------------

  /**
   * `leave()`: a connected outcome report still settling goes out now; what waits for the server's rate (those
   * reports included) is written as tokens come, for at most `LEAVE_FLUSH_MS`; then the pace timer stops, `leave`
   * is written (the socket detached: nothing follows it), what is still waiting is reported (`_reportUnsent`), and
   * the socket gets the rest of the ~1 s to close. No wait when the socket is not usable (reconnecting): there is
   * no `leave` to write either, and the server ends the session after its resume grace.
   * @private
   */
  async _leave() {
    if (this.state === 'closed') return;
    const start = now();
    for (const pc of this.connections.values()) pc._flushOutcome();
    const session = this._session;
    if (session.usable && this._link.writable && session.waiting) {
      await new Promise((resolve) => {
        const timer = setTimeout(() => done(), LEAVE_FLUSH_MS);
        const done = () => {
          clearTimeout(timer);
          this._leaveFlushed = null;
          resolve(undefined);
        };
        this._leaveFlushed = done;
      });
      // Closed meanwhile (`pagehide`, or the server ended the room); tsc narrowed `state` before the await.
      if (/** @type {RoomState} */ (this.state) === 'closed') return;
      // The timer may be due in the same tick: the last tokens are taken before giving up on what still waits.
      this._flush();
    }
    const closing = this._writeLeave(false);
    await closing?.(Math.max(LEAVE_MIN_CLOSE_MS, LEAVE_MS - (now() - start)));
    this._finish(1000, 'left');
  }

  /**
   * The end of the session's writing: stop the pace timer, write `leave` (first, on `pagehide`, what the rate's
   * margin admits of the waiting messages), then nothing more; report what still waits. Returns, when `leave` was
   * written on a socket that stays open for now, the wait for its close (`Link.leave`).
   * @private @param {boolean} pageHidden @returns {((ms: number) => Promise<void>) | null}
   */
  _writeLeave(pageHidden) {
    const session = this._session;
    clearTimeout(this._paceTimer);
    this._paceTimer = undefined;
    let closing = null;
    const writesLeave = session.usable && this._link.writable;
    if (writesLeave) {
      const t = now();
      if (pageHidden) {
        for (let f = session.pollTransmit(t, true); f !== undefined; f = session.pollTransmit(t, true)) {
          this._link.write(f);
        }
      }
      // `leave` must be admitted as well: it may use the margin, like a heartbeat.
      session.chargeFrame(t);
      if (pageHidden) this._link.write(session.leaveFrame());
      else closing = this._link.leave(session.leaveFrame());
    }
    this._left = true;
    const unsent = session.takeWaiting();
    // Reconnecting: no `leave` follows what the dead socket carried, and the server never acknowledged it.
    if (!writesLeave) this._reportLost(session.takeUnacknowledged());
    this._reportUnsent(unsent);
    return closing;
  }

  /**
   * Messages of the app's that an ending session wrote and the server never acknowledged (a failed resume, or
   * `leave()` while reconnecting): each may or may not have arrived, and is reported `undeliverable`
   * `session-lost` with its `type` and `data`.
   * @private @param {any[]} lost
   */
  _reportLost(lost) {
    for (const m of lost) {
      this.stats.lost++;
      this._emit('undeliverable', { to: m.to, id: m.id, reason: 'session-lost', type: m.type, data: m.data });
    }
  }

  /**
   * Messages the room leaves without writing (they waited for the server's rate, or for a socket): each of the app's
   * is reported as `undeliverable` `not-sent`, with its `type` and `data` (a `broadcast` has no `to` nor `id`); the
   * SDK's own (negotiation, outcome reports) are only counted (`stats.unsent`, both kinds).
   * @private @param {{msg: any, internal: boolean}[]} unsent
   */
  _reportUnsent(unsent) {
    for (const { msg, internal } of unsent) {
      this.stats.unsent++;
      if (internal) continue;
      this._emit('undeliverable', { to: msg.to, id: msg.id, reason: 'not-sent', type: msg.type, data: msg.data });
    }
  }

  // ---- leaving with the page (docs/sdk.md, "Leaving is immediate") ---------------------------------------------

  /**
   * The page is going away (`pagehide`: a closed tab, a navigation, a reload, the page entering the back/forward
   * cache): leave at once, so the others see `peer-left` now rather than after the server's resume grace (a socket
   * that merely drops keeps its session for that grace, which is what covers network drops). Synchronous: nothing
   * asynchronous runs once the page is hidden, so `leave` is written and the socket closed in this task; the
   * browser sends queued frames before the close frame. `pagehide` rather than `beforeunload`: it fires on every
   * way out, including mobile tab switches that discard the page, and never asks the user anything. With no time to
   * wait for the rate, the messages still waiting for it go first as far as its margin admits (`_writeLeave`); the
   * rest is reported as `undeliverable` `not-sent` (`closed` follows at once: a page being hidden may still run it).
   * Also while `leave()` waits for its queue: this ends it now.
   * @private
   */
  _leaveWithPage() {
    if (this.state === 'closed') return;
    for (const pc of this.connections.values()) pc._flushOutcome();
    if (!this._left) this._writeLeave(true);
    this._finish(1000, 'left: the page was hidden (pagehide)');
  }

  // ---- calls across a lost session (docs/sdk.md, "Calls that survive") ---------------------------------------

  /**
   * The session is gone (a restarted server refused the resume) and this peer joins again under a new id, as will
   * the others. Its calls stay open, still keyed by the old ids, and wait for their remote peer to say which new id
   * it has now (`{"rejoin": {"was": [old ids]}}`, `_onRejoinSignal`); those not found within the resume grace
   * period (at least 10 s) are closed. `rejoinCalls: false` closes them at once, as before.
   * @private @param {string} previousPeerId
   */
  _keepCalls(previousPeerId) {
    const keep = this._opts.rejoinCalls !== false;
    for (const pc of [...this.connections.values()]) {
      if (keep && !pc.closed) pc._orphan();
      else pc._close(false, { by: 'local', reason: 'session-lost' });
    }
    if (!keep) return;
    /** @private @type {string[]} our own ids the remote peers may still know us by (newest last) */
    this._previousIds = [...(this._previousIds || []), previousPeerId].slice(-4);
    /** @private @type {Set<string>} peers already told our old ids since the last rejoin */
    this._toldRejoin = new Set();
    clearTimeout(this._orphanTimer);
    /** @private */ this._orphanTimer = setTimeout(() => {
      for (const pc of [...this.connections.values()]) {
        if (pc._orphaned) pc._close(false, { by: 'remote', reason: 'peer-left' });
      }
    }, Math.max(this.resumeGraceMs, 10000));
  }

  /**
   * A peer of a connected call was lost to the room (its session expired while its media still flowed): the call
   * stays, under the old id, for the peer to rejoin and prove it (`_onRejoinSignal`), for as long as its media
   * flows, checked every resume grace (at least 10 s); once it stops, the call is closed.
   * @private @param {Peer} pc
   */
  _awaitRejoin(pc) {
    pc._orphan();
    const wait = Math.max(this.resumeGraceMs, 10000);
    const check = () => {
      if (!pc._orphaned || pc.closed) return;
      if (pc._mediaUp() && this.state !== 'closed') pc._rejoinTimer = setTimeout(check, wait);
      else pc._close(false, { by: 'remote', reason: 'peer-left' });
    };
    clearTimeout(pc._rejoinTimer);
    pc._rejoinTimer = setTimeout(check, wait);
  }

  /**
   * Tells `to` (null: every peer of the room) the ids we had, while a call of ours still waits for its peer.
   * @private @param {string | null} to
   */
  _announceRejoin(to) {
    const waiting = [...this.connections.values()].some((pc) => pc._orphaned);
    if (!waiting || !this._previousIds) return;
    for (const id of to ? [to] : [...this.peers.keys()]) this._tellRejoin(id);
  }

  /**
   * Tells `to` our old ids, and for each call of ours that waits, the proof that we are its other end
   * (`rejoinProof`): we do not know which of them `to` was, so it gets one per call and finds its own.
   * @private @param {string} to
   */
  _tellRejoin(to) {
    if (!this._previousIds || !this._toldRejoin || this._toldRejoin.has(to)) return;
    this._toldRejoin.add(to);
    const proof = [];
    for (const pc of this.connections.values()) {
      const p = pc._orphaned && this.peerId ? rejoinProof(pc.pc, this.peerId) : null;
      if (p && proof.length < MAX_REJOIN_PROOFS) proof.push(p);
    }
    const data = { rejoin: { was: this._previousIds, proof } };
    this._send({ type: 'signal', to, data, id: `pc-${++this._msgId}` }, true);
  }

  /**
   * `from` rejoined and was `was` before: our call with that old id carries on with `from` (event `peer-rejoined`),
   * and we tell `from` our own old ids if we rejoined too. Only a call that lost its session with ours (orphaned),
   * whose old id has not rejoined this room, and whose other end proves it is `from` (`rejoinProof`): any peer of the
   * room knows the old ids from the peer list, and without the proof could take a call over by claiming one.
   * @private @param {string} from @param {{was?: unknown, proof?: unknown}} rejoin
   */
  _onRejoinSignal(from, rejoin) {
    const was = (Array.isArray(rejoin.was) ? rejoin.was : [rejoin.was]).slice(0, MAX_REJOIN_PROOFS);
    const proofs = Array.isArray(rejoin.proof) ? rejoin.proof.slice(0, MAX_REJOIN_PROOFS) : [];
    for (const old of was) {
      if (typeof old !== 'string' || old === from || this.peers.has(old)) continue;
      const pc = this.connections.get(old);
      if (!pc || pc.closed || !pc._orphaned) continue;
      const expected = rejoinProof(pc.pc, from);
      if (!expected || !proofs.includes(expected)) continue;
      const other = this.connections.get(from);
      if (other && other !== pc) other._close(false, { by: 'remote', reason: 'replaced' });
      this.connections.delete(old);
      this.connections.set(from, pc);
      pc._rebind(from);
      this._emit('peer-rejoined', { peerId: from, previousPeerId: old, peer: pc });
      break;
    }
    this._tellRejoin(from);
  }

  /** Signaling is usable again (resumed or joined): restarts that waited for it go now. @private */
  _signalingBack() {
    for (const pc of this.connections.values()) if (pc._recovery) pc._recovery.handleSignaling();
  }

  /** A peer connection saw its path break or the network change: is the socket still alive? @internal */
  _probeSignaling() {
    this._link.probe(this._opts.probeTimeoutMs ?? PROBE_TIMEOUT_MS);
  }

  // ---- long calls: TURN credentials refreshed before they expire ---------------------------------------------

  /**
   * New `iceServers` (from `ice-servers`, an HTTP refresh or the app): into the room and every peer connection, for
   * its next restart; the next refresh is scheduled from their expiry.
   * @private @param {IceServer[]} servers
   */
  _setIceServers(servers) {
    this.iceServers = servers;
    /** @private failed refreshes in a row */ this._iceRefreshFailures = 0;
    for (const pc of this.connections.values()) if (!pc.closed) pc._applyIceServers();
    this._emit('ice-servers', { iceServers: servers, expiresAt: credentialExpiry(servers) });
    this._scheduleIceRefresh();
  }

  /**
   * Fresh `iceServers` over the signaling socket (`{"type":"ice-servers"}`, docs/protocol.md); the answer also goes
   * through `_setIceServers`. One request at a time (every caller shares it). Resolves null when no socket is usable
   * now, the server does not know the message (`unknown-type`: an older server), or nothing came within `ms`.
   * @internal @param {number} [ms] @returns {Promise<IceServer[] | null>}
   */
  _askIceServers(ms = ICE_ASK_TIMEOUT_MS) {
    if (this._iceAsk) return this._iceAsk.promise;
    if (this._iceAskUnsupported || !this._session.usable || !this._link.writable) return Promise.resolve(null);
    /** @type {(servers: IceServer[] | null) => void} */ let resolve = () => {};
    /** @type {Promise<IceServer[] | null>} */
    const promise = new Promise((r) => (resolve = r));
    const timer = setTimeout(() => this._answerIceAsk(null), ms);
    /** @private @type {{promise: Promise<IceServer[] | null>, resolve: (s: IceServer[] | null) => void, timer: any} | null} */
    this._iceAsk = { promise, resolve, timer };
    this._session.chargeFrame(now());
    this._link.write(this._session.iceServersFrame());
    return promise;
  }

  /** @private @param {IceServer[] | null} servers */
  _answerIceAsk(servers) {
    const ask = this._iceAsk;
    if (!ask) return;
    this._iceAsk = null;
    clearTimeout(ask.timer);
    ask.resolve(servers);
  }

  /**
   * Before an ICE restart: fresh servers, so that a restart after a lost relay node or an expired credential
   * allocates on a live node with a valid credential. Asked over the socket only (an HTTP round trip, or an app's
   * function, is not worth delaying a restart for: the scheduled refresh covers the credential); at most `ms`.
   * @internal @param {number} ms
   */
  async _freshIceServersForRestart(ms) {
    if (this._opts.refreshIceServers === false || typeof this._opts.refreshIceServers === 'function') return;
    await this._askIceServers(ms);
  }

  /**
   * The TURN credential in `iceServers` is a REST credential (`<expiry>:<id>`). An allocation made with it outlives
   * it (the server checks the expiry only for a new Allocate: docs/sdk.md, "Calls that survive"), but an ICE restart
   * after the expiry would allocate with a dead credential. So a fresh one is fetched a while before the expiry
   * (`refreshDelayMs`) and put into every peer connection (`setConfiguration`), for its next restart.
   * @private
   */
  _scheduleIceRefresh() {
    clearTimeout(this._iceRefreshTimer);
    const expiry = credentialExpiry(this.iceServers);
    if (expiry === null || this._opts.refreshIceServers === false || this.state === 'closed') return;
    const delay = refreshDelayMs(expiry, Date.now());
    /** @private */ this._iceRefreshTimer = setTimeout(() => this._refreshIceServers(), delay);
  }

  /**
   * A fresh credential: asked over the signaling socket (`ice-servers`: the session authenticates it, so it works
   * after the join token expired; in a cluster the answering node names the live nodes), else from
   * `GET /api/ice-servers` (a server without `ice-servers`, or no usable socket now), or the app's own function.
   * @private
   */
  async _refreshIceServers() {
    const custom = this._opts.refreshIceServers;
    try {
      // An answer over the socket has been applied as it arrived.
      if (typeof custom !== 'function' && (await this._askIceServers()) !== null) return;
      const servers =
        typeof custom === 'function' ? await custom() : await fetchIceServers(this.url, this._opts.token);
      if (this.state === 'closed') return;
      if (!Array.isArray(servers) || !servers.length) throw new Error('no iceServers in the answer');
      this._setIceServers(servers);
    } catch (err) {
      if (this.state === 'closed') return;
      const message = `could not refresh the TURN credential: ${err && err.message ? err.message : err}`;
      this._emit('error', { code: 'ice-refresh-failed', message });
      // 30 s, 1 min, 2 min, … at most 10 minutes apart: a refusal that lasts (an expired join token) is not hammered.
      const failures = (this._iceRefreshFailures = (this._iceRefreshFailures || 0) + 1);
      const delay = Math.min(ICE_REFRESH_RETRY_MS * 2 ** (failures - 1), 10 * 60 * 1000);
      /** @private */ this._iceRefreshTimer = setTimeout(() => this._refreshIceServers(), delay);
    }
  }
}

/**
 * A peer connection negotiated through a room with perfect negotiation (MDN): the peer with the lexicographically
 * smaller id is polite and rolls back its own offer on glare; the impolite one ignores the colliding offer.
 *
 * Events (`on(name, fn)` as on `Room`; `PeerEventMap`): `open` (data channel open), `message` `{data}`, `close`
 * `{by, reason}` (final: this side closed it, or the other side hung up — its `bye`, its data channel closing, it
 * left), `track` `{track, streams}`, `state` `{connectionState, iceConnectionState}`, `error` `{code, message}`;
 * files (`sendFile`): `file-start` `{id, name, size, type}` (receiving), `file-progress` `{id, name, size, bytes,
 * direction}`, `file` `{id, name, size, type, blob, sha256, ms}` (received, hash checked), `file-cancel`
 * `{id, name, size, direction, by, code, reason}` (it ended without arriving: `FileErrorCode`); `quality`
 * `{grade, rttMs, jitterMs, lossPercent, path}` when the connection's grade changes (`ConnectionQuality`).
 * @extends {Emitter<PeerEventMap>}
 */
export class Peer extends Emitter {
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
    /** @internal @type {PeerClose | null} who closed it, for what was still under way (file transfers) */
    this._closedBy = null;
    /** @internal @type {ReturnType<typeof setTimeout> | undefined} the check of a lost peer's call (`_awaitRejoin`) */
    this._rejoinTimer = undefined;
    /** @type {RTCDataChannel | null} */
    this.channel = null;
    /** @type {MediaStream[]} remote streams */
    this.remoteStreams = [];

    const custom = this.options.iceServers;
    const chosen = typeof custom === 'function' ? custom(room.iceServers) : custom || room.iceServers;
    const iceServers = usableIceServers(chosen);
    /** @type {RTCConfiguration} */
    const config = { iceServers };
    if (this.options.iceTransportPolicy) config.iceTransportPolicy = this.options.iceTransportPolicy;
    /** The underlying RTCPeerConnection. */
    this.pc = new RTCPeerConnection(config);
    /**
     * What the outcome report is made of, gathered as the connection goes (docs/sdk.md, "Connection outcomes").
     * @private
     */
    this._outcome = {
      startedAt: now(),
      reported: false,
      policy: /** @type {'all' | 'relay'} */ (config.iceTransportPolicy === 'relay' ? 'relay' : 'all'),
      iceServers,
      /** @type {CandidateErrorReport[]} */ errors: [],
      remoteCandidates: 0,
      remoteDescription: false,
      restarts: 0,
      /** An ICE restart replaced the first generation (`_generationEnds`). */
      restarted: false,
      /** Ends a failure report's wait for gathering (set while it waits). @type {(() => void) | null} */
      stopGatheringWait: null,
      /**
       * Candidates gathered per ICE generation (by ufrag): after an ICE restart getStats may keep only the new
       * generation's, which would report a peer as having gathered less than it did.
       * @type {Map<string, GatheredCounts>}
       */
      seen: new Map(),
      /** @type {any} */ timer: null,
      /** @type {(() => void) | null} sends a connected report now instead of after its path settles */ flush: null,
      /** When it connected (its connected report's moment); 0 before. */
      connectedAt: 0,
      /** The pair the connected report named: a drop report says which path broke. @type {any} */
      connectedPair: null,
      /**
       * The recovery episode running since the connection broke: when, what broke it, the ICE generations before
       * it (a drop report counts only what the restarts gathered). @type {{at: number, cause: string, ufrags: Set<string>} | null}
       */
      broken: null,
      dropReported: false,
    };

    /** @private */ this._makingOffer = false;
    /** @private offers received and not yet applied */ this._offersPending = 0;
    /** @private our last offer's setLocalDescription, settled or not (glare waits for it) */
    this._offering = Promise.resolve();
    /** @private */ this._ignoreOffer = false;
    /** @private */ this._chain = Promise.resolve();
    /** @private @type {{resolve: (peer: Peer) => void, reject: (err: TraverseError) => void}} */
    this._readyWaiter = { resolve: () => {}, reject: () => {} };
    /**
     * Resolves with this `Peer` when its data channel is open (with `dataChannel: false`: when the connection is
     * connected); rejects when it closes first (`closed`, or `unknown-peer` when the other peer is not in the room).
     * @type {Promise<Peer>}
     */
    this.ready = new Promise((resolve, reject) => {
      this._readyWaiter = { resolve, reject };
    });
    this.ready.catch(() => {});
    /** @private @type {{data: string | Blob | ArrayBuffer, size: number}[]} sends waiting behind a Blob being read */
    this._sendQueue = [];
    /** @private bytes in `_sendQueue` */ this._sendQueued = 0;

    const pc = this.pc;
    pc.onnegotiationneeded = async () => {
      // An offer from the other side is on its way in: our own would only be rolled back (see `_applySignal`). Once
      // it is answered, the browser asks again if anything is still to negotiate.
      if (this._offersPending > 0) return;
      try {
        this._makingOffer = true;
        const offering = pc.setLocalDescription();
        this._offering = offering.catch(() => {});
        await offering;
        this._signal({ sdp: pc.localDescription });
      } catch (err) {
        this._fail('negotiation-failed', err);
      } finally {
        this._makingOffer = false;
      }
    };
    pc.onicecandidate = ({ candidate }) => {
      if (!candidate) return;
      countCandidate(this._outcome.seen, candidate);
      this._signal({ candidate });
    };
    pc.oniceconnectionstatechange = () => this._emitState();
    pc.onconnectionstatechange = () => {
      // Without the SDK's channel there is nothing else to wait for.
      if (pc.connectionState === 'connected' && !this.options.dataChannel) this._readyWaiter.resolve(this);
      if (pc.connectionState === 'connected') this._settle('connected');
      else if (pc.connectionState === 'failed') {
        this._settle('failed');
        // Without recovery a connection that fails after connecting is over: a drop.
        if (!this._recovery) this._reportDrop('ice-failed', 0);
      }
      this._emitState();
    };
    pc.onicecandidateerror = (/** @type {any} */ e) => addCandidateError(this._outcome.errors, e);
    this._outcome.timer = setTimeout(() => this._settle('timeout'), room._opts.outcomeTimeoutMs ?? 30000);
    pc.ontrack = ({ track, streams }) => {
      for (const s of streams) if (!this.remoteStreams.includes(s)) this.remoteStreams.push(s);
      this._emit('track', { track, streams });
    };
    // Files: channels the other side opens for `sendFile` (section "file and large-message transfer").
    attachFiles(this);

    // The initiator adds its tracks and creates the channel now (that starts negotiation); an auto-accepted peer
    // does so after applying the offer, so that it does not start a colliding offer of its own.
    /** @private */ this._pendingSetup = !initiator;
    if (initiator) this._setup();
    /** @internal @type {Recovery | null} ICE restarts on disconnection, failure or a network change */
    this._recovery = this._startRecovery();
    /**
     * The connection's quality at the last measurement (`quality` events), null before the first.
     * @type {ConnectionQuality | null}
     */
    this.quality = null;
    /** @private the previous measurement's counters, for the next one's deltas */
    this._qualityBase = null;
    /** @private */
    this._qualityTimer = null;
    const every = this.options.qualityIntervalMs ?? 2000;
    if (every !== false && every > 0) this._qualityTimer = setInterval(() => this._measureQuality(), every);
  }

  /**
   * Send one message on the data channel: a string, Blob, ArrayBuffer or view, in the order of the calls (a Blob is
   * read first, and what is sent after it waits for it: the browser's own Blob sending let later messages overtake
   * it). Throws a `TypeError` for anything else (a number or an object is not turned into a string: send
   * `JSON.stringify(value)`); `not-open` before the channel is open; `too-large` beyond `maxMessageBytes` (the SCTP
   * max-message-size both browsers agreed on: Chrome 256 KiB, Safari 64 KiB) — send files and large data with
   * `sendFile`, which chunks them; `buffer-full` when the channel already holds 8 MiB not yet sent (Chrome closes a
   * channel beyond 16 MiB): wait for the channel's `bufferedamountlow` event, or use `sendFile`, which waits by
   * itself.
   * @param {string | Blob | ArrayBuffer | ArrayBufferView} data
   */
  send(data) {
    const isBlob = typeof Blob !== 'undefined' && data instanceof Blob;
    const isBytes = data instanceof ArrayBuffer || ArrayBuffer.isView(data);
    if (typeof data !== 'string' && !isBlob && !isBytes) {
      const what = data === null ? 'null' : Array.isArray(data) ? 'an array' : typeof data;
      throw new TypeError(
        `peer.send takes a string, Blob, ArrayBuffer or typed array, not ${what}; send JSON.stringify(value) for data`,
      );
    }
    const ch = this.channel;
    if (!ch || ch.readyState !== 'open') throw new TraverseError('not-open', 'the data channel is not open');
    const max = this.maxMessageBytes;
    const size =
      typeof data === 'string'
        ? utf8Length(data, max)
        : isBlob
          ? /** @type {Blob} */ (data).size
          : /** @type {ArrayBuffer | ArrayBufferView} */ (data).byteLength;
    if (size > max) {
      throw new TraverseError(
        'too-large',
        `peer.send: ${size} bytes is more than one data channel message holds on this connection ` +
          `(max-message-size ${max} bytes); use peer.sendFile(), which chunks files and large data`,
      );
    }
    const waiting = ch.bufferedAmount + this._sendQueued;
    if (waiting + size > SEND_BUFFER_LIMIT) {
      throw new TraverseError(
        'buffer-full',
        `peer.send: ${waiting} bytes are still waiting in the data channel; wait for its ` +
          `'bufferedamountlow' event, or use peer.sendFile(), which waits by itself`,
      );
    }
    if (!isBlob && !this._sendQueue.length) {
      ch.send(/** @type {any} */ (data));
      return;
    }
    // A Blob is read before it is sent, and whatever follows waits for it; bytes are copied, since the app may
    // reuse its buffer once `send` returned.
    const copy = ArrayBuffer.isView(data)
      ? new Uint8Array(data.buffer, data.byteOffset, data.byteLength).slice().buffer
      : data instanceof ArrayBuffer
        ? data.slice(0)
        : data;
    this._sendQueue.push({ data: copy, size });
    this._sendQueued += size;
    if (this._sendQueue.length === 1) this._sendInOrder(ch);
  }

  /**
   * Sends `_sendQueue` in order on `ch`, reading each Blob first. A Blob that cannot be read is reported (`error`
   * `read-failed`) and skipped; when the channel is gone, what waits is dropped.
   * @private @param {RTCDataChannel} ch
   */
  async _sendInOrder(ch) {
    while (this._sendQueue.length) {
      const item = this._sendQueue[0];
      /** @type {any} */ let data = item.data;
      if (typeof Blob !== 'undefined' && data instanceof Blob) {
        try {
          data = await data.arrayBuffer();
        } catch (err) {
          data = null;
          this._emit('error', { code: 'read-failed', message: `peer.send: the Blob could not be read: ${err}`, peerId: this.peerId });
        }
      }
      this._sendQueue.shift();
      this._sendQueued -= item.size;
      if (this.channel !== ch || ch.readyState !== 'open') {
        this._sendQueue = [];
        this._sendQueued = 0;
        return;
      }
      if (data !== null) ch.send(data);
    }
  }

  /**
   * The largest message `send` takes: the SCTP max-message-size of this connection (RFC 8841; 64 KiB before it is
   * known or when the other side did not say).
   * @type {number}
   */
  get maxMessageBytes() {
    const m = this.pc.sctp?.maxMessageSize;
    return m && m > 0 ? m : 65536;
  }

  /**
   * Send a file, Blob or buffer of any size on a data channel of its own (ordered, reliable), in 64 KiB chunks,
   * never holding more than ~2 MiB of it in memory. At most `maxOutgoingFiles` (4) go to one peer at once; the
   * others wait their turn. Resolves once the other side has it all and its SHA-256 matched, with
   * `{id, name, size, type, sha256, ms}`; rejects with a `TraverseError` whose `code` is a `FileErrorCode`
   * (`cancelled`, `refused`, `integrity`, `closed`, `timeout`, `read-failed`), with `by` and `file`. The other peer
   * gets `file-start`, `file-progress`, then `file` with a `Blob`.
   * @param {FileSource} file @param {SendFileOptions} [options] @returns {Promise<FileSent>}
   */
  sendFile(file, options = {}) {
    return sendFile(this, file, options);
  }

  /**
   * Cancel a transfer of either direction by its `id` (from `file-start` or `file-progress`); both sides get
   * `file-cancel`. False when there is no such transfer (any more).
   * @param {string} id @param {string} [reason]
   */
  cancelFile(id, reason = 'cancelled') {
    const t = TRANSFERS.get(this)?.get(id);
    if (!t) return false;
    t.cancel(reason, 'local');
    return true;
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
    const pair = selectedPairOf(stats);
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

  /**
   * Close the connection (does not leave the room); the other side's `Peer` closes too. While the room reconnects,
   * the other side is told once it is back.
   */
  close() {
    this._close(true, { by: 'local', reason: 'closed' });
  }

  /**
   * Final: the `close` event with `why`, `ready` rejected with `err` if it had not resolved.
   * @internal @param {boolean} tellRemote send `bye` (queued while the room reconnects)
   * @param {PeerClose} why @param {TraverseError} [err]
   */
  _close(tellRemote, why, err) {
    if (this.closed) return;
    // A `bye` lets the other side drop its half, so that a later connect() starts from a fresh RTCPeerConnection.
    // While the room reconnects it waits in the room's queue, which is sent once the session is back.
    if (tellRemote && !this.room._left && this.room.peers.has(this.peerId)) this._signal({ bye: true });
    this.closed = true;
    this._closedBy = why;
    clearTimeout(this._rejoinTimer);
    clearInterval(this._qualityTimer);
    // Closed while still broken (the app or the other peer gave up before recovery did): the call dropped.
    if (this._outcome.broken) this._reportDrop(this._outcome.broken.cause, this._recovery?.attempts ?? 0);
    this._stopRecovery();
    // Closed by the app or the room before an outcome: nothing to report (that is not a failure to connect).
    this._outcome.reported = true;
    clearTimeout(this._outcome.timer);
    try {
      this.pc.close();
    } catch {
      /* ignore */
    }
    if (this.room.connections.get(this.peerId) === this) this.room.connections.delete(this.peerId);
    this._readyWaiter.reject(err ?? new TraverseError('closed', `peer connection closed (${why.reason})`));
    this._sendQueue = [];
    this._sendQueued = 0;
    this._emit('close', why);
  }

  /**
   * An offer from another RTCPeerConnection than the one this `Peer` negotiated with (its DTLS certificate
   * differs): the other side started a new call. @internal @param {RTCSessionDescriptionInit} offer
   */
  _isNewRemote(offer) {
    const before = fingerprintOf(this.pc.remoteDescription);
    const next = fingerprintOf(/** @type {any} */ (offer));
    return !!before && !!next && before !== next;
  }

  // ---- internals --------------------------------------------------------------------------------------------

  /** @internal @param {string} name @param {any} detail */
  _emit(name, detail) {
    this.dispatchEvent(new CustomEvent(name, { detail }));
  }

  /**
   * The first of connected, failed or the timeout: report it to the server once.
   * @private @param {'connected' | 'failed' | 'timeout'} outcome
   */
  async _settle(outcome) {
    const o = this._outcome;
    if (o.reported || this.closed) return;
    o.reported = true;
    clearTimeout(o.timer);
    const elapsedMs = now() - o.startedAt;
    if (outcome === 'connected') o.connectedAt = now();
    let sent = false;
    const send = (/** @type {any} */ stats) => {
      if (sent) return;
      sent = true;
      o.flush = null;
      const report = this._reportOf(outcome, stats, { elapsedMs, restarts: o.restarts, seen: o.seen });
      if (outcome === 'connected') o.connectedPair = report.pair ?? null;
      this.room._reportOutcome(this.peerId, report);
    };
    // ICE may fail while gathering still runs (a TURN server that never answers times out about 10 s in): a failure
    // waits, a bounded while, for gathering to finish, so that the report's counts and errors are final.
    // Not past a restart (ours or the other side's): the gathering then running is the new generation's, and
    // waiting for it made the report miss the server's pairing deadline (NAT lab, noudp + eim-b without TLS).
    if (outcome !== 'connected' && !o.restarted) {
      const stopped = new Promise((resolve) => (o.stopGatheringWait = () => resolve(undefined)));
      await Promise.race([gatheringComplete(this.pc, GATHERING_WAIT_MS), stopped]);
      o.stopGatheringWait = null;
    }
    const stats = await this.pc.getStats().catch(() => new Map());
    if (outcome !== 'connected') return send(stats);
    // Chrome often nominates a relayed pair first and moves to a direct one once its checks succeed: the path is
    // read again a few seconds later (the time to connect stays the first one). A room that leaves meanwhile sends
    // what it has (`_flushOutcome`).
    o.flush = () => send(stats);
    await new Promise((resolve) => setTimeout(resolve, PATH_SETTLE_MS));
    if (sent) return;
    const settled =
      !this.closed && this.pc.connectionState === 'connected' ? await this.pc.getStats().catch(() => stats) : stats;
    send(settled);
  }

  /**
   * One quality measurement: nothing before the connection first connected; `lost` while ICE is disconnected or
   * failed; else graded from `getStats` (`qualityOf`). A `quality` event when the grade changed.
   * @private
   */
  async _measureQuality() {
    if (this.closed || !this._outcome.connectedAt) return;
    const ice = this.pc.iceConnectionState;
    /** @type {ConnectionQuality} */ let q;
    if (ice === 'disconnected' || ice === 'failed') {
      q = { grade: 'lost', rttMs: null, jitterMs: null, lossPercent: null, path: this.quality?.path ?? null };
      this._qualityBase = null;
    } else {
      const stats = await this.pc.getStats().catch(() => null);
      if (!stats || this.closed) return;
      const measured = qualityOf(stats, this._qualityBase);
      this._qualityBase = measured.base;
      q = measured.quality;
    }
    const changed = this.quality?.grade !== q.grade;
    this.quality = q;
    if (changed) this._emit('quality', q);
  }

  /** A connected report still waiting for its path to settle goes out now (the room is leaving). @internal */
  _flushOutcome() {
    if (this._outcome.flush) this._outcome.flush();
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
    if (this.closed || this.room.state === 'closed' || this._orphaned) return;
    const id = `pc-${++this.room._msgId}`;
    const sentFor = this.room._sentFor;
    sentFor.set(id, { peer: this, to: this.peerId });
    if (sentFor.size > SENT_FOR_MAX) sentFor.delete(/** @type {string} */ (sentFor.keys().next().value));
    this.room._send({ type: 'signal', to: this.peerId, data, id }, true);
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
    // The other side closed its half (its `Peer` closed, or its page went): the call is over, even when its `bye`
    // never came (it closed while its room was reconnecting, and then resumed too late or not at all).
    ch.onclose = () => {
      if (!this.closed && this.channel === ch) this._close(false, { by: 'remote', reason: 'channel-closed' });
    };
    this.channel = ch;
  }

  /** Apply a negotiation message in arrival order. @internal @param {any} data */
  _onSignal(data) {
    const offer = !!(data && data.sdp && data.sdp.type === 'offer');
    if (offer) this._offersPending++;
    this._chain = this._chain
      .then(() => this._applySignal(data))
      .catch((err) => this._fail('negotiation-failed', err))
      .finally(() => {
        if (offer) this._offersPending--;
      });
  }

  /** @private */
  async _applySignal({ sdp, candidate, bye }) {
    if (this.closed) return;
    if (bye) {
      this._close(false, { by: 'remote', reason: 'bye' });
      return;
    }
    const pc = this.pc;
    if (sdp) {
      const collision = sdp.type === 'offer' && (this._makingOffer || pc.signalingState !== 'stable');
      this._ignoreOffer = !this.polite && collision;
      if (this._ignoreOffer) return;
      if (sdp.type === 'offer' && isIceRestart(pc, sdp)) this._generationEnds();
      if (collision) {
        // Glare, and we are polite: take their offer, which rolls ours back in the same step (implicit rollback).
        // A separate rollback first left a moment in which our data channel needed negotiation again: a second offer
        // was made and rolled back too. And a rollback while our offer's gathering runs (a TURN allocation in
        // flight) left Chrome's next gathering stuck with no candidate (glare test, 1 run in 5): our offer is let
        // finish and its gathering end first, which costs about one TURN round trip.
        await this._offering;
        if (pc.signalingState === 'have-local-offer' && pc.iceGatheringState !== 'complete') {
          await gatheringComplete(pc, GLARE_GATHER_MS);
        }
        await pc.setRemoteDescription(sdp).catch(async (err) => {
          if (pc.signalingState !== 'have-local-offer') throw err;
          // A browser without implicit rollback.
          await pc.setLocalDescription({ type: 'rollback' });
          await pc.setRemoteDescription(sdp);
        });
      } else {
        await pc.setRemoteDescription(sdp);
      }
      this._outcome.remoteDescription = true;
      if (this._pendingSetup) this._setup();
      if (sdp.type === 'offer') {
        await pc.setLocalDescription();
        this._signal({ sdp: pc.localDescription });
      }
    } else if (candidate) {
      try {
        await pc.addIceCandidate(candidate);
        if (candidate.candidate) this._outcome.remoteCandidates++;
      } catch (err) {
        if (!this._ignoreOffer) throw err;
      }
    }
  }

  // ---- connection recovery (docs/sdk.md, "Calls that survive"; the state machine is `Recovery`) ----------------

  /** @private @returns {Recovery | null} */
  _startRecovery() {
    const opts = this.options.recovery ?? this.room._opts.recovery;
    if (opts === false || !this.options.restartOnFailure) return null;
    const pc = this.pc;
    const connected = () => pc.iceConnectionState === 'connected' || pc.iceConnectionState === 'completed';
    const recovery = new Recovery(opts || {}, {
      restart: () => this._restartIce(),
      canRestart: () =>
        !this.closed && !this._orphaned && this.room.state === 'open' && this.room.peers.has(this.peerId),
      connected,
      emit: (name, detail) => {
        this._noteRecovery(name, detail);
        this._emit(name, { ...detail, peerId: this.peerId });
      },
    });
    // Either state may be the one that moves: Chrome leaves `iceConnectionState` at `disconnected` when the
    // connection as a whole goes `failed` (NAT lab, a host whose address changed).
    // A path that broke, or a network that changed, may have taken the signaling socket with it (a host whose
    // address changed): it is probed at once rather than found dead after `deadAfterMs`, since a restart needs it.
    const probe = (/** @type {string} */ state) => {
      if (state === 'disconnected' || state === 'failed') this.room._probeSignaling();
    };
    pc.addEventListener('iceconnectionstatechange', () => {
      probe(pc.iceConnectionState);
      recovery.handleState(pc.iceConnectionState);
    });
    pc.addEventListener('connectionstatechange', () => {
      probe(pc.connectionState);
      recovery.handleState(pc.connectionState);
    });
    // A restart is over once ICE selected a pair of the new generation: a restart replaces every pair, so the
    // selected pair changes even where ICE never left `connected` (a relay that died unnoticed, a network change on a
    // path that still works). Without that event (no RTCIceTransport) a restart ends with its answer instead: an
    // offer and answer exchanged since the restart, not the rollback of an offer a lost session dropped.
    /** @type {any} */ let watched = null;
    const watchPair = () => {
      const t = iceTransportOf(pc);
      if (!t || !('onselectedcandidatepairchange' in t)) return false;
      if (t !== watched) {
        watched = t;
        t.addEventListener('selectedcandidatepairchange', () => {
          if (connected()) recovery.handleState('connected');
        });
      }
      return true;
    };
    pc.addEventListener('signalingstatechange', () => {
      if (pc.signalingState !== 'stable') {
        /** @private an offer or answer went by since the last restart */ this._negotiatedSinceRestart = true;
      } else if (!watchPair() && this._negotiatedSinceRestart && connected()) {
        recovery.handleState(pc.iceConnectionState);
      }
    });
    /** @private */ this._unwatchNetwork = watchNetwork((kind) => {
      if (kind !== 'offline') this.room._probeSignaling();
      recovery.handleNetworkChange(kind);
    });
    return recovery;
  }

  /**
   * Follows the recovery of a connected call for its drop report: a break starts with the first `reconnecting`
   * of an episode (a blip healed within the grace period is none), ends with `reconnected`, and is a drop when
   * recovery gives up.
   * @private @param {string} name @param {any} detail
   */
  _noteRecovery(name, detail) {
    const o = this._outcome;
    if (name === 'reconnecting' && !o.broken && o.connectedAt) {
      o.broken = { at: this._recovery?.brokenSince ?? now(), cause: detail.cause, ufrags: new Set(o.seen.keys()) };
      // The errors of the restarts, not those of the first connection (reported already).
      o.errors = [];
    } else if (name === 'reconnected') {
      const b = o.broken;
      o.broken = null;
      if (b && !o.dropReported) this._reportRecovered(b, detail);
    } else if (name === 'recovery-failed') {
      this._reportDrop(detail.cause, detail.attempts);
    }
  }

  /**
   * The call broke and came back (`reconnected` after an announced break): report the interruption, `recovered`,
   * with what broke it, how long it took, the restarts it took and the path it goes now (docs/protocol.md).
   * @private @param {{at: number, cause: string, ufrags: Set<string>}} b @param {any} detail
   */
  async _reportRecovered(b, detail) {
    const stats = await this.pc.getStats().catch(() => new Map());
    if (this.closed) return;
    const report = this._breakReport('recovered', stats, b, detail.attempts ?? 0, detail.durationMs, b.cause);
    // The path it goes now is the connected one; a drop after this names it.
    if (report.pair) this._outcome.connectedPair = report.pair;
    this.room._reportOutcome(this.peerId, report);
  }

  /**
   * This connection's outcome report, from what was gathered as it went (`stats`: a getStats report, or an empty
   * map when the peer connection may be closing).
   * @private @param {OutcomeReport['outcome']} outcome @param {any} stats
   * @param {{elapsedMs?: number, restarts: number, seen: Map<string, GatheredCounts>}} o
   */
  _reportOf(outcome, stats, { elapsedMs, restarts, seen }) {
    const o = this._outcome;
    return outcomeReport({
      outcome,
      elapsedMs: elapsedMs ?? now() - o.startedAt,
      policy: o.policy,
      stats,
      iceServers: o.iceServers,
      errors: o.errors,
      remoteCandidates: o.remoteCandidates,
      remoteDescription: o.remoteDescription,
      restarts,
      seen,
      userAgent: typeof navigator !== 'undefined' ? navigator.userAgent : '',
    });
  }

  /**
   * A report of a break (`dropped` or `recovered`): the restarts' own gathering (ICE generations after the break),
   * what broke it, how long the connection had been up and how long the break lasted.
   * @private @param {'dropped' | 'recovered'} outcome @param {any} stats
   * @param {{at: number, ufrags: Set<string>} | null} b the break, if one was announced
   * @param {number} restarts @param {number} brokenMs @param {string} cause
   */
  _breakReport(outcome, stats, b, restarts, brokenMs, cause) {
    const o = this._outcome;
    const seen = new Map([...o.seen].filter(([ufrag]) => !b || !b.ufrags.has(ufrag)));
    const report = this._reportOf(outcome, stats, { restarts, seen });
    const u32 = (/** @type {number} */ n) => Math.max(0, Math.min(0xffffffff, Math.round(n) || 0));
    report.connectedMs = u32((b ? b.at : now()) - o.connectedAt);
    report.brokenMs = u32(brokenMs);
    report.cause = cause;
    return report;
  }

  /**
   * The call connected and then broke for good: report it once, `dropped`, with what broke it, how long it had
   * been up and how long recovery tried (docs/protocol.md, "Connection outcomes"). Built from what was gathered as
   * it went, without getStats: the peer connection may be closing.
   * @private @param {string} cause @param {number} attempts restarts made since the break
   */
  _reportDrop(cause, attempts) {
    const o = this._outcome;
    if (!o.connectedAt || o.dropReported) return;
    o.dropReported = true;
    const b = o.broken;
    const report = this._breakReport('dropped', new Map(), b, attempts, b ? now() - b.at : 0, cause);
    if (o.connectedPair) report.pair = o.connectedPair;
    // The browser said `offline` while recovering (not `navigator.onLine` alone: a browser with only loopback, or
    // behind some VPNs, says false all along).
    if (this._recovery?.offline) report.offline = true;
    o.broken = null;
    this.room._reportOutcome(this.peerId, report);
  }

  /** @private */
  _stopRecovery() {
    if (this._recovery) this._recovery.close();
    if (this._unwatchNetwork) this._unwatchNetwork();
    this._unwatchNetwork = null;
  }

  /**
   * An ICE restart with the room's current servers (a credential refresh or a rejoin brought new ones): the offer
   * it causes goes through perfect negotiation, so a restart from both sides at once is an ordinary glare. Our own
   * offer that a lost session dropped is rolled back first, else the restart would wait for its answer forever.
   * @private
   */
  _restartIce() {
    const pc = this.pc;
    this._outcome.restarts++;
    this._generationEnds();
    this._chain = this._chain
      .then(async () => {
        if (this.closed) return;
        if (!Array.isArray(this.options.iceServers)) await this.room._freshIceServersForRestart(RESTART_ICE_ASK_MS);
        if (this.closed) return;
        this._applyIceServers();
        if (this._offerLost && pc.signalingState === 'have-local-offer') {
          await pc.setLocalDescription({ type: 'rollback' });
        }
        /** @private an offer of ours went with the lost session (`_orphan`) */ this._offerLost = false;
        this._negotiatedSinceRestart = false;
        pc.restartIce();
      })
      .catch((err) => this._fail('negotiation-failed', err));
  }

  /**
   * An ICE restart (ours or the other side's) replaces the generation the outcome report is about. Before this
   * connection ever connected, that generation failed: the other side restarts because its attempt failed, and ours
   * would be replaced before it could reach `failed`, so it is reported now, as the other side's was — else our
   * report came only at the timeout, after the server's pairing deadline (NAT lab, sym-a + sym-b without TURN). A
   * failure report waiting for gathering stops waiting: what gathers now is the new generation.
   * @private
   */
  _generationEnds() {
    const o = this._outcome;
    o.restarted = true;
    if (o.stopGatheringWait) o.stopGatheringWait();
    if (!o.reported && this.pc.connectionState !== 'connected') this._settle('failed');
  }

  /** ICE is up: media (and the data channel) flow, whatever signaling does. @internal */
  _mediaUp() {
    return ['connected', 'completed'].includes(this.pc.iceConnectionState);
  }

  /** Our session was lost: the remote id is stale until the remote peer says its new one. @internal */
  _orphan() {
    /** @internal */ this._orphaned = true;
    // Negotiation messages of the old session were dropped with it: an offer of ours waits for no answer.
    /** @private */ this._offerLost = true;
  }

  /** The remote peer is `peerId` now (both sides rejoined a restarted server). @internal @param {string} peerId */
  _rebind(peerId) {
    const previousPeerId = this.peerId;
    this.peerId = peerId;
    this.polite = /** @type {string} */ (this.room.peerId) < peerId;
    this._orphaned = false;
    this._emit('rejoined', { peerId, previousPeerId });
    // The new server's credential now, so that an answer to the other side's restart gathers with it.
    this._applyIceServers();
    // A negotiation cut in the middle is started again; else a restart that waited for signaling goes now.
    if (!this._recovery) return;
    if (this._recovery.state === 'waiting') this._recovery.handleSignaling();
    else if (this._recovery.state !== 'new') {
      // At most 6 s more: within the restart's own timeout (`restartTimeoutMs`, 10 s) whatever the round trip.
      const slow = Math.min(SESSION_LOST_POLITE_MAX_EXTRA_MS, SESSION_LOST_POLITE_RTTS * (this.quality?.rttMs ?? 0));
      const wait = SESSION_LOST_POLITE_WAIT_MS + slow;
      this._recovery.handleSessionLost(this.polite ? wait : 0);
    }
    else if (this.pc.signalingState !== 'stable') this._restartIce();
  }

  /** The room's `iceServers` (filtered or replaced by `PeerOptions.iceServers`) into the connection. @internal */
  _applyIceServers() {
    const custom = this.options.iceServers;
    if (Array.isArray(custom)) return; // the app's own servers: nothing of ours to refresh
    const chosen = typeof custom === 'function' ? custom(this.room.iceServers) : this.room.iceServers;
    const iceServers = usableIceServers(chosen);
    try {
      this.pc.setConfiguration({ ...this.pc.getConfiguration(), iceServers });
    } catch {
      /* a browser that refuses the change keeps the servers it has */
    }
  }
}

// ---- internal: connection recovery ----------------------------------------------------------------------------

/**
 * When a `Peer` restarts ICE (docs/sdk.md, "Calls that survive").
 * @typedef {object} RecoveryOptions
 * @property {number} [graceMs=2000] ICE `disconnected` for this long starts a restart: a short blip (a NAT's
 *   hiccup, a link down a second) often heals by itself, and a restart costs a round of signaling
 * @property {number[]} [restartDelaysMs] delay before the n-th restart of one episode (the last one repeats);
 *   default `[0, 1000, 3000, 7000, 15000]`
 * @property {number} [restartTimeoutMs=10000] a restart not connected after this long is followed by the next
 * @property {number} [maxRestarts=8] restarts in a row without connecting before giving up (`recovery-failed`)
 */

/**
 * @typedef {'ice-disconnected' | 'ice-failed' | 'network-change' | 'network-offline' | 'session-lost' | 'node-lost'}
 *   RecoveryCause
 */

/** Restart delays of one episode; the first restart goes at once, the last delay repeats. */
export const RESTART_DELAYS_MS = Object.freeze([0, 1000, 3000, 7000, 15000]);

/**
 * What a `Recovery` drives (the `Peer`): `restart()` applies fresh `iceServers` and calls `restartIce()` (the
 * renegotiation goes over perfect negotiation); `canRestart()` says whether signaling can carry the offer now (the
 * room is open and the remote peer known); `connected()` whether ICE has a working pair now; `emit(name, detail)`.
 * @typedef {{restart: () => void, canRestart: () => boolean, connected: () => boolean,
 *   emit: (name: string, detail: any) => void}} RecoveryHost
 *
 * Timers and the clock, injected so that the unit tests run in fake time.
 * @typedef {{setTimeout: (fn: () => void, ms: number) => any, clearTimeout: (t: any) => void, now: () => number}}
 *   Clock
 * @internal
 */

/** @type {Clock} */
const realClock = {
  setTimeout: (fn, ms) => setTimeout(fn, ms),
  clearTimeout: (t) => clearTimeout(t),
  now: () => now(),
};

/**
 * The connection-recovery state machine of one peer connection: ICE and network events in, ICE restarts and the
 * `reconnecting` / `reconnected` / `recovery-failed` events out. One episode at a time:
 *
 *   connected ─disconnected─▶ grace ─graceMs─▶ restarting ─connected─▶ connected (event `reconnected`)
 *        │                      │                 │   ▲
 *        └─failed, network──────┴─────────────────┘   └─ attempt timed out or failed: next after a backoff
 *   restarting/grace ─signaling down─▶ waiting ─signaling back (`handleSignaling`)─▶ restarting
 *
 * A trigger during a restart joins it (no second restart races the first); a peer that left ends it (`close`).
 * It holds no RTCPeerConnection: its host does the restart, so it is unit-tested in node (tests/sdk/recovery).
 *
 * Internal: exported as `_Recovery` for the SDK's unit tests only.
 */
class Recovery {
  /** @param {RecoveryOptions} options @param {RecoveryHost} host @param {Clock} [clock] */
  constructor(options, host, clock = realClock) {
    /** @private */ this._opts = {
      graceMs: 2000,
      restartDelaysMs: RESTART_DELAYS_MS,
      restartTimeoutMs: 10000,
      maxRestarts: 8,
      ...options,
    };
    /** @private */ this._host = host;
    /** @private */ this._clock = clock;
    /** @type {'new' | 'connected' | 'grace' | 'restarting' | 'backoff' | 'waiting' | 'failed' | 'closed'} */
    this.state = 'new';
    /** @private @type {{cause: RecoveryCause, startedAt: number, attempts: number, announced?: boolean} | null} */
    this._episode = null;
    /** @private */ this._timer = null;
    /** @private the browser said `offline`: a restart waits for `online` */ this._offline = false;
    /** Restarts made over the connection's life (the outcome report's `restarts`). */
    this.restarts = 0;
  }

  /** When the running episode started (the break), on the clock's time; null when none runs. */
  get brokenSince() {
    return this._episode ? this._episode.startedAt : null;
  }

  /** The browser said `offline` and not `online` since. */
  get offline() {
    return this._offline;
  }

  /** Restarts made in the running episode. */
  get attempts() {
    return this._episode ? this._episode.attempts : 0;
  }

  /**
   * The peer connection's ICE state or connection state changed to `state` (whichever moved).
   * @param {RTCIceConnectionState | RTCPeerConnectionState} state
   */
  handleState(state) {
    if (this.state === 'closed') return;
    if (state === 'connected' || state === 'completed') return this._recovered();
    if (state === 'failed') {
      if (this.state === 'restarting') return this._attemptFailed();
      if (this.state === 'failed') return; // gave up: only a network change starts again
      return this._trigger('ice-failed', true);
    }
    if (state === 'disconnected' && this.state === 'connected') {
      this._episode = { cause: 'ice-disconnected', startedAt: this._clock.now(), attempts: 0 };
      this.state = 'grace';
      this._arm(() => this._restartNow(), this._opts.graceMs);
    }
  }

  /**
   * The browser's network changed: `online`, `offline`, or `change` (`navigator.connection`). A connection that was
   * up restarts at once (its pair may be on an address that is gone); `offline` holds restarts until `online`.
   * @param {'online' | 'offline' | 'change'} kind
   */
  handleNetworkChange(kind) {
    if (this.state === 'closed' || this.state === 'new') return;
    if (kind === 'offline') {
      this._offline = true;
      return;
    }
    const wasOffline = this._offline;
    this._offline = false;
    if (this.state === 'failed') this._episode = null; // a new network is a new chance
    this._trigger(wasOffline ? 'network-offline' : 'network-change', true);
  }

  /** Signaling can carry an offer again (the room resumed or rejoined, the peer is known): a waiting restart goes. */
  handleSignaling() {
    if (this.state === 'waiting') this._restartNow();
  }

  /**
   * The server lost our session (it restarted) and the remote peer has been found again under its new id: its TURN
   * allocations most likely died with it, so a relayed path is restarted now rather than after ICE notices (about
   * 10 s in Chromium: tests/browser/rejoin.test.js). A direct path just renegotiates without a break. With
   * `waitMs`, the restart waits that long for the other side's to connect first (then it is not needed).
   * @param {number} [waitMs]
   */
  handleSessionLost(waitMs = 0) {
    if (this.state === 'closed' || this.state === 'new') return;
    if (waitMs > 0 && this.state === 'connected') {
      // The other side restarts now; this one only if that has not connected within `waitMs` (see `_rebind`). The
      // path broke all the same (the relays died with the server): the application hears `reconnecting` now, with
      // `attempt: 0` (the other side's restart), and `reconnected` when either restart connects.
      this._episode = { cause: 'session-lost', startedAt: this._clock.now(), attempts: 0, announced: true };
      this.state = 'grace';
      this._host.emit('reconnecting', { cause: 'session-lost', attempt: 0 });
      this._arm(() => this._restartNow(), waitMs);
      return;
    }
    this._trigger('session-lost', true);
  }

  /**
   * Signaling resumed through another node than before (the one in use could not be reached): a relay on that node
   * has most likely gone with it, so the connection restarts now (with the new node's servers) rather than when ICE
   * notices — about 5 s of silence in Chromium, then the grace period. A path that still works just renegotiates.
   */
  handleNodeLost() {
    if (this.state === 'closed' || this.state === 'new') return;
    this._trigger('node-lost', true);
  }

  /** The peer left or the connection closed: nothing more happens. */
  close() {
    this._disarm();
    this.state = 'closed';
    this._episode = null;
  }

  // ---- internals ----

  /**
   * Something calls for a restart: start an episode (or join the running one), restart now or after grace.
   * @private
   */
  _trigger(/** @type {RecoveryCause} */ cause, now) {
    if (this.state === 'restarting' || this.state === 'backoff') return; // coalesced with the running restart
    if (!this._episode) this._episode = { cause, startedAt: this._clock.now(), attempts: 0 };
    if (now) this._restartNow();
  }

  /** @private */
  _restartNow() {
    this._disarm();
    const ep = this._episode;
    if (!ep) return;
    if (this._offline || !this._host.canRestart()) {
      this.state = 'waiting';
      return;
    }
    if (ep.attempts >= this._opts.maxRestarts) {
      this.state = 'failed';
      this._host.emit('recovery-failed', { cause: ep.cause, attempts: ep.attempts });
      return;
    }
    ep.attempts++;
    this.restarts++;
    this.state = 'restarting';
    this._host.emit('reconnecting', { cause: ep.cause, attempt: ep.attempts });
    this._arm(() => (this._host.connected() ? this._recovered() : this._attemptFailed()), this._opts.restartTimeoutMs);
    this._host.restart();
  }

  /** The restart did not connect (timed out or failed): the next one after the backoff. @private */
  _attemptFailed() {
    const ep = this._episode;
    if (!ep) return;
    const delays = this._opts.restartDelaysMs;
    const delay = delays[Math.min(ep.attempts, delays.length - 1)] ?? 0;
    this.state = 'backoff';
    this._arm(() => this._restartNow(), delay);
  }

  /** @private */
  _recovered() {
    const ep = this._episode;
    this._disarm();
    this._episode = null;
    this.state = 'connected';
    // A blip that healed within the grace period made no restart and reported no `reconnecting`: nothing to say.
    if (ep && (ep.attempts > 0 || ep.announced)) {
      const durationMs = Math.round(this._clock.now() - ep.startedAt);
      this._host.emit('reconnected', { cause: ep.cause, durationMs, attempts: ep.attempts });
    }
  }

  /** @private */
  _arm(fn, ms) {
    this._disarm();
    this._timer = this._clock.setTimeout(() => {
      this._timer = null;
      fn();
    }, ms);
  }

  /** @private */
  _disarm() {
    if (this._timer !== null) this._clock.clearTimeout(this._timer);
    this._timer = null;
  }
}

/**
 * The ICE transport under `pc` (the data channel's, else the first sender's), or null before negotiation.
 * @param {RTCPeerConnection} pc @returns {RTCIceTransport | null}
 */
function iceTransportOf(pc) {
  const fromSctp = pc.sctp && pc.sctp.transport && pc.sctp.transport.iceTransport;
  if (fromSctp) return fromSctp;
  for (const s of pc.getSenders ? pc.getSenders() : []) {
    if (s.transport && s.transport.iceTransport) return s.transport.iceTransport;
  }
  return null;
}

/**
 * Calls `fn(kind)` on the page's `online` and `offline` events and on `navigator.connection`'s `change` (where the
 * browser has it). Returns the function that stops listening.
 * @param {(kind: 'online' | 'offline' | 'change') => void} fn
 */
function watchNetwork(fn) {
  const offs = [];
  const on = (/** @type {any} */ target, /** @type {string} */ name, /** @type {any} */ kind) => {
    if (!target || typeof target.addEventListener !== 'function') return;
    const h = () => fn(kind);
    target.addEventListener(name, h);
    offs.push(() => target.removeEventListener(name, h));
  };
  if (typeof addEventListener === 'function') {
    on(globalThis, 'online', 'online');
    on(globalThis, 'offline', 'offline');
  }
  if (typeof navigator !== 'undefined') on(/** @type {any} */ (navigator).connection, 'change', 'change');
  return () => offs.forEach((off) => off());
}

// ---- file and large-message transfer --------------------------------------------------------------------------
//
// `peer.sendFile()` opens one data channel per transfer (label `traverse-file`, ordered and reliable, whatever the
// app's own channel is) rather than framing files into the SDK's channel, because:
// - back-pressure is per channel (`bufferedAmount`): a file's megabytes never queue in front of the app's messages,
//   and two transfers do not share one buffer;
// - the app's channel may be unordered or unreliable (`channelOptions`), which a file cannot be;
// - the channel is the transfer's identity: cancel is a frame and a close, no transfer ids to demultiplex, and a
//   peer that goes away closes the channel, which both sides see.
// Opening a channel costs one round trip (DCEP) once SCTP is up; the SCTP stream limit (65 535) is far off.
//
// On the channel: the sender's `head` (JSON: name, size, type, chunk size), the file in binary chunks in order, the
// sender's `end` (JSON: the SHA-256 of the whole file); the receiver answers `ok` (hash checked) and the sender
// closes. Either side may send `cancel` (JSON: reason) and close; a channel that closes before `ok` is a cancel.
//
// Integrity: `crypto.subtle.digest` takes the whole input at once, so with it a sender would hold the whole file in
// memory (or hash per chunk, which gives no SHA-256 of the file a user can compare with `sha256sum`). The SDK hashes
// as it streams instead, with a small SHA-256 in JavaScript (FIPS 180-4; checked against node:crypto in
// tests/sdk/files.test.mjs): memory stays bounded on the sending side (one read of `FILE_READ_BYTES` plus the
// channel's buffer, at most `FILE_HIGH_WATER`), and the receiver's `file` event carries the file's SHA-256. The
// price is CPU: the JS hash runs at a few hundred MB/s, faster than a data channel. DTLS already authenticates every
// byte on the wire; the hash checks the chunking end to end (nothing lost, repeated or reordered by either SDK).
//
// The receiver keeps the file as a `Blob` (parts folded into one every `FILE_FOLD_BYTES`, so the browser may page it
// to disk); `maxFileBytes` (PeerOptions, default 2 GiB) bounds what it accepts, per file and over the files one peer
// sends at once, `maxIncomingFiles` (4) how many, a head must come within `FILE_HEAD_MS` and a chunk within
// `FILE_IDLE_MS` while the connection is up, else it is cancelled; at most `FILE_MAX_HEADLESS` channels may wait for
// their head: a peer of the room (with `autoAccept`, anyone may call) cannot make this page hold more than that. The
// sender sends at most `maxOutgoingFiles` (4) at once, so a peer with the default limit refuses none of them.
// A refusal waits for the head: refused as the channel opened, its reason was often lost with the close (the sender's
// end was not open yet). Every `cancel` frame carries a `FileErrorCode`, so both sides agree why a transfer ended.

/** The label of the data channels that carry one file each; other labels are left to the app. */
export const FILE_CHANNEL_LABEL = 'traverse-file';
/** Chunk size: 64 KiB, under every browser's SCTP max-message-size (Chrome 256 KiB, Firefox 1 GiB, Safari 64 KiB). */
export const FILE_CHUNK_BYTES = 64 * 1024;
/** The sender stops writing while more than this is buffered in the channel (Chrome closes a channel at 16 MiB). */
const FILE_HIGH_WATER = 1024 * 1024;
/** ... and writes again when the buffer drains below this (`bufferedAmountLowThreshold`). */
const FILE_LOW_WATER = 256 * 1024;
/** The sender reads its source this much at a time (fewer Blob reads than one per chunk). */
const FILE_READ_BYTES = 1024 * 1024;
/** The receiver folds its parts into one Blob every this many bytes. */
const FILE_FOLD_BYTES = 16 * 1024 * 1024;
/** Progress events at most this often (plus the last one). */
const FILE_PROGRESS_MS = 50;
/** Default bound on a received file, and on those being received from one peer at once (`maxFileBytes`). */
const FILE_MAX_BYTES = 2 ** 31;
/** Default number of files received from one peer at once (PeerOptions `maxIncomingFiles`). */
const FILE_MAX_INCOMING = 4;
/** A file channel whose head does not come within this is closed: an open channel counts against the files. */
const FILE_HEAD_MS = 10_000;
/**
 * A receive that gets no chunk for this long while the connection is up is cancelled: a stalled sender holds
 * nothing. A 64 KiB chunk arrives whole, so this also bounds the slowest link a transfer works on (about 1 KB/s).
 */
const FILE_IDLE_MS = 60_000;
/**
 * File channels of each peer waiting for their head. They hold nothing but the channel, and each is closed after
 * `FILE_HEAD_MS`; past `FILE_MAX_HEADLESS` of them a new one is closed at once.
 */
const HEADLESS = new WeakMap();
/** File channels of one peer that may wait for their head at once (a refusal waits for the head: `receiveFile`). */
const FILE_MAX_HEADLESS = 32;
/** A sender whose channel stops being open waits this long at most for its close, which says why. */
const FILE_CLOSE_WAIT_MS = 1000;
/** Default number of files `sendFile` sends to one peer at once (PeerOptions `maxOutgoingFiles`). */
const FILE_MAX_OUTGOING = FILE_MAX_INCOMING;
/** The longest file name either side keeps, in UTF-16 code units (cut on a code point), and the longest MIME type. */
const FILE_NAME_MAX = 1024;
const FILE_TYPE_MAX = 256;
/** What `peer.send` may have buffered in the channel before it refuses (Chrome closes a channel beyond 16 MiB). */
const SEND_BUFFER_LIMIT = 8 * 1024 * 1024;

/**
 * @typedef {object} SendFileOptions
 * @property {(progress: FileProgress) => void} [onProgress] called as bytes leave (at most every 50 ms, and at the
 *   end); what it throws is reported (`reportError`) and never affects the transfer
 * @property {AbortSignal} [signal] aborting it cancels the transfer (both sides get `file-cancel`); already aborted:
 *   `sendFile` rejects at once with `cancelled`
 * @property {string} [name] the name the receiver sees (default: the File's name, else `file`; `''` is `file`; cut
 *   to 1024 UTF-16 code units on a code point, the same on both sides)
 * @property {string} [type] the MIME type the receiver sees (default: the Blob's type; at most 256 characters)
 */

/**
 * Why a file transfer ended without arriving (`FileCancel.code`, and the code of `sendFile`'s rejection):
 * `cancelled` a user of either side (`signal`, `cancelFile`); `refused` the receiver's limits (`maxFileBytes`,
 * `maxIncomingFiles`, an id in use, a malformed head); `integrity` the bytes did not match (more than announced, or
 * another SHA-256); `closed` the `Peer` or the file's channel went away; `timeout` no head within 10 s or no chunk
 * for 60 s on the receiver; `read-failed` the sender could not read its source.
 * @typedef {'cancelled' | 'refused' | 'integrity' | 'closed' | 'timeout' | 'read-failed'} FileErrorCode
 */

/** @typedef {{id: string, name: string, size: number, bytes: number, direction: 'send' | 'receive'}} FileProgress */
/** @typedef {{id: string, name: string, size: number, type: string, sha256: string, ms: number}} FileSent */
/**
 * @typedef {{id: string, name: string, size: number, type: string, blob: Blob, sha256: string, ms: number}}
 *   FileReceived
 */
/**
 * @typedef {{id: string, name: string, size: number, direction: 'send' | 'receive', by: 'local' | 'remote',
 *   code: FileErrorCode, reason: string}} FileCancel
 */

/** Open transfers of each peer, by id. @type {WeakMap<Peer, Map<string, FileTransfer>>} */
const TRANSFERS = new WeakMap();

/** The codes a `cancel` frame may carry; another (or none: an older SDK) is `cancelled`. */
const FILE_ERROR_CODES = ['cancelled', 'refused', 'integrity', 'closed', 'timeout', 'read-failed'];

/**
 * One transfer on one channel, either direction. `finish(err)` settles it once (`settled` resolves with `err`):
 * cleanup, and for an error (`fail`) the `file-cancel` event and, when it is ours, the cancel frame.
 */
class FileTransfer {
  /**
   * @param {Peer} peer @param {RTCDataChannel} ch @param {'send' | 'receive'} direction
   * @param {{id: string, name: string, size: number, type: string}} meta
   */
  constructor(peer, ch, direction, meta) {
    this.peer = peer;
    this.ch = ch;
    this.direction = direction;
    this.id = meta.id;
    this.name = meta.name;
    this.size = meta.size;
    this.type = meta.type;
    this.done = false;
    /** @type {TraverseError | null} why it ended, once it ended without arriving */
    this.error = null;
    this.startedAt = now();
    /** @private */ this._lastProgress = 0;
    /** @type {(err: TraverseError | null) => void} */ let settle = () => {};
    /** Resolves when it ends: with null once it arrived, else with its error (late listeners too). */
    this.settled = /** @type {Promise<TraverseError | null>} */ (new Promise((r) => (settle = r)));
    /** @private */ this._settle = settle;
    let map = TRANSFERS.get(peer);
    if (!map) TRANSFERS.set(peer, (map = new Map()));
    map.set(this.id, this);
  }

  /**
   * A progress event (throttled), to `onProgress` too for a send. What `onProgress` throws is the app's bug, not
   * the transfer's: it is reported (`reportError`) and the transfer goes on.
   * @param {number} bytes @param {((p: FileProgress) => void) | undefined} [cb]
   */
  progress(bytes, cb) {
    const t = now();
    if (bytes < this.size && t - this._lastProgress < FILE_PROGRESS_MS) return;
    this._lastProgress = t;
    /** @type {FileProgress} */
    const detail = { id: this.id, name: this.name, size: this.size, bytes, direction: this.direction };
    if (cb) {
      try {
        cb(detail);
      } catch (err) {
        reportLater(err);
      }
    }
    this.peer._emit('file-progress', detail);
  }

  /** A user's cancel. @param {string} reason @param {'local' | 'remote'} by */
  cancel(reason, by) {
    this.fail('cancelled', reason, by);
  }

  /**
   * Ends without arriving: tell the other side (when it is ours and the channel is open), close the channel, settle,
   * and emit `file-cancel`.
   * @param {FileErrorCode} code @param {string} reason @param {'local' | 'remote'} by
   */
  fail(code, reason, by) {
    if (this.done) return;
    if (by === 'local' && this.ch.readyState === 'open') {
      try {
        this.ch.send(JSON.stringify({ t: 'cancel', code, reason }));
      } catch {
        /* closing anyway */
      }
    }
    /** @type {FileCancel} */
    const detail = { id: this.id, name: this.name, size: this.size, direction: this.direction, by, code, reason };
    const message = `${fileErrorText(code, by)}: ${reason}`;
    this.finish(new TraverseError(code, message, { by, reason, file: detail }));
    this.peer._emit('file-cancel', detail);
  }

  /** Settle once: closes the channel; `err` null for a transfer that completed. @param {TraverseError | null} err */
  finish(err) {
    if (this.done) return;
    this.done = true;
    this.error = err;
    TRANSFERS.get(this.peer)?.delete(this.id);
    // A cancel frame is sent before the close; `close()` sends what is buffered first.
    try {
      this.ch.close();
    } catch {
      /* ignore */
    }
    this._settle(err);
  }
}

/** The start of a file error's message. @param {FileErrorCode} code @param {'local' | 'remote'} by */
function fileErrorText(code, by) {
  const remote = by === 'remote';
  switch (code) {
    case 'cancelled':
      return remote ? 'file transfer cancelled by the other peer' : 'file transfer cancelled';
    case 'refused':
      return remote ? 'file transfer refused by the other peer' : 'file transfer refused';
    case 'integrity':
      return remote ? 'file transfer failed the integrity check of the other peer' : 'file transfer failed its integrity check';
    case 'timeout':
      return remote ? 'file transfer timed out on the other peer' : 'file transfer timed out';
    case 'read-failed':
      return remote ? 'file transfer stopped: the other peer could not read the file' : 'file transfer stopped: the file could not be read';
    default:
      return remote ? 'file transfer stopped: the other peer went away' : 'file transfer stopped: the connection closed here';
  }
}

/**
 * An exception of the app's (an `onProgress` callback) goes where uncaught errors go (`window.onerror`, the
 * console), without unwinding the SDK's code. @param {unknown} err
 */
function reportLater(err) {
  if (typeof reportError === 'function') reportError(err);
  else
    queueMicrotask(() => {
      throw err;
    });
}

/**
 * A file name as both sides keep it: `''` (or none) is `file`; cut to `FILE_NAME_MAX` UTF-16 code units, never
 * inside a surrogate pair. The sender applies it, so that its `FileSent.name` is the receiver's `name`.
 * @param {unknown} name
 */
function fileName(name) {
  const s = String(name ?? '');
  return s ? cutAtCodePoint(s, FILE_NAME_MAX) : 'file';
}

/** `s` cut to at most `max` UTF-16 code units, not between the halves of a surrogate pair. @param {string} s @param {number} max */
function cutAtCodePoint(s, max) {
  if (s.length <= max) return s;
  const last = s.charCodeAt(max - 1);
  return s.slice(0, last >= 0xd800 && last <= 0xdbff ? max - 1 : max);
}

/**
 * Wires a peer for files: channels the other side opens with `FILE_CHANNEL_LABEL` are received; closing the peer
 * ends its transfers (`closed`, by whoever closed it).
 * @param {Peer} peer
 */
function attachFiles(peer) {
  peer.pc.addEventListener('datachannel', (e) => {
    if (e.channel.label === FILE_CHANNEL_LABEL) receiveFile(peer, e.channel);
  });
  peer.addEventListener('close', (e) => {
    const why = /** @type {CustomEvent<PeerClose>} */ (e).detail;
    const by = why?.by ?? 'local';
    const reason = by === 'remote' ? `the peer connection closed (${why.reason})` : 'the peer connection closed';
    for (const t of [...(TRANSFERS.get(peer)?.values() ?? [])]) t.fail('closed', reason, by);
  });
}

/** What `peer.sendFile` sends: a File, a Blob, or bytes. @typedef {Blob | ArrayBuffer | ArrayBufferView} FileSource */

/**
 * Reads a source in pieces: a Blob (or File) through `slice().arrayBuffer()`, a buffer by view.
 * @param {FileSource} source @returns {{size: number, read: (offset: number, length: number) => Promise<Uint8Array>}}
 */
function fileReader(source) {
  if (typeof Blob !== 'undefined' && source instanceof Blob) {
    return { size: source.size, read: async (o, n) => new Uint8Array(await source.slice(o, o + n).arrayBuffer()) };
  }
  if (source instanceof ArrayBuffer) {
    const bytes = new Uint8Array(source);
    return { size: bytes.length, read: async (o, n) => bytes.subarray(o, o + n) };
  }
  if (ArrayBuffer.isView(source)) {
    const bytes = new Uint8Array(source.buffer, source.byteOffset, source.byteLength);
    return { size: bytes.length, read: async (o, n) => bytes.subarray(o, o + n) };
  }
  throw new TypeError('sendFile: expected a File, Blob, ArrayBuffer or typed array');
}

/**
 * Resolves once `ch` has at most `highWater` bytes buffered — at once, or at its next `bufferedamountlow` (its
 * `bufferedAmountLowThreshold` is the low mark). Rejects if the channel closes meanwhile.
 * @param {{bufferedAmount: number, readyState: string, addEventListener: any, removeEventListener: any}} ch
 * @param {number} highWater
 */
function drained(ch, highWater) {
  if (ch.bufferedAmount <= highWater) return Promise.resolve();
  return new Promise((resolve, reject) => {
    const low = () => {
      off();
      resolve(undefined);
    };
    const gone = () => {
      off();
      reject(new TraverseError('closed', 'the file channel closed'));
    };
    const off = () => {
      ch.removeEventListener('bufferedamountlow', low);
      ch.removeEventListener('close', gone);
    };
    ch.addEventListener('bufferedamountlow', low);
    ch.addEventListener('close', gone);
  });
}

/**
 * The sending loop, without a browser: reads `reader` `readBytes` at a time, hashes it, writes it to `ch` in chunks
 * of `chunkBytes`, waiting whenever more than `highWater` is buffered. So at most `highWater + readBytes` bytes of
 * the file are held at once, whatever its size. Returns the SHA-256 (hex) of all bytes written. A source that
 * cannot be read, or ends early, throws `read-failed`.
 * @param {{send: (data: ArrayBufferView) => void, bufferedAmount: number, readyState: string,
 *   addEventListener: any, removeEventListener: any}} ch
 * @param {{size: number, read: (offset: number, length: number) => Promise<Uint8Array>}} reader
 * @param {{chunkBytes: number, readBytes?: number, highWater?: number, onWritten?: (bytes: number) => void,
 *   stopped?: () => TraverseError | null}} opts `stopped`: checked before every write; an error stops the loop
 * @returns {Promise<string>}
 */
async function writeChunks(ch, reader, opts) {
  const { chunkBytes, readBytes = FILE_READ_BYTES, highWater = FILE_HIGH_WATER } = opts;
  const hash = new Sha256();
  let written = 0;
  while (written < reader.size) {
    let block;
    try {
      block = await reader.read(written, Math.min(readBytes, reader.size - written));
    } catch (err) {
      const why = /** @type {any} */ (err)?.message ?? err;
      throw new TraverseError('read-failed', `the source could not be read at ${written} of ${reader.size} bytes: ${why}`);
    }
    if (!block.length) throw new TraverseError('read-failed', `the source ended at ${written} of ${reader.size} bytes`);
    for (let o = 0; o < block.length; o += chunkBytes) {
      await drained(ch, highWater);
      const stop = opts.stopped?.();
      if (stop) throw stop;
      if (ch.readyState !== 'open') throw new TraverseError('closed', 'the file channel closed');
      const chunk = block.subarray(o, o + chunkBytes);
      // Hashed a chunk at a time: V8 optimizes the hash's loop sooner on short calls (a 1 MiB call ran at a third of
      // the speed in Chromium), and the work interleaves with the channel's draining.
      hash.update(chunk);
      ch.send(chunk);
      written += chunk.length;
      opts.onWritten?.(written);
    }
  }
  return hash.hex();
}

/** Sends under way and waiting, per peer (`sendSlot`). @type {WeakMap<Peer, {active: number, waiting: (() => void)[]}>} */
const OUTGOING = new WeakMap();

/**
 * A turn to send to `peer`: at most `maxOutgoingFiles` at once (the receiver refuses more than its
 * `maxIncomingFiles`, 4 by default), the others in call order. Resolves with the function that gives the turn
 * back; rejects `cancelled` when `signal` aborts, `closed` when the peer closes while it waits.
 * @param {Peer} peer @param {AbortSignal | undefined} signal @returns {Promise<() => void>}
 */
function sendSlot(peer, signal) {
  let q = OUTGOING.get(peer);
  if (!q) OUTGOING.set(peer, (q = { active: 0, waiting: [] }));
  const queue = q;
  const max = Math.max(1, peer.options.maxOutgoingFiles ?? FILE_MAX_OUTGOING);
  let released = false;
  const release = () => {
    if (released) return;
    released = true;
    queue.active--;
    queue.waiting.shift()?.();
  };
  if (queue.active < max) {
    queue.active++;
    return Promise.resolve(release);
  }
  return new Promise((resolve, reject) => {
    const stop = (/** @type {TraverseError} */ err) => {
      done();
      const i = queue.waiting.indexOf(go);
      if (i >= 0) queue.waiting.splice(i, 1);
      reject(err);
    };
    const onAbort = () =>
      stop(new TraverseError('cancelled', `file transfer cancelled: ${abortReason(signal)}`, { by: 'local', reason: abortReason(signal) }));
    const onClose = () => stop(new TraverseError('closed', 'peer connection closed', { by: peer._closedBy?.by ?? 'local' }));
    const done = () => {
      signal?.removeEventListener('abort', onAbort);
      peer.removeEventListener('close', onClose);
    };
    const go = () => {
      done();
      queue.active++;
      resolve(release);
    };
    queue.waiting.push(go);
    signal?.addEventListener('abort', onAbort);
    peer.addEventListener('close', onClose);
  });
}

/**
 * `peer.sendFile`: see there.
 * @param {Peer} peer @param {FileSource} source @param {SendFileOptions} options @returns {Promise<FileSent>}
 */
async function sendFile(peer, source, options) {
  if (peer.closed) throw new TraverseError('closed', 'peer connection closed', { by: peer._closedBy?.by ?? 'local' });
  const reader = fileReader(source);
  const signal = options.signal;
  if (signal?.aborted) {
    const reason = abortReason(signal);
    throw new TraverseError('cancelled', `file transfer cancelled: ${reason}`, { by: 'local', reason });
  }
  const blobLike = /** @type {any} */ (source);
  const name = fileName(options.name ?? (typeof blobLike.name === 'string' ? blobLike.name : ''));
  const type = cutAtCodePoint(String(options.type ?? (typeof blobLike.type === 'string' ? blobLike.type : '')), FILE_TYPE_MAX);
  const release = await sendSlot(peer, signal);
  try {
    return await sendOne(peer, reader, { name, type, signal, onProgress: options.onProgress });
  } finally {
    release();
  }
}

/**
 * One file on its channel, once it has its turn (`sendSlot`).
 * @param {Peer} peer @param {{size: number, read: (offset: number, length: number) => Promise<Uint8Array>}} reader
 * @param {{name: string, type: string, signal?: AbortSignal, onProgress?: (p: FileProgress) => void}} o
 * @returns {Promise<FileSent>}
 */
async function sendOne(peer, reader, { name, type, signal, onProgress }) {
  if (peer.closed) throw new TraverseError('closed', 'peer connection closed', { by: peer._closedBy?.by ?? 'local' });
  const id = randomId();
  const max = peer.pc.sctp?.maxMessageSize;
  const chunkBytes = Math.min(FILE_CHUNK_BYTES, max && max > 0 ? max : FILE_CHUNK_BYTES);
  const ch = peer.pc.createDataChannel(FILE_CHANNEL_LABEL, { ordered: true });
  ch.binaryType = 'arraybuffer';
  ch.bufferedAmountLowThreshold = FILE_LOW_WATER;
  const t = new FileTransfer(peer, ch, 'send', { id, name, size: reader.size, type });
  let headSent = false;
  const onAbort = () => t.cancel(abortReason(signal), 'local');
  if (signal?.aborted) onAbort();
  signal?.addEventListener('abort', onAbort);
  ch.onmessage = (e) => {
    const msg = typeof e.data === 'string' ? parseJson(e.data) : null;
    if (msg?.t === 'ok') t.finish(null);
    else if (msg?.t === 'cancel') {
      const code = FILE_ERROR_CODES.includes(msg.code) ? msg.code : 'cancelled';
      t.fail(code, String(msg.reason ?? 'cancelled'), 'remote');
    }
  };
  ch.onclose = () => {
    if (t.done) return;
    if (peer.closed) t.fail('closed', 'the peer connection closed', peer._closedBy?.by ?? 'local');
    // Closed by the receiver before it saw the head: a refusal whose reason did not come (an older SDK).
    else if (!headSent) t.fail('refused', 'the other peer closed the file channel before the file started', 'remote');
    else t.fail('closed', 'the file channel closed', 'remote');
  };
  let sha256 = '';
  try {
    await new Promise((resolve, reject) => {
      if (ch.readyState === 'open') return resolve(undefined);
      ch.addEventListener('open', resolve, { once: true });
      t.settled.then((err) => err && reject(err));
    });
    if (t.error) throw t.error;
    ch.send(JSON.stringify({ t: 'head', v: 1, id, name, size: reader.size, type, chunk: chunkBytes }));
    headSent = true;
    sha256 = await writeChunks(ch, reader, {
      chunkBytes,
      stopped: () => t.error,
      onWritten: (bytes) => t.progress(Math.max(0, bytes - ch.bufferedAmount), onProgress),
    });
    ch.send(JSON.stringify({ t: 'end', sha256 }));
    const err = await t.settled;
    if (err) throw err;
  } catch (err) {
    if (!t.done && /** @type {any} */ (err)?.code === 'closed') {
      // The channel is going: its close, after a `cancel` frame still on its way, says why (bounded all the same).
      await Promise.race([t.settled, new Promise((resolve) => setTimeout(resolve, FILE_CLOSE_WAIT_MS))]);
    }
    if (!t.done) {
      const e = /** @type {any} */ (err);
      const reason = String(e?.message ?? e);
      if (e instanceof TraverseError && e.code === 'read-failed') t.fail('read-failed', reason, 'local');
      else if (ch.readyState !== 'open') t.fail('closed', 'the file channel closed', 'remote');
      else t.fail('closed', reason, 'local');
    }
    throw t.error ?? err;
  } finally {
    signal?.removeEventListener('abort', onAbort);
  }
  // Out of the `try`: it arrived, whatever the app's callback does now.
  t.progress(reader.size, onProgress);
  return { id, name, size: reader.size, type, sha256, ms: Math.round(now() - t.startedAt) };
}

/**
 * The receiving side of one file channel: `file-start`, `file-progress`, then `file` (hash checked) or `file-cancel`.
 * A refusal waits for the head (the sender's channel is then open on both ends, so the `cancel` frame with its
 * reason reaches it before the close); only a channel past `FILE_MAX_HEADLESS` waiting at once is closed as it opens.
 * @param {Peer} peer @param {RTCDataChannel} ch
 */
function receiveFile(peer, ch) {
  ch.binaryType = 'arraybuffer';
  const maxBytes = peer.options.maxFileBytes ?? FILE_MAX_BYTES;
  const maxFiles = peer.options.maxIncomingFiles ?? FILE_MAX_INCOMING;
  /** @type {FileTransfer | null} */ let t = null;
  const hash = new Sha256();
  /** @type {BlobPart[]} */ let parts = [];
  let unfolded = 0;
  let received = 0;
  let closed = false;
  // Counted while it waits for its head; `headless` says whether it still is.
  let headless = true;
  const headed = () => {
    if (headless) HEADLESS.set(peer, (HEADLESS.get(peer) ?? 1) - 1);
    headless = false;
  };
  /** Ends a channel without a transfer (no head yet, or a bad one). @param {FileErrorCode} code @param {string} reason */
  const refuse = (code, reason) => {
    headed();
    if (t) return t.fail(code, reason, 'local');
    closed = true;
    try {
      ch.send(JSON.stringify({ t: 'cancel', code, reason }));
      ch.close();
    } catch {
      /* ignore */
    }
  };
  const waiting = HEADLESS.get(peer) ?? 0;
  HEADLESS.set(peer, waiting + 1);
  if (waiting >= FILE_MAX_HEADLESS) {
    return refuse('refused', `${waiting} file channels from this peer are waiting for their head already`);
  }
  // Deadlines, checked every 5 s so that a chunk costs a clock read, not a timer. Not while the connection is down:
  // an ICE restart may take a while, and the channel resumes after it.
  let lastAt = now();
  const idle = setInterval(() => {
    if (closed || t?.done) return clearInterval(idle);
    if (peer.pc?.connectionState !== 'connected') lastAt = now();
    const limit = t ? FILE_IDLE_MS : FILE_HEAD_MS;
    if (now() - lastAt >= limit) {
      clearInterval(idle);
      refuse('timeout', t ? `nothing received for ${limit / 1000} s` : `no head within ${limit / 1000} s`);
    }
  }, FILE_HEAD_MS / 2);
  ch.onmessage = (e) => {
    if (closed || t?.done) return;
    lastAt = now();
    if (typeof e.data !== 'string') {
      if (!t) return refuse('refused', 'data before the head');
      const bytes = new Uint8Array(e.data);
      received += bytes.length;
      if (received > t.size) return t.fail('integrity', `more than the announced ${t.size} bytes`, 'local');
      hash.update(bytes);
      parts.push(e.data);
      unfolded += bytes.length;
      if (unfolded >= FILE_FOLD_BYTES) {
        parts = [new Blob(parts)];
        unfolded = 0;
      }
      t.progress(received);
      return;
    }
    const msg = parseJson(e.data);
    if (msg?.t === 'head' && !t) {
      headed();
      const size = Number(msg.size);
      if (!Number.isSafeInteger(size) || size < 0) return refuse('refused', 'bad head');
      const id = String(msg.id ?? randomId()).slice(0, 64);
      const open = [...(TRANSFERS.get(peer)?.values() ?? [])];
      // The id is the sender's: one already in use here would put this transfer in the other's place.
      if (open.some((o) => o.id === id)) return refuse('refused', `a transfer with id ${id} is open already`);
      const receiving = open.filter((o) => o.direction === 'receive');
      const held = receiving.reduce((sum, o) => sum + o.size, 0);
      t = new FileTransfer(peer, ch, 'receive', {
        id,
        name: fileName(msg.name),
        size,
        type: cutAtCodePoint(String(msg.type ?? ''), FILE_TYPE_MAX),
      });
      peer._emit('file-start', { id: t.id, name: t.name, size: t.size, type: t.type });
      if (size > maxBytes) t.fail('refused', `${size} bytes is more than this peer accepts (maxFileBytes ${maxBytes})`, 'local');
      else if (receiving.length >= maxFiles) {
        t.fail('refused', `${receiving.length} files are being received from this peer already (maxIncomingFiles)`, 'local');
      } else if (held + size > maxBytes) {
        t.fail('refused', `${held} bytes are being received from this peer already (maxFileBytes ${maxBytes})`, 'local');
      }
    } else if (msg?.t === 'end' && t) {
      const sha256 = hash.hex();
      if (received !== t.size || sha256 !== msg.sha256) {
        const why = `${received} of ${t.size} bytes, SHA-256 ${sha256}, sent ${msg.sha256}`;
        return t.fail('integrity', why, 'local');
      }
      ch.send(JSON.stringify({ t: 'ok', sha256 }));
      const blob = new Blob(parts, { type: t.type });
      parts = [];
      const ms = Math.round(now() - t.startedAt);
      t.done = true;
      TRANSFERS.get(peer)?.delete(t.id);
      /** @type {FileReceived} */
      const detail = { id: t.id, name: t.name, size: t.size, type: t.type, blob, sha256, ms };
      peer._emit('file', detail);
    } else if (msg?.t === 'cancel' && t) {
      const code = FILE_ERROR_CODES.includes(msg.code) ? msg.code : 'cancelled';
      t.fail(code, String(msg.reason ?? 'cancelled'), 'remote');
    }
  };
  ch.onclose = () => {
    closed = true;
    headed();
    clearInterval(idle);
    if (t && !t.done) {
      if (peer.closed) t.fail('closed', 'the peer connection closed', peer._closedBy?.by ?? 'local');
      else t.fail('closed', 'the file channel closed', 'remote');
    }
  };
}

/** @param {string} text */
function parseJson(text) {
  try {
    return JSON.parse(text);
  } catch {
    return null;
  }
}

/** @param {AbortSignal | undefined} signal */
function abortReason(signal) {
  const r = signal?.reason;
  if (r === undefined) return 'aborted';
  return String(r?.message ?? r);
}

function randomId() {
  const b = new Uint8Array(8);
  crypto.getRandomValues(b);
  return Array.from(b, (x) => x.toString(16).padStart(2, '0')).join('');
}

/** UTF-8 length of a string, without encoding it when it cannot matter. @param {string} s @param {number} limit */
function utf8Length(s, limit) {
  if (s.length * 3 <= limit) return s.length; // a lower bound is enough: it fits
  return new TextEncoder().encode(s).length;
}

/** SHA-256 round constants (FIPS 180-4 §4.2.2). */
const SHA256_K = new Int32Array([
  0x428a2f98, 0x71374491, 0xb5c0fbcf, 0xe9b5dba5, 0x3956c25b, 0x59f111f1, 0x923f82a4, 0xab1c5ed5, 0xd807aa98,
  0x12835b01, 0x243185be, 0x550c7dc3, 0x72be5d74, 0x80deb1fe, 0x9bdc06a7, 0xc19bf174, 0xe49b69c1, 0xefbe4786,
  0x0fc19dc6, 0x240ca1cc, 0x2de92c6f, 0x4a7484aa, 0x5cb0a9dc, 0x76f988da, 0x983e5152, 0xa831c66d, 0xb00327c8,
  0xbf597fc7, 0xc6e00bf3, 0xd5a79147, 0x06ca6351, 0x14292967, 0x27b70a85, 0x2e1b2138, 0x4d2c6dfc, 0x53380d13,
  0x650a7354, 0x766a0abb, 0x81c2c92e, 0x92722c85, 0xa2bfe8a1, 0xa81a664b, 0xc24b8b70, 0xc76c51a3, 0xd192e819,
  0xd6990624, 0xf40e3585, 0x106aa070, 0x19a4c116, 0x1e376c08, 0x2748774c, 0x34b0bcb5, 0x391c0cb3, 0x4ed8aa4a,
  0x5b9cca4f, 0x682e6ff3, 0x748f82ee, 0x78a5636f, 0x84c87814, 0x8cc70208, 0x90befffa, 0xa4506ceb, 0xbef9a3f7,
  0xc67178f2,
]);

/** Old ids and proofs a rejoin carries at most (a peer has a few calls; a bound on what a stranger makes us hash). */
const MAX_REJOIN_PROOFS = 64;

/**
 * What proves a rejoin to the other end of one call: a hash of both ends' DTLS fingerprints, which only the two of
 * them (and the server that carried their offer and answer) have seen, and the claimant's new id, so that the proof
 * cannot be replayed under another id. Null for a call that never negotiated (nothing to carry on).
 * @param {RTCPeerConnection} pc @param {string} newId @returns {string | null}
 */
function rejoinProof(pc, newId) {
  const local = fingerprintOf(pc.localDescription);
  const remote = fingerprintOf(pc.remoteDescription);
  if (!local || !remote) return null;
  const [x, y] = local < remote ? [local, remote] : [remote, local];
  const text = new TextEncoder().encode(`traverse-rejoin\n${x}\n${y}\n${newId}`);
  return new Sha256().update(text).hex().slice(0, 32);
}

/**
 * A description's DTLS fingerprints, normalised and sorted, the SHA-256 ones alone when there are any: a browser
 * may list several, and may write the other end's description back in another order.
 * @param {RTCSessionDescription | null} d @returns {string | null}
 */
function fingerprintOf(d) {
  const all = [...((d && d.sdp) || '').matchAll(/^a=fingerprint:[ \t]*(\S+)[ \t]+(\S+)/gim)].map(
    (m) => `${m[1].toLowerCase()} ${m[2].toUpperCase()}`,
  );
  const sha256 = all.filter((f) => f.startsWith('sha-256 '));
  const chosen = [...new Set(sha256.length ? sha256 : all)].sort();
  return chosen.length ? chosen.join(',') : null;
}

/** The message schedule, shared: `sha256Blocks` runs to completion and never re-enters. */
const SHA256_W = new Int32Array(64);

/**
 * SHA-256 compression of the 64-byte blocks of `p` from `o` to `end` into the state `H` (FIPS 180-4 §6.2.2); the
 * state stays in locals across blocks (40 % faster than a call per block in V8).
 * @param {Int32Array} H @param {Uint8Array} p @param {number} o @param {number} end
 */
function sha256Blocks(H, p, o, end) {
  const K = SHA256_K;
  const W = SHA256_W;
  let h0 = H[0];
  let h1 = H[1];
  let h2 = H[2];
  let h3 = H[3];
  let h4 = H[4];
  let h5 = H[5];
  let h6 = H[6];
  let h7 = H[7];
  for (; o + 64 <= end; o += 64) {
    for (let t = 0; t < 16; t++) {
      const j = o + 4 * t;
      W[t] = (p[j] << 24) | (p[j + 1] << 16) | (p[j + 2] << 8) | p[j + 3];
    }
    for (let t = 16; t < 64; t++) {
      const x = W[t - 15];
      const y = W[t - 2];
      const s0 = ((x >>> 7) | (x << 25)) ^ ((x >>> 18) | (x << 14)) ^ (x >>> 3);
      const s1 = ((y >>> 17) | (y << 15)) ^ ((y >>> 19) | (y << 13)) ^ (y >>> 10);
      W[t] = (W[t - 16] + s0 + W[t - 7] + s1) | 0;
    }
    let a = h0;
    let b = h1;
    let c = h2;
    let d = h3;
    let e = h4;
    let f = h5;
    let g = h6;
    let h = h7;
    for (let t = 0; t < 64; t++) {
      const S1 = ((e >>> 6) | (e << 26)) ^ ((e >>> 11) | (e << 21)) ^ ((e >>> 25) | (e << 7));
      const t1 = (h + S1 + ((e & f) ^ (~e & g)) + K[t] + W[t]) | 0;
      const S0 = ((a >>> 2) | (a << 30)) ^ ((a >>> 13) | (a << 19)) ^ ((a >>> 22) | (a << 10));
      const t2 = (S0 + ((a & b) ^ (a & c) ^ (b & c))) | 0;
      h = g;
      g = f;
      f = e;
      e = (d + t1) | 0;
      d = c;
      c = b;
      b = a;
      a = (t1 + t2) | 0;
    }
    h0 = (h0 + a) | 0;
    h1 = (h1 + b) | 0;
    h2 = (h2 + c) | 0;
    h3 = (h3 + d) | 0;
    h4 = (h4 + e) | 0;
    h5 = (h5 + f) | 0;
    h6 = (h6 + g) | 0;
    h7 = (h7 + h) | 0;
  }
  H[0] = h0;
  H[1] = h1;
  H[2] = h2;
  H[3] = h3;
  H[4] = h4;
  H[5] = h5;
  H[6] = h6;
  H[7] = h7;
}

/**
 * SHA-256 over a stream (FIPS 180-4): `update(bytes)` any number of times, then `hex()`. `crypto.subtle` has no
 * streaming digest; this one holds 104 bytes of state whatever the input's length.
 */
class Sha256 {
  constructor() {
    /** @private */ this._h = new Int32Array([
      0x6a09e667, 0xbb67ae85, 0x3c6ef372, 0xa54ff53a, 0x510e527f, 0x9b05688c, 0x1f83d9ab, 0x5be0cd19,
    ]);
    /** @private */ this._buf = new Uint8Array(64);
    /** @private */ this._bufLen = 0;
    /** @private */ this._bytes = 0;
  }

  /** @param {Uint8Array} data @returns {Sha256} */
  update(data) {
    let i = 0;
    this._bytes += data.length;
    if (this._bufLen) {
      i = Math.min(64 - this._bufLen, data.length);
      this._buf.set(data.subarray(0, i), this._bufLen);
      this._bufLen += i;
      if (this._bufLen < 64) return this;
      sha256Blocks(this._h, this._buf, 0, 64);
      this._bufLen = 0;
    }
    const whole = i + ((data.length - i) & ~63);
    sha256Blocks(this._h, data, i, whole);
    if (whole < data.length) {
      this._buf.set(data.subarray(whole), 0);
      this._bufLen = data.length - whole;
    }
    return this;
  }

  /** The digest as 64 lowercase hex digits (the hash is final: no `update` after). */
  hex() {
    const bits = this._bytes * 8;
    const pad = new Uint8Array((this._bufLen < 56 ? 56 : 120) - this._bufLen + 8);
    pad[0] = 0x80;
    const n = pad.length;
    const hi = Math.floor(bits / 0x100000000);
    const lo = bits >>> 0;
    for (let k = 0; k < 4; k++) {
      pad[n - 8 + k] = (hi >>> (24 - 8 * k)) & 0xff;
      pad[n - 4 + k] = (lo >>> (24 - 8 * k)) & 0xff;
    }
    this.update(pad);
    return Array.from(this._h, (x) => (x >>> 0).toString(16).padStart(8, '0')).join('');
  }
}

// ---- internal: connection outcome reports ---------------------------------------------------------------------

/**
 * One `icecandidateerror`: its code, the server URL and the browser's text — never its `address`/`port` (ours).
 * @typedef {{code: number, url?: string, text?: string}} CandidateErrorReport
 *
 * What the SDK sends about one peer connection (docs/protocol.md, "Connection outcomes"; checked field by field by
 * the server's `outcome::Report`).
 * @typedef {object} OutcomeReport
 * @property {'connected' | 'failed' | 'timeout' | 'dropped' | 'recovered'} outcome
 * @property {number} elapsedMs from the peer connection's creation to the outcome
 * @property {'all' | 'relay'} policy `iceTransportPolicy`
 * @property {{local: object, remote: object} | undefined} pair the selected pair's candidate types, protocols, relay
 *   transport and TURN URL (when connected)
 * @property {{host: number, srflx: number, prflx: number, relayUdp: number, relayTcp: number, relayTls: number}}
 *   gathered local candidates per type, relays per transport to the TURN server
 * @property {{stun: number, turnUdp: number, turnTcp: number, turnTls: number, turnTls443: number}} offered ICE
 *   server URLs per kind
 * @property {CandidateErrorReport[]} errors
 * @property {number} remoteCandidates candidates received from the other peer
 * @property {boolean} remoteDescription the other peer's offer or answer was applied
 * @property {number} restarts ICE restarts
 * @property {{name: string, version: number}} browser family and major version
 * @property {number} [connectedMs] dropped: how long it had been connected when it broke
 * @property {number} [brokenMs] dropped: from the break to giving up
 * @property {string} [cause] dropped: what broke it (a recovery cause)
 * @property {boolean} [offline] dropped: the browser was offline when it gave up
 * @internal
 */

/** How long after `connected` a report reads the selected pair again (NAT lab: switches took under a second). */
const PATH_SETTLE_MS = 4000;

/**
 * How long a failed or timed-out connection's report waits for ICE gathering to complete: under the server's
 * pairing deadline (10 s after the first report of a pair), so that both sides' reports meet.
 */
const GATHERING_WAIT_MS = 8000;

/**
 * How long the polite side of a glare lets its own offer's gathering run before taking the other side's offer. It
 * ends as soon as gathering completes, so only a slow link waits this long: TURN over TLS (handed out by default)
 * takes four round trips, 2.4 s over a satellite link, and 2 s rolled back in the middle of the allocation.
 */
const GLARE_GATHER_MS = 5000;

/**
 * Whether the remote `offer` starts a new ICE generation (RFC 8839: a changed `ice-ufrag`) against the one `pc`
 * has applied; false for the first offer.
 * @param {RTCPeerConnection} pc @param {RTCSessionDescriptionInit} offer
 */
function isIceRestart(pc, offer) {
  const ufrag = (/** @type {string | undefined} */ sdp) => (sdp || '').match(/^a=ice-ufrag:(\S+)/m)?.[1];
  const before = ufrag(pc.remoteDescription?.sdp);
  return before !== undefined && before !== ufrag(offer.sdp);
}

/**
 * Resolves when `pc` has finished gathering, or after `ms`.
 * @param {RTCPeerConnection} pc @param {number} ms
 */
function gatheringComplete(pc, ms) {
  if (pc.iceGatheringState === 'complete' || pc.connectionState === 'closed') return Promise.resolve();
  return new Promise((resolve) => {
    const done = () => {
      clearTimeout(t);
      pc.removeEventListener('icegatheringstatechange', check);
      resolve(undefined);
    };
    const check = () => {
      if (pc.iceGatheringState === 'complete') done();
    };
    const t = setTimeout(done, ms);
    pc.addEventListener('icegatheringstatechange', check);
  });
}

/** Errors kept per report; the server accepts no more. */
const MAX_CANDIDATE_ERRORS = 16;

/**
 * Keeps an `icecandidateerror` (deduplicated, bounded, without addresses).
 * @param {CandidateErrorReport[]} list @param {{errorCode?: number, url?: string, errorText?: string}} e
 */
function addCandidateError(list, e) {
  const code = Number(e.errorCode);
  if (!Number.isInteger(code) || code < 300 || code > 799 || list.length >= MAX_CANDIDATE_ERRORS) return;
  /** @type {CandidateErrorReport} */
  const entry = { code };
  const url = iceUrl(e.url);
  if (url) entry.url = url;
  // Control characters out (C0, DEL and C1, as the server counts them), anything shaped like an address (a browser's
  // text could quote one), and at most 120 bytes of UTF-8, cut between characters: the server refuses a report
  // whose text is longer than 128 bytes, which would blame the other peer for a report never made.
  const text =
    typeof e.errorText === 'string'
      ? utf8Prefix(
          e.errorText
            // eslint-disable-next-line no-control-regex
            .replace(/[\u0000-\u001f\u007f-\u009f]/g, ' ')
            .replace(/\b\d{1,3}(\.\d{1,3}){3}\b|\b[0-9a-f]{0,4}(:[0-9a-f]{0,4}){2,7}\b/gi, '…'),
          120,
        )
      : '';
  if (text) entry.text = text;
  if (list.some((x) => x.code === entry.code && x.url === entry.url && x.text === entry.text)) return;
  list.push(entry);
}

/**
 * The longest prefix of `text` whose UTF-8 encoding is at most `max` bytes, cut between characters.
 * @param {string} text @param {number} max @returns {string}
 */
function utf8Prefix(text, max) {
  let bytes = 0;
  let end = 0;
  for (const ch of text) {
    const cp = /** @type {number} */ (ch.codePointAt(0));
    const n = cp < 0x80 ? 1 : cp < 0x800 ? 2 : cp < 0x10000 ? 3 : 4;
    if (bytes + n > max) break;
    bytes += n;
    end += ch.length;
  }
  return text.slice(0, end);
}

/** An ICE server URL the server accepts (`stun:`, `stuns:`, `turn:`, `turns:`, printable, ≤ 256), else undefined. */
function iceUrl(url) {
  if (typeof url !== 'string' || url.length > 256 || !/^(stuns?|turns?):[\x21-\x7e]+$/.test(url)) return undefined;
  return url;
}

/**
 * ICE server URLs per kind: enough for the server to tell "no TURN offered" and "no TURN over TLS on 443 offered".
 * @param {IceServer[]} servers
 */
function countIceUrls(servers) {
  const offered = { stun: 0, turnUdp: 0, turnTcp: 0, turnTls: 0, turnTls443: 0 };
  for (const s of servers || []) {
    for (const url of Array.isArray(s.urls) ? s.urls : [s.urls]) {
      if (typeof url !== 'string') continue;
      const [scheme] = url.split(':', 1);
      if (scheme === 'stun' || scheme === 'stuns') offered.stun++;
      else if (scheme === 'turns') {
        offered.turnTls++;
        // RFC 7065: turns:host[:port][?transport=…]; the port defaults to 5349.
        const port = /:(\d+)(\?|$)/.exec(url.slice(6));
        if (port && port[1] === '443') offered.turnTls443++;
      } else if (scheme === 'turn') {
        if (/[?&]transport=tcp\b/.test(url)) offered.turnTcp++;
        else offered.turnUdp++;
      }
    }
  }
  return offered;
}

/**
 * The browser's family and major version from its user agent (nothing else of it is sent).
 * @param {string} ua @returns {{name: 'chrome' | 'edge' | 'firefox' | 'safari' | 'other', version: number}}
 */
function browserOf(ua) {
  const v = (/** @type {RegExpExecArray | null} */ m) => (m ? Math.min(Number(m[1]) || 0, 65535) : 0);
  let m;
  if ((m = /Edg(?:e|A|iOS)?\/(\d+)/.exec(ua))) return { name: 'edge', version: v(m) };
  if ((m = /(?:Firefox|FxiOS)\/(\d+)/.exec(ua))) return { name: 'firefox', version: v(m) };
  if ((m = /(?:Chrome|Chromium|CriOS)\/(\d+)/.exec(ua))) return { name: 'chrome', version: v(m) };
  if ((m = /Version\/(\d+).*Safari/.exec(ua))) return { name: 'safari', version: v(m) };
  return { name: 'other', version: 0 };
}

/**
 * The selected candidate pair of a `getStats()` report: the transport's `selectedCandidatePairId` (Chrome, Safari),
 * else the pair marked `selected` or nominated and succeeded (Firefox has no transport stats). Null before one.
 * @param {{forEach: (fn: (s: any) => void) => void, get: (id: string) => any}} stats @returns {any}
 */
/** Thresholds of good, fair and poor (above the last: bad); the doctor's too (crates/doctor/src/quality.rs). */
const QUALITY_THRESHOLDS = { rttMs: [100, 250, 400], jitterMs: [5, 10, 30], lossPercent: [1, 3, 8] };
const GRADES = /** @type {const} */ (['good', 'fair', 'poor', 'bad']);

/**
 * Grades a connection from one `getStats` report and the counters of the previous one (`base`; null the first
 * time, when loss is measured since the start). RTT from the selected candidate pair; jitter, the worst of the
 * received RTP streams'; loss over the interval, of received RTP packets (what the other side sent that never
 * came) and, as the other side reports it, of ours (`remote-inbound-rtp`). Pure, tested in node.
 * @param {{forEach: (fn: (s: any) => void) => void, get: (id: string) => any}} stats
 * @param {{lost: number, received: number} | null} base
 * @returns {{quality: ConnectionQuality, base: {lost: number, received: number}}}
 */
function qualityOf(stats, base) {
  const pair = selectedPairOf(stats);
  const rtt = pair && typeof pair.currentRoundTripTime === 'number' ? pair.currentRoundTripTime * 1000 : null;
  let jitter = /** @type {number | null} */ (null);
  let lost = 0;
  let received = 0;
  let rtp = false;
  let remoteLoss = /** @type {number | null} */ (null);
  stats.forEach((s) => {
    if (s.type === 'inbound-rtp') {
      rtp = true;
      lost += Math.max(0, s.packetsLost || 0);
      received += Math.max(0, s.packetsReceived || 0);
      if (typeof s.jitter === 'number') jitter = Math.max(jitter ?? 0, s.jitter * 1000);
    } else if (s.type === 'remote-inbound-rtp' && typeof s.fractionLost === 'number') {
      remoteLoss = Math.max(remoteLoss ?? 0, s.fractionLost * 100);
    }
  });
  const dLost = lost - (base ? base.lost : 0);
  const dReceived = received - (base ? base.received : 0);
  // A counter that went backwards (a new stream) starts the interval afresh.
  const interval = dLost >= 0 && dReceived >= 0 ? [dLost, dReceived] : [lost, received];
  const own = rtp && interval[0] + interval[1] > 0 ? (100 * interval[0]) / (interval[0] + interval[1]) : null;
  const loss = own === null ? remoteLoss : Math.max(own, remoteLoss ?? 0);
  // The index of the first threshold the value is within; past the last, bad (3); unmeasured counts as good.
  const grade = (/** @type {number | null} */ v, /** @type {number[]} */ t) => {
    const i = v === null ? 0 : t.findIndex((limit) => v <= limit);
    return i === -1 ? t.length : i;
  };
  const worst = Math.max(
    grade(rtt, QUALITY_THRESHOLDS.rttMs),
    grade(jitter, QUALITY_THRESHOLDS.jitterMs),
    grade(loss, QUALITY_THRESHOLDS.lossPercent),
  );
  const local = pair ? stats.get(pair.localCandidateId) : null;
  const remote = pair ? stats.get(pair.remoteCandidateId) : null;
  const path = !pair ? null : local?.candidateType === 'relay' || remote?.candidateType === 'relay' ? 'relay' : 'direct';
  const round = (/** @type {number | null} */ v) => (v === null ? null : Math.round(v * 10) / 10);
  return {
    quality: { grade: GRADES[worst], rttMs: round(rtt), jitterMs: round(jitter), lossPercent: round(loss), path },
    base: { lost, received },
  };
}

function selectedPairOf(stats) {
  /** @type {any} */ let pair = null;
  stats.forEach((s) => {
    if (s.type === 'transport' && s.selectedCandidatePairId) pair = stats.get(s.selectedCandidatePairId) || pair;
  });
  if (!pair) {
    stats.forEach((s) => {
      if (s.type === 'candidate-pair' && (s.selected || (s.nominated && s.state === 'succeeded'))) pair = s;
    });
  }
  return pair;
}

/**
 * Builds the outcome report from what the peer connection saw: `stats` is its `getStats()` report (local candidates
 * and the selected pair are read from it). Pure: no browser API, tested in node.
 * @param {{outcome: 'connected' | 'failed' | 'timeout' | 'dropped' | 'recovered', elapsedMs: number,
 *   policy: 'all' | 'relay',
 *   stats: {forEach: (fn: (s: any) => void) => void, get: (id: string) => any}, iceServers: IceServer[],
 *   errors: CandidateErrorReport[], remoteCandidates: number, remoteDescription: boolean, restarts: number,
 *   seen?: Map<string, GatheredCounts>, userAgent: string}} o
 * @returns {OutcomeReport}
 */
function outcomeReport(o) {
  const u16 = (/** @type {number} */ n) => Math.max(0, Math.min(65535, Math.round(n) || 0));
  const gathered = { host: 0, srflx: 0, prflx: 0, relayUdp: 0, relayTcp: 0, relayTls: 0 };
  o.stats.forEach((s) => {
    if (s.type === 'local-candidate') {
      if (s.candidateType === 'relay') {
        const t = relayProtocolOf(s);
        if (t === 'tls') gathered.relayTls++;
        else if (t === 'tcp') gathered.relayTcp++;
        else gathered.relayUdp++;
      } else if (s.candidateType in gathered) {
        gathered[s.candidateType]++;
      }
    }
  });
  const pair = selectedPairOf(o.stats);
  // The most of each kind any one ICE generation gathered (an ICE restart starts a generation afresh).
  for (const counts of o.seen?.values() ?? []) {
    for (const k of Object.keys(gathered)) gathered[k] = Math.max(gathered[k], counts[k] ?? 0);
  }
  for (const k of Object.keys(gathered)) gathered[k] = u16(gathered[k]);
  /** @type {OutcomeReport} */
  const report = {
    outcome: o.outcome,
    elapsedMs: Math.max(0, Math.min(0xffffffff, Math.round(o.elapsedMs) || 0)),
    policy: o.policy,
    pair: undefined,
    gathered,
    offered: countIceUrls(o.iceServers),
    errors: o.errors.slice(0, MAX_CANDIDATE_ERRORS),
    remoteCandidates: u16(o.remoteCandidates),
    remoteDescription: !!o.remoteDescription,
    restarts: u16(o.restarts),
    browser: browserOf(o.userAgent || ''),
  };
  if ((o.outcome === 'connected' || o.outcome === 'recovered') && pair) {
    const side = (/** @type {string} */ id, /** @type {boolean} */ local) => {
      const c = o.stats.get(id);
      if (!c || !['host', 'srflx', 'prflx', 'relay'].includes(c.candidateType)) return null;
      /** @type {any} */
      const out = { type: c.candidateType, protocol: c.protocol === 'tcp' ? 'tcp' : 'udp' };
      if (local && c.candidateType === 'relay') {
        const t = relayProtocolOf(c);
        if (t) out.relayProtocol = t;
      }
      const url = local ? iceUrl(c.url) : undefined;
      if (url) out.url = url;
      return out;
    };
    const local = side(pair.localCandidateId, true);
    const remote = side(pair.remoteCandidateId, false);
    if (local && remote) report.pair = { local, remote };
  }
  if (!report.pair) delete report.pair;
  return report;
}

/**
 * @typedef {{host: number, srflx: number, prflx: number, relayUdp: number, relayTcp: number, relayTls: number}}
 *   GatheredCounts
 * @internal
 */

/**
 * Counts a gathered local candidate into its ICE generation's tally (`seen`, keyed by ufrag; at most 16
 * generations kept).
 * @param {Map<string, GatheredCounts>} seen
 * @param {{type?: string | null, relayProtocol?: string | null, url?: string | null, usernameFragment?: string | null}} c
 */
function countCandidate(seen, c) {
  const key = c.usernameFragment || '';
  let counts = seen.get(key);
  if (!counts) {
    if (seen.size >= 16) return;
    counts = { host: 0, srflx: 0, prflx: 0, relayUdp: 0, relayTcp: 0, relayTls: 0 };
    seen.set(key, counts);
  }
  if (c.type === 'relay') {
    const t = relayProtocolOf(c);
    if (t === 'tls') counts.relayTls++;
    else if (t === 'tcp') counts.relayTcp++;
    else counts.relayUdp++;
  } else if (c.type === 'host' || c.type === 'srflx' || c.type === 'prflx') {
    counts[c.type]++;
  }
}

/** A local relay candidate's transport to the TURN server: `relayProtocol`, else from its URL. */
function relayProtocolOf(c) {
  if (c.relayProtocol === 'udp' || c.relayProtocol === 'tcp' || c.relayProtocol === 'tls') return c.relayProtocol;
  if (typeof c.url === 'string') {
    if (c.url.startsWith('turns:')) return 'tls';
    if (c.url.startsWith('turn:')) return /transport=tcp/.test(c.url) ? 'tcp' : 'udp';
  }
  return undefined;
}

// ---- internal: the session protocol ---------------------------------------------------------------------------

/** Server messages that belong to the session's numbered stream (replayed after a resume). */
const STREAM_TYPES = new Set([
  'joined',
  'peer-joined',
  'peer-left',
  'signal',
  'broadcast',
  'undeliverable',
  'error',
  'diagnosis',
]);

/**
 * What a `Session` hands its driver, in order:
 * - `joined`: a new session (the first, or after a failed resume when `rejoined`); `lost` are the app's messages the
 *   old session sent and never saw acknowledged (they may or may not have arrived)
 * - `resumed`: the same session on a new socket; what the server had not handled is already retransmitted
 * - `message`: any other server message, deduplicated and in stream order; `handshake` says whether it answered a
 *   `join` or a `resume` (an `error` then refuses the handshake and is not part of the stream)
 * - `error`: the SDK's own (`bad-json`, `queue-full`)
 * - `gap`: the stream skipped a `seq` (`detail` is the `sequence-gap` error, with `inARow`: such gaps since the
 *   stream last got past one). The frame was not processed; the socket must be dropped and the session resumed
 *   from `lastSeq`, which replays what was skipped. Nothing more is read from this socket.
 * @typedef {{type: 'joined', msg: any, rejoined: boolean, lost: any[]}
 *   | {type: 'resumed', msg: any}
 *   | {type: 'message', msg: any, handshake: 'join' | 'resume' | null}
 *   | {type: 'error', detail: {code: string, message: string, [key: string]: any}}
 *   | {type: 'gap', detail: {code: 'sequence-gap', message: string, expected: number, got: number, inARow: number}}}
 *   SessionEvent
 * @internal
 */

/** The server's message rate per socket when its `joined` does not say (docs/protocol.md, Limits). */
const SERVER_MESSAGES_PER_SECOND = 50;
const SERVER_MESSAGE_BURST = 100;

/**
 * The client's mirror of the server's per-socket token bucket (docs/protocol.md, Limits): a message over the
 * server's rate is dropped unread, and a later one's `ack` then covers it, so it would be lost. The mirror keeps a
 * margin: a tenth of the burst (10 of 100) and of the rate. The margin is the reserve of the frames that cannot wait
 * (`charge`: heartbeats, probes, an early `ack`, `ice-servers`): they go out at once, even on an empty bucket, and
 * are counted, so the server's bucket always holds the margin more than this one and admits them. The time comes
 * in as `now` (milliseconds); no clock inside.
 */
class RateBucket {
  constructor() {
    /** @private */ this._capacity = 0;
    /** @private the server's burst less `_capacity`: what the server admits beyond this bucket */ this._margin = 0;
    /** @private */ this._tokens = 0;
    /** @private tokens per millisecond */ this._perMs = 0;
    /** @private @type {number | null} when `_tokens` was last brought up to date; null: full, no time counted */
    this._at = null;
    this.configure(SERVER_MESSAGES_PER_SECOND, SERVER_MESSAGE_BURST);
    this.refill();
  }

  /**
   * The server's limits (from `joined`). What this socket has spent already stays spent.
   * @param {number} perSecond @param {number} burst
   */
  configure(perSecond, burst) {
    const spent = this._capacity - this._tokens;
    this._capacity = Math.max(1, burst - Math.max(1, Math.round(burst / 10)));
    this._margin = burst - this._capacity;
    this._perMs = (0.9 * perSecond) / 1000;
    this._tokens = this._capacity - spent;
  }

  /** A new socket: the server's bucket for it starts full. */
  refill() {
    this._tokens = this._capacity;
    this._at = null;
  }

  /**
   * Takes a token if there is one. `intoMargin`: for the last messages before `leave` when there is no time to wait
   * (the page is hidden), the margin may be spent too, all of it but two tokens: one for the `leave` frame itself
   * (charged after them), one spare. @param {number} now @param {boolean} [intoMargin] @returns {boolean}
   */
  take(now, intoMargin = false) {
    this._update(now);
    const extra = intoMargin ? Math.max(0, this._margin - 2) : 0;
    // The epsilon absorbs rounding: a wait of exactly `delayMs` must find the token there.
    if (this._tokens + extra < 1 - 1e-9) return false;
    this._tokens -= 1;
    return true;
  }

  /** A frame that went out without waiting: counted all the same (may go below zero). @param {number} now */
  charge(now) {
    this._update(now);
    this._tokens -= 1;
  }

  /** Milliseconds until a token is there (0: now). @param {number} now */
  delayMs(now) {
    this._update(now);
    return this._tokens >= 1 - 1e-9 ? 0 : Math.max(1, Math.ceil((1 - this._tokens) / this._perMs));
  }

  /** @private @param {number} now */
  _update(now) {
    if (this._at !== null && now > this._at) {
      this._tokens = Math.min(this._capacity, this._tokens + (now - this._at) * this._perMs);
    }
    if (this._at === null || now > this._at) this._at = now;
  }
}

/**
 * The session protocol of docs/protocol.md without I/O: the `join`/`resume` handshake, the numbered server stream
 * (deduplicated; a gap breaks the socket), the client `seq` of outgoing messages, the queue of messages waiting for
 * a usable socket or for the server's message rate (`RateBucket`), and the list of those sent but not yet
 * acknowledged. Inputs are calls (`nextHandshake`, `handleOpen`, `handleFrame`, `handleDisconnect`, `send`);
 * outputs are frames to write (`pollTransmit(now)`), the time until the next waiting message may be written
 * (`nextTransmitDelay(now)`) and events (`pollEvent`), which the driver drains after every input, frames first.
 * No socket, timer or clock inside: the time comes in as `now`.
 *
 * Internal: exported as `_Session` for the SDK's unit tests only; not part of the API (docs/sdk.md).
 */
class Session {
  /**
   * @param {{room: string, token?: string, meta?: any, maxQueue?: number, maxMessageBytes?: number,
   *   rejoinCalls?: boolean}} config
   * @param {{resumes: number, rejoins: number, duplicates: number, gaps: number, queued: number, resent: number}}
   *   [stats] the counters this session increments (the room's `stats`)
   */
  constructor(config, stats = { resumes: 0, rejoins: 0, duplicates: 0, gaps: 0, queued: 0, resent: 0 }) {
    /** @private */ this._config = { maxQueue: 1000, maxMessageBytes: 65536, ...config };
    this.stats = stats;
    /** @type {string | null} the server's session id; null until joined, and after the server forgot it */
    this.id = null;
    /** Highest stream `seq` processed. */
    this.lastSeq = 0;
    /** Joined or resumed on the current socket: messages go out at once instead of being queued. */
    this.usable = false;
    /** @private @type {'join' | 'resume' | null} what the current socket is doing before it is usable */
    this._handshake = null;
    /** @private a `joined` was seen: the next one is a re-join under a new identity */ this._joinedBefore = false;
    /** @private the server answered `resume-failed`: the next socket joins afresh */ this._resumeFailed = false;
    /** @private @type {{msg: object, internal: boolean}[]} not sent yet (no socket usable, or over the rate) */
    this._outbox = [];
    /** @private @type {{msg: any, internal: boolean}[]} sent with a client `seq`, not yet acknowledged, in order */
    this._unacked = [];
    /** @private @type {{msg: any, internal: boolean}[]} of `_unacked`, those to write again after `resumed` */
    this._resend = [];
    /** @private the server's message rate on this socket */ this._rate = new RateBucket();
    /** @private the stream skipped a `seq` on this socket: nothing more is read from it */ this._broken = false;
    /** @private gaps since the stream last got past one, and the `seq` that revealed the last */
    this._gaps = { inARow: 0, got: 0 };
    /** @private last client `seq` given out in this session */ this._clientSeq = 0;
    /** @private a ping asking for an early `ack` is on its way */ this._ackAsked = false;
    /** @private @type {string[]} */ this._transmits = [];
    /** @private @type {SessionEvent[]} */ this._events = [];
  }

  /** Messages sent but not yet acknowledged by the server. */
  get unacknowledged() {
    return this._unacked.length;
  }

  /**
   * The next frame to write to the socket at `now`, or undefined. Frames of the protocol's own (the handshake, an
   * early `ack`) go at once; the app's messages, once the session is usable, as the server's rate allows: first
   * those to resend after a resume, then the queue, in order. The driver calls this only while the socket is
   * writable. `leaving`: the room is about to write `leave` with no time to wait (the page is hidden): waiting
   * messages may use the rate's margin too (`RateBucket.take`).
   * @param {number} now milliseconds, any monotonic origin @param {boolean} [leaving]
   */
  pollTransmit(now, leaving = false) {
    const frame = this._transmits.shift();
    if (frame !== undefined) {
      this._rate.charge(now);
      return frame;
    }
    if (!this.usable || !this.waiting || !this._rate.take(now, leaving)) return undefined;
    const resend = this._resend.shift();
    if (resend) {
      this.stats.resent++;
      return JSON.stringify(resend.msg);
    }
    const m = /** @type {{msg: object, internal: boolean}} */ (this._outbox.shift());
    return this._transmitNumbered(m.msg, m.internal);
  }

  /**
   * Milliseconds from `now` until `pollTransmit` has the next waiting message, or null when none waits (or the
   * session is not usable: `joined`/`resumed` is an input, after which the driver polls anyway).
   * @param {number} now @returns {number | null}
   */
  nextTransmitDelay(now) {
    if (!this.usable || !this.waiting) return null;
    return this._rate.delayMs(now);
  }

  /** Messages not written yet: to resend after a resume, then the queue (for a usable socket or the rate). */
  get waiting() {
    return this._resend.length + this._outbox.length;
  }

  /**
   * The session ends (the room leaves): the messages still waiting (`waiting`), in order, are taken out and
   * returned, never to be written. Those to resend are unacknowledged too, and the server has not handled them
   * (its `ack` said so): they leave that list as well.
   * @returns {{msg: any, internal: boolean}[]}
   */
  takeWaiting() {
    const taken = [...this._resend, ...this._outbox];
    const resent = new Set(this._resend);
    this._unacked = this._unacked.filter((m) => !resent.has(m));
    this._resend = [];
    this._outbox = [];
    return taken;
  }

  /**
   * The session ends without `leave` on a usable socket (the room leaves while reconnecting): the app's messages
   * written and never acknowledged, in order, are taken out and returned; the SDK's own are dropped.
   * @returns {any[]}
   */
  takeUnacknowledged() {
    const lost = this._unacked.filter((m) => !m.internal).map((m) => m.msg);
    this._unacked = [];
    return lost;
  }

  /**
   * A frame the driver writes by itself, at once (heartbeat, probe, `ice-servers`): counted against the server's
   * rate like the others. @param {number} now
   */
  chargeFrame(now) {
    this._rate.charge(now);
  }

  /** @returns {SessionEvent | undefined} the next event for the driver */
  pollEvent() {
    return this._events.shift();
  }

  /**
   * A socket is being opened: returns whether it will `join` (first time, or the server forgot the session) or
   * `resume`. Nothing is usable until its answer.
   * @returns {'join' | 'resume'}
   */
  nextHandshake() {
    this._handshake = this.id ? 'resume' : 'join';
    this.usable = false;
    this._broken = false;
    return this._handshake;
  }

  /** The socket opened: transmits the `join` or the `resume`. */
  handleOpen() {
    // The server counts messages per socket: a new one starts with its whole burst.
    this._rate.refill();
    if (this._handshake === 'join') {
      const join = { type: 'join', room: this._config.room };
      if (this._config.token) join.token = this._config.token;
      if (this._config.meta !== undefined) join.meta = this._config.meta;
      // After a failed resume, with the calls kept (`rejoinCalls`): they may go on, and the server takes their drop
      // and interruption reports on a negotiation since.
      if (this._joinedBefore && this._config.rejoinCalls !== false) join.rejoin = true;
      this.lastSeq = 0;
      this._transmit(join);
      return;
    }
    this._transmit({ type: 'resume', session: this.id, lastSeq: this.lastSeq });
  }

  /**
   * The socket is gone (`code`: its close code, docs/protocol.md). Messages queue until the next `joined` or
   * `resumed`; after 4201 or `resume-failed` the next handshake is a fresh join.
   * @param {number} code
   */
  handleDisconnect(code) {
    this.usable = false;
    // Not written on the old socket: protocol frames are its own; the app's messages wait in the queue, and those
    // to resend are still unacknowledged (resent after the next `resumed`).
    this._transmits = [];
    this._resend = [];
    if (code === 4201 || this._resumeFailed) {
      this._resumeFailed = false;
      this.id = null;
    }
  }

  /** One text frame from the server. @param {string} text */
  handleFrame(text) {
    if (this._broken) return;
    let msg;
    try {
      msg = JSON.parse(text);
    } catch {
      const detail = { code: 'bad-json', message: 'the server sent a frame that is not JSON' };
      this._events.push({ type: 'error', detail });
      return;
    }
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
        // The frames between are lost on this socket, but the server keeps them until acknowledged: skipping to
        // this one (and acknowledging it) would lose them for good. So the socket is given up, as if broken, and
        // the session resumes from `lastSeq`, which replays them in order. Nothing past the gap is processed.
        this.stats.gaps++;
        this._broken = true;
        this.usable = false;
        const gaps = this._gaps;
        gaps.inARow++;
        gaps.got = msg.seq;
        this._events.push({
          type: 'gap',
          detail: {
            code: 'sequence-gap',
            message: `stream jumped from seq ${this.lastSeq} to ${msg.seq}: resuming from ${this.lastSeq}`,
            expected: this.lastSeq + 1,
            got: msg.seq,
            inARow: gaps.inARow,
          },
        });
        return;
      }
      this.lastSeq = msg.seq;
      if (this.lastSeq >= this._gaps.got) this._gaps.inARow = 0;
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
      case 'error':
        // The server closes with 4201 next; the next socket joins again.
        if (msg.code === 'resume-failed') this._resumeFailed = true;
        this._events.push({ type: 'message', msg, handshake: this._handshake });
        return;
      default:
        this._events.push({ type: 'message', msg, handshake: this._handshake });
        return;
    }
  }

  /**
   * Send a `signal` or `broadcast`: queued behind any message still waiting, and numbered when `pollTransmit` writes
   * it (at once if the session is usable and the server's rate allows). Beyond `maxQueue` messages held (queued +
   * unacknowledged) the message is dropped with an `error` event `queue-full`. Throws `too-large` beyond
   * `maxMessageBytes`.
   * @param {object} msg @param {boolean} internal the SDK's own (a `Peer`'s negotiation), dropped on a re-join
   * @param {boolean} writable the socket can take a frame now (else it counts in `stats.queued`)
   */
  send(msg, internal, writable) {
    const { maxQueue, maxMessageBytes } = this._config;
    const text = JSON.stringify(msg);
    if (maxMessageBytes && text.length > maxMessageBytes / 4) {
      const bytes = new TextEncoder().encode(text).length;
      if (bytes > maxMessageBytes) {
        throw new TraverseError('too-large', `message of ${bytes} bytes exceeds ${maxMessageBytes}`);
      }
    }
    if (this._outbox.length + this._unacked.length >= maxQueue) {
      this._events.push({
        type: 'error',
        detail: {
          code: 'queue-full',
          message: `${maxQueue} messages are waiting to be sent or acknowledged; message dropped`,
          id: /** @type {any} */ (msg).id,
        },
      });
      return;
    }
    this._outbox.push({ msg, internal });
    if (!this.usable || !writable) this.stats.queued++;
  }

  /** The heartbeat's frame: a `ping` acknowledging the stream up to `lastSeq`. */
  pingFrame() {
    return JSON.stringify({ type: 'ping', ack: this.lastSeq });
  }

  /** The frame asking for fresh `iceServers` (answered outside the stream, `ice-servers`). */
  iceServersFrame() {
    return JSON.stringify({ type: 'ice-servers' });
  }

  /** The frame that ends the session at once (the others see `peer-left`). */
  leaveFrame() {
    return JSON.stringify({ type: 'leave' });
  }

  // ---- internals --------------------------------------------------------------------------------------------

  /** @private @param {object} msg */
  _transmit(msg) {
    this._transmits.push(JSON.stringify(msg));
  }

  /**
   * Number `msg` with the session's next client `seq` and keep it until acknowledged: returns its frame.
   * @private @param {object} msg @param {boolean} internal @returns {string}
   */
  _transmitNumbered(msg, internal) {
    const numbered = { ...msg, seq: ++this._clientSeq };
    this._unacked.push({ msg: numbered, internal });
    if (!this._ackAsked && this._unacked.length >= Math.max(1, this._config.maxQueue >> 1)) {
      // Half the bound is waiting for an acknowledgement: ask for one now rather than at the next heartbeat.
      this._ackAsked = true;
      this._transmits.push(this.pingFrame());
    }
    return JSON.stringify(numbered);
  }

  /** @private */
  _onJoined(msg) {
    const rejoined = this._joinedBefore;
    if (rejoined) {
      // A failed resume ended the old session: the negotiation messages queued for its peer connections go too.
      this._outbox = this._outbox.filter((m) => !m.internal);
      this.stats.rejoins++;
    }
    // A new session numbers its messages from 1 again. What the old one sent and never saw acknowledged may or may
    // not have arrived: it is reported, not resent (the app decides, knowing it is a new identity now).
    const lost = this.takeUnacknowledged();
    this._clientSeq = 0;
    this._joinedBefore = true;
    this.id = msg.session;
    // The server's message rate (newer servers say it; older ones have the defaults).
    const positive = (/** @type {unknown} */ n) => typeof n === 'number' && n > 0 && Number.isFinite(n);
    this._rate.configure(
      positive(msg.messagesPerSecond) ? msg.messagesPerSecond : SERVER_MESSAGES_PER_SECOND,
      positive(msg.messageBurst) ? msg.messageBurst : SERVER_MESSAGE_BURST,
    );
    this._gaps = { inARow: 0, got: 0 };
    this._becameUsable([]);
    this._events.push({ type: 'joined', msg, rejoined, lost });
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
    this._events.push({ type: 'resumed', msg });
  }

  /** The server has handled every client `seq` up to `ack`. @private @param {number} ack */
  _acknowledge(ack) {
    let n = 0;
    while (n < this._unacked.length && this._unacked[n].msg.seq <= ack) n++;
    if (n) this._unacked.splice(0, n);
    while (this._resend.length && this._resend[0].msg.seq <= ack) this._resend.shift();
  }

  /**
   * Joined or resumed: unacknowledged messages (after a resume) to retransmit, then the queue, go out through
   * `pollTransmit` as the server's rate allows (all at once, the server would drop what is over its burst, and a
   * later message's `ack` would then cover them: lost).
   * @private @param {{msg: any, internal: boolean}[]} resend
   */
  _becameUsable(resend) {
    this._handshake = null;
    this.usable = true;
    this._ackAsked = false;
    this._resend = resend.slice();
  }
}

// ---- internal: the socket plumbing ----------------------------------------------------------------------------

const now = () => (typeof performance !== 'undefined' ? performance.now() : Date.now());

/**
 * What a `Link` calls on its owner: `handshake()` when it opens a socket (join or resume: only a join carries the
 * room and token in the URL), `open()` when the socket opened, `frame(text)` per message, `ping()` for the
 * heartbeat's frame, `drop(code, reason, opened)` when the socket is gone (after which the link waits for
 * `scheduleRetry` or `close`), `unopenable(err)` when `new WebSocket` throws (true: handled).
 * @typedef {object} LinkHost
 * @property {() => 'join' | 'resume'} handshake
 * @property {() => void} open
 * @property {(text: string) => void} frame
 * @property {() => string} ping
 * @property {(code: number, reason: string, opened: boolean) => void} drop
 * @property {(err: any) => boolean} unopenable
 * @internal
 */

/**
 * The socket plumbing: one WebSocket at a time, a bound on its handshake, heartbeats and dead-socket detection once
 * it is established, reconnects with jittered backoff, the page's `online` event. It moves frames and knows nothing
 * of their meaning; its `state` is the room's.
 */
class Link {
  /**
   * @param {string[]} urls @param {ConnectOptions & {reconnectDelaysMs: number[], maxReconnectAttempts: number,
   *   connectTimeoutMs: number}} opts @param {LinkHost} host
   */
  constructor(urls, opts, host) {
    /** @private */ this._urls = urls;
    /** @private index in `_urls` of the URL in use */ this._urlIndex = 0;
    /** @private @type {number | null} when the outage began (the first failed attempt since the last handshake) */
    this._outageAt = null;
    /** @private */ this._opts = opts;
    /** @private */ this._host = host;
    /** @type {RoomState} */
    this.state = 'connecting';
    /** Failed reconnect attempts in a row. */
    this.attempts = 0;
    /** @private @type {WebSocket | null} */ this._ws = null;
    /** @private @type {{open: any, message: any, close: any} | null} the current socket's listeners */
    this._listeners = null;
    /** @private */ this._timers = new Set();
    /** @private */ this._handshakeTimer = null;
    /** @private */ this._retryTimer = null;
    /** @private */ this._hbTimer = null;
    /** @private */ this._lastHeard = 0;
    /** @private the page went `offline` while a socket was open */ this._wentOffline = false;
    /** @private @type {number | undefined} when the first of the last run of `restart`s happened */
    this._restartedAt = undefined;
    /** @private */ this._onOnline = () => {
      const wentOffline = this._wentOffline;
      this._wentOffline = false;
      if (this.state === 'reconnecting' && !this._ws) this._reconnectNow();
      else if (wentOffline) this.probe(0);
    };
    // `offline` then `online` is how Chromium reports a host whose address changed (NAT lab, address-change): the
    // socket bound to the old address will never answer, so it is replaced at once instead of probed for 3 s.
    /** @private */ this._onOffline = () => {
      if (this._ws) this._wentOffline = true;
    };
    if (typeof addEventListener === 'function') {
      addEventListener('online', this._onOnline);
      addEventListener('offline', this._onOffline);
    }
  }

  /** The WebSocket URL in use. */
  get url() {
    return this._urls[this._urlIndex];
  }

  /** A frame written now goes out. */
  get writable() {
    return !!this._ws && this._ws.readyState === WebSocket.OPEN;
  }

  /** Open a socket for the handshake the host names. */
  open() {
    const kind = this._host.handshake();
    let ws;
    try {
      ws = new WebSocket(this._wsUrl(kind === 'join'), this._opts.subprotocol === false ? undefined : PROTOCOL);
    } catch (err) {
      if (!this._host.unopenable(err)) this._later(() => this._host.drop(1006, String(err), true), 0);
      return;
    }
    this._ws = ws;
    let opened = false;
    const timeout = this._later(() => {
      if (this._ws !== ws) return;
      this._detach();
      try {
        ws.close(4000, 'handshake timeout');
      } catch {
        /* ignore */
      }
      this._host.drop(1006, 'handshake timeout', opened);
    }, this._opts.connectTimeoutMs);
    this._handshakeTimer = timeout;
    const listeners = {
      open: () => {
        opened = true;
        this._lastHeard = now();
        this._host.open();
      },
      message: (/** @type {MessageEvent} */ e) => {
        if (this._ws !== ws) return;
        this._lastHeard = now();
        this._host.frame(e.data);
      },
      close: (/** @type {CloseEvent} */ e) => {
        this._clearLater(timeout);
        if (this._ws !== ws) return;
        this._detach();
        this._host.drop(e.code, e.reason, opened);
      },
    };
    this._listeners = listeners;
    ws.addEventListener('open', listeners.open);
    ws.addEventListener('message', listeners.message);
    ws.addEventListener('close', listeners.close);
  }

  /** Write a frame to the current socket. @param {string} text */
  write(text) {
    if (this._ws) this._ws.send(text);
  }

  /**
   * The handshake succeeded (`joined` or `resumed`): the room is open, the reconnect backoff starts over, and the
   * heartbeat runs every `heartbeatMs`.
   * @param {number} heartbeatMs
   */
  established(heartbeatMs) {
    if (this._handshakeTimer) this._clearLater(this._handshakeTimer);
    this._handshakeTimer = null;
    this.attempts = 0;
    this._outageAt = null;
    this.state = 'open';
    this._startHeartbeat(heartbeatMs);
  }

  /**
   * Whether a socket closed with `code` is worth reopening (docs/protocol.md, Close codes): not when reconnecting is
   * off, nor after 1000 or 4000–4099 (token refused, replaced by a newer socket, protocol violation).
   * @param {number} code
   */
  retries(code) {
    return !!this._opts.reconnect && !(code >= 4000 && code <= 4099) && code !== 1000;
  }

  /**
   * Reopen after a delay (`reconnectDelay`). With several URLs, one that could not be reached (the socket did not
   * open, or a stopping server closed it with 4202) gives way to the next. Null when `maxReconnectAttempts` failed
   * in a row.
   * @param {number} code @param {boolean} [opened] the socket had opened @returns {{attempt: number, delayMs: number} | null}
   */
  scheduleRetry(code, opened = true) {
    if (code === 4201) {
      // The server answered (the session is gone, join again): it is reachable, so at once and a new count.
      this.attempts = 0;
      this._outageAt = null;
    }
    if (this.attempts >= this._opts.maxReconnectAttempts) return null;
    const t = now();
    if (this._outageAt === null) this._outageAt = t;
    if (this._urls.length > 1 && (!opened || code === 4202)) this._urlIndex = (this._urlIndex + 1) % this._urls.length;
    const delayMs = reconnectDelay(this.attempts, code, t - this._outageAt, this._opts, Math.random);
    this.attempts++;
    this.state = 'reconnecting';
    this._retryTimer = this._later(() => this._reconnectNow(), delayMs);
    return { attempt: this.attempts, delayMs };
  }

  /**
   * Write `frame` (a `leave`), the socket's last: it is detached at once (no heartbeat, no probe, nothing written
   * after it, and its close is not a drop to reconnect from). Returns the wait for the server to close it, closing it
   * ourselves after 200 ms (`LEAVE_MIN_CLOSE_MS`), at most `ms`.
   * @param {string} frame @returns {(ms: number) => Promise<void>}
   */
  leave(frame) {
    const ws = /** @type {WebSocket} */ (this._ws);
    this._detach();
    try {
      ws.send(frame);
    } catch {
      /* socket already going */
    }
    return (ms) =>
      new Promise((resolve) => {
        if (ws.readyState === WebSocket.CLOSED) return resolve(undefined);
        const done = () => {
          clearTimeout(t);
          clearTimeout(closeSoon);
          resolve(undefined);
        };
        const t = setTimeout(done, ms);
        // The server closes after `leave`; closing ourselves as well is harmless and bounds the wait.
        const closeSoon = setTimeout(
          () => ws.readyState === WebSocket.OPEN && ws.close(1000, 'leave'),
          Math.min(LEAVE_MIN_CLOSE_MS, ms),
        );
        ws.addEventListener('close', done);
      });
  }

  /**
   * Something suggests the path is gone (a peer connection lost its ICE path, the network changed): ping now, and
   * drop the socket as dead (then reconnect and resume) if nothing at all arrives within `ms`, instead of after
   * `deadAfterMs` (22 s by default). One probe at a time; `ms` 0 drops the socket at once.
   * @param {number} ms
   */
  probe(ms) {
    const ws = this._ws;
    if (ms <= 0 && ws && this.state === 'open') {
      // Known dead (the address it was bound to is gone): no need to wait for silence.
      this.restart('network changed');
      return;
    }
    if (!ws || this.state !== 'open' || this._probeTimer || ws.readyState !== WebSocket.OPEN) return;
    const heard = this._lastHeard;
    try {
      ws.send(this._host.ping());
    } catch {
      return;
    }
    /** @private */ this._probeTimer = this._later(() => {
      this._probeTimer = null;
      if (this._ws !== ws || this._lastHeard !== heard) return;
      this._detach();
      try {
        ws.close(4000, 'probe timeout');
      } catch {
        /* ignore */
      }
      this._host.drop(4200, 'no answer to a probe', true);
    }, ms);
  }

  /**
   * Give up the open socket from this side and reconnect through the usual path (the host's `drop`, 4200): it is
   * known dead, or what it carries can no longer be trusted (the stream skipped a `seq`). `inARow` counts such
   * restarts since the last one that helped: from the second on, the attempts and the outage carry on from the
   * first, so the delays grow on the usual schedule (`reconnectDelay`) instead of a tight loop of resumes that gap
   * again. @param {string} reason @param {number} [inARow]
   */
  restart(reason, inARow = 1) {
    const ws = this._ws;
    if (!ws) return;
    this._detach();
    try {
      ws.close(4000, reason);
    } catch {
      /* ignore */
    }
    if (inARow <= 1) this._restartedAt = now();
    else {
      this.attempts = inARow - 1;
      this._outageAt = /** @type {number} */ (this._restartedAt);
    }
    this._host.drop(4200, reason, true);
  }

  /** Final: no socket, no timer, no reconnect. */
  close() {
    this.state = 'closed';
    this._stopHeartbeat();
    for (const t of this._timers) clearTimeout(t);
    this._timers.clear();
    const ws = this._ws;
    if (ws) {
      this._detach();
      try {
        ws.close(1000);
      } catch {
        /* ignore */
      }
    }
    if (typeof removeEventListener === 'function') {
      removeEventListener('online', this._onOnline);
      removeEventListener('offline', this._onOffline);
    }
  }

  // ---- internals --------------------------------------------------------------------------------------------

  /** @private */
  _wsUrl(withJoinQuery) {
    const u = new URL(this.url);
    if (withJoinQuery) {
      // Checked before the upgrade: a refused join costs no socket (docs/protocol.md, Endpoints).
      u.searchParams.set('room', this._opts.room);
      if (this._opts.token) u.searchParams.set('token', this._opts.token);
    } else {
      // A resume: only where the server should serve the socket (its room's worker); nothing is checked on it.
      u.searchParams.set('resuming', this._opts.room);
    }
    return u.toString();
  }

  /** Stop listening to the current socket; it is no longer ours. @private */
  _detach() {
    const ws = this._ws;
    const h = this._listeners;
    if (ws && h) {
      ws.removeEventListener('open', h.open);
      ws.removeEventListener('message', h.message);
      ws.removeEventListener('close', h.close);
    }
    this._ws = null;
    this._listeners = null;
    this._stopHeartbeat();
  }

  /** @private */
  _reconnectNow() {
    if (this.state !== 'reconnecting') return;
    if (this._retryTimer) this._clearLater(this._retryTimer);
    this._retryTimer = null;
    if (this._ws) return;
    this.open();
  }

  /** @private @param {number} every */
  _startHeartbeat(every) {
    this._stopHeartbeat();
    const deadAfter = this._opts.deadAfterMs ?? 2 * every + 2000;
    this._lastHeard = now();
    this._hbTimer = setInterval(() => {
      const ws = this._ws;
      if (!ws) return;
      if (now() - this._lastHeard > deadAfter) {
        // No pong (nor anything else) for too long: the path is dead even if the socket does not know yet.
        this._detach();
        try {
          ws.close(4000, 'heartbeat timeout');
        } catch {
          /* ignore */
        }
        this._host.drop(4200, 'no pong from server', true);
        return;
      }
      if (ws.readyState === WebSocket.OPEN) ws.send(this._host.ping());
    }, Math.min(every, 1 << 30));
  }

  /** @private */
  _stopHeartbeat() {
    if (this._hbTimer !== null) clearInterval(this._hbTimer);
    this._hbTimer = null;
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
}

/**
 * The delay before reconnect attempt `attempt` (0: the first after the drop), `sinceMs` into the outage, after a
 * socket closed with `code`: 4100-4199 back off (`reconnectDelaysMs`, the immediate retry skipped); 4201 (join
 * again) at once; otherwise the server could not be reached or is stopping, and it is probed on the
 * `fastReconnect` schedule for its `forMs`, then on `reconnectDelaysMs`.
 * @param {number} attempt @param {number} code @param {number} sinceMs
 * @param {{reconnectDelaysMs: number[], fastReconnect?: {stepMs?: number, maxMs?: number, forMs?: number} | false}} opts
 * @param {() => number} random in [0, 1) @returns {number} milliseconds
 */
function reconnectDelay(attempt, code, sinceMs, opts, random) {
  const delays = opts.reconnectDelaysMs;
  const backoff = (/** @type {number} */ step) =>
    Math.round(delays[Math.min(step, delays.length - 1)] * (0.8 + 0.4 * random()));
  if (code >= 4100 && code <= 4199) return backoff(attempt + 1);
  if (code === 4201) return 0;
  const fast = opts.fastReconnect === false ? null : { ...FAST_RECONNECT, ...opts.fastReconnect };
  if (!fast || sinceMs >= fast.forMs) return backoff(attempt);
  const base = Math.min(fast.stepMs * attempt, fast.maxMs);
  return Math.round(base * (0.5 + 0.5 * random()));
}

/**
 * `leave()` takes about a second at most: up to `LEAVE_FLUSH_MS` of it writing the messages that wait for the
 * server's rate, as it admits them (~36 past an empty bucket at the default 50 a second), the rest for the socket to
 * close after `leave` (at least `LEAVE_MIN_CLOSE_MS`, after which it is closed from this side).
 */
const LEAVE_MS = 1000;
const LEAVE_FLUSH_MS = 800;
const LEAVE_MIN_CLOSE_MS = 200;

/**
 * How long a probe of the signaling socket waits for any answer before the socket is declared dead. The server
 * answers a ping at once; 3 s covers a slow mobile link's round trip several times over.
 */
const PROBE_TIMEOUT_MS = 3000;

/** Negotiation messages remembered with the `Peer` they were sent for (`Room._sentFor`). */
const SENT_FOR_MAX = 256;

/** A failed credential refresh is tried again after this long. */
const ICE_REFRESH_RETRY_MS = 30000;

/** How long a scheduled refresh waits for the answer to `ice-servers` before it tries HTTP. */
const ICE_ASK_TIMEOUT_MS = 3000;

/**
 * After both sides rejoined (a restarted server), the polite side leaves the restart to the impolite one for this
 * long, and restarts itself only if that has not connected by then. Both restarting at once is a glare that perfect
 * negotiation settles by rolling the polite side's offer back. In the NAT lab (turn-restart, signaling-restart; 4 of
 * 14 restarts, under heavy load) the video sender then sometimes came back with a new SSRC whose encoder never
 * produced a frame (B without video for good, A's outbound-rtp at 0 frames encoded); the glare is the likely trigger.
 */
const SESSION_LOST_POLITE_WAIT_MS = 1500;
/**
 * …and four of the connection's last round trips more (`quality.rttMs`): the impolite side's restart is about that
 * many round trips away from a new pair (ask for servers, offer, answer, allocate, check). Over a satellite link
 * (600 ms) it took 1.9-2.2 s, so 1.5 s alone always made the polite side restart as well; on a LAN it adds nothing.
 */
const SESSION_LOST_POLITE_RTTS = 4;
const SESSION_LOST_POLITE_MAX_EXTRA_MS = 6000;

/** How long an ICE restart waits for fresh servers over the socket before it goes with the ones it has. */
const RESTART_ICE_ASK_MS = 1000;

/**
 * The earliest expiry (Unix seconds) of the TURN REST credentials (`<expiry>:<id>` usernames) in `servers`, or
 * null when none has one (static users, or no TURN).
 * @param {IceServer[]} servers @returns {number | null}
 */
function credentialExpiry(servers) {
  let earliest = null;
  for (const s of servers || []) {
    const m = typeof s.username === 'string' ? /^(\d{1,12}):/.exec(s.username) : null;
    if (m && (earliest === null || Number(m[1]) < earliest)) earliest = Number(m[1]);
  }
  return earliest;
}

/**
 * When to fetch a fresh credential: a quarter of its remaining life before it expires, at most 10 minutes before,
 * and not sooner than 5 s from now (a 60 s credential is refreshed 45 s in, a day-long one 10 minutes before).
 * @param {number} expiry Unix seconds @param {number} nowMs `Date.now()` @returns {number} milliseconds from now
 */
function refreshDelayMs(expiry, nowMs) {
  const left = expiry * 1000 - nowMs;
  const margin = Math.min(left / 4, 10 * 60 * 1000);
  return Math.min(Math.max(5000, Math.round(left - margin)), 0x7fffffff);
}

/**
 * `GET /api/ice-servers` (with the join token as `?token=`, so that the request is a simple one and needs no CORS
 * preflight): fresh `iceServers`. Throws with the server's reason.
 * @param {string} wsUrl @param {string} [token] @returns {Promise<IceServer[]>}
 */
async function fetchIceServers(wsUrl, token) {
  const u = apiUrl(wsUrl, 'ice-servers');
  if (token) u.searchParams.set('token', token);
  const res = await fetch(u);
  const body = await res.json().catch(() => null);
  if (!res.ok || !body) throw new Error(body?.message || `HTTP ${res.status}`);
  return body.iceServers;
}

/** How long `joinCheck` waits for the server's answer (as /check's `TIMEOUTS.api`). */
const JOIN_CHECK_TIMEOUT_MS = 6000;

/**
 * `GET /api/join-check`: the reason a join would be refused, or null.
 * @param {string} wsUrl @param {string} room @param {string} [token]
 */
async function joinCheck(wsUrl, room, token) {
  try {
    const u = apiUrl(wsUrl, 'join-check');
    u.searchParams.set('room', room);
    if (token) u.searchParams.set('token', token);
    const ctl = typeof AbortController !== 'undefined' ? new AbortController() : null;
    // A fresh HTTPS connection: four round trips, 2.4 s over a satellite link (3 s behind a TLS 1.2 terminator).
    // Given up, a refused join reads as a generic connect-failed; /check gives it as long.
    const t = setTimeout(() => ctl && ctl.abort(), JOIN_CHECK_TIMEOUT_MS);
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

/**
 * The HTTP API beside a signaling URL: its last path segment replaced by `api/<name>`, so that a server behind a
 * reverse proxy under a prefix (`wss://host/traverse/ws`) is asked under the same prefix (`/traverse/api/<name>`).
 * @param {string} wsUrl @param {string} name @returns {URL}
 */
function apiUrl(wsUrl, name) {
  const u = new URL(wsUrl);
  u.protocol = u.protocol === 'wss:' ? 'https:' : 'http:';
  u.pathname = u.pathname.replace(/[^/]*$/, '') + `api/${name}`;
  u.search = '';
  u.hash = '';
  return u;
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

/**
 * Internal, for the SDK's unit tests (tests/sdk): not part of the API, may change without notice, and left out of
 * traverse.d.ts (with what only it names, such as `Recovery` and `Session`).
 * @internal
 */
export {
  Session as _Session,
  Recovery as _Recovery,
  credentialExpiry as _credentialExpiry,
  refreshDelayMs as _refreshDelayMs,
  reconnectDelay as _reconnectDelay,
  addCandidateError as _addCandidateError,
  outcomeReport as _outcomeReport,
  usableIceServers as _usableIceServers,
  countCandidate as _countCandidate,
  countIceUrls as _countIceUrls,
  browserOf as _browserOf,
  Sha256 as _Sha256,
  rejoinProof as _rejoinProof,
  receiveFile as _receiveFile,
  attachFiles as _attachFiles,
  apiUrl as _apiUrl,
  writeChunks as _writeChunks,
  fileReader as _fileReader,
  qualityOf as _qualityOf,
};

/** Namespace object: `import Traverse from '/sdk/traverse.js'; await Traverse.connect({room: 'lobby'})`. */
const Traverse = {
  connect,
  Room,
  Peer,
  TraverseError,
  filterIceServers,
  VERSION,
  PROTOCOL,
  RECONNECT_DELAYS_MS,
  FAST_RECONNECT,
  FILE_CHANNEL_LABEL,
  FILE_CHUNK_BYTES,
};
export default Traverse;
