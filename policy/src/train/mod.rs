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
//! - Training: rudder-tune's one trainer ([`rudder_tune::train::Trainer`]: data order, AdamW,
//!   cosine schedule with linear warmup, global-norm clipping, atomic checkpoints and resume)
//!   with this crate's [`Vla`] family supplying the loss and the checkpoint files. The run's
//!   generator shuffles the frames and then draws each step's times and noise.
//! - Weights live in a `VarMap` under their Hub names; each step rebuilds the model from it
//!   (a transposed copy of every weight, negligible at this size) so gradients reach the
//!   variables and AdamW's in-place updates are seen by the next step.
//!
//! A checkpoint folder `OUT/checkpoint-N` holds `config.json`, `model.safetensors`,
//! `normalization.json`, `policy.json`, `training.json` (data set, split, architecture flags)
//! and, for resuming, `optimizer.safetensors` + `trainer_state.json` (step, sample order,
//! cursor, generator state, config, last loss). `OUT/latest` names the newest.
//!
//! Modules: [`spec`] (architecture and configs), `init` (a seeded fresh model, or LoRA on a
//! checkpoint), [`family`] (batches, losses, checkpoint files).

use std::path::{Path, PathBuf};

use candle_core::{Tensor, Var};
use rudder_tune::peft::LoraConfig;
use rudder_tune::train::adamw::AdamWConfig;
use rudder_tune::train::{Rng, Trainer, TrainerConfig};

use crate::dataset::DemoDataset;
use crate::tokenizer::PromptTokenizer;
use crate::tokens::ActionTokens;
use crate::FlowError;

pub mod family;
mod init;
pub mod spec;

pub use family::{LoraRun, Vla};
pub use rudder_tune::train::StepStats;
pub use spec::{
    HeadKind, ModelConfig, ModelSpec, TokenizerKind, TrainConfig, TrainModel, TrainingInfo,
    BYTE_TEXT_IDS, CAMERAS,
};

/// A VLA run: the [`Vla`] family on rudder-tune's trainer.
pub struct VlaTrainer {
    trainer: Trainer<Vla>,
}

impl VlaTrainer {
    /// A freshly initialised model (seeded) and optimiser for `data`.
    pub fn new(cfg: TrainConfig, data: &DemoDataset) -> Result<Self, FlowError> {
        Self::assemble(init::from_scratch(cfg, data)?, data)
    }

    /// LoRA fine-tuning of the checkpoint `base` (trained by `rudder train vla`: its
    /// `training.json` gives the architecture, which `cfg.model` is replaced by). The base's
    /// tokenizer, normalisation and action bins are kept.
    pub fn new_lora(
        cfg: TrainConfig,
        data: &DemoDataset,
        base: &Path,
        lora: LoraConfig,
    ) -> Result<Self, FlowError> {
        Self::assemble(init::lora(cfg, data, base, lora)?, data)
    }

    /// The trainer over `start`, its data order shuffled by `start.rng`.
    fn assemble(start: init::Start, data: &DemoDataset) -> Result<Self, FlowError> {
        let cfg = &start.vla.cfg;
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
        Ok(Self {
            trainer: Trainer::new(start.vla, start.params, tc, data.samples.len(), start.rng)?,
        })
    }

    /// The family: configuration, tokenizer, normalisation, bins, LoRA set-up.
    pub fn vla(&self) -> &Vla {
        &self.trainer.family
    }

    pub fn trainer(&self) -> &Trainer<Vla> {
        &self.trainer
    }

    pub fn cfg(&self) -> &TrainConfig {
        &self.trainer.family.cfg
    }

    /// Bins of the tokens head (None for flow).
    pub fn action_tokens(&self) -> Option<&ActionTokens> {
        self.trainer.family.action_tokens.as_ref()
    }

    pub fn tokenizer(&self) -> &PromptTokenizer {
        &self.trainer.family.tokenizer
    }

    /// Set for a LoRA fine-tune.
    pub fn lora(&self) -> Option<&LoraRun> {
        self.trainer.family.lora.as_ref()
    }

    /// The trainable variables under their names, in the optimiser's order.
    pub fn params(&self) -> &[(String, Var)] {
        self.trainer.params()
    }

    pub fn step_count(&self) -> u64 {
        self.trainer.step_count()
    }

    pub fn num_parameters(&self) -> usize {
        self.trainer.num_parameters()
    }

    /// The model over the current variables.
    pub fn model(&self) -> Result<TrainModel, FlowError> {
        self.trainer.family.model()
    }

    /// The loss of the frames `idx` with the current weights (no update); the flow head draws
    /// its times and noise from `rng`.
    pub fn batch_loss(
        &self,
        model: &TrainModel,
        data: &DemoDataset,
        idx: &[u32],
        rng: &mut Rng,
    ) -> Result<Tensor, FlowError> {
        self.trainer.family.batch_loss(model, data, idx, rng)
    }

    /// One optimiser step on the next batch.
    pub fn step(&mut self, data: &DemoDataset) -> Result<StepStats, FlowError> {
        self.trainer.step(data)
    }

    /// Writes the inference files (config, weights, normalisation, policy settings and
    /// `training.json`) into `dir`.
    pub fn write_policy(&self, dir: &Path, data: &DemoDataset) -> Result<(), FlowError> {
        self.trainer
            .family
            .write_policy(dir, &self.trainer.snapshot(), data)
    }

    /// Writes `root/checkpoint-{step}` atomically (inference files + optimiser and trainer
    /// state), points `root/latest` at it and keeps the newest `keep`.
    pub fn save(&self, root: &Path, keep: usize, data: &DemoDataset) -> Result<PathBuf, FlowError> {
        self.trainer.save(root, keep, data, |_| Ok(()))
    }

    /// Restores the newest checkpoint under `root` (weights, optimiser moments, step, data
    /// order and generator); None when there is none. The architecture and the number of
    /// frames must match; a longer (or shorter) run keeps this run's horizon.
    pub fn resume(&mut self, root: &Path) -> Result<Option<PathBuf>, FlowError> {
        self.trainer.resume(root)
    }
}
