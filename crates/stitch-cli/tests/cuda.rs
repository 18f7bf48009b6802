//! The default model on CUDA: greedy tokens equal the CPU's for the pinned
//! prompt. Needs a GPU and the default model in the cache (stage it with
//! `../shared/tools/stage-gpu --cache models`).

use stitch_cli::generate::load_on;

const PROMPT: &str = "<|im_start|>user\nWhat is the capital of France?<|im_end|>\n<|im_start|>assistant\n";

fn greedy(device: &str, steps: usize) -> (Vec<u32>, String, Vec<f32>) {
    let path = stitch_models::fetch::default_model().expect("the default model");
    let mut l = load_on(&path, 256, device).expect("load");
    let ids = l.tokenizer.encode(PROMPT, true).unwrap();
    let mut logits = l.model.forward(&ids).unwrap();
    let first = logits.clone();
    let mut out = Vec::new();
    for _ in 0..steps {
        let next = logits
            .iter()
            .enumerate()
            .fold((0, f32::NEG_INFINITY), |b, (i, &v)| if v > b.1 { (i, v) } else { b })
            .0 as u32;
        out.push(next);
        logits = l.model.forward(&[next]).unwrap();
    }
    let text = l.tokenizer.decode(&out).unwrap();
    (out, text, first)
}

#[test]
#[ignore = "needs a CUDA GPU"]
fn default_model_greedy_tokens_on_cuda_equal_the_cpus() {
    // The CPU's f32-activation path, as the GPU kernels compute.
    stitch_cpu::kernels::quant::set_quantize_activations(false);
    let (cpu, cpu_text, cpu_logits) = greedy("cpu", 8);
    let (gpu, gpu_text, gpu_logits) = greedy("cuda", 8);
    let scale = cpu_logits.iter().fold(0f32, |m, v| m.max(v.abs()));
    let diff = cpu_logits
        .iter()
        .zip(&gpu_logits)
        .fold(0f32, |m, (a, b)| m.max((a - b).abs()));
    println!(
        "cpu: {cpu_text:?}\ngpu: {gpu_text:?}\nfirst-step logits: max|Δ| / max|cpu| = {:.2e}",
        diff / scale
    );
    assert!(
        diff <= 1e-3 * scale,
        "first-step logits differ by {diff} (scale {scale})"
    );
    assert_eq!(gpu, cpu, "greedy tokens differ: {gpu_text:?} vs {cpu_text:?}");
    assert!(gpu_text.starts_with("The capital of France is Paris"), "{gpu_text:?}");
}
