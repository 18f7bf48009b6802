//! Greedy generation from a GGUF file: `cargo run --release -p stitch-models --example greedy -- MODEL.gguf "prompt"`.
use std::sync::Arc;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().collect();
    let g = stitch_models::gguf::Gguf::open(&args[1])?;
    let tok = stitch_models::tokenizer::Tokenizer::from_gguf(&g)?;
    let cfg = stitch_models::llama::LlamaConfig::from_gguf(&g)?;
    let t0 = std::time::Instant::now();
    let mut m = stitch_models::llama::Llama::new(cfg, &g, 512, Arc::new(stitch_cpu::CpuBackend::new()))?;
    eprintln!("build+compile {:?}", t0.elapsed());
    let ids = tok.encode(&args[2], true)?;
    eprintln!("prompt ids {ids:?}");
    let t0 = std::time::Instant::now();
    let mut logits = m.forward(&ids)?;
    eprintln!("prefill {:?}", t0.elapsed());
    let mut out = Vec::new();
    let t0 = std::time::Instant::now();
    for _ in 0..24 {
        let next = logits
            .iter()
            .enumerate()
            .fold((0, f32::NEG_INFINITY), |a, (i, &v)| if v > a.1 { (i, v) } else { a })
            .0 as u32;
        out.push(next);
        if tok.eog_ids().contains(&next) {
            break;
        }
        logits = m.forward(&[next])?;
    }
    eprintln!("decode {} tokens {:?}", out.len(), t0.elapsed());
    println!("{:?}\n{}", out, tok.decode(&out)?);
    Ok(())
}
