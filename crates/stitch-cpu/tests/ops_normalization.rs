//! Fused normalisation kernels on the CPU backend (softmax, log-softmax,
//! layer norm, RMS norm) against f64 references, for every float dtype, along
//! last and non-last axes, with strided, large, empty and masked (-inf) inputs.

mod common;

use common::*;
use stitch_core::{DType, Op, Tensor};

const FLOATS: [DType; 4] = [DType::F32, DType::F64, DType::F16, DType::BF16];

/// Softmax (or log-softmax) of `x` along `ax`, in f64.
fn softmax_reference(x: &[f64], shape: &[usize], ax: usize, log: bool) -> Vec<f64> {
    let n = shape[ax];
    let inner: usize = shape[ax + 1..].iter().product();
    let outer: usize = shape[..ax].iter().product();
    let mut out = vec![0.0; x.len()];
    for o in 0..outer {
        for i in 0..inner {
            let at = |k: usize| o * n * inner + k * inner + i;
            let m = (0..n).map(|k| x[at(k)]).fold(f64::NEG_INFINITY, f64::max);
            let s: f64 = (0..n).map(|k| (x[at(k)] - m).exp()).sum();
            for k in 0..n {
                let d = x[at(k)] - m;
                out[at(k)] = if log { d - s.ln() } else { d.exp() / s };
            }
        }
    }
    out
}

fn check_softmax(x: &Tensor, axis: i64, log: bool, what: &str) {
    let ax = if axis < 0 {
        (axis + x.rank() as i64) as usize
    } else {
        axis as usize
    };
    let want = softmax_reference(&x.to_f64_vec(), x.shape(), ax, log);
    let op = if log {
        Op::LogSoftmax { axis }
    } else {
        Op::Softmax { axis }
    };
    let y = run_op(op, std::slice::from_ref(x)).unwrap().remove(0);
    assert_eq!(y.dtype(), x.dtype());
    assert_close(
        &y,
        &want,
        x.shape(),
        &format!("{what} {} {:?} axis {axis} log {log}", x.dtype(), x.shape()),
    );
}

#[test]
fn softmax_rows_sum_to_one_and_match_reference() {
    let mut r = rng(31);
    for dtype in FLOATS {
        let x = random_range(&mut r, dtype, &[6, 9], -4.0, 4.0);
        check_softmax(&x, -1, false, "softmax");
        let y = run_op(Op::Softmax { axis: 1 }, &[x]).unwrap().remove(0).to_f64_vec();
        let tol = tolerance(dtype).0 * 10.0;
        for row in y.chunks(9) {
            assert!(
                (row.iter().sum::<f64>() - 1.0).abs() < tol,
                "{dtype}: row sums to {}",
                row.iter().sum::<f64>()
            );
        }
    }
}

#[test]
fn softmax_and_log_softmax_along_every_axis_match_reference() {
    let mut r = rng(32);
    for dtype in FLOATS {
        for log in [false, true] {
            for (shape, axes) in [
                (vec![3usize, 4, 5], vec![0i64, 1, 2, -1, -3]),
                (vec![4, 1], vec![1, 0]),
                (vec![1, 7], vec![0, 1]),
                (vec![0, 4], vec![0, 1]),
                (vec![2, 3, 1, 6], vec![2, 3]),
            ] {
                for axis in axes {
                    let x = random_range(&mut r, dtype, &shape, -3.0, 3.0);
                    check_softmax(&x, axis, log, "small");
                }
            }
        }
    }
}

#[test]
fn softmax_of_strided_and_large_inputs_matches_reference() {
    let mut r = rng(33);
    for dtype in FLOATS {
        for log in [false, true] {
            // A transposed view with an offset.
            let x = random_range(&mut r, dtype, &[9, 5], -3.0, 3.0)
                .slice(0, 1, 9, 1)
                .unwrap()
                .permute(&[1, 0])
                .unwrap();
            check_softmax(&x, -1, log, "strided");
            check_softmax(&x, 0, log, "strided");
            // Rows in parallel; blocks in parallel; one block (axis moved last).
            check_softmax(
                &random_range(&mut r, dtype, &[70, 300], -5.0, 5.0),
                -1,
                log,
                "large rows",
            );
            check_softmax(
                &random_range(&mut r, dtype, &[40, 30, 20], -5.0, 5.0),
                1,
                log,
                "large blocks",
            );
            check_softmax(
                &random_range(&mut r, dtype, &[3000, 9], -5.0, 5.0),
                0,
                log,
                "single block",
            );
        }
    }
}

#[test]
fn softmax_is_stable_for_large_logits_and_gives_nan_for_fully_masked_rows() {
    let inf = f64::INFINITY;
    for dtype in [DType::F32, DType::F64, DType::F16, DType::BF16] {
        // Row 0: large logits (exp would overflow without the max shift); row 1: one masked entry; row 2: fully masked.
        let big = if dtype == DType::F16 { 60000.0 } else { 1.0e30 };
        let vals = [
            big,
            big - 1.0e-3 * big,
            big - 2.0e-3 * big,
            1.0,
            -inf,
            2.0,
            -inf,
            -inf,
            -inf,
        ];
        let x = Tensor::from_f64(dtype, &vals, &[3, 3]).unwrap();
        for log in [false, true] {
            let want = softmax_reference(&x.to_f64_vec(), &[3, 3], 1, log);
            assert!(want[6..].iter().all(|v| v.is_nan()));
            let op = if log {
                Op::LogSoftmax { axis: -1 }
            } else {
                Op::Softmax { axis: -1 }
            };
            let y = run_op(op, std::slice::from_ref(&x)).unwrap().remove(0);
            assert_close(&y, &want, &[3, 3], &format!("{dtype} extreme rows log {log}"));
            assert!(
                y.to_f64_vec()[..6].iter().all(|v| !v.is_nan()),
                "{dtype}: NaN outside the masked row"
            );
        }
        // Column-wise (non-last axis) masking too.
        let xt = x.permute(&[1, 0]).unwrap();
        let want = softmax_reference(&xt.to_f64_vec(), &[3, 3], 0, false);
        let y = run_op(Op::Softmax { axis: 0 }, &[xt]).unwrap().remove(0);
        assert_close(&y, &want, &[3, 3], &format!("{dtype} masked columns"));
    }
}

/// Layer norm (or RMS norm when `rms`) of `x` over axes `ax..`, with `scale`/`bias` right-aligned to those axes.
fn norm_reference(x: &Tensor, scale: &Tensor, bias: Option<&Tensor>, ax: usize, eps: f64, rms: bool) -> Vec<f64> {
    let xv = x.to_f64_vec();
    let norm_shape = &x.shape()[ax..];
    let n: usize = norm_shape.iter().product();
    let (sv, bv) = (scale.to_f64_vec(), bias.map(Tensor::to_f64_vec));
    let mut out = vec![0.0; xv.len()];
    for (row, o) in xv.chunks(n.max(1)).zip(out.chunks_mut(n.max(1))) {
        let mean = if rms { 0.0 } else { row.iter().sum::<f64>() / n as f64 };
        let var = row.iter().map(|v| (v - mean) * (v - mean)).sum::<f64>() / n as f64;
        for (k, (o, &v)) in o.iter_mut().zip(row).enumerate() {
            let idx = unravel(k, norm_shape);
            let mut y = (v - mean) / (var + eps).sqrt() * sv[broadcast_index(&idx, scale.shape())];
            if let Some(bv) = &bv {
                y += bv[broadcast_index(&idx, bias.unwrap().shape())];
            }
            *o = y;
        }
    }
    out
}

#[test]
fn layer_norm_over_trailing_axes_with_broadcast_scale_and_bias_matches_reference() {
    let mut r = rng(34);
    for dtype in FLOATS {
        // (x shape, axis, scale shape, bias shape or None)
        type Case = (Vec<usize>, i64, Vec<usize>, Option<Vec<usize>>);
        let cases: Vec<Case> = vec![
            (vec![4, 10], -1, vec![10], Some(vec![10])),
            (vec![4, 10], 1, vec![10], None),
            (vec![2, 3, 4], 1, vec![3, 4], Some(vec![4])),
            (vec![2, 3, 4], -2, vec![1, 4], Some(vec![3, 1])),
            (vec![2, 3, 4], 0, vec![4], None),
            (vec![5, 1], -1, vec![1], Some(vec![1])),
            (vec![0, 6], -1, vec![6], Some(vec![6])),
            (vec![64, 513], -1, vec![513], Some(vec![513])),
        ];
        for (shape, axis, sshape, bshape) in cases {
            let ax = if axis < 0 {
                (axis + shape.len() as i64) as usize
            } else {
                axis as usize
            };
            let x = random(&mut r, dtype, &shape);
            let scale = random_range(&mut r, dtype, &sshape, 0.5, 1.5);
            let bias = bshape.as_ref().map(|b| random(&mut r, dtype, b));
            let eps = 1e-5;
            let want = norm_reference(&x, &scale, bias.as_ref(), ax, eps, false);
            let mut ins = vec![x, scale];
            ins.extend(bias);
            let y = run_op(Op::LayerNorm { axis, epsilon: eps }, &ins).unwrap().remove(0);
            assert_close(
                &y,
                &want,
                &shape,
                &format!("layer_norm {dtype} {shape:?} axis {axis} scale {sshape:?} bias {bshape:?}"),
            );
        }
    }
}

#[test]
fn layer_norm_stays_accurate_for_offset_inputs_and_strided_views() {
    let mut r = rng(35);
    // A large common offset: a one-pass E[x²] - E[x]² variance in f32 would lose most digits.
    let base = random(&mut r, DType::F64, &[8, 256]).to_f64_vec();
    let shifted: Vec<f64> = base.iter().map(|v| v + 1000.0).collect();
    let x = Tensor::from_f64(DType::F32, &shifted, &[8, 256]).unwrap();
    let scale = random_range(&mut r, DType::F32, &[256], 0.5, 1.5);
    let want = norm_reference(&x, &scale, None, 1, 1e-6, false);
    let y = run_op(
        Op::LayerNorm {
            axis: -1,
            epsilon: 1e-6,
        },
        &[x, scale],
    )
    .unwrap()
    .remove(0);
    assert_close(&y, &want, &[8, 256], "offset layer_norm");
    for dtype in FLOATS {
        let x = random(&mut r, dtype, &[7, 5]).permute(&[1, 0]).unwrap();
        let scale = random(&mut r, dtype, &[7]).slice(0, 6, -1, -1).unwrap();
        let bias = random(&mut r, dtype, &[1]);
        let want = norm_reference(&x, &scale, Some(&bias), 1, 1e-3, false);
        let y = run_op(Op::LayerNorm { axis: 1, epsilon: 1e-3 }, &[x, scale, bias])
            .unwrap()
            .remove(0);
        assert_close(&y, &want, &[5, 7], &format!("strided layer_norm {dtype}"));
    }
}

#[test]
fn rms_norm_matches_reference_for_every_dtype_and_axis() {
    let mut r = rng(36);
    for dtype in FLOATS {
        let cases: Vec<(Vec<usize>, i64, Vec<usize>)> = vec![
            (vec![4, 10], -1, vec![10]),
            (vec![2, 3, 4], 1, vec![3, 4]),
            (vec![2, 3, 4], -2, vec![4]),
            (vec![3, 1], 1, vec![1]),
            (vec![0, 8], 1, vec![8]),
            (vec![48, 700], -1, vec![700]),
        ];
        for (shape, axis, sshape) in cases {
            let ax = if axis < 0 {
                (axis + shape.len() as i64) as usize
            } else {
                axis as usize
            };
            let x = random(&mut r, dtype, &shape);
            let scale = random(&mut r, dtype, &sshape);
            let want = norm_reference(&x, &scale, None, ax, 1e-6, true);
            let y = run_op(Op::RmsNorm { axis, epsilon: 1e-6 }, &[x, scale])
                .unwrap()
                .remove(0);
            assert_close(&y, &want, &shape, &format!("rms_norm {dtype} {shape:?} axis {axis}"));
        }
        let x = random(&mut r, dtype, &[6, 4]).permute(&[1, 0]).unwrap();
        let scale = random(&mut r, dtype, &[6]);
        let want = norm_reference(&x, &scale, None, 1, 0.1, true);
        let y = run_op(Op::RmsNorm { axis: -1, epsilon: 0.1 }, &[x, scale])
            .unwrap()
            .remove(0);
        assert_close(&y, &want, &[4, 6], &format!("strided rms_norm {dtype}"));
    }
}
