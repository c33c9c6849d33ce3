#!/usr/bin/env bash
# The install path, as an operator takes it: build the .deb, `dpkg -i` it on this machine, check what it installed
# (binary without debug information, the `traverse` system user, the unit, the conffile, a secret readable by the
# service only), run the installed `serve` as that unprivileged user with only CAP_NET_BIND_SERVICE (binding 443 proves
# the capability works) and the installed `doctor` against it, then purge the package.
#
# Root only (dpkg, setpriv, a network namespace holding only `lo`, so nothing leaves loopback). Prints SKIP otherwise,
# and fails instead under TRAVERSE_REQUIRE_PEERS=1.
#
#   TRAVERSE_BIN=target/debug/traverse tests/install/run.sh
set -euo pipefail
root="$(cd "$(dirname "$0")/../.." && pwd)"
cd "$root"

skip() {
  if [ "${TRAVERSE_REQUIRE_PEERS:-0}" = 1 ]; then echo "install test: FAIL: $1" >&2; exit 1; fi
  echo "SKIP: install test: $1"
  exit 0
}
[ "$(id -u)" = 0 ] || skip "needs root (dpkg -i)"
for tool in dpkg dpkg-deb setpriv unshare ip strip readelf objdump curl; do
  command -v "$tool" >/dev/null 2>&1 || skip "$tool is missing"
done
if dpkg -s traverse >/dev/null 2>&1; then
  skip "a traverse package is already installed here; not replacing it"
fi

deb="$(packaging/deb/build.sh | tail -n 1)"
echo "install test: $deb ($(du -h "$deb" | cut -f1))"

server_pid=""
cleanup() {
  [ -n "$server_pid" ] && kill "$server_pid" 2>/dev/null || true
  dpkg --purge traverse >/dev/null 2>&1 || true
}
trap cleanup EXIT

fail() { echo "install test: FAIL: $*" >&2; exit 1; }

dpkg -i "$deb" >/dev/null
[ -x /usr/bin/traverse ] || fail "/usr/bin/traverse missing"
/usr/bin/traverse --version | grep -q '^traverse ' || fail "traverse --version"
if readelf -S /usr/bin/traverse | grep -q '\.debug_info'; then fail "the shipped binary carries debug information"; fi
getent passwd traverse >/dev/null || fail "no traverse system user"
[ "$(getent passwd traverse | cut -d: -f7)" = /usr/sbin/nologin ] || fail "the traverse user can log in"
[ -f /lib/systemd/system/traverse.service ] || fail "no systemd unit"
grep -q '^AmbientCapabilities=CAP_NET_BIND_SERVICE$' /lib/systemd/system/traverse.service || fail "unit lacks the capability"
grep -q '^User=traverse$' /lib/systemd/system/traverse.service || fail "unit does not run as traverse"
dpkg-query -W -f='${Conffiles}' traverse | grep -q /etc/traverse/traverse.toml || fail "traverse.toml is not a conffile"
[ "$(stat -c '%a %U %G' /etc/traverse/traverse.env)" = "640 root traverse" ] || fail "traverse.env permissions"
[ "$(stat -c '%a %U %G' /etc/traverse/traverse.toml)" = "640 root traverse" ] || fail "traverse.toml permissions"
# Rooms (and the TURN credentials handed out with them) need a join token from the first start.
grep -q '^TRAVERSE_SIGNAL_SECRET=.\{16,\}' /etc/traverse/traverse.env || fail "no join-token secret generated"
grep -q '^Type=notify$' /lib/systemd/system/traverse.service || fail "the unit does not wait for readiness"
/usr/bin/traverse check-config /etc/traverse/traverse.toml >/dev/null || fail "the installed configuration does not check"
if command -v systemd-analyze >/dev/null 2>&1; then
  systemd-analyze verify /lib/systemd/system/traverse.service 2>&1 | grep -v 'Documentation' | grep -i 'error' \
    && fail "systemd-analyze verify" || true
fi

# The installed server, as the unit runs it (same user, same capability, same files), in a namespace of its own.
state="$(mktemp -d)"
chown traverse:traverse "$state"
log="$state/serve.log"
report="$state/doctor.json"
unshare --net -- sh -c '
  set -e
  ip link set lo up
  set -a; . /etc/traverse/traverse.env; set +a
  STATE_DIRECTORY="$1" setpriv --reuid traverse --regid traverse --init-groups \
    --inh-caps +net_bind_service --ambient-caps +net_bind_service --bounding-set -all,+net_bind_service \
    /usr/bin/traverse serve --config /etc/traverse/traverse.toml --single-port 127.0.0.1:443 \
      --allow-peer 127.0.0.0/8 >"$2" 2>&1 &
  pid=$!
  for _ in $(seq 600); do grep -q "^iceServers: " "$2" && break; sleep 0.1; done
  grep -q "^iceServers: " "$2" || { kill $pid; exit 3; }
  grep -q "127.0.0.1:443" "$2" || { kill $pid; exit 4; }
  ps -o user= -p $pid | grep -q traverse || { kill $pid; exit 5; }
  # Without a join token the installed server hands out no TURN credential: the doctor gets one, as an app would.
  code=0
  if [ "$(curl -s -o /dev/null -w "%{http_code}" http://127.0.0.1:8080/api/ice-servers)" != 401 ]; then
    code=6
  else
    token="$(/usr/bin/traverse token --room "*" --identity doctor)"
    /usr/bin/traverse doctor http://127.0.0.1:8080 --token "$token" --json --insecure --http-port 0 >"$3" \
      2>/dev/null || code=$?
  fi
  kill $pid
  wait $pid 2>/dev/null || true
  exit $code
' sh "$state" "$log" "$report" || {
  code=$?
  cat "$log" >&2
  case $code in
    3) fail "the installed serve never became ready" ;;
    4) fail "the unprivileged serve did not bind 443 (CAP_NET_BIND_SERVICE)" ;;
    5) fail "serve did not run as the traverse user" ;;
    6) fail "the installed server handed out ICE servers without a join token" ;;
    *) fail "the installed doctor found nothing working (exit $code): $(head -c 2000 "$report")" ;;
  esac
}
python3 - "$report" <<'PY' || fail "doctor report"
import json, sys
r = json.load(open(sys.argv[1]))
text = json.dumps(r)
assert r["exit_code"] == 0, r["exit_code"]
works = {t["key"]: t["works"] for t in r["verdict"]["transports"]}
# Every transport of the installed configuration, and the single port on 443 the unprivileged user bound.
for key in ["signaling", "stun-udp", "turn-udp", "turn-tcp", "turn-tls", "turn-tls-443"]:
    assert works.get(key) is True, (key, works)
print("install test: doctor against the installed server:", ", ".join(k for k, v in works.items() if v))
PY
rm -rf "$state"
dpkg --purge traverse >/dev/null
[ ! -e /usr/bin/traverse ] || fail "purge left /usr/bin/traverse"
[ ! -e /etc/traverse/traverse.env ] || fail "purge left the secret"
trap - EXIT
echo "install test: ok (dpkg -i, unprivileged serve on 443 with CAP_NET_BIND_SERVICE, doctor, purge)"
