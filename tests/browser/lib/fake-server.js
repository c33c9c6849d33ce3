// A scripted stand-in for Traverse's signaling endpoint, for SDK tests that need the server to misbehave on cue
// (drop a socket mid-stream, replay duplicates, refuse a resume, close with a given code, stop answering pings).
// Plain HTTP + a minimal RFC 6455 server (text, close, ping frames). Serves /sdk/traverse.js from web/sdk and a blank
// page at / and the demo at /demo. Loopback only.
import http from 'node:http';
import crypto from 'node:crypto';
import fs from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

const WEB = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../../../web');
const SDK = path.join(WEB, 'sdk/traverse.js');

/** One accepted WebSocket. */
export class FakeSocket {
  constructor(socket, url, protocol) {
    this.socket = socket;
    this.url = new URL(url, 'http://x');
    /** the Sec-WebSocket-Protocol header the client sent */
    this.protocol = protocol;
    /** @type {object[]} every JSON message received */
    this.received = [];
    this.closed = false;
    /** @type {((msg: object) => void)[]} */
    this._waiters = [];
    this._buf = Buffer.alloc(0);
    socket.on('data', (d) => this._onData(d));
    socket.on('close', () => {
      this.closed = true;
      for (const w of this._closeWaiters || []) w();
    });
    socket.on('error', () => {});
  }

  /** Send a JSON text frame. */
  send(obj) {
    if (this.closed) return;
    this._frame(0x1, Buffer.from(JSON.stringify(obj)));
  }

  /** Close with a WebSocket close frame carrying `code`, then end the TCP connection. */
  close(code, reason = '') {
    if (this.closed) return;
    const r = Buffer.from(reason);
    const p = Buffer.alloc(2 + r.length);
    p.writeUInt16BE(code, 0);
    r.copy(p, 2);
    this._frame(0x8, p);
    this.socket.end();
  }

  /** Cut the TCP connection without a close frame (the browser sees 1006). */
  destroy() {
    this.socket.destroy();
  }

  /** Next received message matching `pred` (already received ones included, each consumed once). */
  next(pred = () => true, timeoutMs = 5000) {
    const i = this.received.findIndex((m) => !m._taken && pred(m));
    if (i >= 0) {
      this.received[i]._taken = true;
      return Promise.resolve(this.received[i]);
    }
    return new Promise((resolve, reject) => {
      const t = setTimeout(() => reject(new Error(`fake server: no matching message within ${timeoutMs} ms`)), timeoutMs);
      this._waiters.push((m) => {
        if (m._taken || !pred(m)) return false;
        m._taken = true;
        clearTimeout(t);
        resolve(m);
        return true;
      });
    });
  }

  whenClosed(timeoutMs = 5000) {
    if (this.closed) return Promise.resolve();
    return new Promise((resolve, reject) => {
      const t = setTimeout(() => reject(new Error('fake server: socket not closed in time')), timeoutMs);
      (this._closeWaiters ||= []).push(() => {
        clearTimeout(t);
        resolve();
      });
    });
  }

  _frame(opcode, payload) {
    let head;
    if (payload.length < 126) {
      head = Buffer.from([0x80 | opcode, payload.length]);
    } else if (payload.length < 65536) {
      head = Buffer.alloc(4);
      head[0] = 0x80 | opcode;
      head[1] = 126;
      head.writeUInt16BE(payload.length, 2);
    } else {
      head = Buffer.alloc(10);
      head[0] = 0x80 | opcode;
      head[1] = 127;
      head.writeBigUInt64BE(BigInt(payload.length), 2);
    }
    this.socket.write(Buffer.concat([head, payload]));
  }

  _onData(d) {
    this._buf = Buffer.concat([this._buf, d]);
    for (;;) {
      const b = this._buf;
      if (b.length < 2) return;
      const opcode = b[0] & 0x0f;
      let len = b[1] & 0x7f;
      let off = 2;
      if (len === 126) {
        if (b.length < 4) return;
        len = b.readUInt16BE(2);
        off = 4;
      } else if (len === 127) {
        if (b.length < 10) return;
        len = Number(b.readBigUInt64BE(2));
        off = 10;
      }
      const masked = b[1] & 0x80;
      const maskOff = off;
      if (masked) off += 4;
      if (b.length < off + len) return;
      const payload = Buffer.from(b.subarray(off, off + len));
      if (masked) for (let i = 0; i < len; i++) payload[i] ^= b[maskOff + (i % 4)];
      this._buf = b.subarray(off + len);
      if (opcode === 0x1) {
        let msg;
        try {
          msg = JSON.parse(payload.toString());
        } catch {
          continue;
        }
        this.received.push(msg);
        this._waiters = this._waiters.filter((w) => !w(msg));
        this.onMessage?.(msg);
      } else if (opcode === 0x8) {
        if (!this.closed) {
          this._frame(0x8, payload.subarray(0, 2));
          this.socket.end();
        }
      } else if (opcode === 0x9) {
        this._frame(0xa, payload);
      }
    }
  }
}

/**
 * Start the fake server. `onSocket(sock)` is called for every WebSocket; `reject(req)` may return
 * `{status, body}` to refuse an upgrade; `joinCheck(url)` answers /api/join-check.
 */
export async function startFakeServer({ onSocket, reject, joinCheck } = {}) {
  const sockets = [];
  const waiters = [];
  const server = http.createServer((req, res) => {
    const url = new URL(req.url, 'http://x');
    if (url.pathname === '/sdk/traverse.js') {
      res.writeHead(200, { 'content-type': 'text/javascript', 'cache-control': 'no-store' });
      res.end(fs.readFileSync(SDK));
    } else if (url.pathname === '/demo') {
      res.writeHead(200, { 'content-type': 'text/html', 'cache-control': 'no-store' });
      res.end(fs.readFileSync(path.join(WEB, 'demo/index.html')));
    } else if (url.pathname === '/api/join-check') {
      const r = joinCheck ? joinCheck(url) : { status: 200, body: { ok: true } };
      res.writeHead(r.status, { 'content-type': 'application/json' });
      res.end(JSON.stringify(r.body));
    } else {
      res.writeHead(200, { 'content-type': 'text/html' });
      res.end('<!doctype html><title>fake</title>');
    }
  });
  server.on('upgrade', (req, socket) => {
    const refused = reject?.(req);
    if (refused) {
      socket.end(
        `HTTP/1.1 ${refused.status} Refused\r\ncontent-type: application/json\r\nconnection: close\r\n\r\n` +
          JSON.stringify(refused.body),
      );
      return;
    }
    const key = req.headers['sec-websocket-key'];
    const accept = crypto.createHash('sha1').update(key + '258EAFA5-E914-47DA-95CA-C5AB0DC85B11').digest('base64');
    const offered = String(req.headers['sec-websocket-protocol'] || '').split(',').map((p) => p.trim());
    const protocol = offered.includes('traverse.v1') ? 'Sec-WebSocket-Protocol: traverse.v1\r\n' : '';
    socket.write(
      'HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n' +
        `Sec-WebSocket-Accept: ${accept}\r\n${protocol}\r\n`,
    );
    socket.setNoDelay(true);
    const s = new FakeSocket(socket, req.url, req.headers['sec-websocket-protocol']);
    sockets.push(s);
    onSocket?.(s);
    for (const w of waiters.splice(0)) w();
  });
  await new Promise((resolve) => server.listen(0, '127.0.0.1', resolve));
  const { port } = /** @type {import('node:net').AddressInfo} */ (server.address());
  return {
    base: `http://127.0.0.1:${port}`,
    sockets,
    /** Resolves with the n-th socket (0-based) once it exists. */
    async socket(n, timeoutMs = 10000) {
      const deadline = Date.now() + timeoutMs;
      while (sockets.length <= n) {
        if (Date.now() > deadline) throw new Error(`fake server: socket #${n} never came`);
        await new Promise((r) => {
          waiters.push(r);
          setTimeout(r, 100);
        });
      }
      return sockets[n];
    },
    async close() {
      for (const s of sockets) s.destroy();
      server.closeAllConnections?.();
      await new Promise((r) => server.close(r));
    },
  };
}
