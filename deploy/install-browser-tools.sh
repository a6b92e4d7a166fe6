#!/usr/bin/env bash
# Installs what tests/service/test_page.py needs to drive the page at / in a real browser; safe to run
# again (it skips what is already there).
#   deploy/install-browser-tools.sh [VENV]     (default: .venv)
#
# - from Debian: chromium and chromium-driver (headless Chromium and its WebDriver, the same version);
# - into the virtualenv, from PyPI, pinned: selenium (pyproject's dev extra pins the same version).
# apt runs as root, or through sudo otherwise. The tests skip where the browser is missing, and fail
# instead where CI is set.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV="${1:-.venv}"

DEBIAN_PACKAGES=(chromium chromium-driver)
PYPI_PACKAGES=("selenium==4.51.0")

missing=()
for package in "${DEBIAN_PACKAGES[@]}"; do
    dpkg-query -W -f='${Status}' "$package" 2>/dev/null | grep -q "install ok installed" || missing+=("$package")
done
if [ "${#missing[@]}" -gt 0 ]; then
    SUDO=""
    if [ "$(id -u)" != 0 ]; then SUDO="sudo"; fi
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi

if [ ! -x "$VENV/bin/python" ]; then
    echo "error: no virtualenv at $VENV (run 'make setup' first, or pass its path)" >&2
    exit 2
fi
"$VENV/bin/python" -m pip install --quiet "${PYPI_PACKAGES[@]}"

chromium --version
chromedriver --version
"$VENV/bin/python" -c 'import selenium; print("selenium", selenium.__version__)'
