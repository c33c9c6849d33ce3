#!/usr/bin/env bash
# The NAT lab matrix (docs/nat-lab.md): builds real NATs from network namespaces, veth pairs and nftables, runs the
# real `traverse serve` in a server namespace with two public addresses, then
#   doctor.test.js  `traverse doctor … --json` inside every site's host namespace: mapping, filtering, blocked
#                   transports as the site's NAT and firewall are built;
#   check.test.js   /check in headless Chromium inside eim-a, sym-a and noudp, against a second server with one IP:
#                   the NAT mapping told from its two STUN ports (stun.second_port), as the doctor tells it;
#   pairs.test.js   two headless Chromium peers, one per site, connected with the SDK: direct where the NATs allow
#                   hole punching, relayed where they do not, TURN over TCP/TLS where UDP is blocked.
#   survive.test.js calls that survive an address change, a link down, a NAT flush, a server restart, a 30 s UDP
#                   timeout (only when named: about 3.5 min with NATLAB_SITES=eim-a,eim-b,sym-a,sym-b)
#
#   tests/natlab/run.sh                          # builds target/debug/traverse unless TRAVERSE_BIN is set
#   tests/natlab/run.sh pairs.test.js            # one part
#   NATLAB_PAIRS=eim-a+eim-b NATLAB_SITES=eim-a,eim-b NATLAB_KEEP=1 tests/natlab/run.sh
#
# Needs root, ip, nft, node, curl and Chromium; without them it prints `SKIP: <reason>` and exits 0, unless
# TRAVERSE_REQUIRE_PEERS=1. Everything it creates is named tl<pid>-… and removed on exit, whatever happened
# (NATLAB_KEEP=1 keeps the lab and the server for a look; remove it with `tests/natlab/lab.sh down tl<pid>`).
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
root="$(cd "$here/../.." && pwd)"

skip() {
  if [ "${TRAVERSE_REQUIRE_PEERS:-0}" = 1 ]; then
    echo "FAIL: natlab cannot run: $1, and TRAVERSE_REQUIRE_PEERS=1" >&2
    exit 1
  fi
  echo "SKIP: natlab: $1"
  exit 0
}

[ "$(id -u)" = 0 ] || skip "needs root (network namespaces, nftables)"
# python3 runs the geo site's delayed link (delay.py), tinyproxy the proxy site's HTTP proxy.
for tool in ip nft node curl timeout md5sum python3 tinyproxy; do
  command -v "$tool" >/dev/null 2>&1 || skip "$tool not found"
done
[ -x /usr/bin/chromium ] || skip "/usr/bin/chromium not found (apt-get install chromium)"

prefix="tl$$"
probe="$prefix-probe"
if ! { ip netns add "$probe" && ip netns exec "$probe" nft add table ip probe; } >/dev/null 2>&1; then
  ip netns del "$probe" 2>/dev/null || true
  skip "cannot create a network namespace with nftables here"
fi
ip netns del "$probe"

if [ ! -d "$root/tests/browser/node_modules/playwright-core" ]; then
  (cd "$root/tests/browser" && { npm ci --no-audit --no-fund --loglevel=error \
    || npm install --no-audit --no-fund --loglevel=error; })
fi
if [ -z "${TRAVERSE_BIN:-}" ]; then
  (cd "$root" && cargo build -p traverse)
  TRAVERSE_BIN="${CARGO_TARGET_DIR:-$root/target}/debug/traverse"
fi
[ -x "$TRAVERSE_BIN" ] || { echo "FAIL: $TRAVERSE_BIN missing" >&2; exit 1; }

# Where the tests write doctor.json and pairs.json (kept when NATLAB_RESULTS names it, else removed at exit).
results="${NATLAB_RESULTS:-$(mktemp -d /tmp/traverse-natlab-results.XXXXXX)}"
mkdir -p "$results"
cleanup() {
  [ -n "${NATLAB_RESULTS:-}" ] || rm -rf "$results"
  if [ "${NATLAB_KEEP:-0}" = 1 ]; then
    echo "natlab: kept lab $prefix (tests/natlab/lab.sh down $prefix)"
  else
    "$here/lab.sh" down "$prefix"
  fi
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

sites=all
[ -z "${NATLAB_SITES:-}" ] || sites="${NATLAB_SITES//,/ }"
# shellcheck disable=SC2086
"$here/lab.sh" up "$prefix" $sites

# The server: STUN/TURN on UDP and TCP 3478 and TLS 5349, HTTP on 80, the single port (HTTPS/WSS, TURN/TLS) on 443,
# all on the primary address; RFC 5780 NAT behaviour discovery with the second address (the server also listens on
# 203.0.113.10:3479, 203.0.113.11:3478 and 203.0.113.11:3479 for it) when the binary has --other-address.
serve=(
  --udp 203.0.113.10:3478
  --tcp 203.0.113.10:3478
  --tls 203.0.113.10:5349
  --single-port 203.0.113.10:443
  --http 203.0.113.10:80
  --public-host 203.0.113.10
  --workers 1
)
if "$TRAVERSE_BIN" serve --help | grep -q -- '--other-address'; then
  serve+=(--other-address 203.0.113.11:3479)
fi
files=("$@")
[ ${#files[@]} -gt 0 ] || files=(doctor.test.js check.test.js pairs.test.js)
# Calls that survive run on 60 s TURN credentials: its credential-60s scenario is a 3-minute call on them, and every
# other call must not care.
case " ${files[*]} " in *" survive.test.js "*) serve+=(--set auth.credential_ttl=60) ;; esac
# Extra flags for an experiment, e.g. NATLAB_SERVE_ARGS='--allow-peer 203.0.113.10/32'.
read -r -a extra <<<"${NATLAB_SERVE_ARGS:-}"
serve+=("${extra[@]}")
"$here/lab.sh" serve "$prefix" "$TRAVERSE_BIN" "${serve[@]}"
echo "natlab: lab $prefix up; traverse serve ${serve[*]}"

status=0
(
  cd "$here"
  export NATLAB_PREFIX="$prefix" NATLAB_SERVER="https://203.0.113.10" NATLAB_RESULTS="$results" \
    TRAVERSE_BIN CHROMIUM_PATH="$here/chromium-netns.sh"
  exec timeout 900 node --test --test-concurrency=1 --test-reporter=spec "${files[@]}"
) &
tests=$!
# In the background and waited for, so that a signal to this script stops the tests at once and cleans up. `timeout`
# leads its own process group (id $tests): node, its test-file processes and the browsers are stopped with it.
trap 'kill -TERM -- "-$tests" 2>/dev/null; exit 143' TERM
trap 'kill -TERM -- "-$tests" 2>/dev/null; exit 130' INT
wait "$tests" || status=$?

node "$here/report.js" "$results" || true
if [ "$status" != 0 ]; then
  echo "--- traverse log (last 40 lines) ---"
  tail -n 40 "/tmp/traverse-natlab/$prefix/traverse.log" 2>/dev/null || true
fi
exit "$status"
