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

/// `gpu-qgemv FORMAT N K ROWS ITERS`: `x [ROWS, K] @ dequantize(w [N, K])ᵀ` on
/// the CUDA backend with random packed weights of FORMAT (q8_0, q4_0, q4_1,
/// q5_0, q5_1, q4_k, q5_k, q6_k), once with the weight as a plan constant
/// (repacked on upload for 16-byte loads) and once as a device input in the
/// GGUF layout. ITERS launches are enqueued between two synchronisations, so
/// the time per call is the kernel's (host launch overlaps it). Prints one JSON
/// line: microseconds per call and weight GB/s for each layout, and whether
/// the two results agree bit for bit.
pub fn qgemv(args: &[String]) -> Result<(), String> {
    use stitch_core::QuantFormat as Q;
    let usage = "usage: stitch-bench gpu-qgemv FORMAT N K ROWS ITERS";
    if args.len() != 5 {
        return Err(usage.into());
    }
    let format = match args[0].to_lowercase().as_str() {
        "q8_0" => Q::Q8_0,
        "q4_0" => Q::Q4_0,
        "q4_1" => Q::Q4_1,
        "q5_0" => Q::Q5_0,
        "q5_1" => Q::Q5_1,
        "q4_k" => Q::Q4_K,
        "q5_k" => Q::Q5_K,
        "q6_k" => Q::Q6_K,
        o => return Err(format!("format {o}; {usage}")),
    };
    let n: Vec<usize> = args[1..]
        .iter()
        .map(|a| a.parse::<usize>().map_err(|e| format!("{a}: {e}; {usage}")))
        .collect::<Result<_, _>>()?;
    let (n, k, rows, iters) = (n[0], n[1], n[2].max(1), n[3].max(1));
    let rb = format.row_bytes(k).map_err(|e| e.to_string())?;
    let mut r = rand_chacha::ChaCha8Rng::seed_from_u64(9);
    // Random bytes with small finite f16 scales at each format's scale fields.
    let mut bytes: Vec<u8> = (0..n * rb).map(|_| r.gen()).collect();
    let fields: &[usize] = match format {
        Q::Q8_0 | Q::Q4_0 | Q::Q5_0 => &[0],
        Q::Q4_1 | Q::Q5_1 | Q::Q4_K | Q::Q5_K => &[0, 2],
        Q::Q6_K => &[208],
    };
    for blk in bytes.chunks_exact_mut(format.block_bytes()) {
        for &f in fields {
            let v = stitch_core::half::f16::from_f32(r.gen_range(-0.05f32..0.05));
            blk[f..f + 2].copy_from_slice(&v.to_bits().to_le_bytes());
        }
    }
    let w = Tensor::from_vec(bytes, &[n, rb]).map_err(|e| e.to_string())?;
    let cuda = Arc::new(stitch_cuda::CudaBackend::new(0).map_err(|e| e.to_string())?);
    let backend: Arc<dyn Backend> = cuda.clone();
    let mut g = Graph::new();
    let x = g.placeholder("x", DType::F32, [rows, k]);
    let wv = g.placeholder("w", DType::U8, [n, rb]);
    let y = g.quant_matmul(x, wv, format).map_err(|e| e.to_string())?;
    let node = g.node(y.node).clone();
    let s = |e: stitch_core::Error| e.to_string();
    let xd = backend.upload(&random(&mut r, DType::F32, &[rows, k])?).map_err(s)?;
    let wd = backend.upload(&w).map_err(s)?;
    let prepared = backend
        .prepare(&node, &[None, Some(&w)])
        .map_err(s)?
        .ok_or("the CUDA backend prepared nothing for a constant quantized weight")?;
    let inputs = [xd, wd];
    let time = |f: &dyn Fn() -> Result<stitch_core::Outputs, stitch_core::Error>| -> Result<(f64, Tensor), String> {
        let out = f().map_err(s)?;
        backend.synchronize().map_err(s)?;
        let mut best = f64::INFINITY;
        for _ in 0..5 {
            let t0 = Instant::now();
            for _ in 0..iters {
                f().map_err(s)?;
            }
            backend.synchronize().map_err(s)?;
            best = best.min(t0.elapsed().as_secs_f64() * 1e6 / iters as f64);
        }
        Ok((best, backend.download(&out[0]).map_err(s)?))
    };
    let (us_packed, y_packed) = time(&|| backend.execute_prepared(&node, &inputs, &prepared))?;
    let (us_gguf, y_gguf) = time(&|| backend.execute(&node, &inputs))?;
    let gb = (n * rb) as f64 / 1e9;
    println!(
        "{{\"format\": \"{format:?}\", \"n\": {n}, \"k\": {k}, \"rows\": {rows}, \"us_repacked\": {us_packed:.2}, \"us_gguf\": {us_gguf:.2}, \"gbs_repacked\": {:.0}, \"gbs_gguf\": {:.0}, \"same_bits\": {}}}",
        gb / (us_packed * 1e-6),
        gb / (us_gguf * 1e-6),
        y_packed.to_f64_vec() == y_gguf.to_f64_vec()
    );
    Ok(())
}
