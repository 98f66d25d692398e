//! What the reward tests share: the tiny synthetic data sets (positives bright, negatives
//! dark), the small VLM classifier's settings, and the straight-versus-resumed run.

#![allow(dead_code)]

use std::path::{Path, PathBuf};

use rudder_reward::baseline::CnnTrainer;
use rudder_reward::dataset::{DatasetWriter, FrameKind, SampleMeta, Source, Split, SuccessDataset};
use rudder_reward::train::{ClassifierSpec, ClassifierTrainer, TrainConfig};

/// Side of the synthetic frames.
pub const S: usize = 16;
pub const INSTRUCTIONS: [&str; 2] = ["put the bowl on the plate", "open the top drawer"];

/// A small VLM classifier.
pub fn spec() -> ClassifierSpec {
    ClassifierSpec {
        image_size: 16,
        patch_size: 8,
        vision_hidden: 16,
        vision_layers: 1,
        hidden: 32,
        layers: 1,
        heads: 2,
        head_dim: 16,
        max_prompt_tokens: 64,
        max_vocab: 512,
    }
}

/// A run of [`spec`] for `steps` at learning rate `lr`.
pub fn config(steps: u64, lr: f64) -> TrainConfig {
    TrainConfig {
        model: spec(),
        steps,
        batch_size: 16,
        lr,
        weight_decay: 0.0,
        warmup_steps: 5,
        max_grad_norm: Some(1.0),
        seed: 7,
        shift: 1,
        brightness: 0.1,
    }
}

/// A bright (200..=255) or dark (0..=55) S x S x 3 frame with per-pixel noise from `seed`.
pub fn frame(bright: bool, seed: u64) -> Vec<u8> {
    let mut x = seed
        .wrapping_mul(6364136223846793005)
        .wrapping_add(1442695040888963407);
    (0..S * S * 3)
        .map(|_| {
            x = x
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            let noise = ((x >> 33) % 56) as u8;
            if bright {
                200 + noise
            } else {
                noise
            }
        })
        .collect()
}

/// The signal of a data set: whether the agent view is bright, given the label (the wrist
/// camera is bright exactly on success).
#[derive(Clone, Copy)]
pub enum Signal {
    /// Both cameras bright on success.
    Both,
    /// Only the wrist says it; the agent view is bright on failure.
    WristOnly,
}

/// What [`write_data_with`] writes.
#[derive(Clone, Copy)]
pub struct DataSpec<'a> {
    pub n_train: usize,
    pub n_eval: usize,
    pub instructions: &'a [&'a str],
    pub signal: Signal,
    /// The frames' noise seeds start after it.
    pub seed0: u64,
    /// false leaves the `val` split out.
    pub with_val: bool,
}

impl<'a> DataSpec<'a> {
    /// `n_train` / `n_eval` per split, [`INSTRUCTIONS`], both cameras, seeds from 0, with `val`.
    pub fn new(n_train: usize, n_eval: usize) -> Self {
        Self {
            n_train,
            n_eval,
            instructions: &INSTRUCTIONS,
            signal: Signal::Both,
            seed0: 0,
            with_val: true,
        }
    }
}

/// Writes a synthetic data set: per split and instruction `n` positives and `n` negatives (the
/// negatives' kinds cycle through early, failed and a hard kind).
pub fn write_data_with(dir: &Path, spec: DataSpec<'_>) -> SuccessDataset {
    let mut w = DatasetWriter::create(dir, S, 3).unwrap();
    let mut seed = spec.seed0;
    for (split, n) in [
        (Split::Train, spec.n_train),
        (Split::Val, spec.n_eval),
        (Split::Test, spec.n_eval),
    ] {
        if split == Split::Val && !spec.with_val {
            continue;
        }
        for (t, instr) in spec.instructions.iter().enumerate() {
            for k in 0..2 * n {
                let label = k % 2 == 0;
                let kind = if label {
                    FrameKind::Success
                } else {
                    [FrameKind::Early, FrameKind::Failed, FrameKind::HoldAbove][k % 3]
                };
                let meta = SampleMeta {
                    task: format!("task_{t}"),
                    suite: "libero_goal".into(),
                    instruction: instr.to_string(),
                    episode: format!("{}/t{t}/e{k}", split.name()),
                    init: k,
                    step: k,
                    label,
                    kind,
                    source: Source::Expert,
                    split,
                };
                let agent_bright = match spec.signal {
                    Signal::Both => label,
                    Signal::WristOnly => !label,
                };
                seed += 1;
                w.push(
                    meta,
                    &frame(agent_bright, 2 * seed),
                    &frame(label, 2 * seed + 1),
                )
                .unwrap();
            }
        }
    }
    w.finish().unwrap();
    SuccessDataset::load(dir).unwrap()
}

/// [`write_data_with`] of [`DataSpec::new`].
pub fn write_data(dir: &Path, n_train: usize, n_eval: usize) -> SuccessDataset {
    write_data_with(dir, DataSpec::new(n_train, n_eval))
}

/// The fraction of margins `m` of data set rows `idx` whose decision `said(margin)` is the
/// row's label.
pub fn accuracy(
    m: &[f64],
    data: &SuccessDataset,
    idx: &[usize],
    said: impl Fn(f64) -> bool,
) -> f64 {
    m.iter()
        .zip(idx)
        .filter(|(&z, &i)| said(z) == data.samples[i].label)
        .count() as f64
        / m.len() as f64
}

pub fn read_json(p: &Path) -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(p).unwrap()).unwrap()
}

/// The bytes of `file` in checkpoint `step` of the run `run`.
pub fn checkpoint_bytes(run: &Path, step: u64, file: &str) -> Vec<u8> {
    std::fs::read(run.join(format!("checkpoint-{step}/{file}"))).unwrap()
}

/// Asserts that `file` of checkpoint `n` is the same in the runs `straight` and `split` (not
/// empty) and differs from `split`'s checkpoint `n / 2` (the weights moved).
pub fn assert_same_after_resume(straight: &Path, split: &Path, n: u64, file: &str) {
    let a = checkpoint_bytes(straight, n, file);
    assert!(!a.is_empty(), "{file} is empty");
    assert!(
        a == checkpoint_bytes(split, n, file),
        "{file} differs after resume"
    );
    assert!(
        checkpoint_bytes(split, n / 2, file) != a,
        "{file}: the weights moved"
    );
}

/// The message of the error `r` must be (`what` names what was tried, should it succeed).
pub fn err_text<T>(r: Result<T, rudder_reward::RewardError>, what: &str) -> String {
    match r {
        Ok(_) => panic!("{what}: accepted"),
        Err(e) => e.to_string(),
    }
}

/// Asserts that `r` is refused with a message holding every one of `needles`.
pub fn expect_err<T>(r: Result<T, rudder_reward::RewardError>, needles: &[&str], what: &str) {
    let msg = err_text(r, what);
    eprintln!("{what}: {msg}");
    for n in needles {
        assert!(msg.contains(n), "{what}: `{msg}` lacks `{n}`");
    }
}

/// A reward run on tune's trainer (the VLM classifier's or the CNN's).
pub trait Run {
    /// The losses of the next `steps` steps.
    fn steps(&mut self, data: &SuccessDataset, steps: u64) -> Vec<f64>;
    /// Saves a checkpoint to `out` (keeping 2); returns its folder.
    fn save(&mut self, out: &Path, data: &SuccessDataset) -> PathBuf;
    /// Resumes from `out`: the checkpoint and the step count.
    fn resume(&mut self, out: &Path) -> (PathBuf, u64);
}

macro_rules! impl_run {
    ($t:ty) => {
        impl Run for $t {
            fn steps(&mut self, data: &SuccessDataset, steps: u64) -> Vec<f64> {
                let input = self.input(data);
                (0..steps)
                    .map(|_| self.trainer.step(&input).unwrap().loss)
                    .collect()
            }
            fn save(&mut self, out: &Path, data: &SuccessDataset) -> PathBuf {
                self.trainer.save(out, 2, data, |_| Ok(())).unwrap()
            }
            fn resume(&mut self, out: &Path) -> (PathBuf, u64) {
                let from = self.trainer.resume(out).unwrap().expect("a checkpoint");
                (from, self.trainer.step_count())
            }
        }
    };
}
impl_run!(ClassifierTrainer);
impl_run!(CnnTrainer);

/// Trains `t` for `steps` steps, each loss finite; returns the first loss and the last.
pub fn first_and_last_loss<T: Run>(t: &mut T, data: &SuccessDataset, steps: u64) -> (f64, f64) {
    let losses = t.steps(data, steps);
    assert!(losses.iter().all(|l| l.is_finite()), "{losses:?}");
    (losses[0], losses[losses.len() - 1])
}

/// Trains `n` steps of `new()` straight into `root/straight`, and `n / 2`, a save, a fresh
/// `new()` resumed and `n / 2` more into `root/split`; asserts that the resume starts at step
/// `n / 2` and that the per-step losses agree. Returns (straight, split).
pub fn straight_and_resumed<T: Run>(
    root: &Path,
    data: &SuccessDataset,
    n: u64,
    new: impl Fn() -> T,
) -> (PathBuf, PathBuf) {
    let straight = root.join("straight");
    let mut t = new();
    let losses = t.steps(data, n);
    t.save(&straight, data);

    let split = root.join("split");
    let mut t = new();
    let mut resumed = t.steps(data, n / 2);
    t.save(&split, data);
    drop(t);
    let mut t = new();
    let (from, step) = t.resume(&split);
    assert_eq!(from, split.join(format!("checkpoint-{}", n / 2)));
    assert_eq!(step, n / 2);
    resumed.extend(t.steps(data, n - n / 2));
    t.save(&split, data);

    assert_eq!(losses, resumed, "per-step losses");
    (straight, split)
}

/// Copies the files of `from` into `to` (created).
pub fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        std::fs::copy(e.path(), to.join(e.file_name())).unwrap();
    }
}
