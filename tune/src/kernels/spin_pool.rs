//! A small fork-join pool whose helpers spin between jobs, for the back-to-back kernels of one
//! forward pass.
//!
//! A forward pass of the benchmark Llama at 64-256 tokens is ~70 parallel kernels of 0.1-5 ms
//! each, separated by short single-threaded steps (norms, residual adds). Rayon parks an idle
//! worker after a few microseconds of spinning; waking a parked vCPU on a VM takes tens to
//! hundreds of microseconds, paid on nearly every kernel. Here helpers keep polling for
//! [`spin`] after their last job (yielding the CPU to anything else runnable) and only then
//! park, so a forward pass wakes them once. `RUDDER_SPIN_US` sets that window (default 3000
//! µs; 0 parks at once, for a machine where other work needs the cores between passes).
//!
//! One job runs at a time: a caller that finds the pool busy (another thread's forward pass,
//! or a call from inside a job) gets `false` back and uses rayon instead.

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, OnceLock};
use std::time::{Duration, Instant};

/// How long an idle helper keeps polling before it parks: `RUDDER_SPIN_US` microseconds
/// (3000 when unset or unreadable).
fn spin() -> Duration {
    static SPIN: OnceLock<Duration> = OnceLock::new();
    *SPIN.get_or_init(|| Duration::from_micros(super::env_number("RUDDER_SPIN_US").unwrap_or(3000)))
}

/// One parallel loop: `f(0..tasks)`, claimed an index at a time.
struct Job {
    /// The caller's closure; only dereferenced for a claimed index, and the caller returns
    /// only after every claimed index has finished.
    f: *const (dyn Fn(usize) + Sync),
    tasks: usize,
    next: AtomicUsize,
    done: AtomicUsize,
    panicked: AtomicBool,
}

// SAFETY: `f` points at a `Sync` closure, called only while the caller waits in `run`.
unsafe impl Send for Job {}
unsafe impl Sync for Job {}

impl Job {
    fn work(&self) {
        loop {
            let i = self.next.fetch_add(1, Ordering::AcqRel);
            if i >= self.tasks {
                return;
            }
            // SAFETY: index i was claimed before `done` reached `tasks`, so the caller is
            // still inside `run`, keeping the closure alive.
            let f = unsafe { &*self.f };
            if catch_unwind(AssertUnwindSafe(|| f(i))).is_err() {
                self.panicked.store(true, Ordering::Release);
            }
            self.done.fetch_add(1, Ordering::AcqRel);
        }
    }
}

struct Pool {
    helpers: usize,
    /// Held by the thread whose job is running.
    caller: Mutex<()>,
    job: Mutex<Option<Arc<Job>>>,
    epoch: AtomicU64,
    /// Parked helpers, guarded for the condition variable.
    parked: Mutex<usize>,
    wake: Condvar,
}

impl Pool {
    fn helper_loop(&self) {
        let mut seen = self.epoch.load(Ordering::Acquire);
        let mut idle_since = Instant::now();
        let mut polls = 0u32;
        let spin = spin();
        loop {
            let e = self.epoch.load(Ordering::Acquire);
            if e != seen {
                seen = e;
                let job = self.job.lock().ok().and_then(|j| j.clone());
                if let Some(job) = job {
                    job.work();
                }
                idle_since = Instant::now();
                polls = 0;
                continue;
            }
            polls = polls.wrapping_add(1);
            if polls < 2000 && !spin.is_zero() {
                std::hint::spin_loop();
                continue;
            }
            if idle_since.elapsed() < spin {
                std::thread::yield_now();
                continue;
            }
            let Ok(mut parked) = self.parked.lock() else {
                return;
            };
            *parked += 1;
            while self.epoch.load(Ordering::Acquire) == seen {
                parked = match self.wake.wait(parked) {
                    Ok(g) => g,
                    Err(_) => return,
                };
            }
            *parked -= 1;
        }
    }
}

fn pool() -> &'static Arc<Pool> {
    static POOL: OnceLock<Arc<Pool>> = OnceLock::new();
    POOL.get_or_init(|| {
        let helpers = rayon::current_num_threads().saturating_sub(1);
        let pool = Arc::new(Pool {
            helpers,
            caller: Mutex::new(()),
            job: Mutex::new(None),
            epoch: AtomicU64::new(0),
            parked: Mutex::new(0),
            wake: Condvar::new(),
        });
        for i in 0..helpers {
            let p = pool.clone();
            let spawned = std::thread::Builder::new()
                .name(format!("rudder-spin-{i}"))
                .spawn(move || p.helper_loop());
            if spawned.is_err() {
                // Fewer helpers only means less parallelism: the caller runs what is left.
                break;
            }
        }
        pool
    })
}

/// Threads a job runs on (helpers and the caller).
pub fn threads() -> usize {
    pool().helpers + 1
}

/// Runs `f(0..tasks)` on the pool and the calling thread; `false` (nothing ran) when the pool
/// is busy, so the caller should fall back to rayon. A panic in `f` is re-raised here.
pub fn run(tasks: usize, f: &(dyn Fn(usize) + Sync)) -> bool {
    let p = pool();
    if tasks <= 1 || p.helpers == 0 {
        (0..tasks).for_each(f);
        return true;
    }
    let turn = match p.caller.try_lock() {
        Ok(g) => g,
        Err(std::sync::TryLockError::Poisoned(e)) => e.into_inner(),
        Err(std::sync::TryLockError::WouldBlock) => return false,
    };
    // SAFETY (lifetime erasure): the job's closure pointer is only dereferenced for claimed
    // indices, and this function returns only once all claimed indices are done.
    let f_static: *const (dyn Fn(usize) + Sync + 'static) =
        unsafe { std::mem::transmute::<*const (dyn Fn(usize) + Sync + '_), _>(f) };
    let job = Arc::new(Job {
        f: f_static,
        tasks,
        next: AtomicUsize::new(0),
        done: AtomicUsize::new(0),
        panicked: AtomicBool::new(false),
    });
    match p.job.lock() {
        Ok(mut slot) => *slot = Some(job.clone()),
        Err(_) => {
            (0..tasks).for_each(f);
            return true;
        }
    }
    p.epoch.fetch_add(1, Ordering::AcqRel);
    if let Ok(parked) = p.parked.lock() {
        if *parked > 0 {
            p.wake.notify_all();
        }
    }
    job.work();
    // A helper preempted mid-task (more runnable threads than cores) needs this core back:
    // poll briefly, then yield between polls.
    let mut polls = 0u32;
    while job.done.load(Ordering::Acquire) < tasks {
        polls = polls.saturating_add(1);
        if polls < 2000 {
            std::hint::spin_loop();
        } else {
            std::thread::yield_now();
        }
    }
    if let Ok(mut slot) = p.job.lock() {
        *slot = None;
    }
    drop(turn);
    if job.panicked.load(Ordering::Acquire) {
        panic!("a task of a parallel kernel panicked");
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_index_runs_once_across_many_jobs() {
        for tasks in [0usize, 1, 2, 3, 7, 64] {
            for _ in 0..50 {
                let hits: Vec<AtomicUsize> = (0..tasks).map(|_| AtomicUsize::new(0)).collect();
                let hit = |i: usize| {
                    hits[i].fetch_add(1, Ordering::Relaxed);
                };
                // Another test's job may hold the pool; then the work runs here instead.
                if !run(tasks, &hit) {
                    (0..tasks).for_each(hit);
                }
                assert!(hits.iter().all(|h| h.load(Ordering::Relaxed) == 1));
            }
        }
    }

    #[test]
    fn a_busy_pool_declines_a_nested_job() {
        let inner = AtomicUsize::new(0);
        let declined = AtomicUsize::new(0);
        let outer = run(4, &|_| {
            if !run(2, &|_| {
                inner.fetch_add(1, Ordering::Relaxed);
            }) {
                declined.fetch_add(1, Ordering::Relaxed);
            }
        });
        // With one thread there are no helpers and nested jobs run inline; a pool held by
        // another test declines the outer job too.
        if threads() > 1 && outer {
            assert_eq!(declined.load(Ordering::Relaxed), 4);
            assert_eq!(inner.load(Ordering::Relaxed), 0);
        }
    }

    /// With `RUDDER_SPIN_US=0` helpers park as soon as a job ends, and each job still wakes
    /// them and runs every index once. Runs itself in a child process, where the variable is
    /// set before the pool reads it.
    #[test]
    fn helpers_park_at_once_and_still_wake_with_no_spin() {
        if std::env::var("RUDDER_SPIN_US").as_deref() != Ok("0") {
            // This test's name as the harness knows it: its module path without the crate.
            let (_, module) = module_path!().split_once("::").expect("a module path");
            let name = format!("{module}::helpers_park_at_once_and_still_wake_with_no_spin");
            let exe = std::env::current_exe().expect("test binary");
            let child = std::process::Command::new(exe)
                .args(["--exact", &name, "--test-threads", "1"])
                .env("RUDDER_SPIN_US", "0")
                .output()
                .expect("child test process");
            assert!(
                child.status.success()
                    && String::from_utf8_lossy(&child.stdout).contains("1 passed"),
                "the child run failed: {}\n{}{}",
                child.status,
                String::from_utf8_lossy(&child.stdout),
                String::from_utf8_lossy(&child.stderr)
            );
            return;
        }
        assert_eq!(spin(), Duration::ZERO);
        let p = pool();
        for _ in 0..100 {
            // Wait (bounded) for every helper to park, then hand them a job.
            let start = Instant::now();
            while p.parked.lock().map_or(0, |n| *n) < p.helpers
                && start.elapsed() < Duration::from_secs(5)
            {
                std::thread::yield_now();
            }
            assert_eq!(
                *p.parked.lock().expect("lock"),
                p.helpers,
                "helpers did not park"
            );
            let hits: Vec<AtomicUsize> = (0..8).map(|_| AtomicUsize::new(0)).collect();
            assert!(run(8, &|i| {
                hits[i].fetch_add(1, Ordering::Relaxed);
            }));
            assert!(hits.iter().all(|h| h.load(Ordering::Relaxed) == 1));
        }
    }
}
