//! Training the diffusion planner on driving demos (`rudder demos driving`) with the shared
//! trainer: x0-prediction on the VP schedule (REFERENCE §3a), each scene encoded once per step
//! and its future noised at `noise_draws` different times (the decoder is the cheap half, so
//! more draws per scene are nearly free), masked where the log ends, an EMA of the weights for
//! sampling.
//!
//! A checkpoint `OUT/checkpoint-N` holds `planner.json` (network, scene sizes, schedule),
//! `model.safetensors` (the EMA weights: what [`super::DiffusionPlanner`] loads),
//! `normalization.json`, `training.json` (data, step, loss) and, for resuming,
//! `weights.safetensors` (the raw weights), `ema.safetensors`, `optimizer.safetensors` and
//! `trainer_state.json`.

use super::dataset::{self, DrivingMeta};
use super::normalize::{select_scenes, PlannerNormalization};
use super::scene::SceneConfig;
use crate::error::FlowError;
use candle_core::{DType, Device, Tensor, Var};
use rudder_tune::candle_nn::{VarBuilder, VarMap};
use rudder_tune::checkpoint::{save_safetensors_atomic, write_atomic};
use rudder_tune::diffusion::{BetaSchedule, VpSchedule};
use rudder_tune::models::diffusion_planner::{self as net, Model};
use rudder_tune::train::adamw::AdamWConfig;
use rudder_tune::train::{
    init_from_scratch, Family, Gradients, MicroBatch, Rng, Snapshot, StepStats, Trainer,
    TrainerConfig,
};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use std::collections::HashMap;
use std::path::{Path, PathBuf};

/// DDPM's linear betas over 1000 steps: the schedule the planner trains and samples on.
pub const TRAIN_TIMESTEPS: usize = 1000;
pub const BETA_START: f64 = 1e-4;
pub const BETA_END: f64 = 0.02;

/// The schedule of [`TRAIN_TIMESTEPS`] linear betas.
pub fn schedule() -> Result<VpSchedule, FlowError> {
    Ok(VpSchedule::new(
        TRAIN_TIMESTEPS,
        BetaSchedule::Linear {
            start: BETA_START,
            end: BETA_END,
        },
    )?)
}

/// The network's time input for training step `t` (0-based): (t + 1) / T, in (0, 1].
pub fn time_input(t: usize) -> f32 {
    (t + 1) as f32 / TRAIN_TIMESTEPS as f32
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PlannerTrainConfig {
    pub hidden: usize,
    pub heads: usize,
    pub encoder_layers: usize,
    pub decoder_layers: usize,
    /// Future steps per decoder token.
    pub chunk: usize,
    pub steps: u64,
    pub batch_size: usize,
    pub lr: f64,
    pub weight_decay: f64,
    pub warmup_steps: u64,
    pub max_grad_norm: Option<f64>,
    pub seed: u64,
    pub ema_decay: f64,
    /// Noise times drawn per scene and step.
    pub noise_draws: usize,
}

impl Default for PlannerTrainConfig {
    fn default() -> Self {
        PlannerTrainConfig {
            hidden: 192,
            heads: 6,
            encoder_layers: 3,
            decoder_layers: 3,
            chunk: 10,
            steps: 4000,
            batch_size: 32,
            lr: 5e-4,
            weight_decay: 1e-4,
            warmup_steps: 200,
            max_grad_norm: Some(5.0),
            seed: 0,
            ema_decay: 0.999,
            noise_draws: 4,
        }
    }
}

impl PlannerTrainConfig {
    /// The network for scenes of `scene`'s sizes.
    pub fn model(&self, scene: &SceneConfig) -> net::Config {
        net::Config {
            hidden: self.hidden,
            heads: self.heads,
            encoder_layers: self.encoder_layers,
            decoder_layers: self.decoder_layers,
            chunk: self.chunk,
            future: scene.future,
            neighbours: scene.neighbours,
            history: scene.history,
            static_objects: scene.static_objects,
            lanes: scene.lanes,
            route_lanes: scene.route_lanes,
            lane_points: scene.lane_points,
        }
    }

    /// Whether `model`'s scene sizes are `scene`'s.
    pub fn fits_scene(model: &net::Config, scene: &SceneConfig) -> bool {
        let want = PlannerTrainConfig {
            hidden: model.hidden,
            heads: model.heads,
            encoder_layers: model.encoder_layers,
            decoder_layers: model.decoder_layers,
            chunk: model.chunk,
            ..Default::default()
        }
        .model(scene);
        want == *model
    }

    /// Ranges, checked before anything is built; the message names the flag.
    pub fn validate(&self) -> Result<(), FlowError> {
        let bad = |flag: &str, why: String| Err(FlowError::input(flag, why));
        if self.steps == 0 {
            return bad("--steps", "must be at least 1".into());
        }
        if !(1..=4096).contains(&self.batch_size) {
            return bad(
                "--batch-size",
                format!("{}: expected 1..=4096", self.batch_size),
            );
        }
        if !(1..=64).contains(&self.noise_draws) {
            return bad(
                "--noise-draws",
                format!("{}: expected 1..=64", self.noise_draws),
            );
        }
        if !(self.lr.is_finite() && self.lr > 0.0 && self.lr <= 1.0) {
            return bad("--lr", format!("{}: expected a number in (0, 1]", self.lr));
        }
        if !(self.weight_decay.is_finite() && (0.0..=1.0).contains(&self.weight_decay)) {
            return bad(
                "--weight-decay",
                format!("{}: expected 0..=1", self.weight_decay),
            );
        }
        if !(self.ema_decay.is_finite() && (0.0..1.0).contains(&self.ema_decay)) {
            return bad("--ema", format!("{}: expected [0, 1)", self.ema_decay));
        }
        if let Some(g) = self.max_grad_norm {
            if !(g.is_finite() && g > 0.0) {
                return bad("--max-grad-norm", format!("{g}: expected > 0"));
            }
        }
        if !(1..=4096).contains(&self.hidden) {
            return bad("--hidden", format!("{}: expected 1..=4096", self.hidden));
        }
        if self.encoder_layers > 64 || self.decoder_layers > 64 {
            return bad("--layers", "at most 64 encoder and decoder layers".into());
        }
        Ok(())
    }
}

/// `planner.json`: what a checkpoint needs to rebuild the network and its sampler.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PlannerFile {
    pub model: net::Config,
    pub scene: SceneConfig,
    pub train_timesteps: usize,
    pub beta_start: f64,
    pub beta_end: f64,
    /// What the network predicts ("sample": the clean future x0).
    pub prediction: String,
}

/// `training.json`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PlannerTrainingInfo {
    pub data: PathBuf,
    pub source: String,
    pub samples: usize,
    pub config: PlannerTrainConfig,
    pub step: u64,
    pub loss: Option<f64>,
}

/// A loaded demo set: its meta and every array, samples first.
pub struct PlannerData {
    pub dir: PathBuf,
    pub meta: DrivingMeta,
    pub arrays: HashMap<String, Tensor>,
}

impl PlannerData {
    pub fn load(dir: &Path) -> Result<Self, FlowError> {
        let (meta, arrays) = dataset::load(dir)?;
        if meta.samples == 0 {
            return Err(FlowError::Data(format!(
                "{}: the data set holds no sample",
                dir.display()
            )));
        }
        for (name, t) in &arrays {
            let bad = t
                .flatten_all()
                .and_then(|x| x.to_vec1::<f32>())
                .map_err(|e| FlowError::Data(format!("`{name}`: {e}")))?
                .iter()
                .position(|v| !v.is_finite());
            if let Some(i) = bad {
                return Err(FlowError::Data(format!(
                    "{}: `{name}` holds a non-finite value (flat index {i}); rewrite the demos",
                    dir.display()
                )));
            }
        }
        Ok(PlannerData {
            dir: dir.to_path_buf(),
            meta,
            arrays,
        })
    }
}

/// The planner being trained: what the trainer does not hold.
pub struct DiffusionPlannerFamily {
    pub cfg: PlannerTrainConfig,
    pub model_cfg: net::Config,
    pub scene: SceneConfig,
    pub norm: PlannerNormalization,
    pub varmap: VarMap,
    schedule: VpSchedule,
    pub last_loss: Option<f64>,
    device: Device,
}

/// Variables that start at zero (adaLN-zero: the decoder starts as the identity and the output
/// at zero), which the seeded initialisation must leave so.
fn zero_init(name: &str) -> bool {
    name.contains(".ada.")
        || name.starts_with("decoder.final_ada")
        || name.starts_with("future_out")
}

impl DiffusionPlannerFamily {
    fn model(&self) -> Result<Model, FlowError> {
        Ok(Model::new(
            self.model_cfg,
            VarBuilder::from_varmap(&self.varmap, DType::F32, &self.device),
        )?)
    }

    /// The masked x0 loss of the samples `idx`, noise and times from `rng`.
    pub fn batch_loss(
        &self,
        data: &PlannerData,
        idx: &[usize],
        rng: &mut Rng,
    ) -> Result<Tensor, FlowError> {
        let dev = &self.device;
        let cx = |e: candle_core::Error| FlowError::Data(format!("planner batch: {e}"));
        let ids: Vec<u32> = idx.iter().map(|&i| i as u32).collect();
        let ids = Tensor::from_vec(ids, idx.len(), dev).map_err(cx)?;
        let raw = select_scenes(&data.arrays, &ids)?;
        let scene = self.norm.scene_batch(&raw)?;
        let model = self.model()?;
        let (tokens, bias, route) = model.encode(&scene)?;
        let k = self.cfg.noise_draws;
        let rep = |t: &Tensor| Tensor::cat(&vec![t.clone(); k], 0).map_err(cx);
        let enc = (rep(&tokens)?, rep(&bias)?, rep(&route)?);
        let get = |n: &str| data.arrays[n].index_select(&ids, 0).map_err(cx);
        let x0 = rep(&self.norm.normalize_future(&get("future")?).map_err(cx)?)?;
        let mask = rep(&get("future_mask")?)?;
        let b = x0.dim(0).map_err(cx)?;
        let steps: Vec<usize> = (0..b).map(|_| rng.below(TRAIN_TIMESTEPS)).collect();
        let (alpha, sigma): (Vec<f32>, Vec<f32>) = steps
            .iter()
            .map(|&t| {
                let (a, s) = self.schedule.alpha_sigma(t);
                (a as f32, s as f32)
            })
            .unzip();
        let times: Vec<f32> = steps.iter().map(|&t| time_input(t)).collect();
        let noise = Tensor::from_vec(rng.gaussian(x0.elem_count()), x0.dims(), dev).map_err(cx)?;
        let col = |v: Vec<f32>| Tensor::from_vec(v, (b, 1, 1), dev).map_err(cx);
        let x_t = (x0.broadcast_mul(&col(alpha)?).map_err(cx)?
            + noise.broadcast_mul(&col(sigma)?).map_err(cx)?)
        .map_err(cx)?;
        let t = Tensor::from_vec(times, b, dev).map_err(cx)?;
        let pred = model.denoise(&enc, &x_t, &t)?;
        let err = (pred - &x0)
            .and_then(|d| d.sqr())
            .and_then(|d| d.sum(2))
            .and_then(|d| d * &mask)
            .map_err(cx)?;
        let counted = mask
            .sum_all()
            .and_then(|m| m.to_scalar::<f32>())
            .map_err(cx)?;
        err.sum_all()
            .and_then(|s| s / (counted.max(1.0) as f64 * 4.0))
            .map_err(cx)
    }

    fn write_planner(
        &self,
        dir: &Path,
        snap: &Snapshot<'_>,
        data: &PlannerData,
    ) -> Result<(), FlowError> {
        write_json(
            dir,
            "planner.json",
            &PlannerFile {
                model: self.model_cfg,
                scene: self.scene,
                train_timesteps: TRAIN_TIMESTEPS,
                beta_start: BETA_START,
                beta_end: BETA_END,
                prediction: "sample".into(),
            },
        )?;
        write_json(dir, "normalization.json", &self.norm)?;
        write_json(
            dir,
            "training.json",
            &PlannerTrainingInfo {
                data: data.dir.clone(),
                source: data.meta.source.clone(),
                samples: data.meta.samples,
                config: self.cfg.clone(),
                step: snap.step,
                loss: self.last_loss,
            },
        )?;
        let raw: HashMap<String, Tensor> = snap
            .params
            .iter()
            .map(|(n, v)| (n.clone(), v.as_detached_tensor()))
            .collect();
        save_safetensors_atomic(&raw, None, &dir.join(self.weights_file()))?;
        let infer: HashMap<String, Tensor> = match snap.ema {
            Some(ema) => snap
                .params
                .iter()
                .zip(ema)
                .map(|((n, _), t)| (n.clone(), t.clone()))
                .collect(),
            None => raw,
        };
        save_safetensors_atomic(&infer, None, &dir.join("model.safetensors"))?;
        Ok(())
    }
}

/// `v` as JSON; the error names `what` (the file or field it is for).
fn to_json<T: Serialize>(v: &T, what: &str) -> Result<Value, FlowError> {
    serde_json::to_value(v).map_err(|e| FlowError::input(what, e.to_string()))
}

/// Writes `v` as pretty JSON to `dir/name`, atomically.
fn write_json<T: Serialize>(dir: &Path, name: &str, v: &T) -> Result<(), FlowError> {
    let bytes = serde_json::to_vec_pretty(&to_json(v, name)?)
        .map_err(|e| FlowError::input(name, e.to_string()))?;
    write_atomic(&dir.join(name), &bytes).map_err(FlowError::from)
}

impl Family for DiffusionPlannerFamily {
    type Error = FlowError;
    type Input<'a> = PlannerData;
    type SaveInput<'a> = PlannerData;

    fn micro_batch(
        &mut self,
        data: &PlannerData,
        idx: &[usize],
        rng: &mut Rng,
        _params: &[(String, Var)],
    ) -> Result<MicroBatch, FlowError> {
        let loss = self.batch_loss(data, idx, rng)?;
        Ok(MicroBatch {
            counted: idx.len(),
            items: idx.len(),
            gradients: Gradients::Graph(loss),
        })
    }

    fn write_files(
        &self,
        dir: &Path,
        snap: &Snapshot<'_>,
        data: &PlannerData,
    ) -> Result<(), FlowError> {
        self.write_planner(dir, snap, data)
    }

    fn weights_file(&self) -> &str {
        "weights.safetensors"
    }

    fn state(&self) -> Result<Map<String, Value>, FlowError> {
        let mut m = Map::new();
        m.insert(
            "planner_config".into(),
            to_json(&self.cfg, "trainer_state.json")?,
        );
        m.insert(
            "normalization".into(),
            to_json(&self.norm, "trainer_state.json")?,
        );
        m.insert(
            "last_loss".into(),
            to_json(&self.last_loss, "trainer_state.json")?,
        );
        Ok(m)
    }

    fn restore(&mut self, state: &Map<String, Value>, path: &Path) -> Result<(), FlowError> {
        let file_err = |problem: String| FlowError::File {
            path: path.to_path_buf(),
            problem,
        };
        let cfg: PlannerTrainConfig = state
            .get("planner_config")
            .cloned()
            .map(serde_json::from_value)
            .transpose()
            .map_err(|e| file_err(format!("not a planner trainer state: {e}")))?
            .ok_or_else(|| file_err("no `planner_config` (not a planner trainer state)".into()))?;
        // The schedule's horizon may change (a longer run); the network and the batch may not.
        let mut same = cfg.clone();
        same.steps = self.cfg.steps;
        if same != self.cfg {
            return Err(file_err(format!(
                "the checkpoint was trained with {cfg:?}, this run asks for {:?} (same flags, or a \
                 new --out)",
                self.cfg
            )));
        }
        let norm: PlannerNormalization = state
            .get("normalization")
            .cloned()
            .map(serde_json::from_value)
            .transpose()
            .map_err(|e| file_err(format!("normalization: {e}")))?
            .ok_or_else(|| file_err("no `normalization`".into()))?;
        if norm != self.norm {
            return Err(file_err(
                "the checkpoint's data scales differ from this data set's (was it trained on \
                 other demos?)"
                    .into(),
            ));
        }
        self.last_loss = state.get("last_loss").and_then(Value::as_f64);
        Ok(())
    }

    fn stepped(&mut self, stats: &StepStats) {
        self.last_loss = Some(stats.loss);
    }
}

/// A planner run on the shared trainer.
pub struct PlannerTrainer {
    trainer: Trainer<DiffusionPlannerFamily>,
}

impl PlannerTrainer {
    /// A seeded fresh network for `data`.
    pub fn new(cfg: PlannerTrainConfig, data: &PlannerData) -> Result<Self, FlowError> {
        cfg.validate()?;
        let scene = data.meta.scene;
        let model_cfg = cfg.model(&scene);
        model_cfg.validate()?;
        let device = Device::Cpu;
        let varmap = VarMap::new();
        Model::new(
            model_cfg,
            VarBuilder::from_varmap(&varmap, DType::F32, &device),
        )?;
        let mut params: Vec<(String, Var)> = varmap
            .data()
            .lock()
            .map_err(|_| FlowError::Data("variable map poisoned".into()))?
            .iter()
            .map(|(n, v)| (n.clone(), v.clone()))
            .collect();
        params.sort_by(|a, b| a.0.cmp(&b.0));
        let random: Vec<(String, Var)> = params
            .iter()
            .filter(|(n, _)| !zero_init(n))
            .cloned()
            .collect();
        init_from_scratch(&random, cfg.seed)?;
        let norm = PlannerNormalization::from_data(&data.arrays)?;
        let tc = TrainerConfig {
            optim: AdamWConfig {
                lr: cfg.lr,
                weight_decay: cfg.weight_decay,
                ..Default::default()
            },
            warmup_steps: cfg.warmup_steps,
            total_steps: cfg.steps,
            max_grad_norm: cfg.max_grad_norm,
            grad_accum: 1,
            batch_size: cfg.batch_size,
        };
        let ema = cfg.ema_decay;
        let family = DiffusionPlannerFamily {
            cfg: cfg.clone(),
            model_cfg,
            scene,
            norm,
            varmap,
            schedule: schedule()?,
            last_loss: None,
            device,
        };
        let trainer = Trainer::new(family, params, tc, data.meta.samples, Rng::new(cfg.seed))?
            .with_ema(ema)?;
        Ok(PlannerTrainer { trainer })
    }

    pub fn step(&mut self, data: &PlannerData) -> Result<StepStats, FlowError> {
        self.trainer.step(data)
    }

    pub fn step_count(&self) -> u64 {
        self.trainer.step_count()
    }

    pub fn num_parameters(&self) -> usize {
        self.trainer.num_parameters()
    }

    pub fn family(&self) -> &DiffusionPlannerFamily {
        &self.trainer.family
    }

    pub fn save(&self, root: &Path, keep: usize, data: &PlannerData) -> Result<PathBuf, FlowError> {
        self.trainer.save(root, keep, data, |_| Ok(()))
    }

    pub fn resume(&mut self, root: &Path) -> Result<Option<PathBuf>, FlowError> {
        self.trainer.resume(root)
    }

    /// The trainable variables (optimizer order) and their moving average.
    pub fn weights(&self) -> (&[(String, Var)], Option<&[Tensor]>) {
        (self.trainer.params(), self.trainer.ema())
    }
}
