//! The attention → sdpa rewrite keeps results: hand-written attention subgraphs
//! (every scaling and mask form the rule knows, explicit or folded transposes of
//! k, grouped-query heads) are run on the CPU before and after the rewrite, and
//! sdpa's own decomposition is rewritten back and run against the original.
//!
//! The pass is applied by hand and the rewritten graph compiled separately;
//! the expected side is the original graph compiled as the op-by-op reference
//! (compiling runs the rewrite too, and the reference decomposes the sdpa back
//! into primitives).

mod common;

use std::sync::Arc;

use stitch_core::ops::BinaryOp;
use stitch_core::ops::SdpaAttrs;
use stitch_core::passes::decompose::decompose;
use stitch_core::passes::rewrite::{attention_to_sdpa, rewrite, softmax_from_primitives, Rule};
use stitch_core::{CompileOptions, DType, Executable, Graph, Op, Tensor, Value};
use stitch_cpu::CpuBackend;

fn run_with(g: &Graph, outs: &[Value], feeds: &[(&str, Tensor)], options: CompileOptions) -> Vec<Tensor> {
    let exe = Executable::compile(g, outs, Arc::new(CpuBackend::new()), options).unwrap();
    exe.run(feeds, &mut exe.new_state()).unwrap()
}

/// The graph as compiled by default (rewritten, fused).
fn run(g: &Graph, outs: &[Value], feeds: &[(&str, Tensor)]) -> Vec<Tensor> {
    run_with(g, outs, feeds, CompileOptions::default())
}

/// The op-by-op reference of the graph.
fn reference(g: &Graph, outs: &[Value], feeds: &[(&str, Tensor)]) -> Vec<Tensor> {
    run_with(g, outs, feeds, CompileOptions::reference())
}

fn count(g: &Graph, kind: &str) -> usize {
    g.nodes().iter().filter(|n| n.op.kind() == kind).count()
}

/// A bool mask with a random pattern but at least one key allowed per query row
/// (a fully masked row is NaN on both sides and would compare nothing).
fn bool_mask(r: &mut rand_chacha::ChaCha8Rng, shape: &[usize]) -> Tensor {
    let t = common::random(r, DType::Bool, shape);
    let lk = *shape.last().unwrap();
    let v: Vec<f64> = t
        .to_f64_vec()
        .iter()
        .enumerate()
        .map(|(i, &x)| if i % lk == 0 { 1.0 } else { x })
        .collect();
    Tensor::from_f64(DType::Bool, &v, shape).unwrap()
}

#[derive(Debug, Clone, Copy)]
enum Scale {
    None,
    MulAfter,
    MulBefore,
    Div,
}

#[derive(Debug, Clone, Copy)]
enum Mask {
    None,
    Additive,
    AdditiveFirst,
    Bool,
}

#[derive(Debug, Clone, Copy)]
struct Case {
    scale: Scale,
    mask: Mask,
    explicit_transpose: bool,
    /// Key/value heads; below the query heads they are expanded by hand.
    kv_heads: usize,
    dtype: DType,
}

const BATCH: usize = 2;
const HEADS: usize = 4;
const LQ: usize = 3;
const LK: usize = 7;
const D: usize = 8;
const DV: usize = 5;

/// Builds the case's attention graph and random inputs for it.
fn build(case: Case, seed: u64) -> (Graph, Value, Vec<(&'static str, Tensor)>) {
    let mut r = common::rng(seed);
    let dt = case.dtype;
    let hkv = case.kv_heads;
    let mut g = Graph::new();
    let q = g.placeholder("q", dt, [BATCH, HEADS, LQ, D]);
    let mut k = g.placeholder("k", dt, [BATCH, hkv, LK, D]);
    let mut v = g.placeholder("v", dt, [BATCH, hkv, LK, DV]);
    let mut feeds = vec![
        ("q", common::random(&mut r, dt, &[BATCH, HEADS, LQ, D])),
        ("k", common::random(&mut r, dt, &[BATCH, hkv, LK, D])),
        ("v", common::random(&mut r, dt, &[BATCH, hkv, LK, DV])),
    ];
    if hkv != HEADS {
        let group = HEADS / hkv;
        for (x, d) in [(&mut k, D), (&mut v, DV)] {
            let u = g.unsqueeze(*x, &[2]).unwrap();
            let e = g.expand(u, &[BATCH, hkv, group, LK, d]).unwrap();
            *x = g
                .reshape(e, &[BATCH as i64, HEADS as i64, LK as i64, d as i64])
                .unwrap();
        }
    }
    let mut s = if case.explicit_transpose {
        let kt = g.transpose(k, &[0, 1, 3, 2]).unwrap();
        g.matmul(q, kt).unwrap()
    } else {
        g.matmul_t(q, k, false, true).unwrap()
    };
    match case.scale {
        Scale::None => {}
        Scale::MulAfter => {
            let c = g.scalar(dt, 0.3);
            s = g.mul(s, c).unwrap();
        }
        Scale::MulBefore => {
            let c = g.scalar(dt, 0.7);
            s = g.mul(c, s).unwrap();
        }
        Scale::Div => {
            let c = g.scalar(dt, (D as f64).sqrt());
            s = g.div(s, c).unwrap();
        }
    }
    match case.mask {
        Mask::None => {}
        Mask::Additive | Mask::AdditiveFirst => {
            // Broadcast over heads, with some -inf entries as a padding mask would have.
            let shape = [BATCH, 1, LQ, LK];
            let m = g.placeholder("mask", dt, shape);
            let mut vals = common::random(&mut r, dt, &shape).to_f64_vec();
            for (i, x) in vals.iter_mut().enumerate() {
                if i % LK == LK - 1 && i % 2 == 0 {
                    *x = f64::NEG_INFINITY;
                }
            }
            feeds.push(("mask", Tensor::from_f64(dt, &vals, &shape).unwrap()));
            s = if matches!(case.mask, Mask::AdditiveFirst) {
                g.add(m, s).unwrap()
            } else {
                g.add(s, m).unwrap()
            };
        }
        Mask::Bool => {
            let m = g.placeholder("mask", DType::Bool, [LQ, LK]);
            feeds.push(("mask", bool_mask(&mut r, &[LQ, LK])));
            let ninf = g.scalar(dt, f64::NEG_INFINITY);
            s = g.where_(m, s, ninf).unwrap();
        }
    }
    let p = g.softmax(s, -1).unwrap();
    let o = g.matmul(p, v).unwrap();
    (g, o, feeds)
}

fn assert_same(case: impl std::fmt::Debug, got: &Tensor, expected: &Tensor) {
    let (rtol, atol) = match expected.dtype() {
        DType::F64 => (1e-12, 1e-12),
        _ => (1e-5, 1e-5),
    };
    common::assert_close_tol(
        got,
        &expected.to_f64_vec(),
        expected.shape(),
        rtol,
        atol,
        &format!("{case:?}"),
    );
}

#[test]
fn rewritten_attention_computes_the_same_as_the_hand_written_graph() {
    let scales = [Scale::None, Scale::MulAfter, Scale::MulBefore, Scale::Div];
    let masks = [Mask::None, Mask::Additive, Mask::AdditiveFirst, Mask::Bool];
    let mut seed = 0;
    for (i, &scale) in scales.iter().enumerate() {
        for (j, &mask) in masks.iter().enumerate() {
            seed += 1;
            let case = Case {
                scale,
                mask,
                explicit_transpose: (i + j) % 2 == 0,
                kv_heads: if j == 3 { 2 } else { HEADS },
                dtype: if (i, j) == (3, 1) { DType::F64 } else { DType::F32 },
            };
            let (g, o, feeds) = build(case, seed);
            let (rg, routs, n) = rewrite(&g, &[o], &[&attention_to_sdpa()]).unwrap();
            assert_eq!(n, 1, "{case:?}");
            assert_eq!(count(&rg, "sdpa"), 1, "{case:?}");
            assert_eq!(
                count(&rg, "softmax") + count(&rg, "matmul") + count(&rg, "expand"),
                0,
                "{case:?}"
            );
            let Op::Sdpa(attrs) = rg.node(routs[0].node).op else {
                panic!("{case:?}: the output is not the sdpa")
            };
            assert!(!attrs.causal);
            let expected = reference(&g, &[o], &feeds);
            let got = run(&rg, &routs, &feeds);
            assert_same(case, &got[0], &expected[0]);
        }
    }
}

/// Attention as PyTorch exports `scaled_dot_product_attention` to ONNX (e.g.
/// all-MiniLM-L6-v2): q and kᵀ each scaled by √scale, kᵀ written as
/// reshape → transpose → reshape, an additive 0/−∞ mask, and the softmax's
/// NaN rows (every key masked) zeroed with `where(isnan(p), 0, p)`.
#[test]
fn pytorch_exported_attention_becomes_sdpa_and_keeps_fully_masked_rows_zero() {
    const L: usize = 12;
    let mut r = common::rng(7);
    let mut g = Graph::new();
    // q, k and v arrive as [B, L, H, D] projections transposed to [B, H, L, D]
    // (strided views the kernel reads in place).
    let mut heads = |name: &str, d: usize| {
        let x = g.placeholder(name, DType::F32, [BATCH, L, HEADS, d]);
        g.transpose(x, &[0, 2, 1, 3]).unwrap()
    };
    let (q, k, v) = (heads("q", D), heads("k", D), heads("v", DV));
    let mask = g.placeholder("mask", DType::F32, [BATCH, 1, L, L]);
    let c = g.scalar(DType::F32, (1.0 / (D as f64).sqrt()).sqrt());
    let qs = g.mul(q, c).unwrap();
    let kr = g.reshape(k, &[(BATCH * HEADS) as i64, L as i64, D as i64]).unwrap();
    let kt = g.transpose(kr, &[0, 2, 1]).unwrap();
    let kt = g
        .reshape(kt, &[BATCH as i64, HEADS as i64, D as i64, L as i64])
        .unwrap();
    let ks = g.mul(kt, c).unwrap();
    let s = g.matmul(qs, ks).unwrap();
    let s = g.add(s, mask).unwrap();
    let p = g.softmax(s, -1).unwrap();
    let is_nan = g.add_op(Op::Binary(BinaryOp::NotEqual), &[p, p]).unwrap();
    let zero = g.scalar(DType::F32, 0.0);
    let p = g.where_(is_nan, zero, p).unwrap();
    let o = g.matmul(p, v).unwrap();

    // Padding masks: batch 0 attends to 9 keys, batch 1 to 5; batch 1's query
    // rows past 5 attend to nothing (as `and(mask_row, mask_col)` makes them).
    let mut m = vec![0.0; BATCH * L * L];
    for (i, x) in m.iter_mut().enumerate() {
        let (b, row, key) = (i / (L * L), (i / L) % L, i % L);
        let len = if b == 0 { 9 } else { 5 };
        if key >= len || (b == 1 && row >= len) {
            *x = f64::NEG_INFINITY;
        }
    }
    let feeds = vec![
        ("q", common::random(&mut r, DType::F32, &[BATCH, L, HEADS, D])),
        ("k", common::random(&mut r, DType::F32, &[BATCH, L, HEADS, D])),
        ("v", common::random(&mut r, DType::F32, &[BATCH, L, HEADS, DV])),
        ("mask", Tensor::from_f64(DType::F32, &m, &[BATCH, 1, L, L]).unwrap()),
    ];

    let (rg, routs, n) = rewrite(&g, &[o], &[&attention_to_sdpa()]).unwrap();
    assert_eq!(n, 1);
    assert_eq!(count(&rg, "sdpa"), 1);
    for gone in ["softmax", "matmul", "mul", "reshape"] {
        assert_eq!(count(&rg, gone), 0, "{gone} left");
    }
    assert_eq!(count(&rg, "transpose"), 3, "only the three head transposes are left");
    let sdpa = rg.nodes().iter().find(|n| n.op.kind() == "sdpa").unwrap();
    let Op::Sdpa(attrs) = sdpa.op else { unreachable!() };
    assert!((attrs.scale.unwrap() - 1.0 / (D as f64).sqrt()).abs() < 1e-6);
    let producers: Vec<String> = sdpa.inputs.iter().map(|v| rg.node(v.node).op.kind()).collect();
    assert_eq!(
        producers,
        ["transpose", "transpose", "transpose", "placeholder"],
        "k is read untransposed"
    );

    let expected = reference(&g, &[o], &feeds);
    let got = run(&rg, &routs, &feeds);
    assert_same("pytorch export", &got[0], &expected[0]);
    let out = got[0].to_f64_vec();
    let row = |b: usize, h: usize, i: usize| &out[((b * HEADS + h) * L + i) * DV..][..DV];
    assert!(row(1, 2, 7).iter().all(|&x| x == 0.0), "fully masked rows are zero");
    assert!(row(1, 2, 3).iter().all(|&x| x != 0.0 && x.is_finite()));
}

#[test]
fn rewrite_leaves_surrounding_nodes_and_extra_outputs_intact() {
    let case = Case {
        scale: Scale::MulAfter,
        mask: Mask::Bool,
        explicit_transpose: true,
        kv_heads: HEADS,
        dtype: DType::F32,
    };
    let (mut g, o, feeds) = build(case, 99);
    // The attention output feeds two consumers, and q feeds another output too.
    let q = g.placeholders()[0].1;
    let y = g.tanh(o).unwrap();
    let z = g.add(o, y).unwrap();
    let w = g.exp(q).unwrap();
    let outs = [z, o, w];
    let (rg, routs, n) = rewrite(&g, &outs, &[&attention_to_sdpa()]).unwrap();
    assert_eq!(n, 1);
    for (old, new) in outs.iter().zip(&routs) {
        assert_eq!(rg.node(new.node).name, g.node(old.node).name);
    }
    let expected = reference(&g, &outs, &feeds);
    let got = run(&rg, &routs, &feeds);
    for (e, a) in expected.iter().zip(&got) {
        assert_same(case, a, e);
    }
}

#[test]
fn decomposed_sdpa_is_rewritten_back_and_matches_the_original() {
    let rules: [&dyn Rule; 2] = [&softmax_from_primitives(), &attention_to_sdpa()];
    // A causal sdpa decomposes into `where(iota <= iota, scores, -inf)`: a bool mask to the rule.
    let cases = [
        (HEADS, false, None, false),
        (HEADS, true, Some(0.2), false),
        (1, true, None, false),
        (2, false, None, true),
    ];
    for (seed, (hkv, bool_mask_given, scale, causal)) in cases.into_iter().enumerate() {
        let mut r = common::rng(100 + seed as u64);
        let mut g = Graph::new();
        let q = g.placeholder("q", DType::F32, [BATCH, HEADS, LQ, D]);
        let k = g.placeholder("k", DType::F32, [BATCH, hkv, LK, D]);
        let v = g.placeholder("v", DType::F32, [BATCH, hkv, LK, DV]);
        let mut feeds = vec![
            ("q", common::random(&mut r, DType::F32, &[BATCH, HEADS, LQ, D])),
            ("k", common::random(&mut r, DType::F32, &[BATCH, hkv, LK, D])),
            ("v", common::random(&mut r, DType::F32, &[BATCH, hkv, LK, DV])),
        ];
        let mask = bool_mask_given.then(|| {
            feeds.push(("mask", bool_mask(&mut r, &[BATCH, 1, LQ, LK])));
            g.placeholder("mask", DType::Bool, [BATCH, 1, LQ, LK])
        });
        let attrs = SdpaAttrs { scale, causal };
        let o = g.sdpa(q, k, v, mask, attrs).unwrap();
        let what = format!("kv heads {hkv}, mask {bool_mask_given}, scale {scale:?}, causal {causal}");

        let (dg, douts) = decompose(&g, &[o], &|_| false).unwrap();
        assert_eq!(count(&dg, "sdpa") + count(&dg, "softmax"), 0, "{what}");
        let (rg, routs, n) = rewrite(&dg, &douts, &rules).unwrap();
        assert_eq!(n, 2, "{what}: softmax then sdpa");
        if !causal {
            let only_inputs_and_sdpa = 4 + usize::from(bool_mask_given);
            assert_eq!(rg.nodes().len(), only_inputs_and_sdpa, "{what}");
        }
        let sdpa = rg.node(routs[0].node);
        let Op::Sdpa(got) = sdpa.op else {
            panic!("{what}: output is not an sdpa")
        };
        assert!(!got.causal, "{what}");
        let mask_inputs = usize::from(bool_mask_given || causal);
        assert_eq!(sdpa.inputs.len(), 3 + mask_inputs, "{what}");
        let want = scale.unwrap_or(1.0 / (D as f64).sqrt());
        // The scale went through an f32 constant.
        assert!(
            (got.scale.unwrap() - want).abs() < 1e-6,
            "{what}: scale {:?}",
            got.scale
        );

        let expected = reference(&g, &[o], &feeds);
        let decomposed = run(&dg, &douts, &feeds);
        let rewritten = run(&rg, &routs, &feeds);
        assert_same(&what, &decomposed[0], &expected[0]);
        assert_same(&what, &rewritten[0], &expected[0]);
    }
}
