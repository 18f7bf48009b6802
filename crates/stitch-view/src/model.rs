//! The viewer's model of one graph: each node flattened into a record the API
//! serves (op, attributes, types, producers, consumers), and a tree of groups
//! built from the node names' scopes so that large graphs open folded.
//!
//! This module only describes a graph; it lays nothing out and serves nothing.

use std::collections::HashMap;

use stitch_core::ops::fused::{Expr, Region};
use stitch_core::{Graph, Op, QuantFormat, VarId};

/// Most items one group shows before its items are split into parts, so every
/// layout the server computes stays small.
pub const MAX_ITEMS_PER_GROUP: usize = 80;

/// One op inside a fused region.
#[derive(Debug, Clone)]
pub struct Member {
    /// The name the op had before fusion.
    pub name: String,
    /// Its op kind.
    pub op: String,
    /// Earlier members it reads.
    pub from_members: Vec<usize>,
    /// Inputs of the fused node it reads.
    pub from_inputs: Vec<usize>,
}

/// One graph node, as the viewer shows it.
#[derive(Debug, Clone)]
pub struct ViewNode {
    /// Full scoped name.
    pub name: String,
    /// Op kind (`matmul`, `fused`, ...).
    pub op: String,
    /// Attributes, as text.
    pub attrs: String,
    /// Producer node and output index of each input.
    pub inputs: Vec<(usize, u32)>,
    /// Output types as text (`f32[1, 128, 384]`).
    pub outputs: Vec<String>,
    /// Backend index that runs it (0 = the primary device).
    pub device: usize,
    /// Members when the node is a fused region.
    pub members: Vec<Member>,
    /// The variable it reads or writes.
    pub variable: Option<usize>,
    /// The quantization format the op works with (`dequantize`, `quant_matmul`).
    pub quant: Option<QuantFormat>,
}

/// A group of items (nodes and subgroups) shown as one box until expanded.
#[derive(Debug, Clone)]
pub struct Group {
    /// Label (the scope component, or `part N`).
    pub label: String,
    /// Full scope path, for display.
    pub path: String,
    /// Parent group (None for the root).
    pub parent: Option<usize>,
    /// Items in graph order.
    pub items: Vec<Item>,
    /// Nodes anywhere below.
    pub node_count: usize,
}

/// An item of a group.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Item {
    /// A node.
    Node(usize),
    /// A subgroup.
    Group(usize),
}

/// A variable and the nodes that read and write it.
#[derive(Debug, Clone)]
pub struct VariableView {
    /// Its name.
    pub name: String,
    /// Its type, as text.
    pub ty: String,
    /// `read_variable` nodes.
    pub reads: Vec<usize>,
    /// `assign` / `slice_update` nodes.
    pub writes: Vec<usize>,
}

/// A graph prepared for viewing.
#[derive(Debug, Clone)]
pub struct ViewGraph {
    /// Nodes in graph order.
    pub nodes: Vec<ViewNode>,
    /// Consumers of each node (node indices, in order, without repeats).
    pub consumers: Vec<Vec<usize>>,
    /// Groups; index 0 is the root.
    pub groups: Vec<Group>,
    /// The group that directly holds each node.
    pub group_of: Vec<usize>,
    /// Variables.
    pub variables: Vec<VariableView>,
    /// Names of the backends that device indices refer to.
    pub devices: Vec<String>,
    /// Groups below the root that the tree uses.
    pub reachable_groups: usize,
}

fn attrs_text(op: &Op) -> String {
    let s = match op {
        Op::Constant(t) => format!("dtype {}, shape {:?}", t.dtype(), t.shape()),
        Op::Fused(r) => region_text(r),
        other => format!("{other:?}"),
    };
    if s.chars().count() > 600 {
        let cut: String = s.chars().take(600).collect();
        format!("{cut}…")
    } else {
        s
    }
}

fn expr_op(e: &Expr) -> Option<String> {
    match e {
        Expr::Input(_) | Expr::Scalar(..) => None,
        Expr::Unary(u, _) => Some(u.name().to_string()),
        Expr::Binary(b, _, _) => Some(b.name().to_string()),
        Expr::Where(..) => Some("where".into()),
        Expr::Cast(d, _) => Some(format!("cast({d})")),
    }
}

fn region_text(r: &Region) -> String {
    let ops: Vec<String> = r.exprs.iter().filter_map(expr_op).collect();
    let mut s = format!("{} ops: {}", r.members.len(), ops.join(", "));
    if let Some(red) = &r.reduce {
        s.push_str(&format!(", then {} over axes {:?}", red.op.name(), red.axes));
    }
    s
}

/// The member ops of a fused region with the edges between them, rebuilt from
/// the region's expressions (one per member, in order; a trailing reduction is
/// the last member).
pub fn region_members(r: &Region) -> Vec<Member> {
    // Which member (or input) each expression stands for.
    #[derive(Clone, Copy)]
    enum Src {
        Input(usize),
        Member(usize),
        None,
    }
    let mut src: Vec<Src> = Vec::with_capacity(r.exprs.len());
    let mut members: Vec<Member> = vec![];
    for e in &r.exprs {
        let operands: Vec<usize> = match e {
            Expr::Input(_) | Expr::Scalar(..) => vec![],
            Expr::Unary(_, a) | Expr::Cast(_, a) => vec![*a],
            Expr::Binary(_, a, b) => vec![*a, *b],
            Expr::Where(c, a, b) => vec![*c, *a, *b],
        };
        match (e, expr_op(e)) {
            (Expr::Input(i), _) => src.push(Src::Input(*i)),
            (_, Some(op)) => {
                let j = members.len();
                let mut m = Member {
                    name: r.members.get(j).cloned().unwrap_or_else(|| format!("{op}_{j}")),
                    op,
                    from_members: vec![],
                    from_inputs: vec![],
                };
                for o in operands {
                    match src.get(o).copied().unwrap_or(Src::None) {
                        Src::Input(i) if !m.from_inputs.contains(&i) => m.from_inputs.push(i),
                        Src::Member(k) if !m.from_members.contains(&k) => m.from_members.push(k),
                        _ => {}
                    }
                }
                members.push(m);
                src.push(Src::Member(j));
            }
            _ => src.push(Src::None),
        }
    }
    if let Some(red) = &r.reduce {
        let j = members.len();
        let mut m = Member {
            name: r
                .members
                .get(j)
                .cloned()
                .unwrap_or_else(|| format!("{}_{j}", red.op.name())),
            op: red.op.name().to_string(),
            from_members: vec![],
            from_inputs: vec![],
        };
        match r.outputs.first().and_then(|&o| src.get(o).copied()) {
            Some(Src::Member(k)) => m.from_members.push(k),
            Some(Src::Input(i)) => m.from_inputs.push(i),
            _ => {}
        }
        members.push(m);
    }
    members
}

/// Scope components of a name: `/encoder/layer.0/MatMul` → `[encoder, layer.0]`.
/// A fused region is named after its root member (`fused_blk.0/attn/mul_5`) and
/// sits in that member's scope.
fn scopes(name: &str) -> Vec<&str> {
    let name = name.strip_prefix("fused_").unwrap_or(name);
    let parts: Vec<&str> = name.split('/').filter(|p| !p.is_empty()).collect();
    match parts.split_last() {
        Some((_, scope)) => scope.to_vec(),
        None => vec![],
    }
}

/// Scope of a dotted parameter name: `encoder.layer.0.attention.self.query.weight`
/// → `[encoder, layer.0, attention, self, query]` (a number joins the component
/// before it). Empty for names with fewer than two components or with slashes.
fn dotted_scope(name: &str) -> Vec<String> {
    if name.contains('/') || name.contains("::") {
        return vec![];
    }
    let mut comps: Vec<String> = vec![];
    for part in name.split('.') {
        match comps.last_mut() {
            Some(last) if !part.is_empty() && part.bytes().all(|b| b.is_ascii_digit()) => {
                last.push('.');
                last.push_str(part);
            }
            _ => comps.push(part.to_string()),
        }
    }
    if comps.len() < 2 {
        return vec![];
    }
    comps.pop();
    comps
}

/// The longest scope all of `paths` start with.
fn common_prefix(paths: &[&Vec<String>]) -> Vec<String> {
    let Some((first, rest)) = paths.split_first() else {
        return vec![];
    };
    let mut n = first.len();
    for p in rest {
        n = n.min(first.iter().zip(p.iter()).take_while(|(a, b)| a == b).count());
    }
    first[..n].to_vec()
}

impl ViewGraph {
    /// Describes `graph`; `devices[i]` is the backend index of node i (empty: all 0)
    /// and `device_names` names the backends.
    pub fn new(graph: &Graph, devices: &[usize], device_names: &[String]) -> ViewGraph {
        let n = graph.nodes().len();
        let mut nodes = Vec::with_capacity(n);
        let mut consumers: Vec<Vec<usize>> = vec![vec![]; n];
        let mut variables: Vec<VariableView> = graph
            .variables()
            .iter()
            .map(|v| VariableView {
                name: v.name.clone(),
                ty: v.ty().to_string(),
                reads: vec![],
                writes: vec![],
            })
            .collect();
        for (i, node) in graph.nodes().iter().enumerate() {
            let inputs: Vec<(usize, u32)> = node.inputs.iter().map(|v| (v.node.0 as usize, v.output)).collect();
            for &(p, _) in &inputs {
                if p < n && consumers[p].last() != Some(&i) {
                    consumers[p].push(i);
                }
            }
            let var = |v: &VarId| v.0 as usize;
            let variable = match &node.op {
                Op::ReadVariable(v) => {
                    if let Some(x) = variables.get_mut(var(v)) {
                        x.reads.push(i);
                    }
                    Some(var(v))
                }
                Op::Assign(v) | Op::SliceUpdate(v) => {
                    if let Some(x) = variables.get_mut(var(v)) {
                        x.writes.push(i);
                    }
                    Some(var(v))
                }
                _ => None,
            };
            let quant = match &node.op {
                Op::Dequantize { format } | Op::QuantMatMul { format } => Some(*format),
                _ => None,
            };
            let members = match &node.op {
                Op::Fused(r) => region_members(r),
                _ => vec![],
            };
            nodes.push(ViewNode {
                name: node.name.clone(),
                op: node.op.kind(),
                attrs: attrs_text(&node.op),
                inputs,
                outputs: node.outputs.iter().map(|t| t.to_string()).collect(),
                device: devices.get(i).copied().unwrap_or(0),
                members,
                variable,
                quant,
            });
        }
        let mut vg = ViewGraph {
            nodes,
            consumers,
            groups: vec![],
            group_of: vec![0; n],
            variables,
            devices: device_names.to_vec(),
            reachable_groups: 0,
        };
        vg.build_groups();
        vg
    }

    /// The scope path of each node: its own, or for an unscoped constant the
    /// longest scope its consumers share (so weights sit next to their users).
    ///
    /// Graphs whose op names carry no scopes (ONNX exported by the dynamo
    /// exporter: `node_MatMul_48`) get scopes inferred from their weights'
    /// dotted names (`encoder.layer.0.attention.self.query.weight` →
    /// `encoder/layer.0/attention/self/query`): an op takes the scope its
    /// weights share, else the scope its scoped producers share.
    fn node_scopes(&self) -> Vec<Vec<String>> {
        let mut out: Vec<Vec<String>> = self
            .nodes
            .iter()
            .map(|n| scopes(&n.name).into_iter().map(String::from).collect())
            .collect();
        let is_op = |n: &ViewNode| n.op != "constant" && n.op != "placeholder";
        let ops = self.nodes.iter().filter(|n| is_op(n)).count();
        let scoped_ops = self
            .nodes
            .iter()
            .zip(&out)
            .filter(|(n, s)| is_op(n) && !s.is_empty())
            .count();
        if scoped_ops * 2 < ops {
            for (i, n) in self.nodes.iter().enumerate() {
                if n.op == "constant" && out[i].is_empty() {
                    out[i] = dotted_scope(&n.name);
                }
            }
            // An op whose consumers all got a scope from their weights joins them
            // (a matmul whose bias add names the module).
            let by_weights = |i: usize, out: &[Vec<String>]| {
                self.nodes[i]
                    .inputs
                    .iter()
                    .filter(|(p, _)| self.nodes[*p].op == "constant" && !out[*p].is_empty())
                    .map(|(p, _)| out[*p].clone())
                    .collect::<Vec<_>>()
            };
            let first: Vec<Vec<String>> = (0..self.nodes.len())
                .map(|i| {
                    if is_op(&self.nodes[i]) && out[i].is_empty() {
                        common_prefix(&by_weights(i, &out).iter().collect::<Vec<_>>())
                    } else {
                        out[i].clone()
                    }
                })
                .collect();
            for i in 0..self.nodes.len() {
                let cs = &self.consumers[i];
                if is_op(&self.nodes[i])
                    && first[i].is_empty()
                    && !cs.is_empty()
                    && cs.iter().all(|&c| !by_weights(c, &out).is_empty())
                {
                    out[i] = common_prefix(&cs.iter().map(|&c| &first[c]).collect::<Vec<_>>());
                }
            }
            for i in 0..self.nodes.len() {
                if !is_op(&self.nodes[i]) || !out[i].is_empty() {
                    continue;
                }
                let weights: Vec<&Vec<String>> = self.nodes[i]
                    .inputs
                    .iter()
                    .filter(|(p, _)| self.nodes[*p].op == "constant" && !out[*p].is_empty())
                    .map(|(p, _)| &out[*p])
                    .collect();
                let from = if weights.is_empty() {
                    self.nodes[i]
                        .inputs
                        .iter()
                        .filter(|(p, _)| is_op(&self.nodes[*p]) && !out[*p].is_empty())
                        .map(|(p, _)| &out[*p])
                        .collect()
                } else {
                    weights
                };
                out[i] = common_prefix(&from);
            }
            // Ops still unscoped (dequantization arithmetic on unnamed weights)
            // join the scope their scoped consumers share.
            for i in (0..self.nodes.len()).rev() {
                if is_op(&self.nodes[i]) && out[i].is_empty() {
                    let from: Vec<&Vec<String>> = self.consumers[i]
                        .iter()
                        .map(|&c| &out[c])
                        .filter(|s| !s.is_empty())
                        .collect();
                    out[i] = common_prefix(&from);
                }
            }
        }
        for i in (0..self.nodes.len()).rev() {
            if self.nodes[i].op != "constant" || !out[i].is_empty() {
                continue;
            }
            if self.consumers[i].is_empty() {
                // Left behind by import-time folding (an initializer whose
                // dequantized copy replaced it): kept aside, not in the way.
                out[i] = vec!["unused constants".to_string()];
                continue;
            }
            let from: Vec<&Vec<String>> = self.consumers[i].iter().map(|&c| &out[c]).collect();
            out[i] = common_prefix(&from);
        }
        out
    }

    fn build_groups(&mut self) {
        let scopes = self.node_scopes();
        let mut groups = vec![Group {
            label: String::new(),
            path: String::new(),
            parent: None,
            items: vec![],
            node_count: 0,
        }];
        let mut child: HashMap<(usize, String), usize> = HashMap::new();
        // Items are added in order of each item's first node, so groups list
        // their items roughly in graph (topological) order.
        for (i, path) in scopes.iter().enumerate() {
            let mut g = 0;
            for comp in path {
                g = match child.get(&(g, comp.clone())) {
                    Some(&c) => c,
                    None => {
                        let c = groups.len();
                        let p = if groups[g].path.is_empty() {
                            comp.clone()
                        } else {
                            format!("{}/{comp}", groups[g].path)
                        };
                        groups.push(Group {
                            label: comp.clone(),
                            path: p,
                            parent: Some(g),
                            items: vec![],
                            node_count: 0,
                        });
                        groups[g].items.push(Item::Group(c));
                        child.insert((g, comp.clone()), c);
                        c
                    }
                };
            }
            groups[g].items.push(Item::Node(i));
            self.group_of[i] = g;
        }
        // A group holding nothing but one group is shown as one (`inner/encoder`).
        for g in 0..groups.len() {
            while let [Item::Group(c)] = groups[g].items[..] {
                let items = std::mem::take(&mut groups[c].items);
                for it in &items {
                    match *it {
                        Item::Node(i) => self.group_of[i] = g,
                        Item::Group(s) => groups[s].parent = Some(g),
                    }
                }
                groups[g].label = if groups[g].label.is_empty() {
                    groups[c].label.clone()
                } else {
                    format!("{}/{}", groups[g].label, groups[c].label)
                };
                groups[g].path = groups[c].path.clone();
                groups[g].items = items;
            }
        }
        // Split groups with too many items into parts (repeatedly, for huge flat graphs).
        let mut g = 0;
        while g < groups.len() {
            while groups[g].items.len() > MAX_ITEMS_PER_GROUP {
                let items = std::mem::take(&mut groups[g].items);
                let parts = items.len().div_ceil(MAX_ITEMS_PER_GROUP);
                let per = items.len().div_ceil(parts);
                for (k, chunk) in items.chunks(per).enumerate() {
                    let c = groups.len();
                    let path = groups[g].path.clone();
                    groups.push(Group {
                        label: format!("part {}", k + 1),
                        path: if path.is_empty() {
                            format!("part {}", k + 1)
                        } else {
                            format!("{path}/part {}", k + 1)
                        },
                        parent: Some(g),
                        items: chunk.to_vec(),
                        node_count: 0,
                    });
                    for it in chunk {
                        match *it {
                            Item::Node(i) => self.group_of[i] = c,
                            Item::Group(s) => groups[s].parent = Some(c),
                        }
                    }
                    groups[g].items.push(Item::Group(c));
                }
            }
            g += 1;
        }
        // Node counts, children before parents (post-order from the root; groups
        // emptied by the merge above are unreachable and keep 0).
        let mut order = vec![];
        let mut stack = vec![0usize];
        while let Some(g) = stack.pop() {
            order.push(g);
            stack.extend(groups[g].items.iter().filter_map(|it| match *it {
                Item::Group(c) => Some(c),
                Item::Node(_) => None,
            }));
        }
        for &g in order.iter().rev() {
            let count = groups[g]
                .items
                .iter()
                .map(|it| match *it {
                    Item::Node(_) => 1,
                    Item::Group(c) => groups[c].node_count,
                })
                .sum();
            groups[g].node_count = count;
        }
        self.reachable_groups = order.len() - 1;
        self.groups = groups;
    }

    /// The groups holding node `i`, from the root's child down to its own group.
    pub fn ancestors(&self, i: usize) -> Vec<usize> {
        let mut chain = vec![];
        let mut g = Some(self.group_of[i]);
        while let Some(x) = g {
            if x != 0 {
                chain.push(x);
            }
            g = self.groups[x].parent;
        }
        chain.reverse();
        chain
    }

    /// The item of group `g` that contains node `i`, if `i` is below `g`.
    pub fn item_in(&self, g: usize, i: usize) -> Option<Item> {
        let mut cur = self.group_of[i];
        if cur == g {
            return Some(Item::Node(i));
        }
        loop {
            let p = self.groups[cur].parent?;
            if p == g {
                return Some(Item::Group(cur));
            }
            cur = p;
        }
    }

    /// Nodes anywhere below group `g`.
    pub fn nodes_below(&self, g: usize) -> Vec<usize> {
        let mut out = vec![];
        let mut stack = vec![g];
        while let Some(x) = stack.pop() {
            for it in &self.groups[x].items {
                match *it {
                    Item::Node(i) => out.push(i),
                    Item::Group(s) => stack.push(s),
                }
            }
        }
        out.sort_unstable();
        out
    }

    /// Op kinds with their node counts, most frequent first.
    pub fn op_counts(&self) -> Vec<(String, usize)> {
        let mut m: HashMap<&str, usize> = HashMap::new();
        for n in &self.nodes {
            *m.entry(n.op.as_str()).or_default() += 1;
        }
        let mut v: Vec<(String, usize)> = m.into_iter().map(|(k, c)| (k.to_string(), c)).collect();
        v.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
        v
    }

    /// Number of (producer, consumer) pairs.
    pub fn edge_count(&self) -> usize {
        self.consumers.iter().map(Vec::len).sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use stitch_core::{DType, Tensor};

    fn weight(g: &mut Graph, name: &str, shape: &[usize], seed: u64) -> stitch_core::Value {
        let n: usize = shape.iter().product();
        let v: Vec<f32> = (0..n)
            .map(|i| ((i as u64 * 2654435761 + seed) % 1000) as f32 / 500.0 - 1.0)
            .collect();
        let c = g.constant(Tensor::from_vec(v, shape).unwrap());
        g.set_name(c.node, name);
        c
    }

    #[test]
    fn unscoped_ops_take_scopes_from_their_weights_names() {
        let mut g = Graph::new();
        let x = g.placeholder("x", DType::F32, [2, 4]);
        let wq = weight(&mut g, "weird_q", &[4, 4], 1);
        let bq = weight(&mut g, "enc.layer.0.attn.q.bias", &[4], 2);
        let wk = weight(&mut g, "weird_k", &[4, 4], 3);
        let bk = weight(&mut g, "enc.layer.0.attn.k.bias", &[4], 4);
        let _dead = weight(&mut g, "left_behind", &[4], 5);
        let q = g.matmul(x, wq).unwrap();
        let q = g.add(q, bq).unwrap();
        let k = g.matmul(x, wk).unwrap();
        let k = g.add(k, bk).unwrap();
        let s = g.mul(q, k).unwrap();
        let p = g.softmax(s, -1).unwrap();
        let v = ViewGraph::new(&g, &[], &[]);
        let path = |i: usize| {
            v.ancestors(i)
                .iter()
                .map(|&a| v.groups[a].label.clone())
                .collect::<Vec<_>>()
                .join("/")
        };
        // The matmul joins its bias add's module; the product of q and k sits
        // where both come from; an unused constant is set aside.
        assert_eq!(path(q.node.0 as usize), "enc/layer.0/attn/q");
        assert_eq!(path(k.node.0 as usize - 1), "enc/layer.0/attn/k");
        assert_eq!(path(wq.node.0 as usize), "enc/layer.0/attn/q");
        assert_eq!(path(s.node.0 as usize), "enc/layer.0/attn");
        assert_eq!(path(p.node.0 as usize), "enc/layer.0/attn");
        assert_eq!(path(_dead.node.0 as usize), "unused constants");
        assert_eq!(path(x.node.0 as usize), "");
        // `enc/layer.0/attn` is one box: the chain of single groups is merged.
        let top: Vec<&str> = v.groups[0]
            .items
            .iter()
            .filter_map(|it| match it {
                Item::Group(c) => Some(v.groups[*c].label.as_str()),
                Item::Node(_) => None,
            })
            .collect();
        assert_eq!(top, ["enc/layer.0/attn", "unused constants"]);
    }

    #[test]
    fn dotted_names_become_scopes() {
        assert_eq!(
            dotted_scope("encoder.layer.10.output.dense.weight"),
            ["encoder", "layer.10", "output", "dense"]
        );
        assert!(dotted_scope("weight").is_empty());
        assert!(dotted_scope("onnx::MatMul_12").is_empty());
        assert!(dotted_scope("blk.0/attn_q.weight").is_empty());
    }
}
