// Pages that load the SDK from the real server (https on the single port) and join a room over wss.
import { within } from './harness.js';

/**
 * Which ICE server URL to keep, e.g. `{scheme: 'turns', transport: 'tcp', port: 443}`. Runs in the page too (it is
 * passed as source), so it must stay self-contained.
 */
export function urlMatches(url, want) {
  const colon = url.indexOf(':');
  const scheme = url.slice(0, colon);
  const [hostport, query = ''] = url.slice(colon + 1).split('?');
  const port = Number(hostport.slice(hostport.lastIndexOf(':') + 1));
  const transport = new URLSearchParams(query).get('transport') || (scheme === 'turns' ? 'tcp' : 'udp');
  return (
    scheme === want.scheme &&
    (want.transport === undefined || transport === want.transport) &&
    (want.port === undefined || port === want.port)
  );
}

/**
 * A network between the page and the server that fails on cue, for tests of what the SDK does about it: it replaces
 * the page's `WebSocket` with a wrapper around the real one (install it before the SDK opens its first socket) and
 * defines `net` in the page:
 * - `net.cut(holdMs)` drops every socket as a network failure would: the page sees close 1006 at once, the server
 *   sees the socket go (close 4999, no `leave`). For `holdMs` the network stays down: sockets opened meanwhile
 *   connect when it is back.
 * - `net.silence(ms, holdMs)`: the path dies without the page knowing: for `ms` what the page writes is lost and
 *   nothing is read; then `net.cut(holdMs)`.
 * - `net.swallowed`: numbered messages (`signal`, `broadcast` with a client `seq`) lost that way; `net.lastSeq`: the
 *   highest client `seq` that reached the server; `net.current`: the newest socket (to write raw frames);
 *   `net.tamper`: a function applied to every frame the page writes.
 * Runs in the page (passed as source), so it must stay self-contained.
 */
export function installNetwork() {
  const Native = window.WebSocket;
  const net = { down: false, waiting: [], sockets: new Set(), swallowed: 0, lastSeq: 0, current: null, tamper: null };
  class NetSocket extends EventTarget {
    constructor(url, protocols) {
      super();
      this.url = String(url);
      this._protocols = protocols;
      this._native = null;
      this._cut = false;
      this._silent = false;
      net.sockets.add(this);
      net.current = this;
      if (net.down) net.waiting.push(() => this._connect());
      else this._connect();
    }
    get readyState() {
      if (this._cut) return 3;
      return this._native ? this._native.readyState : 0;
    }
    get protocol() {
      return this._native ? this._native.protocol : '';
    }
    send(text) {
      if (this._cut) return;
      if (!this._native || this._native.readyState === 0) throw new DOMException('still connecting', 'InvalidStateError');
      const msg = JSON.parse(text);
      const numbered = typeof msg.seq === 'number' && (msg.type === 'signal' || msg.type === 'broadcast');
      if (this._silent) {
        if (numbered) net.swallowed++;
        return;
      }
      if (numbered) net.lastSeq = Math.max(net.lastSeq, msg.seq);
      this._native.send(net.tamper ? net.tamper(text) : text);
    }
    close(code, reason) {
      if (this._native) {
        this._native.close(code, reason);
        return;
      }
      if (this._cut) return;
      this._cut = true;
      net.sockets.delete(this);
      setTimeout(() => this.dispatchEvent(new CloseEvent('close', { code: 1006, reason: '', wasClean: false })), 0);
    }
    _connect() {
      if (this._cut) return;
      const ws = new Native(this.url, this._protocols);
      this._native = ws;
      ws.onopen = () => this.dispatchEvent(new Event('open'));
      ws.onmessage = (e) => {
        if (!this._silent) this.dispatchEvent(new MessageEvent('message', { data: e.data }));
      };
      ws.onerror = () => {
        if (!this._cut) this.dispatchEvent(new Event('error'));
      };
      ws.onclose = (e) => {
        net.sockets.delete(this);
        if (!this._cut) this.dispatchEvent(new CloseEvent('close', { code: e.code, reason: e.reason, wasClean: e.wasClean }));
      };
    }
    _drop() {
      if (this._cut) return;
      this._cut = true;
      net.sockets.delete(this);
      try {
        if (this._native) this._native.close(4999, 'network cut');
      } catch {
        /* already closed */
      }
      this.dispatchEvent(new CloseEvent('close', { code: 1006, reason: '', wasClean: false }));
    }
  }
  Object.assign(NetSocket, { CONNECTING: 0, OPEN: 1, CLOSING: 2, CLOSED: 3 });
  net.cut = (holdMs = 0) => {
    if (holdMs > 0) {
      net.down = true;
      setTimeout(() => {
        net.down = false;
        const waiting = net.waiting;
        net.waiting = [];
        for (const connect of waiting) connect();
      }, holdMs);
    }
    const cut = net.sockets.size;
    for (const s of [...net.sockets]) s._drop();
    return cut;
  };
  net.silence = (ms, holdMs = 0) => {
    for (const s of net.sockets) s._silent = true;
    setTimeout(() => net.cut(holdMs), ms);
    return net.sockets.size;
  };
  window.WebSocket = NetSocket;
  window.net = net;
}

/**
 * A page joined to `roomName` on `server`. In the page: `T` (the SDK module), `room`, `rec` (every event, in order),
 * `keep` (the ICE URL filter built from `want`, or null); with `net`, the failing network of `installNetwork`.
 * @param {{newPage: () => Promise<import('playwright-core').Page>}} browser
 * @param {{base: string}} server
 * @param {string} roomName
 * @param {{want?: object, relay?: boolean, meta?: any, echo?: boolean, net?: boolean, connect?: object}} [opts]
 *   `connect`: more options for `Traverse.connect` (e.g. `{outcomeTimeoutMs: 8000}`)
 */
export async function roomPage(browser, server, roomName, opts = {}) {
  const page = await browser.newPage();
  await page.goto(`${server.base}/healthz`);
  // Defined by the driver, not by page code: the server's Content-Security-Policy forbids `new Function` in the page.
  await page.evaluate(`window.urlMatches = ${urlMatches.toString()}`);
  if (opts.net) await page.evaluate(`(${installNetwork.toString()})()`);
  const info = await within(
    20000,
    page.evaluate(
      async ({ roomName, opts }) => {
        window.T = await import('/sdk/traverse.js');
        window.keep = opts.want ? (servers) => T.filterIceServers(servers, (u) => urlMatches(u, opts.want)) : null;
        const peerOptions = () => ({
          ...(opts.relay ? { iceTransportPolicy: 'relay' } : {}),
          ...(window.keep ? { iceServers: window.keep } : {}),
        });
        window.peerOptions = peerOptions;
        window.rec = [];
        window.room = await T.connect({ room: roomName, meta: opts.meta, peerOptions, ...(opts.connect || {}) });
        for (const name of ['joined', 'peer-joined', 'peer-left', 'signal', 'broadcast', 'undeliverable', 'error',
          'reconnecting', 'resumed', 'closed']) {
          room.on(name, (d) => {
            if (name === 'signal' && d.internal) return;
            rec.push({ name, ...JSON.parse(JSON.stringify(d ?? {})) });
          });
        }
        room.on('peer-connection', ({ peer }) => {
          window.peer = peer;
          if (opts.echo) peer.on('message', ({ data }) => peer.send(data));
        });
        return { peerId: room.peerId, peers: [...room.peers.keys()], iceServers: room.iceServers, url: room.url };
      },
      { roomName, opts },
    ),
    `join ${roomName}`,
  );
  return { page, ...info };
}

/** Events recorded in the page, optionally of one name. */
export function recorded(page, name) {
  return page.evaluate((n) => rec.filter((e) => !n || e.name === n), name);
}
