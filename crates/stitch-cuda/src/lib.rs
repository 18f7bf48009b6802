//! The CUDA backend of stitch.
//!
//! Built on `cudarc` with the CUDA libraries loaded at run time, so this crate
//! compiles (and the CPU path works) on machines without CUDA; creating a
//! [`CudaBackend`] there fails with an error naming the missing library.
//!
//! * Memory: each tensor owns a device allocation ([`CudaMem`]); views
//!   (reshape, transpose, slice, expand) are metadata over it, as on the CPU.
//! * Fused regions and single elementwise ops are printed as CUDA C
//!   ([`codegen`]), compiled with NVRTC for the device's architecture and
//!   cached on disk ([`cache`]).
//! * Matmul and Gemm go through cuBLASLt ([`lt`]: f32, TF32 when
//!   `STITCH_CUDA_TF32=1`, f16, bf16; batched; Gemm's bias as an epilogue).
//! * Softmax, layer/RMS norm, gather, quantized GEMV and attention are
//!   hand-written kernels ([`kernels`]): attention runs on tensor cores for
//!   f16/bf16 prefill (`st_flash_*`), split over the keys for few queries or
//!   long caches (`st_decode_*`), else one block per query row. 16-bit prefill
//!   also runs through cuDNN's fused attention ([`cudnn`]) where cuDNN is
//!   present and measured faster for the shape ([`AttentionMode`]).
//! * Constant quantized weights are repacked on upload for 16-byte loads
//!   ([`kernels::repack_quant`]).
//!
//! Ops it does not run fall back to the CPU backend through placement
//! (`Executable::compile_placed(.., vec![cuda, cpu], ..)`), with counted copies.

pub mod cache;
pub mod codegen;
pub mod cudnn;
pub mod kernels;
pub mod lt;
mod more_ops;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use cudarc::driver::{CudaContext, CudaFunction, CudaSlice, CudaStream, DevicePtr, LaunchConfig, PushKernelArg};
use stitch_core::ops::fused::{Expr, Region, RegionReduce};
use stitch_core::ops::reduce::ReduceOp;
use stitch_core::ops::{BinaryOp, Op};
use stitch_core::{Backend, DType, DeviceMemory, Error, Node, Outputs, Result, Tensor};

use crate::cache::{KernelCache, KeyParts};
use crate::codegen::{Meta, MAX_OPERANDS, MAX_RANK};

/// Which fused kernel runs f16/bf16 prefill attention (no mask, head size 64
/// or 128), from `STITCH_CUDA_ATTENTION` (`auto`, `cudnn`, `own`) or
/// [`CudaBackend::set_attention_mode`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum AttentionMode {
    /// Per shape, the faster of cuDNN and `st_flash_*`, timed once on the
    /// first call of that shape (`st_flash_*` where cuDNN cannot run it).
    Auto = 0,
    /// cuDNN's fused attention wherever it builds a plan, else `st_flash_*`.
    Cudnn = 1,
    /// stitch's own `st_flash_*` kernels only.
    Own = 2,
}

impl AttentionMode {
    fn from_env() -> AttentionMode {
        match std::env::var("STITCH_CUDA_ATTENTION").as_deref() {
            Ok("cudnn") => AttentionMode::Cudnn,
            Ok("own") => AttentionMode::Own,
            Ok("auto") | Err(_) => AttentionMode::Auto,
            Ok(other) => {
                eprintln!("stitch: STITCH_CUDA_ATTENTION={other:?} is not one of auto, cudnn, own; using auto");
                AttentionMode::Auto
            }
        }
    }

    fn from_u8(v: u8) -> AttentionMode {
        match v {
            1 => AttentionMode::Cudnn,
            2 => AttentionMode::Own,
            _ => AttentionMode::Auto,
        }
    }
}

/// The ordered backend list for a device name: `cpu`; `cuda` or `cuda:N` (the
/// GPU first, the CPU last as the fallback for ops the GPU backend lacks).
/// Errors are ready to print after `--device`.
pub fn backends_for(device: &str) -> std::result::Result<Vec<Arc<dyn Backend>>, String> {
    let cpu: Arc<dyn Backend> = Arc::new(stitch_cpu::CpuBackend::new());
    match device {
        "cpu" => Ok(vec![cpu]),
        n if n == "cuda" || n.starts_with("cuda:") => {
            let ordinal = match n.strip_prefix("cuda:") {
                None => 0,
                Some(k) => k
                    .parse::<usize>()
                    .map_err(|_| format!("--device {n}: expected cuda or cuda:N with N a GPU number"))?,
            };
            let cuda = CudaBackend::new(ordinal).map_err(|e| format!("--device {n}: {e}"))?;
            Ok(vec![Arc::new(cuda), cpu])
        }
        n => Err(format!(
            "--device {n}: unknown device; use `cpu`, `cuda` or `cuda:N` (see `stitch info` for what this machine has)"
        )),
    }
}

/// A GPU as `stitch info` lists it.
#[derive(Debug, Clone)]
pub struct DeviceInfo {
    /// Ordinal (`cuda:N`).
    pub ordinal: usize,
    /// Marketing name.
    pub name: String,
    /// Compute capability.
    pub capability: (i32, i32),
    /// Total memory in bytes.
    pub total_memory: usize,
    /// Free memory in bytes.
    pub free_memory: usize,
}

fn err(msg: impl Into<String>) -> Error {
    Error::invalid(msg.into())
}

/// Checks that the CUDA driver library can be loaded, naming it when not.
fn check_driver() -> Result<()> {
    // SAFETY: only probes whether the shared library can be opened.
    if unsafe { cudarc::driver::sys::is_culib_present() } {
        Ok(())
    } else {
        Err(err(
            "CUDA is not available: the NVIDIA driver library libcuda.so could not be loaded \
             (is an NVIDIA driver installed?); use --device cpu",
        ))
    }
}

fn check_lib(present: bool, lib: &str) -> Result<()> {
    if present {
        Ok(())
    } else {
        Err(err(format!(
            "CUDA is installed but {lib} could not be loaded (is the CUDA 13 toolkit's library directory on LD_LIBRARY_PATH?); use --device cpu"
        )))
    }
}

/// The GPUs the driver reports; an error names the missing library.
pub fn devices() -> Result<Vec<DeviceInfo>> {
    check_driver()?;
    let n = CudaContext::device_count().map_err(|e| err(format!("CUDA: cannot count devices: {e}")))?;
    let mut out = Vec::new();
    for ordinal in 0..n.max(0) as usize {
        let ctx = CudaContext::new(ordinal).map_err(|e| err(format!("CUDA: cannot open cuda:{ordinal}: {e}")))?;
        let (free, total) = ctx.mem_get_info().unwrap_or((0, 0));
        out.push(DeviceInfo {
            ordinal,
            name: ctx.name().unwrap_or_else(|_| "unknown".into()),
            capability: ctx.compute_capability().unwrap_or((0, 0)),
            total_memory: total,
            free_memory: free,
        });
    }
    Ok(out)
}

/// Device memory of one tensor.
pub struct CudaMem {
    /// At least one byte (CUDA allocates nothing smaller).
    slice: CudaSlice<u8>,
    /// Bytes the tensor owns (0 for an empty tensor).
    len: usize,
    ordinal: usize,
}

impl std::fmt::Debug for CudaMem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "CudaMem(cuda:{}, {} bytes)", self.ordinal, self.len)
    }
}

impl DeviceMemory for CudaMem {
    fn device(&self) -> String {
        format!("cuda:{}", self.ordinal)
    }
    fn len(&self) -> usize {
        self.len
    }
    fn as_any(&self) -> &dyn std::any::Any {
        self
    }
}

/// The CUDA backend for one GPU.
pub struct CudaBackend {
    ctx: Arc<CudaContext>,
    stream: Arc<CudaStream>,
    ordinal: usize,
    name: String,
    gpu_name: String,
    arch: String,
    sm_count: u32,
    nvrtc_version: (i32, i32),
    driver_version: i32,
    blas: Mutex<cudarc::cublas::CudaBlas>,
    lt: Mutex<lt::Lt>,
    /// f32 matmuls on TF32 tensor cores (`STITCH_CUDA_TF32=1`).
    tf32: bool,
    /// Compute capability major version.
    major: i32,
    functions: Mutex<HashMap<String, CudaFunction>>,
    /// Fused-region kernels by the address of their `Region` (checked for
    /// equality on a hit), so the hot path builds no string key.
    region_fns: Mutex<HashMap<usize, RegionKernel>>,
    /// Attention launches per kernel: tensor-core, split-KV, one block per
    /// row, cuDNN's fused attention.
    attn_paths: [std::sync::atomic::AtomicUsize; 4],
    /// Which fused prefill attention runs (`STITCH_CUDA_ATTENTION`).
    attn_mode: std::sync::atomic::AtomicU8,
    /// cuDNN, opened on first use: `None` until then, `Err` (why) where it cannot be used.
    cudnn: Mutex<Option<std::result::Result<cudnn::Cudnn, String>>>,
    /// Per attention shape in `Auto` mode: whether cuDNN was measured faster.
    attn_choice: Mutex<HashMap<cudnn::SdpaKey, bool>>,
    cache: KernelCache,
    /// Scratch flag for gather's out-of-range check.
    flag: Mutex<CudaSlice<i32>>,
    /// Timing events recorded by the profiler (see `Backend::record_marker`).
    markers: Mutex<Vec<cudarc::driver::CudaEvent>>,
}

impl std::fmt::Debug for CudaBackend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "CudaBackend({}, {})", self.name, self.arch)
    }
}

/// Quantized weights repacked on upload for 16-byte loads
/// ([`kernels::repack_quant`]): quants from the start of `data`, scales and
/// mins from `meta_at`.
struct PackedQuant {
    data: Tensor,
    format: stitch_core::QuantFormat,
    n: usize,
    k: usize,
    meta_at: usize,
}

/// A region, the input dtypes it was compiled for, and its kernel.
type RegionKernel = (Region, Vec<DType>, CudaFunction);

/// Everything a `Region` kernel is specialised on.
fn region_key(region: &Region, inputs: &[DType]) -> String {
    format!(
        "{:?}|{:?}|{:?}|{:?}",
        region.exprs, region.outputs, region.reduce, inputs
    )
}

fn elem_ptr(t: &Tensor, stream: &CudaStream) -> Result<u64> {
    let mem = t
        .device_memory()
        .and_then(|m| m.as_any().downcast_ref::<CudaMem>())
        .ok_or_else(|| err("CUDA: expected a tensor in CUDA memory"))?;
    let (base, _sync) = mem.slice.device_ptr(stream);
    Ok(base + (t.offset() * t.dtype().size_in_bytes()) as u64)
}

/// The first `N` element strides of `t` (attention kernels' by-value metadata).
fn strides_of<const N: usize>(t: &Tensor) -> [i64; N] {
    std::array::from_fn(|i| t.strides()[i] as i64)
}

/// Lets `f` use `bytes` of dynamic shared memory (past the default 48 KiB).
fn allow_shared(f: &CudaFunction, bytes: u32) -> Result<()> {
    if bytes > 48 * 1024 {
        f.set_attribute(
            cudarc::driver::sys::CUfunction_attribute::CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES,
            bytes as i32,
        )
        .map_err(|e| err(format!("CUDA: {e}")))?;
    }
    Ok(())
}

/// An attention mask's kernel arguments: its strides broadcast to
/// `[B, H, S, T]`, its kind (1 bool, 2/3/4 additive f32/f16/bf16) and address;
/// kind 0 and address 0 without a mask.
fn mask_args(
    node: &Node,
    mask: Option<&Tensor>,
    dims: [usize; 4],
    stream: &CudaStream,
) -> Result<([i64; 4], i32, u64)> {
    let Some(mask) = mask else {
        return Ok(([0; 4], 0, 0));
    };
    let mb = mask.broadcast_to(&dims)?;
    let mut ms = [0i64; 4];
    for (i, m) in ms.iter_mut().enumerate() {
        *m = mb.strides()[i] as i64;
    }
    let kind = match mask.dtype() {
        DType::Bool => 1,
        DType::F32 => 2,
        DType::F16 => 3,
        DType::BF16 => 4,
        dt => return Err(err(format!("CUDA sdpa `{}`: mask dtype {dt}", node.name))),
    };
    Ok((ms, kind, elem_ptr(mask, stream)?))
}

fn contiguous_strides(shape: &[usize]) -> Vec<i64> {
    let mut s = vec![0i64; shape.len()];
    let mut acc = 1i64;
    for i in (0..shape.len()).rev() {
        s[i] = acc;
        acc *= shape[i] as i64;
    }
    s
}

fn normalize_axis(axis: i64, rank: usize) -> Option<usize> {
    let a = if axis < 0 { axis + rank as i64 } else { axis };
    (0..rank as i64).contains(&a).then_some(a as usize)
}

impl CudaBackend {
    /// Opens GPU `ordinal` (`cuda:N`). Fails with a message naming the missing
    /// driver or library where CUDA is not usable.
    pub fn new(ordinal: usize) -> Result<CudaBackend> {
        check_driver()?;
        // SAFETY: only probe whether the libraries can be opened.
        check_lib(unsafe { cudarc::nvrtc::sys::is_culib_present() }, "NVRTC (libnvrtc.so)")?;
        check_lib(
            unsafe { cudarc::cublas::sys::is_culib_present() },
            "cuBLAS (libcublas.so)",
        )?;
        check_lib(
            unsafe { cudarc::cublaslt::sys::is_culib_present() },
            "cuBLASLt (libcublasLt.so)",
        )?;
        let n = CudaContext::device_count().map_err(|e| err(format!("CUDA: cannot count devices: {e}")))?;
        if ordinal >= n.max(0) as usize {
            return Err(err(format!(
                "cuda:{ordinal} does not exist: this machine has {n} CUDA device(s)"
            )));
        }
        let ctx = CudaContext::new(ordinal).map_err(|e| err(format!("CUDA: cannot open cuda:{ordinal}: {e}")))?;
        // One stream, in order: cudarc's per-buffer event tracking is not needed.
        // SAFETY: called before any allocation or launch on this context.
        unsafe { ctx.disable_event_tracking() };
        let stream = ctx.default_stream();
        let (maj, min) = ctx.compute_capability().map_err(|e| err(format!("CUDA: {e}")))?;
        let sm_count = ctx
            .attribute(cudarc::driver::sys::CUdevice_attribute::CU_DEVICE_ATTRIBUTE_MULTIPROCESSOR_COUNT)
            .unwrap_or(32)
            .max(1) as u32;
        let gpu_name = ctx.name().unwrap_or_else(|_| "CUDA GPU".into());
        let (mut nv_maj, mut nv_min) = (0, 0);
        // SAFETY: plain out-parameters.
        unsafe { cudarc::nvrtc::sys::nvrtcVersion(&mut nv_maj, &mut nv_min) };
        let mut driver_version = 0;
        // SAFETY: plain out-parameter.
        unsafe { cudarc::driver::sys::cuDriverGetVersion(&mut driver_version) };
        let blas = cudarc::cublas::CudaBlas::new(stream.clone()).map_err(|e| err(format!("cuBLAS: {e}")))?;
        let lt = lt::Lt::new(&stream, maj).map_err(err)?;
        let tf32 = std::env::var("STITCH_CUDA_TF32").is_ok_and(|v| v == "1");
        let flag = stream
            .alloc_zeros::<i32>(1)
            .map_err(|e| err(format!("CUDA: cannot allocate: {e}")))?;
        Ok(CudaBackend {
            ctx,
            stream,
            ordinal,
            name: format!("cuda:{ordinal}"),
            gpu_name,
            arch: format!("sm_{maj}{min}"),
            sm_count,
            nvrtc_version: (nv_maj, nv_min),
            driver_version,
            blas: Mutex::new(blas),
            lt: Mutex::new(lt),
            tf32,
            major: maj,
            functions: Mutex::new(HashMap::new()),
            region_fns: Mutex::new(HashMap::new()),
            attn_paths: Default::default(),
            attn_mode: std::sync::atomic::AtomicU8::new(AttentionMode::from_env() as u8),
            cudnn: Mutex::new(None),
            attn_choice: Mutex::new(HashMap::new()),
            cache: KernelCache::from_env(),
            flag: Mutex::new(flag),
            markers: Mutex::new(Vec::new()),
        })
    }

    /// The GPU's name, e.g. `NVIDIA H100 80GB HBM3`.
    pub fn gpu_name(&self) -> &str {
        &self.gpu_name
    }

    /// Attention launches so far by kernel: `[tensor-core, split-KV, per-row,
    /// cuDNN]`.
    pub fn attention_paths(&self) -> [usize; 4] {
        self.attn_paths
            .each_ref()
            .map(|c| c.load(std::sync::atomic::Ordering::Relaxed))
    }

    fn count_attention(&self, path: usize) {
        self.attn_paths[path].fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    }

    /// Which fused kernel runs 16-bit prefill attention from now on.
    pub fn set_attention_mode(&self, mode: AttentionMode) {
        self.attn_mode.store(mode as u8, std::sync::atomic::Ordering::Relaxed);
    }

    /// The fused prefill attention mode in force.
    pub fn attention_mode(&self) -> AttentionMode {
        AttentionMode::from_u8(self.attn_mode.load(std::sync::atomic::Ordering::Relaxed))
    }

    /// cuDNN's state for attention: its version and the first plan error, or
    /// why it cannot be used. Opens cuDNN if that was not tried yet.
    pub fn cudnn_status(&self) -> String {
        let Ok(mut g) = self.cudnn.lock() else {
            return "poisoned".into();
        };
        match g.get_or_insert_with(|| cudnn::Cudnn::open(&self.stream)) {
            Ok(c) => format!(
                "cuDNN {} loaded; {}",
                c.version(),
                c.last_error()
                    .map_or("no plan error".to_string(), |e| format!("plan error: {e}"))
            ),
            Err(e) => format!("cuDNN not usable: {e}"),
        }
    }

    /// The device's architecture, e.g. `sm_90`.
    pub fn arch(&self) -> &str {
        &self.arch
    }

    /// Allocates an uninitialised tensor on the device. Out of memory is an error
    /// that says how much was asked and how much is free.
    pub fn alloc(&self, dtype: DType, shape: &[usize]) -> Result<Tensor> {
        let n: usize = shape.iter().product();
        let len = n * dtype.size_in_bytes();
        let bytes = len.max(1);
        // SAFETY: the memory is written by a kernel or a copy before it is read.
        let slice = unsafe { self.stream.alloc::<u8>(bytes) }.map_err(|e| {
            let (free, total) = self.ctx.mem_get_info().unwrap_or((0, 0));
            err(format!(
                "{}: cannot allocate {} bytes ({:.1} MiB) for a {dtype} tensor of shape {shape:?}: {e}; {:.1} MiB free of {:.1} MiB",
                self.name,
                bytes,
                bytes as f64 / 1048576.0,
                free as f64 / 1048576.0,
                total as f64 / 1048576.0
            ))
        })?;
        Tensor::from_device(
            Arc::new(CudaMem {
                slice,
                len,
                ordinal: self.ordinal,
            }),
            dtype,
            shape,
        )
    }

    /// The compiled function `name` of `source` (memory, then disk cache, then NVRTC).
    fn function(&self, key: &str, source: &str, name: &str) -> Result<CudaFunction> {
        if let Some(f) = self.functions.lock().map_err(|_| err("CUDA: poisoned"))?.get(key) {
            return Ok(f.clone());
        }
        let options = vec![
            format!("--gpu-architecture={}", self.arch),
            "--std=c++17".to_string(),
            "--fmad=true".to_string(),
        ];
        let parts = KeyParts {
            source,
            options: &options,
            arch: &self.arch,
            nvrtc: self.nvrtc_version,
            driver: self.driver_version,
        };
        let disk_key = parts.key();
        let ptx = match self.cache.get(&disk_key) {
            Some(p) => p,
            None => {
                let opts = cudarc::nvrtc::CompileOptions {
                    options: options.clone(),
                    ..Default::default()
                };
                let ptx = cudarc::nvrtc::compile_ptx_with_opts(source, opts)
                    .map_err(|e| err(format!("NVRTC could not compile kernel `{name}`: {e}")))?
                    .to_src();
                self.cache.put(&disk_key, &ptx);
                ptx
            }
        };
        let module = self
            .ctx
            .load_module(cudarc::nvrtc::Ptx::from_src(ptx))
            .map_err(|e| err(format!("CUDA: cannot load kernel `{name}`: {e}")))?;
        let f = module
            .load_function(name)
            .map_err(|e| err(format!("CUDA: kernel `{name}` not found: {e}")))?;
        self.functions
            .lock()
            .map_err(|_| err("CUDA: poisoned"))?
            .insert(key.to_string(), f.clone());
        Ok(f)
    }

    fn builtin(&self, name: &str) -> Result<CudaFunction> {
        // Kernel names are unique across the hand-written sources (and unlike
        // region keys, which start with `[`), so the name is the key.
        self.function(name, kernels::SOURCE, name)
    }

    fn check_launch(&self, what: &str, r: std::result::Result<(), cudarc::driver::DriverError>) -> Result<()> {
        r.map_err(|e| err(format!("CUDA: launching {what} failed: {e}")))
    }

    fn grid_for(&self, n: usize, threads: u32) -> u32 {
        let blocks = n.div_ceil(threads as usize).max(1);
        blocks.min(self.sm_count as usize * 32) as u32
    }

    /// Runs `region` on `inputs` into freshly allocated outputs (or into
    /// `target`, a strided destination, for copies).
    fn run_region(&self, region: &Region, inputs: &[Tensor], out_types: &[(DType, Vec<usize>)]) -> Result<Outputs> {
        let dtypes: smallvec::SmallVec<[DType; 8]> = inputs.iter().map(|t| t.dtype()).collect();
        let mut iter: Vec<usize> = vec![];
        for t in inputs {
            iter = broadcast(&iter, t.shape()).ok_or_else(|| {
                err(format!(
                    "fused region: input shape {:?} does not broadcast with {iter:?}",
                    t.shape()
                ))
            })?;
        }
        if iter.len() > MAX_RANK {
            return Err(err(format!(
                "CUDA kernels handle at most {MAX_RANK} axes, got {iter:?}"
            )));
        }
        let outs: Vec<Tensor> = out_types
            .iter()
            .map(|(d, s)| self.alloc(*d, s))
            .collect::<Result<_>>()?;
        // Axis order: kept axes first, then reduced ones.
        let reduced: Vec<usize> = region.reduce.as_ref().map(|r| r.axes.clone()).unwrap_or_default();
        let order: Vec<usize> = (0..iter.len())
            .filter(|a| !reduced.contains(a))
            .chain(reduced.iter().copied())
            .collect();
        let kept = iter.len() - reduced.len();
        let mut meta = Meta {
            rank: iter.len() as i32,
            kept: kept as i32,
            ..Meta::default()
        };
        for (k, &a) in order.iter().enumerate() {
            meta.dims[k] = iter[a] as i64;
        }
        for (j, t) in inputs.iter().enumerate() {
            let b = t.broadcast_to(&iter)?;
            for (k, &a) in order.iter().enumerate() {
                meta.strides[j][k] = b.strides()[a] as i64;
            }
        }
        for (o, t) in outs.iter().enumerate() {
            // Outputs are contiguous over the kept axes; reduced axes do not move them.
            let kept_shape: Vec<usize> = order[..kept].iter().map(|&a| iter[a]).collect();
            let cs = contiguous_strides(&kept_shape);
            debug_assert_eq!(t.numel(), kept_shape.iter().product::<usize>());
            meta.strides[inputs.len() + o][..kept].copy_from_slice(&cs[..kept]);
        }
        let n_kept: usize = order[..kept].iter().map(|&a| iter[a]).product();
        let n_red: usize = order[kept..].iter().map(|&a| iter[a]).product();
        meta.n = n_kept as i64;
        meta.nred = n_red as i64;
        if n_kept == 0 {
            return Ok(outs.into_iter().collect());
        }
        let f = self.region_function(region, &dtypes)?;
        let ptrs: Vec<u64> = inputs
            .iter()
            .chain(&outs)
            .map(|t| elem_ptr(t, &self.stream))
            .collect::<Result<_>>()?;
        let cfg = if region.reduce.is_some() {
            let threads = 256u32;
            LaunchConfig {
                grid_dim: ((n_kept * 32).div_ceil(threads as usize) as u32, 1, 1),
                block_dim: (threads, 1, 1),
                shared_mem_bytes: 0,
            }
        } else {
            LaunchConfig {
                grid_dim: (self.grid_for(n_kept, 256), 1, 1),
                block_dim: (256, 1, 1),
                shared_mem_bytes: 0,
            }
        };
        let mut b = self.stream.launch_builder(&f);
        b.arg(&meta);
        for p in &ptrs {
            b.arg(p);
        }
        // SAFETY: the kernel's parameters are (Meta, one pointer per operand),
        // every pointer addresses a live allocation covering the strided extent.
        self.check_launch("a fused region", unsafe { b.launch(cfg) }.map(|_| ()))?;
        Ok(outs.into_iter().collect())
    }

    /// The compiled kernel of `region` for inputs of `dtypes`: by the region's
    /// address first (no allocation), else by its printed key (memory, disk, NVRTC).
    fn region_function(&self, region: &Region, dtypes: &[DType]) -> Result<CudaFunction> {
        let addr = region as *const Region as usize;
        if let Some((r, d, f)) = self.region_fns.lock().map_err(|_| err("CUDA: poisoned"))?.get(&addr) {
            if r == region && d.as_slice() == dtypes {
                return Ok(f.clone());
            }
        }
        let key = region_key(region, dtypes);
        let name = "st_region";
        let cached = self
            .functions
            .lock()
            .map_err(|_| err("CUDA: poisoned"))?
            .get(&key)
            .cloned();
        let f = match cached {
            Some(f) => f,
            None => {
                let k = codegen::region_kernel(region, dtypes, name).map_err(err)?;
                self.function(&key, &k.source, name)?
            }
        };
        let mut fns = self.region_fns.lock().map_err(|_| err("CUDA: poisoned"))?;
        if fns.len() > 4096 {
            fns.clear();
        }
        fns.insert(addr, (region.clone(), dtypes.to_vec(), f.clone()));
        Ok(f)
    }

    /// A contiguous copy of `t` on the device (`t` itself when already contiguous).
    fn contiguous(&self, t: &Tensor) -> Result<Tensor> {
        if t.is_contiguous() {
            return Ok(t.clone());
        }
        let mut out = self.run_region(
            identity_region(),
            std::slice::from_ref(t),
            &[(t.dtype(), t.shape().to_vec())],
        )?;
        Ok(out.remove(0))
    }

    /// Copies `src` into the strided destination `dst` (a view of device memory).
    fn copy_into(&self, dst: &Tensor, src: &Tensor) -> Result<()> {
        if dst.shape() != src.shape() {
            return Err(err(format!(
                "CUDA copy: shapes {:?} and {:?} differ",
                dst.shape(),
                src.shape()
            )));
        }
        if dst.numel() == 0 {
            return Ok(());
        }
        if dst.rank() > MAX_RANK {
            return Err(err(format!("CUDA kernels handle at most {MAX_RANK} axes")));
        }
        let f = self.region_function(identity_region(), &[src.dtype()])?;
        let mut meta = Meta {
            rank: dst.rank() as i32,
            kept: dst.rank() as i32,
            n: dst.numel() as i64,
            ..Meta::default()
        };
        for a in 0..dst.rank() {
            meta.dims[a] = dst.shape()[a] as i64;
            meta.strides[0][a] = src.strides()[a] as i64;
            meta.strides[1][a] = dst.strides()[a] as i64;
        }
        let (ps, pd) = (elem_ptr(src, &self.stream)?, elem_ptr(dst, &self.stream)?);
        let cfg = LaunchConfig {
            grid_dim: (self.grid_for(dst.numel(), 256), 1, 1),
            block_dim: (256, 1, 1),
            shared_mem_bytes: 0,
        };
        let mut b = self.stream.launch_builder(&f);
        b.arg(&meta).arg(&ps).arg(&pd);
        // SAFETY: identity kernel over two live allocations with checked shapes.
        self.check_launch("a copy", unsafe { b.launch(cfg) }.map(|_| ()))
    }

    fn matmul(&self, node: &Node, a: &Tensor, b: &Tensor, ta: bool, tb: bool) -> Result<Tensor> {
        let out_shape = node.outputs[0]
            .shape
            .concrete()
            .ok_or_else(|| err(format!("matmul `{}`: output shape not concrete", node.name)))?;
        let dt = a.dtype();
        if !lt_dtype(dt) || b.dtype() != dt || a.rank() < 2 || b.rank() < 2 {
            return Err(err(format!(
                "CUDA matmul `{}` needs f32, f16 or bf16 operands of one dtype and rank 2 or more, got {} {:?} and {} {:?}",
                node.name,
                a.dtype(),
                a.shape(),
                b.dtype(),
                b.shape()
            )));
        }
        let (ra, rb) = (a.rank(), b.rank());
        let (m, k) = if ta {
            (a.shape()[ra - 1], a.shape()[ra - 2])
        } else {
            (a.shape()[ra - 2], a.shape()[ra - 1])
        };
        let n = if tb { b.shape()[rb - 2] } else { b.shape()[rb - 1] };
        let batch_shape = &out_shape[..out_shape.len() - 2];
        let batch: usize = batch_shape.iter().product();
        // Operands as contiguous [batch, rows, cols]. A B shared by the whole
        // batch stays one matrix: with A not transposed the batch folds into
        // A's rows (one GEMM); otherwise B is expanded to every batch.
        let b_batch: usize = b.shape()[..rb - 2].iter().product();
        let a_full = {
            let mut s = batch_shape.to_vec();
            s.extend_from_slice(&a.shape()[ra - 2..]);
            self.contiguous(&a.broadcast_to(&s)?)?
        };
        let fold = b_batch == 1 && !ta;
        let b_full = if fold {
            self.contiguous(&b.reshape_view_2d()?)?
        } else {
            let mut s = batch_shape.to_vec();
            s.extend_from_slice(&b.shape()[rb - 2..]);
            self.contiguous(&b.broadcast_to(&s)?)?
        };
        let out = self.alloc(dt, &out_shape)?;
        if m * n == 0 || batch == 0 {
            return Ok(out);
        }
        if k == 0 {
            let z = self.zeros_like(&out)?;
            return Ok(z);
        }
        let key = if fold {
            lt::LtKey {
                dtype: dt,
                ta,
                tb,
                m: m * batch,
                n,
                k,
                batch: 1,
                bias: false,
                tf32: self.tf32,
                align: 0,
                act: lt::ACT_NONE,
            }
        } else {
            lt::LtKey {
                dtype: dt,
                ta,
                tb,
                m,
                n,
                k,
                batch,
                bias: false,
                tf32: self.tf32,
                align: 0,
                act: lt::ACT_NONE,
            }
        };
        let (pa, pb, pc) = (
            elem_ptr(&a_full, &self.stream)?,
            elem_ptr(&b_full, &self.stream)?,
            elem_ptr(&out, &self.stream)?,
        );
        let key = lt::LtKey {
            align: lt::alignment(&[pa, pb, pc]),
            ..key
        };
        self.lt_matmul(node, key, 1.0, 0.0, pa, pb, pc, 0)?;
        Ok(out)
    }

    /// Runs one cuBLASLt product (see [`lt::Lt::matmul`]).
    #[allow(clippy::too_many_arguments)]
    fn lt_matmul(
        &self,
        node: &Node,
        key: lt::LtKey,
        alpha: f32,
        beta: f32,
        a: u64,
        b: u64,
        c: u64,
        bias: u64,
    ) -> Result<()> {
        let mut lt = self.lt.lock().map_err(|_| err("cuBLASLt: poisoned"))?;
        // SAFETY: callers pass contiguous device buffers of the sizes `key` describes.
        unsafe { lt.matmul(&self.stream, key, alpha, beta, a, b, c, bias) }
            .map_err(|e| err(format!("`{}`: {e}", node.name)))
    }

    /// A zero-filled tensor of `t`'s dtype and shape.
    fn zeros_like(&self, t: &Tensor) -> Result<Tensor> {
        let out = self.alloc(t.dtype(), t.shape())?;
        {
            let mem = out
                .device_memory()
                .and_then(|m| m.as_any().downcast_ref::<CudaMem>())
                .ok_or_else(|| err("CUDA: expected device memory"))?;
            let (ptr, _sync) = mem.slice.device_ptr(&self.stream);
            // SAFETY: the allocation holds at least `len` bytes.
            unsafe { cudarc::driver::sys::cuMemsetD8Async(ptr, 0, mem.len.max(1), self.stream.cu_stream()) }
                .result()
                .map_err(|e| err(format!("CUDA memset: {e}")))?;
        }
        Ok(out)
    }

    /// `act(alpha·op(a)·op(b) + beta·c)`: ReLU and tanh-GELU run as cuBLASLt
    /// epilogues, exact GELU (which cuBLASLt lacks) as a kernel after it.
    #[allow(clippy::too_many_arguments)]
    fn gemm(
        &self,
        node: &Node,
        inputs: &[Tensor],
        alpha: f64,
        beta: f64,
        ta: bool,
        tb: bool,
        act: Option<stitch_core::ops::UnaryOp>,
    ) -> Result<Tensor> {
        let lt_act = match act {
            Some(stitch_core::ops::UnaryOp::Relu) => lt::ACT_RELU,
            Some(stitch_core::ops::UnaryOp::GeluTanh) => lt::ACT_GELU_TANH,
            _ => lt::ACT_NONE,
        };
        let (out, ran_epilogue) = self.gemm_product(node, inputs, alpha, beta, ta, tb, lt_act)?;
        match act {
            Some(a) if !(ran_epilogue && lt_act != lt::ACT_NONE) => {
                let r = single_op_region(&Op::Unary(a), 1).ok_or_else(|| err("internal: not elementwise"))?;
                let ty = [(out.dtype(), out.shape().to_vec())];
                let mut y = self.run_region(&r, &[out], &ty)?;
                Ok(y.remove(0))
            }
            _ => Ok(out),
        }
    }

    /// The product of [`Self::gemm`] with cuBLASLt epilogue `lt_act`; also
    /// says whether cuBLASLt ran with it (not for an empty inner dimension).
    /// ONNX-style Gemm: `alpha · op(A) · op(B) + beta · C` on 2-D operands,
    /// through cuBLASLt. A vector C with beta 1 is the bias epilogue; any other
    /// C is broadcast into the output first and accumulated with beta.
    #[allow(clippy::too_many_arguments)]
    fn gemm_product(
        &self,
        node: &Node,
        inputs: &[Tensor],
        alpha: f64,
        beta: f64,
        ta: bool,
        tb: bool,
        lt_act: u8,
    ) -> Result<(Tensor, bool)> {
        let (a, b) = (&inputs[0], &inputs[1]);
        let dt = a.dtype();
        if !lt_dtype(dt) || b.dtype() != dt || a.rank() != 2 || b.rank() != 2 {
            return Err(err(format!(
                "CUDA gemm `{}` needs 2-D f32, f16 or bf16 operands of one dtype, got {} {:?} and {} {:?}",
                node.name,
                a.dtype(),
                a.shape(),
                b.dtype(),
                b.shape()
            )));
        }
        let (m, k) = if ta {
            (a.shape()[1], a.shape()[0])
        } else {
            (a.shape()[0], a.shape()[1])
        };
        let n = if tb { b.shape()[0] } else { b.shape()[1] };
        let (a, b) = (self.contiguous(a)?, self.contiguous(b)?);
        let c = inputs.get(2).filter(|_| beta != 0.0);
        let bias_vec = c.filter(|c| beta == 1.0 && c.numel() == n && n > 1 && c.shape().last() == Some(&n));
        let out = match (c, bias_vec) {
            (Some(c), None) => {
                let out = self.alloc(dt, &[m, n])?;
                if c.dtype() != dt {
                    return Err(err(format!(
                        "CUDA gemm `{}`: C is {}, A and B are {dt}",
                        node.name,
                        c.dtype()
                    )));
                }
                self.copy_into(&out, &c.broadcast_to(&[m, n])?)?;
                out
            }
            _ => self.alloc(dt, &[m, n])?,
        };
        if m * n == 0 {
            return Ok((out, true));
        }
        let accumulate = c.is_some() && bias_vec.is_none();
        if k == 0 {
            // The product is empty: C (scaled) or zeros.
            if accumulate && beta != 1.0 {
                return Err(err(format!(
                    "CUDA gemm `{}`: k = 0 with beta {beta} is not supported",
                    node.name
                )));
            }
            return match bias_vec {
                Some(c) => {
                    self.copy_into(&out, &c.broadcast_to(&[m, n])?)?;
                    Ok((out, false))
                }
                None if accumulate => Ok((out, false)),
                None => Ok((self.zeros_like(&out)?, false)),
            };
        }
        let bias = match bias_vec {
            Some(c) => {
                if c.dtype() != dt {
                    return Err(err(format!(
                        "CUDA gemm `{}`: C is {}, A and B are {dt}",
                        node.name,
                        c.dtype()
                    )));
                }
                let c = self.contiguous(c)?;
                let p = elem_ptr(&c, &self.stream)?;
                Some((c, p))
            }
            None => None,
        };
        let key = lt::LtKey {
            dtype: dt,
            ta,
            tb,
            m,
            n,
            k,
            batch: 1,
            bias: bias.is_some(),
            tf32: self.tf32,
            align: 0,
            act: lt_act,
        };
        let (pa, pb, pc) = (
            elem_ptr(&a, &self.stream)?,
            elem_ptr(&b, &self.stream)?,
            elem_ptr(&out, &self.stream)?,
        );
        let pbias = bias.as_ref().map_or(0, |b| b.1);
        let key = lt::LtKey {
            align: lt::alignment(&[pa, pb, pc, pbias]),
            ..key
        };
        let beta = if accumulate { beta as f32 } else { 0.0 };
        self.lt_matmul(
            node,
            key,
            alpha as f32,
            beta,
            pa,
            pb,
            pc,
            bias.as_ref().map_or(0, |b| b.1),
        )?;
        Ok((out, true))
    }

    fn rows_cols(x: &Tensor, axis: i64, node: &Node) -> Result<(usize, usize, usize)> {
        let ax = normalize_axis(axis, x.rank())
            .ok_or_else(|| err(format!("`{}`: axis {axis} out of range for {:?}", node.name, x.shape())))?;
        let rows: usize = x.shape()[..ax].iter().product();
        let cols: usize = x.shape()[ax..].iter().product();
        Ok((ax, rows, cols))
    }

    fn row_launch(&self, rows: usize) -> LaunchConfig {
        LaunchConfig {
            grid_dim: (rows as u32, 1, 1),
            block_dim: (kernels::ROW_THREADS, 1, 1),
            shared_mem_bytes: 0,
        }
    }

    fn softmax(&self, node: &Node, x: &Tensor, axis: i64, log: bool) -> Result<Tensor> {
        let (ax, rows, cols) = Self::rows_cols(x, axis, node)?;
        if ax != x.rank() - 1 || x.dtype() != DType::F32 {
            return Err(err(format!(
                "CUDA softmax `{}`: only f32 over the last axis",
                node.name
            )));
        }
        let x = self.contiguous(x)?;
        let y = self.alloc(DType::F32, x.shape())?;
        if rows * cols == 0 {
            return Ok(y);
        }
        let f = self.builtin("st_softmax")?;
        let (px, py) = (elem_ptr(&x, &self.stream)?, elem_ptr(&y, &self.stream)?);
        let (rows_i, cols_i, log_i) = (rows as i64, cols as i32, i32::from(log));
        let mut b = self.stream.launch_builder(&f);
        b.arg(&px).arg(&py).arg(&rows_i).arg(&cols_i).arg(&log_i);
        // SAFETY: contiguous [rows, cols] f32 in and out.
        self.check_launch("softmax", unsafe { b.launch(self.row_launch(rows)) }.map(|_| ()))?;
        Ok(y)
    }

    fn norm(&self, node: &Node, inputs: &[Tensor], axis: i64, eps: f64, rms: bool) -> Result<Tensor> {
        let x = &inputs[0];
        let (ax, rows, cols) = Self::rows_cols(x, axis, node)?;
        if x.dtype() != DType::F32 {
            return Err(err(format!("CUDA norm `{}`: only f32", node.name)));
        }
        let norm_shape = &x.shape()[ax..];
        let param = |t: &Tensor| -> Result<Tensor> { self.contiguous(&t.broadcast_to(norm_shape)?) };
        let x = self.contiguous(x)?;
        let w = param(&inputs[1])?;
        let bias = if !rms && inputs.len() > 2 {
            Some(param(&inputs[2])?)
        } else {
            None
        };
        let y = self.alloc(DType::F32, x.shape())?;
        if rows * cols == 0 {
            return Ok(y);
        }
        let (px, pw, py) = (
            elem_ptr(&x, &self.stream)?,
            elem_ptr(&w, &self.stream)?,
            elem_ptr(&y, &self.stream)?,
        );
        let (rows_i, cols_i, eps_f) = (rows as i64, cols as i32, eps as f32);
        if rms {
            let f = self.builtin("st_rmsnorm")?;
            let mut b = self.stream.launch_builder(&f);
            b.arg(&px).arg(&pw).arg(&py).arg(&rows_i).arg(&cols_i).arg(&eps_f);
            // SAFETY: contiguous [rows, cols] x and y, [cols] w.
            self.check_launch("rms_norm", unsafe { b.launch(self.row_launch(rows)) }.map(|_| ()))?;
        } else {
            let f = self.builtin("st_layernorm")?;
            let pb = match &bias {
                Some(t) => elem_ptr(t, &self.stream)?,
                None => pw,
            };
            let has_bias = i32::from(bias.is_some());
            let mut b = self.stream.launch_builder(&f);
            b.arg(&px)
                .arg(&pw)
                .arg(&pb)
                .arg(&py)
                .arg(&rows_i)
                .arg(&cols_i)
                .arg(&eps_f)
                .arg(&has_bias);
            // SAFETY: contiguous [rows, cols] x and y, [cols] w and bias.
            self.check_launch("layer_norm", unsafe { b.launch(self.row_launch(rows)) }.map(|_| ()))?;
        }
        Ok(y)
    }

    fn gather(&self, node: &Node, data: &Tensor, idx: &Tensor, axis: i64) -> Result<Tensor> {
        let ax = normalize_axis(axis, data.rank())
            .ok_or_else(|| err(format!("gather `{}`: axis {axis} out of range", node.name)))?;
        let fname = match idx.dtype() {
            DType::I64 => "st_gather_i64",
            DType::I32 => "st_gather_i32",
            d => {
                return Err(err(format!(
                    "CUDA gather `{}`: indices must be i64 or i32, got {d}",
                    node.name
                )))
            }
        };
        let data = self.contiguous(data)?;
        let idx = self.contiguous(idx)?;
        let outer: usize = data.shape()[..ax].iter().product();
        let axis_len = data.shape()[ax];
        let inner: usize = data.shape()[ax + 1..].iter().product();
        let es = data.dtype().size_in_bytes();
        let mut out_shape = data.shape()[..ax].to_vec();
        out_shape.extend_from_slice(idx.shape());
        out_shape.extend_from_slice(&data.shape()[ax + 1..]);
        let out = self.alloc(data.dtype(), &out_shape)?;
        let total = outer * idx.numel() * inner * es;
        if total == 0 {
            return Ok(out);
        }
        let f = self.builtin(fname)?;
        let flag = self.flag.lock().map_err(|_| err("CUDA: poisoned"))?;
        let (pflag, _s) = flag.device_ptr(&self.stream);
        // Clear the flag itself (4 bytes) in stream order; `zero` outlives the
        // copy because the flag is read back synchronously below.
        let zero = [0i32];
        // SAFETY: `pflag` addresses the 4-byte flag allocation.
        unsafe { cudarc::driver::result::memcpy_htod_async(pflag, &zero, self.stream.cu_stream()) }
            .map_err(|e| err(format!("CUDA: {e}")))?;
        let (pd, pi, po) = (
            elem_ptr(&data, &self.stream)?,
            elem_ptr(&idx, &self.stream)?,
            elem_ptr(&out, &self.stream)?,
        );
        let (outer_i, axis_i, n_i, inner_b) = (outer as i64, axis_len as i64, idx.numel() as i64, (inner * es) as i64);
        let mut b = self.stream.launch_builder(&f);
        b.arg(&pd)
            .arg(&pi)
            .arg(&po)
            .arg(&outer_i)
            .arg(&axis_i)
            .arg(&n_i)
            .arg(&inner_b)
            .arg(&pflag);
        let cfg = LaunchConfig {
            grid_dim: (self.grid_for(total, 256), 1, 1),
            block_dim: (256, 1, 1),
            shared_mem_bytes: 0,
        };
        // SAFETY: contiguous data, indices and output of the sizes computed above.
        self.check_launch("gather", unsafe { b.launch(cfg) }.map(|_| ()))?;
        let mut host = [0i32];
        self.stream
            .memcpy_dtoh(&*flag, &mut host)
            .map_err(|e| err(format!("CUDA: {e}")))?;
        if host[0] != 0 {
            return Err(err(format!(
                "gather `{}`: an index is out of range for axis {ax} of size {axis_len}",
                node.name
            )));
        }
        Ok(out)
    }

    /// Expands packed rows `[rows, row_bytes]` to f32 `[rows, k]`.
    fn dequantize(&self, node: &Node, w: &Tensor, format: stitch_core::QuantFormat, k: usize) -> Result<Tensor> {
        let w = self.contiguous(w)?;
        if w.dtype() != DType::U8 || w.rank() != 2 {
            return Err(err(format!(
                "`{}`: packed weights must be u8 [rows, row_bytes]",
                node.name
            )));
        }
        let rows = w.shape()[0];
        let row_bytes = format.row_bytes(k)?;
        if w.shape()[1] != row_bytes {
            return Err(err(format!(
                "`{}`: a {} row of {k} elements takes {row_bytes} bytes, the weight has {}",
                node.name,
                format.name(),
                w.shape()[1]
            )));
        }
        let out = self.alloc(DType::F32, &[rows, k])?;
        if rows * k == 0 {
            return Ok(out);
        }
        let f = self.builtin("st_dequantize")?;
        let (pw, po) = (elem_ptr(&w, &self.stream)?, elem_ptr(&out, &self.stream)?);
        let (rows_i, k_i, rb_i) = (rows as i64, k as i64, row_bytes as i64);
        let (fmt, be, bb) = kernels::quant_args(format);
        let mut b = self.stream.launch_builder(&f);
        b.arg(&pw)
            .arg(&po)
            .arg(&rows_i)
            .arg(&k_i)
            .arg(&rb_i)
            .arg(&fmt)
            .arg(&be)
            .arg(&bb);
        let cfg = LaunchConfig {
            grid_dim: (self.grid_for(rows * k, 256), 1, 1),
            block_dim: (256, 1, 1),
            shared_mem_bytes: 0,
        };
        // SAFETY: contiguous packed rows of `row_bytes` bytes and an f32 [rows, k] output.
        self.check_launch("dequantize", unsafe { b.launch(cfg) }.map(|_| ()))?;
        Ok(out)
    }

    /// `x @ dequantize(w)ᵀ`: a GEMV kernel for few rows, else expand + cuBLAS.
    fn quant_matmul(&self, node: &Node, x: &Tensor, w: &Tensor, format: stitch_core::QuantFormat) -> Result<Tensor> {
        let k = *x
            .shape()
            .last()
            .ok_or_else(|| err(format!("`{}`: x must have rank 1 or more", node.name)))?;
        let n = w.shape()[0];
        let rows = x.numel() / k.max(1);
        let out_shape = out_shape(node, 0)?;
        if rows >= kernels::QUANT_GEMV_MAX_ROWS {
            let wf = self.dequantize(node, w, format, k)?;
            let x2 = self.contiguous(x)?.reshape(&[rows, k])?;
            let y = self.matmul_2d(node, &x2, &wf)?;
            return y.reshape(&out_shape);
        }
        let w = self.contiguous(w)?;
        let x = self.contiguous(x)?;
        if x.dtype() != DType::F32 || w.dtype() != DType::U8 || w.shape()[1] != format.row_bytes(k)? {
            return Err(err(format!(
                "`{}`: quant_matmul needs f32 x and u8 [n, row_bytes] packed rows, got {} {:?} and {} {:?}",
                node.name,
                x.dtype(),
                x.shape(),
                w.dtype(),
                w.shape()
            )));
        }
        let out = self.alloc(DType::F32, &out_shape)?;
        if rows * n == 0 {
            return Ok(out);
        }
        let (px, pw, py) = (
            elem_ptr(&x, &self.stream)?,
            elem_ptr(&w, &self.stream)?,
            elem_ptr(&out, &self.stream)?,
        );
        let (rows_i, n_i, k_i, rb_i) = (rows as i64, n as i64, k as i64, w.shape()[1] as i64);
        if k % 32 == 0 && px % 16 == 0 {
            // The format-specialised kernel: weights dequantized in registers
            // once for every row, x read with 16-byte loads.
            let f = self.builtin(kernels::QGEMV_NAMES[kernels::quant_code(format) as usize])?;
            let rows32 = rows as i32;
            let mut b = self.stream.launch_builder(&f);
            b.arg(&px).arg(&pw).arg(&py).arg(&rows32).arg(&n_i).arg(&k_i).arg(&rb_i);
            let cfg = warp_per_column(n);
            // SAFETY: contiguous, 16-byte aligned f32 [rows ≤ 8, k] x, packed
            // [n, row_bytes] w, f32 [rows, n] y.
            self.check_launch("quant_matmul", unsafe { b.launch(cfg) }.map(|_| ()))?;
            return Ok(out);
        }
        let f = self.builtin("st_quant_gemv")?;
        let (fmt, be, bb) = kernels::quant_args(format);
        let mut b = self.stream.launch_builder(&f);
        b.arg(&px)
            .arg(&pw)
            .arg(&py)
            .arg(&rows_i)
            .arg(&n_i)
            .arg(&k_i)
            .arg(&rb_i)
            .arg(&fmt)
            .arg(&be)
            .arg(&bb);
        let cfg = LaunchConfig {
            grid_dim: ((n * 32).div_ceil(256) as u32, rows as u32, 1),
            block_dim: (256, 1, 1),
            shared_mem_bytes: 0,
        };
        // SAFETY: contiguous f32 [rows, k] x, packed [n, row_bytes] w, f32 [rows, n] y.
        self.check_launch("quant_matmul", unsafe { b.launch(cfg) }.map(|_| ()))?;
        Ok(out)
    }

    /// `x @ dequantize(w)ᵀ` over weights repacked on upload: the GEMV kernel
    /// with 16-byte weight loads for up to 7 rows, else dequantize (also with
    /// 16-byte loads) + cuBLAS.
    fn packed_matmul(&self, node: &Node, x: &Tensor, w: &PackedQuant) -> Result<Tensor> {
        let (n, k) = (w.n, w.k);
        if x.shape().last() != Some(&k) {
            return Err(err(format!(
                "`{}`: x {:?} does not end in the weight's {k} columns",
                node.name,
                x.shape()
            )));
        }
        let rows = x.numel() / k.max(1);
        let out_shape = out_shape(node, 0)?;
        let code = kernels::quant_code(w.format) as usize;
        let pq = elem_ptr(&w.data, &self.stream)?;
        let pm = pq + w.meta_at as u64;
        let (n_i, k_i) = (n as i64, k as i64);
        let x = self.contiguous(x)?;
        if x.dtype() != DType::F32 {
            return Err(err(format!(
                "`{}`: quant_matmul needs f32 x, got {}",
                node.name,
                x.dtype()
            )));
        }
        let px = elem_ptr(&x, &self.stream)?;
        if rows >= kernels::QUANT_GEMV_MAX_ROWS || px % 16 != 0 {
            let wf = self.alloc(DType::F32, &[n, k])?;
            let pw = elem_ptr(&wf, &self.stream)?;
            let f = self.builtin(kernels::DEQUANT16_NAMES[code])?;
            let mut b = self.stream.launch_builder(&f);
            b.arg(&pq).arg(&pm).arg(&pw).arg(&n_i).arg(&k_i);
            let cfg = LaunchConfig {
                grid_dim: (self.grid_for(n * k / 32, 256), 1, 1),
                block_dim: (256, 1, 1),
                shared_mem_bytes: 0,
            };
            // SAFETY: repacked weights of n × k elements; a fresh f32 [n, k] output.
            self.check_launch("dequantize", unsafe { b.launch(cfg) }.map(|_| ()))?;
            let x2 = x.reshape(&[rows, k])?;
            let y = self.matmul_2d(node, &x2, &wf)?;
            return y.reshape(&out_shape);
        }
        let out = self.alloc(DType::F32, &out_shape)?;
        if rows == 0 {
            return Ok(out);
        }
        let py = elem_ptr(&out, &self.stream)?;
        let f = self.builtin(kernels::QGEMV16_NAMES[code])?;
        let rows32 = rows as i32;
        let mut b = self.stream.launch_builder(&f);
        b.arg(&px).arg(&pq).arg(&pm).arg(&py).arg(&rows32).arg(&n_i).arg(&k_i);
        let cfg = warp_per_column(n);
        // SAFETY: contiguous, 16-byte aligned f32 [rows < 8, k] x; repacked
        // weights (16-byte aligned quants, k a multiple of 32); f32 [rows, n] y.
        self.check_launch("quant_matmul", unsafe { b.launch(cfg) }.map(|_| ()))?;
        Ok(out)
    }

    /// `a @ bᵀ` for contiguous f32 `a [m, k]` and `b [n, k]`.
    fn matmul_2d(&self, node: &Node, a: &Tensor, b: &Tensor) -> Result<Tensor> {
        let (m, k, n) = (a.shape()[0], a.shape()[1], b.shape()[0]);
        let out = self.alloc(DType::F32, &[m, n])?;
        if m * n == 0 {
            return Ok(out);
        }
        let (pa, pb, pc) = (
            elem_ptr(a, &self.stream)?,
            elem_ptr(b, &self.stream)?,
            elem_ptr(&out, &self.stream)?,
        );
        use cudarc::cublas::sys::cublasOperation_t::{CUBLAS_OP_N, CUBLAS_OP_T};
        let (alpha, beta) = (1.0f32, 0.0f32);
        let blas = self.blas.lock().map_err(|_| err("cuBLAS: poisoned"))?;
        // Column-major: Cᵀ [n, m] = B [n, k] · Aᵀ; B is stored as Bᵀ (k × n, ld k).
        // SAFETY: contiguous f32 buffers of the sizes given.
        unsafe {
            cudarc::cublas::result::sgemm(
                *blas.handle(),
                CUBLAS_OP_T,
                CUBLAS_OP_N,
                n as i32,
                m as i32,
                k as i32,
                &alpha,
                pb as *const f32,
                k as i32,
                pa as *const f32,
                k as i32,
                &beta,
                pc as *mut f32,
                n as i32,
            )
        }
        .map_err(|e| err(format!("cuBLAS sgemm for `{}` failed: {e}", node.name)))?;
        Ok(out)
    }

    /// Attention: tensor cores for 16-bit prefill without a mask, the split-KV
    /// kernel for few queries, long caches and other 16-bit cases, else one
    /// block per f32 query row.
    fn sdpa(&self, node: &Node, inputs: &[Tensor], scale: Option<f64>, causal: bool) -> Result<Tensor> {
        let (q, k, v) = (&inputs[0], &inputs[1], &inputs[2]);
        let dt = q.dtype();
        if q.rank() != 4 || k.rank() != 4 || v.rank() != 4 || !lt_dtype(dt) || k.dtype() != dt || v.dtype() != dt {
            return Err(err(format!(
                "CUDA sdpa `{}`: needs [B, H, S, D] operands of one dtype (f32, f16 or bf16), got {} {:?}, {} {:?}, {} {:?}",
                node.name,
                q.dtype(),
                q.shape(),
                k.dtype(),
                k.shape(),
                v.dtype(),
                v.shape()
            )));
        }
        let (b, h, s, d) = (q.shape()[0], q.shape()[1], q.shape()[2], q.shape()[3]);
        let (hk, t, dv) = (k.shape()[1], k.shape()[2], v.shape()[3]);
        if hk == 0 || h % hk != 0 {
            return Err(err(format!(
                "CUDA sdpa `{}`: {h} query heads do not group over {hk} key/value heads",
                node.name
            )));
        }
        let scale_v = scale.unwrap_or(1.0 / (d as f64).sqrt());
        let mask = inputs.get(3);
        let half = dt != DType::F32;
        if half && mask.is_none() && d == dv && (d == 64 || d == 128) && self.major >= 8 && s > kernels::DECODE_MAX_S {
            if let Some(out) = self.flash_attention(q, k, v, scale_v, causal)? {
                return Ok(out);
            }
        }
        if half
            || s <= kernels::DECODE_MAX_S
            || t > kernels::ATTN_MAX_KEYS
            || mask.is_some_and(|m| matches!(m.dtype(), DType::F16 | DType::BF16))
        {
            return self.split_attention(node, q, k, v, mask, scale_v, causal);
        }
        let kb = k.broadcast_to(&[b, hk, t, d])?;
        let vb = v.broadcast_to(&[b, hk, t, dv])?;
        let mut m = kernels::AttnMeta {
            b: b as i64,
            h: h as i64,
            hk: hk as i64,
            s: s as i64,
            t: t as i64,
            d: d as i64,
            dv: dv as i64,
            scale: scale_v as f32,
            causal: i32::from(causal),
            ..Default::default()
        };
        (m.qs, m.ks, m.vs) = (strides_of(q), strides_of(&kb), strides_of(&vb));
        let (ms, kind, mask_ptr) = mask_args(node, mask, [b, h, s, t], &self.stream)?;
        if kind > 2 {
            return Err(err(format!(
                "CUDA sdpa `{}`: the per-row kernel takes bool or f32 masks",
                node.name
            )));
        }
        (m.ms, m.mask_kind) = (ms, kind);
        let out = self.alloc(DType::F32, &[b, h, s, dv])?;
        let rows = b * h * s;
        if rows == 0 || dv == 0 {
            return Ok(out);
        }
        let f = self.builtin("st_sdpa")?;
        let (pq, pk, pv, po) = (
            elem_ptr(q, &self.stream)?,
            elem_ptr(k, &self.stream)?,
            elem_ptr(v, &self.stream)?,
            elem_ptr(&out, &self.stream)?,
        );
        let cfg = LaunchConfig {
            grid_dim: (rows as u32, 1, 1),
            block_dim: (kernels::ATTN_THREADS, 1, 1),
            shared_mem_bytes: (t.max(1) * 4) as u32,
        };
        allow_shared(&f, cfg.shared_mem_bytes)?;
        let mut bld = self.stream.launch_builder(&f);
        bld.arg(&m).arg(&pq).arg(&pk).arg(&pv).arg(&mask_ptr).arg(&po);
        // SAFETY: strides and sizes in `m` describe the live q/k/v/mask tensors.
        self.check_launch("sdpa", unsafe { bld.launch(cfg) }.map(|_| ()))?;
        self.count_attention(2);
        Ok(out)
    }

    /// A kernel of [`kernels::ATTN_SOURCE`].
    fn attn_function(&self, name: &str) -> Result<CudaFunction> {
        static SOURCE: std::sync::OnceLock<String> = std::sync::OnceLock::new();
        let src = SOURCE.get_or_init(|| format!("{}{}", codegen::HALF_PRELUDE, kernels::ATTN_SOURCE));
        self.function(name, src, name)
    }

    /// Fused attention for f16/bf16 operands with head size 64 or 128: cuDNN's
    /// or stitch's tensor-core kernel, as [`AttentionMode`] says; `None` when
    /// the operands' layout does not allow the kernels' vector loads.
    fn flash_attention(&self, q: &Tensor, k: &Tensor, v: &Tensor, scale: f64, causal: bool) -> Result<Option<Tensor>> {
        let (b, h, s, d) = (q.shape()[0], q.shape()[1], q.shape()[2], q.shape()[3]);
        let (hk, t) = (k.shape()[1], k.shape()[2]);
        let kb = k.broadcast_to(&[b, hk, t, d])?;
        let vb = v.broadcast_to(&[b, hk, t, d])?;
        let (pq, pk, pv) = (
            elem_ptr(q, &self.stream)?,
            elem_ptr(k, &self.stream)?,
            elem_ptr(v, &self.stream)?,
        );
        let unit = |x: &Tensor| x.strides()[3] == 1;
        let every = |x: &Tensor, n: isize| x.strides()[..3].iter().all(|&st| st % n == 0);
        // q is read 4 bytes at a time, K and V rows 16 bytes at a time.
        let fits = unit(q)
            && unit(&kb)
            && unit(&vb)
            && every(q, 2)
            && pq % 4 == 0
            && every(&kb, 8)
            && every(&vb, 8)
            && pk % 16 == 0
            && pv % 16 == 0;
        if !fits {
            return Ok(None);
        }
        let out = self.alloc(q.dtype(), &[b, h, s, d])?;
        if b * h * s == 0 {
            return Ok(Some(out));
        }
        let po = elem_ptr(&out, &self.stream)?;
        let mut m = kernels::FlashMeta {
            b: b as i64,
            h: h as i64,
            hk: hk as i64,
            s: s as i64,
            t: t as i64,
            scale_log2: (scale * std::f64::consts::LOG2_E) as f32,
            causal: i32::from(causal),
            ..Default::default()
        };
        (m.qs, m.ks, m.vs) = (strides_of(q), strides_of(&kb), strides_of(&vb));
        // cuDNN takes 16-byte aligned operands; causal only where every query
        // sees a key (rows that see none are NaN on the CPU and in st_flash).
        let key = (self.attention_mode() != AttentionMode::Own
            && pq % 16 == 0
            && every(q, 8)
            && po % 16 == 0
            && (!causal || s <= t))
            .then(|| cudnn::SdpaKey {
                bf16: q.dtype() == DType::BF16,
                b: b as i64,
                h: h as i64,
                hk: hk as i64,
                s: s as i64,
                t: t as i64,
                d: d as i64,
                causal,
                qs: strides_of(q),
                ks: strides_of(&kb),
                vs: strides_of(&vb),
            });
        let ptrs = [pq, pk, pv, po];
        let own = || self.launch_flash(&m, ptrs, q.dtype(), d);
        if let Some(key) = key {
            if self.use_cudnn(&key, ptrs, scale as f32, &own)? && self.run_cudnn(&key, ptrs, scale as f32)? {
                self.count_attention(3);
                return Ok(Some(out));
            }
        }
        own()?;
        self.count_attention(0);
        Ok(Some(out))
    }

    /// Launches `st_flash_*` on `ptrs` (q, k, v, out).
    fn launch_flash(&self, m: &kernels::FlashMeta, ptrs: [u64; 4], dt: DType, d: usize) -> Result<()> {
        let name = match (dt, d) {
            (DType::F16, 64) => "st_flash_f16_64",
            (DType::F16, _) => "st_flash_f16_128",
            (_, 64) => "st_flash_bf16_64",
            _ => "st_flash_bf16_128",
        };
        let f = self.attn_function(name)?;
        let cfg = LaunchConfig {
            grid_dim: ((m.s as usize).div_ceil(kernels::FLASH_BM) as u32, (m.b * m.h) as u32, 1),
            block_dim: (kernels::FLASH_THREADS, 1, 1),
            // Two stages of K and V tiles, rows padded by 8 halves.
            shared_mem_bytes: (2 * 2 * kernels::FLASH_BN * (d + 8) * 2) as u32,
        };
        allow_shared(&f, cfg.shared_mem_bytes)?;
        let mut bld = self.stream.launch_builder(&f);
        bld.arg(m).arg(&ptrs[0]).arg(&ptrs[1]).arg(&ptrs[2]).arg(&ptrs[3]);
        // SAFETY: `m` describes the live q/k/v views (unit head stride, aligned
        // as checked by the caller); out is a contiguous [B, H, S, D] tensor.
        self.check_launch("flash attention", unsafe { bld.launch(cfg) }.map(|_| ()))
    }

    /// Enqueues cuDNN's attention; `false` where cuDNN cannot run `key`
    /// (missing, no plan, or the call failed: the caller runs its own kernel).
    fn run_cudnn(&self, key: &cudnn::SdpaKey, ptrs: [u64; 4], scale: f32) -> Result<bool> {
        let mut g = self.cudnn.lock().map_err(|_| err("cuDNN: poisoned"))?;
        match g.get_or_insert_with(|| cudnn::Cudnn::open(&self.stream)) {
            Ok(c) => Ok(c.sdpa(&self.stream, key, ptrs, scale).unwrap_or(false)),
            Err(_) => Ok(false),
        }
    }

    /// Whether attention of shape `key` goes to cuDNN: by the mode, and in
    /// `Auto` mode by timing both kernels once per shape (on the stream, with
    /// events, after a warm-up call of each), keeping the faster.
    fn use_cudnn(
        &self,
        key: &cudnn::SdpaKey,
        ptrs: [u64; 4],
        scale: f32,
        own: &dyn Fn() -> Result<()>,
    ) -> Result<bool> {
        let supported = {
            let mut g = self.cudnn.lock().map_err(|_| err("cuDNN: poisoned"))?;
            match g.get_or_insert_with(|| cudnn::Cudnn::open(&self.stream)) {
                Ok(c) => c.supports(key),
                Err(_) => false,
            }
        };
        if !supported {
            return Ok(false);
        }
        if self.attention_mode() == AttentionMode::Cudnn {
            return Ok(true);
        }
        if let Some(&c) = self.attn_choice.lock().map_err(|_| err("CUDA: poisoned"))?.get(key) {
            return Ok(c);
        }
        let time = |f: &dyn Fn() -> Result<bool>| -> Result<Option<f32>> {
            if !f()? {
                return Ok(None);
            }
            let flags = Some(cudarc::driver::sys::CUevent_flags::CU_EVENT_DEFAULT);
            let ev = || self.ctx.new_event(flags).map_err(|e| err(format!("CUDA: {e}")));
            let (a, z) = (ev()?, ev()?);
            a.record(&self.stream).map_err(|e| err(format!("CUDA: {e}")))?;
            for _ in 0..3 {
                f()?;
            }
            z.record(&self.stream).map_err(|e| err(format!("CUDA: {e}")))?;
            self.stream.synchronize().map_err(|e| err(format!("CUDA: {e}")))?;
            Ok(Some(a.elapsed_ms(&z).map_err(|e| err(format!("CUDA: {e}")))?))
        };
        let t_own = time(&|| own().map(|_| true))?;
        let t_dnn = time(&|| self.run_cudnn(key, ptrs, scale))?;
        let pick = match (t_dnn, t_own) {
            (Some(a), Some(b)) => a < b,
            (Some(_), None) => true,
            _ => false,
        };
        self.attn_choice
            .lock()
            .map_err(|_| err("CUDA: poisoned"))?
            .insert(key.clone(), pick);
        Ok(pick)
    }

    /// Split-KV attention: the keys are cut into chunks so that even one query
    /// row fills the GPU; a second kernel joins the chunks.
    #[allow(clippy::too_many_arguments)]
    fn split_attention(
        &self,
        node: &Node,
        q: &Tensor,
        k: &Tensor,
        v: &Tensor,
        mask: Option<&Tensor>,
        scale: f64,
        causal: bool,
    ) -> Result<Tensor> {
        let (b, h, s, d) = (q.shape()[0], q.shape()[1], q.shape()[2], q.shape()[3]);
        let (hk, t, dv) = (k.shape()[1], k.shape()[2], v.shape()[3]);
        if d > kernels::DECODE_MAX_D || dv > kernels::DECODE_MAX_D {
            return Err(err(format!(
                "CUDA sdpa `{}`: head sizes {d}/{dv} exceed the split-KV kernel's {}",
                node.name,
                kernels::DECODE_MAX_D
            )));
        }
        let kb = k.broadcast_to(&[b, hk, t, d])?;
        let vb = v.broadcast_to(&[b, hk, t, dv])?;
        let rows = b * h * s;
        let out = self.alloc(q.dtype(), &[b, h, s, dv])?;
        if rows == 0 || dv == 0 {
            return Ok(out);
        }
        // Enough (row, chunk) blocks of four warps to fill every SM several times.
        let target = 8 * self.sm_count as usize;
        let max_splits = t.div_ceil(32).max(1);
        let want = target.div_ceil(rows).clamp(1, max_splits);
        let chunk = t.div_ceil(want).max(1);
        let splits = t.div_ceil(chunk).max(1);
        let mut m = kernels::DecodeMeta {
            b: b as i64,
            h: h as i64,
            hk: hk as i64,
            s: s as i64,
            t: t as i64,
            d: d as i64,
            dv: dv as i64,
            chunk: chunk as i64,
            scale: scale as f32,
            causal: i32::from(causal),
            splits: splits as i32,
            ..Default::default()
        };
        (m.qs, m.ks, m.vs) = (strides_of(q), strides_of(&kb), strides_of(&vb));
        let (ms, kind, mask_ptr) = mask_args(node, mask, [b, h, s, t], &self.stream)?;
        (m.ms, m.mask_kind) = (ms, kind);
        let (part, join) = match q.dtype() {
            DType::F32 => ("st_decode_part_f32", "st_decode_join_f32"),
            DType::F16 => ("st_decode_part_f16", "st_decode_join_f16"),
            _ => ("st_decode_part_bf16", "st_decode_join_bf16"),
        };
        let (part, join) = (self.attn_function(part)?, self.attn_function(join)?);
        let po = self.alloc(DType::F32, &[rows * splits, dv])?;
        let pml = self.alloc(DType::F32, &[rows * splits, 2])?;
        let (pq, pk, pv, ppo, ppml, pout) = (
            elem_ptr(q, &self.stream)?,
            elem_ptr(k, &self.stream)?,
            elem_ptr(v, &self.stream)?,
            elem_ptr(&po, &self.stream)?,
            elem_ptr(&pml, &self.stream)?,
            elem_ptr(&out, &self.stream)?,
        );
        let cfg = LaunchConfig {
            grid_dim: (rows as u32, splits as u32, 1),
            block_dim: (kernels::DECODE_THREADS, 1, 1),
            shared_mem_bytes: 0,
        };
        let mut bld = self.stream.launch_builder(&part);
        bld.arg(&m)
            .arg(&pq)
            .arg(&pk)
            .arg(&pv)
            .arg(&mask_ptr)
            .arg(&ppo)
            .arg(&ppml);
        // SAFETY: `m` describes the live q/k/v/mask views; po/pml hold
        // rows × splits partials.
        self.check_launch("split-KV attention", unsafe { bld.launch(cfg) }.map(|_| ()))?;
        let (splits_i, dv_i) = (splits as i32, dv as i64);
        let cfg = LaunchConfig {
            grid_dim: (rows as u32, 1, 1),
            block_dim: (kernels::DECODE_THREADS, 1, 1),
            shared_mem_bytes: 0,
        };
        let mut bld = self.stream.launch_builder(&join);
        bld.arg(&ppo).arg(&ppml).arg(&pout).arg(&splits_i).arg(&dv_i);
        // SAFETY: reads the partials written above, writes contiguous [rows, dv].
        self.check_launch("split-KV join", unsafe { bld.launch(cfg) }.map(|_| ()))?;
        self.count_attention(1);
        Ok(out)
    }
}

/// `out = in`: the copy kernel (one instance, so its kernel is found by address).
fn identity_region() -> &'static Region {
    static IDENTITY: std::sync::OnceLock<Region> = std::sync::OnceLock::new();
    IDENTITY.get_or_init(|| Region {
        exprs: vec![Expr::Input(0)],
        outputs: vec![0],
        reduce: None,
        members: vec![],
    })
}

fn broadcast(a: &[usize], b: &[usize]) -> Option<Vec<usize>> {
    let r = a.len().max(b.len());
    let mut out = vec![0; r];
    for i in 0..r {
        let x = if i + a.len() >= r { a[i + a.len() - r] } else { 1 };
        let y = if i + b.len() >= r { b[i + b.len() - r] } else { 1 };
        out[i] = if x == y || y == 1 {
            x
        } else if x == 1 {
            y
        } else {
            return None;
        };
    }
    Some(out)
}

/// Launch shape of the quantized GEMVs: one 32-thread warp per output column,
/// 256 threads a block.
fn warp_per_column(n: usize) -> LaunchConfig {
    LaunchConfig {
        grid_dim: ((n * 32).div_ceil(256) as u32, 1, 1),
        block_dim: (256, 1, 1),
        shared_mem_bytes: 0,
    }
}

/// A one-node region for an elementwise op or a reduction.
fn single_op_region(op: &Op, n_inputs: usize) -> Option<Region> {
    let mut exprs: Vec<Expr> = (0..n_inputs).map(Expr::Input).collect();
    let mut reduce = None;
    match op {
        Op::Unary(u) => exprs.push(Expr::Unary(*u, 0)),
        Op::Binary(b) => exprs.push(Expr::Binary(*b, 0, 1)),
        Op::Where => exprs.push(Expr::Where(0, 1, 2)),
        Op::Cast(d) => exprs.push(Expr::Cast(*d, 0)),
        _ => {
            let _ = &mut reduce;
            return None;
        }
    }
    let last = exprs.len() - 1;
    Some(Region {
        exprs,
        outputs: vec![last],
        reduce,
        members: vec![],
    })
}

fn clamp_region(min: Option<f64>, max: Option<f64>, d: DType) -> Region {
    let mut exprs = vec![Expr::Input(0)];
    let mut cur = 0;
    if let Some(lo) = min {
        exprs.push(Expr::Scalar(lo, d));
        exprs.push(Expr::Binary(BinaryOp::Max, cur, exprs.len() - 1));
        cur = exprs.len() - 1;
    }
    if let Some(hi) = max {
        exprs.push(Expr::Scalar(hi, d));
        exprs.push(Expr::Binary(BinaryOp::Min, cur, exprs.len() - 1));
        cur = exprs.len() - 1;
    }
    Region {
        exprs,
        outputs: vec![cur],
        reduce: None,
        members: vec![],
    }
}

trait View2d {
    fn reshape_view_2d(&self) -> Result<Tensor>;
}

impl View2d for Tensor {
    /// Drops leading size-1 batch axes: `[1, .., 1, r, c]` → `[r, c]` (a view).
    fn reshape_view_2d(&self) -> Result<Tensor> {
        let r = self.rank();
        self.as_strided(&self.shape()[r - 2..], &self.strides()[r - 2..], self.offset())
    }
}

fn out_shape(node: &Node, k: usize) -> Result<Vec<usize>> {
    node.outputs[k]
        .shape
        .concrete()
        .ok_or_else(|| err(format!("`{}`: output shape is not concrete", node.name)))
}

fn out_types(node: &Node) -> Result<Vec<(DType, Vec<usize>)>> {
    (0..node.outputs.len())
        .map(|k| Ok((node.outputs[k].dtype, out_shape(node, k)?)))
        .collect()
}

fn float_out(node: &Node) -> bool {
    node.outputs.iter().all(|t| t.dtype == DType::F32)
}

/// The dtypes cuBLASLt matmul and the attention kernels take.
fn lt_dtype(d: DType) -> bool {
    matches!(d, DType::F32 | DType::F16 | DType::BF16)
}

fn lt_out(node: &Node) -> bool {
    node.outputs.iter().all(|t| lt_dtype(t.dtype))
}

/// Whether the CUDA backend has a kernel for this op kind at all (for the op
/// coverage table; [`supports_node`] also checks dtypes, ranks and axes).
pub fn supports_op(op: &Op) -> bool {
    matches!(
        op,
        Op::Fused(_)
            | Op::Unary(_)
            | Op::Binary(_)
            | Op::Where
            | Op::Cast(_)
            | Op::Clamp { .. }
            | Op::Reduce { .. }
            | Op::MatMul { .. }
            | Op::Gemm { .. }
            | Op::Softmax { .. }
            | Op::LogSoftmax { .. }
            | Op::RmsNorm { .. }
            | Op::LayerNorm { .. }
            | Op::Sdpa(_)
            | Op::Gather { .. }
            | Op::Dequantize { .. }
            | Op::QuantMatMul { .. }
            | Op::Reshape { .. }
            | Op::Squeeze { .. }
            | Op::Unsqueeze { .. }
            | Op::Transpose { .. }
            | Op::Expand { .. }
            | Op::Slice { .. }
            | Op::Concat { .. }
            | Op::Split { .. }
            | Op::Tile { .. }
            | Op::Pad { .. }
            | Op::Range { .. }
            | Op::OneHot { .. }
            | Op::ArgReduce { .. }
            | Op::CumSum { .. }
            | Op::TopK { .. }
            | Op::GatherElements { .. }
            | Op::ScatterElements { .. }
            | Op::Conv(_)
            | Op::MaxPool(_)
            | Op::AvgPool(_)
    )
}

/// Whether the CUDA backend runs this node (op kind, dtypes, rank, axes).
pub fn supports_node(node: &Node) -> bool {
    if !supports_op(&node.op) {
        return false;
    }
    if node.outputs.is_empty() {
        return true;
    }
    let rank = node.outputs[0].shape.rank();
    match &node.op {
        Op::Fused(r) => {
            supported_dtypes(node) && r.exprs.iter().filter(|e| matches!(e, Expr::Input(_))).count() < MAX_OPERANDS
        }
        Op::MatMul { .. } => lt_out(node) && rank >= 2,
        Op::Gemm { .. } => lt_out(node) && rank == 2,
        Op::Sdpa(_) => lt_out(node),
        Op::Softmax { axis } | Op::LogSoftmax { axis } => {
            float_out(node) && normalize_axis(*axis, rank) == Some(rank.saturating_sub(1))
        }
        Op::RmsNorm { .. } | Op::LayerNorm { .. } | Op::Dequantize { .. } | Op::QuantMatMul { .. } => float_out(node),
        _ => supported_dtypes(node) && rank <= MAX_RANK,
    }
}

/// Input-type checks on top of [`supports_node`]: dtypes the kernels handle,
/// operand ranks, and integer forms of float-only ops.
pub fn supports_input_types(node: &Node, inputs: &[stitch_core::TensorType]) -> bool {
    use stitch_core::ops::UnaryOp as U;
    let dt = |k: usize| inputs.get(k).map(|t| t.dtype);
    let all_c = inputs.iter().all(|t| codegen::c_type(t.dtype).is_some());
    let f32_in = |k: usize| dt(k) == Some(DType::F32);
    match &node.op {
        Op::Fused(r) => {
            all_c && {
                let dts: Vec<DType> = inputs.iter().map(|t| t.dtype).collect();
                codegen::region_kernel(r, &dts, "probe").is_ok()
            }
        }
        Op::Unary(u) => {
            all_c && (matches!(u, U::Neg | U::Abs | U::Relu | U::Sign | U::Not) || dt(0).is_some_and(|d| d.is_float()))
        }
        Op::Binary(b) => {
            let float = dt(0).is_some_and(|d| d.is_float());
            all_c
                && match b {
                    BinaryOp::Pow | BinaryOp::Fmod => float,
                    BinaryOp::Mod => dt(0) != Some(DType::Bool),
                    _ => true,
                }
        }
        Op::Where | Op::Cast(_) | Op::Clamp { .. } | Op::Reduce { .. } => all_c,
        Op::MatMul { .. } => {
            dt(0).is_some_and(lt_dtype) && dt(1) == dt(0) && inputs.iter().all(|t| t.shape.rank() >= 2)
        }
        Op::Gemm { .. } => {
            dt(0).is_some_and(lt_dtype)
                && dt(1) == dt(0)
                && inputs[..2].iter().all(|t| t.shape.rank() == 2)
                && inputs
                    .get(2)
                    .is_none_or(|c| c.dtype == inputs[0].dtype && c.shape.rank() <= 2)
        }
        Op::Softmax { .. } | Op::LogSoftmax { .. } | Op::RmsNorm { .. } | Op::LayerNorm { .. } => {
            inputs.iter().all(|t| t.dtype == DType::F32)
        }
        Op::Sdpa(_) => {
            let head = |k: usize| inputs[k].shape.dims().last().and_then(|d| d.known());
            dt(0).is_some_and(lt_dtype)
                && (0..3).all(|k| dt(k) == dt(0) && inputs[k].shape.rank() == 4)
                // 16-bit floats always run on the tensor-core or split-KV kernels.
                && (f32_in(0) || [1, 2].iter().all(|&k| head(k).is_some_and(|d| d <= kernels::DECODE_MAX_D)))
                && inputs
                    .get(3)
                    .is_none_or(|m| matches!(m.dtype, DType::Bool | DType::F32 | DType::F16 | DType::BF16) && m.shape.rank() <= 4)
        }
        Op::Gather { .. } => {
            codegen::c_type(inputs[0].dtype).is_some() && matches!(dt(1), Some(DType::I64 | DType::I32))
        }
        Op::Dequantize { .. } => dt(0) == Some(DType::U8),
        Op::QuantMatMul { .. } => f32_in(0) && dt(1) == Some(DType::U8),
        Op::ArgReduce { .. } | Op::CumSum { .. } | Op::TopK { .. } => {
            dt(0).is_some_and(|d| more_ops::typed_suffix(d).is_some())
        }
        Op::OneHot { .. } => dt(0).is_some_and(|d| more_ops::index_suffix(d).is_some()),
        Op::GatherElements { axis } | Op::ScatterElements { axis, .. } => {
            let shapes = (inputs[0].shape.concrete(), inputs[1].shape.concrete());
            let typed = matches!(node.op, Op::GatherElements { .. })
                || dt(0).is_some_and(|d| more_ops::typed_suffix(d).is_some());
            typed
                && dt(1).is_some_and(|d| more_ops::index_suffix(d).is_some())
                && match shapes {
                    (Some(d), Some(i)) => {
                        normalize_axis(*axis, d.len()).is_some_and(|ax| more_ops::index_shape_ok(&d, &i, ax))
                    }
                    _ => false,
                }
        }
        Op::Conv(_) | Op::MaxPool(_) | Op::AvgPool(_) => {
            inputs.iter().all(|t| t.dtype == DType::F32) && matches!(inputs[0].shape.rank(), 3 | 4)
        }
        _ => all_c,
    }
}

/// A stand-in with the CUDA backend's name and op coverage, for tables made
/// where no GPU exists (`stitch ops`); it cannot execute anything.
#[derive(Debug, Default)]
pub struct CudaOpCoverage;

impl Backend for CudaOpCoverage {
    fn name(&self) -> &str {
        "cuda"
    }
    fn supports(&self, node: &Node) -> bool {
        supports_op(&node.op)
    }
    fn execute(&self, node: &Node, _: &[Tensor]) -> Result<Outputs> {
        Err(err(format!(
            "`{}`: the CUDA coverage table cannot run ops; use CudaBackend",
            node.name
        )))
    }
}

fn supported_dtypes(node: &Node) -> bool {
    node.outputs.iter().all(|t| codegen::c_type(t.dtype).is_some())
}

impl Backend for CudaBackend {
    fn name(&self) -> &str {
        &self.name
    }

    fn supports(&self, node: &Node) -> bool {
        supports_node(node)
    }

    fn supports_inputs(&self, node: &Node, inputs: &[stitch_core::TensorType]) -> bool {
        supports_node(node) && supports_input_types(node, inputs)
    }

    fn supports_fusion(&self) -> bool {
        true
    }

    fn is_host(&self) -> bool {
        false
    }

    /// Quantized matmul with a constant weight: the packed rows are repacked
    /// for 16-byte loads ([`kernels::repack_quant`]) and uploaded once per plan.
    fn prepare(&self, node: &Node, constants: &[Option<&Tensor>]) -> Result<Option<stitch_core::Prepared>> {
        let Op::QuantMatMul { format } = node.op else {
            return Ok(None);
        };
        let Some(Some(w)) = constants.get(1) else {
            return Ok(None);
        };
        if w.dtype() != DType::U8 || w.rank() != 2 || w.device_memory().is_some() {
            return Ok(None);
        }
        let (n, row_bytes) = (w.shape()[0], w.shape()[1]);
        let k = row_bytes / format.block_bytes() * format.block_elems();
        if format.row_bytes(k).ok() != Some(row_bytes) || k % 32 != 0 || n * k == 0 {
            return Ok(None);
        }
        let host = w.contiguous();
        let bytes = &host.buffer().as_bytes()[host.offset()..][..n * row_bytes];
        let packed = kernels::repack_quant(format, bytes, n);
        let len = packed.len();
        let data = self.upload(&Tensor::from_vec(packed, &[len])?)?;
        let lay = kernels::packed_layout(format);
        Ok(Some(Arc::new(PackedQuant {
            data,
            format,
            n,
            k,
            meta_at: n * (k / format.block_elems()) * lay.quant_bytes,
        })))
    }

    fn execute_prepared(&self, node: &Node, inputs: &[Tensor], prepared: &stitch_core::Prepared) -> Result<Outputs> {
        if let (Op::QuantMatMul { .. }, Some(p)) = (&node.op, prepared.downcast_ref::<PackedQuant>()) {
            let y = self
                .packed_matmul(node, &inputs[0], p)
                .map_err(|e| Error::node(node.name.clone(), node.op.kind(), e.to_string()))?;
            return Ok(smallvec::smallvec![y]);
        }
        self.execute(node, inputs)
    }

    fn execute(&self, node: &Node, inputs: &[Tensor]) -> Result<Outputs> {
        let one = |t: Tensor| -> Result<Outputs> { Ok(smallvec::smallvec![t]) };
        let wrap = |e: Error| match e {
            Error::Node { .. } => e,
            e => Error::node(node.name.clone(), node.op.kind(), e.to_string()),
        };
        let res = (|| -> Result<Outputs> {
            match &node.op {
                Op::Fused(r) => self.run_region(r, inputs, &out_types(node)?),
                Op::Unary(_) | Op::Binary(_) | Op::Where | Op::Cast(_) => {
                    let r = single_op_region(&node.op, inputs.len()).ok_or_else(|| err("internal: not elementwise"))?;
                    self.run_region(&r, inputs, &out_types(node)?)
                }
                Op::Clamp { min, max } => {
                    let r = clamp_region(*min, *max, inputs[0].dtype());
                    self.run_region(&r, inputs, &out_types(node)?)
                }
                Op::Reduce { op, axes, keepdims } => {
                    let x = &inputs[0];
                    let mut ax: Vec<usize> = if axes.is_empty() {
                        (0..x.rank()).collect()
                    } else {
                        axes.iter()
                            .map(|&a| normalize_axis(a, x.rank()).ok_or_else(|| err(format!("axis {a} out of range"))))
                            .collect::<Result<_>>()?
                    };
                    ax.sort_unstable();
                    ax.dedup();
                    let r = Region {
                        exprs: vec![Expr::Input(0)],
                        outputs: vec![0],
                        reduce: Some(RegionReduce {
                            op: *op,
                            axes: ax,
                            keepdims: *keepdims,
                        }),
                        members: vec![],
                    };
                    if *op == ReduceOp::Mean && !x.dtype().is_float() {
                        return Err(err("mean of integers is not supported on CUDA"));
                    }
                    self.run_region(&r, inputs, &out_types(node)?)
                }
                Op::Gemm {
                    alpha,
                    beta,
                    transpose_a,
                    transpose_b,
                    activation,
                } => one(self.gemm(node, inputs, *alpha, *beta, *transpose_a, *transpose_b, *activation)?),
                Op::MatMul {
                    transpose_a,
                    transpose_b,
                } => one(self.matmul(node, &inputs[0], &inputs[1], *transpose_a, *transpose_b)?),
                Op::Softmax { axis } => one(self.softmax(node, &inputs[0], *axis, false)?),
                Op::LogSoftmax { axis } => one(self.softmax(node, &inputs[0], *axis, true)?),
                Op::RmsNorm { axis, epsilon } => one(self.norm(node, inputs, *axis, *epsilon, true)?),
                Op::LayerNorm { axis, epsilon } => one(self.norm(node, inputs, *axis, *epsilon, false)?),
                Op::Sdpa(a) => one(self.sdpa(node, inputs, a.scale, a.causal)?),
                Op::Gather { axis } => one(self.gather(node, &inputs[0], &inputs[1], *axis)?),
                Op::Tile { repeats } => one(self.tile(node, &inputs[0], repeats)?),
                Op::Pad { pads, mode, value } => one(self.pad(node, &inputs[0], pads, *mode, *value)?),
                Op::Range {
                    start, delta, dtype, ..
                } => one(self.range(node, *start, *delta, *dtype)?),
                Op::OneHot {
                    depth,
                    axis,
                    dtype,
                    on_value,
                    off_value,
                } => one(self.one_hot(node, &inputs[0], *depth, *axis, *dtype, *on_value, *off_value)?),
                Op::ArgReduce {
                    op,
                    axis,
                    select_last_index,
                    ..
                } => one(self.arg_reduce(
                    node,
                    &inputs[0],
                    *axis,
                    *op == stitch_core::ops::ArgReduceOp::ArgMax,
                    *select_last_index,
                )?),
                Op::CumSum {
                    axis,
                    exclusive,
                    reverse,
                } => one(self.cumsum(node, &inputs[0], *axis, *exclusive, *reverse)?),
                Op::TopK { k, axis, largest, .. } => {
                    let [v, i] = self.topk(node, &inputs[0], *k, *axis, *largest)?;
                    Ok(smallvec::smallvec![v, i])
                }
                Op::GatherElements { axis } => one(self.gather_elements(node, &inputs[0], &inputs[1], *axis)?),
                Op::ScatterElements { axis, reduction } => one(self.scatter_elements(node, inputs, *axis, *reduction)?),
                Op::Conv(a) => one(self.conv(node, inputs, a)?),
                Op::MaxPool(a) => one(self.pool(node, &inputs[0], a, true)?),
                Op::AvgPool(a) => one(self.pool(node, &inputs[0], a, false)?),
                Op::Dequantize { format } => {
                    let shape = out_shape(node, 0)?;
                    let k = *shape.last().ok_or_else(|| err("dequantize output has rank 0"))?;
                    let rows: usize = shape[..shape.len() - 1].iter().product();
                    let w = self
                        .contiguous(&inputs[0])?
                        .reshape(&[rows, inputs[0].numel() / rows.max(1)])?;
                    one(self.dequantize(node, &w, *format, k)?.reshape(&shape)?)
                }
                Op::QuantMatMul { format } => one(self.quant_matmul(node, &inputs[0], &inputs[1], *format)?),
                Op::Reshape { .. } | Op::Squeeze { .. } | Op::Unsqueeze { .. } => {
                    let shape = out_shape(node, 0)?;
                    let x = self.contiguous(&inputs[0])?;
                    one(x.reshape(&shape)?)
                }
                Op::Transpose { perm } => {
                    let x = &inputs[0];
                    if perm.is_empty() {
                        let rev: Vec<usize> = (0..x.rank()).rev().collect();
                        one(x.permute(&rev)?)
                    } else {
                        one(x.permute(perm)?)
                    }
                }
                Op::Expand { .. } => one(inputs[0].broadcast_to(&out_shape(node, 0)?)?),
                Op::Slice {
                    starts,
                    ends,
                    axes,
                    steps,
                } => one(slice_view(&inputs[0], starts, ends, axes, steps, &out_shape(node, 0)?)?),
                Op::Split { axis, sizes } => {
                    let x = &inputs[0];
                    let ax = normalize_axis(*axis, x.rank()).ok_or_else(|| err("split axis out of range"))?;
                    let mut at = 0usize;
                    let mut outs = Outputs::new();
                    for &n in sizes {
                        outs.push(x.slice(ax, at as isize, (at + n) as isize, 1)?);
                        at += n;
                    }
                    Ok(outs)
                }
                Op::Concat { axis } => {
                    let shape = out_shape(node, 0)?;
                    let ax = normalize_axis(*axis, shape.len()).ok_or_else(|| err("concat axis out of range"))?;
                    let out = self.alloc(node.outputs[0].dtype, &shape)?;
                    let mut at = 0usize;
                    for x in inputs {
                        let len = x.shape()[ax];
                        if len > 0 {
                            let dst = out.slice(ax, at as isize, (at + len) as isize, 1)?;
                            self.copy_into(&dst, x)?;
                        }
                        at += len;
                    }
                    one(out)
                }
                op => Err(err(format!("the CUDA backend has no kernel for `{}`", op.kind()))),
            }
        })();
        res.map_err(wrap)
    }

    fn upload(&self, t: &Tensor) -> Result<Tensor> {
        if t.device_memory().is_some() {
            return Ok(t.clone());
        }
        let host = t.contiguous();
        let es = host.dtype().size_in_bytes();
        let bytes = &host.buffer().as_bytes()[host.offset() * es..][..host.numel() * es];
        let out = self.alloc(t.dtype(), t.shape())?;
        if !bytes.is_empty() {
            let mem = out
                .device_memory()
                .and_then(|m| m.as_any().downcast_ref::<CudaMem>())
                .ok_or_else(|| err("internal: fresh CUDA tensor"))?;
            let (dst, _s) = mem.slice.device_ptr(&self.stream);
            // SAFETY: `dst` holds at least `bytes.len()` bytes; the copy is synchronous
            // with respect to the host buffer (cuMemcpyHtoDAsync on pageable memory
            // returns once the source has been consumed).
            unsafe {
                cudarc::driver::result::memcpy_htod_async(dst, bytes, self.stream.cu_stream())
                    .map_err(|e| err(format!("CUDA upload of {} bytes failed: {e}", bytes.len())))?;
            }
            // The host buffer may be freed right after: wait for the copy.
            self.stream.synchronize().map_err(|e| err(format!("CUDA: {e}")))?;
        }
        Ok(out)
    }

    fn download(&self, t: &Tensor) -> Result<Tensor> {
        if t.device_memory().is_none() {
            return Ok(t.clone());
        }
        let c = self.contiguous(t)?;
        let es = c.dtype().size_in_bytes();
        let n = c.numel() * es;
        let mut bytes = vec![0u8; n];
        if n > 0 {
            let src = elem_ptr(&c, &self.stream)?;
            // SAFETY: `src` addresses `n` bytes of live device memory; the stream is
            // synchronised before the host buffer is read.
            unsafe {
                cudarc::driver::result::memcpy_dtoh_async(&mut bytes[..], src, self.stream.cu_stream())
                    .map_err(|e| err(format!("CUDA download of {n} bytes failed: {e}")))?;
            }
            self.stream.synchronize().map_err(|e| err(format!("CUDA: {e}")))?;
        }
        Ok(Tensor::from_buffer(
            stitch_core::Buffer::from_bytes(&bytes),
            c.dtype(),
            c.shape(),
        ))
    }

    fn write_slice(&self, target: &mut Tensor, starts: &[usize], src: &Tensor) -> Result<()> {
        if target.device_memory().is_none() {
            return target.write_slice(starts, src);
        }
        if starts.len() != target.rank() || src.rank() != target.rank() {
            return Err(err(format!(
                "slice_update: starts {starts:?} and update {:?} do not match the variable's rank {}",
                src.shape(),
                target.rank()
            )));
        }
        let mut dst = target.clone();
        for (a, (&s, &n)) in starts.iter().zip(src.shape()).enumerate() {
            if s + n > target.shape()[a] {
                return Err(err(format!(
                    "slice_update: update {:?} at {starts:?} does not fit in {:?}",
                    src.shape(),
                    target.shape()
                )));
            }
            dst = dst.slice(a, s as isize, (s + n) as isize, 1)?;
        }
        let src = if src.device_memory().is_some() {
            src.clone()
        } else {
            self.upload(src)?
        };
        self.copy_into(&dst, &src)
    }

    fn synchronize(&self) -> Result<()> {
        self.stream.synchronize().map_err(|e| err(format!("CUDA: {e}")))
    }

    fn record_marker(&self) -> Result<Option<usize>> {
        let ev = self
            .ctx
            .new_event(Some(cudarc::driver::sys::CUevent_flags::CU_EVENT_DEFAULT))
            .map_err(|e| err(format!("CUDA: cannot create a timing event: {e}")))?;
        ev.record(&self.stream)
            .map_err(|e| err(format!("CUDA: cannot record a timing event: {e}")))?;
        let mut m = self.markers.lock().map_err(|_| err("CUDA: poisoned"))?;
        m.push(ev);
        Ok(Some(m.len() - 1))
    }

    fn marker_elapsed_ns(&self, from: usize, markers: &[usize]) -> Result<Vec<u64>> {
        let mut m = self.markers.lock().map_err(|_| err("CUDA: poisoned"))?;
        self.stream.synchronize().map_err(|e| err(format!("CUDA: {e}")))?;
        let base = m
            .get(from)
            .ok_or_else(|| err(format!("CUDA: no timing marker {from}")))?;
        let out = markers
            .iter()
            .map(|&k| {
                let ev = m.get(k).ok_or_else(|| err(format!("CUDA: no timing marker {k}")))?;
                let ms = base
                    .elapsed_ms(ev)
                    .map_err(|e| err(format!("CUDA: cannot read a timing event: {e}")))?;
                Ok((f64::from(ms) * 1e6).max(0.0) as u64)
            })
            .collect::<Result<Vec<u64>>>();
        m.clear();
        out
    }
}

fn slice_view(x: &Tensor, starts: &[i64], ends: &[i64], axes: &[i64], steps: &[i64], out: &[usize]) -> Result<Tensor> {
    let mut t = x.clone();
    let axes: Vec<i64> = if axes.is_empty() {
        (0..starts.len() as i64).collect()
    } else {
        axes.to_vec()
    };
    for (i, &a) in axes.iter().enumerate() {
        let ax = normalize_axis(a, x.rank()).ok_or_else(|| err(format!("slice axis {a} out of range")))?;
        let dim = x.shape()[ax] as i64;
        let step = steps.get(i).copied().unwrap_or(1);
        if step == 0 {
            return Err(err("slice step must not be 0"));
        }
        let norm = |v: i64| if v < 0 { v + dim } else { v };
        let (s, e) = (norm(starts[i]), norm(ends[i]));
        let (s, e) = if step > 0 {
            (s.clamp(0, dim), e.clamp(0, dim))
        } else {
            (s.clamp(-1, dim - 1), e.clamp(-1, dim - 1))
        };
        t = t.slice(ax, s as isize, e as isize, step as isize)?;
    }
    if t.shape() != out {
        return Err(err(format!(
            "slice produced {:?}, the graph expects {out:?}",
            t.shape()
        )));
    }
    Ok(t)
}
