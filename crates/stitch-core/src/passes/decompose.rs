//! Decomposition: replaces composite ops (softmax, layer_norm, sdpa, gelu, ...)
//! by their definitions in primitive ops, for every composite node that
//! `keep` rejects. Decomposed nodes are named under the composite's name
//! (`block/softmax_7/exp_31`), so tools can group them back.

use crate::error::{Error, Result};
use crate::graph::{Graph, Node, Value};

/// Rebuilds `graph` with every composite node for which `keep(node)` is false
/// replaced by its decomposition, repeated until none is left (a decomposition
/// may itself use composites, e.g. layer_norm uses rsqrt). Returns the new graph
/// and `outputs` mapped into it.
pub fn decompose(graph: &Graph, outputs: &[Value], keep: &dyn Fn(&Node) -> bool) -> Result<(Graph, Vec<Value>)> {
    decompose_in(graph, outputs, &|_, n| keep(n))
}

/// [`decompose`] with `keep(graph, node)` told the graph the node lives in (to
/// look up its input types; decomposition builds new graphs round by round).
pub fn decompose_in(
    graph: &Graph,
    outputs: &[Value],
    keep: &dyn Fn(&Graph, &Node) -> bool,
) -> Result<(Graph, Vec<Value>)> {
    let pending = |g: &Graph| g.nodes().iter().any(|n| n.op.is_composite() && !keep(g, n));
    if !pending(graph) {
        return Ok((graph.clone(), outputs.to_vec()));
    }
    let (mut g, mut outs) = decompose_once(graph, outputs, keep)?;
    for _ in 0..16 {
        if !pending(&g) {
            return Ok((g, outs));
        }
        (g, outs) = decompose_once(&g, &outs, keep)?;
    }
    Err(Error::invalid(
        "decomposition did not terminate after 16 rounds (a composite decomposes into itself)",
    ))
}

fn decompose_once(
    graph: &Graph,
    outputs: &[Value],
    keep: &dyn Fn(&Graph, &Node) -> bool,
) -> Result<(Graph, Vec<Value>)> {
    super::rebuild(graph, outputs, |out, node, inputs| {
        if node.op.is_composite() && !keep(graph, node) {
            out.push_scope(&node.name);
            let produced = node.op.decompose(out, inputs);
            out.pop_scope();
            produced.ok_or_else(|| Error::invalid(format!("composite op {} has no decomposition", node.op.kind())))?
        } else {
            out.copy_node(node, inputs)
        }
    })
}
