#!/usr/bin/env bash
# The kernel fast path against the socket relays: Traverse with XDP (--xdp), Traverse without, coturn, and a bare
# UDP forwarder (crates/loadgen/src/bin/traverse-bare-forwarder.rs: one receive and one send per packet, nothing
# else), one after the other under the same load, in one run.
#
#   sudo bench/relay-xdp.sh [SECONDS]        # default 5 s per step; ~6 minutes
#   SYSTEMS="traverse-xdp coturn" RATES_100="40000 80000" RATES_1000= sudo bench/relay-xdp.sh 3   # a subset
#
# XDP on a veth relays only packets that arrive on it, so the load generator and the echo peer sit in namespaces of
# their own, routed to the server's namespace through a router namespace (the same topology as
# crates/traverse/tests/xdp.rs):
#
#   loadgen ns 192.0.2.1 ─┐                          ┌─ server ns 203.0.113.1 (the system under test, one thread)
#                         ├─ router ns (forwarding) ─┤
#   peer ns 198.51.100.1 ─┘  (turnutils_peer echoes)
#
# For each system and payload size (100 B, 1000 B), traverse-loadgen (100 allocations, one channel each) offers a
# ladder of rates for SECONDS each. Two figures per step:
#   - relayed packets per WHOLE-MACHINE CPU-second: (2 × echoes received) ÷ busy CPU time of all cores from
#     /proc/stat (user, nice, system, irq, softirq, steal) — XDP runs in softirq, which the server's own utime/stime
#     never sees. The load generator, the echo peer and the router's forwarding are in that CPU too, the same for
#     every system, so the differences between systems are the relays';
#   - delivered echoes per second and loss; the table's "highest rate" is the highest delivered rate of a step with
#     at most 1 % loss.
# The machine is shared with other engineers' builds: the load average is printed before and after, and belongs
# with the figures. Everything is bounded in time and count; namespaces and processes are removed on exit.
set -euo pipefail
cd "$(dirname "$0")/.."
STEP_SECONDS="${1:-5}"
P=trvx
HOST_IP=203.0.113.1
PEER_IP=198.51.100.1
PEER_PORT=3480
USER_NAME=bench
PASSWORD=bench
REALM=bench
OUT=bench/out
mkdir -p "$OUT"
SYSTEMS="${SYSTEMS:-traverse-xdp traverse coturn bare}"
RATES_100="${RATES_100-10000 20000 30000 40000}"
RATES_1000="${RATES_1000-10000 20000 30000}"

[ "$(id -u)" = 0 ] || { echo "bench/relay-xdp.sh needs root (namespaces, XDP)"; exit 1; }
for tool in turnserver turnutils_peer ip ethtool python3; do
  command -v "$tool" >/dev/null || { echo "missing $tool: apt-get install coturn iproute2 ethtool python3"; exit 1; }
done
ulimit -n "$(ulimit -Hn)"

pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  sleep 0.3
  for p in "${pids[@]}"; do kill -9 "$p" 2>/dev/null || true; done
  # Anything still running in the namespaces this script made is this script's.
  for n in s r c p; do
    for p in $(ip netns pids "$P-$n" 2>/dev/null); do kill -9 "$p" 2>/dev/null || true; done
    ip netns del "$P-$n" 2>/dev/null || true
  done
}
trap cleanup EXIT

[ -n "${NO_BUILD:-}" ] || cargo build --release -q -p traverse -p traverse-loadgen
TRAVERSE=$PWD/target/release/traverse
LOADGEN=$PWD/target/release/traverse-loadgen
BARE=$PWD/target/release/traverse-bare-forwarder
OBJECT=$(ls -t target/release/build/traverse-xdp-*/out/relay.o 2>/dev/null | head -1)
[ -n "$OBJECT" ] || { echo "no XDP object under target/release/build: install clang and libbpf-dev, rebuild"; exit 1; }

cleanup
for n in s r c p; do ip netns add "$P-$n"; ip -n "$P-$n" link set lo up; done
ip link add "$P-s0" netns "$P-s" type veth peer name "$P-r0" netns "$P-r"
ip link add "$P-c0" netns "$P-c" type veth peer name "$P-r1" netns "$P-r"
ip link add "$P-p0" netns "$P-p" type veth peer name "$P-r2" netns "$P-r"
ip -n "$P-s" addr add "$HOST_IP/24" dev "$P-s0"
ip -n "$P-r" addr add 203.0.113.254/24 dev "$P-r0"
ip -n "$P-c" addr add 192.0.2.1/24 dev "$P-c0"
ip -n "$P-r" addr add 192.0.2.254/24 dev "$P-r1"
ip -n "$P-p" addr add "$PEER_IP/24" dev "$P-p0"
ip -n "$P-r" addr add 198.51.100.254/24 dev "$P-r2"
for x in s:s0 r:r0 r:r1 r:r2 c:c0 p:p0; do ip -n "$P-${x%%:*}" link set "$P-${x#*:}" up; done
ip -n "$P-s" route add default via 203.0.113.254
ip -n "$P-c" route add default via 192.0.2.254
ip -n "$P-p" route add default via 198.51.100.254
ip netns exec "$P-r" sysctl -qw net.ipv4.ip_forward=1
# The fast path's route look-ups (bpf_fib_lookup) need forwarding on its interface.
ip netns exec "$P-s" sysctl -qw "net.ipv4.conf.$P-s0.forwarding=1"
# A veth accepts XDP_TX frames only with an XDP program on its other end: the same object, maps empty, passes all.
ip -n "$P-r" link set dev "$P-r0" xdpdrv obj "$OBJECT" sec xdp
# Locally sent UDP leaves a veth with a partial checksum (offload); the fast path needs complete ones, as from a NIC.
ip netns exec "$P-c" ethtool -K "$P-c0" tx off >/dev/null
ip netns exec "$P-p" ethtool -K "$P-p0" tx off >/dev/null
ip netns exec "$P-p" turnutils_peer -L "$PEER_IP" -p "$PEER_PORT" >/dev/null 2>&1 &
PEER_PID=$!
pids+=("$PEER_PID")
sleep 0.5

S=(ip netns exec "$P-s")   # `ip netns exec` execs the program: $! is the program's own pid
start_system() { # name → SERVER_PID
  case "$1" in
    traverse | traverse-xdp)
      local xdp=()
      [ "$1" = traverse-xdp ] && xdp=(--xdp "$P-s0")
      "${S[@]}" "$TRAVERSE" serve --udp "$HOST_IP:3478" --tcp "$HOST_IP:3478" --tls "$HOST_IP:5349" \
        --http 127.0.0.1:0 --user "$USER_NAME:$PASSWORD" --realm "$REALM" --workers 1 "${xdp[@]}" \
        --set limits.max_allocations_per_user=0 --set limits.max_allocations_per_source=0 \
        --log-level warn,server=info >"$OUT/$1.log" 2>&1 &
      ;;
    coturn)
      "${S[@]}" turnserver -n --no-cli --no-tls --no-dtls -L "$HOST_IP" -E "$HOST_IP" --listening-port 3478 \
        --lt-cred-mech --user "$USER_NAME:$PASSWORD" --realm "$REALM" --relay-threads 1 \
        --min-port 49152 --max-port 65535 --no-multicast-peers --simple-log --log-file stdout \
        --pidfile "$OUT/turnserver-xdp.pid" >"$OUT/coturn-xdp.log" 2>&1 &
      ;;
    bare)
      "${S[@]}" "$BARE" --listen "$HOST_IP:3478" --relay-ip "$HOST_IP" --lifetime 900 >"$OUT/bare.log" 2>&1 &
      ;;
  esac
  SERVER_PID=$!
  pids+=("$SERVER_PID")
  for _ in $(seq 50); do
    "${S[@]}" ss -lun | grep -q "$HOST_IP:3478" && break
    sleep 0.1
  done
  sleep 0.5
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
}

# Busy jiffies of all cores: everything but idle and iowait; and the interrupt and softirq part alone.
busy() { awk '/^cpu / {print $2+$3+$4+$7+$8+$9}' /proc/stat; }
softirq() { awk '/^cpu / {print $7+$8}' /proc/stat; }
ticks() { awk '{print $14 + $15}' "/proc/$1/stat" 2>/dev/null || echo 0; }
# The load generator's own CPU (user + system), from its rusage, on stderr's last line.
run_loadgen() {
  python3 -c 'import resource, subprocess, sys
rc = subprocess.run(sys.argv[1:]).returncode
r = resource.getrusage(resource.RUSAGE_CHILDREN)
print(f"{r.ru_utime + r.ru_stime:.3f}", file=sys.stderr)
sys.exit(rc)' "$@"
}
CLK_TCK=$(getconf CLK_TCK)
json() { python3 -c "import json,sys; print(json.load(sys.stdin)[sys.argv[1]])" "$1"; }
VALUES="$OUT/xdp-values.txt"
: >"$VALUES"

echo "== machine: $(nproc) cores, load average $(cut -d' ' -f1-3 /proc/loadavg) at the start; $(uname -r)"
echo "start $(cut -d' ' -f1-3 /proc/loadavg)" >"$OUT/xdp-load.txt"
for system in $SYSTEMS; do
  echo "== $system"
  for size in 100 1000; do
    rates=$RATES_100
    [ "$size" = 1000 ] && rates=$RATES_1000
    for rate in $rates; do
      start_system "$system"
      b0=$(busy); q0=$(softirq); s0=$(ticks "$SERVER_PID"); e0=$(ticks "$PEER_PID")
      run_loadgen ip netns exec "$P-c" "$LOADGEN" --server "$HOST_IP:3478" --peer "$PEER_IP:$PEER_PORT" \
        --user "$USER_NAME" --password "$PASSWORD" --allocations 100 --rate "$rate" --duration "$STEP_SECONDS" \
        --size "$size" >"$OUT/xdp-run.json" 2>"$OUT/xdp-loadgen-cpu.txt" \
        || { echo "  loadgen failed at $rate/s"; stop_system; continue; }
      b1=$(busy); q1=$(softirq); s1=$(ticks "$SERVER_PID"); e1=$(ticks "$PEER_PID")
      lg=$(tail -1 "$OUT/xdp-loadgen-cpu.txt")
      stop_system
      received=$(json received <"$OUT/xdp-run.json")
      pps=$(json received_pps <"$OUT/xdp-run.json" | python3 -c "print(round(float(input())))")
      loss=$(json loss_pct <"$OUT/xdp-run.json" | python3 -c "print(round(float(input()), 2))")
      # The busy time covers set-up and the 1 s drain too (the same for every system).
      cpu=$(python3 -c "print(round(($b1-$b0)/$CLK_TCK, 2))")
      ppc=$(python3 -c "t=($b1-$b0)/$CLK_TCK; print(round(2*$received/t) if t > 0 else 0)")
      # The part of the machine this run used: interrupts and softirq of all cores (where XDP and the veths' receive
      # paths run) + the server, the echo peer and the load generator (user and system).
      ours=$(python3 -c "print(round(($q1-$q0+$s1-$s0+$e1-$e0)/$CLK_TCK + $lg, 2))")
      ppo=$(python3 -c "t=$ours; print(round(2*$received/t) if t > 0 else 0)")
      sirq=$(python3 -c "print(round(($q1-$q0)/$CLK_TCK, 2))")
      srv=$(python3 -c "print(round(($s1-$s0)/$CLK_TCK, 2))")
      echo "$system $size $rate $pps $loss $cpu $ppc $ours $ppo $sirq $srv" >>"$VALUES"
      echo "  $size B @ $rate/s: delivered $pps echoes/s, loss $loss %; machine CPU $cpu s → $ppc pkt/CPU-s;" \
        "this run's CPU $ours s (softirq $sirq, server $srv, loadgen $lg) → $ppo pkt/CPU-s"
    done
  done
done
echo "end $(cut -d' ' -f1-3 /proc/loadavg)" >>"$OUT/xdp-load.txt"
echo "== load average at the end: $(cut -d' ' -f1-3 /proc/loadavg)"

python3 - "$VALUES" "$SYSTEMS" <<'EOF'
import sys
rows = [l.split() for l in open(sys.argv[1]) if l.strip()]
systems = sys.argv[2].split()
def steps(system, size):
    # (offered, delivered, loss, machine CPU, per machine CPU-s, this run's CPU, per this run's CPU-s)
    return [(int(r[2]), int(r[3]), float(r[4]), float(r[5]), int(r[6]), float(r[7]), int(r[8])) for r in rows
            if r[0] == system and r[1] == size]
print()
print("| payload | system | highest delivered echoes/s at <= 1 % loss | relayed packets per CPU-s at the lowest step: whole machine | this run's CPU |")
print("|---|---|---|---|---|")
best = {}
for size in ("100", "1000"):
    for s in systems:
        st = steps(s, size)
        ok = [x for x in st if x[2] <= 1.0]
        top = max(ok, key=lambda x: x[1]) if ok else None
        low = min(st, key=lambda x: x[0]) if st else None
        best[(s, size)] = (top, low)
        print(f"| {size} B | {s} | {top[1] if top else 'none'} (offered {top[0] if top else '-'}) | "
              f"{low[4] if low else '-'} | {low[6] if low else '-'} |")
print()
for size in ("100", "1000"):
    def get(s, i, j):
        v = best.get((s, size), (None, None))[i]
        return v[j] if v else None
    for a, b in (("traverse-xdp", "coturn"), ("traverse-xdp", "traverse"), ("traverse-xdp", "bare"), ("traverse", "coturn"), ("bare", "coturn")):
        ra, rb = get(a, 0, 1), get(b, 0, 1)
        ca, cb = get(a, 1, 4), get(b, 1, 4)
        oa, ob = get(a, 1, 6), get(b, 1, 6)
        if ra and rb and ca and cb and oa and ob:
            print(f"{size} B {a}/{b}: highest rate x{ra / rb:.2f}; packets per CPU-s at the lowest step: "
                  f"whole machine x{ca / cb:.2f}, this run's CPU x{oa / ob:.2f}")
EOF
