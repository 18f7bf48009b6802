//! The executor: graph → (specialised, decomposed, pruned) plan → backend.
//!
//! [`Executable::compile`] checks the graph against a [`Backend`];
//! [`Executable::run`] specialises the graph for the inputs' concrete shapes
//! (cached per shape signature), then walks the plan, calling the backend for
//! each op and handling sources and state itself. Values are dropped after
//! their last use so that buffers can be reused and variables written in place.
//!
//! This is the straightforward executor of the core; the optimising compiler
//! (fusion, memory planning) plugs in between specialisation and execution.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use crate::error::{Error, Result};
use crate::graph::{Graph, Node, TensorType, Value, VarId};
use crate::ops::Op;
use crate::passes;
use crate::tensor::{BufferPool, Dims, Tensor};

/// The outputs of one node's execution (inline for up to two: no allocation).
pub type Outputs = smallvec::SmallVec<[Tensor; 2]>;

/// A device that runs ops. CPU and CUDA implement it; core knows no backend.
/// What a backend prepared for one node of a plan (see [`Backend::prepare`]);
/// the backend downcasts it to its own type.
pub type Prepared = Arc<dyn std::any::Any + Send + Sync>;

pub trait Backend: Send + Sync {
    /// Short name, e.g. `cpu`.
    fn name(&self) -> &str;
    /// Whether the backend runs this node directly. For a composite op, `false`
    /// makes the compiler decompose it; for a primitive, `false` is an error
    /// until placement with fallback exists.
    fn supports(&self, node: &Node) -> bool;
    /// Like [`Backend::supports`], knowing the types of the node's inputs (the
    /// compiler asks this once shapes are concrete), so a backend can decline
    /// by input dtype or rank. Defaults to `supports`.
    fn supports_inputs(&self, node: &Node, inputs: &[TensorType]) -> bool {
        let _ = inputs;
        self.supports(node)
    }
    /// Whether the backend evaluates fused regions (`Op::Fused`); if so the
    /// compiler fuses elementwise chains for it.
    fn supports_fusion(&self) -> bool {
        false
    }
    /// Runs `node` (whose output types are concrete) on `inputs`.
    fn execute(&self, node: &Node, inputs: &[Tensor]) -> Result<Outputs>;
    /// Work on a node's constant inputs done once per plan instead of on every
    /// run (e.g. packing a constant weight matrix into the matmul kernel's
    /// layout). `constants[i]` is the value of input `i` when it is a constant
    /// of the plan. What it returns is handed to [`Backend::execute_prepared`]
    /// on every run; `None` (the default) means nothing to prepare.
    fn prepare(&self, node: &Node, constants: &[Option<&Tensor>]) -> Result<Option<Prepared>> {
        let _ = (node, constants);
        Ok(None)
    }
    /// Runs `node` with what [`Backend::prepare`] made for it; `inputs` are
    /// all of its inputs, the constants included. Defaults to `execute`.
    fn execute_prepared(&self, node: &Node, inputs: &[Tensor], prepared: &Prepared) -> Result<Outputs> {
        let _ = prepared;
        self.execute(node, inputs)
    }
    /// Whether tensors of this backend live in host memory (then uploads and
    /// downloads are free and its tensors can be read directly).
    fn is_host(&self) -> bool {
        true
    }
    /// Writes `src` into `target` at `starts` in place (`slice_update` of a
    /// variable that lives on this backend, e.g. a KV cache on a GPU).
    fn write_slice(&self, target: &mut Tensor, starts: &[usize], src: &Tensor) -> Result<()> {
        target.write_slice(starts, src)
    }
    /// Runs `f`, which executes a whole plan whose first backend is this one.
    /// A backend may run it elsewhere (the CPU backend runs it on a thread-pool
    /// worker so that parallel kernels allocate nothing); the default calls it.
    fn run_plan(&self, f: &mut (dyn FnMut() + Send)) {
        f()
    }
    /// Moves a host tensor into this backend's memory (a copy step of the plan;
    /// host backends return it as is).
    fn upload(&self, t: &Tensor) -> Result<Tensor> {
        Ok(t.clone())
    }
    /// Moves a tensor of this backend to host memory (host backends return it as is).
    fn download(&self, t: &Tensor) -> Result<Tensor> {
        Ok(t.clone())
    }
    /// Waits until the work this backend has queued is finished (device
    /// backends run asynchronously). Only the profiler calls it, between steps.
    fn synchronize(&self) -> Result<()> {
        Ok(())
    }
    /// Profiling on devices: records a timing marker in the backend's queue
    /// (a CUDA event) and returns its handle; `None` (the default) means the
    /// backend has no markers and the profiler synchronises instead.
    fn record_marker(&self) -> Result<Option<usize>> {
        Ok(None)
    }
    /// Nanoseconds from marker `from` to each of `markers` (waiting for them to
    /// complete), then forgets every marker recorded so far.
    fn marker_elapsed_ns(&self, from: usize, markers: &[usize]) -> Result<Vec<u64>> {
        let _ = (from, markers);
        Err(Error::invalid(format!(
            "backend {} records no timing markers",
            self.name()
        )))
    }
}

/// Observes the executor's steps. The ordinary run path uses [`NoProbe`],
/// whose methods are empty and inlined away: no timing calls in a plain run.
trait Probe {
    fn begin(&mut self, exe: &Executable, plan: &Plan, node: usize) -> Result<()>;
    #[allow(clippy::too_many_arguments)]
    fn end(
        &mut self,
        exe: &Executable,
        plan: &Plan,
        step: usize,
        node: usize,
        args: &[Tensor],
        outs: &[Tensor],
    ) -> Result<()>;
}

struct NoProbe;

impl Probe for NoProbe {
    #[inline(always)]
    fn begin(&mut self, _: &Executable, _: &Plan, _: usize) -> Result<()> {
        Ok(())
    }
    #[inline(always)]
    fn end(&mut self, _: &Executable, _: &Plan, _: usize, _: usize, _: &[Tensor], _: &[Tensor]) -> Result<()> {
        Ok(())
    }
}

/// Times every step (see [`crate::profile`]). Host steps are timed with the
/// host clock; steps on a backend with timing markers (CUDA events) get a
/// marker before and after, resolved into device times after the run.
struct Recorder<'a> {
    origin: std::time::Instant,
    start: u64,
    start_marker: Option<usize>,
    out: &'a mut Vec<crate::profile::StepRecord>,
    /// (record index, backend, start marker, end marker) of device steps.
    marked: Vec<(usize, usize, usize, usize)>,
}

impl Recorder<'_> {
    fn now(&self) -> u64 {
        self.origin.elapsed().as_nanos() as u64
    }
}

impl Recorder<'_> {
    /// Replaces the host times of marked device steps by device times, anchored
    /// at the host time of each backend's first marked step.
    fn resolve(&mut self, exe: &Executable) -> Result<()> {
        for b in 0..exe.backends.len() {
            let mine: Vec<&(usize, usize, usize, usize)> = self.marked.iter().filter(|m| m.1 == b).collect();
            let Some(first) = mine.first() else { continue };
            let from = first.2;
            let anchor = self.out[first.0].start_ns;
            let markers: Vec<usize> = mine.iter().flat_map(|m| [m.2, m.3]).collect();
            let ns = exe.backends[b].marker_elapsed_ns(from, &markers)?;
            for (k, m) in mine.iter().enumerate() {
                let r = &mut self.out[m.0];
                r.start_ns = anchor + ns[2 * k];
                r.end_ns = (anchor + ns[2 * k + 1]).max(r.start_ns);
            }
        }
        Ok(())
    }
}

impl Probe for Recorder<'_> {
    fn begin(&mut self, exe: &Executable, plan: &Plan, i: usize) -> Result<()> {
        self.start = self.now();
        let backend = &exe.backends[plan.devices[i]];
        self.start_marker = if backend.is_host() {
            None
        } else {
            backend.record_marker()?
        };
        Ok(())
    }
    fn end(
        &mut self,
        exe: &Executable,
        plan: &Plan,
        step: usize,
        i: usize,
        args: &[Tensor],
        outs: &[Tensor],
    ) -> Result<()> {
        use crate::profile::{tensor_bytes, StepKind};
        let node = &plan.graph.nodes()[i];
        let dev = plan.devices[i];
        let backend = &exe.backends[dev];
        let end_marker = match self.start_marker {
            Some(_) => backend.record_marker()?,
            None => None,
        };
        if end_marker.is_none() {
            backend.synchronize()?;
        }
        let end = self.now();
        let host = |d: usize| exe.backends[d].is_host();
        let (kind, bytes, device) = match &node.op {
            Op::Placeholder { .. } => (StepKind::Input, outs.iter().map(tensor_bytes).sum(), dev),
            Op::Constant(_) => (StepKind::Constant, 0, dev),
            Op::ReadVariable(_) | Op::Assign(_) | Op::SliceUpdate(_) => {
                (StepKind::State, args.iter().map(tensor_bytes).sum(), dev)
            }
            Op::Copy { to } => {
                let from = plan.devices[node.inputs[0].node.0 as usize];
                let kind = match (host(from), host(*to)) {
                    (true, false) => StepKind::CopyHostToDevice,
                    (false, true) => StepKind::CopyDeviceToHost,
                    _ => StepKind::CopyDeviceToDevice,
                };
                (kind, outs.iter().map(tensor_bytes).sum(), *to)
            }
            op => {
                let kind = if dev != 0 {
                    StepKind::Fallback
                } else if matches!(op, Op::Fused(_)) {
                    StepKind::Fused
                } else {
                    StepKind::Kernel
                };
                let bytes = args.iter().chain(outs).map(tensor_bytes).sum();
                (kind, bytes, dev)
            }
        };
        let members = match &node.op {
            Op::Fused(r) => r.members.clone(),
            _ => Vec::new(),
        };
        self.out.push(crate::profile::StepRecord {
            step,
            node: node.name.clone(),
            op: node.op.kind(),
            kind,
            device: exe.backends[device].name().to_string(),
            start_ns: self.start,
            end_ns: end.max(self.start),
            bytes,
            flops: crate::profile::flops(node, args, outs),
            members,
        });
        if let (Some(s), Some(e)) = (self.start_marker, end_marker) {
            self.marked.push((self.out.len() - 1, dev, s, e));
        }
        // Recording is not part of the next step.
        self.start = self.now();
        Ok(())
    }
}

/// The types of `node`'s inputs in `graph`.
fn input_types_of(graph: &Graph, node: &Node) -> smallvec::SmallVec<[TensorType; 4]> {
    node.inputs.iter().map(|v| graph.ty(*v).clone()).collect()
}

/// Options for [`Executable::compile`].
#[derive(Debug, Clone)]
pub struct CompileOptions {
    /// Decompose every composite op into primitives, even those the backend
    /// implements, and fuse nothing: the op-by-op reference for checking
    /// fused kernels and regions.
    pub decompose_all: bool,
    /// Fuse elementwise chains (with a trailing reduction) into regions, when
    /// the backend supports them. On by default.
    pub fuse: bool,
}

impl Default for CompileOptions {
    fn default() -> Self {
        CompileOptions {
            decompose_all: false,
            fuse: true,
        }
    }
}

impl CompileOptions {
    /// The op-by-op reference: everything decomposed, nothing fused.
    pub fn reference() -> Self {
        CompileOptions {
            decompose_all: true,
            fuse: false,
        }
    }
}

/// Variables' values: the state one sequence carries across runs.
#[derive(Debug, Clone)]
pub struct State {
    values: Vec<Tensor>,
}

impl State {
    /// A fresh state holding each variable's initial value.
    pub fn new(graph: &Graph) -> State {
        State {
            values: graph.variables().iter().map(|v| v.initial.clone()).collect(),
        }
    }
    /// The current value of a variable.
    pub fn get(&self, var: VarId) -> &Tensor {
        &self.values[var.0 as usize]
    }
    /// Replaces a variable's value (dtype and shape must match).
    pub fn set(&mut self, var: VarId, value: Tensor) -> Result<()> {
        let cur = self
            .values
            .get_mut(var.0 as usize)
            .ok_or_else(|| Error::invalid(format!("variable #{} does not exist", var.0)))?;
        if cur.dtype() != value.dtype() || cur.shape() != value.shape() {
            return Err(Error::invalid(format!(
                "cannot set variable #{} of {} {:?} to {} {:?}",
                var.0,
                cur.dtype(),
                cur.shape(),
                value.dtype(),
                value.shape()
            )));
        }
        *cur = value;
        Ok(())
    }
}

/// What compilation did to a graph, pass by pass.
#[derive(Debug, Clone, Default)]
pub struct CompileReport {
    /// (pass name, nodes after it), starting with the source graph.
    pub nodes_after: Vec<(&'static str, usize)>,
    /// Pattern rewrites applied (e.g. attention subgraph → sdpa).
    pub rewritten: usize,
    /// Composite nodes decomposed.
    pub decomposed: usize,
    /// Nodes replaced by constants.
    pub folded: usize,
    /// Duplicate nodes merged.
    pub merged: usize,
    /// Fusion results.
    pub fusion: passes::fuse::FuseStats,
    /// Fallbacks and copies between backends.
    pub placement: passes::place::PlaceStats,
    /// Peak of planned intermediate memory (bytes), with reuse.
    pub peak_bytes: usize,
    /// Intermediate memory without reuse (bytes).
    pub total_bytes: usize,
    /// Steps in the plan.
    pub steps: usize,
    /// Nodes whose backend prepared work from constant inputs once for the
    /// plan (e.g. packed a constant matmul weight; see [`Backend::prepare`]).
    pub prepared: usize,
}

/// A graph specialised for one set of input shapes, ready to execute.
#[derive(Debug)]
pub struct Plan {
    /// What the passes did.
    pub report: CompileReport,
    /// Arena layout of the intermediates.
    pub memory: passes::memory::MemoryPlan,
    /// The concrete, decomposed graph.
    pub graph: Graph,
    /// Its outputs.
    pub outputs: Vec<Value>,
    /// Nodes to execute, in order.
    pub steps: Vec<usize>,
    /// Backend index (into [`Executable::backends`]) of each node of `graph`.
    pub devices: Vec<usize>,
    /// What each node's backend prepared from its constant inputs (see
    /// [`Backend::prepare`]), by node index.
    prepared: Vec<Option<Prepared>>,
    /// Index of each node's first output in the flat value arrays.
    value_base: Vec<usize>,
    /// How many times each value (flat index) is consumed by steps and outputs.
    uses: Vec<u32>,
    /// Each placeholder left in the plan's graph: (node index, index of its
    /// input among the executable's placeholder names). Matched by name, as
    /// passes may drop placeholders nothing reads.
    placeholder_nodes: Vec<(usize, usize)>,
    /// Buffers recycled across runs of this plan.
    pool: BufferPool,
    /// Per-run bookkeeping reused across runs (one per concurrent run).
    scratch: Mutex<Vec<Scratch>>,
}

/// The executor's per-run arrays, kept between runs so that a steady-state run
/// allocates nothing.
#[derive(Debug, Default)]
struct Scratch {
    values: Vec<Option<Tensor>>,
    remaining: Vec<u32>,
    inputs: Vec<Option<Tensor>>,
    args: Vec<Tensor>,
}

/// The concrete dtype and dims of each input: the key of a cached plan.
type InputKey = Vec<(crate::DType, Dims)>;

/// A compiled graph: runs with [`Executable::run`] on any number of [`State`]s.
pub struct Executable {
    graph: Graph,
    outputs: Vec<Value>,
    backends: Vec<Arc<dyn Backend>>,
    options: CompileOptions,
    plans: Mutex<HashMap<Vec<TensorType>, Arc<Plan>>>,
    /// The same plans keyed by concrete (dtype, dims) per input, for lookups that
    /// allocate nothing.
    recent: Mutex<Vec<(InputKey, Arc<Plan>)>>,
    /// Placeholder names in graph order (inputs are fed in this order).
    placeholder_names: Vec<String>,
}

impl std::fmt::Debug for Executable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Executable")
            .field(
                "backends",
                &self.backends.iter().map(|b| b.name().to_string()).collect::<Vec<_>>(),
            )
            .field("outputs", &self.outputs)
            .finish()
    }
}

impl Executable {
    /// Prepares `graph` to compute `outputs` on `backend`.
    ///
    /// Checks that the backend can run every primitive op the graph uses
    /// (composites it lacks are decomposed), so unsupported ops fail here, not
    /// halfway through a run.
    pub fn compile(
        graph: &Graph,
        outputs: &[Value],
        backend: Arc<dyn Backend>,
        options: CompileOptions,
    ) -> Result<Executable> {
        Executable::compile_placed(graph, outputs, vec![backend], options)
    }

    /// Like [`Executable::compile`] with an ordered list of backends: the first is
    /// the primary; a node it cannot run falls back to the first later backend
    /// that can, with explicit copy steps between them (see
    /// [`passes::place`]). Fallbacks and copies are counted in each plan's
    /// [`CompileReport::placement`].
    pub fn compile_placed(
        graph: &Graph,
        outputs: &[Value],
        backends: Vec<Arc<dyn Backend>>,
        options: CompileOptions,
    ) -> Result<Executable> {
        if backends.is_empty() {
            return Err(Error::invalid("an executable needs at least one backend"));
        }
        for v in outputs {
            if v.node.0 as usize >= graph.nodes().len() || v.output as usize >= graph.node(v.node).outputs.len() {
                return Err(Error::invalid(format!("output {v:?} is not a value of this graph")));
            }
        }
        let live = passes::prune::live_nodes(graph, outputs);
        for (node, _) in graph.nodes().iter().zip(&live).filter(|(_, l)| **l) {
            if !node.op.is_executor_op() && !node.op.is_composite() && !backends.iter().any(|b| b.supports(node)) {
                return Err(Error::Unsupported {
                    backend: backends.iter().map(|b| b.name()).collect::<Vec<_>>().join(", "),
                    node: node.name.clone(),
                    op: node.op.kind(),
                    message: "no kernel for this op and no decomposition".into(),
                });
            }
        }
        Ok(Executable {
            graph: graph.clone(),
            outputs: outputs.to_vec(),
            placeholder_names: graph.placeholders().iter().map(|(n, _)| n.to_string()).collect(),
            backends,
            options,
            plans: Mutex::new(HashMap::new()),
            recent: Mutex::new(Vec::new()),
        })
    }

    /// The backends, primary first.
    pub fn backends(&self) -> &[Arc<dyn Backend>] {
        &self.backends
    }

    /// The source graph.
    pub fn graph(&self) -> &Graph {
        &self.graph
    }

    /// A fresh [`State`] with the variables' initial values, in the primary
    /// backend's memory.
    pub fn new_state(&self) -> State {
        let mut state = State::new(&self.graph);
        if !self.backends[0].is_host() {
            for v in state.values.iter_mut() {
                match self.backends[0].upload(v) {
                    Ok(t) => *v = t,
                    // Left on the host: the first run reports the backend's error.
                    Err(_) => break,
                }
            }
        }
        state
    }

    /// The plan for inputs of these types (built and cached on first use).
    pub fn plan_for(&self, input_types: &[TensorType]) -> Result<Arc<Plan>> {
        if let Some(p) = self
            .plans
            .lock()
            .map_err(|_| Error::invalid("plan cache poisoned"))?
            .get(input_types)
        {
            return Ok(p.clone());
        }
        let mut report = CompileReport::default();
        report.nodes_after.push(("source", self.graph.nodes().len()));
        let concrete = passes::specialize::specialize(&self.graph, input_types)?;
        // Recognise attention written out op by op, and linear layers' bias adds,
        // so backends can run them fused.
        let (concrete, outputs, rewritten) = passes::rewrite::rewrite(
            &concrete,
            &self.outputs,
            &[
                &passes::rewrite::attention_to_sdpa(),
                &passes::rewrite::linear_bias_to_gemm(),
                &passes::rewrite::gemm_activation(),
            ],
        )?;
        report.rewritten = rewritten;
        let primary = self.backends[0].clone();
        let backend = primary.clone();
        let decompose_all = self.options.decompose_all;
        let keep = move |g: &Graph, n: &Node| !decompose_all && backend.supports_inputs(n, &input_types_of(g, n));
        report.decomposed = concrete
            .nodes()
            .iter()
            .filter(|n| n.op.is_composite() && !keep(&concrete, n))
            .count();
        let (graph, outputs) = passes::decompose::decompose_in(&concrete, &outputs, &keep)?;
        report.nodes_after.push(("decompose", graph.nodes().len()));
        let (graph, outputs) = passes::dce::dce(&graph, &outputs)?;
        let (graph, outputs, folded) =
            passes::fold_constants::fold_constants(&graph, &outputs, self.folder(), Default::default())?;
        report.folded = folded;
        report.nodes_after.push(("fold_constants", graph.nodes().len()));
        let (graph, outputs, merged) = passes::cse::cse(&graph, &outputs)?;
        report.merged = merged;
        report.nodes_after.push(("cse", graph.nodes().len()));
        let (graph, outputs) = passes::dce::dce(&graph, &outputs)?;
        report.nodes_after.push(("dce", graph.nodes().len()));
        let (graph, outputs) = if self.options.fuse && !self.options.decompose_all && primary.supports_fusion() {
            let gr = &graph;
            let (g, o, stats) = passes::fuse::fuse_where(&graph, &outputs, &|n| {
                primary.supports_inputs(n, &input_types_of(gr, n))
            })?;
            report.fusion = stats;
            report.nodes_after.push(("fuse", g.nodes().len()));
            (g, o)
        } else {
            (graph, outputs)
        };
        let names: Vec<&str> = self.backends.iter().map(|b| b.name()).collect();
        let backends = &self.backends;
        let (graph, outputs, placement) = passes::place::place(
            &graph,
            &outputs,
            backends.len(),
            &|b, n| backends[b].supports_inputs(n, &input_types_of(&graph, n)),
            &names,
            backends.iter().position(|b| b.is_host()),
        )?;
        report.placement = placement.stats;
        report.nodes_after.push(("place", graph.nodes().len()));
        let devices = placement.devices;
        // Constants placed on a device backend are uploaded once, here.
        let mut graph = graph;
        for (i, &d) in devices.iter().enumerate() {
            if self.backends[d].is_host() {
                continue;
            }
            if let Op::Constant(t) = &graph.nodes()[i].op {
                let dev = self.backends[d].upload(t)?;
                graph.replace_constant(crate::graph::NodeId(i as u32), dev)?;
            }
        }
        let live = passes::prune::live_nodes(&graph, &outputs);
        let steps: Vec<usize> = (0..graph.nodes().len()).filter(|&i| live[i]).collect();
        let mut value_base = Vec::with_capacity(graph.nodes().len());
        let mut n_values = 0;
        for n in graph.nodes() {
            value_base.push(n_values);
            n_values += n.outputs.len();
        }
        let mut uses = vec![0u32; n_values];
        for &i in &steps {
            for v in &graph.nodes()[i].inputs {
                uses[value_base[v.node.0 as usize] + v.output as usize] += 1;
            }
        }
        for v in &outputs {
            uses[value_base[v.node.0 as usize] + v.output as usize] += 1;
        }
        let mut placeholder_nodes = Vec::new();
        for (i, n) in graph.nodes().iter().enumerate() {
            if let Op::Placeholder { name } = &n.op {
                let k = self
                    .placeholder_names
                    .iter()
                    .position(|p| p == name)
                    .ok_or_else(|| Error::invalid(format!("internal: placeholder `{name}` is not an input")))?;
                placeholder_nodes.push((i, k));
            }
        }
        // Constant-input work each backend does once for the plan, not per run.
        let mut prepared: Vec<Option<Prepared>> = vec![None; graph.nodes().len()];
        for &i in &steps {
            let node = &graph.nodes()[i];
            if node.op.is_executor_op()
                || !node
                    .inputs
                    .iter()
                    .any(|v| matches!(graph.node(v.node).op, Op::Constant(_)))
            {
                continue;
            }
            let constants: smallvec::SmallVec<[Option<&Tensor>; 4]> = node
                .inputs
                .iter()
                .map(|v| match &graph.node(v.node).op {
                    Op::Constant(t) => Some(t),
                    _ => None,
                })
                .collect();
            prepared[i] = self.backends[devices[i]].prepare(node, &constants)?;
        }
        report.prepared = prepared.iter().filter(|p| p.is_some()).count();
        let memory = passes::memory::plan_memory(&graph, &steps, &outputs)?;
        if cfg!(debug_assertions) {
            passes::memory::check_no_alias(&memory)?;
        }
        report.peak_bytes = memory.peak;
        report.total_bytes = memory.total;
        report.steps = steps.len();
        let plan = Arc::new(Plan {
            report,
            memory,
            graph,
            outputs,
            steps,
            devices,
            prepared,
            value_base,
            uses,
            placeholder_nodes,
            pool: BufferPool::new(),
            scratch: Mutex::new(Vec::new()),
        });
        self.plans
            .lock()
            .map_err(|_| Error::invalid("plan cache poisoned"))?
            .insert(input_types.to_vec(), plan.clone());
        Ok(plan)
    }

    /// The backend that folds constants at compile time: the last one (the most
    /// general fallback, the CPU in practice).
    fn folder(&self) -> &dyn Backend {
        self.backends.last().expect("at least one backend").as_ref()
    }

    /// Runs the graph on `inputs` (by placeholder name), reading and updating `state`.
    /// Returns the outputs in the order given to [`Executable::compile`].
    pub fn run(&self, inputs: &[(&str, Tensor)], state: &mut State) -> Result<Vec<Tensor>> {
        let mut outputs = Vec::new();
        self.run_into(inputs, state, &mut outputs)?;
        Ok(outputs)
    }

    /// Like [`Executable::run`], writing the outputs into `outputs`. The tensors
    /// already in `outputs` (a previous run's results) are released first, so
    /// their buffers can be recycled: after the first run with given input
    /// shapes, a run with the same shapes that reuses one `outputs` vector
    /// performs no heap allocation on any thread.
    pub fn run_into(&self, inputs: &[(&str, Tensor)], state: &mut State, outputs: &mut Vec<Tensor>) -> Result<()> {
        self.run_with(inputs, state, outputs, &mut NoProbe)
    }

    /// Like [`Executable::run_into`], recording every plan step (kind, device,
    /// start and end, bytes, FLOPs) into `steps` (cleared first). Times are in
    /// nanoseconds from the start of this call; each step's backend is
    /// synchronised before its end time is read.
    pub fn run_profiled(
        &self,
        inputs: &[(&str, Tensor)],
        state: &mut State,
        outputs: &mut Vec<Tensor>,
        steps: &mut Vec<crate::profile::StepRecord>,
    ) -> Result<()> {
        steps.clear();
        let mut rec = Recorder {
            origin: std::time::Instant::now(),
            start: 0,
            start_marker: None,
            out: steps,
            marked: Vec::new(),
        };
        self.run_with(inputs, state, outputs, &mut rec)?;
        rec.resolve(self)
    }

    fn run_with<P: Probe + Send>(
        &self,
        inputs: &[(&str, Tensor)],
        state: &mut State,
        outputs: &mut Vec<Tensor>,
        probe: &mut P,
    ) -> Result<()> {
        for (name, _) in inputs {
            if !self.placeholder_names.iter().any(|p| p == name) {
                return Err(Error::UnknownInput {
                    name: name.to_string(),
                    known: self.placeholder_names.join(", "),
                });
            }
        }
        let mut ordered: smallvec::SmallVec<[&Tensor; 8]> = smallvec::SmallVec::new();
        for name in &self.placeholder_names {
            match inputs.iter().find(|(n, _)| n == name) {
                Some((_, t)) => ordered.push(t),
                None => {
                    let (_, v) = self
                        .graph
                        .placeholders()
                        .into_iter()
                        .find(|(n, _)| n == name)
                        .expect("placeholder names come from the graph");
                    let ty = self.graph.ty(v);
                    return Err(Error::MissingInput {
                        name: name.to_string(),
                        dtype: ty.dtype.to_string(),
                        shape: ty.shape.to_string(),
                    });
                }
            }
        }
        if state.values.len() != self.graph.variables().len()
            || state
                .values
                .iter()
                .zip(self.graph.variables())
                .any(|(s, v)| s.dtype() != v.initial.dtype())
        {
            return Err(Error::invalid(
                "this State was made for another graph; use Executable::new_state",
            ));
        }
        let plan = match self.cached_plan(&ordered) {
            Some(p) => p,
            None => {
                let types: Vec<TensorType> = ordered.iter().map(|t| passes::specialize::type_of(t)).collect();
                let plan = self.plan_for(&types)?;
                if let Ok(mut recent) = self.recent.lock() {
                    let key = ordered
                        .iter()
                        .map(|t| (t.dtype(), Dims::from_slice(t.shape())))
                        .collect();
                    recent.push((key, plan.clone()));
                }
                plan
            }
        };
        // Release the previous outputs into the pool before this run needs buffers.
        for t in outputs.drain(..) {
            plan.pool.give(t);
        }
        let mut scratch = plan
            .scratch
            .lock()
            .map_err(|_| Error::invalid("scratch poisoned"))?
            .pop()
            .unwrap_or_default();
        scratch.inputs.clear();
        scratch.inputs.extend(ordered.iter().map(|t| Some((*t).clone())));
        let mut result = Ok(());
        self.backends[0].run_plan(&mut || {
            result = plan
                .pool
                .scope(|| self.execute(&plan, &mut scratch, state, outputs, &mut *probe));
        });
        // Drop whatever a failed run left behind; keep the arrays for the next run.
        scratch.values.iter_mut().for_each(|v| {
            if let Some(t) = v.take() {
                plan.pool.give(t);
            }
        });
        scratch.args.clear();
        scratch.inputs.clear();
        if let Ok(mut s) = plan.scratch.lock() {
            s.push(scratch);
        }
        result
    }

    /// The cached plan for inputs of exactly these dtypes and shapes, found
    /// without allocating.
    fn cached_plan(&self, inputs: &[&Tensor]) -> Option<Arc<Plan>> {
        let recent = self.recent.lock().ok()?;
        recent
            .iter()
            .find(|(key, _)| {
                key.len() == inputs.len()
                    && key
                        .iter()
                        .zip(inputs)
                        .all(|((d, s), t)| *d == t.dtype() && s.as_slice() == t.shape())
            })
            .map(|(_, p)| p.clone())
    }

    fn execute<P: Probe>(
        &self,
        plan: &Plan,
        scratch: &mut Scratch,
        state: &mut State,
        outputs: &mut Vec<Tensor>,
        probe: &mut P,
    ) -> Result<()> {
        let g = &plan.graph;
        let Scratch {
            values,
            remaining,
            inputs,
            args,
        } = scratch;
        values.clear();
        values.resize(plan.uses.len(), None);
        remaining.clear();
        remaining.extend_from_slice(&plan.uses);
        for (step, &i) in plan.steps.iter().enumerate() {
            let node = &g.nodes()[i];
            probe.begin(self, plan, i)?;
            args.clear();
            for v in &node.inputs {
                let idx = plan.value_base[v.node.0 as usize] + v.output as usize;
                remaining[idx] -= 1;
                let t = if remaining[idx] == 0 {
                    values[idx].take()
                } else {
                    values[idx].clone()
                };
                args.push(t.ok_or_else(|| {
                    Error::invalid(format!(
                        "internal: value of `{}` missing",
                        g.nodes()[v.node.0 as usize].name
                    ))
                })?);
            }
            let outs: Outputs = match &node.op {
                Op::Placeholder { .. } => {
                    let k = plan
                        .placeholder_nodes
                        .iter()
                        .find(|&&(p, _)| p == i)
                        .map(|&(_, k)| k)
                        .ok_or_else(|| Error::invalid("internal: unknown placeholder"))?;
                    let t = inputs
                        .get_mut(k)
                        .and_then(Option::take)
                        .ok_or_else(|| Error::invalid("internal: placeholder input missing"))?;
                    let backend = &self.backends[plan.devices[i]];
                    if backend.is_host() {
                        smallvec::smallvec![t]
                    } else {
                        smallvec::smallvec![backend.upload(&t)?]
                    }
                }
                Op::Constant(t) => smallvec::smallvec![t.clone()],
                Op::ReadVariable(var) => smallvec::smallvec![state.values[var.0 as usize].clone()],
                Op::Assign(var) => {
                    let old = std::mem::replace(
                        &mut state.values[var.0 as usize],
                        args.pop().expect("assign has one input"),
                    );
                    plan.pool.give(old);
                    Outputs::new()
                }
                Op::SliceUpdate(var) => {
                    let backend = &self.backends[plan.devices[i]];
                    // Placement keeps the position on the host; a device one is read back.
                    let starts_t = if backend.is_host() || args[1].device_memory().is_none() {
                        args[1].clone()
                    } else {
                        backend.download(&args[1])?
                    };
                    let mut starts: smallvec::SmallVec<[usize; 8]> = smallvec::SmallVec::new();
                    for k in 0..starts_t.numel() {
                        let s = starts_t.get_f64(&[k])?;
                        if s < 0.0 {
                            return Err(Error::node(
                                node.name.clone(),
                                "slice_update",
                                format!("negative start {s} on axis {k}"),
                            ));
                        }
                        starts.push(s as usize);
                    }
                    let target = &mut state.values[var.0 as usize];
                    backend
                        .write_slice(target, &starts, &args[0])
                        .map_err(|e| Error::node(node.name.clone(), "slice_update", e.to_string()))?;
                    Outputs::new()
                }
                Op::Copy { to } => {
                    let from = plan.devices[node.inputs[0].node.0 as usize];
                    let host = self.backends[from].download(&args[0])?;
                    smallvec::smallvec![self.backends[*to].upload(&host)?]
                }
                _ => match &plan.prepared[i] {
                    Some(p) => self.backends[plan.devices[i]].execute_prepared(node, args, p)?,
                    None => self.backends[plan.devices[i]].execute(node, args)?,
                },
            };
            probe.end(self, plan, step, i, args, &outs)?;
            for t in args.drain(..) {
                plan.pool.give(t);
            }
            if outs.len() != node.outputs.len() {
                return Err(Error::node(
                    node.name.clone(),
                    node.op.kind(),
                    format!(
                        "backend returned {} outputs, expected {}",
                        outs.len(),
                        node.outputs.len()
                    ),
                ));
            }
            let base = plan.value_base[i];
            for (k, t) in outs.into_iter().enumerate() {
                if plan.uses[base + k] == 0 {
                    plan.pool.give(t);
                } else {
                    values[base + k] = Some(t);
                }
            }
        }
        outputs.clear();
        for v in &plan.outputs {
            let idx = plan.value_base[v.node.0 as usize] + v.output as usize;
            let t = values[idx]
                .clone()
                .ok_or_else(|| Error::invalid("internal: output value missing"))?;
            let dev = plan.devices[v.node.0 as usize];
            outputs.push(if dev == 0 && self.backends.len() == 1 {
                t
            } else {
                self.backends[dev].download(&t)?
            });
        }
        for v in values.iter_mut() {
            *v = None;
        }
        Ok(())
    }
}
