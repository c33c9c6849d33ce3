#!/usr/bin/env python3
"""What one source can make the server do over HTTP (docs/benchmarks.md, "what one source can still make the server
do"): pipelines GET PATH, 64 requests a write, on CONNS keep-alive connections from one address for SECONDS (bounded),
reconnecting whenever the server closes one; prints answers a second by status, and reconnections a second.
  python3 bench/floods/http.py 127.0.0.1 PORT /healthz 4 10 ["If-None-Match: \"...\""]
Loopback only: the host is the caller's.
"""
import socket, sys, time, selectors
import ipaddress
host, port, path, conns, secs = sys.argv[1], int(sys.argv[2]), sys.argv[3], int(sys.argv[4]), float(sys.argv[5])
# The network rule: loopback only.
if not ipaddress.ip_address(socket.gethostbyname(host)).is_loopback:
    sys.exit(f"{host} is not a loopback address")
extra = sys.argv[6] + "\r\n" if len(sys.argv) > 6 else ""
req = f"GET {path} HTTP/1.1\r\nHost: x\r\n{extra}\r\n".encode() * 64
sel = selectors.DefaultSelector()
def connect():
    try:
        s = socket.create_connection((host, port), timeout=1); s.setblocking(False)
        sel.register(s, selectors.EVENT_READ | selectors.EVENT_WRITE)
    except OSError:
        pass
for _ in range(conns): connect()
stat = {}; reconnects = 0
end = time.time() + secs
while time.time() < end:
    for key, ev in sel.select(0.05):
        s = key.fileobj
        try:
            if ev & selectors.EVENT_WRITE:
                s.send(req)
            if ev & selectors.EVENT_READ:
                d = s.recv(1 << 20)
                if not d:
                    raise ConnectionResetError
                for a in d.split(b"HTTP/1.1 ")[1:]:
                    c = a[:3].decode(errors="replace"); stat[c] = stat.get(c, 0) + 1
        except BlockingIOError:
            pass
        except OSError:
            sel.unregister(s); s.close(); reconnects += 1; connect()
    while len(sel.get_map()) < conns and time.time() < end:
        reconnects += 1; connect()
print({k: round(v / secs) for k, v in stat.items()}, "answers/s;", round(reconnects / secs), "reconnects/s")
