//! Layout kernels. reshape/squeeze/unsqueeze, transpose, expand, slice and
//! split are views (no copy); concat, tile and pad copy.
//!
//! These ops never look at element values (except pad's fill value), so the
//! copies work on raw elements by size (`u8`/`u16`/`u32`/`u64`): one
//! monomorphisation per width serves every dtype, bool included.
//!
//! This file also holds the strided-copy helpers the other kernel families use
//! to make inputs contiguous in parallel (`Tensor::contiguous` is serial).

use rayon::prelude::*;
use stitch_core::ops::layout::{slice_params, slice_range};
use stitch_core::ops::PadMode;
use stitch_core::shape::normalize_axis;
use stitch_core::{DType, Element, Error, Result, Tensor, TensorType};

use super::{dims, PAR_CHUNK};

/// Binds `$U` to the unsigned integer type as wide as one element of `$es`
/// bytes and evaluates `$body`, for copies that only move bits.
macro_rules! by_size {
    ($es:expr, $U:ident => $body:expr) => {
        match $es {
            1 => {
                type $U = u8;
                $body
            }
            2 => {
                type $U = u16;
                $body
            }
            4 => {
                type $U = u32;
                $body
            }
            _ => {
                type $U = u64;
                $body
            }
        }
    };
}
pub(crate) use by_size;

/// The whole buffer of `t` viewed as elements of `U` (which must have `t`'s element size);
/// index it with `t`'s offset and strides.
pub(crate) fn raw<U: Element>(t: &Tensor) -> &[U] {
    t.buffer().as_slice::<U>()
}

/// A new contiguous tensor of `dtype` and `shape` whose elements (viewed as `U`,
/// of the dtype's size) are written by `fill`.
pub(crate) fn new_tensor<U: Element>(dtype: DType, shape: &[usize], fill: impl FnOnce(&mut [U])) -> Tensor {
    debug_assert_eq!(std::mem::size_of::<U>(), dtype.size_in_bytes());
    let mut t = Tensor::zeros(dtype, shape);
    fill(t.buffer_mut().as_slice_mut::<U>());
    t
}

/// Runs `f(first_row, rows)` over `out` cut into whole rows of `row_len`
/// elements, in parallel when the work is large. Each task gets about
/// `PAR_CHUNK` elements.
pub(crate) fn par_rows<T: Send>(out: &mut [T], row_len: usize, f: impl Fn(usize, &mut [T]) + Sync + Send) {
    if row_len == 0 || out.is_empty() {
        return;
    }
    if out.len() <= PAR_CHUNK {
        f(0, out);
        return;
    }
    let rows_per_task = (PAR_CHUNK / row_len).max(1);
    out.par_chunks_mut(rows_per_task * row_len)
        .enumerate()
        .for_each(|(i, chunk)| f(i * rows_per_task, chunk));
}

/// Merges adjacent axes that walk memory as one axis and drops size-1 axes, so
/// that strided loops run over as few, as long, axes as possible.
pub(crate) fn coalesce(shape: &[usize], strides: &[isize]) -> (stitch_core::Dims, stitch_core::Strides) {
    let mut s = stitch_core::Dims::new();
    let mut st = stitch_core::Strides::new();
    for (&d, &str_) in shape.iter().zip(strides) {
        if d == 1 {
            continue;
        }
        match (s.last_mut(), st.last_mut()) {
            (Some(ld), Some(ls)) if *ls == str_ * d as isize => {
                *ld *= d;
                *ls = str_;
            }
            _ => {
                s.push(d);
                st.push(str_);
            }
        }
    }
    (s, st)
}

/// Multi-index counter over `shape` (row-major) that tracks the matching
/// strided offset, for walking the rows of a view.
pub(crate) struct RowCursor<'a> {
    shape: &'a [usize],
    strides: &'a [isize],
    index: stitch_core::Dims,
    /// Offset of the current row's first element.
    pub(crate) offset: isize,
}

impl<'a> RowCursor<'a> {
    /// A cursor at row `linear` of `shape`, offsets starting from `base`.
    pub(crate) fn at(shape: &'a [usize], strides: &'a [isize], base: isize, mut linear: usize) -> Self {
        let mut index = stitch_core::Dims::from_elem(0, shape.len());
        let mut offset = base;
        for ax in (0..shape.len()).rev() {
            index[ax] = linear % shape[ax];
            linear /= shape[ax];
            offset += index[ax] as isize * strides[ax];
        }
        RowCursor {
            shape,
            strides,
            index,
            offset,
        }
    }

    /// Moves to the next row.
    #[inline]
    pub(crate) fn advance(&mut self) {
        for ax in (0..self.shape.len()).rev() {
            self.index[ax] += 1;
            self.offset += self.strides[ax];
            if self.index[ax] < self.shape[ax] {
                return;
            }
            self.offset -= self.strides[ax] * self.shape[ax] as isize;
            self.index[ax] = 0;
        }
    }
}

/// Copies the strided view (`shape`, `strides`, `offset` over `src`) into the
/// contiguous `dst`, in parallel, with `copy_from_slice` for unit-stride runs.
pub(crate) fn copy_strided<T: Copy + Send + Sync>(
    src: &[T],
    offset: usize,
    shape: &[usize],
    strides: &[isize],
    dst: &mut [T],
) {
    let (shape, strides) = coalesce(shape, strides);
    let (inner, inner_stride) = match (shape.last(), strides.last()) {
        (Some(&d), Some(&s)) => (d, s),
        _ => (1, 1),
    };
    let outer_shape = &shape[..shape.len().saturating_sub(1)];
    let outer_strides = &strides[..strides.len().saturating_sub(1)];
    par_rows(dst, inner, |first_row, chunk| {
        let mut cur = RowCursor::at(outer_shape, outer_strides, offset as isize, first_row);
        if inner_stride == 1 {
            for row in chunk.chunks_mut(inner) {
                let base = cur.offset as usize;
                row.copy_from_slice(&src[base..base + inner]);
                cur.advance();
            }
            return;
        }
        // Strided rows (a transpose): fill GROUP rows at once, column by
        // column, so that reads that are adjacent in memory across rows are
        // consumed together instead of striding through memory once per row.
        const GROUP: usize = 16;
        let mut bases = [0isize; GROUP];
        for block in chunk.chunks_mut(GROUP * inner) {
            let g = block.len() / inner;
            for b in bases.iter_mut().take(g) {
                *b = cur.offset;
                cur.advance();
            }
            for c in 0..inner {
                let off = c as isize * inner_stride;
                for (j, &b) in bases[..g].iter().enumerate() {
                    block[j * inner + c] = src[(b + off) as usize];
                }
            }
        }
    });
}

/// `x` itself when contiguous, else a contiguous copy made in parallel.
pub(crate) fn contiguous(x: &Tensor) -> Tensor {
    if x.is_contiguous() {
        return x.clone();
    }
    by_size!(x.dtype().size_in_bytes(), U => new_tensor::<U>(x.dtype(), x.shape(), |dst| {
        copy_strided(raw::<U>(x), x.offset(), x.shape(), x.strides(), dst)
    }))
}

/// The contiguous elements of `x` (contiguous input: no copy).
pub(crate) fn contiguous_slice<U: Element>(x: &Tensor) -> &[U] {
    if x.numel() == 0 {
        return &[];
    }
    &raw::<U>(x)[x.offset()..x.offset() + x.numel()]
}

/// Strides that let `shape` view the same elements as the layout
/// (`old_shape`, `old_strides`) in row-major order, if such strides exist.
fn reshape_strides(old_shape: &[usize], old_strides: &[isize], shape: &[usize]) -> Option<stitch_core::Strides> {
    let (os, ost) = coalesce(old_shape, old_strides);
    // Walk the new dims, matching each against the coalesced old axes: a run
    // of new dims may subdivide one old axis, but never straddle two.
    let mut out = stitch_core::Strides::from_elem(0, shape.len());
    let mut ax = 0;
    let mut remaining = os.first().copied().unwrap_or(1);
    for (i, &d) in shape.iter().enumerate() {
        if d == 1 {
            continue;
        }
        if ax >= os.len() || remaining % d != 0 {
            return None;
        }
        remaining /= d;
        out[i] = ost[ax] * remaining as isize;
        if remaining == 1 {
            ax += 1;
            remaining = os.get(ax).copied().unwrap_or(1);
        }
    }
    (ax >= os.len()).then_some(out)
}

/// Reshape to `out`'s shape: a view when the layout allows, else a contiguous copy.
pub fn reshape(x: &Tensor, out: &TensorType) -> Result<Tensor> {
    let shape = dims(out)?;
    if shape.iter().product::<usize>() != x.numel() {
        return Err(Error::invalid(format!(
            "cannot reshape {:?} to {:?}: element counts differ",
            x.shape(),
            shape
        )));
    }
    if x.numel() == 0 {
        return Ok(Tensor::zeros(x.dtype(), &shape));
    }
    if let Some(strides) = reshape_strides(x.shape(), x.strides(), &shape) {
        return x.as_strided(&shape, &strides, x.offset());
    }
    contiguous(x).reshape(&shape)
}

/// Permute axes (empty perm = reverse). A view.
pub fn transpose(x: &Tensor, perm: &[usize]) -> Result<Tensor> {
    if perm.is_empty() {
        let rev: Vec<usize> = (0..x.rank()).rev().collect();
        return x.permute(&rev);
    }
    x.permute(perm)
}

/// Broadcast to `out`'s shape. A view.
///
/// ONNX Expand is bidirectional; `out` is already the broadcast of the input
/// shape and the target, so broadcasting the input to it always fits.
pub fn expand(x: &Tensor, out: &TensorType) -> Result<Tensor> {
    x.broadcast_to(&dims(out)?)
}

/// ONNX slice. A view (negative steps give negative strides).
pub fn slice(x: &Tensor, starts: &[i64], ends: &[i64], axes: &[i64], steps: &[i64]) -> Result<Tensor> {
    let params = slice_params(x.rank(), starts, ends, axes, steps).map_err(Error::invalid)?;
    let mut shape = Vec::with_capacity(x.rank());
    let mut strides = Vec::with_capacity(x.rank());
    let mut offset = x.offset() as isize;
    for (ax, &(s, e, st)) in params.iter().enumerate() {
        let (first, count) = slice_range(x.shape()[ax], s, e, st);
        shape.push(count);
        // A single element needs no stride; this also avoids overflow for huge steps.
        strides.push(if count > 1 { x.strides()[ax] * st as isize } else { 0 });
        if count > 0 {
            offset += first as isize * x.strides()[ax];
        }
    }
    if shape.contains(&0) {
        return Ok(Tensor::zeros(x.dtype(), &shape));
    }
    x.as_strided(&shape, &strides, offset as usize)
}

/// Concatenate along `axis` (copies; each input's rows go out with one memcpy).
pub fn concat(xs: &[Tensor], axis: i64, out: &TensorType) -> Result<Tensor> {
    let shape = dims(out)?;
    let first = xs
        .first()
        .ok_or_else(|| Error::invalid("concat needs at least one input"))?;
    let dtype = first.dtype();
    let ax = normalize_axis(axis, shape.len())
        .ok_or_else(|| Error::invalid(format!("concat axis {axis} out of range for output shape {shape:?}")))?;
    let mut total = 0;
    for x in xs {
        let ok = x.dtype() == dtype
            && x.rank() == shape.len()
            && (0..shape.len()).all(|i| i == ax || x.shape()[i] == shape[i]);
        if !ok {
            return Err(Error::invalid(format!(
                "cannot concat {} {:?} into {dtype} {shape:?} along axis {ax}",
                x.dtype(),
                x.shape()
            )));
        }
        total += x.shape()[ax];
    }
    if total != shape[ax] {
        return Err(Error::invalid(format!(
            "concat inputs sum to {total} along axis {ax}, output has {}",
            shape[ax]
        )));
    }
    let inner: usize = shape[ax + 1..].iter().product();
    let out_row = shape[ax] * inner;
    let parts: Vec<Tensor> = xs.iter().map(contiguous).collect();
    // (column offset in an output row, elements per row) of each input.
    let mut cols = Vec::with_capacity(parts.len());
    let mut col = 0;
    for p in &parts {
        let w = p.shape()[ax] * inner;
        cols.push((col, w));
        col += w;
    }
    Ok(
        by_size!(dtype.size_in_bytes(), U => new_tensor::<U>(dtype, &shape, |dst| {
            let srcs: Vec<&[U]> = parts.iter().map(contiguous_slice::<U>).collect();
            par_rows(dst, out_row, |first_row, chunk| {
                for (r, row) in chunk.chunks_mut(out_row).enumerate() {
                    let o = first_row + r;
                    for (src, &(c, w)) in srcs.iter().zip(&cols) {
                        row[c..c + w].copy_from_slice(&src[o * w..(o + 1) * w]);
                    }
                }
            })
        })),
    )
}

/// Split along `axis` into views.
pub fn split(x: &Tensor, axis: i64, sizes: &[usize]) -> Result<Vec<Tensor>> {
    let ax = normalize_axis(axis, x.rank())
        .ok_or_else(|| Error::invalid(format!("split axis {axis} out of range for shape {:?}", x.shape())))?;
    let sum: usize = sizes.iter().sum();
    if sum != x.shape()[ax] {
        return Err(Error::invalid(format!(
            "split sizes {sizes:?} sum to {sum}, but axis {ax} of {:?} has size {}",
            x.shape(),
            x.shape()[ax]
        )));
    }
    let mut start = 0;
    sizes
        .iter()
        .map(|&n| {
            let t = x.slice(ax, start as isize, (start + n) as isize, 1);
            start += n;
            t
        })
        .collect()
}

/// Tile: a copy of the view with shape `[r0, d0, r1, d1, ..]` and strides
/// `[0, s0, 0, s1, ..]`, whose row-major order is exactly the tiled output.
pub fn tile(x: &Tensor, repeats: &[usize], out: &TensorType) -> Result<Tensor> {
    let shape = dims(out)?;
    let expect: Vec<usize> = x.shape().iter().zip(repeats).map(|(&d, &r)| d * r).collect();
    if repeats.len() != x.rank() || expect.as_slice() != shape.as_slice() {
        return Err(Error::invalid(format!(
            "tile of {:?} by {repeats:?} does not give output shape {shape:?}",
            x.shape()
        )));
    }
    let mut vshape = Vec::with_capacity(2 * x.rank());
    let mut vstrides = Vec::with_capacity(2 * x.rank());
    for ((&d, &s), &r) in x.shape().iter().zip(x.strides()).zip(repeats) {
        vshape.extend([r, d]);
        vstrides.extend([0, s]);
    }
    Ok(
        by_size!(x.dtype().size_in_bytes(), U => new_tensor::<U>(x.dtype(), &shape, |dst| {
            copy_strided(raw::<U>(x), x.offset(), &vshape, &vstrides, dst)
        })),
    )
}

/// Where output position `o` of a padded axis reads its input: `Some(i)` or
/// `None` for the constant fill. `begin` may be negative (crop).
///
/// Reflect and edge mirror / clamp at the edges of the *input* axis; they agree
/// with "crop first, then pad" whenever that is defined (a crop on one side
/// never moves the other side's edge).
fn pad_source(o: usize, begin: i64, n: usize, mode: PadMode) -> Option<usize> {
    let i = o as i64 - begin;
    let n = n as i64;
    if (0..n).contains(&i) {
        return Some(i as usize);
    }
    match mode {
        PadMode::Constant => None,
        // An empty axis has no edge to repeat or mirror.
        _ if n == 0 => None,
        PadMode::Edge => Some(i.clamp(0, n - 1) as usize),
        PadMode::Reflect => {
            let r = if i < 0 { -i } else { 2 * (n - 1) - i };
            (0..n).contains(&r).then_some(r as usize)
        }
    }
}

/// Pad (constant / reflect / edge); negative pads crop.
pub fn pad(x: &Tensor, pads: &[i64], mode: PadMode, value: f64, out: &TensorType) -> Result<Tensor> {
    let shape = dims(out)?;
    let rank = x.rank();
    if pads.len() != 2 * rank || shape.len() != rank {
        return Err(Error::invalid(format!(
            "pads {pads:?} must have 2 × rank entries for input {:?}",
            x.shape()
        )));
    }
    // Per axis: the input offset (index × stride) each output position reads, or None.
    let mut maps: Vec<Vec<Option<isize>>> = Vec::with_capacity(rank);
    for ax in 0..rank {
        let n = x.shape()[ax];
        let expect = n as i64 + pads[ax] + pads[rank + ax];
        if expect != shape[ax] as i64 {
            return Err(Error::invalid(format!(
                "pads {pads:?} on input {:?} do not give output shape {shape:?}",
                x.shape()
            )));
        }
        let mut m = Vec::with_capacity(shape[ax]);
        for o in 0..shape[ax] {
            let src = pad_source(o, pads[ax], n, mode);
            if src.is_none() && mode != PadMode::Constant {
                return Err(Error::invalid(format!(
                    "{mode:?} pad {:?} reaches outside axis {ax} of size {n} (input {:?})",
                    (pads[ax], pads[rank + ax]),
                    x.shape()
                )));
            }
            m.push(src.map(|i| i as isize * x.strides()[ax]));
        }
        maps.push(m);
    }
    let dtype = x.dtype();
    let fill_bytes: Vec<u8> =
        stitch_core::dispatch_dtype!(dtype, T => bytemuck::bytes_of(&T::from_f64(value)).to_vec());
    if rank == 0 {
        return Ok(contiguous(x));
    }
    let inner = shape[rank - 1];
    // Output positions [lo, hi) of the last axis read input positions lo - begin.. in order.
    let begin = pads[rank - 1];
    let lo = begin.clamp(0, inner as i64) as usize;
    let hi = (begin + x.shape()[rank - 1] as i64).clamp(lo as i64, inner as i64) as usize;
    let last_stride = x.strides()[rank - 1];
    Ok(
        by_size!(dtype.size_in_bytes(), U => new_tensor::<U>(dtype, &shape, |dst| {
            let fill: U = bytemuck::pod_read_unaligned(&fill_bytes);
            let src = raw::<U>(x);
            let outer_shape = &shape[..rank - 1];
            let last_map = &maps[rank - 1];
            par_rows(dst, inner, |first_row, chunk| {
                let mut index = vec![0usize; outer_shape.len()];
                let mut lin = first_row;
                for ax in (0..outer_shape.len()).rev() {
                    index[ax] = lin % outer_shape[ax];
                    lin /= outer_shape[ax];
                }
                for row in chunk.chunks_mut(inner) {
                    let mut base = Some(x.offset() as isize);
                    for (ax, &i) in index.iter().enumerate() {
                        base = match (base, maps[ax][i]) {
                            (Some(b), Some(o)) => Some(b + o),
                            _ => None,
                        };
                    }
                    match base {
                        None => row.fill(fill),
                        Some(b) => {
                            let at = |o: Option<isize>| o.map_or(fill, |o| src[(b + o) as usize]);
                            for j in (0..lo).chain(hi..inner) {
                                row[j] = at(last_map[j]);
                            }
                            if hi > lo {
                                let s0 = b + last_map[lo].unwrap_or(0);
                                if last_stride == 1 {
                                    row[lo..hi].copy_from_slice(&src[s0 as usize..s0 as usize + (hi - lo)]);
                                } else {
                                    for (k, d) in row[lo..hi].iter_mut().enumerate() {
                                        *d = src[(s0 + k as isize * last_stride) as usize];
                                    }
                                }
                            }
                        }
                    }
                    for ax in (0..index.len()).rev() {
                        index[ax] += 1;
                        if index[ax] < outer_shape[ax] {
                            break;
                        }
                        index[ax] = 0;
                    }
                }
            })
        })),
    )
}
