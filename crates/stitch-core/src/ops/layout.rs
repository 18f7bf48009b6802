//! Layout ops: reshape, transpose, expand, squeeze, unsqueeze, slice (views on
//! the CPU), and concat, split, tile, pad (copies).
//!
//! Slice follows ONNX: negative starts/ends count from the end, bounds clamp,
//! negative steps walk backwards. Reshape: `0` copies the input dim, `-1` is
//! inferred. Pad: `pads = [begins.., ends..]`; negative pads crop; `reflect`
//! mirrors without repeating the edge (numpy "reflect"), `edge` repeats it.

use crate::graph::{Graph, TensorType, Value};
use crate::ops::util::{arity, axis, same_dtype};
use crate::ops::Op;
use crate::shape::{broadcast_shapes, normalize_axis, Dim, Shape};
use crate::Result;

/// Padding modes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum PadMode {
    /// Fill with a constant value.
    Constant,
    /// Mirror at the edge, not repeating it: `[1,2,3] → 3,2,[1,2,3],2,1`.
    Reflect,
    /// Repeat the edge value.
    Edge,
}

/// Resolved ONNX slice along one axis of size `dim`: `(first index, count)`.
/// Indices visited are `first + i * step` for `i < count`.
pub fn slice_range(dim: usize, start: i64, end: i64, step: i64) -> (i64, usize) {
    let d = dim as i64;
    let fix = |v: i64| if v < 0 { v.saturating_add(d) } else { v };
    let (s, e) = (fix(start), fix(end));
    // Counts are written as (span - 1) / step + 1 so that extreme steps cannot overflow.
    if step > 0 {
        let s = s.clamp(0, d);
        let e = e.clamp(0, d);
        (s, if e > s { ((e - s - 1) / step + 1) as usize } else { 0 })
    } else {
        let s = s.clamp(-1, d - 1);
        let e = e.clamp(-1, d - 1);
        let st = step.checked_neg().unwrap_or(i64::MAX);
        (s, if s > e { ((s - e - 1) / st + 1) as usize } else { 0 })
    }
}

/// Normalised slice parameters, one entry per input axis: `(start, end, step)`.
pub fn slice_params(
    rank: usize,
    starts: &[i64],
    ends: &[i64],
    axes: &[i64],
    steps: &[i64],
) -> Result<Vec<(i64, i64, i64)>, String> {
    if starts.len() != ends.len() {
        return Err(format!("slice starts {starts:?} and ends {ends:?} differ in length"));
    }
    let n = starts.len();
    let axes: Vec<i64> = if axes.is_empty() {
        (0..n as i64).collect()
    } else {
        axes.to_vec()
    };
    let steps: Vec<i64> = if steps.is_empty() { vec![1; n] } else { steps.to_vec() };
    if axes.len() != n || steps.len() != n {
        return Err(format!(
            "slice axes {axes:?} / steps {steps:?} must have {n} entries like starts"
        ));
    }
    let mut out = vec![(0i64, i64::MAX, 1i64); rank];
    let mut seen = vec![false; rank];
    for i in 0..n {
        let a = normalize_axis(axes[i], rank)
            .ok_or_else(|| format!("slice axis {} out of range for rank {rank}", axes[i]))?;
        if std::mem::replace(&mut seen[a], true) {
            return Err(format!("slice axis {} repeated in {axes:?}", axes[i]));
        }
        if steps[i] == 0 {
            return Err("slice step must not be 0".into());
        }
        out[a] = (starts[i], ends[i], steps[i]);
    }
    Ok(out)
}

/// Output shape of a reshape of `input` to `target` (with 0 and -1 rules).
pub fn reshape_shape(input: &Shape, target: &[i64]) -> Result<Shape, String> {
    let mut out = Vec::with_capacity(target.len());
    let mut infer_at = None;
    for (i, &t) in target.iter().enumerate() {
        match t {
            0 => {
                out.push(
                    input.0.get(i).cloned().ok_or_else(|| {
                        format!("reshape target {target:?} copies axis {i} (0) that input {input} lacks")
                    })?,
                )
            }
            -1 => {
                if infer_at.replace(i).is_some() {
                    return Err(format!("reshape target {target:?} has more than one -1"));
                }
                out.push(Dim::Known(1));
            }
            t if t > 0 => out.push(Dim::Known(t as usize)),
            t => return Err(format!("reshape target {target:?} has invalid size {t}")),
        }
    }
    // Known product of each side and the leftover symbols.
    let split = |dims: &[Dim]| {
        let mut k = 1usize;
        let mut syms: Vec<String> = Vec::new();
        for d in dims {
            match d {
                Dim::Known(n) => k *= n,
                Dim::Sym(s) => syms.push(s.to_string()),
            }
        }
        (k, syms)
    };
    let (kin, mut sin) = split(&input.0);
    let (kout, mut sout) = split(&out);
    // Cancel symbols that appear on both sides.
    sin.retain(|s| match sout.iter().position(|o| o == s) {
        Some(p) => {
            sout.remove(p);
            false
        }
        None => true,
    });
    match infer_at {
        Some(i) => {
            if !sout.is_empty() || !sin.is_empty() {
                let num = if sin.is_empty() {
                    kin.to_string()
                } else {
                    format!("{}*{kin}", sin.join("*"))
                };
                let den = if sout.is_empty() {
                    kout.to_string()
                } else {
                    format!("{}*{kout}", sout.join("*"))
                };
                out[i] = if sin.len() == 1 && sout.is_empty() && kin == kout {
                    Dim::sym(&sin[0])
                } else {
                    Dim::sym(&format!("({num}/{den})"))
                };
            } else {
                if kout == 0 || kin % kout != 0 {
                    return Err(format!(
                        "cannot reshape {input} to {target:?}: {kin} elements do not divide into {kout}"
                    ));
                }
                out[i] = Dim::Known(kin / kout);
            }
        }
        None => {
            if sin.is_empty() && sout.is_empty() && kin != kout {
                return Err(format!(
                    "cannot reshape {input} ({kin} elements) to {target:?} ({kout} elements)"
                ));
            }
        }
    }
    Ok(Shape(out))
}

pub(crate) fn infer(op: &Op, inputs: &[TensorType]) -> Result<Vec<TensorType>, String> {
    if !matches!(op, Op::Concat { .. }) {
        arity(inputs, 1, 1)?;
    }
    let x = inputs.first().ok_or("concat needs at least one input")?;
    let rank = x.shape.rank();
    let same = |s: Shape| Ok(vec![TensorType::new(x.dtype, s)]);
    match op {
        Op::Reshape { shape } => same(reshape_shape(&x.shape, shape)?),
        Op::Transpose { perm } => {
            let perm: Vec<usize> = if perm.is_empty() {
                (0..rank).rev().collect()
            } else {
                perm.clone()
            };
            let mut seen = vec![false; rank];
            if perm.len() != rank || perm.iter().any(|&p| p >= rank || std::mem::replace(&mut seen[p], true)) {
                return Err(format!("perm {perm:?} is not a permutation of the axes of {x}"));
            }
            same(Shape(perm.iter().map(|&p| x.shape.0[p].clone()).collect()))
        }
        Op::Expand { shape } => {
            let s = broadcast_shapes(&x.shape, &Shape::known(shape))
                .ok_or_else(|| format!("cannot expand {x} to {shape:?}"))?;
            same(s)
        }
        Op::Squeeze { axes } => {
            let axes: Vec<usize> = if axes.is_empty() {
                (0..rank).filter(|&i| x.shape.0[i].is(1)).collect()
            } else {
                axes.iter().map(|&a| axis(a, x)).collect::<Result<_, _>>()?
            };
            for &a in &axes {
                if let Some(d) = x.shape.0[a].known() {
                    if d != 1 {
                        return Err(format!("cannot squeeze axis {a} of size {d} in {x}"));
                    }
                }
            }
            same(Shape(
                x.shape
                    .0
                    .iter()
                    .enumerate()
                    .filter(|(i, _)| !axes.contains(i))
                    .map(|(_, d)| d.clone())
                    .collect(),
            ))
        }
        Op::Unsqueeze { axes } => {
            let out_rank = rank + axes.len();
            let mut pos = Vec::with_capacity(axes.len());
            for &a in axes {
                let p = normalize_axis(a, out_rank)
                    .ok_or_else(|| format!("unsqueeze axis {a} out of range for output rank {out_rank}"))?;
                if pos.contains(&p) {
                    return Err(format!("unsqueeze axis {a} repeated in {axes:?}"));
                }
                pos.push(p);
            }
            let mut it = x.shape.0.iter();
            same(Shape(
                (0..out_rank)
                    .map(|i| {
                        if pos.contains(&i) {
                            Dim::Known(1)
                        } else {
                            it.next().cloned().unwrap_or(Dim::Known(1))
                        }
                    })
                    .collect(),
            ))
        }
        Op::Slice {
            starts,
            ends,
            axes,
            steps,
        } => {
            let params = slice_params(rank, starts, ends, axes, steps)?;
            let dims = x
                .shape
                .0
                .iter()
                .zip(&params)
                .map(|(d, &(s, e, st))| match d {
                    Dim::Known(n) => Dim::Known(slice_range(*n, s, e, st).1),
                    Dim::Sym(_) if s == 0 && e >= i32::MAX as i64 && st == 1 => d.clone(),
                    Dim::Sym(name) => Dim::sym(&format!("{name}[{s}:{e}:{st}]")),
                })
                .collect();
            same(Shape(dims))
        }
        Op::Concat { axis: a } => {
            same_dtype(inputs)?;
            let ax = axis(*a, x)?;
            let mut total = x.shape.0[ax].clone();
            for t in &inputs[1..] {
                let compatible = t.shape.rank() == rank
                    && (0..rank).all(|i| match (&t.shape.0[i], &x.shape.0[i]) {
                        _ if i == ax => true,
                        (Dim::Known(p), Dim::Known(q)) => p == q,
                        (p, q) => p == q || p.known().is_none() || q.known().is_none(),
                    });
                if !compatible {
                    return Err(format!(
                        "cannot concat {} with {} along axis {ax}: other axes differ",
                        x, t
                    ));
                }
                total = match (&total, &t.shape.0[ax]) {
                    (Dim::Known(p), Dim::Known(q)) => Dim::Known(p + q),
                    (p, q) => Dim::sym(&format!("({p}+{q})")),
                };
            }
            let mut s = x.shape.clone();
            s.0[ax] = total;
            same(s)
        }
        Op::Split { axis: a, sizes } => {
            let ax = axis(*a, x)?;
            if let Some(d) = x.shape.0[ax].known() {
                let sum: usize = sizes.iter().sum();
                if sum != d {
                    return Err(format!(
                        "split sizes {sizes:?} sum to {sum}, but axis {ax} of {x} has size {d}"
                    ));
                }
            }
            Ok(sizes
                .iter()
                .map(|&n| {
                    let mut s = x.shape.clone();
                    s.0[ax] = Dim::Known(n);
                    TensorType::new(x.dtype, s)
                })
                .collect())
        }
        Op::Tile { repeats } => {
            if repeats.len() != rank {
                return Err(format!("tile repeats {repeats:?} must have one entry per axis of {x}"));
            }
            same(Shape(
                x.shape
                    .0
                    .iter()
                    .zip(repeats)
                    .map(|(d, &r)| match d {
                        Dim::Known(n) => Dim::Known(n * r),
                        Dim::Sym(_) if r == 1 => d.clone(),
                        Dim::Sym(s) => Dim::sym(&format!("({s}*{r})")),
                    })
                    .collect(),
            ))
        }
        Op::Pad { pads, mode, .. } => {
            if pads.len() != 2 * rank {
                return Err(format!(
                    "pads {pads:?} must have 2 × rank = {} entries for {x}",
                    2 * rank
                ));
            }
            let mut dims = Vec::with_capacity(rank);
            for (i, d) in x.shape.0.iter().enumerate() {
                let (b, e) = (pads[i], pads[rank + i]);
                dims.push(match d {
                    Dim::Known(n) => {
                        let out = *n as i64 + b + e;
                        if out < 0 {
                            return Err(format!("pads {pads:?} crop axis {i} of {x} below zero"));
                        }
                        if *mode == PadMode::Reflect && (b.max(e) >= *n as i64) && (b > 0 || e > 0) {
                            return Err(format!("reflect pad {b},{e} must be smaller than axis {i} of {x}"));
                        }
                        if *mode == PadMode::Edge && *n == 0 && (b > 0 || e > 0) {
                            return Err(format!("edge pad of empty axis {i} of {x}"));
                        }
                        Dim::Known(out as usize)
                    }
                    Dim::Sym(_) if b + e == 0 => d.clone(),
                    Dim::Sym(s) => Dim::sym(&format!("({s}+{})", b + e)),
                });
            }
            same(Shape(dims))
        }
        _ => unreachable!("layout::infer called for {}", op.kind()),
    }
}

impl Graph {
    /// Reshape (`0` copies an input dim, `-1` is inferred).
    pub fn reshape(&mut self, x: Value, shape: &[i64]) -> Result<Value> {
        self.add_op(Op::Reshape { shape: shape.to_vec() }, &[x])
    }
    /// Permute axes (output axis i = input axis `perm[i]`).
    pub fn transpose(&mut self, x: Value, perm: &[usize]) -> Result<Value> {
        self.add_op(Op::Transpose { perm: perm.to_vec() }, &[x])
    }
    /// Broadcast to `shape`.
    pub fn expand(&mut self, x: Value, shape: &[usize]) -> Result<Value> {
        self.add_op(Op::Expand { shape: shape.to_vec() }, &[x])
    }
    /// Remove size-1 axes (`[]` = all).
    pub fn squeeze(&mut self, x: Value, axes: &[i64]) -> Result<Value> {
        self.add_op(Op::Squeeze { axes: axes.to_vec() }, &[x])
    }
    /// Insert size-1 axes at output positions `axes`.
    pub fn unsqueeze(&mut self, x: Value, axes: &[i64]) -> Result<Value> {
        self.add_op(Op::Unsqueeze { axes: axes.to_vec() }, &[x])
    }
    /// ONNX slice (`axes`/`steps` may be empty: all axes in order / steps of 1).
    pub fn slice(&mut self, x: Value, starts: &[i64], ends: &[i64], axes: &[i64], steps: &[i64]) -> Result<Value> {
        self.add_op(
            Op::Slice {
                starts: starts.to_vec(),
                ends: ends.to_vec(),
                axes: axes.to_vec(),
                steps: steps.to_vec(),
            },
            &[x],
        )
    }
    /// Concatenate along `axis`.
    pub fn concat(&mut self, xs: &[Value], axis: i64) -> Result<Value> {
        self.add_op(Op::Concat { axis }, xs)
    }
    /// Split along `axis` into pieces of `sizes`.
    pub fn split(&mut self, x: Value, axis: i64, sizes: &[usize]) -> Result<Vec<Value>> {
        self.add_node(
            Op::Split {
                axis,
                sizes: sizes.to_vec(),
            },
            &[x],
        )
    }
    /// Repeat along each axis.
    pub fn tile(&mut self, x: Value, repeats: &[usize]) -> Result<Value> {
        self.add_op(
            Op::Tile {
                repeats: repeats.to_vec(),
            },
            &[x],
        )
    }
    /// Pad (`pads = [begins.., ends..]`).
    pub fn pad(&mut self, x: Value, pads: &[i64], mode: PadMode, value: f64) -> Result<Value> {
        self.add_op(
            Op::Pad {
                pads: pads.to_vec(),
                mode,
                value,
            },
            &[x],
        )
    }
}
