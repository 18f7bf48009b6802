//! Op definitions: attributes, type/shape inference and decompositions.
//!
//! Every op is defined once here, in one file per family:
//! - [`elementwise`]: unary, binary (numpy broadcasting), where, cast, clamp;
//! - [`reduce`]: sum/mean/max/min/prod over axes, argmax/argmin, cumsum, topk;
//! - [`normalization`]: softmax, log_softmax, layer_norm, rms_norm (composites);
//! - [`linalg`]: matmul, gemm;
//! - [`layout`]: reshape, transpose, expand, squeeze, unsqueeze, slice, concat, split, tile, pad;
//! - [`indexing`]: gather, gather_elements, scatter_elements, one_hot, range;
//! - [`conv`]: conv1d/2d, max and average pooling;
//! - [`attention`]: scaled dot-product attention (composite);
//! - [`quant`]: dequantize and quant_matmul on packed block-quantized weights;
//! - [`state`]: placeholders, constants, variables (read, assign, slice_update).
//!
//! Inference here is written over [`Dim`](crate::Dim) so it serves both the
//! symbolic graph and the concrete, per-run specialisation. Kernels live in the
//! backends, never here.

pub mod attention;
pub mod conv;
pub mod elementwise;
pub mod fused;
pub mod indexing;
pub mod layout;
pub mod linalg;
pub mod normalization;
pub mod quant;
pub mod reduce;
pub mod state;

use crate::dtype::DType;
use crate::graph::{Graph, TensorType, Value, VarId};
use crate::quant::QuantFormat;
use crate::tensor::Tensor;
use crate::Result;

pub use attention::SdpaAttrs;
pub use conv::{ConvAttrs, PoolAttrs};
pub use elementwise::{BinaryOp, UnaryOp};
pub use indexing::ScatterReduction;
pub use layout::PadMode;
pub use reduce::{ArgReduceOp, ReduceOp};

/// An operation: what a graph node computes.
///
/// Axis attributes are `i64` and may be negative (counted from the end), as in ONNX.
#[derive(Debug, Clone)]
pub enum Op {
    // ---- sources and state ----
    /// A named input fed at run time.
    Placeholder { name: String },
    /// A constant tensor (weights).
    Constant(Tensor),
    /// Reads a variable's current value.
    ReadVariable(VarId),
    /// Replaces a variable's value. Inputs: `[value]`. No outputs.
    Assign(VarId),
    /// Writes `update` into the variable at `starts` (an i64 vector with one entry
    /// per axis), in place. Inputs: `[update, starts]`. No outputs.
    SliceUpdate(VarId),

    // ---- elementwise ----
    /// Elementwise unary op.
    Unary(UnaryOp),
    /// Elementwise binary op with numpy broadcasting; both inputs share a dtype.
    Binary(BinaryOp),
    /// `where(cond, a, b)` with broadcasting; `cond` is bool.
    Where,
    /// Convert to another dtype (see DESIGN-NOTES for out-of-range rules).
    Cast(DType),
    /// Clamp into `[min, max]`; either bound may be absent. NaN stays NaN.
    Clamp { min: Option<f64>, max: Option<f64> },

    // ---- reductions ----
    /// Reduce over `axes` (empty = all axes).
    Reduce {
        op: ReduceOp,
        axes: Vec<i64>,
        keepdims: bool,
    },
    /// Index of the max/min along `axis` (i64 output); first occurrence unless `select_last_index`.
    ArgReduce {
        op: ArgReduceOp,
        axis: i64,
        keepdims: bool,
        select_last_index: bool,
    },
    /// Cumulative sum along `axis`.
    CumSum { axis: i64, exclusive: bool, reverse: bool },
    /// The `k` largest (or smallest) along `axis`: outputs `[values, indices(i64)]`.
    TopK {
        k: usize,
        axis: i64,
        largest: bool,
        sorted: bool,
    },

    // ---- normalisation (composites) ----
    /// Softmax along `axis`.
    Softmax { axis: i64 },
    /// Log-softmax along `axis`.
    LogSoftmax { axis: i64 },
    /// Layer normalisation over axes `axis..rank`. Inputs `[x, scale, bias?]`.
    LayerNorm { axis: i64, epsilon: f64 },
    /// RMS normalisation over axes `axis..rank`. Inputs `[x, scale]`.
    RmsNorm { axis: i64, epsilon: f64 },

    // ---- linear algebra ----
    /// Batched matmul with numpy broadcasting of batch dims; either operand may be
    /// transposed in its last two axes. 1-D operands follow numpy rules.
    MatMul { transpose_a: bool, transpose_b: bool },
    /// `act(alpha * op(A) @ op(B) + beta * C)` on 2-D operands (C broadcast).
    /// Inputs `[a, b, c?]`. `activation` (an epilogue) is `None` or one of
    /// [`linalg::EPILOGUE_ACTIVATIONS`].
    Gemm {
        alpha: f64,
        beta: f64,
        transpose_a: bool,
        transpose_b: bool,
        activation: Option<UnaryOp>,
    },

    // ---- layout ----
    /// Reshape; `0` copies the input dim (ONNX), `-1` is inferred.
    Reshape { shape: Vec<i64> },
    /// Permute axes; empty `perm` reverses them (ONNX default).
    Transpose { perm: Vec<usize> },
    /// Broadcast to `shape` (bidirectional, as ONNX Expand).
    Expand { shape: Vec<usize> },
    /// Remove size-1 axes (`axes` empty = all size-1 axes).
    Squeeze { axes: Vec<i64> },
    /// Insert size-1 axes at `axes` (positions in the output).
    Unsqueeze { axes: Vec<i64> },
    /// Slice with ONNX semantics (negative indices, clamping, negative steps).
    Slice {
        starts: Vec<i64>,
        ends: Vec<i64>,
        axes: Vec<i64>,
        steps: Vec<i64>,
    },
    /// Concatenate along `axis`.
    Concat { axis: i64 },
    /// Split along `axis` into pieces of `sizes` (one output each).
    Split { axis: i64, sizes: Vec<usize> },
    /// Repeat the tensor `repeats[i]` times along axis i.
    Tile { repeats: Vec<usize> },
    /// Pad with `pads = [begin_0, .., begin_n, end_0, .., end_n]` (negative crops).
    Pad { pads: Vec<i64>, mode: PadMode, value: f64 },

    // ---- indexing ----
    /// `data.take(indices, axis)`; negative indices count from the end. Inputs `[data, indices]`.
    Gather { axis: i64 },
    /// ONNX GatherElements. Inputs `[data, indices]`.
    GatherElements { axis: i64 },
    /// ONNX ScatterElements. Inputs `[data, indices, updates]`.
    ScatterElements { axis: i64, reduction: ScatterReduction },
    /// One-hot encode integer indices: new axis of size `depth` at `axis`.
    OneHot {
        depth: usize,
        axis: i64,
        dtype: DType,
        on_value: f64,
        off_value: f64,
    },
    /// `start, start+delta, ...` below `limit` (ONNX Range). No inputs.
    Range {
        start: f64,
        limit: f64,
        delta: f64,
        dtype: DType,
    },

    // ---- convolution and pooling ----
    /// 1-D or 2-D convolution (NCW / NCHW). Inputs `[x, weight, bias?]`.
    Conv(ConvAttrs),
    /// Max pooling.
    MaxPool(PoolAttrs),
    /// Average pooling.
    AvgPool(PoolAttrs),

    // ---- fusion ----
    /// A fused region built by the compiler (see [`fused::Region`]).
    Fused(std::sync::Arc<fused::Region>),

    // ---- attention (composite) ----
    /// Scaled dot-product attention. Inputs `[q, k, v, mask?]`.
    Sdpa(SdpaAttrs),
    /// Move a value to backend `to` of the executable (inserted by placement, run
    /// by the executor; see [`crate::passes::place`]).
    Copy { to: usize },
    /// Expand a packed block-quantized weight to f32 (see [`quant`]).
    Dequantize { format: QuantFormat },
    /// `x @ dequantize(w)^T` on a packed weight (composite; see [`quant`]).
    QuantMatMul { format: QuantFormat },
}

impl Op {
    /// Short lowercase name of the op kind, e.g. `matmul`, `add`.
    pub fn kind(&self) -> String {
        match self {
            Op::Placeholder { .. } => "placeholder".into(),
            Op::Constant(_) => "constant".into(),
            Op::ReadVariable(_) => "read_variable".into(),
            Op::Assign(_) => "assign".into(),
            Op::SliceUpdate(_) => "slice_update".into(),
            Op::Unary(u) => u.name().into(),
            Op::Binary(b) => b.name().into(),
            Op::Where => "where".into(),
            Op::Cast(_) => "cast".into(),
            Op::Clamp { .. } => "clamp".into(),
            Op::Reduce { op, .. } => op.name().into(),
            Op::ArgReduce { op, .. } => op.name().into(),
            Op::CumSum { .. } => "cumsum".into(),
            Op::TopK { .. } => "topk".into(),
            Op::Softmax { .. } => "softmax".into(),
            Op::LogSoftmax { .. } => "log_softmax".into(),
            Op::LayerNorm { .. } => "layer_norm".into(),
            Op::RmsNorm { .. } => "rms_norm".into(),
            Op::MatMul { .. } => "matmul".into(),
            Op::Gemm { .. } => "gemm".into(),
            Op::Reshape { .. } => "reshape".into(),
            Op::Transpose { .. } => "transpose".into(),
            Op::Expand { .. } => "expand".into(),
            Op::Squeeze { .. } => "squeeze".into(),
            Op::Unsqueeze { .. } => "unsqueeze".into(),
            Op::Slice { .. } => "slice".into(),
            Op::Concat { .. } => "concat".into(),
            Op::Split { .. } => "split".into(),
            Op::Tile { .. } => "tile".into(),
            Op::Pad { .. } => "pad".into(),
            Op::Gather { .. } => "gather".into(),
            Op::GatherElements { .. } => "gather_elements".into(),
            Op::ScatterElements { .. } => "scatter_elements".into(),
            Op::OneHot { .. } => "one_hot".into(),
            Op::Range { .. } => "range".into(),
            Op::Conv(a) => format!("conv{}d", a.spatial_rank()),
            Op::MaxPool(_) => "max_pool".into(),
            Op::AvgPool(_) => "avg_pool".into(),
            Op::Sdpa(_) => "sdpa".into(),
            Op::Fused(_) => "fused".into(),
            Op::Copy { .. } => "copy".into(),
            Op::Dequantize { .. } => "dequantize".into(),
            Op::QuantMatMul { .. } => "quant_matmul".into(),
        }
    }

    /// True for ops with effects on state (never removed, run in graph order).
    pub fn has_side_effects(&self) -> bool {
        matches!(self, Op::Assign(_) | Op::SliceUpdate(_))
    }

    /// True for ops the executor runs itself rather than a backend: sources,
    /// state and copies between backends.
    pub fn is_executor_op(&self) -> bool {
        matches!(
            self,
            Op::Placeholder { .. }
                | Op::Constant(_)
                | Op::ReadVariable(_)
                | Op::Assign(_)
                | Op::SliceUpdate(_)
                | Op::Copy { .. }
        )
    }

    /// True for composite ops, which have a [`Op::decompose`] into primitives.
    pub fn is_composite(&self) -> bool {
        matches!(
            self,
            Op::Softmax { .. }
                | Op::LogSoftmax { .. }
                | Op::LayerNorm { .. }
                | Op::RmsNorm { .. }
                | Op::Gemm { .. }
                | Op::Sdpa(_)
                | Op::Unary(UnaryOp::Gelu | UnaryOp::GeluTanh | UnaryOp::Silu | UnaryOp::Sigmoid | UnaryOp::Rsqrt)
                | Op::Clamp { .. }
                | Op::QuantMatMul { .. }
        )
    }

    /// Output types for the given input types, or a message naming the offending
    /// shapes/dtypes (the graph wraps it with the node's name and op).
    ///
    /// `graph` gives access to variable types for state ops.
    pub fn infer(&self, inputs: &[TensorType], graph: &Graph) -> Result<Vec<TensorType>, String> {
        match self {
            Op::Placeholder { .. } | Op::Constant(_) | Op::ReadVariable(_) | Op::Assign(_) | Op::SliceUpdate(_) => {
                state::infer(self, inputs, graph)
            }
            Op::Unary(_) | Op::Binary(_) | Op::Where | Op::Cast(_) | Op::Clamp { .. } => {
                elementwise::infer(self, inputs)
            }
            Op::Reduce { .. } | Op::ArgReduce { .. } | Op::CumSum { .. } | Op::TopK { .. } => {
                reduce::infer(self, inputs)
            }
            Op::Softmax { .. } | Op::LogSoftmax { .. } | Op::LayerNorm { .. } | Op::RmsNorm { .. } => {
                normalization::infer(self, inputs)
            }
            Op::MatMul { .. } | Op::Gemm { .. } => linalg::infer(self, inputs),
            Op::Reshape { .. }
            | Op::Transpose { .. }
            | Op::Expand { .. }
            | Op::Squeeze { .. }
            | Op::Unsqueeze { .. }
            | Op::Slice { .. }
            | Op::Concat { .. }
            | Op::Split { .. }
            | Op::Tile { .. }
            | Op::Pad { .. } => layout::infer(self, inputs),
            Op::Gather { .. }
            | Op::GatherElements { .. }
            | Op::ScatterElements { .. }
            | Op::OneHot { .. }
            | Op::Range { .. } => indexing::infer(self, inputs),
            Op::Conv(_) | Op::MaxPool(_) | Op::AvgPool(_) => conv::infer(self, inputs),
            Op::Sdpa(_) => attention::infer(self, inputs),
            Op::Fused(r) => r.infer(inputs),
            Op::Dequantize { .. } | Op::QuantMatMul { .. } => quant::infer(self, inputs),
            Op::Copy { .. } => {
                util::arity(inputs, 1, 1)?;
                Ok(vec![inputs[0].clone()])
            }
        }
    }

    /// For a composite op, emits its decomposition into simpler ops into `g`
    /// (whose input values are `inputs`) and returns the replacement outputs.
    /// `None` for primitive ops.
    pub fn decompose(&self, g: &mut Graph, inputs: &[Value]) -> Option<Result<Vec<Value>>> {
        match self {
            Op::Softmax { .. } | Op::LogSoftmax { .. } | Op::LayerNorm { .. } | Op::RmsNorm { .. } => {
                Some(normalization::decompose(self, g, inputs))
            }
            Op::Gemm { .. } => Some(linalg::decompose(self, g, inputs)),
            Op::Sdpa(a) => Some(attention::decompose(a, g, inputs)),
            Op::Unary(u @ (UnaryOp::Gelu | UnaryOp::GeluTanh | UnaryOp::Silu | UnaryOp::Sigmoid | UnaryOp::Rsqrt)) => {
                Some(elementwise::decompose_unary(*u, g, inputs))
            }
            Op::Clamp { min, max } => Some(elementwise::decompose_clamp(*min, *max, g, inputs)),
            Op::QuantMatMul { format } => Some(quant::decompose(*format, g, inputs)),
            _ => None,
        }
    }
}

/// Helpers shared by the inference functions.
pub(crate) mod util {
    use crate::graph::TensorType;
    use crate::shape::normalize_axis;

    /// Checks the number of inputs.
    pub fn arity(inputs: &[TensorType], min: usize, max: usize) -> Result<(), String> {
        if inputs.len() < min || inputs.len() > max {
            let want = if min == max {
                format!("{min}")
            } else {
                format!("{min} to {max}")
            };
            return Err(format!("expected {want} inputs, got {}", inputs.len()));
        }
        Ok(())
    }

    /// Normalises `axis` for a tensor of `rank`, with an error naming the shape.
    pub fn axis(axis: i64, t: &TensorType) -> Result<usize, String> {
        normalize_axis(axis, t.shape.rank()).ok_or_else(|| {
            format!(
                "axis {axis} is out of range for input of shape {} (rank {})",
                t.shape,
                t.shape.rank()
            )
        })
    }

    /// Requires all inputs to share one dtype.
    pub fn same_dtype(inputs: &[TensorType]) -> Result<(), String> {
        if let Some(first) = inputs.first() {
            if let Some(other) = inputs.iter().find(|t| t.dtype != first.dtype) {
                return Err(format!(
                    "inputs must share one dtype, got {} and {} (insert a cast)",
                    first, other
                ));
            }
        }
        Ok(())
    }

    /// Requires a floating-point dtype.
    pub fn float(t: &TensorType, what: &str) -> Result<(), String> {
        if !t.dtype.is_float() {
            return Err(format!("{what} must be a floating-point tensor, got {t}"));
        }
        Ok(())
    }
}
