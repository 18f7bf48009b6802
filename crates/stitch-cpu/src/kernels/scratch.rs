//! Per-thread scratch buffers for kernels, grown on first use and reused, so
//! that warm kernels allocate nothing.

use std::cell::RefCell;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

/// Set when some thread's workspace grew; [`sync_all_threads`] then grows every
/// pool thread's workspaces to the largest size seen, so that a thread first
/// handed some kernel's task in a later run does not allocate then.
static GROWN: AtomicBool = AtomicBool::new(false);

/// Grows `v` to at least `len` (and to the largest size any thread needed, `max`).
pub(crate) fn grow<T: Clone + Default>(v: &mut Vec<T>, len: usize, max: &AtomicUsize) {
    if v.len() < len {
        let target = len.max(max.fetch_max(len, Ordering::Relaxed));
        v.resize(target, T::default());
        GROWN.store(true, Ordering::Relaxed);
    }
}

/// After a run in which some workspace grew, grows every pool thread's
/// workspaces to the largest sizes seen (allocation happens here, once, not in
/// a later steady-state run).
///
/// Only from a pool worker (the plan driver): a broadcast from outside the pool
/// would wait for the driver's worker, which is parked between runs.
pub(crate) fn sync_all_threads() {
    if rayon::current_thread_index().is_some() && GROWN.swap(false, Ordering::Relaxed) {
        rayon::broadcast(|_| {
            <f32 as ScratchElem>::with_scratch(0, |_| ());
            <f64 as ScratchElem>::with_scratch(0, |_| ());
            super::sgemm::warm_workspaces();
        });
        // Growth inside the broadcast only reached sizes already seen.
        GROWN.store(false, Ordering::Relaxed);
    }
}

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
                static MAX: AtomicUsize = AtomicUsize::new(0);
                $key.with(|cell| match cell.try_borrow_mut() {
                    Ok(mut v) => {
                        // A zero-length request (from `sync_all_threads`) grows to the max seen.
                        let want = if len == 0 {
                            MAX.load(Ordering::Relaxed)
                        } else {
                            len
                        };
                        grow(&mut v, want, &MAX);
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
