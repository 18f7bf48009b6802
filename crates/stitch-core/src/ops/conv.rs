//! Convolution (1-D and 2-D, NCW/NCHW, grouped, strided, dilated, padded) and
//! max/average pooling.
//!
//! Semantics follow ONNX Conv/MaxPool/AveragePool with explicit pads
//! (`[begin.., end..]`). Pooling with `ceil_mode` drops a last window that would
//! start entirely inside the end padding (as ONNX Runtime and PyTorch do). Max
//! pooling ignores padding; average pooling divides by the number of real
//! elements unless `count_include_pad`.

use crate::graph::{Graph, TensorType, Value};
use crate::ops::util::{arity, float, same_dtype};
use crate::ops::Op;
use crate::shape::{Dim, Shape};
use crate::Result;

/// Convolution attributes (one entry per spatial axis; `pads` has two per axis).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ConvAttrs {
    pub strides: Vec<usize>,
    /// `[begin_0, .., begin_n, end_0, .., end_n]`.
    pub pads: Vec<usize>,
    pub dilations: Vec<usize>,
    pub groups: usize,
}

impl ConvAttrs {
    /// Stride 1, no padding, dilation 1, one group, for `spatial` axes.
    pub fn new(spatial: usize) -> ConvAttrs {
        ConvAttrs {
            strides: vec![1; spatial],
            pads: vec![0; 2 * spatial],
            dilations: vec![1; spatial],
            groups: 1,
        }
    }
    /// Number of spatial axes (1 or 2).
    pub fn spatial_rank(&self) -> usize {
        self.strides.len()
    }
}

/// Pooling attributes.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct PoolAttrs {
    pub kernel: Vec<usize>,
    pub strides: Vec<usize>,
    /// `[begin_0, .., begin_n, end_0, .., end_n]`.
    pub pads: Vec<usize>,
    pub dilations: Vec<usize>,
    pub ceil_mode: bool,
    /// Average pooling only: count padded elements in the divisor.
    pub count_include_pad: bool,
}

impl PoolAttrs {
    /// A `kernel`-sized window, stride 1, no padding.
    pub fn new(kernel: &[usize]) -> PoolAttrs {
        let n = kernel.len();
        PoolAttrs {
            kernel: kernel.to_vec(),
            strides: vec![1; n],
            pads: vec![0; 2 * n],
            dilations: vec![1; n],
            ceil_mode: false,
            count_include_pad: false,
        }
    }
}

/// Output length of a window op along one axis; `None` if the window does not fit.
pub fn window_out_len(
    input: usize,
    kernel: usize,
    stride: usize,
    pad_begin: usize,
    pad_end: usize,
    dilation: usize,
    ceil_mode: bool,
) -> Option<usize> {
    let span = dilation * (kernel.max(1) - 1) + 1;
    let padded = input + pad_begin + pad_end;
    if padded < span || stride == 0 {
        return None;
    }
    let num = padded - span;
    let mut out = if ceil_mode { num.div_ceil(stride) } else { num / stride } + 1;
    if ceil_mode && (out - 1) * stride >= input + pad_begin {
        out -= 1;
    }
    Some(out)
}

fn check_attrs(n: usize, strides: &[usize], pads: &[usize], dilations: &[usize]) -> Result<(), String> {
    if strides.len() != n || pads.len() != 2 * n || dilations.len() != n {
        return Err(format!(
            "attributes need {n} strides, {} pads and {n} dilations, got strides {strides:?}, pads {pads:?}, dilations {dilations:?}",
            2 * n
        ));
    }
    if strides.contains(&0) || dilations.contains(&0) {
        return Err(format!("strides {strides:?} and dilations {dilations:?} must be >= 1"));
    }
    Ok(())
}

#[allow(clippy::too_many_arguments)]
fn spatial_out(
    x: &TensorType,
    kernel: &[Dim],
    strides: &[usize],
    pads: &[usize],
    dilations: &[usize],
    ceil_mode: bool,
) -> Result<Vec<Dim>, String> {
    let n = kernel.len();
    let mut out = Vec::with_capacity(n);
    for i in 0..n {
        out.push(match (&x.shape.0[2 + i], &kernel[i]) {
            (Dim::Known(len), Dim::Known(k)) => Dim::Known(
                window_out_len(*len, *k, strides[i], pads[i], pads[n + i], dilations[i], ceil_mode).ok_or_else(
                    || {
                        format!(
                            "window of size {k} (dilation {}) does not fit spatial axis {i} of {x} with pads {pads:?}",
                            dilations[i]
                        )
                    },
                )?,
            ),
            (d, k) => Dim::sym(&format!(
                "win({d},{k},{},{},{},{})",
                strides[i],
                pads[i] + pads[n + i],
                dilations[i],
                ceil_mode as u8
            )),
        });
    }
    Ok(out)
}

pub(crate) fn infer(op: &Op, inputs: &[TensorType]) -> Result<Vec<TensorType>, String> {
    match op {
        Op::Conv(a) => {
            arity(inputs, 2, 3)?;
            same_dtype(inputs)?;
            let (x, w) = (&inputs[0], &inputs[1]);
            float(x, "input")?;
            let n = a.spatial_rank();
            if !(1..=2).contains(&n) || x.shape.rank() != n + 2 || w.shape.rank() != n + 2 {
                return Err(format!(
                    "conv{n}d needs input and weight of rank {}, got {x} and {w}",
                    n + 2
                ));
            }
            check_attrs(n, &a.strides, &a.pads, &a.dilations)?;
            if a.groups == 0 {
                return Err("groups must be >= 1".into());
            }
            if let (Some(c), Some(wc), Some(m)) = (x.shape.0[1].known(), w.shape.0[1].known(), w.shape.0[0].known()) {
                if c % a.groups != 0 || m % a.groups != 0 || wc * a.groups != c {
                    return Err(format!(
                        "channels do not fit groups = {}: input {x} has {c} channels, weight {w} expects {wc} per group and {m} outputs",
                        a.groups
                    ));
                }
            }
            if let Some(b) = inputs.get(2) {
                if b.shape.rank() != 1
                    || (b.shape.0[0] != w.shape.0[0]
                        && b.shape.0[0].known().is_some()
                        && w.shape.0[0].known().is_some())
                {
                    return Err(format!(
                        "bias {b} must be 1-D with one entry per output channel of weight {w}"
                    ));
                }
            }
            let mut dims = vec![x.shape.0[0].clone(), w.shape.0[0].clone()];
            dims.extend(spatial_out(
                x,
                &w.shape.0[2..],
                &a.strides,
                &a.pads,
                &a.dilations,
                false,
            )?);
            Ok(vec![TensorType::new(x.dtype, Shape(dims))])
        }
        Op::MaxPool(a) | Op::AvgPool(a) => {
            arity(inputs, 1, 1)?;
            let x = &inputs[0];
            let n = a.kernel.len();
            if matches!(op, Op::AvgPool(_)) {
                float(x, "input")?;
            } else if !x.dtype.is_numeric() {
                return Err(format!("max_pool needs a numeric input, got {x}"));
            }
            if !(1..=2).contains(&n) || x.shape.rank() != n + 2 {
                return Err(format!("{n}-D pooling needs an input of rank {}, got {x}", n + 2));
            }
            check_attrs(n, &a.strides, &a.pads, &a.dilations)?;
            let kernel: Vec<Dim> = a.kernel.iter().map(|&k| Dim::Known(k)).collect();
            let mut dims = x.shape.0[..2].to_vec();
            dims.extend(spatial_out(x, &kernel, &a.strides, &a.pads, &a.dilations, a.ceil_mode)?);
            Ok(vec![TensorType::new(x.dtype, Shape(dims))])
        }
        _ => unreachable!("conv::infer called for {}", op.kind()),
    }
}

impl Graph {
    /// Convolution (`x`: N×C×[H×]W, `weight`: M×C/groups×[kH×]kW, optional `bias`: M).
    pub fn conv(&mut self, x: Value, weight: Value, bias: Option<Value>, attrs: ConvAttrs) -> Result<Value> {
        let mut ins = vec![x, weight];
        ins.extend(bias);
        self.add_op(Op::Conv(attrs), &ins)
    }
    /// Max pooling.
    pub fn max_pool(&mut self, x: Value, attrs: PoolAttrs) -> Result<Value> {
        self.add_op(Op::MaxPool(attrs), &[x])
    }
    /// Average pooling.
    pub fn avg_pool(&mut self, x: Value, attrs: PoolAttrs) -> Result<Value> {
        self.add_op(Op::AvgPool(attrs), &[x])
    }
}
