#!/usr/bin/env bash
# How often the doctor names a site's NAT right: the NAT lab's site (tests/natlab/lab.sh) built once, the lab's server
# in its server namespace, then `traverse doctor --json` run N times from the site's host, 10 at a time, each binary
# in turn on the same lab; prints, per binary, how many runs gave each (mapping, filtering) pair and the transports
# found failing.
#
#   bench/doctor-repeat.sh SITE N BIN [BIN...]
#   bench/doctor-repeat.sh lossy 300 /tmp/traverse-before target/debug/traverse   # a change, against the build before
#
# The server is the first binary. Needs root (network namespaces, nftables). Every doctor run is bounded (60 s);
# the lab and its server are removed on exit.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
lab="$here/../tests/natlab/lab.sh"
[ $# -ge 3 ] || { sed -n 2,11p "$0"; exit 2; }
site="$1" n="$2"
shift 2
[ "$(id -u)" = 0 ] || { echo "doctor-repeat.sh: needs root" >&2; exit 1; }

prefix="dr$$"
out="$(mktemp -d /tmp/traverse-doctor-repeat.XXXXXX)"
cleanup() {
  "$lab" down "$prefix" >/dev/null 2>&1 || true
  rm -rf "$out"
}
trap cleanup EXIT
"$lab" up "$prefix" "$site" >/dev/null
"$lab" serve "$prefix" "$1" --udp 203.0.113.10:3478 --tcp 203.0.113.10:3478 --tls 203.0.113.10:5349 \
  --single-port 203.0.113.10:443 --http 203.0.113.10:80 --public-host 203.0.113.10 --workers 1 \
  --other-address 203.0.113.11:3479 >/dev/null

for bin in "$@"; do
  rm -f "$out"/*.json
  for ((i = 0; i < n; i += 10)); do
    for ((j = i; j < i + 10 && j < n; j++)); do
      timeout 60 ip netns exec "$prefix-$site-h" "$bin" doctor http://203.0.113.10:80 --json --insecure --quiet \
        --https-port 0 --http-port 0 >"$out/$j.json" 2>/dev/null &
    done
    wait || true
  done
  echo "$bin, $n runs in $site:"
  python3 - "$out" <<'PY'
import collections, glob, json, sys
seen = collections.Counter()
for f in glob.glob(sys.argv[1] + '/*.json'):
    try:
        nat = json.load(open(f)).get('nat') or {}
    except ValueError:
        seen['no report'] += 1
        continue
    report = json.load(open(f))
    failed = [t['key'] for t in (report.get('verdict') or {}).get('transports', []) if t.get('works') is False]
    seen[f"mapping {(nat.get('mapping') or {}).get('result')}, filtering {(nat.get('filtering') or {}).get('result')}"
         f"; failing: {', '.join(failed) or 'none'}"] += 1
for what, count in seen.most_common():
    print(f'  {count:4d}  {what}')
PY
done
