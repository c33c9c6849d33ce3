// Connection outcomes end to end: two Chromium pages report how their peer connection ended, the hub pairs the two
// reports and diagnoses the pair, both pages get `connection-diagnosis` (and `connection-failed` when it failed), and
// the operator reads the count, the path and the reason from `GET /api/outcomes` (admin token). Cases: a pair
// relayed over TURN/UDP, a direct pair on loopback, relay-only with a wrong TURN credential, relay-only with the TURN
// server unreachable, a relayed call that connects and then drops when its way to the relay is cut, and one whose
// relay goes silent and comes back (an interruption it survives). What each page sent is captured (`net.tamper`) to
// check that no address leaves the page.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import fs from 'node:fs';
import {
  CHROMIUM, freePort, get, launchBrowser, skipWithoutChromium, startTraverse, udpRelay, until, within, dumpOnFailure,
} from './lib/harness.js';
import { roomPage } from './lib/pages.js';

const ADMIN = 'outcome-test-admin-token-0123456789';
let server;
let browser;
let metricsPort;
before(async () => {
  if (!fs.existsSync(CHROMIUM)) return;
  metricsPort = await freePort();
  server = await startTraverse({
    extraArgs: ['--set', `web.admin_token=${ADMIN}`, '--metrics', `127.0.0.1:${metricsPort}`],
  });
  browser = await launchBrowser();
});
after(async () => {
  await browser?.close();
  await server?.stop();
});

async function outcomes() {
  const r = await get(`${server.base}/api/outcomes`, { headers: { authorization: `Bearer ${ADMIN}` } });
  assert.equal(r.status, 200, r.body);
  return JSON.parse(r.body);
}

/**
 * Two pages in `room` whose peer connections are relay-only or not (`relay`) and use the ICE servers `keep` (the
 * source of a function of the join's servers, run in the page) makes, with the room options `connect`; A connects
 * to B. Each page records the outcome frames it sent (`sentOutcomes`) and its `connection-diagnosis`,
 * `connection-failed` and `connection-dropped` events (`diagnoses`, `failures`, `drops`).
 */
async function callingPages(t, room, { relay, keep, connect }) {
  const open = async () => {
    const p = await roomPage(browser, server, room, { net: true, relay, connect });
    // Set by the driver: the page's Content-Security-Policy forbids eval in page code.
    await p.page.evaluate(`window.keep = ${keep}`);
    await p.page.evaluate(() => {
      window.sentOutcomes = [];
      net.tamper = (text) => {
        if (JSON.parse(text).type === 'outcome') sentOutcomes.push(text);
        return text;
      };
      window.diagnoses = [];
      window.failures = [];
      window.drops = [];
      room.on('connection-diagnosis', (d) => diagnoses.push(d));
      room.on('connection-failed', (d) => failures.push(d));
      room.on('connection-dropped', (d) => drops.push(d));
    });
    return p;
  };
  const a = await open();
  const b = await open();
  t.after(() => Promise.all([a.page.close().catch(() => {}), b.page.close().catch(() => {})]));
  await until(10000, () => a.page.evaluate((id) => room.peers.has(id), b.peerId), 'A sees B');
  await a.page.evaluate((id) => {
    window.peer = room.connect(id, peerOptions());
  }, b.peerId);
  return { a, b };
}

/** `callingPages`, then each page's first diagnosis, `connection-failed` events and sent outcome frames. */
async function pair(t, room, { relay, keep, outcomeTimeoutMs = 30000 }) {
  const { a, b } = await callingPages(t, room, { relay, keep, connect: { outcomeTimeoutMs } });
  const wait = (p) =>
    until(outcomeTimeoutMs + 20000, () => p.page.evaluate(() => diagnoses.length > 0 && diagnoses), 'diagnosis');
  const [da, db] = await within(outcomeTimeoutMs + 25000, Promise.all([wait(a), wait(b)]), 'both diagnoses');
  const sent = async (p) => (await p.page.evaluate(() => sentOutcomes)).map((s) => JSON.parse(s));
  const failures = (p) => p.page.evaluate(() => failures);
  const run = {
    a: { ...a, diagnosis: da, sent: await sent(a), failures: await failures(a) },
    b: { ...b, diagnosis: db, sent: await sent(b), failures: await failures(b) },
  };
  t.diagnostic(`A sent ${JSON.stringify(run.a.sent.map((f) => f.report))}`);
  t.diagnostic(`A was told ${JSON.stringify(run.a.diagnosis)}`);
  return run;
}

/** No IPv4 address in anything a page sent, except the TURN server's own in its URL. */
function assertNoAddresses(sent) {
  for (const frame of sent) {
    const text = JSON.stringify(frame.report).replace(/(stuns?|turns?):[^"]*/g, '');
    assert.doesNotMatch(text, /\d+\.\d+\.\d+\.\d+/, `an address in ${JSON.stringify(frame)}`);
  }
}

test('a pair relayed over TURN/UDP: connected, counted once with its path and time to connect', { timeout: 90000 }, async (t) => {
  if (skipWithoutChromium(t)) return;
  const before = await outcomes();
  const run = await pair(t, 'outcome-relay', {
    relay: true,
    keep: `(servers) => T.filterIceServers(servers, (u) => u.startsWith('turn:') && u.includes('transport=udp'))`,
  }).catch(dumpOnFailure(t, server, browser));
  for (const side of [run.a, run.b]) {
    assert.equal(side.sent.length, 1, `one report per peer connection: ${JSON.stringify(side.sent)}`);
    assert.equal(side.sent[0].report.outcome, 'connected');
    assert.equal(side.sent[0].report.pair.local.type, 'relay');
    assert.equal(side.sent[0].report.pair.local.relayProtocol, 'udp');
    assertNoAddresses(side.sent);
    const [d] = side.diagnosis;
    assert.equal(d.outcome, 'connected', JSON.stringify(d));
    assert.equal(d.path, 'relay-udp', JSON.stringify(d));
    assert.ok(d.timeToConnectMs > 0 && d.timeToConnectMs < 30000, JSON.stringify(d));
    assert.deepEqual(side.failures, []);
  }
  assert.equal(run.a.diagnosis[0].peer, run.b.peerId);
  assert.equal(run.b.diagnosis[0].peer, run.a.peerId);
  const now = await until(5000, async () => {
    const o = await outcomes();
    return o.connected === before.connected + 1 && o;
  }, 'the connected pair in /api/outcomes');
  assert.equal((now.by_path['relay-udp'] ?? 0) - (before.by_path['relay-udp'] ?? 0), 1, JSON.stringify(now.by_path));
  assert.equal(now.time_to_connect_ms.count, before.time_to_connect_ms.count + 1);
  assert.equal(now.failed, before.failed);
  assert.equal(now.minutes.length, 60);
  // In this minute, or the one before when a minute began between the count and the read.
  assert.ok(now.minutes.at(-1).connected + now.minutes.at(-2).connected >= 1, JSON.stringify(now.minutes.slice(-2)));
});

test('a direct pair on loopback: path direct-host', { timeout: 90000 }, async (t) => {
  if (skipWithoutChromium(t)) return;
  const before = await outcomes();
  const run = await pair(t, 'outcome-direct', { relay: false, keep: '() => []' })
    .catch(dumpOnFailure(t, server, browser));
  assert.equal(run.a.diagnosis[0].path, 'direct-host', JSON.stringify(run.a.diagnosis));
  const now = await until(5000, async () => {
    const o = await outcomes();
    return o.connected === before.connected + 1 && o;
  }, 'the connected pair in /api/outcomes');
  assert.equal((now.by_path['direct-host'] ?? 0) - (before.by_path['direct-host'] ?? 0), 1);
});

test('relay-only with a wrong TURN credential: both report, turn-auth-failed, connection-failed on both pages', { timeout: 90000 }, async (t) => {
  if (skipWithoutChromium(t)) return;
  const before = await outcomes();
  const run = await pair(t, 'outcome-auth', {
    outcomeTimeoutMs: 8000,
    relay: true,
    keep: `(servers) => T.filterIceServers(servers, (u) => u.startsWith('turn:') && u.includes('transport=udp'))
                          .map((s) => ({ ...s, credential: 'not-the-credential' }))`,
  }).catch(dumpOnFailure(t, server, browser));
  for (const side of [run.a, run.b]) {
    assert.equal(side.sent.length, 1, JSON.stringify(side.sent));
    assert.notEqual(side.sent[0].report.outcome, 'connected');
    assert.ok(side.sent[0].report.errors.some((e) => e.code === 401), `a 401 in ${JSON.stringify(side.sent[0].report)}`);
    assertNoAddresses(side.sent);
    assert.equal(side.failures.length, 1, JSON.stringify(side.failures));
    const f = side.failures[0];
    assert.equal(f.reason, 'turn-auth-failed', JSON.stringify(f));
    assert.match(f.message, /refused the credential of both peers \(401\)/);
    assert.equal(f.step, 'discovery');
  }
  const now = await until(5000, async () => {
    const o = await outcomes();
    return o.failed === before.failed + 1 && o;
  }, 'the failed pair in /api/outcomes');
  assert.equal((now.by_reason['turn-auth-failed'] ?? 0) - (before.by_reason['turn-auth-failed'] ?? 0), 1);
  assert.equal(now.recent_failures[0].room, 'outcome-auth');
  assert.equal(now.recent_failures[0].reason, 'turn-auth-failed');
  assert.doesNotMatch(now.recent_failures[0].message, /never reported/, 'both reports arrived');
});

test('relay-only with the TURN server unreachable: relay-only-unreachable on both pages', { timeout: 90000 }, async (t) => {
  if (skipWithoutChromium(t)) return;
  const closed = await freePort({ udp: true });
  const run = await pair(t, 'outcome-unreachable', {
    outcomeTimeoutMs: 8000,
    relay: true,
    keep: `(servers) => {
      const turn = servers.find((s) => s.username);
      const urls = ['turn:127.0.0.1:${closed}?transport=udp', 'turn:127.0.0.1:${closed}?transport=tcp'];
      return [{ urls, username: turn.username, credential: turn.credential }];
    }`,
  }).catch(dumpOnFailure(t, server, browser));
  for (const side of [run.a, run.b]) {
    assert.equal(side.failures.length, 1, JSON.stringify(side.failures));
    assert.equal(side.failures[0].reason, 'relay-only-unreachable', JSON.stringify(side.failures[0]));
    assert.match(side.failures[0].message, /Both peers allow only relayed connections/);
    assert.equal(side.sent[0].report.gathered.relayUdp + side.sent[0].report.gathered.relayTcp, 0);
  }
  const o = await outcomes();
  assert.ok(o.by_reason['relay-only-unreachable'] >= 1, JSON.stringify(o.by_reason));
});

/** The ICE servers a page keeps: only the TURN server over UDP, reached through `relay` (a `udpRelay`). */
function onlyThrough(relay) {
  return `(servers) => {
    const turn = servers.find((s) => s.username);
    return [{ urls: 'turn:127.0.0.1:${relay.port}?transport=udp', username: turn.username, credential: turn.credential }];
  }`;
}

test('a relayed call whose way to the relay is cut drops: both pages report it, relay-lost, connection-dropped', { timeout: 120000 }, async (t) => {
  if (skipWithoutChromium(t)) return;
  const before = await outcomes();
  const proxy = await udpRelay(server.ports.turn);
  t.after(() => proxy.stop());
  const recovery = { graceMs: 500, restartTimeoutMs: 4000, restartDelaysMs: [500], maxRestarts: 2 };
  const { a, b } = await callingPages(t, 'outcome-drop', {
    relay: true,
    connect: { recovery },
    keep: onlyThrough(proxy),
  });
  const connected = (p) => until(30000, () => p.page.evaluate(() => diagnoses.some((d) => d.outcome === 'connected')), 'connected');
  await within(35000, Promise.all([connected(a), connected(b)]), 'both connected').catch(dumpOnFailure(t, server, browser));
  const upPath = await a.page.evaluate(() => diagnoses[0].path);
  assert.equal(upPath, 'relay-udp');

  proxy.stop();
  const dropped = (p) => until(70000, () => p.page.evaluate(() => drops.length > 0 && drops), 'connection-dropped');
  const [da, db] = await within(75000, Promise.all([dropped(a), dropped(b)]), 'both drops')
    .catch(dumpOnFailure(t, server, browser));
  for (const [side, drops] of [[a, da], [b, db]]) {
    const sent = await side.page.evaluate(() => sentOutcomes.map((f) => JSON.parse(f).report));
    t.diagnostic(`sent ${JSON.stringify(sent)}`);
    assert.deepEqual(sent.map((r) => r.outcome), ['connected', 'dropped']);
    const drop = sent[1];
    assert.ok(['ice-disconnected', 'ice-failed'].includes(drop.cause), JSON.stringify(drop));
    assert.equal(drop.pair.local.type, 'relay', 'the path that broke');
    assert.ok(drop.connectedMs > 0 && drop.brokenMs > 0 && drop.restarts >= 1, JSON.stringify(drop));
    assertNoAddresses(sent.map((report) => ({ report })));
    assert.equal(drops.length, 1, JSON.stringify(drops));
    const d = drops[0];
    assert.equal(d.outcome, 'dropped');
    assert.equal(d.reason, 'relay-lost', JSON.stringify(d));
    assert.equal(d.path, 'relay-udp');
    assert.ok(d.connectedMs > 0, JSON.stringify(d));
    assert.match(d.message, /TURN relay that stopped answering/);
    assert.deepEqual(await side.page.evaluate(() => failures), [], 'a drop is not a failure to connect');
  }
  const now = await until(5000, async () => {
    const o = await outcomes();
    return o.dropped === before.dropped + 1 && o;
  }, 'the drop in /api/outcomes');
  assert.equal((now.dropped_by_reason['relay-lost'] ?? 0) - (before.dropped_by_reason['relay-lost'] ?? 0), 1);
  assert.equal(now.failed, before.failed, 'not counted as a failure to connect');
  assert.equal(now.recent_failures[0].outcome, 'dropped');
  assert.equal(now.recent_failures[0].room, 'outcome-drop');
  assert.ok(now.minutes.at(-1).dropped + now.minutes.at(-2).dropped >= 1, JSON.stringify(now.minutes.slice(-2)));
});

test('a relayed call whose relay goes silent for a while and comes back: both report the interruption, recovered', { timeout: 120000 }, async (t) => {
  if (skipWithoutChromium(t)) return;
  const before = await outcomes();
  const proxy = await udpRelay(server.ports.turn);
  t.after(() => proxy.stop());
  const recovery = { graceMs: 500, restartTimeoutMs: 8000, restartDelaysMs: [500], maxRestarts: 4 };
  const { a, b } = await callingPages(t, 'outcome-recover', {
    relay: true,
    connect: { recovery },
    keep: onlyThrough(proxy),
  });
  const diagnosed = (p, outcome) =>
    until(60000, () => p.page.evaluate((o) => diagnoses.find((d) => d.outcome === o) ?? false, outcome), outcome);
  await within(35000, Promise.all([diagnosed(a, 'connected'), diagnosed(b, 'connected')]), 'both connected')
    .catch(dumpOnFailure(t, server, browser));
  // Silence until both sides' recovery is at work (each then reports the interruption), then the way back.
  proxy.drop = 1;
  const restarting = (p) =>
    until(30000, () => p.page.evaluate(() => ['restarting', 'backoff'].includes(peer._recovery?.state)), 'restarting');
  await within(35000, Promise.all([restarting(a), restarting(b)]), 'both restart');
  proxy.drop = 0;
  const [ra, rb] = await within(70000, Promise.all([diagnosed(a, 'recovered'), diagnosed(b, 'recovered')]), 'both recovered')
    .catch(dumpOnFailure(t, server, browser));
  for (const [side, d] of [[a, ra], [b, rb]]) {
    const sent = await side.page.evaluate(() => sentOutcomes.map((f) => JSON.parse(f).report));
    t.diagnostic(`sent ${JSON.stringify(sent.map((r) => [r.outcome, r.cause, r.brokenMs, r.restarts]))}`);
    assert.deepEqual(sent.map((r) => r.outcome), ['connected', 'recovered']);
    assert.ok(sent[1].brokenMs > 0 && sent[1].pair?.local?.type === 'relay', JSON.stringify(sent[1]));
    assert.equal(d.reason, 'recovered', JSON.stringify(d));
    assert.ok(d.recoveryMs > 0, JSON.stringify(d));
    assert.match(d.message, /recovered by itself in \d+ ms/);
    assert.deepEqual(await side.page.evaluate(() => [failures.length, drops.length]), [0, 0]);
  }
  const now = await until(5000, async () => {
    const o = await outcomes();
    return o.recovered === before.recovered + 1 && o;
  }, 'the interruption in /api/outcomes');
  assert.equal(now.dropped, before.dropped);
  assert.equal(now.failed, before.failed);
  assert.equal(now.time_to_recover_ms.count, before.time_to_recover_ms.count + 1);
});

// Last: what the operator scrapes says what the pages reported — the same counts as /api/outcomes, by path and by
// reason, and a time-to-connect observation per connected pair.
test('the outcomes above are in /metrics, by path and by reason', { timeout: 30000 }, async (t) => {
  if (skipWithoutChromium(t)) return;
  const o = await outcomes();
  const r = await get(`http://127.0.0.1:${metricsPort}/metrics`);
  assert.equal(r.status, 200);
  const value = (name, labels) => {
    const line = r.body.split('\n').find((l) => l.startsWith(`${name}{`) &&
      Object.entries(labels).every(([k, v]) => l.includes(`${k}="${v}"`)));
    return line ? Number(line.split(' ').at(-1)) : 0;
  };
  assert.ok(o.connected >= 2 && o.failed >= 2, JSON.stringify(o));
  for (const [path, n] of Object.entries(o.by_path)) {
    assert.equal(value('traverse_connections_total', { outcome: 'connected', path }), n, `connected via ${path}`);
  }
  for (const reason of ['turn-auth-failed', 'relay-only-unreachable']) {
    assert.equal(value('traverse_connection_failures_total', { reason }), o.by_reason[reason], reason);
  }
  assert.ok(o.dropped >= 1 && o.recovered >= 1, JSON.stringify(o));
  for (const [cause, n] of Object.entries(o.recovered_by_cause)) {
    assert.equal(value('traverse_connection_recoveries_total', { cause }), n, cause);
  }
  for (const reason of ['relay-lost', 'peer-lost', 'path-lost']) {
    assert.equal(value('traverse_connection_drops_total', { reason }), o.dropped_by_reason[reason] ?? 0, reason);
  }
  const ttc = r.body.split('\n').find((l) => l.startsWith('traverse_connection_time_to_connect_seconds_count'));
  assert.ok(ttc && Number(ttc.split(' ').at(-1)) === o.time_to_connect_ms.count, `${ttc} vs ${o.time_to_connect_ms.count}`);
});
