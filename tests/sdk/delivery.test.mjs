// Unit tests of the SDK's delivery guarantees at the socket, in node: a `Room` on a fake WebSocket talking to a fake
// server that enforces the server's message rate per socket (a token bucket, docs/protocol.md "Limits": a message over
// it is dropped unread, and the `ack` of a later one covers it) and a clock stepped by hand (mocked timers, and
// `performance.now` reading the mocked `Date`). Two things are checked:
// - pacing: the SDK writes no faster than the server admits (a backlog flushed after `resumed`, the limits a `joined`
//   announces, ordinary sends past the burst), in order, with heartbeats on time;
// - gaps: a stream frame whose `seq` skips one is not processed; the socket is given up and the session resumed from
//   the last `seq` in order, which replays what was skipped;
// - leaving: what waits for the rate goes out before `leave` (within `leave()`'s bound, or the margin on `pagehide`),
//   nothing is written after `leave`, and what could not go is reported (`undeliverable` `not-sent`).
//
//   node --test tests/sdk/
import { test, mock } from 'node:test';
import assert from 'node:assert/strict';
import fs from 'node:fs';

const source = fs.readFileSync(new URL('../../web/sdk/traverse.js', import.meta.url), 'utf8');
const sdk = await import(`data:text/javascript;base64,${Buffer.from(source).toString('base64')}`);

/** Every pending microtask and I/O callback run (setImmediate is not mocked). */
const settle = () => new Promise((r) => setImmediate(r));

/** The clock moves `ms` milliseconds, one at a time (mocked `Date` jumps to the end of a tick; timers read it). */
async function advance(ms) {
  mock.timers.tick(0);
  await settle();
  for (let i = 0; i < ms; i++) {
    mock.timers.tick(1);
    await settle();
  }
}

/**
 * The server end: per socket, the server's token bucket (`perSecond`, `burst`); the session's stream (kept until
 * the end: every frame can be replayed) and the highest client `seq` handled (the `ack`, which jumps past a dropped
 * message as the real server's does).
 */
class FakeServer {
  constructor({ perSecond = 50, burst = 100, announce = false, heartbeatMs = 10000 } = {}) {
    Object.assign(this, { perSecond, burst, announce, heartbeatMs });
    /** @type {FakeWebSocket[]} */ this.sockets = [];
    /** Stream frames by seq (index 0 unused). */ this.stream = [null];
    /** Client messages handled, in order. */ this.handled = [];
    this.ack = 0;
    this.dropped = 0;
    /** What a resume replays: by default every frame after `lastSeq`. */
    this.replay = (lastSeq) => this.stream.slice(lastSeq + 1);
  }

  get socket() {
    return this.sockets[this.sockets.length - 1];
  }

  /** A stream frame for the session, numbered; written to the current socket unless `lost`. */
  push(msg, { lost = false } = {}) {
    const frame = { ...msg, seq: this.stream.length };
    this.stream.push(frame);
    if (!lost) this.socket.deliver(frame);
    return frame;
  }

  connect(ws) {
    this.sockets.push(ws);
    ws.bucket = { tokens: this.burst, at: Date.now() };
    queueMicrotask(() => ws.accept());
  }

  /** One frame from the client: admitted if the socket's bucket has a token, else dropped unread. */
  receive(ws, msg) {
    const b = ws.bucket;
    b.tokens = Math.min(this.burst, b.tokens + ((Date.now() - b.at) * this.perSecond) / 1000);
    b.at = Date.now();
    if (b.tokens < 1) {
      this.dropped++;
      return;
    }
    b.tokens -= 1;
    switch (msg.type) {
      case 'join': {
        const joined = { type: 'joined', session: 's_1', peerId: 'p_a', room: msg.room, peers: [{ id: 'p_b' }] };
        joined.heartbeatMs = this.heartbeatMs;
        if (this.announce) Object.assign(joined, { messagesPerSecond: this.perSecond, messageBurst: this.burst });
        this.push(joined);
        return;
      }
      case 'resume': {
        const frames = this.replay(msg.lastSeq);
        const last = this.stream.length - 1;
        ws.deliver({ type: 'resumed', seq: last, peerId: 'p_a', replayed: frames.length, ack: this.ack });
        for (const f of frames) ws.deliver(f);
        return;
      }
      case 'ping':
        ws.deliver({ type: 'pong', seq: this.stream.length - 1, ack: this.ack });
        return;
      case 'signal':
      case 'broadcast':
        if (msg.seq <= this.ack) return; // a duplicate
        this.ack = msg.seq;
        this.handled.push(msg);
        return;
    }
  }
}

let server = new FakeServer();

class FakeWebSocket extends EventTarget {
  static CONNECTING = 0;
  static OPEN = 1;
  static CLOSING = 2;
  static CLOSED = 3;
  constructor(url) {
    super();
    this.url = url;
    this.readyState = FakeWebSocket.CONNECTING;
    /** Every frame the client wrote, with the time. */ this.writes = [];
    /** @type {{code: number, reason: string} | null} closed by the client */ this.closedBy = null;
    server.connect(this);
  }
  send(text) {
    if (this.readyState !== FakeWebSocket.OPEN) throw new Error('InvalidStateError');
    const msg = JSON.parse(text);
    this.writes.push({ at: Date.now(), msg });
    server.receive(this, msg);
  }
  close(code, reason) {
    if (this.readyState === FakeWebSocket.CLOSED) return;
    this.readyState = FakeWebSocket.CLOSED;
    this.closedBy = { code, reason };
  }
  // The server's side.
  accept() {
    this.readyState = FakeWebSocket.OPEN;
    this.dispatchEvent(new Event('open'));
  }
  deliver(msg) {
    queueMicrotask(() => {
      if (this.readyState === FakeWebSocket.OPEN) {
        this.dispatchEvent(Object.assign(new Event('message'), { data: JSON.stringify(msg) }));
      }
    });
  }
  /** The network drops the socket. */
  drop(code = 1006) {
    this.readyState = FakeWebSocket.CLOSED;
    this.dispatchEvent(Object.assign(new Event('close'), { code, reason: '' }));
  }
  /** Frames of `type` written. */
  written(type) {
    return this.writes.filter((w) => w.msg.type === type);
  }
}

/**
 * A test with the fake socket, the fake server and the mocked clock; the room is closed at the end. `roomOptions`
 * are added to the room's; with `leaveOnPageHide: true` the page is an EventTarget (`seen.page`) to dispatch
 * `pagehide` on.
 */
function deliveryTest(name, serverOptions, fn, roomOptions = {}) {
  test(name, async () => {
    server = new FakeServer(serverOptions);
    const realPerformance = globalThis.performance;
    mock.timers.enable({ apis: ['setTimeout', 'setInterval', 'Date'], now: 1_000_000 });
    const setPerformance = (value) =>
      Object.defineProperty(globalThis, 'performance', { value, configurable: true, writable: true });
    setPerformance({ now: () => Date.now() });
    globalThis.WebSocket = FakeWebSocket;
    const page = new EventTarget();
    if (roomOptions.leaveOnPageHide) {
      globalThis.addEventListener = page.addEventListener.bind(page);
      globalThis.removeEventListener = page.removeEventListener.bind(page);
    }
    let room;
    try {
      const options = {
        room: 'r',
        url: 'ws://traverse.test/ws',
        reportOutcomes: false,
        leaveOnPageHide: false,
        ...roomOptions,
      };
      const joining = sdk.connect(options);
      await advance(0);
      room = await joining;
      const seen = { signals: [], errors: [], reconnecting: [], undeliverable: [], closed: [], page };
      room.on('signal', (d) => seen.signals.push(d));
      room.on('error', (d) => seen.errors.push(d));
      room.on('reconnecting', (d) => seen.reconnecting.push(d));
      room.on('undeliverable', (d) => seen.undeliverable.push(d));
      room.on('closed', (d) => seen.closed.push(d));
      await fn(room, seen);
    } finally {
      if (room) room._finish(1000, 'test over', true);
      mock.timers.reset();
      setPerformance(realPerformance);
      delete globalThis.WebSocket;
      if (roomOptions.leaveOnPageHide) {
        delete globalThis.addEventListener;
        delete globalThis.removeEventListener;
      }
    }
  });
}

/** The most frames written in any window of `ms` milliseconds. */
function mostIn(writes, ms) {
  let most = 0;
  for (let i = 0, j = 0; j < writes.length; j++) {
    while (writes[j].at - writes[i].at >= ms) i++;
    most = Math.max(most, j - i + 1);
  }
  return most;
}

// ---- pacing -----------------------------------------------------------------------------------------------------

deliveryTest(
  'a backlog of 150 flushed after resumed: ~90 at once, the rest paced to the rate, in order, none dropped; heartbeats on time',
  { heartbeatMs: 500 },
  async (room) => {
    server.socket.drop(); // the network drops the socket
    await settle();
    assert.equal(room.state, 'reconnecting');
    for (let i = 1; i <= 150; i++) room.signal('p_b', i);
    assert.equal(room.stats.queued, 150);

    await advance(0); // the reconnect (at once), the resume, `resumed`
    const ws = server.socket;
    assert.equal(server.sockets.length, 2);
    assert.deepEqual(ws.writes[0].msg, { type: 'resume', session: 's_1', lastSeq: 1 });
    const atOnce = ws.written('signal').length;
    assert.ok(atOnce >= 80 && atOnce <= 90, `${atOnce} written at once: at most the burst less the margin`);
    const resumedAt = ws.writes[0].at;

    await advance(2000);
    const signals = ws.written('signal');
    assert.equal(signals.length, 150, 'all written');
    const last = signals[149].at - resumedAt;
    // 90 % of 50/s: the 60 after the first 90 take ~1.3 s.
    assert.ok(last >= 1200 && last <= 1600, `the last written ${last} ms after the resume`);
    assert.ok(mostIn(signals, 1000) <= 90 + 45, 'no second holds more than the burst and the rate');
    assert.equal(server.dropped, 0, 'the server dropped nothing');
    assert.deepEqual(server.handled.map((m) => m.seq), Array.from({ length: 150 }, (_, i) => i + 1));
    assert.deepEqual(server.handled.map((m) => m.data), Array.from({ length: 150 }, (_, i) => i + 1), 'in order');

    // The heartbeat went out every 500 ms while the backlog waited, not behind it.
    const pings = ws.written('ping').map((w) => w.at - resumedAt);
    assert.deepEqual(pings.slice(0, 3), [500, 1000, 1500]);
  },
);

deliveryTest(
  'a joined that announces its limits (5/s, burst 10) paces at that rate',
  { perSecond: 5, burst: 10, announce: true },
  async (room) => {
    const ws = server.socket;
    const start = Date.now();
    for (let i = 1; i <= 40; i++) room.broadcast(i);
    // The burst less the margin (9), less the join: 8.
    assert.equal(ws.written('broadcast').length, 8);
    await advance(2000);
    // 90 % of 5/s.
    const inTwo = ws.written('broadcast').length;
    assert.ok(inTwo >= 16 && inTwo <= 18, `${inTwo} after 2 s`);
    await advance(6000);
    const all = ws.written('broadcast');
    assert.equal(all.length, 40);
    const last = all[39].at - start;
    assert.ok(last >= 7000 && last <= 7400, `the last after ${last} ms: 32 at 4.5/s`);
    assert.equal(server.dropped, 0);
    assert.deepEqual(server.handled.map((m) => m.data), Array.from({ length: 40 }, (_, i) => i + 1));
  },
);

deliveryTest('ordinary sends past the burst are paced and keep their order', {}, async (room) => {
  const ws = server.socket;
  for (let i = 1; i <= 120; i++) room.signal('p_b', `early-${i}`);
  const atOnce = ws.written('signal').length;
  assert.ok(atOnce >= 80 && atOnce <= 90, `${atOnce} at once`);
  await advance(300);
  // Sent while older messages still wait: behind them, not at once.
  const waiting = 120 - ws.written('signal').length;
  assert.ok(waiting > 0, 'some still wait');
  room.signal('p_b', 'late');
  room.broadcast('late broadcast');
  assert.notEqual(ws.written('signal').at(-1).msg.data, 'late', 'not written ahead of them');
  await advance(1500);
  assert.equal(server.dropped, 0);
  assert.deepEqual(
    server.handled.map((m) => m.data),
    [...Array.from({ length: 120 }, (_, i) => `early-${i + 1}`), 'late', 'late broadcast'],
  );
  assert.deepEqual(server.handled.map((m) => m.seq), Array.from({ length: 122 }, (_, i) => i + 1));
});

// ---- gaps -------------------------------------------------------------------------------------------------------

deliveryTest(
  'a gap (seq 1, 2, 4): 4 is not delivered nor acknowledged; the socket is dropped and resumed from 2, and 3, 4 come in order',
  { heartbeatMs: 1000 },
  async (room, seen) => {
    const first = server.socket;
    server.push({ type: 'signal', from: 'p_b', data: 'two' });
    server.push({ type: 'signal', from: 'p_b', data: 'three' }, { lost: true });
    server.push({ type: 'signal', from: 'p_b', data: 'four' });
    await settle();
    assert.deepEqual(seen.signals.map((s) => s.data), ['two'], '4 is not delivered');
    assert.equal(room.lastSeq, 2);
    assert.deepEqual(seen.errors.map((e) => [e.code, e.expected, e.got]), [['sequence-gap', 3, 4]]);
    assert.deepEqual(first.closedBy, { code: 4000, reason: 'sequence-gap' }, 'the socket given up');
    assert.ok(first.written('ping').every((w) => w.msg.ack <= 2), 'nothing acknowledged past the gap');
    assert.equal(seen.reconnecting[0].delayMs, 0, 'resumed at once');

    await advance(0);
    const second = server.socket;
    assert.notEqual(second, first);
    assert.deepEqual(second.writes[0].msg, { type: 'resume', session: 's_1', lastSeq: 2 });
    assert.deepEqual(seen.signals.map((s) => [s.data, s.seq]), [['two', 2], ['three', 3], ['four', 4]]);
    assert.equal(room.lastSeq, 4);
    await advance(1000);
    assert.deepEqual(second.written('ping').map((w) => w.msg.ack), [4]);
    assert.equal(room.stats.gaps, 1);
  },
);

deliveryTest('a replay that gaps again is not retried in a tight loop: the reconnect backs off', {}, async (room, seen) => {
  server.push({ type: 'signal', from: 'p_b', data: 'two' });
  server.push({ type: 'signal', from: 'p_b', data: 'three' }, { lost: true });
  server.push({ type: 'signal', from: 'p_b', data: 'four' });
  // A broken server: its replay skips 3 as well, twice.
  let broken = 2;
  server.replay = (lastSeq) => {
    const skip = broken-- > 0;
    return server.stream.slice(lastSeq + 1).filter((f) => !(skip && f.seq === 3));
  };
  await settle();
  assert.equal(seen.reconnecting[0].delayMs, 0);
  await advance(0);
  assert.equal(server.sockets.length, 2);
  assert.equal(seen.reconnecting.length, 2);
  const second = seen.reconnecting[1].delayMs;
  assert.ok(second >= 125 && second <= 250, `the second waits ${second} ms`);
  await advance(second);
  assert.equal(server.sockets.length, 3);
  const third = seen.reconnecting[2].delayMs;
  assert.ok(third >= 250 && third <= 500, `the third waits ${third} ms`);
  await advance(third);
  assert.equal(server.sockets.length, 4);
  assert.deepEqual(seen.signals.map((s) => s.data), ['two', 'three', 'four'], 'then in order, once');
  assert.equal(room.state, 'open');

  // Past the gap: a new one resumes at once again.
  server.push({ type: 'signal', from: 'p_b', data: 'five' }, { lost: true });
  server.push({ type: 'signal', from: 'p_b', data: 'six' });
  await settle();
  assert.equal(seen.reconnecting.at(-1).delayMs, 0);
  await advance(0);
  assert.deepEqual(seen.signals.map((s) => s.data), ['two', 'three', 'four', 'five', 'six']);
});

// ---- leaving ----------------------------------------------------------------------------------------------------

/** Empties the room's rate bucket: the burst less the margin, less the join (89 signals `fill-1`…), all written. */
function emptyBucket(room, ws) {
  for (let i = 1; i <= 89; i++) room.signal('p_b', `fill-${i}`);
  assert.equal(ws.written('signal').length, 89, 'the bucket is empty');
}

/** The types of the frames written after the `leave` frame (which must be there, once). */
function afterLeave(ws) {
  const at = ws.writes.findIndex((w) => w.msg.type === 'leave');
  assert.notEqual(at, -1, '`leave` written');
  assert.equal(ws.written('leave').length, 1, '`leave` written once');
  return ws.writes.slice(at + 1).map((w) => w.msg.type);
}

const byeBeforeLeave = 'signal then leave() on an empty bucket: the signal is written before leave, nothing after';
deliveryTest(byeBeforeLeave, {}, async (room, seen) => {
  const ws = server.socket;
  emptyBucket(room, ws);
  const id = room.signal('p_b', 'bye');
  assert.equal(ws.written('signal').length, 89, "'bye' waits for the rate");
  const start = Date.now();
  let left = false;
  const leaving = room.leave();
  leaving.then(() => (left = true));
  const again = room.leave();
  await advance(1200);

  assert.ok(left, 'leave() resolved');
  const bye = ws.writes.findIndex((w) => w.msg.type === 'signal' && w.msg.data === 'bye');
  const leave = ws.writes.findIndex((w) => w.msg.type === 'leave');
  assert.ok(bye !== -1 && bye < leave, "'bye' written before `leave`");
  assert.ok(ws.writes[bye].at - start <= 50, `'bye' written as soon as a token came (${ws.writes[bye].at - start} ms)`);
  assert.ok(ws.writes[leave].at - ws.writes[bye].at <= 1, '`leave` right after the queue emptied');
  assert.deepEqual(afterLeave(ws), [], 'nothing after `leave`');
  assert.equal(server.dropped, 0, '`leave` and the messages admitted');
  assert.equal(server.handled.at(-1).data, 'bye');
  assert.equal(server.handled.at(-1).id, id);
  assert.deepEqual(seen.undeliverable, []);
  assert.equal(room.stats.unsent, 0);
  assert.equal(room.state, 'closed');
  assert.deepEqual(seen.closed, [{ code: 1000, reason: 'left' }]);
  assert.equal(again, leaving, 'a second leave() returns the one under way');
});

deliveryTest(
  'leave() with more waiting than its bound lets out: ~800 ms of it paced in order, the rest reported not-sent, nothing after leave',
  {},
  async (room, seen) => {
    const ws = server.socket;
    emptyBucket(room, ws);
    const ids = [];
    for (let i = 1; i <= 100; i++) ids.push(room.signal('p_b', `late-${i}`));
    room.broadcast('late broadcast');
    const start = Date.now();
    let leftAt = null;
    room.leave().then(() => (leftAt = Date.now()));
    await advance(850);
    let afterLeaveSend = null;
    try {
      room.signal('p_b', 'after leave');
    } catch (err) {
      afterLeaveSend = err;
    }
    await advance(400);

    assert.ok(leftAt !== null && leftAt - start <= 1000, `leave() took ${leftAt - start} ms: at most ~1 s`);
    const leave = ws.written('leave')[0];
    const leaveAfter = leave.at - start;
    assert.ok(leaveAfter >= 790 && leaveAfter <= 810, `\`leave\` written after the bound (${leaveAfter} ms)`);
    assert.deepEqual(afterLeave(ws), [], 'nothing after `leave`, though messages were still waiting');
    assert.equal(server.dropped, 0);

    // What went out during the bound: paced (90 % of 50/s), in order, from the front of the queue.
    const late = server.handled.slice(89);
    assert.ok(late.length >= 30 && late.length <= 40, `${late.length} let out in 800 ms`);
    assert.deepEqual(
      late.map((m) => m.data),
      Array.from({ length: late.length }, (_, i) => `late-${i + 1}`),
    );
    assert.deepEqual(server.handled.map((m) => m.seq), Array.from({ length: server.handled.length }, (_, i) => i + 1));

    // The rest: reported, one event per message, in order, with its id, type and data; never written.
    const rest = ids.slice(late.length);
    assert.deepEqual(
      seen.undeliverable.map((u) => [u.reason, u.type, u.id, u.to]),
      [...rest.map((id) => ['not-sent', 'signal', id, 'p_b']), ['not-sent', 'broadcast', undefined, undefined]],
    );
    assert.equal(seen.undeliverable.at(-1).data, 'late broadcast');
    assert.equal(room.stats.unsent, rest.length + 1);
    assert.equal(ws.written('signal').length + ws.written('broadcast').length, 89 + late.length);
    assert.deepEqual(seen.closed, [{ code: 1000, reason: 'left' }], '`closed` after the reports');
    assert.equal(afterLeaveSend?.code, 'closed', 'signal() throws once `leave` is written');
  },
);

deliveryTest(
  'pagehide: what the margin admits goes out at once, then leave; the rest is reported, nothing is written after',
  {},
  async (room, seen) => {
    const ws = server.socket;
    emptyBucket(room, ws);
    const ids = [];
    for (let i = 1; i <= 20; i++) ids.push(room.signal('p_b', `last-${i}`));
    let reports = 0;
    room.on('undeliverable', () => reports++);
    room.on('closed', () => assert.equal(reports, seen.undeliverable.length, '`closed` after the reports'));

    seen.page.dispatchEvent(new Event('pagehide'));
    // Synchronously, in the same task: nothing asynchronous runs once the page is hidden.
    assert.equal(room.state, 'closed');
    const extra = ws.written('signal').length - 89;
    assert.ok(extra > 0 && extra <= 9, `${extra} of the waiting written at once, within the margin`);
    assert.deepEqual(afterLeave(ws), [], '`leave` is the last frame');
    assert.equal(server.dropped, 0, 'the server admitted all of them, `leave` included');
    assert.deepEqual(
      server.handled.slice(89).map((m) => m.id),
      ids.slice(0, extra),
      'the front of the queue, in order',
    );
    assert.deepEqual(
      seen.undeliverable.map((u) => [u.reason, u.id]),
      ids.slice(extra).map((id) => ['not-sent', id]),
    );
    assert.equal(room.stats.unsent, 20 - extra);
    assert.deepEqual(seen.closed, [{ code: 1000, reason: 'left: the page was hidden (pagehide)' }]);

    const written = ws.writes.length;
    await advance(1500);
    assert.equal(ws.writes.length, written, 'no paced write later');
  },
  { leaveOnPageHide: true },
);

deliveryTest(
  'pagehide while leave() waits for its queue: leave at once, the rest reported, leave() resolves, nothing after',
  {},
  async (room, seen) => {
    const ws = server.socket;
    emptyBucket(room, ws);
    for (let i = 1; i <= 60; i++) room.signal('p_b', `late-${i}`);
    let left = false;
    room.leave().then(() => (left = true));
    await advance(300);
    const paced = ws.written('signal').length - 89;
    assert.ok(paced >= 10 && paced <= 15, `${paced} paced in 300 ms`);
    assert.equal(ws.written('leave').length, 0, 'leave() still waits');

    seen.page.dispatchEvent(new Event('pagehide'));
    await settle();
    assert.ok(left, 'leave() resolved');
    assert.equal(room.state, 'closed');
    assert.deepEqual(afterLeave(ws), []);
    assert.equal(server.dropped, 0);
    const sent = server.handled.length - 89;
    assert.ok(sent > paced, 'the margin let some more out');
    assert.equal(seen.undeliverable.length, 60 - sent);
    assert.deepEqual(seen.closed, [{ code: 1000, reason: 'left: the page was hidden (pagehide)' }]);
    const written = ws.writes.length;
    await advance(1200);
    assert.equal(ws.writes.length, written);
  },
  { leaveOnPageHide: true },
);

deliveryTest(
  'leave() while reconnecting: what the dead socket carried unacknowledged is reported session-lost, then the queue not-sent',
  {},
  async (room, seen) => {
    const ws = server.socket;
    const ids = ['one', 'two', 'three'].map((d) => room.signal('p_b', d));
    room.broadcast({ all: true });
    await settle();
    assert.equal(server.handled.length, 4, 'the server handled them; its ack has not come back yet');
    ws.drop();
    const queued = room.signal('p_b', 'queued while reconnecting');
    await room.leave();
    assert.equal(server.sockets.length, 1, 'no new socket: leave() does not wait for one');
    assert.deepEqual(
      seen.undeliverable.map((u) => [u.reason, u.type, u.id, u.data]),
      [
        ['session-lost', 'signal', ids[0], 'one'],
        ['session-lost', 'signal', ids[1], 'two'],
        ['session-lost', 'signal', ids[2], 'three'],
        ['session-lost', 'broadcast', undefined, { all: true }],
        ['not-sent', 'signal', queued, 'queued while reconnecting'],
      ],
      'each message reported once, in the order it was sent',
    );
    assert.equal(room.stats.lost, 4);
    assert.equal(room.stats.unsent, 1);
    assert.equal(ws.written('leave').length, 0, 'no `leave` on a dead socket');
    assert.deepEqual(seen.closed, [{ code: 1000, reason: 'left' }]);
  },
);
