//! # stitch-core
//!
//! The core of stitch, a machine-learning compute-graph engine: tensors and
//! dtypes, shapes with symbolic dimensions, the graph IR and its builder, op
//! definitions (type inference and decompositions), compile passes, and the
//! executor that drives a [`Backend`]. Core depends on no backend.
//!
//! ```
//! use std::sync::Arc;
//! use stitch_core::{Backend, CompileOptions, DType, Executable, Graph, Node, Outputs, Result, Tensor};
//!
//! // A toy backend that only knows `neg` — enough to show the flow.
//! struct NegOnly;
//! impl Backend for NegOnly {
//!     fn name(&self) -> &str { "neg-only" }
//!     fn supports(&self, node: &Node) -> bool { node.op.kind() == "neg" }
//!     fn execute(&self, _node: &Node, inputs: &[Tensor]) -> Result<Outputs> {
//!         let v: Vec<f32> = inputs[0].to_vec::<f32>()?.iter().map(|x| -x).collect();
//!         Ok(Outputs::from_iter([Tensor::from_vec(v, inputs[0].shape())?]))
//!     }
//! }
//!
//! let mut g = Graph::new();
//! let x = g.placeholder("x", DType::F32, [3]);
//! let y = g.neg(x)?;
//! let exe = Executable::compile(&g, &[y], Arc::new(NegOnly), CompileOptions::default())?;
//! let mut state = exe.new_state();
//! let out = exe.run(&[("x", Tensor::from_vec(vec![1f32, -2.0, 3.0], &[3])?)], &mut state)?;
//! assert_eq!(out[0].to_vec::<f32>()?, vec![-1.0, 2.0, -3.0]);
//! # Ok::<(), stitch_core::Error>(())
//! ```

#![deny(unsafe_op_in_unsafe_fn)]

pub mod cache;
pub mod dtype;
pub mod error;
pub mod exec;
pub mod graph;
pub mod npy;
pub mod ops;
pub mod passes;
pub mod profile;
pub mod quant;
pub mod shape;
pub mod tensor;

pub use half;
pub use smallvec;

pub use dtype::{Bool8, DType, Element};
pub use error::{Error, Result};
pub use exec::{Backend, CompileOptions, CompileReport, Executable, Outputs, Plan, Prepared, State};
pub use graph::{Graph, Node, NodeId, TensorType, Value, VarId, Variable};
pub use ops::Op;
pub use quant::QuantFormat;
pub use shape::{Dim, Shape};
pub use tensor::{Buffer, BufferPool, DeviceMemory, Dims, Strides, Tensor};
