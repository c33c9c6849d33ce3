#!/usr/bin/env bash
# Scaling with cores, for signaling: what a second worker buys at saturation, on a machine of two cores that the load
# generator needs as much as the server does.
#
#   sudo bench/signaling/cores.sh [SECONDS]     # default 5 s measured per step, REPEAT=3; about 3 minutes
#   SHARE=20 PAIRS=200 WINDOW=8 BENCHES=2 REPEAT=3 sudo bench/signaling/cores.sh 5
#
# The relay's version of this (bench/relay-cores.sh) takes the load generator off the cores with an XDP loop; a
# WebSocket's TCP stream cannot be looped that way, and the load generator (traverse-cluster-bench, in Rust) costs
# about 1.5–2x the server's CPU per signal. So this one gives each worker a fixed slice of a core instead of a core:
# every worker thread is put in a cgroup of its own (cgroup v1 `cpu`, CFS bandwidth: SHARE % of each 10 ms period,
# default 20 %), and the process's other threads (the hub's timer, the allocator's) share one more such slice. The
# load generator runs unlimited on what is left (two processes, BENCHES, with half the pairs each, 160 % of a core at
# the default share). A worker that keeps hitting its slice is saturated; its cgroup's throttle count says so per
# step. What the slices keep from "other cores": neither worker can take the other's time, so a second worker adds
# throughput only as far as the work really spreads over both (rooms on both, no lock or thread they queue on).
# What they do not: both workers' slices may run at the same instant on the two cores or one after the other, so
# cache sharing between them is not the same as on two dedicated cores.
#
# Configurations, under the same load (PAIRS pairs in rooms of their own, WINDOW signals bouncing in each), alternated:
#   1   one worker (one slice);
#   2   two workers (two slices);
#   2p  two processes of one worker each, the pairs split between them: what two workers would give if they shared
#       nothing (the control).
# Per step: signals delivered per second (traverse-cluster-bench, after WARMUP seconds, over SECONDS), the server's
# CPU over the same interval, and each slice's share of periods throttled. The table gives medians, and the ratios
# per repetition, then their median.
# Everything listens on 127.0.0.1; the load is bounded in time and count; processes are stopped by PID and the
# cgroups removed on exit.
set -euo pipefail
cd "$(dirname "$0")/../.."
ROOT=$PWD
SECONDS_MEASURED="${1:-5}"
SHARE="${SHARE:-20}"
PAIRS="${PAIRS:-200}"
WINDOW="${WINDOW:-8}"
BENCHES="${BENCHES:-2}"
REPEAT="${REPEAT:-3}"
WARMUP="${WARMUP:-2}"
OUT="$ROOT/bench/out/signaling"
mkdir -p "$OUT"
. bench/slices.sh
CG="$SLICE_ROOT/traverse-cores-$$"

[ "$(id -u)" = 0 ] || { echo "bench/signaling/cores.sh needs root (cgroups)"; exit 1; }
slices_available || { echo "bench/signaling/cores.sh needs cgroup v1's cpu controller at $SLICE_ROOT (CFS bandwidth)"; exit 1; }

if [ "${NO_BUILD:-0}" != 1 ]; then cargo build --release -q -p traverse -p traverse-loadgen; fi
TRAVERSE="${TRAVERSE:-$ROOT/target/release/traverse}"
BENCH="$ROOT/target/release/traverse-cluster-bench"

pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  for p in "${pids[@]}"; do wait "$p" 2>/dev/null || true; done
  unslice "$CG"
}
trap cleanup EXIT

# start INDEX WORKERS PORT → the process's PID in STARTED; its worker threads each in a slice, the rest in another.
start() {
  local i=$1 workers=$2 port=$3
  "$TRAVERSE" serve --http "127.0.0.1:$port" --udp "127.0.0.1:$((port + 1))" --tcp "127.0.0.1:$((port + 1))" \
    --tls "127.0.0.1:$((port + 2))" --workers "$workers" --log-level warn \
    --set signal.max_connections_per_ip=100000 --set signal.messages_per_second=1000000 --set signal.burst=1000000 --set signal.delivered_bytes_per_second=0 \
    --set signal.max_rooms=1000000 --set limits.max_connections=100000 --set limits.max_connections_per_source=0 --set limits.connections_per_second_per_source=0 --set limits.requests_per_second_per_source=0 \
    >"$OUT/cores-traverse-$i.log" 2>&1 &
  STARTED=$!
  pids+=("$STARTED")
  for _ in $(seq 100); do
    curl -sf -o /dev/null "http://127.0.0.1:$port/healthz" && break
    sleep 0.1
  done
  kill -0 "$STARTED" 2>/dev/null || { echo "traverse did not start: $(tail -3 "$OUT/cores-traverse-$i.log")"; exit 1; }
  local w
  w=$(slice_threads "$CG" "$STARTED" "$SHARE")
  [ "$w" = "$workers" ] || { echo "expected $workers worker threads in $STARTED, found $w"; exit 1; }
}

cpu_ticks() { # PID... → user+system ticks
  local sum=0 p
  for p in "$@"; do sum=$((sum + $(awk '{print $14 + $15}' "/proc/$p/stat"))); done
  echo "$sum"
}

# step CONFIG REP: one measurement; appends a JSON line to the results.
step() {
  local config=$1 rep=$2 servers=() urls=()
  case "$config" in
    1) start 0 1 18180; servers=("$STARTED"); urls=("ws://127.0.0.1:18180/ws") ;;
    2) start 0 2 18180; servers=("$STARTED"); urls=("ws://127.0.0.1:18180/ws") ;;
    2p) start 0 1 18180; servers=("$STARTED"); start 1 1 18190; servers+=("$STARTED")
        urls=("ws://127.0.0.1:18180/ws" "ws://127.0.0.1:18190/ws") ;;
  esac
  local before g
  declare -A stat0
  # The benches: each its share of the pairs; in 2p, pair i's two peers both on process i mod 2.
  local list benches=() b
  list=$(IFS=,; echo "${urls[*]}")
  rm -f "$OUT"/cores-bench-*.json
  for b in $(seq "$BENCHES"); do
    "$BENCH" --a "$list" --b "$list" --pairs $((PAIRS / BENCHES)) --window "$WINDOW" --warmup "$WARMUP" \
      --seconds "$SECONDS_MEASURED" --label "$config" >"$OUT/cores-bench-$b.json" 2>"$OUT/cores-bench-$b.err" &
    benches+=("$!")
  done
  # The server's CPU over the measured interval (the benches count from WARMUP on; their set-up is done by then).
  sleep "$WARMUP"
  before=$(cpu_ticks "${servers[@]}")
  for g in "$CG"/*/; do g=${g%/}; stat0[${g##*/}]=$(slice_throttled "$g"); done
  sleep "$SECONDS_MEASURED"
  local cpu throttled=""
  cpu=$(( $(cpu_ticks "${servers[@]}") - before ))
  for g in "$CG"/*/; do
    g=${g%/}; g=${g##*/}
    read -r p0 t0 <<<"${stat0[$g]}"
    read -r p1 t1 <<<"$(slice_throttled "$CG/$g")"
    throttled+="\"$g\":$(python3 -c "print(round(($t1-$t0)/max(1,$p1-$p0),2))"),"
  done
  for b in "${benches[@]}"; do wait "$b" || { echo "bench failed: $(cat "$OUT"/cores-bench-*.err)"; exit 1; }; done
  local rate
  rate=$(python3 -c 'import json,sys; print(round(sum(json.load(open(f))["signals_per_second"] for f in sys.argv[1:])))' \
    "$OUT"/cores-bench-*.json)
  local p
  for p in "${servers[@]}"; do kill "$p"; wait "$p" 2>/dev/null || true; done
  pids=()
  unslice "$CG"
  echo "{\"config\":\"$config\",\"rep\":$rep,\"signals_per_s\":$rate,\"server_cpu_s\":$(python3 -c "print($cpu/$CLK_TCK)"),\"throttled\":{${throttled%,}},\"load\":\"$(cut -d' ' -f1-3 /proc/loadavg)\"}" \
    | tee -a "$RESULTS"
}

RESULTS="$OUT/cores-results.jsonl"
: >"$RESULTS"
CLK_TCK=$(getconf CLK_TCK)
echo "== $(nproc) cores, load average $(cut -d' ' -f1-3 /proc/loadavg); each worker: ${SHARE} % of a core; $PAIRS pairs × $WINDOW in flight; $BENCHES load processes"
for rep in $(seq "$REPEAT"); do
  # Every other repetition runs the configurations in the reverse order.
  if [ $((rep % 2)) = 1 ]; then order="1 2 2p"; else order="2p 2 1"; fi
  for config in $order; do step "$config" "$rep"; done
done

python3 - "$RESULTS" "$SHARE" "$SECONDS_MEASURED" <<'EOF'
import json, statistics, sys
rows = [json.loads(l) for l in open(sys.argv[1])]
share = int(sys.argv[2])
seconds = float(sys.argv[3])
by = {c: {r["rep"]: r for r in rows if r["config"] == c} for c in ("1", "2", "2p")}
def cell(values, fmt):
    values = [v for v in values if v is not None]
    if not values:
        return "–"
    return f"{fmt(statistics.median(values))} ({fmt(min(values))}–{fmt(max(values))})"
num = lambda v: f"{v:,.0f}".replace(",", " ")
times = lambda v: f"{v:.2f}x"
def ratios(a, b):
    return [by[a][r]["signals_per_s"] / by[b][r]["signals_per_s"] for r in by[a] if r in by[b] and by[b][r]["signals_per_s"]]
print()
print(f"Signals delivered per second, each worker held to {share} % of a core. Medians over the repetitions (min–max);")
print("ratios are taken per repetition, then their median. 2p: two processes of one worker each (nothing shared).")
print()
print("| 1 worker | 2 workers | **2 / 1** | 2p | 2p / 1 | 2 / 2p | workers' periods throttled (1 / 2) |")
print("|---:|---:|---:|---:|---:|---:|---|")
def throttled(c):
    vals = [v for r in by[c].values() for k, v in r["throttled"].items() if "-w" in k]
    return f"{min(vals):.2f}–{max(vals):.2f}" if vals else "–"
print(f"| {cell([r['signals_per_s'] for r in by['1'].values()], num)} | {cell([r['signals_per_s'] for r in by['2'].values()], num)} "
      f"| **{cell(ratios('2', '1'), times)}** | {cell([r['signals_per_s'] for r in by['2p'].values()], num)} "
      f"| {cell(ratios('2p', '1'), times)} | {cell(ratios('2', '2p'), times)} | {throttled('1')} / {throttled('2')} |")
print()
print("Per repetition, 2 / 1:", " ".join(f"{v:.2f}" for v in ratios("2", "1")))
print("Server CPU-s per 100k signals (1 / 2 / 2p):", " / ".join(
    f"{statistics.median([r['server_cpu_s'] * 1e5 / (r['signals_per_s'] * seconds) for r in by[c].values()]):.2f}"
    for c in ("1", "2", "2p")))
EOF
