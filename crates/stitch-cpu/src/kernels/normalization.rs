//! Fused normalisation kernels: softmax / log-softmax, layer norm, RMS norm.

use stitch_core::{Result, Tensor};

/// Softmax (or log-softmax) along `axis`, one pass per row.
pub fn softmax(x: &Tensor, axis: i64, log: bool) -> Result<Tensor> {
    todo!("{x:?} {axis} {log}")
}
/// Layer norm over axes `axis..rank`.
pub fn layer_norm(x: &Tensor, scale: &Tensor, bias: Option<&Tensor>, axis: i64, epsilon: f64) -> Result<Tensor> {
    todo!("{x:?} {scale:?} {bias:?} {axis} {epsilon}")
}
/// RMS norm over axes `axis..rank`.
pub fn rms_norm(x: &Tensor, scale: &Tensor, axis: i64, epsilon: f64) -> Result<Tensor> {
    todo!("{x:?} {scale:?} {axis} {epsilon}")
}
