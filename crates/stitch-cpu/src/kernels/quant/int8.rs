//! 8-bit-activation block dots for the few-row quantized product.
//!
//! The activations are quantized per 16 elements (`x ≈ dx·q`, q an i8 in
//! [-127, 127]; llama.cpp's Q8 activation blocks use 32 or 256), keeping
//! `dx·Σq` per 16 for the weight formats' offset and minimum terms. The finer
//! scale costs no extra integer work (the 16-element halves of a 32-element
//! block are separate i32 lanes of the block dot anyway) and halves the error
//! of the model's first-step logits (2.4e-2 → 1.5e-2 of the largest logit with
//! per-32 scales → per-16 ones). One activation layout serves every weight
//! format: the K-quants' 32- and 16-element sub-blocks line up with it. Each
//! weight block is dotted in integers (unsigned weight codes × i8 activations)
//! and scaled in f32 per 16 elements.
//!
//! Kernels, chosen at run time ([`Isa::detect`]):
//! - `Scalar`: the definition every SIMD kernel must equal (tests), and the
//!   fallback on CPUs without AVX2.
//! - `Avx2`: 256-bit `maddubs` + `madd`.
//! - `Avx512Vnni`: 512-bit `vpdpbusd` (two 32-element blocks per register),
//!   with AVX-512 mask registers for the 5th bits; Q6_K uses 512-bit `maddubs`
//!   and `madd` by its 16-element scales.
//!
//! Two-term activations (opt-in, `STITCH_TWO_TERM_HEAD=1`) for products over
//! large weights: when the packed weight is at least [`TWO_TERM_MIN_BYTES`]
//! (an LLM's output head over the vocabulary, not the layers' projections), each 16-element
//! group is quantized twice, `x ≈ d₁·q₁ + d₂·q₂` with `q₂` the codes of the
//! residual `x − d₁·q₁` (its own scale, about 1/254 of `d₁`), and each weight
//! row is dotted with both rows. The second dot reads the weight row from L1
//! (no extra memory traffic) but doubles the integer work: measured, the
//! default model decodes about 5% slower, so it is off by default. The
//! activation error drops by two orders of magnitude: the output head's 8-bit
//! rounding is 1.1e-2 of the largest first-step logit of the default model
//! with one term, 3e-5 with two.
//!
//! Nothing here allocates: the caller owns the scratch.

use rayon::prelude::*;
use stitch_core::quant::{scale_min_k4, QuantFormat};

use super::{f16_at, OutPtr};
use crate::kernels::scratch::ScratchElem;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Isa {
    Scalar,
    #[cfg(target_arch = "x86_64")]
    Avx2,
    #[cfg(target_arch = "x86_64")]
    Avx512Vnni,
}

impl Isa {
    /// The best kernel set this CPU runs (cached); `STITCH_INT8_ISA=scalar`,
    /// `avx2` or `avx512` picks a lower one (for benchmarks).
    pub(super) fn detect() -> Isa {
        static ISA: std::sync::OnceLock<Isa> = std::sync::OnceLock::new();
        *ISA.get_or_init(|| {
            let all = Isa::available();
            let want = std::env::var("STITCH_INT8_ISA").unwrap_or_default();
            let named = all.iter().copied().find(|i| match i {
                Isa::Scalar => want == "scalar",
                #[cfg(target_arch = "x86_64")]
                Isa::Avx2 => want == "avx2",
                #[cfg(target_arch = "x86_64")]
                Isa::Avx512Vnni => want == "avx512",
            });
            named.unwrap_or(*all.last().unwrap_or(&Isa::Scalar))
        })
    }

    /// Every kernel set this CPU runs, scalar first, best last.
    pub(super) fn available() -> Vec<Isa> {
        #[allow(unused_mut)]
        let mut v = vec![Isa::Scalar];
        #[cfg(target_arch = "x86_64")]
        {
            use std::arch::is_x86_feature_detected as has;
            if has!("avx2") && has!("fma") && has!("f16c") {
                v.push(Isa::Avx2);
                if has!("avx512f") && has!("avx512bw") && has!("avx512vl") && has!("avx512vnni") {
                    v.push(Isa::Avx512Vnni);
                }
            }
        }
        v
    }
}

/// One activation row quantized per 16 elements: codes, scales and scaled
/// sums `d·Σq`, per 16.
#[derive(Clone, Copy)]
pub(super) struct QRow<'a> {
    pub q: &'a [i8],
    pub d: &'a [f32],
    pub ds: &'a [f32],
}

/// Packed weights from this many bytes on get two-term activations (see the
/// module docs).
pub(super) const TWO_TERM_MIN_BYTES: usize = 8 << 20;

/// Quantizes one group of 16: codes into `qb`, returns `(d, d·Σq)`.
#[inline(always)]
fn quantize16(xb: &[f32], qb: &mut [i8]) -> (f32, f32) {
    let amax = xb.iter().fold(0f32, |a, v| a.max(v.abs()));
    let scale = amax / 127.0;
    let inv = if scale > 0.0 { 1.0 / scale } else { 0.0 };
    let mut sum = 0i32;
    for (o, &v) in qb.iter_mut().zip(xb) {
        // Round half away from zero without a libm call (so the loop
        // vectorises): |t| ≤ 127, so t ± 0.5 truncated fits an i8.
        let t = v * inv;
        *o = (t + 0.5f32.copysign(t)) as i32 as i8;
        sum += *o as i32;
    }
    (scale, scale * sum as f32)
}

/// Quantizes `x` (a multiple of 16 long) into `q`, `d`, `ds`.
pub(super) fn quantize(x: &[f32], q: &mut [i8], d: &mut [f32], ds: &mut [f32]) {
    for ((xb, qb), (db, dsb)) in x
        .chunks_exact(16)
        .zip(q.chunks_exact_mut(16))
        .zip(d.iter_mut().zip(ds.iter_mut()))
    {
        (*db, *dsb) = quantize16(xb, qb);
    }
}

/// Quantizes the residual `x − d·q` of [`quantize`]'s result into `q2`, `d2`, `ds2`.
pub(super) fn quantize_residual(x: &[f32], q: &[i8], d: &[f32], q2: &mut [i8], d2: &mut [f32], ds2: &mut [f32]) {
    let mut r = [0f32; 16];
    for (((xb, qb), &db), ((q2b, d2b), ds2b)) in x
        .chunks_exact(16)
        .zip(q.chunks_exact(16))
        .zip(d)
        .zip(q2.chunks_exact_mut(16).zip(d2.iter_mut()).zip(ds2.iter_mut()))
    {
        for ((o, &xv), &qv) in r.iter_mut().zip(xb).zip(qb) {
            *o = xv - db * qv as f32;
        }
        (*d2b, *ds2b) = quantize16(&r, q2b);
    }
}

/// Whether the 8-bit path has a dot for `format` (all of them).
pub(super) fn supports(format: QuantFormat) -> bool {
    QuantFormat::ALL.contains(&format)
}

/// `x [m, k] @ dequantize(w)ᵀ → dst [m, n]` with `x` quantized to 8 bits, in
/// two terms when `two_term` (see the module docs).
#[allow(clippy::too_many_arguments)]
pub(super) fn gemv(
    isa: Isa,
    x: &[f32],
    w: &[u8],
    format: QuantFormat,
    m: usize,
    n: usize,
    k: usize,
    two_term: bool,
    dst: &mut [f32],
) {
    let nb16 = k / 16;
    let nb = k / format.block_elems();
    let rb = nb * format.block_bytes();
    // Scratch layout (f32 words) per term: q bytes (m·k/4), d (m·nb16), ds (m·nb16).
    let qwords = m * k / 4;
    let term = qwords + 2 * m * nb16;
    f32::with_scratch(if two_term { 2 * term } else { term }, |scratch| {
        let (first, second) = scratch.split_at_mut(term);
        let (qw, rest) = first.split_at_mut(qwords);
        let (d, ds) = rest.split_at_mut(m * nb16);
        let q: &mut [i8] = bytemuck::cast_slice_mut(qw);
        quantize(x, q, d, ds);
        let (q, d, ds): (&[i8], &[f32], &[f32]) = (q, d, ds);
        let (qw2, rest2) = second.split_at_mut(if two_term { qwords } else { 0 });
        let (d2, ds2) = rest2.split_at_mut(if two_term { m * nb16 } else { 0 });
        let q2: &mut [i8] = bytemuck::cast_slice_mut(qw2);
        if two_term {
            quantize_residual(x, q, d, q2, d2, ds2);
        }
        let (q2, d2, ds2): (&[i8], &[f32], &[f32]) = (q2, d2, ds2);
        let row = |mi: usize| QRow {
            q: &q[mi * k..(mi + 1) * k],
            d: &d[mi * nb16..(mi + 1) * nb16],
            ds: &ds[mi * nb16..(mi + 1) * nb16],
        };
        let row2 = |mi: usize| QRow {
            q: &q2[mi * k..(mi + 1) * k],
            d: &d2[mi * nb16..(mi + 1) * nb16],
            ds: &ds2[mi * nb16..(mi + 1) * nb16],
        };
        let out = OutPtr(dst.as_mut_ptr());
        let rows_per_task = (16384 / rb.max(1)).clamp(1, 256);
        (0..n.div_ceil(rows_per_task)).into_par_iter().for_each(|task| {
            let (r0, r1) = (task * rows_per_task, ((task + 1) * rows_per_task).min(n));
            for r in r0..r1 {
                let wr = &w[r * rb..(r + 1) * rb];
                for mi in 0..m {
                    let mut acc = dot(isa, format, wr, &row(mi), nb);
                    if two_term {
                        acc += dot(isa, format, wr, &row2(mi), nb);
                    }
                    // SAFETY: (mi, r) is inside dst (m×n); only this task writes column r.
                    unsafe { *out.get().add(mi * n + r) = acc };
                }
            }
        });
    });
}

/// Dot of `nb` packed blocks of `format` with a quantized activation row.
#[inline]
pub(super) fn dot(isa: Isa, format: QuantFormat, w: &[u8], row: &QRow, nb: usize) -> f32 {
    let be = format.block_elems();
    assert!(
        w.len() >= nb * format.block_bytes()
            && row.q.len() >= nb * be
            && row.d.len() >= nb * be / 16
            && row.ds.len() >= nb * be / 16,
        "8-bit dot: {nb} {format} blocks do not fit the row"
    );
    match isa {
        Isa::Scalar => dot_scalar(format, w, row, nb),
        // SAFETY: `detect`/`available` saw AVX2, FMA and F16C; the lengths are checked above.
        #[cfg(target_arch = "x86_64")]
        Isa::Avx2 => unsafe { x86::dot_avx2(format, w, row, nb) },
        // SAFETY: as above, plus AVX-512 F/BW/VL/VNNI.
        #[cfg(target_arch = "x86_64")]
        Isa::Avx512Vnni => unsafe { x86::dot_avx512(format, w, row, nb) },
    }
}

/// The eight (scale, min) pairs of a Q4_K/Q5_K super-block, as f32.
#[inline(always)]
fn k4_scales(scales: &[u8]) -> ([f32; 8], [f32; 8]) {
    let (mut sc, mut mn) = ([0f32; 8], [0f32; 8]);
    for j in 0..8 {
        let (a, b) = scale_min_k4(j, scales);
        sc[j] = a as f32;
        mn[j] = b as f32;
    }
    (sc, mn)
}

/// The definition: per 16 elements an integer dot of the weight codes with
/// the activation codes, then the scales and the format's offsets.
pub(super) fn dot_scalar(format: QuantFormat, w: &[u8], row: &QRow, nb: usize) -> f32 {
    let bb = format.block_bytes();
    let mut acc = 0f32;
    for (b, blk) in w.chunks_exact(bb).take(nb).enumerate() {
        match format {
            QuantFormat::Q8_0 | QuantFormat::Q4_0 | QuantFormat::Q4_1 | QuantFormat::Q5_0 | QuantFormat::Q5_1 => {
                let qx = &row.q[b * 32..b * 32 + 32];
                let d = f16_at(blk);
                // Block value j = d·code_j + c.
                let (c, codes): (f32, [i32; 32]) = match format {
                    QuantFormat::Q8_0 => (0.0, std::array::from_fn(|j| blk[2 + j] as i8 as i32)),
                    QuantFormat::Q4_0 | QuantFormat::Q4_1 => {
                        let (c, qs) = if format == QuantFormat::Q4_0 {
                            (-8.0 * d, &blk[2..18])
                        } else {
                            (f16_at(&blk[2..]), &blk[4..20])
                        };
                        (
                            c,
                            std::array::from_fn(|j| (if j < 16 { qs[j] & 0xF } else { qs[j - 16] >> 4 }) as i32),
                        )
                    }
                    _ => {
                        let (c, h) = if format == QuantFormat::Q5_0 {
                            (-16.0 * d, 2)
                        } else {
                            (f16_at(&blk[2..]), 4)
                        };
                        let qh = u32::from_le_bytes([blk[h], blk[h + 1], blk[h + 2], blk[h + 3]]);
                        let qs = &blk[h + 4..h + 20];
                        (
                            c,
                            std::array::from_fn(|j| {
                                let nib = if j < 16 { qs[j] & 0xF } else { qs[j - 16] >> 4 };
                                nib as i32 | (((qh >> j) & 1) << 4) as i32
                            }),
                        )
                    }
                };
                for h in 0..2 {
                    let idot: i32 = (h * 16..h * 16 + 16).map(|j| codes[j] * qx[j] as i32).sum();
                    acc += d * row.d[2 * b + h] * idot as f32 + c * row.ds[2 * b + h];
                }
            }
            QuantFormat::Q4_K | QuantFormat::Q5_K => {
                let (d, dmin) = (f16_at(blk), f16_at(&blk[2..]));
                let (sc, mn) = k4_scales(&blk[4..16]);
                let (qh, ql) = if format == QuantFormat::Q5_K {
                    (Some(&blk[16..48]), &blk[48..176])
                } else {
                    (None, &blk[16..144])
                };
                for i in 0..8 {
                    let c = b * 8 + i;
                    let qx = &row.q[c * 32..c * 32 + 32];
                    for h in 0..2 {
                        let mut idot = 0i32;
                        for l in h * 16..h * 16 + 16 {
                            let byte = ql[(i / 2) * 32 + l];
                            let mut code = if i % 2 == 0 { byte & 0xF } else { byte >> 4 } as i32;
                            if let Some(qh) = qh {
                                code |= (((qh[l] >> i) & 1) << 4) as i32;
                            }
                            idot += code * qx[l] as i32;
                        }
                        acc += d * sc[i] * row.d[2 * c + h] * idot as f32 - dmin * mn[i] * row.ds[2 * c + h];
                    }
                }
            }
            QuantFormat::Q6_K => {
                let (ql, qh, sc) = (&blk[0..128], &blk[128..192], &blk[192..208]);
                let d = f16_at(&blk[208..]);
                for c in 0..8 {
                    let (half, t) = (c / 4, c % 4);
                    let cc = b * 8 + c;
                    let qx = &row.q[cc * 32..cc * 32 + 32];
                    for g in 0..2 {
                        let mut gdot = 0i32;
                        for l in g * 16..g * 16 + 16 {
                            let byte = ql[half * 64 + (t % 2) * 32 + l];
                            let nib = if t < 2 { byte & 0xF } else { byte >> 4 };
                            let code = (nib | (((qh[half * 32 + l] >> (2 * t)) & 3) << 4)) as i32;
                            gdot += code * qx[l] as i32;
                        }
                        let h = 2 * cc + g;
                        acc += d * (sc[2 * c + g] as i8) as f32 * (row.d[h] * gdot as f32 - 32.0 * row.ds[h]);
                    }
                }
            }
        }
    }
    acc
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use std::arch::x86_64::*;

    use stitch_core::quant::QuantFormat;

    use super::{k4_scales, QRow};

    /// The f16 at `p` as f32, converted by F16C (the `half` crate's
    /// conversion is a call without it in this target-feature context).
    #[target_feature(enable = "f16c")]
    #[inline]
    unsafe fn f16_ptr(p: *const u8) -> f32 {
        // SAFETY: the caller points p at two readable bytes.
        let bits = unsafe { (p as *const u16).read_unaligned() };
        _mm_cvtss_f32(_mm_cvtph_ps(_mm_cvtsi32_si128(bits as i32)))
    }

    #[target_feature(enable = "avx2,fma")]
    #[inline]
    fn hsum(v: __m256) -> f32 {
        let s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
        let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
        _mm_cvtss_f32(_mm_add_ss(s, _mm_shuffle_ps(s, s, 1)))
    }

    /// `[a, a, a, a, b, b, b, b]`: per-lane scales of a 32-element dot's two halves.
    #[target_feature(enable = "avx2")]
    #[inline]
    fn pair(a: f32, b: f32) -> __m256 {
        _mm256_set_m128(_mm_set1_ps(b), _mm_set1_ps(a))
    }

    /// The scales of one K-quant super-block's sixteen 16-element halves:
    /// each sub-block's (scale, min) repeated twice.
    #[inline(always)]
    fn k4_scales16(scales: &[u8]) -> ([f32; 16], [f32; 16]) {
        let (sc, mn) = k4_scales(scales);
        (std::array::from_fn(|h| sc[h / 2]), std::array::from_fn(|h| mn[h / 2]))
    }

    /// 32 unsigned codes (or, for Q8_0, signed values) of one 32-element block,
    /// in element order. `F`: 0 Q4_0, 1 Q4_1, 2 Q8_0, 3 Q5_0, 4 Q5_1.
    #[target_feature(enable = "avx2")]
    #[inline]
    unsafe fn codes32<const F: u8>(blk: *const u8) -> __m256i {
        // SAFETY: blk points at a whole block of format F (the caller's contract).
        unsafe {
            if F == 2 {
                return _mm256_loadu_si256(blk.add(2) as *const __m256i);
            }
            let qs_at = match F {
                0 => 2,
                1 => 4,
                3 => 6,
                _ => 8,
            };
            let qs = _mm_loadu_si128(blk.add(qs_at) as *const __m128i);
            let mask = _mm256_set1_epi8(0x0F);
            let nib = _mm256_and_si256(_mm256_set_m128i(_mm_srli_epi16(qs, 4), qs), mask);
            if F < 3 {
                return nib;
            }
            // Fifth bits: element j has bit j of the little-endian u32 before qs.
            let qh = (blk.add(qs_at - 4) as *const i32).read_unaligned();
            let spread = _mm256_shuffle_epi8(
                _mm256_set1_epi32(qh),
                _mm256_set_epi64x(0x0303030303030303, 0x0202020202020202, 0x0101010101010101, 0),
            );
            let bit = _mm256_set1_epi64x(0x8040201008040201u64 as i64);
            let set = _mm256_cmpeq_epi8(_mm256_and_si256(spread, bit), bit);
            _mm256_or_si256(nib, _mm256_and_si256(set, _mm256_set1_epi8(0x10)))
        }
    }

    /// (d, c) of a 32-element block: value = d·code + c.
    #[target_feature(enable = "f16c")]
    #[inline]
    unsafe fn block_scales<const F: u8>(blk: *const u8) -> (f32, f32) {
        // SAFETY: blk points at a whole block of format F.
        unsafe {
            // d and the next f16 (Q4_1/Q5_1's minimum) in one conversion; every
            // block is at least 18 bytes, so the 4-byte read stays inside it.
            let dm = _mm_cvtph_ps(_mm_cvtsi32_si128((blk as *const i32).read_unaligned()));
            let d = _mm_cvtss_f32(dm);
            let c = match F {
                0 => -8.0 * d,
                3 => -16.0 * d,
                1 | 4 => _mm_cvtss_f32(_mm_movehdup_ps(dm)),
                _ => 0.0,
            };
            (d, c)
        }
    }

    /// Σ u·x over 4-byte groups (u unsigned ≤ 127·2 pairs fit i16).
    #[target_feature(enable = "avx2")]
    #[inline]
    fn mul_sum_u8_i8(u: __m256i, x: __m256i) -> __m256i {
        _mm256_madd_epi16(_mm256_maddubs_epi16(u, x), _mm256_set1_epi16(1))
    }

    /// # Safety
    /// AVX2, FMA and F16C; `w` holds `nb` blocks and `row` their activations.
    #[target_feature(enable = "avx2,fma,f16c")]
    pub(super) unsafe fn dot_avx2(format: QuantFormat, w: &[u8], row: &QRow, nb: usize) -> f32 {
        // SAFETY (all arms): the caller's contract.
        unsafe {
            match format {
                QuantFormat::Q4_0 => avx2_32::<0>(w, row, nb),
                QuantFormat::Q4_1 => avx2_32::<1>(w, row, nb),
                QuantFormat::Q8_0 => avx2_32::<2>(w, row, nb),
                QuantFormat::Q5_0 => avx2_32::<3>(w, row, nb),
                QuantFormat::Q5_1 => avx2_32::<4>(w, row, nb),
                QuantFormat::Q4_K => avx2_k4::<false>(w, row, nb),
                QuantFormat::Q5_K => avx2_k4::<true>(w, row, nb),
                QuantFormat::Q6_K => avx2_q6k(w, row, nb),
            }
        }
    }

    const fn block_bytes(f: u8) -> usize {
        match f {
            0 => 18,
            1 => 20,
            2 => 34,
            3 => 22,
            _ => 24,
        }
    }

    /// 32-element formats: two blocks per iteration into two accumulators.
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn avx2_32<const F: u8>(w: &[u8], row: &QRow, nb: usize) -> f32 {
        let bb = block_bytes(F);
        let (wp, qp) = (w.as_ptr(), row.q.as_ptr());
        // One accumulator: indexing two by `b & 1` kept them in memory.
        let mut acc = _mm256_setzero_ps();
        let mut off = 0f32;
        for b in 0..nb {
            // SAFETY: b < nb; the caller's contract covers the block and its activations.
            unsafe {
                let blk = wp.add(b * bb);
                let x = _mm256_loadu_si256(qp.add(b * 32) as *const __m256i);
                let u = codes32::<F>(blk);
                let dot = if F == 2 {
                    mul_sum_u8_i8(_mm256_abs_epi8(u), _mm256_sign_epi8(x, u))
                } else {
                    mul_sum_u8_i8(u, x)
                };
                let (d, c) = block_scales::<F>(blk);
                let (da, db) = (*row.d.get_unchecked(2 * b), *row.d.get_unchecked(2 * b + 1));
                acc = _mm256_fmadd_ps(_mm256_cvtepi32_ps(dot), pair(d * da, d * db), acc);
                off += c * (*row.ds.get_unchecked(2 * b) + *row.ds.get_unchecked(2 * b + 1));
            }
        }
        hsum(acc) + off
    }

    /// Q4_K (`H` false) and Q5_K (`H` true).
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn avx2_k4<const H: bool>(w: &[u8], row: &QRow, nb: usize) -> f32 {
        let bb = if H { 176 } else { 144 };
        let (wp, qp) = (w.as_ptr(), row.q.as_ptr());
        let mask = _mm256_set1_epi8(0x0F);
        let (one, bit4) = (_mm256_set1_epi8(1), _mm256_set1_epi8(0x10));
        let mut acc = [_mm256_setzero_ps(); 2];
        let mut acc_min = _mm256_setzero_ps();
        for b in 0..nb {
            // SAFETY: b < nb; the caller's contract covers the block and its activations.
            unsafe {
                let blk = wp.add(b * bb);
                let (d, dmin) = (f16_ptr(blk), f16_ptr(blk.add(2)));
                let (sc, mn) = k4_scales16(std::slice::from_raw_parts(blk.add(4), 12));
                let mut scale = [0f32; 16];
                for h in 0..2 {
                    let dx = _mm256_loadu_ps(row.d.as_ptr().add(b * 16 + 8 * h));
                    let sc = _mm256_loadu_ps(sc.as_ptr().add(8 * h));
                    _mm256_storeu_ps(
                        scale.as_mut_ptr().add(8 * h),
                        _mm256_mul_ps(_mm256_mul_ps(sc, dx), _mm256_set1_ps(d)),
                    );
                    acc_min = _mm256_fmadd_ps(
                        _mm256_mul_ps(_mm256_loadu_ps(mn.as_ptr().add(8 * h)), _mm256_set1_ps(dmin)),
                        _mm256_loadu_ps(row.ds.as_ptr().add(b * 16 + 8 * h)),
                        acc_min,
                    );
                }
                let ql = blk.add(if H { 48 } else { 16 });
                let mut qh = if H {
                    _mm256_loadu_si256(blk.add(16) as *const __m256i)
                } else {
                    _mm256_setzero_si256()
                };
                for j in 0..4 {
                    let qs = _mm256_loadu_si256(ql.add(32 * j) as *const __m256i);
                    let mut lo = _mm256_and_si256(qs, mask);
                    let mut hi = _mm256_and_si256(_mm256_srli_epi16(qs, 4), mask);
                    if H {
                        lo = _mm256_or_si256(
                            lo,
                            _mm256_and_si256(_mm256_slli_epi16(_mm256_and_si256(qh, one), 4), bit4),
                        );
                        let h1 = _mm256_and_si256(_mm256_srli_epi16(qh, 1), one);
                        hi = _mm256_or_si256(hi, _mm256_slli_epi16(h1, 4));
                        qh = _mm256_srli_epi16(qh, 2);
                    }
                    let x0 = _mm256_loadu_si256(qp.add(b * 256 + 64 * j) as *const __m256i);
                    let x1 = _mm256_loadu_si256(qp.add(b * 256 + 64 * j + 32) as *const __m256i);
                    acc[0] = _mm256_fmadd_ps(
                        _mm256_cvtepi32_ps(mul_sum_u8_i8(lo, x0)),
                        pair(scale[4 * j], scale[4 * j + 1]),
                        acc[0],
                    );
                    acc[1] = _mm256_fmadd_ps(
                        _mm256_cvtepi32_ps(mul_sum_u8_i8(hi, x1)),
                        pair(scale[4 * j + 2], scale[4 * j + 3]),
                        acc[1],
                    );
                }
            }
        }
        hsum(_mm256_add_ps(acc[0], acc[1])) - hsum(acc_min)
    }

    /// Q6_K: `maddubs` then `madd` by the 16-element scales; the −32 offset
    /// from Σq per 16 elements.
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn avx2_q6k(w: &[u8], row: &QRow, nb: usize) -> f32 {
        let (wp, qp) = (w.as_ptr(), row.q.as_ptr());
        let (mask, three) = (_mm256_set1_epi8(0x0F), _mm256_set1_epi8(3));
        let mut acc = [_mm256_setzero_ps(); 2];
        let mut acc_off = _mm256_setzero_ps();
        for b in 0..nb {
            // SAFETY: b < nb; the caller's contract covers the block and its activations.
            unsafe {
                let blk = wp.add(b * 210);
                let d = f16_ptr(blk.add(208));
                let mut scale = [0f32; 16];
                for h in 0..2 {
                    // 32·d·Σ_g sc_g·dx_g·Σq_g, the −32 offset.
                    let sc8 = _mm_loadl_epi64(blk.add(192 + 8 * h) as *const __m128i);
                    let scf = _mm256_mul_ps(_mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(sc8)), _mm256_set1_ps(d));
                    acc_off = _mm256_fmadd_ps(scf, _mm256_loadu_ps(row.ds.as_ptr().add(b * 16 + 8 * h)), acc_off);
                    let dx = _mm256_loadu_ps(row.d.as_ptr().add(b * 16 + 8 * h));
                    _mm256_storeu_ps(scale.as_mut_ptr().add(8 * h), _mm256_mul_ps(dx, _mm256_set1_ps(d)));
                }
                let sc = blk.add(192) as *const i8;
                for half in 0..2 {
                    let ql_a = _mm256_loadu_si256(blk.add(64 * half) as *const __m256i);
                    let ql_b = _mm256_loadu_si256(blk.add(64 * half + 32) as *const __m256i);
                    let qh = _mm256_loadu_si256(blk.add(128 + 32 * half) as *const __m256i);
                    let codes = [
                        (_mm256_and_si256(ql_a, mask), qh),
                        (_mm256_and_si256(ql_b, mask), _mm256_srli_epi16(qh, 2)),
                        (
                            _mm256_and_si256(_mm256_srli_epi16(ql_a, 4), mask),
                            _mm256_srli_epi16(qh, 4),
                        ),
                        (
                            _mm256_and_si256(_mm256_srli_epi16(ql_b, 4), mask),
                            _mm256_srli_epi16(qh, 6),
                        ),
                    ];
                    for (t, (nib, h)) in codes.into_iter().enumerate() {
                        let c = 4 * half + t;
                        let u = _mm256_or_si256(nib, _mm256_slli_epi16(_mm256_and_si256(h, three), 4));
                        let x = _mm256_loadu_si256(qp.add(b * 256 + 32 * c) as *const __m256i);
                        let scv = _mm256_set_m128i(
                            _mm_set1_epi16(*sc.add(2 * c + 1) as i16),
                            _mm_set1_epi16(*sc.add(2 * c) as i16),
                        );
                        let dot = _mm256_madd_epi16(_mm256_maddubs_epi16(u, x), scv);
                        let s = pair(scale[2 * c], scale[2 * c + 1]);
                        acc[t & 1] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(dot), s, acc[t & 1]);
                    }
                }
            }
        }
        hsum(_mm256_add_ps(acc[0], acc[1])) - 32.0 * hsum(acc_off)
    }

    /// # Safety
    /// AVX2, FMA, F16C and AVX-512 F/BW/VL/VNNI; `w` holds `nb` blocks and
    /// `row` their activations.
    #[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")]
    pub(super) unsafe fn dot_avx512(format: QuantFormat, w: &[u8], row: &QRow, nb: usize) -> f32 {
        // SAFETY (all arms): the caller's contract.
        unsafe {
            match format {
                QuantFormat::Q4_0 => avx512_32::<0>(w, row, nb),
                QuantFormat::Q4_1 => avx512_32::<1>(w, row, nb),
                QuantFormat::Q8_0 => avx512_32::<2>(w, row, nb),
                QuantFormat::Q5_0 => avx512_32::<3>(w, row, nb),
                QuantFormat::Q5_1 => avx512_32::<4>(w, row, nb),
                QuantFormat::Q4_K => avx512_k4::<false>(w, row, nb),
                QuantFormat::Q5_K => avx512_k4::<true>(w, row, nb),
                QuantFormat::Q6_K => avx512_q6k(w, row, nb),
            }
        }
    }

    /// Lane indices `[g, g, g, g, g+1, …, g+3, g+3, g+3, g+3]`: lanes 4h..4h+4
    /// of a 64-element dot are 16-element group g+h.
    #[target_feature(enable = "avx512f")]
    #[inline]
    fn quads(g: i32) -> __m512i {
        _mm512_add_epi32(
            _mm512_set_epi32(3, 3, 3, 3, 2, 2, 2, 2, 1, 1, 1, 1, 0, 0, 0, 0),
            _mm512_set1_epi32(g),
        )
    }

    #[target_feature(enable = "avx512f")]
    #[inline]
    fn hsum512(v: __m512) -> f32 {
        _mm512_reduce_add_ps(v)
    }

    /// Integer dot of 64 codes with 64 activations: 16 i32 lanes (lanes 0-7
    /// the first 32 elements). Q8_0 (`signed`) moves the weights' signs onto
    /// the activations.
    #[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
    #[inline]
    fn dot64(signed: bool, u: __m512i, x: __m512i) -> __m512i {
        let zero = _mm512_setzero_si512();
        if signed {
            let neg = _mm512_movepi8_mask(u);
            let xs = _mm512_mask_sub_epi8(x, neg, zero, x);
            _mm512_dpbusd_epi32(zero, _mm512_abs_epi8(u), xs)
        } else {
            _mm512_dpbusd_epi32(zero, u, x)
        }
    }

    /// 32-element formats, two blocks per 512-bit register.
    #[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")]
    unsafe fn avx512_32<const F: u8>(w: &[u8], row: &QRow, nb: usize) -> f32 {
        let bb = block_bytes(F);
        let (wp, qp) = (w.as_ptr(), row.q.as_ptr());
        // One accumulator: indexing two by a run-time parity kept them in memory.
        let mut acc = _mm512_setzero_ps();
        let mut off = 0f32;
        let mut b = 0;
        while b + 1 < nb {
            // SAFETY: b + 1 < nb; the caller's contract covers both blocks and their activations.
            unsafe {
                let (b0, b1) = (wp.add(b * bb), wp.add((b + 1) * bb));
                let u = _mm512_inserti64x4(_mm512_castsi256_si512(codes32::<F>(b0)), codes32::<F>(b1), 1);
                let x = _mm512_loadu_si512(qp.add(b * 32) as *const __m512i);
                let dot = dot64(F == 2, u, x);
                let ((d0, c0), (d1, c1)) = (block_scales::<F>(b0), block_scales::<F>(b1));
                // Lanes 4h..4h+4 hold half h of the two blocks: scale d_block·dx_h.
                let dx = _mm512_permutexvar_ps(
                    quads(0),
                    _mm512_castps128_ps512(_mm_loadu_ps(row.d.as_ptr().add(2 * b))),
                );
                let scale = _mm512_mul_ps(dx, _mm512_mask_blend_ps(0xFF00, _mm512_set1_ps(d0), _mm512_set1_ps(d1)));
                acc = _mm512_fmadd_ps(_mm512_cvtepi32_ps(dot), scale, acc);
                let ds = row.ds.as_ptr().add(2 * b);
                off += c0 * (*ds + *ds.add(1)) + c1 * (*ds.add(2) + *ds.add(3));
            }
            b += 2;
        }
        let mut tail = 0f32;
        if b < nb {
            // SAFETY: b < nb, as above; 256-bit VNNI on the last block.
            unsafe {
                let blk = wp.add(b * bb);
                let u = codes32::<F>(blk);
                let x = _mm256_loadu_si256(qp.add(b * 32) as *const __m256i);
                let zero = _mm256_setzero_si256();
                let dot = if F == 2 {
                    _mm256_dpbusd_epi32(zero, _mm256_abs_epi8(u), _mm256_sign_epi8(x, u))
                } else {
                    _mm256_dpbusd_epi32(zero, u, x)
                };
                let (d, c) = block_scales::<F>(blk);
                let (da, db) = (*row.d.get_unchecked(2 * b), *row.d.get_unchecked(2 * b + 1));
                tail = hsum(_mm256_mul_ps(_mm256_cvtepi32_ps(dot), pair(d * da, d * db)))
                    + c * (*row.ds.get_unchecked(2 * b) + *row.ds.get_unchecked(2 * b + 1));
            }
        }
        hsum512(acc) + off + tail
    }

    /// Q4_K (`H` false) and Q5_K (`H` true): sub-blocks 2j and 2j+1 (low and
    /// high nibbles of the same 32 bytes) fill one 512-bit register.
    #[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")]
    unsafe fn avx512_k4<const H: bool>(w: &[u8], row: &QRow, nb: usize) -> f32 {
        let bb = if H { 176 } else { 144 };
        let (wp, qp) = (w.as_ptr(), row.q.as_ptr());
        let mask = _mm512_set1_epi8(0x0F);
        let mut acc = [_mm512_setzero_ps(); 2];
        let mut acc_min = _mm512_setzero_ps();
        for b in 0..nb {
            // SAFETY: b < nb; the caller's contract covers the block and its activations.
            unsafe {
                let blk = wp.add(b * bb);
                let (d, dmin) = (f16_ptr(blk), f16_ptr(blk.add(2)));
                let (sc, mn) = k4_scales16(std::slice::from_raw_parts(blk.add(4), 12));
                let dx = _mm512_loadu_ps(row.d.as_ptr().add(b * 16));
                let scale = _mm512_mul_ps(_mm512_mul_ps(_mm512_loadu_ps(sc.as_ptr()), dx), _mm512_set1_ps(d));
                acc_min = _mm512_fmadd_ps(
                    _mm512_mul_ps(_mm512_loadu_ps(mn.as_ptr()), _mm512_set1_ps(dmin)),
                    _mm512_loadu_ps(row.ds.as_ptr().add(b * 16)),
                    acc_min,
                );
                let ql = blk.add(if H { 48 } else { 16 });
                let qh = if H {
                    _mm256_loadu_si256(blk.add(16) as *const __m256i)
                } else {
                    _mm256_setzero_si256()
                };
                for j in 0..4 {
                    let qs = _mm256_loadu_si256(ql.add(32 * j) as *const __m256i);
                    let mut u = _mm512_and_si512(
                        _mm512_inserti64x4(_mm512_castsi256_si512(qs), _mm256_srli_epi16(qs, 4), 1),
                        mask,
                    );
                    if H {
                        let lo = _mm256_test_epi8_mask(qh, _mm256_set1_epi8(1 << (2 * j))) as u64;
                        let hi = _mm256_test_epi8_mask(qh, _mm256_set1_epi8(1 << (2 * j + 1))) as u64;
                        u = _mm512_or_si512(u, _mm512_maskz_set1_epi8(lo | (hi << 32), 0x10));
                    }
                    let x = _mm512_loadu_si512(qp.add(b * 256 + 64 * j) as *const __m512i);
                    let dot = dot64(false, u, x);
                    let s = _mm512_permutexvar_ps(quads(4 * j as i32), scale);
                    acc[j & 1] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(dot), s, acc[j & 1]);
                }
            }
        }
        hsum512(_mm512_add_ps(acc[0], acc[1])) - hsum512(acc_min)
    }

    /// Q6_K: per half super-block, the low nibbles give elements 0..64 and the
    /// high nibbles 64..128 in order; 512-bit `maddubs`, then `madd` by the
    /// 16-element scales.
    #[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")]
    unsafe fn avx512_q6k(w: &[u8], row: &QRow, nb: usize) -> f32 {
        let (wp, qp) = (w.as_ptr(), row.q.as_ptr());
        let (mask, three) = (_mm512_set1_epi8(0x0F), _mm512_set1_epi8(3));
        let mut acc = [_mm512_setzero_ps(); 2];
        let mut acc_off = _mm512_setzero_ps();
        for b in 0..nb {
            // SAFETY: b < nb; the caller's contract covers the block and its activations.
            unsafe {
                let blk = wp.add(b * 210);
                let d = _mm512_set1_ps(f16_ptr(blk.add(208)));
                let sc8 = _mm_loadu_si128(blk.add(192) as *const __m128i);
                // 32·d·Σ_g sc_g·dx_g·Σq_g, the −32 offset.
                let scf = _mm512_mul_ps(_mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(sc8)), d);
                acc_off = _mm512_fmadd_ps(scf, _mm512_loadu_ps(row.ds.as_ptr().add(b * 16)), acc_off);
                let dx = _mm512_mul_ps(_mm512_loadu_ps(row.d.as_ptr().add(b * 16)), d);
                let sc16 = _mm512_castsi256_si512(_mm256_cvtepi8_epi16(sc8));
                for half in 0..2 {
                    let ql = _mm512_loadu_si512(blk.add(64 * half) as *const __m512i);
                    let qh = _mm256_loadu_si256(blk.add(128 + 32 * half) as *const __m256i);
                    let qh2 = _mm512_inserti64x4(_mm512_castsi256_si512(qh), _mm256_srli_epi16(qh, 2), 1);
                    let codes = [
                        _mm512_or_si512(
                            _mm512_and_si512(ql, mask),
                            _mm512_slli_epi16(_mm512_and_si512(qh2, three), 4),
                        ),
                        _mm512_or_si512(
                            _mm512_and_si512(_mm512_srli_epi16(ql, 4), mask),
                            _mm512_slli_epi16(_mm512_and_si512(_mm512_srli_epi16(qh2, 4), three), 4),
                        ),
                    ];
                    for (t, u) in codes.into_iter().enumerate() {
                        // Elements 64p..64p+64: 16-element groups 4p..4p+4, 32-element blocks 2p, 2p+1.
                        let p = 2 * half + t;
                        let x = _mm512_loadu_si512(qp.add(b * 256 + 64 * p) as *const __m512i);
                        let g = 4 * p as i16;
                        let gidx = _mm512_set_epi16(
                            g + 3,
                            g + 3,
                            g + 3,
                            g + 3,
                            g + 3,
                            g + 3,
                            g + 3,
                            g + 3,
                            g + 2,
                            g + 2,
                            g + 2,
                            g + 2,
                            g + 2,
                            g + 2,
                            g + 2,
                            g + 2,
                            g + 1,
                            g + 1,
                            g + 1,
                            g + 1,
                            g + 1,
                            g + 1,
                            g + 1,
                            g + 1,
                            g,
                            g,
                            g,
                            g,
                            g,
                            g,
                            g,
                            g,
                        );
                        let scv = _mm512_permutexvar_epi16(gidx, sc16);
                        let dot = _mm512_madd_epi16(_mm512_maddubs_epi16(u, x), scv);
                        let s = _mm512_permutexvar_ps(quads(4 * p as i32), dx);
                        acc[t] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(dot), s, acc[t]);
                    }
                }
            }
        }
        hsum512(_mm512_add_ps(acc[0], acc[1])) - 32.0 * hsum512(acc_off)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{Rng, SeedableRng};
    use stitch_core::quant::dequantize_block;

    /// Random blocks of `format` with sane f16 scales (random bytes elsewhere).
    fn random_blocks(format: QuantFormat, nb: usize, r: &mut impl Rng) -> Vec<u8> {
        let bb = format.block_bytes();
        let mut w: Vec<u8> = (0..nb * bb).map(|_| r.gen()).collect();
        let put = |blk: &mut [u8], at: usize, v: f32| {
            blk[at..at + 2].copy_from_slice(&half::f16::from_f32(v).to_bits().to_le_bytes())
        };
        for blk in w.chunks_exact_mut(bb) {
            match format {
                QuantFormat::Q6_K => put(blk, 208, r.gen_range(0.001..0.01)),
                QuantFormat::Q4_K | QuantFormat::Q5_K => {
                    put(blk, 0, r.gen_range(0.001..0.01));
                    put(blk, 2, r.gen_range(0.001..0.01));
                }
                QuantFormat::Q4_1 | QuantFormat::Q5_1 => {
                    put(blk, 0, r.gen_range(0.01..0.1));
                    put(blk, 2, r.gen_range(-0.1..0.1));
                }
                _ => put(blk, 0, r.gen_range(0.01..0.1)),
            }
        }
        w
    }

    struct Acts {
        q: Vec<i8>,
        d: Vec<f32>,
        ds: Vec<f32>,
    }

    impl Acts {
        fn new(x: &[f32]) -> Acts {
            let k = x.len();
            let mut a = Acts {
                q: vec![0; k],
                d: vec![0.0; k / 16],
                ds: vec![0.0; k / 16],
            };
            quantize(x, &mut a.q, &mut a.d, &mut a.ds);
            a
        }
        fn row(&self) -> QRow<'_> {
            QRow {
                q: &self.q,
                d: &self.d,
                ds: &self.ds,
            }
        }
    }

    #[test]
    fn quantize_keeps_codes_within_half_a_step_and_their_sums() {
        let mut r = rand_chacha::ChaCha8Rng::seed_from_u64(11);
        let x: Vec<f32> = (0..96).map(|_| r.gen_range(-3.0..3.0)).collect();
        let a = Acts::new(&x);
        for (b, xb) in x.chunks(16).enumerate() {
            let amax = xb.iter().fold(0f32, |m, v| m.max(v.abs()));
            assert!((a.d[b] - amax / 127.0).abs() <= 1e-7 * amax);
            for (j, &v) in xb.iter().enumerate() {
                let err = (v - a.d[b] * a.q[b * 16 + j] as f32).abs();
                assert!(err <= 0.5001 * a.d[b], "block {b} element {j}: {err}");
            }
            let sum: i32 = a.q[b * 16..b * 16 + 16].iter().map(|&v| v as i32).sum();
            assert_eq!(a.ds[b], a.d[b] * sum as f32, "block {b}");
        }
    }

    /// The scalar definition equals Σ dequantize(w)·(dx·q) in f64.
    #[test]
    fn scalar_dot_equals_dequantized_weights_times_dequantized_activations() {
        let mut r = rand_chacha::ChaCha8Rng::seed_from_u64(12);
        for format in QuantFormat::ALL {
            for nb in [1, 3] {
                let (be, bb) = (format.block_elems(), format.block_bytes());
                let w = random_blocks(format, nb, &mut r);
                let x: Vec<f32> = (0..nb * be).map(|_| r.gen_range(-1.0..1.0)).collect();
                let a = Acts::new(&x);
                let mut wf = vec![0f32; nb * be];
                for (o, blk) in wf.chunks_exact_mut(be).zip(w.chunks_exact(bb)) {
                    dequantize_block(format, blk, o);
                }
                let (mut want, mut mag) = (0f64, 0f64);
                for (i, &wv) in wf.iter().enumerate() {
                    let xv = a.d[i / 16] as f64 * a.q[i] as f64;
                    want += wv as f64 * xv;
                    mag += (wv as f64 * xv).abs();
                }
                let got = dot_scalar(format, &w, &a.row(), nb) as f64;
                assert!(
                    (got - want).abs() <= 1e-5 * mag,
                    "{format} × {nb}: {got} vs {want} (Σ|·| {mag})"
                );
            }
        }
    }

    #[test]
    fn every_isa_equals_the_scalar_definition_for_every_format() {
        let isas = Isa::available();
        #[cfg(target_arch = "x86_64")]
        {
            use std::arch::is_x86_feature_detected as has;
            // The SIMD paths this CPU has are really exercised, not skipped.
            assert_eq!(isas.contains(&Isa::Avx2), has!("avx2") && has!("fma") && has!("f16c"));
            assert_eq!(
                isas.contains(&Isa::Avx512Vnni),
                isas.contains(&Isa::Avx2) && has!("avx512bw") && has!("avx512vl") && has!("avx512vnni")
            );
        }
        eprintln!("8-bit dot kernels tested: {isas:?}");
        let mut r = rand_chacha::ChaCha8Rng::seed_from_u64(13);
        for format in QuantFormat::ALL {
            // Odd block counts exercise the pair loops' tails.
            for nb in [1, 2, 3, 5, 8, 13] {
                let (be, bb) = (format.block_elems(), format.block_bytes());
                let w = random_blocks(format, nb, &mut r);
                let x: Vec<f32> = (0..nb * be).map(|_| r.gen_range(-2.0..2.0)).collect();
                let a = Acts::new(&x);
                let row = a.row();
                let want = dot_scalar(format, &w, &row, nb);
                let mut wf = vec![0f32; be];
                let mut mag = 0f32;
                for (i, blk) in w.chunks_exact(bb).enumerate() {
                    dequantize_block(format, blk, &mut wf);
                    for (j, &wv) in wf.iter().enumerate() {
                        mag += (wv * x[i * be + j]).abs();
                    }
                }
                for &isa in &isas {
                    let got = dot(isa, format, &w, &row, nb);
                    assert!(
                        (got - want).abs() <= 1e-5 * mag,
                        "{isa:?} {format} × {nb}: {got} vs {want} (Σ|·| {mag})"
                    );
                }
            }
        }
    }

    /// Two-term activations: the residual's codes stay within half of its step,
    /// and the product's error against exact f32 activations shrinks by far
    /// more than 30x for every format and kernel set.
    #[test]
    fn two_term_activations_cut_the_product_error() {
        let mut r = rand_chacha::ChaCha8Rng::seed_from_u64(14);
        let (m, n, k) = (2, 7, 512);
        for format in QuantFormat::ALL {
            let (be, bb) = (format.block_elems(), format.block_bytes());
            let w = random_blocks(format, n * k / be, &mut r);
            let x: Vec<f32> = (0..m * k).map(|_| r.gen_range(-2.0..2.0)).collect();
            let mut wf = vec![0f32; n * k];
            for (o, blk) in wf.chunks_exact_mut(be).zip(w.chunks_exact(bb)) {
                dequantize_block(format, blk, o);
            }
            let want: Vec<f64> = (0..m * n)
                .map(|i| {
                    let (mi, ni) = (i / n, i % n);
                    (0..k).map(|j| x[mi * k + j] as f64 * wf[ni * k + j] as f64).sum()
                })
                .collect();
            let scale = want.iter().fold(0f64, |a, v| a.max(v.abs()));
            for isa in Isa::available() {
                let err = |two_term: bool| {
                    let mut got = vec![0f32; m * n];
                    gemv(isa, &x, &w, format, m, n, k, two_term, &mut got);
                    got.iter()
                        .zip(&want)
                        .fold(0f64, |a, (&g, &e)| a.max((g as f64 - e).abs()))
                };
                let (one, two) = (err(false), err(true));
                assert!(
                    two * 30.0 < one && two < 1e-4 * scale,
                    "{isa:?} {format}: one term {one:.3e}, two terms {two:.3e} (max |y| {scale:.3})"
                );
            }
        }
        // The residual's own quantization.
        let x: Vec<f32> = (0..64).map(|_| r.gen_range(-3.0..3.0)).collect();
        let a = Acts::new(&x);
        let (mut q2, mut d2, mut ds2) = (vec![0i8; 64], vec![0f32; 4], vec![0f32; 4]);
        quantize_residual(&x, &a.q, &a.d, &mut q2, &mut d2, &mut ds2);
        for (i, &v) in x.iter().enumerate() {
            let (g, approx) = (i / 16, a.d[i / 16] * a.q[i] as f32 + d2[i / 16] * q2[i] as f32);
            assert!(
                d2[g] <= a.d[g] / 200.0,
                "group {g}: residual step {} vs {}",
                d2[g],
                a.d[g]
            );
            assert!((v - approx).abs() <= 0.5001 * d2[g] + 1e-7, "element {i}");
        }
    }

    #[test]
    fn dot_rejects_a_row_shorter_than_its_blocks() {
        let w = vec![0u8; 2 * 18];
        let a = Acts::new(&[0.5; 16]);
        let err = std::panic::catch_unwind(|| dot(Isa::Scalar, QuantFormat::Q4_0, &w, &a.row(), 2));
        assert!(err.is_err());
    }
}
