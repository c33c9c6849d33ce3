// The troubleshooter at /check served by the real binary: it runs every check in headless Chromium on loopback,
// reaches a verdict in bounded time, relays a test call over at least TURN/UDP, shares the report (POST
// /api/reports), and the stored report reads back at /check/<id> after a restart on the same data directory. The
// operator's list needs the admin token. The verdict rules are also fed synthetic reports (UDP blocked, symmetric
// NAT, no signaling) to check the plain-words advice.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import crypto from 'node:crypto';
import dgram from 'node:dgram';
import { CHROMIUM, launchBrowser, skipWithoutChromium, startTraverse, freePort, get, dumpOnFailure } from './lib/harness.js';

/**
 * One STUN Binding request (RFC 8489) to 127.0.0.1:`port` from a fresh UDP socket, resent every 500 ms up to 5
 * times; resolves with the XOR-MAPPED-ADDRESS of the success response, rejects on an error response or silence.
 */
function stunBinding(port) {
  const id = crypto.randomBytes(12);
  const request = Buffer.concat([Buffer.from([0x00, 0x01, 0x00, 0x00, 0x21, 0x12, 0xa4, 0x42]), id]);
  const socket = dgram.createSocket('udp4');
  let timer;
  return new Promise((resolve, reject) => {
    let tries = 0;
    const send = () => (tries++ < 5 ? socket.send(request, port, '127.0.0.1') : reject(new Error('no STUN answer')));
    timer = setInterval(send, 500);
    socket.on('message', (m) => {
      if (m.length < 20 || !m.subarray(8, 20).equals(id)) return;
      if (m.readUInt16BE(0) !== 0x0101) return reject(new Error(`STUN error response 0x${m.readUInt16BE(0).toString(16)}`));
      for (let i = 20; i + 4 <= m.length; ) {
        const [type, len] = [m.readUInt16BE(i), m.readUInt16BE(i + 2)];
        if (type === 0x0020 && len >= 8) {
          const xport = m.readUInt16BE(i + 6) ^ 0x2112;
          const a = m.readUInt32BE(i + 8) ^ 0x2112a442;
          return resolve({ address: [24, 16, 8, 0].map((b) => (a >>> b) & 255).join('.'), port: xport });
        }
        i += 4 + Math.ceil(len / 4) * 4;
      }
      reject(new Error('no XOR-MAPPED-ADDRESS'));
    });
    send();
  }).finally(() => {
    clearInterval(timer);
    socket.close();
  });
}

const ADMIN = 'check-test-admin-token-0123456789';
let dataDir;
let server;
let browser;
let altStun;

const serverArgs = () => [
  '--set', `web.admin_token=${ADMIN}`,
  '--set', `web.data_dir=${dataDir}`,
  // A second UDP port: a second STUN address for the NAT-mapping comparison (given to the page as #stun=).
  '--udp', `127.0.0.1:${altStun}`,
];

before(async () => {
  if (!fs.existsSync(CHROMIUM)) return;
  dataDir = fs.mkdtempSync(path.join(os.tmpdir(), 'traverse-check-'));
  altStun = await freePort({ udp: true });
  server = await startTraverse({ extraArgs: serverArgs() });
  browser = await launchBrowser();
});
after(async () => {
  await browser?.close();
  await server?.stop();
  if (dataDir) fs.rmSync(dataDir, { recursive: true, force: true });
});

/** POST with a body (the harness has GET only). */
async function post(url, body, headers = {}) {
  const r = await fetch(url, { method: 'POST', body, headers: { 'content-type': 'application/json', ...headers } });
  return { status: r.status, body: await r.text() };
}

test('/check: verdict, relay per transport, share, read back after a restart, admin list', { timeout: 180000 }, async (t) => {
  if (skipWithoutChromium(t)) return;
  await (async () => {
    const page = await browser.newPage();
    t.after(() => page.close().catch(() => {}));
    const started = Date.now();
    await page.goto(`${server.base}/check#stun=stun:127.0.0.1:${altStun}`);
    await page.waitForFunction(() => document.body.dataset.state === 'done', null, { timeout: 100000 });
    const elapsed = Date.now() - started;
    const report = await page.evaluate(() => JSON.parse(document.getElementById('raw').textContent));
    console.log(`checks done in ${elapsed} ms; verdict: ${report.verdict.level}: ${report.verdict.headline}`);
    console.log(report.verdict.advice.map((a) => `  - ${a.text}${a.term ? ` (${a.term})` : ''}`).join('\n'));
    console.log(`  loopback: ${report.loopback.map((l) => `${l.label} ${l.ok ? 'ok' : `FAIL ${l.error}`}`).join('; ')}`);
    console.log(`  nat: ${report.nat.mapping} ${JSON.stringify(report.nat.observations)}`);

    // A verdict in plain words.
    const headline = await page.textContent('#headline');
    assert.ok(headline.length > 20, `headline: ${headline}`);
    assert.ok(['ok', 'warn', 'fail'].includes(await page.getAttribute('#verdict', 'data-level')));

    // Signaling over wss on the single port, with ping/pong round trips.
    assert.equal(report.signaling.ok, true, JSON.stringify(report.signaling));
    assert.equal(report.signaling.joined, true);
    assert.equal(report.signaling.url, `wss://127.0.0.1:${server.ports.mux}/ws`);
    assert.equal(report.signaling.rttMs.samples, 5);
    assert.equal(report.iceServers.ok, true);
    assert.ok(!JSON.stringify(report).includes('"credential"'), 'no TURN credential in the report');

    // One gathering per ICE URL; TURN URLs yield relay candidates of their own protocol.
    const urls = report.iceServers.servers.flatMap((s) => [].concat(s.urls));
    assert.equal(report.gathering.length, urls.length);
    for (const g of report.gathering.filter((x) => x.url.startsWith('turn'))) {
      assert.ok(g.ok, `relay candidate from ${g.url}: ${JSON.stringify(g)}`);
    }
    const udpGather = report.gathering.find((g) => g.url.startsWith('turn:') && g.url.endsWith('transport=udp'));
    assert.deepEqual(udpGather.relayProtocols, ['udp']);

    // The relay loopback per transport: at least UDP works, over a relay/udp pair, 20 echoes.
    const udp = report.loopback.find((l) => l.transport === 'udp');
    assert.ok(udp?.ok, `TURN/UDP loopback: ${JSON.stringify(udp)}`);
    assert.equal(udp.echoed, 20);
    // The loss count on an unreliable channel: loopback loses nothing (a datagram or two under load at most).
    assert.equal(udp.loss?.sent, 100, JSON.stringify(udp));
    assert.ok(udp.loss.received >= 95, JSON.stringify(udp.loss));
    assert.equal(report.loopback.find((l) => l.transport === 'tcp')?.loss, undefined, 'not counted over TCP');
    assert.equal(udp.pair.local.type, 'relay');
    assert.equal(udp.pair.local.relayProtocol, 'udp');
    assert.equal(await page.getAttribute('#loopback tr[data-transport=udp]', 'data-ok'), 'true');
    assert.deepEqual(
      [...new Set(report.loopback.map((l) => l.transport))].sort(),
      ['tcp', 'tls', 'udp'],
      'one loopback per TURN transport',
    );

    // NAT: two STUN addresses (same IP, two ports) compared; on loopback there is no translation, so the mapping
    // cannot be port-dependent. Without srflx candidates (browser policy) the page must say inconclusive.
    assert.ok(
      ['endpoint-independent-or-address-dependent', 'inconclusive'].includes(report.nat.mapping),
      JSON.stringify(report.nat),
    );
    assert.equal(report.nat.servers.length, 2);

    // Share with support.
    await page.click('#share');
    const link = await (await page.waitForSelector('#share-link', { timeout: 10000 })).getAttribute('href');
    const m = /\/check\/([0-9a-f]{32})$/.exec(link);
    assert.ok(m, `link ${link}`);
    const id = m[1];
    assert.ok(fs.existsSync(path.join(dataDir, `${id}.json`)), 'one JSON file per report in the data dir');

    // Restart on the same data directory (new ports): the report survives.
    await server.stop();
    server = await startTraverse({ extraArgs: serverArgs() });
    const stored = await browser.newPage();
    t.after(() => stored.close().catch(() => {}));
    await stored.goto(`${server.base}/check/${id}`);
    await stored.waitForFunction(() => document.body.dataset.state === 'stored', null, { timeout: 15000 });
    assert.equal(await stored.textContent('#headline'), report.verdict.headline);
    assert.match(await stored.textContent('#mode'), new RegExp(`Stored report ${id}`));
    assert.equal(await stored.isHidden('#actions'), true, 'read-only: no run/share buttons');
    assert.equal(await stored.getAttribute('#loopback tr[data-transport=udp]', 'data-ok'), 'true');
    const api = await get(`${server.base}/api/reports/${id}`);
    assert.equal(api.status, 200);
    const body = JSON.parse(api.body);
    assert.equal(body.id, id);
    assert.deepEqual(body.report.loopback, report.loopback);

    // The operator's list: 401 JSON without the token, 401 with a wrong one, the id with the right one.
    const none = await get(`${server.base}/api/reports`);
    assert.equal(none.status, 401);
    assert.deepEqual(
      (({ ok, code }) => ({ ok, code }))(JSON.parse(none.body)),
      { ok: false, code: 'admin-token-required' },
    );
    const wrong = await get(`${server.base}/api/reports`, { headers: { authorization: 'Bearer nope-nope-nope-nope' } });
    assert.equal(wrong.status, 401);
    assert.equal(JSON.parse(wrong.body).code, 'admin-token-invalid');
    const list = await get(`${server.base}/api/reports`, { headers: { authorization: `Bearer ${ADMIN}` } });
    assert.equal(list.status, 200, list.body);
    const listed = JSON.parse(list.body);
    assert.equal(listed.ok, true);
    assert.ok(listed.reports.some((r) => r.id === id && r.headline === report.verdict.headline), list.body);
  })().catch(dumpOnFailure(t, server, browser));
});

test('/api/reports refuses bad input with JSON errors', { timeout: 30000 }, async (t) => {
  if (skipWithoutChromium(t)) return;
  const base = server.httpBase;
  const notJson = await post(`${base}/api/reports`, '{nope');
  assert.equal(notJson.status, 400);
  assert.equal(JSON.parse(notJson.body).code, 'bad-json');
  const big = await post(`${base}/api/reports`, JSON.stringify({ pad: 'x'.repeat(70 * 1024) }));
  assert.equal(big.status, 413);
  assert.deepEqual(Object.keys(JSON.parse(big.body)).sort(), ['code', 'message', 'ok']);
  for (const bad of ['..%2F..%2Fetc%2Fpasswd', 'ABCDEF0123456789ABCDEF0123456789', '0'.repeat(31), '0'.repeat(32)]) {
    const r = await get(`${base}/api/reports/${bad}`);
    assert.equal(r.status, 404, bad);
    assert.equal(JSON.parse(r.body).code, 'report-not-found', bad);
  }
  // Rate limit: a burst of 5 per address, then 429 (the first test already used one, the 400/413 above two).
  let limited;
  for (let i = 0; i < 6 && !limited; i++) {
    const r = await post(`${base}/api/reports`, JSON.stringify({ i }));
    if (r.status === 429) limited = JSON.parse(r.body);
    else assert.equal(r.status, 201, r.body);
  }
  assert.equal(limited?.code, 'rate-limited');
});

test('verdict rules in plain words (synthetic reports)', { timeout: 30000 }, async (t) => {
  if (skipWithoutChromium(t)) return;
  const page = await browser.newPage();
  t.after(() => page.close().catch(() => {}));
  await page.goto(`${server.base}/healthz`);
  const out = await page.evaluate(async () => {
    const C = await import('/check/check.js');
    const sig = { ok: true, joined: true, rttMs: { median: 40 } };
    const loop = (transport, ok, port) => ({ url: `x:${port}`, label: `TURN :${port}`, transport, ok, echoed: ok ? 20 : 0 });
    const udpBlocked = C.verdict({
      webrtc: true, signaling: sig, gathering: [],
      loopback: [loop('udp', false, 3478), loop('tcp', true, 3478), loop('tls', true, 443), loop('tls', true, 5349)],
      nat: { mapping: 'inconclusive', why: 'no-srflx' },
    });
    const symmetric = C.verdict({
      webrtc: true, signaling: sig, gathering: [{ url: 'stun:a', label: 'STUN :3478', types: { srflx: 2 } }],
      loopback: [loop('udp', true, 3478)], nat: { mapping: 'address-and-port-dependent' },
    });
    // The loopback crosses the user's link four times: 300 ms there is a 150 ms link round trip (fair), 900 ms a
    // 450 ms one (bad, and a warning).
    const timed = (ms) => ({ ...loop('udp', true, 3478), rttMs: { min: ms, median: ms, max: ms, samples: 20 } });
    const relayFair = C.verdict({ webrtc: true, signaling: sig, gathering: [], loopback: [timed(300)] });
    const relayBad = C.verdict({ webrtc: true, signaling: sig, gathering: [], loopback: [timed(900)] });
    // A geostationary satellite link: the signaling ping alone takes 600 ms, the relay's brought down to the link 610.
    const satellite = C.verdict({
      webrtc: true, signaling: { ...sig, rttMs: { median: 600 } }, gathering: [], loopback: [timed(1220)],
    });
    const noSignal = C.verdict({ webrtc: true, signaling: { ok: false, status: { http: 429, code: 'too-many-connections' } } });
    // Loss over four crossings: 3 of 100 is about 0.8 % each way (good, nothing said in the headline); 34 of 100
    // is about 9.9 % (bad: a warning, and the headline says so).
    const lost = (n) => ({ ...loop('udp', true, 3478), loss: { sent: 100, received: 100 - n, percent: n } });
    const lossGood = C.verdict({ webrtc: true, signaling: sig, gathering: [], loopback: [lost(3)] });
    const lossBad = C.verdict({ webrtc: true, signaling: sig, gathering: [], loopback: [lost(34)] });
    const ip = (address, port) => ({ type: 'srflx', protocol: 'udp', address, port, networkId: '1' });
    const a = { host: '192.0.2.1', port: 3478 };
    const b = { host: '198.51.100.1', port: 3478 };
    const b2 = { host: '192.0.2.1', port: 3479 };
    return {
      udpBlocked, symmetric, noSignal, relayFair, relayBad, satellite, lossGood, lossBad,
      eim: C.analyseMapping([a, b], true, true, [ip('203.0.113.5', 4000)]).mapping,
      adm: C.analyseMapping([a, b], true, true, [ip('203.0.113.5', 4000), ip('203.0.113.5', 4001)]).mapping,
      apdm: C.analyseMapping([a, b2], true, true, [ip('203.0.113.5', 4000), ip('203.0.113.5', 4001)]).mapping,
      sameIp: C.analyseMapping([a, b2], true, true, [ip('203.0.113.5', 4000)]).mapping,
      oneAnswered: C.analyseMapping([a, b], true, false, [ip('203.0.113.5', 4000)]).mapping,
      twoNetworks: C.analyseMapping([a, b], true, true,
        [ip('203.0.113.5', 4000), { ...ip('198.51.100.9', 5000), networkId: '2' }]).mapping,
      stunUrl: C.parseIceUrl('stun:[2001:db8::1]:3478'),
      turnsUrl: C.parseIceUrl('turns:turn.example.com?transport=tcp'),
      endpoints: C.stunEndpoints(C.splitIceServers([
        { urls: ['stun:h:3478'] }, { urls: ['turn:h:3478?transport=udp', 'turn:h:3478?transport=tcp', 'turns:h:443?transport=tcp'] },
      ])).map((e) => e.url),
    };
  });
  assert.equal(out.udpBlocked.level, 'warn');
  // The doctor's summary in the same words (crates/doctor/src/verdict.rs, no_udp_summary).
  assert.equal(out.udpBlocked.headline,
    'UDP is blocked on this network: every call will go through the TURN relay, over TLS on port 443.');
  assert.equal(out.symmetric.level, 'ok');
  // Every peer kind that will need the relay: port-restricted cone peers too, not only other symmetric NATs.
  assert.ok(out.symmetric.advice.some((a) => /different public port per destination \(symmetric NAT\)/.test(a.text) &&
    a.text.includes('calls with peers behind a port-restricted NAT (most home routers) or a symmetric NAT ' +
      '(many mobile and corporate networks) need the TURN relay') &&
    /address-and-port-dependent/.test(a.term)), JSON.stringify(out.symmetric));
  const relayAdvice = (v) => v.advice.find((a) => a.text.startsWith('Round trip through the relay'));
  assert.match(relayAdvice(out.relayFair)?.text ?? '', /300 ms for the test call.*about 150 ms for your link \(fair\)/);
  assert.equal(out.relayFair.level, 'ok');
  assert.match(relayAdvice(out.relayBad)?.text ?? '', /about 450 ms for your link \(bad\)/);
  assert.equal(out.relayBad.level, 'warn');
  // A long round trip is said in the headline, with what it does to a call (as the doctor says it), not "choppy".
  assert.doesNotMatch(out.relayFair.headline, /round trip/);
  assert.match(out.relayBad.headline,
    / But the round trip to the server is long \(about 450 ms\): expect a delay that makes people talk over each other\.$/);
  assert.match(out.satellite.headline, / But the round trip to the server is long \(about 610 ms\): expect a delay/);
  assert.equal(out.satellite.level, 'warn');
  assert.doesNotMatch(out.satellite.headline, /choppy/);
  const lossAdvice = (v) => v.advice.find((a) => a.text.startsWith('Lost through the relay'));
  assert.match(lossAdvice(out.lossGood)?.text ?? '', /3 of 100 test packets \(3 %\).*about 0\.8 % each way for your link \(good\)/);
  assert.doesNotMatch(out.lossGood.headline, /loses packets/);
  assert.match(lossAdvice(out.lossBad)?.text ?? '', /about 9\.9 % each way for your link \(bad\)\. Expect choppy audio and video\./);
  assert.match(out.lossBad.headline, / But this network loses packets \(about 9\.9 % each way\): expect choppy audio and video\.$/);
  assert.equal(out.lossBad.level, 'warn');
  assert.equal(out.noSignal.level, 'fail');
  assert.match(out.noSignal.advice[0].text, /HTTP 429 \(too-many-connections\)/);
  assert.equal(out.eim, 'endpoint-independent');
  assert.equal(out.adm, 'address-dependent-or-stricter');
  assert.equal(out.apdm, 'address-and-port-dependent');
  assert.equal(out.sameIp, 'endpoint-independent-or-address-dependent');
  assert.equal(out.oneAnswered, 'inconclusive');
  assert.equal(out.twoNetworks, 'endpoint-independent', 'two interfaces are not two mappings');
  assert.deepEqual([out.stunUrl.host, out.stunUrl.port, out.stunUrl.transport], ['[2001:db8::1]', 3478, 'udp']);
  assert.deepEqual([out.turnsUrl.port, out.turnsUrl.transport, out.turnsUrl.label], [5349, 'tcp', 'TURN/TLS']);
  assert.deepEqual(out.endpoints, ['stun:h:3478'], 'the TURN/UDP port doubling as STUN is the same address here');
});

test('dead ICE addresses cost a bounded time, never a hung page', { timeout: 60000 }, async (t) => {
  if (skipWithoutChromium(t)) return;
  const page = await browser.newPage();
  t.after(() => page.close().catch(() => {}));
  await page.goto(`${server.base}/healthz`);
  // Port 9 (discard) on loopback: nothing listens, UDP and TCP alike.
  const out = await page.evaluate(async () => {
    const C = await import('/check/check.js');
    const [entry] = C.splitIceServers([{ urls: ['turn:127.0.0.1:9?transport=tcp'], username: 'u', credential: 'p' }]);
    const t0 = performance.now();
    const [g, l] = await Promise.all([C.checkGathering(entry), C.checkLoopback(entry)]);
    return { g, l, ms: performance.now() - t0, limits: C.TIMEOUTS };
  });
  assert.equal(out.g.ok, false);
  assert.equal(out.l.ok, false);
  assert.ok(out.l.error, JSON.stringify(out.l));
  assert.ok(out.ms < out.limits.loopbackConnect + 3000, `took ${out.ms} ms`);
  const v = await page.evaluate(async (l) => (await import('/check/check.js')).verdict({
    webrtc: true, signaling: { ok: true, joined: true }, gathering: [], loopback: [l],
  }), out.l);
  assert.equal(v.level, 'fail', JSON.stringify(v));
});

test('an RFC 5780 alternate (stun.other_address) is handed out, so /check compares two addresses without #stun=',
  { timeout: 120000 }, async (t) => {
    if (skipWithoutChromium(t)) return;
    // 127.0.0.0/8 is all loopback on Linux: the alternate IP is 127.0.0.2, on a port of its own.
    const otherPort = await freePort({ udp: true });
    const other = `127.0.0.2:${otherPort}`;
    const alt = await startTraverse({ extraArgs: ['--other-address', other] });
    t.after(() => alt.stop());
    const page = await browser.newPage();
    t.after(() => page.close().catch(() => {}));
    await (async () => {
      const api = await get(`${alt.base}/api/ice-servers`);
      const urls = JSON.parse(api.body).iceServers.flatMap((s) => [].concat(s.urls));
      assert.ok(urls.includes(`stun:${other}`), `the alternate as a STUN URL: ${urls}`);
      await page.goto(`${alt.base}/check`);
      await page.waitForFunction(() => document.body.dataset.state === 'done', null, { timeout: 100000 });
      const report = await page.evaluate(() => JSON.parse(document.getElementById('raw').textContent));
      console.log(`  nat: ${report.nat.mapping} (${report.nat.why}) from ${report.nat.servers.join(', ')}`);
      // Two addresses on two IPs compared; without the alternate the page had one and said 'one-address'.
      assert.equal(report.nat.servers.length, 2, JSON.stringify(report.nat));
      assert.ok(report.nat.servers.includes(`stun:${other}`), JSON.stringify(report.nat));
      assert.notEqual(report.nat.why, 'one-address', JSON.stringify(report.nat));
      // Both addresses answered on their own, so the gathering of the alternate's URL yields its candidate type too.
      const g = report.gathering.find((x) => x.url === `stun:${other}`);
      assert.ok(g, `the alternate is gathered against: ${JSON.stringify(report.gathering.map((x) => x.url))}`);
    })().catch(dumpOnFailure(t, alt, browser));
  });

test('a server with one address serves a second STUN port (natProbes), so /check compares two ports without #stun=',
  { timeout: 120000 }, async (t) => {
    if (skipWithoutChromium(t)) return;
    // An explicit free port: the default (the first UDP port + 1, config.rs' unit test) is not reserved here, and a
    // concurrent server could hold it.
    const second = await freePort({ udp: true });
    const one = await startTraverse({ extraArgs: ['--set', `stun.second_port=${second}`] });
    t.after(() => one.stop());
    const off = await startTraverse({ extraArgs: ['--set', 'stun.second_port=0'] });
    t.after(() => off.stop());
    const page = await browser.newPage();
    t.after(() => page.close().catch(() => {}));
    await (async () => {
      const api = JSON.parse((await get(`${one.base}/api/ice-servers`)).body);
      const probe = `stun:127.0.0.1:${second}`;
      assert.deepEqual(api.natProbes, [probe], JSON.stringify(api));
      const urls = api.iceServers.flatMap((s) => [].concat(s.urls));
      assert.ok(!urls.includes(probe), `calls never gather against it: ${urls}`);
      assert.deepEqual(JSON.parse((await get(`${off.base}/api/ice-servers`)).body).natProbes, [], 'second_port=0: off');
      // The port answers STUN itself: a Binding request there gets a success with this socket's address.
      const mapped = await stunBinding(second);
      assert.equal(mapped.address, '127.0.0.1');
      assert.ok(mapped.port > 0, JSON.stringify(mapped));
      await page.goto(`${one.base}/check`);
      await page.waitForFunction(() => document.body.dataset.state === 'done', null, { timeout: 100000 });
      const report = await page.evaluate(() => JSON.parse(document.getElementById('raw').textContent));
      console.log(`  nat: ${report.nat.mapping} (${report.nat.why}) from ${report.nat.servers.join(', ')}`);
      assert.deepEqual(report.nat.servers, [`stun:127.0.0.1:${one.ports.turn}`, probe], JSON.stringify(report.nat));
      // Two addresses to compare (on loopback Chromium learns no public address, so the comparison itself is the NAT
      // lab's: tests/natlab/check.test.js).
      assert.notEqual(report.nat.why, 'one-address', JSON.stringify(report.nat));
    })().catch(dumpOnFailure(t, one, browser));
  });

test('a server without TURN is named as the cause, not this network', { timeout: 30000 }, async (t) => {
  if (skipWithoutChromium(t)) return;
  const page = await browser.newPage();
  t.after(() => page.close().catch(() => {}));
  await page.goto(`${server.base}/healthz`);
  const out = await page.evaluate(async () => {
    const C = await import('/check/check.js');
    const sig = { ok: true, joined: true, rttMs: { median: 5 } };
    const stun = (srflx) => ({ url: 'stun:192.0.2.1:3478', label: 'STUN :3478', ok: srflx > 0, types: { host: 1, srflx } });
    return {
      udpWorks: C.verdict({ webrtc: true, signaling: sig, gathering: [stun(1)], loopback: [],
        nat: { mapping: 'inconclusive', why: 'one-address' } }),
      udpBlocked: C.verdict({ webrtc: true, signaling: sig, gathering: [stun(0)], loopback: [],
        nat: { mapping: 'inconclusive', why: 'one-address' } }),
    };
  });
  // Before: "Direct calls may work, but the relay cannot be used from here" and, without UDP, "A firewall blocks the
  // media ports. Ask for UDP and TCP 443 to this server to be allowed" — for a server that hands out no relay at all.
  assert.equal(out.udpWorks.level, 'warn');
  assert.match(out.udpWorks.headline, /offers no TURN relay/);
  assert.doesNotMatch(out.udpWorks.headline, /from here/);
  assert.equal(out.udpBlocked.level, 'fail');
  assert.match(out.udpBlocked.headline, /offers no TURN relay/);
  for (const v of [out.udpWorks, out.udpBlocked]) {
    assert.ok(v.advice.some((a) => /enable TURN/.test(a.text)), JSON.stringify(v));
    assert.ok(!v.advice.some((a) => /firewall blocks the media ports/.test(a.text)), JSON.stringify(v));
  }
});

test('a TURN URL that gathered no relay address is not called again (no 15 s wait per dead relay)',
  { timeout: 120000 }, async (t) => {
    if (skipWithoutChromium(t)) return;
    const page = await browser.newPage();
    t.after(() => page.close().catch(() => {}));
    await (async () => {
      // The server's list plus a TURN/UDP address where nothing listens (port 9 on loopback).
      const dead = 'turn:127.0.0.1:9?transport=udp';
      await page.route('**/api/ice-servers', async (route) => {
        const real = await route.fetch();
        const body = await real.json();
        body.iceServers.push({ urls: [dead], username: 'u', credential: 'p' });
        await route.fulfill({ response: real, json: body });
      });
      const started = Date.now();
      await page.goto(`${server.base}/check`);
      await page.waitForFunction(() => document.body.dataset.state === 'done', null, { timeout: 100000 });
      const elapsed = Date.now() - started;
      const report = await page.evaluate(() => JSON.parse(document.getElementById('raw').textContent));
      const limits = await page.evaluate(async () => (await import('/check/check.js')).TIMEOUTS);
      const g = report.gathering.find((x) => x.url === dead);
      const l = report.loopback.find((x) => x.url === dead);
      console.log(`  dead relay: gathering ${JSON.stringify(g)}; loopback ${JSON.stringify(l)}; run ${elapsed} ms`);
      assert.ok(g && !g.types.relay, `no relay candidate from ${dead}: ${JSON.stringify(g)}`);
      assert.equal(l?.ok, false);
      assert.equal(l?.skipped, true, `the test call was skipped: ${JSON.stringify(l)}`);
      assert.ok(elapsed < limits.gather + 5000, `took ${elapsed} ms`);
      assert.ok(report.verdict.advice.some((a) => a.text.startsWith(`${l.label}:`)), 'the dead relay is still named');
    })().catch(dumpOnFailure(t, server, browser));
  });
