//! Fused regions: the one IR every backend consumes for fusion.
//!
//! A [`Region`] is a small expression DAG over the node's inputs: elementwise
//! unary/binary ops, `where`, float casts and scalar constants, evaluated over
//! one iteration shape (the broadcast of the inputs), optionally followed by one
//! trailing reduction. A backend evaluates it in a single pass over memory,
//! never materialising the intermediates (the CPU tile by tile; CUDA by
//! printing the DAG as a kernel). The fusion pass builds regions from chains
//! of primitive nodes; their names are kept in `members` for tools.

use std::fmt;

use crate::dtype::DType;
use crate::graph::TensorType;
use crate::ops::reduce::{reduced_shape, ReduceOp};
use crate::ops::{BinaryOp, UnaryOp};
use crate::shape::{broadcast_shapes, Shape};

/// One expression of a region; operands index earlier expressions.
#[derive(Debug, Clone, PartialEq)]
pub enum Expr {
    /// The region's i-th input, broadcast to the iteration shape.
    Input(usize),
    /// A scalar constant of the given dtype.
    Scalar(f64, DType),
    /// Unary op.
    Unary(UnaryOp, usize),
    /// Binary op.
    Binary(BinaryOp, usize, usize),
    /// `where(cond, a, b)`.
    Where(usize, usize, usize),
    /// Cast.
    Cast(DType, usize),
}

/// A trailing reduction applied to the region's single output expression.
#[derive(Debug, Clone, PartialEq)]
pub struct RegionReduce {
    /// Which reduction.
    pub op: ReduceOp,
    /// Reduced axes of the iteration shape (sorted, unique).
    pub axes: Vec<usize>,
    /// Keep reduced axes as size 1.
    pub keepdims: bool,
}

/// A fused region (see the module docs).
#[derive(Debug, Clone, PartialEq)]
pub struct Region {
    /// Expressions in dependency order.
    pub exprs: Vec<Expr>,
    /// Expressions that are outputs of the node (one output when `reduce` is set).
    pub outputs: Vec<usize>,
    /// Optional trailing reduction.
    pub reduce: Option<RegionReduce>,
    /// Names of the graph nodes this region replaced, in order.
    pub members: Vec<String>,
}

impl Region {
    /// The dtype of each expression, given the input dtypes.
    pub fn expr_dtypes(&self, inputs: &[DType]) -> Result<Vec<DType>, String> {
        let mut out: Vec<DType> = Vec::with_capacity(self.exprs.len());
        for (i, e) in self.exprs.iter().enumerate() {
            let get = |j: usize| {
                if j < i {
                    Ok(out[j])
                } else {
                    Err(format!("expression {i} uses later expression {j}"))
                }
            };
            out.push(match e {
                Expr::Input(k) => *inputs.get(*k).ok_or_else(|| format!("region input {k} missing"))?,
                Expr::Scalar(_, d) => *d,
                Expr::Unary(_, a) => get(*a)?,
                Expr::Binary(op, a, b) => {
                    let (da, db) = (get(*a)?, get(*b)?);
                    if da != db {
                        return Err(format!("binary {} on {da} and {db}", op.name()));
                    }
                    op.output_dtype(da)
                }
                Expr::Where(_, a, _) => get(*a)?,
                Expr::Cast(d, a) => {
                    get(*a)?;
                    *d
                }
            });
        }
        Ok(out)
    }

    /// Output types for the given input types.
    pub fn infer(&self, inputs: &[TensorType]) -> Result<Vec<TensorType>, String> {
        let mut shape = Shape::scalar();
        for t in inputs {
            shape = broadcast_shapes(&shape, &t.shape)
                .ok_or_else(|| format!("region inputs {} and {} do not broadcast", shape, t.shape))?;
        }
        let dtypes = self.expr_dtypes(&inputs.iter().map(|t| t.dtype).collect::<Vec<_>>())?;
        match &self.reduce {
            None => Ok(self
                .outputs
                .iter()
                .map(|&o| TensorType::new(dtypes[o], shape.clone()))
                .collect()),
            Some(r) => {
                if self.outputs.len() != 1 {
                    return Err("a region with a reduction has exactly one output".into());
                }
                if r.axes.iter().any(|&a| a >= shape.rank()) {
                    return Err(format!("reduction axes {:?} out of range for {}", r.axes, shape));
                }
                Ok(vec![TensorType::new(
                    dtypes[self.outputs[0]],
                    reduced_shape(&shape, &r.axes, r.keepdims),
                )])
            }
        }
    }
}

impl fmt::Display for Region {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, e) in self.exprs.iter().enumerate() {
            let s = match e {
                Expr::Input(k) => format!("in{k}"),
                Expr::Scalar(v, d) => format!("{v}:{d}"),
                Expr::Unary(op, a) => format!("{}(%{a})", op.name()),
                Expr::Binary(op, a, b) => format!("{}(%{a}, %{b})", op.name()),
                Expr::Where(c, a, b) => format!("where(%{c}, %{a}, %{b})"),
                Expr::Cast(d, a) => format!("cast<{d}>(%{a})"),
            };
            writeln!(f, "%{i} = {s}")?;
        }
        if let Some(r) = &self.reduce {
            writeln!(f, "{}(%{}, axes {:?})", r.op.name(), self.outputs[0], r.axes)?;
        }
        write!(f, "outputs {:?}", self.outputs)
    }
}
