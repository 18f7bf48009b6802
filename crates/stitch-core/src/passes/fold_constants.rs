//! Constant folding: a node whose inputs are all constants is evaluated once at
//! compile time (on the given backend) and replaced by a constant.
//!
//! A fold that would grow the constants' bytes by more than `max_growth` times
//! (default 2) is skipped: int8 weights stored as `Cast → Mul` stay int8 in
//! memory instead of being expanded to f32 at compile time.

use crate::error::Result;
use crate::exec::Backend;
use crate::graph::{Graph, Value};
use crate::ops::Op;
use crate::tensor::Tensor;

/// Options of [`fold_constants`].
#[derive(Debug, Clone, Copy)]
pub struct FoldOptions {
    /// Largest accepted ratio of folded output bytes to constant input bytes.
    pub max_growth: f64,
}

impl Default for FoldOptions {
    fn default() -> Self {
        FoldOptions { max_growth: 2.0 }
    }
}

fn bytes(t: &Tensor) -> usize {
    t.numel() * t.dtype().size_in_bytes()
}

/// The graph with foldable nodes replaced by constants, and the number folded.
pub fn fold_constants(
    graph: &Graph,
    outputs: &[Value],
    backend: &dyn Backend,
    options: FoldOptions,
) -> Result<(Graph, Vec<Value>, usize)> {
    let mut folded = 0;
    let (g, outs) = super::rebuild(graph, outputs, |out, node, inputs| {
        let constants: Option<Vec<Tensor>> = inputs
            .iter()
            .map(|v| match &out.node(v.node).op {
                Op::Constant(t) => Some(t.clone()),
                _ => None,
            })
            .collect();
        let foldable = !node.op.has_side_effects()
            && !matches!(node.op, Op::Constant(_) | Op::Placeholder { .. } | Op::ReadVariable(_))
            && backend.supports(node);
        if let (true, Some(constants)) = (foldable, constants) {
            let in_bytes: usize = constants.iter().map(bytes).sum();
            let out_bytes: usize = node
                .outputs
                .iter()
                .map(|t| t.shape.numel().unwrap_or(usize::MAX / 4) * t.dtype.size_in_bytes())
                .sum();
            // Ops without inputs (range) have nothing to grow from: fold them while small.
            let small_enough = if in_bytes == 0 {
                out_bytes <= 1 << 20
            } else {
                out_bytes as f64 <= options.max_growth * in_bytes as f64
            };
            if small_enough {
                let results = backend.execute(node, &constants)?;
                folded += 1;
                return Ok(results
                    .into_iter()
                    .map(|t| {
                        let v = out.constant(t);
                        out.set_name(v.node, &node.name);
                        v
                    })
                    .collect());
            }
        }
        out.copy_node(node, inputs)
    })?;
    Ok((g, outs, folded))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{DType, Node};

    /// Evaluates f32 `add`, `mul` and `cast` to f32 on the host: enough to test folding.
    struct Host;
    impl Backend for Host {
        fn name(&self) -> &str {
            "host"
        }
        fn supports(&self, node: &Node) -> bool {
            matches!(node.op.kind().as_str(), "add" | "mul" | "cast")
        }
        fn execute(&self, node: &Node, inputs: &[Tensor]) -> Result<crate::Outputs> {
            let a = inputs[0].to_f64_vec();
            let v: Vec<f64> = match node.op.kind().as_str() {
                "cast" => a,
                k => {
                    let b = inputs[1].to_f64_vec();
                    let n = a.len().max(b.len());
                    (0..n)
                        .map(|i| {
                            let (x, y) = (a[i % a.len()], b[i % b.len()]);
                            if k == "add" {
                                x + y
                            } else {
                                x * y
                            }
                        })
                        .collect()
                }
            };
            let shape = node.outputs[0].concrete().unwrap();
            Ok(crate::Outputs::from_iter([Tensor::from_f64(DType::F32, &v, &shape)?]))
        }
    }

    #[test]
    fn folds_constant_subgraphs_and_keeps_placeholders() {
        let mut g = Graph::new();
        let a = g.constant(Tensor::from_vec(vec![1f32, 2.0, 3.0], &[3]).unwrap());
        let b = g.constant(Tensor::from_vec(vec![10f32, 20.0, 30.0], &[3]).unwrap());
        let c = g.add(a, b).unwrap();
        let x = g.placeholder("x", DType::F32, [3]);
        let y = g.mul(c, x).unwrap();
        let (out, outs, n) = fold_constants(&g, &[y], &Host, FoldOptions::default()).unwrap();
        assert_eq!(n, 1);
        let mul = out.node(outs[0].node);
        let Op::Constant(t) = &out.node(mul.inputs[0].node).op else {
            panic!("add was not folded")
        };
        assert_eq!(t.to_vec::<f32>().unwrap(), vec![11.0, 22.0, 33.0]);
        assert!(matches!(out.node(mul.inputs[1].node).op, Op::Placeholder { .. }));
    }

    #[test]
    fn does_not_expand_int8_weights_beyond_the_growth_limit() {
        let mut g = Graph::new();
        let w = g.constant(Tensor::from_vec(vec![1i8, -2, 3, 4], &[4]).unwrap());
        let wf = g.cast(w, DType::F32).unwrap(); // 4 bytes → 16 bytes: 4x growth
        let s = g.constant(Tensor::from_vec(vec![0.5f32], &[1]).unwrap());
        let y = g.mul(wf, s).unwrap();
        let (out, outs, n) = fold_constants(&g, &[y], &Host, FoldOptions::default()).unwrap();
        assert_eq!(n, 0, "the cast must stay");
        assert_eq!(out.node(outs[0].node).op.kind(), "mul");
        // With a permissive limit it folds all the way.
        let (_, _, n) = fold_constants(&g, &[y], &Host, FoldOptions { max_growth: 8.0 }).unwrap();
        assert_eq!(n, 2);
    }
}
