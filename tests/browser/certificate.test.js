// A browser that refuses the server's self-signed certificate (no --ignore-certificate-errors, as any user's): TURN
// over TLS cannot connect, and both /check and the demo say the certificate was refused — the server saw the
// browser's TLS alert and tells that browser at /api/tls-failures — instead of blaming the network.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import fs from 'node:fs';
import { CHROMIUM, launchBrowser, skipWithoutChromium, startTraverse, until, dumpOnFailure } from './lib/harness.js';

let server;
let browser;

before(async () => {
  if (!fs.existsSync(CHROMIUM)) return;
  server = await startTraverse();
  browser = await launchBrowser({ strictCertificates: true });
});
after(async () => {
  await browser?.close();
  await server?.stop();
});

test('/check: a refused certificate is named, not taken for a blocked network', { timeout: 120000 }, async (t) => {
  if (skipWithoutChromium(t)) return;
  await (async () => {
    const page = await browser.newPage();
    t.after(() => page.close().catch(() => {}));
    // Plain HTTP: the page itself loads; only TURN over TLS meets the certificate.
    await page.goto(`${server.httpBase}/check`);
    await page.waitForFunction(() => document.body.dataset.state === 'done', null, { timeout: 100000 });
    const report = await page.evaluate(() => JSON.parse(document.getElementById('raw').textContent));
    console.log(report.verdict.advice.map((a) => `  - ${a.text}${a.term ? ` (${a.term})` : ''}`).join('\n'));

    const tlsLoops = report.loopback.filter((l) => l.transport === 'tls');
    assert.ok(tlsLoops.length >= 2, 'the TLS port and the single port are both tried');
    assert.ok(tlsLoops.every((l) => !l.ok), 'TURN over TLS cannot work with a refused certificate');
    const seen = report.tlsFailures.failures;
    assert.ok(seen.some((f) => ['unknown-ca', 'certificate-refused'].includes(f.reason)),
      `the server saw the browser refuse the certificate: ${JSON.stringify(seen)}`);
    for (const l of tlsLoops) {
      const advice = report.verdict.advice.find((a) => a.text.startsWith(`${l.label}:`));
      assert.ok(advice, `advice for ${l.label}`);
      assert.match(advice.text, /this browser refused the server's certificate — not a blocked network/);
      assert.match(advice.text, /self-signed certificate \(generated at start/);
      assert.doesNotMatch(advice.text, /blocked or unreachable/);
    }
    // UDP works here on loopback: the verdict still says calls connect.
    assert.notEqual(report.verdict.level, 'fail');
    assert.match(await page.textContent('#verdict'), /refused the server's certificate/);
  })().catch(dumpOnFailure(t, server, browser));
});

test('demo: a relay over TLS with a refused certificate says so', { timeout: 120000 }, async (t) => {
  if (skipWithoutChromium(t)) return;
  await (async () => {
    const room = `cert-${Date.now()}`;
    const a = await browser.newPage();
    const b = await browser.newPage();
    t.after(() => Promise.all([a.close(), b.close()]).catch(() => {}));
    await a.goto(`${server.httpBase}/demo#room=${room}&transport=tls&name=a`);
    await until(20000, async () => (await a.textContent('#status')).startsWith('joined'), 'a joined');
    await b.goto(`${server.httpBase}/demo#room=${room}&transport=tls&name=b`);
    for (const page of [a, b]) {
      await page.waitForFunction(() => document.getElementById('pair').dataset.refused, null, { timeout: 60000 });
      assert.match(await page.textContent('#pair'), /refused the server's TLS certificate/);
    }
  })().catch(dumpOnFailure(t, server, browser));
});
