//! Run-time control flow on hand-built models: If with a computed condition,
//! Loop with a run-time trip count, a Loop body holding an If, outer-scope
//! reads, and malformed bodies or conditions (errors naming the node, no panic).
//! Expected values are computed here in f64, independently of stitch.

use rand::{Rng, SeedableRng};
use stitch_core::{Bool8, Tensor};
use stitch_onnx::onnx::{
    attribute_proto::AttributeType, tensor_shape_proto::dimension::Value as DimValue, tensor_shape_proto::Dimension,
    type_proto, AttributeProto, GraphProto, ModelProto, NodeProto, OperatorSetIdProto, TensorProto, TensorShapeProto,
    TypeProto, ValueInfoProto,
};
use stitch_onnx::{ImportOptions, Model, OnnxError};

const F32: i32 = 1;
const I64: i32 = 7;
const BOOL: i32 = 9;

fn vi(name: &str, elem: i32, dims: &[i64]) -> ValueInfoProto {
    ValueInfoProto {
        name: Some(name.into()),
        r#type: Some(TypeProto {
            value: Some(type_proto::Value::TensorType(type_proto::Tensor {
                elem_type: Some(elem),
                shape: Some(TensorShapeProto {
                    dim: dims
                        .iter()
                        .map(|&d| Dimension {
                            value: Some(DimValue::DimValue(d)),
                            ..Default::default()
                        })
                        .collect(),
                }),
            })),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// A value info with an element type and no shape (as bodies often declare).
fn vi_any(name: &str, elem: i32) -> ValueInfoProto {
    ValueInfoProto {
        name: Some(name.into()),
        r#type: Some(TypeProto {
            value: Some(type_proto::Value::TensorType(type_proto::Tensor {
                elem_type: Some(elem),
                shape: None,
            })),
            ..Default::default()
        }),
        ..Default::default()
    }
}

fn node(op: &str, name: &str, ins: &[&str], outs: &[&str]) -> NodeProto {
    NodeProto {
        op_type: Some(op.into()),
        name: Some(name.into()),
        input: ins.iter().map(|s| s.to_string()).collect(),
        output: outs.iter().map(|s| s.to_string()).collect(),
        ..Default::default()
    }
}

fn with_graph(mut n: NodeProto, attr: &str, g: GraphProto) -> NodeProto {
    n.attribute.push(AttributeProto {
        name: Some(attr.into()),
        r#type: Some(AttributeType::Graph as i32),
        g: Some(g),
        ..Default::default()
    });
    n
}

fn with_int(mut n: NodeProto, attr: &str, v: i64) -> NodeProto {
    n.attribute.push(AttributeProto {
        name: Some(attr.into()),
        r#type: Some(AttributeType::Int as i32),
        i: Some(v),
        ..Default::default()
    });
    n
}

fn graph(
    name: &str,
    nodes: Vec<NodeProto>,
    inputs: Vec<ValueInfoProto>,
    outputs: Vec<ValueInfoProto>,
    inits: Vec<TensorProto>,
) -> GraphProto {
    GraphProto {
        node: nodes,
        input: inputs,
        output: outputs,
        initializer: inits,
        name: Some(name.into()),
        ..Default::default()
    }
}

fn model(g: GraphProto) -> ModelProto {
    ModelProto {
        ir_version: Some(9),
        opset_import: vec![OperatorSetIdProto {
            domain: Some(String::new()),
            version: Some(17),
        }],
        graph: Some(g),
        ..Default::default()
    }
}

fn i64_init(name: &str, v: &[i64], dims: &[i64]) -> TensorProto {
    TensorProto {
        name: Some(name.into()),
        dims: dims.to_vec(),
        data_type: Some(I64),
        int64_data: v.to_vec(),
        ..Default::default()
    }
}

fn random(seed: u64, n: usize) -> Vec<f32> {
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
    (0..n).map(|_| rng.gen_range(-2.0..2.0)).collect()
}

fn import(m: &ModelProto) -> Model {
    Model::import(m, ImportOptions::default()).expect("import")
}

fn run(m: &Model, given: &[(&str, Tensor)]) -> Result<Vec<(String, Tensor)>, OnnxError> {
    let backends = vec![Arc::new(stitch_cpu::CpuBackend::new()) as Arc<dyn stitch_core::Backend>];
    let compiled = m.compile(backends)?;
    let given: Vec<(String, Tensor)> = given.iter().map(|(n, t)| (n.to_string(), t.clone())).collect();
    m.run(&compiled, &given)
}

use std::sync::Arc;

fn assert_close(got: &Tensor, want: &[f64], shape: &[usize]) {
    assert_eq!(got.shape(), shape, "shape");
    let g = got.to_f64_vec();
    for (i, (a, b)) in g.iter().zip(want).enumerate() {
        assert!((a - b).abs() <= 1e-4 + 1e-4 * b.abs(), "element {i}: {a} vs {b}");
    }
}

/// Loop(M, "", acc0) with body `acc = acc + x * iter`, scan output `acc`; `x`
/// is read from the outer scope.
fn trip_count_loop() -> ModelProto {
    let body = graph(
        "body",
        vec![
            node("Cast", "to_f", &["iter"], &["iter_f"]),
            node("Mul", "scale", &["x", "iter_f"], &["step"]),
            node("Add", "accumulate", &["acc_in", "step"], &["acc_out"]),
            node("Identity", "keep_going", &["cond_in"], &["cond_out"]),
            node("Identity", "record", &["acc_out"], &["acc_scan"]),
        ]
        .into_iter()
        .map(|n| {
            if n.op_type() == "Cast" {
                with_int(n, "to", F32 as i64)
            } else {
                n
            }
        })
        .collect(),
        vec![vi("iter", I64, &[]), vi("cond_in", BOOL, &[]), vi_any("acc_in", F32)],
        vec![
            vi("cond_out", BOOL, &[]),
            vi_any("acc_out", F32),
            vi_any("acc_scan", F32),
        ],
        vec![],
    );
    let lp = with_graph(
        node("Loop", "the_loop", &["M", "", "acc0"], &["acc", "history"]),
        "body",
        body,
    );
    model(graph(
        "main",
        vec![lp],
        vec![vi("M", I64, &[]), vi("x", F32, &[4]), vi("acc0", F32, &[4])],
        vec![vi_any("acc", F32), vi_any("history", F32)],
        vec![],
    ))
}

#[test]
fn loop_trip_count_is_a_run_time_input() {
    let m = import(&trip_count_loop());
    assert!(m.has_control_flow());
    let x = random(1, 4);
    let acc0 = random(2, 4);
    let backends = vec![Arc::new(stitch_cpu::CpuBackend::new()) as Arc<dyn stitch_core::Backend>];
    let compiled = m.compile(backends).unwrap();
    // One compiled model serves both trip counts.
    for trips in [3i64, 7, 0] {
        let given = vec![
            ("M".to_string(), Tensor::scalar(trips)),
            ("x".to_string(), Tensor::from_vec(x.clone(), &[4]).unwrap()),
            ("acc0".to_string(), Tensor::from_vec(acc0.clone(), &[4]).unwrap()),
        ];
        let out = m.run(&compiled, &given).unwrap();
        assert_eq!(out[0].0, "acc");
        assert_eq!(out[1].0, "history");
        let mut acc: Vec<f64> = acc0.iter().map(|&v| v as f64).collect();
        let mut history = vec![];
        for i in 0..trips {
            for (a, &xv) in acc.iter_mut().zip(&x) {
                *a += xv as f64 * i as f64;
            }
            history.extend_from_slice(&acc);
        }
        assert_close(&out[0].1, &acc, &[4]);
        assert_close(&out[1].1, &history, &[trips as usize, 4]);
    }
}

#[test]
fn loop_stops_when_the_body_condition_turns_false() {
    // No trip count: the body continues while iter + 1 < n (n a run-time input).
    let body = graph(
        "body",
        vec![
            node("Add", "next", &["iter", "one"], &["iter1"]),
            node("Less", "more", &["iter1", "n"], &["cond_out"]),
            node("Mul", "grow", &["v_in", "x"], &["v_out"]),
        ],
        vec![vi("iter", I64, &[]), vi("cond_in", BOOL, &[]), vi_any("v_in", F32)],
        vec![vi("cond_out", BOOL, &[]), vi_any("v_out", F32)],
        vec![i64_init("one", &[1], &[])],
    );
    let lp = with_graph(node("Loop", "until", &["", "go", "v0"], &["v"]), "body", body);
    let m = import(&model(graph(
        "main",
        vec![lp],
        vec![
            vi("n", I64, &[]),
            vi("go", BOOL, &[]),
            vi("x", F32, &[3]),
            vi("v0", F32, &[3]),
        ],
        vec![vi_any("v", F32)],
        vec![],
    )));
    let x = random(3, 3);
    let v0 = random(4, 3);
    for n in [1i64, 4] {
        let out = run(
            &m,
            &[
                ("n", Tensor::scalar(n)),
                ("go", Tensor::scalar(Bool8(1))),
                ("x", Tensor::from_vec(x.clone(), &[3]).unwrap()),
                ("v0", Tensor::from_vec(v0.clone(), &[3]).unwrap()),
            ],
        )
        .unwrap();
        // The body runs n times (iterations 0..n-1; the last sets cond false).
        let want: Vec<f64> = v0
            .iter()
            .zip(&x)
            .map(|(&v, &xv)| v as f64 * (xv as f64).powi(n as i32))
            .collect();
        assert_close(&out[0].1, &want, &[3]);
    }
    // cond false at the start: no iteration.
    let out = run(
        &m,
        &[
            ("n", Tensor::scalar(5i64)),
            ("go", Tensor::scalar(Bool8(0))),
            ("x", Tensor::from_vec(x.clone(), &[3]).unwrap()),
            ("v0", Tensor::from_vec(v0.clone(), &[3]).unwrap()),
        ],
    )
    .unwrap();
    let want: Vec<f64> = v0.iter().map(|&v| v as f64).collect();
    assert_close(&out[0].1, &want, &[3]);
}

/// If(c) with then: `x * x` ([2, 3]) and else: `ReduceSum(x, axis 1)` ([2]).
fn shape_changing_if() -> ModelProto {
    let then_g = graph(
        "then",
        vec![node("Mul", "square", &["x", "x"], &["sq"])],
        vec![],
        vec![vi_any("sq", F32)],
        vec![],
    );
    let else_g = graph(
        "else",
        vec![with_int(
            node("ReduceSum", "rows", &["x", "axes"], &["rs"]),
            "keepdims",
            0,
        )],
        vec![],
        vec![vi_any("rs", F32)],
        vec![i64_init("axes", &[1], &[1])],
    );
    let n = with_graph(
        with_graph(node("If", "branch", &["c"], &["y"]), "then_branch", then_g),
        "else_branch",
        else_g,
    );
    model(graph(
        "main",
        vec![n, node("Neg", "negate", &["y"], &["z"])],
        vec![vi("c", BOOL, &[]), vi("x", F32, &[2, 3])],
        vec![vi_any("z", F32)],
        vec![],
    ))
}

#[test]
fn if_condition_is_a_run_time_input_and_branches_differ_in_shape() {
    let m = import(&shape_changing_if());
    assert!(m.has_control_flow());
    let x = random(5, 6);
    let xt = Tensor::from_vec(x.clone(), &[2, 3]).unwrap();
    let out = run(&m, &[("c", Tensor::scalar(Bool8(1))), ("x", xt.clone())]).unwrap();
    let want: Vec<f64> = x.iter().map(|&v| -(v as f64) * v as f64).collect();
    assert_close(&out[0].1, &want, &[2, 3]);
    let out = run(&m, &[("c", Tensor::scalar(Bool8(0))), ("x", xt)]).unwrap();
    let want: Vec<f64> = (0..2)
        .map(|r| -(0..3).map(|k| x[r * 3 + k] as f64).sum::<f64>())
        .collect();
    assert_close(&out[0].1, &want, &[2]);
}

#[test]
fn constant_condition_if_is_still_inlined() {
    let mut m = shape_changing_if();
    let g = m.graph.as_mut().unwrap();
    g.input.retain(|v| v.name() != "c");
    g.initializer.push(TensorProto {
        name: Some("c".into()),
        dims: vec![],
        data_type: Some(BOOL),
        int32_data: vec![1],
        ..Default::default()
    });
    let m = import(&m);
    assert!(!m.has_control_flow());
    let x = random(6, 6);
    let out = run(&m, &[("x", Tensor::from_vec(x.clone(), &[2, 3]).unwrap())]).unwrap();
    let want: Vec<f64> = x.iter().map(|&v| -(v as f64) * v as f64).collect();
    assert_close(&out[0].1, &want, &[2, 3]);
}

#[test]
fn loop_body_holds_an_if_and_reads_outer_values() {
    // w = Exp(x) is computed before the loop; the body reads it from the outer
    // scope inside an If: even iterations add w, odd ones subtract 2 * x.
    let then_g = graph(
        "even",
        vec![node("Add", "plus_w", &["acc_in", "w"], &["a_even"])],
        vec![],
        vec![vi_any("a_even", F32)],
        vec![],
    );
    let else_g = graph(
        "odd",
        vec![
            node("Mul", "twice", &["x", "two"], &["x2"]),
            node("Sub", "minus", &["acc_in", "x2"], &["a_odd"]),
        ],
        vec![],
        vec![vi_any("a_odd", F32)],
        vec![TensorProto {
            name: Some("two".into()),
            dims: vec![],
            data_type: Some(F32),
            float_data: vec![2.0],
            ..Default::default()
        }],
    );
    let body = graph(
        "body",
        vec![
            node("Mod", "parity", &["iter", "two_i"], &["p"]),
            node("Equal", "is_even", &["p", "zero_i"], &["even"]),
            with_graph(
                with_graph(node("If", "inner_if", &["even"], &["acc_out"]), "then_branch", then_g),
                "else_branch",
                else_g,
            ),
            node("Identity", "keep", &["cond_in"], &["cond_out"]),
        ],
        vec![vi("iter", I64, &[]), vi("cond_in", BOOL, &[]), vi_any("acc_in", F32)],
        vec![vi("cond_out", BOOL, &[]), vi_any("acc_out", F32)],
        vec![i64_init("two_i", &[2], &[]), i64_init("zero_i", &[0], &[])],
    );
    let m = import(&model(graph(
        "main",
        vec![
            node("Exp", "w_of_x", &["x"], &["w"]),
            with_graph(node("Loop", "outer_loop", &["M", "", "acc0"], &["acc"]), "body", body),
        ],
        vec![vi("M", I64, &[]), vi("x", F32, &[2, 2]), vi("acc0", F32, &[2, 2])],
        vec![vi_any("acc", F32)],
        vec![],
    )));
    let x = random(7, 4);
    let acc0 = random(8, 4);
    for trips in [4i64, 5] {
        let out = run(
            &m,
            &[
                ("M", Tensor::scalar(trips)),
                ("x", Tensor::from_vec(x.clone(), &[2, 2]).unwrap()),
                ("acc0", Tensor::from_vec(acc0.clone(), &[2, 2]).unwrap()),
            ],
        )
        .unwrap();
        let mut acc: Vec<f64> = acc0.iter().map(|&v| v as f64).collect();
        for i in 0..trips {
            for (a, &xv) in acc.iter_mut().zip(&x) {
                *a += if i % 2 == 0 {
                    (xv as f64).exp()
                } else {
                    -2.0 * xv as f64
                };
            }
        }
        assert_close(&out[0].1, &acc, &[2, 2]);
    }
}

#[test]
fn loop_body_with_the_wrong_number_of_outputs_is_an_error_naming_the_node() {
    let mut m = trip_count_loop();
    let g = m.graph.as_mut().unwrap();
    let body = g.node[0].attribute[0].g.as_mut().unwrap();
    // Drop the condition and the scan output: one output for one carried value.
    body.output.retain(|o| o.name() == "acc_out");
    let e = Model::import(&m, ImportOptions::default()).unwrap_err().to_string();
    assert!(e.contains("the_loop") && e.contains("outputs"), "{e}");
}

#[test]
fn non_bool_or_non_scalar_conditions_are_run_time_errors_naming_the_node() {
    // If with a float condition.
    let mut p = shape_changing_if();
    let g = p.graph.as_mut().unwrap();
    g.input[0] = vi("c", F32, &[]);
    let m = import(&p);
    let x = Tensor::from_vec(random(9, 6), &[2, 3]).unwrap();
    let e = run(&m, &[("c", Tensor::scalar(1.0f32)), ("x", x)])
        .unwrap_err()
        .to_string();
    assert!(e.contains("branch") && e.contains("bool"), "{e}");

    // Loop whose body returns a two-element condition.
    let body = graph(
        "body",
        vec![
            node("Identity", "pass", &["v_in"], &["v_out"]),
            node("Less", "two_conds", &["v_in", "limit"], &["cond_out"]),
        ],
        vec![vi("iter", I64, &[]), vi("cond_in", BOOL, &[]), vi_any("v_in", F32)],
        vec![vi_any("cond_out", BOOL), vi_any("v_out", F32)],
        vec![TensorProto {
            name: Some("limit".into()),
            dims: vec![2],
            data_type: Some(F32),
            float_data: vec![0.5, -0.5],
            ..Default::default()
        }],
    );
    let m = import(&model(graph(
        "main",
        vec![with_graph(
            node("Loop", "bad_cond_loop", &["M", "", "v0"], &["v"]),
            "body",
            body,
        )],
        vec![vi("M", I64, &[]), vi("v0", F32, &[2])],
        vec![vi_any("v", F32)],
        vec![],
    )));
    let v0 = Tensor::from_vec(random(10, 2), &[2]).unwrap();
    let e = run(&m, &[("M", Tensor::scalar(3i64)), ("v0", v0.clone())])
        .unwrap_err()
        .to_string();
    assert!(e.contains("bad_cond_loop") && e.contains("one element"), "{e}");
    // A trip count of the wrong type.
    let mut p = trip_count_loop();
    p.graph.as_mut().unwrap().input[0] = vi("M", F32, &[]);
    let m = import(&p);
    let x = Tensor::from_vec(random(11, 4), &[4]).unwrap();
    let e = run(&m, &[("M", Tensor::scalar(2.0f32)), ("x", x.clone()), ("acc0", x)])
        .unwrap_err()
        .to_string();
    assert!(e.contains("the_loop") && e.contains("trip count"), "{e}");
}

#[test]
fn unsupported_ops_inside_subgraphs_are_listed_with_the_others() {
    let mut p = trip_count_loop();
    let g = p.graph.as_mut().unwrap();
    g.node[0].attribute[0].g.as_mut().unwrap().node[1].op_type = Some("FancyMul".into());
    g.node.push(node("Frobnicate", "top_level_frob", &["acc"], &["acc2"]));
    let e = Model::import(&p, ImportOptions::default()).unwrap_err();
    assert!(matches!(e, OnnxError::Unsupported(_)), "{e:?}");
    let e = e.to_string();
    assert!(
        e.contains("FancyMul") && e.contains("'scale'") && e.contains("Frobnicate"),
        "{e}"
    );
}

#[test]
fn scan_sums_rows_in_both_directions() {
    // Scan (opset 17) with one state (running sum) and one scan input read
    // along axis 1 in reverse; scan output stacked along axis 1.
    let body = graph(
        "body",
        vec![
            node("Add", "sum", &["s_in", "row"], &["s_out"]),
            node("Identity", "emit", &["s_out"], &["y"]),
        ],
        vec![vi_any("s_in", F32), vi_any("row", F32)],
        vec![vi_any("s_out", F32), vi_any("y", F32)],
        vec![],
    );
    let mut n = with_graph(node("Scan", "scanner", &["s0", "xs"], &["s", "ys"]), "body", body);
    n = with_int(n, "num_scan_inputs", 1);
    for (name, v) in [
        ("scan_input_axes", 1i64),
        ("scan_input_directions", 1),
        ("scan_output_axes", 1),
    ] {
        n.attribute.push(AttributeProto {
            name: Some(name.into()),
            r#type: Some(AttributeType::Ints as i32),
            ints: vec![v],
            ..Default::default()
        });
    }
    let m = import(&model(graph(
        "main",
        vec![n],
        vec![vi("s0", F32, &[2]), vi("xs", F32, &[2, 5])],
        vec![vi_any("s", F32), vi_any("ys", F32)],
        vec![],
    )));
    let s0 = random(12, 2);
    let xs = random(13, 10);
    let out = run(
        &m,
        &[
            ("s0", Tensor::from_vec(s0.clone(), &[2]).unwrap()),
            ("xs", Tensor::from_vec(xs.clone(), &[2, 5]).unwrap()),
        ],
    )
    .unwrap();
    let mut s: Vec<f64> = s0.iter().map(|&v| v as f64).collect();
    // ys[r][step]: the running sum of row r after `step + 1` columns, read from the end.
    let mut flat = vec![0.0; 10];
    for step in 0..5 {
        let col = 4 - step;
        for (r, sum) in s.iter_mut().enumerate() {
            *sum += xs[r * 5 + col] as f64;
            flat[r * 5 + step] = *sum;
        }
    }
    assert_close(&out[0].1, &s, &[2]);
    assert_close(&out[1].1, &flat, &[2, 5]);
}
