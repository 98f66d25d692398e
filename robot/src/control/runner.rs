//! The threads: a control thread ticking at a fixed rate and an inference thread running the
//! policy on the newest observation. Lifecycle: `start` -> (running, `state` / `metrics`) ->
//! `stop` (brakes to rest, joins, returns the embodiment and the final metrics).

use super::core::{ControlCore, Health, HoldReason, LoopState, WatchdogConfig};
use super::handoff::{lock, Mailbox};
use super::metrics::{Histogram, LoopMetrics, TimingSetup};
use super::timing::{setup_current_thread, wait_until, TimingRequest};
use super::trajectory::{ChunkConverter, EefDeltaScale, JointTrajectory};
use crate::embodiment::{Embodiment, EmbodimentError};
use crate::policy::Policy;
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
    /// need it: a fresh sample every tick mixes the first steps of unrelated chunks.
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
}

#[derive(Debug, Default)]
struct InferenceStats {
    latency: Option<Histogram>,
    count: u64,
    errors: u64,
    last_error: Option<String>,
    unreachable_points: u64,
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
        if !(cfg.rate_hz.is_finite() && cfg.rate_hz > 0.0 && cfg.rate_hz <= 10_000.0) {
            return Err(ControlError::Config {
                field: "rate_hz",
                reason: format!("need 0 < rate <= 10000, got {}", cfg.rate_hz),
            });
        }
        if !(cfg.blend_window.is_finite() && cfg.blend_window >= 0.0) {
            return Err(ControlError::Config {
                field: "blend_window",
                reason: format!("need finite >= 0, got {}", cfg.blend_window),
            });
        }
        cfg.safety.dt = 1.0 / cfg.rate_hz;
        let dof = cfg.safety.limits.dof();
        if cfg.converter.dof != dof {
            return Err(ControlError::Config {
                field: "converter.dof",
                reason: format!("{} joints, limits have {dof}", cfg.converter.dof),
            });
        }
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
            let pacing = ReplanPacing {
                interval: cfg.replan_interval,
                period: Duration::from_secs_f64(1.0 / cfg.rate_hz),
            };
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
    let s = lock(&shared.inference);
    if let Some(h) = &s.latency {
        m.inference_latency_ms = h.summary_ms();
    }
    m.inferences = s.count;
    m.inference_errors = s.errors;
    m.last_inference_error = s.last_error.clone();
    m.unreachable_points = s.unreachable_points;
}

/// When the inference thread asks for the next observation.
#[derive(Debug, Clone, Copy)]
struct ReplanPacing {
    interval: Duration,
    period: Duration,
}

impl ReplanPacing {
    /// The instant after which the next observation is wanted: `interval` after the last one
    /// was sampled, less half a period. The control thread serves the request at its next tick,
    /// so the arm follows exactly `interval * rate` points of each chunk, as in lockstep.
    /// Counting from the inference's start instead (a few hundred microseconds after the
    /// sample) would always land one tick later.
    fn next_request(&self, epoch: Instant, last_sample_secs: f64) -> Option<Instant> {
        if self.interval.is_zero() || !last_sample_secs.is_finite() || last_sample_secs < 0.0 {
            return None;
        }
        let sampled = epoch + Duration::from_secs_f64(last_sample_secs);
        Some(sampled + self.interval.saturating_sub(self.period / 2))
    }
}

fn inference_thread<P: Policy>(
    mut policy: P,
    converter: ChunkConverter,
    pacing: ReplanPacing,
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
        next_request = pacing.next_request(shared.epoch, obs.timestamp);
        let started = Instant::now();
        let since = started.saturating_duration_since(shared.epoch).as_nanos() as u64 + 1;
        shared.inference_busy_since.store(since, Ordering::Release);
        let result = policy.infer(&obs);
        let latency = started.elapsed();
        let converted = result.map_err(|e| e.to_string()).and_then(|chunk| {
            converter
                .convert(&chunk, &obs.state, obs.timestamp)
                .map_err(|e| e.to_string())
        });
        let failed = converted.is_err();
        {
            let mut s = lock(&shared.inference);
            s.latency
                .get_or_insert_with(|| Histogram::new(100_000, 100_000))
                .record(latency.as_nanos() as u64);
            s.count += 1;
            match &converted {
                Ok((_, notes)) => s.unreachable_points += notes.unreachable_points as u64,
                Err(e) => {
                    s.errors += 1;
                    s.last_error = Some(e.clone());
                }
            }
        }
        if let Ok((traj, _)) = converted {
            shared.trajectories.publish(Arc::new(traj));
        }
        shared.inference_failed.store(failed, Ordering::Release);
        shared.inference_busy_since.store(0, Ordering::Release);
        if failed {
            // A failing policy usually fails again at once; don't spin on it.
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
