#!/usr/bin/env bash
# Builds the documentation site from docs/ into docs/_build/html, with warnings as errors
# (what CI runs). Arguments are passed to sphinx-build (e.g. -E to reread every page).
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$root"
bash scripts/bootstrap.sh docs
.venv/bin/python -m sphinx -W --keep-going -b html "$@" docs docs/_build/html
echo "The site: $root/docs/_build/html/index.html" >&2
