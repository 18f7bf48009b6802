//! The Llama-family decoder, built with the graph API.
//!
//! RMSNorm, RoPE (the model's base; GGUF llama's adjacent-pair layout, or
//! Qwen2's halves; Llama 3 frequency factors, linear or YaRN scaling, all
//! folded into the cos/sin tables as llama.cpp computes them), grouped-query
//! attention through the fused `sdpa` op, optional Q/K/V/output biases, a
//! SwiGLU MLP and tied or separate output embeddings. Architectures `llama`
//! and `qwen2`. Linear layers read packed quantized weights through
//! `quant_matmul`; nothing is expanded at load.
//!
//! Two executables share one [`State`]: *prefill* (a whole prompt, symbolic
//! length) and *decode* (one token). The KV cache is one pair of variables per
//! layer, `[1, kv_heads, ctx, head_dim]`, allocated once for the chosen
//! context and written in place by `slice_update` at the current position;
//! attention reads the whole cache under a boolean mask `[1, 1, seq, ctx]`
//! (true where a query may attend), so decode shapes never change and no plan
//! is rebuilt per token. The CPU sdpa kernel skips masked keys.

use std::sync::Arc;

use stitch_core::ops::SdpaAttrs;
use stitch_core::{
    Backend, CompileOptions, DType, Dim, Error, Executable, Graph, QuantFormat, Result, State, Tensor, Value, VarId,
};

use crate::gguf::{Gguf, GgufTensor, Value as GgufValue};

/// Model hyper-parameters.
#[derive(Debug, Clone, PartialEq)]
pub struct LlamaConfig {
    /// Transformer blocks.
    pub n_layers: usize,
    /// Hidden size.
    pub dim: usize,
    /// Query heads.
    pub n_heads: usize,
    /// Key/value heads.
    pub n_kv_heads: usize,
    /// Per-head size.
    pub head_dim: usize,
    /// MLP hidden size.
    pub ffn_dim: usize,
    /// Vocabulary size.
    pub vocab: usize,
    /// RMSNorm epsilon.
    pub eps: f64,
    /// RoPE base frequency.
    pub rope_base: f64,
    /// Context the model was trained for.
    pub train_ctx: usize,
    /// Which elements RoPE rotates together.
    pub rope_style: RopeStyle,
    /// How positions are stretched beyond the training context.
    pub rope_scaling: RopeScaling,
    /// Per-frequency divisors of the rotation angles (`rope_freqs.weight`,
    /// Llama 3's long-context factors), `head_dim / 2` of them.
    pub rope_freq_factors: Option<Vec<f32>>,
    /// Q, K and V projections carry biases (Qwen2 requires them; Llama uses them when the file has them).
    pub qkv_bias: bool,
}

/// The pairing RoPE rotates.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum RopeStyle {
    /// Elements `2i` and `2i + 1` (llama.cpp's "normal" RoPE; GGUF llama files
    /// are converted to it).
    #[default]
    Adjacent,
    /// Elements `i` and `i + head_dim / 2` (GPT-NeoX's layout; Qwen2).
    Halves,
}

/// RoPE scaling, as GGUF's `rope.scaling.*` keys give it.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub enum RopeScaling {
    /// Angles as trained.
    #[default]
    None,
    /// Positions divided by `factor` (`rope.scaling.type = linear`).
    Linear {
        /// `rope.scaling.factor`.
        factor: f64,
    },
    /// YaRN (`rope.scaling.type = yarn`): low frequencies interpolated, high
    /// ones kept, a ramp between, and the rotation magnitude scaled.
    Yarn {
        /// `rope.scaling.factor`.
        factor: f64,
        /// `rope.scaling.original_context_length` (else the training context).
        original_ctx: usize,
        /// `rope.scaling.attn_factor` (else 1).
        attn_factor: f64,
        /// Rotations per context below which a frequency is fully interpolated (llama.cpp's default 1).
        beta_slow: f64,
        /// Rotations per context above which a frequency is kept (llama.cpp's default 32).
        beta_fast: f64,
    },
}

impl LlamaConfig {
    /// Cosines and sines of the RoPE angles for `positions`, `[pos][head_dim / 2]`
    /// row-major, computed as llama.cpp's `ggml_rope_ext` does (frequency
    /// factors, then linear or YaRN scaling; YaRN also scales the magnitude).
    pub fn rope_tables(&self, positions: std::ops::Range<usize>) -> (Vec<f32>, Vec<f32>) {
        let (hd, half) = (self.head_dim, self.head_dim / 2);
        let freq_scale = match self.rope_scaling {
            RopeScaling::None => 1.0,
            RopeScaling::Linear { factor } | RopeScaling::Yarn { factor, .. } => 1.0 / factor,
        };
        // YaRN's correction range in dimension pairs, and the magnitude scale.
        let (ramp_dims, mscale) = match self.rope_scaling {
            RopeScaling::Yarn {
                original_ctx,
                attn_factor,
                beta_slow,
                beta_fast,
                ..
            } => {
                let corr_dim = |rotations: f64| {
                    hd as f64 * (original_ctx as f64 / (rotations * 2.0 * std::f64::consts::PI)).ln()
                        / (2.0 * self.rope_base.ln())
                };
                let low = corr_dim(beta_fast).floor().max(0.0);
                let high = corr_dim(beta_slow).ceil().min(hd as f64 - 1.0);
                (Some((low, high)), attn_factor * (1.0 + 0.1 * (1.0 / freq_scale).ln()))
            }
            _ => (None, 1.0),
        };
        let n = positions.len() * half;
        let (mut cos, mut sin) = (Vec::with_capacity(n), Vec::with_capacity(n));
        for p in positions {
            for j in 0..half {
                let ff = self.rope_freq_factors.as_ref().map_or(1.0, |f| f[j] as f64);
                let extrapolated = p as f64 * self.rope_base.powf(-2.0 * j as f64 / hd as f64) / ff;
                let interpolated = extrapolated * freq_scale;
                let theta = match ramp_dims {
                    Some((low, high)) => {
                        let y = (j as f64 - low) / (high - low).max(0.001);
                        let mix = 1.0 - y.clamp(0.0, 1.0);
                        interpolated * (1.0 - mix) + extrapolated * mix
                    }
                    None => interpolated,
                };
                cos.push((theta.cos() * mscale) as f32);
                sin.push((theta.sin() * mscale) as f32);
            }
        }
        (cos, sin)
    }

    /// [`LlamaConfig::rope_tables`] (`[positions, head_dim / 2]`) laid out per
    /// element of a head (`[positions, head_dim]`) in the model's pair layout,
    /// the sine negated at each pair's first element: the graph's RoPE inputs.
    pub fn rope_per_element(&self, cos: &[f32], sin: &[f32]) -> (Vec<f32>, Vec<f32>) {
        let (hd, half) = (self.head_dim, self.head_dim / 2);
        let n = cos.len() / half.max(1);
        let (mut c, mut s) = (vec![0f32; n * hd], vec![0f32; n * hd]);
        for p in 0..n {
            for j in 0..half {
                let (first, second) = match self.rope_style {
                    RopeStyle::Adjacent => (2 * j, 2 * j + 1),
                    RopeStyle::Halves => (j, j + half),
                };
                let (cv, sv) = (cos[p * half + j], sin[p * half + j]);
                c[p * hd + first] = cv;
                c[p * hd + second] = cv;
                s[p * hd + first] = -sv;
                s[p * hd + second] = sv;
            }
        }
        (c, s)
    }
}

impl LlamaConfig {
    /// Reads the hyper-parameters of a `llama` or `qwen2` GGUF file.
    pub fn from_gguf(g: &Gguf) -> Result<LlamaConfig> {
        let arch = g.get_str("general.architecture")?;
        // llama.cpp's RoPE layout per architecture; Qwen2 also requires Q/K/V biases.
        let (rope_style, qkv_bias) = match arch {
            "llama" => (RopeStyle::Adjacent, false),
            "qwen2" => (RopeStyle::Halves, true),
            _ => {
                return Err(Error::invalid(format!(
                    "{}: architecture `{arch}` (general.architecture) is not supported (llama and qwen2 are)",
                    g.path()
                )))
            }
        };
        let k = |s: &str| format!("{arch}.{s}");
        let dim = g.get_usize(&k("embedding_length"))?;
        let n_heads = g.get_usize(&k("attention.head_count"))?;
        let n_kv_heads = g
            .get(&k("attention.head_count_kv"))
            .and_then(|v| v.as_u64())
            .map_or(n_heads, |v| v as usize);
        if n_heads == 0 || n_kv_heads == 0 || dim % n_heads != 0 || n_heads % n_kv_heads != 0 {
            return Err(Error::invalid(format!(
                "{}: heads {n_heads} / kv heads {n_kv_heads} do not divide the hidden size {dim}",
                g.path()
            )));
        }
        let head_dim = g
            .get(&k("rope.dimension_count"))
            .and_then(|v| v.as_u64())
            .map_or(dim / n_heads, |v| v as usize);
        if head_dim != dim / n_heads || !head_dim.is_multiple_of(2) {
            return Err(Error::invalid(format!(
                "{}: rope dimension {head_dim} must be the (even) head size {}",
                g.path(),
                dim / n_heads
            )));
        }
        let train_ctx = g.get_usize(&k("context_length")).unwrap_or(2048);
        let rope_scaling = rope_scaling(g, arch, train_ctx)?;
        let rope_freq_factors = match g.weight("rope_freqs.weight")? {
            None => None,
            Some(Weight::Dense(t)) if t.shape() == [head_dim / 2] => Some(t.to_vec::<f32>()?),
            Some(w) => {
                return Err(Error::invalid(format!(
                    "{}: rope_freqs.weight has shape {:?}, expected [{}] in f32/f16",
                    g.path(),
                    w.shape(),
                    head_dim / 2
                )))
            }
        };
        let vocab = match g.get(&k("vocab_size")).and_then(|v| v.as_u64()) {
            Some(v) => v as usize,
            None => g.require("tokenizer.ggml.tokens")?.as_array().map_or(0, |a| a.len()),
        };
        Ok(LlamaConfig {
            n_layers: g.get_usize(&k("block_count"))?,
            dim,
            n_heads,
            n_kv_heads,
            head_dim,
            ffn_dim: g.get_usize(&k("feed_forward_length"))?,
            vocab,
            eps: g.get_f64(&k("attention.layer_norm_rms_epsilon"))?,
            rope_base: g.get(&k("rope.freq_base")).and_then(|v| v.as_f64()).unwrap_or(10000.0),
            train_ctx,
            rope_style,
            rope_scaling,
            rope_freq_factors,
            qkv_bias,
        })
    }
}

/// The `{arch}.rope.scaling.*` keys, read as llama.cpp reads them (type
/// `linear` when absent; factor 0 or 1 means none).
fn rope_scaling(g: &Gguf, arch: &str, train_ctx: usize) -> Result<RopeScaling> {
    let key = |s: &str| format!("{arch}.rope.scaling.{s}");
    let kind = match g.get(&key("type")) {
        None => "linear",
        Some(v) => v
            .as_str()
            .ok_or_else(|| Error::invalid(format!("{}: {} is not a string", g.path(), key("type"))))?,
    };
    let factor = g
        .get(&key("factor"))
        .or_else(|| g.get(&format!("{arch}.rope.scale_linear")))
        .and_then(GgufValue::as_f64)
        .unwrap_or(0.0);
    let scaled = factor != 0.0 && factor != 1.0;
    Ok(match kind {
        "none" => RopeScaling::None,
        "linear" if scaled => RopeScaling::Linear { factor },
        "linear" => RopeScaling::None,
        "yarn" => RopeScaling::Yarn {
            factor: if factor == 0.0 { 1.0 } else { factor },
            original_ctx: g
                .get(&key("original_context_length"))
                .and_then(GgufValue::as_u64)
                .map_or(train_ctx, |v| v as usize),
            attn_factor: g.get(&key("attn_factor")).and_then(GgufValue::as_f64).unwrap_or(1.0),
            beta_slow: 1.0,
            beta_fast: 32.0,
        },
        other => {
            return Err(Error::invalid(format!(
                "{}: {} = `{other}` is not supported (none, linear and yarn are)",
                g.path(),
                key("type")
            )))
        }
    })
}

/// A weight: dense f32 or packed quantized rows.
#[derive(Debug, Clone)]
pub enum Weight {
    /// f32 (f16/bf16 are widened at load).
    Dense(Tensor),
    /// Packed `[rows, row_bytes]` in `format`, with the logical shape.
    Quant {
        /// Packed bytes.
        packed: Tensor,
        /// Format.
        format: QuantFormat,
        /// Logical shape.
        shape: Vec<usize>,
    },
}

impl Weight {
    fn shape(&self) -> Vec<usize> {
        match self {
            Weight::Dense(t) => t.shape().to_vec(),
            Weight::Quant { shape, .. } => shape.clone(),
        }
    }
}

/// Where weights come from (a GGUF file, or tests' random weights).
pub trait WeightSource {
    /// The weight named as in GGUF (`blk.0.attn_q.weight`), or `None` if absent.
    fn weight(&self, name: &str) -> Result<Option<Weight>>;
}

impl WeightSource for Gguf {
    fn weight(&self, name: &str) -> Result<Option<Weight>> {
        if self.info(name).is_none() {
            return Ok(None);
        }
        Ok(Some(match self.tensor(name)? {
            GgufTensor::Dense(t) if t.dtype() == DType::F32 => Weight::Dense(t),
            GgufTensor::Dense(t) => {
                let v: Vec<f32> = t.to_f64_vec().into_iter().map(|x| x as f32).collect();
                Weight::Dense(Tensor::from_vec(v, t.shape())?)
            }
            GgufTensor::Quant { packed, format, shape } => Weight::Quant { packed, format, shape },
        }))
    }
}

fn need(w: &dyn WeightSource, name: &str, shape: &[usize]) -> Result<Weight> {
    let wt = w
        .weight(name)?
        .ok_or_else(|| Error::invalid(format!("weight `{name}` is missing from the model")))?;
    if wt.shape() != shape {
        return Err(Error::invalid(format!(
            "weight `{name}` has shape {:?}, the config needs {shape:?}",
            wt.shape()
        )));
    }
    Ok(wt)
}

/// `x @ wᵀ` for a `[out, in]` weight.
fn linear(g: &mut Graph, x: Value, w: &Weight) -> Result<Value> {
    match w {
        Weight::Dense(t) => {
            let c = g.constant(t.clone());
            g.matmul_t(x, c, false, true)
        }
        Weight::Quant { packed, format, .. } => {
            let c = g.constant(packed.clone());
            g.quant_matmul(x, c, *format)
        }
    }
}

/// The graph's input names.
pub mod inputs {
    /// Token ids, i64 `[seq]`.
    pub const TOKENS: &str = "tokens";
    /// Cache write position as slice_update starts, i64 `[4]` = `[0, 0, pos, 0]`.
    pub const POS: &str = "pos";
    /// Attention mask, bool `[1, 1, seq, ctx]`.
    pub const MASK: &str = "mask";
    /// RoPE cosines per element of a head, f32 `[seq, 1, head_dim]` (each
    /// pair's angle at both of its elements, in the model's pair layout).
    pub const COS: &str = "rope_cos";
    /// RoPE sines per element of a head, f32 `[seq, 1, head_dim]`, negated at
    /// the first element of each pair (see [`RopeStyle`]).
    pub const SIN: &str = "rope_sin";
    /// Row whose logits are returned, i64 `[1]`.
    pub const LAST: &str = "last";
}

/// Builds the decoder for `seq` tokens per call (a symbolic dim for prefill,
/// 1 for decode) over a `ctx`-token KV cache. Returns the graph, its logits
/// output `[1, vocab]`, and the cache variables (k, v per layer).
pub fn build(cfg: &LlamaConfig, w: &dyn WeightSource, seq: Dim, ctx: usize) -> Result<(Graph, Value, Vec<VarId>)> {
    let LlamaConfig {
        n_layers,
        dim,
        n_heads,
        n_kv_heads,
        head_dim: hd,
        ffn_dim,
        vocab,
        eps,
        ..
    } = *cfg;
    let mut g = Graph::new();
    let tokens = g.placeholder(inputs::TOKENS, DType::I64, vec![seq.clone()]);
    let pos = g.placeholder(inputs::POS, DType::I64, [4]);
    let mask = g.placeholder(
        inputs::MASK,
        DType::Bool,
        vec![Dim::Known(1), Dim::Known(1), seq.clone(), Dim::Known(ctx)],
    );
    let rope_shape = vec![seq.clone(), Dim::Known(1), Dim::Known(hd)];
    let cos = g.placeholder(inputs::COS, DType::F32, rope_shape.clone());
    let sin = g.placeholder(inputs::SIN, DType::F32, rope_shape);
    let last = g.placeholder(inputs::LAST, DType::I64, [1]);

    // Token embedding: gather rows, then expand them if packed.
    let emb = need(w, "token_embd.weight", &[vocab, dim])?;
    let mut x = match &emb {
        Weight::Dense(t) => {
            let c = g.constant(t.clone());
            g.gather(c, tokens, 0)?
        }
        Weight::Quant { packed, format, .. } => {
            let c = g.constant(packed.clone());
            let rows = g.gather(c, tokens, 0)?;
            g.dequantize(rows, *format)?
        }
    };

    // RoPE rotates pairs (a, b) → (a·cos − b·sin, a·sin + b·cos): pairs
    // (2i, 2i+1) for Adjacent, (i, i + hd/2) for Halves. Written per element
    // as `x·cos + partner(x)·sin±` (the sine negated at each pair's first
    // element), with the partner a constant gather along the head: one fused
    // region instead of a split, two regions and a concat (bit-identical:
    // `a·cos − b·sin = a·cos + b·(−sin)` and addition commutes).
    let partner: Vec<i64> = (0..hd)
        .map(|e| match cfg.rope_style {
            RopeStyle::Adjacent => (e ^ 1) as i64,
            RopeStyle::Halves => ((e + hd / 2) % hd) as i64,
        })
        .collect();
    let partner = g.constant(Tensor::from_vec(partner, &[hd])?);
    let rope = |g: &mut Graph, t: Value, heads: usize| -> Result<Value> {
        let t = g.reshape(t, &[0, heads as i64, hd as i64])?;
        let p = g.gather(t, partner, 2)?;
        let tc = g.mul(t, cos)?;
        let ps = g.mul(p, sin)?;
        let r = g.add(tc, ps)?;
        // → [1, heads, seq, hd]
        let r = g.unsqueeze(r, &[0])?;
        g.transpose(r, &[0, 2, 1, 3])
    };
    // `x @ wᵀ + b`, the bias optional unless `required`.
    let projection = |g: &mut Graph, x: Value, name: &str, rows: usize, cols: usize, required: bool| -> Result<Value> {
        let y = linear(g, x, &need(w, &format!("{name}.weight"), &[rows, cols])?)?;
        let bias_name = format!("{name}.bias");
        match w.weight(&bias_name)? {
            Some(Weight::Dense(b)) if b.shape() == [rows] => {
                let b = g.constant(b);
                g.add(y, b)
            }
            Some(b) => Err(Error::invalid(format!(
                "weight `{bias_name}` has shape {:?}, the config needs [{rows}] (f32/f16)",
                b.shape()
            ))),
            None if required => Err(Error::invalid(format!(
                "weight `{bias_name}` is missing from the model"
            ))),
            None => Ok(y),
        }
    };

    let mut caches = Vec::with_capacity(2 * n_layers);
    for l in 0..n_layers {
        g.push_scope(&format!("blk.{l}"));
        let p = |s: &str| format!("blk.{l}.{s}.weight");
        let attn_norm = match need(w, &p("attn_norm"), &[dim])? {
            Weight::Dense(t) => g.constant(t),
            _ => return Err(Error::invalid(format!("{} must be f32", p("attn_norm")))),
        };
        let h = g.rms_norm(x, attn_norm, -1, eps)?;
        let b = |s: &str| format!("blk.{l}.{s}");
        let q = projection(&mut g, h, &b("attn_q"), n_heads * hd, dim, cfg.qkv_bias)?;
        let k = projection(&mut g, h, &b("attn_k"), n_kv_heads * hd, dim, cfg.qkv_bias)?;
        let v = projection(&mut g, h, &b("attn_v"), n_kv_heads * hd, dim, cfg.qkv_bias)?;
        let q = rope(&mut g, q, n_heads)?;
        let k = rope(&mut g, k, n_kv_heads)?;
        let v = g.reshape(v, &[0, n_kv_heads as i64, hd as i64])?;
        let v = g.unsqueeze(v, &[0])?;
        let v = g.transpose(v, &[0, 2, 1, 3])?;
        let kc = g.variable(
            &format!("blk.{l}.k_cache"),
            Tensor::zeros(DType::F32, &[1, n_kv_heads, ctx, hd]),
        );
        let vc = g.variable(
            &format!("blk.{l}.v_cache"),
            Tensor::zeros(DType::F32, &[1, n_kv_heads, ctx, hd]),
        );
        caches.extend([kc, vc]);
        g.slice_update(kc, k, pos)?;
        g.slice_update(vc, v, pos)?;
        let keys = g.read(kc)?;
        let values = g.read(vc)?;
        let a = g.sdpa(
            q,
            keys,
            values,
            Some(mask),
            SdpaAttrs {
                scale: None,
                causal: false,
            },
        )?;
        let a = g.transpose(a, &[0, 2, 1, 3])?;
        let a = g.squeeze(a, &[0])?;
        let a = g.reshape(a, &[0, (n_heads * hd) as i64])?;
        let o = projection(&mut g, a, &b("attn_output"), dim, n_heads * hd, false)?;
        x = g.add(x, o)?;

        let ffn_norm = match need(w, &p("ffn_norm"), &[dim])? {
            Weight::Dense(t) => g.constant(t),
            _ => return Err(Error::invalid(format!("{} must be f32", p("ffn_norm")))),
        };
        let h = g.rms_norm(x, ffn_norm, -1, eps)?;
        let gate = linear(&mut g, h, &need(w, &p("ffn_gate"), &[ffn_dim, dim])?)?;
        let up = linear(&mut g, h, &need(w, &p("ffn_up"), &[ffn_dim, dim])?)?;
        let gate = g.silu(gate)?;
        let act = g.mul(gate, up)?;
        let down = linear(&mut g, act, &need(w, &p("ffn_down"), &[dim, ffn_dim])?)?;
        x = g.add(x, down)?;
        g.pop_scope();
    }
    let out_norm = match need(w, "output_norm.weight", &[dim])? {
        Weight::Dense(t) => g.constant(t),
        _ => return Err(Error::invalid("output_norm.weight must be f32")),
    };
    let x = g.rms_norm(x, out_norm, -1, eps)?;
    let x = g.gather(x, last, 0)?;
    // Tied embeddings when the file has no separate output matrix.
    let head = match w.weight("output.weight")? {
        Some(o) => {
            if o.shape() != [vocab, dim] {
                return Err(Error::invalid(format!(
                    "output.weight has shape {:?}, expected [{vocab}, {dim}]",
                    o.shape()
                )));
            }
            o
        }
        None => emb,
    };
    let mut logits = linear(&mut g, x, &head)?;
    match w.weight("output.bias")? {
        Some(Weight::Dense(b)) if b.shape() == [vocab] => {
            let b = g.constant(b);
            logits = g.add(logits, b)?;
        }
        Some(b) => {
            return Err(Error::invalid(format!(
                "output.bias has shape {:?}, expected [{vocab}] (f32/f16)",
                b.shape()
            )))
        }
        None => {}
    }
    Ok((g, logits, caches))
}

/// A loaded model: prefill and decode executables sharing one KV-cache [`State`].
pub struct Llama {
    /// Hyper-parameters.
    pub cfg: LlamaConfig,
    /// Context (KV-cache length) in tokens.
    pub ctx: usize,
    prefill: Executable,
    decode: Executable,
    caches: Vec<VarId>,
    state: State,
    /// Tokens already in the cache.
    pos: usize,
    out: Vec<Tensor>,
    /// Records decode steps when set (see [`Llama::profile_decode`]).
    profiler: Option<stitch_core::profile::Profiler>,
}

impl std::fmt::Debug for Llama {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Llama")
            .field("cfg", &self.cfg)
            .field("ctx", &self.ctx)
            .field("pos", &self.pos)
            .finish()
    }
}

impl Llama {
    /// Builds and compiles the model for a `ctx`-token context on `backend`.
    pub fn new(cfg: LlamaConfig, weights: &dyn WeightSource, ctx: usize, backend: Arc<dyn Backend>) -> Result<Llama> {
        Llama::with_backends(cfg, weights, ctx, vec![backend])
    }

    /// Like [`Llama::new`] on an ordered list of backends (primary first, e.g. a
    /// GPU then the CPU): ops the primary lacks fall back to later ones. The KV
    /// cache lives in the primary's memory.
    pub fn with_backends(
        cfg: LlamaConfig,
        weights: &dyn WeightSource,
        ctx: usize,
        backends: Vec<Arc<dyn Backend>>,
    ) -> Result<Llama> {
        if ctx == 0 {
            return Err(Error::invalid("the context size must be at least 1 token"));
        }
        let (gp, lp, caches) = build(&cfg, weights, Dim::sym("seq"), ctx)?;
        let (gd, ld, _) = build(&cfg, weights, Dim::Known(1), ctx)?;
        let prefill = Executable::compile_placed(&gp, &[lp], backends.clone(), CompileOptions::default())?;
        let decode = Executable::compile_placed(&gd, &[ld], backends, CompileOptions::default())?;
        let state = prefill.new_state();
        Ok(Llama {
            cfg,
            ctx,
            prefill,
            decode,
            caches,
            state,
            pos: 0,
            out: Vec::new(),
            profiler: None,
        })
    }

    /// Starts recording every decode step (one token) with the profiler, or
    /// stops and returns what was recorded.
    pub fn profile_decode(&mut self, on: bool) -> Option<stitch_core::profile::Profiler> {
        if on {
            self.profiler.get_or_insert_with(stitch_core::profile::Profiler::new);
            None
        } else {
            self.profiler.take()
        }
    }

    /// Tokens in the cache.
    pub fn position(&self) -> usize {
        self.pos
    }

    /// Forgets the conversation (the cache is reused, not reallocated).
    pub fn reset(&mut self) {
        self.pos = 0;
    }

    /// The KV-cache state (for tests: buffer identity across steps).
    pub fn state(&self) -> &State {
        &self.state
    }
    /// The cache variables (k, v per layer).
    pub fn cache_vars(&self) -> &[VarId] {
        &self.caches
    }

    fn step_inputs(&self, ids: &[u32]) -> Result<Vec<(&'static str, Tensor)>> {
        let (seq, p0, hd) = (ids.len(), self.pos, self.cfg.head_dim);
        if p0 + seq > self.ctx {
            return Err(Error::invalid(format!(
                "the prompt and generated tokens ({} + {seq}) exceed the context of {} tokens; use a larger --ctx-size",
                p0, self.ctx
            )));
        }
        let tokens = Tensor::from_vec(ids.iter().map(|&t| t as i64).collect::<Vec<_>>(), &[seq])?;
        let pos = Tensor::from_vec(vec![0i64, 0, p0 as i64, 0], &[4])?;
        let mut mask = vec![stitch_core::Bool8(0); seq * self.ctx];
        for i in 0..seq {
            for j in 0..=(p0 + i) {
                mask[i * self.ctx + j] = stitch_core::Bool8(1);
            }
        }
        let mask = Tensor::from_vec(mask, &[1, 1, seq, self.ctx])?;
        let (cos, sin) = self.cfg.rope_tables(p0..p0 + seq);
        let (cos, sin) = self.cfg.rope_per_element(&cos, &sin);
        Ok(vec![
            (inputs::TOKENS, tokens),
            (inputs::POS, pos),
            (inputs::MASK, mask),
            (inputs::COS, Tensor::from_vec(cos, &[seq, 1, hd])?),
            (inputs::SIN, Tensor::from_vec(sin, &[seq, 1, hd])?),
            (inputs::LAST, Tensor::from_vec(vec![seq as i64 - 1], &[1])?),
        ])
    }

    /// Feeds `ids` (a prompt, or one token) and returns the logits after the
    /// last of them. Uses the decode executable for one token, prefill otherwise.
    pub fn forward(&mut self, ids: &[u32]) -> Result<Vec<f32>> {
        if ids.is_empty() {
            return Err(Error::invalid("forward needs at least one token"));
        }
        if let Some(&bad) = ids.iter().find(|&&t| t as usize >= self.cfg.vocab) {
            return Err(Error::invalid(format!(
                "token id {bad} is outside the vocabulary of {}",
                self.cfg.vocab
            )));
        }
        let inputs = self.step_inputs(ids)?;
        let exe = if ids.len() == 1 { &self.decode } else { &self.prefill };
        match &mut self.profiler {
            Some(p) if ids.len() == 1 => {
                let label = format!("decode {}", self.pos);
                p.run(exe, &inputs, &mut self.state, &mut self.out, label)?
            }
            _ => exe.run_into(&inputs, &mut self.state, &mut self.out)?,
        }
        self.pos += ids.len();
        self.out[0].to_vec::<f32>()
    }
}
