"""A WebRTC peer that is not a browser, written against the documentation only: aiortc (Python's WebRTC stack) on
Traverse's signaling protocol v1 (docs/protocol.md) and the SDK's peer signals (docs/sdk.md, "Peer connections":
`{"sdp": …}`, `{"candidate": …}`, `{"bye": true}`; the negotiated data channel id 0, label `traverse`).

It joins ROOM, takes the TURN/UDP URL and credential the join hands out, and relays every candidate through TURN
(iceTransportPolicy relay: its traffic goes to the relay on loopback, never to another address of this machine).
With --call PEER it makes the offer; otherwise it answers the first offer. Then, with --send N, it sends N numbered
messages on the data channel and waits for each to come back; every message it receives that is not an echo of its
own it echoes back. It ends with a `bye` (the SDK's `close()`), or when the other side's `bye` arrives.

One JSON line on stdout per event: joined {peerId}, open, echoed {count, inOrder}, bye, error {message}.
Run by tests/browser/aiortc.test.js. Every wait is bounded (--timeout seconds in all).
"""

import argparse
import asyncio
import json
import sys
import time

import websockets
from aiortc import RTCConfiguration, RTCIceServer, RTCPeerConnection, RTCSessionDescription
from aiortc.rtcconfiguration import RTCIceTransportPolicy
from aiortc.sdp import candidate_from_sdp


START = time.monotonic()


def say(event, **fields):
    """One event line; `ms`: since the start, for the test's log."""
    print(json.dumps({"event": event, "ms": round((time.monotonic() - START) * 1000), **fields}), flush=True)


def turn_udp(ice_servers):
    """The first TURN/UDP URL of the join's iceServers, with its credential (aiortc takes one TURN server)."""
    for server in ice_servers:
        urls = server.get("urls", [])
        for url in [urls] if isinstance(urls, str) else urls:
            if url.startswith("turn:") and "transport=tcp" not in url:
                return RTCIceServer(urls=url, username=server["username"], credential=server["credential"])
    raise RuntimeError(f"no turn: UDP URL in {ice_servers}")


class Peer:
    def __init__(self, ws, args):
        self.ws = ws
        self.args = args
        self.seq = 0  # the highest server seq handled, acknowledged in pings
        self.out = 0  # our own signal numbering (docs/protocol.md: `seq` on signal)
        self.pc = None
        self.channel = None
        self.other = args.call
        self.opened = asyncio.Event()
        self.done = asyncio.Event()
        self.echoes = []

    async def send(self, msg):
        await self.ws.send(json.dumps(msg))

    async def signal(self, data):
        self.out += 1
        await self.send({"type": "signal", "to": self.other, "data": data, "seq": self.out})

    def connection(self, ice_servers):
        policy = RTCIceTransportPolicy.RELAY
        pc = RTCPeerConnection(RTCConfiguration(iceServers=[turn_udp(ice_servers)], iceTransportPolicy=policy))
        channel = pc.createDataChannel("traverse", negotiated=True, id=0)

        @channel.on("open")
        def on_open():
            say("open")
            self.opened.set()

        @channel.on("message")
        def on_message(message):
            if isinstance(message, str) and message.startswith("aiortc "):
                self.echoes.append(message)
            else:
                channel.send(message)

        self.pc, self.channel = pc, channel

    async def heartbeat(self, every):
        while True:
            await asyncio.sleep(every)
            await self.send({"type": "ping", "ack": self.seq})

    async def describe(self):
        """Our local description (aiortc gathers every candidate before it returns: no trickle to send)."""
        d = self.pc.localDescription
        await self.signal({"sdp": {"type": d.type, "sdp": d.sdp}})

    async def on_signal(self, sender, data):
        if self.other is None:
            self.other = sender
        if sender != self.other:
            return
        if "sdp" in data:
            sdp = data["sdp"]
            await self.pc.setRemoteDescription(RTCSessionDescription(sdp=sdp["sdp"], type=sdp["type"]))
            if sdp["type"] == "offer":
                await self.pc.setLocalDescription(await self.pc.createAnswer())
                await self.describe()
        elif data.get("candidate"):
            c = data["candidate"]
            text = c.get("candidate") or ""
            if text:  # an empty one is the end of candidates
                candidate = candidate_from_sdp(text.split(":", 1)[1] if text.startswith("candidate:") else text)
                candidate.sdpMid = c.get("sdpMid")
                candidate.sdpMLineIndex = c.get("sdpMLineIndex")
                await self.pc.addIceCandidate(candidate)
        elif data.get("bye"):
            say("bye", by="remote")
            self.done.set()

    async def exchange(self):
        await self.opened.wait()
        for i in range(self.args.send):
            self.channel.send(f"aiortc {i}")
        while len(self.echoes) < self.args.send:
            await asyncio.sleep(0.02)
        await asyncio.sleep(0.2)  # an echo sent twice would arrive now, and make the count wrong
        expected = [f"aiortc {i}" for i in range(self.args.send)]
        say("echoed", count=len(self.echoes), inOrder=self.echoes == expected)
        await self.signal({"bye": True})
        say("bye", by="local")
        self.done.set()

    async def read(self):
        """Handles the server's messages until the socket closes."""
        async for raw in self.ws:
            msg = json.loads(raw)
            self.seq = max(self.seq, msg.get("seq", 0))
            kind = msg.get("type")
            if kind == "joined":
                say("joined", peerId=msg["peerId"])
                self.connection(msg["iceServers"])
                self.spawn(self.heartbeat(msg.get("heartbeatMs", 10000) / 1000))
                if self.args.send:
                    self.spawn(self.exchange())
                if self.other:
                    await self.pc.setLocalDescription(await self.pc.createOffer())
                    await self.describe()
            elif kind == "signal":
                await self.on_signal(msg["from"], msg.get("data") or {})
            elif kind == "error":
                say("error", message=f"{msg.get('code')}: {msg.get('message')}")

    def spawn(self, coro):
        """A task whose failure ends the run with its reason (it would otherwise show as the overall timeout)."""
        task = asyncio.create_task(coro)

        def ended(t):
            if not t.cancelled() and t.exception():
                self.failure = t.exception()
                self.done.set()

        task.add_done_callback(ended)
        self.tasks.append(task)

    async def run(self):
        self.tasks = []
        self.failure = None
        await self.send({"type": "join", "room": self.args.room, "meta": {"agent": "aiortc"}})
        reader = asyncio.create_task(self.read())
        done = asyncio.create_task(self.done.wait())
        await asyncio.wait({reader, done}, return_when=asyncio.FIRST_COMPLETED)
        if reader.done() and not reader.cancelled() and reader.exception():
            raise reader.exception()
        if self.failure:
            raise self.failure
        for t in [reader, done, *self.tasks]:
            t.cancel()
        await self.send({"type": "leave"})
        if self.pc:
            await self.pc.close()


async def main():
    p = argparse.ArgumentParser()
    p.add_argument("--ws", required=True, help="ws://host:port/ws")
    p.add_argument("--room", required=True)
    p.add_argument("--call", help="the peer id to offer to; otherwise answer the first offer")
    p.add_argument("--send", type=int, default=0, help="numbered messages to send, each to be echoed back")
    p.add_argument("--timeout", type=float, default=60)
    args = p.parse_args()
    async with websockets.connect(args.ws, subprotocols=["traverse.v1"], open_timeout=10) as ws:
        await asyncio.wait_for(Peer(ws, args).run(), args.timeout)


if __name__ == "__main__":
    try:
        asyncio.run(main())
    except Exception as e:  # the test reads the reason from stdout
        say("error", message=f"{type(e).__name__}: {e}")
        sys.exit(1)
