//! pi0 (`PI0ForConditionalGeneration`): a PaliGemma prefix (camera images + prompt) and a
//! Gemma "action expert" that reads the prefix's keys and values in every layer, trained by
//! flow matching to predict the velocity `noise - actions` of a chunk of actions.
//!
//! Weights use the Hub layout (`paligemma_with_expert.paligemma.model.*`,
//! `paligemma_with_expert.gemma_expert.model.*`, `state_proj`, `action_in_proj`,
//! `action_time_mlp_{in,out}`, `action_out_proj`), which transformers 5.24 also saves.
//!
//! The prefix never attends to the suffix, so its keys and values do not depend on the state,
//! the noisy actions or the time: [`Model::prefix_cache`] computes them once and every Euler
//! step of [`Model::sample_actions_cached`] reuses them, as transformers does.

use candle_core::{DType, Device, Result, Tensor};
use candle_nn::VarBuilder;

use super::decoder::{DecoderConfig, DecoderLayer};
use super::{gemma, paligemma};
use crate::blocks::{attention::mask, KvCache, Linear, RmsNorm, RotaryEmbedding};
use crate::config::JsonConfig;
use crate::hooks::{HookPoint, Hooks, Site, Tower};

const VLM: &str = "paligemma_with_expert.paligemma";
const EXPERT: &str = "paligemma_with_expert.gemma_expert";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LossReduction {
    Mean,
    Sum,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    pub vlm: paligemma::Config,
    /// The action expert (`dit_config`): a Gemma without embedding or head.
    pub expert: DecoderConfig,
    pub chunk_size: usize,
    pub max_state_dim: usize,
    pub max_action_dim: usize,
    pub num_inference_steps: usize,
    pub min_period: f64,
    pub max_period: f64,
    pub loss_reduction: LossReduction,
}

impl Config {
    pub fn from_json(cfg: &JsonConfig) -> crate::Result<Self> {
        let vlm_json = cfg.sub("vlm_config")?;
        let vlm = paligemma::Config::from_json(&vlm_json)?;
        let text = &vlm.text.0;
        // transformers copies the VLM's vocabulary size into the expert's config; the expert
        // has no embedding, so the value only matters for the config to parse.
        let dit_json = cfg
            .sub("dit_config")?
            .with_default("vocab_size", serde_json::Value::from(text.vocab_size));
        let expert = gemma::Config::from_json(&dit_json)?.0;
        if expert.hidden_size % 2 != 0 {
            return Err(dit_json.field_error(
                "hidden_size",
                format!(
                    "{} must be even (half sine, half cosine time features)",
                    expert.hidden_size
                ),
            ));
        }
        // The expert's layer i attends over the keys and values of the language model's layer
        // i, so both stacks must agree on depth and on the key/value head layout.
        for (field, e, t) in [
            ("num_hidden_layers", expert.num_layers, text.num_layers),
            (
                "num_key_value_heads",
                expert.num_kv_heads,
                text.num_kv_heads,
            ),
            ("head_dim", expert.head_dim, text.head_dim),
        ] {
            if e != t {
                return Err(dit_json.field_error(
                    field,
                    format!("{e} differs from vlm_config.text_config.{field} {t}"),
                ));
            }
        }
        let min_period = cfg.opt_f64("min_period")?.unwrap_or(4e-3);
        let max_period = cfg.opt_f64("max_period")?.unwrap_or(4.0);
        if !(min_period > 0.0 && max_period > 0.0) {
            return Err(cfg.field_error(
                "min_period",
                format!("periods must be > 0, got min {min_period}, max {max_period}"),
            ));
        }
        let loss_reduction = match cfg.opt_str("loss_reduction")?.as_deref() {
            None | Some("mean") => LossReduction::Mean,
            Some("sum") => LossReduction::Sum,
            Some(other) => {
                return Err(cfg.field_error(
                    "loss_reduction",
                    format!("unsupported `{other}` (supported: mean, sum)"),
                ))
            }
        };
        let positive = |field: &str, default: usize| -> crate::Result<usize> {
            let v = cfg.opt_usize(field)?.unwrap_or(default);
            if v == 0 {
                return Err(cfg.field_error(field, "must be > 0"));
            }
            Ok(v)
        };
        Ok(Self {
            vlm,
            expert,
            chunk_size: positive("chunk_size", 50)?,
            max_state_dim: positive("max_state_dim", 32)?,
            max_action_dim: positive("max_action_dim", 32)?,
            num_inference_steps: positive("num_inference_steps", 10)?,
            min_period,
            max_period,
            loss_reduction,
        })
    }
}

/// The prefix: images and prompt.
#[derive(Debug, Clone)]
pub struct Inputs {
    /// `[batch, seq]` integer ids, with `image_token_id` where camera patches go.
    pub input_ids: Tensor,
    /// `[batch, cameras, channels, size, size]`.
    pub pixel_values: Tensor,
    /// `[batch][camera]`, false for a camera slot without an image; None = all present.
    pub pixel_attention_mask: Option<Vec<Vec<bool>>>,
    /// `[batch][seq]`, false for padding; None = all real.
    pub attention_mask: Option<Vec<Vec<bool>>>,
}

/// Keys and values of the prefix in every language-model layer, with what the suffix needs to
/// attend to them.
#[derive(Debug, Clone)]
pub struct PrefixCache {
    /// One entry per layer, `[batch, kv_heads, prefix_len, head_dim]`, keys after RoPE.
    pub kv: Vec<KvCache>,
    /// `[batch][prefix_len]`: which prefix positions may be attended to.
    pub key_valid: Vec<Vec<bool>>,
    /// Position id of the state token per row; the actions follow it.
    pub suffix_start: Vec<i64>,
    /// `[batch, hidden]`: the mean of the prefix's final hidden states over its valid
    /// positions, a summary of what the policy sees and was asked (an RL critic's input).
    pub pooled: Tensor,
}

impl PrefixCache {
    pub fn batch(&self) -> usize {
        self.suffix_start.len()
    }

    pub fn prefix_len(&self) -> usize {
        self.key_valid.first().map(|r| r.len()).unwrap_or(0)
    }
}

/// The action expert's blocks: Gemma layers whose attention also reads the prefix cache.
#[derive(Debug, Clone)]
pub struct Expert {
    pub layers: Vec<DecoderLayer>,
    pub norm: RmsNorm,
    pub rotary: RotaryEmbedding,
    /// The Hub checkpoint's unused `gemma_expert.lm_head.weight`, kept so that saving writes
    /// back every tensor that was read.
    pub lm_head: Option<Tensor>,
}

#[derive(Debug, Clone)]
pub struct Model {
    pub cfg: Config,
    pub vlm: paligemma::Model,
    pub expert: Expert,
    pub state_proj: Linear,
    pub action_in_proj: Linear,
    pub action_time_mlp_in: Linear,
    pub action_time_mlp_out: Linear,
    pub action_out_proj: Linear,
    /// Angular frequencies of the time embedding, `[expert hidden / 2]`, f32.
    time_freqs: Tensor,
    device: Device,
}

/// What the velocity-predicting forward pass returns.
#[derive(Debug, Clone)]
pub struct Output {
    /// `[batch, actions, max_action_dim]`.
    pub velocity: Tensor,
    /// Present when target actions were given: the flow-matching loss (a scalar).
    pub loss: Option<Tensor>,
}

/// transformers builds the frequencies in f32 (`linspace`, `pow`, then `2 pi / period`), and
/// at sin(t * 2 pi / 0.004) one rounding step in a frequency moves the embedding by ~1e-4, so
/// the f32 steps are replayed as torch's CPU kernels do them. The one exception is `pow`: it is
/// rounded correctly here, while torch's vectorised `powf` is 1-2 ulp off for a few entries at
/// Hub sizes (9 of 512 at hidden 1024); at the fixture's size the two agree bit for bit.
pub fn time_frequencies(half: usize, min_period: f64, max_period: f64) -> Vec<f32> {
    // torch's linspace fills the first half as `start + step * i` and the second as
    // `end - step * (n - 1 - i)`, the latter contracted to one fused multiply-add.
    let fraction: Vec<f32> = if half <= 1 {
        vec![0.0; half]
    } else {
        let step = 1.0f32 / (half - 1) as f32;
        (0..half)
            .map(|i| {
                if i < half / 2 {
                    step * i as f32
                } else {
                    (-step).mul_add((half - 1 - i) as f32, 1.0)
                }
            })
            .collect()
    };
    let ratio = (max_period / min_period) as f32;
    let min_p = min_period as f32;
    fraction
        .iter()
        .map(|&f| {
            let pow = ((ratio as f64).powf(f as f64)) as f32;
            let period = min_p * pow;
            (1.0f32 / period) * 2.0 * std::f32::consts::PI
        })
        .collect()
}

fn bad_shape(what: &str, want: String, got: &[usize]) -> candle_core::Error {
    candle_core::Error::Msg(format!("{what}: expected {want}, got {got:?}"))
}

impl Model {
    /// `vb` points at the checkpoint's root.
    pub fn new(cfg: &Config, vb: VarBuilder) -> Result<Self> {
        let embed = format!("{VLM}.model.language_model.embed_tokens.weight");
        let head = format!("{VLM}.lm_head.weight");
        // Hub pi0 checkpoints may store the tied PaliGemma embedding only as `lm_head`.
        let vb = if !vb.contains_tensor(&embed) && vb.contains_tensor(&head) {
            vb.rename_f(move |n: &str| {
                if n == embed {
                    head.clone()
                } else {
                    n.to_string()
                }
            })
        } else {
            vb
        };
        let vlm = paligemma::Model::new(&cfg.vlm, vb.pp(VLM))?;
        let e = &cfg.expert;
        let evb = vb.pp(EXPERT);
        let layers = (0..e.num_layers)
            .map(|i| DecoderLayer::new(e, evb.pp(format!("model.layers.{i}"))))
            .collect::<Result<Vec<_>>>()?;
        let norm = RmsNorm::new(
            e.hidden_size,
            e.rms_norm_eps,
            e.norm_offset,
            evb.pp("model.norm"),
        )?;
        let lm_head = if evb.contains_tensor("lm_head.weight") {
            Some(
                evb.pp("lm_head")
                    .get((e.vocab_size, e.hidden_size), "weight")?,
            )
        } else {
            None
        };
        let device = vb.device().clone();
        let h = e.hidden_size;
        let freqs = time_frequencies(h / 2, cfg.min_period, cfg.max_period);
        Ok(Self {
            state_proj: Linear::new(cfg.max_state_dim, h, true, vb.pp("state_proj"))?,
            action_in_proj: Linear::new(cfg.max_action_dim, h, true, vb.pp("action_in_proj"))?,
            action_time_mlp_in: Linear::new(2 * h, h, true, vb.pp("action_time_mlp_in"))?,
            action_time_mlp_out: Linear::new(h, h, true, vb.pp("action_time_mlp_out"))?,
            action_out_proj: Linear::new(h, cfg.max_action_dim, true, vb.pp("action_out_proj"))?,
            time_freqs: Tensor::from_vec(freqs, h / 2, &device)?,
            expert: Expert {
                layers,
                norm,
                rotary: RotaryEmbedding::new(&e.rope, &device),
                lm_head,
            },
            vlm,
            cfg: cfg.clone(),
            device,
        })
    }

    pub fn device(&self) -> &Device {
        &self.device
    }

    /// Prefix embeddings `[batch, seq, hidden]`: scaled token embeddings, with the i-th image
    /// token of a row taking patch `i % patches` of the row's `(i / patches)`-th present camera.
    pub fn embed_prefix(&self, inp: &Inputs, hooks: Option<&mut Hooks>) -> Result<Tensor> {
        let (b, t) = inp
            .input_ids
            .dims2()
            .map_err(|_| bad_shape("input_ids", "[batch, seq]".into(), inp.input_ids.dims()))?;
        let (pb, cams, c, hh, ww) = inp.pixel_values.dims5().map_err(|_| {
            bad_shape(
                "pixel_values",
                "[batch, cameras, channels, height, width]".into(),
                inp.pixel_values.dims(),
            )
        })?;
        if pb != b {
            candle_core::bail!("pixel_values: batch {pb} differs from input_ids batch {b}");
        }
        let cam_valid: Vec<Vec<bool>> = match &inp.pixel_attention_mask {
            Some(m) => {
                if m.len() != b || m.iter().any(|r| r.len() != cams) {
                    candle_core::bail!(
                        "pixel_attention_mask: expected [{b}][{cams}] (batch, cameras)"
                    );
                }
                m.clone()
            }
            None => vec![vec![true; cams]; b],
        };
        let px = inp
            .pixel_values
            .to_dtype(DType::F32)?
            .reshape((b * cams, c, hh, ww))?;
        let (feats, _) = self.vlm.image_features(&px, hooks, false)?;
        let (_, per_image, d) = feats.dims3()?;
        let feats = feats.reshape((b * cams * per_image, d))?;

        let image_id = self.cfg.vlm.image_token_id;
        let ids: Vec<Vec<u32>> = inp.input_ids.to_dtype(DType::U32)?.to_vec2()?;
        // The image token id may lie outside the vocabulary: those positions are embedded as
        // token 0 and then overwritten with the projected image features.
        let text_ids: Vec<u32> = ids
            .iter()
            .flatten()
            .map(|&x| if x == image_id { 0 } else { x })
            .collect();
        let text_ids = Tensor::from_vec(text_ids, (b, t), &self.device)?;
        let text = self
            .vlm
            .language_model
            .embed(&text_ids)?
            .reshape((b * t, d))?;

        let text_rows = (b * t) as u32;
        let mut index = Vec::with_capacity(b * t);
        for (bi, row) in ids.iter().enumerate() {
            let present: Vec<usize> = (0..cams).filter(|&j| cam_valid[bi][j]).collect();
            let mut rank = 0usize;
            for (ti, &tok) in row.iter().enumerate() {
                if tok == image_id {
                    // transformers' argmax over "no matching camera" picks camera 0.
                    let cam = present.get(rank / per_image).copied().unwrap_or(0);
                    let feature = (bi * cams + cam) * per_image + rank % per_image;
                    index.push(text_rows + feature as u32);
                    rank += 1;
                } else {
                    index.push((bi * t + ti) as u32);
                }
            }
        }
        let index = Tensor::from_vec(index, b * t, &self.device)?;
        Tensor::cat(&[&text, &feats.to_dtype(text.dtype())?], 0)?
            .index_select(&index, 0)?
            .reshape((b, t, d))
    }

    /// Runs the language model over the prefix once: bidirectional among real tokens, with
    /// positions `cumsum(attention_mask) - 1`. Hooks see the vision tower and the language
    /// model (tower `Main`).
    pub fn prefix_cache(&self, inp: &Inputs, mut hooks: Option<&mut Hooks>) -> Result<PrefixCache> {
        let embeds = self.embed_prefix(inp, hooks.as_deref_mut())?;
        let (b, t, _) = embeds.dims3()?;
        let (key_valid, positions, suffix_start) = match &inp.attention_mask {
            Some(m) => {
                if m.len() != b || m.iter().any(|r| r.len() != t) {
                    candle_core::bail!("attention_mask: expected [{b}][{t}] (batch, seq)");
                }
                let mut positions = Vec::with_capacity(b);
                let mut starts = Vec::with_capacity(b);
                for row in m {
                    let mut count = 0i64;
                    let mut pos = Vec::with_capacity(t);
                    for &v in row {
                        count += v as i64;
                        pos.push(count - 1);
                    }
                    positions.push(pos);
                    starts.push(count);
                }
                (m.clone(), positions, starts)
            }
            // Without a mask transformers falls back to PaliGemma's 1-based prefix positions,
            // while the expert continues at `prefix_len` (the cache length).
            None => (
                vec![vec![true; t]; b],
                vec![(1..=t as i64).collect(); b],
                vec![t as i64; b],
            ),
        };
        let m = mask::build(b, t, t, &self.device, |bi, _, k| key_valid[bi][k])?;
        let mut kv = Vec::new();
        let (h, _) = self.vlm.language_model.forward_embeds(
            &embeds,
            &positions,
            Some(&m),
            Some(&mut kv),
            hooks,
            false,
        )?;
        let weights: Vec<f32> = key_valid
            .iter()
            .flat_map(|row| {
                let n = row.iter().filter(|&&v| v).count().max(1) as f32;
                row.iter().map(move |&v| if v { 1.0 / n } else { 0.0 })
            })
            .collect();
        let weights = Tensor::from_vec(weights, (b, 1, t), &self.device)?.to_dtype(h.dtype())?;
        let pooled = weights.matmul(&h)?.squeeze(1)?;
        Ok(PrefixCache {
            kv,
            key_valid,
            suffix_start,
            pooled,
        })
    }

    /// Sinusoidal time features `[batch, expert hidden]` (sines, then cosines), in f32.
    pub fn time_embedding(&self, timestep: &Tensor) -> Result<Tensor> {
        let t = timestep.to_dtype(DType::F32)?;
        let emb = self
            .time_freqs
            .unsqueeze(0)?
            .broadcast_mul(&t.unsqueeze(1)?)?;
        Tensor::cat(&[&emb.sin()?, &emb.cos()?], 1)
    }

    /// The expert's input `[batch, 1 + actions, hidden]`: the projected state, then each noisy
    /// action fused with the time features by `action_time_mlp_{in,out}`.
    pub fn embed_suffix(
        &self,
        state: &Tensor,
        noisy_actions: &Tensor,
        timestep: &Tensor,
    ) -> Result<Tensor> {
        let (b, sd) = state
            .dims2()
            .map_err(|_| bad_shape("state", "[batch, max_state_dim]".into(), state.dims()))?;
        let (ab, n, ad) = noisy_actions.dims3().map_err(|_| {
            bad_shape(
                "actions",
                "[batch, chunk, max_action_dim]".into(),
                noisy_actions.dims(),
            )
        })?;
        if sd != self.cfg.max_state_dim {
            return Err(bad_shape(
                "state",
                format!("[batch, {}] (max_state_dim)", self.cfg.max_state_dim),
                state.dims(),
            ));
        }
        if ad != self.cfg.max_action_dim || ab != b {
            return Err(bad_shape(
                "actions",
                format!("[{b}, chunk, {}] (max_action_dim)", self.cfg.max_action_dim),
                noisy_actions.dims(),
            ));
        }
        if timestep.dims() != [b] {
            return Err(bad_shape("timestep", format!("[{b}]"), timestep.dims()));
        }
        let h = self.cfg.expert.hidden_size;
        let state_emb = self.state_proj.forward(state)?.unsqueeze(1)?;
        let action_emb = self.action_in_proj.forward(noisy_actions)?;
        let time_emb = self
            .time_embedding(timestep)?
            .to_dtype(action_emb.dtype())?
            .unsqueeze(1)?
            .broadcast_as((b, n, h))?;
        let fused = Tensor::cat(&[&action_emb, &time_emb], 2)?;
        let fused = self.action_time_mlp_in.forward(&fused)?.silu()?;
        let fused = self.action_time_mlp_out.forward(&fused)?;
        Tensor::cat(&[&state_emb, &fused], 1)
    }

    /// Velocity `[batch, actions, max_action_dim]` from a prefix cache. The state token sees the
    /// prefix and itself; action tokens see the prefix, the state and every action. Hooks use
    /// tower `Expert` (`expert.blocks.{l}.*`) over the whole suffix.
    pub fn velocity_cached(
        &self,
        cache: &PrefixCache,
        state: &Tensor,
        noisy_actions: &Tensor,
        timestep: &Tensor,
        mut hooks: Option<&mut Hooks>,
    ) -> Result<Tensor> {
        let x = self.embed_suffix(state, noisy_actions, timestep)?;
        let (b, s, _) = x.dims3()?;
        if b != cache.batch() {
            candle_core::bail!(
                "state: batch {b} differs from the prefix cache's batch {}",
                cache.batch()
            );
        }
        if cache.kv.len() != self.expert.layers.len() {
            candle_core::bail!(
                "prefix cache has {} layers, the expert {}",
                cache.kv.len(),
                self.expert.layers.len()
            );
        }
        let l = cache.prefix_len();
        let positions: Vec<Vec<i64>> = cache
            .suffix_start
            .iter()
            .map(|&p| (p..p + s as i64).collect())
            .collect();
        let (cos, sin) = self.expert.rotary.cos_sin(&positions)?;
        let m = mask::build(b, s, l + s, &self.device, |bi, q, k| {
            if k < l {
                cache.key_valid[bi][k]
            } else {
                q > 0 || k == l
            }
        })?;
        let mut x = x;
        for (i, layer) in self.expert.layers.iter().enumerate() {
            // The layer appends the suffix's keys to its copy of the cache; the shared prefix
            // stays untouched for the next call.
            let mut kv = cache.kv[i].clone();
            let point = HookPoint {
                tower: Tower::Expert,
                layer: i,
                site: Site::ResidPost,
            };
            x = layer.forward(
                &x,
                (&cos, &sin),
                Some(&m),
                Some(&mut kv),
                hooks.as_deref_mut(),
                point,
            )?;
        }
        let h = self.expert.norm.forward(&x)?;
        let n = noisy_actions.dim(1)?;
        self.action_out_proj.forward(&h.narrow(1, s - n, n)?)
    }

    /// Velocity for `noisy_actions` at `timestep` (`[batch]`, 1 = pure noise).
    pub fn forward_velocity(
        &self,
        inp: &Inputs,
        state: &Tensor,
        noisy_actions: &Tensor,
        timestep: &Tensor,
        mut hooks: Option<&mut Hooks>,
    ) -> Result<Tensor> {
        let cache = self.prefix_cache(inp, hooks.as_deref_mut())?;
        self.velocity_cached(&cache, state, noisy_actions, timestep, hooks)
    }

    /// Training pass: noisy = t * noise + (1 - t) * actions; returns the predicted velocity and
    /// the MSE against `noise - actions` (reduced per `loss_reduction`).
    pub fn loss(
        &self,
        inp: &Inputs,
        state: &Tensor,
        noise: &Tensor,
        actions: &Tensor,
        timestep: &Tensor,
        hooks: Option<&mut Hooks>,
    ) -> Result<Output> {
        if noise.dims() != actions.dims() {
            return Err(bad_shape(
                "noise",
                format!("the actions' shape {:?}", actions.dims()),
                noise.dims(),
            ));
        }
        let t = timestep.to_dtype(noise.dtype())?.reshape(((), 1, 1))?;
        let one_minus_t = t.affine(-1.0, 1.0)?;
        let noisy = (noise.broadcast_mul(&t)? + actions.broadcast_mul(&one_minus_t)?)?;
        let velocity = self.forward_velocity(inp, state, &noisy, timestep, hooks)?;
        let err = (noise - actions)?.sub(&velocity)?.sqr()?;
        let loss = match self.cfg.loss_reduction {
            LossReduction::Mean => err.mean_all()?,
            LossReduction::Sum => err.sum_all()?,
        };
        Ok(Output {
            velocity,
            loss: Some(loss),
        })
    }

    /// Euler integration of the velocity from t = 1 (`noise`) to t = 0 in `num_steps` steps
    /// (None: `num_inference_steps`), reusing one prefix cache.
    pub fn sample_actions(
        &self,
        inp: &Inputs,
        state: &Tensor,
        noise: &Tensor,
        num_steps: Option<usize>,
    ) -> Result<Tensor> {
        let cache = self.prefix_cache(inp, None)?;
        self.sample_actions_cached(&cache, state, noise, num_steps)
    }

    pub fn sample_actions_cached(
        &self,
        cache: &PrefixCache,
        state: &Tensor,
        noise: &Tensor,
        num_steps: Option<usize>,
    ) -> Result<Tensor> {
        self.sample_actions_guided(cache, state, noise, num_steps, None)
    }

    /// [`Self::sample_actions_cached`], optionally inpainting a prefix of the chunk: after each
    /// Euler step to time `t`, point `i` moves a fraction `weights[i]` of the way to where the
    /// straight noise-to-target path is at `t` (`t * noise + (1 - t) * target`), so at `t = 0`
    /// the points of weight 1 equal the target. Used to keep a new chunk consistent with the
    /// part of the previous one still ahead of the arm (real-time chunking's inpainting), so
    /// successive chunks do not switch between the demos' modes.
    pub fn sample_actions_guided(
        &self,
        cache: &PrefixCache,
        state: &Tensor,
        noise: &Tensor,
        num_steps: Option<usize>,
        guide: Option<&ChunkGuide>,
    ) -> Result<Tensor> {
        let steps = num_steps.unwrap_or(self.cfg.num_inference_steps);
        if steps == 0 {
            candle_core::bail!("sample_actions: num_steps must be > 0");
        }
        let guide = match guide {
            Some(g) => Some(g.prepared(noise)?),
            None => None,
        };
        let b = noise.dim(0)?;
        let dt = -1.0 / steps as f64;
        let mut x = noise.clone();
        for step in 0..steps {
            let t = (1.0 + step as f64 * dt) as f32;
            let time = Tensor::full(t, b, &self.device)?;
            let v = self.velocity_cached(cache, state, &x, &time, None)?;
            x = (x + (v * dt)?)?;
            if let Some((target, weights)) = &guide {
                let t_next = 1.0 + (step + 1) as f64 * dt;
                let on_path = ((noise * t_next)? + (target * (1.0 - t_next))?)?;
                x = (&x + (on_path - &x)?.broadcast_mul(weights)?)?;
            }
        }
        Ok(x)
    }

    /// The noise that [`Self::sample_actions_cached`] would turn into `actions`: each Euler
    /// step of the sampler (`x' = x - dt v(x, t)`) undone in turn, latest first, by solving
    /// `x = x' + dt v(x, t)` with `fixed_point` iterations started from `x'` (the flow is an
    /// invertible map, and for dt times the field's Lipschitz constant below 1 the iteration
    /// contracts to the discrete sampler's exact inverse). A demonstrated chunk so gets the
    /// noise a latent-noise actor would have to choose to reproduce it.
    pub fn invert_actions(
        &self,
        cache: &PrefixCache,
        state: &Tensor,
        actions: &Tensor,
        num_steps: Option<usize>,
        fixed_point: usize,
    ) -> Result<Tensor> {
        let steps = num_steps.unwrap_or(self.cfg.num_inference_steps);
        if steps == 0 {
            candle_core::bail!("invert_actions: num_steps must be > 0");
        }
        let b = actions.dim(0)?;
        let dt = 1.0 / steps as f64;
        let mut x = actions.clone();
        for k in (0..steps).rev() {
            let t = (1.0 - k as f64 * dt) as f32;
            let time = Tensor::full(t, b, &self.device)?;
            let landed = x.clone();
            for _ in 0..=fixed_point {
                let v = self.velocity_cached(cache, state, &x, &time, None)?;
                x = (&landed + (v * dt)?)?;
            }
        }
        Ok(x)
    }

    /// Width of the expert's MLP activations (the `expert.blocks.{l}.mlp.act` hook).
    pub fn expert_d_ff(&self) -> usize {
        self.cfg.expert.intermediate_size
    }
}

/// What [`Model::sample_actions_guided`] pulls a chunk towards: `target` (`[batch, horizon,
/// action_dim]`, in the model's normalised action space) with one weight in [0, 1] per chunk
/// point (`horizon` of them; 0 leaves the point free).
#[derive(Debug, Clone)]
pub struct ChunkGuide {
    pub target: Tensor,
    pub weights: Vec<f32>,
}

impl ChunkGuide {
    /// The target in the noise's dtype and the weights as a `[1, horizon, 1]` tensor.
    fn prepared(&self, noise: &Tensor) -> Result<(Tensor, Tensor)> {
        let (_, h, _) = noise.dims3()?;
        if self.target.dims() != noise.dims() {
            return Err(bad_shape(
                "guide.target",
                format!("the noise's shape {:?}", noise.dims()),
                self.target.dims(),
            ));
        }
        if self.weights.len() != h {
            candle_core::bail!(
                "guide.weights: {} weights for a chunk of {h} points",
                self.weights.len()
            );
        }
        if let Some(w) = self.weights.iter().find(|w| !(0.0..=1.0).contains(*w)) {
            candle_core::bail!("guide.weights: {w} is outside [0, 1]");
        }
        let w = Tensor::from_vec(self.weights.clone(), (1, h, 1), noise.device())?
            .to_dtype(noise.dtype())?;
        Ok((self.target.to_dtype(noise.dtype())?, w))
    }
}

/// `[batch, n]` of 0/1 (any dtype) as rows of bools.
pub fn bool_rows(t: &Tensor) -> Result<Vec<Vec<bool>>> {
    let rows: Vec<Vec<f32>> = t.to_dtype(DType::F32)?.to_vec2()?;
    Ok(rows
        .into_iter()
        .map(|r| r.into_iter().map(|x| x != 0.0).collect())
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn time_frequencies_span_the_periods() {
        let f = time_frequencies(16, 4e-3, 4.0);
        let two_pi = 2.0 * std::f32::consts::PI;
        assert!((f[0] - two_pi / 4e-3).abs() / f[0] < 1e-6);
        assert!((f[15] - two_pi / 4.0).abs() / f[15] < 1e-6);
        assert!(f.windows(2).all(|w| w[0] > w[1]));
    }
}
