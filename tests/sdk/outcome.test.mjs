// Unit tests of the SDK's connection outcome reports (docs/sdk.md, "Connection outcomes") in node: the report built
// from a getStats() report, the ICE server counts, the browser, the candidate errors kept, and the `diagnosis`
// frame as part of the numbered stream.
//
//   node --test tests/sdk/
import { test } from 'node:test';
import assert from 'node:assert/strict';
import fs from 'node:fs';

const source = fs.readFileSync(new URL('../../web/sdk/traverse.js', import.meta.url), 'utf8');
const sdk = await import(`data:text/javascript;base64,${Buffer.from(source).toString('base64')}`);

const servers = [
  { urls: ['stun:192.0.2.1:3478'] },
  {
    urls: [
      'turn:192.0.2.1:3478?transport=udp',
      'turn:192.0.2.1:3478?transport=tcp',
      'turns:turn.example.com:5349?transport=tcp',
      'turns:turn.example.com:443?transport=tcp',
    ],
    username: 'u',
    credential: 'c',
  },
];

/** A getStats() report: a Map of stats objects by id. */
function stats(entries) {
  return new Map(entries.map((e) => [e.id, e]));
}

const chrome =
  'Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/131.0.0.0 Safari/537.36';

test('a connected relay over TLS: pair, gathered counts, offered URLs, browser — and no address anywhere', () => {
  const s = stats([
    { id: 'L1', type: 'local-candidate', candidateType: 'host', protocol: 'udp', address: '10.0.0.2', port: 5000 },
    { id: 'L2', type: 'local-candidate', candidateType: 'srflx', protocol: 'udp', address: '198.51.100.7' },
    {
      id: 'L3',
      type: 'local-candidate',
      candidateType: 'relay',
      protocol: 'udp',
      relayProtocol: 'tls',
      address: '192.0.2.1',
      url: 'turns:turn.example.com:443?transport=tcp',
    },
    { id: 'L4', type: 'local-candidate', candidateType: 'relay', protocol: 'udp', url: 'turn:192.0.2.1:3478' },
    { id: 'R1', type: 'remote-candidate', candidateType: 'srflx', protocol: 'udp', address: '203.0.113.9' },
    { id: 'P', type: 'candidate-pair', localCandidateId: 'L3', remoteCandidateId: 'R1', state: 'succeeded' },
    { id: 'T', type: 'transport', selectedCandidatePairId: 'P' },
  ]);
  const r = sdk._outcomeReport({
    outcome: 'connected',
    elapsedMs: 812.6,
    policy: 'all',
    stats: s,
    iceServers: servers,
    errors: [],
    remoteCandidates: 3,
    remoteDescription: true,
    restarts: 0,
    userAgent: chrome,
  });
  assert.deepEqual(r, {
    outcome: 'connected',
    elapsedMs: 813,
    policy: 'all',
    pair: {
      local: { type: 'relay', protocol: 'udp', relayProtocol: 'tls', url: 'turns:turn.example.com:443?transport=tcp' },
      remote: { type: 'srflx', protocol: 'udp' },
    },
    gathered: { host: 1, srflx: 1, prflx: 0, relayUdp: 1, relayTcp: 0, relayTls: 1 },
    offered: { stun: 1, turnUdp: 1, turnTcp: 1, turnTls: 2, turnTls443: 1 },
    errors: [],
    remoteCandidates: 3,
    remoteDescription: true,
    restarts: 0,
    browser: { name: 'chrome', version: 131 },
  });
  const text = JSON.stringify(r);
  for (const ip of ['10.0.0.2', '198.51.100.7', '203.0.113.9']) assert.ok(!text.includes(ip), `${ip} in ${text}`);
});

test('a failed connection carries no pair, and its counts are clamped', () => {
  const r = sdk._outcomeReport({
    outcome: 'failed',
    elapsedMs: -5,
    policy: 'relay',
    stats: stats([{ id: 'P', type: 'candidate-pair', localCandidateId: 'x', remoteCandidateId: 'y' }]),
    iceServers: [],
    errors: [{ code: 701, url: 'turn:192.0.2.1:3478?transport=udp', text: 'TURN allocate request timed out.' }],
    remoteCandidates: 1e9,
    remoteDescription: false,
    restarts: 1,
    userAgent: '',
  });
  assert.equal(r.pair, undefined);
  assert.ok(!('pair' in r));
  assert.equal(r.elapsedMs, 0);
  assert.equal(r.remoteCandidates, 65535);
  assert.equal(r.policy, 'relay');
  assert.deepEqual(r.browser, { name: 'other', version: 0 });
  assert.deepEqual(r.offered, { stun: 0, turnUdp: 0, turnTcp: 0, turnTls: 0, turnTls443: 0 });
});

test('ICE server URLs are counted per kind; turns: defaults to 5349, not 443', () => {
  assert.deepEqual(sdk._countIceUrls([{ urls: 'turns:t.example.com' }, { urls: ['turn:t:3478', 'stuns:t'] }]), {
    stun: 1,
    turnUdp: 1,
    turnTcp: 0,
    turnTls: 1,
    turnTls443: 0,
  });
});

test('browsers by family and major version', () => {
  const cases = [
    [chrome, 'chrome', 131],
    ['Mozilla/5.0 (Windows NT 10.0) AppleWebKit/537.36 Chrome/130.0 Safari/537.36 Edg/130.0.2849.80', 'edge', 130],
    ['Mozilla/5.0 (X11; Linux x86_64; rv:133.0) Gecko/20100101 Firefox/133.0', 'firefox', 133],
    ['Mozilla/5.0 (Macintosh) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/18.1 Safari/605.1.15', 'safari', 18],
    ['curl/8', 'other', 0],
  ];
  for (const [ua, name, version] of cases) assert.deepEqual(sdk._browserOf(ua), { name, version }, ua);
});

test('candidate errors: deduplicated, bounded, without addresses, odd codes and URLs dropped', () => {
  const list = [];
  const e = { errorCode: 701, url: 'turn:192.0.2.1:3478?transport=udp', errorText: 'timed\nout', address: '10.0.0.2' };
  sdk._addCandidateError(list, e);
  sdk._addCandidateError(list, e);
  sdk._addCandidateError(list, { errorCode: 0, url: 'turn:x' });
  sdk._addCandidateError(list, { errorCode: 401, url: 'javascript:alert(1)', errorText: 'Unauthorized' });
  assert.deepEqual(list, [
    { code: 701, url: 'turn:192.0.2.1:3478?transport=udp', text: 'timed out' },
    { code: 401, text: 'Unauthorized' },
  ]);
  sdk._addCandidateError(list, { errorCode: 701, errorText: 'no route from 10.0.0.2 or fe80::1:2 to the server' });
  assert.deepEqual(list.at(-1), { code: 701, text: 'no route from … or … to the server' });
  for (let i = 0; i < 40; i++) sdk._addCandidateError(list, { errorCode: 701, url: `turn:h${i}:3478` });
  assert.equal(list.length, 16);
  assert.ok(!JSON.stringify(list).includes('10.0.0.2'));
});

test('an error text is at most 120 bytes of UTF-8 cut between characters, without C1 controls', () => {
  const list = [];
  // 110 UTF-16 units, 204 bytes of UTF-8: the server's 128-byte bound would refuse the whole report.
  sdk._addCandidateError(list, { errorCode: 701, errorText: 'é'.repeat(100) + ' timed out' });
  sdk._addCandidateError(list, { errorCode: 702, errorText: 'bad\u0085line \u{1F600}'.repeat(12) });
  const bytes = (t) => Buffer.byteLength(t, 'utf8');
  assert.equal(list[0].text, 'é'.repeat(60));
  assert.ok(bytes(list[1].text) <= 120, list[1].text);
  assert.ok(!/[\u0080-\u009f]/.test(list[1].text), 'a C1 control kept');
  assert.ok(!list[1].text.includes('\ufffd') && !/[\ud800-\udbff]$/.test(list[1].text), 'a character cut in two');
});

test("a connected Firefox report names its pair (no transport stats: the selected candidate pair's own flag)", () => {
  const report = (selected) =>
    sdk._outcomeReport({
      outcome: 'connected',
      elapsedMs: 500,
      policy: 'all',
      stats: stats([
        { id: 'L1', type: 'local-candidate', candidateType: 'srflx', protocol: 'udp' },
        { id: 'R1', type: 'remote-candidate', candidateType: 'host', protocol: 'udp' },
        { id: 'P0', type: 'candidate-pair', localCandidateId: 'R1', remoteCandidateId: 'L1', state: 'failed' },
        { id: 'P1', type: 'candidate-pair', localCandidateId: 'L1', remoteCandidateId: 'R1', ...selected },
      ]),
      iceServers: servers,
      errors: [],
      remoteCandidates: 1,
      remoteDescription: true,
      restarts: 0,
      userAgent: 'Mozilla/5.0 (X11; Linux x86_64; rv:133.0) Gecko/20100101 Firefox/133.0',
    }).pair;
  const expected = { local: { type: 'srflx', protocol: 'udp' }, remote: { type: 'host', protocol: 'udp' } };
  assert.deepEqual(report({ selected: true, state: 'succeeded' }), expected);
  assert.deepEqual(report({ nominated: true, state: 'succeeded' }), expected);
  assert.equal(report({ state: 'in-progress' }), undefined);
});

test('a diagnosis frame is part of the numbered stream: delivered once, deduplicated on replay', () => {
  const s = new sdk._Session({ room: 'r' });
  s.nextHandshake();
  s.handleOpen();
  s.handleFrame(JSON.stringify({ type: 'joined', seq: 1, session: 's_1', peerId: 'p_a', peers: [] }));
  const diagnosis = { type: 'diagnosis', seq: 2, peer: 'p_b', outcome: 'failed', reason: 'timeout', message: 'x' };
  s.handleFrame(JSON.stringify(diagnosis));
  s.handleFrame(JSON.stringify(diagnosis));
  const events = [];
  for (let e = s.pollEvent(); e !== undefined; e = s.pollEvent()) events.push(e);
  assert.deepEqual(
    events.map((e) => [e.type, e.msg?.type]),
    [
      ['joined', 'joined'],
      ['message', 'diagnosis'],
    ],
  );
  assert.equal(s.stats.duplicates, 1);
  assert.equal(s.lastSeq, 2);
});

test('an ICE restart does not shrink what a report says was gathered: each kind counts its best generation', () => {
  const seen = new Map();
  // The first generation gathered a host and two srflx candidates; after a restart, getStats holds only the new
  // generation's host candidate.
  for (const type of ['host', 'srflx', 'srflx']) sdk._countCandidate(seen, { type, usernameFragment: 'gen1' });
  sdk._countCandidate(seen, { type: 'host', usernameFragment: 'gen2' });
  sdk._countCandidate(seen, { type: 'relay', url: 'turns:t.example.com:443?transport=tcp', usernameFragment: 'gen2' });
  const r = sdk._outcomeReport({
    outcome: 'failed',
    elapsedMs: 15000,
    policy: 'all',
    stats: stats([{ id: 'L1', type: 'local-candidate', candidateType: 'host', protocol: 'udp' }]),
    iceServers: [],
    errors: [],
    remoteCandidates: 2,
    remoteDescription: true,
    restarts: 1,
    seen,
    userAgent: '',
  });
  assert.deepEqual(r.gathered, { host: 1, srflx: 2, prflx: 0, relayUdp: 0, relayTcp: 0, relayTls: 1 });
  // Bounded: a peer restarting for ever keeps at most 16 generations.
  for (let i = 0; i < 40; i++) sdk._countCandidate(seen, { type: 'host', usernameFragment: `g${i}` });
  assert.ok(seen.size <= 16);
});
