// Connection quality in Chromium (docs/sdk.md, "Connection quality"): a relayed call carrying audio from a fake
// microphone, through a UDP relay the test makes lossy. The receiving page's `quality` events must say `good` while
// nothing is lost, `bad` with the loss measured once a quarter of the datagrams are dropped each way, and recover
// when the loss stops; the sender hears of it from the receiver's reports (`remote-inbound-rtp`).
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import fs from 'node:fs';
import {
  CHROMIUM, dumpOnFailure, launchBrowser, skipWithoutChromium, startTraverse, udpRelay, until, within,
} from './lib/harness.js';
import { roomPage } from './lib/pages.js';

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

test('quality: good without loss, bad with the loss measured under 25 % drop each way, good again after', { timeout: 120000 }, async (t) => {
  if (skipWithoutChromium(t)) return;
  const relay = await udpRelay(server.ports.turn);
  t.after(() => relay.stop());
  const keep = `(servers) => {
    const turn = servers.find((s) => s.username);
    return [{ urls: 'turn:127.0.0.1:${relay.port}?transport=udp', username: turn.username, credential: turn.credential }];
  }`;
  const open = async () => {
    const p = await roomPage(browser, server, 'quality', { relay: true });
    await p.page.evaluate(`window.keep = ${keep}`);
    await p.page.evaluate(() => {
      window.grades = [];
      const watch = (peer) => peer.on('quality', (q) => grades.push(q));
      room.on('peer-connection', ({ peer }) => watch(peer));
      window.watch = watch;
    });
    return p;
  };
  const a = await open();
  const b = await open();
  t.after(() => Promise.all([a.page.close().catch(() => {}), b.page.close().catch(() => {})]));
  await until(10000, () => a.page.evaluate((id) => room.peers.has(id), b.peerId), 'A sees B');
  await a.page.evaluate(async (id) => {
    const mic = await navigator.mediaDevices.getUserMedia({ audio: true });
    window.peer = room.connect(id, { ...peerOptions(), media: mic, qualityIntervalMs: 1000 });
    watch(peer);
  }, b.peerId);
  const last = (p) => p.page.evaluate(() => grades.at(-1) ?? null);
  const receiving = async () => {
    const q = await last(b);
    return q && q.lossPercent !== null && q;
  };
  try {
    const good = await until(30000, async () => {
      const q = await receiving();
      return q && q.grade === 'good' && q;
    }, 'B grades the call good, with loss measured');
    t.diagnostic(`before: ${JSON.stringify(good)}`);
    assert.equal(good.path, 'relay');
    assert.ok(good.rttMs !== null && good.rttMs < 100, JSON.stringify(good));

    relay.drop = 0.25;
    const bad = await within(30000, until(30000, async () => {
      const q = await last(b);
      return q && q.grade === 'bad' && q;
    }, 'B grades the call bad'), 'bad');
    t.diagnostic(`lossy: ${JSON.stringify(bad)}`);
    assert.ok(bad.lossPercent > 8, JSON.stringify(bad));
    // The sender hears it from the receiver's reports.
    await until(20000, async () => {
      const q = await last(a);
      return q && ['poor', 'bad'].includes(q.grade) && q.lossPercent > 3;
    }, 'A grades its sending poor or bad');

    relay.drop = 0;
    const again = await until(30000, async () => {
      const q = await last(b);
      return q && ['good', 'fair'].includes(q.grade) && q;
    }, 'B grades the call good again');
    t.diagnostic(`after: ${JSON.stringify(again)}`);
    const seen = await b.page.evaluate(() => grades.map((q) => q.grade));
    for (let i = 1; i < seen.length; i++) assert.notEqual(seen[i], seen[i - 1], `an event per change: ${seen}`);
  } catch (e) {
    await dumpOnFailure(t, server, browser)(e);
  }
});
