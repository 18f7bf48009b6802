//! Fused scaled dot-product attention on the CPU.
//!
//! One task per (batch, query head, block of query rows). For each query row
//! the kernel computes the row of scores `q·kⱼ·scale` into per-task scratch,
//! applies the mask (bool: false = −∞; float: added) and the bottom-right
//! aligned causal limit, takes the softmax in place and accumulates `Σ pⱼ vⱼ`.
//! The `[Lq, Lk]` score matrix is never materialised. Grouped-query heads read
//! kv head `h / (Hq / Hkv)` directly; nothing is repeated in memory. Math runs
//! in f32 (f64 for f64 inputs), like the decomposition it replaces. A row with
//! every key masked gives NaN, as the decomposition does. An f32 row whose
//! allowed keys are a prefix (no mask, causal, or a boolean mask over a KV
//! cache filled up to the current position: every decode step) takes a
//! vectorised path with no per-key mask lookups: AVX-512/AVX2 dots, the
//! vectorised exp, and `Σ pⱼ vⱼ` in 64-column register blocks.
//!
//! f32 with several query rows (prefill, encoders) takes a blocked path
//! instead: per (batch, head, block of 32 to [`BLOCK_ROWS`] rows) the scores
//! `Q_blk·Kᵀ` and the output `P·V` are two small products on the packed GEMM
//! micro-kernels, with the scaling folded into the first, the mask and a
//! vectorised exp applied row by row in between, and the division by the row
//! sums applied to the output. Keys past every row's causal (or bool-mask)
//! limit in the block are never read.

use rayon::prelude::*;
use stitch_core::ops::SdpaAttrs;
use stitch_core::{DType, Element, Error, Result, Tensor, TensorType};

use super::dims;
use super::scratch::ScratchElem;

/// Query rows per task.
const ROWS_PER_TASK: usize = 16;
/// Query rows per block of the blocked f32 path.
/// (Larger blocks pack each head's K and V fewer times; blocks shrink to 32
/// rows when that leaves too few tasks for the threads.)
const BLOCK_ROWS: usize = 128;
/// Fewest query rows for which f32 takes the blocked path.
const BLOCKED_MIN_ROWS: usize = 8;

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

/// `Σ a·b` with eight independent partial sums (so it vectorises).
#[inline]
fn dot<T: Element, A: Acc>(a: &[T], b: &[T]) -> A {
    let mut acc = [A::default(); 8];
    let (ca, cb) = (a.chunks_exact(8), b.chunks_exact(8));
    let (ra, rb) = (ca.remainder(), cb.remainder());
    for (x, y) in ca.zip(cb) {
        for l in 0..8 {
            acc[l] += A::of(x[l].to_f64()) * A::of(y[l].to_f64());
        }
    }
    let mut s = A::default();
    for (&x, &y) in ra.iter().zip(rb) {
        s += A::of(x.to_f64()) * A::of(y.to_f64());
    }
    for v in acc {
        s += v;
    }
    s
}

/// Element index of (batch, head, row, key) in a mask view with `strides` and `offset`.
#[inline(always)]
fn mask_index(strides: &[isize; 4], offset: isize, at: [usize; 4]) -> usize {
    let mut o = offset;
    for (s, a) in strides.iter().zip(at) {
        o += *s * a as isize;
    }
    o as usize
}

/// The mask as read by the kernel: through its broadcast view's strides, never
/// materialised for bool and f32 masks.
enum Mask<'a, A> {
    None,
    Bool {
        data: &'a [u8],
        strides: [isize; 4],
        offset: isize,
    },
    F32 {
        data: &'a [f32],
        strides: [isize; 4],
        offset: isize,
    },
    Values(Vec<A>),
}

impl<A: Acc> Mask<'_, A> {
    /// The additive mask value at (batch, head, row, key).
    #[inline]
    fn at(&self, bi: usize, h: usize, i: usize, j: usize, dims: [usize; 3]) -> A {
        let off = |s: &[isize; 4], o: isize| mask_index(s, o, [bi, h, i, j]);
        match self {
            Mask::None => A::default(),
            Mask::Bool { data, strides, offset } => {
                if data[off(strides, *offset)] != 0 {
                    A::default()
                } else {
                    A::NEG_INF
                }
            }
            Mask::F32 { data, strides, offset } => A::of(data[off(strides, *offset)] as f64),
            Mask::Values(v) => v[((bi * dims[0] + h) * dims[1] + i) * dims[2] + j],
        }
    }
}

fn run<T: Element, A: Acc + ScratchElem>(
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
    let n: usize = od.iter().product();
    if n != b * hq * lq * dv {
        return Err(Error::invalid(format!(
            "sdpa output {od:?} does not match q {qs:?} and v {vs:?}"
        )));
    }
    let group = hq / hkv;
    let scale = A::of(attrs.scale.unwrap_or(1.0 / (d as f64).sqrt()));
    let view;
    let mask: Mask<'_, A> = match mask {
        None => Mask::None,
        Some(m) => {
            view = m.broadcast_to(&[b, hq, lq, lk])?;
            let st = view.strides();
            let strides = [st[0], st[1], st[2], st[3]];
            let offset = view.offset() as isize;
            match m.dtype() {
                DType::Bool => Mask::Bool {
                    data: view.buffer().as_slice::<u8>(),
                    strides,
                    offset,
                },
                DType::F32 => Mask::F32 {
                    data: view.buffer().as_slice::<f32>(),
                    strides,
                    offset,
                },
                _ => Mask::Values(view.to_f64_vec().into_iter().map(A::of).collect()),
            }
        }
    };
    let offset = lk as isize - lq as isize; // bottom-right causal alignment
    let mut out = Tensor::empty(T::DTYPE, od);
    if n == 0 {
        return Ok(out);
    }
    if T::DTYPE == DType::F32 && lq >= BLOCKED_MIN_ROWS && d > 0 {
        // q, k, v are read through their strides (transposed views need no copy).
        let (q, k, v) = (nonnegative(q), nonnegative(k), nonnegative(v));
        let dst = out.buffer_mut().as_slice_mut::<f32>();
        let shape = Dims {
            hq,
            hkv,
            lq,
            lk,
            d,
            dv,
            offset,
            causal: attrs.causal,
        };
        blocked_f32(
            StridedF32::of(&q)?,
            StridedF32::of(&k)?,
            StridedF32::of(&v)?,
            &mask,
            shape,
            scale.to() as f32,
            dst,
        );
        return Ok(out);
    }
    let (q, k, v) = (q.contiguous(), k.contiguous(), v.contiguous());
    let (qv, kv, vv) = (q.as_slice::<T>()?, k.as_slice::<T>()?, v.as_slice::<T>()?);
    let dst = out.buffer_mut().as_slice_mut::<T>();
    // Few rows (decode: one query row per head) still spread over the threads.
    let rows_per_task = (b * hq * lq / (4 * rayon::current_num_threads().max(1))).clamp(1, ROWS_PER_TASK);
    dst.par_chunks_mut(rows_per_task * dv)
        .enumerate()
        .for_each(|(chunk, dst)| {
            A::with_scratch(lk + dv, |scratch| {
                let (scores, acc) = scratch.split_at_mut(lk);
                // A chunk may straddle (batch, head) pairs: locate each row by its flat index.
                let first_row = chunk * rows_per_task;
                for (r, out_row) in dst.chunks_mut(dv).enumerate() {
                    let flat = first_row + r; // index over b * hq * lq
                    let (bh, i) = (flat / lq, flat % lq);
                    let (bi, h) = (bh / hq, bh % hq);
                    let kvh = h / group;
                    let q_row = &qv[(bh * lq + i) * d..][..d];
                    let k_base = (bi * hkv + kvh) * lk;
                    let mut limit = if attrs.causal {
                        (i as isize + offset + 1).clamp(0, lk as isize) as usize
                    } else {
                        lk
                    };
                    // A boolean mask usually allows a prefix of the keys (a KV cache
                    // filled up to the current position): read the row through its
                    // stride once, stop at its last allowed key, and when every key
                    // before it is allowed skip the per-key mask lookups.
                    let mut dense = matches!(mask, Mask::None);
                    if let Mask::Bool { data, strides, offset } = &mask {
                        let base = mask_index(strides, *offset, [bi, h, i, 0]) as isize;
                        if let Some((end, all)) = bool_row_span(data, base, strides[3], limit) {
                            (limit, dense) = (end, all);
                        }
                    }
                    if dense && limit > 0 && T::DTYPE == DType::F32 {
                        // SAFETY: T and A are f32 here (run::<f32, f32> is the only
                        // instantiation whose T has dtype F32), so these are the same
                        // slices under their own type.
                        let (f, fm) = (
                            |s: &[T]| unsafe { std::slice::from_raw_parts(s.as_ptr().cast::<f32>(), s.len()) },
                            |s: &mut [A]| unsafe {
                                std::slice::from_raw_parts_mut(s.as_mut_ptr().cast::<f32>(), s.len())
                            },
                        );
                        // SAFETY: as above, for the output row.
                        let out_f32 = unsafe {
                            std::slice::from_raw_parts_mut(out_row.as_mut_ptr().cast::<f32>(), out_row.len())
                        };
                        dense_row_f32(
                            f(q_row),
                            f(&kv[k_base * d..(k_base + limit) * d]),
                            f(&vv[k_base * dv..(k_base + limit) * dv]),
                            scale.to() as f32,
                            fm(&mut scores[..limit]),
                            out_f32,
                        );
                        continue;
                    }
                    let mut max = A::NEG_INF;
                    for (j, s) in scores[..limit].iter_mut().enumerate() {
                        let m = if dense {
                            A::default()
                        } else {
                            mask.at(bi, h, i, j, [hq, lq, lk])
                        };
                        if m == A::NEG_INF {
                            // Masked out: its weight is 0 whatever q·k is.
                            *s = A::NEG_INF;
                            continue;
                        }
                        let mut val = dot::<T, A>(q_row, &kv[(k_base + j) * d..][..d]) * scale;
                        val += m;
                        *s = val;
                        if val > max {
                            max = val;
                        }
                    }
                    if max == A::NEG_INF {
                        scores[limit..].fill(A::NEG_INF);
                    }
                    // Softmax in place; an all −∞ row gives exp(NaN) = NaN, as the definition does.
                    let span = if max == A::NEG_INF { lk } else { limit };
                    let mut sum = A::default();
                    for s in scores[..span].iter_mut() {
                        *s = (*s - max).exp();
                        sum += *s;
                    }
                    acc.fill(A::default());
                    // Keys past the causal limit have weight 0 and are skipped, unless the
                    // whole row is masked: then every weight is NaN and so is the output.
                    let keys = if max == A::NEG_INF { lk } else { limit };
                    for (j, &p) in scores.iter().enumerate().take(keys) {
                        if p == A::default() && max != A::NEG_INF {
                            continue;
                        }
                        let w = p / sum;
                        let v_row = &vv[(k_base + j) * dv..][..dv];
                        for (o, &x) in acc.iter_mut().zip(v_row) {
                            *o += w * A::of(x.to_f64());
                        }
                    }
                    for (o, &a) in out_row.iter_mut().zip(acc.iter()) {
                        *o = T::from_f64(a.to());
                    }
                }
            })
        });
    for t in [q, k, v] {
        stitch_core::BufferPool::recycle(t);
    }
    Ok(out)
}

/// The allowed keys among the first `n` of a boolean mask row read from
/// `base` with stride `step`: `(end, dense)`, `end` one past the last allowed
/// key and `dense` whether every key before it is allowed; `None` if none is.
/// A contiguous row (a KV-cache mask over thousands of keys, once per head and
/// layer) is scanned 64 bytes at a time.
fn bool_row_span(data: &[u8], base: isize, step: isize, n: usize) -> Option<(usize, bool)> {
    if step == 1 {
        let row = &data[base as usize..base as usize + n];
        let mut end = n;
        while end > 0 {
            let start = end.saturating_sub(64);
            if row[start..end].iter().fold(0u8, |a, &b| a | b) != 0 {
                break;
            }
            end = start;
        }
        let end = row[..end].iter().rposition(|&b| b != 0)? + 1;
        let dense = row[..end]
            .chunks(64)
            .all(|c| c.iter().fold(1u8, |a, &b| a & u8::from(b != 0)) != 0);
        Some((end, dense))
    } else {
        let allowed = |j: usize| data[(base + step * j as isize) as usize] != 0;
        let end = (0..n).rev().find(|&j| allowed(j))? + 1;
        Some((end, (0..end).all(allowed)))
    }
}

/// One f32 query row `q` against keys `k` (`[n, d]`) that are all allowed:
/// the scores `q·kⱼ·scale` into `scores` (`n` long), their softmax, and
/// `out = Σ softmax(s)ⱼ vⱼ` (`v` is `[n, dv]`). The vectorised path of decode
/// (one query row per head over a KV cache filled up to the current position).
fn dense_row_f32(q: &[f32], k: &[f32], v: &[f32], scale: f32, scores: &mut [f32], out: &mut [f32]) {
    use super::simd_math::Level;
    match super::simd_math::level() {
        // SAFETY: the level says the CPU has these features.
        #[cfg(target_arch = "x86_64")]
        Level::Avx512 => unsafe { dense_row_x86::avx512(q, k, v, scale, scores, out) },
        #[cfg(target_arch = "x86_64")]
        Level::Avx2 => unsafe { dense_row_x86::avx2(q, k, v, scale, scores, out) },
        _ => dense_row_body(q, k, v, scale, scores, out, |a, b| {
            a.iter().zip(b).map(|(x, y)| x * y).sum()
        }),
    }
}

#[cfg(target_arch = "x86_64")]
mod dense_row_x86 {
    /// # Safety
    /// The CPU must support AVX-512F, AVX2 and FMA.
    #[target_feature(enable = "avx512f,avx2,fma")]
    pub(super) unsafe fn avx512(q: &[f32], k: &[f32], v: &[f32], scale: f32, scores: &mut [f32], out: &mut [f32]) {
        super::dense_row_body(q, k, v, scale, scores, out, |a, b| {
            use std::arch::x86_64::*;
            let n16 = a.len() / 16 * 16;
            // SAFETY: the target features are enabled; loads stay inside a and b.
            let mut s = unsafe {
                let mut acc = _mm512_setzero_ps();
                for i in (0..n16).step_by(16) {
                    acc = _mm512_fmadd_ps(
                        _mm512_loadu_ps(a.as_ptr().add(i)),
                        _mm512_loadu_ps(b.as_ptr().add(i)),
                        acc,
                    );
                }
                _mm512_reduce_add_ps(acc)
            };
            for i in n16..a.len() {
                s += a[i] * b[i];
            }
            s
        })
    }

    /// # Safety
    /// The CPU must support AVX2 and FMA.
    #[target_feature(enable = "avx2,fma")]
    pub(super) unsafe fn avx2(q: &[f32], k: &[f32], v: &[f32], scale: f32, scores: &mut [f32], out: &mut [f32]) {
        super::dense_row_body(q, k, v, scale, scores, out, |a, b| {
            use std::arch::x86_64::*;
            let n8 = a.len() / 8 * 8;
            // SAFETY: the target features are enabled; loads stay inside a and b.
            let mut s = unsafe {
                let mut acc = _mm256_setzero_ps();
                for i in (0..n8).step_by(8) {
                    acc = _mm256_fmadd_ps(
                        _mm256_loadu_ps(a.as_ptr().add(i)),
                        _mm256_loadu_ps(b.as_ptr().add(i)),
                        acc,
                    );
                }
                let h = _mm_add_ps(_mm256_castps256_ps128(acc), _mm256_extractf128_ps(acc, 1));
                let h = _mm_add_ps(h, _mm_movehl_ps(h, h));
                _mm_cvtss_f32(_mm_add_ss(h, _mm_shuffle_ps(h, h, 1)))
            };
            for i in n8..a.len() {
                s += a[i] * b[i];
            }
            s
        })
    }
}

/// Pairwise sum of 16 lanes (a short dependency chain).
#[inline(always)]
fn hsum16(l: [f32; 16]) -> f32 {
    let mut a = [0f32; 8];
    for i in 0..8 {
        a[i] = l[i] + l[i + 8];
    }
    let b = [a[0] + a[4], a[1] + a[5], a[2] + a[6], a[3] + a[7]];
    (b[0] + b[2]) + (b[1] + b[3])
}

/// The body of [`dense_row_f32`]; LLVM vectorises it for the target features
/// of the function it is inlined into.
#[inline(always)]
fn dense_row_body(
    q: &[f32],
    k: &[f32],
    v: &[f32],
    scale: f32,
    scores: &mut [f32],
    out: &mut [f32],
    dot: impl Fn(&[f32], &[f32]) -> f32,
) {
    const W: usize = 64; // output columns per pass, held in registers
    let (d, dv) = (q.len(), out.len());
    let mut max = f32::NEG_INFINITY;
    for (s, kr) in scores.iter_mut().zip(k.chunks_exact(d.max(1))) {
        *s = dot(q, kr) * scale;
        max = max.max(*s);
    }
    let mut sum = [0f32; 16];
    let mut tmp = [0f32; W];
    for ch in scores.chunks_mut(W) {
        let t = &mut tmp[..ch.len()];
        for (t, &s) in t.iter_mut().zip(ch.iter()) {
            *t = s - max;
        }
        super::simd_math::exp_f32(t, ch);
        for (i, &p) in ch.iter().enumerate() {
            sum[i % 16] += p;
        }
    }
    let inv = 1.0 / hsum16(sum);
    for c0 in (0..dv).step_by(W) {
        let w = (dv - c0).min(W);
        let mut acc = [0f32; W];
        if w == W {
            for (&p, vr) in scores.iter().zip(v.chunks_exact(dv)) {
                let vr: &[f32; W] = vr[c0..c0 + W].try_into().expect("W columns");
                for l in 0..W {
                    acc[l] += p * vr[l];
                }
            }
        } else {
            for (&p, vr) in scores.iter().zip(v.chunks_exact(dv)) {
                for (a, &x) in acc[..w].iter_mut().zip(&vr[c0..c0 + w]) {
                    *a += p * x;
                }
            }
        }
        for (o, &a) in out[c0..c0 + w].iter_mut().zip(&acc[..w]) {
            *o = a * inv;
        }
    }
}

/// Sizes of an attention problem for [`blocked_f32`].
#[derive(Clone, Copy)]
struct Dims {
    hq: usize,
    hkv: usize,
    lq: usize,
    lk: usize,
    d: usize,
    dv: usize,
    /// `lk - lq`: the bottom-right causal alignment.
    offset: isize,
    causal: bool,
}

/// `t` itself when none of its strides is negative, else a contiguous copy.
fn nonnegative(t: &Tensor) -> Tensor {
    if t.strides().iter().all(|&s| s >= 0) {
        t.clone()
    } else {
        t.contiguous()
    }
}

/// A rank-4 f32 tensor read through its (non-negative) strides.
#[derive(Clone, Copy)]
struct StridedF32<'a> {
    data: &'a [f32],
    offset: usize,
    strides: [usize; 4],
}

impl<'a> StridedF32<'a> {
    fn of(t: &'a Tensor) -> Result<StridedF32<'a>> {
        let st = t.strides();
        let nonneg = |i: usize| usize::try_from(st[i]).map_err(|_| Error::invalid("sdpa: negative stride"));
        Ok(StridedF32 {
            data: t.buffer().as_slice::<f32>(),
            offset: t.offset(),
            strides: [nonneg(0)?, nonneg(1)?, nonneg(2)?, nonneg(3)?],
        })
    }

    /// The matrix `[b, h, rows.., cols..]` (rows along axis 2, columns along
    /// axis 3), or its transpose when `transposed`.
    fn mat(&self, b: usize, h: usize, row0: usize, transposed: bool) -> super::sgemm::Mat {
        let [s0, s1, s2, s3] = self.strides;
        let start = self.offset + b * s0 + h * s1 + row0 * s2;
        let (rs, cs) = if transposed { (s3, s2) } else { (s2, s3) };
        super::sgemm::Mat {
            // SAFETY (of later reads): the caller reads only inside the tensor's extent.
            ptr: self.data.as_ptr().wrapping_add(start),
            rs: rs as isize,
            cs: cs as isize,
        }
    }
}

/// The blocked f32 path (see the module docs): `q`, `k`, `v` are `[B, H, L, D]`
/// views; `dst` is the contiguous `[B, Hq, Lq, Dv]` output.
fn blocked_f32<A: Acc>(
    q: StridedF32<'_>,
    k: StridedF32<'_>,
    v: StridedF32<'_>,
    mask: &Mask<'_, A>,
    s: Dims,
    scale: f32,
    dst: &mut [f32],
) {
    use super::sgemm::{sgemm, Isa, Mat};
    let isa = Isa::detect();
    let group = s.hq / s.hkv;
    // Rows per block: up to BLOCK_ROWS while there are 4 tasks per thread.
    let heads = dst.len() / (s.lq * s.dv).max(1);
    let block = (heads * s.lq / (4 * rayon::current_num_threads().max(1))).clamp(32, BLOCK_ROWS) / 8 * 8;
    dst.par_chunks_mut(s.lq * s.dv)
        .enumerate()
        .flat_map(|(bh, head)| {
            head.par_chunks_mut(block * s.dv)
                .enumerate()
                .map(move |(rb, out)| (bh, rb, out))
        })
        .for_each(|(bh, rb, out)| {
            let rows = out.len() / s.dv;
            let i0 = rb * block;
            let (bi, h) = (bh / s.hq, bh % s.hq);
            let kvh = h / group;
            // Each row's key limit (causal, then the last key a bool mask allows).
            let mut limits = [0usize; BLOCK_ROWS];
            for (r, limit) in limits.iter_mut().enumerate().take(rows) {
                let i = i0 + r;
                *limit = if s.causal {
                    (i as isize + s.offset + 1).clamp(0, s.lk as isize) as usize
                } else {
                    s.lk
                };
                if let Mask::Bool { .. } = mask {
                    *limit = (0..*limit)
                        .rev()
                        .find(|&j| mask.at(bi, h, i, j, [s.hq, s.lq, s.lk]) != A::NEG_INF)
                        .map_or(0, |j| j + 1);
                }
            }
            let n = limits[..rows].iter().copied().max().unwrap_or(0);
            if n == 0 {
                // Every key masked in every row: NaN, as the definition gives.
                out.fill(f32::NAN);
                return;
            }
            <f32 as ScratchElem>::with_scratch(rows * n + n + BLOCK_ROWS, |scratch| {
                let (scores, rest) = scratch.split_at_mut(rows * n);
                let (tmp, inv) = rest.split_at_mut(n);
                // SAFETY: the Q block (rows × d), Kᵀ (d × n) and the scores
                // (rows × n) lie inside their tensors.
                unsafe {
                    let (a, b) = (q.mat(bi, h, i0, false), k.mat(bi, kvh, 0, true));
                    sgemm(isa, rows, n, s.d, a, b, scores, false, 0.0, scale, false);
                }
                for (r, row) in scores.chunks_mut(n).enumerate() {
                    let i = i0 + r;
                    let limit = limits[r];
                    row[limit..].fill(f32::NEG_INFINITY);
                    let masked = &mut row[..limit];
                    let at = |st: &[isize; 4], o: isize, j: usize| mask_index(st, o, [bi, h, i, j]);
                    match mask {
                        Mask::None => {}
                        Mask::F32 { data, strides, offset } if strides[3] == 1 => {
                            let start = at(strides, *offset, 0);
                            for (x, &m) in masked.iter_mut().zip(&data[start..start + limit]) {
                                *x += m;
                            }
                        }
                        Mask::Bool { data, strides, offset } => {
                            for (j, x) in masked.iter_mut().enumerate() {
                                if data[at(strides, *offset, j)] == 0 {
                                    *x = f32::NEG_INFINITY;
                                }
                            }
                        }
                        _ => {
                            for (j, x) in masked.iter_mut().enumerate() {
                                *x += mask.at(bi, h, i, j, [s.hq, s.lq, s.lk]).to() as f32;
                            }
                        }
                    }
                    let max = row.iter().copied().fold(f32::NEG_INFINITY, f32::max);
                    if max == f32::NEG_INFINITY {
                        inv[r] = f32::NAN; // every key masked: the output row is NaN
                        row.fill(0.0);
                        continue;
                    }
                    for (t, &x) in tmp.iter_mut().zip(row.iter()) {
                        *t = x - max;
                    }
                    super::simd_math::exp_f32(tmp, row);
                    inv[r] = 1.0 / row.iter().sum::<f32>();
                }
                // SAFETY: P (rows × n), V's rows (n × dv) and the output block lie inside their tensors.
                unsafe {
                    let a = Mat {
                        ptr: scores.as_ptr(),
                        rs: n as isize,
                        cs: 1,
                    };
                    sgemm(
                        isa,
                        rows,
                        s.dv,
                        n,
                        a,
                        v.mat(bi, kvh, 0, false),
                        out,
                        false,
                        0.0,
                        1.0,
                        false,
                    );
                }
                for (o, &f) in out.chunks_mut(s.dv).zip(inv.iter()) {
                    for x in o.iter_mut() {
                        *x *= f;
                    }
                }
            })
        });
}
