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
anon_kb() { awk '/^RssAnon/ {print $2}' "/proc/$1/status"; }

# Exits with a message naming the script if one of the given tools is missing.
need_tools() {
  local tool
  for tool in "$@"; do
    command -v "$tool" >/dev/null || { echo "$(basename "$0" .sh): $tool not found (Debian: redis-server, redis-tools, curl, jq)" >&2; exit 2; }
  done
}

# Sets NODE (NODE_BIN, or opencluster-node built now, in CARGO_TARGET_DIR or target/), a
# scratch dir WORK and an empty PIDS list; on exit, also when interrupted, every process in
# PIDS is killed (SIGKILL with KILL_SIGNAL=-9) and WORK is removed.
setup_run() {
  if [ -n "${NODE_BIN:-}" ]; then
    NODE=$NODE_BIN
  else
    cargo build --release -q -p opencluster-node
    NODE=${CARGO_TARGET_DIR:-target}/release/opencluster-node
  fi
  WORK=$(mktemp -d)
  PIDS=()
  CGROUPS=()
  trap cleanup_run EXIT
  trap 'exit 130' INT
  trap 'exit 143' TERM
}

cleanup_run() {
  local p c
  # A process a script froze (SIGSTOP) acts on the signal only once continued.
  for p in "${PIDS[@]}"; do kill ${KILL_SIGNAL:-} "$p" 2>/dev/null && kill -CONT "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  for c in "${CGROUPS[@]}"; do cg_remove "$c"; done
  rm -rf "$WORK"
}

# --- Memory cgroups (storage-study, sustained-writes.sh; need root) ----------------------
# The cgroup directory for a new group under this shell's own memory cgroup (v1 or v2).
CG_ROOT=/sys/fs/cgroup
own=$(awk -F: '$2 ~ /(^|,)memory(,|$)/ { print $3 }' /proc/self/cgroup)
if [ -n "$own" ]; then
  CG_BASE=$CG_ROOT/memory${own%/}; CG_V=1
else
  CG_BASE=$CG_ROOT$(awk -F: '$1 == 0 { print $3 }' /proc/self/cgroup); CG_BASE=${CG_BASE%/}; CG_V=2
fi
cg_make() { # NAME LIMIT_BYTES [SWAP_BYTES] -> prints the directory (remove it with cg_remove)
  local dir=$CG_BASE/${CG_PREFIX:-oc-bench}-$$-$1 swap=${3:-0}
  mkdir "$dir"
  if [ $CG_V = 1 ]; then
    echo "$2" >"$dir/memory.limit_in_bytes"
    if [ -e "$dir/memory.memsw.limit_in_bytes" ]; then
      echo $(($2 + swap)) >"$dir/memory.memsw.limit_in_bytes"
    elif [ "$swap" != 0 ]; then
      echo "$(basename "$0"): swap in a cgroup needs swap accounting (memory.memsw.limit_in_bytes)" >&2; exit 2
    fi
  else
    echo "$2" >"$dir/memory.max"
    [ ! -e "$dir/memory.swap.max" ] || echo "$swap" >"$dir/memory.swap.max"
  fi
  echo "$dir"
}
cg_swap_used() { # DIR -> bytes of the group's memory in swap now
  if [ $CG_V = 1 ]; then awk '$1 == "total_swap" { print $2 }' "$1/memory.stat"; else cat "$1/memory.swap.current" 2>/dev/null || echo 0; fi
}
cg_page_cache() { # DIR -> bytes
  if [ $CG_V = 1 ]; then awk '$1 == "total_cache" { print $2 }' "$1/memory.stat"; else awk '$1 == "file" { print $2 }' "$1/memory.stat"; fi
}
cg_oom_kills() {
  if [ $CG_V = 1 ]; then awk '$1 == "oom_kill" { print $2 }' "$1/memory.oom_control"; else awk '$1 == "oom_kill" { print $2 }' "$1/memory.events"; fi
}
cg_drop_cache() { # empties the cgroup's page cache (no process left in it)
  if [ $CG_V = 1 ]; then echo 0 >"$1/memory.force_empty" 2>/dev/null || true
  elif [ -e "$1/memory.reclaim" ]; then echo 1G >"$1/memory.reclaim" 2>/dev/null || true; fi
}
cg_remove() {
  [ -d "$1" ] || return 0
  local deadline=$((SECONDS + 10))
  until rmdir "$1" 2>/dev/null; do [ $SECONDS -lt $deadline ] || { echo "cannot remove $1" >&2; return 0; }; sleep 0.1; done
}
cg_peak() { # DIR -> the most bytes the group was charged
  if [ $CG_V = 1 ]; then cat "$1/memory.max_usage_in_bytes"; else cat "$1/memory.peak" 2>/dev/null || echo 0; fi
}
cg_run() { # DIR COMMAND...: runs COMMAND inside the group, in the background
  sh -c 'echo $$ > "$0" && exec "$@"' "$1/cgroup.procs" "${@:2}" &
}

# --- Two datacenters on this machine (replication-lag.sh, home-keyspace.sh) -------------
# setup_datacenters_run [TEST BINARIES...]: the release binaries of the node, connector,
# pki tool and relay (and the named bins of the tests crate), built unless BIN_DIR names
# them; NODE, CONNECTOR, PKI and RELAY point at them; then setup_run.
setup_datacenters_run() {
  if [ -z "${BIN_DIR:-}" ]; then
    cargo build --release -q -p opencluster-node -p opencluster-connector -p opencluster-pki
    local bins=(--bin opencluster-relay) b
    for b in "$@"; do bins+=(--bin "$b"); done
    cargo build --release -q -p opencluster-tests "${bins[@]}"
    BIN_DIR=${CARGO_TARGET_DIR:-target}/release
  fi
  NODE_BIN=$BIN_DIR/opencluster-node
  setup_run
  CONNECTOR=$BIN_DIR/opencluster-connector
  PKI=$BIN_DIR/opencluster-pki
  RELAY=$BIN_DIR/opencluster-relay
}

log() { echo "[$(date -u +%H:%M:%S)] $*" >&2; }

# wait_eval COMMAND SECONDS: evaluates the string COMMAND every 0.1 s until it succeeds;
# exits through the caller's `fail` after SECONDS.
wait_eval() {
  local deadline=$((SECONDS + $2))
  until eval "$1"; do
    [ $SECONDS -lt $deadline ] || fail "timed out waiting for: $1"
    sleep 0.1
  done
}

# start_datacenters NODES [NODE FLAGS...]: customer keys for dc1 and dc2 from $PKI (in
# $WORK/tls-<dc>), then NODES nodes per datacenter from $NODE, named <dc>-n<i>, each with
# the flags given; their ports in CLIENT, ADMIN and GOSSIP (associative arrays the caller
# declares). Waits until every node answers PING and places partitions on all the nodes of
# its datacenter; exits through the caller's `fail` if one does not within 60 s.
start_datacenters() {
  local nodes=$1 dc i n
  shift
  "$PKI" init --cluster acme --out "$WORK/ca" >/dev/null
  for dc in dc1 dc2; do
    "$PKI" datacenter --ca "$WORK/ca" --dc "$dc" --out "$WORK/tls-$dc" >/dev/null
  done
  for dc in dc1 dc2; do
    for i in $(seq "$nodes"); do
      n=$dc-n$i
      CLIENT[$n]=$(free_port)
      ADMIN[$n]=$(free_port)
      GOSSIP[$n]=$(free_port)
      local join=()
      [ "$i" -gt 1 ] && join=(--join "127.0.0.1:${GOSSIP[$dc-n1]}")
      "$NODE" --dev --node-name "$n" --datacenter "$dc" --tls-dir "$WORK/tls-$dc" --data-dir "$WORK/$n" \
        --client-addr "127.0.0.1:${CLIENT[$n]}" --admin-addr "127.0.0.1:${ADMIN[$n]}" \
        --gossip-addr "127.0.0.1:${GOSSIP[$n]}" --rpc-addr 127.0.0.1:0 --log-level warn \
        "$@" "${join[@]}" >"$WORK/$n.log" 2>&1 &
      PIDS+=($!)
    done
  done
  for n in "${!CLIENT[@]}"; do wait_ping "${CLIENT[$n]}" 60; done
  for n in "${!ADMIN[@]}"; do
    wait_eval "curl -sf 127.0.0.1:${ADMIN[$n]}/v1/status | jq -e '.placement.nodes == $nodes' >/dev/null" 60
  done
}
