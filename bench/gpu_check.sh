#!/usr/bin/env bash
# One-shot GPU check of rankcal on a borrowed CUDA machine; bench/gpu_check.py does the work.
#
# Usage, from anywhere: bench/gpu_check.sh [gpu_check.py flags, e.g. --epochs 2]
# RANKCAL_GPU_SCRIPT=bench/gpu_study.py bench/gpu_check.sh [its flags] runs that script instead
# (a study's rows on the GPU), with the same set-up, data and report folder.
# Defaults: data from .gpu_data/fashion-mnist (the four .gz IDX files), report into $OUT (the
# device's output folder) or ./gpu-check-out: gpu_check.json, summary.md and this run's log,
# gpu_check.log. $PYTHON overrides the interpreter (default python3). Exits with the check's code.
#
# The library parses params with pydantic, which a bare CUDA image may lack: run
# `bench/gpu_check.sh --fetch-wheels` where pip reaches an index (it downloads the lock's pydantic
# wheels for CPython 3.12 into .gpu_data/wheels); on the GPU machine the script installs them
# into a scratch folder when `import pydantic` fails there.
set -euo pipefail

cd "$(dirname "$0")/.."
wheels="${GPU_WHEELS:-.gpu_data/wheels}"
if [ "${1:-}" = "--fetch-wheels" ]; then
    pins=$(grep -iE '^(pydantic|pydantic[-_]core|annotated[-_]types|typing[-_]inspection)==' \
        requirements.lock)
    # shellcheck disable=SC2086  # one argument per pin
    python3 -m pip download --quiet --no-deps --only-binary=:all: --python-version 3.12 \
        --implementation cp --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
        -d "$wheels" $pins
    ls "$wheels"
    exit 0
fi
out="${OUT:-gpu-check-out}"
mkdir -p "$out"
# The project is a plain copy on the device, not an installed package.
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
if ! "${PYTHON:-python3}" -c "import pydantic" 2>/dev/null; then
    if ! ls "$wheels"/*.whl >/dev/null 2>&1; then
        echo "gpu_check: pydantic is missing here and $wheels has no wheels:" \
            "run bench/gpu_check.sh --fetch-wheels where pip reaches an index" >&2
        exit 2
    fi
    "${PYTHON:-python3}" -m pip install --quiet --no-index --no-deps --no-compile \
        --no-cache-dir --upgrade --target /tmp/rankcal-site "$wheels"/*.whl
    export PYTHONPATH="$PYTHONPATH:/tmp/rankcal-site"
fi
# Progress must reach the log as it happens, not when a buffer fills.
export PYTHONUNBUFFERED=1

# pipefail: the exit status is the check's, not tee's.
script="${RANKCAL_GPU_SCRIPT:-bench/gpu_check.py}"
"${PYTHON:-python3}" "$script" --fashion-mnist .gpu_data/fashion-mnist --out "$out" "$@" \
    2>&1 | tee "$out/$(basename "$script" .py).log"
