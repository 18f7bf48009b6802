"""stitch vs llama.cpp on the default model, side by side (see bench/llm.sh).

Runs, as separate processes with the same thread count: stitch-bench llm and
llama.cpp through llama-cpp-python (built natively by
scripts/llama-cpp-venv.sh). Both process the same 128 seeded random token ids
as a prompt (one batch), then decode exactly 128 tokens greedily with EOS
ignored, over the same context size; each warms up first. Prints tokens/s for
both phases, the ratios, and each process's peak resident memory.
"""
import argparse
import json
import os
import resource
import subprocess
import sys
import time


def lcg_ids(n, seed, vocab):
    # The same sequence as stitch-bench's llm case.
    state, out = seed, []
    for _ in range(n):
        state = (state * 6364136223846793005 + 1442695040888963407) % (1 << 64)
        out.append(1000 + (state >> 33) % (vocab - 1000))
    return out


def llama_cpp_side(model, prompt_n, gen_n, ctx, seed, threads):
    import llama_cpp

    llm = llama_cpp.Llama(model_path=model, n_ctx=ctx, n_batch=512, n_threads=threads,
                          n_threads_batch=threads, verbose=False)
    ids = lcg_ids(prompt_n, seed, llm.n_vocab())
    # Warm-up, then reset.
    llm.reset()
    llm.eval(ids)
    for _ in range(4):
        llm.eval([llm.sample(temp=0.0)])
    llm.reset()
    t0 = time.perf_counter()
    llm.eval(ids)
    prefill = time.perf_counter() - t0
    t1 = time.perf_counter()
    for _ in range(gen_n):
        tok = llm.sample(temp=0.0)
        llm.eval([tok])
    decode = time.perf_counter() - t1
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print(json.dumps({"prefill_s": prefill, "decode_s": decode, "peak_rss_kib": peak,
                      "version": llama_cpp.__version__}))


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--stitch-bench", required=True)
    p.add_argument("--model", required=True)
    p.add_argument("--prompt-tokens", type=int, default=128)
    p.add_argument("--gen-tokens", type=int, default=128)
    p.add_argument("--ctx", type=int, default=512)
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--llama-side", action="store_true", help=argparse.SUPPRESS)
    a = p.parse_args()
    if a.llama_side:
        return llama_cpp_side(a.model, a.prompt_tokens, a.gen_tokens, a.ctx, a.seed, a.threads)
    env = dict(os.environ, RAYON_NUM_THREADS=str(a.threads), OMP_NUM_THREADS=str(a.threads))
    args = [str(a.prompt_tokens), str(a.gen_tokens), str(a.ctx), str(a.seed)]
    st = subprocess.run([a.stitch_bench, "llm", a.model] + args, env=env, capture_output=True, text=True)
    if st.returncode != 0:
        sys.exit(f"stitch-bench failed: {st.stderr}")
    s = json.loads(st.stdout.strip().splitlines()[-1])
    ll = subprocess.run([sys.executable, __file__, "--llama-side", "--stitch-bench", a.stitch_bench,
                         "--model", a.model, "--prompt-tokens", str(a.prompt_tokens), "--gen-tokens",
                         str(a.gen_tokens), "--ctx", str(a.ctx), "--seed", str(a.seed), "--threads",
                         str(a.threads)], env=env, capture_output=True, text=True)
    if ll.returncode != 0:
        sys.exit(f"llama.cpp side failed: {ll.stderr}")
    l = json.loads(ll.stdout.strip().splitlines()[-1])
    pp = lambda r: a.prompt_tokens / r["prefill_s"]
    tg = lambda r: a.gen_tokens / r["decode_s"]
    load = open("/proc/loadavg").read().split()[:3]
    print(f"## stitch vs llama.cpp — {time.strftime('%Y-%m-%d')}\n")
    print(f"- Model: {os.path.basename(a.model)}; prompt {a.prompt_tokens} seeded random tokens (one batch), "
          f"decode {a.gen_tokens} tokens greedy with EOS ignored, context {a.ctx}, {a.threads} threads each")
    print(f"- llama.cpp: llama-cpp-python {l['version']} built from source with GGML_NATIVE=ON (scripts/llama-cpp-venv.sh)")
    print(f"- Load average before the llama.cpp run: {' '.join(load)}\n")
    print("| | stitch | llama.cpp | stitch / llama.cpp |")
    print("|---|---|---|---|")
    print(f"| prompt processing (tokens/s) | {pp(s):.1f} | {pp(l):.1f} | **{pp(s) / pp(l):.2f}x** |")
    print(f"| decode (tokens/s) | {tg(s):.1f} | {tg(l):.1f} | **{tg(s) / tg(l):.2f}x** |")
    print(f"| peak resident memory | {s['peak_rss_kib'] / 1024:.0f} MiB | {l['peak_rss_kib'] / 1024:.0f} MiB | |")


if __name__ == "__main__":
    main()
