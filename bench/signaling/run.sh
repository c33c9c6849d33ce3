#!/usr/bin/env bash
# Signaling benchmark: Traverse against the PeerJS server (npm `peer`), side by side on this machine, in one run,
# under the same load generator (load.mjs; only its protocol adapter differs).
#
#   bench/signaling/run.sh [SECONDS]     # default 10 s per relay run
#   HOLD="2000" PAIRS=50 REPEAT=1 bench/signaling/run.sh 5     # a smaller run while tuning
#   WORKERS=1 bench/signaling/run.sh     # Traverse with one worker (default 2)
#   TRAVERSE_ARGS="--set signal.heartbeat_interval=60" bench/signaling/run.sh   # extra flags for Traverse
#   TLS=1 HOLD=10000 bench/signaling/run.sh   # over WSS, as browsers on an https page connect: both servers
#                                             # terminate TLS with the same self-signed P-256 certificate
#
# Tests, each run against a freshly started server, Traverse then PeerJS, before the next test:
#   hold N     N idle registered sockets (Traverse: one room per two peers, joined; PeerJS: one id per socket,
#              OPEN received); server RSS before and after → bytes per idle connection; the server's CPU over
#              $IDLE seconds (default 12) of idling → CPU at idle: each socket sends its own client's heartbeat
#              (Traverse's SDK every 10 s, PeerJS's every 5 s; HEARTBEATS=0: silent sockets, which Traverse pings
#              every 10 s). N from $HOLD (at most the fd limit less 256, a larger N is skipped with the reason;
#              beyond 25 000 the sockets connect from several loopback addresses, so 100 000 fit where it allows).
#   flat-out   $PAIRS sender→receiver pairs, each sender keeps at most $WINDOW signals in flight, for SECONDS
#              (at most $MAX_MESSAGES in all): delivered signals/s, latency p50/p99, server CPU-s per 100k.
#   paced      the same pairs at $RATE signals/s in total: latency when the server is not saturated. Sent every
#              $TICK_MS ms (default 5: bursts); TICK_MS=1 is as smooth as Node's timers go.
# The whole set runs $REPEAT times (default 3), alternating which server goes first; the table shows medians.
# Then it prints one table with both servers and the Traverse/PeerJS ratios (also in bench/out/signaling/).
# Both servers listen on 127.0.0.1 only; every load loop is bounded in time and count; the servers are stopped by
# PID on exit.
set -euo pipefail
cd "$(dirname "$0")"
HERE=$PWD
ROOT=$(cd ../.. && pwd)
SECONDS_PER_RUN="${1:-10}"
HOLD="${HOLD-2000 10000}"
PAIRS="${PAIRS:-100}"
WINDOW="${WINDOW:-16}"
RATE="${RATE:-5000}"
TICK_MS="${TICK_MS:-5}"
MAX_MESSAGES="${MAX_MESSAGES:-3000000}"
REPEAT="${REPEAT:-3}"
IDLE="${IDLE:-12}"
HEARTBEATS="${HEARTBEATS:-1}"   # 1: idle sockets send their client's heartbeat (SDK 10 s, PeerJS 5 s); 0: silent
OUT="$ROOT/bench/out/signaling"
mkdir -p "$OUT"
RESULTS="$OUT/results.jsonl"
: >"$RESULTS"

command -v node >/dev/null || { echo "needs Node (20 or newer)"; exit 1; }
ulimit -n "$(ulimit -Hn)"
FDS=$(ulimit -n)

# Dependencies: pinned in package.json / package-lock.json.
(npm ci --no-audit --no-fund --silent || npm install --no-audit --no-fund --silent) >/dev/null

# The release binary: reused when newer than the sources it is built from, else built once. A failed rebuild
# (a workspace mid-edit) falls back to an existing binary, with a warning.
# TRAVERSE=/path/to/traverse benchmarks that binary as it is (a copy taken while the shared tree is mid-edit).
if [ -n "${TRAVERSE:-}" ]; then :; else
TRAVERSE="$ROOT/target/release/traverse"
SOURCES=()
for c in stun turn signal server web traverse cluster; do SOURCES+=("$ROOT/crates/$c/src"); done
SOURCES+=("$ROOT/web")
if [ ! -x "$TRAVERSE" ] || [ -n "$(find "${SOURCES[@]}" -newer "$TRAVERSE" -type f 2>/dev/null | head -1)" ]; then
  if ! (cd "$ROOT" && cargo build --release -q -p traverse); then
    [ -x "$TRAVERSE" ] || exit 1
    echo "warning: cargo build failed; benchmarking the existing $TRAVERSE"
  fi
fi
fi

pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
}
trap cleanup EXIT

# TLS=1: one certificate for both servers (Traverse's single port, PeerJS's --sslkey/--sslcert).
TLS="${TLS:-0}"
SCHEME=ws; HTTP_SCHEME=http
if [ "$TLS" = 1 ]; then
  SCHEME=wss; HTTP_SCHEME=https
  openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 1 -subj "/CN=127.0.0.1" \
    -keyout "$OUT/key.pem" -out "$OUT/cert.pem" >/dev/null 2>&1
fi

free_port() { node -e 'const s=require("net").createServer().listen(0,"127.0.0.1",()=>{console.log(s.address().port);s.close()})'; }

wait_http() { # url
  for _ in $(seq 100); do
    curl -skf -o /dev/null "$1" && return 0
    sleep 0.1
  done
  echo "server did not come up at $1"; exit 1
}

# The listeners take free ports from the ephemeral range (32768–60999 here), which Traverse refuses to share with its
# relay ports (49152–65535 by default): the relay range is moved above it.
start_server() { # traverse|peerjs → sets SERVER_PID, SERVER_URL
  local port
  port=$(free_port)
  case "$1" in
    traverse)
      local listen=(--http "127.0.0.1:$port")
      [ "$TLS" = 1 ] && listen=(--http off --single-port "127.0.0.1:$port" --tls-cert "$OUT/cert.pem" --tls-key "$OUT/key.pem")
      "$TRAVERSE" serve "${listen[@]}" \
        --udp "127.0.0.1:$(free_port)" --tcp "127.0.0.1:$(free_port)" --tls "127.0.0.1:$(free_port)" \
        --set signal.max_connections_per_ip=100000 --set signal.messages_per_second=1000000 --set signal.burst=1000000 --set signal.delivered_bytes_per_second=0 \
        --set signal.max_peers_per_room=100 --set signal.max_rooms=1000000 --set limits.max_connections=100000 --set limits.max_connections_per_source=0 --set limits.connections_per_second_per_source=0 --set limits.requests_per_second_per_source=0 --workers "${WORKERS:-2}" \
        --set relay.port_min=61000 --set relay.port_max=65535 \
        --log-level warn ${TRAVERSE_ARGS:-} >"$OUT/traverse.log" 2>&1 &
      SERVER_PID=$!
      pids+=("$SERVER_PID")
      wait_http "$HTTP_SCHEME://127.0.0.1:$port/healthz"
      ;;
    peerjs)
      # What `npx peerjs` runs, started directly so that $! is the server's own PID.
      local ssl=()
      [ "$TLS" = 1 ] && ssl=(--sslkey "$OUT/key.pem" --sslcert "$OUT/cert.pem")
      node "$HERE/node_modules/peer/dist/bin/peerjs.js" --host 127.0.0.1 --port "$port" \
        --concurrent_limit 100000 "${ssl[@]}" >"$OUT/peerjs.log" 2>&1 &
      SERVER_PID=$!
      pids+=("$SERVER_PID")
      wait_http "$HTTP_SCHEME://127.0.0.1:$port/"
      ;;
  esac
  SERVER_URL="$SCHEME://127.0.0.1:$port"
  sleep 0.5
}

stop_server() {
  kill "$SERVER_PID" 2>/dev/null || true
  for _ in $(seq 50); do kill -0 "$SERVER_PID" 2>/dev/null || break; sleep 0.1; done
  kill -9 "$SERVER_PID" 2>/dev/null || true
  wait "$SERVER_PID" 2>/dev/null || true
}

run() { # label server -- load.mjs arguments
  local label=$1 server=$2
  shift 2
  start_server "$server"
  local line
  if line=$(node "$HERE/load.mjs" "$@" --proto "$server" --url "$SERVER_URL" --pid "$SERVER_PID" 2>"$OUT/load.err"); then
    echo "{\"label\":\"$label\",\"server\":\"$server\",\"r\":$line}" >>"$RESULTS"
    echo "  $server $label: $line"
  else
    echo "  $server $label: FAILED: $(tail -3 "$OUT/load.err")"
    echo "{\"label\":\"$label\",\"server\":\"$server\",\"r\":null}" >>"$RESULTS"
  fi
  stop_server
}

echo "== machine: $(nproc) cores, load average $(cut -d' ' -f1-3 /proc/loadavg), fd limit $FDS, over $SCHEME"
echo "== traverse $("$TRAVERSE" --version 2>/dev/null || echo '?'), peer $(node -p 'require("./node_modules/peer/package.json").version'), ws $(node -p 'require("./node_modules/ws/package.json").version'), node $(node --version)"
for rep in $(seq "$REPEAT"); do
  # Alternate which server goes first, so a drift in the machine's load does not always favour the same one.
  if [ $((rep % 2)) = 1 ]; then ORDER="traverse peerjs"; else ORDER="peerjs traverse"; fi
  echo "== repetition $rep of $REPEAT ($ORDER)"
  for n in $HOLD; do
    if [ "$FDS" -lt $((n + 256)) ]; then
      echo "  skipping hold $n: the descriptor limit is $FDS per process (ulimit -Hn), $n sockets need $((n + 256))"
      continue
    fi
    for s in $ORDER; do run "hold $n" "$s" hold --conns "$n" --idle "$IDLE" --heartbeats "$HEARTBEATS" \
      --time-limit $((170 + IDLE)); done
  done
  for s in $ORDER; do
    run "flat-out" "$s" relay --pairs "$PAIRS" --window "$WINDOW" --seconds "$SECONDS_PER_RUN" \
      --max-messages "$MAX_MESSAGES" --time-limit $((SECONDS_PER_RUN + 60))
  done
  for s in $ORDER; do
    run "paced" "$s" relay --pairs "$PAIRS" --window "$WINDOW" --rate "$RATE" --tick-ms "$TICK_MS" --seconds "$SECONDS_PER_RUN" \
      --max-messages "$MAX_MESSAGES" --time-limit $((SECONDS_PER_RUN + 60))
  done
done

echo
node "$HERE/table.mjs" "$RESULTS" | tee "$OUT/results.md"
