#!/usr/bin/env bash
# Instructions per relayed packet in the TURN core, before and after a change: callgrind counts of
# crates/turn/tests/relay_cost.rs (ChannelData client → peer and peer → client through one allocation) at a base
# commit and in the work tree. Instruction counts, because wall time on a shared 2-core machine varies by 15 %
# between runs (docs/benchmarks.md); the difference of two packet counts removes the set-up.
#
#   bench/relay-cost.sh [BASE]     # default BASE: HEAD; needs valgrind
set -euo pipefail
cd "$(dirname "$0")/.."
BASE="${1:-HEAD}"
SMALL=1000
LARGE=21000
command -v valgrind >/dev/null || { echo "missing valgrind: apt-get install valgrind"; exit 1; }

base_dir=$(mktemp -d /tmp/relay-cost-base.XXXXXX)
trap 'rm -rf "$base_dir"' EXIT
git archive "$BASE" | tar -x -C "$base_dir"
# The same measurement in the older tree (it uses only turn::Server's public API).
cp crates/turn/tests/relay_cost.rs "$base_dir/crates/turn/tests/relay_cost.rs"

test_binary() { # work tree, target dir
  (cd "$1" && CARGO_TARGET_DIR="$2" cargo test --release -q -p traverse-turn --test relay_cost --no-run \
    --message-format=json 2>/dev/null) |
    python3 -c 'import sys, json
for line in sys.stdin:
    m = json.loads(line)
    if m.get("reason") == "compiler-artifact" and m.get("executable"):
        print(m["executable"])'
}

instructions() { # binary, packets
  RELAY_COST_PACKETS="$2" valgrind --tool=callgrind --callgrind-out-file=/dev/null "$1" --exact \
    relay_channel_data_both_ways --test-threads=1 2>&1 | sed -n 's/.*Collected : \([0-9]*\).*/\1/p'
}

per_packet() { # binary
  local small large
  small=$(instructions "$1" "$SMALL")
  large=$(instructions "$1" "$LARGE")
  # Each iteration relays two packets (one each way).
  python3 -c "print(f'{($large - $small) / (2 * ($LARGE - $SMALL)):.1f}')"
}

before_bin=$(test_binary "$base_dir" "$PWD/target/relay-cost-base")
after_bin=$(test_binary "$PWD" "$PWD/target")
before=$(per_packet "$before_bin")
after=$(per_packet "$after_bin")
echo "instructions per relayed packet (TURN core, 100-byte ChannelData both ways)"
echo "  base $(git rev-parse --short "$BASE"): $before"
echo "  work tree:  $after"
python3 -c "print(f'  change: {($after - $before) / $before * 100:+.2f} %')"
