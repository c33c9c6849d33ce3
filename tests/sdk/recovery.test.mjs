// Unit tests of the SDK's connection-recovery state machine (`_Recovery` in web/sdk/traverse.js) in node, in fake
// time: ICE states and network changes in, restarts and `reconnecting` / `reconnected` / `recovery-failed` out
// (docs/sdk.md, "Calls that survive"). The restart itself (setConfiguration + restartIce over perfect negotiation)
// is exercised in Chromium (tests/browser/rejoin.test.js) and in the NAT lab.
//
//   node --test tests/sdk/
import { test } from 'node:test';
import assert from 'node:assert/strict';
import fs from 'node:fs';

const source = fs.readFileSync(new URL('../../web/sdk/traverse.js', import.meta.url), 'utf8');
const sdk = await import(`data:text/javascript;base64,${Buffer.from(source).toString('base64')}`);
const Recovery = sdk._Recovery;

/** A clock whose time moves only by `advance`, firing due timers in order. */
function fakeClock() {
  let t = 0;
  let next = 1;
  const timers = new Map();
  return {
    now: () => t,
    setTimeout: (fn, ms) => {
      const id = next++;
      timers.set(id, { at: t + ms, fn });
      return id;
    },
    clearTimeout: (id) => timers.delete(id),
    pending: () => timers.size,
    advance(ms) {
      const end = t + ms;
      for (;;) {
        let due = null;
        for (const [id, x] of timers) if (x.at <= end && (!due || x.at < due[1].at)) due = [id, x];
        if (!due) break;
        timers.delete(due[0]);
        t = due[1].at;
        due[1].fn();
      }
      t = end;
    },
  };
}

/** A host that counts restarts and records events; `signaling` and `ice` are what it answers. */
function fakeHost() {
  const host = {
    restarts: 0,
    signaling: true,
    ice: 'connected',
    events: [],
    restart: () => host.restarts++,
    canRestart: () => host.signaling,
    connected: () => host.ice === 'connected',
    emit: (name, detail) => host.events.push({ name, ...detail }),
  };
  return host;
}

function connectedRecovery(options = {}) {
  const clock = fakeClock();
  const host = fakeHost();
  const r = new Recovery(options, host, clock);
  r.handleState('connected');
  return { r, clock, host };
}

test('disconnected past the grace period restarts once; connected again reports the cause and the time', () => {
  const { r, clock, host } = connectedRecovery();
  host.ice = 'disconnected';
  r.handleState('disconnected');
  clock.advance(1999);
  assert.equal(host.restarts, 0, 'no restart within the 2 s grace');
  clock.advance(1);
  assert.equal(host.restarts, 1);
  assert.deepEqual(host.events, [{ name: 'reconnecting', cause: 'ice-disconnected', attempt: 1 }]);
  clock.advance(1200);
  host.ice = 'connected';
  r.handleState('connected');
  assert.deepEqual(host.events.at(-1), { name: 'reconnected', cause: 'ice-disconnected', durationMs: 3200, attempts: 1 });
  assert.equal(r.state, 'connected');
  assert.equal(clock.pending(), 0, 'no timer left');
});

test('a blip that heals within the grace period restarts nothing and says nothing', () => {
  const { r, clock, host } = connectedRecovery({ graceMs: 3000 });
  r.handleState('disconnected');
  clock.advance(2500);
  r.handleState('connected');
  clock.advance(60000);
  assert.equal(host.restarts, 0);
  assert.deepEqual(host.events, []);
});

test('failed restarts at once — also when only the connection state says so (ICE left at disconnected)', () => {
  const { r, host } = connectedRecovery();
  r.handleState('disconnected');
  r.handleState('failed'); // connectionState
  assert.equal(host.restarts, 1);
  assert.equal(host.events[0].cause, 'ice-disconnected', 'the episode keeps its first cause');
});

test('a restart during a restart coalesces: network changes and a disconnection while restarting add nothing', () => {
  const { r, clock, host } = connectedRecovery();
  r.handleNetworkChange('change');
  assert.equal(host.restarts, 1);
  r.handleNetworkChange('change');
  r.handleNetworkChange('online');
  r.handleState('disconnected');
  clock.advance(5000);
  assert.equal(host.restarts, 1);
  r.handleState('connected');
  assert.deepEqual(host.events.at(-1), { name: 'reconnected', cause: 'network-change', durationMs: 5000, attempts: 1 });
});

test('bounded retries with backoff: a restart that does not connect is followed by the next, then recovery-failed', () => {
  const { r, clock, host } = connectedRecovery({
    restartTimeoutMs: 10000,
    restartDelaysMs: [0, 1000, 3000],
    maxRestarts: 3,
  });
  host.ice = 'failed';
  r.handleState('failed');
  assert.equal(host.restarts, 1);
  clock.advance(10000); // attempt 1 timed out
  assert.equal(host.restarts, 1, 'waits the backoff');
  clock.advance(1000);
  assert.equal(host.restarts, 2);
  r.handleState('failed'); // attempt 2 failed before its timeout
  clock.advance(2999);
  assert.equal(host.restarts, 2);
  clock.advance(1);
  assert.equal(host.restarts, 3);
  clock.advance(10000 + 3000);
  assert.equal(host.restarts, 3, 'no fourth restart');
  assert.deepEqual(host.events.at(-1), { name: 'recovery-failed', cause: 'ice-failed', attempts: 3 });
  assert.equal(r.state, 'failed');
  r.handleState('failed');
  clock.advance(60000);
  assert.equal(host.restarts, 3, 'a failure after giving up changes nothing');
  // A new network is a new chance.
  r.handleNetworkChange('change');
  assert.equal(host.restarts, 4);
  assert.deepEqual(host.events.at(-1), { name: 'reconnecting', cause: 'network-change', attempt: 1 });
});

test('an attempt whose ICE stayed connected (only renegotiated) ends at its timeout as reconnected', () => {
  const { r, clock, host } = connectedRecovery();
  r.handleNetworkChange('change');
  clock.advance(10000);
  assert.equal(host.restarts, 1);
  assert.deepEqual(host.events.at(-1), { name: 'reconnected', cause: 'network-change', durationMs: 10000, attempts: 1 });
});

test('a peer that left cancels a pending restart and every timer', () => {
  const { r, clock, host } = connectedRecovery();
  r.handleState('disconnected');
  r.close();
  clock.advance(60000);
  assert.equal(host.restarts, 0);
  assert.equal(clock.pending(), 0);
  r.handleState('failed');
  r.handleNetworkChange('change');
  r.handleSignaling();
  assert.equal(host.restarts, 0);
  assert.deepEqual(host.events, []);
});

test('a restart needed while signaling is down happens as soon as signaling is back', () => {
  const { r, clock, host } = connectedRecovery();
  host.signaling = false;
  r.handleState('disconnected');
  clock.advance(2000);
  r.handleState('failed');
  clock.advance(30000);
  assert.equal(host.restarts, 0);
  assert.equal(r.state, 'waiting');
  host.signaling = true;
  r.handleSignaling();
  assert.equal(host.restarts, 1);
  r.handleState('connected');
  assert.deepEqual(host.events, [
    { name: 'reconnecting', cause: 'ice-disconnected', attempt: 1 },
    { name: 'reconnected', cause: 'ice-disconnected', durationMs: 32000, attempts: 1 },
  ]);
});

test('offline holds restarts until online; then one restart', () => {
  const { r, clock, host } = connectedRecovery();
  r.handleNetworkChange('offline');
  r.handleState('disconnected');
  clock.advance(2000);
  r.handleState('failed');
  assert.equal(host.restarts, 0);
  r.handleNetworkChange('online');
  assert.equal(host.restarts, 1);
  assert.equal(host.events[0].cause, 'ice-disconnected');
});

test('before the first connection nothing but a failure restarts (network events are ignored)', () => {
  const clock = fakeClock();
  const host = fakeHost();
  const r = new Recovery({}, host, clock);
  r.handleNetworkChange('change');
  r.handleState('disconnected');
  clock.advance(10000);
  assert.equal(host.restarts, 0);
  r.handleState('failed');
  assert.equal(host.restarts, 1);
});

test('long calls: the credential expiry is read from the REST usernames, and refreshed a while before it', () => {
  const servers = [
    { urls: ['stun:192.0.2.1:3478'] },
    { urls: ['turn:192.0.2.1:3478'], username: '1764070060:p_a41b', credential: 'c' },
    { urls: ['turns:192.0.2.1:443'], username: '1764070000:p_a41b', credential: 'c' },
  ];
  assert.equal(sdk._credentialExpiry(servers), 1764070000, 'the earliest');
  assert.equal(sdk._credentialExpiry([{ urls: 'turn:h', username: 'alice', credential: 'x' }]), null, 'static user');
  assert.equal(sdk._credentialExpiry([]), null);
  const t0 = 1764070000 * 1000;
  assert.equal(sdk._refreshDelayMs(1764070060, t0), 45000, 'a 60 s credential: 45 s in');
  assert.equal(sdk._refreshDelayMs(1764070000 + 86400, t0), 86400000 - 600000, 'a day: 10 minutes before');
  assert.equal(sdk._refreshDelayMs(1764070002, t0), 5000, 'never sooner than 5 s');
  assert.equal(sdk._refreshDelayMs(1764060000, t0), 5000, 'already expired: soon, not at once in a loop');
});

test('a lost session (restarted server) restarts a connected call at once; a running restart absorbs it', () => {
  const { r, host } = connectedRecovery();
  r.handleSessionLost();
  assert.equal(host.restarts, 1);
  assert.deepEqual(host.events, [{ name: 'reconnecting', cause: 'session-lost', attempt: 1 }]);
  r.handleSessionLost();
  assert.equal(host.restarts, 1, 'coalesced');
  const fresh = new Recovery({}, fakeHost(), fakeClock());
  fresh.handleSessionLost();
  assert.equal(fresh.restarts, 0, 'never connected: nothing to restart');
});

test('a lost session on the polite side: reconnecting at once (attempt 0), reconnected when the other side restarts', () => {
  const { r, host, clock } = connectedRecovery();
  r.handleSessionLost(1500);
  assert.equal(host.restarts, 0, 'waits for the other side');
  assert.deepEqual(host.events, [{ name: 'reconnecting', cause: 'session-lost', attempt: 0 }]);
  clock.advance(700);
  r.handleState('connected'); // the other side's restart connected the new generation
  assert.deepEqual(host.events.slice(1), [{ name: 'reconnected', cause: 'session-lost', durationMs: 700, attempts: 0 }]);
  clock.advance(5000);
  assert.equal(host.restarts, 0, 'the wait was cancelled');

  // Not connected within the wait: it restarts itself, attempt 1, and says so.
  const other = connectedRecovery();
  other.r.handleSessionLost(1500);
  other.clock.advance(1500);
  assert.equal(other.host.restarts, 1);
  assert.deepEqual(other.host.events.map((e) => [e.name, e.attempt]), [['reconnecting', 0], ['reconnecting', 1]]);
});
