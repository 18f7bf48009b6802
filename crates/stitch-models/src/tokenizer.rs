//! Tokenizers (through the `tokenizers` crate) and chat templates.
//!
//! A [`Tokenizer`] is built from a GGUF file's vocabulary
//! ([`Tokenizer::from_gguf`]: gpt2-style byte-level BPE with merges, with the
//! pre-tokenizer `tokenizer.ggml.pre` names, as llama.cpp maps it; or a
//! SentencePiece vocabulary with scores, `tokenizer.ggml.model = llama`, as
//! llama.cpp's SPM tokenizer reads it) or loaded from a `tokenizer.json`
//! ([`Tokenizer::from_file`]). Control and user-defined tokens (and, for
//! SentencePiece, the unknown token) are registered as special tokens, so that they are
//! recognised when written in a raw prompt (as llama.cpp does with
//! `parse_special`). [`StreamDecoder`] turns generated ids into text without
//! ever splitting a UTF-8 character. [`ChatTemplate`] renders conversations
//! with the template the model carries (Jinja, through `minijinja`), or ChatML.

use std::collections::BTreeSet;

use stitch_core::{Error, Result};
use tokenizers::decoders::byte_fallback::ByteFallback;
use tokenizers::decoders::fuse::Fuse;
use tokenizers::decoders::sequence::Sequence as DecoderSequence;
use tokenizers::decoders::strip::Strip;
use tokenizers::decoders::DecoderWrapper;
use tokenizers::models::bpe::BPE;
use tokenizers::normalizers::{Prepend, Replace, Sequence as NormalizerSequence};
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::pre_tokenizers::sequence::Sequence;
use tokenizers::pre_tokenizers::split::{Split, SplitPattern};
use tokenizers::pre_tokenizers::PreTokenizerWrapper;
use tokenizers::NormalizerWrapper;
use tokenizers::{AddedToken, SplitDelimiterBehavior};

use crate::gguf::{Gguf, Value};

/// A tokenizer with its special ids.
#[derive(Clone)]
pub struct Tokenizer {
    inner: tokenizers::Tokenizer,
    bos: Option<u32>,
    eos: Option<u32>,
    add_bos: bool,
    eog: BTreeSet<u32>,
    vocab_size: usize,
}

impl std::fmt::Debug for Tokenizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tokenizer")
            .field("vocab_size", &self.vocab_size)
            .field("bos", &self.bos)
            .field("eos", &self.eos)
            .field("eog", &self.eog)
            .finish()
    }
}

fn terr(e: impl std::fmt::Display) -> Error {
    Error::invalid(format!("tokenizer: {e}"))
}

/// Token names that end generation wherever they are in a vocabulary (llama.cpp's list, in part).
const EOG_NAMES: [&str; 6] = [
    "<|im_end|>",
    "<|endoftext|>",
    "<|eot_id|>",
    "<|end|>",
    "<end_of_turn>",
    "<|eom_id|>",
];

impl Tokenizer {
    /// Builds the tokenizer a GGUF file describes.
    pub fn from_gguf(g: &Gguf) -> Result<Tokenizer> {
        let model = g.get_str("tokenizer.ggml.model")?;
        let tokens: Vec<String> = g
            .require("tokenizer.ggml.tokens")?
            .as_array()
            .ok_or_else(|| Error::invalid("tokenizer.ggml.tokens is not an array"))?
            .iter()
            .map(|v| v.as_str().map(str::to_string))
            .collect::<Option<_>>()
            .ok_or_else(|| Error::invalid("tokenizer.ggml.tokens holds a non-string"))?;
        let types: Vec<i64> = match g.get("tokenizer.ggml.token_type") {
            None => Vec::new(),
            Some(v) => v
                .as_array()
                .and_then(|a| a.iter().map(|v| v.as_f64().map(|t| t as i64)).collect())
                .ok_or_else(|| Error::invalid("tokenizer.ggml.token_type is not an array of integers"))?,
        };
        if !types.is_empty() && types.len() != tokens.len() {
            return Err(Error::invalid(format!(
                "tokenizer.ggml.token_type has {} entries for {} tokens",
                types.len(),
                tokens.len()
            )));
        }
        let flag = |k: &str| g.get(k).and_then(Value::as_bool);
        let (mut inner, add_bos) = match model {
            "gpt2" => (gpt2_bpe(g, &tokens)?, flag("tokenizer.ggml.add_bos_token").unwrap_or(false)),
            // llama.cpp's SPM defaults: BOS added, a space put before the text.
            "llama" => (
                sentencepiece_bpe(g, &tokens, flag("tokenizer.ggml.add_space_prefix").unwrap_or(true))?,
                flag("tokenizer.ggml.add_bos_token").unwrap_or(true),
            ),
            other => {
                return Err(Error::invalid(format!(
                    "{}: tokenizer model `{other}` (tokenizer.ggml.model) is not supported yet (gpt2 BPE and llama SentencePiece are)",
                    g.path()
                )))
            }
        };
        // Tokens matched whole in raw text, as llama.cpp's `parse_special` does:
        // control (3) and user-defined (4), and for SentencePiece also unknown (2).
        let special_types: &[i64] = if model == "llama" { &[2, 3, 4] } else { &[3, 4] };
        let special: Vec<AddedToken> = tokens
            .iter()
            .zip(&types)
            .filter(|(_, t)| special_types.contains(t))
            .map(|(s, _)| AddedToken::from(s.clone(), true))
            .collect();
        inner.add_special_tokens(&special);
        let id = |k: &str| g.get(k).and_then(Value::as_u64).map(|v| v as u32);
        let (mut bos, mut eos) = (id("tokenizer.ggml.bos_token_id"), id("tokenizer.ggml.eos_token_id"));
        if model == "llama" {
            // llama.cpp's defaults for SentencePiece vocabularies.
            bos = bos.or(Some(1));
            eos = eos.or(Some(2));
        }
        let mut eog: BTreeSet<u32> = eos.into_iter().chain(id("tokenizer.ggml.eot_token_id")).collect();
        for name in EOG_NAMES {
            if let Some(i) = tokens.iter().position(|t| t == name) {
                eog.insert(i as u32);
            }
        }
        Ok(Tokenizer {
            inner,
            bos,
            eos,
            add_bos,
            eog,
            vocab_size: tokens.len(),
        })
    }

    /// Loads a Hugging Face `tokenizer.json`.
    pub fn from_file(path: &std::path::Path) -> Result<Tokenizer> {
        let inner = tokenizers::Tokenizer::from_file(path).map_err(|e| terr(format!("{}: {e}", path.display())))?;
        let find = |s: &str| inner.token_to_id(s);
        let eog: BTreeSet<u32> = EOG_NAMES.iter().filter_map(|n| find(n)).collect();
        let vocab_size = inner.get_vocab_size(true);
        Ok(Tokenizer {
            eos: eog.iter().next().copied(),
            bos: None,
            add_bos: false,
            eog,
            inner,
            vocab_size,
        })
    }

    /// Sets the special ids a model's config names (Hugging Face keeps them in
    /// config.json, generation_config.json and tokenizer_config.json rather
    /// than in tokenizer.json): `eos` ids join the end-of-generation set, the
    /// first becoming [`Tokenizer::eos`]. Without `add_bos`, BOS is prepended
    /// when the tokenizer's own post-processor would prepend it.
    pub fn set_special_ids(&mut self, bos: Option<u32>, eos: &[u32], add_bos: Option<bool>) {
        if bos.is_some() {
            self.bos = bos;
        }
        if let Some(&first) = eos.first() {
            self.eos = Some(first);
        }
        self.eog.extend(eos.iter().copied());
        self.add_bos = match (add_bos, self.bos) {
            (Some(on), _) => on,
            (None, Some(b)) => self
                .inner
                .encode("", true)
                .is_ok_and(|e| e.get_ids().first() == Some(&b)),
            (None, None) => false,
        };
    }

    /// The tokenizer as a Hugging Face `tokenizer.json` document.
    pub fn to_json(&self) -> Result<String> {
        self.inner.to_string(true).map_err(terr)
    }

    /// Token ids of `text`. Special tokens written in the text are recognised;
    /// `add_bos` prepends the BOS token when the model asks for it.
    pub fn encode(&self, text: &str, add_bos: bool) -> Result<Vec<u32>> {
        let enc = self.inner.encode(text, false).map_err(terr)?;
        let mut ids = Vec::with_capacity(enc.len() + 1);
        if add_bos && self.add_bos {
            ids.extend(self.bos);
        }
        ids.extend_from_slice(enc.get_ids());
        Ok(ids)
    }

    /// Text of `ids` (special tokens included).
    pub fn decode(&self, ids: &[u32]) -> Result<String> {
        self.inner.decode(ids, false).map_err(terr)
    }

    /// Ids that end generation (EOS, end-of-turn and the like).
    pub fn eog_ids(&self) -> &BTreeSet<u32> {
        &self.eog
    }
    /// The EOS id, if the vocabulary has one.
    pub fn eos(&self) -> Option<u32> {
        self.eos
    }
    /// The BOS id, if the vocabulary has one.
    pub fn bos(&self) -> Option<u32> {
        self.bos
    }
    /// True when [`Tokenizer::encode`] prepends BOS (if asked to).
    pub fn adds_bos(&self) -> bool {
        self.add_bos
    }
    /// Vocabulary size.
    pub fn vocab_size(&self) -> usize {
        self.vocab_size
    }
    /// The id of a token given by its text, as stored.
    pub fn token_id(&self, token: &str) -> Option<u32> {
        self.inner.token_to_id(token)
    }
    /// The text of one token, as stored.
    pub fn token(&self, id: u32) -> Option<String> {
        self.inner.id_to_token(id)
    }
}

/// A gpt2-style byte-level BPE vocabulary with its merges.
fn gpt2_bpe(g: &Gguf, tokens: &[String]) -> Result<tokenizers::Tokenizer> {
    let merges: Vec<(String, String)> = match g.get("tokenizer.ggml.merges").and_then(Value::as_array) {
        Some(m) => m
            .iter()
            .map(|v| {
                let s = v.as_str()?;
                let (a, b) = s.split_once(' ')?;
                Some((a.to_string(), b.to_string()))
            })
            .collect::<Option<_>>()
            .ok_or_else(|| Error::invalid("tokenizer.ggml.merges holds an entry that is not `a b`"))?,
        None => return Err(Error::invalid("tokenizer.ggml.merges is missing (gpt2 BPE needs it)")),
    };
    let vocab: tokenizers::models::bpe::Vocab = tokens.iter().enumerate().map(|(i, t)| (t.clone(), i as u32)).collect();
    let bpe = BPE::builder().vocab_and_merges(vocab, merges).build().map_err(terr)?;
    let mut inner = tokenizers::Tokenizer::new(bpe);
    let pre = g.get("tokenizer.ggml.pre").and_then(Value::as_str).unwrap_or("default");
    inner.with_pre_tokenizer(Some(pre_tokenizer(pre)?));
    inner.with_decoder(Some(tokenizers::decoders::byte_level::ByteLevel::default()));
    Ok(inner)
}

/// A SentencePiece vocabulary (`tokenizer.ggml.model = llama`) as llama.cpp's
/// SPM tokenizer reads it: spaces become `▁` (one is put before the text, and
/// after every special token, when `add_space_prefix`), the whole text is one
/// word whose UTF-8 characters merge pairwise, always the pair whose merged
/// piece has the highest score first, and characters left outside the
/// vocabulary become their `<0xNN>` byte tokens.
///
/// That algorithm is a BPE whose merge list holds, for every piece, each split
/// into two pieces, ranked by the merged piece's score: built so with the
/// `tokenizers` BPE (byte fallback on), it picks the same merges. (llama.cpp
/// breaks a tie between equal scores by position, the BPE by rank; real
/// vocabularies give their merged pieces distinct scores.)
fn sentencepiece_bpe(g: &Gguf, tokens: &[String], add_space_prefix: bool) -> Result<tokenizers::Tokenizer> {
    let scores: Vec<f64> = g
        .require("tokenizer.ggml.scores")?
        .as_array()
        .and_then(|a| a.iter().map(Value::as_f64).collect())
        .ok_or_else(|| Error::invalid("tokenizer.ggml.scores is not an array of numbers"))?;
    if scores.len() != tokens.len() {
        return Err(Error::invalid(format!(
            "tokenizer.ggml.scores has {} entries for {} tokens",
            scores.len(),
            tokens.len()
        )));
    }
    // A text listed twice maps to its last id, as in llama.cpp's text-to-token map.
    let vocab: tokenizers::models::bpe::Vocab = tokens.iter().enumerate().map(|(i, t)| (t.clone(), i as u32)).collect();
    let mut ranked: Vec<(f64, u32, usize, &str, &str)> = Vec::new();
    for (text, &id) in &vocab {
        let score = scores[id as usize];
        for (cut, _) in text.char_indices().skip(1) {
            let (a, b) = text.split_at(cut);
            if vocab.contains_key(a) && vocab.contains_key(b) {
                ranked.push((score, id, cut, a, b));
            }
        }
    }
    // Highest score first; then by id and split point, so that the order is reproducible.
    ranked.sort_by(|x, y| y.0.total_cmp(&x.0).then(x.1.cmp(&y.1)).then(x.2.cmp(&y.2)));
    let merges: Vec<(String, String)> = ranked.iter().map(|m| (m.3.to_string(), m.4.to_string())).collect();
    let unk_id = g
        .get("tokenizer.ggml.unknown_token_id")
        .and_then(Value::as_u64)
        .unwrap_or(0) as usize;
    let unk = tokens.get(unk_id).cloned().unwrap_or_else(|| "<unk>".into());
    let bpe = BPE::builder()
        .vocab_and_merges(vocab, merges)
        .byte_fallback(true)
        .unk_token(unk)
        .fuse_unk(true)
        .build()
        .map_err(terr)?;
    let mut inner = tokenizers::Tokenizer::new(bpe);
    let space = Replace::new(" ", "\u{2581}").map_err(terr)?;
    let normalizer: NormalizerWrapper = if add_space_prefix {
        NormalizerSequence::new(vec![Prepend::new("\u{2581}".into()).into(), space.into()]).into()
    } else {
        space.into()
    };
    inner.with_normalizer(Some(normalizer));
    let mut decoders: Vec<DecoderWrapper> = vec![
        Replace::new("\u{2581}", " ").map_err(terr)?.into(),
        ByteFallback::new().into(),
        Fuse::new().into(),
    ];
    if add_space_prefix {
        decoders.push(Strip::new(' ', 1, 0).into());
    }
    inner.with_decoder(Some(DecoderSequence::new(decoders)));
    Ok(inner)
}

/// The pre-tokenizer llama.cpp uses for a `tokenizer.ggml.pre` name.
fn pre_tokenizer(pre: &str) -> Result<PreTokenizerWrapper> {
    let byte_level = ByteLevel::new(false, true, true);
    let digits = |pattern: &str| -> Result<PreTokenizerWrapper> {
        Ok(Split::new(
            SplitPattern::Regex(pattern.to_string()),
            SplitDelimiterBehavior::Isolated,
            false,
        )
        .map_err(terr)?
        .into())
    };
    Ok(match pre {
        // GPT-2's regex alone.
        "default" | "gpt2" | "gpt-2" | "mpt" | "olmo" | "jais" => byte_level.into(),
        // Single digits first, then GPT-2's regex (llama.cpp: STARCODER, REFACT,
        // COMMAND_R, SMOLLM, CODESHELL, EXAONE, MINERVA).
        "smollm" | "starcoder" | "refact" | "command-r" | "codeshell" | "exaone" | "minerva-7b" => {
            Sequence::new(vec![digits(r"\p{N}")?, byte_level.into()]).into()
        }
        other => {
            return Err(Error::invalid(format!(
                "tokenizer pre-tokenizer `{other}` is not supported yet (gpt2, smollm, starcoder and their kin are)"
            )))
        }
    })
}

/// Turns a stream of generated ids into text pieces, never splitting a UTF-8
/// character across pieces.
#[derive(Debug, Default)]
pub struct StreamDecoder {
    ids: Vec<u32>,
    emitted: usize,
}

impl StreamDecoder {
    /// A decoder with no tokens yet.
    pub fn new() -> StreamDecoder {
        StreamDecoder::default()
    }
    /// Adds a token; returns the text it completes, if any.
    pub fn push(&mut self, tok: &Tokenizer, id: u32) -> Result<Option<String>> {
        self.ids.push(id);
        let text = tok.decode(&self.ids)?;
        // A trailing replacement character means a multi-byte character is incomplete.
        if text.ends_with('\u{FFFD}') || text.len() <= self.emitted || !text.is_char_boundary(self.emitted) {
            return Ok(None);
        }
        let piece = text[self.emitted..].to_string();
        self.emitted = text.len();
        Ok(Some(piece))
    }
}

/// A chat message.
#[derive(Debug, Clone)]
pub struct ChatMessage {
    /// `system`, `user` or `assistant`.
    pub role: String,
    /// The text.
    pub content: String,
}

impl ChatMessage {
    /// A message.
    pub fn new(role: &str, content: &str) -> ChatMessage {
        ChatMessage {
            role: role.into(),
            content: content.into(),
        }
    }
}

/// A chat template: the model's own (Jinja) or ChatML.
#[derive(Debug, Clone)]
pub enum ChatTemplate {
    /// A Jinja template, as GGUF files carry in `tokenizer.chat_template`.
    Jinja(String),
    /// `<|im_start|>{role}\n{content}<|im_end|>\n` per message.
    ChatMl,
}

impl ChatTemplate {
    /// The template a GGUF file carries, else ChatML.
    pub fn from_gguf(g: &Gguf) -> ChatTemplate {
        match g.get("tokenizer.chat_template").and_then(Value::as_str) {
            Some(t) => ChatTemplate::Jinja(t.to_string()),
            None => ChatTemplate::ChatMl,
        }
    }

    /// The prompt for `messages`, ending with the assistant's turn opened when
    /// `add_generation_prompt`.
    pub fn render(&self, messages: &[ChatMessage], add_generation_prompt: bool) -> Result<String> {
        match self {
            ChatTemplate::ChatMl => {
                let mut s = String::new();
                for m in messages {
                    s.push_str(&format!("<|im_start|>{}\n{}<|im_end|>\n", m.role, m.content));
                }
                if add_generation_prompt {
                    s.push_str("<|im_start|>assistant\n");
                }
                Ok(s)
            }
            ChatTemplate::Jinja(src) => {
                let mut env = minijinja::Environment::new();
                env.add_template("chat", src)
                    .map_err(|e| Error::invalid(format!("chat template: {e}")))?;
                let msgs: Vec<minijinja::Value> = messages
                    .iter()
                    .map(|m| minijinja::context! { role => m.role.clone(), content => m.content.clone() })
                    .collect();
                env.get_template("chat")
                    .and_then(|t| {
                        t.render(minijinja::context! {
                            messages => msgs,
                            add_generation_prompt => add_generation_prompt,
                            bos_token => "",
                            eos_token => "",
                        })
                    })
                    .map_err(|e| Error::invalid(format!("chat template: {e}")))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chatml_renders_turns_and_the_generation_prompt() {
        let p = ChatTemplate::ChatMl
            .render(&[ChatMessage::new("user", "What is the capital of France?")], true)
            .unwrap();
        assert_eq!(
            p,
            "<|im_start|>user\nWhat is the capital of France?<|im_end|>\n<|im_start|>assistant\n"
        );
    }

    #[test]
    fn jinja_templates_render_with_loops_and_conditions() {
        let t = ChatTemplate::Jinja(
            "{% for m in messages %}[{{ m.role }}:{{ m.content }}]{% endfor %}{% if add_generation_prompt %}>{% endif %}"
                .into(),
        );
        let p = t
            .render(&[ChatMessage::new("system", "s"), ChatMessage::new("user", "u")], true)
            .unwrap();
        assert_eq!(p, "[system:s][user:u]>");
        let bad = ChatTemplate::Jinja("{% for %}".into()).render(&[], true).unwrap_err();
        assert!(bad.to_string().contains("chat template"), "{bad}");
    }
}
