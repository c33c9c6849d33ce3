// @ts-check
// The operator's dashboard: reads the server's snapshots from `GET /api/dashboard/events` (Server-Sent Events, read
// with fetch so the admin token goes in the Authorization header, never in a URL) and draws them: numbers as text,
// charts as hand-made SVG. Rates (bytes/s) come from the counters of the snapshots of the last 10 s. Nothing from the
// server is parsed as HTML: every string goes in through textContent.

/**
 * @typedef {{start_unix: number, connected: number, failed: number, dropped?: number, recovered?: number}} Minute
 * @typedef {{unix: number, room: string, outcome?: string, reason: string, message: string}} Failure
 * @typedef {{buckets: Array<[number | null, number]>, sum_ms: number, count: number}} Histogram
 * @typedef {{
 *   connected: number, failed: number, by_path: Record<string, number>, by_reason: Record<string, number>,
 *   dropped?: number, dropped_by_reason?: Record<string, number>, recovered?: number,
 *   time_to_connect_ms: Histogram, minutes: Minute[], recent_failures: Failure[],
 *   latest_by_reason?: Record<string, string>
 * }} Outcomes
 * @typedef {{sockets: number, sessions: number, rooms: number, relayed: number}} Signaling
 * @typedef {{
 *   allocations: number, relayedPacketsToPeer: number, relayedBytesToPeer: number,
 *   relayedPacketsToClient: number, relayedBytesToClient: number
 * }} TurnLoad
 * @typedef {{notAfterUnix: number, daysLeft: number, selfSigned: boolean}} Certificate
 * @typedef {{
 *   unixMs: number, signaling: Signaling | null, turn: TurnLoad | null, certificate: Certificate | null,
 *   outcomes?: Outcomes | null
 * }} Snapshot
 * @typedef {{unixMs: number, toPeer: number, toClient: number, segment: number}} Rate
 */

const TOKEN_KEY = 'traverse.adminToken';
const EVENTS = '/api/dashboard/events';
/** The server sends a snapshot every 2 s; three missed ones and the stream is taken for dead and reopened. */
const SILENCE_MS = 7000;
/** Certificate days left under which the tile turns to the warning colour. */
const CERT_WARN_DAYS = 14;
/** Bandwidth samples kept for the chart: 5 minutes at one per 2 s. */
const RATE_SAMPLES = 150;
/** Order of the paths on the chart; others follow alphabetically. */
const PATH_ORDER = ['direct-host', 'direct-srflx', 'direct-prflx', 'relay-udp', 'relay-tcp', 'relay-tls'];
const SVG_NS = 'http://www.w3.org/2000/svg';

const $ = (/** @type {string} */ id) => /** @type {HTMLElement} */ (document.getElementById(id));

/**
 * Recent TURN byte counters, oldest first, over at most RATE_WINDOW_MS: a rate is taken across the whole window.
 * @type {Array<{unixMs: number, toPeer: number, toClient: number}>}
 */
const counters = [];
/**
 * The workers publish their counters once a second, so two snapshots 2 s apart hold one to three seconds of traffic;
 * a rate over 10 s is within about 10 % of the truth instead of 50 %.
 */
const RATE_WINDOW_MS = 10000;
/** @type {Rate[]} */
const rates = [];
/**
 * Rates of one segment come from one unbroken run of snapshots; a restart or a gap starts the next one, where the
 * chart breaks its lines and the tiles say "measuring…" until a rate of the new segment is known.
 */
let segment = 0;
let snapshots = 0;
let chartIds = 0;

class Unauthorized extends Error {}

// ---- Start-up and the event stream ----

function start() {
  $('login').addEventListener('submit', (e) => {
    e.preventDefault();
    const token = /** @type {HTMLInputElement} */ ($('token')).value.trim();
    if (!token) return;
    sessionStorage.setItem(TOKEN_KEY, token);
    $('login-error').textContent = '';
    run(token);
  });
  $('signout').addEventListener('click', () => {
    sessionStorage.removeItem(TOKEN_KEY);
    location.reload();
  });
  const token = sessionStorage.getItem(TOKEN_KEY);
  if (token) run(token);
  else askForToken('');
}

/** @param {string} why */
function askForToken(why) {
  $('board').hidden = true;
  $('signout').hidden = true;
  $('login').hidden = false;
  $('login-error').textContent = why;
  setStatus('Not signed in.', '');
  /** @type {HTMLInputElement} */ ($('token')).focus();
}

/** @param {string} text @param {'live' | 'down' | ''} state */
function setStatus(text, state) {
  const status = $('status');
  status.textContent = text;
  status.className = state;
}

let running = false;

/** Keeps one stream open, reopening it with a growing pause after a failure. @param {string} token */
async function run(token) {
  if (running) return;
  running = true;
  $('login').hidden = true;
  $('board').hidden = false;
  $('signout').hidden = false;
  let pause = 1000;
  for (;;) {
    try {
      setStatus('Connecting…', '');
      await follow(token, () => (pause = 1000));
      setStatus('The stream ended; reconnecting…', 'down');
      await new Promise((r) => setTimeout(r, pause));
    } catch (e) {
      if (e instanceof Unauthorized) {
        running = false;
        sessionStorage.removeItem(TOKEN_KEY);
        askForToken(e.message);
        return;
      }
      const retry = e instanceof RetryLater ? e.ms : pause;
      const why = String(e instanceof Error ? e.message : e);
      // The browser's own messages ("Failed to fetch") carry no full stop.
      setStatus(`${why}${/[.!?]$/.test(why) ? '' : '.'} Retrying in ${Math.round(retry / 1000)} s.`, 'down');
      await new Promise((r) => setTimeout(r, retry));
      pause = Math.min(pause * 2, 30000);
    }
  }
}

class RetryLater extends Error {
  /** @param {string} message @param {number} ms */
  constructor(message, ms) {
    super(message);
    this.ms = ms;
  }
}

/**
 * Reads one event stream until it ends or goes silent.
 * @param {string} token
 * @param {() => void} onEvent
 */
async function follow(token, onEvent) {
  const abort = new AbortController();
  let silence = setTimeout(() => abort.abort(), SILENCE_MS);
  try {
    const response = await fetch(EVENTS, {
      headers: { Authorization: `Bearer ${token}`, Accept: 'text/event-stream' },
      cache: 'no-store',
      signal: abort.signal,
    });
    if (response.status === 401) throw new Unauthorized(await refusal(response, 'The token was refused.'));
    if (response.status === 404) throw new Unauthorized(await refusal(response, 'The dashboard is off.'));
    if (response.status === 429) {
      const after = Number(response.headers.get('Retry-After')) || 10;
      throw new RetryLater(await refusal(response, 'Too many requests.'), after * 1000);
    }
    if (!response.ok || !response.body) throw new Error(`The server answered ${response.status}.`);
    const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
    let buffer = '';
    for (;;) {
      const { value, done } = await reader.read();
      if (done) return;
      buffer += value.replace(/\r\n?/g, '\n');
      let end;
      while ((end = buffer.indexOf('\n\n')) >= 0) {
        const block = buffer.slice(0, end);
        buffer = buffer.slice(end + 2);
        const event = parseEvent(block);
        if (event.type !== 'snapshot' || !event.data) continue;
        clearTimeout(silence);
        silence = setTimeout(() => abort.abort(), SILENCE_MS);
        onEvent();
        render(JSON.parse(event.data));
      }
    }
  } catch (e) {
    if (abort.signal.aborted) throw new Error('No update for a while.');
    throw e;
  } finally {
    clearTimeout(silence);
    abort.abort();
  }
}

/** @param {Response} response @param {string} fallback */
async function refusal(response, fallback) {
  try {
    const body = await response.json();
    return typeof body.message === 'string' ? body.message : fallback;
  } catch {
    return fallback;
  }
}

/** One SSE block: `event:` and `data:` lines (several data lines join with newlines). @param {string} block */
function parseEvent(block) {
  let type = 'message';
  /** @type {string[]} */
  const data = [];
  for (const line of block.split('\n')) {
    if (line.startsWith(':')) continue;
    const colon = line.indexOf(':');
    const field = colon < 0 ? line : line.slice(0, colon);
    const value = colon < 0 ? '' : line.slice(colon + 1).replace(/^ /, '');
    if (field === 'event') type = value;
    else if (field === 'data') data.push(value);
  }
  return { type, data: data.length ? data.join('\n') : null };
}

// ---- Rendering ----

/** @param {Snapshot} snap */
function render(snap) {
  snapshots++;
  document.body.dataset.snapshots = String(snapshots);
  const at = new Date(snap.unixMs);
  setStatus(`Live — updated ${at.toLocaleTimeString()}`, 'live');
  renderNow(snap);
  renderOutcomes(snap.outcomes ?? null, snap.unixMs);
  renderBandwidth(snap);
}

/** @param {Snapshot} snap */
function renderNow(snap) {
  const s = snap.signaling;
  setText('rooms', s ? count(s.rooms) : 'n/a');
  setText('sockets', s ? count(s.sockets) : 'n/a');
  setText('sessions', s ? count(s.sessions) : 'n/a');
  setText('allocations', snap.turn ? count(snap.turn.allocations) : 'n/a');
  const o = snap.outcomes;
  if (o) {
    const hour = lastHour(o);
    setText('connected-total', count(hour.connected));
    setText('failed-total', count(hour.failed));
    setText('dropped-total', count(hour.dropped));
    setText('recovered-total', count(hour.recovered));
    const total = hour.connected + hour.failed;
    const rate = $('success-rate');
    rate.textContent = total ? percent(hour.connected / total) : 'no connections yet';
    rate.className = !total
      ? ''
      : hour.connected / total >= 0.95
        ? 'ok'
        : hour.connected / total >= 0.8
          ? 'warn'
          : 'bad';
  } else {
    for (const id of ['connected-total', 'failed-total', 'dropped-total', 'recovered-total', 'success-rate']) {
      setText(id, 'n/a');
    }
  }
  const days = $('cert-days');
  const c = snap.certificate;
  if (c) {
    days.textContent =
      c.daysLeft < 0 ? 'expired' : c.daysLeft > 3650 ? '> 10 years left' : `${counted(c.daysLeft, 'day')} left`;
    days.className = c.daysLeft < 0 ? 'bad' : c.daysLeft < CERT_WARN_DAYS || c.selfSigned ? 'warn' : 'ok';
    const expires = `The certificate served over TLS expires ${new Date(c.notAfterUnix * 1000).toUTCString()}.`;
    const generated = c.selfSigned
      ? ' It is the self-signed one generated at start: browsers refuse it (set tls.cert and tls.key).'
      : '';
    setText('cert-note', expires + generated);
  } else {
    days.textContent = 'n/a';
    days.className = '';
    setText('cert-note', 'Certificate expiry unknown (no TLS listener, or not reported).');
  }
}

/**
 * Sums per-minute counts; falls back to the totals since start when the server sends no minutes.
 * @param {Outcomes} o
 */
function lastHour(o) {
  if (!o.minutes || !o.minutes.length) {
    return { connected: o.connected, failed: o.failed, dropped: o.dropped ?? 0, recovered: o.recovered ?? 0 };
  }
  let connected = 0;
  let failed = 0;
  let dropped = 0;
  let recovered = 0;
  for (const m of o.minutes) {
    connected += m.connected;
    failed += m.failed;
    dropped += m.dropped ?? 0;
    recovered += m.recovered ?? 0;
  }
  return { connected, failed, dropped, recovered };
}

/** @param {Outcomes | null} o @param {number} unixMs */
function renderOutcomes(o, unixMs) {
  if (!o) {
    const why = 'Connection outcomes are not available on this server.';
    for (const id of ['success-chart', 'paths-chart', 'ttc-chart', 'reasons-chart']) emptyChart(id, why);
    setText('paths-summary', '');
    setText('ttc-summary', '');
    renderRecent([]);
    return;
  }
  successChart(o.minutes ?? [], unixMs);
  pathsChart(o.by_path ?? {});
  ttcChart(o.time_to_connect_ms);
  // Failures to connect and calls that dropped, each by its post-mortem's reason (the codes do not overlap).
  const reasons = { ...(o.by_reason ?? {}), ...(o.dropped_by_reason ?? {}) };
  reasonsChart(reasons, o.latest_by_reason ?? {}, o.recent_failures ?? []);
  renderRecent(o.recent_failures ?? []);
}

/**
 * Stacked bars (connected below, failed above) per minute of the last hour.
 * @param {Minute[]} minutes
 * @param {number} unixMs
 */
function successChart(minutes, unixMs) {
  const W = 1040;
  const H = 170;
  const left = 34;
  const bottom = 20;
  const top = 10;
  const plotW = W - left - 6;
  const plotH = H - top - bottom;
  const nowMinute = Math.floor(unixMs / 60000) * 60;
  /** @type {Array<{connected: number, failed: number, start: number}>} */
  const slots = Array.from({ length: 60 }, (_, i) => ({ connected: 0, failed: 0, start: nowMinute - (59 - i) * 60 }));
  for (const m of minutes) {
    const i = 59 - Math.round((nowMinute - m.start_unix) / 60);
    if (i < 0 || i > 59) continue;
    slots[i].connected += m.connected;
    slots[i].failed += m.failed;
  }
  const connected = slots.reduce((a, s) => a + s.connected, 0);
  const failed = slots.reduce((a, s) => a + s.failed, 0);
  const total = connected + failed;
  const label = total
    ? `Connections per minute over the last hour: ${connected} connected, ${failed} failed, ` +
      `${percent(connected / total)} succeeded.`
    : 'No connections yet in the last hour.';
  const svg = chart('success', W, H, label);
  if (!total) {
    emptyText(svg, W, H, 'No connections yet');
    place('success-chart', svg);
    return;
  }
  const max = Math.max(1, ...slots.map((s) => s.connected + s.failed));
  axis(svg, left, top, plotW, plotH, max);
  const barW = plotW / 60;
  slots.forEach((s, i) => {
    const x = left + i * barW + 1;
    const hc = (s.connected / max) * plotH;
    const hf = (s.failed / max) * plotH;
    const g = node('g', {});
    const rateText = s.connected + s.failed ? `, ${percent(s.connected / (s.connected + s.failed))} succeeded` : '';
    g.append(node('title', {}, `${clock(s.start)}: ${s.connected} connected, ${s.failed} failed${rateText}`));
    if (hc > 0) g.append(node('rect', { x, y: top + plotH - hc, width: barW - 2, height: hc, class: 'connected' }));
    if (hf > 0) g.append(node('rect', { x, y: top + plotH - hc - hf, width: barW - 2, height: hf, class: 'failed' }));
    svg.append(g);
  });
  svg.append(node('text', { x: left, y: H - 4 }, `${clock(slots[0].start)}`));
  svg.append(node('text', { x: left + plotW, y: H - 4, 'text-anchor': 'end' }, 'now'));
  legend(svg, W - 190, top + 2, [
    ['connected', 'connected'],
    ['failed', 'failed'],
  ]);
  place('success-chart', svg);
}

/**
 * Horizontal bars of how connected pairs went: direct or relayed, by transport.
 * @param {Record<string, number>} byPath
 */
function pathsChart(byPath) {
  const entries = sortPaths(Object.entries(byPath).filter(([, n]) => n > 0));
  const total = entries.reduce((a, [, n]) => a + n, 0);
  const direct = entries.filter(([p]) => p.startsWith('direct')).reduce((a, [, n]) => a + n, 0);
  setText(
    'paths-summary',
    total
      ? `${percent(direct / total)} direct, ${percent((total - direct) / total)} relayed ` +
          `(${counted(total, 'connection')}).`
      : '',
  );
  bars(
    'paths',
    'paths-chart',
    entries,
    total,
    (p) => (p.startsWith('direct') ? 'direct' : p.startsWith('relay') ? 'relay' : 'other'),
    total ? `Connected pairs by path: ${entries.map(([p, n]) => `${p} ${n}`).join(', ')}.` : 'No connections yet.',
  );
}

/** @param {Array<[string, number]>} entries */
function sortPaths(entries) {
  const rank = (/** @type {string} */ p) => {
    const i = PATH_ORDER.indexOf(p);
    return i < 0 ? PATH_ORDER.length : i;
  };
  return entries.sort(([a], [b]) => rank(a) - rank(b) || a.localeCompare(b));
}

/**
 * Failures by reason, each with the sentence of its latest failure (the server's `latest_by_reason`; from the recent
 * failures for a server without it).
 * @param {Record<string, number>} byReason
 * @param {Record<string, string>} latestByReason
 * @param {Failure[]} recent
 */
function reasonsChart(byReason, latestByReason, recent) {
  const entries = Object.entries(byReason)
    .filter(([, n]) => n > 0)
    .sort(([a, x], [b, y]) => y - x || a.localeCompare(b));
  const total = entries.reduce((a, [, n]) => a + n, 0);
  bars(
    'reasons',
    'reasons-chart',
    entries,
    total,
    () => 'reason',
    total ? `Failures and drops by reason: ${entries.map(([r, n]) => `${r} ${n}`).join(', ')}.` : 'No failed or dropped connections.',
    'No failed or dropped connections',
  );
  const box = $('reasons-chart');
  for (const [reason] of entries) {
    const sentence = latestByReason[reason] ?? recent.find((f) => f.reason === reason)?.message;
    if (!sentence) continue;
    const p = document.createElement('p');
    p.className = 'sentence';
    const code = document.createElement('code');
    code.textContent = reason;
    p.append(code, `: ${sentence}`);
    box.append(p);
  }
}

/**
 * A horizontal bar per entry, with its count and share.
 * @param {string} name @param {string} into @param {Array<[string, number]>} entries @param {number} total
 * @param {(key: string) => string} classOf @param {string} label @param {string} [empty]
 */
function bars(name, into, entries, total, classOf, label, empty = 'No connections yet') {
  const W = 520;
  const row = 24;
  const labelW = 120;
  const H = Math.max(60, entries.length * row + 8);
  const svg = chart(name, W, H, label);
  if (!total) {
    emptyText(svg, W, H, empty);
    place(into, svg);
    return;
  }
  const max = Math.max(...entries.map(([, n]) => n));
  const plotW = W - labelW - 110;
  entries.forEach(([key, n], i) => {
    const y = 4 + i * row;
    const w = Math.max(2, (n / max) * plotW);
    const g = node('g', {});
    g.append(node('title', {}, `${key}: ${n} (${percent(n / total)})`));
    g.append(node('text', { x: labelW - 6, y: y + 15, 'text-anchor': 'end' }, key));
    g.append(node('rect', { x: labelW, y: y + 3, width: w, height: row - 8, rx: 2, class: classOf(key) }));
    g.append(node('text', { x: labelW + w + 6, y: y + 15, class: 'value' }, `${count(n)} (${percent(n / total)})`));
    svg.append(g);
  });
  place(into, svg);
}

/** Histogram of time to connect, from the server's cumulative buckets. @param {Histogram | undefined} h */
function ttcChart(h) {
  const W = 520;
  const H = 170;
  const left = 34;
  const top = 10;
  const bottom = 34;
  if (!h || !h.count || !h.buckets || !h.buckets.length) {
    const svg = chart('ttc', W, H, 'No connections yet.');
    emptyText(svg, W, H, 'No connections yet');
    place('ttc-chart', svg);
    setText('ttc-summary', '');
    return;
  }
  /** @type {Array<{label: string, tick: string, n: number}>} */
  const columns = [];
  let before = 0;
  let lower = 0;
  for (const [upper, cumulative] of h.buckets) {
    const finite = typeof upper === 'number' && Number.isFinite(upper);
    columns.push({
      label: finite ? `≤ ${duration(upper)}` : `> ${duration(lower)}`,
      tick: finite ? duration(upper, true) : `>${duration(lower, true)}`,
      n: Math.max(0, cumulative - before),
    });
    before = cumulative;
    if (finite) lower = upper;
  }
  if (h.count > before)
    columns.push({ label: `> ${duration(lower)}`, tick: `>${duration(lower, true)}`, n: h.count - before });
  const median = h.buckets.find(([, c]) => c >= h.count / 2);
  const medianText =
    median && typeof median[0] === 'number' && Number.isFinite(median[0]) ? `, half within ${duration(median[0])}` : '';
  setText('ttc-summary', `${counted(h.count, 'connection')}, mean ${duration(h.sum_ms / h.count)}${medianText}.`);
  const svg = chart('ttc', W, H, `Time to connect: ${columns.map((c) => `${c.label} ${c.n}`).join(', ')}.`);
  const plotW = W - left - 6;
  const plotH = H - top - bottom;
  const max = Math.max(1, ...columns.map((c) => c.n));
  axis(svg, left, top, plotW, plotH, max);
  const colW = plotW / columns.length;
  columns.forEach((c, i) => {
    const x = left + i * colW;
    const h2 = (c.n / max) * plotH;
    const g = node('g', {});
    g.append(node('title', {}, `${c.label}: ${c.n}`));
    if (h2 > 0) g.append(node('rect', { x: x + 2, y: top + plotH - h2, width: colW - 4, height: h2, class: 'ttc' }));
    g.append(node('text', { x: x + colW / 2, y: H - bottom + 14, 'text-anchor': 'middle' }, c.tick));
    svg.append(g);
  });
  place('ttc-chart', svg);
}

/** TURN bytes/s in both directions, from the counters of successive snapshots. @param {Snapshot} snap */
function renderBandwidth(snap) {
  const turn = snap.turn;
  if (turn) {
    const now = { unixMs: snap.unixMs, toPeer: turn.relayedBytesToPeer, toClient: turn.relayedBytesToClient };
    const newest = counters[counters.length - 1];
    // A counter that went backwards is a restart; snapshots further apart than the window (the stream was down, the
    // laptop slept) hold traffic of unknown timing, and a rate across them would be an average over the gap shown as
    // the last 10 s. Either way the window starts again.
    const restarted = newest && (now.toPeer < newest.toPeer || now.toClient < newest.toClient);
    const gap = newest && now.unixMs - newest.unixMs > RATE_WINDOW_MS;
    if (restarted || gap) {
      counters.length = 0;
      segment++;
    }
    if (!counters.length || now.unixMs > counters[counters.length - 1].unixMs) counters.push(now);
    while (counters.length > 2 && now.unixMs - counters[1].unixMs >= RATE_WINDOW_MS) counters.shift();
    const oldest = counters[0];
    if (counters.length >= 2 && now.unixMs > oldest.unixMs) {
      const secs = (now.unixMs - oldest.unixMs) / 1000;
      rates.push({
        unixMs: now.unixMs,
        toPeer: (now.toPeer - oldest.toPeer) / secs,
        toClient: (now.toClient - oldest.toClient) / secs,
        segment,
      });
      if (rates.length > RATE_SAMPLES) rates.shift();
    }
  }
  const newestRate = rates[rates.length - 1];
  const last = newestRate && newestRate.segment === segment ? newestRate : undefined;
  setText('bw-to-peer', !turn ? 'n/a' : last ? rate(last.toPeer) : 'measuring…');
  setText('bw-to-client', !turn ? 'n/a' : last ? rate(last.toClient) : 'measuring…');

  const W = 520;
  const H = 170;
  const left = 60;
  const top = 10;
  const bottom = 20;
  const label = !turn
    ? 'TURN load is not available.'
    : last
      ? `TURN bandwidth: ${rate(last.toPeer)} to peers, ${rate(last.toClient)} to clients.`
      : 'TURN bandwidth: measuring.';
  const svg = chart('bandwidth', W, H, label);
  if (!turn || rates.length < 2) {
    emptyText(svg, W, H, !turn ? 'Not available' : 'Measuring…');
    place('bandwidth-chart', svg);
    return;
  }
  const plotW = W - left - 6;
  const plotH = H - top - bottom;
  const max = Math.max(1, ...rates.map((r) => Math.max(r.toPeer, r.toClient)));
  axis(svg, left, top, plotW, plotH, max, rate);
  const t0 = snap.unixMs - RATE_SAMPLES * 2000;
  const x = (/** @type {number} */ t) => left + Math.max(0, ((t - t0) / (snap.unixMs - t0)) * plotW);
  const y = (/** @type {number} */ v) => top + plotH - (v / max) * plotH;
  for (const [key, cls] of /** @type {Array<['toPeer' | 'toClient', string]>} */ ([
    ['toPeer', 'line-to-peer'],
    ['toClient', 'line-to-client'],
  ])) {
    // One line per segment: nothing is drawn across a restart or a gap, nor what is older than the chart's span.
    const shown = rates.filter((r) => r.unixMs >= t0);
    for (const s of new Set(shown.map((r) => r.segment))) {
      const points = shown
        .filter((r) => r.segment === s)
        .map((r) => `${x(r.unixMs).toFixed(1)},${y(r[key]).toFixed(1)}`)
        .join(' ');
      svg.append(node('polyline', { points, class: cls, 'data-segment': s }));
    }
  }
  svg.append(node('text', { x: left, y: H - 4 }, '5 min ago'));
  svg.append(node('text', { x: left + plotW, y: H - 4, 'text-anchor': 'end' }, 'now'));
  legend(svg, W - 190, top + 2, [
    ['legend-to-peer', 'to peers'],
    ['legend-to-client', 'to clients'],
  ]);
  place('bandwidth-chart', svg);
}

/** @param {Failure[]} failures */
function renderRecent(failures) {
  const table = /** @type {HTMLTableElement} */ ($('recent'));
  const body = /** @type {HTMLTableSectionElement} */ (table.tBodies[0]);
  table.hidden = !failures.length;
  $('recent-empty').hidden = failures.length > 0;
  body.replaceChildren(
    ...failures.map((f) => {
      const tr = document.createElement('tr');
      const when = cell(new Date(f.unix * 1000).toLocaleString());
      when.className = 'when';
      const reason = document.createElement('td');
      const code = document.createElement('code');
      code.textContent = f.reason;
      reason.append(code);
      tr.append(when, cell(f.room), reason, cell(f.message));
      return tr;
    }),
  );
}

// ---- SVG and text helpers ----

/**
 * An SVG chart labelled for screen readers by a <title> and role="img".
 * @param {string} name @param {number} w @param {number} h @param {string} label
 */
function chart(name, w, h, label) {
  const id = `${name}-label-${++chartIds}`;
  const svg = node('svg', {
    viewBox: `0 0 ${w} ${h}`,
    role: 'img',
    'aria-labelledby': id,
    id: `chart-${name}`,
    'data-chart': name,
  });
  svg.append(node('title', { id }, label));
  return /** @type {SVGSVGElement} */ (svg);
}

/**
 * @param {string} tag @param {Record<string, string | number>} attrs @param {string} [text]
 * @returns {SVGElement}
 */
function node(tag, attrs, text) {
  const e = /** @type {SVGElement} */ (document.createElementNS(SVG_NS, tag));
  for (const [k, v] of Object.entries(attrs)) e.setAttribute(k, String(v));
  if (text !== undefined) e.textContent = text;
  return e;
}

/**
 * Horizontal grid lines at 0, half and the maximum, labelled on the left.
 * @param {SVGElement} svg @param {number} left @param {number} top @param {number} w @param {number} h
 * @param {number} max
 * @param {(v: number) => string} [format]
 */
function axis(svg, left, top, w, h, max, format = count) {
  // Counts below 2 have no whole half-way mark.
  const marks = format === count && max < 2 ? [0, 1] : [0, 0.5, 1];
  for (const f of marks) {
    const y = top + h - f * h;
    svg.append(node('line', { x1: left, x2: left + w, y1: y, y2: y, class: 'grid' }));
    svg.append(node('text', { x: left - 4, y: y + 4, 'text-anchor': 'end' }, format(max * f)));
  }
}

/** @param {SVGElement} svg @param {number} x @param {number} y @param {Array<[string, string]>} items */
function legend(svg, x, y, items) {
  items.forEach(([cls, text], i) => {
    const ix = x + i * 90;
    svg.append(node('rect', { x: ix, y, width: 10, height: 10, class: cls }));
    svg.append(node('text', { x: ix + 14, y: y + 9 }, text));
  });
}

/** @param {SVGElement} svg @param {number} w @param {number} h @param {string} text */
function emptyText(svg, w, h, text) {
  svg.append(node('text', { x: w / 2, y: h / 2, 'text-anchor': 'middle', class: 'empty' }, text));
}

/** @param {string} id @param {string} why */
function emptyChart(id, why) {
  const svg = chart(id.replace(/-chart$/, ''), 520, 60, why);
  emptyText(svg, 520, 60, why);
  place(id, svg);
}

/** @param {string} id @param {SVGElement} svg */
function place(id, svg) {
  $(id).replaceChildren(svg);
}

/** @param {string} id @param {string} text */
function setText(id, text) {
  const e = $(id);
  if (e.textContent !== text) e.textContent = text;
}

/** @param {string} text */
function cell(text) {
  const td = document.createElement('td');
  td.textContent = text;
  return td;
}

const count = (/** @type {number} */ n) => (Number.isInteger(n) ? n : Math.round(n * 10) / 10).toLocaleString('en');
/** "1 connection", "2 connections". @param {number} n @param {string} word */
const counted = (n, word) => `${count(n)} ${word}${n === 1 ? '' : 's'}`;
const percent = (/** @type {number} */ f) => `${(f * 100).toFixed(f === 1 || f === 0 ? 0 : 1)} %`;
const clock = (/** @type {number} */ unix) =>
  new Date(unix * 1000).toLocaleTimeString([], { hour: '2-digit', minute: '2-digit' });

/** "250 ms", "1.5 s"; `compact` for axis ticks: "250ms", "1.5s". @param {number} ms @param {boolean} [compact] */
function duration(ms, compact = false) {
  const space = compact ? '' : ' ';
  if (ms < 1000) return `${Math.round(ms)}${space}ms`;
  const secs = ms / 1000;
  return `${Number.isInteger(secs) || secs >= 10 ? Math.round(secs) : secs.toFixed(1)}${space}s`;
}

/** Bytes per second, in B/s, kB/s, MB/s, GB/s (powers of 1000). @param {number} bytesPerSec */
function rate(bytesPerSec) {
  const units = ['B/s', 'kB/s', 'MB/s', 'GB/s'];
  let v = bytesPerSec;
  let i = 0;
  while (v >= 1000 && i < units.length - 1) {
    v /= 1000;
    i++;
  }
  return `${v.toFixed(v < 10 && i > 0 ? 1 : 0)} ${units[i]}`;
}

start();
