//! Kernels on block-quantized weights: `dequantize` and `quant_matmul`.
//!
//! `quant_matmul(x [.., k], w [n, row_bytes])` picks by the number of
//! activation rows `m`:
//! - few rows (decode): a GEMV that reads each packed weight block once and
//!   dots it with every activation row, parallel over output columns. Q4_0,
//!   By default the activations are quantized to 8 bits and every format has
//!   integer block dots (`int8`: scalar, AVX2, AVX-512 VNNI, picked at run
//!   time); with f32 activations Q4_0, Q4_1 and Q8_0 have block dots that
//!   never expand the block (`d·Σxq + m·Σx`) and the other formats expand one
//!   block into registers.
//! - many rows (prefill): the weight is expanded to f32 once into pooled
//!   scratch and multiplied with stitch's packed GEMM.

use rayon::prelude::*;
use stitch_core::quant::{dequantize_block, QuantFormat};
use stitch_core::{BufferPool, DType, Error, Result, Tensor, TensorType};

use super::dims;
use super::scratch::ScratchElem;
use super::sgemm::{sgemm, Isa, Mat};

mod int8;

/// Activation rows from which expanding the weight and using the GEMM wins.
const GEMM_MIN_ROWS: usize = 8;

fn check_packed(w: &Tensor, format: QuantFormat) -> Result<(usize, usize)> {
    if w.dtype() != DType::U8 || w.rank() != 2 {
        return Err(Error::invalid(format!(
            "packed {format} weight must be u8 [rows, row_bytes], got {} {:?}",
            w.dtype(),
            w.shape()
        )));
    }
    let (n, rb) = (w.shape()[0], w.shape()[1]);
    if rb % format.block_bytes() != 0 {
        return Err(Error::invalid(format!(
            "packed {format} rows of {rb} bytes are not whole {}-byte blocks",
            format.block_bytes()
        )));
    }
    Ok((n, rb / format.block_bytes() * format.block_elems()))
}

/// Expands a packed weight to f32 `[n, k]`.
pub fn dequantize(w: &Tensor, format: QuantFormat, out: &TensorType) -> Result<Tensor> {
    let (n, k) = check_packed(w, format)?;
    let od = dims(out)?;
    if od.as_slice() != [n, k] {
        return Err(Error::invalid(format!("dequantize output {od:?} is not [{n}, {k}]")));
    }
    let w = w.contiguous();
    let bytes = w.as_slice::<u8>()?;
    let mut t = Tensor::empty(DType::F32, &[n, k]);
    expand(bytes, format, k, t.buffer_mut().as_slice_mut::<f32>());
    BufferPool::recycle(w);
    Ok(t)
}

/// Expands packed rows (`bytes`, rows of k elements) into `out`, in parallel.
fn expand(bytes: &[u8], format: QuantFormat, k: usize, out: &mut [f32]) {
    let rb = k / format.block_elems() * format.block_bytes();
    if k == 0 {
        return;
    }
    out.par_chunks_mut(k)
        .zip(bytes.par_chunks(rb))
        .with_min_len(16)
        .for_each(|(o, b)| {
            for (ob, bb) in o
                .chunks_exact_mut(format.block_elems())
                .zip(b.chunks_exact(format.block_bytes()))
            {
                dequantize_block(format, bb, ob);
            }
        });
}

/// A pointer to the output shared by tasks writing disjoint columns.
#[derive(Clone, Copy)]
struct OutPtr(*mut f32);
// SAFETY: tasks write disjoint (row, column) elements.
unsafe impl Send for OutPtr {}
unsafe impl Sync for OutPtr {}
impl OutPtr {
    fn get(self) -> *mut f32 {
        self.0
    }
}

/// `x [.., k] @ dequantize(w)ᵀ → [.., n]`.
pub fn quant_matmul(x: &Tensor, w: &Tensor, format: QuantFormat, out: &TensorType) -> Result<Tensor> {
    let (n, k) = check_packed(w, format)?;
    if x.dtype() != DType::F32 || x.rank() == 0 || x.shape()[x.rank() - 1] != k {
        return Err(Error::invalid(format!(
            "quant_matmul activation must be f32 [.., {k}], got {} {:?}",
            x.dtype(),
            x.shape()
        )));
    }
    let od = dims(out)?;
    let m = x.numel() / k.max(1);
    if od.iter().product::<usize>() != m * n {
        return Err(Error::invalid(format!(
            "quant_matmul output {od:?} does not hold {m}×{n}"
        )));
    }
    let x = x.contiguous();
    let w = w.contiguous();
    let xs = x.as_slice::<f32>()?;
    let ws = w.as_slice::<u8>()?;
    let mut t = Tensor::empty(DType::F32, &od);
    let dst = t.buffer_mut().as_slice_mut::<f32>();
    if m == 0 || n == 0 {
    } else if m >= GEMM_MIN_ROWS || k == 0 {
        let mut wf = Tensor::empty(DType::F32, &[n, k]);
        expand(ws, format, k, wf.buffer_mut().as_slice_mut::<f32>());
        let wfs = wf.as_slice::<f32>()?;
        // SAFETY: x is m×k row-major, wf is n×k row-major read as its transpose
        // (k×n with row stride 1, column stride k); dst is m×n.
        unsafe {
            sgemm(
                Isa::detect(),
                m,
                n,
                k,
                Mat {
                    ptr: xs.as_ptr(),
                    rs: k as isize,
                    cs: 1,
                },
                Mat {
                    ptr: wfs.as_ptr(),
                    rs: 1,
                    cs: k as isize,
                },
                dst,
                false,
                0.0,
                1.0,
                true,
            );
        }
        BufferPool::recycle(wf);
    } else {
        gemv(xs, ws, format, m, n, k, dst);
    }
    BufferPool::recycle(x);
    BufferPool::recycle(w);
    Ok(t)
}

/// Whether few-row products quantize the activations to 8 bits (llama.cpp's
/// approach, much faster) or keep them in f32. On by default; set
/// `STITCH_QUANT_ACTIVATIONS=0` (or call [`set_quantize_activations`]) for the
/// f32 path.
static QUANT_ACT: std::sync::atomic::AtomicU8 = std::sync::atomic::AtomicU8::new(2);

/// Chooses the activation path of few-row quantized products (see [`QUANT_ACT`]).
pub fn set_quantize_activations(on: bool) {
    QUANT_ACT.store(on as u8, std::sync::atomic::Ordering::Relaxed);
}

/// A switch that is 0 (off), 1 (on) or 2 (not decided yet: read from the
/// environment variable `var` on first use; unset means `default`, else on
/// unless `0`).
fn switch(s: &std::sync::atomic::AtomicU8, var: &str, default: bool) -> bool {
    use std::sync::atomic::Ordering::Relaxed;
    match s.load(Relaxed) {
        2 => {
            let on = std::env::var(var).map_or(default, |v| v != "0");
            s.store(on as u8, Relaxed);
            on
        }
        v => v == 1,
    }
}

fn quantize_activations() -> bool {
    switch(&QUANT_ACT, "STITCH_QUANT_ACTIVATIONS", true)
}

/// Whether products over weights of [`int8::TWO_TERM_MIN_BYTES`] and more (an
/// LLM's output head) quantize activations in two terms (see `quant/int8.rs`):
/// off by default (it costs about 5% of the default model's decode speed for
/// 1.1e-2 → 3e-5 of the head's logit error); `STITCH_TWO_TERM_HEAD=1` or
/// [`set_two_term_head`] turns it on.
static TWO_TERM_HEAD: std::sync::atomic::AtomicU8 = std::sync::atomic::AtomicU8::new(2);

/// Chooses two-term activations for the output head (see [`TWO_TERM_HEAD`]).
pub fn set_two_term_head(on: bool) {
    TWO_TERM_HEAD.store(on as u8, std::sync::atomic::Ordering::Relaxed);
}

fn two_term_head() -> bool {
    switch(&TWO_TERM_HEAD, "STITCH_TWO_TERM_HEAD", false)
}

/// Few-row product: each task takes a range of weight rows (output columns).
fn gemv(x: &[f32], w: &[u8], format: QuantFormat, m: usize, n: usize, k: usize, dst: &mut [f32]) {
    if quantize_activations() && int8::supports(format) {
        let two_term =
            two_term_head() && n * (k / format.block_elems()) * format.block_bytes() >= int8::TWO_TERM_MIN_BYTES;
        return int8::gemv(int8::Isa::detect(), x, w, format, m, n, k, two_term, dst);
    }
    gemv_f32(x, w, format, m, n, k, dst)
}

/// The f32-activation GEMV.
fn gemv_f32(x: &[f32], w: &[u8], format: QuantFormat, m: usize, n: usize, k: usize, dst: &mut [f32]) {
    let (be, bb) = (format.block_elems(), format.block_bytes());
    let rb = k / be * bb;
    let nblocks = k / be;
    let out = OutPtr(dst.as_mut_ptr());
    // Block sums of x, for formats with a minimum term.
    let needs_sums = matches!(format, QuantFormat::Q4_1);
    f32::with_scratch(if needs_sums { m * nblocks } else { 0 }, |sums| {
        if needs_sums {
            for (s, xb) in sums.iter_mut().zip(x.chunks_exact(be)) {
                *s = xb.iter().sum();
            }
        }
        let sums: &[f32] = sums;
        let rows_per_task = (16384 / rb.max(1)).clamp(1, 256);
        (0..n.div_ceil(rows_per_task)).into_par_iter().for_each(|task| {
            let (r0, r1) = (task * rows_per_task, ((task + 1) * rows_per_task).min(n));
            let mut buf = [0f32; 256];
            for r in r0..r1 {
                let wr = &w[r * rb..(r + 1) * rb];
                for mi in 0..m {
                    let xr = &x[mi * k..(mi + 1) * k];
                    let acc = match format {
                        QuantFormat::Q4_1 => {
                            let s = &sums[mi * nblocks..(mi + 1) * nblocks];
                            dot_q4_1(xr, wr, s)
                        }
                        QuantFormat::Q4_0 => dot_q4_0(xr, wr),
                        QuantFormat::Q8_0 => dot_q8_0(xr, wr),
                        _ => {
                            let mut acc = 0f32;
                            for (xb, blk) in xr.chunks_exact(be).zip(wr.chunks_exact(bb)) {
                                dequantize_block(format, blk, &mut buf[..be]);
                                acc += dot(xb, &buf[..be]);
                            }
                            acc
                        }
                    };
                    // SAFETY: (mi, r) is inside dst (m×n) and only this task writes column r.
                    unsafe { *out.get().add(mi * n + r) = acc };
                }
            }
        });
    });
}

#[inline(always)]
fn f16_at(b: &[u8]) -> f32 {
    half::f16::from_bits(u16::from_le_bytes([b[0], b[1]])).to_f32()
}

/// `Σ a·b` with 16 independent lanes (vectorises).
#[inline(always)]
fn dot(a: &[f32], b: &[f32]) -> f32 {
    let mut lanes = [0f32; 16];
    let (ca, cb) = (a.chunks_exact(16), b.chunks_exact(16));
    let tail: f32 = ca.remainder().iter().zip(cb.remainder()).map(|(x, y)| x * y).sum();
    for (x, y) in ca.zip(cb) {
        for l in 0..16 {
            lanes[l] += x[l] * y[l];
        }
    }
    lanes.iter().sum::<f32>() + tail
}

/// Σ over blocks of `d·Σ x·q + m·Σ x` for Q4_1 rows.
#[inline(always)]
fn dot_q4_1(x: &[f32], w: &[u8], sums: &[f32]) -> f32 {
    let mut acc = 0f32;
    for ((xb, blk), &xs) in x.chunks_exact(32).zip(w.chunks_exact(20)).zip(sums) {
        let (d, mn) = (f16_at(blk), f16_at(&blk[2..]));
        let qs = &blk[4..20];
        let mut lanes = [0f32; 16];
        for j in 0..16 {
            lanes[j] = xb[j] * (qs[j] & 0xF) as f32 + xb[j + 16] * (qs[j] >> 4) as f32;
        }
        acc += d * lanes.iter().sum::<f32>() + mn * xs;
    }
    acc
}

/// Σ over blocks of `d·Σ x·(q − 8)` for Q4_0 rows.
#[inline(always)]
fn dot_q4_0(x: &[f32], w: &[u8]) -> f32 {
    let mut acc = 0f32;
    for (xb, blk) in x.chunks_exact(32).zip(w.chunks_exact(18)) {
        let d = f16_at(blk);
        let qs = &blk[2..18];
        let mut lanes = [0f32; 16];
        for j in 0..16 {
            lanes[j] = xb[j] * ((qs[j] & 0xF) as i32 - 8) as f32 + xb[j + 16] * ((qs[j] >> 4) as i32 - 8) as f32;
        }
        acc += d * lanes.iter().sum::<f32>();
    }
    acc
}

/// Σ over blocks of `d·Σ x·q` for Q8_0 rows.
#[inline(always)]
fn dot_q8_0(x: &[f32], w: &[u8]) -> f32 {
    let mut acc = 0f32;
    for (xb, blk) in x.chunks_exact(32).zip(w.chunks_exact(34)) {
        let d = f16_at(blk);
        let qs = &blk[2..34];
        let mut lanes = [0f32; 16];
        for j in 0..16 {
            lanes[j] = xb[j] * (qs[j] as i8) as f32 + xb[j + 16] * (qs[j + 16] as i8) as f32;
        }
        acc += d * lanes.iter().sum::<f32>();
    }
    acc
}
