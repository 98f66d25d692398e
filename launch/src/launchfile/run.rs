//! Runs a launch file: the tabletop simulator driven by robot's real-time `ControlLoop` (or,
//! for reproducible recordings, robot's `LockstepDriver` stepping the same tick logic on one
//! thread), the scripted expert or a VLA checkpoint as a `robot::Policy`, and Rerun logging
//! off the control thread. Recording wraps the embodiment and the policy (`RecordedTabletop`,
//! `LoggedPolicy`); it does not copy them.

use super::{EmbodimentKind, LaunchFile, PolicyKind};
use crate::reward_watch::{Classified, ClassifiedSink, RewardWatcher, WatchReport};
use crate::viz::{
    self, chunk_tcp_path, EpisodeSetup, LoopSample, ObjectState, Record, Recorder, TickRecord,
    VizOptions, MAX_OBJECTS,
};
use crate::vla::{LoadedVla, DEFAULT_REPLAN_STEPS};
use anyhow::{bail, Context};
use rudder_robot::control::Histogram;
use rudder_robot::{
    ActionChunk, ArmStateLayout, ControlConfig, ControlLoop, Embodiment, EmbodimentError,
    JointCommand, JointLimits, JointState, LockstepDriver, LoopMetrics, Observation, Policy,
    PolicyError, Ur5Model,
};
use rudder_sim::tabletop::campaign::{episode_env, suite_task, FrameEvent, FrameTap};
use rudder_sim::tabletop::physics::FLANGE_TO_TCP;
use rudder_sim::tabletop::scene::Joint;
use rudder_sim::tabletop::{
    command_joints, CameraConfig, ShadowExpert, Suite, TabletopEnv, TabletopSim,
};
use rudder_steering::SteeringHandle;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
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
    /// What the `[reward]` classifier saw, when the launch file has one.
    pub reward: Option<WatchReport>,
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
pub(crate) fn checkpoint_policy(
    lf: &LaunchFile,
    cameras: bool,
) -> anyhow::Result<Option<(LoadedVla, Option<SteeringHandle>)>> {
    if lf.policy.kind != PolicyKind::Checkpoint {
        return Ok(None);
    }
    let Some(path) = &lf.policy.checkpoint else {
        bail!("policy.checkpoint: kind = \"checkpoint\" needs `checkpoint = \"DIR\"`");
    };
    if !cameras {
        bail!("task.camera_size: a VLA checkpoint needs camera images; set camera_size = 64 (or the model's image size)");
    }
    let vla =
        LoadedVla::load(path).with_context(|| format!("policy.checkpoint = {}", path.display()))?;
    let steering = if lf.steering.enabled {
        let dict = lf
            .steering
            .dictionary
            .as_ref()
            .context("steering.dictionary is missing")?;
        Some(
            vla.steering(dict, &lf.steering.alphas)
                .context("[steering]")?,
        )
    } else {
        None
    };
    Ok(Some((vla, steering)))
}

/// The tabletop embodiment, recording every tick (off the control thread: the recorder only
/// queues) and ending the episode at success or after `max_ticks`.
pub struct RecordedTabletop {
    inner: TabletopSim,
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
    episode_ticks: u64,
    max_ticks: Option<u64>,
    /// A success classifier's tap and this episode's index (`[reward]`).
    reward: Option<(FrameTap, usize)>,
}

impl RecordedTabletop {
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

    fn is_done(&self) -> bool {
        self.done.load(Ordering::Acquire)
    }

    /// Hands the frame to the reward watcher (it only swaps a slot: the tick never waits),
    /// stamped with the recording's tick so its verdict lands at the frame's time.
    fn show_reward(&self, obs: &Observation, last: bool) {
        if let Some((tap, episode)) = &self.reward {
            tap(&FrameEvent {
                task_index: 0,
                episode: *episode,
                step: self.tick.load(Ordering::Acquire) as usize,
                observation: obs,
                goal_holds: self.inner.env().goal_holds(),
                last,
            });
        }
    }
}

impl Embodiment for RecordedTabletop {
    fn name(&self) -> &str {
        self.inner.name()
    }

    fn joint_names(&self) -> Vec<String> {
        self.inner.joint_names()
    }

    fn control_rate_hz(&self) -> f64 {
        self.inner.control_rate_hz()
    }

    fn state_layout(&self) -> ArmStateLayout {
        self.inner.state_layout()
    }

    fn limits(&self) -> JointLimits {
        self.inner.limits()
    }

    fn read_state(&mut self) -> Result<JointState, EmbodimentError> {
        self.inner.read_state()
    }

    fn observe(&mut self) -> Result<Observation, EmbodimentError> {
        let obs = self.inner.observe()?;
        self.show_reward(&obs, false);
        Ok(obs)
    }

    fn command(&mut self, cmd: &JointCommand) -> Result<(), EmbodimentError> {
        let q = command_joints(cmd)?;
        let result = self.inner.command(cmd);
        let env = self.inner.env();
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
            Self::objects(env, &mut r);
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
    let task = suite_task(Suite::parse(&t.suite)?, t.index)?;
    let task = &task;
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
    let watcher = match &lf.reward {
        Some(r) => {
            let clf = rudder_reward::SuccessClassifier::load(&r.model)
                .with_context(|| format!("[reward] model = {}", r.model.display()))?;
            let sink_rec = rec.clone();
            let sink: ClassifiedSink = Arc::new(move |c: &Classified| {
                sink_rec.send(Record::Reward {
                    tick: c.step as u64,
                    sim_time: c.step as f64 / rate,
                    wall_time: if wall {
                        epoch.elapsed().as_secs_f64()
                    } else {
                        0.0
                    },
                    p_success: c.verdict.p_success,
                    verdict: c.verdict.success,
                    truth: c.truth,
                });
            });
            Some(RewardWatcher::start_with_sink(clf, Some(sink)))
        }
        None => None,
    };
    for k in 0..opts.episodes {
        let episode = t.episode + k;
        let instruction = task.instruction_for(episode);
        let env = episode_env(task, t.seed, episode, &instruction, cameras)?;
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
            Some((model, steering)) => Box::new(model.policy(steering.as_ref(), None)),
        };
        let max_steps = task.max_steps;
        let done = Arc::new(AtomicBool::new(false));
        let mut emb = RecordedTabletop {
            inner: TabletopSim::new(env),
            rec: rec.clone(),
            rate_hz: rate,
            tick: Arc::clone(&tick),
            epoch,
            wall,
            last_command: None,
            done: Arc::clone(&done),
            log_cost: Histogram::new(100, 100_000),
            measured: Vec::with_capacity(max_steps + 64),
            episode_ticks: 0,
            max_ticks: lf.control.max_ticks,
            reward: watcher.as_ref().map(|w| (w.tap(), episode)),
        };
        let mut policy = LoggedPolicy {
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
            // more than a chunk holds: that many periods of the run's own rate.
            let horizon = model.horizon();
            cfg.replan_every(DEFAULT_REPLAN_STEPS.min(horizon));
        }
        let tick0 = tick.load(Ordering::Acquire);
        let (mut emb, metrics, clamped, held, interventions) = if opts.lockstep {
            let mut driver = LockstepDriver::new(&mut emb, cfg)?;
            let base = tick.load(Ordering::Acquire);
            driver.run(
                &mut emb,
                &mut policy,
                RecordedTabletop::is_done,
                |k, core| {
                    let s = core.safety_report();
                    rec.send(Record::Loop(LoopSample {
                        sim_time: (base + k) as f64 / rate,
                        clamped_commands: s.clamped_commands,
                        held_commands: s.held_commands,
                        interventions: s.interventions.total(),
                        hold_ticks: core.hold_ticks(),
                        ..LoopSample::default()
                    }));
                    if let Some(b) = &bar {
                        b.inc(1);
                    }
                },
            )?;
            let s = driver.core().safety_report();
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
                        // One simulator step per tick.
                        let steps = tick.load(Ordering::Acquire) - tick0;
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
        if let Some(w) = &watcher {
            // The final state, judged off the loop (the loop's last frame precedes the last
            // chunk's moves).
            if let Ok(obs) = emb.inner.observe() {
                emb.show_reward(&obs, true);
            }
            w.finish_episode(0, episode, emb.inner.env().success());
        }
        let env = emb.inner.env();
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
    // The watcher's sink holds a recorder: it must be gone before the logger drains.
    let reward = watcher.map(RewardWatcher::stop);
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
        reward,
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
