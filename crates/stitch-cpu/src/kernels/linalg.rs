//! Matmul and gemm through the `gemm` crate.

use stitch_core::{Result, Tensor, TensorType};

/// Batched matmul with broadcasting and optional transposes.
pub fn matmul(a: &Tensor, b: &Tensor, transpose_a: bool, transpose_b: bool, out: &TensorType) -> Result<Tensor> {
    todo!("{a:?} {b:?} {transpose_a} {transpose_b} {out}")
}
/// `alpha * op(a) @ op(b) + beta * c`.
#[allow(clippy::too_many_arguments)]
pub fn gemm(
    a: &Tensor,
    b: &Tensor,
    c: Option<&Tensor>,
    alpha: f64,
    beta: f64,
    transpose_a: bool,
    transpose_b: bool,
    out: &TensorType,
) -> Result<Tensor> {
    todo!("{a:?} {b:?} {c:?} {alpha} {beta} {transpose_a} {transpose_b} {out}")
}
