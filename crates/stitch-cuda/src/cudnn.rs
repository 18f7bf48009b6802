//! cuDNN's fused attention (scaled dot-product attention forward) through the
//! backend API, for f16/bf16 prefill.
//!
//! cuDNN is opened at run time (`libcudnn.so.9`); where it is missing, older
//! than 9, or rejects a graph, [`Cudnn::open`] / [`Cudnn::sdpa`] say so and the
//! caller runs stitch's own kernel instead.
//!
//! The operation graph is the pattern cuDNN's flash-attention engine matches:
//!
//! ```text
//! S = Q · Kᵀ            matmul, f32 scores (K transposed through its strides,
//!                       grouped-query heads as fewer K/V heads)
//! S = S · scale         pointwise mul by a by-value f32
//! causal:               row = gen_index(S, 2) [+ T - S], col = gen_index(S, 3),
//!                       S = row >= col ? S : -inf     (bottom-right aligned)
//! M = max_t S;  E = exp(S - M);  Z = Σ_t E;  P = E / Z   (P in the I/O dtype)
//! O = P · V             matmul into the output
//! ```
//!
//! One execution plan is built per [`SdpaKey`] (shape, dtype, causal, strides)
//! from the heuristics' engine configurations (the first that finalizes) and
//! kept; a key cuDNN cannot run is remembered as such.

use std::collections::HashMap;
use std::ffi::c_void;
use std::sync::Arc;

use cudarc::cudnn::sys as dnn;
use cudarc::driver::{CudaSlice, CudaStream, DevicePtr};
use dnn::cudnnBackendAttributeName_t as A;
use dnn::cudnnBackendAttributeType_t as T;
use dnn::cudnnBackendDescriptorType_t as D;
use dnn::cudnnDataType_t as Dt;
use dnn::cudnnPointwiseMode_t as Pw;

/// Everything an SDPA execution plan is specialised on. Strides are in
/// elements, `[B, H, S, D]` order, of the operands as they lie in memory.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct SdpaKey {
    /// `true` for bf16, `false` for f16.
    pub bf16: bool,
    pub b: i64,
    pub h: i64,
    pub hk: i64,
    pub s: i64,
    pub t: i64,
    pub d: i64,
    pub causal: bool,
    pub qs: [i64; 4],
    pub ks: [i64; 4],
    pub vs: [i64; 4],
}

/// One backend descriptor, destroyed on drop.
struct Desc(dnn::cudnnBackendDescriptor_t);

impl Drop for Desc {
    fn drop(&mut self) {
        if !self.0.is_null() {
            // SAFETY: created by cudnnBackendCreateDescriptor, destroyed once.
            unsafe { dnn::cudnnBackendDestroyDescriptor(self.0) };
        }
    }
}

/// A finalized execution plan and the descriptors it was built from.
struct Plan {
    plan: Desc,
    workspace: usize,
    /// Kept alive for the plan's lifetime (cuDNN may refer to them).
    _parts: Vec<Desc>,
}

const UID_Q: i64 = 1;
const UID_K: i64 = 2;
const UID_V: i64 = 3;
const UID_O: i64 = 4;
const UID_SCALE: i64 = 5;
const UID_NEG_INF: i64 = 6;
const UID_SHIFT: i64 = 7;

/// A cuDNN handle on the backend's stream, its plans and a workspace.
pub struct Cudnn {
    handle: dnn::cudnnHandle_t,
    version: usize,
    plans: HashMap<SdpaKey, Option<Plan>>,
    workspace: Option<CudaSlice<u8>>,
    /// The first failure building a plan, for diagnostics.
    last_error: Option<String>,
}

// SAFETY: the handle and descriptors are used under the backend's mutex, one
// thread at a time; cuDNN allows a handle to move between threads.
unsafe impl Send for Cudnn {}

impl Drop for Cudnn {
    fn drop(&mut self) {
        self.plans.clear();
        // SAFETY: created by cudnnCreate; destroyed once, after its plans.
        unsafe { dnn::cudnnDestroy(self.handle) };
    }
}

fn status_text(st: dnn::cudnnStatus_t) -> String {
    let mut buf = [0 as std::ffi::c_char; 512];
    // SAFETY: cuDNN writes a NUL-terminated message of at most `len` bytes.
    unsafe { dnn::cudnnGetLastErrorString(buf.as_mut_ptr(), buf.len()) };
    // SAFETY: NUL-terminated (zero-initialised buffer, bounded write).
    let msg = unsafe { std::ffi::CStr::from_ptr(buf.as_ptr()) }.to_string_lossy();
    if msg.is_empty() {
        format!("{st:?}")
    } else {
        format!("{st:?}: {}", msg.trim())
    }
}

fn check(st: dnn::cudnnStatus_t, what: &str) -> Result<(), String> {
    if st == dnn::cudnnStatus_t::CUDNN_STATUS_SUCCESS {
        Ok(())
    } else {
        Err(format!("{what}: {}", status_text(st)))
    }
}

fn create(kind: D) -> Result<Desc, String> {
    let mut p: dnn::cudnnBackendDescriptor_t = std::ptr::null_mut();
    // SAFETY: plain out-parameter.
    check(
        unsafe { dnn::cudnnBackendCreateDescriptor(kind, &mut p) },
        &format!("create {kind:?}"),
    )?;
    Ok(Desc(p))
}

/// Sets attribute `name` of `d` to `n` elements of type `ty` at `ptr`.
fn set<V>(d: &Desc, name: A, ty: T, vals: &[V]) -> Result<(), String> {
    // SAFETY: `vals` holds `vals.len()` elements of the C type `ty` names
    // (the callers pair them: i64 with INT64, descriptor handles with
    // BACKEND_DESCRIPTOR, ...); cuDNN copies them.
    check(
        unsafe { dnn::cudnnBackendSetAttribute(d.0, name, ty, vals.len() as i64, vals.as_ptr() as *const c_void) },
        &format!("set {name:?}"),
    )
}

fn finalize(d: &Desc, what: &str) -> Result<(), String> {
    // SAFETY: a descriptor created above.
    check(unsafe { dnn::cudnnBackendFinalize(d.0) }, &format!("finalize {what}"))
}

fn contiguous(dims: [i64; 4]) -> [i64; 4] {
    [dims[1] * dims[2] * dims[3], dims[2] * dims[3], dims[3], 1]
}

/// The tensors and operations of one graph under construction.
#[derive(Default)]
struct Builder {
    descs: Vec<Desc>,
    ops: Vec<usize>,
    next_uid: i64,
}

impl Builder {
    fn keep(&mut self, d: Desc) -> usize {
        self.descs.push(d);
        self.descs.len() - 1
    }

    fn raw(&self, i: usize) -> dnn::cudnnBackendDescriptor_t {
        self.descs[i].0
    }

    #[allow(clippy::too_many_arguments)]
    fn tensor(
        &mut self,
        uid: Option<i64>,
        dt: Dt,
        dims: [i64; 4],
        strides: [i64; 4],
        is_virtual: bool,
        by_value: bool,
    ) -> Result<usize, String> {
        let d = create(D::CUDNN_BACKEND_TENSOR_DESCRIPTOR)?;
        let uid = uid.unwrap_or_else(|| {
            self.next_uid += 1;
            100 + self.next_uid
        });
        set(&d, A::CUDNN_ATTR_TENSOR_DATA_TYPE, T::CUDNN_TYPE_DATA_TYPE, &[dt])?;
        set(&d, A::CUDNN_ATTR_TENSOR_DIMENSIONS, T::CUDNN_TYPE_INT64, &dims)?;
        set(&d, A::CUDNN_ATTR_TENSOR_STRIDES, T::CUDNN_TYPE_INT64, &strides)?;
        set(&d, A::CUDNN_ATTR_TENSOR_UNIQUE_ID, T::CUDNN_TYPE_INT64, &[uid])?;
        set(&d, A::CUDNN_ATTR_TENSOR_BYTE_ALIGNMENT, T::CUDNN_TYPE_INT64, &[16i64])?;
        if is_virtual {
            set(&d, A::CUDNN_ATTR_TENSOR_IS_VIRTUAL, T::CUDNN_TYPE_BOOLEAN, &[true])?;
        }
        if by_value {
            set(&d, A::CUDNN_ATTR_TENSOR_IS_BY_VALUE, T::CUDNN_TYPE_BOOLEAN, &[true])?;
        }
        finalize(&d, "tensor")?;
        Ok(self.keep(d))
    }

    /// A virtual `[b, h, s, t]` (or `[b, h, s, 1]`) tensor.
    fn virt(&mut self, dt: Dt, dims: [i64; 4]) -> Result<usize, String> {
        self.tensor(None, dt, dims, contiguous(dims), true, false)
    }

    fn scalar(&mut self, uid: i64, dt: Dt) -> Result<usize, String> {
        self.tensor(Some(uid), dt, [1; 4], [1; 4], false, true)
    }

    /// A pointwise operation `y = mode(x[, b[, t]])` computed in `prec`.
    #[allow(clippy::too_many_arguments)]
    fn pointwise(
        &mut self,
        mode: Pw,
        prec: Dt,
        axis: Option<i64>,
        x: usize,
        b: Option<usize>,
        t: Option<usize>,
        y: usize,
    ) -> Result<(), String> {
        let pw = create(D::CUDNN_BACKEND_POINTWISE_DESCRIPTOR)?;
        set(&pw, A::CUDNN_ATTR_POINTWISE_MODE, T::CUDNN_TYPE_POINTWISE_MODE, &[mode])?;
        set(&pw, A::CUDNN_ATTR_POINTWISE_MATH_PREC, T::CUDNN_TYPE_DATA_TYPE, &[prec])?;
        if let Some(axis) = axis {
            set(&pw, A::CUDNN_ATTR_POINTWISE_AXIS, T::CUDNN_TYPE_INT64, &[axis])?;
        }
        finalize(&pw, &format!("pointwise {mode:?}"))?;
        let op = create(D::CUDNN_BACKEND_OPERATION_POINTWISE_DESCRIPTOR)?;
        let bd = T::CUDNN_TYPE_BACKEND_DESCRIPTOR;
        set(&op, A::CUDNN_ATTR_OPERATION_POINTWISE_PW_DESCRIPTOR, bd, &[pw.0])?;
        set(&op, A::CUDNN_ATTR_OPERATION_POINTWISE_XDESC, bd, &[self.raw(x)])?;
        if let Some(b) = b {
            set(&op, A::CUDNN_ATTR_OPERATION_POINTWISE_BDESC, bd, &[self.raw(b)])?;
        }
        if let Some(t) = t {
            set(&op, A::CUDNN_ATTR_OPERATION_POINTWISE_TDESC, bd, &[self.raw(t)])?;
        }
        set(&op, A::CUDNN_ATTR_OPERATION_POINTWISE_YDESC, bd, &[self.raw(y)])?;
        finalize(&op, &format!("pointwise operation {mode:?}"))?;
        self.keep(pw);
        let i = self.keep(op);
        self.ops.push(i);
        Ok(())
    }

    fn reduction(&mut self, mode: dnn::cudnnReduceTensorOp_t, x: usize, y: usize) -> Result<(), String> {
        let r = create(D::CUDNN_BACKEND_REDUCTION_DESCRIPTOR)?;
        set(
            &r,
            A::CUDNN_ATTR_REDUCTION_OPERATOR,
            T::CUDNN_TYPE_REDUCTION_OPERATOR_TYPE,
            &[mode],
        )?;
        set(
            &r,
            A::CUDNN_ATTR_REDUCTION_COMP_TYPE,
            T::CUDNN_TYPE_DATA_TYPE,
            &[Dt::CUDNN_DATA_FLOAT],
        )?;
        finalize(&r, "reduction")?;
        let op = create(D::CUDNN_BACKEND_OPERATION_REDUCTION_DESCRIPTOR)?;
        let bd = T::CUDNN_TYPE_BACKEND_DESCRIPTOR;
        set(&op, A::CUDNN_ATTR_OPERATION_REDUCTION_DESC, bd, &[r.0])?;
        set(&op, A::CUDNN_ATTR_OPERATION_REDUCTION_XDESC, bd, &[self.raw(x)])?;
        set(&op, A::CUDNN_ATTR_OPERATION_REDUCTION_YDESC, bd, &[self.raw(y)])?;
        finalize(&op, "reduction operation")?;
        self.keep(r);
        let i = self.keep(op);
        self.ops.push(i);
        Ok(())
    }

    fn matmul(&mut self, a: usize, b: usize, c: usize) -> Result<(), String> {
        let m = create(D::CUDNN_BACKEND_MATMUL_DESCRIPTOR)?;
        set(
            &m,
            A::CUDNN_ATTR_MATMUL_COMP_TYPE,
            T::CUDNN_TYPE_DATA_TYPE,
            &[Dt::CUDNN_DATA_FLOAT],
        )?;
        finalize(&m, "matmul")?;
        let op = create(D::CUDNN_BACKEND_OPERATION_MATMUL_DESCRIPTOR)?;
        let bd = T::CUDNN_TYPE_BACKEND_DESCRIPTOR;
        set(&op, A::CUDNN_ATTR_OPERATION_MATMUL_ADESC, bd, &[self.raw(a)])?;
        set(&op, A::CUDNN_ATTR_OPERATION_MATMUL_BDESC, bd, &[self.raw(b)])?;
        set(&op, A::CUDNN_ATTR_OPERATION_MATMUL_CDESC, bd, &[self.raw(c)])?;
        set(&op, A::CUDNN_ATTR_OPERATION_MATMUL_DESC, bd, &[m.0])?;
        finalize(&op, "matmul operation")?;
        self.keep(m);
        let i = self.keep(op);
        self.ops.push(i);
        Ok(())
    }
}

impl Cudnn {
    /// Opens cuDNN (9 or later) on `stream`; `Err` says why it cannot be used.
    pub fn open(stream: &CudaStream) -> Result<Cudnn, String> {
        // SAFETY: only probes whether the library can be opened.
        if !unsafe { dnn::is_culib_present() } {
            return Err("libcudnn not found".into());
        }
        // SAFETY: no arguments; the library is present.
        let version = unsafe { dnn::cudnnGetVersion() };
        if version < 90000 {
            return Err(format!("cuDNN {version} is older than 9.0"));
        }
        let mut handle: dnn::cudnnHandle_t = std::ptr::null_mut();
        // SAFETY: plain out-parameter.
        check(unsafe { dnn::cudnnCreate(&mut handle) }, "cudnnCreate")?;
        let c = Cudnn {
            handle,
            version,
            plans: HashMap::new(),
            workspace: None,
            last_error: None,
        };
        // SAFETY: the stream outlives the handle (both belong to the backend).
        check(
            unsafe { dnn::cudnnSetStream(handle, stream.cu_stream() as dnn::cudaStream_t) },
            "cudnnSetStream",
        )?;
        Ok(c)
    }

    /// cuDNN's version number (e.g. 91300 for 9.13.0).
    pub fn version(&self) -> usize {
        self.version
    }

    /// The first error met building a plan, if any.
    pub fn last_error(&self) -> Option<&str> {
        self.last_error.as_deref()
    }

    /// Whether `key` has a plan (building it on first use).
    pub fn supports(&mut self, key: &SdpaKey) -> bool {
        if !self.plans.contains_key(key) {
            let plan = match self.build(key) {
                Ok(p) => Some(p),
                Err(e) => {
                    if self.last_error.is_none() {
                        self.last_error = Some(e);
                    }
                    None
                }
            };
            self.plans.insert(key.clone(), plan);
        }
        self.plans.get(key).is_some_and(|p| p.is_some())
    }

    /// Enqueues attention for `key` on the stream: `o = softmax(q kᵀ scale) v`.
    /// `Ok(false)` when cuDNN has no plan for it. Device addresses must be
    /// 16-byte aligned; `o` is a contiguous `[B, H, S, D]` output.
    pub fn sdpa(
        &mut self,
        stream: &Arc<CudaStream>,
        key: &SdpaKey,
        ptrs: [u64; 4],
        scale: f32,
    ) -> Result<bool, String> {
        if !self.supports(key) {
            return Ok(false);
        }
        let need = self.plans[key].as_ref().map_or(0, |p| p.workspace);
        if need > 0 && self.workspace.as_ref().is_none_or(|w| w.len() < need) {
            self.workspace = None;
            // SAFETY: scratch memory cuDNN writes before it reads.
            self.workspace = Some(unsafe { stream.alloc::<u8>(need) }.map_err(|e| format!("cuDNN workspace: {e}"))?);
        }
        let ws: u64 = match &self.workspace {
            Some(w) if need > 0 => w.device_ptr(stream).0,
            _ => 0,
        };
        let plan = self.plans[key].as_ref().expect("checked above");
        let neg_inf = f32::NEG_INFINITY;
        let shift = (key.t - key.s) as i32;
        let mut uids = vec![UID_Q, UID_K, UID_V, UID_O, UID_SCALE];
        let mut data: Vec<*mut c_void> = vec![
            ptrs[0] as *mut c_void,
            ptrs[1] as *mut c_void,
            ptrs[2] as *mut c_void,
            ptrs[3] as *mut c_void,
            &scale as *const f32 as *mut c_void,
        ];
        if key.causal {
            uids.push(UID_NEG_INF);
            data.push(&neg_inf as *const f32 as *mut c_void);
            if key.t != key.s {
                uids.push(UID_SHIFT);
                data.push(&shift as *const i32 as *mut c_void);
            }
        }
        let vp = create(D::CUDNN_BACKEND_VARIANT_PACK_DESCRIPTOR)?;
        set(&vp, A::CUDNN_ATTR_VARIANT_PACK_UNIQUE_IDS, T::CUDNN_TYPE_INT64, &uids)?;
        set(
            &vp,
            A::CUDNN_ATTR_VARIANT_PACK_DATA_POINTERS,
            T::CUDNN_TYPE_VOID_PTR,
            &data,
        )?;
        set(
            &vp,
            A::CUDNN_ATTR_VARIANT_PACK_WORKSPACE,
            T::CUDNN_TYPE_VOID_PTR,
            &[ws as *mut c_void],
        )?;
        finalize(&vp, "variant pack")?;
        // SAFETY: the plan was finalized for these uids and layouts; the
        // pointers are live device buffers of the sizes the key describes
        // (host pointers for the by-value scalars, read during the call).
        check(
            unsafe { dnn::cudnnBackendExecute(self.handle, plan.plan.0, vp.0) },
            "cudnnBackendExecute",
        )?;
        Ok(true)
    }

    /// Builds a plan, trying the index arithmetic in int32 and then in float,
    /// each with heuristics mode A and then the fallback list.
    fn build(&mut self, key: &SdpaKey) -> Result<Plan, String> {
        let mut errors = Vec::new();
        for index_f32 in [false, true] {
            if index_f32 && !key.causal {
                break;
            }
            for mode in [
                dnn::cudnnBackendHeurMode_t::CUDNN_HEUR_MODE_A,
                dnn::cudnnBackendHeurMode_t::CUDNN_HEUR_MODE_FALLBACK,
            ] {
                match self.build_with(key, index_f32, mode) {
                    Ok(p) => return Ok(p),
                    Err(e) => errors.push(format!(
                        "[index in {}, {mode:?}] {e}",
                        if index_f32 { "f32" } else { "i32" }
                    )),
                }
            }
        }
        Err(errors.join("; "))
    }

    fn build_with(
        &mut self,
        key: &SdpaKey,
        index_f32: bool,
        mode: dnn::cudnnBackendHeurMode_t,
    ) -> Result<Plan, String> {
        let io = if key.bf16 {
            Dt::CUDNN_DATA_BFLOAT16
        } else {
            Dt::CUDNN_DATA_HALF
        };
        let f32t = Dt::CUDNN_DATA_FLOAT;
        let (b, h, hk, s, t, d) = (key.b, key.h, key.hk, key.s, key.t, key.d);
        let mut g = Builder::default();
        let q = g.tensor(Some(UID_Q), io, [b, h, s, d], key.qs, false, false)?;
        // Kᵀ: [B, Hk, D, T] over K's memory (dims and strides 2 and 3 swapped).
        let ks = key.ks;
        let kt = g.tensor(
            Some(UID_K),
            io,
            [b, hk, d, t],
            [ks[0], ks[1], ks[3], ks[2]],
            false,
            false,
        )?;
        let v = g.tensor(Some(UID_V), io, [b, hk, t, d], key.vs, false, false)?;
        let o = g.tensor(Some(UID_O), io, [b, h, s, d], contiguous([b, h, s, d]), false, false)?;
        let scores = [b, h, s, t];
        let rows = [b, h, s, 1];

        let s0 = g.virt(f32t, scores)?;
        g.matmul(q, kt, s0)?;
        let scale = g.scalar(UID_SCALE, f32t)?;
        let s1 = g.virt(f32t, scores)?;
        g.pointwise(Pw::CUDNN_POINTWISE_MUL, f32t, None, s0, Some(scale), None, s1)?;
        let mut last = s1;
        if key.causal {
            let i32t = Dt::CUDNN_DATA_INT32;
            let prec = if index_f32 { f32t } else { i32t };
            let mut row = g.virt(i32t, scores)?;
            g.pointwise(Pw::CUDNN_POINTWISE_GEN_INDEX, prec, Some(2), last, None, None, row)?;
            if t != s {
                // Bottom-right alignment: query i sees keys up to i + T - S.
                let shift = g.scalar(UID_SHIFT, i32t)?;
                let row2 = g.virt(i32t, scores)?;
                g.pointwise(Pw::CUDNN_POINTWISE_ADD, prec, None, row, Some(shift), None, row2)?;
                row = row2;
            }
            let col = g.virt(i32t, scores)?;
            g.pointwise(Pw::CUDNN_POINTWISE_GEN_INDEX, prec, Some(3), last, None, None, col)?;
            let keep = g.virt(Dt::CUDNN_DATA_BOOLEAN, scores)?;
            g.pointwise(
                Pw::CUDNN_POINTWISE_CMP_GE,
                Dt::CUDNN_DATA_BOOLEAN,
                None,
                row,
                Some(col),
                None,
                keep,
            )?;
            let neg_inf = g.scalar(UID_NEG_INF, f32t)?;
            let masked = g.virt(f32t, scores)?;
            g.pointwise(
                Pw::CUDNN_POINTWISE_BINARY_SELECT,
                f32t,
                None,
                last,
                Some(neg_inf),
                Some(keep),
                masked,
            )?;
            last = masked;
        }
        use dnn::cudnnReduceTensorOp_t as R;
        let max = g.virt(f32t, rows)?;
        g.reduction(R::CUDNN_REDUCE_TENSOR_MAX, last, max)?;
        let centered = g.virt(f32t, scores)?;
        g.pointwise(Pw::CUDNN_POINTWISE_SUB, f32t, None, last, Some(max), None, centered)?;
        let e = g.virt(f32t, scores)?;
        g.pointwise(Pw::CUDNN_POINTWISE_EXP, f32t, None, centered, None, None, e)?;
        let sum = g.virt(f32t, rows)?;
        g.reduction(R::CUDNN_REDUCE_TENSOR_ADD, e, sum)?;
        // The softmax statistics (max + log Σ), virtual: the fused engine's
        // pattern includes them even where nothing reads them.
        let log = g.virt(f32t, rows)?;
        g.pointwise(Pw::CUDNN_POINTWISE_LOG, f32t, None, sum, None, None, log)?;
        let stats = g.virt(f32t, rows)?;
        g.pointwise(Pw::CUDNN_POINTWISE_ADD, f32t, None, max, Some(log), None, stats)?;
        let p = g.virt(io, scores)?;
        g.pointwise(Pw::CUDNN_POINTWISE_DIV, f32t, None, e, Some(sum), None, p)?;
        g.matmul(p, v, o)?;

        let graph = create(D::CUDNN_BACKEND_OPERATIONGRAPH_DESCRIPTOR)?;
        set(
            &graph,
            A::CUDNN_ATTR_OPERATIONGRAPH_HANDLE,
            T::CUDNN_TYPE_HANDLE,
            &[self.handle],
        )?;
        let ops: Vec<_> = g.ops.iter().map(|&i| g.raw(i)).collect();
        set(
            &graph,
            A::CUDNN_ATTR_OPERATIONGRAPH_OPS,
            T::CUDNN_TYPE_BACKEND_DESCRIPTOR,
            &ops,
        )?;
        finalize(&graph, "operation graph")?;

        let heur = create(D::CUDNN_BACKEND_ENGINEHEUR_DESCRIPTOR)?;
        set(
            &heur,
            A::CUDNN_ATTR_ENGINEHEUR_OPERATION_GRAPH,
            T::CUDNN_TYPE_BACKEND_DESCRIPTOR,
            &[graph.0],
        )?;
        set(&heur, A::CUDNN_ATTR_ENGINEHEUR_MODE, T::CUDNN_TYPE_HEUR_MODE, &[mode])?;
        finalize(&heur, "engine heuristics")?;
        let mut count = 0i64;
        // SAFETY: asks only for the number of results.
        check(
            unsafe {
                dnn::cudnnBackendGetAttribute(
                    heur.0,
                    A::CUDNN_ATTR_ENGINEHEUR_RESULTS,
                    T::CUDNN_TYPE_BACKEND_DESCRIPTOR,
                    0,
                    &mut count,
                    std::ptr::null_mut(),
                )
            },
            "count engine configs",
        )?;
        if count <= 0 {
            return Err("the heuristics offer no engine config".into());
        }
        let cfgs: Vec<Desc> = (0..count)
            .map(|_| create(D::CUDNN_BACKEND_ENGINECFG_DESCRIPTOR))
            .collect::<Result<_, _>>()?;
        let mut raw: Vec<dnn::cudnnBackendDescriptor_t> = cfgs.iter().map(|c| c.0).collect();
        let mut got = 0i64;
        // SAFETY: `raw` holds `count` created engine-config descriptors to fill.
        check(
            unsafe {
                dnn::cudnnBackendGetAttribute(
                    heur.0,
                    A::CUDNN_ATTR_ENGINEHEUR_RESULTS,
                    T::CUDNN_TYPE_BACKEND_DESCRIPTOR,
                    count,
                    &mut got,
                    raw.as_mut_ptr() as *mut c_void,
                )
            },
            "get engine configs",
        )?;
        let mut first_err = None;
        for cfg in cfgs.into_iter().take(got.max(0) as usize) {
            match self.plan_for(&cfg) {
                Ok((plan, workspace)) => {
                    let mut parts = g.descs;
                    parts.extend([graph, heur, cfg]);
                    return Ok(Plan {
                        plan,
                        workspace,
                        _parts: parts,
                    });
                }
                Err(e) => {
                    first_err.get_or_insert(e);
                }
            }
        }
        Err(format!(
            "none of the {got} engine configs (of {count} counted) finalizes a plan{}",
            first_err.map(|e| format!(": {e}")).unwrap_or_default()
        ))
    }

    fn plan_for(&self, cfg: &Desc) -> Result<(Desc, usize), String> {
        let plan = create(D::CUDNN_BACKEND_EXECUTION_PLAN_DESCRIPTOR)?;
        set(
            &plan,
            A::CUDNN_ATTR_EXECUTION_PLAN_HANDLE,
            T::CUDNN_TYPE_HANDLE,
            &[self.handle],
        )?;
        set(
            &plan,
            A::CUDNN_ATTR_EXECUTION_PLAN_ENGINE_CONFIG,
            T::CUDNN_TYPE_BACKEND_DESCRIPTOR,
            &[cfg.0],
        )?;
        finalize(&plan, "execution plan")?;
        let mut ws = 0i64;
        let mut n = 0i64;
        // SAFETY: one i64 out-value.
        check(
            unsafe {
                dnn::cudnnBackendGetAttribute(
                    plan.0,
                    A::CUDNN_ATTR_EXECUTION_PLAN_WORKSPACE_SIZE,
                    T::CUDNN_TYPE_INT64,
                    1,
                    &mut n,
                    &mut ws as *mut i64 as *mut c_void,
                )
            },
            "workspace size",
        )?;
        Ok((plan, ws.max(0) as usize))
    }
}
