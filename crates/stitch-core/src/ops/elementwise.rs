//! Elementwise ops: unary math, binary arithmetic/comparison/logic with numpy
//! broadcasting, `where`, `cast` and `clamp`.
//!
//! Semantics (ONNX unless noted; deviations are listed in docs/DESIGN-NOTES.md):
//! - `round` rounds half to even; `sign(0) = 0`; `relu` works on signed ints too.
//! - `div` on integers truncates toward zero (ONNX Div, C semantics); division
//!   by zero on integers yields 0 instead of trapping (ONNX: undefined).
//! - `mod` follows the sign of the divisor (Python `%`, ONNX Mod fmod=0);
//!   `fmod` follows the dividend (C `fmod`, ONNX Mod fmod=1).
//! - `max`/`min` propagate NaN (ONNX Max/Min, numpy `maximum`).
//! - comparisons give bool; `and`/`or`/`xor`/`not` take bool.
//! - `cast` float→int truncates toward zero and saturates, NaN→0; →bool is `x != 0`.

use crate::dtype::DType;
use crate::graph::{Graph, TensorType, Value};
use crate::ops::util::{arity, same_dtype};
use crate::ops::Op;
use crate::shape::broadcast_shapes;
use crate::Result;

/// Elementwise unary operations.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum UnaryOp {
    Neg,
    Abs,
    Exp,
    Log,
    Sqrt,
    Rsqrt,
    Sin,
    Cos,
    Tanh,
    Sigmoid,
    Erf,
    Relu,
    /// Exact GELU: `0.5 x (1 + erf(x / √2))`.
    Gelu,
    /// Tanh-approximated GELU.
    GeluTanh,
    /// `x * sigmoid(x)`.
    Silu,
    Floor,
    Ceil,
    /// Round half to even.
    Round,
    Sign,
    Reciprocal,
    /// Logical not (bool).
    Not,
}

impl UnaryOp {
    /// Every unary op.
    pub const ALL: [UnaryOp; 21] = [
        UnaryOp::Neg,
        UnaryOp::Abs,
        UnaryOp::Exp,
        UnaryOp::Log,
        UnaryOp::Sqrt,
        UnaryOp::Rsqrt,
        UnaryOp::Sin,
        UnaryOp::Cos,
        UnaryOp::Tanh,
        UnaryOp::Sigmoid,
        UnaryOp::Erf,
        UnaryOp::Relu,
        UnaryOp::Gelu,
        UnaryOp::GeluTanh,
        UnaryOp::Silu,
        UnaryOp::Floor,
        UnaryOp::Ceil,
        UnaryOp::Round,
        UnaryOp::Sign,
        UnaryOp::Reciprocal,
        UnaryOp::Not,
    ];

    /// Lowercase name.
    pub fn name(self) -> &'static str {
        match self {
            UnaryOp::Neg => "neg",
            UnaryOp::Abs => "abs",
            UnaryOp::Exp => "exp",
            UnaryOp::Log => "log",
            UnaryOp::Sqrt => "sqrt",
            UnaryOp::Rsqrt => "rsqrt",
            UnaryOp::Sin => "sin",
            UnaryOp::Cos => "cos",
            UnaryOp::Tanh => "tanh",
            UnaryOp::Sigmoid => "sigmoid",
            UnaryOp::Erf => "erf",
            UnaryOp::Relu => "relu",
            UnaryOp::Gelu => "gelu",
            UnaryOp::GeluTanh => "gelu_tanh",
            UnaryOp::Silu => "silu",
            UnaryOp::Floor => "floor",
            UnaryOp::Ceil => "ceil",
            UnaryOp::Round => "round",
            UnaryOp::Sign => "sign",
            UnaryOp::Reciprocal => "reciprocal",
            UnaryOp::Not => "not",
        }
    }

    /// Whether the op accepts `dtype`.
    pub fn accepts(self, dtype: DType) -> bool {
        match self {
            UnaryOp::Not => dtype == DType::Bool,
            UnaryOp::Neg => dtype.is_float() || dtype.is_signed_int(),
            UnaryOp::Abs | UnaryOp::Sign | UnaryOp::Relu => dtype.is_numeric(),
            _ => dtype.is_float(),
        }
    }
}

/// Elementwise binary operations (numpy broadcasting).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum BinaryOp {
    Add,
    Sub,
    Mul,
    Div,
    Pow,
    Max,
    Min,
    /// Remainder with the sign of the divisor (Python `%`).
    Mod,
    /// Remainder with the sign of the dividend (C `fmod`).
    Fmod,
    Equal,
    NotEqual,
    Less,
    LessEqual,
    Greater,
    GreaterEqual,
    And,
    Or,
    Xor,
}

impl BinaryOp {
    /// Every binary op.
    pub const ALL: [BinaryOp; 18] = [
        BinaryOp::Add,
        BinaryOp::Sub,
        BinaryOp::Mul,
        BinaryOp::Div,
        BinaryOp::Pow,
        BinaryOp::Max,
        BinaryOp::Min,
        BinaryOp::Mod,
        BinaryOp::Fmod,
        BinaryOp::Equal,
        BinaryOp::NotEqual,
        BinaryOp::Less,
        BinaryOp::LessEqual,
        BinaryOp::Greater,
        BinaryOp::GreaterEqual,
        BinaryOp::And,
        BinaryOp::Or,
        BinaryOp::Xor,
    ];

    /// Lowercase name.
    pub fn name(self) -> &'static str {
        match self {
            BinaryOp::Add => "add",
            BinaryOp::Sub => "sub",
            BinaryOp::Mul => "mul",
            BinaryOp::Div => "div",
            BinaryOp::Pow => "pow",
            BinaryOp::Max => "max",
            BinaryOp::Min => "min",
            BinaryOp::Mod => "mod",
            BinaryOp::Fmod => "fmod",
            BinaryOp::Equal => "equal",
            BinaryOp::NotEqual => "not_equal",
            BinaryOp::Less => "less",
            BinaryOp::LessEqual => "less_equal",
            BinaryOp::Greater => "greater",
            BinaryOp::GreaterEqual => "greater_equal",
            BinaryOp::And => "and",
            BinaryOp::Or => "or",
            BinaryOp::Xor => "xor",
        }
    }

    /// True for comparisons (bool output).
    pub fn is_comparison(self) -> bool {
        matches!(
            self,
            BinaryOp::Equal
                | BinaryOp::NotEqual
                | BinaryOp::Less
                | BinaryOp::LessEqual
                | BinaryOp::Greater
                | BinaryOp::GreaterEqual
        )
    }

    /// True for logical ops (bool in, bool out).
    pub fn is_logical(self) -> bool {
        matches!(self, BinaryOp::And | BinaryOp::Or | BinaryOp::Xor)
    }

    /// Whether the op accepts operands of `dtype`.
    pub fn accepts(self, dtype: DType) -> bool {
        if self.is_logical() {
            dtype == DType::Bool
        } else if matches!(self, BinaryOp::Equal | BinaryOp::NotEqual) {
            true
        } else {
            dtype.is_numeric()
        }
    }

    /// Output dtype for operands of `dtype`.
    pub fn output_dtype(self, dtype: DType) -> DType {
        if self.is_comparison() {
            DType::Bool
        } else {
            dtype
        }
    }
}

fn broadcast(a: &TensorType, b: &TensorType) -> Result<crate::Shape, String> {
    broadcast_shapes(&a.shape, &b.shape).ok_or_else(|| format!("shapes {} and {} do not broadcast", a.shape, b.shape))
}

pub(crate) fn infer(op: &Op, inputs: &[TensorType]) -> Result<Vec<TensorType>, String> {
    match op {
        Op::Unary(u) => {
            arity(inputs, 1, 1)?;
            let x = &inputs[0];
            if !u.accepts(x.dtype) {
                return Err(format!("{} does not accept {}", u.name(), x));
            }
            Ok(vec![x.clone()])
        }
        Op::Binary(b) => {
            arity(inputs, 2, 2)?;
            same_dtype(inputs)?;
            if !b.accepts(inputs[0].dtype) {
                return Err(format!("{} does not accept dtype {}", b.name(), inputs[0].dtype));
            }
            let shape = broadcast(&inputs[0], &inputs[1])?;
            Ok(vec![TensorType::new(b.output_dtype(inputs[0].dtype), shape)])
        }
        Op::Where => {
            arity(inputs, 3, 3)?;
            if inputs[0].dtype != DType::Bool {
                return Err(format!("condition must be bool, got {}", inputs[0]));
            }
            same_dtype(&inputs[1..])?;
            let s = broadcast(&inputs[0], &inputs[1])?;
            let s = broadcast(&TensorType::new(DType::Bool, s), &inputs[2])?;
            Ok(vec![TensorType::new(inputs[1].dtype, s)])
        }
        Op::Cast(to) => {
            arity(inputs, 1, 1)?;
            Ok(vec![TensorType::new(*to, inputs[0].shape.clone())])
        }
        Op::Clamp { min, max } => {
            arity(inputs, 1, 1)?;
            if !inputs[0].dtype.is_numeric() {
                return Err(format!("clamp needs a numeric tensor, got {}", inputs[0]));
            }
            if let (Some(lo), Some(hi)) = (min, max) {
                if lo > hi {
                    return Err(format!("clamp bounds are reversed: min {lo} > max {hi}"));
                }
            }
            Ok(vec![inputs[0].clone()])
        }
        _ => unreachable!("elementwise::infer called for {}", op.kind()),
    }
}

/// Decomposition of the composite unary ops into primitives.
pub(crate) fn decompose_unary(u: UnaryOp, g: &mut Graph, inputs: &[Value]) -> Result<Vec<Value>> {
    let x = inputs[0];
    let dt = g.ty(x).dtype;
    let out = match u {
        UnaryOp::Sigmoid => {
            // 1 / (1 + exp(-x))
            let n = g.neg(x)?;
            let e = g.exp(n)?;
            let one = g.scalar(dt, 1.0);
            let d = g.add(e, one)?;
            g.reciprocal(d)?
        }
        UnaryOp::Silu => {
            let s = decompose_unary(UnaryOp::Sigmoid, g, &[x])?[0];
            g.mul(x, s)?
        }
        UnaryOp::Rsqrt => {
            let s = g.sqrt(x)?;
            g.reciprocal(s)?
        }
        UnaryOp::Gelu => {
            // 0.5 x (1 + erf(x / sqrt 2))
            let c = g.scalar(dt, std::f64::consts::FRAC_1_SQRT_2);
            let xs = g.mul(x, c)?;
            let e = g.erf(xs)?;
            let one = g.scalar(dt, 1.0);
            let e1 = g.add(e, one)?;
            let half = g.scalar(dt, 0.5);
            let hx = g.mul(x, half)?;
            g.mul(hx, e1)?
        }
        UnaryOp::GeluTanh => {
            // 0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3)))
            let x2 = g.mul(x, x)?;
            let x3 = g.mul(x2, x)?;
            let k = g.scalar(dt, 0.044715);
            let kx3 = g.mul(x3, k)?;
            let inner = g.add(x, kx3)?;
            let c = g.scalar(dt, (2.0 / std::f64::consts::PI).sqrt());
            let arg = g.mul(inner, c)?;
            let t = g.tanh(arg)?;
            let one = g.scalar(dt, 1.0);
            let t1 = g.add(t, one)?;
            let half = g.scalar(dt, 0.5);
            let hx = g.mul(x, half)?;
            g.mul(hx, t1)?
        }
        other => return Err(crate::Error::invalid(format!("{} is not a composite op", other.name()))),
    };
    Ok(vec![out])
}

/// `clamp(x, lo, hi) = min(max(x, lo), hi)`.
pub(crate) fn decompose_clamp(
    min: Option<f64>,
    max: Option<f64>,
    g: &mut Graph,
    inputs: &[Value],
) -> Result<Vec<Value>> {
    let mut x = inputs[0];
    let dt = g.ty(x).dtype;
    if let Some(lo) = min {
        let c = g.scalar(dt, lo);
        x = g.max(x, c)?;
    }
    if let Some(hi) = max {
        let c = g.scalar(dt, hi);
        x = g.min(x, c)?;
    }
    Ok(vec![x])
}

macro_rules! unary_builders {
    ($($fn:ident => $v:ident),* $(,)?) => {
        impl Graph {$(
            #[doc = concat!("Elementwise `", stringify!($fn), "`.")]
            pub fn $fn(&mut self, x: Value) -> Result<Value> { self.add_op(Op::Unary(UnaryOp::$v), &[x]) }
        )*}
    };
}
unary_builders!(
    neg => Neg, abs => Abs, exp => Exp, log => Log, sqrt => Sqrt, rsqrt => Rsqrt, sin => Sin, cos => Cos,
    tanh => Tanh, sigmoid => Sigmoid, erf => Erf, relu => Relu, gelu => Gelu, gelu_tanh => GeluTanh,
    silu => Silu, floor => Floor, ceil => Ceil, round => Round, sign => Sign, reciprocal => Reciprocal,
    logical_not => Not,
);

macro_rules! binary_builders {
    ($($fn:ident => $v:ident),* $(,)?) => {
        impl Graph {$(
            #[doc = concat!("Elementwise `", stringify!($fn), "` with numpy broadcasting.")]
            pub fn $fn(&mut self, a: Value, b: Value) -> Result<Value> { self.add_op(Op::Binary(BinaryOp::$v), &[a, b]) }
        )*}
    };
}
binary_builders!(
    add => Add, sub => Sub, mul => Mul, div => Div, pow => Pow, max => Max, min => Min, modulo => Mod,
    fmod => Fmod, equal => Equal, not_equal => NotEqual, less => Less, less_equal => LessEqual,
    greater => Greater, greater_equal => GreaterEqual, logical_and => And, logical_or => Or, logical_xor => Xor,
);

impl Graph {
    /// `where(cond, a, b)`: `a` where `cond` is true, else `b` (broadcasting).
    pub fn where_(&mut self, cond: Value, a: Value, b: Value) -> Result<Value> {
        self.add_op(Op::Where, &[cond, a, b])
    }
    /// Convert to `dtype`.
    pub fn cast(&mut self, x: Value, dtype: DType) -> Result<Value> {
        self.add_op(Op::Cast(dtype), &[x])
    }
    /// Clamp into `[min, max]`.
    pub fn clamp(&mut self, x: Value, min: Option<f64>, max: Option<f64>) -> Result<Value> {
        self.add_op(Op::Clamp { min, max }, &[x])
    }
    /// Elementwise unary op by value.
    pub fn unary(&mut self, op: UnaryOp, x: Value) -> Result<Value> {
        self.add_op(Op::Unary(op), &[x])
    }
    /// Elementwise binary op by value.
    pub fn binary(&mut self, op: BinaryOp, a: Value, b: Value) -> Result<Value> {
        self.add_op(Op::Binary(op), &[a, b])
    }
}
