"""stitch's attention kernels vs PyTorch's on the same GPU, side by side.

Usage (on a CUDA machine with PyTorch): python3 bench/gpu_attention.py STITCH_BENCH [--iters N]

For each shape it runs `stitch-bench gpu-attention` (one sdpa on stitch's CUDA
backend over device-resident inputs; its own process) and
torch.nn.functional.scaled_dot_product_attention on device tensors of the same
shape and dtype with each PyTorch backend that accepts it (FlashAttention-2,
cuDNN, memory-efficient), and prints median milliseconds and stitch / peer
ratios (lower is better for stitch). Outputs are not compared here: the
correctness of stitch's kernels against the CPU backend is the GPU test suite's
job (crates/stitch-cuda/tests/ops.rs).
"""
import json
import subprocess
import sys

import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel

SHAPES = [
    # dtype, b, h, hk, s, t, d, causal
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


def main():
    exe = sys.argv[1]
    iters = int(sys.argv[sys.argv.index("--iters") + 1]) if "--iters" in sys.argv else 30
    print(f"GPU: {torch.cuda.get_device_name(0)}, torch {torch.__version__}")
    print("| dtype | B | H/Hk | S | T | D | causal | stitch ms | " + " | ".join(f"{n} ms" for n, _ in BACKENDS) + " | stitch / best |")
    print("|---|---|---|---|---|---|---|---|" + "---|" * len(BACKENDS) + "---|")
    for shape in SHAPES:
        dt, b, h, hk, s, t, d, causal = shape
        out = subprocess.run([exe, "gpu-attention", dt, *map(str, (b, h, hk, s, t, d, causal, iters))],
                             capture_output=True, text=True)
        if out.returncode != 0:
            print(f"stitch failed on {shape}: {out.stderr.strip()}")
            continue
        ms = json.loads(out.stdout.strip().splitlines()[-1])["median_ms"]
        peers = [torch_ms(dt, b, h, hk, s, t, d, causal, be, iters) for _, be in BACKENDS]
        best = min((p for p in peers if p is not None), default=None)
        cells = " | ".join("n/a" if p is None else f"{p:.3f}" for p in peers)
        ratio = "n/a" if best is None else f"{ms / best:.2f}x"
        print(f"| {dt} | {b} | {h}/{hk} | {s} | {t} | {d} | {causal} | {ms:.3f} | {cells} | {ratio} |")


if __name__ == "__main__":
    main()
