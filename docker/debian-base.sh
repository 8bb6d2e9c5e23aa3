#!/usr/bin/env bash
# Build a minimal Debian base image from Debian's packages, for hosts that reach no container registry:
#   sudo docker/debian-base.sh [IMAGE_NAME] [MIRROR]
# then `docker build --build-arg BASE_IMAGE=IMAGE_NAME -f docker/Dockerfile.cpu .`. Needs root and debootstrap.
set -euo pipefail
image=${1:-local/debian:bookworm-base}
mirror=${2:-http://deb.debian.org/debian}
rootfs=$(mktemp -d)
trap 'rm -rf "$rootfs"' EXIT
debootstrap --variant=minbase bookworm "$rootfs" "$mirror"
rm -rf "$rootfs"/var/cache/apt/archives/*.deb "$rootfs"/var/lib/apt/lists/*
tar --numeric-owner -C "$rootfs" -c . | docker import - "$image"
