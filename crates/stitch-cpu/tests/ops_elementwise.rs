//! Elementwise kernels (unary, binary, where, cast, clamp) against simple f64
//! references, run through the executor on the CPU backend.

mod common;

use common::*;
use proptest::prelude::*;
use stitch_core::ops::{BinaryOp, UnaryOp};
use stitch_core::{Bool8, DType, Op, Tensor};

const FLOATS: [DType; 4] = [DType::F32, DType::F64, DType::F16, DType::BF16];
const INTS: [DType; 8] = [
    DType::I8,
    DType::U8,
    DType::I16,
    DType::U16,
    DType::I32,
    DType::U32,
    DType::I64,
    DType::U64,
];

fn run1(op: Op, inputs: &[Tensor]) -> Tensor {
    run_op(op.clone(), inputs)
        .unwrap_or_else(|e| panic!("{op:?}: {e}"))
        .remove(0)
}

/// erf by its Taylor series (accurate to ~1e-13 for |x| <= 3), independent of the kernel's erf.
fn erf_ref(x: f64) -> f64 {
    let (mut term, mut sum, mut n) = (x, x, 0.0);
    while term.abs() > 1e-17 * sum.abs().max(1e-300) || n < 3.0 {
        n += 1.0;
        term *= -x * x / n;
        sum += term / (2.0 * n + 1.0);
        if n > 200.0 {
            break;
        }
    }
    2.0 / std::f64::consts::PI.sqrt() * sum
}

fn unary_ref(op: UnaryOp, x: f64) -> f64 {
    let sig = |x: f64| 1.0 / (1.0 + (-x).exp());
    match op {
        UnaryOp::Neg => -x,
        UnaryOp::Abs => x.abs(),
        UnaryOp::Exp => x.exp(),
        UnaryOp::Log => x.ln(),
        UnaryOp::Sqrt => x.sqrt(),
        UnaryOp::Rsqrt => 1.0 / x.sqrt(),
        UnaryOp::Sin => x.sin(),
        UnaryOp::Cos => x.cos(),
        UnaryOp::Tanh => x.tanh(),
        UnaryOp::Sigmoid => sig(x),
        UnaryOp::Erf => erf_ref(x),
        UnaryOp::Relu => x.max(0.0),
        UnaryOp::Gelu => 0.5 * x * (1.0 + erf_ref(x / 2f64.sqrt())),
        UnaryOp::GeluTanh => {
            0.5 * x * (1.0 + ((2.0 / std::f64::consts::PI).sqrt() * (x + 0.044715 * x * x * x)).tanh())
        }
        UnaryOp::Silu => x * sig(x),
        UnaryOp::Floor => x.floor(),
        UnaryOp::Ceil => x.ceil(),
        UnaryOp::Round => x.round_ties_even(),
        UnaryOp::Sign => {
            if x > 0.0 {
                1.0
            } else if x < 0.0 {
                -1.0
            } else {
                0.0
            }
        }
        UnaryOp::Reciprocal => 1.0 / x,
        UnaryOp::Not => unreachable!(),
    }
}

#[test]
fn unary_float_ops_match_f64_reference_for_every_float_dtype() {
    let mut r = rng(1);
    for op in UnaryOp::ALL.into_iter().filter(|&o| o != UnaryOp::Not) {
        let positive = matches!(op, UnaryOp::Log | UnaryOp::Sqrt | UnaryOp::Rsqrt | UnaryOp::Reciprocal);
        for dt in FLOATS {
            for shape in [&[][..], &[7], &[3, 5], &[2, 1, 33], &[0, 4]] {
                let x = if positive {
                    random_range(&mut r, dt, shape, 0.25, 3.0)
                } else {
                    random_range(&mut r, dt, shape, -3.0, 3.0)
                };
                let y = run1(Op::Unary(op), std::slice::from_ref(&x));
                assert_eq!(y.dtype(), dt);
                let expected: Vec<f64> = x.to_f64_vec().into_iter().map(|v| unary_ref(op, v)).collect();
                assert_close(&y, &expected, shape, &format!("{} {dt} {shape:?}", op.name()));
            }
        }
    }
}

#[test]
fn unary_float_ops_on_transposed_input_match_reference() {
    let mut r = rng(2);
    let x = random_range(&mut r, DType::F32, &[4, 6], -3.0, 3.0)
        .permute(&[1, 0])
        .unwrap();
    for op in [UnaryOp::Exp, UnaryOp::Gelu, UnaryOp::Silu, UnaryOp::Round] {
        let y = run1(Op::Unary(op), std::slice::from_ref(&x));
        let expected: Vec<f64> = x.to_f64_vec().into_iter().map(|v| unary_ref(op, v)).collect();
        assert_close(&y, &expected, &[6, 4], op.name());
    }
}

#[test]
fn round_is_half_to_even_and_sign_keeps_nan() {
    let x = Tensor::from_vec(vec![0.5f32, 1.5, 2.5, -0.5, -1.5, -2.5, 2.4999], &[7]).unwrap();
    let y = run1(Op::Unary(UnaryOp::Round), &[x]);
    assert_eq!(y.to_vec::<f32>().unwrap(), vec![0.0, 2.0, 2.0, -0.0, -2.0, -2.0, 2.0]);
    let x = Tensor::from_vec(vec![f64::NAN, 0.0, -3.0, 0.1], &[4]).unwrap();
    let y = run1(Op::Unary(UnaryOp::Sign), &[x]).to_vec::<f64>().unwrap();
    assert!(y[0].is_nan());
    assert_eq!(&y[1..], &[0.0, -1.0, 1.0]);
    // Saturating exponent: sigmoid/silu of huge negative values are exactly 0, no NaN.
    let x = Tensor::from_vec(vec![-1000f32, 1000.0], &[2]).unwrap();
    assert_eq!(
        run1(Op::Unary(UnaryOp::Sigmoid), std::slice::from_ref(&x))
            .to_vec::<f32>()
            .unwrap(),
        vec![0.0, 1.0]
    );
    let s = run1(Op::Unary(UnaryOp::Silu), &[x]).to_vec::<f32>().unwrap();
    assert_eq!(s, vec![0.0, 1000.0]);
}

#[test]
fn unary_int_ops_match_reference_and_wrap() {
    let mut r = rng(3);
    for dt in INTS {
        let x = random(&mut r, dt, &[5, 7]);
        let xs = x.to_f64_vec();
        for op in [UnaryOp::Abs, UnaryOp::Sign, UnaryOp::Relu, UnaryOp::Neg] {
            if !op.accepts(dt) {
                continue;
            }
            let y = run1(Op::Unary(op), std::slice::from_ref(&x));
            assert_eq!(y.dtype(), dt);
            let expected: Vec<f64> = xs.iter().map(|&v| unary_ref(op, v)).collect();
            assert_close(&y, &expected, &[5, 7], &format!("{} {dt}", op.name()));
        }
    }
    // abs and neg of MIN wrap instead of panicking.
    let x = Tensor::from_vec(vec![i8::MIN, -5, 5], &[3]).unwrap();
    assert_eq!(
        run1(Op::Unary(UnaryOp::Abs), std::slice::from_ref(&x))
            .to_vec::<i8>()
            .unwrap(),
        vec![i8::MIN, 5, 5]
    );
    assert_eq!(
        run1(Op::Unary(UnaryOp::Neg), &[x]).to_vec::<i8>().unwrap(),
        vec![i8::MIN, 5, -5]
    );
}

#[test]
fn logical_not_flips_bools() {
    let x = Tensor::from_vec(vec![Bool8(0), Bool8(1), Bool8(7)], &[3]).unwrap();
    let y = run1(Op::Unary(UnaryOp::Not), &[x]);
    assert_eq!(y.to_vec::<Bool8>().unwrap(), vec![Bool8(1), Bool8(0), Bool8(0)]);
}

fn py_mod(x: f64, y: f64) -> f64 {
    let r = x % y;
    if r != 0.0 && ((r < 0.0) != (y < 0.0)) {
        r + y
    } else {
        r
    }
}

fn binary_ref(op: BinaryOp, x: f64, y: f64) -> f64 {
    let b = |c: bool| c as u8 as f64;
    match op {
        BinaryOp::Add => x + y,
        BinaryOp::Sub => x - y,
        BinaryOp::Mul => x * y,
        BinaryOp::Div => x / y,
        BinaryOp::Pow => x.powf(y),
        BinaryOp::Max => x.max(y),
        BinaryOp::Min => x.min(y),
        BinaryOp::Mod => py_mod(x, y),
        BinaryOp::Fmod => x % y,
        BinaryOp::Equal => b(x == y),
        BinaryOp::NotEqual => b(x != y),
        BinaryOp::Less => b(x < y),
        BinaryOp::LessEqual => b(x <= y),
        BinaryOp::Greater => b(x > y),
        BinaryOp::GreaterEqual => b(x >= y),
        BinaryOp::And => b(x != 0.0 && y != 0.0),
        BinaryOp::Or => b(x != 0.0 || y != 0.0),
        BinaryOp::Xor => b((x != 0.0) != (y != 0.0)),
    }
}

/// Reference for a broadcasting binary op, by looping over output multi-indices.
fn broadcast_ref(a: &Tensor, b: &Tensor, f: impl Fn(f64, f64) -> f64) -> (Vec<f64>, Vec<usize>) {
    let out = broadcast(a.shape(), b.shape());
    let (av, bv) = (a.to_f64_vec(), b.to_f64_vec());
    let n: usize = out.iter().product();
    let vals = (0..n)
        .map(|i| {
            let idx = unravel(i, &out);
            f(
                av[broadcast_index(&idx, a.shape())],
                bv[broadcast_index(&idx, b.shape())],
            )
        })
        .collect();
    (vals, out)
}

const SHAPE_PAIRS: [(&[usize], &[usize]); 7] = [
    (&[2, 3, 4], &[3, 1]),
    (&[1], &[5, 1, 2]),
    (&[], &[4, 3]),
    (&[4], &[]),
    (&[3, 1, 5], &[1, 4, 1]),
    (&[2, 3], &[2, 3]),
    (&[0, 3], &[3]),
];

#[test]
fn binary_float_ops_broadcast_and_match_reference() {
    let mut r = rng(4);
    for op in BinaryOp::ALL.into_iter().filter(|o| !o.is_logical()) {
        for dt in FLOATS {
            for (sa, sb) in SHAPE_PAIRS {
                // Keep pow's base and the divisors away from 0.
                let a = if op == BinaryOp::Pow {
                    random_range(&mut r, dt, sa, 0.25, 3.0)
                } else {
                    random(&mut r, dt, sa)
                };
                let b = match op {
                    BinaryOp::Div | BinaryOp::Mod | BinaryOp::Fmod => {
                        let v = random_range(&mut r, DType::F64, sb, 0.5, 2.0).to_f64_vec();
                        let v: Vec<f64> = v
                            .iter()
                            .enumerate()
                            .map(|(i, x)| if i % 2 == 0 { -x } else { *x })
                            .collect();
                        Tensor::from_f64(dt, &v, sb).unwrap()
                    }
                    _ => random(&mut r, dt, sb),
                };
                // Make some comparisons tie.
                let b = if op.is_comparison() && sa == sb { a.clone() } else { b };
                let y = run1(Op::Binary(op), &[a.clone(), b.clone()]);
                assert_eq!(y.dtype(), op.output_dtype(dt));
                let (expected, shape) = broadcast_ref(&a, &b, |x, y| binary_ref(op, x, y));
                let what = format!("{} {dt} {sa:?} {sb:?}", op.name());
                if op.is_comparison() {
                    assert_close_tol(&y, &expected, &shape, 0.0, 0.0, &what);
                } else {
                    assert_close(&y, &expected, &shape, &what);
                }
            }
        }
    }
}

#[test]
fn binary_ops_on_non_contiguous_views_match_reference() {
    let mut r = rng(5);
    for dt in [DType::F32, DType::I32, DType::BF16] {
        // [3, 4] transposed from [4, 3], and a reversed [4] via a negative-stride slice.
        let a = random(&mut r, dt, &[4, 3]).permute(&[1, 0]).unwrap();
        let b = random(&mut r, dt, &[4]).slice(0, 3, -1, -1).unwrap();
        let c = random(&mut r, dt, &[2, 4, 3]).permute(&[2, 0, 1]).unwrap(); // [3, 2, 4]
        let c = c.slice(1, 1, 2, 1).unwrap(); // [3, 1, 4], offset != 0
        assert!(!a.is_contiguous() && !c.is_contiguous());
        for op in [BinaryOp::Add, BinaryOp::Mul, BinaryOp::Max, BinaryOp::Less] {
            for (x, y) in [(&a, &b), (&b, &a), (&a, &c), (&c, &a), (&a, &a)] {
                let out = run1(Op::Binary(op), &[x.clone(), y.clone()]);
                let (expected, shape) = broadcast_ref(x, y, |p, q| binary_ref(op, p, q));
                assert_close(
                    &out,
                    &expected,
                    &shape,
                    &format!("{} {dt} {:?} {:?}", op.name(), x.shape(), y.shape()),
                );
            }
        }
    }
}

#[test]
fn binary_int_ops_match_reference_for_every_int_dtype() {
    let mut r = rng(6);
    let ops = [
        BinaryOp::Add,
        BinaryOp::Sub,
        BinaryOp::Mul,
        BinaryOp::Div,
        BinaryOp::Max,
        BinaryOp::Min,
        BinaryOp::Mod,
        BinaryOp::Fmod,
        BinaryOp::Equal,
        BinaryOp::Less,
        BinaryOp::GreaterEqual,
    ];
    for dt in INTS {
        for (sa, sb) in [(&[3, 4][..], &[4][..]), (&[2, 1, 5], &[3, 1])] {
            let a = random(&mut r, dt, sa);
            let b = random(&mut r, dt, sb);
            for op in ops {
                let y = run1(Op::Binary(op), &[a.clone(), b.clone()]);
                let (expected, shape) = broadcast_ref(&a, &b, |x, y| {
                    let v = match op {
                        _ if y == 0.0 && matches!(op, BinaryOp::Div | BinaryOp::Mod | BinaryOp::Fmod) => 0.0,
                        BinaryOp::Div => (x / y).trunc(),
                        _ => binary_ref(op, x, y),
                    };
                    // Results wrap into the type (e.g. 3 - 5 or 20 * 20 in u8).
                    if op.is_comparison() {
                        return v;
                    }
                    let m = 2f64.powi(8 * dt.size_in_bytes() as i32);
                    let lo = if dt.is_signed_int() { -m / 2.0 } else { 0.0 };
                    if v >= lo && v < lo + m {
                        return v;
                    }
                    let w = v.rem_euclid(m);
                    if dt.is_signed_int() && w >= m / 2.0 {
                        w - m
                    } else {
                        w
                    }
                });
                assert_close(&y, &expected, &shape, &format!("{} {dt}", op.name()));
            }
        }
    }
}

#[test]
fn int_division_and_remainders_follow_stitch_semantics() {
    let a = Tensor::from_vec(vec![-7i32, 7, -7, 7, 6, -6, 5, i32::MIN, i32::MIN], &[9]).unwrap();
    let b = Tensor::from_vec(vec![2i32, -2, -2, 0, -3, 3, 0, -1, 7], &[9]).unwrap();
    let get = |op| run1(Op::Binary(op), &[a.clone(), b.clone()]).to_vec::<i32>().unwrap();
    assert_eq!(get(BinaryOp::Div), vec![-3, -3, 3, 0, -2, -2, 0, i32::MIN, -306783378]);
    assert_eq!(get(BinaryOp::Mod), vec![1, -1, -1, 0, 0, 0, 0, 0, 5]);
    assert_eq!(get(BinaryOp::Fmod), vec![-1, 1, -1, 0, 0, 0, 0, 0, -2]);

    // Wrapping arithmetic.
    let a = Tensor::from_vec(vec![100i8, -128, 16, 127], &[4]).unwrap();
    let b = Tensor::from_vec(vec![100i8, -1, 16, 1], &[4]).unwrap();
    let get = |op| run1(Op::Binary(op), &[a.clone(), b.clone()]).to_vec::<i8>().unwrap();
    assert_eq!(get(BinaryOp::Add), vec![-56, 127, 32, -128]);
    assert_eq!(get(BinaryOp::Mul), vec![16, -128, 0, 127]);
    assert_eq!(get(BinaryOp::Div), vec![1, -128, 1, 127]);
    let u = Tensor::from_vec(vec![3u8, 250], &[2]).unwrap();
    let v = Tensor::from_vec(vec![5u8, 10], &[2]).unwrap();
    assert_eq!(
        run1(Op::Binary(BinaryOp::Sub), &[u.clone(), v.clone()])
            .to_vec::<u8>()
            .unwrap(),
        vec![254, 240]
    );
    assert_eq!(
        run1(Op::Binary(BinaryOp::Add), &[u, v]).to_vec::<u8>().unwrap(),
        vec![8, 4]
    );
}

#[test]
fn int_pow_wraps_and_maps_negative_exponents_like_integer_division() {
    let a = Tensor::from_vec(vec![2i32, 3, -1, -1, 1, 0, 0, -2, 2, 5], &[10]).unwrap();
    let b = Tensor::from_vec(vec![10i32, -1, -3, -2, -5, -1, 0, 3, 31, 0], &[10]).unwrap();
    let y = run1(Op::Binary(BinaryOp::Pow), &[a, b]).to_vec::<i32>().unwrap();
    assert_eq!(y, vec![1024, 0, -1, 1, 1, 0, 1, -8, i32::MIN, 1]);
    let a = Tensor::from_vec(vec![2u8, 3], &[2]).unwrap();
    let b = Tensor::from_vec(vec![8u8, 5], &[2]).unwrap();
    assert_eq!(
        run1(Op::Binary(BinaryOp::Pow), &[a, b]).to_vec::<u8>().unwrap(),
        vec![0, 243]
    );
}

#[test]
fn float_max_min_propagate_nan_and_comparisons_treat_nan_as_unordered() {
    for dt in FLOATS {
        let a = Tensor::from_f64(dt, &[f64::NAN, 1.0, 2.0, f64::NAN], &[4]).unwrap();
        let b = Tensor::from_f64(dt, &[1.0, f64::NAN, 3.0, f64::NAN], &[4]).unwrap();
        let nan = f64::NAN;
        let mx = run1(Op::Binary(BinaryOp::Max), &[a.clone(), b.clone()]);
        assert_close(&mx, &[nan, nan, 3.0, nan], &[4], &format!("max {dt}"));
        let mn = run1(Op::Binary(BinaryOp::Min), &[a.clone(), b.clone()]);
        assert_close(&mn, &[nan, nan, 2.0, nan], &[4], &format!("min {dt}"));
        let eq = run1(Op::Binary(BinaryOp::Equal), &[a.clone(), b.clone()]);
        assert_eq!(eq.to_f64_vec(), vec![0.0, 0.0, 0.0, 0.0]);
        let ne = run1(Op::Binary(BinaryOp::NotEqual), &[a.clone(), a.clone()]);
        assert_eq!(ne.to_f64_vec(), vec![1.0, 0.0, 0.0, 1.0]);
    }
    // Python-style float mod: sign of the divisor.
    let a = Tensor::from_vec(vec![-7.5f64, 7.5, -7.5], &[3]).unwrap();
    let b = Tensor::from_vec(vec![2.0f64, -2.0, -2.0], &[3]).unwrap();
    assert_eq!(
        run1(Op::Binary(BinaryOp::Mod), &[a.clone(), b.clone()])
            .to_vec::<f64>()
            .unwrap(),
        vec![0.5, -0.5, -1.5]
    );
    assert_eq!(
        run1(Op::Binary(BinaryOp::Fmod), &[a, b]).to_vec::<f64>().unwrap(),
        vec![-1.5, 1.5, -1.5]
    );
}

#[test]
fn logical_ops_broadcast_over_bools() {
    let mut r = rng(7);
    for (sa, sb) in [(&[2, 3][..], &[3][..]), (&[4, 1], &[1, 5]), (&[], &[3])] {
        let a = random(&mut r, DType::Bool, sa);
        let b = random(&mut r, DType::Bool, sb);
        for op in [
            BinaryOp::And,
            BinaryOp::Or,
            BinaryOp::Xor,
            BinaryOp::Equal,
            BinaryOp::NotEqual,
        ] {
            let y = run1(Op::Binary(op), &[a.clone(), b.clone()]);
            assert_eq!(y.dtype(), DType::Bool);
            let (expected, shape) = broadcast_ref(&a, &b, |x, y| binary_ref(op, x, y));
            assert_close(&y, &expected, &shape, op.name());
        }
    }
}

#[test]
fn where_selects_with_three_way_broadcast() {
    let mut r = rng(8);
    for dt in [DType::F32, DType::I64, DType::F16, DType::Bool] {
        for (sc, sa, sb) in [
            (&[2, 1, 4][..], &[3, 1][..], &[][..]),
            (&[4], &[2, 3, 4], &[3, 1]),
            (&[2, 3], &[2, 3], &[2, 3]),
            (&[], &[5], &[1]),
        ] {
            let c = random(&mut r, DType::Bool, sc);
            let a = random(&mut r, dt, sa);
            let b = random(&mut r, dt, sb);
            let y = run1(Op::Where, &[c.clone(), a.clone(), b.clone()]);
            assert_eq!(y.dtype(), dt);
            let out = broadcast(&broadcast(sc, sa), sb);
            let (cv, av, bv) = (c.to_f64_vec(), a.to_f64_vec(), b.to_f64_vec());
            let expected: Vec<f64> = (0..out.iter().product())
                .map(|i| {
                    let idx = unravel(i, &out);
                    if cv[broadcast_index(&idx, sc)] != 0.0 {
                        av[broadcast_index(&idx, sa)]
                    } else {
                        bv[broadcast_index(&idx, sb)]
                    }
                })
                .collect();
            assert_close_tol(
                &y,
                &expected,
                &out,
                0.0,
                0.0,
                &format!("where {dt} {sc:?} {sa:?} {sb:?}"),
            );
        }
    }
    // Non-contiguous condition.
    let c = random(&mut r, DType::Bool, &[4, 3]).permute(&[1, 0]).unwrap();
    let a = random(&mut r, DType::F32, &[3, 4]);
    let b = random(&mut r, DType::F32, &[4]);
    let y = run1(Op::Where, &[c.clone(), a.clone(), b.clone()]);
    let (cv, av, bv) = (c.to_f64_vec(), a.to_f64_vec(), b.to_f64_vec());
    let expected: Vec<f64> = (0..12).map(|i| if cv[i] != 0.0 { av[i] } else { bv[i % 4] }).collect();
    assert_close_tol(&y, &expected, &[3, 4], 0.0, 0.0, "where transposed cond");
}

#[test]
fn cast_between_every_dtype_pair_preserves_small_integers() {
    let mut r = rng(9);
    for from in stitch_core::DType::ALL {
        let x = random(&mut r, from, &[3, 4]);
        let x = if from.is_unsigned_int() || from == DType::Bool {
            x
        } else {
            run1(Op::Unary(UnaryOp::Abs), &[x])
        };
        // Integral values 0..=20 (floats rounded to integers first).
        let x = if from.is_float() {
            run1(Op::Unary(UnaryOp::Round), &[x])
        } else {
            x
        };
        let xs = x.to_f64_vec();
        for to in stitch_core::DType::ALL {
            let y = run1(Op::Cast(to), std::slice::from_ref(&x));
            assert_eq!(y.dtype(), to);
            let expected: Vec<f64> = xs
                .iter()
                .map(|&v| if to == DType::Bool { (v != 0.0) as u8 as f64 } else { v })
                .collect();
            assert_close_tol(&y, &expected, &[3, 4], 0.0, 0.0, &format!("cast {from} -> {to}"));
            // And back again.
            if from != DType::Bool && to != DType::Bool {
                let back = run1(Op::Cast(from), &[y]);
                assert_close_tol(&back, &xs, &[3, 4], 0.0, 0.0, &format!("cast {from} -> {to} -> {from}"));
            }
        }
    }
}

#[test]
fn cast_float_to_int_truncates_and_saturates_and_nan_is_zero() {
    let x = Tensor::from_vec(vec![300.7f32, -300.2, f32::NAN, -2.7, 2.7, f32::INFINITY, -0.9], &[7]).unwrap();
    assert_eq!(
        run1(Op::Cast(DType::I8), std::slice::from_ref(&x))
            .to_vec::<i8>()
            .unwrap(),
        vec![127, -128, 0, -2, 2, 127, 0]
    );
    assert_eq!(
        run1(Op::Cast(DType::U8), std::slice::from_ref(&x))
            .to_vec::<u8>()
            .unwrap(),
        vec![255, 0, 0, 0, 2, 255, 0]
    );
    assert_eq!(
        run1(Op::Cast(DType::Bool), &[x])
            .to_vec::<Bool8>()
            .unwrap()
            .iter()
            .map(|b| b.0)
            .collect::<Vec<_>>(),
        vec![1, 1, 1, 1, 1, 1, 1]
    );
    let x = Tensor::from_vec(vec![0.0f64, -0.0, 1e300, -1e300], &[4]).unwrap();
    assert_eq!(
        run1(Op::Cast(DType::I64), std::slice::from_ref(&x))
            .to_vec::<i64>()
            .unwrap(),
        vec![0, 0, i64::MAX, i64::MIN]
    );
    assert_eq!(run1(Op::Cast(DType::Bool), &[x]).to_f64_vec(), vec![0.0, 0.0, 1.0, 1.0]);
    // Values that overflow f16 become infinities; bf16 keeps the range.
    let x = Tensor::from_vec(vec![1e5f32, -1e5], &[2]).unwrap();
    assert_eq!(
        run1(Op::Cast(DType::F16), std::slice::from_ref(&x)).to_f64_vec(),
        vec![f64::INFINITY, f64::NEG_INFINITY]
    );
    assert_close(&run1(Op::Cast(DType::BF16), &[x]), &[1e5, -1e5], &[2], "bf16");
}

#[test]
fn cast_between_wide_ints_does_not_go_through_f64() {
    let big = (1i64 << 62) + 1;
    let x = Tensor::from_vec(vec![big, -1, (1i64 << 32) + 5, -big], &[4]).unwrap();
    let u = run1(Op::Cast(DType::U64), std::slice::from_ref(&x));
    assert_eq!(
        u.to_vec::<u64>().unwrap(),
        vec![big as u64, u64::MAX, (1u64 << 32) + 5, (-big) as u64]
    );
    assert_eq!(
        run1(Op::Cast(DType::I64), &[u]).to_vec::<i64>().unwrap(),
        x.to_vec::<i64>().unwrap()
    );
    assert_eq!(
        run1(Op::Cast(DType::I32), std::slice::from_ref(&x))
            .to_vec::<i32>()
            .unwrap(),
        vec![1, -1, 5, -1]
    );
    assert_eq!(
        run1(Op::Cast(DType::U16), &[x]).to_vec::<u16>().unwrap(),
        vec![1, 65535, 5, 65535]
    );
    let m = Tensor::from_vec(vec![u64::MAX, 1u64 << 63], &[2]).unwrap();
    assert_eq!(
        run1(Op::Cast(DType::I64), &[m]).to_vec::<i64>().unwrap(),
        vec![-1, i64::MIN]
    );
}

#[test]
fn cast_int_to_float_rounds_to_nearest_without_double_rounding() {
    // 2^60 + 2^52 + 1 is just above the midpoint between two bf16 values; going
    // through f64 first would round it to the midpoint and then down to even.
    let v = (1i64 << 60) + (1i64 << 52) + 1;
    let w = (1i64 << 60) + (1i64 << 36) + 1; // same for f32
    let x = Tensor::from_vec(vec![v, w, -v], &[3]).unwrap();
    let bf = run1(Op::Cast(DType::BF16), std::slice::from_ref(&x)).to_f64_vec();
    assert_eq!(
        bf,
        vec![
            2f64.powi(60) + 2f64.powi(53),
            2f64.powi(60),
            -(2f64.powi(60) + 2f64.powi(53))
        ]
    );
    let f = run1(Op::Cast(DType::F32), std::slice::from_ref(&x)).to_f64_vec();
    assert_eq!(f[1], 2f64.powi(60) + 2f64.powi(37));
    let d = run1(Op::Cast(DType::F64), &[x]).to_vec::<f64>().unwrap();
    assert_eq!(d[0], v as f64);
    // f64 -> f16/bf16 round once: 1 + 2^-11 + 2^-40 is just above an f16 midpoint.
    let x = Tensor::from_vec(
        vec![
            1.0 + 2f64.powi(-11) + 2f64.powi(-40),
            1.0 + 2f64.powi(-8) + 2f64.powi(-40),
        ],
        &[2],
    )
    .unwrap();
    let h = run1(Op::Cast(DType::F16), std::slice::from_ref(&x)).to_f64_vec();
    assert_eq!(h[0], 1.0 + 2f64.powi(-10));
    let b = run1(Op::Cast(DType::BF16), &[x]).to_f64_vec();
    assert_eq!(b[1], 1.0 + 2f64.powi(-7));
    // Bools cast to 0/1.
    let b = Tensor::from_vec(vec![Bool8(0), Bool8(1), Bool8(9)], &[3]).unwrap();
    assert_eq!(
        run1(Op::Cast(DType::F32), std::slice::from_ref(&b))
            .to_vec::<f32>()
            .unwrap(),
        vec![0.0, 1.0, 1.0]
    );
    assert_eq!(
        run1(Op::Cast(DType::I16), std::slice::from_ref(&b))
            .to_vec::<i16>()
            .unwrap(),
        vec![0, 1, 1]
    );
    assert_eq!(
        run1(Op::Cast(DType::Bool), &[b]).to_vec::<Bool8>().unwrap(),
        vec![Bool8(0), Bool8(1), Bool8(1)]
    );
}

#[test]
fn clamp_with_one_or_both_bounds_matches_reference_and_keeps_nan() {
    let mut r = rng(10);
    for dt in [
        DType::F32,
        DType::F64,
        DType::F16,
        DType::BF16,
        DType::I32,
        DType::U8,
        DType::I8,
    ] {
        let x = random(&mut r, dt, &[4, 5]).permute(&[1, 0]).unwrap();
        let xs = x.to_f64_vec();
        for (lo, hi) in [
            (Some(-0.5), None),
            (None, Some(1.25)),
            (Some(-1.0), Some(1.0)),
            (Some(3.0), Some(3.0)),
        ] {
            let y = run1(Op::Clamp { min: lo, max: hi }, std::slice::from_ref(&x));
            // Bounds take the tensor's dtype first (integers truncate them).
            let conv = |b: f64| Tensor::from_f64(dt, &[b], &[]).unwrap().to_f64_vec()[0];
            let expected: Vec<f64> = xs
                .iter()
                .map(|&v| {
                    let v = lo.map_or(v, |l| v.max(conv(l)));
                    hi.map_or(v, |h| v.min(conv(h)))
                })
                .collect();
            assert_close(&y, &expected, &[5, 4], &format!("clamp {dt} {lo:?} {hi:?}"));
        }
    }
    let x = Tensor::from_vec(vec![f32::NAN, -5.0, 5.0], &[3]).unwrap();
    let y = run1(
        Op::Clamp {
            min: Some(-1.0),
            max: Some(1.0),
        },
        &[x],
    )
    .to_vec::<f32>()
    .unwrap();
    assert!(y[0].is_nan());
    assert_eq!(&y[1..], &[-1.0, 1.0]);
}

#[test]
fn large_binary_and_unary_ops_cover_parallel_chunks() {
    let mut r = rng(11);
    let a = random(&mut r, DType::F32, &[3, 70, 200]);
    let b = random(&mut r, DType::F32, &[70, 1]);
    let y = run1(Op::Binary(BinaryOp::Sub), &[a.clone(), b.clone()]);
    let (expected, shape) = broadcast_ref(&a, &b, |x, y| x - y);
    assert_close(&y, &expected, &shape, "large sub");
    // Rows longer than a parallel chunk are split, and chunks straddle rows.
    for (sa, sb) in [(&[3, 30000][..], &[30000][..]), (&[50000], &[]), (&[40000], &[40000])] {
        let a = random(&mut r, DType::F32, sa);
        let b = random(&mut r, DType::F32, sb);
        let y = run1(Op::Binary(BinaryOp::Mul), &[a.clone(), b.clone()]);
        let (expected, shape) = broadcast_ref(&a, &b, |x, y| x * y);
        assert_close(&y, &expected, &shape, &format!("long rows {sa:?} {sb:?}"));
    }
    let t = a.permute(&[2, 0, 1]).unwrap();
    let y = run1(Op::Unary(UnaryOp::Tanh), std::slice::from_ref(&t));
    let expected: Vec<f64> = t.to_f64_vec().iter().map(|v| v.tanh()).collect();
    assert_close(&y, &expected, &[200, 3, 70], "large tanh transposed");
}

/// A random output shape and two operand shapes that broadcast to it.
fn broadcastable_pair() -> impl Strategy<Value = (Vec<usize>, Vec<usize>)> {
    proptest::collection::vec((0usize..4, 0u8..4, 0u8..4), 0..5).prop_flat_map(|dims| {
        let r = dims.len();
        (0..=r, 0..=r).prop_map(move |(drop_a, drop_b)| {
            // Each operand keeps the dim, or has 1 there (code 0), or lacks leading axes.
            let pick = |code: u8, d: usize| if code == 0 { 1 } else { d };
            let a: Vec<usize> = dims.iter().map(|&(d, ca, _)| pick(ca, d)).skip(drop_a).collect();
            let b: Vec<usize> = dims.iter().map(|&(d, _, cb)| pick(cb, d)).skip(drop_b).collect();
            (a, b)
        })
    })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(48))]
    #[test]
    fn add_of_random_broadcastable_shapes_matches_reference((sa, sb) in broadcastable_pair(), seed in 0u64..1000) {
        let mut r = rng(seed);
        for dt in [DType::F32, DType::I16] {
            let a = random(&mut r, dt, &sa);
            let b = random(&mut r, dt, &sb);
            let y = run1(Op::Binary(BinaryOp::Add), &[a.clone(), b.clone()]);
            let (expected, shape) = broadcast_ref(&a, &b, |x, y| x + y);
            assert_close(&y, &expected, &shape, &format!("add {dt} {sa:?} {sb:?}"));
        }
    }
}
