//! A reset-free tabletop run (RoboFuME): one scene, never reset, in which a policy alternates
//! each goal-suite task with its backward task. A success detector (the VLM classifier, not
//! the simulator's predicate) ends an attempt and switches to the other task; so does the
//! attempt's step budget. The simulator intervenes only when an object leaves the table, and
//! every intervention is counted. Attempts run through robot's `LockstepDriver`, the one
//! stepped loop, a fresh driver per attempt so the first chunk of a new task is planned at
//! once.

use super::campaign::loop_config;
use super::embodiment::TabletopSim;
use super::env::{CameraConfig, TabletopEnv};
use super::suites::{load_backward, load_suite, Suite};
use super::tasks::Task;
use rudder_robot::{
    AttemptEnd, ControlError, Debounce, Embodiment, Learner, LockstepDriver, SuccessJudge,
};
use serde::Serialize;
use std::time::Instant;
use thiserror::Error;

#[derive(Debug, Error)]
pub enum ResetFreeError {
    #[error("{0}")]
    Setup(String),
    #[error("attempt {attempt} ({task}): {source}")]
    Control {
        attempt: usize,
        task: String,
        source: ControlError,
    },
    #[error("attempt {attempt} ({task}): the success detector failed: {reason}")]
    Judge {
        attempt: usize,
        task: String,
        reason: String,
    },
    #[error("attempt {attempt} ({task}): {reason}")]
    Scene {
        attempt: usize,
        task: String,
        reason: String,
    },
}

/// What a reset-free run does.
#[derive(Debug, Clone)]
pub struct ResetFreeOptions {
    /// Forward tasks by index in the goal suite; empty = all ten.
    pub tasks: Vec<usize>,
    /// Seed of the scene's first layout (and of the layouts an intervention restores).
    pub seed: u64,
    /// Init state of the first scene.
    pub first_init: usize,
    /// Simulator steps of the whole run.
    pub steps: u64,
    /// Step budget of one attempt (None: the task's own `max_steps`).
    pub attempt_steps: Option<usize>,
    /// The detector judges every this many steps.
    pub judge_every: usize,
    /// Consecutive "yes" judgements that end an attempt.
    pub debounce: usize,
    pub replan_steps: usize,
    pub cameras: CameraConfig,
}

impl Default for ResetFreeOptions {
    fn default() -> Self {
        Self {
            tasks: Vec::new(),
            seed: 0,
            first_init: 0,
            steps: 50_000,
            attempt_steps: None,
            judge_every: 2,
            debounce: 3,
            replan_steps: 8,
            cameras: CameraConfig::default(),
        }
    }
}

/// One attempt at one task.
#[derive(Debug, Clone, Serialize, serde::Deserialize)]
pub struct AttemptRecord {
    pub attempt: usize,
    /// Index of the forward task in the goal suite.
    pub task_index: usize,
    pub backward: bool,
    pub task: String,
    pub instruction: String,
    /// Run step at which the attempt started.
    pub start_step: u64,
    pub steps: usize,
    pub end: AttemptEnd,
    /// The simulator's predicate held at some step of the attempt (reported, never used).
    pub predicate_success: bool,
    /// The highest probability the detector gave.
    pub max_probability: f64,
}

/// Sees the run as it goes (Rerun curves, progress bars).
pub trait ResetFreeObserver {
    /// After each judged step.
    fn judged(&mut self, _run_step: u64, _probability: f64, _backward: bool) {}
    /// After each attempt.
    fn attempt(&mut self, _record: &AttemptRecord) {}
}

impl ResetFreeObserver for () {}

/// The whole run.
#[derive(Debug, Clone, Serialize, serde::Deserialize)]
pub struct ResetFreeReport {
    pub steps: u64,
    pub attempts: Vec<AttemptRecord>,
    pub interventions: usize,
    /// Manual resets: none, by construction (the field exists so reports say so).
    pub manual_resets: usize,
    /// Times a resumed run started its scene again from the first init state (a killed run's
    /// scene is not in its checkpoint).
    pub restarts: usize,
    /// Attempts where the detector's verdict (success or not) matched the predicate's.
    pub verdict_agreement: usize,
    pub wall_s: f64,
    /// Wall time in the loop's ticks (simulation, rendering, policy inference and learning).
    pub loop_s: f64,
    /// Wall time in the success detector.
    pub judge_s: f64,
}

/// The goal suite's (forward, backward) pairs, checked: every forward task has its backward
/// task, and `tasks` names existing ones.
pub fn task_pairs(tasks: &[usize]) -> Result<Vec<(usize, Task, Task)>, ResetFreeError> {
    let forward = load_suite(Suite::Goal).map_err(|e| ResetFreeError::Setup(e.to_string()))?;
    let backward = load_backward(Suite::Goal).map_err(|e| ResetFreeError::Setup(e.to_string()))?;
    let indices: Vec<usize> = if tasks.is_empty() {
        (0..forward.len()).collect()
    } else {
        tasks.to_vec()
    };
    let mut pairs = Vec::new();
    for i in indices {
        let f = forward.get(i).ok_or_else(|| {
            ResetFreeError::Setup(format!(
                "the goal suite has no task {i} (it has {}: 0..{})",
                forward.len(),
                forward.len()
            ))
        })?;
        let (_, b) = backward
            .iter()
            .find(|(id, _)| *id == f.id)
            .ok_or_else(|| ResetFreeError::Setup(format!("task {} has no backward task", f.id)))?;
        pairs.push((i, f.clone(), b.clone()));
    }
    Ok(pairs)
}

/// A reset-free run in progress: the scene, where it is in the task cycle, and its report.
/// [`ResetFreeRun::advance`] runs whole attempts, so a caller can checkpoint between calls.
pub struct ResetFreeRun {
    o: ResetFreeOptions,
    pairs: Vec<(usize, Task, Task)>,
    emb: TabletopSim,
    /// Next attempt: pair `cursor / 2`, backward when `cursor` is odd.
    cursor: usize,
    debounce: Debounce,
    report: ResetFreeReport,
}

impl ResetFreeRun {
    /// The scene of the first task's init state `o.first_init`; `done` restores the counters
    /// and records of a resumed run (the scene itself starts again from that init state).
    pub fn new(
        o: &ResetFreeOptions,
        done: Option<ResetFreeReport>,
    ) -> Result<Self, ResetFreeError> {
        let pairs = task_pairs(&o.tasks)?;
        let Some((_, first, _)) = pairs.first() else {
            return Err(ResetFreeError::Setup("no tasks to run".into()));
        };
        let env = TabletopEnv::new(first, o.seed, o.first_init, Some(o.cameras))
            .map_err(|e| ResetFreeError::Setup(e.to_string()))?;
        let resumed = done.is_some();
        let mut report = done.unwrap_or(ResetFreeReport {
            steps: 0,
            attempts: Vec::new(),
            interventions: 0,
            manual_resets: 0,
            restarts: 0,
            verdict_agreement: 0,
            wall_s: 0.0,
            loop_s: 0.0,
            judge_s: 0.0,
        });
        if resumed {
            report.restarts += 1;
        }
        // A resumed run goes on with the forward task after the last attempt's pair.
        let cursor = report
            .attempts
            .last()
            .and_then(|a| pairs.iter().position(|(i, _, _)| *i == a.task_index))
            .map_or(0, |p| 2 * (p + 1));
        Ok(Self {
            o: o.clone(),
            emb: TabletopSim::new(env),
            pairs,
            cursor,
            debounce: Debounce::new(o.debounce),
            report,
        })
    }

    pub fn report(&self) -> &ResetFreeReport {
        &self.report
    }

    pub fn into_report(self) -> ResetFreeReport {
        self.report
    }

    pub fn finished(&self) -> bool {
        self.report.steps >= self.o.steps
    }

    pub fn env(&self) -> &TabletopEnv {
        self.emb.env()
    }

    /// Runs attempts until `steps` more simulator steps have passed (the last attempt runs to
    /// its end) or the run's total is reached.
    pub fn advance<L: Learner, J: SuccessJudge>(
        &mut self,
        steps: u64,
        policy: &mut L,
        judge: &mut J,
        observer: &mut dyn ResetFreeObserver,
    ) -> Result<(), ResetFreeError> {
        let t0 = Instant::now();
        let stop = self.report.steps.saturating_add(steps).min(self.o.steps);
        while self.report.steps < stop {
            self.attempt(policy, judge, observer)?;
        }
        self.report.wall_s += t0.elapsed().as_secs_f64();
        Ok(())
    }

    fn attempt<L: Learner, J: SuccessJudge>(
        &mut self,
        policy: &mut L,
        judge: &mut J,
        observer: &mut dyn ResetFreeObserver,
    ) -> Result<(), ResetFreeError> {
        let o = &self.o;
        let pair = (self.cursor / 2) % self.pairs.len();
        let is_backward = self.cursor % 2 == 1;
        let (task_index, forward, backward) = &self.pairs[pair];
        let task = if is_backward { backward } else { forward };
        let attempt = self.report.attempts.len();
        let report = &mut self.report;
        let emb = &mut self.emb;
        let scene_err = |reason: String| ResetFreeError::Scene {
            attempt,
            task: task.id.clone(),
            reason,
        };
        emb.env_mut()
            .switch_task(task, &task.instruction)
            .map_err(|e| scene_err(e.to_string()))?;
        policy.reset();
        self.debounce.reset();
        let budget = o.attempt_steps.unwrap_or(task.max_steps).max(1);
        let control = |source| ResetFreeError::Control {
            attempt,
            task: task.id.clone(),
            source,
        };
        let mut driver = LockstepDriver::new(emb, loop_config(o.replan_steps)).map_err(control)?;
        let (start, mut steps, mut max_p, mut predicate) = (report.steps, 0usize, 0f64, false);
        let end = loop {
            let t = Instant::now();
            driver.tick(emb, policy).map_err(control)?;
            report.loop_s += t.elapsed().as_secs_f64();
            steps += 1;
            report.steps += 1;
            predicate |= emb.env().goal_holds();
            if !emb.env().objects_off_table().is_empty() {
                emb.env_mut()
                    .intervene(o.seed, o.first_init + 1 + report.interventions)
                    .map_err(|e| scene_err(e.to_string()))?;
                report.interventions += 1;
                break AttemptEnd::Intervention;
            }
            if steps % o.judge_every.max(1) == 0 {
                if let Some(obs) = emb.last_observation() {
                    let t = Instant::now();
                    let j = judge.judge(obs).map_err(|reason| ResetFreeError::Judge {
                        attempt,
                        task: task.id.clone(),
                        reason,
                    })?;
                    report.judge_s += t.elapsed().as_secs_f64();
                    max_p = max_p.max(j.probability);
                    observer.judged(report.steps, j.probability, is_backward);
                    if self.debounce.update(j.success) {
                        break AttemptEnd::Success;
                    }
                }
            }
            if steps >= budget || report.steps >= o.steps {
                break AttemptEnd::TimeOut;
            }
        };
        let mut last = emb.observe().map_err(|e| scene_err(e.to_string()))?;
        last.instruction.clone_from(&task.instruction);
        policy
            .end_attempt(&last, end)
            .map_err(|e| scene_err(format!("the policy's update failed: {e}")))?;
        let record = AttemptRecord {
            attempt,
            task_index: *task_index,
            backward: is_backward,
            task: task.id.clone(),
            instruction: task.instruction.clone(),
            start_step: start,
            steps,
            end,
            predicate_success: predicate,
            max_probability: max_p,
        };
        if (end == AttemptEnd::Success) == predicate {
            report.verdict_agreement += 1;
        }
        observer.attempt(&record);
        report.attempts.push(record);
        self.cursor += 1;
        Ok(())
    }
}

/// Runs `policy` reset-free for `o.steps` simulator steps, `judge` deciding success.
pub fn run_reset_free<L: Learner, J: SuccessJudge>(
    o: &ResetFreeOptions,
    policy: &mut L,
    judge: &mut J,
    observer: &mut dyn ResetFreeObserver,
) -> Result<ResetFreeReport, ResetFreeError> {
    let mut run = ResetFreeRun::new(o, None)?;
    run.advance(o.steps, policy, judge, observer)?;
    Ok(run.into_report())
}

impl ResetFreeReport {
    /// (successes by the detector, by the predicate, attempts) of forward or backward attempts.
    pub fn rates(&self, backward: bool) -> (usize, usize, usize) {
        let a: Vec<&AttemptRecord> = self
            .attempts
            .iter()
            .filter(|r| r.backward == backward)
            .collect();
        (
            a.iter().filter(|r| r.end == AttemptEnd::Success).count(),
            a.iter().filter(|r| r.predicate_success).count(),
            a.len(),
        )
    }
}
