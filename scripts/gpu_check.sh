#!/usr/bin/env bash
# The GPU check: bash scripts/gpu_check.sh OUT.json
#
# Runs lsearch's CUDA path end to end in minutes on one GPU (synthetic data and
# digits images, random weights: nothing to download) and writes its figures to OUT.json.
# On a machine without a GPU it runs the same steps at 32 px with tiny sizes and reports the
# CUDA-only steps as not run. Exit 0 when no step failed, 1 otherwise, 2 for a usage error.
#
# A GPU machine that has torch, numpy, scipy, scikit-learn, typer and rich but not lsearch's
# other dependencies takes them as wheels in .whl/ beside this checkout: make them here with
# `bash scripts/gpu_wheels.sh` (no network is needed there).
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
if [ $# -ne 1 ]; then
    echo "usage: bash scripts/gpu_check.sh OUT.json" >&2
    exit 2
fi
out=$1
python=${PYTHON:-}
if [ -z "$python" ]; then
    if [ -x "$root/.venv/bin/python" ]; then python=$root/.venv/bin/python; else python=python3; fi
fi
if ! "$python" -c "import optuna, sqlalchemy, pydantic" 2>/dev/null; then
    if ! compgen -G "$root/.whl/*.whl" >/dev/null; then
        echo "error: optuna, sqlalchemy or pydantic is missing and $root/.whl holds no wheels;" \
             "run 'bash scripts/gpu_wheels.sh' where pip works and carry .whl along" >&2
        exit 2
    fi
    site=$(mktemp -d /tmp/lsearch-site.XXXXXX)
    "$python" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir \
        --target "$site" "$root"/.whl/*.whl
    export PYTHONPATH="$site"
fi
# lsearch itself runs from this checkout (python -m lsearch): no install needed.
export PYTHONPATH="$root${PYTHONPATH:+:$PYTHONPATH}"
export PYTHONUNBUFFERED=1
exec "$python" "$root/scripts/gpu_check.py" "$out"
