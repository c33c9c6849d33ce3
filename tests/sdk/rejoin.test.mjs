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

/** Just enough of RTCPeerConnection for a `Peer`: states, events, and a count of restarts. */
class FakePeerConnection extends EventTarget {
  constructor(config) {
    super();
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

test('a restarted server: the call stays, old ids are exchanged, the Peer moves to the new id and restarts ICE', async () => {
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
  receive(joined('p_a2', ['p_b2'], [{ urls: 'turn:h', username: '1:p_a2', credential: 'new' }]));
  assert.equal(peer.closed, false, 'the call is kept');
  assert.equal(room.connections.get('p_b1'), peer, 'still under the old id until the peer says its new one');
  const join = events.find((e) => e.name === 'joined' && e.rejoined);
  assert.equal(join.previousPeerId, 'p_a1');
  const told = sent.filter((m) => m.type === 'signal');
  assert.deepEqual(told.map((m) => [m.to, m.data]), [['p_b2', { rejoin: { was: ['p_a1'] } }]]);

  // B, rejoined too, says who it was: A's Peer moves to B's new id and restarts with the new credential.
  receive({ type: 'signal', seq: 2, from: 'p_b2', data: { rejoin: { was: ['p_b1'] } } });
  const moved = events.find((e) => e.name === 'peer-rejoined');
  assert.deepEqual([moved.previousPeerId, moved.peerId, moved.peer === peer], ['p_b1', 'p_b2', true]);
  assert.equal(room.connections.get('p_b2'), peer);
  assert.equal(room.connections.has('p_b1'), false);
  assert.equal(peer.peerId, 'p_b2');
  assert.equal(peer.polite, 'p_a2' < 'p_b2');
  assert.equal(peer.channel, channel, 'the same data channel');
  await tick();
  assert.equal(peer.pc.restarts, 1, 'ICE restarted (session-lost)');
  assert.deepEqual(peer.pc.config.iceServers, [{ urls: 'turn:h', username: '1:p_a2', credential: 'new' }]);
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
  assert.deepEqual(sent.filter((m) => m.type === 'signal').map((m) => [m.to, m.data]), [['p_b2', { rejoin: { was: ['p_a1'] } }]]);
  receive({ type: 'signal', seq: 3, from: 'p_b2', data: { rejoin: { was: ['p_b1'] } } });
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
