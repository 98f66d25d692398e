//! The honest baseline beside the VLM success classifier: a small CNN trained on the same
//! frames, the same splits and the same trainer, read out as the same success margin `z`
//! (`sigmoid(z)` is its raw P(success), `sigmoid(z / T)` the calibrated one), so the two are
//! scored and calibrated by identical code.
//!
//! # The model ([`CnnSpec`], [`CnnModel`])
//!
//! - **One shared tower over both cameras**: the agent view and the wrist frame each go through
//!   the same stack of 3x3 convolutions (stride 2, padding 1, ReLU after each; `channels` gives
//!   their widths), then a global average pool. The two pooled vectors are concatenated in
//!   camera order ([`CAMERAS`]), so the head still knows which camera said what.
//! - **The instruction as a bag of words**: the mean of learned embeddings of the prompt
//!   tokenizer's ids of the instruction (`<bos>` included; a BPE trained on the data set's
//!   instructions, as the VLM's is).
//! - **Head**: `[agentview pool, wrist pool, text] -> linear(hidden) -> ReLU -> linear(1)`:
//!   one logit, the success margin.
//!
//! Weight names: `tower.conv{i}.{weight,bias}`, `text.embed.weight`,
//! `head.fc1.{weight,bias}`, `head.fc2.{weight,bias}`. The weights start from tune's seeded
//! from-scratch initialisation (LeCun normal, zero biases), so a seed gives one model.
//!
//! # Training ([`CnnFamily`] on tune's [`Trainer`](rudder_tune::train::Trainer))
//!
//! Binary cross-entropy with logits, mean over the batch; the frames of each training row are
//! shifted and brightness-jittered exactly as the VLM's are (`train.rs`: per camera, dy, dx,
//! then brightness, drawn from the run's generator), so a resumed run is bit-identical.
//!
//! # The checkpoint folder
//!
//! `cnn.json` ([`CnnSpec`]), `model.safetensors`, `tokenizer.json`, `calibration.json`
//! ([`CnnCalibration`]), `training.json`, plus the trainer's `optimizer.safetensors` and
//! `trainer_state.json`. There is deliberately no `config.json`: a CNN folder is not a tune
//! model and the VLM loader refuses it; [`is_cnn_checkpoint`] tells the two apart.
//! [`CnnClassifier::load`] requires `cnn.json`, `model.safetensors`, `tokenizer.json` and
//! `calibration.json` and names the one that is missing.

use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor, Var, D};
use rudder_tune::candle_nn::{
    self, Conv2d, Conv2dConfig, Embedding, Linear, Module, VarBuilder, VarMap,
};
use rudder_tune::text::tokenizer::{train_bpe_with, PromptTokenizer};
use rudder_tune::train::{Family, MicroBatch, Rng, Snapshot, StepStats};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::calibration::check_temperature_threshold;
use crate::classifier::{require_file, Query, Verdict, CAMERAS};
use crate::dataset::SuccessDataset;
use crate::train::{
    calibrate_on_val, config_state, distinct_instructions, graph_batch, in_batches, init_params,
    restore_config, save_model_weights, snapshot_weights, train_rows, trainer_settings,
    training_info, write_json_file, Calibration, RewardTrainer, TrainData,
};
use crate::RewardError;

/// `calibration.json`'s format.
pub const CNN_FORMAT_VERSION: u32 = 1;
/// The files [`CnnClassifier::load`] requires.
pub const CNN_FILES: [&str; 4] = [
    "cnn.json",
    "model.safetensors",
    "tokenizer.json",
    "calibration.json",
];

/// The CNN's architecture (`cnn.json`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CnnSpec {
    /// Side of the square input; frames are resized to it.
    pub image_size: usize,
    /// Output channels of each 3x3 stride-2 convolution of the shared camera tower.
    pub channels: Vec<usize>,
    /// Width of the instruction's word embeddings.
    pub embed_dim: usize,
    /// Width of the head's hidden layer.
    pub hidden: usize,
    /// Largest BPE vocabulary (specials included).
    pub max_vocab: usize,
}

impl Default for CnnSpec {
    fn default() -> Self {
        Self {
            image_size: 64,
            channels: vec![16, 32, 64],
            embed_dim: 32,
            hidden: 64,
            max_vocab: 512,
        }
    }
}

impl CnnSpec {
    /// Checks the numbers (`path` names the file they came from, for the message).
    pub fn check(&self, path: &Path) -> Result<(), RewardError> {
        let err = |field: &str, problem: String| RewardError::field(path, field, problem);
        if !(4..=1024).contains(&self.image_size) {
            return Err(err(
                "image_size",
                format!("{} must be in 4..=1024", self.image_size),
            ));
        }
        if self.channels.is_empty() || self.channels.len() > 8 {
            return Err(err(
                "channels",
                format!("{} layers; need 1..=8", self.channels.len()),
            ));
        }
        if let Some(c) = self.channels.iter().find(|&&c| c == 0 || c > 4096) {
            return Err(err("channels", format!("{c} must be in 1..=4096")));
        }
        for (field, v) in [("embed_dim", self.embed_dim), ("hidden", self.hidden)] {
            if !(1..=4096).contains(&v) {
                return Err(err(field, format!("{v} must be in 1..=4096")));
            }
        }
        if !(68..=1_000_000).contains(&self.max_vocab) {
            return Err(err(
                "max_vocab",
                format!("{} must be in 68..=1000000", self.max_vocab),
            ));
        }
        Ok(())
    }

    /// Width of the pooled features of all cameras.
    fn pooled(&self) -> usize {
        CAMERAS.len() * self.channels.last().copied().unwrap_or(0)
    }
}

/// The CNN baseline's forward pass.
pub struct CnnModel {
    pub spec: CnnSpec,
    pub vocab: usize,
    convs: Vec<Conv2d>,
    embed: Embedding,
    fc1: Linear,
    fc2: Linear,
}

impl CnnModel {
    /// Builds (or loads, depending on `vb`) the model for a tokenizer of `vocab` ids.
    pub fn new(spec: &CnnSpec, vocab: usize, vb: VarBuilder) -> Result<Self, RewardError> {
        if vocab == 0 {
            return Err(RewardError::input("vocab", "must be > 0"));
        }
        let conv_cfg = Conv2dConfig {
            padding: 1,
            stride: 2,
            ..Default::default()
        };
        let mut convs = Vec::with_capacity(spec.channels.len());
        let mut c_in = 3;
        let tower = vb.pp("tower");
        for (i, &c) in spec.channels.iter().enumerate() {
            convs.push(candle_nn::conv2d(
                c_in,
                c,
                3,
                conv_cfg,
                tower.pp(format!("conv{i}")),
            )?);
            c_in = c;
        }
        let embed = candle_nn::embedding(vocab, spec.embed_dim, vb.pp("text").pp("embed"))?;
        let head = vb.pp("head");
        let fc1 = candle_nn::linear(spec.pooled() + spec.embed_dim, spec.hidden, head.pp("fc1"))?;
        let fc2 = candle_nn::linear(spec.hidden, 1, head.pp("fc2"))?;
        Ok(Self {
            spec: spec.clone(),
            vocab,
            convs,
            embed,
            fc1,
            fc2,
        })
    }

    /// Success margins `[b]` of `pixels` `[b, cameras, 3, s, s]` (values in [-1, 1]) and each
    /// row's instruction ids (`ids.len() == b`, each non-empty and below the vocabulary).
    pub fn forward(&self, pixels: &Tensor, ids: &[Vec<u32>]) -> Result<Tensor, RewardError> {
        let (b, cams, ch, h, w) = pixels.dims5()?;
        let s = self.spec.image_size;
        if cams != CAMERAS.len() || ch != 3 || h != s || w != s {
            return Err(RewardError::input(
                "pixels",
                format!(
                    "shape {:?}, expected [b, {}, 3, {s}, {s}]",
                    pixels.dims(),
                    CAMERAS.len()
                ),
            ));
        }
        if ids.len() != b {
            return Err(RewardError::input(
                "ids",
                format!("{} rows of ids for {b} rows of pixels", ids.len()),
            ));
        }
        let dev = pixels.device();
        // The shared tower over every camera of every row.
        let mut x = pixels.reshape((b * cams, 3, s, s))?;
        for conv in &self.convs {
            x = conv.forward(&x)?.relu()?;
        }
        let pooled = x
            .mean(D::Minus1)?
            .mean(D::Minus1)?
            .reshape((b, self.spec.pooled()))?;
        // Bag of words: a [b, vocab] matrix of 1/len weights times the embedding table.
        let mut bag = vec![0f32; b * self.vocab];
        for (r, row) in ids.iter().enumerate() {
            if row.is_empty() {
                return Err(RewardError::input("ids", format!("row {r} is empty")));
            }
            let wgt = 1.0 / row.len() as f32;
            for &id in row {
                let id = id as usize;
                if id >= self.vocab {
                    return Err(RewardError::input(
                        "ids",
                        format!(
                            "row {r}: id {id} is outside the vocabulary ({})",
                            self.vocab
                        ),
                    ));
                }
                bag[r * self.vocab + id] += wgt;
            }
        }
        let bag = Tensor::from_vec(bag, (b, self.vocab), dev)?;
        let text = bag.matmul(self.embed.embeddings())?;
        let feats = Tensor::cat(&[&pooled, &text], 1)?;
        let z = self.fc2.forward(&self.fc1.forward(&feats)?.relu()?)?;
        Ok(z.reshape(b)?)
    }
}

/// `calibration.json`: the CNN's temperature and threshold (the VLM keeps them in
/// `reward.json`; the meaning is the same).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CnnCalibration {
    pub format_version: u32,
    /// Temperature of the margin (1 before calibration).
    pub temperature: f64,
    /// Calibrated probability above which the verdict is "done".
    pub threshold: f64,
    /// Whether `temperature` and `threshold` were fitted on held-out data.
    pub calibrated: bool,
}

impl Default for CnnCalibration {
    fn default() -> Self {
        Self {
            format_version: CNN_FORMAT_VERSION,
            temperature: 1.0,
            threshold: 0.5,
            calibrated: false,
        }
    }
}

impl CnnCalibration {
    pub fn check(&self, path: &Path) -> Result<(), RewardError> {
        let err = |field: &str, problem: String| RewardError::field(path, field, problem);
        if self.format_version != CNN_FORMAT_VERSION {
            return Err(err(
                "format_version",
                format!(
                    "{} (this build reads {CNN_FORMAT_VERSION})",
                    self.format_version
                ),
            ));
        }
        check_temperature_threshold(path, self.temperature, self.threshold)
    }

    /// The verdict for a margin under this calibration.
    pub fn verdict(&self, margin: f64) -> Verdict {
        Verdict::of(margin, self.temperature, self.threshold)
    }
}

trainer_settings!(TrainConfigCnn);

/// A CNN run's settings (saved in `trainer_state.json` and `training.json`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TrainConfigCnn {
    pub model: CnnSpec,
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

impl Default for TrainConfigCnn {
    fn default() -> Self {
        Self {
            model: CnnSpec::default(),
            steps: 2000,
            batch_size: 32,
            lr: 1e-3,
            weight_decay: 0.01,
            warmup_steps: 50,
            max_grad_norm: Some(1.0),
            seed: 0,
            shift: 3,
            brightness: 0.1,
        }
    }
}

/// `[<bos>] + ids` of the instruction; an empty one is refused.
fn instruction_ids(tok: &PromptTokenizer, instruction: &str) -> Result<Vec<u32>, RewardError> {
    let text = instruction.trim();
    if text.is_empty() {
        return Err(RewardError::input(
            "instruction",
            "is empty: the classifier needs the task's instruction",
        ));
    }
    Ok(tok.encode(text, usize::MAX)?)
}

/// Pixels `[cams * 3 * s * s]` and ids of data set row `i`, augmented when `aug` is given
/// (`(rng, shift, brightness)`).
fn data_row(
    data: &SuccessDataset,
    i: usize,
    s: usize,
    tok: &PromptTokenizer,
    aug: Option<(&mut Rng, usize, f64)>,
) -> Result<(Vec<f32>, Vec<u32>), RewardError> {
    let px = crate::train::frame_pixels(data, i, s, aug)?;
    Ok((px, instruction_ids(tok, &data.samples[i].instruction)?))
}

/// The pixel tensor `[b, cams, 3, s, s]` and the ids of `rows`.
fn stack(
    rows: Vec<(Vec<f32>, Vec<u32>)>,
    s: usize,
    dev: &Device,
) -> Result<(Tensor, Vec<Vec<u32>>), RewardError> {
    let b = rows.len();
    let mut px = Vec::with_capacity(b * CAMERAS.len() * 3 * s * s);
    let mut ids = Vec::with_capacity(b);
    for (p, i) in rows {
        px.extend(p);
        ids.push(i);
    }
    Ok((Tensor::from_vec(px, (b, CAMERAS.len(), 3, s, s), dev)?, ids))
}

/// The CNN being trained: everything of the run but the optimiser, the order and the
/// generator, which the trainer holds.
pub struct CnnFamily {
    pub cfg: TrainConfigCnn,
    pub varmap: VarMap,
    pub tokenizer: PromptTokenizer,
    pub last_loss: Option<f64>,
    device: Device,
}

impl CnnFamily {
    pub fn model(&self) -> Result<CnnModel, RewardError> {
        CnnModel::new(
            &self.cfg.model,
            self.tokenizer.vocab_size(),
            VarBuilder::from_varmap(&self.varmap, DType::F32, &self.device),
        )
    }

    /// Margins of data set rows `idx` with the current weights, in batches of `batch`.
    pub fn margins(
        &self,
        data: &SuccessDataset,
        idx: &[usize],
        batch: usize,
    ) -> Result<Vec<f64>, RewardError> {
        data_margins(
            &self.model()?,
            &self.tokenizer,
            &self.device,
            data,
            idx,
            batch,
        )
    }
}

fn data_margins(
    model: &CnnModel,
    tok: &PromptTokenizer,
    dev: &Device,
    data: &SuccessDataset,
    idx: &[usize],
    batch: usize,
) -> Result<Vec<f64>, RewardError> {
    let s = model.spec.image_size;
    in_batches(idx, batch, |chunk| {
        let rows = chunk
            .iter()
            .map(|&i| data_row(data, i, s, tok, None))
            .collect::<Result<Vec<_>, _>>()?;
        let (px, ids) = stack(rows, s, dev)?;
        let z: Vec<f32> = model.forward(&px, &ids)?.to_vec1()?;
        Ok(z.into_iter().map(f64::from).collect())
    })
}

/// Mean binary cross-entropy with logits: `softplus(z) - y z`, with `softplus(z)` computed as
/// `relu(z) + ln(1 + exp(-|z|))` (no overflow).
pub fn bce_with_logits(z: &Tensor, labels: &[bool]) -> candle_core::Result<Tensor> {
    let y: Vec<f32> = labels.iter().map(|&l| if l { 1.0 } else { 0.0 }).collect();
    let y = Tensor::from_vec(y, labels.len(), z.device())?;
    let softplus = (z.relu()? + (z.abs()?.neg()?.exp()? + 1.0)?.log()?)?;
    (softplus - (z * y)?)?.mean_all()
}

impl Family for CnnFamily {
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
        let s = self.cfg.model.image_size;
        let aug = (self.cfg.shift, self.cfg.brightness);
        let (rows, labels) = input.batch(idx, |i| {
            let aug = Some((&mut *rng, aug.0, aug.1));
            data_row(input.data, i, s, &self.tokenizer, aug)
        })?;
        let (px, ids) = stack(rows, s, &self.device)?;
        let z = model.forward(&px, &ids)?;
        Ok(graph_batch(idx.len(), bce_with_logits(&z, &labels)?))
    }

    fn write_files(
        &self,
        dir: &Path,
        snap: &Snapshot<'_>,
        data: &SuccessDataset,
    ) -> Result<(), RewardError> {
        write_json_file(dir, "cnn.json", &self.cfg.model)?;
        self.tokenizer.save(&dir.join("tokenizer.json"))?;
        write_json_file(dir, "calibration.json", &CnnCalibration::default())?;
        save_model_weights(&snapshot_weights(snap), dir)?;
        let info = training_info(Some("cnn"), data, &self.cfg, snap.step, self.last_loss)?;
        write_json_file(dir, "training.json", &info)
    }

    fn weights_file(&self) -> &str {
        "model.safetensors"
    }

    fn state(&self) -> Result<Map<String, Value>, RewardError> {
        config_state("cnn_config", &self.cfg, self.last_loss)
    }

    fn restore(&mut self, state: &Map<String, Value>, path: &Path) -> Result<(), RewardError> {
        restore_config(
            state,
            path,
            "cnn_config",
            "CNN reward trainer state",
            |c: &TrainConfigCnn| &c.model,
            &self.cfg.model,
        )?;
        self.last_loss = state.get("last_loss").and_then(Value::as_f64);
        Ok(())
    }

    fn stepped(&mut self, stats: &StepStats) {
        self.last_loss = Some(stats.loss);
    }
}

/// A CNN run: the [`CnnFamily`] on tune's trainer.
pub type CnnTrainer = RewardTrainer<CnnFamily>;

impl RewardTrainer<CnnFamily> {
    /// A freshly initialised CNN for `data` (its `train` split).
    pub fn new(cfg: TrainConfigCnn, data: &SuccessDataset) -> Result<Self, RewardError> {
        cfg.model.check(Path::new("<cnn spec>"))?;
        let rows = train_rows(data, cfg.batch_size)?;
        let tokenizer = train_bpe_with(
            distinct_instructions(data),
            std::iter::empty(),
            cfg.model.max_vocab,
        )?;
        // Every instruction must encode before a step is spent.
        for s in &data.samples {
            instruction_ids(&tokenizer, &s.instruction)?;
        }
        let device = Device::Cpu;
        let varmap = VarMap::new();
        CnnModel::new(
            &cfg.model,
            tokenizer.vocab_size(),
            VarBuilder::from_varmap(&varmap, DType::F32, &device),
        )?;
        let params = init_params(&varmap, cfg.seed)?;
        let tc = cfg.trainer_config();
        let rng = Rng::new(cfg.seed);
        let family = CnnFamily {
            cfg,
            varmap,
            tokenizer,
            last_loss: None,
            device,
        };
        Self::start(family, params, tc, rows, rng)
    }
}

/// The checkpoint folder of `dir`: `dir` itself when it holds `cnn.json`, else the checkpoint
/// its `latest` names (which must hold one).
pub fn resolve_cnn(dir: &Path) -> Result<PathBuf, RewardError> {
    if dir.join("cnn.json").is_file() {
        return Ok(dir.to_path_buf());
    }
    match rudder_tune::train::checkpoint::latest(dir)? {
        Some(d) if d.join("cnn.json").is_file() => Ok(d),
        Some(d) => Err(RewardError::File {
            path: d.join("cnn.json"),
            problem: format!(
                "missing: {} points at a checkpoint that is not a CNN baseline",
                dir.join("latest").display()
            ),
        }),
        None => Err(RewardError::File {
            path: dir.join("cnn.json"),
            problem: "missing: neither a CNN checkpoint folder (cnn.json) nor a training run \
                      (latest)"
                .into(),
        }),
    }
}

/// Whether `dir` (a checkpoint folder, or a run folder through its `latest`) is a CNN
/// baseline checkpoint (holds `cnn.json`).
pub fn is_cnn_checkpoint(dir: &Path) -> bool {
    resolve_cnn(dir).is_ok()
}

fn require(dir: &Path, name: &str) -> Result<PathBuf, RewardError> {
    require_file(dir, name, |path| RewardError::File {
        path,
        problem: format!(
            "missing: a CNN reward checkpoint holds {} (`rudder train reward --arch cnn` \
             writes them); {name} is not there",
            CNN_FILES.join(", ")
        ),
    })
}

fn read_json<T: serde::de::DeserializeOwned>(path: &Path, what: &str) -> Result<T, RewardError> {
    let text = std::fs::read_to_string(path).map_err(|e| RewardError::File {
        path: path.to_path_buf(),
        problem: e.to_string(),
    })?;
    serde_json::from_str(&text).map_err(|e| RewardError::File {
        path: path.to_path_buf(),
        problem: format!("not a {what}: {e}"),
    })
}

/// A trained CNN baseline.
pub struct CnnClassifier {
    pub dir: PathBuf,
    pub model: CnnModel,
    pub tokenizer: PromptTokenizer,
    pub calibration: CnnCalibration,
    device: Device,
}

impl CnnClassifier {
    /// Loads a checkpoint folder (or a training output folder, through its `latest`).
    pub fn load(dir: &Path) -> Result<Self, RewardError> {
        let dir = resolve_cnn(dir)?;
        let paths: Vec<PathBuf> = CNN_FILES
            .iter()
            .map(|n| require(&dir, n))
            .collect::<Result<_, _>>()?;
        let (spec_path, weights_path, tok_path, cal_path) =
            (&paths[0], &paths[1], &paths[2], &paths[3]);
        let spec: CnnSpec = read_json(spec_path, "cnn.json")?;
        spec.check(spec_path)?;
        let calibration: CnnCalibration = read_json(cal_path, "calibration.json")?;
        calibration.check(cal_path)?;
        let tokenizer = PromptTokenizer::load(&dir, 0)?;
        if !tokenizer.is_bpe() {
            return Err(RewardError::File {
                path: tok_path.clone(),
                problem: "could not be read as a tokenizer".into(),
            });
        }
        let device = Device::Cpu;
        let bytes = std::fs::read(weights_path).map_err(|e| RewardError::File {
            path: weights_path.clone(),
            problem: e.to_string(),
        })?;
        let vb =
            VarBuilder::from_buffered_safetensors(bytes, DType::F32, &device).map_err(|e| {
                RewardError::File {
                    path: weights_path.clone(),
                    problem: format!("not a safetensors file: {e}"),
                }
            })?;
        let model =
            CnnModel::new(&spec, tokenizer.vocab_size(), vb).map_err(|e| RewardError::File {
                path: weights_path.clone(),
                problem: format!("does not fit cnn.json and tokenizer.json: {e}"),
            })?;
        Ok(Self {
            dir,
            model,
            tokenizer,
            calibration,
            device,
        })
    }

    /// Margins of data set rows `idx`, in batches of `batch`.
    pub fn margins(
        &self,
        data: &SuccessDataset,
        idx: &[usize],
        batch: usize,
    ) -> Result<Vec<f64>, RewardError> {
        data_margins(&self.model, &self.tokenizer, &self.device, data, idx, batch)
    }

    /// Margins of queries (one frame per camera, in [`CAMERAS`] order, any size: resized).
    pub fn margins_queries(&self, queries: &[Query<'_>]) -> Result<Vec<f64>, RewardError> {
        if queries.is_empty() {
            return Ok(Vec::new());
        }
        let s = self.model.spec.image_size;
        let mut rows = Vec::with_capacity(queries.len());
        for q in queries {
            let px = q.pixels(&CAMERAS, s)?;
            rows.push((px, instruction_ids(&self.tokenizer, q.instruction)?));
        }
        let (px, ids) = stack(rows, s, &self.device)?;
        let z: Vec<f32> = self.model.forward(&px, &ids)?.to_vec1()?;
        Ok(z.into_iter().map(f64::from).collect())
    }

    /// The verdict for a margin under this checkpoint's calibration.
    pub fn verdict(&self, margin: f64) -> Verdict {
        self.calibration.verdict(margin)
    }

    /// Replaces the calibration (in memory; [`calibrate_cnn`] also writes it).
    pub fn set_calibration(&mut self, temperature: f64, threshold: f64) {
        self.calibration.temperature = temperature;
        self.calibration.threshold = threshold;
        self.calibration.calibrated = true;
    }
}

/// Fits the temperature and threshold of the CNN checkpoint `dir` on `data`'s `val` split
/// (as [`crate::train::calibrate`] does for the VLM) and rewrites its `calibration.json`.
pub fn calibrate_cnn(
    dir: &Path,
    data: &SuccessDataset,
    min_precision: f64,
) -> Result<(CnnClassifier, Calibration), RewardError> {
    let mut clf = CnnClassifier::load(dir)?;
    let cal = calibrate_on_val(data, min_precision, |idx| clf.margins(data, idx, 64))?;
    clf.set_calibration(cal.temperature, cal.threshold);
    write_json_file(&clf.dir, "calibration.json", &clf.calibration)?;
    Ok((clf, cal))
}
