"""stitch's attention kernels vs PyTorch's on the same GPU, side by side.

Usage (on a CUDA machine with PyTorch): python3 bench/gpu_attention.py STITCH_BENCH [--iters N]

For each shape it runs `stitch-bench gpu-attention` (one sdpa on stitch's CUDA
backend over device-resident inputs; its own process) three times for 16-bit
prefill shapes: with STITCH_CUDA_ATTENTION=own (stitch's st_flash_* kernel),
=cudnn (cuDNN's fused attention through stitch's backend-API graph) and =auto
(what stitch runs by default: the faster of the two, timed once per shape),
and
torch.nn.functional.scaled_dot_product_attention on device tensors of the same
shape and dtype with each PyTorch backend that accepts it (FlashAttention-2,
cuDNN, memory-efficient), and prints median milliseconds and stitch / peer
ratios (lower is better for stitch). Outputs are not compared here: the
correctness of stitch's kernels against the CPU backend is the GPU test suite's
job (crates/stitch-cuda/tests/ops.rs).
"""
import json
import os
import subprocess
import sys

import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel

SHAPES = [
    # dtype, b, h, hk, s, t, d, causal
    ("f16", 1, 9, 3, 128, 128, 64, 1),  # a short prompt, small model
    ("bf16", 1, 32, 8, 512, 512, 128, 1),
    ("f16", 4, 16, 16, 1024, 1024, 64, 1),
    ("f16", 4, 16, 16, 1024, 1024, 128, 1),
    ("bf16", 4, 16, 16, 1024, 1024, 128, 0),
    ("bf16", 2, 32, 8, 2048, 2048, 128, 1),
    ("f16", 1, 32, 8, 1, 4096, 128, 0),  # decode: one query over a long cache (split-KV)
    ("f32", 1, 9, 3, 1, 2048, 64, 0),  # the default model's decode shape, longer cache
]
TORCH_DT = {"f16": torch.float16, "bf16": torch.bfloat16, "f32": torch.float32}
BACKENDS = [("flash", SDPBackend.FLASH_ATTENTION), ("cudnn", SDPBackend.CUDNN_ATTENTION),
            ("efficient", SDPBackend.EFFICIENT_ATTENTION)]


def torch_ms(dt, b, h, hk, s, t, d, causal, backend, iters):
    g = torch.Generator(device="cuda").manual_seed(7)
    q = torch.rand(b, h, s, d, device="cuda", generator=g).to(TORCH_DT[dt]) * 2 - 1
    k = torch.rand(b, hk, t, d, device="cuda", generator=g).to(TORCH_DT[dt]) * 2 - 1
    v = torch.rand(b, hk, t, d, device="cuda", generator=g).to(TORCH_DT[dt]) * 2 - 1
    if hk != h:
        k = k.repeat_interleave(h // hk, dim=1)
        v = v.repeat_interleave(h // hk, dim=1)
    # PyTorch's is_causal is top-left aligned; stitch's (and llama.cpp's) bottom-right.
    # They agree when s == t, the only causal shapes used here.
    try:
        with sdpa_kernel(backend):
            for _ in range(3):
                F.scaled_dot_product_attention(q, k, v, is_causal=bool(causal))
            torch.cuda.synchronize()
            times = []
            for _ in range(iters):
                a, z = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                a.record()
                F.scaled_dot_product_attention(q, k, v, is_causal=bool(causal))
                z.record()
                torch.cuda.synchronize()
                times.append(a.elapsed_time(z))
    except RuntimeError:
        return None
    times.sort()
    return times[len(times) // 2]


def stitch_ms(exe, shape, iters, mode):
    env = dict(os.environ, STITCH_CUDA_ATTENTION=mode)
    out = subprocess.run([exe, "gpu-attention", shape[0], *map(str, (*shape[1:], iters))],
                         capture_output=True, text=True, env=env)
    if out.returncode != 0:
        print(f"stitch ({mode}) failed on {shape}: {out.stderr.strip()}")
        return None, None, None
    res = json.loads(out.stdout.strip().splitlines()[-1])
    ran = [k for k, v in res["launches"].items() if v > 0]
    return res["median_ms"], "+".join(ran), res["cudnn"]


def main():
    exe = sys.argv[1]
    iters = int(sys.argv[sys.argv.index("--iters") + 1]) if "--iters" in sys.argv else 30
    print(f"GPU: {torch.cuda.get_device_name(0)}, torch {torch.__version__}")
    modes = ["own", "cudnn", "auto"]
    print("| dtype | B | H/Hk | S | T | D | causal | stitch own ms | stitch cuDNN ms | stitch auto ms (ran) | "
          + " | ".join(f"torch {n} ms" for n, _ in BACKENDS) + " | stitch auto / best torch |")
    print("|---|---|---|---|---|---|---|---|---|---|" + "---|" * len(BACKENDS) + "---|")
    notes = set()
    for shape in SHAPES:
        dt, b, h, hk, s, t, d, causal = shape
        prefill = dt != "f32" and s > 16 and d in (64, 128)
        res = {m: stitch_ms(exe, shape, iters, m) for m in (modes if prefill else ["auto"])}
        for r in res.values():
            if r[0] is not None:
                notes.add(r[2])
        cell = lambda m: "–" if m not in res or res[m][0] is None else f"{res[m][0]:.3f}"
        auto = res["auto"]
        auto_cell = "n/a" if auto[0] is None else f"{auto[0]:.3f} ({auto[1]})"
        peers = [torch_ms(dt, b, h, hk, s, t, d, causal, be, iters) for _, be in BACKENDS]
        best = min((p for p in peers if p is not None), default=None)
        cells = " | ".join("n/a" if p is None else f"{p:.3f}" for p in peers)
        ratio = "n/a" if best is None or auto[0] is None else f"{auto[0] / best:.2f}x"
        print(f"| {dt} | {b} | {h}/{hk} | {s} | {t} | {d} | {causal} | {cell('own')} | {cell('cudnn')} | "
              f"{auto_cell} | {cells} | {ratio} |")
    for n in sorted(notes):
        print(f"stitch: {n}")


if __name__ == "__main__":
    main()
