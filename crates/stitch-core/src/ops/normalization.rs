//! Softmax, log-softmax, layer norm and RMS norm: composite ops with fused CPU
//! kernels and decompositions into primitives.
//!
//! Semantics: softmax is `exp(x - max) / Σ exp(x - max)` along one axis; a row that
//! is entirely `-inf` (fully masked) gives NaN, as the ONNX definition does.
//! `layer_norm` and `rms_norm` normalise over axes `axis..rank` (ONNX
//! LayerNormalization); `scale` and `bias` broadcast to those trailing axes. The
//! variance is the biased one (divide by N). Accumulation is in f32 at least
//! (f64 for f64 inputs), as ONNX's `stash_type = 1`.

use crate::graph::{Graph, TensorType, Value};
use crate::ops::util::{arity, axis, float};
use crate::ops::Op;
use crate::shape::broadcast_shapes;
use crate::{Result, Shape};

pub(crate) fn infer(op: &Op, inputs: &[TensorType]) -> Result<Vec<TensorType>, String> {
    match op {
        Op::Softmax { axis: a } | Op::LogSoftmax { axis: a } => {
            arity(inputs, 1, 1)?;
            float(&inputs[0], "input")?;
            axis(*a, &inputs[0])?;
            Ok(vec![inputs[0].clone()])
        }
        Op::LayerNorm { axis: a, epsilon } | Op::RmsNorm { axis: a, epsilon } => {
            let max_inputs = if matches!(op, Op::LayerNorm { .. }) { 3 } else { 2 };
            arity(inputs, 2, max_inputs)?;
            let x = &inputs[0];
            float(x, "input")?;
            if *epsilon < 0.0 {
                return Err(format!("epsilon must be >= 0, got {epsilon}"));
            }
            let ax = axis(*a, x)?;
            let normalized = Shape(x.shape.0[ax..].to_vec());
            for (name, p) in ["scale", "bias"].iter().zip(&inputs[1..]) {
                if p.dtype != x.dtype {
                    return Err(format!("{name} has dtype {} but input is {x}", p.dtype));
                }
                let ok = p.shape.rank() <= normalized.rank()
                    && broadcast_shapes(&p.shape, &normalized).as_ref() == Some(&normalized);
                if !ok {
                    return Err(format!(
                        "{name} of shape {} does not broadcast to the normalised axes {} of input {x}",
                        p.shape, normalized
                    ));
                }
            }
            Ok(vec![x.clone()])
        }
        _ => unreachable!("normalization::infer called for {}", op.kind()),
    }
}

pub(crate) fn decompose(op: &Op, g: &mut Graph, inputs: &[Value]) -> Result<Vec<Value>> {
    let x = inputs[0];
    let dt = g.ty(x).dtype;
    let rank = g.ty(x).shape.rank() as i64;
    let out = match op {
        Op::Softmax { axis } => {
            let m = g.reduce_max(x, &[*axis], true)?;
            let d = g.sub(x, m)?;
            let e = g.exp(d)?;
            let s = g.sum(e, &[*axis], true)?;
            g.div(e, s)?
        }
        Op::LogSoftmax { axis } => {
            let m = g.reduce_max(x, &[*axis], true)?;
            let d = g.sub(x, m)?;
            let e = g.exp(d)?;
            let s = g.sum(e, &[*axis], true)?;
            let l = g.log(s)?;
            g.sub(d, l)?
        }
        Op::LayerNorm { axis, epsilon } => {
            let a = if *axis < 0 { axis + rank } else { *axis };
            let axes: Vec<i64> = (a..rank).collect();
            let mean = g.mean(x, &axes, true)?;
            let d = g.sub(x, mean)?;
            let d2 = g.mul(d, d)?;
            let var = g.mean(d2, &axes, true)?;
            let eps = g.scalar(dt, *epsilon);
            let ve = g.add(var, eps)?;
            let inv = g.rsqrt(ve)?;
            let n = g.mul(d, inv)?;
            let mut y = g.mul(n, inputs[1])?;
            if let Some(&b) = inputs.get(2) {
                y = g.add(y, b)?;
            }
            y
        }
        Op::RmsNorm { axis, epsilon } => {
            let a = if *axis < 0 { axis + rank } else { *axis };
            let axes: Vec<i64> = (a..rank).collect();
            let x2 = g.mul(x, x)?;
            let ms = g.mean(x2, &axes, true)?;
            let eps = g.scalar(dt, *epsilon);
            let me = g.add(ms, eps)?;
            let inv = g.rsqrt(me)?;
            let n = g.mul(x, inv)?;
            g.mul(n, inputs[1])?
        }
        _ => unreachable!(),
    };
    Ok(vec![out])
}

impl Graph {
    /// Softmax along `axis`.
    pub fn softmax(&mut self, x: Value, axis: i64) -> Result<Value> {
        self.add_op(Op::Softmax { axis }, &[x])
    }
    /// Log-softmax along `axis`.
    pub fn log_softmax(&mut self, x: Value, axis: i64) -> Result<Value> {
        self.add_op(Op::LogSoftmax { axis }, &[x])
    }
    /// Layer norm over axes `axis..rank`, with `scale` and optional `bias`.
    pub fn layer_norm(
        &mut self,
        x: Value,
        scale: Value,
        bias: Option<Value>,
        axis: i64,
        epsilon: f64,
    ) -> Result<Value> {
        let mut ins = vec![x, scale];
        ins.extend(bias);
        self.add_op(Op::LayerNorm { axis, epsilon }, &ins)
    }
    /// RMS norm over axes `axis..rank`, with `scale`.
    pub fn rms_norm(&mut self, x: Value, scale: Value, axis: i64, epsilon: f64) -> Result<Value> {
        self.add_op(Op::RmsNorm { axis, epsilon }, &[x, scale])
    }
}
