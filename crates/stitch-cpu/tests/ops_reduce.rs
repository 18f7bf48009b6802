//! Reduction kernels (reduce, argmax/argmin, cumsum, topk) against simple
//! references that loop over multi-indices, run through the executor.

mod common;

use common::*;
use stitch_core::ops::{ArgReduceOp, ReduceOp};
use stitch_core::{DType, Op, Tensor};

fn run(op: Op, inputs: &[Tensor]) -> Vec<Tensor> {
    run_op(op.clone(), inputs).unwrap_or_else(|e| panic!("{op:?}: {e}"))
}

/// Wraps an exact integer result into `dt`'s range (two's complement).
fn wrap_int(v: i128, dt: DType) -> f64 {
    let bits = 8 * dt.size_in_bytes() as u32;
    let m = 1i128 << bits;
    let w = v.rem_euclid(m);
    (if dt.is_signed_int() && w >= m / 2 { w - m } else { w }) as f64
}

/// Reference reduction: groups input elements by their output index.
#[allow(clippy::type_complexity)]
fn reduce_ref(op: ReduceOp, x: &Tensor, axes: &[usize], keepdims: bool) -> (Vec<f64>, Vec<usize>, Vec<f64>, Vec<f64>) {
    let shape = x.shape();
    let out_shape: Vec<usize> = shape
        .iter()
        .enumerate()
        .filter_map(|(i, &d)| {
            if axes.contains(&i) {
                keepdims.then_some(1)
            } else {
                Some(d)
            }
        })
        .collect();
    let kept: Vec<usize> = (0..shape.len()).filter(|i| !axes.contains(i)).collect();
    let kept_shape: Vec<usize> = kept.iter().map(|&i| shape[i]).collect();
    let n_out: usize = kept_shape.iter().product();
    let mut groups: Vec<Vec<f64>> = vec![Vec::new(); n_out];
    for (i, v) in x.to_f64_vec().into_iter().enumerate() {
        let idx = unravel(i, shape);
        let o: Vec<usize> = kept.iter().map(|&a| idx[a]).collect();
        groups[ravel(&o, &kept_shape)].push(v);
    }
    let dt = x.dtype();
    let vals = groups
        .iter()
        .map(|g| {
            if dt.is_float() {
                match op {
                    ReduceOp::Sum => g.iter().sum(),
                    ReduceOp::Mean => g.iter().sum::<f64>() / g.len() as f64,
                    ReduceOp::Prod => g.iter().product(),
                    ReduceOp::Max => g.iter().fold(f64::NEG_INFINITY, |a, &b| {
                        if b.is_nan() || a.is_nan() {
                            f64::NAN
                        } else {
                            a.max(b)
                        }
                    }),
                    ReduceOp::Min => g.iter().fold(f64::INFINITY, |a, &b| {
                        if b.is_nan() || a.is_nan() {
                            f64::NAN
                        } else {
                            a.min(b)
                        }
                    }),
                }
            } else {
                let ints = g.iter().map(|&v| v as i128);
                match op {
                    ReduceOp::Sum => wrap_int(ints.sum(), dt),
                    // Integer mean: the exact sum divided by the count, truncated.
                    ReduceOp::Mean => {
                        if g.is_empty() {
                            0.0
                        } else {
                            wrap_int(ints.sum::<i128>() / g.len() as i128, dt)
                        }
                    }
                    ReduceOp::Prod => wrap_int(ints.fold(1i128, |a, b| a.wrapping_mul(b)), dt),
                    ReduceOp::Max => g.iter().cloned().fold(f64::NEG_INFINITY, f64::max),
                    ReduceOp::Min => g.iter().cloned().fold(f64::INFINITY, f64::min),
                }
            }
        })
        .collect();
    // Mean magnitude per output: the scale of rounding errors in sums and means.
    let abs_means = groups
        .iter()
        .map(|g| g.iter().map(|v| v.abs()).sum::<f64>() / g.len().max(1) as f64)
        .collect();
    let counts = groups.iter().map(|g| g.len() as f64).collect();
    (vals, out_shape, abs_means, counts)
}

/// Checks one reduction against the reference. Sums and means may differ from
/// the exact value by the accumulator's rounding (f32 or f64), which scales with
/// the sum of magnitudes; the final rounding is covered by the dtype's rtol.
fn check_reduce(op: ReduceOp, x: &Tensor, axes: &[i64], keepdims: bool, what: &str) {
    let y = run(
        Op::Reduce {
            op,
            axes: axes.to_vec(),
            keepdims,
        },
        std::slice::from_ref(x),
    )
    .remove(0);
    assert_eq!(y.dtype(), x.dtype(), "{what}");
    let norm: Vec<usize> = if axes.is_empty() {
        (0..x.rank()).collect()
    } else {
        axes.iter()
            .map(|&a| {
                if a < 0 {
                    (a + x.rank() as i64) as usize
                } else {
                    a as usize
                }
            })
            .collect()
    };
    let (expected, shape, abs_means, counts) = reduce_ref(op, x, &norm, keepdims);
    let (rtol, atol) = tolerance(x.dtype());
    let acc_eps = match x.dtype() {
        DType::F64 => 1e-14,
        d if d.is_float() => 2e-6,
        _ => 0.0,
    };
    let mean_scale = abs_means.iter().cloned().fold(0.0, f64::max);
    let sum_scale = abs_means.iter().zip(&counts).map(|(m, c)| m * c).fold(0.0, f64::max);
    let atol = match op {
        ReduceOp::Sum => atol + acc_eps * sum_scale,
        ReduceOp::Mean => atol + acc_eps * mean_scale,
        _ => atol,
    };
    assert_close_tol(&y, &expected, &shape, rtol, atol, what);
}

const AXIS_SETS: [&[i64]; 9] = [&[], &[0], &[1], &[2], &[-1], &[0, 2], &[1, 2], &[0, 1], &[2, 0, 1]];

#[test]
fn reductions_match_reference_over_axis_sets_dtypes_and_keepdims() {
    let mut r = rng(1);
    let dtypes = [
        DType::F32,
        DType::F64,
        DType::F16,
        DType::BF16,
        DType::I32,
        DType::U8,
        DType::I64,
        DType::I8,
    ];
    for dt in dtypes {
        // Products of many values under- or overflow; keep them to few factors near 1.
        let x = random(&mut r, dt, &[3, 4, 5]);
        let small = random_range(&mut r, DType::F64, &[2, 3, 2], 0.5, 1.5).to_f64_vec();
        let small = Tensor::from_f64(
            dt,
            &small
                .iter()
                .map(|v| {
                    if dt.is_float() {
                        *v
                    } else {
                        if *v < 1.0 {
                            -1.0
                        } else {
                            1.0
                        }
                    }
                })
                .collect::<Vec<_>>(),
            &[2, 3, 2],
        )
        .unwrap();
        for op in ReduceOp::ALL {
            for axes in AXIS_SETS {
                for keepdims in [false, true] {
                    let what = format!("{} {dt} axes {axes:?} keepdims {keepdims}", op.name());
                    check_reduce(op, &x, axes, keepdims, &what);
                    if op == ReduceOp::Prod {
                        check_reduce(op, &small, axes, keepdims, &format!("{what} (near 1)"));
                    }
                }
            }
        }
    }
}

#[test]
fn reductions_of_non_contiguous_and_size_one_inputs_match_reference() {
    let mut r = rng(2);
    for dt in [DType::F32, DType::I16, DType::F16] {
        let x = random(&mut r, dt, &[4, 1, 3, 5]).permute(&[2, 1, 3, 0]).unwrap(); // [3, 1, 5, 4]
        let rev = random(&mut r, dt, &[6, 2]).slice(0, 5, -1, -2).unwrap(); // [3, 2], negative stride
        for op in ReduceOp::ALL {
            for axes in [&[][..], &[0], &[1], &[3], &[0, 3], &[1, 2]] {
                check_reduce(op, &x, axes, false, &format!("{} {dt} permuted {axes:?}", op.name()));
            }
            for axes in [&[0][..], &[1]] {
                check_reduce(op, &rev, axes, true, &format!("{} {dt} reversed {axes:?}", op.name()));
            }
        }
    }
}

#[test]
fn reductions_over_empty_axes_give_the_identity_and_mean_nan() {
    let x = Tensor::zeros(DType::F32, &[0, 3]);
    let expect = [
        (ReduceOp::Sum, 0.0),
        (ReduceOp::Prod, 1.0),
        (ReduceOp::Max, f64::NEG_INFINITY),
        (ReduceOp::Min, f64::INFINITY),
        (ReduceOp::Mean, f64::NAN),
    ];
    for (op, v) in expect {
        let y = run(
            Op::Reduce {
                op,
                axes: vec![0],
                keepdims: false,
            },
            std::slice::from_ref(&x),
        )
        .remove(0);
        assert_close(&y, &[v, v, v], &[3], op.name());
        let y = run(
            Op::Reduce {
                op,
                axes: vec![1],
                keepdims: true,
            },
            std::slice::from_ref(&x),
        )
        .remove(0);
        assert_eq!(y.shape(), &[0, 1]);
    }
    let x = Tensor::zeros(DType::I32, &[2, 0]);
    let expect = [
        (ReduceOp::Sum, 0.0),
        (ReduceOp::Prod, 1.0),
        (ReduceOp::Max, i32::MIN as f64),
        (ReduceOp::Min, i32::MAX as f64),
        (ReduceOp::Mean, 0.0),
    ];
    for (op, v) in expect {
        let y = run(
            Op::Reduce {
                op,
                axes: vec![1],
                keepdims: false,
            },
            std::slice::from_ref(&x),
        )
        .remove(0);
        assert_close(&y, &[v, v], &[2], op.name());
    }
}

#[test]
fn reduce_max_min_propagate_nan_and_int_sums_wrap() {
    let x = Tensor::from_vec(vec![1.0f32, f32::NAN, 3.0, -1.0, 2.0, 0.5], &[2, 3]).unwrap();
    for op in [ReduceOp::Max, ReduceOp::Min, ReduceOp::Sum] {
        let y = run(
            Op::Reduce {
                op,
                axes: vec![1],
                keepdims: false,
            },
            std::slice::from_ref(&x),
        )
        .remove(0)
        .to_vec::<f32>()
        .unwrap();
        assert!(y[0].is_nan(), "{}", op.name());
        assert!(!y[1].is_nan(), "{}", op.name());
        let y = run(
            Op::Reduce {
                op,
                axes: vec![],
                keepdims: false,
            },
            std::slice::from_ref(&x),
        )
        .remove(0)
        .to_vec::<f32>()
        .unwrap();
        assert!(y[0].is_nan(), "{} over all", op.name());
    }
    let x = Tensor::from_vec(vec![100i8, 100, 100, -7], &[4]).unwrap();
    let sum = run(
        Op::Reduce {
            op: ReduceOp::Sum,
            axes: vec![0],
            keepdims: false,
        },
        std::slice::from_ref(&x),
    )
    .remove(0);
    assert_eq!(sum.to_vec::<i8>().unwrap(), vec![37]); // 293 wraps to 37
                                                       // The mean divides the exact sum (no overflow before dividing), truncating toward 0.
    let mean = run(
        Op::Reduce {
            op: ReduceOp::Mean,
            axes: vec![0],
            keepdims: false,
        },
        &[x],
    )
    .remove(0);
    assert_eq!(mean.to_vec::<i8>().unwrap(), vec![73]);
    let x = Tensor::from_vec(vec![-7i32, 2], &[2]).unwrap();
    let mean = run(
        Op::Reduce {
            op: ReduceOp::Mean,
            axes: vec![],
            keepdims: true,
        },
        &[x],
    )
    .remove(0);
    assert_eq!(mean.shape(), &[1]);
    assert_eq!(mean.to_vec::<i32>().unwrap(), vec![-2]);
}

#[test]
fn large_reductions_take_the_parallel_paths_and_match_reference() {
    let mut r = rng(3);
    let x = random(&mut r, DType::F32, &[40, 30, 25]); // 30000 elements > PAR_CHUNK
    for axes in [&[][..], &[2], &[0], &[1], &[0, 2], &[0, 1]] {
        for op in [ReduceOp::Sum, ReduceOp::Max, ReduceOp::Mean] {
            check_reduce(op, &x, axes, false, &format!("large {} {axes:?}", op.name()));
        }
    }
    // A wide kept axis is split into column chunks.
    let x = random(&mut r, DType::I64, &[3, 9000]);
    check_reduce(ReduceOp::Sum, &x, &[0], true, "wide columns i64");
    check_reduce(ReduceOp::Min, &x, &[0], false, "wide columns i64 min");
    let x = random(&mut r, DType::BF16, &[3, 9000]);
    check_reduce(ReduceOp::Sum, &x, &[], false, "bf16 full sum accumulates in f32");
}

/// Reference argmax/argmin along `axis`; NaN counts as the extreme.
fn arg_ref(x: &Tensor, axis: usize, max: bool, last: bool) -> Vec<f64> {
    let shape = x.shape();
    let v = x.to_f64_vec();
    let mut out_shape = shape.to_vec();
    out_shape[axis] = 1;
    let n_out: usize = out_shape.iter().product();
    (0..n_out)
        .map(|o| {
            let mut idx = unravel(o, &out_shape);
            let mut best: Option<(f64, usize)> = None;
            for i in 0..shape[axis] {
                idx[axis] = i;
                let val = v[ravel(&idx, shape)];
                let better = match best {
                    None => true,
                    Some((b, _)) if b.is_nan() => last && val.is_nan(),
                    Some(_) if val.is_nan() => true,
                    Some((b, _)) => {
                        if val == b {
                            last
                        } else {
                            (val > b) == max
                        }
                    }
                };
                if better {
                    best = Some((val, i));
                }
            }
            best.map_or(0.0, |b| b.1 as f64)
        })
        .collect()
}

#[test]
fn argmax_argmin_pick_first_or_last_tie_and_match_reference() {
    let mut r = rng(4);
    for dt in [DType::F32, DType::F64, DType::BF16, DType::I32, DType::U8] {
        // Integers in a small range (and bf16's coarse grid) give many ties.
        let x = random(&mut r, dt, &[3, 4, 5]);
        for axis in 0..3i64 {
            for op in [ArgReduceOp::ArgMax, ArgReduceOp::ArgMin] {
                for last in [false, true] {
                    for keepdims in [false, true] {
                        let y = run(
                            Op::ArgReduce {
                                op,
                                axis,
                                keepdims,
                                select_last_index: last,
                            },
                            std::slice::from_ref(&x),
                        )
                        .remove(0);
                        assert_eq!(y.dtype(), DType::I64);
                        let mut shape = x.shape().to_vec();
                        if keepdims {
                            shape[axis as usize] = 1;
                        } else {
                            shape.remove(axis as usize);
                        }
                        let expected = arg_ref(&x, axis as usize, op == ArgReduceOp::ArgMax, last);
                        assert_close(
                            &y,
                            &expected,
                            &shape,
                            &format!("{} {dt} axis {axis} last {last}", op.name()),
                        );
                    }
                }
            }
        }
    }
    let x = Tensor::from_vec(vec![1.0f32, 3.0, 3.0, 2.0, -1.0, -1.0], &[6]).unwrap();
    let arg = |op, last| {
        run(
            Op::ArgReduce {
                op,
                axis: 0,
                keepdims: false,
                select_last_index: last,
            },
            std::slice::from_ref(&x),
        )
        .remove(0)
        .to_vec::<i64>()
        .unwrap()[0]
    };
    assert_eq!(arg(ArgReduceOp::ArgMax, false), 1);
    assert_eq!(arg(ArgReduceOp::ArgMax, true), 2);
    assert_eq!(arg(ArgReduceOp::ArgMin, false), 4);
    assert_eq!(arg(ArgReduceOp::ArgMin, true), 5);
    let x = Tensor::from_vec(vec![1.0f32, f32::NAN, 3.0, f32::NAN, -5.0], &[5]).unwrap();
    let arg = |op, last| {
        run(
            Op::ArgReduce {
                op,
                axis: -1,
                keepdims: true,
                select_last_index: last,
            },
            std::slice::from_ref(&x),
        )
        .remove(0)
        .to_vec::<i64>()
        .unwrap()[0]
    };
    assert_eq!(arg(ArgReduceOp::ArgMax, false), 1);
    assert_eq!(arg(ArgReduceOp::ArgMax, true), 3);
    assert_eq!(arg(ArgReduceOp::ArgMin, false), 1);
    // Non-contiguous input.
    let x = random(&mut r, DType::F32, &[5, 3]).permute(&[1, 0]).unwrap();
    let y = run(
        Op::ArgReduce {
            op: ArgReduceOp::ArgMax,
            axis: 1,
            keepdims: false,
            select_last_index: false,
        },
        std::slice::from_ref(&x),
    )
    .remove(0);
    assert_close(&y, &arg_ref(&x, 1, true, false), &[3], "argmax transposed");
}

fn cumsum_ref(x: &Tensor, axis: usize, exclusive: bool, reverse: bool) -> Vec<f64> {
    let shape = x.shape();
    let v = x.to_f64_vec();
    let dt = x.dtype();
    (0..v.len())
        .map(|i| {
            let idx = unravel(i, shape);
            let mut j = idx.clone();
            let mut acc = 0.0;
            for k in 0..shape[axis] {
                let take = match (reverse, exclusive) {
                    (false, false) => k <= idx[axis],
                    (false, true) => k < idx[axis],
                    (true, false) => k >= idx[axis],
                    (true, true) => k > idx[axis],
                };
                if take {
                    j[axis] = k;
                    acc += v[ravel(&j, shape)];
                }
            }
            if dt.is_float() {
                acc
            } else {
                wrap_int(acc as i128, dt)
            }
        })
        .collect()
}

#[test]
fn cumsum_inclusive_exclusive_forward_reverse_match_reference() {
    let mut r = rng(5);
    for dt in [
        DType::F32,
        DType::F64,
        DType::F16,
        DType::BF16,
        DType::I32,
        DType::U8,
        DType::I64,
    ] {
        let x = random(&mut r, dt, &[3, 4, 5]);
        for axis in [0i64, 1, 2, -1] {
            for exclusive in [false, true] {
                for reverse in [false, true] {
                    let y = run(
                        Op::CumSum {
                            axis,
                            exclusive,
                            reverse,
                        },
                        std::slice::from_ref(&x),
                    )
                    .remove(0);
                    let ax = if axis < 0 { 2 } else { axis as usize };
                    let expected = cumsum_ref(&x, ax, exclusive, reverse);
                    let (rtol, atol) = tolerance(dt);
                    // Rounding grows with the running sum of magnitudes (at most 5 terms of |x| < 2).
                    assert_close_tol(
                        &y,
                        &expected,
                        &[3, 4, 5],
                        rtol,
                        atol + rtol * 10.0,
                        &format!("cumsum {dt} axis {axis} excl {exclusive} rev {reverse}"),
                    );
                }
            }
        }
    }
    let x = Tensor::from_vec(vec![200u8, 100, 1], &[3]).unwrap();
    let y = run(
        Op::CumSum {
            axis: 0,
            exclusive: false,
            reverse: false,
        },
        std::slice::from_ref(&x),
    )
    .remove(0);
    assert_eq!(y.to_vec::<u8>().unwrap(), vec![200, 44, 45]);
    let y = run(
        Op::CumSum {
            axis: 0,
            exclusive: true,
            reverse: true,
        },
        &[x],
    )
    .remove(0);
    assert_eq!(y.to_vec::<u8>().unwrap(), vec![101, 1, 0]);
    let x = random(&mut r, DType::F32, &[4, 3]).permute(&[1, 0]).unwrap();
    let y = run(
        Op::CumSum {
            axis: 1,
            exclusive: false,
            reverse: false,
        },
        std::slice::from_ref(&x),
    )
    .remove(0);
    assert_close(&y, &cumsum_ref(&x, 1, false, false), &[3, 4], "cumsum transposed");
}

/// Reference topk: a stable sort by value (descending for largest), so ties keep index order.
fn topk_ref(x: &Tensor, k: usize, axis: usize, largest: bool) -> (Vec<f64>, Vec<f64>, Vec<usize>) {
    let shape = x.shape();
    let v = x.to_f64_vec();
    let mut out_shape = shape.to_vec();
    out_shape[axis] = k;
    let n: usize = out_shape.iter().product();
    let mut vals = vec![0.0; n];
    let mut idxs = vec![0.0; n];
    let mut row_shape = shape.to_vec();
    row_shape[axis] = 1;
    for row in 0..row_shape.iter().product() {
        let mut idx = unravel(row, &row_shape);
        let mut items: Vec<(f64, usize)> = (0..shape[axis])
            .map(|i| {
                idx[axis] = i;
                (v[ravel(&idx, shape)], i)
            })
            .collect();
        items.sort_by(|a, b| {
            let o = a.0.partial_cmp(&b.0).unwrap();
            if largest {
                o.reverse()
            } else {
                o
            }
        });
        for (j, &(val, i)) in items.iter().take(k).enumerate() {
            idx[axis] = j;
            let o = ravel(&idx, &out_shape);
            vals[o] = val;
            idxs[o] = i as f64;
        }
    }
    (vals, idxs, out_shape)
}

#[test]
fn topk_sorts_values_and_breaks_ties_by_lower_index() {
    let mut r = rng(6);
    for dt in [DType::F32, DType::F64, DType::F16, DType::I32, DType::U8] {
        let x = random(&mut r, dt, &[4, 6, 5]);
        for axis in [0i64, 1, 2, -2] {
            let ax = if axis < 0 { 1 } else { axis as usize };
            for k in [0, 1, 3, x.shape()[ax]] {
                for largest in [true, false] {
                    let out = run(
                        Op::TopK {
                            k,
                            axis,
                            largest,
                            sorted: true,
                        },
                        std::slice::from_ref(&x),
                    );
                    let (vals, idxs, shape) = topk_ref(&x, k, ax, largest);
                    let what = format!("topk {dt} axis {axis} k {k} largest {largest}");
                    assert_eq!(out[0].dtype(), dt);
                    assert_eq!(out[1].dtype(), DType::I64);
                    assert_close_tol(&out[0], &vals, &shape, 0.0, 0.0, &what);
                    assert_close_tol(&out[1], &idxs, &shape, 0.0, 0.0, &what);
                }
            }
        }
    }
    let x = Tensor::from_vec(vec![1i64, 3, 3, 2, 3, 1], &[6]).unwrap();
    let out = run(
        Op::TopK {
            k: 4,
            axis: 0,
            largest: true,
            sorted: true,
        },
        std::slice::from_ref(&x),
    );
    assert_eq!(out[0].to_vec::<i64>().unwrap(), vec![3, 3, 3, 2]);
    assert_eq!(out[1].to_vec::<i64>().unwrap(), vec![1, 2, 4, 3]);
    let out = run(
        Op::TopK {
            k: 3,
            axis: 0,
            largest: false,
            sorted: true,
        },
        &[x],
    );
    assert_eq!(out[0].to_vec::<i64>().unwrap(), vec![1, 1, 2]);
    assert_eq!(out[1].to_vec::<i64>().unwrap(), vec![0, 5, 3]);
    // Non-contiguous input.
    let x = random(&mut r, DType::F32, &[7, 3]).permute(&[1, 0]).unwrap();
    let out = run(
        Op::TopK {
            k: 2,
            axis: 1,
            largest: true,
            sorted: true,
        },
        std::slice::from_ref(&x),
    );
    let (vals, idxs, shape) = topk_ref(&x, 2, 1, true);
    assert_close_tol(&out[0], &vals, &shape, 0.0, 0.0, "topk transposed values");
    assert_close_tol(&out[1], &idxs, &shape, 0.0, 0.0, "topk transposed indices");
}
