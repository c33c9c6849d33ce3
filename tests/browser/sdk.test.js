// The SDK's session logic in Chromium against a scripted server (lib/fake-server.js) that misbehaves on cue:
// resume and replay with duplicates, queued messages flushed in order, client-numbered messages swallowed by a dying
// socket resent after resume (or reported session-lost after a failed one), close-code retry classes, a failed resume
// answered by a fresh join, a dead server found by missing pongs, refused joins reported with their code.
// The real server is exercised by relay.test.js and resume.test.js.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { startFakeServer } from './lib/fake-server.js';
import { launchBrowser, skipWithoutChromium, until, within, sleep } from './lib/harness.js';

const ICE = [{ urls: ['stun:127.0.0.1:3478'] }];
const joined = (over = {}) => ({
  type: 'joined',
  seq: 1,
  session: 's_1',
  peerId: 'p_b',
  room: 'r',
  peers: [{ id: 'p_a', meta: { name: 'A' } }],
  iceServers: ICE,
  heartbeatMs: 10000,
  resumeGraceMs: 30000,
  ...over,
});

let browser;
before(async () => {
  if (!(await import('node:fs')).existsSync(process.env.CHROMIUM_PATH || '/usr/bin/chromium')) return;
  browser = await launchBrowser();
});
after(async () => {
  await browser?.close();
});

/** A page on the fake server with the SDK loaded and every room event recorded in `window.events`. */
async function sdkPage(fake) {
  const page = await browser.newPage();
  await page.goto(`${fake.base}/`);
  await page.evaluate(async () => {
    window.T = await import('/sdk/traverse.js');
    window.events = [];
    window.track = (room) => {
      for (const name of ['joined', 'peer-joined', 'peer-left', 'signal', 'broadcast', 'undeliverable', 'error',
        'reconnecting', 'resumed', 'closed']) {
        room.on(name, (d) => window.events.push({ name, ...JSON.parse(JSON.stringify(d ?? {})), at: performance.now() }));
      }
    };
  });
  return page;
}

/** Join through the fake server: the page connects, the script answers `joined`. */
async function joinedPage(t, fake, options = {}, joinedOver = {}) {
  const page = await sdkPage(fake);
  t.after(() => page.close().catch(() => {}));
  const opening = page.evaluate(async (o) => {
    window.room = await T.connect({ room: 'r', ...o });
    track(window.room);
    return { peerId: room.peerId, peers: [...room.peers.keys()], iceServers: room.iceServers };
  }, options);
  const sock = await fake.socket(0);
  const join = await sock.next((m) => m.type === 'join');
  sock.send(joined(joinedOver));
  const info = await within(5000, opening, 'connect() resolves');
  return { page, sock, join, info };
}

const events = (page, name) => page.evaluate((n) => window.events.filter((e) => !n || e.name === n), name);

function fakeTest(name, fn) {
  test(name, { timeout: 60000 }, async (t) => {
    if (skipWithoutChromium(t)) return;
    const fake = await startFakeServer();
    t.after(() => fake.close());
    await fn(t, fake);
  });
}

fakeTest('join: query carries room and token, join message, joined state', async (t, fake) => {
  const { sock, join, info } = await joinedPage(t, fake, { token: 'tok', meta: { name: 'B' } });
  assert.equal(sock.url.pathname, '/ws');
  assert.equal(sock.protocol, 'traverse.v1', 'asks for the subprotocol');
  assert.equal(sock.url.searchParams.get('room'), 'r');
  assert.equal(sock.url.searchParams.get('token'), 'tok');
  assert.deepEqual(
    { type: join.type, room: join.room, token: join.token, meta: join.meta },
    { type: 'join', room: 'r', token: 'tok', meta: { name: 'B' } },
  );
  assert.deepEqual(info, { peerId: 'p_b', peers: ['p_a'], iceServers: ICE });
});

fakeTest('heartbeat: ping every heartbeatMs acknowledges the last processed seq', async (t, fake) => {
  const { page, sock } = await joinedPage(t, fake, {}, { heartbeatMs: 200 });
  sock.send({ type: 'signal', seq: 2, from: 'p_a', data: 'x' });
  sock.send({ type: 'broadcast', seq: 3, from: 'p_a', data: 'y' });
  const ping = await sock.next((m) => m.type === 'ping' && m.ack === 3, 3000);
  assert.equal(ping.ack, 3);
  assert.equal((await events(page, 'signal')).length, 1);
});

fakeTest('resume: replay deduplicated by seq, queued messages flushed in order after resumed', async (t, fake) => {
  const { page, sock } = await joinedPage(t, fake);
  sock.send({ type: 'signal', seq: 2, from: 'p_a', data: 'a' });
  sock.send({ type: 'signal', seq: 3, from: 'p_a', data: 'b' });
  await until(5000, async () => (await events(page, 'signal')).length === 2, 'two signals');
  sock.destroy();
  const sock1 = await fake.socket(1);
  const resume = await sock1.next((m) => m.type === 'resume');
  assert.deepEqual({ ...resume, _taken: undefined }, { type: 'resume', session: 's_1', lastSeq: 3, _taken: undefined });
  assert.equal(sock1.url.searchParams.get('room'), null, 'a resume socket carries no join query');
  assert.equal(sock1.url.searchParams.get('token'), null, 'nor the join token');
  assert.equal(sock1.url.searchParams.get('resuming'), 'r', 'only the room, for placement');
  // Not resumed yet: these are queued.
  await page.evaluate(() => {
    room.signal('p_a', 'q1');
    room.signal('p_a', 'q2');
    room.broadcast('q3');
  });
  await sleep(100);
  assert.equal(sock1.received.filter((m) => m.type === 'signal' || m.type === 'broadcast').length, 0);
  sock1.send({ type: 'resumed', seq: 5, peerId: 'p_b', replayed: 3 });
  sock1.send({ type: 'signal', seq: 3, from: 'p_a', data: 'b' }); // duplicate: already processed
  sock1.send({ type: 'signal', seq: 4, from: 'p_a', data: 'c' });
  sock1.send({ type: 'broadcast', seq: 5, from: 'p_a', data: 'd' });
  const out = [];
  for (let i = 0; i < 3; i++) out.push(await sock1.next((m) => m.type === 'signal' || m.type === 'broadcast'));
  assert.deepEqual(out.map((m) => [m.type, m.data, m.seq]), [['signal', 'q1', 1], ['signal', 'q2', 2], ['broadcast', 'q3', 3]]);
  await until(5000, async () => (await events(page, 'broadcast')).length === 1, 'broadcast d');
  const got = (await events(page)).filter((e) => e.name === 'signal' || e.name === 'broadcast').map((e) => e.data);
  assert.deepEqual(got, ['a', 'b', 'c', 'd']);
  const st = await page.evaluate(() => ({ ...room.stats, lastSeq: room.lastSeq, peerId: room.peerId }));
  assert.equal(st.duplicates, 1);
  assert.equal(st.resumes, 1);
  assert.equal(st.gaps, 0);
  assert.equal(st.lastSeq, 5);
  assert.equal(st.peerId, 'p_b');
  const names = (await events(page)).map((e) => e.name);
  assert.ok(names.includes('reconnecting') && names.includes('resumed'));
});

const outbound = (sock) => sock.received.filter((m) => m.type === 'signal' || m.type === 'broadcast');

fakeTest('client seq: messages swallowed by a dying socket are resent once, in order, before the queue', async (t, fake) => {
  const { page, sock } = await joinedPage(t, fake);
  const sent = await page.evaluate(() => [room.signal('p_a', 'm1'), room.signal('p_a', 'm2')]);
  // The server handles m1 and m2 and acknowledges them.
  const first = [await sock.next((m) => m.type === 'signal'), await sock.next((m) => m.type === 'signal')];
  assert.deepEqual(first.map((m) => [m.data, m.seq, m.id]), [['m1', 1, sent[0]], ['m2', 2, sent[1]]]);
  sock.send({ type: 'pong', seq: 1, ack: 2 });
  await until(5000, () => page.evaluate(() => room.unacknowledged === 0), 'm1, m2 acknowledged');
  // m3 and m4 reach the server's socket, but the server acts as if the socket had died before they arrived: it
  // closes without handling them (the browser notices only afterwards).
  await page.evaluate(() => {
    room.signal('p_a', 'm3');
    room.broadcast('m4');
  });
  const swallowed = [await sock.next((m) => m.type === 'signal'), await sock.next((m) => m.type === 'broadcast')];
  assert.deepEqual(swallowed.map((m) => [m.data, m.seq]), [['m3', 3], ['m4', 4]]);
  assert.equal(await page.evaluate(() => room.unacknowledged), 2);
  sock.destroy();
  await until(5000, async () => (await events(page, 'reconnecting')).length === 1, 'the room notices the drop');
  // Sent while the room knows it is disconnected: queued.
  await page.evaluate(() => room.signal('p_a', 'm5'));
  const sock1 = await fake.socket(1);
  await sock1.next((m) => m.type === 'resume');
  await sleep(100);
  assert.deepEqual(outbound(sock1), [], 'nothing before resumed');
  sock1.send({ type: 'resumed', seq: 1, peerId: 'p_b', replayed: 0, ack: 2 });
  const out = [];
  for (let i = 0; i < 3; i++) out.push(await sock1.next((m) => m.type === 'signal' || m.type === 'broadcast'));
  assert.deepEqual(
    out.map((m) => [m.type, m.data, m.seq]),
    [['signal', 'm3', 3], ['broadcast', 'm4', 4], ['signal', 'm5', 5]],
    'the swallowed messages again, in order, with their seq, then the queued one',
  );
  await sleep(300);
  assert.deepEqual(outbound(sock1).map((m) => m.data), ['m3', 'm4', 'm5'], 'each resent exactly once, m1 and m2 not');
  const st = await page.evaluate(() => ({ ...room.stats, unacked: room.unacknowledged }));
  assert.equal(st.resent, 2);
  assert.equal(st.unacked, 3);
  assert.equal((await events(page, 'resumed'))[0].ack, 2);
  // Numbering carries on in the same session; a pong acknowledges everything.
  await page.evaluate(() => room.signal('p_a', 'm6'));
  assert.equal((await sock1.next((m) => m.type === 'signal' && m.data === 'm6')).seq, 6);
  sock1.send({ type: 'pong', seq: 1, ack: 6 });
  await until(5000, () => page.evaluate(() => room.unacknowledged === 0), 'all acknowledged');
  // A second drop now resends nothing.
  sock1.destroy();
  const sock2 = await fake.socket(2);
  await sock2.next((m) => m.type === 'resume');
  sock2.send({ type: 'resumed', seq: 1, peerId: 'p_b', replayed: 0, ack: 6 });
  await until(5000, async () => (await events(page, 'resumed')).length === 2, 'second resume');
  await sleep(200);
  assert.deepEqual(outbound(sock2), []);
  assert.deepEqual(await events(page, 'undeliverable'), []);
  assert.deepEqual((await events(page, 'error')).map((e) => e.code), []);
});

fakeTest('client seq: after a failed resume, unacknowledged messages are reported session-lost, not resent', async (t, fake) => {
  const { page, sock } = await joinedPage(t, fake);
  const ids = await page.evaluate(() => [room.signal('p_a', 's1'), room.signal('p_a', 's2', { id: 'mine' })]);
  await page.evaluate(() => room.broadcast('b3'));
  await sock.next((m) => m.type === 'broadcast');
  sock.send({ type: 'pong', seq: 1, ack: 1 }); // s1 handled; s2 and b3 not (yet)
  await until(5000, () => page.evaluate(() => room.unacknowledged === 2), 's1 acknowledged');
  sock.destroy();
  await until(5000, async () => (await events(page, 'reconnecting')).length === 1, 'the room notices the drop');
  await page.evaluate(() => room.signal('p_a', 'q4')); // queued, never sent
  const sock1 = await fake.socket(1);
  await sock1.next((m) => m.type === 'resume');
  sock1.send({ type: 'error', seq: 1, code: 'resume-failed', message: 'Unknown session.' });
  sock1.close(4201, 'resume failed');
  const sock2 = await fake.socket(2);
  await sock2.next((m) => m.type === 'join');
  await sleep(100);
  assert.deepEqual(outbound(sock1), []);
  assert.deepEqual(outbound(sock2), []);
  sock2.send(joined({ session: 's_2', peerId: 'p_c' }));
  const q4 = await sock2.next((m) => m.type === 'signal');
  assert.deepEqual([q4.data, q4.seq], ['q4', 1], 'the new session numbers from 1; the queued message is sent');
  await until(5000, async () => (await events(page, 'undeliverable')).length === 2, 'two undeliverable');
  const lost = (await events(page, 'undeliverable')).map(({ type, to, id, data, reason }) => ({ type, to, id, data, reason }));
  assert.deepEqual(lost, [
    { type: 'signal', to: 'p_a', id: ids[1], data: 's2', reason: 'session-lost' },
    { type: 'broadcast', to: undefined, id: undefined, data: 'b3', reason: 'session-lost' },
  ]);
  assert.equal(ids[1], 'mine');
  const names = (await events(page)).map((e) => e.name).filter((n) => n === 'joined' || n === 'undeliverable');
  assert.deepEqual(names, ['joined', 'undeliverable', 'undeliverable'], 'reported after the new identity is known');
  await sleep(300);
  assert.deepEqual(outbound(sock2).map((m) => m.data), ['q4'], 's2 and b3 are not resent');
  const st = await page.evaluate(() => ({ ...room.stats, unacked: room.unacknowledged }));
  assert.equal(st.lost, 2);
  assert.equal(st.resent, 0);
  assert.equal(st.unacked, 1);
});

fakeTest('client seq: unknown-peer names the id signal() returned; queue-full bounds unacknowledged messages', async (t, fake) => {
  const { page, sock } = await joinedPage(t, fake, { maxQueue: 4 });
  const id = await page.evaluate(() => room.signal('p_x', 'who'));
  const m = await sock.next((x) => x.type === 'signal');
  assert.equal(m.id, id);
  sock.send({ type: 'error', seq: 2, code: 'unknown-peer', message: 'No peer p_x in room r.', id: m.id });
  await until(5000, async () => (await events(page, 'error')).length === 1, 'error event');
  const err = (await events(page, 'error'))[0];
  assert.deepEqual([err.code, err.id], ['unknown-peer', id]);
  // Half of maxQueue unacknowledged: the room asks for an ack at once. The server does not answer yet.
  await page.evaluate(() => room.signal('p_a', 'x2'));
  await sock.next((x) => x.type === 'ping', 2000);
  await page.evaluate(() => {
    room.signal('p_a', 'x3');
    room.signal('p_a', 'x4');
    room.signal('p_a', 'x5'); // a fifth held message: over the bound
  });
  await until(5000, async () => (await events(page, 'error')).length === 2, 'queue-full');
  assert.equal((await events(page, 'error'))[1].code, 'queue-full');
  await sleep(100);
  assert.deepEqual(outbound(sock).map((x) => [x.data, x.seq]), [['who', 1], ['x2', 2], ['x3', 3], ['x4', 4]]);
  sock.send({ type: 'pong', seq: 2, ack: 4 });
  await until(5000, () => page.evaluate(() => room.unacknowledged === 0), 'acknowledged');
  await page.evaluate(() => room.signal('p_a', 'x6'));
  assert.equal((await sock.next((x) => x.type === 'signal' && x.data === 'x6')).seq, 5);
});

fakeTest('resume-failed then 4201: a fresh join, new identity, event joined with rejoined', async (t, fake) => {
  const { page, sock } = await joinedPage(t, fake);
  sock.send({ type: 'signal', seq: 2, from: 'p_a', data: 'a' });
  await until(5000, async () => (await events(page, 'signal')).length === 1, 'signal');
  sock.destroy();
  const sock1 = await fake.socket(1);
  await sock1.next((m) => m.type === 'resume');
  sock1.send({ type: 'error', seq: 1, code: 'resume-failed', message: 'Unknown session.' });
  sock1.close(4201, 'resume failed');
  const sock2 = await fake.socket(2);
  const join = await sock2.next((m) => m.type === 'join');
  assert.equal(join.room, 'r');
  assert.equal(sock2.url.searchParams.get('room'), 'r');
  sock2.send(joined({ session: 's_2', peerId: 'p_c' }));
  sock2.send({ type: 'signal', seq: 2, from: 'p_a', data: 'after' });
  await until(5000, async () => (await events(page, 'signal')).length === 2, 'signal after re-join');
  const ev = await events(page);
  assert.ok(ev.some((e) => e.name === 'error' && e.code === 'resume-failed'));
  const rejoin = ev.find((e) => e.name === 'joined');
  assert.equal(rejoin.rejoined, true);
  assert.equal(rejoin.peerId, 'p_c');
  assert.equal(await page.evaluate(() => room.session), 's_2');
  assert.equal(await page.evaluate(() => room.state), 'open');
});

fakeTest('4001 (do not retry) is final: event closed, no new socket', async (t, fake) => {
  const { page, sock } = await joinedPage(t, fake);
  sock.close(4001, 'token refused');
  await until(5000, async () => (await events(page, 'closed')).length === 1, 'closed');
  const closed = (await events(page, 'closed'))[0];
  assert.equal(closed.code, 4001);
  await sleep(1500);
  assert.equal(fake.sockets.length, 1);
  assert.equal(await page.evaluate(() => room.state), 'closed');
  await assert.rejects(page.evaluate(() => room.signal('p_a', 'x')), /closed/);
});

fakeTest('4200 retries at once, 4102 retries with backoff', async (t, fake) => {
  const { page, sock } = await joinedPage(t, fake);
  sock.close(4200, 'heartbeat timeout');
  const sock1 = await fake.socket(1);
  await sock1.next((m) => m.type === 'resume');
  sock1.send({ type: 'resumed', seq: 1, peerId: 'p_b', replayed: 0 });
  await until(5000, async () => (await events(page, 'resumed')).length === 1, 'resumed');
  const closedAt = Date.now();
  sock1.close(4102, 'room full');
  const sock2 = await fake.socket(2);
  const waited = Date.now() - closedAt;
  await sock2.next((m) => m.type === 'resume');
  const rec = await events(page, 'reconnecting');
  assert.equal(rec.length, 2);
  assert.equal(rec[0].code, 4200);
  assert.equal(rec[0].delayMs, 0);
  assert.equal(rec[1].code, 4102);
  assert.ok(rec[1].delayMs >= 240 && rec[1].delayMs <= 360, `backoff ${rec[1].delayMs} ms`);
  assert.ok(waited >= 200, `reconnected after ${waited} ms`);
});

fakeTest('dead server: missing pongs drop the socket and the room resumes', async (t, fake) => {
  const { page, sock } = await joinedPage(t, fake, { heartbeatMs: 200, deadAfterMs: 800 });
  let answering = true;
  sock.onMessage = (m) => {
    if (m.type === 'ping' && answering) sock.send({ type: 'pong', seq: 1 });
  };
  await sleep(1200);
  assert.equal(fake.sockets.length, 1, 'pongs keep the socket');
  answering = false; // the server goes silent but keeps the TCP connection
  const sock1 = await fake.socket(1, 5000);
  const resume = await sock1.next((m) => m.type === 'resume');
  assert.equal(resume.session, 's_1');
  const rec = await events(page, 'reconnecting');
  assert.equal(rec[0].code, 4200);
});

fakeTest('refused upgrade: connect() rejects with the reason from /api/join-check', async (t, fake) => {
  await fake.close();
  const refusing = await startFakeServer({
    reject: () => ({ status: 403, body: { ok: false, code: 'token-invalid', message: 'Bad signature.' } }),
    joinCheck: (url) =>
      url.searchParams.get('token') === 'bad'
        ? { status: 403, body: { ok: false, code: 'token-invalid', message: 'Bad signature.' } }
        : { status: 200, body: { ok: true } },
  });
  t.after(() => refusing.close());
  const page = await sdkPage(refusing);
  t.after(() => page.close().catch(() => {}));
  const err = await page.evaluate(() =>
    T.connect({ room: 'r', token: 'bad', connectTimeoutMs: 5000 }).then(
      () => null,
      (e) => ({ name: e.name, code: e.code, status: e.status, message: e.message }),
    ),
  );
  assert.deepEqual(err, { name: 'TraverseError', code: 'token-invalid', status: 403, message: 'Bad signature.' });
});

fakeTest('join refused in-band: connect() rejects with the error code', async (t, fake) => {
  const page = await sdkPage(fake);
  t.after(() => page.close().catch(() => {}));
  const p = page.evaluate(() =>
    T.connect({ room: 'r' }).then(
      () => null,
      (e) => ({ code: e.code, message: e.message }),
    ),
  );
  const sock = await fake.socket(0);
  await sock.next((m) => m.type === 'join');
  sock.send({ type: 'error', seq: 1, code: 'room-full', message: 'Room r is full.' });
  sock.close(4102, 'room full');
  assert.deepEqual(await within(5000, p, 'connect() rejects'), { code: 'room-full', message: 'Room r is full.' });
  await sleep(500);
  assert.equal(fake.sockets.length, 1, 'a refused first join is not retried');
});

fakeTest('local limits: oversized message refused before sending; leave sends leave', async (t, fake) => {
  const { page, sock } = await joinedPage(t, fake, { maxMessageBytes: 1000 });
  const err = await page.evaluate(() => {
    try {
      room.broadcast('x'.repeat(2000));
      return null;
    } catch (e) {
      return e.code;
    }
  });
  assert.equal(err, 'too-large');
  sock.onMessage = (m) => m.type === 'leave' && sock.close(1000, 'bye');
  await page.evaluate(() => room.leave());
  await sock.next((m) => m.type === 'leave');
  const closed = await events(page, 'closed');
  assert.equal(closed.length, 1);
  assert.equal(closed[0].code, 1000);
});
