//! Indexing ops on the CPU backend (gather, gather_elements, scatter_elements,
//! one_hot, range) against references that loop over multi-indices, for every
//! dtype, with negative, duplicate and out-of-range indices.

mod common;

use common::*;
use rand::Rng;
use rand_chacha::ChaCha8Rng;
use stitch_core::ops::ScatterReduction;
use stitch_core::{DType, Op, Tensor};

fn exact(actual: &Tensor, expected: &[f64], shape: &[usize], what: &str) {
    assert_close_tol(actual, expected, shape, 0.0, 0.0, what);
}

/// Random indices in `[lo, hi)` of an index dtype.
fn indices(r: &mut ChaCha8Rng, dtype: DType, shape: &[usize], lo: i64, hi: i64) -> Tensor {
    let n: usize = shape.iter().product();
    let v: Vec<f64> = (0..n).map(|_| r.gen_range(lo..hi) as f64).collect();
    Tensor::from_f64(dtype, &v, shape).unwrap()
}

/// `v` rounded to `dtype` (what storing it in a tensor of that dtype gives).
fn q(dtype: DType, v: f64) -> f64 {
    Tensor::from_f64(dtype, &[v], &[1]).unwrap().to_f64_vec()[0]
}

fn wrap(i: f64, n: usize) -> usize {
    (if i < 0.0 { i + n as f64 } else { i }) as usize
}

fn gather_reference(data: &Tensor, idx: &Tensor, ax: usize) -> (Vec<f64>, Vec<usize>) {
    let ds = data.shape();
    let mut out_shape = ds[..ax].to_vec();
    out_shape.extend_from_slice(idx.shape());
    out_shape.extend_from_slice(&ds[ax + 1..]);
    let (dv, iv) = (data.to_f64_vec(), idx.to_f64_vec());
    let n: usize = out_shape.iter().product();
    let k = idx.rank();
    let vals = (0..n)
        .map(|i| {
            let oi = unravel(i, &out_shape);
            let j = iv[ravel(&oi[ax..ax + k], idx.shape())];
            let mut di = oi[..ax].to_vec();
            di.push(wrap(j, ds[ax]));
            di.extend_from_slice(&oi[ax + k..]);
            dv[ravel(&di, ds)]
        })
        .collect();
    (vals, out_shape)
}

#[test]
fn gather_takes_along_any_axis_with_negative_indices_for_every_dtype() {
    let mut r = rng(21);
    let ds = [4usize, 5, 3];
    for dtype in DType::ALL {
        for idx_dtype in [DType::I32, DType::I64] {
            for axis in [0i64, 1, 2, -1] {
                let ax = if axis < 0 { 2 } else { axis as usize };
                let n = ds[ax] as i64;
                for ishape in [vec![2usize, 3], vec![], vec![0], vec![7]] {
                    let data = random(&mut r, dtype, &ds);
                    let idx = indices(&mut r, idx_dtype, &ishape, -n, n);
                    let (want, shape) = gather_reference(&data, &idx, ax);
                    let y = run_op(Op::Gather { axis }, &[data, idx]).unwrap().remove(0);
                    exact(
                        &y,
                        &want,
                        &shape,
                        &format!("gather {dtype} {idx_dtype} axis {axis} indices {ishape:?}"),
                    );
                }
            }
        }
    }
}

#[test]
fn gather_reads_strided_data_and_indices() {
    let mut r = rng(22);
    let data = random(&mut r, DType::F32, &[6, 8])
        .permute(&[1, 0])
        .unwrap()
        .slice(1, 5, -1, -2)
        .unwrap();
    assert_eq!(data.shape(), &[8, 3]);
    let idx = indices(&mut r, DType::I64, &[4, 5], -8, 8).permute(&[1, 0]).unwrap();
    let (want, shape) = gather_reference(&data, &idx, 0);
    let y = run_op(Op::Gather { axis: 0 }, &[data, idx]).unwrap().remove(0);
    exact(&y, &want, &shape, "strided gather");
    // Large enough to run in parallel.
    let data = random(&mut r, DType::BF16, &[50, 40, 30]);
    let idx = indices(&mut r, DType::I32, &[3, 9], -40, 40);
    let (want, shape) = gather_reference(&data, &idx, 1);
    let y = run_op(Op::Gather { axis: 1 }, &[data, idx]).unwrap().remove(0);
    exact(&y, &want, &shape, "large gather");
}

#[test]
fn gather_out_of_range_index_is_an_error_naming_index_and_axis_size() {
    let mut r = rng(23);
    let data = random(&mut r, DType::F32, &[3, 5]);
    for (bad, dtype) in [(5i64, DType::I64), (-6, DType::I32), (1000, DType::I64)] {
        let idx = Tensor::from_f64(dtype, &[0.0, bad as f64, 1.0], &[3]).unwrap();
        let err = run_op(Op::Gather { axis: 1 }, &[data.clone(), idx])
            .unwrap_err()
            .to_string();
        assert!(
            err.contains(&format!("index {bad}")) && err.contains("size 5") && err.contains("gather"),
            "{err}"
        );
    }
}

fn gather_elements_reference(data: &Tensor, idx: &Tensor, ax: usize) -> Vec<f64> {
    let (dv, iv) = (data.to_f64_vec(), idx.to_f64_vec());
    (0..idx.numel())
        .map(|i| {
            let mut ii = unravel(i, idx.shape());
            ii[ax] = wrap(iv[i], data.shape()[ax]);
            dv[ravel(&ii, data.shape())]
        })
        .collect()
}

#[test]
fn gather_elements_picks_per_position_on_every_axis() {
    let mut r = rng(24);
    let ds = [3usize, 4, 5];
    for dtype in DType::ALL {
        for axis in [0i64, 1, -1] {
            let ax = if axis < 0 { 2 } else { axis as usize };
            // Indices may be smaller than data off the axis and longer along it.
            let mut ishape = vec![2usize, 3, 4];
            ishape[ax] = 6;
            let n = ds[ax] as i64;
            let data = random(&mut r, dtype, &ds);
            let idx = indices(&mut r, if ax == 1 { DType::I32 } else { DType::I64 }, &ishape, -n, n);
            let want = gather_elements_reference(&data, &idx, ax);
            let y = run_op(Op::GatherElements { axis }, &[data, idx]).unwrap().remove(0);
            exact(&y, &want, &ishape, &format!("gather_elements {dtype} axis {axis}"));
        }
    }
    let data = random(&mut r, DType::F64, &[5, 6]).permute(&[1, 0]).unwrap();
    let idx = indices(&mut r, DType::I64, &[6, 5], -5, 5);
    let want = gather_elements_reference(&data, &idx, 1);
    let y = run_op(Op::GatherElements { axis: 1 }, &[data, idx.clone()])
        .unwrap()
        .remove(0);
    exact(&y, &want, &[6, 5], "gather_elements strided");
    let data = random(&mut r, DType::F32, &[3, 2]);
    let bad = Tensor::from_vec(vec![0i64, 1, -3, 0], &[2, 2]).unwrap();
    let err = run_op(Op::GatherElements { axis: 1 }, &[data, bad])
        .unwrap_err()
        .to_string();
    assert!(err.contains("index -3") && err.contains("size 2"), "{err}");
}

fn scatter_reference(data: &Tensor, idx: &Tensor, upd: &Tensor, ax: usize, red: ScatterReduction) -> Vec<f64> {
    let dt = data.dtype();
    let mut out = data.to_f64_vec();
    let (iv, uv) = (idx.to_f64_vec(), upd.to_f64_vec());
    for i in 0..idx.numel() {
        let mut ii = unravel(i, idx.shape());
        ii[ax] = wrap(iv[i], data.shape()[ax]);
        let p = ravel(&ii, data.shape());
        let (a, u) = (out[p], uv[i]);
        let v = match red {
            ScatterReduction::None => u,
            ScatterReduction::Add if dt == DType::Bool => ((a != 0.0) || (u != 0.0)) as u8 as f64,
            ScatterReduction::Mul if dt == DType::Bool => ((a != 0.0) && (u != 0.0)) as u8 as f64,
            ScatterReduction::Add => a + u,
            ScatterReduction::Mul => a * u,
            ScatterReduction::Max => a.max(u),
            ScatterReduction::Min => a.min(u),
        };
        out[p] = q(dt, v);
    }
    out
}

#[test]
fn scatter_elements_applies_duplicate_updates_in_index_order_for_each_reduction() {
    let mut r = rng(25);
    let reductions = [
        ScatterReduction::None,
        ScatterReduction::Add,
        ScatterReduction::Mul,
        ScatterReduction::Max,
        ScatterReduction::Min,
    ];
    // (data shape, indices shape, axis): many more updates than positions along the axis.
    let cases: [(&[usize], &[usize], i64); 4] = [
        (&[4, 3], &[7, 3], 0),
        (&[3, 4], &[2, 9], -1),
        (&[2, 3, 4], &[2, 5, 3], 1),
        (&[5], &[12], 0),
    ];
    for dtype in DType::ALL {
        for red in reductions {
            // Sums of many updates overflow 8-bit integers and products overflow all
            // but i64 (or leave f64's exact range): wrapping is not what this checks.
            let overflows = match red {
                ScatterReduction::Add => dtype.is_int() && dtype.size_in_bytes() == 1,
                ScatterReduction::Mul => dtype.is_int() && dtype != DType::I64,
                _ => false,
            };
            if overflows {
                continue;
            }
            for (ds, is, axis) in cases {
                let ax = if axis < 0 { ds.len() - 1 } else { axis as usize };
                let n = ds[ax] as i64;
                let data = random(&mut r, dtype, ds);
                let idx = indices(&mut r, DType::I64, is, -n, n);
                let upd = random(&mut r, dtype, is);
                let want = scatter_reference(&data, &idx, &upd, ax, red);
                let y = run_op(Op::ScatterElements { axis, reduction: red }, &[data.clone(), idx, upd])
                    .unwrap()
                    .remove(0);
                exact(
                    &y,
                    &want,
                    ds,
                    &format!("scatter {dtype} {red:?} data {ds:?} indices {is:?} axis {axis}"),
                );
            }
        }
    }
}

#[test]
fn scatter_elements_last_duplicate_wins_and_leaves_input_unchanged() {
    let data = Tensor::from_vec(vec![1.0f32, 2.0, 3.0, 4.0], &[4]).unwrap();
    let idx = Tensor::from_vec(vec![1i32, -3, 3, 1], &[4]).unwrap();
    let upd = Tensor::from_vec(vec![10.0f32, 20.0, 30.0, 40.0], &[4]).unwrap();
    let y = run_op(
        Op::ScatterElements {
            axis: 0,
            reduction: ScatterReduction::None,
        },
        &[data.clone(), idx.clone(), upd.clone()],
    )
    .unwrap();
    assert_eq!(y[0].to_vec::<f32>().unwrap(), vec![1.0, 40.0, 3.0, 30.0]);
    let y = run_op(
        Op::ScatterElements {
            axis: 0,
            reduction: ScatterReduction::Add,
        },
        &[data.clone(), idx.clone(), upd.clone()],
    )
    .unwrap();
    assert_eq!(y[0].to_vec::<f32>().unwrap(), vec![1.0, 72.0, 3.0, 34.0]);
    assert_eq!(data.to_vec::<f32>().unwrap(), vec![1.0, 2.0, 3.0, 4.0]);
    let bad = Tensor::from_vec(vec![0i32, 4, 0, 0], &[4]).unwrap();
    let err = run_op(
        Op::ScatterElements {
            axis: 0,
            reduction: ScatterReduction::Add,
        },
        &[data, bad, upd],
    )
    .unwrap_err()
    .to_string();
    assert!(err.contains("index 4") && err.contains("size 4"), "{err}");
}

#[test]
fn scatter_elements_on_a_large_tensor_matches_reference() {
    let mut r = rng(26);
    let data = random(&mut r, DType::F32, &[200, 100]);
    let idx = indices(&mut r, DType::I64, &[200, 150], -100, 100);
    let upd = random(&mut r, DType::F32, &[200, 150]);
    let want = scatter_reference(&data, &idx, &upd, 1, ScatterReduction::Add);
    let y = run_op(
        Op::ScatterElements {
            axis: 1,
            reduction: ScatterReduction::Add,
        },
        &[data, idx, upd],
    )
    .unwrap()
    .remove(0);
    exact(&y, &want, &[200, 100], "large scatter add");
}

#[test]
fn one_hot_marks_wrapped_indices_and_leaves_out_of_range_rows_off() {
    let mut r = rng(27);
    let depth = 5usize;
    for idx_dtype in [DType::I8, DType::U8, DType::I32, DType::I64, DType::U64] {
        for out_dtype in [DType::F32, DType::I64, DType::Bool, DType::F16] {
            for axis in [0i64, 1, -1, 2] {
                let lo = if idx_dtype.is_unsigned_int() { 0 } else { -7 };
                let idx = indices(&mut r, idx_dtype, &[3, 4], lo, 8);
                let iv = idx.to_f64_vec();
                let ax = if axis < 0 { 2 } else { axis as usize };
                let mut shape = vec![3, 4];
                shape.insert(ax, depth);
                let (on, off) = if out_dtype == DType::Bool {
                    (1.0, 0.0)
                } else {
                    (3.0, -1.0)
                };
                let want: Vec<f64> = (0..60)
                    .map(|i| {
                        let mut oi = unravel(i, &shape);
                        let d = oi.remove(ax);
                        let v = iv[ravel(&oi, &[3, 4])];
                        let hit = v >= -(depth as f64) && v < depth as f64 && wrap(v, depth) == d;
                        if hit {
                            on
                        } else {
                            off
                        }
                    })
                    .collect();
                let op = Op::OneHot {
                    depth,
                    axis,
                    dtype: out_dtype,
                    on_value: on,
                    off_value: off,
                };
                let y = run_op(op, &[idx]).unwrap().remove(0);
                assert_eq!(y.dtype(), out_dtype);
                exact(
                    &y,
                    &want,
                    &shape,
                    &format!("one_hot {idx_dtype} -> {out_dtype} axis {axis}"),
                );
            }
        }
    }
    let idx = Tensor::from_vec(vec![-1i64, 2, 3, -4, 0], &[5]).unwrap();
    let y = run_op(
        Op::OneHot {
            depth: 3,
            axis: -1,
            dtype: DType::I32,
            on_value: 1.0,
            off_value: 0.0,
        },
        &[idx],
    )
    .unwrap();
    assert_eq!(
        y[0].to_vec::<i32>().unwrap(),
        vec![0, 0, 1, 0, 0, 1, 0, 0, 0, 0, 0, 0, 1, 0, 0]
    );
}

#[test]
fn range_matches_start_plus_i_delta_for_floats_and_ints() {
    let cases: [(f64, f64, f64); 6] = [
        (0.0, 10.0, 1.0),
        (3.0, -4.0, -2.0),
        (0.5, 3.0, 0.25),
        (-2.0, 2.0, 0.3),
        (5.0, 5.0, 1.0),
        (1.0, 1000.0, 7.0),
    ];
    for dtype in [
        DType::F32,
        DType::F64,
        DType::F16,
        DType::BF16,
        DType::I8,
        DType::I16,
        DType::I32,
        DType::I64,
        DType::U8,
        DType::U32,
        DType::U64,
    ] {
        for (start, limit, delta) in cases {
            let signed_ok = dtype.is_float() || dtype.is_signed_int() || (start >= 0.0 && limit >= 0.0);
            let whole = start.fract() == 0.0 && delta.fract() == 0.0;
            if !signed_ok || (dtype.is_int() && !whole) || (dtype.size_in_bytes() == 1 && limit > 100.0) {
                continue;
            }
            let n = ((limit - start) / delta).ceil().max(0.0) as usize;
            let want: Vec<f64> = (0..n).map(|i| q(dtype, start + i as f64 * delta)).collect();
            let y = run_op(
                Op::Range {
                    start,
                    limit,
                    delta,
                    dtype,
                },
                &[],
            )
            .unwrap()
            .remove(0);
            assert_eq!(y.dtype(), dtype);
            exact(&y, &want, &[n], &format!("range {dtype} ({start}, {limit}, {delta})"));
        }
    }
}

#[test]
fn integer_range_is_exact_beyond_f64_precision() {
    let start = 9007199254740992.0; // 2^53: start + 1 is not an f64
    let y = run_op(
        Op::Range {
            start,
            limit: start + 6.0,
            delta: 1.0,
            dtype: DType::I64,
        },
        &[],
    )
    .unwrap()
    .remove(0);
    let base = 1i64 << 53;
    assert_eq!(y.to_vec::<i64>().unwrap(), (0..6).map(|k| base + k).collect::<Vec<_>>());
    // A long range runs in parallel; spot-check both ends.
    let y = run_op(
        Op::Range {
            start: -5.0,
            limit: 99995.0,
            delta: 1.0,
            dtype: DType::I32,
        },
        &[],
    )
    .unwrap()
    .remove(0);
    let v = y.to_vec::<i32>().unwrap();
    assert_eq!(v.len(), 100000);
    assert!(v.iter().enumerate().all(|(i, &x)| x == i as i32 - 5));
}
