//! A stand-in accelerator for testing placement without a GPU.
//!
//! [`DecliningBackend`] behaves like a device backend: its tensors live in its
//! own "device memory" ([`TestMemory`], not readable as host tensors), so
//! values must cross with real uploads and downloads, constants are uploaded
//! once per plan, variables stay on it and `slice_update` writes them in
//! place. It runs ops with the CPU kernels (staging through host copies that
//! are not counted as transfers) and declines the op kinds it is told to.
//! Compiled with the CPU as fallback (`Executable::compile_placed(.., vec![dev,
//! cpu], ..)`), every declined op becomes a fallback with its copies in and
//! out, as on a real device.

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use stitch_core::{Backend, DeviceMemory, Error, Node, Outputs, Result, Tensor};

use crate::CpuBackend;

/// The test device's memory: bytes behind a lock, addressable only through the backend.
#[derive(Debug)]
pub struct TestMemory {
    bytes: Mutex<Vec<u8>>,
}

impl DeviceMemory for TestMemory {
    fn device(&self) -> String {
        "test-device".into()
    }
    fn len(&self) -> usize {
        self.bytes.lock().map_or(0, |b| b.len())
    }
    fn as_any(&self) -> &dyn std::any::Any {
        self
    }
}

/// A CPU-kernel backend named `test-device`, with its own memory, that declines chosen op kinds.
#[derive(Debug, Default)]
pub struct DecliningBackend {
    cpu: CpuBackend,
    declined: BTreeSet<String>,
    uploads: AtomicUsize,
    downloads: AtomicUsize,
}

fn memory(t: &Tensor) -> Result<&TestMemory> {
    t.device_memory()
        .and_then(|m| m.as_any().downcast_ref::<TestMemory>())
        .ok_or_else(|| Error::invalid("test-device: expected a tensor in test-device memory"))
}

impl DecliningBackend {
    /// A backend declining the op kinds named (as [`stitch_core::Op::kind`] spells them, e.g. `tanh`).
    pub fn new<S: AsRef<str>>(declined: impl IntoIterator<Item = S>) -> DecliningBackend {
        DecliningBackend {
            declined: declined.into_iter().map(|s| s.as_ref().to_string()).collect(),
            ..Default::default()
        }
    }
    /// Tensors uploaded to and downloaded from this backend so far (through
    /// `upload`/`download`, i.e. by the executor's copy steps, inputs, outputs,
    /// constants and state).
    pub fn transfers(&self) -> (usize, usize) {
        (
            self.uploads.load(Ordering::Relaxed),
            self.downloads.load(Ordering::Relaxed),
        )
    }

    fn to_device(t: &Tensor) -> Result<Tensor> {
        let host = t.contiguous();
        let mem = Arc::new(TestMemory {
            bytes: Mutex::new(
                host.buffer().as_bytes()[host.offset() * host.dtype().size_in_bytes()..]
                    [..host.numel() * host.dtype().size_in_bytes()]
                    .to_vec(),
            ),
        });
        Tensor::from_device(mem, t.dtype(), t.shape())
    }

    fn to_host(t: &Tensor) -> Result<Tensor> {
        let mem = memory(t)?;
        if !t.is_contiguous() || t.offset() != 0 {
            return Err(Error::invalid("test-device tensors are whole contiguous buffers"));
        }
        let bytes = mem
            .bytes
            .lock()
            .map_err(|_| Error::invalid("test-device memory poisoned"))?;
        Ok(Tensor::from_buffer(
            stitch_core::Buffer::from_bytes(&bytes),
            t.dtype(),
            t.shape(),
        ))
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
    fn is_host(&self) -> bool {
        false
    }
    fn execute(&self, node: &Node, inputs: &[Tensor]) -> Result<Outputs> {
        let host: Vec<Tensor> = inputs.iter().map(Self::to_host).collect::<Result<_>>()?;
        self.cpu.execute(node, &host)?.iter().map(Self::to_device).collect()
    }
    fn upload(&self, t: &Tensor) -> Result<Tensor> {
        self.uploads.fetch_add(1, Ordering::Relaxed);
        Self::to_device(t)
    }
    fn download(&self, t: &Tensor) -> Result<Tensor> {
        self.downloads.fetch_add(1, Ordering::Relaxed);
        Self::to_host(t)
    }
    fn write_slice(&self, target: &mut Tensor, starts: &[usize], src: &Tensor) -> Result<()> {
        let mut host = Self::to_host(target)?;
        host.write_slice(starts, &Self::to_host(src)?)?;
        let mem = memory(target)?;
        mem.bytes
            .lock()
            .map_err(|_| Error::invalid("test-device memory poisoned"))?
            .copy_from_slice(host.buffer().as_bytes());
        Ok(())
    }
}
