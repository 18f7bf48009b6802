//! ONNX on CUDA: the node conformance suite passes on the GPU every case the
//! CPU passes (tests/../../stitch-onnx/tests/expected-passes.txt), less the
//! documented exceptions in `onnx-cuda-exceptions.txt`, with no crash; and
//! all-MiniLM-L6-v2 (int8) matches ONNX Runtime's output on the GPU.
//! Both need a GPU and the data in the cache (stage with `--cache`).

use std::sync::Arc;
use std::time::Duration;

use stitch_core::{Backend, Tensor};
use stitch_cuda::CudaBackend;
use stitch_onnx::conformance::{run_all_on, Backends, Outcome};
use stitch_onnx::{ImportOptions, Model};

const EXPECTED_CPU: &str = include_str!("../../stitch-onnx/tests/expected-passes.txt");
const EXCEPTIONS: &str = include_str!("onnx-cuda-exceptions.txt");

fn list(text: &str) -> Vec<&str> {
    text.lines()
        .map(|l| l.split('#').next().unwrap_or("").trim())
        .filter(|l| !l.is_empty())
        .collect()
}

fn gpu_backends() -> Backends {
    let cuda: Arc<dyn Backend> = Arc::new(CudaBackend::new(0).expect("a CUDA GPU"));
    Arc::new(move || {
        vec![
            cuda.clone(),
            Arc::new(stitch_cpu::CpuBackend::new()) as Arc<dyn Backend>,
        ]
    })
}

#[test]
#[ignore = "needs a CUDA GPU"]
fn onnx_node_conformance_on_cuda() {
    let root = stitch_onnx::fetch::onnx_node_tests().expect("the ONNX node tests in the cache");
    let results = run_all_on(&root, 4, Duration::from_secs(120), gpu_backends()).expect("listing cases");
    let expected = list(EXPECTED_CPU);
    let exceptions = list(EXCEPTIONS);
    let mut problems = vec![];
    let mut newly_failing = vec![];
    for name in &expected {
        match results.get(*name) {
            Some(Outcome::Passed) => {}
            Some(o) if exceptions.contains(name) => eprintln!("documented exception {name}: {o:?}"),
            Some(o) => {
                newly_failing.push(*name);
                problems.push(format!("{name}: {o:?}"));
            }
            None => problems.push(format!("{name} is not in the suite")),
        }
    }
    for (name, o) in &results {
        if let Outcome::Crashed(m) = o {
            problems.push(format!("{name} crashed: {m}"));
        }
    }
    let passed = results.values().filter(|o| **o == Outcome::Passed).count();
    let report = stitch_onnx::conformance::report_json(&results);
    if let Some(dir) = std::env::var_os("STITCH_REPORT_DIR") {
        let _ = std::fs::write(
            std::path::Path::new(&dir).join("onnx-cuda-report.json"),
            serde_json::to_string_pretty(&report).unwrap_or_default(),
        );
    }
    eprintln!(
        "CUDA: passed {passed} of {} ({} expected from the CPU list, {} documented exceptions)",
        results.len(),
        expected.len(),
        exceptions.len()
    );
    assert!(
        problems.is_empty(),
        "{} problem(s):\n{}\nnot passing on CUDA:\n{}",
        problems.len(),
        problems.join("\n"),
        newly_failing.join("\n")
    );
}

#[test]
#[ignore = "needs a CUDA GPU"]
fn minilm_int8_on_cuda_matches_onnxruntime() {
    let path = stitch_onnx::fetch::minilm_int8().expect("the MiniLM model in the cache");
    let npz = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../stitch-onnx/tests/data/minilm-reference.npz");
    let data = stitch_core::npy::load_npz(&npz).expect("reference npz");
    let get = |n: &str| -> Tensor { data.iter().find(|(k, _)| k == n).map(|(_, t)| t.clone()).expect(n) };
    let inputs: Vec<(String, Tensor)> = ["input_ids", "attention_mask", "token_type_ids"]
        .iter()
        .map(|n| (n.to_string(), get(n)))
        .collect();
    let want = get("last_hidden_state");
    let model = Model::load(
        &path,
        ImportOptions {
            input_values: inputs.iter().cloned().collect(),
            base_dir: None,
        },
    )
    .expect("import");
    let outs: Vec<_> = model.outputs.iter().map(|(_, v)| *v).collect();
    let exe = stitch_core::Executable::compile_placed(&model.graph, &outs, gpu_backends()(), Default::default())
        .expect("compile");
    let got = model.run_cpu(&exe, &inputs).expect("run");
    let (g, w) = (got[0].1.to_f64_vec(), want.to_f64_vec());
    let max_ref = w.iter().fold(0f64, |m, v| m.max(v.abs()));
    let max_diff = g.iter().zip(&w).fold(0f64, |m, (a, b)| m.max((a - b).abs()));
    let types: Vec<_> = model
        .check_inputs(&inputs)
        .unwrap()
        .iter()
        .map(|(_, t)| stitch_core::passes::specialize::type_of(t))
        .collect();
    let plan = exe.plan_for(&types).unwrap();
    eprintln!(
        "MiniLM on CUDA: max|stitch - ort| / max|ort| = {:.2e}; placement {:?}",
        max_diff / max_ref,
        plan.report.placement
    );
    assert!(max_diff / max_ref <= 1e-4);
}
