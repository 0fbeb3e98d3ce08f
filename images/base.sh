#!/usr/bin/env bash
# Build the Debian bookworm base image `localhost/rlhf-base:bookworm` without any registry.
#
# Why: the image build must work on machines that reach Debian's archive and PyPI but no
# container registry, so `FROM python:3.11-slim` is not an option. debootstrap writes a minimal
# root filesystem, buildah imports it as a one-layer image, and both Containerfile stages start
# from it. The base holds only what runs the app: python3.11 (+venv), CA certificates, and the
# shared libraries vLLM's CPU build and torch load (libnuma, libgomp). No compilers.
#
# Contract: idempotent; skips the build when the image exists unless REBUILD=1.
# Env: BASE_IMAGE (tag), DEBIAN_MIRROR, DEBIAN_SUITE, STORAGE_DRIVER (vfs), WORK_DIR.
set -euo pipefail

BASE_IMAGE=${BASE_IMAGE:-localhost/rlhf-base:bookworm}
DEBIAN_SUITE=${DEBIAN_SUITE:-bookworm}
DEBIAN_MIRROR=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
STORAGE_DRIVER=${STORAGE_DRIVER:-vfs}
WORK_DIR=${WORK_DIR:-/var/tmp/rlhf-images}
PACKAGES=python3.11,python3.11-venv,python3-venv,ca-certificates,libnuma1,libgomp1
BUILDAH=(buildah --storage-driver "$STORAGE_DRIVER")

if [[ ${REBUILD:-0} != 1 ]] && "${BUILDAH[@]}" inspect --type image "$BASE_IMAGE" >/dev/null 2>&1; then
  echo "base: $BASE_IMAGE exists (REBUILD=1 rebuilds it)"
  exit 0
fi

for tool in debootstrap buildah; do
  command -v "$tool" >/dev/null || { echo "base: $tool missing (apt-get install -y $tool)" >&2; exit 1; }
done
[[ $(id -u) == 0 ]] || { echo "base: debootstrap needs root" >&2; exit 1; }

rootfs="$WORK_DIR/rootfs-$DEBIAN_SUITE"
rm -rf "$rootfs"
mkdir -p "$WORK_DIR"
echo "base: debootstrap $DEBIAN_SUITE from $DEBIAN_MIRROR into $rootfs"
debootstrap --variant=minbase --include="$PACKAGES" "$DEBIAN_SUITE" "$rootfs" "$DEBIAN_MIRROR"

# apt inside the image (builder stage) uses the same mirror plus security updates.
cat > "$rootfs/etc/apt/sources.list" <<SOURCES
deb $DEBIAN_MIRROR $DEBIAN_SUITE main
deb $DEBIAN_MIRROR $DEBIAN_SUITE-updates main
deb ${DEBIAN_SECURITY_MIRROR:-http://deb.debian.org/debian-security} $DEBIAN_SUITE-security main
SOURCES
# Keep the base small: package lists, apt caches, docs and man pages are not needed at runtime.
rm -rf "$rootfs"/var/lib/apt/lists/* "$rootfs"/var/cache/apt/*.bin "$rootfs"/var/cache/apt/archives/*.deb \
  "$rootfs"/usr/share/doc/* "$rootfs"/usr/share/man/* "$rootfs"/usr/share/info/* \
  "$rootfs"/var/log/*.log "$rootfs"/var/log/apt/* "$rootfs"/tmp/*
# Containers get their resolver config and hostname from the runtime.
: > "$rootfs/etc/resolv.conf"
: > "$rootfs/etc/hostname"

ctr=$("${BUILDAH[@]}" from scratch)
trap '"${BUILDAH[@]}" rm "$ctr" >/dev/null 2>&1 || true' EXIT
"${BUILDAH[@]}" copy "$ctr" "$rootfs" / >/dev/null
"${BUILDAH[@]}" config \
  --env PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
  --env LANG=C.UTF-8 \
  --cmd /bin/sh \
  --label org.opencontainers.image.title=rlhf-base \
  --label "org.opencontainers.image.description=Debian $DEBIAN_SUITE minbase + python3.11 for rlhf" \
  "$ctr"
"${BUILDAH[@]}" commit --rm "$ctr" "$BASE_IMAGE" >/dev/null
trap - EXIT
rm -rf "$rootfs"
echo "base: built $BASE_IMAGE ($("${BUILDAH[@]}" inspect --type image --format '{{.Size}}' "$BASE_IMAGE" 2>/dev/null || echo '?') bytes)"
