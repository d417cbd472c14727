#!/usr/bin/env bash
# The main job: trains the bundled MNIST example (examples/train_mnist3.py) on the
# 5,000 real MNIST digits that ship with the repo; needs no network. Arguments are
# passed to the example (e.g. --epoch 5, --compare, --dataset mnist --epoch 50).
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$root"
bash scripts/bootstrap.sh examples
exec .venv/bin/python examples/train_mnist3.py --dataset mnist-5k --out result/mnist-5k "$@"
