//! Evaluation of fused regions (`Op::Fused`): the whole expression DAG runs
//! tile by tile (a few hundred elements at a time, in per-task scratch), so
//! intermediates never touch memory; only the inputs are read and the output
//! written. An optional trailing reduction accumulates tile results directly.
//!
//! Computation is in f64 when any value of the region is f64, else in f32
//! (f16/bf16 inputs are widened). Unlike the unfused graph, f16/bf16
//! intermediates are not rounded between ops (as in XLA); a `cast` inside the
//! region does round.

use rayon::prelude::*;
use stitch_core::ops::fused::{Expr, Region, RegionReduce};
use stitch_core::ops::{BinaryOp, ReduceOp, UnaryOp};
use stitch_core::{dispatch_dtype, Buffer, DType, Element, Error, Result, Tensor, TensorType};

use super::elementwise::{max_nan, min_nan, Real};
use super::scratch::ScratchElem;
use super::{dims, simd_math, PAR_CHUNK};

/// Elements per tile: small enough that all of a region's registers stay in L1/L2.
const TILE: usize = 256;

/// Runs a fused region.
pub fn fused(region: &Region, inputs: &[Tensor], outputs: &[TensorType]) -> Result<Tensor> {
    if region.outputs.len() != 1 || outputs.len() != 1 {
        return Err(Error::invalid(
            "fused regions with several outputs are not supported by the CPU backend yet",
        ));
    }
    if inputs.iter().any(|t| t.rank() > 16) || outputs[0].shape.rank() > 16 {
        return Err(Error::invalid("fused regions support up to 16 dimensions"));
    }
    // An expression is f64 exactly when an input, scalar or cast it derives from is.
    let f64_inputs = inputs.iter().any(|t| t.dtype() == DType::F64);
    let f64_exprs = region
        .exprs
        .iter()
        .any(|e| matches!(e, Expr::Scalar(_, DType::F64) | Expr::Cast(DType::F64, _)));
    if f64_inputs || f64_exprs {
        eval::<f64>(region, inputs, &outputs[0])
    } else {
        eval::<f32>(region, inputs, &outputs[0])
    }
}

fn eval<C: Compute>(region: &Region, inputs: &[Tensor], out: &TensorType) -> Result<Tensor> {
    let out_dims = dims(out)?;
    match &region.reduce {
        None => {
            let views: stitch_core::smallvec::SmallVec<[Tensor; 8]> = inputs
                .iter()
                .map(|t| t.broadcast_to(&out_dims))
                .collect::<Result<_>>()?;
            let program = Program::<C>::new(region, &views);
            elementwise(&program, &out_dims, out.dtype)
        }
        Some(r) => {
            let mut shape: Vec<usize> = Vec::new();
            for t in inputs {
                shape = broadcast(&shape, t.shape()).ok_or_else(|| {
                    Error::invalid(format!(
                        "region inputs {:?} and {:?} do not broadcast",
                        shape,
                        t.shape()
                    ))
                })?;
            }
            let kept: Vec<usize> = (0..shape.len()).filter(|a| !r.axes.contains(a)).collect();
            let perm: Vec<usize> = kept.iter().chain(&r.axes).copied().collect();
            let views: Vec<Tensor> = inputs
                .iter()
                .map(|t| t.broadcast_to(&shape)?.permute(&perm))
                .collect::<Result<_>>()?;
            let permuted: Vec<usize> = perm.iter().map(|&p| shape[p]).collect();
            let rows: usize = kept.iter().map(|&a| shape[a]).product();
            let len: usize = r.axes.iter().map(|&a| shape[a]).product();
            let program = Program::<C>::new(region, &views);
            reduce(&program, r, &permuted, rows, len, &out_dims, out.dtype)
        }
    }
}

fn broadcast(a: &[usize], b: &[usize]) -> Option<Vec<usize>> {
    let r = a.len().max(b.len());
    (0..r)
        .map(|i| {
            let da = if i + a.len() >= r { a[i + a.len() - r] } else { 1 };
            let db = if i + b.len() >= r { b[i + b.len() - r] } else { 1 };
            match (da, db) {
                (1, d) | (d, 1) => Some(d),
                (x, y) if x == y => Some(x),
                _ => None,
            }
        })
        .collect()
}

/// The compute type of a region: f32 or f64.
pub(crate) trait Compute: Real + Default + ScratchElem {
    fn from_f64(v: f64) -> Self;
    fn to_f64(self) -> f64;
    /// Evaluates `op` over a tile with a vectorised kernel where this type has
    /// one (`simd_math`); returns false to fall back to the element loop.
    #[inline(always)]
    fn unary_simd(_op: UnaryOp, _a: &[Self], _dst: &mut [Self]) -> bool {
        false
    }
}
impl Compute for f32 {
    #[inline(always)]
    fn from_f64(v: f64) -> Self {
        v as f32
    }
    #[inline(always)]
    fn to_f64(self) -> f64 {
        self as f64
    }
    #[inline(always)]
    fn unary_simd(op: UnaryOp, a: &[f32], dst: &mut [f32]) -> bool {
        match op {
            UnaryOp::Exp => simd_math::exp_f32(a, dst),
            UnaryOp::Tanh => simd_math::tanh_f32(a, dst),
            UnaryOp::Sigmoid => simd_math::sigmoid_f32(a, dst),
            UnaryOp::Silu => simd_math::silu_f32(a, dst),
            UnaryOp::Erf => simd_math::erf_f32(a, dst),
            UnaryOp::Gelu => simd_math::gelu_f32(a, dst),
            _ => return false,
        }
        true
    }
}
impl Compute for f64 {
    #[inline(always)]
    fn from_f64(v: f64) -> Self {
        v
    }
    #[inline(always)]
    fn to_f64(self) -> f64 {
        self
    }
}

/// A region ready to evaluate over views already laid out in iteration order.
struct Program<'a, C> {
    region: &'a Region,
    views: &'a [Tensor],
    /// Iteration shape (the views' shared shape).
    shape: stitch_core::Dims,
    _c: std::marker::PhantomData<C>,
}

impl<'a, C: Compute> Program<'a, C> {
    fn new(region: &'a Region, views: &'a [Tensor]) -> Self {
        let shape = views
            .first()
            .map(|v| stitch_core::Dims::from_slice(v.shape()))
            .unwrap_or_default();
        Program {
            region,
            views,
            shape,
            _c: std::marker::PhantomData,
        }
    }

    /// Fills the registers of scalar expressions, which no tile overwrites.
    fn init_scalars(&self, regs: &mut [C]) {
        for (i, e) in self.region.exprs.iter().enumerate() {
            if let Expr::Scalar(v, d) = e {
                regs[i * TILE..(i + 1) * TILE].fill(C::from_f64(round_to(*v, *d)));
            }
        }
    }

    /// Evaluates flat elements `start..start + n` (n <= TILE) of the iteration
    /// space into `regs` (one TILE-sized register per expression, scalars filled
    /// by [`Program::init_scalars`]); returns the index of the output register.
    fn run_tile(&self, start: usize, n: usize, regs: &mut [C]) -> usize {
        for (i, e) in self.region.exprs.iter().enumerate() {
            let (before, rest) = regs.split_at_mut(i * TILE);
            let dst = &mut rest[..n];
            let reg = |j: usize| &before[j * TILE..j * TILE + n];
            match e {
                Expr::Input(k) => load(&self.views[*k], &self.shape, start, dst),
                Expr::Scalar(..) => {}
                Expr::Unary(op, a) => unary(*op, reg(*a), dst),
                Expr::Binary(op, a, b) => binary(*op, reg(*a), reg(*b), dst),
                Expr::Where(c, a, b) => {
                    for (((d, &c), &a), &b) in dst.iter_mut().zip(reg(*c)).zip(reg(*a)).zip(reg(*b)) {
                        *d = if c != C::ZERO { a } else { b };
                    }
                }
                Expr::Cast(to, a) => {
                    for (d, &v) in dst.iter_mut().zip(reg(*a)) {
                        *d = C::from_f64(round_to(v.to_f64(), *to));
                    }
                }
            }
        }
        self.region.outputs[0]
    }
}

/// The value `v` takes when stored as `dtype` (bool → 0/1).
#[inline]
fn round_to(v: f64, dtype: DType) -> f64 {
    match dtype {
        DType::F64 => v,
        DType::F32 => v as f32 as f64,
        DType::F16 => half::f16::from_f64(v).to_f64(),
        DType::BF16 => half::bf16::from_f64(v).to_f64(),
        DType::Bool => (v != 0.0) as u8 as f64,
        other => dispatch_dtype!(other, T => Element::to_f64(<T as Element>::from_f64(v))),
    }
}

/// Loads elements `start..start + dst.len()` (row-major over `shape`) of a strided view.
fn load<C: Compute>(view: &Tensor, shape: &[usize], start: usize, dst: &mut [C]) {
    dispatch_dtype!(view.dtype(), T => load_typed::<T, C>(view, shape, start, dst))
}

fn load_typed<T: Element, C: Compute>(view: &Tensor, shape: &[usize], start: usize, dst: &mut [C]) {
    let data = view.buffer().as_slice::<T>();
    let strides = view.strides();
    let rank = shape.len();
    if rank == 0 {
        dst.fill(C::from_f64(data[view.offset()].to_f64()));
        return;
    }
    // Multi-index of `start`.
    let mut idx = [0usize; 16];
    let mut rem = start;
    for ax in (0..rank).rev() {
        idx[ax] = rem % shape[ax];
        rem /= shape[ax];
    }
    let mut base: isize = view.offset() as isize;
    for ax in 0..rank {
        base += idx[ax] as isize * strides[ax];
    }
    let last = rank - 1;
    let (len_last, stride_last) = (shape[last], strides[last]);
    let mut done = 0;
    while done < dst.len() {
        let run = (len_last - idx[last]).min(dst.len() - done);
        let out = &mut dst[done..done + run];
        match stride_last {
            0 => out.fill(C::from_f64(data[base as usize].to_f64())),
            1 => {
                let s = base as usize;
                for (d, &v) in out.iter_mut().zip(&data[s..s + run]) {
                    *d = C::from_f64(v.to_f64());
                }
            }
            st => {
                for (j, d) in out.iter_mut().enumerate() {
                    *d = C::from_f64(data[(base + j as isize * st) as usize].to_f64());
                }
            }
        }
        done += run;
        // Advance the multi-index by `run` along the last axis, carrying.
        base += run as isize * stride_last;
        idx[last] += run;
        let mut ax = last;
        while idx[ax] == shape[ax] && ax > 0 {
            base -= shape[ax] as isize * strides[ax];
            idx[ax] = 0;
            ax -= 1;
            idx[ax] += 1;
            base += strides[ax];
        }
    }
}

fn unary<C: Compute>(op: UnaryOp, a: &[C], dst: &mut [C]) {
    if C::unary_simd(op, a, dst) {
        return;
    }
    let c = C::from_f64;
    let (zero, one, half) = (C::ZERO, C::ONE, c(0.5));
    macro_rules! map {
        (|$v:ident| $e:expr) => {
            for (d, &$v) in dst.iter_mut().zip(a) {
                *d = $e;
            }
        };
    }
    match op {
        UnaryOp::Neg => map!(|v| -v),
        UnaryOp::Abs => map!(|v| v.abs()),
        UnaryOp::Exp => map!(|v| v.exp()),
        UnaryOp::Log => map!(|v| v.ln()),
        UnaryOp::Sqrt => map!(|v| v.sqrt()),
        UnaryOp::Rsqrt => map!(|v| one / v.sqrt()),
        UnaryOp::Sin => map!(|v| v.sin()),
        UnaryOp::Cos => map!(|v| v.cos()),
        UnaryOp::Tanh => map!(|v| v.tanh()),
        UnaryOp::Sigmoid => map!(|v| one / (one + (-v).exp())),
        UnaryOp::Erf => map!(|v| v.erf()),
        UnaryOp::Relu => map!(|v| if v < zero { zero } else { v }),
        UnaryOp::Gelu => {
            let k = c(std::f64::consts::FRAC_1_SQRT_2);
            map!(|v| half * v * (one + (v * k).erf()))
        }
        UnaryOp::GeluTanh => {
            let (s, k) = (c((2.0 / std::f64::consts::PI).sqrt()), c(0.044715));
            map!(|v| half * v * (one + (s * (v + k * v * v * v)).tanh()))
        }
        UnaryOp::Silu => map!(|v| v / (one + (-v).exp())),
        UnaryOp::Floor => map!(|v| v.floor()),
        UnaryOp::Ceil => map!(|v| v.ceil()),
        UnaryOp::Round => map!(|v| v.round_even()),
        UnaryOp::Sign => map!(|v| if v > zero {
            one
        } else if v < zero {
            -one
        } else {
            v
        }),
        UnaryOp::Reciprocal => map!(|v| one / v),
        UnaryOp::Not => map!(|v| if v == zero { one } else { zero }),
    }
}

fn binary<C: Compute>(op: BinaryOp, a: &[C], b: &[C], dst: &mut [C]) {
    let (zero, one) = (C::ZERO, C::ONE);
    let flag = |t: bool| if t { one } else { zero };
    macro_rules! map {
        (|$x:ident, $y:ident| $e:expr) => {
            for ((d, &$x), &$y) in dst.iter_mut().zip(a).zip(b) {
                *d = $e;
            }
        };
    }
    match op {
        BinaryOp::Add => map!(|x, y| x + y),
        BinaryOp::Sub => map!(|x, y| x - y),
        BinaryOp::Mul => map!(|x, y| x * y),
        BinaryOp::Div => map!(|x, y| x / y),
        BinaryOp::Pow => map!(|x, y| x.powf(y)),
        BinaryOp::Max => map!(|x, y| max_nan(x, y)),
        BinaryOp::Min => map!(|x, y| min_nan(x, y)),
        BinaryOp::Mod => map!(|x, y| {
            let r = x % y;
            if r != zero && ((r < zero) != (y < zero)) {
                r + y
            } else {
                r
            }
        }),
        BinaryOp::Fmod => map!(|x, y| x % y),
        BinaryOp::Equal => map!(|x, y| flag(x == y)),
        BinaryOp::NotEqual => map!(|x, y| flag(x != y)),
        BinaryOp::Less => map!(|x, y| flag(x < y)),
        BinaryOp::LessEqual => map!(|x, y| flag(x <= y)),
        BinaryOp::Greater => map!(|x, y| flag(x > y)),
        BinaryOp::GreaterEqual => map!(|x, y| flag(x >= y)),
        BinaryOp::And => map!(|x, y| flag(x != zero && y != zero)),
        BinaryOp::Or => map!(|x, y| flag(x != zero || y != zero)),
        BinaryOp::Xor => map!(|x, y| flag((x != zero) != (y != zero))),
    }
}

fn store<C: Compute>(dtype: DType, src: &[C], dst: &mut [u8]) {
    dispatch_dtype!(dtype, T => {
        let out: &mut [T] = bytemuck::cast_slice_mut(dst);
        for (o, &v) in out.iter_mut().zip(src) {
            *o = <T as Element>::from_f64(Compute::to_f64(v));
        }
    })
}

fn elementwise<C: Compute>(p: &Program<C>, out_dims: &[usize], dtype: DType) -> Result<Tensor> {
    let es = dtype.size_in_bytes();
    // Every element is stored below.
    let mut t_out = Tensor::empty(dtype, out_dims);
    let chunk = PAR_CHUNK.div_ceil(TILE) * TILE;
    let nexprs = p.region.exprs.len();
    t_out
        .buffer_mut()
        .as_bytes_mut()
        .par_chunks_mut(chunk * es)
        .enumerate()
        .for_each(|(ci, out)| {
            C::with_scratch(nexprs * TILE, |regs| {
                p.init_scalars(regs);
                let base = ci * chunk;
                let n_here = out.len() / es;
                let mut t = 0;
                while t < n_here {
                    let n = TILE.min(n_here - t);
                    let o = p.run_tile(base + t, n, regs);
                    store(dtype, &regs[o * TILE..o * TILE + n], &mut out[t * es..(t + n) * es]);
                    t += n;
                }
            })
        });
    Ok(t_out)
}

/// Reduction accumulator: f64 for sums and products (accuracy), the compute type for max/min.
#[derive(Clone, Copy)]
struct Acc {
    value: f64,
}

fn identity(op: ReduceOp) -> f64 {
    match op {
        ReduceOp::Sum | ReduceOp::Mean => 0.0,
        ReduceOp::Prod => 1.0,
        ReduceOp::Max => f64::NEG_INFINITY,
        ReduceOp::Min => f64::INFINITY,
    }
}

fn combine(op: ReduceOp, a: f64, b: f64) -> f64 {
    match op {
        ReduceOp::Sum | ReduceOp::Mean => a + b,
        ReduceOp::Prod => a * b,
        ReduceOp::Max => max_nan(a, b),
        ReduceOp::Min => min_nan(a, b),
    }
}

fn accumulate_tile<C: Compute>(op: ReduceOp, vals: &[C]) -> f64 {
    match op {
        ReduceOp::Sum | ReduceOp::Mean => {
            // Sum the tile in the compute type (vectorised), then widen.
            let mut lanes = [C::ZERO; 8];
            let mut chunks = vals.chunks_exact(8);
            for c in &mut chunks {
                for (l, &v) in lanes.iter_mut().zip(c) {
                    *l = *l + v;
                }
            }
            let tail: f64 = chunks.remainder().iter().map(|v| v.to_f64()).sum();
            lanes.iter().map(|v| v.to_f64()).sum::<f64>() + tail
        }
        ReduceOp::Prod => vals.iter().fold(1.0, |a, v| a * v.to_f64()),
        ReduceOp::Max => vals.iter().fold(f64::NEG_INFINITY, |a, v| max_nan(a, v.to_f64())),
        ReduceOp::Min => vals.iter().fold(f64::INFINITY, |a, v| min_nan(a, v.to_f64())),
    }
}

#[allow(clippy::too_many_arguments)]
fn reduce<C: Compute>(
    p: &Program<C>,
    r: &RegionReduce,
    _permuted: &[usize],
    rows: usize,
    len: usize,
    out_dims: &[usize],
    dtype: DType,
) -> Result<Tensor> {
    // Split long rows into segments so that few-row reductions still use every thread.
    let threads = rayon::current_num_threads().max(1);
    let segments = if rows >= 2 * threads {
        1
    } else {
        (2 * threads).div_ceil(rows.max(1)).min(len.div_ceil(TILE)).max(1)
    };
    let seg_len = len.div_ceil(segments).div_ceil(TILE) * TILE;
    let nexprs = p.region.exprs.len();
    let partials: Vec<Acc> = (0..rows * segments)
        .into_par_iter()
        .map_init(
            || {
                let mut regs = vec![C::default(); nexprs * TILE];
                p.init_scalars(&mut regs);
                regs
            },
            |regs, item| {
                let (row, seg) = (item / segments, item % segments);
                let (from, to) = ((seg * seg_len).min(len), ((seg + 1) * seg_len).min(len));
                let mut acc = identity(r.op);
                let mut t = from;
                while t < to {
                    let n = TILE.min(to - t);
                    let o = p.run_tile(row * len + t, n, regs);
                    acc = combine(r.op, acc, accumulate_tile(r.op, &regs[o * TILE..o * TILE + n]));
                    t += n;
                }
                Acc { value: acc }
            },
        )
        .collect();
    let mut values: Vec<C> = Vec::with_capacity(rows);
    for row in 0..rows {
        let mut acc = identity(r.op);
        for seg in 0..segments {
            acc = combine(r.op, acc, partials[row * segments + seg].value);
        }
        if r.op == ReduceOp::Mean {
            acc /= len as f64;
        }
        values.push(C::from_f64(acc));
    }
    let mut buffer = Buffer::zeroed(rows * dtype.size_in_bytes());
    store(dtype, &values, buffer.as_bytes_mut());
    Ok(Tensor::from_buffer(buffer, dtype, out_dims))
}
