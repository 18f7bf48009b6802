//! Reduction kernels: reduce over axes, argmax/argmin, cumsum, topk.
//!
//! Accumulation types (one rounding at the end, none per step):
//! - f32, f16, bf16 accumulate in f32; f64 in f64.
//! - integer sum/prod/mean accumulate in 64 bits with wrapping arithmetic
//!   (sign-extended two's complement), and the result wraps back into the
//!   element type; for sum and prod that equals wrapping in the element type.
//!   Integer mean is the 64-bit sum divided by the count, truncated toward
//!   zero, so small integer types do not overflow before the division; the
//!   mean over an empty axis is 0 for integers (NaN for floats).
//! - max/min compare in the element's compute type and propagate NaN.
//!
//! Layout strategy for `reduce`: the input is made contiguous, size-1 axes are
//! dropped and adjacent axes of the same kind (reduced or kept) are merged.
//! If the last merged axis is reduced, every output folds contiguous slices
//! (8 independent lanes, so the loop vectorises); if it is kept, outputs come
//! in contiguous runs that accumulate whole rows at a time. Work is split over
//! outputs (and over columns of a run, and over the input for a full reduction)
//! with rayon.

use std::cmp::Ordering;

use stitch_core::ops::{ArgReduceOp, ReduceOp};
use stitch_core::shape::normalize_axis;
use stitch_core::{Buffer, DType, Element, Error, Result, Tensor, TensorType};

use super::elementwise::{by_kind, max_nan, min_nan, par_chunks, FloatElem, IntElem, Real};
use super::{dims, PAR_CHUNK};

/// A reduction: how to fold elements of `T` into an accumulator `A`.
trait Reducer<T: Copy>: Sync {
    type A: Copy + Send + Sync;
    fn init(&self) -> Self::A;
    fn step(&self, a: Self::A, x: T) -> Self::A;
    fn merge(&self, a: Self::A, b: Self::A) -> Self::A;
    /// The result from the accumulator of `n` elements.
    fn finish(&self, a: Self::A, n: usize) -> T;

    /// Folds a contiguous slice with 8 independent lanes (lets the compiler
    /// vectorise float folds, which it may not reassociate itself).
    #[inline]
    fn fold_slice(&self, acc: Self::A, xs: &[T]) -> Self::A {
        let mut lanes = [self.init(); 8];
        let chunks = xs.chunks_exact(8);
        let rest = chunks.remainder();
        for c in chunks {
            for (l, &x) in lanes.iter_mut().zip(c) {
                *l = self.step(*l, x);
            }
        }
        let (mut a, mut b) = (self.merge(lanes[0], lanes[4]), self.merge(lanes[1], lanes[5]));
        a = self.merge(a, self.merge(lanes[2], lanes[6]));
        b = self.merge(b, self.merge(lanes[3], lanes[7]));
        let mut acc = self.merge(acc, self.merge(a, b));
        for &x in rest {
            acc = self.step(acc, x);
        }
        acc
    }
}

struct FSum;
struct FMean;
struct FProd;
struct FMax;
struct FMin;

macro_rules! float_reducer {
    ($r:ty, $init:expr, |$a:ident, $x:ident| $step:expr, |$fa:ident, $n:ident| $fin:expr) => {
        impl<T: FloatElem> Reducer<T> for $r {
            type A = T::C;
            #[inline(always)]
            fn init(&self) -> T::C {
                $init
            }
            #[inline(always)]
            fn step(&self, $a: T::C, x: T) -> T::C {
                let $x = x.load();
                $step
            }
            #[inline(always)]
            fn merge(&self, $a: T::C, $x: T::C) -> T::C {
                $step
            }
            #[inline(always)]
            fn finish(&self, $fa: T::C, $n: usize) -> T {
                T::store($fin)
            }
        }
    };
}
float_reducer!(FSum, <T::C as Real>::ZERO, |a, x| a + x, |a, _n| a);
// 0 / 0 = NaN: the mean over an empty axis.
float_reducer!(FMean, <T::C as Real>::ZERO, |a, x| a + x, |a, n| a
    / <T::C as Real>::from_f64c(n as f64));
float_reducer!(FProd, <T::C as Real>::ONE, |a, x| a * x, |a, _n| a);
float_reducer!(FMax, <T::C as Real>::NEG_INFINITY, |a, x| max_nan(a, x), |a, _n| a);
float_reducer!(FMin, <T::C as Real>::INFINITY, |a, x| min_nan(a, x), |a, _n| a);

struct ISum;
struct IMean;
struct IProd;
struct IMax;
struct IMin;

macro_rules! int_reducer {
    ($r:ty, $A:ty, $init:expr, |$a:ident, $x:ident| $step:expr, |$b:ident, $y:ident| $merge:expr, |$fa:ident, $n:ident| $fin:expr) => {
        impl<T: IntElem> Reducer<T> for $r {
            type A = $A;
            #[inline(always)]
            fn init(&self) -> $A {
                $init
            }
            #[inline(always)]
            fn step(&self, $a: $A, $x: T) -> $A {
                $step
            }
            #[inline(always)]
            fn merge(&self, $b: $A, $y: $A) -> $A {
                $merge
            }
            #[inline(always)]
            fn finish(&self, $fa: $A, $n: usize) -> T {
                $fin
            }
        }
    };
}
int_reducer!(
    ISum,
    u64,
    0,
    |a, x| a.wrapping_add(x.to_bits64()),
    |a, b| a.wrapping_add(b),
    |a, _n| T::from_bits64(a)
);
int_reducer!(
    IProd,
    u64,
    1,
    |a, x| a.wrapping_mul(x.to_bits64()),
    |a, b| a.wrapping_mul(b),
    |a, _n| T::from_bits64(a)
);
int_reducer!(IMax, T, T::MIN, |a, x| a.max(x), |a, b| a.max(b), |a, _n| a);
int_reducer!(IMin, T, T::MAX, |a, x| a.min(x), |a, b| a.min(b), |a, _n| a);
int_reducer!(
    IMean,
    u64,
    0,
    |a, x| a.wrapping_add(x.to_bits64()),
    |a, b| a.wrapping_add(b),
    |a, n| {
        if n == 0 {
            T::ZERO
        } else if T::SIGNED {
            T::from_bits64(((a as i64) / n as i64) as u64)
        } else {
            T::from_bits64(a / n as u64)
        }
    }
);

/// A contiguous output tensor filled by `fill`.
fn build<T: Element>(out_dims: &[usize], fill: impl FnOnce(&mut [T])) -> Tensor {
    let n: usize = out_dims.iter().product();
    let mut buf = Buffer::zeroed(n * T::DTYPE.size_in_bytes());
    fill(buf.as_slice_mut::<T>());
    Tensor::from_buffer(buf, T::DTYPE, out_dims)
}

/// The elements of a contiguous tensor (empty tensors may report other strides).
fn elements<T: Element>(x: &Tensor) -> Result<&[T]> {
    if x.numel() == 0 {
        Ok(&[])
    } else {
        x.as_slice::<T>()
    }
}

/// Buffer offsets of every index of `dims` (row-major) with `strides`.
fn all_offsets(dims: &[(usize, usize)]) -> Vec<usize> {
    let mut offs = vec![0usize];
    for &(d, s) in dims {
        offs = offs.iter().flat_map(|&o| (0..d).map(move |i| o + i * s)).collect();
    }
    offs
}

/// Offset of row-major index `i` of `dims` with `strides`.
fn offset_of(mut i: usize, dims: &[(usize, usize)]) -> usize {
    let mut off = 0;
    for &(d, s) in dims.iter().rev() {
        off += (i % d) * s;
        i /= d;
    }
    off
}

/// Runs `f` over `out` in chunks of `chunk` elements (in parallel when there is more than one).
fn par_fill<T: Send>(out: &mut [T], chunk: usize, f: impl Fn(usize, &mut [T]) + Sync) {
    par_chunks(out, chunk, &f);
}

fn reduce_with<T: Element + Copy, R: Reducer<T>>(
    r: &R,
    x: &Tensor,
    reduced: &[bool],
    out_dims: &[usize],
) -> Result<Tensor> {
    let x = x.contiguous();
    let data = elements::<T>(&x)?;
    let shape = x.shape();
    let n_red: usize = shape.iter().zip(reduced).filter(|(_, &r)| r).map(|(&d, _)| d).product();
    let n_out: usize = shape
        .iter()
        .zip(reduced)
        .filter(|(_, &r)| !r)
        .map(|(&d, _)| d)
        .product();
    if n_out != out_dims.iter().product::<usize>() {
        return Err(Error::invalid(format!(
            "reduce: input {shape:?} reduced over {reduced:?} does not give output {out_dims:?}"
        )));
    }
    if n_out == 0 || n_red == 0 {
        let empty = r.finish(r.init(), 0);
        return Ok(build(out_dims, |o: &mut [T]| o.fill(empty)));
    }

    // Merge adjacent axes of the same kind; size-1 axes do not matter.
    let mut groups: Vec<(usize, bool)> = Vec::new();
    for (&d, &red) in shape.iter().zip(reduced) {
        match groups.last_mut() {
            _ if d == 1 => {}
            Some((g, k)) if *k == red => *g *= d,
            _ => groups.push((d, red)),
        }
    }
    if groups.is_empty() {
        groups.push((1, true));
    }
    let mut stride = 1;
    let mut with_strides: Vec<(usize, usize, bool)> = vec![(0, 0, false); groups.len()];
    for (i, &(d, red)) in groups.iter().enumerate().rev() {
        with_strides[i] = (d, stride, red);
        stride *= d;
    }
    let (last_dim, _, last_red) = *with_strides.last().expect("non-empty");
    let outer = &with_strides[..with_strides.len() - 1];
    let kept_outer: Vec<(usize, usize)> = outer.iter().filter(|g| !g.2).map(|g| (g.0, g.1)).collect();
    let red_outer: Vec<(usize, usize)> = outer.iter().filter(|g| g.2).map(|g| (g.0, g.1)).collect();
    let red_offsets = all_offsets(&red_outer);

    Ok(build(out_dims, |out: &mut [T]| {
        if last_red {
            let inner = last_dim;
            if n_out == 1 {
                // Everything reduces to one value: split the input over threads.
                let mut partials = vec![r.init(); data.len().div_ceil(PAR_CHUNK)];
                par_fill(&mut partials, 1, |c, p| {
                    let part = &data[c * PAR_CHUNK..((c + 1) * PAR_CHUNK).min(data.len())];
                    p[0] = r.fold_slice(r.init(), part);
                });
                let acc = partials.into_iter().fold(r.init(), |a, b| r.merge(a, b));
                out[0] = r.finish(acc, n_red);
                return;
            }
            par_fill(out, PAR_CHUNK / n_red, |first, o| {
                for (i, o) in o.iter_mut().enumerate() {
                    let base = offset_of(first + i, &kept_outer);
                    let acc = red_offsets.iter().fold(r.init(), |acc, &ro| {
                        r.fold_slice(acc, &data[base + ro..base + ro + inner])
                    });
                    *o = r.finish(acc, n_red);
                }
            });
        } else {
            // Outputs come in runs of `k` contiguous elements; each run adds whole rows.
            let k = last_dim;
            let width = (PAR_CHUNK / n_red).clamp(64, 4096).min(k);
            let run = |u: usize, o: &mut [T]| {
                let base = offset_of(u, &kept_outer);
                let col_chunk = |c0: usize, o: &mut [T]| {
                    let mut acc = vec![r.init(); o.len()];
                    for &ro in &red_offsets {
                        let start = base + ro + c0;
                        for (a, &x) in acc.iter_mut().zip(&data[start..start + o.len()]) {
                            *a = r.step(*a, x);
                        }
                    }
                    for (o, &a) in o.iter_mut().zip(&acc) {
                        *o = r.finish(a, n_red);
                    }
                };
                par_fill(o, width, col_chunk);
            };
            let runs_per_task = (PAR_CHUNK / (n_red * k)).max(1);
            par_fill(out, runs_per_task * k, |first, o| {
                for (j, o) in o.chunks_mut(k).enumerate() {
                    run(first / k + j, o);
                }
            });
        }
    }))
}

/// Reduce over `axes` (empty = all).
pub fn reduce(op: ReduceOp, x: &Tensor, axes: &[i64], keepdims: bool, out: &TensorType) -> Result<Tensor> {
    let od = dims(out)?;
    let rank = x.rank();
    let mut reduced = vec![axes.is_empty(); rank];
    for &a in axes {
        let ax = normalize_axis(a, rank).ok_or_else(|| {
            Error::invalid(format!(
                "{}: axis {a} out of range for shape {:?}",
                op.name(),
                x.shape()
            ))
        })?;
        reduced[ax] = true;
    }
    let expect: Vec<usize> = x
        .shape()
        .iter()
        .zip(&reduced)
        .filter_map(|(&d, &r)| if r { keepdims.then_some(1) } else { Some(d) })
        .collect();
    if expect.as_slice() != od.as_slice() {
        return Err(Error::invalid(format!(
            "{}: reducing {:?} over {axes:?} (keepdims {keepdims}) gives {expect:?}, not the output {out}",
            op.name(),
            x.shape()
        )));
    }
    by_kind!(x.dtype(),
        float F => match op {
            ReduceOp::Sum => reduce_with::<F, _>(&FSum, x, &reduced, &od),
            ReduceOp::Mean => reduce_with::<F, _>(&FMean, x, &reduced, &od),
            ReduceOp::Max => reduce_with::<F, _>(&FMax, x, &reduced, &od),
            ReduceOp::Min => reduce_with::<F, _>(&FMin, x, &reduced, &od),
            ReduceOp::Prod => reduce_with::<F, _>(&FProd, x, &reduced, &od),
        },
        int I => match op {
            ReduceOp::Sum => reduce_with::<I, _>(&ISum, x, &reduced, &od),
            ReduceOp::Mean => reduce_with::<I, _>(&IMean, x, &reduced, &od),
            ReduceOp::Max => reduce_with::<I, _>(&IMax, x, &reduced, &od),
            ReduceOp::Min => reduce_with::<I, _>(&IMin, x, &reduced, &od),
            ReduceOp::Prod => reduce_with::<I, _>(&IProd, x, &reduced, &od),
        },
        bool => Err(Error::invalid(format!("{} needs a numeric tensor, got bool", op.name()))),
    )
}

/// A comparison key: floats compare with NaN above everything.
trait Key: Copy + PartialOrd + Send + Sync {
    fn nan(self) -> bool;
    /// Total order with NaN greatest (NaNs are equal to each other).
    #[inline(always)]
    fn total(self, other: Self) -> Ordering {
        match (self.nan(), other.nan()) {
            (true, true) => Ordering::Equal,
            (true, false) => Ordering::Greater,
            (false, true) => Ordering::Less,
            _ => self.partial_cmp(&other).unwrap_or(Ordering::Equal),
        }
    }
}
impl Key for f32 {
    #[inline(always)]
    fn nan(self) -> bool {
        self.is_nan()
    }
}
impl Key for f64 {
    #[inline(always)]
    fn nan(self) -> bool {
        self.is_nan()
    }
}
macro_rules! int_key {
    ($($t:ty),*) => {$(
        impl Key for $t {
            #[inline(always)]
            fn nan(self) -> bool { false }
        }
    )*};
}
int_key!(i8, i16, i32, i64, u8, u16, u32, u64);

/// Whether `x` (at a later index) replaces `best` as argmax (`MAX`) or argmin.
/// NaN counts as the extreme; with `LAST` ties go to the later index.
#[inline(always)]
fn better<K: Key, const MAX: bool, const LAST: bool>(x: K, best: K) -> bool {
    if best.nan() {
        return LAST && x.nan();
    }
    if x.nan() {
        return true;
    }
    match (MAX, LAST) {
        (true, false) => x > best,
        (true, true) => x >= best,
        (false, false) => x < best,
        (false, true) => x <= best,
    }
}

/// Splits `shape` around `axis`: (product before, size, product after).
fn split3(shape: &[usize], axis: usize) -> (usize, usize, usize) {
    (
        shape[..axis].iter().product(),
        shape[axis],
        shape[axis + 1..].iter().product(),
    )
}

fn arg_with<T: Element + Copy, K: Key, const MAX: bool, const LAST: bool>(
    x: &Tensor,
    axis: usize,
    out_dims: &[usize],
    key: impl Fn(T) -> K + Sync,
) -> Result<Tensor> {
    let x = x.contiguous();
    let data = elements::<T>(&x)?;
    let (pre, n, post) = split3(x.shape(), axis);
    if n == 0 {
        return Err(Error::invalid(format!(
            "arg reduction over the empty axis {axis} of {:?}",
            x.shape()
        )));
    }
    if pre * post != out_dims.iter().product::<usize>() {
        return Err(Error::invalid(format!(
            "arg reduction of {:?} over axis {axis} cannot give {out_dims:?}",
            x.shape()
        )));
    }
    Ok(build(out_dims, |out: &mut [i64]| {
        if post == 1 {
            par_fill(out, PAR_CHUNK / n, |first, o| {
                for (j, o) in o.iter_mut().enumerate() {
                    let row = &data[(first + j) * n..(first + j + 1) * n];
                    let (mut best, mut bi) = (key(row[0]), 0);
                    for (i, &v) in row.iter().enumerate().skip(1) {
                        let kv = key(v);
                        if better::<K, MAX, LAST>(kv, best) {
                            best = kv;
                            bi = i;
                        }
                    }
                    *o = bi as i64;
                }
            });
        } else {
            let per_task = (PAR_CHUNK / (n * post)).max(1);
            par_fill(out, per_task * post, |first, o| {
                for (j, o) in o.chunks_mut(post).enumerate() {
                    let p = first / post + j;
                    let block = &data[p * n * post..(p + 1) * n * post];
                    let mut best: Vec<K> = block[..post].iter().map(|&v| key(v)).collect();
                    o.fill(0);
                    for (i, row) in block.chunks_exact(post).enumerate().skip(1) {
                        for ((b, bi), &v) in best.iter_mut().zip(o.iter_mut()).zip(row) {
                            let kv = key(v);
                            if better::<K, MAX, LAST>(kv, *b) {
                                *b = kv;
                                *bi = i as i64;
                            }
                        }
                    }
                }
            });
        }
    }))
}

fn arg_dispatch<T: Element + Copy, K: Key>(
    op: ArgReduceOp,
    last: bool,
    x: &Tensor,
    axis: usize,
    od: &[usize],
    key: impl Fn(T) -> K + Sync,
) -> Result<Tensor> {
    match (op, last) {
        (ArgReduceOp::ArgMax, false) => arg_with::<T, K, true, false>(x, axis, od, key),
        (ArgReduceOp::ArgMax, true) => arg_with::<T, K, true, true>(x, axis, od, key),
        (ArgReduceOp::ArgMin, false) => arg_with::<T, K, false, false>(x, axis, od, key),
        (ArgReduceOp::ArgMin, true) => arg_with::<T, K, false, true>(x, axis, od, key),
    }
}

fn norm_axis(what: &str, axis: i64, x: &Tensor) -> Result<usize> {
    normalize_axis(axis, x.rank())
        .ok_or_else(|| Error::invalid(format!("{what}: axis {axis} out of range for shape {:?}", x.shape())))
}

/// argmax / argmin along `axis` (i64 output).
pub fn arg_reduce(
    op: ArgReduceOp,
    x: &Tensor,
    axis: i64,
    keepdims: bool,
    select_last_index: bool,
    out: &TensorType,
) -> Result<Tensor> {
    let od = dims(out)?;
    let ax = norm_axis(op.name(), axis, x)?;
    let _ = keepdims; // only changes the output shape, which `out` already has
    by_kind!(x.dtype(),
        float F => arg_dispatch::<F, <F as FloatElem>::C>(op, select_last_index, x, ax, &od, |v: F| v.load()),
        int I => arg_dispatch::<I, I>(op, select_last_index, x, ax, &od, |v: I| v),
        bool => Err(Error::invalid(format!("{} needs a numeric tensor, got bool", op.name()))),
    )
}

fn cumsum_with<T: Element + Copy, R: Reducer<T>>(
    r: &R,
    x: &Tensor,
    axis: usize,
    exclusive: bool,
    reverse: bool,
) -> Result<Tensor> {
    let x = x.contiguous();
    let data = elements::<T>(&x)?;
    let (_, n, post) = split3(x.shape(), axis);
    let block = n * post;
    if block == 0 {
        return Ok(Tensor::zeros(T::DTYPE, x.shape()));
    }
    Ok(build(x.shape(), |out: &mut [T]| {
        let per_task = (PAR_CHUNK / block).max(1);
        par_fill(out, per_task * block, |first, o| {
            let mut acc = vec![r.init(); post];
            for (j, o) in o.chunks_mut(block).enumerate() {
                let src = &data[first + j * block..first + (j + 1) * block];
                acc.fill(r.init());
                let mut row = |i: usize| {
                    let (o, x) = (&mut o[i * post..(i + 1) * post], &src[i * post..(i + 1) * post]);
                    for ((o, a), &x) in o.iter_mut().zip(acc.iter_mut()).zip(x) {
                        if exclusive {
                            *o = r.finish(*a, 1);
                            *a = r.step(*a, x);
                        } else {
                            *a = r.step(*a, x);
                            *o = r.finish(*a, 1);
                        }
                    }
                };
                if reverse {
                    (0..n).rev().for_each(&mut row);
                } else {
                    (0..n).for_each(&mut row);
                }
            }
        });
    }))
}

/// Cumulative sum along `axis`.
pub fn cumsum(x: &Tensor, axis: i64, exclusive: bool, reverse: bool) -> Result<Tensor> {
    let ax = norm_axis("cumsum", axis, x)?;
    by_kind!(x.dtype(),
        float F => cumsum_with::<F, _>(&FSum, x, ax, exclusive, reverse),
        int I => cumsum_with::<I, _>(&ISum, x, ax, exclusive, reverse),
        bool => Err(Error::invalid("cumsum needs a numeric tensor, got bool")),
    )
}

fn topk_with<T: Element + Copy, K: Key>(
    x: &Tensor,
    k: usize,
    axis: usize,
    largest: bool,
    key: impl Fn(T) -> K + Sync,
) -> Result<Vec<Tensor>> {
    let x = x.contiguous();
    let data = elements::<T>(&x)?;
    let (pre, n, post) = split3(x.shape(), axis);
    if k > n {
        return Err(Error::invalid(format!(
            "topk: k = {k} exceeds the size {n} of axis {axis} of {:?}",
            x.shape()
        )));
    }
    let mut od = x.shape().to_vec();
    od[axis] = k;
    // Indices of the top k per row (row = (p, q)), in [pre, post, k] order.
    let mut rows = vec![0usize; pre * post * k];
    if k > 0 {
        let order = |a: &(K, usize), b: &(K, usize)| {
            let by_value = if largest { b.0.total(a.0) } else { a.0.total(b.0) };
            by_value.then(a.1.cmp(&b.1))
        };
        let per_task = (PAR_CHUNK / n.max(1)).max(1);
        par_fill(&mut rows, per_task * k, |first, o| {
            let mut keyed: Vec<(K, usize)> = Vec::with_capacity(n);
            for (j, o) in o.chunks_mut(k).enumerate() {
                let row = first / k + j;
                let (p, q) = (row / post, row % post);
                let base = p * n * post + q;
                keyed.clear();
                keyed.extend((0..n).map(|i| (key(data[base + i * post]), i)));
                if k < n {
                    keyed.select_nth_unstable_by(k - 1, order);
                }
                keyed[..k].sort_unstable_by(order);
                for (o, &(_, i)) in o.iter_mut().zip(&keyed[..k]) {
                    *o = i;
                }
            }
        });
    }
    // Scatter into [pre, k, post] order, a whole block of `k * post` per p.
    let kp = k * post;
    let per_task = (PAR_CHUNK / kp.max(1)).max(1) * kp;
    let gather = |first: usize, o: &mut [usize]| {
        for (e, o) in o.iter_mut().enumerate() {
            let e = first + e;
            let (p, j, q) = (e / kp, (e % kp) / post, e % post);
            *o = rows[(p * post + q) * k + j];
        }
    };
    let mut picked = vec![0usize; pre * kp];
    par_fill(&mut picked, per_task, gather);
    let values = build(&od, |out: &mut [T]| {
        par_fill(out, per_task, |first, o| {
            for (e, (o, &i)) in o.iter_mut().zip(&picked[first..]).enumerate() {
                let e = first + e;
                let (p, q) = (e / kp, e % post);
                *o = data[p * n * post + i * post + q];
            }
        })
    });
    let indices = build(&od, |out: &mut [i64]| {
        for (o, &i) in out.iter_mut().zip(&picked) {
            *o = i as i64;
        }
    });
    Ok(vec![values, indices])
}

/// Top-k values and i64 indices along `axis`.
///
/// Always sorted (descending for `largest`, ascending otherwise), whatever
/// `sorted` says; ties go to the lower index; NaN ranks above every number.
pub fn topk(x: &Tensor, k: usize, axis: i64, largest: bool, sorted: bool) -> Result<Vec<Tensor>> {
    let _ = sorted; // sorted output is a valid answer for sorted = false too
    let ax = norm_axis("topk", axis, x)?;
    by_kind!(x.dtype(),
        float F => topk_with::<F, <F as FloatElem>::C>(x, k, ax, largest, |v: F| v.load()),
        int I => topk_with::<I, I>(x, k, ax, largest, |v: I| v),
        bool => Err(Error::invalid("topk needs a numeric tensor, got bool")),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn offsets_enumerate_row_major() {
        assert_eq!(all_offsets(&[(2, 10), (3, 1)]), vec![0, 1, 2, 10, 11, 12]);
        assert_eq!(offset_of(4, &[(2, 10), (3, 1)]), 11);
        assert_eq!(all_offsets(&[]), vec![0]);
    }

    #[test]
    fn cumsum_rejects_bool() {
        // Bool is rejected rather than reduced.
        let x = Tensor::zeros(DType::Bool, &[2]);
        assert!(cumsum(&x, 0, false, false).is_err());
    }
}
