//! The threads: a control thread ticking at a fixed rate and an inference thread running the
//! policy on the newest observation. Lifecycle: `start` -> (running, `state` / `metrics`) ->
//! `stop` (brakes to rest, joins, returns the embodiment and the final metrics).

use super::core::{ControlCore, Health, HoldReason, LoopState, WatchdogConfig};
use super::handoff::{lock, Mailbox};
use super::inference::{plan, InferenceStats, Planned};
use super::metrics::{Histogram, LoopMetrics, TimingSetup};
use super::replan::ReplanRule;
use super::timing::{setup_current_thread, wait_until, TimingRequest};
use super::trajectory::{ChunkConverter, EefDeltaScale, JointTrajectory};
use crate::embodiment::{Embodiment, EmbodimentError};
use crate::policy::{Policy, PolicyError};
use crate::safety::{SafetyConfig, SafetyError};
use crate::types::{JointCommand, Observation};
use crate::ur5::Ur5Model;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};
use thiserror::Error;

#[derive(Debug, Error)]
pub enum ControlError {
    #[error("control config field `{field}`: {reason}")]
    Config { field: &'static str, reason: String },
    #[error(transparent)]
    Safety(#[from] SafetyError),
    #[error(transparent)]
    Embodiment(#[from] EmbodimentError),
    #[error("could not start the {thread} thread: {reason}")]
    Spawn {
        thread: &'static str,
        reason: String,
    },
    #[error("the {0} thread panicked")]
    Panicked(&'static str),
    /// Lockstep only: the policy failed, and there is no later inference to wait for.
    #[error("the policy failed at tick {tick}: {error}")]
    Policy { tick: u64, error: PolicyError },
    /// Lockstep only: the embodiment never said the run was over.
    #[error("the lockstep run did not end after {0} ticks")]
    Unfinished(u64),
}

/// Everything the loop needs besides the embodiment and the policy.
#[derive(Debug, Clone, PartialEq)]
pub struct ControlConfig {
    pub rate_hz: f64,
    /// Its `dt` is replaced by `1 / rate_hz` at start.
    pub safety: SafetyConfig,
    pub watchdog: WatchdogConfig,
    /// Seconds over which a new chunk fades in over the one being followed.
    pub blend_window: f64,
    pub converter: ChunkConverter,
    pub timing: TimingRequest,
    /// Replaces the instruction of every observation when set.
    pub instruction: Option<String>,
    /// Longest time `stop` brakes before it gives up waiting for rest.
    pub stop_timeout: Duration,
    /// Time between the observations two inferences start from: with `n / chunk rate` the arm
    /// follows `n` points of a chunk before the next one replaces it (openpi's `replan_steps`,
    /// LeRobot's `n_action_steps`). Zero asks again as soon as a chunk is out. Sampled policies
    /// need it: a fresh sample every tick mixes the first steps of unrelated chunks. The rule
    /// is `control::replan`'s, the same in the threaded loop and in lockstep.
    pub replan_interval: Duration,
}

impl ControlConfig {
    /// A UR5 / UR5e at `rate_hz` with the arm's limits, no workspace box.
    pub fn ur5(model: Ur5Model, rate_hz: f64) -> Self {
        let safety = SafetyConfig::ur5(rate_hz);
        let converter = ChunkConverter {
            dof: 6,
            model: Some(model),
            lower: safety.limits.lower.clone(),
            upper: safety.limits.upper.clone(),
            eef_scale: EefDeltaScale::default(),
        };
        Self {
            rate_hz,
            safety,
            watchdog: WatchdogConfig::default(),
            blend_window: 0.1,
            converter,
            timing: TimingRequest::default(),
            instruction: None,
            stop_timeout: Duration::from_secs(2),
            replan_interval: Duration::ZERO,
        }
    }

    /// [`Self::ur5`] at the embodiment's own control rate.
    pub fn for_embodiment(embodiment: &impl Embodiment, model: Ur5Model) -> Self {
        Self::ur5(model, embodiment.control_rate_hz())
    }

    /// The replan interval of `steps` control periods.
    pub fn replan_every(&mut self, steps: usize) {
        self.replan_interval = Duration::from_secs_f64(steps as f64 / self.rate_hz);
    }

    /// Checks the config against the embodiment it will drive and sets the filter's `dt`:
    /// the loop runs at the embodiment's rate, never another.
    pub(crate) fn prepare_for(&mut self, embodiment: &impl Embodiment) -> Result<(), ControlError> {
        if !(self.rate_hz.is_finite() && self.rate_hz > 0.0 && self.rate_hz <= 10_000.0) {
            return Err(ControlError::Config {
                field: "rate_hz",
                reason: format!("need 0 < rate <= 10000, got {}", self.rate_hz),
            });
        }
        let native = embodiment.control_rate_hz();
        if (self.rate_hz - native).abs() > 1e-9 * native.abs().max(1.0) {
            return Err(ControlError::Config {
                field: "rate_hz",
                reason: format!(
                    "{} Hz, but `{}` runs at {native} Hz (ControlConfig::for_embodiment)",
                    self.rate_hz,
                    embodiment.name()
                ),
            });
        }
        if !(self.blend_window.is_finite() && self.blend_window >= 0.0) {
            return Err(ControlError::Config {
                field: "blend_window",
                reason: format!("need finite >= 0, got {}", self.blend_window),
            });
        }
        self.safety.dt = 1.0 / self.rate_hz;
        let dof = self.safety.limits.dof();
        if self.converter.dof != dof {
            return Err(ControlError::Config {
                field: "converter.dof",
                reason: format!("{} joints, limits have {dof}", self.converter.dof),
            });
        }
        Ok(())
    }
}

struct Shared {
    epoch: Instant,
    stop: AtomicBool,
    obs_wanted: AtomicBool,
    observations: Mailbox<Observation>,
    trajectories: Mailbox<JointTrajectory>,
    inference_failed: AtomicBool,
    /// Nanoseconds since `epoch` + 1 when the running inference started; 0 when idle.
    inference_busy_since: AtomicU64,
    inference: Mutex<InferenceStats>,
    snapshot: Mutex<LoopMetrics>,
    state: Mutex<LoopState>,
}

impl Shared {
    fn secs(&self, at: Instant) -> f64 {
        at.saturating_duration_since(self.epoch).as_secs_f64()
    }
}

/// A running loop; dropping it without `stop` also stops it (and discards the result).
pub struct ControlLoop<E: Embodiment + 'static> {
    shared: Arc<Shared>,
    control: Option<JoinHandle<(E, LoopMetrics)>>,
    inference: Option<JoinHandle<()>>,
}

impl<E: Embodiment + 'static> ControlLoop<E> {
    /// Reads the embodiment's state, then starts both threads. The arm holds still until the
    /// first chunk arrives.
    pub fn start<P: Policy + 'static>(
        mut embodiment: E,
        policy: P,
        mut cfg: ControlConfig,
    ) -> Result<Self, ControlError> {
        cfg.prepare_for(&embodiment)?;
        let initial = embodiment.read_state()?;
        let core = ControlCore::new(
            cfg.safety.clone(),
            cfg.watchdog,
            cfg.blend_window,
            &initial.positions,
        )?;
        let shared = Arc::new(Shared {
            epoch: Instant::now(),
            stop: AtomicBool::new(false),
            obs_wanted: AtomicBool::new(false),
            observations: Mailbox::new(),
            trajectories: Mailbox::new(),
            inference_failed: AtomicBool::new(false),
            inference_busy_since: AtomicU64::new(0),
            inference: Mutex::new(InferenceStats::default()),
            snapshot: Mutex::new(LoopMetrics::default()),
            state: Mutex::new(core.state()),
        });
        let control = {
            let shared = Arc::clone(&shared);
            let cfg = cfg.clone();
            std::thread::Builder::new()
                .name("rudder-control".into())
                .spawn(move || control_thread(embodiment, core, cfg, &shared))
                .map_err(|e| ControlError::Spawn {
                    thread: "control",
                    reason: e.to_string(),
                })?
        };
        let inference = {
            let shared = Arc::clone(&shared);
            let converter = cfg.converter.clone();
            let pacing = ReplanRule::new(cfg.replan_interval, cfg.rate_hz);
            std::thread::Builder::new()
                .name("rudder-inference".into())
                .spawn(move || inference_thread(policy, converter, pacing, &shared))
        };
        let inference = match inference {
            Ok(h) => h,
            Err(e) => {
                shared.stop.store(true, Ordering::Release);
                let _ = control.join();
                return Err(ControlError::Spawn {
                    thread: "inference",
                    reason: e.to_string(),
                });
            }
        };
        Ok(Self {
            shared,
            control: Some(control),
            inference: Some(inference),
        })
    }

    /// The state after the latest tick that could publish it.
    pub fn state(&self) -> LoopState {
        *lock(&self.shared.state)
    }

    /// The latest snapshot (refreshed about every 100 ms) with the inference statistics.
    pub fn metrics(&self) -> LoopMetrics {
        let mut m = lock(&self.shared.snapshot).clone();
        merge_inference(&mut m, &self.shared);
        m
    }

    /// Brakes to rest, ends both threads and returns the embodiment and the final metrics.
    pub fn stop(mut self) -> Result<(E, LoopMetrics), ControlError> {
        self.shared.stop.store(true, Ordering::Release);
        let control = self.control.take().map(|h| h.join());
        let inference = self.inference.take().map(|h| h.join());
        if let Some(Err(_)) = inference {
            return Err(ControlError::Panicked("inference"));
        }
        match control {
            Some(Ok((e, mut m))) => {
                merge_inference(&mut m, &self.shared);
                Ok((e, m))
            }
            _ => Err(ControlError::Panicked("control")),
        }
    }
}

impl<E: Embodiment + 'static> Drop for ControlLoop<E> {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::Release);
        if let Some(h) = self.control.take() {
            let _ = h.join();
        }
        if let Some(h) = self.inference.take() {
            let _ = h.join();
        }
    }
}

fn merge_inference(m: &mut LoopMetrics, shared: &Shared) {
    lock(&shared.inference).merge_into(m);
}

fn inference_thread<P: Policy>(
    mut policy: P,
    converter: ChunkConverter,
    pacing: ReplanRule,
    shared: &Shared,
) {
    let mut seen = 0;
    let mut next_request: Option<Instant> = None;
    while !shared.stop.load(Ordering::Acquire) {
        if let Some(at) = next_request {
            while Instant::now() < at {
                if shared.stop.load(Ordering::Acquire) {
                    return;
                }
                std::thread::sleep(Duration::from_micros(500));
            }
        }
        shared.obs_wanted.store(true, Ordering::Release);
        let obs = loop {
            if shared.stop.load(Ordering::Acquire) {
                return;
            }
            if let Some((v, o)) = shared.observations.take_newer(seen) {
                seen = v;
                break o;
            }
            std::thread::sleep(Duration::from_micros(250));
        };
        // The next observation is wanted `replan_interval` after this one was sampled (the
        // control thread serves the request at its next tick), as in lockstep; counting from
        // the inference's start instead (a few hundred microseconds after the sample) would
        // always land one tick later.
        next_request = pacing
            .next_due(obs.timestamp)
            .map(|secs| shared.epoch + Duration::from_secs_f64(secs));
        let started = Instant::now();
        let since = started.saturating_duration_since(shared.epoch).as_nanos() as u64 + 1;
        shared.inference_busy_since.store(since, Ordering::Release);
        let (planned, latency) = plan(&mut policy, &converter, &obs);
        lock(&shared.inference).record(&planned, latency);
        // Only a failing policy holds the arm; a dropped chunk leaves the current trajectory
        // running (see `control::inference`).
        let failed = matches!(planned, Planned::PolicyFailed(_));
        let followed = matches!(planned, Planned::Trajectory(..));
        if let Planned::Trajectory(traj, _) = planned {
            shared.trajectories.publish(Arc::new(traj));
        }
        shared.inference_failed.store(failed, Ordering::Release);
        shared.inference_busy_since.store(0, Ordering::Release);
        if !followed {
            // A failing policy (or one whose chunks cannot be used) usually fails again at
            // once; don't spin on it.
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

fn control_thread<E: Embodiment>(
    mut embodiment: E,
    mut core: ControlCore,
    cfg: ControlConfig,
    shared: &Shared,
) -> (E, LoopMetrics) {
    let timing: TimingSetup = setup_current_thread(&cfg.timing);
    let period = Duration::from_secs_f64(1.0 / cfg.rate_hz);
    let period_ns = period.as_nanos() as u64;
    // 1 us bins up to 20 ms; larger values only count in the overflow bin and the max.
    let mut period_err = Histogram::new(1_000, 20_000);
    let mut lateness = Histogram::new(1_000, 20_000);
    let mut work = Histogram::new(1_000, 20_000);
    let mut missed: u64 = 0;
    let mut overruns: u64 = 0;
    let mut ticks: u64 = 0;
    let mut embodiment_failed = false;
    let mut traj_seen = 0;
    let mut cmd = JointCommand {
        positions: vec![0.0; cfg.safety.limits.dof()],
        gripper: None,
    };
    let mut prev_wake: Option<Instant> = None;
    let mut deadline = Instant::now() + period;
    let mut stop_requested_at: Option<Instant> = None;
    let publish_every = (cfg.rate_hz / 10.0).ceil().max(1.0) as u64;

    let snapshot = |ticks,
                    missed,
                    overruns,
                    pe: &Histogram,
                    la: &Histogram,
                    wo: &Histogram,
                    core: &ControlCore| {
        let (received, rejected) = core.chunk_counts();
        LoopMetrics {
            rate_hz: cfg.rate_hz,
            ticks,
            missed_ticks: missed,
            deadline_overruns: overruns,
            period_error_us: pe.summary_us(),
            lateness_us: la.summary_us(),
            tick_work_us: wo.summary_us(),
            chunk_age_ms: core.chunk_age().summary_ms(),
            chunks_received: received,
            chunks_rejected: rejected,
            chunks_late: core.chunks_late(),
            safety: core.safety_report(),
            violations: core.monitor().counts(),
            max_command_step_rad: core.monitor().max_step_seen(),
            holds: core.holds(),
            hold_ticks: core.hold_ticks(),
            timing: timing.clone(),
            ..LoopMetrics::default()
        }
    };

    loop {
        let wake = wait_until(deadline, cfg.timing.spin_window);
        let late = wake.saturating_duration_since(deadline).as_nanos() as u64;
        lateness.record(late);
        if let Some(p) = prev_wake {
            let actual = wake.saturating_duration_since(p).as_nanos() as u64;
            period_err.record(actual.abs_diff(period_ns));
        }
        prev_wake = Some(wake);
        if late >= period_ns {
            // Woke a whole period (or more) late: skip those deadlines instead of bursting.
            let skipped = late / period_ns;
            missed += skipped;
            deadline += Duration::from_nanos(period_ns.saturating_mul(skipped));
        }
        ticks += 1;
        // The reference is sampled on the nominal schedule, not at the (jittery) wake-up: the
        // arm consumes one command per period, so sampling at wake-up would turn timing
        // jitter into velocity noise.
        let t = shared.secs(deadline);

        let stopping = shared.stop.load(Ordering::Acquire);
        if stopping && stop_requested_at.is_none() {
            stop_requested_at = Some(wake);
        }

        let state = embodiment.read_state();
        let state_age = match &state {
            Ok(s) => wake.saturating_duration_since(s.sampled_at).as_secs_f64(),
            Err(_) => f64::INFINITY,
        };
        if let Ok(s) = &state {
            if !stopping && shared.obs_wanted.load(Ordering::Acquire) {
                if let Ok(mut obs) = embodiment.observe() {
                    obs.timestamp = shared.secs(s.sampled_at);
                    if let Some(instr) = &cfg.instruction {
                        obs.instruction.clone_from(instr);
                    }
                    shared.obs_wanted.store(false, Ordering::Release);
                    shared.observations.publish(Arc::new(obs));
                }
            }
        }
        if let Some((v, traj)) = shared.trajectories.try_take_newer(traj_seen) {
            traj_seen = v;
            core.offer(traj, t);
        }
        let busy = shared.inference_busy_since.load(Ordering::Acquire);
        let health = Health {
            state_age,
            embodiment_failed: embodiment_failed || state.is_err(),
            inference_failed: shared.inference_failed.load(Ordering::Acquire),
            inference_busy_for: (busy != 0).then(|| (t - (busy - 1) as f64 * 1e-9).max(0.0)),
            stopping,
        };
        let st = core.step(t, &health, &mut cmd);
        embodiment_failed = embodiment.command(&cmd).is_err();

        let done = Instant::now();
        let w = done.saturating_duration_since(wake).as_nanos() as u64;
        work.record(w);
        if w > period_ns {
            overruns += 1;
        }
        if let Ok(mut g) = shared.state.try_lock() {
            *g = st;
        }
        if ticks.is_multiple_of(publish_every) {
            if let Ok(mut g) = shared.snapshot.try_lock() {
                *g = snapshot(
                    ticks,
                    missed,
                    overruns,
                    &period_err,
                    &lateness,
                    &work,
                    &core,
                );
            }
        }
        if let Some(since) = stop_requested_at {
            let at_rest = matches!(
                st,
                LoopState::Holding {
                    reason: HoldReason::Stopping,
                    at_rest: true
                }
            );
            if at_rest || done.saturating_duration_since(since) > cfg.stop_timeout {
                break;
            }
        }
        deadline += period;
    }
    *lock(&shared.state) = LoopState::Stopped;
    let m = snapshot(
        ticks,
        missed,
        overruns,
        &period_err,
        &lateness,
        &work,
        &core,
    );
    *lock(&shared.snapshot) = m.clone();
    (embodiment, m)
}
