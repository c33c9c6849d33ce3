#!/usr/bin/env bash
# Relay benchmark: Traverse against coturn, one after the other, under the same load, on this machine.
#
#   sudo bench/relay.sh [SECONDS]      # default 10 s per traffic run, REPEAT=2 repetitions; ~8 minutes
#   SERVERS=traverse MEMORY_RUNS= TRAFFIC_RUNS=100:150000 UCLIENT_RUNS= REPEAT=1 bench/relay.sh 5   # a subset
#   STRACE=4 REPEAT=1 MEMORY_RUNS= UCLIENT_RUNS=100 bench/relay.sh   # syscall counts of each server (strace -c -f,
#       4 s into each traffic run, bench/out/strace-*.txt); strace slows the server, so ignore that run's CPU figures
#   ALLOCS=1 REPEAT=1 MEMORY_RUNS= UCLIENT_RUNS= bench/relay.sh   # heap allocations per relayed packet of each
#       server in steady traffic (2 s into each traffic run until 1 s before its end: perf uprobes on the allocators'
#       entry points, jemalloc's in Traverse and glibc's in every server; bench/out/allocs-*.txt); the probes slow
#       an allocating server: ignore that run's CPU figures
#   PERF=3 REPEAT=1 MEMORY_RUNS= UCLIENT_RUNS= bench/relay.sh   # a profile of each server in each traffic run
#       (perf record -g for 3 s, 2 s into the run; bench/out/perf-<server>-<size>-<rate>.data, for perf report -i)
#   MEMORY_TRANSPORT=tcp MEMORY_RUNS=5000 TRAFFIC_RUNS= UCLIENT_RUNS= bench/relay.sh   # bytes per allocation held
#       over its own TURN-over-TCP connection (each client idle after its ChannelBind); tls and tls-single: over TLS
#   UCLIENT_TRANSPORT=tcp MEMORY_RUNS= TRAFFIC_RUNS= bench/relay.sh   # coturn's client over TURN-over-TCP (or tls)
#   CONNECTION_RATE=1000000 MEMORY_TRANSPORT=tls ... bench/relay.sh   # Traverse with a per-source connection rate
#       limit that refuses nothing, to price its check (0, no limit, by default: the runs connect from one address)
#   ALLOCATION_RATE=1000000 ... bench/relay.sh   # the same for the per-source rate of new allocations
#   PREV_HAS_RATES=1 TRAVERSE_PREV=... bench/relay.sh   # pass both rate keys to traverse-prev too (30452df and later)
#   SERVERS="traverse traverse-nocoalesce coturn" bench/relay.sh   # also Traverse with wake-up coalescing off
#       (limits.coalesce_us=0), to see what it buys; each extra server gets its own column and ratio to coturn
#   SERVERS="traverse forwarder coturn" bench/relay.sh   # also the bare UDP forwarder (traverse-bare-forwarder: one
#       receive and one send per packet, no TURN checks), the floor a socket relay can reach; the table then gives
#       Traverse's CPU per relayed packet as a multiple of the forwarder's (loadgen runs only: it cannot authenticate)
#   SERVERS="traverse forwarder uring coturn" bench/relay.sh   # also the bare forwarder on io_uring
#       (traverse-uring-forwarder: every receive and send an io_uring operation, one io_uring_enter per wake-up for
#       many sockets); the table adds its CPU per relayed packet as a multiple of the epoll forwarder's.
#       SERVERS="... uring-ms" adds it with multishot receives (--multishot: one receive operation per socket for its
#       whole life, into buffers the kernel picks from a ring of provided buffers), with the same ratio
#   SERVERS="traverse traverse-2w" TRAFFIC_RUNS=100:150000 bench/relay.sh   # scaling with cores: Traverse with 2
#       workers beside 1; the table adds "2 workers / 1" (relayed packets per CPU-s and delivered echoes, the latter at
#       saturation being what a second core buys). Give each its cores with SERVER_CPUS / LOAD_CPUS (taskset lists:
#       e.g. SERVER_CPUS=0-1 LOAD_CPUS=2-3 keeps the load generator and the echo peer off the server's cores; on a
#       2-core machine they share the cores, and the script says so); LOAD_THREADS=N splits the traffic runs' load
#       generator over N threads (one thread sends and receives at most ~150 000 packets/s: less than 2 workers carry).
#       On a 2-core machine, bench/relay-cores.sh measures what the second worker buys with no load generator on
#       the cores (an XDP loop on the far side of a veth).
#   SERVERS="traverse traverse-ring forwarder coturn" bench/relay.sh   # also Traverse with relay.io_uring=true
#       (relay sockets receiving through the worker's io_uring; "traverse" runs the default, every relay socket on
#       the reactor: its own task and recvmmsg). SERVERS="traverse-reactor ..." sets relay.io_uring=false explicitly,
#       for builds whose default was the ring; the table then adds Traverse's CPU per packet over the reactor's
#   TRAVERSE_PREV=/tmp/traverse-old SERVERS="traverse traverse-prev coturn" bench/relay.sh   # also another build
#       of Traverse (e.g. the commit before a change, built and copied aside), run with the same flags; the table adds
#       Traverse's CPU per relayed packet as a multiple of that build's: what the change bought, in one run
#   SERVERS="traverse traverse-nonap coturn" PACE_US=100 bench/relay.sh   # also Traverse with relay.coalesce_us=0
#       (a worker busy relaying sleeps at once instead of napping first); RELAY_NAP_US=N runs "traverse" (and the other
#       Traverse variants but traverse-prev) with relay.coalesce_us=N instead of the default
#   PACE_US=100 bench/relay.sh   # smoothly paced arrivals: the load generator sends every 100 µs what is due,
#       instead of each millisecond's packets in one burst (PACE_US=1000, the default), which flatters a server that
#       drains many packets per wake-up
#   TRAIN=4 bench/relay.sh   # each allocation sends 4 packets back to back before the next one's turn (a video frame's
#       packets leave a browser together; default 1, round-robin): Traverse sends such a run as one GSO message
#       (relay.gso); SERVERS="traverse traverse-nogso ..." adds Traverse with relay.gso=false
#
# Both servers get one relay thread, the same static user and realm, and listen on 198.51.100.1 (a documentation
# address on a veth into a network namespace the script creates). The echo peer (coturn's turnutils_peer) runs in
# that namespace on 198.51.100.2 — coturn refuses loopback peers, and 198.51.100.0/24 is what the network rule
# allows. Load comes from traverse-loadgen (many allocations, ChannelData echoed by the peer) and from
# turnutils_uclient (50 clients, 100- and 1000-byte messages). For each server it prints relayed packets/s, loss,
# RTT, relayed packets per server CPU-second (a relayed packet = one ChannelData in and its payload out to the peer,
# or one datagram from the peer and its ChannelData out; each echo counts twice; CPU = utime+stime of all the
# server's threads), server memory (RSS growth) per allocation, set-up time and CPU at idle ($IDLE s of silence) at
# $MEMORY_RUNS allocations (default 1,000 and 10,000; up to the fd limit less a few hundred, a larger run is skipped
# with the reason; more than one address's relay ports hold go on several addresses, see RELAY_IPS below), then the
# Traverse/coturn ratios. The set runs $REPEAT times, alternating which server goes first; the table gives medians,
# the (min–max) range and the ratio of the medians. Everything is bounded in time and count; the namespace and the
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
# Core split: the server on SERVER_CPUS, the load generators and the echo peer on LOAD_CPUS (unset: no pinning).
on_server_cpus=(); on_load_cpus=()
[ -n "${SERVER_CPUS:-}" ] && on_server_cpus=(taskset -c "$SERVER_CPUS")
[ -n "${LOAD_CPUS:-}" ] && on_load_cpus=(taskset -c "$LOAD_CPUS")

pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  sleep 0.3
  for p in "${pids[@]}"; do kill -9 "$p" 2>/dev/null || true; done
  ip netns del "$NS" 2>/dev/null || true
  ip link del trvb0 2>/dev/null || true
  [ -z "${ALLOCS:-}" ] || perf probe -q -d 'allocs:*' 2>/dev/null || true
}
trap cleanup EXIT

[ -n "${NO_BUILD:-}" ] || cargo build --release -q -p traverse -p traverse-loadgen
TRAVERSE=target/release/traverse
LOADGEN=target/release/traverse-loadgen
BARE=target/release/traverse-bare-forwarder
URING=target/release/traverse-uring-forwarder

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
ip netns exec "$NS" "${on_load_cpus[@]}" turnutils_peer -L "$PEER_IP" -p "$PEER_PORT" >/dev/null 2>&1 &
pids+=($!)
sleep 0.5

CLK_TCK=$(getconf CLK_TCK)
cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }
# Relay ports below the ephemeral range (32768-60999 here), for both servers: the load generator's thousands of client
# sockets take ephemeral ports, and a relay range overlapping them ran out at ~11 000 allocations (508).
RELAY_PORT_MIN="${RELAY_PORT_MIN:-10000}"
RELAY_PORT_MAX="${RELAY_PORT_MAX:-32000}"
# More allocations than one relay address has ports for (with a tenth to spare, since ports are drawn at random) go
# on several: 198.51.100.1 and then 198.51.100.11, .12, … on the host's end of the veth, given to both servers
# (Traverse's relay.bind_v4 list, coturn's -E per address). Likewise the load generator's client sockets, beyond
# CLIENTS_PER_IP (~28 000 ephemeral ports per address), bind 198.51.100.101, .102, … (traverse-loadgen --local-ips).
# Set for a memory run, empty otherwise (one relay address: the one the client reached).
RELAY_IPS=""
CLIENTS_PER_IP_SET="${CLIENTS_PER_IP:-}"
CLIENTS_PER_IP="${CLIENTS_PER_IP:-25000}"
extra_addresses() { # first-octet-offset count → comma-separated 198.51.100.x list, each added to trvb0
  local list=() k
  for k in $(seq "$2"); do
    ip addr add "198.51.100.$(($1 + k))/24" dev trvb0 2>/dev/null || true
    list+=("198.51.100.$(($1 + k))")
  done
  (IFS=,; echo "${list[*]}")
}
relay_ips_for() { # allocations → RELAY_IPS
  local ports=$((RELAY_PORT_MAX - RELAY_PORT_MIN + 1))
  local needed=$(( (10 * $1 + 9 * ports - 1) / (9 * ports) ))
  RELAY_IPS=""
  [ "$needed" -le 1 ] || RELAY_IPS="$HOST_IP,$(extra_addresses 10 $((needed - 1)))"
}
client_ips_for() { # allocations → the loadgen's --local-ips arguments, if more than one address is needed
  local needed=$(( ($1 + CLIENTS_PER_IP - 1) / CLIENTS_PER_IP ))
  [ "$needed" -le 1 ] || echo "--local-ips $(extra_addresses 100 "$needed")"
}
rss_kib() { awk '/VmRSS/ {print $2}' "/proc/$1/status"; }

start_server() { # name → sets SERVER_PID
  case "$1" in
    # Few TCP/TLS connections (500; the relay load is UDP) unless the memory runs hold their allocations over TCP,
    # so that the descriptor limit goes to allocations.
    traverse|traverse-nocoalesce|traverse-nonap|traverse-2w|traverse-reactor|traverse-ring|traverse-prev|traverse-nogso)
      local coalesce=(--set "limits.coalesce_us=${COALESCE_US:-200}") workers=1 bin="$TRAVERSE" relay_addresses=()
      [ -z "$RELAY_IPS" ] || relay_addresses=(--set "relay.bind_v4=$RELAY_IPS")
      [ -n "${RELAY_NAP_US:-}" ] && [ "$1" != traverse-prev ] && coalesce+=(--set "relay.coalesce_us=$RELAY_NAP_US")
      [ "$1" = traverse-nonap ] && coalesce+=(--set relay.coalesce_us=0)
      [ "$1" = traverse-prev ] && bin="${TRAVERSE_PREV:?set TRAVERSE_PREV to the other traverse binary}"
      [ "$1" = traverse-reactor ] && coalesce+=(--set relay.io_uring=false)
      [ "$1" = traverse-ring ] && coalesce+=(--set relay.io_uring=true)
      [ "$1" = traverse-nogso ] && coalesce+=(--set relay.gso=false)
      [ "$1" = traverse-nocoalesce ] && coalesce=(--set limits.coalesce_us=0 --set relay.coalesce_us=0)
      [ "$1" = traverse-2w ] && workers=2
      # The memory and set-up runs open thousands of TCP/TLS connections from one address at once: no rate limit
      # unless CONNECTION_RATE asks for one (a build before the key existed has none; PREV_HAS_RATES=1 says
      # TRAVERSE_PREV has both keys, 30452df and later).
      local rates=""
      { [ "$1" != traverse-prev ] || [ -n "${PREV_HAS_RATES:-}" ]; } && rates=1
      [ -n "$rates" ] && coalesce+=(--set "limits.connections_per_second_per_source=${CONNECTION_RATE:-0}")
      # The same for new allocations a second (ALLOCATION_RATE).
      [ -n "$rates" ] && coalesce+=(--set "limits.allocations_per_second_per_source=${ALLOCATION_RATE:-0}")
      "${on_server_cpus[@]}" "$bin" serve --udp "$HOST_IP:3478" --tcp "$HOST_IP:3478" --tls "$HOST_IP:5349" --single-port "$HOST_IP:4443" \
        "${coalesce[@]}" \
        --http 127.0.0.1:0 --user "$USER_NAME:$PASSWORD" --realm "$REALM" --workers "$workers" \
        --relay-ports "$RELAY_PORT_MIN-$RELAY_PORT_MAX" --set "limits.max_allocations=$MAX_ALLOCATIONS" \
        --set "limits.max_connections=$MAX_CONNECTIONS" --set "limits.max_connections_per_source=$MAX_CONNECTIONS" \
        "${relay_addresses[@]}" \
        --set limits.max_allocations_per_user=0 --set limits.max_allocations_per_source=0 \
        --log-level warn >"$OUT/traverse.log" 2>&1 &
      ;;
    forwarder)
      "${on_server_cpus[@]}" "$BARE" --listen "$HOST_IP:3478" --relay-ip "$HOST_IP" --lifetime 3600 >"$OUT/forwarder.log" 2>&1 &
      ;;
    uring)
      "${on_server_cpus[@]}" "$URING" --listen "$HOST_IP:3478" --relay-ip "$HOST_IP" --lifetime 3600 >"$OUT/uring.log" 2>&1 &
      ;;
    uring-ms)
      "${on_server_cpus[@]}" "$URING" --multishot --listen "$HOST_IP:3478" --relay-ip "$HOST_IP" --lifetime 3600 \
        >"$OUT/uring-ms.log" 2>&1 &
      ;;
    coturn)
      local relay_addresses=(-E "$HOST_IP")
      [ -z "$RELAY_IPS" ] || { relay_addresses=(); for ip in ${RELAY_IPS//,/ }; do relay_addresses+=(-E "$ip"); done; }
      "${on_server_cpus[@]}" turnserver -n --no-cli "${coturn_tls[@]}" --no-dtls -L "$HOST_IP" "${relay_addresses[@]}" --listening-port 3478 \
        --lt-cred-mech --user "$USER_NAME:$PASSWORD" --realm "$REALM" --relay-threads 1 \
        --min-port "$RELAY_PORT_MIN" --max-port "$RELAY_PORT_MAX" --no-multicast-peers --simple-log --log-file stdout \
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

REPEAT="${REPEAT:-2}"
TRAFFIC_RUNS="${TRAFFIC_RUNS-100:40000 1000:20000 100:150000}"
MEMORY_RUNS="${MEMORY_RUNS-1000 10000}"
# Traverse's allocation limit: the largest memory run, and never under 20 000.
MAX_ALLOCATIONS=20000
for n in $MEMORY_RUNS; do [ "$n" -le "$MAX_ALLOCATIONS" ] || MAX_ALLOCATIONS=$n; done
# MEMORY_TRANSPORT=tcp: the memory runs make and hold their allocations over TURN-over-TCP connections, one each
# (what an idle TCP/TLS client costs the server); tls: over TLS on port 5349 (ALPN stun.turn; coturn gets a
# self-signed certificate made here); tls-single: over TLS on Traverse's single port (4443 here, 443 in production),
# where TURN, HTTPS and WebSockets share one listener (Traverse only). The traffic runs stay on UDP.
MEMORY_TRANSPORT="${MEMORY_TRANSPORT:-udp}"
case "$MEMORY_TRANSPORT" in
  udp|tcp) MEMORY_PORT=3478; LOADGEN_TRANSPORT=$MEMORY_TRANSPORT ;;
  tls) MEMORY_PORT=5349; LOADGEN_TRANSPORT=tls ;;
  tls-single) MEMORY_PORT=4443; LOADGEN_TRANSPORT=tls ;;
  *) echo "MEMORY_TRANSPORT is udp, tcp, tls or tls-single"; exit 1 ;;
esac
# UCLIENT_TRANSPORT=tcp: turnutils_uclient talks to the server over TCP (-t); tls: over TLS on port 5349 (-t -S). The
# peer side stays UDP.
UCLIENT_TRANSPORT="${UCLIENT_TRANSPORT:-udp}"
case "$UCLIENT_TRANSPORT" in
  udp) uclient_tcp=() ;;
  tcp) uclient_tcp=(-t) ;;
  tls) uclient_tcp=(-t -S -p 5349) ;;
  *) echo "UCLIENT_TRANSPORT is udp, tcp or tls"; exit 1 ;;
esac
coturn_tls=(--no-tls)
if [ "$MEMORY_TRANSPORT" = tls ] || [ "$UCLIENT_TRANSPORT" = tls ]; then
  openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 1 -subj "/CN=$HOST_IP" \
    -keyout "$OUT/coturn-key.pem" -out "$OUT/coturn-cert.pem" >/dev/null 2>&1
  coturn_tls=(--cert "$OUT/coturn-cert.pem" --pkey "$OUT/coturn-key.pem" --tls-listening-port 5349)
fi
MAX_CONNECTIONS=500
if [ "$MEMORY_TRANSPORT" != udp ]; then
  # A connection and a relay socket per allocation: both limits sized to the largest run, so that they fit the
  # descriptor limit together (the server cuts both when they do not).
  MAX_ALLOCATIONS=1000
  for n in $MEMORY_RUNS; do [ "$n" -le "$MAX_ALLOCATIONS" ] || MAX_ALLOCATIONS=$n; done
  MAX_CONNECTIONS=$((MAX_ALLOCATIONS + 500))
  # Traverse lets one source hold at most half its connections: the clients come from several addresses.
  [ -n "${CLIENTS_PER_IP_SET:-}" ] || CLIENTS_PER_IP=$(( MAX_CONNECTIONS / 2 - 10 < 2000 ? MAX_CONNECTIONS / 2 - 10 : 2000 ))
fi
IDLE="${IDLE:-10}"   # seconds of silence over which the server's CPU at idle is measured, allocations held
UCLIENT_RUNS="${UCLIENT_RUNS-100 1000}"
VALUES="$OUT/values.txt"   # one "server metric value" line per measurement, all repetitions
: >"$VALUES"
record() { echo "$1 $2 $3" >>"$VALUES"; }
# Relayed packets per server CPU-second, the figure issue #2 compares. Each echoed packet crossed the relay twice
# (client→peer and peer→client); packets lost on the way are not counted, so loss lowers this figure.
per_cpu() { python3 -c "t=($2-$1)/$CLK_TCK; p=2*$3; print(round(p/t) if t > 0 else 'n/a')"; }
strace_during() { # label: syscall counts of the server for $STRACE seconds, 2 s into the traffic
  [ -n "${STRACE:-}" ] || return 0
  (sleep 2; timeout -s INT "$STRACE" strace -c -f -p "$SERVER_PID" -o "$OUT/strace-$1.txt" >/dev/null 2>&1) &
  pids+=($!)
}
# Uprobes in one group ("allocs") on every allocator entry point a server may use: Traverse's jemalloc (each
# Traverse binary under test) and glibc's (coturn, the forwarders, and C code in Traverse). `perf stat -p` counts
# only the server's hits.
alloc_probes() {
  [ -n "${ALLOCS:-}" ] || return 0
  perf probe -q -d 'allocs:*' 2>/dev/null || true
  local libc n=0 bin f
  libc=$(ldd "$(command -v turnserver)" | awk '/libc\.so\.6/ {print $3}')
  for f in malloc calloc realloc; do perf probe -q -x "$libc" -a "allocs:libc_$f=$f"; done
  for bin in "$TRAVERSE" ${TRAVERSE_PREV:+"$TRAVERSE_PREV"}; do
    n=$((n + 1))
    for f in malloc mallocx calloc rallocx realloc; do perf probe -q -x "$bin" -a "allocs:t${n}_$f=_rjem_$f"; done
  done
}
allocs_start() { # label: count the server's allocations 2 s into the traffic (past the set-up) until 1 s before its end
  [ -n "${ALLOCS:-}" ] || return 0
  ALLOCS_WINDOW=$((SECONDS_PER_RUN > 4 ? SECONDS_PER_RUN - 3 : 1))
  (sleep 2; exec perf stat -x, -e 'allocs:*' -p "$SERVER_PID" -o "$OUT/allocs-$1.txt" -- sleep "$ALLOCS_WINDOW") \
    >/dev/null 2>&1 &
  ALLOCS_PID=$!
}
allocs_stop() { # label echoes-per-s: records the server's allocations per relayed packet (each echo is two)
  [ -n "${ALLOCS:-}" ] || return 0
  wait "$ALLOCS_PID" 2>/dev/null || true
  local total
  total=$(awk -F, '$1 ~ /^[0-9]+$/ {s += $1} END {print s + 0}' "$OUT/allocs-$1.txt")
  ALLOCS_PER=$(python3 -c "print(round($total / (2 * $2 * $ALLOCS_WINDOW), 5) if $2 else 'n/a')")
  echo "  heap allocations: $total in ${ALLOCS_WINDOW} s of steady traffic, $ALLOCS_PER per relayed packet"
}
perf_during() { # label: a profile of the server for $PERF seconds, 2 s into the traffic (perf record -g)
  [ -n "${PERF:-}" ] || return 0
  (sleep 2; perf record -q -g -p "$SERVER_PID" -o "$OUT/perf-$1.data" -- sleep "$PERF" >/dev/null 2>&1) &
  pids+=($!)
}

alloc_probes
echo "== machine: $(nproc) cores, load average $(cut -d' ' -f1-3 /proc/loadavg); coturn $(turnserver --version 2>/dev/null | head -1)"
echo "== arrivals: rounds every ${PACE_US:-1000} µs, ${TRAIN:-1} packet(s) per allocation's turn"
if [ -n "${SERVER_CPUS:-}${LOAD_CPUS:-}" ]; then
  echo "== cores: server on ${SERVER_CPUS:-any}, load generator and echo peer on ${LOAD_CPUS:-any}"
else
  echo "== cores: not pinned; server, load generator and echo peer share all $(nproc) (SERVER_CPUS / LOAD_CPUS pin them)"
fi
record machine load_start "$(cut -d' ' -f1 /proc/loadavg)"
for rep in $(seq "$REPEAT"); do
  # Alternate which server goes first, so a drift in the machine's load does not always favour the same one.
  order=${SERVERS:-traverse coturn}
  if [ $((rep % 2)) = 0 ]; then order=$(echo "$order" | tr ' ' '\n' | tac | tr '\n' ' '); fi
  echo "== repetition $rep of $REPEAT ($order)"
  for server in $order; do
    echo "== $server"
    # Memory per allocation: RSS growth while N allocations (each with a channel) are held.
    for n in $MEMORY_RUNS; do
      # The server holds a socket per allocation and the load generator one per client: each needs the descriptors.
      # Over TCP the server holds a connection as well.
      fds=$((n + 600)); [ "$MEMORY_TRANSPORT" = udp ] || fds=$((2 * n + 600))
      if [ "$(ulimit -n)" -lt "$fds" ]; then
        echo "  skipping $n allocations: the descriptor limit is $(ulimit -n) per process (ulimit -Hn to raise it)"
        continue
      fi
      relay_ips_for "$n"
      start_server "$server"
      [ -z "$RELAY_IPS" ] || echo "  $n allocations on relay addresses $RELAY_IPS"
      base=$(rss_kib "$SERVER_PID")
      : >"$OUT/hold.txt" # no READY line from an earlier run
      s0=$(cpu_ticks "$SERVER_PID")
      # shellcheck disable=SC2046 # client_ips_for prints separate arguments
      "${on_load_cpus[@]}" "$LOADGEN" --server "$HOST_IP:$MEMORY_PORT" --peer "$PEER_IP:$PEER_PORT" --user "$USER_NAME" \
        --password "$PASSWORD" --allocations "$n" --rate 0 --hold $((IDLE + 4)) --transport "$LOADGEN_TRANSPORT" $(client_ips_for "$n") \
        >"$OUT/hold.txt" 2>&1 &
      lg=$!
      pids+=("$lg")
      for _ in $(seq $((600 + n / 100))); do grep -q READY "$OUT/hold.txt" 2>/dev/null && break; sleep 0.1; done
      sleep 1
      grep -q READY "$OUT/hold.txt" || { echo "allocation phase failed: $(cat "$OUT/hold.txt")"; exit 1; }
      # The server's CPU to set the allocations up (over TLS, mostly handshakes), ms per 1 000, from clock ticks.
      s1=$(cpu_ticks "$SERVER_PID")
      setupcpu=$(python3 -c "print(round(($s1-$s0)/$CLK_TCK*1000*1000/$n, 1))")
      record "$server" "setupcpu$n" "$setupcpu"
      # CPU at idle: the server's CPU while the N allocations are held and silent (timers must not cost CPU per
      # allocation), in milliseconds per second, i.e. thousandths of a core.
      i0=$(cpu_ticks "$SERVER_PID"); w0=$(date +%s.%N)
      sleep "$IDLE"
      i1=$(cpu_ticks "$SERVER_PID"); w1=$(date +%s.%N)
      idle=$(python3 -c "print(round(($i1-$i0)/$CLK_TCK*1000/($w1-$w0), 2))")
      record "$server" "idle$n" "$idle"
      after=$(rss_kib "$SERVER_PID")
      wait "$lg" || true
      v=$(python3 -c "print(round(($after - $base) * 1024 / $n))")
      record "$server" "mem$n" "$v"
      # Set-up time of N allocations from one address, one after another (issue 7: the reflection guard must not
      # slow many clients behind one address; a lost answer costs the loader a retransmission timeout).
      setup=$(sed -n 's/^READY [0-9]* allocations in \([0-9.]*\) s$/\1/p' "$OUT/hold.txt")
      record "$server" "setup$n" "${setup:-n/a}"
      echo "  $n allocations over $MEMORY_TRANSPORT: RSS $base → $after KiB, $v bytes/allocation, set up in ${setup:-?} s (server CPU $setupcpu ms per 1 000), idle CPU $idle ms/s"
      stop_server
      RELAY_IPS=""
    done

    # Throughput and CPU: 100 allocations, fixed offered rates, 100- and 1000-byte payloads; the last rate is more
    # than one relay thread and the echo peer can carry, so it shows where each server saturates.
    for run in $TRAFFIC_RUNS; do
      size=${run%%:*}
      rate=${run##*:}
      key="$size@$rate"
      start_server "$server"
      strace_during "$server-$size-$rate"
      perf_during "$server-$size-$rate"
      allocs_start "$server-$size-$rate"
      t0=$(cpu_ticks "$SERVER_PID")
      "${on_load_cpus[@]}" "$LOADGEN" --server "$HOST_IP:3478" --peer "$PEER_IP:$PEER_PORT" --user "$USER_NAME" --password "$PASSWORD" \
        --allocations 100 --rate "$rate" --duration "$SECONDS_PER_RUN" --size "$size" --pace-us "${PACE_US:-1000}" \
        --train "${TRAIN:-1}" --threads "${LOAD_THREADS:-1}" >"$OUT/run.json"
      t1=$(cpu_ticks "$SERVER_PID")
      received=$(json received <"$OUT/run.json")
      allocs_stop "$server-$size-$rate" "$(json received_pps <"$OUT/run.json")"
      stop_server
      pps=$(json received_pps <"$OUT/run.json" | python3 -c "print(round(float(input())))")
      loss=$(json loss_pct <"$OUT/run.json" | python3 -c "print(round(float(input()), 2))")
      rtt=$(json rtt_avg_us <"$OUT/run.json")
      ppc=$(per_cpu "$t0" "$t1" "$received")
      cpu=$(python3 -c "print(round(($t1-$t0)/$CLK_TCK, 2))")
      for m in pps loss rtt ppc cpu; do record "$server" "$m$key" "${!m}"; done
      [ -z "${ALLOCS:-}" ] || record "$server" "alloc$key" "$ALLOCS_PER"
      echo "  ${size} B @ $rate pps offered: received $pps pps, loss $loss %, rtt $rtt µs, server CPU $cpu s, $ppc relayed packets per CPU-s"
    done

    # coturn's own load client: 50 clients × 1000 messages, 5 ms apart (≈10 000 packets/s offered), echoed by the peer.
    for size in $UCLIENT_RUNS; do
      case "$server" in forwarder|uring|uring-ms) continue ;; esac   # turnutils_uclient authenticates; the forwarders do not
      start_server "$server"
      strace_during "$server-uclient-$size"
      t0=$(cpu_ticks "$SERVER_PID")
      f="$OUT/uclient-$server-$size.txt"
      timeout 120 "${on_load_cpus[@]}" turnutils_uclient -u "$USER_NAME" -w "$PASSWORD" -e "$PEER_IP" -r "$PEER_PORT" -m 50 -n 1000 \
        -l "$size" -z 5 "${uclient_tcp[@]}" "$HOST_IP" >"$f" 2>&1 || true
      t1=$(cpu_ticks "$SERVER_PID")
      stop_server
      received=$(grep -oE 'tot_recv_msgs=[0-9]+$' "$f" | tail -1 | cut -d= -f2 || true)
      loss=$(grep -oE 'Total lost packets [0-9]+ \([0-9.]+%\)' "$f" | grep -oE '[0-9.]+%' | tail -1 | tr -d % || true)
      rtt=$(grep -oE 'Average round trip delay [0-9.]+' "$f" | grep -oE '[0-9.]+$' | tail -1 || true)
      ppc=$(per_cpu "$t0" "$t1" "${received:-0}")
      cpu=$(python3 -c "print(round(($t1-$t0)/$CLK_TCK, 2))")
      key="uclient$size"
      for m in loss rtt ppc cpu; do record "$server" "$m$key" "${!m:-n/a}"; done
      echo "  turnutils_uclient 50×1000×${size} B over $UCLIENT_TRANSPORT: received ${received:-?}, loss ${loss:-?} %, rtt ${rtt:-?} ms, server CPU $cpu s, $ppc relayed packets per CPU-s"
    done
  done
done
record machine load_end "$(cut -d' ' -f1 /proc/loadavg)"
echo "== machine load average at the end: $(cut -d' ' -f1-3 /proc/loadavg)"
echo

# The table: medians over the repetitions, (min–max) when there are several, and the Traverse/coturn ratio of
# the medians.
MEMORY_TRANSPORT="$MEMORY_TRANSPORT" UCLIENT_TRANSPORT="$UCLIENT_TRANSPORT" python3 - "$VALUES" "$TRAFFIC_RUNS" "$MEMORY_RUNS" "$UCLIENT_RUNS" "${SERVERS:-traverse coturn}" <<'PY' | tee "$RESULTS"
import os, statistics, sys
values, traffic, memory, uclient = sys.argv[1], sys.argv[2].split(), sys.argv[3].split(), sys.argv[4].split()
servers = ["traverse", "coturn"] + [s for s in sys.argv[5].split() if s not in ("traverse", "coturn")]
names = {"traverse": "Traverse", "coturn": "coturn", "traverse-nocoalesce": "Traverse, coalescing off",
         "forwarder": "bare forwarder", "traverse-2w": "Traverse, 2 workers", "uring": "io_uring forwarder",
         "uring-ms": "io_uring forwarder, multishot",
         "traverse-reactor": "Traverse, relay.io_uring=false", "traverse-ring": "Traverse, relay.io_uring=true", "traverse-prev": "Traverse, other build",
         "traverse-nonap": "Traverse, relay.coalesce_us=0", "traverse-nogso": "Traverse, relay.gso=false"}
others = [s for s in servers if s != "coturn"]
floor = "forwarder" in servers
scaling = "traverse-2w" in servers
reactor = "traverse-reactor" in servers
prev = "traverse-prev" in servers
nogso = "traverse-nogso" in servers
urings = [s for s in ("uring", "uring-ms") if floor and s in servers]
v = {}
for line in open(values):
    server, metric, value = line.split()
    try:
        v.setdefault((server, metric), []).append(float(value))
    except ValueError:
        pass

def fmt(x):
    return f"{x:.3g}" if abs(x) < 10 else f"{round(x)}"

def cell(server, metric):
    xs = v.get((server, metric))
    if not xs:
        return "–", None
    m = statistics.median(xs)
    return fmt(m) + (f" ({fmt(min(xs))}–{fmt(max(xs))})" if len(xs) > 1 else ""), m

def row(label, metric, ratio=True):
    cells = {s: cell(s, metric) for s in servers}
    cm = cells["coturn"][1]
    ratios = [f"{cells[s][1] / cm:.2f}" if ratio and cells[s][1] is not None and cm else "" for s in others]
    if floor:
        # Traverse's CPU per relayed packet as a multiple of the forwarder's (packets per CPU-s, inverted).
        t, f = cells["traverse"][1], cells["forwarder"][1]
        ratios.append(f"{f / t:.2f}" if metric.startswith("ppc") and t and f else "")
    for s in urings:
        # An io_uring forwarder's CPU per relayed packet as a multiple of the epoll forwarder's.
        f, u = cells["forwarder"][1], cells[s][1]
        ratios.append(f"{f / u:.2f}" if metric.startswith("ppc") and f and u else "")
    if reactor:
        # Traverse's CPU per relayed packet (relay sockets on io_uring) as a multiple of its CPU on the reactor.
        t, r = cells["traverse"][1], cells["traverse-reactor"][1]
        ratios.append(f"{r / t:.2f}" if metric.startswith("ppc") and t and r else "")
    if prev:
        # Traverse's CPU per relayed packet as a multiple of the other build's.
        t, p = cells["traverse"][1], cells["traverse-prev"][1]
        ratios.append(f"{p / t:.2f}" if metric.startswith("ppc") and t and p else "")
    if nogso:
        # Traverse's CPU per relayed packet as a multiple of its CPU with every datagram sent on its own.
        t, g = cells["traverse"][1], cells["traverse-nogso"][1]
        ratios.append(f"{g / t:.2f}" if metric.startswith("ppc") and t and g else "")
    if scaling:
        # What the second worker buys: relayed packets per CPU-s (efficiency) and echoes delivered (at saturation,
        # throughput), 2 workers over 1.
        one, two = cells["traverse"][1], cells["traverse-2w"][1]
        ratios.append(f"{two / one:.2f}" if metric.startswith(("ppc", "pps")) and one and two else "")
    print(f"| {label} | " + " | ".join(cells[s][0] for s in servers) + " | " + " | ".join(ratios) + " |")

print("| metric | " + " | ".join(names.get(s, s) for s in servers) + " | "
      + " | ".join(f"{names.get(s, s)}/coturn" for s in others)
      + (" | Traverse's CPU per packet / forwarder's" if floor else "")
      + "".join(f" | {names[s]}: CPU per packet / forwarder's" for s in urings)
      + (" | Traverse's CPU per packet / on the reactor" if reactor else "")
      + (" | Traverse's CPU per packet / other build's" if prev else "")
      + (" | Traverse's CPU per packet / with relay.gso=false" if nogso else "")
      + (" | Traverse 2 workers / 1" if scaling else "") + " |")
print("|---" * (1 + len(servers) + len(others) + floor + len(urings) + reactor + prev + nogso + scaling) + "|")
for run in dict.fromkeys(traffic):
    size, rate = run.split(":")
    k = f"{size}@{rate}"
    row(f"loadgen {size} B @ {rate}/s: relayed packets per server CPU-s", "ppc" + k)
    row(f"loadgen {size} B @ {rate}/s: echoes received per s", "pps" + k)
    row(f"loadgen {size} B @ {rate}/s: loss %", "loss" + k, ratio=False)
    row(f"loadgen {size} B @ {rate}/s: average RTT µs", "rtt" + k)
    row(f"loadgen {size} B @ {rate}/s: server CPU-s", "cpu" + k)
    if any(m == "alloc" + k for _, m in v):
        row(f"loadgen {size} B @ {rate}/s: heap allocations per relayed packet", "alloc" + k, ratio=False)
for size in uclient:
    k = f"uclient{size}"
    row(f"uclient 50×1000×{size} B over {os.environ['UCLIENT_TRANSPORT']}: relayed packets per server CPU-s", "ppc" + k)
    row(f"uclient 50×1000×{size} B: loss %", "loss" + k, ratio=False)
    row(f"uclient 50×1000×{size} B: average RTT ms (whole-ms samples)", "rtt" + k)
    row(f"uclient 50×1000×{size} B: server CPU-s", "cpu" + k)
for n in memory:
    row(f"bytes per allocation at {n} over {os.environ['MEMORY_TRANSPORT']}", f"mem{n}")
    row(f"seconds to set up {n} allocations over {os.environ['MEMORY_TRANSPORT']}", f"setup{n}")
    row(f"server CPU ms per 1 000 allocations set up over {os.environ['MEMORY_TRANSPORT']}", f"setupcpu{n}")
    row(f"server CPU at idle with {n} allocations, ms per s", f"idle{n}")
loads = [fmt(x) for (s, m), xs in v.items() if s == "machine" for x in xs]
print(f"\nmachine load average (1 min), start / end: {' / '.join(loads)}")

# Per repetition: a shared machine drifts by more than the differences measured here, so medians of separate
# columns can disagree from one run to the next. Each repetition runs every server once, close in time (order
# alternated), so the ratio within a repetition is the fairer comparison; the spread says how far to trust it.
pairs = []
for run in dict.fromkeys(traffic + [f"uclient{u}" for u in uclient]):
    k = run.replace(":", "@") if ":" in run else run
    t = v.get(("traverse", "ppc" + k), [])
    for s in others[1:] + ["coturn"]:
        o = v.get((s, "ppc" + k), [])
        # Paired by position, so only when both have a figure for every repetition: a missing one would shift them.
        if len(o) != len(t) or len(t) < 2:
            continue
        rs = [b / a for a, b in zip(t, o) if a and b]
        med = statistics.median(rs)
        cheaper = sum(r < 1 for r in rs)
        label = f"loadgen {run.replace(':', ' B @ ')}/s" if ":" in run else f"uclient {run[7:]} B"
        pairs.append(f"| {label} | {names.get(s, s)} | " + " ".join(f"{r:.2f}" for r in rs)
                     + f" | {med:.2f} | {cheaper} of {len(rs)} |")
if pairs:
    print("\n| load | against | Traverse's CPU per packet / theirs, each repetition | median | Traverse cheaper in |")
    print("|---|---|---|---:|---:|")
    print("\n".join(pairs))
PY
