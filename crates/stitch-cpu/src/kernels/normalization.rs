//! Fused normalisation kernels: softmax / log-softmax, layer norm, RMS norm.
//!
//! Each reads its row once to find the statistics and once more to write, in
//! parallel over rows. Element math runs in f32 for f16/bf16/f32 and f64 for
//! f64; the sums (softmax denominator, mean, variance, mean square) are
//! accumulated in f64, which keeps long rows accurate for little cost next to
//! `exp` and the memory traffic. A fully `-inf` softmax row gives NaN, as the
//! decomposition does (see `stitch_core::ops::normalization`).

use std::ops::{Add, Mul, Sub};

use stitch_core::half::{bf16, f16};
use stitch_core::shape::normalize_axis;
use stitch_core::{DType, Element, Error, Result, Tensor};

use super::layout::{contiguous, contiguous_slice, new_tensor, par_rows};
use super::scratch::ScratchElem;
use super::PAR_CHUNK;
use stitch_core::BufferPool;

/// The arithmetic type elements are computed in (f32 or f64).
trait Acc: Copy + Send + Sync + Add<Output = Self> + Sub<Output = Self> + Mul<Output = Self> {
    const NEG_INF: Self;
    fn exp(self) -> Self;
    fn max(self, other: Self) -> Self;
    fn of(v: f64) -> Self;
    fn wide(self) -> f64;
    /// `dst[i] = exp(src[i])`; vectorised for f32.
    #[inline]
    fn exp_slice(src: &[Self], dst: &mut [Self]) {
        for (d, &s) in dst.iter_mut().zip(src) {
            *d = s.exp();
        }
    }
}

impl Acc for f32 {
    const NEG_INF: Self = f32::NEG_INFINITY;
    #[inline]
    fn exp_slice(src: &[f32], dst: &mut [f32]) {
        super::simd_math::exp_f32(src, dst)
    }
    #[inline]
    fn exp(self) -> Self {
        f32::exp(self)
    }
    #[inline]
    fn max(self, other: Self) -> Self {
        f32::max(self, other)
    }
    #[inline]
    fn of(v: f64) -> Self {
        v as f32
    }
    #[inline]
    fn wide(self) -> f64 {
        self as f64
    }
}

impl Acc for f64 {
    const NEG_INF: Self = f64::NEG_INFINITY;
    #[inline]
    fn exp(self) -> Self {
        f64::exp(self)
    }
    #[inline]
    fn max(self, other: Self) -> Self {
        f64::max(self, other)
    }
    #[inline]
    fn of(v: f64) -> Self {
        v
    }
    #[inline]
    fn wide(self) -> f64 {
        self
    }
}

/// A float element type and the type it computes in.
trait NormElem: Element + Copy {
    type A: Acc + ScratchElem;
    fn to_acc(self) -> Self::A;
    fn from_acc(a: Self::A) -> Self;
}

macro_rules! norm_elem {
    ($($t:ty => $a:ty, $to:expr, $from:expr);*) => {$(
        impl NormElem for $t {
            type A = $a;
            #[inline]
            fn to_acc(self) -> $a { $to(self) }
            #[inline]
            fn from_acc(a: $a) -> Self { $from(a) }
        }
    )*};
}
norm_elem!(
    f32 => f32, |v| v, |v| v;
    f64 => f64, |v| v, |v| v;
    f16 => f32, f16::to_f32, f16::from_f32;
    bf16 => f32, bf16::to_f32, bf16::from_f32
);

/// Calls `$f::<T>` with `T` the Rust type of the float dtype `$dtype`.
macro_rules! dispatch_float {
    ($dtype:expr, $what:expr, $f:ident($($arg:expr),*)) => {
        match $dtype {
            DType::F32 => $f::<f32>($($arg),*),
            DType::F64 => $f::<f64>($($arg),*),
            DType::F16 => $f::<f16>($($arg),*),
            DType::BF16 => $f::<bf16>($($arg),*),
            other => Err(Error::invalid(format!("{} needs a floating-point input, got {other}", $what))),
        }
    };
}

/// Softmax (or log-softmax) along `axis`, one pass per row.
pub fn softmax(x: &Tensor, axis: i64, log: bool) -> Result<Tensor> {
    let ax = normalize_axis(axis, x.rank()).ok_or_else(|| {
        Error::invalid(format!(
            "softmax axis {axis} out of range for input shape {:?}",
            x.shape()
        ))
    })?;
    let what = if log { "log_softmax" } else { "softmax" };
    dispatch_float!(x.dtype(), what, softmax_t(x, ax, log))
}

/// `Σ v` in f64 with eight partial sums (independent chains, so the loop is
/// not bound by the latency of one f64 add per element).
fn wide_sum<A: Acc>(v: &[A]) -> f64 {
    let mut lanes = [0f64; 8];
    let chunks = v.chunks_exact(8);
    let rest = chunks.remainder();
    for c in chunks {
        for (l, &x) in lanes.iter_mut().zip(c) {
            *l += x.wide();
        }
    }
    rest.iter().map(|x| x.wide()).sum::<f64>() + lanes.iter().sum::<f64>()
}

/// Softmax of one contiguous row; `scratch` holds `x - max` (log) or its exp.
fn softmax_row<T: NormElem>(x: &[T], y: &mut [T], scratch: &mut [T::A], log: bool) {
    // Eight running maxima: independent chains that vectorise.
    let mut lanes = [T::A::NEG_INF; 8];
    let chunks = x.chunks_exact(8);
    let rest = chunks.remainder();
    for c in chunks {
        for (l, &v) in lanes.iter_mut().zip(c) {
            *l = l.max(v.to_acc());
        }
    }
    let m = rest
        .iter()
        .map(|v| v.to_acc())
        .chain(lanes)
        .fold(T::A::NEG_INF, |m, v| m.max(v));
    let mut sum = 0f64;
    if log {
        for (s, &v) in scratch.iter_mut().zip(x) {
            let d = v.to_acc() - m;
            sum += d.exp().wide();
            *s = d;
        }
    } else {
        // x - max into y's accumulators, then one vectorised exp pass.
        let n = x.len();
        if scratch.len() >= 2 * n {
            let (d, e) = scratch.split_at_mut(n);
            for (s, &v) in d.iter_mut().zip(x) {
                *s = v.to_acc() - m;
            }
            T::A::exp_slice(d, &mut e[..n]);
            sum = wide_sum(&e[..n]);
            let inv = T::A::of(1.0 / sum);
            for (o, &v) in y.iter_mut().zip(e[..n].iter()) {
                *o = T::from_acc(v * inv);
            }
            return;
        }
        for (s, &v) in scratch.iter_mut().zip(x) {
            let e = (v.to_acc() - m).exp();
            sum += e.wide();
            *s = e;
        }
    }
    if log {
        let l = T::A::of(sum.ln());
        for (o, &d) in y.iter_mut().zip(scratch.iter()) {
            *o = T::from_acc(d - l);
        }
    } else {
        let inv = T::A::of(1.0 / sum);
        for (o, &e) in y.iter_mut().zip(scratch.iter()) {
            *o = T::from_acc(e * inv);
        }
    }
}

/// Softmax of a contiguous `[n, inner]` block along its first axis, with
/// column vectors of statistics so every inner loop is unit-stride.
fn softmax_block<T: NormElem>(x: &[T], y: &mut [T], n: usize, m: &mut [T::A], s: &mut [f64], log: bool) {
    let inner = m.len();
    m.fill(T::A::NEG_INF);
    s.fill(0.0);
    for xr in x.chunks_exact(inner) {
        for (mi, &v) in m.iter_mut().zip(xr) {
            *mi = mi.max(v.to_acc());
        }
    }
    for xr in x.chunks_exact(inner) {
        for ((si, &mi), &v) in s.iter_mut().zip(m.iter()).zip(xr) {
            *si += (v.to_acc() - mi).exp().wide();
        }
    }
    // Turn the sums into what the write pass needs: log(sum) or 1/sum.
    for si in s.iter_mut() {
        *si = if log { si.ln() } else { 1.0 / *si };
    }
    for (xr, yr) in x.chunks_exact(inner).zip(y.chunks_exact_mut(inner)).take(n) {
        for (((o, &v), &mi), &si) in yr.iter_mut().zip(xr).zip(m.iter()).zip(s.iter()) {
            let d = v.to_acc() - mi;
            *o = T::from_acc(if log { d - T::A::of(si) } else { d.exp() * T::A::of(si) });
        }
    }
}

fn softmax_t<T: NormElem>(x: &Tensor, ax: usize, log: bool) -> Result<Tensor> {
    let shape = stitch_core::Dims::from_slice(x.shape());
    let rank = shape.len();
    let n = shape[ax];
    let inner: usize = shape[ax + 1..].iter().product();
    let outer: usize = shape[..ax].iter().product();
    if inner > 1 && outer < rayon::current_num_threads() && x.numel() > PAR_CHUNK {
        // Too few blocks to spread over threads: move the axis last (one
        // parallel copy each way) and run the row kernel instead.
        let perm: Vec<usize> = (0..rank).filter(|&i| i != ax).chain([ax]).collect();
        let mut inv = vec![0; rank];
        for (i, &p) in perm.iter().enumerate() {
            inv[p] = i;
        }
        let xt = contiguous(&x.permute(&perm)?);
        let yt = softmax_t::<T>(&xt, rank - 1, log)?;
        return Ok(contiguous(&yt.permute(&inv)?));
    }
    let x = contiguous(x);
    let src = contiguous_slice::<T>(&x);
    let y = new_tensor::<T>(x.dtype(), &shape, |dst| {
        if inner == 1 {
            par_rows(dst, n, |first, chunk| {
                T::A::with_scratch(2 * n, |scratch| {
                    for (r, row) in chunk.chunks_mut(n).enumerate() {
                        softmax_row(&src[(first + r) * n..][..n], row, scratch, log);
                    }
                })
            })
        } else {
            let block = n * inner;
            par_rows(dst, block, |first, chunk| {
                T::A::with_scratch(inner, |m| {
                    f64::with_scratch(inner, |s| {
                        for (b, blk) in chunk.chunks_mut(block).enumerate() {
                            softmax_block(&src[(first + b) * block..][..block], blk, n, m, s, log);
                        }
                    })
                })
            })
        }
    });
    BufferPool::recycle(x);
    Ok(y)
}

/// `p` broadcast to the normalised trailing shape, contiguous, in the compute type.
fn param<T: NormElem>(p: &Tensor, norm_shape: &[usize], what: &str, x: &Tensor) -> Result<Tensor> {
    if p.dtype() != x.dtype() || p.rank() > norm_shape.len() {
        return Err(Error::invalid(format!(
            "{what} {} {:?} does not fit the normalised axes {norm_shape:?} of {} input {:?}",
            p.dtype(),
            p.shape(),
            x.dtype(),
            x.shape()
        )));
    }
    Ok(contiguous(&p.broadcast_to(norm_shape)?))
}

/// `Σ f(x)` in f64 over 8 independent lanes, so the loop vectorises (a
/// sequential f64 sum is one dependent add per element); the order differs
/// from a sequential sum only in f64 rounding.
#[inline(always)]
fn sum_lanes<T: Copy>(xs: &[T], f: impl Fn(T) -> f64) -> f64 {
    let mut lanes = [0f64; 8];
    let chunks = xs.chunks_exact(8);
    let tail: f64 = chunks.remainder().iter().map(|&v| f(v)).sum();
    for c in chunks {
        for (l, &v) in lanes.iter_mut().zip(c) {
            *l += f(v);
        }
    }
    lanes.iter().sum::<f64>() + tail
}

/// Layer norm over axes `axis..rank`.
pub fn layer_norm(x: &Tensor, scale: &Tensor, bias: Option<&Tensor>, axis: i64, epsilon: f64) -> Result<Tensor> {
    dispatch_float!(x.dtype(), "layer_norm", norm_t(x, scale, bias, axis, epsilon, false))
}

/// RMS norm over axes `axis..rank`.
pub fn rms_norm(x: &Tensor, scale: &Tensor, axis: i64, epsilon: f64) -> Result<Tensor> {
    dispatch_float!(x.dtype(), "rms_norm", norm_t(x, scale, None, axis, epsilon, true))
}

/// Layer norm (`rms = false`: `(x - mean) / sqrt(var + eps) * scale + bias`) or
/// RMS norm (`x / sqrt(mean(x²) + eps) * scale`) over rows of the trailing axes.
fn norm_t<T: NormElem>(
    x: &Tensor,
    scale: &Tensor,
    bias: Option<&Tensor>,
    axis: i64,
    eps: f64,
    rms: bool,
) -> Result<Tensor> {
    let shape = stitch_core::Dims::from_slice(x.shape());
    let ax = normalize_axis(axis, shape.len()).ok_or_else(|| {
        Error::invalid(format!(
            "normalisation axis {axis} out of range for input shape {shape:?}"
        ))
    })?;
    let norm_shape = &shape[ax..];
    let n: usize = norm_shape.iter().product();
    let sc_t = param::<T>(scale, norm_shape, "scale", x)?;
    let bi_t = bias.map(|b| param::<T>(b, norm_shape, "bias", x)).transpose()?;
    let sc = contiguous_slice::<T>(&sc_t);
    let bi = bi_t.as_ref().map(|b| contiguous_slice::<T>(b));
    let x = contiguous(x);
    let src = contiguous_slice::<T>(&x);
    let inv_n = 1.0 / n as f64;
    let y = new_tensor::<T>(x.dtype(), &shape, |dst| {
        par_rows(dst, n, |first, chunk| {
            for (r, row) in chunk.chunks_mut(n).enumerate() {
                let xr = &src[(first + r) * n..][..n];
                if rms {
                    let ms = sum_lanes(xr, |v| {
                        let w = v.to_acc().wide();
                        w * w
                    }) * inv_n;
                    let inv = T::A::of(1.0 / (ms + eps).sqrt());
                    for ((o, &v), &s) in row.iter_mut().zip(xr).zip(sc) {
                        *o = T::from_acc(v.to_acc() * inv * s.to_acc());
                    }
                } else {
                    // Two passes (mean, then squared deviations) in f64: no
                    // cancellation even when |mean| >> std.
                    let mean = sum_lanes(xr, |v| v.to_acc().wide()) * inv_n;
                    let var = sum_lanes(xr, |v| {
                        let d = v.to_acc().wide() - mean;
                        d * d
                    }) * inv_n;
                    let inv = T::A::of(1.0 / (var + eps).sqrt());
                    // Centre in f64 too, then scale in the compute type.
                    let centred = |v: T| T::A::of(v.to_acc().wide() - mean);
                    match &bi {
                        Some(bi) => {
                            for (((o, &v), &s), &b) in row.iter_mut().zip(xr).zip(sc).zip(*bi) {
                                *o = T::from_acc(centred(v) * inv * s.to_acc() + b.to_acc());
                            }
                        }
                        None => {
                            for ((o, &v), &s) in row.iter_mut().zip(xr).zip(sc) {
                                *o = T::from_acc(centred(v) * inv * s.to_acc());
                            }
                        }
                    }
                }
            }
        })
    });
    BufferPool::recycle(x);
    for t in [Some(sc_t), bi_t].into_iter().flatten() {
        BufferPool::recycle(t);
    }
    Ok(y)
}
