//! Runs a launch file: the tabletop simulator driven by robot's real-time `ControlLoop` (or,
//! for reproducible recordings, the same tick logic stepped in lockstep on one thread), the
//! scripted expert as a `robot::Policy`, and Rerun logging off the control thread.

use super::{EmbodimentKind, LaunchFile, PolicyKind};
use crate::viz::{
    self, chunk_tcp_path, EpisodeSetup, LoopSample, ObjectState, Record, Recorder, TickRecord,
    VizOptions, MAX_OBJECTS,
};
use crate::vla::TabletopVla;
use anyhow::{bail, Context};
use rudder_policy::VlaPolicy;
use rudder_robot::control::{ControlCore, Health, Histogram};
use rudder_robot::{
    ActionChunk, ControlConfig, ControlLoop, Embodiment, EmbodimentError, JointCommand,
    JointLimits, JointState, LoopMetrics, Observation, Policy, PolicyError, Ur5Model,
};
use rudder_sim::tabletop::physics::FLANGE_TO_TCP;
use rudder_sim::tabletop::scene::Joint;
use rudder_sim::tabletop::{
    command_joints, load_suite, loop_observation, CameraConfig, ShadowExpert, Suite, TabletopEnv,
    CONTROL_HZ,
};
use rudder_steering::SteeringHandle;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

/// How `rudder launch` was asked to run.
#[derive(Debug, Clone, PartialEq)]
pub struct RunOptions {
    /// `None`: no Rerun at all (`--no-viz`).
    pub viz: Option<VizOptions>,
    /// Episodes to run, starting at the file's episode.
    pub episodes: usize,
    /// Step the loop's tick logic on one thread with simulated time (reproducible recordings).
    pub lockstep: bool,
    /// Show a progress bar.
    pub progress: bool,
}

/// One episode's outcome.
#[derive(Debug, Clone, PartialEq)]
pub struct EpisodeResult {
    pub episode: usize,
    pub task: String,
    pub instruction: String,
    pub success: bool,
    /// Simulator steps taken (one per control tick) until success or the step limit.
    pub steps: usize,
    pub max_steps: usize,
    pub ticks: u64,
    /// Commands the loop's safety filter clamped or replaced.
    pub safety_interventions: u64,
    pub clamped_commands: u64,
    pub held_commands: u64,
    /// Hand motions the simulator refused on contact.
    pub refused_contacts: u64,
    /// Real-time runs only.
    pub metrics: Option<LoopMetrics>,
    /// Time spent logging on the control thread per tick, microseconds (mean, p99, max).
    pub logging_us: (f64, f64, f64),
    /// Measured joint positions after every tick (what the recording logs as `measured`).
    pub measured: Vec<[f64; 6]>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct RunReport {
    pub episodes: Vec<EpisodeResult>,
    pub rate_hz: f64,
    pub records_dropped: u64,
    pub records_logged: u64,
    pub wall_s: f64,
}

impl RunReport {
    pub fn successes(&self) -> usize {
        self.episodes.iter().filter(|e| e.success).count()
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Runs what `lf` describes.
pub fn run(lf: &LaunchFile, opts: &RunOptions) -> anyhow::Result<RunReport> {
    match lf.embodiment.kind {
        EmbodimentKind::SimTabletop => run_tabletop(lf, opts),
        EmbodimentKind::SimDriving => bail!(
            "embodiment \"sim.driving\" runs through `launchfile::driving::run_driving` (its \
             report is per scenario, not per episode)"
        ),
        EmbodimentKind::Ros2Ur5 => bail!(
            "embodiment \"ros2.ur5\" needs a build with the `ros2` feature (`cargo run --release \
             --features ros2 -- launch launch/ur5.toml` in a shell where ROS 2 Jazzy is sourced, \
             e.g. after `source scripts/setup-ros2.sh`); it runs through \
             `launchfile::ros2::run_ur5`"
        ),
    }
}

/// `policy.kind = "checkpoint"`: the VLA (loaded once) and the launch file's steering.
#[allow(clippy::type_complexity)]
pub(crate) fn checkpoint_policy(
    lf: &LaunchFile,
    cameras: bool,
) -> anyhow::Result<Option<(Arc<Mutex<VlaPolicy>>, Option<SteeringHandle>)>> {
    if lf.policy.kind != PolicyKind::Checkpoint {
        return Ok(None);
    }
    let Some(path) = &lf.policy.checkpoint else {
        bail!("policy.checkpoint: kind = \"checkpoint\" needs `checkpoint = \"DIR\"`");
    };
    if !cameras {
        bail!("task.camera_size: a VLA checkpoint needs camera images; set camera_size = 64 (or the model's image size)");
    }
    let dir = rudder_tune::train::checkpoint::resolve(path)
        .with_context(|| format!("policy.checkpoint = {}", path.display()))?;
    let model = TabletopVla::load(&dir)?.inner;
    let steering = if lf.steering.enabled {
        let dict = lf
            .steering
            .dictionary
            .as_ref()
            .context("steering.dictionary is missing")?;
        Some(crate::vla::steering(&dir, dict, &lf.steering.alphas).context("[steering]")?)
    } else {
        None
    };
    Ok(Some((model, steering)))
}

/// The tabletop env shared by the embodiment (control thread) and the scripted expert
/// (inference thread; scripted experts read the true scene, as LIBERO's do).
type SharedEnv = Arc<Mutex<TabletopEnv>>;

/// The simulator as the loop's embodiment, recording every tick.
pub struct LoggedTabletop {
    env: SharedEnv,
    rec: Recorder,
    rate_hz: f64,
    /// Ticks since the recording began (shared with the policy, which stamps its records).
    tick: Arc<AtomicU64>,
    epoch: Instant,
    wall: bool,
    last_command: Option<Instant>,
    done: Arc<AtomicBool>,
    /// Time spent recording per tick (control thread), nanoseconds.
    pub log_cost: Histogram,
    measured: Vec<[f64; 6]>,
    last_state: [f64; 6],
    episode_ticks: u64,
    max_ticks: Option<u64>,
}

impl LoggedTabletop {
    fn objects(env: &TabletopEnv, rec: &mut TickRecord) {
        let objs = &env.world().scene.objects;
        let n = objs.len().min(MAX_OBJECTS);
        for (slot, o) in rec.objects.iter_mut().zip(objs.iter()) {
            *slot = ObjectState {
                pos: o.pos,
                joint: match o.joint {
                    Joint::Slide { value, .. } | Joint::Knob { value, .. } => value,
                    Joint::None => 0.0,
                },
            };
        }
        rec.n_objects = n as u8;
    }
}

impl Embodiment for LoggedTabletop {
    fn name(&self) -> &str {
        "sim-tabletop-ur5"
    }

    fn joint_names(&self) -> Vec<String> {
        rudder_robot::ur5::UR_JOINT_NAMES
            .iter()
            .map(|s| s.to_string())
            .collect()
    }

    fn control_rate_hz(&self) -> f64 {
        CONTROL_HZ
    }

    fn limits(&self) -> JointLimits {
        JointLimits::ur5()
    }

    fn read_state(&mut self) -> Result<JointState, EmbodimentError> {
        let env = lock(&self.env);
        let q = env.joints();
        self.last_state = q;
        Ok(JointState {
            positions: q.to_vec(),
            velocities: env.joint_velocities().to_vec(),
            gripper: Some(env.gripper_closure()),
            sampled_at: Instant::now(),
        })
    }

    /// State layout as `Observation` documents for the UR5: 6 joint positions, 6 joint
    /// velocities, the gripper; then LIBERO's 8-D state (TCP, axis-angle, fingers).
    fn observe(&mut self) -> Result<Observation, EmbodimentError> {
        Ok(loop_observation(&mut lock(&self.env)))
    }

    fn command(&mut self, cmd: &JointCommand) -> Result<(), EmbodimentError> {
        let q = command_joints(cmd)?;
        let mut env = lock(&self.env);
        let result =
            env.command_joints(&q, cmd.gripper)
                .map_err(|reason| EmbodimentError::BadCommand {
                    field: "positions",
                    reason,
                });
        let measured = env.joints();
        self.measured.push(measured);
        self.episode_ticks += 1;
        if env.done() || self.max_ticks.is_some_and(|m| self.episode_ticks >= m) {
            self.done.store(true, Ordering::Release);
        }
        // Everything below is the logging cost on the control thread.
        if self.rec.enabled() {
            let t0 = Instant::now();
            let tick = self.tick.fetch_add(1, Ordering::AcqRel);
            let period_error_us = match self.last_command {
                Some(p) if self.wall => {
                    let actual = t0.saturating_duration_since(p).as_secs_f64();
                    (actual - 1.0 / self.rate_hz).abs() * 1e6
                }
                _ => f64::NAN,
            };
            self.last_command = Some(t0);
            let mut r = TickRecord {
                tick,
                sim_time: tick as f64 / self.rate_hz,
                wall_time: if self.wall {
                    t0.saturating_duration_since(self.epoch).as_secs_f64()
                } else {
                    0.0
                },
                period_error_us,
                measured,
                commanded: q,
                gripper_commanded: cmd.gripper.unwrap_or(0.0),
                gripper_measured: env.gripper_closure(),
                refused_contacts: env.stats().refused_contacts,
                success: env.success(),
                ..TickRecord::default()
            };
            Self::objects(&env, &mut r);
            drop(env);
            self.rec.send(Record::Tick(r));
            self.log_cost
                .record(t0.elapsed().as_nanos().min(u64::MAX as u128) as u64);
        } else {
            self.tick.fetch_add(1, Ordering::AcqRel);
        }
        result
    }
}

/// Wraps a policy to record its chunks (as an end-effector path), latency and camera images.
/// Runs on the inference thread.
pub struct LoggedPolicy<P> {
    pub inner: P,
    pub model: Ur5Model,
    pub rec: Recorder,
    pub images: bool,
    pub tick: Arc<AtomicU64>,
    pub rate_hz: f64,
    pub epoch: Instant,
    pub wall: bool,
}

impl<P: Policy> Policy for LoggedPolicy<P> {
    fn infer(&mut self, obs: &Observation) -> Result<ActionChunk, PolicyError> {
        let started = Instant::now();
        let out = self.inner.infer(obs);
        let latency_ms = started.elapsed().as_secs_f64() * 1e3;
        if !self.rec.enabled() {
            return out;
        }
        // The newest tick: the one this observation was taken at (exact in lockstep).
        let tick = self.tick.load(Ordering::Acquire).saturating_sub(1);
        let sim_time = tick as f64 / self.rate_hz;
        let wall_time = if self.wall {
            self.epoch.elapsed().as_secs_f64()
        } else {
            0.0
        };
        if let Ok(chunk) = &out {
            self.rec.send(Record::Chunk {
                tick,
                sim_time,
                wall_time,
                path: chunk_tcp_path(&self.model, &obs.state, chunk, FLANGE_TO_TCP),
                latency_ms,
            });
        }
        if self.images && !obs.images.is_empty() {
            self.rec.send(Record::Images {
                tick,
                sim_time,
                wall_time,
                images: obs
                    .images
                    .iter()
                    .map(|(k, v)| (k.clone(), v.clone()))
                    .collect(),
            });
        }
        out
    }

    fn reset(&mut self) {
        self.inner.reset()
    }
}

fn run_tabletop(lf: &LaunchFile, opts: &RunOptions) -> anyhow::Result<RunReport> {
    let Some(t) = &lf.task else {
        bail!("sim.tabletop needs a [task] section");
    };
    let suite = Suite::parse(&t.suite)?;
    let tasks = load_suite(suite).map_err(|e| anyhow::anyhow!("{e}"))?;
    let task = tasks
        .get(t.index)
        .with_context(|| format!("suite {} has no task {}", suite.name(), t.index))?;
    let rate = lf.rate_hz();
    let cameras = (t.camera_size > 0).then_some(CameraConfig {
        width: t.camera_size,
        height: t.camera_size,
    });
    let logger = match &opts.viz {
        Some(v) => Some(viz::spawn_logger(v, lf.recording.queue)?),
        None => None,
    };
    let rec = logger
        .as_ref()
        .map(|l| l.recorder.clone())
        .unwrap_or_else(Recorder::disabled);
    let wall = opts.viz.as_ref().is_some_and(|v| v.wall_time) && !opts.lockstep;
    let tick = Arc::new(AtomicU64::new(0));
    let epoch = Instant::now();
    let started = Instant::now();
    let mut results = Vec::new();
    let per_episode = lf
        .control
        .max_ticks
        .map_or(task.max_steps as u64, |m| m.min(task.max_steps as u64));
    let bar = if opts.progress {
        let b = indicatif::ProgressBar::new(opts.episodes as u64 * per_episode);
        b.set_style(
            indicatif::ProgressStyle::with_template(
                "{spinner} [{elapsed_precise}] {bar:30} {pos}/{len} steps {msg}",
            )
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
        );
        Some(b)
    } else {
        None
    };
    let vla = checkpoint_policy(lf, cameras.is_some())?;
    for k in 0..opts.episodes {
        let episode = t.episode + k;
        let env =
            TabletopEnv::new(task, t.seed, episode, cameras).map_err(|e| anyhow::anyhow!("{e}"))?;
        let instruction = env.instruction().to_string();
        rec.send(Record::Episode(Box::new(EpisodeSetup {
            episode,
            task: task.id.clone(),
            instruction: instruction.clone(),
            model: *env.model(),
            scene: Some(env.world().scene.clone()),
            rate_hz: rate,
        })));
        let inner: Box<dyn Policy> = match &vla {
            // The expert sees the arm only through the loop's observations (see ShadowExpert).
            None => Box::new(
                ShadowExpert::new(task, t.seed, episode, lf.policy.chunk_len.max(1))
                    .map_err(|e| anyhow::anyhow!("{e}"))?
                    .with_period(1.0 / rate),
            ),
            Some((model, steering)) => Box::new(TabletopVla {
                inner: Arc::clone(model),
                latency_ms: None,
                steerer: steering.as_ref().map(SteeringHandle::steerer),
            }),
        };
        let max_steps = task.max_steps;
        let shared: SharedEnv = Arc::new(Mutex::new(env));
        let done = Arc::new(AtomicBool::new(false));
        let emb = LoggedTabletop {
            env: Arc::clone(&shared),
            rec: rec.clone(),
            rate_hz: rate,
            tick: Arc::clone(&tick),
            epoch,
            wall,
            last_command: None,
            done: Arc::clone(&done),
            log_cost: Histogram::new(100, 100_000),
            measured: Vec::with_capacity(max_steps + 64),
            last_state: [0.0; 6],
            episode_ticks: 0,
            max_ticks: lf.control.max_ticks,
        };
        let policy = LoggedPolicy {
            inner,
            model: Ur5Model::ur5(),
            rec: rec.clone(),
            images: lf.recording.images,
            tick: Arc::clone(&tick),
            rate_hz: rate,
            epoch,
            wall,
        };
        let mut cfg = ControlConfig::ur5(Ur5Model::ur5(), rate);
        // The simulator's own filter keeps the hand in its workspace; the loop's adds the same box.
        cfg.safety.workspace = Some((Ur5Model::ur5(), rudder_sim::tabletop::env::workspace()));
        // The expert re-plans every tick from the observed state: follow each new chunk at once.
        cfg.blend_window = 0.0;
        if let Some((model, _)) = &vla {
            // A sampled VLA follows several points of each chunk (see `rudder eval`), never
            // more than a chunk holds.
            let horizon = lock(model).action_horizon().max(1);
            let steps = crate::cli::eval::DEFAULT_REPLAN_STEPS.min(horizon);
            cfg.replan_interval =
                std::time::Duration::from_secs_f64(steps as f64 / rudder_sim::tabletop::CONTROL_HZ);
        }
        let tick0 = tick.load(Ordering::Acquire);
        let (emb, metrics, clamped, held, interventions) = if opts.lockstep {
            let (emb, s) = lockstep(emb, policy, &cfg, &rec, bar.as_ref())?;
            (
                emb,
                None,
                s.clamped_commands,
                s.held_commands,
                s.interventions.total(),
            )
        } else {
            let lp = ControlLoop::start(emb, policy, cfg)?;
            let deadline = Instant::now() + Duration::from_secs_f64(lf.control.timeout_s);
            let mut last_sample = Instant::now();
            while !done.load(Ordering::Acquire) && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(20));
                if last_sample.elapsed() >= Duration::from_millis(100) {
                    last_sample = Instant::now();
                    let m = lp.metrics();
                    rec.send(Record::Loop(sample(&m, &tick, rate, epoch)));
                    if let Some(b) = &bar {
                        let steps = lock(&shared).steps() as u64;
                        b.set_position(k as u64 * per_episode + steps.min(per_episode));
                    }
                }
            }
            let (emb, m) = lp.stop()?;
            rec.send(Record::Loop(sample(&m, &tick, rate, epoch)));
            let (c, h, i) = (
                m.safety.clamped_commands,
                m.safety.held_commands,
                m.safety.interventions.total(),
            );
            (emb, Some(m), c, h, i)
        };
        let env = lock(&shared);
        let success = env.success();
        let steps = env.steps().min(max_steps);
        let ticks = tick.load(Ordering::Acquire) - tick0;
        let s = emb.log_cost.summary_us();
        let result = EpisodeResult {
            episode,
            task: task.id.clone(),
            instruction: instruction.clone(),
            success,
            steps,
            max_steps,
            ticks,
            safety_interventions: interventions,
            clamped_commands: clamped,
            held_commands: held,
            refused_contacts: env.stats().refused_contacts,
            metrics,
            logging_us: (s.mean, s.p99, s.max),
            measured: emb.measured.clone(),
        };
        let now = tick.load(Ordering::Acquire);
        rec.send(Record::Result {
            sim_time: now as f64 / rate,
            wall_time: if wall {
                epoch.elapsed().as_secs_f64()
            } else {
                0.0
            },
            success,
            text: format!(
                "**{}** — {} after {} steps (episode {episode})",
                instruction,
                if success { "success" } else { "failure" },
                steps
            ),
        });
        if let Some(b) = &bar {
            b.set_position((k as u64 + 1) * per_episode);
        }
        results.push(result);
    }
    if let Some(b) = &bar {
        b.finish_and_clear();
    }
    drop(rec);
    let (dropped, logged) = match logger {
        Some(l) => {
            let r = l.finish()?;
            (r.dropped, r.ticks)
        }
        None => (0, 0),
    };
    Ok(RunReport {
        episodes: results,
        rate_hz: rate,
        records_dropped: dropped,
        records_logged: logged,
        wall_s: started.elapsed().as_secs_f64(),
    })
}

fn sample(m: &LoopMetrics, tick: &AtomicU64, rate: f64, epoch: Instant) -> LoopSample {
    LoopSample {
        sim_time: tick.load(Ordering::Acquire) as f64 / rate,
        wall_time: epoch.elapsed().as_secs_f64(),
        clamped_commands: m.safety.clamped_commands,
        held_commands: m.safety.held_commands,
        interventions: m.safety.interventions.total(),
        hold_ticks: m.hold_ticks,
        missed_ticks: m.missed_ticks,
        period_error_p99_us: m.period_error_us.p99,
        inference_latency_p50_ms: m.inference_latency_ms.p50,
    }
}

/// The loop's tick logic (watchdog, chunk following, safety filter) stepped on this thread with
/// simulated time: tick `k` observes, follows the chunk computed from tick `k - 1`'s
/// observation (as the threaded loop does when inference is faster than a period), commands,
/// then runs inference on its observation. Deterministic for a fixed seed.
fn lockstep<P: Policy>(
    mut emb: LoggedTabletop,
    mut policy: P,
    cfg: &ControlConfig,
    rec: &Recorder,
    bar: Option<&indicatif::ProgressBar>,
) -> anyhow::Result<(LoggedTabletop, rudder_robot::SafetyReport)> {
    let mut safety = cfg.safety.clone();
    safety.dt = 1.0 / cfg.rate_hz;
    let initial = emb.read_state()?;
    let mut core = ControlCore::new(safety, cfg.watchdog, cfg.blend_window, &initial.positions)?;
    let mut cmd = JointCommand {
        positions: vec![0.0; 6],
        gripper: None,
    };
    let mut pending = None;
    let mut k: u64 = 0;
    let mut last_infer: Option<f64> = None;
    let base = emb.tick.load(Ordering::Acquire);
    while !emb.done.load(Ordering::Acquire) {
        let t = k as f64 / cfg.rate_hz;
        let _state = emb.read_state()?;
        let mut obs = emb.observe()?;
        obs.timestamp = t;
        if let Some(traj) = pending.take() {
            core.offer(Arc::new(traj), t);
        }
        let health = Health {
            state_age: 0.0,
            ..Health::default()
        };
        core.step(t, &health, &mut cmd);
        emb.command(&cmd)?;
        let s = core.safety_report();
        rec.send(Record::Loop(LoopSample {
            sim_time: (base + k) as f64 / cfg.rate_hz,
            clamped_commands: s.clamped_commands,
            held_commands: s.held_commands,
            interventions: s.interventions.total(),
            hold_ticks: core.hold_ticks(),
            ..LoopSample::default()
        }));
        // As the threaded loop: no new inference before `replan_interval` has passed.
        let due = last_infer.is_none_or(|l| t - l + 1e-9 >= cfg.replan_interval.as_secs_f64());
        if !due {
            k += 1;
            if let Some(b) = bar {
                b.inc(1);
            }
            continue;
        }
        last_infer = Some(t);
        match policy.infer(&obs) {
            Ok(chunk) => {
                let (traj, _) = cfg
                    .converter
                    .convert(&chunk, &obs.state, obs.timestamp)
                    .map_err(|e| anyhow::anyhow!("chunk conversion failed at tick {k}: {e}"))?;
                pending = Some(traj);
            }
            Err(e) => bail!("the policy failed at tick {k}: {e}"),
        }
        k += 1;
        if let Some(b) = bar {
            b.inc(1);
        }
        if k > 100_000 {
            bail!("lockstep run did not end after {k} ticks");
        }
    }
    Ok((emb, core.safety_report()))
}
