// Calls that survive (issue 11, docs/sdk.md "Calls that survive"): two headless Chromium peers in two NAT sites in a
// call — a reliable data channel, A pinging B every 100 ms and B echoing, and a 30 fps canvas video track from A to
// B — and, 5 s into it, one event of the kind that drops real calls. Each scenario asserts that the call recovers by
// itself (the same Peer and data channel), that every ping is echoed, once and in order (nothing lost), that B
// decodes video frames again, and prints the time from the moment the network is usable again to the first echo of a
// ping sent after that moment, and to B's first newly decoded frame.
//
//   sudo NATLAB_SITES=eim-a,eim-b,sym-a,sym-b tests/natlab/run.sh survive.test.js
//   sudo NATLAB_SITES=eim-a,eim-b NATLAB_SURVIVE=address-change tests/natlab/run.sh survive.test.js
//
// Scenarios (NATLAB_SURVIVE: comma-separated names to run only those):
//   address-change   eim-a's host gets a new address (old one deleted, default route again): every socket it had
//                    is dead, the ICE path and the signaling socket alike
//   link-down-5s     eim-a's site loses its uplink (its port on the internet bridge) for 5 s
//   conntrack-flush  eim-a's NAT forgets every mapping (conntrack -F; skipped without the conntrack tool)
//   turn-restart     the server (TURN and signaling) restarted during a call relayed between two symmetric NATs
//   signaling-restart  the signaling endpoint restarted alone during a call relayed between two symmetric NATs: for
//                    it the lab serves TURN (UDP/TCP 3478, TLS 5349) and signaling (HTTP 80, HTTPS/WSS 443) from two
//                    processes with one TURN secret (lab.sh serve-role), and restarts only the second; the relay
//                    carrying the call stays up while both SDKs rejoin
//   udp-timeout-30s  both NATs forget an idle UDP mapping after 30 s; the call stays quiet (no data, no video) for
//                    2 minutes, then data must flow at once: ICE consent checks keep the mappings alive
//   credential-60s   a call relayed between two symmetric NATs on 60 s TURN credentials (run.sh serves them to
//                    survive.test.js) lasting 3 minutes: the SDK refreshes the credential over signaling, the
//                    browsers' Refresh/CreatePermission/ChannelBind under the expired one keep relaying, and at 150 s
//                    an ICE restart (a network-change event in A's page) allocates anew with the fresh credential.
//                    It runs beside the others (from the file's start; its result is awaited before turn-restart,
//                    which would restart its server), so it adds no time to the suite
//
// Run by run.sh (NATLAB_PREFIX, NATLAB_SERVER, NATLAB_RESULTS; CHROMIUM_PATH is the netns wrapper). Everything it
// changes is inside the lab's namespaces, which run.sh deletes at the end.
import { test, after } from 'node:test';
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import crypto from 'node:crypto';
import fs from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { launchBrowser, sleep, until, within } from '../browser/lib/harness.js';
import { roomPage } from '../browser/lib/pages.js';

const here = path.dirname(fileURLToPath(import.meta.url));
const PREFIX = process.env.NATLAB_PREFIX;
const SERVER = { base: process.env.NATLAB_SERVER || 'https://203.0.113.10' };
const RESULTS = process.env.NATLAB_RESULTS;
const ONLY = (process.env.NATLAB_SURVIVE || '').split(',').filter(Boolean);
/** The event happens this long into the call. */
const EVENT_AFTER_MS = 5000;

/** `lab.sh CMD PREFIX ARGS...`. */
function lab(cmd, ...args) {
  execFileSync(path.join(here, 'lab.sh'), [cmd, PREFIX, ...args], { stdio: 'pipe' });
}

/** A command in one of the lab's namespaces (`site`-h, `site`-r, inet, srv). */
function inNs(ns, ...cmd) {
  return execFileSync('ip', ['netns', 'exec', `${PREFIX}-${ns}`, ...cmd], { encoding: 'utf8', stdio: 'pipe' });
}
const hasConntrack = (() => {
  try {
    execFileSync('conntrack', ['--version'], { stdio: 'pipe' });
    return true;
  } catch {
    return false;
  }
})();

const SCENARIOS = [
  {
    name: 'address-change', a: 'eim-a', b: 'eim-b',
    why: 'the laptop-changes-networks case: the host\'s address changes, every socket bound to the old one is dead',
    async event() {
      // eim-a's host is 192.0.2.18/28 behind 192.0.2.17; .19 is free in its /28.
      inNs('eim-a-h', 'ip', 'addr', 'del', '192.0.2.18/28', 'dev', 'eth0');
      inNs('eim-a-h', 'ip', 'addr', 'add', '192.0.2.19/28', 'dev', 'eth0');
      inNs('eim-a-h', 'ip', 'route', 'replace', 'default', 'via', '192.0.2.17');
      return Date.now();
    },
  },
  {
    name: 'link-down-5s', a: 'eim-a', b: 'eim-b',
    why: 'the site\'s uplink goes down for 5 s and comes back: the path stays valid',
    async event() {
      // eim-a is site 1: its router's wan port on the internet bridge is w1.
      inNs('inet', 'ip', 'link', 'set', 'w1', 'down');
      await sleep(5000);
      inNs('inet', 'ip', 'link', 'set', 'w1', 'up');
      return Date.now();
    },
  },
  {
    name: 'conntrack-flush', a: 'eim-a', b: 'eim-b', skip: hasConntrack ? null : 'conntrack not installed',
    why: 'the NAT forgets every mapping (a NAT rebooting or rebinding): the next packet out gets a new one',
    async event() {
      inNs('eim-a-r', 'conntrack', '-F');
      return Date.now();
    },
  },
  {
    name: 'udp-timeout-30s', a: 'eim-a', b: 'eim-b', quietMs: 120000,
    why: 'NATs that forget an idle UDP mapping after 30 s, and a call quiet for 2 minutes',
    setup() {
      for (const r of ['eim-a-r', 'eim-b-r']) {
        inNs(r, 'sysctl', '-qw', 'net.netfilter.nf_conntrack_udp_timeout=30', 'net.netfilter.nf_conntrack_udp_timeout_stream=30');
      }
    },
    async event() {
      return Date.now();
    },
  },
  {
    name: 'credential-60s', a: 'sym-a', b: 'sym-b', relayed: true, background: true, eventAfterMs: 150000,
    why: 'a call longer than its TURN credential: refreshed over signaling, relaying on under the expired one, and an ICE restart after the expiry allocating with the fresh one',
    async event(a) {
      // What Chromium fires when the network changes: the SDK restarts ICE at once (`network-change`).
      await a.page.evaluate(() => dispatchEvent(new Event('online')));
      return Date.now();
    },
  },
  {
    name: 'turn-restart', a: 'sym-a', b: 'sym-b', relayed: true,
    why: 'the server carrying a relayed call restarts: allocations and signaling sessions die with it',
    async event() {
      execFileSync(path.join(here, 'lab.sh'), ['restart', PREFIX], { stdio: 'pipe' });
      return Date.now();
    },
  },
  {
    // Only TURN/UDP (3478, the TURN process): Chromium otherwise chose the TLS relay on 443, the signaling process's own
    // (1 dry run in 4), and the restart then took the relay down too.
    name: 'signaling-restart', a: 'sym-a', b: 'sym-b', relayed: true, relayProtocol: 'udp',
    want: { scheme: 'turn', transport: 'udp' },
    why: 'the signaling endpoint (its own process) restarts while the TURN server carrying the call runs on: the sessions die, the relay does not',
    setup() {
      // TURN and signaling in two processes on the lab's usual ports. The signaling one also listens on the second
      // address (203.0.113.11) so that the URLs it hands out (public host .10, its own ports) name the TURN process;
      // only its turns:…:443 is its own. The main server is served again afterwards.
      const bin = process.env.TRAVERSE_BIN;
      // base64url may begin with '-': given as `--secret=…`, it cannot be taken for a flag (1 run in 64 failed so).
      const secret = crypto.randomBytes(18).toString('base64url');
      const common = ['--public-host', '203.0.113.10', `--secret=${secret}`, '--workers', '1', '--set', 'auth.credential_ttl=60'];
      lab('stop');
      lab('serve-role', 'turn', bin, '--udp', '203.0.113.10:3478', '--tcp', '203.0.113.10:3478', '--tls', '203.0.113.10:5349', ...common);
      lab('serve-role', 'signaling', bin, '--http', '203.0.113.10:80', '--single-port', '203.0.113.10:443',
        '--udp', '203.0.113.11:3478', '--tcp', '203.0.113.11:3478', '--tls', '203.0.113.11:5349', ...common);
    },
    teardown() {
      lab('stop', 'signaling');
      lab('stop', 'turn');
      lab('restart');
    },
    async event() {
      lab('restart', 'signaling');
      return Date.now();
    },
  },
].filter((s) => ONLY.length === 0 || ONLY.includes(s.name));

const results = [];
after(() => {
  if (RESULTS) fs.writeFileSync(path.join(RESULTS, 'survive.json'), JSON.stringify(results, null, 2));
});

/**
 * Chromium in a site's host namespace (the wrapper reads NATLAB_NS when playwright spawns it). One launch at a time:
 * a background scenario launches while another runs, and the variable is the process's.
 */
let launching = Promise.resolve();
function browserIn(site) {
  const launch = launching.then(() => {
    process.env.NATLAB_NS = `${PREFIX}-${site}-h`;
    return launchBrowser();
  });
  launching = launch.catch(() => {});
  return launch;
}

let roomNo = 0;
/** Runs one scenario's call and event, asserts, and records its figures. */
async function runScenario(sc) {
  assert.ok(PREFIX, 'NATLAB_PREFIX is set (run through tests/natlab/run.sh)');
  const browsers = [];
  let pages = null;
  const record = { scenario: sc.name, a: sc.a, b: sc.b, why: sc.why };
  results.push(record);
  try {
    sc.setup?.();
    browsers.push(await browserIn(sc.a));
    browsers.push(await browserIn(sc.b));
    const room = `survive-${process.pid}-${++roomNo}`;
    const relay = !!sc.relayed;
    const a = await roomPage(browsers[0], SERVER, room, { relay, want: sc.want });
    const b = await roomPage(browsers[1], SERVER, room, { relay, want: sc.want, echo: true });
    pages = { a, b };
    await until(10000, () => a.page.evaluate((id) => room.peers.has(id), b.peerId), `${sc.a} sees ${sc.b}`);
    await within(
      60000,
      a.page.evaluate(async ({ bId, video }) => {
        // 30 fps of a counter drawn on a canvas: video that changes every frame.
        const canvas = Object.assign(document.createElement('canvas'), { width: 320, height: 240 });
        const g = canvas.getContext('2d');
        let frame = 0;
        setInterval(() => {
          g.fillStyle = `hsl(${(frame * 7) % 360} 60% 50%)`;
          g.fillRect(0, 0, 320, 240);
          g.fillStyle = '#fff';
          g.font = '48px sans-serif';
          g.fillText(String(frame++), 20, 140);
        }, 33);
        const media = canvas.captureStream(30);
        const peer = room.connect(bId, video ? { ...peerOptions(), media } : peerOptions());
        window.peer = peer;
        window.events = [];
        for (const name of ['reconnecting', 'reconnected', 'recovery-failed', 'rejoined']) {
          peer.on(name, (d) => events.push({ name, at: Date.now(), ...d }));
        }
        room.on('peer-rejoined', (d) => events.push({ name: 'peer-rejoined', at: Date.now(), previousPeerId: d.previousPeerId, peerId: d.peerId }));
        for (const name of ['reconnecting', 'resumed', 'joined', 'ice-servers']) {
          room.on(name, (d) => events.push({ name: `room-${name}`, at: Date.now(), code: d.code, rejoined: d.rejoined, expiresAt: d.expiresAt }));
        }
        window.firstExpiry = Math.min(...room.iceServers.map((s) => Number(/^(\d+):/.exec(s.username || '')?.[1] ?? Infinity)));
        peer.on('state', (d) => events.push({ name: 'state', at: Date.now(), ...d }));
        await peer.ready;
        window.firstChannel = peer.channel;
        window.echoes = [];
        window.sentAt = [];
        peer.on('message', ({ data }) => echoes.push({ n: Number(data), at: Date.now() }));
        window.ping = () => {
          try {
            peer.send(String(sentAt.length));
            sentAt.push(Date.now());
          } catch {
            /* not open: not sent */
          }
        };
        window.pinger = setInterval(ping, 100);
      }, { bId: b.peerId, video: !sc.quietMs }),
      `call ${sc.a} -> ${sc.b}`,
    );
    record.firstPair = await a.page.evaluate(() => peer.getSelectedPair());
    // B counts the frames it decodes, every 50 ms. Chromium replaces the inbound-rtp report after an ICE restart
    // (its counters start from 0 again: 188 frames, then 6), so the count is the sum of what each report added.
    await b.page.evaluate(() => {
      window.decoded = [];
      const seen = new Map();
      let total = 0;
      setInterval(async () => {
        if (!window.peer) return;
        const stats = await peer.pc.getStats();
        let video = false;
        stats.forEach((r) => {
          if (r.type !== 'inbound-rtp' || r.kind !== 'video') return;
          video = true;
          const before = seen.get(r.id) ?? 0;
          const now = r.framesDecoded ?? 0;
          total += now >= before ? now - before : now;
          seen.set(r.id, now);
        });
        if (video) decoded.push({ at: Date.now(), frames: total });
      }, 50);
    });
    // A quiet call sends no video either: media would keep the NATs' mappings alive by itself.
    if (!sc.quietMs) await until(15000, () => b.page.evaluate(() => decoded.some((d) => d.frames > 30)), 'B decodes video');
    if (relay) assert.ok([record.firstPair.local, record.firstPair.remote].some((c) => c.candidateType === 'relay'));
    if (sc.relayProtocol) assert.equal(record.firstPair.local?.relayProtocol, sc.relayProtocol, 'relayed by the TURN process');
    const callAt = Date.now();
    if (sc.name === 'credential-60s') {
      const ttl = (await a.page.evaluate(() => firstExpiry)) - callAt / 1000;
      assert.ok(ttl <= 61, `the lab serves 60 s credentials (run.sh, survive.test.js): ${Math.round(ttl)} s left`);
    }
    await sleep(sc.eventAfterMs ?? EVENT_AFTER_MS);
    if (sc.quietMs) {
      await a.page.evaluate(() => clearInterval(pinger));
      await sleep(sc.quietMs);
      await a.page.evaluate(() => {
        window.pinger = setInterval(ping, 100);
      });
    }
    const eventAt = Date.now();
    const usableAt = await sc.event(a);
    record.eventMs = usableAt - eventAt;
    // Data flowing again: the first echo of a ping sent once the network was usable.
    const echoAt = await within(
      90000,
      a.page.evaluate(
        (from) =>
          new Promise((resolve) => {
            const check = setInterval(() => {
              const e = echoes.find((x) => sentAt[x.n] >= from);
              if (e) {
                clearInterval(check);
                resolve(e.at);
              }
            }, 20);
          }),
        usableAt,
      ),
      `${sc.name}: an echo of a ping sent after the event`,
    );
    record.recoveryMs = echoAt - usableAt;
    // Video flowing again: B decodes a frame it had not decoded when the network was usable again.
    if (!sc.quietMs) {
      // Frames already on their way decode for a moment after an event: video is "flowing again" at the first
      // newly decoded frame after the stall (500 ms without one) that began at or after the event — or, when it
      // never stalled within 10 s, at the first frame after the network was usable.
      const videoAt = await until(40000, () => b.page.evaluate(({ from, event }) => {
        const after = decoded.filter((d) => d.at >= event);
        for (let i = 1; i < after.length; i++) {
          const still = after.slice(i).filter((d) => d.at - after[i - 1].at <= 500);
          const stalled = after[i - 1].at - event < 10000 && still.length > 0 && still.at(-1).at - after[i - 1].at >= 450
            && still.every((d) => d.frames === after[i - 1].frames);
          if (!stalled) continue;
          const back = after.find((d) => d.at > after[i - 1].at && d.frames > after[i - 1].frames && d.at >= from);
          return back ? back.at : undefined;
        }
        const last = after.at(-1);
        if (!last || last.at - event < 10000) return undefined;
        const base = decoded.filter((d) => d.at <= from).at(-1)?.frames ?? 0;
        return after.find((d) => d.at > from && d.frames > base)?.at;
      }, { from: usableAt, event: eventAt }), `${sc.name}: B decodes video again`);
      record.videoMs = videoAt - usableAt;
    }
    await sleep(2000);
    await a.page.evaluate(() => clearInterval(pinger));
    const total = await a.page.evaluate(() => sentAt.length);
    await until(30000, () => a.page.evaluate((n) => echoes.length >= n, total), `all ${total} echoes`);
    const got = await a.page.evaluate(() => ({
      echoes: echoes.map((e) => e.n),
      same: peer.channel === firstChannel && room.connections.get(peer.peerId) === peer,
      events,
      pair: null,
    }));
    got.pair = await a.page.evaluate(() => peer.getSelectedPair());
    record.pings = total;
    record.events = got.events
      .filter((e) => e.name !== 'state')
      .map((e) => `${e.name}${e.cause ? `(${e.cause}${e.durationMs !== undefined ? ` ${e.durationMs} ms` : ''})` : ''}`
        + ` +${e.at - eventAt} ms`);
    record.states = got.events.filter((e) => e.name === 'state' && e.at >= eventAt)
      .map((e) => `${e.iceConnectionState}/${e.connectionState} +${e.at - eventAt}`);
    const describe = (p) => `${p?.local?.candidateType}/${p?.local?.relayProtocol ?? p?.local?.protocol} -> ${p?.remote?.candidateType}`;
    record.pairs = `${describe(record.firstPair)} then ${describe(got.pair)}`;
    if (sc.name === 'credential-60s') {
      const refreshes = got.events.filter((e) => e.name === 'room-ice-servers');
      record.callMs = Date.now() - callAt;
      record.refreshes = refreshes.length;
      const firstExpiry = await a.page.evaluate(() => firstExpiry);
      // The call outlived its first credential by minutes, and the restart after that allocated a relay again.
      assert.ok(Date.now() / 1000 > firstExpiry + 60, 'the call went on well past the first credential\'s expiry');
      assert.ok(refreshes.length >= 3, `credential refreshed over the call (${refreshes.length} times)`);
      assert.ok(got.events.some((e) => e.name === 'reconnected' && e.at > firstExpiry * 1000), 'an ICE restart after the expiry connected');
      assert.equal(got.pair?.local?.candidateType, 'relay', 'relayed after the restart (a new allocation, fresh credential)');
    }
    console.log(`${sc.name} (${sc.a} + ${sc.b}): echoes again ${record.recoveryMs} ms, video ${record.videoMs ?? '(none sent)'} ms after the network was usable `
      + `(event took ${record.eventMs} ms); ${total} pings, lost ${total - new Set(got.echoes).size}; `
      + `path ${record.pairs}; events: ${record.events.join(', ') || 'none'}; ICE: ${record.states.join(', ') || 'unchanged'}`);
    assert.deepEqual(got.echoes, Array.from({ length: total }, (_, i) => i), 'every ping echoed once, in order');
    assert.ok(got.same, 'the same Peer and data channel');
    record.outcome = 'recovered';
  } catch (err) {
    record.outcome = `FAIL: ${err.message.split('\n')[0]}`;
    // What the call did: A's events and video sending, B's decoding (a stall's shape says where it is).
    const state = await Promise.all([
      pages?.a.page.evaluate(async () => {
        const out = [];
        (await window.peer?.pc.getStats())?.forEach((r) => {
          if (r.type === 'outbound-rtp' && r.kind === 'video') out.push({ id: r.id, framesEncoded: r.framesEncoded, packetsSent: r.packetsSent, pliCount: r.pliCount, keyFramesEncoded: r.keyFramesEncoded, qualityLimitationReason: r.qualityLimitationReason, targetBitrate: r.targetBitrate });
        });
        return { events: (window.events || []).map((e) => `${e.name}${e.cause ? `(${e.cause})` : ''}${e.iceConnectionState ? `(${e.iceConnectionState}/${e.connectionState})` : ''}@${e.at % 100000}`), out };
      }).catch((e) => String(e)),
      pages?.b.page.evaluate(async () => {
        const inbound = [];
        (await window.peer?.pc.getStats())?.forEach((r) => {
          if (r.type === 'inbound-rtp' && r.kind === 'video') inbound.push({ id: r.id, framesDecoded: r.framesDecoded, packetsReceived: r.packetsReceived, keyFramesDecoded: r.keyFramesDecoded, pliCount: r.pliCount, framesDropped: r.framesDropped });
        });
        return { decoded: (window.decoded || []).filter((_, i, all) => i % 10 === 0 || i === all.length - 1).slice(-60).map((d) => `${d.at % 100000}:${d.frames}`).join(' '), inbound };
      }).catch((e) => String(e)),
    ]);
    console.log(`--- ${sc.name}: A ${JSON.stringify(state[0])}\n--- B ${JSON.stringify(state[1])}`);
    for (const [i, br] of browsers.entries()) {
      console.log(`--- ${i ? sc.b : sc.a} console ---\n${br.logs.slice(-40).join('\n')}`);
    }
    throw err;
  } finally {
    await Promise.all(browsers.map((b) => b.close()));
    sc.teardown?.();
  }
}

// A background scenario starts with the file and runs beside the others; its test, in list order, awaits it.
const background = new Map(
  SCENARIOS.filter((sc) => sc.background && !sc.skip).map((sc) => [sc.name, runScenario(sc).then(() => null, (err) => err)]),
);
for (const sc of SCENARIOS) {
  const name = `${sc.a} + ${sc.b}: ${sc.name}, the call recovers`;
  test(name, { timeout: 300000, skip: sc.skip ?? false }, async () => {
    if (!background.has(sc.name)) return runScenario(sc);
    const err = await background.get(sc.name);
    if (err) throw err;
  });
}
