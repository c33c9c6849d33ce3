// The operator's dashboard served by the binary at /dashboard, behind the admin token: a wrong token is refused on
// the page; with the right one the page follows the event stream, and after two SDK peers connect through TURN/UDP in
// this run it shows — without a reload — the connected outcome, the rooms, sockets and allocations, and the charts;
// a pair then forced to fail (relay-only, wrong TURN credential) shows up with its reason and sentence.
// A screenshot is kept as an artefact (${TRAVERSE_ARTIFACTS:-target/artifacts}/dashboard.png) and checked.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import fs from 'node:fs';
import path from 'node:path';
import {
  CHROMIUM, ROOT, get, launchBrowser, skipWithoutChromium, startTraverse, until, within, dumpOnFailure,
} from './lib/harness.js';
import { roomPage } from './lib/pages.js';
import { countColour, decodePng } from './lib/png.js';

const TOKEN = 'dashboard-test-admin-token-0123456789';
const ARTIFACTS = path.resolve(ROOT, process.env.TRAVERSE_ARTIFACTS || 'target/artifacts');

let server;
let browser;
before(async () => {
  if (!fs.existsSync(CHROMIUM)) return;
  server = await startTraverse({ extraArgs: ['--set', `web.admin_token=${TOKEN}`] });
  browser = await launchBrowser();
});
after(async () => {
  await browser?.close();
  await server?.stop();
});

/** The dashboard page, signed in with `token`. */
async function openDashboard(token) {
  const page = await browser.newPage();
  await page.setViewportSize({ width: 1280, height: 1000 });
  await page.goto(`${server.base}/dashboard`);
  await page.waitForSelector('#login:not([hidden])');
  await page.fill('#token', token);
  await page.click('#login button[type=submit]');
  return page;
}

/** The text of an element by id, trimmed. */
const text = (page, id) => page.evaluate((i) => document.getElementById(i).textContent.trim(), id);
const number = async (page, id) => Number((await text(page, id)).replace(/[^0-9.]/g, ''));
/** The texts of every element matching `selector`. */
const texts = (page, selector) =>
  page.evaluate((s) => [...document.querySelectorAll(s)].map((e) => e.textContent), selector);
/** Waits until the number shown in element `id` is at least `min` — the page updates itself. */
const atLeast = (page, id, min, timeout) =>
  page.waitForFunction(
    ([i, m]) => Number(document.getElementById(i).textContent.replace(/[^0-9.]/g, '')) >= m,
    [id, min],
    { timeout },
  );

test('the API refuses a missing or wrong token, the page asks again', { timeout: 30000 }, async (t) => {
  if (skipWithoutChromium(t)) return;
  const none = await get(`${server.base}/api/dashboard`);
  assert.equal(none.status, 401);
  assert.equal(JSON.parse(none.body).code, 'admin-token-required');
  const page = await openDashboard('not-the-token');
  t.after(() => page.close().catch(() => {}));
  await page.waitForFunction(() => document.getElementById('login-error').textContent.length > 0, null, {
    timeout: 10000,
  });
  assert.match(await text(page, 'login-error'), /refused/);
  assert.equal(await page.evaluate(() => document.getElementById('board').hidden), true, 'nothing shown');
  const kept = await page.evaluate(() => sessionStorage.getItem('traverse.adminToken'));
  assert.equal(kept, null, 'a refused token is forgotten');
});

const LIVE = 'after two peers connect and two fail, the live dashboard shows them; screenshot kept';
test(LIVE, { timeout: 150000 }, async (t) => {
  if (skipWithoutChromium(t)) return;
  const dash = await openDashboard(TOKEN);
  t.after(() => dash.close().catch(() => {}));
  await (async () => {
    await dash.waitForFunction(() => Number(document.body.dataset.snapshots) >= 1, null, { timeout: 10000 });
    // Set before the peers come: a reload would lose it.
    await dash.evaluate(() => (window.sameDocument = true));
    assert.equal(await dash.evaluate(() => sessionStorage.getItem('traverse.adminToken')), TOKEN, 'kept for this tab');
    assert.ok(!dash.url().includes(TOKEN), 'never in the URL');
    const socketsBefore = await number(dash, 'sockets');
    const snapshotsBefore = await dash.evaluate(() => Number(document.body.dataset.snapshots));
    assert.match(await text(dash, 'success-rate'), /no connections yet|%/);

    // Two SDK peers in one room, through TURN/UDP so the relay counters move too.
    const want = { scheme: 'turn', transport: 'udp', port: server.ports.turn };
    const a = await roomPage(browser, server, 'dashboard-room', { want, relay: true });
    const b = await roomPage(browser, server, 'dashboard-room', { want, relay: true, echo: true });
    t.after(() => Promise.all([a.page.close().catch(() => {}), b.page.close().catch(() => {})]));
    await until(10000, () => a.page.evaluate((id) => room.peers.has(id), b.peerId), 'A sees B');
    await within(
      45000,
      a.page.evaluate(async (bId) => {
        const peer = room.connect(bId, peerOptions());
        window.peer = peer;
        const late = new Promise((_, r) => setTimeout(() => r(new Error('channel not open in 30 s')), 30000));
        await Promise.race([peer.ready, late]);
        // A steady trickle for ~6 s: three snapshots see the relay counters move.
        for (let i = 0; i < 60; i++) {
          peer.send('x'.repeat(1000));
          await new Promise((r) => setTimeout(r, 100));
        }
      }, b.peerId),
      'relayed data channel',
    );

    // The page updates itself: the numbers change without a reload.
    await atLeast(dash, 'connected-total', 1, 30000);
    await atLeast(dash, 'sockets', 2, 10000);
    assert.ok((await number(dash, 'sockets')) > socketsBefore, 'sockets went up live');
    assert.ok((await number(dash, 'rooms')) >= 1, 'a room');
    assert.ok((await number(dash, 'sessions')) >= 2, 'two sessions');
    assert.ok((await number(dash, 'allocations')) >= 2, 'two TURN allocations');
    const snapshotsAfter = await dash.evaluate(() => Number(document.body.dataset.snapshots));
    assert.ok(snapshotsAfter > snapshotsBefore, 'new snapshots arrived');
    assert.equal(await dash.evaluate(() => window.sameDocument), true, 'no reload');
    assert.match(await text(dash, 'success-rate'), /%/);
    assert.match(await text(dash, 'paths-summary'), /relayed/);
    const paths = await texts(dash, '#chart-paths g text');
    assert.ok(paths.includes('relay-udp'), `relay-udp on the paths chart: ${paths}`);
    await dash.waitForFunction(() => document.querySelectorAll('#chart-bandwidth polyline').length === 2, null, {
      timeout: 10000,
    });
    assert.match(await text(dash, 'bw-to-peer'), /B\/s/);
    assert.match(await text(dash, 'cert-days'), /left/);

    // A pair that fails: relay-only with a wrong TURN credential. The post-mortem's reason and sentence show up.
    const fail = async () => {
      const p = await roomPage(browser, server, 'dashboard-fail', { relay: true, connect: { outcomeTimeoutMs: 8000 } });
      // Set by the driver: the page's Content-Security-Policy forbids eval in page code.
      await p.page.evaluate(`window.keep = (servers) => T
        .filterIceServers(servers, (u) => u.startsWith('turn:') && u.includes('transport=udp'))
        .map((s) => ({ ...s, credential: 'not-the-credential' }))`);
      return p;
    };
    const c = await fail();
    const d = await fail();
    t.after(() => Promise.all([c.page.close().catch(() => {}), d.page.close().catch(() => {})]));
    await until(10000, () => c.page.evaluate((id) => room.peers.has(id), d.peerId), 'C sees D');
    await c.page.evaluate((id) => {
      window.peer = room.connect(id, peerOptions());
    }, d.peerId);
    await atLeast(dash, 'failed-total', 1, 45000);
    const reasons = await texts(dash, '#chart-reasons g text');
    assert.ok(reasons.includes('turn-auth-failed'), `turn-auth-failed on the reasons chart: ${reasons}`);
    const [sentence] = await texts(dash, '#reasons-chart .sentence');
    assert.match(sentence, /turn-auth-failed: .*401/);
    const recent = await texts(dash, '#recent tbody tr');
    const listed = recent.some((r) => r.includes('dashboard-fail') && r.includes('turn-auth-failed'));
    assert.ok(listed, `recent failures: ${recent}`);
    assert.ok(await dash.locator('#recent').isVisible());
    assert.ok((await dash.locator('#chart-success rect.failed').count()) >= 1, 'a failed bar this minute');
    assert.match(await text(dash, 'success-rate'), /^50(\.0)? %$/);

    // Every chart is drawn and visible, each labelled for screen readers.
    for (const name of ['success', 'paths', 'ttc', 'reasons', 'bandwidth']) {
      const svg = dash.locator(`svg[data-chart=${name}]`);
      assert.equal(await svg.count(), 1, `${name} chart`);
      assert.ok(await svg.isVisible(), `${name} chart visible`);
      const box = await svg.boundingBox();
      assert.ok(box && box.width > 100 && box.height > 40, `${name} chart has a size: ${JSON.stringify(box)}`);
      assert.equal(await svg.getAttribute('role'), 'img');
      assert.ok((await svg.locator('title').first().textContent()).length > 5, `${name} chart has a title`);
    }
    assert.ok((await dash.locator('#chart-success rect.connected').count()) >= 1, 'a connected bar this minute');
    assert.ok((await dash.locator('#chart-ttc rect.ttc').count()) >= 1, 'a time-to-connect bar');
    for (const id of ['rooms', 'sockets', 'sessions', 'allocations', 'connected-total', 'success-rate', 'cert-days']) {
      assert.ok(await dash.locator(`#${id}`).isVisible(), `#${id} visible`);
    }

    // The screenshot, kept for CI, and checked: a PNG of the page's size, not an empty image, and the charts' colours
    // where the page says the charts are.
    await dash.evaluate(() => window.scrollTo(0, 0));
    const boxes = {};
    for (const name of ['success', 'paths', 'ttc', 'reasons', 'bandwidth']) {
      boxes[name] = await dash.locator(`svg[data-chart=${name}]`).boundingBox();
    }
    fs.mkdirSync(ARTIFACTS, { recursive: true });
    const file = path.join(ARTIFACTS, 'dashboard.png');
    await dash.screenshot({ path: file, fullPage: true });
    const png = fs.readFileSync(file);
    assert.deepEqual([...png.subarray(0, 8)], [0x89, 0x50, 0x4e, 0x47, 0x0d, 0x0a, 0x1a, 0x0a], 'PNG signature');
    assert.equal(png.toString('latin1', 12, 16), 'IHDR');
    const width = png.readUInt32BE(16);
    const height = png.readUInt32BE(20);
    assert.equal(width, 1280, 'screenshot width');
    assert.ok(height >= 800, `screenshot height ${height}`);
    assert.ok(png.length > 40 * 1024, `a page with charts is more than 40 KiB of PNG, got ${png.length}`);
    const image = decodePng(png);
    assert.equal(image.width, width);
    const scale = await dash.evaluate(() => window.devicePixelRatio);
    const colours = {
      connected: [0x2e, 0x9b, 0x57],
      failed: [0xc9, 0x3c, 0x3c],
      relay: [0x2f, 0x6f, 0xde],
      toClient: [0xc7, 0x7a, 0x12],
    };
    const seen = (chart, colour) => countColour(image, boxes[chart], colours[colour], { scale });
    const expected = [
      ['success', 'connected', 200],
      ['success', 'failed', 200],
      ['paths', 'relay', 1000],
      ['ttc', 'relay', 1000],
      ['reasons', 'failed', 1000],
      ['bandwidth', 'toClient', 20],
    ];
    for (const [chart, colour, min] of expected) {
      const n = seen(chart, colour);
      assert.ok(n >= min, `${chart} chart: ${n} pixels of ${colour} in the screenshot, expected at least ${min}`);
    }
    assert.equal(seen('paths', 'failed'), 0, 'no failure colour on the paths chart');
    console.log(`dashboard screenshot: ${file} (${width}x${height}, ${png.length} bytes)`);
  })().catch(dumpOnFailure(t, server, browser));
});

// The bandwidth tiles are a rate over the last 10 s. Snapshots that straddle a gap in the stream (the network dropped,
// the laptop slept) or a restart (counters back to zero) give no such rate: the page says "measuring…" until it has
// one, rather than an average over the gap or the rate from before the restart. The stream is played by the test.
const GAP = 'after a gap in the stream or a restart, the bandwidth says measuring, not a rate across it';
test(GAP, { timeout: 30000 }, async (t) => {
  if (skipWithoutChromium(t)) return;
  const t0 = Date.UTC(2026, 0, 1);
  const snapshot = (ms, bytes) => ({
    unixMs: t0 + ms,
    signaling: { sockets: 0, sessions: 0, rooms: 0, relayed: 0 },
    turn: {
      allocations: 1, relayedPacketsToPeer: 0, relayedBytesToPeer: bytes,
      relayedPacketsToClient: 0, relayedBytesToClient: bytes,
    },
    certificate: null,
    outcomes: {
      connected: 0, failed: 0, by_path: {}, by_reason: {},
      time_to_connect_ms: { buckets: [], sum_ms: 0, count: 0 }, minutes: [], recent_failures: [],
    },
  });
  const streams = [
    // 1 000 B/s for 4 s; then the stream ends (the page reconnects after 1 s).
    [snapshot(0, 0), snapshot(2000, 2000), snapshot(4000, 4000)],
    // Ten minutes later, 60 MB more: 100 kB/s on average over the gap, not a rate of the last 10 s.
    [snapshot(604000, 60004000)],
    // Two seconds later, 100 bytes more: 50 B/s.
    [snapshot(606000, 60004100)],
    // The server restarted: the counters are back near zero.
    [snapshot(608000, 10)],
  ];
  const gates = streams.map(() => {
    let open;
    const opened = new Promise((r) => (open = r));
    return { open, opened };
  });
  gates[0].open();
  let served = 0;
  const page = await browser.newPage();
  t.after(() => page.close().catch(() => {}));
  await page.route('**/api/dashboard/events', async (route) => {
    const i = Math.min(served++, streams.length - 1);
    await gates[i].opened;
    const body = streams[i].map((s) => `event: snapshot\ndata: ${JSON.stringify(s)}\n\n`).join('');
    await route.fulfill({ status: 200, headers: { 'content-type': 'text/event-stream' }, body });
  });
  await page.goto(`${server.base}/dashboard`);
  await page.waitForSelector('#login:not([hidden])');
  await page.fill('#token', TOKEN);
  await page.click('#login button[type=submit]');
  const shows = (n, what) =>
    page
      .waitForFunction((k) => Number(document.body.dataset.snapshots) >= k, n, { timeout: 10000 })
      .then(() => text(page, 'bw-to-peer'))
      .then((v) => {
        t.diagnostic(`after snapshot ${n}: ${v} (${what})`);
        return v;
      });
  assert.equal(await shows(3, 'steady'), '1.0 kB/s');
  gates[1].open();
  assert.equal(await shows(4, 'across a 10-minute gap'), 'measuring…');
  assert.equal(await text(page, 'bw-to-client'), 'measuring…');
  gates[2].open();
  assert.equal(await shows(5, 'two seconds later'), '50 B/s');
  gates[3].open();
  assert.equal(await shows(6, 'after a restart'), 'measuring…');
});
