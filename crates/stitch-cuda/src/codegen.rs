//! Fused regions printed as CUDA C.
//!
//! A [`Region`] (see `stitch_core::ops::fused`) becomes one kernel. Shapes and
//! strides are not baked into the source: they travel in a [`Meta`] argument,
//! so one compiled kernel serves every shape and layout of the same region and
//! dtypes (strided views, broadcasts and transposes cost nothing extra).
//!
//! * Without a reduction, each thread computes one element of the iteration
//!   shape (grid-stride loop), evaluating the expression DAG in registers.
//! * With a trailing reduction, the iteration axes are ordered kept-first,
//!   reduced-last; one warp computes one output element, its lanes striding
//!   over the reduced elements and combining with shuffles. Float sums
//!   accumulate in double, as the CPU backend does.

use std::fmt::Write as _;

use stitch_core::ops::fused::{Expr, Region};
use stitch_core::ops::reduce::ReduceOp;
use stitch_core::ops::{BinaryOp, UnaryOp};
use stitch_core::DType;

/// Most axes a kernel handles.
pub const MAX_RANK: usize = 8;
/// Most operands (inputs plus outputs) a kernel takes.
pub const MAX_OPERANDS: usize = 16;

/// The shape and per-operand strides (in elements) of one launch.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct Meta {
    /// Elements (or output elements for a reduction) to compute.
    pub n: i64,
    /// Reduced elements per output (1 without a reduction).
    pub nred: i64,
    /// Axes in `dims`.
    pub rank: i32,
    /// Leading axes of `dims` that are kept (the rest are reduced).
    pub kept: i32,
    /// Iteration shape.
    pub dims: [i64; MAX_RANK],
    /// Strides of each operand (inputs, then outputs) along `dims`.
    pub strides: [[i64; MAX_RANK]; MAX_OPERANDS],
}

// SAFETY: `Meta` is `repr(C)`, plain integers, and matches the `Meta` struct the
// generated source declares, so it can be passed by value as a kernel parameter.
unsafe impl cudarc::driver::DeviceRepr for Meta {}

impl Default for Meta {
    fn default() -> Meta {
        Meta {
            n: 0,
            nred: 1,
            rank: 0,
            kept: 0,
            dims: [1; MAX_RANK],
            strides: [[0; MAX_RANK]; MAX_OPERANDS],
        }
    }
}

/// The CUDA C type of a dtype, if kernels handle it.
pub fn c_type(d: DType) -> Option<&'static str> {
    Some(match d {
        DType::F32 => "float",
        DType::F64 => "double",
        DType::I8 => "signed char",
        DType::U8 | DType::Bool => "unsigned char",
        DType::I16 => "short",
        DType::U16 => "unsigned short",
        DType::I32 => "int",
        DType::U32 => "unsigned int",
        DType::I64 => "long long",
        DType::U64 => "unsigned long long",
        // Stored as raw 16-bit patterns, computed in float (see `compute_type`).
        DType::F16 | DType::BF16 => "unsigned short",
    })
}

/// The C type expressions of dtype `d` are computed in: `float` for the 16-bit
/// floats (each result rounded to the dtype, as an unfused op would), else the
/// storage type.
pub fn compute_type(d: DType) -> Option<&'static str> {
    match d {
        DType::F16 | DType::BF16 => Some("float"),
        d => c_type(d),
    }
}

/// `e` (a float) rounded to `d` when `d` is a 16-bit float.
fn round_to(d: DType, e: String) -> String {
    match d {
        DType::F16 => format!("st_rh({e})"),
        DType::BF16 => format!("st_rb({e})"),
        _ => e,
    }
}

/// A load of `e` (storage type of `d`) as its compute type.
fn load(d: DType, e: String) -> String {
    match d {
        DType::F16 => format!("st_h2f({e})"),
        DType::BF16 => format!("st_b2f({e})"),
        _ => e,
    }
}

/// `e` (compute type of `d`) converted for storage.
fn store(d: DType, e: String) -> String {
    match d {
        DType::F16 => format!("st_f2h({e})"),
        DType::BF16 => format!("st_f2b({e})"),
        _ => e,
    }
}

const PRELUDE: &str = r#"
#ifndef INFINITY
#define INFINITY __int_as_float(0x7f800000)
#endif
#define MAX_RANK 8
#define MAX_OPERANDS 16
struct Meta {
  long long n;
  long long nred;
  int rank;
  int kept;
  long long dims[MAX_RANK];
  long long strides[MAX_OPERANDS][MAX_RANK];
};
template <typename T> __device__ __forceinline__ T st_max(T a, T b) { return (a > b || a != a) ? a : b; }
template <typename T> __device__ __forceinline__ T st_min(T a, T b) { return (a < b || a != a) ? a : b; }
template <typename T> __device__ __forceinline__ T st_fmod_py(T a, T b) {
  T r = fmod(a, b);
  if (r != (T)0 && ((r < (T)0) != (b < (T)0))) r += b;
  return r;
}
template <typename T> __device__ __forceinline__ T st_imod_py(T a, T b) {
  if (b == (T)0) return (T)0;
  T r = a % b;
  if (r != (T)0 && ((r < (T)0) != (b < (T)0))) r += b;
  return r;
}
template <typename T> __device__ __forceinline__ T st_idiv(T a, T b) { return b == (T)0 ? (T)0 : a / b; }
template <typename T> __device__ __forceinline__ T st_sign(T a) { return (T)((a > (T)0) - (a < (T)0)); }
"#;

/// Conversions between float and the 16-bit float storage types (round to
/// nearest even), shared by generated and hand-written kernels.
pub const HALF_PRELUDE: &str = r#"
__device__ __forceinline__ float st_h2f(unsigned short b) { float f; asm("cvt.f32.f16 %0, %1;" : "=f"(f) : "h"(b)); return f; }
__device__ __forceinline__ unsigned short st_f2h(float f) { unsigned short b; asm("cvt.rn.f16.f32 %0, %1;" : "=h"(b) : "f"(f)); return b; }
__device__ __forceinline__ float st_b2f(unsigned short b) { return __uint_as_float(((unsigned int)b) << 16); }
__device__ __forceinline__ unsigned short st_f2b(float f) {
  const unsigned int u = __float_as_uint(f);
  if ((u & 0x7fffffffu) > 0x7f800000u) return (unsigned short)((u >> 16) | 0x40u);
  return (unsigned short)((u + 0x7fffu + ((u >> 16) & 1u)) >> 16);
}
__device__ __forceinline__ float st_rh(float f) { return st_h2f(st_f2h(f)); }
__device__ __forceinline__ float st_rb(float f) { return st_b2f(st_f2b(f)); }
"#;

fn literal(v: f64, d: DType) -> Result<String, String> {
    Ok(match d {
        DType::F32 => format!("__int_as_float({:#x})", (v as f32).to_bits() as i32),
        DType::F64 => format!("__longlong_as_double({:#x}ll)", v.to_bits() as i64),
        DType::F16 | DType::BF16 => round_to(d, format!("__int_as_float({:#x})", (v as f32).to_bits() as i32)),
        DType::Bool => format!("(unsigned char){}", u8::from(v != 0.0)),
        d if d.is_int() => {
            let ty = c_type(d).ok_or_else(|| format!("no CUDA type for {d}"))?;
            format!("({ty}){}ll", v as i64)
        }
        d => return Err(format!("scalar of dtype {d} is not supported by the CUDA backend")),
    })
}

fn unary(op: UnaryOp, a: &str, d: DType) -> Result<String, String> {
    let t = compute_type(d).ok_or_else(|| format!("{} on {d}", op.name()))?;
    let float = d.is_float();
    let need_float = || -> Result<(), String> {
        if float {
            Ok(())
        } else {
            Err(format!("{} on {d} is not supported by the CUDA backend", op.name()))
        }
    };
    Ok(match op {
        UnaryOp::Neg => format!("({t})(-{a})"),
        UnaryOp::Abs if float => format!("fabs({a})"),
        UnaryOp::Abs => format!("({t})({a} < 0 ? -{a} : {a})"),
        UnaryOp::Relu => format!("({a} < ({t})0 ? ({t})0 : {a})"),
        UnaryOp::Sign => format!("st_sign<{t}>({a})"),
        UnaryOp::Not => format!("({t})(!{a})"),
        _ => {
            need_float()?;
            match op {
                UnaryOp::Exp => format!("exp({a})"),
                UnaryOp::Log => format!("log({a})"),
                UnaryOp::Sqrt => format!("sqrt({a})"),
                UnaryOp::Rsqrt => format!("(({t})1 / sqrt({a}))"),
                UnaryOp::Sin => format!("sin({a})"),
                UnaryOp::Cos => format!("cos({a})"),
                UnaryOp::Tanh => format!("tanh({a})"),
                UnaryOp::Sigmoid => format!("(({t})1 / (({t})1 + exp(-{a})))"),
                UnaryOp::Erf => format!("erf({a})"),
                UnaryOp::Gelu => format!("(({t})0.5 * {a} * (({t})1 + erf({a} * ({t})0.70710678118654752440)))"),
                UnaryOp::GeluTanh => format!(
                    "(({t})0.5 * {a} * (({t})1 + tanh(({t})0.79788456080286535588 * ({a} + ({t})0.044715 * {a} * {a} * {a}))))"
                ),
                UnaryOp::Silu => format!("({a} / (({t})1 + exp(-{a})))"),
                UnaryOp::Floor => format!("floor({a})"),
                UnaryOp::Ceil => format!("ceil({a})"),
                UnaryOp::Round => format!("rint({a})"),
                UnaryOp::Reciprocal => format!("(({t})1 / {a})"),
                _ => unreachable!("handled above"),
            }
        }
    })
}

fn binary(op: BinaryOp, a: &str, b: &str, d: DType) -> Result<String, String> {
    let t = compute_type(d).ok_or_else(|| format!("{} on {d}", op.name()))?;
    let float = d.is_float();
    Ok(match op {
        BinaryOp::Add => format!("({t})({a} + {b})"),
        BinaryOp::Sub => format!("({t})({a} - {b})"),
        BinaryOp::Mul => format!("({t})({a} * {b})"),
        BinaryOp::Div if float => format!("({a} / {b})"),
        BinaryOp::Div => format!("st_idiv<{t}>({a}, {b})"),
        BinaryOp::Max => format!("st_max<{t}>({a}, {b})"),
        BinaryOp::Min => format!("st_min<{t}>({a}, {b})"),
        BinaryOp::Pow if float => format!("pow({a}, {b})"),
        BinaryOp::Mod if float => format!("st_fmod_py<{t}>({a}, {b})"),
        BinaryOp::Mod if d != DType::Bool => format!("st_imod_py<{t}>({a}, {b})"),
        BinaryOp::Fmod if float => format!("fmod({a}, {b})"),
        BinaryOp::Equal => format!("(unsigned char)({a} == {b})"),
        BinaryOp::NotEqual => format!("(unsigned char)({a} != {b})"),
        BinaryOp::Less => format!("(unsigned char)({a} < {b})"),
        BinaryOp::LessEqual => format!("(unsigned char)({a} <= {b})"),
        BinaryOp::Greater => format!("(unsigned char)({a} > {b})"),
        BinaryOp::GreaterEqual => format!("(unsigned char)({a} >= {b})"),
        BinaryOp::And => format!("(unsigned char)({a} && {b})"),
        BinaryOp::Or => format!("(unsigned char)({a} || {b})"),
        BinaryOp::Xor => format!("(unsigned char)((!!{a}) != (!!{b}))"),
        _ => return Err(format!("{} on {d} is not supported by the CUDA backend", op.name())),
    })
}

fn cast(a: &str, from: DType, to: DType) -> Result<String, String> {
    let t = compute_type(to).ok_or_else(|| format!("cast to {to} is not supported by the CUDA backend"))?;
    c_type(from).ok_or_else(|| format!("cast from {from} is not supported by the CUDA backend"))?;
    Ok(if to == DType::Bool {
        format!("(unsigned char)({a} != 0)")
    } else {
        format!("({t})({a})")
    })
}

fn is_unsigned(d: DType) -> bool {
    matches!(d, DType::U8 | DType::U16 | DType::U32 | DType::U64 | DType::Bool)
}

/// A generated kernel: its source and entry point.
#[derive(Debug, Clone)]
pub struct Kernel {
    /// CUDA C source.
    pub source: String,
    /// Entry point.
    pub name: String,
}

/// Prints `region` for inputs of `inputs` dtypes as a CUDA kernel named `name`.
///
/// The kernel's parameters are `(Meta m, in0, .., out0, ..)`, pointers already
/// offset to each tensor's first element.
pub fn region_kernel(region: &Region, inputs: &[DType], name: &str) -> Result<Kernel, String> {
    let dtypes = region.expr_dtypes(inputs)?;
    let n_out = region.outputs.len();
    if inputs.len() + n_out > MAX_OPERANDS {
        return Err(format!(
            "a region with {} operands exceeds the CUDA kernel limit of {MAX_OPERANDS}",
            inputs.len() + n_out
        ));
    }
    let mut s = String::from(PRELUDE);
    s.push_str(HALF_PRELUDE);
    let _ = write!(s, "extern \"C\" __global__ void {name}(const Meta m");
    for (k, d) in inputs.iter().enumerate() {
        let t = c_type(*d).ok_or_else(|| format!("region input {k} has dtype {d}, not supported on CUDA"))?;
        let _ = write!(s, ", const {t}* __restrict__ in{k}");
    }
    let out_dtype = |o: usize| -> Result<DType, String> {
        let d = dtypes[region.outputs[o]];
        Ok(match &region.reduce {
            Some(r) if r.op == ReduceOp::Mean && !d.is_float() => return Err(format!("mean of {d}")),
            _ => d,
        })
    };
    for o in 0..n_out {
        let d = out_dtype(o)?;
        let t = c_type(d).ok_or_else(|| format!("region output {o} has dtype {d}, not supported on CUDA"))?;
        let _ = write!(s, ", {t}* __restrict__ out{o}");
    }
    s.push_str(") {\n");
    let nops = inputs.len() + n_out;
    // Offsets of operand k for iteration coordinates (the body below declares `off[]`).
    let body = |s: &mut String, indent: &str| -> Result<(), String> {
        for (i, e) in region.exprs.iter().enumerate() {
            let d = dtypes[i];
            let t = compute_type(d).ok_or_else(|| format!("expression {i} has dtype {d}, not supported on CUDA"))?;
            let v = match e {
                Expr::Input(k) => load(d, format!("in{k}[off[{k}]]")),
                Expr::Scalar(v, sd) => literal(*v, *sd)?,
                Expr::Unary(op, a) => round_to(d, unary(*op, &format!("v{a}"), dtypes[*a])?),
                Expr::Binary(op, a, b) => round_to(d, binary(*op, &format!("v{a}"), &format!("v{b}"), dtypes[*a])?),
                Expr::Where(c, a, b) => format!("(v{c} ? v{a} : v{b})"),
                Expr::Cast(to, a) => round_to(d, cast(&format!("v{a}"), dtypes[*a], *to)?),
            };
            let _ = writeln!(s, "{indent}const {t} v{i} = {v};");
        }
        Ok(())
    };
    match &region.reduce {
        None => {
            s.push_str("  for (long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x; i < m.n; i += (long long)gridDim.x * blockDim.x) {\n");
            let _ = writeln!(s, "    long long off[{nops}] = {{0}};");
            s.push_str("    long long rem = i;\n");
            s.push_str("    for (int d = m.rank - 1; d >= 0; --d) {\n");
            s.push_str("      const long long c = rem % m.dims[d]; rem /= m.dims[d];\n");
            let _ = writeln!(
                s,
                "      #pragma unroll\n      for (int k = 0; k < {nops}; ++k) off[k] += c * m.strides[k][d];"
            );
            s.push_str("    }\n");
            body(&mut s, "    ")?;
            for (o, &e) in region.outputs.iter().enumerate() {
                let v = store(dtypes[e], format!("v{e}"));
                let _ = writeln!(s, "    out{o}[off[{}]] = {v};", inputs.len() + o);
            }
            s.push_str("  }\n}\n");
        }
        Some(r) => {
            let d = out_dtype(0)?;
            let t = c_type(d).ok_or_else(|| format!("reduction to {d}"))?;
            let acc_t = match d {
                d if d.is_float() => "double",
                DType::U64 => "unsigned long long",
                _ => "long long",
            };
            let (init, combine) = match r.op {
                ReduceOp::Sum | ReduceOp::Mean => ("0".to_string(), "acc + x".to_string()),
                ReduceOp::Prod => ("1".to_string(), "acc * x".to_string()),
                ReduceOp::Max => (
                    if d.is_float() {
                        "-INFINITY".into()
                    } else {
                        format!("({t})(-1ll << (8 * sizeof({t}) - 1))")
                    },
                    "st_max<ACC>(acc, x)".to_string(),
                ),
                ReduceOp::Min => (
                    if d.is_float() {
                        "INFINITY".into()
                    } else {
                        format!("({t})~(-1ll << (8 * sizeof({t}) - 1))")
                    },
                    "st_min<ACC>(acc, x)".to_string(),
                ),
            };
            let combine = combine.replace("ACC", acc_t);
            // Unsigned and bool maxima/minima: min/max of the type's range.
            let init = match (r.op, d) {
                (ReduceOp::Max, d) if is_unsigned(d) => "0".to_string(),
                (ReduceOp::Min, d) if is_unsigned(d) => format!("({t})~0ull"),
                _ => init,
            };
            let _ = writeln!(
                s,
                "  const long long warp = ((long long)blockIdx.x * blockDim.x + threadIdx.x) >> 5;\n  const int lane = threadIdx.x & 31;\n  if (warp >= m.n) return;"
            );
            let _ = writeln!(s, "  long long base[{nops}] = {{0}};");
            s.push_str("  { long long rem = warp;\n    for (int d = m.kept - 1; d >= 0; --d) {\n      const long long c = rem % m.dims[d]; rem /= m.dims[d];\n");
            let _ = writeln!(
                s,
                "      for (int k = 0; k < {nops}; ++k) base[k] += c * m.strides[k][d];\n    }}\n  }}"
            );
            let _ = writeln!(s, "  {acc_t} acc = ({acc_t})({init});");
            s.push_str("  for (long long r = lane; r < m.nred; r += 32) {\n");
            let _ = writeln!(s, "    long long off[{nops}];");
            let _ = writeln!(s, "    for (int k = 0; k < {nops}; ++k) off[k] = base[k];");
            s.push_str("    long long rem = r;\n    for (int d = m.rank - 1; d >= m.kept; --d) {\n      const long long c = rem % m.dims[d]; rem /= m.dims[d];\n");
            let _ = writeln!(
                s,
                "      for (int k = 0; k < {nops}; ++k) off[k] += c * m.strides[k][d];\n    }}"
            );
            body(&mut s, "    ")?;
            let _ = writeln!(
                s,
                "    const {acc_t} x = ({acc_t})v{};\n    acc = {combine};\n  }}",
                region.outputs[0]
            );
            s.push_str("  for (int o = 16; o > 0; o >>= 1) {\n");
            let _ = writeln!(
                s,
                "    const {acc_t} x = __shfl_xor_sync(0xffffffffu, acc, o);\n    acc = {combine};\n  }}"
            );
            let fin = if r.op == ReduceOp::Mean {
                "acc / (double)m.nred"
            } else {
                "acc"
            };
            let v = match d {
                DType::F16 | DType::BF16 => store(d, format!("(float)({fin})")),
                _ => format!("({t})({fin})"),
            };
            let _ = writeln!(s, "  if (lane == 0) out0[base[{}]] = {v};\n}}", inputs.len());
        }
    }
    Ok(Kernel {
        source: s,
        name: name.to_string(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use stitch_core::ops::fused::RegionReduce;

    fn region(exprs: Vec<Expr>, outputs: Vec<usize>, reduce: Option<RegionReduce>) -> Region {
        Region {
            exprs,
            outputs,
            reduce,
            members: vec![],
        }
    }

    #[test]
    fn elementwise_kernel_evaluates_each_expression_once() {
        let r = region(
            vec![
                Expr::Input(0),
                Expr::Input(1),
                Expr::Binary(BinaryOp::Mul, 0, 1),
                Expr::Unary(UnaryOp::Silu, 2),
                Expr::Scalar(0.5, DType::F32),
                Expr::Binary(BinaryOp::Greater, 3, 4),
            ],
            vec![3, 5],
            None,
        );
        let k = region_kernel(&r, &[DType::F32, DType::F32], "k0").unwrap();
        assert!(k.source.contains("extern \"C\" __global__ void k0(const Meta m, const float* __restrict__ in0, const float* __restrict__ in1, float* __restrict__ out0, unsigned char* __restrict__ out1)"), "{}", k.source);
        for i in 0..6 {
            assert_eq!(k.source.matches(&format!(" v{i} = ")).count(), 1, "{}", k.source);
        }
        assert!(k.source.contains("out0[off[2]] = v3;"));
        assert!(k.source.contains("out1[off[3]] = v5;"));
        // 0.5f exactly, as bits.
        assert!(k.source.contains("__int_as_float(0x3f000000)"), "{}", k.source);
    }

    #[test]
    fn reduction_kernel_uses_a_warp_per_output() {
        let r = region(
            vec![Expr::Input(0), Expr::Unary(UnaryOp::Exp, 0)],
            vec![1],
            Some(RegionReduce {
                op: ReduceOp::Mean,
                axes: vec![1],
                keepdims: true,
            }),
        );
        let k = region_kernel(&r, &[DType::F32], "k1").unwrap();
        assert!(k.source.contains("__shfl_xor_sync"));
        assert!(k.source.contains("double acc"));
        assert!(k.source.contains("acc / (double)m.nred"));
    }

    #[test]
    fn unsupported_dtypes_and_ops_are_errors() {
        let r = region(vec![Expr::Input(0), Expr::Unary(UnaryOp::Exp, 0)], vec![1], None);
        // 16-bit floats: loaded to float, every result rounded back, stored as bits.
        let h = region_kernel(&r, &[DType::F16], "k").unwrap().source;
        assert!(h.contains("const float v0 = st_h2f(in0[off[0]]);"), "{h}");
        assert!(h.contains("const float v1 = st_rh(exp(v0));"), "{h}");
        assert!(h.contains("out0[off[1]] = st_f2h(v1);"), "{h}");
        let b = region_kernel(&r, &[DType::BF16], "k").unwrap().source;
        assert!(b.contains("st_rb(exp(v0))") && b.contains("st_f2b(v1)"), "{b}");
        assert!(region_kernel(&r, &[DType::I32], "k").unwrap_err().contains("exp"));
        let many: Vec<Expr> = (0..MAX_OPERANDS).map(Expr::Input).collect();
        let r = region(many, vec![0], None);
        assert!(region_kernel(&r, &[DType::F32; MAX_OPERANDS], "k").is_err());
    }

    #[test]
    fn meta_matches_the_c_layout() {
        // long long n, nred; int rank, kept; dims[8]; strides[16][8].
        assert_eq!(
            std::mem::size_of::<Meta>(),
            8 + 8 + 4 + 4 + 8 * MAX_RANK + 8 * MAX_RANK * MAX_OPERANDS
        );
    }
}
