//! Block-quantized storage formats.
//!
//! A quantized weight is stored packed, as raw bytes: a `u8` tensor of shape
//! `[rows, row_bytes]`, each row a sequence of blocks in one [`QuantFormat`]. The
//! format travels with the op that reads it (a quantized matmul or a dequantize),
//! so nothing expands it unless a plan step says so. The layouts are GGUF's
//! (ggml's), so GGUF weights load zero-copy.

use crate::error::{Error, Result};

/// A block-quantized format: how many logical elements one block holds and how many
/// bytes it takes.
#[allow(non_camel_case_types)] // the names GGUF and llama.cpp use
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum QuantFormat {
    /// 32 elements: f16 scale `d`, 32 × i8. `x = d * q`.
    Q8_0,
    /// 32 elements: f16 scale `d`, 32 × 4-bit. `x = d * (q - 8)`.
    Q4_0,
    /// 32 elements: f16 scale `d`, f16 minimum `m`, 32 × 4-bit. `x = d * q + m`.
    Q4_1,
    /// 32 elements: f16 `d`, 32 high bits, 32 × 4-bit low bits. `x = d * (q - 16)`.
    Q5_0,
    /// 32 elements: f16 `d`, f16 `m`, 32 high bits, 32 × 4-bit. `x = d * q + m`.
    Q5_1,
    /// 256-element super-block: f16 `d`, f16 `dmin`, 8 × (6-bit scale, 6-bit min), 256 × 4-bit.
    Q4_K,
    /// 256-element super-block: like Q4_K with a fifth bit per element.
    Q5_K,
    /// 256-element super-block: 256 × 6-bit, 16 × i8 scales, f16 `d`.
    Q6_K,
}

impl QuantFormat {
    /// Every format, in a stable order.
    pub const ALL: [QuantFormat; 8] = [
        QuantFormat::Q8_0,
        QuantFormat::Q4_0,
        QuantFormat::Q4_1,
        QuantFormat::Q5_0,
        QuantFormat::Q5_1,
        QuantFormat::Q4_K,
        QuantFormat::Q5_K,
        QuantFormat::Q6_K,
    ];

    /// Logical elements per block.
    pub const fn block_elems(self) -> usize {
        match self {
            QuantFormat::Q8_0 | QuantFormat::Q4_0 | QuantFormat::Q4_1 | QuantFormat::Q5_0 | QuantFormat::Q5_1 => 32,
            QuantFormat::Q4_K | QuantFormat::Q5_K | QuantFormat::Q6_K => 256,
        }
    }

    /// Bytes per block.
    pub const fn block_bytes(self) -> usize {
        match self {
            QuantFormat::Q8_0 => 34,
            QuantFormat::Q4_0 => 18,
            QuantFormat::Q4_1 => 20,
            QuantFormat::Q5_0 => 22,
            QuantFormat::Q5_1 => 24,
            QuantFormat::Q4_K => 144,
            QuantFormat::Q5_K => 176,
            QuantFormat::Q6_K => 210,
        }
    }

    /// The format's usual name (as GGUF and llama.cpp write it).
    pub const fn name(self) -> &'static str {
        match self {
            QuantFormat::Q8_0 => "Q8_0",
            QuantFormat::Q4_0 => "Q4_0",
            QuantFormat::Q4_1 => "Q4_1",
            QuantFormat::Q5_0 => "Q5_0",
            QuantFormat::Q5_1 => "Q5_1",
            QuantFormat::Q4_K => "Q4_K",
            QuantFormat::Q5_K => "Q5_K",
            QuantFormat::Q6_K => "Q6_K",
        }
    }

    /// Bytes of one packed row of `elems` logical elements; an error when `elems`
    /// is not a whole number of blocks.
    pub fn row_bytes(self, elems: usize) -> Result<usize> {
        if !elems.is_multiple_of(self.block_elems()) {
            return Err(Error::Invalid(format!(
                "{} rows must hold a multiple of {} elements, got {elems}",
                self.name(),
                self.block_elems()
            )));
        }
        Ok(elems / self.block_elems() * self.block_bytes())
    }
}

impl std::fmt::Display for QuantFormat {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// f16 stored little-endian at `b[0..2]`.
#[inline(always)]
fn f16_at(b: &[u8]) -> f32 {
    half::f16::from_bits(u16::from_le_bytes([b[0], b[1]])).to_f32()
}

/// (scale, min) number `j` (0..8) of a K-quant super-block's 12 packed bytes
/// (Q4_K and Q5_K; shared with the CPU's quantized kernels).
#[inline(always)]
pub fn scale_min_k4(j: usize, q: &[u8]) -> (u8, u8) {
    if j < 4 {
        (q[j] & 63, q[j + 4] & 63)
    } else {
        (
            (q[j + 4] & 0xF) | ((q[j - 4] >> 6) << 4),
            (q[j + 4] >> 4) | ((q[j] >> 6) << 4),
        )
    }
}

/// Expands one block of `format` (`block_bytes()` bytes) into `out`
/// (`block_elems()` values). Lengths are the caller's to check.
#[inline]
pub fn dequantize_block(format: QuantFormat, b: &[u8], out: &mut [f32]) {
    match format {
        QuantFormat::Q8_0 => {
            let d = f16_at(b);
            for (o, &q) in out[..32].iter_mut().zip(&b[2..34]) {
                *o = d * (q as i8) as f32;
            }
        }
        QuantFormat::Q4_0 => {
            let d = f16_at(b);
            let qs = &b[2..18];
            for j in 0..16 {
                out[j] = d * ((qs[j] & 0xF) as i32 - 8) as f32;
                out[j + 16] = d * ((qs[j] >> 4) as i32 - 8) as f32;
            }
        }
        QuantFormat::Q4_1 => {
            let (d, m) = (f16_at(b), f16_at(&b[2..]));
            let qs = &b[4..20];
            for j in 0..16 {
                out[j] = d * (qs[j] & 0xF) as f32 + m;
                out[j + 16] = d * (qs[j] >> 4) as f32 + m;
            }
        }
        QuantFormat::Q5_0 | QuantFormat::Q5_1 => {
            let (d, m, hoff) = if format == QuantFormat::Q5_0 {
                (f16_at(b), 0.0, 2)
            } else {
                (f16_at(b), f16_at(&b[2..]), 4)
            };
            let qh = u32::from_le_bytes([b[hoff], b[hoff + 1], b[hoff + 2], b[hoff + 3]]);
            let qs = &b[hoff + 4..hoff + 20];
            let bias = if format == QuantFormat::Q5_0 { 16 } else { 0 };
            for j in 0..16 {
                let h0 = ((qh >> j) & 1) << 4;
                let h1 = ((qh >> (j + 16)) & 1) << 4;
                let x0 = ((qs[j] & 0xF) as u32 | h0) as i32 - bias;
                let x1 = ((qs[j] >> 4) as u32 | h1) as i32 - bias;
                out[j] = d * x0 as f32 + m;
                out[j + 16] = d * x1 as f32 + m;
            }
        }
        QuantFormat::Q4_K | QuantFormat::Q5_K => {
            let (d, dmin) = (f16_at(b), f16_at(&b[2..]));
            let scales = &b[4..16];
            let (qh, ql) = if format == QuantFormat::Q5_K {
                (Some(&b[16..48]), &b[48..176])
            } else {
                (None, &b[16..144])
            };
            for chunk in 0..4 {
                let (sc1, m1) = scale_min_k4(2 * chunk, scales);
                let (sc2, m2) = scale_min_k4(2 * chunk + 1, scales);
                let (d1, mm1, d2, mm2) = (d * sc1 as f32, dmin * m1 as f32, d * sc2 as f32, dmin * m2 as f32);
                let q = &ql[chunk * 32..chunk * 32 + 32];
                let o = &mut out[chunk * 64..chunk * 64 + 64];
                for l in 0..32 {
                    let (mut lo, mut hi) = ((q[l] & 0xF) as u32, (q[l] >> 4) as u32);
                    if let Some(qh) = qh {
                        lo += (((qh[l] >> (2 * chunk)) & 1) as u32) << 4;
                        hi += (((qh[l] >> (2 * chunk + 1)) & 1) as u32) << 4;
                    }
                    o[l] = d1 * lo as f32 - mm1;
                    o[l + 32] = d2 * hi as f32 - mm2;
                }
            }
        }
        QuantFormat::Q6_K => {
            let (ql, qh, sc) = (&b[0..128], &b[128..192], &b[192..208]);
            let d = f16_at(&b[208..]);
            for half in 0..2 {
                let (ql, qh, sc) = (&ql[half * 64..], &qh[half * 32..], &sc[half * 8..]);
                let o = &mut out[half * 128..half * 128 + 128];
                for l in 0..32 {
                    let is = l / 16;
                    let q1 = ((ql[l] & 0xF) | ((qh[l] & 3) << 4)) as i32 - 32;
                    let q2 = ((ql[l + 32] & 0xF) | (((qh[l] >> 2) & 3) << 4)) as i32 - 32;
                    let q3 = ((ql[l] >> 4) | (((qh[l] >> 4) & 3) << 4)) as i32 - 32;
                    let q4 = ((ql[l + 32] >> 4) | (((qh[l] >> 6) & 3) << 4)) as i32 - 32;
                    o[l] = d * (sc[is] as i8) as f32 * q1 as f32;
                    o[l + 32] = d * (sc[is + 2] as i8) as f32 * q2 as f32;
                    o[l + 64] = d * (sc[is + 4] as i8) as f32 * q3 as f32;
                    o[l + 96] = d * (sc[is + 6] as i8) as f32 * q4 as f32;
                }
            }
        }
    }
}

/// Expands a packed row (`row_bytes(out.len())` bytes) into `out`.
pub fn dequantize_row(format: QuantFormat, bytes: &[u8], out: &mut [f32]) -> Result<()> {
    let need = format.row_bytes(out.len())?;
    if bytes.len() != need {
        return Err(Error::Invalid(format!(
            "a {} row of {} elements takes {need} bytes, got {}",
            format.name(),
            out.len(),
            bytes.len()
        )));
    }
    for (b, o) in bytes
        .chunks_exact(format.block_bytes())
        .zip(out.chunks_exact_mut(format.block_elems()))
    {
        dequantize_block(format, b, o);
    }
    Ok(())
}

/// Packs `x` (a whole number of blocks) into `format`; supported for Q8_0,
/// Q4_0 and Q4_1 (round to nearest; used to make weights for tests and to
/// quantize activations). Other formats are an error.
pub fn quantize_row(format: QuantFormat, x: &[f32], out: &mut [u8]) -> Result<()> {
    let need = format.row_bytes(x.len())?;
    if out.len() != need {
        return Err(Error::Invalid(format!(
            "{} output of {} bytes, need {need}",
            format.name(),
            out.len()
        )));
    }
    let f16 = |v: f32| half::f16::from_f32(v).to_bits().to_le_bytes();
    for (xb, ob) in x
        .chunks_exact(format.block_elems())
        .zip(out.chunks_exact_mut(format.block_bytes()))
    {
        match format {
            QuantFormat::Q8_0 => {
                let amax = xb.iter().fold(0f32, |a, v| a.max(v.abs()));
                let d = amax / 127.0;
                let inv = if d > 0.0 { 1.0 / d } else { 0.0 };
                ob[..2].copy_from_slice(&f16(d));
                for (o, &v) in ob[2..].iter_mut().zip(xb) {
                    *o = ((v * inv).round() as i8) as u8;
                }
            }
            QuantFormat::Q4_0 => {
                // The value of largest magnitude maps to -8 (as ggml does).
                let max = xb.iter().fold(0f32, |a, &v| if v.abs() > a.abs() { v } else { a });
                let d = max / -8.0;
                let inv = if d != 0.0 { 1.0 / d } else { 0.0 };
                ob[..2].copy_from_slice(&f16(d));
                let q = |v: f32| ((v * inv + 8.5) as i32).clamp(0, 15) as u8;
                for j in 0..16 {
                    ob[2 + j] = q(xb[j]) | (q(xb[j + 16]) << 4);
                }
            }
            QuantFormat::Q4_1 => {
                let min = xb.iter().fold(f32::INFINITY, |a, &v| a.min(v));
                let max = xb.iter().fold(f32::NEG_INFINITY, |a, &v| a.max(v));
                let d = (max - min) / 15.0;
                let inv = if d > 0.0 { 1.0 / d } else { 0.0 };
                ob[..2].copy_from_slice(&f16(d));
                ob[2..4].copy_from_slice(&f16(min));
                let q = |v: f32| (((v - min) * inv + 0.5) as i32).clamp(0, 15) as u8;
                for j in 0..16 {
                    ob[4 + j] = q(xb[j]) | (q(xb[j + 16]) << 4);
                }
            }
            other => {
                return Err(Error::Invalid(format!(
                    "quantizing to {} is not supported",
                    other.name()
                )));
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    use rand::{Rng, SeedableRng};

    #[test]
    fn quantize_then_dequantize_is_close_for_each_supported_format() {
        let mut r = rand_chacha::ChaCha8Rng::seed_from_u64(3);
        let x: Vec<f32> = (0..256).map(|_| r.gen_range(-2.0f32..2.0)).collect();
        for (format, tol) in [
            (QuantFormat::Q8_0, 2.0 / 127.0),
            (
                QuantFormat::Q4_0,
                0.5, /* the top value clamps at +7: error up to one step, amax / 8 */
            ),
            (QuantFormat::Q4_1, 4.0 / 15.0),
        ] {
            let mut packed = vec![0u8; format.row_bytes(256).unwrap()];
            quantize_row(format, &x, &mut packed).unwrap();
            let mut y = vec![0f32; 256];
            dequantize_row(format, &packed, &mut y).unwrap();
            let err = x.iter().zip(&y).fold(0f32, |a, (p, q)| a.max((p - q).abs()));
            assert!(err <= tol * 0.51 + 1e-3, "{format}: max error {err}");
            assert!(err > 0.0, "{format}: suspiciously exact");
        }
    }

    #[test]
    fn dequantize_matches_hand_computed_blocks() {
        let h = |v: f32| half::f16::from_f32(v).to_bits().to_le_bytes();
        // Q4_1: d = 0.5, m = -1, nibbles: low = j % 16, high = 15 - j % 16.
        let mut b = vec![0u8; 20];
        b[..2].copy_from_slice(&h(0.5));
        b[2..4].copy_from_slice(&h(-1.0));
        for j in 0..16 {
            b[4 + j] = (j as u8) | ((15 - j as u8) << 4);
        }
        let mut y = [0f32; 32];
        dequantize_block(QuantFormat::Q4_1, &b, &mut y);
        assert_eq!(y[3], 0.5 * 3.0 - 1.0);
        assert_eq!(y[16 + 3], 0.5 * 12.0 - 1.0);
        // Q8_0: d = 0.25, q = -3 at 5.
        let mut b = vec![0u8; 34];
        b[..2].copy_from_slice(&h(0.25));
        b[2 + 5] = (-3i8) as u8;
        dequantize_block(QuantFormat::Q8_0, &b, &mut y);
        assert_eq!(y[5], -0.75);
        assert_eq!(y[4], 0.0);
        // Q5_0: d = 1, element 0 low nibble 1 with its high bit set: 1 + 16 - 16 = 1;
        // element 17 (high nibble of byte 1 = 2, high bit 17 clear): 2 - 16.
        let mut b = vec![0u8; 22];
        b[..2].copy_from_slice(&h(1.0));
        b[2..6].copy_from_slice(&1u32.to_le_bytes());
        b[6] = 1;
        b[7] = 2 << 4;
        dequantize_block(QuantFormat::Q5_0, &b, &mut y);
        assert_eq!(y[0], 1.0);
        assert_eq!(y[17], -14.0);
        // Q6_K: d = 0.5, scale 0 = 3; element 0: ql low nibble 5, qh bits 0-1 = 2 → (5 | 32) - 32 = 5.
        let mut b = vec![0u8; 210];
        b[0] = 5;
        b[128] = 2;
        b[192] = 3;
        b[208..210].copy_from_slice(&h(0.5));
        let mut y = vec![0f32; 256];
        dequantize_block(QuantFormat::Q6_K, &b, &mut y);
        assert_eq!(y[0], 0.5 * 3.0 * 5.0);
        // Element 1: ql 0, qh 0 → -32, scale 3.
        assert_eq!(y[1], 0.5 * 3.0 * -32.0);
        // Q4_K: d = 1, dmin = 0.5, scale/min 0 = (2, 4); element 0 nibble 7: 2*7 - 0.5*4.
        let mut b = vec![0u8; 144];
        b[..2].copy_from_slice(&h(1.0));
        b[2..4].copy_from_slice(&h(0.5));
        b[4] = 2;
        b[8] = 4;
        b[16] = 7;
        dequantize_block(QuantFormat::Q4_K, &b, &mut y);
        assert_eq!(y[0], 12.0);
    }

    #[test]
    fn row_bytes_counts_blocks_and_rejects_partial_blocks() {
        assert_eq!(QuantFormat::Q4_0.row_bytes(64).unwrap(), 36);
        assert_eq!(QuantFormat::Q6_K.row_bytes(512).unwrap(), 420);
        let err = QuantFormat::Q4_K.row_bytes(100).unwrap_err().to_string();
        assert!(
            err.contains("Q4_K") && err.contains("256") && err.contains("100"),
            "{err}"
        );
    }
}
