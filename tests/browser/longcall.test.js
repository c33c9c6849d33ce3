// A call longer than its TURN credential (issue 11, docs/sdk.md "Calls that survive", Long calls): the server mints
// 60 s credentials (`auth.credential_ttl=60`), two pages hold a call relayed over TURN/UDP (relay only) and ping every
// 200 ms. The allocation outlives its credential (the server checks the expiry only for an Allocate), so the call
// relays on past 60 s; the SDK fetches a fresh credential before the expiry (`ice-servers`, about 45 s in) and puts
// it into the peer connection, so that an ICE restart 75 s in — after the first credential expired — allocates new
// relays (a new relayed candidate) and the same data channel carries on, every ping echoed in order. The join tokens
// expire 30 s in, before the refresh: the fresh credential comes over the signaling socket, which the session
// authenticates (`GET /api/ice-servers` with the expired token is refused, as the test checks).
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import fs from 'node:fs';
import { CHROMIUM, TRAVERSE_BIN, get, launchBrowser, skipWithoutChromium, startTraverse, sleep, until, within, dumpOnFailure } from './lib/harness.js';
import { roomPage } from './lib/pages.js';

let server;
let browser;
const SIGNAL_SECRET = 'longcall-signal-secret-0123456789';
/** A join token for room `long` that expires `ttl` seconds from now. */
const token = (ttl) =>
  execFileSync(TRAVERSE_BIN, ['token', '--secret', SIGNAL_SECRET, '--room', 'long', '--ttl', String(ttl)], { encoding: 'utf8' }).trim();
before(async () => {
  if (!fs.existsSync(CHROMIUM)) return;
  server = await startTraverse({ extraArgs: ['--set', 'auth.credential_ttl=60', '--signal-secret', SIGNAL_SECRET] });
  browser = await launchBrowser();
});
after(async () => {
  await browser?.close();
  await server?.stop();
});

test('a relayed call outlives its 60 s credential, and a restart after the expiry uses the refreshed one', { timeout: 150000 }, async (t) => {
  if (skipWithoutChromium(t)) return;
  const want = { scheme: 'turn', transport: 'udp', port: server.ports.turn };
  const joinToken = token(30);
  const tokenExpiry = Date.now() + 30000;
  const a = await roomPage(browser, server, 'long', { want, relay: true, connect: { token: joinToken } });
  const b = await roomPage(browser, server, 'long', { want, relay: true, echo: true, connect: { token: token(30) } });
  t.after(() => Promise.all([a.page.close().catch(() => {}), b.page.close().catch(() => {})]));
  try {
    const joinedAt = Date.now();
    const turn = a.iceServers.find((s) => s.username);
    const expiry = Number(turn.username.split(':')[0]);
    assert.ok(Math.abs(expiry - Date.now() / 1000 - 60) < 5, `a 60 s credential: ${turn.username}`);
    await until(10000, () => a.page.evaluate((id) => room.peers.has(id), b.peerId), 'A sees B');
    await within(
      40000,
      a.page.evaluate(async (bId) => {
        const peer = room.connect(bId, peerOptions());
        window.peer = peer;
        window.refreshes = [];
        room.on('ice-servers', (d) => refreshes.push({ at: Date.now(), expiresAt: d.expiresAt }));
        window.peerEvents = [];
        for (const name of ['reconnecting', 'reconnected', 'recovery-failed']) {
          peer.on(name, (d) => peerEvents.push({ name, at: Date.now(), ...d }));
        }
        await peer.ready;
        window.firstChannel = peer.channel;
        window.echoes = [];
        peer.on('message', ({ data }) => echoes.push(Number(data)));
        window.sent = 0;
        window.pinger = setInterval(() => {
          try {
            peer.send(String(sent));
            sent++;
          } catch {
            /* not open */
          }
        }, 200);
      }, b.peerId),
      'relayed call up',
    );
    const firstPair = await a.page.evaluate(() => peer.getSelectedPair());
    assert.equal(firstPair.local.candidateType, 'relay');

    // The fresh credential comes before the first one expires.
    const refresh = await until(60000, () => a.page.evaluate(() => refreshes[0]), 'a refreshed credential');
    const refreshedAfter = refresh.at - joinedAt;
    assert.ok(refresh.at / 1000 < expiry, 'refreshed before the expiry');
    assert.ok(refresh.expiresAt > expiry, 'a later expiry');
    assert.ok(refresh.at > tokenExpiry, 'refreshed after the join token expired');
    const http = await get(`${server.base}/api/ice-servers?token=${encodeURIComponent(joinToken)}`);
    assert.equal(http.status, 401, 'the HTTP refresh refuses the expired join token: the refresh came over the socket');

    // Past the first credential's expiry, still relaying on the first allocation.
    await sleep(Math.max(0, expiry * 1000 + 15000 - Date.now()));
    const before = await a.page.evaluate(() => ({ sent, echoed: echoes.length }));
    await sleep(2000);
    const later = await a.page.evaluate(() => echoes.length);
    assert.ok(later > before.echoed, 'still relaying after the expiry, on the first allocation');

    // A restart now must allocate anew: with the expired credential it would get 401 and keep the old pair.
    const restartAt = Date.now();
    await a.page.evaluate(() => dispatchEvent(new Event('online')));
    const reconnected = await until(20000, () => a.page.evaluate(() => peerEvents.find((e) => e.name === 'reconnected')), 'reconnected');
    await until(10000, async () => {
      const p = await a.page.evaluate(() => peer.getSelectedPair());
      return p && p.local.candidateType === 'relay' && p.local.port !== firstPair.local.port;
    }, 'a new relayed candidate selected');
    const secondPair = await a.page.evaluate(() => peer.getSelectedPair());
    await a.page.evaluate(() => clearInterval(pinger));
    const total = await a.page.evaluate(() => sent);
    await until(10000, () => a.page.evaluate((n) => echoes.length >= n, total), `all ${total} echoes`);
    const got = await a.page.evaluate(() => ({ echoes, same: peer.channel === firstChannel }));
    assert.deepEqual(got.echoes, Array.from({ length: total }, (_, i) => i), 'every ping echoed once, in order');
    assert.ok(got.same, 'the same data channel');
    console.log(
      `long call on a 60 s credential: refreshed over signaling ${refreshedAfter} ms after the join (expiry at ${expiry * 1000 - joinedAt} ms, ` +
        `join token expired at ${tokenExpiry - joinedAt} ms); ` +
        `relaying ${Date.now() - joinedAt} ms in; restart ${Math.round((restartAt - expiry * 1000) / 1000)} s after the expiry ` +
        `reconnected in ${reconnected.durationMs} ms, relay port ${firstPair.local.port} -> ${secondPair.local.port}; ${total} pings, all echoed`,
    );
  } catch (err) {
    await dumpOnFailure(t, server, browser)(err);
  }
});
