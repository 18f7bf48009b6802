//! Matrix multiplication: batched `matmul` with numpy broadcasting, and `gemm`.
//!
//! `matmul(a, b)`: the last two axes multiply, leading (batch) axes broadcast.
//! `transpose_a`/`transpose_b` swap the last two axes of an operand of rank ≥ 2
//! first. A 1-D `a` is a row vector and a 1-D `b` a column vector; the added axis
//! is removed from the result (numpy). Integer matmul wraps on overflow.

use crate::graph::{Graph, TensorType, Value};
use crate::ops::util::{arity, same_dtype};
use crate::ops::{Op, UnaryOp};
use crate::shape::{broadcast_dim, broadcast_shapes, Dim, Shape};
use crate::Result;

/// Shape of `matmul(a, b)` with the given transposes.
pub fn matmul_shape(a: &Shape, b: &Shape, ta: bool, tb: bool) -> Result<Shape, String> {
    let (ra, rb) = (a.rank(), b.rank());
    if ra == 0 || rb == 0 {
        return Err(format!("matmul operands must have rank >= 1, got {a} and {b}"));
    }
    let mut am = a.0.clone();
    let mut bm = b.0.clone();
    if ra == 1 {
        am.insert(0, Dim::Known(1));
    } else if ta {
        am.swap(ra - 2, ra - 1);
    }
    if rb == 1 {
        bm.push(Dim::Known(1));
    } else if tb {
        bm.swap(rb - 2, rb - 1);
    }
    let (m, ka) = (&am[am.len() - 2], &am[am.len() - 1]);
    let (kb, n) = (&bm[bm.len() - 2], &bm[bm.len() - 1]);
    let k_ok = match (ka, kb) {
        (Dim::Known(x), Dim::Known(y)) => x == y,
        _ => broadcast_dim(ka, kb).is_some(),
    };
    if !k_ok {
        let t = |f: bool| if f { " (transposed)" } else { "" };
        return Err(format!(
            "inner dimensions differ: a{} is {a}, b{} is {b} (a's last axis {ka} != b's second-to-last axis {kb})",
            t(ta && ra > 1),
            t(tb && rb > 1)
        ));
    }
    let batch_a = Shape(am[..am.len() - 2].to_vec());
    let batch_b = Shape(bm[..bm.len() - 2].to_vec());
    let mut out = broadcast_shapes(&batch_a, &batch_b)
        .ok_or_else(|| format!("batch dimensions of {a} and {b} do not broadcast"))?
        .0;
    if ra > 1 {
        out.push(m.clone());
    }
    if rb > 1 {
        out.push(n.clone());
    }
    Ok(Shape(out))
}

pub(crate) fn infer(op: &Op, inputs: &[TensorType]) -> Result<Vec<TensorType>, String> {
    match op {
        Op::MatMul {
            transpose_a,
            transpose_b,
        } => {
            arity(inputs, 2, 2)?;
            same_dtype(inputs)?;
            if !inputs[0].dtype.is_numeric() {
                return Err(format!("matmul needs numeric operands, got {}", inputs[0]));
            }
            let s = matmul_shape(&inputs[0].shape, &inputs[1].shape, *transpose_a, *transpose_b)?;
            Ok(vec![TensorType::new(inputs[0].dtype, s)])
        }
        Op::Gemm {
            transpose_a,
            transpose_b,
            activation,
            ..
        } => {
            arity(inputs, 2, 3)?;
            same_dtype(inputs)?;
            if let Some(act) = activation {
                if !EPILOGUE_ACTIVATIONS.contains(act) {
                    return Err(format!(
                        "gemm activation {act:?} is not an epilogue (one of {EPILOGUE_ACTIVATIONS:?})"
                    ));
                }
                if !inputs[0].dtype.is_float() {
                    return Err(format!(
                        "gemm with an activation needs float operands, got {}",
                        inputs[0]
                    ));
                }
            }
            if inputs[0].shape.rank() != 2 || inputs[1].shape.rank() != 2 {
                return Err(format!(
                    "gemm needs 2-D a and b, got {} and {}",
                    inputs[0].shape, inputs[1].shape
                ));
            }
            let s = matmul_shape(&inputs[0].shape, &inputs[1].shape, *transpose_a, *transpose_b)?;
            if let Some(c) = inputs.get(2) {
                if c.shape.rank() > 2 || broadcast_shapes(&c.shape, &s).as_ref() != Some(&s) {
                    return Err(format!(
                        "gemm bias c of shape {} does not broadcast to the product's shape {s}",
                        c.shape
                    ));
                }
            }
            Ok(vec![TensorType::new(inputs[0].dtype, s)])
        }
        _ => unreachable!("linalg::infer called for {}", op.kind()),
    }
}

/// Activations a gemm may apply to its result (cuBLASLt has epilogues for
/// ReLU and tanh-GELU; exact GELU follows the product on every backend).
pub const EPILOGUE_ACTIVATIONS: [UnaryOp; 3] = [UnaryOp::Relu, UnaryOp::Gelu, UnaryOp::GeluTanh];

/// `gemm = act(alpha * matmul(a, b) + beta * c)`.
pub(crate) fn decompose(op: &Op, g: &mut Graph, inputs: &[Value]) -> Result<Vec<Value>> {
    let Op::Gemm {
        alpha,
        beta,
        transpose_a,
        transpose_b,
        activation,
    } = op
    else {
        unreachable!()
    };
    let dt = g.ty(inputs[0]).dtype;
    let mut y = g.matmul_t(inputs[0], inputs[1], *transpose_a, *transpose_b)?;
    if *alpha != 1.0 {
        let a = g.scalar(dt, *alpha);
        y = g.mul(y, a)?;
    }
    if let Some(&c) = inputs.get(2) {
        let c = if *beta != 1.0 {
            let b = g.scalar(dt, *beta);
            g.mul(c, b)?
        } else {
            c
        };
        y = g.add(y, c)?;
    }
    if let Some(act) = activation {
        y = g.add_op(Op::Unary(*act), &[y])?;
    }
    Ok(vec![y])
}

impl Graph {
    /// `a @ b` with numpy broadcasting of batch axes.
    pub fn matmul(&mut self, a: Value, b: Value) -> Result<Value> {
        self.matmul_t(a, b, false, false)
    }
    /// `op(a) @ op(b)` where `op` swaps the last two axes when asked.
    pub fn matmul_t(&mut self, a: Value, b: Value, transpose_a: bool, transpose_b: bool) -> Result<Value> {
        self.add_op(
            Op::MatMul {
                transpose_a,
                transpose_b,
            },
            &[a, b],
        )
    }
    /// `alpha * op(a) @ op(b) + beta * c` on 2-D operands.
    #[allow(clippy::too_many_arguments)]
    pub fn gemm(
        &mut self,
        a: Value,
        b: Value,
        c: Option<Value>,
        alpha: f64,
        beta: f64,
        transpose_a: bool,
        transpose_b: bool,
    ) -> Result<Value> {
        let mut ins = vec![a, b];
        ins.extend(c);
        self.add_op(
            Op::Gemm {
                alpha,
                beta,
                transpose_a,
                transpose_b,
                activation: None,
            },
            &ins,
        )
    }
}
