//! `rudder steer ...`: activation steering through FFN neurons found by vocabulary projection
//! (Häon et al. 2025; rudder-steering).

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Instant;

use anyhow::Context;
use clap::{Args, Subcommand};
use rudder_steering::concepts::{build_dictionary, default_concepts, load_concepts, SplitMix64};
use rudder_steering::intervene::parse_alphas;
use rudder_steering::projection::{layer_markdown, project_model};
use rudder_steering::{Dictionary, SteerModel, SteeringHandle};
use rudder_tune::candle_core::{DType, Tensor};
use rudder_tune::load::AnyModel;

#[derive(Debug, Subcommand)]
pub enum SteerCommand {
    /// Project every FFN neuron's value vector (W_down[:, i]) onto the vocabulary and keep its
    /// top tokens: writes projection.json and one Markdown table per layer.
    #[command(after_help = "Examples:\n  \
rudder steer inspect --model fixtures/hf-tiny/llama --out out/steer-llama\n  \
rudder steer inspect --model fixtures/hf-tiny/gemma --layers 1..2 --top-k 5 --find '<7>'")]
    Inspect(InspectArgs),
    /// Pick concept clusters (fast, slow, up, down, left, right, or your own) and seeded random
    /// controls of the same sizes and layers; save them as a TOML steering dictionary.
    #[command(after_help = "Examples:\n  \
rudder steer clusters --model fixtures/hf-tiny/llama --size 10 --out out/dict.toml\n  \
rudder steer clusters --model fixtures/hf-tiny/llama --concepts concepts.toml --size 10,20 --layers 1.. --out out/dict.toml\n\n\
A concepts file: `fast = [\"fast\", \"quick\"]` per line (or under [concepts]); it overrides \
built-ins of the same name; `defaults = false` drops the built-ins. Words match tokens \
case-insensitively without ▁ / Ġ / ## markers; `<123>` means token id 123.")]
    Clusters(ClustersArgs),
    /// Forward-pass time with steering clusters active vs none, in one run (interleaved).
    #[command(after_help = "Examples:\n  \
rudder steer bench --model fixtures/hf-tiny/llama --iters 200\n  \
rudder steer bench --model fixtures/hf-tiny/llama --clusters out/dict.toml --set fast=4,slow=off --json")]
    Bench(BenchArgs),
    /// Run a VLA policy (flow or tokens head) in the tabletop simulator with a cluster set to each alpha (and a
    /// random control cluster, and unsteered): speed, displacement per axis and success with
    /// 95 % intervals, as a table / JSON, a PNG and (with --record or --connect) in Rerun.
    #[command(after_help = "Examples:\n  \
rudder steer clusters --model runs/vla/latest --size 10 --layers 1.. --out dict.toml\n  \
rudder steer sweep --policy runs/vla --dict dict.toml --cluster fast_10 --alphas 0,2,4,8,16 --episodes 2 --json\n  \
rudder steer sweep --policy runs/vla --dict dict.toml --cluster up_10 --tasks 0,1 --record sweep.rrd")]
    Sweep(Box<SweepCommand>),
}

#[derive(Debug, Args)]
pub struct InspectArgs {
    /// Model folder (config.json + safetensors, optional tokenizer.json).
    #[arg(long)]
    pub model: PathBuf,
    /// Layers to project: a..b (end exclusive), a..=b, a.., or one layer [default: all].
    #[arg(long)]
    pub layers: Option<String>,
    /// Tokens kept per neuron.
    #[arg(long, default_value_t = 10)]
    pub top_k: usize,
    /// Output folder for projection.json and layer_{l}.md [default: print a summary only].
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// List the neurons whose top-k holds this token (case-insensitive, ▁/Ġ/## ignored, or <id>).
    #[arg(long)]
    pub find: Vec<String>,
    /// Where to run: cpu, cuda or cuda:N.
    #[arg(long, default_value = "cpu")]
    pub device: String,
}

#[derive(Debug, Args)]
pub struct ClustersArgs {
    #[arg(long)]
    pub model: PathBuf,
    /// TOML file of concepts (name = [words]) [default: the built-in fast/slow/up/down/left/right].
    #[arg(long)]
    pub concepts: Option<PathBuf>,
    /// Cluster sizes, comma separated (several sizes name clusters {concept}_{size}).
    #[arg(long, value_delimiter = ',', default_value = "10")]
    pub size: Vec<usize>,
    /// Layers to pick neurons from [default: all].
    #[arg(long)]
    pub layers: Option<String>,
    #[arg(long, default_value_t = 10)]
    pub top_k: usize,
    /// Seed of the random control clusters.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Where the dictionary goes.
    #[arg(long)]
    pub out: PathBuf,
    #[arg(long, default_value = "cpu")]
    pub device: String,
}

#[derive(Debug, Args)]
pub struct BenchArgs {
    #[arg(long)]
    pub model: PathBuf,
    /// Steering dictionary [default: two random clusters of 10 neurons in the upper half of the layers].
    #[arg(long)]
    pub clusters: Option<PathBuf>,
    /// Alphas, e.g. fast=4,slow=off [default: every concept cluster at --alpha].
    #[arg(long)]
    pub set: Option<String>,
    #[arg(long, default_value_t = 4.0)]
    pub alpha: f32,
    /// Timed forward passes per side.
    #[arg(long, default_value_t = 100)]
    pub iters: usize,
    /// Prompt length (batch 1).
    #[arg(long, default_value_t = 64)]
    pub seq: usize,
    #[arg(long)]
    pub json: bool,
    #[arg(long, default_value = "cpu")]
    pub device: String,
}

/// `steer sweep`'s arguments with the recording flags, which only the commands that record take.
#[derive(Debug, Args)]
pub struct SweepCommand {
    #[command(flatten)]
    pub sweep: super::steer_sweep::SweepArgs,
    #[command(flatten)]
    pub recording: super::RecordingFlags,
}

pub fn run(cmd: SteerCommand) -> anyhow::Result<ExitCode> {
    match cmd {
        SteerCommand::Inspect(a) => inspect(a),
        SteerCommand::Clusters(a) => clusters(a),
        SteerCommand::Bench(a) => bench(a),
        SteerCommand::Sweep(c) => {
            let c = *c;
            super::steer_sweep::run(c.sweep, &c.recording)
        }
    }
}

/// A checkpoint folder, or a training run's folder (its `latest` checkpoint).
fn open(model: &std::path::Path, device: &str) -> anyhow::Result<SteerModel> {
    let device = rudder_tune::verify::parse_device(device)?;
    let dir = if model.join("latest").is_file() {
        rudder_tune::train::checkpoint::resolve(model)?
    } else {
        model.to_path_buf()
    };
    Ok(SteerModel::open(&dir, &device)?)
}

fn inspect(a: InspectArgs) -> anyhow::Result<ExitCode> {
    let m = open(&a.model, &a.device)?;
    let layers = m.layers(a.layers.as_deref())?;
    let t = Instant::now();
    let p = project_model(&m, layers.clone(), a.top_k)?;
    println!(
        "{} ({}): {} layers x {} neurons, vocab {}, unembedding {}, tokens from {}",
        p.model,
        p.architecture,
        p.num_layers,
        p.d_ff,
        p.vocab_size,
        p.unembedding,
        m.vocab
            .source()
            .map(|s| s.display().to_string())
            .unwrap_or_else(|| "nowhere (ids print as <id>)".into())
    );
    println!(
        "projected layers {}..{} ({} neurons, top {}) in {:.2} s",
        layers.start,
        layers.end,
        p.layers.iter().map(|l| l.neurons.len()).sum::<usize>(),
        p.top_k,
        t.elapsed().as_secs_f64()
    );
    // The most frequent top-1 tokens give a feel for what the layers write.
    let mut counts: std::collections::HashMap<String, usize> = Default::default();
    for (_, n) in p.neurons() {
        if let Some(t) = n.top.first() {
            *counts.entry(t.token.clone()).or_default() += 1;
        }
    }
    let mut counts: Vec<_> = counts.into_iter().collect();
    counts.sort_by(|x, y| y.1.cmp(&x.1).then(x.0.cmp(&y.0)));
    let common: Vec<String> = counts
        .iter()
        .take(10)
        .map(|(t, c)| format!("{t:?} x{c}"))
        .collect();
    println!("most common top-1 tokens: {}", common.join(", "));
    if let Some(out) = &a.out {
        std::fs::create_dir_all(out).with_context(|| format!("{}: creating", out.display()))?;
        let json = serde_json::to_vec(&p)?;
        let path = out.join("projection.json");
        rudder_tune::checkpoint::write_atomic(&path, &json)?;
        for l in &p.layers {
            let md = out.join(format!("layer_{}.md", l.layer));
            rudder_tune::checkpoint::write_atomic(&md, layer_markdown(&p, l).as_bytes())?;
        }
        println!(
            "wrote {} and {} layer table(s) layer_*.md",
            path.display(),
            p.layers.len()
        );
    }
    for word in &a.find {
        let hits = p.find(&m.vocab, word);
        println!(
            "\nneurons with {word:?} in their top {}: {}",
            p.top_k,
            hits.len()
        );
        if !hits.is_empty() {
            println!(
                "{:>6} {:>7} {:>9} {:>4}  top tokens",
                "layer", "neuron", "flat", "rank"
            );
        }
        for (l, n, r) in hits.iter().take(50) {
            let toks: Vec<String> = n
                .top
                .iter()
                .take(6)
                .map(|t| format!("{:?}", t.token))
                .collect();
            println!(
                "{l:>6} {:>7} {:>9} {r:>4}  {}",
                n.neuron,
                n.flat,
                toks.join(" ")
            );
        }
        if hits.len() > 50 {
            println!("... {} more", hits.len() - 50);
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn clusters(a: ClustersArgs) -> anyhow::Result<ExitCode> {
    let m = open(&a.model, &a.device)?;
    let mut layers = m.layers(a.layers.as_deref())?;
    // pi0's action expert reads the prefix's keys and values at each layer's input, so the
    // last prefix layer's FFN output reaches nothing: leave it out unless asked for.
    let n = m.decoder().layers.len();
    if a.layers.is_none() && matches!(m.loaded.model, AnyModel::Pi0(_)) && n > 1 {
        layers = 0..n - 1;
        eprintln!(
            "pi0: clusters from layers 0..{} (the last prefix layer's FFN does not reach the \
             action expert); pass --layers to override",
            n - 1
        );
    }
    let concepts = match &a.concepts {
        Some(p) => load_concepts(p)?,
        None => default_concepts(),
    };
    let p = project_model(&m, layers.clone(), a.top_k)?;
    let (dict, reports) = build_dictionary(&p, &m.vocab, &concepts, &a.size, layers, a.seed)?;
    let tops: std::collections::HashMap<usize, String> = p
        .neurons()
        .map(|(l, n)| {
            let toks: Vec<String> = n.top.iter().map(|t| format!("{:?}", t.token)).collect();
            (n.flat, format!("L{l} n{}: {}", n.neuron, toks.join(" ")))
        })
        .collect();
    dict.save(&a.out, &|i| tops.get(&i).cloned())?;
    println!(
        "{:16} {:>6} {:>7} {:>10}  layers",
        "cluster", "tokens", "neurons", "mean score"
    );
    for r in &reports {
        let mean = if r.picked.is_empty() {
            0.0
        } else {
            r.picked.iter().map(|x| x.score).sum::<f32>() / r.picked.len() as f32
        };
        let mut ls: Vec<usize> = r.picked.iter().map(|x| x.layer).collect();
        ls.sort_unstable();
        ls.dedup();
        let note = if r.tokens == 0 {
            "  (no vocabulary token matches its words: no cluster)".to_string()
        } else if r.picked.len() < r.wanted {
            format!(
                "  (only {} neurons have a concept token in their top-k)",
                r.picked.len()
            )
        } else {
            String::new()
        };
        println!(
            "{:16} {:>6} {:>3}/{:<3} {:>10.3}  {:?}{note}",
            r.cluster,
            r.tokens,
            r.picked.len(),
            r.wanted,
            mean,
            ls
        );
    }
    println!(
        "wrote {} ({} clusters, {} random controls, seed {})",
        a.out.display(),
        dict.clusters.len(),
        dict.controls.len(),
        a.seed
    );
    Ok(ExitCode::SUCCESS)
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        0.5 * (v[n / 2 - 1] + v[n / 2])
    }
}

fn bench(a: BenchArgs) -> anyhow::Result<ExitCode> {
    let m = open(&a.model, &a.device)?;
    let dec = m.decoder();
    let geo = m.geometry();
    let handle = match &a.clusters {
        Some(path) => {
            let dict = Dictionary::load(path)?;
            dict.check(path, geo.num_layers, geo.d_ff)?;
            let h = SteeringHandle::from_dictionary(&dict, None, geo)?;
            match &a.set {
                Some(spec) => {
                    for (n, alpha) in parse_alphas(spec)? {
                        h.set(&n, alpha)
                            .with_context(|| format!("--set in {}", path.display()))?;
                    }
                }
                None => {
                    for n in dict.clusters.keys() {
                        h.set(n, Some(a.alpha))?;
                    }
                }
            }
            h
        }
        None => {
            let mut rng = SplitMix64::new(0);
            let lo = geo.num_layers / 2;
            let mut pick = || -> Vec<usize> {
                (0..10)
                    .map(|_| {
                        let l = lo + rng.below((geo.num_layers - lo) as u64) as usize;
                        l * geo.d_ff + rng.below(geo.d_ff as u64) as usize
                    })
                    .collect()
            };
            let (c1, c2) = (pick(), pick());
            let h =
                SteeringHandle::new(geo, vec![("random_a".into(), c1), ("random_b".into(), c2)])?;
            h.set("random_a", Some(a.alpha))?;
            h.set("random_b", Some(-a.alpha))?;
            h
        }
    };
    let active: Vec<(String, Option<f32>)> = handle
        .snapshot()
        .into_iter()
        .filter(|(_, x)| x.is_some())
        .collect();
    let neurons: usize = active
        .iter()
        .filter_map(|(n, _)| handle.neurons(n).map(|v| v.len()))
        .sum();
    let vocab = dec.cfg.vocab_size as u32;
    let ids: Vec<u32> = (0..a.seq as u32).map(|i| (i * 7919 + 13) % vocab).collect();
    let ids = Tensor::from_vec(ids, (1, a.seq), &m.loaded.device)?;
    let mut steerer = handle.steerer();
    let sync = |l: &Tensor| -> anyhow::Result<f32> {
        Ok(l.to_dtype(DType::F32)?
            .flatten_all()?
            .get(0)?
            .to_scalar::<f32>()?)
    };
    let (plain_l, _) = dec.forward_ids(&ids, 0, None, None, false)?;
    let (steer_l, _) = dec.forward_ids(&ids, 0, None, steerer.hooks(), false)?;
    let change = (&steer_l - &plain_l)?
        .abs()?
        .max_all()?
        .to_dtype(DType::F32)?
        .to_scalar::<f32>()?;
    let (mut tp, mut ts) = (Vec::new(), Vec::new());
    for i in 0..a.iters.max(1) + 3 {
        // Alternate which side goes first so that drift hits both equally.
        let mut once = |steered: bool| -> anyhow::Result<f64> {
            let t = Instant::now();
            let hooks = if steered { steerer.hooks() } else { None };
            let (l, _) = dec.forward_ids(&ids, 0, None, hooks, false)?;
            sync(&l)?;
            Ok(t.elapsed().as_secs_f64() * 1e3)
        };
        let (p, s) = if i % 2 == 0 {
            let p = once(false)?;
            (p, once(true)?)
        } else {
            let s = once(true)?;
            (once(false)?, s)
        };
        if i >= 3 {
            tp.push(p);
            ts.push(s);
        }
    }
    let (mp, ms) = (median(&mut tp), median(&mut ts));
    let ratio = ms / mp;
    if a.json {
        println!(
            "{}",
            serde_json::json!({
                "model": a.model.display().to_string(), "seq": a.seq, "iters": a.iters,
                "active_clusters": active.iter().map(|(n, x)| serde_json::json!({"name": n, "alpha": x})).collect::<Vec<_>>(),
                "steered_neurons": neurons, "plain_median_ms": mp, "steered_median_ms": ms,
                "ratio": ratio, "overhead_pct": 100.0 * (ratio - 1.0), "max_logit_change": change,
            })
        );
    } else {
        let names: Vec<String> = active
            .iter()
            .map(|(n, x)| format!("{n}={}", x.unwrap_or(0.0)))
            .collect();
        println!(
            "model {} ({} layers x {} neurons), batch 1, seq {}, {} iterations each, interleaved",
            a.model.display(),
            geo.num_layers,
            geo.d_ff,
            a.seq,
            a.iters
        );
        println!("active clusters: {} ({neurons} neurons)", names.join(", "));
        println!("no steering   median {mp:.3} ms");
        println!("steering      median {ms:.3} ms");
        println!(
            "ratio steered/plain {ratio:.4} (overhead {:+.2}%), max |logit change| {change:.4}",
            100.0 * (ratio - 1.0)
        );
    }
    Ok(ExitCode::SUCCESS)
}
