# Sourced by deploy/install-*-tools.sh: the two steps every tool installer takes. Safe to repeat.

# apt_install PACKAGE...: the Debian packages not installed yet, as root or through sudo.
apt_install() {
    local missing=() package
    for package in "$@"; do
        dpkg-query -W -f='${Status}' "$package" 2>/dev/null | grep -q "install ok installed" || missing+=("$package")
    done
    if [ "${#missing[@]}" -gt 0 ]; then
        local sudo=""
        if [ "$(id -u)" != 0 ]; then sudo="sudo"; fi
        $sudo apt-get update -qq
        DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}"
    fi
}

# pip_install VENV REQUIREMENT...: pinned packages from PyPI into the project's virtualenv, which must exist.
pip_install() {
    local venv="$1"
    shift
    if [ ! -x "$venv/bin/python" ]; then
        echo "error: no virtualenv at $venv (run 'make setup' first, or pass its path)" >&2
        exit 2
    fi
    "$venv/bin/python" -m pip install --quiet "$@"
}
