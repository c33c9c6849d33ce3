#!/usr/bin/env bash
# Scale benchmark (issue 14): idle TURN allocations and WebSocket sessions in Traverse's state machines, at counts
# the descriptor limit keeps the real server from (a process may hold 20 000 descriptors on the benchmark machine).
#
#   bench/scale.sh                          # 1 000, 19 000 and 100 000 of each, 1 200 / 120 simulated idle seconds
#   COUNTS="1000 100000" REPEAT=3 bench/scale.sh
#   KINDS=turn IDLE_TURN=600 bench/scale.sh
#   NO_BUILD=1 bench/scale.sh               # the release build as it is
#
# Each run is a fresh `traverse-scale` process (crates/loadgen/src/scale.rs): it sets the objects up through the very
# `turn::Server` or `signal::MemoryHub` a worker drives, with no socket (nothing is sent anywhere), lets them idle in
# simulated time (the clients refresh and send heartbeats as browsers do; the timers run as a worker runs them), and
# fails if any object was refused, expired or closed. It prints bytes of resident memory per object, the server's
# time per set-up, and per simulated second its time in timers and in the clients' messages. What grows with the
# count shows in the columns per object. The real server's own figures at 19 000 (sockets included) come from
# bench/relay.sh (MEMORY_RUNS) and bench/signaling/run.sh (HOLD).
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
COUNTS="${COUNTS:-1000 19000 100000}"
KINDS="${KINDS:-turn signal}"
REPEAT="${REPEAT:-1}"
IDLE_TURN="${IDLE_TURN:-1200}"
IDLE_SIGNAL="${IDLE_SIGNAL:-120}"
OUT="$ROOT/bench/out/scale"
mkdir -p "$OUT"
RESULTS="$OUT/results.jsonl"
: >"$RESULTS"

if [ -z "${NO_BUILD:-}" ]; then
  (cd "$ROOT" && cargo build --release -q -p traverse-loadgen --bin traverse-scale)
fi
BIN="$ROOT/target/release/traverse-scale"
[ -x "$BIN" ] || { echo "no $BIN: build it (cargo build --release -p traverse-loadgen)"; exit 1; }

echo "# $(date -u +%FT%TZ) $(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null || echo '?') load: $(cut -d' ' -f1-3 /proc/loadavg)"
for rep in $(seq "$REPEAT"); do
  for kind in $KINDS; do
    idle=$IDLE_TURN
    [ "$kind" = signal ] && idle=$IDLE_SIGNAL
    for count in $COUNTS; do
      # Bounded: every run holds at most COUNT objects for IDLE simulated seconds; a run over 10 minutes is stopped.
      line=$(timeout 600 "$BIN" "$kind" --count "$count" --idle "$idle")
      echo "$line" >>"$RESULTS"
      echo "run $rep: $line"
    done
  done
done

# One row per kind and count: medians over the repetitions.
python3 - "$RESULTS" <<'EOF'
import json, statistics, sys
rows = [json.loads(l) for l in open(sys.argv[1]) if l.strip()]
groups = {}
for r in rows:
    groups.setdefault((r["what"], r["count"]), []).append(r)
print()
print("| state machine | objects | bytes per object | set-up µs per object | messages per s | timers µs per s "
      "| messages µs per s | µs per message | µs per object per s (all) |")
print("|---|---:|---:|---:|---:|---:|---:|---:|---:|")
for (what, count), rs in sorted(groups.items()):
    med = lambda k: statistics.median(r[k] for r in rs)
    rate = med("messages_per_second")
    total = med("timer_us_per_second") + med("messages_us_per_second")
    print(f"| {what} | {count} | {med('bytes_per_object'):.0f} | {med('setup_us_per_object'):.2f} | {rate:.0f} "
          f"| {med('timer_us_per_second'):.1f} | {med('messages_us_per_second'):.0f} | {med('us_per_message'):.2f} "
          f"| {total / count:.4f} |")
EOF
