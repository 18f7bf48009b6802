//! Hugging Face Llama-layout checkpoints: a directory holding `config.json`,
//! `model.safetensors` (or `model.safetensors.index.json` and its shards) and
//! `tokenizer.json`.
//!
//! [`HfModel::open`] reads such a directory into a [`LlamaConfig`], a
//! [`Tokenizer`] and a [`WeightSource`] that answers the decoder's GGUF tensor
//! names (`blk.0.attn_q.weight`) from the Hugging Face ones
//! (`model.layers.0.self_attn.q_proj.weight`, see [`hf_name`]). Files are
//! memory-mapped: f32 tensors are used in place, f16 and bf16 are widened to
//! f32. [`write_hf_dir`] writes any weight source (a quantized GGUF model,
//! dequantized) as such a directory, in f32.
//!
//! The one subtle difference between the two layouts is RoPE. Hugging Face's
//! Llama rotates the two halves of each head against each other
//! (`rotate_half`); GGUF's llama graph, like [`crate::llama`], rotates adjacent
//! pairs. llama.cpp's converter therefore permutes the rows of `q_proj` and
//! `k_proj` within each head, and so do we: on the way in
//! ([`hf_row_of_gguf_row`]) and back on the way out.
//!
//! Every header offset, length, shape and dtype is checked before a byte is
//! read; errors name the file and the tensor or config field. This module
//! holds no decoder of its own: it only feeds [`crate::llama::build`].

use std::borrow::Cow;
use std::collections::{BTreeMap, HashMap};
use std::path::{Component, Path, PathBuf};
use std::sync::Arc;

use rayon::prelude::*;
use safetensors::tensor::TensorInfo;
use safetensors::{Dtype, SafeTensors, View};
use serde_json::{json, Map, Value as Json};
use stitch_core::quant::dequantize_row;
use stitch_core::{Buffer, DType, Error, Result, Tensor};

use crate::llama::{LlamaConfig, RopeScaling, RopeStyle, Weight, WeightSource};
use crate::tokenizer::{ChatTemplate, Tokenizer};

/// The Hugging Face name of a tensor the decoder asks for by its GGUF name,
/// or `None` for a name outside the Llama layout.
pub fn hf_name(gguf: &str) -> Option<String> {
    let fixed = match gguf {
        "token_embd.weight" => Some("model.embed_tokens.weight"),
        "output_norm.weight" => Some("model.norm.weight"),
        "output.weight" => Some("lm_head.weight"),
        _ => None,
    };
    if let Some(f) = fixed {
        return Some(f.to_string());
    }
    let (layer, part) = gguf.strip_prefix("blk.")?.split_once('.')?;
    let layer: usize = layer.parse().ok()?;
    let hf = match part {
        "attn_norm.weight" => "input_layernorm.weight",
        "attn_q.weight" => "self_attn.q_proj.weight",
        "attn_k.weight" => "self_attn.k_proj.weight",
        "attn_v.weight" => "self_attn.v_proj.weight",
        "attn_output.weight" => "self_attn.o_proj.weight",
        "ffn_norm.weight" => "post_attention_layernorm.weight",
        "ffn_gate.weight" => "mlp.gate_proj.weight",
        "ffn_up.weight" => "mlp.up_proj.weight",
        "ffn_down.weight" => "mlp.down_proj.weight",
        _ => return None,
    };
    Some(format!("model.layers.{layer}.{hf}"))
}

const LAYER_PARTS: [&str; 9] = [
    "attn_norm",
    "attn_q",
    "attn_k",
    "attn_v",
    "attn_output",
    "ffn_norm",
    "ffn_gate",
    "ffn_up",
    "ffn_down",
];

/// The GGUF names of every tensor a model of `cfg` has, in file order.
fn gguf_names(cfg: &LlamaConfig, with_output: bool) -> Vec<String> {
    let mut names = vec!["token_embd.weight".to_string()];
    for l in 0..cfg.n_layers {
        names.extend(LAYER_PARTS.iter().map(|p| format!("blk.{l}.{p}.weight")));
    }
    names.push("output_norm.weight".into());
    if with_output {
        names.push("output.weight".into());
    }
    names
}

/// The shape `cfg` gives the tensor of GGUF name `gguf` (`[out, in]` for matrices).
fn expected_shape(cfg: &LlamaConfig, gguf: &str) -> Option<Vec<usize>> {
    let (dim, q, kv, ffn) = (
        cfg.dim,
        cfg.n_heads * cfg.head_dim,
        cfg.n_kv_heads * cfg.head_dim,
        cfg.ffn_dim,
    );
    match gguf {
        "token_embd.weight" | "output.weight" => return Some(vec![cfg.vocab, dim]),
        "output_norm.weight" => return Some(vec![dim]),
        _ => {}
    }
    let (layer, part) = gguf.strip_prefix("blk.")?.split_once('.')?;
    if layer.parse::<usize>().ok()? >= cfg.n_layers {
        return None;
    }
    Some(match part {
        "attn_norm.weight" | "ffn_norm.weight" => vec![dim],
        "attn_q.weight" => vec![q, dim],
        "attn_k.weight" | "attn_v.weight" => vec![kv, dim],
        "attn_output.weight" => vec![dim, q],
        "ffn_gate.weight" | "ffn_up.weight" => vec![ffn, dim],
        "ffn_down.weight" => vec![dim, ffn],
        _ => return None,
    })
}

/// Heads whose rows a GGUF name's matrix is permuted over, for `q` and `k`.
fn rope_heads(cfg: &LlamaConfig, gguf: &str) -> Option<usize> {
    if gguf.ends_with(".attn_q.weight") {
        Some(cfg.n_heads)
    } else if gguf.ends_with(".attn_k.weight") {
        Some(cfg.n_kv_heads)
    } else {
        None
    }
}

/// Row `r` of a GGUF-layout `q`/`k` matrix is this row of the Hugging Face one.
///
/// Within a head of `head_dim` rows, GGUF keeps the pair that rotates together
/// adjacent (rows `2j`, `2j + 1`); Hugging Face keeps it half a head apart
/// (rows `j`, `j + head_dim / 2`). This is llama.cpp's
/// `w.reshape(heads, 2, head_dim / 2, in).swapaxes(1, 2)`.
pub fn hf_row_of_gguf_row(r: usize, head_dim: usize) -> usize {
    let (head, i) = (r / head_dim, r % head_dim);
    head * head_dim + (i % 2) * (head_dim / 2) + i / 2
}

/// Permutes the rows of a `[rows, cols]` matrix from the Hugging Face layout
/// to the GGUF one (`to_gguf`) or back.
fn permute_rows(data: &[f32], cols: usize, head_dim: usize, to_gguf: bool) -> Vec<f32> {
    let mut out = vec![0f32; data.len()];
    if cols == 0 {
        return out;
    }
    for r in 0..data.len() / cols {
        let hf = hf_row_of_gguf_row(r, head_dim);
        let (dst, src) = if to_gguf { (r, hf) } else { (hf, r) };
        out[dst * cols..(dst + 1) * cols].copy_from_slice(&data[src * cols..(src + 1) * cols]);
    }
    out
}

/// `rope_scaling` of a Hugging Face config, as the same model's GGUF from
/// llama.cpp's converter would carry it:
/// - `linear` → linear scaling by `factor`;
/// - `yarn` → YaRN (`original_max_position_embeddings`, `beta_fast`,
///   `beta_slow`; an explicit `attention_factor` is the whole magnitude scale,
///   as in transformers);
/// - `llama3` (Llama 3.1 and later) → per-frequency factors, computed as the
///   converter computes its `rope_freqs` tensor: 1 for wavelengths under
///   `original / high_freq_factor`, `factor` over `original / low_freq_factor`,
///   and a smooth blend between;
/// - absent or `default` → none.
///
/// Other types (`dynamic`, `longrope`, …) are refused naming the type.
fn hf_rope_scaling(
    c: &ConfigReader,
    base: f64,
    head_dim: usize,
    train_ctx: usize,
) -> Result<(RopeScaling, Option<Vec<f32>>)> {
    let Some(v) = c.get("rope_scaling") else {
        return Ok((RopeScaling::None, None));
    };
    let obj = v
        .as_object()
        .ok_or_else(|| c.err(format!("field `rope_scaling` must be an object, found {v}")))?;
    let sub = ConfigReader { obj, path: c.path };
    let kind = match sub.get("rope_type").or_else(|| sub.get("type")) {
        None => "default",
        Some(t) => t
            .as_str()
            .ok_or_else(|| c.err(format!("field `rope_scaling.rope_type` must be a string, found {t}")))?,
    };
    let factor = || -> Result<f64> {
        match sub.opt_f64("factor")? {
            Some(f) if f > 0.0 && f.is_finite() => Ok(f),
            Some(f) => Err(c.err(format!("field `rope_scaling.factor` must be positive, found {f}"))),
            None => Err(c.err(format!(
                "field `rope_scaling.factor` is missing (RoPE type `{kind}` needs it)"
            ))),
        }
    };
    let original = sub.opt_usize("original_max_position_embeddings")?;
    Ok(match kind {
        "default" => (RopeScaling::None, None),
        "linear" => {
            let f = factor()?;
            (
                if f == 1.0 {
                    RopeScaling::None
                } else {
                    RopeScaling::Linear { factor: f }
                },
                None,
            )
        }
        "yarn" => {
            let f = factor()?;
            let mscale = 1.0 + 0.1 * f.ln();
            (
                RopeScaling::Yarn {
                    factor: f,
                    original_ctx: original.unwrap_or(train_ctx),
                    // llama.cpp multiplies its attn_factor by 1 + 0.1·ln(factor);
                    // transformers' attention_factor replaces that product.
                    attn_factor: sub.opt_f64("attention_factor")?.map_or(1.0, |a| a / mscale),
                    beta_slow: sub.opt_f64("beta_slow")?.unwrap_or(1.0),
                    beta_fast: sub.opt_f64("beta_fast")?.unwrap_or(32.0),
                },
                None,
            )
        }
        "llama3" => {
            let f = factor()?;
            let need = |key: &str| {
                sub.opt_f64(key)?.ok_or_else(|| {
                    c.err(format!(
                        "field `rope_scaling.{key}` is missing (RoPE type `llama3` needs it)"
                    ))
                })
            };
            let (low, high) = (need("low_freq_factor")?, need("high_freq_factor")?);
            let old = original.ok_or_else(|| {
                c.err("field `rope_scaling.original_max_position_embeddings` is missing (RoPE type `llama3` needs it)")
            })? as f64;
            if !(high > low && low > 0.0) {
                return Err(c.err(format!(
                    "fields `rope_scaling.low_freq_factor` ({low}) and `high_freq_factor` ({high}) must satisfy 0 < low < high"
                )));
            }
            let (low_wavelen, high_wavelen) = (old / low, old / high);
            let factors = (0..head_dim / 2)
                .map(|j| {
                    let wavelen = 2.0 * std::f64::consts::PI * base.powf(2.0 * j as f64 / head_dim as f64);
                    if wavelen < high_wavelen {
                        1.0
                    } else if wavelen > low_wavelen {
                        f as f32
                    } else {
                        let smooth = (old / wavelen - low) / (high - low);
                        (1.0 / ((1.0 - smooth) / f + smooth)) as f32
                    }
                })
                .collect();
            (RopeScaling::None, Some(factors))
        }
        other => {
            return Err(c.err(format!(
                "field `rope_scaling.rope_type` is `{other}`; supported: default, linear, yarn, llama3"
            )))
        }
    })
}

/// The fields of `config.json` a Llama model needs, checked one by one.
struct ConfigReader<'a> {
    obj: &'a Map<String, Json>,
    path: &'a str,
}

impl ConfigReader<'_> {
    fn err(&self, msg: impl std::fmt::Display) -> Error {
        Error::invalid(format!("{}: {msg}", self.path))
    }
    fn get(&self, key: &str) -> Option<&Json> {
        self.obj.get(key).filter(|v| !v.is_null())
    }
    fn opt_usize(&self, key: &str) -> Result<Option<usize>> {
        match self.get(key) {
            None => Ok(None),
            Some(v) => v
                .as_u64()
                .and_then(|n| usize::try_from(n).ok())
                .map(Some)
                .ok_or_else(|| self.err(format!("field `{key}` must be a non-negative integer, found {v}"))),
        }
    }
    fn usize(&self, key: &str) -> Result<usize> {
        self.opt_usize(key)?
            .ok_or_else(|| self.err(format!("field `{key}` is missing (a Llama config needs it)")))
    }
    fn opt_f64(&self, key: &str) -> Result<Option<f64>> {
        match self.get(key) {
            None => Ok(None),
            Some(v) => v
                .as_f64()
                .map(Some)
                .ok_or_else(|| self.err(format!("field `{key}` must be a number, found {v}"))),
        }
    }
    fn opt_bool(&self, key: &str) -> Result<Option<bool>> {
        match self.get(key) {
            None => Ok(None),
            Some(v) => v
                .as_bool()
                .map(Some)
                .ok_or_else(|| self.err(format!("field `{key}` must be true or false, found {v}"))),
        }
    }
    /// A token id or a list of them (`eos_token_id` may be either).
    fn ids(&self, key: &str) -> Result<Vec<u32>> {
        let bad = |v: &Json| self.err(format!("field `{key}` must be a token id or a list of them, found {v}"));
        let one = |v: &Json| v.as_u64().and_then(|n| u32::try_from(n).ok()).ok_or_else(|| bad(v));
        match self.get(key) {
            None => Ok(Vec::new()),
            Some(Json::Array(a)) => a.iter().map(one).collect(),
            Some(v) => Ok(vec![one(v)?]),
        }
    }
}

/// What `config.json` holds beyond the decoder's hyper-parameters.
#[derive(Debug, Clone)]
struct HfConfig {
    llama: LlamaConfig,
    tie_word_embeddings: Option<bool>,
    bos: Option<u32>,
    eos: Vec<u32>,
}

fn read_json(path: &Path) -> Result<Json> {
    let text = std::fs::read_to_string(path).map_err(|e| Error::Io {
        path: path.display().to_string(),
        source: e,
    })?;
    serde_json::from_str(&text).map_err(|e| Error::invalid(format!("{}: not valid JSON: {e}", path.display())))
}

fn parse_config(json: &Json, path: &str) -> Result<HfConfig> {
    let obj = json
        .as_object()
        .ok_or_else(|| Error::invalid(format!("{path}: expected a JSON object")))?;
    let c = ConfigReader { obj, path };
    let model_type = match c.get("model_type") {
        None => None,
        Some(v) => Some(
            v.as_str()
                .ok_or_else(|| c.err(format!("field `model_type` must be a string, found {v}")))?,
        ),
    };
    if let Some(t) = model_type.filter(|&t| t != "llama") {
        return Err(c.err(format!(
            "field `model_type` is `{t}`; only Llama-family models (`llama`, LlamaForCausalLM) are supported"
        )));
    }
    match c.get("architectures") {
        Some(Json::Array(a)) if a.iter().any(|v| v.as_str() == Some("LlamaForCausalLM")) => {}
        Some(v) => {
            return Err(c.err(format!(
                "field `architectures` is {v}; only Llama-family models (LlamaForCausalLM) are supported"
            )))
        }
        None if model_type.is_some() => {}
        None => {
            return Err(c.err(
                "neither field `model_type` nor field `architectures` says which model this is (`llama` is supported)",
            ))
        }
    }
    if let Some(act) = c.get("hidden_act").filter(|a| a.as_str() != Some("silu")) {
        return Err(c.err(format!("field `hidden_act` is {act}; the Llama MLP needs `silu`")));
    }
    for key in ["attention_bias", "mlp_bias"] {
        if c.opt_bool(key)? == Some(true) {
            return Err(c.err(format!("field `{key}` is true; biases are not supported yet")));
        }
    }
    let dim = c.usize("hidden_size")?;
    let n_heads = c.usize("num_attention_heads")?;
    let n_kv_heads = c.opt_usize("num_key_value_heads")?.unwrap_or(n_heads);
    if n_heads == 0 || n_kv_heads == 0 || n_heads % n_kv_heads != 0 {
        return Err(c.err(format!(
            "fields `num_attention_heads` ({n_heads}) and `num_key_value_heads` ({n_kv_heads}): \
             the query heads must be a positive multiple of the key/value heads"
        )));
    }
    let head_dim = match c.opt_usize("head_dim")? {
        Some(h) => h,
        None if dim % n_heads == 0 => dim / n_heads,
        None => {
            return Err(c.err(format!(
                "field `hidden_size` ({dim}) is not a multiple of `num_attention_heads` ({n_heads}) and there is no `head_dim`"
            )))
        }
    };
    if head_dim == 0 || !head_dim.is_multiple_of(2) {
        return Err(c.err(format!(
            "the head size {head_dim} must be even and positive (RoPE rotates pairs)"
        )));
    }
    let rope_base = c.opt_f64("rope_theta")?.unwrap_or(10000.0);
    let train_ctx = c.opt_usize("max_position_embeddings")?.unwrap_or(2048);
    let (rope_scaling, rope_freq_factors) = hf_rope_scaling(&c, rope_base, head_dim, train_ctx)?;
    let llama = LlamaConfig {
        n_layers: c.usize("num_hidden_layers")?,
        dim,
        n_heads,
        n_kv_heads,
        head_dim,
        ffn_dim: c.usize("intermediate_size")?,
        vocab: c.usize("vocab_size")?,
        eps: c
            .opt_f64("rms_norm_eps")?
            .ok_or_else(|| c.err("field `rms_norm_eps` is missing (a Llama config needs it)"))?,
        rope_base,
        train_ctx,
        rope_style: RopeStyle::Adjacent,
        rope_scaling,
        rope_freq_factors,
        qkv_bias: false,
    };
    if llama.dim == 0 || llama.ffn_dim == 0 || llama.vocab == 0 {
        return Err(c.err("fields `hidden_size`, `intermediate_size` and `vocab_size` must be positive"));
    }
    let bos = c.ids("bos_token_id")?.first().copied();
    Ok(HfConfig {
        llama,
        tie_word_embeddings: c.opt_bool("tie_word_embeddings")?,
        bos,
        eos: c.ids("eos_token_id")?,
    })
}

/// One memory-mapped safetensors file, its header parsed and checked.
struct Shard {
    path: String,
    map: Arc<memmap2::Mmap>,
    /// Where the data section starts (8 + header length).
    data_start: usize,
    tensors: HashMap<String, TensorInfo>,
}

/// Bytes per element of the dtypes this loader reads.
fn elem_bytes(dtype: Dtype) -> Option<usize> {
    match dtype {
        Dtype::F32 => Some(4),
        Dtype::F16 | Dtype::BF16 => Some(2),
        _ => None,
    }
}

/// Names the first tensor whose header entry is inconsistent, for errors the
/// safetensors crate reports without a name.
fn diagnose_header(header: &[u8], data_len: usize) -> Option<String> {
    let json: Json = serde_json::from_slice(header).ok()?;
    for (name, entry) in json.as_object()? {
        if name == "__metadata__" {
            continue;
        }
        let Ok(info) = serde_json::from_value::<TensorInfo>(entry.clone()) else {
            return Some(format!("tensor `{name}`: malformed entry {entry}"));
        };
        let numel = info.shape.iter().try_fold(1usize, |a, &d| a.checked_mul(d));
        let bytes = numel.and_then(|n| n.checked_mul(info.dtype.bitsize()).map(|b| b.div_ceil(8)));
        let (start, end) = info.data_offsets;
        if end < start || Some(end - start) != bytes {
            return Some(format!(
                "tensor `{name}`: data offsets {start}..{end} do not hold shape {:?} in {:?}",
                info.shape, info.dtype
            ));
        }
        if end > data_len {
            return Some(format!(
                "tensor `{name}`: data offsets {start}..{end} run past the {data_len} bytes of data"
            ));
        }
    }
    None
}

impl Shard {
    fn open(path: &Path) -> Result<Shard> {
        let name = path.display().to_string();
        let io = |e: std::io::Error| Error::Io {
            path: name.clone(),
            source: e,
        };
        let file = std::fs::File::open(path).map_err(io)?;
        let len = file.metadata().map_err(io)?.len();
        if len < 8 {
            return Err(Error::format(
                &name,
                0,
                format!("the file is {len} bytes; a safetensors file starts with an 8-byte header length"),
            ));
        }
        // SAFETY: the mapping is read-only; like every reader of model files we
        // assume the file is not truncated or rewritten while mapped.
        let map = unsafe { memmap2::Mmap::map(&file) }.map_err(io)?;
        let header_len = u64::from_le_bytes(<[u8; 8]>::try_from(&map[..8]).expect("8 bytes"));
        let data_start = usize::try_from(header_len)
            .ok()
            .and_then(|n| n.checked_add(8))
            .filter(|&s| s <= map.len())
            .ok_or_else(|| {
                Error::format(
                    &name,
                    0,
                    format!(
                        "header length {header_len} runs past the end of the {} byte file (truncated?)",
                        map.len()
                    ),
                )
            })?;
        let (_, metadata) = SafeTensors::read_metadata(&map).map_err(|e| {
            let why = diagnose_header(&map[8..data_start], map.len() - data_start).unwrap_or_else(|| e.to_string());
            Error::format(&name, 8, format!("invalid safetensors header: {why}"))
        })?;
        let tensors = metadata.tensors().into_iter().map(|(k, v)| (k, v.clone())).collect();
        Ok(Shard {
            path: name,
            map: Arc::new(map),
            data_start,
            tensors,
        })
    }

    /// The tensor `name` as f32, checked against `expected` (shape) when given.
    fn dense(&self, name: &str, expected: Option<&[usize]>) -> Result<Tensor> {
        let err = |msg: String| Error::invalid(format!("{}: tensor `{name}`: {msg}", self.path));
        let info = self
            .tensors
            .get(name)
            .ok_or_else(|| err("is not in this file".into()))?;
        let elem = elem_bytes(info.dtype).ok_or_else(|| {
            err(format!(
                "dtype {:?} is not supported (F32, F16 and BF16 are)",
                info.dtype
            ))
        })?;
        if let Some(want) = expected.filter(|&w| w != info.shape.as_slice()) {
            return Err(err(format!("has shape {:?}, the config needs {want:?}", info.shape)));
        }
        let bytes = info
            .shape
            .iter()
            .try_fold(elem, |a, &d| a.checked_mul(d))
            .ok_or_else(|| err(format!("shape {:?} overflows", info.shape)))?;
        let (start, end) = info.data_offsets;
        if end < start || end - start != bytes {
            return Err(err(format!(
                "data offsets {start}..{end} do not hold shape {:?} in {:?} ({bytes} bytes)",
                info.shape, info.dtype
            )));
        }
        let (at, stop) = (self.data_start + start, self.data_start + end);
        if stop > self.map.len() {
            return Err(err(format!(
                "data offsets {start}..{end} run past the end of the {} byte file",
                self.map.len()
            )));
        }
        let raw = &self.map[at..stop];
        let data: Vec<f32> = match info.dtype {
            Dtype::F32 => {
                // Used in place (copied only if the mapping is misaligned).
                let buffer = Buffer::from_external(self.map.clone(), at, bytes)?;
                return Ok(Tensor::from_buffer(buffer, DType::F32, &info.shape));
            }
            Dtype::F16 => raw
                .chunks_exact(2)
                .map(|b| half::f16::from_le_bytes([b[0], b[1]]).to_f32())
                .collect(),
            _ => raw
                .chunks_exact(2)
                .map(|b| half::bf16::from_le_bytes([b[0], b[1]]).to_f32())
                .collect(),
        };
        Tensor::from_vec(data, &info.shape)
    }
}

/// A file name from a shard index, refused if it leaves the model directory.
fn shard_path(dir: &Path, index: &Path, file: &str) -> Result<PathBuf> {
    let p = Path::new(file);
    if file.is_empty() || !p.components().all(|c| matches!(c, Component::Normal(_))) {
        return Err(Error::invalid(format!(
            "{}: shard file `{file}` must be a plain name inside the model directory",
            index.display()
        )));
    }
    Ok(dir.join(p))
}

/// The shards of a directory and which shard holds each tensor.
fn open_weights(dir: &Path) -> Result<(Vec<Shard>, HashMap<String, usize>)> {
    let single = dir.join("model.safetensors");
    let index_path = dir.join("model.safetensors.index.json");
    if single.is_file() {
        let shard = Shard::open(&single)?;
        let names = shard.tensors.keys().map(|k| (k.clone(), 0)).collect();
        return Ok((vec![shard], names));
    }
    if !index_path.is_file() {
        return Err(Error::invalid(format!(
            "{}: neither model.safetensors nor model.safetensors.index.json is here",
            dir.display()
        )));
    }
    let index = read_json(&index_path)?;
    let map = index
        .get("weight_map")
        .and_then(Json::as_object)
        .ok_or_else(|| Error::invalid(format!("{}: `weight_map` is missing", index_path.display())))?;
    // Each tensor's file, and each file's shard number (in name order).
    let mut files: BTreeMap<&str, usize> = BTreeMap::new();
    let mut tensor_files = Vec::with_capacity(map.len());
    for (name, file) in map {
        let file = file.as_str().ok_or_else(|| {
            Error::invalid(format!(
                "{}: `weight_map` entry `{name}` is {file}, not a file name",
                index_path.display()
            ))
        })?;
        files.insert(file, 0);
        tensor_files.push((name, file));
    }
    let mut shards = Vec::with_capacity(files.len());
    for (i, (file, slot)) in files.iter_mut().enumerate() {
        shards.push(Shard::open(&shard_path(dir, &index_path, file)?)?);
        *slot = i;
    }
    let mut which = HashMap::with_capacity(tensor_files.len());
    for (name, file) in tensor_files {
        let i = files[file];
        if !shards[i].tensors.contains_key(name) {
            return Err(Error::invalid(format!(
                "{}: tensor `{name}` is mapped to {}, which does not hold it",
                index_path.display(),
                shards[i].path
            )));
        }
        which.insert(name.clone(), i);
    }
    Ok((shards, which))
}

/// The chat template of a Hugging Face directory: tokenizer_config.json's
/// `chat_template` (a string, or a list of named ones: `default` or the
/// first), else `chat_template.jinja`, else ChatML.
fn chat_template(dir: &Path, tokenizer_config: Option<&Json>) -> Result<ChatTemplate> {
    if let Some(t) = tokenizer_config.and_then(|c| c.get("chat_template")) {
        let text = match t {
            Json::String(s) => Some(s.clone()),
            Json::Array(list) => list
                .iter()
                .find(|e| e.get("name").and_then(Json::as_str) == Some("default"))
                .or(list.first())
                .and_then(|e| e.get("template").and_then(Json::as_str))
                .map(str::to_string),
            _ => None,
        };
        return text.map(ChatTemplate::Jinja).ok_or_else(|| {
            Error::invalid(format!(
                "{}: `chat_template` is neither a string nor a list of {{name, template}}",
                dir.join("tokenizer_config.json").display()
            ))
        });
    }
    let jinja = dir.join("chat_template.jinja");
    if jinja.is_file() {
        let text = std::fs::read_to_string(&jinja).map_err(|e| Error::Io {
            path: jinja.display().to_string(),
            source: e,
        })?;
        return Ok(ChatTemplate::Jinja(text));
    }
    Ok(ChatTemplate::ChatMl)
}

/// End-of-sequence tokens, by name, for checkpoints whose configs name none.
const EOS_NAMES: [&str; 3] = ["<|im_end|>", "</s>", "<|endoftext|>"];

/// A Hugging Face Llama-layout model directory, memory-mapped.
pub struct HfModel {
    dir: PathBuf,
    config: HfConfig,
    shards: Vec<Shard>,
    /// Hugging Face tensor name → shard.
    index: HashMap<String, usize>,
    tokenizer: Option<Tokenizer>,
    template: ChatTemplate,
}

impl std::fmt::Debug for HfModel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HfModel")
            .field("dir", &self.dir)
            .field("config", &self.config.llama)
            .field("shards", &self.shards.len())
            .field("tensors", &self.index.len())
            .finish()
    }
}

impl HfModel {
    /// True when `dir` looks like a Hugging Face checkpoint (config.json and safetensors weights).
    pub fn is_hf_dir(dir: &Path) -> bool {
        dir.join("config.json").is_file()
            && (dir.join("model.safetensors").is_file() || dir.join("model.safetensors.index.json").is_file())
    }

    /// Opens `dir`: config.json, the safetensors weights (one file or an
    /// index and shards), and tokenizer.json when present (with the special
    /// ids of config.json, generation_config.json and tokenizer_config.json).
    pub fn open(dir: impl AsRef<Path>) -> Result<HfModel> {
        let dir = dir.as_ref();
        let config_path = dir.join("config.json");
        let config = parse_config(&read_json(&config_path)?, &config_path.display().to_string())?;
        let (shards, index) = open_weights(dir)?;
        let optional_json = |name: &str| -> Result<Option<Json>> {
            let p = dir.join(name);
            if p.is_file() {
                read_json(&p).map(Some)
            } else {
                Ok(None)
            }
        };
        let tokenizer_config = optional_json("tokenizer_config.json")?;
        let tokenizer_path = dir.join("tokenizer.json");
        let tokenizer = if tokenizer_path.is_file() {
            let mut t = Tokenizer::from_file(&tokenizer_path)?;
            let mut eos = config.eos.clone();
            if let Some(g) = optional_json("generation_config.json")? {
                let p = dir.join("generation_config.json").display().to_string();
                let reader = ConfigReader {
                    obj: g
                        .as_object()
                        .ok_or_else(|| Error::invalid(format!("{p}: expected a JSON object")))?,
                    path: &p,
                };
                let more = reader.ids("eos_token_id")?;
                if !more.is_empty() {
                    eos = more;
                }
            }
            if eos.is_empty() {
                eos = EOS_NAMES.iter().filter_map(|n| t.token_id(n)).take(1).collect();
            }
            let add_bos = tokenizer_config
                .as_ref()
                .and_then(|c| c.get("add_bos_token"))
                .and_then(Json::as_bool);
            t.set_special_ids(config.bos, &eos, add_bos);
            Some(t)
        } else {
            None
        };
        let template = chat_template(dir, tokenizer_config.as_ref())?;
        let model = HfModel {
            dir: dir.to_path_buf(),
            config,
            shards,
            index,
            tokenizer,
            template,
        };
        if model.config.tie_word_embeddings == Some(false) && !model.index.contains_key("lm_head.weight") {
            return Err(Error::invalid(format!(
                "{}: `tie_word_embeddings` is false but no shard holds lm_head.weight",
                config_path.display()
            )));
        }
        Ok(model)
    }

    /// The decoder's hyper-parameters.
    pub fn config(&self) -> &LlamaConfig {
        &self.config.llama
    }

    /// The tokenizer (tokenizer.json), if the directory has one.
    pub fn tokenizer(&self) -> Result<&Tokenizer> {
        self.tokenizer
            .as_ref()
            .ok_or_else(|| Error::invalid(format!("{}: tokenizer.json is missing", self.dir.display())))
    }

    /// The chat template (tokenizer_config.json's, else ChatML).
    pub fn chat_template(&self) -> &ChatTemplate {
        &self.template
    }

    /// Names of the tensors in the checkpoint (Hugging Face names), sorted.
    pub fn tensor_names(&self) -> Vec<&str> {
        let mut v: Vec<&str> = self.index.keys().map(String::as_str).collect();
        v.sort_unstable();
        v
    }

    /// True when the output head reuses the token embedding.
    fn tied(&self) -> bool {
        self.config
            .tie_word_embeddings
            .unwrap_or(!self.index.contains_key("lm_head.weight"))
    }
}

impl WeightSource for HfModel {
    fn weight(&self, name: &str) -> Result<Option<Weight>> {
        if name == "output.weight" && self.tied() {
            return Ok(None);
        }
        let Some(hf) = hf_name(name) else {
            return Ok(None);
        };
        let Some(&shard) = self.index.get(&hf) else {
            return Ok(None);
        };
        let cfg = &self.config.llama;
        let t = self.shards[shard].dense(&hf, expected_shape(cfg, name).as_deref())?;
        let Some(heads) = rope_heads(cfg, name) else {
            return Ok(Some(Weight::Dense(t)));
        };
        let shape = t.shape().to_vec();
        if shape.len() != 2 || shape[0] != heads * cfg.head_dim {
            return Err(Error::invalid(format!(
                "{}: tensor `{hf}` has shape {shape:?}; {heads} heads of {} rows were expected",
                self.shards[shard].path, cfg.head_dim
            )));
        }
        let data = permute_rows(t.as_slice::<f32>()?, shape[1], cfg.head_dim, true);
        Ok(Some(Weight::Dense(Tensor::from_vec(data, &shape)?)))
    }
}

/// A weight's values as f32, row-major, with its logical shape.
fn weight_f32(w: &Weight, name: &str) -> Result<(Vec<f32>, Vec<usize>)> {
    match w {
        Weight::Dense(t) if t.dtype() == DType::F32 => Ok((t.to_vec::<f32>()?, t.shape().to_vec())),
        Weight::Dense(t) => Ok((
            t.to_f64_vec().into_iter().map(|v| v as f32).collect(),
            t.shape().to_vec(),
        )),
        Weight::Quant { packed, format, shape } => {
            let cols = *shape
                .last()
                .ok_or_else(|| Error::invalid(format!("weight `{name}` has an empty shape")))?;
            let rows: usize = shape[..shape.len() - 1].iter().product();
            if rows == 0 || cols == 0 {
                return Ok((Vec::new(), shape.clone()));
            }
            let row_bytes = format.row_bytes(cols)?;
            let bytes = packed.to_vec::<u8>()?;
            if bytes.len() != rows * row_bytes {
                return Err(Error::invalid(format!(
                    "weight `{name}`: {} packed bytes, {rows} rows of {row_bytes} expected",
                    bytes.len()
                )));
            }
            let mut out = vec![0f32; rows * cols];
            out.par_chunks_mut(cols)
                .zip(bytes.par_chunks(row_bytes))
                .try_for_each(|(o, b)| dequantize_row(*format, b, o))?;
            Ok((out, shape.clone()))
        }
    }
}

/// An f32 tensor for the safetensors writer.
struct F32View {
    shape: Vec<usize>,
    data: Vec<f32>,
}

impl View for &F32View {
    fn dtype(&self) -> Dtype {
        Dtype::F32
    }
    fn shape(&self) -> &[usize] {
        &self.shape
    }
    fn data(&self) -> Cow<'_, [u8]> {
        Cow::Owned(self.data.iter().flat_map(|v| v.to_le_bytes()).collect())
    }
    fn data_len(&self) -> usize {
        self.data.len() * 4
    }
}

fn write_json(path: &Path, value: &Json) -> Result<()> {
    let text = serde_json::to_string_pretty(value).map_err(|e| Error::invalid(format!("{}: {e}", path.display())))?;
    std::fs::write(path, text + "\n").map_err(|e| Error::Io {
        path: path.display().to_string(),
        source: e,
    })
}

/// Writes `weights` (GGUF names and layout, dense or quantized) as a Hugging
/// Face Llama checkpoint in `dir`: config.json, generation_config.json,
/// tokenizer.json, tokenizer_config.json and model.safetensors in f32, with
/// quantized weights dequantized and the `q`/`k` rows permuted to the
/// `rotate_half` layout. The output head is written only when the source has
/// one (`tie_word_embeddings` otherwise).
pub fn write_hf_dir(dir: &Path, cfg: &LlamaConfig, weights: &dyn WeightSource, tokenizer: &Tokenizer) -> Result<()> {
    std::fs::create_dir_all(dir).map_err(|e| Error::Io {
        path: dir.display().to_string(),
        source: e,
    })?;
    // Only the plain Llama layout is written: its config.json has no fields for the variants yet.
    let plain = cfg.rope_style == RopeStyle::Adjacent
        && cfg.rope_scaling == RopeScaling::None
        && cfg.rope_freq_factors.is_none()
        && !cfg.qkv_bias;
    if !plain {
        return Err(Error::invalid(
            "writing a Hugging Face directory supports plain Llama models only (no RoPE scaling, frequency factors, NeoX RoPE or Q/K/V biases)",
        ));
    }
    let tied = weights.weight("output.weight")?.is_none();
    let mut tensors = Vec::new();
    for name in gguf_names(cfg, !tied) {
        let w = weights
            .weight(&name)?
            .ok_or_else(|| Error::invalid(format!("weight `{name}` is missing from the model")))?;
        let (data, shape) = weight_f32(&w, &name)?;
        let want = expected_shape(cfg, &name).expect("every name of gguf_names has a shape");
        if shape != want {
            return Err(Error::invalid(format!(
                "weight `{name}` has shape {shape:?}, the config needs {want:?}"
            )));
        }
        let data = match rope_heads(cfg, &name) {
            Some(_) => permute_rows(&data, shape[1], cfg.head_dim, false),
            None => data,
        };
        let hf = hf_name(&name).expect("every name of gguf_names has a Hugging Face name");
        tensors.push((hf, F32View { shape, data }));
    }
    let path = dir.join("model.safetensors");
    safetensors::serialize_to_file(
        tensors.iter().map(|(n, v)| (n.as_str(), v)),
        Some(HashMap::from([("format".to_string(), "pt".to_string())])),
        &path,
    )
    .map_err(|e| Error::invalid(format!("{}: {e}", path.display())))?;

    // The main EOS first (readers take it as the EOS), then the other end-of-generation ids.
    let mut eog: Vec<u32> = tokenizer.eos().into_iter().collect();
    eog.extend(tokenizer.eog_ids().iter().filter(|&&i| Some(i) != tokenizer.eos()));
    write_json(
        &dir.join("config.json"),
        &json!({
            "architectures": ["LlamaForCausalLM"],
            "model_type": "llama",
            "hidden_act": "silu",
            "hidden_size": cfg.dim,
            "intermediate_size": cfg.ffn_dim,
            "num_attention_heads": cfg.n_heads,
            "num_key_value_heads": cfg.n_kv_heads,
            "head_dim": cfg.head_dim,
            "num_hidden_layers": cfg.n_layers,
            "vocab_size": cfg.vocab,
            "rms_norm_eps": cfg.eps,
            "rope_theta": cfg.rope_base,
            "max_position_embeddings": cfg.train_ctx,
            "tie_word_embeddings": tied,
            "bos_token_id": tokenizer.bos(),
            "eos_token_id": tokenizer.eos(),
            "torch_dtype": "float32",
        }),
    )?;
    write_json(
        &dir.join("generation_config.json"),
        &json!({ "bos_token_id": tokenizer.bos(), "eos_token_id": eog }),
    )?;
    let name = |id: Option<u32>| id.and_then(|i| tokenizer.token(i));
    write_json(
        &dir.join("tokenizer_config.json"),
        &json!({
            "add_bos_token": tokenizer.adds_bos(),
            "bos_token": name(tokenizer.bos()),
            "eos_token": name(tokenizer.eos()),
        }),
    )?;
    let path = dir.join("tokenizer.json");
    std::fs::write(&path, tokenizer.to_json()?).map_err(|e| Error::Io {
        path: path.display().to_string(),
        source: e,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{Rng, SeedableRng};
    use rand_chacha::ChaCha8Rng;

    fn tiny_cfg() -> LlamaConfig {
        LlamaConfig {
            n_layers: 2,
            dim: 8,
            n_heads: 2,
            n_kv_heads: 1,
            head_dim: 4,
            ffn_dim: 12,
            vocab: 3,
            eps: 1e-5,
            rope_base: 10000.0,
            train_ctx: 64,
            rope_style: RopeStyle::Adjacent,
            rope_scaling: RopeScaling::None,
            rope_freq_factors: None,
            qkv_bias: false,
        }
    }

    fn random(rng: &mut ChaCha8Rng, n: usize) -> Vec<f32> {
        (0..n).map(|_| rng.gen_range(-1.0f32..1.0)).collect()
    }

    /// Random dense weights in GGUF names and layout.
    struct MapSource(BTreeMap<String, Tensor>);

    impl WeightSource for MapSource {
        fn weight(&self, name: &str) -> Result<Option<Weight>> {
            Ok(self.0.get(name).cloned().map(Weight::Dense))
        }
    }

    fn random_source(cfg: &LlamaConfig, with_output: bool, seed: u64) -> MapSource {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let map = gguf_names(cfg, with_output)
            .into_iter()
            .map(|n| {
                let shape = expected_shape(cfg, &n).unwrap();
                let data = random(&mut rng, shape.iter().product());
                (n, Tensor::from_vec(data, &shape).unwrap())
            })
            .collect();
        MapSource(map)
    }

    const TINY_TOKENIZER: &str = r#"{"version":"1.0","truncation":null,"padding":null,
        "added_tokens":[{"id":2,"content":"</s>","single_word":false,"lstrip":false,"rstrip":false,"normalized":false,"special":true}],
        "normalizer":null,"pre_tokenizer":null,"post_processor":null,"decoder":null,
        "model":{"type":"WordLevel","vocab":{"a":0,"b":1,"</s>":2},"unk_token":"a"}}"#;

    fn tiny_tokenizer(dir: &Path) -> Tokenizer {
        let p = dir.join("tiny-tokenizer.json");
        std::fs::write(&p, TINY_TOKENIZER).unwrap();
        Tokenizer::from_file(&p).unwrap()
    }

    /// A tensor to write by hand: raw little-endian bytes in any dtype.
    struct RawView(Dtype, Vec<usize>, Vec<u8>);

    impl View for &RawView {
        fn dtype(&self) -> Dtype {
            self.0
        }
        fn shape(&self) -> &[usize] {
            &self.1
        }
        fn data(&self) -> Cow<'_, [u8]> {
            Cow::Borrowed(&self.2)
        }
        fn data_len(&self) -> usize {
            self.2.len()
        }
    }

    fn write_raw(path: &Path, tensors: &[(&str, RawView)]) {
        safetensors::serialize_to_file(tensors.iter().map(|(n, v)| (*n, v)), None, path).unwrap();
    }

    fn f32_bytes(v: &[f32]) -> Vec<u8> {
        v.iter().flat_map(|x| x.to_le_bytes()).collect()
    }

    /// Adjacent-pair RoPE (the GGUF graph's) of one head-split vector.
    fn rope_pairs(v: &[f32], hd: usize, pos: f64) -> Vec<f64> {
        let mut out = vec![0f64; v.len()];
        for h in 0..v.len() / hd {
            for j in 0..hd / 2 {
                let t = pos * 10000f64.powf(-2.0 * j as f64 / hd as f64);
                let (a, b) = (v[h * hd + 2 * j] as f64, v[h * hd + 2 * j + 1] as f64);
                out[h * hd + 2 * j] = a * t.cos() - b * t.sin();
                out[h * hd + 2 * j + 1] = a * t.sin() + b * t.cos();
            }
        }
        out
    }

    /// Hugging Face's `q * cos + rotate_half(q) * sin`, cos/sin repeated over both halves.
    fn rope_rotate_half(v: &[f32], hd: usize, pos: f64) -> Vec<f64> {
        let half = hd / 2;
        let mut out = vec![0f64; v.len()];
        for h in 0..v.len() / hd {
            for i in 0..hd {
                let t = pos * 10000f64.powf(-2.0 * (i % half) as f64 / hd as f64);
                let rot = if i < half {
                    -v[h * hd + i + half]
                } else {
                    v[h * hd + i - half]
                };
                out[h * hd + i] = v[h * hd + i] as f64 * t.cos() + rot as f64 * t.sin();
            }
        }
        out
    }

    fn matvec(w: &[f32], x: &[f32]) -> Vec<f32> {
        w.chunks_exact(x.len())
            .map(|r| r.iter().zip(x).map(|(a, b)| a * b).sum())
            .collect()
    }

    #[test]
    fn permuted_q_and_k_give_the_same_attention_scores_under_adjacent_pair_rope() {
        // Scores q(p1)·k(p2) per head computed the Hugging Face way on HF weights
        // must equal those of the GGUF graph's RoPE on the permuted weights.
        let (heads, hd, cols) = (3, 8, 5);
        let mut rng = ChaCha8Rng::seed_from_u64(7);
        let wq = random(&mut rng, heads * hd * cols);
        let wk = random(&mut rng, heads * hd * cols);
        let (x1, x2) = (random(&mut rng, cols), random(&mut rng, cols));
        let (gq, gk) = (permute_rows(&wq, cols, hd, true), permute_rows(&wk, cols, hd, true));
        assert_ne!(gq, wq, "the permutation moves rows");
        assert_eq!(permute_rows(&gq, cols, hd, false), wq, "the inverse undoes it");
        for (p1, p2) in [(3.0, 1.0), (17.0, 16.0), (40.0, 2.0)] {
            let hq = rope_rotate_half(&matvec(&wq, &x1), hd, p1);
            let hk = rope_rotate_half(&matvec(&wk, &x2), hd, p2);
            let aq = rope_pairs(&matvec(&gq, &x1), hd, p1);
            let ak = rope_pairs(&matvec(&gk, &x2), hd, p2);
            for h in 0..heads {
                let dot = |a: &[f64], b: &[f64]| -> f64 { (h * hd..(h + 1) * hd).map(|i| a[i] * b[i]).sum() };
                let (want, got) = (dot(&hq, &hk), dot(&aq, &ak));
                assert!((want - got).abs() < 1e-4, "head {h} at {p1}/{p2}: {want} vs {got}");
            }
        }
        // Without the permutation the scores differ: the test can fail.
        let aq = rope_pairs(&matvec(&wq, &x1), hd, 3.0);
        let ak = rope_pairs(&matvec(&wk, &x2), hd, 1.0);
        let hq = rope_rotate_half(&matvec(&wq, &x1), hd, 3.0);
        let hk = rope_rotate_half(&matvec(&wk, &x2), hd, 1.0);
        let d = |a: &[f64], b: &[f64]| -> f64 { (0..hd).map(|i| a[i] * b[i]).sum() };
        assert!((d(&aq, &ak) - d(&hq, &hk)).abs() > 1e-3);
    }

    #[test]
    fn names_map_to_the_hugging_face_layout() {
        assert_eq!(hf_name("token_embd.weight").unwrap(), "model.embed_tokens.weight");
        assert_eq!(
            hf_name("blk.11.attn_k.weight").unwrap(),
            "model.layers.11.self_attn.k_proj.weight"
        );
        assert_eq!(
            hf_name("blk.0.ffn_norm.weight").unwrap(),
            "model.layers.0.post_attention_layernorm.weight"
        );
        assert_eq!(
            hf_name("blk.3.ffn_down.weight").unwrap(),
            "model.layers.3.mlp.down_proj.weight"
        );
        assert_eq!(hf_name("output.weight").unwrap(), "lm_head.weight");
        assert!(hf_name("blk.x.attn_q.weight").is_none() && hf_name("rope_freqs.weight").is_none());
    }

    #[test]
    fn written_directories_read_back_bit_exact_with_hf_layout_on_disk() {
        let cfg = tiny_cfg();
        for with_output in [false, true] {
            let dir = tempfile::tempdir().unwrap();
            let src = random_source(&cfg, with_output, 11);
            let tok = tiny_tokenizer(dir.path());
            let out = dir.path().join("hf");
            write_hf_dir(&out, &cfg, &src, &tok).unwrap();
            let m = HfModel::open(&out).unwrap();
            assert_eq!(m.config(), &cfg);
            assert_eq!(m.tensor_names().contains(&"lm_head.weight"), with_output);
            for name in gguf_names(&cfg, true) {
                let got = m.weight(&name).unwrap();
                match (src.0.get(&name), got) {
                    (None, None) => {}
                    (Some(want), Some(Weight::Dense(t))) => {
                        assert_eq!(t.shape(), want.shape(), "{name}");
                        assert_eq!(t.to_vec::<f32>().unwrap(), want.to_vec::<f32>().unwrap(), "{name}");
                    }
                    (w, g) => panic!("{name}: source {:?}, loaded {:?}", w.is_some(), g.is_some()),
                }
            }
            // On disk, q_proj row j + head_dim/2 of head 0 is GGUF row 1 (the partner of row 0).
            let bytes = std::fs::read(out.join("model.safetensors")).unwrap();
            let st = SafeTensors::deserialize(&bytes).unwrap();
            let q = st.tensor("model.layers.1.self_attn.q_proj.weight").unwrap();
            let q: Vec<f32> = q
                .data()
                .chunks_exact(4)
                .map(|b| f32::from_le_bytes(b.try_into().unwrap()))
                .collect();
            let g = src.0["blk.1.attn_q.weight"].to_vec::<f32>().unwrap();
            let d = cfg.dim;
            assert_eq!(&q[2 * d..3 * d], &g[d..2 * d]);
            assert_eq!(&q[d..2 * d], &g[2 * d..3 * d]);
            assert_eq!(m.tokenizer().unwrap().eos(), Some(2));
        }
    }

    fn write_config(dir: &Path, cfg: &LlamaConfig, drop: &str, set: &[(&str, Json)]) {
        let mut v = json!({
            "architectures": ["LlamaForCausalLM"], "model_type": "llama",
            "hidden_size": cfg.dim, "intermediate_size": cfg.ffn_dim,
            "num_attention_heads": cfg.n_heads, "num_key_value_heads": cfg.n_kv_heads,
            "num_hidden_layers": cfg.n_layers, "vocab_size": cfg.vocab, "rms_norm_eps": cfg.eps,
        });
        let obj = v.as_object_mut().unwrap();
        obj.remove(drop);
        for (k, val) in set {
            obj.insert(k.to_string(), val.clone());
        }
        std::fs::write(dir.join("config.json"), v.to_string()).unwrap();
    }

    /// A directory of the tiny model with one tensor replaced by `(dtype, shape, bytes)`.
    fn dir_with(replace: &str, raw: RawView) -> tempfile::TempDir {
        let cfg = tiny_cfg();
        let dir = tempfile::tempdir().unwrap();
        write_config(dir.path(), &cfg, "", &[]);
        let src = random_source(&cfg, false, 3);
        let mut views: Vec<(String, RawView)> = src
            .0
            .iter()
            .map(|(n, t)| {
                let bytes = f32_bytes(&t.to_vec::<f32>().unwrap());
                (hf_name(n).unwrap(), RawView(Dtype::F32, t.shape().to_vec(), bytes))
            })
            .collect();
        for v in views.iter_mut().filter(|(n, _)| n == replace) {
            v.1 = RawView(raw.0, raw.1.clone(), raw.2.clone());
        }
        let refs: Vec<(&str, RawView)> = views
            .iter()
            .map(|(n, v)| (n.as_str(), RawView(v.0, v.1.clone(), v.2.clone())))
            .collect();
        write_raw(&dir.path().join("model.safetensors"), &refs);
        dir
    }

    #[test]
    fn f16_and_bf16_tensors_are_widened_to_f32() {
        let mut rng = ChaCha8Rng::seed_from_u64(5);
        let vals = random(&mut rng, 8);
        for dtype in [Dtype::F16, Dtype::BF16] {
            let bytes: Vec<u8> = vals
                .iter()
                .flat_map(|&v| match dtype {
                    Dtype::F16 => half::f16::from_f32(v).to_le_bytes(),
                    _ => half::bf16::from_f32(v).to_le_bytes(),
                })
                .collect();
            let dir = dir_with("model.norm.weight", RawView(dtype, vec![8], bytes));
            let m = HfModel::open(dir.path()).unwrap();
            let Some(Weight::Dense(t)) = m.weight("output_norm.weight").unwrap() else {
                panic!("dense")
            };
            let got = t.to_vec::<f32>().unwrap();
            let tol = if dtype == Dtype::F16 { 1e-3 } else { 8e-3 };
            for (g, v) in got.iter().zip(&vals) {
                assert!((g - v).abs() <= tol, "{dtype:?}: {g} vs {v}");
            }
        }
    }

    #[test]
    fn a_tensor_of_the_wrong_shape_or_dtype_is_an_error_naming_file_and_tensor() {
        let name = "model.layers.1.self_attn.k_proj.weight";
        let dir = dir_with(name, RawView(Dtype::F32, vec![4, 9], vec![0; 4 * 9 * 4]));
        let m = HfModel::open(dir.path()).unwrap();
        let err = m.weight("blk.1.attn_k.weight").unwrap_err().to_string();
        assert!(
            err.contains("model.safetensors") && err.contains(name) && err.contains("[4, 9]") && err.contains("[4, 8]"),
            "{err}"
        );
        let dir = dir_with(name, RawView(Dtype::I32, vec![4, 8], vec![0; 4 * 8 * 4]));
        let err = HfModel::open(dir.path())
            .unwrap()
            .weight("blk.1.attn_k.weight")
            .unwrap_err()
            .to_string();
        assert!(err.contains(name) && err.contains("I32"), "{err}");
    }

    #[test]
    fn truncated_files_are_errors_naming_the_file_and_tensor() {
        let dir = dir_with("", RawView(Dtype::F32, vec![], vec![]));
        let path = dir.path().join("model.safetensors");
        let full = std::fs::read(&path).unwrap();
        // Cut inside the header.
        std::fs::write(&path, &full[..40]).unwrap();
        let err = HfModel::open(dir.path()).unwrap_err().to_string();
        assert!(err.contains("model.safetensors") && err.contains("truncated"), "{err}");
        // Shorter than the header length itself.
        std::fs::write(&path, &full[..5]).unwrap();
        let err = HfModel::open(dir.path()).unwrap_err().to_string();
        assert!(
            err.contains("model.safetensors") && err.contains("8-byte header length"),
            "{err}"
        );
        // Cut inside the data: the last tensor runs past the end.
        std::fs::write(&path, &full[..full.len() - 12]).unwrap();
        let err = HfModel::open(dir.path()).unwrap_err().to_string();
        assert!(err.contains("model.safetensors") && err.contains("run past"), "{err}");
        assert!(err.contains("tensor `model."), "{err}");
    }

    #[test]
    fn rope_scaling_maps_to_what_the_gguf_converter_writes() {
        let config = |scaling: Json| {
            json!({
                "architectures": ["LlamaForCausalLM"], "hidden_size": 256, "intermediate_size": 512,
                "num_attention_heads": 2, "num_hidden_layers": 1, "vocab_size": 16, "rms_norm_eps": 1e-5,
                "rope_theta": 500000.0, "max_position_embeddings": 131072, "rope_scaling": scaling,
            })
        };
        let parse = |scaling: Json| parse_config(&config(scaling), "config.json").unwrap().llama;
        // Llama 3.1's values. The expected factors come from the converter's
        // formula evaluated independently in Python (f64):
        //   freq = 1 / 500000 ** (i / 128) for i in 0, 2, …, 126; wavelen = 2π / freq;
        //   1 if wavelen < 8192 / 4, 8 if wavelen > 8192 / 1,
        //   else 1 / ((1 - s) / 8 + s) with s = (8192 / wavelen - 1) / (4 - 1).
        let c = parse(json!({"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
                             "high_freq_factor": 4.0, "original_max_position_embeddings": 8192}));
        assert_eq!(c.rope_scaling, RopeScaling::None);
        let f = c.rope_freq_factors.expect("llama3 gives frequency factors");
        assert_eq!(f.len(), 64);
        let want = [
            (0, 1.0),
            (28, 1.0),
            (29, 1.207483871283662),
            (30, 1.5534146285049255),
            (31, 2.0263132059050557),
            (32, 2.6945296878947333),
            (33, 3.684252527745718),
            (34, 5.257326588708467),
            (35, 8.0),
            (63, 8.0),
        ];
        for (j, v) in want {
            assert!((f[j] as f64 - v).abs() < 1e-6 * v, "factor {j}: {} vs {v}", f[j]);
        }
        // Linear, YaRN (transformers' attention_factor is the whole scale),
        // default and the older `type` key.
        assert_eq!(
            parse(json!({"type": "linear", "factor": 4.0})).rope_scaling,
            RopeScaling::Linear { factor: 4.0 }
        );
        let y = parse(
            json!({"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 32768,
                             "attention_factor": 1.5, "beta_fast": 16.0}),
        );
        match y.rope_scaling {
            RopeScaling::Yarn {
                factor,
                original_ctx,
                attn_factor,
                beta_slow,
                beta_fast,
            } => {
                assert_eq!((factor, original_ctx, beta_slow, beta_fast), (4.0, 32768, 1.0, 16.0));
                assert!((attn_factor * (1.0 + 0.1 * 4f64.ln()) - 1.5).abs() < 1e-12);
            }
            other => panic!("yarn became {other:?}"),
        }
        let d = parse(json!({"rope_type": "default"}));
        assert_eq!((d.rope_scaling, d.rope_freq_factors), (RopeScaling::None, None));
    }

    #[test]
    fn config_errors_name_the_field() {
        let cfg = tiny_cfg();
        let dir = dir_with("", RawView(Dtype::F32, vec![], vec![]));
        // (field to drop, fields to set, what the error must say)
        type Case<'a> = (&'a str, Vec<(&'a str, Json)>, &'a str);
        let cases: [Case; 8] = [
            ("intermediate_size", vec![], "`intermediate_size` is missing"),
            ("", vec![("model_type", json!("gpt2"))], "`model_type` is `gpt2`"),
            (
                "",
                vec![("architectures", json!(["MistralForCausalLM"]))],
                "`architectures`",
            ),
            (
                "",
                vec![("hidden_size", json!(-3))],
                "`hidden_size` must be a non-negative integer",
            ),
            (
                "",
                vec![("rope_scaling", json!({"type": "linear"}))],
                "`rope_scaling.factor` is missing",
            ),
            (
                "",
                vec![("rope_scaling", json!({"rope_type": "dynamic", "factor": 2.0}))],
                "`dynamic`",
            ),
            (
                "",
                vec![(
                    "rope_scaling",
                    json!({"rope_type": "llama3", "factor": 8.0, "high_freq_factor": 4.0,
                           "original_max_position_embeddings": 8192}),
                )],
                "`rope_scaling.low_freq_factor` is missing",
            ),
            (
                "",
                vec![("rope_scaling", json!("linear"))],
                "`rope_scaling` must be an object",
            ),
        ];
        for (drop, set, want) in cases {
            write_config(dir.path(), &cfg, drop, &set);
            let err = HfModel::open(dir.path()).unwrap_err().to_string();
            assert!(err.contains("config.json") && err.contains(want), "{want}: {err}");
        }
        std::fs::write(dir.path().join("config.json"), "{\"hidden_size\": 8,").unwrap();
        let err = HfModel::open(dir.path()).unwrap_err().to_string();
        assert!(err.contains("config.json") && err.contains("not valid JSON"), "{err}");
    }

    #[test]
    fn sharded_checkpoints_load_through_their_index_and_refuse_escaping_paths() {
        let cfg = tiny_cfg();
        let dir = tempfile::tempdir().unwrap();
        write_config(dir.path(), &cfg, "", &[]);
        let src = random_source(&cfg, false, 9);
        let mut shards: [Vec<(String, RawView)>; 2] = [Vec::new(), Vec::new()];
        let mut map = Map::new();
        for (i, (n, t)) in src.0.iter().enumerate() {
            let hf = hf_name(n).unwrap();
            let file = format!("model-0000{}-of-00002.safetensors", i % 2 + 1);
            map.insert(hf.clone(), json!(file));
            let bytes = f32_bytes(&t.to_vec::<f32>().unwrap());
            shards[i % 2].push((hf, RawView(Dtype::F32, t.shape().to_vec(), bytes)));
        }
        for (i, s) in shards.iter().enumerate() {
            let refs: Vec<(&str, RawView)> = s
                .iter()
                .map(|(n, v)| (n.as_str(), RawView(v.0, v.1.clone(), v.2.clone())))
                .collect();
            write_raw(
                &dir.path().join(format!("model-0000{}-of-00002.safetensors", i + 1)),
                &refs,
            );
        }
        let index = dir.path().join("model.safetensors.index.json");
        std::fs::write(&index, json!({ "weight_map": map }).to_string()).unwrap();
        let m = HfModel::open(dir.path()).unwrap();
        let Some(Weight::Dense(t)) = m.weight("blk.1.ffn_up.weight").unwrap() else {
            panic!("dense")
        };
        assert_eq!(
            t.to_vec::<f32>().unwrap(),
            src.0["blk.1.ffn_up.weight"].to_vec::<f32>().unwrap()
        );
        assert!(m.tokenizer().unwrap_err().to_string().contains("tokenizer.json"));
        map.insert("model.norm.weight".into(), json!("../elsewhere.safetensors"));
        std::fs::write(&index, json!({ "weight_map": map }).to_string()).unwrap();
        let err = HfModel::open(dir.path()).unwrap_err().to_string();
        assert!(
            err.contains("../elsewhere.safetensors") && err.contains("plain name"),
            "{err}"
        );
    }
}
