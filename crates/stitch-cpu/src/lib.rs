//! # stitch-cpu
//!
//! The CPU backend: a multi-threaded (rayon) kernel for every primitive stitch
//! op, plus fused kernels for softmax, log-softmax, layer norm and RMS norm.
//! Matmul goes through the `gemm` crate (f32, f64, f16; bf16 by conversion).
//!
//! ```
//! use std::sync::Arc;
//! use stitch_core::{CompileOptions, DType, Executable, Graph, Tensor};
//! use stitch_cpu::CpuBackend;
//!
//! let mut g = Graph::new();
//! let x = g.placeholder("x", DType::F32, [2, 3]);
//! let y = g.softmax(x, -1)?;
//! let exe = Executable::compile(&g, &[y], Arc::new(CpuBackend::new()), CompileOptions::default())?;
//! let x = Tensor::from_vec(vec![1f32, 2.0, 3.0, 1.0, 1.0, 1.0], &[2, 3])?;
//! let out = exe.run(&[("x", x)], &mut exe.new_state())?;
//! let p = out[0].to_vec::<f32>()?;
//! assert!((p[3] - 1.0 / 3.0).abs() < 1e-6);
//! # Ok::<(), stitch_core::Error>(())
//! ```

#![deny(unsafe_op_in_unsafe_fn)]

mod driver;
pub mod kernels;
pub mod testing;

use stitch_core::ops::Op;
use stitch_core::{Backend, Error, Node, Prepared, Result, Tensor};

/// Names the node in a kernel's error.
fn with_node(node: &Node, e: Error) -> Error {
    match e {
        Error::Invalid(m) => Error::node(node.name.clone(), node.op.kind(), m),
        other => other,
    }
}

/// The CPU backend. Threads come from rayon's global pool (`RAYON_NUM_THREADS`).
#[derive(Debug, Clone, Default)]
pub struct CpuBackend {}

impl CpuBackend {
    /// A CPU backend.
    pub fn new() -> CpuBackend {
        CpuBackend {}
    }
}

impl Backend for CpuBackend {
    fn name(&self) -> &str {
        "cpu"
    }

    fn supports(&self, node: &Node) -> bool {
        // Every primitive has a kernel; composites run fused where a kernel exists
        // and are decomposed otherwise.
        !node.op.is_composite() || kernels::has_fused(&node.op)
    }

    fn supports_fusion(&self) -> bool {
        true
    }

    fn run_plan(&self, f: &mut (dyn FnMut() + Send)) {
        driver::run(&mut || {
            f();
            kernels::scratch::sync_all_threads();
        });
    }

    fn execute(&self, node: &Node, inputs: &[Tensor]) -> Result<stitch_core::Outputs> {
        kernels::execute(&node.op, inputs, &node.outputs).map_err(|e| with_node(node, e))
    }

    /// Constant f32 matmul and gemm weights are packed into the sgemm panel
    /// layout once per plan, so runs skip packing them (a gemm's constant bias
    /// row goes with them, for the epilogue).
    fn prepare(&self, node: &Node, constants: &[Option<&Tensor>]) -> Result<Option<Prepared>> {
        let w = match (&node.op, constants) {
            (Op::MatMul { transpose_b, .. }, [None, Some(b)]) => {
                kernels::linalg::prepare_matmul_weight(b, *transpose_b)
            }
            (
                Op::Gemm {
                    alpha,
                    beta,
                    transpose_a,
                    transpose_b,
                    ..
                },
                [None, Some(b), c @ ..],
            ) if c.iter().all(Option::is_some) => {
                let c = c.first().copied().flatten();
                kernels::linalg::prepare_gemm_weight(b, c, *alpha, *beta, *transpose_a, *transpose_b)
            }
            _ => None,
        };
        Ok(w.map(|w| std::sync::Arc::new(w) as Prepared))
    }

    fn execute_prepared(&self, node: &Node, inputs: &[Tensor], prepared: &Prepared) -> Result<stitch_core::Outputs> {
        match (
            &node.op,
            prepared.downcast_ref::<kernels::linalg::PackedWeight>(),
            inputs,
        ) {
            (
                Op::MatMul {
                    transpose_a,
                    transpose_b,
                },
                Some(w),
                [a, b],
            ) => kernels::linalg::matmul_prepacked(a, b, w, *transpose_a, *transpose_b, &node.outputs[0])
                .map(|t| stitch_core::Outputs::from_iter([t]))
                .map_err(|e| with_node(node, e)),
            (
                Op::Gemm {
                    alpha,
                    beta,
                    transpose_a,
                    transpose_b,
                    activation,
                },
                Some(w),
                [a, b, c @ ..],
            ) => kernels::linalg::gemm_prepacked(
                a,
                b,
                c.first(),
                w,
                (*alpha, *beta),
                *transpose_a,
                *transpose_b,
                *activation,
                &node.outputs[0],
            )
            .map(|t| stitch_core::Outputs::from_iter([t]))
            .map_err(|e| with_node(node, e)),
            _ => self.execute(node, inputs),
        }
    }
}

/// The README's code examples, compiled and run as doctests.
#[cfg(doctest)]
#[doc = include_str!("../../../README.md")]
pub struct ReadmeDoctests;
