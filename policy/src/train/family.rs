//! The VLA family on rudder-tune's trainer: the model over the current variables, the batch
//! of demo frames, the two losses (flow matching, action-token cross-entropy) and the
//! checkpoint files a [`crate::VlaPolicy`] loads.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor, Var};
use rudder_tune::candle_nn::{VarBuilder, VarMap};
use rudder_tune::checkpoint::{save_safetensors_atomic, write_atomic};
use rudder_tune::load::AnyModel;
use rudder_tune::models::{paligemma, pi0};
use rudder_tune::peft::{self, LoraConfig};
use rudder_tune::train::{Family, Gradients, MicroBatch, Rng, Snapshot, StepStats};
use serde_json::{json, Map, Value};

use super::spec::{HeadKind, ModelConfig, TrainConfig, TrainModel, TrainingInfo, CAMERAS};
use crate::dataset::{DemoDataset, Stats, ACTION_DIM, STATE_DIM};
use crate::tokenizer::PromptTokenizer;
use crate::tokens::{self, ActionTokens};
use crate::{preprocess, prompt, FlowError};

/// LoRA fine-tuning of a trained checkpoint: its weights stay fixed, PEFT-style adapters on the
/// language model's (and, for pi0, the action expert's) linears train.
pub struct LoraRun {
    pub base: PathBuf,
    pub config: LoraConfig,
    /// The base model with the adapters attached (their A / B are the optimiser's variables).
    pub(crate) model: AnyModel,
}

/// A VLA being trained (either head, from scratch or LoRA on a checkpoint): everything of the
/// run but the optimiser, the data order and the generator, which the trainer holds.
pub struct Vla {
    pub cfg: TrainConfig,
    pub model_cfg: ModelConfig,
    /// The weights of a from-scratch run under their Hub names (empty for LoRA).
    pub varmap: VarMap,
    pub stats: Stats,
    /// Bins of the tokens head (None for flow).
    pub action_tokens: Option<ActionTokens>,
    pub tokenizer: PromptTokenizer,
    /// Set for a LoRA fine-tune ([`super::VlaTrainer::new_lora`]).
    pub lora: Option<LoraRun>,
    /// The last step's loss, for `training.json`.
    pub last_loss: Option<f64>,
    pub(crate) device: Device,
}

impl Vla {
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
        let noise = Tensor::from_vec(rng.gaussian(n), actions.dims(), &self.device)?;
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

    /// Writes the inference files (config, weights, normalisation, policy settings and
    /// `training.json`) into `dir`.
    pub fn write_policy(
        &self,
        dir: &Path,
        snap: &Snapshot<'_>,
        data: &DemoDataset,
    ) -> Result<(), FlowError> {
        let spec = &self.cfg.model;
        let write_json = |name: &str, v: &serde_json::Value| -> Result<(), FlowError> {
            let bytes =
                serde_json::to_vec_pretty(v).map_err(|e| FlowError::input(name, e.to_string()))?;
            write_atomic(&dir.join(name), &bytes).map_err(FlowError::from)
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
            None => snap
                .params
                .iter()
                .map(|(n, v)| (n.clone(), v.as_detached_tensor()))
                .collect(),
            // The adapter in PEFT's format, and the merged weights for everything that loads
            // plain checkpoints (eval, serve, steering).
            Some(l) => {
                peft::save_adapter(&mut l.model.clone(), &l.config, "default", dir)
                    .map_err(FlowError::from)?;
                let mut merged = l.model.clone();
                peft::merge(&mut merged).map_err(FlowError::from)?;
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
            .map_err(FlowError::from)?;
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
            step: snap.step,
            loss: self.last_loss,
            lora_base: self.lora.as_ref().map(|l| l.base.clone()),
        };
        write_json(
            "training.json",
            &serde_json::to_value(&info)
                .map_err(|e| FlowError::input("training.json", e.to_string()))?,
        )
    }
}

impl Family for Vla {
    type Error = FlowError;
    type Input<'a> = DemoDataset;
    type SaveInput<'a> = DemoDataset;

    fn micro_batch(
        &mut self,
        data: &DemoDataset,
        idx: &[usize],
        rng: &mut Rng,
        _params: &[(String, Var)],
    ) -> Result<MicroBatch, FlowError> {
        let idx: Vec<u32> = idx.iter().map(|&i| i as u32).collect();
        let model = self.model()?;
        let loss = self.batch_loss(&model, data, &idx, rng)?;
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
        data: &DemoDataset,
    ) -> Result<(), FlowError> {
        self.write_policy(dir, snap, data)
    }

    fn weights_file(&self) -> &str {
        // LoRA: the adapter holds the trainable weights under their names; the merged
        // model.safetensors is for inference.
        if self.lora.is_some() {
            "adapter_model.safetensors"
        } else {
            "model.safetensors"
        }
    }

    fn state(&self) -> Result<Map<String, Value>, FlowError> {
        let mut m = Map::new();
        let bad = |e: serde_json::Error| FlowError::input("trainer_state.json", e.to_string());
        m.insert(
            "config".into(),
            serde_json::to_value(&self.cfg).map_err(bad)?,
        );
        m.insert(
            "last_loss".into(),
            serde_json::to_value(self.last_loss).map_err(bad)?,
        );
        Ok(m)
    }

    fn restore(&mut self, state: &Map<String, Value>, path: &Path) -> Result<(), FlowError> {
        let file_err = |problem: String| FlowError::File {
            path: path.to_path_buf(),
            problem,
        };
        let config: TrainConfig = state
            .get("config")
            .cloned()
            .map(serde_json::from_value)
            .transpose()
            .map_err(|e| file_err(format!("not a VLA trainer state: {e}")))?
            .ok_or_else(|| file_err("no `config` (not a VLA trainer state)".into()))?;
        if config.model != self.cfg.model {
            return Err(file_err(format!(
                "the checkpoint's architecture {:?} differs from this run's {:?} (use the same \
                 flags, or a new --out)",
                config.model, self.cfg.model
            )));
        }
        self.last_loss = state.get("last_loss").and_then(Value::as_f64);
        Ok(())
    }

    fn stepped(&mut self, stats: &StepStats) {
        self.last_loss = Some(stats.loss);
    }
}
