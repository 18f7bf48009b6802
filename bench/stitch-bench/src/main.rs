//! The stitch side of the numpy benchmark (see `bench/run.sh`).
//!
//! `bench/numpy_peer.py` writes the inputs as `.npy` files, times numpy, then
//! runs this binary on the same files. For each case it loads the inputs with
//! `stitch_core::npy`, builds the graph with the graph API, compiles it for the
//! CPU backend with the default options (fusion on), runs it once to warm up
//! (plan specialisation, page faults, thread pool start), times `runs` further
//! runs, writes the last output as `.npy` for the driver to check against
//! numpy, and prints one JSON line per case with every run's time in seconds.
//! Threads come from rayon's global pool, so `RAYON_NUM_THREADS` limits them.
//!
//! Usage:
//!   stitch-bench matmul DIR N RUNS   # DIR/mm_a_N.npy @ DIR/mm_b_N.npy -> DIR/mm_c_N_stitch.npy
//!   stitch-bench chain DIR RUNS [--unfused]
//!       # y = tanh(x*a + b) * sigmoid(x) - 0.5*x on DIR/chain_{x,a,b}.npy -> DIR/chain_y_stitch.npy
//!       # (`a`, `b` are rank-0 f32 inputs, broadcast over x)
//!   stitch-bench llm MODEL.gguf PROMPT_TOKENS GEN_TOKENS CTX SEED
//!       # prefill of PROMPT_TOKENS seeded random token ids, then GEN_TOKENS greedy
//!       # decode steps (EOS ignored); prints tokens/s and peak resident memory
//!       # (see bench/llm.sh, which runs llama.cpp the same way)
//!   stitch-bench gpu-attention DTYPE B H HK S T D CAUSAL ITERS
//!       # one sdpa on the CUDA backend over device-resident inputs (see bench/gpu_attention.py)
//!   stitch-bench gpu-qgemv FORMAT N K ROWS ITERS
//!       # quantized GEMV on the CUDA backend: weights repacked for 16-byte loads vs the GGUF layout

mod gpu;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use stitch_core::npy::{load_npy, save_npy};
use stitch_core::{CompileOptions, Executable, Graph, Result, Tensor};
use stitch_cpu::CpuBackend;

fn main() {
    if let Err(e) = real_main() {
        eprintln!("stitch-bench: {e}");
        std::process::exit(1);
    }
}

fn real_main() -> std::result::Result<(), String> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let usage = "usage: stitch-bench matmul DIR N RUNS | stitch-bench chain DIR RUNS [--unfused] | stitch-bench llm MODEL PROMPT_TOKENS GEN_TOKENS CTX SEED | stitch-bench onnx MODEL DIR ITERS | stitch-bench minilm-path";
    let num = |s: Option<&String>, what: &str| -> std::result::Result<usize, String> {
        s.ok_or_else(|| format!("missing {what}; {usage}"))?
            .parse::<usize>()
            .map_err(|e| format!("bad {what}: {e}"))
    };
    match args.first().map(String::as_str) {
        Some("matmul") => {
            let dir = PathBuf::from(args.get(1).ok_or(usage)?);
            let n = num(args.get(2), "N")?;
            let runs = num(args.get(3), "RUNS")?;
            matmul(&dir, n, runs).map_err(|e| e.to_string())
        }
        Some("llm") => {
            let model = PathBuf::from(args.get(1).ok_or(usage)?);
            let prompt = num(args.get(2), "PROMPT_TOKENS")?;
            let gen = num(args.get(3), "GEN_TOKENS")?;
            let ctx = num(args.get(4), "CTX")?;
            let seed = num(args.get(5), "SEED")? as u64;
            llm(&model, prompt, gen, ctx, seed).map_err(|e| e.to_string())
        }
        Some("onnx") => {
            let model = PathBuf::from(args.get(1).ok_or(usage)?);
            let dir = PathBuf::from(args.get(2).ok_or(usage)?);
            let iters = num(args.get(3), "ITERS")?;
            onnx(&model, &dir, iters)
        }
        Some("minilm-path") => {
            let p = stitch_onnx::fetch::minilm_int8().map_err(|e| e.to_string())?;
            println!("{}", p.display());
            Ok(())
        }
        Some("chain") => {
            let dir = PathBuf::from(args.get(1).ok_or(usage)?);
            let runs = num(args.get(2), "RUNS")?;
            let fuse = !args.iter().any(|a| a == "--unfused");
            chain(&dir, runs, fuse).map_err(|e| e.to_string())
        }
        Some("gpu-attention") => gpu::attention(&args[1..]),
        Some("gpu-qgemv") => gpu::qgemv(&args[1..]),
        _ => Err(usage.to_string()),
    }
}

/// Warm-up time before timing (numpy_peer.py's WARMUP_S): the first ~100 ms of a
/// busy process run slower on the machines we measure on.
const WARMUP: std::time::Duration = std::time::Duration::from_millis(500);

/// Runs `exe` for WARMUP to warm up, then `runs` timed times; returns the times and the last outputs.
/// Runs go through `run_into` with one outputs vector, the steady-state API: the
/// previous outputs' buffers are recycled, as numpy's `out=` buffers are.
fn time_runs(exe: &Executable, inputs: &[(&str, Tensor)], runs: usize) -> Result<(Vec<f64>, Vec<Tensor>)> {
    let mut state = exe.new_state();
    let mut out = Vec::new();
    // Warm up for WARMUP (and at least once), as the numpy side does.
    let warm_end = Instant::now() + WARMUP;
    exe.run_into(inputs, &mut state, &mut out)?;
    while Instant::now() < warm_end {
        exe.run_into(inputs, &mut state, &mut out)?;
    }
    let mut times = Vec::with_capacity(runs);
    for _ in 0..runs {
        let t0 = Instant::now();
        exe.run_into(inputs, &mut state, &mut out)?;
        times.push(t0.elapsed().as_secs_f64());
    }
    Ok((times, out))
}

fn json_times(times: &[f64]) -> String {
    let parts: Vec<String> = times.iter().map(|t| format!("{t:.6}")).collect();
    format!("[{}]", parts.join(","))
}

fn matmul(dir: &Path, n: usize, runs: usize) -> Result<()> {
    let a = load_npy(&dir.join(format!("mm_a_{n}.npy")))?;
    let b = load_npy(&dir.join(format!("mm_b_{n}.npy")))?;
    let mut g = Graph::new();
    let pa = g.placeholder("a", a.dtype(), a.shape().to_vec());
    let pb = g.placeholder("b", b.dtype(), b.shape().to_vec());
    let c = g.matmul(pa, pb)?;
    let exe = Executable::compile(&g, &[c], Arc::new(CpuBackend::new()), CompileOptions::default())?;
    let (times, out) = time_runs(&exe, &[("a", a), ("b", b)], runs)?;
    save_npy(&dir.join(format!("mm_c_{n}_stitch.npy")), &out[0])?;
    println!(
        "{{\"case\":\"matmul\",\"n\":{n},\"threads\":{},\"times\":{}}}",
        threads(),
        json_times(&times)
    );
    Ok(())
}

fn chain(dir: &Path, runs: usize, fuse: bool) -> Result<()> {
    let x = load_npy(&dir.join("chain_x.npy"))?;
    let a = load_npy(&dir.join("chain_a.npy"))?;
    let b = load_npy(&dir.join("chain_b.npy"))?;
    let mut g = Graph::new();
    let px = g.placeholder("x", x.dtype(), x.shape().to_vec());
    let pa = g.placeholder("a", a.dtype(), a.shape().to_vec());
    let pb = g.placeholder("b", b.dtype(), b.shape().to_vec());
    // y = tanh(x*a + b) * sigmoid(x) - 0.5*x
    let xa = g.mul(px, pa)?;
    let xab = g.add(xa, pb)?;
    let t = g.tanh(xab)?;
    let s = g.sigmoid(px)?;
    let ts = g.mul(t, s)?;
    let half = g.scalar(x.dtype(), 0.5);
    let hx = g.mul(half, px)?;
    let y = g.sub(ts, hx)?;
    let options = CompileOptions {
        fuse,
        ..CompileOptions::default()
    };
    let exe = Executable::compile(&g, &[y], Arc::new(CpuBackend::new()), options)?;
    let inputs = [("x", x), ("a", a), ("b", b)];
    let (times, out) = time_runs(&exe, &inputs, runs)?;
    // What the compiler made of the chain, so the report can show it was fused.
    let types: Vec<_> = inputs
        .iter()
        .map(|(_, t)| stitch_core::passes::specialize::type_of(t))
        .collect();
    let plan = exe.plan_for(&types)?;
    save_npy(&dir.join("chain_y_stitch.npy"), &out[0])?;
    println!(
        "{{\"case\":\"chain\",\"fused\":{fuse},\"regions\":{},\"steps\":{},\"threads\":{},\"times\":{}}}",
        plan.report.fusion.regions,
        plan.report.steps,
        threads(),
        json_times(&times)
    );
    Ok(())
}

/// Peak resident memory of this process (VmHWM), in KiB.
fn peak_rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmHWM:"))
                .and_then(|l| l.split_whitespace().nth(1).and_then(|v| v.parse().ok()))
        })
        .unwrap_or(0)
}

/// The ONNX Runtime comparison (bench/onnx_peer.py): runs `model` on
/// `DIR/in_{i}.npz` for each iteration (fresh token ids each time, one compiled
/// plan for the fixed shape), after 3 warm-up runs on `in_0`; writes the first
/// output of iterations 0 and ITERS-1 to `DIR/stitch_out_{i}.npy` for the
/// cross-check and prints `{"median_ms":..,"min_ms":..}`.
fn onnx(model: &Path, dir: &Path, iters: usize) -> std::result::Result<(), String> {
    let load = |i: usize| stitch_core::npy::load_npz(&dir.join(format!("in_{i}.npz"))).map_err(|e| e.to_string());
    let first = load(0)?;
    let m = stitch_onnx::Model::load(
        model,
        stitch_onnx::ImportOptions {
            input_values: first.iter().cloned().collect(),
            base_dir: None,
        },
    )
    .map_err(|e| e.to_string())?;
    let exe = m.compile_cpu().map_err(|e| e.to_string())?;
    let mut state = exe.new_state();
    let mut outs = Vec::new();
    let feed0 = m.check_inputs(&first).map_err(|e| e.to_string())?;
    for _ in 0..3 {
        exe.run_into(&feed0, &mut state, &mut outs).map_err(|e| e.to_string())?;
    }
    let inputs: Vec<Vec<(String, Tensor)>> = (0..iters).map(load).collect::<std::result::Result<_, _>>()?;
    let mut times = Vec::with_capacity(iters);
    for (i, given) in inputs.iter().enumerate() {
        let feed = m.check_inputs(given).map_err(|e| e.to_string())?;
        let t0 = Instant::now();
        exe.run_into(&feed, &mut state, &mut outs).map_err(|e| e.to_string())?;
        times.push(t0.elapsed().as_secs_f64() * 1e3);
        if i == 0 || i + 1 == iters {
            save_npy(&dir.join(format!("stitch_out_{i}.npy")), &outs[0]).map_err(|e| e.to_string())?;
        }
    }
    times.sort_by(|a, b| a.total_cmp(b));
    println!(
        "{{\"median_ms\":{:.4},\"min_ms\":{:.4}}}",
        times[times.len() / 2],
        times[0]
    );
    Ok(())
}

fn llm(model: &Path, prompt: usize, gen: usize, ctx: usize, seed: u64) -> Result<()> {
    use stitch_models::generate::{Sampler, Sampling};
    let g = stitch_models::gguf::Gguf::open(model)?;
    let cfg = stitch_models::llama::LlamaConfig::from_gguf(&g)?;
    let vocab = cfg.vocab as u64;
    let mut m = stitch_models::llama::Llama::new(cfg, &g, ctx, Arc::new(CpuBackend::new()))?;
    // The same seeded ids as bench/llm_peer.py (a 64-bit LCG), from 1000 upward.
    let mut state = seed;
    let ids: Vec<u32> = (0..prompt)
        .map(|_| {
            state = state
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            (1000 + (state >> 33) % (vocab - 1000)) as u32
        })
        .collect();
    // Warm-up: one prefill and a few decode steps (plans for both shapes), then reset.
    let mut logits = m.forward(&ids)?;
    let mut sampler = Sampler::new(Sampling {
        temperature: 0.0,
        repeat_penalty: 1.0,
        ..Default::default()
    })?;
    for _ in 0..4 {
        let t = sampler.sample(&mut logits, &[]);
        logits = m.forward(&[t])?;
    }
    m.reset();
    let t0 = Instant::now();
    let mut logits = m.forward(&ids)?;
    let prefill = t0.elapsed().as_secs_f64();
    let t1 = Instant::now();
    for _ in 0..gen {
        let t = sampler.sample(&mut logits, &[]);
        logits = m.forward(&[t])?;
    }
    let decode = t1.elapsed().as_secs_f64();
    println!(
        "{{\"case\":\"llm\",\"threads\":{},\"prompt_tokens\":{prompt},\"gen_tokens\":{gen},\"ctx\":{ctx},\"prefill_s\":{prefill:.6},\"decode_s\":{decode:.6},\"peak_rss_kib\":{}}}",
        threads(),
        peak_rss_kib()
    );
    Ok(())
}

/// Threads of rayon's global pool, which the CPU backend uses.
fn threads() -> usize {
    rayon::current_num_threads()
}
