//! Shared helpers for the CPU op tests: seeded random tensors, single-op graphs
//! run through the real executor, and comparison with f64 references.
#![allow(dead_code)]

use std::sync::Arc;

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use stitch_core::{CompileOptions, DType, Executable, Graph, Op, Result, Tensor};
use stitch_cpu::CpuBackend;

/// A seeded RNG.
pub fn rng(seed: u64) -> ChaCha8Rng {
    ChaCha8Rng::seed_from_u64(seed)
}

/// Random tensor: floats uniform in [-2, 2), signed ints in [-10, 10],
/// unsigned in [0, 20], bools 50/50.
pub fn random(r: &mut ChaCha8Rng, dtype: DType, shape: &[usize]) -> Tensor {
    let n: usize = shape.iter().product();
    let vals: Vec<f64> = (0..n)
        .map(|_| {
            if dtype.is_float() {
                r.gen_range(-2.0..2.0)
            } else if dtype.is_signed_int() {
                r.gen_range(-10i64..=10) as f64
            } else if dtype == DType::Bool {
                r.gen_range(0..2) as f64
            } else {
                r.gen_range(0u64..=20) as f64
            }
        })
        .collect();
    Tensor::from_f64(dtype, &vals, shape).unwrap()
}

/// Random floats in [lo, hi).
pub fn random_range(r: &mut ChaCha8Rng, dtype: DType, shape: &[usize], lo: f64, hi: f64) -> Tensor {
    let n: usize = shape.iter().product();
    let vals: Vec<f64> = (0..n).map(|_| r.gen_range(lo..hi)).collect();
    Tensor::from_f64(dtype, &vals, shape).unwrap()
}

fn build(op: Op, inputs: &[Tensor]) -> Result<(Graph, Vec<stitch_core::Value>)> {
    let mut g = Graph::new();
    let vals: Vec<_> = inputs
        .iter()
        .enumerate()
        .map(|(i, t)| g.placeholder(&format!("in{i}"), t.dtype(), t.shape()))
        .collect();
    let outs = g.add_node(op, &vals)?;
    Ok((g, outs))
}

fn run_with(op: Op, inputs: &[Tensor], options: CompileOptions) -> Result<Vec<Tensor>> {
    let (g, outs) = build(op, inputs)?;
    let exe = Executable::compile(&g, &outs, Arc::new(CpuBackend::new()), options)?;
    let names: Vec<String> = (0..inputs.len()).map(|i| format!("in{i}")).collect();
    let feeds: Vec<(&str, Tensor)> = names.iter().map(|n| n.as_str()).zip(inputs.iter().cloned()).collect();
    exe.run(&feeds, &mut exe.new_state())
}

/// Runs one op on the CPU backend through a graph and the executor.
pub fn run_op(op: Op, inputs: &[Tensor]) -> Result<Vec<Tensor>> {
    run_with(op, inputs, CompileOptions::default())
}

/// Runs one op with every composite decomposed into primitives.
pub fn run_op_decomposed(op: Op, inputs: &[Tensor]) -> Result<Vec<Tensor>> {
    run_with(op, inputs, CompileOptions::reference())
}

/// (rtol, atol) that fit a dtype's precision.
pub fn tolerance(dtype: DType) -> (f64, f64) {
    match dtype {
        DType::F64 => (1e-12, 1e-12),
        DType::F32 => (1e-5, 1e-6),
        DType::F16 => (2e-3, 2e-3),
        DType::BF16 => (1.6e-2, 1.6e-2),
        _ => (0.0, 0.0),
    }
}

/// Asserts `actual` has `shape` and is elementwise close to `expected`
/// (NaN matches NaN, infinities must match exactly).
pub fn assert_close(actual: &Tensor, expected: &[f64], shape: &[usize], what: &str) {
    let (rtol, atol) = tolerance(actual.dtype());
    assert_close_tol(actual, expected, shape, rtol, atol, what);
}

/// [`assert_close`] with explicit tolerances.
pub fn assert_close_tol(actual: &Tensor, expected: &[f64], shape: &[usize], rtol: f64, atol: f64, what: &str) {
    assert_eq!(actual.shape(), shape, "{what}: shape");
    let got = actual.to_f64_vec();
    assert_eq!(got.len(), expected.len(), "{what}: element count");
    for (i, (&g, &e)) in got.iter().zip(expected).enumerate() {
        let ok = if e.is_nan() {
            g.is_nan()
        } else if e.is_infinite() {
            g == e
        } else {
            (g - e).abs() <= atol + rtol * e.abs()
        };
        assert!(
            ok,
            "{what}: element {i}: got {g}, expected {e} (rtol {rtol}, atol {atol})"
        );
    }
}

/// Row-major index → multi-index.
pub fn unravel(mut i: usize, shape: &[usize]) -> Vec<usize> {
    let mut idx = vec![0; shape.len()];
    for ax in (0..shape.len()).rev() {
        idx[ax] = i % shape[ax].max(1);
        i /= shape[ax].max(1);
    }
    idx
}

/// Multi-index → row-major index.
pub fn ravel(idx: &[usize], shape: &[usize]) -> usize {
    idx.iter().zip(shape).fold(0, |acc, (&i, &d)| acc * d + i)
}

/// Numpy broadcast of two concrete shapes.
pub fn broadcast(a: &[usize], b: &[usize]) -> Vec<usize> {
    let r = a.len().max(b.len());
    (0..r)
        .map(|i| {
            let da = if i + a.len() >= r { a[i + a.len() - r] } else { 1 };
            let db = if i + b.len() >= r { b[i + b.len() - r] } else { 1 };
            if da == 1 {
                db
            } else {
                da
            }
        })
        .collect()
}

/// Index into a (right-aligned, broadcast) operand of `shape` for output multi-index `out_idx`.
pub fn broadcast_index(out_idx: &[usize], shape: &[usize]) -> usize {
    let lead = out_idx.len() - shape.len();
    let idx: Vec<usize> = shape
        .iter()
        .enumerate()
        .map(|(i, &d)| if d == 1 { 0 } else { out_idx[lead + i] })
        .collect();
    ravel(&idx, shape)
}
