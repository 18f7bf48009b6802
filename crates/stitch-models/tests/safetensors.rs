//! The default model through the Hugging Face layout: its weights dequantized
//! and written as config.json + model.safetensors + tokenizer.json, read back
//! by the safetensors loader, must give the GGUF model's logits (both on f32
//! activations) and the GGUF tokenizer's ids.

use std::path::PathBuf;
use std::sync::{Arc, OnceLock};

use stitch_models::gguf::Gguf;
use stitch_models::llama::{Llama, LlamaConfig};
use stitch_models::safetensors::{write_hf_dir, HfModel};
use stitch_models::tokenizer::Tokenizer;

const PROMPT: &str = "<|im_start|>user\nWhat is the capital of France?<|im_end|>\n<|im_start|>assistant\n";

fn model() -> &'static Gguf {
    static G: OnceLock<Gguf> = OnceLock::new();
    G.get_or_init(|| {
        let path = stitch_models::fetch::default_model().expect("fetch the default model");
        Gguf::open(path).expect("open the default model")
    })
}

/// The default model written as a Hugging Face directory (once per run, into
/// cargo's scratch folder for integration tests, replacing any earlier copy).
fn written() -> &'static HfModel {
    static M: OnceLock<HfModel> = OnceLock::new();
    M.get_or_init(|| {
        let g = model();
        let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("smollm2-135m-hf");
        let _ = std::fs::remove_dir_all(&dir);
        let cfg = LlamaConfig::from_gguf(g).unwrap();
        let tok = Tokenizer::from_gguf(g).unwrap();
        write_hf_dir(&dir, &cfg, g, &tok).expect("write the Hugging Face directory");
        HfModel::open(&dir).expect("open the written directory")
    })
}

fn cpu() -> Arc<stitch_cpu::CpuBackend> {
    Arc::new(stitch_cpu::CpuBackend::new())
}

fn argmax(v: &[f32]) -> usize {
    (0..v.len()).max_by(|&a, &b| v[a].total_cmp(&v[b])).unwrap()
}

fn compare(what: &str, got: &[f32], want: &[f32]) {
    assert_eq!(got.len(), want.len(), "{what}: logits length");
    let scale = want.iter().fold(0f32, |a, x| a.max(x.abs()));
    let err = got.iter().zip(want).map(|(a, b)| (a - b).abs()).fold(0f32, f32::max);
    eprintln!("{what}: max |Δ| {err:.3e}, max |ref| {scale:.3}");
    assert!(err <= 1e-3 * scale, "{what}: max |Δ| {err:.3e} > 1e-3 × {scale:.3}");
    assert_eq!(argmax(got), argmax(want), "{what}: argmax");
}

#[test]
fn safetensors_written_from_the_default_model_give_its_logits() {
    let g = model();
    let hf = written();
    let cfg = LlamaConfig::from_gguf(g).unwrap();
    assert_eq!(hf.config(), &cfg, "config.json round trip");
    assert!(
        !hf.tensor_names().contains(&"lm_head.weight"),
        "the default model ties its output head to the embedding"
    );
    let tok = Tokenizer::from_gguf(g).unwrap();
    let ids = tok.encode(PROMPT, true).unwrap();
    // The reference runs on f32 activations (the default quantizes them to 8
    // bits in few-row products of packed weights, which the f32 safetensors
    // weights never take).
    stitch_cpu::kernels::quant::set_quantize_activations(false);
    let mut reference = Llama::new(cfg.clone(), g, 64, cpu()).unwrap();
    let mut loaded = Llama::new(hf.config().clone(), hf, 64, cpu()).unwrap();
    let want = reference.forward(&ids).unwrap();
    let got = loaded.forward(&ids).unwrap();
    compare("prefill", &got, &want);
    // One decode step on the argmax: the permuted K rows went through the cache.
    let next = argmax(&want) as u32;
    let want = reference.forward(&[next]).unwrap();
    let got = loaded.forward(&[next]).unwrap();
    stitch_cpu::kernels::quant::set_quantize_activations(true);
    compare("decode", &got, &want);
}

#[test]
fn tokenizer_json_gives_the_gguf_tokenizer_ids_and_special_tokens() {
    let gguf = Tokenizer::from_gguf(model()).unwrap();
    let hf = written().tokenizer().unwrap();
    let reference = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/data/tokenizer_reference.json"
    ))
    .unwrap();
    let json: serde_json::Value = serde_json::from_str(&reference).unwrap();
    let mut texts: Vec<String> = json["cases"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["text"].as_str().unwrap().to_string())
        .collect();
    texts.extend(
        [
            PROMPT,
            "<|im_start|>system\nYou are terse.<|im_end|>\n<|endoftext|>",
            "Numbers 12345 and ünïcödé, then <|im_end|><|im_start|>",
        ]
        .map(String::from),
    );
    for text in &texts {
        let want = gguf.encode(text, true).unwrap();
        assert_eq!(hf.encode(text, true).unwrap(), want, "ids of {text:?}");
        assert_eq!(
            hf.decode(&want).unwrap(),
            gguf.decode(&want).unwrap(),
            "text of {text:?}"
        );
    }
    let special = hf.encode("<|im_start|><|im_end|>", false).unwrap();
    assert_eq!(special.len(), 2, "special tokens are matched whole: {special:?}");
    assert_eq!(hf.eos(), gguf.eos());
    assert_eq!(hf.bos(), gguf.bos());
    assert_eq!(hf.adds_bos(), gguf.adds_bos());
    assert_eq!(hf.eog_ids(), gguf.eog_ids());
    assert_eq!(hf.vocab_size(), gguf.vocab_size());
}
