//! The op coverage table (`stitch ops`), from which docs/OPS.md is generated:
//! for every op, how each backend runs it — a kernel of its own, a fused kernel
//! for a composite op, or a decomposition into other ops.

use std::fmt::Write;

use stitch_core::ops::{
    ArgReduceOp, BinaryOp, ConvAttrs, PadMode, PoolAttrs, ReduceOp, ScatterReduction, SdpaAttrs, UnaryOp,
};
use stitch_core::{Backend, DType, Node, Op};

/// One instance of every op (attributes do not matter for coverage), with its family.
pub fn catalog() -> Vec<(&'static str, Op)> {
    let mut v: Vec<(&'static str, Op)> = Vec::new();
    for u in UnaryOp::ALL {
        v.push(("elementwise", Op::Unary(u)));
    }
    for b in BinaryOp::ALL {
        v.push(("elementwise", Op::Binary(b)));
    }
    v.push(("elementwise", Op::Where));
    v.push(("elementwise", Op::Cast(DType::F32)));
    v.push(("elementwise", Op::Clamp { min: None, max: None }));
    for r in ReduceOp::ALL {
        v.push((
            "reduction",
            Op::Reduce {
                op: r,
                axes: vec![],
                keepdims: false,
            },
        ));
    }
    for a in [ArgReduceOp::ArgMax, ArgReduceOp::ArgMin] {
        v.push((
            "reduction",
            Op::ArgReduce {
                op: a,
                axis: 0,
                keepdims: false,
                select_last_index: false,
            },
        ));
    }
    v.push((
        "reduction",
        Op::CumSum {
            axis: 0,
            exclusive: false,
            reverse: false,
        },
    ));
    v.push((
        "reduction",
        Op::TopK {
            k: 1,
            axis: 0,
            largest: true,
            sorted: true,
        },
    ));
    v.push(("normalization", Op::Softmax { axis: -1 }));
    v.push(("normalization", Op::LogSoftmax { axis: -1 }));
    v.push((
        "normalization",
        Op::LayerNorm {
            axis: -1,
            epsilon: 1e-5,
        },
    ));
    v.push((
        "normalization",
        Op::RmsNorm {
            axis: -1,
            epsilon: 1e-5,
        },
    ));
    v.push((
        "linalg",
        Op::MatMul {
            transpose_a: false,
            transpose_b: false,
        },
    ));
    v.push((
        "linalg",
        Op::Gemm {
            alpha: 1.0,
            beta: 1.0,
            transpose_a: false,
            transpose_b: false,
            activation: None,
        },
    ));
    v.push(("layout", Op::Reshape { shape: vec![] }));
    v.push(("layout", Op::Transpose { perm: vec![] }));
    v.push(("layout", Op::Expand { shape: vec![] }));
    v.push(("layout", Op::Squeeze { axes: vec![] }));
    v.push(("layout", Op::Unsqueeze { axes: vec![] }));
    v.push((
        "layout",
        Op::Slice {
            starts: vec![],
            ends: vec![],
            axes: vec![],
            steps: vec![],
        },
    ));
    v.push(("layout", Op::Concat { axis: 0 }));
    v.push(("layout", Op::Split { axis: 0, sizes: vec![] }));
    v.push(("layout", Op::Tile { repeats: vec![] }));
    v.push((
        "layout",
        Op::Pad {
            pads: vec![],
            mode: PadMode::Constant,
            value: 0.0,
        },
    ));
    v.push(("indexing", Op::Gather { axis: 0 }));
    v.push(("indexing", Op::GatherElements { axis: 0 }));
    v.push((
        "indexing",
        Op::ScatterElements {
            axis: 0,
            reduction: ScatterReduction::None,
        },
    ));
    v.push((
        "indexing",
        Op::OneHot {
            depth: 1,
            axis: -1,
            dtype: DType::F32,
            on_value: 1.0,
            off_value: 0.0,
        },
    ));
    v.push((
        "indexing",
        Op::Range {
            start: 0.0,
            limit: 1.0,
            delta: 1.0,
            dtype: DType::I64,
        },
    ));
    v.push(("conv", Op::Conv(ConvAttrs::new(1))));
    v.push(("conv", Op::Conv(ConvAttrs::new(2))));
    v.push(("conv", Op::MaxPool(PoolAttrs::new(&[2]))));
    v.push(("conv", Op::AvgPool(PoolAttrs::new(&[2]))));
    v.push(("attention", Op::Sdpa(SdpaAttrs::default())));
    v.push((
        "quant",
        Op::Dequantize {
            format: stitch_core::QuantFormat::Q4_0,
        },
    ));
    v.push((
        "quant",
        Op::QuantMatMul {
            format: stitch_core::QuantFormat::Q4_0,
        },
    ));
    v.push(("state", Op::Placeholder { name: String::new() }));
    v.push(("state", Op::ReadVariable(stitch_core::VarId(0))));
    v.push(("state", Op::Assign(stitch_core::VarId(0))));
    v.push(("state", Op::SliceUpdate(stitch_core::VarId(0))));
    v.push(("state", Op::Copy { to: 0 }));
    v
}

/// How `backend` runs `op`.
pub fn coverage(backend: &dyn Backend, op: &Op) -> &'static str {
    if op.is_executor_op() {
        return "executor";
    }
    let node = Node {
        name: String::new(),
        op: op.clone(),
        inputs: vec![],
        outputs: vec![],
    };
    match (backend.supports(&node), op.is_composite()) {
        (true, true) => "fused kernel",
        (true, false) => "kernel",
        (false, true) => "decomposed",
        (false, false) => "missing",
    }
}

/// The Markdown table of docs/OPS.md.
pub fn markdown(backends: &[&dyn Backend]) -> String {
    let mut s = String::new();
    let _ = writeln!(s, "# Op coverage\n");
    let _ = writeln!(
        s,
        "Generated by `cargo run -p stitch-cli -- ops --markdown > docs/OPS.md`; do not edit by hand.\n"
    );
    let _ = writeln!(
        s,
        "- **kernel**: the backend has a kernel for this primitive op.\n- **fused kernel**: a composite op the backend runs in one kernel.\n- **decomposed**: a composite op the compiler rewrites into primitive ops for this backend.\n- **executor**: sources and state, handled by the executor itself.\n- **CPU fallback**: no kernel on this backend; placement runs the op on the CPU with counted copies.\n"
    );
    let mut header = "| family | op |".to_string();
    let mut rule = "|---|---|".to_string();
    for b in backends {
        let _ = write!(header, " {} |", b.name());
        rule.push_str("---|");
    }
    let _ = writeln!(s, "{header}\n{rule}");
    let mut seen = std::collections::HashSet::new();
    for (family, op) in catalog() {
        if !seen.insert(op.kind()) {
            continue;
        }
        let _ = write!(s, "| {family} | `{}` |", op.kind());
        for (i, b) in backends.iter().enumerate() {
            let c = match coverage(*b, &op) {
                // Later backends run with the first (the CPU) as their fallback.
                "missing" if i > 0 => "CPU fallback",
                c => c,
            };
            let _ = write!(s, " {c} |");
        }
        s.push('\n');
    }
    let _ = writeln!(
        s,
        "\n## ONNX conformance (CPU)\n\nThe ONNX backend node tests of onnx 1.22.0, by the op type of each case's node \
(`scripts/onnx-conformance.sh` regenerates `crates/stitch-onnx/conformance-summary.md`, which this section includes).\n"
    );
    s.push_str(include_str!("../../stitch-onnx/conformance-summary.md"));
    s
}
