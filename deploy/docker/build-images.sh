#!/usr/bin/env bash
# Builds the OpenCluster images without a registry: static binaries built here, each put
# FROM scratch by Dockerfile.scratch (the runtime stages of Dockerfile).
#
#   deploy/docker/build-images.sh            # opencluster/{node,pki,example-app,connector}:<version> and :latest
#
# Environment: CARGO_TARGET_DIR (reused, so a second run only relinks), IMAGE_PREFIX
# (default `opencluster/`), SKIP_CARGO_BUILD=1 to package binaries already built.
# Prints each image's size at the end. Needs docker and the Rust toolchain; not BuildKit.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
cd "$ROOT"
TRIPLE=x86_64-unknown-linux-gnu
TARGET_DIR=${CARGO_TARGET_DIR:-$ROOT/target}
PREFIX=${IMAGE_PREFIX:-opencluster/}
IMAGES=(node pki example-app connector)
BINARIES=(opencluster-node opencluster-pki opencluster-example-app opencluster-connector)

say() { printf '[build-images] %s\n' "$*"; }
die() {
  printf '[build-images] ERROR: %s\n' "$*" >&2
  exit 1
}

VERSION=$(sed -n '/^\[workspace.package\]/,/^\[/s/^version *= *"\(.*\)"/\1/p' Cargo.toml)
[ -n "$VERSION" ] || die "no version in [workspace.package] of Cargo.toml"
REVISION=$(git rev-parse HEAD 2>/dev/null || echo unknown)
if [ "$REVISION" != unknown ] && [ -n "$(git status --porcelain --untracked-files=no 2>/dev/null)" ]; then
  REVISION="$REVISION-dirty"
fi
SOURCE=$(sed -n '/^\[workspace.package\]/,/^\[/s/^repository *= *"\(.*\)"/\1/p' Cargo.toml)

# The two Dockerfiles must describe the same images.
runtime_part() { sed -n '/^# ---- runtime stages/,$p' "$1"; }
if ! diff -u <(runtime_part deploy/docker/Dockerfile) <(runtime_part deploy/docker/Dockerfile.scratch); then
  die "the runtime stages of deploy/docker/Dockerfile and Dockerfile.scratch differ"
fi

if [ "${SKIP_CARGO_BUILD:-}" != 1 ]; then
  say "static release build of ${BINARIES[*]} (target dir $TARGET_DIR)"
  packages=()
  for b in "${BINARIES[@]}"; do packages+=(-p "$b"); done
  RUSTFLAGS="-C target-feature=+crt-static" cargo build --release --locked --target "$TRIPLE" "${packages[@]}"
fi

CONTEXT="$TARGET_DIR/docker-context"
rm -rf "$CONTEXT"
mkdir -p "$CONTEXT/bin"
for b in "${BINARIES[@]}"; do
  bin="$TARGET_DIR/$TRIPLE/release/$b"
  [ -x "$bin" ] || die "$bin is missing: build it first (or unset SKIP_CARGO_BUILD)"
  # A dynamic binary would not start FROM scratch: refuse it here, not at `docker run`.
  if command -v readelf >/dev/null && readelf -l "$bin" | grep -q 'program interpreter'; then
    die "$bin is dynamically linked; build with RUSTFLAGS='-C target-feature=+crt-static' --target $TRIPLE"
  fi
  cp "$bin" "$CONTEXT/bin/"
  # The release profile keeps line tables (file:line in backtraces of local builds); the
  # images keep the symbols (function names in backtraces) and drop the rest: a quarter
  # of the size. The full binaries stay in the target dir for addr2line.
  if command -v strip >/dev/null; then
    strip --strip-debug "$CONTEXT/bin/$b"
  else
    say "WARNING: no strip on PATH: $b goes into its image with its debug info"
  fi
done
# The directories of the images. Their owner comes from COPY --chown in the Dockerfile;
# their mode is 0755 whatever it is here, since COPY of a directory copies its contents
# into a destination it creates (files keep their modes: the socket is 0660, keys 0600).
install -d -m 0755 "$CONTEXT/rootfs/data" "$CONTEXT/rootfs/run/opencluster" "$CONTEXT/rootfs/etc/opencluster" \
  "$CONTEXT/rootfs/etc/opencluster/conf.d" "$CONTEXT/rootfs/etc/opencluster/tls"
cp deploy/docker/Dockerfile.scratch "$CONTEXT/Dockerfile"

for image in "${IMAGES[@]}"; do
  name="$PREFIX$image"
  say "docker build $name:$VERSION ($REVISION)"
  docker build -q --target "$image" \
    --build-arg VERSION="$VERSION" --build-arg REVISION="$REVISION" --build-arg SOURCE="$SOURCE" \
    -t "$name:$VERSION" -t "$name:latest" "$CONTEXT" >/dev/null
done

say "images:"
for image in "${IMAGES[@]}"; do
  name="$PREFIX$image:$VERSION"
  bytes=$(docker image inspect -f '{{.Size}}' "$name")
  printf '  %-36s %6.1f MB  (%s bytes)\n' "$name" "$(echo "$bytes" | awk '{print $1 / 1000000}')" "$bytes"
done
