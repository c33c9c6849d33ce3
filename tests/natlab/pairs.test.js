// Two headless Chromium peers, one per NAT site, each inside its site's host namespace (Chromium is started through
// chromium-netns.sh, which enters $NATLAB_NS). They load the SDK from the real server, join one room and open a data
// channel with the ICE servers the join hands out (nothing forced). The selected candidate pair must be direct
// (host/srflx/prflx on both ends) where the two NATs allow hole punching and relayed (a TURN candidate at one end at
// least) where they do not; with UDP blocked the relay must be TURN over TCP or TLS. Pairs forced to fail (ICE
// servers cut down to what cannot work: STUN only between two symmetric NATs, TURN over UDP only from a site that
// blocks UDP) must end in the server's post-mortem naming the right reason, in both pages' `connection-failed`.
//
// Run by run.sh, which builds the lab and starts the server:
//   NATLAB_PREFIX   the lab's namespace prefix
//   NATLAB_SERVER   https://<server public address> (the single port, 443)
//   NATLAB_RESULTS  directory where pairs.json is written for the results table
//   NATLAB_PAIRS    optional comma-separated pair names (e.g. `eim-a+eim-b`, `sym-a+sym-b:stun-only`) to run only those
//   CHROMIUM_PATH   chromium-netns.sh (read by ../browser/lib/harness.js when it is imported)
import { test, after } from 'node:test';
import assert from 'node:assert/strict';
import fs from 'node:fs';
import path from 'node:path';
import { launchBrowser, sleep, until, within } from '../browser/lib/harness.js';
import { roomPage } from '../browser/lib/pages.js';

const PREFIX = process.env.NATLAB_PREFIX;
const SERVER = { base: process.env.NATLAB_SERVER || 'https://203.0.113.10' };
const RESULTS = process.env.NATLAB_RESULTS;
/** A relayed pair must still be relayed this long after the channel opened; a direct one may take until MAX. */
const SETTLE_MS = 5000;
const SETTLE_MAX_MS = 20000;
const ONLY = (process.env.NATLAB_PAIRS || '').split(',').filter(Boolean);

/**
 * The pairs of sites and what must happen. `relays`: site → the TURN transports its own candidate must be relayed
 * over (and `relayPort`, the TURN server port it must have used); without it, any end may hold the relay.
 */
export const PAIRS = [
  {
    a: 'eim-a', b: 'eim-b', expect: 'direct',
    why: 'both map endpoint-independently: each peer\'s checks open its own NAT towards the other\'s srflx address',
  },
  {
    a: 'sym-a', b: 'sym-b', expect: 'relay',
    why: 'each NAT picks a new port per destination, so no srflx address is reachable from the other site',
  },
  {
    a: 'sym-a', b: 'eim-a', expect: 'relay',
    why: 'the symmetric side reaches the port-restricted side from a port the latter never sent to, and the '
      + 'port-restricted side can only reach the symmetric side\'s STUN mapping: both filters drop the checks',
  },
  {
    a: 'sym-b', b: 'fullcone', expect: 'direct',
    why: 'the full cone admits the symmetric side\'s checks from any port; its answer (a peer-reflexive '
      + 'candidate) goes back through the symmetric NAT\'s own mapping',
  },
  {
    a: 'sym-a', b: 'restricted', expect: 'direct',
    why: 'once the restricted side has sent a check to the symmetric NAT\'s address, checks from any port of that '
      + 'address are admitted',
  },
  {
    a: 'noudp', b: 'eim-b', expect: 'relay', relays: { noudp: ['tcp', 'tls'] },
    why: 'no UDP leaves the site: the only candidate that works is a relay allocated over TURN/TCP or TURN/TLS',
  },
  {
    a: 'tcp443', b: 'eim-a', expect: 'relay', relays: { tcp443: ['tls'] }, relayPort: 443,
    why: 'only TCP 443 leaves the site: signaling and TURN over TLS share the single port',
  },
  {
    a: 'noudp', b: 'tcp443', expect: 'relay', relays: { noudp: ['tcp', 'tls'], tcp443: ['tls'] }, openWithinMs: 30000,
    why: 'neither site can send UDP: the only path is relay to relay through the same server (refused with 403 '
      + 'before bd266db: the peer policy refused the server\'s own addresses)',
  },
  {
    a: 'lossy', b: 'eim-a', expect: 'direct',
    why: 'a full cone admits the other side\'s checks; with 10 % of UDP lost each way at its NAT, ICE retransmits '
      + 'its checks and the data channel its messages',
  },
  {
    a: 'proxy', b: 'eim-a', expect: 'relay', relays: { proxy: ['tls'] }, relayPort: 443,
    why: 'nothing leaves the site but through its HTTP proxy, which tunnels to port 443 alone: the page, signaling '
      + 'and TURN over TLS all go through CONNECT to the single port',
  },
  {
    a: 'geo', b: 'eim-a', expect: 'direct',
    why: 'both map endpoint-independently; every check crosses a 600 ms round trip, longer than ICE\'s first '
      + 'retransmission',
  },
  {
    a: 'geo', b: 'sym-a', expect: 'relay',
    why: 'a port-restricted NAT and a symmetric one: relayed, with the allocation, its permissions and its channel '
      + 'bindings each a 600 ms round trip away',
  },
].filter((p) => ONLY.length === 0 || ONLY.includes(`${p.a}+${p.b}`));

const results = [];
after(() => {
  if (RESULTS) fs.writeFileSync(path.join(RESULTS, 'pairs.json'), JSON.stringify(results, null, 2));
});

/**
 * The sites whose only way out is an HTTP proxy (lab.sh), and its address there: the browser is configured with it,
 * as an office's browsers are (by policy or PAC).
 */
const PROXIES = { proxy: 'http://192.0.2.193:3128' };

/** Chromium in a site's host namespace (the wrapper reads NATLAB_NS and NATLAB_PROXY when playwright spawns it). */
async function browserIn(site) {
  process.env.NATLAB_NS = `${PREFIX}-${site}-h`;
  if (PROXIES[site]) process.env.NATLAB_PROXY = PROXIES[site];
  else delete process.env.NATLAB_PROXY;
  return launchBrowser();
}

const direct = (c) => c && ['host', 'srflx', 'prflx'].includes(c.candidateType);
const describe = (p) => (p ? `${p.local?.candidateType}${p.local?.relayProtocol ? `/${p.local.relayProtocol}` : ''}`
  + ` ${p.local?.protocol} ${p.local?.address}:${p.local?.port} -> ${p.remote?.candidateType}`
  + ` ${p.remote?.address}:${p.remote?.port}` : 'none');

/** The doctor's row (verdict.direct[].peer) for a peer in each site: what kind of NAT the site is. */
const KIND = {
  'eim-a': 'a port-restricted NAT', 'eim-b': 'a port-restricted NAT', noudp: 'a port-restricted NAT',
  tcp443: 'a port-restricted NAT', proxy: 'a port-restricted NAT', geo: 'a port-restricted NAT', fullcone: 'a full-cone NAT', restricted: 'a restricted-cone NAT',
  'sym-a': 'a symmetric NAT', 'sym-b': 'a symmetric NAT',
};

/** What `traverse doctor` in site `a` (doctor.test.js, run first) predicted for a peer in site `b`, if it ran. */
function doctorPrediction(a, b) {
  try {
    const doctor = JSON.parse(fs.readFileSync(path.join(RESULTS, 'doctor.json'), 'utf8'));
    const rows = doctor.find((r) => r.site === a)?.direct ?? [];
    return rows.find((row) => row.peer.startsWith(KIND[b]))?.chance ?? null;
  } catch {
    return null;
  }
}

/**
 * Pairs that cannot connect with the ICE servers they are left (`keep`: a filter of the join's URLs, run in both
 * pages) and the reason the post-mortem must give.
 */
export const FAILING = [
  {
    a: 'sym-a', b: 'sym-b', name: 'stun-only', keep: "(u) => u.startsWith('stun:')",
    reason: 'symmetric-nat-no-relay', says: /Both peers are behind NATs that change port per destination \(symmetric\)/,
    why: 'two symmetric NATs and no TURN: no srflx address is reachable and there is no relay',
  },
  {
    a: 'noudp', b: 'eim-b', name: 'turn-udp-only', keep: "(u) => u.startsWith('stun:') || (u.startsWith('turn:') && u.includes('transport=udp'))",
    reason: 'turn-udp-blocked-no-tls', says: /TURN requests over UDP timed out and no TURN over TLS on 443 was offered/,
    why: 'no UDP leaves noudp and it is offered TURN over UDP only: it gathers no relay, and nothing of eim-b\'s is reachable',
  },
].filter((p) => ONLY.length === 0 || ONLY.includes(`${p.a}+${p.b}:${p.name}`));

let roomNo = 0;
for (const pair of FAILING) {
  test(`${pair.a} + ${pair.b} (${pair.name}): fails, post-mortem ${pair.reason}`, { timeout: 120000 }, async (t) => {
    assert.ok(PREFIX, 'NATLAB_PREFIX is set (run through tests/natlab/run.sh)');
    const browsers = [];
    t.after(() => Promise.all(browsers.map((b) => b.close())));
    const record = { a: pair.a, b: pair.b, expect: `fail: ${pair.reason}`, why: pair.why };
    results.push(record);
    try {
      browsers.push(await browserIn(pair.a));
      browsers.push(await browserIn(pair.b));
      const room = `natlab-${process.pid}-${++roomNo}`;
      const outcomeTimeoutMs = 20000;
      const open = async (br) => {
        const p = await roomPage(br, SERVER, room, { net: true, connect: { outcomeTimeoutMs } });
        // Set by the driver: the page's Content-Security-Policy forbids eval in page code.
        await p.page.evaluate(`window.keep = (servers) => T.filterIceServers(servers, ${pair.keep})`);
        await p.page.evaluate(() => {
          window.failures = [];
          room.on('connection-failed', (d) => failures.push(d));
          window.sentReports = [];
          net.tamper = (text) => {
            const msg = JSON.parse(text);
            if (msg.type === 'outcome') sentReports.push(msg.report);
            return text;
          };
        });
        return p;
      };
      const a = await open(browsers[0]);
      const b = await open(browsers[1]);
      await until(10000, () => a.page.evaluate((id) => room.peers.has(id), b.peerId), `${pair.a} sees ${pair.b}`);
      const started = Date.now();
      await a.page.evaluate((id) => {
        window.peer = room.connect(id, peerOptions());
      }, b.peerId);
      const failed = (p) => until(outcomeTimeoutMs + 40000, () => p.page.evaluate(() => failures.length > 0 && failures),
        'connection-failed');
      const [fa, fb] = await within(outcomeTimeoutMs + 45000, Promise.all([failed(a), failed(b)]), 'both post-mortems');
      record.connectMs = Date.now() - started;
      record.reports = [await a.page.evaluate(() => sentReports), await b.page.evaluate(() => sentReports)];
      t.diagnostic(`${pair.a} reported ${JSON.stringify(record.reports[0])}`);
      t.diagnostic(`${pair.b} reported ${JSON.stringify(record.reports[1])}`);
      record.outcome = `${fa[0].outcome}: ${fa[0].reason}`;
      record.selected = fa[0].message;
      for (const [site, f] of [[pair.a, fa], [pair.b, fb]]) {
        assert.equal(f.length, 1, `${site}: one connection-failed: ${JSON.stringify(f)}`);
        assert.equal(f[0].reason, pair.reason, `${site}: ${JSON.stringify(f[0])}`);
        assert.match(f[0].message, pair.says, `${site}: ${f[0].message}`);
        assert.doesNotMatch(f[0].message, /never reported/, 'both reports arrived');
      }
      assert.equal(fa[0].peer, b.peerId);
      assert.equal(fb[0].peer, a.peerId);
    } catch (err) {
      record.outcome = `FAIL: ${err.message.split('\n')[0]}`;
      for (const [i, br] of browsers.entries()) {
        console.log(`--- ${i ? pair.b : pair.a} console ---\n${br.logs.slice(-40).join('\n')}`);
      }
      throw err;
    }
  });
}

for (const pair of PAIRS) {
  test(`${pair.a} + ${pair.b}: ${pair.expect}`, { timeout: 120000 }, async (t) => {
    assert.ok(PREFIX, 'NATLAB_PREFIX is set (run through tests/natlab/run.sh)');
    const browsers = [];
    t.after(() => Promise.all(browsers.map((b) => b.close())));
    const record = { a: pair.a, b: pair.b, expect: pair.expect, why: pair.why };
    results.push(record);
    try {
      browsers.push(await browserIn(pair.a));
      browsers.push(await browserIn(pair.b));
      const room = `natlab-${process.pid}-${++roomNo}`;
      const a = await roomPage(browsers[0], SERVER, room);
      const b = await roomPage(browsers[1], SERVER, room, { echo: true });
      await until(10000, () => a.page.evaluate((id) => room.peers.has(id), b.peerId), `${pair.a} sees ${pair.b}`);
      await a.page.evaluate(() => {
        window.diagnoses = [];
        room.on('connection-diagnosis', (d) => diagnoses.push(d));
      });

      const started = Date.now();
      const aSide = await within(
        60000,
        a.page.evaluate(async ({ bId, openMs }) => {
          const peer = room.connect(bId, { dataChannel: true });
          window.peer = peer;
          await Promise.race([
            peer.ready,
            new Promise((_, r) => setTimeout(() => r(new Error(`data channel not open in ${openMs} ms`)), openMs)),
          ]);
          const echo = new Promise((resolve) => peer.on('message', ({ data }) => resolve(data)));
          peer.send('through the NATs');
          const got = await Promise.race([echo, new Promise((r) => setTimeout(() => r(null), 10000))]);
          return { got, pair: await peer.getSelectedPair() };
        }, { bId: b.peerId, openMs: pair.openWithinMs ?? 50000 }),
        `data channel ${pair.a} -> ${pair.b}`,
      );
      record.connectMs = Date.now() - started;
      record.firstPair = describe(aSide.pair);
      assert.equal(aSide.got, 'through the NATs', 'the message came back over the data channel');

      // Chromium nominates the first pair that works (often the relay, whose checks need no hole punching) and
      // switches to a better one when its checks succeed later: judge the pair once ICE has settled.
      const pairs = async () => ({
        a: await a.page.evaluate(() => window.peer.getSelectedPair()),
        b: await b.page.evaluate(() => window.peer?.getSelectedPair() ?? null),
      });
      const holds = ({ a: pa, b: pb }) => pa && pb && (pair.expect === 'direct') === [pa.local, pa.remote, pb.local, pb.remote].every(direct);
      const settleFrom = Date.now();
      let now = await pairs();
      for (let i = 0; i < 60 && !(holds(now) && Date.now() - settleFrom >= SETTLE_MS); i++) {
        if (Date.now() - settleFrom > SETTLE_MAX_MS) break;
        await sleep(500);
        now = await pairs();
      }
      record.settledMs = Date.now() - started;
      const bPair = now.b;
      aSide.pair = now.a;
      record.aPair = aSide.pair;
      record.bPair = bPair;
      record.selected = `${pair.a}: ${describe(aSide.pair)}; ${pair.b}: ${describe(bPair)}`;
      assert.ok(aSide.pair && bPair, `both ends report a selected pair: ${record.selected}`);

      const ends = [aSide.pair.local, aSide.pair.remote, bPair.local, bPair.remote];
      if (pair.expect === 'direct') {
        // A's selected direct pair passed ICE checks both ways through both NATs: that is the hole punched, which
        // is what this lab tests. Chromium's controlled side (B) sometimes keeps the relay pair it took first for a
        // long time (seen in CI for sym-a + restricted, > 20 s): recorded, not failed — that is Chromium's choice,
        // not the NATs'.
        assert.ok([aSide.pair.local, aSide.pair.remote].every(direct), `direct pair expected: ${record.selected}`);
        assert.equal(aSide.pair.local.protocol, 'udp', record.selected);
        if (!ends.every(direct)) {
          console.log(`note: ${pair.b} kept its first (relayed) pair while ${pair.a} went direct: ${record.selected}`);
        }
        record.outcome = 'direct';
      } else {
        assert.ok(aSide.pair.local.candidateType === 'relay' || aSide.pair.remote.candidateType === 'relay',
          `relayed pair expected: ${record.selected}`);
        for (const [site, protocols] of Object.entries(pair.relays ?? {})) {
          const own = site === pair.a ? aSide.pair.local : bPair.local;
          assert.equal(own.candidateType, 'relay', `${site} relays: ${record.selected}`);
          assert.ok(protocols.includes(own.relayProtocol), `${site} relays over ${protocols}: ${record.selected}`);
          if (pair.relayPort) assert.match(own.url ?? '', new RegExp(`:${pair.relayPort}\\b`), record.selected);
        }
        record.outcome = 'relay';
      }
      // The post-mortem of the pair (both pages reported it connected): its path must be of the kind the pair
      // settled on, when both ends agree on it.
      const diagnosis = await until(20000, () => a.page.evaluate(() => diagnoses[0]), 'connection-diagnosis');
      assert.equal(diagnosis.outcome, 'connected', JSON.stringify(diagnosis));
      // What the browsers did (direct or relay), before the post-mortem is appended for the report.
      const connected = record.outcome;
      record.outcome += ` (post-mortem: ${diagnosis.path}, ${diagnosis.timeToConnectMs} ms)`;
      if (ends.every(direct)) assert.match(diagnosis.path, /^direct-/, JSON.stringify(diagnosis));
      if (pair.expect === 'relay') assert.match(diagnosis.path, /^relay/, JSON.stringify(diagnosis));
      // The doctor's verdict in site A, for a peer like B's, must agree with what the browsers did.
      record.doctorSays = doctorPrediction(pair.a, pair.b);
      if (record.doctorSays === 'likely' || record.doctorSays === 'unlikely') {
        assert.equal(record.doctorSays === 'likely' ? 'direct' : 'relay', connected,
          `traverse doctor in ${pair.a} said a direct connection with ${KIND[pair.b]} is ${record.doctorSays}`);
      }
    } catch (err) {
      record.outcome = `FAIL: ${err.message.split('\n')[0]}`;
      for (const [i, br] of browsers.entries()) {
        console.log(`--- ${i ? pair.b : pair.a} console ---\n${br.logs.slice(-40).join('\n')}`);
      }
      throw err;
    }
  });
}
