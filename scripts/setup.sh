#!/usr/bin/env bash
# Prepare a machine for cloudha: Debian packages, a virtualenv in .venv, the package.
# Safe to run again: it installs only what is missing. Sourced by demo.sh and test.sh.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

# libvirt-dev/pkg-config/gcc build libvirt-python; the rest are the real servers the
# integration tests start on loopback (sshd, libvirtd with the test driver, nc for test+ssh).
APT_PACKAGES=(libvirt-dev pkg-config gcc openssh-server libvirt-daemon libvirt-clients netcat-openbsd ipmitool postgresql)
command -v python3 >/dev/null 2>&1 || APT_PACKAGES+=(python3 python3-venv python3-dev)

missing=()
for pkg in "${APT_PACKAGES[@]}"; do
    dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
done
if ! python3 -c 'import venv, ensurepip' >/dev/null 2>&1; then
    missing+=(python3-venv)
fi
if [ ${#missing[@]} -gt 0 ]; then
    echo "setup: installing Debian packages: ${missing[*]}" >&2
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -q
    apt-get install -y -q --no-install-recommends "${missing[@]}"
fi

python3 - <<'PY'
import sys
if sys.version_info < (3, 11):
    sys.exit(f"setup: cloudha needs Python 3.11 or newer, found {sys.version.split()[0]}")
PY

if [ ! -x .venv/bin/python ]; then
    python3 -m venv .venv
fi
stamp=.venv/.cloudha-installed
if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ]; then
    .venv/bin/python -m pip install -q --upgrade pip
    .venv/bin/python -m pip install -q -e ".[all,test]"
    touch "$stamp"
fi
