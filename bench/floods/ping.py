#!/usr/bin/env python3
"""One WebSocket from one address streaming empty masked pings for SECONDS (bounded) at a Traverse signaling port;
prints how many pings the server read and the bytes it sent back (docs/benchmarks.md).
  python3 bench/floods/ping.py 127.0.0.1 PORT 5
"""
import socket, sys, time, base64, os, select
import ipaddress
host, port, secs = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
# The network rule: loopback only.
if not ipaddress.ip_address(socket.gethostbyname(host)).is_loopback:
    sys.exit(f"{host} is not a loopback address")
s = socket.create_connection((host, port))
key = base64.b64encode(os.urandom(16)).decode()
s.sendall(f"GET /ws HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n".encode())
head = b""
while b"\r\n\r\n" not in head:
    head += s.recv(4096)
assert b" 101 " in head.split(b"\r\n")[0], head
rest = head.split(b"\r\n\r\n", 1)[1]
chunk = b"\x89\x80\x00\x00\x00\x00" * 10000
s.setblocking(False)
sent = 0; got = len(rest); end = time.time() + secs; t0 = time.time()
while time.time() < end:
    r, w, _ = select.select([s], [s], [], 0.1)
    if r:
        d = s.recv(1 << 20)
        if not d: print(f"closed by server after {time.time() - t0:.3f} s"); break
        got += len(d)
    if w:
        try: sent += s.send(chunk)
        except BlockingIOError: pass
        except OSError as e: print(f"write failed after {time.time() - t0:.3f} s: {e}"); break
print(f"after {time.time() - end + secs:.2f} s: pings sent {sent // 6 / secs:.0f}/s, bytes back {got / secs:.0f}/s")
