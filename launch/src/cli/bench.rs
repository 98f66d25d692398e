//! `rudder bench ...`: speed measurements. Each prints medians so that a script can put them
//! beside the baseline measured in the same run (see benches/).

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Instant;

use clap::{Args, Subcommand};
use rudder_tune::candle_core::{DType, Device, Tensor};
use rudder_tune::hooks::Hooks;
use rudder_tune::load::load_model;
use rudder_tune::models::decoder::Decoder;
use serde::Serialize;

#[derive(Debug, Subcommand)]
pub enum BenchCommand {
    /// Forward pass of a Llama checkpoint (batch 1, full-sequence logits, no KV cache), the
    /// cost of an idle hook mechanism, and GFLOP/s against the machine's matmul peak.
    #[command(
        after_help = "Example (the baseline side by side: benches/llama_vs_torch.sh):\n  \
rudder bench llama --model fixtures/hf-tiny/llama --seqs 64,256 --runs 10 --json"
    )]
    Llama(LlamaArgs),
    /// The real-time loop against the kinematic UR5 with a synthetic policy whose inference
    /// takes 50-120 ms and returns 20-step chunks at 20 Hz.
    #[command(after_help = "Example:\n  rudder bench loop --rate 500 --seconds 60 --json")]
    Loop(LoopArgs),
    /// Rerun logging cost on the control thread per tick, as a fraction of the tick budget.
    #[command(after_help = "Example:\n  rudder bench viz --rates 125,500 --seconds 5")]
    Viz(VizArgs),
    /// Inference latency of one action chunk of a VLA checkpoint (either head; a pi0 checkpoint
    /// in the transformers layout too): every camera slot filled, a fixed prompt, batch 1.
    #[command(
        after_help = "Example (the PyTorch baseline side by side: benches/pi0_vs_torch.sh):\n  \
rudder bench vla --policy runs/vla/latest --runs 20 --json"
    )]
    Vla(VlaBenchArgs),
    /// Latency of one success classification (both cameras) of a reward checkpoint.
    Reward(crate::cli::reward::BenchRewardArgs),
    /// Latency of one plan of the diffusion driving planner (scene building and sampling) on
    /// scenes of generated scenarios.
    #[command(
        after_help = "Example:\n  rudder bench planner --checkpoint runs/planner --solver-steps 10 --runs 200 --json"
    )]
    Planner(crate::cli::planner::BenchPlannerArgs),
}

#[derive(Debug, Args)]
pub struct VlaBenchArgs {
    /// Checkpoint folder (config.json, model.safetensors, ...) or a training run's folder.
    #[arg(long)]
    pub policy: PathBuf,
    /// Prompt (tokenised with the checkpoint's tokenizer, bytes without one).
    #[arg(
        long,
        default_value = "pick up the black bowl and place it on the plate"
    )]
    pub prompt: String,
    /// Timed runs (p50 / p99 / max are reported).
    #[arg(long, default_value_t = 20)]
    pub runs: usize,
    #[arg(long, default_value_t = 2)]
    pub warmup: usize,
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct VizArgs {
    /// Control rates to measure, comma separated.
    #[arg(long, value_delimiter = ',', default_value = "125,500")]
    pub rates: Vec<f64>,
    /// Seconds per run (each rate runs once without and once with logging).
    #[arg(long, default_value_t = 5.0)]
    pub seconds: f64,
    /// Where the recordings go.
    #[arg(long, default_value = "out")]
    pub dir: PathBuf,
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct LoopArgs {
    /// Control rate in Hz (125 for a UR5 CB3, 500 for a UR5e).
    #[arg(long, default_value_t = 500.0)]
    pub rate: f64,
    /// How long to run.
    #[arg(long, default_value_t = 10.0)]
    pub seconds: f64,
    /// Seed of the synthetic policy's latencies and targets.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Spin this many microseconds before each deadline instead of sleeping.
    #[arg(long)]
    pub spin_us: Option<u64>,
    /// Do not ask for SCHED_FIFO real-time priority.
    #[arg(long)]
    pub no_fifo: bool,
    /// One JSON object (keys p99_us, p999_us, max_us, missed_ticks, violations, ...).
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct LlamaArgs {
    /// Llama checkpoint folder (config.json + model.safetensors).
    #[arg(long)]
    pub model: PathBuf,
    /// Sequence lengths to time, comma separated.
    #[arg(long, value_delimiter = ',', default_value = "64,256")]
    pub seqs: Vec<usize>,
    /// Timed runs per measurement (the median is reported).
    #[arg(long, default_value_t = 10)]
    pub runs: usize,
    /// Untimed warm-up runs.
    #[arg(long, default_value_t = 2)]
    pub warmup: usize,
    #[arg(long)]
    pub json: bool,
    /// Where to run: cpu, cuda or cuda:N.
    #[arg(long, default_value = "cpu")]
    pub device: String,
    /// Also time a LoRA training step (r 4, alpha 8 on q_proj and v_proj, batch 8, seq 64,
    /// AdamW) and a full fine-tuning step (tokens/s).
    #[arg(long)]
    pub lora: bool,
}

pub fn run(cmd: BenchCommand) -> anyhow::Result<ExitCode> {
    match cmd {
        BenchCommand::Llama(a) => llama(a),
        BenchCommand::Loop(a) => control_loop(a),
        BenchCommand::Viz(a) => viz(a),
        BenchCommand::Vla(a) => vla(a),
        BenchCommand::Reward(a) => crate::cli::reward::bench(a),
        BenchCommand::Planner(a) => crate::cli::planner::bench(a),
    }
}

#[derive(Debug, Serialize)]
struct Timing {
    median_ms: f64,
    min_ms: f64,
    max_ms: f64,
}

impl Timing {
    /// Median, min and max of at least one sample (ms).
    fn from_samples(mut ts: Vec<f64>) -> Self {
        ts.sort_by(|a, b| a.total_cmp(b));
        let n = ts.len();
        let median = if n % 2 == 1 {
            ts[n / 2]
        } else {
            0.5 * (ts[n / 2 - 1] + ts[n / 2])
        };
        Self {
            median_ms: median,
            min_ms: ts[0],
            max_ms: ts[n - 1],
        }
    }
}

fn time<F: FnMut() -> anyhow::Result<()>>(
    runs: usize,
    warmup: usize,
    mut f: F,
) -> anyhow::Result<Timing> {
    for _ in 0..warmup {
        f()?;
    }
    let mut ts = Vec::with_capacity(runs);
    for _ in 0..runs.max(1) {
        let t = Instant::now();
        f()?;
        ts.push(t.elapsed().as_secs_f64() * 1e3);
    }
    Ok(Timing::from_samples(ts))
}

/// Times `f(false)` and `f(true)` alternately (A B B A ...), each `runs` times.
fn time_interleaved<F: FnMut(bool) -> anyhow::Result<()>>(
    runs: usize,
    warmup: usize,
    mut f: F,
) -> anyhow::Result<(Timing, Timing)> {
    for i in 0..warmup * 2 {
        f(i % 2 == 1)?;
    }
    let mut ts = [Vec::with_capacity(runs), Vec::with_capacity(runs)];
    for i in 0..runs.max(1) * 2 {
        // A B B A order: neither variant always runs second.
        let second = (i % 2 == 1) ^ (i % 4 >= 2);
        let t = Instant::now();
        f(second)?;
        ts[second as usize].push(t.elapsed().as_secs_f64() * 1e3);
    }
    let [a, b] = ts;
    Ok((Timing::from_samples(a), Timing::from_samples(b)))
}

/// Multiply-adds of one forward pass over `t` tokens, counted as 2 FLOPs each.
fn forward_flops(d: &Decoder, t: usize) -> f64 {
    let c = &d.cfg;
    let (h, f, l) = (
        c.hidden_size as f64,
        c.intermediate_size as f64,
        c.num_layers as f64,
    );
    let q = (c.num_heads * c.head_dim) as f64;
    let kv = (c.num_kv_heads * c.head_dim) as f64;
    let t = t as f64;
    let proj = h * (q + 2.0 * kv) + q * h + 3.0 * h * f;
    // Scores and the weighted sum under the causal mask: query i sees i + 1 keys, so the
    // masked half of the score matrix is not counted as work.
    let attn = 4.0 * q * t * (t + 1.0) / 2.0;
    2.0 * t * (l * proj + h * c.vocab_size as f64) + l * attn
}

fn matmul_peak(runs: usize, device: &Device) -> anyhow::Result<f64> {
    let n = 1024;
    let a = Tensor::randn(0f32, 1.0, (n, n), device)?;
    let b = Tensor::randn(0f32, 1.0, (n, n), device)?;
    let t = time(runs, 2, || {
        let _ = a.matmul(&b)?.get(0)?.get(0)?.to_scalar::<f32>()?;
        Ok(())
    })?;
    Ok(2.0 * (n as f64).powi(3) / (t.median_ms * 1e-3) / 1e9)
}

fn llama(a: LlamaArgs) -> anyhow::Result<ExitCode> {
    let device = rudder_tune::verify::parse_device(&a.device)?;
    let loaded = load_model(&a.model, &device)?;
    let dec = loaded
        .model
        .decoder()
        .ok_or_else(|| anyhow::anyhow!("{}: not a language model", a.model.display()))?;
    let params: usize = loaded
        .weights
        .names()
        .filter_map(|n| loaded.weights.opt(n))
        .map(|t| t.elem_count())
        .sum();
    let mut out = serde_json::Map::new();
    out.insert("params_M".into(), serde_json::json!(params as f64 / 1e6));
    out.insert(
        "threads".into(),
        serde_json::json!(rudder_tune::candle_core::utils::get_num_threads()),
    );
    let peak = matmul_peak(a.runs, &device)?;
    out.insert("matmul_1024_gflops".into(), serde_json::json!(peak));
    // The hardware ceiling, beside gemm's square-matmul rate: the packed inference kernel runs
    // faster than gemm, so gemm's rate is no longer the right yardstick for the forward pass.
    let fma_peak = device
        .is_cpu()
        .then(|| rudder_tune::bench::fma_peak_gflops(rudder_tune::bench::threads()))
        .flatten();
    out.insert("fma_peak_gflops".into(), serde_json::json!(fma_peak));
    let vocab = dec.cfg.vocab_size as u32;
    for &s in &a.seqs {
        let ids: Vec<u32> = (0..s as u32).map(|i| (i * 7919 + 13) % vocab).collect();
        let ids = Tensor::from_vec(ids, (1, s), &device)?;
        let mut hooks = Hooks::new();
        // Plain and hooked passes alternate, so drift in the machine's speed (a noisy VM)
        // lands on both alike and the difference is the mechanism's own cost.
        let (plain, hooked) = time_interleaved(a.runs, a.warmup, |with_hooks| {
            let h = if with_hooks { Some(&mut hooks) } else { None };
            let (l, _) = dec.forward_ids(&ids, 0, None, h, false)?;
            // Copying one value back waits for the device to finish.
            let _ = l
                .to_dtype(DType::F32)?
                .flatten_all()?
                .get(0)?
                .to_scalar::<f32>()?;
            Ok(())
        })?;
        let gflops = forward_flops(dec, s) / (plain.median_ms * 1e-3) / 1e9;
        out.insert(
            format!("fwd_b1_s{s}"),
            serde_json::json!({
                "median_ms": plain.median_ms, "min_ms": plain.min_ms, "max_ms": plain.max_ms,
                "gflops": gflops, "fraction_of_matmul_peak": gflops / peak,
                "fraction_of_fma_peak": fma_peak.map(|p| gflops / p),
                "idle_hooks_median_ms": hooked.median_ms,
                "idle_hook_overhead_pct": 100.0 * (hooked.median_ms - plain.median_ms) / plain.median_ms,
            }),
        );
    }
    if a.lora {
        let (lora, full) = train_steps(&a, &device)?;
        out.insert("lora_step_b8_s64".into(), lora);
        out.insert("full_ft_step_b8_s64".into(), full);
    }
    if a.json {
        println!("{}", serde_json::Value::Object(out));
    } else {
        println!(
            "{}",
            serde_json::to_string_pretty(&serde_json::Value::Object(out))?
        );
    }
    Ok(ExitCode::SUCCESS)
}

fn vla(a: VlaBenchArgs) -> anyhow::Result<ExitCode> {
    use anyhow::Context;
    let dir = rudder_tune::train::checkpoint::resolve(&a.policy)?;
    let policy = rudder_policy::VlaPolicy::load(&dir)
        .with_context(|| format!("loading {}", dir.display()))?;
    let size = policy.image_size() as u32;
    // Deterministic pseudo-random pixels: the cost does not depend on the values.
    let mut x: u32 = 0x1234_5678;
    let mut image = || {
        let data = (0..size * size * 3)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 17;
                x ^= x << 5;
                (x >> 24) as u8
            })
            .collect();
        rudder_robot::ImageRgb8 {
            width: size,
            height: size,
            data,
        }
    };
    let images: Vec<(String, rudder_robot::ImageRgb8)> = policy
        .cameras()
        .iter()
        .map(|c| (c.clone(), image()))
        .collect();
    let state = vec![0.1; policy.state_dim()];
    let mut ts = Vec::with_capacity(a.runs);
    for i in 0..a.warmup + a.runs.max(1) {
        let t = Instant::now();
        let chunk = policy.infer_raw(&images, &state, &a.prompt, i as u64)?;
        std::hint::black_box(&chunk);
        if i >= a.warmup {
            ts.push(t.elapsed().as_secs_f64() * 1e3);
        }
    }
    ts.sort_by(f64::total_cmp);
    let q = |p: f64| ts[((ts.len() - 1) as f64 * p).round() as usize];
    let params: usize = {
        let loaded = load_model(&dir, &Device::Cpu)?;
        loaded
            .weights
            .names()
            .filter_map(|n| loaded.weights.opt(n))
            .map(|t| t.elem_count())
            .sum()
    };
    let out = serde_json::json!({
        "policy": dir,
        "head": policy.head(),
        "params_M": params as f64 / 1e6,
        "threads": rudder_tune::candle_core::utils::get_num_threads(),
        "cameras": policy.cameras().len(),
        "image_size": size,
        "prompt_tokens": policy.tokenizer().encode(&a.prompt, policy.settings().max_prompt_tokens)?.len(),
        "action_horizon": policy.action_horizon(),
        "passes_after_prefix": policy.num_inference_steps(),
        "runs": ts.len(),
        "p50_ms": q(0.5),
        "p99_ms": q(0.99),
        "min_ms": ts[0],
        "max_ms": ts[ts.len() - 1],
    });
    if a.json {
        println!("{out}");
    } else {
        println!("{}", serde_json::to_string_pretty(&out)?);
    }
    Ok(ExitCode::SUCCESS)
}

fn control_loop(a: LoopArgs) -> anyhow::Result<ExitCode> {
    use rudder_robot::control::timing::TimingRequest;
    let mut timing = TimingRequest::default();
    if let Some(us) = a.spin_us {
        timing.spin_window = std::time::Duration::from_micros(us);
    }
    if a.no_fifo {
        timing.fifo_priority = None;
    }
    if !a.json {
        eprintln!(
            "running the control loop at {} Hz for {} s ...",
            a.rate, a.seconds
        );
    }
    let report = rudder_robot::bench::run_loop_bench_with(a.rate, a.seconds, a.seed, timing)?;
    if a.json {
        println!("{}", report.to_json());
    } else {
        println!("{}", report.summary());
    }
    Ok(ExitCode::SUCCESS)
}

/// Median time of one LoRA step and one full fine-tuning step on batch 8 x seq 64 (loss over
/// every next token, as the PyTorch baseline computes it).
fn train_steps(
    a: &LlamaArgs,
    device: &Device,
) -> anyhow::Result<(serde_json::Value, serde_json::Value)> {
    use rudder_tune::peft::{self, LoraConfig};
    use rudder_tune::train::adamw::{collect_grads, AdamW, AdamWConfig};
    use rudder_tune::train::lora_backprop::LoraBackprop;
    use rudder_tune::train::sft::causal_lm_loss;
    use rudder_tune::train::{Rng, SftExample};
    let (b, s) = (8usize, 64usize);
    let mut rng = Rng::new(0);
    let mut loaded = load_model(&a.model, device)?;
    let vocab = loaded
        .model
        .decoder()
        .ok_or_else(|| anyhow::anyhow!("not a language model"))?
        .cfg
        .vocab_size;
    let data: Vec<SftExample> = (0..b)
        .map(|_| SftExample {
            tokens: (0..s).map(|_| rng.below(vocab) as u32).collect(),
            loss_mask: vec![],
        })
        .collect();
    let batch: Vec<&SftExample> = data.iter().collect();
    let cfg = LoraConfig::new(4, 8.0, &["q_proj", "v_proj"]);
    let params = peft::attach_new(&mut loaded.model, &cfg, "default", &mut rng, None)?;
    let mut opt = AdamW::new(
        params,
        AdamWConfig {
            lr: 1e-4,
            ..Default::default()
        },
    )?;
    let dec = loaded
        .model
        .decoder()
        .ok_or_else(|| anyhow::anyhow!("no decoder"))?;
    // The step `rudder train --lora` takes: the hand-written backward pass where it covers
    // the model, and candle autograd (timed beside it) for comparison.
    let pass = LoraBackprop::new(dec).ok();
    let lora = time(a.runs, a.warmup, || {
        let grads = match &pass {
            Some(p) => p.loss_and_grads(dec, &batch, 0)?.2.for_params(&opt.params),
            None => {
                let (loss, _) = causal_lm_loss(dec, &batch, 0)?;
                collect_grads(&opt.params, &loss.backward()?)
            }
        };
        opt.step(&grads, 1e-4)?;
        Ok(())
    })?;
    let autograd = time(a.runs.clamp(1, 5), 1, || {
        let (loss, _) = causal_lm_loss(dec, &batch, 0)?;
        let grads = collect_grads(&opt.params, &loss.backward()?);
        opt.step(&grads, 1e-4)?;
        Ok(())
    })?;
    let mut full_model = load_model(&a.model, device)?;
    let params = match &mut full_model.model {
        rudder_tune::load::AnyModel::Llama(m) => {
            rudder_tune::state::decoder_full_trainable(&mut m.decoder, "model", &|_| false)?
        }
        _ => anyhow::bail!("full fine-tuning bench needs a Llama checkpoint"),
    };
    let mut opt = AdamW::new(
        params,
        AdamWConfig {
            lr: 1e-5,
            ..Default::default()
        },
    )?;
    let dec = full_model
        .model
        .decoder()
        .ok_or_else(|| anyhow::anyhow!("no decoder"))?;
    let full = time(a.runs.clamp(1, 5), 1, || {
        let (loss, _) = causal_lm_loss(dec, &batch, 0)?;
        let grads = collect_grads(&opt.params, &loss.backward()?);
        opt.step(&grads, 1e-5)?;
        Ok(())
    })?;
    let tokens = (b * s) as f64;
    Ok((
        serde_json::json!({"median_ms": lora.median_ms, "min_ms": lora.min_ms, "max_ms": lora.max_ms,
                           "tokens_per_s": tokens / (lora.median_ms * 1e-3),
                           "backward": if pass.is_some() { "hand-written" } else { "autograd" },
                           "autograd_median_ms": autograd.median_ms}),
        serde_json::json!({"median_ms": full.median_ms, "min_ms": full.min_ms, "max_ms": full.max_ms,
                           "tokens_per_s": tokens / (full.median_ms * 1e-3)}),
    ))
}

fn viz(a: VizArgs) -> anyhow::Result<ExitCode> {
    std::fs::create_dir_all(&a.dir)?;
    let rows = crate::viz::bench::run(&a.rates, a.seconds, &a.dir)?;
    if a.json {
        println!("{}", serde_json::to_string(&rows)?);
    } else {
        for r in &rows {
            println!(
                "{:>5} Hz: logging {:.2} us mean / {:.2} us p99 per tick = {:.3}% / {:.3}% of the \
                 tick budget; tick work {:.1} us with, {:.1} us without; {} dropped, {} images, \
                 {} ticks, {} bytes",
                r.rate_hz,
                r.log_mean_us,
                r.log_p99_us,
                100.0 * r.budget_fraction_mean,
                100.0 * r.budget_fraction_p99,
                r.tick_work_mean_us,
                r.tick_work_mean_us_no_viz,
                r.records_dropped,
                r.images_logged,
                r.ticks,
                r.rrd_bytes
            );
        }
    }
    Ok(ExitCode::SUCCESS)
}
