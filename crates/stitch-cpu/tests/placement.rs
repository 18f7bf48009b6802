//! Placement with fallback: a backend that declines chosen ops sends them to the
//! CPU, with explicit, counted copy steps, and results equal a CPU-only run.

mod common;

use std::sync::Arc;

use stitch_core::{Backend, CompileOptions, DType, Error, Executable, Graph, Op, Tensor, Value};
use stitch_cpu::testing::DecliningBackend;
use stitch_cpu::CpuBackend;

/// y = tanh(x @ w) * sigmoid(x @ w) + b, a matmul feeding an elementwise chain.
fn graph() -> (Graph, Value) {
    let mut g = Graph::new();
    let x = g.placeholder("x", DType::F32, [4, 8]);
    let w = g.placeholder("w", DType::F32, [8, 16]);
    let b = g.placeholder("b", DType::F32, [16]);
    let h = g.matmul(x, w).unwrap();
    let t = g.tanh(h).unwrap();
    let s = g.sigmoid(h).unwrap();
    let m = g.mul(t, s).unwrap();
    let y = g.add(m, b).unwrap();
    (g, y)
}

fn inputs(seed: u64) -> Vec<(&'static str, Tensor)> {
    let mut r = common::rng(seed);
    vec![
        ("x", common::random(&mut r, DType::F32, &[4, 8])),
        ("w", common::random(&mut r, DType::F32, &[8, 16])),
        ("b", common::random(&mut r, DType::F32, &[16])),
    ]
}

fn run(exe: &Executable, ins: &[(&'static str, Tensor)]) -> Vec<f32> {
    exe.run(ins, &mut exe.new_state()).unwrap()[0].to_vec::<f32>().unwrap()
}

#[test]
fn declined_op_falls_back_to_cpu_with_counted_copies() {
    let (g, y) = graph();
    let ins = inputs(7);
    let cpu_only = Executable::compile(&g, &[y], Arc::new(CpuBackend::new()), CompileOptions::default()).unwrap();
    let expected = run(&cpu_only, &ins);

    let dev = Arc::new(DecliningBackend::new(["matmul"]));
    let backends: Vec<Arc<dyn Backend>> = vec![dev.clone(), Arc::new(CpuBackend::new())];
    let exe = Executable::compile_placed(&g, &[y], backends, CompileOptions::default()).unwrap();
    let got = run(&exe, &ins);
    assert_eq!(got, expected, "fallback must not change results");

    let types: Vec<_> = ins
        .iter()
        .map(|(_, t)| stitch_core::passes::specialize::type_of(t))
        .collect();
    let plan = exe.plan_for(&types).unwrap();
    let p = &plan.report.placement;
    assert_eq!(p.fallback_nodes, 1, "{p:?}");
    // x and w go to the CPU for the matmul; its [4, 16] result comes back.
    assert_eq!(p.copies, 3, "{p:?}");
    assert_eq!(p.copy_bytes, (4 * 8 + 8 * 16 + 4 * 16) * 4, "{p:?}");
    let copies: Vec<_> = plan
        .steps
        .iter()
        .filter(|&&i| matches!(plan.graph.nodes()[i].op, Op::Copy { .. }))
        .collect();
    assert_eq!(copies.len(), 3);
    // The matmul runs on the CPU (backend 1); everything else on the device.
    for &i in &plan.steps {
        let n = &plan.graph.nodes()[i];
        match &n.op {
            Op::MatMul { .. } => assert_eq!(plan.devices[i], 1, "{}", n.name),
            Op::Copy { to } => assert_eq!(plan.devices[i], *to),
            Op::Placeholder { .. } => assert_eq!(plan.devices[i], 0),
            _ => assert_eq!(plan.devices[i], 0, "{} ({})", n.name, n.op.kind()),
        }
    }
    // One run: x and w are downloaded for the CPU, the product uploaded back, and
    // the output downloaded for the caller.
    assert_eq!(dev.transfers(), (1, 3));
}

#[test]
fn declined_elementwise_op_is_kept_out_of_fused_regions() {
    let (g, y) = graph();
    let ins = inputs(11);
    let cpu_only = Executable::compile(&g, &[y], Arc::new(CpuBackend::new()), CompileOptions::default()).unwrap();
    let expected = run(&cpu_only, &ins);
    let backends: Vec<Arc<dyn Backend>> = vec![Arc::new(DecliningBackend::new(["tanh"])), Arc::new(CpuBackend::new())];
    let exe = Executable::compile_placed(&g, &[y], backends, CompileOptions::default()).unwrap();
    let got = run(&exe, &ins);
    for (a, b) in got.iter().zip(&expected) {
        assert!((a - b).abs() <= 1e-6 * b.abs().max(1.0), "{a} vs {b}");
    }
    let types: Vec<_> = ins
        .iter()
        .map(|(_, t)| stitch_core::passes::specialize::type_of(t))
        .collect();
    let plan = exe.plan_for(&types).unwrap();
    let tanh: Vec<_> = plan
        .steps
        .iter()
        .filter(|&&i| plan.graph.nodes()[i].op.kind() == "tanh")
        .collect();
    assert_eq!(tanh.len(), 1, "tanh stays a node of its own");
    assert_eq!(plan.devices[*tanh[0]], 1, "on the CPU");
    assert_eq!(plan.report.placement.fallback_nodes, 1);
    assert_eq!(plan.report.placement.copies, 2, "{:?}", plan.report.placement);
    assert!(plan.report.fusion.regions >= 1, "the rest still fuses");
}

#[test]
fn an_op_no_backend_runs_is_an_error_naming_it() {
    let (g, y) = graph();
    let backends: Vec<Arc<dyn Backend>> = vec![Arc::new(DecliningBackend::new(["matmul"]))];
    let err = Executable::compile_placed(&g, &[y], backends, CompileOptions::default()).unwrap_err();
    assert!(matches!(err, Error::Unsupported { .. }), "{err}");
    let msg = err.to_string();
    assert!(msg.contains("matmul") && msg.contains("test-device"), "{msg}");
}

#[test]
fn without_fallbacks_the_plan_has_no_copies() {
    let (g, y) = graph();
    let exe = Executable::compile(&g, &[y], Arc::new(CpuBackend::new()), CompileOptions::default()).unwrap();
    let ins = inputs(3);
    let types: Vec<_> = ins
        .iter()
        .map(|(_, t)| stitch_core::passes::specialize::type_of(t))
        .collect();
    let plan = exe.plan_for(&types).unwrap();
    assert_eq!(plan.report.placement, Default::default());
    assert!(plan.devices.iter().all(|&d| d == 0));
}
