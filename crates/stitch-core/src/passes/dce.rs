//! Dead-code elimination: drops every node that neither an output nor a side
//! effect (variable update) depends on.

use crate::error::Result;
use crate::graph::{Graph, Value};

/// The graph without dead nodes, and the outputs mapped into it.
pub fn dce(graph: &Graph, outputs: &[Value]) -> Result<(Graph, Vec<Value>)> {
    let live = super::prune::live_nodes(graph, outputs);
    let mut out = graph.empty_like();
    // Dead nodes map to nothing; only live nodes (whose inputs are live) are looked up.
    let mut map: Vec<Vec<Value>> = Vec::with_capacity(graph.nodes().len());
    for (node, &is_live) in graph.nodes().iter().zip(&live) {
        let values = if is_live {
            let inputs: Vec<Value> = node
                .inputs
                .iter()
                .map(|v| map[v.node.0 as usize][v.output as usize])
                .collect();
            out.copy_node(node, &inputs)?
        } else {
            Vec::new()
        };
        map.push(values);
    }
    let outputs = outputs
        .iter()
        .map(|v| map[v.node.0 as usize][v.output as usize])
        .collect();
    Ok((out, outputs))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{DType, Tensor};

    #[test]
    fn removes_dead_nodes_and_keeps_side_effects() {
        let mut g = Graph::new();
        let x = g.placeholder("x", DType::F32, [4]);
        let _dead = g.exp(x).unwrap();
        let y = g.neg(x).unwrap();
        let var = g.variable("v", Tensor::zeros(DType::F32, &[4]));
        let t = g.tanh(x).unwrap();
        g.assign(var, t).unwrap();
        let (out, outs) = dce(&g, &[y]).unwrap();
        let kinds: Vec<String> = out.nodes().iter().map(|n| n.op.kind()).collect();
        assert_eq!(kinds, ["placeholder", "neg", "tanh", "assign"]);
        assert_eq!(out.node(outs[0].node).op.kind(), "neg");
    }
}
