// Losing a node of a cluster during a relayed call (issues 9 and 11; docs/sdk.md "Calls that survive", docs/scaling.md):
// a real redis-server and two `traverse serve --redis` nodes on loopback sharing one TURN secret. Page A joins through
// node 1, page B through node 2 (each gives the SDK both nodes' signaling URLs, its own first); each relays only
// through the first TURN server its iceServers name — its own node's, as the registry orders them — so A's relay is
// on node 1. A pings B every 100 ms on a reliable data channel, B echoes. Then node 1 is killed (SIGKILL: no drain,
// no goodbye). A's SDK resumes its session on node 2 (the next URL of its list; node 2 takes the room over from the
// Redis journal), and restarts ICE with fresh iceServers asked over the socket (`ice-servers`), which node 2 answers
// with itself first: A's new relay is on node 2. Asserted: the same Peer and data channel, every ping echoed once
// and in order (nothing lost), A's relay on node 2 afterwards; printed: the time from the kill to the first echo of a
// ping sent after it. Skipped without redis-server (a failure under TRAVERSE_REQUIRE_PEERS=1).
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { execFileSync, spawn } from 'node:child_process';
import fs from 'node:fs';
import net from 'node:net';
import { CHROMIUM, freePort, launchBrowser, skipWithoutChromium, startTraverse, until, within } from './lib/harness.js';
import { roomPage } from './lib/pages.js';

const hasRedis = (() => {
  try {
    execFileSync('redis-server', ['--version'], { stdio: 'pipe' });
    return true;
  } catch {
    return false;
  }
})();

/** A redis-server on a free loopback port, nothing persisted; stopped by PID. */
async function startRedis() {
  const port = await freePort();
  const child = spawn('redis-server', ['--port', String(port), '--bind', '127.0.0.1', '--save', '', '--appendonly', 'no'], {
    stdio: 'ignore',
  });
  await until(10000, () => new Promise((resolve) => {
    const s = net.connect(port, '127.0.0.1', () => {
      s.end();
      resolve(true);
    });
    s.on('error', () => resolve(false));
  }), `redis-server on ${port}`);
  return { url: `redis://127.0.0.1:${port}`, stop: () => child.kill('SIGKILL') };
}

let redis;
let nodes = [];
let browser;
before(async () => {
  if (!fs.existsSync(CHROMIUM) || !hasRedis) return;
  redis = await startRedis();
  // One TURN secret for the cluster: a credential minted by either node is accepted by both.
  const secret = 'cluster-test-secret-0123456789';
  for (let i = 0; i < 2; i++) {
    nodes.push(await startTraverse({ extraArgs: ['--redis', redis.url, '--secret', secret] }));
  }
  browser = await launchBrowser();
});
after(async () => {
  await browser?.close();
  await Promise.all(nodes.map((n) => n.stop()));
  redis?.stop();
});

const wss = (node) => `wss://127.0.0.1:${node.ports.mux}/ws`;

test('a node killed during a relayed call: the peer on it resumes on the other node and relays through it, nothing lost', { timeout: 90000 }, async (t) => {
  if (skipWithoutChromium(t)) return;
  if (!hasRedis) {
    const why = 'SKIP: redis-server not installed (apt-get install redis-server)';
    if (process.env.TRAVERSE_REQUIRE_PEERS === '1') throw new Error(`${why}, and TRAVERSE_REQUIRE_PEERS=1`);
    console.log(why);
    return t.skip(why);
  }
  const [n1, n2] = nodes;
  const turnOf = (node) => `:${node.ports.turn}?transport=udp`;
  // The registry is read every heartbeat: wait until a join on node 1 is handed node 2's TURN too.
  const a = await roomPage(browser, n1, 'cluster', { relay: true, connect: { url: [wss(n1), wss(n2)] } });
  await until(15000, () => a.page.evaluate(async (want) => {
    const probe = await T.connect({ room: `probe-${Math.random()}`, url: room.url });
    const seen = JSON.stringify(probe.iceServers).includes(want);
    await probe.leave();
    return seen;
  }, turnOf(n2)), 'node 1 names node 2 in iceServers');
  const b = await roomPage(browser, n2, 'cluster', { relay: true, echo: true, connect: { url: [wss(n2), wss(n1)] } });
  // Each peer relays through the first TURN server its iceServers name (its own node's, from the registry's order).
  const firstTurn = `(servers) => {
    const s = servers.find((x) => x.username);
    return s ? [{ ...s, urls: [].concat(s.urls).filter((u) => u.startsWith('turn:') && u.includes('transport=udp')).slice(0, 1) }] : servers;
  }`;
  for (const p of [a, b]) await p.page.evaluate(`window.keep = ${firstTurn}`);
  try {
    await until(10000, () => a.page.evaluate((id) => room.peers.has(id), b.peerId), 'A sees B');
    await within(30000, a.page.evaluate(async (bId) => {
      const peer = room.connect(bId, peerOptions());
      window.peer = peer;
      window.events = [];
      for (const name of ['reconnecting', 'reconnected', 'recovery-failed']) {
        peer.on(name, (d) => events.push({ name, at: Date.now(), ...d }));
      }
      for (const name of ['reconnecting', 'resumed', 'joined', 'ice-servers']) {
        room.on(name, (d) => events.push({ name: `room-${name}`, at: Date.now(), code: d.code }));
      }
      await peer.ready;
      window.firstChannel = peer.channel;
      window.echoes = [];
      window.sentAt = [];
      peer.on('message', ({ data }) => echoes.push({ n: Number(data), at: Date.now() }));
      window.pinger = setInterval(() => {
        try {
          peer.send(String(sentAt.length));
          sentAt.push(Date.now());
        } catch {
          /* not open: not sent */
        }
      }, 100);
    }, b.peerId), 'relayed call A -> B');
    await until(10000, () => a.page.evaluate(() => echoes.length >= 20), '20 echoes');
    const before = await a.page.evaluate(() => peer.getSelectedPair());
    assert.ok(before.local.url?.includes(turnOf(n1)), `A relays through node 1: ${JSON.stringify(before.local)}`);

    const killedAt = Date.now();
    process.kill(n1.pid, 'SIGKILL');
    const echoAt = await within(45000, a.page.evaluate((from) => new Promise((resolve) => {
      const check = setInterval(() => {
        const e = echoes.find((x) => sentAt[x.n] >= from);
        if (e) {
          clearInterval(check);
          resolve(e.at);
        }
      }, 20);
    }), killedAt), 'an echo of a ping sent after the kill');

    await a.page.evaluate(() => clearInterval(pinger));
    const total = await a.page.evaluate(() => sentAt.length);
    await until(15000, () => a.page.evaluate((n) => echoes.length >= n, total), `all ${total} echoes`);
    const got = await a.page.evaluate(() => ({
      echoes: echoes.map((e) => e.n),
      same: peer.channel === firstChannel && room.connections.get(peer.peerId) === peer,
      url: room.url,
      events,
    }));
    const afterPair = await a.page.evaluate(() => peer.getSelectedPair());
    const resumed = got.events.find((e) => e.name === 'room-resumed');
    console.log(`node killed during a relayed call: echoes again ${echoAt - killedAt} ms after the kill; `
      + `A resumed on node 2 at +${resumed ? resumed.at - killedAt : '?'} ms; ${total} pings, lost ${total - new Set(got.echoes).size}; `
      + `A's relay ${before.local.url} then ${afterPair.local?.url}; events: `
      + got.events.filter((e) => e.at >= killedAt).map((e) => `${e.name}${e.cause ? `(${e.cause}${e.durationMs !== undefined ? ` ${e.durationMs} ms` : ''})` : ''} +${e.at - killedAt}`).join(', '));
    assert.deepEqual(got.echoes, Array.from({ length: total }, (_, i) => i), 'every ping echoed once, in order');
    assert.ok(got.same, 'the same Peer and data channel');
    assert.equal(got.url, wss(n2), 'A signals through node 2 now');
    assert.ok(resumed, 'A resumed its session (same peer id) on node 2');
    assert.ok(afterPair.local?.url?.includes(turnOf(n2)), `A relays through node 2 now: ${JSON.stringify(afterPair.local)}`);
  } catch (err) {
    console.log(`--- browser console ---\n${browser.logs.slice(-60).join('\n')}`);
    for (const [i, n] of nodes.entries()) console.log(`--- node ${i + 1} log ---\n${n.log().split('\n').slice(-40).join('\n')}`);
    throw err;
  }
});
