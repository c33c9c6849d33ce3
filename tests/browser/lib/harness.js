// Shared pieces of the browser tests: Chromium (Debian's, through playwright-core), the real `traverse` binary on
// loopback with free ports, bounded waits. Everything a test starts, the test stops (the server by PID).
import { spawn } from 'node:child_process';
import dgram from 'node:dgram';
import fs from 'node:fs';
import https from 'node:https';
import http from 'node:http';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { chromium } from 'playwright-core';

export const ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../../..');
export const CHROMIUM = process.env.CHROMIUM_PATH || '/usr/bin/chromium';
export const TRAVERSE_BIN = process.env.TRAVERSE_BIN || path.join(ROOT, 'target/debug/traverse');

const CHROMIUM_ARGS = [
  '--headless',
  '--no-sandbox',
  '--disable-gpu',
  '--disable-background-networking',
  '--disable-component-update',
  '--no-first-run',
  '--disable-sync',
  '--ignore-certificate-errors',
  // WebRTC on loopback: gather on the loopback interface too (the TURN server is on 127.0.0.1).
  '--allow-loopback-in-peer-connection',
  // No camera/microphone prompts or devices; fake ones when a test asks for media.
  '--use-fake-ui-for-media-stream',
  '--use-fake-device-for-media-stream',
  // Keep background tabs' timers and sockets running at full speed: two pages are active at once.
  '--disable-background-timer-throttling',
  '--disable-renderer-backgrounding',
  '--disable-backgrounding-occluded-windows',
];

/**
 * True when the test must be skipped because Chromium is missing (prints `SKIP: …`); throws instead when
 * TRAVERSE_REQUIRE_PEERS=1. Call as `if (skipWithoutChromium(t)) return;`.
 * @param {import('node:test').TestContext} t
 */
export function skipWithoutChromium(t) {
  if (fs.existsSync(CHROMIUM)) return false;
  const why = `SKIP: ${CHROMIUM} not found (apt-get install chromium)`;
  if (process.env.TRAVERSE_REQUIRE_PEERS === '1') throw new Error(`${why}, and TRAVERSE_REQUIRE_PEERS=1`);
  console.log(why);
  t.skip(why);
  return true;
}

/** Reject after `ms` with a message naming what was awaited. */
export function within(ms, promise, what) {
  let t;
  const timeout = new Promise((_, reject) => {
    t = setTimeout(() => reject(new Error(`timed out after ${ms} ms: ${what}`)), ms);
  });
  return Promise.race([promise, timeout]).finally(() => clearTimeout(t));
}

export const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

/** Poll `fn` until it returns a truthy value, at most `ms`. */
export async function until(ms, fn, what) {
  const deadline = Date.now() + ms;
  for (;;) {
    const v = await fn();
    if (v) return v;
    if (Date.now() > deadline) throw new Error(`timed out after ${ms} ms: ${what}`);
    await sleep(50);
  }
}

/**
 * Headless Chromium with a fresh profile. `pages` collects every page's console output for failure reports. With
 * `strictCertificates`, the server's self-signed certificate is refused as a user's browser would.
 * @returns {Promise<{newPage: () => Promise<import('playwright-core').Page>, logs: string[], close: () => Promise<void>}>}
 */
export async function launchBrowser({ strictCertificates = false } = {}) {
  const userDataDir = fs.mkdtempSync(path.join(os.tmpdir(), 'traverse-chromium-'));
  // strictCertificates: the server's self-signed certificate is refused, as by any user's browser.
  const args = strictCertificates ? CHROMIUM_ARGS.filter((a) => a !== '--ignore-certificate-errors') : CHROMIUM_ARGS;
  const context = await within(
    30000,
    chromium.launchPersistentContext(userDataDir, {
      executablePath: CHROMIUM,
      headless: true,
      args,
      ignoreHTTPSErrors: !strictCertificates,
      timeout: 30000,
    }),
    'Chromium launch',
  );
  const logs = [];
  let n = 0;
  const blank = context.pages();
  return {
    logs,
    async newPage() {
      const page = blank.length ? blank.shift() : await context.newPage();
      const name = `page${++n}`;
      page.on('console', (m) => logs.push(`[${name} ${m.type()}] ${m.text()}`));
      page.on('pageerror', (e) => logs.push(`[${name} pageerror] ${e.message}`));
      page.setDefaultTimeout(20000);
      return page;
    },
    async close() {
      await within(10000, context.close(), 'Chromium close').catch(() => {});
      fs.rmSync(userDataDir, { recursive: true, force: true });
    },
  };
}

/** Ports `freePort` already handed out in this process: never handed out twice. */
const handedOut = new Set();

/**
 * A port free on 127.0.0.1 for TCP and (with `udp`) UDP at once. Drawn at random below the kernel's ephemeral range
 * (32768-60999): a port the kernel handed out and we released could be given to an outgoing connection (seen in CI:
 * `cannot listen on single-port …: Address already in use`) before the server binds it. Below that range, and never
 * twice in one process, only another process's listener can take it; `startTraverse` draws again if one does.
 */
export async function freePort({ udp = false } = {}) {
  for (let i = 0; i < 50; i++) {
    const port = 20000 + Math.floor(Math.random() * 12000);
    if (handedOut.has(port)) continue;
    const tcp = await new Promise((resolve) => {
      const s = net.createServer();
      s.once('error', () => resolve(false));
      s.listen(port, '127.0.0.1', () => s.close(() => resolve(true)));
    });
    if (!tcp) continue;
    const ok =
      !udp ||
      (await new Promise((resolve) => {
        const u = dgram.createSocket('udp4');
        u.once('error', () => resolve(false));
        u.bind(port, '127.0.0.1', () => u.close(() => resolve(true)));
      }));
    if (ok) {
      handedOut.add(port);
      return port;
    }
  }
  throw new Error('no free port');
}

/** GET a URL on the test server (self-signed certificate accepted). */
export function get(url, { headers = {} } = {}) {
  const mod = url.startsWith('https:') ? https : http;
  return within(
    5000,
    new Promise((resolve, reject) => {
      const req = mod.get(url, { rejectUnauthorized: false, headers }, (res) => {
        let body = '';
        res.setEncoding('utf8');
        res.on('data', (d) => (body += d));
        res.on('end', () => resolve({ status: res.statusCode, headers: res.headers, body }));
      });
      req.on('error', reject);
    }),
    `GET ${url}`,
  );
}

/**
 * The real binary on loopback: STUN/TURN on UDP+TCP `turn`, TLS on `tls`, the single port (TLS: HTTPS, WSS and
 * TURN) on `mux`, plain HTTP on `http`. Resolves once /healthz answers on the single port. `ports`: those of a
 * server stopped before, to restart it where its clients expect it.
 * @param {{extraArgs?: string[], ports?: {turn: number, tls: number, mux: number, http: number}}} [opts]
 */
export async function startTraverse({ extraArgs = [], ports: reuse } = {}) {
  if (!fs.existsSync(TRAVERSE_BIN)) throw new Error(`${TRAVERSE_BIN} missing: run cargo build -p traverse`);
  // A probed port can still be taken before the server binds it (by another process): draw again, or, for ports a
  // restarted server must keep, wait for them. Told by the server's own message (the OS error's text): this is a
  // test harness, and the server exits on it with nothing more specific.
  for (let attempt = 1; ; attempt++) {
    const ports = reuse || (await freePorts());
    try {
      return await startOn(ports, extraArgs);
    } catch (err) {
      const taken = String(err && err.message).match(/cannot listen on [^\n]*Address already in use[^\n]*/);
      if (attempt >= 5 || !taken) throw err;
      console.log(`# startTraverse (attempt ${attempt}): ${taken[0]}; ${reuse ? 'waiting' : 'drawing new ports'}`);
      if (reuse) await sleep(1000);
    }
  }
}

/** Four free ports for `startTraverse` (distinct: `freePort` never hands one out twice). */
async function freePorts() {
  return { turn: await freePort({ udp: true }), tls: await freePort(), mux: await freePort(), http: await freePort() };
}

/** @param {{turn: number, tls: number, mux: number, http: number}} ports @param {string[]} extraArgs */
async function startOn(ports, extraArgs) {
  const args = [
    'serve',
    '--udp', `127.0.0.1:${ports.turn}`,
    '--tcp', `127.0.0.1:${ports.turn}`,
    '--tls', `127.0.0.1:${ports.tls}`,
    '--single-port', `127.0.0.1:${ports.mux}`,
    '--http', `127.0.0.1:${ports.http}`,
    '--public-host', '127.0.0.1',
    '--set', 'relay.bind_v4=127.0.0.1',
    '--allow-peer', '127.0.0.0/8',
    '--workers', '2',
    ...extraArgs,
  ];
  const logFile = path.join(os.tmpdir(), `traverse-browser-test-${process.pid}-${ports.mux}.log`);
  const out = fs.openSync(logFile, 'w');
  const child = spawn(TRAVERSE_BIN, args, {
    stdio: ['ignore', out, out],
    env: { ...process.env, TRAVERSE_LOG: process.env.TRAVERSE_LOG || 'info' },
  });
  fs.closeSync(out);
  let exited = null;
  /** @type {string | undefined} */
  let kept;
  child.on('exit', (code, signal) => (exited = { code, signal }));
  const base = `https://127.0.0.1:${ports.mux}`;
  const server = {
    pid: child.pid,
    ports,
    args,
    base,
    httpBase: `http://127.0.0.1:${ports.http}`,
    logFile,
    // Once stopped, the log is read into memory and its file removed (a suite run left hundreds in /tmp).
    log: () => kept ?? fs.readFileSync(logFile, 'utf8'),
    async stop() {
      if (!exited) {
        try {
          process.kill(child.pid, 'SIGTERM');
        } catch {
          /* gone */
        }
        const gone = await until(5000, () => exited, 'server exit after SIGTERM').catch(() => false);
        if (!gone) {
          try {
            process.kill(child.pid, 'SIGKILL');
          } catch {
            /* gone */
          }
          await until(5000, () => exited, 'server exit after SIGKILL').catch(() => {});
        }
      }
      if (kept === undefined && exited) {
        kept = fs.existsSync(logFile) ? fs.readFileSync(logFile, 'utf8') : '';
        fs.rmSync(logFile, { force: true });
      }
    },
  };
  try {
    await until(
      20000,
      async () => {
        if (exited) throw new Error(`traverse exited (${JSON.stringify(exited)}):\n${server.log()}`);
        const r = await get(`${base}/healthz`).catch(() => null);
        return r && r.status === 200;
      },
      `traverse /healthz on ${base}`,
    );
  } catch (err) {
    // An exited server's log is in the error already; one that never became ready adds its tail here, since
    // stop() removes the file.
    const exitedFirst = exited !== null;
    await server.stop();
    if (!exitedFirst && err instanceof Error) err.message += `\n${server.log().split('\n').slice(-80).join('\n')}`;
    throw err;
  }
  return server;
}

/** Print the server log and the browser console, for a failed test. */
export function dumpOnFailure(t, server, browser) {
  return (err) => {
    if (browser) console.log(`--- browser console (${t.name}) ---\n${browser.logs.slice(-200).join('\n')}`);
    if (server) console.log(`--- traverse log (${t.name}) ---\n${server.log().split('\n').slice(-80).join('\n')}`);
    throw err;
  };
}

/**
 * A UDP relay on loopback between pages and a server's UDP port `target`, which a test can make lossy or cut: each
 * client address gets its own upstream socket, as through a NAT. `drop` (0 to 1) is the share of datagrams dropped,
 * each way; `stop()` closes it all (allocations made through it stay on the server, unreachable).
 * @param {number} target
 */
export async function udpRelay(target) {
  const front = dgram.createSocket('udp4');
  const upstreams = new Map();
  let stopped = false;
  const relay = {
    port: 0,
    drop: 0,
    stop() {
      if (stopped) return;
      stopped = true;
      for (const up of upstreams.values()) up.close();
      upstreams.clear();
      front.close();
    },
  };
  front.on('message', (msg, from) => {
    if (Math.random() < relay.drop) return;
    const key = `${from.address}:${from.port}`;
    let up = upstreams.get(key);
    if (!up) {
      up = dgram.createSocket('udp4');
      up.on('message', (back) => {
        if (Math.random() >= relay.drop) front.send(back, from.port, from.address);
      });
      up.on('error', () => {});
      upstreams.set(key, up);
    }
    up.send(msg, target, '127.0.0.1');
  });
  front.on('error', () => {});
  await new Promise((resolve) => front.bind(0, '127.0.0.1', resolve));
  relay.port = front.address().port;
  return relay;
}
