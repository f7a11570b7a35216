#!/usr/bin/env bash
# Download, here, the wheels that scripts/gpu_check.sh needs on a GPU machine without network:
# lsearch's dependencies that such a machine lacks (it has torch, numpy, scipy, scikit-learn,
# typer and rich), for Python 3.12 on x86-64 Linux, into .whl/ (ignored by git; at most 64 MiB).
#   bash scripts/gpu_wheels.sh [PYTHON_VERSION]     (default 3.12)
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
version=${1:-3.12}
python=${PYTHON:-python3}
mkdir -p "$root/.whl"
# optuna and its needs, and lsearch's study-file validation; versions as this checkout's
# pyproject.toml allows. plotly and optuna-dashboard are left out: the check draws no report.
packages=(optuna alembic sqlalchemy greenlet mako colorlog pydantic pydantic-core
          annotated-types typing-inspection typing-extensions)
platforms=()
for n in 17 27 28 34; do platforms+=(--platform "manylinux_2_${n}_x86_64"); done
platforms+=(--platform manylinux2014_x86_64 --platform manylinux1_x86_64)
"$python" -m pip download --quiet --no-deps --only-binary=:all: --python-version "$version" \
    --implementation cp "${platforms[@]}" -d "$root/.whl" "${packages[@]}"
du -sh "$root/.whl"
