#!/usr/bin/env bash
# Container test: a customer image with its own keys, and a node on the default keys
# refused by its cluster. Run by run.sh; alone: `bash tests/containers/customer-image.sh`.
#
# 1. the pki image makes a root CA for the cluster `acme`, the intermediate and gossip
#    keyring of datacenter dc1, and a build context with `bake --from <node image>`;
#    `docker build` makes the customer image from it (docs/security.md, the walkthrough);
# 2. three nodes of the customer image share the network alias `oc-peers` and find each
#    other with OPENCLUSTER_JOIN_SERVICE=oc-peers (no `join`): the name resolves to all
#    three, as a Kubernetes headless Service or Swarm's tasks.<service> does; each must be
#    healthy, not on the default keys, carry an acme identity, and list the three alive;
# 3. the example app writes through one node over TCP and reads every acknowledged write
#    back through another;
# 4. a node of the official image (the INSECURE default keys) joins the same name: every
#    customer node must log the refusal of its packets, and for an observation window of
#    10 s no customer node may list it, nor it any of them.
SCENARIO=customer-image
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
begin

PASSWORD="pw-$RANDOM$RANDOM"
NET="$RUN-net"
CUSTOMER_IMAGE="$RUN-node:dc1"
NODES=(c1 c2 c3)

for image in pki; do
  docker image inspect "$PREFIX$image:$TAG" >/dev/null 2>&1 || fail "image $PREFIX$image:$TAG missing"
done

# --- 1. keys and the customer image ---------------------------------------------------
pki() { docker run --rm --label "$LABEL" -u "$(id -u):$(id -g)" -v "$WORK:/work" -w /work "${PREFIX}pki:$TAG" "$@"; }
say "opencluster-pki (image): init, datacenter, bake --from ${PREFIX}node:$TAG"
pki init --cluster acme --out acme-ca | indent
pki datacenter --ca acme-ca --dc dc1 --out acme-dc1 | indent
pki bake --tls-dir acme-dc1 --from "${PREFIX}node:$TAG" --tag "$CUSTOMER_IMAGE" --out ctx | indent
[ -f "$WORK/ctx/Dockerfile" ] || fail "bake wrote no Dockerfile"
say "docker build -t $CUSTOMER_IMAGE (the baked context)"
docker build -q --label "$LABEL" -t "$CUSTOMER_IMAGE" "$WORK/ctx" 2>"$WORK/build.err" | indent || {
  cat "$WORK/build.err"
  fail "docker build of the baked context failed"
}
rm -rf "$WORK/ctx" # it holds the keys; the image has them now

# --- 2. three customer nodes, joined by one name -------------------------------------
docker network create --label "$LABEL" "$NET" >/dev/null
start_node() { # start_node NAME IMAGE [docker run options...]
  local name=$1 image=$2
  shift 2
  docker run -d --name "$RUN-$name" --hostname "$name" --label "$LABEL" --network "$NET" \
    -e OPENCLUSTER_CLIENT_PASSWORD="$PASSWORD" -e OPENCLUSTER_JOIN_SERVICE=oc-peers \
    -v "$RUN-$name-run:/run/opencluster" "$@" "$image" >/dev/null
}
for n in "${NODES[@]}"; do
  docker volume create --label "$LABEL" "$RUN-$n-run" >/dev/null
  start_node "$n" "$CUSTOMER_IMAGE" --network-alias oc-peers
done
say "c1, c2, c3 started from the customer image, OPENCLUSTER_JOIN_SERVICE=oc-peers"
wait_cluster_up "$RUN" c1 c2 c3
docker exec "$RUN-c1" /opencluster-node members | indent
for n in "${NODES[@]}"; do
  health=$(docker exec "$RUN-$n" /opencluster-node health) || fail "$n: health failed"
  [ "$(jq -r .insecure_default_keys <<<"$health")" = false ] || fail "$n runs on the default keys: $health"
  logged "$RUN-$n" "spiffe://acme/dc/dc1/node/$n" ||
    fail "$n logged no certificate for spiffe://acme/dc/dc1/node/$n"
  logged "$RUN-$n" '"joining the members of join_service"' ||
    fail "$n did not log that it joins join_service"
done
say "each is healthy with insecure_default_keys false and a certificate for spiffe://acme/dc/dc1/node/<name>"

# --- 3. the cluster serves -------------------------------------------------------------
app() { # app URL ARGS...: the example app over TCP to a node of the network
  local url=$1
  shift
  docker run --rm -i --label "$LABEL" --network "$NET" -e OPENCLUSTER_APP_PASSWORD="$PASSWORD" \
    "${PREFIX}example-app:$TAG" --url "$url" "$@"
}
say "the example app writes through c2 (TCP) for 4s, then reads it all back through c3"
app redis://c2:6379 load --rate 200 --duration 4s --prefix customer --acked - >"$WORK/acked" 2>"$WORK/load.log" || {
  cat "$WORK/load.log"
  fail "load through c2 failed"
}
tail -n 2 "$WORK/load.log" | indent
app redis://c3:6379 verify --acked - <"$WORK/acked" 2>"$WORK/verify.log" || {
  cat "$WORK/verify.log"
  fail "acknowledged writes missing through c3"
}
tail -n 1 "$WORK/verify.log" | indent

# --- 4. a node on the default keys is refused ----------------------------------------
say "intruder: the official image (default keys) with OPENCLUSTER_JOIN_SERVICE=oc-peers"
docker volume create --label "$LABEL" "$RUN-intruder-run" >/dev/null
start_node intruder "${PREFIX}node:$TAG"
wait_for 60 "the intruder healthy" healthy "$RUN-intruder"
[ "$(docker exec "$RUN-intruder" /opencluster-node health | jq -r .insecure_default_keys)" = true ] ||
  fail "the intruder should run on the default keys"
refused() {
  local n
  for n in "${NODES[@]}"; do
    logged "$RUN-$n" 'gossip packets refused' || return 1
  done
}
wait_for 60 "every customer node to log the refusal of the intruder's packets" refused
docker logs "$RUN-c1" 2>&1 | grep 'gossip packets refused' | sed -n 1p | cut -c1-400 | indent
say "observing for 10s: nobody may list the intruder, nor the intruder anybody"
window_end=$((SECONDS + 10))
checks=0
while [ $SECONDS -lt $window_end ]; do
  for n in "${NODES[@]}"; do
    state=$(member_state "$RUN-$n" intruder)
    [ -z "$state" ] || fail "$n lists the intruder as $state"
    sees_alive "$RUN-$n" "c1 c2 c3" || fail "$n no longer lists exactly c1 c2 c3 alive: $(alive_names "$RUN-$n")"
  done
  known=$(docker exec "$RUN-intruder" /opencluster-node members --format json | jq -r '[.[].name] | join(" ")')
  [ "$known" = intruder ] || fail "the intruder lists members: $known"
  checks=$((checks + 1))
  sleep 1
done
docker logs "$RUN-intruder" 2>&1 | grep -c '"announcing to join addresses"' >"$WORK/announces" || true
[ "$(cat "$WORK/announces")" -ge 2 ] || fail "the intruder announced itself only $(cat "$WORK/announces") times"
say "$checks checks over 10s: the intruder announced itself $(cat "$WORK/announces") times and was never a member"
say "all checks passed"
