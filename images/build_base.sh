#!/usr/bin/env bash
# Build a Python 3.11 base image from Debian packages, for machines that cannot pull
# python:3.11-slim-bookworm from Docker Hub:
#
#     images/build_base.sh [IMAGE]          # default local/python:3.11-bookworm
#     FORCE=1 images/build_base.sh          # rebuild even if the image exists
#
# debootstrap --variant=minbase bookworm + python3, python3-venv (ensurepip, so `python3 -m venv`
# brings pip), python-is-python3 (`python` on PATH, as in the official image), ca-certificates;
# the host's CA bundle replaces Debian's so installs inside builds trust what the host trusts;
# then `docker import`. Needs root (debootstrap, chroot) and a running Docker daemon.
# The result plays the role of python:3.11-slim-bookworm: build the step images with
# `make build-images PYTHON_IMAGE=local/python:3.11-bookworm`.
set -euo pipefail

IMAGE=${1:-${BASE_IMAGE:-local/python:3.11-bookworm}}
SUITE=${SUITE:-bookworm}
MIRROR=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
SECURITY_MIRROR=${DEBIAN_SECURITY_MIRROR:-http://deb.debian.org/debian-security}
HOST_CA_BUNDLE=${HOST_CA_BUNDLE:-/etc/ssl/certs/ca-certificates.crt}
DOCKER=${DOCKER:-docker}
PACKAGES=python3,python3-venv,python-is-python3,ca-certificates

log() { printf 'build_base: %s\n' "$*" >&2; }
die() { printf 'error: build_base: %s\n' "$*" >&2; exit 1; }

if [[ "${FORCE:-0}" != 1 ]] && $DOCKER image inspect "$IMAGE" >/dev/null 2>&1; then
    log "$IMAGE exists (FORCE=1 to rebuild)"
    exit 0
fi
[[ $EUID -eq 0 ]] || die "debootstrap needs root; run as root (or with sudo)"
command -v debootstrap >/dev/null || die "debootstrap not found: apt-get install debootstrap"
$DOCKER info >/dev/null 2>&1 || die "no Docker daemon reachable (start dockerd, wait for /var/run/docker.sock)"
[[ -s $HOST_CA_BUNDLE ]] || die "no CA bundle at $HOST_CA_BUNDLE (HOST_CA_BUNDLE=...)"

start=$SECONDS
work=$(mktemp -d "${TMPDIR:-/tmp}/build-base.XXXXXX")
rootfs=$work/rootfs
cleanup() {
    # debootstrap and chroot mount these inside the target; never leave them behind
    for m in proc sys dev/pts dev; do
        mountpoint -q "$rootfs/$m" 2>/dev/null && umount -l "$rootfs/$m" || true
    done
    rm -rf "$work"
}
trap cleanup EXIT

log "debootstrap --variant=minbase $SUITE ($MIRROR): $PACKAGES"
debootstrap --variant=minbase --include="$PACKAGES" "$SUITE" "$rootfs" "$MIRROR" \
    >"$work/debootstrap.log" 2>&1 || { tail -n 30 "$work/debootstrap.log" >&2; die "debootstrap failed"; }

# Security updates (debootstrap only sees the release suite).
cat >"$rootfs/etc/apt/sources.list" <<EOF
deb $MIRROR $SUITE main
deb $MIRROR $SUITE-updates main
deb $SECURITY_MIRROR $SUITE-security main
EOF
log "apt-get upgrade from $SUITE-updates and $SUITE-security"
mount -t proc proc "$rootfs/proc"
chroot "$rootfs" /usr/bin/env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin DEBIAN_FRONTEND=noninteractive \
    sh -c 'apt-get -qq update && apt-get -qq -y --no-install-recommends upgrade && apt-get clean' \
    >"$work/upgrade.log" 2>&1 || { tail -n 30 "$work/upgrade.log" >&2; die "apt-get upgrade failed"; }
umount "$rootfs/proc"

# The host's CA bundle (it may hold CAs Debian's does not). Nothing in the image runs
# update-ca-certificates, so it stays as copied.
install -m 0644 "$HOST_CA_BUNDLE" "$rootfs/etc/ssl/certs/ca-certificates.crt"

# Trim: package lists, caches, docs, man pages, non-English locales.
rm -rf "$rootfs"/var/lib/apt/lists/* "$rootfs"/var/cache/apt/*.bin "$rootfs"/var/cache/apt/archives/*.deb \
    "$rootfs"/var/log/* "$rootfs"/usr/share/doc/* "$rootfs"/usr/share/man/* "$rootfs"/usr/share/info/* \
    "$rootfs"/tmp/* "$rootfs"/root/.cache
find "$rootfs/usr/share/locale" -mindepth 1 -maxdepth 1 ! -name 'en*' ! -name locale.alias \
    -exec rm -rf {} + 2>/dev/null || true
find "$rootfs/usr/lib/python3.11" -name __pycache__ -prune -exec rm -rf {} + 2>/dev/null || true
# What nothing in the images uses (measured in the image, 2026-11-30): glibc's iconv modules
# (gconv, 8.4 MB; Python decodes with its own codecs and UTF-8 is built into glibc), the
# leap-second `right/` time zones (1.9 MB; zoneinfo and glibc read the plain ones) and the
# `-old` backups dpkg and debconf keep of their databases (1.5 MB).
rm -rf "$rootfs"/usr/lib/*-linux-gnu/gconv "$rootfs"/usr/share/zoneinfo/right \
    "$rootfs"/var/cache/debconf/*-old "$rootfs"/var/lib/dpkg/*-old
# No pip configuration: the image installs from PyPI itself (the host's extra indexes,
# find-links or constraints are the host's business).
rm -f "$rootfs/etc/pip.conf"; rm -rf "$rootfs/etc/xdg/pip"

py_version=$(chroot "$rootfs" python -c 'import sys; print("%d.%d.%d" % sys.version_info[:3])') \
    || die "python does not run in the new root"
log "importing $IMAGE (Python $py_version)"
tar --numeric-owner -C "$rootfs" -c . | $DOCKER import \
    --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
    --change 'ENV LANG=C.UTF-8' \
    --change "ENV PYTHON_VERSION=$py_version" \
    --change "LABEL org.opencontainers.image.description=\"Debian $SUITE minbase with Python $py_version (python3-venv, ca-certificates); built by images/build_base.sh\"" \
    --change 'CMD ["python3"]' \
    - "$IMAGE" >/dev/null
log "$IMAGE built in $((SECONDS - start)) s ($($DOCKER image inspect -f '{{.Size}}' "$IMAGE" | awk '{printf "%.0f MB", $1/1e6}'))"
