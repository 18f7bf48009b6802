//! Tiny GGUF files made by scripts/tiny-gguf-models.py, checked against
//! llama.cpp (llama-cpp-python) answers recorded by the same script:
//! a SentencePiece vocabulary's token ids, and the logits of Llama-family
//! variants (Llama 3 frequency factors, linear and YaRN RoPE scaling, Qwen2)
//! after a prompt and after each of a few decode steps.

use std::sync::Arc;

use stitch_models::gguf::{Gguf, GgufWriter, Value};
use stitch_models::llama::{Llama, LlamaConfig, RopeScaling, RopeStyle};
use stitch_models::tokenizer::Tokenizer;

fn data(name: &str) -> String {
    format!("{}/tests/data/tiny/{name}", env!("CARGO_MANIFEST_DIR"))
}

fn reference() -> serde_json::Value {
    let text = std::fs::read_to_string(data("tiny_gguf_reference.json")).expect("read the reference");
    serde_json::from_str(&text).expect("parse the reference")
}

/// Opens a tiny model, checking it is the file the reference was computed on.
fn open(name: &str, reference: &serde_json::Value) -> Gguf {
    use sha2::Digest;
    let bytes = std::fs::read(data(name)).expect("read the model");
    let sha = format!("{:x}", sha2::Sha256::digest(&bytes));
    assert_eq!(
        reference["files"][name].as_str(),
        Some(sha.as_str()),
        "{name} changed since the reference was made; rerun scripts/tiny-gguf-models.sh"
    );
    Gguf::open(data(name)).expect("open the model")
}

fn ids(v: &serde_json::Value) -> Vec<u32> {
    v.as_array()
        .expect("an id array")
        .iter()
        .map(|x| x.as_u64().expect("an id") as u32)
        .collect()
}

#[test]
fn sentencepiece_vocabulary_matches_llama_cpp_ids_and_text() {
    let r = reference();
    let g = open("spm-vocab.gguf", &r);
    let tok = Tokenizer::from_gguf(&g).unwrap();
    assert!(tok.adds_bos() && tok.bos() == Some(1) && tok.eos() == Some(2));
    let cases = r["tokenizer"].as_array().unwrap();
    assert!(cases.len() >= 12);
    let mut byte_tokens = 0;
    for c in cases {
        let text = c["text"].as_str().unwrap();
        let want = ids(&c["ids"]);
        let got = tok.encode(text, false).unwrap();
        assert_eq!(got, want, "ids of {text:?}");
        assert_eq!(
            tok.encode(text, true).unwrap(),
            ids(&c["ids_with_bos"]),
            "ids of {text:?} with BOS"
        );
        assert_eq!(
            tok.decode(&got).unwrap(),
            c["decoded"].as_str().unwrap(),
            "text of {text:?}"
        );
        byte_tokens += got
            .iter()
            .filter(|&&i| tok.token(i).is_some_and(|t| t.starts_with("<0x")))
            .count();
    }
    // The prompts exercise the byte fallback (emoji, CJK outside the kept pieces).
    assert!(byte_tokens > 10, "{byte_tokens} byte tokens");
}

fn max_abs(v: &[f64]) -> f64 {
    v.iter().fold(0.0, |a, x| a.max(x.abs()))
}

/// Runs the reference's prompt then its decode tokens; returns the largest
/// |Δ| / max|ref| over the steps.
fn worst_error(cfg: LlamaConfig, g: &Gguf, case: &serde_json::Value) -> f64 {
    let mut m = Llama::new(cfg, g, 32, Arc::new(stitch_cpu::CpuBackend::new())).unwrap();
    let steps = case["steps"].as_array().unwrap();
    let prompt = ids(&case["prompt"]);
    let decode = ids(&case["decode"]);
    assert_eq!(steps.len(), decode.len() + 1);
    let mut worst = 0f64;
    for (i, want) in steps.iter().enumerate() {
        let got = if i == 0 {
            m.forward(&prompt).unwrap()
        } else {
            m.forward(&decode[i - 1..i]).unwrap()
        };
        let want: Vec<f64> = want.as_array().unwrap().iter().map(|v| v.as_f64().unwrap()).collect();
        assert_eq!(got.len(), want.len());
        let err = got
            .iter()
            .zip(&want)
            .map(|(&a, b)| (a as f64 - b).abs())
            .fold(0.0, f64::max);
        worst = worst.max(err / max_abs(&want));
    }
    worst
}

/// Checks a variant against llama.cpp, and that the feature under test
/// matters: the model with it switched off (`without`) misses by far more.
fn check_variant(name: &str, expect: impl Fn(&LlamaConfig), without: impl Fn(&mut LlamaConfig)) {
    let r = reference();
    let g = open(name, &r);
    let cfg = LlamaConfig::from_gguf(&g).unwrap();
    expect(&cfg);
    let case = &r["logits"][name];
    let err = worst_error(cfg.clone(), &g, case);
    eprintln!("{name}: max |Δ| / max|ref| = {err:.2e}");
    assert!(err <= 1e-3, "{name}: max |Δ| / max|ref| = {err:.3e} > 1e-3");
    let mut off = cfg;
    without(&mut off);
    let off_err = worst_error(off, &g, case);
    eprintln!("{name}: without the feature {off_err:.2e}");
    assert!(
        off_err > 2e-2,
        "{name}: the feature under test barely matters ({off_err:.3e})"
    );
}

#[test]
fn llama3_rope_frequency_factors_match_llama_cpp() {
    check_variant(
        "llama3-rope.gguf",
        |c| {
            let f = c.rope_freq_factors.as_ref().expect("rope_freqs.weight read");
            assert_eq!(f.len(), c.head_dim / 2);
            assert_eq!(c.rope_scaling, RopeScaling::None);
        },
        |c| c.rope_freq_factors = None,
    );
}

#[test]
fn linear_rope_scaling_matches_llama_cpp() {
    check_variant(
        "rope-linear.gguf",
        |c| assert_eq!(c.rope_scaling, RopeScaling::Linear { factor: 2.0 }),
        |c| c.rope_scaling = RopeScaling::None,
    );
}

#[test]
fn yarn_rope_scaling_matches_llama_cpp() {
    check_variant(
        "rope-yarn.gguf",
        |c| {
            assert!(
                matches!(c.rope_scaling, RopeScaling::Yarn { factor, original_ctx: 4096, .. } if factor == 4.0),
                "{:?}",
                c.rope_scaling
            )
        },
        |c| c.rope_scaling = RopeScaling::Linear { factor: 4.0 },
    );
}

#[test]
fn qwen2_biases_and_neox_rope_match_llama_cpp() {
    check_variant(
        "qwen2.gguf",
        |c| assert!(c.qkv_bias && c.rope_style == RopeStyle::Halves),
        |c| c.rope_style = RopeStyle::Adjacent,
    );
}

/// A metadata-only llama GGUF with one key changed.
fn with_key(key: &str, v: Value) -> Gguf {
    let mut w = GgufWriter::new();
    let arch = match (key, &v) {
        ("general.architecture", Value::String(a)) => a.clone(),
        _ => "llama".into(),
    };
    w.meta("general.architecture", Value::String(arch.clone()));
    for (k, n) in [
        ("block_count", 1u32),
        ("embedding_length", 8),
        ("attention.head_count", 2),
        ("feed_forward_length", 16),
        ("context_length", 64),
        ("vocab_size", 4),
    ] {
        w.meta(&format!("{arch}.{k}"), Value::U32(n));
    }
    w.meta(&format!("{arch}.attention.layer_norm_rms_epsilon"), Value::F32(1e-5));
    w.meta("tokenizer.ggml.model", Value::String("llama".into()));
    w.meta(
        "tokenizer.ggml.tokens",
        Value::Array(["<unk>", "<s>", "</s>", "a"].map(|s| Value::String(s.into())).to_vec()),
    );
    w.meta("tokenizer.ggml.scores", Value::Array(vec![Value::F32(0.0); 4]));
    if key != "general.architecture" {
        w.meta(key, v);
    }
    Gguf::from_bytes(w.to_bytes()).unwrap()
}

#[test]
fn unsupported_variants_fail_naming_the_key() {
    let e = LlamaConfig::from_gguf(&with_key("llama.rope.scaling.type", Value::String("longrope".into())))
        .unwrap_err()
        .to_string();
    assert!(e.contains("llama.rope.scaling.type") && e.contains("longrope"), "{e}");
    let e = LlamaConfig::from_gguf(&with_key("general.architecture", Value::String("gemma2".into())))
        .unwrap_err()
        .to_string();
    assert!(e.contains("general.architecture") && e.contains("gemma2"), "{e}");
    let e = Tokenizer::from_gguf(&with_key("tokenizer.ggml.model", Value::String("t5".into())))
        .unwrap_err()
        .to_string();
    assert!(e.contains("tokenizer.ggml.model") && e.contains("t5"), "{e}");
    // The metadata-only file itself is accepted: what failed was the key.
    assert!(LlamaConfig::from_gguf(&with_key("llama.rope.scaling.type", Value::String("none".into()))).is_ok());
    assert!(Tokenizer::from_gguf(&with_key("llama.rope.freq_base", Value::F32(10000.0))).is_ok());
}
