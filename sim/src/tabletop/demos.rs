//! Demonstration datasets: one safetensors shard per episode plus `meta.json` (format in
//! sim/README.md).

use super::env::{CameraConfig, TabletopEnv, CONTROL_HZ};
use super::expert::Expert;
use super::suites::{load_suite, Suite, SuiteError};
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
    std::fs::create_dir_all(out_dir).map_err(|e| io(out_dir, e))?;
    let mut all_actions: Vec<[f64; 7]> = Vec::new();
    let mut metas = Vec::new();
    let (w, h) = (cameras.width as usize, cameras.height as usize);
    for (ti, task) in tasks.iter().enumerate() {
        for k in 0..episodes {
            let mut env =
                TabletopEnv::new(task, seed, k, Some(cameras)).map_err(SuiteError::from)?;
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
            info.insert("task".into(), task.id.clone());
            info.insert("instruction".into(), instruction.clone());
            info.insert("success".into(), success.to_string());
            let bytes = safetensors::serialize(tensors, Some(info))
                .map_err(|e| DemoError::Encode(e.to_string()))?;
            let path = out_dir.join(&file);
            write_atomic(&path, &bytes)?;
            metas.push(EpisodeMeta {
                file,
                task_index: ti,
                task: task.id.clone(),
                instruction,
                steps: t,
                success,
            });
        }
    }
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
        tasks: tasks.iter().map(|t| t.id.clone()).collect(),
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

/// Write to a temporary name, then rename, so a killed run never leaves a half shard.
fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), DemoError> {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, bytes).map_err(|e| io(&tmp, e))?;
    std::fs::rename(&tmp, path).map_err(|e| io(path, e))
}
