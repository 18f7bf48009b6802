//! Scaled dot-product attention (`sdpa`): a composite op.
//!
//! Inputs: `q [B, Hq, Lq, D]`, `k [B, Hkv, Lk, D]`, `v [B, Hkv, Lk, Dv]` and an
//! optional mask broadcastable to `[B, Hq, Lq, Lk]`: bool (true = may attend) or
//! additive (same float dtype as q). Grouped-query attention: `Hq` must be a
//! multiple of `Hkv`; query head `h` uses kv head `h / (Hq / Hkv)`.
//!
//! `causal` aligns the mask bottom-right: query `i` attends to keys
//! `j <= i + (Lk - Lq)`, so a decode step (Lq = 1) sees the whole cache. (PyTorch's
//! `is_causal` aligns top-left; the two agree when Lq = Lk.) A fully masked row
//! gives NaN, as softmax does. `scale` defaults to `1 / sqrt(D)`.

use crate::dtype::DType;
use crate::graph::{Graph, TensorType, Value};
use crate::ops::util::{arity, float};
use crate::ops::Op;
use crate::shape::{broadcast_shapes, Dim, Shape};
use crate::{Error, Result};

/// Attributes of [`Op::Sdpa`].
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct SdpaAttrs {
    /// Multiplier of `q·k`; `None` = `1/sqrt(D)`.
    pub scale: Option<f64>,
    /// Apply a bottom-right aligned causal mask.
    pub causal: bool,
}

pub(crate) fn infer(op: &Op, inputs: &[TensorType]) -> Result<Vec<TensorType>, String> {
    let Op::Sdpa(_) = op else { unreachable!() };
    arity(inputs, 3, 4)?;
    let (q, k, v) = (&inputs[0], &inputs[1], &inputs[2]);
    float(q, "q")?;
    if k.dtype != q.dtype || v.dtype != q.dtype {
        return Err(format!("q, k, v must share a dtype, got {q}, {k}, {v}"));
    }
    if q.shape.rank() != 4 || k.shape.rank() != 4 || v.shape.rank() != 4 {
        return Err(format!(
            "q, k, v must be [batch, heads, seq, head_dim], got {q}, {k}, {v}"
        ));
    }
    let (qs, ks, vs) = (&q.shape.0, &k.shape.0, &v.shape.0);
    let eq = |a: &Dim, b: &Dim| a == b || a.known().is_none() || b.known().is_none();
    if !eq(&qs[0], &ks[0]) || !eq(&ks[0], &vs[0]) || !eq(&qs[3], &ks[3]) || !eq(&ks[1], &vs[1]) || !eq(&ks[2], &vs[2]) {
        return Err(format!(
            "q {q}, k {k}, v {v} disagree on batch, kv heads, key length or head_dim"
        ));
    }
    if let (Some(hq), Some(hkv)) = (qs[1].known(), ks[1].known()) {
        if hkv == 0 || hq % hkv != 0 {
            return Err(format!(
                "query heads {hq} must be a multiple of kv heads {hkv} (q {q}, k {k})"
            ));
        }
    }
    let scores = Shape(vec![qs[0].clone(), qs[1].clone(), qs[2].clone(), ks[2].clone()]);
    if let Some(m) = inputs.get(3) {
        if m.dtype != DType::Bool && m.dtype != q.dtype {
            return Err(format!("mask must be bool or {} (additive), got {m}", q.dtype));
        }
        if m.shape.rank() > 4 || broadcast_shapes(&m.shape, &scores).as_ref() != Some(&scores) {
            return Err(format!("mask {m} does not broadcast to the scores' shape {scores}"));
        }
    }
    Ok(vec![TensorType::new(
        q.dtype,
        Shape(vec![qs[0].clone(), qs[1].clone(), qs[2].clone(), vs[3].clone()]),
    )])
}

/// Expands kv heads `[B, Hkv, L, D]` to `[B, Hkv * group, L, D]` (each head repeated `group` times).
fn repeat_kv(g: &mut Graph, x: Value, group: usize) -> Result<Value> {
    if group == 1 {
        return Ok(x);
    }
    let s = g
        .ty(x)
        .concrete()
        .ok_or_else(|| Error::invalid("sdpa decomposition needs concrete shapes"))?;
    let u = g.unsqueeze(x, &[2])?;
    let e = g.expand(u, &[s[0], s[1], group, s[2], s[3]])?;
    g.reshape(e, &[s[0] as i64, (s[1] * group) as i64, s[2] as i64, s[3] as i64])
}

pub(crate) fn decompose(a: &SdpaAttrs, g: &mut Graph, inputs: &[Value]) -> Result<Vec<Value>> {
    let (q, k, v) = (inputs[0], inputs[1], inputs[2]);
    let qs = g
        .ty(q)
        .concrete()
        .ok_or_else(|| Error::invalid("sdpa decomposition needs concrete shapes"))?;
    let ks = g
        .ty(k)
        .concrete()
        .ok_or_else(|| Error::invalid("sdpa decomposition needs concrete shapes"))?;
    let dt = g.ty(q).dtype;
    let group = qs[1] / ks[1].max(1);
    let k = repeat_kv(g, k, group)?;
    let v = repeat_kv(g, v, group)?;
    let scores = g.matmul_t(q, k, false, true)?;
    let scale = a.scale.unwrap_or(1.0 / (qs[3] as f64).sqrt());
    let sc = g.scalar(dt, scale);
    let mut scores = g.mul(scores, sc)?;
    let neg_inf = g.scalar(dt, f64::NEG_INFINITY);
    if let Some(&m) = inputs.get(3) {
        scores = if g.ty(m).dtype == DType::Bool {
            g.where_(m, scores, neg_inf)?
        } else {
            g.add(scores, m)?
        };
    }
    if a.causal {
        let (lq, lk) = (qs[2], ks[2]);
        let rows = g.range(0.0, lq as f64, 1.0, DType::I64)?;
        let rows = g.reshape(rows, &[lq as i64, 1])?;
        let offset = g.scalar(DType::I64, lk as f64 - lq as f64);
        let rows = g.add(rows, offset)?;
        let cols = g.range(0.0, lk as f64, 1.0, DType::I64)?;
        let allowed = g.less_equal(cols, rows)?;
        scores = g.where_(allowed, scores, neg_inf)?;
    }
    let p = g.softmax(scores, -1)?;
    Ok(vec![g.matmul(p, v)?])
}

impl Graph {
    /// Scaled dot-product attention; see the module docs for shapes and masking.
    pub fn sdpa(&mut self, q: Value, k: Value, v: Value, mask: Option<Value>, attrs: SdpaAttrs) -> Result<Value> {
        let mut ins = vec![q, k, v];
        ins.extend(mask);
        self.add_op(Op::Sdpa(attrs), &ins)
    }
}
