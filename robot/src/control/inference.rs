//! One inference as both loops run it: the policy on an observation, its chunk converted to
//! a joint trajectory, and the statistics kept about it.
//!
//! The documented policy, the same in the threaded loop and the lockstep driver:
//! - a policy that returns an error makes the loop hold (`HoldReason::InferenceError`) until
//!   an inference succeeds (the lockstep driver, which has no later inference to wait for,
//!   returns the error instead);
//! - a chunk that cannot be converted (e.g. its first end-effector target is out of reach) is
//!   dropped and counted (`LoopMetrics::chunks_dropped`, and as an inference error); the loop
//!   keeps following the trajectory it has, and the watchdog holds when that runs out.

use super::metrics::{Histogram, LoopMetrics};
use super::trajectory::{ChunkConverter, ConversionNotes, ConvertError, JointTrajectory};
use crate::policy::{Policy, PolicyError};
use crate::types::Observation;
use std::time::{Duration, Instant};

/// What came of one inference.
#[derive(Debug)]
pub enum Planned {
    /// A trajectory to offer the tick logic.
    Trajectory(JointTrajectory, ConversionNotes),
    /// The policy failed: hold until it succeeds.
    PolicyFailed(PolicyError),
    /// The chunk could not be converted: dropped, the current trajectory runs on.
    Dropped(ConvertError),
}

/// Runs `policy` on `obs` and converts its chunk; returns the outcome and the model call's
/// latency.
pub fn plan<P: Policy + ?Sized>(
    policy: &mut P,
    converter: &ChunkConverter,
    obs: &Observation,
) -> (Planned, Duration) {
    let started = Instant::now();
    let result = policy.infer(obs);
    let latency = started.elapsed();
    let planned = match result {
        Err(e) => Planned::PolicyFailed(e),
        Ok(chunk) => match converter.convert(&chunk, &obs.state, obs.timestamp) {
            Ok((traj, notes)) => Planned::Trajectory(traj, notes),
            Err(e) => Planned::Dropped(e),
        },
    };
    (planned, latency)
}

/// Inference statistics, merged into `LoopMetrics`.
#[derive(Debug, Default)]
pub struct InferenceStats {
    latency: Option<Histogram>,
    count: u64,
    errors: u64,
    dropped: u64,
    last_error: Option<String>,
    unreachable_points: u64,
}

impl InferenceStats {
    pub fn record(&mut self, planned: &Planned, latency: Duration) {
        self.latency
            .get_or_insert_with(|| Histogram::new(100_000, 100_000))
            .record(latency.as_nanos().min(u64::MAX as u128) as u64);
        self.count += 1;
        match planned {
            Planned::Trajectory(_, notes) => {
                self.unreachable_points += notes.unreachable_points as u64
            }
            Planned::PolicyFailed(e) => {
                self.errors += 1;
                self.last_error = Some(e.to_string());
            }
            Planned::Dropped(e) => {
                self.errors += 1;
                self.dropped += 1;
                self.last_error = Some(e.to_string());
            }
        }
    }

    pub fn merge_into(&self, m: &mut LoopMetrics) {
        if let Some(h) = &self.latency {
            m.inference_latency_ms = h.summary_ms();
        }
        m.inferences = self.count;
        m.inference_errors = self.errors;
        m.chunks_dropped = self.dropped;
        m.last_inference_error = self.last_error.clone();
        m.unreachable_points = self.unreachable_points;
    }
}
