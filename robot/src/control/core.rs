//! The per-tick logic of the control thread, free of threads and clocks so it can be stepped
//! deterministically in tests: watchdog, reference following, safety filter, metrics.

use super::metrics::{Histogram, HoldCounts};
use super::trajectory::{JointTrajectory, Reference};
use crate::safety::{LimitMonitor, SafetyConfig, SafetyError, SafetyFilter, SafetyReport};
use crate::types::JointCommand;
use serde::{Deserialize, Serialize};
use std::sync::Arc;

/// Why the loop is holding.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum HoldReason {
    /// Started, no chunk received yet.
    NoChunkYet,
    /// The measured state is older than the watchdog allows (like the UR driver's receive
    /// timeout).
    StaleObservation,
    /// The time is past the last point of the newest chunk.
    ChunkExhausted,
    /// The last inference returned an error. (A chunk that cannot be converted is dropped
    /// without a hold; see `control::inference`.)
    InferenceError,
    /// An inference has been running longer than the time-out.
    InferenceTimeout,
    /// Reading the state or sending the command failed.
    EmbodimentError,
    /// `stop` was called: braking to rest before the thread ends.
    Stopping,
}

/// What the loop is doing; reported every tick.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum LoopState {
    Running,
    /// Decelerating (within the limits) or, once `at_rest`, holding position.
    Holding {
        reason: HoldReason,
        at_rest: bool,
    },
    Stopped,
}

impl LoopState {
    pub fn hold_reason(&self) -> Option<HoldReason> {
        match self {
            LoopState::Holding { reason, .. } => Some(*reason),
            _ => None,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct WatchdogConfig {
    /// Seconds after which a measured state counts as stale.
    pub stale_after: f64,
    /// Seconds one inference may run before the loop holds.
    pub inference_timeout: f64,
}

impl Default for WatchdogConfig {
    /// 0.04 s is the UR driver's `robot_receive_timeout`; 0.5 s lets a 50-120 ms model miss a
    /// few deadlines of its own before the arm stops.
    fn default() -> Self {
        Self {
            stale_after: 0.04,
            inference_timeout: 0.5,
        }
    }
}

/// The inputs the watchdog judges each tick.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct Health {
    /// Seconds since the measured state was sampled.
    pub state_age: f64,
    pub embodiment_failed: bool,
    pub inference_failed: bool,
    /// Seconds the current inference has been running, if one is.
    pub inference_busy_for: Option<f64>,
    pub stopping: bool,
}

/// Tick logic: owns the safety filter and an independent monitor of what it emits.
#[derive(Debug, Clone)]
pub struct ControlCore {
    watchdog: WatchdogConfig,
    blend_window: f64,
    filter: SafetyFilter,
    monitor: LimitMonitor,
    reference: Option<Reference>,
    desired: Vec<f64>,
    state: LoopState,
    holds: HoldCounts,
    hold_ticks: u64,
    chunk_age: Histogram,
    chunks_received: u64,
    chunks_rejected: u64,
    /// Recent (time, commanded position) pairs, oldest first, for re-anchoring relative chunks.
    commanded: std::collections::VecDeque<(f64, Vec<f64>)>,
    chunks_reanchored: u64,
    chunks_late: u64,
}

/// How many ticks of commands are kept for re-anchoring (2 s at 500 Hz).
const COMMAND_HISTORY: usize = 1000;

/// A relative chunk whose observed start is further than this (rad, any joint) from the
/// command at its start time is not re-anchored: the arm is not where it was sent (contact,
/// a hold), and adding deltas to the command would carry the error on.
const REANCHOR_MAX_RAD: f64 = 0.2;

impl ControlCore {
    /// Starts holding at rest at `initial` (the measured position).
    pub fn new(
        safety: SafetyConfig,
        watchdog: WatchdogConfig,
        blend_window: f64,
        initial: &[f64],
    ) -> Result<Self, SafetyError> {
        let filter = SafetyFilter::new(safety.clone(), initial)?;
        let monitor = LimitMonitor::new(safety, initial);
        Ok(Self {
            watchdog,
            blend_window,
            filter,
            monitor,
            reference: None,
            desired: vec![0.0; initial.len()],
            state: LoopState::Holding {
                reason: HoldReason::NoChunkYet,
                at_rest: true,
            },
            holds: HoldCounts::default(),
            hold_ticks: 0,
            // 0.1 ms bins up to 5 s.
            chunk_age: Histogram::new(100_000, 50_000),
            chunks_received: 0,
            chunks_rejected: 0,
            commanded: std::collections::VecDeque::with_capacity(COMMAND_HISTORY),
            chunks_reanchored: 0,
            chunks_late: 0,
        })
    }

    /// The command sent at the last tick at or before `time` (the oldest kept if `time` is
    /// older).
    fn commanded_at(&self, time: f64) -> Option<&[f64]> {
        self.commanded
            .iter()
            .rev()
            .find(|(ct, _)| *ct <= time + 1e-9)
            .or(self.commanded.front())
            .map(|(_, q)| q.as_slice())
    }

    /// A relative chunk (deltas added to the observed position) moved so that it starts at the
    /// position commanded at its start time. The loop sends a command every tick while the
    /// policy thinks, so by the time a chunk arrives the arm has been sent on from the
    /// observation; anchoring the deltas on the stale observation would drop the motion of
    /// every tick in between (the arm would move at a fraction of the policy's speed).
    fn reanchor(&mut self, traj: Arc<JointTrajectory>) -> Arc<JointTrajectory> {
        if !traj.relative {
            return traj;
        }
        let Some(first) = traj.points.first() else {
            return traj;
        };
        let Some(anchor) = self.commanded_at(traj.start_time) else {
            return traj;
        };
        if anchor.len() != first.len()
            || anchor
                .iter()
                .zip(first)
                .any(|(a, f)| (a - f).abs() > REANCHOR_MAX_RAD)
        {
            return traj;
        }
        let offset: Vec<f64> = anchor.iter().zip(first).map(|(a, f)| a - f).collect();
        let mut moved = (*traj).clone();
        for p in &mut moved.points {
            for (x, o) in p.iter_mut().zip(&offset) {
                *x += o;
            }
        }
        self.chunks_reanchored += 1;
        Arc::new(moved)
    }

    /// A relative chunk that is over on arrival, moved to start at `t`. Deltas say how far to
    /// move from where the arm is, not where to be at a given time; a one-step chunk (an
    /// OpenVLA-style policy: one delta per inference, due one control period after its
    /// observation) always arrives after its end, and rejecting it would leave the arm still
    /// forever. Re-anchoring then puts its start on the latest command.
    fn start_late(&mut self, traj: Arc<JointTrajectory>, t: f64) -> Arc<JointTrajectory> {
        self.chunks_late += 1;
        let mut moved = (*traj).clone();
        moved.start_time = t;
        Arc::new(moved)
    }

    /// Relative chunks that were over when they arrived and started late instead.
    pub fn chunks_late(&self) -> u64 {
        self.chunks_late
    }

    /// Relative chunks moved onto the loop's own commands so far.
    pub fn chunks_reanchored(&self) -> u64 {
        self.chunks_reanchored
    }

    /// Offers a new trajectory at time `t`; it is faded in over the blend window. Returns
    /// false (and counts it) if it cannot be used: wrong joint count, or already over. A
    /// relative chunk is first re-anchored on the commands (see `reanchor`); one that is over
    /// when it arrives, but younger than the inference timeout, starts now instead (see
    /// `start_late`).
    pub fn offer(&mut self, traj: Arc<JointTrajectory>, t: f64) -> bool {
        self.chunks_received += 1;
        let dof = self.desired.len();
        let over = traj.end_time() <= t;
        let late_ok = traj.relative && t - traj.start_time <= self.watchdog.inference_timeout;
        if traj.dof() != dof || traj.points.iter().any(|p| p.len() != dof) || (over && !late_ok) {
            self.chunks_rejected += 1;
            return false;
        }
        let traj = if over { self.start_late(traj, t) } else { traj };
        let traj = self.reanchor(traj);
        let reference = self.reference.get_or_insert_with(|| {
            // Resuming from a hold: blend from where the filter last put the arm.
            Reference::hold(self.filter.position(), None, self.blend_window)
        });
        reference.push(traj, t);
        true
    }

    /// One tick at time `t` (seconds, loop clock). Writes the command to send into `out`.
    pub fn step(&mut self, t: f64, health: &Health, out: &mut JointCommand) -> LoopState {
        let reason = self.judge(t, health);
        out.positions.resize(self.desired.len(), 0.0);
        match reason {
            Some(reason) => {
                if self.state.hold_reason() != Some(reason) {
                    self.count_hold(reason);
                }
                // Dropping the reference makes the next chunk blend in from the held pose.
                self.reference = None;
                let (_, g) = self.filter.apply(None, None, &mut out.positions);
                out.gripper = g;
                self.hold_ticks += 1;
                self.state = LoopState::Holding {
                    reason,
                    at_rest: self.filter.at_rest(),
                };
            }
            None => {
                let mut g = None;
                if let Some(r) = self.reference.as_mut() {
                    g = r.sample(t, &mut self.desired);
                    if let Some(tr) = r.newest() {
                        let age = (t - tr.observation_time).max(0.0);
                        self.chunk_age.record((age * 1e9) as u64);
                    }
                }
                let (_, g) = self
                    .filter
                    .apply(Some(&self.desired), g, &mut out.positions);
                out.gripper = g;
                self.state = LoopState::Running;
            }
        }
        self.monitor.check(&out.positions);
        // Reuses the oldest entry's buffer: no allocation on the control thread once full.
        let mut slot = if self.commanded.len() >= COMMAND_HISTORY {
            self.commanded
                .pop_front()
                .map(|(_, q)| q)
                .unwrap_or_default()
        } else {
            Vec::with_capacity(out.positions.len())
        };
        slot.clear();
        slot.extend_from_slice(&out.positions);
        self.commanded.push_back((t, slot));
        self.state
    }

    /// The watchdog: the first failing check, in order of how directly it endangers the arm.
    fn judge(&self, t: f64, h: &Health) -> Option<HoldReason> {
        if h.stopping {
            return Some(HoldReason::Stopping);
        }
        if h.embodiment_failed {
            return Some(HoldReason::EmbodimentError);
        }
        // NaN age (a broken clock) counts as stale.
        if h.state_age.is_nan() || h.state_age > self.watchdog.stale_after {
            return Some(HoldReason::StaleObservation);
        }
        if h.inference_failed {
            return Some(HoldReason::InferenceError);
        }
        if h.inference_busy_for
            .is_some_and(|b| b > self.watchdog.inference_timeout)
        {
            return Some(HoldReason::InferenceTimeout);
        }
        match self.reference.as_ref().and_then(|r| r.newest()) {
            // After a hold the arm waits for a fresh chunk; until then the reason that caused
            // the hold stays reported.
            None => Some(self.state.hold_reason().unwrap_or(HoldReason::NoChunkYet)),
            Some(tr) if t > tr.end_time() => Some(HoldReason::ChunkExhausted),
            Some(_) => None,
        }
    }

    fn count_hold(&mut self, r: HoldReason) {
        let h = &mut self.holds;
        match r {
            HoldReason::NoChunkYet => h.no_chunk_yet += 1,
            HoldReason::StaleObservation => h.stale_observation += 1,
            HoldReason::ChunkExhausted => h.chunk_exhausted += 1,
            HoldReason::InferenceError => h.inference_error += 1,
            HoldReason::InferenceTimeout => h.inference_timeout += 1,
            HoldReason::EmbodimentError => h.embodiment_error += 1,
            HoldReason::Stopping => h.stopping += 1,
        }
    }

    pub fn state(&self) -> LoopState {
        self.state
    }

    pub fn filter(&self) -> &SafetyFilter {
        &self.filter
    }

    pub fn safety_report(&self) -> SafetyReport {
        self.filter.report()
    }

    pub fn monitor(&self) -> &LimitMonitor {
        &self.monitor
    }

    pub fn holds(&self) -> HoldCounts {
        self.holds
    }

    pub fn hold_ticks(&self) -> u64 {
        self.hold_ticks
    }

    pub fn chunk_age(&self) -> &Histogram {
        &self.chunk_age
    }

    /// (received, rejected)
    pub fn chunk_counts(&self) -> (u64, u64) {
        (self.chunks_received, self.chunks_rejected)
    }
}
