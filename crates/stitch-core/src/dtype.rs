//! Element types.
//!
//! `DType` names the logical element type of a tensor. Packed quantized formats
//! are a *storage kind* (see ARCHITECTURE.md), not a dtype, so they will live
//! beside this enum rather than in it; complex types will be added here.

use std::fmt;

/// The element type of a tensor.
///
/// ```
/// use stitch_core::DType;
/// assert_eq!(DType::BF16.size_in_bytes(), 2);
/// assert!(DType::F16.is_float());
/// assert!(DType::I8.is_signed_int());
/// assert_eq!("f32".parse::<DType>().unwrap(), DType::F32);
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum DType {
    F32,
    F64,
    F16,
    BF16,
    I8,
    U8,
    I16,
    U16,
    I32,
    U32,
    I64,
    U64,
    /// One byte per element, 0 or 1.
    Bool,
}

impl DType {
    /// Every dtype, in a stable order.
    pub const ALL: [DType; 13] = [
        DType::F32,
        DType::F64,
        DType::F16,
        DType::BF16,
        DType::I8,
        DType::U8,
        DType::I16,
        DType::U16,
        DType::I32,
        DType::U32,
        DType::I64,
        DType::U64,
        DType::Bool,
    ];

    /// Bytes per element.
    pub fn size_in_bytes(self) -> usize {
        match self {
            DType::F64 | DType::I64 | DType::U64 => 8,
            DType::F32 | DType::I32 | DType::U32 => 4,
            DType::F16 | DType::BF16 | DType::I16 | DType::U16 => 2,
            DType::I8 | DType::U8 | DType::Bool => 1,
        }
    }

    /// True for the floating-point types.
    pub fn is_float(self) -> bool {
        matches!(self, DType::F32 | DType::F64 | DType::F16 | DType::BF16)
    }

    /// True for signed and unsigned integer types (not bool).
    pub fn is_int(self) -> bool {
        self.is_signed_int() || self.is_unsigned_int()
    }

    /// True for i8, i16, i32, i64.
    pub fn is_signed_int(self) -> bool {
        matches!(self, DType::I8 | DType::I16 | DType::I32 | DType::I64)
    }

    /// True for u8, u16, u32, u64.
    pub fn is_unsigned_int(self) -> bool {
        matches!(self, DType::U8 | DType::U16 | DType::U32 | DType::U64)
    }

    /// True for numeric types (everything but bool).
    pub fn is_numeric(self) -> bool {
        self != DType::Bool
    }

    /// Short lowercase name: `f32`, `bf16`, `bool`, ...
    pub fn name(self) -> &'static str {
        match self {
            DType::F32 => "f32",
            DType::F64 => "f64",
            DType::F16 => "f16",
            DType::BF16 => "bf16",
            DType::I8 => "i8",
            DType::U8 => "u8",
            DType::I16 => "i16",
            DType::U16 => "u16",
            DType::I32 => "i32",
            DType::U32 => "u32",
            DType::I64 => "i64",
            DType::U64 => "u64",
            DType::Bool => "bool",
        }
    }
}

impl fmt::Display for DType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl std::str::FromStr for DType {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        DType::ALL.iter().copied().find(|d| d.name() == s).ok_or_else(|| {
            format!(
                "unknown dtype `{s}` (expected one of f32, f64, f16, bf16, i8, u8, i16, u16, i32, u32, i64, u64, bool)"
            )
        })
    }
}

/// A Rust type that is the storage of a [`DType`].
///
/// Implemented for `f32, f64, half::f16, half::bf16, i8, u8, i16, u16, i32, u32, i64, u64`
/// and [`Bool8`] (stitch's one-byte bool).
pub trait Element: bytemuck::Pod + Send + Sync + PartialEq + fmt::Debug + 'static {
    /// The dtype this Rust type stores.
    const DTYPE: DType;
    /// Lossy conversion to f64 (bool → 0/1).
    fn to_f64(self) -> f64;
    /// Conversion from f64: floats round to nearest, integers truncate toward zero and saturate (NaN → 0), bool is `v != 0`.
    fn from_f64(v: f64) -> Self;
}

/// stitch's bool element: one byte, 0 = false, anything else = true.
#[repr(transparent)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, bytemuck::Pod, bytemuck::Zeroable)]
pub struct Bool8(pub u8);

/// Float → integer conversion used everywhere in stitch (`from_f64` of the integer
/// types): truncation toward zero, NaN → 0, values outside the range saturate to
/// the type's min/max. ONNX leaves out-of-range float→int casts undefined; stitch
/// saturates (the same as Rust's `as`), as docs/DESIGN-NOTES.md records.
macro_rules! impl_element_int {
    ($($t:ty => $d:ident),*) => {$(
        impl Element for $t {
            const DTYPE: DType = DType::$d;
            #[inline]
            fn to_f64(self) -> f64 { self as f64 }
            #[inline]
            fn from_f64(v: f64) -> Self { v as $t }
        }
    )*};
}

impl_element_int!(i8 => I8, u8 => U8, i16 => I16, u16 => U16, i32 => I32, u32 => U32, i64 => I64, u64 => U64);

impl Element for f32 {
    const DTYPE: DType = DType::F32;
    #[inline]
    fn to_f64(self) -> f64 {
        self as f64
    }
    #[inline]
    fn from_f64(v: f64) -> Self {
        v as f32
    }
}
impl Element for f64 {
    const DTYPE: DType = DType::F64;
    #[inline]
    fn to_f64(self) -> f64 {
        self
    }
    #[inline]
    fn from_f64(v: f64) -> Self {
        v
    }
}
/// f64 → f32 rounding to odd: the result is the f32 toward zero with its last
/// bit set when inexact. Rounding that value again to a narrower float (f16,
/// bf16) gives the correctly rounded result, with no double-rounding error.
#[inline]
pub fn f64_to_f32_round_odd(v: f64) -> f32 {
    let f = v as f32;
    if v.is_nan() || f as f64 == v {
        return f;
    }
    let toward_zero = if (f as f64).abs() > v.abs() {
        f32::from_bits(f.to_bits() - 1)
    } else {
        f
    };
    f32::from_bits(toward_zero.to_bits() | 1)
}

impl Element for half::f16 {
    const DTYPE: DType = DType::F16;
    #[inline]
    fn to_f64(self) -> f64 {
        self.to_f64()
    }
    #[inline]
    fn from_f64(v: f64) -> Self {
        half::f16::from_f32(f64_to_f32_round_odd(v))
    }
}
impl Element for half::bf16 {
    const DTYPE: DType = DType::BF16;
    #[inline]
    fn to_f64(self) -> f64 {
        self.to_f64()
    }
    #[inline]
    fn from_f64(v: f64) -> Self {
        half::bf16::from_f32(f64_to_f32_round_odd(v))
    }
}
impl Element for Bool8 {
    const DTYPE: DType = DType::Bool;
    #[inline]
    fn to_f64(self) -> f64 {
        if self.0 != 0 {
            1.0
        } else {
            0.0
        }
    }
    #[inline]
    fn from_f64(v: f64) -> Self {
        Bool8((v != 0.0) as u8)
    }
}

/// Calls `$body` with the type alias `$T` bound to the Rust element type of `$dtype`.
///
/// ```
/// use stitch_core::{dispatch_dtype, DType, Element};
/// fn size(d: DType) -> usize { dispatch_dtype!(d, T => std::mem::size_of::<T>()) }
/// assert_eq!(size(DType::F16), 2);
/// ```
#[macro_export]
macro_rules! dispatch_dtype {
    ($dtype:expr, $T:ident => $body:expr) => {
        match $dtype {
            $crate::DType::F32 => {
                type $T = f32;
                $body
            }
            $crate::DType::F64 => {
                type $T = f64;
                $body
            }
            $crate::DType::F16 => {
                type $T = $crate::half::f16;
                $body
            }
            $crate::DType::BF16 => {
                type $T = $crate::half::bf16;
                $body
            }
            $crate::DType::I8 => {
                type $T = i8;
                $body
            }
            $crate::DType::U8 => {
                type $T = u8;
                $body
            }
            $crate::DType::I16 => {
                type $T = i16;
                $body
            }
            $crate::DType::U16 => {
                type $T = u16;
                $body
            }
            $crate::DType::I32 => {
                type $T = i32;
                $body
            }
            $crate::DType::U32 => {
                type $T = u32;
                $body
            }
            $crate::DType::I64 => {
                type $T = i64;
                $body
            }
            $crate::DType::U64 => {
                type $T = u64;
                $body
            }
            $crate::DType::Bool => {
                type $T = $crate::Bool8;
                $body
            }
        }
    };
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn float_to_int_casts_saturate_and_map_nan_to_zero() {
        assert_eq!(i8::from_f64(300.0), 127);
        assert_eq!(i8::from_f64(-300.0), -128);
        assert_eq!(u8::from_f64(-1.5), 0);
        assert_eq!(i32::from_f64(f64::NAN), 0);
        assert_eq!(i32::from_f64(-2.7), -2);
    }

    #[test]
    fn half_conversions_from_f64_round_correctly_just_above_a_tie() {
        // 1 + 2^-11 is the f16 midpoint between 1 and 1 + 2^-10; a hair above must round up.
        let v = 1.0 + 2f64.powi(-11) + 2f64.powi(-40);
        assert_eq!(<half::f16 as Element>::from_f64(v).to_f64(), 1.0 + 2f64.powi(-10));
        assert_ne!(
            half::f16::from_f64(v).to_f64(),
            1.0 + 2f64.powi(-10),
            "half's own conversion double-rounds"
        );
        let w = 1.0 + 2f64.powi(-8) + 2f64.powi(-40);
        assert_eq!(<half::bf16 as Element>::from_f64(w).to_f64(), 1.0 + 2f64.powi(-7));
        // Exact ties still go to even.
        assert_eq!(<half::f16 as Element>::from_f64(1.0 + 2f64.powi(-11)).to_f64(), 1.0);
    }

    #[test]
    fn dtype_names_round_trip() {
        for d in DType::ALL {
            assert_eq!(d.name().parse::<DType>().unwrap(), d);
        }
        assert!("f8".parse::<DType>().is_err());
    }
}
