//! Compile passes: each a small graph → graph transformation in its own file,
//! testable alone. The executor runs them when it specialises a graph for
//! concrete input shapes:
//! [`specialize`] (concrete shapes) → [`rewrite`] (patterns such as attention
//! → sdpa) → [`decompose`] (composites the backend lacks) → [`dce`] →
//! [`fold_constants`] → [`cse`] → [`dce`] → [`fuse`] → [`place`] (which backend
//! runs each node, with copies) → [`prune`] (the steps the outputs and side
//! effects need) → [`memory`] (arena plan).

pub mod cse;
pub mod dce;
pub mod decompose;
pub mod fold_constants;
pub mod fuse;
pub mod memory;
pub mod place;
pub mod prune;
pub mod rewrite;
pub mod specialize;

use crate::error::Result;
use crate::graph::{Graph, Node, Value};

/// Rebuilds `graph` node by node: `emit(out, node, inputs)` adds whatever should
/// replace `node` to `out` (given its inputs already mapped into `out`) and
/// returns the values that replace its outputs. Returns the new graph and
/// `outputs` mapped into it. Variables carry over unchanged.
pub fn rebuild(
    graph: &Graph,
    outputs: &[Value],
    mut emit: impl FnMut(&mut Graph, &Node, &[Value]) -> Result<Vec<Value>>,
) -> Result<(Graph, Vec<Value>)> {
    let mut out = graph.empty_like();
    let mut map: Vec<Vec<Value>> = Vec::with_capacity(graph.nodes().len());
    for node in graph.nodes() {
        let inputs: Vec<Value> = node
            .inputs
            .iter()
            .map(|v| map[v.node.0 as usize][v.output as usize])
            .collect();
        let values = emit(&mut out, node, &inputs)?;
        map.push(values);
    }
    let outputs = outputs
        .iter()
        .map(|v| map[v.node.0 as usize][v.output as usize])
        .collect();
    Ok((out, outputs))
}
