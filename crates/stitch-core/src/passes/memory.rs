//! Memory planning: assigns every intermediate buffer of a plan an offset in one
//! arena, reusing memory between values whose lifetimes do not overlap.
//!
//! Lifetimes come from the plan's step order: a buffer is live from the step
//! that defines it to the last step that reads it or any view of it (reshape,
//! transpose, slice, expand, squeeze and unsqueeze alias their input). Graph
//! outputs live to the end. Sources (placeholders, constants, variables) are not
//! in the arena. Placement is greedy by size: the largest buffers are placed
//! first, each at the lowest 64-byte aligned offset that does not overlap a
//! placed buffer with an overlapping lifetime. [`check_no_alias`] verifies the
//! result; the executor runs it in debug builds.

use std::collections::HashMap;

use crate::error::{Error, Result};
use crate::graph::{Graph, Value};
use crate::ops::Op;

/// Alignment of every buffer in the arena.
pub const ALIGN: usize = 64;

/// One buffer of the arena.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Slot {
    /// Byte offset in the arena.
    pub offset: usize,
    /// Size in bytes.
    pub size: usize,
    /// First step (index into the plan's steps) at which it is live.
    pub first: usize,
    /// Last step at which it is live.
    pub last: usize,
}

/// The arena layout of a plan.
#[derive(Debug, Clone, Default)]
pub struct MemoryPlan {
    /// The buffer of each value that owns one (views map to their source's slot).
    pub slots: HashMap<Value, Slot>,
    /// Values that are views of another value's buffer.
    pub aliases: HashMap<Value, Value>,
    /// Arena size: the peak of planned memory.
    pub peak: usize,
    /// What the intermediates would take without reuse.
    pub total: usize,
}

/// True for ops whose output is a view of their first input on the CPU.
pub fn is_view(op: &Op) -> bool {
    matches!(
        op,
        Op::Reshape { .. }
            | Op::Squeeze { .. }
            | Op::Unsqueeze { .. }
            | Op::Transpose { .. }
            | Op::Expand { .. }
            | Op::Slice { .. }
    )
}

fn is_external(op: &Op) -> bool {
    matches!(op, Op::Placeholder { .. } | Op::Constant(_) | Op::ReadVariable(_))
}

/// Plans the arena for `steps` (node indices in execution order) of a concrete graph.
pub fn plan_memory(graph: &Graph, steps: &[usize], outputs: &[Value]) -> Result<MemoryPlan> {
    let mut plan = MemoryPlan::default();
    let position: HashMap<usize, usize> = steps.iter().enumerate().map(|(s, &n)| (n, s)).collect();
    // Owner buffer of each value: itself, or (through views) the value it aliases.
    let mut owner: HashMap<Value, Value> = HashMap::new();
    let mut order: Vec<Value> = Vec::new();
    for &n in steps {
        let node = &graph.nodes()[n];
        for (o, ty) in node.outputs.iter().enumerate() {
            let v = Value {
                node: crate::NodeId(n as u32),
                output: o as u32,
            };
            if is_external(&node.op) {
                continue;
            }
            if is_view(&node.op) {
                if let Some(&src) = owner.get(&node.inputs[0]) {
                    owner.insert(v, src);
                    plan.aliases.insert(v, src);
                }
                continue;
            }
            let size = ty.shape.numel().ok_or_else(|| {
                Error::invalid(format!(
                    "memory planning needs concrete shapes; `{}` is {ty}",
                    node.name
                ))
            })? * ty.dtype.size_in_bytes();
            let step = position[&n];
            owner.insert(v, v);
            order.push(v);
            plan.slots.insert(
                v,
                Slot {
                    offset: 0,
                    size,
                    first: step,
                    last: step,
                },
            );
        }
    }
    // Extend lifetimes to the last read of the buffer or any of its views.
    for (s, &n) in steps.iter().enumerate() {
        for v in &graph.nodes()[n].inputs {
            if let Some(src) = owner.get(v) {
                if let Some(slot) = plan.slots.get_mut(src) {
                    slot.last = slot.last.max(s);
                }
            }
        }
    }
    for v in outputs {
        if let Some(src) = owner.get(v) {
            if let Some(slot) = plan.slots.get_mut(src) {
                slot.last = steps.len();
            }
        }
    }
    // Greedy by size (ties by definition order, for determinism).
    order.sort_by_key(|v| (std::cmp::Reverse(plan.slots[v].size), plan.slots[v].first));
    let mut placed: Vec<Slot> = Vec::with_capacity(order.len());
    for v in &order {
        let mut slot = plan.slots[v];
        let mut conflicts: Vec<(usize, usize)> = placed
            .iter()
            .filter(|p| p.first <= slot.last && slot.first <= p.last)
            .map(|p| (p.offset, p.offset + p.size))
            .collect();
        conflicts.sort_unstable();
        let mut offset = 0;
        for (start, end) in conflicts {
            if offset + slot.size <= start {
                break;
            }
            offset = offset.max(end.next_multiple_of(ALIGN));
        }
        slot.offset = offset;
        plan.peak = plan.peak.max(offset + slot.size);
        plan.total += slot.size.next_multiple_of(ALIGN);
        plan.slots.insert(*v, slot);
        placed.push(slot);
    }
    Ok(plan)
}

/// Checks that no two buffers with overlapping lifetimes overlap in memory.
pub fn check_no_alias(plan: &MemoryPlan) -> Result<()> {
    let slots: Vec<(&Value, &Slot)> = plan.slots.iter().collect();
    for (i, (va, a)) in slots.iter().enumerate() {
        if a.offset % ALIGN != 0 || a.offset + a.size > plan.peak {
            return Err(Error::invalid(format!(
                "buffer of {va:?} at {} (+{}) is misplaced",
                a.offset, a.size
            )));
        }
        for (vb, b) in &slots[i + 1..] {
            let live_together = a.first <= b.last && b.first <= a.last;
            let overlap = a.size > 0 && b.size > 0 && a.offset < b.offset + b.size && b.offset < a.offset + a.size;
            if live_together && overlap {
                return Err(Error::invalid(format!(
                    "memory plan aliases {va:?} ({}..{}, steps {}..={}) and {vb:?} ({}..{}, steps {}..={})",
                    a.offset,
                    a.offset + a.size,
                    a.first,
                    a.last,
                    b.offset,
                    b.offset + b.size,
                    b.first,
                    b.last
                )));
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{DType, Graph};

    fn chain(n: usize) -> (Graph, Vec<usize>, Value) {
        let mut g = Graph::new();
        let mut v = g.placeholder("x", DType::F32, [1024]);
        for _ in 0..n {
            v = g.exp(v).unwrap();
        }
        let steps = (0..g.nodes().len()).collect();
        (g, steps, v)
    }

    #[test]
    fn a_chain_reuses_two_buffers() {
        let (g, steps, out) = chain(6);
        let plan = plan_memory(&g, &steps, &[out]).unwrap();
        check_no_alias(&plan).unwrap();
        assert_eq!(plan.slots.len(), 6);
        assert_eq!(plan.total, 6 * 4096);
        assert_eq!(plan.peak, 2 * 4096, "a chain needs only the current input and output");
    }

    #[test]
    fn views_extend_the_lifetime_of_their_source() {
        let mut g = Graph::new();
        let x = g.placeholder("x", DType::F32, [4, 8]);
        let a = g.exp(x).unwrap(); // buffer A
        let t = g.transpose(a, &[1, 0]).unwrap(); // view of A
        let b = g.exp(x).unwrap(); // must not reuse A: t is read below
        let c = g.add(b, b).unwrap();
        let t2 = g.transpose(t, &[1, 0]).unwrap();
        let d = g.add(c, t2).unwrap();
        let steps: Vec<usize> = (0..g.nodes().len()).collect();
        let plan = plan_memory(&g, &steps, &[d]).unwrap();
        check_no_alias(&plan).unwrap();
        assert_eq!(plan.aliases[&t], a);
        assert_eq!(plan.aliases[&t2], a);
        let (sa, sb) = (plan.slots[&a], plan.slots[&b]);
        assert!(sa.last >= d.node.0 as usize && sa.offset != sb.offset);
    }

    #[test]
    fn the_checker_catches_aliasing() {
        let (g, steps, out) = chain(3);
        let mut plan = plan_memory(&g, &steps, &[out]).unwrap();
        for s in plan.slots.values_mut() {
            s.offset = 0;
        }
        assert!(check_no_alias(&plan).is_err());
    }
}
