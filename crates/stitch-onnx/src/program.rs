//! Run-time control flow: ONNX `If` with a computed condition, `Loop` and `Scan`.
//!
//! A stitch plan is static: fixed steps over buffers planned for concrete input
//! shapes. Data-dependent control flow does not fit in it, so it stays out of
//! the core graph. A graph with run-time control flow becomes a [`Program`]:
//! its nodes are cut at each control-flow node into straight-line *segments*;
//! each segment is imported and compiled to a stitch [`Executable`] when it
//! first runs, for the concrete shapes (and, where an op needs them at import
//! time, values) of what it reads, and cached under that key. The If/Loop/Scan
//! node itself runs here, on the host, by running its branch or body — itself
//! a `Program` — with concrete inputs. Bodies read outer-scope values through a
//! chain of scopes.
//!
//! This module must not be used for graphs without run-time control flow:
//! those keep the single-graph path of [`crate::Model`] unchanged.

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use stitch_core::{Backend, CompileOptions, DType, Executable, Tensor};

use crate::import::{dtype_from_onnx, import_segment, tensor_from_proto, values_needed_statically, SegmentInput};
use crate::onnx::{self, type_proto};
use crate::{OnnxError, Result};

/// Most compiled variants one segment keeps (a loop whose carried values grow
/// compiles once per shape; the cache is cleared when it is full).
const MAX_CACHED_VARIANTS: usize = 64;

/// Where a program runs: the backends every segment is compiled for (the same
/// list the caller would use for a plain graph) and import settings.
pub(crate) struct Runtime<'r> {
    pub backends: &'r [Arc<dyn Backend>],
    pub opset: i64,
    pub base_dir: Option<&'r Path>,
}

/// True for a node that must run as host control flow: every Loop and Scan,
/// and an If whose condition is not computable from constants alone (or whose
/// branches hold run-time control flow themselves). `consts` are the names
/// known to be constants.
fn is_runtime_control_flow(n: &onnx::NodeProto, consts: &HashSet<String>) -> bool {
    match n.op_type() {
        "Loop" | "Scan" => true,
        "If" => {
            let cond_const = n.input.first().is_some_and(|c| consts.contains(c));
            !cond_const
                || n.attribute.iter().filter_map(|a| a.g.as_ref()).any(|g| {
                    let mut inner = consts.clone();
                    inner.extend(g.initializer.iter().map(|t| t.name().to_string()));
                    has_runtime_control_flow(&g.node, &mut inner)
                })
        }
        _ => false,
    }
}

/// Records the outputs of `n` in `consts` when they are computable from constants.
fn track_constants(n: &onnx::NodeProto, consts: &mut HashSet<String>) {
    let from_constants = n.op_type() == "Constant"
        || (!matches!(n.op_type(), "If" | "Loop" | "Scan" | "Shape" | "Size")
            && n.input.iter().any(|i| !i.is_empty())
            && n.input.iter().all(|i| i.is_empty() || consts.contains(i)));
    if from_constants {
        consts.extend(n.output.iter().filter(|o| !o.is_empty()).cloned());
    }
}

/// Whether `nodes` hold run-time control flow (see [`is_runtime_control_flow`]).
pub(crate) fn has_runtime_control_flow(nodes: &[onnx::NodeProto], consts: &mut HashSet<String>) -> bool {
    for n in nodes {
        if is_runtime_control_flow(n, consts) {
            return true;
        }
        track_constants(n, consts);
    }
    false
}

/// Names `nodes` read that they do not define (subgraph reads of outer values
/// included), in first-use order, appended to `out`.
fn free_names(nodes: &[onnx::NodeProto], defined: &mut HashSet<String>, out: &mut Vec<String>) {
    let note = |name: &str, defined: &HashSet<String>, out: &mut Vec<String>| {
        if !name.is_empty() && !defined.contains(name) && !out.iter().any(|o| o == name) {
            out.push(name.to_string());
        }
    };
    for n in nodes {
        for i in &n.input {
            note(i, defined, out);
        }
        for a in &n.attribute {
            for g in a.g.iter().chain(&a.graphs) {
                let mut inner = defined.clone();
                inner.extend(g.input.iter().map(|v| v.name().to_string()));
                inner.extend(g.initializer.iter().map(|t| t.name().to_string()));
                let mut sub = vec![];
                free_names(&g.node, &mut inner, &mut sub);
                for o in &g.output {
                    if !inner.contains(o.name()) && !sub.iter().any(|s| s == o.name()) {
                        sub.push(o.name().to_string());
                    }
                }
                for s in sub {
                    note(&s, defined, out);
                }
            }
        }
        defined.extend(n.output.iter().filter(|o| !o.is_empty()).cloned());
    }
}

fn node_label(n: &onnx::NodeProto, idx: usize) -> String {
    if n.name().is_empty() {
        format!("#{idx}")
    } else {
        n.name().to_string()
    }
}

/// The values visible to a program: its own (inputs and results so far), its
/// graph's initializers, then the enclosing scopes'.
pub(crate) struct Scope<'a> {
    values: HashMap<String, Tensor>,
    constants: &'a HashMap<String, Tensor>,
    parent: Option<&'a Scope<'a>>,
}

impl<'a> Scope<'a> {
    /// The value of `name` and whether it is a constant (an initializer).
    fn lookup(&self, name: &str) -> Option<(&Tensor, bool)> {
        if let Some(t) = self.values.get(name) {
            return Some((t, false));
        }
        if let Some(t) = self.constants.get(name) {
            return Some((t, true));
        }
        self.parent.and_then(|p| p.lookup(name))
    }
}

/// Concrete dtype and dims of one input, plus its bytes when its value is
/// compiled in.
type InputKey = (DType, Vec<usize>, Option<Vec<u8>>);

struct CompiledSegment {
    exe: Executable,
    feeds: Vec<String>,
}

/// A straight-line run of nodes, compiled per concrete inputs.
struct Segment {
    nodes: Vec<onnx::NodeProto>,
    /// Label of the first node, for errors.
    first: String,
    /// Names read from the scope.
    inputs: Vec<String>,
    /// Per input: its value (not only its shape) is compiled in.
    by_value: Vec<bool>,
    /// Names produced here that later steps or the graph outputs read.
    outputs: Vec<String>,
    cache: Mutex<HashMap<Vec<InputKey>, Arc<CompiledSegment>>>,
}

fn bytes_of(t: &Tensor) -> Vec<u8> {
    let t = t.contiguous_copy();
    t.buffer().as_bytes().to_vec()
}

impl Segment {
    /// What the segment reads from `scope`, and the compile-cache key of that.
    fn gather<'s>(&'s self, scope: &'s Scope) -> Result<(Vec<SegmentInput<'s>>, Vec<InputKey>)> {
        let mut inputs = Vec::with_capacity(self.inputs.len());
        let mut key = Vec::with_capacity(self.inputs.len());
        for (name, &by_value) in self.inputs.iter().zip(&self.by_value) {
            let (t, constant) = scope.lookup(name).ok_or_else(|| OnnxError::Node {
                node: self.first.clone(),
                op_type: self.nodes.first().map(|n| n.op_type().to_string()).unwrap_or_default(),
                message: format!("reads '{name}', which no earlier node, initializer or input produces"),
            })?;
            let bind = constant || by_value;
            key.push((
                t.dtype(),
                t.shape().to_vec(),
                (by_value && !constant).then(|| bytes_of(t)),
            ));
            inputs.push(SegmentInput { name, value: t, bind });
        }
        Ok((inputs, key))
    }

    fn run(&self, rt: &Runtime, scope: &Scope) -> Result<Vec<Tensor>> {
        let (mut inputs, key) = self.gather(scope)?;
        let cached = self
            .cache
            .lock()
            .map_err(|_| OnnxError::Parse("segment cache poisoned".into()))?
            .get(&key)
            .cloned();
        let compiled = match cached {
            Some(c) => c,
            None => {
                let mut sg = import_segment(&self.nodes, &inputs, &self.outputs, rt.opset, rt.base_dir)?;
                // An input read only for its dtype or shape (CastLike, Shape)
                // leaves a dead placeholder, which the executor's positional
                // feeding does not skip: import again with such inputs bound.
                let live = stitch_core::passes::prune::live_nodes(&sg.graph, &sg.outputs);
                let dead: Vec<&str> = sg
                    .graph
                    .placeholders()
                    .into_iter()
                    .filter(|(_, v)| !live[v.node.0 as usize])
                    .map(|(name, _)| name)
                    .collect();
                if !dead.is_empty() {
                    for i in inputs.iter_mut() {
                        i.bind |= dead.contains(&i.name);
                    }
                    sg = import_segment(&self.nodes, &inputs, &self.outputs, rt.opset, rt.base_dir)?;
                }
                let exe = Executable::compile_placed(
                    &sg.graph,
                    &sg.outputs,
                    rt.backends.to_vec(),
                    CompileOptions::default(),
                )?;
                let c = Arc::new(CompiledSegment { exe, feeds: sg.feeds });
                let mut cache = self
                    .cache
                    .lock()
                    .map_err(|_| OnnxError::Parse("segment cache poisoned".into()))?;
                if cache.len() >= MAX_CACHED_VARIANTS {
                    cache.clear();
                }
                cache.insert(key, c.clone());
                c
            }
        };
        let feed: Vec<(&str, Tensor)> = compiled
            .feeds
            .iter()
            .map(|f| {
                let t = inputs
                    .iter()
                    .find(|i| i.name == f)
                    .map(|i| i.value.clone())
                    .ok_or_else(|| OnnxError::Parse(format!("internal: segment feed '{f}' missing")))?;
                Ok((f.as_str(), t))
            })
            .collect::<Result<_>>()?;
        let mut state = compiled.exe.new_state();
        let outs = compiled.exe.run(&feed, &mut state)?;
        outs.into_iter().map(|t| to_host(t, rt.backends)).collect()
    }
}

/// A tensor in host memory (control flow reads values and slices them on the host).
fn to_host(t: Tensor, backends: &[Arc<dyn Backend>]) -> Result<Tensor> {
    if t.device_memory().is_none() {
        return Ok(t);
    }
    let b = backends
        .iter()
        .find(|b| !b.is_host())
        .ok_or_else(|| OnnxError::Parse("a device tensor without a device backend".into()))?;
    Ok(b.download(&t)?)
}

#[derive(Clone)]
struct ScanAttrs {
    num_scan_inputs: usize,
    input_directions: Vec<i64>,
    input_axes: Vec<i64>,
    output_directions: Vec<i64>,
    output_axes: Vec<i64>,
    /// Opset 8: a leading batch axis and an optional `sequence_lens` input.
    batched: bool,
}

enum ControlKind {
    If { then_branch: Program, else_branch: Program },
    Loop { body: Program },
    Scan { body: Program, attrs: ScanAttrs },
}

struct ControlNode {
    node: onnx::NodeProto,
    label: String,
    kind: ControlKind,
}

enum Step {
    Segment(Segment),
    Control(Box<ControlNode>),
}

/// A straight-line run of nodes (with their indices), or one control node.
enum Piece<'g> {
    Run(Vec<(usize, &'g onnx::NodeProto)>),
    Control(usize, &'g onnx::NodeProto),
}

/// One ONNX graph (the model's, or a branch or body) as segments and control nodes.
pub(crate) struct Program {
    /// Graph input names (a body's are bound by position).
    inputs: Vec<String>,
    /// Declared graph outputs.
    outputs: Vec<onnx::ValueInfoProto>,
    constants: HashMap<String, Tensor>,
    steps: Vec<Step>,
}

impl std::fmt::Debug for Program {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let segments = self.steps.iter().filter(|s| matches!(s, Step::Segment(_))).count();
        f.debug_struct("Program")
            .field("inputs", &self.inputs)
            .field("outputs", &self.outputs.iter().map(|o| o.name()).collect::<Vec<_>>())
            .field("segments", &segments)
            .field("control_nodes", &(self.steps.len() - segments))
            .finish()
    }
}

fn node_error(n: &onnx::NodeProto, label: &str, message: impl Into<String>) -> OnnxError {
    OnnxError::Node {
        node: label.to_string(),
        op_type: n.op_type().to_string(),
        message: message.into(),
    }
}

fn subgraph<'a>(n: &'a onnx::NodeProto, label: &str, name: &str) -> Result<&'a onnx::GraphProto> {
    n.attribute
        .iter()
        .find(|a| a.name() == name)
        .and_then(|a| a.g.as_ref())
        .ok_or_else(|| node_error(n, label, format!("missing graph attribute '{name}'")))
}

fn ints_attr(n: &onnx::NodeProto, name: &str) -> Option<Vec<i64>> {
    n.attribute.iter().find(|a| a.name() == name).map(|a| a.ints.clone())
}

fn int_attr(n: &onnx::NodeProto, name: &str) -> Option<i64> {
    n.attribute.iter().find(|a| a.name() == name).map(|a| a.i())
}

impl Program {
    /// Cuts `g` into segments and control nodes. `outer_consts` are the
    /// constant names of the enclosing scopes.
    pub(crate) fn build(
        g: &onnx::GraphProto,
        outer_consts: &HashSet<String>,
        opset: i64,
        base_dir: Option<&Path>,
    ) -> Result<Program> {
        let mut constants = HashMap::new();
        for t in &g.initializer {
            let tensor = tensor_from_proto(t, base_dir).map_err(OnnxError::Parse)?;
            constants.insert(t.name().to_string(), tensor);
        }
        let mut consts = outer_consts.clone();
        consts.extend(constants.keys().cloned());
        // Straight-line runs and control nodes, in order.
        let mut pieces: Vec<Piece> = vec![];
        for (idx, n) in g.node.iter().enumerate() {
            if is_runtime_control_flow(n, &consts) {
                pieces.push(Piece::Control(idx, n));
            } else {
                match pieces.last_mut() {
                    Some(Piece::Run(run)) => run.push((idx, n)),
                    _ => pieces.push(Piece::Run(vec![(idx, n)])),
                }
            }
            track_constants(n, &mut consts);
        }
        // Which names each piece must hand on: walk backwards from the graph outputs.
        let mut needed: HashSet<String> = g.output.iter().map(|o| o.name().to_string()).collect();
        let mut steps_rev = vec![];
        let mut consts_seen = outer_consts.clone();
        consts_seen.extend(constants.keys().cloned());
        for n in &g.node {
            track_constants(n, &mut consts_seen);
        }
        for piece in pieces.into_iter().rev() {
            let nodes: Vec<onnx::NodeProto> = match &piece {
                Piece::Run(run) => run.iter().map(|(_, n)| (*n).clone()).collect(),
                Piece::Control(_, n) => vec![(*n).clone()],
            };
            let mut reads = vec![];
            free_names(&nodes, &mut HashSet::new(), &mut reads);
            let step = match piece {
                Piece::Run(run) => {
                    let mut outputs = vec![];
                    for n in &nodes {
                        for o in &n.output {
                            if !o.is_empty() && needed.contains(o) && !outputs.contains(o) {
                                outputs.push(o.clone());
                            }
                        }
                    }
                    let statically = values_needed_statically(&nodes);
                    let by_value = reads
                        .iter()
                        .map(|r| statically.contains(r.as_str()) || consts_seen.contains(r))
                        .collect();
                    Step::Segment(Segment {
                        first: node_label(run[0].1, run[0].0),
                        nodes,
                        inputs: reads.clone(),
                        by_value,
                        outputs,
                        cache: Mutex::new(HashMap::new()),
                    })
                }
                Piece::Control(idx, n) => {
                    Step::Control(Box::new(ControlNode::build(n, idx, &consts_seen, opset, base_dir)?))
                }
            };
            needed.extend(reads);
            steps_rev.push(step);
        }
        steps_rev.reverse();
        Ok(Program {
            inputs: g.input.iter().map(|v| v.name().to_string()).collect(),
            outputs: g.output.clone(),
            constants,
            steps: steps_rev,
        })
    }

    /// Runs the program in `scope` (holding its inputs); returns its outputs.
    pub(crate) fn run(&self, rt: &Runtime, scope: &mut Scope) -> Result<Vec<Tensor>> {
        for step in &self.steps {
            match step {
                // A segment nothing later reads need not run.
                Step::Segment(s) if s.outputs.is_empty() => {}
                Step::Segment(s) => {
                    let outs = s.run(rt, scope)?;
                    for (name, t) in s.outputs.iter().zip(outs) {
                        scope.values.insert(name.clone(), t);
                    }
                }
                Step::Control(c) => {
                    let outs = c.run(rt, scope)?;
                    for (name, t) in c.node.output.iter().zip(outs) {
                        if !name.is_empty() {
                            scope.values.insert(name.clone(), t);
                        }
                    }
                }
            }
        }
        self.outputs
            .iter()
            .map(|o| {
                scope
                    .lookup(o.name())
                    .map(|(t, _)| t.clone())
                    .ok_or_else(|| OnnxError::Parse(format!("graph output '{}' is not produced", o.name())))
            })
            .collect()
    }

    /// The dtype and dims of each output the program would give on `inputs`,
    /// found by importing (not running) it; `None` when that needs running
    /// (control flow inside) or fails.
    fn output_types(&self, rt: &Runtime, parent: &Scope, inputs: Vec<Tensor>) -> Option<Vec<(DType, Vec<usize>)>> {
        let scope = Scope {
            values: self.inputs.iter().cloned().zip(inputs).collect(),
            constants: &self.constants,
            parent: Some(parent),
        };
        let segment = match self.steps.as_slice() {
            [] => None,
            [Step::Segment(s)] => Some(s),
            _ => return None,
        };
        let imported = match segment {
            Some(s) => {
                let (inputs, _) = s.gather(&scope).ok()?;
                Some((
                    s,
                    import_segment(&s.nodes, &inputs, &s.outputs, rt.opset, rt.base_dir).ok()?,
                ))
            }
            None => None,
        };
        self.outputs
            .iter()
            .map(|o| {
                if let Some((s, sg)) = &imported {
                    if let Some(k) = s.outputs.iter().position(|n| n == o.name()) {
                        let ty = sg.graph.ty(sg.outputs[k]);
                        return Some((ty.dtype, ty.concrete()?));
                    }
                }
                scope.lookup(o.name()).map(|(t, _)| (t.dtype(), t.shape().to_vec()))
            })
            .collect()
    }

    /// Runs the program as the model's top-level graph with its inputs by name.
    pub(crate) fn run_top(&self, rt: &Runtime, inputs: &[(&str, Tensor)]) -> Result<Vec<Tensor>> {
        let mut scope = Scope {
            values: inputs.iter().map(|(n, t)| (n.to_string(), t.clone())).collect(),
            constants: &self.constants,
            parent: None,
        };
        self.run(rt, &mut scope)
    }

    /// Runs the program as a branch or body of a node in `parent`, its graph
    /// inputs bound to `inputs` by position.
    fn run_sub(&self, rt: &Runtime, parent: &Scope, inputs: Vec<Tensor>) -> Result<Vec<Tensor>> {
        let mut scope = Scope {
            values: self.inputs.iter().cloned().zip(inputs).collect(),
            constants: &self.constants,
            parent: Some(parent),
        };
        self.run(rt, &mut scope)
    }
}

impl ControlNode {
    fn build(
        n: &onnx::NodeProto,
        idx: usize,
        consts: &HashSet<String>,
        opset: i64,
        base_dir: Option<&Path>,
    ) -> Result<ControlNode> {
        let label = node_label(n, idx);
        let sub = |name: &str| -> Result<Program> {
            let g = subgraph(n, &label, name)?;
            Program::build(g, consts, opset, base_dir).map_err(|e| match e {
                e @ OnnxError::Node { .. } => node_error(n, &label, format!("in {name}: {e}")),
                e => e,
            })
        };
        let kind = match n.op_type() {
            "If" => {
                let then_branch = sub("then_branch")?;
                let else_branch = sub("else_branch")?;
                for (which, b) in [("then_branch", &then_branch), ("else_branch", &else_branch)] {
                    if b.outputs.len() != n.output.len() {
                        return Err(node_error(
                            n,
                            &label,
                            format!(
                                "{which} has {} outputs but the node has {}",
                                b.outputs.len(),
                                n.output.len()
                            ),
                        ));
                    }
                }
                ControlKind::If {
                    then_branch,
                    else_branch,
                }
            }
            "Loop" => {
                let body = sub("body")?;
                if n.input.len() < 2 {
                    return Err(node_error(
                        n,
                        &label,
                        format!(
                            "has {} inputs; Loop takes M and cond (either may be empty) and the loop-carried values",
                            n.input.len()
                        ),
                    ));
                }
                let carried = n.input.len() - 2;
                if body.inputs.len() != 2 + carried {
                    return Err(node_error(
                        n,
                        &label,
                        format!(
                            "the body has {} inputs; it must have 2 + {carried} (iteration number, condition, \
                             loop-carried values)",
                            body.inputs.len()
                        ),
                    ));
                }
                if body.outputs.len() < 1 + carried {
                    return Err(node_error(
                        n,
                        &label,
                        format!(
                            "the body has {} outputs; it must have at least 1 + {carried} (condition, loop-carried \
                             values), then its scan outputs",
                            body.outputs.len()
                        ),
                    ));
                }
                let scans = body.outputs.len() - 1 - carried;
                if n.output.len() > carried + scans {
                    return Err(node_error(
                        n,
                        &label,
                        format!(
                            "has {} outputs but its body gives {carried} loop-carried and {scans} scan outputs",
                            n.output.len()
                        ),
                    ));
                }
                ControlKind::Loop { body }
            }
            "Scan" => {
                let body = sub("body")?;
                let m = int_attr(n, "num_scan_inputs")
                    .ok_or_else(|| node_error(n, &label, "missing attribute num_scan_inputs"))?;
                let batched = opset < 9;
                let lead = usize::from(batched);
                let m = usize::try_from(m)
                    .ok()
                    .filter(|&m| m >= 1 && m + lead <= n.input.len())
                    .ok_or_else(|| {
                        node_error(
                            n,
                            &label,
                            format!("num_scan_inputs {m} does not fit its {} inputs", n.input.len()),
                        )
                    })?;
                let states = n.input.len() - lead - m;
                if body.inputs.len() != states + m {
                    return Err(node_error(
                        n,
                        &label,
                        format!(
                            "the body has {} inputs; it must have {states} state + {m} scan inputs",
                            body.inputs.len()
                        ),
                    ));
                }
                if body.outputs.len() < states || n.output.len() != body.outputs.len() {
                    return Err(node_error(
                        n,
                        &label,
                        format!(
                            "the body has {} outputs and the node {}; both must be {states} states + the scan outputs",
                            body.outputs.len(),
                            n.output.len()
                        ),
                    ));
                }
                let k = body.outputs.len() - states;
                let list = |name: &str, len: usize| -> Result<Vec<i64>> {
                    let v = ints_attr(n, name).unwrap_or_else(|| vec![0; len]);
                    if v.len() != len {
                        return Err(node_error(
                            n,
                            &label,
                            format!("{name} has {} entries, expected {len}", v.len()),
                        ));
                    }
                    Ok(v)
                };
                let attrs = if batched {
                    ScanAttrs {
                        num_scan_inputs: m,
                        input_directions: list("directions", m)?,
                        input_axes: vec![0; m],
                        output_directions: vec![0; k],
                        output_axes: vec![0; k],
                        batched,
                    }
                } else {
                    ScanAttrs {
                        num_scan_inputs: m,
                        input_directions: list("scan_input_directions", m)?,
                        input_axes: list("scan_input_axes", m)?,
                        output_directions: list("scan_output_directions", k)?,
                        output_axes: list("scan_output_axes", k)?,
                        batched,
                    }
                };
                ControlKind::Scan { body, attrs }
            }
            other => return Err(node_error(n, &label, format!("internal: {other} is not control flow"))),
        };
        Ok(ControlNode {
            node: n.clone(),
            label,
            kind,
        })
    }

    fn err(&self, message: impl Into<String>) -> OnnxError {
        node_error(&self.node, &self.label, message)
    }

    /// Wraps an error from a branch or body so it names this node too.
    fn within(&self, what: &str, e: OnnxError) -> OnnxError {
        self.err(format!("in {what}: {e}"))
    }

    fn input<'s>(&self, scope: &'s Scope, i: usize) -> Result<Option<&'s Tensor>> {
        match self.node.input.get(i) {
            None => Ok(None),
            Some(s) if s.is_empty() => Ok(None),
            Some(s) => scope
                .lookup(s)
                .map(|(t, _)| Some(t))
                .ok_or_else(|| self.err(format!("input {i} '{s}' is not produced by any earlier node"))),
        }
    }

    /// A one-element bool tensor's value.
    fn bool_scalar(&self, t: &Tensor, what: &str) -> Result<bool> {
        if t.dtype() != DType::Bool || t.numel() != 1 {
            return Err(self.err(format!(
                "{what} must be a bool tensor of one element, got {} {:?}",
                t.dtype(),
                t.shape()
            )));
        }
        Ok(t.to_f64_vec()[0] != 0.0)
    }

    fn run(&self, rt: &Runtime, scope: &Scope) -> Result<Vec<Tensor>> {
        match &self.kind {
            ControlKind::If {
                then_branch,
                else_branch,
            } => {
                let cond = self.input(scope, 0)?.ok_or_else(|| self.err("missing condition"))?;
                let take = self.bool_scalar(cond, "the condition")?;
                let (which, branch) = if take {
                    ("then_branch", then_branch)
                } else {
                    ("else_branch", else_branch)
                };
                branch.run_sub(rt, scope, vec![]).map_err(|e| self.within(which, e))
            }
            ControlKind::Loop { body } => self.run_loop(rt, scope, body),
            ControlKind::Scan { body, attrs } => self.run_scan(rt, scope, body, attrs),
        }
    }

    fn run_loop(&self, rt: &Runtime, scope: &Scope, body: &Program) -> Result<Vec<Tensor>> {
        let trip_count = match self.input(scope, 0)? {
            None => None,
            Some(m) => {
                if !m.dtype().is_int() || m.numel() != 1 {
                    return Err(self.err(format!(
                        "the trip count M must be an integer tensor of one element, got {} {:?}",
                        m.dtype(),
                        m.shape()
                    )));
                }
                Some(m.to_f64_vec()[0] as i64)
            }
        };
        let mut cond = match self.input(scope, 1)? {
            None => true,
            Some(c) => self.bool_scalar(c, "the initial condition")?,
        };
        let carried_n = self.node.input.len() - 2;
        let mut carried = Vec::with_capacity(carried_n);
        for i in 0..carried_n {
            let t = self
                .input(scope, 2 + i)?
                .ok_or_else(|| self.err(format!("loop-carried input {} is empty", 2 + i)))?;
            carried.push(t.clone());
        }
        let scan_n = body.outputs.len() - 1 - carried_n;
        let mut scans: Vec<Vec<Tensor>> = vec![vec![]; scan_n];
        let mut iteration: i64 = 0;
        while cond && trip_count.is_none_or(|m| iteration < m) {
            let mut inputs = Vec::with_capacity(2 + carried_n);
            inputs.push(Tensor::scalar(iteration));
            inputs.push(Tensor::scalar(stitch_core::Bool8(u8::from(cond))));
            inputs.append(&mut carried);
            let mut outs = body
                .run_sub(rt, scope, inputs)
                .map_err(|e| self.within(&format!("body (iteration {iteration})"), e))?;
            let rest = outs.split_off(1);
            cond = self.bool_scalar(
                &outs[0],
                &format!("the body's condition output (iteration {iteration})"),
            )?;
            let mut rest = rest.into_iter();
            carried = rest.by_ref().take(carried_n).collect();
            for (k, t) in rest.enumerate() {
                scans[k].push(t);
            }
            iteration += 1;
        }
        let inferred = if iteration == 0 && scan_n > 0 {
            let mut first = vec![Tensor::scalar(0i64), Tensor::scalar(stitch_core::Bool8(u8::from(cond)))];
            first.extend(carried.iter().cloned());
            body.output_types(rt, scope, first)
        } else {
            None
        };
        let mut out = carried;
        for (k, parts) in scans.into_iter().enumerate() {
            let declared = &body.outputs[1 + carried_n + k];
            let ty = inferred.as_ref().and_then(|t| t.get(1 + carried_n + k));
            out.push(self.stack(parts, declared, ty)?);
        }
        out.truncate(self.node.output.len());
        Ok(out)
    }

    fn run_scan(&self, rt: &Runtime, scope: &Scope, body: &Program, a: &ScanAttrs) -> Result<Vec<Tensor>> {
        let lead = usize::from(a.batched);
        let m = a.num_scan_inputs;
        let states_n = self.node.input.len() - lead - m;
        let mut ins = Vec::with_capacity(states_n + m);
        for i in lead..self.node.input.len() {
            let t = self
                .input(scope, i)?
                .ok_or_else(|| self.err(format!("input {i} is empty")))?;
            ins.push(t.clone());
        }
        if !a.batched {
            let scan_ins = ins.split_off(states_n);
            return self.scan_once(rt, scope, body, a, ins, scan_ins);
        }
        // Opset 8: every input has a leading batch axis; run each batch entry alone.
        let batch = ins
            .first()
            .map(|t| t.shape().first().copied().unwrap_or(0))
            .unwrap_or(0);
        if let Some(t) = ins.iter().find(|t| t.shape().first() != Some(&batch)) {
            return Err(self.err(format!(
                "every input needs the batch size {batch} on axis 0, got {:?}",
                t.shape()
            )));
        }
        if let Some(lens) = self.input(scope, 0)? {
            let full = ins[states_n].shape().get(1).copied().unwrap_or(0);
            if lens.to_f64_vec().iter().any(|&l| l as usize != full) {
                return Err(self.err(format!(
                    "sequence_lens shorter than the scan length {full} are not supported"
                )));
            }
        }
        let mut per_batch: Vec<Vec<Tensor>> = vec![];
        for b in 0..batch {
            let mut sliced = vec![];
            for t in &ins {
                sliced.push(take(t, 0, b).map_err(|e| self.err(e))?);
            }
            let scan_ins = sliced.split_off(states_n);
            per_batch.push(self.scan_once(rt, scope, body, a, sliced, scan_ins)?);
        }
        let k = self.node.output.len();
        (0..k)
            .map(|j| {
                let parts: Vec<Tensor> = per_batch.iter().map(|o| o[j].clone()).collect();
                stack(&parts).map_err(|e| self.err(e))
            })
            .collect()
    }

    fn scan_once(
        &self,
        rt: &Runtime,
        scope: &Scope,
        body: &Program,
        a: &ScanAttrs,
        mut states: Vec<Tensor>,
        scan_ins: Vec<Tensor>,
    ) -> Result<Vec<Tensor>> {
        let mut axes = vec![];
        let mut len = None;
        for (j, t) in scan_ins.iter().enumerate() {
            let ax = stitch_core::shape::normalize_axis(a.input_axes[j], t.rank()).ok_or_else(|| {
                self.err(format!(
                    "scan input {j} axis {} is out of range for shape {:?}",
                    a.input_axes[j],
                    t.shape()
                ))
            })?;
            let l = t.shape()[ax];
            if len.is_some_and(|x| x != l) {
                return Err(self.err(format!(
                    "scan inputs disagree on the sequence length ({} and {l})",
                    len.unwrap_or(0)
                )));
            }
            len = Some(l);
            axes.push(ax);
        }
        let len = len.unwrap_or(0);
        let states_n = states.len();
        let k = body.outputs.len() - states_n;
        let mut scans: Vec<Vec<Tensor>> = vec![vec![]; k];
        for step in 0..len {
            let mut inputs = std::mem::take(&mut states);
            for (j, t) in scan_ins.iter().enumerate() {
                let i = if a.input_directions[j] != 0 {
                    len - 1 - step
                } else {
                    step
                };
                inputs.push(take(t, axes[j], i).map_err(|e| self.err(e))?);
            }
            let outs = body
                .run_sub(rt, scope, inputs)
                .map_err(|e| self.within(&format!("body (iteration {step})"), e))?;
            let mut outs = outs.into_iter();
            states = outs.by_ref().take(states_n).collect();
            for (j, t) in outs.enumerate() {
                scans[j].push(t);
            }
        }
        let mut out = states;
        for (j, mut parts) in scans.into_iter().enumerate() {
            if a.output_directions[j] != 0 {
                parts.reverse();
            }
            let stacked = self.stack(parts, &body.outputs[states_n + j], None)?;
            let rank = stacked.rank();
            let ax = stitch_core::shape::normalize_axis(a.output_axes[j], rank).ok_or_else(|| {
                self.err(format!(
                    "scan output {j} axis {} is out of range for rank {rank}",
                    a.output_axes[j]
                ))
            })?;
            out.push(if ax == 0 {
                stacked
            } else {
                let mut perm: Vec<usize> = (1..rank).collect();
                perm.insert(ax, 0);
                stacked.permute(&perm)?.contiguous_copy()
            });
        }
        Ok(out)
    }

    /// Stacks per-iteration outputs along a new axis 0. With no iterations, an
    /// empty tensor of the type the body would give (`inferred`, from
    /// importing it on the first iteration's inputs), else of its declared type.
    fn stack(
        &self,
        parts: Vec<Tensor>,
        declared: &onnx::ValueInfoProto,
        inferred: Option<&(DType, Vec<usize>)>,
    ) -> Result<Tensor> {
        if let (true, Some((dtype, dims))) = (parts.is_empty(), inferred) {
            let mut shape = vec![0usize];
            shape.extend_from_slice(dims);
            return Ok(Tensor::zeros(*dtype, &shape));
        }
        if parts.is_empty() {
            let Some(type_proto::Value::TensorType(tt)) = declared.r#type.as_ref().and_then(|t| t.value.as_ref())
            else {
                return Err(self.err(format!(
                    "scan output '{}' has no declared tensor type to give its empty result",
                    declared.name()
                )));
            };
            let dtype = dtype_from_onnx(tt.elem_type()).ok_or_else(|| {
                self.err(format!(
                    "scan output '{}' has an unsupported element type",
                    declared.name()
                ))
            })?;
            let mut shape = vec![0usize];
            for d in tt.shape.iter().flat_map(|s| &s.dim) {
                match &d.value {
                    Some(onnx::tensor_shape_proto::dimension::Value::DimValue(v)) if *v >= 0 => shape.push(*v as usize),
                    _ => shape.push(0),
                }
            }
            return Ok(Tensor::zeros(dtype, &shape));
        }
        stack(&parts).map_err(|e| self.err(e))
    }
}

/// Element `i` along `axis`, that axis removed (a contiguous copy).
fn take(t: &Tensor, axis: usize, i: usize) -> std::result::Result<Tensor, String> {
    let s = t
        .slice(axis, i as isize, i as isize + 1, 1)
        .map_err(|e| e.to_string())?
        .contiguous_copy();
    let mut shape = t.shape().to_vec();
    shape.remove(axis);
    s.reshape(&shape).map_err(|e| e.to_string())
}

/// Stacks equal-shaped tensors along a new axis 0.
fn stack(parts: &[Tensor]) -> std::result::Result<Tensor, String> {
    let first = parts.first().ok_or("nothing to stack")?;
    let mut bytes = Vec::with_capacity(parts.len() * first.numel() * first.dtype().size_in_bytes());
    for (i, p) in parts.iter().enumerate() {
        if p.dtype() != first.dtype() || p.shape() != first.shape() {
            return Err(format!(
                "iteration {i} gives {} {:?} where iteration 0 gave {} {:?}; scan outputs must keep one type and shape",
                p.dtype(),
                p.shape(),
                first.dtype(),
                first.shape()
            ));
        }
        bytes.extend_from_slice(&bytes_of(p));
    }
    let mut shape = vec![parts.len()];
    shape.extend_from_slice(first.shape());
    Ok(Tensor::from_buffer(
        stitch_core::Buffer::from_bytes(&bytes),
        first.dtype(),
        &shape,
    ))
}

/// A model's top-level program compiled for a list of backends.
pub(crate) struct CompiledProgram {
    pub program: Program,
    pub backends: Vec<Arc<dyn Backend>>,
    pub opset: i64,
    pub base_dir: Option<PathBuf>,
}

impl CompiledProgram {
    pub(crate) fn run(&self, inputs: &[(&str, Tensor)]) -> Result<Vec<Tensor>> {
        let rt = Runtime {
            backends: &self.backends,
            opset: self.opset,
            base_dir: self.base_dir.as_deref(),
        };
        self.program.run_top(&rt, inputs)
    }
}

impl Program {
    /// The same program with empty compile caches (for another backend list).
    pub(crate) fn fresh(&self) -> Program {
        Program {
            inputs: self.inputs.clone(),
            outputs: self.outputs.clone(),
            constants: self.constants.clone(),
            steps: self.steps.iter().map(Step::fresh).collect(),
        }
    }
}

impl Step {
    fn fresh(&self) -> Step {
        match self {
            Step::Segment(s) => Step::Segment(Segment {
                nodes: s.nodes.clone(),
                first: s.first.clone(),
                inputs: s.inputs.clone(),
                by_value: s.by_value.clone(),
                outputs: s.outputs.clone(),
                cache: Mutex::new(HashMap::new()),
            }),
            Step::Control(c) => Step::Control(Box::new(ControlNode {
                node: c.node.clone(),
                label: c.label.clone(),
                kind: match &c.kind {
                    ControlKind::If {
                        then_branch,
                        else_branch,
                    } => ControlKind::If {
                        then_branch: then_branch.fresh(),
                        else_branch: else_branch.fresh(),
                    },
                    ControlKind::Loop { body } => ControlKind::Loop { body: body.fresh() },
                    ControlKind::Scan { body, attrs } => ControlKind::Scan {
                        body: body.fresh(),
                        attrs: attrs.clone(),
                    },
                },
            })),
        }
    }
}

impl Program {
    /// The graph output names, in order.
    pub(crate) fn output_names(&self) -> Vec<String> {
        self.outputs.iter().map(|o| o.name().to_string()).collect()
    }
}
