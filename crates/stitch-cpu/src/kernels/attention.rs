//! Fused scaled dot-product attention on the CPU.
//!
//! One task per (batch, query head, block of query rows). For each query row
//! the kernel computes the row of scores `q·kⱼ·scale` into per-task scratch,
//! applies the mask (bool: false = −∞; float: added) and the bottom-right
//! aligned causal limit, takes the softmax in place and accumulates `Σ pⱼ vⱼ`.
//! The `[Lq, Lk]` score matrix is never materialised. Grouped-query heads read
//! kv head `h / (Hq / Hkv)` directly; nothing is repeated in memory. Math runs
//! in f32 (f64 for f64 inputs), like the decomposition it replaces. A row with
//! every key masked gives NaN, as the decomposition does.

use rayon::prelude::*;
use stitch_core::ops::SdpaAttrs;
use stitch_core::{Buffer, DType, Element, Error, Result, Tensor, TensorType};

use super::dims;

/// Query rows per task.
const ROWS_PER_TASK: usize = 16;

/// Runs `sdpa(q, k, v, mask?)`.
pub fn sdpa(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    mask: Option<&Tensor>,
    attrs: &SdpaAttrs,
    out: &TensorType,
) -> Result<Tensor> {
    let od = dims(out)?;
    match q.dtype() {
        DType::F64 => run::<f64, f64>(q, k, v, mask, attrs, &od),
        DType::F32 => run::<f32, f32>(q, k, v, mask, attrs, &od),
        DType::F16 => run::<half::f16, f32>(q, k, v, mask, attrs, &od),
        DType::BF16 => run::<half::bf16, f32>(q, k, v, mask, attrs, &od),
        other => Err(Error::invalid(format!("sdpa needs a float dtype, got {other}"))),
    }
}

/// The arithmetic type: f32 or f64.
trait Acc:
    Copy
    + Send
    + Sync
    + Default
    + PartialOrd
    + std::ops::AddAssign
    + std::ops::Mul<Output = Self>
    + std::ops::Sub<Output = Self>
    + std::ops::Div<Output = Self>
{
    const NEG_INF: Self;
    fn of(v: f64) -> Self;
    fn to(self) -> f64;
    fn exp(self) -> Self;
}
impl Acc for f32 {
    const NEG_INF: Self = f32::NEG_INFINITY;
    fn of(v: f64) -> Self {
        v as f32
    }
    fn to(self) -> f64 {
        self as f64
    }
    fn exp(self) -> Self {
        f32::exp(self)
    }
}
impl Acc for f64 {
    const NEG_INF: Self = f64::NEG_INFINITY;
    fn of(v: f64) -> Self {
        v
    }
    fn to(self) -> f64 {
        self
    }
    fn exp(self) -> Self {
        f64::exp(self)
    }
}

/// A tensor's elements converted to the accumulation type, contiguous.
fn widen<T: Element, A: Acc>(t: &Tensor) -> Result<Vec<A>> {
    Ok(t.contiguous()
        .as_slice::<T>()?
        .iter()
        .map(|&x| A::of(x.to_f64()))
        .collect())
}

fn run<T: Element, A: Acc>(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    mask: Option<&Tensor>,
    attrs: &SdpaAttrs,
    od: &[usize],
) -> Result<Tensor> {
    let (qs, ks, vs) = (q.shape(), k.shape(), v.shape());
    if qs.len() != 4 || ks.len() != 4 || vs.len() != 4 {
        return Err(Error::invalid(format!(
            "sdpa needs rank-4 q, k, v; got {qs:?}, {ks:?}, {vs:?}"
        )));
    }
    let (b, hq, lq, d) = (qs[0], qs[1], qs[2], qs[3]);
    let (hkv, lk, dv) = (ks[1], ks[2], vs[3]);
    if hkv == 0 || hq % hkv != 0 || ks[3] != d || vs[2] != lk || ks[0] != b || vs[0] != b || vs[1] != hkv {
        return Err(Error::invalid(format!(
            "sdpa shapes disagree: q {qs:?}, k {ks:?}, v {vs:?}"
        )));
    }
    let group = hq / hkv;
    let scale = A::of(attrs.scale.unwrap_or(1.0 / (d as f64).sqrt()));
    let (qv, kv, vv) = (widen::<T, A>(q)?, widen::<T, A>(k)?, widen::<T, A>(v)?);
    // The mask as a broadcast view over [b, hq, lq, lk]: additive values, with −∞ for masked-out.
    let mask = match mask {
        None => None,
        Some(m) => {
            let view = m.broadcast_to(&[b, hq, lq, lk])?;
            let values: Vec<f64> = view.to_f64_vec();
            let additive: Vec<A> = if m.dtype() == DType::Bool {
                values
                    .iter()
                    .map(|&x| if x != 0.0 { A::of(0.0) } else { A::NEG_INF })
                    .collect()
            } else {
                values.iter().map(|&x| A::of(x)).collect()
            };
            Some(additive)
        }
    };
    let offset = lk as isize - lq as isize; // bottom-right causal alignment
    let mut out = vec![A::default(); b * hq * lq * dv];
    if out.is_empty() {
        return Ok(Tensor::zeros(T::DTYPE, od));
    }
    out.par_chunks_mut(ROWS_PER_TASK * dv).enumerate().for_each_init(
        || vec![A::default(); lk],
        |scores, (chunk, dst)| {
            // A chunk may straddle (batch, head) pairs: locate each row by its flat index.
            let first_row = chunk * ROWS_PER_TASK;
            for (r, out_row) in dst.chunks_mut(dv).enumerate() {
                let flat = first_row + r; // index over b * hq * lq
                let (bh, i) = (flat / lq, flat % lq);
                let (bi, h) = (bh / hq, bh % hq);
                let kvh = h / group;
                let q_row = &qv[(bh * lq + i) * d..][..d];
                let k_base = (bi * hkv + kvh) * lk;
                let limit = if attrs.causal {
                    (i as isize + offset + 1).clamp(0, lk as isize) as usize
                } else {
                    lk
                };
                let mut max = A::NEG_INF;
                for (j, s) in scores.iter_mut().enumerate() {
                    if j >= limit {
                        *s = A::NEG_INF;
                        continue;
                    }
                    let k_row = &kv[(k_base + j) * d..][..d];
                    let mut dot = A::default();
                    for (&a, &c) in q_row.iter().zip(k_row) {
                        dot += a * c;
                    }
                    let mut val = dot * scale;
                    if let Some(m) = &mask {
                        val += m[(bh * lq + i) * lk + j];
                    }
                    *s = val;
                    if val > max {
                        max = val;
                    }
                }
                // Softmax in place; an all −∞ row gives exp(NaN) = NaN, as the definition does.
                let mut sum = A::default();
                for s in scores.iter_mut() {
                    *s = (*s - max).exp();
                    sum += *s;
                }
                out_row.fill(A::default());
                // Keys past the causal limit have weight 0 and are skipped, unless the
                // whole row is masked: then every weight is NaN and so is the output.
                let keys = if max == A::NEG_INF { lk } else { limit };
                for (j, &p) in scores.iter().enumerate().take(keys) {
                    let w = p / sum;
                    let v_row = &vv[(k_base + j) * dv..][..dv];
                    for (o, &x) in out_row.iter_mut().zip(v_row) {
                        *o += w * x;
                    }
                }
            }
        },
    );
    let data: Vec<T> = out.into_iter().map(|x| T::from_f64(x.to())).collect();
    let n: usize = od.iter().product();
    if n != data.len() {
        return Err(Error::invalid(format!(
            "sdpa output {od:?} does not match {} computed values",
            data.len()
        )));
    }
    Ok(Tensor::from_buffer(
        Buffer::from_bytes(bytemuck::cast_slice(&data)),
        T::DTYPE,
        od,
    ))
}
