//! Convolution and pooling kernels.

use stitch_core::ops::{ConvAttrs, PoolAttrs};
use stitch_core::{Result, Tensor, TensorType};

/// 1-D / 2-D grouped convolution.
pub fn conv(x: &Tensor, w: &Tensor, bias: Option<&Tensor>, attrs: &ConvAttrs, out: &TensorType) -> Result<Tensor> {
    todo!("{x:?} {w:?} {bias:?} {attrs:?} {out}")
}
/// Max pooling.
pub fn max_pool(x: &Tensor, attrs: &PoolAttrs, out: &TensorType) -> Result<Tensor> {
    todo!("{x:?} {attrs:?} {out}")
}
/// Average pooling.
pub fn avg_pool(x: &Tensor, attrs: &PoolAttrs, out: &TensorType) -> Result<Tensor> {
    todo!("{x:?} {attrs:?} {out}")
}
