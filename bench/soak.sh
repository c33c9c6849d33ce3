#!/usr/bin/env bash
# Soak benchmark (issue 7): does the server stay flat under a long, mixed load, and give back what it took?
#
#   sudo bench/soak.sh                      # 10 minutes of load + 60 s after; ~12 minutes with the build
#   DURATION=60 WARMUP=20 sudo bench/soak.sh   # a quick look
#
# Environment: DURATION (s of load, default 600), WARMUP (s, default DURATION/5), AFTER (s sampled after the load,
# default 60), INTERVAL (s between samples, 10), ALLOCATIONS (5000), SOCKETS (2000), CHURN (allocations and sockets
# opened per second each, 20; or CHURN_ALLOCATIONS and CHURN_SOCKETS apart), CHURN_HOLD (s each churned item is
# held, 10), STREAM_RATE (ChannelData/s, 2000), WORKERS (server worker threads, 0 = one per core), CYCLES (1: the
# whole load and its after-phase this many times against the same server, to tell a high-water mark that the next
# load reuses from a leak), NO_BUILD=1 to use the existing release binaries.
#
# What it does: creates a network namespace `trvsoak-peer` joined to the host by a veth pair (198.51.100.201/30 on
# the host side, 198.51.100.202 inside — a documentation range; a /30, so it does not clash with bench/relay.sh's
# /24), starts coturn's echo peer `turnutils_peer` in it, starts a release `traverse serve` on 198.51.100.201 (TURN
# on UDP 3478, signaling on HTTP 8080) with its per-source and per-user limits raised out of the way (every client
# comes from one address here), and runs `traverse-soak` (crates/loadgen) against it:
# - ALLOCATIONS allocations held with Refreshes (the server's default lifetime is cut to 120 s so that they must be
#   refreshed; every 60 s) and a ChannelBind each (renewed every 240 s, within the 300 s of a permission);
# - SOCKETS idle signaling WebSockets joined two to a room and answering heartbeats;
# - churn: CHURN_ALLOCATIONS allocations and CHURN_SOCKETS sockets a second, each held CHURN_HOLD s and closed
#   properly (Refresh with LIFETIME 0; `leave`), the sockets joining the idle rooms;
# - a relay stream of STREAM_RATE ChannelData packets a second over 20 allocations, echoed by the peer.
# The nonce lifetime is cut to 300 s so that the clients also meet 438 Stale Nonce. Every INTERVAL seconds it samples
# the server's RSS (VmRSS), open descriptors (/proc/PID/fd) and CPU, through the load and for AFTER seconds after
# everything is closed, and prints a table and a verdict (bench/out/soak-N.txt). Everything is bounded in time and
# count; the namespace and the processes the script started are removed on exit.
set -euo pipefail
cd "$(dirname "$0")/.."
DURATION="${DURATION:-600}"
WARMUP="${WARMUP:-$((DURATION / 5))}"
AFTER="${AFTER:-60}"
INTERVAL="${INTERVAL:-10}"
ALLOCATIONS="${ALLOCATIONS:-5000}"
SOCKETS="${SOCKETS:-2000}"
CHURN="${CHURN:-20}"
CHURN_ALLOCATIONS="${CHURN_ALLOCATIONS:-$CHURN}"
CHURN_SOCKETS="${CHURN_SOCKETS:-$CHURN}"
CHURN_HOLD="${CHURN_HOLD:-10}"
STREAM_RATE="${STREAM_RATE:-2000}"
WORKERS="${WORKERS:-0}"
CYCLES="${CYCLES:-1}"
NS=trvsoak-peer
HOST_IF=trvs0
PEER_IF=trvs1
HOST_IP=198.51.100.201
PEER_IP=198.51.100.202
PEER_PORT=3480
HTTP_PORT=8080
USER_NAME=soak
PASSWORD=soak
OUT=bench/out
mkdir -p "$OUT"

[ "$(id -u)" = 0 ] || { echo "bench/soak.sh needs root (network namespace)"; exit 1; }
for tool in turnutils_peer ip ss; do
  command -v "$tool" >/dev/null || { echo "missing $tool: apt-get install coturn iproute2"; exit 1; }
done
# The load generator holds ~7 500 descriptors (one UDP socket per allocation, one TCP socket per WebSocket), and the
# server as many again; both inherit this.
ulimit -n "$(ulimit -Hn)"
: >"$OUT/soak-loadgen.err"
[ "$(ulimit -n)" -ge 16000 ] || { echo "need a descriptor limit of 16000 or more (hard limit: $(ulimit -Hn))"; exit 1; }

pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  sleep 0.5
  for p in "${pids[@]}"; do kill -9 "$p" 2>/dev/null || true; done
  ip netns del "$NS" 2>/dev/null || true
  ip link del "$HOST_IF" 2>/dev/null || true
}
trap cleanup EXIT
trap 'exit 130' INT TERM

[ -n "${NO_BUILD:-}" ] || cargo build --release -q -p traverse -p traverse-loadgen
TRAVERSE=target/release/traverse
SOAK=target/release/traverse-soak

# The peer's namespace, reached over a veth pair.
ip netns del "$NS" 2>/dev/null || true
ip link del "$HOST_IF" 2>/dev/null || true
ip netns add "$NS"
ip link add "$HOST_IF" type veth peer name "$PEER_IF"
ip link set "$PEER_IF" netns "$NS"
ip addr add "$HOST_IP/30" dev "$HOST_IF"
ip link set "$HOST_IF" up
ip netns exec "$NS" ip addr add "$PEER_IP/30" dev "$PEER_IF"
ip netns exec "$NS" ip link set "$PEER_IF" up
ip netns exec "$NS" ip link set lo up
ip netns exec "$NS" turnutils_peer -L "$PEER_IP" -p "$PEER_PORT" >/dev/null 2>&1 &
pids+=($!)
sleep 0.5

# Limits raised so that the load itself is not refused: every client here comes from $HOST_IP, one source and
# one user. The abuse limits stay on otherwise (message rates, budgets in bytes, the reflection guard).
"$TRAVERSE" serve --udp "$HOST_IP:3478" --tcp "$HOST_IP:3478" --tls "$HOST_IP:5349" --http "$HOST_IP:$HTTP_PORT" \
  --user "$USER_NAME:$PASSWORD" --realm soak --workers "$WORKERS" --allow-peer "$PEER_IP/32" \
  --set limits.max_allocations=20000 --set limits.max_allocations_per_user=0 \
  --set limits.max_allocations_per_source=0 --set limits.allocations_per_second_per_source=0 --set limits.max_connections=20000 \
  --set limits.max_connections_per_source=0 --set limits.connections_per_second_per_source=0 --set limits.requests_per_second_per_source=0 --set signal.max_connections_per_ip=100000 \
  --set signal.max_rooms=100000 --set limits.default_lifetime=120 --set auth.nonce_lifetime=300 \
  --log-level warn >"$OUT/soak-traverse.log" 2>&1 &
SERVER_PID=$!
pids+=("$SERVER_PID")
for _ in $(seq 100); do
  ss -lnt | grep -q "$HOST_IP:$HTTP_PORT" && ss -lnu | grep -q "$HOST_IP:3478" && break
  sleep 0.1
done
ss -lnt | grep -q "$HOST_IP:$HTTP_PORT" || { echo "server did not start:"; cat "$OUT/soak-traverse.log"; exit 1; }
sleep 2   # let the server settle before the first sample

echo "== $(date -u '+%F %T') UTC; machine: $(nproc) cores, load average $(cut -d' ' -f1-3 /proc/loadavg)"
if rev=$(git rev-parse --short HEAD 2>/dev/null); then
  git diff --quiet HEAD -- crates || rev="$rev+changes"
else
  rev="(not a git tree)"
fi
echo "== traverse $rev, pid $SERVER_PID;" \
  "DURATION=$DURATION WARMUP=$WARMUP AFTER=$AFTER ALLOCATIONS=$ALLOCATIONS SOCKETS=$SOCKETS" \
  "CHURN_ALLOCATIONS=$CHURN_ALLOCATIONS/s CHURN_SOCKETS=$CHURN_SOCKETS/s CHURN_HOLD=$CHURN_HOLD" \
  "STREAM_RATE=$STREAM_RATE CYCLES=$CYCLES"
# Bounded: each cycle ends by itself after DURATION + AFTER seconds; `timeout` stops it two minutes after that.
status=0
for cycle in $(seq "$CYCLES"); do
  [ "$CYCLES" = 1 ] || echo "== cycle $cycle of $CYCLES"
  timeout $((DURATION + AFTER + 120)) "$SOAK" --pid "$SERVER_PID" --turn "$HOST_IP:3478" \
    --peer "$PEER_IP:$PEER_PORT" --ws "$HOST_IP:$HTTP_PORT" --user "$USER_NAME" --password "$PASSWORD" \
    --duration "$DURATION" --warmup "$WARMUP" --after "$AFTER" --interval "$INTERVAL" --allocations "$ALLOCATIONS" \
    --sockets "$SOCKETS" --churn-allocations "$CHURN_ALLOCATIONS" --churn-sockets "$CHURN_SOCKETS" \
    --churn-hold "$CHURN_HOLD" --stream-rate "$STREAM_RATE" 2>>"$OUT/soak-loadgen.err" | tee "$OUT/soak-$cycle.txt" \
    || { status=$?; break; }
done
echo "== machine load average at the end: $(cut -d' ' -f1-3 /proc/loadavg)"
if [ -s "$OUT/soak-loadgen.err" ]; then
  echo "== load generator errors (first 20; all are counted above):"
  head -20 "$OUT/soak-loadgen.err"
fi
if grep -qiE "warn|error" "$OUT/soak-traverse.log"; then
  echo "== server warnings ($OUT/soak-traverse.log, first 10):"
  grep -iE "warn|error" "$OUT/soak-traverse.log" | head -10
fi
exit "$status"
