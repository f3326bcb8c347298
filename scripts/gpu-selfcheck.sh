#!/usr/bin/env bash
# gpu-selfcheck: gpumgr's real daemon on this host's NVIDIA card, engines holding real memory.
#
#   scripts/gpu-selfcheck.sh [OUTDIR]      (default OUTDIR: ./gpu-selfcheck-out)
#
# Needs gpumgr's dependencies and torch with CUDA importable by $PYTHON (default python3); no
# model weights, no network. Runs `gpumgr gpus --json`, `gpumgr doctor --json`, then
# `gpumgr daemon` (real NVML) with gpumgr's simulated vLLM in CUDA mode (GPUMGR_SIM_CUDA=1) as
# the engine, and prints one table of expected against observed (also OUTDIR/summary.json).
# SELFCHECK_PROVIDERS=1|2 (default 2). Exit 0 when every row passes. See docs/gpu-check.md.
set -uo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PYTHON="${PYTHON:-python3}"
export PYTHON PYTHONPATH="$ROOT/daemon${PYTHONPATH:+:$PYTHONPATH}"
exec "$PYTHON" "$ROOT/scripts/gpu_selfcheck.py" "${1:-./gpu-selfcheck-out}"
