// A real CA chain end to end on the single port: `traverse serve --domain browser.traverse.test` gets its certificate
// from Pebble (the ACME test CA) over TLS-ALPN-01 on that port, and Chromium — without --ignore-certificate-errors,
// trusting only Pebble's root, imported into the NSS database of a HOME of its own — loads the SDK over HTTPS, joins
// over WSS and connects two pages through TURN over TLS, relay-only, all on that one port. The name resolves to
// 127.0.0.1 for Pebble through a tiny DNS server here, and for Chromium through --host-resolver-rules.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { execFileSync, spawn } from 'node:child_process';
import dgram from 'node:dgram';
import fs from 'node:fs';
import https from 'node:https';
import os from 'node:os';
import path from 'node:path';
import { chromium } from 'playwright-core';
import { CHROMIUM, TRAVERSE_BIN, freePort, get, until, within, dumpOnFailure } from './lib/harness.js';
import { roomPage } from './lib/pages.js';

const NAME = 'browser.traverse.test';
const TOOLS = ['pebble', 'certutil', 'openssl'];

let dir;
let dns;
let pebble;
let server;
let browser;

function have(tool) {
  return (process.env.PATH || '').split(':').some((d) => fs.existsSync(path.join(d, tool)));
}

function missing() {
  if (!fs.existsSync(CHROMIUM)) return `${CHROMIUM} not found (apt-get install chromium)`;
  const tool = TOOLS.find((t) => !have(t));
  return tool && `${tool} not found (apt-get install pebble libnss3-tools openssl)`;
}

/** Every A query answered with 127.0.0.1, every other type with no records, authoritatively. */
function startDns() {
  const socket = dgram.createSocket('udp4');
  socket.on('message', (q, from) => {
    if (q.length < 12) return;
    let at = 12;
    while (at < q.length && q[at] !== 0) at += 1 + q[at];
    if (at + 5 > q.length) return;
    const isA = q.readUInt16BE(at + 1) === 1;
    const head = Buffer.from([q[0], q[1], 0x84 | (q[2] & 1), 0x80, 0, 1, 0, isA ? 1 : 0, 0, 0, 0, 0]);
    const answer = isA ? Buffer.from([0xc0, 0x0c, 0, 1, 0, 1, 0, 0, 0, 60, 0, 4, 127, 0, 0, 1]) : Buffer.alloc(0);
    socket.send(Buffer.concat([head, q.subarray(12, at + 5), answer]), from.port, from.address);
  });
  return new Promise((resolve) => socket.bind(0, '127.0.0.1', () => resolve(socket)));
}

function spawnLogged(cmd, args, env, logFile) {
  const out = fs.openSync(logFile, 'w');
  const child = spawn(cmd, args, { stdio: ['ignore', out, out], env: { ...process.env, ...env } });
  fs.closeSync(out);
  const proc = { child, exited: null, log: () => fs.readFileSync(logFile, 'utf8') };
  child.on('exit', (code, signal) => (proc.exited = { code, signal }));
  proc.stop = async () => {
    if (proc.exited) return;
    try {
      process.kill(child.pid, 'SIGKILL');
    } catch {
      return;
    }
    await until(5000, () => proc.exited, `${cmd} exit`).catch(() => {});
  };
  return proc;
}

/** GET over HTTPS to 127.0.0.1:`port` as `NAME`, verified against `ca` alone. */
function getVerified(port, ca, urlPath) {
  return within(
    5000,
    new Promise((resolve, reject) => {
      const req = https.get({ host: '127.0.0.1', port, servername: NAME, ca, path: urlPath, headers: { host: NAME } }, (res) => {
        res.resume();
        res.on('end', () => resolve(res.statusCode));
      });
      req.on('error', reject);
    }),
    `GET https://${NAME}:${port}${urlPath}`,
  );
}

before(async () => {
  if (missing()) return;
  dir = fs.mkdtempSync(path.join(os.tmpdir(), 'traverse-acme-browser-'));
  const file = (name) => path.join(dir, name);
  // Pebble's own HTTPS certificate (its directory), from a CA made here; Traverse trusts that CA for the directory.
  const ossl = (...args) => execFileSync('openssl', args, { stdio: 'pipe' });
  ossl('req', '-x509', '-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:prime256v1', '-nodes', '-days', '1',
    '-subj', '/CN=traverse test directory CA', '-keyout', file('ca.key'), '-out', file('ca.pem'));
  ossl('req', '-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:prime256v1', '-nodes', '-subj', '/CN=localhost',
    '-keyout', file('directory.key'), '-out', file('directory.csr'));
  fs.writeFileSync(file('ext.cnf'), 'subjectAltName=IP:127.0.0.1,DNS:localhost\n');
  ossl('x509', '-req', '-in', file('directory.csr'), '-CA', file('ca.pem'), '-CAkey', file('ca.key'),
    '-CAcreateserial', '-days', '1', '-extfile', file('ext.cnf'), '-out', file('directory.pem'));

  const ports = { mux: await freePort(), turn: await freePort({ udp: true }), tls: await freePort(), http: await freePort() };
  const [listen, management] = [await freePort(), await freePort()];
  fs.writeFileSync(file('pebble.json'), JSON.stringify({ pebble: {
    listenAddress: `127.0.0.1:${listen}`,
    managementListenAddress: `127.0.0.1:${management}`,
    certificate: file('directory.pem'),
    privateKey: file('directory.key'),
    httpPort: ports.http,
    tlsPort: ports.mux,
    ocspResponderURL: '',
    externalAccountBindingRequired: false,
  } }));
  dns = await startDns();
  pebble = spawnLogged('pebble', ['-config', file('pebble.json'), '-dnsserver', `127.0.0.1:${dns.address().port}`],
    { PEBBLE_VA_NOSLEEP: '1', PEBBLE_VA_ALWAYS_VALID: '0', PEBBLE_WFE_NONCEREJECT: '0' }, file('pebble.log'));
  const root = await until(30000, async () => {
    const r = await get(`https://127.0.0.1:${management}/roots/0`).catch(() => null);
    return r && r.status === 200 && r.body;
  }, 'Pebble up');
  fs.writeFileSync(file('pebble-root.pem'), root);

  const args = [
    'serve',
    '--udp', `127.0.0.1:${ports.turn}`, '--tcp', `127.0.0.1:${ports.turn}`, '--tls', `127.0.0.1:${ports.tls}`,
    '--http', `127.0.0.1:${ports.http}`, '--single-port', `127.0.0.1:${ports.mux}`,
    '--domain', NAME, '--acme-directory', `https://127.0.0.1:${listen}/dir`,
    '--set', `tls.acme_ca_root=${file('ca.pem')}`, '--set', `web.data_dir=${file('data')}`,
    '--set', 'relay.bind_v4=127.0.0.1', '--allow-peer', '127.0.0.0/8', '--workers', '2',
  ];
  const proc = spawnLogged(TRAVERSE_BIN, args, { TRAVERSE_LOG: 'info' }, file('traverse.log'));
  server = { ...proc, ports, base: `https://${NAME}:${ports.mux}`, httpBase: `http://127.0.0.1:${ports.http}` };
  await until(60000, async () => {
    if (proc.exited) throw new Error(`traverse exited:\n${proc.log()}`);
    return (await getVerified(ports.mux, root, '/healthz').catch(() => 0)) === 200;
  }, 'a certificate from Pebble on the single port').catch((e) => {
    console.log(`--- traverse ---\n${proc.log()}\n--- pebble ---\n${pebble.log().slice(-4000)}`);
    throw e;
  });

  // A browser profile whose only extra trust is Pebble's root (NSS: Chromium's store on Linux).
  const home = file('home');
  const nssdb = path.join(home, '.pki', 'nssdb');
  fs.mkdirSync(nssdb, { recursive: true });
  execFileSync('certutil', ['-d', `sql:${nssdb}`, '-N', '--empty-password']);
  execFileSync('certutil', ['-d', `sql:${nssdb}`, '-A', '-t', 'C,,', '-n', 'pebble', '-i', file('pebble-root.pem')]);
  const context = await within(30000, chromium.launchPersistentContext(file('profile'), {
    executablePath: CHROMIUM,
    headless: true,
    env: { ...process.env, HOME: home },
    args: [
      '--headless', '--no-sandbox', '--disable-gpu', '--disable-background-networking', '--disable-component-update',
      '--no-first-run', '--disable-sync', '--allow-loopback-in-peer-connection',
      '--disable-background-timer-throttling', '--disable-renderer-backgrounding',
      '--disable-backgrounding-occluded-windows',
      `--host-resolver-rules=MAP ${NAME} 127.0.0.1`,
    ],
    timeout: 30000,
  }), 'Chromium launch');
  const logs = [];
  let n = 0;
  const blank = context.pages();
  browser = {
    logs,
    async newPage() {
      const page = blank.length ? blank.shift() : await context.newPage();
      const name = `page${++n}`;
      page.on('console', (m) => logs.push(`[${name} ${m.type()}] ${m.text()}`));
      page.on('pageerror', (e) => logs.push(`[${name} pageerror] ${e.message}`));
      page.setDefaultTimeout(20000);
      return page;
    },
    close: () => within(10000, context.close(), 'Chromium close').catch(() => {}),
  };
});

after(async () => {
  await browser?.close();
  await server?.stop();
  await pebble?.stop();
  dns?.close();
  if (dir) fs.rmSync(dir, { recursive: true, force: true });
});

test('Chromium trusting only the ACME CA: HTTPS, WSS and TURN over TLS on the single port, relay-only', { timeout: 120000 }, async (t) => {
  const why = missing();
  if (why) {
    if (process.env.TRAVERSE_REQUIRE_PEERS === '1') throw new Error(`SKIP: ${why}, and TRAVERSE_REQUIRE_PEERS=1`);
    console.log(`SKIP: ${why}`);
    t.skip(why);
    return;
  }
  await (async () => {
    const want = { scheme: 'turns', port: server.ports.mux };
    const a = await roomPage(browser, server, 'acme', { want, relay: true });
    const b = await roomPage(browser, server, 'acme', { want, relay: true, echo: true });
    t.after(() => Promise.all([a.page.close().catch(() => {}), b.page.close().catch(() => {})]));
    assert.equal(a.url, `wss://${NAME}:${server.ports.mux}/ws`, 'signaling over WSS on the single port, by name');
    const kept = await a.page.evaluate(() => keep(room.iceServers));
    assert.deepEqual(kept.flatMap((s) => s.urls), [`turns:${NAME}:${server.ports.mux}?transport=tcp`],
      'the TURN URL names the certificate\'s name');
    await until(10000, () => a.page.evaluate((id) => room.peers.has(id), b.peerId), 'A sees B');
    const result = await within(60000, a.page.evaluate(async (bId) => {
      const peer = room.connect(bId, peerOptions());
      window.peer = peer;
      await Promise.race([peer.ready, new Promise((_, r) => setTimeout(() => r(new Error('channel not open in 40 s')), 40000))]);
      const echoes = [];
      const done = new Promise((resolve, reject) => {
        const timer = setTimeout(() => reject(new Error(`only ${echoes.length} echoes in 10 s`)), 10000);
        peer.on('message', ({ data }) => {
          echoes.push(data);
          if (echoes.length === 20) {
            clearTimeout(timer);
            resolve();
          }
        });
      });
      for (let i = 0; i < 20; i++) peer.send(`m${i}`);
      await done;
      return { echoes, pair: await peer.getSelectedPair() };
    }, b.peerId), 'a data channel relayed over TURN/TLS');
    assert.deepEqual(result.echoes, Array.from({ length: 20 }, (_, i) => `m${i}`));
    assert.equal(result.pair.local.candidateType, 'relay', JSON.stringify(result.pair));
    assert.equal(result.pair.local.relayProtocol, 'tls', JSON.stringify(result.pair));
    assert.match(server.log(), /challenge=tls-alpn-01/);
  })().catch(dumpOnFailure(t, server, browser));
});
