//! Composite ops: the CPU's fused kernel (`run_op`) and the decomposition into
//! primitives (`run_op_decomposed`) must agree with each other and with an f64
//! reference written here, for softmax, log_softmax, layer_norm, rms_norm,
//! gelu, gelu_tanh, silu, sigmoid, rsqrt, clamp, gemm and sdpa (which the CPU
//! always decomposes).

mod common;

use common::*;
use stitch_core::ops::{SdpaAttrs, UnaryOp};
use stitch_core::{DType, Op, Tensor};
use stitch_cpu::kernels::has_fused;

const FLOATS: [DType; 4] = [DType::F32, DType::F64, DType::F16, DType::BF16];

/// Tolerance for a decomposition: every primitive rounds its result to the
/// dtype, so f16/bf16 chains drift by several ulps.
fn composite_tolerance(dtype: DType) -> (f64, f64) {
    match dtype {
        DType::F64 => (1e-10, 1e-10),
        DType::F32 => (2e-5, 2e-5),
        DType::F16 => (1e-2, 1e-2),
        DType::BF16 => (5e-2, 5e-2),
        _ => (0.0, 0.0),
    }
}

/// Runs `op` fused and decomposed and checks both against `want` and each other.
/// A fused CPU kernel rounds once, so it must meet the dtype's own tolerance
/// (`loose_fused` relaxes that for kernels that may accumulate in half precision).
fn check(op: Op, inputs: &[Tensor], want: &[f64], shape: &[usize], loose_fused: bool, what: &str) {
    let fused = run_op(op.clone(), inputs)
        .unwrap_or_else(|e| panic!("{what}: fused: {e}"))
        .remove(0);
    let dec = run_op_decomposed(op.clone(), inputs)
        .unwrap_or_else(|e| panic!("{what}: decomposed: {e}"))
        .remove(0);
    let dtype = inputs[0].dtype();
    assert_eq!(fused.dtype(), dtype, "{what}: fused dtype");
    assert_eq!(dec.dtype(), dtype, "{what}: decomposed dtype");
    let (rt, at) = composite_tolerance(dtype);
    if has_fused(&op) && !loose_fused {
        assert_close(&fused, want, shape, &format!("{what}: fused vs reference"));
    } else {
        assert_close_tol(&fused, want, shape, rt, at, &format!("{what}: fused vs reference"));
    }
    assert_close_tol(&dec, want, shape, rt, at, &format!("{what}: decomposed vs reference"));
    assert_close_tol(
        &dec,
        &fused.to_f64_vec(),
        shape,
        rt,
        at,
        &format!("{what}: decomposed vs fused"),
    );
}

fn norm_axis(axis: i64, rank: usize) -> usize {
    if axis < 0 {
        (axis + rank as i64) as usize
    } else {
        axis as usize
    }
}

/// Softmax / log-softmax of `x` along `ax`, in f64.
fn softmax_ref(x: &[f64], shape: &[usize], ax: usize, log: bool) -> Vec<f64> {
    let n = shape[ax];
    let inner: usize = shape[ax + 1..].iter().product();
    let mut out = vec![0.0; x.len()];
    for o in 0..shape[..ax].iter().product::<usize>() {
        for i in 0..inner {
            let at = |k: usize| (o * n + k) * inner + i;
            let m = (0..n).map(|k| x[at(k)]).fold(f64::NEG_INFINITY, f64::max);
            let s: f64 = (0..n).map(|k| (x[at(k)] - m).exp()).sum();
            for k in 0..n {
                out[at(k)] = if log {
                    x[at(k)] - m - s.ln()
                } else {
                    (x[at(k)] - m).exp() / s
                };
            }
        }
    }
    out
}

#[test]
fn softmax_and_log_softmax_fused_and_decomposed_agree_with_reference() {
    let mut r = rng(41);
    for dtype in FLOATS {
        for (shape, axis) in [(vec![4usize, 9], -1i64), (vec![3, 5, 4], 1), (vec![6, 2], 0)] {
            let x = random_range(&mut r, dtype, &shape, -4.0, 4.0);
            let ax = norm_axis(axis, shape.len());
            for log in [false, true] {
                let want = softmax_ref(&x.to_f64_vec(), &shape, ax, log);
                let op = if log {
                    Op::LogSoftmax { axis }
                } else {
                    Op::Softmax { axis }
                };
                check(
                    op,
                    std::slice::from_ref(&x),
                    &want,
                    &shape,
                    false,
                    &format!("softmax {dtype} {shape:?} axis {axis} log {log}"),
                );
            }
        }
    }
}

/// Layer norm (or RMS norm) over axes `ax..` with right-aligned scale and bias, in f64.
fn norm_ref(x: &Tensor, scale: &Tensor, bias: Option<&Tensor>, ax: usize, eps: f64, rms: bool) -> Vec<f64> {
    let xv = x.to_f64_vec();
    let ns = &x.shape()[ax..];
    let n: usize = ns.iter().product();
    let sv = scale.to_f64_vec();
    let bv = bias.map(|b| (b.to_f64_vec(), b.shape().to_vec()));
    let mut out = Vec::with_capacity(xv.len());
    for row in xv.chunks(n) {
        let mean = if rms { 0.0 } else { row.iter().sum::<f64>() / n as f64 };
        let var = row.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / n as f64;
        for (k, &v) in row.iter().enumerate() {
            let idx = unravel(k, ns);
            let mut y = (v - mean) / (var + eps).sqrt() * sv[broadcast_index(&idx, scale.shape())];
            if let Some((bv, bs)) = &bv {
                y += bv[broadcast_index(&idx, bs)];
            }
            out.push(y);
        }
    }
    out
}

#[test]
fn layer_norm_fused_and_decomposed_agree_with_reference() {
    let mut r = rng(42);
    for dtype in FLOATS {
        for axis in [-1i64, -2] {
            for with_bias in [true, false] {
                let shape = [3usize, 4, 6];
                let ax = norm_axis(axis, 3);
                let x = random(&mut r, dtype, &shape);
                let pshape = &shape[ax..];
                let scale = random_range(&mut r, dtype, pshape, 0.5, 1.5);
                let bias = with_bias.then(|| random(&mut r, dtype, pshape));
                let want = norm_ref(&x, &scale, bias.as_ref(), ax, 1e-5, false);
                let mut ins = vec![x, scale];
                ins.extend(bias);
                let what = format!("layer_norm {dtype} axis {axis} bias {with_bias}");
                check(Op::LayerNorm { axis, epsilon: 1e-5 }, &ins, &want, &shape, false, &what);
            }
        }
    }
}

#[test]
fn rms_norm_fused_and_decomposed_agree_with_reference() {
    let mut r = rng(43);
    for dtype in FLOATS {
        for (shape, axis, sshape) in [(vec![5usize, 8], -1i64, vec![8usize]), (vec![2, 3, 4], -2, vec![4])] {
            let ax = norm_axis(axis, shape.len());
            let x = random(&mut r, dtype, &shape);
            let scale = random(&mut r, dtype, &sshape);
            let want = norm_ref(&x, &scale, None, ax, 1e-6, true);
            let what = format!("rms_norm {dtype} {shape:?} axis {axis}");
            check(
                Op::RmsNorm { axis, epsilon: 1e-6 },
                &[x, scale],
                &want,
                &shape,
                false,
                &what,
            );
        }
    }
}

/// erf by its Taylor series: accurate to ~1e-14 for the |x| <= 2.2 used here.
fn erf(x: f64) -> f64 {
    let mut term = x;
    let mut sum = x;
    for n in 1..80 {
        term *= -x * x / n as f64;
        sum += term / (2 * n + 1) as f64;
    }
    sum * 2.0 / std::f64::consts::PI.sqrt()
}

#[test]
fn reference_erf_matches_known_values() {
    assert!((erf(0.5) - 0.520_499_877_813_046_5).abs() < 1e-14);
    assert!((erf(-2.0) + 0.995_322_265_018_952_7).abs() < 1e-14);
}

#[test]
fn composite_unary_ops_fused_and_decomposed_agree_with_reference() {
    let mut r = rng(44);
    let sigmoid = |x: f64| 1.0 / (1.0 + (-x).exp());
    type Reference<'a> = &'a dyn Fn(f64) -> f64;
    let cases: [(UnaryOp, f64, f64, Reference); 5] = [
        (UnaryOp::Gelu, -3.0, 3.0, &|x| 0.5 * x * (1.0 + erf(x / 2f64.sqrt()))),
        (UnaryOp::GeluTanh, -3.0, 3.0, &|x| {
            0.5 * x * (1.0 + ((2.0 / std::f64::consts::PI).sqrt() * (x + 0.044715 * x * x * x)).tanh())
        }),
        (UnaryOp::Silu, -6.0, 6.0, &|x| x * sigmoid(x)),
        (UnaryOp::Sigmoid, -6.0, 6.0, &sigmoid),
        (UnaryOp::Rsqrt, 0.1, 4.0, &|x| 1.0 / x.sqrt()),
    ];
    for dtype in FLOATS {
        for (u, lo, hi, f) in cases {
            for shape in [vec![7usize, 5], vec![1], vec![0, 3]] {
                let x = random_range(&mut r, dtype, &shape, lo, hi);
                let want: Vec<f64> = x.to_f64_vec().into_iter().map(f).collect();
                check(
                    Op::Unary(u),
                    std::slice::from_ref(&x),
                    &want,
                    &shape,
                    false,
                    &format!("{} {dtype} {shape:?}", u.name()),
                );
            }
            // A strided input.
            let x = random_range(&mut r, dtype, &[6, 4], lo, hi).permute(&[1, 0]).unwrap();
            let want: Vec<f64> = x.to_f64_vec().into_iter().map(f).collect();
            check(
                Op::Unary(u),
                std::slice::from_ref(&x),
                &want,
                &[4, 6],
                false,
                &format!("{} {dtype} strided", u.name()),
            );
        }
    }
}

#[test]
fn clamp_fused_and_decomposed_agree_with_reference_and_keep_nan() {
    let mut r = rng(45);
    let bounds = [
        (Some(-0.5), Some(1.0)),
        (Some(0.25), None),
        (None, Some(-1.0)),
        (Some(1.0), Some(1.0)),
    ];
    for dtype in [
        DType::F32,
        DType::F64,
        DType::F16,
        DType::BF16,
        DType::I32,
        DType::I8,
        DType::U8,
        DType::I64,
    ] {
        for (min, max) in bounds {
            let mut vals = random(&mut r, dtype, &[5, 6]).to_f64_vec();
            if dtype.is_float() {
                vals[3] = f64::NAN;
            }
            let x = Tensor::from_f64(dtype, &vals, &[5, 6]).unwrap();
            // Integer inputs see the bounds converted to their dtype.
            let lo = min.map(|v: f64| Tensor::from_f64(dtype, &[v], &[1]).unwrap().to_f64_vec()[0]);
            let hi = max.map(|v: f64| Tensor::from_f64(dtype, &[v], &[1]).unwrap().to_f64_vec()[0]);
            let want: Vec<f64> = vals
                .iter()
                .map(|&v| {
                    if v.is_nan() {
                        return v;
                    }
                    let v = lo.map_or(v, |l| v.max(l));
                    hi.map_or(v, |h| v.min(h))
                })
                .collect();
            check(
                Op::Clamp { min, max },
                std::slice::from_ref(&x),
                &want,
                &[5, 6],
                false,
                &format!("clamp {dtype} {min:?} {max:?}"),
            );
        }
    }
}

#[test]
fn gemm_fused_and_decomposed_agree_with_reference() {
    let mut r = rng(46);
    let (m, k, n) = (5usize, 7usize, 4usize);
    for dtype in FLOATS {
        for (ta, tb) in [(false, false), (true, false), (false, true), (true, true)] {
            for c_shape in [None, Some(vec![n]), Some(vec![m, 1]), Some(vec![m, n])] {
                for (alpha, beta) in [(1.0, 1.0), (0.5, -2.0)] {
                    let a = random(&mut r, dtype, &if ta { [k, m] } else { [m, k] });
                    let b = random(&mut r, dtype, &if tb { [n, k] } else { [k, n] });
                    let c = c_shape.as_ref().map(|s| random(&mut r, dtype, s));
                    let (av, bv) = (a.to_f64_vec(), b.to_f64_vec());
                    let cv = c.as_ref().map(Tensor::to_f64_vec);
                    let want: Vec<f64> = (0..m * n)
                        .map(|i| {
                            let (row, col) = (i / n, i % n);
                            let dot: f64 = (0..k)
                                .map(|p| {
                                    let x = if ta { av[p * m + row] } else { av[row * k + p] };
                                    let y = if tb { bv[col * k + p] } else { bv[p * n + col] };
                                    x * y
                                })
                                .sum();
                            let bias = match (&cv, &c_shape) {
                                (Some(cv), Some(s)) => beta * cv[broadcast_index(&[row, col], s)],
                                _ => 0.0,
                            };
                            alpha * dot + bias
                        })
                        .collect();
                    let mut ins = vec![a, b];
                    ins.extend(c);
                    let op = Op::Gemm {
                        alpha,
                        beta,
                        transpose_a: ta,
                        transpose_b: tb,
                        activation: None,
                    };
                    // Half-precision matmul may accumulate in half precision: decomposition tolerance.
                    let loose = matches!(dtype, DType::F16 | DType::BF16);
                    let what = format!("gemm {dtype} ta {ta} tb {tb} c {c_shape:?} alpha {alpha} beta {beta}");
                    check(op, &ins, &want, &[m, n], loose, &what);
                }
            }
        }
    }
}

/// The mask argument of an sdpa case.
enum Mask {
    None,
    /// Bool, true = may attend; shape broadcastable to [B, Hq, Lq, Lk].
    Bool(Vec<usize>),
    /// Added to the scores; same shape rules.
    Additive(Vec<usize>),
    /// Bool allowing the first `n` keys of every row (a KV cache filled up to
    /// a position): the kernel's dense path.
    Prefix(Vec<usize>, usize),
}

/// Reference attention: scores = q·k * scale, mask, softmax over keys, @ v.
fn sdpa_ref(q: &Tensor, k: &Tensor, v: &Tensor, mask: Option<&Tensor>, scale: f64, causal: bool) -> Vec<f64> {
    let (qs, ks, vs) = (q.shape(), k.shape(), v.shape());
    let (b, hq, lq, d) = (qs[0], qs[1], qs[2], qs[3]);
    let (hkv, lk, dv) = (ks[1], ks[2], vs[3]);
    let group = hq / hkv;
    let (qv, kv, vv) = (q.to_f64_vec(), k.to_f64_vec(), v.to_f64_vec());
    let mv = mask.map(|m| (m.to_f64_vec(), m.shape().to_vec(), m.dtype() == DType::Bool));
    let mut out = vec![0.0; b * hq * lq * dv];
    for bi in 0..b {
        for h in 0..hq {
            let kh = h / group;
            for i in 0..lq {
                let mut scores = vec![0.0; lk];
                for (j, s) in scores.iter_mut().enumerate() {
                    let dot: f64 = (0..d)
                        .map(|c| qv[ravel(&[bi, h, i, c], qs)] * kv[ravel(&[bi, kh, j, c], ks)])
                        .sum();
                    *s = dot * scale;
                    if let Some((mv, ms, is_bool)) = &mv {
                        let mval = mv[broadcast_index(&[bi, h, i, j], ms)];
                        if *is_bool {
                            if mval == 0.0 {
                                *s = f64::NEG_INFINITY;
                            }
                        } else {
                            *s += mval;
                        }
                    }
                    if causal && j > i + (lk - lq) {
                        *s = f64::NEG_INFINITY;
                    }
                }
                let p = softmax_ref(&scores, &[lk], 0, false);
                for c in 0..dv {
                    out[ravel(&[bi, h, i, c], &[b, hq, lq, dv])] =
                        (0..lk).map(|j| p[j] * vv[ravel(&[bi, kh, j, c], vs)]).sum();
                }
            }
        }
    }
    out
}

fn run_sdpa_case(
    r: &mut rand_chacha::ChaCha8Rng,
    dtype: DType,
    dims: [usize; 6],
    mask: &Mask,
    attrs: SdpaAttrs,
    what: &str,
) {
    let [b, hq, hkv, lq, lk, d] = dims;
    let dv = d + 1;
    let q = random(r, dtype, &[b, hq, lq, d]);
    let k = random(r, dtype, &[b, hkv, lk, d]);
    let v = random(r, dtype, &[b, hkv, lk, dv]);
    let m = match mask {
        Mask::None => None,
        Mask::Bool(s) => {
            // Random, but every query row keeps key 0 so no row is fully masked by chance.
            let mut t = random(r, DType::Bool, s).to_f64_vec();
            let lk_m = *s.last().unwrap();
            for (i, x) in t.iter_mut().enumerate() {
                if i % lk_m == 0 {
                    *x = 1.0;
                }
            }
            Some(Tensor::from_f64(DType::Bool, &t, s).unwrap())
        }
        Mask::Additive(s) => Some(random(r, dtype, s)),
        Mask::Prefix(s, n) => {
            let lk_m = *s.last().unwrap();
            let t: Vec<f64> = (0..s.iter().product::<usize>())
                .map(|i| f64::from(u8::from(i % lk_m < *n)))
                .collect();
            Some(Tensor::from_f64(DType::Bool, &t, s).unwrap())
        }
    };
    let scale = attrs.scale.unwrap_or(1.0 / (d as f64).sqrt());
    let want = sdpa_ref(&q, &k, &v, m.as_ref(), scale, attrs.causal);
    let mut ins = vec![q, k, v];
    ins.extend(m);
    check(
        Op::Sdpa(attrs),
        &ins,
        &want,
        &[b, hq, lq, dv],
        false,
        &format!("sdpa {dtype} {what}"),
    );
}

#[test]
fn sdpa_with_masks_causal_alignment_and_grouped_heads_agrees_with_reference() {
    let mut r = rng(47);
    let plain = SdpaAttrs {
        scale: None,
        causal: false,
    };
    let causal = SdpaAttrs {
        scale: None,
        causal: true,
    };
    for dtype in FLOATS {
        // dims: [B, Hq, Hkv, Lq, Lk, D]
        run_sdpa_case(&mut r, dtype, [2, 2, 2, 3, 5, 4], &Mask::None, plain, "no mask");
        run_sdpa_case(
            &mut r,
            dtype,
            [1, 2, 2, 4, 6, 3],
            &Mask::None,
            SdpaAttrs {
                scale: Some(0.3),
                causal: false,
            },
            "explicit scale",
        );
        run_sdpa_case(
            &mut r,
            dtype,
            [2, 2, 2, 3, 6, 4],
            &Mask::Bool(vec![2, 1, 3, 6]),
            plain,
            "bool mask",
        );
        run_sdpa_case(
            &mut r,
            dtype,
            [1, 2, 2, 3, 5, 4],
            &Mask::Bool(vec![5]),
            plain,
            "bool key mask",
        );
        run_sdpa_case(
            &mut r,
            dtype,
            [2, 2, 2, 4, 5, 3],
            &Mask::Additive(vec![1, 1, 4, 5]),
            plain,
            "additive mask",
        );
        run_sdpa_case(
            &mut r,
            dtype,
            [1, 2, 2, 5, 5, 4],
            &Mask::None,
            causal,
            "causal Lq == Lk",
        );
        run_sdpa_case(
            &mut r,
            dtype,
            [1, 2, 2, 3, 7, 4],
            &Mask::None,
            causal,
            "causal Lq < Lk (bottom-right)",
        );
        run_sdpa_case(
            &mut r,
            dtype,
            [1, 2, 2, 1, 6, 4],
            &Mask::None,
            causal,
            "causal decode step",
        );
        run_sdpa_case(
            &mut r,
            dtype,
            [2, 4, 2, 3, 5, 4],
            &Mask::None,
            plain,
            "grouped heads 4/2",
        );
        run_sdpa_case(
            &mut r,
            dtype,
            [1, 4, 2, 4, 6, 4],
            &Mask::Additive(vec![4, 6]),
            causal,
            "grouped causal with additive mask",
        );
        run_sdpa_case(
            &mut r,
            dtype,
            [1, 4, 2, 3, 3, 2],
            &Mask::Bool(vec![1, 4, 3, 3]),
            causal,
            "grouped causal with bool mask",
        );
        // Decode over a KV cache: a prefix mask, grouped heads, head sizes
        // beyond the vector widths with remainders (dv = d + 1).
        run_sdpa_case(
            &mut r,
            dtype,
            [1, 9, 3, 1, 200, 64],
            &Mask::Prefix(vec![1, 1, 1, 200], 131),
            plain,
            "decode over a cache, prefix mask",
        );
        run_sdpa_case(
            &mut r,
            dtype,
            [2, 2, 2, 3, 40, 21],
            &Mask::Prefix(vec![2, 1, 3, 40], 17),
            causal,
            "few rows, causal with prefix mask",
        );
        // Enough query rows for the blocked f32 path: several row blocks, a
        // partial last block, causal limits inside a block, grouped heads.
        run_sdpa_case(&mut r, dtype, [1, 3, 1, 9, 70, 5], &Mask::None, plain, "blocked, plain");
        run_sdpa_case(
            &mut r,
            dtype,
            [2, 4, 2, 40, 40, 8],
            &Mask::Additive(vec![2, 1, 40, 40]),
            causal,
            "blocked, grouped causal with additive mask",
        );
        run_sdpa_case(
            &mut r,
            dtype,
            [1, 2, 2, 37, 50, 6],
            &Mask::Bool(vec![1, 2, 37, 50]),
            causal,
            "blocked, causal Lq < Lk with bool mask",
        );
        run_sdpa_case(
            &mut r,
            dtype,
            [1, 2, 1, 33, 20, 4],
            &Mask::Bool(vec![20]),
            SdpaAttrs {
                scale: Some(0.7),
                causal: false,
            },
            "blocked, key mask and explicit scale",
        );
    }
}

#[test]
fn sdpa_fully_masked_rows_in_a_row_block_give_nan_and_leave_the_others() {
    // Twelve query rows (the blocked f32 path): rows 3 and 7 attend to nothing.
    let mut r = rng(49);
    let (q, k, v) = (
        random(&mut r, DType::F32, &[1, 2, 12, 4]),
        random(&mut r, DType::F32, &[1, 2, 6, 4]),
        random(&mut r, DType::F32, &[1, 2, 6, 3]),
    );
    let mask: Vec<f64> = (0..12 * 6)
        .map(|i| {
            let (row, key) = (i / 6, i % 6);
            if row == 3 || row == 7 || (row + key) % 3 == 0 {
                f64::NEG_INFINITY
            } else {
                0.5 * key as f64
            }
        })
        .collect();
    let mask = Tensor::from_f64(DType::F32, &mask, &[12, 6]).unwrap();
    let want = sdpa_ref(&q, &k, &v, Some(&mask), 0.5, false);
    let nan_rows: Vec<usize> = (0..24)
        .filter(|&row| want[row * 3..row * 3 + 3].iter().all(|x| x.is_nan()))
        .collect();
    assert_eq!(nan_rows, [3, 7, 15, 19]);
    check(
        Op::Sdpa(SdpaAttrs {
            scale: Some(0.5),
            causal: false,
        }),
        &[q, k, v, mask],
        &want,
        &[1, 2, 12, 3],
        false,
        "sdpa fully masked rows, blocked",
    );
}

#[test]
fn sdpa_fully_masked_row_gives_nan_in_both_paths() {
    let mut r = rng(48);
    let (q, k, v) = (
        random(&mut r, DType::F32, &[1, 1, 2, 3]),
        random(&mut r, DType::F32, &[1, 1, 4, 3]),
        random(&mut r, DType::F32, &[1, 1, 4, 3]),
    );
    // Row 0 may attend to keys 1 and 3; row 1 to nothing.
    let mask = Tensor::from_f64(DType::Bool, &[0.0, 1.0, 0.0, 1.0, 0.0, 0.0, 0.0, 0.0], &[2, 4]).unwrap();
    let want = sdpa_ref(&q, &k, &v, Some(&mask), 1.0 / 3f64.sqrt(), false);
    assert!(want[..3].iter().all(|x| x.is_finite()) && want[3..].iter().all(|x| x.is_nan()));
    check(
        Op::Sdpa(SdpaAttrs::default()),
        &[q, k, v, mask],
        &want,
        &[1, 1, 2, 3],
        false,
        "sdpa fully masked row",
    );
}
