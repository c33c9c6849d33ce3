// Two Chromium pages load the SDK from the real binary over https on the single port, join a room over wss on the
// single port and open a data channel relayed by Traverse's TURN — forced (iceTransportPolicy 'relay') over one
// transport at a time by keeping a single ICE URL: TURN/UDP, TURN/TCP, TURN/TLS on the TLS port, TURN/TLS on the
// single port. Each run echoes 100 messages and checks the selected pair's relayProtocol.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import fs from 'node:fs';
import path from 'node:path';
import {
  CHROMIUM, ROOT, get, launchBrowser, skipWithoutChromium, startTraverse, until, within, dumpOnFailure,
} from './lib/harness.js';
import { roomPage, recorded, urlMatches } from './lib/pages.js';

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

let roomNo = 0;

/** A joins, B joins; A connects to B (B answers by itself, echoing); 100 messages go round. */
async function relayedEcho(t, want, relayProtocol) {
  const room = `relay-${++roomNo}`;
  const a = await roomPage(browser, server, room, { want, relay: true });
  const b = await roomPage(browser, server, room, { want, relay: true, echo: true });
  t.after(() => Promise.all([a.page.close().catch(() => {}), b.page.close().catch(() => {})]));

  // The join hands out the documented servers; exactly one URL survives the filter.
  const kept = await a.page.evaluate(() => keep(room.iceServers));
  assert.equal(kept.flatMap((s) => s.urls).length, 1, `one URL for ${JSON.stringify(want)}: ${JSON.stringify(a.iceServers)}`);
  assert.ok(kept[0].username && kept[0].credential, 'TURN URL comes with a credential');

  await until(10000, () => a.page.evaluate((id) => room.peers.has(id), b.peerId), 'A sees B');
  const result = await within(
    45000,
    a.page.evaluate(async (bId) => {
      const peer = room.connect(bId, peerOptions());
      window.peer = peer;
      await Promise.race([peer.ready, new Promise((_, r) => setTimeout(() => r(new Error('channel not open in 30 s')), 30000))]);
      const echoes = [];
      const done = new Promise((resolve, reject) => {
        const t = setTimeout(() => reject(new Error(`only ${echoes.length} echoes in 10 s`)), 10000);
        peer.on('message', ({ data }) => {
          echoes.push(data);
          if (echoes.length === 100) {
            clearTimeout(t);
            resolve();
          }
        });
      });
      for (let i = 0; i < 100; i++) peer.send(`m${i}`);
      await done;
      return { echoes, pair: await peer.getSelectedPair(), polite: peer.polite };
    }, b.peerId),
    'relayed data channel echo',
  );
  assert.deepEqual(result.echoes, Array.from({ length: 100 }, (_, i) => `m${i}`));
  assert.equal(result.pair.local.candidateType, 'relay', JSON.stringify(result.pair));
  assert.equal(result.pair.local.relayProtocol, relayProtocol, JSON.stringify(result.pair));
  assert.equal(result.pair.remote.candidateType, 'relay', JSON.stringify(result.pair));
  const bPair = await b.page.evaluate(() => peer.getSelectedPair());
  assert.equal(bPair.local.candidateType, 'relay');
  assert.equal(bPair.local.relayProtocol, relayProtocol);

  // Leaving is seen at once by the other peer.
  await a.page.evaluate(() => room.leave());
  await until(5000, async () => (await recorded(b.page, 'peer-left')).some((e) => e.peerId === a.peerId), 'peer-left');
  await b.page.evaluate(() => room.leave());
}

function relayTest(name, wantOf, relayProtocol) {
  test(name, { timeout: 90000 }, async (t) => {
    if (skipWithoutChromium(t)) return;
    await relayedEcho(t, wantOf(server), relayProtocol).catch(dumpOnFailure(t, server, browser));
  });
}

test('the binary serves the SDK and demo of this tree (rebuild it after editing web/)', { timeout: 30000 }, async (t) => {
  if (skipWithoutChromium(t)) return;
  const sdk = await get(`${server.base}/sdk/traverse.js`);
  assert.equal(sdk.status, 200);
  assert.match(sdk.headers['content-type'], /javascript/);
  assert.ok(sdk.body === fs.readFileSync(path.join(ROOT, 'web/sdk/traverse.js'), 'utf8'), 'served SDK differs from web/sdk/traverse.js: rebuild the binary (cargo build -p traverse)');
  const demo = await get(`${server.base}/demo`);
  assert.equal(demo.status, 200);
  assert.match(demo.headers['content-type'], /html/);
  assert.ok(demo.body === fs.readFileSync(path.join(ROOT, 'web/demo/index.html'), 'utf8'), 'served demo differs from web/demo/index.html: rebuild the binary');
});

test('joined hands out the documented iceServers for the public host', { timeout: 30000 }, async (t) => {
  if (skipWithoutChromium(t)) return;
  const a = await roomPage(browser, server, 'ice-servers');
  t.after(() => a.page.close().catch(() => {}));
  assert.equal(a.url, `wss://127.0.0.1:${server.ports.mux}/ws`, 'SDK derives wss://<single port>/ws from its own URL');
  const urls = a.iceServers.flatMap((s) => (Array.isArray(s.urls) ? s.urls : [s.urls]));
  const has = (want) => urls.some((u) => urlMatches(u, { ...want }) && u.includes('127.0.0.1'));
  assert.ok(has({ scheme: 'stun', port: server.ports.turn }), `stun URL in ${urls}`);
  assert.ok(!urls.some((u) => u.startsWith('stun:') && u.includes('?')), 'stun: URLs carry no ?transport');
  assert.ok(has({ scheme: 'turn', transport: 'udp', port: server.ports.turn }), `turn udp in ${urls}`);
  assert.ok(has({ scheme: 'turn', transport: 'tcp', port: server.ports.turn }), `turn tcp in ${urls}`);
  assert.ok(has({ scheme: 'turns', transport: 'tcp', port: server.ports.tls }), `turns on the TLS port in ${urls}`);
  assert.ok(has({ scheme: 'turns', transport: 'tcp', port: server.ports.mux }), `turns on the single port in ${urls}`);
  const turn = a.iceServers.find((s) => [].concat(s.urls).some((u) => u.startsWith('turn')));
  assert.match(turn.username, new RegExp(`^\\d+:${a.peerId}$`), 'username is <expiry>:<peerId>');
});

relayTest('data channel relayed over TURN/UDP', (s) => ({ scheme: 'turn', transport: 'udp', port: s.ports.turn }), 'udp');
relayTest('data channel relayed over TURN/TCP', (s) => ({ scheme: 'turn', transport: 'tcp', port: s.ports.turn }), 'tcp');
relayTest('data channel relayed over TURN/TLS on the single port', (s) => ({ scheme: 'turns', port: s.ports.mux }), 'tls');
relayTest('data channel relayed over TURN/TLS on the TLS port', (s) => ({ scheme: 'turns', port: s.ports.tls }), 'tls');

test('glare: both peers connect at once, perfect negotiation settles it', { timeout: 90000 }, async (t) => {
  if (skipWithoutChromium(t)) return;
  const want = { scheme: 'turn', transport: 'udp', port: server.ports.turn };
  const a = await roomPage(browser, server, 'glare', { want, relay: true });
  const b = await roomPage(browser, server, 'glare', { want, relay: true });
  t.after(() => Promise.all([a.page.close().catch(() => {}), b.page.close().catch(() => {})]));
  await until(10000, () => a.page.evaluate((id) => room.peers.has(id), b.peerId), 'A sees B');
  const open = (page, other) =>
    page.evaluate(async (id) => {
      const peer = room.connect(id, peerOptions());
      window.peer = peer;
      await Promise.race([peer.ready, new Promise((_, r) => setTimeout(() => r(new Error('channel not open')), 30000))]);
      const got = new Promise((resolve) => peer.on('message', ({ data }) => resolve(data)));
      peer.send(`hello from ${room.peerId}`);
      return { polite: peer.polite, got: await got };
    }, other);
  const [ra, rb] = await within(45000, Promise.all([open(a.page, b.peerId), open(b.page, a.peerId)]), 'both channels')
    .catch(dumpOnFailure(t, server, browser));
  assert.notEqual(ra.polite, rb.polite, 'exactly one polite peer');
  assert.equal(ra.polite, a.peerId < b.peerId, 'the smaller id is polite');
  assert.equal(ra.got, `hello from ${b.peerId}`);
  assert.equal(rb.got, `hello from ${a.peerId}`);
});
