//! Training a small VLA from scratch on tabletop demos, with either head: pi0-style flow
//! matching, or OpenVLA-style action tokens ([`crate::tokens`]: a PaliGemma-style VLM, 256 bins
//! per dimension from the demos' q01 / q99, cross-entropy over the action tokens, autoregressive
//! or parallel). What follows describes the flow head; the tokens head shares the tower, the
//! prompts, the optimiser and the checkpoint layout (with `action_tokens.json` in place of
//! `normalization.json`).
//!
//! Flow head: a small pi0-architecture policy
//! ([`crate::dataset`]), with checkpoints that [`crate::VlaPolicy::load`] and `rudder serve`
//! read and that resume bit-exactly.
//!
//! - Model: `PI0ForConditionalGeneration` built from [`ModelSpec`] (SigLIP tower on two
//!   cameras, Gemma prefix, Gemma action expert), random init from a seed (LeCun-normal
//!   matrices, normal(0, 0.02) embedding tables, zero biases, LayerNorm weights 1, Gemma
//!   RMSNorm weights 0 = scale 1).
//! - Prompts: a BPE trained on the data set's instructions and a small corpus
//!   ([`crate::tokenizer`], saved as `tokenizer.json`; the default), or byte-level tokens
//!   ([`crate::prompt`]: vocabulary 260 = pad, eos, bos, 256 bytes and the image token). The
//!   image token is the id after the last text id.
//! - Data: state and action normalised with the data set's mean/std (`normalization.json`);
//!   the target is the normalised chunk of `chunk` actions from each frame.
//! - Loss: flow matching (REFERENCE §6b): `t ~ Beta(1.5, 1) * 0.999 + 0.001` (drawn as
//!   `U^(1/1.5)`, Beta(a, 1)'s inverse CDF), noise N(0, 1), `x_t = t noise + (1 - t) a`, MSE of
//!   the velocity against `noise - a`.
//! - Optimiser: rudder-tune's AdamW, cosine schedule with linear warmup, global-norm clipping.
//! - Weights live in a `VarMap` under their Hub names; each step rebuilds the model from it
//!   (a transposed copy of every weight, negligible at this size) so gradients reach the
//!   variables and AdamW's in-place updates are seen by the next step.
//!
//! A checkpoint folder `OUT/checkpoint-N` holds `config.json`, `model.safetensors`,
//! `normalization.json`, `policy.json`, `training.json` (data set, split, architecture flags)
//! and, for resuming, `optimizer.safetensors` + `trainer_state.json` (step, sample order,
//! cursor, generator state). `OUT/latest` names the newest.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::Instant;

use candle_core::{DType, Device, Tensor, Var};
use rudder_tune::candle_nn::{VarBuilder, VarMap};
use rudder_tune::checkpoint::{save_safetensors_atomic, write_atomic, TensorStore};
use rudder_tune::config::JsonConfig;
use rudder_tune::load::{load_model, AnyModel};
use rudder_tune::models::{paligemma, pi0};
use rudder_tune::peft::{self, LoraConfig};
use rudder_tune::train::adamw::{clip_grad_norm, collect_grads, AdamW, AdamWConfig};
use rudder_tune::train::checkpoint::{latest, prune, save_dir_atomic};
use rudder_tune::train::{CosineSchedule, Rng};
use serde::{Deserialize, Serialize};
use serde_json::json;

use crate::dataset::{DemoDataset, Stats, ACTION_DIM, STATE_DIM};
use crate::tokenizer::{train_bpe, PromptTokenizer};
use crate::tokens::{self, ActionTokens, Decoding};
use crate::{preprocess, prompt, FlowError};

/// How prompts become ids.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum TokenizerKind {
    /// A BPE of at most `bpe_vocab` ids trained on the instructions (+ corpus).
    #[default]
    Bpe,
    /// The byte-level mapping (checkpoints from before the BPE).
    Bytes,
}

fn bytes_kind() -> TokenizerKind {
    TokenizerKind::Bytes
}

fn default_bpe_vocab() -> usize {
    512
}

/// Which action head the model carries (REFERENCE §6).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum HeadKind {
    /// pi0-style flow matching in an action expert.
    #[default]
    Flow,
    /// OpenVLA-style action tokens (256 bins, the last ids of the vocabulary).
    Tokens,
}

/// Byte-level prompts: text ids 0..=258 (pad, eos, bos, bytes), image token 259.
pub const BYTE_TEXT_IDS: usize = 259;
/// The cameras, in model slot order, under the names the tabletop embodiment uses.
pub const CAMERAS: [&str; 2] = ["agentview", "wrist"];

/// Architecture of a model trained from scratch.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ModelSpec {
    /// Width of the prefix language model (and the vision projector's output).
    pub hidden: usize,
    /// Layers of the language model and of the action expert (they must agree).
    pub layers: usize,
    pub heads: usize,
    pub head_dim: usize,
    /// Width of the action expert.
    pub expert_hidden: usize,
    pub vision_hidden: usize,
    pub vision_layers: usize,
    pub image_size: usize,
    pub patch_size: usize,
    /// Actions per chunk.
    pub chunk: usize,
    /// Prompt length limit in tokens, BOS included.
    pub max_prompt_tokens: usize,
    /// Euler steps at inference.
    pub inference_steps: usize,
    /// Absent in checkpoints from before the BPE, which used bytes.
    #[serde(default = "bytes_kind")]
    pub tokenizer: TokenizerKind,
    /// Upper bound of the BPE's size (specials included).
    #[serde(default = "default_bpe_vocab")]
    pub bpe_vocab: usize,
    /// Absent in checkpoints from before the tokens head, which were all flow.
    #[serde(default)]
    pub head: HeadKind,
    /// Token decoding of the tokens head.
    #[serde(default)]
    pub decoding: Decoding,
}

impl Default for ModelSpec {
    fn default() -> Self {
        Self {
            hidden: 128,
            layers: 4,
            heads: 4,
            head_dim: 32,
            expert_hidden: 128,
            vision_hidden: 128,
            vision_layers: 2,
            image_size: 64,
            patch_size: 16,
            chunk: 8,
            max_prompt_tokens: 48,
            inference_steps: 10,
            tokenizer: TokenizerKind::Bpe,
            bpe_vocab: default_bpe_vocab(),
            head: HeadKind::Flow,
            decoding: Decoding::Autoregressive,
        }
    }
}

impl ModelSpec {
    /// A model of ~0.1M parameters on 32 px images for tests and smoke runs: it trains in
    /// milliseconds per step, and its layer-0 FFN has 128 neurons.
    pub fn tiny() -> Self {
        Self {
            hidden: 32,
            layers: 2,
            heads: 2,
            head_dim: 16,
            expert_hidden: 32,
            vision_hidden: 32,
            vision_layers: 1,
            image_size: 32,
            patch_size: 16,
            chunk: 4,
            max_prompt_tokens: 24,
            inference_steps: 2,
            ..Self::default()
        }
    }

    /// The tokenizer this spec trains on `instructions`.
    pub fn tokenizer<'a>(
        &self,
        instructions: impl IntoIterator<Item = &'a str>,
    ) -> Result<PromptTokenizer, FlowError> {
        match self.tokenizer {
            TokenizerKind::Bytes => Ok(PromptTokenizer::Bytes {
                limit: BYTE_TEXT_IDS,
            }),
            TokenizerKind::Bpe => train_bpe(instructions, self.bpe_vocab),
        }
    }

    /// `config.json` in transformers' `PI0ForConditionalGeneration` layout, for `text_ids`
    /// text ids (the image token comes after them).
    pub fn config_json(&self, text_ids: usize) -> serde_json::Value {
        let vocab = text_ids + 1;
        let gemma = |hidden: usize| {
            json!({
                "model_type": "gemma",
                "hidden_size": hidden,
                "intermediate_size": hidden * 4,
                "num_hidden_layers": self.layers,
                "num_attention_heads": self.heads,
                "num_key_value_heads": 1,
                "head_dim": self.head_dim,
                "hidden_act": "gelu_pytorch_tanh",
                "hidden_activation": "gelu_pytorch_tanh",
                "max_position_embeddings": 1024,
                "rms_norm_eps": 1e-6,
                "rope_parameters": {"rope_theta": 10000.0, "rope_type": "default"},
                "tie_word_embeddings": true,
                "use_bidirectional_attention": true,
                "vocab_size": vocab,
                "pad_token_id": 0,
                "eos_token_id": 1,
                "bos_token_id": 2,
                "attention_bias": false
            })
        };
        let mut text = gemma(self.hidden);
        text["num_image_tokens"] = json!((self.image_size / self.patch_size.max(1)).pow(2));
        json!({
            "architectures": ["PI0ForConditionalGeneration"],
            "model_type": "pi0",
            "dtype": "float32",
            "chunk_size": self.chunk,
            "max_action_dim": ACTION_DIM,
            "max_state_dim": STATE_DIM,
            "num_inference_steps": self.inference_steps,
            "min_period": 0.004,
            "max_period": 4.0,
            "loss_reduction": "mean",
            "time_sampling_beta_alpha": 1.5,
            "time_sampling_beta_beta": 1.0,
            "time_sampling_offset": 0.001,
            "time_sampling_scale": 0.999,
            "dit_config": gemma(self.expert_hidden),
            "vlm_config": {
                "model_type": "paligemma",
                "image_token_index": text_ids,
                "projection_dim": self.hidden,
                "vocab_size": vocab,
                "tie_word_embeddings": true,
                "text_config": text,
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
            }
        })
    }

    /// `config.json` of the tokens head: `PaliGemmaForConditionalGeneration` with `text_ids`
    /// text ids, the image token, then the 256 action ids.
    pub fn tokens_config_json(&self, text_ids: usize) -> serde_json::Value {
        let flow = self.config_json(text_ids);
        let vocab = text_ids + 1 + tokens::N_BINS;
        let mut vlm = flow["vlm_config"].clone();
        vlm["architectures"] = json!(["PaliGemmaForConditionalGeneration"]);
        vlm["vocab_size"] = json!(vocab);
        vlm["text_config"]["vocab_size"] = json!(vocab);
        // The prefix-LM mask comes from the image / prompt / action layout, not from a
        // config switch.
        vlm["text_config"]["use_bidirectional_attention"] = json!(false);
        vlm["dtype"] = json!("float32");
        vlm
    }

    pub fn paligemma_config(&self, text_ids: usize) -> Result<paligemma::Config, FlowError> {
        let jc = JsonConfig::from_value(
            Path::new("<generated config.json>"),
            self.tokens_config_json(text_ids),
        );
        Ok(paligemma::Config::from_json(&jc)?)
    }

    pub fn pi0_config(&self, text_ids: usize) -> Result<pi0::Config, FlowError> {
        let jc = JsonConfig::from_value(
            Path::new("<generated config.json>"),
            self.config_json(text_ids),
        );
        Ok(pi0::Config::from_json(&jc)?)
    }

    /// `policy.json` for [`crate::VlaPolicy`].
    pub fn policy_json(&self, seed: u64) -> serde_json::Value {
        json!({
            "cameras": CAMERAS,
            "max_prompt_tokens": self.max_prompt_tokens,
            "dt": 0.05,
            "action_space": "eef_delta7",
            "seed": seed
        })
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TrainConfig {
    pub model: ModelSpec,
    pub steps: u64,
    pub batch_size: usize,
    pub lr: f64,
    pub weight_decay: f64,
    pub warmup_steps: u64,
    /// Global L2 norm to clip gradients to (None: no clipping).
    pub max_grad_norm: Option<f64>,
    pub seed: u64,
}

impl Default for TrainConfig {
    fn default() -> Self {
        Self {
            model: ModelSpec::default(),
            steps: 1000,
            batch_size: 16,
            lr: 3e-4,
            weight_decay: 0.01,
            warmup_steps: 50,
            max_grad_norm: Some(1.0),
            seed: 0,
        }
    }
}

/// `training.json`: what a checkpoint was trained on (read by `rudder eval` for the split).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TrainingInfo {
    pub data: PathBuf,
    pub suite: String,
    /// The demos' init-state seed.
    pub demo_seed: u64,
    /// Episode indices (= init states) `0..episodes_per_task` of every task were used for
    /// training; held-out evaluation starts at this index.
    pub episodes_per_task: usize,
    pub frames: usize,
    pub config: TrainConfig,
    pub step: u64,
    pub loss: Option<f64>,
    /// For a LoRA fine-tune: the checkpoint the adapters sit on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lora_base: Option<PathBuf>,
}

/// What a trainer is made of beyond its configuration.
struct Parts {
    params: Vec<(String, Var)>,
    stats: Stats,
    action_tokens: Option<ActionTokens>,
    tokenizer: PromptTokenizer,
    lora: Option<LoraRun>,
    model_cfg: ModelConfig,
    varmap: VarMap,
}

/// LoRA fine-tuning of a trained checkpoint: its weights stay fixed, PEFT-style adapters on the
/// language model's (and, for pi0, the action expert's) linears train.
pub struct LoraRun {
    pub base: PathBuf,
    pub config: LoraConfig,
    /// The base model with the adapters attached (their A / B are the optimiser's variables).
    model: AnyModel,
}

#[derive(Debug, Clone, Copy, Serialize)]
pub struct StepStats {
    pub step: u64,
    pub loss: f64,
    pub lr: f64,
    pub grad_norm: f64,
    pub seconds: f64,
}

#[derive(Debug, Serialize, Deserialize)]
struct TrainerState {
    step: u64,
    epoch: u64,
    cursor: usize,
    order: Vec<u32>,
    rng: u64,
    params: Vec<String>,
    config: TrainConfig,
    last_loss: Option<f64>,
}

/// The model a trainer builds, by head.
#[derive(Debug, Clone, PartialEq)]
pub enum ModelConfig {
    Flow(Box<pi0::Config>),
    Tokens(Box<paligemma::Config>),
}

/// A model over the trainer's current variables.
pub enum TrainModel {
    Flow(Box<pi0::Model>),
    Tokens(Box<paligemma::Model>),
}

impl ModelConfig {
    fn vision(&self) -> &rudder_tune::models::siglip::Config {
        match self {
            Self::Flow(c) => &c.vlm.vision,
            Self::Tokens(c) => &c.vision,
        }
    }
    /// The language model's vocabulary (text ids, image token and, for tokens, action ids).
    fn vocab_size(&self) -> usize {
        match self {
            Self::Flow(c) => c.vlm.text.0.vocab_size,
            Self::Tokens(c) => c.text.0.vocab_size,
        }
    }
    fn image_token_id(&self) -> u32 {
        match self {
            Self::Flow(c) => c.vlm.image_token_id,
            Self::Tokens(c) => c.image_token_id,
        }
    }
    fn build(&self, vb: VarBuilder) -> Result<TrainModel, FlowError> {
        Ok(match self {
            Self::Flow(c) => TrainModel::Flow(Box::new(pi0::Model::new(c, vb)?)),
            Self::Tokens(c) => TrainModel::Tokens(Box::new(paligemma::Model::new(c, vb)?)),
        })
    }
}

pub struct VlaTrainer {
    pub cfg: TrainConfig,
    pub model_cfg: ModelConfig,
    pub varmap: VarMap,
    pub opt: AdamW,
    pub sched: CosineSchedule,
    pub stats: Stats,
    /// Bins of the tokens head (None for flow).
    pub action_tokens: Option<ActionTokens>,
    pub tokenizer: PromptTokenizer,
    /// Set for a LoRA fine-tune ([`VlaTrainer::new_lora`]).
    pub lora: Option<LoraRun>,
    rng: Rng,
    order: Vec<u32>,
    cursor: usize,
    epoch: u64,
    last_loss: Option<f64>,
    device: Device,
}

fn gaussian(rng: &mut Rng, n: usize) -> Vec<f32> {
    let mut out = Vec::with_capacity(n + 1);
    while out.len() < n {
        let u1 = 1.0 - rng.next_f64();
        let u2 = rng.next_f64();
        let r = (-2.0 * u1.ln()).sqrt();
        let a = 2.0 * std::f64::consts::PI * u2;
        out.push((r * a.cos()) as f32);
        out.push((r * a.sin()) as f32);
    }
    out.truncate(n);
    out
}

/// Whether a 1-D `*.weight` is a LayerNorm scale (init 1) rather than a Gemma RMSNorm offset
/// scale (init 0).
fn is_layer_norm(name: &str) -> bool {
    name.contains("vision_tower")
        && (name.ends_with("layer_norm1.weight")
            || name.ends_with("layer_norm2.weight")
            || name.ends_with("post_layernorm.weight"))
}

/// The tokens head's bins: q01 / q99 from the demos' `meta.json` (computed from the frames
/// when absent), every dimension but the gripper normalised.
fn action_tokens(spec: &ModelSpec, data: &DemoDataset) -> Result<ActionTokens, FlowError> {
    let (mut q01, mut q99) = (data.meta.action_q01.clone(), data.meta.action_q99.clone());
    if q01.len() != ACTION_DIM || q99.len() != ACTION_DIM {
        q01.clear();
        q99.clear();
        for d in 0..ACTION_DIM {
            let mut v: Vec<f64> = data
                .episodes
                .iter()
                .flat_map(|e| e.actions.chunks_exact(ACTION_DIM).map(move |a| a[d] as f64))
                .collect();
            v.sort_by(f64::total_cmp);
            let q = |p: f64| v[((v.len() - 1) as f64 * p).round() as usize];
            q01.push(q(0.01));
            q99.push(q(0.99));
        }
    }
    let mut mask = vec![true; ACTION_DIM];
    mask[ACTION_DIM - 1] = false;
    Ok(ActionTokens {
        n_bins: tokens::N_BINS,
        q01,
        q99,
        mask,
        chunk: spec.chunk,
        decoding: spec.decoding,
    })
}

fn tune_err(e: rudder_tune::TuneError) -> FlowError {
    FlowError::from(e)
}

impl VlaTrainer {
    /// A freshly initialised model (seeded) and optimiser for `data`.
    pub fn new(cfg: TrainConfig, data: &DemoDataset) -> Result<Self, FlowError> {
        if cfg.batch_size == 0 {
            return Err(FlowError::input("batch_size", "must be > 0"));
        }
        let tokenizer = cfg
            .model
            .tokenizer(data.episodes.iter().map(|e| e.instruction.as_str()))?;
        let model_cfg = match cfg.model.head {
            HeadKind::Flow => {
                ModelConfig::Flow(Box::new(cfg.model.pi0_config(tokenizer.vocab_size())?))
            }
            HeadKind::Tokens => ModelConfig::Tokens(Box::new(
                cfg.model.paligemma_config(tokenizer.vocab_size())?,
            )),
        };
        let device = Device::Cpu;
        let varmap = VarMap::new();
        // Creates every variable (zeros) under its Hub name.
        model_cfg.build(VarBuilder::from_varmap(&varmap, DType::F32, &device))?;
        let mut params: Vec<(String, Var)> = varmap
            .data()
            .lock()
            .map_err(|_| FlowError::input("varmap", "poisoned lock"))?
            .iter()
            .map(|(n, v)| (n.clone(), v.clone()))
            .collect();
        params.sort_by(|a, b| a.0.cmp(&b.0));
        let mut init = Rng::new(cfg.seed ^ 0x5EED_1417);
        for (name, var) in &params {
            let shape = var.shape().clone();
            let n = shape.elem_count();
            let vals: Vec<f32> = if shape.rank() == 1 {
                let one = name.ends_with(".weight") && is_layer_norm(name);
                vec![if one { 1.0 } else { 0.0 }; n]
            } else {
                // Embedding tables: normal(0, 0.02); matrices: LeCun normal (1 / sqrt(fan_in)).
                let std = if name.ends_with("embed_tokens.weight")
                    || name.ends_with("position_embedding.weight")
                {
                    0.02
                } else {
                    let fan_in: usize = shape.dims()[1..].iter().product();
                    1.0 / (fan_in.max(1) as f32).sqrt()
                };
                gaussian(&mut init, n)
                    .into_iter()
                    .map(|x| x * std)
                    .collect()
            };
            var.set(&Tensor::from_vec(vals, shape, &device)?)?;
        }
        let action_tokens = match cfg.model.head {
            HeadKind::Flow => None,
            HeadKind::Tokens => Some(action_tokens(&cfg.model, data)?),
        };
        let stats = data.stats();
        let rng = Rng::new(cfg.seed);
        Self::assemble(
            cfg,
            Parts {
                params,
                stats,
                action_tokens,
                tokenizer,
                lora: None,
                model_cfg,
                varmap,
            },
            rng,
            data.samples.len(),
        )
    }

    /// The trainer over `parts`, its data order shuffled by `rng`.
    fn assemble(
        cfg: TrainConfig,
        parts: Parts,
        mut rng: Rng,
        frames: usize,
    ) -> Result<Self, FlowError> {
        let mut order: Vec<u32> = (0..frames as u32).collect();
        rng.shuffle(&mut order);
        let optim = AdamWConfig {
            lr: cfg.lr,
            weight_decay: cfg.weight_decay,
            ..Default::default()
        };
        Ok(Self {
            sched: CosineSchedule {
                base_lr: cfg.lr,
                warmup_steps: cfg.warmup_steps,
                total_steps: cfg.steps,
            },
            opt: AdamW::new(parts.params, optim)?,
            stats: parts.stats,
            action_tokens: parts.action_tokens,
            tokenizer: parts.tokenizer,
            lora: parts.lora,
            model_cfg: parts.model_cfg,
            varmap: parts.varmap,
            cfg,
            rng,
            order,
            cursor: 0,
            epoch: 0,
            last_loss: None,
            device: Device::Cpu,
        })
    }

    /// LoRA fine-tuning of the checkpoint `base` (trained by `rudder train vla`: its
    /// `training.json` gives the architecture, which `cfg.model` is replaced by). The base's
    /// tokenizer, normalisation and action bins are kept.
    pub fn new_lora(
        mut cfg: TrainConfig,
        data: &DemoDataset,
        base: &Path,
        lora: LoraConfig,
    ) -> Result<Self, FlowError> {
        if cfg.batch_size == 0 {
            return Err(FlowError::input("batch_size", "must be > 0"));
        }
        let file_err = |path: PathBuf, problem: String| FlowError::File { path, problem };
        let ip = base.join("training.json");
        let text = std::fs::read_to_string(&ip).map_err(|e| {
            file_err(
                ip.clone(),
                format!("{e} (LoRA needs a checkpoint written by `rudder train vla`)"),
            )
        })?;
        let info: TrainingInfo = serde_json::from_str(&text)
            .map_err(|e| file_err(ip.clone(), format!("not a training.json: {e}")))?;
        cfg.model = info.config.model;
        let device = Device::Cpu;
        let mut model = load_model(base, &device)?.model;
        let (model_cfg, image_id) = match &model {
            AnyModel::Pi0(m) => (
                ModelConfig::Flow(Box::new(m.cfg.clone())),
                m.cfg.vlm.image_token_id,
            ),
            AnyModel::PaliGemma(m) => (
                ModelConfig::Tokens(Box::new(m.cfg.clone())),
                m.cfg.image_token_id,
            ),
            _ => {
                return Err(file_err(
                    base.join("config.json"),
                    "not a VLA checkpoint (pi0 or PaliGemma)".into(),
                ))
            }
        };
        let tokenizer = PromptTokenizer::load(base, image_id as usize)?;
        let stats = match cfg.model.head {
            HeadKind::Flow => {
                let np = base.join("normalization.json");
                let text = std::fs::read_to_string(&np)
                    .map_err(|e| file_err(np.clone(), e.to_string()))?;
                serde_json::from_str(&text)
                    .map_err(|e| file_err(np.clone(), format!("not a normalization.json: {e}")))?
            }
            HeadKind::Tokens => data.stats(),
        };
        let action_tokens = match cfg.model.head {
            HeadKind::Flow => None,
            HeadKind::Tokens => Some(ActionTokens::load(
                &base.join("action_tokens.json"),
                model_cfg.vocab_size(),
            )?),
        };
        let mut rng = Rng::new(cfg.seed);
        let mut lora = lora;
        lora.base_model_name_or_path = Some(base.display().to_string());
        let params = peft::attach_new(&mut model, &lora, "default", &mut rng, None)?;
        Self::assemble(
            cfg,
            Parts {
                params,
                stats,
                action_tokens,
                tokenizer,
                lora: Some(LoraRun {
                    base: base.to_path_buf(),
                    config: lora,
                    model,
                }),
                model_cfg,
                varmap: VarMap::new(),
            },
            rng,
            data.samples.len(),
        )
    }

    pub fn step_count(&self) -> u64 {
        self.opt.step
    }

    pub fn num_parameters(&self) -> usize {
        self.opt.params.iter().map(|(_, v)| v.elem_count()).sum()
    }

    /// The model over the current variables.
    pub fn model(&self) -> Result<TrainModel, FlowError> {
        if let Some(l) = &self.lora {
            // A clone shares every tensor (the adapters' variables included).
            return match &l.model {
                AnyModel::Pi0(m) => Ok(TrainModel::Flow(m.clone())),
                AnyModel::PaliGemma(m) => Ok(TrainModel::Tokens(m.clone())),
                _ => Err(FlowError::input("lora", "not a VLA model")),
            };
        }
        self.model_cfg.build(VarBuilder::from_varmap(
            &self.varmap,
            DType::F32,
            &self.device,
        ))
    }

    fn next_indices(&mut self) -> Vec<u32> {
        let mut out = Vec::with_capacity(self.cfg.batch_size);
        while out.len() < self.cfg.batch_size {
            if self.cursor >= self.order.len() {
                self.cursor = 0;
                self.epoch += 1;
                self.rng.shuffle(&mut self.order);
            }
            out.push(self.order[self.cursor]);
            self.cursor += 1;
        }
        out
    }

    /// The batch's model inputs, normalised state and normalised target chunks.
    fn batch(
        &self,
        data: &DemoDataset,
        idx: &[u32],
    ) -> Result<(pi0::Inputs, Tensor, Tensor), FlowError> {
        let spec = &self.cfg.model;
        let b = idx.len();
        let size = spec.image_size;
        let plane = 3 * size * size;
        let per_image = self.model_cfg.vision().num_patches();
        let h = spec.chunk;
        let mut pixels = Vec::with_capacity(b * 2 * plane);
        let mut states = Vec::with_capacity(b * STATE_DIM);
        let mut actions = Vec::with_capacity(b * h * ACTION_DIM);
        let mut prompts = Vec::with_capacity(b);
        let sn = self.stats.state.mean_std();
        let an = self.stats.actions.mean_std();
        for &i in idx {
            let (e, t) = data.samples[i as usize];
            let ep = &data.episodes[e as usize];
            let t = t as usize;
            for (cam, name) in CAMERAS.iter().enumerate() {
                pixels.extend(preprocess::to_pixels(
                    name,
                    ep.image(cam, t),
                    ep.height,
                    ep.width,
                    size,
                )?);
            }
            let mut s: Vec<f64> = ep.state_at(t).iter().map(|&v| v as f64).collect();
            sn.normalize(&mut s);
            states.extend(s.iter().map(|&v| v as f32));
            for k in 0..h {
                let mut a: Vec<f64> = ep.action_at(t + k).iter().map(|&v| v as f64).collect();
                an.normalize(&mut a);
                actions.extend(a.iter().map(|&v| v as f32));
            }
            // Same ids as VlaPolicy::infer_raw.
            prompts.push(
                self.tokenizer
                    .encode(&ep.instruction, spec.max_prompt_tokens)?,
            );
        }
        let longest = prompts.iter().map(Vec::len).max().unwrap_or(1);
        let image_token = self.model_cfg.image_token_id();
        let seq = 2 * per_image + longest;
        let mut ids = Vec::with_capacity(b * seq);
        let mut mask = Vec::with_capacity(b);
        for p in &prompts {
            ids.extend(std::iter::repeat_n(image_token, 2 * per_image));
            ids.extend(p);
            ids.extend(std::iter::repeat_n(prompt::PAD, longest - p.len()));
            let mut m = vec![true; 2 * per_image + p.len()];
            m.resize(seq, false);
            mask.push(m);
        }
        let dev = &self.device;
        let inputs = pi0::Inputs {
            input_ids: Tensor::from_vec(ids, (b, seq), dev)?,
            pixel_values: Tensor::from_vec(pixels, (b, 2, 3, size, size), dev)?,
            pixel_attention_mask: Some(vec![vec![true, true]; b]),
            attention_mask: Some(mask),
        };
        Ok((
            inputs,
            Tensor::from_vec(states, (b, STATE_DIM), dev)?,
            Tensor::from_vec(actions, (b, h, ACTION_DIM), dev)?,
        ))
    }

    /// The flow-matching loss of one batch with the current weights (no update); draws its
    /// noise and times from `rng`.
    pub fn batch_loss(
        &self,
        model: &TrainModel,
        data: &DemoDataset,
        idx: &[u32],
        rng: &mut Rng,
    ) -> Result<Tensor, FlowError> {
        let model = match model {
            TrainModel::Flow(m) => m,
            TrainModel::Tokens(m) => return self.tokens_loss(m, data, idx),
        };
        let (inputs, state, actions) = self.batch(data, idx)?;
        let b = idx.len();
        let n = b * self.cfg.model.chunk * ACTION_DIM;
        let times: Vec<f32> = (0..b)
            .map(|_| (rng.next_f64().powf(1.0 / 1.5) * 0.999 + 0.001) as f32)
            .collect();
        let noise = Tensor::from_vec(gaussian(rng, n), actions.dims(), &self.device)?;
        let t = Tensor::from_vec(times, b, &self.device)?;
        let out = model.loss(&inputs, &state, &noise, &actions, &t, None)?;
        out.loss
            .ok_or_else(|| FlowError::input("loss", "the model returned no loss"))
    }

    /// Cross-entropy of the action tokens of the frames `idx` (no randomness: the tokens
    /// head has no noise or times to draw).
    fn tokens_loss(
        &self,
        model: &paligemma::Model,
        data: &DemoDataset,
        idx: &[u32],
    ) -> Result<Tensor, FlowError> {
        let spec = self
            .action_tokens
            .as_ref()
            .ok_or_else(|| FlowError::input("action_tokens", "the tokens head has no bins"))?;
        let (inputs, _, _) = self.batch(data, idx)?;
        let vocab = match &self.model_cfg {
            ModelConfig::Tokens(c) => c.text.0.vocab_size,
            ModelConfig::Flow(_) => {
                return Err(FlowError::input(
                    "head",
                    "a flow model has no action tokens",
                ))
            }
        };
        let ids: Vec<Vec<u32>> = inputs.input_ids.to_vec2()?;
        let valid = inputs.attention_mask.clone().unwrap_or_default();
        let rows: Vec<tokens::Row> = idx
            .iter()
            .zip(ids.iter().zip(&valid))
            .map(|(&i, (row, v))| {
                let (e, t) = data.samples[i as usize];
                let ep = &data.episodes[e as usize];
                let n = v.iter().filter(|&&x| x).count();
                let actions = (0..spec.chunk)
                    .flat_map(|k| {
                        let a = ep.action_at(t as usize + k);
                        (0..ACTION_DIM).map(move |d| spec.token(vocab, d, a[d] as f64))
                    })
                    .collect();
                tokens::Row {
                    prefix: row[..n].to_vec(),
                    actions,
                }
            })
            .collect();
        Ok(tokens::loss(
            model,
            &inputs.pixel_values,
            &rows,
            spec.decoding,
            spec.len(),
        )?)
    }

    /// One optimiser step on the next batch.
    pub fn step(&mut self, data: &DemoDataset) -> Result<StepStats, FlowError> {
        let t0 = Instant::now();
        let idx = self.next_indices();
        let model = self.model()?;
        let mut rng = self.rng;
        let loss = self.batch_loss(&model, data, &idx, &mut rng)?;
        self.rng = rng;
        let loss_v = loss.to_dtype(DType::F64)?.to_scalar::<f64>()?;
        if !loss_v.is_finite() {
            return Err(FlowError::input(
                "loss",
                format!("non-finite loss at step {}", self.opt.step + 1),
            ));
        }
        let store = loss.backward()?;
        let mut grads = collect_grads(&self.opt.params, &store);
        drop(store);
        drop(model);
        let grad_norm =
            clip_grad_norm(&mut grads, self.cfg.max_grad_norm.unwrap_or(f64::INFINITY))?;
        let lr = self.sched.lr(self.opt.step);
        self.opt.step(&grads, lr)?;
        self.last_loss = Some(loss_v);
        Ok(StepStats {
            step: self.opt.step,
            loss: loss_v,
            lr,
            grad_norm,
            seconds: t0.elapsed().as_secs_f64(),
        })
    }

    /// Writes the inference files (config, weights, normalisation, policy settings and
    /// `training.json`) into `dir`.
    pub fn write_policy(&self, dir: &Path, data: &DemoDataset) -> Result<(), FlowError> {
        let spec = &self.cfg.model;
        let write_json = |name: &str, v: &serde_json::Value| -> Result<(), FlowError> {
            let bytes =
                serde_json::to_vec_pretty(v).map_err(|e| FlowError::input(name, e.to_string()))?;
            write_atomic(&dir.join(name), &bytes).map_err(tune_err)
        };
        let config = match spec.head {
            HeadKind::Flow => spec.config_json(self.tokenizer.vocab_size()),
            HeadKind::Tokens => spec.tokens_config_json(self.tokenizer.vocab_size()),
        };
        write_json("config.json", &config)?;
        if let Some(t) = &self.action_tokens {
            write_json(
                "action_tokens.json",
                &serde_json::to_value(t)
                    .map_err(|e| FlowError::input("action_tokens.json", e.to_string()))?,
            )?;
        }
        self.tokenizer.save(&dir.join("tokenizer.json"))?;
        let w: HashMap<String, Tensor> = match &self.lora {
            None => self
                .opt
                .params
                .iter()
                .map(|(n, v)| (n.clone(), v.as_detached_tensor()))
                .collect(),
            // The adapter in PEFT's format, and the merged weights for everything that loads
            // plain checkpoints (eval, serve, steering).
            Some(l) => {
                peft::save_adapter(&mut l.model.clone(), &l.config, "default", dir)
                    .map_err(tune_err)?;
                let mut merged = l.model.clone();
                peft::merge(&mut merged).map_err(tune_err)?;
                merged
                    .named_tensors()?
                    .into_iter()
                    .map(|(n, t)| (n, t.detach()))
                    .collect()
            }
        };
        let mut meta = HashMap::new();
        meta.insert("format".to_string(), "pt".to_string());
        save_safetensors_atomic(&w, Some(meta), &dir.join("model.safetensors"))
            .map_err(tune_err)?;
        let s = &self.stats;
        // The tokens head reads no state and carries its own q01 / q99 bins.
        if spec.head == HeadKind::Flow {
            write_json(
                "normalization.json",
                &json!({
                    "state": {"mean": s.state.mean, "std": s.state.std},
                    "actions": {"mean": s.actions.mean, "std": s.actions.std}
                }),
            )?;
        }
        write_json("policy.json", &spec.policy_json(self.cfg.seed))?;
        let info = TrainingInfo {
            data: data.dir.clone(),
            suite: data.meta.suite.clone(),
            demo_seed: data.meta.seed,
            episodes_per_task: data.meta.episodes_per_task(),
            frames: data.samples.len(),
            config: self.cfg.clone(),
            step: self.opt.step,
            loss: self.last_loss,
            lora_base: self.lora.as_ref().map(|l| l.base.clone()),
        };
        write_json(
            "training.json",
            &serde_json::to_value(&info)
                .map_err(|e| FlowError::input("training.json", e.to_string()))?,
        )
    }

    /// Writes `root/checkpoint-{step}` atomically (inference files + optimiser and trainer
    /// state), points `root/latest` at it and keeps the newest `keep`.
    pub fn save(&self, root: &Path, keep: usize, data: &DemoDataset) -> Result<PathBuf, FlowError> {
        let name = format!("checkpoint-{}", self.opt.step);
        let dir = save_dir_atomic(root, &name, |tmp| {
            self.write_policy(tmp, data)
                .map_err(|e| rudder_tune::TuneError::Invalid(e.to_string()))?;
            let mut o: HashMap<String, Tensor> = HashMap::new();
            for (i, (n, _)) in self.opt.params.iter().enumerate() {
                o.insert(format!("m.{n}"), self.opt.m[i].clone());
                o.insert(format!("v.{n}"), self.opt.v[i].clone());
            }
            save_safetensors_atomic(&o, None, &tmp.join("optimizer.safetensors"))?;
            let st = TrainerState {
                step: self.opt.step,
                epoch: self.epoch,
                cursor: self.cursor,
                order: self.order.clone(),
                rng: self.rng.state,
                params: self.opt.params.iter().map(|(n, _)| n.clone()).collect(),
                config: self.cfg.clone(),
                last_loss: self.last_loss,
            };
            let text = serde_json::to_vec(&st)
                .map_err(|e| rudder_tune::TuneError::Invalid(e.to_string()))?;
            write_atomic(&tmp.join("trainer_state.json"), &text)
        })
        .map_err(tune_err)?;
        prune(root, keep.max(1)).map_err(tune_err)?;
        Ok(dir)
    }

    /// Restores the newest checkpoint under `root` (weights, optimiser moments, step, data
    /// order and generator); None when there is none. The architecture must match.
    pub fn resume(&mut self, root: &Path) -> Result<Option<PathBuf>, FlowError> {
        let Some(dir) = latest(root).map_err(tune_err)? else {
            return Ok(None);
        };
        let sp = dir.join("trainer_state.json");
        let text = std::fs::read_to_string(&sp).map_err(|e| FlowError::File {
            path: sp.clone(),
            problem: e.to_string(),
        })?;
        let st: TrainerState = serde_json::from_str(&text).map_err(|e| FlowError::File {
            path: sp.clone(),
            problem: format!("not a trainer state: {e}"),
        })?;
        if st.config.model != self.cfg.model {
            return Err(FlowError::File {
                path: sp,
                problem: format!(
                    "the checkpoint's architecture {:?} differs from this run's {:?} (use the \
                     same flags, or a new --out)",
                    st.config.model, self.cfg.model
                ),
            });
        }
        let names: Vec<String> = self.opt.params.iter().map(|(n, _)| n.clone()).collect();
        if st.params != names {
            return Err(FlowError::File {
                path: sp,
                problem: "the checkpoint's parameters differ from this run's".into(),
            });
        }
        if st.order.len() != self.order.len() {
            return Err(FlowError::File {
                path: sp,
                problem: format!(
                    "the checkpoint was trained on {} frames, this data set has {}",
                    st.order.len(),
                    self.order.len()
                ),
            });
        }
        let dev = self.device.clone();
        let weights = if self.lora.is_some() {
            "adapter_model.safetensors"
        } else {
            "model.safetensors"
        };
        let w = TensorStore::load_file(&dir.join(weights), &dev).map_err(tune_err)?;
        let o =
            TensorStore::load_file(&dir.join("optimizer.safetensors"), &dev).map_err(tune_err)?;
        for (i, (n, v)) in self.opt.params.iter().enumerate() {
            let t = w.get(n).map_err(tune_err)?;
            if t.dims() != v.dims() {
                return Err(tune_err(w.tensor_error(
                    n,
                    format!("shape {:?}, this run has {:?}", t.dims(), v.dims()),
                )));
            }
            v.set(t)?;
            self.opt.m[i] = o.get(&format!("m.{n}")).map_err(tune_err)?.clone();
            self.opt.v[i] = o.get(&format!("v.{n}")).map_err(tune_err)?.clone();
        }
        self.opt.step = st.step;
        self.epoch = st.epoch;
        self.cursor = st.cursor;
        self.order = st.order;
        self.rng.state = st.rng;
        self.last_loss = st.last_loss;
        // A longer (or shorter) run than the checkpoint's keeps this run's horizon.
        Ok(Some(dir))
    }
}
