//! [`SuccessClassifier`]: a PaliGemma-style VLM (rudder-tune's `paligemma::Model`: a SigLIP
//! tower over each camera, a projector, a Gemma decoder) asked "Is the task '<instruction>'
//! done? Answer yes or no." about the agent view and the wrist camera (RoboFuME, REFERENCE §2).
//!
//! - Sequence: `[agentview patches][wrist patches][<bos> question]`, all of it one
//!   bidirectional prefix (PaliGemma's prefix-LM mask); the answer is read from the logits at
//!   the last question token, the position that predicts the first answer token.
//! - Verdict: the margin `z = logit("yes") - logit("no")` there. The raw probability
//!   `sigmoid(z)` is P("yes") among the two answers, so `z > 0` is RoboFuME's rule P("yes") >
//!   P("no"); the calibrated probability is `sigmoid(z / T)` with the temperature fitted on a
//!   validation split, and success is that probability above the checkpoint's threshold.
//!
//! A checkpoint folder holds `config.json` + `model.safetensors` (Hub names of
//! `PaliGemmaForConditionalGeneration`), `tokenizer.json` (a Hugging Face tokenizer in which
//! "yes" and "no" are single tokens) and `reward.json` ([`RewardConfig`]). Each is required: a
//! folder without one is refused with its name.

use std::path::{Path, PathBuf};

use candle_core::{Device, Tensor, D};
use rudder_robot::{ImageRgb8, Observation};
use rudder_tune::load::{load_model, AnyModel};
use rudder_tune::models::paligemma;
use rudder_tune::text::prompt;
use rudder_tune::text::tokenizer::PromptTokenizer;
use serde::{Deserialize, Serialize};

use crate::calibration::{check_temperature_threshold, sigmoid};
use crate::RewardError;

/// The question, with `{instruction}` replaced by the task's instruction.
pub const QUESTION: &str = "Is the task '{instruction}' done? Answer yes or no.";
/// The cameras, in the order their patches enter the sequence (robot's observation names).
pub const CAMERAS: [&str; 2] = ["agentview", "wrist"];
/// `reward.json`'s format.
pub const REWARD_FORMAT_VERSION: u32 = 1;

/// `reward.json`: what `config.json` does not say.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RewardConfig {
    pub format_version: u32,
    /// The question template ([`QUESTION`]).
    pub question: String,
    /// Observation image names, in sequence order.
    pub cameras: Vec<String>,
    /// Side of the square images the vision tower reads (frames are resized to it).
    pub image_size: usize,
    /// Longest question in tokens, `<bos>` included.
    pub max_prompt_tokens: usize,
    pub yes_id: u32,
    pub no_id: u32,
    /// Temperature of the margin (1 before calibration).
    pub temperature: f64,
    /// Calibrated probability above which the verdict is "done".
    pub threshold: f64,
    /// Whether `temperature` and `threshold` were fitted on held-out data.
    pub calibrated: bool,
}

impl RewardConfig {
    /// Checks the numbers against a model with `vocab_size` ids and `image_size` input.
    pub fn check(
        &self,
        path: &Path,
        vocab_size: usize,
        image_size: usize,
    ) -> Result<(), RewardError> {
        let err = |field: &str, problem: String| RewardError::field(path, field, problem);
        if self.format_version != REWARD_FORMAT_VERSION {
            return Err(err(
                "format_version",
                format!(
                    "{} (this build reads {REWARD_FORMAT_VERSION})",
                    self.format_version
                ),
            ));
        }
        if !self.question.contains("{instruction}") {
            return Err(err("question", "must contain `{instruction}`".into()));
        }
        if self.cameras.is_empty() || self.cameras.len() > 4 {
            return Err(err(
                "cameras",
                format!("{} names; need 1..=4", self.cameras.len()),
            ));
        }
        if self.image_size != image_size {
            return Err(err(
                "image_size",
                format!(
                    "{} differs from config.json's vision_config.image_size {image_size}",
                    self.image_size
                ),
            ));
        }
        if !(2..=4096).contains(&self.max_prompt_tokens) {
            return Err(err(
                "max_prompt_tokens",
                format!("{} must be in 2..=4096", self.max_prompt_tokens),
            ));
        }
        for (field, id) in [("yes_id", self.yes_id), ("no_id", self.no_id)] {
            if id as usize >= vocab_size {
                return Err(err(
                    field,
                    format!("{id} is outside the vocabulary ({vocab_size} ids)"),
                ));
            }
        }
        if self.yes_id == self.no_id {
            return Err(err("no_id", "must differ from yes_id".into()));
        }
        check_temperature_threshold(path, self.temperature, self.threshold)
    }

    /// The question about `instruction`.
    pub fn question_for(&self, instruction: &str) -> Result<String, RewardError> {
        let text = instruction.trim();
        if text.is_empty() {
            return Err(RewardError::input(
                "instruction",
                "is empty: the classifier needs the task's instruction",
            ));
        }
        Ok(self.question.replace("{instruction}", text))
    }
}

/// One classification.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Verdict {
    /// `logit("yes") - logit("no")` at the answer position.
    pub margin: f64,
    /// P("yes") among the two answers, uncalibrated.
    pub p_raw: f64,
    /// The calibrated probability of success, `sigmoid(margin / T)`.
    pub p_success: f64,
    /// `p_success` above the checkpoint's threshold.
    pub success: bool,
}

impl Verdict {
    /// The verdict for `margin` under the temperature and threshold of a calibration.
    pub(crate) fn of(margin: f64, temperature: f64, threshold: f64) -> Self {
        let p_success = sigmoid(margin / temperature);
        Verdict {
            margin,
            p_raw: sigmoid(margin),
            p_success,
            success: p_success > threshold,
        }
    }
}

/// Channel-first pixels of one frame of `camera`, checked and resized to `size`.
pub(crate) fn image_pixels(
    camera: &str,
    img: &ImageRgb8,
    size: usize,
) -> Result<Vec<f32>, RewardError> {
    Ok(rudder_tune::image::to_pixels(
        camera,
        &img.data,
        img.height as usize,
        img.width as usize,
        size,
    )?)
}

/// What one classification reads: each camera's frame and the instruction.
#[derive(Debug, Clone, Copy)]
pub struct Query<'a> {
    pub frames: &'a [&'a ImageRgb8],
    pub instruction: &'a str,
}

impl Query<'_> {
    /// The pixels of the frames, one per camera of `cams` in order, each resized to `size`
    /// and concatenated; a query with another number of frames is refused.
    pub(crate) fn pixels<S: AsRef<str>>(
        &self,
        cams: &[S],
        size: usize,
    ) -> Result<Vec<f32>, RewardError> {
        if self.frames.len() != cams.len() {
            let names: Vec<&str> = cams.iter().map(AsRef::as_ref).collect();
            return Err(RewardError::input(
                "frames",
                format!(
                    "{} frames given; the classifier reads {} ({})",
                    self.frames.len(),
                    cams.len(),
                    names.join(", ")
                ),
            ));
        }
        let mut px = Vec::with_capacity(cams.len() * 3 * size * size);
        for (name, img) in cams.iter().zip(self.frames) {
            px.extend(image_pixels(name.as_ref(), img, size)?);
        }
        Ok(px)
    }
}

/// A batch ready for the model: ids, pixels and where to read the answer.
pub(crate) struct Batch {
    pub ids: Tensor,
    /// `[b, cams, 3, s, s]`.
    pub pixels: Tensor,
    pub valid: Vec<Vec<bool>>,
    pub prefix: Vec<Vec<bool>>,
    /// Row-major index `row * len + position` of each row's answer position.
    pub reads: Vec<u32>,
}

/// How questions and frames become a [`Batch`]: shared by training and inference so both see
/// the same sequence.
#[derive(Debug, Clone)]
pub struct Encoder {
    pub cfg: RewardConfig,
    pub tokenizer: PromptTokenizer,
    pub image_token: u32,
    /// Patches per camera.
    pub patches: usize,
}

impl Encoder {
    /// `[<bos>] + ids` of the question about `instruction`, refused when longer than the limit
    /// (a cut question would lose "Answer yes or no.").
    pub fn prompt_ids(&self, instruction: &str) -> Result<Vec<u32>, RewardError> {
        let q = self.cfg.question_for(instruction)?;
        let ids = self.tokenizer.encode(&q, usize::MAX)?;
        if ids.len() > self.cfg.max_prompt_tokens {
            return Err(RewardError::input(
                "instruction",
                format!(
                    "the question takes {} tokens, more than max_prompt_tokens {} (\"{}\")",
                    ids.len(),
                    self.cfg.max_prompt_tokens,
                    instruction.trim()
                ),
            ));
        }
        Ok(ids)
    }

    /// Channel-first pixels of one frame, checked and resized to the tower's input.
    pub fn pixels(&self, camera: &str, img: &ImageRgb8) -> Result<Vec<f32>, RewardError> {
        image_pixels(camera, img, self.cfg.image_size)
    }

    /// Builds the batch of `rows` (per row: every camera's pixels, concatenated, and the
    /// question's ids).
    pub(crate) fn batch(
        &self,
        rows: &[(Vec<f32>, Vec<u32>)],
        dev: &Device,
    ) -> Result<Batch, RewardError> {
        let b = rows.len();
        let cams = self.cfg.cameras.len();
        let s = self.cfg.image_size;
        let img_len = cams * self.patches;
        let longest = rows.iter().map(|r| r.1.len()).max().unwrap_or(1);
        let t = img_len + longest;
        let mut ids = Vec::with_capacity(b * t);
        let mut pixels = Vec::with_capacity(b * cams * 3 * s * s);
        let (mut valid, mut reads) = (Vec::with_capacity(b), Vec::with_capacity(b));
        for (bi, (px, p)) in rows.iter().enumerate() {
            if px.len() != cams * 3 * s * s {
                return Err(RewardError::input(
                    "pixels",
                    format!(
                        "row {bi}: {} values, expected {}",
                        px.len(),
                        cams * 3 * s * s
                    ),
                ));
            }
            pixels.extend_from_slice(px);
            ids.extend(std::iter::repeat_n(self.image_token, img_len));
            ids.extend(p);
            ids.extend(std::iter::repeat_n(prompt::PAD, longest - p.len()));
            let n = img_len + p.len();
            let mut v = vec![true; n];
            v.resize(t, false);
            valid.push(v);
            reads.push((bi * t + n - 1) as u32);
        }
        Ok(Batch {
            ids: Tensor::from_vec(ids, (b, t), dev)?,
            pixels: Tensor::from_vec(pixels, (b, cams, 3, s, s), dev)?,
            // The whole real sequence is one bidirectional prefix.
            prefix: valid.clone(),
            valid,
            reads,
        })
    }
}

/// The answer logits `[rows, vocab]` of `batch`.
pub(crate) fn answer_logits(
    model: &paligemma::Model,
    batch: &Batch,
) -> candle_core::Result<Tensor> {
    let feats = model.camera_features(&batch.pixels, None)?;
    let lg = model.prefix_lm_logits(&batch.ids, &feats, &batch.valid, &batch.prefix, None)?;
    let (b, t, vocab) = lg.dims3()?;
    let at = Tensor::from_vec(batch.reads.clone(), batch.reads.len(), lg.device())?;
    lg.reshape((b * t, vocab))?.index_select(&at, 0)
}

/// `logit(yes) - logit(no)` per row of `batch`.
pub(crate) fn margins(
    model: &paligemma::Model,
    enc: &Encoder,
    batch: &Batch,
) -> Result<Vec<f64>, RewardError> {
    let lg = answer_logits(model, batch)?;
    let yes = lg.narrow(D::Minus1, enc.cfg.yes_id as usize, 1)?;
    let no = lg.narrow(D::Minus1, enc.cfg.no_id as usize, 1)?;
    let m: Vec<f32> = (yes - no)?.flatten_all()?.to_vec1()?;
    Ok(m.into_iter().map(f64::from).collect())
}

/// A trained success classifier.
pub struct SuccessClassifier {
    pub dir: PathBuf,
    model: paligemma::Model,
    pub encoder: Encoder,
    device: Device,
}

/// `dir/name` when it is a file, else the error `missing` makes of that path.
pub(crate) fn require_file(
    dir: &Path,
    name: &str,
    missing: impl FnOnce(PathBuf) -> RewardError,
) -> Result<PathBuf, RewardError> {
    let p = dir.join(name);
    if p.is_file() {
        Ok(p)
    } else {
        Err(missing(p))
    }
}

fn require(dir: &Path, name: &str) -> Result<PathBuf, RewardError> {
    require_file(dir, name, |path| RewardError::File {
        path,
        problem: format!(
            "missing: a reward checkpoint holds config.json, model.safetensors, tokenizer.json \
             and reward.json (`rudder train reward` writes them); {name} is not there"
        ),
    })
}

impl SuccessClassifier {
    /// Loads a checkpoint folder (or a training output folder, through its `latest`).
    pub fn load(dir: &Path) -> Result<Self, RewardError> {
        let dir = rudder_tune::train::checkpoint::resolve(dir)?;
        require(&dir, "config.json")?;
        let tok_path = require(&dir, "tokenizer.json")?;
        let cfg_path = require(&dir, "reward.json")?;
        let text = std::fs::read_to_string(&cfg_path).map_err(|e| RewardError::File {
            path: cfg_path.clone(),
            problem: e.to_string(),
        })?;
        let cfg: RewardConfig = serde_json::from_str(&text).map_err(|e| RewardError::File {
            path: cfg_path.clone(),
            problem: format!("not a reward.json: {e}"),
        })?;
        let device = Device::Cpu;
        let model = match load_model(&dir, &device)?.model {
            AnyModel::PaliGemma(m) => *m,
            _ => {
                return Err(RewardError::File {
                    path: dir.join("config.json"),
                    problem: "a success classifier is a PaliGemmaForConditionalGeneration; this \
                              config.json describes another architecture"
                        .into(),
                })
            }
        };
        let tokenizer = PromptTokenizer::load(&dir, 0)?;
        if !tokenizer.is_bpe() {
            return Err(RewardError::File {
                path: tok_path,
                problem: "could not be read as a tokenizer".into(),
            });
        }
        Self::from_parts(dir, model, tokenizer, cfg, &cfg_path)
    }

    /// A classifier over an already built model (training's evaluation, tests).
    pub fn from_parts(
        dir: PathBuf,
        model: paligemma::Model,
        tokenizer: PromptTokenizer,
        cfg: RewardConfig,
        cfg_path: &Path,
    ) -> Result<Self, RewardError> {
        let vocab = model.cfg.text.0.vocab_size;
        cfg.check(cfg_path, vocab, model.cfg.vision.image_size)?;
        for (word, id) in [("yes", cfg.yes_id), ("no", cfg.no_id)] {
            if tokenizer.token_id(word) != Some(id) {
                return Err(RewardError::field(
                    cfg_path,
                    if word == "yes" { "yes_id" } else { "no_id" },
                    format!(
                        "{id} is not the tokenizer's id of \"{word}\" ({:?})",
                        tokenizer.token_id(word)
                    ),
                ));
            }
        }
        let encoder = Encoder {
            image_token: model.cfg.image_token_id,
            patches: model.cfg.vision.num_patches(),
            cfg,
            tokenizer,
        };
        Ok(Self {
            dir,
            model,
            encoder,
            device: Device::Cpu,
        })
    }

    pub fn config(&self) -> &RewardConfig {
        &self.encoder.cfg
    }

    /// Replaces the calibration (what `rudder train reward` fits at the end).
    pub fn set_calibration(&mut self, temperature: f64, threshold: f64) {
        self.encoder.cfg.temperature = temperature;
        self.encoder.cfg.threshold = threshold;
        self.encoder.cfg.calibrated = true;
    }

    /// The verdict for a margin under this checkpoint's calibration.
    pub fn verdict(&self, margin: f64) -> Verdict {
        let c = &self.encoder.cfg;
        Verdict::of(margin, c.temperature, c.threshold)
    }

    /// Margins of a batch of queries (one forward pass).
    pub fn margins(&self, queries: &[Query<'_>]) -> Result<Vec<f64>, RewardError> {
        let cfg = &self.encoder.cfg;
        let mut rows = Vec::with_capacity(queries.len());
        for q in queries {
            let px = q.pixels(&cfg.cameras, cfg.image_size)?;
            rows.push((px, self.encoder.prompt_ids(q.instruction)?));
        }
        if rows.is_empty() {
            return Ok(Vec::new());
        }
        let batch = self.encoder.batch(&rows, &self.device)?;
        margins(&self.model, &self.encoder, &batch)
    }

    /// Classifies one pair of frames.
    pub fn classify(
        &self,
        frames: &[&ImageRgb8],
        instruction: &str,
    ) -> Result<Verdict, RewardError> {
        let m = self.margins(&[Query {
            frames,
            instruction,
        }])?;
        Ok(self.verdict(m[0]))
    }

    /// Classifies an observation from robot's loop (its images by camera name).
    pub fn classify_observation(&self, obs: &Observation) -> Result<Verdict, RewardError> {
        let mut frames = Vec::with_capacity(self.encoder.cfg.cameras.len());
        for name in &self.encoder.cfg.cameras {
            frames.push(obs.images.get(name).ok_or_else(|| {
                RewardError::input(
                    name.as_str(),
                    format!(
                        "the observation has no `{name}` image (it has: {})",
                        obs.images.keys().cloned().collect::<Vec<_>>().join(", ")
                    ),
                )
            })?);
        }
        self.classify(&frames, &obs.instruction)
    }
}

/// The classifier as the success detector of a reset-free run.
impl rudder_robot::SuccessJudge for SuccessClassifier {
    fn judge(&mut self, obs: &Observation) -> Result<rudder_robot::Judgement, String> {
        let v = self.classify_observation(obs).map_err(|e| e.to_string())?;
        Ok(rudder_robot::Judgement {
            probability: v.p_success,
            success: v.success,
        })
    }
}
