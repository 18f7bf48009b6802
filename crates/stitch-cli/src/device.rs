//! `--device NAME`: the backends a command compiles for.

use std::sync::Arc;

use stitch_core::exec::Backend;

/// The ordered backend list for `--device name` (primary first, the CPU last
/// as the fallback for ops the primary lacks); see [`stitch_cuda::backends_for`].
pub fn backends(name: &str) -> Result<Vec<Arc<dyn Backend>>, String> {
    stitch_cuda::backends_for(name)
}
