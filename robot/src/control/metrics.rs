//! Fixed-size histograms (no allocation while the loop runs) and the metrics the loop exposes.

use crate::safety::{SafetyReport, ViolationCounts};
use serde::{Deserialize, Serialize};

/// Linear-bin histogram of non-negative durations in nanoseconds, with an exact maximum.
#[derive(Debug, Clone)]
pub struct Histogram {
    bin_ns: u64,
    bins: Vec<u64>,
    overflow: u64,
    count: u64,
    sum_ns: u128,
    max_ns: u64,
}

impl Histogram {
    /// `bins` bins of `bin_ns` each; values beyond go to an overflow bin (their exact maximum
    /// is still kept).
    pub fn new(bin_ns: u64, bins: usize) -> Self {
        Self {
            bin_ns: bin_ns.max(1),
            bins: vec![0; bins.max(1)],
            overflow: 0,
            count: 0,
            sum_ns: 0,
            max_ns: 0,
        }
    }

    pub fn record(&mut self, ns: u64) {
        let i = (ns / self.bin_ns) as usize;
        match self.bins.get_mut(i) {
            Some(b) => *b += 1,
            None => self.overflow += 1,
        }
        self.count += 1;
        self.sum_ns += ns as u128;
        self.max_ns = self.max_ns.max(ns);
    }

    pub fn count(&self) -> u64 {
        self.count
    }

    /// Upper edge of the bin holding the `p`-quantile (so it never under-reports), capped at
    /// the exact maximum.
    pub fn quantile_ns(&self, p: f64) -> u64 {
        if self.count == 0 {
            return 0;
        }
        let rank = ((p.clamp(0.0, 1.0) * self.count as f64).ceil() as u64).max(1);
        let mut seen = 0;
        for (i, b) in self.bins.iter().enumerate() {
            seen += b;
            if seen >= rank {
                return ((i as u64 + 1) * self.bin_ns).min(self.max_ns);
            }
        }
        self.max_ns
    }

    pub fn summary_us(&self) -> Percentiles {
        let us = |ns: u64| ns as f64 / 1e3;
        Percentiles {
            count: self.count,
            mean: if self.count == 0 {
                0.0
            } else {
                self.sum_ns as f64 / self.count as f64 / 1e3
            },
            p50: us(self.quantile_ns(0.5)),
            p99: us(self.quantile_ns(0.99)),
            p999: us(self.quantile_ns(0.999)),
            max: us(self.max_ns),
        }
    }

    /// Same summary in milliseconds.
    pub fn summary_ms(&self) -> Percentiles {
        let s = self.summary_us();
        Percentiles {
            count: s.count,
            mean: s.mean / 1e3,
            p50: s.p50 / 1e3,
            p99: s.p99 / 1e3,
            p999: s.p999 / 1e3,
            max: s.max / 1e3,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Default, Serialize, Deserialize)]
pub struct Percentiles {
    pub count: u64,
    pub mean: f64,
    pub p50: f64,
    pub p99: f64,
    pub p999: f64,
    pub max: f64,
}

/// How many times the watchdog entered a hold, by reason.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct HoldCounts {
    pub no_chunk_yet: u64,
    pub stale_observation: u64,
    pub chunk_exhausted: u64,
    pub inference_error: u64,
    pub inference_timeout: u64,
    pub embodiment_error: u64,
    pub stopping: u64,
}

impl HoldCounts {
    /// The non-zero counts as `reason N, ...` ("none" if the loop never held).
    pub fn summary(&self) -> String {
        let parts: Vec<String> = [
            ("no chunk yet", self.no_chunk_yet),
            ("stale observation", self.stale_observation),
            ("chunk exhausted", self.chunk_exhausted),
            ("inference error", self.inference_error),
            ("inference timeout", self.inference_timeout),
            ("embodiment error", self.embodiment_error),
            ("stopping", self.stopping),
        ]
        .iter()
        .filter(|(_, n)| *n > 0)
        .map(|(name, n)| format!("{name} {n}"))
        .collect();
        if parts.is_empty() {
            "none".into()
        } else {
            parts.join(", ")
        }
    }
}

/// Everything the loop measures; a snapshot is published while it runs and the final one is
/// returned by `stop`.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct LoopMetrics {
    pub rate_hz: f64,
    pub ticks: u64,
    /// Deadlines skipped because a tick woke more than one period late.
    pub missed_ticks: u64,
    /// Ticks whose work (read, filter, command) took longer than the period.
    pub deadline_overruns: u64,
    /// |actual period - nominal period|, microseconds.
    pub period_error_us: Percentiles,
    /// Wake-up time minus deadline, microseconds.
    pub lateness_us: Percentiles,
    /// Work per tick, microseconds.
    pub tick_work_us: Percentiles,
    pub inference_latency_ms: Percentiles,
    pub inferences: u64,
    /// Inferences whose chunk was not followed: the policy failed, or its chunk was dropped
    /// (`chunks_dropped`).
    pub inference_errors: u64,
    pub last_inference_error: Option<String>,
    /// Tick time minus the observation time of the chunk being followed, milliseconds.
    pub chunk_age_ms: Percentiles,
    pub chunks_received: u64,
    /// Chunks dropped: unconvertible, or already over when they arrived.
    pub chunks_rejected: u64,
    /// Relative (delta) chunks that were over on arrival but within the inference timeout, so
    /// they started late instead of being dropped.
    #[serde(default)]
    pub chunks_late: u64,
    pub unreachable_points: u64,
    /// Chunks that could not be converted to a joint trajectory (e.g. an unreachable first
    /// end-effector target): dropped and counted, while the loop follows the trajectory it
    /// has (see `control::inference`).
    #[serde(default)]
    pub chunks_dropped: u64,
    pub safety: SafetyReport,
    /// Limit violations found in the emitted stream by the independent monitor.
    pub violations: ViolationCounts,
    /// Largest |dq| of any joint between consecutive commands, radians.
    pub max_command_step_rad: f64,
    pub holds: HoldCounts,
    pub hold_ticks: u64,
    pub timing: TimingSetup,
}

/// What the control thread got from the OS for timing.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct TimingSetup {
    /// "SCHED_FIFO(prio)" or "SCHED_OTHER (...why FIFO was not used)".
    pub scheduler: String,
    pub timer_slack_ns: Option<u64>,
    pub spin_window_us: u64,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantiles_are_conservative() {
        let mut h = Histogram::new(1000, 100);
        for i in 0..1000u64 {
            h.record(i * 100);
        }
        h.record(10_000_000);
        let s = h.summary_us();
        assert_eq!(s.count, 1001);
        assert!(s.p50 >= 50.0 && s.p50 <= 51.0, "{s:?}");
        assert_eq!(s.max, 10_000.0);
        assert!(s.p999 >= 99.0);
        assert_eq!(Histogram::new(1, 1).summary_us(), Percentiles::default());
    }
}
