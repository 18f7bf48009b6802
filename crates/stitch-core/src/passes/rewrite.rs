//! Pattern rewrites: replace a recognised subgraph by an equivalent, cheaper one
//! (typically a fused composite op that a backend runs in one kernel).
//!
//! # Framework
//!
//! A [`Rule`] looks at one *root* node and, if the subgraph ending there has the
//! shape it wants, returns a [`Match`]:
//! - `interior`: the other nodes whose work the replacement takes over (e.g. the
//!   softmax inside an attention block). The framework only accepts a match whose
//!   interior nodes are *private* to it: every consumer of an interior node is
//!   another interior node or the root, and no interior node is a graph output.
//!   So replacing the match never leaves another consumer depending on a removed
//!   node, and never computes anything twice.
//! - `inputs`: the values from outside the match that the replacement reads.
//!   Nodes between those inputs and the interior that the replacement simply
//!   bypasses (a transpose of `k`, say) are not interior: they may be shared, and
//!   they disappear with dead-code elimination when nothing else uses them.
//! - `emit`: builds the replacement in the output graph from the inputs mapped
//!   there, returning the values that replace the root's outputs.
//!
//! Rules match on the *input* graph of a sweep and [`Matcher`] gives them the
//! helpers they need (producers, consumers, scalar constants). A replacement is
//! only kept when the graph's own type inference accepts it *and* its output
//! types equal the root's; otherwise the root is copied unchanged — a rule that
//! matched too eagerly costs a missed rewrite, never a failed compile.
//!
//! # Application
//!
//! [`rewrite`] runs sweeps until one makes no rewrite (a fixpoint; at most
//! [`MAX_ROUNDS`]). One sweep: (1) walk the nodes in topological order and ask
//! each rule in turn (first match wins) to match at every node; a match whose
//! root or interior overlaps an earlier match of the same sweep is skipped (it is
//! retried on the next sweep's graph); (2) rebuild the graph, emitting each
//! accepted replacement at its root's position (all its inputs precede the root,
//! so this keeps topological order and the order of variable reads and updates);
//! (3) dead-code-eliminate the bypassed interior. Every other node is copied with
//! its name. The node a replacement produces takes the root's name (so
//! `Graph::find` on it keeps working); helper nodes it adds are scoped under it.
//! A graph in which nothing matches is returned unchanged (no DCE either).
//!
//! # Rules
//!
//! [`softmax_from_primitives`] folds softmax's own decomposition back:
//! `div(e, sum(e, [a], keepdims))` with `e = exp(sub(x, max(x, [a], keepdims)))`
//! becomes `softmax(x, a)` (the same axis in both reductions, no broadcasting
//! beyond them). Together with the next rule it recovers `sdpa` from a fully
//! decomposed graph: the softmax is rebuilt in one sweep, the sdpa in the next.
//!
//! [`attention_to_sdpa`] rewrites hand-written attention into [`Op::Sdpa`]:
//!
//! ```text
//! out    = matmul(softmax(masked, axis = -1 | 3), v)
//! masked = scaled
//!        | add(scaled, mask) | add(mask, scaled)      additive mask (float)
//!        | where(mask, scaled, -inf)                  bool mask, true = attend
//! scaled = qk | mul(qk, c) | mul(c, qk) | div(qk, c)  c: one-element float constant
//! qk     = matmul_t(q, k, transpose_b) | matmul(q, transpose(k, [0, 1, 3, 2]))
//! k, v   = k0, v0 | expand_kv(k0), expand_kv(v0)      (grouped-query attention)
//! expand_kv(x) = reshape(expand(unsqueeze(x, [2]), [B, Hkv, G, L, D]), [B, Hkv*G, L, D])
//! ```
//!
//! becomes `sdpa(q, k0|k, v0|v, mask?)` with `scale = c` (`1/c` for `div`, `1`
//! without a scaling op) and `causal = false`. Interior (must be private): the
//! softmax, the mask op, the scaling op and the `q·kᵀ` matmul. Conditions: no
//! `transpose_a` on either matmul and no `transpose_b` on the outer one; q, k, v
//! of rank 4 with identical batch dims, equal head_dim (q, k), key length (k, v)
//! and head counts (k, v); q heads equal to kv heads, or kv heads 1 (the matmul
//! broadcasts them, which is GQA with a single kv head), or `Hkv * G` when the `expand_kv`
//! pattern was stripped from both k and v with the same `G`. The mask constant
//! must be exactly `-inf` (a large finite negative differs on fully masked rows,
//! where sdpa gives NaN). Scaling after masking and causal masks written as
//! `where(iota ≤ iota, ..)` on top of another mask are not recognised; a
//! causal mask alone is recognised as a plain bool mask, which is equivalent.
//!
//! Two more forms, as PyTorch exports `scaled_dot_product_attention`: `q` and
//! `kᵀ` may each be multiplied by a one-element constant before the `q·kᵀ`
//! matmul (the scales multiply; the multiply must have no other consumer), and
//! `kᵀ` may be written `reshape(transpose(reshape(k, [B*H, L, D]), [0, 2, 1]),
//! [B, H, D, L])`. And the probabilities may pass through
//! `where(p != p, 0, p)` (ONNX IsNaN: fully masked rows become 0 instead of
//! NaN) before the last matmul: the replacement then applies the same
//! `where(o != o, 0, o)` to sdpa's output, which is equal because an output
//! row is NaN exactly when its weights are (for finite q, k, v).
//!
//! [`linear_bias_to_gemm`] folds a linear layer's bias into the product:
//! `add(matmul(x, W), b)` (either operand order) with `W` a constant matrix
//! (`transpose_b` allowed, not `transpose_a`), `b` a constant row vector (`[N]`
//! or `[1, .., 1, N]`) of x's float dtype, and the add not broadcasting beyond
//! the matmul's shape, becomes `reshape(gemm(reshape(x, [M, K]), W, b),
//! shape)` with `alpha = beta = 1` (the reshapes only when x has batch axes).
//! Backends run the bias as the product's epilogue instead of another pass
//! over the output.
//!
//! [`gemm_activation`] moves a ReLU, GELU or tanh-GELU applied to a gemm's
//! result (directly, or through the reshape [`linear_bias_to_gemm`] adds)
//! into the gemm's `activation` epilogue; the gemm (and reshape) must have no
//! other consumer.

use crate::dtype::DType;
use crate::error::{Error, Result};
use crate::graph::{Graph, Node, NodeId, Value};
use crate::ops::{BinaryOp, Op, SdpaAttrs};
use crate::shape::{normalize_axis, Dim};

/// Sweeps [`rewrite`] runs at most before it reports a non-terminating rule set.
pub const MAX_ROUNDS: usize = 16;

/// Builds a replacement: see [`Match::emit`].
pub type Emit = Box<dyn FnOnce(&mut Graph, &[Value]) -> Result<Vec<Value>>>;

/// What a [`Rule`] found at a root: see the module docs.
pub struct Match {
    /// Nodes besides the root whose work the replacement takes over; they must
    /// be consumed only by each other and the root.
    pub interior: Vec<NodeId>,
    /// Values (of the matched graph) that the replacement reads.
    pub inputs: Vec<Value>,
    /// Builds the replacement in the output graph from `inputs` mapped there and
    /// returns the values replacing the root's outputs.
    pub emit: Emit,
}

impl std::fmt::Debug for Match {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Match")
            .field("interior", &self.interior)
            .field("inputs", &self.inputs)
            .finish_non_exhaustive()
    }
}

/// A rewrite rule: recognises a subgraph by its root and says how to replace it.
pub trait Rule {
    /// Short name, for errors and logs.
    fn name(&self) -> &str;
    /// The match rooted at `root`, if the subgraph ending there fits the rule.
    fn match_at(&self, m: &Matcher<'_>, root: NodeId) -> Option<Match>;
}

/// The graph being matched, with the use information rules need.
pub struct Matcher<'g> {
    graph: &'g Graph,
    consumers: Vec<Vec<NodeId>>,
    is_output: Vec<bool>,
}

impl<'g> Matcher<'g> {
    /// Indexes `graph`'s consumers; `outputs` are the graph outputs (always "used").
    pub fn new(graph: &'g Graph, outputs: &[Value]) -> Matcher<'g> {
        let n = graph.nodes().len();
        let mut consumers = vec![Vec::new(); n];
        for (i, node) in graph.nodes().iter().enumerate() {
            for v in &node.inputs {
                consumers[v.node.0 as usize].push(NodeId(i as u32));
            }
        }
        let mut is_output = vec![false; n];
        for v in outputs {
            is_output[v.node.0 as usize] = true;
        }
        Matcher {
            graph,
            consumers,
            is_output,
        }
    }

    /// The matched graph.
    pub fn graph(&self) -> &'g Graph {
        self.graph
    }
    /// The node producing `v`.
    pub fn producer(&self, v: Value) -> &'g Node {
        self.graph.node(v.node)
    }
    /// The nodes consuming any output of `node` (once per use).
    pub fn consumers(&self, node: NodeId) -> &[NodeId] {
        &self.consumers[node.0 as usize]
    }
    /// True when an output of `node` is a graph output.
    pub fn is_output(&self, node: NodeId) -> bool {
        self.is_output[node.0 as usize]
    }
    /// The value of a one-element float constant (of any rank).
    pub fn scalar_constant(&self, v: Value) -> Option<f64> {
        match &self.producer(v).op {
            Op::Constant(t) if t.numel() == 1 && t.dtype().is_float() => t.to_f64_vec().first().copied(),
            _ => None,
        }
    }
    /// True when the interior of a match rooted at `root` is private to it.
    pub fn is_private(&self, interior: &[NodeId], root: NodeId) -> bool {
        interior.iter().all(|&n| {
            n != root && !self.is_output(n) && self.consumers(n).iter().all(|c| *c == root || interior.contains(c))
        })
    }
}

/// Applies `rules` to a fixpoint (see the module docs). Returns the rewritten
/// graph, `outputs` mapped into it and the number of rewrites made.
pub fn rewrite(graph: &Graph, outputs: &[Value], rules: &[&dyn Rule]) -> Result<(Graph, Vec<Value>, usize)> {
    let mut g = graph.clone();
    let mut outs = outputs.to_vec();
    let mut total = 0;
    for _ in 0..MAX_ROUNDS {
        let Some((next, next_outs, n)) = sweep(&g, &outs, rules)? else {
            return Ok((g, outs, total));
        };
        total += n;
        (g, outs) = super::dce::dce(&next, &next_outs)?;
    }
    let names: Vec<&str> = rules.iter().map(|r| r.name()).collect();
    Err(Error::invalid(format!(
        "rewrite rules [{}] still matched after {MAX_ROUNDS} sweeps (a rule rewrites into its own pattern)",
        names.join(", ")
    )))
}

/// One sweep: `None` when no replacement was made.
fn sweep(graph: &Graph, outputs: &[Value], rules: &[&dyn Rule]) -> Result<Option<(Graph, Vec<Value>, usize)>> {
    let matcher = Matcher::new(graph, outputs);
    let n = graph.nodes().len();
    let mut claimed = vec![false; n];
    let mut planned: Vec<Option<Match>> = (0..n).map(|_| None).collect();
    let mut any = false;
    for (i, slot) in planned.iter_mut().enumerate() {
        let root = NodeId(i as u32);
        if claimed[i] {
            continue;
        }
        let found = rules.iter().find_map(|rule| {
            rule.match_at(&matcher, root)
                .filter(|m| matcher.is_private(&m.interior, root) && !m.interior.iter().any(|x| claimed[x.0 as usize]))
        });
        if let Some(m) = found {
            claimed[i] = true;
            for x in &m.interior {
                claimed[x.0 as usize] = true;
            }
            *slot = Some(m);
            any = true;
        }
    }
    if !any {
        return Ok(None);
    }

    // A replacement reads values from anywhere before its root, so keep the whole
    // old → new value map (`passes::rebuild` only hands over a node's own inputs).
    let mut out = graph.empty_like();
    let mut map: Vec<Vec<Value>> = Vec::with_capacity(n);
    let mut made = 0;
    for (node, plan) in graph.nodes().iter().zip(planned) {
        let inputs: Vec<Value> = node
            .inputs
            .iter()
            .map(|v| map[v.node.0 as usize][v.output as usize])
            .collect();
        let replaced = match plan {
            Some(m) => {
                let mapped: Vec<Value> = m
                    .inputs
                    .iter()
                    .map(|v| map[v.node.0 as usize][v.output as usize])
                    .collect();
                emit_checked(&mut out, node, m, &mapped)
            }
            None => None,
        };
        let values = match replaced {
            Some(values) => {
                made += 1;
                values
            }
            None => out.copy_node(node, &inputs)?,
        };
        map.push(values);
    }
    if made == 0 {
        return Ok(None);
    }
    let outputs = outputs
        .iter()
        .map(|v| map[v.node.0 as usize][v.output as usize])
        .collect();
    Ok(Some((out, outputs, made)))
}

/// Emits `m`'s replacement for `root`; `None` (leaving at most dead nodes behind)
/// when inference rejects it or its types differ from the root's.
fn emit_checked(out: &mut Graph, root: &Node, m: Match, inputs: &[Value]) -> Option<Vec<Value>> {
    let first_new = out.nodes().len();
    out.push_scope(&root.name);
    let emitted = (m.emit)(out, inputs);
    out.pop_scope();
    let values = emitted.ok()?;
    let exists =
        |v: &Value| (v.node.0 as usize) < out.nodes().len() && (v.output as usize) < out.node(v.node).outputs.len();
    let types_match = values.len() == root.outputs.len()
        && values
            .iter()
            .zip(&root.outputs)
            .all(|(v, t)| exists(v) && out.ty(*v) == t);
    if !types_match {
        return None;
    }
    // The node standing for the root takes its name (helpers stay scoped under it).
    if let Some(v) = values.first() {
        if v.node.0 as usize >= first_new && values.iter().all(|x| x.node == v.node) {
            out.set_name(v.node, &root.name);
        }
    }
    Some(values)
}

// ------------------------------------------------------------- attention → sdpa

/// The rule rewriting hand-written attention into [`Op::Sdpa`]; see the module docs.
#[derive(Debug, Clone, Copy, Default)]
pub struct AttentionToSdpa;

/// The attention → `sdpa` rule.
pub fn attention_to_sdpa() -> AttentionToSdpa {
    AttentionToSdpa
}

/// `q·kᵀ`, optionally scaled: what the mask applies to.
struct Scores {
    /// The (scaled) scores value.
    value: Value,
    q: Value,
    k: Value,
    scale: f64,
    interior: Vec<NodeId>,
}

fn binary(node: &Node) -> Option<BinaryOp> {
    match node.op {
        Op::Binary(b) => Some(b),
        _ => None,
    }
}

/// True when elementwise `node` keeps the type of its operand `x` (no broadcast up).
fn keeps_type(m: &Matcher<'_>, node: &Node, x: Value) -> bool {
    node.outputs.len() == 1 && &node.outputs[0] == m.graph().ty(x)
}

/// `x0` when `x` is `x0 * c` or `c * x0` (c a one-element float constant, the
/// product keeping `x0`'s type) and its only consumer is `user`: `(x0, c, mul)`.
/// Otherwise `(x, 1, None)`.
fn strip_scalar_mul(m: &Matcher<'_>, x: Value, user: NodeId) -> (Value, f64, Option<NodeId>) {
    let node = m.producer(x);
    let private = !m.is_output(x.node) && m.consumers(x.node).iter().all(|&c| c == user);
    if binary(node) == Some(BinaryOp::Mul) && private {
        let [a, b] = [node.inputs[0], node.inputs[1]];
        let found = match (m.scalar_constant(b), m.scalar_constant(a)) {
            (Some(c), _) => Some((a, c)),
            (None, Some(c)) => Some((b, c)),
            _ => None,
        };
        if let Some((x0, c)) = found {
            if keeps_type(m, node, x0) {
                return (x0, c, Some(x.node));
            }
        }
    }
    (x, 1.0, None)
}

/// `k` when `kt` is `k` with its last two axes swapped:
/// `transpose(k, [0, 1, 3, 2])`, or (as PyTorch exports it)
/// `reshape(transpose(reshape(k, [B*H, L, D]), [0, 2, 1]), [B, H, D, L])`.
fn untranspose(m: &Matcher<'_>, kt: Value) -> Option<Value> {
    let outer = m.producer(kt);
    match &outer.op {
        Op::Transpose { perm } if perm == &[0, 1, 3, 2] => return Some(outer.inputs[0]),
        Op::Reshape { .. } => {}
        _ => return None,
    }
    let t = m.producer(outer.inputs[0]);
    let (Op::Transpose { perm }, Some(inner)) = (&t.op, t.inputs.first().map(|&v| m.producer(v))) else {
        return None;
    };
    let Op::Reshape { .. } = inner.op else {
        return None;
    };
    if perm != &[0, 2, 1] {
        return None;
    }
    let k = inner.inputs[0];
    let ks = m.graph().ty(k).concrete()?;
    let flat = inner.outputs[0].concrete()?;
    let out = outer.outputs[0].concrete()?;
    let fits = ks.len() == 4 && flat == [ks[0] * ks[1], ks[2], ks[3]] && out == [ks[0], ks[1], ks[3], ks[2]];
    fits.then_some(k)
}

/// `matmul_t(q, k, transpose_b)` or `matmul(q, kᵀ)` (see [`untranspose`]), where
/// `q` and `k` (or `kᵀ`) may each be scaled by a constant first.
fn match_qk(m: &Matcher<'_>, x: Value) -> Option<Scores> {
    let node = m.producer(x);
    let Op::MatMul {
        transpose_a: false,
        transpose_b,
    } = node.op
    else {
        return None;
    };
    let (q, cq, mq) = strip_scalar_mul(m, node.inputs[0], x.node);
    let (kt, ck, mk) = strip_scalar_mul(m, node.inputs[1], x.node);
    let k = if transpose_b { kt } else { untranspose(m, kt)? };
    let mut interior = vec![x.node];
    interior.extend(mq);
    interior.extend(mk.filter(|&n| Some(n) != mq));
    Some(Scores {
        value: x,
        q,
        k,
        scale: cq * ck,
        interior,
    })
}

/// `qk`, `qk * c`, `c * qk` or `qk / c`.
fn match_scaled(m: &Matcher<'_>, x: Value) -> Option<Scores> {
    let node = m.producer(x);
    let (scores, factor) = match binary(node) {
        Some(BinaryOp::Mul) => {
            let [a, b] = [node.inputs[0], node.inputs[1]];
            if let Some(c) = m.scalar_constant(b) {
                (a, c)
            } else {
                (b, m.scalar_constant(a)?)
            }
        }
        Some(BinaryOp::Div) => {
            let c = m.scalar_constant(node.inputs[1])?;
            if c == 0.0 {
                return None;
            }
            (node.inputs[0], 1.0 / c)
        }
        _ => return match_qk(m, x),
    };
    if !keeps_type(m, node, scores) {
        return None;
    }
    let mut s = match_qk(m, scores)?;
    s.scale *= factor;
    s.value = x;
    s.interior.push(x.node);
    Some(s)
}

/// The scores and the optional mask: `scaled`, `scaled + mask`, `mask + scaled`
/// or `where(mask, scaled, -inf)`.
fn match_masked(m: &Matcher<'_>, x: Value) -> Option<(Scores, Option<Value>)> {
    let node = m.producer(x);
    let (scores, mask) = match (&node.op, binary(node)) {
        (_, Some(BinaryOp::Add)) => {
            let [a, b] = [node.inputs[0], node.inputs[1]];
            match match_scaled(m, a) {
                Some(s) => (s, b),
                None => (match_scaled(m, b)?, a),
            }
        }
        (Op::Where, _) => {
            let [cond, a, b] = [node.inputs[0], node.inputs[1], node.inputs[2]];
            let masks_with_neg_inf = m.scalar_constant(b) == Some(f64::NEG_INFINITY);
            if !masks_with_neg_inf || m.graph().ty(cond).dtype != DType::Bool {
                return None;
            }
            (match_scaled(m, a)?, cond)
        }
        _ => return match_scaled(m, x).map(|s| (s, None)),
    };
    if !keeps_type(m, node, scores.value) {
        return None;
    }
    let mut scores = scores;
    scores.interior.push(x.node);
    Some((scores, Some(mask)))
}

/// `x` before the grouped-query head expansion
/// `reshape(expand(unsqueeze(x, [2]), [B, H, G, L, D]), [B, H*G, L, D])`, with `G`.
fn strip_kv_expansion(m: &Matcher<'_>, x: Value) -> Option<(Value, usize)> {
    let reshape = m.producer(x);
    let expand = m.producer(*reshape.inputs.first()?);
    let unsqueeze = m.producer(*expand.inputs.first()?);
    let (Op::Reshape { .. }, Op::Expand { .. }, Op::Unsqueeze { axes }) = (&reshape.op, &expand.op, &unsqueeze.op)
    else {
        return None;
    };
    if axes.len() != 1 || normalize_axis(axes[0], 5) != Some(2) {
        return None;
    }
    let src = unsqueeze.inputs[0];
    let s = m.graph().ty(src).concrete()?;
    let e = expand.outputs[0].concrete()?;
    let r = reshape.outputs[0].concrete()?;
    let g = *e.get(2)?;
    let expected_e = [s.first()?, s.get(1)?, &g, s.get(2)?, s.get(3)?];
    let fits = s.len() == 4 && e.iter().eq(expected_e) && r == [s[0], s[1] * g, s[2], s[3]];
    fits.then_some((src, g))
}

impl Rule for AttentionToSdpa {
    fn name(&self) -> &str {
        "attention_to_sdpa"
    }

    fn match_at(&self, m: &Matcher<'_>, root: NodeId) -> Option<Match> {
        let out = m.graph().node(root);
        let Op::MatMul {
            transpose_a: false,
            transpose_b: false,
        } = out.op
        else {
            return None;
        };
        let (mut p, v) = (out.inputs[0], out.inputs[1]);
        // `where(isnan(p), 0, p)` (isnan as `p != p`): fully masked rows give 0, not NaN.
        let nan_to_zero = nan_to_zero(m, p);
        if let Some((_, sm)) = nan_to_zero {
            p = sm;
        }
        let softmax = m.producer(p);
        let Op::Softmax { axis } = softmax.op else {
            return None;
        };
        if normalize_axis(axis, m.graph().ty(p).shape.rank()) != Some(3) {
            return None;
        }
        let (scores, mask) = match_masked(m, softmax.inputs[0])?;
        let (q, k) = (scores.q, scores.k);

        // Checked on the matmul operands, where broadcasting would hide a mismatch.
        let dims = |x: Value| -> Option<Vec<Dim>> {
            let s = &m.graph().ty(x).shape;
            (s.rank() == 4).then(|| s.dims().to_vec())
        };
        let (qs, ks, vs) = (dims(q)?, dims(k)?, dims(v)?);
        let shapes_ok = (qs[1] == ks[1] || ks[1] == Dim::Known(1))
            && qs[0] == ks[0]
            && ks[0] == vs[0]
            && ks[1] == vs[1]
            && qs[3] == ks[3]
            && ks[2] == vs[2];
        if !shapes_ok {
            return None;
        }
        // Grouped-query attention: sdpa repeats the kv heads itself.
        let (k, v) = match (strip_kv_expansion(m, k), strip_kv_expansion(m, v)) {
            (Some((k0, gk)), Some((v0, gv))) if gk == gv => (k0, v0),
            _ => (k, v),
        };

        let mut interior = scores.interior;
        interior.push(p.node);
        interior.extend(nan_to_zero.map(|(nodes, _)| nodes).into_iter().flatten());
        let mut inputs = vec![q, k, v];
        inputs.extend(mask);
        let attrs = SdpaAttrs {
            scale: Some(scores.scale),
            causal: false,
        };
        let zero_nan = nan_to_zero.is_some();
        Some(Match {
            interior,
            inputs,
            emit: Box::new(move |g, ins| {
                let mask = ins.get(3).copied();
                let o = g.sdpa(ins[0], ins[1], ins[2], mask, attrs)?;
                if !zero_nan {
                    return Ok(vec![o]);
                }
                // A row's weights are all NaN exactly when its output row is (every
                // key masked), so zeroing NaN outputs equals zeroing NaN weights.
                let is_nan = g.add_op(Op::Binary(BinaryOp::NotEqual), &[o, o])?;
                let zero = g.scalar(g.ty(o).dtype, 0.0);
                Ok(vec![g.add_op(Op::Where, &[is_nan, zero, o])?])
            }),
        })
    }
}

/// `([where, isnan], p)` when `x = where(p != p, 0, p)`.
fn nan_to_zero(m: &Matcher<'_>, x: Value) -> Option<([NodeId; 2], Value)> {
    let w = m.producer(x);
    let Op::Where = w.op else {
        return None;
    };
    let [cond, zero, p] = [w.inputs[0], w.inputs[1], w.inputs[2]];
    let ne = m.producer(cond);
    let is_nan = binary(ne) == Some(BinaryOp::NotEqual) && ne.inputs[0] == p && ne.inputs[1] == p;
    (is_nan && m.scalar_constant(zero) == Some(0.0) && keeps_type(m, w, p)).then_some(([x.node, cond.node], p))
}

// ------------------------------------------------ linear layer → gemm

/// The rule folding a linear layer's bias add into [`Op::Gemm`]; see the module docs.
#[derive(Debug, Clone, Copy, Default)]
pub struct LinearBiasToGemm;

/// The `add(matmul(x, W), b)` → `gemm` rule (W, b constants).
pub fn linear_bias_to_gemm() -> LinearBiasToGemm {
    LinearBiasToGemm
}

impl Rule for LinearBiasToGemm {
    fn name(&self) -> &str {
        "linear_bias_to_gemm"
    }

    fn match_at(&self, m: &Matcher<'_>, root: NodeId) -> Option<Match> {
        let add = m.graph().node(root);
        if binary(add) != Some(BinaryOp::Add) {
            return None;
        }
        let constant = |v: Value| match &m.producer(v).op {
            Op::Constant(t) => Some(t.clone()),
            _ => None,
        };
        for (y, b) in [(add.inputs[0], add.inputs[1]), (add.inputs[1], add.inputs[0])] {
            let mm = m.producer(y);
            let Op::MatMul {
                transpose_a: false,
                transpose_b,
            } = mm.op
            else {
                continue;
            };
            let (x, w) = (mm.inputs[0], mm.inputs[1]);
            let (Some(_), Some(bias)) = (constant(w), constant(b)) else {
                continue;
            };
            let (xt, wt) = (m.graph().ty(x), m.graph().ty(w));
            let (Some(xs), Some(ws), Some(out)) = (xt.concrete(), wt.concrete(), add.outputs[0].concrete()) else {
                continue;
            };
            if !xt.dtype.is_float() || xs.len() < 2 || ws.len() != 2 || add.outputs[0] != mm.outputs[0] {
                continue;
            }
            let (k, n) = if transpose_b { (ws[1], ws[0]) } else { (ws[0], ws[1]) };
            let bs = bias.shape();
            let row_vector = bs.last() == Some(&n) && bs[..bs.len() - 1].iter().all(|&d| d == 1);
            if !row_vector || bs.len() > out.len() || xs[xs.len() - 1] != k || bias.dtype() != xt.dtype {
                continue;
            }
            let rows: usize = xs[..xs.len() - 1].iter().product();
            return Some(Match {
                interior: vec![y.node],
                inputs: vec![x, w],
                emit: Box::new(move |g, ins| {
                    let x2 = if xs.len() == 2 {
                        ins[0]
                    } else {
                        g.reshape(ins[0], &[rows as i64, k as i64])?
                    };
                    let c = g.constant(bias.reshape(&[n])?);
                    let gemm = Op::Gemm {
                        alpha: 1.0,
                        beta: 1.0,
                        transpose_a: false,
                        transpose_b,
                        activation: None,
                    };
                    let y = g.add_op(gemm, &[x2, ins[1], c])?;
                    if out.len() == 2 {
                        return Ok(vec![y]);
                    }
                    let shape: Vec<i64> = out.iter().map(|&d| d as i64).collect();
                    Ok(vec![g.reshape(y, &shape)?])
                }),
            });
        }
        None
    }
}

/// The rule moving an activation after a gemm into its epilogue; see the module docs.
#[derive(Debug, Clone, Copy, Default)]
pub struct GemmActivation;

/// The `act(gemm(..))` → `gemm(.., activation = act)` rule.
pub fn gemm_activation() -> GemmActivation {
    GemmActivation
}

impl Rule for GemmActivation {
    fn name(&self) -> &str {
        "gemm_activation"
    }

    fn match_at(&self, m: &Matcher<'_>, root: NodeId) -> Option<Match> {
        let act_node = m.graph().node(root);
        let Op::Unary(act) = act_node.op else {
            return None;
        };
        if !crate::ops::linalg::EPILOGUE_ACTIVATIONS.contains(&act) {
            return None;
        }
        // `act(gemm)` or `act(reshape(gemm))` (the linear rewrite's reshape back).
        let mut x = act_node.inputs[0];
        let mut interior = Vec::new();
        let mut reshape = None;
        if let Op::Reshape { .. } = m.producer(x).op {
            reshape = Some(m.graph().ty(x).concrete()?);
            interior.push(x.node);
            x = m.producer(x).inputs[0];
        }
        let gemm = m.producer(x);
        let Op::Gemm {
            alpha,
            beta,
            transpose_a,
            transpose_b,
            activation: None,
        } = gemm.op
        else {
            return None;
        };
        if !m.graph().ty(x).dtype.is_float() {
            return None;
        }
        interior.push(x.node);
        let inputs = gemm.inputs.clone();
        Some(Match {
            interior,
            inputs,
            emit: Box::new(move |g, ins| {
                let op = Op::Gemm {
                    alpha,
                    beta,
                    transpose_a,
                    transpose_b,
                    activation: Some(act),
                };
                let y = g.add_op(op, ins)?;
                match reshape {
                    Some(shape) => {
                        let shape: Vec<i64> = shape.iter().map(|&d| d as i64).collect();
                        Ok(vec![g.reshape(y, &shape)?])
                    }
                    None => Ok(vec![y]),
                }
            }),
        })
    }
}

// ------------------------------------------------ primitives → softmax

/// The rule folding softmax's decomposition back into [`Op::Softmax`]; see the module docs.
#[derive(Debug, Clone, Copy, Default)]
pub struct SoftmaxFromPrimitives;

/// The `div(exp(x - max(x)), sum(exp(x - max(x))))` → `softmax` rule.
pub fn softmax_from_primitives() -> SoftmaxFromPrimitives {
    SoftmaxFromPrimitives
}

/// The normalised axis of a one-axis, keepdims reduction `op` of `node`.
fn reduce_axis(m: &Matcher<'_>, node: &Node, op: crate::ops::ReduceOp) -> Option<usize> {
    match &node.op {
        Op::Reduce {
            op: o,
            axes,
            keepdims: true,
        } if *o == op && axes.len() == 1 => normalize_axis(axes[0], m.graph().ty(node.inputs[0]).shape.rank()),
        _ => None,
    }
}

impl Rule for SoftmaxFromPrimitives {
    fn name(&self) -> &str {
        "softmax_from_primitives"
    }

    fn match_at(&self, m: &Matcher<'_>, root: NodeId) -> Option<Match> {
        use crate::ops::{ReduceOp, UnaryOp};
        let div = m.graph().node(root);
        if binary(div) != Some(BinaryOp::Div) {
            return None;
        }
        let (e, s) = (div.inputs[0], div.inputs[1]);
        let (exp, sum) = (m.producer(e), m.producer(s));
        let (Op::Unary(UnaryOp::Exp), Some(sum_axis)) = (&exp.op, reduce_axis(m, sum, ReduceOp::Sum)) else {
            return None;
        };
        let sub = m.producer(exp.inputs[0]);
        if sum.inputs[0] != e || binary(sub) != Some(BinaryOp::Sub) {
            return None;
        }
        let (x, mx) = (sub.inputs[0], sub.inputs[1]);
        let max = m.producer(mx);
        if reduce_axis(m, max, ReduceOp::Max) != Some(sum_axis) || max.inputs[0] != x {
            return None;
        }
        // No broadcasting beyond the reductions: every step keeps x's type.
        let xt = m.graph().ty(x);
        if &sub.outputs[0] != xt || &exp.outputs[0] != xt || &div.outputs[0] != xt {
            return None;
        }
        Some(Match {
            interior: vec![mx.node, exp.inputs[0].node, e.node, s.node],
            inputs: vec![x],
            emit: Box::new(move |g, ins| Ok(vec![g.softmax(ins[0], sum_axis as i64)?])),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ops::UnaryOp;
    use crate::Tensor;

    const B: usize = 2;
    const H: usize = 3;
    const L: usize = 5;
    const D: usize = 4;

    fn qkv(g: &mut Graph) -> (Value, Value, Value) {
        let q = g.placeholder("q", DType::F32, [B, H, L, D]);
        let k = g.placeholder("k", DType::F32, [B, H, L + 1, D]);
        let v = g.placeholder("v", DType::F32, [B, H, L + 1, D + 2]);
        (q, k, v)
    }

    fn kinds(g: &Graph) -> Vec<String> {
        g.nodes().iter().map(|n| n.op.kind()).collect()
    }

    fn count(g: &Graph, kind: &str) -> usize {
        kinds(g).iter().filter(|k| *k == kind).count()
    }

    fn run(g: &Graph, outs: &[Value]) -> (Graph, Vec<Value>, usize) {
        rewrite(g, outs, &[&attention_to_sdpa()]).unwrap()
    }

    /// Asserts exactly one sdpa remains, computing `outs[0]` from `expected` inputs with `scale`.
    fn assert_sdpa(g: &Graph, outs: &[Value], expected: &[&str], scale: f64) {
        assert_eq!(count(g, "sdpa"), 1, "{:?}", kinds(g));
        for gone in ["softmax", "matmul", "mul", "div", "add", "where", "transpose"] {
            assert_eq!(count(g, gone), 0, "{gone} left in {:?}", kinds(g));
        }
        let node = g.node(outs[0].node);
        let Op::Sdpa(attrs) = node.op else {
            panic!("output is {}, not sdpa", node.op.kind())
        };
        assert!(!attrs.causal);
        let got = attrs.scale.expect("explicit scale");
        assert!((got - scale).abs() < 1e-12, "scale {got}, expected {scale}");
        let names: Vec<&str> = node.inputs.iter().map(|v| g.node(v.node).name.as_str()).collect();
        assert_eq!(names, expected);
    }

    #[test]
    fn transpose_b_matmul_scaled_by_mul_becomes_sdpa() {
        let mut g = Graph::new();
        let (q, k, v) = qkv(&mut g);
        let s = g.matmul_t(q, k, false, true).unwrap();
        let c = g.scalar(DType::F32, 0.25);
        let s = g.mul(s, c).unwrap();
        let p = g.softmax(s, -1).unwrap();
        let o = g.matmul(p, v).unwrap();
        let root_name = g.node(o.node).name.clone();
        let (out, outs, n) = run(&g, &[o]);
        assert_eq!(n, 1);
        assert_sdpa(&out, &outs, &["q", "k", "v"], 0.25);
        assert_eq!(out.node(outs[0].node).name, root_name, "the sdpa takes the root's name");
        assert_eq!(out.ty(outs[0]), g.ty(o));
        assert_eq!(out.nodes().len(), 4, "{:?}", kinds(&out));
    }

    #[test]
    fn explicit_transpose_with_constant_first_mul_and_div_are_recognised() {
        for form in ["mul_first", "div", "none"] {
            let mut g = Graph::new();
            let (q, k, v) = qkv(&mut g);
            let kt = g.transpose(k, &[0, 1, 3, 2]).unwrap();
            let s = g.matmul(q, kt).unwrap();
            let (s, scale) = match form {
                "mul_first" => {
                    let c = g.scalar(DType::F32, 0.125);
                    (g.mul(c, s).unwrap(), 0.125)
                }
                "div" => {
                    // A one-element constant of rank 4 also counts as a scalar.
                    let c = g.constant(Tensor::from_vec(vec![2.0f32], &[1, 1, 1, 1]).unwrap());
                    (g.div(s, c).unwrap(), 0.5)
                }
                _ => (s, 1.0),
            };
            let p = g.softmax(s, 3).unwrap();
            let o = g.matmul(p, v).unwrap();
            let (out, outs, n) = run(&g, &[o]);
            assert_eq!(n, 1, "{form}");
            assert_sdpa(&out, &outs, &["q", "k", "v"], scale);
        }
    }

    #[test]
    fn additive_masks_in_either_operand_order_and_bool_masks_are_passed_to_sdpa() {
        for form in ["add_mask_second", "add_mask_first", "where"] {
            let mut g = Graph::new();
            let (q, k, v) = qkv(&mut g);
            let s = g.matmul_t(q, k, false, true).unwrap();
            let c = g.scalar(DType::F32, 0.5);
            let s = g.mul(s, c).unwrap();
            let s = match form {
                "where" => {
                    let m = g.placeholder("mask", DType::Bool, [L, L + 1]);
                    let ninf = g.scalar(DType::F32, f64::NEG_INFINITY);
                    g.where_(m, s, ninf).unwrap()
                }
                _ => {
                    let m = g.placeholder("mask", DType::F32, [B, 1, 1, L + 1]);
                    if form == "add_mask_first" {
                        g.add(m, s).unwrap()
                    } else {
                        g.add(s, m).unwrap()
                    }
                }
            };
            let p = g.softmax(s, -1).unwrap();
            let o = g.matmul(p, v).unwrap();
            let (out, outs, n) = run(&g, &[o]);
            assert_eq!(n, 1, "{form}");
            assert_sdpa(&out, &outs, &["q", "k", "v", "mask"], 0.5);
        }
    }

    #[test]
    fn softmax_used_elsewhere_blocks_the_rewrite() {
        let mut g = Graph::new();
        let (q, k, v) = qkv(&mut g);
        let s = g.matmul_t(q, k, false, true).unwrap();
        let p = g.softmax(s, -1).unwrap();
        let o = g.matmul(p, v).unwrap();
        // The attention probabilities are also returned: sdpa would hide them.
        let (out, _, n) = run(&g, &[o, p]);
        assert_eq!(n, 0);
        assert_eq!(kinds(&out), kinds(&g));
        // Same when another node consumes the scores.
        let mut g = Graph::new();
        let (q, k, v) = qkv(&mut g);
        let s = g.matmul_t(q, k, false, true).unwrap();
        let p = g.softmax(s, -1).unwrap();
        let o = g.matmul(p, v).unwrap();
        let e = g.exp(s).unwrap();
        let (out, _, n) = run(&g, &[o, e]);
        assert_eq!(n, 0);
        assert_eq!(kinds(&out), kinds(&g));
    }

    #[test]
    fn shared_transpose_of_k_is_kept_for_its_other_user() {
        let mut g = Graph::new();
        let (q, k, v) = qkv(&mut g);
        let kt = g.transpose(k, &[0, 1, 3, 2]).unwrap();
        let s = g.matmul(q, kt).unwrap();
        let p = g.softmax(s, -1).unwrap();
        let o = g.matmul(p, v).unwrap();
        let other = g.neg(kt).unwrap();
        let (out, outs, n) = run(&g, &[o, other]);
        assert_eq!(n, 1);
        assert_eq!(
            kinds(&out),
            ["placeholder", "placeholder", "placeholder", "transpose", "sdpa", "neg"]
        );
        assert_eq!(out.node(outs[1].node).op.kind(), "neg");
    }

    #[test]
    fn non_attention_graphs_are_left_unchanged() {
        type Build = fn(&mut Graph, Value, Value, Value) -> Value;
        let cases: [(&str, Build); 6] = [
            ("softmax over another axis", |g, q, k, v| {
                let s = g.matmul_t(q, k, false, true).unwrap();
                let p = g.softmax(s, 2).unwrap();
                g.matmul(p, v).unwrap()
            }),
            ("scale by a tensor", |g, q, k, v| {
                let s = g.matmul_t(q, k, false, true).unwrap();
                let c = g.constant(Tensor::from_vec(vec![0.5f32; L + 1], &[L + 1]).unwrap());
                let s = g.mul(s, c).unwrap();
                let p = g.softmax(s, -1).unwrap();
                g.matmul(p, v).unwrap()
            }),
            ("finite mask fill", |g, q, k, v| {
                let s = g.matmul_t(q, k, false, true).unwrap();
                let m = g.placeholder("mask", DType::Bool, [L, L + 1]);
                let big = g.scalar(DType::F32, -1e9);
                let s = g.where_(m, s, big).unwrap();
                let p = g.softmax(s, -1).unwrap();
                g.matmul(p, v).unwrap()
            }),
            ("k given pre-transposed, no transpose to strip", |g, q, _, v| {
                let kt = g.placeholder("kt", DType::F32, [B, H, D, L + 1]);
                let s = g.matmul(q, kt).unwrap();
                let p = g.softmax(s, -1).unwrap();
                g.matmul(p, v).unwrap()
            }),
            ("transposed value", |g, q, k, v| {
                let s = g.matmul_t(q, k, false, true).unwrap();
                let p = g.softmax(s, -1).unwrap();
                let vt = g.transpose(v, &[0, 1, 3, 2]).unwrap();
                g.matmul_t(p, vt, false, true).unwrap()
            }),
            ("scaled after masking", |g, q, k, v| {
                let s = g.matmul_t(q, k, false, true).unwrap();
                let m = g.placeholder("mask", DType::F32, [L, L + 1]);
                let s = g.add(s, m).unwrap();
                let c = g.scalar(DType::F32, 0.5);
                let s = g.mul(s, c).unwrap();
                let p = g.softmax(s, -1).unwrap();
                g.matmul(p, v).unwrap()
            }),
        ];
        for (what, build) in cases {
            let mut g = Graph::new();
            let (q, k, v) = qkv(&mut g);
            let o = build(&mut g, q, k, v);
            let (out, outs, n) = run(&g, &[o]);
            assert_eq!(n, 0, "{what}");
            assert_eq!(kinds(&out), kinds(&g), "{what}");
            assert_eq!(outs, [o], "{what}");
        }
    }

    #[test]
    fn broadcast_batch_or_mismatched_heads_are_not_rewritten() {
        // k and v with batch 1 broadcast in the matmuls but not in sdpa.
        let mut g = Graph::new();
        let q = g.placeholder("q", DType::F32, [B, H, L, D]);
        let k = g.placeholder("k", DType::F32, [1, H, L, D]);
        let v = g.placeholder("v", DType::F32, [1, H, L, D]);
        let s = g.matmul_t(q, k, false, true).unwrap();
        let p = g.softmax(s, -1).unwrap();
        let o = g.matmul(p, v).unwrap();
        let (out, _, n) = run(&g, &[o]);
        assert_eq!(n, 0);
        assert_eq!(kinds(&out), kinds(&g));
        // One kv head broadcast over the query heads is grouped-query attention: rewritten.
        let mut g = Graph::new();
        let q = g.placeholder("q", DType::F32, [B, H, L, D]);
        let k = g.placeholder("k", DType::F32, [B, 1, L, D]);
        let v = g.placeholder("v", DType::F32, [B, 1, L, D]);
        let s = g.matmul_t(q, k, false, true).unwrap();
        let p = g.softmax(s, -1).unwrap();
        let o = g.matmul(p, v).unwrap();
        let (out, outs, n) = run(&g, &[o]);
        assert_eq!(n, 1);
        assert_sdpa(&out, &outs, &["q", "k", "v"], 1.0);
    }

    #[test]
    fn decomposed_sdpa_is_recognised_again_including_grouped_query_heads() {
        for (hkv, with_mask, all_the_way) in [(6, false, false), (6, true, true), (2, true, false), (3, false, true)] {
            let hq = 6;
            let mut g = Graph::new();
            let q = g.placeholder("q", DType::F32, [B, hq, L, D]);
            let k = g.placeholder("k", DType::F32, [B, hkv, L + 1, D]);
            let v = g.placeholder("v", DType::F32, [B, hkv, L + 1, D]);
            let mask = with_mask.then(|| g.placeholder("mask", DType::Bool, [B, 1, L, L + 1]));
            let o = g.sdpa(q, k, v, mask, SdpaAttrs::default()).unwrap();
            let case = format!("hkv {hkv} mask {with_mask} softmax decomposed {all_the_way}");
            // Decompose only the sdpa, or everything (then softmax must be rebuilt first).
            let keep_softmax = |n: &Node| matches!(n.op, Op::Softmax { .. });
            let keep_none = |_: &Node| false;
            let keep: &dyn Fn(&Node) -> bool = if all_the_way { &keep_none } else { &keep_softmax };
            let (dg, douts) = crate::passes::decompose::decompose(&g, &[o], keep).unwrap();
            assert_eq!(count(&dg, "sdpa"), 0);
            assert_eq!(count(&dg, "softmax"), usize::from(!all_the_way), "{case}");
            let (out, outs, n) = rewrite(&dg, &douts, &[&softmax_from_primitives(), &attention_to_sdpa()]).unwrap();
            assert_eq!(n, 1 + usize::from(all_the_way), "{case}: {:?}", kinds(&out));
            let mut expected = vec!["q", "k", "v"];
            if with_mask {
                expected.push("mask");
            }
            assert_sdpa(&out, &outs, &expected, 1.0 / (D as f64).sqrt());
            for gone in [
                "unsqueeze",
                "expand",
                "reshape",
                "exp",
                "reduce_max",
                "reduce_sum",
                "sub",
            ] {
                assert_eq!(count(&out, gone), 0, "{case}: {gone} left: {:?}", kinds(&out));
            }
        }
    }

    #[test]
    fn softmax_is_rebuilt_only_from_its_exact_decomposition() {
        let mut g = Graph::new();
        let x = g.placeholder("x", DType::F32, [3, 4]);
        let p = g.softmax(x, 0).unwrap();
        let (dg, douts) = crate::passes::decompose::decompose(&g, &[p], &|_| false).unwrap();
        let rules: [&dyn Rule; 1] = [&softmax_from_primitives()];
        let (out, outs, n) = rewrite(&dg, &douts, &rules).unwrap();
        assert_eq!(n, 1);
        assert_eq!(kinds(&out), ["placeholder", "softmax"]);
        assert!(matches!(out.node(outs[0].node).op, Op::Softmax { axis: 0 }));
        // Max over one axis, sum over the other: not a softmax.
        let mut g = Graph::new();
        let x = g.placeholder("x", DType::F32, [3, 4]);
        let mx = g.reduce_max(x, &[0], true).unwrap();
        let d = g.sub(x, mx).unwrap();
        let e = g.exp(d).unwrap();
        let s = g.sum(e, &[1], true).unwrap();
        let y = g.div(e, s).unwrap();
        let (out, _, n) = rewrite(&g, &[y], &rules).unwrap();
        assert_eq!(n, 0);
        assert_eq!(kinds(&out), kinds(&g));
    }

    #[test]
    fn independent_attention_blocks_are_all_rewritten_and_other_nodes_keep_their_names() {
        let mut g = Graph::new();
        let (q, k, v) = qkv(&mut g);
        let mut outs = Vec::new();
        for scale in [0.5, 0.25] {
            let s = g.matmul_t(q, k, false, true).unwrap();
            let c = g.scalar(DType::F32, scale);
            let s = g.mul(s, c).unwrap();
            let p = g.softmax(s, -1).unwrap();
            let o = g.matmul(p, v).unwrap();
            outs.push(g.relu(o).unwrap());
        }
        let (out, new_outs, n) = run(&g, &outs);
        assert_eq!(n, 2);
        assert_eq!(count(&out, "sdpa"), 2);
        assert_eq!(count(&out, "softmax"), 0);
        for (old, new) in outs.iter().zip(&new_outs) {
            assert_eq!(out.node(new.node).name, g.node(old.node).name);
        }
    }

    /// `neg(neg(x)) → x`: exercises the framework with a rule returning an existing value.
    struct DoubleNeg;
    impl Rule for DoubleNeg {
        fn name(&self) -> &str {
            "double_neg"
        }
        fn match_at(&self, m: &Matcher<'_>, root: NodeId) -> Option<Match> {
            let is_neg = |n: &Node| matches!(n.op, Op::Unary(UnaryOp::Neg));
            let outer = m.graph().node(root);
            let inner = m.producer(*outer.inputs.first()?);
            (is_neg(outer) && is_neg(inner)).then(|| Match {
                interior: vec![outer.inputs[0].node],
                inputs: vec![inner.inputs[0]],
                emit: Box::new(|_, ins| Ok(vec![ins[0]])),
            })
        }
    }

    #[test]
    fn overlapping_matches_are_resolved_in_order_and_dead_nodes_removed() {
        let mut g = Graph::new();
        let x = g.placeholder("x", DType::F32, [3]);
        let mut y = x;
        for _ in 0..5 {
            y = g.neg(y).unwrap();
        }
        let (out, outs, n) = rewrite(&g, &[y], &[&DoubleNeg]).unwrap();
        assert_eq!(n, 2, "neg⁵ = neg: two pairs cancel");
        assert_eq!(kinds(&out), ["placeholder", "neg"]);
        assert_eq!(out.node(outs[0].node).inputs[0].node, NodeId(0));
        // The output of an inner neg blocks the pair it belongs to.
        let mut g = Graph::new();
        let x = g.placeholder("x", DType::F32, [3]);
        let a = g.neg(x).unwrap();
        let b = g.neg(a).unwrap();
        let (out, _, n) = rewrite(&g, &[b, a], &[&DoubleNeg]).unwrap();
        assert_eq!(n, 0);
        assert_eq!(out.nodes().len(), 3);
    }

    /// A rule that always replaces its root by a wrongly typed value.
    struct BadType;
    impl Rule for BadType {
        fn name(&self) -> &str {
            "bad_type"
        }
        fn match_at(&self, m: &Matcher<'_>, root: NodeId) -> Option<Match> {
            let node = m.graph().node(root);
            matches!(node.op, Op::Unary(UnaryOp::Exp)).then(|| Match {
                interior: vec![],
                inputs: node.inputs.clone(),
                emit: Box::new(|g, ins| Ok(vec![g.cast(ins[0], DType::F64)?])),
            })
        }
    }

    #[test]
    fn replacements_with_other_types_are_skipped_not_errors() {
        let mut g = Graph::new();
        let x = g.placeholder("x", DType::F32, [3]);
        let y = g.exp(x).unwrap();
        let (out, outs, n) = rewrite(&g, &[y], &[&BadType]).unwrap();
        assert_eq!(n, 0);
        assert_eq!(kinds(&out), ["placeholder", "exp"]);
        assert_eq!(outs, [y]);
    }

    #[test]
    fn linear_bias_becomes_gemm_only_for_constant_weights_and_bias_rows() {
        let build = |bias_shape: &[usize], bias_const: bool, weight_const: bool, extra_use: bool| {
            let mut g = Graph::new();
            let x = g.placeholder("x", DType::F32, [2, 3, 4]);
            let w = if weight_const {
                g.constant(Tensor::from_vec((0..20).map(|i| i as f32 * 0.1).collect::<Vec<_>>(), &[4, 5]).unwrap())
            } else {
                g.placeholder("w", DType::F32, [4, 5])
            };
            let n: usize = bias_shape.iter().product();
            let b = if bias_const {
                g.constant(Tensor::from_vec(vec![0.5f32; n], bias_shape).unwrap())
            } else {
                g.placeholder("b", DType::F32, bias_shape.to_vec())
            };
            let y = g.matmul(x, w).unwrap();
            let z = g.add(b, y).unwrap();
            let outs = if extra_use { vec![z, y] } else { vec![z] };
            let (out, outs2, n) = rewrite(&g, &outs, &[&linear_bias_to_gemm()]).unwrap();
            assert_eq!(out.ty(outs2[0]), g.ty(z));
            (n, count(&out, "gemm"), count(&out, "matmul"))
        };
        assert_eq!(build(&[5], true, true, false), (1, 1, 0));
        assert_eq!(build(&[1, 1, 5], true, true, false), (1, 1, 0));
        // Not a linear layer's bias, or not constant, or the product used elsewhere.
        assert_eq!(build(&[3, 5], true, true, false), (0, 0, 1));
        assert_eq!(build(&[5], false, true, false), (0, 0, 1));
        assert_eq!(build(&[5], true, false, false), (0, 0, 1));
        assert_eq!(build(&[5], true, true, true), (0, 0, 1));
    }
}
