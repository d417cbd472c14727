#!/usr/bin/env bash
# Creates the virtual environment .venv inside the repo, or reuses it, and installs this
# package in it (editable) with the extras named in $1, e.g. "test,onnx,examples".
# Installing again is skipped while pyproject.toml and constraints.txt are unchanged.
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
extras=${1:-}
venv="$root/.venv"

if [ ! -x "$venv/bin/python" ]; then
    py=${PYTHON:-}
    if [ -z "$py" ]; then
        for candidate in python3.11 python3.10 python3.9 python3.8 python3; do
            if command -v "$candidate" >/dev/null 2>&1; then py=$candidate; break; fi
        done
    fi
    if [ -z "$py" ] || ! "$py" -c 'import sys; sys.exit(not ((3, 8) <= sys.version_info[:2] <= (3, 11)))'; then
        echo "error: Chainer 7.8.1 needs Python 3.8 to 3.11; set PYTHON to such an interpreter" >&2
        exit 2
    fi
    echo "Creating $venv with $("$py" --version)" >&2
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
