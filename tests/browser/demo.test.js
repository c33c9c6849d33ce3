// The demo page served by the binary at /demo: two tabs with the same room in the hash join, connect (forced through
// TURN/UDP so that only loopback is used), show the selected pair, and chat over the data channel.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import fs from 'node:fs';
import { CHROMIUM, launchBrowser, skipWithoutChromium, startTraverse, dumpOnFailure } from './lib/harness.js';

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

test('demo: two tabs meet, show a relay/udp pair and chat', { timeout: 90000 }, async (t) => {
  if (skipWithoutChromium(t)) return;
  const url = `${server.base}/demo#room=demo-e2e&transport=udp`;
  const a = await browser.newPage();
  const b = await browser.newPage();
  t.after(() => Promise.all([a.close().catch(() => {}), b.close().catch(() => {})]));
  await (async () => {
    await a.goto(url);
    await a.waitForFunction(() => document.getElementById('status').textContent.startsWith('joined'), null, { timeout: 15000 });
    await b.goto(url);
    for (const p of [a, b]) {
      await p.waitForFunction(() => !document.getElementById('msg').disabled, null, { timeout: 40000 });
      await p.waitForFunction(() => document.getElementById('pair').dataset.local === 'relay/udp', null, { timeout: 15000 });
    }
    await a.fill('#msg', 'hello from A');
    await a.click('#send');
    await b.waitForFunction(() => document.getElementById('chat').textContent.includes('hello from A'), null, { timeout: 10000 });
    await b.fill('#msg', 'hello from B');
    await b.press('#msg', 'Enter');
    await a.waitForFunction(() => document.getElementById('chat').textContent.includes('hello from B'), null, { timeout: 10000 });
    assert.match(await a.textContent('#pair'), /relay/);
    if (process.env.TRAVERSE_DEMO_SCREENSHOT) await a.screenshot({ path: process.env.TRAVERSE_DEMO_SCREENSHOT, fullPage: true });
  })().catch(dumpOnFailure(t, server, browser));
});
