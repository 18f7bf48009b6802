//! Layout ops on the CPU backend (reshape, squeeze, unsqueeze, transpose,
//! expand, slice, concat, split, tile, pad) against references that index the
//! input directly, for every dtype, with strided inputs and views.

mod common;

use common::*;
use stitch_core::ops::PadMode;
use stitch_core::{DType, Op, Tensor};

/// Every dtype: layout ops move elements without looking at them.
const ALL: [DType; 13] = DType::ALL;

fn exact(actual: &Tensor, expected: &[f64], shape: &[usize], what: &str) {
    assert_close_tol(actual, expected, shape, 0.0, 0.0, what);
}

fn same_buffer(a: &Tensor, b: &Tensor) -> bool {
    std::ptr::eq(a.buffer().as_ptr(), b.buffer().as_ptr())
}

/// A view of a fresh random tensor: `shape` read through a transpose of the
/// last two axes (non-contiguous when both exceed 1) at a non-zero offset.
fn strided(r: &mut rand_chacha::ChaCha8Rng, dtype: DType, shape: &[usize]) -> Tensor {
    let rank = shape.len();
    assert!(rank >= 2);
    let mut base = shape.to_vec();
    base.swap(rank - 2, rank - 1);
    base[0] += 1;
    let t = random(r, dtype, &base).slice(0, 1, base[0] as isize, 1).unwrap();
    let mut perm: Vec<usize> = (0..rank).collect();
    perm.swap(rank - 2, rank - 1);
    let v = t.permute(&perm).unwrap();
    assert!(v.offset() > 0);
    assert!(v.is_contiguous() == (shape[rank - 1] == 1 || shape[rank - 2] == 1));
    assert_eq!(v.shape(), shape);
    v
}

#[test]
fn reshape_of_contiguous_input_is_a_view_and_keeps_row_major_order() {
    let mut r = rng(1);
    for dtype in ALL {
        let x = random(&mut r, dtype, &[2, 3, 4]);
        for (target, shape) in [
            (vec![6i64, 4], vec![6usize, 4]),
            (vec![-1, 2], vec![12, 2]),
            (vec![0, 12], vec![2, 12]),
            (vec![24], vec![24]),
            (vec![2, 1, 3, 1, 4], vec![2, 1, 3, 1, 4]),
        ] {
            let y = run_op(Op::Reshape { shape: target.clone() }, std::slice::from_ref(&x))
                .unwrap()
                .remove(0);
            exact(&y, &x.to_f64_vec(), &shape, &format!("reshape {dtype} {target:?}"));
            assert!(
                same_buffer(&x, &y),
                "reshape {dtype} {target:?} copied a contiguous input"
            );
        }
    }
}

#[test]
fn reshape_of_strided_input_matches_row_major_reference() {
    let mut r = rng(2);
    for dtype in [DType::F32, DType::BF16, DType::I64, DType::Bool, DType::U8] {
        let x = strided(&mut r, dtype, &[3, 4, 5]);
        let want = x.to_f64_vec();
        for (target, shape) in [
            (vec![12i64, 5], vec![12usize, 5]),
            (vec![3, 20], vec![3, 20]),
            (vec![60], vec![60]),
            (vec![5, 4, 3], vec![5, 4, 3]),
        ] {
            let y = run_op(Op::Reshape { shape: target }, std::slice::from_ref(&x))
                .unwrap()
                .remove(0);
            exact(&y, &want, &shape, &format!("strided reshape {dtype} to {shape:?}"));
        }
    }
    // Splitting an axis of a transposed view needs no copy.
    let x = strided(&mut r, DType::F32, &[4, 6]);
    let y = run_op(Op::Reshape { shape: vec![2, 2, 6] }, std::slice::from_ref(&x))
        .unwrap()
        .remove(0);
    exact(&y, &x.to_f64_vec(), &[2, 2, 6], "split-axis reshape");
    assert!(same_buffer(&x, &y));
}

#[test]
fn reshape_of_large_transposed_views_copies_every_element() {
    let mut r = rng(13);
    for dtype in [DType::F32, DType::F16, DType::U8, DType::I64] {
        // Row counts that are not multiples of the copy's row groups, and a batch axis.
        let x = random(&mut r, dtype, &[3, 61, 203]).permute(&[0, 2, 1]).unwrap();
        let y = run_op(
            Op::Reshape {
                shape: vec![3 * 203, 61],
            },
            std::slice::from_ref(&x),
        )
        .unwrap()
        .remove(0);
        exact(
            &y,
            &x.to_f64_vec(),
            &[3 * 203, 61],
            &format!("transposed reshape {dtype}"),
        );
        let x = random(&mut r, dtype, &[130, 257])
            .slice(1, 256, -1, -2)
            .unwrap()
            .permute(&[1, 0])
            .unwrap();
        let y = run_op(Op::Reshape { shape: vec![-1] }, std::slice::from_ref(&x))
            .unwrap()
            .remove(0);
        exact(
            &y,
            &x.to_f64_vec(),
            &[129 * 130],
            &format!("reversed transposed reshape {dtype}"),
        );
    }
}

#[test]
fn squeeze_and_unsqueeze_keep_values_for_strided_and_empty_inputs() {
    let mut r = rng(3);
    for dtype in [DType::F16, DType::I32, DType::Bool] {
        let x = strided(&mut r, dtype, &[1, 3, 1, 4]).slice(3, 0, 4, 2).unwrap();
        let y = run_op(Op::Squeeze { axes: vec![] }, std::slice::from_ref(&x))
            .unwrap()
            .remove(0);
        exact(&y, &x.to_f64_vec(), &[3, 2], &format!("squeeze all {dtype}"));
        let y = run_op(Op::Squeeze { axes: vec![-2] }, std::slice::from_ref(&x))
            .unwrap()
            .remove(0);
        exact(&y, &x.to_f64_vec(), &[1, 3, 2], &format!("squeeze -2 {dtype}"));
        let y = run_op(Op::Unsqueeze { axes: vec![0, -1] }, std::slice::from_ref(&x))
            .unwrap()
            .remove(0);
        exact(&y, &x.to_f64_vec(), &[1, 1, 3, 1, 2, 1], &format!("unsqueeze {dtype}"));
        assert!(same_buffer(&x, &y), "unsqueeze of a view should stay a view");
    }
    let e = Tensor::zeros(DType::F32, &[0, 3]);
    let y = run_op(Op::Reshape { shape: vec![3, -1, 5] }, &[e]).unwrap().remove(0);
    assert_eq!(y.shape(), &[3, 0, 5]);
}

#[test]
fn transpose_permutes_axes_as_a_view_and_empty_perm_reverses() {
    let mut r = rng(4);
    let shape = [2, 3, 4];
    for dtype in ALL {
        let x = random(&mut r, dtype, &shape);
        let xv = x.to_f64_vec();
        for perm in [vec![], vec![1, 0, 2], vec![2, 0, 1], vec![0, 1, 2]] {
            let p: Vec<usize> = if perm.is_empty() { vec![2, 1, 0] } else { perm.clone() };
            let out_shape: Vec<usize> = p.iter().map(|&a| shape[a]).collect();
            let want: Vec<f64> = (0..24)
                .map(|i| {
                    let oi = unravel(i, &out_shape);
                    let mut ii = vec![0; 3];
                    for (k, &a) in p.iter().enumerate() {
                        ii[a] = oi[k];
                    }
                    xv[ravel(&ii, &shape)]
                })
                .collect();
            let y = run_op(Op::Transpose { perm: perm.clone() }, std::slice::from_ref(&x))
                .unwrap()
                .remove(0);
            exact(&y, &want, &out_shape, &format!("transpose {dtype} {perm:?}"));
            assert!(same_buffer(&x, &y));
        }
    }
}

#[test]
fn expand_broadcasts_both_ways_like_onnx() {
    let mut r = rng(5);
    // (input shape, target attribute, output shape): the target may be smaller than the input (ONNX is bidirectional).
    let cases: [(&[usize], &[usize], &[usize]); 5] = [
        (&[3, 1], &[2, 3, 4], &[2, 3, 4]),
        (&[3, 1], &[1, 5], &[3, 5]),
        (&[4], &[2, 3, 1], &[2, 3, 4]),
        (&[2, 1, 3], &[1], &[2, 1, 3]),
        (&[1], &[0, 2], &[0, 2]),
    ];
    for dtype in ALL {
        for (xs, target, out) in cases {
            let x = random(&mut r, dtype, xs);
            let xv = x.to_f64_vec();
            let n: usize = out.iter().product();
            let want: Vec<f64> = (0..n).map(|i| xv[broadcast_index(&unravel(i, out), xs)]).collect();
            let y = run_op(Op::Expand { shape: target.to_vec() }, std::slice::from_ref(&x))
                .unwrap()
                .remove(0);
            exact(&y, &want, out, &format!("expand {dtype} {xs:?} to {target:?}"));
        }
    }
}

/// Python `slice(start, end, step).indices(dim)`, listed.
fn slice_indices(dim: usize, start: i64, end: i64, step: i64) -> Vec<usize> {
    let d = dim as i64;
    let norm = |v: i64, lo: i64, hi: i64| (if v < 0 { v + d } else { v }).clamp(lo, hi);
    let mut out = Vec::new();
    if step > 0 {
        let (mut i, e) = (norm(start, 0, d), norm(end, 0, d));
        while i < e {
            out.push(i as usize);
            i += step;
        }
    } else {
        let (mut i, e) = (norm(start, -1, d - 1), norm(end, -1, d - 1));
        while i > e {
            out.push(i as usize);
            i += step;
        }
    }
    out
}

fn slice_reference(x: &Tensor, starts: &[i64], ends: &[i64], axes: &[i64], steps: &[i64]) -> (Vec<f64>, Vec<usize>) {
    let shape = x.shape();
    let rank = shape.len() as i64;
    let mut per_axis: Vec<Vec<usize>> = shape.iter().map(|&d| (0..d).collect()).collect();
    for i in 0..starts.len() {
        let a = if axes.is_empty() { i as i64 } else { axes[i] };
        let a = if a < 0 { a + rank } else { a } as usize;
        let st = if steps.is_empty() { 1 } else { steps[i] };
        per_axis[a] = slice_indices(shape[a], starts[i], ends[i], st);
    }
    let out_shape: Vec<usize> = per_axis.iter().map(Vec::len).collect();
    let xv = x.to_f64_vec();
    let n: usize = out_shape.iter().product();
    let vals = (0..n)
        .map(|i| {
            let oi = unravel(i, &out_shape);
            let ii: Vec<usize> = oi.iter().zip(&per_axis).map(|(&o, m)| m[o]).collect();
            xv[ravel(&ii, shape)]
        })
        .collect();
    (vals, out_shape)
}

#[test]
fn slice_handles_negative_bounds_clamping_and_negative_steps_as_views() {
    let mut r = rng(6);
    type Case = (Vec<i64>, Vec<i64>, Vec<i64>, Vec<i64>);
    let cases: Vec<Case> = vec![
        (vec![1], vec![3], vec![0], vec![]),
        (vec![0, 1], vec![i64::MAX, -1], vec![], vec![]),
        (vec![-1], vec![i64::MIN], vec![1], vec![-1]),
        (vec![4, -2], vec![-100, 0], vec![2, 0], vec![-2, -1]),
        (vec![-100, 1, 7], vec![100, 5, -9], vec![0, 1, -1], vec![2, 3, -3]),
        (vec![3], vec![1], vec![-1], vec![1]),
        (vec![2], vec![2], vec![1], vec![-1]),
        (vec![10], vec![20], vec![2], vec![1]),
        (vec![-1, 5], vec![-4, -100], vec![0, 2], vec![-1, -2]),
    ];
    for dtype in ALL {
        let contiguous = random(&mut r, dtype, &[3, 5, 6]);
        let view = strided(&mut r, dtype, &[3, 5, 6]);
        for x in [contiguous, view] {
            for (starts, ends, axes, steps) in &cases {
                let (want, shape) = slice_reference(&x, starts, ends, axes, steps);
                let op = Op::Slice {
                    starts: starts.clone(),
                    ends: ends.clone(),
                    axes: axes.clone(),
                    steps: steps.clone(),
                };
                let y = run_op(op, std::slice::from_ref(&x)).unwrap().remove(0);
                let what = format!("slice {dtype} {starts:?} {ends:?} {axes:?} {steps:?}");
                exact(&y, &want, &shape, &what);
                if !want.is_empty() {
                    assert!(same_buffer(&x, &y), "{what}: should be a view");
                }
            }
        }
    }
}

#[test]
fn concat_joins_strided_and_empty_inputs_along_any_axis() {
    let mut r = rng(7);
    for dtype in ALL {
        for axis in [0i64, 1, 2, -1] {
            let ax = if axis < 0 { 2 } else { axis as usize };
            let sizes = [3usize, 0, 2, 4];
            let parts: Vec<Tensor> = sizes
                .iter()
                .enumerate()
                .map(|(i, &s)| {
                    let mut shape = vec![2, 3, 4];
                    shape[ax] = s;
                    if i == 2 && s > 0 {
                        strided(&mut r, dtype, &shape)
                    } else {
                        random(&mut r, dtype, &shape)
                    }
                })
                .collect();
            let mut out_shape = vec![2, 3, 4];
            out_shape[ax] = sizes.iter().sum();
            let vals: Vec<Vec<f64>> = parts.iter().map(Tensor::to_f64_vec).collect();
            let n: usize = out_shape.iter().product();
            let want: Vec<f64> = (0..n)
                .map(|i| {
                    let mut oi = unravel(i, &out_shape);
                    let mut k = 0;
                    while oi[ax] >= sizes[k] {
                        oi[ax] -= sizes[k];
                        k += 1;
                    }
                    vals[k][ravel(&oi, parts[k].shape())]
                })
                .collect();
            let y = run_op(Op::Concat { axis }, &parts).unwrap().remove(0);
            exact(&y, &want, &out_shape, &format!("concat {dtype} axis {axis}"));
        }
    }
}

#[test]
fn concat_of_large_inputs_runs_in_parallel_and_matches() {
    let mut r = rng(8);
    let a = random(&mut r, DType::F32, &[300, 70]);
    let b = random(&mut r, DType::F32, &[300, 130]);
    let y = run_op(Op::Concat { axis: 1 }, &[a.clone(), b.clone()])
        .unwrap()
        .remove(0);
    let (av, bv) = (a.to_f64_vec(), b.to_f64_vec());
    let want: Vec<f64> = (0..300 * 200)
        .map(|i| {
            if i % 200 < 70 {
                av[i / 200 * 70 + i % 200]
            } else {
                bv[i / 200 * 130 + i % 200 - 70]
            }
        })
        .collect();
    exact(&y, &want, &[300, 200], "large concat");
}

#[test]
fn split_returns_views_of_each_piece_including_empty_ones() {
    let mut r = rng(9);
    for dtype in ALL {
        let x = random(&mut r, dtype, &[4, 7]);
        let xv = x.to_f64_vec();
        let sizes = vec![2usize, 0, 5];
        let outs = run_op(
            Op::Split {
                axis: -1,
                sizes: sizes.clone(),
            },
            std::slice::from_ref(&x),
        )
        .unwrap();
        assert_eq!(outs.len(), 3);
        let mut start = 0;
        for (o, &s) in outs.iter().zip(&sizes) {
            let want: Vec<f64> = (0..4 * s).map(|i| xv[(i / s) * 7 + start + i % s]).collect();
            exact(o, &want, &[4, s], &format!("split {dtype} piece at {start}"));
            if s > 0 {
                assert!(same_buffer(&x, o));
            }
            start += s;
        }
        let outs = run_op(
            Op::Split {
                axis: 0,
                sizes: vec![1, 3],
            },
            std::slice::from_ref(&x),
        )
        .unwrap();
        exact(&outs[1], &xv[7..], &[3, 7], &format!("split {dtype} axis 0"));
    }
}

#[test]
fn tile_repeats_along_each_axis() {
    let mut r = rng(10);
    for dtype in ALL {
        for (shape, reps) in [
            (vec![2usize, 3], vec![2usize, 3]),
            (vec![3, 1, 2], vec![1, 4, 2]),
            (vec![4], vec![1]),
            (vec![2, 2], vec![0, 3]),
        ] {
            for view in [false, true] {
                let x = if view && shape.len() >= 2 {
                    strided(&mut r, dtype, &shape)
                } else {
                    random(&mut r, dtype, &shape)
                };
                let xv = x.to_f64_vec();
                let out_shape: Vec<usize> = shape.iter().zip(&reps).map(|(d, r)| d * r).collect();
                let n: usize = out_shape.iter().product();
                let want: Vec<f64> = (0..n)
                    .map(|i| {
                        let ii: Vec<usize> = unravel(i, &out_shape)
                            .iter()
                            .zip(&shape)
                            .map(|(&o, &d)| o % d)
                            .collect();
                        xv[ravel(&ii, &shape)]
                    })
                    .collect();
                let y = run_op(Op::Tile { repeats: reps.clone() }, std::slice::from_ref(&x))
                    .unwrap()
                    .remove(0);
                exact(
                    &y,
                    &want,
                    &out_shape,
                    &format!("tile {dtype} {shape:?} by {reps:?} (view {view})"),
                );
            }
        }
    }
}

/// Input index read by output index `o` of an axis of size `n` padded by `begin`, or None for the constant.
fn pad_ref_index(o: usize, begin: i64, n: usize, mode: PadMode) -> Option<usize> {
    let i = o as i64 - begin;
    let n = n as i64;
    let j = match mode {
        PadMode::Constant => i,
        PadMode::Edge => i.max(0).min(n - 1),
        PadMode::Reflect => {
            if i < 0 {
                -i
            } else if i >= n {
                2 * n - 2 - i
            } else {
                i
            }
        }
    };
    (0 <= j && j < n).then_some(j as usize)
}

#[test]
fn pad_small_examples_match_numpy() {
    let x = Tensor::from_vec(vec![1i32, 2, 3], &[3]).unwrap();
    let run = |pads: Vec<i64>, mode, value| {
        run_op(Op::Pad { pads, mode, value }, std::slice::from_ref(&x))
            .unwrap()
            .remove(0)
            .to_vec::<i32>()
            .unwrap()
    };
    assert_eq!(run(vec![2, 2], PadMode::Reflect, 0.0), vec![3, 2, 1, 2, 3, 2, 1]);
    assert_eq!(run(vec![2, 1], PadMode::Edge, 0.0), vec![1, 1, 1, 2, 3, 3]);
    assert_eq!(run(vec![1, 2], PadMode::Constant, -7.0), vec![-7, 1, 2, 3, -7, -7]);
    assert_eq!(run(vec![-1, 1], PadMode::Reflect, 0.0), vec![2, 3, 2]);
    assert_eq!(run(vec![-2, 0], PadMode::Constant, 5.0), vec![3]);
    assert_eq!(run(vec![-1, -2], PadMode::Edge, 0.0), Vec::<i32>::new());
}

#[test]
fn pad_constant_reflect_edge_with_negative_pads_match_reference() {
    let mut r = rng(11);
    let shape = [3usize, 4, 5];
    let pad_sets: [Vec<i64>; 4] = [
        vec![1, 0, 2, 2, 3, 1],
        vec![0, -1, 2, 1, 2, -3],
        vec![-1, 3, -2, 0, -1, 4],
        vec![0, 0, 0, 0, 0, 0],
    ];
    for dtype in ALL {
        for mode in [PadMode::Constant, PadMode::Reflect, PadMode::Edge] {
            for pads in &pad_sets {
                for view in [false, true] {
                    let x = if view {
                        strided(&mut r, dtype, &shape)
                    } else {
                        random(&mut r, dtype, &shape)
                    };
                    let xv = x.to_f64_vec();
                    let value = if dtype == DType::Bool { 1.0 } else { 2.0 };
                    let fill = Tensor::from_f64(dtype, &[value], &[1]).unwrap().to_f64_vec()[0];
                    let out_shape: Vec<usize> = (0..3)
                        .map(|a| (shape[a] as i64 + pads[a] + pads[3 + a]) as usize)
                        .collect();
                    let n: usize = out_shape.iter().product();
                    let want: Vec<f64> = (0..n)
                        .map(|i| {
                            let oi = unravel(i, &out_shape);
                            let ii: Option<Vec<usize>> =
                                (0..3).map(|a| pad_ref_index(oi[a], pads[a], shape[a], mode)).collect();
                            ii.map_or(fill, |ii| xv[ravel(&ii, &shape)])
                        })
                        .collect();
                    let op = Op::Pad {
                        pads: pads.clone(),
                        mode,
                        value,
                    };
                    let y = run_op(op, std::slice::from_ref(&x)).unwrap().remove(0);
                    exact(
                        &y,
                        &want,
                        &out_shape,
                        &format!("pad {dtype} {mode:?} {pads:?} view {view}"),
                    );
                }
            }
        }
    }
}

#[test]
fn pad_of_a_large_tensor_matches_reference() {
    let mut r = rng(12);
    let x = random(&mut r, DType::F32, &[64, 300]);
    let xv = x.to_f64_vec();
    let y = run_op(
        Op::Pad {
            pads: vec![2, -3, 1, 5],
            mode: PadMode::Reflect,
            value: 0.0,
        },
        std::slice::from_ref(&x),
    )
    .unwrap()
    .remove(0);
    let out_shape = [67usize, 302];
    let want: Vec<f64> = (0..67 * 302)
        .map(|i| {
            let oi = unravel(i, &out_shape);
            let a = pad_ref_index(oi[0], 2, 64, PadMode::Reflect).unwrap();
            let b = pad_ref_index(oi[1], -3, 300, PadMode::Reflect).unwrap();
            xv[a * 300 + b]
        })
        .collect();
    exact(&y, &want, &out_shape, "large reflect pad");
}
