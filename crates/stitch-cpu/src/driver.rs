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
//! one worker parked while idle; a pool of one runs each plan as one injected
//! job instead) and the caller is not a pool worker already;
//! a run that finds it busy (another thread's run) runs on its own thread.
//!
//! While a run is on the driver, the pool's other workers spin for work
//! ([`with_spinners`]) instead of going to sleep between kernels: a decode
//! step is over a thousand small steps, and a rayon worker that has slept
//! takes microseconds to wake for every parallel kernel (the profile showed a
//! 9-task attention costing 17 µs in parallel against 7 µs alone). llama.cpp's
//! threads spin between ops in the same way. Spinning ends with the run.

use std::any::Any;
use std::panic::{catch_unwind, resume_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Condvar, Mutex, OnceLock};

/// Sets the flag when dropped (so spinners stop even if the run panics).
struct SetOnDrop<'a>(&'a AtomicBool);
impl Drop for SetOnDrop<'_> {
    fn drop(&mut self) {
        self.0.store(true, Ordering::Release);
    }
}

/// Runs `f` on this pool worker while every other worker of the pool spins,
/// running any job it can find (the parallel loops `f` starts), until `f`
/// returns. Each spinner is the second half of a `rayon::join`, so nothing is
/// allocated; a worker that never picks its half up costs nothing (the half
/// then finds the run finished and returns at once).
pub(crate) fn with_spinners(f: &mut (dyn FnMut() + Send)) {
    let done = AtomicBool::new(false);
    let owner = rayon::current_thread_index();
    spin_join(rayon::current_num_threads().saturating_sub(1), &done, owner, f);
}

fn spin_join(helpers: usize, done: &AtomicBool, owner: Option<usize>, f: &mut (dyn FnMut() + Send)) {
    if helpers == 0 {
        let _set = SetOnDrop(done);
        return f();
    }
    rayon::join(|| spin_join(helpers - 1, done, owner, f), || spin(done, owner));
}

fn spin(done: &AtomicBool, owner: Option<usize>) {
    // The run's own thread can pick this half up while it waits inside the
    // run (a parallel loop's join, a broadcast): spinning there would wait for
    // the run to end, on the thread that has to end it. Return instead.
    if rayon::current_thread_index() == owner {
        return;
    }
    let mut idle = 0u32;
    while !done.load(Ordering::Acquire) {
        if rayon::yield_now() == Some(rayon::Yield::Executed) {
            idle = 0;
        } else {
            idle = idle.wrapping_add(1);
            // Give the core away now and then (an oversubscribed machine).
            if idle.is_multiple_of(1024) {
                std::thread::yield_now();
            } else {
                std::hint::spin_loop();
            }
        }
    }
}

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
            let result = catch_unwind(AssertUnwindSafe(|| with_spinners(unsafe { &mut *job.0 })));
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
    if rayon::current_thread_index().is_some() {
        return f();
    }
    if rayon::current_num_threads() < 2 {
        // One pool thread (`--threads 1`): run the plan on it, one hand-off
        // per run, so that its parallel loops run inline instead of each
        // being injected from this thread and waited for (3x slower decode).
        return rayon::scope(|_| f());
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

#[cfg(test)]
mod tests {
    use super::with_spinners;
    use rayon::prelude::*;

    fn pool(n: usize) -> rayon::ThreadPool {
        rayon::ThreadPoolBuilder::new().num_threads(n).build().unwrap()
    }

    #[test]
    fn a_run_with_spinners_computes_the_same_and_lets_every_worker_help() {
        for threads in [2, 3, 4] {
            pool(threads).install(|| {
                let data: Vec<u64> = (0..200_000u64).map(|i| i * 7 % 1013).collect();
                let want: u64 = data.iter().sum();
                let mut got = 0;
                let mut seen = std::collections::HashSet::new();
                let mut f = || {
                    for _ in 0..50 {
                        got = data.par_chunks(1000).map(|c| c.iter().sum::<u64>()).sum();
                        seen.extend(
                            (0..64)
                                .into_par_iter()
                                .map(|_| {
                                    std::thread::sleep(std::time::Duration::from_micros(50));
                                    rayon::current_thread_index()
                                })
                                .collect::<Vec<_>>(),
                        );
                    }
                };
                with_spinners(&mut f);
                assert_eq!(got, want);
                assert!(seen.len() >= 2, "{threads} threads: only {seen:?} ran the loops");
            });
        }
    }

    #[test]
    fn waits_inside_a_run_finish_and_a_panic_stops_the_spinners() {
        pool(2).install(|| {
            // A broadcast waits on the run's own thread: the spinner half it
            // may pick up there must not wait for the run to end.
            for _ in 0..200 {
                let mut n = 0;
                with_spinners(&mut || n = rayon::broadcast(|_| 1usize).iter().sum());
                assert_eq!(n, 2);
            }
            let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                with_spinners(&mut || panic!("inside the run"));
            }));
            assert!(r.is_err());
            // The pool still runs work afterwards (no spinner left behind).
            let s: u32 = (0..1000u32).into_par_iter().sum();
            assert_eq!(s, 499_500);
        });
    }
}
