//! Ops on block-quantized weights ([`QuantFormat`]).
//!
//! A packed weight is a `u8` tensor `[n, row_bytes]`: `n` rows of `k` logical
//! elements each, `row_bytes = format.row_bytes(k)`.
//!
//! - `dequantize(w)`: `[n, row_bytes]` u8 → `[n, k]` f32.
//! - `quant_matmul(x, w)`: `x [..., k]` (f32) times the transpose of the
//!   dequantized `w` → `[..., n]` f32, i.e. `x @ dequantize(w)^T`, the layout of a
//!   linear layer's weight. It is composite: a backend without a quantized kernel
//!   gets `matmul(x, dequantize(w), transpose_b)`.

use crate::dtype::DType;
use crate::graph::{Graph, TensorType, Value};
use crate::ops::util::arity;
use crate::ops::Op;
use crate::quant::QuantFormat;
use crate::shape::{Dim, Shape};
use crate::Result;

/// Logical row length `k` of a packed weight type, or a message naming the shape.
fn packed_k(format: QuantFormat, w: &TensorType) -> Result<Option<usize>, String> {
    if w.dtype != DType::U8 || w.shape.rank() != 2 {
        return Err(format!(
            "a packed {format} weight must be a 2-D u8 tensor [rows, row_bytes], got {w}"
        ));
    }
    match &w.shape.0[1] {
        Dim::Known(b) => {
            if !b.is_multiple_of(format.block_bytes()) {
                return Err(format!(
                    "packed {format} rows of {b} bytes are not a whole number of {}-byte blocks (weight {w})",
                    format.block_bytes()
                ));
            }
            Ok(Some(b / format.block_bytes() * format.block_elems()))
        }
        _ => Ok(None),
    }
}

pub(crate) fn infer(op: &Op, inputs: &[TensorType]) -> Result<Vec<TensorType>, String> {
    match op {
        Op::Dequantize { format } => {
            arity(inputs, 1, 1)?;
            let k = packed_k(*format, &inputs[0])?.map_or(Dim::Sym("k".into()), Dim::Known);
            Ok(vec![TensorType::new(
                DType::F32,
                Shape(vec![inputs[0].shape.0[0].clone(), k]),
            )])
        }
        Op::QuantMatMul { format } => {
            arity(inputs, 2, 2)?;
            let (x, w) = (&inputs[0], &inputs[1]);
            let k = packed_k(*format, w)?;
            if x.dtype != DType::F32 || x.shape.rank() == 0 {
                return Err(format!("quant_matmul needs an f32 activation of rank >= 1, got {x}"));
            }
            if let (Some(k), Some(Dim::Known(xk))) = (k, x.shape.0.last()) {
                if *xk != k {
                    return Err(format!(
                        "activation {x} has {xk} features but the packed {format} weight {w} has rows of {k}"
                    ));
                }
            }
            let mut out = x.shape.0.clone();
            *out.last_mut().expect("rank >= 1") = w.shape.0[0].clone();
            Ok(vec![TensorType::new(DType::F32, Shape(out))])
        }
        _ => unreachable!("quant::infer called for {}", op.kind()),
    }
}

/// `quant_matmul(x, w) = matmul(x, dequantize(w), transpose_b = true)`.
pub(crate) fn decompose(format: QuantFormat, g: &mut Graph, inputs: &[Value]) -> Result<Vec<Value>> {
    let w = g.dequantize(inputs[1], format)?;
    Ok(vec![g.matmul_t(inputs[0], w, false, true)?])
}

impl Graph {
    /// Expands a packed `[n, row_bytes]` u8 weight in `format` to `[n, k]` f32.
    pub fn dequantize(&mut self, w: Value, format: QuantFormat) -> Result<Value> {
        self.add_op(Op::Dequantize { format }, &[w])
    }
    /// `x @ dequantize(w)^T` for a packed `[n, row_bytes]` weight: `[..., k]` → `[..., n]`.
    pub fn quant_matmul(&mut self, x: Value, w: Value, format: QuantFormat) -> Result<Value> {
        self.add_op(Op::QuantMatMul { format }, &[x, w])
    }
}
