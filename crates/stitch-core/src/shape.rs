//! Shapes whose dimensions may be symbolic.
//!
//! Graph types carry a [`Shape`] of [`Dim`]s: a dimension is either known or a
//! named symbol (`batch`, `seq`). Tensors at run time always have concrete
//! shapes (`&[usize]`). Shape inference is written once over `Dim`, so the same
//! code types a graph symbolically at build time and concretely at run time.

use std::fmt;
use std::sync::Arc;

/// One dimension of a [`Shape`].
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Dim {
    /// A known size.
    Known(usize),
    /// A size known only at run time, named. Two `Sym`s with the same name are equal.
    Sym(Arc<str>),
}

impl Dim {
    /// A symbolic dimension.
    pub fn sym(name: &str) -> Dim {
        Dim::Sym(Arc::from(name))
    }
    /// The size, if known.
    pub fn known(&self) -> Option<usize> {
        match self {
            Dim::Known(n) => Some(*n),
            Dim::Sym(_) => None,
        }
    }
    /// True if this is `Known(n)`.
    pub fn is(&self, n: usize) -> bool {
        self.known() == Some(n)
    }
}

impl From<usize> for Dim {
    fn from(n: usize) -> Dim {
        Dim::Known(n)
    }
}
impl From<&str> for Dim {
    fn from(s: &str) -> Dim {
        Dim::sym(s)
    }
}

impl fmt::Display for Dim {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Dim::Known(n) => write!(f, "{n}"),
            Dim::Sym(s) => f.write_str(s),
        }
    }
}

/// A shape: a list of dimensions, possibly symbolic.
///
/// ```
/// use stitch_core::{Dim, Shape};
/// let s = Shape::from(vec![Dim::sym("batch"), Dim::Known(4)]);
/// assert_eq!(s.to_string(), "[batch, 4]");
/// assert_eq!(s.rank(), 2);
/// assert!(s.concrete().is_none());
/// assert_eq!(Shape::known(&[2, 3]).concrete(), Some(vec![2, 3]));
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Hash, Default)]
pub struct Shape(pub Vec<Dim>);

impl Shape {
    /// A shape of known dimensions.
    pub fn known(dims: &[usize]) -> Shape {
        Shape(dims.iter().map(|&d| Dim::Known(d)).collect())
    }
    /// A rank-0 shape.
    pub fn scalar() -> Shape {
        Shape(Vec::new())
    }
    /// Number of dimensions.
    pub fn rank(&self) -> usize {
        self.0.len()
    }
    /// The dimensions.
    pub fn dims(&self) -> &[Dim] {
        &self.0
    }
    /// The concrete sizes, if every dimension is known.
    pub fn concrete(&self) -> Option<Vec<usize>> {
        self.0.iter().map(Dim::known).collect()
    }
    /// Number of elements, if every dimension is known.
    pub fn numel(&self) -> Option<usize> {
        self.0.iter().try_fold(1usize, |n, d| d.known().map(|d| n * d))
    }
    /// Names of the symbolic dimensions, in order of appearance.
    pub fn symbols(&self) -> Vec<Arc<str>> {
        self.0
            .iter()
            .filter_map(|d| match d {
                Dim::Sym(s) => Some(s.clone()),
                Dim::Known(_) => None,
            })
            .collect()
    }
}

impl From<Vec<Dim>> for Shape {
    fn from(v: Vec<Dim>) -> Shape {
        Shape(v)
    }
}
impl From<&[usize]> for Shape {
    fn from(v: &[usize]) -> Shape {
        Shape::known(v)
    }
}
impl<const N: usize> From<[usize; N]> for Shape {
    fn from(v: [usize; N]) -> Shape {
        Shape::known(&v)
    }
}
impl From<Vec<usize>> for Shape {
    fn from(v: Vec<usize>) -> Shape {
        Shape::known(&v)
    }
}

impl fmt::Display for Shape {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("[")?;
        for (i, d) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str(", ")?;
            }
            write!(f, "{d}")?;
        }
        f.write_str("]")
    }
}

/// Normalises a possibly negative axis against `rank` (`-1` is the last axis).
pub fn normalize_axis(axis: i64, rank: usize) -> Option<usize> {
    let r = rank as i64;
    let a = if axis < 0 { axis + r } else { axis };
    (0..r).contains(&a).then_some(a as usize)
}

/// Numpy broadcasting of two dimensions; `None` if incompatible.
///
/// A symbolic dim broadcast against 1 stays symbolic; against a known n > 1 it
/// is assumed to equal n (checked again at run time with concrete shapes).
pub fn broadcast_dim(a: &Dim, b: &Dim) -> Option<Dim> {
    match (a, b) {
        (Dim::Known(1), d) | (d, Dim::Known(1)) => Some(d.clone()),
        (Dim::Known(x), Dim::Known(y)) => (x == y).then_some(Dim::Known(*x)),
        (Dim::Sym(x), Dim::Sym(y)) if x == y => Some(a.clone()),
        (Dim::Sym(_), Dim::Known(n)) | (Dim::Known(n), Dim::Sym(_)) => Some(Dim::Known(*n)),
        // Two different symbols: either could be 1; keep the first. Checked at run time.
        (Dim::Sym(_), Dim::Sym(_)) => Some(a.clone()),
    }
}

/// Numpy broadcasting of two shapes (right-aligned); `None` if incompatible.
///
/// ```
/// use stitch_core::{shape::broadcast_shapes, Shape};
/// let s = broadcast_shapes(&Shape::known(&[2, 1, 4]), &Shape::known(&[3, 1])).unwrap();
/// assert_eq!(s, Shape::known(&[2, 3, 4]));
/// assert!(broadcast_shapes(&Shape::known(&[2]), &Shape::known(&[3])).is_none());
/// ```
pub fn broadcast_shapes(a: &Shape, b: &Shape) -> Option<Shape> {
    let rank = a.rank().max(b.rank());
    let one = Dim::Known(1);
    let mut out = Vec::with_capacity(rank);
    for i in 0..rank {
        let da = if i + a.rank() >= rank {
            &a.0[i + a.rank() - rank]
        } else {
            &one
        };
        let db = if i + b.rank() >= rank {
            &b.0[i + b.rank() - rank]
        } else {
            &one
        };
        out.push(broadcast_dim(da, db)?);
    }
    Some(Shape(out))
}

/// Row-major (C-order) strides, in elements, for a concrete shape.
pub fn contiguous_strides(shape: &[usize]) -> Vec<isize> {
    let mut strides = vec![0isize; shape.len()];
    let mut acc = 1isize;
    for i in (0..shape.len()).rev() {
        strides[i] = acc;
        acc *= shape[i].max(1) as isize;
    }
    strides
}
