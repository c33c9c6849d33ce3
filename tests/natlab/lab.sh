#!/usr/bin/env bash
# NAT lab: real NATs built from network namespaces, veth pairs and nftables (root only).
#
#   lab.sh sites                          # the client sites this lab knows (NAT behaviour × firewall policy)
#   lab.sh up PREFIX SITE... | all        # the internet, the server namespace, and each site (router + host)
#   lab.sh serve PREFIX BIN [ARGS...]     # `BIN serve ARGS` in the server namespace; waits for /healthz
#   lab.sh restart PREFIX [ROLE]          # stop that server (by PID) and serve again with the same arguments
#   lab.sh serve-role PREFIX ROLE BIN [ARGS...]  # a second kind of server beside (or instead of) the first, e.g. TURN
#                                         # and signaling in two processes; waits until it listens
#   lab.sh stop PREFIX [ROLE]             # stop that server (by PID); `restart` serves it again
#   lab.sh ns PREFIX SITE|server          # the namespace a site's host (or the server) lives in
#   lab.sh exec PREFIX SITE|server CMD... # run CMD there
#   lab.sh down PREFIX                    # stop what `serve` started (by PID), delete the namespaces `up` created
#
# Every name starts with PREFIX (unique per run: run.sh uses `tl<pid>`), and `down` deletes only the namespaces
# recorded in the run's state directory, never anything else. Addresses are documentation ranges only
# (RFC 5737): 203.0.113.0/24 the server, 198.51.100.0/24 the NAT routers' public sides, 192.0.2.0/24 the LANs
# (one /28 per site). The namespaces have no default route out of the lab and IPv6 is disabled in all of them.
#
#                       ┌──────────── PREFIX-inet (bridge br0) ─────────────┐
#                       │                                                   │
#   PREFIX-srv  203.0.113.10, .11          [PREFIX-SITE-d  delay.py, `geo` only: frames held 300 ms each way]
#   (traverse serve)                              │
#                                          PREFIX-SITE-r  wan 198.51.100.(10+i)   (one per site)
#                                                 │ nftables NAT + firewall
#                                          PREFIX-SITE-r  lan 192.0.2.(16i+1)/28
#                                                 │
#                                          PREFIX-SITE-h  192.0.2.(16i+2)/28  (doctor, Chromium)
set -euo pipefail

SERVER_IPS=(203.0.113.10 203.0.113.11)
STATE_ROOT="${NATLAB_STATE:-/tmp/traverse-natlab}"

# name : index : mapping (eim | sym) : filtering (apdf | eif | adf) : firewall (open | noudp | tcp443 | turnports |
# lossy | geo) :
# what it is. `geo` filters nothing but puts a link with 300 ms each way (delay.py, in a namespace of its own) between
# the router's public side and the internet: a geostationary satellite link, ~600 ms round trip.
SITES=(
  "eim-a:1:eim:apdf:open:port-restricted cone (plain masquerade)"
  "eim-b:2:eim:apdf:open:port-restricted cone, a second one"
  "fullcone:3:eim:eif:open:full cone (inbound UDP to a mapped port DNATed to the host)"
  "restricted:4:eim:adf:open:address-restricted cone (dynamic set of host, port, remote address)"
  "sym-a:5:sym:apdf:open:symmetric (masquerade fully-random)"
  "sym-b:6:sym:apdf:open:symmetric, a second one"
  "noudp:7:eim:apdf:noudp:port-restricted cone, all outbound UDP dropped"
  "tcp443:8:eim:apdf:tcp443:port-restricted cone, only TCP to port 443 allowed out"
  "turnports:9:eim:apdf:turnports:port-restricted cone, UDP and TCP to the STUN/TURN ports 3478, 3479, 5349 dropped"
  "lossy:10:eim:eif:lossy:full cone on a lossy link, 10 % of UDP packets dropped at random each way"
  "geo:11:eim:apdf:geo:port-restricted cone behind a geostationary satellite link, 300 ms each way"
  "proxy:12:eim:apdf:proxy:nothing leaves but through an HTTP proxy on the router (CONNECT to port 443 only)"
)
PROXY_PORT=3128
# A name only the proxy can resolve (/etc/netns/<router>/hosts): the proxy site's hosts have no resolver for it, as an
# office network whose only way out is its proxy often cannot resolve outside names.
PROXY_NAME=traverse.lab.example
GEO_DELAY_MS=300
here="$(cd "$(dirname "$0")" && pwd)"

die() {
  echo "lab.sh: $*" >&2
  exit 1
}

site_def() {
  local s
  for s in "${SITES[@]}"; do
    if [ "${s%%:*}" = "$1" ]; then
      echo "$s"
      return 0
    fi
  done
  return 1
}

state_dir() { echo "$STATE_ROOT/$1"; }

# A namespace created and recorded for `down`; IPv6 off so nothing but the documentation addresses exists.
mkns() {
  local prefix=$1 ns=$2
  ip netns add "$ns"
  echo "$ns" >>"$(state_dir "$prefix")/namespaces"
  ip -n "$ns" link set lo up
  ip netns exec "$ns" sysctl -qw net.ipv6.conf.all.disable_ipv6=1 net.ipv6.conf.default.disable_ipv6=1
}

# A veth pair between two namespaces: created under temporary names unique to the run, moved, renamed inside.
veth() {
  local tmp=$1 ns1=$2 name1=$3 ns2=$4 name2=$5
  ip link add "${tmp}x" type veth peer name "${tmp}y"
  ip link set "${tmp}x" netns "$ns1"
  ip link set "${tmp}y" netns "$ns2"
  ip -n "$ns1" link set "${tmp}x" name "$name1"
  ip -n "$ns2" link set "${tmp}y" name "$name2"
}

# The NAT router's ruleset. Mapping: `masquerade` keeps the source port when it can (endpoint-independent
# mapping); `masquerade fully-random` picks a new random port per new 5-tuple (address-and-port-dependent mapping).
# Filtering: conntrack alone admits only replies from the exact remote address and port (address-and-port-
# dependent); `eif` DNATs inbound UDP to any port the host has sent from (endpoint-independent); `adf` admits it
# only from remote addresses the host has sent to from that port (address-dependent). Unsolicited inbound UDP to
# the router itself is dropped in its input chain: otherwise an early connectivity check of the other peer leaves a
# conntrack entry whose tuple clashes with the later outbound mapping, Linux picks a new port and hole punching
# between two port-restricted NATs fails.
ruleset() {
  local mapping=$1 filtering=$2 firewall=$3 host=$4
  local masq=masquerade
  [ "$mapping" = sym ] && masq="masquerade fully-random"
  cat <<EOF
table ip natlab {
  set mapped {
    type inet_service
    flags dynamic,timeout
    timeout 5m
  }
  set adf {
    type ipv4_addr . inet_service . ipv4_addr
    flags dynamic,timeout
    timeout 5m
  }
  chain prerouting {
    type nat hook prerouting priority dstnat; policy accept;
$( [ "$filtering" = eif ] || [ "$filtering" = adf ] && echo "    iifname \"wan\" udp dport @mapped dnat to $host")
  }
  chain postrouting {
    type nat hook postrouting priority srcnat; policy accept;
    oifname "wan" $masq
  }
  chain input {
    type filter hook input priority filter; policy accept;
    iifname "wan" ct state established,related accept
    iifname "wan" meta l4proto udp drop
  }
  chain forward {
    type filter hook forward priority filter; policy drop;
$( [ "$firewall" = lossy ] && echo "    meta l4proto udp numgen random mod 100 < 10 drop")
    iifname "wan" oifname "lan" ct state established,related accept
$( [ "$filtering" = eif ] && echo "    iifname \"wan\" oifname \"lan\" ct status dnat accept")
$( [ "$filtering" = adf ] && echo "    iifname \"wan\" oifname \"lan\" ip daddr . udp dport . ip saddr @adf accept")
    iifname "wan" drop
$( [ "$firewall" = noudp ] && echo "    iifname \"lan\" meta l4proto udp drop")
$( [ "$firewall" = tcp443 ] && printf '    iifname "lan" tcp dport 443 accept\n    iifname "lan" drop\n')
$( [ "$firewall" = proxy ] && echo '    iifname "lan" drop')
$( [ "$firewall" = turnports ] && printf '    iifname "lan" udp dport { 3478, 3479, 5349 } drop\n    iifname "lan" tcp dport { 3478, 3479, 5349 } drop\n')
$( [ "$filtering" = eif ] || [ "$filtering" = adf ] && echo "    iifname \"lan\" meta l4proto udp update @mapped { udp sport }")
$( [ "$filtering" = adf ] && echo "    iifname \"lan\" meta l4proto udp update @adf { ip saddr . udp sport . ip daddr }")
    iifname "lan" oifname "wan" accept
  }
}
EOF
}

cmd_up() {
  local prefix=$1
  shift
  [ $# -gt 0 ] || die "up: which sites? (see lab.sh sites, or all)"
  local sites=("$@")
  if [ "${sites[0]}" = all ]; then
    sites=()
    local s
    for s in "${SITES[@]}"; do sites+=("${s%%:*}"); done
  fi
  local dir
  dir="$(state_dir "$prefix")"
  [ ! -e "$dir" ] || die "$dir exists: PREFIX $prefix is in use (lab.sh down $prefix)"
  mkdir -p "$dir"
  : >"$dir/namespaces"
  # Whatever fails half-way, nothing is left behind.
  # shellcheck disable=SC2064 # the prefix is expanded now: the trap runs after this function returned
  trap "cmd_down '$prefix' >/dev/null 2>&1" EXIT
  local tag
  tag="n$(printf '%s' "$prefix" | md5sum | cut -c1-6)"

  local inet="$prefix-inet" srv="$prefix-srv"
  mkns "$prefix" "$inet"
  ip -n "$inet" link add br0 type bridge
  ip -n "$inet" link set br0 up

  mkns "$prefix" "$srv"
  veth "${tag}s" "$srv" eth0 "$inet" srv
  ip -n "$inet" link set srv master br0 up
  local a
  for a in "${SERVER_IPS[@]}"; do ip -n "$srv" addr add "$a/24" dev eth0; done
  ip -n "$srv" link set eth0 up
  ip -n "$srv" route add 198.51.100.0/24 dev eth0

  local site def idx mapping filtering firewall
  for site in "${sites[@]}"; do
    def="$(site_def "$site")" || die "unknown site $site (lab.sh sites)"
    IFS=: read -r _ idx mapping filtering firewall _ <<<"$def"
    local r="$prefix-$site-r" h="$prefix-$site-h"
    local wan="198.51.100.$((10 + idx))" gw="192.0.2.$((16 * idx + 1))" host="192.0.2.$((16 * idx + 2))"
    mkns "$prefix" "$r"
    mkns "$prefix" "$h"
    if [ "$firewall" = geo ]; then
      # The long link: the router's wan and the internet's port are two interfaces of a namespace where delay.py
      # holds every frame GEO_DELAY_MS before passing it on (no address there, nothing else on the path).
      local d="$prefix-$site-d"
      mkns "$prefix" "$d"
      veth "${tag}w$idx" "$r" wan "$d" r
      veth "${tag}g$idx" "$d" i "$inet" "w$idx"
      ip -n "$d" link set r up
      ip -n "$d" link set i up
      ip netns exec "$d" python3 -u "$here/delay.py" r i "$GEO_DELAY_MS" >"$dir/delay-$site.log" 2>&1 &
      echo "$!" >>"$dir/pids.delay-$site"
      local i
      for i in $(seq 1 50); do
        grep -q '^ready' "$dir/delay-$site.log" && break
        sleep 0.1
      done
      grep -q '^ready' "$dir/delay-$site.log" || die "delay.py did not start: $(cat "$dir/delay-$site.log")"
    else
      veth "${tag}w$idx" "$r" wan "$inet" "w$idx"
    fi
    ip -n "$inet" link set "w$idx" master br0 up
    veth "${tag}l$idx" "$r" lan "$h" eth0
    ip -n "$r" addr add "$wan/24" dev wan
    ip -n "$r" addr add "$gw/28" dev lan
    ip -n "$r" link set wan up
    ip -n "$r" link set lan up
    ip -n "$r" route add 203.0.113.0/24 dev wan
    ip netns exec "$r" sysctl -qw net.ipv4.ip_forward=1
    ruleset "$mapping" "$filtering" "$firewall" "$host" | ip netns exec "$r" nft -f -
    if [ "$firewall" = proxy ]; then
      # An office's forward proxy on the router's LAN side: the hosts' only way out. It connects from the router's
      # public address, and tunnels (CONNECT) to port 443 alone, as most do.
      mkdir -p "/etc/netns/$r"
      echo "/etc/netns/$r" >>"$dir/etc-netns"
      echo "${SERVER_IPS[0]} $PROXY_NAME" >"/etc/netns/$r/hosts"
      printf '%s\n' "Port $PROXY_PORT" "Listen $gw" "Timeout 600" "MaxClients 200" "Allow 192.0.2.0/24" \
        "ConnectPort 443" "LogLevel Notice" >"$dir/tinyproxy-$site.conf"
      ip netns exec "$r" tinyproxy -d -c "$dir/tinyproxy-$site.conf" >"$dir/tinyproxy-$site.log" 2>&1 &
      echo "$!" >>"$dir/pids.proxy-$site"
      local j
      for j in $(seq 1 50); do
        ip netns exec "$r" ss -Hltn "sport = :$PROXY_PORT" 2>/dev/null | grep -q . && break
        sleep 0.1
      done
      ip netns exec "$r" ss -Hltn "sport = :$PROXY_PORT" | grep -q . \
        || die "tinyproxy did not start: $(cat "$dir/tinyproxy-$site.log")"
    fi
    ip -n "$h" addr add "$host/28" dev eth0
    ip -n "$h" link set eth0 up
    ip -n "$h" route add default via "$gw"
    echo "$site $h $host $wan $mapping $filtering $firewall" >>"$dir/sites"
  done
  trap - EXIT
}

cmd_serve() {
  serve_as "$1" "" "${@:2}"
}

# `BIN serve ARGS` for ROLE ("" is the lab's main server): its arguments in serve[.ROLE].args, its PID in
# pids[.ROLE], its log in traverse[-ROLE].log. Ready when /healthz answers, or for a server without HTTP when its
# first UDP port is bound.
serve_as() {
  local prefix=$1 role=$2 bin=$3
  shift 3
  local dir srv="$prefix-srv" dot="${role:+.$role}" log
  dir="$(state_dir "$prefix")"
  [ -d "$dir" ] || die "serve: no lab $prefix"
  log="$dir/traverse${role:+-$role}.log"
  printf '%s\0' "$bin" "$@" >"$dir/serve$dot.args"
  ip netns exec "$srv" "$bin" serve "$@" >>"$log" 2>&1 &
  local pid=$!
  echo "$pid" >>"$dir/pids$dot"
  # Ready when its own first HTTP(S) port answers /healthz (not another role's), else when its UDP port is bound.
  local health="" udp="" i a prev=""
  for a in "$@"; do
    case "$prev" in
      --http) [ -n "$health" ] || health="http://$a/healthz" ;;
      --single-port) [ -n "$health" ] || health="https://$a/healthz" ;;
      --udp) [ -n "$udp" ] || udp="${a##*:}" ;;
    esac
    prev=$a
  done
  for i in $(seq 1 100); do
    if [ -n "$health" ]; then
      ip netns exec "$srv" curl -skf -m 1 "$health" >/dev/null 2>&1 && return 0
    elif [ -n "$udp" ]; then
      ip netns exec "$srv" ss -Hlun "sport = :$udp" 2>/dev/null | grep -q . && return 0
    fi
    kill -0 "$pid" 2>/dev/null || break
    sleep 0.2
  done
  cat "$log" >&2
  die "serve: traverse${role:+ ($role)} did not come up"
}

# Stops ROLE's server ("" the main one) by PID: TERM, then KILL after 5 s.
stop_role() {
  local prefix=$1 role=$2 dir pid i
  dir="$(state_dir "$prefix")"
  local pids="$dir/pids${role:+.$role}"
  [ -f "$pids" ] || return 0
  while read -r pid; do
    kill -TERM "$pid" 2>/dev/null || continue
    for i in $(seq 1 50); do
      kill -0 "$pid" 2>/dev/null || break
      sleep 0.1
    done
    kill -KILL "$pid" 2>/dev/null || true
  done <"$pids"
  : >"$pids"
}

# The server (ROLE's, or the main one) restarted where its clients expect it: every session and allocation it held
# is gone (a restarted node).
cmd_restart() {
  local prefix=$1 role=${2:-} dir
  dir="$(state_dir "$prefix")"
  local args="$dir/serve${role:+.$role}.args"
  [ -f "$args" ] || die "restart: nothing served${role:+ as $role} in lab $prefix"
  local -a argv
  mapfile -d '' -t argv <"$args"
  stop_role "$prefix" "$role"
  serve_as "$prefix" "$role" "${argv[@]}"
}

cmd_ns() {
  local prefix=$1 site=$2
  if [ "$site" = server ]; then
    echo "$prefix-srv"
  else
    site_def "$site" >/dev/null || die "unknown site $site"
    echo "$prefix-$site-h"
  fi
}

cmd_down() {
  local prefix=$1 dir pid ns i f
  dir="$(state_dir "$prefix")"
  [ -d "$dir" ] || return 0
  for f in "$dir"/pids*; do
    [ -f "$f" ] || continue
    while read -r pid; do
      kill -TERM "$pid" 2>/dev/null || continue
      for i in $(seq 1 50); do
        kill -0 "$pid" 2>/dev/null || break
        sleep 0.1
      done
      kill -KILL "$pid" 2>/dev/null || true
    done <"$f"
  done
  if [ -f "$dir/namespaces" ]; then
    # Processes a test left inside (a browser, the doctor) would keep the veths alive: stop them, by PID.
    while read -r ns; do
      for pid in $(ip netns pids "$ns" 2>/dev/null); do kill -KILL "$pid" 2>/dev/null || true; done
    done <"$dir/namespaces"
    while read -r ns; do
      ip netns del "$ns" 2>/dev/null || true
    done <"$dir/namespaces"
  fi
  # The resolver files made for the namespaces (only those this lab recorded).
  if [ -f "$dir/etc-netns" ]; then
    while read -r f; do
      case "$f" in /etc/netns/"$prefix"-*) rm -rf "$f" ;; esac
    done <"$dir/etc-netns"
  fi
  rm -rf "$dir"
  # The state root goes with the last lab (rmdir leaves it while another lab is up).
  rmdir "$STATE_ROOT" 2>/dev/null || true
}

cmd_sites() {
  local s name idx mapping filtering firewall what
  for s in "${SITES[@]}"; do
    IFS=: read -r name idx mapping filtering firewall what <<<"$s"
    printf '%-11s mapping=%-4s filtering=%-5s firewall=%-7s %s\n' "$name" "$mapping" "$filtering" "$firewall" "$what"
  done
}

main() {
  local cmd=${1:-}
  shift || true
  case "$cmd" in
    sites) cmd_sites ;;
    up) [ $# -ge 1 ] || die "up PREFIX SITE..."; cmd_up "$@" ;;
    serve) [ $# -ge 2 ] || die "serve PREFIX BIN [ARGS...]"; cmd_serve "$@" ;;
    restart) [ $# -ge 1 ] && [ $# -le 2 ] || die "restart PREFIX [ROLE]"; cmd_restart "$@" ;;
    serve-role) [ $# -ge 3 ] || die "serve-role PREFIX ROLE BIN [ARGS...]"; serve_as "$@" ;;
    stop) [ $# -ge 1 ] && [ $# -le 2 ] || die "stop PREFIX [ROLE]"; stop_role "$1" "${2:-}" ;;
    ns) [ $# -eq 2 ] || die "ns PREFIX SITE"; cmd_ns "$@" ;;
    exec)
      [ $# -ge 3 ] || die "exec PREFIX SITE CMD..."
      local ns
      ns="$(cmd_ns "$1" "$2")"
      shift 2
      exec ip netns exec "$ns" "$@"
      ;;
    down) [ $# -eq 1 ] || die "down PREFIX"; cmd_down "$1" ;;
    *) sed -n '2,15p' "$0" | sed 's/^# \{0,1\}//'; [ -z "$cmd" ] || exit 2 ;;
  esac
}

main "$@"
