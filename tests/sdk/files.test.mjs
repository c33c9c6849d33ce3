// Unit tests of the SDK's file transfer without a browser (web/sdk/traverse.js, section "file and large-message
// transfer"): the streamed SHA-256 against node:crypto, and the sending loop's chunking and back-pressure against a
// fake data channel that drains at its own pace. The channels, both ends and cancel are tested in Chromium
// (tests/browser/transfer.test.js).
//
//   node --test tests/sdk/
import { test } from 'node:test';
import assert from 'node:assert/strict';
import crypto from 'node:crypto';
import fs from 'node:fs';

const source = fs.readFileSync(new URL('../../web/sdk/traverse.js', import.meta.url), 'utf8');
const sdk = await import(`data:text/javascript;base64,${Buffer.from(source).toString('base64')}`);
const { _Sha256: Sha256, _writeChunks: writeChunks, _fileReader: fileReader, FILE_CHUNK_BYTES } = sdk;

const nodeSha = (buf) => crypto.createHash('sha256').update(buf).digest('hex');

test('SHA-256: FIPS 180-4 vectors', () => {
  assert.equal(new Sha256().hex(), 'e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855');
  assert.equal(
    new Sha256().update(new TextEncoder().encode('abc')).hex(),
    'ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad',
  );
  assert.equal(
    new Sha256().update(new TextEncoder().encode('abcdbcdecdefdefgefghfghighijhijkijkljklmklmnlmnomnopnopq')).hex(),
    '248d6a61d20638b8e5c026930c3e6039a33ce45964ff2167f6ecedd419db06c1',
  );
});

test('SHA-256: every length around the block and padding edges, fed in uneven pieces, equals node:crypto', () => {
  const data = crypto.randomBytes(1000);
  for (let n = 0; n <= 300; n++) {
    const h = new Sha256();
    const bytes = new Uint8Array(data.buffer, data.byteOffset, n);
    // Pieces of 1, 2, 3, … bytes: every offset into the 64-byte buffer.
    for (let o = 0, k = 1; o < n; o += k, k = (k % 67) + 1) h.update(bytes.subarray(o, Math.min(n, o + k)));
    assert.equal(h.hex(), nodeSha(bytes), `length ${n}`);
  }
});

test('SHA-256: 8 MiB in 64 KiB pieces equals node:crypto, and how fast it runs', () => {
  const data = crypto.randomBytes(8 << 20);
  const t0 = performance.now();
  const h = new Sha256();
  for (let o = 0; o < data.length; o += 65536) h.update(data.subarray(o, o + 65536));
  const hex = h.hex();
  const ms = performance.now() - t0;
  assert.equal(hex, nodeSha(data));
  console.log(`streamed SHA-256 in JS: ${((8 / ms) * 1000).toFixed(0)} MiB/s`);
});

/**
 * A data channel that takes what it is sent into its buffer and drains `rate` bytes every tick, firing
 * `bufferedamountlow` when the buffer falls to its threshold — like RTCDataChannel.
 */
class FakeChannel extends EventTarget {
  constructor({ rate = 256 * 1024, tickMs = 1 } = {}) {
    super();
    this.readyState = 'open';
    this.bufferedAmount = 0;
    this.bufferedAmountLowThreshold = 256 * 1024;
    this.sent = [];
    this.maxBuffered = 0;
    this.timer = setInterval(() => {
      if (!this.bufferedAmount) return;
      const before = this.bufferedAmount;
      this.bufferedAmount = Math.max(0, before - rate);
      if (before > this.bufferedAmountLowThreshold && this.bufferedAmount <= this.bufferedAmountLowThreshold) {
        this.dispatchEvent(new Event('bufferedamountlow'));
      }
    }, tickMs);
  }
  send(view) {
    if (this.readyState !== 'open') throw new Error('InvalidStateError');
    this.sent.push(Buffer.from(view.buffer, view.byteOffset, view.byteLength));
    this.bufferedAmount += view.byteLength;
    this.maxBuffered = Math.max(this.maxBuffered, this.bufferedAmount);
  }
  close() {
    this.readyState = 'closed';
    clearInterval(this.timer);
    this.dispatchEvent(new Event('close'));
  }
}

test('sending 24 MiB: 64 KiB chunks in order, never more than the high-water mark buffered, hash of all bytes', async () => {
  const data = crypto.randomBytes(24 << 20);
  const ch = new FakeChannel({ rate: 512 * 1024 });
  const progress = [];
  let maxPending = 0;
  const reader = fileReader(new Blob([data]));
  // Count what the reader has handed out but the channel has not taken yet: the sender's memory.
  let handedOut = 0;
  const counting = {
    size: reader.size,
    read: async (o, n) => {
      const b = await reader.read(o, n);
      handedOut = o + b.length;
      return b;
    },
  };
  const sha = await writeChunks(ch, counting, {
    chunkBytes: FILE_CHUNK_BYTES,
    onWritten: (bytes) => {
      progress.push(bytes);
      maxPending = Math.max(maxPending, handedOut - bytes + ch.bufferedAmount);
    },
  });
  ch.close();
  assert.equal(sha, nodeSha(data));
  assert.ok(ch.sent.every((c, i) => c.length === FILE_CHUNK_BYTES || i === ch.sent.length - 1));
  assert.equal(ch.sent.length, (24 << 20) / FILE_CHUNK_BYTES);
  assert.ok(Buffer.concat(ch.sent).equals(data), 'the bytes arrive whole and in order');
  assert.equal(progress.at(-1), data.length);
  // High water 1 MiB: a chunk is written only while at most 1 MiB is buffered.
  assert.ok(ch.maxBuffered <= (1 << 20) + FILE_CHUNK_BYTES, `buffered at most ${ch.maxBuffered}`);
  // Held by the sender at once: one read (1 MiB) plus the channel's buffer.
  assert.ok(maxPending <= (2 << 20) + FILE_CHUNK_BYTES, `held at most ${maxPending}`);
});

test('a chunk size below 64 KiB (a small max-message-size) is kept; an ArrayBuffer and a view work as sources', async () => {
  const data = crypto.randomBytes(300000);
  for (const src of [data.buffer.slice(data.byteOffset, data.byteOffset + data.length), new Uint8Array(data)]) {
    const ch = new FakeChannel();
    const sha = await writeChunks(ch, fileReader(src), { chunkBytes: 16384 });
    ch.close();
    assert.equal(sha, nodeSha(data));
    assert.ok(ch.sent.every((c) => c.length <= 16384));
    assert.ok(Buffer.concat(ch.sent).equals(data));
  }
  assert.throws(() => fileReader('text'), /File, Blob, ArrayBuffer or typed array/);
});

test('stopping: a cancel seen between chunks stops the loop with its error; a channel closing while waiting too', async () => {
  const data = crypto.randomBytes(8 << 20);
  const ch = new FakeChannel({ rate: 64 * 1024 });
  const cancelled = Object.assign(new Error('cancelled'), { code: 'cancelled' });
  let stop = null;
  const run = writeChunks(ch, fileReader(data), {
    chunkBytes: FILE_CHUNK_BYTES,
    stopped: () => stop,
    onWritten: (bytes) => {
      if (bytes >= 2 << 20) stop = cancelled;
    },
  });
  await assert.rejects(run, (e) => e === cancelled);
  assert.ok(ch.sent.length * FILE_CHUNK_BYTES <= (2 << 20) + FILE_CHUNK_BYTES, 'nothing written after the cancel');
  ch.close();

  const slow = new FakeChannel({ rate: 0 });
  const stuck = writeChunks(slow, fileReader(data), { chunkBytes: FILE_CHUNK_BYTES });
  setTimeout(() => slow.close(), 20);
  await assert.rejects(stuck, (e) => e.code === 'closed');
});

// ---- receiving: what a peer of the room can make this page hold ----------------------------------------------------

/** The receiving end of one file channel, as the browser hands it to `receiveFile`. */
class IncomingChannel {
  constructor() {
    this.readyState = 'open';
    this.sent = [];
    this.onmessage = null;
    this.onclose = null;
  }
  send(text) {
    this.sent.push(JSON.parse(text));
  }
  close() {
    if (this.readyState === 'closed') return;
    this.readyState = 'closed';
    this.onclose?.();
  }
  /** A frame from the sending peer. */
  deliver(data) {
    this.onmessage?.({ data: typeof data === 'string' ? data : data.buffer.slice(data.byteOffset, data.byteOffset + data.length) });
  }
  cancelledWith() {
    return this.sent.find((m) => m.t === 'cancel')?.reason ?? null;
  }
}

/** A peer as `receiveFile` sees it: its options, its events, and its connection's state. */
function fakePeer(options = {}) {
  const events = [];
  return {
    options,
    events,
    pc: { connectionState: 'connected' },
    _emit: (event, detail) => events.push({ ...detail, event }),
  };
}

/** Every channel a test opened: closed at its end, which stops their deadline timers. */
const opened = [];
const closeAll = () => {
  for (const ch of opened.splice(0)) ch.close();
};

/** Opens a file channel from `peer`, with its head unless `head` is null. */
function incoming(peer, head) {
  const ch = new IncomingChannel();
  opened.push(ch);
  sdk._receiveFile(peer, ch);
  if (head) ch.deliver(JSON.stringify({ t: 'head', name: 'f', type: '', ...head }));
  return ch;
}

test('receiving: at most maxIncomingFiles at once from one peer, and their announced bytes within maxFileBytes', (t) => {
  t.after(closeAll);
  const peer = fakePeer({ maxFileBytes: 10_000 });
  const open = [1, 2, 3, 4].map((i) => incoming(peer, { id: `f${i}`, size: 100 }));
  assert.deepEqual(open.map((ch) => ch.cancelledWith()), [null, null, null, null]);
  const fifth = incoming(peer, { id: 'f5', size: 100 });
  assert.match(fifth.cancelledWith(), /4 files are being received from this peer already \(maxIncomingFiles\)/);
  assert.equal(fifth.readyState, 'closed');

  // One completes (its hash checked): room for another.
  const data = crypto.randomBytes(100);
  open[0].deliver(data);
  open[0].deliver(JSON.stringify({ t: 'end', sha256: nodeSha(data) }));
  assert.deepEqual(open[0].sent, [{ t: 'ok', sha256: nodeSha(data) }]);
  assert.equal(incoming(peer, { id: 'f6', size: 100 }).cancelledWith(), null);

  // Bytes: 9 800 more would pass the 10 000 with the 400 being received; 9 600 fits.
  const bytes = fakePeer({ maxFileBytes: 10_000, maxIncomingFiles: 8 });
  for (const id of ['a', 'b']) incoming(bytes, { id, size: 200 });
  assert.match(incoming(bytes, { id: 'c', size: 9_800 }).cancelledWith(), /400 bytes are being received from this peer already/);
  assert.equal(incoming(bytes, { id: 'd', size: 9_600 }).cancelledWith(), null);
  assert.match(incoming(bytes, { id: 'e', size: 10_001 }).cancelledWith(), /more than this peer accepts/);
  for (const p of [peer, bytes]) for (const e of p.events.filter((e) => e.event === 'file-cancel')) assert.equal(e.by, 'local');

  // Every refusal carries its code; the receiver's side says it refused.
  assert.deepEqual(fifth.sent.find((m) => m.t === 'cancel').code, 'refused');
  for (const p of [peer, bytes]) for (const e of p.events.filter((e) => e.event === 'file-cancel')) assert.equal(e.code, 'refused');
});

test('receiving: a refusal waits for the head, so that its reason reaches the sender; channels without a head are bounded', (t) => {
  t.after(closeAll);
  // Refused as it opened, the sender's end was often not open yet, and the reason was lost with the close.
  const peer = fakePeer();
  for (const i of [1, 2, 3, 4]) incoming(peer, { id: `q${i}`, size: 1 });
  const fifth = incoming(peer, null);
  assert.equal(fifth.readyState, 'open', 'a fifth channel is not closed before its head');
  assert.equal(fifth.cancelledWith(), null);
  fifth.deliver(JSON.stringify({ t: 'head', id: 'q5', name: 'f', type: '', size: 1 }));
  assert.deepEqual(fifth.sent, [
    { t: 'cancel', code: 'refused', reason: '4 files are being received from this peer already (maxIncomingFiles)' },
  ]);
  assert.equal(fifth.readyState, 'closed');

  // A channel that never sends its head holds nothing but itself: 32 may wait, a 33rd is closed as it opens, and a
  // closed one frees its place.
  const quiet = fakePeer();
  const headless = Array.from({ length: 32 }, () => incoming(quiet, null));
  assert.ok(headless.every((ch) => ch.readyState === 'open'));
  const over = incoming(quiet, null);
  assert.match(over.cancelledWith(), /32 file channels from this peer are waiting for their head already/);
  assert.equal(over.readyState, 'closed');
  headless[0].close();
  assert.equal(incoming(quiet, { id: 'late', size: 1 }).cancelledWith(), null);
});

test('receiving: an id already open is refused, and the transfer holding it is untouched', (t) => {
  t.after(closeAll);
  const peer = fakePeer();
  const first = incoming(peer, { id: 'same', size: 10 });
  const second = incoming(peer, { id: 'same', size: 10 });
  assert.match(second.cancelledWith(), /a transfer with id same is open already/);
  const data = crypto.randomBytes(10);
  first.deliver(data);
  first.deliver(JSON.stringify({ t: 'end', sha256: nodeSha(data) }));
  const got = peer.events.filter((e) => e.event === 'file');
  assert.equal(got.length, 1);
  assert.equal(got[0].size, 10);
});

test('receiving: a head must come within 10 s and a chunk within 60 s while the connection is up', (t) => {
  let clock = 1_000;
  const real = globalThis.performance;
  Object.defineProperty(globalThis, 'performance', { value: { now: () => clock }, configurable: true, writable: true });
  t.mock.timers.enable({ apis: ['setInterval'] });
  t.after(closeAll);
  const advance = (seconds, each) => {
    for (let s = 0; s < seconds; s++) {
      clock += 1000;
      each?.();
      t.mock.timers.tick(1000);
    }
  };
  try {
    const peer = fakePeer();
    const silent = incoming(peer, null);
    const stalled = incoming(peer, { id: 's', size: 1000 });
    const steady = incoming(peer, { id: 'k', size: 1000 });
    const feed = () => steady.deliver(crypto.randomBytes(1));
    advance(9, feed);
    assert.equal(silent.cancelledWith(), null);
    advance(2, feed);
    assert.match(silent.cancelledWith(), /no head within 10 s/);
    advance(48, feed);
    assert.equal(stalled.cancelledWith(), null, '59 s without a chunk');
    advance(2, feed);
    assert.match(stalled.cancelledWith(), /nothing received for 60 s/);
    assert.equal(steady.cancelledWith(), null, 'a sender that keeps sending is not idle');
    assert.equal(peer.events.filter((e) => e.event === 'file-cancel').length, 1, 'the stalled transfer, told once');

    // While the connection is down (an ICE restart), nothing is idle; from when it is back, the minute counts.
    const restarting = fakePeer();
    restarting.pc.connectionState = 'disconnected';
    const waiting = incoming(restarting, { id: 'w', size: 1000 });
    advance(120);
    assert.equal(waiting.cancelledWith(), null, 'two minutes down: still waiting');
    restarting.pc.connectionState = 'connected';
    advance(50);
    assert.equal(waiting.cancelledWith(), null);
    advance(15);
    assert.match(waiting.cancelledWith(), /nothing received for 60 s/);
  } finally {
    Object.defineProperty(globalThis, 'performance', { value: real, configurable: true, writable: true });
  }
});
