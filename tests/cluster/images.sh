#!/usr/bin/env bash
# Build the local images the test node needs, without a registry, as OCI archives
# for `ctr -n k8s.io images import`:
#   pause.tar    localhost/porchlight/pause:1        static C binary (pause.c), containerd's sandbox_image
#   busybox.tar  localhost/porchlight/busybox:1      busybox-static (Debian package) with applet links
#   debian.tar   localhost/porchlight/debian:bookworm   debootstrap --variant=minbase (only with --debian;
#                                                       needs the Debian mirror, takes minutes)
# Output: ${PORCHLIGHT_CACHE:-/root/.cache/porchlight}/images/ (idempotent; delete a file to rebuild).
# Needs: gcc + libc6-dev (static), busybox-static, python3, [debootstrap].
set -euo pipefail
LOG_TAG=images
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
OUT=${IMAGES_DIR:-$PORCHLIGHT_CACHE/images}
mkdir -p "$OUT"
W=$(mktemp -d)
trap 'rm -rf "$W"' EXIT

if [[ ! -f $OUT/pause.tar ]]; then
  mkdir -p "$W/pause"
  nice -n 19 gcc -static -Os -s -o "$W/pause/pause" "$HERE/pause.c"
  python3 "$HERE/mkimage.py" --name localhost/porchlight/pause:1 --rootfs "$W/pause" \
    --entrypoint '["/pause"]' --user 65535:65535 -o "$OUT/pause.tar" >&2
fi

if [[ ! -f $OUT/busybox.tar ]]; then
  bb=$(command -v busybox) || die "busybox not found (apt-get install busybox-static)"
  file -L "$bb" 2>/dev/null | grep -q 'statically linked' || log "warning: $bb may not be static"
  r=$W/busybox
  mkdir -p "$r/bin" "$r/etc" "$r/tmp" "$r/www"
  cp "$bb" "$r/bin/busybox"
  for a in $("$bb" --list); do [[ $a == busybox ]] || ln -s busybox "$r/bin/$a"; done
  echo 'root:x:0:0:root:/:/bin/sh' >"$r/etc/passwd"
  echo 'nobody:x:65534:65534:nobody:/:/bin/false' >>"$r/etc/passwd"
  printf 'root:x:0:\nnogroup:x:65534:\n' >"$r/etc/group"
  chmod 1777 "$r/tmp"
  echo "hello from a porchlight test pod" >"$r/www/index.html"
  python3 "$HERE/mkimage.py" --name localhost/porchlight/busybox:1 --rootfs "$r" \
    --env PATH=/bin --cmd '["/bin/sh"]' -o "$OUT/busybox.tar" >&2
fi

if [[ ${1:-} == --debian && ! -f $OUT/debian.tar ]]; then
  command -v debootstrap >/dev/null || die "debootstrap not found (apt-get install debootstrap)"
  log "debootstrap --variant=minbase bookworm (minutes)"
  mirror=${DEBIAN_MIRROR:-$(sed -n 's/^URIs: *\(http[^ ]*debian\/*\)$/\1/p' /etc/apt/sources.list.d/debian.sources 2>/dev/null | head -1)}
  timeout 1800 nice -n 19 debootstrap --variant=minbase bookworm "$W/debian" "${mirror:-http://deb.debian.org/debian}" >"$W/debootstrap.log" 2>&1 ||
    { tail -20 "$W/debootstrap.log" >&2; die "debootstrap failed"; }
  rm -rf "$W/debian"/var/cache/apt/archives/*.deb "$W/debian"/var/lib/apt/lists/*
  tar --numeric-owner --xattrs -C "$W/debian" -cf "$W/debian.rootfs.tar" .
  python3 "$HERE/mkimage.py" --name localhost/porchlight/debian:bookworm --rootfs "$W/debian.rootfs.tar" \
    --cmd '["/bin/bash"]' -o "$OUT/debian.tar" >&2
fi
ls -1 "$OUT"/*.tar
