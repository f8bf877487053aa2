#!/usr/bin/env bash
# One-shot GPU check of rankcal on a borrowed CUDA machine; bench/gpu_check.py does the work.
#
# Usage, from anywhere: bench/gpu_check.sh [gpu_check.py flags, e.g. --epochs 2]
# Defaults: data from .gpu_data/fashion-mnist (the four .gz IDX files), report into $OUT (the
# device's output folder) or ./gpu-check-out: gpu_check.json, summary.md and this run's log,
# gpu_check.log. $PYTHON overrides the interpreter (default python3). Exits with the check's code.
set -euo pipefail

cd "$(dirname "$0")/.."
out="${OUT:-gpu-check-out}"
mkdir -p "$out"
# The project is a plain copy on the device, not an installed package.
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
# Progress must reach the log as it happens, not when a buffer fills.
export PYTHONUNBUFFERED=1

# pipefail: the exit status is the check's, not tee's.
"${PYTHON:-python3}" bench/gpu_check.py --fashion-mnist .gpu_data/fashion-mnist --out "$out" "$@" \
    2>&1 | tee "$out/gpu_check.log"
