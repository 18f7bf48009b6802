//! Placement: which backend runs each node, with explicit copies between them.
//!
//! An executable has an ordered list of backends: the primary first, then
//! fallbacks (the CPU). Each node runs on the first backend that supports it;
//! a node that the primary declines *falls back* to a later one. Sources are
//! placed where they are needed: constants and inputs on the backend of their
//! first consumer (so an input only the CPU reads never visits the device),
//! variables on the primary. Wherever a value is
//! consumed on a backend other than the one that produced it, an
//! [`Op::Copy`] node moves it there — once per (value, backend), shared by all
//! consumers — so every transfer is a visible, counted step of the plan.
//!
//! One exception: the write position of `slice_update` is read by the
//! executor on the host. A constant or input feeding it is placed on the host
//! backend, and no copy to the device is made for it, so an in-place cache
//! update costs no device-to-host round trip (which would also stall the
//! device's queue once per update).

use std::collections::HashMap;

use crate::error::{Error, Result};
use crate::graph::{Graph, Node, Value};
use crate::ops::Op;

/// What placement decided.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct PlaceStats {
    /// Nodes (kernels) placed on a backend other than the primary.
    pub fallback_nodes: usize,
    /// Copy steps inserted.
    pub copies: usize,
    /// Bytes those copies move per run.
    pub copy_bytes: usize,
}

/// The placed graph: `devices[i]` is the backend index of node `i`.
#[derive(Debug, Clone)]
pub struct Placement {
    /// Backend index per node of the placed graph.
    pub devices: Vec<usize>,
    /// Counts for the compile report.
    pub stats: PlaceStats,
}

/// Places every node of `graph` (concrete shapes) on one of `n_backends`
/// backends; `supports(b, node)` says whether backend `b` runs `node`. Returns
/// the graph with copy nodes inserted, `outputs` mapped into it, and the
/// placement. Errors name the first node no backend supports.
pub fn place(
    graph: &Graph,
    outputs: &[Value],
    n_backends: usize,
    supports: &dyn Fn(usize, &Node) -> bool,
    backend_names: &[&str],
    host: Option<usize>,
) -> Result<(Graph, Vec<Value>, Placement)> {
    let nodes = graph.nodes();
    // Pass 1: a backend for every kernel node.
    let mut device: Vec<Option<usize>> = vec![None; nodes.len()];
    for (i, node) in nodes.iter().enumerate() {
        if node.op.is_executor_op() {
            continue;
        }
        let d = (0..n_backends)
            .find(|&b| supports(b, node))
            .ok_or_else(|| Error::Unsupported {
                backend: backend_names.join(", "),
                node: node.name.clone(),
                op: node.op.kind(),
                message: "no backend has a kernel for this op".into(),
            })?;
        device[i] = Some(d);
    }
    // Constants and inputs go where they are first consumed (slice_update's
    // position: on the host); variables and state on the primary.
    for (i, node) in nodes.iter().enumerate() {
        for (k, v) in node.inputs.iter().enumerate() {
            let src = v.node.0 as usize;
            if device[src].is_none() && matches!(nodes[src].op, Op::Constant(_) | Op::Placeholder { .. }) {
                let on_host = k == 1 && matches!(node.op, Op::SliceUpdate(_));
                device[src] = Some(match host {
                    Some(h) if on_host => h,
                    _ => device[i].unwrap_or(0),
                });
            }
        }
    }
    let device: Vec<usize> = device.into_iter().map(|d| d.unwrap_or(0)).collect();

    // Pass 2: rebuild with copies where a value crosses backends.
    let mut stats = PlaceStats::default();
    let mut out_devices: Vec<usize> = Vec::with_capacity(nodes.len());
    let mut copies: HashMap<(Value, usize), Value> = HashMap::new();
    let mut value_device: HashMap<Value, usize> = HashMap::new();
    let mut index = 0;
    let (placed, outputs) = super::rebuild(graph, outputs, |g, node, inputs| {
        let d = device[index];
        index += 1;
        let mut mapped = Vec::with_capacity(inputs.len());
        let position_of_update = |k: usize| k == 1 && matches!(node.op, Op::SliceUpdate(_));
        for (k, &v) in inputs.iter().enumerate() {
            let from = value_device.get(&v).copied().unwrap_or(0);
            if from == d || position_of_update(k) {
                mapped.push(v);
                continue;
            }
            if let Some(&c) = copies.get(&(v, d)) {
                mapped.push(c);
                continue;
            }
            let c = g.add_op(Op::Copy { to: d }, &[v])?;
            let name = format!("copy:{}→{}", g.node(v.node).name, backend_names.get(d).unwrap_or(&"?"));
            g.set_name(c.node, &name);
            stats.copies += 1;
            let ty = g.ty(c);
            stats.copy_bytes += ty.concrete().map_or(0, |s| s.iter().product::<usize>()) * ty.dtype.size_in_bytes();
            out_devices.resize(c.node.0 as usize, 0);
            out_devices.push(d);
            value_device.insert(c, d);
            copies.insert((v, d), c);
            mapped.push(c);
        }
        let values = g.copy_node(node, &mapped)?;
        out_devices.resize(g.nodes().len(), d);
        if d != 0 && !node.op.is_executor_op() {
            stats.fallback_nodes += 1;
        }
        for &v in &values {
            value_device.insert(v, d);
        }
        Ok(values)
    })?;
    out_devices.resize(placed.nodes().len(), 0);
    Ok((
        placed,
        outputs,
        Placement {
            devices: out_devices,
            stats,
        },
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dtype::DType;

    #[test]
    fn declined_nodes_fall_back_and_copies_are_shared_by_consumers() {
        let mut g = Graph::new();
        let x = g.placeholder("x", DType::F32, [2, 3]);
        let a = g.neg(x).unwrap();
        let b = g.exp(a).unwrap(); // declined by backend 0
        let c = g.add(b, a).unwrap();
        let d = g.mul(b, c).unwrap();
        let supports = |dev: usize, n: &Node| dev == 1 || n.op.kind() != "exp";
        let (p, outs, placement) = place(&g, &[d], 2, &supports, &["dev", "cpu"], Some(1)).unwrap();
        assert_eq!(placement.devices.len(), p.nodes().len());
        let kinds: Vec<(String, usize)> = p
            .nodes()
            .iter()
            .zip(&placement.devices)
            .map(|(n, &d)| (n.op.kind(), d))
            .collect();
        let expect: Vec<(String, usize)> = [
            ("placeholder", 0),
            ("neg", 0),
            ("copy", 1),
            ("exp", 1),
            ("copy", 0), // one copy back, used by both add and mul
            ("add", 0),
            ("mul", 0),
        ]
        .iter()
        .map(|(k, d)| (k.to_string(), *d))
        .collect();
        assert_eq!(kinds, expect);
        assert_eq!(placement.stats.fallback_nodes, 1);
        assert_eq!(placement.stats.copies, 2);
        assert_eq!(placement.stats.copy_bytes, 2 * 6 * 4);
        assert_eq!(p.node(outs[0].node).op.kind(), "mul");
        assert!(p.nodes()[2].name.contains("copy:"), "{}", p.nodes()[2].name);
    }

    #[test]
    fn sources_are_placed_with_their_consumer() {
        let mut g = Graph::new();
        let x = g.placeholder("x", DType::F32, [4]);
        let one = g.scalar(DType::F32, 1.0);
        let y = g.add(x, one).unwrap();
        let supports = |dev: usize, n: &Node| dev == 1 || n.op.kind() != "add";
        let (p, _, placement) = place(&g, &[y], 2, &supports, &["dev", "cpu"], Some(1)).unwrap();
        // x and the constant are placed on the CPU, where add reads them: no copies.
        assert_eq!(placement.stats.copies, 0);
        let c = p.nodes().iter().position(|n| matches!(n.op, Op::Constant(_))).unwrap();
        assert_eq!(placement.devices[c], 1);
        let x = p
            .nodes()
            .iter()
            .position(|n| matches!(n.op, Op::Placeholder { .. }))
            .unwrap();
        assert_eq!(placement.devices[x], 1);
    }

    #[test]
    fn a_slice_update_position_stays_on_the_host_without_copies() {
        use crate::tensor::Tensor;
        let mut g = Graph::new();
        let cache = g.variable("cache", Tensor::from_vec(vec![0.5f32; 8], &[8]).unwrap());
        let u = g.placeholder("u", DType::F32, [2]);
        let pos = g.placeholder("pos", DType::I64, [1]);
        let y = g.exp(u).unwrap();
        g.slice_update(cache, y, pos).unwrap();
        let supports = |_: usize, _: &Node| true;
        let (p, _, placement) = place(&g, &[y], 2, &supports, &["dev", "cpu"], Some(1)).unwrap();
        assert_eq!(placement.stats.copies, 0);
        let at = |name: &str| {
            let i = p.nodes().iter().position(|n| n.name == name).unwrap();
            placement.devices[i]
        };
        assert_eq!(at("pos"), 1, "the position is read on the host");
        assert_eq!(at("u"), 0, "the update's input stays on the device");
        // Without a host backend it stays with its consumer, as before.
        let (_, _, placement) = place(&g, &[y], 2, &supports, &["dev", "cpu"], None).unwrap();
        assert_eq!(placement.stats.copies, 0);
    }
}
