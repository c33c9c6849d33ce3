import Traverse, { filterIceServers } from '/sdk/traverse.js';
import { certificateRefusal, checkTlsFailures } from '/check/check.js';

const $ = (id) => document.getElementById(id);
const ui = {
  room: $('room'), name: $('name'), transport: $('transport'), camera: $('camera'), join: $('join'),
  leave: $('leave'), status: $('status'), me: $('me'), peers: $('peers'), pair: $('pair'), chat: $('chat'),
  msg: $('msg'), send: $('send'), events: $('events'), localVideo: $('localVideo'), remoteVideo: $('remoteVideo'),
};

// The hash is either a room name (#lobby) or parameters (#room=lobby&transport=tcp&camera=1).
const hash = decodeURIComponent(location.hash.slice(1));
const params = new URLSearchParams(hash.includes('=') ? hash : hash ? `room=${hash}` : '');
ui.room.value = params.get('room') || `room-${Math.random().toString(36).slice(2, 7)}`;
ui.name.value = params.get('name') || `tab-${Math.random().toString(36).slice(2, 5)}`;
if (params.get('transport')) ui.transport.value = params.get('transport');
ui.camera.checked = params.get('camera') === '1';

/** @type {import('/sdk/traverse.js').Room | null} */
let room = null;
/** @type {import('/sdk/traverse.js').Peer | null} */
let peer = null;
let localStream = null;
let pairTimer = null;
let tlsTimer = null;

function logEvent(text) {
  const line = document.createElement('div');
  line.textContent = `${new Date().toLocaleTimeString()} ${text}`;
  ui.events.prepend(line);
}
function chat(text) {
  ui.chat.textContent += `${text}\n`;
  ui.chat.scrollTop = ui.chat.scrollHeight;
}
function setStatus(text) {
  ui.status.textContent = text;
}

/** ICE server choice for the selected path: one TURN URL for a forced relay, everything otherwise. */
function peerOptions() {
  const t = ui.transport.value;
  const opts = { media: localStream || undefined };
  if (t === 'any') return opts;
  const keep = (u) =>
    t === 'tls' ? u.startsWith('turns:') : u.startsWith('turn:') && u.includes(`transport=${t}`);
  // Several TURN/TLS URLs (TLS port, single port): keep the last one, the single port when it is enabled.
  const only = (servers) => {
    const kept = filterIceServers(servers, keep);
    const last = kept.at(-1);
    return last ? [{ ...last, urls: [[].concat(last.urls).at(-1)] }] : [];
  };
  return { ...opts, iceTransportPolicy: 'relay', iceServers: only };
}

function renderPeers() {
  ui.peers.replaceChildren();
  if (!room) return;
  for (const p of room.peers.values()) {
    const li = document.createElement('li');
    li.textContent = `${p.meta?.name ?? '?'} (${p.id}) `;
    const b = document.createElement('button');
    b.textContent = 'Connect';
    b.onclick = () => usePeer(room.connect(p.id, peerOptions()));
    li.append(b);
    ui.peers.append(li);
  }
}

/**
 * One end of the pair as nodes: a badge and text. Built with `textContent`, never markup: the remote end's address
 * comes from what the other peer signaled.
 * @returns {(Node | string)[]}
 */
function describe(c) {
  if (!c) return ['?'];
  const proto = c.candidateType === 'relay' && c.relayProtocol ? `TURN/${c.relayProtocol}` : c.protocol;
  const badge = document.createElement('span');
  badge.className = `badge ${/^[a-z]+$/.test(c.candidateType) ? c.candidateType : ''}`;
  badge.textContent = String(c.candidateType);
  return [badge, ` ${proto} ${c.address ?? ''}:${c.port ?? ''}`];
}

async function showPair() {
  if (!peer) return;
  const pair = await peer.getSelectedPair().catch(() => null);
  if (!pair) return;
  ui.pair.replaceChildren(
    ...describe(pair.local),
    ' ⇄ ',
    ...describe(pair.remote),
    pair.rtt !== undefined ? ` · rtt ${Math.round(pair.rtt * 1000)} ms` : '',
  );
  ui.pair.dataset.local = `${pair.local?.candidateType}/${pair.local?.relayProtocol ?? pair.local?.protocol}`;
}

/**
 * A relay over TLS that never connects: ask the server whether this browser refused its certificate (the page alone
 * cannot tell that from a blocked port), and say so.
 */
async function explainTls() {
  if (ui.pair.dataset.local) return;
  const refused = certificateRefusal(await checkTlsFailures());
  if (!refused) return;
  ui.pair.textContent = 'none: this browser refused the server\'s TLS certificate (TURN over TLS cannot connect)';
  ui.pair.dataset.refused = refused.reason;
  logEvent(`TURN over TLS: the browser refused the server's certificate — ${refused.message}`);
}

/** @param {import('/sdk/traverse.js').Peer} p */
function usePeer(p) {
  if (peer === p) return;
  peer = p;
  clearTimeout(tlsTimer);
  tlsTimer = setTimeout(explainTls, 8000);
  const who = room.peers.get(p.peerId)?.meta?.name ?? p.peerId;
  logEvent(`peer connection with ${who} (${p.polite ? 'polite' : 'impolite'})`);
  p.on('state', ({ connectionState }) => {
    setStatus(`joined · connection ${connectionState}`);
    if (connectionState === 'connected') showPair();
    if (connectionState === 'failed') explainTls();
  });
  p.on('open', () => {
    ui.msg.disabled = ui.send.disabled = false;
    chat(`— data channel open with ${who}`);
    showPair();
  });
  p.on('message', ({ data }) => chat(`${who}: ${data}`));
  p.on('close', () => {
    chat(`— connection with ${who} closed`);
    ui.msg.disabled = ui.send.disabled = true;
    if (peer === p) peer = null;
  });
  p.on('track', ({ streams }) => {
    if (!streams[0]) return;
    ui.remoteVideo.srcObject = streams[0];
    ui.remoteVideo.hidden = false;
  });
  clearInterval(pairTimer);
  pairTimer = setInterval(showPair, 2000);
}

async function join() {
  ui.join.disabled = true;
  location.hash = new URLSearchParams({ room: ui.room.value, transport: ui.transport.value }).toString();
  try {
    if (ui.camera.checked && !localStream) {
      localStream = await navigator.mediaDevices.getUserMedia({ video: true, audio: false });
      ui.localVideo.srcObject = localStream;
      ui.localVideo.hidden = false;
    }
    setStatus('joining…');
    room = await Traverse.connect({
      room: ui.room.value,
      meta: { name: ui.name.value },
      peerOptions: () => peerOptions(),
    });
  } catch (err) {
    setStatus(`join failed: ${err.code ?? ''} ${err.message}`);
    ui.join.disabled = false;
    return;
  }
  window.traverseRoom = room; // for the console
  ui.leave.disabled = false;
  setStatus('joined');
  ui.me.textContent = `as ${ui.name.value} (${room.peerId})`;
  logEvent(`joined ${room.room} as ${room.peerId}; ${room.peers.size} other peer(s)`);
  renderPeers();
  room.on('peer-joined', ({ peer: p }) => {
    logEvent(`${p.meta?.name ?? p.id} joined`);
    renderPeers();
  });
  room.on('peer-left', ({ peerId }) => {
    logEvent(`${peerId} left`);
    renderPeers();
  });
  room.on('peer-connection', ({ peer: p }) => usePeer(p));
  room.on('reconnecting', ({ attempt, delayMs, code }) => {
    setStatus(`reconnecting (attempt ${attempt}, in ${delayMs} ms, close ${code})`);
    logEvent(`signaling socket lost (${code}); reconnecting`);
  });
  room.on('resumed', ({ replayed }) => {
    setStatus('joined');
    logEvent(`resumed; ${replayed} message(s) replayed`);
  });
  room.on('joined', ({ rejoined, peerId }) => rejoined && logEvent(`joined again as ${peerId}`));
  room.on('error', ({ code, message }) => logEvent(`error ${code}: ${message}`));
  room.on('closed', ({ code, reason }) => {
    setStatus(`closed (${code} ${reason})`);
    ui.join.disabled = false;
    ui.leave.disabled = true;
  });
  // The newcomer calls the peer that was there first; the other tab answers by itself.
  const first = room.peers.keys().next();
  if (!first.done) usePeer(room.connect(first.value, peerOptions()));
}

ui.join.onclick = join;
ui.leave.onclick = async () => {
  clearInterval(pairTimer);
  await room?.leave();
  room = null;
  peer = null;
  renderPeers();
  ui.pair.textContent = 'none yet';
};
ui.send.onclick = () => {
  const text = ui.msg.value.trim();
  if (!text || !peer) return;
  try {
    peer.send(text);
    chat(`me: ${text}`);
    ui.msg.value = '';
  } catch (err) {
    chat(`— not sent: ${err.message}`);
  }
};
ui.msg.addEventListener('keydown', (e) => e.key === 'Enter' && ui.send.onclick());

if (params.get('room')) join();
