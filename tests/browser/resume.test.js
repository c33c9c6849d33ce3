// Nothing lost around a reconnect, against the real binary: one page's WebSocket is cut twice mid-session (without a
// `leave`, as a network failure would) while the other page keeps sending signals and broadcasts, and the cut page
// keeps sending too. The SDK resumes; every message arrives exactly once, in order, and nobody sees the cut peer
// leave. Then a socket that dies silently (what the page writes is lost until it notices): the SDK resends what the
// server did not acknowledge, and again every message arrives exactly once, in order. Then an unknown session: the
// server refuses the resume (resume-failed, 4201) and the SDK joins afresh. The failures come from the page's network
// (`installNetwork` in lib/pages.js), not from the SDK: it ships no test hook.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import fs from 'node:fs';
import { CHROMIUM, launchBrowser, skipWithoutChromium, startTraverse, until, within, dumpOnFailure } from './lib/harness.js';
import { roomPage, recorded } from './lib/pages.js';

let server;
let browser;
before(async () => {
  if (!fs.existsSync(CHROMIUM)) return;
  server = await startTraverse();
  browser = await launchBrowser();
});
after(async () => {
  await browser?.close();
  await server?.stop();
});

// Under the default limit of 50 messages per second per socket: one message every 30 ms, a broadcast every 10th.
const N = 150;

/** In the page: send N signals to `to` (a broadcast after every 10th), one every `everyMs`. */
const sendLoop = (page, to, tag) =>
  page.evaluate(
    async ({ to, tag, N }) => {
      for (let i = 0; i < N; i++) {
        room.signal(to, { tag, n: i });
        if (i % 10 === 9) room.broadcast({ tag, n: i });
        await new Promise((r) => setTimeout(r, 30));
      }
    },
    { to, tag, N },
  );

const received = async (page, name, tag) =>
  (await recorded(page, name)).filter((e) => e.data && e.data.tag === tag).map((e) => e.data.n);

test('socket cut twice mid-session: resumed, nothing lost, duplicated or reordered', { timeout: 90000 }, async (t) => {
  if (skipWithoutChromium(t)) return;
  const a = await roomPage(browser, server, 'resume', { net: true });
  const b = await roomPage(browser, server, 'resume');
  t.after(() => Promise.all([a.page.close().catch(() => {}), b.page.close().catch(() => {})]));
  await until(10000, () => a.page.evaluate((id) => room.peers.has(id), b.peerId), 'A sees B');

  await (async () => {
    const sending = Promise.all([sendLoop(b.page, a.peerId, 'b'), sendLoop(a.page, b.peerId, 'a')]);
    // Cut A's socket twice while both are sending: once with an immediate reconnect, once with a 600 ms outage
    // (about 20 messages each way pile up: replayed by the server, queued by the SDK).
    for (const holdMs of [0, 600]) {
      await new Promise((r) => setTimeout(r, 1200));
      assert.equal(await a.page.evaluate((h) => net.cut(h), holdMs), 1);
      await until(10000, () => a.page.evaluate(() => room.state === 'open'), 'A resumed');
    }
    await within(30000, sending, 'send loops');

    const all = Array.from({ length: N }, (_, i) => i);
    const tenth = all.filter((i) => i % 10 === 9);
    await until(15000, async () => (await received(a.page, 'signal', 'b')).length >= N, `A gets ${N} signals`);
    await until(15000, async () => (await received(b.page, 'signal', 'a')).length >= N, `B gets ${N} signals`);
    await until(5000, async () => (await received(a.page, 'broadcast', 'b')).length >= tenth.length, 'A broadcasts');
    await until(5000, async () => (await received(b.page, 'broadcast', 'a')).length >= tenth.length, 'B broadcasts');
    assert.deepEqual(await received(a.page, 'signal', 'b'), all, 'signals B→A: all, once, in order');
    assert.deepEqual(await received(b.page, 'signal', 'a'), all, 'signals A→B: all, once, in order');
    assert.deepEqual(await received(a.page, 'broadcast', 'b'), tenth, 'broadcasts B→A');
    assert.deepEqual(await received(b.page, 'broadcast', 'a'), tenth, 'broadcasts A→B');

    const stats = await a.page.evaluate(() => ({ ...room.stats, peerId: room.peerId, state: room.state }));
    assert.equal(stats.resumes, 2, JSON.stringify(stats));
    assert.equal(stats.rejoins, 0, JSON.stringify(stats));
    assert.equal(stats.gaps, 0, JSON.stringify(stats));
    assert.equal(stats.peerId, a.peerId, 'same identity after resume');
    const resumed = await recorded(a.page, 'resumed');
    assert.equal(resumed.length, 2);
    assert.ok(resumed.every((r) => r.peerId === a.peerId));
    assert.ok(resumed[1].replayed >= 5, `the server replayed what A missed during the outage: ${JSON.stringify(resumed)}`);
    assert.ok(stats.queued >= 5, `A queued what it sent during the outage: ${JSON.stringify(stats)}`);
    // Nobody saw A leave or rejoin; nothing was undeliverable; no errors.
    assert.deepEqual(await recorded(b.page, 'peer-left'), []);
    assert.deepEqual(await recorded(b.page, 'peer-joined'), []);
    for (const p of [a.page, b.page]) {
      assert.deepEqual(await recorded(p, 'undeliverable'), []);
      assert.deepEqual(await recorded(p, 'error'), []);
    }
  })().catch(dumpOnFailure(t, server, browser));
});

test('socket silently dead, then cut: what was written into it is resent, arrives once and in order', { timeout: 90000 }, async (t) => {
  if (skipWithoutChromium(t)) return;
  const a = await roomPage(browser, server, 'dead', { net: true });
  const b = await roomPage(browser, server, 'dead');
  t.after(() => Promise.all([a.page.close().catch(() => {}), b.page.close().catch(() => {})]));
  await until(10000, () => a.page.evaluate((id) => room.peers.has(id), b.peerId), 'A sees B');

  await (async () => {
    const sending = Promise.all([sendLoop(b.page, a.peerId, 'b'), sendLoop(a.page, b.peerId, 'a')]);
    await new Promise((r) => setTimeout(r, 1200));
    // A's path dies without A knowing for 700 ms: the ~23 signals A writes meanwhile never leave the page, and what
    // B sends A is not read. Then A notices, and the outage lasts 300 ms more (messages queued).
    // Read in the same turn as the path dies: the page's send loop cannot slip a message in between.
    const { before, silenced } = await a.page.evaluate(() => ({ before: net.lastSeq, silenced: net.silence(700, 300) }));
    assert.equal(silenced, 1);
    await until(5000, () => a.page.evaluate(() => room.state === 'reconnecting'), 'A notices the dead socket');
    const lostInSocket = await a.page.evaluate(() => net.swallowed);
    await until(10000, () => a.page.evaluate(() => room.state === 'open'), 'A resumed');
    await within(30000, sending, 'send loops');

    const all = Array.from({ length: N }, (_, i) => i);
    const tenth = all.filter((i) => i % 10 === 9);
    await until(15000, async () => (await received(a.page, 'signal', 'b')).length >= N, `A gets ${N} signals`);
    await until(15000, async () => (await received(b.page, 'signal', 'a')).length >= N, `B gets ${N} signals`);
    await until(5000, async () => (await received(a.page, 'broadcast', 'b')).length >= tenth.length, 'A broadcasts');
    await until(5000, async () => (await received(b.page, 'broadcast', 'a')).length >= tenth.length, 'B broadcasts');
    assert.deepEqual(await received(b.page, 'signal', 'a'), all, 'signals A→B: all, once, in order');
    assert.deepEqual(await received(b.page, 'broadcast', 'a'), tenth, 'broadcasts A→B');
    assert.deepEqual(await received(a.page, 'signal', 'b'), all, 'signals B→A: all, once, in order');
    assert.deepEqual(await received(a.page, 'broadcast', 'b'), tenth, 'broadcasts B→A');

    const stats = await a.page.evaluate(() => ({ ...room.stats, peerId: room.peerId, unacked: room.unacknowledged }));
    const resumed = await recorded(a.page, 'resumed');
    assert.equal(resumed.length, 1);
    assert.ok(lostInSocket >= 10, `A wrote ${lostInSocket} messages into the dead socket`);
    assert.ok(stats.resent >= lostInSocket, `A resent what the dead socket swallowed: ${JSON.stringify(stats)}`);
    assert.ok(resumed[0].ack <= before, `the server's ack ${resumed[0].ack} is below what A wrote into the dead socket`);
    assert.ok(resumed[0].replayed >= 5, `the server replayed what A did not read: ${JSON.stringify(resumed)}`);
    assert.equal(stats.rejoins, 0, JSON.stringify(stats));
    assert.equal(stats.gaps, 0, JSON.stringify(stats));
    assert.equal(stats.lost, 0, JSON.stringify(stats));
    assert.equal(stats.peerId, a.peerId, 'same identity after resume');

    // The server handles each client seq once: a message resent with a number it already handled is dropped.
    await a.page.evaluate((to) => {
      net.current.send(JSON.stringify({ type: 'signal', to, data: { tag: 'a', n: 0 }, seq: 1 }));
      net.current.send(JSON.stringify({ type: 'broadcast', data: { tag: 'a', n: 9 }, seq: net.lastSeq }));
      room.signal(to, { tag: 'end', n: 0 });
    }, b.peerId);
    await until(5000, async () => (await received(b.page, 'signal', 'end')).length === 1, 'B gets the last signal');
    assert.deepEqual(await received(b.page, 'signal', 'a'), all, 'the duplicate signal was dropped by the server');
    assert.deepEqual(await received(b.page, 'broadcast', 'a'), tenth, 'the duplicate broadcast was dropped');

    // A heartbeat later the server has acknowledged everything A sent.
    await a.page.evaluate(() => net.current.send(JSON.stringify({ type: 'ping', ack: room.lastSeq })));
    await until(5000, () => a.page.evaluate(() => room.unacknowledged === 0), 'pong acknowledges everything');

    assert.deepEqual(await recorded(b.page, 'peer-left'), []);
    assert.deepEqual(await recorded(b.page, 'peer-joined'), []);
    for (const p of [a.page, b.page]) {
      assert.deepEqual(await recorded(p, 'undeliverable'), []);
      assert.deepEqual(await recorded(p, 'error'), []);
    }
  })().catch(dumpOnFailure(t, server, browser));
});

test('resume of an unknown session: resume-failed, 4201, the SDK joins again', { timeout: 60000 }, async (t) => {
  if (skipWithoutChromium(t)) return;
  const a = await roomPage(browser, server, 'rejoin', { net: true });
  const b = await roomPage(browser, server, 'rejoin');
  t.after(() => Promise.all([a.page.close().catch(() => {}), b.page.close().catch(() => {})]));
  await (async () => {
    // The network rewrites A's resume to name a session the server does not know.
    await a.page.evaluate(() => {
      net.tamper = (frame) => frame.replace(/^\{"type":"resume","session":"[^"]*"/, '{"type":"resume","session":"s_unknown"');
      net.cut();
    });
    await until(10000, async () => (await recorded(a.page, 'joined')).length === 1, 'A joined again');
    const errors = await recorded(a.page, 'error');
    assert.deepEqual(errors.map((e) => e.code), ['resume-failed']);
    const rec = await recorded(a.page, 'reconnecting');
    assert.equal(rec.at(-1).code, 4201, JSON.stringify(rec));
    const rejoined = (await recorded(a.page, 'joined'))[0];
    assert.equal(rejoined.rejoined, true);
    assert.notEqual(rejoined.peerId, a.peerId, 'a fresh join is a new identity');
    assert.ok(rejoined.peers.some((p) => p.id === b.peerId));
    await until(5000, async () => (await recorded(b.page, 'peer-joined')).some((e) => e.peer.id === rejoined.peerId),
      'B sees the new identity join');
    // The new identity works.
    await b.page.evaluate((to) => room.signal(to, { tag: 'after', n: 0 }), rejoined.peerId);
    await until(5000, async () => (await received(a.page, 'signal', 'after')).length === 1, 'signal to new identity');
  })().catch(dumpOnFailure(t, server, browser));
});
