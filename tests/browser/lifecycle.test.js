// Session lifecycle through the SDK against the real binary: join tokens (refused before the upgrade, reason read
// from /api/join-check), an outage longer than the resume grace (peer-left, undeliverable, fresh join), and a
// session taken over by a newer socket (4002, not retried).
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import fs from 'node:fs';
import {
  CHROMIUM, TRAVERSE_BIN, launchBrowser, skipWithoutChromium, startTraverse, until, within, dumpOnFailure,
} from './lib/harness.js';
import { roomPage, recorded } from './lib/pages.js';

const SECRET = 'browser-test-signal-secret';
let open; // a server with open rooms and a 2 s resume grace
let locked; // a server that needs join tokens
let browser;
before(async () => {
  if (!fs.existsSync(CHROMIUM)) return;
  open = await startTraverse({ extraArgs: ['--set', 'signal.resume_grace=2'] });
  locked = await startTraverse({ extraArgs: ['--signal-secret', SECRET] });
  browser = await launchBrowser();
});
after(async () => {
  await browser?.close();
  await open?.stop();
  await locked?.stop();
});

const token = (room, identity) =>
  execFileSync(TRAVERSE_BIN, ['token', '--secret', SECRET, '--room', room, '--identity', identity]).toString().trim();

/** connect() in a page on `server`; resolves with {peerId} or {code, status}. */
async function tryJoin(page, server, opts) {
  return within(
    15000,
    page.evaluate(async (o) => {
      const T = await import('/sdk/traverse.js');
      try {
        window.room = await T.connect(o);
        return { peerId: room.peerId, peers: [...room.peers.values()] };
      } catch (e) {
        return { code: e.code, status: e.status };
      }
    }, opts),
    'join attempt',
  );
}

test('tokens: missing, forged and wrong-room tokens are refused with their code; a good one joins', { timeout: 60000 }, async (t) => {
  if (skipWithoutChromium(t)) return;
  const page = await browser.newPage();
  const other = await browser.newPage();
  t.after(() => Promise.all([page.close().catch(() => {}), other.close().catch(() => {})]));
  await page.goto(`${locked.base}/healthz`);
  await other.goto(`${locked.base}/healthz`);
  await (async () => {
    assert.deepEqual(await tryJoin(page, locked, { room: 'vip' }), { code: 'token-required', status: 401 });
    const forged = token('vip', 'eve').replace(/.$/, (c) => (c === 'A' ? 'B' : 'A'));
    const r1 = await tryJoin(page, locked, { room: 'vip', token: forged });
    assert.equal(r1.code, 'token-invalid');
    const r2 = await tryJoin(page, locked, { room: 'vip', token: token('lobby', 'eve') });
    assert.equal(r2.code, 'token-room-mismatch');
    const ann = await tryJoin(page, locked, { room: 'vip', token: token('vip', 'ann') });
    assert.ok(ann.peerId, JSON.stringify(ann));
    const bob = await tryJoin(other, locked, { room: 'vip', token: token('*', 'bob') });
    assert.ok(bob.peerId, JSON.stringify(bob));
    const seen = bob.peers.find((p) => p.id === ann.peerId);
    assert.equal(seen?.meta?.identity, 'ann', `identity shown to other peers: ${JSON.stringify(bob.peers)}`);
  })().catch(dumpOnFailure(t, locked, browser));
});

test('outage longer than the grace: peer-left, undeliverable, then a fresh join', { timeout: 60000 }, async (t) => {
  if (skipWithoutChromium(t)) return;
  const a = await roomPage(browser, open, 'grace', { net: true });
  const b = await roomPage(browser, open, 'grace');
  t.after(() => Promise.all([a.page.close().catch(() => {}), b.page.close().catch(() => {})]));
  await (async () => {
    await until(10000, () => a.page.evaluate((id) => room.peers.has(id), b.peerId), 'A sees B');
    // A is away for 4 s; the grace is 2 s.
    await a.page.evaluate(() => net.cut(4000));
    await b.page.evaluate((to) => room.signal(to, { tag: 'lost' }, { id: 'x-1' }), a.peerId);
    await until(8000, async () => (await recorded(b.page, 'peer-left')).some((e) => e.peerId === a.peerId), 'peer-left');
    await until(2000, async () => (await recorded(b.page, 'undeliverable')).length === 1, 'undeliverable');
    const [und] = await recorded(b.page, 'undeliverable');
    assert.deepEqual({ to: und.to, id: und.id, reason: und.reason }, { to: a.peerId, id: 'x-1', reason: 'peer-left' });
    // A comes back: its session is gone, so the SDK joins afresh under a new id.
    await until(10000, async () => (await recorded(a.page, 'joined')).length === 1, 'A joined again');
    const [rejoined] = await recorded(a.page, 'joined');
    assert.equal(rejoined.rejoined, true);
    assert.notEqual(rejoined.peerId, a.peerId);
    assert.deepEqual((await recorded(a.page, 'error')).map((e) => e.code), ['resume-failed']);
    assert.equal((await recorded(a.page, 'signal')).length, 0, 'the signal for the old identity never reaches the new one');
    await until(5000, async () => (await recorded(b.page, 'peer-joined')).some((e) => e.peer.id === rejoined.peerId),
      'B sees A again');
  })().catch(dumpOnFailure(t, open, browser));
});

test('a newer socket resuming the session replaces the old one: 4002, final', { timeout: 60000 }, async (t) => {
  if (skipWithoutChromium(t)) return;
  const a = await roomPage(browser, open, 'takeover');
  const thief = await browser.newPage();
  t.after(() => Promise.all([a.page.close().catch(() => {}), thief.close().catch(() => {})]));
  await (async () => {
    const { session, lastSeq, url } = await a.page.evaluate(() => ({ session: room.session, lastSeq: room.lastSeq, url: room.url }));
    await thief.goto(`${open.base}/healthz`);
    const answer = await within(
      10000,
      thief.evaluate(
        ({ session, lastSeq, url }) =>
          new Promise((resolve, reject) => {
            const ws = new WebSocket(url);
            ws.onopen = () => ws.send(JSON.stringify({ type: 'resume', session, lastSeq }));
            ws.onmessage = (e) => resolve(JSON.parse(e.data));
            ws.onerror = () => reject(new Error('socket error'));
          }),
        { session, lastSeq, url },
      ),
      'resume on a second socket',
    );
    assert.equal(answer.type, 'resumed');
    assert.equal(answer.peerId, a.peerId);
    await until(5000, async () => (await recorded(a.page, 'closed')).length === 1, 'old socket closed');
    const [closed] = await recorded(a.page, 'closed');
    assert.equal(closed.code, 4002);
    assert.deepEqual(await recorded(a.page, 'reconnecting'), [], '4002 is not retried');
  })().catch(dumpOnFailure(t, open, browser));
});
