"""Reference token ids for the default model's tokenizer, from llama.cpp.

Usage: $(scripts/llama-cpp-venv.sh) scripts/tokenizer-reference.py MODEL.gguf OUT.json

Tokenizes fixed prompts with llama-cpp-python (vocab only, special tokens
parsed as llama.cpp's `parse_special` does, no BOS added) and writes
{"llama_cpp_python": version, "model_sha256": ..., "cases": [{"text": ..., "ids": [...]}]}.
crates/stitch-models/tests/llama.rs compares stitch's tokenizer with it.
"""
import hashlib
import json
import sys

import llama_cpp

PROMPTS = [
    "Hello world",
    "The capital of France is Paris.",
    "<|im_start|>user\nWhat is the capital of France?<|im_end|>\n<|im_start|>assistant\n",
    "  leading spaces and   runs   of spaces\tand\ttabs\n\nnewlines",
    "Numbers: 12345, 3.14159, 2026-11-23 and 1,000,000.",
    "Accents: café, naïve, Zürich, São Paulo; symbols: €100 ±5 °C",
    "Emoji: 🙂🚀👩‍💻 and CJK: 東京は日本の首都です。한국어 텍스트.",
    "def f(x):\n    return x**2  # square\n",
    "don't won't it's we're they've I'm you'll he'd",
    "<|endoftext|>special<|im_end|> in the middle",
]


def main():
    model, out = sys.argv[1], sys.argv[2]
    with open(model, "rb") as f:
        sha = hashlib.sha256(f.read()).hexdigest()
    llm = llama_cpp.Llama(model_path=model, vocab_only=True, verbose=False)
    cases = []
    for p in PROMPTS:
        ids = llm.tokenize(p.encode("utf-8"), add_bos=False, special=True)
        cases.append({"text": p, "ids": ids})
    with open(out, "w", encoding="utf-8") as f:
        json.dump({"llama_cpp_python": llama_cpp.__version__, "model_sha256": sha, "cases": cases}, f, ensure_ascii=False, indent=1)
        f.write("\n")


if __name__ == "__main__":
    main()
