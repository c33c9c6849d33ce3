// Unit tests of the SDK's calls across a lost session (docs/sdk.md, "Calls that survive": a restarted server) in node:
// a `Room` driven through its session with frames, a fake socket and a fake RTCPeerConnection. After a failed resume
// and a fresh join, the calls stay open, each side tells the room its old ids (`{"rejoin": {"was": [...]}}`), the side
// that recognises one moves its `Peer` to the new id (`peer-rejoined`) and restarts ICE; a call whose peer never shows
// up is closed after the resume grace. In Chromium: tests/browser/rejoin.test.js.
//
//   node --test tests/sdk/
import { test, mock } from 'node:test';
import assert from 'node:assert/strict';
import fs from 'node:fs';

const source = fs.readFileSync(new URL('../../web/sdk/traverse.js', import.meta.url), 'utf8');
const sdk = await import(`data:text/javascript;base64,${Buffer.from(source).toString('base64')}`);

let certificates = 0;
/** A DTLS fingerprint line, one per certificate made. */
const fingerprint = () => `a=fingerprint:sha-256 ${(++certificates).toString(16).padStart(64, '0').match(/../g).join(':')}`;

/**
 * Just enough of RTCPeerConnection for a `Peer`: states, events, a count of restarts, and an offer and answer
 * negotiated (each end's DTLS fingerprint: what a rejoin's proof is made of).
 */
class FakePeerConnection extends EventTarget {
  constructor(config) {
    super();
    this.localDescription = { type: 'offer', sdp: `v=0\r\n${fingerprint()}\r\n` };
    this.remoteDescription = { type: 'answer', sdp: `v=0\r\n${fingerprint()}\r\n` };
    this.config = config;
    this.signalingState = 'stable';
    this.iceConnectionState = 'new';
    this.connectionState = 'new';
    this.restarts = 0;
    this.configured = [];
  }
  createDataChannel() {
    return { readyState: 'connecting', close() {} };
  }
  addTrack() {}
  getConfiguration() {
    return this.config;
  }
  setConfiguration(c) {
    this.config = c;
    this.configured.push(c);
  }
  restartIce() {
    this.restarts++;
  }
  getStats() {
    return Promise.resolve(new Map());
  }
  close() {
    this.connectionState = 'closed';
  }
  /** ICE (and the connection) reach `state`, with their events. */
  reach(state) {
    this.iceConnectionState = state;
    this.dispatchEvent(new Event('iceconnectionstatechange'));
    this.connectionState = state;
    this.dispatchEvent(new Event('connectionstatechange'));
  }
}
globalThis.RTCPeerConnection = FakePeerConnection;

/** A room whose socket is a list: frames in with `receive`, frames out in `sent`. */
function fakeRoom(options = {}) {
  const room = new sdk.Room({ room: 'r', url: 'ws://traverse.test/ws', reportOutcomes: false, ...options });
  const sent = [];
  room._link = {
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
  const receive = (msg) => {
    room._session.handleFrame(JSON.stringify(msg));
    room._drain();
  };
  /** A socket opened for the session's next handshake (a join once the resume failed). */
  const handshake = () => {
    room._session.nextHandshake();
    room._session.handleOpen();
    room._drain();
  };
  const events = [];
  for (const name of ['joined', 'peer-rejoined', 'error']) room.on(name, (d) => events.push({ name, ...d }));
  return { room, sent, receive, handshake, events };
}

const joined = (peerId, peers, iceServers = []) => ({
  type: 'joined', seq: 1, session: `s_${peerId}`, peerId, peers: peers.map((id) => ({ id })), iceServers,
});

const tick = () => new Promise((r) => setImmediate(r));

/** What the other end of `peer`'s call, rejoined as `newId`, says: its old ids, and its proof for this call. */
const rejoinFrom = (peer, newId, was, seq = 2) => ({
  type: 'signal', seq, from: newId, data: { rejoin: { was, proof: [sdk._rejoinProof(peer.pc, newId)] } },
});

test('a restarted server: the call stays, old ids are exchanged, the Peer moves to the new id and restarts ICE (the impolite side: at once)', async () => {
  const { room, sent, receive, handshake, events } = fakeRoom();
  handshake();
  receive(joined('p_a1', ['p_b1']));
  const peer = room.connect('p_b1');
  peer.pc.reach('connected');
  const channel = peer.channel;

  // The server restarted: the resume is refused, the room joins again.
  room._session.handleDisconnect(4201);
  sent.length = 0;
  handshake();
  receive(joined('p_a2', ['p_0b2'], [{ urls: 'turn:h', username: '1:p_a2', credential: 'new' }]));
  assert.equal(peer.closed, false, 'the call is kept');
  assert.equal(room.connections.get('p_b1'), peer, 'still under the old id until the peer says its new one');
  const join = events.find((e) => e.name === 'joined' && e.rejoined);
  assert.equal(join.previousPeerId, 'p_a1');
  const told = sent.filter((m) => m.type === 'signal');
  const proof = sdk._rejoinProof(peer.pc, 'p_a2');
  assert.match(proof, /^[0-9a-f]{32}$/);
  assert.deepEqual(told.map((m) => [m.to, m.data]), [['p_0b2', { rejoin: { was: ['p_a1'], proof: [proof] } }]]);

  // B, rejoined too, says who it was: A's Peer moves to B's new id and restarts with the new credential.
  receive(rejoinFrom(peer, 'p_0b2', ['p_b1']));
  const moved = events.find((e) => e.name === 'peer-rejoined');
  assert.deepEqual([moved.previousPeerId, moved.peerId, moved.peer === peer], ['p_b1', 'p_0b2', true]);
  assert.equal(room.connections.get('p_0b2'), peer);
  assert.equal(room.connections.has('p_b1'), false);
  assert.equal(peer.peerId, 'p_0b2');
  assert.equal(peer.polite, false);
  assert.equal(peer.channel, channel, 'the same data channel');
  await tick();
  // The restart first asks for fresh servers over the socket (a relay node may be gone), then restarts with them.
  assert.equal(sent.filter((m) => m.type === 'ice-servers').length, 1, 'fresh iceServers asked for');
  assert.equal(peer.pc.restarts, 0, 'not before the answer');
  const fresh = [{ urls: 'turn:live', username: '2:p_a2', credential: 'fresher' }];
  receive({ type: 'ice-servers', seq: 2, iceServers: fresh });
  await tick();
  await tick();
  assert.equal(peer.pc.restarts, 1, 'ICE restarted (session-lost)');
  assert.deepEqual(peer.pc.config.iceServers, fresh);
  assert.deepEqual(room.iceServers, fresh);
  assert.equal(sent.filter((m) => m.type === 'signal').length, 1, 'B was told already: no second announcement');
  room._finish(1000, 'done', true);
});

test('the side that rejoined first learns the other\'s old id when it joins later, and answers it', () => {
  const { room, sent, receive, handshake, events } = fakeRoom();
  handshake();
  receive(joined('p_a1', ['p_b1']));
  const peer = room.connect('p_b1');
  peer.pc.reach('connected');
  room._session.handleDisconnect(4201);
  handshake();
  receive(joined('p_a2', [])); // B is not back yet: nobody to tell
  sent.length = 0;
  receive({ type: 'peer-joined', seq: 2, peer: { id: 'p_b2' } });
  const proof = sdk._rejoinProof(peer.pc, 'p_a2');
  assert.deepEqual(sent.filter((m) => m.type === 'signal').map((m) => [m.to, m.data]), [['p_b2', { rejoin: { was: ['p_a1'], proof: [proof] } }]]);
  receive(rejoinFrom(peer, 'p_b2', ['p_b1'], 3));
  assert.equal(events.filter((e) => e.name === 'peer-rejoined').length, 1);
  assert.equal(room.connections.get('p_b2'), peer);
  room._finish(1000, 'done', true);
});

test('a peer that resumed (its id unchanged) is told our old id and moves nothing; rejoinCalls: false closes calls', () => {
  const { room, sent, receive, handshake } = fakeRoom();
  handshake();
  receive(joined('p_b1', ['p_a1']));
  const peer = room.connect('p_a1');
  receive({ type: 'signal', seq: 2, from: 'p_c9', data: { rejoin: { was: ['p_zz'] } } });
  assert.equal(room.connections.get('p_a1'), peer, 'an unknown old id changes nothing');
  assert.equal(sent.filter((m) => m.type === 'signal' && m.data.rejoin).length, 0, 'we did not rejoin: nothing to say');
  room._finish(1000, 'done', true);

  const off = fakeRoom({ rejoinCalls: false });
  off.handshake();
  off.receive(joined('p_a1', ['p_b1']));
  const closing = off.room.connect('p_b1');
  off.room._session.handleDisconnect(4201);
  off.handshake();
  off.receive(joined('p_a2', ['p_b2']));
  assert.equal(closing.closed, true);
  assert.equal(off.room.connections.size, 0);
  assert.equal(off.sent.filter((m) => m.type === 'signal' && m.data.rejoin).length, 0);
  off.room._finish(1000, 'done', true);
});

test('another peer of the room cannot take a call over by claiming its old id', () => {
  const { room, receive, handshake, events } = fakeRoom();
  handshake();
  receive(joined('p_a1', ['p_b1', 'p_c1']));
  const peer = room.connect('p_b1');
  peer.pc.reach('connected');
  // C knew B's old id from the peer list. While the call is live (nobody lost a session), nothing moves it.
  receive(rejoinFrom(peer, 'p_c1', ['p_b1']));
  assert.equal(room.connections.get('p_b1'), peer, 'a live call stays, even with a proof');
  assert.equal(events.filter((e) => e.name === 'peer-rejoined').length, 0);

  // The server restarted: A, B and C all rejoin. C claims B's old id first.
  room._session.handleDisconnect(4201);
  handshake();
  receive(joined('p_a2', ['p_b2', 'p_c2']));
  const claim = (from, was, proof, seq) => receive({ type: 'signal', seq, from, data: { rejoin: { was, proof } } });
  claim('p_c2', ['p_b1'], undefined, 2);
  claim('p_c2', ['p_b1'], ['0'.repeat(32), 42, null, { x: 1 }], 3);
  // A proof B made for its own new id, replayed by C: it names p_b2, not p_c2.
  claim('p_c2', ['p_b1'], [sdk._rejoinProof(peer.pc, 'p_b2')], 4);
  assert.equal(room.connections.get('p_b1'), peer, 'still waiting for B');
  assert.equal(peer.peerId, 'p_b1');
  assert.equal(events.filter((e) => e.name === 'peer-rejoined').length, 0);
  // An old id that is back in the room under its own name is not a rejoin either.
  receive({ type: 'peer-joined', seq: 5, peer: { id: 'p_b1' } });
  receive(rejoinFrom(peer, 'p_c2', ['p_b1'], 6));
  assert.equal(room.connections.get('p_b1'), peer);
  receive({ type: 'peer-left', seq: 7, peerId: 'p_b1' });
  assert.equal(peer.closed, true, 'that peer left: its call is over');

  // With a second call, B's real claim moves it.
  const second = fakeRoom();
  second.handshake();
  second.receive(joined('p_a1', ['p_b1']));
  const call = second.room.connect('p_b1');
  second.room._session.handleDisconnect(4201);
  second.handshake();
  second.receive(joined('p_a2', ['p_b2', 'p_c2']));
  second.receive({ type: 'signal', seq: 2, from: 'p_c2', data: { rejoin: { was: ['p_b1'], proof: [] } } });
  assert.equal(call.peerId, 'p_b1');
  second.receive(rejoinFrom(call, 'p_b2', ['p_b1'], 3));
  assert.equal(call.peerId, 'p_b2');
  assert.equal(second.room.connections.get('p_b2'), call);
  room._finish(1000, 'done', true);
  second.room._finish(1000, 'done', true);
});

test('a call whose peer never says its new id is closed after the resume grace', () => {
  mock.timers.enable({ apis: ['setTimeout'] });
  try {
    const { room, receive, handshake } = fakeRoom();
    handshake();
    receive(joined('p_a1', ['p_b1']));
    const peer = room.connect('p_b1');
    room._session.handleDisconnect(4201);
    handshake();
    receive({ ...joined('p_a2', []), resumeGraceMs: 30000 });
    mock.timers.tick(29999);
    assert.equal(peer.closed, false);
    mock.timers.tick(1);
    assert.equal(peer.closed, true);
    assert.equal(room.connections.size, 0);
    room._finish(1000, 'done', true);
  } finally {
    mock.timers.reset();
  }
});

test('a peer lost to the room: a connected call waits while its media flows and moves to the new id on the proof', () => {
  mock.timers.enable({ apis: ['setTimeout'] });
  try {
    const { room, receive, handshake, events } = fakeRoom();
    handshake();
    receive({ ...joined('p_a1', ['p_b1', 'p_c1', 'p_d1']), resumeGraceMs: 30000 });
    const peer = room.connect('p_b1');
    peer.pc.reach('connected');
    const notUp = room.connect('p_c1');
    const left = room.connect('p_d1');
    left.pc.reach('connected');
    const seen = [];
    room.on('peer-left', (d) => seen.push(d));
    receive({ type: 'peer-left', seq: 2, peerId: 'p_b1', reason: 'lost' });
    receive({ type: 'peer-left', seq: 3, peerId: 'p_c1', reason: 'lost' });
    receive({ type: 'peer-left', seq: 4, peerId: 'p_d1', reason: 'left' });
    assert.deepEqual(seen.map((d) => [d.peerId, d.reason]), [['p_b1', 'lost'], ['p_c1', 'lost'], ['p_d1', 'left']]);
    assert.equal(peer.closed, false, 'connected, lost: kept');
    assert.equal(notUp.closed, true, 'not connected: closed');
    assert.equal(left.closed, true, 'left: closed, as before');
    // Long after the grace it is still there while ICE stays connected.
    mock.timers.tick(95000);
    assert.equal(peer.closed, false);
    // B comes back under a new id and proves it: the call moves.
    receive({ type: 'peer-joined', seq: 5, peer: { id: 'p_b2' } });
    receive(rejoinFrom(peer, 'p_b2', ['p_b1'], 6));
    assert.deepEqual(events.filter((e) => e.name === 'peer-rejoined').map((e) => [e.previousPeerId, e.peerId]), [['p_b1', 'p_b2']]);
    assert.equal(room.connections.get('p_b2'), peer);
    mock.timers.tick(60000);
    assert.equal(peer.closed, false, 'rebound: no longer waiting');
    // Another lost peer whose ICE then stops: closed at the next check.
    const other = room.connect('p_b2');
    assert.equal(other, peer);
    receive({ type: 'peer-left', seq: 7, peerId: 'p_b2', reason: 'lost' });
    peer.pc.reach('disconnected');
    mock.timers.tick(30000);
    assert.equal(peer.closed, true, 'media stopped while waiting: closed');
    room._finish(1000, 'done', true);
  } finally {
    mock.timers.reset();
  }
});

test('the lost side joins again, finds its peer under the same id and carries the call on at once, with the proof', () => {
  const { room, sent, receive, handshake } = fakeRoom();
  handshake();
  receive(joined('p_b1', ['p_a1']));
  const peer = room.connect('p_a1');
  peer.pc.reach('connected');
  // Our signaling was cut past the grace: the resume is refused; A kept its session and its id.
  room._session.handleDisconnect(4201);
  sent.length = 0;
  handshake();
  receive(joined('p_b2', ['p_a1']));
  assert.equal(peer.closed, false);
  assert.equal(peer._orphaned, false, 'carried on at once');
  assert.equal(room.connections.get('p_a1'), peer);
  const proof = sdk._rejoinProof(peer.pc, 'p_b2');
  assert.deepEqual(
    sent.filter((m) => m.type === 'signal').map((m) => [m.to, m.data]),
    [['p_a1', { rejoin: { was: ['p_b1'], proof: [proof] } }]],
    'A is told our old id, with the proof, before anything else of ours',
  );
  room._finish(1000, 'done', true);
});

test('long calls: a fresh credential is fetched before the expiry and put into every peer connection', async () => {
  mock.timers.enable({ apis: ['setTimeout', 'Date'], now: 1_764_070_000_000 });
  try {
    const fresh = [{ urls: 'turn:h', username: '1764070200:p_a1', credential: 'fresh' }];
    let calls = 0;
    let fail = 2;
    const { room, receive, handshake, events } = fakeRoom({
      refreshIceServers: async () => {
        calls++;
        if (fail-- > 0) throw new Error('refused');
        return fresh;
      },
    });
    const refreshed = [];
    room.on('ice-servers', (d) => refreshed.push(d));
    handshake();
    receive(joined('p_a1', ['p_b1'], [{ urls: 'turn:h', username: '1764070060:p_a1', credential: 'old' }]));
    const peer = room.connect('p_b1');
    mock.timers.tick(44999);
    assert.equal(calls, 0);
    mock.timers.tick(1); // 45 s: a quarter of the 60 s before the expiry
    await tick();
    assert.equal(calls, 1);
    assert.equal(events.filter((e) => e.name === 'error' && e.code === 'ice-refresh-failed').length, 1);
    mock.timers.tick(30000); // retried after 30 s…
    await tick();
    assert.equal(calls, 2);
    mock.timers.tick(59999); // …then after 60 s
    await tick();
    assert.equal(calls, 2);
    mock.timers.tick(1);
    await tick();
    assert.equal(calls, 3);
    assert.deepEqual(room.iceServers, fresh);
    assert.deepEqual(peer.pc.config.iceServers, fresh, 'setConfiguration with the fresh servers');
    assert.deepEqual(refreshed.map((d) => d.expiresAt), [1764070200]);
    room._finish(1000, 'done', true);
  } finally {
    mock.timers.reset();
  }
});

test('fresh iceServers over the signaling socket: scheduled before the expiry, and HTTP only for an older server', async () => {
  mock.timers.enable({ apis: ['setTimeout', 'Date'], now: 1_764_070_000_000 });
  const realFetch = globalThis.fetch;
  const fetched = [];
  globalThis.fetch = async (url) => {
    fetched.push(String(url));
    return { ok: true, json: async () => ({ iceServers: [{ urls: 'turn:http', username: '1764070400:p_a1', credential: 'h' }] }) };
  };
  try {
    const { room, sent, receive, handshake } = fakeRoom({ token: 'expired-join-token' });
    const refreshed = [];
    room.on('ice-servers', (d) => refreshed.push(d));
    handshake();
    receive(joined('p_a1', ['p_b1'], [{ urls: 'turn:h', username: '1764070060:p_a1', credential: 'old' }]));
    const peer = room.connect('p_b1');
    sent.length = 0;
    mock.timers.tick(45000); // a quarter of the 60 s before the expiry
    await tick();
    assert.deepEqual(sent.map((m) => m.type), ['ice-servers'], 'asked over the socket, not over HTTP');
    const fresh = [{ urls: 'turn:h', username: '1764070200:p_a1', credential: 'fresh' }];
    receive({ type: 'ice-servers', seq: 1, iceServers: fresh });
    await tick();
    assert.deepEqual(room.iceServers, fresh);
    assert.deepEqual(peer.pc.config.iceServers, fresh);
    assert.deepEqual(refreshed.map((d) => d.expiresAt), [1764070200]);
    assert.equal(fetched.length, 0);

    // An older server does not know the message: it answers unknown-type, and HTTP takes over from then on.
    sent.length = 0;
    mock.timers.tick(150000); // 1764070200 - 1764070045 = 155 s left: refreshed 38.75 s before, ~116 s from now
    await tick();
    assert.deepEqual(sent.map((m) => m.type), ['ice-servers']);
    receive({ type: 'error', seq: 2, code: 'unknown-type', message: 'Unknown message type `ice-servers`.' });
    for (let i = 0; i < 5; i++) await tick();
    assert.equal(fetched.length, 1);
    assert.match(fetched[0], /\/api\/ice-servers\?token=expired-join-token$/);
    assert.equal(room.iceServers[0].urls, 'turn:http');
    room._finish(1000, 'done', true);
  } finally {
    globalThis.fetch = realFetch;
    mock.timers.reset();
  }
});

test('reconnect delays: a server that cannot be reached is probed every 0.25-1 s (jittered) for 30 s, then backed off', () => {
  const opts = { reconnectDelaysMs: [...sdk.RECONNECT_DELAYS_MS] };
  const low = () => 0;
  const high = () => 0.999999;
  // The first attempt at once, then 250 ms more each time up to 1 s; each drawn in [half, all] of that.
  const fast = [0, 1, 2, 3, 4, 5, 20].map((n) => [sdk._reconnectDelay(n, 1006, 1000, opts, low), sdk._reconnectDelay(n, 1006, 1000, opts, high)]);
  assert.deepEqual(fast, [[0, 0], [125, 250], [250, 500], [375, 750], [500, 1000], [500, 1000], [500, 1000]]);
  // 4202 (a stopping server) the same; 4201 (join again: the server answered) at once.
  assert.equal(sdk._reconnectDelay(3, 4202, 1000, opts, high), 750);
  assert.equal(sdk._reconnectDelay(7, 4201, 1000, opts, high), 0);
  // After 30 s of outage: the long schedule from where the count stands (7 s, ±20 %).
  assert.equal(sdk._reconnectDelay(40, 1006, 30000, opts, () => 0.5), 7000);
  assert.equal(sdk._reconnectDelay(2, 1006, 30000, opts, () => 0.5), 1200);
  // 41xx (a limit: back off) skip the immediate retry, as before.
  assert.equal(sdk._reconnectDelay(0, 4101, 0, opts, () => 0.5), 300);
  assert.equal(sdk._reconnectDelay(1, 4100, 0, opts, () => 0.5), 1200);
  // fastReconnect: false keeps the long schedule only; a custom one is capped where it says.
  assert.equal(sdk._reconnectDelay(2, 1006, 0, { ...opts, fastReconnect: false }, () => 0.5), 1200);
  assert.equal(sdk._reconnectDelay(9, 1006, 0, { ...opts, fastReconnect: { maxMs: 400 } }, high), 400);
  // Whatever the draw, never more than maxMs while fast: a restarted server is found within 1 s of answering.
  for (let n = 0; n < 200; n++) assert.ok(sdk._reconnectDelay(n, 1006, n * 100, opts, Math.random) <= 1000);
});

test('resumed through another node (the one in use was lost): connected calls restart at once with its servers', async () => {
  const { room, sent, receive, handshake } = fakeRoom({ url: ['ws://node1.test/ws', 'ws://node2.test/ws'] });
  handshake();
  receive(joined('p_a1', ['p_b1']));
  const peer = room.connect('p_b1');
  peer.pc.reach('connected');
  const causes = [];
  peer.on('reconnecting', (d) => causes.push(d.cause));
  // The same node again (a blip): nothing to restart.
  room._session.handleDisconnect(1006);
  handshake();
  receive({ type: 'resumed', seq: 1, peerId: 'p_a1', replayed: 0, ack: 0 });
  await tick();
  assert.deepEqual(causes, []);
  // Node 1 is gone: the session resumes through node 2, and the call restarts now (its relay may have been on node 1).
  room._session.handleDisconnect(1006);
  room._link.url = 'ws://node2.test/ws';
  handshake();
  sent.length = 0;
  receive({ type: 'resumed', seq: 1, peerId: 'p_a1', replayed: 0, ack: 0 });
  assert.deepEqual(causes, ['node-lost']);
  await tick();
  assert.deepEqual(sent.map((m) => m.type), ['ice-servers'], 'fresh servers from node 2 first');
  receive({ type: 'ice-servers', seq: 1, iceServers: [{ urls: 'turn:node2.test', username: '9:p_a1', credential: 'c' }] });
  await tick();
  await tick();
  assert.equal(peer.pc.restarts, 1);
  assert.equal(peer.pc.config.iceServers[0].urls, 'turn:node2.test');
  room._finish(1000, 'done', true);
});

test('after a rejoin the polite side leaves the restart to the other, and restarts only if that has not connected', async () => {
  mock.timers.enable({ apis: ['setTimeout'] });
  try {
    const setup = (rttMs = null) => {
      const { room, sent, receive, handshake } = fakeRoom();
      handshake();
      receive(joined('p_a1', ['p_b1']));
      const peer = room.connect('p_b1');
      peer.pc.reach('connected');
      if (rttMs !== null) peer.quality = { grade: 'bad', rttMs, jitterMs: 1, lossPercent: 0, path: null };
      room._session.handleDisconnect(4201);
      handshake();
      receive(joined('p_a2', ['p_b2'], [{ urls: 'turn:new', username: '1:p_a2', credential: 'new' }]));
      receive(rejoinFrom(peer, 'p_b2', ['p_b1']));
      return { room, sent, receive, peer };
    };
    // The other side's restart connects in time: nothing to do, nothing said.
    const one = setup();
    assert.equal(one.peer.polite, true);
    assert.equal(one.peer.pc.config.iceServers[0].urls, 'turn:new', 'the new credential in place for the answer');
    const events = [];
    one.peer.on('reconnecting', (d) => events.push(d.cause));
    mock.timers.tick(1000);
    one.peer.pc.reach('connected');
    mock.timers.tick(5000);
    await tick();
    assert.equal(one.peer.pc.restarts, 0);
    assert.deepEqual(events, []);
    one.room._finish(1000, 'done', true);

    /** The other side's restart does not connect: this side restarts itself after `waitMs`, not a moment before. */
    const restartsAfter = (rttMs, waitMs) => {
      const { room, peer } = setup(rttMs);
      const causes = [];
      peer.on('reconnecting', (d) => causes.push(d.cause));
      mock.timers.tick(waitMs - 1);
      assert.deepEqual(causes, [], `not before ${waitMs} ms (round trip ${rttMs} ms)`);
      mock.timers.tick(1);
      assert.deepEqual(causes, ['session-lost']);
      room._finish(1000, 'done', true);
    };
    // Nothing measured: after 1.5 s.
    restartsAfter(null, 1500);
    // Over a satellite link (600 ms round trips) the other side's restart takes about 2 s: four round trips more.
    restartsAfter(600, 3900);
    // However long the round trip, the wait stays within the restart's own 10 s timeout: 1.5 + 6 s at most.
    restartsAfter(5000, 7500);
  } finally {
    mock.timers.reset();
  }
});
