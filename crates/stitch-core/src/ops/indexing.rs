//! Indexing ops: gather, gather_elements, scatter_elements, one_hot, range.
//!
//! Indices are i32 or i64; negative indices count from the end of the axis
//! (ONNX). An index outside `[-n, n)` is a run-time error naming the node, not
//! undefined behaviour. `scatter_elements` applies updates in index order, so
//! with duplicate indices and no reduction the last update wins.

use crate::dtype::DType;
use crate::graph::{Graph, TensorType, Value};
use crate::ops::util::{arity, axis};
use crate::ops::Op;
use crate::shape::{normalize_axis, Dim, Shape};
use crate::Result;

/// How `scatter_elements` combines an update with the existing value.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ScatterReduction {
    /// Replace.
    None,
    Add,
    Mul,
    Max,
    Min,
}

/// Number of elements of `range(start, limit, delta)`.
pub fn range_len(start: f64, limit: f64, delta: f64) -> Result<usize, String> {
    if delta == 0.0 || !delta.is_finite() || !start.is_finite() || !limit.is_finite() {
        return Err(format!(
            "range({start}, {limit}, {delta}) needs finite bounds and a non-zero delta"
        ));
    }
    Ok(((limit - start) / delta).ceil().max(0.0) as usize)
}

fn index_dtype(t: &TensorType) -> Result<(), String> {
    if !matches!(t.dtype, DType::I32 | DType::I64) {
        return Err(format!("indices must be i32 or i64, got {t}"));
    }
    Ok(())
}

/// gather_elements / scatter_elements: indices may not exceed data on any axis but `axis`.
fn check_index_extent(idx: &TensorType, data: &TensorType, axis_attr: i64) -> Result<(), String> {
    let ax = axis(axis_attr, data)?;
    for (i, (a, b)) in idx.shape.0.iter().zip(&data.shape.0).enumerate() {
        if let (Some(a), Some(b)) = (a.known(), b.known()) {
            if i != ax && a > b {
                return Err(format!("indices {idx} exceed data {data} along axis {i}"));
            }
        }
    }
    Ok(())
}

pub(crate) fn infer(op: &Op, inputs: &[TensorType]) -> Result<Vec<TensorType>, String> {
    match op {
        Op::Gather { axis: a } => {
            arity(inputs, 2, 2)?;
            let (data, idx) = (&inputs[0], &inputs[1]);
            index_dtype(idx)?;
            let ax = axis(*a, data)?;
            let mut dims = data.shape.0[..ax].to_vec();
            dims.extend(idx.shape.0.iter().cloned());
            dims.extend(data.shape.0[ax + 1..].iter().cloned());
            Ok(vec![TensorType::new(data.dtype, Shape(dims))])
        }
        Op::GatherElements { axis: a } => {
            arity(inputs, 2, 2)?;
            let (data, idx) = (&inputs[0], &inputs[1]);
            index_dtype(idx)?;
            axis(*a, data)?;
            if idx.shape.rank() != data.shape.rank() {
                return Err(format!("indices {idx} must have the rank of data {data}"));
            }
            check_index_extent(idx, data, *a)?;
            Ok(vec![TensorType::new(data.dtype, idx.shape.clone())])
        }
        Op::ScatterElements { axis: a, .. } => {
            arity(inputs, 3, 3)?;
            let (data, idx, upd) = (&inputs[0], &inputs[1], &inputs[2]);
            index_dtype(idx)?;
            axis(*a, data)?;
            if idx.shape.rank() != data.shape.rank() || upd.shape != idx.shape || upd.dtype != data.dtype {
                return Err(format!(
                    "scatter needs indices of data's rank and updates of indices' shape and data's dtype: data {data}, indices {idx}, updates {upd}"
                ));
            }
            check_index_extent(idx, data, *a)?;
            Ok(vec![data.clone()])
        }
        Op::OneHot {
            depth, axis: a, dtype, ..
        } => {
            arity(inputs, 1, 1)?;
            let idx = &inputs[0];
            if !idx.dtype.is_int() {
                return Err(format!("one_hot indices must be integers, got {idx}"));
            }
            let out_rank = idx.shape.rank() + 1;
            let ax = normalize_axis(*a, out_rank)
                .ok_or_else(|| format!("one_hot axis {a} out of range for output rank {out_rank}"))?;
            let mut dims = idx.shape.0.clone();
            dims.insert(ax, Dim::Known(*depth));
            Ok(vec![TensorType::new(*dtype, Shape(dims))])
        }
        Op::Range {
            start,
            limit,
            delta,
            dtype,
        } => {
            arity(inputs, 0, 0)?;
            if !dtype.is_numeric() {
                return Err(format!("range dtype must be numeric, got {dtype}"));
            }
            Ok(vec![TensorType::new(
                *dtype,
                Shape::known(&[range_len(*start, *limit, *delta)?]),
            )])
        }
        _ => unreachable!("indexing::infer called for {}", op.kind()),
    }
}

impl Graph {
    /// `data.take(indices, axis)`.
    pub fn gather(&mut self, data: Value, indices: Value, axis: i64) -> Result<Value> {
        self.add_op(Op::Gather { axis }, &[data, indices])
    }
    /// ONNX GatherElements.
    pub fn gather_elements(&mut self, data: Value, indices: Value, axis: i64) -> Result<Value> {
        self.add_op(Op::GatherElements { axis }, &[data, indices])
    }
    /// ONNX ScatterElements.
    pub fn scatter_elements(
        &mut self,
        data: Value,
        indices: Value,
        updates: Value,
        axis: i64,
        reduction: ScatterReduction,
    ) -> Result<Value> {
        self.add_op(Op::ScatterElements { axis, reduction }, &[data, indices, updates])
    }
    /// One-hot encoding with a new axis of size `depth` (1 where equal, else 0).
    pub fn one_hot(&mut self, indices: Value, depth: usize, axis: i64, dtype: DType) -> Result<Value> {
        self.add_op(
            Op::OneHot {
                depth,
                axis,
                dtype,
                on_value: 1.0,
                off_value: 0.0,
            },
            &[indices],
        )
    }
    /// `[start, start + delta, ...)` below `limit`.
    pub fn range(&mut self, start: f64, limit: f64, delta: f64, dtype: DType) -> Result<Value> {
        self.add_op(
            Op::Range {
                start,
                limit,
                delta,
                dtype,
            },
            &[],
        )
    }
}
