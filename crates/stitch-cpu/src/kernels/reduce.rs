//! Reduction kernels: reduce over axes, argmax/argmin, cumsum, topk.

use stitch_core::ops::{ArgReduceOp, ReduceOp};
use stitch_core::{Result, Tensor, TensorType};

/// Reduce over `axes` (empty = all).
pub fn reduce(op: ReduceOp, x: &Tensor, axes: &[i64], keepdims: bool, out: &TensorType) -> Result<Tensor> {
    todo!("{op:?} {x:?} {axes:?} {keepdims} {out}")
}
/// argmax / argmin along `axis` (i64 output).
pub fn arg_reduce(
    op: ArgReduceOp,
    x: &Tensor,
    axis: i64,
    keepdims: bool,
    select_last_index: bool,
    out: &TensorType,
) -> Result<Tensor> {
    todo!("{op:?} {x:?} {axis} {keepdims} {select_last_index} {out}")
}
/// Cumulative sum along `axis`.
pub fn cumsum(x: &Tensor, axis: i64, exclusive: bool, reverse: bool) -> Result<Tensor> {
    todo!("{x:?} {axis} {exclusive} {reverse}")
}
/// Top-k values and i64 indices along `axis`.
pub fn topk(x: &Tensor, k: usize, axis: i64, largest: bool, sorted: bool) -> Result<Vec<Tensor>> {
    todo!("{x:?} {k} {axis} {largest} {sorted}")
}
