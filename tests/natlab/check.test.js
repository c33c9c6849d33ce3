// /check (the troubleshooter page) in headless Chromium inside a site's host namespace, against a server with one
// IP and no RFC 5780: the default deployment. The page must tell the NAT's mapping from the two ports the server
// hands it (`natProbes`: the second STUN port, stun.second_port), as the doctor does, and say so in its verdict.
// Without the second port a symmetric NAT went unnoticed there ("inconclusive", level ok, nothing said). In the
// `lossy` site it must also count and grade the loss on the link, as the doctor does, and in `geo` (600 ms round
// trip) grade the delay and say what it does to a call.
//
// The server runs beside the lab's main one (lab.sh serve-role), on 203.0.113.10 with ports of its own: UDP 4478
// (TURN and STUN; its second STUN port is 4479, the port after) and HTTP 8080.
//
// Run by run.sh (NATLAB_PREFIX, TRAVERSE_BIN, CHROMIUM_PATH; NATLAB_SITES limits the sites).
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { launchBrowser } from '../browser/lib/harness.js';

const here = path.dirname(fileURLToPath(import.meta.url));
const PREFIX = process.env.NATLAB_PREFIX;
const ONLY = (process.env.NATLAB_SITES || '').split(',').filter(Boolean);
const PAGE = 'http://203.0.113.10:8080/check';
const STUN = 'stun:203.0.113.10:4478';
const PROBE = 'stun:203.0.113.10:4479';

/** What the page must find: the RFC 4787 mapping it can tell from two ports of one IP, and words in its verdict. */
const SITES = [
  // One public port for both server ports: the strictest kind ruled out, and no more claimed (one IP only).
  { site: 'eim-a', mapping: 'endpoint-independent-or-address-dependent', words: /rules out the strictest kind/ },
  { site: 'sym-a', mapping: 'address-and-port-dependent', words: /symmetric NAT/, headline: /Your NAT is symmetric/ },
  // No UDP gets out: no public address to compare, and no gathering against the second port either.
  { site: 'noudp', mapping: 'inconclusive', why: 'no-srflx', words: /no public address was learned/ },
  // 10 % of UDP lost each way: the relay loopback's unreliable channel counts it (over four crossings of the link),
  // the page grades it for the link, warns, and says so in the headline. Before, it said nothing of the loss.
  {
    site: 'lossy', mapping: 'endpoint-independent-or-address-dependent', level: 'warn',
    words: /^Lost through the relay \(TURN\/UDP :4478\): \d+ of 100 test packets .* each way for your link \((poor|bad)\)\. Expect choppy audio and video\.$/,
    // UDP works (the relay call over UDP too, though a reliable echo may wait for a resend): not "UDP is blocked".
    headline: /^UDP works here: .* But this network loses packets \(about \d+\.\d % each way\): expect choppy audio and video\.$/,
  },
  // A geostationary satellite link, 300 ms each way: the signaling ping graded bad, a warning, and the headline says
  // what it does to a call. Every relay check crosses the link four times (2.4 s), within the page's waits.
  {
    site: 'geo', mapping: 'endpoint-independent-or-address-dependent', level: 'warn',
    words: /^Round trip to the server: 6\d\d ms \(bad\)\./,
    headline: / But the round trip to the server is long \(about 6\d\d ms\): expect a delay that makes people talk over each other\.$/,
    // Nothing is lost on this link. The loss count waited a fixed second for the last echoes, which take 1.2 s
    // here: it read 19 of 100 lost, "about 5.1 % each way", in the headline.
    lossFree: true,
  },
  // Nothing leaves but through the site's HTTP proxy (CONNECT to 443 alone), which the browser is set up with: the
  // page from the lab's main server on 443, whose single port carries the page, the WebSocket and TURN over TLS.
  {
    site: 'proxy', page: 'https://203.0.113.10/check', proxy: 'http://192.0.2.193:3128',
    mapping: 'inconclusive', why: 'no-srflx', level: 'warn',
    words: /no public address was learned/,
    headline: /^UDP is blocked on this network: every call will go through the TURN relay, over TLS on port 443\./,
  },
].filter((s) => ONLY.length === 0 || ONLY.includes(s.site));

const lab = (...args) => execFileSync(path.join(here, 'lab.sh'), [args[0], PREFIX, ...args.slice(1)], { stdio: 'pipe' });

before(() => {
  assert.ok(PREFIX, 'NATLAB_PREFIX is set (run through tests/natlab/run.sh)');
  lab('serve-role', 'single', process.env.TRAVERSE_BIN, '--udp', '203.0.113.10:4478', '--tcp', '203.0.113.10:4478',
    '--http', '203.0.113.10:8080', '--public-host', '203.0.113.10', '--workers', '1', '--set', 'listen.tls=');
});
after(() => lab('stop', 'single'));

for (const want of SITES) {
  test(`/check in ${want.site}: ${want.mapping} from two ports of one IP`, { timeout: 150000 }, async () => {
    process.env.NATLAB_NS = `${PREFIX}-${want.site}-h`;
    if (want.proxy) process.env.NATLAB_PROXY = want.proxy;
    else delete process.env.NATLAB_PROXY;
    const browser = await launchBrowser();
    try {
      const page = await browser.newPage();
      await page.goto(want.page ?? PAGE);
      await page.waitForFunction(() => document.body.dataset.state === 'done', null, { timeout: 120000 });
      const report = await page.evaluate(() => JSON.parse(document.getElementById('raw').textContent));
      const { nat, verdict } = report;
      console.log(`${want.site}: ${verdict.level}: ${verdict.headline}`);
      console.log(`  nat: ${nat.mapping} (${nat.why}) ${JSON.stringify(nat.observations)}`);
      const urls = report.iceServers.servers.flatMap((s) => [].concat(s.urls));
      if (!want.page) {
        assert.deepEqual(report.iceServers.natProbes, [PROBE], 'the second port is handed to /check');
        assert.ok(!urls.includes(PROBE), `and only to /check: ${urls}`);
      }
      assert.equal(nat.mapping, want.mapping, JSON.stringify(nat));
      // Without UDP the page must not gather against the second port either (another 10 s): no observation.
      if (want.why) assert.equal(nat.why, want.why, JSON.stringify(nat));
      if (want.why) assert.deepEqual(nat.observations, [], JSON.stringify(nat));
      else if (!want.page) assert.deepEqual(nat.servers, [STUN, PROBE], JSON.stringify(nat));
      assert.ok(verdict.advice.some((a) => want.words.test(a.text)), JSON.stringify(verdict.advice));
      if (want.headline) assert.match(verdict.headline, want.headline);
      if (want.level) assert.equal(verdict.level, want.level, verdict.headline);
      const udp = report.loopback.find((l) => l.transport === 'udp');
      if (udp?.loss) {
        console.log(`  loss through the relay: ${udp.loss.sent - udp.loss.received} of ${udp.loss.sent}; ` +
          `${udp.echoed} reliable echoes${udp.stalled ? ` (stopped: ${udp.stalled})` : ''}`);
      }
      if (want.lossFree) {
        assert.ok(udp?.loss, `the loss was counted: ${JSON.stringify(udp)}`);
        assert.ok(udp.loss.sent - udp.loss.received <= 1, `a link that loses nothing: ${JSON.stringify(udp.loss)}`);
        assert.doesNotMatch(verdict.headline, /loses packets/);
      }
    } finally {
      await browser.close();
    }
  });
}
