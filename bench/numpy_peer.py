#!/usr/bin/env python3
"""Side-by-side benchmark of stitch against numpy (driver; run it via bench/run.sh).

In one run, on the same seeded inputs:
  * f32 matmul at 512, 1024 and 2048 (numpy: np.matmul(a, b, out=c) on OpenBLAS);
  * the chain y = tanh(x*a + b) * sigmoid(x) - 0.5*x on 64 Mi f32 elements
    (256 MiB per array, several times the last-level cache), numpy computing it
    with out= buffers (no temporaries), stitch as one compiled graph (fused).

The driver writes the inputs as .npy files into a temporary directory, times
numpy, runs the stitch-bench binary on the same files (it times itself with the
same rule and writes its outputs), checks the stitch outputs against numpy's,
and prints a Markdown report. Times are the median of all timed runs (after
0.5 s of warm-up runs on each side), never the best; min and max are shown as the spread.

Threads: run.sh exports RAYON_NUM_THREADS, OPENBLAS_NUM_THREADS,
OMP_NUM_THREADS and MKL_NUM_THREADS (2 by default). numpy's ufuncs are
single-threaded whatever these say; its matmul uses OpenBLAS's threads.
"""

import argparse
import datetime
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time

import numpy as np

SEED = 20261123
CHAIN_A = 0.75
CHAIN_B = -0.25


def sh(cmd):
    try:
        return subprocess.run(cmd, capture_output=True, text=True, check=False).stdout
    except OSError:
        return ""


def machine_info():
    lscpu = {}
    for line in sh(["lscpu"]).splitlines():
        if ":" in line:
            k, v = line.split(":", 1)
            lscpu[k.strip()] = v.strip()
    keys = ["Model name", "CPU(s)", "Thread(s) per core", "Core(s) per socket",
            "L1d cache", "L2 cache", "L3 cache"]
    cpu = ", ".join(f"{k}: {lscpu[k]}" for k in keys if k in lscpu)
    flags = lscpu.get("Flags", "").split()
    simd = " ".join(f for f in ["avx2", "fma", "avx512f"] if f in flags)
    mem = ""
    try:
        with open("/proc/meminfo") as f:
            mem = f.readline().split(":", 1)[1].strip()
    except OSError:
        pass
    return {"cpu": cpu, "simd": simd, "mem": mem, "kernel": platform.release()}


def load_text():
    try:
        return "load average %.2f %.2f %.2f" % os.getloadavg()
    except OSError:
        return "load average unknown"


# Both sides warm up the same way: repeated calls for at least this long (and at
# least one call). The first ~100 ms of a busy process run markedly slower on
# the machines we measure on (clock ramp-up), which a single warm-up call of a
# millisecond-long kernel does not cover. stitch-bench uses the same rule.
WARMUP_S = 0.5


def timed(fn, runs):
    """Warm-up calls for WARMUP_S seconds, then `runs` timed calls; returns the times in seconds."""
    t_end = time.perf_counter() + WARMUP_S
    fn()
    while time.perf_counter() < t_end:
        fn()
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return times


def stats(times):
    return {"median": float(np.median(times)), "min": float(min(times)),
            "max": float(max(times)), "runs": len(times)}


def run_stitch(binary, args):
    out = subprocess.run([binary] + args, capture_output=True, text=True, check=False)
    if out.returncode != 0:
        sys.exit(f"stitch-bench {' '.join(args)} failed ({out.returncode}):\n{out.stderr}")
    lines = [l for l in out.stdout.splitlines() if l.startswith("{")]
    return json.loads(lines[-1])


def bench_matmul(binary, tmp, n, runs, rng):
    a = rng.standard_normal((n, n), dtype=np.float32)
    b = rng.standard_normal((n, n), dtype=np.float32)
    np.save(os.path.join(tmp, f"mm_a_{n}.npy"), a)
    np.save(os.path.join(tmp, f"mm_b_{n}.npy"), b)
    c = np.empty((n, n), dtype=np.float32)
    np_times = timed(lambda: np.matmul(a, b, out=c), runs)
    st = run_stitch(binary, ["matmul", tmp, str(n), str(runs)])
    cs = np.load(os.path.join(tmp, f"mm_c_{n}_stitch.npy"))
    # Both are f32 products with different summation orders: compare relative to
    # the largest entry (entries near zero have no meaningful relative error).
    err = float(np.max(np.abs(cs.astype(np.float64) - c)) / np.max(np.abs(c)))
    ok = cs.shape == c.shape and cs.dtype == np.float32 and err <= 1e-5
    flops = 2.0 * n ** 3
    return {"n": n, "numpy": stats(np_times), "stitch": stats(st["times"]),
            "gflop": flops / 1e9, "err": err, "ok": ok}


def chain_numpy(x, a, b, y, t, s):
    """y = tanh(x*a + b) * sigmoid(x) - 0.5*x with out= buffers (t, s scratch)."""
    np.multiply(x, a, out=t)
    np.add(t, b, out=t)
    np.tanh(t, out=t)
    np.negative(x, out=s)
    np.exp(s, out=s)
    np.add(s, np.float32(1.0), out=s)
    np.divide(t, s, out=t)  # tanh(..) * sigmoid(x) = tanh(..) / (1 + exp(-x))
    np.multiply(x, np.float32(0.5), out=s)
    np.subtract(t, s, out=y)


def chain_f64(x, a, b):
    x = x.astype(np.float64)
    return np.tanh(x * float(a) + float(b)) / (1.0 + np.exp(-x)) - 0.5 * x


def bench_chain(binary, tmp, elems, runs, unfused_runs, rng):
    # Values up to about ±15: tanh and sigmoid saturate on both sides, and no
    # exp overflows (which would only add numpy warnings).
    x = rng.standard_normal(elems, dtype=np.float32)
    x *= np.float32(3.0)
    a, b = np.float32(CHAIN_A), np.float32(CHAIN_B)
    np.save(os.path.join(tmp, "chain_x.npy"), x)
    np.save(os.path.join(tmp, "chain_a.npy"), np.array(a, dtype=np.float32))
    np.save(os.path.join(tmp, "chain_b.npy"), np.array(b, dtype=np.float32))
    y = np.empty_like(x)
    t = np.empty_like(x)
    s = np.empty_like(x)
    np_times = timed(lambda: chain_numpy(x, a, b, y, t, s), runs)
    del t, s
    st = run_stitch(binary, ["chain", tmp, str(runs)])
    ys = np.load(os.path.join(tmp, "chain_y_stitch.npy"))
    res = {"elems": elems, "mib": x.nbytes / 2 ** 20, "numpy": stats(np_times),
           "stitch": stats(st["times"]), "regions": st["regions"], "steps": st["steps"]}
    # Check: every element within allclose(rtol=1e-5, atol=1e-6) of numpy, and
    # both against an f64 evaluation of the same f32 inputs on a 4 Mi sample.
    ok_shape = ys.shape == y.shape and ys.dtype == np.float32
    diff = np.abs(ys - y)
    res["max_abs_diff"] = float(diff.max()) if ok_shape else float("inf")
    res["allclose"] = bool(ok_shape and np.allclose(ys, y, rtol=1e-5, atol=1e-6))
    sample = slice(0, min(elems, 1 << 22))
    ref = chain_f64(x[sample], a, b)
    scale = np.maximum(np.abs(ref), 1.0)
    res["err_f64_stitch"] = float(np.max(np.abs(ys[sample] - ref) / scale))
    res["err_f64_numpy"] = float(np.max(np.abs(y[sample] - ref) / scale))
    res["ok"] = res["allclose"] and res["err_f64_stitch"] <= 1e-5
    if unfused_runs > 0:
        su = run_stitch(binary, ["chain", tmp, str(unfused_runs), "--unfused"])
        yu = np.load(os.path.join(tmp, "chain_y_stitch.npy"))
        res["unfused"] = stats(su["times"])
        res["unfused_steps"] = su["steps"]
        res["unfused_ok"] = bool(np.allclose(yu, y, rtol=1e-5, atol=1e-6))
    return res


def fmt_ms(s):
    return f"{s['median'] * 1e3:.1f} ms ({s['min'] * 1e3:.1f}–{s['max'] * 1e3:.1f})"


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--stitch-bench", required=True, help="path of the stitch-bench binary")
    p.add_argument("--sizes", default="512,1024,2048")
    p.add_argument("--mm-runs", type=int, default=10)
    p.add_argument("--chain-elems", type=int, default=64 * 2 ** 20)
    p.add_argument("--chain-runs", type=int, default=9)
    p.add_argument("--unfused-runs", type=int, default=3,
                   help="also time stitch with fusion off (0: skip)")
    p.add_argument("--json", help="also write the raw results here")
    args = p.parse_args()

    info = machine_info()
    threads = {k: os.environ.get(k, "unset") for k in
               ["RAYON_NUM_THREADS", "OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"]}
    load_before = load_text()
    rng = np.random.default_rng(SEED)
    tmp = tempfile.mkdtemp(prefix="stitch-bench-")
    t_start = time.time()
    try:
        mm = [bench_matmul(args.stitch_bench, tmp, int(n), args.mm_runs, rng)
              for n in args.sizes.split(",") if n]
        chain = bench_chain(args.stitch_bench, tmp, args.chain_elems, args.chain_runs,
                            args.unfused_runs, rng)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    load_after = load_text()

    out = []
    w = out.append
    w(f"## stitch vs numpy — {datetime.date.today().isoformat()}")
    w("")
    w(f"- Machine: {info['cpu']}; SIMD: {info['simd']}; memory {info['mem']}; Linux {info['kernel']}")
    w(f"- numpy {np.__version__} (BLAS: {blas_name()}), Python {platform.python_version()}")
    w("- Threads: " + ", ".join(f"{k}={v}" for k, v in threads.items())
      + " (numpy ufuncs are single-threaded)")
    w(f"- Load: {load_before} before, {load_after} after; wall time {time.time() - t_start:.0f} s")
    w(f"- Times: median of the timed runs after {WARMUP_S:.1f} s of warm-up calls on each side (min–max in parentheses)")
    w("")
    w("### f32 matmul (C = A·B, square, A and B standard normal)")
    w("")
    w("| n | runs | numpy | numpy GFLOPS | stitch | stitch GFLOPS | stitch/numpy speed | max |Δ| / max |C| | check |")
    w("|---|---|---|---|---|---|---|---|---|")
    for r in mm:
        g_np = r["gflop"] / r["numpy"]["median"]
        g_st = r["gflop"] / r["stitch"]["median"]
        w(f"| {r['n']} | {r['numpy']['runs']} | {fmt_ms(r['numpy'])} | {g_np:.1f} | {fmt_ms(r['stitch'])} | "
          f"{g_st:.1f} | **{g_st / g_np:.2f}x** | {r['err']:.1e} | {'ok' if r['ok'] else 'FAIL'} |")
    w("")
    c = chain
    gb = 2 * c["elems"] * 4 / 1e9  # x read once, y written once
    w(f"### Chain y = tanh(x·{CHAIN_A} + {CHAIN_B}) · sigmoid(x) − 0.5·x, f32, "
      f"{c['elems']} elements ({c['mib']:.0f} MiB per array), x = 3·N(0,1)")
    w("")
    w("GB/s counts the useful traffic, 8 bytes per element (x read, y written).")
    w("")
    w("| implementation | runs | time | GB/s | speed vs numpy |")
    w("|---|---|---|---|---|")
    w(f"| numpy, out= buffers (8 ufunc passes) | {c['numpy']['runs']} | {fmt_ms(c['numpy'])} | "
      f"{gb / c['numpy']['median']:.2f} | 1.00x |")
    w(f"| stitch, compiled ({c['regions']} fused region, {c['steps']} steps) | {c['stitch']['runs']} | "
      f"{fmt_ms(c['stitch'])} | {gb / c['stitch']['median']:.2f} | "
      f"**{c['numpy']['median'] / c['stitch']['median']:.2f}x** |")
    if "unfused" in c:
        w(f"| stitch, fusion off ({c['unfused_steps']} steps) | {c['unfused']['runs']} | "
          f"{fmt_ms(c['unfused'])} | {gb / c['unfused']['median']:.2f} | "
          f"{c['numpy']['median'] / c['unfused']['median']:.2f}x |")
    w("")
    w(f"Check: stitch vs numpy max |Δ| = {c['max_abs_diff']:.2e}, allclose(rtol=1e-5, atol=1e-6): "
      f"{'yes' if c['allclose'] else 'NO'}; error vs an f64 evaluation (first {min(c['elems'], 1 << 22)} "
      f"elements, |Δ| / max(|y|, 1)): stitch {c['err_f64_stitch']:.1e}, numpy {c['err_f64_numpy']:.1e}"
      + ("" if "unfused" not in c else f"; unfused stitch allclose: {'yes' if c['unfused_ok'] else 'NO'}")
      + f" → {'ok' if c['ok'] else 'FAIL'}")
    w("")
    mm_ok = all(r["gflop"] / r["stitch"]["median"] >= 0.9 * r["gflop"] / r["numpy"]["median"] for r in mm)
    chain_ratio = c["numpy"]["median"] / c["stitch"]["median"]
    w("### Targets")
    w("")
    w(f"- matmul ≥ 0.9x numpy at every size: {'met' if mm_ok else 'NOT met'}")
    w(f"- fused chain ≥ 3x numpy: {'met' if chain_ratio >= 3.0 else 'NOT met'} ({chain_ratio:.2f}x)")
    w(f"- outputs match numpy: {'yes' if all(r['ok'] for r in mm) and c['ok'] else 'NO'}")
    print("\n".join(out))
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"machine": info, "threads": threads, "matmul": mm, "chain": chain,
                       "load_before": load_before, "load_after": load_after}, f, indent=1)
    if not (all(r["ok"] for r in mm) and c["ok"]):
        sys.exit(1)


def blas_name():
    try:
        cfg = np.show_config(mode="dicts")
        blas = cfg["Build Dependencies"]["blas"]
        return f"{blas.get('name', '?')} {blas.get('version', '')}".strip()
    except Exception:  # noqa: BLE001 - informational only
        return "unknown"


if __name__ == "__main__":
    main()
