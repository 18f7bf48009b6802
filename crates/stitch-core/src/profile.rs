//! Profiling: a record of every step of a plan, a Chrome trace-event writer and
//! a text report.
//!
//! [`crate::exec::Executable::run_profiled`] runs a plan exactly as
//! [`crate::exec::Executable::run`] does, timing each step (after the step's
//! backend has finished its work, see [`crate::exec::Backend::synchronize`]).
//! The ordinary run path is a separate instantiation of the executor whose
//! probe does nothing, so with profiling off a plan carries no timing calls.

use std::collections::HashMap;
use std::fmt::Write as _;

use crate::error::Result;
use crate::exec::{Executable, State};
use crate::graph::Node;
use crate::ops::fused::Expr;
use crate::ops::Op;
use crate::tensor::Tensor;

/// What kind of work a plan step was.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum StepKind {
    /// An input handed to the plan (uploaded if its first consumer is on a device).
    Input,
    /// A constant (already resident; costs nothing at run time).
    Constant,
    /// A variable read, assign or in-place slice update.
    State,
    /// A kernel on the primary backend.
    Kernel,
    /// A fused region (its member ops are listed in the record).
    Fused,
    /// A kernel on a later backend because the primary declined the op.
    Fallback,
    /// A copy from host memory to a device.
    CopyHostToDevice,
    /// A copy from a device to host memory.
    CopyDeviceToHost,
    /// A copy between two devices (through the host).
    CopyDeviceToDevice,
}

impl StepKind {
    /// Short name used in traces and reports.
    pub fn name(self) -> &'static str {
        match self {
            StepKind::Input => "input",
            StepKind::Constant => "constant",
            StepKind::State => "state",
            StepKind::Kernel => "kernel",
            StepKind::Fused => "fused",
            StepKind::Fallback => "fallback",
            StepKind::CopyHostToDevice => "copy_h2d",
            StepKind::CopyDeviceToHost => "copy_d2h",
            StepKind::CopyDeviceToDevice => "copy_d2d",
        }
    }

    /// Whether this is a copy between memories.
    pub fn is_copy(self) -> bool {
        matches!(
            self,
            StepKind::CopyHostToDevice | StepKind::CopyDeviceToHost | StepKind::CopyDeviceToDevice
        )
    }
}

/// One executed plan step.
#[derive(Debug, Clone)]
pub struct StepRecord {
    /// Position of the step in the plan.
    pub step: usize,
    /// Node name.
    pub node: String,
    /// Op kind (`matmul`, `fused`, `copy`, ...).
    pub op: String,
    /// What kind of step this was.
    pub kind: StepKind,
    /// Name of the backend that ran it.
    pub device: String,
    /// Start, in nanoseconds since the profiled run began.
    pub start_ns: u64,
    /// End, in nanoseconds since the profiled run began.
    pub end_ns: u64,
    /// Bytes read and written (inputs plus outputs; for a copy, the bytes moved).
    pub bytes: u64,
    /// Floating-point operations, where known.
    pub flops: Option<u64>,
    /// For a fused region, the names of the ops it replaced.
    pub members: Vec<String>,
}

impl StepRecord {
    /// Duration in nanoseconds.
    pub fn duration_ns(&self) -> u64 {
        self.end_ns.saturating_sub(self.start_ns)
    }
}

/// The records of one profiled run.
#[derive(Debug, Clone, Default)]
pub struct RunProfile {
    /// Label of the run (e.g. `run 3`, `decode 12`).
    pub label: String,
    /// Wall-clock offset of the run from the first profiled run, in nanoseconds.
    pub offset_ns: u64,
    /// Every step, in plan order.
    pub steps: Vec<StepRecord>,
}

impl RunProfile {
    /// Total time of the steps, in nanoseconds.
    pub fn total_ns(&self) -> u64 {
        self.steps.iter().map(StepRecord::duration_ns).sum()
    }
}

/// Collects profiled runs of one or more executables on one time line.
#[derive(Debug, Default)]
pub struct Profiler {
    origin: Option<std::time::Instant>,
    /// The runs recorded so far.
    pub runs: Vec<RunProfile>,
}

impl Profiler {
    /// An empty profiler.
    pub fn new() -> Profiler {
        Profiler::default()
    }

    /// Runs `exe` like [`Executable::run_into`], recording its steps as a run
    /// labelled `label`.
    pub fn run(
        &mut self,
        exe: &Executable,
        inputs: &[(&str, Tensor)],
        state: &mut State,
        outputs: &mut Vec<Tensor>,
        label: impl Into<String>,
    ) -> Result<()> {
        let origin = *self.origin.get_or_insert_with(std::time::Instant::now);
        let offset_ns = origin.elapsed().as_nanos() as u64;
        let mut steps = Vec::new();
        exe.run_profiled(inputs, state, outputs, &mut steps)?;
        self.runs.push(RunProfile {
            label: label.into(),
            offset_ns,
            steps,
        });
        Ok(())
    }

    /// The aggregated report.
    pub fn report(&self) -> Report {
        Report::new(&self.runs)
    }

    /// The Chrome trace of all runs.
    pub fn chrome_trace(&self) -> String {
        chrome_trace(&self.runs)
    }
}

/// Bytes of a tensor's logical elements.
pub(crate) fn tensor_bytes(t: &Tensor) -> u64 {
    (t.numel() * t.dtype().size_in_bytes()) as u64
}

fn numel(shape: &[usize]) -> u64 {
    shape.iter().map(|&d| d as u64).product()
}

/// Floating-point operations of `node` on `inputs` producing `outputs`, where
/// the op has a well-defined count (multiply-add = 2).
pub fn flops(node: &Node, inputs: &[Tensor], outputs: &[Tensor]) -> Option<u64> {
    let out = outputs.first().map(|t| numel(t.shape()));
    match &node.op {
        Op::MatMul { transpose_a, .. } => {
            let a = inputs.first()?.shape();
            let k = match a.len() {
                0 => return None,
                1 => a[0],
                n if *transpose_a => a[n - 2],
                n => a[n - 1],
            };
            Some(2 * out? * k as u64)
        }
        Op::Gemm { transpose_a, .. } => {
            let a = inputs.first()?.shape();
            if a.len() != 2 {
                return None;
            }
            let k = if *transpose_a { a[0] } else { a[1] };
            Some(2 * out? * k as u64)
        }
        Op::QuantMatMul { .. } => {
            let k = *inputs.first()?.shape().last()?;
            Some(2 * out? * k as u64)
        }
        Op::Sdpa(_) => {
            let (q, k) = (inputs.first()?.shape(), inputs.get(1)?.shape());
            if q.len() < 2 || k.len() < 2 {
                return None;
            }
            let t = k[k.len() - 2] as u64;
            // q·k and p·v: two matmuls of S×T×D per head.
            Some(4 * numel(q) * t)
        }
        Op::Conv(attrs) => {
            let w = inputs.get(1)?.shape();
            let per_out: u64 = w[1..].iter().map(|&d| d as u64).product();
            let _ = attrs;
            Some(2 * out? * per_out)
        }
        Op::Fused(region) => {
            let iter: u64 = inputs.iter().map(|t| numel(t.shape())).max().unwrap_or(0).max(out?);
            let ops = region
                .exprs
                .iter()
                .filter(|e| !matches!(e, Expr::Input(_) | Expr::Scalar(..)))
                .count() as u64
                + u64::from(region.reduce.is_some());
            Some(iter * ops)
        }
        Op::Unary(_) | Op::Binary(_) | Op::Where => out,
        Op::Reduce { .. } => Some(numel(inputs.first()?.shape())),
        Op::Softmax { .. } | Op::LogSoftmax { .. } => Some(5 * out?),
        Op::LayerNorm { .. } | Op::RmsNorm { .. } => Some(5 * out?),
        _ => None,
    }
}

/// One row of [`Report::top_steps`]: a node's total over all runs.
#[derive(Debug, Clone)]
pub struct StepTotal {
    /// Node name.
    pub node: String,
    /// Op kind.
    pub op: String,
    /// Step kind.
    pub kind: StepKind,
    /// Device.
    pub device: String,
    /// Times it ran.
    pub count: usize,
    /// Total time in nanoseconds.
    pub total_ns: u64,
    /// Total bytes moved.
    pub bytes: u64,
    /// Total FLOPs, where known.
    pub flops: Option<u64>,
}

impl StepTotal {
    /// Achieved GB/s.
    pub fn gbps(&self) -> f64 {
        self.bytes as f64 / (self.total_ns.max(1) as f64)
    }
    /// Achieved GFLOP/s, where FLOPs are known.
    pub fn gflops(&self) -> Option<f64> {
        self.flops.map(|f| f as f64 / (self.total_ns.max(1) as f64))
    }
}

/// Totals over profiled runs.
#[derive(Debug, Clone, Default)]
pub struct Report {
    /// Runs profiled.
    pub runs: usize,
    /// Sum of all step times, in nanoseconds.
    pub total_ns: u64,
    /// Per node, heaviest first.
    pub top_steps: Vec<StepTotal>,
    /// Per op kind: (op, total ns, steps), heaviest first.
    pub per_op: Vec<(String, u64, usize)>,
    /// Copies and fallbacks, heaviest first.
    pub transfers: Vec<StepTotal>,
}

impl Report {
    /// Aggregates `runs`.
    pub fn new(runs: &[RunProfile]) -> Report {
        let mut by_node: HashMap<(usize, &str), StepTotal> = HashMap::new();
        let mut per_op: HashMap<&str, (u64, usize)> = HashMap::new();
        let mut total_ns = 0;
        for run in runs {
            for s in &run.steps {
                let d = s.duration_ns();
                total_ns += d;
                let e = by_node.entry((s.step, s.node.as_str())).or_insert_with(|| StepTotal {
                    node: s.node.clone(),
                    op: s.op.clone(),
                    kind: s.kind,
                    device: s.device.clone(),
                    count: 0,
                    total_ns: 0,
                    bytes: 0,
                    flops: Some(0),
                });
                e.count += 1;
                e.total_ns += d;
                e.bytes += s.bytes;
                e.flops = match (e.flops, s.flops) {
                    (Some(a), Some(b)) => Some(a + b),
                    _ => None,
                };
                let o = per_op.entry(s.op.as_str()).or_default();
                o.0 += d;
                o.1 += 1;
            }
        }
        let mut top: Vec<StepTotal> = by_node.into_values().collect();
        top.sort_by(|a, b| b.total_ns.cmp(&a.total_ns).then_with(|| a.node.cmp(&b.node)));
        let transfers = top
            .iter()
            .filter(|s| s.kind.is_copy() || s.kind == StepKind::Fallback)
            .cloned()
            .collect();
        let mut per_op: Vec<(String, u64, usize)> =
            per_op.into_iter().map(|(k, (ns, n))| (k.to_string(), ns, n)).collect();
        per_op.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
        Report {
            runs: runs.len(),
            total_ns,
            top_steps: top,
            per_op,
            transfers,
        }
    }

    /// The report as text: top steps, share per op, copies and fallbacks.
    pub fn to_text(&self, top: usize) -> String {
        let mut s = String::new();
        let ms = |ns: u64| ns as f64 / 1e6;
        let runs = self.runs.max(1) as f64;
        let _ = writeln!(
            s,
            "{} run(s), {:.3} ms of steps per run, {} distinct steps",
            self.runs,
            ms(self.total_ns) / runs,
            self.top_steps.len()
        );
        let _ = writeln!(s, "\nTop steps by total time:");
        let _ = writeln!(
            s,
            "  {:>9} {:>6}  {:<10} {:<9} {:<6} {:>9} {:>10}  node",
            "ms/run", "share", "op", "kind", "device", "GB/s", "GFLOP/s"
        );
        for t in self.top_steps.iter().take(top) {
            let _ = writeln!(
                s,
                "  {:>9.4} {:>5.1}%  {:<10} {:<9} {:<6} {:>9.2} {:>10}  {}",
                ms(t.total_ns) / runs,
                100.0 * t.total_ns as f64 / self.total_ns.max(1) as f64,
                t.op,
                t.kind.name(),
                t.device,
                t.gbps(),
                t.gflops().map(|g| format!("{g:.2}")).unwrap_or_else(|| "-".into()),
                t.node
            );
        }
        let _ = writeln!(s, "\nShare per op type:");
        for (op, ns, n) in &self.per_op {
            let _ = writeln!(
                s,
                "  {:<16} {:>9.4} ms/run {:>5.1}%  ({} steps)",
                op,
                ms(*ns) / runs,
                100.0 * *ns as f64 / self.total_ns.max(1) as f64,
                n
            );
        }
        let copies: Vec<&StepTotal> = self.transfers.iter().filter(|t| t.kind.is_copy()).collect();
        let fallbacks: Vec<&StepTotal> = self.transfers.iter().filter(|t| !t.kind.is_copy()).collect();
        let sum = |v: &[&StepTotal]| v.iter().map(|t| t.total_ns).sum::<u64>();
        let _ = writeln!(
            s,
            "\nCopies: {} ({:.4} ms/run, {} bytes/run); fallbacks: {} ({:.4} ms/run)",
            copies.len(),
            ms(sum(&copies)) / runs,
            copies.iter().map(|t| t.bytes).sum::<u64>() / self.runs.max(1) as u64,
            fallbacks.len(),
            ms(sum(&fallbacks)) / runs
        );
        for t in copies.iter().chain(&fallbacks).take(top) {
            let _ = writeln!(
                s,
                "  {:<9} {:<10} {:<6} {:>9.4} ms/run {:>10} B/run  {}",
                t.kind.name(),
                t.op,
                t.device,
                ms(t.total_ns) / runs,
                t.bytes / self.runs.max(1) as u64,
                t.node
            );
        }
        s
    }
}

fn json_str(out: &mut String, s: &str) {
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if (c as u32) < 0x20 => {
                let _ = write!(out, "\\u{:04x}", c as u32);
            }
            c => out.push(c),
        }
    }
    out.push('"');
}

/// A Chrome trace-event JSON document (opens in Perfetto and chrome://tracing):
/// one complete (`"ph":"X"`) event per step per run, on one track per device,
/// with the run's label, the step kind, bytes, FLOPs and fused members in `args`.
pub fn chrome_trace(runs: &[RunProfile]) -> String {
    let mut devices: Vec<&str> = Vec::new();
    for r in runs {
        for s in &r.steps {
            if !devices.contains(&s.device.as_str()) {
                devices.push(&s.device);
            }
        }
    }
    let mut out = String::from("{\"displayTimeUnit\":\"ns\",\"traceEvents\":[\n");
    let mut first = true;
    let mut sep = |out: &mut String| {
        if !first {
            out.push_str(",\n");
        }
        first = false;
    };
    sep(&mut out);
    out.push_str("{\"ph\":\"M\",\"pid\":1,\"name\":\"process_name\",\"args\":{\"name\":\"stitch\"}}");
    for (i, d) in devices.iter().enumerate() {
        sep(&mut out);
        let _ = write!(
            out,
            "{{\"ph\":\"M\",\"pid\":1,\"tid\":{i},\"name\":\"thread_name\",\"args\":{{\"name\":"
        );
        json_str(&mut out, d);
        out.push_str("}}");
    }
    for (r, run) in runs.iter().enumerate() {
        for s in &run.steps {
            sep(&mut out);
            let tid = devices.iter().position(|d| *d == s.device).unwrap_or(0);
            out.push_str("{\"ph\":\"X\",\"pid\":1,\"tid\":");
            let _ = write!(out, "{tid},\"name\":");
            json_str(&mut out, &format!("{} {}", s.op, s.node));
            out.push_str(",\"cat\":");
            json_str(&mut out, s.kind.name());
            let _ = write!(
                out,
                ",\"ts\":{:.3},\"dur\":{:.3},\"args\":{{\"run\":{r},\"label\":",
                (run.offset_ns + s.start_ns) as f64 / 1e3,
                s.duration_ns() as f64 / 1e3
            );
            json_str(&mut out, &run.label);
            let _ = write!(out, ",\"step\":{},\"op\":", s.step);
            json_str(&mut out, &s.op);
            out.push_str(",\"node\":");
            json_str(&mut out, &s.node);
            out.push_str(",\"device\":");
            json_str(&mut out, &s.device);
            let _ = write!(out, ",\"bytes\":{}", s.bytes);
            if let Some(f) = s.flops {
                let _ = write!(out, ",\"flops\":{f}");
            }
            if !s.members.is_empty() {
                out.push_str(",\"members\":[");
                for (k, m) in s.members.iter().enumerate() {
                    if k > 0 {
                        out.push(',');
                    }
                    json_str(&mut out, m);
                }
                out.push(']');
            }
            out.push_str("}}");
        }
    }
    out.push_str("\n]}\n");
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(step: usize, node: &str, op: &str, kind: StepKind, ns: (u64, u64)) -> StepRecord {
        StepRecord {
            step,
            node: node.into(),
            op: op.into(),
            kind,
            device: "cpu".into(),
            start_ns: ns.0,
            end_ns: ns.1,
            bytes: 1000,
            flops: Some(2000),
            members: vec!["a\"b".into()],
        }
    }

    #[test]
    fn report_sums_per_node_and_op() {
        let runs = vec![
            RunProfile {
                label: "run 0".into(),
                offset_ns: 0,
                steps: vec![
                    rec(0, "x", "matmul", StepKind::Kernel, (0, 300)),
                    rec(1, "c", "copy", StepKind::CopyHostToDevice, (300, 400)),
                ],
            },
            RunProfile {
                label: "run 1".into(),
                offset_ns: 1000,
                steps: vec![
                    rec(0, "x", "matmul", StepKind::Kernel, (0, 500)),
                    rec(1, "c", "copy", StepKind::CopyHostToDevice, (500, 550)),
                ],
            },
        ];
        let r = Report::new(&runs);
        assert_eq!(r.total_ns, 950);
        assert_eq!(r.top_steps[0].node, "x");
        assert_eq!(r.top_steps[0].total_ns, 800);
        assert_eq!(r.top_steps[0].count, 2);
        assert_eq!(r.top_steps[0].flops, Some(4000));
        assert_eq!(r.per_op[1], ("copy".to_string(), 150, 2));
        assert_eq!(r.transfers.len(), 1);
        let text = r.to_text(5);
        assert!(text.contains("Copies: 1"), "{text}");
        let trace = chrome_trace(&runs);
        assert_eq!(trace.matches("\"ph\":\"X\"").count(), 4);
        assert!(trace.contains("a\\\"b"));
    }
}
