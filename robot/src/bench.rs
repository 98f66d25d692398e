//! The loop benchmark (`rudder bench loop`): the kinematic UR5 driven through the full loop by
//! a synthetic policy that takes 50-120 ms per inference and returns 20-step chunks at 20 Hz.

use crate::control::{
    ControlConfig, ControlError, ControlLoop, HoldCounts, LoopMetrics, TimingRequest,
};
use crate::kinematic::KinematicUr5;
use crate::policy::{Policy, PolicyError};
use crate::safety::WorkspaceBox;
use crate::types::{Action, ActionChunk, ActionSpace, Observation};
use crate::ur5::{Joints, Ur5Model};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde::{Deserialize, Serialize};
use std::f64::consts::TAU;
use std::time::Duration;

/// A start pose with the flange in front of the robot, away from every singularity.
pub const HOME: Joints = [0.0, -1.2, 1.4, -1.8, -1.57, 0.3];

/// A planner that follows `home + amplitude * (sin(2 pi f t + phase_j) - sin(phase_j))` in
/// joint space. Each
/// chunk samples that curve at its own points, plus a small random offset per chunk so that
/// consecutive chunks disagree a little (as a learned policy's do) and blending is exercised.
#[derive(Debug, Clone)]
pub struct SinusoidPolicy {
    pub home: Joints,
    pub amplitude: f64,
    pub frequency_hz: f64,
    pub chunk_len: usize,
    pub chunk_dt: f64,
    /// Simulated inference time, seconds, drawn uniformly from this range.
    pub latency: (f64, f64),
    /// Largest per-chunk offset (rad).
    pub chunk_noise: f64,
    rng: StdRng,
}

impl SinusoidPolicy {
    /// 20 points at 20 Hz, 50-120 ms inference, 0.3 rad at 0.2 Hz, +-2 mrad chunk noise.
    pub fn new(seed: u64) -> Self {
        Self {
            home: HOME,
            amplitude: 0.3,
            frequency_hz: 0.2,
            chunk_len: 20,
            chunk_dt: 0.05,
            latency: (0.050, 0.120),
            chunk_noise: 0.002,
            rng: StdRng::seed_from_u64(seed),
        }
    }

    /// The reference position at loop time `t`; it passes through `home` at t = 0, so the
    /// loop starts without a large fade-in from the start pose.
    /// The amplitude ramps in over the first 2 s (smoothstep) so the planner itself starts at
    /// rest, as a real task would.
    pub fn reference(&self, t: f64) -> Joints {
        let s = (t / 2.0).clamp(0.0, 1.0);
        let envelope = s * s * (3.0 - 2.0 * s);
        std::array::from_fn(|j| {
            let phase = 0.7 * j as f64;
            self.home[j]
                + envelope
                    * self.amplitude
                    * ((TAU * self.frequency_hz * t + phase).sin() - phase.sin())
        })
    }
}

impl Policy for SinusoidPolicy {
    fn infer(&mut self, obs: &Observation) -> Result<ActionChunk, PolicyError> {
        if !obs.timestamp.is_finite() {
            return Err(PolicyError::BadObservation {
                field: "timestamp",
                reason: format!("not finite: {}", obs.timestamp),
            });
        }
        let (lo, hi) = self.latency;
        if hi > 0.0 {
            let wait = if hi > lo {
                self.rng.random_range(lo..hi)
            } else {
                hi
            };
            std::thread::sleep(Duration::from_secs_f64(wait));
        }
        let offset: Joints = std::array::from_fn(|_| {
            if self.chunk_noise > 0.0 {
                self.rng.random_range(-self.chunk_noise..self.chunk_noise)
            } else {
                0.0
            }
        });
        let actions = (0..self.chunk_len)
            .map(|k| {
                let r = self.reference(obs.timestamp + k as f64 * self.chunk_dt);
                Action::JointPositions {
                    q: (0..6).map(|j| r[j] + offset[j]).collect(),
                    gripper: Some(if k % 2 == 0 { 1.0 } else { -1.0 }),
                }
            })
            .collect();
        ActionChunk::new(
            ActionSpace::JointPositions { dof: 6 },
            obs.timestamp,
            self.chunk_dt,
            actions,
        )
        .map_err(|e| PolicyError::Inference(e.to_string()))
    }
}

/// The box the benchmark enforces: the sinusoid's flange positions fit with a few cm to spare
/// (checked by a test), so the check runs every tick without binding.
pub fn bench_workspace() -> WorkspaceBox {
    WorkspaceBox {
        min: [-0.72, -0.35, 0.22],
        max: [-0.25, 0.09, 0.96],
    }
}

/// What `rudder bench loop` prints.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LoopBenchReport {
    pub rate_hz: f64,
    pub seconds: f64,
    pub seed: u64,
    pub ticks: u64,
    /// Period error |actual - nominal|, microseconds.
    pub p50_us: f64,
    pub p99_us: f64,
    pub p999_us: f64,
    pub max_us: f64,
    /// Wake-up lateness after the deadline, microseconds.
    pub lateness_p999_us: f64,
    pub lateness_max_us: f64,
    pub missed_ticks: u64,
    pub deadline_overruns: u64,
    /// Emitted commands outside a limit (independent monitor).
    pub violations: u64,
    /// Safety-filter interventions (clamps and holds).
    pub interventions: u64,
    /// Largest |dq| of any joint between two consecutive commands (rad) and the allowed step.
    pub max_discontinuity_rad: f64,
    pub max_step_rad: f64,
    pub inference_p50_ms: f64,
    pub inference_max_ms: f64,
    pub inferences: u64,
    pub chunks_received: u64,
    pub chunk_age_p50_ms: f64,
    pub chunk_age_max_ms: f64,
    pub holds: HoldCounts,
    pub scheduler: String,
    pub metrics: LoopMetrics,
}

impl LoopBenchReport {
    pub fn to_json(&self) -> String {
        serde_json::to_string(self).unwrap_or_else(|e| format!("{{\"error\":\"{e}\"}}"))
    }

    /// Human-readable summary.
    pub fn summary(&self) -> String {
        format!(
            "loop bench: {:.0} Hz for {:.1} s ({} ticks), scheduler {}\n\
             period error us: p50 {:.1}  p99 {:.1}  p99.9 {:.1}  max {:.1}\n\
             missed ticks {}  deadline overruns {}  violations {}  interventions {}\n\
             largest command step {:.6} rad (cap {:.6})  inference p50 {:.1} ms max {:.1} ms ({} runs)\n\
             chunk age p50 {:.1} ms max {:.1} ms  holds {:?}",
            self.rate_hz,
            self.seconds,
            self.ticks,
            self.scheduler,
            self.p50_us,
            self.p99_us,
            self.p999_us,
            self.max_us,
            self.missed_ticks,
            self.deadline_overruns,
            self.violations,
            self.interventions,
            self.max_discontinuity_rad,
            self.max_step_rad,
            self.inference_p50_ms,
            self.inference_max_ms,
            self.inferences,
            self.chunk_age_p50_ms,
            self.chunk_age_max_ms,
            self.holds,
        )
    }
}

/// Runs the loop against the kinematic UR5 at `rate_hz` for `seconds` with the default timing
/// (SCHED_FIFO 80 where permitted, 500 us spin).
pub fn run_loop_bench(
    rate_hz: f64,
    seconds: f64,
    seed: u64,
) -> Result<LoopBenchReport, ControlError> {
    run_loop_bench_with(rate_hz, seconds, seed, TimingRequest::default())
}

/// [`run_loop_bench`] with explicit timing choices (to compare spin windows or schedulers).
pub fn run_loop_bench_with(
    rate_hz: f64,
    seconds: f64,
    seed: u64,
    timing: TimingRequest,
) -> Result<LoopBenchReport, ControlError> {
    if !(seconds.is_finite() && seconds > 0.0) {
        return Err(ControlError::Config {
            field: "seconds",
            reason: format!("need finite > 0, got {seconds}"),
        });
    }
    let model = Ur5Model::ur5();
    let mut cfg = ControlConfig::ur5(model, rate_hz);
    cfg.safety.workspace = Some((model, bench_workspace()));
    cfg.instruction = Some("follow the sinusoid".into());
    cfg.timing = timing;
    let arm = KinematicUr5::new(model, HOME)?.with_rate(rate_hz);
    let policy = SinusoidPolicy::new(seed);
    let lp = ControlLoop::start(arm, policy, cfg)?;
    std::thread::sleep(Duration::from_secs_f64(seconds));
    let (_, m) = lp.stop()?;
    Ok(LoopBenchReport {
        rate_hz,
        seconds,
        seed,
        ticks: m.ticks,
        p50_us: m.period_error_us.p50,
        p99_us: m.period_error_us.p99,
        p999_us: m.period_error_us.p999,
        max_us: m.period_error_us.max,
        lateness_p999_us: m.lateness_us.p999,
        lateness_max_us: m.lateness_us.max,
        missed_ticks: m.missed_ticks,
        deadline_overruns: m.deadline_overruns,
        violations: m.violations.total(),
        interventions: m.safety.interventions.total(),
        max_discontinuity_rad: m.max_command_step_rad,
        max_step_rad: std::f64::consts::PI / rate_hz,
        inference_p50_ms: m.inference_latency_ms.p50,
        inference_max_ms: m.inference_latency_ms.max,
        inferences: m.inferences,
        chunks_received: m.chunks_received,
        chunk_age_p50_ms: m.chunk_age_ms.p50,
        chunk_age_max_ms: m.chunk_age_ms.max,
        holds: m.holds,
        scheduler: m.timing.scheduler.clone(),
        metrics: m,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sinusoid_stays_inside_bench_box_with_margin() {
        let p = SinusoidPolicy::new(0);
        let m = Ur5Model::ur5();
        let b = bench_workspace();
        let (mut lo, mut hi) = ([f64::MAX; 3], [f64::MIN; 3]);
        for i in 0..5000 {
            let q = p.reference(i as f64 * 0.001);
            let x = m.tcp_position(&q);
            for k in 0..3 {
                lo[k] = lo[k].min(x[k]);
                hi[k] = hi[k].max(x[k]);
            }
        }
        for k in 0..3 {
            assert!(
                lo[k] > b.min[k] + 0.02 && hi[k] < b.max[k] - 0.02,
                "{lo:?} {hi:?}"
            );
        }
    }
}
