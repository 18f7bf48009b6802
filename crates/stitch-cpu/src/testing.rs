//! A stand-in accelerator for testing placement without a GPU.
//!
//! [`DecliningBackend`] runs ops with the CPU kernels but declines the op kinds
//! it is told to, and keeps its "device memory" apart: [`Backend::upload`] and
//! [`Backend::download`] make real copies. Compiled with the CPU as fallback
//! (`Executable::compile_placed(.., vec![declining, cpu], ..)`), every declined
//! op becomes a fallback with its copies in and out, as on a real device.

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicUsize, Ordering};

use stitch_core::{Backend, Node, Result, Tensor};

use crate::CpuBackend;

/// A CPU-kernel backend named `test-device` that declines chosen op kinds.
#[derive(Debug, Default)]
pub struct DecliningBackend {
    cpu: CpuBackend,
    declined: BTreeSet<String>,
    uploads: AtomicUsize,
    downloads: AtomicUsize,
}

impl DecliningBackend {
    /// A backend declining the op kinds named (as [`stitch_core::Op::kind`] spells them, e.g. `tanh`).
    pub fn new<S: AsRef<str>>(declined: impl IntoIterator<Item = S>) -> DecliningBackend {
        DecliningBackend {
            declined: declined.into_iter().map(|s| s.as_ref().to_string()).collect(),
            ..Default::default()
        }
    }
    /// Tensors uploaded to and downloaded from this backend so far.
    pub fn transfers(&self) -> (usize, usize) {
        (
            self.uploads.load(Ordering::Relaxed),
            self.downloads.load(Ordering::Relaxed),
        )
    }
}

impl Backend for DecliningBackend {
    fn name(&self) -> &str {
        "test-device"
    }
    fn supports(&self, node: &Node) -> bool {
        !self.declined.contains(&node.op.kind()) && self.cpu.supports(node)
    }
    fn supports_fusion(&self) -> bool {
        true
    }
    fn execute(&self, node: &Node, inputs: &[Tensor]) -> Result<stitch_core::Outputs> {
        self.cpu.execute(node, inputs)
    }
    fn upload(&self, t: &Tensor) -> Result<Tensor> {
        self.uploads.fetch_add(1, Ordering::Relaxed);
        Ok(t.contiguous_copy())
    }
    fn download(&self, t: &Tensor) -> Result<Tensor> {
        self.downloads.fetch_add(1, Ordering::Relaxed);
        Ok(t.contiguous_copy())
    }
}
