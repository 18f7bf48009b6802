#!/usr/bin/env bash
# Rebuilds the tiny GGUF test files and their llama.cpp reference
# (crates/stitch-models/tests/data/tiny/): see scripts/tiny-gguf-models.py.
#
# Usage: scripts/tiny-gguf-models.sh
# Needs PyPI (pinned packages) and llama-cpp-python from scripts/llama-cpp-venv.sh.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
out="$root/crates/stitch-models/tests/data/tiny"
venv="$root/target/gguf-venv"
work="$root/target/tiny-gguf"
if ! [ -x "$venv/bin/python" ]; then
    python3 -m venv "$venv"
    "$venv/bin/pip" install --quiet gguf==0.17.1 sentencepiece==0.2.0 protobuf==5.29.3 numpy==2.2.6
fi
mkdir -p "$work"
# Mistral's v3 SentencePiece model (Apache-2.0), shipped inside the mistral-common wheel.
wheel="$work/mistral_common-1.5.4-py3-none-any.whl"
[ -f "$wheel" ] || "$venv/bin/pip" download --quiet --no-deps mistral-common==1.5.4 -d "$work"
model="$work/mistral_instruct_tokenizer_240323.model.v3"
"$venv/bin/python" -c "import sys, zipfile; open(sys.argv[2], 'wb').write(zipfile.ZipFile(sys.argv[1]).read('mistral_common/data/mistral_instruct_tokenizer_240323.model.v3'))" "$wheel" "$model"
"$venv/bin/python" "$root/scripts/tiny-gguf-models.py" build "$model" "$out"
llama_python="$("$root/scripts/llama-cpp-venv.sh" | tail -n 1)"
"$llama_python" "$root/scripts/tiny-gguf-models.py" reference "$out"
ls -l "$out"
