#!/usr/bin/env bash
# Build the platform's images from the project's own Dockerfiles, without a
# registry, and leave them as archives where tests/cluster/node.sh imports
# every archive into containerd's k8s.io namespace:
#
#   porchlight-runtime-python.tar   docker.io/porchlight/runtime-python:dev    runtime-image/Dockerfile
#   porchlight-runtime-provided.tar docker.io/porchlight/runtime-provided:dev  runtime-image/Dockerfile.provided
#   porchlight-runtime-node.tar     docker.io/porchlight/runtime-node:dev      runtime-image/Dockerfile.node
#   porchlight-controller.tar       docker.io/porchlight/controller:dev        deploy/Dockerfile.controller
#   porchlight-gateway.tar          docker.io/porchlight/gateway:dev           deploy/Dockerfile.gateway
#   porchlight-nats.tar             docker.io/porchlight/nats:dev              deploy/Dockerfile.nats
#
# How: podman (runc, vfs storage, private storage and config under the cache)
# builds each Dockerfile with BASE_IMAGE = a debootstrap'ed Debian bookworm
# (minbase; plus python3 for the Python runtime) and BINARIES=prebuilt, i.e.
# the Rust binaries come from `cargo build --release` on this host (same
# glibc: the host is bookworm too) instead of a rust:* builder image, which
# would need a registry; nats-server is the one tests/run.sh builds from the
# Go module proxy (PORCHLIGHT_NATS_SERVER).
#
# Cache: ${PORCHLIGHT_CACHE:-/root/.cache/porchlight}/images/<name>.tar with a
# .<name>.inputs file next to it (sha256 of the Dockerfile, the binary, the
# base image and the other copied files); an archive is rebuilt only when its
# inputs change. Base root filesystems: $PORCHLIGHT_CACHE/e2e/.
# Needs root, podman, debootstrap, python3 (tests/e2e/run.sh installs them).
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
CLUSTER=$ROOT/tests/cluster
CACHE=${PORCHLIGHT_CACHE:-/root/.cache/porchlight}
IMAGES_DIR=${IMAGES_DIR:-$CACHE/images}
E2E_CACHE=$CACHE/e2e
PODMAN_DIR=$CACHE/podman
mkdir -p "$IMAGES_DIR" "$E2E_CACHE" "$PODMAN_DIR"

log() { printf '[e2e-images %s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
die() { log "ERROR: $*"; exit 1; }

command -v podman >/dev/null || die "podman not found (apt-get install podman)"
command -v debootstrap >/dev/null || die "debootstrap not found (apt-get install debootstrap)"

# Private podman configuration: runc (crun fails here), vfs storage (no
# overlay in this sandbox), no default ulimits (the container's hard NOFILE
# limit is below podman's default), storage inside the cache.
cat >"$PODMAN_DIR/containers.conf" <<'EOF'
[containers]
default_ulimits = []
[engine]
runtime = "runc"
cgroup_manager = "cgroupfs"
events_logger = "file"
EOF
cat >"$PODMAN_DIR/storage.conf" <<EOF
[storage]
driver = "vfs"
graphroot = "$PODMAN_DIR/storage"
runroot = "/tmp/porchlight-podman-run"
EOF
export CONTAINERS_CONF=$PODMAN_DIR/containers.conf CONTAINERS_STORAGE_CONF=$PODMAN_DIR/storage.conf
pm() { nice -n 10 podman "$@"; }

W=$(mktemp -d)
trap 'rm -rf "$W"' EXIT

# --- binaries -----------------------------------------------------------------
if [[ ${SKIP_CARGO:-} != 1 ]]; then
  log "cargo build --release (runtime, gateway, controller)"
  (cd "$ROOT" && nice -n 10 cargo build --release --locked -q \
    -p porchlight-runtime -p porchlight-gateway -p porchlight-controller --bins)
fi
mkdir -p "$W/bin"
for b in porchlight-runtime porchlight-gateway porchlight-controller; do
  [[ -x $ROOT/target/release/$b ]] || die "target/release/$b missing"
  cp "$ROOT/target/release/$b" "$W/bin/$b"
done
nats_server=${PORCHLIGHT_NATS_SERVER:-$CACHE/nats-server/v2.14.10/nats-server}
[[ -x $nats_server ]] || die "nats-server missing at $nats_server (tests/run.sh builds it; or set PORCHLIGHT_NATS_SERVER)"
cp "$nats_server" "$W/bin/nats-server"

# --- base images ----------------------------------------------------------------
mirror=${DEBIAN_MIRROR:-$(sed -n 's/^URIs: *\(http[^ ]*debian\/*\)$/\1/p' /etc/apt/sources.list.d/debian.sources 2>/dev/null | head -1)}
mirror=${mirror:-http://deb.debian.org/debian}

# rootfs_tar NAME INCLUDE: a debootstrap --variant=minbase bookworm root filesystem as a tar, cached.
rootfs_tar() {
  local name=$1 include=$2 out=$E2E_CACHE/$1.rootfs.tar
  if [[ ! -s $out ]]; then
    log "debootstrap bookworm for $name (${include:-minbase}; a minute or two)"
    local r=$W/rootfs-$name
    timeout 1800 nice -n 19 debootstrap --variant=minbase ${include:+--include=$include} \
      bookworm "$r" "$mirror" >"$W/debootstrap-$name.log" 2>&1 ||
      { tail -20 "$W/debootstrap-$name.log" >&2; die "debootstrap failed for $name"; }
    rm -rf "$r"/var/cache/apt/archives/*.deb "$r"/var/lib/apt/lists/*
    tar --numeric-owner --xattrs -C "$r" -cf "$out.tmp" .
    mv "$out.tmp" "$out"
    rm -rf "$r"
  fi
  echo "$out"
}

# base_image NAME INCLUDE: localhost/porchlight/NAME:bookworm in podman's storage; prints its id.
base_image() {
  local name=$1 include=$2 ref=localhost/porchlight/$1:bookworm tar
  tar=$(rootfs_tar "$name" "$include")
  local want
  want=$(sha256sum "$tar" | cut -c1-16)
  if [[ $(pm image inspect --format '{{index .Labels "porchlight.rootfs"}}' "$ref" 2>/dev/null) != "$want" ]]; then
    log "podman import $ref"
    pm import --change "LABEL porchlight.rootfs=$want" --change 'CMD ["/bin/bash"]' \
      "$tar" "$ref" >/dev/null
  fi
  pm image inspect --format '{{.Id}}' "$ref"
}

# The plain base is tests/cluster's debootstrap image (deterministic archive, so loading it again is a no-op).
[[ -s $IMAGES_DIR/debian.tar ]] || "$CLUSTER/images.sh" --debian >/dev/null
pm load -q -i "$IMAGES_DIR/debian.tar" >/dev/null
DEBIAN_ID=$(pm image inspect --format '{{.Id}}' localhost/porchlight/debian:bookworm)
PYTHON_ID=$(base_image debian-python python3)
NODE_ID=$(base_image debian-node nodejs)

# --- project images ---------------------------------------------------------------
hash_of() { cat "$@" | sha256sum | cut -d' ' -f1; }

# build NAME DOCKERFILE BINARY BASE_REF BASE_ID [extra inputs...]
build() {
  local name=$1 dockerfile=$2 binary=$3 base=$4 base_id=$5
  shift 5
  local tag=docker.io/porchlight/$name:dev out=$IMAGES_DIR/porchlight-$name.tar stamp=$IMAGES_DIR/.porchlight-$name.inputs
  local inputs
  inputs=$( (hash_of "$ROOT/$dockerfile" "$W/bin/$binary" "$ROOT/.dockerignore" "$@"; echo "$base_id") | sha256sum | cut -d' ' -f1)
  if [[ -s $out && -f $stamp && $(cat "$stamp") == "$inputs" ]]; then
    log "$tag up to date (inputs ${inputs:0:12})"
    return
  fi
  log "podman build -f $dockerfile -t $tag"
  local t0=$SECONDS
  pm build --network=none --pull=never \
    --build-arg BASE_IMAGE="$base" --build-arg BINARIES=prebuilt \
    --build-context binaries="$W/bin" \
    -f "$ROOT/$dockerfile" -t "$tag" "$ROOT" >"$W/build-$name.log" 2>&1 ||
    { tail -30 "$W/build-$name.log" >&2; die "podman build of $tag failed"; }
  rm -f "$out.tmp"
  pm save --format docker-archive -o "$out.tmp" "$tag" >/dev/null 2>"$W/save-$name.log" ||
    { cat "$W/save-$name.log" >&2; die "podman save of $tag failed"; }
  mv "$out.tmp" "$out"
  echo "$inputs" >"$stamp"
  log "$tag -> $out ($(du -m "$out" | cut -f1) MB, $((SECONDS - t0)) s)"
}

build runtime-python runtime-image/Dockerfile porchlight-runtime localhost/porchlight/debian-python:bookworm "$PYTHON_ID" \
  "$ROOT/runtime-image/bootstrap/python/bootstrap.py"
build runtime-node runtime-image/Dockerfile.node porchlight-runtime localhost/porchlight/debian-node:bookworm "$NODE_ID" \
  "$ROOT/runtime-image/bootstrap/node/bootstrap.js"
build runtime-provided runtime-image/Dockerfile.provided porchlight-runtime localhost/porchlight/debian:bookworm "$DEBIAN_ID"
build controller deploy/Dockerfile.controller porchlight-controller localhost/porchlight/debian:bookworm "$DEBIAN_ID"
build gateway deploy/Dockerfile.gateway porchlight-gateway localhost/porchlight/debian:bookworm "$DEBIAN_ID"
build nats deploy/Dockerfile.nats nats-server localhost/porchlight/debian:bookworm "$DEBIAN_ID"

# Old builds only take space in the vfs storage.
pm image prune -f >/dev/null 2>&1 || true
ls -1 "$IMAGES_DIR"/porchlight-*.tar
