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

/// The format-specialised GEMV kernels (`st_qgemv_<code>`), by [`quant_code`].
pub const QGEMV_NAMES: [&str; 8] = [
    "st_qgemv_0",
    "st_qgemv_1",
    "st_qgemv_2",
    "st_qgemv_3",
    "st_qgemv_4",
    "st_qgemv_5",
    "st_qgemv_6",
    "st_qgemv_7",
];

/// Where a block's bytes go when weights are repacked on upload
/// ([`repack_quant`]): `(quant bytes, meta bytes)` per block, both multiples
/// of what the kernels load at once (16 bytes for quants), and the
/// `(source offset, destination offset, length)` segments of each.
pub struct PackedLayout {
    pub quant_bytes: usize,
    pub meta_bytes: usize,
    quant: &'static [(usize, usize, usize)],
    meta: &'static [(usize, usize, usize)],
}

/// The repacked layout of format `f` (see [`repack_quant`]).
pub fn packed_layout(f: stitch_core::QuantFormat) -> PackedLayout {
    use stitch_core::QuantFormat as Q;
    let (quant_bytes, meta_bytes, quant, meta): (usize, usize, &'static [_], &'static [_]) = match f {
        // d | qs[32]
        Q::Q8_0 => (32, 2, &[(2, 0, 32)], &[(0, 0, 2)]),
        // d | qs[16]
        Q::Q4_0 => (16, 2, &[(2, 0, 16)], &[(0, 0, 2)]),
        // d, m | qs[16]
        Q::Q4_1 => (16, 4, &[(4, 0, 16)], &[(0, 0, 4)]),
        // d, qh[4] | qs[16]: meta is d, 2 bytes of padding, qh (8-byte aligned)
        Q::Q5_0 => (16, 8, &[(6, 0, 16)], &[(0, 0, 2), (2, 4, 4)]),
        // d, m, qh[4] | qs[16]
        Q::Q5_1 => (16, 8, &[(8, 0, 16)], &[(0, 0, 8)]),
        // d, dmin, scales[12] | qs[128]
        Q::Q4_K => (128, 16, &[(16, 0, 128)], &[(0, 0, 16)]),
        // d, dmin, scales[12] | qh[32], qs[128]
        Q::Q5_K => (160, 16, &[(16, 0, 160)], &[(0, 0, 16)]),
        // ql[128], qh[64], scales[16] | d
        Q::Q6_K => (208, 2, &[(0, 0, 208)], &[(208, 0, 2)]),
    };
    PackedLayout {
        quant_bytes,
        meta_bytes,
        quant,
        meta,
    }
}

/// GGUF rows `[n, row_bytes]` of format `f` repacked for 16-byte loads: all
/// blocks' quant bytes first (block `i` of row `r` at `(r * nb + i) *
/// quant_bytes`, so every block starts 16-byte aligned), then all blocks'
/// scales/mins (`meta_bytes` each). Same size as the input except Q5_0
/// (22 → 24 bytes a block). The values are untouched: kernels reading either
/// layout give the same results bit for bit.
pub fn repack_quant(f: stitch_core::QuantFormat, rows: &[u8], n: usize) -> Vec<u8> {
    let lay = packed_layout(f);
    let bb = f.block_bytes();
    let blocks = if n == 0 { 0 } else { rows.len() / bb };
    let meta_at = blocks * lay.quant_bytes;
    let mut out = vec![0u8; meta_at + blocks * lay.meta_bytes];
    for (i, blk) in rows.chunks_exact(bb).enumerate() {
        for &(src, dst, len) in lay.quant {
            let at = i * lay.quant_bytes + dst;
            out[at..at + len].copy_from_slice(&blk[src..src + len]);
        }
        for &(src, dst, len) in lay.meta {
            let at = meta_at + i * lay.meta_bytes + dst;
            out[at..at + len].copy_from_slice(&blk[src..src + len]);
        }
    }
    out
}

/// The GEMV kernels over repacked weights (`st_qgemv16_<code>`), by [`quant_code`].
pub const QGEMV16_NAMES: [&str; 8] = [
    "st_qgemv16_0",
    "st_qgemv16_1",
    "st_qgemv16_2",
    "st_qgemv16_3",
    "st_qgemv16_4",
    "st_qgemv16_5",
    "st_qgemv16_6",
    "st_qgemv16_7",
];

/// The dequantize kernels over repacked weights (`st_dequant16_<code>`).
pub const DEQUANT16_NAMES: [&str; 8] = [
    "st_dequant16_0",
    "st_dequant16_1",
    "st_dequant16_2",
    "st_dequant16_3",
    "st_dequant16_4",
    "st_dequant16_5",
    "st_dequant16_6",
    "st_dequant16_7",
];

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
// Element j of one block of format FMT (codes as in quant_code()); with FMT a
// template constant every branch but one folds away.
template <int FMT>
__device__ __forceinline__ float st_dqt(const unsigned char* b, int j) {
  constexpr int fmt = FMT;
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

// Element j of one block of format `fmt`, chosen at run time.
__device__ float st_dq(int fmt, const unsigned char* b, int j) {
  switch (fmt) {
    case 0: return st_dqt<0>(b, j);
    case 1: return st_dqt<1>(b, j);
    case 2: return st_dqt<2>(b, j);
    case 3: return st_dqt<3>(b, j);
    case 4: return st_dqt<4>(b, j);
    case 5: return st_dqt<5>(b, j);
    case 6: return st_dqt<6>(b, j);
    default: return st_dqt<7>(b, j);
  }
}

// acc[r] += sum_j wv[j] * x[r, e0 + j] over one 32-element unit for up to 8
// rows of x, read with 16-byte loads (the order both quantized GEMVs share).
__device__ __forceinline__ void st_unit_rows(const float* wv, const float* __restrict__ x, long long k,
                                             long long e0, int rows, float* acc) {
  #pragma unroll
  for (int r = 0; r < 8; ++r) {
    if (r < rows) {
      const float4* xv = (const float4*)(x + r * k + e0);
      float a = 0.f;
      #pragma unroll
      for (int q = 0; q < 8; ++q) {
        const float4 t = xv[q];
        a += wv[4 * q] * t.x + wv[4 * q + 1] * t.y + wv[4 * q + 2] * t.z + wv[4 * q + 3] * t.w;
      }
      acc[r] += a;
    }
  }
}

// Sums each row's per-lane partials over the warp; lane 0 writes y[r, col].
__device__ __forceinline__ void st_warp_store(const float* acc, int rows, int lane, float* __restrict__ y,
                                              long long n, long long col) {
  #pragma unroll
  for (int r = 0; r < 8; ++r) {
    if (r < rows) {
      float a = acc[r];
      for (int o = 16; o > 0; o >>= 1) a += __shfl_xor_sync(0xffffffffu, a, o);
      if (lane == 0) y[r * n + col] = a;
    }
  }
}

// y[r, c] = sum_k x[r, k] * w[c, k] for up to 8 rows of x, packed rows of w in
// format FMT (BE elements in BB bytes per block). One warp per output column;
// each lane takes 32-element units: dequantizes them into registers once and
// applies them to every row, reading x with 16-byte loads (x is contiguous and
// 16-byte aligned, k a multiple of 32).
template <int FMT, int BE, int BB>
__device__ __forceinline__ void st_qgemv(const float* __restrict__ x, const unsigned char* __restrict__ w, float* __restrict__ y,
                                         int rows, long long n, long long k, long long row_bytes) {
  const long long col = ((long long)blockIdx.x * blockDim.x + threadIdx.x) >> 5;
  const int lane = threadIdx.x & 31;
  if (col >= n) return;
  const unsigned char* wr = w + col * row_bytes;
  float acc[8];
  #pragma unroll
  for (int r = 0; r < 8; ++r) acc[r] = 0.f;
  const long long units = k >> 5;
  for (long long u = lane; u < units; u += 32) {
    const long long e0 = u << 5;
    const unsigned char* b = wr + (e0 / BE) * BB;
    const int j0 = (int)(e0 % BE);
    float wv[32];
    #pragma unroll
    for (int j = 0; j < 32; ++j) wv[j] = st_dqt<FMT>(b, j0 + j);
    st_unit_rows(wv, x, k, e0, rows, acc);
  }
  st_warp_store(acc, rows, lane, y, n, col);
}
#define ST_QGEMV(F, BE, BB) \
  extern "C" __global__ void st_qgemv_##F(const float* x, const unsigned char* w, float* y, int rows, long long n, long long k, long long rb) { \
    st_qgemv<F, BE, BB>(x, w, y, rows, n, k, rb); }
ST_QGEMV(0, 32, 34)
ST_QGEMV(1, 32, 18)
ST_QGEMV(2, 32, 20)
ST_QGEMV(3, 32, 22)
ST_QGEMV(4, 32, 24)
ST_QGEMV(5, 256, 144)
ST_QGEMV(6, 256, 176)
ST_QGEMV(7, 256, 210)

// ---- Repacked block-quantized weights (see repack_quant()): quant bytes of
// every block 16-byte aligned and read as uint4, scales/mins read as one
// 2/4/8/16-byte word. Each function dequantizes one 32-element unit (`sub` is
// the unit within a 256-element block) into wv[32] with the same arithmetic,
// in the same order, as st_dqt.
__device__ __forceinline__ float st_h2f(unsigned int bits) {
  float f;
  asm("cvt.f32.f16 %0, %1;" : "=f"(f) : "h"((unsigned short)(bits & 0xffffu)));
  return f;
}
// Byte i of 32 bytes held in two uint4 (i a compile-time constant after unrolling).
__device__ __forceinline__ unsigned int st_b32(const uint4& a, const uint4& b, int i) {
  const uint4& v = i < 16 ? a : b;
  const int w = (i >> 2) & 3;
  const unsigned int x = w == 0 ? v.x : w == 1 ? v.y : w == 2 ? v.z : v.w;
  return (x >> ((i & 3) * 8)) & 255u;
}
// Byte i of one uint4, i known only at run time (register selects, no local memory).
__device__ __forceinline__ unsigned int st_brt(const uint4& v, int i) {
  const int w = (i >> 2) & 3;
  const unsigned int x = w == 0 ? v.x : w == 1 ? v.y : w == 2 ? v.z : v.w;
  return (x >> ((i & 3) * 8)) & 255u;
}
__device__ __forceinline__ uint4 st_ld16(const unsigned char* p) { return __ldg((const uint4*)p); }

template <int FMT>
__device__ __forceinline__ void st_unit(const unsigned char* __restrict__ qb, const unsigned char* __restrict__ mb, int sub, float* wv) {
  constexpr int fmt = FMT;
  if (fmt == 0) {
    const uint4 a = st_ld16(qb), b = st_ld16(qb + 16);
    const float d = st_h2f(*(const unsigned short*)mb);
    #pragma unroll
    for (int j = 0; j < 32; ++j) wv[j] = d * (float)(signed char)st_b32(a, b, j);
  } else if (fmt <= 4) {
    const uint4 a = st_ld16(qb);
    float d, m = 0.f;
    unsigned int qh = 0;
    if (fmt == 1) {
      d = st_h2f(*(const unsigned short*)mb);
    } else if (fmt == 2) {
      const unsigned int dm = *(const unsigned int*)mb;
      d = st_h2f(dm); m = st_h2f(dm >> 16);
    } else {
      const uint2 dm = *(const uint2*)mb;
      d = st_h2f(dm.x); m = st_h2f(dm.x >> 16); qh = dm.y;
    }
    #pragma unroll
    for (int j = 0; j < 32; ++j) {
      int q = j < 16 ? (int)(st_b32(a, a, j) & 15) : (int)(st_b32(a, a, j - 16) >> 4);
      if (fmt == 3 || fmt == 4) q |= (int)((qh >> j) & 1) << 4;
      wv[j] = fmt == 1 ? d * (float)(q - 8) : fmt == 3 ? d * (float)(q - 16) : d * (float)q + m;
    }
  } else if (fmt <= 6) {
    const uint4 meta = st_ld16(mb);
    const float d = st_h2f(meta.x), dmin = st_h2f(meta.x >> 16);
    // scales[i] is byte 4 + i of the meta word.
    int sc, m;
    if (sub < 4) {
      sc = st_brt(meta, 4 + sub) & 63; m = st_brt(meta, 8 + sub) & 63;
    } else {
      sc = (st_brt(meta, 8 + sub) & 0xF) | ((st_brt(meta, sub) >> 6) << 4);
      m = (st_brt(meta, 8 + sub) >> 4) | ((st_brt(meta, 4 + sub) >> 6) << 4);
    }
    const int chunk = sub >> 1, hi = sub & 1;
    const unsigned char* qs = qb + (fmt == 6 ? 32 : 0) + chunk * 32;
    const uint4 a = st_ld16(qs), b = st_ld16(qs + 16);
    uint4 ha = make_uint4(0, 0, 0, 0), hb = ha;
    if (fmt == 6) { ha = st_ld16(qb); hb = st_ld16(qb + 16); }
    #pragma unroll
    for (int j = 0; j < 32; ++j) {
      const unsigned int byte = st_b32(a, b, j);
      int q = hi ? (int)(byte >> 4) : (int)(byte & 15);
      if (fmt == 6) q += (int)((st_b32(ha, hb, j) >> sub) & 1) << 4;
      wv[j] = d * (float)sc * (float)q - dmin * (float)m;
    }
  } else {
    const int half = sub >> 2, quarter = sub & 3;
    const unsigned char* ql = qb + half * 64 + ((quarter & 1) ? 32 : 0);
    const unsigned char* qh = qb + 128 + half * 32;
    const uint4 a = st_ld16(ql), b = st_ld16(ql + 16);
    const uint4 ha = st_ld16(qh), hb = st_ld16(qh + 16);
    const uint4 scv = st_ld16(qb + 192);
    const float d = st_h2f(*(const unsigned short*)mb);
    const int s0 = half * 8 + 2 * quarter;
    const float sc0 = (float)(signed char)st_brt(scv, s0), sc1 = (float)(signed char)st_brt(scv, s0 + 1);
    const int shift = 2 * quarter;
    #pragma unroll
    for (int j = 0; j < 32; ++j) {
      const unsigned int byte = st_b32(a, b, j);
      const int lo = quarter < 2 ? (int)(byte & 15) : (int)(byte >> 4);
      const int q = lo | ((int)((st_b32(ha, hb, j) >> shift) & 3) << 4);
      wv[j] = d * (j < 16 ? sc0 : sc1) * (float)(q - 32);
    }
  }
}

// st_qgemv over repacked weights: quants wq (QB bytes a block), scales wm (MB
// bytes a block); same work split and summation order as st_qgemv.
template <int FMT, int BE, int QB, int MB>
__device__ __forceinline__ void st_qgemv16(const float* __restrict__ x, const unsigned char* __restrict__ wq,
                                           const unsigned char* __restrict__ wm, float* __restrict__ y,
                                           int rows, long long n, long long k) {
  const long long col = ((long long)blockIdx.x * blockDim.x + threadIdx.x) >> 5;
  const int lane = threadIdx.x & 31;
  if (col >= n) return;
  const long long nb = k / BE;
  const unsigned char* qrow = wq + col * nb * QB;
  const unsigned char* mrow = wm + col * nb * MB;
  float acc[8];
  #pragma unroll
  for (int r = 0; r < 8; ++r) acc[r] = 0.f;
  const long long units = k >> 5;
  for (long long u = lane; u < units; u += 32) {
    const long long e0 = u << 5;
    const long long blk = e0 / BE;
    float wv[32];
    st_unit<FMT>(qrow + blk * QB, mrow + blk * MB, (int)((e0 % BE) >> 5), wv);
    st_unit_rows(wv, x, k, e0, rows, acc);
  }
  st_warp_store(acc, rows, lane, y, n, col);
}
// out[r, :] = dequantized row r of repacked weights: a thread per 32-element
// unit, written as eight float4.
template <int FMT, int BE, int QB, int MB>
__device__ __forceinline__ void st_dequant16(const unsigned char* __restrict__ wq, const unsigned char* __restrict__ wm,
                                             float* __restrict__ out, long long n, long long k) {
  const long long units = k >> 5, nb = k / BE, total = n * units;
  for (long long e = (long long)blockIdx.x * blockDim.x + threadIdx.x; e < total; e += (long long)gridDim.x * blockDim.x) {
    const long long r = e / units, e0 = (e % units) << 5, blk = r * nb + e0 / BE;
    float wv[32];
    st_unit<FMT>(wq + blk * QB, wm + blk * MB, (int)((e0 % BE) >> 5), wv);
    float4* o = (float4*)(out + r * k + e0);
    #pragma unroll
    for (int q = 0; q < 8; ++q) o[q] = make_float4(wv[4 * q], wv[4 * q + 1], wv[4 * q + 2], wv[4 * q + 3]);
  }
}
#define ST_Q16(F, BE, QB, MB) \
  extern "C" __global__ void st_qgemv16_##F(const float* x, const unsigned char* wq, const unsigned char* wm, float* y, int rows, long long n, long long k) { \
    st_qgemv16<F, BE, QB, MB>(x, wq, wm, y, rows, n, k); } \
  extern "C" __global__ void st_dequant16_##F(const unsigned char* wq, const unsigned char* wm, float* out, long long n, long long k) { \
    st_dequant16<F, BE, QB, MB>(wq, wm, out, n, k); }
ST_Q16(0, 32, 32, 2)
ST_Q16(1, 32, 16, 2)
ST_Q16(2, 32, 16, 4)
ST_Q16(3, 32, 16, 8)
ST_Q16(4, 32, 16, 8)
ST_Q16(5, 256, 128, 16)
ST_Q16(6, 256, 160, 16)
ST_Q16(7, 256, 208, 2)

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

/// Queries per block of the tensor-core attention kernel (four warps of 16).
pub const FLASH_BM: usize = 64;
/// Keys per step of the tensor-core attention kernel.
pub const FLASH_BN: usize = 64;
/// Threads per block of the tensor-core attention kernel.
pub const FLASH_THREADS: u32 = 128;

/// Shapes and strides of a tensor-core attention launch (`repr(C)`, mirrored in
/// [`ATTN_SOURCE`]). The head axis is contiguous in q, k and v.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default)]
pub struct FlashMeta {
    pub b: i64,
    pub h: i64,
    pub hk: i64,
    pub s: i64,
    pub t: i64,
    /// Strides (elements) of q, k, v over batch, head and row.
    pub qs: [i64; 3],
    pub ks: [i64; 3],
    pub vs: [i64; 3],
    /// `scale · log2(e)`: scores are kept in base 2.
    pub scale_log2: f32,
    pub causal: i32,
}

// SAFETY: `repr(C)` plain numbers matching the CUDA struct `FlashMeta`.
unsafe impl cudarc::driver::DeviceRepr for FlashMeta {}

/// Threads per block of the split-KV attention kernel (four warps).
pub const DECODE_THREADS: u32 = 128;
/// Largest head size (of q·k and of v) the split-KV kernel takes.
pub const DECODE_MAX_D: usize = 256;
/// Queries up to which f32 attention uses the split-KV kernel (and 16-bit
/// attention never the tensor-core one).
pub const DECODE_MAX_S: usize = 16;

/// Shapes, strides and split of a split-KV attention launch (`repr(C)`, mirrored
/// in [`ATTN_SOURCE`]).
#[repr(C)]
#[derive(Debug, Clone, Copy, Default)]
pub struct DecodeMeta {
    pub b: i64,
    pub h: i64,
    pub hk: i64,
    pub s: i64,
    pub t: i64,
    pub d: i64,
    pub dv: i64,
    pub qs: [i64; 4],
    pub ks: [i64; 4],
    pub vs: [i64; 4],
    pub ms: [i64; 4],
    /// Keys per split.
    pub chunk: i64,
    pub scale: f32,
    pub causal: i32,
    /// 0: no mask, 1: bool (keep where true), 2/3/4: additive f32/f16/bf16.
    pub mask_kind: i32,
    pub splits: i32,
}

// SAFETY: `repr(C)` plain numbers matching the CUDA struct `DecodeMeta`.
unsafe impl cudarc::driver::DeviceRepr for DecodeMeta {}

/// The attention kernels for 16-bit floats and long key sequences:
///
/// * `st_flash_{f16,bf16}_{64,128}`: prefill attention on tensor cores
///   (`mma.sync` m16n8k16, f32 accumulation) with an online softmax; one block
///   of four warps per 64 queries of one (batch, head), K/V tiles of 64 keys
///   staged in shared memory with 16-byte loads. Causal (bottom-right) and not,
///   grouped-query heads. Needs sm_80 or newer.
/// * `st_decode_part_{f32,f16,bf16}` + `st_decode_join_*`: split-KV attention
///   for few queries over a long cache: the keys are cut into `splits` chunks,
///   each block computes one (query row, chunk) partial (max, sum, weighted V)
///   with one warp per key and lanes over the head, and the join kernel
///   combines the chunks. Any head size up to 256, masks, causal.
pub const ATTN_SOURCE: &str = r#"
#ifndef INFINITY
#define INFINITY __int_as_float(0x7f800000)
#endif
struct FlashMeta {
  long long b, h, hk, s, t;
  long long qs[3], ks[3], vs[3];
  float scale_log2;
  int causal;
};

template <bool BF> __device__ __forceinline__ unsigned int st_pack2(float lo, float hi) {
  unsigned int r;
  if (BF) asm("cvt.rn.bf16x2.f32 %0, %1, %2;" : "=r"(r) : "f"(hi), "f"(lo));
  else asm("cvt.rn.f16x2.f32 %0, %1, %2;" : "=r"(r) : "f"(hi), "f"(lo));
  return r;
}

template <bool BF> __device__ __forceinline__ void st_mma(float* c, const unsigned int* a, const unsigned int* b) {
  if (BF)
    asm volatile("mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, {%0,%1,%2,%3};"
                 : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
                 : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]));
  else
    asm volatile("mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, {%0,%1,%2,%3};"
                 : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
                 : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]));
}

// Four 8x8 b16 matrices from shared memory; lanes 8i..8i+7 give the row
// addresses of matrix i (16-byte aligned). Lane 4g+tg receives, of each matrix,
// row g, columns 2tg..2tg+1 (or with .trans rows 2tg..2tg+1 of column g).
__device__ __forceinline__ void st_ldsm4(unsigned int* r, const unsigned short* p) {
  unsigned int a;
  asm("{ .reg .u64 t; cvta.to.shared.u64 t, %1; cvt.u32.u64 %0, t; }" : "=r"(a) : "l"(p));
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0,%1,%2,%3}, [%4];"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3]) : "r"(a));
}
__device__ __forceinline__ void st_cp_async16(unsigned short* dst, const unsigned short* src, int bytes) {
  unsigned int a;
  asm("{ .reg .u64 t; cvta.to.shared.u64 t, %1; cvt.u32.u64 %0, t; }" : "=r"(a) : "l"(dst));
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;" :: "r"(a), "l"(src), "r"(bytes) : "memory");
}
__device__ __forceinline__ void st_ldsm4t(unsigned int* r, const unsigned short* p) {
  unsigned int a;
  asm("{ .reg .u64 t; cvta.to.shared.u64 t, %1; cvt.u32.u64 %0, t; }" : "=r"(a) : "l"(p));
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0,%1,%2,%3}, [%4];"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3]) : "r"(a));
}

// Fragment layouts of mma.m16n8k16 (PTX ISA): lane = 4 * g + tg.
//   A (16x16, row-major): reg0 = (row g, cols 2tg..+1), reg1 = (row g+8, same),
//                         reg2 = (row g, cols 2tg+8..+9), reg3 = (row g+8, same).
//   B (16x8, k-major):    reg0 = (k 2tg..+1, col g), reg1 = (k 2tg+8..+9, col g).
//   C (16x8, f32):        c0,c1 = (row g, cols 2tg..+1), c2,c3 = (row g+8, same).
// C of two adjacent 8-key score tiles is exactly the A fragment of P for the
// next product, so probabilities never leave registers.
template <bool BF, int D>
__device__ __forceinline__ void st_flash(const FlashMeta m, const unsigned short* __restrict__ q, const unsigned short* __restrict__ k,
                                         const unsigned short* __restrict__ v, unsigned short* __restrict__ out) {
  constexpr int BM = 64, BN = 64, LD = D + 8;
  // Two stages of K and V tiles: the next tile streams in (cp.async) while
  // the current one is used.
  extern __shared__ uint4 st_smem[];
  unsigned short* const smem = (unsigned short*)st_smem;
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31, g = lane >> 2, tg = lane & 3;
  const long long bh = blockIdx.y;
  const long long hh = bh % m.h, bb = bh / m.h;
  const long long hk = hh / (m.h / m.hk);
  const long long q0 = (long long)blockIdx.x * BM;
  const unsigned short* qb = q + bb * m.qs[0] + hh * m.qs[1];
  const unsigned short* kb = k + bb * m.ks[0] + hk * m.ks[1];
  const unsigned short* vb = v + bb * m.vs[0] + hk * m.vs[1];
  const long long r0 = q0 + warp * 16 + g, r1 = r0 + 8;
  unsigned int qf[D / 16][4];
  #pragma unroll
  for (int kk = 0; kk < D / 16; ++kk) {
    const int c = kk * 16 + tg * 2;
    qf[kk][0] = r0 < m.s ? *(const unsigned int*)(qb + r0 * m.qs[2] + c) : 0u;
    qf[kk][1] = r1 < m.s ? *(const unsigned int*)(qb + r1 * m.qs[2] + c) : 0u;
    qf[kk][2] = r0 < m.s ? *(const unsigned int*)(qb + r0 * m.qs[2] + c + 8) : 0u;
    qf[kk][3] = r1 < m.s ? *(const unsigned int*)(qb + r1 * m.qs[2] + c + 8) : 0u;
  }
  float o[D / 8][4];
  #pragma unroll
  for (int dt = 0; dt < D / 8; ++dt) o[dt][0] = o[dt][1] = o[dt][2] = o[dt][3] = 0.f;
  float mx0 = -INFINITY, mx1 = -INFINITY, l0 = 0.f, l1 = 0.f;
  const long long shift = m.t - m.s;
  long long kend = m.t;
  if (m.causal && q0 + BM + shift < kend) kend = q0 + BM + shift;
  // Keys past the end are zero-filled (source size 0), read from a valid address.
  auto load_tile = [&](long long k0, int stage) {
    unsigned short* kd = smem + stage * 2 * BN * LD;
    unsigned short* vd = kd + BN * LD;
    for (int c = threadIdx.x; c < BN * D / 8; c += blockDim.x) {
      const int row = c / (D / 8), col = (c % (D / 8)) * 8;
      const long long key = k0 + row;
      const int bytes = key < m.t ? 16 : 0;
      const long long src = key < m.t ? key : 0;
      st_cp_async16(kd + row * LD + col, kb + src * m.ks[2] + col, bytes);
      st_cp_async16(vd + row * LD + col, vb + src * m.vs[2] + col, bytes);
    }
  };
  if (kend > 0) load_tile(0, 0);
  asm volatile("cp.async.commit_group;" ::: "memory");
  int stage = 0;
  for (long long k0 = 0; k0 < kend; k0 += BN, stage ^= 1) {
    if (k0 + BN < kend) load_tile(k0 + BN, stage ^ 1);
    asm volatile("cp.async.commit_group;" ::: "memory");
    asm volatile("cp.async.wait_group 1;" ::: "memory");
    __syncthreads();
    const unsigned short* ks = smem + stage * 2 * BN * LD;
    const unsigned short* vs = ks + BN * LD;
    float sc[BN / 8][4];
    #pragma unroll
    for (int nt = 0; nt < BN / 8; ++nt) {
      sc[nt][0] = sc[nt][1] = sc[nt][2] = sc[nt][3] = 0.f;
      #pragma unroll
      for (int k2 = 0; k2 < D / 32; ++k2) {
        // Keys nt*8.. (rows) by 32 head columns: B fragments of two k-steps.
        unsigned int bf[4];
        st_ldsm4(bf, ks + (nt * 8 + (lane & 7)) * LD + k2 * 32 + (lane >> 3) * 8);
        st_mma<BF>(sc[nt], qf[2 * k2], bf);
        st_mma<BF>(sc[nt], qf[2 * k2 + 1], bf + 2);
      }
    }
    // Masking is needed only where this warp's tile reaches past the last key
    // or (causal) past its first row's diagonal.
    const bool edge = k0 + BN > m.t || (m.causal && k0 + BN - 1 > q0 + warp * 16 + shift);
    float nm0 = mx0, nm1 = mx1;
    #pragma unroll
    for (int nt = 0; nt < BN / 8; ++nt) {
      #pragma unroll
      for (int e = 0; e < 4; ++e) {
        float x = sc[nt][e] * m.scale_log2;
        if (edge) {
          const long long key = k0 + nt * 8 + tg * 2 + (e & 1);
          const long long row = e < 2 ? r0 : r1;
          if (key >= m.t || (m.causal && key > row + shift)) x = -INFINITY;
        }
        sc[nt][e] = x;
        if (e < 2) nm0 = fmaxf(nm0, x); else nm1 = fmaxf(nm1, x);
      }
    }
    nm0 = fmaxf(nm0, __shfl_xor_sync(0xffffffffu, nm0, 1));
    nm0 = fmaxf(nm0, __shfl_xor_sync(0xffffffffu, nm0, 2));
    nm1 = fmaxf(nm1, __shfl_xor_sync(0xffffffffu, nm1, 1));
    nm1 = fmaxf(nm1, __shfl_xor_sync(0xffffffffu, nm1, 2));
    const float a0 = nm0 == -INFINITY ? 1.f : exp2f(mx0 - nm0);
    const float a1 = nm1 == -INFINITY ? 1.f : exp2f(mx1 - nm1);
    mx0 = nm0;
    mx1 = nm1;
    float ps0 = 0.f, ps1 = 0.f;
    #pragma unroll
    for (int nt = 0; nt < BN / 8; ++nt) {
      #pragma unroll
      for (int e = 0; e < 4; ++e) {
        const float mm = e < 2 ? mx0 : mx1;
        const float p = mm == -INFINITY ? 0.f : exp2f(sc[nt][e] - mm);
        sc[nt][e] = p;
        if (e < 2) ps0 += p; else ps1 += p;
      }
    }
    l0 = l0 * a0 + ps0;
    l1 = l1 * a1 + ps1;
    #pragma unroll
    for (int dt = 0; dt < D / 8; ++dt) {
      o[dt][0] *= a0; o[dt][1] *= a0; o[dt][2] *= a1; o[dt][3] *= a1;
    }
    #pragma unroll
    for (int kk = 0; kk < BN / 16; ++kk) {
      const unsigned int pa[4] = {st_pack2<BF>(sc[2 * kk][0], sc[2 * kk][1]), st_pack2<BF>(sc[2 * kk][2], sc[2 * kk][3]),
                                  st_pack2<BF>(sc[2 * kk + 1][0], sc[2 * kk + 1][1]), st_pack2<BF>(sc[2 * kk + 1][2], sc[2 * kk + 1][3])};
      #pragma unroll
      for (int d2 = 0; d2 < D / 16; ++d2) {
        // 16 keys by two 8-column head tiles, transposed: B fragments of two n-tiles.
        unsigned int bf[4];
        st_ldsm4t(bf, vs + (kk * 16 + (lane & 7) + ((lane >> 3) & 1) * 8) * LD + (2 * d2 + (lane >> 4)) * 8);
        st_mma<BF>(o[2 * d2], pa, bf);
        st_mma<BF>(o[2 * d2 + 1], pa, bf + 2);
      }
    }
    // Every warp is done with this stage before the next iteration refills it.
    __syncthreads();
  }
  l0 += __shfl_xor_sync(0xffffffffu, l0, 1);
  l0 += __shfl_xor_sync(0xffffffffu, l0, 2);
  l1 += __shfl_xor_sync(0xffffffffu, l1, 1);
  l1 += __shfl_xor_sync(0xffffffffu, l1, 2);
  // A row with every key masked has l = 0: 0 / 0 gives NaN, as the definition does.
  const float i0 = 1.f / l0, i1 = 1.f / l1;
  unsigned short* ob = out + bh * m.s * D;
  #pragma unroll
  for (int dt = 0; dt < D / 8; ++dt) {
    const int col = dt * 8 + tg * 2;
    if (r0 < m.s) *(unsigned int*)(ob + r0 * D + col) = st_pack2<BF>(o[dt][0] * i0, o[dt][1] * i0);
    if (r1 < m.s) *(unsigned int*)(ob + r1 * D + col) = st_pack2<BF>(o[dt][2] * i1, o[dt][3] * i1);
  }
}
#define ST_FLASH(NAME, BF, D) \
  extern "C" __global__ void __launch_bounds__(128) NAME(const FlashMeta m, const unsigned short* q, const unsigned short* k, \
                                                         const unsigned short* v, unsigned short* out) { \
    st_flash<BF, D>(m, q, k, v, out); }
ST_FLASH(st_flash_f16_64, false, 64)
ST_FLASH(st_flash_f16_128, false, 128)
ST_FLASH(st_flash_bf16_64, true, 64)
ST_FLASH(st_flash_bf16_128, true, 128)

struct DecodeMeta {
  long long b, h, hk, s, t, d, dv;
  long long qs[4], ks[4], vs[4], ms[4];
  long long chunk;
  float scale;
  int causal;
  int mask_kind;
  int splits;
};

// Element i of a tensor of dtype DT (0: f32, 1: f16, 2: bf16) as float.
template <int DT> __device__ __forceinline__ float st_ldx(const void* p, long long i) {
  if (DT == 0) return ((const float*)p)[i];
  if (DT == 1) return st_h2f(((const unsigned short*)p)[i]);
  return st_b2f(((const unsigned short*)p)[i]);
}

// One block per (query row, key chunk): four warps take keys in turn, the
// lanes of a warp split the head; results go to po [rows, splits, dv] (not yet
// divided by the sum) and pml [rows, splits, 2] (max, sum).
template <int DT>
__device__ __forceinline__ void st_decode_part(const DecodeMeta m, const void* __restrict__ q, const void* __restrict__ k,
                                               const void* __restrict__ v, const void* __restrict__ mask,
                                               float* __restrict__ po, float* __restrict__ pml) {
  __shared__ float qsh[256];
  __shared__ float wm[4], wl[4];
  __shared__ float wo[4][256];
  const long long row = blockIdx.x;
  const int split = blockIdx.y;
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
  const long long i = row % m.s, hh = (row / m.s) % m.h, bb = row / (m.s * m.h);
  const long long hk = hh / (m.h / m.hk);
  const long long qo = bb * m.qs[0] + hh * m.qs[1] + i * m.qs[2];
  for (int dd = threadIdx.x; dd < m.d; dd += blockDim.x) qsh[dd] = st_ldx<DT>(q, qo + dd * m.qs[3]) * m.scale;
  __syncthreads();
  const long long kbase = bb * m.ks[0] + hk * m.ks[1], vbase = bb * m.vs[0] + hk * m.vs[1];
  long long end = (split + 1) * m.chunk;
  if (end > m.t) end = m.t;
  if (m.causal && i + (m.t - m.s) + 1 < end) end = i + (m.t - m.s) + 1;
  float mw = -INFINITY, lw = 0.f, acc[8];
  #pragma unroll
  for (int c = 0; c < 8; ++c) acc[c] = 0.f;
  for (long long j = split * m.chunk + warp; j < end; j += 4) {
    float p = 0.f;
    for (long long dd = lane; dd < m.d; dd += 32) p += qsh[dd] * st_ldx<DT>(k, kbase + j * m.ks[2] + dd * m.ks[3]);
    for (int o = 16; o > 0; o >>= 1) p += __shfl_xor_sync(0xffffffffu, p, o);
    if (m.mask_kind != 0) {
      const long long mo = bb * m.ms[0] + hh * m.ms[1] + i * m.ms[2] + j * m.ms[3];
      if (m.mask_kind == 1) { if (!((const unsigned char*)mask)[mo]) p = -INFINITY; }
      else if (m.mask_kind == 2) p += ((const float*)mask)[mo];
      else if (m.mask_kind == 3) p += st_h2f(((const unsigned short*)mask)[mo]);
      else p += st_b2f(((const unsigned short*)mask)[mo]);
    }
    if (p == -INFINITY) continue;
    const float nm = fmaxf(mw, p);
    const float a = expf(mw - nm), e = expf(p - nm);
    lw = lw * a + e;
    #pragma unroll
    for (int c = 0; c < 8; ++c) {
      const long long dd = lane + 32 * c;
      if (dd < m.dv) acc[c] = acc[c] * a + e * st_ldx<DT>(v, vbase + j * m.vs[2] + dd * m.vs[3]);
    }
    mw = nm;
  }
  if (lane == 0) { wm[warp] = mw; wl[warp] = lw; }
  #pragma unroll
  for (int c = 0; c < 8; ++c) if (lane + 32 * c < 256) wo[warp][lane + 32 * c] = acc[c];
  __syncthreads();
  const float M = fmaxf(fmaxf(wm[0], wm[1]), fmaxf(wm[2], wm[3]));
  float f[4];
  #pragma unroll
  for (int w = 0; w < 4; ++w) f[w] = wm[w] == -INFINITY ? 0.f : expf(wm[w] - M);
  const long long slot = row * m.splits + split;
  for (int dd = threadIdx.x; dd < m.dv; dd += blockDim.x)
    po[slot * m.dv + dd] = wo[0][dd] * f[0] + wo[1][dd] * f[1] + wo[2][dd] * f[2] + wo[3][dd] * f[3];
  if (threadIdx.x == 0) {
    pml[slot * 2] = M;
    pml[slot * 2 + 1] = wl[0] * f[0] + wl[1] * f[1] + wl[2] * f[2] + wl[3] * f[3];
  }
}

// out[row, :] = the chunks of one query row combined; out is contiguous [rows, dv].
template <int DT>
__device__ __forceinline__ void st_decode_join(const float* __restrict__ po, const float* __restrict__ pml, void* __restrict__ out,
                                               int splits, long long dv) {
  const long long row = blockIdx.x;
  float M = -INFINITY;
  for (int s = 0; s < splits; ++s) M = fmaxf(M, pml[(row * splits + s) * 2]);
  float L = 0.f;
  for (int s = 0; s < splits; ++s) {
    const float ms = pml[(row * splits + s) * 2];
    L += ms == -INFINITY ? 0.f : pml[(row * splits + s) * 2 + 1] * expf(ms - M);
  }
  for (long long dd = threadIdx.x; dd < dv; dd += blockDim.x) {
    float a = 0.f;
    for (int s = 0; s < splits; ++s) {
      const float ms = pml[(row * splits + s) * 2];
      if (ms != -INFINITY) a += po[(row * splits + s) * dv + dd] * expf(ms - M);
    }
    const float r = a / L;
    if (DT == 0) ((float*)out)[row * dv + dd] = r;
    else if (DT == 1) ((unsigned short*)out)[row * dv + dd] = st_f2h(r);
    else ((unsigned short*)out)[row * dv + dd] = st_f2b(r);
  }
}
#define ST_DECODE(SUFFIX, DT) \
  extern "C" __global__ void st_decode_part_##SUFFIX(const DecodeMeta m, const void* q, const void* k, const void* v, \
                                                     const void* mask, float* po, float* pml) { \
    st_decode_part<DT>(m, q, k, v, mask, po, pml); } \
  extern "C" __global__ void st_decode_join_##SUFFIX(const float* po, const float* pml, void* out, int splits, long long dv) { \
    st_decode_join<DT>(po, pml, out, splits, dv); }
ST_DECODE(f32, 0)
ST_DECODE(f16, 1)
ST_DECODE(bf16, 2)
"#;

/// Most axes of the layout kernels in [`OPS_SOURCE`].
pub const OPS_MAX_RANK: usize = 8;

/// Geometry of a pad launch (`repr(C)`, mirrored in [`OPS_SOURCE`]).
#[repr(C)]
#[derive(Debug, Clone, Copy, Default)]
pub struct PadMeta {
    pub rank: i32,
    /// 0 constant, 1 reflect, 2 edge.
    pub mode: i32,
    pub n: i64,
    pub odims: [i64; OPS_MAX_RANK],
    pub begin: [i64; OPS_MAX_RANK],
    pub idims: [i64; OPS_MAX_RANK],
    pub istrides: [i64; OPS_MAX_RANK],
}

// SAFETY: `repr(C)` plain numbers matching the CUDA struct `PadMeta`.
unsafe impl cudarc::driver::DeviceRepr for PadMeta {}

/// Geometry of a 1-D/2-D convolution or pooling launch over contiguous NC(H)W
/// tensors (`repr(C)`, mirrored in [`OPS_SOURCE`]); 1-D runs with height 1.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default)]
pub struct WinMeta {
    pub n: i64,
    pub c: i64,
    pub h: i64,
    pub w: i64,
    /// Output channels (conv) or channels (pool), output height and width.
    pub m: i64,
    pub oh: i64,
    pub ow: i64,
    pub kh: i64,
    pub kw: i64,
    pub sh: i64,
    pub sw: i64,
    pub ph: i64,
    pub pw: i64,
    /// Padding at the end (average pooling's divisor counts taps before `h + ph_end`).
    pub ph_end: i64,
    pub pw_end: i64,
    pub dh: i64,
    pub dw: i64,
    pub groups: i64,
    pub has_bias: i32,
    pub count_pad: i32,
}

// SAFETY: `repr(C)` plain numbers matching the CUDA struct `WinMeta`.
unsafe impl cudarc::driver::DeviceRepr for WinMeta {}

/// Kernels for the rest of the core op set: pad, one-hot, arg max/min,
/// cumulative sum, top-k, gather/scatter elements, convolution and pooling.
/// Along-an-axis ops see their input as `[pre, n, post]` (contiguous) and give
/// one thread to each `(pre, post)` line, so results come out in the same
/// order as the CPU's sequential loops (scatter with duplicate indices, top-k
/// ties by lower index, first or last arg index).
pub const OPS_SOURCE: &str = r#"
#ifndef INFINITY
#define INFINITY __int_as_float(0x7f800000)
#endif
struct PadMeta {
  int rank, mode;
  long long n;
  long long odims[8], begin[8], idims[8], istrides[8];
};
template <typename U> __device__ void st_pad(const PadMeta m, const U* __restrict__ x, U* __restrict__ y, U fill) {
  for (long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x; i < m.n; i += (long long)gridDim.x * blockDim.x) {
    long long rem = i, off = 0;
    bool inside = true;
    for (int d = m.rank - 1; d >= 0; --d) {
      const long long o = rem % m.odims[d];
      rem /= m.odims[d];
      long long s = o - m.begin[d];
      const long long n = m.idims[d];
      if (s < 0 || s >= n) {
        if (m.mode == 0 || n == 0) inside = false;
        else if (m.mode == 2) s = s < 0 ? 0 : n - 1;
        else s = s < 0 ? -s : 2 * (n - 1) - s;
      }
      off += s * m.istrides[d];
    }
    y[i] = inside ? x[off] : fill;
  }
}
#define ST_PAD(B, U) extern "C" __global__ void st_pad_##B(const PadMeta m, const U* x, U* y, unsigned long long fill) { st_pad<U>(m, x, y, (U)fill); }
ST_PAD(1, unsigned char)
ST_PAD(2, unsigned short)
ST_PAD(4, unsigned int)
ST_PAD(8, unsigned long long)

// y[o, j, i] = idx[o, i] == j (negative indices count from the end) ? on : off.
template <typename I, typename U>
__device__ void st_one_hot(const I* __restrict__ idx, U* __restrict__ y, long long outer, long long depth, long long inner, U on, U off) {
  const long long total = outer * depth * inner;
  for (long long e = (long long)blockIdx.x * blockDim.x + threadIdx.x; e < total; e += (long long)gridDim.x * blockDim.x) {
    const long long i = e % inner, j = (e / inner) % depth, o = e / (inner * depth);
    long long v = (long long)idx[o * inner + i];
    if (v < 0) v += depth;
    y[e] = v == j ? on : off;
  }
}
#define ST_ONE_HOT(IN, I, B, U) extern "C" __global__ void st_one_hot_##IN##_##B(const I* idx, U* y, long long outer, long long depth, long long inner, unsigned long long on, unsigned long long off) { st_one_hot<I, U>(idx, y, outer, depth, inner, (U)on, (U)off); }
ST_ONE_HOT(i32, int, 1, unsigned char)
ST_ONE_HOT(i32, int, 2, unsigned short)
ST_ONE_HOT(i32, int, 4, unsigned int)
ST_ONE_HOT(i32, int, 8, unsigned long long)
ST_ONE_HOT(i64, long long, 1, unsigned char)
ST_ONE_HOT(i64, long long, 2, unsigned short)
ST_ONE_HOT(i64, long long, 4, unsigned int)
ST_ONE_HOT(i64, long long, 8, unsigned long long)

// Index of the max (or min) of each line; ties: first, or last with `last`; NaN wins (first NaN).
template <typename T>
__device__ void st_arg(const T* __restrict__ x, long long* __restrict__ y, long long pre, long long n, long long post, int is_max, int last) {
  for (long long l = (long long)blockIdx.x * blockDim.x + threadIdx.x; l < pre * post; l += (long long)gridDim.x * blockDim.x) {
    const long long p = l / post, q = l % post;
    const T* xl = x + p * n * post + q;
    long long best = 0;
    T bv = xl[0];
    for (long long i = 1; i < n; ++i) {
      const T v = xl[i * post];
      if (bv != bv) break;
      const bool better = v != v || (is_max ? (last ? v >= bv : v > bv) : (last ? v <= bv : v < bv));
      if (better) { best = i; bv = v; }
    }
    y[l] = best;
  }
}
// Cumulative sum of each line (exclusive and/or reversed).
template <typename T>
__device__ void st_cumsum(const T* __restrict__ x, T* __restrict__ y, long long pre, long long n, long long post, int exclusive, int reverse) {
  for (long long l = (long long)blockIdx.x * blockDim.x + threadIdx.x; l < pre * post; l += (long long)gridDim.x * blockDim.x) {
    const long long p = l / post, q = l % post;
    const long long base = p * n * post + q;
    T acc = (T)0;
    for (long long s = 0; s < n; ++s) {
      const long long i = reverse ? n - 1 - s : s;
      const T v = x[base + i * post];
      if (exclusive) { y[base + i * post] = acc; acc += v; }
      else { acc += v; y[base + i * post] = acc; }
    }
  }
}
// The k best of each line in order: value (descending for largest), then lower index.
template <typename T>
__device__ __forceinline__ bool st_before(T a, long long ia, T b, long long ib, int largest) {
  // NaN ranks above every number (as a total order does).
  const bool an = a != a, bn = b != b;
  if (an || bn) {
    if (an && bn) return ia < ib;
    return largest ? an : bn;
  }
  if (a != b) return largest ? a > b : a < b;
  return ia < ib;
}
template <typename T>
__device__ void st_topk(const T* __restrict__ x, T* __restrict__ vals, long long* __restrict__ idx, long long pre, long long n, long long post, long long k, int largest) {
  for (long long l = (long long)blockIdx.x * blockDim.x + threadIdx.x; l < pre * post; l += (long long)gridDim.x * blockDim.x) {
    const long long p = l / post, q = l % post;
    const T* xl = x + p * n * post + q;
    T pv = (T)0;
    long long pi = -1;
    for (long long r = 0; r < k; ++r) {
      long long bi = -1;
      T bv = (T)0;
      for (long long i = 0; i < n; ++i) {
        const T v = xl[i * post];
        if (pi >= 0 && !st_before(pv, pi, v, i, largest)) continue;
        if (bi < 0 || st_before(v, i, bv, bi, largest)) { bi = i; bv = v; }
      }
      pv = bv;
      pi = bi;
      vals[(p * k + r) * post + q] = bv;
      idx[(p * k + r) * post + q] = bi;
    }
  }
}
// Scatter of each line of `updates` (thread per line, in index order) into y (a copy of data).
// red: 0 replace, 1 add, 2 mul, 3 max, 4 min. `bad` is set for an out-of-range index.
template <typename T, typename I>
__device__ void st_scatter(T* __restrict__ y, const I* __restrict__ idx, const T* __restrict__ upd, long long pre, long long nu, long long post,
                           long long upost, long long n, int red, int* __restrict__ bad) {
  // updates/indices are [pre, nu, upost] (upost ≤ post: the non-axis extents may be smaller than data's).
  for (long long l = (long long)blockIdx.x * blockDim.x + threadIdx.x; l < pre * upost; l += (long long)gridDim.x * blockDim.x) {
    const long long p = l / upost, q = l % upost;
    for (long long j = 0; j < nu; ++j) {
      const long long u = (p * nu + j) * upost + q;
      long long t = (long long)idx[u];
      if (t < 0) t += n;
      if (t < 0 || t >= n) { *bad = 1; continue; }
      T* d = y + (p * n + t) * post + q;
      const T v = upd[u];
      switch (red) {
        case 0: *d = v; break;
        case 1: *d = *d + v; break;
        case 2: *d = *d * v; break;
        case 3: *d = (v > *d) ? v : *d; break;
        default: *d = (v < *d) ? v : *d; break;
      }
    }
  }
}
#define ST_TYPED(S, T) \
  extern "C" __global__ void st_arg_##S(const T* x, long long* y, long long pre, long long n, long long post, int is_max, int last) { st_arg<T>(x, y, pre, n, post, is_max, last); } \
  extern "C" __global__ void st_cumsum_##S(const T* x, T* y, long long pre, long long n, long long post, int ex, int rev) { st_cumsum<T>(x, y, pre, n, post, ex, rev); } \
  extern "C" __global__ void st_topk_##S(const T* x, T* v, long long* i, long long pre, long long n, long long post, long long k, int largest) { st_topk<T>(x, v, i, pre, n, post, k, largest); } \
  extern "C" __global__ void st_scatter_##S##_i32(T* y, const int* idx, const T* upd, long long pre, long long nu, long long post, long long upost, long long n, int red, int* bad) { st_scatter<T, int>(y, idx, upd, pre, nu, post, upost, n, red, bad); } \
  extern "C" __global__ void st_scatter_##S##_i64(T* y, const long long* idx, const T* upd, long long pre, long long nu, long long post, long long upost, long long n, int red, int* bad) { st_scatter<T, long long>(y, idx, upd, pre, nu, post, upost, n, red, bad); }
ST_TYPED(f32, float)
ST_TYPED(f64, double)
ST_TYPED(i32, int)
ST_TYPED(i64, long long)

// y[c] = data[c with axis coordinate idx[c]] over contiguous [pre, *, post] views:
// data [pre, n, dpost] read with the index tensor's [pre, ni, post] coordinates.
template <typename U, typename I>
__device__ void st_gather_el(const U* __restrict__ data, const I* __restrict__ idx, U* __restrict__ y, long long pre, long long ni, long long post,
                             long long n, long long dpost, int* __restrict__ bad) {
  const long long total = pre * ni * post;
  for (long long e = (long long)blockIdx.x * blockDim.x + threadIdx.x; e < total; e += (long long)gridDim.x * blockDim.x) {
    const long long q = e % post, p = e / (ni * post);
    long long t = (long long)idx[e];
    if (t < 0) t += n;
    if (t < 0 || t >= n) { *bad = 1; y[e] = (U)0; continue; }
    y[e] = data[(p * n + t) * dpost + q];
  }
}
#define ST_GATHER_EL(B, U) \
  extern "C" __global__ void st_gather_el_##B##_i32(const U* d, const int* i, U* y, long long pre, long long ni, long long post, long long n, long long dpost, int* bad) { st_gather_el<U, int>(d, i, y, pre, ni, post, n, dpost, bad); } \
  extern "C" __global__ void st_gather_el_##B##_i64(const U* d, const long long* i, U* y, long long pre, long long ni, long long post, long long n, long long dpost, int* bad) { st_gather_el<U, long long>(d, i, y, pre, ni, post, n, dpost, bad); }
ST_GATHER_EL(1, unsigned char)
ST_GATHER_EL(2, unsigned short)
ST_GATHER_EL(4, unsigned int)
ST_GATHER_EL(8, unsigned long long)

struct WinMeta {
  long long n, c, h, w, m, oh, ow, kh, kw, sh, sw, ph, pw, ph_end, pw_end, dh, dw, groups;
  int has_bias, count_pad;
};
// Direct convolution, one thread per output element, f32 accumulation.
extern "C" __global__ void st_conv_f32(const WinMeta g, const float* __restrict__ x, const float* __restrict__ w, const float* __restrict__ b, float* __restrict__ y) {
  const long long total = g.n * g.m * g.oh * g.ow;
  const long long cg = g.c / g.groups, mg = g.m / g.groups;
  for (long long e = (long long)blockIdx.x * blockDim.x + threadIdx.x; e < total; e += (long long)gridDim.x * blockDim.x) {
    const long long ox = e % g.ow, oy = (e / g.ow) % g.oh, oc = (e / (g.ow * g.oh)) % g.m, bn = e / (g.ow * g.oh * g.m);
    const long long grp = oc / mg;
    float acc = g.has_bias ? b[oc] : 0.f;
    for (long long ic = 0; ic < cg; ++ic) {
      const float* xp = x + ((bn * g.c) + grp * cg + ic) * g.h * g.w;
      const float* wp = w + (oc * cg + ic) * g.kh * g.kw;
      for (long long ky = 0; ky < g.kh; ++ky) {
        const long long iy = oy * g.sh + ky * g.dh - g.ph;
        if (iy < 0 || iy >= g.h) continue;
        for (long long kx = 0; kx < g.kw; ++kx) {
          const long long ix = ox * g.sw + kx * g.dw - g.pw;
          if (ix < 0 || ix >= g.w) continue;
          acc += xp[iy * g.w + ix] * wp[ky * g.kw + kx];
        }
      }
    }
    y[e] = acc;
  }
}
// Max or average pooling, one thread per output element.
extern "C" __global__ void st_pool_f32(const WinMeta g, const float* __restrict__ x, float* __restrict__ y, int is_max) {
  const long long total = g.n * g.m * g.oh * g.ow;
  for (long long e = (long long)blockIdx.x * blockDim.x + threadIdx.x; e < total; e += (long long)gridDim.x * blockDim.x) {
    const long long ox = e % g.ow, oy = (e / g.ow) % g.oh, plane = e / (g.ow * g.oh);
    const float* xp = x + plane * g.h * g.w;
    float best = -INFINITY, sum = 0.f;
    long long real = 0, ry = 0, rx = 0;
    for (long long ky = 0; ky < g.kh; ++ky) {
      const long long iy = oy * g.sh + ky * g.dh - g.ph;
      if (iy < g.h + g.ph_end) ++ry;
    }
    for (long long kx = 0; kx < g.kw; ++kx) {
      const long long ix = ox * g.sw + kx * g.dw - g.pw;
      if (ix < g.w + g.pw_end) ++rx;
    }
    for (long long ky = 0; ky < g.kh; ++ky) {
      const long long iy = oy * g.sh + ky * g.dh - g.ph;
      if (iy < 0 || iy >= g.h) continue;
      for (long long kx = 0; kx < g.kw; ++kx) {
        const long long ix = ox * g.sw + kx * g.dw - g.pw;
        if (ix < 0 || ix >= g.w) continue;
        const float v = xp[iy * g.w + ix];
        if (v > best || v != v) best = v;
        sum += v;
        ++real;
      }
    }
    if (is_max) y[e] = best;
    else {
      const long long count = g.count_pad ? ry * rx : real;
      y[e] = count == 0 ? 0.f : sum / (float)count;
    }
  }
}
"#;

#[cfg(test)]
mod tests {
    use super::*;

    /// Every `extern "C"` kernel name written out in the hand-written sources
    /// (the backend keys loaded kernels by name alone).
    fn names(src: &str) -> Vec<String> {
        src.split("__global__ void ")
            .skip(1)
            .filter_map(|rest| rest.split('(').next())
            .map(|n| n.trim().to_string())
            .collect()
    }

    #[test]
    fn kernel_names_are_unique_across_sources_and_the_gemv_table_names_real_kernels() {
        let mut all: Vec<String> = [SOURCE, ATTN_SOURCE, OPS_SOURCE]
            .iter()
            .flat_map(|s| names(s))
            .collect();
        let n = all.len();
        all.sort();
        all.dedup();
        assert_eq!(all.len(), n, "duplicate kernel names: {all:?}");
        for (code, name) in QGEMV_NAMES.iter().enumerate() {
            assert!(SOURCE.contains(&format!("ST_QGEMV({code},")), "{name}");
            assert_eq!(*name, format!("st_qgemv_{code}"));
        }
        assert!(all.iter().all(|n| !n.starts_with('[')));
    }
}
