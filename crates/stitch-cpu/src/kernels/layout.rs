//! Layout kernels. reshape/squeeze/unsqueeze, transpose, expand and slice are
//! views (no copy); concat, split, tile and pad copy.

use stitch_core::ops::PadMode;
use stitch_core::{Result, Tensor, TensorType};

/// Reshape to `out`'s shape (a view when the input is contiguous).
pub fn reshape(x: &Tensor, out: &TensorType) -> Result<Tensor> {
    todo!("{x:?} {out}")
}
/// Permute axes (empty perm = reverse). A view.
pub fn transpose(x: &Tensor, perm: &[usize]) -> Result<Tensor> {
    todo!("{x:?} {perm:?}")
}
/// Broadcast to `out`'s shape. A view.
pub fn expand(x: &Tensor, out: &TensorType) -> Result<Tensor> {
    todo!("{x:?} {out}")
}
/// ONNX slice. A view.
pub fn slice(x: &Tensor, starts: &[i64], ends: &[i64], axes: &[i64], steps: &[i64]) -> Result<Tensor> {
    todo!("{x:?} {starts:?} {ends:?} {axes:?} {steps:?}")
}
/// Concatenate along `axis`.
pub fn concat(xs: &[Tensor], axis: i64, out: &TensorType) -> Result<Tensor> {
    todo!("{xs:?} {axis} {out}")
}
/// Split along `axis`.
pub fn split(x: &Tensor, axis: i64, sizes: &[usize]) -> Result<Vec<Tensor>> {
    todo!("{x:?} {axis} {sizes:?}")
}
/// Tile.
pub fn tile(x: &Tensor, repeats: &[usize], out: &TensorType) -> Result<Tensor> {
    todo!("{x:?} {repeats:?} {out}")
}
/// Pad.
pub fn pad(x: &Tensor, pads: &[i64], mode: PadMode, value: f64, out: &TensorType) -> Result<Tensor> {
    todo!("{x:?} {pads:?} {mode:?} {value} {out}")
}
