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
export function connect(options: ConnectOptions): Promise<Room>;
/**
 * Keep only the URLs for which `keep(url)` is true; drop servers left without URLs.
 * `filterIceServers(room.iceServers, (u) => u.startsWith('turns:'))` forces TURN over TLS.
 * @param {IceServer[]} servers @param {(url: string) => boolean} keep @returns {IceServer[]}
 */
export function filterIceServers(servers: IceServer[], keep: (url: string) => boolean): IceServer[];
/** SDK version; the protocol version it speaks is `PROTOCOL`. */
export const VERSION: "0.1.0";
export const PROTOCOL: "traverse.v1";
/**
 * Reconnect delays in milliseconds (before jitter): the n-th attempt after a drop waits `RECONNECT_DELAYS_MS[n]`,
 * the last one repeats. Same schedule as LiveKit's client. Used when the server asks to back off (4100-4199) and once
 * `FAST_RECONNECT.forMs` of an outage have passed.
 */
export const RECONNECT_DELAYS_MS: readonly number[];
/**
 * While the server cannot be reached (a socket that did not open, a network drop, 4200-4299), attempts probe it
 * quickly: the n-th waits `stepMs` × n (0 for the first), at most `maxMs`, drawn in [½, 1] × that ("equal jitter":
 * a fleet that lost one node comes back spread over half a second, not in step), for `forMs` from the drop; then
 * `RECONNECT_DELAYS_MS` from where it stands. A restarted server is found at most `maxMs` after it answers again
 * (issue 11: the old schedule's 1.2 and 2.7 s steps made a restart cost 3.1-4.5 s). A probe of a server that is down
 * costs it nothing (a refused TCP connection) or a load balancer one refused request.
 */
export const FAST_RECONNECT: Readonly<{
    stepMs: 250;
    maxMs: 1000;
    forMs: 30000;
}>;
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
    constructor(code: string, message: string, extra?: {
        closeCode?: number;
        status?: number;
        peerId?: string;
        by?: "local" | "remote";
        reason?: string;
        file?: FileCancel;
    });
    /** @type {string} */
    code: string;
    /** @type {number | undefined} the WebSocket close code, when a closing socket caused the error */
    closeCode: number | undefined;
    /** @type {number | undefined} the HTTP status of `/api/join-check`, when it gave the reason of a refused join */
    status: number | undefined;
    /** @type {string | undefined} the remote peer, for an error about one (`unknown-peer`) */
    peerId: string | undefined;
    /** @type {'local' | 'remote' | undefined} which side ended a file transfer (a `sendFile` rejection) */
    by: "local" | "remote" | undefined;
    /** @type {string | undefined} why a file transfer ended, as the side that ended it said */
    reason: string | undefined;
    /** @type {FileCancel | undefined} the transfer a `sendFile` rejection is about (the `file-cancel` detail) */
    file: FileCancel | undefined;
}
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
export class Room extends Emitter<RoomEventMap> {
    /** @param {ConnectOptions} options */
    constructor(options: ConnectOptions);
    /** Room name. */
    room: string;
    /** @type {string | null} this peer's id (changes only after a failed resume and a fresh join) */
    peerId: string | null;
    /** @type {Map<string, PeerInfo>} other peers in the room, by id */
    peers: Map<string, PeerInfo>;
    /** @type {IceServer[]} STUN/TURN servers with a credential minted for this peer */
    iceServers: IceServer[];
    /** @type {string[]} capabilities granted by the join token (`caps`), passed through for the app */
    caps: string[];
    heartbeatMs: number;
    resumeGraceMs: number;
    /** Counters, for diagnostics and tests. @type {RoomStats} */
    stats: RoomStats;
    /** @type {Map<string, Peer>} peer connections by remote peer id */
    connections: Map<string, Peer>;
    /** @private */ private _session;
    /** @private */ private _link;
    /** @private @type {{resolve: (room: Room) => void, reject: (err: any) => void} | null} `connect()` waiting */
    private _startWaiter;
    /** @private the session's events are being handed to the app (see `_drain`) */ private _dispatching;
    /** @private @type {ReturnType<typeof setTimeout> | undefined} the next message waiting for the rate (`_flush`) */
    private _paceTimer;
    /** @private @type {Promise<void> | null} `leave()` under way (calling it again returns it) */
    private _leaving;
    /** @private @type {(() => void) | null} ends the wait of `_leave` (queue empty, socket gone, room closed) */
    private _leaveFlushed;
    /** @private the page-lifecycle hook (section "Leaving with the page") */
    private _onPageHide;
    /** @type {RoomState} */
    get state(): RoomState;
    /** WebSocket URL in use (one of `url`'s list). @type {string} */
    get url(): string;
    /** @type {string | null} the session id (a resume presents it) */
    get session(): string | null;
    /** Highest stream `seq` processed. */
    get lastSeq(): number;
    /** Messages sent but not yet acknowledged by the server (resent after a resume if the server missed them). */
    get unacknowledged(): number;
    /**
     * Send `data` to one peer of the room. Queued while reconnecting. Returns the message id, which comes back in an
     * `undeliverable` event if the message cannot be delivered, or in an `error` event (`unknown-peer`).
     * @param {string} to @param {any} data @param {{id?: string}} [opts] @returns {string}
     */
    signal(to: string, data: any, opts?: {
        id?: string;
    }): string;
    /** Send `data` to every other peer of the room. Queued while reconnecting. @param {any} data */
    broadcast(data: any): void;
    /**
     * Leave the room: let the messages still waiting for the server's rate go out (in order, for at most 800 ms), tell
     * the server (the others see `peer-left` at once), close every peer connection and the socket. A message still
     * waiting then is not sent: each of yours is reported as `undeliverable` with reason `not-sent`. Nothing is
     * written after `leave`, and `signal`/`broadcast` throw `closed` from then on. Resolves when the socket is closed
     * (at most ~1 s); calling it again returns the same promise.
     * @returns {Promise<void>}
     */
    leave(): Promise<void>;
    /**
     * Open (or return) a peer connection to `peerId`, negotiated through this room. Throws `unknown-peer` when
     * `peerId` is not in `room.peers` (it left, or never joined).
     * @param {string} peerId @param {PeerOptions} [options] @returns {Peer}
     */
    connect(peerId: string, options?: PeerOptions): Peer;
    /**
     * After every input to the session: write what it transmits, then hand its events over in order. An app
     * listener that sends gets its frame written at once; events it causes wait for the ones already in line.
     * @private
     */
    private _drain;
    /**
     * Write what the session has for the socket now; if messages wait for the server's rate, come back when the next
     * may go (one timer, re-armed on every flush, cleared when the socket goes).
     * @private
     */
    private _flush;
    /** @private @param {SessionEvent} e */
    private _handleSessionEvent;
    /** @private @param {any} msg @param {boolean} rejoined @param {any[]} lost */
    private _onJoined;
    /** @private the URL of the node the session was last established through */ private _establishedUrl;
    /** @private @param {any} msg */
    private _onResumed;
    /** A server message the session let through, in stream order. @private */
    private _onMessage;
    /** The server's post-mortem of a peer connection (docs/protocol.md, "Connection outcomes"). @private */
    private _onDiagnosis;
    /** @private @param {any} msg @param {'join' | 'resume' | null} handshake */
    private _onError;
    /** @private */ private _iceAskUnsupported;
    /** @private */
    private _onSignal;
    /** @private */
    private _failStart;
    /**
     * The current socket is gone. Decide by close code (docs/protocol.md, Close codes) whether to retry, how soon, and
     * whether to resume or join afresh.
     * @private @param {number} code @param {string} reason @param {boolean} [opened]
     */
    private _onDrop;
    /** Final state. @private */
    private _finish;
    /**
     * `leave()`: a connected outcome report still settling goes out now; what waits for the server's rate (those
     * reports included) is written as tokens come, for at most `LEAVE_FLUSH_MS`; then the pace timer stops, `leave`
     * is written (the socket detached: nothing follows it), what is still waiting is reported (`_reportUnsent`), and
     * the socket gets the rest of the ~1 s to close. No wait when the socket is not usable (reconnecting): there is
     * no `leave` to write either, and the server ends the session after its resume grace.
     * @private
     */
    private _leave;
    /**
     * The end of the session's writing: stop the pace timer, write `leave` (first, on `pagehide`, what the rate's
     * margin admits of the waiting messages), then nothing more; report what still waits. Returns, when `leave` was
     * written on a socket that stays open for now, the wait for its close (`Link.leave`).
     * @private @param {boolean} pageHidden @returns {((ms: number) => Promise<void>) | null}
     */
    private _writeLeave;
    /**
     * Messages of the app's that an ending session wrote and the server never acknowledged (a failed resume, or
     * `leave()` while reconnecting): each may or may not have arrived, and is reported `undeliverable`
     * `session-lost` with its `type` and `data`.
     * @private @param {any[]} lost
     */
    private _reportLost;
    /**
     * Messages the room leaves without writing (they waited for the server's rate, or for a socket): each of the app's
     * is reported as `undeliverable` `not-sent`, with its `type` and `data` (a `broadcast` has no `to` nor `id`); the
     * SDK's own (negotiation, outcome reports) are only counted (`stats.unsent`, both kinds).
     * @private @param {{msg: any, internal: boolean}[]} unsent
     */
    private _reportUnsent;
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
    private _leaveWithPage;
    /**
     * The session is gone (a restarted server refused the resume) and this peer joins again under a new id, as will
     * the others. Its calls stay open, still keyed by the old ids, and wait for their remote peer to say which new id
     * it has now (`{"rejoin": {"was": [old ids]}}`, `_onRejoinSignal`); those not found within the resume grace
     * period (at least 10 s) are closed. `rejoinCalls: false` closes them at once, as before.
     * @private @param {string} previousPeerId
     */
    private _keepCalls;
    /** @private @type {string[]} our own ids the remote peers may still know us by (newest last) */
    private _previousIds;
    /** @private @type {Set<string>} peers already told our old ids since the last rejoin */
    private _toldRejoin;
    /** @private */ private _orphanTimer;
    /**
     * A peer of a connected call was lost to the room (its session expired while its media still flowed): the call
     * stays, under the old id, for the peer to rejoin and prove it (`_onRejoinSignal`), for as long as its media
     * flows, checked every resume grace (at least 10 s); once it stops, the call is closed.
     * @private @param {Peer} pc
     */
    private _awaitRejoin;
    /**
     * Tells `to` (null: every peer of the room) the ids we had, while a call of ours still waits for its peer.
     * @private @param {string | null} to
     */
    private _announceRejoin;
    /**
     * Tells `to` our old ids, and for each call of ours that waits, the proof that we are its other end
     * (`rejoinProof`): we do not know which of them `to` was, so it gets one per call and finds its own.
     * @private @param {string} to
     */
    private _tellRejoin;
    /**
     * `from` rejoined and was `was` before: our call with that old id carries on with `from` (event `peer-rejoined`),
     * and we tell `from` our own old ids if we rejoined too. Only a call that lost its session with ours (orphaned),
     * whose old id has not rejoined this room, and whose other end proves it is `from` (`rejoinProof`): any peer of the
     * room knows the old ids from the peer list, and without the proof could take a call over by claiming one.
     * @private @param {string} from @param {{was?: unknown, proof?: unknown}} rejoin
     */
    private _onRejoinSignal;
    /** Signaling is usable again (resumed or joined): restarts that waited for it go now. @private */
    private _signalingBack;
    /**
     * New `iceServers` (from `ice-servers`, an HTTP refresh or the app): into the room and every peer connection, for
     * its next restart; the next refresh is scheduled from their expiry.
     * @private @param {IceServer[]} servers
     */
    private _setIceServers;
    /** @private failed refreshes in a row */ private _iceRefreshFailures;
    /** @private @type {{promise: Promise<IceServer[] | null>, resolve: (s: IceServer[] | null) => void, timer: any} | null} */
    private _iceAsk;
    /** @private @param {IceServer[] | null} servers */
    private _answerIceAsk;
    /**
     * The TURN credential in `iceServers` is a REST credential (`<expiry>:<id>`). An allocation made with it outlives
     * it (the server checks the expiry only for a new Allocate: docs/sdk.md, "Calls that survive"), but an ICE restart
     * after the expiry would allocate with a dead credential. So a fresh one is fetched a while before the expiry
     * (`refreshDelayMs`) and put into every peer connection (`setConfiguration`), for its next restart.
     * @private
     */
    private _scheduleIceRefresh;
    /** @private */ private _iceRefreshTimer;
    /**
     * A fresh credential: asked over the signaling socket (`ice-servers`: the session authenticates it, so it works
     * after the join token expired; in a cluster the answering node names the live nodes), else from
     * `GET /api/ice-servers` (a server without `ice-servers`, or no usable socket now), or the app's own function.
     * @private
     */
    private _refreshIceServers;
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
export class Peer extends Emitter<PeerEventMap> {
    /**
     * @param {Room} room @param {string} peerId @param {PeerOptions} options
     * @param {boolean} initiator true when created by `room.connect()` (it creates the data channel at once)
     */
    constructor(room: Room, peerId: string, options: PeerOptions, initiator: boolean);
    /** Remote peer id. */
    peerId: string;
    room: Room;
    options: {
        /**
         * open the SDK's data channel (negotiated, id 0, label "traverse"); both sides
         * must agree
         */
        dataChannel: boolean;
        /**
         * `'relay'` forces TURN
         */
        iceTransportPolicy?: RTCIceTransportPolicy;
        /**
         * replaces the join's servers, or
         * filters them (see `filterIceServers`)
         */
        iceServers?: IceServer[] | ((servers: IceServer[]) => IceServer[]);
        /**
         * tracks to send
         */
        media?: MediaStream;
        /**
         * extra options for the data channel (e.g. `{ordered: false}`)
         */
        channelOptions?: RTCDataChannelInit;
        /**
         * restart ICE when the connection fails, stays disconnected or the
         * network changes (`false`: never)
         */
        restartOnFailure: boolean;
        /**
         * when to restart ICE (default: the room's `recovery`)
         */
        recovery?: RecoveryOptions | false;
        /**
         * the most this side accepts from `sendFile` (kept in memory as a Blob):
         * the largest file, and the announced bytes of every file being received from this peer at once; past it a file
         * is cancelled at its start
         */
        maxFileBytes?: number;
        /**
         * files received from this peer at once; another is refused (`refused`)
         * when its head arrives
         */
        maxIncomingFiles?: number;
        /**
         * files `sendFile` sends to this peer at once (the receiver's default
         * `maxIncomingFiles`); the others wait their turn, in call order
         */
        maxOutgoingFiles?: number;
        /**
         * how often the connection's quality is measured while it is
         * up (`quality` events, `peer.quality`); `false`: never
         */
        qualityIntervalMs?: number | false;
    };
    /** Polite peer = the smaller id (docs/sdk.md). */
    polite: boolean;
    closed: boolean;
    /** @type {RTCDataChannel | null} */
    channel: RTCDataChannel | null;
    /** @type {MediaStream[]} remote streams */
    remoteStreams: MediaStream[];
    /** The underlying RTCPeerConnection. */
    pc: RTCPeerConnection;
    /**
     * What the outcome report is made of, gathered as the connection goes (docs/sdk.md, "Connection outcomes").
     * @private
     */
    private _outcome;
    /** @private */ private _makingOffer;
    /** @private offers received and not yet applied */ private _offersPending;
    /** @private our last offer's setLocalDescription, settled or not (glare waits for it) */
    private _offering;
    /** @private */ private _ignoreOffer;
    /** @private */ private _chain;
    /** @private @type {{resolve: (peer: Peer) => void, reject: (err: TraverseError) => void}} */
    private _readyWaiter;
    /**
     * Resolves with this `Peer` when its data channel is open (with `dataChannel: false`: when the connection is
     * connected); rejects when it closes first (`closed`, or `unknown-peer` when the other peer is not in the room).
     * @type {Promise<Peer>}
     */
    ready: Promise<Peer>;
    /** @private @type {{data: string | Blob | ArrayBuffer, size: number}[]} sends waiting behind a Blob being read */
    private _sendQueue;
    /** @private bytes in `_sendQueue` */ private _sendQueued;
    /** @private */ private _pendingSetup;
    /**
     * The connection's quality at the last measurement (`quality` events), null before the first.
     * @type {ConnectionQuality | null}
     */
    quality: ConnectionQuality | null;
    /** @private the previous measurement's counters, for the next one's deltas */
    private _qualityBase;
    /** @private */
    private _qualityTimer;
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
    send(data: string | Blob | ArrayBuffer | ArrayBufferView): void;
    /**
     * Sends `_sendQueue` in order on `ch`, reading each Blob first. A Blob that cannot be read is reported (`error`
     * `read-failed`) and skipped; when the channel is gone, what waits is dropped.
     * @private @param {RTCDataChannel} ch
     */
    private _sendInOrder;
    /**
     * The largest message `send` takes: the SCTP max-message-size of this connection (RFC 8841; 64 KiB before it is
     * known or when the other side did not say).
     * @type {number}
     */
    get maxMessageBytes(): number;
    /**
     * Send a file, Blob or buffer of any size on a data channel of its own (ordered, reliable), in 64 KiB chunks,
     * never holding more than ~2 MiB of it in memory. At most `maxOutgoingFiles` (4) go to one peer at once; the
     * others wait their turn. Resolves once the other side has it all and its SHA-256 matched, with
     * `{id, name, size, type, sha256, ms}`; rejects with a `TraverseError` whose `code` is a `FileErrorCode`
     * (`cancelled`, `refused`, `integrity`, `closed`, `timeout`, `read-failed`), with `by` and `file`. The other peer
     * gets `file-start`, `file-progress`, then `file` with a `Blob`.
     * @param {FileSource} file @param {SendFileOptions} [options] @returns {Promise<FileSent>}
     */
    sendFile(file: FileSource, options?: SendFileOptions): Promise<FileSent>;
    /**
     * Cancel a transfer of either direction by its `id` (from `file-start` or `file-progress`); both sides get
     * `file-cancel`. False when there is no such transfer (any more).
     * @param {string} id @param {string} [reason]
     */
    cancelFile(id: string, reason?: string): boolean;
    /** Add a media track (renegotiates). @param {MediaStreamTrack} track @param {...MediaStream} streams */
    addTrack(track: MediaStreamTrack, ...streams: MediaStream[]): RTCRtpSender;
    /**
     * The selected ICE candidate pair, from getStats: `{local, remote, state, rtt}` where `local` and `remote` are
     * `{candidateType, protocol, relayProtocol, address, port, url}` (`relayProtocol`: `udp`, `tcp` or `tls` for a
     * local relay candidate). Null before ICE has selected a pair.
     */
    getSelectedPair(): Promise<{
        local: {
            candidateType: any;
            protocol: any;
            relayProtocol: any;
            address: any;
            port: any;
            url: any;
        };
        remote: {
            candidateType: any;
            protocol: any;
            relayProtocol: any;
            address: any;
            port: any;
            url: any;
        };
        state: any;
        rtt: any;
    }>;
    /**
     * Close the connection (does not leave the room); the other side's `Peer` closes too. While the room reconnects,
     * the other side is told once it is back.
     */
    close(): void;
    /**
     * The first of connected, failed or the timeout: report it to the server once.
     * @private @param {'connected' | 'failed' | 'timeout'} outcome
     */
    private _settle;
    /**
     * One quality measurement: nothing before the connection first connected; `lost` while ICE is disconnected or
     * failed; else graded from `getStats` (`qualityOf`). A `quality` event when the grade changed.
     * @private
     */
    private _measureQuality;
    /** @private */
    private _emitState;
    /** @private */
    private _fail;
    /** @private */
    private _signal;
    /** Media tracks and the data channel. @private */
    private _setup;
    /** @private */
    private _createChannel;
    /** @private */
    private _applySignal;
    /** @private @returns {Recovery | null} */
    private _startRecovery;
    /** @private an offer or answer went by since the last restart */ private _negotiatedSinceRestart;
    /** @private */ private _unwatchNetwork;
    /**
     * Follows the recovery of a connected call for its drop report: a break starts with the first `reconnecting`
     * of an episode (a blip healed within the grace period is none), ends with `reconnected`, and is a drop when
     * recovery gives up.
     * @private @param {string} name @param {any} detail
     */
    private _noteRecovery;
    /**
     * The call broke and came back (`reconnected` after an announced break): report the interruption, `recovered`,
     * with what broke it, how long it took, the restarts it took and the path it goes now (docs/protocol.md).
     * @private @param {{at: number, cause: string, ufrags: Set<string>}} b @param {any} detail
     */
    private _reportRecovered;
    /**
     * This connection's outcome report, from what was gathered as it went (`stats`: a getStats report, or an empty
     * map when the peer connection may be closing).
     * @private @param {OutcomeReport['outcome']} outcome @param {any} stats
     * @param {{elapsedMs?: number, restarts: number, seen: Map<string, GatheredCounts>}} o
     */
    private _reportOf;
    /**
     * A report of a break (`dropped` or `recovered`): the restarts' own gathering (ICE generations after the break),
     * what broke it, how long the connection had been up and how long the break lasted.
     * @private @param {'dropped' | 'recovered'} outcome @param {any} stats
     * @param {{at: number, ufrags: Set<string>} | null} b the break, if one was announced
     * @param {number} restarts @param {number} brokenMs @param {string} cause
     */
    private _breakReport;
    /**
     * The call connected and then broke for good: report it once, `dropped`, with what broke it, how long it had
     * been up and how long recovery tried (docs/protocol.md, "Connection outcomes"). Built from what was gathered as
     * it went, without getStats: the peer connection may be closing.
     * @private @param {string} cause @param {number} attempts restarts made since the break
     */
    private _reportDrop;
    /** @private */
    private _stopRecovery;
    /**
     * An ICE restart with the room's current servers (a credential refresh or a rejoin brought new ones): the offer
     * it causes goes through perfect negotiation, so a restart from both sides at once is an ordinary glare. Our own
     * offer that a lost session dropped is rolled back first, else the restart would wait for its answer forever.
     * @private
     */
    private _restartIce;
    /** @private an offer of ours went with the lost session (`_orphan`) */ private _offerLost;
    /**
     * An ICE restart (ours or the other side's) replaces the generation the outcome report is about. Before this
     * connection ever connected, that generation failed: the other side restarts because its attempt failed, and ours
     * would be replaced before it could reach `failed`, so it is reported now, as the other side's was — else our
     * report came only at the timeout, after the server's pairing deadline (NAT lab, sym-a + sym-b without TURN). A
     * failure report waiting for gathering stops waiting: what gathers now is the new generation.
     * @private
     */
    private _generationEnds;
}
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
export const RESTART_DELAYS_MS: readonly number[];
/** The label of the data channels that carry one file each; other labels are left to the app. */
export const FILE_CHANNEL_LABEL: "traverse-file";
/** Chunk size: 64 KiB, under every browser's SCTP max-message-size (Chrome 256 KiB, Firefox 1 GiB, Safari 64 KiB). */
export const FILE_CHUNK_BYTES: number;
export default Traverse;
export type IceServer = {
    urls: string | string[];
    username?: string;
    credential?: string;
};
export type PeerInfo = {
    id: string;
    meta?: any;
};
export type RoomState = "connecting" | "open" | "reconnecting" | "closed";
export type RoomStats = {
    reconnects: number;
    resumes: number;
    rejoins: number;
    duplicates: number;
    gaps: number;
    queued: number;
    resent: number;
    lost: number;
    unsent: number;
};
export type PeerOptions = {
    /**
     * open the SDK's data channel (negotiated, id 0, label "traverse"); both sides
     * must agree
     */
    dataChannel?: boolean;
    /**
     * `'relay'` forces TURN
     */
    iceTransportPolicy?: RTCIceTransportPolicy;
    /**
     * replaces the join's servers, or
     * filters them (see `filterIceServers`)
     */
    iceServers?: IceServer[] | ((servers: IceServer[]) => IceServer[]);
    /**
     * tracks to send
     */
    media?: MediaStream;
    /**
     * extra options for the data channel (e.g. `{ordered: false}`)
     */
    channelOptions?: RTCDataChannelInit;
    /**
     * restart ICE when the connection fails, stays disconnected or the
     * network changes (`false`: never)
     */
    restartOnFailure?: boolean;
    /**
     * when to restart ICE (default: the room's `recovery`)
     */
    recovery?: RecoveryOptions | false;
    /**
     * the most this side accepts from `sendFile` (kept in memory as a Blob):
     * the largest file, and the announced bytes of every file being received from this peer at once; past it a file
     * is cancelled at its start
     */
    maxFileBytes?: number;
    /**
     * files received from this peer at once; another is refused (`refused`)
     * when its head arrives
     */
    maxIncomingFiles?: number;
    /**
     * files `sendFile` sends to this peer at once (the receiver's default
     * `maxIncomingFiles`); the others wait their turn, in call order
     */
    maxOutgoingFiles?: number;
    /**
     * how often the connection's quality is measured while it is
     * up (`quality` events, `peer.quality`); `false`: never
     */
    qualityIntervalMs?: number | false;
};
export type ConnectOptions = {
    /**
     * room name
     */
    room: string;
    /**
     * WebSocket URL (`wss://host/ws`); http(s) URLs are converted. Default: `/ws`
     * beside this module's own URL, else beside the page. Several (the nodes of a cluster): the first is joined; when
     * the one in use cannot be reached (a socket that does not open, or closes with 4202) the next reconnect goes to
     * the next one, round the list
     */
    url?: string | string[];
    /**
     * signaling token (JWT), when the server has a signaling secret
     */
    token?: string;
    /**
     * public metadata shown to the other peers (at most 1 KiB of JSON)
     */
    meta?: any;
    /**
     * reconnect and resume after a drop
     */
    reconnect?: boolean;
    /**
     * override `RECONNECT_DELAYS_MS`
     */
    reconnectDelaysMs?: number[];
    /**
     * override
     * `FAST_RECONNECT`, the probing of a server that cannot be reached; `false`: `reconnectDelaysMs` only
     */
    fastReconnect?: {
        stepMs?: number;
        maxMs?: number;
        forMs?: number;
    } | false;
    /**
     * give up (event `closed`) after this many failed attempts in a row
     */
    maxReconnectAttempts?: number;
    /**
     * ping interval; default: the server's `heartbeatMs` from `joined`
     */
    heartbeatMs?: number;
    /**
     * declare the socket dead after this long without any server message; default
     * 2 × heartbeat + 2 s
     */
    deadAfterMs?: number;
    /**
     * bound on opening a socket and getting `joined`/`resumed`
     */
    connectTimeoutMs?: number;
    /**
     * bound on messages held by the SDK: queued while reconnecting, plus sent but not
     * yet acknowledged by the server
     */
    maxQueue?: number;
    /**
     * refuse larger messages locally (the server closes with 1009)
     */
    maxMessageBytes?: number;
    /**
     * ask for the WebSocket subprotocol `traverse.v1` (the server must echo it)
     */
    subprotocol?: boolean;
    /**
     * answer offers from peers you did not `connect()` to (event `peer-connection`)
     */
    autoAccept?: boolean;
    /**
     * options for peers created by
     * `autoAccept`
     */
    peerOptions?: PeerOptions | ((peerId: string) => PeerOptions);
    /**
     * send the server one `outcome` report per peer connection (connected,
     * failed, or not connected after `outcomeTimeoutMs`): candidate types and counts, TURN errors, the browser — no
     * addresses (docs/sdk.md, "Connection outcomes")
     */
    reportOutcomes?: boolean;
    /**
     * a peer connection not connected after this long is reported `timeout`
     */
    outcomeTimeoutMs?: number;
    /**
     * leave the room when the page is hidden for good (`pagehide`: tab closed,
     * navigation, reload), so the others see `peer-left` at once instead of after the resume grace
     */
    leaveOnPageHide?: boolean;
    /**
     * when peer connections restart ICE (docs/sdk.md, "Calls that
     * survive"); `false`: never
     */
    recovery?: RecoveryOptions | false;
    /**
     * when a peer connection's path breaks or the network changes, the signaling
     * socket is pinged and declared dead if nothing arrives within this long
     */
    probeTimeoutMs?: number;
    /**
     * after a failed resume (a restarted server), keep the calls and find their
     * peers' new ids (event `peer-rejoined`); `false`: close them
     */
    rejoinCalls?: boolean;
    /**
     * how a fresh TURN credential is fetched before
     * the current one expires (and before an ICE restart); default: asked over the signaling socket (`ice-servers`),
     * else `GET /api/ice-servers` with `token`; `false`: never
     */
    refreshIceServers?: false | (() => Promise<IceServer[]>);
};
/**
 * Why a `Peer` closed (its `close` event): `by` the side that ended it; `reason` `closed` (`peer.close()`), `bye`
 * (the other side's `close()`), `channel-closed` (the other side's data channel closed: its `Peer` or page went),
 * `peer-left`, `unknown-peer` (the server does not know the other peer), `replaced` (the other side called again
 * with a new connection), `room-closed`, `session-lost` (a failed resume with `rejoinCalls: false`).
 */
export type PeerClose = {
    by: "local" | "remote";
    reason: string;
};
/**
 * The events of a `Room`, by name: the detail each one's listener gets.
 */
export type RoomEventMap = {
    "joined": {
        peerId: string;
        peers: PeerInfo[];
        rejoined: boolean;
        previousPeerId: string | null;
        seq?: number;
    };
    "peer-joined": {
        peer: PeerInfo;
        seq?: number;
    };
    "peer-left": {
        peerId: string;
        reason: "left" | "lost" | string;
        seq?: number;
    };
    "peer-rejoined": {
        peerId: string;
        previousPeerId: string;
        peer: Peer;
    };
    "signal": {
        from: string;
        data: any;
        seq?: number;
        internal: boolean;
    };
    "broadcast": {
        from: string;
        data: any;
        seq?: number;
    };
    "undeliverable": {
        to?: string;
        id?: string;
        reason: string;
        seq?: number;
        type?: "signal" | "broadcast";
        data?: any;
    };
    "error": {
        code: string;
        message: string;
        id?: string;
        seq?: number;
        peerId?: string;
        expected?: number;
        got?: number;
        inARow?: number;
    };
    "reconnecting": {
        attempt: number;
        delayMs: number;
        code: number;
        reason: string;
    };
    "resumed": {
        replayed: number;
        seq: number;
        peerId?: string;
        ack?: number;
    };
    "closed": {
        code: number;
        reason: string;
    };
    "peer-connection": {
        peer: Peer;
        peerId: string;
    };
    "ice-servers": {
        iceServers: IceServer[];
        expiresAt: number | null;
    };
    "connection-diagnosis": ConnectionDiagnosis;
    "connection-failed": ConnectionDiagnosis;
    "connection-dropped": ConnectionDiagnosis;
};
export type ConnectionDiagnosis = {
    peer: string;
    you: string;
    outcome: "connected" | "failed" | "timeout" | "dropped" | "recovered";
    reason: string;
    step: string;
    message: string;
    seq?: number;
    path?: string;
    timeToConnectMs?: number;
    connectedMs?: number;
    recoveryMs?: number;
    cause?: string;
};
/**
 * The events of a `Peer`, by name: the detail each one's listener gets (a `message`'s `data` is a string or an
 * `ArrayBuffer`).
 */
export type PeerEventMap = {
    "open": {};
    "message": {
        data: any;
    };
    "close": PeerClose;
    "track": {
        track: MediaStreamTrack;
        streams: readonly MediaStream[];
    };
    "state": {
        connectionState: RTCPeerConnectionState;
        iceConnectionState: RTCIceConnectionState;
    };
    "error": {
        code: string;
        message: string;
        peerId: string;
    };
    "reconnecting": {
        cause: RecoveryCause;
        attempt: number;
        peerId: string;
    };
    "reconnected": {
        cause: RecoveryCause;
        durationMs: number;
        attempts: number;
        peerId: string;
    };
    "recovery-failed": {
        cause: RecoveryCause;
        attempts: number;
        peerId: string;
    };
    "rejoined": {
        peerId: string;
        previousPeerId: string;
    };
    "file-start": {
        id: string;
        name: string;
        size: number;
        type: string;
    };
    "file-progress": FileProgress;
    "file": FileReceived;
    "file-cancel": FileCancel;
    "quality": ConnectionQuality;
};
/**
 * A `ConnectionQuality`'s `grade` (see there).
 */
export type QualityGrade = "good" | "fair" | "poor" | "bad" | "lost";
/**
 * How a connection carries media and data now, from `getStats` over the last interval: `grade` is the worst of its
 * measures against thresholds others use too (RTT 100/250/400 ms, jitter 5/10/30 ms, loss 1/3/8 % for good, fair,
 * poor; above: bad), or `lost` while ICE is disconnected. `jitterMs` and `lossPercent` need received media (RTP);
 * they are null on a data-only connection. `path`: `direct` or `relay`.
 */
export type ConnectionQuality = {
    grade: QualityGrade;
    rttMs: number | null;
    jitterMs: number | null;
    lossPercent: number | null;
    path: "direct" | "relay" | null;
};
/**
 * What `peer.sendFile` sends: a File, a Blob, or bytes.
 */
export type FileSource = Blob | ArrayBuffer | ArrayBufferView;
/**
 * When a `Peer` restarts ICE (docs/sdk.md, "Calls that survive").
 */
export type RecoveryOptions = {
    /**
     * ICE `disconnected` for this long starts a restart: a short blip (a NAT's
     * hiccup, a link down a second) often heals by itself, and a restart costs a round of signaling
     */
    graceMs?: number;
    /**
     * delay before the n-th restart of one episode (the last one repeats);
     * default `[0, 1000, 3000, 7000, 15000]`
     */
    restartDelaysMs?: number[];
    /**
     * a restart not connected after this long is followed by the next
     */
    restartTimeoutMs?: number;
    /**
     * restarts in a row without connecting before giving up (`recovery-failed`)
     */
    maxRestarts?: number;
};
export type RecoveryCause = "ice-disconnected" | "ice-failed" | "network-change" | "network-offline" | "session-lost" | "node-lost";
export type SendFileOptions = {
    /**
     * called as bytes leave (at most every 50 ms, and at the
     * end); what it throws is reported (`reportError`) and never affects the transfer
     */
    onProgress?: (progress: FileProgress) => void;
    /**
     * aborting it cancels the transfer (both sides get `file-cancel`); already aborted:
     * `sendFile` rejects at once with `cancelled`
     */
    signal?: AbortSignal;
    /**
     * the name the receiver sees (default: the File's name, else `file`; `''` is `file`; cut
     * to 1024 UTF-16 code units on a code point, the same on both sides)
     */
    name?: string;
    /**
     * the MIME type the receiver sees (default: the Blob's type; at most 256 characters)
     */
    type?: string;
};
/**
 * Why a file transfer ended without arriving (`FileCancel.code`, and the code of `sendFile`'s rejection):
 * `cancelled` a user of either side (`signal`, `cancelFile`); `refused` the receiver's limits (`maxFileBytes`,
 * `maxIncomingFiles`, an id in use, a malformed head); `integrity` the bytes did not match (more than announced, or
 * another SHA-256); `closed` the `Peer` or the file's channel went away; `timeout` no head within 10 s or no chunk
 * for 60 s on the receiver; `read-failed` the sender could not read its source.
 */
export type FileErrorCode = "cancelled" | "refused" | "integrity" | "closed" | "timeout" | "read-failed";
export type FileProgress = {
    id: string;
    name: string;
    size: number;
    bytes: number;
    direction: "send" | "receive";
};
export type FileSent = {
    id: string;
    name: string;
    size: number;
    type: string;
    sha256: string;
    ms: number;
};
export type FileReceived = {
    id: string;
    name: string;
    size: number;
    type: string;
    blob: Blob;
    sha256: string;
    ms: number;
};
export type FileCancel = {
    id: string;
    name: string;
    size: number;
    direction: "send" | "receive";
    by: "local" | "remote";
    code: FileErrorCode;
    reason: string;
};
/**
 * `on`, `once` and `off` over `EventTarget`, typed by an event map (event name → detail): a misspelt event name or
 * detail field does not compile in TypeScript.
 * @template {object} M
 */
declare class Emitter<M extends unknown> extends EventTarget {
    constructor();
    /** @private @type {Map<string, Map<Function, EventListener>>} listeners added with `on`, by event name */
    private _handlers;
    /**
     * Listen to an event; `fn` receives the event's detail. Returns a function that removes the listener (as
     * `off(name, fn)` does).
     * @template {keyof M & string} K
     * @overload
     * @param {K} name @param {(detail: M[K]) => void} fn @returns {() => void}
     */
    on<K extends keyof M & string>(name: K, fn: (detail: M[K]) => void): () => void;
    /**
     * An event name known only at run time (a `string` variable, not a literal, which must be an event's name): the
     * detail is untyped.
     * @template {string} N
     * @overload
     * @param {string extends N ? N : never} name @param {(detail: any) => void} fn @returns {() => void}
     */
    on<N extends string>(name: string extends N ? N : never, fn: (detail: any) => void): () => void;
    /**
     * Remove a listener added with `on`.
     * @template {keyof M & string} K
     * @overload
     * @param {K} name @param {(detail: M[K]) => void} fn @returns {void}
     */
    off<K extends keyof M & string>(name: K, fn: (detail: M[K]) => void): void;
    /**
     * @template {string} N
     * @overload
     * @param {string extends N ? N : never} name @param {(detail: any) => void} fn @returns {void}
     */
    off<N extends string>(name: string extends N ? N : never, fn: (detail: any) => void): void;
    /**
     * Resolves with the detail of the next `name` event for which `pred` holds, or rejects with `timeout` after
     * `timeoutMs`.
     * @template {keyof M & string} K
     * @overload
     * @param {K} name @param {(detail: M[K]) => boolean} [pred] @param {number} [timeoutMs]
     * @returns {Promise<M[K]>}
     */
    once<K extends keyof M & string>(name: K, pred?: (detail: M[K]) => boolean, timeoutMs?: number): Promise<M[K]>;
    /**
     * @template {string} N
     * @overload
     * @param {string extends N ? N : never} name @param {(detail: any) => boolean} [pred] @param {number} [timeoutMs]
     * @returns {Promise<any>}
     */
    once<N extends string>(name: string extends N ? N : never, pred?: (detail: any) => boolean, timeoutMs?: number): Promise<any>;
}
declare namespace Traverse {
    export { connect };
    export { Room };
    export { Peer };
    export { TraverseError };
    export { filterIceServers };
    export { VERSION };
    export { PROTOCOL };
    export { RECONNECT_DELAYS_MS };
    export { FAST_RECONNECT };
    export { FILE_CHANNEL_LABEL };
    export { FILE_CHUNK_BYTES };
}
