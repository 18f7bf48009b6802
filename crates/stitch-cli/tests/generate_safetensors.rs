//! `stitch generate --model DIR` on a Hugging Face directory (config.json +
//! model.safetensors + tokenizer.json): the default model, written in that
//! layout, answers the pinned prompt as the GGUF file does.

use std::path::PathBuf;
use std::process::Command;

use stitch_models::gguf::Gguf;
use stitch_models::llama::LlamaConfig;
use stitch_models::safetensors::write_hf_dir;
use stitch_models::tokenizer::Tokenizer;

const PROMPT: &str = "<|im_start|>user\nWhat is the capital of France?<|im_end|>\n<|im_start|>assistant\n";

fn generate(model: &str) -> serde_json::Value {
    let out = Command::new(env!("CARGO_BIN_EXE_stitch"))
        .args(["generate", "--model", model, "--prompt", PROMPT])
        .args(["--temperature", "0", "--max-tokens", "16", "--json"])
        .env("RAYON_NUM_THREADS", "2")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "stitch generate --model {model}: {stderr}");
    serde_json::from_slice(&out.stdout).unwrap()
}

#[test]
fn generate_runs_a_hugging_face_directory_like_its_gguf() {
    let gguf_path = stitch_models::fetch::default_model().unwrap();
    let g = Gguf::open(&gguf_path).unwrap();
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("cli-smollm2-hf");
    let _ = std::fs::remove_dir_all(&dir);
    write_hf_dir(
        &dir,
        &LlamaConfig::from_gguf(&g).unwrap(),
        &g,
        &Tokenizer::from_gguf(&g).unwrap(),
    )
    .unwrap();
    let hf = generate(dir.to_str().unwrap());
    let gguf = generate(gguf_path.to_str().unwrap());
    let _ = std::fs::remove_dir_all(&dir);
    assert_eq!(hf["prompt_ids"], gguf["prompt_ids"], "same tokens");
    assert_eq!(hf["text"], "The capital of France is Paris.", "{hf}");
    assert_eq!(hf["text"], gguf["text"]);
}
