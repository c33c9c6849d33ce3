// Traverse troubleshooter — served by the binary at /check/check.js, used by /check (docs/check.md).
//
// Model: `runChecks()` measures what this browser can reach of this server — the signaling WebSocket, the ICE-server
// API, ICE gathering against each ICE URL on its own, a relay-only call between two peer connections in this page
// per TURN URL, and the NAT's mapping behaviour (RFC 4787) from two STUN addresses — and returns a plain JSON report.
// `verdict(report)` turns a report into plain words; it is pure, so a stored report renders exactly as it did for
// the user. Every step has a timeout: a blocked port costs seconds, never a hung page. Dependency-free ES module.

/**
 * @typedef {{urls: string | string[], username?: string, credential?: string}} IceServer
 * @typedef {{scheme: 'stun'|'turn'|'turns', host: string, port: number, transport: 'udp'|'tcp', label: string}} IceUrl
 * @typedef {{min: number, median: number, max: number, samples: number}} RttStats
 * @typedef {{type: string, protocol: string, address: string, port: number, relayProtocol?: string,
 *            networkId?: string}} Candidate
 * @typedef {{url: string, label: string, ok: boolean, ms: number, timedOut: boolean, candidates: Candidate[],
 *            types: Record<string, number>, relayProtocols: string[], errors: {code: number, text: string}[]}} Gathering
 * @typedef {{url: string, label: string, transport: string, ok: boolean, connectMs?: number, rttMs?: RttStats,
 *            echoed: number, pair?: object, error?: string, relayCandidate?: boolean, skipped?: boolean,
 *            loss?: LossCount, stalled?: string}} Loopback
 * @typedef {{sent: number, received: number, percent: number}} LossCount
 * @typedef {'endpoint-independent' | 'endpoint-independent-or-address-dependent' | 'address-dependent-or-stricter'
 *           | 'address-and-port-dependent' | 'inconclusive'} Mapping
 * @typedef {{mapping: Mapping, servers: string[], observations: object[], why: string}} Nat
 * @typedef {{level: 'ok'|'warn'|'fail', headline: string, advice: {text: string, term?: string}[]}} Verdict
 */

/** Report format version. */
export const REPORT_VERSION = 1;

/** Bounds, milliseconds. */
export const TIMEOUTS = Object.freeze({
  wsOpen: 8000,
  wsReply: 4000,
  api: 6000,
  gather: 10000,
  loopbackConnect: 15000,
  echo: 3000,
  total: 90000,
});

/** Echo messages per relay loopback. */
export const ECHOES = 20;
/**
 * Echoes stop early once `ECHOES_MIN` came back and `ECHO_BUDGET_MS` went by: they go one at a time, and over a
 * geostationary satellite link (a loopback crosses it four times: 1.2 s) twenty took 24 s of the page's 90.
 */
const ECHOES_MIN = 5;
const ECHO_BUDGET_MS = 6000;

/**
 * Datagrams per relay loopback over TURN/UDP for the loss count, on an unreliable channel (no retransmission), one
 * every `LOSS_GAP_MS` (so that they are not bundled into a few packets); echoes are awaited after the last for twice
 * the slowest echo's round trip, at least `LOSS_WAIT_MS` and at most `LOSS_WAIT_MAX_MS`, or until all came back. A
 * fixed second counted the last ones still on their way as lost where the loopback takes 1.2 s (a satellite link:
 * "loses 5 % each way" on a link that lost nothing). Over TCP or TLS to the relay a loss on the link is
 * retransmitted, so it is not counted there.
 */
export const LOSS_PROBES = 100;
const LOSS_GAP_MS = 10;
const LOSS_WAIT_MS = 1000;
const LOSS_WAIT_MAX_MS = 5000;

/**
 * Upper bounds of good / fair / poor round trips, ms. The doctor's `quality::RTT_MS` (crates/doctor/src/quality.rs)
 * is the definition; a test there fails when these differ.
 */
const RTT_LEVELS = [100, 250, 400];

/** Upper bounds of good / fair / poor loss on the user's link, percent; the doctor's `quality::LOSS_PERCENT`. */
const LOSS_LEVELS = [1, 3, 8];

/**
 * The relay loopback's two peer connections both sit behind this browser, so an echo crosses the user's link four
 * times (up to the relay, down to B, up again, down to A) where the graded round trip (this browser ↔ the server,
 * like the signaling ping) crosses it twice: the loopback's round trip is scaled by 2/4 before grading. The doctor's
 * `quality::RELAY_TEST_CROSSINGS` / `ROUND_TRIP_CROSSINGS` are the definition; a test there fails when these differ.
 */
const RELAY_TEST_CROSSINGS = 4;
const ROUND_TRIP_CROSSINGS = 2;

/** Reject after `ms` with a message naming what was awaited. */
function within(ms, promise, what) {
  let t;
  const timeout = new Promise((_, reject) => {
    t = setTimeout(() => reject(new Error(`${what}: no answer in ${Math.round(ms / 1000)} s`)), ms);
  });
  return Promise.race([promise, timeout]).finally(() => clearTimeout(t));
}

const now = () => performance.now();

/** @param {number[]} xs @returns {RttStats | undefined} */
export function rttStats(xs) {
  if (!xs.length) return undefined;
  const s = [...xs].sort((a, b) => a - b);
  const r = (x) => Math.round(x * 10) / 10;
  return { min: r(s[0]), median: r(s[Math.floor(s.length / 2)]), max: r(s[s.length - 1]), samples: s.length };
}

/** 'good' | 'fair' | 'poor' | 'bad' for `value` against `levels`, the upper bounds of good, fair and poor. */
function grade(value, levels) {
  if (value <= levels[0]) return 'good';
  if (value <= levels[1]) return 'fair';
  if (value <= levels[2]) return 'poor';
  return 'bad';
}

/** 'good' | 'fair' | 'poor' | 'bad' for a round-trip time, ms. */
export function rttQuality(ms) {
  return grade(ms, RTT_LEVELS);
}

/**
 * A relay loopback's median round trip brought down to the user's link (see `RELAY_TEST_CROSSINGS`), and its grade.
 * @param {number} loopbackMs
 * @returns {{linkMs: number, quality: string}}
 */
export function relayLinkQuality(loopbackMs) {
  const linkMs = (loopbackMs * ROUND_TRIP_CROSSINGS) / RELAY_TEST_CROSSINGS;
  return { linkMs, quality: rttQuality(linkMs) };
}

/** 'good' | 'fair' | 'poor' | 'bad' for a loss, percent. */
export function lossQuality(percent) {
  return grade(percent, LOSS_LEVELS);
}

/**
 * A relay loopback's loss brought down to one crossing of the user's link: a datagram survives all
 * `RELAY_TEST_CROSSINGS` crossings or is lost, so the measured loss L is 1 − (1 − p)⁴ for a link that loses p.
 * @param {number} loopbackPercent
 * @returns {{linkPercent: number, quality: string}}
 */
export function relayLinkLoss(loopbackPercent) {
  const survived = (1 - Math.min(Math.max(loopbackPercent, 0), 100) / 100) ** (1 / RELAY_TEST_CROSSINGS);
  const linkPercent = 100 * (1 - survived);
  return { linkPercent, quality: lossQuality(linkPercent) };
}

/**
 * Parses `stun:`, `turn:`, `turns:` URLs (RFC 7064/7065). `stun:` URLs carry no `?transport` (Chrome ≥ 110 rejects
 * them), so a STUN URL is always UDP here.
 * @returns {IceUrl | null}
 */
export function parseIceUrl(url) {
  const m = /^(stuns?|turns?):(\[[^\]]+\]|[^:?]+)(?::(\d+))?(?:\?transport=(udp|tcp))?$/i.exec(url.trim());
  if (!m) return null;
  const scheme = /** @type {'stun'|'turn'|'turns'} */ (m[1].toLowerCase());
  if (scheme === /** @type {any} */ ('stuns')) return null;
  const secure = scheme === 'turns';
  const port = m[3] ? Number(m[3]) : secure ? 5349 : 3478;
  const transport = /** @type {'udp'|'tcp'} */ ((m[4] || (secure ? 'tcp' : 'udp')).toLowerCase());
  const label = scheme === 'stun' ? 'STUN' : secure ? 'TURN/TLS' : `TURN/${transport.toUpperCase()}`;
  return { scheme, host: m[2], port, transport, label };
}

/** The transport a TURN URL relays over as WebRTC names it: udp, tcp or tls. */
function relayTransport(u) {
  return u.scheme === 'turns' ? 'tls' : u.transport;
}

/** One entry per URL: `{url, username, credential}` (credentials stay in memory, never in the report). */
export function splitIceServers(servers) {
  const out = [];
  for (const s of servers || []) {
    for (const url of Array.isArray(s.urls) ? s.urls : [s.urls]) {
      const parsed = parseIceUrl(String(url));
      if (parsed) out.push({ url: String(url), parsed, username: s.username, credential: s.credential });
    }
  }
  return out;
}

/** Parses an `a=candidate` line's useful fields (the RTCIceCandidate fields are not in every browser). */
export function parseCandidate(c) {
  const line = c.candidate || '';
  const f = line.split(' ');
  const typ = f.indexOf('typ');
  const net = f.indexOf('network-id');
  const type = c.type || (typ > 0 ? f[typ + 1] : '');
  /** @type {Candidate} */
  const out = {
    type,
    protocol: (c.protocol || f[2] || '').toLowerCase(),
    address: c.address || f[4] || '',
    port: Number(c.port || f[5] || 0),
  };
  if (net > 0) out.networkId = f[net + 1];
  if (type === 'relay' && c.relayProtocol) out.relayProtocol = c.relayProtocol;
  return out;
}

// --- Signaling -------------------------------------------------------------------------------------------------

/** Opens /ws, joins a throwaway room, measures ping/pong round trips, leaves. */
export async function checkSignaling({ base = location.href, token, pings = 5 } = {}) {
  const page = new URL(base);
  const room = `check-${Math.random().toString(36).slice(2, 10)}`;
  const ws = new URL('/ws', page);
  ws.protocol = page.protocol === 'https:' ? 'wss:' : 'ws:';
  ws.searchParams.set('room', room);
  if (token) ws.searchParams.set('token', token);
  const result = { url: `${ws.origin}/ws`, ok: false, joined: false };
  const t0 = now();
  let socket;
  try {
    socket = new WebSocket(ws.href, 'traverse.v1');
    /** @type {any[]} */
    const inbox = [];
    /** @type {((m: any) => void) | null} */
    let waiter = null;
    let closed = null;
    socket.onmessage = (e) => {
      let m;
      try {
        m = JSON.parse(e.data);
      } catch {
        return;
      }
      if (waiter) waiter(m);
      else inbox.push(m);
    };
    const next = (type, what) =>
      within(
        TIMEOUTS.wsReply,
        new Promise((resolve, reject) => {
          const take = (m) => {
            if (m.type === type || m.type === 'error') {
              waiter = null;
              if (m.type === 'error') reject(Object.assign(new Error(m.message), { code: m.code }));
              else resolve(m);
              return true;
            }
            return false;
          };
          while (inbox.length) if (take(inbox.shift())) return;
          waiter = (m) => void take(m);
          if (closed) reject(new Error(`the socket closed (${closed})`));
        }),
        what,
      );
    await within(
      TIMEOUTS.wsOpen,
      new Promise((resolve, reject) => {
        socket.onopen = resolve;
        socket.onclose = (e) => {
          closed = `code ${e.code}`;
          reject(new Error(`the WebSocket closed before it opened (code ${e.code})`));
        };
      }),
      'WebSocket open',
    );
    result.connectMs = Math.round(now() - t0);
    result.ok = true; // reachable: the upgrade went through
    socket.onclose = (e) => (closed = `code ${e.code}`);
    const tj = now();
    socket.send(JSON.stringify({ type: 'join', room, meta: { check: true } }));
    const joined = await next('joined', 'join');
    result.joined = true;
    result.joinMs = Math.round(now() - tj);
    result.iceServers = joined.iceServers;
    const rtts = [];
    for (let i = 0; i < pings; i++) {
      const tp = now();
      socket.send(JSON.stringify({ type: 'ping', ack: joined.seq }));
      await next('pong', 'pong');
      rtts.push(now() - tp);
    }
    result.rttMs = rttStats(rtts);
    socket.send(JSON.stringify({ type: 'leave' }));
  } catch (e) {
    result.error = e.message;
    if (e.code) result.code = e.code;
    if (!result.ok) result.status = await joinCheck(page, room, token);
  } finally {
    try {
      socket?.close(1000);
    } catch {
      /* closed */
    }
  }
  return result;
}

/** Browsers hide a refused upgrade's status; /api/join-check tells it. */
async function joinCheck(page, room, token) {
  const u = new URL('/api/join-check', page);
  u.searchParams.set('room', room);
  if (token) u.searchParams.set('token', token);
  try {
    const r = await fetchWithin(u.href, {});
    const body = await r.json().catch(() => ({}));
    return { http: r.status, code: body.code, message: body.message };
  } catch (e) {
    return { http: 0, message: e.message };
  }
}

async function fetchWithin(url, init) {
  const ctl = new AbortController();
  const t = setTimeout(() => ctl.abort(), TIMEOUTS.api);
  try {
    return await fetch(url, { ...init, signal: ctl.signal, cache: 'no-store' });
  } finally {
    clearTimeout(t);
  }
}

/** GET /api/ice-servers. */
export async function checkIceServers({ base = location.href, token } = {}) {
  const u = new URL('/api/ice-servers', base);
  const headers = token ? { authorization: `Bearer ${token}` } : {};
  try {
    const r = await fetchWithin(u.href, { headers });
    const body = await r.json().catch(() => ({}));
    if (!r.ok) return { ok: false, http: r.status, code: body.code, error: body.message || `HTTP ${r.status}` };
    // `natProbes`: the server's second STUN port, for the NAT comparison only (no call gathers against it).
    const natProbes = Array.isArray(body.natProbes) ? body.natProbes.filter((u) => typeof u === 'string') : [];
    return { ok: true, http: r.status, ttl: body.ttl, servers: body.iceServers || [], natProbes };
  } catch (e) {
    return { ok: false, http: 0, error: e.name === 'AbortError' ? 'no answer in time' : e.message };
  }
}

/** TLS alerts that mean the browser refused the server's certificate (the server's `/api/tls-failures` reasons). */
export const CERTIFICATE_REASONS = Object.freeze(['unknown-ca', 'certificate-expired', 'certificate-refused']);

/**
 * GET /api/tls-failures: the TLS handshakes from this browser's address that the server saw fail in the last
 * minutes, and why (the server saw the browser's alert). The page cannot tell a refused certificate from a blocked
 * port by itself: both are "no relay candidate".
 * @returns {Promise<{ok: boolean, failures: Array<{port: number, reason: string, message: string, secondsAgo: number}>, error?: string}>}
 */
export async function checkTlsFailures({ base = location.href } = {}) {
  try {
    const r = await fetchWithin(new URL('/api/tls-failures', base).href, {});
    if (!r.ok) return { ok: false, failures: [], error: `HTTP ${r.status}` };
    const body = await r.json();
    return { ok: true, failures: Array.isArray(body.failures) ? body.failures : [] };
  } catch (e) {
    return { ok: false, failures: [], error: e.message };
  }
}

/** The certificate refusal the server saw on `port`, if any (any port when `port` is undefined). */
export function certificateRefusal(tlsFailures, port) {
  return (tlsFailures?.failures || []).find((f) => CERTIFICATE_REASONS.includes(f.reason) &&
    (port === undefined || f.port === port));
}

// --- ICE gathering ----------------------------------------------------------------------------------------------

/** Gathers candidates with the given iceServers until complete or the timeout. */
async function gather(iceServers, timeoutMs = TIMEOUTS.gather) {
  const pc = new RTCPeerConnection({ iceServers, iceCandidatePoolSize: 0 });
  /** @type {Candidate[]} */
  const candidates = [];
  const errors = [];
  const t0 = now();
  let timedOut = false;
  try {
    pc.createDataChannel('probe');
    const done = new Promise((resolve) => {
      pc.onicecandidate = (e) => {
        if (e.candidate && e.candidate.candidate) candidates.push(parseCandidate(e.candidate));
        else if (!e.candidate) resolve();
      };
      pc.onicegatheringstatechange = () => pc.iceGatheringState === 'complete' && resolve();
    });
    pc.onicecandidateerror = (e) => {
      // 701: the server could not be reached; 401: credentials refused; 300-699: the server's STUN error code.
      if (errors.length < 10) errors.push({ code: e.errorCode, text: e.errorText || '', url: e.url || '' });
    };
    await pc.setLocalDescription(await pc.createOffer());
    await within(timeoutMs, done, 'ICE gathering').catch(() => (timedOut = true));
  } finally {
    pc.close();
  }
  return { candidates, errors, timedOut, ms: Math.round(now() - t0) };
}

/** One ICE URL on its own: what candidates it yields. */
export async function checkGathering(entry) {
  const { url, parsed, username, credential } = entry;
  const server = parsed.scheme === 'stun' ? { urls: [url] } : { urls: [url], username, credential };
  /** @type {Gathering} */
  const out = { url, label: labelOf(parsed), ok: false, ms: 0, timedOut: false, candidates: [], types: {},
    relayProtocols: [], errors: [] };
  try {
    const g = await gather([server]);
    Object.assign(out, { ms: g.ms, timedOut: g.timedOut, errors: g.errors.map(({ code, text }) => ({ code, text })) });
    out.candidates = g.candidates.filter((c) => c.type !== 'host').slice(0, 20);
    for (const c of g.candidates) out.types[c.type] = (out.types[c.type] || 0) + 1;
    // One TURN URL per gathering: a relay candidate without its own relayProtocol (older browsers) used the URL's.
    const viaUrl = parsed.scheme === 'stun' ? '?' : relayTransport(parsed);
    out.relayProtocols = [...new Set(g.candidates.filter((c) => c.type === 'relay').map((c) => c.relayProtocol || viaUrl))];
    out.ok = parsed.scheme === 'stun' ? !!out.types.srflx : !!out.types.relay;
  } catch (e) {
    out.error = e.message;
  }
  return out;
}

function labelOf(parsed) {
  return `${parsed.label} :${parsed.port}`;
}

// --- Relay loopback ---------------------------------------------------------------------------------------------

/**
 * Two peer connections in this page, relay only through one TURN URL; a data channel echoes up to `ECHOES` messages
 * (the first must come back; a later one that does not, on a lossy link, ends the echoes: `stalled`).
 */
export async function checkLoopback(entry, { echoes = ECHOES, lossProbes = LOSS_PROBES } = {}) {
  const { url, parsed, username, credential } = entry;
  const config = { iceServers: [{ urls: [url], username, credential }], iceTransportPolicy: /** @type {const} */ ('relay') };
  /** @type {Loopback} */
  const out = { url, label: labelOf(parsed), transport: relayTransport(parsed), ok: false, echoed: 0 };
  const a = new RTCPeerConnection(config);
  const b = new RTCPeerConnection(config);
  let relayed = 0;
  try {
    a.onicecandidate = (e) => {
      if (e.candidate?.candidate) relayed += parseCandidate(e.candidate).type === 'relay' ? 1 : 0;
      b.addIceCandidate(e.candidate ?? null).catch(() => {});
    };
    b.onicecandidate = (e) => a.addIceCandidate(e.candidate ?? null).catch(() => {});
    const da = a.createDataChannel('echo', { negotiated: true, id: 0 });
    const db = b.createDataChannel('echo', { negotiated: true, id: 0 });
    db.onmessage = (e) => db.send(e.data);
    // Over TURN/UDP, a second channel that never retransmits counts what the link loses.
    const unreliable = { negotiated: true, id: 1, ordered: false, maxRetransmits: 0 };
    const la = out.transport === 'udp' && lossProbes > 0 ? a.createDataChannel('loss', unreliable) : null;
    const lb = la ? b.createDataChannel('loss', unreliable) : null;
    if (lb) lb.onmessage = (e) => lb.send(e.data);
    const t0 = now();
    const open = new Promise((resolve, reject) => {
      da.onopen = resolve;
      a.onconnectionstatechange = () => a.connectionState === 'failed' && reject(new Error('ICE failed: no relayed path'));
    });
    await a.setLocalDescription(await a.createOffer());
    await b.setRemoteDescription(/** @type {RTCSessionDescription} */ (a.localDescription));
    await b.setLocalDescription(await b.createAnswer());
    await a.setRemoteDescription(/** @type {RTCSessionDescription} */ (b.localDescription));
    await within(TIMEOUTS.loopbackConnect, open, 'relayed connection');
    out.connectMs = Math.round(now() - t0);
    /** @type {((d: string) => void) | null} */
    let got = null;
    da.onmessage = (e) => got?.(String(e.data));
    const rtts = [];
    const echoesFrom = now();
    for (let i = 0; i < echoes; i++) {
      if (i >= ECHOES_MIN && now() - echoesFrom > ECHO_BUDGET_MS) break;
      const want = `echo-${i}`;
      const tp = now();
      const back = new Promise((resolve) => (got = (d) => d === want && resolve(d)));
      da.send(want);
      try {
        await within(TIMEOUTS.echo, back, `echo ${i + 1}`);
      } catch (e) {
        // The channel is reliable: a message lost on the way is sent again after a timeout that doubles (0.5 s,
        // 1 s, 2 s…), so on a lossy link one echo can take longer than the wait (10 % lost each way, NAT lab).
        // The relay carried the ones before: it works, and the loss is counted below rather than called a failure.
        if (i === 0) throw e;
        out.stalled = e.message;
        break;
      }
      rtts.push(now() - tp);
      out.echoed = i + 1;
    }
    out.rttMs = rttStats(rtts);
    out.pair = await selectedPair(a);
    out.ok = out.echoed > 0;
    if (la) out.loss = await countLoss(la, lossProbes, Math.max(...rtts)).catch(() => undefined);
  } catch (e) {
    out.error = e.message;
    out.relayCandidate = relayed > 0;
  } finally {
    a.close();
    b.close();
  }
  return out;
}

/**
 * Sends `probes` datagrams on an unreliable channel whose other end echoes them, and counts those that came back
 * (awaited for twice `slowestMs`, the slowest echo's round trip, within `LOSS_WAIT_MS`..`LOSS_WAIT_MAX_MS`).
 * @param {RTCDataChannel} channel @param {number} probes @param {number} slowestMs @returns {Promise<LossCount>}
 */
async function countLoss(channel, probes, slowestMs) {
  if (channel.readyState !== 'open') {
    await within(TIMEOUTS.echo, new Promise((resolve) => (channel.onopen = resolve)), 'the loss channel');
  }
  const back = new Set();
  /** @type {() => void} */
  let allBack = () => {};
  const all = new Promise((resolve) => (allBack = () => resolve(undefined)));
  channel.onmessage = (e) => {
    const n = /^loss-(\d+)$/.exec(String(e.data));
    if (n && Number(n[1]) < probes) back.add(n[1]);
    if (back.size === probes) allBack();
  };
  const pause = (ms) => new Promise((resolve) => setTimeout(resolve, ms));
  for (let i = 0; i < probes; i++) {
    channel.send(`loss-${i}`);
    await pause(LOSS_GAP_MS);
  }
  const wait = Math.min(LOSS_WAIT_MAX_MS, Math.max(LOSS_WAIT_MS, 2 * (Number.isFinite(slowestMs) ? slowestMs : 0)));
  await Promise.race([all, pause(wait)]);
  const received = back.size;
  return { sent: probes, received, percent: Math.round((1000 * (probes - received)) / probes) / 10 };
}

/**
 * The loopback of a TURN URL whose gathering yielded no relay candidate: failed without a call, `skipped`.
 * @returns {Loopback}
 */
export function skippedLoopback(entry, gathering) {
  return { url: entry.url, label: labelOf(entry.parsed), transport: relayTransport(entry.parsed), ok: false, echoed: 0,
    skipped: true, relayCandidate: false,
    error: gathering.timedOut ? `no relay address within ${Math.round(gathering.ms / 1000)} s of gathering`
      : 'no relay address in gathering' };
}

/** The selected candidate pair's two ends, from getStats. */
async function selectedPair(pc) {
  const stats = await pc.getStats();
  let pair;
  stats.forEach((s) => {
    if (s.type === 'transport' && s.selectedCandidatePairId) pair = stats.get(s.selectedCandidatePairId);
  });
  if (!pair) stats.forEach((s) => s.type === 'candidate-pair' && s.nominated && s.state === 'succeeded' && (pair = s));
  if (!pair) return undefined;
  const end = (id) => {
    const c = stats.get(id) || {};
    return { type: c.candidateType, protocol: c.protocol, relayProtocol: c.relayProtocol };
  };
  return { local: end(pair.localCandidateId), remote: end(pair.remoteCandidateId) };
}

// --- NAT mapping (RFC 4787) -------------------------------------------------------------------------------------

/**
 * STUN-capable UDP addresses of the server: `stun:` URLs and `turn:` UDP URLs (a TURN server answers Binding
 * requests too), distinct by host and port, plus `extra` STUN URLs.
 */
export function stunEndpoints(entries, extra = []) {
  const seen = new Map();
  const add = (p) => {
    if (!p || p.transport !== 'udp' || p.scheme === 'turns') return;
    const key = `${p.host}:${p.port}`;
    if (!seen.has(key)) seen.set(key, { host: p.host, port: p.port, url: `stun:${key}` });
  };
  for (const e of entries) add(e.parsed);
  for (const u of extra) add(parseIceUrl(u));
  return [...seen.values()];
}

/**
 * Compares the public (server-reflexive) address two STUN addresses see for one local socket.
 *
 * Browsers pick the local port, so the comparison runs in one peer connection that asks both servers from the same
 * socket: Chrome keeps a second srflx candidate only when its address differs from the first. Each server is also
 * asked alone, to know that both answer — otherwise one candidate proves nothing.
 * @returns {Promise<Nat>}
 */
export async function checkNat(endpoints) {
  if (endpoints.length < 2) {
    return {
      mapping: 'inconclusive',
      servers: endpoints.map((e) => e.url),
      observations: [],
      why: 'one-address',
    };
  }
  // Prefer two different IP addresses: that separates endpoint-independent from address-dependent mapping.
  const first = endpoints[0];
  const second = endpoints.find((e) => e.host !== first.host) || endpoints[1];
  const pair = [first, second];
  const [alone1, alone2, both] = await Promise.all([
    gather([{ urls: [first.url] }]),
    gather([{ urls: [second.url] }]),
    gather([{ urls: [first.url, second.url] }]),
  ]);
  const srflx = (g) => g.candidates.filter((c) => c.type === 'srflx');
  const observations = [
    { server: first.url, mapped: srflx(alone1).map((c) => `${c.address}:${c.port}`) },
    { server: second.url, mapped: srflx(alone2).map((c) => `${c.address}:${c.port}`) },
    { server: `${first.url} + ${second.url}`, mapped: srflx(both).map((c) => `${c.address}:${c.port}`) },
  ];
  return { ...analyseMapping(pair, srflx(alone1).length > 0, srflx(alone2).length > 0, srflx(both)), observations,
    servers: pair.map((e) => e.url) };
}

/**
 * `checkNat`'s answer without gathering, when no address of the server yielded a public address on its own.
 * @returns {Nat}
 */
export function natWithoutSrflx(endpoints) {
  const first = endpoints[0];
  const second = endpoints.find((e) => e.host !== first.host) || endpoints[1];
  return { mapping: 'inconclusive', why: 'no-srflx', observations: [], servers: [first.url, second.url] };
}

/**
 * The mapping behaviour from the srflx candidates of one gathering against both servers. Pure, for tests.
 * @param {{host: string, port: number}[]} pair the two STUN addresses
 * @param {boolean} firstAnswers @param {boolean} secondAnswers each server alone yielded a srflx candidate
 * @param {Candidate[]} both srflx candidates gathered against both at once
 * @returns {{mapping: Mapping, why: string}}
 */
export function analyseMapping(pair, firstAnswers, secondAnswers, both) {
  if (!firstAnswers && !secondAnswers) return { mapping: 'inconclusive', why: 'no-srflx' };
  if (!firstAnswers || !secondAnswers) return { mapping: 'inconclusive', why: 'one-answered' };
  if (!both.length) return { mapping: 'inconclusive', why: 'no-srflx' };
  // Per local socket (network), count distinct public addresses.
  const byNetwork = new Map();
  for (const c of both) {
    const key = `${c.networkId ?? ''}|${c.address.includes(':') ? 6 : 4}`;
    if (!byNetwork.has(key)) byNetwork.set(key, new Set());
    byNetwork.get(key).add(`${c.address}:${c.port}`);
  }
  const differs = [...byNetwork.values()].some((s) => s.size > 1);
  const sameIp = pair[0].host === pair[1].host;
  if (differs) {
    return sameIp
      ? { mapping: 'address-and-port-dependent', why: 'port-changed' }
      : { mapping: 'address-dependent-or-stricter', why: 'address-changed' };
  }
  return sameIp
    ? { mapping: 'endpoint-independent-or-address-dependent', why: 'same-ip-only' }
    : { mapping: 'endpoint-independent', why: 'same-mapping' };
}

// --- The whole run ----------------------------------------------------------------------------------------------

/**
 * Runs every check and returns the report. `onProgress(report)` is called as parts complete.
 * @param {{base?: string, token?: string, extraStun?: string[], onProgress?: (r: object) => void}} [opts]
 */
export async function runChecks({ base = location.href, token, extraStun = [], onProgress = () => {} } = {}) {
  const report = {
    version: REPORT_VERSION,
    startedAt: new Date().toISOString(),
    page: new URL(base).origin,
    userAgent: navigator.userAgent,
    webrtc: typeof RTCPeerConnection === 'function',
  };
  const step = async (name, f) => {
    try {
      report[name] = await f();
    } catch (e) {
      report[name] = { ok: false, error: e.message };
    }
    onProgress(report);
  };
  const work = (async () => {
    await step('signaling', () => checkSignaling({ base, token }));
    await step('iceServers', async () => {
      const r = await checkIceServers({ base, token });
      // Fall back on the servers the join handed out.
      if (!r.ok && report.signaling?.iceServers) return { ...r, servers: report.signaling.iceServers, from: 'join' };
      return r;
    });
    const servers = report.iceServers?.servers || [];
    delete report.signaling?.iceServers;
    const entries = splitIceServers(servers);
    if (report.iceServers) report.iceServers.servers = redact(servers);
    if (!report.webrtc) return;
    await step('gathering', () => Promise.all(entries.map(checkGathering)));
    const gathered = Array.isArray(report.gathering) ? report.gathering : [];
    const turn = entries.filter((e) => e.parsed.scheme !== 'stun');
    // A TURN URL whose gathering got no relay candidate cannot carry the test call either: waiting for the call's
    // own timeout (15 s) on top of the gathering's (10 s) is what made a network without UDP take 35 s.
    await step('loopback', () => Promise.all(turn.map((e) => {
      const g = gathered.find((x) => x.url === e.url);
      return g && !g.types?.relay ? Promise.resolve(skippedLoopback(e, g)) : checkLoopback(e);
    })));
    // Asked after the TLS attempts, so the server has seen them.
    if (turn.some((e) => e.parsed.scheme === 'turns')) await step('tlsFailures', () => checkTlsFailures({ base }));
    // Gathering against every address of the server alone learned no public address: gathering against two of them
    // together will not either (another 10 s where UDP is blocked), nor will another port of it (`natProbes`).
    // Addresses from the hash were not gathered, and may be other servers': ask.
    const noSrflx = !extraStun.length && gathered.length > 0 && !gathered.some((g) => (g.types?.srflx || 0) > 0);
    const endpoints = stunEndpoints(entries, [...extraStun, ...(report.iceServers?.natProbes || [])]);
    await step('nat', () => (noSrflx && endpoints.length >= 2 ? natWithoutSrflx(endpoints) : checkNat(endpoints)));
  })();
  await within(TIMEOUTS.total, work, 'the checks').catch((e) => (report.aborted = e.message));
  report.finishedAt = new Date().toISOString();
  report.verdict = verdict(report);
  onProgress(report);
  return report;
}

/** iceServers without credentials (usernames name the peer; credentials are secret). */
function redact(servers) {
  return servers.map((s) => ({ urls: s.urls, ...(s.username ? { username: '(redacted)' } : {}) }));
}

// --- Verdict ----------------------------------------------------------------------------------------------------

/** Plain-words name of a mapping, with the RFC 4787 term beside. */
export const MAPPING_WORDS = Object.freeze({
  'endpoint-independent': {
    text: 'Your network keeps one public port whatever the destination: direct calls usually work.',
    term: 'RFC 4787: endpoint-independent mapping',
  },
  'endpoint-independent-or-address-dependent': {
    text:
      'Your network kept the same public port for two ports of this server. That rules out the strictest kind of ' +
      'NAT; a second server address would be needed to say more.',
    term: 'RFC 4787: endpoint-independent or address-dependent mapping',
  },
  // Either kind of dependent mapping fails with exactly these peers, whatever this network's filtering: the doctor's
  // direct-connection rule (crates/doctor/src/verdict.rs), whose test holds this list to its table.
  'address-dependent-or-stricter': {
    text:
      'Your network gives a different public port per destination (symmetric NAT): calls with peers behind ' +
      'a port-restricted NAT (most home routers) or a symmetric NAT (many mobile and corporate networks) ' +
      'need the TURN relay.',
    term: 'RFC 4787: address-dependent or address-and-port-dependent mapping',
  },
  'address-and-port-dependent': {
    text:
      'Your network gives a different public port per destination (symmetric NAT): calls with peers behind ' +
      'a port-restricted NAT (most home routers) or a symmetric NAT (many mobile and corporate networks) ' +
      'need the TURN relay.',
    term: 'RFC 4787: address-and-port-dependent mapping',
  },
  inconclusive: {
    text: 'NAT type: inconclusive.',
    term: 'RFC 4787 mapping not determined',
  },
});

const INCONCLUSIVE_WHY = {
  'one-address':
    'this server offers a single STUN address, and telling NAT types apart needs two (its operator can serve a ' +
    'second port: stun.second_port)',
  'one-answered': 'only one of the two STUN addresses answered: a firewall, here or at the server, drops the other',
  'no-srflx': 'no public address was learned: UDP to the STUN addresses may be blocked, or this device is not behind a NAT and the browser hides its own address',
};

/**
 * The verdict for a report, in plain words. Pure: a stored report renders as it did.
 * @returns {Verdict}
 */
export function verdict(r) {
  /** @type {Verdict['advice']} */
  const advice = [];
  const sig = r.signaling || {};
  if (!r.webrtc) {
    return { level: 'fail', headline: 'This browser has no WebRTC: calls cannot work here.', advice: [
      { text: 'Use a current Chrome, Firefox, Safari or Edge; some privacy extensions switch WebRTC off.' }] };
  }
  if (!sig.ok) {
    const st = sig.status || {};
    const why = st.http && st.http !== 200
      ? `The server refused with HTTP ${st.http}${st.code ? ` (${st.code})` : ''}: ${st.message || ''}`
      : 'A firewall or proxy may block WebSockets, or the server is down.';
    return {
      level: 'fail',
      headline: 'The signaling server cannot be reached over WebSocket from here: calls cannot be set up.',
      advice: [{ text: why, term: sig.error }],
    };
  }
  if (!sig.joined) {
    advice.push({ text: `The signaling socket opens, but joining a room was refused: ${sig.error || 'no answer'}.`,
      term: sig.code });
  }
  const loops = r.loopback || [];
  const works = (t) => loops.filter((l) => l.transport === t && l.ok);
  const udp = works('udp');
  const tcp = works('tcp');
  const tls = works('tls');
  const gathering = r.gathering || [];
  const srflx = gathering.some((g) => (g.types?.srflx || 0) > 0);
  const port = (l) => Number(String(l.label).split(':').pop());
  const prefer443 = (list) => list.find((l) => port(l) === 443) || list[0];

  // The server handed out no turn:/turns: URL at all: nothing of the relay was tested, so nothing about it is this
  // network's fault (the doctor: "No TURN server was tested … Configure TURN").
  const turnOffered = loops.length > 0 || gathering.some((g) => !String(g.url).startsWith('stun'));

  let level = /** @type {Verdict['level']} */ ('ok');
  let headline;
  if (!loops.length && !gathering.length) {
    level = 'fail';
    headline = 'The server handed out no STUN or TURN addresses: only direct calls on the same network can work.';
  } else if (!turnOffered) {
    if (srflx) {
      level = 'warn';
      headline = 'This server offers no TURN relay: direct calls may work, but calls with peers on strict networks ' +
        '(symmetric NATs, blocked UDP) will fail.';
    } else {
      level = 'fail';
      headline = 'UDP to this server\'s STUN address gets no answer from here, and the server offers no TURN relay: ' +
        'calls from this network will likely fail.';
    }
    advice.push({ text: 'Ask the operator to enable TURN, with TURN over TLS on port 443 for networks that block UDP.',
      term: 'no turn: or turns: URL in the iceServers' });
  } else if (udp.length) {
    headline = srflx
      ? 'UDP works here: calls connect directly when the other side allows it, else through the relay over UDP.'
      : 'UDP to the relay works here: calls will connect, through the relay if need be.';
  } else if (tls.length || tcp.length) {
    level = 'warn';
    const best = tls.length ? prefer443(tls) : prefer443(tcp);
    // The doctor's summary in the same words (verdict::no_udp_summary).
    headline = `UDP is blocked on this network: every call will go through the TURN relay, over ${
      best.transport.toUpperCase()} on port ${port(best)}.`;
    advice.push({ text: 'Video may be choppier over TCP; ask the network admin to allow UDP to the server if you can.',
      term: 'TURN over TCP/TLS (RFC 6062, RFC 8656)' });
  } else if (srflx) {
    level = 'warn';
    headline = 'Direct calls may work, but the relay cannot be used from here: calls to strict networks will fail.';
  } else if (certificateRefusal(r.tlsFailures)) {
    level = 'fail';
    headline = 'The relay cannot be used from here: UDP and TCP do not get through, and this browser refused the ' +
      'server\'s TLS certificate, so TURN over TLS fails too. The certificate is the server\'s to fix, not your network.';
  } else {
    level = 'fail';
    headline = 'Neither UDP nor TCP/TLS to the relay gets through from here: calls will fail.';
    advice.push({ text: 'A firewall blocks the media ports. Ask for UDP and TCP 443 to this server to be allowed.' });
  }

  // Relays that allocate but carry nothing: say so, with the likely cause.
  for (const l of loops.filter((x) => !x.ok)) {
    const g = gathering.find((x) => x.url === l.url);
    const allocated = l.relayCandidate || (g && g.types?.relay > 0);
    const auth = g?.errors?.find((e) => e.code === 401);
    const refused = l.transport === 'tls' ? certificateRefusal(r.tlsFailures, port(l)) : undefined;
    if (refused) {
      advice.push({
        text: `${l.label}: this browser refused the server's certificate — not a blocked network. The server saw it: ` +
          `${refused.message}.`,
        term: `TLS alert from the browser: ${refused.reason}`,
      });
    } else if (auth) {
      advice.push({ text: `${l.label}: the relay refused the credentials (is this computer's clock right?).`,
        term: 'STUN 401 Unauthorized' });
    } else if (allocated) {
      advice.push({
        text: `${l.label}: the relay handed out an address but the test call through it failed. The server may refuse ` +
          'to relay to its own address (its peer policy); ask the operator.',
        term: l.error,
      });
    } else {
      advice.push({ text: `${l.label}: blocked or unreachable from here.`, term: l.error });
    }
  }

  const nat = r.nat;
  if (nat?.mapping) {
    const words = MAPPING_WORDS[nat.mapping] || MAPPING_WORDS.inconclusive;
    const extra = nat.mapping === 'inconclusive' && INCONCLUSIVE_WHY[nat.why] ? ` (${INCONCLUSIVE_WHY[nat.why]})` : '';
    advice.push({ text: words.text.replace(/\.$/, '') + extra + '.', term: words.term });
    if ((nat.mapping === 'address-dependent-or-stricter' || nat.mapping === 'address-and-port-dependent') && level === 'ok') {
      headline += ' Your NAT is symmetric: many calls will go through the relay.';
    }
  }

  // The longest round trip graded poor or worse (the signaling ping, or the relay's brought down to the link): said in
  // the headline too, as the doctor says it. A geostationary satellite link (~600 ms) is not "choppy": every exchange
  // waits, and people talk over each other.
  let slowMs = 0;
  const rtt = sig.rttMs?.median;
  if (rtt !== undefined) {
    const q = rttQuality(rtt);
    if (q === 'poor' || q === 'bad') slowMs = Math.max(slowMs, rtt);
    advice.push({
      text: `Round trip to the server: ${Math.round(rtt)} ms (${q}).` +
        (q === 'poor' || q === 'bad' ? ' Calls will feel laggy; a nearer server would help.' : ''),
      term: `good ≤ ${RTT_LEVELS[0]} ms, fair ≤ ${RTT_LEVELS[1]} ms, poor ≤ ${RTT_LEVELS[2]} ms`,
    });
    if ((q === 'poor' || q === 'bad') && level === 'ok') level = 'warn';
  }
  // The relay loopback's round trip, graded for the user's link (see RELAY_TEST_CROSSINGS).
  const relayed = loops.filter((l) => l.ok && l.rttMs).sort((a, b) => a.rttMs.median - b.rttMs.median)[0];
  if (relayed) {
    const { linkMs, quality } = relayLinkQuality(relayed.rttMs.median);
    if (quality === 'poor' || quality === 'bad') slowMs = Math.max(slowMs, linkMs);
    advice.push({
      text: `Round trip through the relay (${relayed.label}): ${Math.round(relayed.rttMs.median)} ms for the test ` +
        `call, which crosses your link four times — about ${Math.round(linkMs)} ms for your link (${quality}).` +
        (quality === 'poor' || quality === 'bad' ? ' Calls through the relay will feel laggy.' : ''),
      term: `link round trip = test round trip × ${ROUND_TRIP_CROSSINGS}/${RELAY_TEST_CROSSINGS}; ` +
        `good ≤ ${RTT_LEVELS[0]} ms, fair ≤ ${RTT_LEVELS[1]} ms, poor ≤ ${RTT_LEVELS[2]} ms`,
    });
    if ((quality === 'poor' || quality === 'bad') && level === 'ok') level = 'warn';
  }
  // The loss count of the TURN/UDP loopback, graded for the user's link like the doctor's relay test.
  const counted = loops.filter((l) => l.ok && l.loss).sort((a, b) => a.loss.percent - b.loss.percent)[0];
  if (counted?.loss) {
    const { sent, received, percent } = counted.loss;
    const { linkPercent, quality } = relayLinkLoss(percent);
    const each = linkPercent.toFixed(1);
    const poor = quality === 'poor' || quality === 'bad';
    advice.push({
      text: `Lost through the relay (${counted.label}): ${sent - received} of ${sent} test packets (${percent} %), ` +
        `which cross your link four times — about ${each} % each way for your link (${quality}).` +
        (poor ? ' Expect choppy audio and video.' : ''),
      term: `link loss = 1 − (1 − test loss)^(1/${RELAY_TEST_CROSSINGS}); ` +
        `good ≤ ${LOSS_LEVELS[0]} %, fair ≤ ${LOSS_LEVELS[1]} %, poor ≤ ${LOSS_LEVELS[2]} %`,
    });
    if (poor && level !== 'fail') {
      headline += ` But this network loses packets (about ${each} % each way): expect choppy audio and video.`;
      if (level === 'ok') level = 'warn';
    }
  }
  if (slowMs > 0 && level !== 'fail') {
    headline += ` But the round trip to the server is long (about ${Math.round(slowMs)} ms): expect a delay that ` +
      'makes people talk over each other.';
  }
  if (r.aborted) advice.push({ text: `Some checks did not finish: ${r.aborted}.` });
  return { level, headline, advice };
}
