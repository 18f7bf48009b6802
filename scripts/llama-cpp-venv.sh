#!/usr/bin/env bash
# Builds llama-cpp-python (llama.cpp's Python bindings, from PyPI's source
# distribution, compiled natively for this CPU) into a virtual environment under
# target/, for the reference token ids and the llama.cpp benchmark.
#
# Usage: scripts/llama-cpp-venv.sh        prints the venv's python on its last line
# Idempotent: does nothing when the venv already imports llama_cpp.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
venv="${LLAMA_CPP_VENV:-$root/target/llama-cpp-venv}"
version="${LLAMA_CPP_VERSION:-0.3.16}"
if [ -x "$venv/bin/python" ] && "$venv/bin/python" -c "import llama_cpp" 2>/dev/null; then
    echo "$venv/bin/python"
    exit 0
fi
python3 -m venv "$venv"
"$venv/bin/pip" install --quiet --upgrade pip
"$venv/bin/pip" install --quiet cmake ninja scikit-build-core numpy
# A native build (GGML_NATIVE) uses this CPU's AVX-512 where it has it.
CMAKE_ARGS="-DGGML_NATIVE=ON -DLLAMA_CURL=OFF" CMAKE_BUILD_PARALLEL_LEVEL="${JOBS:-2}" \
    "$venv/bin/pip" install --no-build-isolation --no-cache-dir "llama-cpp-python==$version" >&2
"$venv/bin/python" -c "import llama_cpp; print('llama_cpp', llama_cpp.__version__)" >&2
echo "$venv/bin/python"
