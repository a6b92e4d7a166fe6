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
# shellcheck source=deploy/install-common.sh
source deploy/install-common.sh

DEBIAN_PACKAGES=(chromium chromium-driver)
PYPI_PACKAGES=("selenium==4.51.0")

apt_install "${DEBIAN_PACKAGES[@]}"
pip_install "$VENV" "${PYPI_PACKAGES[@]}"

chromium --version
chromedriver --version
"$VENV/bin/python" -c 'import selenium; print("selenium", selenium.__version__)'
