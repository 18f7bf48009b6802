//! Pruning: which nodes a run must execute — those the outputs depend on, plus
//! every side-effecting node (variable updates) and what they depend on.

use crate::graph::{Graph, Value};

/// `live[i]` is true when node `i` must run to produce `outputs` and all effects.
pub fn live_nodes(graph: &Graph, outputs: &[Value]) -> Vec<bool> {
    let n = graph.nodes().len();
    let mut live = vec![false; n];
    for v in outputs {
        live[v.node.0 as usize] = true;
    }
    for (i, node) in graph.nodes().iter().enumerate() {
        if node.op.has_side_effects() {
            live[i] = true;
        }
    }
    for i in (0..n).rev() {
        if live[i] {
            for v in &graph.nodes()[i].inputs {
                live[v.node.0 as usize] = true;
            }
        }
    }
    live
}
