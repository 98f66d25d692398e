//! `rudder train ...`: fine-tuning jobs on the shared core.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::{Arc, Mutex};

use crate::cli::progress::{bar, RunLoop};
use anyhow::Context as _;
use clap::{Args, Subcommand};
use rudder_tune::candle_core::{Device, Var};
use rudder_tune::load::{load_model, AnyModel};
use rudder_tune::peft::{self, LoraConfig};
use rudder_tune::train::adamw::AdamWConfig;
use rudder_tune::train::{Rng, SftConfig, SftExample, SftTrainer};

#[derive(Debug, Subcommand)]
pub enum TrainCommand {
    /// Supervised fine-tuning of a causal LM (LoRA or full) on token sequences.
    #[command(
        after_help = "Data: JSON lines, one example each: {\"tokens\": [1, 52, 9, ...], \"loss_mask\": [false, false, true, ...]}\n\
(loss_mask optional: every token counts; index 0 is never predicted).\n\n\
Example:\n  rudder train sft --model fixtures/hf-tiny/llama --data data.jsonl --out runs/lora --lora --steps 200\n\n\
A killed run resumes from OUT/latest when started again with the same arguments."
    )]
    Sft(SftArgs),
    /// Train a small VLA policy from scratch on tabletop demos (`rudder demos`).
    #[command(
        after_help = "Example:\n  rudder demos --suite spatial --episodes 40 --size 64 --out data/spatial\n  \
rudder train vla --data data/spatial --variant flow --out runs/vla --steps 2000\n  \
rudder eval --suite spatial --policy runs/vla --episodes 10\n\n\
OUT/checkpoint-N/ holds config.json, model.safetensors, normalization.json, policy.json (a\n\
VlaPolicy checkpoint for `rudder serve` / `rudder eval`), training.json (data and split) and the\n\
optimizer and trainer state. A killed run resumes from OUT/latest with --resume."
    )]
    Vla(VlaArgs),
    /// Train the VLM success classifier on labelled frames (`rudder reward data`), then
    /// calibrate it on the validation split.
    Reward(crate::cli::reward::TrainArgs),
    /// Reset-free RL fine-tuning of a flow VLA with the success classifier (RoboFuME):
    /// latent-noise actor and Cal-QL critic, forward and backward tasks alternating.
    Rl(crate::cli::rl::RlArgs),
    /// Train the diffusion driving planner on driving demos (`rudder demos driving`).
    #[command(
        after_help = "Example:\n  rudder demos driving --scenarios 400 --seed 100 --out data/driving\n  \
rudder train planner --data data/driving --out runs/planner --steps 4000\n  \
rudder sim driving --planner diffusion --checkpoint runs/planner --scenarios 48 --seed 7\n\n\
OUT/checkpoint-N/ holds planner.json, model.safetensors (EMA weights), normalization.json,\n\
training.json and the raw weights, EMA, optimizer and trainer state. A killed run resumes from\n\
OUT/latest with --resume."
    )]
    Planner(crate::cli::planner::TrainPlannerArgs),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum VlaVariant {
    /// pi0-style flow matching with an action expert.
    Flow,
    /// OpenVLA-style action tokens: 256 bins per dimension, the last ids of the vocabulary.
    Tokens,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum DecodingArg {
    /// One token at a time (OpenVLA).
    Autoregressive,
    /// The whole chunk in one pass (OpenVLA-OFT style).
    Parallel,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum TokenizerArg {
    Bpe,
    Bytes,
}

#[derive(Debug, Args)]
pub struct VlaArgs {
    /// Demo folder written by `rudder demos` (meta.json + episode shards).
    #[arg(long)]
    pub data: PathBuf,
    #[arg(long, value_enum, default_value = "flow")]
    pub variant: VlaVariant,
    /// Output folder: checkpoint-N/ folders and `latest`.
    #[arg(long)]
    pub out: PathBuf,
    /// Optimizer steps in the whole run.
    #[arg(long, default_value_t = 2000)]
    pub steps: u64,
    #[arg(long, default_value_t = 16)]
    pub batch: usize,
    #[arg(long, default_value_t = 3e-4)]
    pub lr: f64,
    #[arg(long, default_value_t = 0.01)]
    pub weight_decay: f64,
    /// Linear warmup steps before the cosine decay.
    #[arg(long, default_value_t = 100)]
    pub warmup: u64,
    /// Clip gradients to this global L2 norm (0 = off).
    #[arg(long, default_value_t = 1.0)]
    pub max_grad_norm: f64,
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Resume from OUT/latest (same architecture flags and data).
    #[arg(long)]
    pub resume: bool,
    /// Width of the prefix language model.
    #[arg(long, default_value_t = 128)]
    pub hidden: usize,
    /// Layers of the language model and of the action expert.
    #[arg(long, default_value_t = 4)]
    pub layers: usize,
    #[arg(long, default_value_t = 4)]
    pub heads: usize,
    #[arg(long, default_value_t = 32)]
    pub head_dim: usize,
    /// Width of the action expert (default: --hidden).
    #[arg(long)]
    pub expert_hidden: Option<usize>,
    /// Width of the vision tower (default: --hidden).
    #[arg(long)]
    pub vision_hidden: Option<usize>,
    #[arg(long, default_value_t = 2)]
    pub vision_layers: usize,
    /// Side of the images the vision tower takes (demo images are resized to it).
    #[arg(long, default_value_t = 64)]
    pub image_size: usize,
    #[arg(long, default_value_t = 16)]
    pub patch: usize,
    /// Actions per chunk (default: 8; 1 for autoregressive tokens, as OpenVLA).
    #[arg(long)]
    pub chunk: Option<usize>,
    /// How the tokens variant decodes its action tokens.
    #[arg(long, value_enum, default_value = "autoregressive")]
    pub decoding: DecodingArg,
    /// Prompt length limit in tokens (BOS included).
    #[arg(long, default_value_t = 48)]
    pub max_prompt_tokens: usize,
    /// Prompt tokenizer: a BPE trained on the demos' instructions and a small corpus (saved as
    /// tokenizer.json; manner words are whole tokens), or raw bytes.
    #[arg(long, value_enum, default_value = "bpe")]
    pub tokenizer: TokenizerArg,
    /// Upper bound of the BPE vocabulary (special tokens included).
    #[arg(long, default_value_t = 512)]
    pub vocab_size: usize,
    /// Euler steps at inference.
    #[arg(long, default_value_t = 10)]
    pub inference_steps: usize,
    /// Train on failed expert episodes too.
    #[arg(long)]
    pub include_failed: bool,
    /// Fine-tune this checkpoint (or run folder) with LoRA instead of training from scratch:
    /// its architecture, tokenizer and normalisation are kept (the architecture flags are
    /// ignored). Needs --lora.
    #[arg(long)]
    pub init: Option<PathBuf>,
    /// Train PEFT-style LoRA adapters on the language model's (and pi0's action expert's)
    /// linears of --init; checkpoints hold the adapter (adapter_config.json +
    /// adapter_model.safetensors) and the merged weights.
    #[arg(long, requires = "init")]
    pub lora: bool,
    #[arg(long, default_value_t = 8)]
    pub lora_r: usize,
    #[arg(long, default_value_t = 16.0)]
    pub lora_alpha: f64,
    /// Module names (suffix match) to adapt, comma separated.
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "q_proj,k_proj,v_proj,o_proj,gate_proj,up_proj,down_proj"
    )]
    pub lora_targets: Vec<String>,
    /// Checkpoint every N steps (and at the end).
    #[arg(long, default_value_t = 200)]
    pub save_every: u64,
    /// Checkpoints to keep.
    #[arg(long, default_value_t = 2)]
    pub keep: usize,
    /// Print a log line every N steps.
    #[arg(long, default_value_t = 50)]
    pub log_every: u64,
    /// No progress bar (logs only).
    #[arg(long)]
    pub quiet: bool,
}

#[derive(Debug, Args)]
pub struct SftArgs {
    /// Base model folder (config.json + model.safetensors).
    #[arg(long)]
    pub model: PathBuf,
    /// Training data (JSON lines).
    #[arg(long)]
    pub data: PathBuf,
    /// Output folder: checkpoints (checkpoint-N/, latest) and the final adapter or model.
    #[arg(long)]
    pub out: PathBuf,
    /// Optimizer steps.
    #[arg(long, default_value_t = 100)]
    pub steps: u64,
    #[arg(long, default_value_t = 8)]
    pub batch_size: usize,
    /// Micro-batches per optimizer step.
    #[arg(long, default_value_t = 1)]
    pub grad_accum: usize,
    #[arg(long, default_value_t = 1e-4)]
    pub lr: f64,
    #[arg(long, default_value_t = 0.01)]
    pub weight_decay: f64,
    /// Linear warmup steps before the cosine decay.
    #[arg(long, default_value_t = 0)]
    pub warmup: u64,
    /// Clip gradients to this global L2 norm (0 = off).
    #[arg(long, default_value_t = 1.0)]
    pub max_grad_norm: f64,
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Train a LoRA adapter instead of all weights.
    #[arg(long)]
    pub lora: bool,
    #[arg(long, default_value_t = 8)]
    pub lora_r: usize,
    #[arg(long, default_value_t = 16.0)]
    pub lora_alpha: f64,
    #[arg(long, default_value_t = 0.0)]
    pub lora_dropout: f64,
    /// Module names (suffix match) to adapt, comma separated.
    #[arg(long, value_delimiter = ',', default_value = "q_proj,v_proj")]
    pub lora_targets: Vec<String>,
    /// Scale by alpha / sqrt(r) (rsLoRA).
    #[arg(long)]
    pub rslora: bool,
    /// Full fine-tuning: freeze parameters whose Hub name matches this regex.
    #[arg(long)]
    pub freeze: Option<String>,
    /// Checkpoint every N steps (and at the end).
    #[arg(long, default_value_t = 50)]
    pub save_every: u64,
    /// Checkpoints to keep.
    #[arg(long, default_value_t = 2)]
    pub keep: usize,
    /// Print a log line every N steps.
    #[arg(long, default_value_t = 10)]
    pub log_every: u64,
    /// Ignore existing checkpoints in OUT and start over.
    #[arg(long)]
    pub no_resume: bool,
    /// No progress bar (logs only).
    #[arg(long)]
    pub quiet: bool,
}

pub fn run(cmd: TrainCommand) -> anyhow::Result<ExitCode> {
    match cmd {
        TrainCommand::Sft(a) => sft(a),
        TrainCommand::Vla(a) => vla(a),
        TrainCommand::Reward(a) => crate::cli::reward::train(a),
        TrainCommand::Rl(a) => crate::cli::rl::train(a),
        TrainCommand::Planner(a) => crate::cli::planner::train(a),
    }
}

fn vla(a: VlaArgs) -> anyhow::Result<ExitCode> {
    use rudder_policy::dataset::DemoDataset;
    use rudder_policy::tokens::Decoding;
    use rudder_policy::train::{HeadKind, ModelSpec, TokenizerKind, TrainConfig, VlaTrainer};
    let decoding = match a.decoding {
        DecodingArg::Autoregressive => Decoding::Autoregressive,
        DecodingArg::Parallel => Decoding::Parallel,
    };
    let chunk = a.chunk.unwrap_or(
        if a.variant == VlaVariant::Tokens && decoding == Decoding::Autoregressive {
            1
        } else {
            8
        },
    );
    if chunk == 0 {
        anyhow::bail!("--chunk must be at least 1");
    }
    let data = DemoDataset::load(&a.data, !a.include_failed)?;
    let cfg = TrainConfig {
        model: ModelSpec {
            hidden: a.hidden,
            layers: a.layers,
            heads: a.heads,
            head_dim: a.head_dim,
            expert_hidden: a.expert_hidden.unwrap_or(a.hidden),
            vision_hidden: a.vision_hidden.unwrap_or(a.hidden),
            vision_layers: a.vision_layers,
            image_size: a.image_size,
            patch_size: a.patch,
            chunk,
            max_prompt_tokens: a.max_prompt_tokens,
            inference_steps: a.inference_steps,
            tokenizer: match a.tokenizer {
                TokenizerArg::Bpe => TokenizerKind::Bpe,
                TokenizerArg::Bytes => TokenizerKind::Bytes,
            },
            bpe_vocab: a.vocab_size,
            head: match a.variant {
                VlaVariant::Flow => HeadKind::Flow,
                VlaVariant::Tokens => HeadKind::Tokens,
            },
            decoding,
        },
        steps: a.steps,
        batch_size: a.batch,
        lr: a.lr,
        weight_decay: a.weight_decay,
        warmup_steps: a.warmup,
        max_grad_norm: (a.max_grad_norm > 0.0).then_some(a.max_grad_norm),
        seed: a.seed,
    };
    let mut trainer = match (&a.init, a.lora) {
        (Some(init), true) => {
            let base = rudder_tune::train::checkpoint::resolve(init)?;
            let targets: Vec<&str> = a.lora_targets.iter().map(String::as_str).collect();
            let lc = rudder_tune::peft::LoraConfig::new(a.lora_r, a.lora_alpha, &targets);
            VlaTrainer::new_lora(cfg, &data, &base, lc)
                .with_context(|| format!("LoRA on {}", base.display()))?
        }
        (Some(_), false) => anyhow::bail!(
            "--init fine-tunes a checkpoint with LoRA: add --lora (full fine-tuning of a \
             checkpoint is not built; train from scratch without --init)"
        ),
        (None, _) => VlaTrainer::new(cfg, &data)?,
    };
    let runs = RunLoop {
        out: &a.out,
        resume: a.resume,
        steps: a.steps,
        save_every: a.save_every,
        log_every: a.log_every,
        quiet: a.quiet,
    };
    runs.open(
        &mut trainer,
        |t, out| Ok(t.resume(out)?),
        VlaTrainer::step_count,
    )?;
    let (h, w) = data.image_size();
    eprintln!(
        "training VLA-{} ({} trainable parameters) on {} frames of {} episodes ({} suite, {h}x{w} images, \
         {} episodes per task) for {} steps",
        {
            let m = &trainer.cfg().model;
            match m.head {
                HeadKind::Flow => format!("flow, chunk {}", m.chunk),
                HeadKind::Tokens => format!("tokens, {:?} decoding, chunk {}", m.decoding, m.chunk),
            }
        } + &trainer
            .lora()
            .map(|l| format!(", LoRA r {} on {}", l.config.r, l.base.display()))
            .unwrap_or_default(),
        trainer.num_parameters(),
        data.samples.len(),
        data.episodes.len(),
        data.meta.suite,
        data.meta.episodes_per_task(),
        a.steps
    );
    let done = trainer.step_count();
    runs.run(
        &mut trainer,
        done,
        |t| Ok(t.step(&data)?),
        |t| {
            t.save(&a.out, a.keep, &data)?;
            Ok(())
        },
    )?;
    let dir = trainer.save(&a.out, a.keep, &data)?;
    println!("policy checkpoint: {}", dir.display());
    Ok(ExitCode::SUCCESS)
}

fn read_data(path: &PathBuf, vocab: usize) -> anyhow::Result<Vec<SftExample>> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let ex: SftExample = serde_json::from_str(line).with_context(|| {
            format!(
                "{}:{}: expected {{\"tokens\": [...], \"loss_mask\": [...]}}",
                path.display(),
                i + 1
            )
        })?;
        if ex.tokens.len() < 2 {
            anyhow::bail!(
                "{}:{}: `tokens` needs at least 2 ids",
                path.display(),
                i + 1
            );
        }
        if let Some(t) = ex.tokens.iter().find(|&&t| t as usize >= vocab) {
            anyhow::bail!(
                "{}:{}: token id {t} is outside the model's vocabulary ({vocab})",
                path.display(),
                i + 1
            );
        }
        if !ex.loss_mask.is_empty() && ex.loss_mask.len() != ex.tokens.len() {
            anyhow::bail!(
                "{}:{}: `loss_mask` has {} entries for {} tokens",
                path.display(),
                i + 1,
                ex.loss_mask.len(),
                ex.tokens.len()
            );
        }
        out.push(ex);
    }
    if out.is_empty() {
        anyhow::bail!("{}: no examples", path.display());
    }
    Ok(out)
}

fn sft(a: SftArgs) -> anyhow::Result<ExitCode> {
    let mut loaded = load_model(&a.model, &Device::Cpu)?;
    let (vocab, pad) = {
        let d = loaded
            .model
            .decoder()
            .ok_or_else(|| anyhow::anyhow!("{}: not a language model", a.model.display()))?;
        (d.cfg.vocab_size, d.cfg.pad_token_id.unwrap_or(0))
    };
    let data = read_data(&a.data, vocab)?;
    let mut rng = Rng::new(a.seed);
    let dropout_rng = Arc::new(Mutex::new(Rng::new(a.seed.wrapping_add(1))));
    let lora_cfg = if a.lora {
        let targets: Vec<&str> = a.lora_targets.iter().map(String::as_str).collect();
        let mut c = LoraConfig::new(a.lora_r, a.lora_alpha, &targets);
        c.lora_dropout = a.lora_dropout;
        c.use_rslora = a.rslora;
        c.base_model_name_or_path = Some(a.model.display().to_string());
        Some(c)
    } else {
        None
    };
    let params: Vec<(String, Var)> = match &lora_cfg {
        Some(c) => peft::attach_new(
            &mut loaded.model,
            c,
            "default",
            &mut rng,
            Some(dropout_rng.clone()),
        )?,
        None => {
            let freeze = a
                .freeze
                .as_deref()
                .map(regex::Regex::new)
                .transpose()
                .context("--freeze")?;
            let frozen = |n: &str| freeze.as_ref().is_some_and(|r| r.is_match(n));
            match &mut loaded.model {
                AnyModel::Llama(m) => {
                    rudder_tune::state::decoder_full_trainable(&mut m.decoder, "model", &frozen)?
                }
                AnyModel::Gemma(m) => {
                    rudder_tune::state::decoder_full_trainable(&mut m.decoder, "model", &frozen)?
                }
                _ => anyhow::bail!(
                    "full fine-tuning supports Llama and Gemma checkpoints; use --lora"
                ),
            }
        }
    };
    let n_trainable: usize = params.iter().map(|(_, v)| v.elem_count()).sum();
    let cfg = SftConfig {
        optim: AdamWConfig {
            lr: a.lr,
            weight_decay: a.weight_decay,
            ..Default::default()
        },
        warmup_steps: a.warmup,
        total_steps: a.steps,
        max_grad_norm: (a.max_grad_norm > 0.0).then_some(a.max_grad_norm),
        grad_accum: a.grad_accum,
        batch_size: a.batch_size,
        seed: a.seed,
        pad_id: pad,
    };
    let mut trainer = SftTrainer::new(params, cfg, data.len(), dropout_rng)?;
    if !a.no_resume {
        if let Some(dir) = trainer.resume(&a.out)? {
            eprintln!(
                "resumed from {} at step {}",
                dir.display(),
                trainer.step_count()
            );
        }
    }
    let backward = match loaded.model.decoder() {
        Some(dec) => trainer.choose_backward(dec),
        None => anyhow::bail!("model has no decoder"),
    };
    eprintln!(
        "training {} ({} trainable parameters, {} examples) for {} steps; gradients: {}",
        if a.lora { "LoRA" } else { "all weights" },
        n_trainable,
        data.len(),
        a.steps,
        backward
    );
    let bar = bar(a.steps, a.quiet);
    bar.set_position(trainer.step_count());
    let save =
        |trainer: &SftTrainer, loaded: &mut rudder_tune::load::LoadedModel| -> anyhow::Result<()> {
            let lc = lora_cfg.clone();
            let model = &mut loaded.model;
            trainer.save(&a.out, a.keep, |dir| match &lc {
                Some(c) => peft::save_adapter(model, c, "default", dir),
                None => Ok(()),
            })?;
            Ok(())
        };
    while trainer.step_count() < a.steps {
        let dec = loaded
            .model
            .decoder()
            .ok_or_else(|| anyhow::anyhow!("model has no decoder"))?;
        let s = trainer.step(dec, &data)?;
        bar.set_position(s.step);
        bar.set_message(format!(
            "loss {:.4} lr {:.2e} {:.0} tok/s",
            s.loss,
            s.lr,
            s.items_per_s()
        ));
        if a.log_every > 0 && s.step % a.log_every == 0 {
            bar.suspend(|| {
                println!(
                    "step {:>6}  loss {:.5}  lr {:.3e}  grad_norm {:.3}  {:.0} tok/s",
                    s.step,
                    s.loss,
                    s.lr,
                    s.grad_norm,
                    s.items_per_s()
                )
            });
        }
        if a.save_every > 0 && s.step % a.save_every == 0 && s.step < a.steps {
            save(&trainer, &mut loaded)?;
        }
    }
    bar.finish_and_clear();
    save(&trainer, &mut loaded)?;
    match &lora_cfg {
        Some(c) => {
            let dir = a.out.join("adapter");
            peft::save_adapter(&mut loaded.model, c, "default", &dir)?;
            println!("adapter (PEFT format): {}", dir.display());
        }
        None => {
            let dir = a.out.join("model");
            loaded.save_pretrained(&dir)?;
            println!("model: {}", dir.display());
        }
    }
    Ok(ExitCode::SUCCESS)
}
