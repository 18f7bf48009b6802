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
    // x and w are only read by the matmul, so they are fed to the CPU directly;
    // its [4, 16] result is copied to the device.
    assert_eq!(p.copies, 1, "{p:?}");
    assert_eq!(p.copy_bytes, 4 * 16 * 4, "{p:?}");
    let copies: Vec<_> = plan
        .steps
        .iter()
        .filter(|&&i| matches!(plan.graph.nodes()[i].op, Op::Copy { .. }))
        .collect();
    assert_eq!(copies.len(), 1);
    // The matmul runs on the CPU (backend 1); everything else on the device.
    for &i in &plan.steps {
        let n = &plan.graph.nodes()[i];
        match &n.op {
            Op::MatMul { .. } => assert_eq!(plan.devices[i], 1, "{}", n.name),
            Op::Copy { to } => assert_eq!(plan.devices[i], *to),
            Op::Placeholder { name } => assert_eq!(plan.devices[i], if name == "b" { 0 } else { 1 }, "{name}"),
            _ => assert_eq!(plan.devices[i], 0, "{} ({})", n.name, n.op.kind()),
        }
    }
    // One run: b is uploaded as an input, the product copied up, and the output
    // downloaded for the caller.
    assert_eq!(dev.transfers(), (2, 1));
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

#[test]
fn variables_live_on_the_device_and_slice_update_writes_in_place() {
    let mut r = common::rng(21);
    let init = common::random(&mut r, DType::F32, &[6, 4]);
    let w = common::random(&mut r, DType::F32, &[4, 4]);
    let build = || {
        let mut g = Graph::new();
        let cache = g.variable("cache", init.clone());
        let row = g.placeholder("row", DType::F32, [1, 4]);
        let start = g.placeholder("start", DType::I64, [2]);
        let wc = g.constant(w.clone());
        let proj = g.matmul(row, wc).unwrap();
        g.slice_update(cache, proj, start).unwrap();
        let all = g.read(cache).unwrap();
        let y = g.tanh(all).unwrap();
        (g, y, cache)
    };
    let (g, y, cache) = build();
    let dev = Arc::new(DecliningBackend::new(["tanh"]));
    let backends: Vec<Arc<dyn Backend>> = vec![dev.clone(), Arc::new(CpuBackend::new())];
    let exe = Executable::compile_placed(&g, &[y], backends, CompileOptions::default()).unwrap();
    let cpu = Executable::compile(&g, &[y], Arc::new(CpuBackend::new()), CompileOptions::default()).unwrap();
    let (mut s_dev, mut s_cpu) = (exe.new_state(), cpu.new_state());
    assert!(
        s_dev.get(cache).device_memory().is_some(),
        "the variable lives on the device"
    );
    let mem_before = s_dev.get(cache).buffer().as_ptr();
    let mut uploads = Vec::new();
    for pos in 0..6i64 {
        let row = common::random(&mut r, DType::F32, &[1, 4]);
        let start = Tensor::from_vec(vec![pos, 0], &[2]).unwrap();
        let ins = [("row", row), ("start", start)];
        let a = exe.run(&ins, &mut s_dev).unwrap();
        let b = cpu.run(&ins, &mut s_cpu).unwrap();
        assert_eq!(
            a[0].to_vec::<f32>().unwrap(),
            b[0].to_vec::<f32>().unwrap(),
            "step {pos}"
        );
        uploads.push(dev.transfers().0);
    }
    assert_eq!(
        s_dev.get(cache).buffer().as_ptr(),
        mem_before,
        "the cache was updated in place"
    );
    // Per run: the row input goes up, the read cache comes down for tanh on the
    // CPU; the constant w was uploaded once, with the first plan.
    let per_run: Vec<usize> = uploads.windows(2).map(|w| w[1] - w[0]).collect();
    assert!(per_run.iter().all(|&u| u == per_run[0]), "{uploads:?}");
    // Beyond that, two uploads happened once: the cache (new_state) and the constant w.
    assert_eq!(uploads[0] - per_run[0], 2, "{uploads:?}");
}
