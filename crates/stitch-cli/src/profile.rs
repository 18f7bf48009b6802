//! `stitch profile MODEL`: times every step of a model's plan, prints a report
//! and writes a Chrome trace (Perfetto) when asked.

use std::path::{Path, PathBuf};

use stitch_core::exec::Executable;
use stitch_core::profile::Profiler;
use stitch_core::Tensor;

use crate::device;
use crate::run::{load_onnx, RunArgs};

/// Options of `stitch profile`.
#[derive(Debug, Clone)]
pub struct ProfileArgs {
    /// `.onnx` or `.gguf` model.
    pub model: PathBuf,
    /// Device name (`cpu`, ...).
    pub device: String,
    /// Profiled runs (after one warm-up); decode steps for a GGUF model.
    pub runs: usize,
    /// Where to write the Chrome trace.
    pub trace: Option<PathBuf>,
    /// ONNX inputs as `NAME=FILE.npy`.
    pub inputs: Vec<String>,
    /// ONNX inputs as an `.npz`.
    pub inputs_npz: Option<PathBuf>,
    /// Seed for the inputs not given.
    pub seed: u64,
    /// Rows of the report's tables.
    pub top: usize,
    /// Prompt for a GGUF model.
    pub prompt: String,
}

/// Writes the trace (if asked) and returns the report text.
pub fn finish(p: &Profiler, trace: Option<&Path>, top: usize) -> Result<String, String> {
    let mut text = p.report().to_text(top);
    if let Some(path) = trace {
        std::fs::write(path, p.chrome_trace()).map_err(|e| format!("cannot write {}: {e}", path.display()))?;
        let events: usize = p.runs.iter().map(|r| r.steps.len()).sum();
        text.push_str(&format!(
            "\nwrote {} ({} events; open it in https://ui.perfetto.dev or chrome://tracing)\n",
            path.display(),
            events
        ));
    }
    Ok(text)
}

/// Runs `stitch profile`; returns the report to print.
pub fn run(args: &ProfileArgs) -> Result<String, String> {
    if args.runs == 0 {
        return Err("--runs must be at least 1".into());
    }
    let ext = args.model.extension().and_then(|e| e.to_str()).unwrap_or("");
    let profiler = match ext {
        "onnx" => profile_onnx(args)?,
        "gguf" => profile_gguf(args)?,
        _ => {
            return Err(format!(
                "{}: expected an .onnx or .gguf model (compiled packages are not supported yet)",
                args.model.display()
            ))
        }
    };
    finish(&profiler, args.trace.as_deref(), args.top)
}

fn profile_onnx(args: &ProfileArgs) -> Result<Profiler, String> {
    let backends = device::backends(&args.device)?;
    let (model, given) = load_onnx(&RunArgs {
        model: args.model.clone(),
        inputs: args.inputs.clone(),
        inputs_npz: args.inputs_npz.clone(),
        random_inputs: true,
        seed: args.seed,
        output: None,
        runs: 0,
        device: args.device.clone(),
    })?;
    if model.has_control_flow() {
        return Err(format!(
            "{}: the model has run-time control flow (If/Loop/Scan), which the profiler cannot time yet; \
             time it with `stitch run --runs N`",
            args.model.display()
        ));
    }
    let outs: Vec<_> = model.outputs.iter().map(|(_, v)| *v).collect();
    let exe =
        Executable::compile_placed(&model.graph, &outs, backends, Default::default()).map_err(|e| e.to_string())?;
    let feed = model.check_inputs(&given).map_err(|e| e.to_string())?;
    let mut state = exe.new_state();
    let mut outputs: Vec<Tensor> = Vec::new();
    // Warm-up: builds the plan and fills the buffer pools.
    exe.run_into(&feed, &mut state, &mut outputs)
        .map_err(|e| e.to_string())?;
    let mut p = Profiler::new();
    for r in 0..args.runs {
        p.run(&exe, &feed, &mut state, &mut outputs, format!("run {r}"))
            .map_err(|e| e.to_string())?;
    }
    Ok(p)
}

fn profile_gguf(args: &ProfileArgs) -> Result<Profiler, String> {
    let mut l = crate::generate::load_on(&args.model, 512, &args.device)?;
    let ids = l.tokenizer.encode(&args.prompt, true).map_err(|e| e.to_string())?;
    if ids.is_empty() {
        return Err("the prompt is empty".into());
    }
    let logits = l.model.forward(&ids).map_err(|e| e.to_string())?;
    let mut next = argmax(&logits);
    // One unprofiled decode step builds the decode plan.
    let logits = l.model.forward(&[next]).map_err(|e| e.to_string())?;
    next = argmax(&logits);
    l.model.profile_decode(true);
    for _ in 0..args.runs {
        let logits = l.model.forward(&[next]).map_err(|e| e.to_string())?;
        next = argmax(&logits);
    }
    l.model
        .profile_decode(false)
        .ok_or_else(|| "internal: the profiler recorded nothing".to_string())
}

fn argmax(v: &[f32]) -> u32 {
    let mut best = 0;
    for (i, x) in v.iter().enumerate() {
        if *x > v[best] {
            best = i;
        }
    }
    best as u32
}
