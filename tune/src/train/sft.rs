//! Supervised fine-tuning of a causal LM on [`super::Trainer`]: token cross-entropy with a
//! loss mask over padded variable-length batches, its gradients from the hand-written LoRA
//! pass where it covers the model and from candle autograd elsewhere. The checkpoint folder
//! holds `trainable.safetensors` (the trainable weights by name) beside the trainer's files;
//! the caller may add the PEFT adapter.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use candle_core::{Tensor, Var};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use super::adamw::AdamWConfig;
use super::lm_batch::LmBatch;
pub use super::lm_batch::SftExample;
use super::lora_backprop::LoraBackprop;
use super::trainer::{
    save_params, Family, Gradients, MicroBatch, Snapshot, StepStats, Trainer, TrainerConfig,
};
use super::Rng;
use crate::error::{Context, Result, TuneError};
use crate::models::decoder::Decoder;

/// Mean next-token cross-entropy over the counted positions of a right-padded batch. Right
/// padding needs no attention mask under a causal mask: real tokens never see the pads after
/// them, and pad positions are not counted.
pub fn causal_lm_loss(
    decoder: &Decoder,
    batch: &[&SftExample],
    pad: u32,
) -> candle_core::Result<(Tensor, usize)> {
    let mut lm = LmBatch::new(batch, pad)?;
    let ids = std::mem::take(&mut lm.ids);
    let ids = Tensor::from_vec(ids, (lm.batch, lm.seq), decoder.device())?;
    let (logits, _) = decoder.forward_ids(&ids, 0, None, None, false)?;
    let loss = super::cross_entropy::weighted_cross_entropy(&logits, &lm.targets, &lm.weights)?;
    Ok((loss, lm.counted))
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SftConfig {
    pub optim: AdamWConfig,
    pub warmup_steps: u64,
    /// Optimizer steps in the whole run (the schedule's horizon).
    pub total_steps: u64,
    pub max_grad_norm: Option<f64>,
    /// Micro-batches per optimizer step.
    pub grad_accum: usize,
    pub batch_size: usize,
    pub seed: u64,
    pub pad_id: u32,
}

impl Default for SftConfig {
    fn default() -> Self {
        Self {
            optim: AdamWConfig::default(),
            warmup_steps: 0,
            total_steps: 100,
            max_grad_norm: Some(1.0),
            grad_accum: 1,
            batch_size: 8,
            seed: 0,
            pad_id: 0,
        }
    }
}

/// How a step computes gradients: chosen on the first step, from the decoder it is given.
enum Backward {
    Unchosen,
    /// The hand-written pass (every trainable parameter is a LoRA adapter weight).
    LoraPass(Box<LoraBackprop>),
    /// candle autograd, and why the hand-written pass does not apply.
    Autograd(String),
}

/// The SFT family: the loss over token batches and how its gradients are computed.
pub struct Sft {
    cfg: SftConfig,
    /// Shared with the LoRA dropout layers; saved with each checkpoint.
    dropout_rng: Arc<Mutex<Rng>>,
    backward: Backward,
}

/// What an SFT step reads: the model (held by the caller, its trainable variables the
/// trainer's) and the examples.
pub struct SftInput<'a> {
    pub decoder: &'a Decoder,
    pub data: &'a [SftExample],
}

impl Sft {
    fn choose_backward(&mut self, decoder: &Decoder, params: &[(String, Var)]) -> String {
        if matches!(self.backward, Backward::Unchosen) {
            self.backward = if !LoraBackprop::covers(decoder, params) {
                Backward::Autograd("not every trainable weight is a LoRA adapter".into())
            } else {
                match LoraBackprop::new(decoder) {
                    Ok(p) => Backward::LoraPass(Box::new(p)),
                    Err(why) => Backward::Autograd(why),
                }
            };
        }
        match &self.backward {
            Backward::LoraPass(_) => "hand-written LoRA backward pass".into(),
            Backward::Autograd(why) => format!("candle autograd ({why})"),
            Backward::Unchosen => "undecided".into(),
        }
    }
}

impl Family for Sft {
    type Error = TuneError;
    type Input<'a> = SftInput<'a>;
    type SaveInput<'a> = ();

    fn micro_batch(
        &mut self,
        input: &SftInput<'_>,
        idx: &[usize],
        _rng: &mut Rng,
        params: &[(String, Var)],
    ) -> Result<MicroBatch> {
        self.choose_backward(input.decoder, params);
        let batch = idx
            .iter()
            .map(|&i| {
                input.data.get(i).ok_or_else(|| {
                    TuneError::Invalid(format!(
                        "sft: example {i} is outside the data ({} examples)",
                        input.data.len()
                    ))
                })
            })
            .collect::<Result<Vec<&SftExample>>>()?;
        let items = batch.iter().map(|e| e.tokens.len().saturating_sub(1)).sum();
        let pad = self.cfg.pad_id;
        let (counted, gradients) = match &self.backward {
            Backward::LoraPass(pass) => {
                let (loss, n, g) = pass
                    .loss_and_grads(input.decoder, &batch, pad)
                    .context("sft forward/backward")?;
                let grads = g.for_params(params);
                (n, Gradients::Computed { loss, grads })
            }
            _ => {
                let (loss, n) =
                    causal_lm_loss(input.decoder, &batch, pad).context("sft forward")?;
                (n, Gradients::Graph(loss))
            }
        };
        Ok(MicroBatch {
            counted,
            items,
            gradients,
        })
    }

    fn write_files(&self, dir: &Path, snap: &Snapshot<'_>, _input: &()) -> Result<()> {
        save_params(snap.params, &dir.join(self.weights_file()))
    }

    fn weights_file(&self) -> &str {
        "trainable.safetensors"
    }

    fn state(&self) -> Result<Map<String, Value>> {
        let mut m = Map::new();
        let dropout = self.dropout_rng.lock().map(|r| r.state).unwrap_or(0);
        m.insert("dropout_rng".into(), dropout.into());
        m.insert(
            "config".into(),
            serde_json::to_value(&self.cfg).map_err(|e| TuneError::Invalid(e.to_string()))?,
        );
        Ok(m)
    }

    fn restore(&mut self, state: &Map<String, Value>, path: &Path) -> Result<()> {
        let dropout = state
            .get("dropout_rng")
            .and_then(Value::as_u64)
            .ok_or_else(|| TuneError::Json {
                path: path.to_path_buf(),
                msg: "no `dropout_rng` (not an SFT checkpoint?)".into(),
            })?;
        if let Ok(mut r) = self.dropout_rng.lock() {
            r.state = dropout;
        }
        Ok(())
    }
}

/// Supervised fine-tuning: [`Sft`] on the one trainer.
pub struct SftTrainer {
    trainer: Trainer<Sft>,
}

impl SftTrainer {
    /// `params` are the trainable variables by name (LoRA A/B or full weights); `n_examples`
    /// is the data set size used for shuffling.
    pub fn new(
        params: Vec<(String, Var)>,
        cfg: SftConfig,
        n_examples: usize,
        dropout_rng: Arc<Mutex<Rng>>,
    ) -> Result<Self> {
        let tc = TrainerConfig {
            optim: cfg.optim,
            warmup_steps: cfg.warmup_steps,
            total_steps: cfg.total_steps,
            max_grad_norm: cfg.max_grad_norm,
            grad_accum: cfg.grad_accum,
            batch_size: cfg.batch_size,
        };
        let rng = Rng::new(cfg.seed);
        let family = Sft {
            cfg,
            dropout_rng,
            backward: Backward::Unchosen,
        };
        Ok(Self {
            trainer: Trainer::new(family, params, tc, n_examples, rng)?,
        })
    }

    pub fn cfg(&self) -> &SftConfig {
        &self.trainer.family.cfg
    }

    /// The trainable variables under their names, in the optimizer's order.
    pub fn params(&self) -> &[(String, Var)] {
        self.trainer.params()
    }

    pub fn trainer(&self) -> &Trainer<Sft> {
        &self.trainer
    }

    /// Computes gradients through candle autograd even where the hand-written LoRA pass
    /// applies (to compare the two, or to rule the pass out when debugging).
    pub fn prefer_autograd(&mut self) {
        self.trainer.family.backward = Backward::Autograd("requested".into());
    }

    /// Picks how gradients are computed for `decoder` (the first step does it anyway) and
    /// says which, for the log.
    pub fn choose_backward(&mut self, decoder: &Decoder) -> String {
        let t = &mut self.trainer;
        t.family.choose_backward(decoder, &t.opt.params)
    }

    pub fn step_count(&self) -> u64 {
        self.trainer.step_count()
    }

    /// One optimizer step over `grad_accum` micro-batches; [`StepStats::items`] counts the
    /// tokens read.
    pub fn step(&mut self, decoder: &Decoder, data: &[SftExample]) -> Result<StepStats> {
        self.trainer.step(&SftInput { decoder, data })
    }

    /// Writes `root/checkpoint-{step}` (trainable weights, optimizer moments, trainer state)
    /// atomically; `extra` may add files (e.g. the PEFT adapter) to the same folder.
    pub fn save(
        &self,
        root: &Path,
        keep: usize,
        extra: impl FnOnce(&Path) -> Result<()>,
    ) -> Result<PathBuf> {
        self.trainer.save(root, keep, &(), extra)
    }

    /// Restores the newest checkpoint under `root` into this trainer's variables; returns the
    /// folder, or None when there is none yet.
    pub fn resume(&mut self, root: &Path) -> Result<Option<PathBuf>> {
        self.trainer.resume(root)
    }
}
