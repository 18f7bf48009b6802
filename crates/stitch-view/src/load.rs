//! Turning a model file into a stitch graph to view, and compiling it for a
//! device to show the compiled plan.

use std::cell::RefCell;
use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;

use stitch_core::{CompileOptions, Dim, Executable, Graph, NodeId, Op, TensorType, Value};
use stitch_models::gguf::Gguf;
use stitch_models::llama::{self, LlamaConfig, Weight, WeightSource};
use stitch_onnx::{ImportOptions, Model};

/// KV-cache length used when viewing a GGUF model (it only sizes the cache variables).
pub const VIEW_CONTEXT: usize = 256;

/// A graph ready to view.
#[derive(Debug, Clone)]
pub struct LoadedModel {
    /// Shown in the page title.
    pub title: String,
    /// The graph.
    pub graph: Graph,
    /// Its outputs (what the compiled view compiles).
    pub outputs: Vec<Value>,
}

/// Size given to a symbolic dim when a concrete plan is needed: 1 for batch-like
/// dims, 16 for the rest (sequence lengths).
pub fn default_dim(name: &str) -> usize {
    if name.to_ascii_lowercase().contains("batch") {
        1
    } else {
        16
    }
}

/// A placeholder's type with symbolic dims replaced by [`default_dim`].
pub fn concrete_type(ty: &TensorType) -> TensorType {
    let dims: Vec<Dim> = ty
        .shape
        .dims()
        .iter()
        .map(|d| match d {
            Dim::Known(k) => Dim::Known(*k),
            Dim::Sym(s) => Dim::Known(default_dim(s)),
        })
        .collect();
    TensorType::new(ty.dtype, dims)
}

/// Loads an `.onnx` or `.gguf` model.
pub fn load_model(path: &Path) -> Result<LoadedModel, String> {
    match path
        .extension()
        .and_then(|e| e.to_str())
        .map(str::to_ascii_lowercase)
        .as_deref()
    {
        Some("onnx") => load_onnx(path),
        Some("gguf") => load_gguf(path),
        _ => Err(format!(
            "{}: expected an .onnx or .gguf model (stitch packages are not supported yet)",
            path.display()
        )),
    }
}

fn load_onnx(path: &Path) -> Result<LoadedModel, String> {
    let bytes = std::fs::read(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    let proto = stitch_onnx::parse_model(&bytes).map_err(|e| format!("{}: {e}", path.display()))?;
    let base_dir = path.parent().map(Path::to_path_buf);
    let plain = Model::import(
        &proto,
        ImportOptions {
            base_dir: base_dir.clone(),
            ..Default::default()
        },
    );
    let model = match plain {
        Ok(m) => m,
        Err(stitch_onnx::OnnxError::Unsupported(e)) => return Err(format!("{}: {e}", path.display())),
        // Shape arithmetic on symbolic dims needs sizes: import again with the
        // declared inputs' symbolic dims set to default sizes. Inputs stay
        // placeholders (binding values would fold the whole graph away).
        Err(first) => {
            let mut fixed = proto.clone();
            fix_symbolic_inputs(&mut fixed);
            Model::import(
                &fixed,
                ImportOptions {
                    base_dir,
                    ..Default::default()
                },
            )
            .map_err(|e| format!("{}: {first}; with default input sizes: {e}", path.display()))?
        }
    };
    Ok(LoadedModel {
        title: file_name(path),
        outputs: model.outputs.iter().map(|(_, v)| *v).collect(),
        graph: model.graph,
    })
}

/// Replaces each symbolic dim of the graph inputs by [`default_dim`] of its name.
fn fix_symbolic_inputs(m: &mut stitch_onnx::onnx::ModelProto) {
    use stitch_onnx::onnx::tensor_shape_proto::dimension::Value as D;
    use stitch_onnx::onnx::type_proto::Value as T;
    let Some(g) = m.graph.as_mut() else { return };
    for vi in &mut g.input {
        let Some(T::TensorType(t)) = vi.r#type.as_mut().and_then(|t| t.value.as_mut()) else {
            continue;
        };
        for d in t.shape.iter_mut().flat_map(|s| s.dim.iter_mut()) {
            let size = match &d.value {
                Some(D::DimValue(v)) if *v >= 0 => continue,
                Some(D::DimParam(p)) => default_dim(p),
                _ => default_dim(""),
            };
            d.value = Some(D::DimValue(size as i64));
        }
    }
}

fn file_name(path: &Path) -> String {
    path.file_name()
        .map(|f| f.to_string_lossy().into_owned())
        .unwrap_or_else(|| path.display().to_string())
}

/// A weight source that remembers which buffer each weight name returned, so
/// the graph's constants can be named after the GGUF tensors.
struct Recording<'a> {
    inner: &'a Gguf,
    names: RefCell<HashMap<usize, String>>,
}

impl WeightSource for Recording<'_> {
    fn weight(&self, name: &str) -> stitch_core::Result<Option<Weight>> {
        let w = self.inner.weight(name)?;
        if let Some(w) = &w {
            let t = match w {
                Weight::Dense(t) => t,
                Weight::Quant { packed, .. } => packed,
            };
            let key = Arc::as_ptr(t.buffer()) as usize + t.offset();
            self.names.borrow_mut().insert(key, name.to_string());
        }
        Ok(w)
    }
}

fn load_gguf(path: &Path) -> Result<LoadedModel, String> {
    let g = Gguf::open(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let cfg = LlamaConfig::from_gguf(&g).map_err(|e| format!("{}: {e}", path.display()))?;
    let rec = Recording {
        inner: &g,
        names: RefCell::new(HashMap::new()),
    };
    let (mut graph, logits, _) = llama::build(&cfg, &rec, Dim::sym("seq"), VIEW_CONTEXT)
        .map_err(|e| format!("{}: building the graph: {e}", path.display()))?;
    let names = rec.names.into_inner();
    let renames: Vec<(usize, String)> = graph
        .nodes()
        .iter()
        .enumerate()
        .filter_map(|(i, n)| match &n.op {
            Op::Constant(t) => {
                let key = Arc::as_ptr(t.buffer()) as usize + t.offset();
                let scope = n.name.rsplit_once('/').map(|(s, _)| s);
                names.get(&key).map(|w| {
                    let short = w.strip_prefix(&format!("{}.", scope.unwrap_or(""))).unwrap_or(w);
                    (i, scope.map_or_else(|| short.to_string(), |s| format!("{s}/{short}")))
                })
            }
            _ => None,
        })
        .collect();
    for (i, name) in renames {
        graph.set_name(NodeId(i as u32), &name);
    }
    Ok(LoadedModel {
        title: file_name(path),
        graph,
        outputs: vec![logits],
    })
}

/// A compiled plan's graph with the device of each node.
pub struct CompiledGraph {
    /// The plan's graph (decomposed, fused).
    pub graph: Graph,
    /// Backend index of each node.
    pub devices: Vec<usize>,
    /// Backend names.
    pub device_names: Vec<String>,
}

/// Compiles `model` for `device` (`cpu`, `cuda`, `cuda:N`: nodes the GPU
/// lacks fall back to the CPU) and returns the plan for default input sizes
/// (see [`default_dim`]).
pub fn compile(graph: &Graph, outputs: &[Value], device: &str) -> Result<CompiledGraph, String> {
    let backends = stitch_cuda::backends_for(device)?;
    let names: Vec<String> = backends.iter().map(|b| b.name().to_string()).collect();
    let exe = Executable::compile_placed(graph, outputs, backends, CompileOptions::default())
        .map_err(|e| format!("compiling for {device}: {e}"))?;
    let types: Vec<TensorType> = graph
        .placeholders()
        .iter()
        .map(|(_, v)| concrete_type(graph.ty(*v)))
        .collect();
    let plan = exe
        .plan_for(&types)
        .map_err(|e| format!("planning for {device}: {e}"))?;
    Ok(CompiledGraph {
        graph: plan.graph.clone(),
        devices: plan.devices.clone(),
        device_names: names,
    })
}
