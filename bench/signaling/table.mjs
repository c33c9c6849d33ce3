#!/usr/bin/env node
// Prints the results of run.sh (results.jsonl) as one Markdown table with the Traverse/PeerJS ratios.
// With several repetitions each number is the median over them; counts of failures and losses are the worst.
import { readFileSync } from 'node:fs';

const rows = readFileSync(process.argv[2], 'utf8')
  .split('\n')
  .filter(Boolean)
  .map((l) => JSON.parse(l));
const labels = [...new Set(rows.map((r) => r.label))];
const reps = Math.max(...labels.map((l) => rows.filter((r) => r.label === l && r.server === 'traverse').length));

const median = (xs) => {
  const s = xs.filter((x) => typeof x === 'number').sort((a, b) => a - b);
  if (!s.length) return null;
  return s.length % 2 ? s[(s.length - 1) / 2] : +((s[s.length / 2 - 1] + s[s.length / 2]) / 2).toFixed(3);
};
const WORST_MIN = new Set(['held']);
const WORST_MAX = new Set(['failures', 'lost', 'out_of_order']);

/** The runs of one test on one server merged: medians, worst counts, and how many runs failed outright. */
function merged(label, server) {
  const runs = rows.filter((r) => r.label === label && r.server === server);
  const ok = runs.map((r) => r.r).filter(Boolean);
  if (!ok.length) return null;
  const out = { ...ok[0], runs: runs.length, failed_runs: runs.length - ok.length };
  for (const [k, v] of Object.entries(ok[0])) {
    if (typeof v !== 'number') continue;
    const xs = ok.map((r) => r[k]);
    out[k] = WORST_MIN.has(k) ? Math.min(...xs) : WORST_MAX.has(k) ? Math.max(...xs) : median(xs);
  }
  return out;
}

const fmt = (v) => (v === null || v === undefined || Number.isNaN(v) ? 'n/a' : String(v));
const ratio = (a, b) => (typeof a === 'number' && typeof b === 'number' && b !== 0 ? (a / b).toFixed(2) : 'n/a');
const range = (label, server, k) => {
  const xs = rows
    .filter((r) => r.label === label && r.server === server && r.r)
    .map((r) => r.r[k])
    .filter((x) => typeof x === 'number');
  return xs.length > 1 ? ` (${Math.min(...xs)}–${Math.max(...xs)})` : '';
};

const metrics = {
  hold: [
    ['idle sockets held (worst run)', (r) => `${r.held}/${r.conns}`],
    ['server RSS before → after, MiB', (r) => `${(r.rss_before_kib / 1024).toFixed(1)} → ${(r.rss_after_kib / 1024).toFixed(1)}`],
    ['bytes per idle connection', (r) => r.bytes_per_conn, 'bytes_per_conn'],
    ['server CPU ms per 1k connects', (r) => r.server_cpu_ms_per_1k_connects, 'server_cpu_ms_per_1k_connects'],
    ['server CPU at idle, ms per second', (r) => r.server_idle_cpu_ms_per_s, 'server_idle_cpu_ms_per_s'],
  ],
  relay: [
    ['delivered signals/s', (r) => r.delivered_per_s, 'delivered_per_s'],
    ['lost (worst run)', (r) => r.lost],
    ['latency p50, ms', (r) => r.p50_ms, 'p50_ms'],
    ['latency p99, ms', (r) => r.p99_ms, 'p99_ms'],
    ['server CPU-s per 100k signals', (r) => r.server_cpu_s_per_100k, 'server_cpu_s_per_100k'],
    ['server / load-generator CPU-s', (r) => `${r.server_cpu_s} / ${r.client_cpu_s}`],
    ['longest stall of the load generator, ms', (r) => r.client_loop_delay_max_ms, 'client_loop_delay_max_ms'],
    ['machine load average (1 min)', (r) => r.loadavg_1m, 'loadavg_1m'],
  ],
};

console.log(`Medians of ${reps} run(s); (min–max) over the runs in brackets.\n`);
console.log('| test | metric | Traverse | PeerJS | Traverse/PeerJS |');
console.log('|---|---|---|---|---|');
for (const label of labels) {
  const t = merged(label, 'traverse');
  const p = merged(label, 'peerjs');
  const mode = label.startsWith('hold') ? 'hold' : 'relay';
  for (const [name, f, key] of metrics[mode]) {
    const a = t ? f(t) : null;
    const b = p ? f(p) : null;
    const ra = key && t ? range(label, 'traverse', key) : '';
    const rb = key && p ? range(label, 'peerjs', key) : '';
    console.log(`| ${label} | ${name} | ${fmt(a)}${ra} | ${fmt(b)}${rb} | ${key ? ratio(a, b) : ''} |`);
  }
  for (const [server, m] of [['Traverse', t], ['PeerJS', p]]) {
    if (m?.failed_runs) console.log(`| ${label} | runs that failed | ${server}: ${m.failed_runs} of ${m.runs} | | |`);
  }
}
