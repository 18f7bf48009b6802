//! Convolution and pooling on the CPU backend against direct f64 loops.

mod common;

use common::*;
use stitch_core::ops::{ConvAttrs, PoolAttrs};
use stitch_core::{DType, Graph, Op, Tensor};

/// Output length of a window along one axis (floor mode), written out directly.
fn out_len(input: usize, k: usize, s: usize, pb: usize, pe: usize, d: usize) -> usize {
    (input + pb + pe - d * (k - 1) - 1) / s + 1
}

/// Shapes as 2-D (a 1-D op gets height 1): (N, C, H, W).
fn as_2d(s: &[usize]) -> (usize, usize, usize, usize) {
    if s.len() == 3 {
        (s[0], s[1], 1, s[2])
    } else {
        (s[0], s[1], s[2], s[3])
    }
}

/// Per-axis attribute vectors as (height, width), 1-D ops getting a trivial height.
fn hw<T: Copy>(v: &[T], trivial: T) -> (T, T) {
    if v.len() == 1 {
        (trivial, v[0])
    } else {
        (v[0], v[1])
    }
}

/// Direct f64 convolution: y[n, m, oh, ow] = b[m] + Σ_{c, i, j} x[n, g·C/G + c, ih, iw] · w[m, c, i, j].
fn ref_conv(x: &Tensor, w: &Tensor, b: Option<&Tensor>, a: &ConvAttrs) -> (Vec<f64>, Vec<usize>) {
    let (xv, wv) = (x.to_f64_vec(), w.to_f64_vec());
    let bv = b.map(|b| b.to_f64_vec());
    let (n, c, ih, iw) = as_2d(x.shape());
    let (m, cg, kh, kw) = as_2d(w.shape());
    let sp = a.strides.len();
    let (sh, sw) = hw(&a.strides, 1);
    let (dh, dw) = hw(&a.dilations, 1);
    let (phb, pwb) = hw(&a.pads[..sp], 0);
    let (phe, pwe) = hw(&a.pads[sp..], 0);
    let (oh, ow) = (out_len(ih, kh, sh, phb, phe, dh), out_len(iw, kw, sw, pwb, pwe, dw));
    let mg = m / a.groups;
    let mut y = Vec::new();
    for ni in 0..n {
        for mi in 0..m {
            let g = mi / mg;
            for oy in 0..oh {
                for ox in 0..ow {
                    let mut s = bv.as_ref().map_or(0.0, |b| b[mi]);
                    for ci in 0..cg {
                        for i in 0..kh {
                            for j in 0..kw {
                                let yy = (oy * sh + i * dh) as isize - phb as isize;
                                let xx = (ox * sw + j * dw) as isize - pwb as isize;
                                if yy < 0 || xx < 0 || yy >= ih as isize || xx >= iw as isize {
                                    continue;
                                }
                                let xc = g * cg + ci;
                                let xi = ((ni * c + xc) * ih + yy as usize) * iw + xx as usize;
                                let wi = ((mi * cg + ci) * kh + i) * kw + j;
                                s += xv[xi] * wv[wi];
                            }
                        }
                    }
                    y.push(s);
                }
            }
        }
    }
    let shape = if x.rank() == 3 {
        vec![n, m, ow]
    } else {
        vec![n, m, oh, ow]
    };
    (y, shape)
}

fn conv_attrs(strides: &[usize], pads: &[usize], dilations: &[usize], groups: usize) -> ConvAttrs {
    ConvAttrs {
        strides: strides.to_vec(),
        pads: pads.to_vec(),
        dilations: dilations.to_vec(),
        groups,
    }
}

fn check_conv(x: &Tensor, w: &Tensor, b: Option<&Tensor>, a: &ConvAttrs, what: &str) {
    let mut ins = vec![x.clone(), w.clone()];
    ins.extend(b.cloned());
    let got = run_op(Op::Conv(a.clone()), &ins).unwrap().remove(0);
    assert_eq!(got.dtype(), x.dtype(), "{what}: dtype");
    let (want, shape) = ref_conv(x, w, b, a);
    // Rounding grows with the number of terms summed per output.
    let terms: usize = w.shape()[1..].iter().product();
    let eps = match x.dtype() {
        DType::F64 => 1e-14,
        DType::F32 => 2e-6,
        DType::F16 => 2e-3,
        _ => 1.6e-2,
    };
    assert_close_tol(&got, &want, &shape, eps, 4.0 * eps * (terms as f64).sqrt(), what);
}

/// (x shape, w shape, strides, pads, dilations, groups, bias)
type ConvCase = (
    &'static [usize],
    &'static [usize],
    &'static [usize],
    &'static [usize],
    &'static [usize],
    usize,
    bool,
);

const CONV2D: &[ConvCase] = &[
    (&[2, 4, 7, 6], &[6, 4, 3, 3], &[1, 1], &[0, 0, 0, 0], &[1, 1], 1, true),
    (&[2, 4, 9, 8], &[6, 2, 3, 2], &[2, 1], &[1, 0, 2, 1], &[2, 1], 2, false),
    (&[1, 4, 5, 5], &[4, 1, 3, 3], &[2, 2], &[1, 1, 1, 1], &[1, 1], 4, true),
    (&[2, 3, 6, 7], &[6, 1, 2, 3], &[1, 2], &[0, 2, 1, 0], &[2, 2], 3, true),
    (&[2, 4, 5, 3], &[5, 4, 1, 1], &[1, 1], &[0, 0, 0, 0], &[1, 1], 1, true),
    (&[1, 4, 5, 6], &[4, 2, 1, 1], &[1, 1], &[0, 0, 0, 0], &[1, 1], 2, false),
    (&[1, 4, 5, 6], &[3, 4, 1, 1], &[2, 2], &[1, 0, 0, 1], &[1, 1], 1, true),
    (&[1, 1, 1, 1], &[1, 1, 1, 1], &[1, 1], &[0, 0, 0, 0], &[1, 1], 1, true),
];

const CONV1D: &[ConvCase] = &[
    (&[2, 3, 10], &[4, 3, 3], &[2], &[2, 1], &[2], 1, true),
    (&[2, 3, 9], &[3, 1, 4], &[1], &[0, 3], &[1], 3, false),
    (&[1, 4, 8], &[6, 2, 2], &[3], &[1, 1], &[3], 2, true),
    (&[3, 2, 5], &[4, 2, 1], &[1], &[0, 0], &[1], 1, true),
];

fn run_cases(cases: &[ConvCase], dtypes: &[DType], seed: u64) {
    let mut r = rng(seed);
    for &dt in dtypes {
        for &(xs, ws, s, p, d, g, bias) in cases {
            let x = random(&mut r, dt, xs);
            let w = random(&mut r, dt, ws);
            let b = bias.then(|| random(&mut r, dt, &[ws[0]]));
            let a = conv_attrs(s, p, d, g);
            check_conv(
                &x,
                &w,
                b.as_ref(),
                &a,
                &format!("{dt} x{xs:?} w{ws:?} {a:?} bias={bias}"),
            );
        }
    }
}

#[test]
fn conv2d_matches_direct_loop_with_strides_pads_dilation_and_groups() {
    run_cases(CONV2D, &[DType::F32, DType::F64], 1);
}

#[test]
fn conv1d_matches_direct_loop_with_strides_pads_dilation_and_groups() {
    run_cases(CONV1D, &[DType::F32, DType::F64], 2);
}

#[test]
fn half_precision_conv_matches_reference_of_rounded_inputs() {
    run_cases(&CONV2D[..4], &[DType::F16, DType::BF16], 3);
    run_cases(&CONV1D[..2], &[DType::F16, DType::BF16], 4);
}

#[test]
fn conv_accepts_non_contiguous_inputs() {
    let mut r = rng(5);
    // x as a permuted view of an NHWC tensor, w with reversed width.
    let x = random(&mut r, DType::F32, &[2, 6, 5, 4])
        .permute(&[0, 3, 1, 2])
        .unwrap();
    let w = random(&mut r, DType::F32, &[3, 4, 3, 2]).slice(3, 1, -1, -1).unwrap();
    let b = random(&mut r, DType::F32, &[6]).slice(0, 0, 6, 2).unwrap();
    assert!(!x.is_contiguous() && !w.is_contiguous() && !b.is_contiguous());
    check_conv(
        &x,
        &w,
        Some(&b),
        &conv_attrs(&[1, 2], &[1, 0, 1, 1], &[1, 1], 1),
        "views",
    );
}

#[test]
fn larger_conv_matches_reference() {
    let mut r = rng(6);
    // One image and group: one big product, threaded im2col and gemm.
    let x = random(&mut r, DType::F32, &[1, 8, 24, 24]);
    let w = random(&mut r, DType::F32, &[16, 8, 3, 3]);
    let b = random(&mut r, DType::F32, &[16]);
    check_conv(
        &x,
        &w,
        Some(&b),
        &conv_attrs(&[1, 1], &[1, 1, 1, 1], &[1, 1], 1),
        "single large",
    );
    // Many small (image, group) tasks, parallel over tasks.
    let x = random(&mut r, DType::F32, &[4, 16, 10, 10]);
    let w = random(&mut r, DType::F32, &[16, 1, 3, 3]);
    check_conv(
        &x,
        &w,
        None,
        &conv_attrs(&[1, 1], &[1, 1, 1, 1], &[1, 1], 16),
        "depthwise batch",
    );
}

/// Direct f64 pooling. Max skips padding; average divides by the real taps or,
/// with `count_include_pad`, by the taps inside input + padding.
fn ref_pool(x: &Tensor, a: &PoolAttrs, avg: bool) -> (Vec<f64>, Vec<usize>) {
    let xv = x.to_f64_vec();
    let (n, c, ih, iw) = as_2d(x.shape());
    let sp = a.kernel.len();
    let (kh, kw) = hw(&a.kernel, 1);
    let (sh, sw) = hw(&a.strides, 1);
    let (dh, dw) = hw(&a.dilations, 1);
    let (phb, pwb) = hw(&a.pads[..sp], 0);
    let (phe, pwe) = hw(&a.pads[sp..], 0);
    let len = |input: usize, k: usize, s: usize, pb: usize, pe: usize, d: usize| {
        let span = d * (k - 1) + 1;
        let num = input + pb + pe - span;
        let mut o = if a.ceil_mode { num.div_ceil(s) } else { num / s } + 1;
        // ceil_mode never starts a window inside the end padding.
        if a.ceil_mode && (o - 1) * s >= input + pb {
            o -= 1;
        }
        o
    };
    let (oh, ow) = (len(ih, kh, sh, phb, phe, dh), len(iw, kw, sw, pwb, pwe, dw));
    let mut y = Vec::new();
    for p in 0..n * c {
        for oy in 0..oh {
            for ox in 0..ow {
                let (mut best, mut sum, mut real, mut padded) = (f64::NEG_INFINITY, 0.0, 0, 0);
                for i in 0..kh {
                    for j in 0..kw {
                        let yy = (oy * sh + i * dh) as isize - phb as isize;
                        let xx = (ox * sw + j * dw) as isize - pwb as isize;
                        if yy < (ih + phe) as isize && xx < (iw + pwe) as isize {
                            padded += 1;
                        }
                        if yy < 0 || xx < 0 || yy >= ih as isize || xx >= iw as isize {
                            continue;
                        }
                        let v = xv[(p * ih + yy as usize) * iw + xx as usize];
                        best = if v.is_nan() || best.is_nan() {
                            f64::NAN
                        } else {
                            best.max(v)
                        };
                        sum += v;
                        real += 1;
                    }
                }
                y.push(if !avg {
                    best
                } else {
                    let count = if a.count_include_pad { padded } else { real };
                    sum / count as f64
                });
            }
        }
    }
    let mut shape = vec![n, c];
    if sp == 2 {
        shape.push(oh);
    }
    shape.push(ow);
    (y, shape)
}

fn pool(
    kernel: &[usize],
    strides: &[usize],
    pads: &[usize],
    dilations: &[usize],
    ceil_mode: bool,
    cip: bool,
) -> PoolAttrs {
    PoolAttrs {
        kernel: kernel.to_vec(),
        strides: strides.to_vec(),
        pads: pads.to_vec(),
        dilations: dilations.to_vec(),
        ceil_mode,
        count_include_pad: cip,
    }
}

/// (x shape, attrs)
fn pool_cases() -> Vec<(&'static [usize], PoolAttrs)> {
    vec![
        (
            &[2, 3, 7, 8],
            pool(&[3, 2], &[2, 2], &[1, 0, 1, 1], &[1, 1], false, false),
        ),
        (
            &[2, 3, 7, 8],
            pool(&[3, 2], &[2, 2], &[1, 0, 1, 1], &[1, 1], true, false),
        ),
        (
            &[1, 2, 6, 6],
            pool(&[3, 3], &[2, 2], &[0, 0, 0, 0], &[1, 1], true, true),
        ),
        (
            &[1, 2, 6, 6],
            pool(&[3, 3], &[2, 2], &[1, 1, 1, 1], &[1, 1], true, true),
        ),
        (
            &[1, 2, 9, 7],
            pool(&[2, 3], &[1, 2], &[1, 2, 0, 1], &[2, 1], false, true),
        ),
        (
            &[2, 2, 9, 9],
            pool(&[3, 3], &[3, 2], &[1, 1, 2, 0], &[2, 2], true, false),
        ),
        (
            &[1, 1, 1, 1],
            pool(&[1, 1], &[1, 1], &[0, 0, 0, 0], &[1, 1], false, false),
        ),
        (&[2, 3, 10], pool(&[3], &[2], &[1, 1], &[1], false, false)),
        (&[2, 3, 10], pool(&[3], &[2], &[1, 1], &[1], true, true)),
        (&[1, 2, 11], pool(&[2], &[3], &[0, 1], &[3], true, false)),
    ]
}

fn check_pool(x: &Tensor, a: &PoolAttrs, avg: bool, what: &str) {
    let op = if avg {
        Op::AvgPool(a.clone())
    } else {
        Op::MaxPool(a.clone())
    };
    let got = run_op(op, std::slice::from_ref(x)).unwrap().remove(0);
    assert_eq!(got.dtype(), x.dtype(), "{what}: dtype");
    let (want, shape) = ref_pool(x, a, avg);
    if avg {
        assert_close(&got, &want, &shape, what);
    } else {
        // Max pooling selects an input element: exact in every dtype.
        assert_close_tol(&got, &want, &shape, 0.0, 0.0, what);
    }
}

#[test]
fn max_pool_matches_reference_with_pads_ceil_mode_and_dilation() {
    let mut r = rng(7);
    for dt in [DType::F32, DType::F64, DType::F16, DType::BF16, DType::I32, DType::U8] {
        for (xs, a) in pool_cases() {
            let x = random(&mut r, dt, xs);
            check_pool(&x, &a, false, &format!("{dt} max x{xs:?} {a:?}"));
        }
    }
}

#[test]
fn avg_pool_matches_reference_with_and_without_counting_padding() {
    let mut r = rng(8);
    for dt in [DType::F32, DType::F64, DType::F16, DType::BF16] {
        for (xs, mut a) in pool_cases() {
            for cip in [false, true] {
                a.count_include_pad = cip;
                let x = random(&mut r, dt, xs);
                check_pool(&x, &a, true, &format!("{dt} avg x{xs:?} {a:?}"));
            }
        }
    }
}

#[test]
fn avg_pool_counts_padding_only_inside_the_padded_input() {
    // Width 5, kernel 2, stride 2, pads [1, 0], ceil_mode: windows cover
    // [-1, 0], [1, 2], [3, 4] — all inside input + padding, so counts are 2.
    // Width 4, kernel 3, stride 2, no pads, ceil_mode: the last window [2, 4]
    // sticks out past the end: its count is 2 either way.
    let x = Tensor::from_vec(vec![1.0f32, 2.0, 3.0, 4.0, 5.0], &[1, 1, 5]).unwrap();
    let a = pool(&[2], &[2], &[1, 0], &[1], true, true);
    let y = run_op(Op::AvgPool(a), &[x]).unwrap().remove(0);
    assert_eq!(y.to_vec::<f32>().unwrap(), vec![0.5, 2.5, 4.5]);
    let x = Tensor::from_vec(vec![1.0f32, 2.0, 3.0, 4.0], &[1, 1, 4]).unwrap();
    let a = pool(&[3], &[2], &[0, 0], &[1], true, true);
    let y = run_op(Op::AvgPool(a), &[x]).unwrap().remove(0);
    assert_eq!(y.to_vec::<f32>().unwrap(), vec![2.0, 3.5]);
}

#[test]
fn pooling_accepts_non_contiguous_input_and_max_propagates_nan() {
    let mut r = rng(9);
    let x = random(&mut r, DType::F32, &[2, 6, 5, 3])
        .permute(&[0, 3, 1, 2])
        .unwrap();
    let a = pool(&[2, 3], &[1, 2], &[0, 1, 1, 1], &[1, 1], true, false);
    check_pool(&x, &a, false, "max view");
    check_pool(&x, &a, true, "avg view");
    let mut v: Vec<f32> = (0..16).map(|i| i as f32).collect();
    v[5] = f32::NAN;
    let x = Tensor::from_vec(v, &[1, 1, 4, 4]).unwrap();
    let y = run_op(
        Op::MaxPool(pool(&[2, 2], &[2, 2], &[0; 4], &[1, 1], false, false)),
        &[x],
    )
    .unwrap()
    .remove(0);
    let y = y.to_vec::<f32>().unwrap();
    assert!(y[0].is_nan(), "{y:?}");
    assert_eq!(&y[1..], &[7.0, 13.0, 15.0]);
}

#[test]
fn larger_pools_match_reference() {
    let mut r = rng(10);
    let x = random(&mut r, DType::F32, &[2, 8, 33, 31]);
    let a = pool(&[3, 3], &[2, 2], &[1, 1, 1, 1], &[1, 1], true, false);
    check_pool(&x, &a, false, "large max");
    check_pool(&x, &a, true, "large avg");
}

#[test]
fn max_pool_with_a_window_larger_than_the_input_is_an_error_naming_the_shape() {
    let mut g = Graph::new();
    let x = g.placeholder("x", DType::F32, vec![1usize, 2, 3, 3]);
    let err = g.max_pool(x, PoolAttrs::new(&[4, 2])).unwrap_err().to_string();
    assert!(err.contains("[1, 2, 3, 3]"), "{err}");
    // With enough padding the same window fits.
    let mut a = PoolAttrs::new(&[4, 2]);
    a.pads = vec![1, 0, 0, 0];
    assert!(g.max_pool(x, a).is_ok());
}
