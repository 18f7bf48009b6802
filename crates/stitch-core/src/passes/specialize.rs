//! Specialisation: re-types a graph for concrete input shapes.
//!
//! Every symbolic dimension is bound by the placeholders' actual shapes (the same
//! symbol must get the same size everywhere), then every node's types are
//! re-inferred with concrete sizes. Errors name the node and the shapes, so a
//! mismatch that was invisible symbolically (e.g. `seq` vs 7) is reported here.

use std::collections::HashMap;
use std::sync::Arc;

use crate::error::{Error, Result};
use crate::graph::{Graph, TensorType};
use crate::ops::Op;
use crate::shape::{Dim, Shape};

/// Returns a copy of `graph` whose placeholders have the shapes in `inputs`
/// (indexed like [`Graph::placeholders`]) and whose every type is concrete.
pub fn specialize(graph: &Graph, inputs: &[TensorType]) -> Result<Graph> {
    let mut g = graph.clone();
    let mut bindings: HashMap<Arc<str>, (usize, String)> = HashMap::new();
    let mut placeholder_index = 0;
    for i in 0..g.nodes().len() {
        let node = &g.nodes()[i];
        let new_types = match &node.op {
            Op::Placeholder { name } => {
                let declared = &node.outputs[0];
                let given = inputs
                    .get(placeholder_index)
                    .ok_or_else(|| Error::invalid(format!("no input type for placeholder `{name}`")))?;
                placeholder_index += 1;
                bind(name, declared, given, &mut bindings)?;
                vec![given.clone()]
            }
            op => {
                let types: Vec<TensorType> = node.inputs.iter().map(|v| g.ty(*v).clone()).collect();
                op.infer(&types, &g)
                    .map_err(|m| Error::node(node.name.clone(), op.kind(), m))?
            }
        };
        g.nodes_mut()[i].outputs = new_types;
    }
    Ok(g)
}

fn bind(
    name: &str,
    declared: &TensorType,
    given: &TensorType,
    bindings: &mut HashMap<Arc<str>, (usize, String)>,
) -> Result<()> {
    let mismatch = |why: String| {
        Error::node(
            name,
            "placeholder",
            format!("input {given} does not match the declared {declared}: {why}"),
        )
    };
    if declared.dtype != given.dtype {
        return Err(mismatch("dtypes differ".into()));
    }
    if declared.shape.rank() != given.shape.rank() {
        return Err(mismatch("ranks differ".into()));
    }
    for (axis, (d, g)) in declared.shape.0.iter().zip(&given.shape.0).enumerate() {
        let Some(size) = g.known() else {
            return Err(mismatch(format!("axis {axis} of the input is not concrete")));
        };
        match d {
            Dim::Known(n) if *n != size => return Err(mismatch(format!("axis {axis} must be {n}"))),
            Dim::Known(_) => {}
            Dim::Sym(s) => match bindings.get(s) {
                Some((prev, by)) if *prev != size => {
                    return Err(mismatch(format!("`{s}` is {size} here but {prev} in `{by}`")));
                }
                Some(_) => {}
                None => {
                    bindings.insert(s.clone(), (size, name.to_string()));
                }
            },
        }
    }
    Ok(())
}

/// The concrete type of a tensor.
pub fn type_of(t: &crate::Tensor) -> TensorType {
    TensorType {
        dtype: t.dtype(),
        shape: Shape::known(t.shape()),
    }
}
