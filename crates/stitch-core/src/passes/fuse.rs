//! Fusion: groups chains of elementwise nodes (with broadcasts) and an optional
//! trailing reduction into [`Region`]s, each run as one node — on the CPU in one
//! pass over memory, tile by tile, without materialising intermediates.
//!
//! Rules (applied from the outputs backwards): a fusible node joins the region
//! of its consumers when all its consumers are in one region, the node is not
//! a graph output, and its output has as many elements as the region's
//! iteration space (so fusing never recomputes a broadcast value). A reduction
//! starts a region of its own and can only end one (trailing reduction).
//! Scalar constants are inlined. Only float (and bool) values fuse; integer
//! arithmetic keeps its own kernels.

use std::collections::HashMap;
use std::sync::Arc;

use crate::dtype::DType;
use crate::error::Result;
use crate::graph::{Graph, Node, Value};
use crate::ops::fused::{Expr, Region, RegionReduce};
use crate::ops::reduce::reduction_axes;
use crate::ops::Op;

/// What fusion did.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct FuseStats {
    /// Regions created.
    pub regions: usize,
    /// Graph nodes replaced by regions.
    pub nodes_fused: usize,
    /// Bytes of intermediate values that are no longer written to memory.
    pub bytes_avoided: usize,
}

fn float_or_bool(d: DType) -> bool {
    d.is_float() || d == DType::Bool
}

/// True for nodes that can be an expression of a region.
fn elementwise(node: &Node, g: &Graph) -> bool {
    let types_ok = node.inputs.iter().all(|v| float_or_bool(g.ty(*v).dtype))
        && node.outputs.iter().all(|t| float_or_bool(t.dtype));
    types_ok
        && match &node.op {
            Op::Unary(u) => g.ty(node.inputs[0]).dtype.is_float() && u.accepts(g.ty(node.inputs[0]).dtype),
            Op::Binary(b) => g.ty(node.inputs[0]).dtype.is_float() && !b.is_logical(),
            Op::Where => true,
            Op::Cast(to) => to.is_float(),
            _ => false,
        }
}

fn reduction(node: &Node, g: &Graph) -> bool {
    matches!(node.op, Op::Reduce { .. }) && g.ty(node.inputs[0]).dtype.is_float()
}

fn scalar_constant(g: &Graph, v: Value) -> Option<(f64, DType)> {
    match &g.node(v.node).op {
        // Rank 0 only: inlining a [1, 1] constant would lose its effect on the output rank.
        Op::Constant(t) if t.rank() == 0 && t.dtype().is_float() => Some((t.to_f64_vec()[0], t.dtype())),
        _ => None,
    }
}

/// Fuses `graph` (which must have concrete shapes) and maps `outputs` into the result.
pub fn fuse(graph: &Graph, outputs: &[Value]) -> Result<(Graph, Vec<Value>, FuseStats)> {
    fuse_where(graph, outputs, &|_| true)
}

/// [`fuse`], joining only nodes for which `allowed` holds (the nodes the
/// backend that evaluates the regions runs itself; placement sends the others
/// elsewhere).
pub fn fuse_where(
    graph: &Graph,
    outputs: &[Value],
    allowed: &dyn Fn(&Node) -> bool,
) -> Result<(Graph, Vec<Value>, FuseStats)> {
    let n = graph.nodes().len();
    // Consumers of each node (by node; every fusible node has one output).
    let mut consumers: Vec<Vec<usize>> = vec![Vec::new(); n];
    for (i, node) in graph.nodes().iter().enumerate() {
        for v in &node.inputs {
            consumers[v.node.0 as usize].push(i);
        }
    }
    let is_output: Vec<bool> = {
        let mut o = vec![false; n];
        for v in outputs {
            o[v.node.0 as usize] = true;
        }
        o
    };
    let numel = |i: usize| graph.nodes()[i].outputs.first().and_then(|t| t.shape.numel());

    // region[i] = the root node of the region i belongs to.
    let mut region: Vec<Option<usize>> = vec![None; n];
    // Iteration-space size of each root's region.
    let mut space: HashMap<usize, usize> = HashMap::new();
    for i in (0..n).rev() {
        let node = &graph.nodes()[i];
        if !allowed(node) {
            continue;
        }
        if reduction(node, graph) {
            region[i] = Some(i);
            if let Some(s) = graph.ty(node.inputs[0]).shape.numel() {
                space.insert(i, s);
            }
            continue;
        }
        if !elementwise(node, graph) || numel(i).is_none() {
            continue;
        }
        let joined = if is_output[i] || consumers[i].is_empty() {
            None
        } else {
            let first = region[consumers[i][0]];
            match first {
                Some(root)
                    if consumers[i].iter().all(|&c| region[c] == Some(root))
                        && space.get(&root) == numel(i).as_ref() =>
                {
                    Some(root)
                }
                _ => None,
            }
        };
        region[i] = Some(joined.unwrap_or(i));
        if joined.is_none() {
            space.insert(i, numel(i).unwrap_or(0));
        }
    }
    // Members per root; only regions of two or more nodes are worth a fused node.
    let mut members: HashMap<usize, Vec<usize>> = HashMap::new();
    for (i, r) in region.iter().enumerate() {
        if let Some(root) = r {
            members.entry(*root).or_default().push(i);
        }
    }
    members.retain(|_, m| m.len() >= 2);

    let mut stats = FuseStats::default();
    let mut out = graph.empty_like();
    let mut map: Vec<Vec<Value>> = Vec::with_capacity(n);
    for (i, node) in graph.nodes().iter().enumerate() {
        let root = region[i].filter(|r| members.contains_key(r));
        let values = match root {
            Some(r) if r == i => {
                let m = &members[&r];
                let (region, inputs) = build_region(graph, m)?;
                let mapped: Vec<Value> = inputs
                    .iter()
                    .map(|v| map[v.node.0 as usize][v.output as usize])
                    .collect();
                stats.regions += 1;
                stats.nodes_fused += m.len();
                stats.bytes_avoided += m[..m.len() - 1]
                    .iter()
                    .map(|&j| {
                        graph.nodes()[j].outputs[0].shape.numel().unwrap_or(0)
                            * graph.nodes()[j].outputs[0].dtype.size_in_bytes()
                    })
                    .sum::<usize>();
                let vals = out.add_node(Op::Fused(Arc::new(region)), &mapped)?;
                out.set_name(vals[0].node, &format!("fused_{}", node.name));
                vals
            }
            // Inner members are only consumed inside their region.
            Some(_) => Vec::new(),
            None => {
                let inputs: Vec<Value> = node
                    .inputs
                    .iter()
                    .map(|v| map[v.node.0 as usize][v.output as usize])
                    .collect();
                out.copy_node(node, &inputs)?
            }
        };
        map.push(values);
    }
    let outputs = outputs
        .iter()
        .map(|v| map[v.node.0 as usize][v.output as usize])
        .collect();
    Ok((out, outputs, stats))
}

/// Builds the region for `members` (sorted node indices; the last is the root)
/// and returns it with its external inputs.
fn build_region(graph: &Graph, members: &[usize]) -> Result<(Region, Vec<Value>)> {
    let mut exprs: Vec<Expr> = Vec::new();
    let mut inputs: Vec<Value> = Vec::new();
    let mut expr_of: HashMap<Value, usize> = HashMap::new();
    let mut reduce = None;
    for &m in members {
        let node = &graph.nodes()[m];
        let mut operand = |v: Value, exprs: &mut Vec<Expr>| -> usize {
            if let Some(&e) = expr_of.get(&v) {
                return e;
            }
            let e = exprs.len();
            match scalar_constant(graph, v) {
                Some((x, d)) => exprs.push(Expr::Scalar(x, d)),
                None => {
                    exprs.push(Expr::Input(inputs.len()));
                    inputs.push(v);
                }
            }
            expr_of.insert(v, e);
            e
        };
        let ops: Vec<usize> = node.inputs.iter().map(|v| operand(*v, &mut exprs)).collect();
        let expr = match &node.op {
            Op::Unary(u) => Expr::Unary(*u, ops[0]),
            Op::Binary(b) => Expr::Binary(*b, ops[0], ops[1]),
            Op::Where => Expr::Where(ops[0], ops[1], ops[2]),
            Op::Cast(d) => Expr::Cast(*d, ops[0]),
            Op::Reduce { op, axes, keepdims } => {
                let axes = reduction_axes(axes, graph.ty(node.inputs[0])).map_err(crate::Error::invalid)?;
                reduce = Some(RegionReduce {
                    op: *op,
                    axes,
                    keepdims: *keepdims,
                });
                expr_of.insert(
                    Value {
                        node: crate::NodeId(m as u32),
                        output: 0,
                    },
                    ops[0],
                );
                continue;
            }
            other => return Err(crate::Error::invalid(format!("{} cannot be fused", other.kind()))),
        };
        expr_of.insert(
            Value {
                node: crate::NodeId(m as u32),
                output: 0,
            },
            exprs.len(),
        );
        exprs.push(expr);
    }
    let root = *members.last().expect("regions have members");
    let out_expr = expr_of[&Value {
        node: crate::NodeId(root as u32),
        output: 0,
    }];
    let names = members.iter().map(|&m| graph.nodes()[m].name.clone()).collect();
    Ok((
        Region {
            exprs,
            outputs: vec![out_expr],
            reduce,
            members: names,
        },
        inputs,
    ))
}
