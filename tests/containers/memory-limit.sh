#!/usr/bin/env bash
# Container test: nodes under `docker run --memory 128m` stay up under load. Run by run.sh;
# alone: `bash tests/containers/memory-limit.sh`.
#
# Three nodes, each limited to 128 MiB (no swap) and configured by
# deploy/docker/conf.d/memory-128m.toml (mounted into conf.d/), take writes of 4 KiB
# values from the example app beside m1 (over the socket) and from the app of m2 (over
# TCP) for LOAD_SECONDS (default 40): 2 x 300 writes/s, about 95 MB per node with 3
# replicas, well beyond the memory limit. Then every node must still be running, never
# restarted (RestartCount 0), not OOM-killed (State.OOMKilled false) and healthy, and
# every acknowledged write (distinct keys) must read back through m3. The peak memory
# use docker stats showed for each node is printed.
#
# Environment: LOAD_SECONDS; MEMORY_PROFILE, the conf.d file to mount (empty: none, the
# node's defaults).
SCENARIO=${SCENARIO:-memory-limit}
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
begin

PASSWORD="pw-$RANDOM$RANDOM"
NET="$RUN-net"
NODES=(m1 m2 m3)
LIMIT=128m
LOAD_SECONDS=${LOAD_SECONDS:-40}
PROFILE=${MEMORY_PROFILE-$ROOT/deploy/docker/conf.d/memory-128m.toml}
profile_mount=()
if [ -n "$PROFILE" ]; then
  [ -f "$PROFILE" ] || fail "$PROFILE is missing"
  profile_mount=(-v "$PROFILE:/etc/opencluster/conf.d/50-memory.toml:ro")
fi

docker network create --label "$LABEL" "$NET" >/dev/null
for n in "${NODES[@]}"; do
  docker volume create --label "$LABEL" "$RUN-$n-run" >/dev/null
  docker run -d --name "$RUN-$n" --hostname "$n" --label "$LABEL" --network "$NET" --network-alias "$n" \
    --memory "$LIMIT" --memory-swap "$LIMIT" \
    "${profile_mount[@]}" \
    -e OPENCLUSTER_CLIENT_PASSWORD="$PASSWORD" -e OPENCLUSTER_JOIN=m1:7946,m2:7946,m3:7946 \
    -v "$RUN-$n-run:/run/opencluster" "${PREFIX}node:$TAG" >/dev/null
done
say "m1, m2, m3 started with --memory $LIMIT and ${PROFILE:-the default settings}"
wait_cluster_up "$RUN" m1 m2 m3
for n in "${NODES[@]}"; do
  [ "$(docker inspect -f '{{.HostConfig.Memory}}' "$RUN-$n")" = $((128 << 20)) ] || fail "$n has no 128 MiB limit"
done

# Peak memory use of each node as docker stats shows it, sampled every 2s during the load.
(
  while :; do
    docker stats --no-stream --format '{{.Name}} {{.MemUsage}}' "$RUN-m1" "$RUN-m2" "$RUN-m3" >>"$WORK/stats" 2>/dev/null
    sleep 2
  done
) &
sampler=$!
scenario_cleanup() { kill "$sampler" 2>/dev/null; }

say "the apps of m1 (socket) and m2 (TCP) each write 300 x 4 KiB/s for ${LOAD_SECONDS}s"
docker run --rm --label "$LABEL" --network none -v "$RUN-m1-run:/run/opencluster" "${PREFIX}example-app:$TAG" \
  load --rate 300 --value-bytes 4096 --duration "${LOAD_SECONDS}s" --prefix mem-m1 --acked - \
  >"$WORK/m1.acked" 2>"$WORK/m1.log" &
app1=$!
docker run --rm --label "$LABEL" --network "$NET" -e OPENCLUSTER_APP_PASSWORD="$PASSWORD" "${PREFIX}example-app:$TAG" \
  --url redis://m2:6379 load --rate 300 --value-bytes 4096 --duration "${LOAD_SECONDS}s" --prefix mem-m2 --acked - \
  >"$WORK/m2.acked" 2>"$WORK/m2.log" &
app2=$!
rc1=0 rc2=0
wait "$app1" || rc1=$?
wait "$app2" || rc2=$?
for n in m1 m2; do
  printf '    app of %s: %s\n' "$n" "$(grep '^load: attempted' "$WORK/$n.log" || echo '(no report)')"
done
for n in "${NODES[@]}"; do
  container_ok "$RUN-$n" || fail "$n did not stay up under --memory $LIMIT"
done
[ "$rc1" -eq 0 ] || {
  cat "$WORK/m1.log"
  fail "the app of m1: load or its check failed (exit $rc1)"
}
[ "$rc2" -eq 0 ] || {
  cat "$WORK/m2.log"
  fail "the app of m2: load or its check failed (exit $rc2)"
}
wait_for 30 "m1, m2, m3 healthy after the load" healthy "$RUN-m1" "$RUN-m2" "$RUN-m3"

cat "$WORK/m1.acked" "$WORK/m2.acked" >"$WORK/all.acked"
total=$(wc -l <"$WORK/all.acked")
[ "$total" -ge $((LOAD_SECONDS * 300)) ] || fail "only $total writes acknowledged of $((LOAD_SECONDS * 600))"
[ "$(cut -f1 "$WORK/all.acked" | sort -u | wc -l)" -eq "$total" ] || fail "acknowledged keys are not distinct"
say "every acknowledged write ($total) through m3"
printf '    '
docker run --rm -i --label "$LABEL" --network "$NET" -e OPENCLUSTER_APP_PASSWORD="$PASSWORD" "${PREFIX}example-app:$TAG" \
  --url redis://m3:6379 verify --acked - <"$WORK/all.acked" 2>"$WORK/verify.log" || {
  cat "$WORK/verify.log"
  for n in "${NODES[@]}"; do
    container_ok "$RUN-$n" || fail "$n did not stay up under --memory $LIMIT while the writes were read back"
  done
  fail "acknowledged writes missing through m3"
}
tail -n 1 "$WORK/verify.log"
for n in "${NODES[@]}"; do
  container_ok "$RUN-$n" || fail "$n did not stay up under --memory $LIMIT"
done
kill "$sampler" 2>/dev/null || true
say "peak memory use (docker stats, sampled every 2s while writing and reading back):"
for n in "${NODES[@]}"; do
  # "123.4MiB / 128MiB": the largest first figure, in MiB.
  peak=$(awk -v c="$RUN-$n" '$1 == c { v = $2; u = v; sub(/[A-Za-z]+$/, "", v); sub(/^[0-9.]+/, "", u);
           m = (u == "GiB") ? v * 1024 : (u == "KiB") ? v / 1024 : (u == "B") ? v / 1048576 : v;
           if (m > p) p = m } END { printf "%.1f", p }' "$WORK/stats")
  rss=$(docker exec "$RUN-$n" /opencluster-node status --format json | jq '.memory.rss_bytes / 1048576 | floor')
  printf '    %s: %s MiB of 128 MiB at the peak; the process itself now: %s MiB resident\n' "$n" "$peak" "$rss"
done
say "all checks passed"
