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
use crate::tensor::Tensor;

/// A device that runs ops. CPU and CUDA implement it; core knows no backend.
pub trait Backend: Send + Sync {
    /// Short name, e.g. `cpu`.
    fn name(&self) -> &str;
    /// Whether the backend runs this node directly. For a composite op, `false`
    /// makes the compiler decompose it; for a primitive, `false` is an error
    /// until placement with fallback exists.
    fn supports(&self, node: &Node) -> bool;
    /// Whether the backend evaluates fused regions (`Op::Fused`); if so the
    /// compiler fuses elementwise chains for it.
    fn supports_fusion(&self) -> bool {
        false
    }
    /// Runs `node` (whose output types are concrete) on `inputs`.
    fn execute(&self, node: &Node, inputs: &[Tensor]) -> Result<Vec<Tensor>>;
    /// Moves a host tensor into this backend's memory (a copy step of the plan;
    /// host backends return it as is).
    fn upload(&self, t: &Tensor) -> Result<Tensor> {
        Ok(t.clone())
    }
    /// Moves a tensor of this backend to host memory (host backends return it as is).
    fn download(&self, t: &Tensor) -> Result<Tensor> {
        Ok(t.clone())
    }
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
    /// For each node, how many times each of its outputs is consumed by steps and outputs.
    uses: Vec<Vec<u32>>,
}

/// A compiled graph: runs with [`Executable::run`] on any number of [`State`]s.
pub struct Executable {
    graph: Graph,
    outputs: Vec<Value>,
    backends: Vec<Arc<dyn Backend>>,
    options: CompileOptions,
    plans: Mutex<HashMap<Vec<TensorType>, Arc<Plan>>>,
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
            backends,
            options,
            plans: Mutex::new(HashMap::new()),
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

    /// A fresh [`State`] with the variables' initial values.
    pub fn new_state(&self) -> State {
        State::new(&self.graph)
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
        // Recognise attention written out op by op, so backends can run it fused.
        let (concrete, outputs, rewritten) =
            passes::rewrite::rewrite(&concrete, &self.outputs, &[&passes::rewrite::attention_to_sdpa()])?;
        report.rewritten = rewritten;
        let primary = self.backends[0].clone();
        let backend = primary.clone();
        let decompose_all = self.options.decompose_all;
        let keep = move |n: &Node| !decompose_all && backend.supports(n);
        report.decomposed = concrete
            .nodes()
            .iter()
            .filter(|n| n.op.is_composite() && !keep(n))
            .count();
        let (graph, outputs) = passes::decompose::decompose(&concrete, &outputs, &keep)?;
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
            let (g, o, stats) = passes::fuse::fuse_where(&graph, &outputs, &|n| primary.supports(n))?;
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
            &|b, n| backends[b].supports(n),
            &names,
        )?;
        report.placement = placement.stats;
        report.nodes_after.push(("place", graph.nodes().len()));
        let devices = placement.devices;
        let live = passes::prune::live_nodes(&graph, &outputs);
        let steps: Vec<usize> = (0..graph.nodes().len()).filter(|&i| live[i]).collect();
        let mut uses: Vec<Vec<u32>> = graph.nodes().iter().map(|n| vec![0; n.outputs.len()]).collect();
        for &i in &steps {
            for v in &graph.nodes()[i].inputs {
                uses[v.node.0 as usize][v.output as usize] += 1;
            }
        }
        for v in &outputs {
            uses[v.node.0 as usize][v.output as usize] += 1;
        }
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
            uses,
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
        let placeholders = self.graph.placeholders();
        for (name, _) in inputs {
            if !placeholders.iter().any(|(p, _)| p == name) {
                return Err(Error::UnknownInput {
                    name: name.to_string(),
                    known: placeholders.iter().map(|(p, _)| *p).collect::<Vec<_>>().join(", "),
                });
            }
        }
        let mut ordered: Vec<Tensor> = Vec::with_capacity(placeholders.len());
        for (name, v) in &placeholders {
            let t = inputs
                .iter()
                .find(|(n, _)| n == name)
                .map(|(_, t)| t.clone())
                .ok_or_else(|| {
                    let ty = self.graph.ty(*v);
                    Error::MissingInput {
                        name: name.to_string(),
                        dtype: ty.dtype.to_string(),
                        shape: ty.shape.to_string(),
                    }
                })?;
            ordered.push(t);
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
        let types: Vec<TensorType> = ordered.iter().map(passes::specialize::type_of).collect();
        let plan = self.plan_for(&types)?;
        self.execute(&plan, ordered, state)
    }

    fn execute(&self, plan: &Plan, inputs: Vec<Tensor>, state: &mut State) -> Result<Vec<Tensor>> {
        let g = &plan.graph;
        let mut values: Vec<Vec<Option<Tensor>>> = g.nodes().iter().map(|n| vec![None; n.outputs.len()]).collect();
        let mut remaining = plan.uses.clone();
        let mut inputs = inputs.into_iter();
        let mut placeholder_slots: HashMap<usize, Tensor> = HashMap::new();
        for (i, n) in g.nodes().iter().enumerate() {
            if matches!(n.op, Op::Placeholder { .. }) {
                placeholder_slots.insert(i, inputs.next().expect("one input per placeholder"));
            }
        }
        for &i in &plan.steps {
            let node = &g.nodes()[i];
            let mut args = Vec::with_capacity(node.inputs.len());
            for v in &node.inputs {
                let (ni, oi) = (v.node.0 as usize, v.output as usize);
                remaining[ni][oi] -= 1;
                let t = if remaining[ni][oi] == 0 {
                    values[ni][oi].take()
                } else {
                    values[ni][oi].clone()
                };
                args.push(
                    t.ok_or_else(|| Error::invalid(format!("internal: value of `{}` missing", g.nodes()[ni].name)))?,
                );
            }
            let outs = match &node.op {
                Op::Placeholder { .. } => vec![placeholder_slots.remove(&i).expect("placeholder input")],
                Op::Constant(t) => vec![t.clone()],
                Op::ReadVariable(var) => vec![state.values[var.0 as usize].clone()],
                Op::Assign(var) => {
                    state.values[var.0 as usize] = args.pop().expect("assign has one input");
                    vec![]
                }
                Op::SliceUpdate(var) => {
                    let starts = args[1].to_f64_vec();
                    if starts.iter().any(|&s| s < 0.0) {
                        return Err(Error::node(
                            node.name.clone(),
                            "slice_update",
                            format!("negative start {starts:?}"),
                        ));
                    }
                    let starts: Vec<usize> = starts.iter().map(|&s| s as usize).collect();
                    let target = &mut state.values[var.0 as usize];
                    target
                        .write_slice(&starts, &args[0])
                        .map_err(|e| Error::node(node.name.clone(), "slice_update", e.to_string()))?;
                    vec![]
                }
                Op::Copy { to } => {
                    let from = plan.devices[node.inputs[0].node.0 as usize];
                    let host = self.backends[from].download(&args[0])?;
                    vec![self.backends[*to].upload(&host)?]
                }
                _ => self.backends[plan.devices[i]].execute(node, &args)?,
            };
            drop(args);
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
            for (slot, t) in values[i].iter_mut().zip(outs) {
                *slot = Some(t);
            }
        }
        plan.outputs
            .iter()
            .map(|v| {
                let t = values[v.node.0 as usize][v.output as usize]
                    .clone()
                    .ok_or_else(|| Error::invalid("internal: output value missing"))?;
                self.backends[plan.devices[v.node.0 as usize]].download(&t)
            })
            .collect()
    }
}
