//! Runs plans on a rayon worker, so that kernels' parallel loops never inject
//! jobs into the pool from outside.
//!
//! rayon's queue for jobs injected from threads outside the pool allocates a
//! new block every few dozen jobs, so a plan driven from the application's
//! thread would allocate now and then even when every kernel is warm. The
//! driver is one long-lived job on a pool worker that waits for work on a
//! condition variable: a run hands it a closure (no boxing), and every
//! parallel loop the closure starts is pushed to that worker's own deque, from
//! which the other workers steal. Handing work over allocates nothing.
//!
//! The driver is used only when the pool has at least two threads (it keeps
//! one worker parked while idle) and the caller is not a pool worker already;
//! a run that finds it busy (another thread's run) runs on its own thread.

use std::any::Any;
use std::panic::{catch_unwind, resume_unwind, AssertUnwindSafe};
use std::sync::{Condvar, Mutex, OnceLock};

/// A type-erased pointer to the caller's closure, valid while the caller waits.
struct Job(*mut (dyn FnMut() + Send));
// SAFETY: the closure is `Send`; the caller blocks until the driver is done
// with it, so the pointer never outlives the closure.
unsafe impl Send for Job {}

#[derive(Default)]
struct State {
    job: Option<Job>,
    busy: bool,
    done: bool,
    panic: Option<Box<dyn Any + Send>>,
}

#[derive(Default)]
struct Driver {
    state: Mutex<State>,
    work: Condvar,
    finished: Condvar,
}

fn driver() -> &'static Driver {
    static DRIVER: OnceLock<&'static Driver> = OnceLock::new();
    DRIVER.get_or_init(|| {
        let d: &'static Driver = Box::leak(Box::default());
        rayon::spawn(move || loop {
            let job = {
                let mut s = d.state.lock().unwrap_or_else(|e| e.into_inner());
                loop {
                    if let Some(j) = s.job.take() {
                        break j;
                    }
                    s = d.work.wait(s).unwrap_or_else(|e| e.into_inner());
                }
            };
            // SAFETY: see `Job`.
            let result = catch_unwind(AssertUnwindSafe(|| unsafe { (*job.0)() }));
            let mut s = d.state.lock().unwrap_or_else(|e| e.into_inner());
            s.panic = result.err();
            s.done = true;
            d.finished.notify_all();
        });
        d
    })
}

/// Runs `f` on the pool's driver worker when that helps and it is free, else on
/// this thread. Panics in `f` propagate to the caller.
pub(crate) fn run(f: &mut (dyn FnMut() + Send)) {
    if rayon::current_thread_index().is_some() || rayon::current_num_threads() < 2 {
        return f();
    }
    let d = driver();
    let mut s = d.state.lock().unwrap_or_else(|e| e.into_inner());
    if s.busy {
        drop(s);
        return f();
    }
    s.busy = true;
    s.done = false;
    // SAFETY: the lifetime is erased; this function does not return before the
    // driver has finished calling `f` (it waits for `done` below).
    let ptr: *mut (dyn FnMut() + Send + '_) = f;
    s.job = Some(Job(unsafe {
        std::mem::transmute::<*mut (dyn FnMut() + Send + '_), *mut (dyn FnMut() + Send + 'static)>(ptr)
    }));
    d.work.notify_one();
    while !s.done {
        s = d.finished.wait(s).unwrap_or_else(|e| e.into_inner());
    }
    s.busy = false;
    let panic = s.panic.take();
    drop(s);
    if let Some(p) = panic {
        resume_unwind(p);
    }
}
