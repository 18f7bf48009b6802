//! Vectorisable f32 transcendental functions over slices: `exp`, `tanh`,
//! `sigmoid` and `silu`.
//!
//! Scalar libm calls (`expf`, `tanhf`) are opaque to LLVM, so a loop over them
//! runs one element at a time. Here every function is written per element as
//! branch-free arithmetic (range reduction, a polynomial, exponent bit
//! manipulation, and `if`s that are plain selects), which LLVM turns into SIMD
//! code over the whole slice. The same generic body is instantiated three
//! times on x86_64: for AVX-512F, for AVX2+FMA, and for the baseline (SSE2);
//! the widest one the CPU supports is chosen at run time, once. Elsewhere the
//! baseline instantiation runs (with fused multiply-adds where the target has
//! them, e.g. aarch64).
//!
//! Method (all in f32):
//! - `exp(x)`: x = k·ln2 + r with |r| <= ln2/2 (k by the 1.5·2^23 rounding
//!   trick, r by a two-part Cody–Waite ln2), e^r by its degree-7 Taylor
//!   polynomial (truncation error < 6e-9 on that interval, well under half an
//!   f32 ulp), then times 2^k applied as two exact powers of two so that
//!   results in the subnormal range round once and overflow gives inf.
//! - `tanh(x)`: with u = expm1(-2|x|) in (-1, 0], tanh|x| = -u / (2 + u),
//!   which has no cancellation anywhere (expm1 comes from the same reduction,
//!   as 2^k·expm1(r) + (2^k - 1)); the sign is copied from x, so -0.0 stays
//!   -0.0, and |x| >= 10 gives exactly ±1 (u rounds to -1).
//! - `sigmoid(x)`: with e = e^-|x| = p·2^k, 1/(1+e) for x >= 0 and
//!   (p/(1+e))·2^k for x < 0, one rounded division either way, so small
//!   results (down to subnormals) keep full relative accuracy.
//! - `silu(x) = x·sigmoid(x)`, computed as (x/(1+e)) or (x·p/(1+e))·2^k.
//!
//! NaN inputs give NaN (every clamp is a comparison that is false for NaN).
//! Measured maximum relative errors against f64 references are in the tests:
//! about 1.2e-7 for exp and under 3e-7 for the others.

use std::sync::atomic::{AtomicU8, Ordering};

/// `exp(x)` for each element of `src`, into `dst`.
///
/// # Panics
/// If `src` and `dst` have different lengths.
pub fn exp_f32(src: &[f32], dst: &mut [f32]) {
    dispatch::<Exp>(src, dst)
}

/// `tanh(x)` for each element of `src`, into `dst`.
///
/// # Panics
/// If `src` and `dst` have different lengths.
pub fn tanh_f32(src: &[f32], dst: &mut [f32]) {
    dispatch::<Tanh>(src, dst)
}

/// `1 / (1 + exp(-x))` for each element of `src`, into `dst`.
///
/// # Panics
/// If `src` and `dst` have different lengths.
pub fn sigmoid_f32(src: &[f32], dst: &mut [f32]) {
    dispatch::<Sigmoid>(src, dst)
}

/// `erf(x)` for each element of `src`, into `dst` (relative error about 1e-7).
///
/// # Panics
/// If `src` and `dst` have different lengths.
pub fn erf_f32(src: &[f32], dst: &mut [f32]) {
    dispatch::<Erf>(src, dst)
}

/// `x/2 · (1 + erf(x/√2))` (exact GELU) for each element of `src`, into `dst`.
///
/// # Panics
/// If `src` and `dst` have different lengths.
pub fn gelu_f32(src: &[f32], dst: &mut [f32]) {
    dispatch::<Gelu>(src, dst)
}

/// `x * sigmoid(x)` for each element of `src`, into `dst`.
///
/// # Panics
/// If `src` and `dst` have different lengths.
pub fn silu_f32(src: &[f32], dst: &mut [f32]) {
    dispatch::<Silu>(src, dst)
}

// ---------------------------------------------------------------------------
// Per-element bodies.

/// Multiply-add `a·b + c`: one fused instruction where the instantiation has
/// FMA hardware; two rounded operations where it has not (a libm `fmaf` call
/// would be exact but slow and would stop vectorisation).
trait MulAdd {
    fn mul_add(a: f32, b: f32, c: f32) -> f32;
}

struct Fused;
impl MulAdd for Fused {
    #[inline(always)]
    fn mul_add(a: f32, b: f32, c: f32) -> f32 {
        a.mul_add(b, c)
    }
}

struct Separate;
impl MulAdd for Separate {
    #[inline(always)]
    fn mul_add(a: f32, b: f32, c: f32) -> f32 {
        a * b + c
    }
}

/// The multiply-add of the baseline instantiation.
#[cfg(any(target_arch = "aarch64", target_feature = "fma"))]
type Baseline = Fused;
#[cfg(not(any(target_arch = "aarch64", target_feature = "fma")))]
type Baseline = Separate;

/// One function, element by element; `M` decides how multiply-adds are done.
trait Kernel {
    fn lane<M: MulAdd>(x: f32) -> f32;
}

/// 1.5·2^23: adding it to |v| < 2^22 rounds v to an integer that sits in the
/// low mantissa bits of the sum.
const ROUNDER: f32 = 12_582_912.0;
/// ln 2 with 9 significant bits, so that k·LN2_HI is exact for |k| < 2^15.
#[allow(clippy::excessive_precision)] // exactly representable: 355 / 512
const LN2_HI: f32 = 0.693_359_375;
/// The rest of ln 2.
const LN2_LO: f32 = (std::f64::consts::LN_2 - 0.693_359_375) as f32;
/// Arguments of e^x are clamped to [EXP_LO, EXP_HI]: e^89 overflows f32 and
/// e^-126·126 (the largest silu term) underflows to 0, so clamping changes no
/// result, and it keeps k within [-182, 129], where two halves of 2^k are normal.
const EXP_HI: f32 = 89.0;
const EXP_LO: f32 = -126.0;

/// `x` clamped to [lo, hi]; NaN stays NaN (both comparisons are false).
#[inline(always)]
fn clamp(x: f32, lo: f32, hi: f32) -> f32 {
    let x = if x > hi { hi } else { x };
    if x < lo {
        lo
    } else {
        x
    }
}

/// Splits `x` (|x| < 2^21) into `(r, k)` with x = k·ln2 + r, |r| <= ln2/2 + tiny.
#[inline(always)]
fn reduce<M: MulAdd>(x: f32) -> (f32, i32) {
    let kr = M::mul_add(x, std::f32::consts::LOG2_E, ROUNDER);
    let k = kr - ROUNDER;
    // Both are in [2^23, 2^24), where consecutive floats differ by 1, so the
    // difference of their bit patterns is the integer k.
    let ki = (kr.to_bits() as i32).wrapping_sub(ROUNDER.to_bits() as i32);
    let r = M::mul_add(-k, LN2_HI, x);
    let r = M::mul_add(-k, LN2_LO, r);
    (r, ki)
}

/// e^r - 1 for |r| <= 0.35: Taylor polynomial to degree 7, evaluated so that
/// the leading term r is added last (full relative accuracy near 0).
#[inline(always)]
fn expm1_poly<M: MulAdd>(r: f32) -> f32 {
    let q = M::mul_add(r, 1.0 / 5040.0, 1.0 / 720.0);
    let q = M::mul_add(q, r, 1.0 / 120.0);
    let q = M::mul_add(q, r, 1.0 / 24.0);
    let q = M::mul_add(q, r, 1.0 / 6.0);
    let q = M::mul_add(q, r, 0.5);
    M::mul_add(r * r, q, r)
}

/// 2^k for k in [-126, 127] (built from its bits).
#[inline(always)]
fn pow2i(k: i32) -> f32 {
    f32::from_bits((k.wrapping_add(127) as u32) << 23)
}

/// v·2^k for k in [-252, 254]: two exact scalings, so only the last one rounds
/// (into the subnormal range) or overflows.
#[inline(always)]
fn ldexp(v: f32, k: i32) -> f32 {
    let half = k >> 1;
    v * pow2i(half) * pow2i(k - half)
}

/// e^x as (p, k) with e^x = p·2^k, p in [0.7, 1.42], for x in [EXP_LO, EXP_HI].
#[inline(always)]
fn exp_parts<M: MulAdd>(x: f32) -> (f32, i32) {
    let (r, k) = reduce::<M>(x);
    (expm1_poly::<M>(r) + 1.0, k)
}

struct Exp;
impl Kernel for Exp {
    #[inline(always)]
    fn lane<M: MulAdd>(x: f32) -> f32 {
        let (p, k) = exp_parts::<M>(clamp(x, EXP_LO, EXP_HI));
        ldexp(p, k)
    }
}

struct Tanh;
impl Kernel for Tanh {
    #[inline(always)]
    fn lane<M: MulAdd>(x: f32) -> f32 {
        // tanh(10) rounds to 1 in f32 (so does everything from about 9.01 on).
        let a = x.abs();
        let a = if a > 10.0 { 10.0 } else { a };
        // u = expm1(-2a) = 2^k·expm1(r) + (2^k - 1), with k in [-29, 0].
        let (r, k) = reduce::<M>(-2.0 * a);
        let s = pow2i(k);
        let u = M::mul_add(s, expm1_poly::<M>(r), s - 1.0);
        (-u / (2.0 + u)).copysign(x)
    }
}

struct Sigmoid;
impl Kernel for Sigmoid {
    #[inline(always)]
    fn lane<M: MulAdd>(x: f32) -> f32 {
        let (p, k) = exp_parts::<M>(clamp(-x.abs(), EXP_LO, EXP_HI));
        let d = 1.0 + ldexp(p, k);
        // x >= 0: 1/(1+e); x < 0: e/(1+e) = (p/(1+e))·2^k, scaled last.
        let neg = x < 0.0;
        let num = if neg { p } else { 1.0 };
        let k = if neg { k } else { 0 };
        ldexp(num / d, k)
    }
}

struct Silu;
impl Kernel for Silu {
    #[inline(always)]
    fn lane<M: MulAdd>(x: f32) -> f32 {
        // silu(x) rounds to -0.0 below about -110.6; clamping keeps -inf from
        // making inf·0 = NaN.
        let x = if x < EXP_LO { EXP_LO } else { x };
        let (p, k) = exp_parts::<M>(clamp(-x.abs(), EXP_LO, EXP_HI));
        let d = 1.0 + ldexp(p, k);
        let neg = x < 0.0;
        let num = if neg { x * p } else { x };
        let k = if neg { k } else { 0 };
        ldexp(num / d, k)
    }
}

/// erf(x) as x·P(x²)/Q(x²) on [-4, 4] (the rational minimax form used by
/// XLA and Eigen for f32; |erf(x)| rounds to 1 beyond 4). Relative error about
/// 6.5e-8 in exact arithmetic, a few f32 ulps as evaluated; NaN stays NaN.
#[inline(always)]
#[allow(clippy::excessive_precision)] // the published coefficients, rounded by the compiler
fn erf_lane<M: MulAdd>(x: f32) -> f32 {
    let x = clamp(x, -4.0, 4.0);
    let x2 = x * x;
    let p = M::mul_add(x2, -2.726_142_2e-10, 2.770_681_4e-8);
    let p = M::mul_add(p, x2, -2.101_024e-6);
    let p = M::mul_add(p, x2, -5.692_506_4e-5);
    let p = M::mul_add(p, x2, -7.349_906_3e-4);
    let p = M::mul_add(p, x2, -2.954_600_1e-3);
    let p = M::mul_add(p, x2, -1.609_603_3e-2);
    let q = M::mul_add(x2, -1.456_607_2e-5, -2.133_740_6e-4);
    let q = M::mul_add(q, x2, -1.682_827e-3);
    let q = M::mul_add(q, x2, -7.373_329e-3);
    let q = M::mul_add(q, x2, -1.426_474e-2);
    x * (p / q)
}

struct Erf;
impl Kernel for Erf {
    #[inline(always)]
    fn lane<M: MulAdd>(x: f32) -> f32 {
        erf_lane::<M>(x)
    }
}

struct Gelu;
impl Kernel for Gelu {
    #[inline(always)]
    fn lane<M: MulAdd>(x: f32) -> f32 {
        0.5 * x * (1.0 + erf_lane::<M>(x * std::f32::consts::FRAC_1_SQRT_2))
    }
}

// ---------------------------------------------------------------------------
// Slice loops and dispatch.

/// The loop every instantiation shares; LLVM vectorises it for the target
/// features of the function it is inlined into.
#[inline(always)]
fn map<K: Kernel, M: MulAdd>(src: &[f32], dst: &mut [f32]) {
    for (d, &x) in dst.iter_mut().zip(src) {
        *d = K::lane::<M>(x);
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Level {
    Baseline = 1,
    Avx2 = 2,
    Avx512 = 3,
}

/// The chosen level, 0 until first detected.
static LEVEL: AtomicU8 = AtomicU8::new(0);

pub(super) fn level() -> Level {
    match LEVEL.load(Ordering::Relaxed) {
        1 => Level::Baseline,
        2 => Level::Avx2,
        3 => Level::Avx512,
        _ => {
            let l = detect();
            LEVEL.store(l as u8, Ordering::Relaxed);
            l
        }
    }
}

/// The widest instantiation this CPU runs.
fn detect() -> Level {
    #[cfg(target_arch = "x86_64")]
    {
        let avx2 = is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma");
        if avx2 && is_x86_feature_detected!("avx512f") {
            return Level::Avx512;
        }
        if avx2 {
            return Level::Avx2;
        }
    }
    Level::Baseline
}

fn dispatch<K: Kernel>(src: &[f32], dst: &mut [f32]) {
    assert_eq!(src.len(), dst.len(), "simd_math: source and destination lengths differ");
    run::<K>(level(), src, dst)
}

/// Runs `K` with the instantiation of `level`, which must be supported by the CPU.
fn run<K: Kernel>(level: Level, src: &[f32], dst: &mut [f32]) {
    match level {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: `Avx512` is only chosen (by `detect`, or by tests that check
        // it first) when the CPU has AVX-512F, AVX2 and FMA.
        Level::Avx512 => unsafe { x86::avx512::<K>(src, dst) },
        #[cfg(target_arch = "x86_64")]
        // SAFETY: `Avx2` is only chosen when the CPU has AVX2 and FMA.
        Level::Avx2 => unsafe { x86::avx2::<K>(src, dst) },
        _ => map::<K, Baseline>(src, dst),
    }
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use super::{map, Fused, Kernel};

    /// # Safety
    /// The CPU must support AVX-512F, AVX2 and FMA.
    #[target_feature(enable = "avx512f,avx2,fma")]
    pub(super) unsafe fn avx512<K: Kernel>(src: &[f32], dst: &mut [f32]) {
        map::<K, Fused>(src, dst)
    }

    /// # Safety
    /// The CPU must support AVX2 and FMA.
    #[target_feature(enable = "avx2,fma")]
    pub(super) unsafe fn avx2<K: Kernel>(src: &[f32], dst: &mut [f32]) {
        map::<K, Fused>(src, dst)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{Rng, SeedableRng};
    use rand_chacha::ChaCha8Rng;

    /// Every instantiation this CPU can run.
    fn levels() -> Vec<Level> {
        let mut l = vec![Level::Baseline];
        #[cfg(target_arch = "x86_64")]
        {
            let avx2 = is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma");
            if avx2 {
                l.push(Level::Avx2);
            }
            if avx2 && is_x86_feature_detected!("avx512f") {
                l.push(Level::Avx512);
            }
        }
        l
    }

    /// A dense seeded sweep: random bit patterns (every exponent, NaNs and
    /// infinities included), uniform values over the interesting range, small
    /// magnitudes on a log scale, and special values.
    fn sweep() -> Vec<f32> {
        let mut rng = ChaCha8Rng::seed_from_u64(0x5717C4);
        let mut xs: Vec<f32> = Vec::new();
        xs.extend((0..1 << 19).map(|_| f32::from_bits(rng.gen::<u32>())));
        xs.extend((0..1 << 19).map(|_| rng.gen_range(-130.0f32..130.0)));
        xs.extend((0..1 << 18).map(|_| rng.gen_range(-12.0f32..12.0)));
        xs.extend((0..1 << 17).map(|_| {
            let m = 10f32.powf(rng.gen_range(-45.0f32..0.0));
            if rng.gen::<bool>() {
                m
            } else {
                -m
            }
        }));
        xs.extend(specials());
        xs
    }

    fn specials() -> Vec<f32> {
        let mut v = vec![
            0.0,
            -0.0,
            f32::INFINITY,
            f32::NEG_INFINITY,
            f32::NAN,
            -f32::NAN,
            f32::MAX,
            f32::MIN,
            f32::MIN_POSITIVE,
            -f32::MIN_POSITIVE,
            f32::from_bits(1),
            -f32::from_bits(1),
            f32::EPSILON,
            88.72,
            88.7228,
            88.72284,
            88.8,
            -87.33,
            -87.34,
            -103.9,
            -103.98,
            -104.0,
            -110.0,
            -111.0,
            9.0,
            9.01,
            9.1,
            10.0,
            10.5,
            -9.1,
            1e-4,
            0.5,
            0.3466,
            0.3467,
            -0.3466,
            -0.3467,
        ];
        v.extend((-40..=40).map(|i| i as f32 * 0.5));
        v
    }

    /// Runs `K` at `level` on `xs` and checks every result against `reference`
    /// (in f64): NaN where it is NaN, the same infinity where it rounds to
    /// one, within `tol` relative error plus one subnormal step where it is
    /// subnormal, and within `tol`
    /// relative error elsewhere. Returns the worst relative error seen.
    fn check<K: Kernel>(name: &str, level: Level, xs: &[f32], reference: fn(f64) -> f64, tol: f64) -> f64 {
        let mut got = vec![0.0f32; xs.len()];
        run::<K>(level, xs, &mut got);
        let mut worst = (0.0f64, 0.0f32);
        for (&x, &g) in xs.iter().zip(&got) {
            let r = reference(x as f64);
            if r.is_nan() {
                assert!(g.is_nan(), "{name}({x:e}) = {g:e} at {level:?}, expected NaN");
                continue;
            }
            let r32 = r as f32;
            if r32.is_infinite() {
                assert_eq!(g, r32, "{name}({x:e}) at {level:?}");
                continue;
            }
            if r.abs() < f32::MIN_POSITIVE as f64 {
                // Subnormal results have fewer bits: allow one subnormal step
                // (2^-149) on top of the relative tolerance.
                let err = (g as f64 - r).abs();
                assert!(
                    err <= f32::from_bits(1) as f64 + tol * r.abs(),
                    "{name}({x:e}) = {g:e} at {level:?}, expected {r:e} (error {err:e} in the subnormal range)"
                );
                continue;
            }
            let rel = ((g as f64 - r) / r).abs();
            if rel > worst.0 || rel.is_nan() {
                worst = (rel, x);
            }
        }
        assert!(
            worst.0 <= tol,
            "{name} at {level:?}: max relative error {:e} at x = {:e} (bits {:#x}) exceeds {tol:e}",
            worst.0,
            worst.1,
            worst.1.to_bits()
        );
        eprintln!("{name} at {level:?}: max relative error {:.3e}", worst.0);
        worst.0
    }

    fn sigmoid_ref(x: f64) -> f64 {
        if x >= 0.0 {
            1.0 / (1.0 + (-x).exp())
        } else {
            let e = x.exp();
            e / (1.0 + e)
        }
    }

    fn silu_ref(x: f64) -> f64 {
        if x == f64::NEG_INFINITY {
            -0.0
        } else {
            x * sigmoid_ref(x)
        }
    }

    #[test]
    fn exp_is_within_2e7_relative_of_f64_over_the_f32_range() {
        let xs = sweep();
        for l in levels() {
            check::<Exp>("exp", l, &xs, f64::exp, 2e-7);
        }
    }

    #[test]
    fn tanh_is_within_5e7_relative_of_f64_over_the_f32_range() {
        let xs = sweep();
        for l in levels() {
            check::<Tanh>("tanh", l, &xs, f64::tanh, 5e-7);
        }
    }

    #[test]
    fn sigmoid_is_within_5e7_relative_of_f64_over_the_f32_range() {
        let xs = sweep();
        for l in levels() {
            check::<Sigmoid>("sigmoid", l, &xs, sigmoid_ref, 5e-7);
        }
    }

    #[test]
    fn silu_is_within_5e7_relative_of_f64_over_the_f32_range() {
        let xs = sweep();
        for l in levels() {
            check::<Silu>("silu", l, &xs, silu_ref, 5e-7);
        }
    }

    #[test]
    fn erf_is_within_5e7_relative_of_f64_over_the_f32_range() {
        let xs = sweep();
        for l in levels() {
            check::<Erf>("erf", l, &xs, libm::erf, 5e-7);
        }
    }

    #[test]
    fn gelu_matches_f64_to_f32_rounding_of_its_terms() {
        // 1 + erf(x/√2) cancels for very negative x in any f32 evaluation, so
        // the bound is absolute in |x|: |got - ref| <= 3e-7·max(|x|, 1).
        let xs: Vec<f32> = sweep().into_iter().filter(|x| x.abs() < 1e6).collect();
        for l in levels() {
            let mut got = vec![0.0f32; xs.len()];
            run::<Gelu>(l, &xs, &mut got);
            for (&x, &g) in xs.iter().zip(&got) {
                let xd = x as f64;
                let r = 0.5 * xd * (1.0 + libm::erf(xd * std::f64::consts::FRAC_1_SQRT_2));
                if r.is_nan() {
                    assert!(g.is_nan());
                    continue;
                }
                let err = (g as f64 - r).abs();
                assert!(
                    err <= 3e-7 * xd.abs().max(1.0),
                    "gelu({x:e}) = {g:e}, expected {r:e} at {l:?}"
                );
            }
        }
    }

    #[test]
    fn special_values_follow_the_limits_exactly() {
        let inf = f32::INFINITY;
        for l in levels() {
            let eval = |f: fn(Level, &[f32], &mut [f32]), x: f32| {
                let mut out = [0.0f32];
                f(l, &[x], &mut out);
                out[0]
            };
            let exp: fn(Level, &[f32], &mut [f32]) = run::<Exp>;
            let tanh: fn(Level, &[f32], &mut [f32]) = run::<Tanh>;
            let sigmoid: fn(Level, &[f32], &mut [f32]) = run::<Sigmoid>;
            let silu: fn(Level, &[f32], &mut [f32]) = run::<Silu>;
            // exp: exact at 0, overflow to inf, underflow to +0, NaN through.
            assert_eq!(eval(exp, 0.0), 1.0);
            assert_eq!(eval(exp, -0.0), 1.0);
            assert_eq!(eval(exp, 88.73), inf);
            assert_eq!(eval(exp, inf), inf);
            assert_eq!(eval(exp, f32::MAX), inf);
            assert_eq!(eval(exp, -inf).to_bits(), 0);
            assert_eq!(eval(exp, -104.0).to_bits(), 0);
            assert!(eval(exp, -103.0) > 0.0, "e^-103 is a positive subnormal");
            assert!(eval(exp, f32::NAN).is_nan());
            // tanh: odd (keeps -0.0), saturates to exactly ±1.
            assert_eq!(eval(tanh, 0.0).to_bits(), 0.0f32.to_bits());
            assert_eq!(eval(tanh, -0.0).to_bits(), (-0.0f32).to_bits());
            assert_eq!(eval(tanh, f32::from_bits(1)), f32::from_bits(1));
            for x in [9.1f32, 10.0, 20.0, 1e30, f32::MAX, inf] {
                assert_eq!(eval(tanh, x), 1.0, "tanh({x})");
                assert_eq!(eval(tanh, -x), -1.0, "tanh({})", -x);
            }
            assert!(eval(tanh, f32::NAN).is_nan());
            // sigmoid: exact 0.5 at ±0, limits 1 and +0.
            assert_eq!(eval(sigmoid, 0.0), 0.5);
            assert_eq!(eval(sigmoid, -0.0), 0.5);
            assert_eq!(eval(sigmoid, inf), 1.0);
            assert_eq!(eval(sigmoid, 20.0), 1.0);
            assert_eq!(eval(sigmoid, -inf).to_bits(), 0);
            assert!(eval(sigmoid, -100.0) > 0.0, "sigmoid(-100) is a positive subnormal");
            assert!(eval(sigmoid, f32::NAN).is_nan());
            // silu: 0 at 0, x for large x, -0.0 for very negative x.
            assert_eq!(eval(silu, 0.0), 0.0);
            assert_eq!(eval(silu, inf), inf);
            assert_eq!(eval(silu, 50.0), 50.0);
            assert_eq!(eval(silu, -inf).to_bits(), (-0.0f32).to_bits());
            assert_eq!(eval(silu, -200.0).to_bits(), (-0.0f32).to_bits());
            assert!(eval(silu, f32::NAN).is_nan());
        }
    }

    #[test]
    fn every_length_matches_element_by_element_evaluation() {
        // Vector bodies and remainder loops must agree for every length and
        // alignment (the slices start at every offset of a larger buffer).
        let mut rng = ChaCha8Rng::seed_from_u64(7);
        let xs: Vec<f32> = (0..100).map(|_| rng.gen_range(-20.0f32..20.0)).collect();
        for l in levels() {
            for (name, f) in [
                ("exp", run::<Exp> as fn(Level, &[f32], &mut [f32])),
                ("tanh", run::<Tanh>),
                ("sigmoid", run::<Sigmoid>),
                ("silu", run::<Silu>),
            ] {
                let mut single = vec![0.0f32; xs.len()];
                for (x, s) in xs.iter().zip(single.iter_mut()) {
                    f(l, std::slice::from_ref(x), std::slice::from_mut(s));
                }
                for start in 0..17 {
                    for len in 0..xs.len() - start {
                        let mut out = vec![f32::NAN; len];
                        f(l, &xs[start..start + len], &mut out);
                        assert_eq!(
                            out.iter().map(|v| v.to_bits()).collect::<Vec<_>>(),
                            single[start..start + len]
                                .iter()
                                .map(|v| v.to_bits())
                                .collect::<Vec<_>>(),
                            "{name} at {l:?}, start {start}, length {len}"
                        );
                    }
                }
            }
        }
    }

    #[test]
    #[allow(clippy::type_complexity)]
    fn public_functions_use_a_supported_level_and_match_it() {
        let xs: Vec<f32> = (-300..300).map(|i| i as f32 * 0.37).collect();
        let best = *levels().last().expect("the baseline level always exists");
        assert_eq!(level(), best);
        let public: [(fn(&[f32], &mut [f32]), fn(Level, &[f32], &mut [f32])); 4] = [
            (exp_f32, run::<Exp>),
            (tanh_f32, run::<Tanh>),
            (sigmoid_f32, run::<Sigmoid>),
            (silu_f32, run::<Silu>),
        ];
        for (f, at_level) in public {
            let (mut a, mut b) = (vec![0.0f32; xs.len()], vec![0.0f32; xs.len()]);
            f(&xs, &mut a);
            at_level(best, &xs, &mut b);
            assert_eq!(a, b);
        }
    }

    #[test]
    #[should_panic(expected = "lengths differ")]
    fn mismatched_lengths_panic() {
        exp_f32(&[1.0, 2.0], &mut [0.0]);
    }
}
