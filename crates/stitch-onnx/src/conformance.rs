//! Runs ONNX backend node test cases (`model.onnx` + `test_data_set_0/*.pb`) and
//! compares with the expected outputs using ONNX's runner tolerances.

use std::collections::BTreeMap;
use std::panic::AssertUnwindSafe;
use std::path::{Path, PathBuf};
use std::sync::{mpsc, Arc};
use std::time::Duration;

use stitch_core::Tensor;

use crate::import::{tensor_from_proto, ImportOptions, Model};
use crate::OnnxError;

/// Relative tolerance of ONNX's backend test runner.
pub const RTOL: f64 = 1e-3;
/// Absolute tolerance of ONNX's backend test runner.
pub const ATOL: f64 = 1e-7;

/// Outcome of one case.
#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    /// Outputs match in shape, dtype and values.
    Passed,
    /// Ran, but an output differs, or running failed.
    Failed(String),
    /// The importer or compiler rejected the model.
    Unsupported(String),
    /// Panicked or timed out.
    Crashed(String),
}

impl Outcome {
    /// `passed`, `failed`, `unsupported` or `crashed`.
    pub fn label(&self) -> &'static str {
        match self {
            Outcome::Passed => "passed",
            Outcome::Failed(_) => "failed",
            Outcome::Unsupported(_) => "unsupported",
            Outcome::Crashed(_) => "crashed",
        }
    }
}

fn read_pbs(dir: &Path, prefix: &str) -> Result<Vec<Tensor>, String> {
    let mut out = vec![];
    for i in 0.. {
        let p = dir.join(format!("{prefix}_{i}.pb"));
        if !p.exists() {
            break;
        }
        let bytes = std::fs::read(&p).map_err(|e| format!("{}: {e}", p.display()))?;
        let t = crate::parse_tensor(&bytes).map_err(|e| format!("{}: {e}", p.display()))?;
        out.push(tensor_from_proto(&t, None).map_err(|e| format!("{}: {e}", p.display()))?);
    }
    Ok(out)
}

/// Compares one output with ONNX's tolerances; exact shape and dtype.
pub fn compare(name: &str, got: &Tensor, want: &Tensor) -> Result<(), String> {
    if got.dtype() != want.dtype() {
        return Err(format!(
            "output '{name}': dtype {} != expected {}",
            got.dtype(),
            want.dtype()
        ));
    }
    if got.shape() != want.shape() {
        return Err(format!(
            "output '{name}': shape {:?} != expected {:?}",
            got.shape(),
            want.shape()
        ));
    }
    let (g, w) = (got.to_f64_vec(), want.to_f64_vec());
    let exact = !want.dtype().is_float();
    for (i, (a, b)) in g.iter().zip(&w).enumerate() {
        let ok = if exact {
            a == b
        } else if a.is_nan() || b.is_nan() {
            a.is_nan() && b.is_nan()
        } else if a.is_infinite() || b.is_infinite() {
            a == b
        } else {
            (a - b).abs() <= ATOL + RTOL * b.abs()
        };
        if !ok {
            return Err(format!("output '{name}': element {i} is {a}, expected {b}"));
        }
    }
    Ok(())
}

/// Makes the backends a case is compiled for (primary first).
pub type Backends = Arc<dyn Fn() -> Vec<Arc<dyn stitch_core::Backend>> + Send + Sync>;

/// The CPU backend alone.
pub fn cpu_backends() -> Backends {
    Arc::new(|| vec![Arc::new(stitch_cpu::CpuBackend::new()) as Arc<dyn stitch_core::Backend>])
}

/// Runs one case directory on the CPU (no panic catching; see [`run_isolated`]).
pub fn run_case(dir: &Path) -> Outcome {
    run_case_on(dir, &cpu_backends())
}

/// Runs one case directory on the backends `backends` makes.
pub fn run_case_on(dir: &Path, backends: &Backends) -> Outcome {
    let data = dir.join("test_data_set_0");
    let inputs = match read_pbs(&data, "input") {
        Ok(v) => v,
        Err(e) => return Outcome::Unsupported(e),
    };
    let expected = match read_pbs(&data, "output") {
        Ok(v) => v,
        Err(e) => return Outcome::Unsupported(e),
    };
    let bytes = match std::fs::read(dir.join("model.onnx")) {
        Ok(b) => b,
        Err(e) => return Outcome::Unsupported(e.to_string()),
    };
    let proto = match crate::parse_model(&bytes) {
        Ok(p) => p,
        Err(e) => return Outcome::Unsupported(e.to_string()),
    };
    let Some(g) = proto.graph.as_ref() else {
        return Outcome::Unsupported("no graph".into());
    };
    let init: std::collections::HashSet<&str> = g.initializer.iter().map(|t| t.name()).collect();
    let names: Vec<String> = g
        .input
        .iter()
        .map(|v| v.name().to_string())
        .filter(|n| !init.contains(n.as_str()))
        .collect();
    if names.len() < inputs.len() {
        return Outcome::Unsupported(format!("{} input files for {} graph inputs", inputs.len(), names.len()));
    }
    let given: Vec<(String, Tensor)> = names.into_iter().zip(inputs).collect();
    let opts = ImportOptions {
        input_values: given.iter().cloned().collect(),
        base_dir: Some(dir.to_path_buf()),
    };
    let model = match Model::import(&proto, opts) {
        Ok(m) => m,
        Err(e) => return Outcome::Unsupported(e.to_string()),
    };
    let compiled = match model.compile(backends()) {
        Ok(e) => e,
        Err(e) => return Outcome::Unsupported(e.to_string()),
    };
    let outs = match model.run(&compiled, &given) {
        Ok(o) => o,
        Err(e @ OnnxError::Core(stitch_core::Error::Unsupported { .. })) => return Outcome::Unsupported(e.to_string()),
        Err(e) => return Outcome::Failed(format!("run failed: {e}")),
    };
    if outs.len() != expected.len() {
        return Outcome::Failed(format!("{} outputs, expected {}", outs.len(), expected.len()));
    }
    for ((name, got), want) in outs.iter().zip(&expected) {
        if let Err(e) = compare(name, got, want) {
            return Outcome::Failed(e);
        }
    }
    Outcome::Passed
}

/// Runs a case on its own thread, catching panics, with a timeout.
pub fn run_isolated(dir: PathBuf, timeout: Duration) -> Outcome {
    run_isolated_on(dir, timeout, cpu_backends())
}

/// [`run_isolated`] on the backends `backends` makes.
pub fn run_isolated_on(dir: PathBuf, timeout: Duration, backends: Backends) -> Outcome {
    let (tx, rx) = mpsc::channel();
    let spawned = std::thread::Builder::new()
        .name("onnx-case".into())
        .stack_size(64 << 20)
        .spawn(move || {
            let r = std::panic::catch_unwind(AssertUnwindSafe(|| run_case_on(&dir, &backends)));
            let _ = tx.send(r);
        });
    if let Err(e) = spawned {
        return Outcome::Crashed(format!("cannot spawn a thread: {e}"));
    }
    match rx.recv_timeout(timeout) {
        Ok(Ok(o)) => o,
        Ok(Err(p)) => {
            let msg = p
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string()))
                .unwrap_or_else(|| "panic".into());
            Outcome::Crashed(format!("panicked: {msg}"))
        }
        Err(_) => Outcome::Crashed(format!("timed out after {timeout:?}")),
    }
}

/// Case directories under `root` (`test_*` with a `model.onnx`), sorted.
pub fn cases(root: &Path) -> std::io::Result<Vec<(String, PathBuf)>> {
    let mut v = vec![];
    for e in std::fs::read_dir(root)? {
        let e = e?;
        let name = e.file_name().to_string_lossy().into_owned();
        if name.starts_with("test_") && e.path().join("model.onnx").exists() {
            v.push((name, e.path()));
        }
    }
    v.sort();
    Ok(v)
}

/// Runs every case under `root` on `threads` workers, on the CPU.
pub fn run_all(root: &Path, threads: usize, timeout: Duration) -> std::io::Result<BTreeMap<String, Outcome>> {
    run_all_on(root, threads, timeout, cpu_backends())
}

/// [`run_all`] on the backends `backends` makes.
pub fn run_all_on(
    root: &Path,
    threads: usize,
    timeout: Duration,
    backends: Backends,
) -> std::io::Result<BTreeMap<String, Outcome>> {
    let cases = cases(root)?;
    let next = std::sync::atomic::AtomicUsize::new(0);
    let results = std::sync::Mutex::new(BTreeMap::new());
    std::thread::scope(|s| {
        for _ in 0..threads.max(1) {
            s.spawn(|| loop {
                let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                let Some((name, dir)) = cases.get(i) else { break };
                if std::env::var_os("STITCH_CONFORMANCE_TRACE").is_some() {
                    eprintln!("case {name}");
                }
                let o = run_isolated_on(dir.clone(), timeout, backends.clone());
                if let Ok(mut r) = results.lock() {
                    r.insert(name.clone(), o);
                }
            });
        }
    });
    Ok(results.into_inner().unwrap_or_default())
}

/// The report JSON: counts and per-case labels.
pub fn report_json(results: &BTreeMap<String, Outcome>) -> serde_json::Value {
    let count = |l: &str| results.values().filter(|o| o.label() == l).count();
    let cases: serde_json::Map<String, serde_json::Value> =
        results.iter().map(|(k, v)| (k.clone(), v.label().into())).collect();
    serde_json::json!({
        "passed": count("passed"),
        "failed": count("failed"),
        "unsupported": count("unsupported"),
        "crashed": count("crashed"),
        "cases": cases,
    })
}

/// The op type of a case's single node (the first node of its graph), if readable.
pub fn case_op_type(dir: &Path) -> Option<String> {
    let bytes = std::fs::read(dir.join("model.onnx")).ok()?;
    let m = crate::parse_model(&bytes).ok()?;
    Some(m.graph?.node.first()?.op_type().to_string())
}
