//! The loop's tick logic stepped on the caller's thread in simulated time: reproducible runs
//! (`rudder eval --lockstep`, `rudder launch --lockstep`) through the same `ControlCore`,
//! replan rule and chunk handling as the threaded `ControlLoop`.
//!
//! Tick `k` (loop time `k / rate`): read the state, observe, offer the trajectory planned at
//! the previous inference, step the core, command; then, when the replan rule says so, run the
//! policy on this tick's observation. Its trajectory arrives at tick `k + 1`, as in the
//! threaded loop when inference is faster than a period. A run ends when the caller's
//! `finished` says so, checked before every tick; a tick always completes, inference included.

use super::core::{ControlCore, Health, LoopState};
use super::inference::{plan, InferenceStats, Planned};
use super::metrics::LoopMetrics;
use super::replan::ReplanRule;
use super::runner::{ControlConfig, ControlError};
use super::trajectory::JointTrajectory;
use crate::embodiment::Embodiment;
use crate::policy::Policy;
use crate::types::JointCommand;
use std::sync::Arc;

/// Ticks after which a run that never finishes is an error (83 minutes at 20 Hz).
pub const MAX_LOCKSTEP_TICKS: u64 = 100_000;

/// Steps the tick logic for one embodiment, one tick per call.
pub struct LockstepDriver {
    cfg: ControlConfig,
    core: ControlCore,
    replan: ReplanRule,
    cmd: JointCommand,
    pending: Option<JointTrajectory>,
    last_sample: Option<f64>,
    tick: u64,
    stats: InferenceStats,
}

impl LockstepDriver {
    /// Checks `cfg` against the embodiment (its rate included) and starts holding at the
    /// measured position.
    pub fn new<E: Embodiment>(
        embodiment: &mut E,
        mut cfg: ControlConfig,
    ) -> Result<Self, ControlError> {
        cfg.prepare_for(embodiment)?;
        let initial = embodiment.read_state()?;
        let core = ControlCore::new(
            cfg.safety.clone(),
            cfg.watchdog,
            cfg.blend_window,
            &initial.positions,
        )?;
        let dof = cfg.safety.limits.dof();
        Ok(Self {
            replan: ReplanRule::new(cfg.replan_interval, cfg.rate_hz),
            cfg,
            core,
            cmd: JointCommand {
                positions: vec![0.0; dof],
                gripper: None,
            },
            pending: None,
            last_sample: None,
            tick: 0,
            stats: InferenceStats::default(),
        })
    }

    /// The tick's loop time, seconds.
    fn time(&self) -> f64 {
        self.tick as f64 / self.cfg.rate_hz
    }

    /// Runs ticks until `finished` (asked before each) says the run is over; `after_command`
    /// sees the core after every tick's command (before its inference), for recording.
    pub fn run<E: Embodiment, P: Policy + ?Sized>(
        &mut self,
        embodiment: &mut E,
        policy: &mut P,
        mut finished: impl FnMut(&E) -> bool,
        mut after_command: impl FnMut(u64, &ControlCore),
    ) -> Result<(), ControlError> {
        let start = self.tick;
        while !finished(embodiment) {
            if self.tick - start >= MAX_LOCKSTEP_TICKS {
                return Err(ControlError::Unfinished(self.tick - start));
            }
            self.tick_with(embodiment, policy, &mut after_command)?;
        }
        Ok(())
    }

    /// One tick (see the module documentation).
    pub fn tick<E: Embodiment, P: Policy + ?Sized>(
        &mut self,
        embodiment: &mut E,
        policy: &mut P,
    ) -> Result<LoopState, ControlError> {
        self.tick_with(embodiment, policy, &mut |_, _| {})
    }

    fn tick_with<E: Embodiment, P: Policy + ?Sized>(
        &mut self,
        embodiment: &mut E,
        policy: &mut P,
        after_command: &mut impl FnMut(u64, &ControlCore),
    ) -> Result<LoopState, ControlError> {
        let t = self.time();
        embodiment.read_state()?;
        let mut obs = embodiment.observe()?;
        obs.timestamp = t;
        if let Some(instr) = &self.cfg.instruction {
            obs.instruction.clone_from(instr);
        }
        if let Some(traj) = self.pending.take() {
            self.core.offer(Arc::new(traj), t);
        }
        // Simulated time: the state is always fresh and inference never late.
        let health = Health {
            state_age: 0.0,
            ..Health::default()
        };
        let state = self.core.step(t, &health, &mut self.cmd);
        embodiment.command(&self.cmd)?;
        after_command(self.tick, &self.core);
        if self.replan.is_due(self.last_sample, t) {
            self.last_sample = Some(t);
            let (planned, latency) = plan(policy, &self.cfg.converter, &obs);
            self.stats.record(&planned, latency);
            match planned {
                Planned::Trajectory(traj, _) => self.pending = Some(traj),
                // No later inference to wait for: a deterministic policy would fail again.
                Planned::PolicyFailed(error) => {
                    return Err(ControlError::Policy {
                        tick: self.tick,
                        error,
                    })
                }
                Planned::Dropped(e) => {
                    tracing::debug!("tick {}: chunk dropped: {e}", self.tick)
                }
            }
        }
        self.tick += 1;
        Ok(state)
    }

    /// Ticks stepped so far.
    pub fn ticks(&self) -> u64 {
        self.tick
    }

    pub fn core(&self) -> &ControlCore {
        &self.core
    }

    pub fn config(&self) -> &ControlConfig {
        &self.cfg
    }

    /// What the threaded loop's `stop` returns, less the wall-clock timing.
    pub fn metrics(&self) -> LoopMetrics {
        let (received, rejected) = self.core.chunk_counts();
        let mut m = LoopMetrics {
            rate_hz: self.cfg.rate_hz,
            ticks: self.tick,
            chunk_age_ms: self.core.chunk_age().summary_ms(),
            chunks_received: received,
            chunks_rejected: rejected,
            chunks_late: self.core.chunks_late(),
            safety: self.core.safety_report(),
            violations: self.core.monitor().counts(),
            max_command_step_rad: self.core.monitor().max_step_seen(),
            holds: self.core.holds(),
            hold_ticks: self.core.hold_ticks(),
            ..LoopMetrics::default()
        };
        self.stats.merge_into(&mut m);
        m
    }
}
