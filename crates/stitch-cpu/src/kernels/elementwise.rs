//! Elementwise kernels: unary, binary with numpy broadcasting, where, cast, clamp.
//!
//! Every kernel goes through one strided walk (`for_each_row`): operands are
//! broadcast to the output shape as views (stride 0 on broadcast axes), axes
//! that are contiguous for every operand are merged, and the output is filled
//! row by row along the last merged axis, in parallel chunks of rows. Row
//! bodies have fast paths for unit stride and stride 0 (a broadcast scalar),
//! so contiguous and scalar-broadcast operands run as tight slice loops.
//!
//! Float math runs in f32 for f32/f16/bf16 (converted back once per element)
//! and in f64 for f64. Integer semantics (see `stitch_core::ops::elementwise`):
//! - add/sub/mul/neg/abs wrap on overflow (`wrapping_*`), they never panic;
//! - div truncates toward zero; `MIN / -1` wraps to `MIN`; x / 0 = 0;
//! - mod has the sign of the divisor (Python `%`), fmod of the dividend; x % 0 = 0;
//! - pow with a non-negative exponent is the wrapping power; with a negative
//!   exponent it is the truncated value of `1 / base^|e|`: 1 for base 1, ±1 for
//!   base -1 (by parity of `e`), and 0 for every other base, 0 included (like
//!   integer division by zero, which stitch also maps to 0).

use std::ops::{Add, Div, Mul, Neg, Rem, Sub};

use rayon::prelude::*;
use stitch_core::ops::{BinaryOp, UnaryOp};
use stitch_core::{Bool8, DType, Element, Error, Result, Tensor, TensorType};

use super::{dims, PAR_CHUNK};

/// The arithmetic type float kernels compute in (f32 or f64).
pub(crate) trait Real:
    Copy
    + Send
    + Sync
    + PartialOrd
    + Add<Output = Self>
    + Sub<Output = Self>
    + Mul<Output = Self>
    + Div<Output = Self>
    + Rem<Output = Self>
    + Neg<Output = Self>
    + 'static
{
    const ZERO: Self;
    const ONE: Self;
    const INFINITY: Self;
    const NEG_INFINITY: Self;
    fn from_f64c(v: f64) -> Self;
    fn exp(self) -> Self;
    fn ln(self) -> Self;
    fn sqrt(self) -> Self;
    fn sin(self) -> Self;
    fn cos(self) -> Self;
    fn tanh(self) -> Self;
    fn erf(self) -> Self;
    fn floor(self) -> Self;
    fn ceil(self) -> Self;
    fn round_even(self) -> Self;
    fn abs(self) -> Self;
    fn powf(self, e: Self) -> Self;
    fn copysign(self, sign: Self) -> Self;
    fn is_nan(self) -> bool;
}

macro_rules! impl_real {
    ($t:ty, $erf:path) => {
        impl Real for $t {
            const ZERO: Self = 0.0;
            const ONE: Self = 1.0;
            const INFINITY: Self = <$t>::INFINITY;
            const NEG_INFINITY: Self = <$t>::NEG_INFINITY;
            #[inline(always)]
            fn from_f64c(v: f64) -> Self {
                v as $t
            }
            #[inline(always)]
            fn exp(self) -> Self {
                <$t>::exp(self)
            }
            #[inline(always)]
            fn ln(self) -> Self {
                <$t>::ln(self)
            }
            #[inline(always)]
            fn sqrt(self) -> Self {
                <$t>::sqrt(self)
            }
            #[inline(always)]
            fn sin(self) -> Self {
                <$t>::sin(self)
            }
            #[inline(always)]
            fn cos(self) -> Self {
                <$t>::cos(self)
            }
            #[inline(always)]
            fn tanh(self) -> Self {
                <$t>::tanh(self)
            }
            #[inline(always)]
            fn erf(self) -> Self {
                $erf(self)
            }
            #[inline(always)]
            fn floor(self) -> Self {
                <$t>::floor(self)
            }
            #[inline(always)]
            fn ceil(self) -> Self {
                <$t>::ceil(self)
            }
            #[inline(always)]
            fn round_even(self) -> Self {
                <$t>::round_ties_even(self)
            }
            #[inline(always)]
            fn abs(self) -> Self {
                <$t>::abs(self)
            }
            #[inline(always)]
            fn powf(self, e: Self) -> Self {
                <$t>::powf(self, e)
            }
            #[inline(always)]
            fn copysign(self, sign: Self) -> Self {
                <$t>::copysign(self, sign)
            }
            #[inline(always)]
            fn is_nan(self) -> bool {
                <$t>::is_nan(self)
            }
        }
    };
}
impl_real!(f32, libm::erff);
impl_real!(f64, libm::erf);

/// A float storage type and the type it computes in.
pub(crate) trait FloatElem: Element + Copy {
    type C: Real;
    fn load(self) -> Self::C;
    fn store(c: Self::C) -> Self;
}

impl FloatElem for f32 {
    type C = f32;
    #[inline(always)]
    fn load(self) -> f32 {
        self
    }
    #[inline(always)]
    fn store(c: f32) -> f32 {
        c
    }
}
impl FloatElem for f64 {
    type C = f64;
    #[inline(always)]
    fn load(self) -> f64 {
        self
    }
    #[inline(always)]
    fn store(c: f64) -> f64 {
        c
    }
}
impl FloatElem for half::f16 {
    type C = f32;
    #[inline(always)]
    fn load(self) -> f32 {
        self.to_f32()
    }
    #[inline(always)]
    fn store(c: f32) -> Self {
        half::f16::from_f32(c)
    }
}
impl FloatElem for half::bf16 {
    type C = f32;
    #[inline(always)]
    fn load(self) -> f32 {
        self.to_f32()
    }
    #[inline(always)]
    fn store(c: f32) -> Self {
        half::bf16::from_f32(c)
    }
}

/// Integer element types with the wrapping operations the kernels need.
pub(crate) trait IntElem: Element + Copy + Ord {
    const SIGNED: bool;
    const ZERO: Self;
    const ONE: Self;
    const MIN: Self;
    const MAX: Self;
    fn wadd(self, b: Self) -> Self;
    fn wsub(self, b: Self) -> Self;
    fn wmul(self, b: Self) -> Self;
    fn wneg(self) -> Self;
    fn wabs(self) -> Self;
    /// Division truncating toward zero; `b` must be non-zero.
    fn wdiv(self, b: Self) -> Self;
    /// Remainder with the dividend's sign; `b` must be non-zero.
    fn wrem(self, b: Self) -> Self;
    /// Two's complement bits, sign-extended to 64 bits.
    fn to_bits64(self) -> u64;
    /// The low bits of `v` (wrapping, like `as`).
    fn from_bits64(v: u64) -> Self;
}

macro_rules! impl_int {
    ($($t:ty: $signed:expr, $wide:ty);* $(;)?) => {$(
        impl IntElem for $t {
            const SIGNED: bool = $signed;
            const ZERO: Self = 0;
            const ONE: Self = 1;
            const MIN: Self = <$t>::MIN;
            const MAX: Self = <$t>::MAX;
            #[inline(always)]
            fn wadd(self, b: Self) -> Self { self.wrapping_add(b) }
            #[inline(always)]
            fn wsub(self, b: Self) -> Self { self.wrapping_sub(b) }
            #[inline(always)]
            fn wmul(self, b: Self) -> Self { self.wrapping_mul(b) }
            #[inline(always)]
            fn wneg(self) -> Self { self.wrapping_neg() }
            #[inline(always)]
            fn wabs(self) -> Self { if self < 0 as $t { self.wrapping_neg() } else { self } }
            #[inline(always)]
            fn wdiv(self, b: Self) -> Self { self.wrapping_div(b) }
            #[inline(always)]
            fn wrem(self, b: Self) -> Self { self.wrapping_rem(b) }
            #[inline(always)]
            fn to_bits64(self) -> u64 { self as $wide as u64 }
            #[inline(always)]
            fn from_bits64(v: u64) -> Self { v as $t }
        }
    )*};
}
impl_int!(
    i8: true, i64; i16: true, i64; i32: true, i64; i64: true, i64;
    u8: false, u64; u16: false, u64; u32: false, u64; u64: false, u64;
);

/// Dispatches on a dtype's kind: `$F` bound to a float type, `$I` to an int
/// type, or the bool arm.
macro_rules! by_kind {
    ($dt:expr, float $F:ident => $f:expr, int $I:ident => $i:expr, bool => $b:expr $(,)?) => {
        match $dt {
            DType::F32 => {
                type $F = f32;
                $f
            }
            DType::F64 => {
                type $F = f64;
                $f
            }
            DType::F16 => {
                type $F = half::f16;
                $f
            }
            DType::BF16 => {
                type $F = half::bf16;
                $f
            }
            DType::I8 => {
                type $I = i8;
                $i
            }
            DType::I16 => {
                type $I = i16;
                $i
            }
            DType::I32 => {
                type $I = i32;
                $i
            }
            DType::I64 => {
                type $I = i64;
                $i
            }
            DType::U8 => {
                type $I = u8;
                $i
            }
            DType::U16 => {
                type $I = u16;
                $i
            }
            DType::U32 => {
                type $I = u32;
                $i
            }
            DType::U64 => {
                type $I = u64;
                $i
            }
            DType::Bool => $b,
        }
    };
}
pub(crate) use by_kind;

/// NaN-propagating maximum (numpy `maximum`).
#[inline(always)]
pub(crate) fn max_nan<C: Real>(a: C, b: C) -> C {
    if a > b || a.is_nan() {
        a
    } else {
        b
    }
}

/// NaN-propagating minimum (numpy `minimum`).
#[inline(always)]
pub(crate) fn min_nan<C: Real>(a: C, b: C) -> C {
    if a < b || a.is_nan() {
        a
    } else {
        b
    }
}

/// A row body of [`for_each_row`]: `(out_row, bases, strides)`.
pub(crate) type RowFn<'a, O, const N: usize> = dyn Fn(&mut [O], [usize; N], [isize; N]) + Sync + 'a;

/// Fills a new contiguous tensor of `out_dims` by rows. `ins` must already be
/// broadcast to `out_dims`. `row(out_row, bases, strides)` gets, per operand,
/// the buffer offset of the row's first element and the element stride along
/// the row (0 for a broadcast operand, possibly negative). `row` is a trait
/// object (one indirect call per row) so that this walk is compiled once per
/// output type and arity, not once per kernel (see [`par_chunks`]).
pub(crate) fn for_each_row<O: Element, const N: usize>(
    out_dims: &[usize],
    ins: [&Tensor; N],
    row: &RowFn<'_, O, N>,
) -> Tensor {
    let n: usize = out_dims.iter().product();
    if n == 0 {
        return Tensor::zeros(O::DTYPE, out_dims);
    }
    // Merge axes that are contiguous for every operand; drop size-1 axes.
    let mut shape = stitch_core::Dims::new();
    let mut strides: [stitch_core::Strides; N] = std::array::from_fn(|_| stitch_core::Strides::new());
    for (ax, &d) in out_dims.iter().enumerate() {
        if d == 1 {
            continue;
        }
        let mergeable =
            !shape.is_empty() && (0..N).all(|k| strides[k].last().copied() == Some(ins[k].strides()[ax] * d as isize));
        if mergeable {
            *shape.last_mut().expect("non-empty") *= d;
            for k in 0..N {
                *strides[k].last_mut().expect("non-empty") = ins[k].strides()[ax];
            }
        } else {
            shape.push(d);
            for k in 0..N {
                strides[k].push(ins[k].strides()[ax]);
            }
        }
    }
    if shape.is_empty() {
        shape.push(1);
        for s in strides.iter_mut() {
            s.push(0);
        }
    }
    let inner = *shape.last().expect("non-empty");
    let outer = &shape[..shape.len() - 1];
    let inner_strides: [isize; N] = std::array::from_fn(|k| *strides[k].last().expect("non-empty"));
    let offsets: [isize; N] = std::array::from_fn(|k| ins[k].offset() as isize);

    // Fills `chunk`, which starts at output element `first`; chunks may start
    // and end inside a row (long rows are split so they spread over threads).
    let process = |first: usize, chunk: &mut [O]| {
        // Odometer over the outer axes, started at the chunk's first row.
        let mut idx = stitch_core::Dims::from_elem(0, outer.len());
        let mut rem = first / inner;
        for ax in (0..outer.len()).rev() {
            idx[ax] = rem % outer[ax];
            rem /= outer[ax];
        }
        let mut bases: [isize; N] = std::array::from_fn(|k| {
            offsets[k]
                + idx
                    .iter()
                    .zip(&strides[k])
                    .map(|(&i, &s)| i as isize * s)
                    .sum::<isize>()
        });
        let mut col = first % inner;
        let mut rest = chunk;
        while !rest.is_empty() {
            let len = (inner - col).min(rest.len());
            let (seg, tail) = rest.split_at_mut(len);
            let starts: [usize; N] = std::array::from_fn(|k| (bases[k] + col as isize * inner_strides[k]) as usize);
            row(seg, starts, inner_strides);
            rest = tail;
            col = 0;
            for ax in (0..outer.len()).rev() {
                idx[ax] += 1;
                for k in 0..N {
                    bases[k] += strides[k][ax];
                }
                if idx[ax] < outer[ax] {
                    break;
                }
                for k in 0..N {
                    bases[k] -= strides[k][ax] * outer[ax] as isize;
                }
                idx[ax] = 0;
            }
        }
    };

    // Every element is written below, so the buffer need not be zeroed.
    let mut t = Tensor::empty(O::DTYPE, out_dims);
    let out = t.buffer_mut().as_slice_mut::<O>();
    let chunk_len = if inner >= PAR_CHUNK {
        PAR_CHUNK
    } else {
        (PAR_CHUNK / inner) * inner
    };
    par_chunks(out, chunk_len, &process);
    t
}

/// Runs `f(first, chunk)` over `out` in chunks of `chunk` elements (`first` is
/// the chunk's first index), in parallel when there is more than one chunk.
///
/// `f` is a trait object so that rayon's machinery is instantiated once per
/// element type rather than once per kernel closure: with hundreds of kernel
/// instantiations (ops × dtypes, casts between every dtype pair) that keeps the
/// crate's compile time reasonable. One indirect call per chunk costs nothing.
pub(crate) fn par_chunks<T: Send>(out: &mut [T], chunk: usize, f: &(dyn Fn(usize, &mut [T]) + Sync)) {
    let chunk = chunk.max(1);
    if out.len() <= chunk {
        f(0, out);
    } else {
        out.par_chunks_mut(chunk).enumerate().for_each(|(c, o)| f(c * chunk, o));
    }
}

#[inline(always)]
fn at(base: usize, i: usize, stride: isize) -> usize {
    (base as isize + i as isize * stride) as usize
}

/// `out[i] = f(x[i])` over `x` broadcast to `out_dims`.
pub(crate) fn map1<T: Element, O: Element>(
    x: &Tensor,
    out_dims: &[usize],
    f: impl Fn(T) -> O + Sync,
) -> Result<Tensor> {
    let x = x.broadcast_to(out_dims)?;
    let d = x.buffer().as_slice::<T>();
    Ok(for_each_row(out_dims, [&x], &|o, [b], [s]| {
        if s == 1 {
            let n = o.len();
            for (o, &v) in o.iter_mut().zip(&d[b..b + n]) {
                *o = f(v);
            }
        } else {
            for (i, o) in o.iter_mut().enumerate() {
                *o = f(d[at(b, i, s)]);
            }
        }
    }))
}

/// `out[i] = f(a[i], b[i])` with numpy broadcasting to `out_dims`.
pub(crate) fn map2<T: Element, O: Element>(
    a: &Tensor,
    b: &Tensor,
    out_dims: &[usize],
    f: impl Fn(T, T) -> O + Sync,
) -> Result<Tensor> {
    let a = a.broadcast_to(out_dims)?;
    let b = b.broadcast_to(out_dims)?;
    let (da, db) = (a.buffer().as_slice::<T>(), b.buffer().as_slice::<T>());
    Ok(for_each_row(out_dims, [&a, &b], &|o, [oa, ob], [sa, sb]| {
        let n = o.len();
        match (sa, sb) {
            (1, 1) => {
                for ((o, &x), &y) in o.iter_mut().zip(&da[oa..oa + n]).zip(&db[ob..ob + n]) {
                    *o = f(x, y);
                }
            }
            (1, 0) => {
                let y = db[ob];
                for (o, &x) in o.iter_mut().zip(&da[oa..oa + n]) {
                    *o = f(x, y);
                }
            }
            (0, 1) => {
                let x = da[oa];
                for (o, &y) in o.iter_mut().zip(&db[ob..ob + n]) {
                    *o = f(x, y);
                }
            }
            _ => {
                for (i, o) in o.iter_mut().enumerate() {
                    *o = f(da[at(oa, i, sa)], db[at(ob, i, sb)]);
                }
            }
        }
    }))
}

/// Elementwise unary op.
pub fn unary(op: UnaryOp, x: &Tensor, out: &TensorType) -> Result<Tensor> {
    let od = dims(out)?;
    if od.as_slice() != x.shape() || out.dtype != x.dtype() {
        return Err(Error::invalid(format!(
            "{}: input {} {:?} does not match output {out}",
            op.name(),
            x.dtype(),
            x.shape()
        )));
    }
    by_kind!(x.dtype(),
        float F => unary_float::<F>(op, x, &od),
        int I => unary_int::<I>(op, x, &od),
        bool => match op {
            UnaryOp::Not => map1::<Bool8, Bool8>(x, &od, |v| Bool8((v.0 == 0) as u8)),
            _ => Err(Error::invalid(format!("{} does not accept bool", op.name()))),
        },
    )
}

fn unary_float<T: FloatElem>(op: UnaryOp, x: &Tensor, od: &[usize]) -> Result<Tensor> {
    macro_rules! go {
        (|$v:ident| $e:expr) => {
            map1::<T, T>(x, od, |t: T| {
                let $v = t.load();
                T::store($e)
            })
        };
    }
    let c = <T::C as Real>::from_f64c;
    let (zero, half, one) = (<T::C as Real>::ZERO, c(0.5), <T::C as Real>::ONE);
    let frac_1_sqrt_2 = c(std::f64::consts::FRAC_1_SQRT_2);
    let sqrt_2_over_pi = c((2.0 / std::f64::consts::PI).sqrt());
    let gelu_k = c(0.044715);
    match op {
        UnaryOp::Neg => go!(|v| -v),
        UnaryOp::Abs => go!(|v| v.abs()),
        UnaryOp::Exp => go!(|v| v.exp()),
        UnaryOp::Log => go!(|v| v.ln()),
        UnaryOp::Sqrt => go!(|v| v.sqrt()),
        UnaryOp::Rsqrt => go!(|v| one / v.sqrt()),
        UnaryOp::Sin => go!(|v| v.sin()),
        UnaryOp::Cos => go!(|v| v.cos()),
        UnaryOp::Tanh => go!(|v| v.tanh()),
        // exp(-x) overflows to inf for very negative x, giving exactly 0.
        UnaryOp::Sigmoid => go!(|v| one / (one + (-v).exp())),
        UnaryOp::Erf => go!(|v| v.erf()),
        // `v < 0` is false for NaN, so NaN passes through.
        UnaryOp::Relu => go!(|v| if v < zero { zero } else { v }),
        UnaryOp::Gelu => go!(|v| half * v * (one + (v * frac_1_sqrt_2).erf())),
        UnaryOp::GeluTanh => {
            go!(|v| half * v * (one + (sqrt_2_over_pi * (v + gelu_k * v * v * v)).tanh()))
        }
        UnaryOp::Silu => go!(|v| v / (one + (-v).exp())),
        UnaryOp::Floor => go!(|v| v.floor()),
        UnaryOp::Ceil => go!(|v| v.ceil()),
        UnaryOp::Round => go!(|v| v.round_even()),
        // ±0 and NaN map to themselves.
        UnaryOp::Sign => go!(|v| if v > zero {
            one
        } else if v < zero {
            -one
        } else {
            v
        }),
        UnaryOp::Reciprocal => go!(|v| one / v),
        UnaryOp::Not => Err(Error::invalid(format!("not does not accept {}", T::DTYPE))),
    }
}

fn unary_int<T: IntElem>(op: UnaryOp, x: &Tensor, od: &[usize]) -> Result<Tensor> {
    match op {
        UnaryOp::Neg if T::SIGNED => map1::<T, T>(x, od, |v| v.wneg()),
        UnaryOp::Abs => map1::<T, T>(x, od, |v| v.wabs()),
        UnaryOp::Relu => map1::<T, T>(x, od, |v| v.max(T::ZERO)),
        UnaryOp::Sign => map1::<T, T>(x, od, |v| match v.cmp(&T::ZERO) {
            std::cmp::Ordering::Greater => T::ONE,
            std::cmp::Ordering::Less => T::ZERO.wsub(T::ONE),
            std::cmp::Ordering::Equal => T::ZERO,
        }),
        _ => Err(Error::invalid(format!("{} does not accept {}", op.name(), T::DTYPE))),
    }
}

/// Elementwise binary op with numpy broadcasting to `out`.
pub fn binary(op: BinaryOp, a: &Tensor, b: &Tensor, out: &TensorType) -> Result<Tensor> {
    let od = dims(out)?;
    if a.dtype() != b.dtype() {
        return Err(Error::invalid(format!(
            "{}: operand dtypes differ ({} and {})",
            op.name(),
            a.dtype(),
            b.dtype()
        )));
    }
    by_kind!(a.dtype(),
        float F => binary_float::<F>(op, a, b, &od),
        int I => binary_int::<I>(op, a, b, &od),
        bool => binary_bool(op, a, b, &od),
    )
}

/// Python's `%` on floats: the remainder has the divisor's sign.
#[inline(always)]
fn py_mod_float<C: Real>(x: C, y: C) -> C {
    let r = x % y;
    if r == C::ZERO {
        // Zero takes the divisor's sign, as in Python and numpy.
        C::ZERO.copysign(y)
    } else if (r < C::ZERO) != (y < C::ZERO) {
        r + y
    } else {
        r
    }
}

fn binary_float<T: FloatElem>(op: BinaryOp, a: &Tensor, b: &Tensor, od: &[usize]) -> Result<Tensor> {
    macro_rules! arith {
        (|$x:ident, $y:ident| $e:expr) => {
            map2::<T, T>(a, b, od, |p: T, q: T| {
                let ($x, $y) = (p.load(), q.load());
                T::store($e)
            })
        };
    }
    macro_rules! cmp {
        ($o:tt) => {
            map2::<T, Bool8>(a, b, od, |p: T, q: T| Bool8((p.load() $o q.load()) as u8))
        };
    }
    match op {
        BinaryOp::Add => arith!(|x, y| x + y),
        BinaryOp::Sub => arith!(|x, y| x - y),
        BinaryOp::Mul => arith!(|x, y| x * y),
        BinaryOp::Div => arith!(|x, y| x / y),
        BinaryOp::Pow => arith!(|x, y| x.powf(y)),
        BinaryOp::Max => arith!(|x, y| max_nan(x, y)),
        BinaryOp::Min => arith!(|x, y| min_nan(x, y)),
        BinaryOp::Mod => arith!(|x, y| py_mod_float(x, y)),
        BinaryOp::Fmod => arith!(|x, y| x % y),
        BinaryOp::Equal => cmp!(==),
        BinaryOp::NotEqual => cmp!(!=),
        BinaryOp::Less => cmp!(<),
        BinaryOp::LessEqual => cmp!(<=),
        BinaryOp::Greater => cmp!(>),
        BinaryOp::GreaterEqual => cmp!(>=),
        BinaryOp::And | BinaryOp::Or | BinaryOp::Xor => Err(Error::invalid(format!(
            "{} needs bool operands, got {}",
            op.name(),
            T::DTYPE
        ))),
    }
}

/// Integer power; see the module docs for negative exponents.
#[inline]
fn int_pow<T: IntElem>(base: T, exp: T) -> T {
    if exp < T::ZERO {
        let minus_one = T::ZERO.wsub(T::ONE);
        return if base == T::ONE {
            T::ONE
        } else if base == minus_one {
            if exp.to_bits64() & 1 == 1 {
                minus_one
            } else {
                T::ONE
            }
        } else {
            T::ZERO
        };
    }
    let (mut e, mut b, mut r) = (exp.to_bits64(), base, T::ONE);
    while e > 0 {
        if e & 1 == 1 {
            r = r.wmul(b);
        }
        e >>= 1;
        if e > 0 {
            b = b.wmul(b);
        }
    }
    r
}

/// Python's `%` on integers; `x % 0 = 0`.
#[inline(always)]
fn py_mod_int<T: IntElem>(x: T, y: T) -> T {
    if y == T::ZERO {
        return T::ZERO;
    }
    let r = x.wrem(y);
    if r != T::ZERO && ((r < T::ZERO) != (y < T::ZERO)) {
        r.wadd(y)
    } else {
        r
    }
}

fn binary_int<T: IntElem>(op: BinaryOp, a: &Tensor, b: &Tensor, od: &[usize]) -> Result<Tensor> {
    macro_rules! arith {
        (|$x:ident, $y:ident| $e:expr) => {
            map2::<T, T>(a, b, od, |$x: T, $y: T| $e)
        };
    }
    macro_rules! cmp {
        ($o:tt) => {
            map2::<T, Bool8>(a, b, od, |p: T, q: T| Bool8((p $o q) as u8))
        };
    }
    match op {
        BinaryOp::Add => arith!(|x, y| x.wadd(y)),
        BinaryOp::Sub => arith!(|x, y| x.wsub(y)),
        BinaryOp::Mul => arith!(|x, y| x.wmul(y)),
        BinaryOp::Div => arith!(|x, y| if y == T::ZERO { T::ZERO } else { x.wdiv(y) }),
        BinaryOp::Pow => arith!(|x, y| int_pow(x, y)),
        BinaryOp::Max => arith!(|x, y| x.max(y)),
        BinaryOp::Min => arith!(|x, y| x.min(y)),
        BinaryOp::Mod => arith!(|x, y| py_mod_int(x, y)),
        BinaryOp::Fmod => arith!(|x, y| if y == T::ZERO { T::ZERO } else { x.wrem(y) }),
        BinaryOp::Equal => cmp!(==),
        BinaryOp::NotEqual => cmp!(!=),
        BinaryOp::Less => cmp!(<),
        BinaryOp::LessEqual => cmp!(<=),
        BinaryOp::Greater => cmp!(>),
        BinaryOp::GreaterEqual => cmp!(>=),
        BinaryOp::And | BinaryOp::Or | BinaryOp::Xor => Err(Error::invalid(format!(
            "{} needs bool operands, got {}",
            op.name(),
            T::DTYPE
        ))),
    }
}

fn binary_bool(op: BinaryOp, a: &Tensor, b: &Tensor, od: &[usize]) -> Result<Tensor> {
    // Any non-zero byte is true; compare truth values, not bytes.
    let f = |g: fn(bool, bool) -> bool| map2::<Bool8, Bool8>(a, b, od, move |x, y| Bool8(g(x.0 != 0, y.0 != 0) as u8));
    match op {
        BinaryOp::Equal => f(|x, y| x == y),
        BinaryOp::NotEqual | BinaryOp::Xor => f(|x, y| x != y),
        BinaryOp::And => f(|x, y| x && y),
        BinaryOp::Or => f(|x, y| x || y),
        _ => Err(Error::invalid(format!("{} does not accept bool operands", op.name()))),
    }
}

/// `where(cond, a, b)` with broadcasting to `out`.
pub fn where_(cond: &Tensor, a: &Tensor, b: &Tensor, out: &TensorType) -> Result<Tensor> {
    let od = dims(out)?;
    if cond.dtype() != DType::Bool {
        return Err(Error::invalid(format!(
            "where: condition must be bool, got {}",
            cond.dtype()
        )));
    }
    if a.dtype() != b.dtype() {
        return Err(Error::invalid(format!(
            "where: branch dtypes differ ({} and {})",
            a.dtype(),
            b.dtype()
        )));
    }
    let c = cond.broadcast_to(&od)?;
    let a = a.broadcast_to(&od)?;
    let b = b.broadcast_to(&od)?;
    stitch_core::dispatch_dtype!(a.dtype(), T => {
        let (dc, da, db) = (c.buffer().as_slice::<Bool8>(), a.buffer().as_slice::<T>(), b.buffer().as_slice::<T>());
        Ok(for_each_row(&od, [&c, &a, &b], &|o: &mut [T], [oc, oa, ob], [sc, sa, sb]| {
            let n = o.len();
            if (sc, sa, sb) == (1, 1, 1) {
                for (((o, c), &x), &y) in o.iter_mut().zip(&dc[oc..oc + n]).zip(&da[oa..oa + n]).zip(&db[ob..ob + n]) {
                    *o = if c.0 != 0 { x } else { y };
                }
            } else {
                for (i, o) in o.iter_mut().enumerate() {
                    *o = if dc[at(oc, i, sc)].0 != 0 { da[at(oa, i, sa)] } else { db[at(ob, i, sb)] };
                }
            }
        }))
    })
}

/// A scalar on its way through a cast: floats as f64 (exact for every float
/// dtype), integers and bools as i128 (exact for every integer dtype), so no
/// conversion passes through a type that loses precision.
#[derive(Clone, Copy)]
enum Repr {
    Float(f64),
    Int(i128),
}

/// Conversion to and from [`Repr`] with stitch's cast semantics.
trait CastElem: Element + Copy {
    fn to_repr(self) -> Repr;
    fn from_repr(r: Repr) -> Self;
}

/// `v` rounded to f64 with round-to-odd, so that later roundings to narrower
/// floats (f32 with round-to-odd, then f16/bf16) give the correctly rounded
/// result. Round-to-odd composes: rounding to odd twice equals rounding once.
fn i128_to_f64_odd(v: i128) -> f64 {
    let mag = v.unsigned_abs();
    let bits = 128 - mag.leading_zeros();
    let f = if bits <= 53 {
        mag as f64
    } else {
        let shift = bits - 53;
        let sticky = (mag & ((1u128 << shift) - 1) != 0) as u128;
        (((mag >> shift) | sticky) as f64) * 2f64.powi(shift as i32)
    };
    if v < 0 {
        -f
    } else {
        f
    }
}

macro_rules! impl_cast_float {
    ($t:ty, |$f:ident| $from_float:expr, |$i:ident| $from_int:expr) => {
        impl CastElem for $t {
            #[inline(always)]
            fn to_repr(self) -> Repr {
                Repr::Float(Element::to_f64(self))
            }
            #[inline(always)]
            fn from_repr(r: Repr) -> Self {
                match r {
                    Repr::Float($f) => $from_float,
                    Repr::Int($i) => $from_int,
                }
            }
        }
    };
}
// Rust's `as` from integers to floats rounds to nearest, ties to even.
impl_cast_float!(f32, |f| f as f32, |i| i as f32);
impl_cast_float!(f64, |f| f, |i| i as f64);
impl_cast_float!(
    half::f16,
    |f| half::f16::from_f32(stitch_core::dtype::f64_to_f32_round_odd(f)),
    |i| { half::f16::from_f32(stitch_core::dtype::f64_to_f32_round_odd(i128_to_f64_odd(i))) }
);
impl_cast_float!(
    half::bf16,
    |f| half::bf16::from_f32(stitch_core::dtype::f64_to_f32_round_odd(f)),
    |i| half::bf16::from_f32(stitch_core::dtype::f64_to_f32_round_odd(i128_to_f64_odd(i)))
);

macro_rules! impl_cast_int {
    ($($t:ty),*) => {$(
        impl CastElem for $t {
            #[inline(always)]
            fn to_repr(self) -> Repr {
                Repr::Int(self as i128)
            }
            #[inline(always)]
            fn from_repr(r: Repr) -> Self {
                match r {
                    // Truncate toward zero, saturate, NaN → 0.
                    Repr::Float(f) => f as $t,
                    // Wrap, like C casts and numpy `astype`.
                    Repr::Int(i) => i as $t,
                }
            }
        }
    )*};
}
impl_cast_int!(i8, i16, i32, i64, u8, u16, u32, u64);

impl CastElem for Bool8 {
    #[inline(always)]
    fn to_repr(self) -> Repr {
        Repr::Int((self.0 != 0) as i128)
    }
    #[inline(always)]
    fn from_repr(r: Repr) -> Self {
        // NaN != 0, so NaN casts to true (as in numpy).
        Bool8(match r {
            Repr::Float(f) => f != 0.0,
            Repr::Int(i) => i != 0,
        } as u8)
    }
}

/// Convert to `to`.
pub fn cast(x: &Tensor, to: DType) -> Result<Tensor> {
    // Same dtype: nothing to convert (bools still normalise their bytes to 0/1).
    if to == x.dtype() && to != DType::Bool {
        return Ok(x.clone());
    }
    let od = x.shape().to_vec();
    stitch_core::dispatch_dtype!(x.dtype(), S => stitch_core::dispatch_dtype!(to, D => {
        map1::<S, D>(x, &od, |v: S| D::from_repr(v.to_repr()))
    }))
}

/// Clamp into `[min, max]`.
///
/// The bounds are first converted to the tensor's dtype (as the decomposition's
/// scalar constants are), then applied as NaN-propagating max/min, so NaN stays NaN.
pub fn clamp(x: &Tensor, min: Option<f64>, max: Option<f64>) -> Result<Tensor> {
    let od = x.shape().to_vec();
    by_kind!(x.dtype(),
        float F => {
            let lo = min.map(|v| F::from_f64(v).load());
            let hi = max.map(|v| F::from_f64(v).load());
            map1::<F, F>(x, &od, |t: F| {
                let mut v = t.load();
                if let Some(lo) = lo {
                    v = max_nan(v, lo);
                }
                if let Some(hi) = hi {
                    v = min_nan(v, hi);
                }
                F::store(v)
            })
        },
        int I => {
            let lo = min.map(I::from_f64);
            let hi = max.map(I::from_f64);
            map1::<I, I>(x, &od, |mut v: I| {
                if let Some(lo) = lo {
                    v = v.max(lo);
                }
                if let Some(hi) = hi {
                    v = v.min(hi);
                }
                v
            })
        },
        bool => Err(Error::invalid("clamp needs a numeric tensor, got bool")),
    )
}
