//! `rudder eval`: a trained VLA checkpoint (flow or tokens head) in the tabletop simulator,
//! driven through robot's real-time `ControlLoop` (or its `LockstepDriver`), on init states the
//! policy was not trained on. The campaign itself is library code
//! (`rudder_sim::tabletop::campaign`); this file loads the checkpoint, wires it in and prints.
//!
//! Each episode reads the task's own instruction, as LIBERO evaluates; `--manners` cycles
//! through the task's manner phrases by episode, `--manner P` appends one phrase to all.
//!
//! The held-out split: `rudder demos --episodes N` trains on episode indices (= init states,
//! REFERENCE §5 style: episode `k` uses init state `k mod 50`) `0..N` of every task with its
//! `--seed`; the checkpoint's `training.json` records both, and evaluation starts at episode `N`
//! with the same seed unless `--first-episode` / `--seed` say otherwise.
//!
//! The policy sees what the demos recorded: cameras `agentview` and `wrist`, and LIBERO's 8-D
//! state (the end of the embodiment's `ArmStateLayout`, after the 6 joint positions, 6 joint
//! velocities and the gripper closure, which the chunk converter reads). It returns EefDelta7
//! chunks that the loop converts to joint trajectories through IK.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Instant;

use crate::vla::LoadedVla;
use anyhow::{bail, Context};
use clap::Args;
use rudder_policy::Inpainting;
use rudder_sim::tabletop::campaign::{
    run_campaign_tapped, CampaignOptions, EpisodeOutcome, FrameTap, Instructions, Latency,
    LoopTiming, TaskOutcome,
};
use rudder_sim::tabletop::{CameraConfig, Suite};
use rudder_steering::SteeringHandle;
use serde::Serialize;

#[derive(Debug, Args)]
#[command(
    args_conflicts_with_subcommands = true,
    subcommand_negates_reqs = true,
    after_help = "Example:\n  rudder eval --suite spatial --policy runs/vla --episodes 10 --json\n  \
rudder eval --suite goal --policy runs/goal --reward runs/reward --lockstep\n  \
rudder eval reward --model runs/reward --data data/reward --json\n\n\
--policy takes a checkpoint folder or a training run's folder (its `latest` checkpoint)."
)]
pub struct EvalArgs {
    #[command(subcommand)]
    pub sub: Option<EvalSub>,
    /// Tabletop suite: spatial, object or goal.
    #[arg(long, default_value = "spatial")]
    pub suite: String,
    /// Checkpoint folder (config.json, model.safetensors, ...) or a run folder with `latest`.
    #[arg(long, required = true)]
    pub policy: Option<PathBuf>,
    /// A success classifier (`rudder train reward`) that watches every episode on its own
    /// thread: when it first said yes against when the predicate turned true, and whether its
    /// verdict on the last frame agrees with the simulator's.
    #[arg(long, value_name = "DIR")]
    pub reward: Option<PathBuf>,
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
    /// Manner phrase appended to every episode's instruction ("quickly", "from above", ...)
    /// [default: the task's own instruction, as LIBERO evaluates].
    #[arg(long, conflicts_with = "manners")]
    pub manner: Option<String>,
    /// Cycle through the task's manner phrases by episode (episode k uses manner k mod n).
    #[arg(long)]
    pub manners: bool,
    /// Inpaint each new chunk with the unplayed tail of the previous one (flow policies;
    /// real-time chunking's inpainting) [default: the checkpoint's policy.json, else off].
    #[arg(long, value_enum)]
    pub inpainting: Option<InpaintingArg>,
    /// A reset-free RL run (`rudder train rl`) whose actor picks the flow's noise for this
    /// policy (its mode: no exploration, no learning).
    #[arg(long, value_name = "DIR")]
    pub rl: Option<PathBuf>,
    /// Write each episode's last camera frames here as PNG
    /// (`<task>_ep<N>_<success|failure>_<camera>.png`), to see how failures end.
    #[arg(long, value_name = "DIR")]
    pub frames: Option<PathBuf>,
    /// Print one JSON object instead of a table.
    #[arg(long)]
    pub json: bool,
}

/// `rudder eval <what>` other than a VLA.
#[derive(Debug, clap::Subcommand)]
pub enum EvalSub {
    /// Score a success classifier on a labelled data set (accuracy, precision, recall, F1,
    /// ECE, per task and per hard-negative kind).
    Reward(crate::cli::reward::EvalRewardArgs),
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
    /// Which instruction each episode reads (the task's own, its manners in turn, or one
    /// manner phrase).
    pub instructions: Instructions,
    /// Speed and velocity over the first this many simulator steps only (the approach, before
    /// a failing episode's wandering dominates); `None`: the whole episode.
    pub speed_window: Option<usize>,
    /// Overrides the checkpoint's inpainting setting.
    pub inpainting: Option<Inpainting>,
    /// Folder for each episode's last camera frames (PNG).
    pub frames: Option<PathBuf>,
    /// Simulator steps each episode goes on after its first success (0: it ends there).
    pub steps_past_success: usize,
    /// An RL agent's checkpoint steering the policy's noise (`rudder train rl`).
    pub rl: Option<PathBuf>,
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

pub use crate::vla::DEFAULT_REPLAN_STEPS;

/// Runs the evaluation `o` describes (loading its checkpoint); `progress` is told after every
/// episode.
pub fn evaluate(
    o: &EvalOptions,
    progress: impl FnMut(&EpisodeOutcome),
) -> anyhow::Result<EvalReport> {
    let vla = LoadedVla::load(&o.policy)?;
    evaluate_loaded(o, &vla, progress)
}

/// [`evaluate`] with a checkpoint already loaded (`o.policy` is not read again).
pub fn evaluate_loaded(
    o: &EvalOptions,
    vla: &LoadedVla,
    progress: impl FnMut(&EpisodeOutcome),
) -> anyhow::Result<EvalReport> {
    evaluate_tapped(o, vla, None, progress)
}

/// [`evaluate_loaded`] with `tap` shown every observation (a reward watcher, a frame
/// recorder).
pub fn evaluate_tapped(
    o: &EvalOptions,
    vla: &LoadedVla,
    tap: Option<FrameTap>,
    progress: impl FnMut(&EpisodeOutcome),
) -> anyhow::Result<EvalReport> {
    let started = Instant::now();
    let info = vla.info.as_ref();
    if let Some(i) = info {
        if i.suite != o.suite.name() {
            tracing::warn!(
                "the policy was trained on suite {}, evaluating on {}",
                i.suite,
                o.suite.name()
            );
        }
    }
    let trained = info.map(|i| i.episodes_per_task);
    let first = o.first_episode.or(trained).unwrap_or(40);
    let seed = o.seed.or(info.map(|i| i.demo_seed)).unwrap_or(0);
    if let Some(n) = trained {
        if (first..first + o.episodes).any(|k| k % 50 < n) {
            tracing::warn!(
                "episodes {first}..{} overlap the training init states 0..{n} (init state = \
                 episode mod 50)",
                first + o.episodes
            );
        }
    }
    let (inpainting, size, horizon) = {
        let mut policy = lock(&vla.model);
        if let Some(i) = o.inpainting {
            policy.set_inpainting(i);
        }
        (
            policy.settings().inpainting,
            o.camera_size.unwrap_or(policy.image_size() as u32),
            // A chunk cannot be followed for longer than it lasts (OpenVLA-style chunks of 1).
            policy.action_horizon().max(1),
        )
    };
    let replan_steps = o.replan_steps.unwrap_or(horizon).clamp(1, horizon);
    let latency = Arc::new(Mutex::new(Vec::new()));
    let campaign = CampaignOptions {
        suite: o.suite,
        tasks: o.tasks.clone(),
        first_episode: first,
        episodes: o.episodes,
        seed,
        cameras: Some(CameraConfig {
            width: size,
            height: size,
        }),
        max_steps: o.max_steps,
        lockstep: o.lockstep,
        replan_steps,
        instructions: o.instructions.clone(),
        speed_window: o.speed_window,
        frames: o.frames.clone(),
        steps_past_success: o.steps_past_success,
    };
    let agent = match &o.rl {
        Some(dir) => Some(crate::vla::RlActor::load(vla, dir, Arc::clone(&latency))?),
        None => None,
    };
    let result = run_campaign_tapped(
        &campaign,
        tap,
        |_, _| -> Box<dyn rudder_robot::Policy> {
            if let Some(a) = &agent {
                return Box::new(a.clone());
            }
            // Every episode replays the same noise draws, whatever ran before it (and a
            // sweep's conditions compare on equal noise).
            lock(&vla.model).reset_noise();
            Box::new(vla.policy(o.steering.as_ref(), Some(Arc::clone(&latency))))
        },
        progress,
    )?;
    let n = result.runs.len();
    let s = result.successes();
    let lat = lock(&latency).clone();
    Ok(EvalReport {
        suite: o.suite.name().to_string(),
        policy: vla.dir.clone(),
        mode: if o.lockstep { "lockstep" } else { "realtime" },
        seed,
        first_episode: first,
        episodes_per_task: o.episodes,
        trained_episodes_per_task: trained,
        episodes: n,
        successes: s,
        success_rate: s as f64 / n.max(1) as f64,
        ci95: result.ci95(),
        replan_steps,
        inpainting,
        latency: Latency::of(lat),
        loop_timing: LoopTiming::of(&result.loop_metrics),
        per_task: result.per_task,
        wall_s: started.elapsed().as_secs_f64(),
        runs: result.runs,
    })
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// `--manners` / `--manner P` / neither (the task's own instruction).
pub fn instructions(cycle: bool, manner: Option<String>) -> Instructions {
    match (cycle, manner) {
        (true, _) => Instructions::CycleManners,
        (false, Some(m)) => Instructions::Manner(m),
        (false, None) => Instructions::Task,
    }
}

pub fn run(a: EvalArgs) -> anyhow::Result<ExitCode> {
    if let Some(EvalSub::Reward(r)) = a.sub {
        return crate::cli::reward::eval(r);
    }
    let Some(policy) = a.policy else {
        bail!(
            "--policy is required (a VLA checkpoint; or `rudder eval reward ...` for a classifier)"
        );
    };
    if a.episodes == 0 {
        bail!("--episodes must be > 0");
    }
    let o = EvalOptions {
        suite: Suite::parse(&a.suite)?,
        policy,
        episodes: a.episodes,
        first_episode: a.first_episode,
        seed: a.seed,
        tasks: a.tasks,
        lockstep: a.lockstep,
        camera_size: a.camera_size,
        max_steps: a.max_steps,
        replan_steps: a.replan_steps.map(|r| r.max(1)),
        steering: None,
        instructions: instructions(a.manners, a.manner.clone()),
        speed_window: None,
        inpainting: a.inpainting.map(Inpainting::from),
        frames: a.frames.clone(),
        steps_past_success: 0,
        rl: a.rl.clone(),
    };
    if let Some(dir) = &o.frames {
        std::fs::create_dir_all(dir)
            .with_context(|| format!("creating the frames folder {}", dir.display()))?;
    }
    let quiet = a.json;
    // The classifier loads before the policy runs: a broken reward checkpoint is reported
    // first, and never stops an episode once they run.
    let watcher = match &a.reward {
        Some(dir) => Some(crate::reward_watch::RewardWatcher::start(
            rudder_reward::SuccessClassifier::load(dir)
                .with_context(|| format!("--reward {}", dir.display()))?,
        )),
        None => None,
    };
    let vla = LoadedVla::load(&o.policy)?;
    let tap = watcher.as_ref().map(|w| w.tap());
    let r = evaluate_tapped(&o, &vla, tap, |e| {
        if let Some(w) = &watcher {
            w.finish_episode(e.task_index, e.episode, e.success);
        }
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
    let watch = watcher.map(|w| w.stop());
    if a.json {
        #[derive(Serialize)]
        struct WithReward<'a> {
            #[serde(flatten)]
            eval: &'a EvalReport,
            reward: &'a Option<crate::reward_watch::WatchReport>,
        }
        let out = WithReward {
            eval: &r,
            reward: &watch,
        };
        println!("{}", serde_json::to_string_pretty(&out)?);
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
    if let Some(w) = &watch {
        crate::reward_watch::print_watch(w);
    }
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use super::*;
    use rudder_policy::dataset::DemoDataset;
    use rudder_policy::train::{ModelSpec, TrainConfig, VlaTrainer};
    use rudder_robot::{
        Action, ActionChunk, ActionSpace, LockstepDriver, Observation, Policy, PolicyError,
    };
    use rudder_sim::tabletop::campaign::{loop_config, EvaluatedTabletop};
    use rudder_sim::tabletop::{load_suite, TabletopEnv, TabletopSim, CONTROL_HZ};

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

    /// One demo per spatial task (the folder lives as long as the guard).
    fn spatial_demos(size: u32) -> (tempfile::TempDir, DemoDataset, CameraConfig) {
        let data_dir = tempfile::tempdir().unwrap();
        let cams = CameraConfig {
            width: size,
            height: size,
        };
        rudder_sim::tabletop::write_demos(Suite::Spatial, 1, data_dir.path(), 0, cams).unwrap();
        let data = DemoDataset::load(data_dir.path(), true).unwrap();
        (data_dir, data, cams)
    }

    fn demo_actions(ep: &rudder_policy::dataset::Episode) -> Vec<[f64; 7]> {
        (0..ep.steps)
            .map(|t| std::array::from_fn(|j| ep.action_at(t)[j] as f64))
            .collect()
    }

    /// Replays `actions` through the lockstep loop from the task's init state 0, going on
    /// `past_success` steps after success; the environment as it ends.
    fn replay_through_loop(
        task: &rudder_sim::tabletop::Task,
        cams: CameraConfig,
        actions: &[[f64; 7]],
        replan_steps: usize,
        past_success: usize,
    ) -> TabletopEnv {
        let env = TabletopEnv::new(task, 0, 0, Some(cams)).unwrap();
        let mut emb = EvaluatedTabletop::new(TabletopSim::new(env), task.max_steps)
            .steps_past_success(past_success);
        let mut replay = DemoReplay {
            actions: actions.to_vec(),
            horizon: 8,
        };
        let mut driver = LockstepDriver::new(&mut emb, loop_config(replan_steps)).unwrap();
        driver
            .run(&mut emb, &mut replay, |e| e.is_done(), |_, _| {})
            .unwrap();
        emb.env().clone()
    }

    fn replay_demos(replan_steps: usize) {
        let (_dir, data, cams) = spatial_demos(16);
        let tasks = load_suite(Suite::Spatial).unwrap();
        let mut ok = 0;
        let mut report = Vec::new();
        for ep in &data.episodes {
            let task = &tasks[ep.task_index];
            let actions = demo_actions(ep);
            let mut direct = TabletopEnv::new(task, 0, 0, Some(cams)).unwrap();
            // The premise: stepped directly, the recorded actions redo the demo.
            for a in &actions {
                direct.step(a);
            }
            assert!(direct.success(), "{}: direct replay failed", task.id);
            let env = replay_through_loop(task, cams, &actions, replan_steps, 0);
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

    /// An episode asked to go on after its success stops exactly that many simulator steps
    /// later (the reward data's VLA rollouts see the policy's own success frames), and its
    /// outcome stays the latched success.
    #[test]
    fn an_episode_goes_on_the_asked_steps_past_its_success() {
        let (_dir, data, cams) = spatial_demos(16);
        let tasks = load_suite(Suite::Spatial).unwrap();
        let mut checked = 0;
        for ep in data.episodes.iter().take(4) {
            let task = &tasks[ep.task_index];
            let actions = demo_actions(ep);
            let plain = replay_through_loop(task, cams, &actions, 8, 0);
            if !plain.success() || plain.steps() + 40 > task.max_steps {
                continue;
            }
            let past = replay_through_loop(task, cams, &actions, 8, 40);
            assert!(past.success(), "{}: success must stay latched", task.id);
            assert_eq!(past.steps(), plain.steps() + 40, "{}", task.id);
            checked += 1;
        }
        assert!(
            checked >= 2,
            "only {checked} demos succeeded through the loop"
        );
    }

    /// `rudder eval` reads the task's own instruction unless asked for manners (LIBERO's
    /// protocol); `--manners` cycles them, `--manner P` fixes one.
    #[test]
    fn the_default_instruction_is_the_tasks_own() {
        assert_eq!(instructions(false, None), Instructions::Task);
        assert_eq!(instructions(true, None), Instructions::CycleManners);
        assert_eq!(
            instructions(false, Some("slowly".into())),
            Instructions::Manner("slowly".into())
        );
    }

    /// A barely trained policy runs 2 short episodes through the loop (lockstep and real
    /// time) and the report carries every JSON field.
    #[test]
    fn eval_runs_a_trained_checkpoint() {
        let (_dir, data, _) = spatial_demos(32);
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
                // Real time cycles through each task's manners; lockstep forces one.
                instructions: if lockstep {
                    Instructions::Manner("quickly".to_string())
                } else {
                    Instructions::CycleManners
                },
                speed_window: lockstep.then_some(5),
                // Real time inpaints, and lockstep writes the last frames.
                inpainting: (!lockstep).then_some(Inpainting::Decay),
                frames: lockstep.then(|| frames.path().to_path_buf()),
                steps_past_success: 0,
                rl: None,
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
