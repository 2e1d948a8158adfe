#!/usr/bin/env bash
# One GPU, a few minutes: where the implementation stands (bench/gpu_check.py says what it measures).
#
#     bash bench/gpu_check.sh OUT_DIR [--smoke] [more gpu_check.py options, e.g. --parts sit_xl1,fae_ia]
#
# Writes OUT_DIR/gpu_check.json and OUT_DIR/gpu_check.md. Meant to finish within 8 minutes on one
# H100/H200 (its parts share a 440 s deadline; GPU_CHECK_TIMEOUT, default 510 s counted from this
# script's start, set-up included, stops the whole run: what was measured by then is in OUT_DIR).
# --smoke: the same code paths on the CPU at tiny sizes (tests/test_gpu_check.py).
#
# On a machine without our packages and without PyPI (the project's lent H200), first run
# `bash bench/gpu_wheels.sh` where pip works; it fills .whl/ (wheels + a Fashion-MNIST slice for
# the demo), which this script installs when `fae` is not importable yet. docs/performance.md has
# the one-call command line.
set -uo pipefail
cd "$(dirname "$0")/.."
if [ $# -lt 1 ]; then
    echo "usage: bash bench/gpu_check.sh OUT_DIR [--smoke] [gpu_check.py options]" >&2
    exit 2
fi
OUT_DIR=$1
shift
PY=${PYTHON:-python3}

# Wheels carried in .whl/ go to /tmp/site (on PYTHONPATH), then our package, editable and without
# dependencies; if the editable install cannot build offline, src/ goes on PYTHONPATH instead.
install_carried_wheels() {
    if [ -d .whl ] && compgen -G ".whl/*.whl" > /dev/null; then
        "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
            --target /tmp/site .whl/*.whl || return 1
        export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
    fi
    if [ -d .whl/fashion-mnist ] && [ -z "${FAE_FASHION_MNIST:-}" ]; then
        export FAE_FASHION_MNIST=$PWD/.whl/fashion-mnist  # the demo's data (a slice: see gpu_wheels.sh)
    fi
    if ! "$PY" -m pip install -q --no-index --no-deps --no-build-isolation -e . > /tmp/gpu_check_install.log 2>&1; then
        echo "gpu_check: editable install failed (see /tmp/gpu_check_install.log); using src/ on PYTHONPATH" >&2
        export PYTHONPATH=$PWD/src${PYTHONPATH:+:$PYTHONPATH}
    fi
}

if ! "$PY" -c "import fae, diffusers" > /dev/null 2>&1; then
    install_carried_wheels || echo "gpu_check: installing the carried wheels failed; parts that need them will say so" >&2
fi
"$PY" -c "import torch; print(f'torch {torch.__version__}, CUDA available: {torch.cuda.is_available()}', flush=True)"
export PYTHONUNBUFFERED=1
timeout "$(( ${GPU_CHECK_TIMEOUT:-510} - SECONDS ))" "$PY" bench/gpu_check.py "$OUT_DIR" "$@"
