import { runChecks, verdict, MAPPING_WORDS } from '/check/check.js';

const $ = (id) => /** @type {HTMLElement} */ (document.getElementById(id));
/** @type {any} */
let report = null;

/** Text node helper: nothing from a report is ever parsed as HTML. */
function el(tag, text, cls) {
  const e = document.createElement(tag);
  if (text !== undefined) e.textContent = String(text);
  if (cls) e.className = cls;
  return e;
}
function row(cells, attrs = {}) {
  const tr = document.createElement('tr');
  for (const [k, v] of Object.entries(attrs)) tr.dataset[k] = String(v);
  for (const c of cells) {
    const td = document.createElement('td');
    if (c instanceof Node) td.append(c);
    else td.textContent = c ?? '';
    tr.append(td);
  }
  return tr;
}
const okText = (ok) => el('span', ok ? 'works' : 'fails', ok ? 'ok' : 'bad');
const ms = (x) => (x === undefined ? '' : `${Math.round(x)} ms`);

function render(r) {
  $('raw').textContent = JSON.stringify(r, null, 2);
  const s = r.signaling;
  if (s) {
    const box = $('signaling');
    box.className = '';
    box.replaceChildren(
      el('div', `${s.url}: `),
      okText(s.ok && s.joined),
      el('div', s.ok
        ? `opened in ${ms(s.connectMs)}${s.joined ? `, joined in ${ms(s.joinMs)}` : ''}` +
          (s.rttMs ? `, ping round trip median ${ms(s.rttMs.median)} (min ${ms(s.rttMs.min)}, max ${ms(s.rttMs.max)})` : '')
        : ''),
    );
    if (s.error) box.append(el('div', s.error, 'term'));
    box.dataset.ok = String(!!s.ok);
  }
  const i = r.iceServers;
  if (i) {
    const box = $('ice');
    box.className = '';
    const urls = (i.servers || []).flatMap((x) => (Array.isArray(x.urls) ? x.urls : [x.urls]));
    box.replaceChildren(el('div', i.ok ? `/api/ice-servers: ${urls.length} addresses, credential valid ${i.ttl} s`
      : `/api/ice-servers failed: ${i.error || ''}${i.from === 'join' ? ' (using the ones the join handed out)' : ''}`,
    i.ok ? '' : 'bad'));
    const ul = el('ul', undefined, 'mono');
    for (const u of urls) ul.append(el('li', u));
    box.append(ul);
  }
  if (r.gathering) {
    const body = $('gathering');
    body.replaceChildren();
    for (const g of r.gathering) {
      const types = Object.entries(g.types || {}).map(([k, v]) => `${v} ${k}`).join(', ') || 'none';
      const rp = g.relayProtocols?.length ? ` (relay over ${g.relayProtocols.join('/')})` : '';
      const errs = (g.errors || []).map((e) => `error ${e.code} ${e.text}`).join('; ');
      const res = el('span');
      res.append(okText(g.ok), el('span', g.timedOut ? ' (timed out)' : ''));
      body.append(row([el('code', g.url), res, `${types}${rp}${errs ? ` — ${errs}` : ''}`, ms(g.ms)],
        { url: g.url, ok: g.ok }));
    }
    if (!r.gathering.length) body.append(row(['no STUN/TURN addresses to test']));
  }
  if (r.loopback) {
    const body = $('loopback');
    body.replaceChildren();
    for (const l of r.loopback) {
      const p = l.pair ? `${l.pair.local?.type}/${l.pair.local?.relayProtocol || l.pair.local?.protocol} ↔ ${l.pair.remote?.type}` : '';
      const res = el('span');
      res.append(okText(l.ok));
      if (l.error) res.append(el('div', l.error, 'term'));
      if (l.stalled) res.append(el('div', `stopped early: ${l.stalled}`, 'term'));
      body.append(row([el('code', l.url), res, `${l.echoed}`,
        l.rttMs ? `median ${ms(l.rttMs.median)} (max ${ms(l.rttMs.max)})` : '', p],
      { transport: l.transport, ok: l.ok }));
    }
    if (!r.loopback.length) body.append(row(['no TURN addresses to test']));
  }
  if (r.nat) {
    const box = $('nat');
    box.className = '';
    const w = MAPPING_WORDS[r.nat.mapping] || MAPPING_WORDS.inconclusive;
    box.dataset.mapping = r.nat.mapping;
    box.replaceChildren(el('div', w.text), el('div', w.term, 'term'));
    const ul = el('ul', undefined, 'mono');
    for (const o of r.nat.observations || []) ul.append(el('li', `${o.server} → ${o.mapped.join(', ') || 'nothing'}`));
    if (!(r.nat.observations || []).length) ul.append(el('li', `STUN addresses: ${(r.nat.servers || []).join(', ') || 'none'}`));
    box.append(ul);
  }
  if (r.verdict) {
    const v = r.verdict;
    $('verdict').dataset.level = v.level;
    const h = $('headline');
    h.className = '';
    h.textContent = v.headline;
    const ul = $('advice');
    ul.replaceChildren();
    for (const a of v.advice) {
      const li = el('li', a.text);
      if (a.term) li.append(' ', el('span', `(${a.term})`, 'term'));
      ul.append(li);
    }
  }
}

async function run() {
  $('run').setAttribute('disabled', '');
  $('share').setAttribute('disabled', '');
  $('share-result').replaceChildren();
  document.body.dataset.state = 'running';
  const hash = new URLSearchParams(location.hash.slice(1));
  report = await runChecks({
    token: hash.get('token') || undefined,
    extraStun: hash.getAll('stun'),
    onProgress: (r) => render(r),
  });
  render(report);
  document.body.dataset.state = 'done';
  $('run').removeAttribute('disabled');
  $('share').removeAttribute('disabled');
}

async function share() {
  if (!report) return;
  $('share').setAttribute('disabled', '');
  const out = $('share-result');
  out.replaceChildren(el('span', 'Sending…', 'pending'));
  try {
    const r = await fetch('/api/reports', {
      method: 'POST',
      headers: { 'content-type': 'application/json' },
      body: JSON.stringify(report),
    });
    const body = await r.json().catch(() => ({}));
    if (!r.ok || !body.ok) throw new Error(body.message || `HTTP ${r.status}`);
    const link = new URL(body.url, location.href).href;
    const a = el('a', link);
    a.id = 'share-link';
    a.href = link;
    a.rel = 'noreferrer';
    const copy = el('button', 'Copy', 'plain');
    copy.onclick = () => navigator.clipboard?.writeText(link).then(() => (copy.textContent = 'Copied'));
    out.replaceChildren(el('span', 'Send this link to support: '), a, ' ', copy,
      el('div', 'Anyone with the link can read the report (it includes your public IP address).', 'term'));
  } catch (e) {
    out.replaceChildren(el('span', `Could not share the report: ${e.message}`, 'bad'));
    $('share').removeAttribute('disabled');
  }
}

async function showStored(id) {
  document.body.dataset.state = 'loading';
  $('actions').hidden = true;
  $('mode').textContent = `Stored report ${id} (read-only).`;
  try {
    const r = await fetch(`/api/reports/${encodeURIComponent(id)}`, { cache: 'no-store' });
    const body = await r.json().catch(() => ({}));
    if (!r.ok) throw new Error(body.message || `HTTP ${r.status}`);
    report = body.report;
    // The verdict the user saw; recomputed only for a report that has none.
    const shown = report.verdict?.headline ? report : { ...report, verdict: verdict(report) };
    render(shown);
    $('raw').textContent = JSON.stringify(body, null, 2);
    const when = new Date(body.created * 1000);
    $('mode').textContent = `Stored report ${id}, shared ${when.toLocaleString()} from ${report.userAgent || 'an unknown browser'} ` +
      `(checks started ${report.startedAt || '?'}). Read-only.`;
    document.body.dataset.state = 'stored';
  } catch (e) {
    $('headline').textContent = `Cannot show report ${id}: ${e.message}`;
    $('headline').className = 'bad';
    document.body.dataset.state = 'error';
  }
}

const stored = /^\/check\/([^/]+)$/.exec(location.pathname);
if (stored) {
  showStored(stored[1]);
} else {
  $('run').onclick = run;
  $('share').onclick = share;
  run();
}
