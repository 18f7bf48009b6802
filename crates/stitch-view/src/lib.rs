//! `stitch view`: a graph viewer served on 127.0.0.1.
//!
//! A [`Viewer`] holds one graph (the source graph as loaded, and the plan
//! compiled for a device) and answers a small JSON API; [`serve`] puts it
//! behind an HTTP server together with the page (HTML, JavaScript and CSS
//! embedded in the binary: the page fetches nothing from the network).
//!
//! Large graphs open folded: nodes are grouped by their name scopes (ONNX
//! `/encoder/layer.0/...`, GGUF `blk.N`), and the server lays out one group's
//! items at a time (a layered layout from the `rust-sugiyama` crate), so no
//! single layout is larger than [`model::MAX_ITEMS_PER_GROUP`] items.

pub mod layout;
pub mod load;
pub mod model;
pub mod server;
pub mod stats;

use std::path::Path;
use std::sync::Arc;

pub use load::{load_model, LoadedModel};
pub use server::{serve, Server, Viewer};

/// Arguments of `stitch view`.
#[derive(Debug, Clone)]
pub struct ViewArgs {
    /// The model (`.onnx` or `.gguf`); `None`: the default GGUF model of `stitch generate`.
    pub model: Option<std::path::PathBuf>,
    /// Port on 127.0.0.1 (0: any free port).
    pub port: u16,
    /// Device of the compiled view.
    pub device: String,
}

/// Loads the model, starts the server, prints its URL and serves until killed.
pub fn run(args: &ViewArgs) -> Result<(), String> {
    // Fail early, before loading the model, on a device that cannot be used.
    stitch_cuda::backends_for(&args.device)?;
    let path = match &args.model {
        Some(p) => p.clone(),
        None => stitch_models::fetch::default_model().map_err(|e| format!("fetching the default model: {e}"))?,
    };
    let t0 = std::time::Instant::now();
    let model = load_model(Path::new(&path))?;
    let viewer = Arc::new(Viewer::new(&model.title, model.graph, &args.device));
    eprintln!(
        "loaded {} ({} nodes, {} groups) in {:.2} s; compiling for {} in the background",
        model.title,
        viewer.source().nodes.len(),
        viewer.source().reachable_groups,
        t0.elapsed().as_secs_f64(),
        args.device
    );
    let server = serve(viewer.clone(), args.port)?;
    viewer.compile_in_background(model.outputs);
    println!("stitch view: serving {} at {}", model.title, server.url());
    use std::io::Write;
    let _ = std::io::stdout().flush();
    server.wait();
    Ok(())
}
