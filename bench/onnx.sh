#!/usr/bin/env bash
# stitch vs ONNX Runtime on all-MiniLM-L6-v2 int8, side by side, 2 threads each:
# batch 1 (seq 128) and batch 16 (random lengths 32-128, padded, with the mask).
#
# Usage: bench/onnx.sh [onnx_peer.py options: --threads 2 --iters 30 --seed 0]
# Installs onnxruntime and numpy from PyPI into target/onnx-bench-venv on first use.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
venv="$root/target/onnx-bench-venv"
if ! "$venv/bin/python" -c "import onnxruntime, numpy" 2>/dev/null; then
    python3 -m venv "$venv"
    "$venv/bin/pip" install --quiet "onnxruntime==1.32.0" "numpy<3"
fi
(cd "$root" && cargo build --release --quiet -p stitch-bench)
target_dir="$(cd "$root" && cargo metadata --format-version 1 --no-deps \
    | "$venv/bin/python" -c 'import json, sys; print(json.load(sys.stdin)["target_directory"])')"
bench="$target_dir/release/stitch-bench"
model="$("$bench" minilm-path)"
exec "$venv/bin/python" "$root/bench/onnx_peer.py" --stitch-bench "$bench" --model "$model" "$@"
