//! Supervised fine-tuning of a causal LM: token cross-entropy with a loss mask over padded
//! variable-length batches, AdamW with a cosine schedule, clipping, accumulation, and
//! checkpoints that resume bit-identically.

use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use candle_core::{DType, Device, Tensor, Var};
use serde::{Deserialize, Serialize};

use super::adamw::{clip_grad_norm, collect_grads, AdamW, AdamWConfig};
use super::checkpoint::{latest, prune, save_dir_atomic};
use super::{CosineSchedule, Rng};
use crate::checkpoint::{save_safetensors_atomic, write_atomic, TensorStore};
use crate::error::{Context, Result, TuneError};
use crate::models::decoder::Decoder;

/// One training sequence. `loss_mask[i]` says whether predicting `tokens[i]` (from the tokens
/// before it) counts; index 0 is never predicted. Empty mask = every token counts.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SftExample {
    pub tokens: Vec<u32>,
    #[serde(default)]
    pub loss_mask: Vec<bool>,
}

impl SftExample {
    fn counts(&self, i: usize) -> bool {
        self.loss_mask
            .get(i)
            .copied()
            .unwrap_or(self.loss_mask.is_empty())
    }
}

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

/// Adds each micro-batch gradient to its running sum (a parameter with no gradient yet takes
/// the new one as is).
fn accumulate(grads: &mut [Option<Tensor>], new: Vec<Option<Tensor>>) -> Result<()> {
    for (g, new) in grads.iter_mut().zip(new) {
        *g = match (g.take(), new) {
            (Some(a), Some(b)) => Some((a + b).context("accumulate")?),
            (a, b) => a.or(b),
        };
    }
    Ok(())
}

/// A right-padded batch laid out for next-token prediction: one target and loss weight per
/// position. The last position of each sequence predicts nothing (weight 0), so the logits
/// need no narrowing.
#[derive(Debug, Clone)]
pub struct LmBatch {
    pub batch: usize,
    pub seq: usize,
    /// `[batch * seq]` input ids, pads after each sequence.
    pub ids: Vec<u32>,
    pub targets: Vec<u32>,
    /// `1 / counted` where the position counts, else 0: the weighted sum is the mean loss.
    pub weights: Vec<f32>,
    pub counted: usize,
}

impl LmBatch {
    /// Sequences `seqs` of this batch, keeping the weights (so shard losses add up to the
    /// whole batch's mean).
    pub fn shard(&self, seqs: std::ops::Range<usize>) -> Self {
        let rows = seqs.start * self.seq..seqs.end * self.seq;
        Self {
            batch: seqs.len(),
            seq: self.seq,
            ids: self.ids[rows.clone()].to_vec(),
            targets: self.targets[rows.clone()].to_vec(),
            weights: self.weights[rows].to_vec(),
            counted: self.counted,
        }
    }

    pub fn new(batch: &[&SftExample], pad: u32) -> candle_core::Result<Self> {
        let b = batch.len();
        let t = batch.iter().map(|e| e.tokens.len()).max().unwrap_or(0);
        if b == 0 || t < 2 {
            candle_core::bail!("sft: a batch needs sequences of at least 2 tokens");
        }
        let mut ids = Vec::with_capacity(b * t);
        let mut targets = Vec::with_capacity(b * t);
        let mut counted = Vec::with_capacity(b * t);
        let mut n = 0usize;
        for e in batch {
            for i in 0..t {
                ids.push(e.tokens.get(i).copied().unwrap_or(pad));
            }
            for i in 1..=t {
                let real = i < e.tokens.len();
                targets.push(if real { e.tokens[i] } else { pad });
                let m = real && e.counts(i);
                n += m as usize;
                counted.push(m);
            }
        }
        if n == 0 {
            candle_core::bail!(
                "sft: no token in the batch counts towards the loss (check loss_mask)"
            );
        }
        let weights = counted
            .iter()
            .map(|&m| if m { 1.0 / n as f32 } else { 0.0 })
            .collect();
        Ok(Self {
            batch: b,
            seq: t,
            ids,
            targets,
            weights,
            counted: n,
        })
    }
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

#[derive(Debug, Clone, Serialize)]
pub struct StepStats {
    pub step: u64,
    pub loss: f64,
    pub lr: f64,
    pub grad_norm: f64,
    pub tokens: usize,
    pub tokens_per_s: f64,
}

#[derive(Debug, Serialize, Deserialize)]
struct TrainerState {
    step: u64,
    epoch: u64,
    cursor: usize,
    order: Vec<usize>,
    rng: u64,
    dropout_rng: u64,
    config: SftConfig,
    params: Vec<String>,
}

pub struct SftTrainer {
    pub cfg: SftConfig,
    pub opt: AdamW,
    pub sched: CosineSchedule,
    pub rng: Rng,
    /// Shared with LoRA dropout layers.
    pub dropout_rng: Arc<Mutex<Rng>>,
    order: Vec<usize>,
    cursor: usize,
    epoch: u64,
    backward: Backward,
}

/// How a step computes gradients: chosen on the first step, from the decoder it is given.
enum Backward {
    Unchosen,
    /// The hand-written pass (every trainable parameter is a LoRA adapter weight).
    LoraPass(Box<super::lora_backprop::LoraBackprop>),
    /// candle autograd, and why the hand-written pass does not apply.
    Autograd(String),
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
        if cfg.batch_size == 0 || cfg.grad_accum == 0 {
            return Err(TuneError::Invalid(
                "sft: batch_size and grad_accum must be > 0".into(),
            ));
        }
        if n_examples == 0 {
            return Err(TuneError::Invalid("sft: no training examples".into()));
        }
        let mut rng = Rng::new(cfg.seed);
        let mut order: Vec<usize> = (0..n_examples).collect();
        rng.shuffle(&mut order);
        Ok(Self {
            sched: CosineSchedule {
                base_lr: cfg.optim.lr,
                warmup_steps: cfg.warmup_steps,
                total_steps: cfg.total_steps,
            },
            opt: AdamW::new(params, cfg.optim).context("creating optimizer state")?,
            cfg,
            rng,
            dropout_rng,
            order,
            cursor: 0,
            epoch: 0,
            backward: Backward::Unchosen,
        })
    }

    /// Computes gradients through candle autograd even where the hand-written LoRA pass
    /// applies (to compare the two, or to rule the pass out when debugging).
    pub fn prefer_autograd(&mut self) {
        self.backward = Backward::Autograd("requested".into());
    }

    /// Picks how gradients are computed for `decoder` (the first step does it anyway) and
    /// says which, for the log.
    pub fn choose_backward(&mut self, decoder: &Decoder) -> String {
        use super::lora_backprop::LoraBackprop;
        if matches!(self.backward, Backward::Unchosen) {
            self.backward = if !LoraBackprop::covers(decoder, &self.opt.params) {
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

    pub fn step_count(&self) -> u64 {
        self.opt.step
    }

    fn next_indices(&mut self) -> Vec<usize> {
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

    /// One optimizer step over `grad_accum` micro-batches.
    pub fn step(&mut self, decoder: &Decoder, data: &[SftExample]) -> Result<StepStats> {
        let t0 = Instant::now();
        let micro: Vec<Vec<usize>> = (0..self.cfg.grad_accum)
            .map(|_| self.next_indices())
            .collect();
        let total_tokens: usize = micro
            .iter()
            .flatten()
            .map(|&i| data[i].tokens.len().saturating_sub(1))
            .sum();
        self.choose_backward(decoder);
        let (loss_sum, mut grads) = match &self.backward {
            Backward::LoraPass(pass) => {
                let mut parts = Vec::with_capacity(micro.len());
                let mut counted = 0usize;
                for idx in &micro {
                    let batch: Vec<&SftExample> = idx.iter().map(|&i| &data[i]).collect();
                    let (loss, n, g) = pass
                        .loss_and_grads(decoder, &batch, self.cfg.pad_id)
                        .context("sft forward/backward")?;
                    counted += n;
                    parts.push((loss, n, g.for_params(&self.opt.params)));
                }
                let mut grads: Vec<Option<Tensor>> = vec![None; self.opt.params.len()];
                let mut loss_sum = 0f64;
                for (loss, n, part) in parts {
                    let w = n as f64 / counted as f64;
                    loss_sum += loss * w;
                    let scaled = part
                        .into_iter()
                        .map(|new| match new {
                            Some(t) if w != 1.0 => t.affine(w, 0.0).map(Some),
                            other => Ok(other),
                        })
                        .collect::<candle_core::Result<Vec<_>>>()
                        .context("scale gradient")?;
                    accumulate(&mut grads, scaled)?;
                }
                (loss_sum, grads)
            }
            _ => self.autograd_grads(decoder, data, &micro)?,
        };
        let grad_norm = match self.cfg.max_grad_norm {
            Some(m) => clip_grad_norm(&mut grads, m).context("clip")?,
            None => {
                let mut g2 = grads.clone();
                clip_grad_norm(&mut g2, f64::INFINITY).context("norm")?
            }
        };
        let lr = self.sched.lr(self.opt.step);
        self.opt.step(&grads, lr).context("optimizer step")?;
        let dt = t0.elapsed().as_secs_f64();
        Ok(StepStats {
            step: self.opt.step,
            loss: loss_sum,
            lr,
            grad_norm,
            tokens: total_tokens,
            tokens_per_s: total_tokens as f64 / dt.max(1e-9),
        })
    }

    /// Mean loss and gradients over the micro-batches through candle autograd.
    fn autograd_grads(
        &self,
        decoder: &Decoder,
        data: &[SftExample],
        micro: &[Vec<usize>],
    ) -> Result<(f64, Vec<Option<Tensor>>)> {
        let mut grads: Vec<Option<Tensor>> = vec![None; self.opt.params.len()];
        let mut loss_sum = 0f64;
        let mut counted = 0usize;
        let mut losses = Vec::new();
        for idx in micro {
            let batch: Vec<&SftExample> = idx.iter().map(|&i| &data[i]).collect();
            let (loss, n) =
                causal_lm_loss(decoder, &batch, self.cfg.pad_id).context("sft forward")?;
            losses.push((loss, n));
            counted += n;
        }
        // Weight each micro-batch by its share of counted tokens so accumulation equals one
        // big batch's mean.
        for (loss, n) in losses {
            let w = n as f64 / counted as f64;
            loss_sum += loss
                .to_dtype(DType::F64)
                .and_then(|l| l.to_scalar::<f64>())
                .context("loss")?
                * w;
            let scaled = (loss * w).context("scale loss")?;
            let store = scaled.backward().context("backward")?;
            accumulate(&mut grads, collect_grads(&self.opt.params, &store))?;
        }
        Ok((loss_sum, grads))
    }

    /// Writes `root/checkpoint-{step}` (trainable weights, optimizer moments, trainer state)
    /// atomically; `extra` may add files (e.g. the PEFT adapter) to the same folder.
    pub fn save(
        &self,
        root: &Path,
        keep: usize,
        extra: impl FnOnce(&Path) -> Result<()>,
    ) -> Result<std::path::PathBuf> {
        let name = format!("checkpoint-{}", self.opt.step);
        let dir = save_dir_atomic(root, &name, |tmp| {
            let mut w: HashMap<String, Tensor> = HashMap::new();
            let mut o: HashMap<String, Tensor> = HashMap::new();
            for (i, (n, v)) in self.opt.params.iter().enumerate() {
                w.insert(n.clone(), v.as_detached_tensor());
                o.insert(format!("m.{n}"), self.opt.m[i].clone());
                o.insert(format!("v.{n}"), self.opt.v[i].clone());
            }
            save_safetensors_atomic(&w, None, &tmp.join("trainable.safetensors"))?;
            save_safetensors_atomic(&o, None, &tmp.join("optimizer.safetensors"))?;
            let state = TrainerState {
                step: self.opt.step,
                epoch: self.epoch,
                cursor: self.cursor,
                order: self.order.clone(),
                rng: self.rng.state,
                dropout_rng: self.dropout_rng.lock().map(|r| r.state).unwrap_or(0),
                config: self.cfg.clone(),
                params: self.opt.params.iter().map(|(n, _)| n.clone()).collect(),
            };
            let text =
                serde_json::to_vec_pretty(&state).map_err(|e| TuneError::Invalid(e.to_string()))?;
            write_atomic(&tmp.join("trainer_state.json"), &text)?;
            extra(tmp)
        })?;
        prune(root, keep)?;
        Ok(dir)
    }

    /// Restores the newest checkpoint under `root` into this trainer's variables; returns the
    /// folder, or None when there is none yet.
    pub fn resume(&mut self, root: &Path) -> Result<Option<std::path::PathBuf>> {
        let Some(dir) = latest(root)? else {
            return Ok(None);
        };
        let sp = dir.join("trainer_state.json");
        let text = std::fs::read_to_string(&sp).map_err(|source| TuneError::Io {
            path: sp.clone(),
            source,
        })?;
        let st: TrainerState = serde_json::from_str(&text).map_err(|e| TuneError::Json {
            path: sp.clone(),
            msg: e.to_string(),
        })?;
        let names: Vec<String> = self.opt.params.iter().map(|(n, _)| n.clone()).collect();
        if st.params != names {
            return Err(TuneError::Invalid(format!(
                "{}: the checkpoint's trainable parameters differ from this run's ({} vs {})",
                sp.display(),
                st.params.len(),
                names.len()
            )));
        }
        let dev = Device::Cpu;
        let w = TensorStore::load_file(&dir.join("trainable.safetensors"), &dev)?;
        let o = TensorStore::load_file(&dir.join("optimizer.safetensors"), &dev)?;
        for (i, (n, v)) in self.opt.params.iter().enumerate() {
            let t = w.get(n)?;
            if t.dims() != v.dims() {
                return Err(w.tensor_error(
                    n,
                    format!("shape {:?}, this run has {:?}", t.dims(), v.dims()),
                ));
            }
            let dev = v.device();
            v.set(&t.to_device(dev).context(n.clone())?)
                .context(n.clone())?;
            self.opt.m[i] = o
                .get(&format!("m.{n}"))?
                .to_device(dev)
                .context(n.clone())?;
            self.opt.v[i] = o
                .get(&format!("v.{n}"))?
                .to_device(dev)
                .context(n.clone())?;
        }
        self.opt.step = st.step;
        self.epoch = st.epoch;
        self.cursor = st.cursor;
        self.order = st.order;
        self.rng.state = st.rng;
        if let Ok(mut r) = self.dropout_rng.lock() {
            r.state = st.dropout_rng;
        }
        Ok(Some(dir))
    }
}
