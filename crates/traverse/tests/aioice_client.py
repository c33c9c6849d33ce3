"""aioice's TURN client against a running Traverse: allocate, relay to a local UDP echo socket, get the data back.

Run by tests/interop.rs; prints `OK transport=... relayed=... echoed=N` and exits 0 on success. Every wait is
bounded. Traffic stays on loopback: the echo socket is 127.0.0.1.
"""

import argparse
import asyncio
import ssl
import sys

from aioice import turn


class Echo(asyncio.DatagramProtocol):
    """Echoes every datagram and records who sent it (the relay's address)."""

    def __init__(self):
        self.senders = set()
        self.transport = None

    def connection_made(self, transport):
        self.transport = transport

    def datagram_received(self, data, addr):
        self.senders.add(addr)
        self.transport.sendto(data, addr)


class Receiver(asyncio.DatagramProtocol):
    def __init__(self):
        self.queue = asyncio.Queue()

    def connection_made(self, transport):
        pass

    def datagram_received(self, data, addr):
        self.queue.put_nowait((data, addr))

    def error_received(self, exc):
        self.queue.put_nowait((exc, None))

    def connection_lost(self, exc):
        pass


async def run(args):
    loop = asyncio.get_running_loop()
    host, port = args.server.rsplit(":", 1)
    server = (host, int(port))

    echo_transport, echo = await loop.create_datagram_endpoint(Echo, local_addr=("127.0.0.1", 0))
    echo_addr = echo_transport.get_extra_info("sockname")[:2]

    kwargs = {}
    if args.transport == "tls":
        # Traverse runs on a generated self-signed certificate here.
        context = ssl.create_default_context()
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
        kwargs["ssl"] = context
    transport, receiver = await asyncio.wait_for(
        turn.create_turn_endpoint(
            Receiver,
            server_addr=server,
            username=args.user,
            password=args.password,
            transport="udp" if args.transport == "udp" else "tcp",
            **kwargs,
        ),
        timeout=30,
    )
    relayed = transport.get_extra_info("sockname")
    if relayed is None:
        raise SystemExit("no relayed address")

    echoed = 0
    resends = 0
    for i in range(args.count):
        payload = f"aioice {args.transport} message {i} ".encode() * 4
        for attempt in range(3):
            transport.sendto(payload, echo_addr)
            try:
                data, addr = await asyncio.wait_for(receiver.queue.get(), timeout=5)
            except asyncio.TimeoutError:
                resends += 1
                continue
            if isinstance(data, Exception):
                raise SystemExit(f"send failed: {data!r}")
            if data != payload:
                raise SystemExit(f"message {i}: got {data!r}, sent {payload!r}")
            if tuple(addr[:2]) != tuple(echo_addr):
                raise SystemExit(f"message {i}: came from {addr}, expected {echo_addr}")
            echoed += 1
            break
        else:
            raise SystemExit(f"message {i}: no echo after 3 attempts")

    # The echo socket must have seen only the relayed address (the client's own address never leaks to a peer).
    relayed_seen = {tuple(a[:2]) for a in echo.senders}
    if relayed_seen != {tuple(relayed[:2])}:
        raise SystemExit(f"echo saw {relayed_seen}, relayed address is {relayed}")

    transport.close()
    await asyncio.sleep(0.5)
    echo_transport.close()
    print(f"OK transport={args.transport} relayed={relayed[0]}:{relayed[1]} echoed={echoed} resends={resends}")


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--server", required=True)
    parser.add_argument("--transport", choices=["udp", "tcp", "tls"], default="udp")
    parser.add_argument("--user", required=True)
    parser.add_argument("--password", required=True)
    parser.add_argument("--count", type=int, default=20)
    args = parser.parse_args()
    try:
        asyncio.run(asyncio.wait_for(run(args), timeout=100))
    except asyncio.TimeoutError:
        print("FAIL: timed out", file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main()
