//! Sources and state: placeholders, constants, and variables with `read`,
//! `assign` and in-place `slice_update`.
//!
//! Variables live in a [`crate::State`], outside the executable, so one compiled
//! graph can serve many sequences. Updates take effect in graph order.
//! `slice_update` clamps nothing: a write outside the variable is a run-time
//! error naming the node, the variable's shape, the update's shape and the start.

use crate::dtype::DType;
use crate::graph::{Graph, TensorType};
use crate::ops::util::arity;
use crate::ops::Op;

pub(crate) fn infer(op: &Op, inputs: &[TensorType], graph: &Graph) -> Result<Vec<TensorType>, String> {
    let var_ty = |v: crate::VarId| {
        graph
            .variables()
            .get(v.0 as usize)
            .map(|var| var.ty())
            .ok_or_else(|| format!("variable #{} does not exist in this graph", v.0))
    };
    match op {
        Op::Placeholder { name } => Err(format!("placeholder `{name}` is typed when created, not inferred")),
        Op::Constant(t) => {
            arity(inputs, 0, 0)?;
            Ok(vec![TensorType::new(t.dtype(), t.graph_shape())])
        }
        Op::ReadVariable(v) => {
            arity(inputs, 0, 0)?;
            Ok(vec![var_ty(*v)?])
        }
        Op::Assign(v) => {
            arity(inputs, 1, 1)?;
            let t = var_ty(*v)?;
            let x = &inputs[0];
            let same_shape = x.shape.rank() == t.shape.rank()
                && x.shape
                    .0
                    .iter()
                    .zip(&t.shape.0)
                    .all(|(a, b)| a == b || a.known().is_none());
            if x.dtype != t.dtype || !same_shape {
                return Err(format!("assigned value {x} does not match variable type {t}"));
            }
            Ok(vec![])
        }
        Op::SliceUpdate(v) => {
            arity(inputs, 2, 2)?;
            let t = var_ty(*v)?;
            let (u, starts) = (&inputs[0], &inputs[1]);
            if u.dtype != t.dtype || u.shape.rank() != t.shape.rank() {
                return Err(format!("update {u} must have the dtype and rank of variable {t}"));
            }
            for (i, (a, b)) in u.shape.0.iter().zip(&t.shape.0).enumerate() {
                if let (Some(a), Some(b)) = (a.known(), b.known()) {
                    if a > b {
                        return Err(format!("update {u} is larger than variable {t} along axis {i}"));
                    }
                }
            }
            if starts.dtype != DType::I64 || starts.shape.rank() != 1 || !starts.shape.0[0].is(t.shape.rank()) {
                return Err(format!(
                    "starts must be i64[{}], one per axis of {t}; got {starts}",
                    t.shape.rank()
                ));
            }
            Ok(vec![])
        }
        _ => unreachable!("state::infer called for {}", op.kind()),
    }
}
