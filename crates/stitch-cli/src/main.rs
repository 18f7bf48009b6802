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
        /// Device (only `cpu` for now).
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
        } => {
            if device != "cpu" {
                Err(format!("--device {device}: only `cpu` is available for ONNX models"))
            } else {
                set_threads(threads).and_then(|_| {
                    run::run(&run::RunArgs {
                        model,
                        inputs: input,
                        inputs_npz: inputs,
                        random_inputs,
                        seed,
                        output,
                        runs,
                    })
                    .and_then(|t| print_text(&t))
                })
            }
        }
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
        Command::Ops { markdown } => {
            let cpu = CpuBackend::new();
            let text = if markdown {
                ops_table::markdown(&[&cpu])
            } else {
                ops_table::catalog()
                    .iter()
                    .map(|(family, op)| {
                        format!("{family:14} {:18} cpu: {}\n", op.kind(), ops_table::coverage(&cpu, op))
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
