#!/usr/bin/env bash
# Relay benchmark: Traverse against coturn, one after the other, under the same load, on this machine.
#
#   sudo bench/relay.sh [SECONDS]      # default 10 s per traffic run
#   SERVERS=traverse MEMORY_RUNS= TRAFFIC_RUNS=100:150000 bench/relay.sh 5   # a subset, while tuning
#
# Both servers get one relay thread, the same static user and realm, and listen on 198.51.100.1 (a documentation
# address on a veth into a network namespace the script creates). The echo peer (coturn's turnutils_peer) runs in
# that namespace on 198.51.100.2 — coturn refuses loopback peers, and 198.51.100.0/24 is what the network rule
# allows. Load comes from traverse-loadgen (many allocations, ChannelData echoed by the peer) and from
# turnutils_uclient. For each server it prints relayed packets/s, loss, server CPU-seconds per million relayed
# packets (a relayed packet = one ChannelData in plus one echo out), and server memory per allocation at 1,000 and
# 10,000 allocations, then the Traverse/coturn ratios. Everything is bounded in time and count; the namespace and the
# processes it started are removed on exit.
set -euo pipefail
cd "$(dirname "$0")/.."
SECONDS_PER_RUN="${1:-10}"
NS=trvbench-peer
HOST_IP=198.51.100.1
PEER_IP=198.51.100.2
PEER_PORT=3480
USER_NAME=bench
PASSWORD=bench
REALM=bench
OUT=bench/out
mkdir -p "$OUT"
RESULTS="$OUT/results.md"

[ "$(id -u)" = 0 ] || { echo "bench/relay.sh needs root (network namespace)"; exit 1; }
for tool in turnserver turnutils_peer turnutils_uclient ip; do
  command -v "$tool" >/dev/null || { echo "missing $tool: apt-get install coturn iproute2"; exit 1; }
done
ulimit -n "$(ulimit -Hn)"

pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  sleep 0.3
  for p in "${pids[@]}"; do kill -9 "$p" 2>/dev/null || true; done
  ip netns del "$NS" 2>/dev/null || true
  ip link del trvb0 2>/dev/null || true
}
trap cleanup EXIT

cargo build --release -q -p traverse -p traverse-loadgen
TRAVERSE=target/release/traverse
LOADGEN=target/release/traverse-loadgen

# The peer's namespace, reached over a veth pair.
ip netns del "$NS" 2>/dev/null || true
ip link del trvb0 2>/dev/null || true
ip netns add "$NS"
ip link add trvb0 type veth peer name trvb1
ip link set trvb1 netns "$NS"
ip addr add "$HOST_IP/24" dev trvb0
ip link set trvb0 up
ip netns exec "$NS" ip addr add "$PEER_IP/24" dev trvb1
ip netns exec "$NS" ip link set trvb1 up
ip netns exec "$NS" ip link set lo up
ip netns exec "$NS" turnutils_peer -L "$PEER_IP" -p "$PEER_PORT" >/dev/null 2>&1 &
pids+=($!)
sleep 0.5

CLK_TCK=$(getconf CLK_TCK)
cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }
rss_kib() { awk '/VmRSS/ {print $2}' "/proc/$1/status"; }

start_server() { # name → sets SERVER_PID
  case "$1" in
    traverse)
      "$TRAVERSE" serve --udp "$HOST_IP:3478" --tcp "$HOST_IP:3478" --tls "$HOST_IP:5349" \
        --user "$USER_NAME:$PASSWORD" --realm "$REALM" --workers 1 --max-allocations 20000 \
        --log-level warn >"$OUT/traverse.log" 2>&1 &
      ;;
    coturn)
      turnserver -n --no-cli --no-tls --no-dtls -L "$HOST_IP" -E "$HOST_IP" --listening-port 3478 \
        --lt-cred-mech --user "$USER_NAME:$PASSWORD" --realm "$REALM" --relay-threads 1 \
        --min-port 49152 --max-port 65535 --no-multicast-peers --simple-log --log-file stdout \
        --pidfile "$OUT/turnserver.pid" >"$OUT/coturn.log" 2>&1 &
      ;;
  esac
  SERVER_PID=$!
  pids+=("$SERVER_PID")
  for _ in $(seq 50); do
    ss -lun | grep -q "$HOST_IP:3478" && break
    sleep 0.1
  done
  sleep 0.5
}

stop_server() {
  kill "$SERVER_PID" 2>/dev/null || true
  wait "$SERVER_PID" 2>/dev/null || true
  sleep 0.5
}

json() { python3 -c "import json,sys; print(json.load(sys.stdin)[sys.argv[1]])" "$1"; }

declare -A R
for server in ${SERVERS:-traverse coturn}; do
  echo "== $server"
  # Memory per allocation: RSS growth while N allocations (each with a channel) are held.
  for n in ${MEMORY_RUNS-1000 10000}; do
    start_server "$server"
    base=$(rss_kib "$SERVER_PID")
    "$LOADGEN" --server "$HOST_IP:3478" --peer "$PEER_IP:$PEER_PORT" --user "$USER_NAME" --password "$PASSWORD" \
      --allocations "$n" --rate 0 --hold 4 >"$OUT/hold.txt" 2>&1 &
    lg=$!
    pids+=("$lg")
    for _ in $(seq 600); do grep -q READY "$OUT/hold.txt" 2>/dev/null && break; sleep 0.1; done
    sleep 1
    grep -q READY "$OUT/hold.txt" || { echo "allocation phase failed: $(cat "$OUT/hold.txt")"; exit 1; }
    after=$(rss_kib "$SERVER_PID")
    wait "$lg" || true
    R[$server,mem$n]=$(python3 -c "print(round(($after - $base) * 1024 / $n))")
    echo "  $n allocations: RSS $base → $after KiB, ${R[$server,mem$n]} bytes/allocation"
    stop_server
  done

  # Throughput and CPU: 100 allocations, fixed offered rates, 100- and 1000-byte payloads; the last rate is more than
  # one relay thread and the echo peer can carry, so it shows where each server saturates.
  for run in ${TRAFFIC_RUNS:-100:40000 1000:20000 100:150000}; do
    size=${run%%:*}
    rate=${run##*:}
    key="$size@$rate"
    start_server "$server"
    t0=$(cpu_ticks "$SERVER_PID")
    "$LOADGEN" --server "$HOST_IP:3478" --peer "$PEER_IP:$PEER_PORT" --user "$USER_NAME" --password "$PASSWORD" \
      --allocations 100 --rate "$rate" --duration "$SECONDS_PER_RUN" --size "$size" >"$OUT/run.json"
    t1=$(cpu_ticks "$SERVER_PID")
    stop_server
    received=$(json received <"$OUT/run.json")
    R[$server,pps$key]=$(json received_pps <"$OUT/run.json")
    R[$server,loss$key]=$(json loss_pct <"$OUT/run.json")
    R[$server,rtt$key]=$(json rtt_avg_us <"$OUT/run.json")
    # Each echoed packet crossed the relay twice (client→peer and peer→client).
    R[$server,cpu$key]=$(python3 -c "t=($t1-$t0)/$CLK_TCK; p=2*$received/1e6; print(round(t/p, 3) if p else 'n/a')")
    echo "  ${size} B @ $rate pps offered: received ${R[$server,pps$key]} pps, loss ${R[$server,loss$key]} %, rtt ${R[$server,rtt$key]} µs, ${R[$server,cpu$key]} CPU-s per M relayed"
  done

  # coturn's own load client: 50 clients x 1000 messages of 100 bytes, 5 ms apart.
  start_server "$server"
  t0=$(cpu_ticks "$SERVER_PID")
  timeout 120 turnutils_uclient -u "$USER_NAME" -w "$PASSWORD" -e "$PEER_IP" -r "$PEER_PORT" -m 50 -n 1000 -l 100 -z 5 \
    "$HOST_IP" >"$OUT/uclient-$server.txt" 2>&1 || true
  t1=$(cpu_ticks "$SERVER_PID")
  stop_server
  R[$server,uclient_loss]=$(grep -oE 'Total lost packets [0-9]+ \([0-9.]+%\)' "$OUT/uclient-$server.txt" | grep -oE '[0-9.]+%' | tail -1)
  R[$server,uclient_cpu]=$(python3 -c "print(round(($t1-$t0)/$CLK_TCK, 2))")
  echo "  turnutils_uclient 50x1000x100B: loss ${R[$server,uclient_loss]:-?}, server CPU ${R[$server,uclient_cpu]} s"
done

ratio() { python3 -c "a,b='$1','$2'
try: print(round(float(a)/float(b), 2))
except Exception: print('n/a')"; }

{
  echo "| metric | Traverse | coturn | Traverse/coturn |"
  echo "|---|---|---|---|"
  for key in 100@40000 1000@20000 100@150000; do
    echo "| relayed pps, ${key} offered | ${R[traverse,pps$key]} | ${R[coturn,pps$key]} | $(ratio "${R[traverse,pps$key]}" "${R[coturn,pps$key]}") |"
    echo "| loss %, ${key} | ${R[traverse,loss$key]} | ${R[coturn,loss$key]} | |"
    echo "| avg RTT µs, ${key} | ${R[traverse,rtt$key]} | ${R[coturn,rtt$key]} | $(ratio "${R[traverse,rtt$key]}" "${R[coturn,rtt$key]}") |"
    echo "| server CPU-s per M relayed, ${key} | ${R[traverse,cpu$key]} | ${R[coturn,cpu$key]} | $(ratio "${R[traverse,cpu$key]}" "${R[coturn,cpu$key]}") |"
  done
  for n in 1000 10000; do
    echo "| bytes per allocation at $n | ${R[traverse,mem$n]} | ${R[coturn,mem$n]} | $(ratio "${R[traverse,mem$n]}" "${R[coturn,mem$n]}") |"
  done
  echo "| turnutils_uclient 50×1000×100 B loss | ${R[traverse,uclient_loss]:-?} | ${R[coturn,uclient_loss]:-?} | |"
  echo "| turnutils_uclient server CPU-s | ${R[traverse,uclient_cpu]} | ${R[coturn,uclient_cpu]} | $(ratio "${R[traverse,uclient_cpu]}" "${R[coturn,uclient_cpu]}") |"
} | tee "$RESULTS"
