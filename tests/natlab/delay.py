#!/usr/bin/env python3
"""A link with a fixed one-way delay, for the NAT lab: every Ethernet frame that arrives on one interface leaves the
other DELAY_MS later, in both directions, in order.

    delay.py IFACE_A IFACE_B DELAY_MS

Run inside a namespace that holds the two interfaces and nothing else (no address, no bridge): it bridges them in
user space. The kernel here has no netem and no fq qdisc (so neither `tc qdisc … netem delay` nor an EDT program
can hold a packet), which is why the lab delays frames with packet sockets instead.

Frames are read and written with a virtio-net header (PACKET_VNET_HDR), so a frame whose checksum the sender left to
offload, or a TCP super-segment, leaves as it came and the kernel finishes it; without the header those frames would
leave with a wrong checksum or too large. Each direction holds at most MAX_QUEUED frames (a router's buffer): a frame
beyond that is dropped. Stops on SIGTERM.
"""
import collections
import select
import signal
import socket
import sys
import time

ETH_P_ALL = 0x0003
SOL_PACKET = 263
PACKET_VNET_HDR = 15
PACKET_OUTGOING = 4
MAX_QUEUED = 20000
# A virtio-net header (10 bytes) and the largest super-segment the kernel hands a packet socket.
MAX_FRAME = 10 + 65536 + 64


def open_iface(name):
    s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETH_P_ALL))
    s.setsockopt(SOL_PACKET, PACKET_VNET_HDR, 1)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
    s.bind((name, 0))
    s.setblocking(False)
    return s


def main():
    if len(sys.argv) != 4:
        sys.exit(__doc__)
    a, b = open_iface(sys.argv[1]), open_iface(sys.argv[2])
    delay = float(sys.argv[3]) / 1000.0
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    print("ready", flush=True)
    # Per direction: (due, frame) in arrival order; the delay is fixed, so the first is always the next due.
    queues = {a: collections.deque(), b: collections.deque()}
    while True:
        now = time.monotonic()
        for out, q in ((b, queues[a]), (a, queues[b])):
            while q and q[0][0] <= now:
                try:
                    out.send(q.popleft()[1])
                except OSError:
                    pass  # a frame the other side cannot take (interface down): lost, as on a wire
        due = [q[0][0] for q in queues.values() if q]
        timeout = max(0.0, min(due) - now) if due else None
        readable, _, _ = select.select([a, b], [], [], timeout)
        now = time.monotonic()
        for s in readable:
            q = queues[s]
            for _ in range(256):
                try:
                    frame, addr = s.recvfrom(MAX_FRAME)
                except BlockingIOError:
                    break
                except OSError as e:
                    # A frame the kernel cannot describe in a virtio-net header (EINVAL: UDP GSO before Linux 6.2)
                    # is dropped by that read, as a link drops what it cannot carry; an interface going down
                    # (ENETDOWN) is a cut link. Neither ends the link: the next frames pass.
                    print(f"delay.py: a frame lost: {e}", file=sys.stderr, flush=True)
                    break
                if addr[2] == PACKET_OUTGOING:
                    continue
                if len(q) < MAX_QUEUED:
                    q.append((now + delay, frame))


if __name__ == "__main__":
    main()
