#!/usr/bin/env bash
# Create RecBole's own benchmark environment at benchmarks/.recbole-venv (not part of the project).
#
# RecBole 1.2.1 needs numpy<2 (it uses np.float_ and friends) and runs on CPU torch; it is kept
# apart from the project's environment so neither pins the other. Its optional extras for
# hyper-parameter search (ray, hyperopt) and graph models (dgl, torch_geometric) are not
# installed: the benchmark imports only the config, data, model and trainer modules.
#
# Usage: bash benchmarks/recbole_env.sh [PYTHON]   (PYTHON defaults to python3; 3.9-3.11 work)
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
venv="$here/.recbole-venv"
python="${1:-python3}"

if [[ ! -x "$venv/bin/python" ]]; then
    "$python" -m venv "$venv"
fi
pip=("$venv/bin/python" -m pip install --quiet)
"${pip[@]}" "torch==2.13.0"
"${pip[@]}" "numpy<2" "scipy>=1.6" "pandas>=1.3,<2.3" "tqdm" "colorlog==4.7.2" "colorama==0.4.4" \
    "scikit-learn" "pyyaml" "tensorboard" "thop" "tabulate" "texttable" "psutil"
"${pip[@]}" --no-deps "recbole==1.2.1"
"$venv/bin/python" - <<'PY'
import numpy, torch
from recbole.config import Config  # noqa: F401  (fails here if a dependency is missing)
from recbole.model.sequential_recommender import SASRec  # noqa: F401
print(f"RecBole environment ready: torch {torch.__version__}, numpy {numpy.__version__}")
PY
