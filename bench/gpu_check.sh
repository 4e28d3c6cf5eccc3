#!/usr/bin/env bash
# Every GPU path of curate in one run (issue 12): score img/s for ViT-B-32 and ViT-L-14
# (random weights, fp16; decode exact | fast | gpu) beside the model-only rate, FAISS k-means
# 1M x 512 k=1,000 GPU vs CPU, and the prune pipeline with k-means on GPU workers.
# Why a script: GPUs are lent rarely and briefly; this is the one check to run then.
# Offline, <= 8 minutes on one H100/H200; the table goes to stdout and to $1
# (default bench/gpu_check.md) for bench/RESULTS.md. Without a GPU: one line, exit 0.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv/bin/python}
[ -x "$PY" ] || PY=python3
export HF_HUB_OFFLINE=1 NO_ALBUMENTATIONS_UPDATE=1 WANDB_MODE=disabled RAY_AUTH_MODE=disabled
if ! "$PY" -c 'import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)' 2>/dev/null
then
    echo "gpu_check: no GPU on this machine (torch.cuda.is_available() is false); nothing run"
    exit 0
fi
# a hard stop at 8 minutes; the Markdown file keeps the parts finished by then
exec timeout --signal=INT 480 "$PY" bench/gpu_check.py --out "${1:-bench/gpu_check.md}"
