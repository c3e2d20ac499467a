# Shared by the benchmark scripts: free loopback ports and waiting for a RESP server.

# A port on 127.0.0.1 that nothing listens on, below the kernel's ephemeral range (32768
# and up here), so that no outgoing connection or port-0 socket takes it before the
# server binds it.
free_port() {
  local p
  while :; do
    p=$(( (RANDOM << 15 | RANDOM) % 12000 + 20000 ))
    (exec 3<>"/dev/tcp/127.0.0.1/$p") 2>/dev/null || { echo "$p"; return; }
  done
}

# Waits up to 20 s (or the seconds given second) for PONG on a port.
wait_ping() {
  local port=$1 deadline=$((SECONDS + ${2:-20}))
  until [ "$(redis-cli -p "$port" ping 2>/dev/null)" = PONG ]; do
    [ $SECONDS -lt $deadline ] || { echo "no PONG on port $port" >&2; exit 1; }
    sleep 0.1
  done
}

# bench_rounds "EXTRA" LABEL PORT [LABEL PORT ...]: ROUNDS rounds; in each, for -P 1 and
# -P 16, redis-benchmark (CLIENTS clients, REQUESTS requests, 64-byte values, plus the
# arguments in EXTRA: options, or a custom command such as `GET key`) against each port in turn, its CSV lines prefixed LABEL,PIPELINE and
# appended to $WORK/results.csv (what fig reads). Interleaving the targets within each
# round spreads the machine's drift evenly over them.
bench_rounds() {
  local extra=$1 round pipeline i
  shift
  local -a targets=("$@")
  for round in $(seq "$ROUNDS"); do
    for pipeline in 1 16; do
      for ((i = 0; i < ${#targets[@]}; i += 2)); do
        # shellcheck disable=SC2086 # EXTRA is a list of arguments
        # EXTRA goes last: a custom command (`GET key`) takes every word after it.
        redis-benchmark -p "${targets[i + 1]}" -c "$CLIENTS" -n "$REQUESTS" -d 64 -P "$pipeline" --csv $extra \
          2>/dev/null | tail -n +2 | tr -d '"' | sed "s/^/${targets[i]},$pipeline,/" >>"$WORK/results.csv"
      done
    done
    echo "round $round of $ROUNDS done" >&2
  done
}

# The median of the numbers on stdin, one per line.
median() { sort -g | awk '{ v[NR] = $1 } END { print v[int((NR + 1) / 2)] }'; }

# fig LABEL PIPELINE TEST COLUMN: the median over rounds of one column (4 = ops/s,
# 7 = p50, 9 = p99) of $WORK/results.csv, whose lines are LABEL,PIPELINE,redis-benchmark CSV.
fig() {
  awk -F, -v t="$1" -v p="$2" -v n="$3" -v c="$4" '$1 == t && $2 == p && $3 == n { print $c }' "$WORK/results.csv" | median
}

# Resident memory of a process, in kB.
rss_kb() { awk '/^VmRSS/ {print $2}' "/proc/$1/status"; }

# Exits with a message naming the script if one of the given tools is missing.
need_tools() {
  local tool
  for tool in "$@"; do
    command -v "$tool" >/dev/null || { echo "$(basename "$0" .sh): $tool not found (Debian: redis-server, redis-tools, curl, jq)" >&2; exit 2; }
  done
}

# Sets NODE (NODE_BIN, or opencluster-node built now, in CARGO_TARGET_DIR or target/), a
# scratch dir WORK and an empty PIDS list; on exit every process in PIDS is killed (SIGKILL
# with KILL_SIGNAL=-9) and WORK is removed.
setup_run() {
  if [ -n "${NODE_BIN:-}" ]; then
    NODE=$NODE_BIN
  else
    cargo build --release -q -p opencluster-node
    NODE=${CARGO_TARGET_DIR:-target}/release/opencluster-node
  fi
  WORK=$(mktemp -d)
  PIDS=()
  trap cleanup_run EXIT
}

cleanup_run() {
  local p
  for p in "${PIDS[@]}"; do kill ${KILL_SIGNAL:-} "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$WORK"
}
