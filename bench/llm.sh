#!/usr/bin/env bash
# stitch vs llama.cpp on the default model (SmolLM2-135M-Instruct Q4_1), side by
# side: prompt processing of 128 tokens and decode of 128 tokens, 2 threads each.
#
# Usage: bench/llm.sh [llm_peer.py options, e.g. --threads 2 --ctx 512]
# Builds llama-cpp-python natively into target/llama-cpp-venv on first use (minutes).
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
python="$("$root/scripts/llama-cpp-venv.sh" | tail -1)"
(cd "$root" && cargo build --release --quiet -p stitch-bench -p stitch-cli)
target_dir="$(cd "$root" && cargo metadata --format-version 1 --no-deps \
    | "$python" -c 'import json, sys; print(json.load(sys.stdin)["target_directory"])')"
# Fetch (or find) the default model through stitch itself.
"$target_dir/release/stitch" generate --prompt "hi" --max-tokens 1 --temperature 0 >/dev/null 2>&1 || "$target_dir/release/stitch" generate --prompt "hi" --max-tokens 1 --temperature 0 >/dev/null
model="${STITCH_CACHE_DIR:-$HOME/.cache/stitch}/models/SmolLM2-135M-Instruct.Q4_1.gguf"
exec "$python" "$root/bench/llm_peer.py" --stitch-bench "$target_dir/release/stitch-bench" --model "$model" "$@"
