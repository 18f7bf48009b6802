//! Statistics of a constant for the constant viewer: min, max, mean, standard
//! deviation, a histogram and, for 2-D weights, a downsampled heat map.
//! Packed quantized weights are expanded row by row, never whole.

use stitch_core::quant::dequantize_row;
use stitch_core::{DType, QuantFormat, Tensor};

/// Histogram bins.
pub const HISTOGRAM_BINS: usize = 64;
/// Largest heat-map side, in cells.
pub const HEATMAP_MAX: usize = 96;

/// A downsampled 2-D view: each cell is the mean of a block of elements.
#[derive(Debug, Clone, PartialEq)]
pub struct HeatMap {
    /// Cells down.
    pub rows: usize,
    /// Cells across.
    pub cols: usize,
    /// Row-major cell means.
    pub values: Vec<f64>,
}

/// Statistics of one constant.
#[derive(Debug, Clone, PartialEq)]
pub struct Stats {
    /// Logical shape (a packed weight's shape once expanded).
    pub shape: Vec<usize>,
    /// Elements.
    pub count: usize,
    /// Finite minimum.
    pub min: f64,
    /// Finite maximum.
    pub max: f64,
    /// Mean of the finite elements.
    pub mean: f64,
    /// Population standard deviation of the finite elements.
    pub std: f64,
    /// Elements that are NaN or infinite.
    pub non_finite: usize,
    /// Counts of `HISTOGRAM_BINS` equal bins over `[min, max]`.
    pub histogram: Vec<u64>,
    /// Heat map of 2-D constants.
    pub heatmap: Option<HeatMap>,
}

/// Calls `f(row_index, row)` for each row (last axis) of the constant's logical values.
fn for_each_row(
    t: &Tensor,
    format: Option<QuantFormat>,
    f: &mut dyn FnMut(usize, &[f64]),
) -> Result<Vec<usize>, String> {
    match format {
        Some(fmt) => {
            if t.dtype() != DType::U8 || t.rank() != 2 {
                return Err(format!(
                    "a packed {fmt} weight must be a 2-D u8 tensor, got {} {:?}",
                    t.dtype(),
                    t.shape()
                ));
            }
            let (rows, row_bytes) = (t.shape()[0], t.shape()[1]);
            if row_bytes % fmt.block_bytes() != 0 {
                return Err(format!(
                    "{row_bytes} bytes per row is not a whole number of {fmt} blocks"
                ));
            }
            let cols = row_bytes / fmt.block_bytes() * fmt.block_elems();
            let bytes = t.as_slice::<u8>().map_err(|e| e.to_string())?;
            let mut buf = vec![0f32; cols];
            let mut row = vec![0f64; cols];
            for r in 0..rows {
                dequantize_row(fmt, &bytes[r * row_bytes..(r + 1) * row_bytes], &mut buf).map_err(|e| e.to_string())?;
                for (o, &x) in row.iter_mut().zip(&buf) {
                    *o = f64::from(x);
                }
                f(r, &row);
            }
            Ok(vec![rows, cols])
        }
        None => {
            let shape = t.shape().to_vec();
            let cols = shape.last().copied().unwrap_or(1).max(1);
            let v = t.to_f64_vec();
            for (r, row) in v.chunks(cols).enumerate() {
                f(r, row);
            }
            Ok(shape)
        }
    }
}

/// Computes the statistics of a constant; `format` is set for a packed quantized weight.
pub fn constant_stats(t: &Tensor, format: Option<QuantFormat>) -> Result<Stats, String> {
    let (mut min, mut max) = (f64::INFINITY, f64::NEG_INFINITY);
    let (mut sum, mut count, mut non_finite) = (0.0f64, 0usize, 0usize);
    let shape = for_each_row(t, format, &mut |_, row| {
        for &x in row {
            if x.is_finite() {
                min = min.min(x);
                max = max.max(x);
                sum += x;
                count += 1;
            } else {
                non_finite += 1;
            }
        }
    })?;
    let mean = if count > 0 { sum / count as f64 } else { 0.0 };
    if count == 0 {
        (min, max) = (0.0, 0.0);
    }
    let heat_dims = if shape.len() == 2 && shape[0] > 0 && shape[1] > 0 {
        Some((shape[0], shape[1], shape[0].min(HEATMAP_MAX), shape[1].min(HEATMAP_MAX)))
    } else {
        None
    };
    let mut heat_sum = vec![0.0f64; heat_dims.map_or(0, |(_, _, hr, hc)| hr * hc)];
    let mut heat_n = vec![0u32; heat_sum.len()];
    let mut histogram = vec![0u64; HISTOGRAM_BINS];
    let mut sq = 0.0f64;
    let width = max - min;
    for_each_row(t, format, &mut |r, row| {
        for (c, &x) in row.iter().enumerate() {
            if !x.is_finite() {
                continue;
            }
            sq += (x - mean) * (x - mean);
            let b = if width > 0.0 {
                (((x - min) / width) * HISTOGRAM_BINS as f64) as usize
            } else {
                0
            };
            histogram[b.min(HISTOGRAM_BINS - 1)] += 1;
            if let Some((rows, cols, hr, hc)) = heat_dims {
                let cell = (r * hr / rows) * hc + c * hc / cols;
                heat_sum[cell] += x;
                heat_n[cell] += 1;
            }
        }
    })?;
    let heatmap = heat_dims.map(|(_, _, hr, hc)| HeatMap {
        rows: hr,
        cols: hc,
        values: heat_sum
            .iter()
            .zip(&heat_n)
            .map(|(s, &n)| if n > 0 { s / f64::from(n) } else { 0.0 })
            .collect(),
    });
    Ok(Stats {
        shape,
        count: count + non_finite,
        min,
        max,
        mean,
        std: if count > 0 { (sq / count as f64).sqrt() } else { 0.0 },
        non_finite,
        histogram,
        heatmap,
    })
}
