#!/usr/bin/env bash
# Test-only base image for machines that cannot pull from Docker Hub: Debian bookworm (debootstrap)
# with Debian's Python 3.11, venv and pip, imported as a local image. docker/smoke.sh builds the CPU
# image on it with --build-arg BASE=<this tag>.
#
# This machine reaches PyPI through a TLS-inspecting egress, so the base also carries the host's extra
# CA certificates and a pip.conf that trusts them (plus the host's index URL, if one is configured).
# That is machine-specific: it lives only here, never in docker/Dockerfile.
#
#   docker/test-base.sh [TAG]      # default spot-test/python:3.11-bookworm; needs root, debootstrap, dockerd
set -euo pipefail
TAG=${1:-spot-test/python:3.11-bookworm}
MIRROR=${DEBIAN_MIRROR:-http://deb.debian.org/debian}

if docker image inspect "$TAG" >/dev/null 2>&1; then
  echo "test base $TAG exists (docker rmi it to rebuild)"
  exit 0
fi
command -v debootstrap >/dev/null || apt-get install -y -qq debootstrap

ROOTFS=$(mktemp -d /tmp/spot-test-base.XXXXXX)
trap 'rm -rf "$ROOTFS"' EXIT
nice -n 10 debootstrap --variant=minbase --include=python3,python3-venv,python3-pip,ca-certificates \
  bookworm "$ROOTFS" "$MIRROR" >/tmp/spot-test-base.debootstrap.log

# The host's extra CAs (e.g. an egress proxy's) and pip settings, so that pip inside `docker build` works.
if compgen -G "/usr/local/share/ca-certificates/*.crt" >/dev/null; then
  cp /usr/local/share/ca-certificates/*.crt "$ROOTFS/usr/local/share/ca-certificates/"
  chroot "$ROOTFS" update-ca-certificates >/dev/null 2>&1
fi
INDEX_URL=${PIP_INDEX_URL:-$(pip3 config get global.index-url 2>/dev/null || true)}
{
  echo "[global]"
  echo "cert = /etc/ssl/certs/ca-certificates.crt"
  echo "disable-pip-version-check = true"
  [ -n "$INDEX_URL" ] && echo "index-url = $INDEX_URL"
} >"$ROOTFS/etc/pip.conf"

# Slim it: no apt lists, docs or man pages in the image.
rm -rf "$ROOTFS"/var/lib/apt/lists/* "$ROOTFS"/var/cache/apt/*.bin "$ROOTFS"/usr/share/doc/* "$ROOTFS"/usr/share/man/*
tar -C "$ROOTFS" -c . | docker import \
  --change 'ENV LANG=C.UTF-8' \
  --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
  --change 'CMD ["python3"]' \
  - "$TAG" >/dev/null
echo "built test base $TAG ($(docker image inspect -f '{{.Size}}' "$TAG" | numfmt --to=iec))"
