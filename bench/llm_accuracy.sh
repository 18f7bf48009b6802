#!/usr/bin/env bash
# llama.cpp's first-step logit error on the default model against stitch's f64
# reference (the peer figure for stitch's accuracy test). Writes the reference
# through the test, then runs bench/llm_accuracy.py in the llama.cpp venv.
# Usage: bench/llm_accuracy.sh [--threads N]
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
python="$("$root/scripts/llama-cpp-venv.sh" | tail -1)"
ref="$(mktemp --suffix .npy)"
trap 'rm -f "$ref"' EXIT
(cd "$root" && STITCH_REFERENCE_LOGITS="$ref" cargo test --release -q -p stitch-models --test llama \
    first_step_logits_match_an_f64_reference -- --nocapture 2>&1 | grep "max |Δ|")
model="${STITCH_CACHE_DIR:-$HOME/.cache/stitch}/models/SmolLM2-135M-Instruct.Q4_1.gguf"
"$python" -c 'import numpy' 2>/dev/null || "$python" -m pip install -q numpy
exec "$python" "$root/bench/llm_accuracy.py" --model "$model" --reference "$ref" "$@"
