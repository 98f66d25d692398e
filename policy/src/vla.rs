//! [`VlaPolicy`]: a trained VLA behind `rudder_robot::Policy`, with one of two heads:
//! pi0-style flow matching (`rudder_tune::models::pi0`) or OpenVLA-style action tokens from a
//! PaliGemma-style VLM ([`crate::tokens`]).
//!
//! A checkpoint folder holds:
//! - `config.json` + `*.safetensors`: a `PI0ForConditionalGeneration`, or a
//!   `PaliGemmaForConditionalGeneration` with `action_tokens.json` (loaded by
//!   `rudder_tune::load::load_model`);
//! - `normalization.json` (optional): pi0 mean/std of state and actions ([`crate::normalize`]);
//! - `policy.json` (optional): [`PolicySettings`] (camera slots, prompt length, chunk timing);
//! - `tokenizer.json` (optional): the prompt tokenizer ([`crate::tokenizer`]; `rudder train vla`
//!   writes a BPE); without it prompts use the byte-level mapping of [`crate::prompt`]. Its ids
//!   must stay below the model's image token.
//!
//! One flow inference: every camera slot's image is resized to the vision tower's input and scaled to
//! [-1, 1] (absent slots are -1 and masked); the sequence is `image tokens x slots + [BOS] +
//! prompt tokens` with the absent slots' image tokens masked out; the state is normalised, then
//! zero-padded or truncated to `max_state_dim`; `num_inference_steps` Euler steps (from
//! `config.json`, default 10) integrate the velocity from seeded Gaussian noise at t = 1 to the
//! actions at t = 0, which are un-normalised and returned as `chunk_size x max_action_dim`.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

use candle_core::{Device, Tensor};
use rudder_robot::{Action, ActionChunk, ActionSpace, Observation, Policy, PolicyError};
use rudder_tune::hooks::Hooks;
use rudder_tune::load::{load_model, AnyModel};
use rudder_tune::models::{paligemma, pi0};
use serde::{Deserialize, Serialize};

use crate::normalize::Normalization;
use crate::tokenizer::PromptTokenizer;
use crate::tokens::{self, ActionTokens};
use crate::{noise, preprocess, FlowError};

/// How the policy's action vectors map onto rudder-robot's action spaces.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ChunkSpace {
    /// The first 7 dims: delta position (3), delta axis-angle (3), gripper (LIBERO).
    EefDelta7,
    /// All dims as absolute joint positions, no gripper.
    JointPositions,
    /// All dims as joint velocities, no gripper.
    JointVelocities,
}

/// `policy.json`: what `config.json` does not say. Every field is optional.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PolicySettings {
    /// Camera slots in the order the model was trained on. Default: `["base_0_rgb",
    /// "left_wrist_0_rgb"]` (openpi's names; the LIBERO agent view and wrist camera).
    pub cameras: Vec<String>,
    /// Prompt length limit in tokens, BOS included (pi0: 48).
    pub max_prompt_tokens: usize,
    /// Seconds between chunk points when used as a `rudder_robot::Policy` (LIBERO: 20 Hz).
    pub dt: f64,
    /// Action space of the chunk as a `rudder_robot::Policy`. Default: `eef_delta7` when the
    /// model has >= 7 action dims, else `joint_positions` over all of them.
    pub action_space: Option<ChunkSpace>,
    /// Noise seed used by the `rudder_robot::Policy` implementation: call `n` of a loaded
    /// policy draws its noise from `(seed, n)`, so a run is reproducible while successive
    /// chunks differ.
    pub seed: u64,
    /// Reuse `seed`'s noise on every call instead. A deterministic sampler maps a static
    /// observation to the same chunk forever, so a policy blocked by contact never tries
    /// anything else: measured on a spatial checkpoint, 0/20 training init states solved with
    /// fixed noise against 7/20 with per-call noise.
    pub fixed_noise: bool,
    /// Whether a new chunk is inpainted with the part of the previous chunk still ahead of the
    /// arm (flow head, through `rudder_robot::Policy` only): see [`Inpainting`].
    pub inpainting: Inpainting,
}

/// Real-time chunking's inpainting (Black et al. 2025, the guidance-free form): when the loop
/// asks for a new chunk before the last one ends, the points of the new chunk that overlap the
/// old one's unplayed tail are pulled onto it during sampling. Without it each chunk is an
/// independent draw, and a policy whose demos hold several ways to do a task can switch way at
/// every replan and dither between them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Inpainting {
    /// Independent chunks.
    #[default]
    Off,
    /// Every overlapping point is held to the previous chunk (weight 1).
    Hard,
    /// The first overlapping point is held; the weights fall linearly to 0 over the overlap,
    /// so the end of the tail steers the new chunk less than its start.
    Decay,
}

impl Inpainting {
    /// Guide weights for a chunk of `horizon` points whose first `overlap` points overlap the
    /// previous chunk.
    pub fn weights(self, horizon: usize, overlap: usize) -> Vec<f32> {
        let overlap = overlap.min(horizon);
        (0..horizon)
            .map(|i| match self {
                _ if i >= overlap => 0.0,
                Inpainting::Off => 0.0,
                Inpainting::Hard => 1.0,
                Inpainting::Decay => 1.0 - i as f32 / overlap as f32,
            })
            .collect()
    }
}

/// A chunk's un-normalised rows and, for the flow head, the same chunk in the model's
/// normalised space (`horizon x action_dim`, row-major).
type InferredChunk = (Vec<Vec<f32>>, Option<Vec<f32>>);

/// Fixed-point iterations per undone Euler step when inverting the flow (3 bring the tiny
/// fixture's round trip from 14 % of the chunk's scale to below 1 %).
const INVERT_FIXED_POINT: usize = 3;

/// Picks a chunk's noise from the prefix's features (a latent-noise actor).
pub type NoiseChooser<'a> = dyn FnMut(&[f32]) -> Result<Vec<f32>, FlowError> + 'a;

/// Where a flow chunk's noise comes from.
enum Noise<'a> {
    /// Drawn from a seed (the policy's own sampling).
    Seed(u64),
    /// Chosen by the caller (a latent-noise actor), `horizon x action_dim`, row-major.
    Given(&'a [f32]),
    /// Found by inverting the flow from this normalised chunk (returned in `normalized`).
    Invert(&'a [f32]),
    /// Chosen from the prefix's features (a latent-noise actor), in the same pass.
    Chosen(&'a mut NoiseChooser<'a>),
    /// No chunk: only the prefix pass, for its features.
    FeaturesOnly,
}

/// What one pass of the model gives: the rows, the normalised chunk (or, when inverting, the
/// noise) and the flow head's pooled prefix features.
struct FlowChunk {
    rows: Vec<Vec<f32>>,
    normalized: Option<Vec<f32>>,
    features: Option<Vec<f32>>,
}

/// A chunk decoded from caller-chosen noise, for latent-noise RL.
#[derive(Debug, Clone)]
pub struct LatentChunk {
    /// The pooled prefix features (images and instruction) followed by the normalised state.
    pub features: Vec<f32>,
    /// Un-normalised rows, `horizon x action_dim`.
    pub rows: Vec<Vec<f32>>,
    /// The same chunk in the model's normalised space, row-major.
    pub normalized: Vec<f32>,
}

/// The last chunk inferred through `rudder_robot::Policy`, in the model's normalised space.
#[derive(Debug, Clone)]
struct LastChunk {
    start_time: f64,
    dt: f64,
    /// `horizon x action_dim`, row-major.
    normalized: Vec<f32>,
}

impl Default for PolicySettings {
    fn default() -> Self {
        Self {
            cameras: vec!["base_0_rgb".into(), "left_wrist_0_rgb".into()],
            max_prompt_tokens: 48,
            dt: 0.05,
            action_space: None,
            seed: 0,
            fixed_noise: false,
            inpainting: Inpainting::Off,
        }
    }
}

/// The action head a checkpoint carries.
enum Head {
    /// pi0: flow matching in an action expert.
    Flow(Box<pi0::Model>),
    /// OpenVLA-style action tokens from a PaliGemma-style VLM.
    Tokens {
        model: Box<paligemma::Model>,
        spec: ActionTokens,
    },
}

pub struct VlaPolicy {
    dir: PathBuf,
    model: Head,
    norm: Normalization,
    settings: PolicySettings,
    tokenizer: PromptTokenizer,
    device: Device,
    /// Chunks inferred through `rudder_robot::Policy` since loading (or `reset_noise`).
    calls: AtomicU64,
    /// For inpainting: the last chunk `rudder_robot::Policy` returned in this episode.
    last_chunk: Mutex<Option<LastChunk>>,
}

impl std::fmt::Debug for VlaPolicy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VlaPolicy")
            .field("dir", &self.dir)
            .field("settings", &self.settings)
            .finish_non_exhaustive()
    }
}

impl VlaPolicy {
    /// Loads a pi0 checkpoint folder (see the module doc) on the CPU.
    pub fn load(dir: &Path) -> Result<Self, FlowError> {
        let device = Device::Cpu;
        let loaded = load_model(dir, &device)?;
        let model = match loaded.model {
            AnyModel::Pi0(m) => Head::Flow(m),
            AnyModel::PaliGemma(m) => {
                let path = dir.join("action_tokens.json");
                if !path.exists() {
                    return Err(FlowError::File {
                        path,
                        problem: "a PaliGemma checkpoint needs action_tokens.json (bins, chunk,                                   decoding) to act as a VLA-tokens policy"
                            .into(),
                    });
                }
                let spec = ActionTokens::load(&path, m.cfg.text.0.vocab_size)?;
                let first = ActionTokens::first_id(m.cfg.text.0.vocab_size);
                if m.cfg.image_token_id >= first {
                    return Err(FlowError::File {
                        path,
                        problem: format!(
                            "the image token {} falls inside the action ids {first}..",
                            m.cfg.image_token_id
                        ),
                    });
                }
                Head::Tokens { model: m, spec }
            }
            _ => {
                return Err(FlowError::Field {
                    path: dir.join("config.json"),
                    field: "architectures".into(),
                    problem: format!(
                        "{} is not a VLA policy (expected PI0ForConditionalGeneration, or                          PaliGemmaForConditionalGeneration with action_tokens.json)",
                        loaded.arch.name()
                    ),
                })
            }
        };
        let (action_dim, state_dim, image_id, text_vocab) = match &model {
            Head::Flow(m) => (
                m.cfg.max_action_dim,
                m.cfg.max_state_dim,
                m.cfg.vlm.image_token_id as usize,
                m.cfg.vlm.text.0.vocab_size,
            ),
            Head::Tokens { model, spec } => (
                spec.action_dim(),
                0,
                model.cfg.image_token_id as usize,
                model.cfg.text.0.vocab_size,
            ),
        };
        let settings_path = dir.join("policy.json");
        let settings = if settings_path.exists() {
            let text = std::fs::read_to_string(&settings_path).map_err(|e| FlowError::File {
                path: settings_path.clone(),
                problem: e.to_string(),
            })?;
            serde_json::from_str(&text).map_err(|e| FlowError::File {
                path: settings_path.clone(),
                problem: format!("not valid policy settings: {e}"),
            })?
        } else {
            PolicySettings::default()
        };
        let field_err = |field: &str, problem: String| FlowError::Field {
            path: settings_path.clone(),
            field: field.into(),
            problem,
        };
        if settings.cameras.is_empty() {
            return Err(field_err(
                "cameras",
                "needs at least one camera slot".into(),
            ));
        }
        if let Some((i, c)) = settings
            .cameras
            .iter()
            .enumerate()
            .find(|(i, c)| settings.cameras[..*i].contains(c))
        {
            return Err(field_err(
                "cameras",
                format!("slot {i} `{c}` is a duplicate"),
            ));
        }
        if settings.max_prompt_tokens == 0 {
            return Err(field_err("max_prompt_tokens", "must be > 0".into()));
        }
        if !(settings.dt.is_finite() && settings.dt > 0.0) {
            return Err(field_err(
                "dt",
                format!("must be finite and > 0, got {}", settings.dt),
            ));
        }
        if settings.action_space == Some(ChunkSpace::EefDelta7) && action_dim < 7 {
            return Err(field_err(
                "action_space",
                format!("eef_delta7 needs >= 7 action dims, the model has {action_dim}"),
            ));
        }
        let norm =
            Normalization::load_optional(&dir.join("normalization.json"), state_dim, action_dim)?;
        // Text ids stop below the image token (and inside the embedding table).
        let byte_limit = text_vocab.min(image_id).max(4);
        let tokenizer = PromptTokenizer::load(dir, byte_limit)?;
        if tokenizer.is_bpe() && tokenizer.vocab_size() > byte_limit {
            return Err(FlowError::File {
                path: dir.join("tokenizer.json"),
                problem: format!(
                    "{} tokens, but the model's text ids stop at {byte_limit} (image token \
                     {image_id}, vocab_size {})",
                    tokenizer.vocab_size(),
                    text_vocab
                ),
            });
        }
        Ok(Self {
            tokenizer,
            dir: dir.to_path_buf(),
            model,
            norm,
            settings,
            device,
            calls: AtomicU64::new(0),
            last_chunk: Mutex::new(None),
        })
    }

    /// Restarts the per-call noise sequence (a new episode replays the same draws) and forgets
    /// the last chunk, so the episode's first chunk is not inpainted.
    pub fn reset_noise(&self) {
        self.calls.store(0, Ordering::Relaxed);
        *self.last_chunk.lock().unwrap_or_else(|p| p.into_inner()) = None;
    }

    /// The prefix language model, whose FFN neurons steering sets (so a loaded policy can be
    /// steered without reading its checkpoint again).
    pub fn language_model(&self) -> &rudder_tune::models::decoder::Decoder {
        match &self.model {
            Head::Flow(m) => &m.vlm.language_model,
            Head::Tokens { model, .. } => &model.language_model,
        }
    }

    /// Whether the actions come from a pi0 action expert (which reads every prefix layer's
    /// keys and values, but never the last layer's FFN output).
    pub fn is_flow(&self) -> bool {
        matches!(self.model, Head::Flow(_))
    }

    /// Overrides policy.json's `inpainting`.
    pub fn set_inpainting(&mut self, inpainting: Inpainting) {
        self.settings.inpainting = inpainting;
    }

    /// The noise seed of the next `rudder_robot::Policy` call.
    fn next_seed(&self) -> u64 {
        if self.settings.fixed_noise {
            return self.settings.seed;
        }
        let n = self.calls.fetch_add(1, Ordering::Relaxed);
        // Call 0 uses `seed` itself; later calls a SplitMix64-style mix of (seed, n).
        if n == 0 {
            return self.settings.seed;
        }
        let mut z = self
            .settings
            .seed
            .wrapping_add(n.wrapping_mul(0x9e37_79b9_7f4a_7c15));
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }
    pub fn tokenizer(&self) -> &PromptTokenizer {
        &self.tokenizer
    }

    pub fn settings(&self) -> &PolicySettings {
        &self.settings
    }
    /// Camera slot names, in model order.
    pub fn cameras(&self) -> &[String] {
        &self.settings.cameras
    }
    /// `"flow"` (pi0) or `"tokens"` (OpenVLA-style).
    pub fn head(&self) -> &'static str {
        match &self.model {
            Head::Flow(_) => "flow",
            Head::Tokens { .. } => "tokens",
        }
    }
    /// Points per chunk (`chunk_size`).
    pub fn action_horizon(&self) -> usize {
        match &self.model {
            Head::Flow(m) => m.cfg.chunk_size,
            Head::Tokens { spec, .. } => spec.chunk,
        }
    }
    /// Values per action point (`max_action_dim`).
    pub fn action_dim(&self) -> usize {
        match &self.model {
            Head::Flow(m) => m.cfg.max_action_dim,
            Head::Tokens { spec, .. } => spec.action_dim(),
        }
    }
    /// The model's state width (`max_state_dim`); shorter states are zero-padded. 0 for
    /// VLA-tokens, which (as OpenVLA) reads no state.
    pub fn state_dim(&self) -> usize {
        match &self.model {
            Head::Flow(m) => m.cfg.max_state_dim,
            Head::Tokens { .. } => 0,
        }
    }
    /// Side of the square images the vision tower takes.
    pub fn image_size(&self) -> usize {
        self.vision().image_size
    }
    fn vision(&self) -> &rudder_tune::models::siglip::Config {
        match &self.model {
            Head::Flow(m) => &m.cfg.vlm.vision,
            Head::Tokens { model, .. } => &model.cfg.vision,
        }
    }
    /// Model passes per chunk after the prefix: Euler steps (flow), tokens decoded one at a
    /// time (autoregressive tokens) or 1 (parallel tokens).
    pub fn num_inference_steps(&self) -> usize {
        match &self.model {
            Head::Flow(m) => m.cfg.num_inference_steps,
            Head::Tokens { spec, .. } => match spec.decoding {
                tokens::Decoding::Autoregressive => spec.len(),
                tokens::Decoding::Parallel => 1,
            },
        }
    }

    /// The space [`Policy::infer`] declares its chunks in.
    pub fn chunk_space(&self) -> ActionSpace {
        let dim = self.action_dim();
        match self.settings.action_space {
            Some(ChunkSpace::EefDelta7) => ActionSpace::EefDelta7,
            Some(ChunkSpace::JointPositions) => ActionSpace::JointPositions { dof: dim },
            Some(ChunkSpace::JointVelocities) => ActionSpace::JointVelocities { dof: dim },
            None if dim >= 7 => ActionSpace::EefDelta7,
            None => ActionSpace::JointPositions { dof: dim },
        }
    }

    /// One action chunk, `action_horizon() x action_dim()`, un-normalised.
    ///
    /// `images`: (camera slot name, image) for the cameras present, any size; slots not given
    /// are masked. `state`: any length (normalised, then zero-padded or truncated to
    /// `state_dim()` after normalisation). The same inputs and `seed` give the same chunk.
    pub fn infer_raw(
        &self,
        images: &[(String, rudder_robot::ImageRgb8)],
        state: &[f64],
        prompt_text: &str,
        seed: u64,
    ) -> Result<Vec<Vec<f32>>, FlowError> {
        self.infer_raw_hooked(images, state, prompt_text, seed, None)
    }

    /// [`Self::infer_raw`] with hooks on the prefix pass (vision tower and language model:
    /// steering sets `blocks.{l}.mlp.act` neurons of the language model there). The action
    /// expert's pass runs unhooked.
    pub fn infer_raw_hooked(
        &self,
        images: &[(String, rudder_robot::ImageRgb8)],
        state: &[f64],
        prompt_text: &str,
        seed: u64,
        hooks: Option<&mut Hooks>,
    ) -> Result<Vec<Vec<f32>>, FlowError> {
        self.infer_inner(images, state, prompt_text, seed, hooks, None)
            .map(|(rows, _)| rows)
    }

    /// Length of the noise a flow chunk is decoded from (`horizon x max_action_dim`); 0 for
    /// the tokens head, which has none.
    pub fn noise_dim(&self) -> usize {
        match &self.model {
            Head::Flow(m) => m.cfg.chunk_size * m.cfg.max_action_dim,
            Head::Tokens { .. } => 0,
        }
    }

    /// Length of [`LatentChunk::features`]: the prefix's width plus the padded state.
    pub fn feature_dim(&self) -> usize {
        match &self.model {
            Head::Flow(m) => m.vlm.language_model.cfg.hidden_size + m.cfg.max_state_dim,
            Head::Tokens { .. } => 0,
        }
    }

    fn obs_images(obs: &Observation) -> Vec<(String, rudder_robot::ImageRgb8)> {
        obs.images
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect()
    }

    fn require_flow(&self) -> Result<(), FlowError> {
        if self.is_flow() {
            Ok(())
        } else {
            Err(FlowError::input(
                "policy",
                format!(
                    "{} has a tokens head; latent-noise RL needs the flow head",
                    self.dir.display()
                ),
            ))
        }
    }

    /// Decodes the chunk for `obs` from `noise` (`noise_dim()` values) instead of the policy's
    /// own draw: the action of a latent-noise actor steering the frozen flow (DSRL). No
    /// inpainting, so the chunk is a function of (observation, noise) alone.
    pub fn decode_latent(
        &self,
        obs: &Observation,
        noise: &[f32],
    ) -> Result<LatentChunk, FlowError> {
        self.require_flow()?;
        let c = self.infer_with(
            &Self::obs_images(obs),
            &obs.state,
            &obs.instruction,
            Noise::Given(noise),
            None,
            None,
        )?;
        Ok(LatentChunk {
            features: c.features.unwrap_or_default(),
            rows: c.rows,
            normalized: c.normalized.unwrap_or_default(),
        })
    }

    /// [`Self::decode_latent`] with the noise chosen by `choose` from this observation's
    /// features (one prefix pass for both); returns the chunk and the noise.
    pub fn decode_chosen(
        &self,
        obs: &Observation,
        choose: &mut NoiseChooser<'_>,
    ) -> Result<(LatentChunk, Vec<f32>), FlowError> {
        self.require_flow()?;
        let mut chosen = Vec::new();
        let mut keep = |f: &[f32]| {
            let w = choose(f)?;
            chosen.clone_from(&w);
            Ok(w)
        };
        let c = self.infer_with(
            &Self::obs_images(obs),
            &obs.state,
            &obs.instruction,
            Noise::Chosen(&mut keep),
            None,
            None,
        )?;
        let chunk = LatentChunk {
            features: c.features.unwrap_or_default(),
            rows: c.rows,
            normalized: c.normalized.unwrap_or_default(),
        };
        Ok((chunk, chosen))
    }

    /// The features of `obs` ([`LatentChunk::features`]) from the prefix pass alone.
    pub fn latent_features(&self, obs: &Observation) -> Result<Vec<f32>, FlowError> {
        self.require_flow()?;
        let c = self.infer_with(
            &Self::obs_images(obs),
            &obs.state,
            &obs.instruction,
            Noise::FeaturesOnly,
            None,
            None,
        )?;
        Ok(c.features.unwrap_or_default())
    }

    /// The features of `obs` and the noise the flow would decode into `rows` (un-normalised,
    /// `horizon x action_dim`; shorter chunks are padded by repeating the last row): how a
    /// demonstrated chunk enters the latent actor's action space.
    pub fn encode_latent(
        &self,
        obs: &Observation,
        rows: &[Vec<f32>],
    ) -> Result<(Vec<f32>, Vec<f32>), FlowError> {
        self.require_flow()?;
        let Head::Flow(m) = &self.model else {
            return Err(FlowError::input("policy", "no flow head"));
        };
        let (h, a) = (m.cfg.chunk_size, m.cfg.max_action_dim);
        let Some(last) = rows.last() else {
            return Err(FlowError::input("actions", "empty chunk"));
        };
        let mut target = Vec::with_capacity(h * a);
        for i in 0..h {
            let row = rows.get(i).unwrap_or(last);
            let mut r: Vec<f64> = row.iter().map(|&v| f64::from(v)).collect();
            if let Some(ms) = &self.norm.actions {
                ms.normalize(&mut r);
            }
            r.resize(a, 0.0);
            target.extend(r.iter().map(|&v| v as f32));
        }
        let c = self.infer_with(
            &Self::obs_images(obs),
            &obs.state,
            &obs.instruction,
            Noise::Invert(&target),
            None,
            None,
        )?;
        Ok((
            c.features.unwrap_or_default(),
            c.normalized.unwrap_or_default(),
        ))
    }

    /// The chunk (un-normalised rows) and, for the flow head, the same chunk in the model's
    /// normalised space; `guide` inpaints it (flow head only).
    fn infer_inner(
        &self,
        images: &[(String, rudder_robot::ImageRgb8)],
        state: &[f64],
        prompt_text: &str,
        seed: u64,
        hooks: Option<&mut Hooks>,
        guide: Option<(Vec<f32>, Vec<f32>)>,
    ) -> Result<InferredChunk, FlowError> {
        self.infer_with(images, state, prompt_text, Noise::Seed(seed), hooks, guide)
            .map(|c| (c.rows, c.normalized))
    }

    fn infer_with(
        &self,
        images: &[(String, rudder_robot::ImageRgb8)],
        state: &[f64],
        prompt_text: &str,
        noise_in: Noise<'_>,
        hooks: Option<&mut Hooks>,
        guide: Option<(Vec<f32>, Vec<f32>)>,
    ) -> Result<FlowChunk, FlowError> {
        let cams = self.settings.cameras.len();
        let size = self.image_size();
        let per_image = self.vision().num_patches();
        let plane = 3 * size * size;

        let mut pixels = vec![-1f32; cams * plane];
        let mut present = vec![false; cams];
        for (name, img) in images {
            let slot = self
                .settings
                .cameras
                .iter()
                .position(|c| c == name)
                .ok_or_else(|| {
                    FlowError::input(
                        name.as_str(),
                        format!(
                            "not one of the policy's cameras {:?}",
                            self.settings.cameras
                        ),
                    )
                })?;
            if present[slot] {
                return Err(FlowError::input(name.as_str(), "given twice"));
            }
            let px = preprocess::to_pixels(
                name,
                &img.data,
                img.height as usize,
                img.width as usize,
                size,
            )?;
            pixels[slot * plane..(slot + 1) * plane].copy_from_slice(&px);
            present[slot] = true;
        }
        if !present.iter().any(|&p| p) {
            return Err(FlowError::input(
                "images",
                format!("no camera image given (slots {:?})", self.settings.cameras),
            ));
        }

        if let Some(i) = state.iter().position(|v| !v.is_finite()) {
            return Err(FlowError::input(
                "state",
                format!("entry {i} is not finite"),
            ));
        }
        let image_id = match &self.model {
            Head::Flow(m) => m.cfg.vlm.image_token_id,
            Head::Tokens { model, .. } => model.cfg.image_token_id,
        };
        let text = self
            .tokenizer
            .encode(prompt_text, self.settings.max_prompt_tokens)?;
        let mut ids = Vec::with_capacity(cams * per_image + text.len());
        let mut mask = Vec::with_capacity(ids.capacity());
        for &p in &present {
            ids.extend(std::iter::repeat_n(image_id, per_image));
            mask.extend(std::iter::repeat_n(p, per_image));
        }
        ids.extend(&text);
        mask.extend(std::iter::repeat_n(true, text.len()));

        let model = match &self.model {
            Head::Flow(m) => m,
            Head::Tokens { model, spec } => {
                let vocab = model.cfg.text.0.vocab_size;
                let px = Tensor::from_vec(pixels, (1, cams, 3, size, size), &self.device)?;
                let toks = tokens::decode(model, &px, &ids, &mask, spec, vocab, hooks)?;
                let d = spec.action_dim();
                let rows = toks
                    .chunks(d)
                    .map(|row| {
                        row.iter()
                            .enumerate()
                            .map(|(i, &t)| spec.value(vocab, i, t) as f32)
                            .collect()
                    })
                    .collect();
                return Ok(FlowChunk {
                    rows,
                    normalized: None,
                    features: None,
                });
            }
        };
        let cfg = &model.cfg;
        let mut st = state.to_vec();
        if let Some(ms) = &self.norm.state {
            ms.normalize(&mut st);
        }
        st.resize(cfg.max_state_dim, 0.0);
        let st: Vec<f32> = st.iter().map(|&v| v as f32).collect();
        let state_features = st.clone();
        let seq = ids.len();
        let inputs = pi0::Inputs {
            input_ids: Tensor::from_vec(ids, (1, seq), &self.device)?,
            pixel_values: Tensor::from_vec(pixels, (1, cams, 3, size, size), &self.device)?,
            pixel_attention_mask: Some(vec![present]),
            attention_mask: Some(vec![mask]),
        };
        let state_t = Tensor::from_vec(st, (1, cfg.max_state_dim), &self.device)?;
        let (h, a) = (cfg.chunk_size, cfg.max_action_dim);
        // One prefix pass serves every use: its features, a chooser's noise, the inversion.
        let cache = model.prefix_cache(&inputs, hooks)?;
        let mut features: Vec<f32> = cache.pooled.flatten_all()?.to_vec1()?;
        features.extend(&state_features);
        let given = |v: Vec<f32>| {
            if v.len() == h * a && v.iter().all(|x| x.is_finite()) {
                return Ok(v);
            }
            Err(FlowError::input(
                "noise",
                format!(
                    "expected {h} x {a} = {} finite values, got {} (finite: {})",
                    h * a,
                    v.len(),
                    v.iter().all(|x| x.is_finite())
                ),
            ))
        };
        let noise_v = match noise_in {
            Noise::Seed(seed) => noise::gaussian(seed, h * a),
            Noise::Given(v) => given(v.to_vec())?,
            Noise::Chosen(choose) => given(choose(&features)?)?,
            Noise::FeaturesOnly => {
                return Ok(FlowChunk {
                    rows: Vec::new(),
                    normalized: None,
                    features: Some(features),
                });
            }
            Noise::Invert(target) => {
                if target.len() != h * a {
                    return Err(FlowError::input(
                        "actions",
                        format!("expected {h} x {a} normalised values, got {}", target.len()),
                    ));
                }
                let x0 = Tensor::from_vec(target.to_vec(), (1, h, a), &self.device)?;
                let w = model.invert_actions(&cache, &state_t, &x0, None, INVERT_FIXED_POINT)?;
                return Ok(FlowChunk {
                    rows: Vec::new(),
                    normalized: Some(w.flatten_all()?.to_vec1()?),
                    features: Some(features),
                });
            }
        };
        let noise_t = Tensor::from_vec(noise_v, (1, h, a), &self.device)?;
        let guide = match guide {
            Some((target, weights)) => Some(pi0::ChunkGuide {
                target: Tensor::from_vec(target, (1, h, a), &self.device)?,
                weights,
            }),
            None => None,
        };
        let out = model.sample_actions_guided(&cache, &state_t, &noise_t, None, guide.as_ref())?;
        let rows: Vec<Vec<f32>> = out
            .squeeze(0)?
            .to_dtype(candle_core::DType::F32)?
            .to_vec2()?;
        let normalized: Vec<f32> = rows.iter().flatten().copied().collect();
        let mut chunk = Vec::with_capacity(rows.len());
        for (i, row) in rows.into_iter().enumerate() {
            let mut r: Vec<f64> = row.into_iter().map(f64::from).collect();
            if let Some(ms) = &self.norm.actions {
                ms.unnormalize(&mut r);
            }
            if r.iter().any(|v| !v.is_finite()) {
                return Err(FlowError::input(
                    "actions",
                    format!("the model produced a non-finite value at point {i}"),
                ));
            }
            chunk.push(r.into_iter().map(|v| v as f32).collect());
        }
        Ok(FlowChunk {
            rows: chunk,
            normalized: Some(normalized),
            features: Some(features),
        })
    }

    /// The inpainting guide for a chunk starting at `start_time`: the previous chunk's tail,
    /// shifted to the new start, and the weights of `settings.inpainting`.
    fn guide_for(&self, start_time: f64) -> Option<(Vec<f32>, Vec<f32>)> {
        if self.settings.inpainting == Inpainting::Off {
            return None;
        }
        let Head::Flow(model) = &self.model else {
            return None;
        };
        let (h, a) = (model.cfg.chunk_size, model.cfg.max_action_dim);
        let last = self.last_chunk.lock().unwrap_or_else(|p| p.into_inner());
        let last = last.as_ref()?;
        if last.normalized.len() != h * a || last.dt <= 0.0 {
            return None;
        }
        let shift = ((start_time - last.start_time) / last.dt).round();
        if !(0.0..h as f64).contains(&shift) {
            return None;
        }
        let shift = shift as usize;
        let overlap = h - shift;
        let mut target = vec![0f32; h * a];
        target[..overlap * a].copy_from_slice(&last.normalized[shift * a..]);
        Some((target, self.settings.inpainting.weights(h, overlap)))
    }
}

impl Policy for VlaPolicy {
    fn infer(&mut self, obs: &Observation) -> Result<ActionChunk, PolicyError> {
        self.infer_chunk(obs, None)
    }

    fn reset(&mut self) {
        *self.last_chunk.lock().unwrap_or_else(|p| p.into_inner()) = None;
    }
}

impl VlaPolicy {
    /// The `rudder_robot::Policy` chunk for `obs`, with optional hooks on the prefix pass
    /// (see [`Self::infer_raw_hooked`]).
    pub fn infer_chunk(
        &self,
        obs: &Observation,
        hooks: Option<&mut Hooks>,
    ) -> Result<ActionChunk, PolicyError> {
        let images: Vec<(String, rudder_robot::ImageRgb8)> = obs
            .images
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        let guide = self.guide_for(obs.timestamp);
        let inferred = self
            .infer_inner(
                &images,
                &obs.state,
                &obs.instruction,
                self.next_seed(),
                hooks,
                guide,
            )
            .map_err(|e| match e {
                FlowError::Input { input, problem } if input == "state" => {
                    PolicyError::BadObservation {
                        field: "state",
                        reason: problem,
                    }
                }
                FlowError::Input { input, problem } if input != "actions" => {
                    PolicyError::BadObservation {
                        field: "images",
                        reason: format!("`{input}`: {problem}"),
                    }
                }
                other => PolicyError::Inference(other.to_string()),
            })?;
        let (rows, normalized) = inferred;
        if let Some(normalized) = normalized {
            *self.last_chunk.lock().unwrap_or_else(|p| p.into_inner()) = Some(LastChunk {
                start_time: obs.timestamp,
                dt: self.settings.dt,
                normalized,
            });
        }
        self.chunk_from_rows(obs.timestamp, &rows)
    }

    /// The loop's chunk for un-normalised `rows` starting at `timestamp`.
    pub fn chunk_from_rows(
        &self,
        timestamp: f64,
        rows: &[Vec<f32>],
    ) -> Result<ActionChunk, PolicyError> {
        let space = self.chunk_space();
        let f = |v: f32| v as f64;
        let actions = rows
            .iter()
            .map(|r| match space {
                ActionSpace::EefDelta7 => Action::EefDelta {
                    dpos: [f(r[0]), f(r[1]), f(r[2])],
                    drot: [f(r[3]), f(r[4]), f(r[5])],
                    gripper: f(r[6]),
                },
                ActionSpace::JointVelocities { .. } => Action::JointVelocities {
                    qd: r.iter().copied().map(f).collect(),
                    gripper: None,
                },
                _ => Action::JointPositions {
                    q: r.iter().copied().map(f).collect(),
                    gripper: None,
                },
            })
            .collect();
        ActionChunk::new(space, timestamp, self.settings.dt, actions)
            .map_err(|e| PolicyError::Inference(e.to_string()))
    }
}
