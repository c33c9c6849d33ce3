#!/usr/bin/env bash
# Bounded fuzz run of the STUN decoder (crates/stun/fuzz, target `decode`), on the stable toolchain.
#
#   scripts/fuzz.sh [SECONDS]     # default 60
#
# `-s none` builds without a sanitizer: the codec has no unsafe code, so ASan would find nothing the panic-on-bug
# harness does not, and sanitizers need nightly. Coverage instrumentation (sancov) is a stable codegen pass.
set -euo pipefail
cd "$(dirname "$0")/.."

seconds="${1:-60}"

if ! cargo fuzz --version >/dev/null 2>&1; then
  echo "fuzz.sh: installing cargo-fuzz"
  cargo install cargo-fuzz --locked
fi

cd crates/stun
# The committed seeds are corpus/decode/rfc*; what the fuzzer adds beside them is ignored by fuzz/.gitignore.
cargo fuzz run decode -s none -- -max_total_time="$seconds" -print_final_stats=1
