#!/usr/bin/env bash
# The benchmark of docs/benchmarks.md: times forward + backward of the family against
# L.Linear, the 2016 tiled algorithm and plain NumPy, prints the table, and writes
# docs/benchmark-cpu.json and docs/benchmark-cpu.png. Arguments are passed on to
# benchmarks/benchmark.py and override these, e.g. on a GPU (with the cuda12x extra installed):
#   bash benchmarks/run.sh --device @cupy:0 --json docs/benchmark-gpu.json --plot docs/benchmark-gpu.png
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$root"
bash scripts/bootstrap.sh examples
exec .venv/bin/python benchmarks/benchmark.py \
    --cases all --json docs/benchmark-cpu.json --plot docs/benchmark-cpu.png "$@"
