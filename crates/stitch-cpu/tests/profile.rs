//! The profiler: one record per plan step per run, kinds and devices right, a
//! declined op shows up as a fallback with its two copies, and the Chrome trace
//! is valid JSON with one event per step per run.

mod common;

use std::sync::Arc;

use stitch_core::profile::{Profiler, StepKind};
use stitch_core::{Backend, CompileOptions, DType, Executable, Graph, Tensor, Value};
use stitch_cpu::testing::DecliningBackend;
use stitch_cpu::CpuBackend;

/// y = matmul(tanh(x), w) * 2 + b: the matmul sits between device ops, so
/// declining it costs a copy down and a copy up.
fn graph() -> (Graph, Value) {
    let mut g = Graph::new();
    let x = g.placeholder("x", DType::F32, [8, 32]);
    let w = g.placeholder("w", DType::F32, [32, 16]);
    let b = g.placeholder("b", DType::F32, [16]);
    let t = g.tanh(x).unwrap();
    let h = g.matmul(t, w).unwrap();
    let two = g.scalar(DType::F32, 2.0);
    let m = g.mul(h, two).unwrap();
    let y = g.add(m, b).unwrap();
    (g, y)
}

fn inputs(seed: u64) -> Vec<(&'static str, Tensor)> {
    let mut r = common::rng(seed);
    vec![
        ("x", common::random(&mut r, DType::F32, &[8, 32])),
        ("w", common::random(&mut r, DType::F32, &[32, 16])),
        ("b", common::random(&mut r, DType::F32, &[16])),
    ]
}

#[test]
fn fallback_appears_with_its_two_copies() {
    let (g, y) = graph();
    let ins = inputs(3);
    let dev = Arc::new(DecliningBackend::new(["matmul"]));
    let backends: Vec<Arc<dyn Backend>> = vec![dev, Arc::new(CpuBackend::new())];
    let exe = Executable::compile_placed(&g, &[y], backends, CompileOptions::default()).unwrap();
    let mut state = exe.new_state();
    let mut outs = Vec::new();
    exe.run_into(&ins, &mut state, &mut outs).unwrap();
    let plain = outs[0].to_vec::<f32>().unwrap();

    let mut p = Profiler::new();
    let runs = 3;
    for r in 0..runs {
        p.run(&exe, &ins, &mut state, &mut outs, format!("run {r}")).unwrap();
        assert_eq!(
            outs[0].to_vec::<f32>().unwrap(),
            plain,
            "profiling must not change results"
        );
    }
    let types: Vec<_> = ins
        .iter()
        .map(|(_, t)| stitch_core::passes::specialize::type_of(t))
        .collect();
    let plan = exe.plan_for(&types).unwrap();
    assert_eq!(p.runs.len(), runs);
    for run in &p.runs {
        assert_eq!(run.steps.len(), plan.steps.len(), "one record per plan step");
        for (k, s) in run.steps.iter().enumerate() {
            assert_eq!(s.step, k);
            assert_eq!(s.node, plan.graph.nodes()[plan.steps[k]].name);
            assert!(s.end_ns >= s.start_ns);
            if k > 0 {
                assert!(s.start_ns >= run.steps[k - 1].start_ns, "steps are in order");
            }
        }
        let fallbacks: Vec<_> = run.steps.iter().filter(|s| s.kind == StepKind::Fallback).collect();
        assert_eq!(fallbacks.len(), 1, "{:#?}", run.steps);
        assert_eq!(fallbacks[0].op, "matmul");
        assert_eq!(fallbacks[0].device, "cpu");
        assert_eq!(fallbacks[0].flops, Some(2 * 8 * 16 * 32));
        let down: Vec<_> = run
            .steps
            .iter()
            .filter(|s| s.kind == StepKind::CopyDeviceToHost)
            .collect();
        let up: Vec<_> = run
            .steps
            .iter()
            .filter(|s| s.kind == StepKind::CopyHostToDevice)
            .collect();
        assert_eq!(down.len(), 1, "tanh's result goes down to the CPU");
        assert_eq!(up.len(), 1, "the product comes back up");
        assert_eq!(down[0].bytes, 8 * 32 * 4);
        assert_eq!(up[0].bytes, 8 * 16 * 4);
        assert_eq!(down[0].device, "cpu");
        assert_eq!(up[0].device, "test-device");
        // Everything else ran on the device.
        for s in run
            .steps
            .iter()
            .filter(|s| matches!(s.kind, StepKind::Kernel | StepKind::Fused))
        {
            assert_eq!(s.device, "test-device", "{s:?}");
        }
    }
    let report = p.report();
    assert_eq!(report.transfers.len(), 3, "two copies and one fallback");
    let text = report.to_text(10);
    assert!(text.contains("Copies: 2"), "{text}");
    assert!(text.contains("fallbacks: 1"), "{text}");

    let trace: serde_json::Value = serde_json::from_str(&p.chrome_trace()).expect("the trace is valid JSON");
    let events = trace["traceEvents"].as_array().unwrap();
    let complete: Vec<_> = events.iter().filter(|e| e["ph"] == "X").collect();
    assert_eq!(
        complete.len(),
        runs * plan.steps.len(),
        "one event per plan step per run"
    );
    for r in 0..runs {
        let n = complete.iter().filter(|e| e["args"]["run"] == r).count();
        assert_eq!(n, plan.steps.len());
        assert!(complete
            .iter()
            .any(|e| e["args"]["label"] == format!("run {r}").as_str()));
    }
    assert_eq!(complete.iter().filter(|e| e["cat"] == "copy_h2d").count(), runs);
    assert_eq!(complete.iter().filter(|e| e["cat"] == "fallback").count(), runs);
}

#[test]
fn fused_regions_list_their_members() {
    let (g, y) = graph();
    let ins = inputs(4);
    let exe = Executable::compile(&g, &[y], Arc::new(CpuBackend::new()), CompileOptions::default()).unwrap();
    let mut state = exe.new_state();
    let mut outs = Vec::new();
    exe.run_into(&ins, &mut state, &mut outs).unwrap();
    let mut p = Profiler::new();
    p.run(&exe, &ins, &mut state, &mut outs, "run 0").unwrap();
    let fused: Vec<_> = p.runs[0].steps.iter().filter(|s| s.kind == StepKind::Fused).collect();
    assert!(!fused.is_empty(), "{:#?}", p.runs[0].steps);
    assert!(fused.iter().all(|s| s.members.len() >= 2 && s.device == "cpu"));
    assert!(p.runs[0]
        .steps
        .iter()
        .all(|s| !s.kind.is_copy() && s.kind != StepKind::Fallback));
}
