//! Matmul and gemm on the CPU backend against plain f64 references.

mod common;

use common::*;
use rand_chacha::ChaCha8Rng;
use stitch_core::{DType, Op, Tensor, TensorType};

/// Independent f64 matmul: 1-D operands are promoted per numpy, batch axes
/// broadcast, transposes swap the last two axes. Returns (values, shape).
fn ref_matmul(a: &Tensor, b: &Tensor, ta: bool, tb: bool) -> (Vec<f64>, Vec<usize>) {
    let (av, bv) = (a.to_f64_vec(), b.to_f64_vec());
    let (ra, rb) = (a.rank(), b.rank());
    // Stored shapes (before transposing), with 1-D operands promoted.
    let sa: Vec<usize> = if ra == 1 {
        vec![1, a.shape()[0]]
    } else {
        a.shape().to_vec()
    };
    let sb: Vec<usize> = if rb == 1 {
        vec![b.shape()[0], 1]
    } else {
        b.shape().to_vec()
    };
    let (ta, tb) = (ta && ra > 1, tb && rb > 1);
    let (la, lb) = (sa.len(), sb.len());
    let (m, k) = if ta {
        (sa[la - 1], sa[la - 2])
    } else {
        (sa[la - 2], sa[la - 1])
    };
    let (kb, n) = if tb {
        (sb[lb - 1], sb[lb - 2])
    } else {
        (sb[lb - 2], sb[lb - 1])
    };
    assert_eq!(k, kb, "test bug: inner dims");
    let (bat_a, bat_b) = (&sa[..la - 2], &sb[..lb - 2]);
    let batch = broadcast(bat_a, bat_b);
    let nbatch: usize = batch.iter().product();
    let mut out = Vec::new();
    for bi in 0..nbatch {
        let bidx = unravel(bi, &batch);
        let ia = broadcast_index(&bidx, bat_a);
        let ib = broadcast_index(&bidx, bat_b);
        for i in 0..m {
            for j in 0..n {
                let mut s = 0.0;
                for p in 0..k {
                    let (r, c) = if ta { (p, i) } else { (i, p) };
                    let x = av[ia * sa[la - 2] * sa[la - 1] + r * sa[la - 1] + c];
                    let (r, c) = if tb { (j, p) } else { (p, j) };
                    let y = bv[ib * sb[lb - 2] * sb[lb - 1] + r * sb[lb - 1] + c];
                    s += x * y;
                }
                out.push(s);
            }
        }
    }
    let mut shape = batch;
    if ra > 1 {
        shape.push(m);
    }
    if rb > 1 {
        shape.push(n);
    }
    (out, shape)
}

/// Tolerances for a length-`k` dot product in `dtype`: the result's own
/// rounding plus accumulated rounding growing like sqrt(k).
fn dot_tol(dtype: DType, k: usize) -> (f64, f64) {
    let eps = match dtype {
        DType::F64 => 1e-14,
        DType::F32 => 2e-6,
        DType::F16 => 2e-3,
        DType::BF16 => 1.6e-2,
        _ => 0.0,
    };
    (eps, eps * 4.0 * (k.max(1) as f64).sqrt())
}

fn run_matmul(a: &Tensor, b: &Tensor, ta: bool, tb: bool) -> Tensor {
    run_op(
        Op::MatMul {
            transpose_a: ta,
            transpose_b: tb,
        },
        &[a.clone(), b.clone()],
    )
    .unwrap()
    .remove(0)
}

fn inner_k(a: &Tensor, ta: bool) -> usize {
    let s = a.shape();
    if s.len() == 1 {
        s[0]
    } else if ta {
        s[s.len() - 2]
    } else {
        s[s.len() - 1]
    }
}

fn check_matmul(a: &Tensor, b: &Tensor, ta: bool, tb: bool, what: &str) {
    let got = run_matmul(a, b, ta, tb);
    assert_eq!(got.dtype(), a.dtype(), "{what}: dtype");
    let (want, shape) = ref_matmul(a, b, ta, tb);
    if a.dtype().is_int() {
        // Integer matmul wraps: reduce the exact sum modulo the type's width.
        let wrapped: Vec<f64> = want.iter().map(|&v| wrap(v as i64, a.dtype())).collect();
        assert_close_tol(&got, &wrapped, &shape, 0.0, 0.0, what);
    } else {
        let (rtol, atol) = dot_tol(a.dtype(), inner_k(a, ta));
        assert_close_tol(&got, &want, &shape, rtol, atol, what);
    }
}

/// Two's-complement wrap of an exact integer to `dtype`.
fn wrap(v: i64, dtype: DType) -> f64 {
    match dtype {
        DType::I8 => v as i8 as f64,
        DType::U8 => v as u8 as f64,
        DType::I16 => v as i16 as f64,
        DType::I32 => v as i32 as f64,
        DType::I64 => v as f64,
        DType::U32 => v as u32 as f64,
        _ => panic!("test does not wrap {dtype}"),
    }
}

fn rand(r: &mut ChaCha8Rng, dtype: DType, shape: &[usize]) -> Tensor {
    random(r, dtype, shape)
}

const SHAPES: &[(&[usize], &[usize])] = &[
    (&[3, 4], &[4, 5]),
    (&[1, 1], &[1, 1]),
    (&[2, 3, 4, 5], &[5, 6]),
    (&[2, 1, 3, 4], &[5, 4, 6]),
    (&[3, 4], &[2, 4, 2]),
    (&[4], &[4, 5]),
    (&[4], &[2, 4, 5]),
    (&[3, 4], &[4]),
    (&[2, 3, 4], &[4]),
    (&[7], &[7]),
];

#[test]
fn matmul_matches_reference_for_plain_batched_broadcast_and_vector_shapes() {
    let mut r = rng(1);
    for dt in [DType::F32, DType::F64] {
        for (sa, sb) in SHAPES {
            let (a, b) = (rand(&mut r, dt, sa), rand(&mut r, dt, sb));
            check_matmul(&a, &b, false, false, &format!("{dt} {sa:?} @ {sb:?}"));
        }
    }
}

#[test]
fn vector_dot_vector_gives_a_scalar() {
    let a = Tensor::from_vec(vec![1.0f32, 2.0, 3.0], &[3]).unwrap();
    let b = Tensor::from_vec(vec![4.0f32, -5.0, 6.0], &[3]).unwrap();
    let y = run_matmul(&a, &b, false, false);
    assert_eq!(y.shape(), &[] as &[usize]);
    assert_eq!(y.to_vec::<f32>().unwrap(), vec![12.0]);
}

#[test]
fn matmul_transpose_flags_swap_the_last_two_axes() {
    let mut r = rng(2);
    for dt in [DType::F32, DType::F64, DType::I32] {
        for (ta, tb) in [(false, true), (true, false), (true, true)] {
            // Stored shapes such that op(a) is [.., 3, 5] and op(b) is [.., 5, 4].
            let sa: &[usize] = if ta { &[2, 5, 3] } else { &[2, 3, 5] };
            let sb: &[usize] = if tb { &[4, 5] } else { &[5, 4] };
            let (a, b) = (rand(&mut r, dt, sa), rand(&mut r, dt, sb));
            check_matmul(&a, &b, ta, tb, &format!("{dt} ta={ta} tb={tb}"));
            // Transposes are ignored for 1-D operands.
            let v = rand(&mut r, dt, &[5]);
            check_matmul(&v, &b, true, tb, &format!("{dt} 1-D a, tb={tb}"));
            check_matmul(&a, &v, ta, true, &format!("{dt} 1-D b, ta={ta}"));
        }
    }
}

#[test]
fn matmul_handles_permuted_reversed_and_broadcast_views() {
    let mut r = rng(3);
    for dt in [DType::F32, DType::F64, DType::F16, DType::I64] {
        // Permuted: [5, 4, 3] -> [3, 5, 4].
        let a = rand(&mut r, dt, &[5, 4, 3]).permute(&[2, 0, 1]).unwrap();
        // Transposed last axes: [3, 6, 4] -> [3, 4, 6].
        let b = rand(&mut r, dt, &[3, 6, 4]).transpose(1, 2).unwrap();
        assert!(!a.is_contiguous() && !b.is_contiguous());
        check_matmul(&a, &b, false, false, &format!("{dt} permuted"));
        check_matmul(
            &a,
            &b.transpose(1, 2).unwrap(),
            false,
            true,
            &format!("{dt} permuted, tb"),
        );
        // Negative strides (reversed rows) and a column slice with step 2.
        let a = rand(&mut r, dt, &[4, 6])
            .slice(0, 3, -1, -1)
            .unwrap()
            .slice(1, 0, 6, 2)
            .unwrap();
        let b = rand(&mut r, dt, &[3, 5]).slice(1, 4, -1, -1).unwrap();
        assert_eq!((a.shape(), b.shape()), (&[4, 3][..], &[3, 5][..]));
        check_matmul(&a, &b, false, false, &format!("{dt} reversed"));
        // Broadcast (stride-0) operands.
        let a = rand(&mut r, dt, &[1, 3, 4]).broadcast_to(&[3, 3, 4]).unwrap();
        let b = rand(&mut r, dt, &[4, 1]).broadcast_to(&[4, 5]).unwrap();
        check_matmul(&a, &b, false, false, &format!("{dt} broadcast views"));
    }
}

#[test]
fn matmul_with_empty_inner_dimension_is_zero_and_empty_outer_is_empty() {
    let mut r = rng(4);
    for dt in [DType::F32, DType::F64, DType::F16, DType::BF16, DType::I32] {
        let y = run_matmul(&rand(&mut r, dt, &[3, 0]), &rand(&mut r, dt, &[0, 5]), false, false);
        assert_close_tol(&y, &[0.0; 15], &[3, 5], 0.0, 0.0, &format!("{dt} k = 0"));
        let y = run_matmul(&rand(&mut r, dt, &[2, 3, 0]), &rand(&mut r, dt, &[0, 4]), false, false);
        assert_close_tol(&y, &[0.0; 24], &[2, 3, 4], 0.0, 0.0, &format!("{dt} batched k = 0"));
        let y = run_matmul(&rand(&mut r, dt, &[0, 4]), &rand(&mut r, dt, &[4, 5]), false, false);
        assert_close_tol(&y, &[], &[0, 5], 0.0, 0.0, &format!("{dt} m = 0"));
        let y = run_matmul(&rand(&mut r, dt, &[0, 3, 4]), &rand(&mut r, dt, &[4, 5]), false, false);
        assert_close_tol(&y, &[], &[0, 3, 5], 0.0, 0.0, &format!("{dt} batch = 0"));
    }
}

#[test]
fn half_precision_matmul_matches_reference_of_rounded_inputs() {
    let mut r = rng(5);
    for dt in [DType::F16, DType::BF16] {
        for (sa, sb) in [
            (&[2, 3, 17][..], &[17, 9][..]),
            (&[33][..], &[33, 4][..]),
            (&[5, 64][..], &[64, 6][..]),
        ] {
            // The inputs are already rounded to `dt`; the reference uses those values.
            let (a, b) = (rand(&mut r, dt, sa), rand(&mut r, dt, sb));
            check_matmul(&a, &b, false, false, &format!("{dt} {sa:?} @ {sb:?}"));
            check_matmul(
                &a,
                &b.transpose(sb.len() - 2, sb.len() - 1).unwrap(),
                false,
                true,
                &format!("{dt} tb"),
            );
        }
    }
}

#[test]
fn integer_matmul_is_exact_and_wraps_on_overflow() {
    let mut r = rng(6);
    for dt in [DType::I32, DType::I64] {
        for (sa, sb) in SHAPES {
            let (a, b) = (rand(&mut r, dt, sa), rand(&mut r, dt, sb));
            check_matmul(&a, &b, false, false, &format!("{dt} {sa:?} @ {sb:?}"));
        }
    }
    // i8/u8 with k = 16 overflow for most outputs (|sums| reach ~800).
    for dt in [DType::I8, DType::U8] {
        let (a, b) = (rand(&mut r, dt, &[5, 16]), rand(&mut r, dt, &[16, 7]));
        check_matmul(&a, &b, false, false, &format!("{dt} wrapping"));
    }
    let a = Tensor::from_vec(vec![100i8, 100], &[1, 2]).unwrap();
    let b = Tensor::from_vec(vec![2i8, 1], &[2, 1]).unwrap();
    assert_eq!(
        run_matmul(&a, &b, false, false).to_vec::<i8>().unwrap(),
        vec![300i32 as i8]
    );
}

#[test]
fn large_and_many_small_matmuls_match_reference() {
    let mut r = rng(7);
    // One 128×64 @ 64×256 product: gemm's own threading.
    let (a, b) = (
        rand(&mut r, DType::F32, &[128, 64]),
        rand(&mut r, DType::F32, &[64, 256]),
    );
    check_matmul(&a, &b, false, false, "f32 128x64 @ 64x256");
    check_matmul(&b, &a, true, true, "f32 (64x256)^T @ (128x64)^T");
    // Many small products: parallel over the batch.
    let (a, b) = (
        rand(&mut r, DType::F32, &[96, 8, 12]),
        rand(&mut r, DType::F32, &[96, 12, 8]),
    );
    check_matmul(&a, &b, false, false, "f32 96 x (8x12 @ 12x8)");
    let (a, b) = (
        rand(&mut r, DType::F64, &[40, 1, 9, 10]),
        rand(&mut r, DType::F64, &[3, 10, 9]),
    );
    check_matmul(&a, &b, false, false, "f64 broadcast batch 40x3");
    let (a, b) = (rand(&mut r, DType::I32, &[64, 40]), rand(&mut r, DType::I32, &[40, 48]));
    check_matmul(&a, &b, false, false, "i32 64x40 @ 40x48");
}

#[test]
fn matmul_kernel_rejects_mismatched_inner_dimensions() {
    let mut r = rng(8);
    let (a, b) = (rand(&mut r, DType::F32, &[3, 4]), rand(&mut r, DType::F32, &[5, 6]));
    let out = TensorType::new(DType::F32, vec![3usize, 6]);
    let err = stitch_cpu::kernels::linalg::matmul(&a, &b, false, false, &out)
        .unwrap_err()
        .to_string();
    assert!(err.contains("[3, 4]") && err.contains("[5, 6]"), "{err}");
}

/// f64 reference of `alpha * op(a) @ op(b) + beta * c`, with integer
/// alpha/beta truncated and the result wrapped for integer dtypes.
fn ref_gemm(
    a: &Tensor,
    b: &Tensor,
    c: Option<&Tensor>,
    alpha: f64,
    beta: f64,
    ta: bool,
    tb: bool,
) -> (Vec<f64>, Vec<usize>) {
    let (p, shape) = ref_matmul(a, b, ta, tb);
    let int = a.dtype().is_int();
    let (alpha, beta) = if int {
        (alpha.trunc(), beta.trunc())
    } else {
        (alpha, beta)
    };
    let cv = c.map(|c| (c.to_f64_vec(), c.shape().to_vec()));
    let vals = p
        .iter()
        .enumerate()
        .map(|(i, &v)| {
            let idx = unravel(i, &shape);
            let bias = cv.as_ref().map_or(0.0, |(cv, cs)| beta * cv[broadcast_index(&idx, cs)]);
            let y = alpha * v + bias;
            if int {
                wrap(y as i64, a.dtype())
            } else {
                y
            }
        })
        .collect();
    (vals, shape)
}

/// (alpha, beta, transpose_a, transpose_b, shape of c)
type GemmCase = (f64, f64, bool, bool, Option<&'static [usize]>);

#[test]
fn gemm_scales_product_and_broadcast_bias() {
    let mut r = rng(9);
    let cases: &[GemmCase] = &[
        (1.0, 1.0, false, false, Some(&[3, 5])),
        (0.5, -2.0, false, false, Some(&[5])),
        (2.0, 0.25, true, false, Some(&[1, 5])),
        (-1.5, 3.0, false, true, Some(&[3, 1])),
        (1.0, 0.5, true, true, Some(&[])),
        (2.5, 1.0, true, false, None),
    ];
    for dt in [DType::F32, DType::F64, DType::F16, DType::BF16, DType::I32] {
        for &(alpha, beta, ta, tb, cs) in cases {
            let a = rand(&mut r, dt, if ta { &[4, 3] } else { &[3, 4] });
            let b = rand(&mut r, dt, if tb { &[5, 4] } else { &[4, 5] });
            let c = cs.map(|s| rand(&mut r, dt, s));
            let mut ins = vec![a.clone(), b.clone()];
            ins.extend(c.clone());
            let what = format!("{dt} alpha={alpha} beta={beta} ta={ta} tb={tb} c={cs:?}");
            let got = run_op(
                Op::Gemm {
                    alpha,
                    beta,
                    transpose_a: ta,
                    transpose_b: tb,
                    activation: None,
                },
                &ins,
            )
            .unwrap()
            .remove(0);
            let (want, shape) = ref_gemm(&a, &b, c.as_ref(), alpha, beta, ta, tb);
            let (rtol, atol) = dot_tol(dt, 4);
            // alpha and beta scale the rounding errors too.
            let s = alpha.abs().max(1.0) + beta.abs();
            assert_close_tol(&got, &want, &shape, rtol, atol * s, &what);
        }
    }
}

#[test]
fn gemm_handles_views_empty_inner_dimension_and_large_sizes() {
    let mut r = rng(10);
    // Non-contiguous a (transposed view) and broadcast c view.
    let a = rand(&mut r, DType::F32, &[6, 3]).transpose(0, 1).unwrap();
    let b = rand(&mut r, DType::F32, &[6, 2]);
    let c = rand(&mut r, DType::F32, &[2]).broadcast_to(&[3, 2]).unwrap();
    let got = run_op(
        Op::Gemm {
            alpha: 1.5,
            beta: 0.5,
            transpose_a: false,
            transpose_b: false,
            activation: None,
        },
        &[a.clone(), b.clone(), c.clone()],
    )
    .unwrap()
    .remove(0);
    let (want, shape) = ref_gemm(&a, &b, Some(&c), 1.5, 0.5, false, false);
    assert_close_tol(&got, &want, &shape, 1e-5, 1e-5, "views");
    // k = 0: only beta * c remains.
    for dt in [DType::F32, DType::F64, DType::I64] {
        let (a, b, c) = (
            rand(&mut r, dt, &[3, 0]),
            rand(&mut r, dt, &[0, 4]),
            rand(&mut r, dt, &[3, 4]),
        );
        let got = run_op(
            Op::Gemm {
                alpha: 2.0,
                beta: 3.0,
                transpose_a: false,
                transpose_b: false,
                activation: None,
            },
            &[a.clone(), b.clone(), c.clone()],
        )
        .unwrap()
        .remove(0);
        let (want, shape) = ref_gemm(&a, &b, Some(&c), 2.0, 3.0, false, false);
        assert_close_tol(&got, &want, &shape, 1e-6, 1e-6, &format!("{dt} k = 0"));
    }
    // A 128×64 @ 64×256 product with bias: gemm's threaded path with read_dst.
    let (a, b, c) = (
        rand(&mut r, DType::F32, &[64, 128]),
        rand(&mut r, DType::F32, &[64, 256]),
        rand(&mut r, DType::F32, &[256]),
    );
    let got = run_op(
        Op::Gemm {
            alpha: 0.5,
            beta: 2.0,
            transpose_a: true,
            transpose_b: false,
            activation: None,
        },
        &[a.clone(), b.clone(), c.clone()],
    )
    .unwrap()
    .remove(0);
    let (want, shape) = ref_gemm(&a, &b, Some(&c), 0.5, 2.0, true, false);
    let (rtol, atol) = dot_tol(DType::F32, 64);
    assert_close_tol(&got, &want, &shape, rtol, 3.0 * atol, "large gemm");
}

/// A matmul whose right operand is a constant runs with the weight packed once
/// per plan (`Backend::prepare`): batch axes folded into the rows, a
/// transposed activation (batches not foldable), a transposed weight, odd
/// sizes. Each case runs twice on one executable (the packed weight is reused)
/// and is compared with an f64 reference.
#[test]
fn matmul_with_constant_weight_uses_prepacked_weight_and_matches_reference() {
    use std::sync::Arc;
    use stitch_core::{CompileOptions, Executable, Graph};
    let mut r = rng(77);
    // (activation shape as stored, transpose_a, weight shape as stored, transpose_b)
    let cases: &[(&[usize], bool, &[usize], bool)] = &[
        (&[3, 37, 130], false, &[130, 70], false),
        (&[2, 2, 13, 40], false, &[33, 40], true),
        (&[4, 50, 29], true, &[50, 66], false),
        (&[29, 300], false, &[300, 5], false),
        (&[300], false, &[300, 7], false),
    ];
    for &(sa, ta, sb, tb) in cases {
        let w = random(&mut r, DType::F32, sb);
        let mut g = Graph::new();
        let x = g.placeholder("x", DType::F32, sa.to_vec());
        let wc = g.constant(w.clone());
        let y = g.matmul_t(x, wc, ta, tb).unwrap();
        let exe = Executable::compile(
            &g,
            &[y],
            Arc::new(stitch_cpu::CpuBackend::new()),
            CompileOptions::default(),
        )
        .unwrap();
        let plan = exe.plan_for(&[TensorType::new(DType::F32, sa.to_vec())]).unwrap();
        assert_eq!(plan.report.prepared, 1, "{sa:?} x {sb:?}: the weight was not packed");
        for run in 0..2 {
            let a = random(&mut r, DType::F32, sa);
            let out = exe.run(&[("x", a.clone())], &mut exe.new_state()).unwrap();
            let (want, shape) = ref_matmul(&a, &w, ta, tb);
            // Rounding of f32 sums of k products of values in [-2, 2] grows like √k.
            let k = if ta { sa[sa.len() - 2] } else { sa[sa.len() - 1] };
            let what = format!("{sa:?} ta{ta} x {sb:?} tb{tb}, run {run}");
            assert_close_tol(&out[0], &want, &shape, 1e-5, 1e-6 * (k as f64).sqrt(), &what);
        }
    }
}

/// A linear layer `x @ W + b` with constant W and bias row b compiles to one
/// gemm (the rewrite `linear_bias_to_gemm`) whose weight and bias are packed
/// once per plan, the bias added in the product's epilogue: batch axes folded
/// through reshapes, the add in either operand order, a transposed weight, a
/// `[1, N]` bias. Compared with an f64 reference over two runs each.
#[test]
fn linear_layer_with_bias_becomes_one_prepacked_gemm_and_matches_reference() {
    use std::sync::Arc;
    use stitch_core::{CompileOptions, Executable, Graph};
    let mut r = rng(78);
    // (activation shape, weight shape as stored, transpose_b, bias shape, bias first)
    type Case<'a> = (&'a [usize], &'a [usize], bool, &'a [usize], bool);
    let cases: &[Case] = &[
        (&[2, 13, 40], &[40, 33], false, &[33], false),
        (&[29, 70], &[45, 70], true, &[1, 45], true),
        (&[1, 3, 5, 64], &[64, 100], false, &[1, 1, 100], false),
    ];
    for &(sa, sb, tb, sc, bias_first) in cases {
        let w = rand(&mut r, DType::F32, sb);
        let bias = rand(&mut r, DType::F32, sc);
        let mut g = Graph::new();
        let x = g.placeholder("x", DType::F32, sa.to_vec());
        let wc = g.constant(w.clone());
        let bc = g.constant(bias.clone());
        let y = g.matmul_t(x, wc, false, tb).unwrap();
        let y = if bias_first {
            g.add(bc, y).unwrap()
        } else {
            g.add(y, bc).unwrap()
        };
        let exe = Executable::compile(
            &g,
            &[y],
            Arc::new(stitch_cpu::CpuBackend::new()),
            CompileOptions::default(),
        )
        .unwrap();
        let what = format!("{sa:?} x {sb:?} tb{tb} + {sc:?}");
        let plan = exe.plan_for(&[TensorType::new(DType::F32, sa.to_vec())]).unwrap();
        assert_eq!(plan.report.rewritten, 1, "{what}: not rewritten");
        assert_eq!(plan.report.prepared, 1, "{what}: the weight was not packed");
        let n = if tb { sb[0] } else { sb[1] };
        for run in 0..2 {
            let a = rand(&mut r, DType::F32, sa);
            let out = exe.run(&[("x", a.clone())], &mut exe.new_state()).unwrap();
            let (mut want, shape) = ref_matmul(&a, &w, false, tb);
            let bv = bias.to_f64_vec();
            for (i, v) in want.iter_mut().enumerate() {
                *v += bv[i % n];
            }
            let k = sa[sa.len() - 1];
            assert_close_tol(
                &out[0],
                &want,
                &shape,
                1e-5,
                1e-6 * (k as f64).sqrt(),
                &format!("{what}, run {run}"),
            );
        }
    }
}

/// `act(x @ W + b)` (ReLU, GELU, tanh-GELU) with constant W and b compiles to
/// one gemm with the activation as its epilogue (rewrites
/// `linear_bias_to_gemm` then `gemm_activation`), weight and bias packed once;
/// and a gemm op with an activation on plain inputs (no packing). Both are
/// compared with the op-by-op reference.
#[test]
fn gemm_activation_epilogues_match_the_op_by_op_reference() {
    use std::sync::Arc;
    use stitch_core::ops::UnaryOp;
    use stitch_core::{CompileOptions, Executable, Graph};
    let mut r = rng(79);
    for act in [UnaryOp::Relu, UnaryOp::Gelu, UnaryOp::GeluTanh] {
        let (w, bias) = (rand(&mut r, DType::F32, &[24, 40]), rand(&mut r, DType::F32, &[40]));
        let mut g = Graph::new();
        let x = g.placeholder("x", DType::F32, [2, 5, 24]);
        let (wc, bc) = (g.constant(w.clone()), g.constant(bias.clone()));
        let y = g.matmul(x, wc).unwrap();
        let y = g.add(y, bc).unwrap();
        let y = g.add_op(Op::Unary(act), &[y]).unwrap();
        let compile = |opts| Executable::compile(&g, &[y], Arc::new(stitch_cpu::CpuBackend::new()), opts).unwrap();
        let (exe, reference) = (compile(CompileOptions::default()), compile(CompileOptions::reference()));
        let plan = exe.plan_for(&[TensorType::new(DType::F32, vec![2, 5, 24])]).unwrap();
        assert_eq!(plan.report.rewritten, 2, "{act:?}: linear, then the activation");
        assert_eq!(plan.report.prepared, 1, "{act:?}");
        assert_eq!(plan.report.fusion.regions, 0, "{act:?}: nothing left to fuse");
        let xv = rand(&mut r, DType::F32, &[2, 5, 24]);
        let got = exe.run(&[("x", xv.clone())], &mut exe.new_state()).unwrap();
        let want = reference.run(&[("x", xv)], &mut reference.new_state()).unwrap();
        assert_close_tol(
            &got[0],
            &want[0].to_f64_vec(),
            &[2, 5, 40],
            1e-5,
            1e-5,
            &format!("{act:?} packed"),
        );

        // The op itself on plain inputs, against gemm then the unary op.
        let (a, b, c) = (
            rand(&mut r, DType::F32, &[7, 9]),
            rand(&mut r, DType::F32, &[11, 9]),
            rand(&mut r, DType::F32, &[11]),
        );
        let gemm = |activation| Op::Gemm {
            alpha: 0.5,
            beta: 1.0,
            transpose_a: false,
            transpose_b: true,
            activation,
        };
        let got = run_op(gemm(Some(act)), &[a.clone(), b.clone(), c.clone()])
            .unwrap()
            .remove(0);
        let plain = run_op(gemm(None), &[a, b, c]).unwrap().remove(0);
        let want = run_op(Op::Unary(act), &[plain]).unwrap().remove(0);
        assert_close_tol(
            &got,
            &want.to_f64_vec(),
            &[7, 11],
            1e-5,
            1e-6,
            &format!("{act:?} plain"),
        );
    }
}
