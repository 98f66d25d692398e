//! Tabletop evaluation campaigns: a policy over episodes of a suite's tasks, each driven by
//! robot's control loop (threaded in real time, or the `LockstepDriver` in simulated time)
//! through [`EvaluatedTabletop`], which wraps the one tabletop embodiment with what an
//! evaluation needs (the TCP path, when the episode is over). Per-task success with Wilson
//! intervals; `rudder eval` and `rudder steer sweep` call it, as `rudder sim driving` calls
//! `driving::campaign`. Generic over `robot::Policy`: sim knows no model.

use super::embodiment::{command_joints, TabletopSim};
use super::env::{CameraConfig, TabletopEnv, CONTROL_HZ};
use super::suites::{load_suite, Suite};
use super::tasks::Task;
use rudder_robot::stats::{percentile, wilson95};
use rudder_robot::{
    ArmStateLayout, ControlConfig, ControlError, ControlLoop, Embodiment, EmbodimentError,
    JointCommand, JointLimits, JointState, LockstepDriver, LoopMetrics, Observation, Policy,
    Ur5Model,
};
use serde::Serialize;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use thiserror::Error;

#[derive(Debug, Error)]
pub enum CampaignError {
    #[error("suite {suite}: {reason}")]
    Suite { suite: String, reason: String },
    #[error("suite {suite} has no task {index}")]
    NoTask { suite: String, index: usize },
    #[error("task {task}, episode {episode}: {reason}")]
    Episode {
        task: String,
        episode: usize,
        reason: String,
    },
    #[error("task {task}, episode {episode}: {source}")]
    Control {
        task: String,
        episode: usize,
        source: ControlError,
    },
    #[error("writing a frame to {path}: {reason}")]
    Frame { path: PathBuf, reason: String },
}

/// Which instruction each episode's policy reads.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum Instructions {
    /// The task's own instruction (LIBERO's protocol).
    #[default]
    Task,
    /// Episode `k` uses the task's manner phrase `k mod manners` (`Task::instruction_for`).
    CycleManners,
    /// One manner phrase appended to every instruction ("" = the task's own).
    Manner(String),
}

impl Instructions {
    /// The instruction of `task`'s episode `episode`.
    pub fn for_episode(&self, task: &Task, episode: usize) -> String {
        match self {
            Instructions::Task => task.instruction.clone(),
            Instructions::CycleManners => task.instruction_for(episode),
            Instructions::Manner(m) => with_manner(&task.instruction, m),
        }
    }
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

/// Task `index` of `suite`, or an error naming both.
pub fn suite_task(suite: Suite, index: usize) -> Result<Task, CampaignError> {
    let tasks = load_suite(suite).map_err(|e| CampaignError::Suite {
        suite: suite.name().into(),
        reason: e.to_string(),
    })?;
    tasks
        .into_iter()
        .nth(index)
        .ok_or_else(|| CampaignError::NoTask {
            suite: suite.name().into(),
            index,
        })
}

/// Episode `episode` of `task` (init state `episode mod 50` of `seed`) with `instruction`.
pub fn episode_env(
    task: &Task,
    seed: u64,
    episode: usize,
    instruction: &str,
    cameras: Option<CameraConfig>,
) -> Result<TabletopEnv, CampaignError> {
    TabletopEnv::with_instruction(task, seed, episode, instruction, cameras).map_err(|e| {
        CampaignError::Episode {
            task: task.id.clone(),
            episode,
            reason: e.to_string(),
        }
    })
}

/// The loop configuration tabletop runs use: the UR5 at the simulator's rate, the loop's
/// filter keeping the hand in the simulator's workspace box, replanning every `replan_steps`
/// control periods.
pub fn loop_config(replan_steps: usize) -> ControlConfig {
    let mut cfg = ControlConfig::ur5(Ur5Model::ur5(), TabletopSim::RATE_HZ);
    cfg.safety.workspace = Some((Ur5Model::ur5(), super::env::workspace()));
    cfg.replan_every(replan_steps.max(1));
    cfg
}

/// The tabletop embodiment as an evaluation sees it: the episode ends at the task's success
/// (or that many steps after it, see [`EvaluatedTabletop::steps_past_success`]) or after
/// `max_steps` simulator steps (later commands are ignored), and the TCP is kept after every
/// step.
pub struct EvaluatedTabletop {
    inner: TabletopSim,
    max_steps: usize,
    past_success: usize,
    /// The simulator step at which the task first succeeded.
    success_at: Option<usize>,
    done: Arc<AtomicBool>,
    /// The TCP after every simulator step (the first entry: the initial pose).
    tcp: Vec<[f64; 3]>,
    tap: Option<(FrameTap, usize, usize)>,
}

/// What a [`FrameTap`] is shown at every observation of a campaign's episode.
pub struct FrameEvent<'a> {
    pub task_index: usize,
    pub episode: usize,
    /// Simulator steps taken before this observation.
    pub step: usize,
    pub observation: &'a Observation,
    /// Whether the task's goal holds at this observation (the simulator's truth, not latched).
    pub goal_holds: bool,
    /// The episode's final state, observed once after the loop stopped (the loop's own last
    /// observation comes before the last chunk was played).
    pub last: bool,
}

/// Called on the loop's thread at every observation, so it must return at once (hand the
/// frame to another thread, never classify inline): a reward classifier watching the run,
/// or a recorder of labelled frames.
pub type FrameTap = Arc<dyn Fn(&FrameEvent<'_>) + Send + Sync>;

impl EvaluatedTabletop {
    pub fn new(inner: TabletopSim, max_steps: usize) -> Self {
        let tcp = vec![inner.env().tcp()];
        Self {
            inner,
            max_steps,
            past_success: 0,
            success_at: None,
            done: Arc::new(AtomicBool::new(false)),
            tcp,
            tap: None,
        }
    }

    /// Keeps the episode going for `steps` simulator steps after the task first succeeds
    /// (never past `max_steps`): a recorder of labelled frames sees what the policy does once
    /// the goal holds, as a reset-free run would. The outcome stays the latched success.
    pub fn steps_past_success(mut self, steps: usize) -> Self {
        self.past_success = steps;
        self
    }

    /// Shows `tap` every observation of episode `episode` of task `task_index`.
    pub fn with_tap(mut self, tap: FrameTap, task_index: usize, episode: usize) -> Self {
        self.tap = Some((tap, task_index, episode));
        self
    }

    /// Set once the episode is over; shared so a real-time run can be watched from outside.
    pub fn done_flag(&self) -> Arc<AtomicBool> {
        Arc::clone(&self.done)
    }

    pub fn is_done(&self) -> bool {
        self.done.load(Ordering::Acquire)
    }

    pub fn tcp_path(&self) -> &[[f64; 3]] {
        &self.tcp
    }

    pub fn env(&self) -> &TabletopEnv {
        self.inner.env()
    }

    pub fn env_mut(&mut self) -> &mut TabletopEnv {
        self.inner.env_mut()
    }

    /// Shows the tap the episode's final state (once the loop has stopped).
    pub fn tap_final(&mut self) -> Result<(), EmbodimentError> {
        if let Some((tap, task_index, episode)) = self.tap.clone() {
            let obs = self.inner.observe()?;
            let env = self.inner.env();
            tap(&FrameEvent {
                task_index,
                episode,
                step: env.steps(),
                observation: &obs,
                goal_holds: env.goal_holds(),
                last: true,
            });
        }
        Ok(())
    }

    fn over(&self) -> bool {
        let env = self.inner.env();
        if env.steps() >= self.max_steps {
            return true;
        }
        match self.success_at {
            Some(at) => env.steps() >= at + self.past_success,
            None => env.done(),
        }
    }

    fn note_success(&mut self) {
        if self.success_at.is_none() && self.inner.env().success() {
            self.success_at = Some(self.inner.env().steps());
        }
    }
}

impl Embodiment for EvaluatedTabletop {
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
        if let Some((tap, task_index, episode)) = &self.tap {
            let env = self.inner.env();
            tap(&FrameEvent {
                task_index: *task_index,
                episode: *episode,
                step: env.steps(),
                observation: &obs,
                goal_holds: env.goal_holds(),
                last: false,
            });
        }
        Ok(obs)
    }
    fn command(&mut self, cmd: &JointCommand) -> Result<(), EmbodimentError> {
        command_joints(cmd)?;
        if self.over() {
            self.done.store(true, Ordering::Release);
            return Ok(());
        }
        let r = self.inner.command(cmd);
        self.note_success();
        if self.over() {
            self.done.store(true, Ordering::Release);
        }
        self.tcp.push(self.inner.env().tcp());
        r
    }
}

/// The first `steps` steps of a path (`steps + 1` points), or all of it.
pub fn window(path: &[[f64; 3]], steps: Option<usize>) -> &[[f64; 3]] {
    let end = steps.map_or(path.len(), |w| (w + 1).min(path.len()));
    &path[..end]
}

/// Mean speed and mean velocity (m/s) of a TCP path sampled at the simulator's rate.
pub fn path_stats(path: &[[f64; 3]]) -> (f64, [f64; 3]) {
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

/// What one campaign is asked to do.
#[derive(Debug, Clone)]
pub struct CampaignOptions {
    pub suite: Suite,
    /// Task indices (empty: all).
    pub tasks: Vec<usize>,
    pub first_episode: usize,
    /// Episodes per task.
    pub episodes: usize,
    pub seed: u64,
    pub cameras: Option<CameraConfig>,
    /// Cap on simulator steps per episode (never above the task's own limit).
    pub max_steps: Option<usize>,
    /// Step the loop in simulated time on this thread (reproducible).
    pub lockstep: bool,
    /// Chunk points followed before the next inference (>= 1).
    pub replan_steps: usize,
    pub instructions: Instructions,
    /// Speed and velocity over the first this many simulator steps only; `None`: the episode.
    pub speed_window: Option<usize>,
    /// Folder for each episode's last camera frames (PNG).
    pub frames: Option<PathBuf>,
    /// Simulator steps an episode goes on after its first success (0: it ends there, as
    /// LIBERO's evaluation does).
    pub steps_past_success: usize,
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

/// The control loop's timing over all episodes of a real-time campaign.
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

impl LoopTiming {
    /// Over the episodes' final metrics; `None` when there are none (lockstep).
    pub fn of(episodes: &[LoopMetrics]) -> Option<LoopTiming> {
        let first = episodes.first()?;
        let mut p50: Vec<f64> = episodes.iter().map(|m| m.period_error_us.p50).collect();
        p50.sort_by(f64::total_cmp);
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
            inference_error_kinds: kinds,
        })
    }
}

/// Model-call latency over a campaign.
#[derive(Debug, Clone, Serialize)]
pub struct Latency {
    pub count: usize,
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub mean_ms: f64,
}

impl Latency {
    pub fn of(mut samples_ms: Vec<f64>) -> Latency {
        samples_ms.sort_by(f64::total_cmp);
        Latency {
            count: samples_ms.len(),
            p50_ms: percentile(&samples_ms, 0.5),
            p99_ms: percentile(&samples_ms, 0.99),
            mean_ms: samples_ms.iter().sum::<f64>() / samples_ms.len().max(1) as f64,
        }
    }
}

/// What a campaign measured.
#[derive(Debug, Clone)]
pub struct CampaignResult {
    pub per_task: Vec<TaskOutcome>,
    pub runs: Vec<EpisodeOutcome>,
    /// Each real-time episode's final loop metrics (empty in lockstep).
    pub loop_metrics: Vec<LoopMetrics>,
}

impl CampaignResult {
    pub fn successes(&self) -> usize {
        self.runs.iter().filter(|r| r.success).count()
    }

    /// 95 % Wilson interval of the overall success rate.
    pub fn ci95(&self) -> [f64; 2] {
        wilson95(self.successes(), self.runs.len())
    }
}

/// Runs `o`: `policy_for(task, episode)` gives each episode's policy (fresh, or reset);
/// `progress` is told after every episode.
pub fn run_campaign<P: Policy + 'static>(
    o: &CampaignOptions,
    policy_for: impl FnMut(&Task, usize) -> P,
    progress: impl FnMut(&EpisodeOutcome),
) -> Result<CampaignResult, CampaignError> {
    run_campaign_tapped(o, None, policy_for, progress)
}

/// [`run_campaign`] with `tap` shown every observation of every episode.
pub fn run_campaign_tapped<P: Policy + 'static>(
    o: &CampaignOptions,
    tap: Option<FrameTap>,
    mut policy_for: impl FnMut(&Task, usize) -> P,
    mut progress: impl FnMut(&EpisodeOutcome),
) -> Result<CampaignResult, CampaignError> {
    let tasks = load_suite(o.suite).map_err(|e| CampaignError::Suite {
        suite: o.suite.name().into(),
        reason: e.to_string(),
    })?;
    let indices: Vec<usize> = if o.tasks.is_empty() {
        (0..tasks.len()).collect()
    } else {
        o.tasks.clone()
    };
    let cfg = loop_config(o.replan_steps);
    let mut runs = Vec::new();
    let mut per_task = Vec::new();
    let mut loop_metrics = Vec::new();
    for &ti in &indices {
        let task = tasks.get(ti).ok_or_else(|| CampaignError::NoTask {
            suite: o.suite.name().into(),
            index: ti,
        })?;
        let max_steps = o
            .max_steps
            .map_or(task.max_steps, |m| m.min(task.max_steps));
        let mut successes = 0;
        for episode in o.first_episode..o.first_episode + o.episodes {
            let instruction = o.instructions.for_episode(task, episode);
            let env = episode_env(task, o.seed, episode, &instruction, o.cameras)?;
            let mut emb = EvaluatedTabletop::new(TabletopSim::new(env), max_steps)
                .steps_past_success(o.steps_past_success);
            if let Some(t) = &tap {
                emb = emb.with_tap(Arc::clone(t), ti, episode);
            }
            let mut policy = policy_for(task, episode);
            let control = |source| CampaignError::Control {
                task: task.id.clone(),
                episode,
                source,
            };
            if o.lockstep {
                let mut driver = LockstepDriver::new(&mut emb, cfg.clone()).map_err(control)?;
                driver
                    .run(&mut emb, &mut policy, |e| e.is_done(), |_, _| {})
                    .map_err(control)?;
            } else {
                let done = emb.done_flag();
                let lp = ControlLoop::start(emb, policy, cfg.clone()).map_err(control)?;
                // Simulated steps run at the control rate; allow for a slow start.
                let limit = Duration::from_secs_f64(max_steps as f64 / CONTROL_HZ * 2.0 + 30.0);
                let t0 = Instant::now();
                while !done.load(Ordering::Acquire) && t0.elapsed() < limit {
                    std::thread::sleep(Duration::from_millis(20));
                }
                let (back, m) = lp.stop().map_err(control)?;
                emb = back;
                loop_metrics.push(m);
            }
            let success = emb.env().success();
            emb.tap_final().map_err(|e| CampaignError::Episode {
                task: task.id.clone(),
                episode,
                reason: format!("observing the final state: {e}"),
            })?;
            if let Some(dir) = &o.frames {
                write_frames(dir, &task.id, episode, success, emb.env_mut())?;
            }
            let (mean_speed, mean_velocity) = path_stats(window(emb.tcp_path(), o.speed_window));
            let out = EpisodeOutcome {
                task_index: ti,
                episode,
                instruction,
                success,
                steps: emb.env().steps(),
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
    Ok(CampaignResult {
        per_task,
        runs,
        loop_metrics,
    })
}

/// The episode's last camera frames as `<task>_ep<N>_<success|failure>_<camera>.png`.
fn write_frames(
    dir: &std::path::Path,
    task: &str,
    episode: usize,
    success: bool,
    env: &mut TabletopEnv,
) -> Result<(), CampaignError> {
    let tag = if success { "success" } else { "failure" };
    let obs = env.observe();
    for (cam, img) in [("agentview", &obs.agentview), ("wrist", &obs.wrist)] {
        let Some(img) = img else { continue };
        let path = dir.join(format!("{task}_ep{episode}_{tag}_{cam}.png"));
        super::render::save_png(img, &path).map_err(|e| CampaignError::Frame {
            path: path.clone(),
            reason: e.to_string(),
        })?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

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
}
