#!/usr/bin/env bash
# Creates the virtual environment .venv inside the repo, or reuses it, and installs this
# package in it (editable) with the extras named in $1, e.g. "test,onnx,examples".
# Installing again is skipped while pyproject.toml and constraints.txt are unchanged.
#
# The interpreter of .venv is $PYTHON if set, else the first of python3.11, python3.10,
# python3.9, python3.8 and python3 on PATH that is Python 3.8 to 3.11 (Chainer 7.8.1 runs on
# no other). With none, uv installs a Python 3.11 into .tools/python: the uv on PATH, or one
# installed from PyPI into .tools/uv with whatever python3 there is.
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
extras=${1:-}
venv="$root/.venv"
tools="$root/.tools"

is_supported() {
    "$1" -c 'import sys; sys.exit(not ((3, 8) <= sys.version_info[:2] <= (3, 11)))' \
        >/dev/null 2>&1
}

find_supported_python() {
    local candidate
    for candidate in python3.11 python3.10 python3.9 python3.8 python3; do
        # A pyenv shim exists for every version pyenv knows, and fails for those not selected.
        if command -v "$candidate" >/dev/null 2>&1 && is_supported "$candidate"; then
            echo "$candidate"
            return 0
        fi
    done
    return 1
}

fail() {
    echo "error: $*" >&2
    exit 2
}

find_or_install_uv() {
    if command -v uv >/dev/null 2>&1; then
        command -v uv
        return 0
    fi
    if [ ! -x "$tools/uv/bin/uv" ]; then
        command -v python3 >/dev/null 2>&1 ||
            fail "no python3 to install uv with; install uv (see docs.astral.sh/uv), or set PYTHON to a Python 3.8 to 3.11"
        echo "Installing uv into $tools/uv with $(python3 --version 2>&1)" >&2
        rm -rf "$tools/uv"
        python3 -m venv "$tools/uv" >&2 ||
            fail "python3 -m venv failed (on Debian and Ubuntu: apt install python3-venv); or install uv, or set PYTHON to a Python 3.8 to 3.11"
        PIP_DISABLE_PIP_VERSION_CHECK=1 "$tools/uv/bin/python" -m pip install --quiet "uv>=0.4" >&2 ||
            fail "could not install uv from PyPI into $tools/uv"
    fi
    echo "$tools/uv/bin/uv"
}

# Prints the path of a Python 3.11 that uv installs into .tools/python.
install_python_with_uv() {
    local uv
    uv=$(find_or_install_uv)
    export UV_PYTHON_INSTALL_DIR="$tools/python"
    # uv would also link python3.11 into ~/.local/bin; everything stays in .tools.
    export UV_PYTHON_BIN_DIR="$tools/bin"
    echo "Installing Python 3.11 into $UV_PYTHON_INSTALL_DIR with $uv" >&2
    "$uv" python install 3.11 >&2 ||
        fail "uv could not install Python 3.11 (it downloads it from GitHub; UV_PYTHON_INSTALL_MIRROR names another source); or set PYTHON to a Python 3.8 to 3.11"
    "$uv" python find 3.11
}

if [ ! -x "$venv/bin/python" ]; then
    if [ -n "${PYTHON:-}" ]; then
        py=$PYTHON
        is_supported "$py" ||
            fail "PYTHON=$py is not a Python 3.8 to 3.11, which Chainer 7.8.1 needs"
    elif ! py=$(find_supported_python); then
        echo "No Python 3.8 to 3.11 on PATH (Chainer 7.8.1 needs one)" >&2
        py=$(install_python_with_uv)
    fi
    echo "Creating $venv with $("$py" --version 2>&1)" >&2
    "$py" -m venv "$venv"
fi

stamp="$venv/.installed-${extras:-none}"
want=$(cat "$root/pyproject.toml" "$root/constraints.txt" | cksum)
if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ]; then
    spec="$root"
    [ -n "$extras" ] && spec="$root[$extras]"
    echo "Installing chainer-sharedlinear[${extras}] into $venv (the first time takes a few minutes)" >&2
    # The constraints reach pip's isolated build of Chainer's source archive too.
    PIP_CONSTRAINT="$root/constraints.txt" PIP_DISABLE_PIP_VERSION_CHECK=1 \
        "$venv/bin/python" -m pip install --quiet --editable "$spec"
    echo "$want" > "$stamp"
fi
