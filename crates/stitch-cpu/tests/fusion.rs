//! Fusion: regions built by the compiler compute what the op-by-op graph
//! computes, on many generated chains of elementwise ops with broadcasts and
//! an optional trailing reduction.

mod common;

use std::sync::Arc;

use proptest::prelude::*;
use stitch_core::ops::{BinaryOp, ReduceOp, UnaryOp};
use stitch_core::{CompileOptions, DType, Executable, Graph, Op, Tensor, TensorType, Value};
use stitch_cpu::CpuBackend;

/// One step of a generated chain.
#[derive(Debug, Clone)]
enum Step {
    Unary(UnaryOp),
    /// Binary op of the current value with operand `k` (0 = x, 1 = row vector, 2 = scalar constant).
    Binary(BinaryOp, usize),
    /// where(current > operand k, current, operand k)
    WhereGreater(usize),
}

fn unary_op() -> impl Strategy<Value = UnaryOp> {
    prop::sample::select(vec![
        UnaryOp::Neg,
        UnaryOp::Abs,
        UnaryOp::Exp,
        UnaryOp::Tanh,
        UnaryOp::Sigmoid,
        UnaryOp::Relu,
        UnaryOp::Sin,
        UnaryOp::Silu,
        UnaryOp::GeluTanh,
        UnaryOp::Floor,
        UnaryOp::Round,
    ])
}

fn binary_op() -> impl Strategy<Value = BinaryOp> {
    prop::sample::select(vec![
        BinaryOp::Add,
        BinaryOp::Sub,
        BinaryOp::Mul,
        BinaryOp::Max,
        BinaryOp::Min,
        BinaryOp::Div,
    ])
}

fn step() -> impl Strategy<Value = Step> {
    prop_oneof![
        unary_op().prop_map(Step::Unary),
        (binary_op(), 0..3usize).prop_map(|(b, k)| Step::Binary(b, k)),
        (0..3usize).prop_map(Step::WhereGreater),
    ]
}

/// Builds the chain on x [rows, cols], r [cols] and a scalar constant.
fn build(steps: &[Step], reduce: Option<(ReduceOp, Vec<i64>)>, dtype: DType) -> (Graph, Value) {
    let mut g = Graph::new();
    let x = g.placeholder("x", dtype, [5, 37]);
    let r = g.placeholder("r", dtype, [37]);
    let c = g.scalar(dtype, 0.75);
    let operands = [x, r, c];
    let mut cur = x;
    for s in steps {
        cur = match s {
            Step::Unary(u) => g.unary(*u, cur).unwrap(),
            Step::Binary(b, k) => g.binary(*b, cur, operands[*k]).unwrap(),
            Step::WhereGreater(k) => {
                let cond = g.greater(cur, operands[*k]).unwrap();
                g.where_(cond, cur, operands[*k]).unwrap()
            }
        };
    }
    if let Some((op, axes)) = reduce {
        cur = g.reduce(op, cur, &axes, false).unwrap();
    }
    (g, cur)
}

fn run(g: &Graph, y: Value, options: CompileOptions, x: &Tensor, r: &Tensor) -> (Tensor, usize) {
    let exe = Executable::compile(g, &[y], Arc::new(CpuBackend::new()), options).unwrap();
    let out = exe
        .run(&[("x", x.clone()), ("r", r.clone())], &mut exe.new_state())
        .unwrap();
    let types = [
        TensorType::new(x.dtype(), x.shape()),
        TensorType::new(r.dtype(), r.shape()),
    ];
    let plan = exe.plan_for(&types).unwrap();
    let fused = plan
        .steps
        .iter()
        .filter(|&&i| matches!(plan.graph.nodes()[i].op, Op::Fused(_)))
        .count();
    (out.into_iter().next().unwrap(), fused)
}

fn reduction() -> impl Strategy<Value = Option<(ReduceOp, Vec<i64>)>> {
    prop::option::of((
        prop::sample::select(vec![ReduceOp::Sum, ReduceOp::Mean, ReduceOp::Max, ReduceOp::Min]),
        prop::sample::select(vec![vec![-1i64], vec![0], vec![0, 1]]),
    ))
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 96, ..ProptestConfig::default() })]

    #[test]
    fn fused_chains_equal_unfused(steps in prop::collection::vec(step(), 2..7), reduce in reduction(), seed in 0u64..1000) {
        let mut rng = common::rng(seed);
        // Operands of magnitude 0.5 to 1: dividing by values near zero, or
        // exp of exp of large values, makes arguments where sin/cos/exp
        // amplify the last-bit differences between a fused chain and op-by-op
        // f32 rounding past any tolerance (proptest found both:
        // sin(-sigmoid(-x) / r) and exp(exp(x·r)) over ±2).
        let away = |t: Tensor| {
            let v: Vec<f64> = t.to_f64_vec().into_iter().map(|v| v.signum() * (0.5 + v.abs() / 4.0)).collect();
            Tensor::from_f64(DType::F32, &v, t.shape()).unwrap()
        };
        let x = away(common::random(&mut rng, DType::F32, &[5, 37]));
        let r = away(common::random(&mut rng, DType::F32, &[37]));
        let (g, y) = build(&steps, reduce.clone(), DType::F32);
        let (fused, regions) = run(&g, y, CompileOptions::default(), &x, &r);
        let (reference, none) = run(&g, y, CompileOptions::reference(), &x, &r);
        prop_assert_eq!(none, 0);
        prop_assert!(regions >= 1, "no region was formed for {:?}", steps);
        let want = reference.to_f64_vec();
        // Reductions may sum in another order: allow a little more for them.
        let (rtol, atol) = if reduce.is_some() { (1e-5, 1e-5) } else { (1e-6, 1e-6) };
        common::assert_close_tol(&fused, &want, reference.shape(), rtol, atol, &format!("{steps:?} {reduce:?}"));
    }
}

#[test]
fn the_benchmark_chain_fuses_into_one_region_and_matches() {
    // y = tanh(x*a + b) * sigmoid(x) - 0.5*x
    let mut g = Graph::new();
    let x = g.placeholder("x", DType::F32, [3, 1000]);
    let a = g.placeholder("r", DType::F32, [1000]);
    let b = g.scalar(DType::F32, 0.25);
    let xa = g.mul(x, a).unwrap();
    let t = g.add(xa, b).unwrap();
    let t = g.tanh(t).unwrap();
    let s = g.sigmoid(x).unwrap();
    let p = g.mul(t, s).unwrap();
    let h = g.scalar(DType::F32, 0.5);
    let hx = g.mul(h, x).unwrap();
    let y = g.sub(p, hx).unwrap();
    let mut rng = common::rng(3);
    let xv = common::random(&mut rng, DType::F32, &[3, 1000]);
    let av = common::random(&mut rng, DType::F32, &[1000]);
    let (fused, regions) = run(&g, y, CompileOptions::default(), &xv, &av);
    assert_eq!(regions, 1);
    let (xs, avs) = (xv.to_f64_vec(), av.to_f64_vec());
    let want: Vec<f64> = (0..3000)
        .map(|i| {
            let (x, a) = (xs[i], avs[i % 1000]);
            (x * a + 0.25).tanh() * (1.0 / (1.0 + (-x).exp())) - 0.5 * x
        })
        .collect();
    common::assert_close_tol(&fused, &want, &[3, 1000], 1e-5, 1e-6, "benchmark chain");
}

#[test]
fn fusion_handles_strided_and_broadcast_inputs_and_f16() {
    // x is a transposed view; the column vector broadcasts along rows.
    let mut rng = common::rng(9);
    let base = common::random(&mut rng, DType::F16, &[7, 6]);
    let xt = base.permute(&[1, 0]).unwrap(); // [6, 7], non-contiguous
    let col = common::random(&mut rng, DType::F16, &[6, 1]);
    let mut g = Graph::new();
    let x = g.placeholder("x", DType::F16, [6, 7]);
    let c = g.placeholder("r", DType::F16, [6, 1]);
    let e = g.mul(x, c).unwrap();
    let e = g.exp(e).unwrap();
    let y = g.sum(e, &[1], true).unwrap();
    let (fused, regions) = run(&g, y, CompileOptions::default(), &xt, &col);
    assert_eq!(regions, 1);
    let (xs, cs) = (xt.to_f64_vec(), col.to_f64_vec());
    let want: Vec<f64> = (0..6)
        .map(|i| (0..7).map(|j| (xs[i * 7 + j] * cs[i]).exp()).sum())
        .collect();
    common::assert_close_tol(&fused, &want, &[6, 1], 4e-3, 4e-3, "strided f16 region");
}
