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
 * A page joined to `roomName` on `server`. In the page: `T` (the SDK module), `room`, `rec` (every event, in order),
 * `keep` (the ICE URL filter built from `want`, or null).
 * @param {{newPage: () => Promise<import('playwright-core').Page>}} browser
 * @param {{base: string}} server
 * @param {string} roomName
 * @param {{want?: object, relay?: boolean, meta?: any, echo?: boolean}} [opts]
 */
export async function roomPage(browser, server, roomName, opts = {}) {
  const page = await browser.newPage();
  await page.goto(`${server.base}/healthz`);
  // Defined by the driver, not by page code: the server's Content-Security-Policy forbids `new Function` in the page.
  await page.evaluate(`window.urlMatches = ${urlMatches.toString()}`);
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
        window.room = await T.connect({ room: roomName, meta: opts.meta, peerOptions });
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
