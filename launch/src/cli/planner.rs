//! The diffusion driving planner's commands: `rudder train planner`, `rudder bench planner`,
//! and the planner factory `rudder sim driving --planner diffusion` runs campaigns with.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::{Arc, Mutex};

use crate::cli::progress::RunLoop;
use clap::Args;
use rudder_policy::driving::planner::PlanLog;
use rudder_policy::driving::{
    DiffusionPlanner, PlannerData, PlannerModel, PlannerTrainConfig, PlannerTrainer, SamplerKind,
    SamplingOptions,
};

#[derive(Debug, Args)]
pub struct TrainPlannerArgs {
    /// A driving demo folder (`rudder demos driving`).
    #[arg(long)]
    pub data: PathBuf,
    #[arg(long, default_value = "runs/planner")]
    pub out: PathBuf,
    #[arg(long, default_value_t = 4000)]
    pub steps: u64,
    /// Scenes per step (each noised --noise-draws times).
    #[arg(long, default_value_t = 32)]
    pub batch_size: usize,
    #[arg(long, default_value_t = 4)]
    pub noise_draws: usize,
    #[arg(long, default_value_t = 5e-4)]
    pub lr: f64,
    #[arg(long, default_value_t = 1e-4)]
    pub weight_decay: f64,
    #[arg(long, default_value_t = 200)]
    pub warmup: u64,
    /// Global gradient-norm clip (0: none).
    #[arg(long, default_value_t = 5.0)]
    pub max_grad_norm: f64,
    /// Decay of the weights' moving average that the checkpoint's model.safetensors holds.
    #[arg(long, default_value_t = 0.999)]
    pub ema: f64,
    #[arg(long, default_value_t = 192)]
    pub hidden: usize,
    #[arg(long, default_value_t = 6)]
    pub heads: usize,
    #[arg(long, default_value_t = 3)]
    pub encoder_layers: usize,
    #[arg(long, default_value_t = 3)]
    pub decoder_layers: usize,
    /// Future steps per decoder token (must divide the demos' 80).
    #[arg(long, default_value_t = 10)]
    pub chunk: usize,
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Write a checkpoint every N steps (0: only at the end).
    #[arg(long, default_value_t = 250)]
    pub save_every: u64,
    /// Checkpoints kept.
    #[arg(long, default_value_t = 2)]
    pub keep: usize,
    /// Continue the run in --out from its newest checkpoint.
    #[arg(long)]
    pub resume: bool,
    #[arg(long, default_value_t = 50)]
    pub log_every: u64,
    #[arg(long)]
    pub quiet: bool,
}

pub fn train(a: TrainPlannerArgs) -> anyhow::Result<ExitCode> {
    let cfg = PlannerTrainConfig {
        hidden: a.hidden,
        heads: a.heads,
        encoder_layers: a.encoder_layers,
        decoder_layers: a.decoder_layers,
        chunk: a.chunk,
        steps: a.steps,
        batch_size: a.batch_size,
        lr: a.lr,
        weight_decay: a.weight_decay,
        warmup_steps: a.warmup,
        max_grad_norm: (a.max_grad_norm > 0.0).then_some(a.max_grad_norm),
        seed: a.seed,
        ema_decay: a.ema,
        noise_draws: a.noise_draws,
    };
    cfg.validate()?;
    let data = PlannerData::load(&a.data)?;
    let mut trainer = PlannerTrainer::new(cfg, &data)?;
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
        PlannerTrainer::step_count,
    )?;
    eprintln!(
        "training the diffusion planner ({} parameters, hidden {}, {}+{} layers) on {} scenes \
         ({}) for {} steps of {} scenes x {} noise draws",
        trainer.num_parameters(),
        a.hidden,
        a.encoder_layers,
        a.decoder_layers,
        data.meta.samples,
        data.meta.source,
        a.steps,
        a.batch_size,
        a.noise_draws
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
    println!("planner checkpoint: {}", dir.display());
    Ok(ExitCode::SUCCESS)
}

/// How `--planner diffusion` samples (flags shared by `sim driving` and `bench planner`).
#[derive(Debug, Clone, Args)]
pub struct SamplingArgs {
    /// A planner checkpoint (or a `rudder train planner` run folder: its newest checkpoint).
    #[arg(long)]
    pub checkpoint: Option<PathBuf>,
    /// dpm (DPM-Solver++ 2M) or ddim.
    #[arg(long, default_value = "dpm")]
    pub sampler: String,
    /// Solver steps per plan.
    #[arg(long, default_value_t = 10)]
    pub solver_steps: usize,
    /// Classifier-guidance scale (collision and off-road energy; 0: none).
    #[arg(long, default_value_t = 0.0)]
    pub guidance: f64,
    /// Seed of the planner's noise.
    #[arg(long, default_value_t = 0)]
    pub noise_seed: u64,
    /// One noise draw per scenario that every plan starts from, instead of fresh noise for
    /// every plan.
    #[arg(long)]
    pub fixed_noise: bool,
    /// Hand the tracker the sampled future as it is, without fading its first pose's offset
    /// from the current motion out over the first second.
    #[arg(long)]
    pub no_anchor: bool,
    /// Scale of the initial noise (below 1: nearer the model's modes, less plan-to-plan
    /// variety).
    #[arg(long, default_value_t = 1.0)]
    pub temperature: f64,
}

impl SamplingArgs {
    pub fn options(&self) -> anyhow::Result<SamplingOptions> {
        let sampler = SamplerKind::parse(&self.sampler)
            .ok_or_else(|| anyhow::anyhow!("--sampler {}: expected dpm or ddim", self.sampler))?;
        let o = SamplingOptions {
            sampler,
            steps: self.solver_steps,
            seed: self.noise_seed,
            guidance: self.guidance,
            fixed_noise: self.fixed_noise,
            anchor: !self.no_anchor,
            temperature: self.temperature,
        };
        o.validate()?;
        Ok(o)
    }

    pub fn load(&self) -> anyhow::Result<Arc<PlannerModel>> {
        let Some(dir) = &self.checkpoint else {
            anyhow::bail!(
                "--planner diffusion needs --checkpoint DIR (from `rudder train planner`)"
            );
        };
        Ok(Arc::new(PlannerModel::load(dir)?))
    }
}

/// Plans of a campaign: latency percentiles, fallbacks and guidance.
pub fn log_summary(log: &PlanLog) -> serde_json::Value {
    let mut l = log.latencies();
    l.sort_by(f64::total_cmp);
    let pct = |p: f64| -> f64 {
        if l.is_empty() {
            return 0.0;
        }
        l[((l.len() - 1) as f64 * p).round() as usize] * 1e3
    };
    serde_json::json!({
        "plans": l.len(),
        "latency_ms": {"p50": pct(0.5), "p99": pct(0.99), "max": pct(1.0)},
        "fallbacks": log.fallbacks().len(),
        "first_fallbacks": log.fallbacks().iter().take(5).collect::<Vec<_>>(),
        "guidance": log.guidance(),
    })
}

/// A diffusion planner per scenario, all sharing `model` and `log`; scenario k's noise is its
/// own stream.
pub fn factory(
    model: Arc<PlannerModel>,
    opts: SamplingOptions,
    log: Arc<Mutex<PlanLog>>,
) -> impl Fn() -> Box<dyn rudder_robot::driving::Planner<rudder_sim::driving::map::Map>> + Sync {
    let counter = std::sync::atomic::AtomicU64::new(0);
    move || {
        let k = counter.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        Box::new(DiffusionPlanner::new(model.clone(), opts, k).with_log(log.clone()))
    }
}

#[derive(Debug, Args)]
pub struct BenchPlannerArgs {
    #[command(flatten)]
    pub sampling: SamplingArgs,
    /// Timed plans (p50 / p99 / max are reported), over the scenes of generated scenarios.
    #[arg(long, default_value_t = 200)]
    pub runs: usize,
    #[arg(long, default_value_t = 7)]
    pub seed: u64,
    #[arg(long)]
    pub json: bool,
}

/// Latency of one plan (scene building + sampling) on scenes from generated scenarios, the
/// ego on its logged pose.
pub fn bench(a: BenchPlannerArgs) -> anyhow::Result<ExitCode> {
    use rudder_policy::driving::{build_scene, SceneHistory};
    if a.runs == 0 {
        anyhow::bail!("--runs must be at least 1");
    }
    // candle's CPU kernels take their thread count from RAYON_NUM_THREADS (the machine's
    // cores by default); it is reported beside the figures.
    let threads = rudder_tune::candle_core::utils::get_num_threads();
    let model = a.sampling.load()?;
    let opts = a.sampling.options()?;
    let cfg = model.scene_config();
    let mut rng = rudder_tune::train::Rng::new(a.seed);
    let mut times = Vec::with_capacity(a.runs);
    let mut scenario = 0usize;
    let warm = 3;
    let mut done = 0usize;
    while done < a.runs + warm {
        let s = rudder_sim::driving::generator::generate(a.seed, scenario);
        scenario += 1;
        let steps = s.num_steps().saturating_sub(1);
        for k in (0..steps).step_by(10) {
            if done >= a.runs + warm {
                break;
            }
            let ego = s.logged_ego(k);
            let t0 = std::time::Instant::now();
            let mut h = SceneHistory::new(cfg.history);
            for f in s.frames_up_to(k, cfg.history) {
                h.push(&f);
            }
            let scene = build_scene(&cfg, &ego, &h, s.lights_at(k), s.map.as_ref(), &s.route);
            model.sample(&scene, 1, &opts, &mut rng)?;
            if done >= warm {
                times.push(t0.elapsed().as_secs_f64() * 1e3);
            }
            done += 1;
        }
    }
    times.sort_by(f64::total_cmp);
    let pct = |p: f64| times[((times.len() - 1) as f64 * p).round() as usize];
    let (p50, p99, max) = (pct(0.5), pct(0.99), pct(1.0));
    if a.json {
        println!(
            "{}",
            serde_json::json!({
                "checkpoint": model.dir,
                "sampler": opts.sampler,
                "solver_steps": opts.steps,
                "guidance": opts.guidance,
                "threads": threads,
                "runs": times.len(),
                "latency_ms": {"p50": p50, "p99": p99, "max": max},
                "target_p99_ms": 50.0,
            })
        );
    } else {
        println!(
            "diffusion planner ({:?}, {} steps, guidance {}, {} threads): {} plans, p50 {p50:.1} \
             ms, p99 {p99:.1} ms, max {max:.1} ms (target p99 <= 50 ms)",
            opts.sampler,
            opts.steps,
            opts.guidance,
            threads,
            times.len()
        );
    }
    Ok(ExitCode::SUCCESS)
}
