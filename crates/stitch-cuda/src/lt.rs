//! Matmul through cuBLASLt: f32 (TF32 tensor cores when asked), f16 and bf16
//! with f32 accumulation, batched, with a bias epilogue.
//!
//! Row-major `C = op(A) · op(B)` is issued as the column-major product
//! `Cᵀ = op(B)ᵀ · op(A)ᵀ`, so the bias (one value per column of C) is
//! cuBLASLt's per-row bias. The matmul descriptor, the three layouts and the
//! algorithm cuBLASLt's heuristic picks are built once per problem ([`LtKey`])
//! and reused; only the bias pointer is set per call.

use std::collections::HashMap;
use std::ffi::c_void;
use std::mem::size_of;
use std::sync::Arc;

use cudarc::cublaslt::{result as lt, sys};
use cudarc::driver::{CudaSlice, CudaStream, DevicePtr};
use stitch_core::DType;

/// Everything a cached matmul plan depends on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct LtKey {
    /// Element type of A, B, C (and the bias).
    pub dtype: DType,
    /// A is stored `[k, m]` (else `[m, k]`).
    pub ta: bool,
    /// B is stored `[n, k]` (else `[k, n]`).
    pub tb: bool,
    pub m: usize,
    pub n: usize,
    pub k: usize,
    /// Independent products, each operand contiguous and packed back to back.
    pub batch: usize,
    /// Add a bias of `n` values to every row.
    pub bias: bool,
    /// f32 through TF32 tensor cores.
    pub tf32: bool,
    /// The alignment in bytes (a power of two, at most 256) every operand
    /// address has; cuBLASLt only picks algorithms that work with it.
    pub align: u32,
    /// Activation epilogue: [`ACT_NONE`], [`ACT_RELU`] or [`ACT_GELU_TANH`].
    pub act: u8,
}

/// No activation epilogue.
pub const ACT_NONE: u8 = 0;
/// ReLU epilogue (`CUBLASLT_EPILOGUE_RELU[_BIAS]`).
pub const ACT_RELU: u8 = 1;
/// Tanh-approximated GELU epilogue (`CUBLASLT_EPILOGUE_GELU[_BIAS]`; cuBLASLt
/// has no exact-erf GELU).
pub const ACT_GELU_TANH: u8 = 2;

/// The largest power of two (at most 256) dividing every address.
pub fn alignment(ptrs: &[u64]) -> u32 {
    ptrs.iter()
        .filter(|&&p| p != 0)
        .map(|&p| 1u64 << p.trailing_zeros().min(8))
        .min()
        .unwrap_or(256) as u32
}

struct Plan {
    desc: sys::cublasLtMatmulDesc_t,
    layouts: [sys::cublasLtMatrixLayout_t; 3],
    algo: sys::cublasLtMatmulAlgo_t,
}

impl Drop for Plan {
    fn drop(&mut self) {
        // SAFETY: handles created by `Lt::plan` and owned here; errors on teardown are ignored.
        unsafe {
            for l in self.layouts {
                let _ = lt::destroy_matrix_layout(l);
            }
            let _ = lt::destroy_matmul_desc(self.desc);
        }
    }
}

/// A cuBLASLt handle, its workspace and the plans built so far.
pub struct Lt {
    handle: sys::cublasLtHandle_t,
    workspace: CudaSlice<u8>,
    plans: HashMap<LtKey, Plan>,
}

// SAFETY: the handle and plans are used only under the backend's mutex, on its stream.
unsafe impl Send for Lt {}

impl std::fmt::Debug for Lt {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Lt({} plans)", self.plans.len())
    }
}

impl Drop for Lt {
    fn drop(&mut self) {
        self.plans.clear();
        // SAFETY: created in `new`, destroyed once.
        unsafe {
            let _ = lt::destroy_handle(self.handle);
        }
    }
}

fn data_type(d: DType) -> Result<sys::cudaDataType, String> {
    Ok(match d {
        DType::F32 => sys::cudaDataType::CUDA_R_32F,
        DType::F16 => sys::cudaDataType::CUDA_R_16F,
        DType::BF16 => sys::cudaDataType::CUDA_R_16BF,
        d => return Err(format!("cuBLASLt matmul of {d} is not supported (f32, f16, bf16 are)")),
    })
}

fn check(what: &str, r: std::result::Result<(), lt::CublasError>) -> Result<(), String> {
    r.map_err(|e| format!("cuBLASLt {what}: {e:?}"))
}

impl Lt {
    /// A handle and a workspace (32 MiB on Hopper and newer, 4 MiB before, as
    /// NVIDIA recommends).
    pub fn new(stream: &Arc<CudaStream>, major: i32) -> Result<Lt, String> {
        let handle = lt::create_handle().map_err(|e| format!("cuBLASLt: cannot create a handle: {e:?}"))?;
        let size = if major >= 9 { 32 << 20 } else { 4 << 20 };
        // SAFETY: scratch memory for cuBLASLt, never read by us.
        let workspace = match unsafe { stream.alloc::<u8>(size) } {
            Ok(w) => w,
            Err(e) => {
                // SAFETY: just created.
                unsafe {
                    let _ = lt::destroy_handle(handle);
                }
                return Err(format!("cuBLASLt: cannot allocate its {size}-byte workspace: {e}"));
            }
        };
        Ok(Lt {
            handle,
            workspace,
            plans: HashMap::new(),
        })
    }

    fn build(&self, key: LtKey) -> Result<Plan, String> {
        let dt = data_type(key.dtype)?;
        let compute = if key.dtype == DType::F32 && key.tf32 {
            sys::cublasComputeType_t::CUBLAS_COMPUTE_32F_FAST_TF32
        } else {
            sys::cublasComputeType_t::CUBLAS_COMPUTE_32F
        };
        let (m, n, k) = (key.m as u64, key.n as u64, key.k as u64);
        let desc = lt::create_matmul_desc(compute, sys::cudaDataType::CUDA_R_32F)
            .map_err(|e| format!("cuBLASLt: matmul descriptor: {e:?}"))?;
        let mut plan = Plan {
            desc,
            layouts: [std::ptr::null_mut(); 3],
            algo: unsafe { std::mem::zeroed() },
        };
        // Column-major operands: "A" is our B (n × k after its op), "B" is our A.
        let (rows_a, cols_a, ld_a) = if key.tb { (k, n, k as i64) } else { (n, k, n as i64) };
        let (rows_b, cols_b, ld_b) = if key.ta { (m, k, m as i64) } else { (k, m, k as i64) };
        let shapes = [
            (rows_a, cols_a, ld_a, (k * n) as i64),
            (rows_b, cols_b, ld_b, (m * k) as i64),
            (n, m, n as i64, (m * n) as i64),
        ];
        for (i, (r, c, ld, stride)) in shapes.into_iter().enumerate() {
            plan.layouts[i] = lt::create_matrix_layout(dt, r, c, ld).map_err(|e| format!("cuBLASLt: layout: {e:?}"))?;
            if key.batch > 1 {
                let count = key.batch as i32;
                // SAFETY: plain values of the documented attribute types.
                unsafe {
                    check(
                        "batch count",
                        lt::set_matrix_layout_attribute(
                            plan.layouts[i],
                            sys::cublasLtMatrixLayoutAttribute_t::CUBLASLT_MATRIX_LAYOUT_BATCH_COUNT,
                            &count as *const i32 as *const c_void,
                            size_of::<i32>(),
                        ),
                    )?;
                    check(
                        "batch stride",
                        lt::set_matrix_layout_attribute(
                            plan.layouts[i],
                            sys::cublasLtMatrixLayoutAttribute_t::CUBLASLT_MATRIX_LAYOUT_STRIDED_BATCH_OFFSET,
                            &stride as *const i64 as *const c_void,
                            size_of::<i64>(),
                        ),
                    )?;
                }
            }
        }
        let op = |t: bool| {
            if t {
                cudarc::cublas::sys::cublasOperation_t::CUBLAS_OP_T
            } else {
                cudarc::cublas::sys::cublasOperation_t::CUBLAS_OP_N
            }
        };
        let (op_a, op_b) = (op(key.tb), op(key.ta));
        let epilogue = {
            use sys::cublasLtEpilogue_t as E;
            match (key.bias, key.act) {
                (false, ACT_RELU) => E::CUBLASLT_EPILOGUE_RELU,
                (true, ACT_RELU) => E::CUBLASLT_EPILOGUE_RELU_BIAS,
                (false, ACT_GELU_TANH) => E::CUBLASLT_EPILOGUE_GELU,
                (true, ACT_GELU_TANH) => E::CUBLASLT_EPILOGUE_GELU_BIAS,
                (true, _) => E::CUBLASLT_EPILOGUE_BIAS,
                (false, _) => E::CUBLASLT_EPILOGUE_DEFAULT,
            }
        };
        // SAFETY: plain values of the documented attribute types.
        unsafe {
            check(
                "transa",
                lt::set_matmul_desc_attribute(
                    desc,
                    sys::cublasLtMatmulDescAttributes_t::CUBLASLT_MATMUL_DESC_TRANSA,
                    &op_a as *const _ as *const c_void,
                    size_of::<cudarc::cublas::sys::cublasOperation_t>(),
                ),
            )?;
            check(
                "transb",
                lt::set_matmul_desc_attribute(
                    desc,
                    sys::cublasLtMatmulDescAttributes_t::CUBLASLT_MATMUL_DESC_TRANSB,
                    &op_b as *const _ as *const c_void,
                    size_of::<cudarc::cublas::sys::cublasOperation_t>(),
                ),
            )?;
            check(
                "epilogue",
                lt::set_matmul_desc_attribute(
                    desc,
                    sys::cublasLtMatmulDescAttributes_t::CUBLASLT_MATMUL_DESC_EPILOGUE,
                    &epilogue as *const _ as *const c_void,
                    size_of::<sys::cublasLtEpilogue_t>(),
                ),
            )?;
        }
        let pref = lt::create_matmul_pref().map_err(|e| format!("cuBLASLt: preference: {e:?}"))?;
        let ws = self.workspace.len();
        // SAFETY: plain values; the preference is destroyed below.
        let heuristic = unsafe {
            use sys::cublasLtMatmulPreferenceAttributes_t as P;
            let align = key.align;
            let set_align = |attr: P| {
                check(
                    "alignment preference",
                    lt::set_matmul_pref_attribute(pref, attr, &align as *const u32 as *const c_void, size_of::<u32>()),
                )
            };
            let r = check(
                "workspace preference",
                lt::set_matmul_pref_attribute(
                    pref,
                    P::CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES,
                    &ws as *const usize as *const c_void,
                    size_of::<usize>(),
                ),
            )
            .and_then(|_| set_align(P::CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_A_BYTES))
            .and_then(|_| set_align(P::CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_B_BYTES))
            .and_then(|_| set_align(P::CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_C_BYTES))
            .and_then(|_| set_align(P::CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_D_BYTES))
            .and_then(|_| {
                lt::get_matmul_algo_heuristic(
                    self.handle,
                    desc,
                    plan.layouts[0],
                    plan.layouts[1],
                    plan.layouts[2],
                    plan.layouts[2],
                    pref,
                )
                .map_err(|e| format!("cuBLASLt found no algorithm for {key:?}: {e:?}"))
            });
            let _ = lt::destroy_matmul_pref(pref);
            r?
        };
        plan.algo = heuristic.algo;
        Ok(plan)
    }

    /// `C = alpha · op(A) · op(B) (+ bias) + beta · C` for the problem `key`.
    ///
    /// # Safety
    /// `a`, `b`, `c` (and `bias` when `key.bias`) are device addresses of
    /// contiguous buffers of `key.dtype` with the sizes `key` describes, on
    /// `stream`'s context.
    #[allow(clippy::too_many_arguments)]
    pub unsafe fn matmul(
        &mut self,
        stream: &CudaStream,
        key: LtKey,
        alpha: f32,
        beta: f32,
        a: u64,
        b: u64,
        c: u64,
        bias: u64,
    ) -> Result<(), String> {
        if !self.plans.contains_key(&key) {
            let p = self.build(key)?;
            self.plans.insert(key, p);
        }
        let plan = self.plans.get(&key).ok_or_else(|| "cuBLASLt: plan cache".to_string())?;
        let (ws, _sync) = self.workspace.device_ptr(stream);
        let ws_len = self.workspace.len();
        let handle = self.handle;
        if key.bias {
            check(
                "bias pointer",
                lt::set_matmul_desc_attribute(
                    plan.desc,
                    sys::cublasLtMatmulDescAttributes_t::CUBLASLT_MATMUL_DESC_BIAS_POINTER,
                    &bias as *const u64 as *const c_void,
                    size_of::<u64>(),
                ),
            )?;
        }
        check(
            "matmul",
            lt::matmul(
                handle,
                plan.desc,
                &alpha as *const f32 as *const c_void,
                &beta as *const f32 as *const c_void,
                b as *const c_void,
                plan.layouts[0],
                a as *const c_void,
                plan.layouts[1],
                c as *const c_void,
                plan.layouts[2],
                c as *mut c_void,
                plan.layouts[2],
                &plan.algo,
                ws as *mut c_void,
                ws_len,
                stream.cu_stream() as sys::cudaStream_t,
            ),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::alignment;

    #[test]
    fn alignment_is_the_weakest_operands_power_of_two() {
        assert_eq!(alignment(&[4096, 1 << 20]), 256);
        assert_eq!(alignment(&[4096, 0x1008]), 8);
        assert_eq!(alignment(&[0x1002, 0x1010, 0]), 2);
        // A missing operand (address 0, e.g. no bias) does not count.
        assert_eq!(alignment(&[0x1040, 0]), 64);
    }
}
