// Unit tests of the connection quality a `Peer` measures (docs/sdk.md, "Connection quality") in node: the grade from
// a getStats() report and the previous one's counters — RTT of the selected pair, jitter and loss of received RTP
// over the interval, the other side's view of our loss — and the path.
//
//   node --test tests/sdk/quality.test.mjs
import { test } from 'node:test';
import assert from 'node:assert/strict';
import fs from 'node:fs';

const source = fs.readFileSync(new URL('../../web/sdk/traverse.js', import.meta.url), 'utf8');
const sdk = await import(`data:text/javascript;base64,${Buffer.from(source).toString('base64')}`);
const qualityOf = sdk._qualityOf;

/** A getStats() report: a selected pair with `rttS`, candidates of `local`/`remote` type, and RTP entries. */
function stats({ rttS = 0.02, local = 'host', remote = 'host', rtp = [], remoteInbound = [] } = {}) {
  const entries = [
    { id: 'T', type: 'transport', selectedCandidatePairId: 'CP' },
    { id: 'CP', type: 'candidate-pair', localCandidateId: 'L', remoteCandidateId: 'R', currentRoundTripTime: rttS },
    { id: 'L', type: 'local-candidate', candidateType: local },
    { id: 'R', type: 'remote-candidate', candidateType: remote },
    ...rtp.map((r, i) => ({ id: `IN${i}`, type: 'inbound-rtp', ...r })),
    ...remoteInbound.map((r, i) => ({ id: `RI${i}`, type: 'remote-inbound-rtp', ...r })),
  ];
  return new Map(entries.map((e) => [e.id, e]));
}

test('a data-only connection is graded by its RTT alone; jitter and loss are unknown', () => {
  const { quality } = qualityOf(stats({ rttS: 0.02 }), null);
  assert.deepEqual(quality, { grade: 'good', rttMs: 20, jitterMs: null, lossPercent: null, path: 'direct' });
  for (const [rttS, grade] of [[0.1, 'good'], [0.2, 'fair'], [0.3, 'poor'], [0.5, 'bad']]) {
    assert.equal(qualityOf(stats({ rttS }), null).quality.grade, grade, `${rttS * 1000} ms`);
  }
  assert.equal(qualityOf(stats({ local: 'relay' }), null).quality.path, 'relay');
  assert.equal(qualityOf(stats({ remote: 'relay' }), null).quality.path, 'relay');
});

test('loss is counted over the interval from the previous counters, the worst measure sets the grade', () => {
  const first = qualityOf(stats({ rtp: [{ packetsLost: 0, packetsReceived: 1000, jitter: 0.002 }] }), null);
  assert.equal(first.quality.grade, 'good');
  assert.equal(first.quality.lossPercent, 0);
  // 50 lost of the next 500 sent: 10 % over the interval, though 50 of 1500 since the start (3.3 %).
  const next = qualityOf(stats({ rtp: [{ packetsLost: 50, packetsReceived: 1450, jitter: 0.002 }] }), first.base);
  assert.equal(next.quality.lossPercent, 10);
  assert.equal(next.quality.grade, 'bad');
  // Jitter of the worst stream; 12 ms is poor.
  const jittery = qualityOf(stats({ rtp: [{ jitter: 0.001 }, { jitter: 0.012 }] }), null);
  assert.equal(jittery.quality.jitterMs, 12);
  assert.equal(jittery.quality.grade, 'poor');
  // What the other side says it lost of ours counts too.
  const theirs = qualityOf(stats({ remoteInbound: [{ fractionLost: 0.02 }] }), null);
  assert.equal(theirs.quality.lossPercent, 2);
  assert.equal(theirs.quality.grade, 'fair');
  // A counter that went backwards (a new stream) starts the interval afresh instead of a negative loss.
  const reset = qualityOf(stats({ rtp: [{ packetsLost: 0, packetsReceived: 10 }] }), { lost: 5, received: 5000 });
  assert.equal(reset.quality.lossPercent, 0);
});

test('no selected pair yet: nothing measured, no path', () => {
  const { quality } = qualityOf(new Map(), null);
  assert.deepEqual(quality, { grade: 'good', rttMs: null, jitterMs: null, lossPercent: null, path: null });
});
