#!/usr/bin/env bash
# Benchmarks stitch against numpy side by side (see bench/numpy_peer.py):
# f32 matmul at 512/1024/2048 and the fused chain
# y = tanh(x*a + b) * sigmoid(x) - 0.5*x on 256 MiB of f32.
#
# Usage: bench/run.sh [driver options, e.g. --json results.json]
# THREADS (default 2) limits both sides. numpy is installed with pip into
# bench/.venv (git-ignored) on first use; PYTHON picks the interpreter for it.
set -euo pipefail

here="$(cd "$(dirname "$0")" && pwd)"
root="$(dirname "$here")"
threads="${THREADS:-2}"
venv="$here/.venv"

if [ ! -x "$venv/bin/python" ] || ! "$venv/bin/python" -c "import numpy" 2>/dev/null; then
    "${PYTHON:-python3}" -m venv "$venv"
    "$venv/bin/pip" install --quiet --upgrade pip
    "$venv/bin/pip" install --quiet numpy
fi

(cd "$root" && cargo build --release --quiet -p stitch-bench)
target_dir="$(cd "$root" && cargo metadata --format-version 1 --no-deps \
    | "$venv/bin/python" -c 'import json, sys; print(json.load(sys.stdin)["target_directory"])')"

export RAYON_NUM_THREADS="$threads" OPENBLAS_NUM_THREADS="$threads" \
    OMP_NUM_THREADS="$threads" MKL_NUM_THREADS="$threads"
exec "$venv/bin/python" "$here/numpy_peer.py" --stitch-bench "$target_dir/release/stitch-bench" "$@"
