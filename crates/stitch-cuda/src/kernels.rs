//! Hand-written kernels (compiled once per process with NVRTC, cached on disk):
//! row-wise softmax and normalisations, gather, attention.

/// Threads per block of the row kernels.
pub const ROW_THREADS: u32 = 256;
/// Threads per block of the attention kernel.
pub const ATTN_THREADS: u32 = 128;
/// Longest key sequence the attention kernel holds in shared memory.
pub const ATTN_MAX_KEYS: usize = 12 * 1024;

/// Shapes and strides of an attention launch (`repr(C)`, mirrored in [`SOURCE`]).
#[repr(C)]
#[derive(Debug, Clone, Copy, Default)]
pub struct AttnMeta {
    /// Batch, query heads, key/value heads, queries, keys, head dim, value dim.
    pub b: i64,
    pub h: i64,
    pub hk: i64,
    pub s: i64,
    pub t: i64,
    pub d: i64,
    pub dv: i64,
    /// Strides (elements) of q, k, v, mask (broadcast axes 0) and out over their 4 axes.
    pub qs: [i64; 4],
    pub ks: [i64; 4],
    pub vs: [i64; 4],
    pub ms: [i64; 4],
    /// Multiplier of q·k.
    pub scale: f32,
    /// Bottom-right causal mask.
    pub causal: i32,
    /// 0: no mask, 1: bool (keep where true), 2: additive float.
    pub mask_kind: i32,
    pub pad: i32,
}

// SAFETY: `repr(C)` plain numbers matching the CUDA struct `AttnMeta` below.
unsafe impl cudarc::driver::DeviceRepr for AttnMeta {}

/// The kernels' code for a block-quantized format (`st_dq` in [`SOURCE`]).
pub fn quant_code(f: stitch_core::QuantFormat) -> i32 {
    use stitch_core::QuantFormat as Q;
    match f {
        Q::Q8_0 => 0,
        Q::Q4_0 => 1,
        Q::Q4_1 => 2,
        Q::Q5_0 => 3,
        Q::Q5_1 => 4,
        Q::Q4_K => 5,
        Q::Q5_K => 6,
        Q::Q6_K => 7,
    }
}

/// The `(format code, block elements, block bytes)` arguments of the quantized kernels.
pub fn quant_args(f: stitch_core::QuantFormat) -> (i32, i32, i32) {
    (quant_code(f), f.block_elems() as i32, f.block_bytes() as i32)
}

/// Rows of `x` up to which quantized matmul runs as a GEMV kernel (more rows
/// expand the weight and use cuBLAS).
pub const QUANT_GEMV_MAX_ROWS: usize = 8;

/// The source of every hand-written kernel.
pub const SOURCE: &str = r#"
#ifndef INFINITY
#define INFINITY __int_as_float(0x7f800000)
#endif
__device__ __forceinline__ float st_f16(const unsigned char* p) {
  const unsigned short bits = (unsigned short)p[0] | ((unsigned short)p[1] << 8);
  float f;
  asm("cvt.f32.f16 %0, %1;" : "=f"(f) : "h"(bits));
  return f;
}
__device__ __forceinline__ void st_scale_min_k4(int j, const unsigned char* q, int* sc, int* m) {
  if (j < 4) { *sc = q[j] & 63; *m = q[j + 4] & 63; }
  else { *sc = (q[j + 4] & 0xF) | ((q[j - 4] >> 6) << 4); *m = (q[j + 4] >> 4) | ((q[j] >> 6) << 4); }
}
// Element j of one block of format `fmt` (codes as in quant_code()).
__device__ float st_dq(int fmt, const unsigned char* b, int j) {
  switch (fmt) {
    case 0: return st_f16(b) * (float)(signed char)b[2 + j];
    case 1: { const int q = j < 16 ? (b[2 + j] & 15) : (b[2 + j - 16] >> 4); return st_f16(b) * (float)(q - 8); }
    case 2: { const int q = j < 16 ? (b[4 + j] & 15) : (b[4 + j - 16] >> 4); return st_f16(b) * (float)q + st_f16(b + 2); }
    case 3: case 4: {
      const int hoff = fmt == 3 ? 2 : 4;
      const unsigned int qh = (unsigned int)b[hoff] | ((unsigned int)b[hoff + 1] << 8) | ((unsigned int)b[hoff + 2] << 16) | ((unsigned int)b[hoff + 3] << 24);
      const unsigned char* qs = b + hoff + 4;
      const int nib = j < 16 ? (qs[j] & 15) : (qs[j - 16] >> 4);
      const int q = nib | (((qh >> j) & 1) << 4);
      return fmt == 3 ? st_f16(b) * (float)(q - 16) : st_f16(b) * (float)q + st_f16(b + 2);
    }
    case 5: case 6: {
      const float d = st_f16(b), dmin = st_f16(b + 2);
      const unsigned char* scales = b + 4;
      const unsigned char* ql = fmt == 6 ? b + 48 : b + 16;
      const int chunk = j / 64, within = j % 64, l = within % 32, hi = within >= 32;
      const int sub = 2 * chunk + hi;
      int sc, m;
      st_scale_min_k4(sub, scales, &sc, &m);
      int q = hi ? (ql[chunk * 32 + l] >> 4) : (ql[chunk * 32 + l] & 15);
      if (fmt == 6) q += ((b[16 + l] >> sub) & 1) << 4;
      return d * (float)sc * (float)q - dmin * (float)m;
    }
    default: {
      const int half = j / 128, w = j % 128, quarter = w / 32, l = w % 32, is = l / 16;
      const unsigned char* ql = b + half * 64;
      const unsigned char* qh = b + 128 + half * 32;
      const signed char* sc = (const signed char*)(b + 192 + half * 8);
      int q;
      switch (quarter) {
        case 0: q = (ql[l] & 15) | ((qh[l] & 3) << 4); break;
        case 1: q = (ql[l + 32] & 15) | (((qh[l] >> 2) & 3) << 4); break;
        case 2: q = (ql[l] >> 4) | (((qh[l] >> 4) & 3) << 4); break;
        default: q = (ql[l + 32] >> 4) | (((qh[l] >> 6) & 3) << 4); break;
      }
      return st_f16(b + 208) * (float)sc[is + 2 * quarter] * (float)(q - 32);
    }
  }
}

// out[r, c] = dequantized element c of packed row r.
extern "C" __global__ void st_dequantize(const unsigned char* __restrict__ w, float* __restrict__ out, long long rows, long long k,
                                         long long row_bytes, int fmt, int be, int bb) {
  const long long total = rows * k;
  for (long long e = (long long)blockIdx.x * blockDim.x + threadIdx.x; e < total; e += (long long)gridDim.x * blockDim.x) {
    const long long r = e / k, c = e % k;
    out[e] = st_dq(fmt, w + r * row_bytes + (c / be) * bb, (int)(c % be));
  }
}

// y[m, n] = sum_k x[m, k] * w[n, k] for packed rows of w; one warp per (n, m),
// lanes over blocks. x is contiguous [rows, k].
extern "C" __global__ void st_quant_gemv(const float* __restrict__ x, const unsigned char* __restrict__ w, float* __restrict__ y,
                                         long long rows, long long n, long long k, long long row_bytes, int fmt, int be, int bb) {
  const long long warp = ((long long)blockIdx.x * blockDim.x + threadIdx.x) >> 5;
  const int lane = threadIdx.x & 31;
  const long long m = blockIdx.y;
  if (warp >= n || m >= rows) return;
  const unsigned char* wr = w + warp * row_bytes;
  const float* xr = x + m * k;
  const long long nb = k / be;
  float acc = 0.f;
  for (long long blk = lane; blk < nb; blk += 32) {
    const unsigned char* b = wr + blk * bb;
    const float* xb = xr + blk * be;
    for (int j = 0; j < be; ++j) acc += st_dq(fmt, b, j) * xb[j];
  }
  for (int o = 16; o > 0; o >>= 1) acc += __shfl_xor_sync(0xffffffffu, acc, o);
  if (lane == 0) y[m * n + warp] = acc;
}

struct AttnMeta {
  long long b, h, hk, s, t, d, dv;
  long long qs[4], ks[4], vs[4], ms[4];
  float scale;
  int causal;
  int mask_kind;
  int pad;
};

template <bool MAX>
__device__ float block_reduce(float v, float* scratch) {
  for (int o = 16; o > 0; o >>= 1) {
    const float x = __shfl_xor_sync(0xffffffffu, v, o);
    v = MAX ? fmaxf(v, x) : v + x;
  }
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31, nw = (blockDim.x + 31) >> 5;
  __syncthreads();
  if (lane == 0) scratch[warp] = v;
  __syncthreads();
  v = lane < nw ? scratch[lane] : (MAX ? -INFINITY : 0.f);
  for (int o = 16; o > 0; o >>= 1) {
    const float x = __shfl_xor_sync(0xffffffffu, v, o);
    v = MAX ? fmaxf(v, x) : v + x;
  }
  return v;
}

// Softmax (or log-softmax) of each contiguous row.
extern "C" __global__ void st_softmax(const float* __restrict__ x, float* __restrict__ y, long long rows, int cols, int log_out) {
  __shared__ float scratch[32];
  const long long row = blockIdx.x;
  if (row >= rows) return;
  const float* xr = x + row * cols;
  float* yr = y + row * cols;
  float m = -INFINITY;
  for (int j = threadIdx.x; j < cols; j += blockDim.x) m = fmaxf(m, xr[j]);
  m = block_reduce<true>(m, scratch);
  float s = 0.f;
  for (int j = threadIdx.x; j < cols; j += blockDim.x) s += expf(xr[j] - m);
  s = block_reduce<false>(s, scratch);
  if (log_out) {
    const float ls = logf(s);
    for (int j = threadIdx.x; j < cols; j += blockDim.x) yr[j] = xr[j] - m - ls;
  } else {
    const float inv = 1.f / s;
    for (int j = threadIdx.x; j < cols; j += blockDim.x) yr[j] = expf(xr[j] - m) * inv;
  }
}

// RMS norm of each contiguous row times `w` (one value per column).
extern "C" __global__ void st_rmsnorm(const float* __restrict__ x, const float* __restrict__ w, float* __restrict__ y, long long rows, int cols, float eps) {
  __shared__ float scratch[32];
  const long long row = blockIdx.x;
  if (row >= rows) return;
  const float* xr = x + row * cols;
  float* yr = y + row * cols;
  float ss = 0.f;
  for (int j = threadIdx.x; j < cols; j += blockDim.x) ss += xr[j] * xr[j];
  ss = block_reduce<false>(ss, scratch);
  const float r = rsqrtf(ss / cols + eps);
  for (int j = threadIdx.x; j < cols; j += blockDim.x) yr[j] = xr[j] * r * w[j];
}

// Layer norm of each contiguous row: (x - mean) / sqrt(var + eps) * w (+ b).
extern "C" __global__ void st_layernorm(const float* __restrict__ x, const float* __restrict__ w, const float* __restrict__ bias, float* __restrict__ y, long long rows, int cols, float eps, int has_bias) {
  __shared__ float scratch[32];
  const long long row = blockIdx.x;
  if (row >= rows) return;
  const float* xr = x + row * cols;
  float* yr = y + row * cols;
  float s = 0.f;
  for (int j = threadIdx.x; j < cols; j += blockDim.x) s += xr[j];
  const float mean = block_reduce<false>(s, scratch) / cols;
  float v = 0.f;
  for (int j = threadIdx.x; j < cols; j += blockDim.x) { const float d = xr[j] - mean; v += d * d; }
  const float r = rsqrtf(block_reduce<false>(v, scratch) / cols + eps);
  for (int j = threadIdx.x; j < cols; j += blockDim.x) {
    const float o = (xr[j] - mean) * r * w[j];
    yr[j] = has_bias ? o + bias[j] : o;
  }
}

// out[o, i, :] = data[o, idx[i], :] over bytes; data is [outer, axis_len, inner_bytes].
template <typename I>
__device__ void gather_impl(const unsigned char* __restrict__ data, const I* __restrict__ idx, unsigned char* __restrict__ out,
                            long long outer, long long axis_len, long long n_idx, long long inner_bytes, int* __restrict__ bad) {
  const long long total = outer * n_idx * inner_bytes;
  for (long long e = (long long)blockIdx.x * blockDim.x + threadIdx.x; e < total; e += (long long)gridDim.x * blockDim.x) {
    const long long byte = e % inner_bytes;
    const long long i = (e / inner_bytes) % n_idx;
    const long long o = e / (inner_bytes * n_idx);
    long long j = (long long)idx[i];
    if (j < 0) j += axis_len;
    if (j < 0 || j >= axis_len) { *bad = 1; out[e] = 0; continue; }
    out[e] = data[(o * axis_len + j) * inner_bytes + byte];
  }
}
extern "C" __global__ void st_gather_i64(const unsigned char* data, const long long* idx, unsigned char* out, long long outer, long long axis_len, long long n_idx, long long inner_bytes, int* bad) {
  gather_impl<long long>(data, idx, out, outer, axis_len, n_idx, inner_bytes, bad);
}
extern "C" __global__ void st_gather_i32(const unsigned char* data, const int* idx, unsigned char* out, long long outer, long long axis_len, long long n_idx, long long inner_bytes, int* bad) {
  gather_impl<int>(data, idx, out, outer, axis_len, n_idx, inner_bytes, bad);
}

// Scaled dot-product attention, one block per (batch, head, query); the
// scores of one query row live in shared memory. Grouped-query heads share
// key/value head h / (H / Hk). Output is contiguous [B, H, S, Dv].
extern "C" __global__ void st_sdpa(const AttnMeta m, const float* __restrict__ q, const float* __restrict__ k, const float* __restrict__ v,
                                   const void* __restrict__ mask, float* __restrict__ out) {
  extern __shared__ float sc[];
  __shared__ float scratch[32];
  const long long row = blockIdx.x;
  const long long i = row % m.s;
  const long long h = (row / m.s) % m.h;
  const long long b = row / (m.s * m.h);
  const long long hk = h / (m.h / m.hk);
  const float* qr = q + b * m.qs[0] + h * m.qs[1] + i * m.qs[2];
  const float* kb = k + b * m.ks[0] + hk * m.ks[1];
  const float* vb = v + b * m.vs[0] + hk * m.vs[1];
  const long long limit = m.causal ? i + (m.t - m.s) : m.t - 1;
  float mx = -INFINITY;
  for (long long j = threadIdx.x; j < m.t; j += blockDim.x) {
    float s;
    if (j > limit) {
      s = -INFINITY;
    } else {
      const float* kr = kb + j * m.ks[2];
      float acc = 0.f;
      for (long long d = 0; d < m.d; ++d) acc += qr[d * m.qs[3]] * kr[d * m.ks[3]];
      s = acc * m.scale;
      if (m.mask_kind != 0) {
        const long long mo = b * m.ms[0] + h * m.ms[1] + i * m.ms[2] + j * m.ms[3];
        if (m.mask_kind == 1) { if (!((const unsigned char*)mask)[mo]) s = -INFINITY; }
        else s += ((const float*)mask)[mo];
      }
    }
    sc[j] = s;
    mx = fmaxf(mx, s);
  }
  mx = block_reduce<true>(mx, scratch);
  float sum = 0.f;
  for (long long j = threadIdx.x; j < m.t; j += blockDim.x) {
    const float e = expf(sc[j] - mx);
    sc[j] = e;
    sum += e;
  }
  sum = block_reduce<false>(sum, scratch);
  __syncthreads();
  const float inv = 1.f / sum;
  float* o = out + row * m.dv;
  for (long long d = threadIdx.x; d < m.dv; d += blockDim.x) {
    float acc = 0.f;
    for (long long j = 0; j < m.t; ++j) acc += sc[j] * vb[j * m.vs[2] + d * m.vs[3]];
    o[d] = acc * inv;
  }
}
"#;
