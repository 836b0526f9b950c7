#!/usr/bin/env bash
# Docker engine for taoctl's docker tests, on a machine that may have none.
#
#   .ci/docker.sh up      install docker.io if absent, start dockerd if it is not running,
#                         build the local base image (no registry is reachable) if it is missing;
#                         the last line on stdout is "started" if it started dockerd, else "running"
#   .ci/docker.sh down    stop dockerd only if `up` started it
#   .ci/docker.sh base    (re)build only the base image
#
# `up` records what it started in $TAOCTL_DOCKER_STATE (default /tmp/taoctl-dockerd.state), so
# `down` with the same state file stops exactly that and nothing someone else started.
# Needs root to install or start anything; without it `up` only checks and fails clearly.
set -euo pipefail

STATE=${TAOCTL_DOCKER_STATE:-/tmp/taoctl-dockerd.state}
BASE_IMAGE=${TAOCTL_BASE_IMAGE:-taoctl-base:bookworm}
SUITE=${TAOCTL_BASE_SUITE:-bookworm}
MIRROR=${TAOCTL_DEBIAN_MIRROR:-http://deb.debian.org/debian}
LOG_DIR=${TAOCTL_DOCKER_LOG_DIR:-/tmp/taoctl-dockerd}

say() { echo "docker.sh: $*" >&2; }

reachable() { docker version --format '{{.Server.Version}}' >/dev/null 2>&1; }

as_root() {
    if [ "$(id -u)" -ne 0 ]; then
        say "needs root to $1 (run as root, or start Docker yourself)"
        exit 1
    fi
}

install_docker() {
    command -v dockerd >/dev/null && return
    as_root "install docker.io"
    say "installing Debian's docker.io"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -q >/dev/null
    apt-get install -y -q --no-install-recommends docker.io >/dev/null
}

STARTED=running

start_dockerd() {
    reachable && return
    as_root "start dockerd"
    mkdir -p "$LOG_DIR"
    say "starting dockerd (log $LOG_DIR/dockerd.log)"
    # setsid: dockerd outlives this script and is not hit by the caller's Ctrl-C.
    setsid dockerd --pidfile "$LOG_DIR/dockerd.pid" >"$LOG_DIR/dockerd.log" 2>&1 < /dev/null &
    local pid=$!
    for _ in $(seq 1 60); do
        if reachable; then
            echo "dockerd_pid=$pid" >"$STATE"
            STARTED=started
            return
        fi
        if ! kill -0 "$pid" 2>/dev/null; then
            say "dockerd exited at start; last lines of its log:"
            tail -5 "$LOG_DIR/dockerd.log" >&2
            exit 1
        fi
        sleep 0.5
    done
    say "dockerd did not answer within 30 s"
    kill "$pid" 2>/dev/null || true
    exit 1
}

# The base image comes from Debian's archive (debootstrap) because no image registry is
# reachable: a minimal system with Python 3, imported once and reused by tag.
build_base() {
    as_root "debootstrap a base image"
    command -v debootstrap >/dev/null || {
        export DEBIAN_FRONTEND=noninteractive
        apt-get install -y -q --no-install-recommends debootstrap >/dev/null
    }
    local root
    root=$(mktemp -d /tmp/taoctl-rootfs.XXXXXX)
    say "debootstrap $SUITE into $root"
    debootstrap --variant=minbase --include=python3,python3-venv,ca-certificates "$SUITE" "$root" "$MIRROR" \
        >"$LOG_DIR/debootstrap.log" 2>&1 || { tail -5 "$LOG_DIR/debootstrap.log" >&2; rm -rf "$root"; exit 1; }
    rm -rf "$root"/var/cache/apt/archives/*.deb "$root"/var/lib/apt/lists/*
    tar -C "$root" -c . | docker import -c 'CMD ["/bin/bash"]' - "$BASE_IMAGE" >/dev/null
    rm -rf "$root"
    say "imported $BASE_IMAGE"
}

ensure_base() {
    docker image inspect "$BASE_IMAGE" >/dev/null 2>&1 || { mkdir -p "$LOG_DIR"; build_base; }
}

case "${1:-}" in
    up)
        install_docker
        start_dockerd
        ensure_base
        say "docker ready at ${DOCKER_HOST:-unix:///var/run/docker.sock}; base image $BASE_IMAGE"
        echo "$STARTED"
        ;;
    down)
        if [ -f "$STATE" ]; then
            # shellcheck disable=SC1090
            . "$STATE"
            if [ -n "${dockerd_pid:-}" ] && kill -0 "$dockerd_pid" 2>/dev/null; then
                say "stopping dockerd $dockerd_pid (started by up)"
                kill "$dockerd_pid"
                for _ in $(seq 1 40); do kill -0 "$dockerd_pid" 2>/dev/null || break; sleep 0.5; done
            fi
            rm -f "$STATE"
        fi
        ;;
    base)
        mkdir -p "$LOG_DIR"
        build_base
        ;;
    *)
        echo "usage: $0 up|down|base" >&2
        exit 2
        ;;
esac
