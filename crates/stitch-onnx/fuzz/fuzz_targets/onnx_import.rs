//! Fuzzes the ONNX parser and importer: any bytes must give a model or an error,
//! never a panic. Run: `RUSTC_BOOTSTRAP=1 cargo fuzz run onnx_import` in this directory.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(m) = stitch_onnx::parse_model(data) {
        let _ = stitch_onnx::Model::import(&m, Default::default());
    }
    if let Ok(t) = stitch_onnx::parse_tensor(data) {
        let _ = stitch_onnx::tensor_from_proto(&t, None);
    }
});
