#!/usr/bin/env bash
# Installs what tests/deploy/test_image.py needs to build and run the image; safe to run again
# (it skips what is already there).
#   deploy/install-image-tools.sh [VENV]     (default: .venv)
#
# Where a Docker engine answers (`docker info`), the tests use it and this installs nothing.
# Otherwise, for a Debian machine without Docker or a container registry (CI):
# - from Debian: podman, buildah, runc (crun refuses cgroup v1 "hybrid" hosts), debootstrap and
#   Debian's archive keyring (the tests' stand-in base image), uidmap, slirp4netns, fuse-overlayfs;
# - into the virtualenv, from PyPI, pinned: podman-compose.
# Podman's settings for such machines (runc, cgroupfs, ulimits under the hard limits) are in
# tests/deploy/containers.conf, which the tests pass as CONTAINERS_CONF: nothing system-wide changes.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV="${1:-.venv}"
# shellcheck source=deploy/install-common.sh
source deploy/install-common.sh

DEBIAN_PACKAGES=(podman buildah runc debootstrap debian-archive-keyring uidmap slirp4netns fuse-overlayfs)
PYPI_PACKAGES=("podman-compose==1.6.0")

if command -v docker >/dev/null && timeout 30 docker info >/dev/null 2>&1; then
    echo "a Docker engine answers: the image tests use it (and 'docker compose'); nothing to install"
    docker compose version || echo "warning: no 'docker compose' plugin: the compose test will fail in CI, skip elsewhere" >&2
    exit 0
fi

apt_install "${DEBIAN_PACKAGES[@]}"
pip_install "$VENV" "${PYPI_PACKAGES[@]}"

CONTAINERS_CONF="$PWD/tests/deploy/containers.conf" podman info --format 'podman {{.Version.Version}}, {{.Host.OCIRuntime.Name}}, {{.Store.GraphDriverName}} storage'
"$VENV/bin/podman-compose" version 2>/dev/null | head -n 1
