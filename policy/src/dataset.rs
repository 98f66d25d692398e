//! Tabletop demonstration data sets (`rudder demos`, format version 1 in sim/README.md): one
//! safetensors shard per episode (`agentview_rgb`, `wrist_rgb` as U8 `[T, H, W, 3]`, `state`
//! F32 `[T, 8]`, `actions` F32 `[T, 7]`, `instruction` U8) and `meta.json`.
//!
//! Loaded whole into memory as bytes (images stay U8): a sample is one `(episode, t)` pair,
//! whose targets are the `horizon` actions from `t` on, the last action repeated past the end
//! of the episode (as LeRobot's padding does, without a pad mask).

use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor};
use serde::{Deserialize, Serialize};

use crate::normalize::MeanStd;
use crate::FlowError;

pub const STATE_DIM: usize = 8;
pub const ACTION_DIM: usize = 7;

#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct EpisodeInfo {
    pub file: String,
    pub task_index: usize,
    #[serde(default)]
    pub task: String,
    pub instruction: String,
    pub steps: usize,
    pub success: bool,
}

/// The parts of `meta.json` training needs.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct DemoMeta {
    pub format_version: u32,
    pub suite: String,
    pub seed: u64,
    #[serde(default)]
    pub tasks: Vec<String>,
    pub episodes: Vec<EpisodeInfo>,
    #[serde(default)]
    pub action_q01: Vec<f64>,
    #[serde(default)]
    pub action_q99: Vec<f64>,
}

impl DemoMeta {
    /// Episodes per task (the demo writer uses episode indices `0..n` for every task, so the
    /// init states `0..n` are the training ones).
    pub fn episodes_per_task(&self) -> usize {
        let tasks = self.tasks.len().max(1);
        self.episodes.len().div_ceil(tasks)
    }
}

/// One episode in memory.
#[derive(Debug, Clone)]
pub struct Episode {
    pub task_index: usize,
    pub instruction: String,
    pub steps: usize,
    pub height: usize,
    pub width: usize,
    /// `[T, H, W, 3]` packed.
    pub agentview: Vec<u8>,
    pub wrist: Vec<u8>,
    /// `[T, 8]`.
    pub state: Vec<f32>,
    /// `[T, 7]`.
    pub actions: Vec<f32>,
}

impl Episode {
    pub fn image(&self, camera: usize, t: usize) -> &[u8] {
        let n = self.height * self.width * 3;
        let src = if camera == 0 {
            &self.agentview
        } else {
            &self.wrist
        };
        &src[t * n..(t + 1) * n]
    }

    pub fn state_at(&self, t: usize) -> &[f32] {
        &self.state[t * STATE_DIM..(t + 1) * STATE_DIM]
    }

    /// The action at `t`, the last one for `t` past the end.
    pub fn action_at(&self, t: usize) -> &[f32] {
        let t = t.min(self.steps - 1);
        &self.actions[t * ACTION_DIM..(t + 1) * ACTION_DIM]
    }
}

#[derive(Debug, Clone)]
pub struct DemoDataset {
    pub dir: PathBuf,
    pub meta: DemoMeta,
    pub episodes: Vec<Episode>,
    /// Every `(episode, t)` pair, in order.
    pub samples: Vec<(u32, u32)>,
}

/// Mean and standard deviation of the state and actions, as `normalization.json` stores them.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Stats {
    pub state: StatPair,
    pub actions: StatPair,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StatPair {
    pub mean: Vec<f64>,
    pub std: Vec<f64>,
}

impl StatPair {
    pub fn mean_std(&self) -> MeanStd {
        MeanStd {
            mean: self.mean.clone(),
            std: self.std.clone(),
        }
    }
}

fn file_err(path: &Path, problem: impl Into<String>) -> FlowError {
    FlowError::File {
        path: path.to_path_buf(),
        problem: problem.into(),
    }
}

fn tensor<'a>(
    map: &'a std::collections::HashMap<String, Tensor>,
    path: &Path,
    name: &str,
) -> Result<&'a Tensor, FlowError> {
    map.get(name)
        .ok_or_else(|| file_err(path, format!("no tensor `{name}`")))
}

impl DemoDataset {
    /// Reads `dir/meta.json` and every shard it lists. `successful_only` skips episodes whose
    /// expert failed.
    pub fn load(dir: &Path, successful_only: bool) -> Result<Self, FlowError> {
        let mp = dir.join("meta.json");
        let text = std::fs::read_to_string(&mp).map_err(|e| file_err(&mp, e.to_string()))?;
        let meta: DemoMeta = serde_json::from_str(&text)
            .map_err(|e| file_err(&mp, format!("not a demo meta.json: {e}")))?;
        if meta.format_version != 1 {
            return Err(file_err(
                &mp,
                format!(
                    "format_version {} (this reader knows 1)",
                    meta.format_version
                ),
            ));
        }
        let dev = Device::Cpu;
        let mut episodes = Vec::new();
        let mut samples = Vec::new();
        let mut size: Option<(usize, usize)> = None;
        for info in &meta.episodes {
            if successful_only && !info.success {
                continue;
            }
            let path = dir.join(&info.file);
            let map = candle_core::safetensors::load(&path, &dev)
                .map_err(|e| file_err(&path, e.to_string()))?;
            let bad = |what: String| file_err(&path, what);
            let agent = tensor(&map, &path, "agentview_rgb")?;
            let wrist = tensor(&map, &path, "wrist_rgb")?;
            let state = tensor(&map, &path, "state")?;
            let actions = tensor(&map, &path, "actions")?;
            let (t, h, w, c) = agent
                .dims4()
                .map_err(|_| bad(format!("agentview_rgb shape {:?}", agent.dims())))?;
            if c != 3 || agent.dtype() != DType::U8 || wrist.dims() != agent.dims() {
                return Err(bad(format!(
                    "images must be U8 [T, H, W, 3] of one shape, got {:?} and {:?}",
                    agent.dims(),
                    wrist.dims()
                )));
            }
            if state.dims() != [t, STATE_DIM] || actions.dims() != [t, ACTION_DIM] {
                return Err(bad(format!(
                    "state {:?} / actions {:?} do not match {t} steps of 8 / 7 values",
                    state.dims(),
                    actions.dims()
                )));
            }
            if t == 0 {
                continue;
            }
            match size {
                None => size = Some((h, w)),
                Some(s) if s != (h, w) => {
                    return Err(bad(format!(
                        "images {h}x{w}, earlier episodes {}x{}",
                        s.0, s.1
                    )))
                }
                _ => {}
            }
            let conv = |e: candle_core::Error| bad(e.to_string());
            let flat_u8 = |x: &Tensor| x.flatten_all().and_then(|x| x.to_vec1::<u8>());
            let flat_f32 = |x: &Tensor| {
                x.to_dtype(DType::F32)
                    .and_then(|x| x.flatten_all())
                    .and_then(|x| x.to_vec1::<f32>())
            };
            let ep = Episode {
                task_index: info.task_index,
                instruction: info.instruction.clone(),
                steps: t,
                height: h,
                width: w,
                agentview: flat_u8(agent).map_err(conv)?,
                wrist: flat_u8(wrist).map_err(conv)?,
                state: flat_f32(state).map_err(conv)?,
                actions: flat_f32(actions).map_err(conv)?,
            };
            if ep
                .state
                .iter()
                .chain(ep.actions.iter())
                .any(|v| !v.is_finite())
            {
                return Err(bad("non-finite state or action".into()));
            }
            let e = episodes.len() as u32;
            samples.extend((0..t as u32).map(|i| (e, i)));
            episodes.push(ep);
        }
        if samples.is_empty() {
            return Err(file_err(&mp, "no usable episode"));
        }
        Ok(Self {
            dir: dir.to_path_buf(),
            meta,
            episodes,
            samples,
        })
    }

    pub fn image_size(&self) -> (usize, usize) {
        (self.episodes[0].height, self.episodes[0].width)
    }

    /// Per-dimension mean and standard deviation over every frame, with the standard deviation
    /// floored (`1e-3` for the state, `1e-2` for actions) so constant dimensions stay finite.
    pub fn stats(&self) -> Stats {
        fn pair<'a>(
            rows: impl Iterator<Item = &'a [f32]> + Clone,
            dim: usize,
            floor: f64,
        ) -> StatPair {
            let mut n = 0f64;
            let mut sum = vec![0f64; dim];
            for r in rows.clone() {
                n += 1.0;
                for (s, v) in sum.iter_mut().zip(r) {
                    *s += *v as f64;
                }
            }
            let mean: Vec<f64> = sum.iter().map(|s| s / n.max(1.0)).collect();
            let mut var = vec![0f64; dim];
            for r in rows {
                for ((s, v), m) in var.iter_mut().zip(r).zip(&mean) {
                    *s += (*v as f64 - m).powi(2);
                }
            }
            let std = var
                .iter()
                .map(|s| (s / n.max(1.0)).sqrt().max(floor))
                .collect();
            StatPair { mean, std }
        }
        let states = self
            .episodes
            .iter()
            .flat_map(|e| e.state.chunks_exact(STATE_DIM));
        let actions = self
            .episodes
            .iter()
            .flat_map(|e| e.actions.chunks_exact(ACTION_DIM));
        Stats {
            state: pair(states, STATE_DIM, 1e-3),
            actions: pair(actions, ACTION_DIM, 1e-2),
        }
    }
}
