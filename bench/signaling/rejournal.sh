#!/usr/bin/env bash
# The cost of writing the session journal again after Redis restarted empty (docs/benchmarks.md, "signaling
# delivery"): one `--redis` node with one hub task, PAIRS rooms of two sessions each holding KEPT unacknowledged
# frames; Redis is restarted empty; rejournal.mjs reports the node's write (sessions, frames, milliseconds) and a
# probe pair's worst one-way latency around it. Loopback only; processes stopped by PID.
#
#   bench/signaling/rejournal.sh                       # 2 000 pairs, 10 kept frames each, the release build
#   PAIRS=4000 KEPT=20 TRAVERSE=/path/to/traverse bench/signaling/rejournal.sh
set -euo pipefail
cd "$(dirname "$0")"
ROOT=$(cd ../.. && pwd)
PAIRS="${PAIRS:-2000}"
KEPT="${KEPT:-10}"
TRAVERSE="${TRAVERSE:-$ROOT/target/release/traverse}"
command -v redis-server >/dev/null || { echo "needs redis-server (Debian package redis-server)"; exit 1; }
[ -d node_modules/ws ] || npm ci --no-audit --no-fund --loglevel=error
ulimit -n "$(ulimit -Hn)"

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
DIR=$(mktemp -d /tmp/traverse-rejournal.XXXXXX)
REDIS_PORT=$(free_port)
HTTP_PORT=$(free_port)
start_redis() {
  redis-server --port "$REDIS_PORT" --bind 127.0.0.1 --save "" --appendonly no >"$DIR/redis.log" 2>&1 &
  echo $! >"$DIR/redis.pid"
}
cleanup() {
  [ -n "${NODE:-}" ] && kill "$NODE" 2>/dev/null || true
  [ -f "$DIR/redis.pid" ] && kill "$(cat "$DIR/redis.pid")" 2>/dev/null || true
  rm -rf "$DIR"
}
trap cleanup EXIT
start_redis
sleep 0.5
"$TRAVERSE" serve --udp off --tcp off --tls off --http "127.0.0.1:$HTTP_PORT" --redis "redis://127.0.0.1:$REDIS_PORT" \
  --set cluster.hub_shards=1 --set signal.max_connections_per_ip=100000 --set signal.messages_per_second=1000000 \
  --set signal.burst=1000000 --set signal.delivered_bytes_per_second=0 --set signal.max_rooms=1000000 \
  --set signal.max_source_bytes=1073741824 --set signal.max_total_bytes=1073741824 \
  --set limits.max_connections=100000 --set limits.max_connections_per_source=0 \
  --set limits.connections_per_second_per_source=0 --set limits.requests_per_second_per_source=0 \
  >"$DIR/node.out" 2>"$DIR/node.log" &
NODE=$!
for _ in $(seq 100); do grep -q "connected to Redis" "$DIR/node.log" 2>/dev/null && break; sleep 0.1; done
echo "load average: $(cut -d' ' -f1-3 /proc/loadavg)"
RESTART="kill \$(cat $DIR/redis.pid); while kill -0 \$(cat $DIR/redis.pid) 2>/dev/null; do sleep 0.05; done; \
redis-server --port $REDIS_PORT --bind 127.0.0.1 --save '' --appendonly no >>$DIR/redis.log 2>&1 & echo \$! >$DIR/redis.pid"
node rejournal.mjs --url "ws://127.0.0.1:$HTTP_PORT" --log "$DIR/node.log" --restart "$RESTART" \
  --pairs "$PAIRS" --kept "$KEPT"
