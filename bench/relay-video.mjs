// Real video calls through the relay, with and without UDP GSO (`relay.gso`): headless Chromium pages (Debian's
// `chromium`, driven by playwright-core from tests/browser) hold CALLS two-way video calls, each page sending its
// fake camera at 1280×720, 30 fps, forced through Traverse's TURN over UDP (`iceTransportPolicy: 'relay'`). Both pages
// of a call relay through the same server, so each packet crosses it twice: client → relay socket → the other
// allocation's relay socket → its client.
//
// Per run: the server's CPU (utime+stime from /proc) and the packets it relayed (`traverse_turn_relayed_packets` on
// /metrics) over SECONDS, after the calls have run WARMUP s (5); the send system calls it made for them (`perf stat` on the
// syscalls tracepoints, when perf is there), so that datagrams per send call show how often libwebrtc's packets came
// in runs that left as one message. Runs alternate between `relay.gso=true` and `false`, REPEAT times each, and the
// table gives medians.
//
//   cargo build --release -p traverse && (cd tests/browser && npm ci)
//   sudo TRAVERSE_BIN=target/release/traverse node bench/relay-video.mjs      # CALLS=2 SECONDS=20 REPEAT=3
//   VIDEO_FILE=/tmp/noise.y4m WARMUP=30 ...   # the fake camera plays a file (noise: a high bitrate); 30 s to ramp up
//
// Loopback only. Chromium encodes and decodes the video on the same 2 cores as the server, so compare the two
// settings run against run, not with the loadgen's figures.
import { execFileSync, spawn } from 'node:child_process';
import fs from 'node:fs';
import { freePort, launchBrowser, startTraverse, sleep, until, within } from '../tests/browser/lib/harness.js';
import { chromium } from '../tests/browser/node_modules/playwright-core/index.mjs';
import { CHROMIUM } from '../tests/browser/lib/harness.js';

/** VIDEO_FILE (a .y4m or .mjpeg): the fake camera plays it instead of its test pattern, e.g. noise for a high
 * bitrate. Then the browser is launched here, with the harness's media and loopback flags and this one. */
const VIDEO_FILE = process.env.VIDEO_FILE;
async function browserFor() {
  if (!VIDEO_FILE) return launchBrowser();
  const context = await chromium.launchPersistentContext(fs.mkdtempSync('/tmp/traverse-video-'), {
    executablePath: CHROMIUM,
    headless: true,
    ignoreHTTPSErrors: true,
    args: ['--no-sandbox', '--disable-gpu', '--ignore-certificate-errors', '--allow-loopback-in-peer-connection',
      '--use-fake-ui-for-media-stream', '--use-fake-device-for-media-stream',
      `--use-file-for-fake-video-capture=${VIDEO_FILE}`, '--disable-background-timer-throttling',
      '--disable-renderer-backgrounding', '--disable-backgrounding-occluded-windows'],
  });
  return { newPage: () => context.newPage(), close: () => context.close() };
}

const CALLS = Number(process.env.CALLS || 2);
const SECONDS = Number(process.env.SECONDS || 20);
const REPEAT = Number(process.env.REPEAT || 3);
/** Seconds the calls run before the measurement: the browsers' bandwidth estimate ramps up from ~300 kbps. */
const WARMUP = Number(process.env.WARMUP || 5);
const CLK_TCK = Number(execFileSync('getconf', ['CLK_TCK'], { encoding: 'utf8' }).trim());
const hasPerf = (() => {
  try {
    execFileSync('perf', ['--version'], { stdio: 'ignore' });
    return true;
  } catch {
    return false;
  }
})();

/** utime + stime of a process, in seconds. */
function cpuSeconds(pid) {
  const stat = fs.readFileSync(`/proc/${pid}/stat`, 'utf8');
  const fields = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
  return (Number(fields[11]) + Number(fields[12])) / CLK_TCK;
}

/** Sum of a counter over its label sets on the server's /metrics. */
async function counter(server, name) {
  const text = await (await fetch(`http://${server.metrics}/metrics`)).text();
  let sum = 0;
  for (const line of text.split('\n')) {
    if (line.startsWith(`${name}_total{`) || line.startsWith(`${name}_total `)) sum += Number(line.split(' ').pop());
  }
  return sum;
}

/** A page in `room` with its fake camera, whose peers send it and force TURN over UDP on the server's port. */
async function videoPage(browser, server, room) {
  const page = await browser.newPage();
  await page.goto(`${server.base}/healthz`);
  await within(
    20000,
    page.evaluate(
      async ({ roomName, port }) => {
        const T = await import('/sdk/traverse.js');
        window.media = await navigator.mediaDevices.getUserMedia({
          video: { width: 1280, height: 720, frameRate: 30 },
        });
        const udpTurn = (u) => u.startsWith('turn:') && u.includes(`:${port}`) && !u.includes('transport=tcp');
        window.opts = () => ({
          iceTransportPolicy: 'relay',
          iceServers: T.filterIceServers(window.room.iceServers, udpTurn),
          media: window.media,
        });
        window.room = await T.connect({ room: roomName, peerOptions: () => window.opts() });
        window.room.on('peer-connection', ({ peer }) => (window.peer = peer));
      },
      { roomName: room, port: server.ports.turn },
    ),
    `join ${room}`,
  );
  return page;
}

/** Frames decoded from the other side so far. */
const framesDecoded = (page) =>
  page.evaluate(async () => {
    if (!window.peer) return 0;
    const stats = await window.peer.pc.getStats();
    let n = 0;
    stats.forEach((s) => {
      if (s.type === 'inbound-rtp' && s.kind === 'video') n += s.framesDecoded || 0;
    });
    return n;
  });

async function run(gso) {
  const metrics = `127.0.0.1:${await freePort()}`;
  const server = { ...(await startTraverse({ extraArgs: ['--set', `relay.gso=${gso}`, '--metrics', metrics] })), metrics };
  const browser = await browserFor();
  try {
    const pages = [];
    for (let c = 0; c < CALLS; c++) {
      const room = `video-${gso}-${c}-${Date.now()}`;
      const a = await videoPage(browser, server, room);
      const b = await videoPage(browser, server, room);
      const bId = await b.evaluate(() => room.peerId);
      await until(10000, () => a.evaluate((id) => room.peers.has(id), bId), 'A sees B');
      await a.evaluate((id) => {
        window.peer = room.connect(id, window.opts());
      }, bId);
      pages.push(a, b);
    }
    for (const p of pages) await until(30000, async () => (await framesDecoded(p)) > 30, 'video decoded on every page');
    const pair = await pages[0].evaluate(async () => (await window.peer.getSelectedPair()) || null);
    if (!pair || pair.local?.candidateType !== 'relay') throw new Error(`not relayed: ${JSON.stringify(pair)}`);
    await sleep(WARMUP * 1000);
    const [cpu0, pkts0, frames0] = [cpuSeconds(server.pid), await counter(server, 'traverse_turn_relayed_packets'),
      (await Promise.all(pages.map(framesDecoded))).reduce((x, y) => x + y, 0)];
    let perf = null;
    let perfOut = '';
    if (hasPerf) {
      const events = ['sendto', 'sendmmsg', 'sendmsg'].map((s) => `syscalls:sys_enter_${s}`).join(',');
      perf = spawn('perf', ['stat', '-x', ',', '-e', events, '-p', String(server.pid), '--', 'sleep', String(SECONDS)]);
      perf.stderr.on('data', (d) => (perfOut += d));
    }
    await sleep(SECONDS * 1000);
    const [cpu1, pkts1, frames1] = [cpuSeconds(server.pid), await counter(server, 'traverse_turn_relayed_packets'),
      (await Promise.all(pages.map(framesDecoded))).reduce((x, y) => x + y, 0)];
    if (perf) await new Promise((r) => perf.on('exit', r));
    const sends = perfOut
      .split('\n')
      .filter((l) => l.includes('sys_enter_'))
      .reduce((sum, l) => sum + (Number(l.split(',')[0]) || 0), 0);
    const packets = pkts1 - pkts0;
    return {
      packets,
      cpu: cpu1 - cpu0,
      usPerPacket: ((cpu1 - cpu0) * 1e6) / packets,
      perSend: hasPerf && sends ? packets / sends : null,
      fps: (frames1 - frames0) / SECONDS / pages.length,
    };
  } finally {
    await browser.close();
    await server.stop();
  }
}

const median = (xs) => {
  const s = [...xs].sort((a, b) => a - b);
  return s.length % 2 ? s[(s.length - 1) / 2] : (s[s.length / 2 - 1] + s[s.length / 2]) / 2;
};

console.log(`== ${CALLS} two-way 720p calls over TURN/UDP, ${SECONDS} s per run, load average ${fs.readFileSync('/proc/loadavg', 'utf8').split(' ').slice(0, 3).join(' ')}`);
const results = { true: [], false: [] };
for (let r = 0; r < REPEAT; r++) {
  for (const gso of r % 2 ? [false, true] : [true, false]) {
    const x = await run(gso);
    results[gso].push(x);
    console.log(`relay.gso=${gso}: ${x.packets} packets relayed, server CPU ${x.cpu.toFixed(2)} s, ${x.usPerPacket.toFixed(2)} µs per packet, `
      + `${x.perSend ? x.perSend.toFixed(2) : '–'} datagrams per send call, ${x.fps.toFixed(1)} frames/s decoded per page`);
  }
}
const row = (label, f, digits = 2) =>
  console.log(`| ${label} | ${median(results.true.map(f)).toFixed(digits)} | ${median(results.false.map(f)).toFixed(digits)} |`);
console.log(`\n| median of ${REPEAT} | relay.gso=true | relay.gso=false |\n|---|---:|---:|`);
row('packets relayed per s', (x) => x.packets / SECONDS, 0);
row('server CPU µs per relayed packet', (x) => x.usPerPacket);
if (hasPerf) row('datagrams per send call', (x) => x.perSend || 0);
row('frames decoded per s per page', (x) => x.fps, 1);
const paired = results.true.map((x, i) => x.usPerPacket / results.false[i].usPerPacket);
console.log(`\nCPU per packet, gso=true / gso=false, per repetition: ${paired.map((p) => p.toFixed(2)).join(' ')}; median ${median(paired).toFixed(2)}`);
console.log(`load average at the end: ${fs.readFileSync('/proc/loadavg', 'utf8').split(' ').slice(0, 3).join(' ')}`);
