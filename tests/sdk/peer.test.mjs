// Unit tests of a `Peer`'s life in node (docs/sdk.md, "Peer connections"): a `Room` driven through its session with
// frames, a fake socket and a fake RTCPeerConnection (as in rejoin.test.mjs), for what ends a call and what a call
// promises: a close while the room reconnects still tells the other side, the other side's data channel closing
// ends the call, a new call from the same peer replaces a stale one, `connect()` to an id not in the room and the
// server's `unknown-peer` about a `Peer`'s message, `ready` without a data channel, and what `send` takes. Then
// `connect()`'s errors: the URL and a hint when the socket never opens, and the join check under a path prefix.
//
//   node --test tests/sdk/peer.test.mjs
import { test } from 'node:test';
import assert from 'node:assert/strict';
import fs from 'node:fs';

const source = fs.readFileSync(new URL('../../web/sdk/traverse.js', import.meta.url), 'utf8');
const sdk = await import(`data:text/javascript;base64,${Buffer.from(source).toString('base64')}`);

let certificates = 0;
/** A DTLS fingerprint line: one per RTCPeerConnection, as each makes its own certificate. */
const fingerprint = () => `a=fingerprint:sha-256 ${(++certificates).toString(16).padStart(64, '0').match(/../g).join(':')}`;
const offerSdp = (fp, ufrag = 'u1') => ({ type: 'offer', sdp: `v=0\r\n${fp}\r\na=ice-ufrag:${ufrag}\r\n` });

/** The SDK's negotiated channel: open or not, what was sent, and its handler properties. */
class FakeChannel {
  constructor() {
    this.readyState = 'connecting';
    this.bufferedAmount = 0;
    this.sent = [];
    this.onopen = this.onclose = this.onmessage = null;
  }
  send(data) {
    this.sent.push(data);
  }
  close() {
    this.readyState = 'closed';
  }
  /** The channel opens (both ends negotiated). */
  open() {
    this.readyState = 'open';
    this.onopen?.();
  }
  /** The other end closed its half. */
  remoteClose() {
    this.readyState = 'closed';
    this.onclose?.();
  }
}

/** Enough of RTCPeerConnection for a `Peer`: descriptions with a certificate of its own, states, a channel. */
class FakePeerConnection extends EventTarget {
  constructor() {
    super();
    this.fingerprint = fingerprint();
    this.localDescription = null;
    this.remoteDescription = null;
    this.signalingState = 'stable';
    this.iceConnectionState = 'new';
    this.connectionState = 'new';
    this.iceGatheringState = 'complete';
    this.channels = [];
  }
  createDataChannel() {
    const ch = new FakeChannel();
    this.channels.push(ch);
    return ch;
  }
  addTrack() {}
  getConfiguration() {
    return {};
  }
  setConfiguration() {}
  restartIce() {}
  getStats() {
    return Promise.resolve(new Map());
  }
  async setRemoteDescription(d) {
    this.remoteDescription = d;
    this.signalingState = d.type === 'offer' ? 'have-remote-offer' : 'stable';
  }
  async setLocalDescription() {
    const type = this.signalingState === 'have-remote-offer' ? 'answer' : 'offer';
    this.localDescription = { type, sdp: `v=0\r\n${this.fingerprint}\r\n` };
    this.signalingState = type === 'offer' ? 'have-local-offer' : 'stable';
  }
  async addIceCandidate() {}
  close() {
    this.connectionState = 'closed';
  }
  /** The connection reaches `state`, with its events (handler properties too, as a browser's). */
  reach(state) {
    this.iceConnectionState = state;
    this.oniceconnectionstatechange?.();
    this.dispatchEvent(new Event('iceconnectionstatechange'));
    this.connectionState = state;
    this.onconnectionstatechange?.();
    this.dispatchEvent(new Event('connectionstatechange'));
  }
}

/** A room whose socket is a list: frames in with `receive`, frames out in `sent`; `offline()`/`online()` its link. */
function fakeRoom(options = {}) {
  globalThis.RTCPeerConnection = FakePeerConnection;
  const room = new sdk.Room({ room: 'r', url: 'ws://traverse.test/ws', reportOutcomes: false, ...options });
  const sent = [];
  const link = {
    state: 'open',
    writable: true,
    url: 'ws://traverse.test/ws',
    write: (f) => sent.push(JSON.parse(f)),
    established() {},
    probe() {},
    close() {
      this.state = 'closed';
    },
  };
  room._link = link;
  const receive = (msg) => {
    room._session.handleFrame(JSON.stringify(msg));
    room._drain();
  };
  room._session.nextHandshake();
  room._session.handleOpen();
  room._drain();
  const events = [];
  for (const name of ['error', 'peer-connection']) room.on(name, (d) => events.push({ name, ...d }));
  return {
    room,
    sent,
    receive,
    events,
    signals: () => sent.filter((m) => m.type === 'signal'),
    /** The socket dropped: the room is reconnecting, nothing can be written. */
    offline() {
      link.state = 'reconnecting';
      link.writable = false;
    },
    /** Back: what waited is written. */
    online() {
      link.state = 'open';
      link.writable = true;
      room._drain();
    },
  };
}

const joined = (peerId, peers) => ({ type: 'joined', seq: 1, session: `s_${peerId}`, peerId, peers: peers.map((id) => ({ id })) });
const tick = () => new Promise((r) => setImmediate(r));
/** `promise`'s outcome within `ms`: `{ok}`, `{err}`, or `{pending: true}`. */
const settled = (promise, ms = 200) =>
  Promise.race([promise.then((ok) => ({ ok }), (err) => ({ err })), new Promise((r) => setTimeout(() => r({ pending: true }), ms))]);

test('peer.close() while the room reconnects: the bye waits in the queue and goes once the room is back', async () => {
  const r = fakeRoom();
  r.receive(joined('p_a', ['p_b']));
  const peer = r.room.connect('p_b');
  r.offline();
  peer.close();
  assert.equal(peer.closed, true);
  assert.deepEqual(r.signals().filter((m) => m.data.bye), [], 'nothing written while reconnecting');
  r.online();
  assert.deepEqual(r.signals().filter((m) => m.data.bye).map((m) => m.to), ['p_b'], 'the other side is told');
  r.room._finish(1000, 'done', true);
});

test("the other side's data channel closing ends the call: close {by: remote}, ready rejected", async () => {
  const r = fakeRoom();
  r.receive(joined('p_a', ['p_b']));
  const peer = r.room.connect('p_b');
  const closes = [];
  peer.on('close', (d) => closes.push(d));
  peer.channel.remoteClose();
  assert.equal(peer.closed, true, 'the Peer closed');
  assert.deepEqual(closes, [{ by: 'remote', reason: 'channel-closed' }]);
  assert.equal(r.room.connections.has('p_b'), false);
  const ready = await settled(peer.ready);
  assert.equal(ready.err?.code, 'closed');
  // Our own close does not come back as the other side's.
  const again = r.room.connect('p_b');
  const mine = [];
  again.on('close', (d) => mine.push(d));
  again.close();
  again.channel.remoteClose();
  assert.deepEqual(mine, [{ by: 'local', reason: 'closed' }]);
  r.room._finish(1000, 'done', true);
});

test('a new first offer from the same peer (another connection) replaces the stale Peer; a renegotiation does not', async () => {
  const r = fakeRoom();
  r.receive(joined('p_b', ['p_a']));
  const firstCall = fingerprint();
  r.receive({ type: 'signal', seq: 2, from: 'p_a', data: { sdp: offerSdp(firstCall) } });
  const stale = r.room.connections.get('p_a');
  await tick();
  assert.ok(stale.pc.remoteDescription, 'the first offer applied');
  // An ICE restart of the same connection (same certificate, new ufrag): the same Peer.
  r.receive({ type: 'signal', seq: 3, from: 'p_a', data: { sdp: offerSdp(firstCall, 'u2') } });
  await tick();
  assert.equal(r.room.connections.get('p_a'), stale);
  assert.equal(stale.closed, false);
  // A closed its Peer (its bye lost) and calls again: a new RTCPeerConnection, a new certificate.
  const closes = [];
  stale.on('close', (d) => closes.push(d));
  const secondCall = fingerprint();
  r.receive({ type: 'signal', seq: 4, from: 'p_a', data: { sdp: offerSdp(secondCall) } });
  const fresh = r.room.connections.get('p_a');
  assert.notEqual(fresh, stale, 'a new Peer');
  assert.equal(stale.closed, true);
  assert.deepEqual(closes, [{ by: 'remote', reason: 'replaced' }]);
  assert.equal(r.events.filter((e) => e.name === 'peer-connection').length, 2);
  await tick();
  assert.equal(fresh.pc.remoteDescription.sdp, offerSdp(secondCall).sdp, 'the new Peer took the new offer');
  assert.equal(r.signals().filter((m) => m.data.sdp?.type === 'answer').length, 3, 'each offer answered');
  r.room._finish(1000, 'done', true);
});

test('connect() to an id not in the room throws unknown-peer', () => {
  const r = fakeRoom();
  r.receive(joined('p_a', ['p_b']));
  assert.throws(() => r.room.connect('no-such-peer'), (e) => e.code === 'unknown-peer' && /no-such-peer/.test(e.message));
  assert.equal(r.room.connections.size, 0);
  r.room._finish(1000, 'done', true);
});

test("the server's unknown-peer about a Peer's message closes that Peer and rejects ready; no room error", async () => {
  const r = fakeRoom();
  r.receive(joined('p_a', ['p_b']));
  const peer = r.room.connect('p_b');
  // B left a moment ago; the server has not told us yet, and says so about our offer.
  await peer.pc.onnegotiationneeded();
  const [offer] = r.signals();
  assert.match(offer.id, /^pc-/);
  const closes = [];
  peer.on('close', (d) => closes.push(d));
  r.receive({ type: 'error', seq: 2, code: 'unknown-peer', id: offer.id, message: 'No peer p_b in room r.' });
  assert.equal(peer.closed, true);
  assert.deepEqual(closes, [{ by: 'remote', reason: 'unknown-peer' }]);
  const ready = await settled(peer.ready);
  assert.equal(ready.err?.code, 'unknown-peer');
  assert.equal(ready.err.peerId, 'p_b');
  // Another for the same (closed) Peer, e.g. about a candidate: nothing more, and never a room error.
  r.receive({ type: 'error', seq: 3, code: 'unknown-peer', id: 'pc-999', message: 'No peer p_b in room r.' });
  assert.deepEqual(r.events.filter((e) => e.name === 'error'), []);
  // The app's own signal to an unknown peer is still the app's error, with its id.
  const id = r.room.signal('p_x', { hi: 1 });
  r.receive({ type: 'error', seq: 4, code: 'unknown-peer', id, message: 'No peer p_x in room r.' });
  assert.deepEqual(r.events.filter((e) => e.name === 'error').map((e) => [e.code, e.id]), [['unknown-peer', id]]);
  r.room._finish(1000, 'done', true);
});

test('dataChannel: false: ready resolves with the Peer once the connection is connected', async () => {
  const r = fakeRoom();
  r.receive(joined('p_a', ['p_b']));
  const peer = r.room.connect('p_b', { dataChannel: false });
  assert.equal(peer.channel, null);
  assert.deepEqual(await settled(peer.ready, 50), { pending: true });
  peer.pc.reach('connected');
  assert.equal((await settled(peer.ready)).ok, peer);
  r.room._finish(1000, 'done', true);
});

test('send takes a string, Blob, ArrayBuffer or view; anything else throws a TypeError and sends nothing', async () => {
  const r = fakeRoom();
  r.receive(joined('p_a', ['p_b']));
  const peer = r.room.connect('p_b');
  peer.channel.open();
  for (const bad of [42, { a: 1 }, null, undefined, [1, 2], true]) {
    assert.throws(() => peer.send(bad), TypeError, `send(${JSON.stringify(bad)})`);
  }
  assert.deepEqual(peer.channel.sent, []);
  peer.send('text');
  peer.send(new Uint8Array([1, 2, 3]));
  peer.send(new Blob(['blob']));
  peer.send('after');
  await tick();
  const sent = peer.channel.sent.map((d) => (typeof d === 'string' ? d : Buffer.from(d instanceof ArrayBuffer ? d : d.buffer).toString()));
  assert.deepEqual(sent, ['text', '\x01\x02\x03', 'blob', 'after'], 'in the order of the calls');
  r.room._finish(1000, 'done', true);
});

test("connect(): a socket that never opens names the URL and what to check; join-check keeps the URL's path prefix", async () => {
  const realWs = globalThis.WebSocket;
  const realFetch = globalThis.fetch;
  const fetched = [];
  // A socket that closes as a refused or unreachable one does (1006, never open).
  globalThis.WebSocket = class extends EventTarget {
    constructor(url) {
      super();
      this.url = url;
      this.readyState = 0;
      setTimeout(() => {
        this.readyState = 3;
        this.dispatchEvent(Object.assign(new Event('close'), { code: 1006, reason: '' }));
      }, 0);
    }
    send() {}
    close() {}
  };
  try {
    // Nothing answers HTTP either: the join check has no reason to give.
    globalThis.fetch = async (u) => {
      fetched.push(String(u));
      throw new TypeError('fetch failed');
    };
    const options = { room: 'lobby', reconnect: false, leaveOnPageHide: false, reportOutcomes: false };
    const down = await sdk.connect({ ...options, url: 'ws://127.0.0.1:9/ws' }).then(() => null, (e) => e);
    assert.equal(down?.code, 'connect-failed');
    assert.match(down.message, /ws:\/\/127\.0\.0\.1:9\/ws/, 'names the URL');
    assert.match(down.message, /check that the server is running and that the URL is its signaling endpoint/);
    assert.doesNotMatch(down.message, /: $/, 'no dangling colon');
    assert.equal(fetched[0].split('?')[0], 'http://127.0.0.1:9/api/join-check');

    // Behind a reverse proxy under a prefix: the join check is asked under the same prefix, and its reason wins.
    globalThis.fetch = async (u) => {
      fetched.push(String(u));
      return { ok: false, status: 403, json: async () => ({ code: 'token-invalid', message: 'The token is invalid.' }) };
    };
    const refused = await sdk.connect({ ...options, url: 'wss://host.test/traverse/ws' }).then(() => null, (e) => e);
    assert.equal(fetched.at(-1).split('?')[0], 'https://host.test/traverse/api/join-check');
    assert.deepEqual([refused?.code, refused?.status], ['token-invalid', 403]);
  } finally {
    globalThis.WebSocket = realWs;
    globalThis.fetch = realFetch;
  }
});

// ---- a call that connected and then dropped (docs/sdk.md, "Connection outcomes") ----

/** Recovery in milliseconds: a 10 ms grace, restarts that time out after 30 ms, two of them. */
const QUICK_RECOVERY = { graceMs: 10, restartTimeoutMs: 30, restartDelaysMs: [10], maxRestarts: 2 };
const until = async (what, fn, ms = 2000) => {
  const end = Date.now() + ms;
  while (!fn()) {
    if (Date.now() > end) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 5));
  }
};

/** A in a room with B, reporting outcomes, its `Peer` to B connected (and its connected report sent at once). */
async function connectedCall(options = {}) {
  const r = fakeRoom({ reportOutcomes: true, refreshIceServers: false, recovery: QUICK_RECOVERY, ...options });
  r.receive(joined('p_a', ['p_b']));
  const peer = r.room.connect('p_b');
  peer.pc.reach('connected');
  await tick();
  peer._flushOutcome();
  await until('the connected report', () => r.sent.some((m) => m.type === 'outcome'));
  const reports = () => r.sent.filter((m) => m.type === 'outcome').map((m) => ({ about: m.peer, ...m.report }));
  return { ...r, peer, reports };
}

test('a call whose restarts give up is reported dropped once: cause, restarts, how long it was up and broken', async () => {
  const r = await connectedCall();
  const failed = [];
  r.peer.on('recovery-failed', (d) => failed.push(d));
  await new Promise((res) => setTimeout(res, 30));
  r.peer.pc.reach('disconnected');
  await until('recovery to give up', () => failed.length > 0);
  const reports = r.reports();
  assert.deepEqual(reports.map((x) => x.outcome), ['connected', 'dropped']);
  const drop = reports[1];
  assert.equal(drop.about, 'p_b');
  assert.equal(drop.cause, 'ice-disconnected');
  assert.equal(drop.restarts, 2);
  assert.ok(drop.connectedMs >= 25 && drop.connectedMs < 1000, `connectedMs ${drop.connectedMs}`);
  assert.ok(drop.brokenMs >= 60, `brokenMs ${drop.brokenMs}: two restarts of 30 ms`);
  // Each is rounded to the millisecond on its own.
  assert.ok(drop.elapsedMs + 1 >= drop.connectedMs + drop.brokenMs, JSON.stringify(drop));
  // Closing the Peer afterwards reports nothing more.
  r.peer.close();
  assert.equal(r.reports().length, 2);
  r.room._finish(1000, 'done', true);
});

test('the other peer leaving while the call is broken closes the Peer and reports the drop about it', async () => {
  const r = await connectedCall({ recovery: { ...QUICK_RECOVERY, restartTimeoutMs: 5000 } });
  const reconnecting = [];
  r.peer.on('reconnecting', (d) => reconnecting.push(d));
  r.peer.pc.reach('disconnected');
  await until('a restart', () => reconnecting.length > 0);
  r.receive({ type: 'peer-left', seq: 2, peerId: 'p_b', reason: 'lost' });
  assert.equal(r.peer.closed, true);
  const reports = r.reports();
  assert.deepEqual(reports.map((x) => [x.outcome, x.about]), [['connected', 'p_b'], ['dropped', 'p_b']],
    'sent although p_b is no longer in the room');
  assert.equal(reports[1].restarts, 1);
  r.room._finish(1000, 'done', true);
});

test('a break that heals is reported recovered, not dropped, nor is a close after it, nor a call that never connected', async () => {
  const r = await connectedCall();
  const back = [];
  r.peer.on('reconnected', (d) => back.push(d));
  r.peer.pc.reach('disconnected');
  await until('a restart', () => r.peer._recovery.state === 'restarting');
  r.peer.pc.reach('connected');
  await until('reconnected', () => back.length > 0);
  await until('the recovered report', () => r.reports().length === 2);
  const rec = r.reports()[1];
  assert.equal(rec.outcome, 'recovered');
  assert.equal(rec.cause, 'ice-disconnected');
  assert.equal(rec.restarts, 1);
  assert.equal(rec.brokenMs, back[0].durationMs);
  r.peer.close();
  assert.deepEqual(r.reports().map((x) => x.outcome), ['connected', 'recovered']);
  r.room._finish(1000, 'done', true);

  const n = fakeRoom({ reportOutcomes: true, refreshIceServers: false, recovery: { ...QUICK_RECOVERY, restartTimeoutMs: 5000 } });
  n.receive(joined('p_a', ['p_b']));
  const never = n.room.connect('p_b');
  never.pc.reach('disconnected');
  await new Promise((res) => setTimeout(res, 40));
  never.close();
  assert.deepEqual(n.sent.filter((m) => m.type === 'outcome' && m.report.outcome === 'dropped'), []);
  n.room._finish(1000, 'done', true);
});

test('with recovery off, a connection that fails after connecting is a drop (ice-failed, no restart)', async () => {
  const r = await connectedCall({ recovery: false });
  r.peer.pc.reach('failed');
  const drop = r.reports().find((x) => x.outcome === 'dropped');
  assert.equal(drop?.cause, 'ice-failed');
  assert.equal(drop?.restarts, 0);
  r.room._finish(1000, 'done', true);
});

test("the server's diagnosis of a drop is connection-dropped, of a recovery neither dropped nor failed", () => {
  const r = fakeRoom();
  r.receive(joined('p_a', ['p_b']));
  const got = [];
  for (const name of ['connection-diagnosis', 'connection-failed', 'connection-dropped']) {
    r.room.on(name, (d) => got.push([name, d.reason, d.connectedMs]));
  }
  r.receive({ type: 'diagnosis', seq: 2, peer: 'p_b', you: 'A', outcome: 'dropped', reason: 'peer-lost',
    step: 'connection', message: 'The call dropped.', path: 'direct-srflx', connectedMs: 61000 });
  assert.deepEqual(got, [['connection-diagnosis', 'peer-lost', 61000], ['connection-dropped', 'peer-lost', 61000]]);
  r.receive({ type: 'diagnosis', seq: 3, peer: 'p_b', you: 'A', outcome: 'recovered', reason: 'recovered',
    step: 'connection', message: 'The call broke and recovered.', connectedMs: 30000, recoveryMs: 2400,
    cause: 'network-change' });
  assert.deepEqual(got.at(-1), ['connection-diagnosis', 'recovered', 30000]);
  assert.equal(got.length, 3, 'no connection-failed nor connection-dropped');
  r.room._finish(1000, 'done', true);
});

test('a drop while the browser says offline carries offline; navigator.onLine alone does not make it so', async () => {
  const r = await connectedCall({ recovery: { ...QUICK_RECOVERY, restartTimeoutMs: 5000 } });
  r.peer.pc.reach('disconnected');
  await until('a restart', () => r.peer._recovery.state === 'restarting');
  r.peer._recovery.handleNetworkChange('offline');
  r.peer.close();
  const drop = r.reports().find((x) => x.outcome === 'dropped');
  assert.equal(drop?.offline, true, JSON.stringify(drop));
  r.room._finish(1000, 'done', true);

  const q = await connectedCall({ recovery: { ...QUICK_RECOVERY, restartTimeoutMs: 5000 } });
  Object.defineProperty(globalThis, 'navigator', { value: { onLine: false, userAgent: 'test' }, configurable: true });
  try {
    q.peer.pc.reach('disconnected');
    await until('a restart', () => q.peer._recovery.state === 'restarting');
    q.peer.close();
    const d = q.reports().find((x) => x.outcome === 'dropped');
    assert.ok(d && !d.offline, JSON.stringify(d));
  } finally {
    delete globalThis.navigator;
  }
  q.room._finish(1000, 'done', true);
});

test('quality: measured once connected, a quality event only when the grade changes, lost while disconnected', async () => {
  const r = fakeRoom({ recovery: false });
  r.receive(joined('p_a', ['p_b']));
  const peer = r.room.connect('p_b', { qualityIntervalMs: 10 });
  let rttS = 0.02;
  peer.pc.getStats = async () => new Map([
    ['T', { id: 'T', type: 'transport', selectedCandidatePairId: 'CP' }],
    ['CP', { id: 'CP', type: 'candidate-pair', localCandidateId: 'L', remoteCandidateId: 'R', currentRoundTripTime: rttS }],
    ['L', { id: 'L', type: 'local-candidate', candidateType: 'relay' }],
    ['R', { id: 'R', type: 'remote-candidate', candidateType: 'srflx' }],
  ]);
  const grades = [];
  peer.on('quality', (q) => grades.push(q.grade));
  await new Promise((res) => setTimeout(res, 40));
  assert.deepEqual(grades, [], 'nothing before the connection connected');
  assert.equal(peer.quality, null);
  peer.pc.reach('connected');
  await until('a first measurement', () => grades.length === 1);
  assert.deepEqual(peer.quality, { grade: 'good', rttMs: 20, jitterMs: null, lossPercent: null, path: 'relay' });
  await new Promise((res) => setTimeout(res, 40));
  assert.deepEqual(grades, ['good'], 'the same grade again is no event');
  rttS = 0.5;
  await until('bad', () => grades.length === 2);
  peer.pc.reach('disconnected');
  await until('lost', () => grades.length === 3);
  assert.deepEqual(grades, ['good', 'bad', 'lost']);
  peer.close();
  await new Promise((res) => setTimeout(res, 40));
  assert.equal(grades.length, 3, 'no measurement after close');
  r.room._finish(1000, 'done', true);
});
