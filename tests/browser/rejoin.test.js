// Calls that survive a restarted server (issue 11, docs/sdk.md "Calls that survive"): two Chromium pages in a call
// relayed by Traverse's TURN (forced: iceTransportPolicy 'relay', TURN over UDP), a data-channel ping every 100 ms
// echoed back. The server is stopped and started again on the same ports: the signaling sessions and the TURN
// allocations die with it. Without the application doing anything, both SDKs rejoin (resume refused, 4201), find each
// other's new peer id (`peer-rejoined`), restart ICE with the new server's credentials and the call carries on: the
// same Peer, the same data channel, every ping echoed in order (reliable channel: nothing lost). Prints the times.
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

test('server restarted during a relayed call: both sides rejoin, the call comes back by itself', { timeout: 120000 }, async (t) => {
  if (skipWithoutChromium(t)) return;
  const want = { scheme: 'turn', transport: 'udp', port: server.ports.turn };
  const a = await roomPage(browser, server, 'rejoin', { want, relay: true });
  const b = await roomPage(browser, server, 'rejoin', { want, relay: true, echo: true });
  t.after(() => Promise.all([a.page.close().catch(() => {}), b.page.close().catch(() => {})]));
  try {
    await until(10000, () => a.page.evaluate((id) => room.peers.has(id), b.peerId), 'A sees B');
    // A calls B and pings every 100 ms; every echo is timed.
    await within(
      40000,
      a.page.evaluate(async (bId) => {
        const peer = room.connect(bId, peerOptions());
        window.peer = peer;
        window.firstChannel = null;
        window.echoes = [];
        window.peerEvents = [];
        for (const name of ['reconnecting', 'reconnected', 'recovery-failed', 'rejoined']) {
          peer.on(name, (d) => peerEvents.push({ name, at: Date.now(), ...d }));
        }
        room.on('peer-rejoined', (d) => peerEvents.push({ name: 'peer-rejoined', at: Date.now(), peerId: d.peerId, previousPeerId: d.previousPeerId, same: d.peer === peer }));
        await peer.ready;
        window.firstChannel = peer.channel;
        peer.on('message', ({ data }) => echoes.push({ n: Number(data), at: Date.now() }));
        window.sent = 0;
        window.pinger = setInterval(() => {
          try {
            peer.send(String(sent));
            sent++;
          } catch {
            /* channel not open: counted as not sent */
          }
        }, 100);
      }, b.peerId),
      'relayed call up',
    );
    await until(10000, () => a.page.evaluate(() => echoes.length >= 20), '20 echoes before the restart');
    // The server's verdicts on the call, on both pages: the new server never saw it connect.
    for (const p of [a, b]) {
      await p.page.evaluate(() => {
        window.diagnoses = [];
        room.on('connection-diagnosis', (d) => diagnoses.push(d));
      });
    }

    const stopAt = Date.now();
    await server.stop();
    const stoppedAt = Date.now();
    server = await startTraverse({ ports: server.ports });
    const upAt = Date.now();

    // The call comes back: a ping sent after the server was up is echoed.
    const sentWhenUp = await a.page.evaluate(() => sent);
    const back = await within(
      60000,
      a.page.evaluate(
        (n) =>
          new Promise((resolve) => {
            const check = setInterval(() => {
              const e = echoes.find((x) => x.n >= n);
              if (e) {
                clearInterval(check);
                resolve(e.at);
              }
            }, 20);
          }),
        sentWhenUp,
      ),
      'an echo of a ping sent after the restart',
    );
    // Nothing lost, nothing duplicated, in order, on the same channel object.
    await a.page.evaluate(() => clearInterval(pinger));
    const total = await a.page.evaluate(() => sent);
    await until(15000, () => a.page.evaluate((n) => echoes.length >= n, total), `all ${total} echoes`);
    const got = await a.page.evaluate(() => ({
      echoes: echoes.map((e) => e.n),
      sameChannel: peer.channel === firstChannel,
      peerId: peer.peerId,
      connected: room.connections.get(peer.peerId) === peer,
      events: peerEvents,
      joined: rec.filter((e) => e.name === 'joined'),
    }));
    assert.deepEqual(got.echoes, Array.from({ length: total }, (_, i) => i), 'every ping echoed once, in order');
    assert.ok(got.sameChannel, 'the same data channel object');
    assert.ok(got.connected, 'the same Peer, under the new id');
    const newB = await b.page.evaluate(() => room.peerId);
    assert.notEqual(newB, b.peerId, 'B has a new id');
    assert.equal(got.peerId, newB);
    const rejoined = got.events.find((e) => e.name === 'peer-rejoined');
    assert.deepEqual([rejoined?.previousPeerId, rejoined?.peerId, rejoined?.same], [b.peerId, newB, true]);
    const reconnected = got.events.find((e) => e.name === 'reconnected');
    assert.ok(reconnected, `reconnected event: ${JSON.stringify(got.events)}`);
    assert.ok(got.joined.some((e) => e.rejoined && e.previousPeerId === a.peerId), 'joined again, previous id given');
    const bEvents = await b.page.evaluate(() => room.connections.size);
    assert.equal(bEvents, 1, 'B kept its one call');
    // The interruption is diagnosed by the new server from both sides' reports (`"rejoin": true` at the join):
    // before, it refused them, as about a pair it had never diagnosed connected.
    const recovered = (p) => until(20000, () => p.page.evaluate(() => diagnoses.find((d) => d.outcome === 'recovered')), 'recovered');
    const [ra, rb] = await within(25000, Promise.all([recovered(a), recovered(b)]), 'the interruption diagnosed on both pages');
    assert.equal(ra.peer, newB, JSON.stringify(ra));
    assert.equal(rb.peer, await a.page.evaluate(() => room.peerId), JSON.stringify(rb));
    assert.equal(ra.reason, 'recovered');
    assert.ok(ra.recoveryMs > 0, JSON.stringify(ra));
    const errors = (await recorded(a.page, 'error')).filter((e) => e.code !== 'unknown-peer');
    console.log(
      `server restart during a relayed call: stop took ${stoppedAt - stopAt} ms, start ${upAt - stoppedAt} ms; ` +
        `echoes again ${back - upAt} ms after the server was up (${back - stopAt} ms after the stop); ` +
        `Peer events: ${got.events.map((e) => `${e.name}${e.cause ? `(${e.cause}${e.durationMs !== undefined ? ` ${e.durationMs} ms` : ''})` : ''}`).join(', ')}; ` +
        `${total} pings, all echoed in order; diagnosed ${ra.outcome} (${ra.recoveryMs} ms, cause ${ra.cause}, path ` +
        `${ra.path}); errors: ${JSON.stringify(errors)}`,
    );
  } catch (err) {
    await dumpOnFailure(t, server, browser)(err);
  }
});
