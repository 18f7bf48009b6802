"""stitch vs ONNX Runtime on all-MiniLM-L6-v2 (int8), side by side (see bench/onnx.sh).

Two cases, both on the CPU with 2 threads on each side:
  batch 1:  one sequence of 128 tokens, no padding;
  batch 16: random lengths 32..128 per sequence, padded to 128 with the
            attention mask zero on the padding.
Each iteration gets fresh seeded random token ids. The inputs of every
iteration are written once; stitch (stitch-bench onnx, its own process) and
onnxruntime (this process: intra-op 2 threads, inter-op 1, ORT_ENABLE_ALL) run
the same ones after a warm-up. Outputs of the first and last iteration are
cross-checked (max|stitch - ort| / max|ort|). Prints median latencies and the
ratio stitch / ORT (below 1.0 means stitch is faster).
"""
import argparse
import json
import os
import subprocess
import sys
import tempfile

import numpy as np


def make_inputs(batch, seq, iters, seed, vary):
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(iters):
        ids = rng.integers(1000, 30000, size=(batch, seq), dtype=np.int64)
        ids[:, 0] = 101  # [CLS]
        mask = np.ones((batch, seq), dtype=np.int64)
        if vary:
            lengths = rng.integers(32, seq + 1, size=batch)
            for b, n in enumerate(lengths):
                ids[b, n - 1] = 102  # [SEP]
                ids[b, n:] = 0
                mask[b, n:] = 0
        else:
            ids[:, -1] = 102
        out.append({"input_ids": ids, "attention_mask": mask, "token_type_ids": np.zeros_like(ids)})
    return out


def ort_side(model, inputs, threads):
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    sess = ort.InferenceSession(model, so, providers=["CPUExecutionProvider"])
    for _ in range(3):
        sess.run(None, inputs[0])
    import time

    times, outs = [], {}
    for i, feed in enumerate(inputs):
        t0 = time.perf_counter()
        o = sess.run(None, feed)
        times.append((time.perf_counter() - t0) * 1e3)
        if i == 0 or i == len(inputs) - 1:
            outs[i] = o[0]
    times.sort()
    return times[len(times) // 2], times[0], outs, ort.__version__


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--stitch-bench", required=True)
    ap.add_argument("--model", required=True)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--iters", type=int, default=30)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    rows = []
    for name, batch, vary in [("batch 1, seq 128", 1, False), ("batch 16, seq 32-128 (mask)", 16, True)]:
        inputs = make_inputs(batch, 128, args.iters, args.seed, vary)
        with tempfile.TemporaryDirectory() as d:
            for i, feed in enumerate(inputs):
                np.savez(os.path.join(d, f"in_{i}.npz"), **feed)
            env = dict(os.environ, RAYON_NUM_THREADS=str(args.threads))
            res = subprocess.run([args.stitch_bench, "onnx", args.model, d, str(args.iters)],
                                 env=env, check=True, capture_output=True, text=True)
            st = json.loads(res.stdout.strip().splitlines()[-1])
            ort_med, ort_min, ort_outs, ort_version = ort_side(args.model, inputs, args.threads)
            worst = 0.0
            for i, ref in ort_outs.items():
                got = np.load(os.path.join(d, f"stitch_out_{i}.npy"))
                assert got.shape == ref.shape, (got.shape, ref.shape)
                worst = max(worst, float(np.abs(got - ref).max() / np.abs(ref).max()))
        rows.append((name, st["median_ms"], ort_med, worst))
        print(f"{name}: stitch median {st['median_ms']:.2f} ms (min {st['min_ms']:.2f}), "
              f"onnxruntime {ort_version} median {ort_med:.2f} ms (min {ort_min:.2f}); "
              f"stitch/ORT = {st['median_ms'] / ort_med:.2f}x; max rel diff {worst:.1e}", flush=True)
        if worst > 1e-4:
            print(f"error: outputs differ by {worst:.2e} (> 1e-4)", file=sys.stderr)
            sys.exit(1)
    print("\n| case | stitch median (ms) | ONNX Runtime median (ms) | stitch / ORT | max rel diff |")
    print("|---|---|---|---|---|")
    for name, s, o, w in rows:
        print(f"| {name} | {s:.2f} | {o:.2f} | {s / o:.2f}x | {w:.1e} |")


if __name__ == "__main__":
    main()
