//! The rest of the core op set on the GPU: tile, pad, range, one-hot, arg
//! max/min, cumulative sum, top-k, gather/scatter elements, 1-D/2-D
//! convolution and pooling (kernels in [`crate::kernels::OPS_SOURCE`]).

use cudarc::driver::{CudaFunction, DevicePtr, LaunchConfig, PushKernelArg};
use stitch_core::ops::conv::{ConvAttrs, PoolAttrs};
use stitch_core::ops::indexing::ScatterReduction;
use stitch_core::ops::layout::PadMode;
use stitch_core::{Backend, DType, Node, Result, Tensor};

use crate::kernels::{self, PadMeta, WinMeta, OPS_MAX_RANK};
use crate::{elem_ptr, err, normalize_axis, out_shape, CudaBackend};

/// The kernels' name suffix for the dtypes the typed kernels take.
pub(crate) fn typed_suffix(d: DType) -> Option<&'static str> {
    match d {
        DType::F32 => Some("f32"),
        DType::F64 => Some("f64"),
        DType::I32 => Some("i32"),
        DType::I64 => Some("i64"),
        _ => None,
    }
}

/// The index-dtype suffix of the indexing kernels.
pub(crate) fn index_suffix(d: DType) -> Option<&'static str> {
    match d {
        DType::I32 => Some("i32"),
        DType::I64 => Some("i64"),
        _ => None,
    }
}

/// `[pre, n, post]` of `shape` around `axis`.
fn split3(shape: &[usize], axis: usize) -> (usize, usize, usize) {
    (
        shape[..axis].iter().product(),
        shape[axis],
        shape[axis + 1..].iter().product(),
    )
}

/// The bit pattern of `v` in `dtype` (for fill values passed as 64-bit integers).
fn bits_of(v: f64, dtype: DType) -> Result<u64> {
    let t = Tensor::from_f64(dtype, &[v], &[1])?;
    let bytes = t.buffer().as_bytes();
    let mut b = [0u8; 8];
    let n = dtype.size_in_bytes().min(8);
    b[..n].copy_from_slice(&bytes[t.offset() * n..t.offset() * n + n]);
    Ok(u64::from_le_bytes(b))
}

impl CudaBackend {
    fn ops_function(&self, name: &str) -> Result<CudaFunction> {
        self.function(name, kernels::OPS_SOURCE, name)
    }

    fn grid(&self, n: usize) -> LaunchConfig {
        LaunchConfig {
            grid_dim: (self.grid_for(n, 256), 1, 1),
            block_dim: (256, 1, 1),
            shared_mem_bytes: 0,
        }
    }

    /// Clears the out-of-range flag, runs `launch(flag address)`, and says
    /// whether a kernel set it (one synchronising read).
    fn with_flag(&self, launch: impl FnOnce(u64) -> Result<()>) -> Result<bool> {
        let flag = self.flag.lock().map_err(|_| err("CUDA: poisoned"))?;
        let (pflag, _s) = flag.device_ptr(&self.stream);
        let zero = [0i32];
        // SAFETY: `pflag` addresses the 4-byte flag; `zero` outlives the copy,
        // which the synchronous read below orders.
        unsafe { cudarc::driver::result::memcpy_htod_async(pflag, &zero, self.stream.cu_stream()) }
            .map_err(|e| err(format!("CUDA: {e}")))?;
        launch(pflag)?;
        let mut host = [0i32];
        self.stream
            .memcpy_dtoh(&*flag, &mut host)
            .map_err(|e| err(format!("CUDA: {e}")))?;
        Ok(host[0] != 0)
    }

    /// Tile as a broadcast copy: `[.., d, ..]` viewed as `[.., 1, d, ..]`,
    /// broadcast to `[.., r, d, ..]`, copied and reshaped.
    pub(crate) fn tile(&self, node: &Node, x: &Tensor, repeats: &[usize]) -> Result<Tensor> {
        let out = out_shape(node, 0)?;
        if repeats.len() != x.rank() {
            return Err(err(format!(
                "tile `{}`: {} repeats for rank {}",
                node.name,
                repeats.len(),
                x.rank()
            )));
        }
        let x = self.contiguous(x)?;
        let (mut viewed, mut target) = (vec![], vec![]);
        for (&d, &r) in x.shape().iter().zip(repeats) {
            if r != 1 {
                viewed.push(1);
                target.push(r);
            }
            viewed.push(d);
            target.push(d);
        }
        if target.len() > crate::codegen::MAX_RANK {
            return Err(err(format!(
                "tile `{}`: {} axes after expansion exceed the CUDA kernels' {}",
                node.name,
                target.len(),
                crate::codegen::MAX_RANK
            )));
        }
        let b = x.reshape(&viewed)?.broadcast_to(&target)?;
        self.contiguous(&b)?.reshape(&out)
    }

    /// Pad (constant, reflect, edge); negative pads crop.
    pub(crate) fn pad(&self, node: &Node, x: &Tensor, pads: &[i64], mode: PadMode, value: f64) -> Result<Tensor> {
        let shape = out_shape(node, 0)?;
        let rank = x.rank();
        if pads.len() != 2 * rank || shape.len() != rank || rank > OPS_MAX_RANK {
            return Err(err(format!(
                "pad `{}`: pads {pads:?} do not fit input {:?}",
                node.name,
                x.shape()
            )));
        }
        let mut m = PadMeta {
            rank: rank as i32,
            mode: match mode {
                PadMode::Constant => 0,
                PadMode::Reflect => 1,
                PadMode::Edge => 2,
            },
            n: shape.iter().product::<usize>() as i64,
            ..Default::default()
        };
        for ax in 0..rank {
            let n = x.shape()[ax] as i64;
            let (b, e) = (pads[ax], pads[rank + ax]);
            if n + b + e != shape[ax] as i64 {
                return Err(err(format!(
                    "pad `{}`: pads {pads:?} on {:?} do not give {shape:?}",
                    node.name,
                    x.shape()
                )));
            }
            let reach = match mode {
                PadMode::Constant => true,
                PadMode::Edge => n > 0 || (b <= 0 && e <= 0),
                PadMode::Reflect => (b < n && e < n) || (b <= 0 && e <= 0),
            };
            if !reach {
                return Err(err(format!(
                    "pad `{}`: {mode:?} pad {:?} reaches outside axis {ax} of size {n} (input {:?})",
                    node.name,
                    (b, e),
                    x.shape()
                )));
            }
            m.odims[ax] = shape[ax] as i64;
            m.begin[ax] = b;
            m.idims[ax] = n;
            m.istrides[ax] = x.strides()[ax] as i64;
        }
        let out = self.alloc(x.dtype(), &shape)?;
        if m.n == 0 {
            return Ok(out);
        }
        let es = x.dtype().size_in_bytes();
        let f = self.ops_function(&format!("st_pad_{es}"))?;
        let fill = bits_of(value, x.dtype())?;
        let (px, py) = (elem_ptr(x, &self.stream)?, elem_ptr(&out, &self.stream)?);
        let mut b = self.stream.launch_builder(&f);
        b.arg(&m).arg(&px).arg(&py).arg(&fill);
        // SAFETY: `m` describes the live input view and the fresh output.
        self.check_launch("pad", unsafe { b.launch(self.grid(m.n as usize)) }.map(|_| ()))?;
        Ok(out)
    }

    /// Range: computed on the host (it has no inputs) and uploaded.
    pub(crate) fn range(&self, node: &Node, start: f64, delta: f64, dtype: DType) -> Result<Tensor> {
        let shape = out_shape(node, 0)?;
        let n = shape.first().copied().unwrap_or(0);
        let vals: Vec<f64> = (0..n).map(|i| start + i as f64 * delta).collect();
        self.upload(&Tensor::from_f64(dtype, &vals, &[n])?)
    }

    #[allow(clippy::too_many_arguments)]
    pub(crate) fn one_hot(
        &self,
        node: &Node,
        idx: &Tensor,
        depth: usize,
        axis: i64,
        dtype: DType,
        on: f64,
        off: f64,
    ) -> Result<Tensor> {
        let shape = out_shape(node, 0)?;
        let ax = normalize_axis(axis, shape.len())
            .ok_or_else(|| err(format!("one_hot `{}`: axis {axis} out of range", node.name)))?;
        let isuf = index_suffix(idx.dtype())
            .ok_or_else(|| err(format!("one_hot `{}`: indices of {}", node.name, idx.dtype())))?;
        let idx = self.contiguous(idx)?;
        let outer: usize = shape[..ax].iter().product();
        let inner: usize = shape[ax + 1..].iter().product();
        let out = self.alloc(dtype, &shape)?;
        let total = outer * depth * inner;
        if total == 0 {
            return Ok(out);
        }
        let f = self.ops_function(&format!("st_one_hot_{isuf}_{}", dtype.size_in_bytes()))?;
        let (on_b, off_b) = (bits_of(on, dtype)?, bits_of(off, dtype)?);
        let (pi, py) = (elem_ptr(&idx, &self.stream)?, elem_ptr(&out, &self.stream)?);
        let (o, d, i) = (outer as i64, depth as i64, inner as i64);
        let mut b = self.stream.launch_builder(&f);
        b.arg(&pi).arg(&py).arg(&o).arg(&d).arg(&i).arg(&on_b).arg(&off_b);
        // SAFETY: contiguous indices [outer, inner] and output [outer, depth, inner].
        self.check_launch("one_hot", unsafe { b.launch(self.grid(total)) }.map(|_| ()))?;
        Ok(out)
    }

    pub(crate) fn arg_reduce(&self, node: &Node, x: &Tensor, axis: i64, is_max: bool, last: bool) -> Result<Tensor> {
        let ax = normalize_axis(axis, x.rank())
            .ok_or_else(|| err(format!("arg reduce `{}`: axis {axis} out of range", node.name)))?;
        let suf =
            typed_suffix(x.dtype()).ok_or_else(|| err(format!("arg reduce `{}`: {} input", node.name, x.dtype())))?;
        let x = self.contiguous(x)?;
        let (pre, n, post) = split3(x.shape(), ax);
        let out = self.alloc(DType::I64, &out_shape(node, 0)?)?;
        if pre * post == 0 {
            return Ok(out);
        }
        if n == 0 {
            return Err(err(format!("arg reduce `{}`: empty axis {ax}", node.name)));
        }
        let f = self.ops_function(&format!("st_arg_{suf}"))?;
        let (px, py) = (elem_ptr(&x, &self.stream)?, elem_ptr(&out, &self.stream)?);
        let (p, nn, q, mx, l) = (pre as i64, n as i64, post as i64, i32::from(is_max), i32::from(last));
        let mut b = self.stream.launch_builder(&f);
        b.arg(&px).arg(&py).arg(&p).arg(&nn).arg(&q).arg(&mx).arg(&l);
        // SAFETY: contiguous [pre, n, post] input, [pre, post] i64 output.
        self.check_launch("arg reduce", unsafe { b.launch(self.grid(pre * post)) }.map(|_| ()))?;
        Ok(out)
    }

    pub(crate) fn cumsum(&self, node: &Node, x: &Tensor, axis: i64, exclusive: bool, reverse: bool) -> Result<Tensor> {
        let ax = normalize_axis(axis, x.rank())
            .ok_or_else(|| err(format!("cumsum `{}`: axis {axis} out of range", node.name)))?;
        let suf = typed_suffix(x.dtype()).ok_or_else(|| err(format!("cumsum `{}`: {} input", node.name, x.dtype())))?;
        let x = self.contiguous(x)?;
        let (pre, n, post) = split3(x.shape(), ax);
        let out = self.alloc(x.dtype(), x.shape())?;
        if pre * n * post == 0 {
            return Ok(out);
        }
        let f = self.ops_function(&format!("st_cumsum_{suf}"))?;
        let (px, py) = (elem_ptr(&x, &self.stream)?, elem_ptr(&out, &self.stream)?);
        let (p, nn, q, ex, rev) = (
            pre as i64,
            n as i64,
            post as i64,
            i32::from(exclusive),
            i32::from(reverse),
        );
        let mut b = self.stream.launch_builder(&f);
        b.arg(&px).arg(&py).arg(&p).arg(&nn).arg(&q).arg(&ex).arg(&rev);
        // SAFETY: contiguous input and output of the same shape.
        self.check_launch("cumsum", unsafe { b.launch(self.grid(pre * post)) }.map(|_| ()))?;
        Ok(out)
    }

    pub(crate) fn topk(&self, node: &Node, x: &Tensor, k: usize, axis: i64, largest: bool) -> Result<[Tensor; 2]> {
        let ax = normalize_axis(axis, x.rank())
            .ok_or_else(|| err(format!("topk `{}`: axis {axis} out of range", node.name)))?;
        let suf = typed_suffix(x.dtype()).ok_or_else(|| err(format!("topk `{}`: {} input", node.name, x.dtype())))?;
        let x = self.contiguous(x)?;
        let (pre, n, post) = split3(x.shape(), ax);
        if k > n {
            return Err(err(format!(
                "topk `{}`: k = {k} exceeds the size {n} of axis {ax} of {:?}",
                node.name,
                x.shape()
            )));
        }
        let mut od = x.shape().to_vec();
        od[ax] = k;
        let vals = self.alloc(x.dtype(), &od)?;
        let idx = self.alloc(DType::I64, &od)?;
        if pre * post * k == 0 {
            return Ok([vals, idx]);
        }
        let f = self.ops_function(&format!("st_topk_{suf}"))?;
        let (px, pv, pi) = (
            elem_ptr(&x, &self.stream)?,
            elem_ptr(&vals, &self.stream)?,
            elem_ptr(&idx, &self.stream)?,
        );
        let (p, nn, q, kk, lg) = (pre as i64, n as i64, post as i64, k as i64, i32::from(largest));
        let mut b = self.stream.launch_builder(&f);
        b.arg(&px).arg(&pv).arg(&pi).arg(&p).arg(&nn).arg(&q).arg(&kk).arg(&lg);
        // SAFETY: contiguous [pre, n, post] input; [pre, k, post] outputs.
        self.check_launch("topk", unsafe { b.launch(self.grid(pre * post)) }.map(|_| ()))?;
        Ok([vals, idx])
    }

    pub(crate) fn gather_elements(&self, node: &Node, data: &Tensor, idx: &Tensor, axis: i64) -> Result<Tensor> {
        let ax = normalize_axis(axis, data.rank())
            .ok_or_else(|| err(format!("gather_elements `{}`: axis {axis} out of range", node.name)))?;
        check_index_shape(node, data.shape(), idx.shape(), ax)?;
        let isuf = index_suffix(idx.dtype())
            .ok_or_else(|| err(format!("gather_elements `{}`: indices of {}", node.name, idx.dtype())))?;
        let (data, idx) = (self.contiguous(data)?, self.contiguous(idx)?);
        let (pre, ni, post) = split3(idx.shape(), ax);
        let (_, n, dpost) = split3(data.shape(), ax);
        let out = self.alloc(data.dtype(), idx.shape())?;
        if out.numel() == 0 {
            return Ok(out);
        }
        let f = self.ops_function(&format!("st_gather_el_{}_{isuf}", data.dtype().size_in_bytes()))?;
        let (pd, pi, py) = (
            elem_ptr(&data, &self.stream)?,
            elem_ptr(&idx, &self.stream)?,
            elem_ptr(&out, &self.stream)?,
        );
        let (p, nni, q, nn, dq) = (pre as i64, ni as i64, post as i64, n as i64, dpost as i64);
        let cfg = self.grid(out.numel());
        let bad = self.with_flag(|pflag| {
            let mut b = self.stream.launch_builder(&f);
            b.arg(&pd)
                .arg(&pi)
                .arg(&py)
                .arg(&p)
                .arg(&nni)
                .arg(&q)
                .arg(&nn)
                .arg(&dq)
                .arg(&pflag);
            // SAFETY: contiguous data and indices of the checked shapes; fresh output.
            self.check_launch("gather_elements", unsafe { b.launch(cfg) }.map(|_| ()))
        })?;
        if bad {
            return Err(err(format!(
                "gather_elements `{}`: an index is out of range for axis {ax} of size {n}",
                node.name
            )));
        }
        Ok(out)
    }

    pub(crate) fn scatter_elements(
        &self,
        node: &Node,
        inputs: &[Tensor],
        axis: i64,
        reduction: ScatterReduction,
    ) -> Result<Tensor> {
        let (data, idx, upd) = (&inputs[0], &inputs[1], &inputs[2]);
        let ax = normalize_axis(axis, data.rank())
            .ok_or_else(|| err(format!("scatter_elements `{}`: axis {axis} out of range", node.name)))?;
        check_index_shape(node, data.shape(), idx.shape(), ax)?;
        if idx.shape() != upd.shape() || upd.dtype() != data.dtype() {
            return Err(err(format!(
                "scatter_elements `{}`: updates {} {:?} must match indices {:?} and data {}",
                node.name,
                upd.dtype(),
                upd.shape(),
                idx.shape(),
                data.dtype()
            )));
        }
        let suf = typed_suffix(data.dtype())
            .ok_or_else(|| err(format!("scatter_elements `{}`: {} data", node.name, data.dtype())))?;
        let isuf = index_suffix(idx.dtype())
            .ok_or_else(|| err(format!("scatter_elements `{}`: indices of {}", node.name, idx.dtype())))?;
        let out = self.alloc(data.dtype(), data.shape())?;
        self.copy_into(&out, data)?;
        let (idx, upd) = (self.contiguous(idx)?, self.contiguous(upd)?);
        let (pre, nu, upost) = split3(idx.shape(), ax);
        let (_, n, post) = split3(data.shape(), ax);
        if idx.numel() == 0 {
            return Ok(out);
        }
        let f = self.ops_function(&format!("st_scatter_{suf}_{isuf}"))?;
        let (py, pi, pu) = (
            elem_ptr(&out, &self.stream)?,
            elem_ptr(&idx, &self.stream)?,
            elem_ptr(&upd, &self.stream)?,
        );
        let red: i32 = match reduction {
            ScatterReduction::None => 0,
            ScatterReduction::Add => 1,
            ScatterReduction::Mul => 2,
            ScatterReduction::Max => 3,
            ScatterReduction::Min => 4,
        };
        let (p, nnu, q, uq, nn) = (pre as i64, nu as i64, post as i64, upost as i64, n as i64);
        let cfg = self.grid(pre * upost);
        let bad = self.with_flag(|pflag| {
            let mut b = self.stream.launch_builder(&f);
            b.arg(&py)
                .arg(&pi)
                .arg(&pu)
                .arg(&p)
                .arg(&nnu)
                .arg(&q)
                .arg(&uq)
                .arg(&nn)
                .arg(&red)
                .arg(&pflag);
            // SAFETY: contiguous output (a copy of data), indices and updates of checked shapes.
            self.check_launch("scatter_elements", unsafe { b.launch(cfg) }.map(|_| ()))
        })?;
        if bad {
            return Err(err(format!(
                "scatter_elements `{}`: an index is out of range for axis {ax} of size {n}",
                node.name
            )));
        }
        Ok(out)
    }

    /// The window geometry of a 1-D or 2-D conv/pool over NC(H)W `x`.
    #[allow(clippy::too_many_arguments)]
    fn window(
        &self,
        node: &Node,
        x: &Tensor,
        kernel: &[usize],
        strides: &[usize],
        pads: &[usize],
        dilations: &[usize],
        out: &[usize],
    ) -> Result<WinMeta> {
        let sp = kernel.len();
        if !(1..=2).contains(&sp)
            || x.rank() != sp + 2
            || out.len() != sp + 2
            || strides.len() != sp
            || dilations.len() != sp
            || pads.len() != 2 * sp
        {
            return Err(err(format!(
                "`{}`: a 1-D or 2-D window over {:?} (kernel {kernel:?}, strides {strides:?}, pads {pads:?}, dilations {dilations:?})",
                node.name,
                x.shape()
            )));
        }
        let xs = x.shape();
        // 1-D runs as height 1.
        let at = |v: &[usize], i: usize, one: usize| {
            if sp == 2 {
                v[i]
            } else if i == 0 {
                one
            } else {
                v[0]
            }
        };
        Ok(WinMeta {
            n: xs[0] as i64,
            c: xs[1] as i64,
            h: at(&xs[2..], 0, 1) as i64,
            w: at(&xs[2..], 1, 1) as i64,
            m: out[1] as i64,
            oh: at(&out[2..], 0, 1) as i64,
            ow: at(&out[2..], 1, 1) as i64,
            kh: at(kernel, 0, 1) as i64,
            kw: at(kernel, 1, 1) as i64,
            sh: at(strides, 0, 1) as i64,
            sw: at(strides, 1, 1) as i64,
            ph: if sp == 2 { pads[0] } else { 0 } as i64,
            pw: if sp == 2 { pads[1] } else { pads[0] } as i64,
            ph_end: if sp == 2 { pads[2] } else { 0 } as i64,
            pw_end: if sp == 2 { pads[3] } else { pads[1] } as i64,
            dh: at(dilations, 0, 1) as i64,
            dw: at(dilations, 1, 1) as i64,
            groups: 1,
            has_bias: 0,
            count_pad: 0,
        })
    }

    pub(crate) fn conv(&self, node: &Node, inputs: &[Tensor], a: &ConvAttrs) -> Result<Tensor> {
        let (x, w) = (&inputs[0], &inputs[1]);
        let out = out_shape(node, 0)?;
        if x.dtype() != DType::F32 || w.dtype() != DType::F32 || w.rank() != x.rank() {
            return Err(err(format!(
                "CUDA conv `{}` takes f32 input and weight of one rank, got {} {:?} and {} {:?}",
                node.name,
                x.dtype(),
                x.shape(),
                w.dtype(),
                w.shape()
            )));
        }
        let mut g = self.window(node, x, &w.shape()[2..], &a.strides, &a.pads, &a.dilations, &out)?;
        g.groups = a.groups.max(1) as i64;
        if g.c % g.groups != 0 || g.m % g.groups != 0 || w.shape()[1] as i64 != g.c / g.groups {
            return Err(err(format!(
                "CUDA conv `{}`: {} groups do not divide input {:?} / weight {:?}",
                node.name,
                a.groups,
                x.shape(),
                w.shape()
            )));
        }
        let (x, w) = (self.contiguous(x)?, self.contiguous(w)?);
        let bias = match inputs.get(2) {
            Some(b) => {
                if b.dtype() != DType::F32 || b.numel() != g.m as usize {
                    return Err(err(format!("CUDA conv `{}`: bias {:?}", node.name, b.shape())));
                }
                g.has_bias = 1;
                Some(self.contiguous(b)?)
            }
            None => None,
        };
        let y = self.alloc(DType::F32, &out)?;
        if y.numel() == 0 {
            return Ok(y);
        }
        let f = self.ops_function("st_conv_f32")?;
        let (px, pw, py) = (
            elem_ptr(&x, &self.stream)?,
            elem_ptr(&w, &self.stream)?,
            elem_ptr(&y, &self.stream)?,
        );
        let pb = match &bias {
            Some(b) => elem_ptr(b, &self.stream)?,
            None => 0u64,
        };
        let mut b = self.stream.launch_builder(&f);
        b.arg(&g).arg(&px).arg(&pw).arg(&pb).arg(&py);
        // SAFETY: contiguous NC(H)W input, weight, optional bias and fresh output described by `g`.
        self.check_launch("conv", unsafe { b.launch(self.grid(y.numel())) }.map(|_| ()))?;
        Ok(y)
    }

    pub(crate) fn pool(&self, node: &Node, x: &Tensor, a: &PoolAttrs, is_max: bool) -> Result<Tensor> {
        let out = out_shape(node, 0)?;
        if x.dtype() != DType::F32 {
            return Err(err(format!(
                "CUDA pooling `{}` takes f32, got {}",
                node.name,
                x.dtype()
            )));
        }
        let mut g = self.window(node, x, &a.kernel, &a.strides, &a.pads, &a.dilations, &out)?;
        g.count_pad = i32::from(a.count_include_pad);
        let x = self.contiguous(x)?;
        let y = self.alloc(DType::F32, &out)?;
        if y.numel() == 0 {
            return Ok(y);
        }
        let f = self.ops_function("st_pool_f32")?;
        let (px, py, mx) = (
            elem_ptr(&x, &self.stream)?,
            elem_ptr(&y, &self.stream)?,
            i32::from(is_max),
        );
        let mut b = self.stream.launch_builder(&f);
        b.arg(&g).arg(&px).arg(&py).arg(&mx);
        // SAFETY: contiguous NC(H)W input and fresh output described by `g`.
        self.check_launch("pool", unsafe { b.launch(self.grid(y.numel())) }.map(|_| ()))?;
        Ok(y)
    }
}

/// GatherElements/ScatterElements indices may be smaller than data on the
/// non-axis dims; the kernels flatten `[pre, n, post]`, which is exact when the
/// trailing (post) dims agree and the leading ones agree after the first.
pub(crate) fn index_shape_ok(data: &[usize], idx: &[usize], ax: usize) -> bool {
    data.len() == idx.len()
        && data[ax + 1..] == idx[ax + 1..]
        && (ax == 0 || data[1..ax] == idx[1..ax])
        && (0..data.len()).all(|d| d == ax || idx[d] <= data[d])
}

fn check_index_shape(node: &Node, data: &[usize], idx: &[usize], ax: usize) -> Result<()> {
    if index_shape_ok(data, idx, ax) {
        Ok(())
    } else {
        Err(err(format!(
            "`{}`: indices {idx:?} against data {data:?} on axis {ax} are not supported on CUDA",
            node.name
        )))
    }
}
