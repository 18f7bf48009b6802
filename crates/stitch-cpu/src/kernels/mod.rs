//! CPU kernels, one file per op family (mirroring `stitch_core::ops`).
//!
//! Every kernel takes its inputs (possibly strided views) and the concrete
//! output types the compiler inferred, and returns new tensors (or views, for
//! layout ops). Kernels return `Error::Invalid` with a message; the backend
//! wraps it with the node's name.

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
pub(crate) mod scratch;
pub(crate) mod sgemm;
pub mod simd_math;

use stitch_core::ops::{Op, UnaryOp};
use stitch_core::{Error, Outputs, Result, Tensor, TensorType};

/// Elements per parallel task: small enough to spread work over threads, large
/// enough that scheduling costs vanish.
pub const PAR_CHUNK: usize = 1 << 14;

/// Concrete dims of an output type (the executor only runs concrete plans).
pub fn dims(t: &TensorType) -> Result<stitch_core::Dims> {
    t.shape
        .0
        .iter()
        .map(|d| d.known())
        .collect::<Option<stitch_core::Dims>>()
        .ok_or_else(|| Error::invalid(format!("output type {t} is not concrete")))
}

/// True for composite ops that have a fused CPU kernel.
pub fn has_fused(op: &Op) -> bool {
    matches!(
        op,
        Op::Softmax { .. }
            | Op::LogSoftmax { .. }
            | Op::LayerNorm { .. }
            | Op::RmsNorm { .. }
            | Op::Unary(UnaryOp::Gelu | UnaryOp::GeluTanh | UnaryOp::Silu | UnaryOp::Sigmoid | UnaryOp::Rsqrt)
            | Op::Clamp { .. }
            | Op::Gemm { .. }
            | Op::Sdpa(_)
            | Op::QuantMatMul { .. }
    )
}

/// Runs one op.
pub fn execute(op: &Op, inputs: &[Tensor], outputs: &[TensorType]) -> Result<Outputs> {
    let out = &outputs[0];
    let one = |t: Result<Tensor>| t.map(|t| Outputs::from_iter([t]));
    let many = |t: Result<Vec<Tensor>>| t.map(Outputs::from_vec);
    match op {
        Op::Unary(u) => one(elementwise::unary(*u, &inputs[0], out)),
        Op::Binary(b) => one(elementwise::binary(*b, &inputs[0], &inputs[1], out)),
        Op::Where => one(elementwise::where_(&inputs[0], &inputs[1], &inputs[2], out)),
        Op::Cast(to) => one(elementwise::cast(&inputs[0], *to)),
        Op::Clamp { min, max } => one(elementwise::clamp(&inputs[0], *min, *max)),

        Op::Reduce { op, axes, keepdims } => one(reduce::reduce(*op, &inputs[0], axes, *keepdims, out)),
        Op::ArgReduce {
            op,
            axis,
            keepdims,
            select_last_index,
        } => one(reduce::arg_reduce(
            *op,
            &inputs[0],
            *axis,
            *keepdims,
            *select_last_index,
            out,
        )),
        Op::CumSum {
            axis,
            exclusive,
            reverse,
        } => one(reduce::cumsum(&inputs[0], *axis, *exclusive, *reverse)),
        Op::TopK {
            k,
            axis,
            largest,
            sorted,
        } => many(reduce::topk(&inputs[0], *k, *axis, *largest, *sorted)),

        Op::Softmax { axis } => one(normalization::softmax(&inputs[0], *axis, false)),
        Op::LogSoftmax { axis } => one(normalization::softmax(&inputs[0], *axis, true)),
        Op::LayerNorm { axis, epsilon } => one(normalization::layer_norm(
            &inputs[0],
            &inputs[1],
            inputs.get(2),
            *axis,
            *epsilon,
        )),
        Op::RmsNorm { axis, epsilon } => one(normalization::rms_norm(&inputs[0], &inputs[1], *axis, *epsilon)),

        Op::MatMul {
            transpose_a,
            transpose_b,
        } => one(linalg::matmul(&inputs[0], &inputs[1], *transpose_a, *transpose_b, out)),
        Op::Gemm {
            alpha,
            beta,
            transpose_a,
            transpose_b,
            activation,
        } => one(linalg::gemm(
            &inputs[0],
            &inputs[1],
            inputs.get(2),
            *alpha,
            *beta,
            *transpose_a,
            *transpose_b,
            out,
        )
        .and_then(|y| linalg::activate(y, *activation, out))),

        Op::Reshape { .. } | Op::Squeeze { .. } | Op::Unsqueeze { .. } => one(layout::reshape(&inputs[0], out)),
        Op::Transpose { perm } => one(layout::transpose(&inputs[0], perm)),
        Op::Expand { .. } => one(layout::expand(&inputs[0], out)),
        Op::Slice {
            starts,
            ends,
            axes,
            steps,
        } => one(layout::slice(&inputs[0], starts, ends, axes, steps)),
        Op::Concat { axis } => one(layout::concat(inputs, *axis, out)),
        Op::Split { axis, sizes } => many(layout::split(&inputs[0], *axis, sizes)),
        Op::Tile { repeats } => one(layout::tile(&inputs[0], repeats, out)),
        Op::Pad { pads, mode, value } => one(layout::pad(&inputs[0], pads, *mode, *value, out)),

        Op::Gather { axis } => one(indexing::gather(&inputs[0], &inputs[1], *axis, out)),
        Op::GatherElements { axis } => one(indexing::gather_elements(&inputs[0], &inputs[1], *axis)),
        Op::ScatterElements { axis, reduction } => one(indexing::scatter_elements(
            &inputs[0], &inputs[1], &inputs[2], *axis, *reduction,
        )),
        Op::OneHot {
            depth,
            axis,
            dtype,
            on_value,
            off_value,
        } => one(indexing::one_hot(
            &inputs[0], *depth, *axis, *dtype, *on_value, *off_value, out,
        )),
        Op::Range {
            start, delta, dtype, ..
        } => one(indexing::range(*start, *delta, *dtype, out)),

        Op::Conv(a) => one(conv::conv(&inputs[0], &inputs[1], inputs.get(2), a, out)),
        Op::MaxPool(a) => one(conv::max_pool(&inputs[0], a, out)),
        Op::AvgPool(a) => one(conv::avg_pool(&inputs[0], a, out)),

        Op::Fused(region) => one(fused::fused(region, inputs, outputs)),
        Op::Sdpa(attrs) => one(attention::sdpa(
            &inputs[0],
            &inputs[1],
            &inputs[2],
            inputs.get(3),
            attrs,
            out,
        )),

        Op::Dequantize { format } => one(quant::dequantize(&inputs[0], *format, out)),
        Op::QuantMatMul { format } => one(quant::quant_matmul(&inputs[0], &inputs[1], *format, out)),
        Op::Placeholder { .. }
        | Op::Constant(_)
        | Op::ReadVariable(_)
        | Op::Assign(_)
        | Op::SliceUpdate(_)
        | Op::Copy { .. } => Err(Error::invalid(format!(
            "{} is not a CPU kernel (decomposed or run by the executor)",
            op.kind()
        ))),
    }
}
