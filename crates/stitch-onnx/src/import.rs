//! ONNX graph → stitch graph.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::{Component, Path, PathBuf};
use std::sync::Arc;

use stitch_core::ops::{BinaryOp, ConvAttrs, PadMode, PoolAttrs, ReduceOp, ScatterReduction, UnaryOp};
use stitch_core::{Buffer, CompileOptions, DType, Dim, Executable, Graph, Op, Shape, Tensor, TensorType, Value};

use crate::onnx::{self, tensor_proto::DataType, type_proto, AttributeProto};
use crate::{OnnxError, Result};

/// ONNX op types (default domain) the importer maps onto stitch ops.
pub const SUPPORTED_OPS: &[&str] = &[
    "Abs",
    "Attention",
    "CumProd",
    "Scatter",
    "Compress",
    "If",
    "Loop",
    "Scan",
    "Tan",
    "Sinh",
    "Cosh",
    "Asinh",
    "Acosh",
    "Atanh",
    "Shrink",
    "Swish",
    "EyeLike",
    "SpaceToDepth",
    "DepthToSpace",
    "InstanceNormalization",
    "MeanVarianceNormalization",
    "Hardmax",
    "LpNormalization",
    "HannWindow",
    "HammingWindow",
    "BlackmanWindow",
    "GatherND",
    "NegativeLogLikelihoodLoss",
    "SoftmaxCrossEntropyLoss",
    "RMSNormalization",
    "Trilu",
    "Add",
    "And",
    "ArgMax",
    "ArgMin",
    "AveragePool",
    "BatchNormalization",
    "Cast",
    "CastLike",
    "Ceil",
    "Celu",
    "Clip",
    "Concat",
    "Constant",
    "ConstantOfShape",
    "Conv",
    "Cos",
    "CumSum",
    "Div",
    "Dropout",
    "Elu",
    "Equal",
    "Erf",
    "Exp",
    "Expand",
    "Flatten",
    "Floor",
    "Gather",
    "GatherElements",
    "Gelu",
    "Gemm",
    "GlobalAveragePool",
    "GlobalMaxPool",
    "Greater",
    "GreaterOrEqual",
    "HardSigmoid",
    "HardSwish",
    "Identity",
    "LayerNormalization",
    "LeakyRelu",
    "Less",
    "LessOrEqual",
    "Log",
    "LogSoftmax",
    "MatMul",
    "Max",
    "MaxPool",
    "Mean",
    "Min",
    "Mish",
    "Mod",
    "Mul",
    "Neg",
    "Not",
    "OneHot",
    "Or",
    "Pad",
    "Pow",
    "PRelu",
    "Range",
    "Reciprocal",
    "ReduceL1",
    "ReduceL2",
    "ReduceLogSum",
    "ReduceLogSumExp",
    "ReduceMax",
    "ReduceMean",
    "ReduceMin",
    "ReduceProd",
    "ReduceSum",
    "ReduceSumSquare",
    "Relu",
    "Reshape",
    "Round",
    "ScatterElements",
    "Selu",
    "Shape",
    "Sigmoid",
    "Sign",
    "Sin",
    "Size",
    "Slice",
    "Softmax",
    "Softplus",
    "Softsign",
    "Split",
    "Sqrt",
    "Squeeze",
    "Sub",
    "Sum",
    "Tanh",
    "ThresholdedRelu",
    "Tile",
    "TopK",
    "Transpose",
    "Unsqueeze",
    "Where",
    "Xor",
    "IsNaN",
    "IsInf",
];

/// Every name the nodes of `g` (and their nested subgraphs) read.
fn collect_graph_inputs<'a>(g: &'a onnx::GraphProto, out: &mut HashSet<&'a str>) {
    for n in &g.node {
        for i in &n.input {
            out.insert(i.as_str());
        }
        for a in &n.attribute {
            if let Some(sub) = a.g.as_ref() {
                collect_graph_inputs(sub, out);
            }
        }
    }
}

/// Largest tensor (elements) the importer computes or creates as a constant.
const MAX_FOLD_ELEMENTS: usize = 1 << 28;

/// Options for [`Model::import`].
#[derive(Debug, Clone, Default)]
pub struct ImportOptions {
    /// Values of graph inputs known at import time. Their shapes replace the
    /// declared (possibly symbolic) ones; an input whose *value* an op needs
    /// statically (a Reshape target shape, Slice bounds, TopK's k, ...) becomes a
    /// constant, the others stay placeholders.
    pub input_values: HashMap<String, Tensor>,
    /// Directory of external data files (the model file's directory).
    pub base_dir: Option<PathBuf>,
}

/// An imported ONNX model.
#[derive(Debug, Clone)]
pub struct Model {
    /// The stitch graph.
    pub graph: Graph,
    /// Graph inputs fed at run time (placeholders), with their types.
    pub inputs: Vec<(String, TensorType)>,
    /// Graph inputs that were bound to constants at import time.
    pub bound_inputs: Vec<String>,
    /// Graph outputs by ONNX name. Empty (and `graph` too) when the model has
    /// run-time control flow: see [`Model::has_control_flow`].
    pub outputs: Vec<(String, Value)>,
    /// Default-domain opset.
    pub opset: i64,
    /// The model as a program of segments and host-run If/Loop/Scan nodes,
    /// when it has run-time control flow.
    control_flow: Option<Arc<crate::program::Program>>,
    base_dir: Option<PathBuf>,
}

/// A model compiled for a list of backends: one executable, or, for a model
/// with run-time control flow, a program whose segments compile on first use
/// for the same backends.
pub struct CompiledModel {
    inner: Compiled,
}

enum Compiled {
    Graph(Executable),
    Program(crate::program::CompiledProgram),
}

impl std::fmt::Debug for CompiledModel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.inner {
            Compiled::Graph(e) => f.debug_tuple("CompiledModel").field(e).finish(),
            Compiled::Program(p) => f.debug_tuple("CompiledModel").field(&p.program).finish(),
        }
    }
}

impl CompiledModel {
    /// The executable of a model without run-time control flow.
    pub fn executable(&self) -> Option<&Executable> {
        match &self.inner {
            Compiled::Graph(e) => Some(e),
            Compiled::Program(_) => None,
        }
    }
}

/// Maps an ONNX `TensorProto.DataType` code to a stitch dtype.
pub fn dtype_from_onnx(code: i32) -> Option<DType> {
    Some(match DataType::try_from(code).ok()? {
        DataType::Float => DType::F32,
        DataType::Double => DType::F64,
        DataType::Float16 => DType::F16,
        DataType::Bfloat16 => DType::BF16,
        DataType::Int8 => DType::I8,
        DataType::Uint8 => DType::U8,
        DataType::Int16 => DType::I16,
        DataType::Uint16 => DType::U16,
        DataType::Int32 => DType::I32,
        DataType::Uint32 => DType::U32,
        DataType::Int64 => DType::I64,
        DataType::Uint64 => DType::U64,
        DataType::Bool => DType::Bool,
        _ => return None,
    })
}

fn dtype_name(code: i32) -> String {
    DataType::try_from(code)
        .map(|d| d.as_str_name().to_string())
        .unwrap_or_else(|_| format!("code {code}"))
}

/// Reads an external data file range, refusing paths that leave `base`.
fn read_external(t: &onnx::TensorProto, base: Option<&Path>, want: usize) -> Result<Vec<u8>, String> {
    let mut location = None;
    let mut offset = 0u64;
    let mut length = None;
    for kv in &t.external_data {
        match kv.key() {
            "location" => location = Some(kv.value().to_string()),
            "offset" => {
                offset = kv
                    .value()
                    .parse()
                    .map_err(|_| format!("bad external offset '{}'", kv.value()))?
            }
            "length" => {
                length = Some(
                    kv.value()
                        .parse::<u64>()
                        .map_err(|_| format!("bad external length '{}'", kv.value()))?,
                )
            }
            _ => {}
        }
    }
    let location = location.ok_or("external data without a location")?;
    let rel = Path::new(&location);
    if rel.components().any(|c| !matches!(c, Component::Normal(_))) {
        return Err(format!(
            "external data location '{location}' must be a relative path inside the model's directory"
        ));
    }
    let base = base.ok_or("external data needs the model's directory (load the model from a file)")?;
    let path = base.join(rel);
    let bytes = std::fs::read(&path).map_err(|e| format!("cannot read external data {}: {e}", path.display()))?;
    let len = length.unwrap_or(want as u64);
    if len != want as u64 {
        return Err(format!(
            "external data length {len} does not match the tensor's {want} bytes"
        ));
    }
    let end = offset
        .checked_add(len)
        .filter(|&e| e <= bytes.len() as u64)
        .ok_or_else(|| {
            format!(
                "external data range {offset}..{} is outside {} ({} bytes)",
                offset.saturating_add(len),
                path.display(),
                bytes.len()
            )
        })?;
    Ok(bytes[offset as usize..end as usize].to_vec())
}

/// Converts a `TensorProto` into a tensor. `base` is the directory of external data.
pub fn tensor_from_proto(t: &onnx::TensorProto, base: Option<&Path>) -> Result<Tensor, String> {
    let code = t.data_type();
    let dtype = dtype_from_onnx(code)
        .ok_or_else(|| format!("tensor '{}': unsupported dtype {}", t.name(), dtype_name(code)))?;
    let mut shape = Vec::with_capacity(t.dims.len());
    let mut numel: usize = 1;
    for &d in &t.dims {
        let d = usize::try_from(d).map_err(|_| format!("tensor '{}': negative dim {d}", t.name()))?;
        numel = numel
            .checked_mul(d)
            .ok_or_else(|| format!("tensor '{}': dims {:?} overflow", t.name(), t.dims))?;
        shape.push(d);
    }
    // Strides multiply the non-zero dims even when a zero dim empties the tensor.
    let span = shape.iter().try_fold(1usize, |a, &d| a.checked_mul(d.max(1)));
    if span.is_none_or(|s| s > isize::MAX as usize / 16) {
        return Err(format!("tensor '{}': dims {:?} are too large", t.name(), t.dims));
    }
    let size = dtype.size_in_bytes();
    let want = numel
        .checked_mul(size)
        .ok_or_else(|| format!("tensor '{}' is too large", t.name()))?;
    let bytes: Vec<u8> = if t.data_location() == onnx::tensor_proto::DataLocation::External {
        read_external(t, base, want).map_err(|m| format!("tensor '{}': {m}", t.name()))?
    } else if let Some(raw) = &t.raw_data {
        raw.clone()
    } else {
        let have = match dtype {
            DType::F32 => t.float_data.len(),
            DType::F64 => t.double_data.len(),
            DType::I64 => t.int64_data.len(),
            DType::U64 | DType::U32 => t.uint64_data.len(),
            _ => t.int32_data.len(),
        };
        if have != numel {
            return Err(format!(
                "tensor '{}' ({} {:?}) holds {have} elements, expected {numel}",
                t.name(),
                dtype,
                shape
            ));
        }
        let mut out = Vec::with_capacity(want);
        match dtype {
            DType::F32 => t
                .float_data
                .iter()
                .for_each(|v| out.extend_from_slice(&v.to_le_bytes())),
            DType::F64 => t
                .double_data
                .iter()
                .for_each(|v| out.extend_from_slice(&v.to_le_bytes())),
            DType::I64 => t
                .int64_data
                .iter()
                .for_each(|v| out.extend_from_slice(&v.to_le_bytes())),
            DType::U64 => t
                .uint64_data
                .iter()
                .for_each(|v| out.extend_from_slice(&v.to_le_bytes())),
            DType::U32 => t
                .uint64_data
                .iter()
                .for_each(|v| out.extend_from_slice(&(*v as u32).to_le_bytes())),
            DType::I32 => t
                .int32_data
                .iter()
                .for_each(|v| out.extend_from_slice(&v.to_le_bytes())),
            DType::I16 | DType::U16 | DType::F16 | DType::BF16 => t
                .int32_data
                .iter()
                .for_each(|v| out.extend_from_slice(&(*v as u16).to_le_bytes())),
            DType::I8 | DType::U8 | DType::Bool => t.int32_data.iter().for_each(|v| out.push(*v as u8)),
        }
        out
    };
    if bytes.len() != want {
        return Err(format!(
            "tensor '{}' ({} {:?}) holds {} bytes of data, expected {want}",
            t.name(),
            dtype,
            shape,
            bytes.len()
        ));
    }
    Ok(Tensor::from_buffer(Buffer::from_bytes(&bytes), dtype, &shape))
}

/// Integer values of a constant tensor.
fn ints_of(t: &Tensor) -> Result<Vec<i64>, String> {
    Ok(match t.dtype() {
        DType::I64 => t.to_vec::<i64>().map_err(|e| e.to_string())?,
        DType::I32 => t
            .to_vec::<i32>()
            .map_err(|e| e.to_string())?
            .into_iter()
            .map(i64::from)
            .collect(),
        d if d.is_int() => t.to_f64_vec().into_iter().map(|v| v as i64).collect(),
        d => return Err(format!("expected an integer tensor, got {d}")),
    })
}

/// Attributes of one node, by name.
struct Attrs<'a>(HashMap<&'a str, &'a AttributeProto>);

impl<'a> Attrs<'a> {
    fn new(n: &'a onnx::NodeProto) -> Self {
        Attrs(n.attribute.iter().map(|a| (a.name(), a)).collect())
    }
    fn has(&self, k: &str) -> bool {
        self.0.contains_key(k)
    }
    fn i(&self, k: &str, d: i64) -> i64 {
        self.0.get(k).map(|a| a.i()).unwrap_or(d)
    }
    fn f(&self, k: &str, d: f32) -> f32 {
        self.0.get(k).map(|a| a.f()).unwrap_or(d)
    }
    fn s(&self, k: &str, d: &str) -> String {
        self.0
            .get(k)
            .map(|a| String::from_utf8_lossy(a.s()).into_owned())
            .unwrap_or_else(|| d.to_string())
    }
    fn ints(&self, k: &str) -> Option<Vec<i64>> {
        self.0.get(k).map(|a| a.ints.clone())
    }
    fn t(&self, k: &str) -> Option<&'a onnx::TensorProto> {
        self.0.get(k).and_then(|a| a.t.as_ref())
    }
}

#[derive(Clone)]
struct Entry {
    v: Value,
    k: Option<Tensor>,
}

/// Input positions whose values ops need at import time.
fn static_input(op: &str, i: usize) -> bool {
    match op {
        "Reshape" | "Expand" | "Tile" | "ConstantOfShape" | "Squeeze" | "Unsqueeze" | "Split" | "TopK" | "CumSum"
        | "CumProd" | "OneHot" => i >= 1 || op == "ConstantOfShape",
        "Slice" | "Pad" | "Clip" | "Dropout" => i >= 1,
        "Trilu" => i == 1,
        "Range" => true,
        "Compress" => i == 1,
        "HannWindow" | "HammingWindow" | "BlackmanWindow" => i == 0,
        op if op.starts_with("Reduce") => i >= 1,
        _ => false,
    }
}

/// Names whose *values* the ops of `nodes` need at import time (Reshape
/// targets, Slice bounds, ...), followed back through their producers.
pub(crate) fn values_needed_statically(nodes: &[onnx::NodeProto]) -> HashSet<&str> {
    let mut needs_value = HashSet::new();
    for n in nodes {
        for (i, name) in n.input.iter().enumerate() {
            if static_input(n.op_type(), i) {
                needs_value.insert(name.as_str());
            }
        }
    }
    // A value needed statically needs its producer's inputs too (shape
    // arithmetic). Through Shape and Size only the input's *shape* is
    // needed: a graph input's shape is fixed by its given value without
    // binding it, while an intermediate's shape needs the values of its
    // producer's shape-determining inputs and the shapes of the others.
    let mut needs_shape: HashSet<&str> = HashSet::new();
    for n in nodes.iter().rev() {
        let value = n.output.iter().any(|o| needs_value.contains(o.as_str()));
        let shape = n.output.iter().any(|o| needs_shape.contains(o.as_str()));
        if value && !matches!(n.op_type(), "Shape" | "Size") {
            for i in &n.input {
                needs_value.insert(i.as_str());
            }
            // Control flow reads outer values inside its subgraphs.
            for a in &n.attribute {
                if let Some(sub) = a.g.as_ref() {
                    collect_graph_inputs(sub, &mut needs_value);
                }
            }
        } else if value || shape {
            for (k, i) in n.input.iter().enumerate() {
                if matches!(n.op_type(), "Shape" | "Size") || !static_input(n.op_type(), k) {
                    needs_shape.insert(i.as_str());
                } else {
                    needs_value.insert(i.as_str());
                }
            }
        }
    }
    needs_value
}

struct Ctx {
    /// Set when a node needs run-time control flow (a Loop, a Scan, an If whose
    /// condition is not a constant): the model must then run as a program.
    runtime_control_flow: bool,
    g: Graph,
    env: HashMap<String, Entry>,
    opset: i64,
    base_dir: Option<PathBuf>,
}

type R<T> = std::result::Result<T, String>;

fn core(e: stitch_core::Error) -> String {
    e.to_string()
}

impl Ctx {
    fn op(&mut self, op: Op, ins: &[Value]) -> R<Value> {
        self.g.add_op(op, ins).map_err(core)
    }
    fn ty(&self, v: Value) -> TensorType {
        self.g.ty(v).clone()
    }
    fn scalar_like(&mut self, v: Value, x: f64) -> Value {
        let dt = self.g.ty(v).dtype;
        self.g.scalar(dt, x)
    }
    fn bin(&mut self, op: BinaryOp, a: Value, b: Value) -> R<Value> {
        self.op(Op::Binary(op), &[a, b])
    }
    fn un(&mut self, op: UnaryOp, a: Value) -> R<Value> {
        self.op(Op::Unary(op), &[a])
    }
    fn cast_to(&mut self, v: Value, dt: DType) -> R<Value> {
        if self.g.ty(v).dtype == dt {
            Ok(v)
        } else {
            self.op(Op::Cast(dt), &[v])
        }
    }
    fn concrete(&self, v: Value, what: &str) -> R<Vec<usize>> {
        let t = self.ty(v);
        t.concrete()
            .ok_or_else(|| format!("{what} needs a concrete shape, got {t} (import with known input shapes)"))
    }

    fn input(&self, n: &onnx::NodeProto, i: usize) -> R<Option<Entry>> {
        match n.input.get(i) {
            None => Ok(None),
            Some(s) if s.is_empty() => Ok(None),
            Some(s) => self.env.get(s).cloned().map(Some).ok_or_else(|| {
                format!("input {i} '{s}' is not produced by any earlier node, initializer or graph input")
            }),
        }
    }
    fn req(&self, n: &onnx::NodeProto, i: usize) -> R<Value> {
        self.input(n, i)?
            .map(|e| e.v)
            .ok_or_else(|| format!("missing required input {i}"))
    }
    fn konst(&self, n: &onnx::NodeProto, i: usize) -> R<Option<Tensor>> {
        match self.input(n, i)? {
            None => Ok(None),
            Some(Entry { k: Some(t), .. }) => Ok(Some(t)),
            Some(_) => Err(format!(
                "input {i} '{}' must be a constant (an initializer, a Constant node or computable from them)",
                n.input[i]
            )),
        }
    }
    fn kints(&self, n: &onnx::NodeProto, i: usize) -> R<Option<Vec<i64>>> {
        self.konst(n, i)?.map(|t| ints_of(&t)).transpose()
    }

    fn reduce(&mut self, x: Value, op: ReduceOp, axes: Vec<i64>, keepdims: bool) -> R<Value> {
        self.op(Op::Reduce { op, axes, keepdims }, &[x])
    }

    /// Imports `nodes` in order, binding their outputs in `env`.
    fn import_nodes(&mut self, nodes: &[onnx::NodeProto]) -> Result<()> {
        for (idx, n) in nodes.iter().enumerate() {
            let node_name = if n.name().is_empty() {
                format!("#{idx}")
            } else {
                n.name().to_string()
            };
            let err = |message: String| OnnxError::Node {
                node: node_name.clone(),
                op_type: n.op_type().to_string(),
                message,
            };
            let ins: Vec<Option<Entry>> = (0..n.input.len())
                .map(|i| self.input(n, i))
                .collect::<R<_>>()
                .map_err(err)?;
            let all_const = ins.iter().all(|e| e.as_ref().is_none_or(|e| e.k.is_some()))
                && !matches!(
                    n.op_type(),
                    "Constant" | "Shape" | "Size" | "ConstantOfShape" | "If" | "Loop" | "Scan"
                );
            let outs: Vec<Entry> = if all_const && !ins.is_empty() {
                let given: Vec<(String, Tensor)> = n
                    .input
                    .iter()
                    .zip(&ins)
                    .filter_map(|(name, e)| e.as_ref().and_then(|e| e.k.clone()).map(|k| (name.clone(), k)))
                    .collect();
                let ts = eval_constant(n, &given, self.opset, self.base_dir.clone()).map_err(err)?;
                ts.into_iter()
                    .map(|t| Entry {
                        v: self.g.constant(t.clone()),
                        k: Some(t),
                    })
                    .collect()
            } else {
                let first_new = self.g.nodes().len();
                let vs = self.convert(n).map_err(err)?;
                self.name_after(n, first_new, &vs);
                vs.into_iter()
                    .map(|v| {
                        let k = match &self.g.node(v.node).op {
                            Op::Constant(t) => Some(t.clone()),
                            _ => None,
                        };
                        Entry { v, k }
                    })
                    .collect()
            };
            for (name, e) in n.output.iter().zip(outs) {
                if !name.is_empty() {
                    self.env.insert(name.clone(), e);
                }
            }
        }
        Ok(())
    }

    /// Names the nodes created for ONNX node `n` (those from `first_new` on)
    /// after it, so tools (the viewer, reports) show the model's own names and
    /// scopes: the node of the first output takes the ONNX name
    /// (`/encoder/layer.0/attention/self/query/MatMul`), helper nodes keep their
    /// own name under the same scope.
    fn name_after(&mut self, n: &onnx::NodeProto, first_new: usize, outputs: &[Value]) {
        if n.name().is_empty() {
            return;
        }
        let scope = n.name().rsplit_once('/').map(|(s, _)| s);
        let primary = outputs.first().map(|v| v.node.0 as usize);
        for k in first_new..self.g.nodes().len() {
            let name = if Some(k) == primary {
                n.name().to_string()
            } else {
                let own = self.g.nodes()[k].name.clone();
                match scope {
                    Some(s) => format!("{s}/{own}"),
                    None => own,
                }
            };
            self.g.set_name(stitch_core::NodeId(k as u32), &name);
        }
    }

    /// Converts one node; returns its outputs.
    fn convert(&mut self, n: &onnx::NodeProto) -> R<Vec<Value>> {
        let a = Attrs::new(n);
        let ot = n.op_type();
        let opset = self.opset;
        let unary = |u: UnaryOp| Some(u);
        let u = match ot {
            "Neg" => unary(UnaryOp::Neg),
            "Abs" => unary(UnaryOp::Abs),
            "Exp" => unary(UnaryOp::Exp),
            "Log" => unary(UnaryOp::Log),
            "Sqrt" => unary(UnaryOp::Sqrt),
            "Sin" => unary(UnaryOp::Sin),
            "Cos" => unary(UnaryOp::Cos),
            "Tanh" => unary(UnaryOp::Tanh),
            "Sigmoid" => unary(UnaryOp::Sigmoid),
            "Erf" => unary(UnaryOp::Erf),
            "Relu" => unary(UnaryOp::Relu),
            "Floor" => unary(UnaryOp::Floor),
            "Ceil" => unary(UnaryOp::Ceil),
            "Round" => unary(UnaryOp::Round),
            "Sign" => unary(UnaryOp::Sign),
            "Reciprocal" => unary(UnaryOp::Reciprocal),
            "Not" => unary(UnaryOp::Not),
            _ => None,
        };
        if let Some(u) = u {
            let x = self.req(n, 0)?;
            return Ok(vec![self.un(u, x)?]);
        }
        let b = match ot {
            "Add" => Some(BinaryOp::Add),
            "Sub" => Some(BinaryOp::Sub),
            "Mul" => Some(BinaryOp::Mul),
            "Div" => Some(BinaryOp::Div),
            "Equal" => Some(BinaryOp::Equal),
            "Less" => Some(BinaryOp::Less),
            "LessOrEqual" => Some(BinaryOp::LessEqual),
            "Greater" => Some(BinaryOp::Greater),
            "GreaterOrEqual" => Some(BinaryOp::GreaterEqual),
            "And" => Some(BinaryOp::And),
            "Or" => Some(BinaryOp::Or),
            "Xor" => Some(BinaryOp::Xor),
            "Mod" => Some(if a.i("fmod", 0) != 0 {
                BinaryOp::Fmod
            } else {
                BinaryOp::Mod
            }),
            _ => None,
        };
        if let Some(b) = b {
            let (x, y) = (self.req(n, 0)?, self.req(n, 1)?);
            return Ok(vec![self.bin(b, x, y)?]);
        }
        let out = match ot {
            "Identity" | "Dropout" => {
                let x = self.req(n, 0)?;
                let training = ot == "Dropout"
                    && (a.i("is_test", 1) == 0
                        || self
                            .konst(n, 2)
                            .ok()
                            .flatten()
                            .is_some_and(|t| t.to_f64_vec().first() == Some(&1.0)));
                if training {
                    return Err("training-mode Dropout (random) is not supported".into());
                }
                if n.output.len() > 1 && !n.output[1].is_empty() {
                    let shape = self.concrete(x, "Dropout's mask")?;
                    let m = self.g.constant(
                        Tensor::from_f64(DType::Bool, &vec![1.0; shape.iter().product()], &shape).map_err(core)?,
                    );
                    return Ok(vec![x, m]);
                }
                x
            }
            "Pow" => {
                let (x, y) = (self.req(n, 0)?, self.req(n, 1)?);
                let dt = self.g.ty(x).dtype;
                let y = self.cast_to(y, dt)?;
                self.bin(BinaryOp::Pow, x, y)?
            }
            "Max" | "Min" | "Sum" | "Mean" => {
                let op = match ot {
                    "Max" => BinaryOp::Max,
                    "Min" => BinaryOp::Min,
                    _ => BinaryOp::Add,
                };
                let mut acc = self.req(n, 0)?;
                for i in 1..n.input.len() {
                    let y = self.req(n, i)?;
                    acc = self.bin(op, acc, y)?;
                }
                if ot == "Mean" {
                    let c = self.scalar_like(acc, n.input.len() as f64);
                    acc = self.bin(BinaryOp::Div, acc, c)?;
                }
                acc
            }
            "Where" => {
                let (c, x, y) = (self.req(n, 0)?, self.req(n, 1)?, self.req(n, 2)?);
                self.op(Op::Where, &[c, x, y])?
            }
            "Cast" => {
                let x = self.req(n, 0)?;
                let to = a.i("to", 0) as i32;
                let dt = dtype_from_onnx(to).ok_or_else(|| format!("cast to unsupported dtype {}", dtype_name(to)))?;
                self.op(Op::Cast(dt), &[x])?
            }
            "CastLike" => {
                let (x, y) = (self.req(n, 0)?, self.req(n, 1)?);
                let dt = self.g.ty(y).dtype;
                match self.input(n, 0)?.and_then(|e| e.k) {
                    // Only the dtype of `like` matters: a constant input stays a constant.
                    Some(k) => {
                        let t = fold(Op::Cast(dt), &[k])?;
                        self.g.constant(t)
                    }
                    None => self.op(Op::Cast(dt), &[x])?,
                }
            }
            "IsNaN" => {
                let x = self.req(n, 0)?;
                self.bin(BinaryOp::NotEqual, x, x)?
            }
            "IsInf" => {
                let x = self.req(n, 0)?;
                let ax = self.un(UnaryOp::Abs, x)?;
                let inf = self.scalar_like(x, f64::INFINITY);
                let is = self.bin(BinaryOp::Equal, ax, inf)?;
                let (pos, neg) = (a.i("detect_positive", 1) != 0, a.i("detect_negative", 1) != 0);
                if pos && neg {
                    is
                } else {
                    let zero = self.scalar_like(x, 0.0);
                    let side = self.bin(if pos { BinaryOp::Greater } else { BinaryOp::Less }, x, zero)?;
                    let side = if pos || neg {
                        side
                    } else {
                        self.bin(BinaryOp::NotEqual, x, x)?
                    };
                    self.bin(BinaryOp::And, is, side)?
                }
            }
            "Clip" => {
                let x = self.req(n, 0)?;
                let (lo, hi) = if opset >= 11 {
                    let lo = self.konst(n, 1)?.and_then(|t| t.to_f64_vec().first().copied());
                    let hi = self.konst(n, 2)?.and_then(|t| t.to_f64_vec().first().copied());
                    (lo, hi)
                } else {
                    (
                        a.has("min").then(|| a.f("min", 0.0) as f64),
                        a.has("max").then(|| a.f("max", 0.0) as f64),
                    )
                };
                match (lo, hi) {
                    (Some(l), Some(h)) if l > h => {
                        // ONNX: min(max(x, lo), hi) — everything becomes hi.
                        let l = self.scalar_like(x, l);
                        let h = self.scalar_like(x, h);
                        let y = self.bin(BinaryOp::Max, x, l)?;
                        self.bin(BinaryOp::Min, y, h)?
                    }
                    _ => self.op(Op::Clamp { min: lo, max: hi }, &[x])?,
                }
            }
            "Attention" => return self.attention(n, &a),
            "CumProd" => {
                // Exact for integers too: each position is the product of its prefix (O(L^2) work).
                let x = self.req(n, 0)?;
                let axis = *self.kints(n, 1)?.ok_or("missing axis")?.first().ok_or("empty axis")?;
                let t = self.ty(x);
                let ax = stitch_core::shape::normalize_axis(axis, t.shape.rank()).ok_or("axis out of range")?;
                let len = t.shape.dims()[ax]
                    .known()
                    .ok_or("CumProd needs a known size along its axis")?;
                if len > 4096 {
                    return Err(format!(
                        "CumProd along an axis of {len} elements is not supported (max 4096)"
                    ));
                }
                let (excl, rev) = (a.i("exclusive", 0) != 0, a.i("reverse", 0) != 0);
                let mut parts = vec![];
                for i in 0..len as i64 {
                    let (lo, hi) = match (rev, excl) {
                        (false, false) => (0, i + 1),
                        (false, true) => (0, i),
                        (true, false) => (i, len as i64),
                        (true, true) => (i + 1, len as i64),
                    };
                    let sl = self.op(
                        Op::Slice {
                            starts: vec![lo],
                            ends: vec![hi],
                            axes: vec![ax as i64],
                            steps: vec![],
                        },
                        &[x],
                    )?;
                    parts.push(self.reduce(sl, ReduceOp::Prod, vec![ax as i64], true)?);
                }
                self.op(Op::Concat { axis: ax as i64 }, &parts)?
            }
            "Scatter" => {
                let (x, i, u) = (self.req(n, 0)?, self.req(n, 1)?, self.req(n, 2)?);
                self.op(
                    Op::ScatterElements {
                        axis: a.i("axis", 0),
                        reduction: ScatterReduction::None,
                    },
                    &[x, i, u],
                )?
            }
            "Compress" => {
                let x = self.req(n, 0)?;
                let cond = self.konst(n, 1)?.ok_or("missing condition")?;
                let keep: Vec<i64> = cond
                    .to_f64_vec()
                    .iter()
                    .enumerate()
                    .filter(|(_, v)| **v != 0.0)
                    .map(|(i, _)| i as i64)
                    .collect();
                let (x, axis) = if a.has("axis") {
                    (x, a.i("axis", 0))
                } else {
                    (self.op(Op::Reshape { shape: vec![-1] }, &[x])?, 0)
                };
                let len = keep.len();
                let idx = self.g.constant(Tensor::from_vec(keep, &[len]).map_err(core)?);
                self.op(Op::Gather { axis }, &[x, idx])?
            }
            "If" => {
                let cond = match self.input(n, 0)? {
                    None => return Err("missing cond".into()),
                    Some(Entry { k: Some(t), .. }) => t,
                    Some(_) => {
                        self.runtime_control_flow = true;
                        return Err("the condition is computed at run time".into());
                    }
                };
                let c = *cond.to_f64_vec().first().ok_or("empty cond")?;
                let branch = if c != 0.0 { "then_branch" } else { "else_branch" };
                let g =
                    a.0.get(branch)
                        .and_then(|b| b.g.as_ref())
                        .ok_or_else(|| format!("missing {branch}"))?;
                for t in &g.initializer {
                    let tensor = tensor_from_proto(t, self.base_dir.as_deref())?;
                    let v = self.g.constant(tensor.clone());
                    self.env.insert(t.name().to_string(), Entry { v, k: Some(tensor) });
                }
                self.import_nodes(&g.node).map_err(|e| format!("in {branch}: {e}"))?;
                return g
                    .output
                    .iter()
                    .map(|o| {
                        self.env
                            .get(o.name())
                            .map(|e| e.v)
                            .ok_or_else(|| format!("{branch} output '{}' is not produced", o.name()))
                    })
                    .collect();
            }
            "Tan" | "Sinh" | "Cosh" | "Asinh" | "Acosh" | "Atanh" => {
                let x = self.req(n, 0)?;
                let one = self.scalar_like(x, 1.0);
                let half = self.scalar_like(x, 0.5);
                match ot {
                    "Tan" => {
                        let (sn, cs) = (self.un(UnaryOp::Sin, x)?, self.un(UnaryOp::Cos, x)?);
                        self.bin(BinaryOp::Div, sn, cs)?
                    }
                    "Sinh" | "Cosh" => {
                        let e = self.un(UnaryOp::Exp, x)?;
                        let nx = self.un(UnaryOp::Neg, x)?;
                        let en = self.un(UnaryOp::Exp, nx)?;
                        let d = self.bin(if ot == "Sinh" { BinaryOp::Sub } else { BinaryOp::Add }, e, en)?;
                        self.bin(BinaryOp::Mul, d, half)?
                    }
                    "Asinh" | "Acosh" => {
                        let sq = self.bin(BinaryOp::Mul, x, x)?;
                        let r = self.bin(if ot == "Asinh" { BinaryOp::Add } else { BinaryOp::Sub }, sq, one)?;
                        let r = self.un(UnaryOp::Sqrt, r)?;
                        let t = self.bin(BinaryOp::Add, x, r)?;
                        self.un(UnaryOp::Log, t)?
                    }
                    _ => {
                        let num = self.bin(BinaryOp::Add, one, x)?;
                        let den = self.bin(BinaryOp::Sub, one, x)?;
                        let q = self.bin(BinaryOp::Div, num, den)?;
                        let l = self.un(UnaryOp::Log, q)?;
                        self.bin(BinaryOp::Mul, l, half)?
                    }
                }
            }
            "Shrink" => {
                let x = self.req(n, 0)?;
                let lambd = self.scalar_like(x, a.f("lambd", 0.5) as f64);
                let bias = self.scalar_like(x, a.f("bias", 0.0) as f64);
                let nl = self.scalar_like(x, -(a.f("lambd", 0.5) as f64));
                let zero = self.scalar_like(x, 0.0);
                let lo = self.bin(BinaryOp::Less, x, nl)?;
                let hi = self.bin(BinaryOp::Greater, x, lambd)?;
                let xp = self.bin(BinaryOp::Add, x, bias)?;
                let xm = self.bin(BinaryOp::Sub, x, bias)?;
                let y = self.op(Op::Where, &[hi, xm, zero])?;
                self.op(Op::Where, &[lo, xp, y])?
            }
            "Swish" => {
                let x = self.req(n, 0)?;
                let al = self.scalar_like(x, a.f("alpha", 1.0) as f64);
                let ax = self.bin(BinaryOp::Mul, x, al)?;
                let s = self.un(UnaryOp::Sigmoid, ax)?;
                self.bin(BinaryOp::Mul, x, s)?
            }
            "EyeLike" => {
                let x = self.req(n, 0)?;
                let s = self.concrete(x, "EyeLike")?;
                if s.len() != 2 {
                    return Err("EyeLike needs a 2-D input".into());
                }
                let dt = if a.has("dtype") {
                    let c = a.i("dtype", 1) as i32;
                    dtype_from_onnx(c).ok_or_else(|| format!("unsupported dtype {}", dtype_name(c)))?
                } else {
                    self.ty(x).dtype
                };
                let k = a.i("k", 0);
                let v: Vec<f64> = (0..s[0] * s[1])
                    .map(|i| {
                        if (i % s[1]) as i64 - (i / s[1]) as i64 == k {
                            1.0
                        } else {
                            0.0
                        }
                    })
                    .collect();
                self.g.constant(Tensor::from_f64(dt, &v, &s).map_err(core)?)
            }
            "SpaceToDepth" | "DepthToSpace" => {
                let x = self.req(n, 0)?;
                let s = self.concrete(x, ot)?;
                if s.len() != 4 {
                    return Err(format!("{ot} needs a 4-D input"));
                }
                let b = a.i("blocksize", 0);
                if b <= 0 {
                    return Err("blocksize must be positive".into());
                }
                let (nn, c, h, w) = (s[0] as i64, s[1] as i64, s[2] as i64, s[3] as i64);
                if ot == "SpaceToDepth" {
                    let r = self.op(
                        Op::Reshape {
                            shape: vec![nn, c, h / b, b, w / b, b],
                        },
                        &[x],
                    )?;
                    let t = self.op(
                        Op::Transpose {
                            perm: vec![0, 3, 5, 1, 2, 4],
                        },
                        &[r],
                    )?;
                    self.op(
                        Op::Reshape {
                            shape: vec![nn, c * b * b, h / b, w / b],
                        },
                        &[t],
                    )?
                } else {
                    let crd = a.s("mode", "DCR") == "CRD";
                    let (shape, perm) = if crd {
                        (vec![nn, c / (b * b), b, b, h, w], vec![0, 1, 4, 2, 5, 3])
                    } else {
                        (vec![nn, b, b, c / (b * b), h, w], vec![0, 3, 4, 1, 5, 2])
                    };
                    let r = self.op(Op::Reshape { shape }, &[x])?;
                    let t = self.op(Op::Transpose { perm }, &[r])?;
                    self.op(
                        Op::Reshape {
                            shape: vec![nn, c / (b * b), h * b, w * b],
                        },
                        &[t],
                    )?
                }
            }
            "InstanceNormalization" | "MeanVarianceNormalization" => {
                let x = self.req(n, 0)?;
                let rank = self.ty(x).shape.rank() as i64;
                let axes = if ot == "InstanceNormalization" {
                    (2..rank).collect()
                } else {
                    a.ints("axes").unwrap_or(vec![0, 2, 3])
                };
                let mean = self.reduce(x, ReduceOp::Mean, axes.clone(), true)?;
                let d = self.bin(BinaryOp::Sub, x, mean)?;
                let sq = self.bin(BinaryOp::Mul, d, d)?;
                let var = self.reduce(sq, ReduceOp::Mean, axes, true)?;
                let eps = if ot == "InstanceNormalization" {
                    a.f("epsilon", 1e-5) as f64
                } else {
                    1e-9
                };
                let eps = self.scalar_like(x, eps);
                let ve = self.bin(BinaryOp::Add, var, eps)?;
                let sd = self.un(UnaryOp::Sqrt, ve)?;
                let y = self.bin(BinaryOp::Div, d, sd)?;
                if ot == "InstanceNormalization" {
                    let axes: Vec<i64> = (1..rank - 1).collect();
                    let sc = self.req(n, 1)?;
                    let bi = self.req(n, 2)?;
                    let sc = self.op(Op::Unsqueeze { axes: axes.clone() }, &[sc])?;
                    let bi = self.op(Op::Unsqueeze { axes }, &[bi])?;
                    let y = self.bin(BinaryOp::Mul, y, sc)?;
                    self.bin(BinaryOp::Add, y, bi)?
                } else {
                    y
                }
            }
            "Hardmax" => {
                let x = self.req(n, 0)?;
                let t = self.ty(x);
                let axis = a.i("axis", if opset >= 13 { -1 } else { 1 });
                if opset < 13 && axis != -1 && axis != t.shape.rank() as i64 - 1 {
                    return Err("Hardmax before opset 13 over flattened axes is not supported".into());
                }
                let ax = stitch_core::shape::normalize_axis(axis, t.shape.rank()).ok_or("axis out of range")?;
                let depth = t.shape.dims()[ax]
                    .known()
                    .ok_or("Hardmax needs a known size along its axis")?;
                let i = self.op(
                    Op::ArgReduce {
                        op: stitch_core::ops::ArgReduceOp::ArgMax,
                        axis,
                        keepdims: false,
                        select_last_index: false,
                    },
                    &[x],
                )?;
                self.op(
                    Op::OneHot {
                        depth,
                        axis: ax as i64,
                        dtype: t.dtype,
                        on_value: 1.0,
                        off_value: 0.0,
                    },
                    &[i],
                )?
            }
            "LpNormalization" => {
                let x = self.req(n, 0)?;
                let axis = a.i("axis", -1);
                let nrm = if a.i("p", 2) == 1 {
                    let ab = self.un(UnaryOp::Abs, x)?;
                    self.reduce(ab, ReduceOp::Sum, vec![axis], true)?
                } else {
                    let sq = self.bin(BinaryOp::Mul, x, x)?;
                    let s = self.reduce(sq, ReduceOp::Sum, vec![axis], true)?;
                    self.un(UnaryOp::Sqrt, s)?
                };
                // A zero norm means an all-zero slice: divide by 1 to keep it zero.
                let zero = self.scalar_like(x, 0.0);
                let one = self.scalar_like(x, 1.0);
                let is0 = self.bin(BinaryOp::Equal, nrm, zero)?;
                let nrm = self.op(Op::Where, &[is0, one, nrm])?;
                self.bin(BinaryOp::Div, x, nrm)?
            }
            "HannWindow" | "HammingWindow" | "BlackmanWindow" => {
                let size = *self.kints(n, 0)?.ok_or("missing size")?.first().ok_or("empty size")?;
                let size = usize::try_from(size).map_err(|_| format!("negative size {size}"))?;
                if size > MAX_FOLD_ELEMENTS {
                    return Err(format!("window size {size} is too large"));
                }
                let periodic = a.i("periodic", 1) != 0;
                let nn = if periodic { size as f64 } else { size as f64 - 1.0 };
                let tau = 2.0 * std::f64::consts::PI;
                let v: Vec<f64> = (0..size)
                    .map(|i| {
                        let t = tau * i as f64 / nn;
                        match ot {
                            "HannWindow" => 0.5 - 0.5 * t.cos(),
                            "HammingWindow" => 25.0 / 46.0 - (21.0 / 46.0) * t.cos(),
                            _ => 0.42 - 0.5 * t.cos() + 0.08 * (2.0 * t).cos(),
                        }
                    })
                    .collect();
                let c = a.i("output_datatype", 1) as i32;
                let dt = dtype_from_onnx(c).ok_or_else(|| format!("unsupported dtype {}", dtype_name(c)))?;
                self.g.constant(Tensor::from_f64(dt, &v, &[size]).map_err(core)?)
            }
            "GatherND" => {
                let (x, idx) = (self.req(n, 0)?, self.req(n, 1)?);
                if a.i("batch_dims", 0) != 0 {
                    return Err("GatherND with batch_dims > 0 is not supported".into());
                }
                let ds = self.concrete(x, "GatherND")?;
                let is = self.concrete(idx, "GatherND")?;
                let k = *is.last().ok_or("indices must have rank >= 1")?;
                if k > ds.len() || k == 0 {
                    return Err(format!(
                        "indices' last dim {k} must be in 1..={} (data {ds:?})",
                        ds.len()
                    ));
                }
                let mut strides = vec![1i64; k];
                for j in (0..k.saturating_sub(1)).rev() {
                    strides[j] = strides[j + 1] * ds[j + 1] as i64;
                }
                let dims: Vec<i64> = ds[..k].iter().map(|&d| d as i64).collect();
                let idx = self.cast_to(idx, DType::I64)?;
                let dims_c = self.g.constant(Tensor::from_vec(dims, &[k]).map_err(core)?);
                let zero = self.g.scalar(DType::I64, 0.0);
                let neg = self.bin(BinaryOp::Less, idx, zero)?;
                let wrapped = self.bin(BinaryOp::Add, idx, dims_c)?;
                let idx = self.op(Op::Where, &[neg, wrapped, idx])?;
                let st = self.g.constant(Tensor::from_vec(strides, &[k]).map_err(core)?);
                let flat = self.bin(BinaryOp::Mul, idx, st)?;
                let flat = self.reduce(flat, ReduceOp::Sum, vec![-1], false)?;
                let mut shape = vec![ds[..k].iter().product::<usize>() as i64];
                shape.extend(ds[k..].iter().map(|&d| d as i64));
                let x2 = self.op(Op::Reshape { shape }, &[x])?;
                self.op(Op::Gather { axis: 0 }, &[x2, flat])?
            }
            "NegativeLogLikelihoodLoss" => {
                let (x, t) = (self.req(n, 0)?, self.req(n, 1)?);
                let w = self.input(n, 2)?.map(|e| e.v);
                self.nll(x, t, w, &a)?
            }
            "SoftmaxCrossEntropyLoss" => {
                let (x, t) = (self.req(n, 0)?, self.req(n, 1)?);
                let w = self.input(n, 2)?.map(|e| e.v);
                let lp = self.op(Op::LogSoftmax { axis: 1 }, &[x])?;
                let loss = self.nll(lp, t, w, &a)?;
                return Ok(vec![loss, lp]);
            }
            "RMSNormalization" => {
                let (x, scale) = (self.req(n, 0)?, self.req(n, 1)?);
                let t = self.ty(x);
                let rank = t.shape.rank() as i64;
                let axis = a.i("axis", -1);
                let ax = if axis < 0 { axis + rank } else { axis };
                if !(0..rank).contains(&ax) {
                    return Err(format!("axis {axis} out of range for {t}"));
                }
                let stash = dtype_from_onnx(a.i("stash_type", 1) as i32).unwrap_or(DType::F32);
                let xs = self.cast_to(x, stash)?;
                let sq = self.bin(BinaryOp::Mul, xs, xs)?;
                let ms = self.reduce(sq, ReduceOp::Mean, (ax..rank).collect(), true)?;
                let eps = self.g.scalar(stash, a.f("epsilon", 1e-5) as f64);
                let ms = self.bin(BinaryOp::Add, ms, eps)?;
                let rms = self.un(UnaryOp::Sqrt, ms)?;
                let y = self.bin(BinaryOp::Div, xs, rms)?;
                let y = self.cast_to(y, t.dtype)?;
                self.bin(BinaryOp::Mul, y, scale)?
            }
            "Trilu" => {
                let x = self.req(n, 0)?;
                let k = self.kints(n, 1)?.and_then(|v| v.first().copied()).unwrap_or(0);
                let shape = self.concrete(x, "Trilu")?;
                if shape.len() < 2 {
                    return Err("Trilu needs rank >= 2".into());
                }
                let (r, c) = (shape[shape.len() - 2], shape[shape.len() - 1]);
                let upper = a.i("upper", 1) != 0;
                let mut m = vec![0f64; r * c];
                for i in 0..r {
                    for j in 0..c {
                        let d = j as i64 - i as i64;
                        m[i * c + j] = if (upper && d >= k) || (!upper && d <= k) {
                            1.0
                        } else {
                            0.0
                        };
                    }
                }
                let mask = self
                    .g
                    .constant(Tensor::from_f64(DType::Bool, &m, &[r, c]).map_err(core)?);
                let zero = self.scalar_like(x, 0.0);
                self.op(Op::Where, &[mask, x, zero])?
            }
            "LeakyRelu" | "Elu" | "Selu" | "Celu" | "ThresholdedRelu" | "HardSigmoid" | "HardSwish" | "Softplus"
            | "Softsign" | "Mish" | "PRelu" | "Gelu" => self.activation(n, &a)?,
            "MatMul" => {
                let (x, y) = (self.req(n, 0)?, self.req(n, 1)?);
                self.op(
                    Op::MatMul {
                        transpose_a: false,
                        transpose_b: false,
                    },
                    &[x, y],
                )?
            }
            "Gemm" => {
                let (x, y) = (self.req(n, 0)?, self.req(n, 1)?);
                let mut ins = vec![x, y];
                if let Some(c) = self.input(n, 2)? {
                    ins.push(c.v);
                }
                self.op(
                    Op::Gemm {
                        alpha: a.f("alpha", 1.0) as f64,
                        beta: a.f("beta", 1.0) as f64,
                        transpose_a: a.i("transA", 0) != 0,
                        transpose_b: a.i("transB", 0) != 0,
                        activation: None,
                    },
                    &ins,
                )?
            }
            "Softmax" | "LogSoftmax" => {
                let x = self.req(n, 0)?;
                let rank = self.ty(x).shape.rank() as i64;
                let axis = a.i("axis", if opset >= 13 { -1 } else { 1 });
                let ax = if axis < 0 { axis + rank } else { axis };
                let mk = |axis| {
                    if ot == "Softmax" {
                        Op::Softmax { axis }
                    } else {
                        Op::LogSoftmax { axis }
                    }
                };
                if opset >= 13 || ax == rank - 1 {
                    self.op(mk(axis), &[x])?
                } else {
                    // Older opsets: softmax over the flattened trailing axes.
                    let shape = self.concrete(x, "Softmax (opset < 13)")?;
                    let ax = usize::try_from(ax).map_err(|_| format!("axis {axis} out of range"))?;
                    let outer: usize = shape[..ax.min(shape.len())].iter().product();
                    let inner: usize = shape[ax.min(shape.len())..].iter().product();
                    let f = self.op(
                        Op::Reshape {
                            shape: vec![outer as i64, inner as i64],
                        },
                        &[x],
                    )?;
                    let s = self.op(mk(1), &[f])?;
                    self.op(
                        Op::Reshape {
                            shape: shape.iter().map(|&d| d as i64).collect(),
                        },
                        &[s],
                    )?
                }
            }
            "LayerNormalization" => return self.layer_norm(n, &a),
            "BatchNormalization" => {
                let x = self.req(n, 0)?;
                let rank = self.ty(x).shape.rank();
                let mut p = vec![];
                for i in 1..5 {
                    let v = self.req(n, i)?;
                    // [C] → [C, 1, 1, ...] to broadcast over NC...
                    let axes: Vec<i64> = (1..rank.saturating_sub(1) as i64).collect();
                    p.push(if rank > 2 {
                        self.op(Op::Unsqueeze { axes }, &[v])?
                    } else {
                        v
                    });
                }
                let eps = self.scalar_like(x, a.f("epsilon", 1e-5) as f64);
                let var = self.bin(BinaryOp::Add, p[3], eps)?;
                let sd = self.un(UnaryOp::Sqrt, var)?;
                let d = self.bin(BinaryOp::Sub, x, p[2])?;
                let d = self.bin(BinaryOp::Div, d, sd)?;
                let d = self.bin(BinaryOp::Mul, d, p[0])?;
                self.bin(BinaryOp::Add, d, p[1])?
            }
            "Reshape" => {
                let x = self.req(n, 0)?;
                let shape = self.kints(n, 1)?.ok_or("missing shape")?;
                if a.i("allowzero", 0) != 0 && shape.contains(&0) {
                    // Literal zeros: the result is empty, so it is a constant of that shape.
                    if shape.iter().any(|&d| d < 0) {
                        return Err(format!("allowzero shape {shape:?} with 0 must not hold negative dims"));
                    }
                    let xs = self.concrete(x, "Reshape with allowzero")?;
                    if xs.iter().product::<usize>() != 0 {
                        return Err(format!("cannot reshape {xs:?} to the empty shape {shape:?}"));
                    }
                    let dims: Vec<usize> = shape.iter().map(|&d| d as usize).collect();
                    let dt = self.ty(x).dtype;
                    self.g.constant(Tensor::zeros(dt, &dims))
                } else {
                    self.op(Op::Reshape { shape }, &[x])?
                }
            }
            "Flatten" => {
                let x = self.req(n, 0)?;
                let shape = self.concrete(x, "Flatten")?;
                let r = shape.len() as i64;
                let axis = a.i("axis", 1);
                let ax = if axis < 0 { axis + r } else { axis };
                if !(0..=r).contains(&ax) {
                    return Err(format!("axis {axis} out of range for rank {r}"));
                }
                let outer: usize = shape[..ax as usize].iter().product();
                let inner: usize = shape[ax as usize..].iter().product();
                self.op(
                    Op::Reshape {
                        shape: vec![outer as i64, inner as i64],
                    },
                    &[x],
                )?
            }
            "Transpose" => {
                let x = self.req(n, 0)?;
                let perm = a
                    .ints("perm")
                    .unwrap_or_default()
                    .into_iter()
                    .map(|p| usize::try_from(p).map_err(|_| format!("negative perm entry {p}")))
                    .collect::<R<Vec<_>>>()?;
                self.op(Op::Transpose { perm }, &[x])?
            }
            "Expand" => {
                let x = self.req(n, 0)?;
                let shape = self
                    .kints(n, 1)?
                    .ok_or("missing shape")?
                    .into_iter()
                    .map(|d| usize::try_from(d).map_err(|_| format!("negative dim {d} in shape")))
                    .collect::<R<Vec<_>>>()?;
                self.op(Op::Expand { shape }, &[x])?
            }
            "Squeeze" | "Unsqueeze" => {
                let x = self.req(n, 0)?;
                let axes = if opset >= 13 {
                    self.kints(n, 1)?.unwrap_or_default()
                } else {
                    a.ints("axes").unwrap_or_default()
                };
                if ot == "Squeeze" {
                    self.op(Op::Squeeze { axes }, &[x])?
                } else {
                    self.op(Op::Unsqueeze { axes }, &[x])?
                }
            }
            "Slice" => {
                let x = self.req(n, 0)?;
                let (starts, ends, axes, steps) = if opset >= 10 {
                    (
                        self.kints(n, 1)?.ok_or("missing starts")?,
                        self.kints(n, 2)?.ok_or("missing ends")?,
                        self.kints(n, 3)?.unwrap_or_default(),
                        self.kints(n, 4)?.unwrap_or_default(),
                    )
                } else {
                    (
                        a.ints("starts").unwrap_or_default(),
                        a.ints("ends").unwrap_or_default(),
                        a.ints("axes").unwrap_or_default(),
                        vec![],
                    )
                };
                self.op(
                    Op::Slice {
                        starts,
                        ends,
                        axes,
                        steps,
                    },
                    &[x],
                )?
            }
            "Concat" => {
                let ins = (0..n.input.len()).map(|i| self.req(n, i)).collect::<R<Vec<_>>>()?;
                self.op(Op::Concat { axis: a.i("axis", 0) }, &ins)?
            }
            "Split" => {
                let x = self.req(n, 0)?;
                let axis = a.i("axis", 0);
                let shape = self.ty(x).shape;
                let rank = shape.rank() as i64;
                let ax = if axis < 0 { axis + rank } else { axis };
                let dim = usize::try_from(ax)
                    .ok()
                    .and_then(|i| shape.dims().get(i))
                    .ok_or_else(|| format!("axis {axis} out of range for {shape}"))?
                    .known();
                let split = if opset >= 13 {
                    self.kints(n, 1)?
                } else {
                    a.ints("split")
                };
                let sizes: Vec<usize> = match split {
                    Some(s) if !s.is_empty() => s
                        .into_iter()
                        .map(|d| usize::try_from(d).map_err(|_| format!("negative split size {d}")))
                        .collect::<R<_>>()?,
                    _ => {
                        let d = dim.ok_or("Split needs a known size along its axis")?;
                        let parts = if a.has("num_outputs") {
                            a.i("num_outputs", 1) as usize
                        } else {
                            n.output.len()
                        };
                        if parts == 0 {
                            return Err("zero outputs".into());
                        }
                        let chunk = d.div_ceil(parts);
                        (0..parts).map(|i| chunk.min(d.saturating_sub(i * chunk))).collect()
                    }
                };
                return self.g.add_node(Op::Split { axis, sizes }, &[x]).map_err(core);
            }
            "Tile" => {
                let x = self.req(n, 0)?;
                let repeats = self
                    .kints(n, 1)?
                    .ok_or("missing repeats")?
                    .into_iter()
                    .map(|d| usize::try_from(d).map_err(|_| format!("negative repeat {d}")))
                    .collect::<R<Vec<_>>>()?;
                self.op(Op::Tile { repeats }, &[x])?
            }
            "Pad" => {
                let x = self.req(n, 0)?;
                let rank = self.ty(x).shape.rank();
                let mode = match a.s("mode", "constant").as_str() {
                    "constant" => PadMode::Constant,
                    "reflect" => PadMode::Reflect,
                    "edge" => PadMode::Edge,
                    m => return Err(format!("pad mode '{m}' is not supported")),
                };
                let (pads, value, axes) = if opset >= 11 {
                    let pads = self.kints(n, 1)?.ok_or("missing pads")?;
                    let value = self
                        .konst(n, 2)?
                        .and_then(|t| t.to_f64_vec().first().copied())
                        .unwrap_or(0.0);
                    (pads, value, self.kints(n, 3)?)
                } else {
                    (a.ints("pads").unwrap_or_default(), a.f("value", 0.0) as f64, None)
                };
                let pads = match axes {
                    None => pads,
                    Some(axes) => {
                        if pads.len() != 2 * axes.len() {
                            return Err(format!("pads {pads:?} must have two entries per axis {axes:?}"));
                        }
                        let mut full = vec![0i64; 2 * rank];
                        for (j, &ax) in axes.iter().enumerate() {
                            let i = stitch_core::shape::normalize_axis(ax, rank)
                                .ok_or_else(|| format!("axis {ax} out of range"))?;
                            full[i] = pads[j];
                            full[rank + i] = pads[axes.len() + j];
                        }
                        full
                    }
                };
                self.op(Op::Pad { pads, mode, value }, &[x])?
            }
            "Gather" => {
                let (x, i) = (self.req(n, 0)?, self.req(n, 1)?);
                self.op(Op::Gather { axis: a.i("axis", 0) }, &[x, i])?
            }
            "GatherElements" => {
                let (x, i) = (self.req(n, 0)?, self.req(n, 1)?);
                self.op(Op::GatherElements { axis: a.i("axis", 0) }, &[x, i])?
            }
            "ScatterElements" => {
                let (x, i, u) = (self.req(n, 0)?, self.req(n, 1)?, self.req(n, 2)?);
                let reduction = match a.s("reduction", "none").as_str() {
                    "none" => ScatterReduction::None,
                    "add" => ScatterReduction::Add,
                    "mul" => ScatterReduction::Mul,
                    "max" => ScatterReduction::Max,
                    "min" => ScatterReduction::Min,
                    r => return Err(format!("unknown reduction '{r}'")),
                };
                self.op(
                    Op::ScatterElements {
                        axis: a.i("axis", 0),
                        reduction,
                    },
                    &[x, i, u],
                )?
            }
            "OneHot" => {
                let x = self.req(n, 0)?;
                let depth = self.konst(n, 1)?.ok_or("missing depth")?.to_f64_vec();
                let depth = *depth.first().ok_or("empty depth")?;
                let values = self.konst(n, 2)?.ok_or("missing values")?;
                let vv = values.to_f64_vec();
                if vv.len() != 2 {
                    return Err("values must hold [off, on]".into());
                }
                let xi = self.cast_to(x, DType::I64)?;
                // Negative indices count from the end (depth + i).
                let zero = self.g.scalar(DType::I64, 0.0);
                let neg = self.bin(BinaryOp::Less, xi, zero)?;
                let d = self.g.scalar(DType::I64, depth);
                let wrapped = self.bin(BinaryOp::Add, xi, d)?;
                let xi = self.op(Op::Where, &[neg, wrapped, xi])?;
                self.op(
                    Op::OneHot {
                        depth: depth as usize,
                        axis: a.i("axis", -1),
                        dtype: values.dtype(),
                        on_value: vv[1],
                        off_value: vv[0],
                    },
                    &[xi],
                )?
            }
            "Range" => {
                let s = self.konst(n, 0)?.ok_or("missing start")?;
                let l = self.konst(n, 1)?.ok_or("missing limit")?;
                let d = self.konst(n, 2)?.ok_or("missing delta")?;
                let f = |t: &Tensor| t.to_f64_vec().first().copied().ok_or("empty scalar");
                self.op(
                    Op::Range {
                        start: f(&s)?,
                        limit: f(&l)?,
                        delta: f(&d)?,
                        dtype: s.dtype(),
                    },
                    &[],
                )?
            }
            "Shape" => {
                let x = self.req(n, 0)?;
                let shape = self.concrete(x, "Shape")?;
                let r = shape.len() as i64;
                let clampi = |v: i64| (if v < 0 { v + r } else { v }).clamp(0, r) as usize;
                let s = clampi(a.i("start", 0));
                let e = clampi(a.i("end", r));
                let v: Vec<i64> = shape[s..e.max(s)].iter().map(|&d| d as i64).collect();
                let len = v.len();
                self.g.constant(Tensor::from_vec(v, &[len]).map_err(core)?)
            }
            "Size" => {
                let x = self.req(n, 0)?;
                let shape = self.concrete(x, "Size")?;
                self.g.constant(Tensor::scalar(shape.iter().product::<usize>() as i64))
            }
            "Constant" => {
                let t = if let Some(t) = a.t("value") {
                    tensor_from_proto(t, self.base_dir.as_deref())?
                } else if a.has("value_float") {
                    Tensor::scalar(a.f("value_float", 0.0))
                } else if a.has("value_int") {
                    Tensor::scalar(a.i("value_int", 0))
                } else if let Some(v) = a.0.get("value_floats") {
                    Tensor::from_vec(v.floats.clone(), &[v.floats.len()]).map_err(core)?
                } else if let Some(v) = a.ints("value_ints") {
                    let len = v.len();
                    Tensor::from_vec(v, &[len]).map_err(core)?
                } else {
                    return Err(
                        "Constant without a supported value attribute (sparse and string values are not supported)"
                            .into(),
                    );
                };
                self.g.constant(t)
            }
            "ConstantOfShape" => {
                let shape = self.kints(n, 0)?.ok_or("missing shape")?;
                let shape = shape
                    .into_iter()
                    .map(|d| usize::try_from(d).map_err(|_| format!("negative dim {d}")))
                    .collect::<R<Vec<_>>>()?;
                let (dt, val) = match a.t("value") {
                    Some(t) => {
                        let t = tensor_from_proto(t, None)?;
                        (t.dtype(), t.to_f64_vec().first().copied().unwrap_or(0.0))
                    }
                    None => (DType::F32, 0.0),
                };
                let numel: usize = shape.iter().product();
                self.g
                    .constant(Tensor::from_f64(dt, &vec![val; numel], &shape).map_err(core)?)
            }
            "ArgMax" | "ArgMin" => {
                let x = self.req(n, 0)?;
                self.op(
                    Op::ArgReduce {
                        op: if ot == "ArgMax" {
                            stitch_core::ops::ArgReduceOp::ArgMax
                        } else {
                            stitch_core::ops::ArgReduceOp::ArgMin
                        },
                        axis: a.i("axis", 0),
                        keepdims: a.i("keepdims", 1) != 0,
                        select_last_index: a.i("select_last_index", 0) != 0,
                    },
                    &[x],
                )?
            }
            "CumSum" => {
                let x = self.req(n, 0)?;
                let axis = *self.kints(n, 1)?.ok_or("missing axis")?.first().ok_or("empty axis")?;
                self.op(
                    Op::CumSum {
                        axis,
                        exclusive: a.i("exclusive", 0) != 0,
                        reverse: a.i("reverse", 0) != 0,
                    },
                    &[x],
                )?
            }
            "TopK" => {
                let x = self.req(n, 0)?;
                let k = if opset >= 10 {
                    *self.kints(n, 1)?.ok_or("missing K")?.first().ok_or("empty K")?
                } else {
                    a.i("k", 0)
                };
                let k = usize::try_from(k).map_err(|_| format!("negative k {k}"))?;
                return self
                    .g
                    .add_node(
                        Op::TopK {
                            k,
                            axis: a.i("axis", -1),
                            largest: a.i("largest", 1) != 0,
                            sorted: a.i("sorted", 1) != 0,
                        },
                        &[x],
                    )
                    .map_err(core);
            }
            op if op.starts_with("Reduce") => self.reduce_node(n, &a)?,
            "Conv" => self.conv(n, &a)?,
            "MaxPool" | "AveragePool" => self.pool(n, &a)?,
            "GlobalAveragePool" | "GlobalMaxPool" => {
                let x = self.req(n, 0)?;
                let rank = self.ty(x).shape.rank() as i64;
                let axes: Vec<i64> = (2..rank).collect();
                let op = if ot == "GlobalMaxPool" {
                    ReduceOp::Max
                } else {
                    ReduceOp::Mean
                };
                self.reduce(x, op, axes, true)?
            }
            "Loop" | "Scan" => {
                self.runtime_control_flow = true;
                return Err(format!(
                    "internal: {ot} runs on the host as run-time control flow and cannot be part of a compiled graph"
                ));
            }
            other => return Err(format!("op type {other} is not supported")),
        };
        Ok(vec![out])
    }

    fn activation(&mut self, n: &onnx::NodeProto, a: &Attrs) -> R<Value> {
        let x = self.req(n, 0)?;
        let ot = n.op_type();
        let zero = self.scalar_like(x, 0.0);
        let c = |s: &mut Ctx, v: f64| s.scalar_like(x, v);
        Ok(match ot {
            "LeakyRelu" | "PRelu" => {
                let slope = if ot == "PRelu" {
                    self.req(n, 1)?
                } else {
                    c(self, a.f("alpha", 0.01) as f64)
                };
                let neg = self.bin(BinaryOp::Mul, x, slope)?;
                let pos = self.bin(BinaryOp::Less, x, zero)?;
                self.op(Op::Where, &[pos, neg, x])?
            }
            "Elu" | "Celu" => {
                let alpha = c(self, a.f("alpha", 1.0) as f64);
                let e = if ot == "Celu" {
                    let d = self.bin(BinaryOp::Div, x, alpha)?;
                    self.un(UnaryOp::Exp, d)?
                } else {
                    self.un(UnaryOp::Exp, x)?
                };
                let one = c(self, 1.0);
                let em1 = self.bin(BinaryOp::Sub, e, one)?;
                let neg = self.bin(BinaryOp::Mul, alpha, em1)?;
                let lt = self.bin(BinaryOp::Less, x, zero)?;
                self.op(Op::Where, &[lt, neg, x])?
            }
            "Selu" => {
                let alpha = c(self, a.f("alpha", 1.673_263_2) as f64);
                let gamma = c(self, a.f("gamma", 1.050_701) as f64);
                let e = self.un(UnaryOp::Exp, x)?;
                let ae = self.bin(BinaryOp::Mul, alpha, e)?;
                let neg = self.bin(BinaryOp::Sub, ae, alpha)?;
                let le = self.bin(BinaryOp::LessEqual, x, zero)?;
                let y = self.op(Op::Where, &[le, neg, x])?;
                self.bin(BinaryOp::Mul, gamma, y)?
            }
            "ThresholdedRelu" => {
                let alpha = c(self, a.f("alpha", 1.0) as f64);
                let gt = self.bin(BinaryOp::Greater, x, alpha)?;
                self.op(Op::Where, &[gt, x, zero])?
            }
            "HardSigmoid" | "HardSwish" => {
                let (al, be) = if ot == "HardSwish" {
                    (1.0 / 6.0, 0.5)
                } else {
                    (a.f("alpha", 0.2) as f64, a.f("beta", 0.5) as f64)
                };
                let alpha = c(self, al);
                let beta = c(self, be);
                let y = self.bin(BinaryOp::Mul, x, alpha)?;
                let y = self.bin(BinaryOp::Add, y, beta)?;
                let y = self.op(
                    Op::Clamp {
                        min: Some(0.0),
                        max: Some(1.0),
                    },
                    &[y],
                )?;
                if ot == "HardSwish" {
                    self.bin(BinaryOp::Mul, x, y)?
                } else {
                    y
                }
            }
            "Softplus" | "Mish" => {
                // log(1 + exp(x)) computed stably: max(x, 0) + log(1 + exp(-|x|)).
                let ax = self.un(UnaryOp::Abs, x)?;
                let nax = self.un(UnaryOp::Neg, ax)?;
                let e = self.un(UnaryOp::Exp, nax)?;
                let one = c(self, 1.0);
                let l = self.bin(BinaryOp::Add, one, e)?;
                let l = self.un(UnaryOp::Log, l)?;
                let m = self.bin(BinaryOp::Max, x, zero)?;
                let sp = self.bin(BinaryOp::Add, m, l)?;
                if ot == "Mish" {
                    let t = self.un(UnaryOp::Tanh, sp)?;
                    self.bin(BinaryOp::Mul, x, t)?
                } else {
                    sp
                }
            }
            "Softsign" => {
                let ax = self.un(UnaryOp::Abs, x)?;
                let one = c(self, 1.0);
                let d = self.bin(BinaryOp::Add, one, ax)?;
                self.bin(BinaryOp::Div, x, d)?
            }
            "Gelu" => {
                let u = if a.s("approximate", "none") == "tanh" {
                    UnaryOp::GeluTanh
                } else {
                    UnaryOp::Gelu
                };
                self.un(u, x)?
            }
            _ => return Err(format!("internal: activation {ot}")),
        })
    }

    fn attention(&mut self, n: &onnx::NodeProto, a: &Attrs) -> R<Vec<Value>> {
        let (mut q, mut k, mut v) = (self.req(n, 0)?, self.req(n, 1)?, self.req(n, 2)?);
        let qt = self.ty(q);
        let dt = qt.dtype;
        let three_d = qt.shape.rank() == 3;
        let to4 = |c: &mut Ctx, x: Value, heads: i64| -> R<Value> {
            let s = c.concrete(x, "Attention")?;
            if heads <= 0 {
                return Err("3-D Attention needs q_num_heads and kv_num_heads".into());
            }
            let r = c.op(
                Op::Reshape {
                    shape: vec![s[0] as i64, s[1] as i64, heads, -1],
                },
                &[x],
            )?;
            c.op(Op::Transpose { perm: vec![0, 2, 1, 3] }, &[r])
        };
        if three_d {
            q = to4(self, q, a.i("q_num_heads", 0))?;
            k = to4(self, k, a.i("kv_num_heads", 0))?;
            v = to4(self, v, a.i("kv_num_heads", 0))?;
        }
        let qs = self.concrete(q, "Attention")?;
        if qs.len() != 4 {
            return Err(format!("Q must be 3-D or 4-D, got {qt}"));
        }
        let past = match self.input(n, 4)? {
            Some(pk) => {
                let p = self.concrete(pk.v, "past_key")?[2];
                k = self.op(Op::Concat { axis: 2 }, &[pk.v, k])?;
                p
            }
            None => 0,
        };
        if let Some(pv) = self.input(n, 5)? {
            v = self.op(Op::Concat { axis: 2 }, &[pv.v, v])?;
        }
        let (present_k, present_v) = (k, v);
        let ks = self.concrete(k, "Attention")?;
        let (l, s) = (qs[2], ks[2]);
        let mut bias: Option<Value> = None;
        if let Some(m) = self.input(n, 3)? {
            let mut m = m.v;
            let mt = self.ty(m);
            let ms = self.concrete(m, "attn_mask")?;
            let last = *ms.last().ok_or("attn_mask must have rank >= 2")?;
            if last < s {
                let mut pads = vec![0i64; 2 * ms.len()];
                pads[2 * ms.len() - 1] = (s - last) as i64;
                let value = if mt.dtype == DType::Bool {
                    0.0
                } else {
                    f64::NEG_INFINITY
                };
                m = self.op(
                    Op::Pad {
                        pads,
                        mode: PadMode::Constant,
                        value,
                    },
                    &[m],
                )?;
            }
            if mt.dtype == DType::Bool {
                let zero = self.g.scalar(dt, 0.0);
                let ninf = self.g.scalar(dt, f64::NEG_INFINITY);
                m = self.op(Op::Where, &[m, zero, ninf])?;
            }
            bias = Some(m);
        }
        if a.i("is_causal", 0) != 0 {
            let mut c = vec![0f64; l * s];
            for i in 0..l {
                for j in past..s {
                    if j - past > i {
                        c[i * s + j] = f64::NEG_INFINITY;
                    }
                }
            }
            let cv = self.g.constant(Tensor::from_f64(dt, &c, &[l, s]).map_err(core)?);
            bias = Some(match bias {
                Some(b) => self.bin(BinaryOp::Add, b, cv)?,
                None => cv,
            });
        }
        if let Some(np) = self.input(n, 6)? {
            // Keys at positions >= nonpad_kv_seqlen[b] are padding.
            let np = self.cast_to(np.v, DType::I64)?;
            let np = self.op(Op::Unsqueeze { axes: vec![1] }, &[np])?;
            let pos = self
                .g
                .constant(Tensor::from_vec((0..s as i64).collect::<Vec<_>>(), &[s]).map_err(core)?);
            let keep = self.bin(BinaryOp::Less, pos, np)?;
            let zero = self.g.scalar(dt, 0.0);
            let ninf = self.g.scalar(dt, f64::NEG_INFINITY);
            let m = self.op(Op::Where, &[keep, zero, ninf])?;
            let m = self.op(Op::Unsqueeze { axes: vec![1, 2] }, &[m])?;
            bias = Some(match bias {
                Some(b) => self.bin(BinaryOp::Add, b, m)?,
                None => m,
            });
        }
        let (hq, hkv) = (qs[1], ks[1]);
        if hq != hkv {
            if hkv == 0 || hq % hkv != 0 {
                return Err(format!("q heads {hq} must be a multiple of kv heads {hkv}"));
            }
            let rep = hq / hkv;
            let repeat = |c: &mut Ctx, x: Value| -> R<Value> {
                let xs = c.concrete(x, "Attention")?;
                let u = c.op(Op::Unsqueeze { axes: vec![2] }, &[x])?;
                let e = c.op(
                    Op::Expand {
                        shape: vec![xs[0], xs[1], rep, xs[2], xs[3]],
                    },
                    &[u],
                )?;
                c.op(
                    Op::Reshape {
                        shape: vec![xs[0] as i64, hq as i64, xs[2] as i64, xs[3] as i64],
                    },
                    &[e],
                )
            };
            k = repeat(self, k)?;
            v = repeat(self, v)?;
        }
        let scale = if a.has("scale") {
            a.f("scale", 1.0) as f64
        } else {
            1.0 / (qs[3] as f64).sqrt()
        };
        let qk = self.op(
            Op::MatMul {
                transpose_a: false,
                transpose_b: true,
            },
            &[q, k],
        )?;
        let sc = self.g.scalar(dt, scale);
        let mut qk = self.bin(BinaryOp::Mul, qk, sc)?;
        let softcap = a.f("softcap", 0.0) as f64;
        if softcap > 0.0 {
            let c = self.g.scalar(dt, softcap);
            let d = self.bin(BinaryOp::Div, qk, c)?;
            let t = self.un(UnaryOp::Tanh, d)?;
            qk = self.bin(BinaryOp::Mul, t, c)?;
        }
        let qkb = match bias {
            Some(b) => self.bin(BinaryOp::Add, qk, b)?,
            None => qk,
        };
        let sm_dt = if a.has("softmax_precision") {
            dtype_from_onnx(a.i("softmax_precision", 1) as i32).unwrap_or(dt)
        } else {
            dt
        };
        let x = self.cast_to(qkb, sm_dt)?;
        let sm = self.op(Op::Softmax { axis: -1 }, &[x])?;
        let sm = self.cast_to(sm, dt)?;
        let mode = a.i("qk_matmul_output_mode", 0);
        let qk_out = match mode {
            2 => qkb,
            3 => sm,
            _ => qk,
        };
        let mut y = self.op(
            Op::MatMul {
                transpose_a: false,
                transpose_b: false,
            },
            &[sm, v],
        )?;
        if three_d {
            let t = self.op(Op::Transpose { perm: vec![0, 2, 1, 3] }, &[y])?;
            y = self.op(
                Op::Reshape {
                    shape: vec![qs[0] as i64, l as i64, -1],
                },
                &[t],
            )?;
        }
        Ok(vec![y, present_k, present_v, qk_out])
    }

    /// Negative log-likelihood loss on log-probabilities `x` `[N, C, d...]`.
    fn nll(&mut self, x: Value, t: Value, w: Option<Value>, a: &Attrs) -> R<Value> {
        let dt = self.ty(x).dtype;
        let t = self.cast_to(t, DType::I64)?;
        let (safe, mask) = if a.has("ignore_index") {
            let ig = self.g.scalar(DType::I64, a.i("ignore_index", 0) as f64);
            let keep = self.bin(BinaryOp::NotEqual, t, ig)?;
            let zero = self.g.scalar(DType::I64, 0.0);
            let safe = self.op(Op::Where, &[keep, t, zero])?;
            (safe, Some(self.cast_to(keep, dt)?))
        } else {
            (t, None)
        };
        let idx = self.op(Op::Unsqueeze { axes: vec![1] }, &[safe])?;
        let g = self.op(Op::GatherElements { axis: 1 }, &[x, idx])?;
        let g = self.op(Op::Squeeze { axes: vec![1] }, &[g])?;
        let mut weight = match w {
            Some(w) => Some(self.op(Op::Gather { axis: 0 }, &[w, safe])?),
            None => None,
        };
        if let Some(m) = mask {
            weight = Some(match weight {
                Some(wv) => self.bin(BinaryOp::Mul, wv, m)?,
                None => m,
            });
        }
        let ng = self.un(UnaryOp::Neg, g)?;
        let loss = match weight {
            Some(wv) => self.bin(BinaryOp::Mul, ng, wv)?,
            None => ng,
        };
        Ok(match a.s("reduction", "mean").as_str() {
            "none" => loss,
            "sum" => self.reduce(loss, ReduceOp::Sum, vec![], false)?,
            "mean" => match weight {
                Some(wv) => {
                    let s = self.reduce(loss, ReduceOp::Sum, vec![], false)?;
                    let d = self.reduce(wv, ReduceOp::Sum, vec![], false)?;
                    self.bin(BinaryOp::Div, s, d)?
                }
                None => self.reduce(loss, ReduceOp::Mean, vec![], false)?,
            },
            r => return Err(format!("unknown reduction '{r}'")),
        })
    }

    fn layer_norm(&mut self, n: &onnx::NodeProto, a: &Attrs) -> R<Vec<Value>> {
        let x = self.req(n, 0)?;
        let scale = self.req(n, 1)?;
        let bias = self.input(n, 2)?.map(|e| e.v);
        let t = self.ty(x);
        let rank = t.shape.rank() as i64;
        let axis = a.i("axis", -1);
        let ax = if axis < 0 { axis + rank } else { axis };
        if !(0..rank).contains(&ax) {
            return Err(format!("axis {axis} out of range for {t}"));
        }
        let stash = dtype_from_onnx(a.i("stash_type", 1) as i32).unwrap_or(DType::F32);
        // Only Y used (the usual case): stitch's layer_norm op, which backends
        // run as one fused kernel (statistics in f32 or wider, as stash_type 1).
        let only_y = n.output.iter().skip(1).all(|o| o.is_empty());
        if only_y && t.dtype == DType::F32 && stash == DType::F32 {
            let y = self
                .g
                .layer_norm(x, scale, bias, ax, a.f("epsilon", 1e-5) as f64)
                .map_err(|e| e.to_string())?;
            return Ok(vec![y]);
        }
        let axes: Vec<i64> = (ax..rank).collect();
        let xs = self.cast_to(x, stash)?;
        let mean = self.reduce(xs, ReduceOp::Mean, axes.clone(), true)?;
        let d = self.bin(BinaryOp::Sub, xs, mean)?;
        let sq = self.bin(BinaryOp::Mul, d, d)?;
        let var = self.reduce(sq, ReduceOp::Mean, axes, true)?;
        let eps = self.g.scalar(stash, a.f("epsilon", 1e-5) as f64);
        let ve = self.bin(BinaryOp::Add, var, eps)?;
        let sd = self.un(UnaryOp::Sqrt, ve)?;
        let one = self.g.scalar(stash, 1.0);
        let inv = self.bin(BinaryOp::Div, one, sd)?;
        let y = self.bin(BinaryOp::Mul, d, inv)?;
        let y = self.cast_to(y, t.dtype)?;
        let y = self.bin(BinaryOp::Mul, y, scale)?;
        let y = match bias {
            Some(b) => self.bin(BinaryOp::Add, y, b)?,
            None => y,
        };
        Ok(vec![y, mean, inv])
    }

    fn reduce_node(&mut self, n: &onnx::NodeProto, a: &Attrs) -> R<Value> {
        let ot = n.op_type();
        let x = self.req(n, 0)?;
        let axes_from_input = (ot == "ReduceSum" && self.opset >= 13) || self.opset >= 18;
        let axes = if axes_from_input {
            self.kints(n, 1)?
        } else {
            a.ints("axes")
        };
        let keep = a.i("keepdims", 1) != 0;
        let axes = match axes {
            Some(v) if !v.is_empty() => v,
            _ => {
                if a.i("noop_with_empty_axes", 0) != 0 {
                    return match ot {
                        "ReduceL1" => self.un(UnaryOp::Abs, x),
                        "ReduceSumSquare" => self.bin(BinaryOp::Mul, x, x),
                        "ReduceL2" => {
                            let s = self.bin(BinaryOp::Mul, x, x)?;
                            self.un(UnaryOp::Sqrt, s)
                        }
                        "ReduceLogSum" => self.un(UnaryOp::Log, x),
                        _ => Ok(x),
                    };
                }
                (0..self.ty(x).shape.rank() as i64).collect()
            }
        };
        let simple = match ot {
            "ReduceSum" => Some(ReduceOp::Sum),
            "ReduceMean" => Some(ReduceOp::Mean),
            "ReduceMax" => Some(ReduceOp::Max),
            "ReduceMin" => Some(ReduceOp::Min),
            "ReduceProd" => Some(ReduceOp::Prod),
            _ => None,
        };
        if let Some(op) = simple {
            if self.ty(x).dtype == DType::Bool {
                let xi = self.cast_to(x, DType::U8)?;
                let r = self.reduce(xi, op, axes, keep)?;
                return self.cast_to(r, DType::Bool);
            }
            return self.reduce(x, op, axes, keep);
        }
        Ok(match ot {
            "ReduceL1" => {
                let ax = self.un(UnaryOp::Abs, x)?;
                self.reduce(ax, ReduceOp::Sum, axes, keep)?
            }
            "ReduceL2" | "ReduceSumSquare" => {
                let sq = self.bin(BinaryOp::Mul, x, x)?;
                let s = self.reduce(sq, ReduceOp::Sum, axes, keep)?;
                if ot == "ReduceL2" {
                    if self.ty(s).dtype.is_float() {
                        self.un(UnaryOp::Sqrt, s)?
                    } else {
                        let f = self.cast_to(s, DType::F64)?;
                        let r = self.un(UnaryOp::Sqrt, f)?;
                        let dt = self.ty(x).dtype;
                        self.cast_to(r, dt)?
                    }
                } else {
                    s
                }
            }
            "ReduceLogSum" => {
                let s = self.reduce(x, ReduceOp::Sum, axes, keep)?;
                self.un(UnaryOp::Log, s)?
            }
            "ReduceLogSumExp" => {
                let m = self.reduce(x, ReduceOp::Max, axes.clone(), true)?;
                let d = self.bin(BinaryOp::Sub, x, m)?;
                let e = self.un(UnaryOp::Exp, d)?;
                let s = self.reduce(e, ReduceOp::Sum, axes.clone(), keep)?;
                let l = self.un(UnaryOp::Log, s)?;
                let m = if keep { m } else { self.op(Op::Squeeze { axes }, &[m])? };
                self.bin(BinaryOp::Add, l, m)?
            }
            other => return Err(format!("op type {other} is not supported")),
        })
    }

    /// Resolves ONNX padding (explicit pads or auto_pad) for `spatial` axes.
    fn padding(&self, a: &Attrs, x: Value, kernel: &[usize], strides: &[usize], dilations: &[usize]) -> R<Vec<usize>> {
        let s = kernel.len();
        let auto = a.s("auto_pad", "NOTSET");
        match auto.as_str() {
            "NOTSET" => {
                let p = a.ints("pads").unwrap_or_else(|| vec![0; 2 * s]);
                if p.len() != 2 * s {
                    return Err(format!("pads {p:?} must have {} entries", 2 * s));
                }
                p.into_iter()
                    .map(|v| usize::try_from(v).map_err(|_| format!("negative pad {v}")))
                    .collect()
            }
            "VALID" => Ok(vec![0; 2 * s]),
            "SAME_UPPER" | "SAME_LOWER" => {
                let shape = self.concrete(x, "auto_pad SAME")?;
                let mut pads = vec![0; 2 * s];
                for i in 0..s {
                    let inp = shape[2 + i];
                    let out = inp.div_ceil(strides[i]);
                    let eff = (kernel[i] - 1) * dilations[i] + 1;
                    let total = ((out - 1) * strides[i] + eff).saturating_sub(inp);
                    let (lo, hi) = if auto == "SAME_UPPER" {
                        (total / 2, total - total / 2)
                    } else {
                        (total - total / 2, total / 2)
                    };
                    pads[i] = lo;
                    pads[s + i] = hi;
                }
                Ok(pads)
            }
            other => Err(format!("unknown auto_pad '{other}'")),
        }
    }

    fn usizes(v: Option<Vec<i64>>, n: usize, what: &str) -> R<Vec<usize>> {
        match v {
            None => Ok(vec![1; n]),
            Some(v) if v.len() == n => v
                .into_iter()
                .map(|x| {
                    usize::try_from(x)
                        .ok()
                        .filter(|&x| x > 0)
                        .ok_or_else(|| format!("bad {what} {x}"))
                })
                .collect(),
            Some(v) => Err(format!("{what} {v:?} must have {n} entries")),
        }
    }

    fn conv(&mut self, n: &onnx::NodeProto, a: &Attrs) -> R<Value> {
        let x = self.req(n, 0)?;
        let w = self.req(n, 1)?;
        let wshape = self.concrete(w, "Conv weight")?;
        if wshape.len() < 3 {
            return Err(format!("weight must be [M, C/group, k...], got {wshape:?}"));
        }
        let kernel = wshape[2..].to_vec();
        let s = kernel.len();
        let strides = Self::usizes(a.ints("strides"), s, "strides")?;
        let dilations = Self::usizes(a.ints("dilations"), s, "dilations")?;
        let pads = self.padding(a, x, &kernel, &strides, &dilations)?;
        let groups = usize::try_from(a.i("group", 1)).map_err(|_| "negative group".to_string())?;
        let mut ins = vec![x, w];
        if let Some(b) = self.input(n, 2)? {
            ins.push(b.v);
        }
        self.op(
            Op::Conv(ConvAttrs {
                strides,
                pads,
                dilations,
                groups,
            }),
            &ins,
        )
    }

    fn pool(&mut self, n: &onnx::NodeProto, a: &Attrs) -> R<Value> {
        let x = self.req(n, 0)?;
        if n.output.len() > 1 && !n.output[1].is_empty() {
            return Err("MaxPool's Indices output is not supported".into());
        }
        let kernel = Self::usizes(
            a.ints("kernel_shape"),
            a.ints("kernel_shape").map(|v| v.len()).unwrap_or(0),
            "kernel_shape",
        )?;
        let s = kernel.len();
        let strides = Self::usizes(a.ints("strides"), s, "strides")?;
        let dilations = Self::usizes(a.ints("dilations"), s, "dilations")?;
        let pads = self.padding(a, x, &kernel, &strides, &dilations)?;
        let attrs = PoolAttrs {
            kernel,
            strides,
            pads,
            dilations,
            ceil_mode: a.i("ceil_mode", 0) != 0,
            count_include_pad: a.i("count_include_pad", 0) != 0,
        };
        if n.op_type() == "MaxPool" {
            self.op(Op::MaxPool(attrs), &[x])
        } else {
            self.op(Op::AvgPool(attrs), &[x])
        }
    }
}

/// Computes `op` on constant inputs on the CPU.
fn fold(op: Op, inputs: &[Tensor]) -> R<Tensor> {
    let mut g = Graph::new();
    let ins: Vec<Value> = inputs.iter().map(|t| g.constant(t.clone())).collect();
    let v = g.add_op(op, &ins).map_err(core)?;
    let exe = Executable::compile(
        &g,
        &[v],
        Arc::new(stitch_cpu::CpuBackend::new()),
        CompileOptions::default(),
    )
    .map_err(core)?;
    let mut st = exe.new_state();
    exe.run(&[], &mut st)
        .map_err(core)?
        .pop()
        .ok_or_else(|| "no output".to_string())
}

/// Evaluates `f` on a scratch graph whose inputs are the constants `inputs`, on the CPU.
fn eval_constant(
    n: &onnx::NodeProto,
    inputs: &[(String, Tensor)],
    opset: i64,
    base_dir: Option<PathBuf>,
) -> R<Vec<Tensor>> {
    let mut c = Ctx {
        runtime_control_flow: false,
        g: Graph::new(),
        env: HashMap::new(),
        opset,
        base_dir,
    };
    for (name, t) in inputs {
        let v = c.g.constant(t.clone());
        c.env.insert(name.clone(), Entry { v, k: Some(t.clone()) });
    }
    let outs = c.convert(n)?;
    for v in &outs {
        let ty = c.g.ty(*v);
        let numel = ty
            .concrete()
            .and_then(|d| d.iter().try_fold(1usize, |a, &x| a.checked_mul(x)));
        if numel.is_none_or(|n| n > MAX_FOLD_ELEMENTS) {
            return Err(format!("constant result {ty} is too large to compute at import time"));
        }
    }
    let exe = Executable::compile(
        &c.g,
        &outs,
        Arc::new(stitch_cpu::CpuBackend::new()),
        CompileOptions::default(),
    )
    .map_err(core)?;
    let mut st = exe.new_state();
    exe.run(&[], &mut st).map_err(core)
}

/// Whether `nodes` (or any subgraph of theirs) hold a Loop or a Scan.
fn has_loop_or_scan(nodes: &[onnx::NodeProto]) -> bool {
    nodes.iter().any(|n| {
        matches!(n.op_type(), "Loop" | "Scan")
            || n.attribute
                .iter()
                .flat_map(|a| a.g.iter().chain(&a.graphs))
                .any(|g| has_loop_or_scan(&g.node))
    })
}

fn unsupported_error(opset: i64, unsupported: &BTreeMap<String, Vec<String>>) -> OnnxError {
    let list: Vec<String> = unsupported
        .iter()
        .map(|(op, names)| {
            let names: Vec<String> = names.iter().map(|n| format!("'{n}'")).collect();
            format!("{op} (nodes {})", names.join(", "))
        })
        .collect();
    OnnxError::Unsupported(format!(
        "the model (opset {opset}) uses {} op type(s) stitch cannot run: {}",
        unsupported.len(),
        list.join("; ")
    ))
}

fn walk_ops(g: &onnx::GraphProto, out: &mut BTreeMap<String, Vec<String>>) {
    for (i, n) in g.node.iter().enumerate() {
        let domain = n.domain();
        let key = if domain.is_empty() || domain == "ai.onnx" {
            n.op_type().to_string()
        } else {
            format!("{domain}.{}", n.op_type())
        };
        let supported = (domain.is_empty() || domain == "ai.onnx") && SUPPORTED_OPS.contains(&n.op_type());
        if !supported {
            let name = if n.name().is_empty() {
                format!("#{i}")
            } else {
                n.name().to_string()
            };
            out.entry(key).or_default().push(name);
        }
        for a in &n.attribute {
            if let Some(sub) = &a.g {
                walk_ops(sub, out);
            }
            for sub in &a.graphs {
                walk_ops(sub, out);
            }
        }
    }
}

/// The graph inputs (not initializers) with their declared types.
pub fn declared_inputs(m: &onnx::ModelProto) -> Result<Vec<(String, TensorType)>> {
    let g = m
        .graph
        .as_ref()
        .ok_or_else(|| OnnxError::Parse("model has no graph".into()))?;
    let inits: HashSet<&str> = g.initializer.iter().map(|t| t.name()).collect();
    g.input
        .iter()
        .filter(|v| !inits.contains(v.name()))
        .map(|v| Ok((v.name().to_string(), type_of(v).map_err(OnnxError::Parse)?)))
        .collect()
}

/// The graph outputs with their declared types (`?` where not declared).
pub fn declared_outputs(m: &onnx::ModelProto) -> Vec<(String, String)> {
    m.graph
        .iter()
        .flat_map(|g| &g.output)
        .map(|v| {
            (
                v.name().to_string(),
                type_of(v).map(|t| t.to_string()).unwrap_or_else(|_| "?".into()),
            )
        })
        .collect()
}

fn type_of(vi: &onnx::ValueInfoProto) -> R<TensorType> {
    let Some(type_proto::Value::TensorType(t)) = vi.r#type.as_ref().and_then(|t| t.value.as_ref()) else {
        return Err(format!(
            "input '{}' is not a tensor (sequences, maps and optionals are not supported)",
            vi.name()
        ));
    };
    let code = t.elem_type();
    let dtype = dtype_from_onnx(code)
        .ok_or_else(|| format!("input '{}' has unsupported dtype {}", vi.name(), dtype_name(code)))?;
    let dims = t
        .shape
        .as_ref()
        .map(|s| {
            s.dim
                .iter()
                .enumerate()
                .map(|(i, d)| match &d.value {
                    Some(onnx::tensor_shape_proto::dimension::Value::DimValue(v)) if *v >= 0 => {
                        Ok(Dim::Known(*v as usize))
                    }
                    Some(onnx::tensor_shape_proto::dimension::Value::DimValue(v)) => {
                        Err(format!("input '{}' has negative dim {v}", vi.name()))
                    }
                    Some(onnx::tensor_shape_proto::dimension::Value::DimParam(p)) if !p.is_empty() => Ok(Dim::sym(p)),
                    _ => Ok(Dim::sym(&format!("{}_dim{i}", vi.name()))),
                })
                .collect::<R<Vec<_>>>()
        })
        .transpose()?
        .ok_or_else(|| format!("input '{}' has no shape", vi.name()))?;
    Ok(TensorType::new(dtype, Shape(dims)))
}

impl Model {
    /// Reads and imports an ONNX model file (external data is read relative to it).
    pub fn load(path: &Path, opts: ImportOptions) -> Result<Model> {
        let bytes = std::fs::read(path).map_err(|e| OnnxError::Io(format!("cannot read {}: {e}", path.display())))?;
        let proto = crate::parse_model(&bytes).map_err(|e| OnnxError::Parse(format!("{}: {e}", path.display())))?;
        let mut opts = opts;
        if opts.base_dir.is_none() {
            opts.base_dir = path.parent().map(Path::to_path_buf);
        }
        Model::import(&proto, opts)
    }

    /// Imports a decoded model.
    pub fn import(m: &onnx::ModelProto, opts: ImportOptions) -> Result<Model> {
        let opset = m
            .opset_import
            .iter()
            .find(|o| o.domain().is_empty() || o.domain() == "ai.onnx")
            .map(|o| o.version())
            .ok_or_else(|| OnnxError::Parse("model imports no default-domain opset".into()))?;
        let g = m
            .graph
            .as_ref()
            .ok_or_else(|| OnnxError::Parse("model has no graph".into()))?;
        if !(1..=27).contains(&opset) {
            return Err(OnnxError::Unsupported(format!(
                "opset {opset} is not supported (7 to 27 are)"
            )));
        }
        let mut unsupported = BTreeMap::new();
        walk_ops(g, &mut unsupported);
        if !unsupported.is_empty() {
            return Err(unsupported_error(opset, &unsupported));
        }
        let inits: HashSet<&str> = g.initializer.iter().map(|t| t.name()).collect();
        // Loop and Scan always run as a program; an If only when the importer
        // cannot fold its condition (tried below: shape arithmetic and bound
        // inputs may make it a constant, and then it is inlined as before).
        if has_loop_or_scan(&g.node) {
            return Model::import_program(g, opset, &opts);
        }
        let mut c = Ctx {
            runtime_control_flow: false,
            g: Graph::new(),
            env: HashMap::new(),
            opset,
            base_dir: opts.base_dir.clone(),
        };
        for t in &g.initializer {
            let tensor = tensor_from_proto(t, opts.base_dir.as_deref()).map_err(OnnxError::Parse)?;
            let v = c.g.constant(tensor.clone());
            c.g.set_name(v.node, t.name());
            c.env.insert(t.name().to_string(), Entry { v, k: Some(tensor) });
        }
        let needs_value = values_needed_statically(&g.node);
        let mut inputs = vec![];
        let mut bound = vec![];
        for vi in &g.input {
            if inits.contains(vi.name()) {
                continue;
            }
            let declared = type_of(vi).map_err(OnnxError::Parse)?;
            let name = vi.name().to_string();
            let entry = match opts.input_values.get(&name) {
                Some(t) if needs_value.contains(name.as_str()) => {
                    bound.push(name.clone());
                    let v = c.g.constant(t.clone());
                    Entry { v, k: Some(t.clone()) }
                }
                Some(t) => {
                    let ty = TensorType::new(t.dtype(), t.graph_shape());
                    if ty.dtype != declared.dtype {
                        return Err(OnnxError::Parse(format!(
                            "input '{name}' is declared {} but the value given is {}",
                            declared.dtype, ty.dtype
                        )));
                    }
                    inputs.push((name.clone(), ty.clone()));
                    Entry {
                        v: c.g.placeholder(&name, ty.dtype, ty.shape),
                        k: None,
                    }
                }
                None => {
                    inputs.push((name.clone(), declared.clone()));
                    Entry {
                        v: c.g.placeholder(&name, declared.dtype, declared.shape),
                        k: None,
                    }
                }
            };
            c.env.insert(name, entry);
        }
        if let Err(e) = c.import_nodes(&g.node) {
            return if c.runtime_control_flow {
                Model::import_program(g, opset, &opts)
            } else {
                Err(e)
            };
        }
        let mut outputs = vec![];
        for vi in &g.output {
            let e = c
                .env
                .get(vi.name())
                .ok_or_else(|| OnnxError::Parse(format!("graph output '{}' is not produced by any node", vi.name())))?;
            outputs.push((vi.name().to_string(), e.v));
        }
        Ok(Model {
            graph: c.g,
            inputs,
            bound_inputs: bound,
            outputs,
            opset,
            control_flow: None,
            base_dir: opts.base_dir,
        })
    }

    /// Imports a model with run-time control flow as a program (see
    /// `program.rs`): graph inputs keep their (given or declared) types, nothing
    /// is bound to constants, segments import when they first run.
    fn import_program(g: &onnx::GraphProto, opset: i64, opts: &ImportOptions) -> Result<Model> {
        let inits: HashSet<&str> = g.initializer.iter().map(|t| t.name()).collect();
        let mut inputs = vec![];
        for vi in &g.input {
            if inits.contains(vi.name()) {
                continue;
            }
            let declared = type_of(vi).map_err(OnnxError::Parse)?;
            let name = vi.name().to_string();
            let ty = match opts.input_values.get(&name) {
                Some(t) => {
                    if t.dtype() != declared.dtype {
                        return Err(OnnxError::Parse(format!(
                            "input '{name}' is declared {} but the value given is {}",
                            declared.dtype,
                            t.dtype()
                        )));
                    }
                    TensorType::new(t.dtype(), t.graph_shape())
                }
                None => declared,
            };
            inputs.push((name, ty));
        }
        for vi in &g.output {
            let produced = inits.contains(vi.name())
                || inputs.iter().any(|(n, _)| n == vi.name())
                || g.node.iter().any(|n| n.output.iter().any(|o| o == vi.name()));
            if !produced {
                return Err(OnnxError::Parse(format!(
                    "graph output '{}' is not produced by any node",
                    vi.name()
                )));
            }
        }
        let program = crate::program::Program::build(g, &HashSet::new(), opset, opts.base_dir.as_deref())?;
        Ok(Model {
            graph: Graph::new(),
            inputs,
            bound_inputs: vec![],
            outputs: vec![],
            opset,
            control_flow: Some(Arc::new(program)),
            base_dir: opts.base_dir.clone(),
        })
    }

    /// True when the model has run-time control flow (If with a computed
    /// condition, Loop, Scan): it then runs through [`Model::compile`] and
    /// [`Model::run`], not as one graph.
    pub fn has_control_flow(&self) -> bool {
        self.control_flow.is_some()
    }

    /// Compiles the model for `backends` (primary first, as
    /// [`Executable::compile_placed`] takes them). Without run-time control
    /// flow this is exactly one `compile_placed` of [`Model::graph`]; with it,
    /// every segment compiles for the same backends when it first runs.
    pub fn compile(&self, backends: Vec<Arc<dyn stitch_core::Backend>>) -> Result<CompiledModel> {
        let inner = match &self.control_flow {
            None => {
                let outs: Vec<Value> = self.outputs.iter().map(|(_, v)| *v).collect();
                Compiled::Graph(Executable::compile_placed(
                    &self.graph,
                    &outs,
                    backends,
                    CompileOptions::default(),
                )?)
            }
            Some(p) => {
                if backends.is_empty() {
                    return Err(OnnxError::Core(stitch_core::Error::invalid(
                        "an executable needs at least one backend",
                    )));
                }
                Compiled::Program(crate::program::CompiledProgram {
                    program: p.fresh(),
                    backends,
                    opset: self.opset,
                    base_dir: self.base_dir.clone(),
                })
            }
        };
        Ok(CompiledModel { inner })
    }

    /// Runs a compiled model: returns each output by name.
    pub fn run(&self, compiled: &CompiledModel, given: &[(String, Tensor)]) -> Result<Vec<(String, Tensor)>> {
        match &compiled.inner {
            Compiled::Graph(exe) => self.run_cpu(exe, given),
            Compiled::Program(p) => {
                let feed = self.check_inputs(given)?;
                let outs = p.run(&feed)?;
                let names = p.program.output_names();
                Ok(names.into_iter().zip(outs).collect())
            }
        }
    }

    /// Compiles the model for the CPU.
    pub fn compile_cpu(&self) -> Result<Executable> {
        let outs: Vec<Value> = self.outputs.iter().map(|(_, v)| *v).collect();
        Ok(Executable::compile(
            &self.graph,
            &outs,
            Arc::new(stitch_cpu::CpuBackend::new()),
            CompileOptions::default(),
        )?)
    }

    /// Checks `given` against the model's inputs (missing, unknown, wrong dtype or
    /// shape) and returns the ones to feed, in the executable's terms.
    pub fn check_inputs<'a>(&self, given: &'a [(String, Tensor)]) -> Result<Vec<(&'a str, Tensor)>> {
        let mut feed = vec![];
        for (name, ty) in &self.inputs {
            let Some((_, t)) = given.iter().find(|(n, _)| n == name) else {
                return Err(OnnxError::Parse(format!("missing input '{name}' ({ty})")));
            };
            if t.dtype() != ty.dtype {
                return Err(OnnxError::Parse(format!(
                    "input '{name}' must be {}, got {}",
                    ty.dtype,
                    t.dtype()
                )));
            }
            let ok = t.rank() == ty.shape.rank()
                && ty
                    .shape
                    .dims()
                    .iter()
                    .zip(t.shape())
                    .all(|(d, &s)| d.known().is_none_or(|k| k == s));
            if !ok {
                return Err(OnnxError::Parse(format!(
                    "input '{name}' must have shape {}, got {:?}",
                    ty.shape,
                    t.shape()
                )));
            }
            feed.push((
                given
                    .iter()
                    .find(|(n, _)| n == name)
                    .map(|(n, _)| n.as_str())
                    .unwrap_or(""),
                t.clone(),
            ));
        }
        for (name, _) in given {
            if !self.inputs.iter().any(|(n, _)| n == name) && !self.bound_inputs.contains(name) {
                return Err(OnnxError::Parse(format!(
                    "unknown input '{name}'; the model's inputs are {:?}",
                    self.inputs.iter().map(|(n, _)| n).collect::<Vec<_>>()
                )));
            }
        }
        Ok(feed)
    }

    /// Runs on the CPU: returns each output by name.
    pub fn run_cpu(&self, exe: &Executable, given: &[(String, Tensor)]) -> Result<Vec<(String, Tensor)>> {
        let feed = self.check_inputs(given)?;
        let mut st = exe.new_state();
        let outs = exe.run(&feed, &mut st)?;
        Ok(self.outputs.iter().map(|(n, _)| n.clone()).zip(outs).collect())
    }
}

/// One straight-line run of ONNX nodes imported with concrete inputs (see
/// `program.rs`): the graph, the placeholders to feed and the outputs.
pub(crate) struct SegmentGraph {
    pub graph: Graph,
    /// Placeholder names, each the ONNX name of the input it stands for.
    pub feeds: Vec<String>,
    pub outputs: Vec<Value>,
}

/// A value a segment reads from its scope.
pub(crate) struct SegmentInput<'a> {
    pub name: &'a str,
    pub value: &'a Tensor,
    /// Bind the value as a constant (an initializer, or a value an op needs
    /// at import time); otherwise it becomes a placeholder of its concrete shape.
    pub bind: bool,
}

/// Imports `nodes` (no run-time control flow among them) into a fresh graph
/// whose sources are `inputs`, computing the ONNX names `outputs`.
pub(crate) fn import_segment(
    nodes: &[onnx::NodeProto],
    inputs: &[SegmentInput],
    outputs: &[String],
    opset: i64,
    base_dir: Option<&Path>,
) -> Result<SegmentGraph> {
    let mut c = Ctx {
        runtime_control_flow: false,
        g: Graph::new(),
        env: HashMap::new(),
        opset,
        base_dir: base_dir.map(Path::to_path_buf),
    };
    let mut feeds = vec![];
    for i in inputs {
        let entry = if i.bind {
            let v = c.g.constant(i.value.clone());
            c.g.set_name(v.node, i.name);
            Entry {
                v,
                k: Some(i.value.clone()),
            }
        } else {
            feeds.push(i.name.to_string());
            Entry {
                v: c.g.placeholder(i.name, i.value.dtype(), i.value.graph_shape()),
                k: None,
            }
        };
        c.env.insert(i.name.to_string(), entry);
    }
    c.import_nodes(nodes)?;
    let outputs = outputs
        .iter()
        .map(|o| {
            c.env.get(o).map(|e| e.v).ok_or_else(|| {
                OnnxError::Parse(format!(
                    "value '{o}' is not produced: its node gives fewer outputs than the model reads"
                ))
            })
        })
        .collect::<Result<Vec<_>>>()?;
    Ok(SegmentGraph {
        graph: c.g,
        feeds,
        outputs,
    })
}
