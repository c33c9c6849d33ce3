#!/usr/bin/env node
// Signaling load generator: one script, two protocol adapters (Traverse protocol v1, PeerJS server), so both
// servers meet exactly the same load. Everything is bounded in time and in count.
//
//   node load.mjs hold  --proto traverse|peerjs --url ws://127.0.0.1:P --pid SERVER_PID --conns N [--idle S]
//                       [--heartbeats 1] [--per-address 25000]
//   node load.mjs relay --proto traverse|peerjs --url ws://127.0.0.1:P --pid SERVER_PID --pairs K
//                       [--seconds 10] [--max-messages 2000000] [--window 16] [--rate 0] [--tick-ms 5]
//   --room-in-url 0: Traverse sockets name their room only in their join frame (as a client other than the SDK may),
//                    not in `/ws?room=` too.
//
// hold:  opens N sockets (pairs of peers: Traverse joins one room per pair, PeerJS registers an id per socket),
//        waits for every `joined` / `OPEN`, lets the server settle, measures its CPU over `idle` seconds of
//        silence, reads its RSS, closes them. Prints one JSON line: RSS before/after, bytes per connection, setup
//        time, server CPU to connect and at idle. Beyond `per-address` sockets they connect from 127.0.0.2, .3, …
//        (one client address has ~28 000 ports towards one server port), so 100 000 fit where the fd limit allows.
// relay: K pairs (sender → receiver). Each sender keeps at most `window` messages in flight and sends for
//        `seconds` or until `max-messages` were sent in all; with `rate` > 0 the senders are paced to that many
//        messages per second in total instead of running flat out. Each message carries a send timestamp; the
//        receiver records the latency. Prints one JSON line: delivered messages/s, latency percentiles, losses,
//        server and client CPU-seconds.
//
// The payload is an ICE candidate of the size browsers send, plus a timestamp and a counter.

import { readdirSync, readFileSync } from 'node:fs';
import { monitorEventLoopDelay, performance } from 'node:perf_hooks';
import WebSocket from 'ws';

const args = parseArgs(process.argv.slice(2));
const MODE = args._[0];
const PROTO = args.proto;
const URL_BASE = args.url;
const PID = Number(args.pid);
const CLK_TCK = 100; // Linux USER_HZ; /proc/<pid>/stat counts in these ticks on every mainstream kernel.

const CANDIDATE = {
  candidate:
    'candidate:842163049 1 udp 1677729535 203.0.113.7 54321 typ srflx raddr 192.168.1.20 rport 54321 generation 0 ufrag EsAw network-cost 999',
  sdpMid: '0',
  sdpMLineIndex: 0,
};

function parseArgs(argv) {
  const out = { _: [] };
  for (let i = 0; i < argv.length; i++) {
    if (argv[i].startsWith('--')) out[argv[i].slice(2)] = argv[++i];
    else out._.push(argv[i]);
  }
  return out;
}

function serverRssKiB() {
  const m = readFileSync(`/proc/${PID}/status`, 'utf8').match(/VmRSS:\s+(\d+)/);
  return m ? Number(m[1]) : NaN;
}

function serverCpuSeconds() {
  // Fields after the parenthesised command name: utime is the 14th field, stime the 15th.
  const stat = readFileSync(`/proc/${PID}/stat`, 'utf8');
  const rest = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
  return (Number(rest[11]) + Number(rest[12])) / CLK_TCK;
}

/** CPU-seconds per server thread, by thread name (threads of one name added up). */
function serverThreadCpu() {
  const out = {};
  for (const tid of readdirSync(`/proc/${PID}/task`)) {
    try {
      const stat = readFileSync(`/proc/${PID}/task/${tid}/stat`, 'utf8');
      const name = stat.slice(stat.indexOf('(') + 1, stat.lastIndexOf(')'));
      const rest = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
      out[name] = (out[name] ?? 0) + (Number(rest[11]) + Number(rest[12])) / CLK_TCK;
    } catch {
      // the thread ended meanwhile
    }
  }
  return out;
}

function threadDelta(before, after) {
  const out = {};
  for (const [k, v] of Object.entries(after)) {
    const d = v - (before[k] ?? 0);
    if (d >= 0.05) out[k] = +d.toFixed(2);
  }
  return out;
}

function clientCpuSeconds() {
  const u = process.cpuUsage();
  return (u.user + u.system) / 1e6;
}

const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

// ---- protocol adapters: how to open a registered peer, address a signal, and recognise a delivered one ----

const RUN = Math.random().toString(36).slice(2, 8);

const adapters = {
  traverse: {
    // The room in the URL, as the SDK puts it on a join: the server serves the socket on the room's worker from the
    // upgrade on (without it, from the join on).
    url: (name, room) => (args['room-in-url'] === '0' ? `${URL_BASE}/ws` : `${URL_BASE}/ws?room=${encodeURIComponent(room)}`),
    hello: (name, room) => JSON.stringify({ type: 'join', room }),
    // Ready when `joined` arrives; our id is its peerId, the room's earlier peers are in `peers`.
    ready(msg, conn) {
      if (msg.type === 'joined') {
        conn.id = msg.peerId;
        conn.peers = msg.peers.map((p) => p.id);
        return true;
      }
      if (msg.type === 'error') throw new Error(`traverse refused: ${msg.code}`);
      return false;
    },
    frame: (dst, data) => `{"type":"signal","to":"${dst}","data":${data}}`,
    delivered(msg, conn) {
      if (msg.seq > conn.lastSeq) conn.lastSeq = msg.seq;
      return msg.type === 'signal' ? msg.data : null;
    },
    // The SDK's heartbeat: ping, acknowledging what was processed so the server frees its replay buffer.
    heartbeat: (conn) => `{"type":"ping","ack":${conn.lastSeq}}`,
    // How often the SDK sends it: the `heartbeatMs` of `joined` (the server's heartbeat_interval, 10 s).
    heartbeatMs: 10000,
  },
  peerjs: {
    // What the PeerJS client does: the id and a random token in the query of /peerjs.
    url: (name) => `${URL_BASE}/peerjs?key=peerjs&id=${name}-${RUN}&token=t${RUN}`,
    hello: () => null,
    ready(msg, conn) {
      if (msg.type === 'OPEN') {
        conn.id = `${conn.name}-${RUN}`;
        return true;
      }
      if (msg.type === 'ERROR' || msg.type === 'ID-TAKEN') throw new Error(`peerjs refused: ${JSON.stringify(msg)}`);
      return false;
    },
    frame: (dst, data) => `{"type":"CANDIDATE","dst":"${dst}","payload":${data}}`,
    delivered: (msg) => (msg.type === 'CANDIDATE' ? msg.payload : null),
    // The PeerJS client's heartbeat message.
    heartbeat: () => '{"type":"HEARTBEAT"}',
    // The PeerJS client's `pingInterval` default.
    heartbeatMs: 5000,
  },
};

const A = adapters[PROTO];
if (!A) {
  console.error('--proto traverse|peerjs');
  process.exit(2);
}

/** Opens one socket and waits until the server has registered the peer (joined / OPEN), at most 15 s. */
/** @param {string} name @param {string} room @param {Function} [onMessage] @param {string} [localAddress] */
function openPeer(name, room, onMessage, localAddress) {
  return new Promise((resolve, reject) => {
    const conn = { name, room, id: null, peers: [], lastSeq: 0, ws: null, ready: false };
    // wss: the benchmark's self-signed certificate (TLS=1 in run.sh) is accepted as it is.
    const ws = new WebSocket(A.url(name, room), {
      perMessageDeflate: false,
      handshakeTimeout: 10000,
      localAddress,
      rejectUnauthorized: false,
    });
    conn.ws = ws;
    const timer = setTimeout(() => {
      ws.terminate();
      reject(new Error(`${name}: not registered within 15 s`));
    }, 15000);
    ws.on('open', () => {
      const hello = A.hello(name, room);
      if (hello) ws.send(hello);
    });
    ws.on('message', (raw) => {
      let msg;
      try {
        msg = JSON.parse(raw.toString());
      } catch {
        return;
      }
      if (!conn.ready) {
        try {
          if (A.ready(msg, conn)) {
            conn.ready = true;
            clearTimeout(timer);
            resolve(conn);
          }
        } catch (e) {
          clearTimeout(timer);
          ws.terminate();
          reject(e);
        }
        return;
      }
      onMessage?.(msg, conn);
    });
    ws.on('error', (e) => {
      clearTimeout(timer);
      reject(e);
    });
    ws.on('close', (code) => {
      conn.closed = code;
      clearTimeout(timer);
      reject(new Error(`${name}: closed ${code}`));
    });
  });
}

/** Runs `make(i)` for i in 0..n with at most `parallel` in flight. */
async function inBatches(n, parallel, make) {
  const out = new Array(n);
  let next = 0;
  let failures = 0;
  let firstError = null;
  async function lane() {
    while (next < n) {
      const i = next++;
      try {
        out[i] = await make(i);
      } catch (e) {
        failures++;
        firstError ??= String(e.message ?? e);
      }
    }
  }
  await Promise.all(Array.from({ length: Math.min(parallel, n) }, lane));
  return { out, failures, firstError };
}

async function closeAll(conns) {
  for (const c of conns) if (c) c.ws.terminate();
  await sleep(200);
}

// ---- hold: memory per idle connection ----

async function hold() {
  const n = Number(args.conns);
  const settleMs = Number(args.settle ?? 2000);
  const rssBefore = serverRssKiB();
  const cpu0 = serverCpuSeconds();
  const t0 = performance.now();
  // One client address has ~28 000 ephemeral ports towards the server's one address and port: beyond
  // --per-address sockets (25 000), each further batch connects from the next loopback address (127.0.0.2, …), which
  // needs the server on loopback too.
  const perAddress = Number(args['per-address'] ?? 25000);
  const from = (i) => (n > perAddress ? `127.0.0.${1 + Math.floor(i / perAddress)}` : undefined);
  const { out, failures, firstError } = await inBatches(n, 100, (i) =>
    openPeer(`h${i}`, `hold-${i >> 1}`, undefined, from(i)),
  );
  const setupSeconds = (performance.now() - t0) / 1000;
  const cpuSetup = serverCpuSeconds() - cpu0;
  await sleep(settleMs);
  // CPU at idle: the server's CPU while every socket is held and silent, for `idle` seconds (the issue's "timers
  // and heartbeats must not cost CPU per idle object"; Traverse pings each socket quiet for heartbeat_interval).
  // With --heartbeats 1, each socket sends its client's heartbeat at that client's interval, spread evenly over the
  // interval, as idle browsers do; without, the sockets are silent (Traverse then pings each every 10 s).
  const idleSeconds = Number(args.idle ?? 0);
  const live = out.filter((c) => c && !c.closed);
  let next = 0;
  const TICK_MS = 50;
  const perTick = (live.length * TICK_MS) / A.heartbeatMs;
  let owed = 0;
  const beats = args.heartbeats === '1'
    ? setInterval(() => {
        owed += perTick;
        for (; owed >= 1 && live.length; owed -= 1) {
          const c = live[next++ % live.length];
          if (!c.closed) c.ws.send(A.heartbeat(c));
        }
      }, TICK_MS)
    : null;
  if (beats) await sleep(A.heartbeatMs); // one whole round before measuring
  const cpuIdle0 = serverCpuSeconds();
  const tIdle = performance.now();
  if (idleSeconds > 0) await sleep(idleSeconds * 1000);
  if (beats) clearInterval(beats);
  const idleCpu = serverCpuSeconds() - cpuIdle0;
  const idleWall = (performance.now() - tIdle) / 1000;
  const held = out.filter((c) => c && !c.closed).length;
  const rssAfter = serverRssKiB();
  const result = {
    mode: 'hold',
    proto: PROTO,
    conns: n,
    held,
    failures,
    firstError,
    rss_before_kib: rssBefore,
    rss_after_kib: rssAfter,
    bytes_per_conn: held ? Math.round(((rssAfter - rssBefore) * 1024) / held) : null,
    setup_seconds: +setupSeconds.toFixed(2),
    server_cpu_ms_per_1k_connects: held ? +((cpuSetup * 1e6) / held).toFixed(1) : null,
    // Milliseconds of server CPU per second of idle, i.e. thousandths of a core.
    server_idle_cpu_ms_per_s: idleSeconds > 0 ? +((idleCpu * 1000) / idleWall).toFixed(2) : null,
    idle_seconds: idleSeconds > 0 ? +idleWall.toFixed(1) : null,
    idle_heartbeats: args.heartbeats === '1',
  };
  await closeAll(out);
  console.log(JSON.stringify(result));
}

// ---- relay: throughput and latency of signals between pairs ----

async function relay() {
  const pairs = Number(args.pairs);
  const seconds = Number(args.seconds ?? 10);
  const maxMessages = Number(args['max-messages'] ?? 2_000_000);
  const window = Number(args.window ?? 16);
  const rate = Number(args.rate ?? 0);
  // Paced: how often the ticker sends its share. 5 ms sends in bursts (the default, as in earlier results); 1 ms is
  // as smooth as Node's timers go. A server that batches its wake-ups can look better with bursts than smooth.
  const tickMs = Number(args['tick-ms'] ?? 5);
  const drainMs = 5000;

  const latencies = new Float64Array(maxMessages);
  let received = 0;
  let sent = 0;
  let sending = false;
  let lastReceiveAt = 0;
  let outOfOrder = 0;
  const P = []; // { a, b, inflight, nextN, expectN }
  const SLOW_MS = Number(process.env.SLOW_MS ?? 0); // diagnostics: log (send time, latency) of slow signals
  const slow = [];
  let t0 = 0;

  function sendOne(p) {
    const data = `{"candidate":${CANDIDATE_JSON},"t":${performance.now()},"n":${p.nextN++}}`;
    p.a.ws.send(A.frame(p.b.id, data));
    p.inflight++;
    sent++;
  }

  // Flat out: top the pair's window up. Paced: sending is driven by the ticker only.
  function topUp(p) {
    while (sending && rate === 0 && p.inflight < window && sent < maxMessages) sendOne(p);
  }

  function onReceiverMessage(p) {
    return (msg, conn) => {
      const data = A.delivered(msg, conn);
      if (!data) return;
      const now = performance.now();
      if (received < maxMessages) latencies[received] = now - data.t;
      if (SLOW_MS && now - data.t > SLOW_MS) slow.push([+(data.t - t0).toFixed(1), +(now - data.t).toFixed(1)]);
      received++;
      lastReceiveAt = now;
      if (data.n !== p.expectN) outOfOrder++;
      p.expectN = data.n + 1;
      p.inflight--;
      topUp(p);
    };
  }

  // Set up: receiver first, then sender, in the same room (Traverse) — the sender learns the receiver's id.
  const setup = await inBatches(pairs, 50, async (i) => {
    const p = { inflight: 0, nextN: 0, expectN: 0 };
    p.b = await openPeer(`b${i}`, `pair-${RUN}-${i}`, (msg, conn) => onReceiverMessage(p)(msg, conn));
    p.a = await openPeer(`a${i}`, `pair-${RUN}-${i}`, (msg, conn) => A.delivered(msg, conn));
    P.push(p);
    return p;
  });
  if (setup.failures) throw new Error(`setup: ${setup.failures} pairs failed: ${setup.firstError}`);
  // Bind the receive handler once per pair (avoid a closure per message).
  for (const p of P) {
    const handler = onReceiverMessage(p);
    p.b.ws.removeAllListeners('message');
    p.b.ws.on('message', (raw) => {
      let msg;
      try {
        msg = JSON.parse(raw);
      } catch {
        return;
      }
      handler(msg, p.b);
    });
  }

  // Heartbeats, once a second per socket, as a real client would send (not counted as relayed messages).
  const heartbeat = setInterval(() => {
    for (const p of P) {
      p.a.ws.send(A.heartbeat(p.a));
      p.b.ws.send(A.heartbeat(p.b));
    }
  }, 1000);

  const cpu0 = serverCpuSeconds();
  const threads0 = serverThreadCpu();
  const client0 = clientCpuSeconds();
  // The load generator's own scheduling stalls: if they are as long as the slow signals, the machine was busy.
  const loopDelay = monitorEventLoopDelay({ resolution: 5 });
  loopDelay.enable();
  t0 = performance.now();
  sending = true;
  let ticker = null;
  if (rate > 0) {
    // Paced: every `tickMs`, send this tick's share round-robin over the pairs, still within each pair's window.
    let due = 0;
    let rr = 0;
    let last = performance.now();
    ticker = setInterval(() => {
      const now = performance.now();
      due += ((now - last) / 1000) * rate;
      last = now;
      let guard = P.length;
      while (due >= 1 && sent < maxMessages && guard > 0) {
        const p = P[rr++ % P.length];
        if (p.inflight < window) {
          sendOne(p);
          due -= 1;
          guard = P.length;
        } else guard--;
      }
      if (due > rate) due = rate; // never build up more than a second of backlog
    }, tickMs);
  } else {
    for (const p of P) topUp(p);
  }
  const sendDeadline = t0 + seconds * 1000;
  while (performance.now() < sendDeadline && sent < maxMessages) await sleep(20);
  sending = false;
  if (ticker) clearInterval(ticker);
  const sendEnd = performance.now();
  const receivedAtSendEnd = received;
  // Drain what is in flight, at most 5 s.
  const drainDeadline = performance.now() + drainMs;
  while (received < sent && performance.now() < drainDeadline) await sleep(10);
  clearInterval(heartbeat);
  const cpu = serverCpuSeconds() - cpu0;
  const threads = threadDelta(threads0, serverThreadCpu());
  loopDelay.disable();
  const clientCpu = clientCpuSeconds() - client0;
  const elapsed = ((lastReceiveAt || sendEnd) - t0) / 1000;

  const n = Math.min(received, maxMessages);
  const lat = latencies.subarray(0, n).sort();
  const pct = (q) => (n ? +lat[Math.min(n - 1, Math.floor(q * n))].toFixed(3) : null);
  const result = {
    mode: 'relay',
    proto: PROTO,
    pairs,
    window,
    rate,
    seconds: +((sendEnd - t0) / 1000).toFixed(2),
    sent,
    received,
    lost: sent - received,
    out_of_order: outOfOrder,
    delivered_per_s: Math.round(received / elapsed),
    delivered_per_s_send_phase: Math.round(receivedAtSendEnd / ((sendEnd - t0) / 1000)),
    p50_ms: pct(0.5),
    p99_ms: pct(0.99),
    max_ms: n ? +lat[n - 1].toFixed(3) : null,
    server_cpu_s: +cpu.toFixed(2),
    server_cpu_s_per_100k: received ? +((cpu * 1e5) / received).toFixed(3) : null,
    client_cpu_s: +clientCpu.toFixed(2),
    server_threads_cpu_s: threads,
    client_loop_delay_max_ms: +(loopDelay.max / 1e6).toFixed(1),
    loadavg_1m: +readFileSync('/proc/loadavg', 'utf8').split(' ')[0],
    server_rss_kib: serverRssKiB(),
  };
  if (SLOW_MS) console.error(JSON.stringify(slow.slice(0, 400)));
  await closeAll(P.flatMap((p) => [p.a, p.b]));
  console.log(JSON.stringify(result));
}

const CANDIDATE_JSON = JSON.stringify(CANDIDATE);

// A hard stop for the whole process, whatever happens: nothing here may run unbounded.
const hardStop = setTimeout(() => {
  console.error('load.mjs: hard time limit reached');
  process.exit(3);
}, Number(args['time-limit'] ?? 180) * 1000);
hardStop.unref();

try {
  if (MODE === 'hold') await hold();
  else if (MODE === 'relay') await relay();
  else {
    console.error('mode: hold | relay');
    process.exit(2);
  }
  process.exit(0);
} catch (e) {
  console.error(`load.mjs: ${e.stack ?? e}`);
  process.exit(1);
}
