//! Indexing kernels: gather, gather_elements, scatter_elements, one_hot, range.

use stitch_core::ops::ScatterReduction;
use stitch_core::{DType, Result, Tensor, TensorType};

/// `data.take(indices, axis)`.
pub fn gather(data: &Tensor, indices: &Tensor, axis: i64, out: &TensorType) -> Result<Tensor> {
    todo!("{data:?} {indices:?} {axis} {out}")
}
/// ONNX GatherElements.
pub fn gather_elements(data: &Tensor, indices: &Tensor, axis: i64) -> Result<Tensor> {
    todo!("{data:?} {indices:?} {axis}")
}
/// ONNX ScatterElements.
pub fn scatter_elements(
    data: &Tensor,
    indices: &Tensor,
    updates: &Tensor,
    axis: i64,
    reduction: ScatterReduction,
) -> Result<Tensor> {
    todo!("{data:?} {indices:?} {updates:?} {axis} {reduction:?}")
}
/// One-hot.
#[allow(clippy::too_many_arguments)]
pub fn one_hot(
    indices: &Tensor,
    depth: usize,
    axis: i64,
    dtype: DType,
    on_value: f64,
    off_value: f64,
    out: &TensorType,
) -> Result<Tensor> {
    todo!("{indices:?} {depth} {axis} {dtype} {on_value} {off_value} {out}")
}
/// Range with `out`'s length.
pub fn range(start: f64, delta: f64, dtype: DType, out: &TensorType) -> Result<Tensor> {
    todo!("{start} {delta} {dtype} {out}")
}
