//! `stitch run` and `stitch info MODEL.onnx` on a case of the ONNX test suite.

use stitch_cli::run::{model_info, run, RunArgs};

fn attention_model() -> Option<std::path::PathBuf> {
    match stitch_onnx::fetch::onnx_node_tests() {
        Ok(root) => Some(root.join("test_attention_4d_gqa").join("model.onnx")),
        Err(e) if std::env::var_os("CI").is_none() && e.to_string().contains("pypi.org") => {
            eprintln!("skipping: cannot fetch the onnx wheel (no network?): {e}");
            None
        }
        Err(e) => panic!("fetching the ONNX test data failed: {e}"),
    }
}

#[test]
fn run_writes_outputs_and_reports_latency() {
    let Some(model) = attention_model() else { return };
    let dir = std::env::temp_dir().join(format!("stitch-run-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let out = |n: &str| dir.join(n);
    let args = |seed, file: &str| RunArgs {
        model: model.clone(),
        random_inputs: true,
        seed,
        output: Some(out(file)),
        runs: 3,
        ..Default::default()
    };
    let text = run(&args(5, "a.npz")).unwrap();
    assert!(text.contains("Y: f32 [2, 9, 4, 8]"), "{text}");
    assert!(
        text.contains("latency over 3 runs") && text.contains("median"),
        "{text}"
    );
    run(&args(5, "b.npz")).unwrap();
    run(&args(6, "c.npz")).unwrap();
    let load = |f: &str| stitch_core::npy::load_npz(&out(f)).unwrap();
    let (a, b, c) = (load("a.npz"), load("b.npz"), load("c.npz"));
    assert_eq!(a[0].0, "Y");
    assert_eq!(
        a[0].1.to_vec::<f32>().unwrap(),
        b[0].1.to_vec::<f32>().unwrap(),
        "same seed, same output"
    );
    assert_ne!(
        a[0].1.to_vec::<f32>().unwrap(),
        c[0].1.to_vec::<f32>().unwrap(),
        "another seed, another output"
    );

    let missing = RunArgs {
        model: model.clone(),
        ..Default::default()
    };
    let e = run(&missing).unwrap_err();
    assert!(e.contains("missing input 'Q'") && e.contains("--random-inputs"), "{e}");
    let bad = RunArgs {
        model: model.clone(),
        inputs: vec!["Q".into()],
        ..Default::default()
    };
    assert!(run(&bad).unwrap_err().contains("NAME=FILE.npy"));
    std::fs::write(out("garbage.onnx"), b"\x0a\xff\xff\xff\xff\x0f garbage").unwrap();
    let garbage = RunArgs {
        model: out("garbage.onnx"),
        random_inputs: true,
        ..Default::default()
    };
    assert!(run(&garbage).unwrap_err().contains("invalid ONNX model"));
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn info_describes_the_model() {
    let Some(model) = attention_model() else { return };
    let text = model_info(&model).unwrap();
    for want in [
        "opset: ai.onnx 23",
        "Q: f32[2, 9, 4, 8]",
        "K: f32[2, 3, 6, 8]",
        "Attention",
        "parameters: 0",
    ] {
        assert!(text.contains(want), "missing {want}:\n{text}");
    }
}

#[test]
fn run_executes_a_loop_with_a_run_time_trip_count() {
    let Some(attention) = attention_model() else { return };
    let Some(root) = attention.parent().and_then(|p| p.parent()) else {
        return;
    };
    let model = root.join("test_loop11").join("model.onnx");
    let dir = std::env::temp_dir().join(format!("stitch-run-loop-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let y0 = 0.375f32;
    stitch_core::npy::save_npy(
        &dir.join("y.npy"),
        &stitch_core::Tensor::from_vec(vec![y0], &[1]).unwrap(),
    )
    .unwrap();
    stitch_core::npy::save_npy(
        &dir.join("cond.npy"),
        &stitch_core::Tensor::scalar(stitch_core::Bool8(1)),
    )
    .unwrap();
    // The body adds x[iteration] (x = 1..5) to y and records y each iteration.
    for trips in [3i64, 5] {
        let m = dir.join(format!("m{trips}.npy"));
        stitch_core::npy::save_npy(&m, &stitch_core::Tensor::scalar(trips)).unwrap();
        let out = dir.join(format!("out{trips}.npz"));
        let args = RunArgs {
            model: model.clone(),
            inputs: vec![
                format!("trip_count={}", m.display()),
                format!("cond={}", dir.join("cond.npy").display()),
                format!("y={}", dir.join("y.npy").display()),
            ],
            output: Some(out.clone()),
            ..Default::default()
        };
        let text = run(&args).unwrap();
        assert!(text.contains(&format!("res_scan: f32 [{trips}, 1]")), "{text}");
        let outs = stitch_core::npy::load_npz(&out).unwrap();
        let scan = outs
            .iter()
            .find(|(n, _)| n == "res_scan")
            .unwrap()
            .1
            .to_vec::<f32>()
            .unwrap();
        let mut y = y0;
        for (i, got) in scan.iter().enumerate() {
            y += (i + 1) as f32;
            assert_eq!(*got, y, "iteration {i}");
        }
    }
    let _ = std::fs::remove_dir_all(&dir);
}
