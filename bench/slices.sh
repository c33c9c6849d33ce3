# Sourced by bench scripts: CPU slices for a process's threads, so that each worker thread stands for a core of its
# own on a machine whose cores the load generator needs too (cgroup v1 `cpu`, CFS bandwidth: PERCENT % of each 10 ms
# period). Used by bench/signaling/cores.sh and by bench/relay-cores.sh with SLICE=N.
SLICE_ROOT=/sys/fs/cgroup/cpu

slices_available() { [ -w "$SLICE_ROOT/tasks" ] && [ -e "$SLICE_ROOT/cpu.cfs_quota_us" ]; }

# slice_threads DIR PID PERCENT: each thread of PID named traverse-worker in a slice of its own (DIR/PID-w0, -w1, …),
# the process's other threads in one more (DIR/PID-rest). Prints how many worker threads it found.
slice_threads() {
  local dir=$1 pid=$2 percent=$3 w=0 t g
  for t in /proc/"$pid"/task/*; do
    if [ "$(cat "$t/comm")" = traverse-worker ]; then g="$dir/$pid-w$w"; w=$((w + 1)); else g="$dir/$pid-rest"; fi
    mkdir -p "$g"
    echo 10000 >"$g/cpu.cfs_period_us"
    echo $((percent * 100)) >"$g/cpu.cfs_quota_us"
    echo "${t##*/}" >"$g/tasks"
  done
  echo "$w"
}

# slice_throttled DIR/NAME: "periods throttled" so far.
slice_throttled() { awk '/^nr_periods/{p=$2} /^nr_throttled/{t=$2} END{print p, t}' "$1/cpu.stat"; }

# unslice DIR: removes DIR's slices and DIR; threads still in one go back to the root first.
unslice() {
  [ -d "$1" ] || return 0
  local g t
  for g in "$1"/*/; do
    [ -d "$g" ] || continue
    while read -r t; do echo "$t" >"$SLICE_ROOT/tasks" 2>/dev/null || true; done <"$g/tasks"
    rmdir "$g" 2>/dev/null || true
  done
  rmdir "$1" 2>/dev/null || true
}
