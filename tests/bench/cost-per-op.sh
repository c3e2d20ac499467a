#!/usr/bin/env bash
# Counts the instructions a --dev node executes per request, by thread, for several node
# binaries side by side: the figure to compare builds by on a shared machine, where
# ops/s of single runs vary by ±30% and the hardware counters of `perf stat -e
# instructions` are not there (a VM without a PMU prints "<not supported>").
#
#   NODE_BINS="before=/path/to/old-node after=target/release/opencluster-node" tests/bench/cost-per-op.sh
#   TESTS="set:16 get:16 set:1" ROUNDS=3 REQUESTS=100000 NODE_BINS=... tests/bench/cost-per-op.sh
#
# Each node runs under valgrind's callgrind (one profile per thread). After a warm-up (and,
# for GET, 200000 pipelined SETs that fill the key space) the counts are zeroed, one
# redis-benchmark run of REQUESTS requests (CLIENTS clients, 64-byte values, 100000 random
# keys, pipeline P from TESTS) goes through, and the counts are dumped: instructions (Ir)
# per request of the tokio workers (the request path), of the store applier (the background
# thread that moves buffered writes into sled: how much of its work falls in the window
# depends on timing, so it varies between runs of one binary) and of the other threads.
# Rounds interleave the binaries; the table shows each binary's median per test.
#
# Needs valgrind (Debian: valgrind), redis-benchmark and redis-cli. Under callgrind a node
# runs 20-50 times slower: a round of three tests on two binaries takes about 3 minutes.
set -euo pipefail
cd "$(dirname "$0")/../.."
# shellcheck source=tests/bench/lib.sh
. tests/bench/lib.sh

REQUESTS=${REQUESTS:-100000}
ROUNDS=${ROUNDS:-3}
CLIENTS=${CLIENTS:-50}
TESTS=${TESTS:-set:16 get:16 set:1}
: "${NODE_BINS:?NODE_BINS=\"label=path ...\" names the node binaries to compare}"
need_tools valgrind callgrind_control redis-benchmark redis-cli
NODE_BIN=unused setup_run

# run_one LABEL BIN TEST PIPELINE: one node, one measured benchmark; appends
# "label test pipeline workers applier other" to $WORK/results.
run_one() {
  local label=$1 bin=$2 test=$3 pipeline=$4 port admin gossip rpc pid out kind f ir
  port=$(free_port) admin=$(free_port) gossip=$(free_port) rpc=$(free_port)
  out="$WORK/$label-$test-$pipeline"
  mkdir -p "$out"
  valgrind --tool=callgrind --separate-threads=yes --callgrind-out-file="$out/cg" "$bin" --dev \
    --data-dir "$out/data" --client-addr "127.0.0.1:$port" --admin-addr "127.0.0.1:$admin" \
    --gossip-addr "127.0.0.1:$gossip" --rpc-addr "127.0.0.1:$rpc" --log-level warn >"$out/log" 2>&1 &
  pid=$!
  PIDS+=("$pid")
  wait_ping "$port" 120
  local bench=(redis-benchmark -p "$port" -c "$CLIENTS" -d 64 -r 100000 -q)
  if [ "$test" = get ]; then
    timeout 600 "${bench[@]}" -t set -P 16 -n 200000 >/dev/null
  fi
  timeout 600 "${bench[@]}" -t "$test" -P "$pipeline" -n 20000 >/dev/null
  timeout 60 callgrind_control -z "$pid" >/dev/null 2>&1
  timeout 1200 "${bench[@]}" -t "$test" -P "$pipeline" -n "$REQUESTS" >/dev/null
  timeout 60 callgrind_control -d "$pid" >/dev/null 2>&1
  kill "$pid"
  wait "$pid" 2>/dev/null || true
  # One file per thread of the dump: classify each by the code it ran.
  declare -A sum=([workers]=0 [applier]=0 [other]=0)
  for f in "$out"/cg.1-*; do
    ir=$(awk '/^(summary|totals):/ { print $2; exit }' "$f")
    if grep -q run_applier "$f"; then
      kind=applier
    elif grep -q 'multi_thread::worker' "$f"; then
      kind=workers
    else
      kind=other
    fi
    sum[$kind]=$((sum[$kind] + ${ir:-0}))
  done
  echo "$label $test $pipeline $((sum[workers] / REQUESTS)) $((sum[applier] / REQUESTS)) $((sum[other] / REQUESTS))" \
    | tee -a "$WORK/results"
  rm -rf "$out"
}

echo "machine: $(nproc) cores; $REQUESTS requests per run, $CLIENTS clients, 64-byte values, 100000 keys"
echo "label test P workers applier other (instructions per request)"
for round in $(seq "$ROUNDS"); do
  for t in $TESTS; do
    for entry in $NODE_BINS; do
      run_one "${entry%%=*}" "${entry#*=}" "${t%%:*}" "${t#*:}"
    done
  done
  echo "round $round of $ROUNDS done" >&2
done

printf '\nmedian of %s rounds, instructions per request\n%-10s %-5s %-4s %10s %10s %8s\n' \
  "$ROUNDS" binary test P workers applier other
for t in $TESTS; do
  for entry in $NODE_BINS; do
    label=${entry%%=*} test=${t%%:*} pipeline=${t#*:}
    col() { awk -v l="$label" -v t="$test" -v p="$pipeline" -v c="$1" '$1 == l && $2 == t && $3 == p { print $c }' "$WORK/results" | median; }
    printf '%-10s %-5s %-4s %10s %10s %8s\n' "$label" "$test" "$pipeline" "$(col 4)" "$(col 5)" "$(col 6)"
  done
done
