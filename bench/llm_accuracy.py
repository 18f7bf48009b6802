"""llama.cpp's first-step logits against stitch's independent f64 reference.

The peer figure for stitch's accuracy test (crates/stitch-models/tests/llama.rs,
`first_step_logits_match_an_f64_reference`): the same prompt, the same GGUF
file, and the same reference (dequantized weights, f64, plain loops), which
that test writes as .npy when STITCH_REFERENCE_LOGITS names a file.

Usage (see bench/llm_accuracy.sh, which does all of it):
  python bench/llm_accuracy.py --model MODEL.gguf --reference ref.npy [--threads 2]

Prints max |Δ| / max |ref| and whether the top-5 ids agree, for llama.cpp's
prefill of the whole prompt and for prefill of all but the last token followed
by one decode step (the path that runs batch-1 products).
"""
import argparse
import json
import os

import numpy as np

PROMPT = "<|im_start|>user\nWhat is the capital of France?<|im_end|>\n<|im_start|>assistant\n"


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--model", required=True)
    p.add_argument("--reference", required=True)
    p.add_argument("--threads", type=int, default=2)
    a = p.parse_args()
    for what, path in (("model", a.model), ("reference", a.reference)):
        if not os.path.isfile(path):
            raise SystemExit(f"{what} file {path} does not exist")
    import llama_cpp

    try:
        ref = np.load(a.reference).astype(np.float64)
    except ValueError as e:
        raise SystemExit(f"reference {a.reference} is not a readable .npy file: {e}")
    if ref.ndim != 1 or ref.size == 0:
        raise SystemExit(f"reference {a.reference} must be a 1-D array of logits, got shape {ref.shape}")
    scale = np.abs(ref).max()
    llm = llama_cpp.Llama(model_path=a.model, n_ctx=256, n_batch=512, n_threads=a.threads,
                          n_threads_batch=a.threads, logits_all=True, verbose=False)
    ids = llm.tokenize(PROMPT.encode(), add_bos=False, special=True)

    def last_logits():
        return np.array(llm.eval_logits[-1], dtype=np.float64)

    out = {"llama_cpp": llama_cpp.__version__, "prompt_tokens": len(ids)}
    llm.reset()
    llm.eval(ids)
    runs = {"prefill": last_logits()}
    llm.reset()
    llm.eval(ids[:-1])
    llm.eval(ids[-1:])
    runs["prefill + decode"] = last_logits()
    top5 = lambda v: sorted(np.argsort(-v)[:5].tolist())
    for name, got in runs.items():
        if got.shape != ref.shape:
            raise SystemExit(f"{name}: llama.cpp gave {got.shape[0]} logits, the reference has {ref.shape[0]}")
        out[name] = {"max_abs_delta_over_max_ref": float(np.abs(got - ref).max() / scale),
                     "same_top5": top5(got) == top5(ref)}
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
