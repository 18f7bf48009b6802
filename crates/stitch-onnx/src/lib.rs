//! # stitch-onnx
//!
//! Imports ONNX models (default domain, opsets 7 to 27) into a stitch [`Graph`].
//!
//! - The protobuf schema is ONNX's own `onnx.proto` (Apache-2.0, in `proto/`),
//!   compiled once to Rust with prost; the generated code is `src/onnx.rs`
//!   (regenerate with a throwaway program calling `protox::compile(["proto/onnx.proto"], ["proto"])`
//!   and `prost_build::Config::compile_fds` from prost-build 0.13 / protox 0.7; no protoc needed).
//! - Initializers (inline or in external data files) and `Constant` nodes become
//!   constants; named dynamic dimensions (`dim_param`) become symbolic dims.
//! - ONNX ops map onto stitch ops; composites without a stitch op are decomposed
//!   here. Nodes whose inputs are all constants are evaluated at import time, so
//!   shape arithmetic (`Shape → Gather → Concat → Reshape`) resolves to constants.
//! - `If` with a constant condition is inlined. `If` with a run-time condition,
//!   `Loop` and `Scan` run on the host: such a model becomes a program of
//!   straight-line segments, each compiled per concrete input shapes (see
//!   `program.rs` and [`Model::compile`]).
//! - A model with ops stitch cannot run fails before anything runs, with one
//!   error listing every unsupported op type, its node names and the opset.

#[allow(clippy::all, missing_docs)]
pub mod onnx;

pub mod conformance;
pub mod fetch;
mod import;
mod program;

pub use import::{
    declared_inputs, declared_outputs, dtype_from_onnx, tensor_from_proto, CompiledModel, ImportOptions, Model,
    SUPPORTED_OPS,
};

use std::fmt;

/// Errors of the importer.
#[derive(Debug)]
pub enum OnnxError {
    /// The file is not a valid ONNX protobuf, or a field is out of range.
    Parse(String),
    /// The model uses ops stitch cannot run (every one listed).
    Unsupported(String),
    /// A node could not be imported.
    Node {
        node: String,
        op_type: String,
        message: String,
    },
    /// Reading a file failed.
    Io(String),
    /// An error from stitch core (compile or run).
    Core(stitch_core::Error),
}

impl fmt::Display for OnnxError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            OnnxError::Parse(m) => write!(f, "invalid ONNX model: {m}"),
            OnnxError::Unsupported(m) => write!(f, "{m}"),
            OnnxError::Node { node, op_type, message } => {
                write!(f, "ONNX node '{node}' ({op_type}): {message}")
            }
            OnnxError::Io(m) => write!(f, "{m}"),
            OnnxError::Core(e) => write!(f, "{e}"),
        }
    }
}

impl std::error::Error for OnnxError {}

impl From<stitch_core::Error> for OnnxError {
    fn from(e: stitch_core::Error) -> Self {
        OnnxError::Core(e)
    }
}

/// Result with [`OnnxError`].
pub type Result<T, E = OnnxError> = std::result::Result<T, E>;

/// Decodes an ONNX `ModelProto` from bytes.
pub fn parse_model(bytes: &[u8]) -> Result<onnx::ModelProto> {
    use prost::Message;
    onnx::ModelProto::decode(bytes).map_err(|e| OnnxError::Parse(format!("protobuf decode failed: {e}")))
}

/// Decodes an ONNX `TensorProto` (as in the conformance suite's `.pb` files).
pub fn parse_tensor(bytes: &[u8]) -> Result<onnx::TensorProto> {
    use prost::Message;
    onnx::TensorProto::decode(bytes).map_err(|e| OnnxError::Parse(format!("TensorProto decode failed: {e}")))
}
