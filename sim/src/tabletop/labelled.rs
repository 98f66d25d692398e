//! Episodes whose camera frames carry the success predicate's value, for training and testing
//! success classifiers: the scripted expert's successes (with frames after the goal first
//! holds) and its perturbed scripts' near misses (`Perturbation`, RoboFuME's hard negatives).
//! Labels come from the task's goal predicates, never from a person.

use super::env::{CameraConfig, TabletopEnv};
use super::expert::{Expert, Perturbation};
use super::suites::SuiteError;
use super::tasks::Task;
use rudder_robot::ImageRgb8;

/// Which frames of an episode are kept.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FrameSampling {
    /// Every `stride`-th step before the tail (e.g. 8).
    pub stride: usize,
    /// The episode's last `tail_steps` steps are its end state (e.g. 24).
    pub tail_steps: usize,
    /// Stride inside the tail (e.g. 3); the episode's last step is always kept.
    pub tail_stride: usize,
    /// Steps run on after the predicate first holds (e.g. 24), the arm idling or finishing
    /// its retreat.
    pub post_success_steps: usize,
    /// Steps a perturbed / failed script idles at its end before stopping (e.g. 24).
    pub settle_steps: usize,
}

impl Default for FrameSampling {
    fn default() -> Self {
        Self {
            stride: 8,
            tail_steps: 24,
            tail_stride: 3,
            post_success_steps: 24,
            settle_steps: 24,
        }
    }
}

impl FrameSampling {
    /// Whether the state after `k` of `n` steps is kept, and whether it is in the tail.
    fn keep(&self, k: usize, n: usize) -> Option<bool> {
        let in_tail = k + self.tail_steps > n;
        let kept = if in_tail {
            (n - k).is_multiple_of(self.tail_stride.max(1))
        } else {
            k.is_multiple_of(self.stride.max(1))
        };
        kept.then_some(in_tail)
    }
}

/// One kept frame: the cameras and the predicate after `step` steps (0 = the start).
#[derive(Debug, Clone, PartialEq)]
pub struct LabelledFrame {
    pub step: usize,
    pub agentview: ImageRgb8,
    pub wrist: ImageRgb8,
    /// `env.goal_holds()` at this frame.
    pub goal_holds: bool,
    /// Inside the end-state window (the episode's last `tail_steps` steps).
    pub in_tail: bool,
}

#[derive(Debug, Clone, PartialEq)]
pub struct LabelledEpisode {
    pub task_id: String,
    /// The instruction the episode ran under (manner words included).
    pub instruction: String,
    pub init: usize,
    /// The perturbation the expert ran with; `None` also where the one asked for does not
    /// apply to the task (the plain expert ran).
    pub perturbation: Option<Perturbation>,
    /// The goal held at the last frame.
    pub success: bool,
    /// Steps taken; the last frame is the state after them.
    pub steps: usize,
    pub frames: Vec<LabelledFrame>,
}

/// How many steps the episode runs. The plain expert runs until the goal first holds, then
/// `post_success_steps` more; a perturbed (or failing) script until the expert idles, then
/// `settle_steps` more. The event must come within the task's `max_steps`; otherwise the
/// episode stops there.
fn episode_length(
    mut env: TabletopEnv,
    mut expert: Expert,
    perturbed: bool,
    s: &FrameSampling,
) -> usize {
    let max = env.task().max_steps;
    let (mut success_at, mut idle_at) = (None, None);
    let mut k = 0;
    loop {
        if !perturbed && success_at.is_none() && idle_at.is_none() && env.goal_holds() {
            success_at = Some(k);
        }
        match (success_at, idle_at) {
            (Some(at), _) if k >= at + s.post_success_steps => return k,
            (None, Some(at)) if k >= at + s.settle_steps => return k,
            (None, None) if k >= max => return k,
            _ => {}
        }
        let a = expert.act(&env);
        if idle_at.is_none() && success_at.is_none() && expert.is_idle() {
            idle_at = Some(k);
        }
        env.step(&a);
        k += 1;
    }
}

/// Runs the scripted expert (or a perturbed one) on init state `init` of `task` (seeded like
/// `TabletopEnv::new(task, seed, init, Some(cameras))`), rendering only the kept frames.
///
/// The episode is simulated twice: once without cameras to find where it ends (the tail is
/// counted back from there), then again, deterministically, rendering the kept frames.
pub fn expert_episode(
    task: &Task,
    seed: u64,
    init: usize,
    perturbation: Option<Perturbation>,
    cameras: CameraConfig,
    sampling: &FrameSampling,
) -> Result<LabelledEpisode, SuiteError> {
    let env = TabletopEnv::new(task, seed, init, Some(cameras))?.without_audit();
    expert_episode_from(env, init, perturbation, sampling)
}

/// [`expert_episode`] from a given start: e.g. a backward task's episode starting where the
/// forward expert's episode of init state `init` ended ([`super::demos::forward_expert_end`]).
pub fn expert_episode_from(
    env: TabletopEnv,
    init: usize,
    perturbation: Option<Perturbation>,
    sampling: &FrameSampling,
) -> Result<LabelledEpisode, SuiteError> {
    let env = env.without_audit();
    let task = env.task().clone();
    let expert = match perturbation {
        Some(p) => Expert::with_perturbation(&env, p),
        None => Expert::new(&env),
    };
    let applied = expert.perturbation();
    let steps = episode_length(env.clone(), expert.clone(), applied.is_some(), sampling);
    let instruction = env.instruction().to_string();
    let (mut env, mut expert) = (env, expert);
    let mut frames = Vec::new();
    for k in 0..=steps {
        if let Some(in_tail) = sampling.keep(k, steps) {
            let obs = env.observe();
            let blank = || ImageRgb8 {
                width: 0,
                height: 0,
                data: Vec::new(),
            };
            frames.push(LabelledFrame {
                step: k,
                agentview: obs.agentview.unwrap_or_else(blank),
                wrist: obs.wrist.unwrap_or_else(blank),
                goal_holds: env.goal_holds(),
                in_tail,
            });
        }
        if k < steps {
            let a = expert.act(&env);
            env.step(&a);
        }
    }
    Ok(LabelledEpisode {
        task_id: task.id.clone(),
        instruction,
        init,
        perturbation: applied,
        success: frames.last().is_some_and(|f| f.goal_holds),
        steps,
        frames,
    })
}
