//! `rudder eval`: a trained VLA checkpoint (flow or tokens head) in the tabletop simulator, driven through
//! robot's real-time `ControlLoop` (or its tick logic stepped in lockstep), on init states the
//! policy was not trained on.
//!
//! The held-out split: `rudder demos --episodes N` trains on episode indices (= init states,
//! REFERENCE §5 style: episode `k` uses init state `k mod 50`) `0..N` of every task with its
//! `--seed`; the checkpoint's `training.json` records both, and evaluation starts at episode `N`
//! with the same seed unless `--first-episode` / `--seed` say otherwise.
//!
//! The policy sees what the demos recorded: cameras `agentview` and `wrist`, and LIBERO's 8-D
//! state (the last 8 values of the embodiment's state, after 6 joint positions, 6 joint
//! velocities and the gripper closure, which the chunk converter reads). It returns EefDelta7
//! chunks that the loop converts to joint trajectories through IK.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use crate::vla::TabletopVla;
use anyhow::{bail, Context};
use clap::Args;
use rudder_policy::train::TrainingInfo;
use rudder_policy::{Inpainting, VlaPolicy};
use rudder_robot::control::{ControlCore, Health};
use rudder_robot::{
    ControlConfig, ControlLoop, Embodiment, EmbodimentError, JointCommand, JointLimits, JointState,
    Observation, Policy, Ur5Model,
};
use rudder_sim::tabletop::{
    command_joints, load_suite, loop_observation, CameraConfig, Suite, TabletopEnv, CONTROL_HZ,
};
use rudder_steering::SteeringHandle;
use serde::Serialize;

#[derive(Debug, Args)]
#[command(
    after_help = "Example:\n  rudder eval --suite spatial --policy runs/vla --episodes 10 --json\n\n\
--policy takes a checkpoint folder or a training run's folder (its `latest` checkpoint)."
)]
pub struct EvalArgs {
    /// Tabletop suite: spatial, object or goal.
    #[arg(long, default_value = "spatial")]
    pub suite: String,
    /// Checkpoint folder (config.json, model.safetensors, ...) or a run folder with `latest`.
    #[arg(long)]
    pub policy: PathBuf,
    /// Episodes per task.
    #[arg(long, default_value_t = 10)]
    pub episodes: usize,
    /// First episode index (init state). Default: the checkpoint's training.json
    /// `episodes_per_task` (the first init state not trained on), else 40.
    #[arg(long)]
    pub first_episode: Option<usize>,
    /// Init-state seed. Default: the demos' seed from training.json, else 0.
    #[arg(long)]
    pub seed: Option<u64>,
    /// Task indices to run (comma separated; default all).
    #[arg(long, value_delimiter = ',')]
    pub tasks: Vec<usize>,
    /// Step the loop's tick logic on one thread in simulated time (reproducible).
    #[arg(long)]
    pub lockstep: bool,
    /// Camera size in pixels (default: the policy's image size).
    #[arg(long)]
    pub camera_size: Option<u32>,
    /// Cap on simulator steps per episode (default: the task's limit).
    #[arg(long)]
    pub max_steps: Option<usize>,
    /// Chunk points the arm follows before the policy is asked again (openpi's replan_steps;
    /// 1 = every tick) [default: the policy's whole chunk].
    #[arg(long)]
    pub replan_steps: Option<usize>,
    /// Manner phrase for every episode's instruction ("" = the plain instruction, "quickly",
    /// "from above", ...) [default: each episode's own, cycling through the task's manners].
    #[arg(long)]
    pub manner: Option<String>,
    /// Inpaint each new chunk with the unplayed tail of the previous one (flow policies;
    /// real-time chunking's inpainting) [default: the checkpoint's policy.json, else off].
    #[arg(long, value_enum)]
    pub inpainting: Option<InpaintingArg>,
    /// Write each episode's last camera frames here as PNG
    /// (`<task>_ep<N>_<success|failure>_<camera>.png`), to see how failures end.
    #[arg(long, value_name = "DIR")]
    pub frames: Option<PathBuf>,
    /// Print one JSON object instead of a table.
    #[arg(long)]
    pub json: bool,
}

/// `--inpainting` values (rudder_policy::Inpainting).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum InpaintingArg {
    /// Independent chunks.
    Off,
    /// Hold every overlapping point to the previous chunk.
    Hard,
    /// Hold the first overlapping point; weights fall linearly to 0 over the overlap.
    Decay,
}

impl From<InpaintingArg> for Inpainting {
    fn from(a: InpaintingArg) -> Self {
        match a {
            InpaintingArg::Off => Inpainting::Off,
            InpaintingArg::Hard => Inpainting::Hard,
            InpaintingArg::Decay => Inpainting::Decay,
        }
    }
}

/// What one evaluation is asked to do.
#[derive(Debug, Clone)]
pub struct EvalOptions {
    pub suite: Suite,
    pub policy: PathBuf,
    pub episodes: usize,
    pub first_episode: Option<usize>,
    pub seed: Option<u64>,
    pub tasks: Vec<usize>,
    pub lockstep: bool,
    pub camera_size: Option<u32>,
    pub max_steps: Option<usize>,
    /// Chunk points followed before the next inference (>= 1); `None` follows each chunk to
    /// its end.
    pub replan_steps: Option<usize>,
    /// Steering clusters with their alphas, applied to the prefix language model's FFNs at
    /// every inference (`rudder steer sweep`).
    pub steering: Option<SteeringHandle>,
    /// One manner phrase for every episode (`Some("")`: the plain instruction); `None` keeps
    /// each episode's own manner.
    pub manner: Option<String>,
    /// Speed and velocity over the first this many simulator steps only (the approach, before
    /// a failing episode's wandering dominates); `None`: the whole episode.
    pub speed_window: Option<usize>,
    /// Overrides the checkpoint's inpainting setting.
    pub inpainting: Option<Inpainting>,
    /// Folder for each episode's last camera frames (PNG).
    pub frames: Option<PathBuf>,
}

/// `instruction` with `manner` appended, as the task files compose them.
pub fn with_manner(instruction: &str, manner: &str) -> String {
    let m = manner.trim();
    if m.is_empty() {
        instruction.to_string()
    } else {
        format!("{instruction} {m}")
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct EpisodeOutcome {
    pub task_index: usize,
    pub episode: usize,
    pub instruction: String,
    pub success: bool,
    pub steps: usize,
    /// Mean end-effector (TCP) speed over the episode's simulator steps (or the speed window's),
    /// m/s.
    pub mean_speed: f64,
    /// Mean TCP velocity per base axis (x, y, z), m/s: the net displacement over the time.
    pub mean_velocity: [f64; 3],
}

/// The first `steps` steps of a path (`steps + 1` points), or all of it.
fn window(path: &[[f64; 3]], steps: Option<usize>) -> &[[f64; 3]] {
    let end = steps.map_or(path.len(), |w| (w + 1).min(path.len()));
    &path[..end]
}

/// Mean speed and mean velocity (m/s) of a TCP path sampled at the simulator's rate.
fn path_stats(path: &[[f64; 3]]) -> (f64, [f64; 3]) {
    if path.len() < 2 {
        return (0.0, [0.0; 3]);
    }
    let steps = (path.len() - 1) as f64;
    let dist: f64 = path
        .windows(2)
        .map(|w| {
            let d: f64 = (0..3).map(|i| (w[1][i] - w[0][i]).powi(2)).sum();
            d.sqrt()
        })
        .sum();
    let first = path[0];
    let last = path[path.len() - 1];
    let vel = std::array::from_fn(|i| (last[i] - first[i]) / steps * CONTROL_HZ);
    (dist / steps * CONTROL_HZ, vel)
}

#[derive(Debug, Clone, Serialize)]
pub struct TaskOutcome {
    pub task_index: usize,
    pub task: String,
    pub episodes: usize,
    pub successes: usize,
    pub success_rate: f64,
    /// 95 % Wilson score interval.
    pub ci95: [f64; 2],
}

#[derive(Debug, Clone, Serialize)]
pub struct Latency {
    pub count: usize,
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub mean_ms: f64,
}

/// The control loop's timing over all episodes of a real-time evaluation.
#[derive(Debug, Clone, Default, Serialize)]
pub struct LoopTiming {
    pub rate_hz: f64,
    pub ticks: u64,
    /// The worst episode's p99 of |actual period - nominal period|, microseconds.
    pub worst_period_error_p99_us: f64,
    /// The median episode's p50 of the same, microseconds.
    pub median_period_error_p50_us: f64,
    pub missed_ticks: u64,
    pub deadline_overruns: u64,
    pub hold_ticks: u64,
    /// Inferences whose chunk was not followed: the policy failed, or its chunk could not be
    /// turned into a trajectory (e.g. an unreachable first target).
    pub inference_errors: u64,
    /// The distinct last errors of the episodes that had any, with how many episodes ended on
    /// each.
    pub inference_error_kinds: Vec<(String, usize)>,
}

#[derive(Debug, Clone, Serialize)]
pub struct EvalReport {
    pub suite: String,
    pub policy: PathBuf,
    pub mode: &'static str,
    pub seed: u64,
    pub first_episode: usize,
    pub episodes_per_task: usize,
    /// Episode indices the checkpoint was trained on (`0..n`), when training.json says.
    pub trained_episodes_per_task: Option<usize>,
    pub episodes: usize,
    pub successes: usize,
    pub success_rate: f64,
    pub ci95: [f64; 2],
    /// Chunk points followed before each new inference.
    pub replan_steps: usize,
    /// How each chunk was tied to the previous one ("off", "hard", "decay").
    pub inpainting: Inpainting,
    pub per_task: Vec<TaskOutcome>,
    /// Policy inference latency (model call only).
    pub latency: Latency,
    /// The real-time loop's timing while the policy ran (None in lockstep mode).
    pub loop_timing: Option<LoopTiming>,
    pub wall_s: f64,
    pub runs: Vec<EpisodeOutcome>,
}

/// 95 % Wilson score interval for `s` successes in `n` trials.
pub fn wilson95(s: usize, n: usize) -> [f64; 2] {
    if n == 0 {
        return [0.0, 1.0];
    }
    let z = 1.959_963_984_540_054_f64;
    let n = n as f64;
    let s = s as f64;
    let p = s / n;
    let z2 = z * z;
    let denom = 1.0 + z2 / n;
    let centre = (p + z2 / (2.0 * n)) / denom;
    let half = z / denom * (p * (1.0 - p) / n + z2 / (4.0 * n * n)).sqrt();
    // Exact at the ends (the formula leaves rounding residue there).
    let lo = if s == 0.0 {
        0.0
    } else {
        (centre - half).max(0.0)
    };
    let hi = if s == n {
        1.0
    } else {
        (centre + half).min(1.0)
    };
    [lo, hi]
}

fn percentile(sorted: &[f64], q: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let i = ((sorted.len() - 1) as f64 * q).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

type SharedEnv = Arc<Mutex<TabletopEnv>>;

/// The simulator as the loop's embodiment, with the UR5 state layout `rudder launch` uses.
struct EvalTabletop {
    env: SharedEnv,
    done: Arc<AtomicBool>,
    max_steps: usize,
    /// The TCP after every simulator step (the first entry: the initial pose).
    tcp: Arc<Mutex<Vec<[f64; 3]>>>,
}

impl Embodiment for EvalTabletop {
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
        Ok(JointState {
            positions: env.joints().to_vec(),
            velocities: env.joint_velocities().to_vec(),
            gripper: Some(env.gripper_closure()),
            sampled_at: Instant::now(),
        })
    }
    fn observe(&mut self) -> Result<Observation, EmbodimentError> {
        Ok(loop_observation(&mut lock(&self.env)))
    }
    fn command(&mut self, cmd: &JointCommand) -> Result<(), EmbodimentError> {
        let q = command_joints(cmd)?;
        let mut env = lock(&self.env);
        if env.done() || env.steps() >= self.max_steps {
            self.done.store(true, Ordering::Release);
            return Ok(());
        }
        let r = env
            .command_joints(&q, cmd.gripper)
            .map_err(|reason| EmbodimentError::BadCommand {
                field: "positions",
                reason,
            });
        if env.done() || env.steps() >= self.max_steps {
            self.done.store(true, Ordering::Release);
        }
        lock(&self.tcp).push(env.tcp());
        r
    }
}

/// Half of the trained chunk of 8, as openpi's LIBERO client does with its chunks (replan
/// after 5 of 10): the steering sweep's default, kept so its recorded runs reproduce. `eval`
/// follows whole chunks by default instead: on the goal suite a flow checkpoint solved 42/100
/// held-out episodes following all 8 points of each chunk, 22/100 following 4 and 21/100
/// following 2 (the policy switches between modes of the demos when asked too often).
pub const DEFAULT_REPLAN_STEPS: usize = 4;

fn loop_config(replan_steps: usize) -> ControlConfig {
    let mut cfg = ControlConfig::ur5(Ur5Model::ur5(), CONTROL_HZ);
    cfg.safety.workspace = Some((Ur5Model::ur5(), rudder_sim::tabletop::env::workspace()));
    cfg.replan_interval = Duration::from_secs_f64(replan_steps.max(1) as f64 / CONTROL_HZ);
    cfg
}

/// The loop's tick logic on this thread with simulated time (as `rudder launch --lockstep`):
/// tick `k` observes, follows the newest chunk, commands, then infers when `k` is a multiple
/// of `replan_steps` (the chunk arrives at tick `k + 1`).
fn lockstep(
    emb: &mut EvalTabletop,
    policy: &mut impl Policy,
    replan_steps: usize,
) -> anyhow::Result<()> {
    let cfg = loop_config(replan_steps);
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
    while !emb.done.load(Ordering::Acquire) {
        let t = k as f64 / cfg.rate_hz;
        emb.read_state()?;
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
        if emb.done.load(Ordering::Acquire) {
            break;
        }
        if !k.is_multiple_of(replan_steps.max(1) as u64) {
            k += 1;
            continue;
        }
        let chunk = policy
            .infer(&obs)
            .map_err(|e| anyhow::anyhow!("the policy failed at tick {k}: {e}"))?;
        // As the threaded loop does, a chunk that cannot be converted (e.g. an unreachable
        // first target) is dropped: the current trajectory runs on, then the watchdog holds.
        match cfg.converter.convert(&chunk, &obs.state, obs.timestamp) {
            Ok((traj, _)) => pending = Some(traj),
            Err(e) => tracing::debug!("tick {k}: chunk dropped: {e}"),
        }
        k += 1;
        if k > 100_000 {
            bail!("lockstep episode did not end after {k} ticks");
        }
    }
    Ok(())
}

/// Runs the evaluation `o` describes; `progress` is told after every episode.
pub fn evaluate(
    o: &EvalOptions,
    mut progress: impl FnMut(&EpisodeOutcome),
) -> anyhow::Result<EvalReport> {
    let started = Instant::now();
    let dir = rudder_tune::train::checkpoint::resolve(&o.policy)?;
    let info: Option<TrainingInfo> = std::fs::read_to_string(dir.join("training.json"))
        .ok()
        .and_then(|t| serde_json::from_str(&t).ok());
    if let Some(i) = &info {
        if i.suite != o.suite.name() {
            tracing::warn!(
                "the policy was trained on suite {}, evaluating on {}",
                i.suite,
                o.suite.name()
            );
        }
    }
    let trained = info.as_ref().map(|i| i.episodes_per_task);
    let first = o.first_episode.or(trained).unwrap_or(40);
    let seed = o.seed.or(info.as_ref().map(|i| i.demo_seed)).unwrap_or(0);
    if let Some(n) = trained {
        if (first..first + o.episodes).any(|k| k % 50 < n) {
            tracing::warn!(
                "episodes {first}..{} overlap the training init states 0..{n} (init state = \
                 episode mod 50)",
                first + o.episodes
            );
        }
    }
    let mut policy = VlaPolicy::load(&dir).with_context(|| format!("loading {}", dir.display()))?;
    if let Some(i) = o.inpainting {
        policy.set_inpainting(i);
    }
    let inpainting = policy.settings().inpainting;
    let size = o.camera_size.unwrap_or(policy.image_size() as u32);
    // A chunk cannot be followed for longer than it lasts (OpenVLA-style chunks of 1).
    let horizon = policy.action_horizon().max(1);
    let replan_steps = o.replan_steps.unwrap_or(horizon).clamp(1, horizon);
    let policy = Arc::new(Mutex::new(policy));
    let latency = Arc::new(Mutex::new(Vec::new()));
    let tasks = load_suite(o.suite).map_err(|e| anyhow::anyhow!("{e}"))?;
    let indices: Vec<usize> = if o.tasks.is_empty() {
        (0..tasks.len()).collect()
    } else {
        o.tasks.clone()
    };
    let mut runs = Vec::new();
    let mut per_task = Vec::new();
    let mut timing: Vec<rudder_robot::LoopMetrics> = Vec::new();
    for &ti in &indices {
        let task = tasks
            .get(ti)
            .with_context(|| format!("suite {} has no task {ti}", o.suite.name()))?;
        let max_steps = o
            .max_steps
            .map_or(task.max_steps, |m| m.min(task.max_steps));
        let mut successes = 0;
        for episode in first..first + o.episodes {
            let cams = Some(CameraConfig {
                width: size,
                height: size,
            });
            let env = match &o.manner {
                None => TabletopEnv::new(task, seed, episode, cams),
                Some(m) => TabletopEnv::with_instruction(
                    task,
                    seed,
                    episode,
                    &with_manner(&task.instruction, m),
                    cams,
                ),
            }
            .map_err(|e| anyhow::anyhow!("{e}"))?;
            let instruction = env.instruction().to_string();
            let tcp = Arc::new(Mutex::new(vec![env.tcp()]));
            let shared: SharedEnv = Arc::new(Mutex::new(env));
            let done = Arc::new(AtomicBool::new(false));
            let mut emb = EvalTabletop {
                env: Arc::clone(&shared),
                done: Arc::clone(&done),
                max_steps,
                tcp: Arc::clone(&tcp),
            };
            let mut pol = TabletopVla {
                inner: Arc::clone(&policy),
                latency_ms: Some(Arc::clone(&latency)),
                steerer: o.steering.as_ref().map(SteeringHandle::steerer),
            };
            // Every episode replays the same noise draws, whatever ran before it (and a sweep's
            // conditions compare on equal noise).
            lock(&policy).reset_noise();
            if o.lockstep {
                lockstep(&mut emb, &mut pol, replan_steps)?;
            } else {
                let lp = ControlLoop::start(emb, pol, loop_config(replan_steps))?;
                // Simulated steps run at the control rate; allow for a slow start.
                let limit = Duration::from_secs_f64(max_steps as f64 / CONTROL_HZ * 2.0 + 30.0);
                let t0 = Instant::now();
                while !done.load(Ordering::Acquire) && t0.elapsed() < limit {
                    std::thread::sleep(Duration::from_millis(20));
                }
                let (_, m) = lp.stop()?;
                timing.push(m);
            }
            let mut env = lock(&shared);
            if let Some(dir) = &o.frames {
                let tag = if env.success() { "success" } else { "failure" };
                let obs = env.observe();
                for (cam, img) in [("agentview", &obs.agentview), ("wrist", &obs.wrist)] {
                    let Some(img) = img else { continue };
                    let path = dir.join(format!("{}_ep{episode}_{tag}_{cam}.png", task.id));
                    rudder_sim::tabletop::render::save_png(img, &path)
                        .map_err(|e| anyhow::anyhow!("writing a frame: {e}"))?;
                }
            }
            let (mean_speed, mean_velocity) = {
                let path = lock(&tcp);
                path_stats(window(&path, o.speed_window))
            };
            let out = EpisodeOutcome {
                task_index: ti,
                episode,
                instruction,
                success: env.success(),
                steps: env.steps(),
                mean_speed,
                mean_velocity,
            };
            successes += out.success as usize;
            progress(&out);
            runs.push(out);
        }
        per_task.push(TaskOutcome {
            task_index: ti,
            task: task.id.clone(),
            episodes: o.episodes,
            successes,
            success_rate: successes as f64 / o.episodes.max(1) as f64,
            ci95: wilson95(successes, o.episodes),
        });
    }
    let n = runs.len();
    let s = runs.iter().filter(|r| r.success).count();
    let mut lat = lock(&latency).clone();
    lat.sort_by(f64::total_cmp);
    Ok(EvalReport {
        suite: o.suite.name().to_string(),
        policy: dir,
        mode: if o.lockstep { "lockstep" } else { "realtime" },
        seed,
        first_episode: first,
        episodes_per_task: o.episodes,
        trained_episodes_per_task: trained,
        episodes: n,
        successes: s,
        success_rate: s as f64 / n.max(1) as f64,
        ci95: wilson95(s, n),
        replan_steps,
        inpainting,
        per_task,
        latency: Latency {
            count: lat.len(),
            p50_ms: percentile(&lat, 0.5),
            p99_ms: percentile(&lat, 0.99),
            mean_ms: lat.iter().sum::<f64>() / lat.len().max(1) as f64,
        },
        loop_timing: loop_timing(&timing),
        wall_s: started.elapsed().as_secs_f64(),
        runs,
    })
}

fn loop_timing(episodes: &[rudder_robot::LoopMetrics]) -> Option<LoopTiming> {
    let first = episodes.first()?;
    let mut p50: Vec<f64> = episodes.iter().map(|m| m.period_error_us.p50).collect();
    p50.sort_by(f64::total_cmp);
    Some(LoopTiming {
        rate_hz: first.rate_hz,
        ticks: episodes.iter().map(|m| m.ticks).sum(),
        worst_period_error_p99_us: episodes
            .iter()
            .map(|m| m.period_error_us.p99)
            .fold(0.0, f64::max),
        median_period_error_p50_us: p50[p50.len() / 2],
        missed_ticks: episodes.iter().map(|m| m.missed_ticks).sum(),
        deadline_overruns: episodes.iter().map(|m| m.deadline_overruns).sum(),
        hold_ticks: episodes.iter().map(|m| m.hold_ticks).sum(),
        inference_errors: episodes.iter().map(|m| m.inference_errors).sum(),
        inference_error_kinds: {
            let mut kinds: Vec<(String, usize)> = Vec::new();
            for e in episodes
                .iter()
                .filter_map(|m| m.last_inference_error.as_ref())
            {
                match kinds.iter_mut().find(|(k, _)| k == e) {
                    Some((_, n)) => *n += 1,
                    None => kinds.push((e.clone(), 1)),
                }
            }
            kinds
        },
    })
}

pub fn run(a: EvalArgs) -> anyhow::Result<ExitCode> {
    if a.episodes == 0 {
        bail!("--episodes must be > 0");
    }
    let o = EvalOptions {
        suite: Suite::parse(&a.suite)?,
        policy: a.policy,
        episodes: a.episodes,
        first_episode: a.first_episode,
        seed: a.seed,
        tasks: a.tasks,
        lockstep: a.lockstep,
        camera_size: a.camera_size,
        max_steps: a.max_steps,
        replan_steps: a.replan_steps.map(|r| r.max(1)),
        steering: None,
        manner: a.manner.clone(),
        speed_window: None,
        inpainting: a.inpainting.map(Inpainting::from),
        frames: a.frames.clone(),
    };
    if let Some(dir) = &o.frames {
        std::fs::create_dir_all(dir)
            .with_context(|| format!("creating the frames folder {}", dir.display()))?;
    }
    let quiet = a.json;
    let r = evaluate(&o, |e| {
        if !quiet {
            eprintln!(
                "task {:>2} episode {:>3}: {} after {} steps ({})",
                e.task_index,
                e.episode,
                if e.success { "success" } else { "failure" },
                e.steps,
                e.instruction
            );
        }
    })?;
    if a.json {
        println!("{}", serde_json::to_string_pretty(&r)?);
        return Ok(ExitCode::SUCCESS);
    }
    println!(
        "{} suite, policy {} ({} loop), seed {}, episodes {}..{} per task, {} chunk points \
         per inference, inpainting {:?}",
        r.suite,
        r.policy.display(),
        r.mode,
        r.seed,
        r.first_episode,
        r.first_episode + r.episodes_per_task,
        r.replan_steps,
        r.inpainting
    );
    for t in &r.per_task {
        println!(
            "  task {:>2} {:<40} {:>3}/{:<3} {:>5.1} %  [{:.1}, {:.1}]",
            t.task_index,
            t.task,
            t.successes,
            t.episodes,
            100.0 * t.success_rate,
            100.0 * t.ci95[0],
            100.0 * t.ci95[1]
        );
    }
    println!(
        "overall: {}/{} = {:.1} % (95 % Wilson [{:.1}, {:.1}]); inference p50 {:.1} ms, p99 {:.1} ms \
         over {} calls; {:.0} s",
        r.successes,
        r.episodes,
        100.0 * r.success_rate,
        100.0 * r.ci95[0],
        100.0 * r.ci95[1],
        r.latency.p50_ms,
        r.latency.p99_ms,
        r.latency.count,
        r.wall_s
    );
    if let Some(t) = &r.loop_timing {
        println!(
            "loop at {:.0} Hz: period error p50 {:.0} us (median episode), p99 {:.0} us (worst \
             episode); {} missed ticks, {} overruns, {} hold ticks in {} ticks",
            t.rate_hz,
            t.median_period_error_p50_us,
            t.worst_period_error_p99_us,
            t.missed_ticks,
            t.deadline_overruns,
            t.hold_ticks,
            t.ticks
        );
        if t.inference_errors > 0 {
            println!(
                "{} inferences not followed; last error of the episodes that had any:",
                t.inference_errors
            );
            for (e, n) in &t.inference_error_kinds {
                println!("  {n} x {e}");
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use super::*;
    use rudder_policy::dataset::DemoDataset;
    use rudder_policy::train::{ModelSpec, TrainConfig, VlaTrainer};
    use rudder_robot::{Action, ActionChunk, ActionSpace, PolicyError};

    #[test]
    fn wilson_interval() {
        let [lo, hi] = wilson95(5, 10);
        assert!(
            (lo - 0.2366).abs() < 1e-3 && (hi - 0.7634).abs() < 1e-3,
            "{lo} {hi}"
        );
        let [lo, hi] = wilson95(0, 10);
        assert!(lo == 0.0 && (hi - 0.2775).abs() < 1e-3, "{hi}");
        assert_eq!(wilson95(0, 100)[0], 0.0);
        assert_eq!(wilson95(7, 7)[1], 1.0);
    }

    /// Replays a demo's recorded actions, `horizon` at a time, as eef-delta chunks.
    struct DemoReplay {
        actions: Vec<[f64; 7]>,
        horizon: usize,
    }

    impl Policy for DemoReplay {
        /// The demo's actions from the observation's simulator step on.
        fn infer(&mut self, obs: &Observation) -> Result<ActionChunk, PolicyError> {
            let step = (obs.timestamp * CONTROL_HZ).round() as usize;
            let k = step.min(self.actions.len() - 1);
            let acts: Vec<Action> = (k..k + self.horizon)
                .map(|i| {
                    let a = self.actions[i.min(self.actions.len() - 1)];
                    Action::EefDelta {
                        dpos: [a[0], a[1], a[2]],
                        drot: [a[3], a[4], a[5]],
                        gripper: a[6],
                    }
                })
                .collect();
            ActionChunk::new(ActionSpace::EefDelta7, obs.timestamp, 0.05, acts)
                .map_err(|e| PolicyError::Inference(e.to_string()))
        }
    }

    /// The loop's eef-delta path means what the demos' actions mean: replaying a demo's
    /// actions open-loop through the loop (chunk conversion, re-anchoring on the commands,
    /// reference, safety filter) from the same init state redoes the demo. Before chunks were
    /// re-anchored on the loop's commands this was 0/10 (the arm moved at about half speed);
    /// open loop, small tracking differences still cost a task or two.
    #[test]
    fn demo_actions_replayed_through_the_loop_succeed() {
        for replan in [1, DEFAULT_REPLAN_STEPS] {
            replay_demos(replan);
        }
    }

    fn replay_demos(replan_steps: usize) {
        let data_dir = tempfile::tempdir().unwrap();
        let cams = CameraConfig {
            width: 16,
            height: 16,
        };
        rudder_sim::tabletop::write_demos(Suite::Spatial, 1, data_dir.path(), 0, cams).unwrap();
        let data = DemoDataset::load(data_dir.path(), true).unwrap();
        let tasks = load_suite(Suite::Spatial).unwrap();
        let mut ok = 0;
        let mut report = Vec::new();
        for ep in &data.episodes {
            let task = &tasks[ep.task_index];
            let env = TabletopEnv::new(task, 0, 0, Some(cams)).unwrap();
            let shared: SharedEnv = Arc::new(Mutex::new(env));
            let mut emb = EvalTabletop {
                env: Arc::clone(&shared),
                done: Arc::new(AtomicBool::new(false)),
                max_steps: task.max_steps,
                tcp: Arc::new(Mutex::new(Vec::new())),
            };
            let actions: Vec<[f64; 7]> = (0..ep.steps)
                .map(|t| std::array::from_fn(|j| ep.action_at(t)[j] as f64))
                .collect();
            let mut replay = DemoReplay {
                actions,
                horizon: 8,
            };
            let mut direct = TabletopEnv::new(task, 0, 0, Some(cams)).unwrap();
            // The premise: stepped directly, the recorded actions redo the demo.
            for a in &replay.actions {
                direct.step(a);
            }
            assert!(direct.success(), "{}: direct replay failed", task.id);
            lockstep(&mut emb, &mut replay, replan_steps).unwrap();
            let env = lock(&shared);
            ok += env.success() as usize;
            report.push(format!(
                "{}: success {} in {} steps (demo {})",
                task.id,
                env.success(),
                env.steps(),
                ep.steps
            ));
        }
        eprintln!("replan every {replan_steps}:\n{}", report.join("\n"));
        assert!(
            ok >= data.episodes.len() * 8 / 10,
            "replan every {replan_steps}:\n{}",
            report.join("\n")
        );
    }

    #[test]
    fn speed_over_a_window_covers_only_its_first_steps() {
        // 0.01 m per step for 3 steps, then still.
        let path: Vec<[f64; 3]> = (0..10)
            .map(|i| [0.01 * (i.min(3) as f64), 0.0, 0.0])
            .collect();
        let (whole, _) = path_stats(window(&path, None));
        let (first, v) = path_stats(window(&path, Some(3)));
        assert!((first - 0.01 * CONTROL_HZ).abs() < 1e-9, "{first}");
        assert!((v[0] - 0.01 * CONTROL_HZ).abs() < 1e-9);
        assert!((whole - 0.03 / 9.0 * CONTROL_HZ).abs() < 1e-9, "{whole}");
        assert_eq!(window(&path, Some(100)).len(), 10);
    }

    #[test]
    fn a_manner_phrase_is_appended_and_an_empty_one_keeps_the_plain_instruction() {
        assert_eq!(
            with_manner("pick up the bowl", "slowly"),
            "pick up the bowl slowly"
        );
        assert_eq!(with_manner("pick up the bowl", "  "), "pick up the bowl");
    }

    /// A barely trained policy runs 2 short episodes through the loop (lockstep and real
    /// time) and the report carries every JSON field.
    #[test]
    fn eval_runs_a_trained_checkpoint() {
        let data_dir = tempfile::tempdir().unwrap();
        let cams = CameraConfig {
            width: 32,
            height: 32,
        };
        rudder_sim::tabletop::write_demos(Suite::Spatial, 1, data_dir.path(), 0, cams).unwrap();
        let data = DemoDataset::load(data_dir.path(), true).unwrap();
        let cfg = TrainConfig {
            model: ModelSpec::tiny(),
            steps: 2,
            batch_size: 4,
            ..TrainConfig::default()
        };
        let mut tr = VlaTrainer::new(cfg, &data).unwrap();
        tr.step(&data).unwrap();
        let out = tempfile::tempdir().unwrap();
        tr.save(out.path(), 1, &data).unwrap();
        let frames = tempfile::tempdir().unwrap();
        for lockstep in [true, false] {
            let o = EvalOptions {
                suite: Suite::Spatial,
                policy: out.path().to_path_buf(),
                episodes: 1,
                first_episode: None,
                seed: None,
                tasks: vec![0, 3],
                lockstep,
                camera_size: None,
                max_steps: Some(12),
                // Lockstep follows whole chunks (the default), real time 2 points of each.
                replan_steps: (!lockstep).then_some(2),
                steering: None,
                // Real time keeps each episode's own manner; lockstep forces one.
                manner: lockstep.then(|| "quickly".to_string()),
                speed_window: lockstep.then_some(5),
                // Real time inpaints, and lockstep writes the last frames.
                inpainting: (!lockstep).then_some(Inpainting::Decay),
                frames: lockstep.then(|| frames.path().to_path_buf()),
            };
            let r = evaluate(&o, |_| {}).unwrap();
            let tasks = load_suite(Suite::Spatial).unwrap();
            for run in &r.runs {
                let task = &tasks[run.task_index];
                let want = if lockstep {
                    format!("{} quickly", task.instruction)
                } else {
                    task.instruction_for(run.episode)
                };
                assert_eq!(run.instruction, want);
            }
            let v = serde_json::to_value(&r).unwrap();
            assert_eq!(v["episodes"], 2);
            let whole_chunk = ModelSpec::tiny().chunk;
            assert_eq!(v["replan_steps"], if lockstep { whole_chunk } else { 2 });
            assert_eq!(
                v["first_episode"], 1,
                "training used episode 0 of each task"
            );
            let rate = v["success_rate"].as_f64().unwrap();
            assert!((0.0..=1.0).contains(&rate));
            let ci = v["ci95"].as_array().unwrap();
            assert!(ci[0].as_f64().unwrap() <= rate && rate <= ci[1].as_f64().unwrap());
            assert_eq!(v["per_task"].as_array().unwrap().len(), 2);
            assert!(v["latency"]["count"].as_u64().unwrap() > 0);
            assert!(v["latency"]["p50_ms"].as_f64().unwrap() > 0.0);
            assert!(
                v["latency"]["p99_ms"].as_f64().unwrap()
                    >= v["latency"]["p50_ms"].as_f64().unwrap()
            );
            for run in v["runs"].as_array().unwrap() {
                assert!(run["steps"].as_u64().unwrap() <= 12, "{run}");
            }
            assert_eq!(v["inpainting"], if lockstep { "off" } else { "decay" });
            if lockstep {
                // Two cameras' last frames per episode, named by task, episode and outcome.
                let mut names: Vec<String> = std::fs::read_dir(frames.path())
                    .unwrap()
                    .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
                    .collect();
                names.sort();
                assert_eq!(names.len(), 4, "{names:?}");
                for run in &r.runs {
                    let tag = if run.success { "success" } else { "failure" };
                    let task = &load_suite(Suite::Spatial).unwrap()[run.task_index].id;
                    let name = format!("{task}_ep{}_{tag}_agentview.png", run.episode);
                    assert!(names.contains(&name), "{name} not in {names:?}");
                    let img = image::open(frames.path().join(&name)).unwrap();
                    assert_eq!((img.width(), img.height()), (32, 32));
                }
                // 12 steps, one inference per tick before the last.
                assert!(r.runs.iter().all(|e| e.steps == 12), "{:?}", r.runs);
                assert!(r.loop_timing.is_none());
            } else {
                let t = r.loop_timing.as_ref().expect("real-time loop timing");
                assert!(t.ticks > 0 && t.rate_hz > 0.0, "{t:?}");
                assert!(
                    t.worst_period_error_p99_us >= 0.0 && t.worst_period_error_p99_us.is_finite()
                );
                let episodes_with_errors: usize = t.inference_error_kinds.iter().map(|k| k.1).sum();
                assert!(episodes_with_errors <= r.runs.len(), "{t:?}");
                assert_eq!(episodes_with_errors == 0, t.inference_errors == 0, "{t:?}");
            }
        }
    }
}
