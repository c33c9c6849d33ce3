#!/usr/bin/env bash
# Report reads while the cluster's Redis stops answering: a redis-server on loopback is stopped (SIGSTOP, so its
# socket stays open and every call waits for its timeout), then 16 parallel `GET /api/reports/<unknown id>` go to a
# `traverse serve --redis` node. Prints their status codes, the wall time they took together, and how many warnings
# the node logged. Loopback only; both processes are this script's own, stopped by PID.
#
#   bench/floods/report-reads.sh [TRAVERSE_BINARY]      # default target/release/traverse
set -u
BIN=${1:-$(cd "$(dirname "$0")/../.." && pwd)/target/release/traverse}
command -v redis-server >/dev/null || { echo "needs redis-server"; exit 1; }
PORT=$((20000 + RANDOM % 1000))
HTTP=$((21000 + RANDOM % 1000))
LOG=$(mktemp)
DATA=$(mktemp -d)
redis-server --port "$PORT" --bind 127.0.0.1 --save "" --appendonly no >/dev/null 2>&1 &
RPID=$!
sleep 0.5
"$BIN" serve --workers 1 --udp 127.0.0.1:0 --tcp 127.0.0.1:0 --tls 127.0.0.1:0 --http "127.0.0.1:$HTTP" \
  --redis "redis://127.0.0.1:$PORT" --set "web.data_dir=$DATA" >"$LOG" 2>&1 &
TPID=$!
trap 'kill -CONT $RPID 2>/dev/null; kill $TPID $RPID 2>/dev/null; wait 2>/dev/null; rm -rf "$DATA" "$LOG"' EXIT
for _ in $(seq 50); do curl -s -o /dev/null "http://127.0.0.1:$HTTP/healthz" && break; sleep 0.2; done
kill -STOP $RPID
START=$(date +%s.%N)
READS=()
for i in $(seq 1 16); do
  curl -s -m 60 -o /dev/null -w "%{http_code} " "http://127.0.0.1:$HTTP/api/reports/$(printf '%032x' "$i")" &
  READS+=($!)
done
wait "${READS[@]}"
END=$(date +%s.%N)
echo
echo "16 reads: $(echo "$END - $START" | bc) s; warnings: $(grep -c "report store's Redis does not answer" "$LOG")"
