#!/usr/bin/env bash
# Checks the release artefacts as users get them (what CI runs besides the tests):
# builds the sdist and, from it, the wheel with python -m build; checks both with
# twine check and their lists of files with scripts/check_dist.py; then, for each,
# installs it with the constraints into a fresh virtual environment outside the repo
# and there runs scripts/release_smoke.py.
# Chainer's wheel, built from its source archive once, comes from pip's cache after that.
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$root"
bash scripts/bootstrap.sh release
work=$(mktemp -d "${TMPDIR:-/tmp}/chainer-sharedlinear-release.XXXXXX")
trap 'rm -rf "$work"' EXIT
export PIP_CONSTRAINT="$root/constraints.txt" PIP_DISABLE_PIP_VERSION_CHECK=1

step() { echo "== $* ($SECONDS s)" >&2; }

step "Building the sdist and the wheel into $work/dist"
# Its log (setuptools' deprecation notices about the licence table among it) is shown on
# a failure only.
if ! .venv/bin/python -m build --outdir "$work/dist" "$root" >"$work/build.log" 2>&1; then
    cat "$work/build.log" >&2
    exit 1
fi
tail -n 1 "$work/build.log"
wheel=$(echo "$work"/dist/*.whl)
sdist=$(echo "$work"/dist/*.tar.gz)
.venv/bin/python -m twine check --strict "$wheel" "$sdist"
.venv/bin/python scripts/check_dist.py "$wheel" "$sdist"

cp scripts/release_smoke.py "$work/"
for artefact in "$wheel" "$sdist"; do
    step "Installing $(basename "$artefact") into a fresh environment"
    env="$work/env-$(basename "$artefact")"
    .venv/bin/python -m venv "$env"
    "$env/bin/python" -m pip install --quiet "$artefact"
    step "Running it there"
    # From $work, with -I: nothing of the repo is on sys.path.
    (cd "$work" && "$env/bin/python" -I release_smoke.py)
done
step "The wheel and the sdist install and run"
