//! One training loop for every model family: the data order (a seeded shuffle per epoch and a
//! cursor into it), AdamW with the cosine schedule, global-norm clipping, gradient
//! accumulation, a stop on a non-finite loss or gradient, and checkpoints written atomically
//! that resume bit-identically.
//!
//! A [`Family`] brings what differs between models: the loss and gradients of one micro-batch
//! (on candle's graph, which the trainer differentiates, or from a hand-written backward
//! pass), the files its checkpoint folder needs, and its own state. The trainer owns the rest,
//! so a family cannot get the order, the optimizer or the checkpoint layout subtly different
//! from another.
//!
//! Determinism: the run's generator ([`Rng`]) shuffles the data order and is handed to the
//! family for its per-step draws (noise, times), in that order, and is saved with each
//! checkpoint. A resumed run therefore draws exactly what the uninterrupted one would have.
//!
//! A checkpoint folder `OUT/checkpoint-N` holds the family's files, `optimizer.safetensors`
//! (AdamW's moments as `m.NAME` / `v.NAME`) and `trainer_state.json` (step, epoch, cursor,
//! order, generator, parameter names, and the family's own fields beside them). `OUT/latest`
//! names the newest; older folders beyond `keep` are removed.
//!
//! An exponential moving average of the weights ([`Trainer::with_ema`], as diffusion models
//! are sampled from) is updated after every optimizer step, saved as `ema.safetensors` under
//! the parameters' names and restored on resume; families see it in [`Snapshot::ema`].

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::Instant;

use candle_core::{DType, Device, Tensor, Var};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use super::adamw::{clip_grad_norm, collect_grads, AdamW, AdamWConfig};
use super::checkpoint::{latest, prune, save_dir_atomic};
use super::{CosineSchedule, Rng};
use crate::checkpoint::{save_safetensors_atomic, write_atomic, TensorStore};
use crate::error::{Context, Result, TuneError};

/// What every run configures the same way.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct TrainerConfig {
    pub optim: AdamWConfig,
    pub warmup_steps: u64,
    /// Optimizer steps in the whole run (the schedule's horizon).
    pub total_steps: u64,
    /// Global L2 norm to clip gradients to (None: no clipping).
    pub max_grad_norm: Option<f64>,
    /// Micro-batches per optimizer step.
    pub grad_accum: usize,
    /// Examples per micro-batch.
    pub batch_size: usize,
}

/// How a family hands over one micro-batch's gradients.
pub enum Gradients {
    /// The micro-batch's mean loss as a scalar on candle's graph: the trainer scales it by the
    /// micro-batch's share and runs the backward pass (the autograd path).
    Graph(Tensor),
    /// The mean loss and its gradients, computed by the family (a hand-written backward pass),
    /// in the optimizer's parameter order (None where a parameter got none).
    Computed {
        loss: f64,
        grads: Vec<Option<Tensor>>,
    },
}

/// One micro-batch's contribution to a step.
pub struct MicroBatch {
    /// What its loss is a mean over (counted tokens, frames): micro-batches are weighted by
    /// their share of the step's total, so accumulation equals one big batch's mean.
    pub counted: usize,
    /// Work done, for the throughput figure (tokens read, frames).
    pub items: usize,
    pub gradients: Gradients,
}

/// What a checkpoint is written from.
pub struct Snapshot<'a> {
    /// Optimizer steps taken.
    pub step: u64,
    /// The trainable variables under their optimizer names.
    pub params: &'a [(String, Var)],
    /// The moving average of each parameter, in `params`' order, when the run keeps one.
    pub ema: Option<&'a [Tensor]>,
}

/// A model family trained by [`Trainer`].
pub trait Family {
    /// The family's error; the trainer's own errors convert into it.
    type Error: From<TuneError>;
    /// What a step reads besides the family (the data set, a model the caller holds).
    type Input<'a>;
    /// What a checkpoint reads besides the family.
    type SaveInput<'a>;

    /// The mean loss of the examples `idx` and its gradients with respect to `params`. `rng`
    /// is the run's generator, for the family's random draws (it is saved with checkpoints).
    fn micro_batch(
        &mut self,
        input: &Self::Input<'_>,
        idx: &[usize],
        rng: &mut Rng,
        params: &[(String, Var)],
    ) -> std::result::Result<MicroBatch, Self::Error>;

    /// Writes the family's files into the checkpoint folder `dir` (among them
    /// [`Family::weights_file`]).
    fn write_files(
        &self,
        dir: &Path,
        snap: &Snapshot<'_>,
        input: &Self::SaveInput<'_>,
    ) -> std::result::Result<(), Self::Error>;

    /// The file of a checkpoint folder holding the trainable weights under their optimizer
    /// names (what a resume reads them from).
    fn weights_file(&self) -> &str;

    /// The family's own fields of `trainer_state.json` (its configuration, its own
    /// generators); they must not use the trainer's names (step, epoch, cursor, order, rng,
    /// params).
    fn state(&self) -> std::result::Result<Map<String, Value>, Self::Error>;

    /// Restores (and checks) the family's fields of the `trainer_state.json` at `path`. Runs
    /// before any weight is loaded, so a mismatch is reported first.
    fn restore(
        &mut self,
        state: &Map<String, Value>,
        path: &Path,
    ) -> std::result::Result<(), Self::Error>;

    /// Called after each optimizer step (e.g. to remember the loss for the checkpoint).
    fn stepped(&mut self, _stats: &StepStats) {}
}

#[derive(Debug, Clone, Copy, Serialize)]
pub struct StepStats {
    /// Optimizer steps taken, this one included.
    pub step: u64,
    /// The step's mean loss (micro-batches weighted by their share).
    pub loss: f64,
    pub lr: f64,
    /// Global gradient norm before clipping.
    pub grad_norm: f64,
    /// The micro-batches' [`MicroBatch::items`], summed.
    pub items: usize,
    pub seconds: f64,
}

impl StepStats {
    pub fn items_per_s(&self) -> f64 {
        self.items as f64 / self.seconds.max(1e-9)
    }
}

/// `trainer_state.json`: the trainer's fields and, flattened beside them, the family's (the
/// layout both trainers wrote before there was one trainer, so their checkpoints resume).
#[derive(Debug, Serialize, Deserialize)]
struct TrainerState {
    step: u64,
    epoch: u64,
    cursor: usize,
    order: Vec<usize>,
    rng: u64,
    params: Vec<String>,
    #[serde(flatten)]
    family: Map<String, Value>,
}

pub struct Trainer<F: Family> {
    pub cfg: TrainerConfig,
    pub opt: AdamW,
    pub sched: CosineSchedule,
    pub family: F,
    rng: Rng,
    order: Vec<usize>,
    cursor: usize,
    epoch: u64,
    ema: Option<Ema>,
}

/// The exponential moving average of the weights: after step k (1-based)
/// `ema = d_k * ema + (1 - d_k) * weights` with `d_k = min(decay, (1 + k) / (10 + k))`,
/// diffusers' `EMAModel` warm-up, so the random initial weights fade out within the first
/// steps instead of weighing `decay^k` for thousands of them.
struct Ema {
    decay: f64,
    shadow: Vec<Tensor>,
}

impl Ema {
    fn decay_at(&self, step: u64) -> f64 {
        let k = step as f64;
        self.decay.min((1.0 + k) / (10.0 + k))
    }
}

const EMA_FILE: &str = "ema.safetensors";

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

/// Saves `params` under their names to `path` (a family's weights file, when the trainable
/// variables are all it needs).
pub fn save_params(params: &[(String, Var)], path: &Path) -> Result<()> {
    let w: HashMap<String, Tensor> = params
        .iter()
        .map(|(n, v)| (n.clone(), v.as_detached_tensor()))
        .collect();
    save_safetensors_atomic(&w, None, path)
}

impl<F: Family> Trainer<F> {
    /// A trainer over `params` (the trainable variables by name) for a data set of
    /// `n_examples`. `rng` is the run's generator, seeded by the caller (who may have drawn
    /// the initial weights from it): it shuffles the first epoch's order now.
    pub fn new(
        family: F,
        params: Vec<(String, Var)>,
        cfg: TrainerConfig,
        n_examples: usize,
        mut rng: Rng,
    ) -> Result<Self> {
        if cfg.batch_size == 0 || cfg.grad_accum == 0 {
            return Err(TuneError::Invalid(
                "train: batch_size and grad_accum must be > 0".into(),
            ));
        }
        if n_examples == 0 {
            return Err(TuneError::Invalid("train: no training examples".into()));
        }
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
            family,
            rng,
            order,
            cursor: 0,
            epoch: 0,
            ema: None,
        })
    }

    /// Keeps an exponential moving average of the weights with `decay` in [0, 1) (e.g.
    /// 0.999), from the weights as they are now.
    pub fn with_ema(mut self, decay: f64) -> Result<Self> {
        if !(0.0..1.0).contains(&decay) {
            return Err(TuneError::Invalid(format!(
                "train: EMA decay {decay} is outside [0, 1)"
            )));
        }
        let shadow = self
            .opt
            .params
            .iter()
            .map(|(n, v)| v.as_detached_tensor().copy().context(n.clone()))
            .collect::<Result<Vec<_>>>()?;
        self.ema = Some(Ema { decay, shadow });
        Ok(self)
    }

    /// The moving average of each parameter (optimizer order), when the run keeps one.
    pub fn ema(&self) -> Option<&[Tensor]> {
        self.ema.as_ref().map(|e| e.shadow.as_slice())
    }

    /// What a checkpoint is written from, now.
    pub fn snapshot(&self) -> Snapshot<'_> {
        Snapshot {
            step: self.opt.step,
            params: &self.opt.params,
            ema: self.ema(),
        }
    }

    /// Optimizer steps taken.
    pub fn step_count(&self) -> u64 {
        self.opt.step
    }

    /// Full passes over the data begun after the first.
    pub fn epoch(&self) -> u64 {
        self.epoch
    }

    pub fn params(&self) -> &[(String, Var)] {
        &self.opt.params
    }

    pub fn num_parameters(&self) -> usize {
        self.opt.params.iter().map(|(_, v)| v.elem_count()).sum()
    }

    /// The next micro-batch's examples; the order is reshuffled (from the run's generator) at
    /// the end of each epoch.
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

    /// One optimizer step over `grad_accum` micro-batches. Stops with an error naming the
    /// step when a loss or the gradient is not finite (the weights are left as they were).
    pub fn step(&mut self, input: &F::Input<'_>) -> std::result::Result<StepStats, F::Error> {
        let t0 = Instant::now();
        let step = self.opt.step + 1;
        // All micro-batches' examples first, then their losses: the generator draws the
        // order before any family draw of this step.
        let micro: Vec<Vec<usize>> = (0..self.cfg.grad_accum)
            .map(|_| self.next_indices())
            .collect();
        let mut parts = Vec::with_capacity(micro.len());
        for idx in &micro {
            parts.push(
                self.family
                    .micro_batch(input, idx, &mut self.rng, &self.opt.params)?,
            );
        }
        let counted: usize = parts.iter().map(|p| p.counted).sum();
        let items: usize = parts.iter().map(|p| p.items).sum();
        if counted == 0 {
            return Err(TuneError::Invalid(format!(
                "train: step {step}: no example counts towards the loss"
            ))
            .into());
        }
        let mut grads: Vec<Option<Tensor>> = vec![None; self.opt.params.len()];
        let mut loss_sum = 0f64;
        for (k, part) in parts.into_iter().enumerate() {
            // Each micro-batch weighs its share of what counts.
            let w = part.counted as f64 / counted as f64;
            let finite = |loss: f64| {
                if loss.is_finite() {
                    Ok(())
                } else {
                    Err(TuneError::Invalid(format!(
                        "train: non-finite loss ({loss}) at step {step} (micro-batch {})",
                        k + 1
                    )))
                }
            };
            let new = match part.gradients {
                Gradients::Graph(loss) => {
                    let v = loss
                        .to_dtype(DType::F64)
                        .and_then(|l| l.to_scalar::<f64>())
                        .context("loss")?;
                    finite(v)?;
                    loss_sum += v * w;
                    // Scaling the loss (not the gradients) keeps this path's arithmetic that
                    // of a single backward pass; at w = 1 it is skipped (x * 1 + 0 is x).
                    let scaled = if w != 1.0 {
                        (loss * w).context("scale loss")?
                    } else {
                        loss
                    };
                    let store = scaled.backward().context("backward")?;
                    collect_grads(&self.opt.params, &store)
                }
                Gradients::Computed { loss, grads } => {
                    finite(loss)?;
                    loss_sum += loss * w;
                    grads
                        .into_iter()
                        .map(|g| match g {
                            Some(t) if w != 1.0 => t.affine(w, 0.0).map(Some),
                            other => Ok(other),
                        })
                        .collect::<candle_core::Result<Vec<_>>>()
                        .context("scale gradient")?
                }
            };
            accumulate(&mut grads, new)?;
        }
        let grad_norm = clip_grad_norm(&mut grads, self.cfg.max_grad_norm.unwrap_or(f64::INFINITY))
            .context("clip")?;
        if !grad_norm.is_finite() {
            return Err(TuneError::Invalid(format!(
                "train: non-finite gradient (norm {grad_norm}) at step {step}"
            ))
            .into());
        }
        let lr = self.sched.lr(self.opt.step);
        self.opt.step(&grads, lr).context("optimizer step")?;
        if let Some(ema) = &mut self.ema {
            let d = ema.decay_at(self.opt.step);
            for (s, (n, v)) in ema.shadow.iter_mut().zip(&self.opt.params) {
                let blend = || s.affine(d, 0.0)? + v.as_detached_tensor().affine(1.0 - d, 0.0)?;
                *s = blend().context(format!("EMA of {n}"))?;
            }
        }
        let stats = StepStats {
            step: self.opt.step,
            loss: loss_sum,
            lr,
            grad_norm,
            items,
            seconds: t0.elapsed().as_secs_f64(),
        };
        self.family.stepped(&stats);
        Ok(stats)
    }

    /// Writes `root/checkpoint-{step}` atomically (the family's files, the optimizer moments,
    /// the trainer state, then whatever `extra` adds), points `root/latest` at it and keeps
    /// the newest `keep` (at least the new one).
    pub fn save(
        &self,
        root: &Path,
        keep: usize,
        input: &F::SaveInput<'_>,
        extra: impl FnOnce(&Path) -> std::result::Result<(), F::Error>,
    ) -> std::result::Result<PathBuf, F::Error> {
        let name = format!("checkpoint-{}", self.opt.step);
        // save_dir_atomic speaks TuneError; a family error is kept here and returned as is.
        let mut failed: Option<F::Error> = None;
        let written = save_dir_atomic(root, &name, |tmp| {
            let write = || -> std::result::Result<(), F::Error> {
                let snap = self.snapshot();
                self.family.write_files(tmp, &snap, input)?;
                self.write_state(tmp)?;
                extra(tmp)
            };
            write().map_err(|e| {
                failed = Some(e);
                TuneError::Invalid(format!("writing {}", tmp.display()))
            })
        });
        let dir = match written {
            Ok(dir) => dir,
            Err(e) => return Err(failed.take().unwrap_or_else(|| e.into())),
        };
        prune(root, keep.max(1))?;
        Ok(dir)
    }

    fn write_state(&self, dir: &Path) -> std::result::Result<(), F::Error> {
        let mut o: HashMap<String, Tensor> = HashMap::new();
        for (i, (n, _)) in self.opt.params.iter().enumerate() {
            o.insert(format!("m.{n}"), self.opt.m[i].clone());
            o.insert(format!("v.{n}"), self.opt.v[i].clone());
        }
        save_safetensors_atomic(&o, None, &dir.join("optimizer.safetensors"))?;
        if let Some(ema) = &self.ema {
            let w: HashMap<String, Tensor> = self
                .opt
                .params
                .iter()
                .zip(&ema.shadow)
                .map(|((n, _), t)| (n.clone(), t.clone()))
                .collect();
            save_safetensors_atomic(&w, None, &dir.join(EMA_FILE))?;
        }
        let state = TrainerState {
            step: self.opt.step,
            epoch: self.epoch,
            cursor: self.cursor,
            order: self.order.clone(),
            rng: self.rng.state,
            params: self.opt.params.iter().map(|(n, _)| n.clone()).collect(),
            family: self.family.state()?,
        };
        let text =
            serde_json::to_vec_pretty(&state).map_err(|e| TuneError::Invalid(e.to_string()))?;
        write_atomic(&dir.join("trainer_state.json"), &text)?;
        Ok(())
    }

    /// Restores the newest checkpoint under `root` (weights, optimizer moments, step, data
    /// order, generator and the family's state); None when there is none yet. The schedule
    /// keeps this run's horizon (a run may be resumed longer or shorter).
    pub fn resume(&mut self, root: &Path) -> std::result::Result<Option<PathBuf>, F::Error> {
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
            msg: format!("not a trainer state: {e}"),
        })?;
        self.family.restore(&st.family, &sp)?;
        let names: Vec<String> = self.opt.params.iter().map(|(n, _)| n.clone()).collect();
        if st.params != names {
            return Err(TuneError::Invalid(format!(
                "{}: the checkpoint's trainable parameters differ from this run's ({} vs {})",
                sp.display(),
                st.params.len(),
                names.len()
            ))
            .into());
        }
        if st.order.len() != self.order.len() {
            return Err(TuneError::Invalid(format!(
                "{}: the checkpoint was trained on {} examples, this data set has {}",
                sp.display(),
                st.order.len(),
                self.order.len()
            ))
            .into());
        }
        let w = TensorStore::load_file(&dir.join(self.family.weights_file()), &Device::Cpu)?;
        let o = TensorStore::load_file(&dir.join("optimizer.safetensors"), &Device::Cpu)?;
        for (i, (n, v)) in self.opt.params.iter().enumerate() {
            let t = w.get(n)?;
            if t.dims() != v.dims() {
                return Err(w
                    .tensor_error(
                        n,
                        format!("shape {:?}, this run has {:?}", t.dims(), v.dims()),
                    )
                    .into());
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
        if let Some(ema) = &mut self.ema {
            let path = dir.join(EMA_FILE);
            if !path.exists() {
                return Err(TuneError::Invalid(format!(
                    "{}: this run keeps an EMA of the weights, the checkpoint has none",
                    path.display()
                ))
                .into());
            }
            let e = TensorStore::load_file(&path, &Device::Cpu)?;
            for (s, (n, v)) in ema.shadow.iter_mut().zip(&self.opt.params) {
                let t = e.get(n)?;
                if t.dims() != v.dims() {
                    return Err(e
                        .tensor_error(
                            n,
                            format!("shape {:?}, this run has {:?}", t.dims(), v.dims()),
                        )
                        .into());
                }
                *s = t.to_device(v.device()).context(n.clone())?;
            }
        }
        self.opt.step = st.step;
        self.epoch = st.epoch;
        self.cursor = st.cursor;
        self.order = st.order;
        self.rng.state = st.rng;
        Ok(Some(dir))
    }
}
