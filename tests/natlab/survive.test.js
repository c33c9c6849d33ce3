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
//   udp-timeout-30s  both NATs forget an idle UDP mapping after 30 s; the call stays quiet (no data, no video) for
//                    2 minutes, then data must flow at once: ICE consent checks keep the mappings alive
//
// Run by run.sh (NATLAB_PREFIX, NATLAB_SERVER, NATLAB_RESULTS; CHROMIUM_PATH is the netns wrapper). Everything it
// changes is inside the lab's namespaces, which run.sh deletes at the end.
import { test, after } from 'node:test';
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
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
    name: 'turn-restart', a: 'sym-a', b: 'sym-b', relayed: true,
    why: 'the server carrying a relayed call restarts: allocations and signaling sessions die with it',
    async event() {
      execFileSync(path.join(here, 'lab.sh'), ['restart', PREFIX], { stdio: 'pipe' });
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
].filter((s) => ONLY.length === 0 || ONLY.includes(s.name));

const results = [];
after(() => {
  if (RESULTS) fs.writeFileSync(path.join(RESULTS, 'survive.json'), JSON.stringify(results, null, 2));
});

/** Chromium in a site's host namespace (the wrapper reads NATLAB_NS when playwright spawns it). */
async function browserIn(site) {
  process.env.NATLAB_NS = `${PREFIX}-${site}-h`;
  return launchBrowser();
}

let roomNo = 0;
for (const sc of SCENARIOS) {
  test(`${sc.a} + ${sc.b}: ${sc.name}, the call recovers`, { timeout: 240000, skip: sc.skip ?? false }, async (t) => {
    assert.ok(PREFIX, 'NATLAB_PREFIX is set (run through tests/natlab/run.sh)');
    const browsers = [];
    t.after(() => Promise.all(browsers.map((b) => b.close())));
    const record = { scenario: sc.name, a: sc.a, b: sc.b, why: sc.why };
    results.push(record);
    try {
      sc.setup?.();
      browsers.push(await browserIn(sc.a));
      browsers.push(await browserIn(sc.b));
      const room = `survive-${process.pid}-${++roomNo}`;
      const relay = !!sc.relayed;
      const a = await roomPage(browsers[0], SERVER, room, { relay });
      const b = await roomPage(browsers[1], SERVER, room, { relay, echo: true });
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
          for (const name of ['reconnecting', 'resumed', 'joined']) {
            room.on(name, (d) => events.push({ name: `room-${name}`, at: Date.now(), code: d.code, rejoined: d.rejoined }));
          }
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
      // B counts the frames it decodes, every 50 ms.
      await b.page.evaluate(() => {
        window.decoded = [];
        setInterval(async () => {
          if (!window.peer) return;
          const stats = await peer.pc.getStats();
          stats.forEach((r) => {
            if (r.type === 'inbound-rtp' && r.kind === 'video') decoded.push({ at: Date.now(), frames: r.framesDecoded });
          });
        }, 50);
      });
      // A quiet call sends no video either: media would keep the NATs' mappings alive by itself.
      if (!sc.quietMs) await until(15000, () => b.page.evaluate(() => decoded.some((d) => d.frames > 30)), 'B decodes video');
      if (relay) assert.ok([record.firstPair.local, record.firstPair.remote].some((c) => c.candidateType === 'relay'));
      await sleep(EVENT_AFTER_MS);
      if (sc.quietMs) {
        await a.page.evaluate(() => clearInterval(pinger));
        await sleep(sc.quietMs);
        await a.page.evaluate(() => {
          window.pinger = setInterval(ping, 100);
        });
      }
      const eventAt = Date.now();
      const usableAt = await sc.event();
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
      console.log(`${sc.name} (${sc.a} + ${sc.b}): echoes again ${record.recoveryMs} ms, video ${record.videoMs ?? '(none sent)'} ms after the network was usable `
        + `(event took ${record.eventMs} ms); ${total} pings, lost ${total - new Set(got.echoes).size}; `
        + `path ${record.pairs}; events: ${record.events.join(', ') || 'none'}; ICE: ${record.states.join(', ') || 'unchanged'}`);
      assert.deepEqual(got.echoes, Array.from({ length: total }, (_, i) => i), 'every ping echoed once, in order');
      assert.ok(got.same, 'the same Peer and data channel');
      record.outcome = 'recovered';
    } catch (err) {
      record.outcome = `FAIL: ${err.message.split('\n')[0]}`;
      for (const [i, br] of browsers.entries()) {
        console.log(`--- ${i ? sc.b : sc.a} console ---\n${br.logs.slice(-40).join('\n')}`);
      }
      throw err;
    }
  });
}
