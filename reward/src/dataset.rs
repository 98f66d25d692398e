//! The labelled-frame data set the success classifier trains and is evaluated on: pairs of
//! camera frames (agent view + wrist, RGB u8, height x width x channel) with the simulator
//! predicate's verdict on whether the instruction is done, plus [`balance`], RoboFuME's 50 %
//! positive selection.
//!
//! # On-disk format (version 1)
//!
//! ```text
//! DIR/meta.json                 written last: its presence means the data set is complete
//! DIR/samples.jsonl             one SampleMeta per line, in shard/row order
//! DIR/shard_0000.safetensors    tensors `agentview_rgb` [n,S,S,3] u8 and `wrist_rgb` [n,S,S,3] u8
//! DIR/shard_0001.safetensors    (1 <= n <= 1024 rows per shard)
//! ```
//!
//! `meta.json`:
//!
//! ```json
//! {"format_version": 1, "image_size": 224, "cameras": ["agentview", "wrist"], "samples": 2500,
//!  "shards": ["shard_0000.safetensors", "shard_0001.safetensors", "shard_0002.safetensors"],
//!  "seed": 7, "counts": {"train": {"positive": 900, "negative": 1100}, "val": {...}},
//!  "created_by": "rudder-reward 0.1.0"}
//! ```
//!
//! - `image_size` S: both cameras are S x S x 3 (RGB, u8, row-major HWC), 1 <= S <= 4096.
//! - `cameras` is exactly `["agentview", "wrist"]`, the order of the pair everywhere.
//! - `samples` equals the number of lines of `samples.jsonl` and the sum of the shards' rows;
//!   row r of the concatenated shards (in `shards` order) is line r + 1 of `samples.jsonl`.
//! - `counts` holds, per split that has samples, how many are labelled positive and negative;
//!   the loader recomputes it from `samples.jsonl` and refuses a mismatch.
//! - `seed` is the generator's seed (provenance only); `created_by` is free text.
//!
//! A `samples.jsonl` line (a [`SampleMeta`]):
//!
//! ```json
//! {"task": "pick_bowl_place_plate", "suite": "libero_object", "instruction": "put the bowl on the plate",
//!  "episode": "expert_0003", "init": 3, "step": 118, "label": true, "kind": "success",
//!  "source": "expert", "split": "train"}
//! ```
//!
//! - `kind` is one of `success`, `early`, `failed`, `hold_above`, `drop_beside`,
//!   `empty_gripper`, `wrong_object`, `drawer_half` ([`FrameKind`]); `label` must equal
//!   `kind == "success"`.
//! - `source` is `expert`, `perturbed` or `vla`; `split` is `train`, `val`, `test` or
//!   `heldout_task`.
//! - `task`, `suite`, `instruction` and `episode` are non-empty.
//!
//! Every file is written atomically (temporary file, fsync, rename). [`DatasetWriter::create`]
//! refuses a directory that already holds a `meta.json`; shards or a `samples.jsonl` left there
//! by an interrupted writer (no `meta.json`) are overwritten or ignored.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use rudder_tune::checkpoint::write_atomic;
use rudder_tune::train::Rng;
use safetensors::tensor::{Dtype, SafeTensors, TensorView};
use serde::{Deserialize, Serialize};

/// The format version this module writes and the only one it reads.
pub const FORMAT_VERSION: u32 = 1;
/// The most rows one shard holds.
pub const MAX_SHARD_ROWS: usize = 1024;
/// The cameras of a sample, in order.
pub const CAMERAS: [&str; 2] = ["agentview", "wrist"];
/// The largest image side the loader accepts.
pub const MAX_IMAGE_SIZE: usize = 4096;
/// Tensor names inside a shard, in [`CAMERAS`] order.
pub const SHARD_TENSORS: [&str; 2] = ["agentview_rgb", "wrist_rgb"];

/// Errors of the data set, its writer and the reliability diagram. Every variant names the file,
/// field or sample at fault.
#[derive(Debug, thiserror::Error)]
pub enum DatasetError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// Something wrong with a file as a whole (missing, already there, unreadable format).
    #[error("{path}: {problem}")]
    File { path: PathBuf, problem: String },
    /// A field of a JSON file (`meta.json`).
    #[error("{path}: field `{field}`: {problem}")]
    Field {
        path: PathBuf,
        field: String,
        problem: String,
    },
    /// A line of `samples.jsonl` (1-based).
    #[error("{path}: line {line}: {problem}")]
    Line {
        path: PathBuf,
        line: usize,
        problem: String,
    },
    /// A tensor of a shard.
    #[error("{path}: tensor `{tensor}`: {problem}")]
    Tensor {
        path: PathBuf,
        tensor: String,
        problem: String,
    },
    /// A sample handed to [`DatasetWriter::push`] (`index` counts the pushes from 0).
    #[error("sample {index} (episode `{episode}`, step {step}): {problem}")]
    Sample {
        index: usize,
        episode: String,
        step: usize,
        problem: String,
    },
    /// Bad input to a function of this crate; `input` names it.
    #[error("input `{input}`: {problem}")]
    Input { input: String, problem: String },
    /// An error of tune's file helpers (their messages name the file).
    #[error(transparent)]
    Tune(#[from] rudder_tune::TuneError),
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> DatasetError + '_ {
    move |source| DatasetError::Io {
        path: path.to_path_buf(),
        source,
    }
}

#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[serde(rename_all = "snake_case")]
pub enum Split {
    Train,
    Val,
    Test,
    HeldoutTask,
}

impl Split {
    pub const ALL: [Split; 4] = [Split::Train, Split::Val, Split::Test, Split::HeldoutTask];

    /// The name used on disk (`train`, `val`, `test`, `heldout_task`).
    pub fn name(self) -> &'static str {
        match self {
            Split::Train => "train",
            Split::Val => "val",
            Split::Test => "test",
            Split::HeldoutTask => "heldout_task",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|k| k.name() == s)
    }
}

#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[serde(rename_all = "snake_case")]
pub enum Source {
    /// A scripted expert's demonstration.
    Expert,
    /// An expert rollout with injected perturbations (the source of most hard negatives).
    Perturbed,
    /// A VLA policy's own rollout.
    Vla,
}

impl Source {
    pub const ALL: [Source; 3] = [Source::Expert, Source::Perturbed, Source::Vla];

    /// The name used on disk (`expert`, `perturbed`, `vla`).
    pub fn name(self) -> &'static str {
        match self {
            Source::Expert => "expert",
            Source::Perturbed => "perturbed",
            Source::Vla => "vla",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|k| k.name() == s)
    }
}

/// What a frame shows. `Success` is the only positive kind.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[serde(rename_all = "snake_case")]
pub enum FrameKind {
    /// The predicate holds: the instruction is done.
    Success,
    /// A frame from before the task could be done (approach, grasp, transport).
    Early,
    /// The end of a rollout that failed for no particular near-miss reason.
    Failed,
    /// The object held above its target, not yet placed (hard).
    HoldAbove,
    /// The object dropped next to its target (hard).
    DropBeside,
    /// The gripper at the target without the object (hard).
    EmptyGripper,
    /// Another object placed where the instructed one belongs (hard).
    WrongObject,
    /// A drawer or door only partly opened or closed (hard).
    DrawerHalf,
}

impl FrameKind {
    pub const ALL: [FrameKind; 8] = [
        FrameKind::Success,
        FrameKind::Early,
        FrameKind::Failed,
        FrameKind::HoldAbove,
        FrameKind::DropBeside,
        FrameKind::EmptyGripper,
        FrameKind::WrongObject,
        FrameKind::DrawerHalf,
    ];

    /// Near misses that look almost like success: `HoldAbove`, `DropBeside`, `EmptyGripper`,
    /// `WrongObject`, `DrawerHalf`. (`Success` is no negative; `Early` and `Failed` are
    /// ordinary negatives.)
    pub fn is_hard_negative(self) -> bool {
        matches!(
            self,
            FrameKind::HoldAbove
                | FrameKind::DropBeside
                | FrameKind::EmptyGripper
                | FrameKind::WrongObject
                | FrameKind::DrawerHalf
        )
    }

    /// The name used on disk (snake_case, e.g. `hold_above`).
    pub fn name(self) -> &'static str {
        match self {
            FrameKind::Success => "success",
            FrameKind::Early => "early",
            FrameKind::Failed => "failed",
            FrameKind::HoldAbove => "hold_above",
            FrameKind::DropBeside => "drop_beside",
            FrameKind::EmptyGripper => "empty_gripper",
            FrameKind::WrongObject => "wrong_object",
            FrameKind::DrawerHalf => "drawer_half",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|k| k.name() == s)
    }
}

/// One sample's description (a line of `samples.jsonl`).
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct SampleMeta {
    pub task: String,
    pub suite: String,
    pub instruction: String,
    /// Names the rollout the frame comes from (unique within the data set).
    pub episode: String,
    /// Index of the task's initial state the rollout started from.
    pub init: usize,
    /// Control step of the frame within its rollout.
    pub step: usize,
    /// The simulator predicate's verdict; always `kind == FrameKind::Success`.
    pub label: bool,
    pub kind: FrameKind,
    pub source: Source,
    pub split: Split,
}

impl SampleMeta {
    /// Checks the fields a type cannot: non-empty names, `label == (kind == Success)`.
    pub fn check(&self) -> Result<(), String> {
        for (field, v) in [
            ("task", &self.task),
            ("suite", &self.suite),
            ("instruction", &self.instruction),
            ("episode", &self.episode),
        ] {
            if v.trim().is_empty() {
                return Err(format!("field `{field}` is empty"));
            }
        }
        if self.label != (self.kind == FrameKind::Success) {
            return Err(format!(
                "field `label` is {} but field `kind` is `{}` (only `success` is positive)",
                self.label,
                self.kind.name()
            ));
        }
        Ok(())
    }
}

/// Positives and negatives of one split, as `meta.json` stores them.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ClassCounts {
    pub positive: usize,
    pub negative: usize,
}

/// The contents of `meta.json`.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct DatasetMeta {
    pub format_version: u32,
    pub image_size: usize,
    pub cameras: Vec<String>,
    pub samples: usize,
    pub shards: Vec<String>,
    pub seed: u64,
    pub counts: BTreeMap<Split, ClassCounts>,
    pub created_by: String,
}

fn count(samples: &[SampleMeta]) -> BTreeMap<Split, ClassCounts> {
    let mut counts: BTreeMap<Split, ClassCounts> = BTreeMap::new();
    for s in samples {
        let c = counts.entry(s.split).or_default();
        if s.label {
            c.positive += 1;
        } else {
            c.negative += 1;
        }
    }
    counts
}

fn shard_name(k: usize) -> String {
    format!("shard_{k:04}.safetensors")
}

/// What [`DatasetWriter::finish`] wrote.
#[derive(Serialize, Clone, Debug, PartialEq, Eq)]
pub struct DatasetSummary {
    pub dir: PathBuf,
    pub samples: usize,
    pub shards: usize,
    /// Per split: (positives, negatives).
    pub counts: BTreeMap<Split, (usize, usize)>,
}

/// Writes a data set shard by shard: frames are held in memory only until a shard is full.
pub struct DatasetWriter {
    dir: PathBuf,
    image_size: usize,
    seed: u64,
    shard_rows: usize,
    created_by: String,
    samples: Vec<SampleMeta>,
    shards: Vec<String>,
    agentview: Vec<u8>,
    wrist: Vec<u8>,
    rows: usize,
}

impl DatasetWriter {
    /// Starts a data set in `dir` (created if missing) for S x S frames. Refuses a directory
    /// that already holds a `meta.json` (a finished data set).
    pub fn create(dir: &Path, image_size: usize, seed: u64) -> Result<Self, DatasetError> {
        if image_size == 0 || image_size > MAX_IMAGE_SIZE {
            return Err(DatasetError::Input {
                input: "image_size".into(),
                problem: format!("{image_size} is not in 1..={MAX_IMAGE_SIZE}"),
            });
        }
        std::fs::create_dir_all(dir).map_err(io_err(dir))?;
        let meta = dir.join("meta.json");
        if meta.exists() {
            return Err(DatasetError::File {
                path: meta,
                problem: "already exists: the directory holds a finished data set; write to a new \
                          directory or delete this one first"
                    .into(),
            });
        }
        Ok(Self {
            dir: dir.to_path_buf(),
            image_size,
            seed,
            shard_rows: MAX_SHARD_ROWS,
            created_by: format!("rudder-reward {}", env!("CARGO_PKG_VERSION")),
            samples: Vec::new(),
            shards: Vec::new(),
            agentview: Vec::new(),
            wrist: Vec::new(),
            rows: 0,
        })
    }

    /// Rows per shard (clamped to 1..=[`MAX_SHARD_ROWS`]; the default is the maximum).
    pub fn with_shard_rows(mut self, rows: usize) -> Self {
        self.shard_rows = rows.clamp(1, MAX_SHARD_ROWS);
        self
    }

    /// The `created_by` text of `meta.json`.
    pub fn with_created_by(mut self, who: &str) -> Self {
        self.created_by = who.to_string();
        self
    }

    fn frame_len(&self) -> usize {
        self.image_size * self.image_size * 3
    }

    /// Adds one sample: both frames must be S*S*3 bytes (RGB, HWC) and the metadata must pass
    /// [`SampleMeta::check`].
    pub fn push(
        &mut self,
        meta: SampleMeta,
        agentview: &[u8],
        wrist: &[u8],
    ) -> Result<(), DatasetError> {
        let index = self.samples.len();
        let bad = |problem: String| DatasetError::Sample {
            index,
            episode: meta.episode.clone(),
            step: meta.step,
            problem,
        };
        let want = self.frame_len();
        for (camera, frame) in CAMERAS.iter().zip([agentview, wrist]) {
            if frame.len() != want {
                return Err(bad(format!(
                    "{camera} frame has {} bytes, expected {want} ({s}x{s}x3)",
                    frame.len(),
                    s = self.image_size
                )));
            }
        }
        meta.check().map_err(bad)?;
        self.agentview.extend_from_slice(agentview);
        self.wrist.extend_from_slice(wrist);
        self.samples.push(meta);
        self.rows += 1;
        if self.rows == self.shard_rows {
            self.flush_shard()?;
        }
        Ok(())
    }

    fn flush_shard(&mut self) -> Result<(), DatasetError> {
        if self.rows == 0 {
            return Ok(());
        }
        let name = shard_name(self.shards.len());
        let path = self.dir.join(&name);
        let s = self.image_size;
        let shape = vec![self.rows, s, s, 3];
        let mut views = Vec::with_capacity(2);
        for (tensor, data) in SHARD_TENSORS.iter().zip([&self.agentview, &self.wrist]) {
            let view = TensorView::new(Dtype::U8, shape.clone(), data).map_err(|e| {
                DatasetError::Tensor {
                    path: path.clone(),
                    tensor: tensor.to_string(),
                    problem: e.to_string(),
                }
            })?;
            views.push((*tensor, view));
        }
        let bytes = safetensors::serialize(views, None).map_err(|e| DatasetError::File {
            path: path.clone(),
            problem: format!("cannot serialise shard: {e}"),
        })?;
        write_atomic(&path, &bytes)?;
        self.shards.push(name);
        self.agentview.clear();
        self.wrist.clear();
        self.rows = 0;
        Ok(())
    }

    /// Writes the last shard, `samples.jsonl`, then `meta.json` (each atomically). Refuses a
    /// data set without samples.
    pub fn finish(mut self) -> Result<DatasetSummary, DatasetError> {
        if self.samples.is_empty() {
            return Err(DatasetError::File {
                path: self.dir.clone(),
                problem: "no samples were pushed; an empty data set is not written".into(),
            });
        }
        self.flush_shard()?;
        let jsonl_path = self.dir.join("samples.jsonl");
        let mut jsonl = String::new();
        for (i, s) in self.samples.iter().enumerate() {
            let line = serde_json::to_string(s).map_err(|e| DatasetError::Line {
                path: jsonl_path.clone(),
                line: i + 1,
                problem: e.to_string(),
            })?;
            jsonl.push_str(&line);
            jsonl.push('\n');
        }
        write_atomic(&jsonl_path, jsonl.as_bytes())?;
        let counts = count(&self.samples);
        let meta = DatasetMeta {
            format_version: FORMAT_VERSION,
            image_size: self.image_size,
            cameras: CAMERAS.iter().map(|c| c.to_string()).collect(),
            samples: self.samples.len(),
            shards: self.shards.clone(),
            seed: self.seed,
            counts: counts.clone(),
            created_by: self.created_by.clone(),
        };
        let meta_path = self.dir.join("meta.json");
        let text = serde_json::to_string_pretty(&meta).map_err(|e| DatasetError::File {
            path: meta_path.clone(),
            problem: e.to_string(),
        })?;
        write_atomic(&meta_path, text.as_bytes())?;
        Ok(DatasetSummary {
            dir: self.dir,
            samples: meta.samples,
            shards: meta.shards.len(),
            counts: counts
                .into_iter()
                .map(|(k, c)| (k, (c.positive, c.negative)))
                .collect(),
        })
    }
}

/// A data set loaded and validated, frames in memory.
#[derive(Clone, Debug)]
pub struct SuccessDataset {
    pub dir: PathBuf,
    pub image_size: usize,
    pub meta: DatasetMeta,
    pub samples: Vec<SampleMeta>,
    agentview: Vec<u8>,
    wrist: Vec<u8>,
}

fn field_err(path: &Path, field: &str, problem: impl Into<String>) -> DatasetError {
    DatasetError::Field {
        path: path.to_path_buf(),
        field: field.into(),
        problem: problem.into(),
    }
}

fn read_meta(path: &Path) -> Result<DatasetMeta, DatasetError> {
    if !path.exists() {
        return Err(DatasetError::File {
            path: path.to_path_buf(),
            problem: "missing: not a data set, or its writer did not finish".into(),
        });
    }
    let text = std::fs::read_to_string(path).map_err(io_err(path))?;
    let value: serde_json::Value = serde_json::from_str(&text).map_err(|e| DatasetError::File {
        path: path.to_path_buf(),
        problem: format!("not valid JSON: {e}"),
    })?;
    let version = value
        .get("format_version")
        .ok_or_else(|| field_err(path, "format_version", "missing"))?;
    if version.as_u64() != Some(FORMAT_VERSION as u64) {
        return Err(field_err(
            path,
            "format_version",
            format!("{version} is not supported (this build reads version {FORMAT_VERSION})"),
        ));
    }
    let meta: DatasetMeta = serde_json::from_value(value).map_err(|e| DatasetError::File {
        path: path.to_path_buf(),
        problem: format!("bad contents: {e}"),
    })?;
    if meta.image_size == 0 || meta.image_size > MAX_IMAGE_SIZE {
        return Err(field_err(
            path,
            "image_size",
            format!("{} is not in 1..={MAX_IMAGE_SIZE}", meta.image_size),
        ));
    }
    if meta.cameras != CAMERAS {
        return Err(field_err(
            path,
            "cameras",
            format!("{:?}, expected {:?}", meta.cameras, CAMERAS),
        ));
    }
    for (k, name) in meta.shards.iter().enumerate() {
        if *name != shard_name(k) {
            return Err(field_err(
                path,
                "shards",
                format!("entry {k} is `{name}`, expected `{}`", shard_name(k)),
            ));
        }
    }
    let min_shards = meta.samples.div_ceil(MAX_SHARD_ROWS);
    if meta.shards.len() < min_shards || meta.shards.len() > meta.samples {
        return Err(field_err(
            path,
            "shards",
            format!(
                "{} shards cannot hold {} samples at 1..={MAX_SHARD_ROWS} rows each",
                meta.shards.len(),
                meta.samples
            ),
        ));
    }
    Ok(meta)
}

fn read_samples(path: &Path) -> Result<Vec<SampleMeta>, DatasetError> {
    let text = std::fs::read_to_string(path).map_err(io_err(path))?;
    let mut samples = Vec::new();
    let lines: Vec<&str> = text.split('\n').collect();
    for (i, line) in lines.iter().enumerate() {
        if line.is_empty() && i + 1 == lines.len() {
            break; // the final newline
        }
        let bad = |problem: String| DatasetError::Line {
            path: path.to_path_buf(),
            line: i + 1,
            problem,
        };
        let s: SampleMeta = serde_json::from_str(line).map_err(|e| bad(e.to_string()))?;
        s.check().map_err(bad)?;
        samples.push(s);
    }
    Ok(samples)
}

impl SuccessDataset {
    /// Loads `dir` and validates it against the format (module docs): version, cameras, shard
    /// names, shapes and dtypes, row counts against `samples.jsonl` and `meta.json`, every
    /// field of every sample, the per-split counts.
    pub fn load(dir: &Path) -> Result<Self, DatasetError> {
        let meta_path = dir.join("meta.json");
        let meta = read_meta(&meta_path)?;
        let jsonl_path = dir.join("samples.jsonl");
        let samples = read_samples(&jsonl_path)?;
        if samples.len() != meta.samples {
            return Err(DatasetError::File {
                path: jsonl_path,
                problem: format!(
                    "{} samples, but {} says `samples`: {}",
                    samples.len(),
                    meta_path.display(),
                    meta.samples
                ),
            });
        }
        let counts = count(&samples);
        if counts != meta.counts {
            return Err(field_err(
                &meta_path,
                "counts",
                format!(
                    "{:?} disagrees with samples.jsonl, which holds {:?}",
                    meta.counts, counts
                ),
            ));
        }
        let s = meta.image_size;
        let frame = s * s * 3;
        let total = frame
            .checked_mul(samples.len())
            .ok_or_else(|| field_err(&meta_path, "samples", "frames too large to address"))?;
        let mut agentview = Vec::with_capacity(total);
        let mut wrist = Vec::with_capacity(total);
        let mut rows_seen = 0usize;
        for name in &meta.shards {
            let path = dir.join(name);
            let bytes = std::fs::read(&path).map_err(io_err(&path))?;
            let st = SafeTensors::deserialize(&bytes).map_err(|e| DatasetError::File {
                path: path.clone(),
                problem: format!("not a valid safetensors file: {e}"),
            })?;
            let mut shard_rows = None;
            for (tensor, out) in SHARD_TENSORS.iter().zip([&mut agentview, &mut wrist]) {
                let terr = |problem: String| DatasetError::Tensor {
                    path: path.clone(),
                    tensor: tensor.to_string(),
                    problem,
                };
                let view = st
                    .tensor(tensor)
                    .map_err(|e| terr(format!("missing ({e})")))?;
                if view.dtype() != Dtype::U8 {
                    return Err(terr(format!("dtype {:?}, expected U8", view.dtype())));
                }
                let shape = view.shape();
                if shape.len() != 4 || shape[1] != s || shape[2] != s || shape[3] != 3 {
                    return Err(terr(format!("shape {shape:?}, expected [n, {s}, {s}, 3]")));
                }
                let n = shape[0];
                if n == 0 || n > MAX_SHARD_ROWS {
                    return Err(terr(format!("{n} rows, expected 1..={MAX_SHARD_ROWS}")));
                }
                if let Some(m) = shard_rows {
                    if m != n {
                        return Err(terr(format!(
                            "{n} rows, but the shard's other camera has {m}"
                        )));
                    }
                }
                shard_rows = Some(n);
                if rows_seen + n > samples.len() {
                    return Err(terr(format!(
                        "{n} rows bring the shards to {} rows, more than the {} samples of \
                         samples.jsonl",
                        rows_seen + n,
                        samples.len()
                    )));
                }
                if view.data().len() != n * frame {
                    return Err(terr(format!(
                        "{} data bytes, expected {}",
                        view.data().len(),
                        n * frame
                    )));
                }
                out.extend_from_slice(view.data());
            }
            rows_seen += shard_rows.unwrap_or(0);
        }
        if rows_seen != samples.len() {
            return Err(DatasetError::File {
                path: jsonl_path,
                problem: format!(
                    "{} samples, but the shards hold {rows_seen} rows",
                    samples.len()
                ),
            });
        }
        Ok(Self {
            dir: dir.to_path_buf(),
            image_size: s,
            meta,
            samples,
            agentview,
            wrist,
        })
    }

    pub fn len(&self) -> usize {
        self.samples.len()
    }

    pub fn is_empty(&self) -> bool {
        self.samples.is_empty()
    }

    /// Sample `i`'s frames (agent view, wrist), S*S*3 bytes each. Panics if `i >= len()`.
    pub fn frames(&self, i: usize) -> (&[u8], &[u8]) {
        let f = self.image_size * self.image_size * 3;
        (
            &self.agentview[i * f..(i + 1) * f],
            &self.wrist[i * f..(i + 1) * f],
        )
    }

    /// Indices of the samples of `split`, ascending.
    pub fn indices(&self, split: Split) -> Vec<usize> {
        (0..self.samples.len())
            .filter(|&i| self.samples[i].split == split)
            .collect()
    }

    /// The tasks that have samples in `split`, sorted, without repeats.
    pub fn tasks(&self, split: Split) -> Vec<String> {
        let set: BTreeSet<&str> = self
            .samples
            .iter()
            .filter(|s| s.split == split)
            .map(|s| s.task.as_str())
            .collect();
        set.into_iter().map(str::to_string).collect()
    }
}

/// RoboFuME's 50 % positives: which candidates to keep (indices into `samples`, ascending).
///
/// Per split, with P positives and N negatives, it keeps min(P, N) of each: if N >= P, every
/// positive, and among negatives hard ones first ([`FrameKind::is_hard_negative`]), up to
/// `round(hard_share * P)` of them (clamped to [0, 1]; spread evenly over the hard kinds by
/// round robin, uniformly within a kind), then the rest drawn uniformly from the remaining
/// negatives (any kind) until negatives == positives. If N < P, every negative and a uniform
/// subsample of N positives. A split lacking either class contributes nothing. Deterministic for
/// a seed; each split draws from its own stream, so one split's samples do not change
/// another's selection.
pub fn balance(samples: &[SampleMeta], hard_share: f64, seed: u64) -> Vec<usize> {
    let hard_share = if hard_share.is_finite() {
        hard_share.clamp(0.0, 1.0)
    } else {
        0.0
    };
    let mut keep = Vec::new();
    for (si, split) in Split::ALL.into_iter().enumerate() {
        let mut pos = Vec::new();
        let mut neg = Vec::new();
        for (i, s) in samples.iter().enumerate().filter(|(_, s)| s.split == split) {
            if s.label {
                pos.push(i);
            } else {
                neg.push(i);
            }
        }
        let target = pos.len().min(neg.len());
        if target == 0 {
            continue;
        }
        let mut rng = Rng::new(seed ^ (si as u64 + 1).wrapping_mul(0xA24B_AED4_963E_E407));
        if pos.len() > target {
            rng.shuffle(&mut pos);
            pos.truncate(target);
        }
        let hard_quota = ((hard_share * target as f64).round() as usize).min(target);
        let mut by_kind: BTreeMap<FrameKind, Vec<usize>> = BTreeMap::new();
        for &i in &neg {
            if samples[i].kind.is_hard_negative() {
                by_kind.entry(samples[i].kind).or_default().push(i);
            }
        }
        for v in by_kind.values_mut() {
            rng.shuffle(v);
        }
        let mut chosen: Vec<usize> = Vec::with_capacity(target);
        'rounds: while chosen.len() < hard_quota {
            let mut progressed = false;
            for v in by_kind.values_mut() {
                if chosen.len() == hard_quota {
                    break 'rounds;
                }
                if let Some(i) = v.pop() {
                    chosen.push(i);
                    progressed = true;
                }
            }
            if !progressed {
                break;
            }
        }
        let taken: BTreeSet<usize> = chosen.iter().copied().collect();
        let mut rest: Vec<usize> = neg.into_iter().filter(|i| !taken.contains(i)).collect();
        rng.shuffle(&mut rest);
        rest.truncate(target - chosen.len());
        keep.extend(pos);
        keep.extend(chosen);
        keep.extend(rest);
    }
    keep.sort_unstable();
    keep
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(i: usize, kind: FrameKind, split: Split) -> SampleMeta {
        SampleMeta {
            task: format!("task_{}", i % 3),
            suite: "libero_object".into(),
            instruction: "put the bowl on the plate".into(),
            episode: format!("ep_{i}"),
            init: i % 5,
            step: i,
            label: kind == FrameKind::Success,
            kind,
            source: Source::Expert,
            split,
        }
    }

    #[test]
    fn names_round_trip_and_match_serde() {
        for k in FrameKind::ALL {
            assert_eq!(FrameKind::parse(k.name()), Some(k));
            assert_eq!(
                serde_json::to_string(&k).unwrap(),
                format!("\"{}\"", k.name())
            );
            assert!(!(k == FrameKind::Success && k.is_hard_negative()));
        }
        for s in Split::ALL {
            assert_eq!(Split::parse(s.name()), Some(s));
            assert_eq!(
                serde_json::to_string(&s).unwrap(),
                format!("\"{}\"", s.name())
            );
        }
        for s in Source::ALL {
            assert_eq!(Source::parse(s.name()), Some(s));
            assert_eq!(
                serde_json::to_string(&s).unwrap(),
                format!("\"{}\"", s.name())
            );
        }
        assert_eq!(FrameKind::parse("nope"), None);
    }

    #[test]
    fn check_catches_label_and_empty_fields() {
        let mut s = sample(0, FrameKind::Success, Split::Train);
        assert!(s.check().is_ok());
        s.label = false;
        assert!(s.check().unwrap_err().contains("label"));
        let mut s = sample(0, FrameKind::Early, Split::Train);
        s.task = String::new();
        assert!(s.check().unwrap_err().contains("task"));
    }

    #[test]
    fn balance_subsamples_positives_when_negatives_are_fewer() {
        let mut v = Vec::new();
        for i in 0..10 {
            v.push(sample(i, FrameKind::Success, Split::Val));
        }
        for i in 10..14 {
            v.push(sample(i, FrameKind::Early, Split::Val));
        }
        let keep = balance(&v, 0.5, 1);
        assert_eq!(keep.len(), 8);
        assert_eq!(keep.iter().filter(|&&i| v[i].label).count(), 4);
        assert_eq!(keep, balance(&v, 0.5, 1));
    }
}
