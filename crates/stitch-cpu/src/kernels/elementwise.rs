//! Elementwise kernels: unary, binary with broadcasting, where, cast, clamp.

use stitch_core::ops::{BinaryOp, UnaryOp};
use stitch_core::{DType, Result, Tensor, TensorType};

/// Elementwise unary op.
pub fn unary(op: UnaryOp, x: &Tensor, out: &TensorType) -> Result<Tensor> {
    todo!("{op:?} {x:?} {out}")
}
/// Elementwise binary op with numpy broadcasting to `out`.
pub fn binary(op: BinaryOp, a: &Tensor, b: &Tensor, out: &TensorType) -> Result<Tensor> {
    todo!("{op:?} {a:?} {b:?} {out}")
}
/// `where(cond, a, b)` with broadcasting to `out`.
pub fn where_(cond: &Tensor, a: &Tensor, b: &Tensor, out: &TensorType) -> Result<Tensor> {
    todo!("{cond:?} {a:?} {b:?} {out}")
}
/// Convert to `to`.
pub fn cast(x: &Tensor, to: DType) -> Result<Tensor> {
    todo!("{x:?} {to}")
}
/// Clamp into `[min, max]`.
pub fn clamp(x: &Tensor, min: Option<f64>, max: Option<f64>) -> Result<Tensor> {
    todo!("{x:?} {min:?} {max:?}")
}
