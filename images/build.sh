#!/usr/bin/env bash
# Build the rlhf image with buildah, daemonless, tagged as the Helm chart expects.
#
# Usage: images/build.sh [cpu|cuda]        (default cpu; `make image` runs the cpu build)
#
# Contract:
#   - cpu: builds localhost/rlhf-base:bookworm first (images/base.sh, debootstrap) unless it
#     exists, then Containerfile; the result is tagged $IMAGE_REPOSITORY:$IMAGE_TAG, which by
#     default is ghcr.io/rlhf-platform/rlhf:<appVersion of helm/rlhf/Chart.yaml>, the chart's
#     default image, so `helm install` pulls what this built (once pushed).
#   - cuda: builds Containerfile.cuda from CUDA_BASE_IMAGE (needs a registry that serves it, or
#     a local copy) and tags $IMAGE_REPOSITORY:$IMAGE_TAG-cuda.
#   - Prints the build time and the image size; exits non-zero if any step fails.
#
# Env (all optional):
#   IMAGE_REPOSITORY  ghcr.io/rlhf-platform/rlhf
#   IMAGE_TAG         appVersion of helm/rlhf/Chart.yaml
#   STORAGE_DRIVER    vfs (works everywhere, also inside containers; overlay is faster)
#   ISOLATION         chroot (no user namespaces or runtime needed; oci where available)
#   WHEELS_DIR        wheels pip prefers over PyPI (default: pip's find-links when it holds torch)
#   CA_BUNDLE         CA bundle pip trusts in the build (default: PIP_CERT, else the system's)
#   BUILD_ARGS        extra arguments for `buildah build`
set -euo pipefail

flavor=${1:-cpu}
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"

app_version=$(sed -n 's/^appVersion:[[:space:]]*"\{0,1\}\([^"]*\)"\{0,1\}[[:space:]]*$/\1/p' helm/rlhf/Chart.yaml)
IMAGE_REPOSITORY=${IMAGE_REPOSITORY:-ghcr.io/rlhf-platform/rlhf}
IMAGE_TAG=${IMAGE_TAG:-$app_version}
STORAGE_DRIVER=${STORAGE_DRIVER:-vfs}
ISOLATION=${ISOLATION:-chroot}
BUILDAH=(buildah --storage-driver "$STORAGE_DRIVER")

[[ -n $IMAGE_TAG ]] || { echo "build: no appVersion in helm/rlhf/Chart.yaml; set IMAGE_TAG" >&2; exit 1; }
command -v buildah >/dev/null || { echo "build: buildah missing (apt-get install -y buildah)" >&2; exit 1; }

args=(--layers --isolation "$ISOLATION" --build-arg "VERSION=$IMAGE_TAG")
case $flavor in
  cpu)
    containerfile=Containerfile
    image="$IMAGE_REPOSITORY:$IMAGE_TAG"
    STORAGE_DRIVER=$STORAGE_DRIVER images/base.sh
    # torch 2.13.0+cpu is on PyTorch's CPU index, not on PyPI; a local wheel folder replaces
    # that index where it is unreachable.
    if [[ -z ${WHEELS_DIR:-} ]]; then
      for dir in ${PIP_FIND_LINKS:-} $(pip config get global.find-links 2>/dev/null || true) /opt/wheels; do
        if compgen -G "$dir/torch-2.13.0+cpu-*.whl" >/dev/null; then WHEELS_DIR=$dir; break; fi
      done
    fi
    if [[ -n ${WHEELS_DIR:-} ]]; then
      echo "build: wheels from $WHEELS_DIR (PyTorch's index not used)"
      args+=(--build-context "wheels=$WHEELS_DIR" --build-arg TORCH_INDEX_URL=)
    fi
    ;;
  cuda)
    containerfile=Containerfile.cuda
    image="$IMAGE_REPOSITORY:$IMAGE_TAG-cuda"
    [[ -n ${CUDA_BASE_IMAGE:-} ]] && args+=(--build-arg "CUDA_BASE_IMAGE=$CUDA_BASE_IMAGE")
    ;;
  *) echo "usage: $0 [cpu|cuda]" >&2; exit 2 ;;
esac

CA_BUNDLE=${CA_BUNDLE:-${PIP_CERT:-/etc/ssl/certs/ca-certificates.crt}}
[[ -s $CA_BUNDLE ]] && args+=(--secret "id=ca-bundle,src=$CA_BUNDLE")

start=$(date +%s)
# shellcheck disable=SC2086  # BUILD_ARGS is a list of words on purpose.
"${BUILDAH[@]}" build "${args[@]}" ${BUILD_ARGS:-} -f "$containerfile" -t "$image" .
elapsed=$(( $(date +%s) - start ))

size=$("${BUILDAH[@]}" images --format '{{.Size}}' "$image" | head -n1)
echo "build: $image built in $((elapsed / 60))m$((elapsed % 60))s, size $size"
echo "build: push with: buildah --storage-driver $STORAGE_DRIVER push $image docker://<registry>/<repository>:$IMAGE_TAG"
