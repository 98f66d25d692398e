//! The three embedded suites (after LIBERO's spatial, object and goal), the scripted-policy
//! suite runner and the throughput benchmark.

use super::env::{CameraConfig, TabletopEnv};
use super::expert::Expert;
use super::tasks::{Task, TaskError};
use rudder_robot::safety::LimitMonitor;
use serde::Serialize;
use std::time::Instant;
use thiserror::Error;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum Suite {
    Spatial,
    Object,
    Goal,
}

#[derive(Debug, Error, Clone, PartialEq)]
pub enum SuiteError {
    #[error("unknown suite `{0}` (known: spatial, object, goal)")]
    Unknown(String),
    #[error(transparent)]
    Task(#[from] TaskError),
    #[error("episodes must be at least 1")]
    NoEpisodes,
}

macro_rules! embed {
    ($dir:literal: $($name:literal),* $(,)?) => {
        &[$((concat!("suites/", $dir, "/", $name, ".toml"),
             include_str!(concat!("../../suites/", $dir, "/", $name, ".toml")))),*]
    };
}

const SPATIAL: &[(&str, &str)] = embed!("spatial":
    "between_plate_ramekin", "next_to_ramekin", "table_center", "on_cookie_box",
    "on_cabinet", "on_ramekin", "next_to_cookie_box", "on_stove", "next_to_plate",
    "in_drawer");
const OBJECT: &[(&str, &str)] = embed!("object":
    "alphabet_soup", "cream_cheese", "salad_dressing", "bbq_sauce", "ketchup",
    "tomato_sauce", "butter", "milk", "chocolate_pudding", "orange_juice");
const GOAL: &[(&str, &str)] = embed!("goal":
    "open_drawer", "bowl_on_stove", "bowl_on_cabinet", "open_drawer_bowl_inside",
    "cheese_in_bowl", "turn_on_stove", "bowl_on_plate", "bottle_on_cabinet",
    "cheese_left_of_bowl", "close_drawer");
/// One backward task per goal task, in `GOAL`'s order: it undoes the forward goal in the same
/// scene, so the two can alternate without a reset.
const GOAL_BACKWARD: &[(&str, &str)] = embed!("goal_backward":
    "open_drawer", "bowl_on_stove", "bowl_on_cabinet", "open_drawer_bowl_inside",
    "cheese_in_bowl", "turn_on_stove", "bowl_on_plate", "bottle_on_cabinet",
    "cheese_left_of_bowl", "close_drawer");

impl Suite {
    pub const ALL: [Suite; 3] = [Suite::Spatial, Suite::Object, Suite::Goal];

    pub fn parse(s: &str) -> Result<Suite, SuiteError> {
        match s {
            "spatial" | "libero_spatial" => Ok(Suite::Spatial),
            "object" | "libero_object" => Ok(Suite::Object),
            "goal" | "libero_goal" => Ok(Suite::Goal),
            _ => Err(SuiteError::Unknown(s.to_string())),
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Suite::Spatial => "spatial",
            Suite::Object => "object",
            Suite::Goal => "goal",
        }
    }

    /// The embedded task files: (path, text).
    pub fn files(self) -> &'static [(&'static str, &'static str)] {
        match self {
            Suite::Spatial => SPATIAL,
            Suite::Object => OBJECT,
            Suite::Goal => GOAL,
        }
    }

    /// The embedded backward task files, one per task in `files()`'s order (empty for suites
    /// without backward tasks: only `goal` has them).
    pub fn backward_files(self) -> &'static [(&'static str, &'static str)] {
        match self {
            Suite::Goal => GOAL_BACKWARD,
            Suite::Spatial | Suite::Object => &[],
        }
    }
}

/// Parses every task of an embedded suite.
pub fn load_suite(suite: Suite) -> Result<Vec<Task>, TaskError> {
    suite
        .files()
        .iter()
        .map(|(path, src)| Task::parse(path, src))
        .collect()
}

/// The backward tasks of `suite` as (forward task id, backward task), in `load_suite`'s
/// order; empty for suites without backward tasks. Each backward task has the id
/// `goal_back_<forward file name>` and exactly its forward task's objects and placements, so
/// `TabletopEnv::switch_task` can continue from the forward task's end state.
pub fn load_backward(suite: Suite) -> Result<Vec<(String, Task)>, TaskError> {
    let back = suite.backward_files();
    if back.is_empty() {
        return Ok(Vec::new());
    }
    let forward = load_suite(suite)?;
    let mut out = Vec::with_capacity(back.len());
    for (fwd, (path, src)) in forward.into_iter().zip(back) {
        let task = Task::parse(path, src)?;
        let err = |message: String| TaskError {
            file: path.to_string(),
            line: 1,
            message,
        };
        let stem = fwd.id.strip_prefix("goal_").unwrap_or(&fwd.id);
        if task.id != format!("goal_back_{stem}") {
            return Err(err(format!(
                "backward task `{}` does not match forward task `{}`",
                task.id, fwd.id
            )));
        }
        let same = task.objects.len() == fwd.objects.len()
            && task.objects.iter().zip(&fwd.objects).all(|(a, b)| {
                (&a.name, a.kind, a.size, a.color, &a.placement, a.joint)
                    == (&b.name, b.kind, b.size, b.color, &b.placement, b.joint)
            });
        if !same {
            return Err(err(format!(
                "objects and placements differ from `{}`'s ({})",
                fwd.id, fwd.file
            )));
        }
        out.push((fwd.id, task));
    }
    Ok(out)
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct TaskReport {
    pub task: String,
    pub instruction: String,
    pub episodes: usize,
    pub successes: usize,
    pub success_rate: f64,
    pub mean_steps: f64,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct SuiteReport {
    pub suite: String,
    pub policy: String,
    pub seed: u64,
    pub render: bool,
    pub episodes_per_task: usize,
    pub tasks: Vec<TaskReport>,
    pub episodes: usize,
    pub successes: usize,
    pub success_rate: f64,
    pub steps: u64,
    pub wall_s: f64,
    pub steps_per_s: f64,
    /// Hand motions refused on contact, summed over episodes.
    pub refused_contacts: u64,
    /// Deepest interpenetration seen in any step (metres).
    pub max_penetration: f64,
    /// Violations found by robot's independent `LimitMonitor` on the emitted joint stream.
    pub limit_violations: u64,
    pub ik_failures: u64,
}

/// Runs the scripted expert on `episodes` episodes of every task of `suite` (episode `k` uses
/// init state `k mod 50` of `seed` and manner variant `k`), rendering both cameras each step
/// when `render` is set.
pub fn run_suite(
    suite: Suite,
    episodes: usize,
    seed: u64,
    render: bool,
) -> Result<SuiteReport, SuiteError> {
    let tasks = load_suite(suite)?;
    run_tasks(suite.name(), &tasks, episodes, seed, render)
}

/// [`run_suite`] over any list of tasks (e.g. task files loaded from disk).
pub fn run_tasks(
    name: &str,
    tasks: &[Task],
    episodes: usize,
    seed: u64,
    render: bool,
) -> Result<SuiteReport, SuiteError> {
    if episodes == 0 {
        return Err(SuiteError::NoEpisodes);
    }
    let start = Instant::now();
    let mut report = SuiteReport {
        suite: name.to_string(),
        policy: "scripted".into(),
        seed,
        render,
        episodes_per_task: episodes,
        tasks: Vec::new(),
        episodes: 0,
        successes: 0,
        success_rate: 0.0,
        steps: 0,
        wall_s: 0.0,
        steps_per_s: 0.0,
        refused_contacts: 0,
        max_penetration: 0.0,
        limit_violations: 0,
        ik_failures: 0,
    };
    let cams = render.then(CameraConfig::default);
    for task in tasks {
        let mut successes = 0;
        let mut steps = 0u64;
        for k in 0..episodes {
            let mut env = TabletopEnv::new(task, seed, k, cams)?;
            let mut expert = Expert::new(&env);
            let mut monitor = LimitMonitor::new(env.safety_config().clone(), &env.joints());
            while !env.done() {
                if render {
                    let _ = env.observe();
                }
                let a = expert.act(&env);
                env.step(&a);
                monitor.check(&env.joints());
            }
            let st = env.stats();
            successes += env.success() as usize;
            steps += st.steps;
            report.refused_contacts += st.refused_contacts;
            report.ik_failures += st.ik_failures;
            report.max_penetration = report.max_penetration.max(st.max_penetration);
            report.limit_violations += monitor.counts().total();
        }
        report.episodes += episodes;
        report.successes += successes;
        report.steps += steps;
        report.tasks.push(TaskReport {
            task: task.id.clone(),
            instruction: task.instruction.clone(),
            episodes,
            successes,
            success_rate: successes as f64 / episodes as f64,
            mean_steps: steps as f64 / episodes as f64,
        });
    }
    report.success_rate = report.successes as f64 / report.episodes as f64;
    report.wall_s = start.elapsed().as_secs_f64();
    report.steps_per_s = report.steps as f64 / report.wall_s.max(1e-9);
    Ok(report)
}

/// Simulator throughput on one thread.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Throughput {
    pub render: bool,
    pub width: u32,
    pub height: u32,
    pub steps: u64,
    pub wall_s: f64,
    pub steps_per_s: f64,
    /// Against real LIBERO's ~0.35 s/step with two 256 px cameras on this machine (REFERENCE
    /// §10): how many of our steps fit in one of its steps.
    pub speedup_vs_libero: f64,
}

/// Real LIBERO's cost per step with two 256 px cameras on these CPUs (REFERENCE §10).
pub const LIBERO_S_PER_STEP: f64 = 0.35;

/// Steps the scripted expert through the spatial suite's tasks for at least `steps` steps,
/// observing (and rendering both cameras at `cameras` size, when given) every step.
pub fn benchmark(steps: u64, cameras: Option<CameraConfig>) -> Result<Throughput, SuiteError> {
    let tasks = load_suite(Suite::Spatial)?;
    let start = Instant::now();
    let mut done = 0u64;
    let mut k = 0usize;
    while done < steps {
        let task = &tasks[k % tasks.len()];
        let mut env = TabletopEnv::new(task, 7, k / tasks.len(), cameras)?.without_audit();
        let mut expert = Expert::new(&env);
        while !env.done() && done < steps {
            let obs = env.observe();
            std::hint::black_box(&obs);
            let a = expert.act(&env);
            env.step(&a);
            done += 1;
        }
        k += 1;
    }
    let wall_s = start.elapsed().as_secs_f64();
    let sps = done as f64 / wall_s.max(1e-9);
    let c = cameras.unwrap_or(CameraConfig {
        width: 0,
        height: 0,
    });
    Ok(Throughput {
        render: cameras.is_some(),
        width: c.width,
        height: c.height,
        steps: done,
        wall_s,
        steps_per_s: sps,
        speedup_vs_libero: sps * LIBERO_S_PER_STEP,
    })
}
