//! The CUDA backend against the CPU backend, op by op and on a decoder step,
//! on seeded random data. GPU tests are ignored where no GPU exists; stage them
//! with `../shared/tools/stage-gpu` and run `bash .gpu/run-tests.sh` on a GPU machine.

use std::sync::Arc;

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use stitch_core::ops::attention::SdpaAttrs;
use stitch_core::ops::reduce::ReduceOp;
use stitch_core::ops::{BinaryOp, UnaryOp};
use stitch_core::profile::{Profiler, StepKind};
use stitch_core::{Backend, CompileOptions, DType, Executable, Graph, Op, Tensor, Value};
use stitch_cpu::CpuBackend;
use stitch_cuda::CudaBackend;

fn rng(seed: u64) -> ChaCha8Rng {
    ChaCha8Rng::seed_from_u64(seed)
}

fn random(r: &mut ChaCha8Rng, dtype: DType, shape: &[usize], lo: f64, hi: f64) -> Tensor {
    let n: usize = shape.iter().product();
    let v: Vec<f64> = (0..n)
        .map(|_| match dtype {
            DType::Bool => f64::from(r.gen_range(0..2u8)),
            d if d.is_int() => r.gen_range(lo as i64..hi as i64) as f64,
            _ => r.gen_range(lo..hi),
        })
        .collect();
    Tensor::from_f64(dtype, &v, shape).unwrap()
}

fn cuda() -> Arc<dyn Backend> {
    Arc::new(CudaBackend::new(0).expect("a CUDA GPU"))
}

fn backends() -> Vec<Arc<dyn Backend>> {
    vec![cuda(), Arc::new(CpuBackend::new())]
}

/// Runs `outs` of `g` on CUDA (with CPU fallback) and on the CPU alone; returns
/// both results and the number of nodes that fell back.
fn both(
    g: &Graph,
    outs: &[Value],
    inputs: &[(&str, Tensor)],
    opts: CompileOptions,
) -> (Vec<Tensor>, Vec<Tensor>, usize) {
    let gpu = Executable::compile_placed(g, outs, backends(), opts.clone()).unwrap();
    let cpu = Executable::compile(g, outs, Arc::new(CpuBackend::new()), opts).unwrap();
    let got = gpu.run(inputs, &mut gpu.new_state()).unwrap();
    let want = cpu.run(inputs, &mut cpu.new_state()).unwrap();
    let types: Vec<_> = inputs
        .iter()
        .map(|(_, t)| stitch_core::passes::specialize::type_of(t))
        .collect();
    let fallbacks = gpu.plan_for(&types).unwrap().report.placement.fallback_nodes;
    (got, want, fallbacks)
}

/// max |a - b| / max(max |b|, tiny); NaNs must match positions.
fn rel_err(a: &Tensor, b: &Tensor) -> f64 {
    assert_eq!(a.shape(), b.shape());
    assert_eq!(a.dtype(), b.dtype());
    let (x, y) = (a.to_f64_vec(), b.to_f64_vec());
    let scale = y
        .iter()
        .filter(|v| v.is_finite())
        .fold(0f64, |m, v| m.max(v.abs()))
        .max(1e-30);
    let mut worst = 0f64;
    for (p, q) in x.iter().zip(&y) {
        if q.is_nan() || p.is_nan() {
            assert!(p.is_nan() && q.is_nan(), "NaN mismatch: {p} vs {q}");
            continue;
        }
        if q.is_infinite() || p.is_infinite() {
            assert_eq!(p, q);
            continue;
        }
        worst = worst.max((p - q).abs() / scale);
    }
    worst
}

fn check(got: &[Tensor], want: &[Tensor], tol: f64, what: &str) {
    assert_eq!(got.len(), want.len());
    for (i, (a, b)) in got.iter().zip(want).enumerate() {
        let e = rel_err(a, b);
        assert!(e <= tol, "{what} output {i}: relative error {e:.3e} > {tol:.1e}");
    }
}

#[test]
fn creating_the_backend_either_works_or_names_what_is_missing() {
    match CudaBackend::new(0) {
        Ok(b) => assert!(b.arch().starts_with("sm_")),
        Err(e) => {
            let msg = e.to_string();
            assert!(
                msg.contains("libcuda")
                    || msg.contains("NVRTC")
                    || msg.contains("cuBLAS")
                    || msg.contains("does not exist"),
                "{msg}"
            );
        }
    }
}

#[test]
#[ignore = "needs a CUDA GPU"]
fn fused_elementwise_chain_with_broadcasts() {
    let mut r = rng(1);
    let mut g = Graph::new();
    let x = g.placeholder("x", DType::F32, [64, 257]);
    let b = g.placeholder("b", DType::F32, [257]);
    let c = g.placeholder("c", DType::F32, [64, 1]);
    let t = g.tanh(x).unwrap();
    let s = g.sigmoid(x).unwrap();
    let m = g.mul(t, s).unwrap();
    let a = g.add(m, b).unwrap();
    let y = g.mul(a, c).unwrap();
    let z = g.unary(UnaryOp::Gelu, y).unwrap();
    let ins = [
        ("x", random(&mut r, DType::F32, &[64, 257], -3.0, 3.0)),
        ("b", random(&mut r, DType::F32, &[257], -1.0, 1.0)),
        ("c", random(&mut r, DType::F32, &[64, 1], -1.0, 1.0)),
    ];
    let (got, want, fb) = both(&g, &[z], &ins, CompileOptions::default());
    assert_eq!(fb, 0);
    check(&got, &want, 1e-5, "fused chain");
}

#[test]
#[ignore = "needs a CUDA GPU"]
fn every_unary_and_binary_op_unfused() {
    let mut r = rng(2);
    let opts = CompileOptions {
        fuse: false,
        ..Default::default()
    };
    for op in UnaryOp::ALL {
        if op == UnaryOp::Not {
            continue;
        }
        let mut g = Graph::new();
        let x = g.placeholder("x", DType::F32, [33, 65]);
        let y = g.unary(op, x).unwrap();
        let (lo, hi) = match op {
            UnaryOp::Log | UnaryOp::Sqrt | UnaryOp::Rsqrt => (0.1, 4.0),
            _ => (-4.0, 4.0),
        };
        let ins = [("x", random(&mut r, DType::F32, &[33, 65], lo, hi))];
        let (got, want, fb) = both(&g, &[y], &ins, opts.clone());
        assert_eq!(fb, 0, "{op:?}");
        check(&got, &want, 2e-6, &format!("{op:?}"));
    }
    for op in BinaryOp::ALL {
        let dtype = match op {
            BinaryOp::And | BinaryOp::Or | BinaryOp::Xor => DType::Bool,
            _ => DType::F32,
        };
        let mut g = Graph::new();
        let a = g.placeholder("a", dtype, [17, 31]);
        let b = g.placeholder("b", dtype, [31]);
        let y = g.binary(op, a, b).unwrap();
        let (lo, hi) = if op == BinaryOp::Pow { (0.5, 2.0) } else { (-3.0, 3.0) };
        let ins = [
            ("a", random(&mut r, dtype, &[17, 31], lo, hi)),
            ("b", random(&mut r, dtype, &[31], lo, hi)),
        ];
        let (got, want, fb) = both(&g, &[y], &ins, opts.clone());
        assert_eq!(fb, 0, "{op:?}");
        check(&got, &want, 2e-6, &format!("{op:?}"));
    }
    // Integer arithmetic and casts.
    let mut g = Graph::new();
    let a = g.placeholder("a", DType::I64, [40]);
    let b = g.placeholder("b", DType::I64, [40]);
    let d = g.binary(BinaryOp::Div, a, b).unwrap();
    let m = g.binary(BinaryOp::Mod, a, b).unwrap();
    let f = g.cast(m, DType::F32).unwrap();
    let ins = [
        ("a", random(&mut r, DType::I64, &[40], -50.0, 50.0)),
        ("b", random(&mut r, DType::I64, &[40], -7.0, 7.0)),
    ];
    let (got, want, _) = both(&g, &[d, m, f], &ins, opts);
    check(&got, &want, 0.0, "integer div/mod/cast");
}

#[test]
#[ignore = "needs a CUDA GPU"]
fn reductions_plain_and_fused() {
    let mut r = rng(3);
    for (op, axes, keep) in [
        (ReduceOp::Sum, vec![-1i64], false),
        (ReduceOp::Mean, vec![0, 2], true),
        (ReduceOp::Max, vec![1], true),
        (ReduceOp::Min, vec![], false),
        (ReduceOp::Prod, vec![2], false),
    ] {
        let mut g = Graph::new();
        let x = g.placeholder("x", DType::F32, [7, 45, 19]);
        let e = g.exp(x).unwrap();
        let y = g.reduce(op, e, &axes, keep).unwrap();
        let (lo, hi) = if op == ReduceOp::Prod { (-0.1, 0.1) } else { (-2.0, 2.0) };
        let ins = [("x", random(&mut r, DType::F32, &[7, 45, 19], lo, hi))];
        for fuse in [true, false] {
            let opts = CompileOptions {
                fuse,
                ..Default::default()
            };
            let (got, want, fb) = both(&g, &[y], &ins, opts);
            assert_eq!(fb, 0);
            check(&got, &want, 1e-5, &format!("{op:?} over {axes:?} (fuse {fuse})"));
        }
    }
}

#[test]
#[ignore = "needs a CUDA GPU"]
fn matmul_shapes_transposes_and_broadcasts() {
    let mut r = rng(4);
    let cases: Vec<(Vec<usize>, Vec<usize>, bool, bool)> = vec![
        (vec![37, 64], vec![64, 23], false, false),
        (vec![3, 37, 64], vec![3, 64, 23], false, false),
        (vec![3, 37, 64], vec![64, 23], false, false),
        (vec![37, 64], vec![23, 64], false, true),
        (vec![2, 64, 37], vec![2, 23, 64], true, true),
        (vec![2, 1, 5, 8], vec![3, 8, 6], false, false),
    ];
    for (sa, sb, ta, tb) in cases {
        let mut g = Graph::new();
        let a = g.placeholder("a", DType::F32, sa.as_slice());
        let b = g.placeholder("b", DType::F32, sb.as_slice());
        let y = g.matmul_t(a, b, ta, tb).unwrap();
        let ins = [
            ("a", random(&mut r, DType::F32, &sa, -1.0, 1.0)),
            ("b", random(&mut r, DType::F32, &sb, -1.0, 1.0)),
        ];
        let (got, want, fb) = both(&g, &[y], &ins, CompileOptions::default());
        assert_eq!(fb, 0);
        check(&got, &want, 1e-5, &format!("matmul {sa:?} x {sb:?} ({ta}, {tb})"));
    }
}

#[test]
#[ignore = "needs a CUDA GPU"]
fn softmax_and_norms() {
    let mut r = rng(5);
    let mut g = Graph::new();
    let x = g.placeholder("x", DType::F32, [6, 9, 300]);
    let w = g.placeholder("w", DType::F32, [300]);
    let b = g.placeholder("b", DType::F32, [300]);
    let s = g.softmax(x, -1).unwrap();
    let n1 = g.rms_norm(x, w, -1, 1e-5).unwrap();
    let n2 = g.layer_norm(x, w, Some(b), -1, 1e-5).unwrap();
    let ins = [
        ("x", random(&mut r, DType::F32, &[6, 9, 300], -4.0, 4.0)),
        ("w", random(&mut r, DType::F32, &[300], -1.0, 1.0)),
        ("b", random(&mut r, DType::F32, &[300], -1.0, 1.0)),
    ];
    let (got, want, fb) = both(&g, &[s, n1, n2], &ins, CompileOptions::default());
    assert_eq!(fb, 0);
    check(&got, &want, 1e-5, "softmax/rms_norm/layer_norm");
}

#[test]
#[ignore = "needs a CUDA GPU"]
fn attention_causal_gqa_and_masks() {
    let mut r = rng(6);
    for (s, t, mask) in [
        (5usize, 5usize, None),
        (3, 40, Some(DType::Bool)),
        (7, 7, Some(DType::F32)),
    ] {
        let (b, h, hk, d) = (2usize, 8usize, 2usize, 64usize);
        let mut g = Graph::new();
        let q = g.placeholder("q", DType::F32, [b, h, s, d]);
        let k = g.placeholder("k", DType::F32, [b, hk, t, d]);
        let v = g.placeholder("v", DType::F32, [b, hk, t, d]);
        let mut ins = vec![
            ("q", random(&mut r, DType::F32, &[b, h, s, d], -1.0, 1.0)),
            ("k", random(&mut r, DType::F32, &[b, hk, t, d], -1.0, 1.0)),
            ("v", random(&mut r, DType::F32, &[b, hk, t, d], -1.0, 1.0)),
        ];
        let m = mask.map(|dt| {
            let mv = g.placeholder("mask", dt, [1, 1, s, t]);
            let mut tm = random(&mut r, dt, &[1, 1, s, t], -1.0, 1.0);
            if dt == DType::Bool {
                // Keep at least the first key so no row is fully masked.
                let mut vals = tm.to_f64_vec();
                for i in 0..s {
                    vals[i * t] = 1.0;
                }
                tm = Tensor::from_f64(DType::Bool, &vals, &[1, 1, s, t]).unwrap();
            }
            ins.push(("mask", tm));
            mv
        });
        let y = g
            .sdpa(
                q,
                k,
                v,
                m,
                SdpaAttrs {
                    scale: None,
                    causal: mask.is_none(),
                },
            )
            .unwrap();
        let (got, want, fb) = both(&g, &[y], &ins, CompileOptions::default());
        assert_eq!(fb, 0);
        check(&got, &want, 1e-5, &format!("sdpa s={s} t={t} mask={mask:?}"));
    }
}

#[test]
#[ignore = "needs a CUDA GPU"]
fn split_is_views_on_the_gpu() {
    let mut r = rng(11);
    let mut g = Graph::new();
    let x = g.placeholder("x", DType::F32, [3, 10, 4]);
    let parts = g.split(x, 1, &[2, 5, 3]).unwrap();
    let ys: Vec<Value> = parts.iter().map(|&p| g.exp(p).unwrap()).collect();
    let ins = [("x", random(&mut r, DType::F32, &[3, 10, 4], -1.0, 1.0))];
    let (got, want, fb) = both(&g, &ys, &ins, CompileOptions::default());
    assert_eq!(fb, 0);
    check(&got, &want, 1e-6, "split");
}

#[test]
#[ignore = "needs a CUDA GPU"]
fn layout_gather_concat_slice() {
    let mut r = rng(7);
    let mut g = Graph::new();
    let table = g.placeholder("table", DType::F32, [50, 16]);
    let ids = g.placeholder("ids", DType::I64, [9]);
    let x = g.placeholder("x", DType::F32, [4, 6, 8]);
    let e = g.gather(table, ids, 0).unwrap();
    let t = g.transpose(x, &[2, 0, 1]).unwrap();
    let rs = g.reshape(t, &[8, 24]).unwrap();
    let sl = g.slice(x, &[1, 5], &[4, 0], &[0, 1], &[1, -2]).unwrap();
    let c = g.concat(&[x, x], 1).unwrap();
    let ins = [
        ("table", random(&mut r, DType::F32, &[50, 16], -1.0, 1.0)),
        ("ids", random(&mut r, DType::I64, &[9], -50.0, 50.0)),
        ("x", random(&mut r, DType::F32, &[4, 6, 8], -1.0, 1.0)),
    ];
    let (got, want, fb) = both(&g, &[e, rs, sl, c], &ins, CompileOptions::default());
    assert_eq!(fb, 0);
    check(&got, &want, 0.0, "gather/transpose/reshape/slice/concat");
}

fn decoder_step(r: &mut ChaCha8Rng) -> (Graph, Vec<Value>) {
    let (seq, dim, heads, kv_heads, hd, ctx, hidden) = (4usize, 64usize, 4usize, 2usize, 16usize, 32usize, 128usize);
    let mut g = Graph::new();
    let x = g.placeholder("x", DType::F32, [seq, dim]);
    let pos = g.placeholder("pos", DType::I64, [4]);
    let k_cache = g.variable("k_cache", Tensor::zeros(DType::F32, &[1, kv_heads, ctx, hd]));
    let mut w = |g: &mut Graph, s: &[usize]| g.constant(random(r, DType::F32, s, -0.2, 0.2));
    let norm_w = w(&mut g, &[dim]);
    let h = g.rms_norm(x, norm_w, -1, 1e-5).unwrap();
    let wq = w(&mut g, &[dim, heads * hd]);
    let wk = w(&mut g, &[dim, kv_heads * hd]);
    let q = g.matmul(h, wq).unwrap();
    let q = g.reshape(q, &[1, seq as i64, heads as i64, hd as i64]).unwrap();
    let q = g.transpose(q, &[0, 2, 1, 3]).unwrap();
    let k = g.matmul(h, wk).unwrap();
    let k = g.reshape(k, &[1, seq as i64, kv_heads as i64, hd as i64]).unwrap();
    let k = g.transpose(k, &[0, 2, 1, 3]).unwrap();
    g.slice_update(k_cache, k, pos).unwrap();
    let keys = g.read(k_cache).unwrap();
    let attn = g
        .sdpa(
            q,
            keys,
            keys,
            None,
            SdpaAttrs {
                scale: None,
                causal: true,
            },
        )
        .unwrap();
    let attn = g.transpose(attn, &[0, 2, 1, 3]).unwrap();
    let attn = g.reshape(attn, &[seq as i64, (heads * hd) as i64]).unwrap();
    let x1 = g.add(x, attn).unwrap();
    let w_gate = w(&mut g, &[dim, hidden]);
    let w_up = w(&mut g, &[dim, hidden]);
    let w_down = w(&mut g, &[hidden, dim]);
    let gate = g.matmul(x1, w_gate).unwrap();
    let gate = g.silu(gate).unwrap();
    let up = g.matmul(x1, w_up).unwrap();
    let act = g.mul(gate, up).unwrap();
    let down = g.matmul(act, w_down).unwrap();
    let y = g.add(x1, down).unwrap();
    let probs = g.softmax(y, -1).unwrap();
    (g, vec![y, probs])
}

#[test]
#[ignore = "needs a CUDA GPU"]
fn decoder_steps_with_an_in_place_kv_cache() {
    let mut r = rng(8);
    let (g, outs) = decoder_step(&mut r);
    let gpu = Executable::compile_placed(&g, &outs, backends(), CompileOptions::default()).unwrap();
    let cpu = Executable::compile(&g, &outs, Arc::new(CpuBackend::new()), CompileOptions::default()).unwrap();
    let (mut sg, mut sc) = (gpu.new_state(), cpu.new_state());
    assert!(
        sg.get(stitch_core::VarId(0)).device_memory().is_some(),
        "the cache lives on the GPU"
    );
    let buffer = Arc::as_ptr(sg.get(stitch_core::VarId(0)).buffer());
    for step in 0..5 {
        let ins = [
            ("x", random(&mut r, DType::F32, &[4, 64], -1.0, 1.0)),
            ("pos", Tensor::from_vec(vec![0i64, 0, 4 * step, 0], &[4]).unwrap()),
        ];
        let got = gpu.run(&ins, &mut sg).unwrap();
        let want = cpu.run(&ins, &mut sc).unwrap();
        check(&got, &want, 1e-5, &format!("decoder step {step}"));
        assert_eq!(
            Arc::as_ptr(sg.get(stitch_core::VarId(0)).buffer()),
            buffer,
            "the cache is updated in place"
        );
    }
    let types: Vec<_> = [DType::F32, DType::I64]
        .iter()
        .zip([vec![4usize, 64], vec![4]])
        .map(|(d, s)| stitch_core::TensorType::new(*d, stitch_core::Shape::known(&s)))
        .collect();
    let plan = gpu.plan_for(&types).unwrap();
    assert_eq!(plan.report.placement.fallback_nodes, 0, "{:?}", plan.report.placement);
    assert!(plan.graph.nodes().iter().any(|n| matches!(n.op, Op::Fused(_))));
}

#[test]
#[ignore = "needs a CUDA GPU"]
fn profiler_on_the_gpu_sees_fallbacks_and_copies() {
    let mut r = rng(9);
    let mut g = Graph::new();
    let x = g.placeholder("x", DType::F16, [16, 32]);
    let t = g.tanh(x).unwrap();
    // The CUDA cumsum takes f32/f64/i32/i64: an f16 one falls back to the CPU.
    let c = g.cumsum(t, 1, false, false).unwrap();
    let y = g.exp(c).unwrap();
    let exe = Executable::compile_placed(&g, &[y], backends(), CompileOptions::default()).unwrap();
    let ins = [("x", random(&mut r, DType::F16, &[16, 32], -1.0, 1.0))];
    let mut state = exe.new_state();
    let mut outs = Vec::new();
    exe.run_into(&ins, &mut state, &mut outs).unwrap();
    let mut p = Profiler::new();
    p.run(&exe, &ins, &mut state, &mut outs, "run 0").unwrap();
    let steps = &p.runs[0].steps;
    assert_eq!(
        steps.iter().filter(|s| s.kind == StepKind::Fallback).count(),
        1,
        "{steps:#?}"
    );
    assert_eq!(steps.iter().filter(|s| s.kind == StepKind::CopyDeviceToHost).count(), 1);
    assert_eq!(steps.iter().filter(|s| s.kind == StepKind::CopyHostToDevice).count(), 1);
    assert!(steps
        .iter()
        .any(|s| s.device == "cuda:0" && s.kind == StepKind::Fused || s.kind == StepKind::Kernel));
    // GPU steps are timed with CUDA events: in stream order, not overlapping,
    // and within the run.
    let gpu: Vec<_> = steps.iter().filter(|s| s.device == "cuda:0").collect();
    for w in gpu.windows(2) {
        assert!(w[1].start_ns + 1_000 >= w[0].end_ns, "{:?} then {:?}", w[0], w[1]);
    }
    let last_end = steps.iter().map(|s| s.end_ns).max().unwrap();
    assert!(gpu.iter().all(|s| s.end_ns >= s.start_ns && s.end_ns <= last_end));
    assert!(gpu.iter().any(|s| s.duration_ns() > 0));
}

#[test]
#[ignore = "needs a CUDA GPU"]
fn out_of_memory_is_a_clear_error() {
    let b = CudaBackend::new(0).unwrap();
    let e = b.alloc(DType::F32, &[1 << 40]).unwrap_err().to_string();
    assert!(e.contains("cannot allocate") && e.contains("MiB free"), "{e}");
}

/// Random packed rows of `format`: random bytes with sane f16 scales.
fn packed(r: &mut ChaCha8Rng, format: stitch_core::QuantFormat, rows: usize, k: usize) -> Tensor {
    use stitch_core::QuantFormat as Q;
    let rb = format.row_bytes(k).unwrap();
    let (bb, nb) = (format.block_bytes(), k / format.block_elems());
    let mut bytes: Vec<u8> = (0..rows * rb).map(|_| r.gen()).collect();
    let f16_fields: &[usize] = match format {
        Q::Q8_0 | Q::Q4_0 | Q::Q5_0 => &[0],
        Q::Q4_1 | Q::Q5_1 | Q::Q4_K | Q::Q5_K => &[0, 2],
        Q::Q6_K => &[208],
    };
    for row in 0..rows {
        for blk in 0..nb {
            for &f in f16_fields {
                let v = stitch_core::half::f16::from_f32(r.gen_range(-0.05f32..0.05));
                let at = row * rb + blk * bb + f;
                bytes[at..at + 2].copy_from_slice(&v.to_bits().to_le_bytes());
            }
        }
    }
    Tensor::from_vec(bytes, &[rows, rb]).unwrap()
}

#[test]
#[ignore = "needs a CUDA GPU"]
fn dequantize_and_quant_matmul_every_format() {
    use stitch_core::QuantFormat as Q;
    // The CPU reference on its f32-activation path (its int8-activation GEMV
    // is an approximation the GPU kernel does not make).
    stitch_cpu::kernels::quant::set_quantize_activations(false);
    let mut r = rng(10);
    for format in [Q::Q8_0, Q::Q4_0, Q::Q4_1, Q::Q5_0, Q::Q5_1, Q::Q4_K, Q::Q5_K, Q::Q6_K] {
        let (n, k) = (40usize, 512usize);
        let w = packed(&mut r, format, n, k);
        for rows in [1usize, 3, 7, 16] {
            let mut g = Graph::new();
            let x = g.placeholder("x", DType::F32, [rows, k]);
            let wc = g.constant(w.clone());
            let y = g.quant_matmul(x, wc, format).unwrap();
            let d = g.dequantize(wc, format).unwrap();
            let ins = [("x", random(&mut r, DType::F32, &[rows, k], -1.0, 1.0))];
            let (got, want, fb) = both(&g, &[y, d], &ins, CompileOptions::default());
            assert_eq!(fb, 0, "{format:?}");
            check(&got[1..], &want[1..], 1e-6, &format!("dequantize {format:?}"));
            check(
                &got[..1],
                &want[..1],
                1e-5,
                &format!("quant_matmul {format:?} rows {rows}"),
            );
            // The same weight as an input, not a constant: not repacked, read
            // by the GGUF-layout kernels; the results must agree bit for bit.
            let mut g2 = Graph::new();
            let x2 = g2.placeholder("x", DType::F32, [rows, k]);
            let w2 = g2.placeholder("w", DType::U8, w.shape().to_vec());
            let y2 = g2.quant_matmul(x2, w2, format).unwrap();
            let ins2 = [ins[0].clone(), ("w", w.clone())];
            let (got2, _, _) = both(&g2, &[y2], &ins2, CompileOptions::default());
            assert_eq!(
                got2[0].to_f64_vec(),
                got[0].to_f64_vec(),
                "quant_matmul {format:?} rows {rows}: repacked and GGUF layouts differ"
            );
        }
    }
}

/// Like [`both`], with a given CUDA backend (to read its counters afterwards).
fn both_on(
    gpu_backend: &Arc<CudaBackend>,
    g: &Graph,
    outs: &[Value],
    inputs: &[(&str, Tensor)],
) -> (Vec<Tensor>, Vec<Tensor>, usize) {
    let list: Vec<Arc<dyn Backend>> = vec![gpu_backend.clone(), Arc::new(CpuBackend::new())];
    let gpu = Executable::compile_placed(g, outs, list, CompileOptions::default()).unwrap();
    let cpu = Executable::compile(g, outs, Arc::new(CpuBackend::new()), CompileOptions::default()).unwrap();
    let got = gpu.run(inputs, &mut gpu.new_state()).unwrap();
    let want = cpu.run(inputs, &mut cpu.new_state()).unwrap();
    let types: Vec<_> = inputs
        .iter()
        .map(|(_, t)| stitch_core::passes::specialize::type_of(t))
        .collect();
    let fallbacks = gpu.plan_for(&types).unwrap().report.placement.fallback_nodes;
    (got, want, fallbacks)
}

/// A random attention mask of `shape` (`[.., S, T]`): additive values in
/// [-2, 2), or booleans that keep at least each row's first key.
fn attention_mask(r: &mut ChaCha8Rng, dtype: DType, shape: [usize; 4]) -> Tensor {
    let tm = random(r, dtype, &shape, -2.0, 2.0);
    if dtype != DType::Bool {
        return tm;
    }
    let mut vals = tm.to_f64_vec();
    for row in vals.chunks_mut(shape[3]) {
        row[0] = 1.0;
    }
    Tensor::from_f64(DType::Bool, &vals, &shape).unwrap()
}

/// Tolerance of results in `dtype` relative to the largest reference value.
fn tol(dtype: DType) -> f64 {
    match dtype {
        DType::F16 => 4e-3,
        DType::BF16 => 2e-2,
        _ => 1e-5,
    }
}

#[test]
#[ignore = "needs a CUDA GPU"]
fn attention_in_16_bit_on_tensor_cores_and_split_kv() {
    let mut r = rng(20);
    let gpu = Arc::new(CudaBackend::new(0).expect("a CUDA GPU"));
    // stitch's own kernels (cuDNN's path has its own test below).
    gpu.set_attention_mode(stitch_cuda::AttentionMode::Own);
    // (dtype, b, h, hk, s, t, d, causal, mask, expected path: 0 tensor cores, 1 split-KV)
    let cases = [
        (
            DType::F16,
            2usize,
            8usize,
            2usize,
            100usize,
            100usize,
            64usize,
            true,
            None,
            0usize,
        ),
        (DType::F16, 1, 4, 4, 130, 200, 128, false, None, 0),
        (DType::BF16, 2, 6, 3, 77, 160, 128, true, None, 0),
        (DType::BF16, 1, 2, 1, 64, 64, 64, false, None, 0),
        // Fewer keys than queries, bottom-right causal: the first rows see no key (NaN, as on the CPU).
        (DType::F16, 1, 2, 2, 80, 40, 64, true, None, 0),
        (DType::F16, 2, 8, 2, 1, 300, 64, false, Some(DType::Bool), 1),
        (DType::BF16, 1, 9, 3, 3, 257, 64, true, None, 1),
        (DType::F16, 1, 4, 2, 40, 50, 96, false, Some(DType::F16), 1),
    ];
    for (dt, b, h, hk, s, t, d, causal, mask, path) in cases {
        let before = gpu.attention_paths();
        let mut g = Graph::new();
        let q = g.placeholder("q", dt, [b, h, s, d]);
        let k = g.placeholder("k", dt, [b, hk, t, d]);
        let v = g.placeholder("v", dt, [b, hk, t, d]);
        let mut ins = vec![
            ("q", random(&mut r, dt, &[b, h, s, d], -1.0, 1.0)),
            ("k", random(&mut r, dt, &[b, hk, t, d], -1.0, 1.0)),
            ("v", random(&mut r, dt, &[b, hk, t, d], -1.0, 1.0)),
        ];
        let m = mask.map(|mdt| {
            ins.push(("mask", attention_mask(&mut r, mdt, [1, 1, s, t])));
            g.placeholder("mask", mdt, [1, 1, s, t])
        });
        let y = g.sdpa(q, k, v, m, SdpaAttrs { scale: None, causal }).unwrap();
        let what = format!("sdpa {dt} b={b} h={h}/{hk} s={s} t={t} d={d} causal={causal} mask={mask:?}");
        let (got, want, fb) = both_on(&gpu, &g, &[y], &ins);
        assert_eq!(fb, 0, "{what}: fell back");
        check(&got, &want, tol(dt), &what);
        let after = gpu.attention_paths();
        assert!(
            after[path] > before[path],
            "{what}: expected kernel {path}, launches {before:?} -> {after:?}"
        );
    }
}

/// One sdpa of random 16-bit operands on `gpu` against the CPU.
#[allow(clippy::too_many_arguments)]
fn sdpa_case(
    gpu: &Arc<CudaBackend>,
    r: &mut ChaCha8Rng,
    dt: DType,
    (b, h, hk, s, t, d): (usize, usize, usize, usize, usize, usize),
    causal: bool,
) -> String {
    let mut g = Graph::new();
    let q = g.placeholder("q", dt, [b, h, s, d]);
    let k = g.placeholder("k", dt, [b, hk, t, d]);
    let v = g.placeholder("v", dt, [b, hk, t, d]);
    let ins = vec![
        ("q", random(r, dt, &[b, h, s, d], -1.0, 1.0)),
        ("k", random(r, dt, &[b, hk, t, d], -1.0, 1.0)),
        ("v", random(r, dt, &[b, hk, t, d], -1.0, 1.0)),
    ];
    let y = g.sdpa(q, k, v, None, SdpaAttrs { scale: None, causal }).unwrap();
    let what = format!("sdpa {dt} b={b} h={h}/{hk} s={s} t={t} d={d} causal={causal}");
    let (got, want, fb) = both_on(gpu, &g, &[y], &ins);
    assert_eq!(fb, 0, "{what}: fell back");
    check(&got, &want, tol(dt), &what);
    what
}

#[test]
#[ignore = "needs a CUDA GPU"]
fn attention_through_cudnn() {
    let mut r = rng(22);
    let gpu = Arc::new(CudaBackend::new(0).expect("a CUDA GPU"));
    gpu.set_attention_mode(stitch_cuda::AttentionMode::Cudnn);
    let cases = [
        (DType::F16, (2usize, 8usize, 2usize, 100usize, 100usize, 64usize), true),
        (DType::F16, (1, 4, 4, 130, 200, 128), false),
        (DType::BF16, (2, 6, 3, 77, 160, 128), true),
        (DType::BF16, (1, 2, 1, 64, 64, 64), false),
        (DType::F16, (1, 8, 8, 256, 256, 128), true),
        (DType::BF16, (2, 4, 2, 200, 200, 64), true),
        (DType::F16, (1, 4, 1, 96, 96, 64), false),
        (DType::BF16, (1, 4, 4, 33, 300, 128), false),
    ];
    for (dt, dims, causal) in cases {
        let before = gpu.attention_paths();
        let what = sdpa_case(&gpu, &mut r, dt, dims, causal);
        let after = gpu.attention_paths();
        println!("{what}: launches {before:?} -> {after:?}");
        assert!(
            after[3] > before[3],
            "{what}: cuDNN did not run ({}); launches {before:?} -> {after:?}",
            gpu.cudnn_status()
        );
    }
    println!("{}", gpu.cudnn_status());
    // Picked per shape by timing: either fused kernel, same results.
    gpu.set_attention_mode(stitch_cuda::AttentionMode::Auto);
    for (dt, dims, causal) in [
        (
            DType::F16,
            (2usize, 16usize, 4usize, 512usize, 512usize, 128usize),
            true,
        ),
        (DType::BF16, (1, 8, 8, 300, 300, 64), false),
    ] {
        let before = gpu.attention_paths();
        let what = sdpa_case(&gpu, &mut r, dt, dims, causal);
        let after = gpu.attention_paths();
        println!("auto {what}: launches {before:?} -> {after:?}");
        assert!(
            after[0] + after[3] > before[0] + before[3],
            "{what}: no fused kernel ran"
        );
    }
}

#[test]
#[ignore = "needs a CUDA GPU"]
fn attention_in_f32_split_kv_and_per_row() {
    let mut r = rng(21);
    let gpu = Arc::new(CudaBackend::new(0).expect("a CUDA GPU"));
    // (s, t, causal, mask, path: 1 split-KV, 2 one block per row)
    for (s, t, causal, mask, path) in [
        (1usize, 2000usize, false, None, 1usize),
        (4, 50, true, None, 1),
        (2, 70, false, Some(DType::F32), 1),
        (40, 90, false, Some(DType::Bool), 2),
        (33, 33, true, None, 2),
    ] {
        let (b, h, hk, d) = (2usize, 6usize, 2usize, 64usize);
        let before = gpu.attention_paths();
        let mut g = Graph::new();
        let q = g.placeholder("q", DType::F32, [b, h, s, d]);
        let k = g.placeholder("k", DType::F32, [b, hk, t, d]);
        let v = g.placeholder("v", DType::F32, [b, hk, t, d]);
        let mut ins = vec![
            ("q", random(&mut r, DType::F32, &[b, h, s, d], -1.0, 1.0)),
            ("k", random(&mut r, DType::F32, &[b, hk, t, d], -1.0, 1.0)),
            ("v", random(&mut r, DType::F32, &[b, hk, t, d], -1.0, 1.0)),
        ];
        let m = mask.map(|mdt| {
            ins.push(("mask", attention_mask(&mut r, mdt, [b, 1, s, t])));
            g.placeholder("mask", mdt, [b, 1, s, t])
        });
        let y = g
            .sdpa(
                q,
                k,
                v,
                m,
                SdpaAttrs {
                    scale: Some(0.3),
                    causal,
                },
            )
            .unwrap();
        let what = format!("f32 sdpa s={s} t={t} causal={causal} mask={mask:?}");
        let (got, want, fb) = both_on(&gpu, &g, &[y], &ins);
        assert_eq!(fb, 0, "{what}: fell back");
        check(&got, &want, 1e-5, &what);
        let after = gpu.attention_paths();
        assert!(
            after[path] > before[path],
            "{what}: expected kernel {path}, launches {before:?} -> {after:?}"
        );
    }
}

#[test]
#[ignore = "needs a CUDA GPU"]
fn matmul_and_gemm_through_cublaslt_in_every_float_type() {
    let mut r = rng(22);
    for dt in [DType::F32, DType::F16, DType::BF16] {
        let cases: Vec<(Vec<usize>, Vec<usize>, bool, bool)> = vec![
            (vec![37, 64], vec![64, 23], false, false),
            (vec![3, 37, 64], vec![3, 64, 23], false, false),
            (vec![3, 37, 64], vec![64, 23], false, false),
            (vec![3, 64, 37], vec![64, 23], true, false),
            (vec![2, 64, 37], vec![2, 23, 64], true, true),
            (vec![2, 1, 5, 8], vec![3, 8, 6], false, false),
        ];
        for (sa, sb, ta, tb) in cases {
            let mut g = Graph::new();
            let a = g.placeholder("a", dt, sa.as_slice());
            let b = g.placeholder("b", dt, sb.as_slice());
            let y = g.matmul_t(a, b, ta, tb).unwrap();
            let ins = [
                ("a", random(&mut r, dt, &sa, -1.0, 1.0)),
                ("b", random(&mut r, dt, &sb, -1.0, 1.0)),
            ];
            let (got, want, fb) = both(&g, &[y], &ins, CompileOptions::default());
            assert_eq!(fb, 0, "{dt}");
            check(
                &got,
                &want,
                tol(dt),
                &format!("{dt} matmul {sa:?} x {sb:?} ({ta}, {tb})"),
            );
        }
        // Gemm: bias epilogue (vector C, beta 1), broadcast C with beta, no C.
        let (m, k, n) = (45usize, 70usize, 33usize);
        for (c_shape, alpha, beta, ta, tb) in [
            (Some(vec![n]), 1.0, 1.0, false, false),
            (Some(vec![1, n]), 0.5, 1.0, true, false),
            (Some(vec![m, 1]), 1.5, 0.25, false, true),
            (Some(vec![m, n]), 1.0, -2.0, true, true),
            (None, 2.0, 0.0, false, false),
        ] {
            let mut g = Graph::new();
            let sa = if ta { vec![k, m] } else { vec![m, k] };
            let sb = if tb { vec![n, k] } else { vec![k, n] };
            let a = g.placeholder("a", dt, sa.as_slice());
            let b = g.placeholder("b", dt, sb.as_slice());
            let mut ins = vec![
                ("a", random(&mut r, dt, &sa, -1.0, 1.0)),
                ("b", random(&mut r, dt, &sb, -1.0, 1.0)),
            ];
            let c = c_shape.as_ref().map(|cs| {
                ins.push(("c", random(&mut r, dt, cs, -1.0, 1.0)));
                g.placeholder("c", dt, cs.as_slice())
            });
            let y = g.gemm(a, b, c, alpha, beta, ta, tb).unwrap();
            let (got, want, fb) = both(&g, &[y], &ins, CompileOptions::default());
            assert_eq!(fb, 0, "{dt} gemm");
            check(
                &got,
                &want,
                tol(dt),
                &format!("{dt} gemm c={c_shape:?} alpha={alpha} beta={beta} ({ta}, {tb})"),
            );
        }
    }
}

#[test]
#[ignore = "needs a CUDA GPU"]
fn fused_regions_in_16_bit_floats() {
    let mut r = rng(23);
    for dt in [DType::F16, DType::BF16] {
        let mut g = Graph::new();
        let x = g.placeholder("x", dt, [48, 130]);
        let b = g.placeholder("b", dt, [130]);
        let t = g.tanh(x).unwrap();
        let s = g.sigmoid(x).unwrap();
        let m = g.mul(t, s).unwrap();
        let a = g.add(m, b).unwrap();
        let z = g.unary(UnaryOp::Silu, a).unwrap();
        let red = g.reduce(ReduceOp::Sum, z, &[-1], false).unwrap();
        let c = g.cast(z, DType::F32).unwrap();
        let ins = [
            ("x", random(&mut r, dt, &[48, 130], -3.0, 3.0)),
            ("b", random(&mut r, dt, &[130], -1.0, 1.0)),
        ];
        for fuse in [true, false] {
            let opts = CompileOptions {
                fuse,
                ..Default::default()
            };
            let (got, want, fb) = both(&g, &[z, red, c], &ins, opts);
            assert_eq!(fb, 0, "{dt}");
            check(&got, &want, tol(dt), &format!("{dt} chain (fuse {fuse})"));
        }
    }
}

#[test]
#[ignore = "needs a CUDA GPU"]
fn the_rest_of_the_op_set_matches_the_cpu() {
    use stitch_core::ops::{ConvAttrs, PadMode, PoolAttrs, ScatterReduction};
    let mut r = rng(24);
    let mut g = Graph::new();
    let x = g.placeholder("x", DType::F32, [3, 5, 7]);
    let xi = g.placeholder("xi", DType::I64, [4, 6]);
    let mut outs = vec![
        g.tile(x, &[2, 1, 3]).unwrap(),
        g.pad(x, &[1, 0, 2, 0, -1, 1], PadMode::Constant, 0.75).unwrap(),
        g.pad(x, &[0, 2, 3, 1, 0, 2], PadMode::Reflect, 0.0).unwrap(),
        g.pad(x, &[2, 1, 0, 0, 3, 4], PadMode::Edge, 0.0).unwrap(),
        g.range(2.0, 11.5, 1.5, DType::F32).unwrap(),
        g.argmax(x, 1, false).unwrap(),
        g.argmax(xi, 0, true).unwrap(),
        g.cumsum(x, 2, false, false).unwrap(),
        g.cumsum(xi, 1, true, true).unwrap(),
    ];
    let argmin = g
        .add_op(
            Op::ArgReduce {
                op: stitch_core::ops::ArgReduceOp::ArgMin,
                axis: -1,
                keepdims: true,
                select_last_index: true,
            },
            &[xi],
        )
        .unwrap();
    outs.push(argmin);
    let (v, i) = g.topk(x, 3, 1, true).unwrap();
    outs.extend([v, i]);
    let (v, i) = g.topk(xi, 4, -1, false).unwrap();
    outs.extend([v, i]);
    let idx = g.placeholder("idx", DType::I64, [3, 5, 4]);
    outs.push(g.gather_elements(x, idx, 2).unwrap());
    let oh = g.placeholder("oh", DType::I32, [4, 3]);
    outs.push(g.one_hot(oh, 5, 1, DType::F32).unwrap());
    let sidx = g.placeholder("sidx", DType::I64, [2, 6]);
    let upd = g.placeholder("upd", DType::I64, [2, 6]);
    for red in [ScatterReduction::None, ScatterReduction::Add, ScatterReduction::Max] {
        outs.push(g.scatter_elements(xi, sidx, upd, 0, red).unwrap());
    }
    // Convolution and pooling, 1-D and 2-D.
    let img = g.placeholder("img", DType::F32, [2, 4, 9, 8]);
    let w2 = g.placeholder("w2", DType::F32, [6, 2, 3, 2]);
    let b2 = g.placeholder("b2", DType::F32, [6]);
    let conv2 = ConvAttrs {
        strides: vec![2, 1],
        pads: vec![1, 0, 2, 1],
        dilations: vec![1, 2],
        groups: 2,
    };
    outs.push(g.conv(img, w2, Some(b2), conv2).unwrap());
    let sig = g.placeholder("sig", DType::F32, [2, 3, 20]);
    let w1 = g.placeholder("w1", DType::F32, [4, 3, 5]);
    let mut conv1 = ConvAttrs::new(1);
    conv1.pads = vec![2, 1];
    conv1.strides = vec![3];
    outs.push(g.conv(sig, w1, None, conv1).unwrap());
    let mut pool = PoolAttrs::new(&[3, 2]);
    pool.strides = vec![2, 2];
    pool.pads = vec![1, 0, 1, 1];
    pool.ceil_mode = true;
    outs.push(g.max_pool(img, pool.clone()).unwrap());
    outs.push(g.avg_pool(img, pool.clone()).unwrap());
    pool.count_include_pad = true;
    outs.push(g.avg_pool(img, pool).unwrap());
    let mut pool1 = PoolAttrs::new(&[4]);
    pool1.strides = vec![3];
    outs.push(g.avg_pool(sig, pool1).unwrap());
    let ins = [
        ("x", random(&mut r, DType::F32, &[3, 5, 7], -2.0, 2.0)),
        // Few distinct integers: ties for arg max/min and top-k.
        ("xi", random(&mut r, DType::I64, &[4, 6], -3.0, 4.0)),
        ("idx", random(&mut r, DType::I64, &[3, 5, 4], -7.0, 7.0)),
        ("oh", random(&mut r, DType::I32, &[4, 3], -5.0, 7.0)),
        // Duplicate targets: later updates win, in order.
        ("sidx", random(&mut r, DType::I64, &[2, 6], -4.0, 4.0)),
        ("upd", random(&mut r, DType::I64, &[2, 6], -50.0, 50.0)),
        ("img", random(&mut r, DType::F32, &[2, 4, 9, 8], -1.0, 1.0)),
        ("w2", random(&mut r, DType::F32, &[6, 2, 3, 2], -1.0, 1.0)),
        ("b2", random(&mut r, DType::F32, &[6], -1.0, 1.0)),
        ("sig", random(&mut r, DType::F32, &[2, 3, 20], -1.0, 1.0)),
        ("w1", random(&mut r, DType::F32, &[4, 3, 5], -1.0, 1.0)),
    ];
    let (got, want, fb) = both(&g, &outs, &ins, CompileOptions::default());
    assert_eq!(fb, 0, "nothing falls back to the CPU");
    for (k, (a, b)) in got.iter().zip(&want).enumerate() {
        let e = rel_err(a, b);
        assert!(
            e <= 1e-5,
            "output {k} ({:?}): relative error {e:.3e}",
            g.node(outs[k].node).op.kind()
        );
    }
}

/// `act(x @ W + b)` with constant W and b becomes one gemm with the
/// activation as its epilogue: ReLU and tanh-GELU through cuBLASLt's
/// RELU_BIAS / GELU_BIAS epilogues, exact GELU (which cuBLASLt lacks) as a
/// kernel after the bias epilogue; f32 and f16, against the CPU.
#[test]
#[ignore = "needs a CUDA GPU"]
fn gemm_bias_and_activation_epilogues() {
    let mut r = rng(40);
    for dtype in [DType::F32, DType::F16] {
        for act in [UnaryOp::Relu, UnaryOp::Gelu, UnaryOp::GeluTanh] {
            let mut g = Graph::new();
            let x = g.placeholder("x", dtype, [3, 37, 64]);
            let w = g.constant(random(&mut r, dtype, &[64, 96], -0.5, 0.5));
            let b = g.constant(random(&mut r, dtype, &[96], -1.0, 1.0));
            let y = g.matmul(x, w).unwrap();
            let y = g.add(y, b).unwrap();
            let y = g.add_op(Op::Unary(act), &[y]).unwrap();
            let ins = [("x", random(&mut r, dtype, &[3, 37, 64], -1.0, 1.0))];
            let (got, want, fb) = both(&g, &[y], &ins, CompileOptions::default());
            assert_eq!(fb, 0, "{dtype} {act:?}: nothing falls back");
            let gpu = Executable::compile_placed(&g, &[y], backends(), CompileOptions::default()).unwrap();
            let plan = gpu
                .plan_for(&[stitch_core::passes::specialize::type_of(&ins[0].1)])
                .unwrap();
            assert_eq!(plan.report.rewritten, 2, "{dtype} {act:?}: one gemm with its epilogue");
            let tol = if dtype == DType::F16 { 5e-3 } else { 1e-5 };
            check(&got, &want, tol, &format!("gemm + {act:?} {dtype}"));
        }
    }
}
