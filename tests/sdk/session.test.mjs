// Unit tests of the SDK's session protocol (`_Session` in web/sdk/traverse.js) in node, without a browser or a
// socket: frames in, frames and events out. The socket plumbing and the public API are tested in Chromium
// (tests/browser).
//
//   node --test tests/sdk/
import { test } from 'node:test';
import assert from 'node:assert/strict';
import fs from 'node:fs';

// The SDK is a browser ES module in a folder without package.json: load it from source as a module.
const source = fs.readFileSync(new URL('../../web/sdk/traverse.js', import.meta.url), 'utf8');
const sdk = await import(`data:text/javascript;base64,${Buffer.from(source).toString('base64')}`);
const Session = sdk._Session;

/** Every frame the session wants written at `now` (ms), parsed. */
function transmits(s, now = 0) {
  const out = [];
  for (let f = s.pollTransmit(now); f !== undefined; f = s.pollTransmit(now)) out.push(JSON.parse(f));
  return out;
}

function events(s) {
  const out = [];
  for (let e = s.pollEvent(); e !== undefined; e = s.pollEvent()) out.push(e);
  return out;
}

const stats = () => ({ resumes: 0, rejoins: 0, duplicates: 0, gaps: 0, queued: 0, resent: 0 });

const joined = (over = {}) => JSON.stringify({ type: 'joined', seq: 1, session: 's_1', peerId: 'p_b', peers: [], ...over });

/** A session joined as `s_1` (stream at seq 1), output drained. */
function joinedSession(config = {}) {
  const s = new Session({ room: 'r', ...config }, stats());
  assert.equal(s.nextHandshake(), 'join');
  s.handleOpen();
  s.handleFrame(joined());
  transmits(s);
  events(s);
  return s;
}

/** Drop the socket with `code` and open the next one: returns the handshake frame. */
function reconnect(s, code = 1006) {
  s.handleDisconnect(code);
  const kind = s.nextHandshake();
  s.handleOpen();
  const [frame] = transmits(s);
  assert.equal(frame.type, kind);
  return frame;
}

test('join: the join frame carries room, token and meta; joined makes the session usable', () => {
  const s = new Session({ room: 'r', token: 'tok', meta: { name: 'B' } }, stats());
  assert.equal(s.nextHandshake(), 'join');
  s.handleOpen();
  assert.deepEqual(transmits(s), [{ type: 'join', room: 'r', token: 'tok', meta: { name: 'B' } }]);
  assert.equal(s.usable, false);
  s.handleFrame(joined());
  const [e] = events(s);
  assert.equal(e.type, 'joined');
  assert.equal(e.rejoined, false);
  assert.deepEqual(e.lost, []);
  assert.equal(s.usable, true);
  assert.equal(s.id, 's_1');
  assert.equal(s.lastSeq, 1);
});

test('send before joined is queued, then numbered from 1 and flushed in order on joined', () => {
  const s = new Session({ room: 'r' }, stats());
  s.nextHandshake();
  s.handleOpen();
  transmits(s);
  s.send({ type: 'signal', to: 'p_a', data: 1, id: 'm-1' }, false, true);
  s.send({ type: 'broadcast', data: 2 }, false, true);
  assert.deepEqual(transmits(s), [], 'nothing goes out before the handshake');
  assert.equal(s.stats.queued, 2);
  s.handleFrame(joined());
  assert.deepEqual(transmits(s), [
    { type: 'signal', to: 'p_a', data: 1, id: 'm-1', seq: 1 },
    { type: 'broadcast', data: 2, seq: 2 },
  ]);
  assert.equal(s.unacknowledged, 2);
});

test('a socket that is not writable: the message is queued (counted), numbered when the driver next polls', () => {
  const s = joinedSession();
  s.send({ type: 'broadcast', data: 'x' }, false, false);
  assert.equal(s.stats.queued, 1);
  assert.equal(s.unacknowledged, 0, 'not numbered while it waits');
  // The driver polls only while its socket is writable.
  assert.deepEqual(transmits(s), [{ type: 'broadcast', data: 'x', seq: 1 }]);
});

test('stream: duplicates dropped, a gap breaks the socket (not processed, not acknowledged), the resume replays it', () => {
  const s = joinedSession();
  s.handleFrame(JSON.stringify({ type: 'signal', seq: 2, from: 'p_a', data: 'a' }));
  s.handleFrame(JSON.stringify({ type: 'signal', seq: 2, from: 'p_a', data: 'a' }));
  s.handleFrame(JSON.stringify({ type: 'broadcast', seq: 5, from: 'p_a', data: 'b' }));
  s.handleFrame(JSON.stringify({ type: 'broadcast', seq: 6, from: 'p_a', data: 'c' })); // same socket: not read
  const evs = events(s);
  assert.deepEqual(evs.map((e) => e.type), ['message', 'gap']);
  assert.equal(evs[0].msg.data, 'a');
  assert.deepEqual(evs[1].detail, {
    code: 'sequence-gap', message: 'stream jumped from seq 2 to 5: resuming from 2', expected: 3, got: 5, inARow: 1,
  });
  assert.equal(s.stats.duplicates, 1);
  assert.equal(s.stats.gaps, 1);
  assert.equal(s.lastSeq, 2);
  assert.equal(s.usable, false, 'messages wait for the resume');
  assert.deepEqual(JSON.parse(s.pingFrame()), { type: 'ping', ack: 2 });
  s.send({ type: 'broadcast', data: 'later' }, false, true);
  assert.deepEqual(transmits(s), []);

  // The resume replays what was skipped, in order.
  assert.deepEqual(reconnect(s, 4200), { type: 'resume', session: 's_1', lastSeq: 2 });
  s.handleFrame(JSON.stringify({ type: 'resumed', seq: 6, peerId: 'p_b', replayed: 4, ack: 0 }));
  for (const [seq, data] of [[3, 'x'], [4, 'y'], [5, 'b'], [6, 'c']]) {
    s.handleFrame(JSON.stringify({ type: 'broadcast', seq, from: 'p_a', data }));
  }
  assert.deepEqual(events(s).map((e) => (e.type === 'message' ? e.msg.data : e.type)), ['resumed', 'x', 'y', 'b', 'c']);
  assert.equal(s.lastSeq, 6);
  assert.deepEqual(transmits(s), [{ type: 'broadcast', data: 'later', seq: 1 }]);
});

test('gaps in a row: counted until the stream gets past the seq that revealed the last one', () => {
  const s = joinedSession();
  const frame = (seq) => JSON.stringify({ type: 'broadcast', seq, from: 'p_a', data: seq });
  const resume = () => {
    reconnect(s, 4200);
    s.handleFrame(JSON.stringify({ type: 'resumed', seq: 9, peerId: 'p_b', replayed: 0, ack: 0 }));
    events(s);
  };
  s.handleFrame(frame(2));
  s.handleFrame(frame(4));
  assert.deepEqual(events(s).map((e) => [e.type, e.detail?.inARow]), [['message', undefined], ['gap', 1]]);
  resume();
  s.handleFrame(frame(3)); // progress, but not yet past 4
  s.handleFrame(frame(5));
  assert.deepEqual(events(s).map((e) => [e.type, e.detail?.inARow]), [['message', undefined], ['gap', 2]]);
  resume();
  s.handleFrame(frame(4));
  s.handleFrame(frame(5)); // past it
  events(s);
  s.handleFrame(frame(7));
  assert.equal(events(s)[0].detail.inARow, 1, 'a new gap starts a new count');
});

test('messages without seq (pong, unknown types) are not part of the stream', () => {
  const s = joinedSession();
  s.handleFrame(JSON.stringify({ type: 'future-thing', x: 1 }));
  s.handleFrame(JSON.stringify({ type: 'pong' }));
  assert.deepEqual(events(s).map((e) => e.msg.type), ['future-thing']);
  assert.equal(s.lastSeq, 1);
});

test('a frame that is not JSON is an error event, nothing else', () => {
  const s = joinedSession();
  s.handleFrame('{nope');
  assert.deepEqual(events(s), [{ type: 'error', detail: { code: 'bad-json', message: 'the server sent a frame that is not JSON' } }]);
  assert.equal(s.lastSeq, 1);
});

test('pong ack trims the unacknowledged list', () => {
  const s = joinedSession();
  for (let i = 0; i < 3; i++) s.send({ type: 'broadcast', data: i }, false, true);
  transmits(s);
  assert.equal(s.unacknowledged, 3);
  s.handleFrame(JSON.stringify({ type: 'pong', ack: 2 }));
  assert.equal(s.unacknowledged, 1);
  s.handleFrame(JSON.stringify({ type: 'pong', ack: 3 }));
  assert.equal(s.unacknowledged, 0);
});

test('resume: presents session and lastSeq; replay deduplicated; unacknowledged resent before the queue', () => {
  const s = joinedSession();
  s.handleFrame(JSON.stringify({ type: 'signal', seq: 2, from: 'p_a', data: 'a' }));
  events(s);
  for (let i = 1; i <= 3; i++) s.send({ type: 'signal', to: 'p_a', data: i, id: `m-${i}` }, false, true);
  transmits(s); // written into a socket that dies: the server handles only seq 1
  assert.deepEqual(reconnect(s), { type: 'resume', session: 's_1', lastSeq: 2 });
  s.send({ type: 'broadcast', data: 'queued' }, false, true);
  assert.deepEqual(transmits(s), [], 'queued until resumed');
  s.handleFrame(JSON.stringify({ type: 'resumed', seq: 3, peerId: 'p_b', replayed: 1, ack: 1 }));
  s.handleFrame(JSON.stringify({ type: 'signal', seq: 2, from: 'p_a', data: 'a' })); // replayed duplicate
  s.handleFrame(JSON.stringify({ type: 'signal', seq: 3, from: 'p_a', data: 'b' }));
  assert.deepEqual(
    transmits(s).map((m) => [m.type, m.seq, m.data]),
    [['signal', 2, 2], ['signal', 3, 3], ['broadcast', 4, 'queued']],
    'resent with their numbers, then the queue numbered after them',
  );
  assert.deepEqual(events(s).map((e) => (e.type === 'message' ? e.msg.data : e.type)), ['resumed', 'b']);
  assert.deepEqual({ resumes: s.stats.resumes, resent: s.stats.resent, duplicates: s.stats.duplicates }, { resumes: 1, resent: 2, duplicates: 1 });
  assert.equal(s.id, 's_1');
});

test('resumed without ack (a server without client seq): nothing resent', () => {
  const s = joinedSession();
  s.send({ type: 'broadcast', data: 1 }, false, true);
  transmits(s);
  reconnect(s);
  s.handleFrame(JSON.stringify({ type: 'resumed', seq: 1, peerId: 'p_b', replayed: 0 }));
  assert.deepEqual(transmits(s), []);
  assert.equal(s.unacknowledged, 0);
});

test('failed resume: the error is a handshake answer, 4201 leads to a fresh join, unacknowledged reported lost', () => {
  const s = joinedSession();
  s.send({ type: 'signal', to: 'p_a', data: 'app', id: 'm-1' }, false, true);
  s.send({ type: 'signal', to: 'p_a', data: { candidate: {} }, id: 'pc-1' }, true, true);
  transmits(s);
  reconnect(s);
  s.send({ type: 'broadcast', data: 'queued-app' }, false, true);
  s.send({ type: 'signal', to: 'p_a', data: { sdp: {} }, id: 'pc-2' }, true, true);
  s.handleFrame(JSON.stringify({ type: 'error', seq: 9, code: 'resume-failed', message: 'unknown session' }));
  const [err] = events(s);
  assert.equal(err.type, 'message');
  assert.equal(err.handshake, 'resume');
  assert.equal(s.lastSeq, 1, 'an error answering the handshake is not a stream message');
  // The server closes with 4201; the next socket joins afresh, saying it had a session (its calls may go on: the
  // server takes their drop reports on a negotiation since). A first join says nothing of the kind (above).
  assert.deepEqual(reconnect(s, 4201), { type: 'join', room: 'r', rejoin: true });
  s.handleFrame(joined({ session: 's_2', peerId: 'p_c', seq: 1 }));
  assert.deepEqual(
    transmits(s),
    [{ type: 'broadcast', data: 'queued-app', seq: 1 }],
    "the app's queued message goes out in the new session, numbered from 1; the SDK's negotiation is dropped",
  );
  const [j] = events(s);
  assert.equal(j.type, 'joined');
  assert.equal(j.rejoined, true);
  assert.deepEqual(j.lost, [{ type: 'signal', to: 'p_a', data: 'app', id: 'm-1', seq: 1 }], 'only the app message');
  assert.equal(s.id, 's_2');
  assert.equal(s.stats.rejoins, 1);
});

test('with rejoinCalls off, the join after a failed resume does not say rejoin (its calls are closed)', () => {
  const s = joinedSession({ rejoinCalls: false });
  assert.deepEqual(reconnect(s, 4201), { type: 'join', room: 'r' });
});

test('resume-failed alone (without 4201) is enough to join afresh on the next socket', () => {
  const s = joinedSession();
  reconnect(s);
  s.handleFrame(JSON.stringify({ type: 'error', code: 'resume-failed', message: 'x' }));
  events(s);
  assert.equal(reconnect(s, 1006).type, 'join');
});

test('an error answering a join is handed over with handshake "join"', () => {
  const s = new Session({ room: 'r' }, stats());
  s.nextHandshake();
  s.handleOpen();
  s.handleFrame(JSON.stringify({ type: 'error', seq: 1, code: 'room-full', message: 'full' }));
  const [e] = events(s);
  assert.deepEqual({ type: e.type, handshake: e.handshake, code: e.msg.code }, { type: 'message', handshake: 'join', code: 'room-full' });
  assert.equal(s.usable, false);
});

test('queue-full: queued plus unacknowledged are bounded by maxQueue; half of it asks for an ack at once', () => {
  const s = joinedSession({ maxQueue: 4 });
  s.send({ type: 'broadcast', data: 1 }, false, true);
  assert.deepEqual(transmits(s).map((m) => m.type), ['broadcast']);
  s.send({ type: 'broadcast', data: 2 }, false, true);
  assert.deepEqual(transmits(s), [{ type: 'broadcast', data: 2, seq: 2 }, { type: 'ping', ack: 1 }], 'early ack asked');
  s.send({ type: 'broadcast', data: 3 }, false, true);
  assert.deepEqual(transmits(s).map((m) => m.type), ['broadcast'], 'asked once until the pong');
  s.send({ type: 'broadcast', data: 4 }, false, false);
  s.send({ type: 'signal', to: 'p_a', data: 5, id: 'm-5' }, false, true);
  const [e] = events(s);
  assert.equal(e.type, 'error');
  assert.equal(e.detail.code, 'queue-full');
  assert.equal(e.detail.id, 'm-5');
  assert.deepEqual(transmits(s).map((m) => m.data), [4], 'the queued one, not the refused one');
  s.handleFrame(JSON.stringify({ type: 'pong', ack: 4 }));
  assert.equal(s.unacknowledged, 0);
  s.send({ type: 'broadcast', data: 6 }, false, true);
  assert.deepEqual(transmits(s).map((m) => m.seq), [5], 'room again');
});

test('too-large: a message beyond maxMessageBytes throws and is neither queued nor sent', () => {
  const s = joinedSession({ maxMessageBytes: 100 });
  assert.throws(() => s.send({ type: 'broadcast', data: 'é'.repeat(60) }, false, true), (err) => err.code === 'too-large');
  assert.deepEqual(transmits(s), []);
  assert.equal(s.unacknowledged, 0);
});

test('a fresh join resets the stream: lastSeq starts over at the new session', () => {
  const s = joinedSession();
  s.handleFrame(JSON.stringify({ type: 'signal', seq: 2, from: 'p_a', data: 'a' }));
  events(s);
  reconnect(s, 4201);
  s.handleFrame(joined({ session: 's_2', seq: 1 }));
  assert.equal(events(s)[0].type, 'joined', 'seq 1 of a new session is not a duplicate');
  assert.equal(s.lastSeq, 1);
  assert.deepEqual(JSON.parse(s.leaveFrame()), { type: 'leave' });
});

test('leaving: the margin lets 8 more out when there is no time to wait; takeWaiting empties resends and the queue, in order', () => {
  const s = joinedSession();
  for (let i = 1; i <= 100; i++) s.send({ type: 'signal', to: 'p_a', data: i, id: `m-${i}` }, false, true);
  assert.equal(transmits(s).length, 89, 'the burst less the margin, less the join');
  assert.equal(s.waiting, 11);
  const margin = [];
  for (let f = s.pollTransmit(0, true); f !== undefined; f = s.pollTransmit(0, true)) margin.push(JSON.parse(f).data);
  assert.deepEqual(margin, [90, 91, 92, 93, 94, 95, 96, 97], 'the margin less two tokens (`leave`, one spare)');
  assert.deepEqual(s.takeWaiting().map((m) => m.msg.data), [98, 99, 100]);
  assert.equal(s.waiting, 0);
  assert.equal(s.nextTransmitDelay(0), null);
  assert.equal(s.unacknowledged, 97, 'what was written stays unacknowledged');

  // After a resume: the messages to resend (the server has not handled them) come first, and leave the
  // unacknowledged list with the queue.
  const r = joinedSession();
  for (let i = 1; i <= 3; i++) r.send({ type: 'signal', to: 'p_a', data: i, id: `m-${i}` }, false, true);
  transmits(r);
  reconnect(r);
  r.send({ type: 'broadcast', data: 'queued' }, false, true);
  r.handleFrame(JSON.stringify({ type: 'resumed', seq: 1, peerId: 'p_b', replayed: 0, ack: 1 }));
  assert.equal(r.waiting, 3);
  assert.deepEqual(r.takeWaiting().map((m) => [m.msg.type, m.msg.seq, m.msg.data]), [
    ['signal', 2, 2],
    ['signal', 3, 3],
    ['broadcast', undefined, 'queued'],
  ]);
  assert.equal(r.unacknowledged, 0);
  assert.deepEqual(transmits(r), []);
});
