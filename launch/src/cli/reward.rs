//! The success classifier's commands: `rudder reward data` (labelled frames from the tabletop
//! simulator: scripted experts, perturbed experts for hard negatives, and a VLA's rollouts),
//! `rudder train reward`, `rudder eval reward`, `rudder bench reward`, and the watcher that
//! classifies frames beside a running evaluation (`rudder eval --reward`). The model, the data
//! format, calibration and the metrics are rudder-reward's; the episodes are rudder-sim's; this
//! file wires them.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Instant;

use crate::cli::progress::{bar, RunLoop};
use anyhow::{bail, Context};
use clap::Args;
use rudder_reward::baseline::{
    calibrate_cnn, is_cnn_checkpoint, CnnClassifier, CnnSpec, CnnTrainer, TrainConfigCnn,
};
use rudder_reward::calibration::{ece, reliability, reliability_png, sigmoid};
use rudder_reward::dataset::{
    balance, DatasetWriter, FrameKind, SampleMeta, Source, Split, SuccessDataset,
};
use rudder_reward::metrics::{report, ClassifierReport};
use rudder_reward::train::{
    calibrate, classifier_margins, Calibration, ClassifierTrainer, TrainConfig,
};
use rudder_reward::RewardError;
use rudder_reward::SuccessClassifier;
use rudder_robot::ImageRgb8;
use rudder_sim::tabletop::campaign::{FrameEvent, FrameTap};
use rudder_sim::tabletop::expert::Perturbation;
use rudder_sim::tabletop::labelled::{expert_episode, FrameSampling, LabelledEpisode};
use rudder_sim::tabletop::{load_suite, CameraConfig, Suite, Task};
use rudder_tune::train::{Family, Trainer};
use serde::Serialize;

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

// ---------------------------------------------------------------------------------------------
// rudder reward data

#[derive(Debug, Args)]
#[command(
    after_help = "Example:\n  rudder reward data --suite all --out data/reward\n  \
rudder reward data --suite goal --out data/reward-goal --policy runs/goal --vla-episodes 4\n\n\
Init states: train 0..T, validation 30..30+V, test (held-out) 40..40+E; one task per suite is \
held out of training entirely (--holdout-tasks)."
)]
pub struct DataArgs {
    /// Suites: spatial, object, goal, or all.
    #[arg(long, default_value = "all")]
    pub suite: String,
    /// Output folder (must not hold a data set yet).
    #[arg(long)]
    pub out: PathBuf,
    /// Camera side in pixels.
    #[arg(long, default_value_t = 64)]
    pub size: u32,
    /// Training init states per task (0..N).
    #[arg(long, default_value_t = 12)]
    pub train_inits: usize,
    /// Validation init states per task (30..30+N), for calibration.
    #[arg(long, default_value_t = 4)]
    pub val_inits: usize,
    /// Test init states per task (40..40+N, never trained on).
    #[arg(long, default_value_t = 6)]
    pub test_inits: usize,
    /// Task ids held out of training (comma separated) [default: the last task of each suite].
    #[arg(long, value_delimiter = ',')]
    pub holdout_tasks: Vec<String>,
    /// Init-state seed.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// A trained VLA whose rollouts add real failures (and successes).
    #[arg(long)]
    pub policy: Option<PathBuf>,
    /// Rollouts per task and split (train, val, test) with --policy.
    #[arg(long, default_value_t = 3)]
    pub vla_episodes: usize,
    /// Simulator steps a VLA rollout goes on after its first success, so the data holds the
    /// VLA's own success frames (the arm still at the object, the gripper opening), each
    /// labelled by the predicate as it then stands.
    #[arg(long, default_value_t = 48)]
    pub vla_steps_past_success: usize,
    /// Also the goal suite's backward (reset) tasks, each episode starting where the forward
    /// expert's episode of the same init state ended (for `rudder train rl`); a held-out
    /// forward task holds out its backward task too.
    #[arg(long)]
    pub with_backward: bool,
    /// Share of the negatives taken from hard kinds when balancing to 50 % positives.
    #[arg(long, default_value_t = 0.5)]
    pub hard_share: f64,
    /// Worker threads for the scripted episodes.
    #[arg(long, default_value_t = 2)]
    pub threads: usize,
    #[arg(long)]
    pub quiet: bool,
}

/// One scripted episode to run.
struct Job {
    suite: Suite,
    task: Task,
    init: usize,
    split: Split,
    perturbation: Option<Perturbation>,
    /// A backward task's forward task, whose expert episode of the same init state sets the
    /// scene the backward episode starts from.
    forward: Option<Task>,
}

/// A labelled frame waiting for the balance.
struct Candidate {
    meta: SampleMeta,
    agentview: Vec<u8>,
    wrist: Vec<u8>,
}

fn kind_of(p: Perturbation) -> FrameKind {
    match p {
        Perturbation::HoldAbove => FrameKind::HoldAbove,
        Perturbation::DropBeside => FrameKind::DropBeside,
        Perturbation::EmptyGripper => FrameKind::EmptyGripper,
        Perturbation::WrongObject => FrameKind::WrongObject,
        Perturbation::DrawerHalf => FrameKind::DrawerHalf,
    }
}

/// A frame's label and kind: the predicate decides the label; a negative in the end state of
/// a perturbed episode is of the perturbation's kind, of a failed one `Failed`, else `Early`.
fn label(goal_holds: bool, in_tail: bool, perturbation: Option<Perturbation>) -> FrameKind {
    match (goal_holds, in_tail, perturbation) {
        (true, _, _) => FrameKind::Success,
        (false, true, Some(p)) => kind_of(p),
        (false, true, None) => FrameKind::Failed,
        (false, false, _) => FrameKind::Early,
    }
}

fn parse_suites(s: &str) -> anyhow::Result<Vec<Suite>> {
    Ok(match s {
        "all" => vec![Suite::Spatial, Suite::Object, Suite::Goal],
        other => vec![Suite::parse(other)?],
    })
}

/// Split ranges of init states.
fn split_inits(a: &DataArgs) -> [(Split, std::ops::Range<usize>); 3] {
    [
        (Split::Train, 0..a.train_inits),
        (Split::Val, 30..30 + a.val_inits),
        (Split::Test, 40..40 + a.test_inits),
    ]
}

pub fn data(a: DataArgs) -> anyhow::Result<ExitCode> {
    if a.size == 0 || a.size > 512 {
        bail!("--size {} must be in 1..=512", a.size);
    }
    if a.train_inits == 0 || a.train_inits > 30 || a.val_inits > 10 || a.test_inits > 10 {
        bail!("--train-inits must be in 1..=30, --val-inits and --test-inits in 0..=10 (the ranges 0..30, 30..40, 40..50 must not overlap)");
    }
    if !(0.0..=1.0).contains(&a.hard_share) {
        bail!("--hard-share {} must be in 0..=1", a.hard_share);
    }
    let suites = parse_suites(&a.suite)?;
    let cameras = CameraConfig {
        width: a.size,
        height: a.size,
    };
    let sampling = FrameSampling::default();
    let mut jobs = Vec::new();
    let mut holdout: Vec<String> = a.holdout_tasks.clone();
    let mut all_ids = Vec::new();
    for &suite in &suites {
        let tasks =
            load_suite(suite).map_err(|e| anyhow::anyhow!("suite {}: {e}", suite.name()))?;
        if a.holdout_tasks.is_empty() {
            if let Some(t) = tasks.last() {
                holdout.push(t.id.clone());
            }
        }
        let backward = if a.with_backward {
            rudder_sim::tabletop::load_backward(suite)
                .map_err(|e| anyhow::anyhow!("suite {}: {e}", suite.name()))?
        } else {
            Vec::new()
        };
        if a.with_backward && backward.is_empty() {
            bail!(
                "--with-backward: suite {} has no backward tasks (the goal suite has)",
                suite.name()
            );
        }
        let mut listed: Vec<(Task, Option<Task>)> =
            tasks.iter().map(|t| (t.clone(), None)).collect();
        for (fid, back) in backward {
            let forward = tasks.iter().find(|t| t.id == fid).cloned();
            listed.push((back, forward));
        }
        for (task, forward) in listed {
            all_ids.push(task.id.clone());
            let held = holdout.contains(&task.id)
                || forward.as_ref().is_some_and(|f| holdout.contains(&f.id));
            for (split, inits) in split_inits(&a) {
                // A held-out task is only ever evaluated, on the test init states.
                let split = match (held, split) {
                    (true, Split::Test) => Split::HeldoutTask,
                    (true, _) => continue,
                    (false, s) => s,
                };
                for init in inits {
                    jobs.push(Job {
                        suite,
                        task: task.clone(),
                        init,
                        split,
                        perturbation: None,
                        forward: forward.clone(),
                    });
                    for p in Perturbation::ALL {
                        if p.applies_to(&task) {
                            jobs.push(Job {
                                suite,
                                task: task.clone(),
                                init,
                                split,
                                perturbation: Some(p),
                                forward: forward.clone(),
                            });
                        }
                    }
                }
            }
        }
    }
    if let Some(bad) = holdout.iter().find(|h| !all_ids.contains(h)) {
        bail!(
            "--holdout-tasks: no task `{bad}` in {} (tasks: {})",
            a.suite,
            all_ids.join(", ")
        );
    }
    eprintln!(
        "writing {} scripted episodes ({} suite(s), held-out tasks: {}) at {}x{} px",
        jobs.len(),
        suites.len(),
        holdout.join(", "),
        a.size,
        a.size
    );
    let started = Instant::now();
    let pb = bar(jobs.len() as u64, a.quiet);
    let next = AtomicUsize::new(0);
    let results: Mutex<Vec<(usize, LabelledEpisode)>> = Mutex::new(Vec::new());
    let first_error: Mutex<Option<String>> = Mutex::new(None);
    std::thread::scope(|s| {
        for _ in 0..a.threads.clamp(1, 16) {
            s.spawn(|| loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                let Some(j) = jobs.get(i) else { break };
                if lock(&first_error).is_some() {
                    break;
                }
                let episode = match &j.forward {
                    None => {
                        expert_episode(&j.task, a.seed, j.init, j.perturbation, cameras, &sampling)
                            .map_err(|e| e.to_string())
                    }
                    Some(f) => backward_episode(f, j, a.seed, cameras, &sampling),
                };
                match episode {
                    Ok(ep) => lock(&results).push((i, ep)),
                    Err(e) => {
                        lock(&first_error)
                            .get_or_insert(format!("task {} init {}: {e}", j.task.id, j.init));
                    }
                }
                pb.inc(1);
            });
        }
    });
    pb.finish_and_clear();
    if let Some(e) = lock(&first_error).take() {
        bail!("scripted episode failed: {e}");
    }
    let mut episodes = results.into_inner().unwrap_or_else(|p| p.into_inner());
    episodes.sort_by_key(|(i, _)| *i);
    let mut cands = Vec::new();
    let mut perturbed_ok: BTreeMap<&'static str, (usize, usize)> = BTreeMap::new();
    for (i, ep) in &episodes {
        let j = &jobs[*i];
        if let Some(p) = j.perturbation {
            let e = perturbed_ok.entry(p.name()).or_default();
            e.0 += (!ep.success) as usize;
            e.1 += 1;
        }
        let source = if j.perturbation.is_some() {
            Source::Perturbed
        } else {
            Source::Expert
        };
        let tag = j.perturbation.map_or("expert", |p| p.name());
        for f in &ep.frames {
            let kind = label(f.goal_holds, f.in_tail, j.perturbation);
            cands.push(Candidate {
                meta: SampleMeta {
                    task: ep.task_id.clone(),
                    suite: j.suite.name().to_string(),
                    instruction: ep.instruction.clone(),
                    episode: format!("{}/init{:02}/{tag}", ep.task_id, ep.init),
                    init: ep.init,
                    step: f.step,
                    label: f.goal_holds,
                    kind,
                    source,
                    split: j.split,
                },
                agentview: f.agentview.data.clone(),
                wrist: f.wrist.data.clone(),
            });
        }
    }
    eprintln!(
        "scripted episodes: {} in {:.0} s; perturbed episodes ending without success: {}",
        episodes.len(),
        started.elapsed().as_secs_f64(),
        perturbed_ok
            .iter()
            .map(|(k, (n, t))| format!("{k} {n}/{t}"))
            .collect::<Vec<_>>()
            .join(", ")
    );
    drop(episodes);
    if let Some(policy) = &a.policy {
        cands.extend(vla_rollouts(&a, policy, &suites, &holdout)?);
    }
    let metas: Vec<SampleMeta> = cands.iter().map(|c| c.meta.clone()).collect();
    let keep = balance(&metas, a.hard_share, a.seed);
    let mut w = DatasetWriter::create(&a.out, a.size as usize, a.seed)?;
    for &k in &keep {
        let c = &cands[k];
        w.push(c.meta.clone(), &c.agentview, &c.wrist)?;
    }
    let summary = w.finish()?;
    println!(
        "{} frames ({} candidates) written to {} in {:.0} s",
        keep.len(),
        cands.len(),
        a.out.display(),
        started.elapsed().as_secs_f64()
    );
    println!("{}", serde_json::to_string_pretty(&summary)?);
    Ok(ExitCode::SUCCESS)
}

/// A backward task's scripted episode from where the forward expert's episode ended.
fn backward_episode(
    forward: &Task,
    j: &Job,
    seed: u64,
    cameras: CameraConfig,
    sampling: &FrameSampling,
) -> Result<LabelledEpisode, String> {
    let end = rudder_sim::tabletop::demos::forward_expert_end(forward, seed, j.init, cameras)
        .map_err(|e| e.to_string())?
        .ok_or_else(|| format!("the forward expert of {} failed", forward.id))?;
    let env = rudder_sim::tabletop::TabletopEnv::continuing(end, &j.task, &j.task.instruction)
        .map_err(|e| e.to_string())?;
    rudder_sim::tabletop::labelled::expert_episode_from(env, j.init, j.perturbation, sampling)
        .map_err(|e| e.to_string())
}

/// A VLA's rollouts in lockstep, every frame's label from the predicate: real failures (and
/// real successes) beside the scripted ones.
fn vla_rollouts(
    a: &DataArgs,
    policy: &std::path::Path,
    suites: &[Suite],
    holdout: &[String],
) -> anyhow::Result<Vec<Candidate>> {
    use crate::cli::eval::{evaluate_tapped, EvalOptions};
    let vla = crate::vla::LoadedVla::load(policy)?;
    let suite = match &vla.info {
        Some(i) => Suite::parse(&i.suite)?,
        None => suites[0],
    };
    if !suites.contains(&suite) {
        bail!(
            "--policy was trained on suite {}, which --suite {} does not include",
            suite.name(),
            a.suite
        );
    }
    let tasks = load_suite(suite).map_err(|e| anyhow::anyhow!("suite {}: {e}", suite.name()))?;
    let sampling = FrameSampling::default();
    type Frames = Vec<(usize, bool, ImageRgb8, ImageRgb8)>;
    let recorded: Arc<Mutex<BTreeMap<(usize, usize), Frames>>> = Arc::default();
    let rec = Arc::clone(&recorded);
    let tap: FrameTap = Arc::new(move |e: &FrameEvent<'_>| {
        let (Some(av), Some(wr)) = (
            e.observation.images.get("agentview"),
            e.observation.images.get("wrist"),
        ) else {
            return;
        };
        lock(&rec)
            .entry((e.task_index, e.episode))
            .or_default()
            .push((e.step, e.goal_holds, av.clone(), wr.clone()));
    });
    let mut out = Vec::new();
    for (split, inits) in split_inits(a) {
        let n = a.vla_episodes.min(inits.len());
        if n == 0 {
            continue;
        }
        let o = EvalOptions {
            suite,
            policy: policy.to_path_buf(),
            episodes: n,
            first_episode: Some(inits.start),
            seed: Some(a.seed),
            tasks: Vec::new(),
            lockstep: true,
            camera_size: Some(a.size),
            max_steps: None,
            replan_steps: None,
            steering: None,
            instructions: rudder_sim::tabletop::campaign::Instructions::Task,
            speed_window: None,
            inpainting: None,
            frames: None,
            steps_past_success: a.vla_steps_past_success,
            rl: None,
        };
        eprintln!(
            "VLA rollouts ({}): {} per task of suite {}",
            split_name(split),
            n,
            suite.name()
        );
        let report = evaluate_tapped(&o, &vla, Some(Arc::clone(&tap)), |e| {
            if !a.quiet {
                eprintln!(
                    "  task {:>2} init {:>2}: {}",
                    e.task_index,
                    e.episode,
                    if e.success { "success" } else { "failure" }
                );
            }
        })?;
        let mut rec = lock(&recorded);
        for run in &report.runs {
            let Some(frames) = rec.remove(&(run.task_index, run.episode)) else {
                continue;
            };
            let Some(task) = tasks.get(run.task_index) else {
                continue;
            };
            let split = if holdout.contains(&task.id) {
                if split != Split::Test {
                    continue;
                }
                Split::HeldoutTask
            } else {
                split
            };
            // The loop observes at each inference (and once at the end), so every recorded
            // frame is kept; the end state is the episode's last `tail_steps` steps.
            let last = frames.last().map_or(0, |f| f.0);
            let tail_from = last.saturating_sub(sampling.tail_steps);
            let mut prev_step = None;
            for (step, holds, av, wr) in frames {
                if prev_step == Some(step) {
                    continue;
                }
                prev_step = Some(step);
                let in_tail = step >= tail_from;
                out.push(Candidate {
                    meta: SampleMeta {
                        task: task.id.clone(),
                        suite: suite.name().to_string(),
                        instruction: run.instruction.clone(),
                        episode: format!("{}/init{:02}/vla", task.id, run.episode),
                        init: run.episode,
                        step,
                        label: holds,
                        kind: label(holds, in_tail, None),
                        source: Source::Vla,
                        split,
                    },
                    agentview: av.data,
                    wrist: wr.data,
                });
            }
        }
        rec.clear();
    }
    Ok(out)
}

fn split_name(s: Split) -> &'static str {
    match s {
        Split::Train => "train",
        Split::Val => "val",
        Split::Test => "test",
        Split::HeldoutTask => "heldout_task",
    }
}

// ---------------------------------------------------------------------------------------------
// rudder train reward

/// `rudder train reward --arch`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Arch {
    /// PaliGemma-style VLM asked "Is the task '...' done? Answer yes or no."
    Vlm,
    /// The honest baseline: a small CNN over both frames with a bag of instruction words.
    Cnn,
}

#[derive(Debug, Args)]
#[command(
    after_help = "Example:\n  rudder train reward --data data/reward --out runs/reward\n\n\
Trains on the `train` split, then fits the temperature and threshold on the `val` split and \
writes them to the final checkpoint's reward.json. --resume continues a killed run."
)]
pub struct TrainArgs {
    /// Data set written by `rudder reward data`.
    #[arg(long)]
    pub data: PathBuf,
    /// Output folder: checkpoint-N/ folders and `latest`.
    #[arg(long)]
    pub out: PathBuf,
    #[arg(long, default_value_t = 3000)]
    pub steps: u64,
    #[arg(long, default_value_t = 32)]
    pub batch: usize,
    #[arg(long, default_value_t = 5e-4)]
    pub lr: f64,
    #[arg(long, default_value_t = 0.01)]
    pub weight_decay: f64,
    #[arg(long, default_value_t = 100)]
    pub warmup: u64,
    /// Clip gradients to this global L2 norm (0 = off).
    #[arg(long, default_value_t = 1.0)]
    pub max_grad_norm: f64,
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Width of the Gemma decoder.
    #[arg(long, default_value_t = 128)]
    pub hidden: usize,
    /// Decoder layers.
    #[arg(long, default_value_t = 2)]
    pub layers: usize,
    /// Width of the SigLIP tower.
    #[arg(long, default_value_t = 96)]
    pub vision_hidden: usize,
    #[arg(long, default_value_t = 2)]
    pub vision_layers: usize,
    /// Image side the tower reads.
    #[arg(long, default_value_t = 64)]
    pub image_size: usize,
    #[arg(long, default_value_t = 8)]
    pub patch: usize,
    /// Largest random shift of each training frame in pixels (0 = no augmentation).
    #[arg(long, default_value_t = 3)]
    pub shift: usize,
    /// Precision the calibrated threshold must reach on the validation split.
    #[arg(long, default_value_t = rudder_reward::calibration::DEFAULT_MIN_PRECISION)]
    pub min_precision: f64,
    /// Resume from OUT/latest.
    #[arg(long)]
    pub resume: bool,
    /// The model: the PaliGemma-style VLM, or the CNN baseline (a conv tower per frame and a
    /// bag of instruction words) trained on the same frames.
    #[arg(long, value_enum, default_value = "vlm")]
    pub arch: Arch,
    /// Fine-tune this trained classifier (checkpoint or run folder) instead of starting from a
    /// seed; needs --lora. Its architecture, tokenizer and question are kept.
    #[arg(long, value_name = "CKPT", requires = "lora")]
    pub init: Option<PathBuf>,
    /// LoRA adapters on the language model (PEFT's adapter_config.json +
    /// adapter_model.safetensors, and merged weights), the base frozen.
    #[arg(long, requires = "init")]
    pub lora: bool,
    #[arg(long, default_value_t = 8)]
    pub lora_r: usize,
    #[arg(long, default_value_t = 16.0)]
    pub lora_alpha: f64,
    /// Linear layers that get adapters (name suffixes, comma separated).
    #[arg(long, value_delimiter = ',', default_value = "q_proj,v_proj")]
    pub lora_targets: Vec<String>,
    /// Save a checkpoint every N steps (0 = only at the end).
    #[arg(long, default_value_t = 500)]
    pub save_every: u64,
    /// Checkpoints kept.
    #[arg(long, default_value_t = 2)]
    pub keep: usize,
    /// Print a line every N steps (0 = never).
    #[arg(long, default_value_t = 100)]
    pub log_every: u64,
    #[arg(long)]
    pub quiet: bool,
}

pub fn train(a: TrainArgs) -> anyhow::Result<ExitCode> {
    if !(a.min_precision > 0.0 && a.min_precision <= 1.0) {
        bail!("--min-precision {} must be in (0, 1]", a.min_precision);
    }
    if !(a.lr.is_finite() && a.lr > 0.0 && a.lr <= 1.0) {
        bail!("--lr {} must be in (0, 1]", a.lr);
    }
    if a.batch == 0 || a.batch > 4096 {
        bail!("--batch {} must be in 1..=4096", a.batch);
    }
    let data = SuccessDataset::load(&a.data)?;
    let mut cfg = TrainConfig {
        steps: a.steps,
        batch_size: a.batch,
        lr: a.lr,
        weight_decay: a.weight_decay,
        warmup_steps: a.warmup,
        max_grad_norm: (a.max_grad_norm > 0.0).then_some(a.max_grad_norm),
        seed: a.seed,
        shift: a.shift,
        ..TrainConfig::default()
    };
    cfg.model.hidden = a.hidden;
    cfg.model.layers = a.layers;
    cfg.model.vision_hidden = a.vision_hidden;
    cfg.model.vision_layers = a.vision_layers;
    cfg.model.image_size = a.image_size;
    cfg.model.patch_size = a.patch;
    let started = Instant::now();
    let (dir, cal) = match a.arch {
        Arch::Vlm => {
            let mut t = match &a.init {
                Some(base) => {
                    if a.lora_r == 0 || a.lora_r > 1024 {
                        bail!("--lora-r {} must be in 1..=1024", a.lora_r);
                    }
                    if !(a.lora_alpha.is_finite() && a.lora_alpha > 0.0) {
                        bail!("--lora-alpha {} must be a positive number", a.lora_alpha);
                    }
                    let targets: Vec<&str> = a.lora_targets.iter().map(String::as_str).collect();
                    let lc = rudder_tune::peft::LoraConfig::new(a.lora_r, a.lora_alpha, &targets);
                    ClassifierTrainer::new_lora(cfg, &data, base, lc)
                        .with_context(|| format!("LoRA on {}", base.display()))?
                }
                None => ClassifierTrainer::new(cfg, &data)?,
            };
            let input = t.input(&data);
            let what = "the VLM success classifier";
            drive(&mut t.trainer, &input, &data, &a, what, |tmp| {
                Ok(calibrate(tmp, &data, a.min_precision, 64)?.1)
            })?
        }
        Arch::Cnn => {
            if a.init.is_some() {
                bail!("--init / --lora fine-tune the VLM classifier; the CNN baseline trains from a seed");
            }
            let cnn = TrainConfigCnn {
                steps: a.steps,
                batch_size: a.batch,
                lr: a.lr,
                weight_decay: a.weight_decay,
                warmup_steps: a.warmup,
                max_grad_norm: cfg.max_grad_norm,
                seed: a.seed,
                shift: a.shift,
                model: CnnSpec {
                    image_size: a.image_size,
                    ..CnnSpec::default()
                },
                ..TrainConfigCnn::default()
            };
            let mut t = CnnTrainer::new(cnn, &data)?;
            let input = t.input(&data);
            let what = "the CNN baseline";
            drive(&mut t.trainer, &input, &data, &a, what, |tmp| {
                Ok(calibrate_cnn(tmp, &data, a.min_precision)?.1)
            })?
        }
    };
    println!(
        "reward checkpoint: {} ({:.1} min); calibrated on {} validation frames: temperature {:.3}, threshold {:.2}",
        dir.display(),
        started.elapsed().as_secs_f64() / 60.0,
        cal.samples,
        cal.temperature,
        cal.threshold
    );
    Ok(ExitCode::SUCCESS)
}

/// The training loop both architectures share: resume, steps with a progress bar, periodic
/// checkpoints, then the final checkpoint with its calibration written inside it before it is
/// published (so `latest` always names a calibrated checkpoint).
fn drive<'d, F>(
    tr: &mut Trainer<F>,
    input: &F::Input<'d>,
    data: &SuccessDataset,
    a: &TrainArgs,
    what: &str,
    calibrate_in: impl FnOnce(&std::path::Path) -> Result<Calibration, RewardError>,
) -> anyhow::Result<(PathBuf, Calibration)>
where
    F: for<'x> Family<Error = RewardError, SaveInput<'x> = SuccessDataset>,
{
    let runs = RunLoop {
        out: &a.out,
        resume: a.resume,
        steps: a.steps,
        save_every: a.save_every,
        log_every: a.log_every,
        quiet: a.quiet,
    };
    runs.open(tr, |t, out| Ok(t.resume(out)?), |t| t.step_count())?;
    eprintln!(
        "training {what} ({} parameters) on {} frames of the train split ({}x{} px, {} tasks) for {} steps",
        tr.num_parameters(),
        data.indices(Split::Train).len(),
        data.image_size,
        data.image_size,
        data.tasks(Split::Train).len(),
        a.steps
    );
    let done = tr.step_count();
    runs.run(
        tr,
        done,
        |t| Ok(t.step(input)?),
        |t| {
            t.save(&a.out, a.keep, data, |_| Ok(()))?;
            Ok(())
        },
    )?;
    let mut cal = None;
    let dir = tr.save(&a.out, a.keep, data, |tmp| {
        cal = Some(calibrate_in(tmp)?);
        Ok(())
    })?;
    let Some(cal) = cal else {
        bail!(
            "{}: the checkpoint was written without its calibration",
            dir.display()
        );
    };
    Ok((dir, cal))
}

// ---------------------------------------------------------------------------------------------
// rudder reward calibrate

#[derive(Debug, Args)]
#[command(
    after_help = "Example:\n  rudder reward calibrate --model runs/reward --data data/reward --min-precision 0.97"
)]
pub struct CalibrateArgs {
    /// Reward checkpoint folder or training run folder (its `latest`).
    #[arg(long)]
    pub model: PathBuf,
    /// Data set whose `val` split is calibrated on.
    #[arg(long)]
    pub data: PathBuf,
    /// Precision the threshold must reach on the validation split.
    #[arg(long, default_value_t = rudder_reward::calibration::DEFAULT_MIN_PRECISION)]
    pub min_precision: f64,
}

pub fn recalibrate(a: CalibrateArgs) -> anyhow::Result<ExitCode> {
    if !(a.min_precision > 0.0 && a.min_precision <= 1.0) {
        bail!("--min-precision {} must be in (0, 1]", a.min_precision);
    }
    let data = SuccessDataset::load(&a.data)?;
    let (dir, cal) = if is_cnn_checkpoint(&a.model) {
        let (c, cal) = calibrate_cnn(&a.model, &data, a.min_precision)?;
        (c.dir, cal)
    } else {
        let (c, cal) = calibrate(&a.model, &data, a.min_precision, 64)?;
        (c.dir, cal)
    };
    println!(
        "{}: calibrated on {} validation frames: temperature {:.3}, threshold {:.2} (precision >= {})",
        dir.display(),
        cal.samples,
        cal.temperature,
        cal.threshold,
        a.min_precision
    );
    Ok(ExitCode::SUCCESS)
}

// ---------------------------------------------------------------------------------------------
// rudder eval reward

/// A trained classifier of either architecture, as eval and bench use it.
enum Judge {
    Vlm(Box<SuccessClassifier>),
    Cnn(Box<CnnClassifier>),
}

/// A checkpoint's calibration, whichever file holds it.
struct JudgeCalibration {
    temperature: f64,
    threshold: f64,
    calibrated: bool,
}

impl Judge {
    fn load(dir: &std::path::Path) -> anyhow::Result<Self> {
        Ok(if is_cnn_checkpoint(dir) {
            Judge::Cnn(Box::new(CnnClassifier::load(dir)?))
        } else {
            Judge::Vlm(Box::new(SuccessClassifier::load(dir)?))
        })
    }

    fn arch(&self) -> &'static str {
        match self {
            Judge::Vlm(_) => "vlm",
            Judge::Cnn(_) => "cnn",
        }
    }

    fn dir(&self) -> PathBuf {
        match self {
            Judge::Vlm(c) => c.dir.clone(),
            Judge::Cnn(c) => c.dir.clone(),
        }
    }

    fn image_size(&self) -> usize {
        match self {
            Judge::Vlm(c) => c.config().image_size,
            Judge::Cnn(c) => c.model.spec.image_size,
        }
    }

    fn calibration(&self) -> JudgeCalibration {
        match self {
            Judge::Vlm(c) => JudgeCalibration {
                temperature: c.config().temperature,
                threshold: c.config().threshold,
                calibrated: c.config().calibrated,
            },
            Judge::Cnn(c) => JudgeCalibration {
                temperature: c.calibration.temperature,
                threshold: c.calibration.threshold,
                calibrated: c.calibration.calibrated,
            },
        }
    }

    fn margins(
        &self,
        data: &SuccessDataset,
        idx: &[usize],
        batch: usize,
    ) -> anyhow::Result<Vec<f64>> {
        Ok(match self {
            Judge::Vlm(c) => classifier_margins(c, data, idx, batch)?,
            Judge::Cnn(c) => c.margins(data, idx, batch)?,
        })
    }

    fn classify(
        &self,
        frames: &[&ImageRgb8],
        instruction: &str,
    ) -> anyhow::Result<rudder_reward::Verdict> {
        Ok(match self {
            Judge::Vlm(c) => c.classify(frames, instruction)?,
            Judge::Cnn(c) => {
                let m = c.margins_queries(&[rudder_reward::classifier::Query {
                    frames,
                    instruction,
                }])?;
                c.verdict(m.first().copied().unwrap_or(0.0))
            }
        })
    }
}

#[derive(Debug, Args)]
#[command(
    after_help = "Example:\n  rudder eval reward --model runs/reward --data data/reward --json"
)]
pub struct EvalRewardArgs {
    /// Reward checkpoint folder or training run folder (its `latest`).
    #[arg(long)]
    pub model: PathBuf,
    /// Data set written by `rudder reward data`.
    #[arg(long)]
    pub data: PathBuf,
    /// Splits to score (comma separated: train, val, test, heldout_task).
    #[arg(long, value_delimiter = ',', default_value = "test,heldout_task")]
    pub splits: Vec<String>,
    /// Write reliability diagrams (before and after calibration) to this PNG.
    #[arg(long, value_name = "FILE.png")]
    pub reliability: Option<PathBuf>,
    /// Frames per forward pass.
    #[arg(long, default_value_t = 64)]
    pub batch: usize,
    /// Print one JSON object instead of a table.
    #[arg(long)]
    pub json: bool,
}

#[derive(Serialize)]
struct EvalRewardReport {
    model: PathBuf,
    /// "vlm" or "cnn".
    arch: &'static str,
    data: PathBuf,
    temperature: f64,
    threshold: f64,
    calibrated: bool,
    /// Per split: the classifier's scores.
    splits: BTreeMap<String, ClassifierReport>,
    /// Scores at RoboFuME's raw rule (P("yes") > P("no")), per split.
    raw_rule_accuracy: BTreeMap<String, f64>,
    wall_s: f64,
}

fn parse_split(s: &str) -> anyhow::Result<Split> {
    Ok(match s.trim() {
        "train" => Split::Train,
        "val" => Split::Val,
        "test" => Split::Test,
        "heldout_task" | "heldout" => Split::HeldoutTask,
        other => bail!("--splits: unknown split `{other}` (train, val, test, heldout_task)"),
    })
}

pub fn eval(a: EvalRewardArgs) -> anyhow::Result<ExitCode> {
    let started = Instant::now();
    let clf = Judge::load(&a.model)?;
    let data = SuccessDataset::load(&a.data)?;
    let cfg = clf.calibration();
    let mut splits = BTreeMap::new();
    let mut raw_acc = BTreeMap::new();
    let mut all_raw = (Vec::new(), Vec::new(), Vec::new());
    for name in &a.splits {
        let split = parse_split(name)?;
        let idx = data.indices(split);
        if idx.is_empty() {
            eprintln!("split {}: no samples, skipped", split_name(split));
            continue;
        }
        let pb = bar(1, a.json);
        pb.set_message(format!(
            "classifying {} frames of {}",
            idx.len(),
            split_name(split)
        ));
        let m = clf.margins(&data, &idx, a.batch)?;
        pb.finish_and_clear();
        let p_raw: Vec<f64> = m.iter().map(|&z| sigmoid(z)).collect();
        let p_cal: Vec<f64> = m.iter().map(|&z| sigmoid(z / cfg.temperature)).collect();
        let metas: Vec<&SampleMeta> = idx.iter().map(|&i| &data.samples[i]).collect();
        let labels: Vec<bool> = metas.iter().map(|s| s.label).collect();
        let correct = m
            .iter()
            .zip(&labels)
            .filter(|(z, l)| (**z > 0.0) == **l)
            .count();
        raw_acc.insert(
            split_name(split).to_string(),
            correct as f64 / idx.len() as f64,
        );
        all_raw.0.extend(p_raw.iter().copied());
        all_raw.1.extend(p_cal.iter().copied());
        all_raw.2.extend(labels.iter().copied());
        splits.insert(
            split_name(split).to_string(),
            report(&metas, &p_raw, &p_cal, cfg.threshold, cfg.temperature),
        );
    }
    if let Some(png) = &a.reliability {
        let before = reliability(&all_raw.0, &all_raw.2, 10);
        let after = reliability(&all_raw.1, &all_raw.2, 10);
        reliability_png(png, &before, &after)?;
        eprintln!(
            "reliability diagram: {} (ECE {:.3} before, {:.3} after calibration)",
            png.display(),
            ece(&all_raw.0, &all_raw.2, 10),
            ece(&all_raw.1, &all_raw.2, 10)
        );
    }
    let r = EvalRewardReport {
        model: clf.dir(),
        arch: clf.arch(),
        data: a.data.clone(),
        temperature: cfg.temperature,
        threshold: cfg.threshold,
        calibrated: cfg.calibrated,
        splits,
        raw_rule_accuracy: raw_acc,
        wall_s: started.elapsed().as_secs_f64(),
    };
    if a.json {
        println!("{}", serde_json::to_string_pretty(&r)?);
        return Ok(ExitCode::SUCCESS);
    }
    println!(
        "{}: temperature {:.3}, threshold {:.2}{}",
        r.model.display(),
        r.temperature,
        r.threshold,
        if r.calibrated {
            ""
        } else {
            " (not calibrated)"
        }
    );
    for (name, s) in &r.splits {
        let o = &s.overall;
        println!(
            "{name:>12}: n {:>5}  accuracy {:.3} [{:.3}, {:.3}]  precision {:.3}  recall {:.3}  F1 {:.3}  ECE {:.3} -> {:.3}",
            o.n, o.accuracy, o.accuracy_ci95.0, o.accuracy_ci95.1, o.precision, o.recall, o.f1, s.ece_raw, s.ece_calibrated
        );
        for (kind, (fp, n, rate)) in &s.per_kind_false_positive_rate {
            println!(
                "{:>14} false positives {kind:<14} {fp:>4}/{n:<5} {rate:.3}",
                ""
            );
        }
    }
    Ok(ExitCode::SUCCESS)
}

// ---------------------------------------------------------------------------------------------
// rudder bench reward

#[derive(Debug, Args)]
#[command(after_help = "Example:\n  rudder bench reward --model runs/reward --data data/reward")]
pub struct BenchRewardArgs {
    #[arg(long)]
    pub model: PathBuf,
    /// Data set whose test frames are classified (default: frames rendered by the simulator).
    #[arg(long)]
    pub data: Option<PathBuf>,
    /// Classifications timed (after 10 warm-up ones).
    #[arg(long, default_value_t = 300)]
    pub iters: usize,
    #[arg(long)]
    pub json: bool,
}

#[derive(Serialize)]
struct BenchRewardReport {
    model: PathBuf,
    arch: &'static str,
    threads: usize,
    iters: usize,
    image_size: usize,
    p50_ms: f64,
    p90_ms: f64,
    p99_ms: f64,
    mean_ms: f64,
}

pub fn bench(a: BenchRewardArgs) -> anyhow::Result<ExitCode> {
    let clf = Judge::load(&a.model)?;
    let frames: Vec<([ImageRgb8; 2], String)> = match &a.data {
        Some(d) => {
            let data = SuccessDataset::load(d)?;
            let s = data.image_size as u32;
            let idx = data.indices(Split::Test);
            let idx = if idx.is_empty() {
                (0..data.samples.len()).collect()
            } else {
                idx
            };
            idx.iter()
                .take(64)
                .map(|&i| {
                    let (av, wr) = data.frames(i);
                    (
                        [
                            ImageRgb8 {
                                width: s,
                                height: s,
                                data: av.to_vec(),
                            },
                            ImageRgb8 {
                                width: s,
                                height: s,
                                data: wr.to_vec(),
                            },
                        ],
                        data.samples[i].instruction.clone(),
                    )
                })
                .collect()
        }
        None => {
            let tasks = load_suite(Suite::Goal).map_err(|e| anyhow::anyhow!("{e}"))?;
            let s = clf.image_size() as u32;
            let cams = CameraConfig {
                width: s,
                height: s,
            };
            let mut v = Vec::new();
            for t in tasks.iter().take(4) {
                let mut env = rudder_sim::tabletop::TabletopEnv::new(t, 0, 40, Some(cams))
                    .map_err(|e| anyhow::anyhow!("{e}"))?;
                let o = env.observe();
                if let (Some(av), Some(wr)) = (o.agentview, o.wrist) {
                    v.push(([av, wr], t.instruction.clone()));
                }
            }
            v
        }
    };
    if frames.is_empty() {
        bail!("no frames to classify");
    }
    let mut times = Vec::with_capacity(a.iters);
    for i in 0..a.iters + 10 {
        let (f, instr) = &frames[i % frames.len()];
        let t0 = Instant::now();
        clf.classify(&[&f[0], &f[1]], instr)
            .with_context(|| format!("classifying a frame of \"{instr}\""))?;
        if i >= 10 {
            times.push(t0.elapsed().as_secs_f64() * 1e3);
        }
    }
    let mut sorted = times.clone();
    sorted.sort_by(f64::total_cmp);
    let pct = |q: f64| rudder_robot::stats::percentile(&sorted, q);
    let r = BenchRewardReport {
        model: clf.dir(),
        arch: clf.arch(),
        threads: rudder_tune::bench::threads(),
        iters: times.len(),
        image_size: clf.image_size(),
        p50_ms: pct(0.5),
        p90_ms: pct(0.9),
        p99_ms: pct(0.99),
        mean_ms: times.iter().sum::<f64>() / times.len().max(1) as f64,
    };
    if a.json {
        println!("{}", serde_json::to_string_pretty(&r)?);
    } else {
        println!(
            "one classification (both cameras, {} px, {} threads): p50 {:.2} ms  p90 {:.2} ms  p99 {:.2} ms  mean {:.2} ms over {}",
            r.image_size, r.threads, r.p50_ms, r.p90_ms, r.p99_ms, r.mean_ms, r.iters
        );
    }
    Ok(ExitCode::SUCCESS)
}
