// `traverse doctor <server> --json` inside every site's host namespace: the RFC 4787 mapping and filtering it reports
// must be the ones the site's NAT router was built with, and the transports it reports working or failing must be
// the ones the site's firewall lets through. Fields: docs/doctor.md.
//
// Run by run.sh (environment: NATLAB_PREFIX, NATLAB_RESULTS, TRAVERSE_BIN; NATLAB_SITES limits the sites).
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';

const PREFIX = process.env.NATLAB_PREFIX;
const RESULTS = process.env.NATLAB_RESULTS;
const BIN = process.env.TRAVERSE_BIN;
const SERVER = process.env.NATLAB_DOCTOR_URL || 'http://203.0.113.10:80';
const ONLY = (process.env.NATLAB_SITES || '').split(',').filter(Boolean);

const EIM = 'endpoint-independent';
const AD = 'address-dependent';
const APD = 'address-and-port-dependent';
const ALL_OPEN = { signaling: true, 'stun-udp': true, 'turn-udp': true, 'turn-tcp': true, 'turn-tls': true, 'turn-tls-443': true };

/**
 * What the doctor must find in each site. `mapping`/`filtering`: the RFC 4787 term, or null where UDP cannot leave
 * the site and the doctor must not claim any behaviour. `transports`: verdict.transports[key].works.
 */
export const SITES = [
  { site: 'eim-a', built: 'EIM / APDF / open', mapping: EIM, filtering: APD, transports: ALL_OPEN },
  { site: 'eim-b', built: 'EIM / APDF / open', mapping: EIM, filtering: APD, transports: ALL_OPEN },
  { site: 'fullcone', built: 'EIM / EIF / open', mapping: EIM, filtering: EIM, transports: ALL_OPEN },
  { site: 'restricted', built: 'EIM / ADF / open', mapping: EIM, filtering: AD, transports: ALL_OPEN },
  { site: 'sym-a', built: 'APDM / APDF / open', mapping: APD, filtering: APD, transports: ALL_OPEN },
  { site: 'sym-b', built: 'APDM / APDF / open', mapping: APD, filtering: APD, transports: ALL_OPEN },
  {
    site: 'noudp', built: 'EIM / APDF / UDP dropped', mapping: null, filtering: null,
    transports: { ...ALL_OPEN, 'stun-udp': false, 'turn-udp': false },
  },
  {
    site: 'tcp443', built: 'EIM / APDF / only TCP 443', mapping: null, filtering: null,
    transports: { signaling: true, 'stun-udp': false, 'turn-udp': false, 'turn-tcp': false, 'turn-tls': false, 'turn-tls-443': true },
  },
  {
    // Only the STUN/TURN ports are blocked: UDP to the relay's ports gets out, and the doctor must not call UDP
    // blocked (checks::udp_egress).
    site: 'turnports', built: 'EIM / APDF / STUN and TURN ports dropped', mapping: null, filtering: null,
    transports: {
      signaling: true, 'stun-udp': false, 'udp-other-ports': true, 'turn-udp': false, 'turn-tcp': false,
      'turn-tls': false, 'turn-tls-443': true,
    },
    summary: /^UDP to the server's STUN\/TURN port is blocked here \(UDP to other ports gets out\)/,
  },
  {
    // 10 % of UDP lost at random each way at the NAT: the probes retransmit, so the NAT is still named right, and
    // the relay test's loss (about 34 % over its four crossings of the link) is brought down to the link, graded,
    // and said in the headline.
    site: 'lossy', built: 'EIM / EIF / 10 % UDP loss', mapping: EIM, filtering: EIM, transports: ALL_OPEN,
    lossy: true,
  },
  {
    // Nothing leaves but through the router's HTTP proxy (CONNECT to 443 alone), named in HTTPS_PROXY as on an
    // office machine: signaling and TURN over TLS on 443 work through it, the proxy refuses the other ports, no UDP
    // gets out. The server sees the proxy, not this network's NAT: no NAT claim. Without the proxy the doctor said
    // "Nothing works: the server is unreachable" where the site's browsers connect (pairs.test.js).
    site: 'proxy', built: 'only an HTTP proxy (CONNECT to 443)', mapping: null, filtering: null,
    transports: {
      // Not probed through a proxy (null): the relay would admit the proxy's address, not this network's NAT.
      signaling: true, 'stun-udp': false, 'udp-other-ports': null, 'turn-udp': false, 'turn-tcp': false,
      'turn-tls': false, 'turn-tls-443': true,
    },
    // The server by a name only the proxy resolves (lab.sh PROXY_NAME): the doctor leaves names to the proxy.
    url: 'https://traverse.lab.example', env: { HTTPS_PROXY: 'http://192.0.2.193:3128' }, proxied: true,
  },
  {
    // A geostationary satellite link: 300 ms each way between the NAT and the internet. Every probe's answer comes
    // back after its first retransmission has gone (the RTO is 250 ms), and TURN over TLS takes four round trips
    // before its relay test starts: the NAT and every transport must still be named, and the round trip graded.
    site: 'geo', built: 'EIM / APDF / 600 ms round trip', mapping: EIM, filtering: APD, transports: ALL_OPEN,
    rttMs: 600,
    // Over HTTPS, with the throughput ramp: a step's last packets arrive 600 ms after they left (A → relay → B), and
    // were counted lost after 300 ms ("not even 1 Mbit/s got through (loss 60 %)" on a link that lost nothing).
    url: 'https://203.0.113.10', args: ['--throughput', '2'], throughput: true,
  },
].filter((s) => ONLY.length === 0 || ONLY.includes(s.site));

/** The doctor in a site's host namespace; resolves with {code, report, stderr} (the exit code is 0 or 2). */
function doctorIn(site, url = SERVER, extra = [], env = {}) {
  const args = ['netns', 'exec', `${PREFIX}-${site}-h`, BIN, 'doctor', url, '--json', '--insecure', '--quiet', ...extra];
  return new Promise((resolve) => {
    // The machine's own proxy settings do not reach the lab: only a site's `env` names one.
    const own = Object.entries(process.env).filter(([k]) => !/^(https?|all|no)_proxy$/i.test(k));
    const options = { timeout: 120000, maxBuffer: 4 << 20, env: { ...Object.fromEntries(own), ...env } };
    execFile('ip', args, options, (err, stdout, stderr) => {
      let report = null;
      try {
        report = JSON.parse(stdout);
      } catch {
        /* reported below */
      }
      resolve({ code: err ? (err.code ?? err.signal) : 0, report, stdout, stderr });
    });
  });
}

const runs = new Map();
const results = [];
before(async () => {
  if (!PREFIX || !BIN) return;
  // One doctor per site, all at once: each waits mostly on timeouts of its own blocked transports.
  await Promise.all(SITES.map(async (s) => runs.set(s.site, await doctorIn(s.site, s.url, s.args, s.env))));
});
after(() => {
  if (RESULTS) fs.writeFileSync(path.join(RESULTS, 'doctor.json'), JSON.stringify(results, null, 2));
});

const short = { [EIM]: 'EI', [AD]: 'AD', [APD]: 'APD' };
const words = (f) => (f ? (short[f.result] ?? f.result) + (f.result === 'inconclusive' ? ` (${f.candidates.map((c) => short[c]).join('/')})` : '') : '—');

for (const want of SITES) {
  test(`doctor in ${want.site} (${want.built})`, { timeout: 150000 }, () => {
    assert.ok(PREFIX && BIN, 'NATLAB_PREFIX and TRAVERSE_BIN are set (run through tests/natlab/run.sh)');
    const run = runs.get(want.site);
    const record = { site: want.site, built: want.built };
    results.push(record);
    try {
      assert.ok(run?.report, `JSON report (exit ${run?.code}): ${run?.stdout?.slice(0, 500)} ${run?.stderr?.slice(-1000)}`);
      const r = run.report;
      record.exitCode = run.code;
      record.mapping = words(r.nat?.mapping);
      record.filtering = words(r.nat?.filtering);
      record.method = r.nat?.method;
      const works = Object.fromEntries((r.verdict?.transports ?? []).map((t) => [t.key, t.works]));
      record.blocked = Object.keys(want.transports).filter((k) => works[k] === false).join(', ') || 'none';
      record.verdict = r.verdict?.summary;
      record.direct = r.verdict?.direct;

      for (const [key, ok] of Object.entries(want.transports)) {
        assert.equal(works[key], ok, `${key} ${ok ? 'works' : 'fails'} (transports: ${JSON.stringify(works)})`);
      }
      if (want.proxied) {
        // The proxy is named; what the server saw is the proxy's address, so nothing is claimed of a NAT.
        assert.equal(r.proxy, want.env.HTTPS_PROXY, 'the proxy is in the report');
        assert.notEqual(r.nat.nat, 'present', `no NAT claimed through a proxy: ${JSON.stringify(r.nat)}`);
        assert.ok(r.verdict.causes.some((c) => c.startsWith(`This network reaches the server through the HTTP proxy ${r.proxy}`)),
          JSON.stringify(r.verdict.causes));
        assert.ok(r.turn.some((t) => t.error_code === 'proxy' && /refused the tunnel to 203\.0\.113\.10:5349: 403/.test(t.error)),
          `the proxy's refusal is the reason: ${JSON.stringify(r.turn)}`);
        assert.equal(r.verdict.summary,
          'UDP is blocked on this network: every call will go through the TURN relay, over TLS on port 443.');
        record.outcome = 'pass';
        return;
      }
      // Every site has a NAT; where UDP cannot leave, the doctor sees it on the TURN connection over TCP/TLS.
      assert.equal(r.nat.nat, 'present', `a NAT is seen: ${JSON.stringify(r.nat)}`);
      if (want.mapping) {
        assert.equal(r.nat.mapping.result, want.mapping, `mapping: ${JSON.stringify(r.nat)}`);
        assert.equal(r.nat.filtering.result, want.filtering, `filtering: ${JSON.stringify(r.nat)}`);
      } else {
        // No UDP leaves the site: the doctor must not claim a UDP behaviour it could not observe.
        for (const f of [r.nat.mapping, r.nat.filtering]) {
          assert.ok(['inconclusive', 'not-tested'].includes(f.result), `no UDP, no claim: ${JSON.stringify(r.nat)}`);
        }
        assert.ok(r.nat.notes.some((n) => n.startsWith('seen over TCP/TLS')), JSON.stringify(r.nat));
        if (want.summary) {
          // UDP leaves on other ports: a direct call depends on the other side, not "needs TURN".
          assert.match(r.verdict.summary, want.summary);
          assert.ok(r.verdict.direct.every((d) => d.chance === 'uncertain'), JSON.stringify(r.verdict.direct));
        } else {
          // …and every call goes through the relay, over TURN/TLS on 443 (what a browser here would use).
          assert.equal(r.verdict.summary,
            'UDP is blocked on this network: every call will go through the TURN relay, over TLS on port 443.');
          assert.equal(works['udp-other-ports'], false, 'UDP to other ports of the server is blocked too');
        }
      }
      if (want.lossy) {
        const link = r.relay?.link;
        record.loss = link && `${link.loss_percent.toFixed(1)} % each way`;
        assert.ok(link && link.loss_percent > 3 && link.loss_percent < 20, `link loss: ${JSON.stringify(r.relay)}`);
        assert.ok(['poor', 'bad'].includes(r.relay.quality.loss), JSON.stringify(r.relay.quality));
        assert.match(r.verdict.summary,
          /^Direct connections are likely with every kind of peer, .* But this network's link is (poor|bad) \(loss \d+\.\d % each way\): expect choppy audio and video\.$/);
      }
      if (want.rttMs) {
        const link = r.relay?.link;
        record.rtt = link && `${link.rtt_ms.toFixed(0)} ms round trip`;
        assert.ok(link && link.rtt_ms > want.rttMs - 20 && link.rtt_ms < want.rttMs + 100, `link RTT: ${JSON.stringify(r.relay)}`);
        assert.equal(r.relay.quality.rtt, 'bad', JSON.stringify(r.relay.quality));
        assert.ok(r.verdict.summary.includes(`(round trip ${link.rtt_ms.toFixed(0)} ms)`), r.verdict.summary);
      }
      if (want.throughput) {
        const t = r.throughput;
        record.throughput = t && `${t.mbit_per_s.toFixed(1)} Mbit/s`;
        assert.ok(t && t.mbit_per_s >= 1 && t.loss_percent < 5, `throughput: ${JSON.stringify(t)}`);
      }
      record.outcome = 'pass';
    } catch (err) {
      record.outcome = `FAIL: ${err.message.split('\n')[0].slice(0, 200)}`;
      throw err;
    }
  });
}
