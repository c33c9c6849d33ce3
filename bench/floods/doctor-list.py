#!/usr/bin/env python3
"""`traverse doctor` against a hostile ICE server list, loopback only: a signaling endpoint served here answers
/healthz, the WebSocket upgrade's status line and /api/ice-servers with N STUN URLs — the first a STUN server that
answers (a Traverse started here), the rest loopback ports where nothing listens. Prints how long each doctor took
and how many UDP sockets it opened at most, each run bounded by a timeout.

    bench/floods/doctor-list.py [N] [TIMEOUT_S] BINARY...     # e.g. 5000 120 /tmp/traverse-old target/release/traverse
"""
import os
import sys

# This directory holds http.py (the request flood): keep it from shadowing the standard library's `http`.
sys.path = [p for p in sys.path if os.path.abspath(p or ".") != os.path.dirname(os.path.abspath(__file__))]

import http.server  # noqa: E402
import json  # noqa: E402
import socketserver  # noqa: E402
import subprocess  # noqa: E402
import threading  # noqa: E402
import time  # noqa: E402

n = int(sys.argv[1]) if len(sys.argv) > 1 else 5000
limit = float(sys.argv[2]) if len(sys.argv) > 2 else 120.0
binaries = sys.argv[3:] or ["target/release/traverse"]

server = subprocess.Popen(
    [binaries[-1], "serve", "--udp", "127.0.0.1:0", "--tcp", "127.0.0.1:0", "--tls", "127.0.0.1:0",
     "--http", "127.0.0.1:0"],
    stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
stun = None
for line in server.stdout:
    if line.startswith("iceServers: "):
        stun = json.loads(line[len("iceServers: "):])[0]["urls"][0]
        break
urls = [stun] + [f"stun:127.0.0.1:{20000 + i}" for i in range(1, n)]
body = json.dumps({"iceServers": [{"urls": urls}]}).encode()


class Handler(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        if self.path.startswith("/ws"):
            self.send_response(101)
            self.send_header("Upgrade", "websocket")
            self.send_header("Connection", "Upgrade")
            self.end_headers()
            return
        data = body if self.path.startswith("/api/ice-servers") else b"ok"
        self.send_response(200)
        self.send_header("content-length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args):
        pass


class Server(socketserver.ThreadingMixIn, http.server.HTTPServer):
    daemon_threads = True


httpd = Server(("127.0.0.1", 0), Handler)
threading.Thread(target=httpd.serve_forever, daemon=True).start()
url = f"http://127.0.0.1:{httpd.server_address[1]}"
print(f"{n} STUN URLs, the first {stun}; load {os.getloadavg()[0]:.2f}")
try:
    for binary in binaries:
        started = time.monotonic()
        doctor = subprocess.Popen(
            [binary, "doctor", url, "--json", "--https-port", "0", "--http-port", "0", "--timeout-ms", "300",
             "--probe-wait-ms", "300"], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
        most = 0
        while doctor.poll() is None and time.monotonic() - started < limit:
            try:
                most = max(most, len(os.listdir(f"/proc/{doctor.pid}/fd")))
            except OSError:
                pass
            time.sleep(0.05)
        took = time.monotonic() - started
        if doctor.poll() is None:
            doctor.kill()
            doctor.wait()
            print(f"{binary}: still running after {took:.1f} s (killed); at most {most} descriptors")
        else:
            print(f"{binary}: done in {took:.1f} s, exit {doctor.returncode}; at most {most} descriptors")
finally:
    httpd.shutdown()
    server.kill()
    server.wait()
