//! Common-subexpression elimination: two nodes with the same op, attributes and
//! inputs compute the same values, so the later one is replaced by the earlier.
//! Constants are merged when they share a buffer and layout. Nodes with side
//! effects, placeholders and variable reads are never merged (a read after an
//! update differs from one before it).

use std::collections::HashMap;

use crate::error::Result;
use crate::graph::{Graph, Value};
use crate::ops::Op;

/// The graph with duplicate computations merged, and the number merged.
pub fn cse(graph: &Graph, outputs: &[Value]) -> Result<(Graph, Vec<Value>, usize)> {
    let mut seen: HashMap<String, Vec<Value>> = HashMap::new();
    let mut merged = 0;
    let (g, outs) = super::rebuild(graph, outputs, |out, node, inputs| {
        let key = match &node.op {
            Op::Placeholder { .. } | Op::ReadVariable(_) | Op::Assign(_) | Op::SliceUpdate(_) => None,
            Op::Constant(t) => Some(format!(
                "const {:p} {} {:?} {:?} {}",
                t.buffer().as_ptr(),
                t.dtype(),
                t.shape(),
                t.strides(),
                t.offset()
            )),
            op => Some(format!("{op:?} {inputs:?}")),
        };
        if let Some(key) = key {
            if let Some(existing) = seen.get(&key) {
                merged += 1;
                return Ok(existing.clone());
            }
            let values = out.copy_node(node, inputs)?;
            seen.insert(key, values.clone());
            Ok(values)
        } else {
            out.copy_node(node, inputs)
        }
    })?;
    Ok((g, outs, merged))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{DType, Tensor};

    #[test]
    fn merges_identical_nodes_but_not_reads_around_updates() {
        let mut g = Graph::new();
        let x = g.placeholder("x", DType::F32, [4]);
        let a = g.exp(x).unwrap();
        let b = g.exp(x).unwrap();
        let s = g.add(a, b).unwrap();
        let var = g.variable("v", Tensor::zeros(DType::F32, &[4]));
        let r1 = g.read(var).unwrap();
        g.assign(var, s).unwrap();
        let r2 = g.read(var).unwrap();
        let (out, outs, merged) = cse(&g, &[s, r1, r2]).unwrap();
        assert_eq!(merged, 1);
        let add = out.node(outs[0].node);
        assert_eq!(add.inputs[0], add.inputs[1], "both operands are the one exp");
        assert_ne!(outs[1], outs[2], "reads before and after an assign stay distinct");
        assert_eq!(out.nodes().len(), g.nodes().len() - 1);
    }
}
