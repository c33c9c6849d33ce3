#!/usr/bin/env bash
# Cluster benchmark (issue 9, docs/scaling.md): signals per second, CPU per signal (Traverse and Redis) and one-way
# latency p50/p99 for peers on the same node vs peers on different nodes, 1 node vs 3 nodes, release build.
#
#   bench/cluster/run.sh [SECONDS]          # default 10 s per run
#   PAIRS=20 WINDOW=4 REPEAT=3 bench/cluster/run.sh 10
#   BUILD=0 bench/cluster/run.sh 8          # the release binaries as built
#   SERVER_ARGS="--set limits.coalesce_us=0" bench/cluster/run.sh   # extra flags for every node (here: no naps)
#   BASELINE=/tmp/traverse-old CASES="redis1 redis3" MODES=flat-out REPEAT=3 bench/cluster/run.sh 8
#                                           # each --redis case also with another build, alternated; ratios printed
#   TRAVERSE=/path/to/traverse              # the binary measured (default: the release build)
#   CASES="memory redis1 redis3"            # which cases (default all); MODES="flat-out one" likewise
#   WORKERS=2                               # worker threads per node (default 1)
#
# Cases, each measured by traverse-cluster-bench (crates/loadgen/src/cluster_bench.rs):
#   memory 1 node    no --redis: the in-memory hub, the reference
#   redis 1 node     one node with --redis (journal written, no other node)
#   redis 3 same     three nodes; both peers of a pair on the same node (pair i on node i mod 3)
#   redis 3 cross    three nodes; A on node i mod 3, B on node i+1 mod 3: every signal crosses Redis pub/sub
# in two modes: flat-out ($PAIRS pairs, $WINDOW signals in flight each: throughput and CPU per signal) and one
# in flight (one pair, one signal: latency without queueing). CPU is every Traverse process of the case plus
# redis-server, from /proc over the counted interval. The load average is printed with every run: the machine is
# shared, and its other users' load shows in the figures.
# The "hub" column: the busiest --redis hub thread's share of a core / the hub threads of the case (a node's ceiling
# is where one reaches 1).
# Everything listens on 127.0.0.1; every run is bounded in time (SECONDS) and count; processes are stopped by PID.
set -euo pipefail
cd "$(dirname "$0")"
ROOT=$(cd ../.. && pwd)
SECONDS_PER_RUN="${1:-10}"
PAIRS="${PAIRS:-20}"
WINDOW="${WINDOW:-4}"
REPEAT="${REPEAT:-1}"
OUT="$ROOT/bench/out/cluster"
mkdir -p "$OUT"
RESULTS="$OUT/results.jsonl"
: >"$RESULTS"

command -v redis-server >/dev/null || { echo "needs redis-server (Debian package redis-server)"; exit 1; }
command -v curl >/dev/null || { echo "needs curl"; exit 1; }
# BUILD=0 benchmarks the release binaries already built (a workspace mid-edit elsewhere need not be rebuilt).
if [ "${BUILD:-1}" = 1 ]; then
  (cd "$ROOT" && cargo build --release -q -p traverse -p traverse-loadgen --bin traverse --bin traverse-cluster-bench)
fi
TRAVERSE="${TRAVERSE:-$ROOT/target/release/traverse}"
BASELINE="${BASELINE:-}"
CASES="${CASES:-memory redis1 redis3}"
MODES="${MODES:-flat-out one}"
# The binary start_node runs; `cases` swaps in the baseline for its second pass.
SERVER="$TRAVERSE"
BENCH="$ROOT/target/release/traverse-cluster-bench"

pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
}
trap cleanup EXIT

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

REDIS_PID="" REDIS_URL=""
start_redis() {
  local port; port=$(free_port)
  redis-server --port "$port" --bind 127.0.0.1 --save "" --appendonly no >"$OUT/redis.log" 2>&1 &
  REDIS_PID=$!; pids+=("$REDIS_PID")
  REDIS_URL="redis://127.0.0.1:$port"
  for _ in $(seq 100); do redis-cli -p "$port" ping >/dev/null 2>&1 && return 0; sleep 0.05; done
  echo "redis-server did not answer"; exit 1
}

NODE_PIDS=() NODE_URLS=()
start_node() { # [redis url]
  local http; http=$(free_port)
  local redis=()
  [ -n "${1:-}" ] && redis=(--redis "$1")
  "$SERVER" serve "${redis[@]}" --http "127.0.0.1:$http" \
    --udp "127.0.0.1:$(free_port)" --tcp "127.0.0.1:$(free_port)" --tls "127.0.0.1:$(free_port)" --workers "${WORKERS:-1}" --relay-ports 20000-29999 \
    --set signal.max_connections_per_ip=100000 --set signal.messages_per_second=1000000 --set signal.burst=1000000 --set signal.delivered_bytes_per_second=0 \
    --set signal.max_rooms=1000000 --set limits.max_connections=100000 --set limits.max_connections_per_source=0 --set limits.connections_per_second_per_source=0 --set limits.requests_per_second_per_source=0 \
    --log-level warn ${SERVER_ARGS:-} >>"$OUT/traverse.log" 2>&1 &
  local pid=$!; pids+=("$pid"); NODE_PIDS+=("$pid"); NODE_URLS+=("ws://127.0.0.1:$http/ws")
  for _ in $(seq 200); do
    curl -sf -o /dev/null "http://127.0.0.1:$http/readyz" && return 0
    sleep 0.05
  done
  echo "traverse did not become ready"; exit 1
}

stop_all() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; wait "$p" 2>/dev/null || true; done
  pids=() NODE_PIDS=() NODE_URLS=() REDIS_PID=""
}

join() { local IFS=,; echo "$*"; }

measure() { # label A-urls B-urls pairs window
  local load; load=$(cut -d' ' -f1-3 /proc/loadavg)
  local redis=()
  [ -n "$REDIS_PID" ] && redis=(--redis-pid "$REDIS_PID")
  local line
  line=$("$BENCH" --label "$1" --a "$2" --b "$3" --pairs "$4" --window "$5" --seconds "$SECONDS_PER_RUN" \
    --traverse-pids "$(join "${NODE_PIDS[@]}")" "${redis[@]}")
  line="${line%\}},\"loadavg\":\"$load\"}"
  echo "$line" | tee -a "$RESULTS"
}

has() { [[ " $1 " == *" $2 "* ]]; }

cases() { # mode pairs window [label prefix]
  local mode=$1 pairs=$2 window=$3 tag=${4:-}
  if has "$CASES" memory && [ -z "$tag" ]; then
    start_node
    measure "memory 1 node, $mode" "${NODE_URLS[0]}" "${NODE_URLS[0]}" "$pairs" "$window"
    stop_all
  fi
  if has "$CASES" redis1; then
    start_redis; start_node "$REDIS_URL"
    measure "${tag}redis 1 node, $mode" "${NODE_URLS[0]}" "${NODE_URLS[0]}" "$pairs" "$window"
    stop_all
  fi
  if has "$CASES" redis3; then
    start_redis; start_node "$REDIS_URL"; start_node "$REDIS_URL"; start_node "$REDIS_URL"
    local all; all=$(join "${NODE_URLS[@]}")
    local shifted; shifted=$(join "${NODE_URLS[1]}" "${NODE_URLS[2]}" "${NODE_URLS[0]}")
    measure "${tag}redis 3 same, $mode" "$all" "$all" "$pairs" "$window"
    measure "${tag}redis 3 cross, $mode" "$all" "$shifted" "$pairs" "$window"
    stop_all
  fi
}

# Both builds in each repeat, the order alternated, so that the machine's drift lands on both.
both() { # mode pairs window
  local order=("$TRAVERSE" "$BASELINE")
  [ $((rep % 2)) = 1 ] && order=("$BASELINE" "$TRAVERSE")
  for SERVER in "${order[@]}"; do
    [ -z "$SERVER" ] && continue
    if [ "$SERVER" = "$TRAVERSE" ]; then cases "$@"; else cases "$@" "baseline: "; fi
  done
  SERVER="$TRAVERSE"
}

echo "cpus: $(nproc); load average at start: $(cut -d' ' -f1-3 /proc/loadavg)"
echo "measured: $TRAVERSE${BASELINE:+; baseline: $BASELINE}"
for rep in $(seq "$REPEAT"); do
  has "$MODES" flat-out && both flat-out "$PAIRS" "$WINDOW"
  has "$MODES" one && both "one in flight" 1 1
done

# A table: medians over the repeats, and cross/same of the CPU per signal (Traverse + Redis).
python3 - "$RESULTS" <<'PY'
import json, sys, statistics
rows = {}
for line in open(sys.argv[1]):
    r = json.loads(line)
    rows.setdefault(r["label"], []).append(r)
med = lambda rs, k: statistics.median(r[k] for r in rs)
print(f"{'case':34} {'signals/s':>10} {'p50 µs':>8} {'p99 µs':>8} {'traverse µs/sig':>16} {'redis µs/sig':>13} {'total':>7} {'hub':>9}  load")
for label, rs in rows.items():
    # The busiest --redis hub thread's share of a core, and how many hub threads there were.
    hub = f"{med(rs,'hub_busiest_core_share'):.2f}/{rs[-1]['hub_threads']}" if rs[-1].get('hub_threads') else "-"
    print(f"{label:34} {med(rs,'signals_per_second'):10.0f} {med(rs,'latency_p50_us'):8.0f} {med(rs,'latency_p99_us'):8.0f} "
          f"{med(rs,'traverse_us_per_signal'):16.1f} {med(rs,'redis_us_per_signal'):13.1f} {med(rs,'total_us_per_signal'):7.1f} {hub:>9}  {rs[-1]['loadavg']}")
for mode in ("flat-out", "one in flight"):
    same, cross = rows.get(f"redis 3 same, {mode}"), rows.get(f"redis 3 cross, {mode}")
    if same and cross:
        print(f"{mode}: cross-node / same-node CPU per signal (Traverse + Redis) = "
              f"{med(cross,'total_us_per_signal') / med(same,'total_us_per_signal'):.2f}x (target ≤ 2x)")
# With BASELINE: this build against the baseline, case by case.
for label, rs in rows.items():
    base = rows.get("baseline: " + label)
    if base:
        print(f"{label}: signals/s {med(rs,'signals_per_second') / med(base,'signals_per_second'):.2f}x the baseline's, "
              f"Traverse CPU per signal {med(rs,'traverse_us_per_signal') / med(base,'traverse_us_per_signal'):.2f}x, "
              f"p99 {med(rs,'latency_p99_us') / max(med(base,'latency_p99_us'), 1):.2f}x")
PY
