#!/usr/bin/env bash
# The one test command: installs the real peers the tests use (when run as root on Debian), then runs everything:
# unit, property, differential and simulated-time tests, interop tests against coturn's clients and aioice,
# signaling protocol tests on the real binary, browser end-to-end tests in headless Chromium (playwright-core), the
# NAT lab (real NATs in network namespaces: `traverse doctor` and Chromium pairs per scenario), and a bounded fuzz run
# of the STUN decoder.
#
#   scripts/test.sh                  # everything
#   FUZZ_SECONDS=0 scripts/test.sh   # skip the fuzz run
#   BROWSER_TESTS=0 scripts/test.sh  # skip the browser tests
#   NATLAB=0 scripts/test.sh         # skip the NAT lab
#   INSTALL_TEST=0 scripts/test.sh   # skip installing the .deb
set -euo pipefail
cd "$(dirname "$0")/.."

# Each phase's wall time, so that a CI run that grows toward its limit says where (summed up at the end).
started=$SECONDS
timings=()
phase() {
  local name="$1" t0=$SECONDS
  shift
  "$@"
  timings+=("$(printf '%5d s  %s' $((SECONDS - t0)) "$name")")
  echo "test.sh: $name took $((SECONDS - t0)) s"
}

if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
  missing=()
  command -v turnutils_uclient >/dev/null 2>&1 || missing+=(coturn)
  command -v ip >/dev/null 2>&1 || missing+=(iproute2)
  command -v nft >/dev/null 2>&1 || missing+=(nftables)
  # The NAT lab's survive test flushes the NAT's connection tracking mid-call (tests/natlab/survive.test.js).
  command -v conntrack >/dev/null 2>&1 || missing+=(conntrack)
  command -v chromium >/dev/null 2>&1 || missing+=(chromium)
  command -v curl >/dev/null 2>&1 || missing+=(curl)
  command -v prlimit >/dev/null 2>&1 || missing+=(util-linux)
  command -v strip >/dev/null 2>&1 || missing+=(binutils)
  # The ACME tests issue certificates from Pebble, the ACME test CA, on loopback.
  command -v pebble >/dev/null 2>&1 || missing+=(pebble)
  # The ACME browser test trusts only Pebble's root, imported with certutil into an NSS database.
  command -v certutil >/dev/null 2>&1 || missing+=(libnss3-tools)
  # The cluster tests run a real Redis (crates/traverse/tests/cluster.rs).
  command -v redis-server >/dev/null 2>&1 || missing+=(redis-server)
  # A cluster node whose wall clock runs behind the others' (libfaketime, LD_PRELOAD'ed by the test).
  command -v faketime >/dev/null 2>&1 || missing+=(faketime)
  command -v openssl >/dev/null 2>&1 || missing+=(openssl)
  # TURN and HTTP through a layer-4 balancer sending PROXY protocol headers (crates/traverse/tests/interop.rs).
  command -v haproxy >/dev/null 2>&1 || missing+=(haproxy)
  # The NAT lab's `proxy` site: a network whose only way out is an HTTP proxy (tests/natlab/lab.sh).
  command -v tinyproxy >/dev/null 2>&1 || missing+=(tinyproxy-bin)
  # The XDP fast path's test (crates/traverse/tests/xdp.rs) turns checksum offload off on its veths; its program is
  # built by clang against libbpf's headers (also installed by .ci/run before the build).
  command -v ethtool >/dev/null 2>&1 || missing+=(ethtool)
  command -v clang >/dev/null 2>&1 || missing+=(clang llvm)
  [ -f /usr/include/bpf/bpf_helpers.h ] || missing+=(libbpf-dev)
  if [ ${#missing[@]} -gt 0 ]; then
    echo "test.sh: installing ${missing[*]}"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  fi
  python3 -c 'import aioice' 2>/dev/null || python3 -m pip install -q aioice
  # A WebRTC peer that is not a browser: aiortc in a call with the SDK (tests/browser/aiortc.test.js).
  python3 -c 'import aiortc, websockets' 2>/dev/null || python3 -m pip install -q aiortc websockets
  # The metrics test parses /metrics with Prometheus' own Python text parser.
  python3 -c 'import prometheus_client' 2>/dev/null || python3 -m pip install -q prometheus_client
  # The tests must not silently skip what CI can install.
  export TRAVERSE_REQUIRE_PEERS="${TRAVERSE_REQUIRE_PEERS:-1}"
fi

# Many relay sockets and client sockets at once in the interop tests.
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true

phase "Rust tests (build included)" cargo test --workspace --all-targets

# The install path: the .deb built from this tree, installed with dpkg -i, its serve (unprivileged, on 443) and its
# doctor run against each other, then purged (root only; prints SKIP otherwise).
if [ "${INSTALL_TEST:-1}" != 0 ]; then
  TRAVERSE_BIN="${CARGO_TARGET_DIR:-$PWD/target}/debug/traverse" phase "install (.deb)" tests/install/run.sh
fi

if [ "${BROWSER_TESTS:-1}" != 0 ]; then
  # TypeScript for the SDK's declarations and the examples (tests/sdk/types.test.mjs).
  (cd tests/sdk && { npm ci --no-audit --no-fund --loglevel=error || npm install --no-audit --no-fund --loglevel=error; })
  # The browser SDK's session protocol, outcome reports, file chunking, types — without a browser.
  phase "SDK (node)" node --test tests/sdk/
  TRAVERSE_BIN="${CARGO_TARGET_DIR:-$PWD/target}/debug/traverse" phase "browser (Chromium)" tests/browser/run.sh
fi

# The NAT lab: real NATs in network namespaces (root only; prints SKIP otherwise).
if [ "${NATLAB:-1}" != 0 ]; then
  TRAVERSE_BIN="${CARGO_TARGET_DIR:-$PWD/target}/debug/traverse" phase "NAT lab" tests/natlab/run.sh
  # Calls that survive (issue 11): an address change, a link down, a NAT flush, a 30 s UDP timeout, a server restart, a
  # signaling-only restart, and beside them a 3-minute call on 60 s credentials, on the four sites they need (about 4 min).
  NATLAB_SITES=eim-a,eim-b,sym-a,sym-b TRAVERSE_BIN="${CARGO_TARGET_DIR:-$PWD/target}/debug/traverse" \
    phase "NAT lab: calls that survive" tests/natlab/run.sh survive.test.js
fi

if [ "${FUZZ_SECONDS:-60}" != 0 ] && [ -x scripts/fuzz.sh ]; then
  phase "fuzz (cargo-fuzz installed and built included)" scripts/fuzz.sh "${FUZZ_SECONDS:-60}"
fi

echo "test.sh: passed in $((SECONDS - started)) s:"
printf '  %s\n' "${timings[@]}"
