//! `--device NAME`: the backends a command compiles for.

use std::sync::Arc;

use stitch_core::exec::Backend;
use stitch_cpu::CpuBackend;

/// The ordered backend list for `--device name` (primary first, the CPU last
/// as the fallback for ops the primary lacks).
pub fn backends(name: &str) -> Result<Vec<Arc<dyn Backend>>, String> {
    match name {
        "cpu" => Ok(vec![Arc::new(CpuBackend::new())]),
        n if n == "cuda" || n.starts_with("cuda:") => {
            let ordinal = match n.strip_prefix("cuda:") {
                None => 0,
                Some(k) => k
                    .parse::<usize>()
                    .map_err(|_| format!("--device {n}: expected cuda or cuda:N with N a GPU number"))?,
            };
            let cuda = stitch_cuda::CudaBackend::new(ordinal).map_err(|e| format!("--device {n}: {e}"))?;
            // The CPU runs what the GPU backend lacks, with counted copies.
            Ok(vec![Arc::new(cuda), Arc::new(CpuBackend::new())])
        }
        n => Err(format!("--device {n}: unknown device; use `cpu`, `cuda` or `cuda:N` (see `stitch info` for what this build can use)")),
    }
}
