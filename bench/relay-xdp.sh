#!/usr/bin/env bash
# The kernel fast path against the socket relays: Traverse with XDP (--xdp), Traverse without, coturn, and a bare
# UDP forwarder (crates/loadgen/src/bin/traverse-bare-forwarder.rs: one receive and one send per packet, nothing
# else), one after the other under the same load, in one run.
#
#   sudo bench/relay-xdp.sh [SECONDS]        # default 3 s per step, REPEAT=3; ~25 minutes
#   SYSTEMS="traverse-xdp coturn" RATES_100="50000 200000" RATES_1000= sudo bench/relay-xdp.sh 3   # a subset
#   TRAVERSE=/tmp/traverse-old NO_BUILD=1 SYSTEMS=traverse-xdp ... # another build of Traverse (an A/B in two runs)
#   VETH_STATS=1 ...   # print both veths' drop counters and the server's UDP errors at the end (where loss happens)
#
# Three namespaces. The server's holds the system under test; the outside one holds the echo peer's address and an
# XDP program of the benchmark's own (bench/xdp/peer.c) on its end of the server's veth that echoes the peer's
# packets back and counts and drops the echoes the relay sends the client. The far side then costs every system the
# same and little, so the delivered rate is the relay's, not the load generator's receive path or turnutils_peer's.
# The load generator has a namespace and a veth of its own:
#
#   generator ns: client 192.0.2.1 (traverse-loadgen, send only, core 0)
#        │ veth; XDP on the far end (bench/xdp/gen.c) hands each frame to core 1's CPU-map thread
#   outside ns: peer 198.51.100.1 (XDP echo), XDP sink
#        │ veth
#   server ns: 203.0.113.1 — the system under test (core 1)
#
# The cores: the system under test's process is pinned to core 1 (taskset), the load generator to core 0. A veth
# runs the receiving end's work — XDP programs included — in softirq on the core that sent the packet; sent straight
# from core 0, the fast path and a socket relay's receive path would run there, beside the load generator, on a core
# the server does not own. bench/xdp/gen.c moves each frame onto core 1 before it enters the server's veth, as a
# NIC queue whose interrupt the server's core takes: from there on every system's packets are received, relayed,
# echoed and counted on core 1, and core 0 only sends. (Threaded NAPI pinned to core 1 was tried first: its
# wake-ups lost packets erratically before either core was busy. The CPU map has not.)
#
# For each system and payload size (100 B, 1000 B), traverse-loadgen (ALLOCATIONS allocations, one channel each)
# offers a ladder of rates for SECONDS each. Per step: delivered echoes per second (the sink's count) and loss; busy
# CPU of core 1 and of the whole machine (from /proc/stat, softirq included — XDP's work is there, not in the
# server's utime/stime) → relayed packets (2 per echo) per CPU-second. The table's "highest rate" is the highest
# delivered rate of a step with at most 1 % loss. The load average is printed before and after and belongs with the
# figures. Everything is bounded in time and count; namespaces and processes are removed on exit.
set -euo pipefail
cd "$(dirname "$0")/.."
STEP_SECONDS="${1:-3}"
P=trvx
HOST_IP=203.0.113.1
CLIENT_IP=192.0.2.1   # bench/xdp/peer.c knows these two and the port
PEER_IP=198.51.100.1
PEER_PORT=3480
USER_NAME=bench
PASSWORD=bench
REALM=bench
OUT=bench/out
mkdir -p "$OUT"
SYSTEMS="${SYSTEMS:-traverse-xdp traverse coturn bare}"
RATES_100="${RATES_100-20000 30000 40000 60000 80000 100000 150000 200000}"
RATES_1000="${RATES_1000-20000 30000 40000 60000 80000 100000 150000 200000}"
ALLOCATIONS="${ALLOCATIONS:-20}"
REPEAT="${REPEAT:-3}"
# Microseconds between the load generator's sending rounds: nearly smooth arrivals by default; PACE_US=1000 sends each
# millisecond's packets in one burst (cheaper for the load generator). Measure both before quoting a ratio.
PACE_US="${PACE_US:-250}"
SERVER_CPU=1 # bench/xdp/gen.c knows it
LOAD_CPU=0
# Frames the server core's queue (bench/xdp/gen.c) holds: a NIC receive ring's worth.
GEN_QUEUE="${GEN_QUEUE:-2048}"

[ "$(id -u)" = 0 ] || { echo "bench/relay-xdp.sh needs root (namespaces, XDP)"; exit 1; }
[ "$(nproc)" -ge 2 ] || { echo "bench/relay-xdp.sh needs 2 cores (one for the load, one for the system)"; exit 1; }
for tool in turnserver ip ethtool bpftool clang cc taskset python3; do
  command -v "$tool" >/dev/null || { echo "missing $tool: apt-get install coturn iproute2 ethtool bpftool clang libbpf-dev util-linux python3"; exit 1; }
done
ulimit -n "$(ulimit -Hn)"

pids=()
cleanup() {
  [ -z "${BPF_STATS_WAS:-}" ] || sysctl -qw "kernel.bpf_stats_enabled=$BPF_STATS_WAS"
  if ip netns exec "$P-s" true 2>/dev/null && [ -n "${VETH_STATS:-}" ]; then
    ip netns exec "$P-s" ethtool -S "$P-s0" | grep -v ': 0$' || true
    ip netns exec "$P-o" ethtool -S "$P-o0" | grep -v ': 0$' || true
    ip -n "$P-o" -s link show "$P-o0"; ip -n "$P-s" -s link show "$P-s0"; ip netns exec "$P-s" nstat -az 2>/dev/null | grep -E "Udp(InErrors|RcvbufErrors|NoPorts|InCsumErrors)|IpInAddrErrors|IpInDiscards" || true
  fi
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  sleep 0.3
  for p in "${pids[@]}"; do kill -9 "$p" 2>/dev/null || true; done
  # Anything still running in the namespaces this script made is this script's.
  for n in s o g; do
    for p in $(ip netns pids "$P-$n" 2>/dev/null); do kill -9 "$p" 2>/dev/null || true; done
    ip netns del "$P-$n" 2>/dev/null || true
  done
}
trap cleanup EXIT

[ -n "${NO_BUILD:-}" ] || cargo build --release -q -p traverse -p traverse-loadgen
TRAVERSE=${TRAVERSE:-$PWD/target/release/traverse}   # TRAVERSE=/path: another build (A/B)
LOADGEN=$PWD/target/release/traverse-loadgen
BARE=$PWD/target/release/traverse-bare-forwarder
OBJECT=$(ls -t target/release/build/traverse-xdp-*/out/relay.o 2>/dev/null | head -1)
[ -n "$OBJECT" ] || { echo "no XDP object under target/release/build: install clang and libbpf-dev, rebuild"; exit 1; }
PEER_OBJECT=$OUT/xdp-peer.o
GEN_OBJECT=$OUT/xdp-gen.o
GEN_LOADER=$OUT/xdp-gen-load
for c in peer gen; do
  clang -O2 -g -Wall -Werror -target bpf -I "/usr/include/$(uname -m)-linux-gnu" -c "bench/xdp/$c.c" -o "$OUT/xdp-$c.o"
done
cc -O2 -Wall -Werror bench/xdp/gen-load.c -lbpf -o "$GEN_LOADER"

cleanup
for n in s o g; do
  ip netns add "$P-$n"
  ip -n "$P-$n" link set lo up
  ip netns exec "$P-$n" sysctl -qw net.ipv4.conf.all.rp_filter=0 net.ipv4.conf.default.rp_filter=0
done
# The server's link; bench/xdp/gen.c knows both MAC addresses.
ip link add "$P-s0" netns "$P-s" address 02:00:00:00:00:01 type veth peer name "$P-o0" netns "$P-o" \
  address 02:00:00:00:00:02
# The load generator's link; its far end forwards to the server's core (bench/xdp/gen.c).
ip link add "$P-g0" netns "$P-g" type veth peer name "$P-g1" netns "$P-o"
ip -n "$P-s" addr add "$HOST_IP/24" dev "$P-s0"
ip -n "$P-o" addr add "$PEER_IP/24" dev "$P-o0"
ip -n "$P-o" addr add 192.0.2.254/24 dev "$P-g1"
ip -n "$P-g" addr add "$CLIENT_IP/24" dev "$P-g0"
for l in s/s0 o/o0 o/g1 g/g0; do ip -n "$P-${l%/*}" link set "$P-${l#*/}" up; done
ip -n "$P-s" route add 198.51.100.0/24 dev "$P-s0"
ip -n "$P-s" route add 192.0.2.0/24 via "$PEER_IP" dev "$P-s0"
ip -n "$P-o" route add 203.0.113.0/24 dev "$P-o0"
ip -n "$P-g" route add 203.0.113.0/24 via 192.0.2.254 dev "$P-g0"
# STUN answers during set-up reach the load generator through the outside namespace's stack.
ip netns exec "$P-o" sysctl -qw net.ipv4.ip_forward=1
# The fast path's route look-ups (bpf_fib_lookup) need forwarding on its interface.
ip netns exec "$P-s" sysctl -qw "net.ipv4.conf.$P-s0.forwarding=1"
# Locally sent UDP leaves a veth with a partial checksum (offload); the fast path needs complete ones, as from a NIC.
ip netns exec "$P-g" ethtool -K "$P-g0" tx off >/dev/null
ip netns exec "$P-o" ethtool -K "$P-o0" tx off >/dev/null
ip netns exec "$P-s" ethtool -K "$P-s0" tx off >/dev/null
# The echo and the sink. XDP_TX onto a veth needs the other end in NAPI mode: its own XDP program (Traverse's) or
# GRO on (every other system) — on for all, so every system's packets take the same receive path.
ip -n "$P-o" link set dev "$P-o0" xdpdrv obj "$PEER_OBJECT" sec xdp
ip netns exec "$P-o" "$GEN_LOADER" "$GEN_OBJECT" "$P-g1" "$P-o0" "$SERVER_CPU" "$GEN_QUEUE"
ip -n "$P-s" link set dev "$P-s0" xdpdrv obj "$PEER_OBJECT" sec xdp program bench_pass
# The kernel's own run-time figures for BPF programs (run count and nanoseconds), restored at exit: they give the
# fast path's cost per packet inside its XDP program, which no process's CPU shows. Collecting them reads the clock
# twice per program run (~7 % of the core that runs the fast path, measured with perf), so they are on only for the
# lowest rate's step of each payload size, where nothing is near its ceiling.
BPF_STATS_WAS=$(sysctl -n kernel.bpf_stats_enabled)
# ns per run of the XDP program named $1 so far, and its run count.
prog_runs() {
  bpftool prog show -j | python3 -c 'import json, sys
p = [p for p in json.load(sys.stdin) if p.get("name") == sys.argv[1]]
print(sum(x.get("run_time_ns", 0) for x in p), sum(x.get("run_cnt", 0) for x in p))' "$1"
}
# The sink's count: per-CPU packets summed.
sink() {
  bpftool map dump name bench_sink -j | python3 -c 'import json, sys
print(sum(v["value"]["packets"] for e in json.load(sys.stdin) for v in e["formatted"]["values"]))'
}

S=(ip netns exec "$P-s")   # `ip netns exec` execs the program: $! is the program's own pid
ON_SERVER_CPU=(taskset -c "$SERVER_CPU")
start_system() { # name → SERVER_PID
  case "$1" in
    traverse | traverse-xdp)
      local xdp=()
      if [ "$1" = traverse-xdp ]; then
        xdp=(--xdp "$P-s0")
        ip -n "$P-s" link set dev "$P-s0" xdpdrv off
      fi
      "${S[@]}" "${ON_SERVER_CPU[@]}" "$TRAVERSE" serve --udp "$HOST_IP:3478" --tcp "$HOST_IP:3478" \
        --tls "$HOST_IP:5349" --http 127.0.0.1:0 --user "$USER_NAME:$PASSWORD" --realm "$REALM" --workers 1 \
        "${xdp[@]}" --set limits.max_allocations_per_user=0 --set limits.max_allocations_per_source=0 \
        --set limits.allocations_per_second_per_source=0 \
        --log-level warn,server=info >"$OUT/$1.log" 2>&1 &
      ;;
    coturn)
      "${S[@]}" "${ON_SERVER_CPU[@]}" turnserver -n --no-cli --no-tls --no-dtls -L "$HOST_IP" -E "$HOST_IP" \
        --listening-port 3478 --lt-cred-mech --user "$USER_NAME:$PASSWORD" --realm "$REALM" --relay-threads 1 \
        --min-port 49152 --max-port 65535 --no-multicast-peers --simple-log --log-file stdout \
        --pidfile "$OUT/turnserver-xdp.pid" >"$OUT/coturn-xdp.log" 2>&1 &
      ;;
    bare)
      "${S[@]}" "${ON_SERVER_CPU[@]}" "$BARE" --listen "$HOST_IP:3478" --relay-ip "$HOST_IP" --lifetime 900 \
        >"$OUT/bare.log" 2>&1 &
      ;;
  esac
  SERVER_PID=$!
  pids+=("$SERVER_PID")
  for _ in $(seq 50); do
    "${S[@]}" ss -lun | grep -q "$HOST_IP:3478" && break
    sleep 0.1
  done
  sleep 0.5
  [ "$1" != coturn ] || sleep "${COTURN_WAIT:-2}"
  if [ "$1" = traverse-xdp ]; then
    # The program is loaded after the listeners are bound: wait for the verdict.
    for _ in $(seq 100); do grep -q "XDP fast path" "$OUT/$1.log" && break; sleep 0.1; done
    grep -q "XDP fast path attached" "$OUT/$1.log" || { echo "the XDP fast path did not attach:"; cat "$OUT/$1.log"; exit 1; }
  fi
}
stop_system() {
  kill "$SERVER_PID" 2>/dev/null || true
  wait "$SERVER_PID" 2>/dev/null || true
  sleep 0.5
  ip -n "$P-s" link show "$P-s0" | grep -q "prog/xdp" ||
    ip -n "$P-s" link set dev "$P-s0" xdpdrv obj "$PEER_OBJECT" sec xdp program bench_pass
}

# Busy jiffies (everything but idle and iowait) of the whole machine and of the server's core.
busy() { awk '/^cpu / {print $2+$3+$4+$7+$8+$9}' /proc/stat; }
busy_core() { awk -v c="cpu$1" '$1 == c {print $2+$3+$4+$7+$8+$9}' /proc/stat; }
CLK_TCK=$(getconf CLK_TCK)
json() { python3 -c "import json,sys; print(json.load(sys.stdin)[sys.argv[1]])" "$1"; }
VALUES="$OUT/xdp-values.txt"
: >"$VALUES"

echo "== machine: $(nproc) cores, load average $(cut -d' ' -f1-3 /proc/loadavg) at the start; $(uname -r)"
echo "start $(cut -d' ' -f1-3 /proc/loadavg)" >"$OUT/xdp-load.txt"
for rep in $(seq "$REPEAT"); do
  # Every other repetition runs the systems in the reverse order, so that no system always meets the machine in the
  # same state.
  order=$SYSTEMS
  [ $((rep % 2)) = 1 ] || order=$(echo "$SYSTEMS" | tr ' ' '\n' | tac | tr '\n' ' ')
  for system in $order; do
    echo "== $system (repetition $rep of $REPEAT)"
    for size in 100 1000; do
      rates=$RATES_100
      [ "$size" = 1000 ] && rates=$RATES_1000
      stats=1
      for rate in $rates; do
        sysctl -qw "kernel.bpf_stats_enabled=$stats"
        start_system "$system"
        b0=$(busy); c0=$(busy_core "$SERVER_CPU"); k0=$(sink); read -r n0 r0 < <(prog_runs traverse_relay)
        ip netns exec "$P-g" taskset -c "$LOAD_CPU" "$LOADGEN" --server "$HOST_IP:3478" --peer "$PEER_IP:$PEER_PORT" \
          --user "$USER_NAME" --password "$PASSWORD" --allocations "$ALLOCATIONS" --rate "$rate" \
          --duration "$STEP_SECONDS" --size "$size" --no-receive --pace-us "$PACE_US" >"$OUT/xdp-run.json" \
          || { echo "  loadgen failed at $rate/s"; stop_system; continue; }
        sleep 0.2 # the last echoes in flight
        b1=$(busy); c1=$(busy_core "$SERVER_CPU"); k1=$(sink); read -r n1 r1 < <(prog_runs traverse_relay)
        stop_system
        sent=$(json sent <"$OUT/xdp-run.json")
        secs=$(json send_secs <"$OUT/xdp-run.json")
        read -r pps loss cpu ppc core offered < <(python3 -c "
echoes, sent, secs = $k1 - $k0, $sent, $secs
machine, core = ($b1 - $b0) / $CLK_TCK, ($c1 - $c0) / $CLK_TCK
print(round(echoes / secs), round(100 * max(sent - echoes, 0) / sent, 2) if sent else 0,
      round(machine, 2), round(2 * echoes / machine) if machine else 0,
      round(core, 2), round(sent / secs))")
        echo "$system $size $rate $pps $loss $cpu $ppc $core $offered $rep" >>"$VALUES"
        echo "  $size B @ $rate/s (sent $offered/s): delivered $pps echoes/s, loss $loss %;" \
          "whole machine $cpu CPU-s → $ppc relayed pkt/CPU-s; the server's core (1) busy $core CPU-s"
        if [ "$system" = traverse-xdp ] && [ "$stats" = 1 ] && [ "$r1" -gt "$r0" ]; then
          echo "    fast path: $((r1 - r0)) runs of the XDP program, $(( (n1 - n0) / (r1 - r0) )) ns each on average"
        fi
        stats=0
      done
    done
  done
done
echo "end $(cut -d' ' -f1-3 /proc/loadavg)" >>"$OUT/xdp-load.txt"
echo "== load average at the end: $(cut -d' ' -f1-3 /proc/loadavg)"

python3 - "$VALUES" "$SYSTEMS" <<'EOF'
import statistics, sys
rows = [l.split() for l in open(sys.argv[1]) if l.strip()]
systems = sys.argv[2].split()
def steps(system, size, rep):
    # (offered, delivered, loss, machine CPU-s, pkts per machine CPU-s, server core CPU-s, sent/s)
    return [(int(r[2]), int(r[3]), float(r[4]), float(r[5]), int(r[6]), float(r[7]), int(r[8]))
            for r in rows if r[0] == system and r[1] == size and r[9] == rep]
reps = sorted({r[9] for r in rows})
def spread(values):
    if not values:
        return None, "none"
    m = statistics.median(values)
    f = (lambda v: f"{v:.2f}") if isinstance(values[0], float) else (lambda v: f"{round(v)}")
    return m, f"{f(m)} ({f(min(values))}–{f(max(values))})" if len(values) > 1 else f(m)
print()
print(f"Medians over {len(reps)} repetition(s), (min–max):")
print()
print("| payload | system | highest delivered echoes/s at ≤ 1 % loss | relayed packets per whole-machine CPU-s at the lowest step | server core CPU-s at the lowest step |")
print("|---|---|---|---|---|")
best = {}
for size in ("100", "1000"):
    for s in systems:
        tops, per_cpu, core = [], [], []
        for rep in reps:
            st = steps(s, size, rep)
            if not st:
                continue
            ok = [x for x in st if x[2] <= 1.0]
            tops.append(max(x[1] for x in ok) if ok else 0)
            low = min(st, key=lambda x: x[0])
            per_cpu.append(low[4])
            core.append(low[5])
        (t, ts), (c, cs), (_, ks) = spread(tops), spread(per_cpu), spread(core)
        best[(s, size)] = (t, c)
        print(f"| {size} B | {s} | {ts} | {cs} | {ks} |")
print()
for size in ("100", "1000"):
    for a, b in (("traverse-xdp", "coturn"), ("traverse-xdp", "traverse"), ("traverse-xdp", "bare"), ("traverse", "coturn"), ("bare", "coturn")):
        (ra, ma), (rb, mb) = best.get((a, size), (None, None)), best.get((b, size), (None, None))
        if ra and rb and ma and mb:
            print(f"{size} B {a}/{b}: highest rate x{ra / rb:.2f}; packets per whole-machine CPU-s at the lowest "
                  f"step x{ma / mb:.2f}")
EOF
