#!/usr/bin/env bash
# The whole test suite: installs what it needs into .venv, checks the style, runs pytest.
# Arguments are passed to pytest (e.g. "-m gpu" on a machine with CuPy and a GPU).
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$root"
extras=test,onnx,examples
# The mpi extra (mpi4py) needs an MPI to build against; without one the MPI tests
# (tests/test_chainermn.py) are skipped with a reason.
if command -v mpicc >/dev/null 2>&1; then extras="$extras,mpi"; fi
bash scripts/bootstrap.sh "$extras"
.venv/bin/ruff check .
exec .venv/bin/python -m pytest "$@"
