//! GPU kernel timings for `bench/gpu_attention.py` (run on a CUDA machine):
//! one op executed directly on the CUDA backend over device-resident inputs,
//! so the figure is the kernel's time, as PyTorch's is on its device tensors.

use std::sync::Arc;
use std::time::Instant;

use rand::{Rng, SeedableRng};
use stitch_core::ops::attention::SdpaAttrs;
use stitch_core::{Backend, DType, Graph, Tensor};

fn dtype(s: &str) -> Result<DType, String> {
    match s {
        "f32" => Ok(DType::F32),
        "f16" => Ok(DType::F16),
        "bf16" => Ok(DType::BF16),
        o => Err(format!("dtype {o}: expected f32, f16 or bf16")),
    }
}

fn random(r: &mut rand_chacha::ChaCha8Rng, dt: DType, shape: &[usize]) -> Result<Tensor, String> {
    let n: usize = shape.iter().product();
    let v: Vec<f64> = (0..n).map(|_| r.gen_range(-1.0..1.0)).collect();
    Tensor::from_f64(dt, &v, shape).map_err(|e| e.to_string())
}

/// `gpu-attention DTYPE B H HK S T D CAUSAL ITERS`: prints one JSON line with
/// the median and minimum milliseconds of ITERS synchronised runs and the
/// attention launches per kernel (`STITCH_CUDA_ATTENTION=auto|cudnn|own`
/// picks the fused prefill kernel).
pub fn attention(args: &[String]) -> Result<(), String> {
    let usage = "usage: stitch-bench gpu-attention DTYPE B H HK S T D CAUSAL(0|1) ITERS";
    if args.len() != 9 {
        return Err(usage.into());
    }
    let dt = dtype(&args[0])?;
    let n: Vec<usize> = args[1..]
        .iter()
        .map(|a| a.parse::<usize>().map_err(|e| format!("{a}: {e}; {usage}")))
        .collect::<Result<_, _>>()?;
    let (b, h, hk, s, t, d, causal, iters) = (n[0], n[1], n[2], n[3], n[4], n[5], n[6] != 0, n[7].max(1));
    let cuda = Arc::new(stitch_cuda::CudaBackend::new(0).map_err(|e| e.to_string())?);
    let backend: Arc<dyn Backend> = cuda.clone();
    let mut g = Graph::new();
    let q = g.placeholder("q", dt, [b, h, s, d]);
    let k = g.placeholder("k", dt, [b, hk, t, d]);
    let v = g.placeholder("v", dt, [b, hk, t, d]);
    let y = g
        .sdpa(q, k, v, None, SdpaAttrs { scale: None, causal })
        .map_err(|e| e.to_string())?;
    let node = g.node(y.node).clone();
    let mut r = rand_chacha::ChaCha8Rng::seed_from_u64(7);
    let inputs = [
        backend.upload(&random(&mut r, dt, &[b, h, s, d])?),
        backend.upload(&random(&mut r, dt, &[b, hk, t, d])?),
        backend.upload(&random(&mut r, dt, &[b, hk, t, d])?),
    ]
    .into_iter()
    .collect::<Result<Vec<_>, _>>()
    .map_err(|e| e.to_string())?;
    let run = || -> Result<f64, String> {
        let t0 = Instant::now();
        backend.execute(&node, &inputs).map_err(|e| e.to_string())?;
        backend.synchronize().map_err(|e| e.to_string())?;
        Ok(t0.elapsed().as_secs_f64() * 1e3)
    };
    for _ in 0..3 {
        run()?;
    }
    let mut times: Vec<f64> = (0..iters).map(|_| run()).collect::<Result<_, _>>()?;
    times.sort_by(f64::total_cmp);
    let flops = 4.0 * (b * h * s * t * d) as f64 / if causal { 2.0 } else { 1.0 };
    let median = times[times.len() / 2];
    let p = cuda.attention_paths();
    println!(
        "{{\"median_ms\": {median:.4}, \"min_ms\": {:.4}, \"tflops\": {:.2}, \"mode\": \"{:?}\", \"launches\": {{\"flash\": {}, \"split_kv\": {}, \"per_row\": {}, \"cudnn\": {}}}, \"cudnn\": \"{}\"}}",
        times[0],
        flops / (median * 1e-3) / 1e12,
        cuda.attention_mode(),
        p[0],
        p[1],
        p[2],
        p[3],
        cuda.cudnn_status().replace('"', "'")
    );
    Ok(())
}
