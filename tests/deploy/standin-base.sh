#!/usr/bin/env bash
# A test fixture: a stand-in for the official python:3.11-slim-bookworm image, for machines that
# reach Debian's archive but no container registry. Built with debootstrap from Debian's packages
# and shaped like the official image (python, pip on PATH under /usr/local/bin, pip may install
# into the system Python). Users build the Dockerfile against the real image; this never ships.
#
#   tests/deploy/standin-base.sh ENGINE IMAGE_NAME [LABEL=VALUE]
#
# ENGINE is podman (or docker); IMAGE_NAME the fully qualified name the Dockerfile's FROM uses;
# LABEL=VALUE is stamped on the image (the tests store this script's hash there to reuse it).
set -euo pipefail
ENGINE="$1"
IMAGE="$2"
LABEL="${3:-}"

# The mirror this machine's apt uses for bookworm; Debian's own where apt knows none.
MIRROR="$(apt-get indextargets --format '$(REPO_URI)' 'Codename: bookworm' 2>/dev/null | head -n 1 || true)"
MIRROR="${MIRROR:-http://deb.debian.org/debian/}"

ROOTFS="$(mktemp -d /var/tmp/standin-base.XXXXXX)"
trap 'rm -rf "$ROOTFS"' EXIT

debootstrap --variant=minbase --include=python3,python3-venv,python3-pip,ca-certificates \
    bookworm "$ROOTFS" "$MIRROR" >"$ROOTFS.log" 2>&1 || { cat "$ROOTFS.log" >&2; rm -f "$ROOTFS.log"; exit 1; }
rm -f "$ROOTFS.log"

# As the official image: pip installs into the system Python, python/pip are the 3.11 ones.
rm -f "$ROOTFS"/usr/lib/python3.*/EXTERNALLY-MANAGED
for name in python python3 pip pip3; do
    target=python3
    case "$name" in pip*) target=pip3 ;; esac
    ln -sf "/usr/bin/$target" "$ROOTFS/usr/local/bin/$name"
done
# What the official slim image leaves out too: package caches, documentation, man pages.
rm -rf "$ROOTFS"/var/cache/apt/archives/*.deb "$ROOTFS"/var/lib/apt/lists/* \
    "$ROOTFS"/usr/share/doc/* "$ROOTFS"/usr/share/man/* "$ROOTFS"/usr/share/info/*

CHANGES=(--change 'ENV PATH=/usr/local/bin:/usr/local/sbin:/usr/sbin:/usr/bin:/sbin:/bin' --change 'ENV LANG=C.UTF-8'
    --change 'CMD ["python3"]')
if [ -n "$LABEL" ]; then CHANGES+=(--change "LABEL $LABEL"); fi
tar -C "$ROOTFS" -c . | "$ENGINE" import "${CHANGES[@]}" - "$IMAGE" >/dev/null
echo "built $IMAGE"
