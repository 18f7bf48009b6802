//! `stitch run MODEL.onnx` and `stitch info MODEL.onnx`.

use std::fmt::Write;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use rand::{Rng, SeedableRng};
use stitch_core::{DType, Tensor};
use stitch_onnx::{ImportOptions, Model};

/// Arguments of `stitch run`.
#[derive(Debug, Clone, Default)]
pub struct RunArgs {
    /// The model file.
    pub model: PathBuf,
    /// `NAME=FILE.npy` pairs.
    pub inputs: Vec<String>,
    /// An `.npz` holding inputs by name.
    pub inputs_npz: Option<PathBuf>,
    /// Fill missing inputs with seeded random values (symbolic dims become 1;
    /// floats in [-1, 1), integers 0 or 1 so ids, masks and types stay valid).
    pub random_inputs: bool,
    /// Seed for `random_inputs`.
    pub seed: u64,
    /// Where to write the outputs (`.npz`, keyed by output name).
    pub output: Option<PathBuf>,
    /// Timed runs after one warm-up (0: run once).
    pub runs: usize,
    /// Device (`cpu` when empty; `cuda`, `cuda:N`).
    pub device: String,
}

fn random_tensor(dtype: DType, shape: &[usize], rng: &mut rand_chacha::ChaCha8Rng) -> Result<Tensor, String> {
    let n: usize = shape.iter().product();
    let v: Vec<f64> = (0..n)
        .map(|_| match dtype {
            DType::Bool => f64::from(rng.gen_range(0..2u8)),
            d if d.is_int() => f64::from(rng.gen_range(0..2u8)),
            _ => rng.gen_range(-1.0..1.0),
        })
        .collect();
    Tensor::from_f64(dtype, &v, shape).map_err(|e| e.to_string())
}

/// The inputs given on the command line, plus random ones when asked.
fn gather_inputs(
    args: &RunArgs,
    declared: &[(String, stitch_core::TensorType)],
) -> Result<Vec<(String, Tensor)>, String> {
    let mut given: Vec<(String, Tensor)> = vec![];
    if let Some(p) = &args.inputs_npz {
        given.extend(stitch_core::npy::load_npz(p).map_err(|e| format!("--inputs {}: {e}", p.display()))?);
    }
    for spec in &args.inputs {
        let (name, file) = spec
            .split_once('=')
            .ok_or_else(|| format!("--input '{spec}' must be NAME=FILE.npy"))?;
        let t = stitch_core::npy::load_npy(Path::new(file)).map_err(|e| format!("--input {name}={file}: {e}"))?;
        given.retain(|(n, _)| n != name);
        given.push((name.to_string(), t));
    }
    if args.random_inputs {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(args.seed);
        for (name, ty) in declared {
            if given.iter().any(|(n, _)| n == name) {
                continue;
            }
            let shape: Vec<usize> = ty.shape.dims().iter().map(|d| d.known().unwrap_or(1)).collect();
            given.push((name.clone(), random_tensor(ty.dtype, &shape, &mut rng)?));
        }
    }
    Ok(given)
}

fn preview(t: &Tensor) -> String {
    let v = t.to_f64_vec();
    let head: Vec<String> = v.iter().take(8).map(|x| format!("{x:.6}")).collect();
    format!("[{}{}]", head.join(", "), if v.len() > 8 { ", ..." } else { "" })
}

/// Reads and imports an ONNX model with the inputs given on the command line
/// (shapes of dynamic dims are taken from them).
pub fn load_onnx(args: &RunArgs) -> Result<(Model, Vec<(String, Tensor)>), String> {
    let bytes = std::fs::read(&args.model).map_err(|e| format!("cannot read {}: {e}", args.model.display()))?;
    let proto = stitch_onnx::parse_model(&bytes).map_err(|e| format!("{}: {e}", args.model.display()))?;
    let base_dir = args.model.parent().map(Path::to_path_buf);
    // Declared inputs (symbolic dims) come from a first import without values.
    let declared = Model::import(
        &proto,
        ImportOptions {
            base_dir: base_dir.clone(),
            ..Default::default()
        },
    )
    .map(|m| m.inputs)
    .or_else(|e| match e {
        stitch_onnx::OnnxError::Unsupported(_) => Err(e.to_string()),
        // Shape arithmetic on symbolic dims needs the input values: read the declared types directly.
        _ => stitch_onnx::declared_inputs(&proto).map_err(|e| e.to_string()),
    })?;
    let given = gather_inputs(args, &declared)?;
    for (name, ty) in &declared {
        let Some((_, t)) = given.iter().find(|(n, _)| n == name) else {
            return Err(format!(
                "missing input '{name}' ({ty}); pass --input {name}=FILE.npy, --inputs FILE.npz or --random-inputs"
            ));
        };
        // Given values fix the symbolic dims: check them against the declaration first.
        let fits = t.dtype() == ty.dtype
            && t.rank() == ty.shape.rank()
            && ty
                .shape
                .dims()
                .iter()
                .zip(t.shape())
                .all(|(d, &n)| d.known().is_none_or(|k| k == n));
        if !fits {
            return Err(format!(
                "input '{name}' is {} {:?}; the model declares {ty}",
                t.dtype(),
                t.shape()
            ));
        }
    }
    let model = Model::import(
        &proto,
        ImportOptions {
            input_values: given.iter().cloned().collect(),
            base_dir,
        },
    )
    .map_err(|e| e.to_string())?;
    Ok((model, given))
}

/// Runs a model; returns the text to print.
pub fn run(args: &RunArgs) -> Result<String, String> {
    let (model, given) = load_onnx(args)?;
    let device = if args.device.is_empty() {
        "cpu"
    } else {
        args.device.as_str()
    };
    let backends = crate::device::backends(device)?;
    // One executable, or for run-time control flow (If/Loop/Scan) a program
    // whose segments compile for the same backends.
    let compiled = model.compile(backends).map_err(|e| e.to_string())?;
    let outs = model.run(&compiled, &given).map_err(|e| e.to_string())?;
    let mut s = String::new();
    for (name, t) in &outs {
        let _ = writeln!(s, "{name}: {} {:?} {}", t.dtype(), t.shape(), preview(t));
    }
    if args.runs > 0 {
        let mut times: Vec<Duration> = Vec::with_capacity(args.runs);
        for _ in 0..args.runs {
            let t0 = Instant::now();
            model.run(&compiled, &given).map_err(|e| e.to_string())?;
            times.push(t0.elapsed());
        }
        times.sort();
        let _ = writeln!(
            s,
            "latency over {} runs after a warm-up: min {:.3} ms, median {:.3} ms",
            args.runs,
            times[0].as_secs_f64() * 1e3,
            times[times.len() / 2].as_secs_f64() * 1e3
        );
    }
    if let Some(p) = &args.output {
        let refs: Vec<(&str, &Tensor)> = outs.iter().map(|(n, t)| (n.as_str(), t)).collect();
        stitch_core::npy::save_npz(p, &refs).map_err(|e| format!("cannot write {}: {e}", p.display()))?;
        let _ = writeln!(s, "wrote {}", p.display());
    }
    Ok(s)
}

/// `stitch info MODEL.onnx`: inputs, outputs, opset, op histogram, parameters.
pub fn model_info(path: &Path) -> Result<String, String> {
    let bytes = std::fs::read(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    let proto = stitch_onnx::parse_model(&bytes).map_err(|e| format!("{}: {e}", path.display()))?;
    let g = proto.graph.as_ref().ok_or("the model has no graph")?;
    let mut s = String::new();
    let _ = writeln!(s, "model: {}", path.display());
    for o in &proto.opset_import {
        let d = if o.domain().is_empty() { "ai.onnx" } else { o.domain() };
        let _ = writeln!(s, "opset: {d} {}", o.version());
    }
    let _ = writeln!(s, "producer: {} {}", proto.producer_name(), proto.producer_version());
    let _ = writeln!(s, "inputs:");
    for (name, ty) in stitch_onnx::declared_inputs(&proto).map_err(|e| e.to_string())? {
        let _ = writeln!(s, "  {name}: {ty}");
    }
    let _ = writeln!(s, "outputs:");
    for (name, ty) in stitch_onnx::declared_outputs(&proto) {
        let _ = writeln!(s, "  {name}: {ty}");
    }
    let mut hist: std::collections::BTreeMap<String, usize> = Default::default();
    for n in &g.node {
        *hist.entry(n.op_type().to_string()).or_default() += 1;
    }
    let _ = writeln!(s, "ops ({} nodes):", g.node.len());
    let mut h: Vec<_> = hist.into_iter().collect();
    h.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
    for (op, c) in h {
        let _ = writeln!(s, "  {op:28} {c}");
    }
    let (mut params, mut bytes_total) = (0usize, 0usize);
    for t in &g.initializer {
        let n = t
            .dims
            .iter()
            .try_fold(1usize, |a, &d| usize::try_from(d).ok().and_then(|d| a.checked_mul(d)));
        let n = n.ok_or_else(|| format!("initializer '{}' has invalid dims {:?}", t.name(), t.dims))?;
        params += n;
        bytes_total += stitch_onnx::dtype_from_onnx(t.data_type())
            .map(|d| d.size_in_bytes())
            .unwrap_or(0)
            * n;
    }
    let _ = writeln!(
        s,
        "parameters: {params} in {} initializers, {:.2} MiB",
        g.initializer.len(),
        bytes_total as f64 / (1024.0 * 1024.0)
    );
    Ok(s)
}
