//! Reductions: sum, mean, max, min, prod over any set of axes; argmax/argmin;
//! cumsum; topk.
//!
//! Semantics (ONNX): empty `axes` reduces every axis; `keepdims` keeps reduced
//! axes as size 1. Max/min propagate NaN. Reducing an empty axis gives the
//! identity (0 for sum, 1 for prod, -inf/+inf or the integer min/max for max/min)
//! and NaN for mean. argmax/argmin return the first index of the extreme value
//! (the last with `select_last_index`); a NaN counts as the extreme. topk orders
//! ties by lower index first.

use crate::dtype::DType;
use crate::graph::{Graph, TensorType, Value};
use crate::ops::util::{arity, axis};
use crate::ops::Op;
use crate::shape::{Dim, Shape};
use crate::Result;

/// Reduction kinds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ReduceOp {
    Sum,
    Mean,
    Max,
    Min,
    Prod,
}

impl ReduceOp {
    /// Every reduction.
    pub const ALL: [ReduceOp; 5] = [
        ReduceOp::Sum,
        ReduceOp::Mean,
        ReduceOp::Max,
        ReduceOp::Min,
        ReduceOp::Prod,
    ];
    /// Lowercase name, e.g. `reduce_sum`.
    pub fn name(self) -> &'static str {
        match self {
            ReduceOp::Sum => "reduce_sum",
            ReduceOp::Mean => "reduce_mean",
            ReduceOp::Max => "reduce_max",
            ReduceOp::Min => "reduce_min",
            ReduceOp::Prod => "reduce_prod",
        }
    }
}

/// Arg-reduction kinds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ArgReduceOp {
    ArgMax,
    ArgMin,
}

impl ArgReduceOp {
    /// Lowercase name.
    pub fn name(self) -> &'static str {
        match self {
            ArgReduceOp::ArgMax => "argmax",
            ArgReduceOp::ArgMin => "argmin",
        }
    }
}

/// Normalised, sorted, de-duplicated reduction axes (`[]` = all axes).
pub fn reduction_axes(axes: &[i64], x: &TensorType) -> Result<Vec<usize>, String> {
    let rank = x.shape.rank();
    if axes.is_empty() {
        return Ok((0..rank).collect());
    }
    let mut out = Vec::with_capacity(axes.len());
    for &a in axes {
        let n = axis(a, x)?;
        if out.contains(&n) {
            return Err(format!("axis {a} is listed twice in {axes:?}"));
        }
        out.push(n);
    }
    out.sort_unstable();
    Ok(out)
}

/// Shape after reducing `axes` (normalised).
pub fn reduced_shape(shape: &Shape, axes: &[usize], keepdims: bool) -> Shape {
    Shape(
        shape
            .0
            .iter()
            .enumerate()
            .filter_map(|(i, d)| {
                if axes.contains(&i) {
                    keepdims.then_some(Dim::Known(1))
                } else {
                    Some(d.clone())
                }
            })
            .collect(),
    )
}

pub(crate) fn infer(op: &Op, inputs: &[TensorType]) -> Result<Vec<TensorType>, String> {
    arity(inputs, 1, 1)?;
    let x = &inputs[0];
    if !x.dtype.is_numeric() {
        return Err(format!("{} needs a numeric tensor, got {x}", op.kind()));
    }
    match op {
        Op::Reduce { axes, keepdims, .. } => {
            let axes = reduction_axes(axes, x)?;
            Ok(vec![TensorType::new(
                x.dtype,
                reduced_shape(&x.shape, &axes, *keepdims),
            )])
        }
        Op::ArgReduce { axis: a, keepdims, .. } => {
            let ax = axis(*a, x)?;
            if x.shape.0[ax].is(0) {
                return Err(format!("{} over an empty axis {ax} of {x}", op.kind()));
            }
            Ok(vec![TensorType::new(
                DType::I64,
                reduced_shape(&x.shape, &[ax], *keepdims),
            )])
        }
        Op::CumSum { axis: a, .. } => {
            axis(*a, x)?;
            Ok(vec![x.clone()])
        }
        Op::TopK { k, axis: a, .. } => {
            let ax = axis(*a, x)?;
            if let Some(n) = x.shape.0[ax].known() {
                if *k > n {
                    return Err(format!("k = {k} exceeds the size {n} of axis {ax} of {x}"));
                }
            }
            let mut s = x.shape.clone();
            s.0[ax] = Dim::Known(*k);
            Ok(vec![
                TensorType::new(x.dtype, s.clone()),
                TensorType::new(DType::I64, s),
            ])
        }
        _ => unreachable!("reduce::infer called for {}", op.kind()),
    }
}

impl Graph {
    /// Reduce over `axes` (empty = all) with `op`.
    pub fn reduce(&mut self, op: ReduceOp, x: Value, axes: &[i64], keepdims: bool) -> Result<Value> {
        self.add_op(
            Op::Reduce {
                op,
                axes: axes.to_vec(),
                keepdims,
            },
            &[x],
        )
    }
    /// Sum over `axes`.
    pub fn sum(&mut self, x: Value, axes: &[i64], keepdims: bool) -> Result<Value> {
        self.reduce(ReduceOp::Sum, x, axes, keepdims)
    }
    /// Mean over `axes`.
    pub fn mean(&mut self, x: Value, axes: &[i64], keepdims: bool) -> Result<Value> {
        self.reduce(ReduceOp::Mean, x, axes, keepdims)
    }
    /// Max over `axes`.
    pub fn reduce_max(&mut self, x: Value, axes: &[i64], keepdims: bool) -> Result<Value> {
        self.reduce(ReduceOp::Max, x, axes, keepdims)
    }
    /// Min over `axes`.
    pub fn reduce_min(&mut self, x: Value, axes: &[i64], keepdims: bool) -> Result<Value> {
        self.reduce(ReduceOp::Min, x, axes, keepdims)
    }
    /// Product over `axes`.
    pub fn prod(&mut self, x: Value, axes: &[i64], keepdims: bool) -> Result<Value> {
        self.reduce(ReduceOp::Prod, x, axes, keepdims)
    }
    /// Index (i64) of the maximum along `axis` (first occurrence).
    pub fn argmax(&mut self, x: Value, axis: i64, keepdims: bool) -> Result<Value> {
        self.add_op(
            Op::ArgReduce {
                op: ArgReduceOp::ArgMax,
                axis,
                keepdims,
                select_last_index: false,
            },
            &[x],
        )
    }
    /// Index (i64) of the minimum along `axis` (first occurrence).
    pub fn argmin(&mut self, x: Value, axis: i64, keepdims: bool) -> Result<Value> {
        self.add_op(
            Op::ArgReduce {
                op: ArgReduceOp::ArgMin,
                axis,
                keepdims,
                select_last_index: false,
            },
            &[x],
        )
    }
    /// Cumulative sum along `axis`.
    pub fn cumsum(&mut self, x: Value, axis: i64, exclusive: bool, reverse: bool) -> Result<Value> {
        self.add_op(
            Op::CumSum {
                axis,
                exclusive,
                reverse,
            },
            &[x],
        )
    }
    /// The `k` largest (`largest`) or smallest values along `axis`, sorted; returns `(values, indices)`.
    pub fn topk(&mut self, x: Value, k: usize, axis: i64, largest: bool) -> Result<(Value, Value)> {
        let o = self.add_node(
            Op::TopK {
                k,
                axis,
                largest,
                sorted: true,
            },
            &[x],
        )?;
        Ok((o[0], o[1]))
    }
}
