//! Indexing kernels: gather, gather_elements, scatter_elements, one_hot, range.
//!
//! Indices are validated before anything is written: an index outside
//! `[-n, n)` is an error naming the index, the axis and its size (never a
//! panic). Negative indices wrap once. Gathers move raw elements by size, so
//! they serve every dtype; scatter reductions and one_hot/range work per dtype.

use rayon::prelude::*;
use stitch_core::ops::ScatterReduction;
use stitch_core::shape::{contiguous_strides, normalize_axis};
use stitch_core::{dispatch_dtype, Bool8, DType, Element, Error, Result, Tensor, TensorType};

use super::layout::{by_size, contiguous, contiguous_slice, new_tensor, par_rows, RowCursor};
use super::{dims, PAR_CHUNK};

/// The indices of an i32/i64 tensor in row-major order, with negative ones
/// wrapped once, checked to lie in `[-n, n)` (in parallel: index tensors can be
/// as large as the data).
fn resolve_indices(t: &Tensor, n: usize, ax: usize, data_shape: &[usize], what: &str) -> Result<Vec<usize>> {
    fn resolve<I: Copy + Into<i64> + Sync>(
        idx: &[I],
        n: usize,
        ax: usize,
        data_shape: &[usize],
        what: &str,
    ) -> Result<Vec<usize>> {
        let ni = n as i64;
        let one = |&i: &I| {
            let i: i64 = i.into();
            let j = if i < 0 { i + ni } else { i };
            if (0..ni).contains(&j) {
                Ok(j as usize)
            } else {
                Err(Error::invalid(format!(
                    "{what} index {i} is out of range for axis {ax} of size {n} (data shape {data_shape:?})"
                )))
            }
        };
        if idx.len() <= PAR_CHUNK {
            idx.iter().map(one).collect()
        } else {
            idx.par_iter().map(one).collect()
        }
    }
    let c = contiguous(t);
    match t.dtype() {
        DType::I64 => resolve(contiguous_slice::<i64>(&c), n, ax, data_shape, what),
        DType::I32 => resolve(contiguous_slice::<i32>(&c), n, ax, data_shape, what),
        other => Err(Error::invalid(format!(
            "{what} indices must be i32 or i64, got {other}"
        ))),
    }
}

/// `data.take(indices, axis)`: each output row of the trailing axes is one memcpy.
pub fn gather(data: &Tensor, indices: &Tensor, axis: i64, out: &TensorType) -> Result<Tensor> {
    let shape = dims(out)?;
    let ds = data.shape();
    let ax = normalize_axis(axis, data.rank())
        .ok_or_else(|| Error::invalid(format!("gather axis {axis} out of range for data shape {ds:?}")))?;
    let mut expect = ds[..ax].to_vec();
    expect.extend_from_slice(indices.shape());
    expect.extend_from_slice(&ds[ax + 1..]);
    if expect.as_slice() != shape.as_slice() {
        return Err(Error::invalid(format!(
            "gather of data {ds:?} with indices {:?} on axis {ax} gives {expect:?}, not {shape:?}",
            indices.shape()
        )));
    }
    let n = ds[ax];
    let idx = resolve_indices(indices, n, ax, ds, "gather")?;
    let m = idx.len();
    let inner: usize = ds[ax + 1..].iter().product();
    let data = contiguous(data);
    Ok(
        by_size!(data.dtype().size_in_bytes(), U => new_tensor::<U>(data.dtype(), &shape, |dst| {
            let src = contiguous_slice::<U>(&data);
            if inner == 1 {
                // Along the last axis (e.g. RoPE's partner permutation): one
                // element per index, a row of m per outer block, no division
                // per element.
                par_rows(dst, m, |first_row, chunk| {
                    for (r, row) in chunk.chunks_mut(m).enumerate() {
                        let base = &src[(first_row + r) * n..(first_row + r + 1) * n];
                        for (d, &i) in row.iter_mut().zip(idx.iter()) {
                            *d = base[i];
                        }
                    }
                });
                return;
            }
            par_rows(dst, inner, |first_row, chunk| {
                for (r, row) in chunk.chunks_mut(inner).enumerate() {
                    let g = first_row + r;
                    let s = ((g / m) * n + idx[g % m]) * inner;
                    row.copy_from_slice(&src[s..s + inner]);
                }
            })
        })),
    )
}

/// Checks indices (and updates) against data for gather/scatter_elements: same
/// rank, and no larger than data on every axis but `ax`.
fn check_elements_shapes(data: &Tensor, indices: &Tensor, ax: usize, what: &str) -> Result<()> {
    let (ds, is) = (data.shape(), indices.shape());
    if is.len() != ds.len() || (0..ds.len()).any(|d| d != ax && is[d] > ds[d]) {
        return Err(Error::invalid(format!(
            "{what}: indices {is:?} must have the rank of data {ds:?} and be no larger on every axis but {ax}"
        )));
    }
    Ok(())
}

/// ONNX GatherElements: `out[i] = data[i with axis ax replaced by indices[i]]`.
pub fn gather_elements(data: &Tensor, indices: &Tensor, axis: i64) -> Result<Tensor> {
    let ds = data.shape();
    let ax = normalize_axis(axis, data.rank()).ok_or_else(|| {
        Error::invalid(format!(
            "gather_elements axis {axis} out of range for data shape {ds:?}"
        ))
    })?;
    check_elements_shapes(data, indices, ax, "gather_elements")?;
    let idx = resolve_indices(indices, ds[ax], ax, ds, "gather_elements")?;
    let shape = indices.shape().to_vec();
    let rank = shape.len();
    let last = rank - 1;
    let row_len = shape[last];
    let mut strides = contiguous_strides(ds);
    let ax_stride = strides[ax] as usize;
    // The axis' own coordinate comes from the index, not from the position.
    strides[ax] = 0;
    let data = contiguous(data);
    Ok(
        by_size!(data.dtype().size_in_bytes(), U => new_tensor::<U>(data.dtype(), &shape, |dst| {
            let src = contiguous_slice::<U>(&data);
            par_rows(dst, row_len, |first_row, chunk| {
                let mut cur = RowCursor::at(&shape[..last], &strides[..last], 0, first_row);
                for (r, row) in chunk.chunks_mut(row_len).enumerate() {
                    let base = cur.offset as usize;
                    let ids = &idx[(first_row + r) * row_len..][..row_len];
                    if ax == last {
                        for (d, &i) in row.iter_mut().zip(ids) {
                            *d = src[base + i];
                        }
                    } else {
                        for (j, (d, &i)) in row.iter_mut().zip(ids).enumerate() {
                            *d = src[base + j + i * ax_stride];
                        }
                    }
                    cur.advance();
                }
            })
        })),
    )
}

/// The element arithmetic scatter reductions need: integers wrap, f16/bf16 go
/// through f32 (exact for one add or multiply), max/min propagate NaN, and for
/// bool add/max are `or` and mul/min are `and`.
trait Combine: Element + Copy {
    fn c_add(a: Self, b: Self) -> Self;
    fn c_mul(a: Self, b: Self) -> Self;
    fn c_max(a: Self, b: Self) -> Self;
    fn c_min(a: Self, b: Self) -> Self;
}

macro_rules! combine_int {
    ($($t:ty),*) => {$(
        impl Combine for $t {
            fn c_add(a: Self, b: Self) -> Self { a.wrapping_add(b) }
            fn c_mul(a: Self, b: Self) -> Self { a.wrapping_mul(b) }
            fn c_max(a: Self, b: Self) -> Self { Ord::max(a, b) }
            fn c_min(a: Self, b: Self) -> Self { Ord::min(a, b) }
        }
    )*};
}
combine_int!(i8, u8, i16, u16, i32, u32, i64, u64);

macro_rules! combine_float {
    ($($t:ty => $to:expr, $from:expr);*) => {$(
        impl Combine for $t {
            fn c_add(a: Self, b: Self) -> Self { $from($to(a) + $to(b)) }
            fn c_mul(a: Self, b: Self) -> Self { $from($to(a) * $to(b)) }
            fn c_max(a: Self, b: Self) -> Self {
                let (x, y) = ($to(a), $to(b));
                if x.is_nan() || x > y { a } else if y.is_nan() || y > x { b } else { a }
            }
            fn c_min(a: Self, b: Self) -> Self {
                let (x, y) = ($to(a), $to(b));
                if x.is_nan() || x < y { a } else if y.is_nan() || y < x { b } else { a }
            }
        }
    )*};
}
combine_float!(
    f32 => |v| v, |v| v;
    f64 => |v| v, |v| v;
    stitch_core::half::f16 => stitch_core::half::f16::to_f32, stitch_core::half::f16::from_f32;
    stitch_core::half::bf16 => stitch_core::half::bf16::to_f32, stitch_core::half::bf16::from_f32
);

impl Combine for Bool8 {
    fn c_add(a: Self, b: Self) -> Self {
        Bool8((a.0 != 0 || b.0 != 0) as u8)
    }
    fn c_mul(a: Self, b: Self) -> Self {
        Bool8((a.0 != 0 && b.0 != 0) as u8)
    }
    fn c_max(a: Self, b: Self) -> Self {
        Self::c_add(a, b)
    }
    fn c_min(a: Self, b: Self) -> Self {
        Self::c_mul(a, b)
    }
}

/// ONNX ScatterElements: a copy of `data` where `out[i with axis ax replaced by
/// indices[i]] ⊕= updates[i]`, applied in row-major order of `indices`.
///
/// Updates at different coordinates off the axis never touch the same output
/// line, so the blocks `data[i0.., :, ..]` of the leading axes are independent
/// and run in parallel; within a block, updates go in index order.
pub fn scatter_elements(
    data: &Tensor,
    indices: &Tensor,
    updates: &Tensor,
    axis: i64,
    reduction: ScatterReduction,
) -> Result<Tensor> {
    let ds = data.shape().to_vec();
    let ax = normalize_axis(axis, data.rank()).ok_or_else(|| {
        Error::invalid(format!(
            "scatter_elements axis {axis} out of range for data shape {ds:?}"
        ))
    })?;
    check_elements_shapes(data, indices, ax, "scatter_elements")?;
    if updates.shape() != indices.shape() || updates.dtype() != data.dtype() {
        return Err(Error::invalid(format!(
            "scatter_elements: updates {} {:?} must have the shape of indices {:?} and the dtype of data {}",
            updates.dtype(),
            updates.shape(),
            indices.shape(),
            data.dtype()
        )));
    }
    let is = indices.shape().to_vec();
    let idx = resolve_indices(indices, ds[ax], ax, &ds, "scatter_elements")?;
    let block: usize = ds[ax..].iter().product();
    let iblock: usize = is[ax..].iter().product();
    let d_inner: usize = ds[ax + 1..].iter().product();
    // Offset within a data block of each position of an indices row past the axis.
    let d_strides = contiguous_strides(&ds[ax + 1..]);
    let rel: Vec<usize> = (0..is[ax + 1..].iter().product::<usize>())
        .map(|mut lin| {
            let mut off = 0;
            for d in (ax + 1..is.len()).rev() {
                off += (lin % is[d]) * d_strides[d - ax - 1] as usize;
                lin /= is[d];
            }
            off
        })
        .collect();
    let (lead_d, lead_i) = (&ds[..ax], &is[..ax]);
    let data = contiguous(data);
    let updates = contiguous(updates);
    dispatch_dtype!(data.dtype(), T => {
        let combine: fn(T, T) -> T = match reduction {
            ScatterReduction::None => |_, u| u,
            ScatterReduction::Add => T::c_add,
            ScatterReduction::Mul => T::c_mul,
            ScatterReduction::Max => T::c_max,
            ScatterReduction::Min => T::c_min,
        };
        let src = contiguous_slice::<T>(&data);
        let upd = contiguous_slice::<T>(&updates);
        Ok(new_tensor::<T>(data.dtype(), &ds, |dst| {
            par_rows(dst, block, |first_block, chunk| {
                let n = chunk.len();
                chunk.copy_from_slice(&src[first_block * block..first_block * block + n]);
                if rel.is_empty() {
                    return;
                }
                for (b, out) in chunk.chunks_mut(block).enumerate() {
                    // Data block → indices block with the same leading coordinates, if any.
                    let (mut lin, mut q, mut scale) = (first_block + b, 0, 1);
                    let mut inside = true;
                    for d in (0..ax).rev() {
                        let c = lin % lead_d[d];
                        lin /= lead_d[d];
                        inside &= c < lead_i[d];
                        q += c * scale;
                        scale *= lead_i[d];
                    }
                    if !inside {
                        continue;
                    }
                    let e0 = q * iblock;
                    for (e, (&i, &u)) in idx[e0..e0 + iblock].iter().zip(&upd[e0..e0 + iblock]).enumerate() {
                        let pos = i * d_inner + rel[e % rel.len()];
                        out[pos] = combine(out[pos], u);
                    }
                }
            })
        }))
    })
}

/// One-hot: a new axis of size `depth` at `axis`; `on_value` where the index
/// (wrapped once if negative) equals the position, else `off_value`. An index
/// outside `[-depth, depth)` gives a row of `off_value` (ONNX).
#[allow(clippy::too_many_arguments)]
pub fn one_hot(
    indices: &Tensor,
    depth: usize,
    axis: i64,
    dtype: DType,
    on_value: f64,
    off_value: f64,
    out: &TensorType,
) -> Result<Tensor> {
    let shape = dims(out)?;
    let is = indices.shape();
    let ax = normalize_axis(axis, is.len() + 1)
        .ok_or_else(|| Error::invalid(format!("one_hot axis {axis} out of range for indices {is:?}")))?;
    let mut expect = is.to_vec();
    expect.insert(ax, depth);
    if expect.as_slice() != shape.as_slice() || !indices.dtype().is_int() {
        return Err(Error::invalid(format!(
            "one_hot of {} indices {is:?} with depth {depth} on axis {ax} gives {expect:?}, not {shape:?}",
            indices.dtype()
        )));
    }
    // Position each index selects, or usize::MAX (matches no position) when out of range.
    let d = depth as f64;
    let hot: Vec<usize> = indices
        .to_f64_vec()
        .into_iter()
        .map(|v| match v {
            v if (0.0..d).contains(&v) => v as usize,
            v if (-d..0.0).contains(&v) => (v + d) as usize,
            _ => usize::MAX,
        })
        .collect();
    let inner: usize = is[ax..].iter().product();
    dispatch_dtype!(dtype, T => {
        let (on, off) = (T::from_f64(on_value), T::from_f64(off_value));
        Ok(new_tensor::<T>(dtype, &shape, |dst| {
            par_rows(dst, inner, |first_row, chunk| {
                for (r, row) in chunk.chunks_mut(inner).enumerate() {
                    let g = first_row + r;
                    let (o, pos) = (g / depth, g % depth);
                    for (v, &h) in row.iter_mut().zip(&hot[o * inner..(o + 1) * inner]) {
                        *v = if h == pos { on } else { off };
                    }
                }
            })
        }))
    })
}

/// Saturating conversion from i64, for integer ranges.
trait FromI64: Element {
    fn from_i64(v: i64) -> Self;
}
macro_rules! from_i64 {
    ($($t:ty),*) => {$(
        impl FromI64 for $t {
            fn from_i64(v: i64) -> Self {
                <$t>::try_from(v).unwrap_or(if v < 0 { <$t>::MIN } else { <$t>::MAX })
            }
        }
    )*};
}
from_i64!(i8, u8, i16, u16, i32, u32, i64, u64);

fn range_int<T: FromI64>(start: i64, delta: i64, dtype: DType, n: usize) -> Tensor {
    new_tensor::<T>(dtype, &[n], |dst| {
        par_rows(dst, 1, |first, chunk| {
            for (i, v) in chunk.iter_mut().enumerate() {
                let k = (first + i) as i64;
                *v = T::from_i64(start.wrapping_add(k.wrapping_mul(delta)));
            }
        })
    })
}

/// Range with `out`'s length: element `i` is `start + i * delta`, computed in
/// f64 for floats and exactly in i64 for integers (when start and delta are
/// whole numbers, as integer ranges have).
pub fn range(start: f64, delta: f64, dtype: DType, out: &TensorType) -> Result<Tensor> {
    let shape = dims(out)?;
    let [n] = shape[..] else {
        return Err(Error::invalid(format!("range output must be 1-D, got {shape:?}")));
    };
    if !dtype.is_numeric() {
        return Err(Error::invalid(format!("range dtype must be numeric, got {dtype}")));
    }
    const LIM: f64 = 9.2e18; // comfortably inside i64
    let whole = |v: f64| v.fract() == 0.0 && v.abs() < LIM;
    if dtype.is_int() && whole(start) && whole(delta) {
        let (s, d) = (start as i64, delta as i64);
        return Ok(match dtype {
            DType::I8 => range_int::<i8>(s, d, dtype, n),
            DType::U8 => range_int::<u8>(s, d, dtype, n),
            DType::I16 => range_int::<i16>(s, d, dtype, n),
            DType::U16 => range_int::<u16>(s, d, dtype, n),
            DType::I32 => range_int::<i32>(s, d, dtype, n),
            DType::U32 => range_int::<u32>(s, d, dtype, n),
            DType::I64 => range_int::<i64>(s, d, dtype, n),
            _ => range_int::<u64>(s, d, dtype, n),
        });
    }
    dispatch_dtype!(dtype, T => Ok(new_tensor::<T>(dtype, &[n], |dst| {
        par_rows(dst, 1, |first, chunk| {
            for (i, v) in chunk.iter_mut().enumerate() {
                *v = T::from_f64(start + (first + i) as f64 * delta);
            }
        })
    })))
}
