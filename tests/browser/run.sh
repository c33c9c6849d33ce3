#!/usr/bin/env bash
# Browser end-to-end tests: the SDK in headless Chromium (Debian's /usr/bin/chromium, driven by playwright-core)
# against the real `traverse` binary on loopback.
#
#   tests/browser/run.sh                      # builds target/debug/traverse unless TRAVERSE_BIN is set
#   TRAVERSE_BIN=/path/traverse tests/browser/run.sh relay.test.js
#
# Without Chromium the tests print `SKIP: …` and pass, unless TRAVERSE_REQUIRE_PEERS=1.
# As root, the tests run in a fresh network namespace holding only `lo`, so Chromium cannot reach any address but
# loopback whatever it gathers (TRAVERSE_BROWSER_NETNS=0 runs them in the host's namespace).
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
root="$(cd "$here/../.." && pwd)"

cd "$here"
npm ci --no-audit --no-fund --loglevel=error || npm install --no-audit --no-fund --loglevel=error

if [ -z "${TRAVERSE_BIN:-}" ]; then
  (cd "$root" && cargo build -p traverse)
  export TRAVERSE_BIN="${CARGO_TARGET_DIR:-$root/target}/debug/traverse"
fi

files=("$@")
[ ${#files[@]} -gt 0 ] || files=(*.test.js)
cmd=(node --test --test-concurrency=1 "${files[@]}")

if [ "${TRAVERSE_BROWSER_NETNS:-1}" != 0 ] && [ "$(id -u)" = 0 ] && command -v unshare >/dev/null 2>&1 \
  && command -v ip >/dev/null 2>&1 && unshare --net true 2>/dev/null; then
  exec timeout 1200 unshare --net -- sh -c 'ip link set lo up && exec "$@"' sh "${cmd[@]}"
fi
exec timeout 1200 "${cmd[@]}"
