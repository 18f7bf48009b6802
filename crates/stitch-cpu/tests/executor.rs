//! Executor behaviour: state (variables, assign, in-place slice_update), one
//! executable serving several states, plan caching per input shape, and errors
//! that name the node and shapes instead of panicking.

mod common;

use std::sync::Arc;

use stitch_core::{CompileOptions, DType, Dim, Error, Executable, Graph, Op, Tensor, Value};
use stitch_cpu::CpuBackend;

fn compile(g: &Graph, outs: &[Value]) -> Executable {
    Executable::compile(g, outs, Arc::new(CpuBackend::new()), CompileOptions::default()).unwrap()
}

fn i64s(v: &[i64]) -> Tensor {
    Tensor::from_vec(v.to_vec(), &[v.len()]).unwrap()
}

#[test]
fn slice_update_writes_in_place_without_realloc() {
    let mut r = common::rng(1);
    let init = common::random(&mut r, DType::F32, &[4, 8]);
    let mut g = Graph::new();
    let cache = g.variable("cache", init.clone());
    let update = g.placeholder("update", DType::F32, [1, 8]);
    let start = g.placeholder("start", DType::I64, [2]);
    g.slice_update(cache, update, start).unwrap();
    let exe = compile(&g, &[]);
    let mut state = exe.new_state();
    // Unshare the buffer from the graph's initial value first (copy-on-write), as a real
    // cache does once; from then on updates must not reallocate.
    let row0 = common::random(&mut r, DType::F32, &[1, 8]);
    exe.run(&[("update", row0.clone()), ("start", i64s(&[0, 0]))], &mut state)
        .unwrap();
    let before = state.get(cache).buffer().as_ptr();
    for pos in 1..4 {
        let row = common::random(&mut r, DType::F32, &[1, 8]);
        let prev = state.get(cache).to_vec::<f32>().unwrap();
        exe.run(&[("update", row.clone()), ("start", i64s(&[pos, 0]))], &mut state)
            .unwrap();
        let now = state.get(cache).to_vec::<f32>().unwrap();
        assert_eq!(
            state.get(cache).buffer().as_ptr(),
            before,
            "buffer reallocated at pos {pos}"
        );
        let row = row.to_vec::<f32>().unwrap();
        for i in 0..32 {
            let (rr, c) = (i / 8, i % 8);
            let want = if rr == pos as usize { row[c] } else { prev[i] };
            assert_eq!(now[i], want, "element ({rr}, {c}) after update at row {pos}");
        }
    }
    // The graph's initial value is untouched.
    assert_eq!(
        g.variable_info(cache).initial.to_vec::<f32>().unwrap(),
        init.to_vec::<f32>().unwrap()
    );
    assert_eq!(
        state.get(cache).to_vec::<f32>().unwrap()[..8],
        row0.to_vec::<f32>().unwrap()[..]
    );
}

#[test]
fn reads_see_updates_in_graph_order() {
    let mut g = Graph::new();
    let init = Tensor::from_vec(vec![1f32, 2.0, 3.0, 4.0], &[4]).unwrap();
    let var = g.variable("v", init);
    let before = g.read(var).unwrap();
    let upd = g.placeholder("u", DType::F32, [2]);
    let start = g.constant(i64s(&[1]));
    g.slice_update(var, upd, start).unwrap();
    let after = g.read(var).unwrap();
    let exe = compile(&g, &[before, after]);
    let mut state = exe.new_state();
    let u = Tensor::from_vec(vec![-7f32, 9.5], &[2]).unwrap();
    let out = exe.run(&[("u", u)], &mut state).unwrap();
    assert_eq!(
        out[0].to_vec::<f32>().unwrap(),
        vec![1.0, 2.0, 3.0, 4.0],
        "read before the update"
    );
    assert_eq!(
        out[1].to_vec::<f32>().unwrap(),
        vec![1.0, -7.0, 9.5, 4.0],
        "read after the update"
    );
    assert_eq!(state.get(var).to_vec::<f32>().unwrap(), vec![1.0, -7.0, 9.5, 4.0]);
}

#[test]
fn one_executable_serves_independent_states() {
    let mut g = Graph::new();
    let var = g.variable("v", Tensor::from_vec(vec![0i64; 3], &[3]).unwrap());
    let x = g.placeholder("x", DType::I64, [3]);
    g.assign(var, x).unwrap();
    let exe = compile(&g, &[]);
    let (mut a, mut b) = (exe.new_state(), exe.new_state());
    exe.run(&[("x", i64s(&[1, 2, 3]))], &mut a).unwrap();
    exe.run(&[("x", i64s(&[7, 8, 9]))], &mut b).unwrap();
    assert_eq!(a.get(var).to_vec::<i64>().unwrap(), vec![1, 2, 3]);
    assert_eq!(b.get(var).to_vec::<i64>().unwrap(), vec![7, 8, 9]);
}

#[test]
fn slice_update_out_of_bounds_is_an_error_naming_the_node() {
    let mut g = Graph::new();
    let var = g.variable("cache", Tensor::zeros(DType::F32, &[4, 8]));
    let upd = g.placeholder("u", DType::F32, [2, 8]);
    let start = g.placeholder("s", DType::I64, [2]);
    g.slice_update(var, upd, start).unwrap();
    let exe = compile(&g, &[]);
    let mut state = exe.new_state();
    let u = Tensor::from_vec(vec![1f32; 16], &[2, 8]).unwrap();
    let err = exe
        .run(&[("u", u), ("s", i64s(&[3, 0]))], &mut state)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("slice_update") && err.contains("[2, 8]") && err.contains("[4, 8]"),
        "{err}"
    );
}

#[test]
fn wrong_shapes_and_dtypes_name_the_node_and_shapes() {
    let mut g = Graph::new();
    let a = g.placeholder("a", DType::F32, [2, 3]);
    let b = g.placeholder("b", DType::F32, [4, 5]);
    let err = g.add(a, b).unwrap_err();
    assert!(matches!(err, Error::Node { .. }));
    let msg = err.to_string();
    assert!(
        msg.contains("add_2") && msg.contains("[2, 3]") && msg.contains("[4, 5]"),
        "{msg}"
    );

    let c = g.placeholder("c", DType::I32, [2, 3]);
    let msg = g.mul(a, c).unwrap_err().to_string();
    assert!(
        msg.contains("mul") && msg.contains("f32[2, 3]") && msg.contains("i32[2, 3]"),
        "{msg}"
    );

    let msg = g.matmul(a, a).unwrap_err().to_string();
    assert!(msg.contains("matmul") && msg.contains("[2, 3]"), "{msg}");

    let msg = g.reshape(a, &[4, 2]).unwrap_err().to_string();
    assert!(
        msg.contains("reshape") && msg.contains("[2, 3]") && msg.contains("[4, 2]"),
        "{msg}"
    );

    let msg = g.softmax(c, -1).unwrap_err().to_string();
    assert!(msg.contains("softmax") && msg.contains("i32[2, 3]"), "{msg}");
}

#[test]
fn missing_unknown_and_mismatched_inputs_are_errors() {
    let mut g = Graph::new();
    let x = g.placeholder("x", DType::F32, vec![Dim::sym("batch"), Dim::Known(3)]);
    let y = g.placeholder("y", DType::F32, vec![Dim::sym("batch"), Dim::Known(3)]);
    let z = g.add(x, y).unwrap();
    let exe = compile(&g, &[z]);
    let mut st = exe.new_state();
    let t = |n: usize| Tensor::from_vec(vec![1f32; n * 3], &[n, 3]).unwrap();

    let err = exe.run(&[("x", t(2))], &mut st).unwrap_err();
    assert!(matches!(&err, Error::MissingInput { name, .. } if name == "y"), "{err}");
    assert!(err.to_string().contains("[batch, 3]"), "{err}");

    let err = exe.run(&[("x", t(2)), ("y", t(2)), ("w", t(2))], &mut st).unwrap_err();
    assert!(matches!(&err, Error::UnknownInput { name, .. } if name == "w"), "{err}");

    let msg = exe.run(&[("x", t(2)), ("y", t(5))], &mut st).unwrap_err().to_string();
    assert!(msg.contains("batch") && msg.contains('5') && msg.contains('2'), "{msg}");

    let wrong_dims = Tensor::from_vec(vec![1f32; 8], &[2, 4]).unwrap();
    let msg = exe
        .run(&[("x", wrong_dims), ("y", t(2))], &mut st)
        .unwrap_err()
        .to_string();
    assert!(
        msg.contains("`x`") && msg.contains("[2, 4]") && msg.contains("[batch, 3]"),
        "{msg}"
    );

    let wrong_dtype = Tensor::from_vec(vec![1f64; 6], &[2, 3]).unwrap();
    let msg = exe
        .run(&[("x", wrong_dtype), ("y", t(2))], &mut st)
        .unwrap_err()
        .to_string();
    assert!(msg.contains("f64[2, 3]") && msg.contains("f32[batch, 3]"), "{msg}");
}

#[test]
fn plans_are_specialised_per_input_shape_and_cached() {
    let mut g = Graph::new();
    let x = g.placeholder("x", DType::F32, vec![Dim::sym("n")]);
    let v = g.variable("v", Tensor::zeros(DType::F32, &[1]));
    let r = g.read(v).unwrap();
    let exe = compile(&g, &[x, r]);
    let ty = |n: usize| vec![stitch_core::TensorType::new(DType::F32, [n])];
    let p3 = exe.plan_for(&ty(3)).unwrap();
    let p5 = exe.plan_for(&ty(5)).unwrap();
    assert!(!Arc::ptr_eq(&p3, &p5));
    assert!(Arc::ptr_eq(&p3, &exe.plan_for(&ty(3)).unwrap()));
    assert_eq!(p5.graph.ty(p5.outputs[0]).to_string(), "f32[5]");
}

#[test]
fn decomposition_leaves_no_composites_and_scopes_names() {
    let mut g = Graph::new();
    let x = g.placeholder("x", DType::F32, [2, 4]);
    let s = g.placeholder("s", DType::F32, [4]);
    let y = g.layer_norm(x, s, None, -1, 1e-5).unwrap();
    let y = g.softmax(y, -1).unwrap();
    let exe = Executable::compile(&g, &[y], Arc::new(CpuBackend::new()), CompileOptions::reference()).unwrap();
    let ty = [
        stitch_core::TensorType::new(DType::F32, [2, 4]),
        stitch_core::TensorType::new(DType::F32, [4]),
    ];
    let plan = exe.plan_for(&ty).unwrap();
    assert!(
        plan.graph.nodes().iter().all(|n| !n.op.is_composite()),
        "composites left after decomposition"
    );
    assert!(plan
        .graph
        .nodes()
        .iter()
        .any(|n| n.name.starts_with("layer_norm_2/") && matches!(n.op, Op::Unary(_))));
    assert!(plan.graph.nodes().iter().any(|n| n.name.starts_with("softmax_3/")));
}

#[test]
fn unused_nodes_are_not_executed() {
    // A node whose kernel would fail (out-of-range gather) must not run when no output needs it.
    let mut g = Graph::new();
    let x = g.placeholder("x", DType::F32, [3]);
    let idx = g.constant(i64s(&[7]));
    let _dead = g.gather(x, idx, 0).unwrap();
    let y = g.neg(x).unwrap();
    let exe = compile(&g, &[x]);
    let out = exe
        .run(
            &[("x", Tensor::from_vec(vec![1f32, 2.0, 3.0], &[3]).unwrap())],
            &mut exe.new_state(),
        )
        .unwrap();
    assert_eq!(out[0].to_vec::<f32>().unwrap(), vec![1.0, 2.0, 3.0]);
    let _ = y;
}

/// Inputs are fed by name: a placeholder nothing reads (dropped from the
/// plan) before the ones in use does not shift which tensor each receives.
#[test]
fn inputs_are_fed_by_name_when_an_earlier_placeholder_is_unused() {
    let mut r = common::rng(5);
    let mut g = Graph::new();
    let _unused = g.placeholder("unused", DType::F32, [3]);
    let b = g.placeholder("b", DType::F32, [3]);
    let c = g.placeholder("c", DType::F32, [3]);
    let y = g.sub(b, c).unwrap();
    let exe = compile(&g, &[y]);
    let (bt, ct, ut) = (
        common::random(&mut r, DType::F32, &[3]),
        common::random(&mut r, DType::F32, &[3]),
        common::random(&mut r, DType::F32, &[3]),
    );
    let out = exe
        .run(
            &[("c", ct.clone()), ("unused", ut), ("b", bt.clone())],
            &mut exe.new_state(),
        )
        .unwrap();
    let want: Vec<f64> = bt
        .to_f64_vec()
        .iter()
        .zip(ct.to_f64_vec())
        .map(|(x, y)| (*x as f32 - y as f32) as f64)
        .collect();
    assert_eq!(out[0].to_f64_vec(), want);
}
