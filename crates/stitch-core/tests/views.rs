//! Property tests for zero-copy tensor views and broadcasting.
//!
//! Every view (permute, transpose, slice with any step, broadcast_to, reshape,
//! unsqueeze, as_strided) is checked against a naive reference that builds the
//! expected array element by element from multi-indices, on random shapes
//! (rank 0..4, dims 0..5) and random data. The tests also check that views
//! share the buffer and copy nothing, that `write_slice` writes in place and
//! copy-on-writes when the buffer is shared, and that `broadcast_shapes`
//! follows NumPy's rule. Proptest runs with a fixed seed and writes no
//! regression files, so runs are reproducible.

use std::sync::Arc;

use proptest::prelude::*;
use proptest::test_runner::{Config, RngSeed};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use stitch_core::shape::broadcast_shapes;
use stitch_core::{Dim, Shape, Tensor};

fn config(seed: u64) -> Config {
    Config {
        cases: 160,
        failure_persistence: None,
        rng_seed: RngSeed::Fixed(seed),
        ..Config::default()
    }
}

/// A dense array in the simplest form: row-major values and a shape.
#[derive(Clone, Debug, PartialEq)]
struct Nd {
    shape: Vec<usize>,
    data: Vec<f64>,
}

/// Every multi-index of `shape`, in row-major order.
fn indices(shape: &[usize]) -> Vec<Vec<usize>> {
    let mut out = vec![vec![]];
    for &d in shape {
        out = out
            .into_iter()
            .flat_map(|prefix| (0..d).map(move |i| [prefix.clone(), vec![i]].concat()))
            .collect();
    }
    out
}

impl Nd {
    fn from_fn(shape: &[usize], f: impl Fn(&[usize]) -> f64) -> Nd {
        Nd {
            shape: shape.to_vec(),
            data: indices(shape).iter().map(|i| f(i)).collect(),
        }
    }
    fn get(&self, idx: &[usize]) -> f64 {
        assert_eq!(idx.len(), self.shape.len());
        let mut flat = 0;
        for (&i, &d) in idx.iter().zip(&self.shape) {
            assert!(i < d);
            flat = flat * d + i;
        }
        self.data[flat]
    }
    fn of(t: &Tensor) -> Nd {
        Nd {
            shape: t.shape().to_vec(),
            data: t.to_vec::<f64>().unwrap(),
        }
    }
}

fn random_values(r: &mut ChaCha8Rng, n: usize) -> Vec<f64> {
    (0..n).map(|_| r.gen_range(-1000.0..1000.0)).collect()
}

fn random_tensor(r: &mut ChaCha8Rng, shape: &[usize]) -> Tensor {
    Tensor::from_vec(random_values(r, shape.iter().product()), shape).unwrap()
}

fn shape_strategy() -> impl Strategy<Value = Vec<usize>> {
    prop::collection::vec(0usize..5, 0..=4)
}

fn shares(a: &Tensor, b: &Tensor) -> bool {
    Arc::ptr_eq(a.buffer(), b.buffer())
}

// --- naive references -------------------------------------------------------

fn ref_permute(x: &Nd, perm: &[usize]) -> Nd {
    let shape: Vec<usize> = perm.iter().map(|&p| x.shape[p]).collect();
    Nd::from_fn(&shape, |idx| {
        let mut src = vec![0; idx.len()];
        for (i, &p) in perm.iter().enumerate() {
            src[p] = idx[i];
        }
        x.get(&src)
    })
}

/// The indices a slice selects, by walking (Tensor::slice's documented
/// semantics: bounds clamped; a negative step walks down to, not including, end).
fn slice_positions(dim: usize, start: isize, end: isize, step: isize) -> Vec<usize> {
    let d = dim as isize;
    let mut out = Vec::new();
    if step > 0 {
        let (mut i, e) = (start.clamp(0, d), end.clamp(0, d));
        while i < e {
            out.push(i as usize);
            i += step;
        }
    } else {
        let (mut i, e) = (start.clamp(-1, d - 1), end.clamp(-1, d - 1));
        while i > e {
            out.push(i as usize);
            i += step;
        }
    }
    out
}

fn ref_slice(x: &Nd, axis: usize, start: isize, end: isize, step: isize) -> Nd {
    let pos = slice_positions(x.shape[axis], start, end, step);
    let mut shape = x.shape.clone();
    shape[axis] = pos.len();
    Nd::from_fn(&shape, |idx| {
        let mut src = idx.to_vec();
        src[axis] = pos[idx[axis]];
        x.get(&src)
    })
}

fn ref_broadcast(x: &Nd, target: &[usize]) -> Nd {
    let lead = target.len() - x.shape.len();
    Nd::from_fn(target, |idx| {
        let src: Vec<usize> = x
            .shape
            .iter()
            .enumerate()
            .map(|(i, &d)| if d == 1 { 0 } else { idx[lead + i] })
            .collect();
        x.get(&src)
    })
}

fn ref_unsqueeze(x: &Nd, axis: usize) -> Nd {
    let mut shape = x.shape.clone();
    shape.insert(axis, 1);
    Nd::from_fn(&shape, |idx| {
        let mut src = idx.to_vec();
        src.remove(axis);
        x.get(&src)
    })
}

/// NumPy's broadcasting rule, written out directly.
fn naive_broadcast(a: &[usize], b: &[usize]) -> Option<Vec<usize>> {
    let rank = a.len().max(b.len());
    let pad = |s: &[usize]| [vec![1; rank - s.len()], s.to_vec()].concat();
    let (a, b) = (pad(a), pad(b));
    let mut out = Vec::new();
    for i in 0..rank {
        out.push(if a[i] == b[i] {
            a[i]
        } else if a[i] == 1 {
            b[i]
        } else if b[i] == 1 {
            a[i]
        } else {
            return None;
        });
    }
    Some(out)
}

/// A target shape `x` broadcasts to: size-1 axes grow, up to two leading axes appear.
fn broadcast_target(r: &mut ChaCha8Rng, shape: &[usize]) -> Vec<usize> {
    let lead = r.gen_range(0..=2usize.min(6 - shape.len().min(6)));
    let mut target: Vec<usize> = (0..lead).map(|_| r.gen_range(0..4)).collect();
    target.extend(shape.iter().map(|&d| if d == 1 { r.gen_range(0..4) } else { d }));
    target
}

fn random_perm(r: &mut ChaCha8Rng, rank: usize) -> Vec<usize> {
    let mut perm: Vec<usize> = (0..rank).collect();
    for i in (1..rank).rev() {
        perm.swap(i, r.gen_range(0..=i));
    }
    perm
}

/// A random slice of `axis`: bounds a little outside the axis (clamped), steps ±1..±4.
fn random_slice(r: &mut ChaCha8Rng, dim: usize) -> (isize, isize, isize) {
    let d = dim as isize;
    let step = r.gen_range(1..=4) * if r.gen_bool(0.5) { 1 } else { -1 };
    (r.gen_range(-2..=d + 2), r.gen_range(-2..=d + 2), step)
}

/// A random shape with `n` elements: a random split of n's factors, with 1s sprinkled in.
fn random_reshape(r: &mut ChaCha8Rng, n: usize) -> Vec<usize> {
    if n == 0 {
        let mut s: Vec<usize> = (0..r.gen_range(1..=3)).map(|_| r.gen_range(0..4)).collect();
        let at = r.gen_range(0..s.len());
        s[at] = 0;
        return s;
    }
    let mut factors = Vec::new();
    let mut m = n;
    for p in 2..=n {
        while m.checked_rem(p) == Some(0) {
            factors.push(p);
            m /= p;
        }
    }
    let mut shape = Vec::new();
    let mut acc = 1;
    for f in factors {
        acc *= f;
        if r.gen_bool(0.5) {
            shape.push(acc);
            acc = 1;
        }
    }
    shape.push(acc);
    for _ in 0..r.gen_range(0..2) {
        let at = r.gen_range(0..=shape.len());
        shape.insert(at, 1);
    }
    shape
}

// --- properties ---------------------------------------------------------------

proptest! {
    #![proptest_config(config(0x5717c4))]

    #[test]
    fn permute_and_transpose_are_views_matching_the_reference(shape in shape_strategy(), seed in any::<u64>()) {
        let mut r = ChaCha8Rng::seed_from_u64(seed);
        let t = random_tensor(&mut r, &shape);
        let x = Nd::of(&t);
        let perm = random_perm(&mut r, shape.len());
        let p = t.permute(&perm).unwrap();
        prop_assert!(shares(&p, &t));
        prop_assert_eq!(Nd::of(&p), ref_permute(&x, &perm));
        if shape.len() >= 2 {
            let (a, b) = (r.gen_range(0..shape.len()), r.gen_range(0..shape.len()));
            let mut perm: Vec<usize> = (0..shape.len()).collect();
            perm.swap(a, b);
            let tt = t.transpose(a, b).unwrap();
            prop_assert!(shares(&tt, &t));
            prop_assert_eq!(Nd::of(&tt), ref_permute(&x, &perm));
        }
        // Invalid permutations are errors.
        prop_assert!(t.permute(&vec![0; shape.len() + 1]).is_err());
        if shape.len() >= 2 {
            prop_assert!(t.permute(&vec![0; shape.len()]).is_err());
        }
        prop_assert!(t.transpose(0, shape.len()).is_err());
    }

    #[test]
    fn slices_with_positive_and_negative_steps_are_views_matching_the_reference(
        shape in prop::collection::vec(0usize..5, 1..=4), seed in any::<u64>()
    ) {
        let mut r = ChaCha8Rng::seed_from_u64(seed);
        let t = random_tensor(&mut r, &shape);
        let x = Nd::of(&t);
        for _ in 0..4 {
            let axis = r.gen_range(0..shape.len());
            let (start, end, step) = random_slice(&mut r, shape[axis]);
            let s = t.slice(axis, start, end, step).unwrap();
            prop_assert!(shares(&s, &t));
            prop_assert_eq!(Nd::of(&s), ref_slice(&x, axis, start, end, step), "slice({}, {}, {}, {})", axis, start, end, step);
            // Slicing a slice composes.
            let axis2 = r.gen_range(0..shape.len());
            let (start2, end2, step2) = random_slice(&mut r, s.shape()[axis2]);
            let ss = s.slice(axis2, start2, end2, step2).unwrap();
            prop_assert!(shares(&ss, &t));
            prop_assert_eq!(Nd::of(&ss), ref_slice(&ref_slice(&x, axis, start, end, step), axis2, start2, end2, step2));
        }
        // The full reversal, `end = -1` to include index 0.
        let d = shape[0] as isize;
        prop_assert_eq!(Nd::of(&t.slice(0, d - 1, -1, -1).unwrap()), ref_slice(&x, 0, d - 1, -1, -1));
        prop_assert!(t.slice(0, 0, d, 0).is_err());
        prop_assert!(t.slice(shape.len(), 0, 1, 1).is_err());
    }

    #[test]
    fn broadcast_to_is_a_view_matching_the_reference(shape in shape_strategy(), seed in any::<u64>()) {
        let mut r = ChaCha8Rng::seed_from_u64(seed);
        let t = random_tensor(&mut r, &shape);
        let x = Nd::of(&t);
        let target = broadcast_target(&mut r, &shape);
        let b = t.broadcast_to(&target).unwrap();
        prop_assert!(shares(&b, &t));
        prop_assert_eq!(Nd::of(&b), ref_broadcast(&x, &target));
        // Broadcast axes have stride 0: nothing is materialised.
        for (i, &d) in shape.iter().enumerate() {
            let lead = target.len() - shape.len();
            if d == 1 && target[lead + i] != 1 {
                prop_assert_eq!(b.strides()[lead + i], 0);
            }
        }
        // A non-1 axis cannot change size, and the rank cannot shrink.
        if let Some(i) = shape.iter().position(|&d| d != 1) {
            let mut bad = shape.clone();
            bad[i] += 1;
            prop_assert!(t.broadcast_to(&bad).is_err());
        }
        if !shape.is_empty() {
            prop_assert!(t.broadcast_to(&shape[1..]).is_err());
        }
    }

    #[test]
    fn reshape_keeps_row_major_order_and_is_a_view_of_contiguous_tensors(shape in shape_strategy(), seed in any::<u64>()) {
        let mut r = ChaCha8Rng::seed_from_u64(seed);
        let t = random_tensor(&mut r, &shape);
        let n = t.numel();
        let new_shape = random_reshape(&mut r, n);
        let v = t.reshape(&new_shape).unwrap();
        prop_assert_eq!(v.shape(), &new_shape[..]);
        prop_assert_eq!(v.to_vec::<f64>().unwrap(), t.to_vec::<f64>().unwrap());
        // (Empty tensors: see `empty_tensors_are_contiguous_and_contiguous_does_not_copy`.)
        if n > 0 {
            prop_assert!(shares(&v, &t), "reshape of contiguous {:?} to {:?} copied", shape, new_shape);
        }
        // A permuted view reshapes in its logical order.
        let p = t.permute(&random_perm(&mut r, shape.len())).unwrap();
        let pv = p.reshape(&new_shape).unwrap();
        prop_assert_eq!(pv.to_vec::<f64>().unwrap(), p.to_vec::<f64>().unwrap());
        prop_assert!(pv.is_contiguous() || pv.numel() == 0);
        prop_assert!(t.reshape(&[n + 1]).is_err());
    }

    #[test]
    fn unsqueeze_is_a_view_matching_the_reference(shape in shape_strategy(), seed in any::<u64>()) {
        let mut r = ChaCha8Rng::seed_from_u64(seed);
        let t = random_tensor(&mut r, &shape);
        let axis = r.gen_range(0..=shape.len());
        let u = t.unsqueeze(axis).unwrap();
        prop_assert!(shares(&u, &t));
        prop_assert_eq!(Nd::of(&u), ref_unsqueeze(&Nd::of(&t), axis));
        prop_assert!(t.unsqueeze(shape.len() + 1).is_err());
    }

    #[test]
    fn as_strided_matches_the_buffer_formula_and_rejects_out_of_bounds_layouts(
        len in 1usize..40, shape in shape_strategy(), seed in any::<u64>()
    ) {
        let mut r = ChaCha8Rng::seed_from_u64(seed);
        let base = random_tensor(&mut r, &[len]);
        let data = base.to_vec::<f64>().unwrap();
        let strides: Vec<isize> = shape.iter().map(|_| r.gen_range(-4..=4)).collect();
        // The lowest and highest element the layout reaches relative to its offset.
        let (mut lo, mut hi) = (0isize, 0isize);
        for (&d, &s) in shape.iter().zip(&strides) {
            if d > 0 {
                let span = (d as isize - 1) * s;
                if span < 0 { lo += span } else { hi += span }
            }
        }
        let empty = shape.contains(&0);
        let offset = r.gen_range(0..len + 3);
        let fits = empty || (offset as isize + lo >= 0 && offset as isize + hi < len as isize);
        match base.as_strided(&shape, &strides, offset) {
            Ok(v) => {
                prop_assert!(fits, "as_strided accepted {:?} {:?} offset {} over {} elements", shape, strides, offset, len);
                prop_assert!(shares(&v, &base));
                let expected = Nd::from_fn(&shape, |idx| {
                    let at = offset as isize + idx.iter().zip(&strides).map(|(&i, &s)| i as isize * s).sum::<isize>();
                    data[at as usize]
                });
                prop_assert_eq!(Nd::of(&v), expected);
            }
            Err(_) => prop_assert!(!fits, "as_strided rejected a valid layout {:?} {:?} offset {}", shape, strides, offset),
        }
        prop_assert!(base.as_strided(&shape, &[1; 5], 0).is_err());
    }

    #[test]
    fn random_chains_of_views_match_the_reference_and_share_the_buffer(shape in shape_strategy(), seed in any::<u64>()) {
        let mut r = ChaCha8Rng::seed_from_u64(seed);
        let mut t = random_tensor(&mut r, &shape);
        let mut x = Nd::of(&t);
        for _ in 0..6 {
            let rank = t.rank();
            let before = t.clone();
            let mut is_reshape = false;
            let (next, reference) = match r.gen_range(0..5) {
                0 => {
                    let perm = random_perm(&mut r, rank);
                    (t.permute(&perm).unwrap(), ref_permute(&x, &perm))
                }
                1 if rank > 0 => {
                    let axis = r.gen_range(0..rank);
                    let (s, e, st) = random_slice(&mut r, t.shape()[axis]);
                    (t.slice(axis, s, e, st).unwrap(), ref_slice(&x, axis, s, e, st))
                }
                2 if rank < 6 => {
                    let target = broadcast_target(&mut r, t.shape());
                    (t.broadcast_to(&target).unwrap(), ref_broadcast(&x, &target))
                }
                3 if rank < 6 => {
                    let axis = r.gen_range(0..=rank);
                    (t.unsqueeze(axis).unwrap(), ref_unsqueeze(&x, axis))
                }
                _ => {
                    is_reshape = true;
                    let new_shape = random_reshape(&mut r, t.numel());
                    let reshaped = Nd { shape: new_shape.clone(), data: x.data.clone() };
                    (t.reshape(&new_shape).unwrap(), reshaped)
                }
            };
            prop_assert_eq!(Nd::of(&next), reference.clone());
            // Everything but a reshape of a non-contiguous view is zero-copy.
            if !is_reshape || before.is_contiguous() {
                prop_assert!(shares(&next, &before), "{:?} -> {:?} copied", before.shape(), next.shape());
            }
            // contiguous() gives the same elements, without a copy when already contiguous.
            let c = next.contiguous();
            prop_assert_eq!(Nd::of(&c), reference.clone());
            prop_assert!(c.is_contiguous() || c.numel() == 0);
            if next.is_contiguous() {
                prop_assert!(shares(&c, &next));
            }
            t = next;
            x = reference;
        }
    }

    #[test]
    fn contiguous_of_a_fresh_nonempty_tensor_does_not_copy(shape in prop::collection::vec(1usize..5, 0..=4), seed in any::<u64>()) {
        // Empty tensors are covered by `empty_tensors_are_contiguous_and_contiguous_does_not_copy`.
        let mut r = ChaCha8Rng::seed_from_u64(seed);
        let t = random_tensor(&mut r, &shape);
        prop_assert!(t.is_contiguous());
        let c = t.contiguous();
        prop_assert!(shares(&c, &t));
        prop_assert_eq!(c.as_slice::<f64>().unwrap(), t.as_slice::<f64>().unwrap());
        // contiguous_copy always copies.
        let cc = t.contiguous_copy();
        prop_assert!(!shares(&cc, &t));
        prop_assert_eq!(cc.to_vec::<f64>().unwrap(), t.to_vec::<f64>().unwrap());
    }

    #[test]
    fn write_slice_writes_only_the_target_region_in_place(
        shape in prop::collection::vec(1usize..5, 0..=4), seed in any::<u64>()
    ) {
        let mut r = ChaCha8Rng::seed_from_u64(seed);
        // The destination is a strided view (permuted, maybe reversed) whose buffer
        // nothing else holds, with buffer elements outside the view.
        let rank = shape.len();
        let mut padded = shape.clone();
        if rank > 0 {
            padded[0] = shape[0] * 2;
        }
        let base = random_tensor(&mut r, &padded);
        let mut dst = if rank > 0 { base.slice(0, 0, padded[0] as isize, 2).unwrap() } else { base.clone() };
        if rank > 0 && r.gen_bool(0.5) {
            let last = rank - 1;
            dst = dst.slice(last, shape[last] as isize - 1, -1, -1).unwrap();
        }
        dst = dst.permute(&random_perm(&mut r, rank)).unwrap();
        let buffer_before = base.buffer().as_slice::<f64>().to_vec();
        drop(base);
        let dshape = dst.shape().to_vec();
        let starts: Vec<usize> = dshape.iter().map(|&d| r.gen_range(0..=d)).collect();
        let src_shape: Vec<usize> = dshape.iter().zip(&starts).map(|(&d, &s)| r.gen_range(0..=d - s)).collect();
        // The source may itself be a non-contiguous view.
        let src = if r.gen_bool(0.5) {
            let perm = random_perm(&mut r, rank);
            let mut inv = vec![0; rank];
            for (i, &p) in perm.iter().enumerate() {
                inv[p] = i;
            }
            let pre: Vec<usize> = inv.iter().map(|&i| src_shape[i]).collect();
            random_tensor(&mut r, &pre).permute(&perm).unwrap()
        } else {
            random_tensor(&mut r, &src_shape)
        };
        prop_assert_eq!(src.shape(), &src_shape[..]);

        let before = Nd::of(&dst);
        let src_nd = Nd::of(&src);
        let expected = Nd::from_fn(&dshape, |idx| {
            let inside = idx.iter().zip(&starts).zip(&src_shape).all(|((&i, &s), &n)| i >= s && i < s + n);
            if inside {
                let rel: Vec<usize> = idx.iter().zip(&starts).map(|(&i, &s)| i - s).collect();
                src_nd.get(&rel)
            } else {
                before.get(idx)
            }
        });
        // Buffer elements outside the view must not change.
        let mut expected_buffer = buffer_before.clone();
        for (idx, v) in indices(&dshape).iter().zip(&expected.data) {
            let at = dst.offset() as isize + idx.iter().zip(dst.strides()).map(|(&i, &s)| i as isize * s).sum::<isize>();
            expected_buffer[at as usize] = *v;
        }

        let address = dst.buffer().as_ptr();
        let arc = Arc::as_ptr(dst.buffer());
        dst.write_slice(&starts, &src).unwrap();
        prop_assert_eq!(Nd::of(&dst), expected);
        prop_assert_eq!(dst.buffer().as_ptr(), address, "unshared write_slice reallocated");
        prop_assert_eq!(Arc::as_ptr(dst.buffer()), arc);
        prop_assert_eq!(dst.buffer().as_slice::<f64>(), &expected_buffer[..]);

        // Shapes that do not fit are errors and leave the tensor alone.
        if rank > 0 {
            let mut too_far = starts.clone();
            too_far[0] = dshape[0] - src_shape[0] + 1;
            prop_assert!(dst.write_slice(&too_far, &src).is_err());
            prop_assert!(dst.write_slice(&starts[1..], &src).is_err());
            prop_assert_eq!(dst.buffer().as_slice::<f64>(), &expected_buffer[..]);
        }
    }

    #[test]
    fn write_slice_on_a_shared_buffer_copies_on_write(
        shape in prop::collection::vec(1usize..5, 1..=4), seed in any::<u64>()
    ) {
        let mut r = ChaCha8Rng::seed_from_u64(seed);
        let original = random_tensor(&mut r, &shape);
        let old = Nd::of(&original);
        // Another holder: a view of the same buffer.
        let other = original.permute(&random_perm(&mut r, shape.len())).unwrap();
        let other_old = Nd::of(&other);
        let mut dst = original.clone();
        let starts: Vec<usize> = shape.iter().map(|&d| r.gen_range(0..d)).collect();
        let src_shape: Vec<usize> = shape.iter().zip(&starts).map(|(&d, &s)| r.gen_range(1..=d - s)).collect();
        let src = random_tensor(&mut r, &src_shape);
        dst.write_slice(&starts, &src).unwrap();
        prop_assert!(!shares(&dst, &original));
        prop_assert_eq!(Nd::of(&original), old.clone());
        prop_assert_eq!(Nd::of(&other), other_old);
        let src_nd = Nd::of(&src);
        let expected = Nd::from_fn(&shape, |idx| {
            if idx.iter().zip(&starts).zip(&src_shape).all(|((&i, &s), &n)| i >= s && i < s + n) {
                src_nd.get(&idx.iter().zip(&starts).map(|(&i, &s)| i - s).collect::<Vec<_>>())
            } else {
                old.get(idx)
            }
        });
        prop_assert_eq!(Nd::of(&dst), expected);

        // Writing a view of itself into itself reads the old values (no aliasing surprises).
        let mut t = original.clone();
        let shifted = original.slice(0, 1, shape[0] as isize, 1).unwrap();
        let starts0 = vec![0; shape.len()];
        t.write_slice(&starts0, &shifted).unwrap();
        let expected = Nd::from_fn(&shape, |idx| {
            if idx[0] + 1 < shape[0] {
                let mut src = idx.to_vec();
                src[0] += 1;
                old.get(&src)
            } else {
                old.get(idx)
            }
        });
        prop_assert_eq!(Nd::of(&t), expected);
        prop_assert_eq!(Nd::of(&original), old);
    }

    #[test]
    fn broadcast_shapes_follows_numpy_and_is_symmetric(a in shape_strategy(), b in shape_strategy(), seed in any::<u64>()) {
        // Make compatible pairs common: copy some of a's dims into b, set some to 1.
        let mut r = ChaCha8Rng::seed_from_u64(seed);
        let mut b = b;
        for i in 0..b.len().min(a.len()) {
            let (ia, ib) = (a.len() - 1 - i, b.len() - 1 - i);
            match r.gen_range(0..3) {
                0 => b[ib] = a[ia],
                1 => b[ib] = 1,
                _ => {}
            }
        }
        let expected = naive_broadcast(&a, &b);
        let ab = broadcast_shapes(&Shape::known(&a), &Shape::known(&b));
        let ba = broadcast_shapes(&Shape::known(&b), &Shape::known(&a));
        prop_assert_eq!(ab.clone(), expected.as_deref().map(Shape::known));
        prop_assert_eq!(ab, ba);
        // The broadcast shape is one both tensors can broadcast_to, with numpy's values.
        if let Some(out) = expected {
            let (ta, tb) = (random_tensor(&mut r, &a), random_tensor(&mut r, &b));
            prop_assert_eq!(Nd::of(&ta.broadcast_to(&out).unwrap()), ref_broadcast(&Nd::of(&ta), &out));
            prop_assert_eq!(Nd::of(&tb.broadcast_to(&out).unwrap()), ref_broadcast(&Nd::of(&tb), &out));
        }
    }
}

#[test]
fn broadcast_shapes_with_symbols_is_symmetric_against_known_dims() {
    let n = Dim::sym("n");
    let cases = [
        (
            vec![n.clone(), Dim::Known(1)],
            vec![Dim::Known(4)],
            Some(vec![n.clone(), Dim::Known(4)]),
        ),
        (vec![n.clone()], vec![Dim::Known(1)], Some(vec![n.clone()])),
        (vec![n.clone()], vec![Dim::Known(3)], Some(vec![Dim::Known(3)])),
        (vec![n.clone()], vec![n.clone()], Some(vec![n.clone()])),
        (vec![Dim::Known(2), n.clone()], vec![Dim::Known(3), Dim::Known(1)], None),
        (
            vec![],
            vec![n.clone(), Dim::Known(0)],
            Some(vec![n.clone(), Dim::Known(0)]),
        ),
    ];
    for (a, b, want) in cases {
        let (a, b) = (Shape::from(a), Shape::from(b));
        let want = want.map(Shape::from);
        assert_eq!(broadcast_shapes(&a, &b), want, "{a} with {b}");
        assert_eq!(broadcast_shapes(&b, &a), want, "{b} with {a}");
    }
}

#[test]
fn views_of_views_keep_sharing_until_a_write() {
    let mut r = ChaCha8Rng::seed_from_u64(21);
    let t = random_tensor(&mut r, &[3, 4, 2]);
    let v = t
        .permute(&[2, 0, 1])
        .unwrap()
        .slice(2, 3, -1, -2)
        .unwrap()
        .unsqueeze(1)
        .unwrap()
        .broadcast_to(&[2, 5, 3, 2])
        .unwrap();
    assert!(shares(&v, &t));
    assert_eq!(Arc::strong_count(t.buffer()), 2);
    let mut w = v.slice(1, 0, 1, 1).unwrap();
    let patch = random_tensor(&mut r, &[1, 1, 1, 1]);
    w.write_slice(&[1, 0, 2, 1], &patch).unwrap();
    assert!(!shares(&w, &t));
    assert_eq!(w.get_f64(&[1, 0, 2, 1]).unwrap(), patch.get_f64(&[0, 0, 0, 0]).unwrap());
    assert_eq!(v.get_f64(&[1, 0, 2, 1]).unwrap(), t.get_f64(&[2, 1, 1]).unwrap());
}

// --- regressions for bugs in tensor.rs (see the report) -----------------------

#[test]
fn empty_tensors_are_contiguous_and_contiguous_does_not_copy() {
    for shape in [&[0][..], &[0, 3], &[3, 0], &[2, 0, 4], &[2, 3, 0]] {
        let t = Tensor::zeros(stitch_core::DType::F32, shape);
        assert!(t.is_contiguous(), "fresh {shape:?} tensor is not contiguous");
        assert!(t.as_slice::<f32>().unwrap().is_empty());
        assert!(
            shares(&t.contiguous(), &t),
            "contiguous() of a fresh {shape:?} tensor copied"
        );
    }
}

#[test]
fn empty_strided_views_give_empty_slices_whatever_their_offset() {
    let t = Tensor::from_vec(vec![1.0f32, 2.0, 3.0], &[3]).unwrap();
    // No element is reachable, so as_strided accepts any offset ...
    let v = t.as_strided(&[0], &[1], 1000).unwrap();
    // ... and reading the (empty) view must not index past the buffer.
    assert!(v.as_slice::<f32>().unwrap().is_empty());
    assert!(v.to_vec::<f32>().unwrap().is_empty());
}

#[test]
fn slices_with_extreme_steps_do_not_overflow() {
    let t = Tensor::from_vec(vec![1i32, 2, 3, 4, 5], &[5]).unwrap();
    assert_eq!(t.slice(0, 1, 5, isize::MAX).unwrap().to_vec::<i32>().unwrap(), vec![2]);
    assert_eq!(t.slice(0, 4, -1, isize::MIN).unwrap().to_vec::<i32>().unwrap(), vec![5]);
    assert_eq!(
        t.slice(0, 4, -1, -isize::MAX).unwrap().to_vec::<i32>().unwrap(),
        vec![5]
    );
}

#[test]
fn as_strided_with_huge_strides_is_an_error_not_a_panic() {
    let t = Tensor::from_vec(vec![1i32, 2, 3, 4, 5], &[5]).unwrap();
    assert!(t.as_strided(&[3], &[isize::MAX], 0).is_err());
    assert!(t.as_strided(&[3], &[isize::MIN], 4).is_err());
    assert!(t.as_strided(&[usize::MAX], &[1], 0).is_err());
    assert!(t
        .as_strided(&[2, 2], &[isize::MAX / 2 + 1, isize::MAX / 2 + 1], 0)
        .is_err());
}

#[test]
fn shapes_whose_element_count_overflows_are_errors_not_panics() {
    let t = Tensor::from_vec(vec![1i32], &[1]).unwrap();
    let huge = [usize::MAX, 2];
    assert!(t.reshape(&huge).is_err());
    assert!(Tensor::from_vec(Vec::<i32>::new(), &[1 << 32, 1 << 32]).is_err());
    assert!(t.as_strided(&huge, &[0, 0], 0).is_err());
    assert!(t.broadcast_to(&huge).is_err());
}
