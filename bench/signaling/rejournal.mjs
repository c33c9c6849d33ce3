#!/usr/bin/env node
// What writing the session journal again costs, after Redis restarted empty (`web::cluster::rewrite_journal`): one
// `--redis` node holds `pairs` rooms of two sessions, each with `kept` frames its client never acknowledged (what
// the journal keeps for a replay); Redis is restarted empty; the node's heartbeat finds its journal marker gone and
// its hub task writes every session again, in one pipeline, while the sockets of that task wait. A probe pair on
// the same node signals every `probe-ms` throughout: its worst one-way latency around the rewrite is what a call
// feels. Loopback only; bounded in count and time.
//
//   node rejournal.mjs --url ws://127.0.0.1:P --log NODE_LOG --restart "shell command" --pairs N --kept K
//
// Prints one JSON line: sessions and kept frames written, the node's own timing of the write (its log line), the
// probe's latency before (p50, max) and its worst around the rewrite.

import { execSync } from 'node:child_process';
import { readFileSync } from 'node:fs';
import WebSocket from 'ws';

const args = {};
for (let i = 2; i < process.argv.length; i += 2) args[process.argv[i].replace(/^--/, '')] = process.argv[i + 1];
const URL_BASE = args.url;
const PAIRS = Number(args.pairs ?? 1000);
const KEPT = Number(args.kept ?? 10);
const PROBE_MS = Number(args['probe-ms'] ?? 10);
const DEADLINE = Date.now() + Number(args['max-seconds'] ?? 300) * 1000;
const PAD = 'x'.repeat(Number(args['frame-bytes'] ?? 150));

const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

/** A socket that joins `room` and collects what it is sent; pings (no ack) keep it alive. */
function join(room) {
  return new Promise((resolve, reject) => {
    const ws = new WebSocket(`${URL_BASE}/ws?room=${room}`);
    const peer = { ws, id: null, onSignal: null };
    ws.on('open', () => ws.send(JSON.stringify({ type: 'join', room })));
    ws.on('message', (data) => {
      const m = JSON.parse(data.toString());
      if (m.type === 'joined') {
        peer.id = m.peerId;
        peer.ping = setInterval(() => ws.send('{"type":"ping"}'), 4000);
        resolve(peer);
      } else if (m.type === 'signal' && peer.onSignal) peer.onSignal(m);
    });
    ws.on('error', reject);
  });
}

async function inBatches(n, make) {
  const out = [];
  for (let i = 0; i < n; i += 200) {
    out.push(...(await Promise.all(Array.from({ length: Math.min(200, n - i) }, (_, k) => make(i + k)))));
  }
  return out;
}

const pairs = await inBatches(PAIRS, async (i) => {
  const b = await join(`rj-${i}`);
  const a = await join(`rj-${i}`);
  return { a, b };
});
// Kept frames: A signals B `kept` times; B reads them and never acknowledges.
for (const { a, b } of pairs) {
  for (let k = 0; k < KEPT; k++) a.ws.send(JSON.stringify({ type: 'signal', to: b.id, data: { k, pad: PAD } }));
}
await sleep(2000);

// The probe: one signal every PROBE_MS, its one-way latency (same process clock).
const probeB = await join('rj-probe');
const probeA = await join('rj-probe');
const latencies = [];
probeB.onSignal = (m) => latencies.push({ at: Date.now(), ms: performance.now() - m.data.t });
const probe = setInterval(() => {
  probeA.ws.send(JSON.stringify({ type: 'signal', to: probeB.id, data: { t: performance.now() } }));
}, PROBE_MS);
await sleep(2000);
const before = latencies.map((l) => l.ms).sort((x, y) => x - y);

const restartedAt = Date.now();
execSync(args.restart, { stdio: 'inherit' });
let line = null;
while (!line && Date.now() < DEADLINE) {
  await sleep(100);
  line = readFileSync(args.log, 'utf8')
    .split('\n')
    .find((l) => l.includes('written again'));
}
await sleep(1500);
clearInterval(probe);
const around = latencies.filter((l) => l.at >= restartedAt).map((l) => l.ms);
const field = (name) => line?.match(new RegExp(`${name}=(\\d+)`))?.[1];
console.log(
  JSON.stringify({
    pairs: PAIRS,
    kept_per_session: KEPT,
    sessions: Number(field('sessions')),
    frames: Number(field('frames')),
    write_ms: Number(field('elapsed_ms')),
    probe_before_p50_ms: +before[before.length >> 1].toFixed(2),
    probe_before_max_ms: +before[before.length - 1].toFixed(2),
    probe_worst_after_restart_ms: +Math.max(...around).toFixed(2),
    probes_after_restart: around.length,
  }),
);
for (const p of [...pairs.flatMap(({ a, b }) => [a, b]), probeA, probeB]) {
  clearInterval(p.ping);
  p.ws.terminate();
}
process.exit(0);
