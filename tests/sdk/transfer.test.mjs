// File transfers end to end in node, without a browser: the SDK's sending side (`peer.sendFile`) and its receiving
// side (`receiveFile`, wired by `attachFiles`) of two fake peers, joined by fake data channels that behave as
// Chromium's do where it matters here: a channel the sender creates opens at the receiver at once (the `datachannel`
// event) and at the sender a round trip later; a message reaches an end only while that end is open (one sent to an
// end still opening is lost, as a refusal's reason was in Chromium); a close delivers what was sent before it. What
// is checked: a queue of files on the sender (no more at once than the receiver takes), the reason of a refusal,
// the error codes and their side (`by`), a signal aborted already, an `onProgress` that throws, and file names.
//
//   node --test tests/sdk/transfer.test.mjs
import { test } from 'node:test';
import assert from 'node:assert/strict';
import crypto from 'node:crypto';
import fs from 'node:fs';

const source = fs.readFileSync(new URL('../../web/sdk/traverse.js', import.meta.url), 'utf8');
const sdk = await import(`data:text/javascript;base64,${Buffer.from(source).toString('base64')}`);

const nodeSha = (buf) => crypto.createHash('sha256').update(buf).digest('hex');

/** Calls the handler property and the listeners of `type` on a fake channel end. */
function fire(end, type) {
  const e = new Event(type);
  end[`on${type}`]?.(e);
  end.dispatchEvent(e);
}

/** One end of a fake data channel; `other` is the far end. */
class End extends EventTarget {
  constructor(label, readyState, pipe) {
    super();
    Object.assign(this, { label, readyState, pipe, bufferedAmount: 0, bufferedAmountLowThreshold: 0 });
    this.binaryType = 'blob';
    this.onmessage = null;
    this.onclose = null;
    this.onopen = null;
    this.other = null;
  }
  send(data) {
    if (this.readyState !== 'open') throw new DOMException('not open', 'InvalidStateError');
    let copy =
      typeof data === 'string'
        ? data
        : ArrayBuffer.isView(data)
          ? data.buffer.slice(data.byteOffset, data.byteOffset + data.byteLength)
          : data.slice(0);
    if (typeof copy !== 'string' && this.pipe.tamper) copy = this.pipe.tamper(copy);
    const to = this.other;
    const size = typeof copy === 'string' ? copy.length : copy.byteLength;
    this.bufferedAmount += size;
    setImmediate(() => {
      const before = this.bufferedAmount;
      this.bufferedAmount -= size;
      if (before > this.bufferedAmountLowThreshold && this.bufferedAmount <= this.bufferedAmountLowThreshold) {
        fire(this, 'bufferedamountlow');
      }
      // An end still opening, or closed, gets nothing.
      if (to.readyState !== 'open' && to.readyState !== 'closing') return;
      const e = Object.assign(new Event('message'), { data: copy });
      to.onmessage?.(e);
      to.dispatchEvent(e);
    });
  }
  close() {
    if (this.readyState === 'closed' || this.readyState === 'closing') return;
    const ends = [this, this.other];
    this.readyState = 'closing';
    // What was sent before the close arrives first (the same queue); the far end learns of the close with it.
    setImmediate(() => {
      for (const end of ends) {
        if (end.readyState === 'closed') continue;
        end.readyState = 'closed';
        fire(end, 'close');
      }
    });
  }
}

/**
 * A peer as the file code sees it: options, events (recorded in `events`), `pc` with `createDataChannel` (the far
 * end goes to the other peer's `datachannel` event) and `close(by)`.
 */
function fakePeer(name, options = {}) {
  const peer = new EventTarget();
  Object.assign(peer, { peerId: name, options, closed: false, _closedBy: null, events: [], channels: [] });
  peer._emit = (event, detail) => {
    peer.events.push({ event, ...detail });
    peer.dispatchEvent(new CustomEvent(event, { detail }));
  };
  peer.pc = new EventTarget();
  Object.assign(peer.pc, { connectionState: 'connected', sctp: { maxMessageSize: 262144 } });
  peer.pc.createDataChannel = (label) => {
    const pipe = { tamper: peer.tamper };
    const mine = new End(label, 'connecting', pipe);
    const theirs = new End(label, 'open', pipe);
    mine.other = theirs;
    theirs.other = mine;
    peer.channels.push(mine);
    peer.remote.channels.push(theirs);
    setImmediate(() => peer.remote.pc.dispatchEvent(Object.assign(new Event('datachannel'), { channel: theirs })));
    // The sender's end opens a round trip later.
    setTimeout(() => {
      if (mine.readyState !== 'connecting') return;
      mine.readyState = 'open';
      fire(mine, 'open');
    }, 2);
    return mine;
  };
  /** The app closes this peer (as `Peer._close`: closed, then `close`, and its channels go). */
  peer.close = (by = 'local', reason = 'closed') => {
    peer.closed = true;
    peer._closedBy = { by, reason };
    peer._emit('close', { by, reason });
    for (const ch of peer.channels) ch.close();
  };
  sdk._attachFiles(peer);
  return peer;
}

/** Two peers whose file channels are joined. */
function pair(a = {}, b = {}) {
  const sender = fakePeer('A', a);
  const receiver = fakePeer('B', b);
  sender.remote = receiver;
  receiver.remote = sender;
  return { sender, receiver };
}

const sendFile = (peer, src, opts) => sdk.Peer.prototype.sendFile.call(peer, src, opts);

/** `promise` within `ms`, else a rejection that says what was awaited. */
function within(ms, promise, what) {
  let timer;
  const late = new Promise((_, reject) => {
    timer = setTimeout(() => reject(new Error(`${what}: still pending after ${ms} ms`)), ms);
  });
  return Promise.race([promise, late]).finally(() => clearTimeout(timer));
}

/** Settles to `{ok: result}` or `{err}`. */
const outcome = (p) => p.then((ok) => ({ ok }), (err) => ({ err }));

/** Waits until `fn()` is truthy (each turn of the event loop), at most `ms`. */
async function until(ms, fn, what) {
  const end = Date.now() + ms;
  while (!fn()) {
    if (Date.now() > end) throw new Error(`${what}: not within ${ms} ms`);
    await new Promise((r) => setTimeout(r, 1));
  }
}

const received = (peer) => peer.events.filter((e) => e.event === 'file');
const cancels = (peer) => peer.events.filter((e) => e.event === 'file-cancel');

test('eight files at once: at most four go at a time, the others wait their turn, and all eight arrive', async () => {
  const { sender, receiver } = pair();
  let open = 0;
  let most = 0;
  receiver.addEventListener('file-start', () => (most = Math.max(most, ++open)));
  receiver.addEventListener('file', () => open--);
  const files = Array.from({ length: 8 }, () => crypto.randomBytes(200_000));
  const results = await within(20000, Promise.all(files.map((f, i) => outcome(sendFile(sender, f, { name: `f${i}` })))), '8 sends');
  assert.deepEqual(results.map((r) => r.err?.message ?? 'ok'), Array(8).fill('ok'));
  assert.deepEqual(results.map((r) => r.ok.sha256), files.map(nodeSha));
  assert.equal(received(receiver).length, 8);
  assert.equal(cancels(receiver).length, 0, 'none refused');
  assert.ok(most <= 4, `${most} received at once`);
  assert.ok(sender.channels.length === 8, 'one channel per file');
});

test('a refusal reaches the sender with its reason: code refused, by remote', async () => {
  // The sender does not know the receiver's limit (here lower than the default): the receiver refuses the second.
  const { sender, receiver } = pair({}, { maxIncomingFiles: 1 });
  const [first, second] = await within(
    20000,
    Promise.all([1, 2].map((i) => outcome(sendFile(sender, crypto.randomBytes(4_000_000), { name: `f${i}` })))),
    'two sends',
  );
  assert.ok(first.ok, `the first arrives: ${first.err?.message}`);
  assert.equal(second.err?.code, 'refused', second.err?.message);
  assert.match(second.err.message, /refused by the other peer: 1 files are being received from this peer already \(maxIncomingFiles\)/);
  assert.equal(second.err.by, 'remote');
  assert.equal(second.err.name, 'TraverseError');
  assert.deepEqual(
    { code: second.err.file.code, by: second.err.file.by, name: second.err.file.name, direction: second.err.file.direction },
    { code: 'refused', by: 'remote', name: 'f2', direction: 'send' },
  );
  const [theirs] = cancels(receiver);
  assert.deepEqual({ code: theirs.code, by: theirs.by }, { code: 'refused', by: 'local' });
});

test('a signal aborted already: sendFile rejects at once with cancelled, and opens nothing', async () => {
  const { sender } = pair();
  const abort = new AbortController();
  abort.abort('the user changed their mind');
  const { err } = await within(2000, outcome(sendFile(sender, new Uint8Array(10), { signal: abort.signal })), 'sendFile');
  assert.equal(err?.code, 'cancelled');
  assert.equal(err.by, 'local');
  assert.match(err.message, /the user changed their mind/);
  assert.equal(sender.channels.length, 0);

  // Aborted while it waits its turn behind four others: out of the queue, at once.
  const busy = Array.from({ length: 4 }, () => sendFile(sender, crypto.randomBytes(100_000)));
  const later = new AbortController();
  const waiting = outcome(sendFile(sender, new Uint8Array(10), { signal: later.signal }));
  later.abort();
  const queued = await within(2000, waiting, 'the queued send');
  assert.equal(queued.err?.code, 'cancelled');
  await within(20000, Promise.all(busy), 'the four others');
  assert.equal(sender.channels.length, 4, 'the aborted one never opened a channel');
});

test('an onProgress that throws is reported and changes nothing: mid-transfer and on the last call', async () => {
  const { sender, receiver } = pair();
  const reported = [];
  const real = globalThis.reportError;
  globalThis.reportError = (e) => reported.push(e.message);
  try {
    const data = crypto.randomBytes(1_000_000);
    const mid = await within(
      20000,
      outcome(
        sendFile(sender, data, {
          name: 'mid.bin',
          onProgress: (p) => {
            if (p.bytes < p.size) throw new Error('bar is null');
          },
        }),
      ),
      'mid',
    );
    assert.equal(mid.err, undefined, `delivered: ${mid.err?.message}`);
    assert.equal(mid.ok.sha256, nodeSha(data));
    const last = await within(
      20000,
      outcome(
        sendFile(sender, data, {
          name: 'last.bin',
          onProgress: (p) => {
            if (p.bytes === p.size) throw new Error('bar is gone');
          },
        }),
      ),
      'last',
    );
    assert.equal(last.err, undefined, `resolves: ${last.err?.message}`);
    assert.deepEqual(received(receiver).map((f) => f.name), ['mid.bin', 'last.bin']);
    assert.equal(cancels(receiver).length, 0, 'the receiver was told nothing');
    assert.ok(reported.includes('bar is null') && reported.includes('bar is gone'), `reported: ${reported}`);
  } finally {
    globalThis.reportError = real;
  }
});

test('codes and sides: cancelled by the receiver, integrity, a source that cannot be read, a Peer closed on either side', async () => {
  // The receiver's user cancels as the file starts.
  {
    const { sender, receiver } = pair();
    receiver.addEventListener('file-start', (e) => receiver.remote && sdk.Peer.prototype.cancelFile.call(receiver, e.detail.id, 'no thanks'));
    const { err } = await within(20000, outcome(sendFile(sender, crypto.randomBytes(500_000))), 'cancelled');
    assert.deepEqual([err?.code, err?.by, err?.reason], ['cancelled', 'remote', 'no thanks']);
    assert.deepEqual(cancels(receiver).map((c) => [c.code, c.by]), [['cancelled', 'local']]);
  }
  // A byte changed on the way: the receiver's hash differs.
  {
    const { sender, receiver } = pair();
    sender.tamper = (buf) => {
      new Uint8Array(buf)[0] ^= 1;
      return buf;
    };
    const { err } = await within(20000, outcome(sendFile(sender, crypto.randomBytes(100_000))), 'integrity');
    assert.deepEqual([err?.code, err?.by], ['integrity', 'remote'], err?.message);
    assert.deepEqual(cancels(receiver).map((c) => [c.code, c.by]), [['integrity', 'local']]);
  }
  // The source cannot be read (a File removed from disk: NotReadableError).
  {
    const { sender, receiver } = pair();
    class GoneFile extends Blob {
      slice() {
        return { arrayBuffer: () => Promise.reject(new DOMException('the file is gone', 'NotReadableError')) };
      }
    }
    const { err } = await within(20000, outcome(sendFile(sender, new GoneFile(['x'.repeat(1000)]))), 'read-failed');
    assert.deepEqual([err?.code, err?.by], ['read-failed', 'local'], err?.message);
    assert.match(err.message, /the file is gone/);
    await until(2000, () => cancels(receiver).length === 1, 'the receiver told');
    assert.deepEqual(cancels(receiver).map((c) => [c.code, c.by]), [['read-failed', 'remote']]);
  }
  // The sender's app closes its Peer mid-transfer: closed, by local here, by remote there.
  {
    const { sender, receiver } = pair();
    receiver.addEventListener('file-progress', () => sender.closed || sender.close('local'));
    const { err } = await within(20000, outcome(sendFile(sender, crypto.randomBytes(2_000_000))), 'sender closes');
    assert.deepEqual([err?.code, err?.by], ['closed', 'local'], err?.message);
    await until(2000, () => cancels(receiver).length === 1, 'the receiver told');
    assert.deepEqual(cancels(receiver).map((c) => [c.code, c.by]), [['closed', 'remote']]);
  }
  // The receiver's side goes (its app closed the Peer, or its page went): closed, by remote for the sender.
  {
    const { sender, receiver } = pair();
    receiver.addEventListener('file-progress', () => receiver.closed || receiver.close('local'));
    const { err } = await within(20000, outcome(sendFile(sender, crypto.randomBytes(2_000_000))), 'receiver closes');
    assert.deepEqual([err?.code, err?.by], ['closed', 'remote'], err?.message);
    assert.deepEqual(cancels(receiver).map((c) => [c.code, c.by]), [['closed', 'local']]);
  }
});

test('file names: cut on the sender on a code point, so both sides agree; an empty name is "file"', async () => {
  const { sender, receiver } = pair();
  // 1023 units then a surrogate pair: a cut at 1024 would keep half of it.
  const long = 'a'.repeat(1023) + '😀' + 'b'.repeat(4000);
  const sent = await within(20000, sendFile(sender, new Uint8Array(3), { name: long }), 'long name');
  const [got] = received(receiver);
  assert.equal(sent.name, got.name, 'the sender resolves with the name the receiver got');
  assert.equal(got.name, 'a'.repeat(1023));
  assert.ok(got.name.isWellFormed(), 'no lone surrogate');
  const empty = await within(20000, sendFile(sender, new Uint8Array(3), { name: '' }), 'empty name');
  assert.equal(empty.name, 'file');
  assert.equal(received(receiver)[1].name, 'file');
});
