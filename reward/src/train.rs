//! Training the success classifier on rudder-tune's one trainer: the [`Classifier`] family
//! supplies the loss (cross-entropy of the answer token, "yes" or "no", over the whole
//! vocabulary at the answer position, as a VLM is fine-tuned) and the checkpoint files; the
//! trainer owns the data order, AdamW, the schedule, clipping and resumable checkpoints.
//!
//! The model is a small PaliGemma ([`ClassifierSpec`]) initialised from a seed with tune's
//! from-scratch initialisation: no pretrained VLM can be downloaded here. The prompt tokenizer
//! is a BPE trained on the data set's instructions and the question, with "yes" and "no" whole.
//! Light augmentation (a random shift of up to `shift` pixels and a brightness jitter per frame,
//! drawn from the run's generator) keeps the tower from memorising the few init states.
//!
//! [`ClassifierTrainer::new_lora`] fine-tunes a trained classifier instead: PEFT-style LoRA
//! adapters on its language model's linears train, everything else stays; checkpoints hold the
//! adapter in PEFT's format (`adapter_config.json` + `adapter_model.safetensors`) beside the
//! merged weights, so [`SuccessClassifier::load`] and [`calibrate`] read them unchanged.
//!
//! After the last step, [`calibrate`] fits the temperature on the validation split and the
//! threshold that reaches the precision asked for, and rewrites `reward.json`.

use std::collections::HashMap;
use std::fmt::Debug;
use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor, Var};
use rudder_tune::candle_nn::{VarBuilder, VarMap};
use rudder_tune::checkpoint::{save_safetensors_atomic, write_atomic};
use rudder_tune::config::JsonConfig;
use rudder_tune::load::{load_model, AnyModel};
use rudder_tune::models::paligemma;
use rudder_tune::peft::{self, LoraConfig};
use rudder_tune::text::tokenizer::train_bpe_with;
use rudder_tune::train::cross_entropy::weighted_cross_entropy;
use rudder_tune::train::{
    Family, Gradients, MicroBatch, Rng, Snapshot, StepStats, Trainer, TrainerConfig,
};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_json::{json, Map, Value};

use crate::calibration::fit_calibration;
use crate::classifier::{
    answer_logits, margins, require_file, Encoder, RewardConfig, SuccessClassifier, CAMERAS,
    QUESTION, REWARD_FORMAT_VERSION,
};
use crate::dataset::{Split, SuccessDataset};
use crate::RewardError;

/// The classifier's architecture.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClassifierSpec {
    pub image_size: usize,
    pub patch_size: usize,
    pub vision_hidden: usize,
    pub vision_layers: usize,
    pub hidden: usize,
    pub layers: usize,
    pub heads: usize,
    pub head_dim: usize,
    pub max_prompt_tokens: usize,
    /// Largest BPE vocabulary (specials included).
    pub max_vocab: usize,
}

impl Default for ClassifierSpec {
    fn default() -> Self {
        Self {
            image_size: 64,
            patch_size: 8,
            vision_hidden: 96,
            vision_layers: 2,
            hidden: 128,
            layers: 2,
            heads: 4,
            head_dim: 32,
            max_prompt_tokens: 64,
            max_vocab: 512,
        }
    }
}

impl ClassifierSpec {
    /// `config.json` of `PaliGemmaForConditionalGeneration` with `text_ids` text ids and the
    /// image token after them.
    pub fn config_json(&self, text_ids: usize) -> Value {
        let vocab = text_ids + 1;
        json!({
            "architectures": ["PaliGemmaForConditionalGeneration"],
            "model_type": "paligemma",
            "dtype": "float32",
            "image_token_index": text_ids,
            "projection_dim": self.hidden,
            "vocab_size": vocab,
            "tie_word_embeddings": true,
            "text_config": {
                "model_type": "gemma",
                "hidden_size": self.hidden,
                "intermediate_size": self.hidden * 4,
                "num_hidden_layers": self.layers,
                "num_attention_heads": self.heads,
                "num_key_value_heads": 1,
                "head_dim": self.head_dim,
                "hidden_activation": "gelu_pytorch_tanh",
                "max_position_embeddings": 1024,
                "rms_norm_eps": 1e-6,
                "rope_parameters": {"rope_theta": 10000.0, "rope_type": "default"},
                "tie_word_embeddings": true,
                "use_bidirectional_attention": false,
                "vocab_size": vocab,
                "num_image_tokens": (self.image_size / self.patch_size.max(1)).pow(2),
                "pad_token_id": 0, "eos_token_id": 1, "bos_token_id": 2,
                "attention_bias": false
            },
            "vision_config": {
                "model_type": "siglip_vision_model",
                "hidden_size": self.vision_hidden,
                "intermediate_size": self.vision_hidden * 4,
                "num_hidden_layers": self.vision_layers,
                "num_attention_heads": self.heads,
                "num_channels": 3,
                "image_size": self.image_size,
                "patch_size": self.patch_size,
                "hidden_act": "gelu_pytorch_tanh",
                "layer_norm_eps": 1e-6,
                "vision_use_head": false
            }
        })
    }

    pub fn paligemma(&self, text_ids: usize) -> Result<paligemma::Config, RewardError> {
        if self.patch_size == 0 || !self.image_size.is_multiple_of(self.patch_size) {
            return Err(RewardError::input(
                "patch_size",
                format!(
                    "{} must divide image_size {}",
                    self.patch_size, self.image_size
                ),
            ));
        }
        let jc = JsonConfig::from_value(
            Path::new("<generated config.json>"),
            self.config_json(text_ids),
        );
        Ok(paligemma::Config::from_json(&jc)?)
    }
}

/// A run's settings (saved in `trainer_state.json` and `training.json`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TrainConfig {
    pub model: ClassifierSpec,
    pub steps: u64,
    pub batch_size: usize,
    pub lr: f64,
    pub weight_decay: f64,
    pub warmup_steps: u64,
    pub max_grad_norm: Option<f64>,
    pub seed: u64,
    /// Largest random shift of each frame, in pixels (0 = none).
    pub shift: usize,
    /// Largest brightness change, as a fraction of the [-1, 1] range (0 = none).
    pub brightness: f64,
}

impl Default for TrainConfig {
    fn default() -> Self {
        Self {
            model: ClassifierSpec::default(),
            steps: 3000,
            batch_size: 32,
            lr: 5e-4,
            weight_decay: 0.01,
            warmup_steps: 100,
            max_grad_norm: Some(1.0),
            seed: 0,
            shift: 3,
            brightness: 0.1,
        }
    }
}

/// What a step reads: the data set and the rows of its training split.
pub struct TrainData<'a> {
    pub data: &'a SuccessDataset,
    pub rows: Vec<usize>,
}

impl TrainData<'_> {
    /// `row` of the data set row at each batch position of `idx`, in order (the generator's
    /// draws follow it), and the rows' labels.
    pub(crate) fn batch<T>(
        &self,
        idx: &[usize],
        mut row: impl FnMut(usize) -> Result<T, RewardError>,
    ) -> Result<(Vec<T>, Vec<bool>), RewardError> {
        let mut rows = Vec::with_capacity(idx.len());
        let mut labels = Vec::with_capacity(idx.len());
        for &k in idx {
            let i = self.rows[k];
            rows.push(row(i)?);
            labels.push(self.data.samples[i].label);
        }
        Ok((rows, labels))
    }
}

/// A micro-batch of `n` items, each counted, whose gradients come from `loss`'s graph.
pub(crate) fn graph_batch(n: usize, loss: Tensor) -> MicroBatch {
    MicroBatch {
        counted: n,
        items: n,
        gradients: Gradients::Graph(loss),
    }
}

/// LoRA fine-tuning of a trained classifier ([`ClassifierTrainer::new_lora`]): its weights
/// stay fixed, PEFT-style adapters on the language model's linears train.
pub struct LoraRun {
    /// The base checkpoint folder (`latest` resolved).
    pub base: PathBuf,
    /// The adapters' settings (`base_model_name_or_path` is the base folder).
    pub config: LoraConfig,
    /// The base model with the adapters attached (their A / B are the optimiser's variables).
    model: AnyModel,
}

/// The adapter's name on the model's linears.
const ADAPTER: &str = "default";

/// The classifier being trained: everything of the run but the optimiser, the order and the
/// generator, which the trainer holds.
pub struct Classifier {
    pub cfg: TrainConfig,
    pub model_cfg: paligemma::Config,
    /// The weights of a from-scratch run (empty for LoRA).
    pub varmap: VarMap,
    pub encoder: Encoder,
    pub last_loss: Option<f64>,
    /// Set for a LoRA fine-tune.
    pub lora: Option<LoraRun>,
    device: Device,
}

/// Both cameras' pixels of data set row `i` at side `s`, each frame shifted and its brightness
/// jittered when `aug` = (the run's generator, largest shift, largest brightness change) is
/// given (the draws: dy, dx, brightness, per camera in order).
pub(crate) fn frame_pixels(
    data: &SuccessDataset,
    i: usize,
    s: usize,
    mut aug: Option<(&mut Rng, usize, f64)>,
) -> Result<Vec<f32>, RewardError> {
    let ds = data.image_size;
    let (a, w) = data.frames(i);
    let mut px = Vec::with_capacity(CAMERAS.len() * 3 * s * s);
    for (name, f) in CAMERAS.iter().zip([a, w]) {
        let mut p = rudder_tune::image::to_pixels(name, f, ds, ds, s)?;
        if let Some((r, shift, brightness)) = aug.as_mut() {
            let k = *shift as isize;
            let span = (2 * k + 1) as usize;
            let dy = r.below(span) as isize - k;
            let dx = r.below(span) as isize - k;
            let b = ((r.next_f64() * 2.0 - 1.0) * *brightness * 2.0) as f32;
            augment(&mut p, s, dy, dx, b);
        }
        px.extend(p);
    }
    Ok(px)
}

/// The rows of `data`'s training split, once the batch size is checked (both refused when
/// nothing could be trained).
pub(crate) fn train_rows(
    data: &SuccessDataset,
    batch_size: usize,
) -> Result<Vec<usize>, RewardError> {
    if batch_size == 0 {
        return Err(RewardError::input("batch_size", "must be > 0"));
    }
    let rows = data.indices(Split::Train);
    if rows.is_empty() {
        return Err(RewardError::File {
            path: data.dir.join("samples.jsonl"),
            problem: "no sample of the `train` split".into(),
        });
    }
    Ok(rows)
}

/// The data set's distinct instructions, sorted (what a run's BPE is trained on).
pub(crate) fn distinct_instructions(data: &SuccessDataset) -> Vec<&str> {
    let mut instructions: Vec<&str> = data
        .samples
        .iter()
        .map(|s| s.instruction.as_str())
        .collect();
    instructions.sort();
    instructions.dedup();
    instructions
}

/// The variables of `varmap` by name, sorted, initialised from scratch from `seed`.
pub(crate) fn init_params(varmap: &VarMap, seed: u64) -> Result<Vec<(String, Var)>, RewardError> {
    let mut params: Vec<(String, Var)> = varmap
        .data()
        .lock()
        .map_err(|_| RewardError::input("varmap", "poisoned lock"))?
        .iter()
        .map(|(n, v)| (n.clone(), v.clone()))
        .collect();
    params.sort_by(|a, b| a.0.cmp(&b.0));
    rudder_tune::train::init_from_scratch(&params, seed)?;
    Ok(params)
}

/// `fn trainer_config(&self) -> TrainerConfig` (AdamW, no gradient accumulation) for a run's
/// settings type with the fields `steps`, `batch_size`, `lr`, `weight_decay`, `warmup_steps`
/// and `max_grad_norm`.
macro_rules! trainer_settings {
    ($t:ty) => {
        impl $t {
            pub(crate) fn trainer_config(&self) -> rudder_tune::train::TrainerConfig {
                rudder_tune::train::TrainerConfig {
                    optim: rudder_tune::train::adamw::AdamWConfig {
                        lr: self.lr,
                        weight_decay: self.weight_decay,
                        ..Default::default()
                    },
                    warmup_steps: self.warmup_steps,
                    total_steps: self.steps,
                    max_grad_norm: self.max_grad_norm,
                    grad_accum: 1,
                    batch_size: self.batch_size,
                }
            }
        }
    };
}
pub(crate) use trainer_settings;

trainer_settings!(TrainConfig);

/// A reward run: a family on tune's trainer, and the rows of the training split it reads.
pub struct RewardTrainer<F: Family> {
    pub trainer: Trainer<F>,
    pub rows: Vec<usize>,
}

impl<F: Family> RewardTrainer<F> {
    /// Tune's trainer over the training `rows`.
    pub(crate) fn start(
        family: F,
        params: Vec<(String, Var)>,
        cfg: TrainerConfig,
        rows: Vec<usize>,
        rng: Rng,
    ) -> Result<Self, RewardError> {
        Ok(Self {
            trainer: Trainer::new(family, params, cfg, rows.len(), rng)?,
            rows,
        })
    }

    pub fn input<'a>(&self, data: &'a SuccessDataset) -> TrainData<'a> {
        TrainData {
            data,
            rows: self.rows.clone(),
        }
    }
}

/// `v` as pretty JSON, written atomically to `dir/name`.
pub(crate) fn write_json_file(
    dir: &Path,
    name: &str,
    v: &impl Serialize,
) -> Result<(), RewardError> {
    let bytes =
        serde_json::to_vec_pretty(v).map_err(|e| RewardError::input(name, e.to_string()))?;
    Ok(write_atomic(&dir.join(name), &bytes)?)
}

/// The trainer's variables as detached tensors by name.
pub(crate) fn snapshot_weights(snap: &Snapshot<'_>) -> HashMap<String, Tensor> {
    snap.params
        .iter()
        .map(|(n, v)| (n.clone(), v.as_detached_tensor()))
        .collect()
}

/// Writes `dir/model.safetensors` (PyTorch's `format` metadata).
pub(crate) fn save_model_weights(
    w: &HashMap<String, Tensor>,
    dir: &Path,
) -> Result<(), RewardError> {
    let mut meta = HashMap::new();
    meta.insert("format".to_string(), "pt".to_string());
    Ok(save_safetensors_atomic(
        w,
        Some(meta),
        &dir.join("model.safetensors"),
    )?)
}

/// `training.json` of a checkpoint: the architecture when given (`arch`), the data set, the
/// run's settings, the step and the last loss.
pub(crate) fn training_info(
    arch: Option<&str>,
    data: &SuccessDataset,
    cfg: &impl Serialize,
    step: u64,
    last_loss: Option<f64>,
) -> Result<Map<String, Value>, RewardError> {
    let bad = |e: serde_json::Error| RewardError::input("training.json", e.to_string());
    let mut m = Map::new();
    if let Some(a) = arch {
        m.insert("arch".into(), json!(a));
    }
    m.insert("data".into(), json!(data.dir));
    m.insert(
        "train_samples".into(),
        json!(data.indices(Split::Train).len()),
    );
    m.insert("config".into(), serde_json::to_value(cfg).map_err(bad)?);
    m.insert("step".into(), json!(step));
    m.insert("loss".into(), json!(last_loss));
    Ok(m)
}

/// A family's `trainer_state.json` entries: its run settings under `key` and `last_loss`.
pub(crate) fn config_state(
    key: &str,
    cfg: &impl Serialize,
    last_loss: Option<f64>,
) -> Result<Map<String, Value>, RewardError> {
    let bad = |e: serde_json::Error| RewardError::input("trainer_state.json", e.to_string());
    let mut m = Map::new();
    m.insert(key.into(), serde_json::to_value(cfg).map_err(bad)?);
    m.insert(
        "last_loss".into(),
        serde_json::to_value(last_loss).map_err(bad)?,
    );
    Ok(m)
}

/// The run settings a family saved under `key` in the trainer state at `path` (`what` names
/// the state in the errors), after checking that their architecture (`model_of`) is `mine`.
pub(crate) fn restore_config<C: DeserializeOwned, M: PartialEq + Debug>(
    state: &Map<String, Value>,
    path: &Path,
    key: &str,
    what: &str,
    model_of: impl FnOnce(&C) -> &M,
    mine: &M,
) -> Result<C, RewardError> {
    let err = |problem: String| RewardError::File {
        path: path.to_path_buf(),
        problem,
    };
    let cfg: C = state
        .get(key)
        .cloned()
        .map(serde_json::from_value)
        .transpose()
        .map_err(|e| err(format!("not a {what}: {e}")))?
        .ok_or_else(|| err(format!("no `{key}` (not a {what})")))?;
    let theirs = model_of(&cfg);
    if theirs != mine {
        return Err(err(format!(
            "the checkpoint's architecture {theirs:?} differs from this run's {mine:?} (use the \
             same flags, or a new --out)"
        )));
    }
    Ok(cfg)
}

/// Runs `f` over `idx` in chunks of `batch` (at least 1) and concatenates what it returns.
pub(crate) fn in_batches<T>(
    idx: &[usize],
    batch: usize,
    mut f: impl FnMut(&[usize]) -> Result<Vec<T>, RewardError>,
) -> Result<Vec<T>, RewardError> {
    let mut out = Vec::with_capacity(idx.len());
    for chunk in idx.chunks(batch.max(1)) {
        out.extend(f(chunk)?);
    }
    Ok(out)
}

/// Fits the calibration of a checkpoint on `data`'s `val` split from the margins `margins`
/// gives for its rows (refused when the split is empty).
pub(crate) fn calibrate_on_val(
    data: &SuccessDataset,
    min_precision: f64,
    margins: impl FnOnce(&[usize]) -> Result<Vec<f64>, RewardError>,
) -> Result<Calibration, RewardError> {
    let idx = data.indices(Split::Val);
    if idx.is_empty() {
        return Err(RewardError::File {
            path: data.dir.join("samples.jsonl"),
            problem: "no sample of the `val` split to calibrate on".into(),
        });
    }
    let m = margins(&idx)?;
    let labels: Vec<bool> = idx.iter().map(|&i| data.samples[i].label).collect();
    let (temperature, threshold) = fit_calibration(&m, &labels, min_precision);
    Ok(Calibration {
        samples: idx.len(),
        temperature,
        threshold,
        min_precision,
    })
}

/// Shifts a channel-first `[3, s, s]` image by (dy, dx) with edge clamping and adds `bright`.
fn augment(px: &mut [f32], s: usize, dy: isize, dx: isize, bright: f32) {
    let src = px.to_vec();
    for c in 0..3 {
        for y in 0..s {
            let sy = (y as isize - dy).clamp(0, s as isize - 1) as usize;
            for x in 0..s {
                let sx = (x as isize - dx).clamp(0, s as isize - 1) as usize;
                px[(c * s + y) * s + x] = (src[(c * s + sy) * s + sx] + bright).clamp(-1.0, 1.0);
            }
        }
    }
}

impl Classifier {
    /// The model over the current variables (for LoRA, the base with the adapters; a clone
    /// shares every tensor, the adapters' variables included).
    pub fn model(&self) -> Result<paligemma::Model, RewardError> {
        if let Some(l) = &self.lora {
            return match &l.model {
                AnyModel::PaliGemma(m) => Ok((**m).clone()),
                _ => Err(RewardError::input("lora", "the base is not a PaliGemma")),
            };
        }
        Ok(paligemma::Model::new(
            &self.model_cfg,
            VarBuilder::from_varmap(&self.varmap, DType::F32, &self.device),
        )?)
    }

    /// The pixels and question ids of data set row `i`, augmented when `rng` is given.
    fn row(
        &self,
        data: &SuccessDataset,
        i: usize,
        rng: Option<&mut Rng>,
    ) -> Result<(Vec<f32>, Vec<u32>), RewardError> {
        let aug = rng.map(|r| (r, self.cfg.shift, self.cfg.brightness));
        let px = frame_pixels(data, i, self.cfg.model.image_size, aug)?;
        let ids = self.encoder.prompt_ids(&data.samples[i].instruction)?;
        Ok((px, ids))
    }

    /// Margins of data set rows `idx` with the current weights, in batches of `batch`.
    pub fn margins(
        &self,
        data: &SuccessDataset,
        idx: &[usize],
        batch: usize,
    ) -> Result<Vec<f64>, RewardError> {
        let model = self.model()?;
        in_batches(idx, batch, |chunk| {
            let rows = chunk
                .iter()
                .map(|&i| self.row(data, i, None))
                .collect::<Result<Vec<_>, _>>()?;
            let b = self.encoder.batch(&rows, &self.device)?;
            margins(&model, &self.encoder, &b)
        })
    }

    fn write_checkpoint(
        &self,
        dir: &Path,
        snap: &Snapshot<'_>,
        data: &SuccessDataset,
    ) -> Result<(), RewardError> {
        match &self.lora {
            // The base's own config.json: the architecture is the base's.
            Some(l) => {
                let p = l.base.join("config.json");
                let bytes = std::fs::read(&p).map_err(|e| RewardError::File {
                    path: p.clone(),
                    problem: e.to_string(),
                })?;
                write_atomic(&dir.join("config.json"), &bytes)?;
            }
            None => write_json_file(
                dir,
                "config.json",
                &self
                    .cfg
                    .model
                    .config_json(self.encoder.tokenizer.vocab_size()),
            )?,
        }
        self.encoder.tokenizer.save(&dir.join("tokenizer.json"))?;
        // Through a `Value`: its keys sorted, as the file has always been written.
        write_json_file(
            dir,
            "reward.json",
            &serde_json::to_value(&self.encoder.cfg)
                .map_err(|e| RewardError::input("reward.json", e.to_string()))?,
        )?;
        let w: HashMap<String, Tensor> = match &self.lora {
            None => snapshot_weights(snap),
            // The adapter in PEFT's format, and the merged weights for everything that loads
            // plain checkpoints (SuccessClassifier::load, calibrate, eval, bench).
            Some(l) => {
                peft::save_adapter(&mut l.model.clone(), &l.config, ADAPTER, dir)?;
                let mut merged = l.model.clone();
                peft::merge(&mut merged)?;
                merged
                    .named_tensors()?
                    .into_iter()
                    .map(|(n, t)| (n, t.detach()))
                    .collect()
            }
        };
        save_model_weights(&w, dir)?;
        let mut info = training_info(None, data, &self.cfg, snap.step, self.last_loss)?;
        if let Some(l) = &self.lora {
            info.insert("lora_base".into(), json!(l.base));
            info.insert("lora".into(), l.config.to_json());
        }
        write_json_file(dir, "training.json", &info)
    }
}

impl Family for Classifier {
    type Error = RewardError;
    type Input<'a> = TrainData<'a>;
    type SaveInput<'a> = SuccessDataset;

    fn micro_batch(
        &mut self,
        input: &TrainData<'_>,
        idx: &[usize],
        rng: &mut Rng,
        _params: &[(String, Var)],
    ) -> Result<MicroBatch, RewardError> {
        let model = self.model()?;
        let (rows, labels) = input.batch(idx, |i| self.row(input.data, i, Some(&mut *rng)))?;
        let targets: Vec<u32> = labels
            .iter()
            .map(|&l| {
                if l {
                    self.encoder.cfg.yes_id
                } else {
                    self.encoder.cfg.no_id
                }
            })
            .collect();
        let batch = self.encoder.batch(&rows, &self.device)?;
        let logits = answer_logits(&model, &batch)?;
        let w = vec![1.0 / idx.len().max(1) as f32; idx.len()];
        let loss = weighted_cross_entropy(&logits, &targets, &w)?;
        Ok(graph_batch(idx.len(), loss))
    }

    fn write_files(
        &self,
        dir: &Path,
        snap: &Snapshot<'_>,
        data: &SuccessDataset,
    ) -> Result<(), RewardError> {
        self.write_checkpoint(dir, snap, data)
    }

    fn weights_file(&self) -> &str {
        // LoRA: the adapter holds the trainable weights under their names (what a resume
        // reloads); the merged model.safetensors is for inference.
        if self.lora.is_some() {
            "adapter_model.safetensors"
        } else {
            "model.safetensors"
        }
    }

    fn state(&self) -> Result<Map<String, Value>, RewardError> {
        let mut m = config_state("classifier_config", &self.cfg, self.last_loss)?;
        if let Some(l) = &self.lora {
            m.insert("lora_base".into(), json!(l.base));
            m.insert("lora".into(), l.config.to_json());
        }
        Ok(m)
    }

    fn restore(&mut self, state: &Map<String, Value>, path: &Path) -> Result<(), RewardError> {
        restore_config(
            state,
            path,
            "classifier_config",
            "reward trainer state",
            |c: &TrainConfig| &c.model,
            &self.cfg.model,
        )?;
        // A LoRA run resumes only a LoRA run on the same base with the same adapters.
        let mine = self
            .lora
            .as_ref()
            .map(|l| (json!(l.base), l.config.to_json()));
        let theirs = match (state.get("lora_base"), state.get("lora")) {
            (Some(b), Some(c)) => Some((b.clone(), c.clone())),
            _ => None,
        };
        if mine != theirs {
            let say = |x: &Option<(Value, Value)>| match x {
                None => "full training (no LoRA)".to_string(),
                Some((b, c)) => format!(
                    "LoRA on {b} (r {}, lora_alpha {}, target_modules {})",
                    c["r"], c["lora_alpha"], c["target_modules"]
                ),
            };
            return Err(RewardError::File {
                path: path.to_path_buf(),
                problem: format!(
                    "the checkpoint is {}, this run is {} (use the same --init and LoRA flags, \
                     or a new --out)",
                    say(&theirs),
                    say(&mine)
                ),
            });
        }
        self.last_loss = state.get("last_loss").and_then(Value::as_f64);
        Ok(())
    }

    fn stepped(&mut self, stats: &StepStats) {
        self.last_loss = Some(stats.loss);
    }
}

/// A classifier run: the [`Classifier`] family on tune's trainer.
pub type ClassifierTrainer = RewardTrainer<Classifier>;

impl RewardTrainer<Classifier> {
    /// A freshly initialised classifier for `data` (its training split).
    pub fn new(cfg: TrainConfig, data: &SuccessDataset) -> Result<Self, RewardError> {
        let rows = train_rows(data, cfg.batch_size)?;
        let instructions = distinct_instructions(data);
        let extra = [
            QUESTION.replace("{instruction}", ""),
            "yes".to_string(),
            "no".to_string(),
        ];
        let tokenizer = train_bpe_with(
            instructions,
            extra.iter().map(String::as_str),
            cfg.model.max_vocab,
        )?;
        let (Some(yes_id), Some(no_id)) = (tokenizer.token_id("yes"), tokenizer.token_id("no"))
        else {
            return Err(RewardError::input(
                "tokenizer",
                "the BPE holds no single token for \"yes\" or \"no\"",
            ));
        };
        let text_ids = tokenizer.vocab_size();
        let model_cfg = cfg.model.paligemma(text_ids)?;
        let device = Device::Cpu;
        let varmap = VarMap::new();
        paligemma::Model::new(
            &model_cfg,
            VarBuilder::from_varmap(&varmap, DType::F32, &device),
        )?;
        let params = init_params(&varmap, cfg.seed)?;
        let reward = RewardConfig {
            format_version: REWARD_FORMAT_VERSION,
            question: QUESTION.to_string(),
            cameras: CAMERAS.iter().map(|s| s.to_string()).collect(),
            image_size: cfg.model.image_size,
            max_prompt_tokens: cfg.model.max_prompt_tokens,
            yes_id,
            no_id,
            temperature: 1.0,
            threshold: 0.5,
            calibrated: false,
        };
        let encoder = Encoder {
            image_token: model_cfg.image_token_id,
            patches: model_cfg.vision.num_patches(),
            cfg: reward,
            tokenizer,
        };
        // Every question must fit before a step is spent.
        for s in &data.samples {
            encoder.prompt_ids(&s.instruction)?;
        }
        let tc = cfg.trainer_config();
        let rng = Rng::new(cfg.seed);
        let family = Classifier {
            cfg,
            model_cfg,
            varmap,
            encoder,
            last_loss: None,
            lora: None,
            device,
        };
        Self::start(family, params, tc, rows, rng)
    }

    /// LoRA fine-tuning of the trained classifier `base` (a checkpoint folder or a run folder,
    /// through its `latest`). `cfg.model` is replaced by the base's architecture (its
    /// `training.json`); the base's config, tokenizer, question and "yes" / "no" ids are kept,
    /// its calibration is reset (the margins change: calibrate again). Adapters on the language
    /// model's linears named by `lora` are the only trainable weights; their A are drawn from
    /// the run's generator `Rng::new(cfg.seed)` before it shuffles the data, their B are zero
    /// (the first step starts from the base's outputs). A base that is not a reward checkpoint
    /// is refused, naming the file at fault; so is a question longer than the base's
    /// `max_prompt_tokens`.
    pub fn new_lora(
        mut cfg: TrainConfig,
        data: &SuccessDataset,
        base: &Path,
        lora: LoraConfig,
    ) -> Result<Self, RewardError> {
        let rows = train_rows(data, cfg.batch_size)?;
        let not_reward = |path: PathBuf, why: String| RewardError::File {
            path,
            problem: format!(
                "{why}: LoRA needs a success classifier checkpoint written by `rudder train reward`"
            ),
        };
        let base = rudder_tune::train::checkpoint::resolve(base)
            .map_err(|e| not_reward(base.to_path_buf(), format!("not a checkpoint ({e})")))?;
        let ip = base.join("training.json");
        let text =
            std::fs::read_to_string(&ip).map_err(|e| not_reward(ip.clone(), e.to_string()))?;
        let info: Value = serde_json::from_str(&text)
            .map_err(|e| not_reward(ip.clone(), format!("not JSON: {e}")))?;
        if let Some(arch) = info.get("arch").and_then(Value::as_str) {
            if arch != "vlm" {
                return Err(not_reward(
                    ip,
                    format!("a `{arch}` checkpoint (LoRA adapts the VLM classifier)"),
                ));
            }
        }
        let spec: ClassifierSpec = info
            .get("config")
            .and_then(|c| c.get("model"))
            .cloned()
            .ok_or_else(|| not_reward(ip.clone(), "no `config.model`".into()))
            .and_then(|v| {
                serde_json::from_value(v)
                    .map_err(|e| not_reward(ip.clone(), format!("`config.model`: {e}")))
            })?;
        cfg.model = spec;
        for name in ["config.json", "tokenizer.json", "reward.json"] {
            require_file(&base, name, |p| not_reward(p, "missing".into()))?;
        }
        let rp = base.join("reward.json");
        let text =
            std::fs::read_to_string(&rp).map_err(|e| not_reward(rp.clone(), e.to_string()))?;
        let mut reward: RewardConfig = serde_json::from_str(&text)
            .map_err(|e| not_reward(rp.clone(), format!("not a reward.json: {e}")))?;
        let device = Device::Cpu;
        let mut model = load_model(&base, &device)?.model;
        let pg = match &model {
            AnyModel::PaliGemma(m) => (**m).clone(),
            _ => {
                return Err(not_reward(
                    base.join("config.json"),
                    "not a PaliGemmaForConditionalGeneration".into(),
                ))
            }
        };
        let model_cfg = pg.cfg.clone();
        // The base's margins no longer hold after fine-tuning.
        reward.temperature = 1.0;
        reward.threshold = 0.5;
        reward.calibrated = false;
        // Checks reward.json against the model and the tokenizer as loading does.
        let tokenizer = rudder_tune::text::tokenizer::PromptTokenizer::load(&base, 0)?;
        let clf = SuccessClassifier::from_parts(base.clone(), pg, tokenizer, reward, &rp)?;
        let encoder = clf.encoder;
        // Every question must fit the base's limit before a step is spent (words outside the
        // base's vocabulary are fine: the BPE splits them).
        for s in &data.samples {
            encoder.prompt_ids(&s.instruction)?;
        }
        let mut rng = Rng::new(cfg.seed);
        let mut lora = lora;
        lora.base_model_name_or_path = Some(base.display().to_string());
        let params = peft::attach_new(&mut model, &lora, ADAPTER, &mut rng, None)?;
        let tc = cfg.trainer_config();
        let family = Classifier {
            cfg,
            model_cfg,
            varmap: VarMap::new(),
            encoder,
            last_loss: None,
            lora: Some(LoraRun {
                base,
                config: lora,
                model,
            }),
            device,
        };
        Self::start(family, params, tc, rows, rng)
    }
}

/// What calibration found on the validation split.
#[derive(Debug, Clone, Serialize)]
pub struct Calibration {
    pub samples: usize,
    pub temperature: f64,
    pub threshold: f64,
    pub min_precision: f64,
}

/// Fits the temperature and threshold of the checkpoint `dir` on `data`'s validation split
/// (the training split when there is none, said in the result) and rewrites its `reward.json`.
pub fn calibrate(
    dir: &Path,
    data: &SuccessDataset,
    min_precision: f64,
    batch: usize,
) -> Result<(SuccessClassifier, Calibration), RewardError> {
    let mut clf = SuccessClassifier::load(dir)?;
    let cal = calibrate_on_val(data, min_precision, |idx| {
        classifier_margins(&clf, data, idx, batch)
    })?;
    clf.set_calibration(cal.temperature, cal.threshold);
    write_json_file(&clf.dir, "reward.json", clf.config())?;
    Ok((clf, cal))
}

/// Margins of data set rows `idx` under a loaded classifier, in batches.
pub fn classifier_margins(
    clf: &SuccessClassifier,
    data: &SuccessDataset,
    idx: &[usize],
    batch: usize,
) -> Result<Vec<f64>, RewardError> {
    let s = data.image_size as u32;
    in_batches(idx, batch, |chunk| {
        let imgs: Vec<[rudder_robot::ImageRgb8; 2]> = chunk
            .iter()
            .map(|&i| {
                let (a, w) = data.frames(i);
                [
                    rudder_robot::ImageRgb8 {
                        width: s,
                        height: s,
                        data: a.to_vec(),
                    },
                    rudder_robot::ImageRgb8 {
                        width: s,
                        height: s,
                        data: w.to_vec(),
                    },
                ]
            })
            .collect();
        let refs: Vec<[&rudder_robot::ImageRgb8; 2]> =
            imgs.iter().map(|p| [&p[0], &p[1]]).collect();
        let queries: Vec<crate::classifier::Query<'_>> = chunk
            .iter()
            .zip(&refs)
            .map(|(&i, f)| crate::classifier::Query {
                frames: f,
                instruction: &data.samples[i].instruction,
            })
            .collect();
        clf.margins(&queries)
    })
}

/// Where a finished run's final checkpoint is.
pub fn final_checkpoint(out: &Path) -> Result<PathBuf, RewardError> {
    Ok(rudder_tune::train::checkpoint::resolve(out)?)
}
