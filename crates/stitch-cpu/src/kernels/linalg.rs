//! Matmul and gemm kernels.
//!
//! Floating-point products go through the `gemm` crate, which takes raw
//! pointers with arbitrary row/column strides: transposed operands and
//! broadcast batch axes (stride 0) are passed as views, without copies. f32,
//! f64 and f16 use gemm directly (its f16 kernel accumulates in f32); bf16 is
//! converted to f32 and back. Integers use a plain wrapping loop kernel.
//!
//! Parallelism: many small matrices are spread over rayon threads (one
//! single-threaded gemm call each); large matrices are multiplied one after the
//! other and gemm parallelises each of them itself.

use half::{bf16, f16};
use rayon::prelude::*;
use stitch_core::ops::UnaryOp;
use stitch_core::{DType, Dims, Element, Error, Result, Tensor, TensorType};

use super::{dims, PAR_CHUNK};

/// Element types the `gemm` crate multiplies (it panics on any other type).
pub(crate) trait GemmFloat: Element + Copy {}
impl GemmFloat for f32 {}
impl GemmFloat for f64 {}
impl GemmFloat for f16 {}

/// Multiply-adds below which a matrix product is not worth splitting over threads.
const PAR_FLOPS: usize = 1 << 15;
/// Multiply-adds above which one matrix keeps every thread busy on its own.
const BIG_MATRIX_FLOPS: usize = 1 << 18;

/// `dst (m×n, row-major, contiguous) := dst_scale·dst + prod_scale·lhs·rhs`
/// through the `gemm` crate, where `dst_scale·dst` only applies with `read_dst`.
///
/// # Safety
/// `lhs + i·lhs_rs + p·lhs_cs` must be readable for every `i < m`, `p < k`, and
/// `rhs + p·rhs_rs + j·rhs_cs` for every `p < k`, `j < n`; `dst` must hold `m·n`
/// elements.
#[allow(clippy::too_many_arguments)]
pub(crate) unsafe fn gemm_call<T: GemmFloat>(
    m: usize,
    n: usize,
    k: usize,
    dst: &mut [T],
    read_dst: bool,
    lhs: *const T,
    lhs_rs: isize,
    lhs_cs: isize,
    rhs: *const T,
    rhs_rs: isize,
    rhs_cs: isize,
    dst_scale: T,
    prod_scale: T,
    parallel: bool,
) {
    debug_assert_eq!(dst.len(), m * n);
    if m == 0 || n == 0 {
        return;
    }
    if k == 0 {
        // Empty sum: the product is zero. Handled here because an empty inner
        // dimension is an edge case we do not want to rely on gemm for.
        for v in dst.iter_mut() {
            *v = if read_dst {
                T::from_f64(dst_scale.to_f64() * v.to_f64())
            } else {
                T::from_f64(0.0)
            };
        }
        return;
    }
    if T::DTYPE == DType::F32 {
        // f32 goes through stitch's own packed kernels (allocation-free when warm).
        // SAFETY: T is f32 (checked above), so the casts are identities; the
        // caller's guarantees on lhs/rhs/dst carry over.
        unsafe {
            let dst = std::slice::from_raw_parts_mut(dst.as_mut_ptr() as *mut f32, dst.len());
            super::sgemm::sgemm(
                super::sgemm::Isa::detect(),
                m,
                n,
                k,
                super::sgemm::Mat {
                    ptr: lhs as *const f32,
                    rs: lhs_rs,
                    cs: lhs_cs,
                },
                super::sgemm::Mat {
                    ptr: rhs as *const f32,
                    rs: rhs_rs,
                    cs: rhs_cs,
                },
                dst,
                read_dst,
                dst_scale.to_f64() as f32,
                prod_scale.to_f64() as f32,
                parallel && m * n * k >= PAR_FLOPS,
            );
        }
        return;
    }
    let threads = rayon::current_num_threads();
    let par = if parallel && threads > 1 && m * n * k >= PAR_FLOPS {
        ::gemm::Parallelism::Rayon(threads)
    } else {
        ::gemm::Parallelism::None
    };
    // SAFETY: the caller guarantees the lhs/rhs extents are readable; `dst` is
    // an exclusive slice of exactly m·n elements addressed with row stride n
    // and column stride 1. T is f32, f64 or f16 (GemmFloat), the types gemm
    // supports (gemm::f16 is half::f16, the single `half` in the build).
    unsafe {
        ::gemm::gemm(
            m,
            n,
            k,
            dst.as_mut_ptr(),
            1,
            n as isize,
            read_dst,
            lhs,
            lhs_cs,
            lhs_rs,
            rhs,
            rhs_cs,
            rhs_rs,
            dst_scale,
            prod_scale,
            false,
            false,
            false,
            par,
        )
    }
}

/// Operands of a batched product as broadcast views: `a` is `batch ++ [m, k]`,
/// `b` is `batch ++ [k, n]`, all strides non-negative.
struct Plan {
    a: Tensor,
    b: Tensor,
    batch: Dims,
    m: usize,
    n: usize,
    k: usize,
    /// The result shape: `batch ++ [m, n]` without the axes 1-D operands added.
    out_shape: Dims,
}

impl Plan {
    fn new(a: &Tensor, b: &Tensor, ta: bool, tb: bool) -> Result<Plan> {
        let (ra, rb) = (a.rank(), b.rank());
        if ra == 0 || rb == 0 {
            return Err(Error::invalid(format!(
                "matmul operands must have rank >= 1, got {:?} and {:?}",
                a.shape(),
                b.shape()
            )));
        }
        let (a_shape, b_shape) = (a.shape(), b.shape());
        // gemm could take negative strides, but the offset arithmetic below
        // stays simple (and obviously in bounds) with non-negative ones.
        let a = if a.strides().iter().any(|&s| s < 0) {
            a.contiguous()
        } else {
            a.clone()
        };
        let b = if b.strides().iter().any(|&s| s < 0) {
            b.contiguous()
        } else {
            b.clone()
        };
        let av = if ra == 1 {
            a.unsqueeze(0)?
        } else if ta {
            a.transpose(ra - 2, ra - 1)?
        } else {
            a
        };
        let bv = if rb == 1 {
            b.unsqueeze(1)?
        } else if tb {
            b.transpose(rb - 2, rb - 1)?
        } else {
            b
        };
        let (sa, sb) = (av.shape(), bv.shape());
        let (m, ka) = (sa[sa.len() - 2], sa[sa.len() - 1]);
        let (kb, n) = (sb[sb.len() - 2], sb[sb.len() - 1]);
        if ka != kb {
            return Err(Error::invalid(format!(
                "matmul inner dimensions differ: a {a_shape:?} (transpose {ta}) has k = {ka}, b {b_shape:?} (transpose {tb}) has k = {kb}"
            )));
        }
        let (ba, bb) = (&sa[..sa.len() - 2], &sb[..sb.len() - 2]);
        let r = ba.len().max(bb.len());
        let mut batch = Dims::with_capacity(r);
        for i in 0..r {
            let da = if i + ba.len() >= r { ba[i + ba.len() - r] } else { 1 };
            let db = if i + bb.len() >= r { bb[i + bb.len() - r] } else { 1 };
            batch.push(match (da, db) {
                _ if da == db => da,
                (1, d) | (d, 1) => d,
                _ => {
                    return Err(Error::invalid(format!(
                        "matmul batch dimensions {ba:?} and {bb:?} do not broadcast"
                    )))
                }
            });
        }
        let mut out_shape = batch.clone();
        if ra > 1 {
            out_shape.push(m);
        }
        if rb > 1 {
            out_shape.push(n);
        }
        let mut full_a = batch.clone();
        full_a.extend([m, ka]);
        let mut full_b = batch.clone();
        full_b.extend([ka, n]);
        Ok(Plan {
            a: av.broadcast_to(&full_a)?,
            b: bv.broadcast_to(&full_b)?,
            batch,
            m,
            n,
            k: ka,
            out_shape,
        })
    }

    fn batch_count(&self) -> usize {
        self.batch.iter().product()
    }

    /// Element offsets of the `bi`-th (row-major) batch matrix in `a` and `b`.
    fn offsets(&self, mut bi: usize) -> (usize, usize) {
        let nb = self.batch.len();
        let (sa, sb) = (self.a.strides(), self.b.strides());
        let (mut oa, mut ob) = (self.a.offset(), self.b.offset());
        for ax in (0..nb).rev() {
            let i = bi % self.batch[ax];
            bi /= self.batch[ax];
            // Strides are non-negative (see `new`), so the casts are exact.
            oa += i * sa[ax] as usize;
            ob += i * sb[ax] as usize;
        }
        (oa, ob)
    }

    /// (row stride, column stride) of a's and b's matrices.
    fn matrix_strides(&self) -> ((isize, isize), (isize, isize)) {
        let (sa, sb) = (self.a.strides(), self.b.strides());
        let nb = self.batch.len();
        ((sa[nb], sa[nb + 1]), (sb[nb], sb[nb + 1]))
    }
}

/// `dst := dst_scale·dst + prod_scale·(a @ b)` for every batch matrix, with
/// `dst` the contiguous `batch ++ [m, n]` result.
fn float_product<T: GemmFloat>(p: &Plan, dst: &mut [T], read_dst: bool, dst_scale: f64, prod_scale: f64) -> Result<()> {
    let (m, n, k) = (p.m, p.n, p.k);
    let mn = m * n;
    if mn == 0 {
        return Ok(());
    }
    let a_data = p.a.buffer().as_slice::<T>();
    let b_data = p.b.buffer().as_slice::<T>();
    let ((ars, acs), (brs, bcs)) = p.matrix_strides();
    let (ds, ps) = (T::from_f64(dst_scale), T::from_f64(prod_scale));
    let batches = p.batch_count();
    let flops = mn * k;
    let one = |bi: usize, out: &mut [T], parallel: bool| {
        let (oa, ob) = p.offsets(bi);
        // SAFETY: `p.a` and `p.b` are views validated by `Tensor` (every element
        // of their shape lies inside their buffers) with non-negative strides;
        // `oa`/`ob` are the offsets of batch matrix `bi`, and gemm reads
        // exactly that matrix's m×k / k×n elements at the given strides.
        // `out` is the m·n slice of this batch matrix.
        unsafe {
            gemm_call(
                m,
                n,
                k,
                out,
                read_dst,
                a_data.as_ptr().add(oa),
                ars,
                acs,
                b_data.as_ptr().add(ob),
                brs,
                bcs,
                ds,
                ps,
                parallel,
            )
        }
    };
    let threads = rayon::current_num_threads();
    if batches > 1 && batches * flops >= PAR_FLOPS && (flops < BIG_MATRIX_FLOPS || batches >= threads) {
        let min_len = (PAR_FLOPS / flops.max(1)).max(1);
        dst.par_chunks_mut(mn)
            .with_min_len(min_len)
            .enumerate()
            .for_each(|(bi, out)| one(bi, out, false));
    } else {
        for (bi, out) in dst.chunks_mut(mn).enumerate() {
            one(bi, out, true);
        }
    }
    Ok(())
}

/// Integer arithmetic that wraps on overflow.
trait WrapInt: Element + Copy {
    fn wmul(self, o: Self) -> Self;
    fn wadd(self, o: Self) -> Self;
}
macro_rules! wrap_int {
    ($($t:ty),*) => {$(
        impl WrapInt for $t {
            #[inline]
            fn wmul(self, o: Self) -> Self { self.wrapping_mul(o) }
            #[inline]
            fn wadd(self, o: Self) -> Self { self.wrapping_add(o) }
        }
    )*};
}
wrap_int!(i8, u8, i16, u16, i32, u32, i64, u64);

/// `a @ b` for integers (wrapping), into the contiguous `batch ++ [m, n]` `dst`.
fn int_product<T: WrapInt>(p: &Plan, dst: &mut [T]) {
    let (m, n, k) = (p.m, p.n, p.k);
    if m * n == 0 {
        return;
    }
    let a_data = p.a.buffer().as_slice::<T>();
    let b_data = p.b.buffer().as_slice::<T>();
    let ((ars, acs), (brs, bcs)) = p.matrix_strides();
    // Strides are non-negative (see Plan::new).
    let (ars, acs, brs, bcs) = (ars as usize, acs as usize, brs as usize, bcs as usize);
    let min_rows = (PAR_CHUNK / (n * k).max(1)).max(1);
    dst.par_chunks_mut(n)
        .with_min_len(min_rows)
        .enumerate()
        .for_each(|(row, out)| {
            let (bi, i) = (row / m, row % m);
            let (oa, ob) = p.offsets(bi);
            let a_row = oa + i * ars;
            out.fill(T::from_f64(0.0));
            // i-k-j order: the inner loop walks a row of b and of the output.
            for kk in 0..k {
                let av = a_data[a_row + kk * acs];
                let b_row = ob + kk * brs;
                if bcs == 1 {
                    for (o, &bv) in out.iter_mut().zip(&b_data[b_row..b_row + n]) {
                        *o = o.wadd(av.wmul(bv));
                    }
                } else {
                    for (j, o) in out.iter_mut().enumerate() {
                        *o = o.wadd(av.wmul(b_data[b_row + j * bcs]));
                    }
                }
            }
        });
}

/// Converts a float tensor to a contiguous f32 tensor (exact for f16/bf16).
fn to_f32(t: &Tensor) -> Result<Tensor> {
    // `Tensor::is_contiguous` is false for some empty layouts, so `as_slice`
    // would refuse them; there is nothing to convert anyway.
    if t.numel() == 0 {
        return Ok(Tensor::zeros(DType::F32, t.shape()));
    }
    let c = t.contiguous();
    let v: Vec<f32> = stitch_core::dispatch_dtype!(t.dtype(), T => {
        c.as_slice::<T>()?.par_iter().with_min_len(PAR_CHUNK).map(|&x| x.to_f64() as f32).collect()
    });
    Tensor::from_vec(v, t.shape())
}

/// Rounds a contiguous f32 tensor to bf16.
fn f32_to_bf16(t: &Tensor) -> Result<Tensor> {
    if t.numel() == 0 {
        return Ok(Tensor::zeros(DType::BF16, t.shape()));
    }
    let v: Vec<bf16> = t
        .as_slice::<f32>()?
        .par_iter()
        .with_min_len(PAR_CHUNK)
        .map(|&x| bf16::from_f32(x))
        .collect();
    Tensor::from_vec(v, t.shape())
}

fn check_out(full: &[usize], want: &[usize], what: &str) -> Result<()> {
    if full != want {
        return Err(Error::invalid(format!(
            "{what} computes a result of shape {full:?}, but the output type is {want:?}"
        )));
    }
    Ok(())
}

/// Batched matmul with broadcasting and optional transposes.
pub fn matmul(a: &Tensor, b: &Tensor, transpose_a: bool, transpose_b: bool, out: &TensorType) -> Result<Tensor> {
    let out_dims = dims(out)?;
    if a.dtype() != b.dtype() {
        return Err(Error::invalid(format!(
            "matmul operands differ in dtype: {} and {}",
            a.dtype(),
            b.dtype()
        )));
    }
    if a.dtype() == DType::BF16 {
        let t = TensorType::new(DType::F32, out.shape.clone());
        let y = matmul(&to_f32(a)?, &to_f32(b)?, transpose_a, transpose_b, &t)?;
        return f32_to_bf16(&y);
    }
    let p = Plan::new(a, b, transpose_a, transpose_b)?;
    check_out(&p.out_shape, &out_dims, "matmul")?;
    let len = p.batch_count() * p.m * p.n;
    macro_rules! float {
        ($t:ty) => {{
            // gemm overwrites the whole output (read_dst = false).
            let mut t = Tensor::empty(<$t>::DTYPE, &out_dims);
            debug_assert_eq!(t.numel(), len);
            float_product::<$t>(&p, t.buffer_mut().as_slice_mut::<$t>(), false, 0.0, 1.0)?;
            Ok(t)
        }};
    }
    macro_rules! int {
        ($t:ty) => {{
            let mut t = Tensor::zeros(<$t>::DTYPE, &out_dims);
            debug_assert_eq!(t.numel(), len);
            int_product::<$t>(&p, t.buffer_mut().as_slice_mut::<$t>());
            Ok(t)
        }};
    }
    match a.dtype() {
        DType::F32 => float!(f32),
        DType::F64 => float!(f64),
        DType::F16 => float!(f16),
        DType::I8 => int!(i8),
        DType::U8 => int!(u8),
        DType::I16 => int!(i16),
        DType::U16 => int!(u16),
        DType::I32 => int!(i32),
        DType::U32 => int!(u32),
        DType::I64 => int!(i64),
        DType::U64 => int!(u64),
        d => Err(Error::invalid(format!("matmul does not support dtype {d}"))),
    }
}

/// A constant f32 right-hand matmul operand packed once for the sgemm kernels
/// (see [`prepare_matmul_weight`]), with the shape it was packed from.
#[derive(Debug)]
pub struct PackedWeight {
    packed: super::sgemm::PackedB,
    /// The operand's shape as the node sees it (before `transpose_b`).
    shape: Dims,
    transpose_b: bool,
    /// A gemm's constant bias row (`c` of `a @ b + c`), added in the epilogue.
    bias: Option<Vec<f32>>,
}

/// Packs `b`, the right operand of `matmul(a, b, transpose_a, transpose_b)`,
/// when it is an f32 matrix (rank 2) that every product would pack the same
/// way; `None` when the operand does not qualify (the plain kernel runs).
pub fn prepare_matmul_weight(b: &Tensor, transpose_b: bool) -> Option<PackedWeight> {
    if b.dtype() != DType::F32 || b.rank() != 2 || b.numel() == 0 || b.strides().iter().any(|&s| s < 0) {
        return None;
    }
    let bv = if transpose_b {
        b.transpose(0, 1).ok()?
    } else {
        b.clone()
    };
    let (k, n) = (bv.shape()[0], bv.shape()[1]);
    let data = bv.buffer().as_slice::<f32>();
    // SAFETY: `bv` is a view validated by `Tensor` (every element of its k×n
    // shape lies inside its buffer) with non-negative strides.
    let packed = unsafe {
        super::sgemm::PackedB::new(
            super::sgemm::Isa::detect(),
            k,
            n,
            super::sgemm::Mat {
                ptr: data.as_ptr().add(bv.offset()),
                rs: bv.strides()[0],
                cs: bv.strides()[1],
            },
        )
    };
    Some(PackedWeight {
        packed,
        shape: Dims::from_slice(b.shape()),
        transpose_b,
        bias: None,
    })
}

/// Packs the constant `b` (and bias row `c`) of `gemm(a, b, c)` with
/// `alpha = beta = 1` and no `transpose_a`; `None` when the node does not
/// qualify (the plain kernel runs).
pub fn prepare_gemm_weight(
    b: &Tensor,
    c: Option<&Tensor>,
    alpha: f64,
    beta: f64,
    transpose_a: bool,
    transpose_b: bool,
) -> Option<PackedWeight> {
    if alpha != 1.0 || transpose_a {
        return None;
    }
    let mut w = prepare_matmul_weight(b, transpose_b)?;
    if let Some(c) = c {
        let n = w.packed.n();
        let row = c.shape().last() == Some(&n) && c.rank() <= 2 && c.numel() == n;
        if beta != 1.0 || c.dtype() != DType::F32 || !row {
            return None;
        }
        w.bias = Some(c.to_vec::<f32>().ok()?);
    }
    Some(w)
}

/// `gemm(a, b, c)` with `b` and `c` packed by [`prepare_gemm_weight`] (`b` is
/// the same constant, passed to check that it still matches): one product with
/// the bias added in its epilogue.
#[allow(clippy::too_many_arguments)]
pub fn gemm_prepacked(
    a: &Tensor,
    b: &Tensor,
    c: Option<&Tensor>,
    w: &PackedWeight,
    (alpha, beta): (f64, f64),
    transpose_a: bool,
    transpose_b: bool,
    activation: Option<UnaryOp>,
    out: &TensorType,
) -> Result<Tensor> {
    let same = a.dtype() == DType::F32
        && a.rank() == 2
        && !transpose_a
        && b.shape() == w.shape.as_slice()
        && transpose_b == w.transpose_b
        && c.is_some() == w.bias.is_some()
        && a.strides().iter().all(|&s| s >= 0);
    let out_dims = dims(out)?;
    let (k, n) = (w.packed.k(), w.packed.n());
    let (m, ka) = if same { (a.shape()[0], a.shape()[1]) } else { (0, 0) };
    if !same || ka != k || out_dims.as_slice() != [m, n] {
        // Not what was packed: the plain kernel checks and runs it.
        let y = gemm(a, b, c, alpha, beta, transpose_a, transpose_b, out)?;
        return activate(y, activation, out);
    }
    let mut t = Tensor::empty(DType::F32, &out_dims);
    if m == 0 {
        return Ok(t);
    }
    let dst = t.buffer_mut().as_slice_mut::<f32>();
    let data = a.buffer().as_slice::<f32>();
    let mat = super::sgemm::Mat {
        // SAFETY (of the later reads): the offset is of an element of `a`.
        ptr: data[a.offset()..].as_ptr(),
        rs: a.strides()[0],
        cs: a.strides()[1],
    };
    // SAFETY: `a` is a validated m×k view with non-negative strides.
    unsafe { super::sgemm::sgemm_packed(m, mat, &w.packed, dst, w.bias.as_deref(), true) };
    if let Some(act) = activation {
        activate_f32(dst, act)?;
    }
    Ok(t)
}

/// `matmul(a, b)` with `b` packed beforehand by [`prepare_matmul_weight`]
/// (`b` is the same constant, passed to check that it still matches). The
/// batch axes of `a` are folded into its rows when their strides allow, so a
/// batch of sequences is one product with the weight read once.
pub fn matmul_prepacked(
    a: &Tensor,
    b: &Tensor,
    w: &PackedWeight,
    transpose_a: bool,
    transpose_b: bool,
    out: &TensorType,
) -> Result<Tensor> {
    if a.dtype() != DType::F32 || b.shape() != w.shape.as_slice() || transpose_b != w.transpose_b || a.rank() == 0 {
        // Not what was packed: the plain kernel checks and runs it.
        return matmul(a, b, transpose_a, transpose_b, out);
    }
    let out_dims = dims(out)?;
    let (k, n) = (w.packed.k(), w.packed.n());
    let a = if a.strides().iter().any(|&s| s < 0) {
        a.contiguous()
    } else {
        a.clone()
    };
    let ra = a.rank();
    let av = if ra == 1 {
        a.unsqueeze(0)?
    } else if transpose_a {
        a.transpose(ra - 2, ra - 1)?
    } else {
        a
    };
    let sa = av.shape();
    let (m, ka) = (sa[sa.len() - 2], sa[sa.len() - 1]);
    if ka != k {
        return Err(Error::invalid(format!(
            "matmul inner dimensions differ: a {:?} (transpose {transpose_a}) has k = {ka}, b {:?} (transpose {transpose_b}) has k = {k}",
            sa,
            w.shape
        )));
    }
    let batch = &sa[..sa.len() - 2];
    let mut want: Dims = Dims::from_slice(batch);
    if ra > 1 {
        want.push(m);
    }
    want.push(n);
    check_out(&want, &out_dims, "matmul")?;
    let batches: usize = batch.iter().product();
    let mut t = Tensor::empty(DType::F32, &out_dims);
    if batches * m == 0 {
        return Ok(t);
    }
    let dst = t.buffer_mut().as_slice_mut::<f32>();
    let st = av.strides();
    let (rs, cs) = (st[st.len() - 2], st[st.len() - 1]);
    // Rows of every batch matrix at one stride: the batch folds into the rows.
    let mut fold = true;
    let mut expect = m as isize * rs;
    for ax in (0..batch.len()).rev() {
        if batch[ax] != 1 && st[ax] != expect {
            fold = false;
            break;
        }
        expect *= batch[ax] as isize;
    }
    let a_data = av.buffer().as_slice::<f32>();
    let base = av.offset();
    let mat = |off: usize| super::sgemm::Mat {
        // SAFETY (of the later reads): the offset is of an element of `av`.
        ptr: a_data[off..].as_ptr(),
        rs,
        cs,
    };
    if fold || batches == 1 {
        // SAFETY: `av` is a validated view with non-negative strides; with
        // `fold`, row r of the folded (batches·m)×k matrix is at base + r·rs.
        unsafe { super::sgemm::sgemm_packed(batches * m, mat(base), &w.packed, dst, None, true) };
    } else {
        let mut bi_index: Dims = batch.iter().map(|_| 0).collect();
        for out in dst.chunks_mut(m * n) {
            let off = base + bi_index.iter().zip(st).map(|(&i, &s)| i * s as usize).sum::<usize>();
            // SAFETY: `off` is the offset of this batch matrix of the validated view.
            unsafe { super::sgemm::sgemm_packed(m, mat(off), &w.packed, out, None, true) };
            for ax in (0..batch.len()).rev() {
                bi_index[ax] += 1;
                if bi_index[ax] < batch[ax] {
                    break;
                }
                bi_index[ax] = 0;
            }
        }
    }
    Ok(t)
}

/// The bias `c` broadcast to `[m, n]`, contiguous, as `T`.
fn bias_matrix<T: Element>(c: &Tensor, m: usize, n: usize) -> Result<Vec<T>> {
    if c.rank() > 2 {
        return Err(Error::invalid(format!(
            "gemm bias c of shape {:?} must have rank <= 2",
            c.shape()
        )));
    }
    c.broadcast_to(&[m, n])
        .map_err(|_| {
            Error::invalid(format!(
                "gemm bias c of shape {:?} does not broadcast to [{m}, {n}]",
                c.shape()
            ))
        })?
        .to_vec::<T>()
}

/// `alpha * op(a) @ op(b) + beta * c`.
///
/// When `c` is given it is always read (even for `beta = 0`), like the
/// decomposition `alpha·(a@b) + beta·c`, so NaNs in `c` propagate the same way.
/// Integer `alpha`/`beta` are converted to the dtype first (as the
/// decomposition's scalar constants are).
#[allow(clippy::too_many_arguments)]
pub fn gemm(
    a: &Tensor,
    b: &Tensor,
    c: Option<&Tensor>,
    alpha: f64,
    beta: f64,
    transpose_a: bool,
    transpose_b: bool,
    out: &TensorType,
) -> Result<Tensor> {
    let out_dims = dims(out)?;
    if a.rank() != 2 || b.rank() != 2 {
        return Err(Error::invalid(format!(
            "gemm needs 2-D a and b, got {:?} and {:?}",
            a.shape(),
            b.shape()
        )));
    }
    let dt = a.dtype();
    if b.dtype() != dt || c.is_some_and(|c| c.dtype() != dt) {
        return Err(Error::invalid("gemm operands differ in dtype"));
    }
    if dt == DType::BF16 {
        let t = TensorType::new(DType::F32, out.shape.clone());
        let c32 = c.map(to_f32).transpose()?;
        let y = gemm(
            &to_f32(a)?,
            &to_f32(b)?,
            c32.as_ref(),
            alpha,
            beta,
            transpose_a,
            transpose_b,
            &t,
        )?;
        return f32_to_bf16(&y);
    }
    let p = Plan::new(a, b, transpose_a, transpose_b)?;
    check_out(&p.out_shape, &out_dims, "gemm")?;
    let (m, n) = (p.m, p.n);
    macro_rules! float {
        ($t:ty) => {{
            let (mut v, read) = match c {
                Some(c) => (bias_matrix::<$t>(c, m, n)?, true),
                None => (vec![<$t>::from_f64(0.0); m * n], false),
            };
            float_product::<$t>(&p, &mut v, read, beta, alpha)?;
            Tensor::from_vec(v, &out_dims)
        }};
    }
    macro_rules! int {
        ($t:ty) => {{
            let mut v = vec![<$t>::from_f64(0.0); m * n];
            int_product::<$t>(&p, &mut v);
            let al = <$t>::from_f64(alpha);
            if alpha != 1.0 {
                v.par_iter_mut().with_min_len(PAR_CHUNK).for_each(|x| *x = al.wmul(*x));
            }
            if let Some(c) = c {
                let cm = bias_matrix::<$t>(c, m, n)?;
                let be = <$t>::from_f64(beta);
                v.par_iter_mut()
                    .zip(cm.par_iter())
                    .with_min_len(PAR_CHUNK)
                    .for_each(|(x, &cv)| *x = x.wadd(be.wmul(cv)));
            }
            Tensor::from_vec(v, &out_dims)
        }};
    }
    match dt {
        DType::F32 => float!(f32),
        DType::F64 => float!(f64),
        DType::F16 => float!(f16),
        DType::I8 => int!(i8),
        DType::U8 => int!(u8),
        DType::I16 => int!(i16),
        DType::U16 => int!(u16),
        DType::I32 => int!(i32),
        DType::U32 => int!(u32),
        DType::I64 => int!(i64),
        DType::U64 => int!(u64),
        d => Err(Error::invalid(format!("gemm does not support dtype {d}"))),
    }
}

/// Applies a gemm's activation epilogue to its freshly computed result `t`:
/// f32 in place (vectorised), other dtypes through the elementwise kernel.
pub fn activate(mut t: Tensor, act: Option<UnaryOp>, out: &TensorType) -> Result<Tensor> {
    let Some(act) = act else {
        return Ok(t);
    };
    if t.dtype() == DType::F32 && t.is_contiguous() && t.offset() == 0 {
        activate_f32(t.buffer_mut().as_slice_mut::<f32>(), act)?;
        return Ok(t);
    }
    super::elementwise::unary(act, &t, out)
}

/// `act` over `v` in place (ReLU, GELU or tanh-GELU).
fn activate_f32(v: &mut [f32], act: UnaryOp) -> Result<()> {
    use super::simd_math::{gelu_f32, tanh_f32};
    if !stitch_core::ops::linalg::EPILOGUE_ACTIVATIONS.contains(&act) {
        return Err(Error::invalid(format!("{act:?} is not a gemm epilogue")));
    }
    v.par_chunks_mut(4096).for_each(|chunk| {
        let mut tmp = [0f32; 256];
        for c in chunk.chunks_mut(256) {
            let t = &mut tmp[..c.len()];
            match act {
                // `x < 0` is false for NaN, so NaN passes through (as the unary op).
                UnaryOp::Relu => c.iter_mut().for_each(|x| {
                    if *x < 0.0 {
                        *x = 0.0
                    }
                }),
                UnaryOp::Gelu => {
                    t.copy_from_slice(c);
                    gelu_f32(t, c);
                }
                _ => {
                    // 0.5·x·(1 + tanh(√(2/π)·(x + 0.044715·x³)))
                    let k = (2.0 / std::f32::consts::PI).sqrt();
                    for (ti, &x) in t.iter_mut().zip(c.iter()) {
                        *ti = k * (x + 0.044715 * x * x * x);
                    }
                    let mut th = [0f32; 256];
                    let th = &mut th[..c.len()];
                    tanh_f32(t, th);
                    for (x, &h) in c.iter_mut().zip(th.iter()) {
                        *x = 0.5 * *x * (1.0 + h);
                    }
                }
            }
        }
    });
    Ok(())
}
