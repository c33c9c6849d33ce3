// A peer nobody here wrote: aiortc, Python's WebRTC stack (tests/aiortc/peer.py, written from docs/protocol.md and
// docs/sdk.md alone), in a call with Chromium running the SDK, both relayed by Traverse's TURN server (each side's
// iceTransportPolicy is relay: all traffic stays on loopback). Each way: the SDK calls aiortc, and aiortc calls the
// SDK (which takes the offer by itself, `peer-connection`). Messages on the data channel come back once, in order,
// and the call ends with a `bye` that the other side sees as one.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { spawn, spawnSync } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import readline from 'node:readline';
import { fileURLToPath } from 'node:url';
import { CHROMIUM, launchBrowser, startTraverse, dumpOnFailure, until, within } from './lib/harness.js';
import { roomPage, recorded } from './lib/pages.js';

const PEER = path.join(path.dirname(fileURLToPath(import.meta.url)), '..', 'aiortc', 'peer.py');
const MESSAGES = 20;

/** Why this file cannot run here, or null. CI installs both (scripts/test.sh). */
function missing() {
  if (!fs.existsSync(CHROMIUM)) return `no Chromium at ${CHROMIUM}`;
  const py = spawnSync('python3', ['-c', 'import aiortc, websockets'], { encoding: 'utf8' });
  return py.status === 0 ? null : 'aiortc is not installed (python3 -m pip install aiortc websockets)';
}
const skip = missing();
if (skip && process.env.TRAVERSE_REQUIRE_PEERS === '1') throw new Error(`${skip}, and TRAVERSE_REQUIRE_PEERS=1`);
if (skip) console.log(`SKIP: ${skip}`);

let server;
let browser;
before(async () => {
  if (skip) return;
  server = await startTraverse();
  browser = await launchBrowser();
});
after(async () => {
  await browser?.close();
  await server?.stop();
});

/**
 * Starts tests/aiortc/peer.py; `events` collects its JSON lines, `next(name)` waits for the next one of that name.
 * Stopped (by PID) when the test ends.
 */
function aiortc(t, args) {
  const ws = `${server.httpBase.replace(/^http/, 'ws')}/ws`;
  const child = spawn('python3', [PEER, '--ws', ws, ...args], { stdio: ['ignore', 'pipe', 'pipe'] });
  t.after(() => child.exitCode === null && child.kill('SIGTERM'));
  let stderr = '';
  child.stderr.on('data', (d) => (stderr += d));
  const events = [];
  const waiters = [];
  readline.createInterface({ input: child.stdout }).on('line', (line) => {
    let e;
    try {
      e = JSON.parse(line);
    } catch {
      return;
    }
    events.push(e);
    for (const w of waiters.splice(0)) w();
  });
  const exited = new Promise((resolve) => child.on('exit', (code) => resolve(code)));
  const next = (name, ms = 30000) =>
    within(
      ms,
      (async () => {
        for (;;) {
          const e = events.find((x) => x.event === name || x.event === 'error');
          if (e?.event === 'error') throw new Error(`aiortc: ${e.message}\n${stderr}`);
          if (e) return e;
          if (child.exitCode !== null) throw new Error(`aiortc exited ${child.exitCode} before ${name}:\n${stderr}`);
          await new Promise((resolve) => {
            waiters.push(resolve);
            setTimeout(resolve, 200);
          });
        }
      })(),
      `aiortc: ${name}`,
    );
  return { events, next, exited, stderr: () => stderr };
}

const CALL = { timeout: 90000 };

test('the SDK calls an aiortc peer through the TURN relay: data both ways, in order, and a bye', CALL, async (t) => {
  if (skip) return t.skip(skip);
  const room = `aiortc-${process.pid}-1`;
  const py = aiortc(t, ['--room', room]);
  const { peerId } = await py.next('joined');
  const a = await roomPage(browser, server, room, { relay: true });
  t.after(() => a.page.close().catch(() => {}));
  await (async () => {
    const out = await within(
      40000,
      a.page.evaluate(
        async ({ id, n }) => {
          const peer = room.connect(id, peerOptions());
          window.peer = peer;
          await peer.ready;
          const got = [];
          peer.on('message', ({ data }) => got.push(data));
          for (let i = 0; i < n; i++) peer.send(`sdk ${i}`);
          const started = Date.now();
          while (got.length < n && Date.now() - started < 10000) await new Promise((r) => setTimeout(r, 20));
          const pair = await peer.getSelectedPair();
          peer.close();
          return { got, pair };
        },
        { id: peerId, n: MESSAGES },
      ),
      'the call with aiortc',
    );
    assert.deepEqual(out.got, Array.from({ length: MESSAGES }, (_, i) => `sdk ${i}`), 'echoed once each, in order');
    assert.equal(out.pair.local.candidateType, 'relay', JSON.stringify(out.pair));
    const pair = JSON.stringify(out.pair);
    assert.equal(out.pair.remote.candidateType, 'relay', `aiortc's own candidate is its relay: ${pair}`);
    await py.next('open');
    // The SDK's close() sends a bye: aiortc ends the call and leaves.
    assert.equal((await py.next('bye')).by, 'remote');
    assert.equal(await within(10000, py.exited, 'aiortc exits'), 0, py.stderr());
  })().catch(dumpOnFailure(t, server, browser));
});

const ANSWERED = 'an aiortc peer calls the SDK, which takes the offer itself: data both ways, in order, and a bye';
test(ANSWERED, CALL, async (t) => {
  if (skip) return t.skip(skip);
  const room = `aiortc-${process.pid}-2`;
  const b = await roomPage(browser, server, room, { relay: true, echo: true });
  t.after(() => b.page.close().catch(() => {}));
  await (async () => {
    await b.page.evaluate(() =>
      room.on('peer-connection', ({ peer }) => peer.on('close', (d) => (window.closedWith = d))),
    );
    const py = aiortc(t, ['--room', room, '--call', b.peerId, '--send', String(MESSAGES)]);
    await py.next('joined');
    await py.next('open');
    const echoed = await py.next('echoed', 20000);
    console.log(`  aiortc: ${py.events.map((e) => `${e.event} +${e.ms} ms`).join(', ')}`);
    assert.equal(echoed.count, MESSAGES, JSON.stringify(echoed));
    assert.equal(echoed.inOrder, true, JSON.stringify(echoed));
    assert.equal(await within(10000, py.exited, 'aiortc exits'), 0, py.stderr());
    // The page took the call by itself, over the relay, and saw aiortc's bye as the end of it.
    const closed = await until(10000, () => b.page.evaluate(() => window.closedWith), 'the page sees the bye');
    assert.equal(closed.by, 'remote', JSON.stringify(closed));
    assert.equal(closed.reason, 'bye', JSON.stringify(closed));
    assert.ok((await recorded(b.page, 'signal')).length === 0, 'no negotiation signal left to the app');
  })().catch(dumpOnFailure(t, server, browser));
});
