//! Per-thread scratch buffers for kernels, grown on first use and reused, so
//! that warm kernels allocate nothing.

use std::cell::RefCell;

/// Element types with a per-thread scratch buffer.
pub(crate) trait ScratchElem: Copy + Default + 'static {
    /// Runs `f` with `len` elements of this thread's scratch (contents
    /// unspecified). A nested call on the same thread gets a temporary buffer.
    fn with_scratch<R>(len: usize, f: impl FnOnce(&mut [Self]) -> R) -> R;
}

macro_rules! scratch {
    ($t:ty, $key:ident) => {
        thread_local! {
            static $key: RefCell<Vec<$t>> = const { RefCell::new(Vec::new()) };
        }
        impl ScratchElem for $t {
            fn with_scratch<R>(len: usize, f: impl FnOnce(&mut [$t]) -> R) -> R {
                $key.with(|cell| match cell.try_borrow_mut() {
                    Ok(mut v) => {
                        if v.len() < len {
                            v.resize(len, <$t>::default());
                        }
                        f(&mut v[..len])
                    }
                    Err(_) => f(&mut vec![<$t>::default(); len]),
                })
            }
        }
    };
}

scratch!(f32, SCRATCH_F32);
scratch!(f64, SCRATCH_F64);
