//! Convolution and pooling kernels.
//!
//! 1-D ops run as 2-D ones with a height of 1. Convolution is im2col + gemm
//! per (batch item, group): the window taps of one image are unrolled into a
//! `[C/groups·kH·kW, oH·oW]` matrix that the group's weights `[M/groups,
//! C/groups·kH·kW]` multiply; a 1×1 stride-1 unpadded convolution multiplies
//! the image directly. f16/bf16 compute in f32, f64 in f64.
//!
//! Pooling is a direct loop, parallel over (n, c) planes, with the input rows
//! and columns each output window covers precomputed per axis.

use std::borrow::Cow;

use half::{bf16, f16};
use rayon::prelude::*;
use stitch_core::ops::conv::window_out_len;
use stitch_core::ops::{ConvAttrs, PoolAttrs};
use stitch_core::{DType, Element, Error, Result, Tensor, TensorType};

use super::dims;
use super::linalg::{gemm_call, GemmFloat};

/// Floats the conv and average-pool loops compute in.
trait Real: GemmFloat + std::ops::Add<Output = Self> + std::ops::Div<Output = Self> {}
impl Real for f32 {}
impl Real for f64 {}

/// Multiply-adds below which work is not worth splitting over threads.
const PAR_FLOPS: usize = 1 << 15;

/// Window geometry along one spatial axis.
#[derive(Clone, Copy, Debug)]
struct Axis {
    input: usize,
    kernel: usize,
    stride: usize,
    pad_begin: usize,
    pad_end: usize,
    dilation: usize,
    output: usize,
}

impl Axis {
    /// A trivial axis (size 1, kernel 1) that turns a 1-D op into a 2-D one.
    fn unit() -> Axis {
        Axis {
            input: 1,
            kernel: 1,
            stride: 1,
            pad_begin: 0,
            pad_end: 0,
            dilation: 1,
            output: 1,
        }
    }

    /// Input position of tap `t` of output `o`; negative or ≥ `input` in the padding.
    #[inline]
    fn pos(&self, o: usize, t: usize) -> isize {
        (o * self.stride + t * self.dilation) as isize - self.pad_begin as isize
    }

    /// The outputs `lo..hi` whose tap `t` lands inside the input (not padding).
    fn valid_outputs(&self, t: usize) -> (usize, usize) {
        let shift = t * self.dilation;
        // pos(o, t) >= 0  <=>  o·stride >= pad_begin - shift.
        let lo = self.pad_begin.saturating_sub(shift).div_ceil(self.stride);
        // pos(o, t) < input  <=>  o·stride < input + pad_begin - shift.
        let hi = (self.input + self.pad_begin)
            .saturating_sub(shift)
            .div_ceil(self.stride);
        let hi = hi.min(self.output);
        (lo.min(hi), hi)
    }

    /// For each output position: the real input positions its window covers,
    /// and how many of its taps lie inside input + padding.
    fn taps(&self) -> Vec<(Vec<usize>, usize)> {
        (0..self.output)
            .map(|o| {
                let mut real = Vec::with_capacity(self.kernel);
                let mut padded = 0;
                for t in 0..self.kernel {
                    let p = self.pos(o, t);
                    if p >= 0 && (p as usize) < self.input {
                        real.push(p as usize);
                    }
                    if p < (self.input + self.pad_end) as isize {
                        padded += 1;
                    }
                }
                (real, padded)
            })
            .collect()
    }
}

/// Spatial axes (height, width) of a 1-D or 2-D window op; 1-D gets a unit height.
#[allow(clippy::too_many_arguments)]
fn spatial_axes(
    what: &str,
    x_shape: &[usize],
    kernel: &[usize],
    strides: &[usize],
    pads: &[usize],
    dilations: &[usize],
    ceil_mode: bool,
) -> Result<(Axis, Axis)> {
    let n = kernel.len();
    if !(1..=2).contains(&n) || x_shape.len() != n + 2 {
        return Err(Error::invalid(format!(
            "{what} with a {n}-D window needs an input of rank {}, got {x_shape:?}",
            n + 2
        )));
    }
    if strides.len() != n || pads.len() != 2 * n || dilations.len() != n {
        return Err(Error::invalid(format!(
            "{what} needs {n} strides, {} pads and {n} dilations, got {strides:?}, {pads:?}, {dilations:?}",
            2 * n
        )));
    }
    if strides.contains(&0) || dilations.contains(&0) {
        return Err(Error::invalid(format!(
            "{what}: strides {strides:?} and dilations {dilations:?} must be >= 1"
        )));
    }
    let mut axes = Vec::with_capacity(2);
    for i in 0..n {
        let input = x_shape[2 + i];
        let output = window_out_len(input, kernel[i], strides[i], pads[i], pads[n + i], dilations[i], ceil_mode)
            .ok_or_else(|| {
                Error::invalid(format!(
                    "{what}: window of size {} (dilation {}) does not fit spatial axis {i} of input {x_shape:?} with pads {pads:?}",
                    kernel[i], dilations[i]
                ))
            })?;
        axes.push(Axis {
            input,
            kernel: kernel[i],
            stride: strides[i],
            pad_begin: pads[i],
            pad_end: pads[n + i],
            dilation: dilations[i],
            output,
        });
    }
    Ok(if n == 1 {
        (Axis::unit(), axes[0])
    } else {
        (axes[0], axes[1])
    })
}

fn check_out(want: &[usize], got: &[usize], what: &str) -> Result<()> {
    if want != got {
        return Err(Error::invalid(format!(
            "{what} computes a result of shape {want:?}, but the output type is {got:?}"
        )));
    }
    Ok(())
}

/// The elements of `t` as `F`: borrowed when `t` already is a contiguous `F`
/// tensor, else copied (and widened: f16/bf16 → f32 is exact).
fn values<F: Element>(t: &Tensor) -> Result<Cow<'_, [F]>> {
    if t.dtype() == F::DTYPE {
        if t.is_contiguous() && t.numel() > 0 {
            return Ok(Cow::Borrowed(t.as_slice::<F>()?));
        }
        return Ok(Cow::Owned(t.to_vec::<F>()?));
    }
    Ok(Cow::Owned(stitch_core::dispatch_dtype!(t.dtype(), T => {
        t.to_vec::<T>()?.into_iter().map(|v| F::from_f64(v.to_f64())).collect()
    })))
}

/// f32 results rounded to `dtype` (f32, f16 or bf16).
fn from_f32_vec(v: Vec<f32>, dtype: DType, shape: &[usize]) -> Result<Tensor> {
    match dtype {
        DType::F32 => Tensor::from_vec(v, shape),
        DType::F16 => Tensor::from_vec(v.into_par_iter().map(f16::from_f32).collect::<Vec<_>>(), shape),
        DType::BF16 => Tensor::from_vec(v.into_par_iter().map(bf16::from_f32).collect::<Vec<_>>(), shape),
        d => Err(Error::invalid(format!("expected a float dtype, got {d}"))),
    }
}

/// Convolution geometry in 2-D form.
struct ConvGeo {
    batch: usize,
    channels: usize,
    outputs: usize,
    groups: usize,
    h: Axis,
    w: Axis,
}

/// Unrolls the window taps of one group's channels (`img`: `[C/groups, H, W]`)
/// into `col`: `[C/groups·kH·kW, oH·oW]`, zeros for padding.
fn im2col<F: Real>(img: &[F], col: &mut [F], g: &ConvGeo, parallel: bool) {
    let (h, w) = (g.h, g.w);
    let ohw = h.output * w.output;
    let taps = h.kernel * w.kernel;
    let fill = |r: usize, row: &mut [F]| {
        let (c, i, j) = (r / taps, (r / w.kernel) % h.kernel, r % w.kernel);
        let plane = &img[c * h.input * w.input..(c + 1) * h.input * w.input];
        let (lo, hi) = w.valid_outputs(j);
        for (oh, out) in row.chunks_mut(w.output).enumerate() {
            let ih = h.pos(oh, i);
            if ih < 0 || ih as usize >= h.input {
                out.fill(F::from_f64(0.0));
                continue;
            }
            let src = &plane[ih as usize * w.input..(ih as usize + 1) * w.input];
            let zero = F::from_f64(0.0);
            out[..lo].fill(zero);
            out[hi..].fill(zero);
            if hi > lo {
                // Outputs lo..hi read src[first], src[first + stride], ... (all in bounds).
                let first = w.pos(lo, j) as usize;
                if w.stride == 1 {
                    out[lo..hi].copy_from_slice(&src[first..first + (hi - lo)]);
                } else {
                    for (o, &v) in out[lo..hi].iter_mut().zip(src[first..].iter().step_by(w.stride)) {
                        *o = v;
                    }
                }
            }
        }
    };
    if parallel {
        col.par_chunks_mut(ohw).enumerate().for_each(|(r, row)| fill(r, row));
    } else {
        col.chunks_mut(ohw).enumerate().for_each(|(r, row)| fill(r, row));
    }
}

/// Convolution on contiguous `x` `[N, C, H, W]` and `wt` `[M, C/groups, kH, kW]`;
/// returns `[N, M, oH, oW]`.
fn conv_typed<F: Real>(x: &[F], wt: &[F], bias: Option<&[F]>, g: &ConvGeo) -> Vec<F> {
    let (h, w) = (g.h, g.w);
    let ohw = h.output * w.output;
    let (cg, mg) = (g.channels / g.groups, g.outputs / g.groups);
    let kk = cg * h.kernel * w.kernel;
    let img_len = cg * h.input * w.input;
    let block = mg * ohw;
    let mut out = vec![F::from_f64(0.0); g.batch * g.outputs * ohw];
    if block == 0 {
        return out;
    }
    // A 1×1, stride-1, unpadded convolution is a plain product with the image.
    let pointwise = [h, w]
        .iter()
        .all(|a| a.kernel == 1 && a.stride == 1 && a.pad_begin == 0 && a.pad_end == 0);
    let task = |ng: usize, dst: &mut [F], parallel: bool| {
        let (n, gi) = (ng / g.groups, ng % g.groups);
        let x_off = (n * g.channels + gi * cg) * h.input * w.input;
        let img = &x[x_off..x_off + img_len];
        if let Some(b) = bias {
            for (r, row) in dst.chunks_mut(ohw).enumerate() {
                row.fill(b[gi * mg + r]);
            }
        }
        let unrolled;
        let col: &[F] = if pointwise {
            img
        } else {
            let mut c = vec![F::from_f64(0.0); kk * ohw];
            im2col(img, &mut c, g, parallel);
            unrolled = c;
            &unrolled
        };
        let wg = &wt[gi * mg * kk..(gi + 1) * mg * kk];
        // SAFETY: `wg` is the contiguous mg×kk weight block of group `gi`
        // (row stride kk, column stride 1) and `col` a contiguous kk×ohw matrix
        // (row stride ohw): for pointwise convs kk = cg and ohw = H·W, so it is
        // exactly `img`. `dst` is this task's mg·ohw output block.
        unsafe {
            gemm_call(
                mg,
                ohw,
                kk,
                dst,
                bias.is_some(),
                wg.as_ptr(),
                kk as isize,
                1,
                col.as_ptr(),
                ohw as isize,
                1,
                F::from_f64(1.0),
                F::from_f64(1.0),
                parallel,
            )
        }
    };
    let tasks = g.batch * g.groups;
    let flops = block * kk.max(1);
    if tasks > 1 && (tasks >= rayon::current_num_threads() || flops < PAR_FLOPS) {
        let min_len = (PAR_FLOPS / flops).max(1);
        out.par_chunks_mut(block)
            .with_min_len(min_len)
            .enumerate()
            .for_each(|(ng, dst)| task(ng, dst, false));
    } else {
        for (ng, dst) in out.chunks_mut(block).enumerate() {
            task(ng, dst, flops >= PAR_FLOPS);
        }
    }
    out
}

/// 1-D / 2-D grouped convolution.
pub fn conv(x: &Tensor, w: &Tensor, bias: Option<&Tensor>, attrs: &ConvAttrs, out: &TensorType) -> Result<Tensor> {
    let out_dims = dims(out)?;
    let (xs, ws) = (x.shape(), w.shape());
    if ws.len() != xs.len() || ws.len() < 3 {
        return Err(Error::invalid(format!(
            "conv input {xs:?} and weight {ws:?} must both have rank 3 or 4"
        )));
    }
    let (h, wa) = spatial_axes(
        "conv",
        xs,
        &ws[2..],
        &attrs.strides,
        &attrs.pads,
        &attrs.dilations,
        false,
    )?;
    let groups = attrs.groups;
    let (channels, outputs) = (xs[1], ws[0]);
    if groups == 0 || channels % groups != 0 || outputs % groups != 0 || ws[1] * groups != channels {
        return Err(Error::invalid(format!(
            "conv channels do not fit groups = {groups}: input {xs:?}, weight {ws:?}"
        )));
    }
    if let Some(b) = bias {
        if b.shape() != [outputs] {
            return Err(Error::invalid(format!(
                "conv bias {:?} must have shape [{outputs}] for weight {ws:?}",
                b.shape()
            )));
        }
    }
    if w.dtype() != x.dtype() || bias.is_some_and(|b| b.dtype() != x.dtype()) {
        return Err(Error::invalid("conv operands differ in dtype"));
    }
    let mut want = vec![xs[0], outputs];
    if xs.len() == 4 {
        want.push(h.output);
    }
    want.push(wa.output);
    check_out(&want, &out_dims, "conv")?;
    let g = ConvGeo {
        batch: xs[0],
        channels,
        outputs,
        groups,
        h,
        w: wa,
    };
    match x.dtype() {
        DType::F64 => {
            let b = bias.map(values::<f64>).transpose()?;
            let y = conv_typed(&values::<f64>(x)?, &values::<f64>(w)?, b.as_deref(), &g);
            Tensor::from_vec(y, &out_dims)
        }
        d @ (DType::F32 | DType::F16 | DType::BF16) => {
            let b = bias.map(values::<f32>).transpose()?;
            let y = conv_typed(&values::<f32>(x)?, &values::<f32>(w)?, b.as_deref(), &g);
            from_f32_vec(y, d, &out_dims)
        }
        d => Err(Error::invalid(format!("conv needs a float input, got {d}"))),
    }
}

/// Pooling geometry in 2-D form, with per-axis window taps.
struct PoolGeo {
    planes: usize,
    h: Axis,
    w: Axis,
    rows: Vec<(Vec<usize>, usize)>,
    cols: Vec<(Vec<usize>, usize)>,
}

fn pool_geo(what: &str, x: &Tensor, a: &PoolAttrs, out: &TensorType) -> Result<(PoolGeo, Vec<usize>)> {
    let out_dims = dims(out)?;
    if a.kernel.contains(&0) {
        return Err(Error::invalid(format!(
            "{what}: kernel sizes {:?} must be >= 1",
            a.kernel
        )));
    }
    let xs = x.shape();
    let (h, w) = spatial_axes(what, xs, &a.kernel, &a.strides, &a.pads, &a.dilations, a.ceil_mode)?;
    let mut want = xs[..2].to_vec();
    if xs.len() == 4 {
        want.push(h.output);
    }
    want.push(w.output);
    check_out(&want, &out_dims, what)?;
    Ok((
        PoolGeo {
            planes: xs[0] * xs[1],
            h,
            w,
            rows: h.taps(),
            cols: w.taps(),
        },
        out_dims.to_vec(),
    ))
}

/// Runs `f(plane_in, plane_out)` over every (n, c) plane in parallel.
fn for_planes<T: Send + Sync, U: Send + Copy>(
    x: &[T],
    g: &PoolGeo,
    init: U,
    f: impl Fn(&[T], &mut [U]) + Sync,
) -> Vec<U> {
    let (hw, ohw) = (g.h.input * g.w.input, g.h.output * g.w.output);
    let mut out = vec![init; g.planes * ohw];
    if ohw == 0 {
        return out;
    }
    let work = ohw * g.h.kernel * g.w.kernel;
    let min_len = (PAR_FLOPS / work.max(1)).max(1);
    out.par_chunks_mut(ohw)
        .with_min_len(min_len)
        .enumerate()
        .for_each(|(p, o)| f(&x[p * hw..(p + 1) * hw], o));
    out
}

fn max_pool_typed<T: Element + PartialOrd + Copy>(x: &[T], g: &PoolGeo) -> Vec<T> {
    let iw = g.w.input;
    // A window with no real element (only possible with large padding) gives
    // the identity of max: -inf, or the type's minimum for integers.
    let lowest = T::from_f64(f64::NEG_INFINITY);
    for_planes(x, g, lowest, |plane, out| {
        for (orow, (rows, _)) in out.chunks_mut(g.w.output).zip(&g.rows) {
            for (o, (cols, _)) in orow.iter_mut().zip(&g.cols) {
                let mut best = lowest;
                for &r in rows {
                    for &c in cols {
                        let v = plane[r * iw + c];
                        // `v != v` is true for NaN only: NaN wins and then sticks.
                        #[allow(clippy::eq_op)]
                        if v > best || v != v {
                            best = v;
                        }
                    }
                }
                *o = best;
            }
        }
    })
}

/// Max pooling.
pub fn max_pool(x: &Tensor, attrs: &PoolAttrs, out: &TensorType) -> Result<Tensor> {
    let (g, out_dims) = pool_geo("max_pool", x, attrs, out)?;
    macro_rules! typed {
        ($t:ty) => {
            Tensor::from_vec(max_pool_typed::<$t>(&values::<$t>(x)?, &g), &out_dims)
        };
    }
    match x.dtype() {
        DType::F32 => typed!(f32),
        DType::F64 => typed!(f64),
        DType::F16 => typed!(f16),
        DType::BF16 => typed!(bf16),
        DType::I8 => typed!(i8),
        DType::U8 => typed!(u8),
        DType::I16 => typed!(i16),
        DType::U16 => typed!(u16),
        DType::I32 => typed!(i32),
        DType::U32 => typed!(u32),
        DType::I64 => typed!(i64),
        DType::U64 => typed!(u64),
        DType::Bool => Err(Error::invalid("max_pool needs a numeric input, got bool")),
    }
}

fn avg_pool_typed<F: Real>(x: &[F], g: &PoolGeo, count_include_pad: bool) -> Vec<F> {
    let iw = g.w.input;
    let zero = F::from_f64(0.0);
    for_planes(x, g, zero, |plane, out| {
        for (orow, (rows, rpad)) in out.chunks_mut(g.w.output).zip(&g.rows) {
            for (o, (cols, cpad)) in orow.iter_mut().zip(&g.cols) {
                let mut sum = zero;
                for &r in rows {
                    for &c in cols {
                        sum = sum + plane[r * iw + c];
                    }
                }
                let count = if count_include_pad {
                    rpad * cpad
                } else {
                    rows.len() * cols.len()
                };
                // An empty window (all padding, excluded from the count) averages to 0.
                *o = if count == 0 {
                    zero
                } else {
                    sum / F::from_f64(count as f64)
                };
            }
        }
    })
}

/// Average pooling.
pub fn avg_pool(x: &Tensor, attrs: &PoolAttrs, out: &TensorType) -> Result<Tensor> {
    let (g, out_dims) = pool_geo("avg_pool", x, attrs, out)?;
    match x.dtype() {
        DType::F64 => Tensor::from_vec(
            avg_pool_typed(&values::<f64>(x)?, &g, attrs.count_include_pad),
            &out_dims,
        ),
        d @ (DType::F32 | DType::F16 | DType::BF16) => from_f32_vec(
            avg_pool_typed(&values::<f32>(x)?, &g, attrs.count_include_pad),
            d,
            &out_dims,
        ),
        d => Err(Error::invalid(format!("avg_pool needs a float input, got {d}"))),
    }
}
