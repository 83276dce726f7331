#!/usr/bin/env bash
# Prepare this machine for cloudha: Debian packages, a virtualenv in .venv, the package.
#
#   bash scripts/setup.sh demo   python3 (3.11+) with venv, and `pip install -e .`: the core
#                                only, which is all `cloudha simulate` needs (demo.sh)
#   bash scripts/setup.sh test   also the real servers the integration tests start on
#                                loopback, the headers libvirt-python builds against, and
#                                `pip install -e ".[all,test,docs]"` (test.sh)
#
# Safe to run again, and quick then: Debian packages are installed only when missing, and
# each pip install set leaves its own stamp in .venv, redone when pyproject.toml changes.
# The two share .venv: a venv made by `demo` gets the extras on the first `test`.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

profile="${1:-}"
case "$profile" in
    demo | test) ;;
    *)
        echo "usage: bash scripts/setup.sh demo|test" >&2
        exit 2
        ;;
esac

apt_missing=()
want_apt() {
    local pkg
    for pkg in "$@"; do
        dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" ||
            apt_missing+=("$pkg")
    done
}
install_apt() {
    [ ${#apt_missing[@]} -gt 0 ] || return 0
    if ! command -v apt-get >/dev/null 2>&1; then
        echo "setup: missing ${apt_missing[*]} and no apt-get to install them with" >&2
        exit 1
    fi
    echo "setup: installing Debian packages: ${apt_missing[*]}" >&2
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -q
    # NOTE: --no-install-recommends: libvirt-daemon would otherwise pull qemu (200+ packages).
    apt-get install -y -q --no-install-recommends "${apt_missing[@]}"
    apt_missing=()
}

# Python 3.11+ with venv and ensurepip: Debian's, unless the machine has its own.
if ! command -v python3 >/dev/null 2>&1; then
    want_apt python3 python3-venv
elif ! python3 -c 'import venv, ensurepip' >/dev/null 2>&1; then
    want_apt python3-venv
fi

if [ "$profile" = test ]; then
    # The real servers of the integration tests (sshd, libvirtd with the test driver, nc for
    # test+ssh:// URIs, ipmitool, PostgreSQL) and what building libvirt-python needs.
    want_apt openssh-server libvirt-daemon libvirt-clients netcat-openbsd ipmitool postgresql \
        libvirt-dev pkg-config gcc
fi
install_apt

python3 - <<'PY'
import sys
if sys.version_info < (3, 11):
    sys.exit(f"setup: cloudha needs Python 3.11 or newer, found {sys.version.split()[0]}")
PY

if [ "$profile" = test ]; then
    # libvirt-python compiles against Python's headers; Debian's Python has them in python3-dev.
    if ! python3 -c 'import os, sysconfig; os.stat(os.path.join(sysconfig.get_paths()["include"], "Python.h"))' >/dev/null 2>&1; then
        want_apt python3-dev
        install_apt
    fi
fi

if [ ! -x .venv/bin/python ]; then
    python3 -m venv .venv
fi

# One stamp per install set. The test set includes the core, so it satisfies the demo.
fresh() { [ -f "$1" ] && [ ! pyproject.toml -nt "$1" ]; }
core_stamp=.venv/.cloudha-core
test_stamp=.venv/.cloudha-all-test
if [ "$profile" = demo ]; then
    if ! fresh "$core_stamp" && ! fresh "$test_stamp"; then
        echo "setup: pip install -e . (core only)" >&2
        .venv/bin/python -m pip install -q --disable-pip-version-check -e .
        touch "$core_stamp"
    fi
else
    if ! fresh "$test_stamp"; then
        echo "setup: pip install -e .[all,test,docs]" >&2
        .venv/bin/python -m pip install -q --disable-pip-version-check -e ".[all,test,docs]"
        touch "$test_stamp" "$core_stamp"
    fi
fi
