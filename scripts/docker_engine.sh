#!/usr/bin/env bash
# A Docker engine and the base image the Dockerfiles name, on a machine that has neither.
#
#   scripts/docker_engine.sh            engine only: install docker.io if missing, start dockerd
#   scripts/docker_engine.sh base       engine + the local python:3.11.13-slim-bookworm stand-in
#
# Why: no container registry is reachable here, so `FROM python:3.11.13-slim-bookworm` cannot
# be pulled. A stand-in built from Debian packages (debootstrap: bookworm's python3 3.11,
# python3-venv, ca-certificates) and tagged with exactly that name lets the Dockerfiles stay
# unchanged. pip inside `docker build` reaches PyPI through this machine's egress proxy only if
# it trusts the same certificate authorities, so this machine's CA files
# (/usr/local/share/ca-certificates/) go into the stand-in and PIP_CERT points pip at the
# bundle, as a corporate build farm does. Where the image exists already nothing is built
# (a registry that can serve the real image makes this script's `base` step a no-op too:
# `docker pull` first, then run it).
#
# Idempotent; needs root for apt-get/dockerd/debootstrap. The engine it starts keeps running
# (its log: $DOCKERD_LOG); stop it with `kill $(cat /var/run/docker.pid)`.
set -euo pipefail

BASE_IMAGE="${BASE_IMAGE:-python:3.11.13-slim-bookworm}"
DOCKERD_LOG="${DOCKERD_LOG:-/tmp/dockerd.log}"
CA_DIR="${CA_DIR:-/usr/local/share/ca-certificates}"
DEBIAN_SUITE="${DEBIAN_SUITE:-bookworm}"

log() { printf 'docker_engine: %s\n' "$*" >&2; }

as_root() {
    if [[ $(id -u) -eq 0 ]]; then "$@"; else sudo "$@"; fi
}

apt_install() {
    log "installing $* (apt-get)"
    as_root apt-get update -q >/dev/null
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -q "$@" >/dev/null
}

engine() {
    if docker info >/dev/null 2>&1; then
        return 0
    fi
    local missing=()
    command -v dockerd >/dev/null || missing+=(docker.io)
    command -v docker-compose >/dev/null || missing+=(docker-compose)
    ((${#missing[@]} == 0)) || apt_install "${missing[@]}"
    log "starting dockerd (log: $DOCKERD_LOG)"
    # setsid: the engine outlives this script and the terminal that started it.
    as_root setsid dockerd >"$DOCKERD_LOG" 2>&1 < /dev/null &
    for _ in $(seq 1 60); do
        docker info >/dev/null 2>&1 && { log "engine up: $(docker version -f '{{.Server.Version}}')"; return 0; }
        sleep 1
    done
    log "dockerd did not answer within 60 s; its log:"
    tail -20 "$DOCKERD_LOG" >&2
    return 1
}

base_image() {
    if docker image inspect "$BASE_IMAGE" >/dev/null 2>&1; then
        log "$BASE_IMAGE present"
        return 0
    fi
    command -v debootstrap >/dev/null || apt_install debootstrap
    ROOTFS="$(mktemp -d /tmp/base-rootfs.XXXXXX)"
    trap 'as_root rm -rf "$ROOTFS"' EXIT
    local rootfs="$ROOTFS"
    log "building the stand-in $BASE_IMAGE with debootstrap ($DEBIAN_SUITE, minbase)"
    local t0=$SECONDS
    as_root debootstrap --variant=minbase \
        --include=python3,python3-venv,python-is-python3,ca-certificates \
        "$DEBIAN_SUITE" "$rootfs" >/tmp/debootstrap.log 2>&1 \
        || { tail -20 /tmp/debootstrap.log >&2; return 1; }
    # This machine's certificate authorities (the egress proxy's among them) into the image.
    if compgen -G "$CA_DIR/*.crt" >/dev/null; then
        as_root cp "$CA_DIR"/*.crt "$rootfs/usr/local/share/ca-certificates/"
    fi
    as_root chroot "$rootfs" update-ca-certificates >/dev/null
    # Slim as the official image: no apt lists, no docs.
    as_root rm -rf "$rootfs"/var/lib/apt/lists/* "$rootfs"/var/cache/apt/*.bin \
        "$rootfs"/usr/share/doc/* "$rootfs"/usr/share/man/*
    as_root tar -C "$rootfs" -c . | docker import \
        --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
        --change 'ENV LANG=C.UTF-8' \
        --change 'ENV PIP_CERT=/etc/ssl/certs/ca-certificates.crt' \
        --change 'ENV SSL_CERT_FILE=/etc/ssl/certs/ca-certificates.crt' \
        --change 'CMD ["python3"]' \
        --message "local stand-in for $BASE_IMAGE (debootstrap $DEBIAN_SUITE + this machine's CAs)" \
        - "$BASE_IMAGE" >/dev/null
    log "built $BASE_IMAGE in $((SECONDS - t0)) s"
}

engine
if [[ "${1:-}" == "base" ]]; then
    base_image
fi
