//! `stitch generate`: text generation with a Llama-family model, from a GGUF
//! file or a Hugging Face directory (config.json + safetensors + tokenizer.json).

use std::io::{BufRead, Write};
use std::path::{Path, PathBuf};

use stitch_models::generate::{generate, Generation, Sampler, Sampling};
use stitch_models::gguf::Gguf;
use stitch_models::llama::{Llama, LlamaConfig};
use stitch_models::safetensors::HfModel;
use stitch_models::tokenizer::{ChatMessage, ChatTemplate, Tokenizer};

/// Options of `stitch generate`.
#[derive(Debug, Clone)]
pub struct GenerateArgs {
    /// GGUF file, a directory holding one, or a Hugging Face directory; `None` = the default model.
    pub model: Option<PathBuf>,
    /// The prompt (raw, unless `chat`).
    pub prompt: Option<String>,
    /// Wrap the prompt in the model's chat template; interactive without a prompt.
    pub chat: bool,
    /// System message for chat.
    pub system: Option<String>,
    /// Most tokens to generate per reply.
    pub max_tokens: usize,
    /// Keep going past end-of-generation tokens.
    pub ignore_eos: bool,
    /// Sampling settings.
    pub sampling: Sampling,
    /// KV-cache length in tokens.
    pub ctx_size: usize,
    /// Print one JSON object instead of streaming text.
    pub json: bool,
    /// Profile the decode steps and print a report at the end.
    pub profile: bool,
    /// With `profile`, write a Chrome trace here.
    pub trace: Option<PathBuf>,
    /// Device (`cpu`, `cuda`, `cuda:N`).
    pub device: String,
}

/// Where a model's files are.
#[derive(Debug, Clone, PartialEq)]
pub enum ModelSource {
    /// A GGUF file.
    Gguf(PathBuf),
    /// A Hugging Face Llama directory: config.json, safetensors, tokenizer.json.
    HfDir(PathBuf),
}

impl ModelSource {
    /// The file or directory.
    pub fn path(&self) -> &Path {
        match self {
            ModelSource::Gguf(p) | ModelSource::HfDir(p) => p,
        }
    }
}

/// The model `--model` names: a GGUF file; a directory's first `.gguf` file,
/// else the directory itself when it is a Hugging Face checkpoint; or the
/// default model.
pub fn resolve_model(model: &Option<PathBuf>) -> Result<ModelSource, String> {
    match model {
        None => stitch_models::fetch::default_model()
            .map(ModelSource::Gguf)
            .map_err(|e| e.to_string()),
        Some(p) if p.is_dir() => {
            let mut ggufs: Vec<PathBuf> = std::fs::read_dir(p)
                .map_err(|e| format!("{}: {e}", p.display()))?
                .filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| p.extension().is_some_and(|x| x == "gguf"))
                .collect();
            ggufs.sort();
            match ggufs.into_iter().next() {
                Some(g) => Ok(ModelSource::Gguf(g)),
                None if HfModel::is_hf_dir(p) => Ok(ModelSource::HfDir(p.clone())),
                None => Err(format!(
                    "{}: no .gguf file in this directory, nor config.json with model.safetensors \
                     (or model.safetensors.index.json)",
                    p.display()
                )),
            }
        }
        Some(p) => Ok(ModelSource::Gguf(p.clone())),
    }
}

/// A loaded model with its tokenizer and chat template.
pub struct Loaded {
    /// The model.
    pub model: Llama,
    /// Its tokenizer.
    pub tokenizer: Tokenizer,
    /// Its chat template.
    pub template: ChatTemplate,
}

/// Loads a model (a GGUF file, or a directory as `--model` takes it) for
/// generation on `device` (`cpu`, `cuda`, `cuda:N`).
pub fn load_on(path: &Path, ctx_size: usize, device: &str) -> Result<Loaded, String> {
    load(&resolve_model(&Some(path.to_path_buf()))?, ctx_size, device)
}

/// Loads a model for generation on `device` (`cpu`, `cuda`, `cuda:N`).
pub fn load(source: &ModelSource, ctx_size: usize, device: &str) -> Result<Loaded, String> {
    let backends = crate::device::backends(device)?;
    match source {
        ModelSource::Gguf(path) => {
            let g = Gguf::open(path).map_err(|e| e.to_string())?;
            let tokenizer = Tokenizer::from_gguf(&g).map_err(|e| e.to_string())?;
            let cfg = LlamaConfig::from_gguf(&g).map_err(|e| e.to_string())?;
            let model = Llama::with_backends(cfg, &g, ctx_size, backends).map_err(|e| e.to_string())?;
            Ok(Loaded {
                model,
                tokenizer,
                template: ChatTemplate::from_gguf(&g),
            })
        }
        ModelSource::HfDir(dir) => {
            let hf = HfModel::open(dir).map_err(|e| e.to_string())?;
            let tokenizer = hf.tokenizer().map_err(|e| e.to_string())?.clone();
            let model =
                Llama::with_backends(hf.config().clone(), &hf, ctx_size, backends).map_err(|e| e.to_string())?;
            Ok(Loaded {
                model,
                tokenizer,
                template: hf.chat_template().clone(),
            })
        }
    }
}

fn json_escape(s: &str) -> String {
    serde_json::to_string(s).unwrap_or_else(|_| "\"\"".into())
}

fn print_json(g: &Generation) {
    let ids = |v: &[u32]| v.iter().map(|x| x.to_string()).collect::<Vec<_>>().join(",");
    println!(
        "{{\"text\":{},\"ids\":[{}],\"prompt_ids\":[{}],\"timings\":{{\"prompt_tokens\":{},\"generated_tokens\":{},\"prefill_tokens_per_s\":{:.3},\"decode_tokens_per_s\":{:.3},\"prefill_ms\":{:.3},\"decode_ms\":{:.3}}}}}",
        json_escape(&g.text),
        ids(&g.ids),
        ids(&g.prompt_ids),
        g.prompt_ids.len(),
        g.ids.len(),
        g.prefill_tps(),
        g.decode_tps(),
        g.prefill.as_secs_f64() * 1e3,
        g.decode.as_secs_f64() * 1e3
    );
}

fn one_reply(l: &mut Loaded, prompt: &str, args: &GenerateArgs, sampler: &mut Sampler) -> Result<Generation, String> {
    let ids = l
        .tokenizer
        .encode(prompt, l.model.position() == 0)
        .map_err(|e| e.to_string())?;
    if ids.is_empty() {
        return Err("the prompt is empty".into());
    }
    let json = args.json;
    let g = generate(
        &mut l.model,
        &l.tokenizer,
        &ids,
        args.max_tokens,
        args.ignore_eos,
        sampler,
        |piece| {
            if !json {
                print!("{piece}");
                let _ = std::io::stdout().flush();
            }
        },
    )
    .map_err(|e| e.to_string())?;
    if json {
        print_json(&g);
    } else {
        println!();
        eprintln!(
            "[prefill: {} tokens, {:.1} tokens/s | decode: {} tokens, {:.1} tokens/s]",
            g.prompt_ids.len(),
            g.prefill_tps(),
            g.ids.len(),
            g.decode_tps()
        );
    }
    Ok(g)
}

/// With `--profile`: the report of the decode steps (to stderr) and the trace.
fn print_profile(l: &mut Loaded, args: &GenerateArgs) -> Result<(), String> {
    let Some(mut p) = l.model.profile_decode(false) else {
        return Ok(());
    };
    if p.runs.len() > 1 {
        // The first decode step builds the decode plan and fills its pools.
        p.runs.remove(0);
    }
    if p.runs.is_empty() {
        eprintln!("[profile: no decode step ran]");
        return Ok(());
    }
    let text = crate::profile::finish(&p, args.trace.as_deref(), 15)?;
    eprintln!("\nprofile of the decode steps (the first, which builds the plan, left out):\n{text}");
    Ok(())
}

/// Runs `stitch generate`.
pub fn run(args: &GenerateArgs) -> Result<(), String> {
    if args.max_tokens == 0 {
        return Err("--max-tokens must be at least 1".into());
    }
    let source = resolve_model(&args.model)?;
    let mut l = load(&source, args.ctx_size, &args.device)?;
    let mut sampler = Sampler::new(args.sampling.clone()).map_err(|e| e.to_string())?;
    let mut messages = Vec::new();
    if let Some(s) = &args.system {
        messages.push(ChatMessage::new("system", s));
    }
    if args.profile {
        l.model.profile_decode(true);
    }
    if !args.chat {
        let prompt = args
            .prompt
            .clone()
            .ok_or("give a --prompt (or --chat for a conversation)")?;
        one_reply(&mut l, &prompt, args, &mut sampler)?;
        return print_profile(&mut l, args);
    }
    if let Some(p) = &args.prompt {
        messages.push(ChatMessage::new("user", p));
        let prompt = l.template.render(&messages, true).map_err(|e| e.to_string())?;
        one_reply(&mut l, &prompt, args, &mut sampler)?;
        return print_profile(&mut l, args);
    }
    // Interactive: each turn re-renders the conversation and feeds only what is new.
    eprintln!(
        "stitch chat with {} — an empty line or Ctrl-D ends it",
        source.path().display()
    );
    let stdin = std::io::stdin();
    let mut fed = String::new();
    loop {
        eprint!("> ");
        let mut line = String::new();
        if stdin.lock().read_line(&mut line).map_err(|e| e.to_string())? == 0 || line.trim().is_empty() {
            return Ok(());
        }
        messages.push(ChatMessage::new("user", line.trim_end()));
        let full = l.template.render(&messages, true).map_err(|e| e.to_string())?;
        let new = full.strip_prefix(fed.as_str()).unwrap_or(&full).to_string();
        if !full.starts_with(fed.as_str()) {
            l.model.reset();
        }
        let g = one_reply(&mut l, &new, args, &mut sampler)?;
        messages.push(ChatMessage::new("assistant", &g.text));
        // The model has seen the prompt and the reply (without the end token);
        // the next turn's rendering continues from the template's own text.
        fed = full + &g.text;
    }
}
