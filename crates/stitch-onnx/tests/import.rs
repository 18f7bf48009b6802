//! Importer behaviour on hand-built models: bad files, unsupported ops, wrong
//! inputs, external data, symbolic dims. Every failure must be an error, never a panic.

use prost::Message;
use rand::{Rng, SeedableRng};
use stitch_core::{DType, Dim, Tensor};
use stitch_onnx::onnx::{
    tensor_proto::DataLocation, tensor_shape_proto::dimension::Value as DimValue, tensor_shape_proto::Dimension,
    type_proto, GraphProto, ModelProto, NodeProto, OperatorSetIdProto, StringStringEntryProto, TensorProto,
    TensorShapeProto, TypeProto, ValueInfoProto,
};
use stitch_onnx::{ImportOptions, Model, OnnxError};

fn vi(name: &str, elem: i32, dims: &[DimValue]) -> ValueInfoProto {
    ValueInfoProto {
        name: Some(name.into()),
        r#type: Some(TypeProto {
            value: Some(type_proto::Value::TensorType(type_proto::Tensor {
                elem_type: Some(elem),
                shape: Some(TensorShapeProto {
                    dim: dims
                        .iter()
                        .map(|d| Dimension {
                            value: Some(d.clone()),
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

fn node(op: &str, name: &str, ins: &[&str], outs: &[&str]) -> NodeProto {
    NodeProto {
        op_type: Some(op.into()),
        name: Some(name.into()),
        input: ins.iter().map(|s| s.to_string()).collect(),
        output: outs.iter().map(|s| s.to_string()).collect(),
        ..Default::default()
    }
}

fn model(
    nodes: Vec<NodeProto>,
    inputs: Vec<ValueInfoProto>,
    outputs: Vec<ValueInfoProto>,
    inits: Vec<TensorProto>,
) -> ModelProto {
    ModelProto {
        ir_version: Some(9),
        opset_import: vec![OperatorSetIdProto {
            domain: Some(String::new()),
            version: Some(17),
        }],
        graph: Some(GraphProto {
            node: nodes,
            input: inputs,
            output: outputs,
            initializer: inits,
            name: Some("g".into()),
            ..Default::default()
        }),
        ..Default::default()
    }
}

const F32: i32 = 1;

/// `y = x @ w + b` with w, b as initializers; x is `[batch, 3]` with a named dim.
fn linear(w_ext: Option<(&str, u64)>) -> (ModelProto, Vec<f32>, Vec<f32>) {
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(7);
    let w: Vec<f32> = (0..6).map(|_| rng.gen_range(-1.0..1.0)).collect();
    let b: Vec<f32> = (0..2).map(|_| rng.gen_range(-1.0..1.0)).collect();
    let mut wt = TensorProto {
        name: Some("w".into()),
        dims: vec![3, 2],
        data_type: Some(F32),
        raw_data: Some(w.iter().flat_map(|v| v.to_le_bytes()).collect()),
        ..Default::default()
    };
    if let Some((loc, off)) = w_ext {
        wt.raw_data = None;
        wt.data_location = Some(DataLocation::External as i32);
        wt.external_data = vec![
            StringStringEntryProto {
                key: Some("location".into()),
                value: Some(loc.into()),
            },
            StringStringEntryProto {
                key: Some("offset".into()),
                value: Some(off.to_string()),
            },
        ];
    }
    let bt = TensorProto {
        name: Some("b".into()),
        dims: vec![2],
        data_type: Some(F32),
        float_data: b.clone(),
        ..Default::default()
    };
    let m = model(
        vec![
            node("MatMul", "mm", &["x", "w"], &["h"]),
            node("Add", "add", &["h", "b"], &["y"]),
        ],
        vec![vi(
            "x",
            F32,
            &[DimValue::DimParam("batch".into()), DimValue::DimValue(3)],
        )],
        vec![vi(
            "y",
            F32,
            &[DimValue::DimParam("batch".into()), DimValue::DimValue(2)],
        )],
        vec![wt, bt],
    );
    (m, w, b)
}

fn check_linear(m: &Model, w: &[f32], b: &[f32]) {
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(11);
    let x: Vec<f32> = (0..12).map(|_| rng.gen_range(-2.0..2.0)).collect();
    let xt = Tensor::from_vec(x.clone(), &[4, 3]).unwrap();
    let exe = m.compile_cpu().unwrap();
    let out = m.run_cpu(&exe, &[("x".into(), xt)]).unwrap();
    let y = out[0].1.to_vec::<f32>().unwrap();
    for r in 0..4 {
        for c in 0..2 {
            let want: f64 = (0..3).map(|k| x[r * 3 + k] as f64 * w[k * 2 + c] as f64).sum::<f64>() + b[c] as f64;
            assert!(
                (y[r * 2 + c] as f64 - want).abs() < 1e-5,
                "y[{r},{c}] = {} vs {want}",
                y[r * 2 + c]
            );
        }
    }
}

#[test]
fn imports_initializers_and_symbolic_dims() {
    let (m, w, b) = linear(None);
    let model = Model::import(&m, ImportOptions::default()).unwrap();
    assert_eq!(model.inputs[0].1.shape.dims()[0], Dim::sym("batch"));
    assert_eq!(model.inputs[0].1.dtype, DType::F32);
    check_linear(&model, &w, &b);
}

#[test]
fn reads_external_data_and_rejects_escaping_paths() {
    let dir = std::env::temp_dir().join(format!("stitch-onnx-ext-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let (m0, w, b) = linear(None);
    // 5 junk bytes, then the weight data.
    let mut file = vec![9u8; 5];
    file.extend(w.iter().flat_map(|v| v.to_le_bytes()));
    std::fs::write(dir.join("weights.bin"), &file).unwrap();
    let (m, _, _) = linear(Some(("weights.bin", 5)));
    let _ = m0;
    let path = dir.join("model.onnx");
    std::fs::write(&path, m.encode_to_vec()).unwrap();
    let model = Model::load(&path, ImportOptions::default()).unwrap();
    check_linear(&model, &w, &b);

    let (bad, _, _) = linear(Some(("../weights.bin", 0)));
    std::fs::write(&path, bad.encode_to_vec()).unwrap();
    let e = Model::load(&path, ImportOptions::default()).unwrap_err().to_string();
    assert!(e.contains("relative path inside"), "{e}");

    let (short, _, _) = linear(Some(("weights.bin", 10)));
    std::fs::write(&path, short.encode_to_vec()).unwrap();
    let e = Model::load(&path, ImportOptions::default()).unwrap_err().to_string();
    assert!(e.contains("outside") && e.contains("weights.bin"), "{e}");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn truncated_and_garbage_files_are_errors() {
    let (m, _, _) = linear(None);
    let bytes = m.encode_to_vec();
    for cut in [1, bytes.len() / 3, bytes.len() / 2, bytes.len() - 1] {
        match stitch_onnx::parse_model(&bytes[..cut]) {
            Err(e) => assert!(e.to_string().contains("invalid ONNX model"), "{e}"),
            Ok(m) => {
                // A prefix can still decode; importing it must then fail cleanly or succeed.
                let _ = Model::import(&m, ImportOptions::default());
            }
        }
    }
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(3);
    for _ in 0..200 {
        let n = rng.gen_range(0..200);
        let junk: Vec<u8> = (0..n).map(|_| rng.gen()).collect();
        if let Ok(m) = stitch_onnx::parse_model(&junk) {
            let _ = Model::import(&m, ImportOptions::default());
        }
    }
}

#[test]
fn huge_dims_are_errors() {
    // Found by fuzzing: a zero dim beside huge ones made stride computation overflow.
    let t = TensorProto {
        dims: vec![0, 1 << 40, 1 << 40],
        data_type: Some(F32),
        raw_data: Some(vec![]),
        ..Default::default()
    };
    let e = stitch_onnx::tensor_from_proto(&t, None).unwrap_err();
    assert!(e.contains("too large"), "{e}");
}

#[test]
fn unsupported_ops_are_listed_in_one_error() {
    let m = model(
        vec![
            node("Relu", "ok", &["x"], &["a"]),
            node("Resize", "resize_a", &["a"], &["b"]),
            node("FancyOp", "fancy", &["b"], &["c"]),
            node("Resize", "resize_b", &["c"], &["y"]),
        ],
        vec![vi("x", F32, &[DimValue::DimValue(2)])],
        vec![vi("y", F32, &[DimValue::DimValue(2)])],
        vec![],
    );
    let e = Model::import(&m, ImportOptions::default()).unwrap_err();
    assert!(matches!(e, OnnxError::Unsupported(_)));
    let e = e.to_string();
    for want in [
        "opset 17",
        "Resize",
        "'resize_a'",
        "'resize_b'",
        "FancyOp",
        "'fancy'",
        "2 op type",
    ] {
        assert!(e.contains(want), "missing {want}: {e}");
    }
}

#[test]
fn wrong_inputs_are_clear_errors() {
    let (m, _, _) = linear(None);
    let model = Model::import(&m, ImportOptions::default()).unwrap();
    let exe = model.compile_cpu().unwrap();
    let e = model.run_cpu(&exe, &[]).unwrap_err().to_string();
    assert!(e.contains("missing input 'x'"), "{e}");
    let i64x = Tensor::from_vec(vec![1i64; 6], &[2, 3]).unwrap();
    let e = model.run_cpu(&exe, &[("x".into(), i64x)]).unwrap_err().to_string();
    assert!(e.contains("'x'") && e.contains("i64"), "{e}");
    let wrong = Tensor::from_vec(vec![1f32; 8], &[2, 4]).unwrap();
    let e = model.run_cpu(&exe, &[("x".into(), wrong)]).unwrap_err().to_string();
    assert!(e.contains("'x'") && e.contains("[2, 4]"), "{e}");
    let x = Tensor::from_vec(vec![1f32; 6], &[2, 3]).unwrap();
    let e = model
        .run_cpu(&exe, &[("x".into(), x.clone()), ("nope".into(), x)])
        .unwrap_err()
        .to_string();
    assert!(e.contains("unknown input 'nope'"), "{e}");
}
