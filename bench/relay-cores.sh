#!/usr/bin/env bash
# Scaling with cores: what a second relay worker buys at saturation, on a machine whose only two cores the relay
# needs. Traverse with one worker on one core, with two workers on both, and as two one-worker processes (one per
# core: the control, what two workers would give if they shared nothing), under the same load, alternated; coturn with
# one relay thread against two beside it (SYSTEMS).
#
#   sudo bench/relay-cores.sh [SECONDS]     # default 5 s measured per step, REPEAT=3; ~6 minutes
#   SYSTEMS="traverse coturn" SIZES="100 1000" REPEAT=3 INFLIGHT=2000 ALLOCATIONS=100 sudo bench/relay-cores.sh 5
#   SLICE=20 SYSTEMS=traverse sudo bench/relay-cores.sh 5   # each worker held to 20 % of a core (cgroup v1 `cpu`,
#       CFS bandwidth) instead of pinned to a core of its own, every process free on both cores: the method
#       bench/signaling/cores.sh must use, checked here against the pinned cores on the same relay
#
# The load generator cannot have cores of its own here: any process sending and receiving a relay's packets needs a
# core about as much as the relay does (bench/relay.sh's traverse-2w: with the generator beside them, two workers
# deliver less than one). So nothing outside the relay runs while it is measured. An XDP program on the far end of
# the relay's link (bench/xdp/peer.c, bench_loop) echoes what the relay sends the peer, and sends what the relay
# delivers to the client back to the relay as the client's next packet. traverse-loadgen opens the allocations (one
# channel each to the echo peer) and puts INFLIGHT packets into that loop over one second, then exits; from then on
# the same packets circle client → relay → peer → relay → client → relay … as fast as the relay's cores carry them.
# The rate it settles at is the relay's saturated rate: a packet waits only in the relay's socket queues. The loop
# is bounded in count (INFLIGHT packets, never more) and in time (it stops with the relay, after each step).
#
#   outside ns: client 192.0.2.1 and peer 198.51.100.1 — no process, only bench_loop (XDP) on its end of the veth
#        │ veth
#   server ns: 203.0.113.1 (and .2 for the second process of "2p") — the relay, pinned as above
#
# Where the loop's own work runs: a veth runs the receiving end's work — the XDP program, and the relay's receive
# path for the packet it sends back — in softirq on the core that sent the packet, which is a relay core; with one
# worker, core 0 stays idle. bench_loop costs ~0.1 µs per packet (kernel.bpf_stats_enabled, printed per step) of the
# ~7 µs of a core that a relayed packet takes here, the same for every system.
#
# Per step: after two seconds for the loop to fill and settle, the echoes bench_loop counts over SECONDS (each is two
# relayed packets: client → peer and peer → client), read once a second by bench/xdp/loop-count.c, the busy CPU of
# each core from /proc/stat, and the datagrams the relay's sockets dropped (the loop's losses). The table gives
# relayed packets per second, the ratios per repetition, and the rate's last second against its first (a loop that
# loses packets runs slower as it goes; one that settles keeps its rate).
# Everything is bounded in time and count; namespaces and processes are removed on exit.
set -euo pipefail
cd "$(dirname "$0")/.."
SECONDS_MEASURED="${1:-5}"
P=trvc
HOST_IP=203.0.113.1
HOST_IP2=203.0.113.2 # the second process of the "2p" configuration
CLIENT_IP=192.0.2.1 # bench/xdp/peer.c knows these two and the port
PEER_IP=198.51.100.1
PEER_PORT=3480
USER_NAME=bench
PASSWORD=bench
REALM=bench
OUT=bench/out
mkdir -p "$OUT"
SYSTEMS="${SYSTEMS:-traverse coturn}"
SIZES="${SIZES:-100 1000}"
REPEAT="${REPEAT:-3}"
ALLOCATIONS="${ALLOCATIONS:-100}"
# Packets put into the loop: enough that each worker always has a batch waiting (20 per allocation by default), few
# enough that the relay's socket queues hold them all.
INFLIGHT="${INFLIGHT:-2000}"

[ "$(id -u)" = 0 ] || { echo "bench/relay-cores.sh needs root (namespaces, XDP)"; exit 1; }
[ "$(nproc)" -ge 2 ] || { echo "bench/relay-cores.sh needs 2 cores"; exit 1; }
for tool in turnserver ip ethtool bpftool clang taskset python3; do
  command -v "$tool" >/dev/null || { echo "missing $tool: apt-get install coturn iproute2 ethtool bpftool clang libbpf-dev util-linux python3"; exit 1; }
done
ulimit -n "$(ulimit -Hn)"

# SLICE: each Traverse worker thread held to SLICE % of a core (bench/slices.sh).
. bench/slices.sh
CG=$SLICE_ROOT/traverse-relay-cores-$$
if [ -n "${SLICE:-}" ]; then
  slices_available || { echo "SLICE needs cgroup v1's cpu controller at $SLICE_ROOT"; exit 1; }
  [ "$SYSTEMS" = traverse ] || { echo "SLICE measures Traverse only (SYSTEMS=traverse)"; exit 1; }
fi

pids=()
cleanup() {
  [ -z "${BPF_STATS_WAS:-}" ] || sysctl -qw "kernel.bpf_stats_enabled=$BPF_STATS_WAS"
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  sleep 0.3
  for p in "${pids[@]}"; do kill -9 "$p" 2>/dev/null || true; done
  unslice "$CG"
  # Anything still running in the namespaces this script made is this script's.
  for n in s o; do
    for p in $(ip netns pids "$P-$n" 2>/dev/null); do kill -9 "$p" 2>/dev/null || true; done
    ip netns del "$P-$n" 2>/dev/null || true
  done
}
trap cleanup EXIT

[ -n "${NO_BUILD:-}" ] || cargo build --release -q -p traverse -p traverse-loadgen
TRAVERSE=$PWD/target/release/traverse
LOADGEN=$PWD/target/release/traverse-loadgen
PEER_OBJECT=$OUT/xdp-peer.o
LOOP_COUNT=$OUT/xdp-loop-count
cc -O2 -Wall -Werror bench/xdp/loop-count.c -lbpf -o "$LOOP_COUNT"
clang -O2 -g -Wall -Werror -target bpf -I "/usr/include/$(uname -m)-linux-gnu" -c bench/xdp/peer.c -o "$PEER_OBJECT"

cleanup
for n in s o; do
  ip netns add "$P-$n"
  ip -n "$P-$n" link set lo up
  ip netns exec "$P-$n" sysctl -qw net.ipv4.conf.all.rp_filter=0 net.ipv4.conf.default.rp_filter=0
done
ip link add "$P-s0" netns "$P-s" type veth peer name "$P-o0" netns "$P-o"
ip -n "$P-s" addr add "$HOST_IP/24" dev "$P-s0"
ip -n "$P-s" addr add "$HOST_IP2/24" dev "$P-s0"
ip -n "$P-o" addr add "$PEER_IP/24" dev "$P-o0"
ip -n "$P-o" addr add "$CLIENT_IP/24" dev "$P-o0"
ip -n "$P-s" link set "$P-s0" up
ip -n "$P-o" link set "$P-o0" up
ip -n "$P-s" route add 198.51.100.0/24 dev "$P-s0"
ip -n "$P-s" route add 192.0.2.0/24 dev "$P-s0"
# The load generator sends from the client address, not the peer's (the first on the link).
ip -n "$P-o" route add 203.0.113.0/24 dev "$P-o0" src "$CLIENT_IP"
# The load generator's packets leave its veth with complete checksums, as the loop's own do (no checksum).
ip netns exec "$P-o" ethtool -K "$P-o0" tx off >/dev/null
# The loop, and on the relay's end the program that puts its veth in NAPI mode (XDP_TX onto a veth needs it; see
# bench/xdp/peer.c's bench_pass).
ip -n "$P-o" link set dev "$P-o0" xdpdrv obj "$PEER_OBJECT" sec xdp program bench_loop
ip -n "$P-s" link set dev "$P-s0" xdpdrv obj "$PEER_OBJECT" sec xdp program bench_pass
BPF_STATS_WAS=$(sysctl -n kernel.bpf_stats_enabled)

# The map bench_loop counts into (bench_pass's copy of the object has one too, never written).
loop_map() {
  bpftool prog show name bench_loop -j | python3 -c 'import json, sys
p = json.load(sys.stdin)
p = p[0] if isinstance(p, list) else p
print(p["map_ids"][0])'
}
# ns spent in bench_loop so far, and its run count.
loop_runs() {
  bpftool prog show name bench_loop -j | python3 -c 'import json, sys
p = json.load(sys.stdin)
p = p if isinstance(p, list) else [p]
print(sum(x.get("run_time_ns", 0) for x in p), sum(x.get("run_cnt", 0) for x in p))'
}
# Datagrams the server namespace's UDP sockets dropped so far (full receive queues and the like): the loop's losses.
drops() { ip netns exec "$P-s" nstat -az UdpRcvbufErrors UdpInErrors UdpMemErrors | awk '/^Udp/ {n += $2} END {print n + 0}'; }
# Busy jiffies (everything but idle and iowait) of core $1.
busy_core() { awk -v c="cpu$1" '$1 == c {print $2+$3+$4+$7+$8+$9}' /proc/stat; }

S=(ip netns exec "$P-s") # `ip netns exec` execs the program: $! is the program's own pid
SERVER_PIDS=()
# start_one SYSTEM THREADS CPUS IP: one relay process, listening on IP:3478, pinned to CPUS.
start_one() {
  case "$1" in
    traverse)
      "${S[@]}" taskset -c "$3" "$TRAVERSE" serve --udp "$4:3478" --tcp "$4:3478" \
        --tls "$4:5349" --http 127.0.0.1:0 --user "$USER_NAME:$PASSWORD" --realm "$REALM" --workers "$2" \
        --set limits.max_allocations_per_user=0 --set limits.max_allocations_per_source=0 \
        --set limits.allocations_per_second_per_source=0 \
        --log-level warn >"$OUT/cores-traverse-$4.log" 2>&1 &
      ;;
    coturn)
      "${S[@]}" taskset -c "$3" turnserver -n --no-cli --no-tls --no-dtls -L "$4" -E "$4" \
        --listening-port 3478 --lt-cred-mech --user "$USER_NAME:$PASSWORD" --realm "$REALM" --relay-threads "$2" \
        --min-port 49152 --max-port 65535 --no-multicast-peers --simple-log --log-file stdout \
        --pidfile "$OUT/turnserver-cores-$4.pid" >"$OUT/cores-coturn-$4.log" 2>&1 &
      ;;
  esac
  SERVER_PIDS+=("$!")
  pids+=("$!")
  for _ in $(seq 50); do
    "${S[@]}" ss -lun | grep -q "$4:3478" && break
    sleep 0.1
  done
  [ -z "${SLICE:-}" ] || slice_threads "$CG" "${SERVER_PIDS[-1]}" "$SLICE" >/dev/null
}
# start_system SYSTEM CONFIG: 1 (one worker on core 1), 2 (two workers on cores 0-1) or 2p (two processes of one
# worker each, one per core, on two addresses: what two workers would give if they shared nothing at all).
start_system() {
  SERVER_PIDS=()
  if [ -n "${SLICE:-}" ]; then
    # Slices instead of cores: every process may run on both cores; the slices hold each worker to its share.
    case "$2" in
      1) start_one "$1" 1 0-1 "$HOST_IP" ;;
      2) start_one "$1" 2 0-1 "$HOST_IP" ;;
      2p) start_one "$1" 1 0-1 "$HOST_IP"; start_one "$1" 1 0-1 "$HOST_IP2" ;;
    esac
    sleep 0.5
    return
  fi
  case "$2" in
    1) start_one "$1" 1 1 "$HOST_IP" ;;
    2) start_one "$1" 2 0-1 "$HOST_IP" ;;
    2p)
      start_one "$1" 1 1 "$HOST_IP"
      start_one "$1" 1 0 "$HOST_IP2"
      ;;
  esac
  sleep 0.5
  [ "$1" != coturn ] || sleep "${COTURN_WAIT:-2}"
}
stop_system() {
  for p in "${SERVER_PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
  for p in "${SERVER_PIDS[@]}"; do wait "$p" 2>/dev/null || true; done
  unslice "$CG"
  sleep 0.5
}
# fill IP ALLOCATIONS PACKETS SIZE: opens the allocations on the relay at IP and puts the packets into the loop.
fill() {
  ip netns exec "$P-o" taskset -c 0 "$LOADGEN" --server "$1:3478" --peer "$PEER_IP:$PEER_PORT" \
    --user "$USER_NAME" --password "$PASSWORD" --allocations "$2" --rate "$3" \
    --duration 1 --size "$4" --no-receive --pace-us 1000 >"$OUT/cores-run.json"
}

CLK_TCK=$(getconf CLK_TCK)
VALUES="$OUT/cores-values.txt"
: >"$VALUES"
echo "== machine: $(nproc) cores, load average $(cut -d' ' -f1-3 /proc/loadavg) at the start; $(uname -r)${SLICE:+; each worker held to $SLICE % of a core}"
for rep in $(seq "$REPEAT"); do
  for system in $SYSTEMS; do
    for size in $SIZES; do
      configs="1 2"
      [ "$system" != traverse ] || configs="1 2 2p"
      # Every other repetition runs the configurations in the reverse order.
      [ $((rep % 2)) = 1 ] || configs=$(echo "$configs" | tr ' ' '\n' | tac | tr '\n' ' ')
      for config in $configs; do
        start_system "$system" "$config"
        sysctl -qw kernel.bpf_stats_enabled=1
        read -r na ra < <(loop_runs)
        if [ "$config" = 2p ]; then
          fill "$HOST_IP" $((ALLOCATIONS / 2)) $((INFLIGHT / 2)) "$size" &&
            fill "$HOST_IP2" $((ALLOCATIONS / 2)) $((INFLIGHT / 2)) "$size" ||
            { echo "  loadgen failed"; stop_system; continue; }
        else
          fill "$HOST_IP" "$ALLOCATIONS" "$INFLIGHT" "$size" || { echo "  loadgen failed"; stop_system; continue; }
        fi
        sleep 2 # the loop fills and settles
        read -r nb rb < <(loop_runs)
        sysctl -qw kernel.bpf_stats_enabled=0
        map=$(loop_map)
        d0=$(drops)
        a0=$(busy_core 0); b0=$(busy_core 1)
        "$LOOP_COUNT" "$map" "$SECONDS_MEASURED" >"$OUT/cores-count.txt"
        a1=$(busy_core 0); b1=$(busy_core 1)
        d1=$(drops)
        stop_system
        read -r pps first final c0 c1 ns < <(python3 -c "
import sys
reads = [tuple(map(int, l.split())) for l in open('$OUT/cores-count.txt') if l.strip()]
rate = lambda a, b: 2 * (b[1] - a[1]) / ((b[0] - a[0]) / 1e9)
secs = (reads[-1][0] - reads[0][0]) / 1e9
runs = $rb - $ra
print(round(rate(reads[0], reads[-1])), round(rate(reads[0], reads[1])), round(rate(reads[-2], reads[-1])),
      round(($a1 - $a0) / $CLK_TCK / secs, 2), round(($b1 - $b0) / $CLK_TCK / secs, 2),
      round(($nb - $na) / runs) if runs else 0)")
        echo "$system $size $config $rep $pps $first $final $c0 $c1" >>"$VALUES"
        echo "  $system $config, $size B (repetition $rep): $pps relayed packets/s" \
          "(first second $first, last $final); busy: core 0 $c0, core 1 $c1; bench_loop ${ns} ns per packet;" \
          "$((d1 - d0)) datagrams dropped by the relay's sockets"
      done
    done
  done
done
echo "== load average at the end: $(cut -d' ' -f1-3 /proc/loadavg)"

python3 - "$VALUES" "$SYSTEMS" "$SIZES" <<'EOF'
import os, statistics, sys
slice_ = os.environ.get("SLICE")
rows = [l.split() for l in open(sys.argv[1]) if l.strip()]
systems, sizes = sys.argv[2].split(), sys.argv[3].split()
def cell(values, fmt):
    if not values:
        return "none"
    m = statistics.median(values)
    return f"{fmt(m)} ({fmt(min(values))}–{fmt(max(values))})" if len(values) > 1 else fmt(m)
num = lambda v: f"{round(v):,}".replace(",", " ")
times = lambda v: f"{v:.2f}x"
def of(s, size, config):
    return {r[3]: int(r[4]) for r in rows if r[0] == s and r[1] == size and r[2] == config}
def ratios(a, b):
    return [a[k] / b[k] for k in b if k in a and b[k]]
print()
print("Relayed packets per second at saturation. Medians over the repetitions (min–max); ratios are taken per")
print("repetition, then their median. 2p: two processes of one worker each, one per core (nothing shared)." if not slice_
      else f"repetition, then their median. Each worker held to {slice_} % of a core; 2p: two processes of one worker each.")
print()
cores = ("1 worker (core 1)", "2 workers (cores 0-1)") if not slice_ else ("1 worker (1 slice)", "2 workers (2 slices)")
print(f"| system | payload | {cores[0]} | {cores[1]} | **2 workers / 1** | 2p | 2p / 1 | 2 workers / 2p | last second / first, 2 workers |")
print("|---|---|---:|---:|---:|---:|---:|---:|---:|")
for s in systems:
    for size in sizes:
        one, two, twop = of(s, size, "1"), of(s, size, "2"), of(s, size, "2p")
        drift = [int(r[6]) / int(r[5]) for r in rows if r[0] == s and r[1] == size and r[2] == "2" and int(r[5])]
        name = "Traverse" if s == "traverse" else "coturn (relay threads)" if s == "coturn" else s
        print(f"| {name} | {size} B | {cell(list(one.values()), num)} | {cell(list(two.values()), num)} "
              f"| **{cell(ratios(two, one), times)}** | {cell(list(twop.values()), num)} "
              f"| {cell(ratios(twop, one), times)} | {cell(ratios(two, twop), times)} | {cell(drift, lambda v: f'{v:.2f}')} |")
EOF
