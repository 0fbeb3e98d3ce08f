#!/usr/bin/env bash
# Smoke-test the built image: the entrypoint starts, and `rlhf serve` serves the tiny model.
#
# Usage: images/smoke.sh [IMAGE]    (default: the tag images/build.sh cpu produces)
#
# Contract: exits 0 only if, inside the image, as its configured user, with its environment,
#   1. `rlhf --help` succeeds,
#   2. `rlhf model tiny --out /tmp/tiny` builds the tiny checkpoint,
#   3. `rlhf serve` on it (RLHF_PUBLISH_EVENTS=false, 127.0.0.1) answers GET /health with 200
#      within SERVE_TIMEOUT seconds, and a /v1/completions request returns a choice.
# It runs the image with podman when podman can start containers here; otherwise with
# `buildah run --isolation chroot` (no runtime, no namespaces: the image's root filesystem,
# user, environment and working directory, the host's network), which works inside
# unprivileged CI containers. Where podman works, set SMOKE_RUNNER=buildah to force the
# fallback.
set -euo pipefail

root=$(cd "$(dirname "$0")/.." && pwd)
app_version=$(sed -n 's/^appVersion:[[:space:]]*"\{0,1\}\([^"]*\)"\{0,1\}[[:space:]]*$/\1/p' "$root/helm/rlhf/Chart.yaml")
IMAGE=${1:-${IMAGE_REPOSITORY:-ghcr.io/rlhf-platform/rlhf}:${IMAGE_TAG:-$app_version}}
STORAGE_DRIVER=${STORAGE_DRIVER:-vfs}
PORT=${SMOKE_PORT:-18080}
GRPC_PORT=${SMOKE_GRPC_PORT:-18051}
SERVE_TIMEOUT=${SERVE_TIMEOUT:-600}
BUILDAH=(buildah --storage-driver "$STORAGE_DRIVER")
PODMAN=(podman --storage-driver "$STORAGE_DRIVER")

log() { echo "smoke: $*"; }
fail() { echo "smoke: FAIL: $*" >&2; exit 1; }

"${BUILDAH[@]}" inspect --type image "$IMAGE" >/dev/null 2>&1 || fail "no image $IMAGE (make image)"
entrypoint=$("${BUILDAH[@]}" inspect --type image --format '{{.OCIv1.Config.Entrypoint}}' "$IMAGE")
[[ $entrypoint == '[rlhf]' ]] || fail "entrypoint is $entrypoint, expected [rlhf]"
user=$("${BUILDAH[@]}" inspect --type image --format '{{.OCIv1.Config.User}}' "$IMAGE")
[[ -n $user && $user != root && $user != 0 ]] || fail "image runs as root (User=$user)"

runner=${SMOKE_RUNNER:-}
if [[ -z $runner ]]; then
  if command -v podman >/dev/null && "${PODMAN[@]}" run --rm --network host "$IMAGE" --help >/dev/null 2>&1; then
    runner=podman
  else
    runner=buildah
  fi
fi
log "image $IMAGE (user $user), runner $runner"

ctr=""
server_pid=""
# stop_image_processes: SIGTERM, then SIGKILL, every process whose root is this smoke
# container's root filesystem (the chroot runner leaves no namespace to tear down).
stop_image_processes() {
  local mnt pid pids sig
  mnt=$("${BUILDAH[@]}" mount "$ctr" 2>/dev/null) || return 0
  for sig in TERM KILL; do
    pids=()
    for pid in /proc/[0-9]*; do
      [[ $(readlink "$pid/root" 2>/dev/null) == "${mnt%/}" ]] && pids+=("${pid#/proc/}")
    done
    (( ${#pids[@]} )) || break
    kill "-$sig" "${pids[@]}" 2>/dev/null || true
    sleep 5
  done
}
cleanup() {
  set +e
  if [[ -n $server_pid ]]; then
    kill -TERM -- "-$server_pid" 2>/dev/null || true
    sleep 2
  fi
  [[ $runner == buildah && -n $ctr ]] && stop_image_processes
  [[ -n $server_pid ]] && { kill -KILL -- "-$server_pid" 2>/dev/null; wait "$server_pid" 2>/dev/null; }
  if [[ -n $ctr ]]; then
    if [[ $runner == podman ]]; then "${PODMAN[@]}" rm -f "$ctr" >/dev/null 2>&1
    else "${BUILDAH[@]}" rm "$ctr" >/dev/null 2>&1; fi
  fi
  true
}
trap cleanup EXIT

# in_image CMD...: run CMD in the one smoke container (state such as /tmp/tiny persists).
if [[ $runner == podman ]]; then
  ctr=rlhf-smoke-$$
  "${PODMAN[@]}" run -d --name "$ctr" --network host --entrypoint sleep "$IMAGE" infinity >/dev/null
  in_image() { "${PODMAN[@]}" exec -e RLHF_PUBLISH_EVENTS=false "$ctr" "$@"; }
else
  ctr=$("${BUILDAH[@]}" from "$IMAGE")
  in_image() {
    "${BUILDAH[@]}" run --isolation chroot --user "$user" \
      --env RLHF_PUBLISH_EVENTS=false "$ctr" -- "$@"
  }
fi

log "1/3 rlhf --help"
in_image rlhf --help >/dev/null || fail "rlhf --help"

log "2/3 rlhf model tiny --out /tmp/tiny"
in_image rlhf model tiny --out /tmp/tiny || fail "rlhf model tiny"

log "3/3 rlhf serve on 127.0.0.1:$PORT"
serve_log=$(mktemp /tmp/rlhf-smoke-serve.XXXXXX.log)
set -m  # the server gets its own process group, so cleanup can stop all of it
in_image rlhf serve --model /tmp/tiny --host 127.0.0.1 --port "$PORT" --grpc-port "$GRPC_PORT" \
  --served-model-name tiny --max-model-len 512 --dtype "${SMOKE_DTYPE:-float32}" \
  >"$serve_log" 2>&1 &
set +m
server_pid=$!

start=$(date +%s)
until [[ $(curl -s -o /dev/null -w '%{http_code}' "http://127.0.0.1:$PORT/health" || true) == 200 ]]; do
  if ! kill -0 "$server_pid" 2>/dev/null; then
    tail -40 "$serve_log" >&2
    fail "rlhf serve exited before /health answered (log: $serve_log)"
  fi
  if (( $(date +%s) - start > SERVE_TIMEOUT )); then
    tail -40 "$serve_log" >&2
    fail "/health not 200 within ${SERVE_TIMEOUT}s (log: $serve_log)"
  fi
  sleep 2
done
log "/health 200 after $(( $(date +%s) - start ))s"
until [[ $(curl -s -o /dev/null -w '%{http_code}' "http://127.0.0.1:$PORT/ready" || true) == 200 ]]; do
  kill -0 "$server_pid" 2>/dev/null || { tail -40 "$serve_log" >&2; fail "rlhf serve exited"; }
  (( $(date +%s) - start <= SERVE_TIMEOUT )) || fail "/ready not 200 within ${SERVE_TIMEOUT}s"
  sleep 2
done
log "/ready 200 after $(( $(date +%s) - start ))s"

body=$(curl -sf -m 120 "http://127.0.0.1:$PORT/v1/completions" -H 'Content-Type: application/json' \
  -d '{"model": "tiny", "prompt": "hello", "max_tokens": 4, "temperature": 0}') \
  || { tail -40 "$serve_log" >&2; fail "POST /v1/completions"; }
grep -q '"choices"' <<<"$body" || fail "completion without choices: $body"
log "/v1/completions ok: ${body:0:160}"
log "PASS"
