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

#[cfg(test)]
mod tests {
    use super::*;

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
