//! `stitch demo`: a Llama-style transformer block built with the graph API,
//! with seeded random weights, run on the CPU twice — once with the backend's
//! fused kernels (softmax, RMS norm, SiLU) and once fully decomposed into
//! primitive ops — and the two results compared.
//!
//! The block: RMSNorm → Q/K/V projections → RoPE → grouped-query causal SDPA →
//! output projection → residual → RMSNorm → SwiGLU MLP → residual.

use std::sync::Arc;
use std::time::{Duration, Instant};

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use stitch_core::{Backend, CompileOptions, DType, Dim, Executable, Graph, Result, Tensor, Value};

/// Size and seed of the demo block.
#[derive(Debug, Clone)]
pub struct DemoConfig {
    /// Batch size (the placeholder's batch axis is symbolic).
    pub batch: usize,
    /// Sequence length.
    pub seq: usize,
    /// Model width.
    pub dim: usize,
    /// Query heads.
    pub heads: usize,
    /// Key/value heads (grouped-query attention when fewer than `heads`).
    pub kv_heads: usize,
    /// MLP hidden width.
    pub hidden: usize,
    /// Seed for weights and input.
    pub seed: u64,
    /// Timed runs after the warm-up.
    pub runs: usize,
}

impl Default for DemoConfig {
    fn default() -> Self {
        DemoConfig {
            batch: 2,
            seq: 128,
            dim: 256,
            heads: 8,
            kv_heads: 2,
            hidden: 688,
            seed: 0,
            runs: 10,
        }
    }
}

/// What the demo measured.
#[derive(Debug, Clone)]
pub struct DemoReport {
    /// Output shape.
    pub shape: Vec<usize>,
    /// First output values.
    pub head: Vec<f32>,
    /// Mean and standard deviation of the output.
    pub mean: f64,
    /// Standard deviation of the output.
    pub std: f64,
    /// max |fused - decomposed| / max |decomposed|.
    pub max_rel_diff: f64,
    /// Nodes in the built graph.
    pub graph_nodes: usize,
    /// Steps executed with fused kernels / fully decomposed.
    pub steps_fused: usize,
    /// Steps when decomposed into primitives.
    pub steps_decomposed: usize,
    /// Median run time with fused kernels.
    pub fused_median: Duration,
    /// Median run time decomposed.
    pub decomposed_median: Duration,
    /// Floating-point operations of the block (for GFLOP/s).
    pub flops: f64,
    /// What the compiler did to the block (the fused executable's plan).
    pub compile: stitch_core::CompileReport,
}

fn random(rng: &mut ChaCha8Rng, shape: &[usize], scale: f64) -> Result<Tensor> {
    let n: usize = shape.iter().product();
    let v: Vec<f32> = (0..n).map(|_| (rng.gen_range(-1.0..1.0) * scale) as f32).collect();
    Tensor::from_vec(v, shape)
}

/// Builds the block; returns the graph, its input and its output.
pub fn build_block(cfg: &DemoConfig) -> Result<(Graph, Value)> {
    let DemoConfig {
        seq,
        dim,
        heads,
        kv_heads,
        hidden,
        ..
    } = *cfg;
    if heads == 0 || kv_heads == 0 || dim % heads != 0 || heads % kv_heads != 0 || (dim / heads) % 2 != 0 {
        return Err(stitch_core::Error::invalid(format!(
            "demo needs dim divisible by heads with an even head size, and heads divisible by kv heads (dim {dim}, heads {heads}, kv heads {kv_heads})"
        )));
    }
    let hd = dim / heads;
    let mut rng = ChaCha8Rng::seed_from_u64(cfg.seed);
    let mut g = Graph::new();
    let x = g.placeholder(
        "x",
        DType::F32,
        vec![Dim::sym("batch"), Dim::Known(seq), Dim::Known(dim)],
    );
    let mut weight = |g: &mut Graph, shape: &[usize]| -> Result<Value> {
        let fan_in = shape[0] as f64;
        Ok(g.constant(random(&mut rng, shape, 1.0 / fan_in.sqrt())?))
    };

    g.push_scope("attn");
    let norm1 = {
        let s: Vec<f32> = (0..dim).map(|i| 1.0 + 0.01 * (i % 7) as f32).collect();
        g.constant(Tensor::from_vec(s, &[dim])?)
    };
    let h = g.rms_norm(x, norm1, -1, 1e-5)?;
    let wq = weight(&mut g, &[dim, heads * hd])?;
    let wk = weight(&mut g, &[dim, kv_heads * hd])?;
    let wv = weight(&mut g, &[dim, kv_heads * hd])?;
    let wo = weight(&mut g, &[heads * hd, dim])?;
    let project = |g: &mut Graph, w: Value, nh: usize| -> Result<Value> {
        let p = g.matmul(h, w)?;
        let p = g.reshape(p, &[0, seq as i64, nh as i64, hd as i64])?;
        g.transpose(p, &[0, 2, 1, 3]) // [batch, heads, seq, hd]
    };
    let q = project(&mut g, wq, heads)?;
    let k = project(&mut g, wk, kv_heads)?;
    let v = project(&mut g, wv, kv_heads)?;

    // RoPE (rotate-half form) with tables for positions 0..seq.
    let (cos, sin) = rope_tables(seq, hd, 10000.0)?;
    let cos = g.constant(cos);
    let sin = g.constant(sin);
    let rope = |g: &mut Graph, t: Value| -> Result<Value> {
        let halves = g.split(t, -1, &[hd / 2, hd / 2])?;
        let neg = g.neg(halves[1])?;
        let rotated = g.concat(&[neg, halves[0]], -1)?;
        let a = g.mul(t, cos)?;
        let b = g.mul(rotated, sin)?;
        g.add(a, b)
    };
    let q = rope(&mut g, q)?;
    let k = rope(&mut g, k)?;
    let attn = g.sdpa(
        q,
        k,
        v,
        None,
        stitch_core::ops::SdpaAttrs {
            scale: None,
            causal: true,
        },
    )?;
    let attn = g.transpose(attn, &[0, 2, 1, 3])?;
    let attn = g.reshape(attn, &[0, seq as i64, dim as i64])?;
    let o = g.matmul(attn, wo)?;
    let x1 = g.add(x, o)?;
    g.pop_scope();

    g.push_scope("mlp");
    let norm2 = {
        let s: Vec<f32> = (0..dim).map(|i| 1.0 - 0.01 * (i % 5) as f32).collect();
        g.constant(Tensor::from_vec(s, &[dim])?)
    };
    let h2 = g.rms_norm(x1, norm2, -1, 1e-5)?;
    let w_gate = weight(&mut g, &[dim, hidden])?;
    let w_up = weight(&mut g, &[dim, hidden])?;
    let w_down = weight(&mut g, &[hidden, dim])?;
    let gate = g.matmul(h2, w_gate)?;
    let gate = g.silu(gate)?;
    let up = g.matmul(h2, w_up)?;
    let act = g.mul(gate, up)?;
    let down = g.matmul(act, w_down)?;
    let y = g.add(x1, down)?;
    g.pop_scope();
    Ok((g, y))
}

/// cos/sin tables `[seq, head_dim]` for rotate-half RoPE.
pub fn rope_tables(seq: usize, hd: usize, base: f64) -> Result<(Tensor, Tensor)> {
    let mut cos = Vec::with_capacity(seq * hd);
    let mut sin = Vec::with_capacity(seq * hd);
    for p in 0..seq {
        for i in 0..hd {
            let freq = base.powf(-2.0 * (i % (hd / 2)) as f64 / hd as f64);
            cos.push((p as f64 * freq).cos() as f32);
            sin.push((p as f64 * freq).sin() as f32);
        }
    }
    Ok((Tensor::from_vec(cos, &[seq, hd])?, Tensor::from_vec(sin, &[seq, hd])?))
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v.get(v.len() / 2).copied().unwrap_or_default()
}

fn timed_runs(exe: &Executable, x: &Tensor, runs: usize) -> Result<(Tensor, Duration)> {
    let mut state = exe.new_state();
    let out = exe.run(&[("x", x.clone())], &mut state)?.remove(0); // warm-up: specialise and plan
    let mut times = Vec::with_capacity(runs);
    for _ in 0..runs {
        let t = Instant::now();
        let o = exe.run(&[("x", x.clone())], &mut state)?;
        times.push(t.elapsed());
        drop(o);
    }
    Ok((out, median(times)))
}

/// Builds, compiles and runs the block with fused kernels and decomposed, and compares.
pub fn run_demo(cfg: &DemoConfig, backend: Arc<dyn Backend>) -> Result<DemoReport> {
    let (g, y) = build_block(cfg)?;
    let mut rng = ChaCha8Rng::seed_from_u64(cfg.seed ^ 0x5EED);
    let x = random(&mut rng, &[cfg.batch, cfg.seq, cfg.dim], 1.0)?;

    let fused = Executable::compile(&g, &[y], backend.clone(), CompileOptions::default())?;
    let reference = Executable::compile(&g, &[y], backend, CompileOptions::reference())?;
    let (out, fused_median) = timed_runs(&fused, &x, cfg.runs)?;
    let (want, decomposed_median) = timed_runs(&reference, &x, cfg.runs)?;

    let types = [stitch_core::passes::specialize::type_of(&x)];
    let fused_plan = fused.plan_for(&types)?;
    let steps_fused = fused_plan.steps.len();
    let steps_decomposed = reference.plan_for(&types)?.steps.len();

    let a = out.to_f64_vec();
    let b = want.to_f64_vec();
    let scale = b.iter().fold(0f64, |m, v| m.max(v.abs())).max(f64::MIN_POSITIVE);
    let max_rel_diff = a.iter().zip(&b).fold(0f64, |m, (p, q)| m.max((p - q).abs())) / scale;
    let n = a.len() as f64;
    let mean = a.iter().sum::<f64>() / n;
    let std = (a.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / n).sqrt();

    let (b_, s, d, h, kvh, hid) = (
        cfg.batch as f64,
        cfg.seq as f64,
        cfg.dim as f64,
        cfg.heads as f64,
        cfg.kv_heads as f64,
        cfg.hidden as f64,
    );
    let hd = d / h;
    let proj = 2.0 * b_ * s * d * (d + 2.0 * kvh * hd + d);
    let attn = 2.0 * 2.0 * b_ * h * s * s * hd;
    let mlp = 2.0 * b_ * s * d * hid * 3.0;
    Ok(DemoReport {
        shape: out.shape().to_vec(),
        head: out.to_vec::<f32>()?.into_iter().take(6).collect(),
        mean,
        std,
        max_rel_diff,
        graph_nodes: g.nodes().len(),
        steps_fused,
        steps_decomposed,
        fused_median,
        decomposed_median,
        flops: proj + attn + mlp,
        compile: fused_plan.report.clone(),
    })
}

/// Human-readable compile report: the passes' effects on node counts, fusion and memory.
pub fn format_compile_report(r: &stitch_core::CompileReport) -> String {
    use std::fmt::Write;
    let mut s = String::new();
    let _ = writeln!(s, "compile report:");
    for (pass, nodes) in &r.nodes_after {
        let _ = writeln!(s, "  {pass:<15} {nodes:>6} nodes");
    }
    let _ = writeln!(
        s,
        "  rewrote {} patterns, decomposed {} composite nodes, folded {} into constants, merged {} duplicates",
        r.rewritten, r.decomposed, r.folded, r.merged
    );
    let _ = writeln!(
        s,
        "  fusion: {} regions from {} nodes, {:.2} MiB of intermediates never written",
        r.fusion.regions,
        r.fusion.nodes_fused,
        r.fusion.bytes_avoided as f64 / (1 << 20) as f64
    );
    let _ = writeln!(
        s,
        "  placement: {} nodes fell back to another backend, {} copies moving {:.2} MiB per run",
        r.placement.fallback_nodes,
        r.placement.copies,
        r.placement.copy_bytes as f64 / (1 << 20) as f64
    );
    let _ = writeln!(
        s,
        "  memory: {} steps, peak planned {:.2} MiB (without reuse {:.2} MiB)",
        r.steps,
        r.peak_bytes as f64 / (1 << 20) as f64,
        r.total_bytes as f64 / (1 << 20) as f64
    );
    s
}
