#!/usr/bin/env bash
# Builds the project's images in one step: base images (when missing), then
#
#   roomcast:latest             Dockerfile (the node; Rust build stage + slim runtime)
#   roomcast-haproxy:latest     cluster-config/haproxy.Dockerfile
#   roomcast-prometheus:latest  cluster-config/prometheus.Dockerfile
#
#   scripts/docker-build.sh              all three
#   scripts/docker-build.sh roomcast     only the node image (names: roomcast, haproxy, prometheus)
#
# scripts/docker-base.sh first makes debian:bookworm-slim and rust:1.95-bookworm locally if the
# engine does not have them (no image registry on the project's machines; see that script).
# Builds never pull: `docker build` uses the local base images. Inside the builds, apt-get
# reaches Debian's mirror (http) and cargo reaches crates.io, as the host does.
# Env: IMAGE_TAG (default latest), DOCKER_BUILD_ARGS (extra arguments for every docker build).
# Then: docker-compose -f cluster-config/docker-compose.yml -p roomcast up -d
set -euo pipefail
cd "$(dirname "$0")/.."

tag="${IMAGE_TAG:-latest}"
say() { echo "docker-build: $*"; }
die() {
  echo "docker-build: error: $*" >&2
  exit 1
}

want=("$@")
[ ${#want[@]} -gt 0 ] || want=(roomcast haproxy prometheus)
for w in "${want[@]}"; do
  case "$w" in
    roomcast | haproxy | prometheus) ;;
    *) die "unknown image $w (roomcast, haproxy, prometheus)" ;;
  esac
done

total=$SECONDS
scripts/docker-base.sh || die "making the base images failed"

build() { # name tag dockerfile context
  local start=$SECONDS
  say "building $2 ($3)"
  # shellcheck disable=SC2086
  if ! docker build ${DOCKER_BUILD_ARGS:-} -t "$2" -f "$3" "$4"; then
    die "building $2 failed"
  fi
  say "built $2 in $((SECONDS - start)) s ($(docker image inspect -f '{{.Size}}' "$2" | awk '{printf "%.0f MB", $1 / 1e6}'))"
}

for w in "${want[@]}"; do
  case "$w" in
    roomcast) build roomcast "roomcast:$tag" Dockerfile . ;;
    haproxy) build haproxy "roomcast-haproxy:$tag" cluster-config/haproxy.Dockerfile cluster-config ;;
    prometheus) build prometheus "roomcast-prometheus:$tag" cluster-config/prometheus.Dockerfile cluster-config ;;
  esac
done
say "done in $((SECONDS - total)) s"
docker image ls --format '{{.Repository}}:{{.Tag}}\t{{.Size}}' | grep -E '^(roomcast|roomcast-haproxy|roomcast-prometheus):' || true
