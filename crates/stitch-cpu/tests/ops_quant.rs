//! Quantized weights: `dequantize` and `quant_matmul` on the CPU against an f64
//! reference, for every format, in both the few-row (GEMV) and many-row (GEMM)
//! paths, plus the decomposition (dequantize + matmul) as a cross-check.

mod common;

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use stitch_core::quant::{dequantize_row, QuantFormat};
use stitch_core::{DType, Op, Tensor};

/// Random packed rows: random bytes with sane f16 scales at each block's scale
/// fields (random bytes there could be NaN/inf).
fn random_packed(r: &mut ChaCha8Rng, format: QuantFormat, n: usize, k: usize) -> Tensor {
    let rb = format.row_bytes(k).unwrap();
    let mut bytes: Vec<u8> = (0..n * rb).map(|_| r.gen()).collect();
    let h = |v: f32| half::f16::from_f32(v).to_bits().to_le_bytes();
    for blk in bytes.chunks_exact_mut(format.block_bytes()) {
        let d = r.gen_range(0.001f32..0.05);
        let m = r.gen_range(-0.2f32..0.2);
        match format {
            QuantFormat::Q8_0 | QuantFormat::Q4_0 | QuantFormat::Q5_0 => blk[..2].copy_from_slice(&h(d)),
            QuantFormat::Q4_1 | QuantFormat::Q5_1 | QuantFormat::Q4_K | QuantFormat::Q5_K => {
                blk[..2].copy_from_slice(&h(d));
                blk[2..4].copy_from_slice(&h(m.abs()));
            }
            QuantFormat::Q6_K => blk[208..210].copy_from_slice(&h(d)),
        }
    }
    Tensor::from_vec(bytes, &[n, rb]).unwrap()
}

fn reference(x: &[f32], w: &Tensor, format: QuantFormat, m: usize, n: usize, k: usize) -> Vec<f64> {
    let bytes = w.to_vec::<u8>().unwrap();
    let rb = format.row_bytes(k).unwrap();
    let mut wf = vec![0f32; n * k];
    for r in 0..n {
        dequantize_row(format, &bytes[r * rb..(r + 1) * rb], &mut wf[r * k..(r + 1) * k]).unwrap();
    }
    let mut out = vec![0f64; m * n];
    for i in 0..m {
        for j in 0..n {
            out[i * n + j] = (0..k).map(|p| x[i * k + p] as f64 * wf[j * k + p] as f64).sum();
        }
    }
    out
}

fn check_all_formats(int8: bool) {
    let mut r = ChaCha8Rng::seed_from_u64(17);
    for format in QuantFormat::ALL {
        let k = format.block_elems() * 3;
        let n = 37;
        for m in [1usize, 3, 20] {
            let w = random_packed(&mut r, format, n, k);
            let x = common::random(&mut r, DType::F32, &[m, k]);
            let xv = x.to_vec::<f32>().unwrap();
            let want = reference(&xv, &w, format, m, n, k);
            let got = common::run_op(Op::QuantMatMul { format }, &[x.clone(), w.clone()]).unwrap();
            assert_eq!(got[0].shape(), &[m, n]);
            let quantized = int8 && m < 8;
            if quantized {
                // 8-bit activations: within 1% of the largest output.
                let scale = want.iter().fold(0f64, |a, v| a.max(v.abs()));
                common::assert_close_tol(
                    &got[0],
                    &want,
                    &[m, n],
                    0.0,
                    1e-2 * scale,
                    &format!("{format} m={m} int8"),
                );
            } else {
                // f32 activations: f32 accumulation over k terms.
                common::assert_close_tol(&got[0], &want, &[m, n], 2e-4, 1e-3, &format!("{format} m={m}"));
            }
            // The decomposition (dequantize, then matmul) agrees too.
            let dec = common::run_op_decomposed(Op::QuantMatMul { format }, &[x, w]).unwrap();
            common::assert_close_tol(
                &dec[0],
                &want,
                &[m, n],
                2e-4,
                1e-3,
                &format!("{format} m={m} decomposed"),
            );
        }
    }
}

#[test]
fn quant_matmul_matches_f64_reference_for_every_format_and_path() {
    // Default: few-row products quantize activations to 8 bits (every format).
    check_all_formats(true);
    // The f32-activation path (the other tests in this binary do not depend on it).
    stitch_cpu::kernels::quant::set_quantize_activations(false);
    check_all_formats(false);
    stitch_cpu::kernels::quant::set_quantize_activations(true);
}

#[test]
fn dequantize_expands_rows_like_the_reference() {
    let mut r = ChaCha8Rng::seed_from_u64(5);
    for format in QuantFormat::ALL {
        let (n, k) = (5, format.block_elems() * 2);
        let w = random_packed(&mut r, format, n, k);
        let got = common::run_op(Op::Dequantize { format }, std::slice::from_ref(&w)).unwrap();
        let bytes = w.to_vec::<u8>().unwrap();
        let mut want = vec![0f32; n * k];
        let rb = format.row_bytes(k).unwrap();
        for i in 0..n {
            dequantize_row(format, &bytes[i * rb..(i + 1) * rb], &mut want[i * k..(i + 1) * k]).unwrap();
        }
        assert_eq!(got[0].to_vec::<f32>().unwrap(), want, "{format}");
    }
}

#[test]
fn wrong_weight_shapes_are_errors_naming_the_shapes() {
    let mut r = ChaCha8Rng::seed_from_u64(1);
    let w = random_packed(&mut r, QuantFormat::Q4_1, 4, 64);
    let x = common::random(&mut r, DType::F32, &[2, 32]);
    let err = common::run_op(
        Op::QuantMatMul {
            format: QuantFormat::Q4_1,
        },
        &[x, w],
    )
    .unwrap_err()
    .to_string();
    assert!(err.contains("32") && err.contains("64"), "{err}");
}
