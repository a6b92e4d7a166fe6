#!/usr/bin/env bash
# make gpu-check: on a GPU host, after `make setup`. Installs the GPU extras into the venv, builds the fp16 and int8 TensorRT
# engines of the default model, runs the gpu-marked tests and a short GPU benchmark; results in bench/results/gpu/.
# The whole run is held to 8 minutes; on a host without an NVIDIA GPU it stops at once and says why.
#
#     bench/gpu-check.sh [VENV]
set -euo pipefail
cd "$(dirname "$0")/.."

VENV=${1:-.venv}
PY=$VENV/bin/python
BUDGET_S=${GPU_CHECK_BUDGET_S:-480}
WORK=runs/gpu-check
OUT=bench/results/gpu

if ! "$PY" -m service.gpu; then  # names what is missing where there is no GPU
    echo "gpu-check: stopped: it needs a host with an NVIDIA GPU and its driver" >&2
    exit 2
fi

mkdir -p "$WORK" "$OUT"
: > "$WORK/steps.txt"

# Runs one step within what is left of the budget, and records how long it took.
step() {
    local name=$1 left=$((BUDGET_S - SECONDS)) started=$SECONDS status=0
    shift
    echo "== $name ($left s left of $BUDGET_S)"
    if ((left <= 0)); then
        echo "gpu-check: over its ${BUDGET_S} s budget before '$name'" >&2
        exit 1
    fi
    timeout "$left" "$@" || status=$?
    echo "$name: $((SECONDS - started)) s, exit $status" | tee -a "$WORK/steps.txt"
    if ((status == 124)); then
        echo "gpu-check: '$name' ran past the ${BUDGET_S} s budget" >&2
    fi
    return "$status"
}

# onnxruntime and onnxruntime-gpu are the same package in two builds: the CPU one goes before the GPU one comes.
install_gpu_extras() {
    "$PY" -m pip uninstall --yes --quiet onnxruntime
    "$PY" -m pip install --quiet -e '.[serve-gpu,tensorrt]'
}

step "install GPU extras" install_gpu_extras
rm -rf "$WORK/package"
cp -r models/default/package "$WORK/package"
step "build fp16 engine" "$PY" -m model_export build-engine --package "$WORK/package" --fp16 --batch 1:8:16
step "build int8 engine" "$PY" -m model_export build-engine --package "$WORK/package" --int8 --batch 1:8:16
tests=0
step "gpu tests" "$PY" -m pytest -q -p no:cacheprovider -m gpu tests || tests=$?
step "benchmark" "$PY" -m bench.gpu_check bench --package "$WORK/package" --out "$OUT" --steps "$WORK/steps.txt"
if ((tests != 0)); then
    echo "gpu-check: the gpu tests failed (exit $tests); the benchmark ran all the same: $OUT/gpu_check.md" >&2
    exit "$tests"
fi
echo "gpu-check: done in $SECONDS s: $OUT/gpu_check.md"
