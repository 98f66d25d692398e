//! When the loop asks the policy again: one rule for the threaded loop and the lockstep
//! driver, so a lockstep evaluation and a real-time run follow the same points of each chunk.
//!
//! The rule: the next observation is wanted once `replan_interval` of loop time has passed
//! since the last one was sampled, less half a control period. The half period absorbs tick
//! quantisation: with an interval of `n` periods, ticks `k` where `k` is a multiple of `n`
//! observe (the arm follows exactly `n` points of each chunk), whether the loop time is
//! simulated (lockstep) or measured (threaded). An interval of zero asks again as soon as the
//! previous inference is done (every tick in lockstep).

use std::time::Duration;

/// The replan rule for a loop ticking every `period`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ReplanRule {
    interval: Duration,
    period: Duration,
}

impl ReplanRule {
    pub fn new(interval: Duration, rate_hz: f64) -> Self {
        let period = if rate_hz.is_finite() && rate_hz > 0.0 {
            Duration::from_secs_f64(1.0 / rate_hz)
        } else {
            Duration::ZERO
        };
        Self { interval, period }
    }

    pub fn interval(&self) -> Duration {
        self.interval
    }

    /// Loop time (seconds) from which the next observation is wanted, given when the last one
    /// was sampled; `None`: at once (no interval, or no usable last sample).
    pub fn next_due(&self, last_sample_secs: f64) -> Option<f64> {
        if self.interval.is_zero() || !last_sample_secs.is_finite() || last_sample_secs < 0.0 {
            return None;
        }
        Some(last_sample_secs + self.interval.saturating_sub(self.period / 2).as_secs_f64())
    }

    /// Whether an observation sampled at loop time `t` should go to the policy.
    pub fn is_due(&self, last_sample_secs: Option<f64>, t: f64) -> bool {
        // 1 ns of slack: simulated times are sums of periods, with rounding.
        last_sample_secs
            .and_then(|l| self.next_due(l))
            .is_none_or(|due| t + 1e-9 >= due)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every `n`-th tick observes, for intervals of whole periods, as lockstep evaluation's
    /// `k % replan_steps == 0` does.
    #[test]
    fn whole_periods_replan_every_n_ticks() {
        for rate in [20.0, 125.0, 500.0] {
            for n in [1usize, 2, 3, 4, 8, 16] {
                let rule = ReplanRule::new(Duration::from_secs_f64(n as f64 / rate), rate);
                let mut last = None;
                let mut ticks = Vec::new();
                for k in 0..200u64 {
                    let t = k as f64 / rate;
                    if rule.is_due(last, t) {
                        last = Some(t);
                        ticks.push(k);
                    }
                }
                let want: Vec<u64> = (0..200).filter(|k| k % n as u64 == 0).collect();
                assert_eq!(ticks, want, "rate {rate}, n {n}");
            }
        }
        let every_tick = ReplanRule::new(Duration::ZERO, 20.0);
        assert!(every_tick.is_due(Some(1.0), 1.0));
        assert_eq!(every_tick.next_due(1.0), None);
    }
}
