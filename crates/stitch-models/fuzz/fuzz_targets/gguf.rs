//! GGUF reader on arbitrary bytes: parsing, then reading every tensor and
//! building the tokenizer and config, must return errors, never panic.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(g) = stitch_models::gguf::Gguf::from_bytes(data.to_vec()) {
        for t in g.tensors().to_vec() {
            let _ = g.tensor(&t.name);
        }
        let _ = stitch_models::llama::LlamaConfig::from_gguf(&g);
        let _ = stitch_models::tokenizer::Tokenizer::from_gguf(&g);
    }
});
