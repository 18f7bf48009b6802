//! The graph IR and its builder API.
//!
//! A [`Graph`] is a list of SSA nodes in creation order (which is a topological
//! order: a node's inputs always exist before it). Each node has one [`Op`],
//! input [`Value`]s and typed outputs. Types are inferred as nodes are added,
//! so a wrong shape is reported at the call that made it, naming the node.
//!
//! Sources are placeholders (inputs), constants and variables. Variables are
//! state that outlives a run (see [`crate::State`]); `read`, `assign` and
//! `slice_update` act on them in graph order: a read added after an update
//! sees the update.

use std::fmt;

use crate::dtype::DType;
use crate::error::{Error, Result};
use crate::ops::Op;
use crate::shape::{Dim, Shape};
use crate::tensor::Tensor;

/// Index of a node in its graph.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct NodeId(pub u32);

/// One output of a node: the SSA value that ops consume.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Value {
    /// The producing node.
    pub node: NodeId,
    /// Which of its outputs.
    pub output: u32,
}

/// Handle of a variable (state) in a graph.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct VarId(pub u32);

/// Element type and (possibly symbolic) shape of a value.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct TensorType {
    /// Element type.
    pub dtype: DType,
    /// Shape.
    pub shape: Shape,
}

impl TensorType {
    /// A type.
    pub fn new(dtype: DType, shape: impl Into<Shape>) -> TensorType {
        TensorType {
            dtype,
            shape: shape.into(),
        }
    }
    /// The concrete dims; `None` if any is symbolic.
    pub fn concrete(&self) -> Option<Vec<usize>> {
        self.shape.concrete()
    }
}

impl fmt::Display for TensorType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}{}", self.dtype, self.shape)
    }
}

/// A node: an op applied to input values, producing typed outputs.
#[derive(Debug, Clone)]
pub struct Node {
    /// Unique, human-readable name (scoped, e.g. `block0/attn/matmul_12`).
    pub name: String,
    /// What it computes.
    pub op: Op,
    /// Its inputs.
    pub inputs: Vec<Value>,
    /// Types of its outputs.
    pub outputs: Vec<TensorType>,
}

/// A variable: named state with an initial value.
#[derive(Debug, Clone)]
pub struct Variable {
    /// Name.
    pub name: String,
    /// Value a fresh [`crate::State`] starts with; fixes the variable's type.
    pub initial: Tensor,
}

impl Variable {
    /// The variable's type.
    pub fn ty(&self) -> TensorType {
        TensorType::new(self.initial.dtype(), self.initial.graph_shape())
    }
}

/// A graph of tensor operations, built op by op.
///
/// ```
/// use stitch_core::{DType, Dim, Graph, Tensor};
/// let mut g = Graph::new();
/// let x = g.placeholder("x", DType::F32, vec![Dim::sym("batch"), Dim::Known(3)]);
/// let w = g.constant(Tensor::from_vec(vec![0.5f32; 6], &[3, 2]).unwrap());
/// let y = g.matmul(x, w).unwrap();
/// let y = g.relu(y).unwrap();
/// assert_eq!(g.ty(y).to_string(), "f32[batch, 2]");
/// // A wrong shape is an error naming the node and both shapes:
/// let bad = g.constant(Tensor::from_vec(vec![0f32; 4], &[4, 1]).unwrap());
/// let err = g.matmul(x, bad).unwrap_err().to_string();
/// assert!(err.contains("matmul") && err.contains("[batch, 3]") && err.contains("[4, 1]"), "{err}");
/// ```
#[derive(Debug, Clone, Default)]
pub struct Graph {
    nodes: Vec<Node>,
    variables: Vec<Variable>,
    scopes: Vec<String>,
}

impl Graph {
    /// An empty graph.
    pub fn new() -> Graph {
        Graph::default()
    }

    /// The nodes in creation (topological) order.
    pub fn nodes(&self) -> &[Node] {
        &self.nodes
    }
    /// One node.
    pub fn node(&self, id: NodeId) -> &Node {
        &self.nodes[id.0 as usize]
    }
    /// The variables.
    pub fn variables(&self) -> &[Variable] {
        &self.variables
    }
    /// One variable.
    pub fn variable_info(&self, var: VarId) -> &Variable {
        &self.variables[var.0 as usize]
    }
    /// The type of a value.
    pub fn ty(&self, v: Value) -> &TensorType {
        &self.node(v.node).outputs[v.output as usize]
    }
    /// The placeholders, in order, as (name, value).
    pub fn placeholders(&self) -> Vec<(&str, Value)> {
        self.nodes
            .iter()
            .enumerate()
            .filter_map(|(i, n)| match &n.op {
                Op::Placeholder { name } => Some((
                    name.as_str(),
                    Value {
                        node: NodeId(i as u32),
                        output: 0,
                    },
                )),
                _ => None,
            })
            .collect()
    }
    /// Looks a node up by name.
    pub fn find(&self, name: &str) -> Option<NodeId> {
        self.nodes.iter().position(|n| n.name == name).map(|i| NodeId(i as u32))
    }

    /// Mutable nodes, for passes that re-type a graph in place.
    pub(crate) fn nodes_mut(&mut self) -> &mut [Node] {
        &mut self.nodes
    }

    /// Replaces the value of constant node `node` by `t` of the same dtype and
    /// shape (a backend's device-resident copy, say).
    pub fn replace_constant(&mut self, node: NodeId, t: Tensor) -> Result<()> {
        match self.nodes.get_mut(node.0 as usize).map(|n| &mut n.op) {
            Some(Op::Constant(old)) if old.dtype() == t.dtype() && old.shape() == t.shape() => {
                *old = t;
                Ok(())
            }
            _ => Err(Error::invalid(format!(
                "node #{} is not a constant of {} {:?}",
                node.0,
                t.dtype(),
                t.shape()
            ))),
        }
    }

    /// A graph with this graph's variables and no nodes (passes rebuild into it).
    pub fn empty_like(&self) -> Graph {
        Graph {
            nodes: Vec::new(),
            variables: self.variables.clone(),
            scopes: Vec::new(),
        }
    }

    /// Adds a copy of `node` (from another graph) on `inputs`, keeping its name;
    /// types are re-inferred.
    pub fn copy_node(&mut self, node: &Node, inputs: &[Value]) -> Result<Vec<Value>> {
        if let Op::Placeholder { name } = &node.op {
            let v = self.placeholder(name, node.outputs[0].dtype, node.outputs[0].shape.clone());
            self.nodes.last_mut().expect("just pushed").name = node.name.clone();
            return Ok(vec![v]);
        }
        let values = self.add_node(node.op.clone(), inputs)?;
        self.nodes.last_mut().expect("just pushed").name = node.name.clone();
        Ok(values)
    }

    /// Opens a name scope: nodes added until [`Graph::pop_scope`] are named `scope/...`.
    pub fn push_scope(&mut self, scope: &str) {
        self.scopes.push(scope.to_string());
    }
    /// Closes the innermost name scope.
    pub fn pop_scope(&mut self) {
        self.scopes.pop();
    }
    /// Renames a node (names should stay unique; a later `find` returns the first match).
    pub fn set_name(&mut self, node: NodeId, name: &str) {
        self.nodes[node.0 as usize].name = self.scoped(name);
    }

    fn scoped(&self, name: &str) -> String {
        if self.scopes.is_empty() {
            name.to_string()
        } else {
            format!("{}/{}", self.scopes.join("/"), name)
        }
    }

    /// Adds a node for `op` on `inputs`, inferring its output types.
    /// Errors name the node, the op and the offending shapes.
    pub fn add_node(&mut self, op: Op, inputs: &[Value]) -> Result<Vec<Value>> {
        let id = NodeId(self.nodes.len() as u32);
        let name = self.scoped(&format!("{}_{}", op.kind(), id.0));
        for v in inputs {
            if v.node.0 as usize >= self.nodes.len() || v.output as usize >= self.node(v.node).outputs.len() {
                return Err(Error::node(
                    name,
                    op.kind(),
                    format!("input {v:?} does not exist in this graph"),
                ));
            }
        }
        let types: Vec<TensorType> = inputs.iter().map(|v| self.ty(*v).clone()).collect();
        let outputs = op
            .infer(&types, self)
            .map_err(|m| Error::node(name.clone(), op.kind(), m))?;
        let n = outputs.len();
        self.nodes.push(Node {
            name,
            op,
            inputs: inputs.to_vec(),
            outputs,
        });
        Ok((0..n as u32).map(|output| Value { node: id, output }).collect())
    }

    /// Adds a single-output node.
    pub fn add_op(&mut self, op: Op, inputs: &[Value]) -> Result<Value> {
        let kind = op.kind();
        let outs = self.add_node(op, inputs)?;
        match outs.as_slice() {
            [v] => Ok(*v),
            _ => Err(Error::invalid(format!(
                "op {kind} has {} outputs; use add_node",
                outs.len()
            ))),
        }
    }

    // ---------------------------------------------------------------- sources

    /// A named input, fed at run time; dims may be symbolic.
    pub fn placeholder(&mut self, name: &str, dtype: DType, shape: impl Into<Shape>) -> Value {
        let id = NodeId(self.nodes.len() as u32);
        self.nodes.push(Node {
            name: self.scoped(name),
            op: Op::Placeholder { name: name.to_string() },
            inputs: vec![],
            outputs: vec![TensorType::new(dtype, shape)],
        });
        Value { node: id, output: 0 }
    }

    /// A constant tensor.
    pub fn constant(&mut self, t: Tensor) -> Value {
        let id = NodeId(self.nodes.len() as u32);
        let ty = TensorType::new(t.dtype(), t.graph_shape());
        self.nodes.push(Node {
            name: self.scoped(&format!("constant_{}", id.0)),
            op: Op::Constant(t),
            inputs: vec![],
            outputs: vec![ty],
        });
        Value { node: id, output: 0 }
    }

    /// A scalar constant of `dtype` holding `v`.
    pub fn scalar(&mut self, dtype: DType, v: f64) -> Value {
        let t = Tensor::from_f64(dtype, &[v], &[]).expect("a scalar always fits");
        self.constant(t)
    }

    /// Declares a variable with an initial value. Variables live in a [`crate::State`].
    pub fn variable(&mut self, name: &str, initial: Tensor) -> VarId {
        self.variables.push(Variable {
            name: self.scoped(name),
            initial,
        });
        VarId(self.variables.len() as u32 - 1)
    }

    /// The variable's value at this point of the graph.
    pub fn read(&mut self, var: VarId) -> Result<Value> {
        self.add_op(Op::ReadVariable(var), &[])
    }

    /// Replaces the variable's value with `value` (same dtype and shape).
    pub fn assign(&mut self, var: VarId, value: Value) -> Result<NodeId> {
        let outs = self.add_node(Op::Assign(var), &[value])?;
        debug_assert!(outs.is_empty());
        Ok(NodeId(self.nodes.len() as u32 - 1))
    }

    /// Writes `update` into the variable in place, at `starts` (an i64 vector, one
    /// entry per axis, e.g. `[0, 0, pos, 0]` for a KV cache).
    pub fn slice_update(&mut self, var: VarId, update: Value, starts: Value) -> Result<NodeId> {
        self.add_node(Op::SliceUpdate(var), &[update, starts])?;
        Ok(NodeId(self.nodes.len() as u32 - 1))
    }
}

/// A `Dim` for builder calls: `dim(4)` or `dim("seq")`.
pub fn dim(d: impl Into<Dim>) -> Dim {
    d.into()
}
