#!/usr/bin/env bash
# CI's container check: builds deploy/Dockerfile's runtime image from the
# binaries this machine already built (`--target prebuilt`), then runs the
# reduced demo with keyholderd inside the container and everything else on
# the host, over the published port (unseal, rotate, retire, digests).
#
#   deploy/docker-smoke.sh [PROFILE]    # PROFILE: debug (default) or release
#
# No registry is needed: when the image debian:bookworm-slim is missing it is
# made locally with debootstrap from the Debian mirror apt uses, and the
# tarball is kept in $KEYHOLDER_CI_CACHE (default /var/cache/keyholder-ci).
# Where Docker cannot run (no docker, no dockerd, not root), it says why and
# exits 0: the step is skipped, not failed.
set -euo pipefail
cd "$(dirname "$0")/.."
PROFILE="${1:-debug}"
CACHE="${KEYHOLDER_CI_CACHE:-/var/cache/keyholder-ci}"
IMAGE="keyholder:ci"
MIRROR="${KEYHOLDER_DEBIAN_MIRROR:-http://deb.debian.org/debian}"

skip() { echo "docker-smoke: skipped: $*"; exit 0; }

command -v docker >/dev/null || skip "docker is not installed (apt-get install docker.io)"
if ! docker info >/dev/null 2>&1; then
    command -v dockerd >/dev/null || skip "no dockerd to start"
    [[ $(id -u) -eq 0 ]] || skip "dockerd is not running and starting it needs root"
    echo "docker-smoke: starting dockerd (log: $CACHE/dockerd.log)"
    mkdir -p "$CACHE"
    (dockerd >"$CACHE/dockerd.log" 2>&1 &)
    for ((i = 0; i < 60; i++)); do docker info >/dev/null 2>&1 && break; sleep 0.5; done
    docker info >/dev/null 2>&1 || { tail -20 "$CACHE/dockerd.log"; skip "dockerd did not come up (see above)"; }
fi

if ! docker image inspect debian:bookworm-slim >/dev/null 2>&1; then
    mkdir -p "$CACHE"
    if [[ ! -s "$CACHE/bookworm-minbase.tar" ]]; then
        command -v debootstrap >/dev/null || skip "no base image and no debootstrap to make one (apt-get install debootstrap)"
        echo "docker-smoke: making debian:bookworm-slim with debootstrap from $MIRROR"
        rm -rf "$CACHE/rootfs"
        debootstrap --variant=minbase bookworm "$CACHE/rootfs" "$MIRROR" >"$CACHE/debootstrap.log" 2>&1 \
            || { tail -20 "$CACHE/debootstrap.log"; exit 1; }
        tar -C "$CACHE/rootfs" -cf "$CACHE/bookworm-minbase.tar.partial" .
        mv "$CACHE/bookworm-minbase.tar.partial" "$CACHE/bookworm-minbase.tar"
        rm -rf "$CACHE/rootfs"
    fi
    docker import "$CACHE/bookworm-minbase.tar" debian:bookworm-slim >/dev/null
fi

echo "docker-smoke: building $IMAGE from target/$PROFILE (deploy/Dockerfile --target prebuilt)"
case "$PROFILE" in
    debug) flags=() ;;
    release) flags=(--release) ;;
    *) echo "docker-smoke: PROFILE is debug or release, not $PROFILE" >&2; exit 2 ;;
esac
cargo build --locked "${flags[@]}" -p keyholder-server -p keyholder-client -p keyholder-demo-app
rm -rf dist && mkdir -p dist
cp "target/$PROFILE/keyholderd" "target/$PROFILE/keyholder" dist/
DOCKER_BUILDKIT=0 docker build -q -f deploy/Dockerfile --target prebuilt -t "$IMAGE" . >/dev/null
rm -rf dist
docker run --rm --entrypoint keyholderd "$IMAGE" --version
docker run --rm --entrypoint id "$IMAGE"

echo "docker-smoke: the reduced demo with keyholderd in the container"
KEYHOLDER_DEMO_PORT="${KEYHOLDER_DEMO_PORT:-18646}" deploy/demo.sh --rows 5000 --quick --docker "$IMAGE"
