//! Kernels on block-quantized weights: `dequantize` and `quant_matmul`.
//!
//! `quant_matmul(x [.., k], w [n, row_bytes])` picks by the number of
//! activation rows `m`:
//! - few rows (decode): a GEMV that reads each packed weight block once and
//!   dots it with every activation row, parallel over output columns. Q4_0,
//!   Q4_1 and Q8_0 have specialised block dots that never expand the block
//!   (`d·Σxq + m·Σx`); the other formats expand one block into registers.
//! - many rows (prefill): the weight is expanded to f32 once into pooled
//!   scratch and multiplied with stitch's packed GEMM.

use rayon::prelude::*;
use stitch_core::quant::{dequantize_block, QuantFormat};
use stitch_core::{BufferPool, DType, Error, Result, Tensor, TensorType};

use super::dims;
use super::scratch::ScratchElem;
use super::sgemm::{sgemm, Isa, Mat};

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

fn quantize_activations() -> bool {
    match QUANT_ACT.load(std::sync::atomic::Ordering::Relaxed) {
        2 => {
            let on = std::env::var("STITCH_QUANT_ACTIVATIONS").map_or(true, |v| v != "0");
            QUANT_ACT.store(on as u8, std::sync::atomic::Ordering::Relaxed);
            on
        }
        v => v == 1,
    }
}

/// Few-row product: each task takes a range of weight rows (output columns).
fn gemv(x: &[f32], w: &[u8], format: QuantFormat, m: usize, n: usize, k: usize, dst: &mut [f32]) {
    if quantize_activations() && matches!(format, QuantFormat::Q4_0 | QuantFormat::Q4_1 | QuantFormat::Q8_0) {
        if let Some(isa) = int8::Isa::detect() {
            return int8::gemv(isa, x, w, format, m, n, k, dst);
        }
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

/// 8-bit activation path: activations quantized per 32-element block
/// (`x ≈ d·q`, q in i8, with Σq kept for the formats' offset terms) and
/// integer block dots with AVX2 (`maddubs`) where the CPU has it.
mod int8 {
    use rayon::prelude::*;
    use stitch_core::quant::QuantFormat;

    #[cfg(test)]
    use super::f16_at;
    use super::OutPtr;
    use crate::kernels::scratch::ScratchElem;

    #[derive(Clone, Copy, Debug, PartialEq, Eq)]
    pub(super) enum Isa {
        #[cfg(target_arch = "x86_64")]
        Avx2,
    }

    impl Isa {
        pub(super) fn detect() -> Option<Isa> {
            #[cfg(target_arch = "x86_64")]
            {
                if std::arch::is_x86_feature_detected!("avx2")
                    && std::arch::is_x86_feature_detected!("fma")
                    && std::arch::is_x86_feature_detected!("f16c")
                {
                    return Some(Isa::Avx2);
                }
            }
            None
        }
    }

    /// Quantized activations of one row: per block, scale, Σq and 32 i8 values.
    struct QRow<'a> {
        q: &'a [i8],
        d: &'a [f32],
        sum: &'a [f32],
    }

    #[allow(clippy::too_many_arguments)]
    pub(super) fn gemv(
        isa: Isa,
        x: &[f32],
        w: &[u8],
        format: QuantFormat,
        m: usize,
        n: usize,
        k: usize,
        dst: &mut [f32],
    ) {
        let nb = k / 32;
        let bb = format.block_bytes();
        let rb = nb * bb;
        // Scratch layout (as f32 words): q bytes (m·k / 4 words), d (m·nb), sums (m·nb).
        let qwords = (m * k).div_ceil(4);
        f32::with_scratch(qwords + 2 * m * nb, |scratch| {
            let (qw, rest) = scratch.split_at_mut(qwords);
            let (ds, sums) = rest.split_at_mut(m * nb);
            let q: &mut [i8] = &mut bytemuck::cast_slice_mut::<f32, i8>(qw)[..m * k];
            for ((xb, qb), (d, s)) in x
                .chunks_exact(32)
                .zip(q.chunks_exact_mut(32))
                .zip(ds.iter_mut().zip(sums.iter_mut()))
            {
                let amax = xb.iter().fold(0f32, |a, v| a.max(v.abs()));
                let scale = amax / 127.0;
                let inv = if scale > 0.0 { 1.0 / scale } else { 0.0 };
                let mut total = 0i32;
                for (o, &v) in qb.iter_mut().zip(xb) {
                    let r = (v * inv).round() as i32;
                    *o = r as i8;
                    total += r;
                }
                *d = scale;
                *s = total as f32;
            }
            let (q, ds, sums): (&[i8], &[f32], &[f32]) = (q, ds, sums);
            let out = OutPtr(dst.as_mut_ptr());
            let rows_per_task = (16384 / rb.max(1)).clamp(1, 256);
            (0..n.div_ceil(rows_per_task)).into_par_iter().for_each(|task| {
                let (r0, r1) = (task * rows_per_task, ((task + 1) * rows_per_task).min(n));
                for r in r0..r1 {
                    let wr = &w[r * rb..(r + 1) * rb];
                    for mi in 0..m {
                        let row = QRow {
                            q: &q[mi * k..(mi + 1) * k],
                            d: &ds[mi * nb..(mi + 1) * nb],
                            sum: &sums[mi * nb..(mi + 1) * nb],
                        };
                        let acc = match isa {
                            // SAFETY: the CPU has AVX2 and FMA (checked by `detect`).
                            #[cfg(target_arch = "x86_64")]
                            Isa::Avx2 => unsafe { dot_avx2(format, wr, &row, nb) },
                        };
                        // SAFETY: (mi, r) is inside dst; only this task writes column r.
                        unsafe { *out.get().add(mi * n + r) = acc };
                    }
                }
            });
        });
    }

    /// Scalar block dot, the definition the SIMD code must match (tests).
    #[cfg(test)]
    fn dot_scalar(format: QuantFormat, w: &[u8], row: &QRow, nb: usize) -> f32 {
        let bb = format.block_bytes();
        let mut acc = 0f32;
        for b in 0..nb {
            let blk = &w[b * bb..(b + 1) * bb];
            let q8 = &row.q[b * 32..(b + 1) * 32];
            let dx = row.d[b];
            let (d, m, qs) = match format {
                QuantFormat::Q4_1 => (f16_at(blk), f16_at(&blk[2..]), &blk[4..20]),
                _ => (f16_at(blk), 0.0, &blk[2..]),
            };
            let mut dot = 0i32;
            for j in 0..32 {
                let wq = match format {
                    QuantFormat::Q8_0 => qs[j] as i8 as i32,
                    QuantFormat::Q4_0 => (if j < 16 { qs[j] & 0xF } else { qs[j - 16] >> 4 }) as i32 - 8,
                    _ => (if j < 16 { qs[j] & 0xF } else { qs[j - 16] >> 4 }) as i32,
                };
                dot += wq * q8[j] as i32;
            }
            acc += d * dx * dot as f32 + m * dx * row.sum[b];
        }
        acc
    }

    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn dot_avx2(format: QuantFormat, w: &[u8], row: &QRow, nb: usize) -> f32 {
        // SAFETY (all arms): the caller checked AVX2/FMA/F16C; see `dot_avx2_t`.
        unsafe {
            match format {
                QuantFormat::Q4_0 => dot_avx2_t::<0>(w, row, nb),
                QuantFormat::Q4_1 => dot_avx2_t::<1>(w, row, nb),
                _ => dot_avx2_t::<2>(w, row, nb),
            }
        }
    }

    /// `F`: 0 = Q4_0, 1 = Q4_1, 2 = Q8_0. Two blocks per iteration into two
    /// accumulators (independent FMA chains); block scales converted with F16C.
    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx2,fma,f16c")]
    #[inline]
    unsafe fn dot_avx2_t<const F: u8>(w: &[u8], row: &QRow, nb: usize) -> f32 {
        use std::arch::x86_64::*;
        let bb = match F {
            0 => 18,
            1 => 20,
            _ => 34,
        };
        debug_assert!(w.len() >= nb * bb && row.q.len() >= nb * 32 && row.d.len() >= nb && row.sum.len() >= nb);
        let mask = _mm_set1_epi8(0x0F);
        let ones = _mm256_set1_epi16(1);
        let (wp, qp, dp, sp) = (w.as_ptr(), row.q.as_ptr(), row.d.as_ptr(), row.sum.as_ptr());
        // One block's contribution: (scaled integer dot as 8 f32 lanes, offset term).
        let block = |b: usize| -> (__m256, f32) {
            // SAFETY: b < nb, so the block's bytes, its 32 activations and its
            // scale and sum are in bounds (see the debug assertion).
            unsafe {
                let blk = wp.add(b * bb);
                let q8 = _mm256_loadu_si256(qp.add(b * 32) as *const __m256i);
                // d (and m for Q4_1) as f32 with F16C.
                let dm = _mm_cvtph_ps(_mm_cvtsi32_si128((blk as *const i32).read_unaligned()));
                let dx = *dp.add(b);
                let d = _mm_cvtss_f32(dm) * dx;
                let p16 = if F == 2 {
                    let wq = _mm256_loadu_si256(blk.add(2) as *const __m256i);
                    _mm256_maddubs_epi16(_mm256_abs_epi8(wq), _mm256_sign_epi8(q8, wq))
                } else {
                    let qs = _mm_loadu_si128(blk.add(if F == 1 { 4 } else { 2 }) as *const __m128i);
                    let lo = _mm_and_si128(qs, mask);
                    let hi = _mm_and_si128(_mm_srli_epi16(qs, 4), mask);
                    _mm256_maddubs_epi16(_mm256_set_m128i(hi, lo), q8)
                };
                let v = _mm256_mul_ps(_mm256_cvtepi32_ps(_mm256_madd_epi16(p16, ones)), _mm256_set1_ps(d));
                let off = match F {
                    // (q − 8)·x = q·x − 8·Σx
                    0 => -8.0 * d * *sp.add(b),
                    1 => _mm_cvtss_f32(_mm_movehdup_ps(dm)) * dx * *sp.add(b),
                    _ => 0.0,
                };
                (v, off)
            }
        };
        let (mut acc0, mut acc1) = (_mm256_setzero_ps(), _mm256_setzero_ps());
        let (mut off0, mut off1) = (0f32, 0f32);
        let mut b = 0;
        while b + 1 < nb {
            let (v0, o0) = block(b);
            let (v1, o1) = block(b + 1);
            acc0 = _mm256_add_ps(acc0, v0);
            acc1 = _mm256_add_ps(acc1, v1);
            off0 += o0;
            off1 += o1;
            b += 2;
        }
        if b < nb {
            let (v0, o0) = block(b);
            acc0 = _mm256_add_ps(acc0, v0);
            off0 += o0;
        }
        let acc = _mm256_add_ps(acc0, acc1);
        let lo = _mm256_castps256_ps128(acc);
        let hi = _mm256_extractf128_ps(acc, 1);
        let s = _mm_add_ps(lo, hi);
        let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
        let s = _mm_add_ss(s, _mm_shuffle_ps(s, s, 1));
        _mm_cvtss_f32(s) + off0 + off1
    }

    #[cfg(test)]
    mod tests {
        use super::*;
        use rand::{Rng, SeedableRng};

        #[test]
        fn simd_block_dots_equal_the_scalar_definition() {
            let Some(isa) = Isa::detect() else { return };
            let mut r = rand_chacha::ChaCha8Rng::seed_from_u64(4);
            for format in [QuantFormat::Q4_0, QuantFormat::Q4_1, QuantFormat::Q8_0] {
                let nb = 7;
                let bb = format.block_bytes();
                let mut w: Vec<u8> = (0..nb * bb).map(|_| r.gen()).collect();
                for blk in w.chunks_exact_mut(bb) {
                    blk[..2].copy_from_slice(&half::f16::from_f32(r.gen_range(0.01..0.1)).to_bits().to_le_bytes());
                    if format == QuantFormat::Q4_1 {
                        blk[2..4].copy_from_slice(&half::f16::from_f32(r.gen_range(-0.1..0.1)).to_bits().to_le_bytes());
                    }
                }
                let q: Vec<i8> = (0..nb * 32).map(|_| r.gen_range(-127..=127)).collect();
                let d: Vec<f32> = (0..nb).map(|_| r.gen_range(0.001..0.02)).collect();
                let sum: Vec<f32> = q
                    .chunks(32)
                    .map(|c| c.iter().map(|&v| v as i32).sum::<i32>() as f32)
                    .collect();
                let row = QRow {
                    q: &q,
                    d: &d,
                    sum: &sum,
                };
                let want = dot_scalar(format, &w, &row, nb);
                let got = match isa {
                    #[cfg(target_arch = "x86_64")]
                    Isa::Avx2 => unsafe { dot_avx2(format, &w, &row, nb) },
                };
                assert!(
                    (got - want).abs() <= 1e-4 * want.abs().max(1.0),
                    "{format}: {got} vs {want}"
                );
            }
        }
    }
}
