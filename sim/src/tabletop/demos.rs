//! Demonstration datasets: one safetensors shard per episode plus `meta.json` (format in
//! sim/README.md).

use super::env::{CameraConfig, TabletopEnv, CONTROL_HZ};
use super::expert::Expert;
use super::suites::{load_backward, load_suite, Suite, SuiteError};
use super::tasks::Task;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use safetensors::tensor::{Dtype, TensorView};
use serde::Serialize;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use thiserror::Error;

pub const DEMO_FORMAT_VERSION: u32 = 1;

#[derive(Debug, Error)]
pub enum DemoError {
    #[error(transparent)]
    Suite(#[from] SuiteError),
    #[error("{path}: {reason}")]
    Io { path: PathBuf, reason: String },
    #[error("safetensors: {0}")]
    Encode(String),
    #[error("{0}")]
    Options(String),
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct EpisodeMeta {
    pub file: String,
    pub task_index: usize,
    pub task: String,
    pub instruction: String,
    pub steps: usize,
    pub success: bool,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct CameraMeta {
    pub name: String,
    pub width: u32,
    pub height: u32,
    pub channels: u32,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct DemoSummary {
    pub format_version: u32,
    pub suite: String,
    pub seed: u64,
    pub control_hz: f64,
    pub action_dim: usize,
    pub state_dim: usize,
    pub action_space: String,
    pub cameras: Vec<CameraMeta>,
    pub tasks: Vec<String>,
    pub episodes: Vec<EpisodeMeta>,
    /// Per-dimension 1st and 99th percentiles of the actions (OpenVLA-style normalisation).
    pub action_q01: Vec<f64>,
    pub action_q99: Vec<f64>,
    pub action_mean: Vec<f64>,
    /// Standard deviation of the noise added to the executed translation (action units; 0:
    /// none). The recorded actions are always the expert's own.
    pub action_noise: f64,
    pub action_std: Vec<f64>,
    pub success_rate: f64,
}

fn io(path: &Path, e: impl std::fmt::Display) -> DemoError {
    DemoError::Io {
        path: path.to_path_buf(),
        reason: e.to_string(),
    }
}

fn bytes_f32(v: &[f32]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_le_bytes()).collect()
}

/// Quantile of sorted data by nearest rank.
fn quantile(sorted: &[f64], q: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let i = ((sorted.len() - 1) as f64 * q).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

/// How demos are recorded beyond suite, count, seed and cameras.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct DemoOptions {
    /// DART-style noise injection (Laskey et al. 2017): while the expert moves, Gaussian
    /// noise of this standard deviation (action units, 1 = 5 cm; scaled down with the expert's
    /// speed below cruise) is added to the translation the arm executes, and the expert's clean action is recorded. The data then show how the
    /// expert corrects the small position errors a learned policy makes, which pure expert
    /// rollouts never visit.
    pub action_noise: f64,
    /// Also record each task's backward task (goal suite only; reset-free RL): episode `k` of
    /// the backward task starts from the end state of the forward expert's successful episode
    /// `k`. Backward tasks follow the forward ones in `meta.json`'s `tasks` (indices n..2n).
    pub with_backward: bool,
}

/// Writes `episodes` expert episodes of every task of `suite` to `out_dir` (created), with
/// both cameras at `cameras`, init states from `seed`. Every episode is kept, failed ones
/// flagged `success = 0`.
pub fn write_demos(
    suite: Suite,
    episodes: usize,
    out_dir: &Path,
    seed: u64,
    cameras: CameraConfig,
) -> Result<DemoSummary, DemoError> {
    write_demos_with(
        suite,
        episodes,
        out_dir,
        seed,
        cameras,
        DemoOptions::default(),
    )
}

/// The expert's translation action at its base cruise speed (0.3 m/s at 20 Hz = 1.5 cm).
const CRUISE_ACTION: f64 = 0.3;

/// Standard normal draw (Box-Muller).
fn normal(rng: &mut StdRng) -> f64 {
    let u1: f64 = rng.random::<f64>().max(1e-300);
    let u2: f64 = rng.random::<f64>();
    (-2.0 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos()
}

/// [`write_demos`] with [`DemoOptions`].
pub fn write_demos_with(
    suite: Suite,
    episodes: usize,
    out_dir: &Path,
    seed: u64,
    cameras: CameraConfig,
    opts: DemoOptions,
) -> Result<DemoSummary, DemoError> {
    if !(opts.action_noise.is_finite() && (0.0..=1.0).contains(&opts.action_noise)) {
        return Err(DemoError::Options(format!(
            "action noise {} must be in 0..=1 (action units)",
            opts.action_noise
        )));
    }
    if episodes == 0 {
        return Err(SuiteError::NoEpisodes.into());
    }
    let tasks = load_suite(suite).map_err(SuiteError::from)?;
    let backward = if opts.with_backward {
        let b = load_backward(suite).map_err(SuiteError::from)?;
        if b.is_empty() {
            return Err(DemoError::Options(format!(
                "backward tasks exist for the goal suite only, not `{}`",
                suite.name()
            )));
        }
        b
    } else {
        Vec::new()
    };
    std::fs::create_dir_all(out_dir).map_err(|e| io(out_dir, e))?;
    let mut all_actions: Vec<[f64; 7]> = Vec::new();
    let (mut metas, mut back_metas) = (Vec::new(), Vec::new());
    let n = tasks.len();
    for (ti, task) in tasks.iter().enumerate() {
        for k in 0..episodes {
            let env = TabletopEnv::new(task, seed, k, Some(cameras)).map_err(SuiteError::from)?;
            let (env, meta) = record(env, ti, k, seed, cameras, opts, out_dir, &mut all_actions)?;
            metas.push(meta);
            let Some((_, back)) = backward.get(ti) else {
                continue;
            };
            // The backward episode starts where a successful forward episode of the same init
            // state ended; a noisy forward failure is replaced by the clean expert's run.
            let start = if env.success() {
                Some(env)
            } else {
                forward_expert_end(task, seed, k, cameras)?
            };
            let Some(start) = start else {
                continue;
            };
            let env = TabletopEnv::continuing(start, back, &back.instruction_for(k))
                .map_err(SuiteError::from)?;
            let (_, meta) = record(
                env,
                n + ti,
                k,
                seed,
                cameras,
                opts,
                out_dir,
                &mut all_actions,
            )?;
            back_metas.push(meta);
        }
    }
    metas.extend(back_metas);
    let mut q01 = Vec::new();
    let mut q99 = Vec::new();
    let mut mean = Vec::new();
    let mut std = Vec::new();
    for d in 0..7 {
        let mut v: Vec<f64> = all_actions.iter().map(|a| a[d]).collect();
        v.sort_by(f64::total_cmp);
        q01.push(quantile(&v, 0.01));
        q99.push(quantile(&v, 0.99));
        let n = v.len().max(1) as f64;
        let m = v.iter().sum::<f64>() / n;
        mean.push(m);
        std.push((v.iter().map(|x| (x - m) * (x - m)).sum::<f64>() / n).sqrt());
    }
    let successes = metas.iter().filter(|m| m.success).count();
    let summary = DemoSummary {
        format_version: DEMO_FORMAT_VERSION,
        suite: suite.name().into(),
        seed,
        control_hz: CONTROL_HZ,
        action_dim: 7,
        state_dim: 8,
        action_space: "libero_eef_delta7: dpos*0.05 m, daxisangle*0.5 rad, gripper (+1 close)"
            .into(),
        cameras: ["agentview", "wrist"]
            .iter()
            .map(|n| CameraMeta {
                name: n.to_string(),
                width: cameras.width,
                height: cameras.height,
                channels: 3,
            })
            .collect(),
        tasks: tasks
            .iter()
            .chain(backward.iter().map(|(_, b)| b))
            .map(|t| t.id.clone())
            .collect(),
        success_rate: successes as f64 / metas.len().max(1) as f64,
        episodes: metas,
        action_q01: q01,
        action_q99: q99,
        action_mean: mean,
        action_std: std,
        action_noise: opts.action_noise,
    };
    let json = serde_json::to_vec_pretty(&summary).map_err(|e| DemoError::Encode(e.to_string()))?;
    write_atomic(&out_dir.join("meta.json"), &json)?;
    Ok(summary)
}

/// The forward expert's episode `k` of `task` without noise, run to its end: its final env
/// when it succeeded (where the task's backward episode starts).
pub fn forward_expert_end(
    task: &Task,
    seed: u64,
    k: usize,
    cameras: CameraConfig,
) -> Result<Option<TabletopEnv>, DemoError> {
    let mut env = TabletopEnv::new(task, seed, k, Some(cameras)).map_err(SuiteError::from)?;
    let mut expert = Expert::new(&env);
    while !env.done() {
        let a = expert.act(&env);
        env.step(&a);
    }
    Ok(env.success().then_some(env))
}

/// Records the expert on `env` until it is done (task index `ti`, episode `k`), writes the
/// shard and returns the final env with the episode's entry for `meta.json`.
#[allow(clippy::too_many_arguments)]
fn record(
    mut env: TabletopEnv,
    ti: usize,
    k: usize,
    seed: u64,
    cameras: CameraConfig,
    opts: DemoOptions,
    out_dir: &Path,
    all_actions: &mut Vec<[f64; 7]>,
) -> Result<(TabletopEnv, EpisodeMeta), DemoError> {
    let (w, h) = (cameras.width as usize, cameras.height as usize);
    let mut expert = Expert::new(&env);
    let mut noise_rng = StdRng::seed_from_u64(
        seed ^ ((ti as u64) << 32 | k as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15),
    );
    let (mut agent, mut wrist) = (Vec::new(), Vec::new());
    let (mut states, mut actions) = (Vec::<f32>::new(), Vec::<f32>::new());
    let mut t = 0usize;
    while !env.done() {
        let obs = env.observe();
        if let (Some(a), Some(wr)) = (&obs.agentview, &obs.wrist) {
            agent.extend_from_slice(&a.data);
            wrist.extend_from_slice(&wr.data);
        }
        states.extend(obs.state.iter().map(|x| *x as f32));
        let act = expert.act(&env);
        actions.extend(act.iter().map(|x| *x as f32));
        all_actions.push(act);
        let mut executed = act;
        // Scaled by how fast the expert translates (full at cruise speed): fine
        // approaches, grasps and releases converge instead of being knocked off their
        // few-millimetre tolerances.
        let speed = act[..3].iter().map(|v| v * v).sum::<f64>().sqrt();
        let sigma = opts.action_noise * (speed / CRUISE_ACTION).min(1.0);
        if sigma > 0.0 {
            for v in &mut executed[..3] {
                *v += sigma * normal(&mut noise_rng);
            }
        }
        env.step(&executed);
        t += 1;
    }
    let success = env.success();
    let instruction = env.instruction().to_string();
    let task_id = env.task().id.clone();
    let file = format!("episode_{ti:02}_{k:04}.safetensors");
    let tid = (ti as i64).to_le_bytes();
    let succ = [success as u8];
    let views = [
        ("agentview_rgb", Dtype::U8, vec![t, h, w, 3], agent),
        ("wrist_rgb", Dtype::U8, vec![t, h, w, 3], wrist),
        ("state", Dtype::F32, vec![t, 8], bytes_f32(&states)),
        ("actions", Dtype::F32, vec![t, 7], bytes_f32(&actions)),
        (
            "instruction",
            Dtype::U8,
            vec![instruction.len()],
            instruction.as_bytes().to_vec(),
        ),
        ("task_index", Dtype::I64, vec![1], tid.to_vec()),
        ("success", Dtype::U8, vec![1], succ.to_vec()),
    ];
    let tensors: Vec<(String, TensorView)> = views
        .iter()
        .map(|(n, d, s, b)| {
            TensorView::new(*d, s.clone(), b)
                .map(|v| (n.to_string(), v))
                .map_err(|e| DemoError::Encode(format!("{n}: {e}")))
        })
        .collect::<Result<_, _>>()?;
    let mut info = HashMap::new();
    info.insert("format_version".into(), DEMO_FORMAT_VERSION.to_string());
    info.insert("task".into(), task_id.clone());
    info.insert("instruction".into(), instruction.clone());
    info.insert("success".into(), success.to_string());
    let bytes = safetensors::serialize(tensors, Some(info))
        .map_err(|e| DemoError::Encode(e.to_string()))?;
    write_atomic(&out_dir.join(&file), &bytes)?;
    let meta = EpisodeMeta {
        file,
        task_index: ti,
        task: task_id,
        instruction,
        steps: t,
        success,
    };
    Ok((env, meta))
}

/// Write to a temporary name, then rename, so a killed run never leaves a half shard.
fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), DemoError> {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, bytes).map_err(|e| io(&tmp, e))?;
    std::fs::rename(&tmp, path).map_err(|e| io(path, e))
}
