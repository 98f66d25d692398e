//! Timing on the control thread: sleep until shortly before the deadline, then spin; ask for
//! SCHED_FIFO and a 1 ns timer slack where the OS allows, and report what was granted.

use super::metrics::TimingSetup;
use std::time::{Duration, Instant};

/// What the control thread asks for.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct TimingRequest {
    /// SCHED_FIFO priority (1..=99) to try; `None` keeps the default scheduler.
    pub fifo_priority: Option<i32>,
    /// Spin (instead of sleeping) for this long before each deadline; covers the kernel's
    /// wake-up latency, which a sleep alone adds to every tick.
    pub spin_window: Duration,
}

impl Default for TimingRequest {
    fn default() -> Self {
        Self {
            fifo_priority: Some(80),
            // Measured here under a concurrent 2-core build with SCHED_FIFO: a 200 us window
            // left p99.9 period error at ~830 us (wake-ups later than the window), 500 us
            // brought it to ~80 us, for 25% of one core at 500 Hz (6% at 125 Hz).
            spin_window: Duration::from_micros(500),
        }
    }
}

/// Applies `req` to the calling thread; never fails, the result says what was granted.
pub fn setup_current_thread(req: &TimingRequest) -> TimingSetup {
    let scheduler = match req.fifo_priority {
        Some(prio) => set_fifo(prio),
        None => "SCHED_OTHER (not requested)".to_string(),
    };
    TimingSetup {
        scheduler,
        timer_slack_ns: set_timer_slack(),
        spin_window_us: req.spin_window.as_micros() as u64,
    }
}

#[cfg(target_os = "linux")]
fn set_fifo(prio: i32) -> String {
    let prio = prio.clamp(1, 99);
    let param = libc::sched_param {
        sched_priority: prio,
    };
    // SAFETY: pthread_self() is the calling thread; param is a valid, initialised struct.
    let rc = unsafe { libc::pthread_setschedparam(libc::pthread_self(), libc::SCHED_FIFO, &param) };
    if rc == 0 {
        format!("SCHED_FIFO({prio})")
    } else {
        format!(
            "SCHED_OTHER (SCHED_FIFO refused: {})",
            std::io::Error::from_raw_os_error(rc)
        )
    }
}

#[cfg(not(target_os = "linux"))]
fn set_fifo(_prio: i32) -> String {
    "SCHED_OTHER (SCHED_FIFO only tried on Linux)".to_string()
}

/// The default 50 us timer slack lets the kernel wake a sleeping thread that much late.
#[cfg(target_os = "linux")]
fn set_timer_slack() -> Option<u64> {
    // SAFETY: PR_SET_TIMERSLACK takes one unsigned long and affects only the calling thread.
    let rc = unsafe { libc::prctl(libc::PR_SET_TIMERSLACK, 1 as libc::c_ulong, 0, 0, 0) };
    (rc == 0).then_some(1)
}

#[cfg(not(target_os = "linux"))]
fn set_timer_slack() -> Option<u64> {
    None
}

/// Sleeps until `spin` before `deadline`, then spins to it. Returns the wake-up time.
pub fn wait_until(deadline: Instant, spin: Duration) -> Instant {
    let now = Instant::now();
    if let Some(left) = deadline.checked_duration_since(now) {
        if left > spin {
            std::thread::sleep(left - spin);
        }
    }
    loop {
        let now = Instant::now();
        if now >= deadline {
            return now;
        }
        std::hint::spin_loop();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn never_wakes_early() {
        let start = Instant::now();
        for k in 1..=5u32 {
            let d = start + Duration::from_millis(2) * k;
            assert!(wait_until(d, Duration::from_micros(200)) >= d);
        }
        // A deadline in the past returns at once.
        assert!(wait_until(start, Duration::from_micros(200)) >= start);
    }

    #[test]
    fn setup_reports_what_was_granted() {
        let handle = std::thread::spawn(|| setup_current_thread(&TimingRequest::default()));
        let s = handle.join().expect("thread ran");
        assert!(s.scheduler.starts_with("SCHED_"));
        assert_eq!(s.spin_window_us, 500);
    }
}
