#!/usr/bin/env bash
# The whole test suite: installs what it needs into .venv, checks the style, runs pytest.
# Arguments are passed to pytest (e.g. "-m gpu" on a machine with CuPy and a GPU).
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$root"
bash scripts/bootstrap.sh test,onnx,examples
.venv/bin/ruff check .
exec .venv/bin/python -m pytest "$@"
