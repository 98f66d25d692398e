//! `rudder sim ...` and `rudder demos`: simulation campaigns and demonstration data.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Subcommand};
use rudder_sim::tabletop::{self, CameraConfig, Suite};

#[cfg(feature = "ros2")]
mod ur5_driver;

#[derive(Debug, Subcommand)]
pub enum SimCommand {
    /// Tabletop manipulation episodes (LIBERO-style suites) with a policy.
    #[command(
        after_help = "Example:\n  rudder sim tabletop --suite spatial --policy scripted --episodes 50 --json"
    )]
    Tabletop(TabletopArgs),
    /// Closed-loop driving scenarios scored with nuPlan's closed-loop score.
    #[command(
        after_help = "Example:\n  rudder sim driving --planner idm --scenarios 48 --mode nonreactive --json\n  \
rudder sim driving --planner log-replay --db logs/scenario.db --json   (map: logs/scenario.map.json)\n  \
rudder sim driving --scenarios 48 --write-db logs/   then   rudder sim driving --db logs/ --mode reactive"
    )]
    Driving(DrivingArgs),
    /// The simulated UR5 behind the UR ROS 2 driver's topics (build with `--features ros2`).
    #[cfg(feature = "ros2")]
    Ur5Driver(ur5_driver::Ur5DriverArgs),
}

#[derive(Debug, Args)]
pub struct DrivingArgs {
    /// log-replay (the expert), constant-velocity, idm, or diffusion (with --checkpoint).
    #[arg(long, default_value = "idm")]
    pub planner: String,
    /// The diffusion planner's checkpoint and sampler.
    #[command(flatten)]
    pub sampling: super::planner::SamplingArgs,
    /// Generated scenarios (with --db: how many of the database's, 0 = all).
    #[arg(long, default_value_t = 48)]
    pub scenarios: usize,
    /// nonreactive (agents replay the log: CLS-NR) or reactive (IDM agents: CLS-R).
    #[arg(long, default_value = "nonreactive")]
    pub mode: String,
    #[arg(long, default_value_t = 7)]
    pub seed: u64,
    /// A nuPlan-schema SQLite log (or a folder of `*.db` logs) instead of generated
    /// scenarios; each log's map is `<stem>.map.json` beside it.
    #[arg(long)]
    pub db: Option<PathBuf>,
    /// Write the generated scenarios (--scenarios, --seed) as nuPlan-schema logs into this
    /// empty folder, one DB and map per scenario with its tag 3 s after the start, and exit.
    #[arg(long, conflicts_with = "db")]
    pub write_db: Option<PathBuf>,
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct TabletopArgs {
    /// spatial, object, goal (or libero_spatial, ...), or all.
    #[arg(long, default_value = "spatial")]
    pub suite: String,
    /// scripted (the experts, stepped directly in the simulator). To run a trained VLA
    /// checkpoint use `rudder eval --policy RUN` (held-out init states, real-time loop).
    #[arg(long, default_value = "scripted")]
    pub policy: String,
    /// Episodes per task (each on its own seeded init state).
    #[arg(long, default_value_t = 10)]
    pub episodes: usize,
    #[arg(long, default_value_t = 7)]
    pub seed: u64,
    /// Render both 128 px cameras every step (as a policy that reads images would need).
    #[arg(long)]
    pub render: bool,
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
#[command(
    after_help = "Example:\n  rudder demos --suite spatial --episodes 50 --out data/spatial\n\n\
Writes episode shards (safetensors: uint8 images, state, actions, instruction, task id, success)\n\
and meta.json (format version, cameras, rates, per-dimension action q01/q99); see sim/README.md."
)]
#[command(args_conflicts_with_subcommands = true, subcommand_negates_reqs = true)]
pub struct DemosArgs {
    /// `driving`: the driving planner's data set instead of the tabletop demos.
    #[command(subcommand)]
    pub kind: Option<DemosKind>,
    #[arg(long, default_value = "spatial")]
    pub suite: String,
    /// Episodes per task.
    #[arg(long, default_value_t = 50)]
    pub episodes: usize,
    #[arg(long)]
    pub out: Option<PathBuf>,
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Camera width and height in pixels.
    #[arg(long, default_value_t = 128)]
    pub size: u32,
    /// DART noise: standard deviation (action units, 1 = 5 cm per step) added to the
    /// translation the arm executes while the expert moves; the expert's clean action is
    /// recorded, so the data teach recovering from small position errors. 0 = off.
    #[arg(long, default_value_t = 0.0)]
    pub action_noise: f64,
    /// Also record each goal task's backward task (reset-free RL), each episode starting where
    /// the forward expert's episode ended; goal suite only.
    #[arg(long)]
    pub with_backward: bool,
}

#[derive(Debug, Subcommand)]
pub enum DemosKind {
    /// The diffusion planner's data set: scene arrays and the expert's next 8 s, every
    /// `--stride` steps of generated scenarios (every type) or of a nuPlan-schema log.
    #[command(
        after_help = "Example:\n  rudder demos driving --scenarios 480 --out data/driving\n  \
rudder demos driving --db logs/ --out data/driving-logs\n\nFormat: policy/README.md (\"Driving demos\")."
    )]
    Driving(DrivingDemosArgs),
}

#[derive(Debug, Args)]
pub struct DrivingDemosArgs {
    /// Generated scenarios (cycling through the twelve types); with --db, how many of the
    /// log's (0 = all).
    #[arg(long, default_value_t = 480)]
    pub scenarios: usize,
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// A nuPlan-schema log, or a folder of them, instead of generated scenarios.
    #[arg(long)]
    pub db: Option<PathBuf>,
    /// Steps between samples (10 = one sample per second of each scenario).
    #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u64).range(1..=150))]
    pub stride: u64,
    /// Fraction of samples whose ego is moved off its logged pose (up to 1 m sideways, 0.75 m
    /// along, 0.15 rad, 20 % speed), the target future bent back to the log within 2 s: the
    /// augmentation against compounding error in closed loop.
    #[arg(long, default_value_t = 0.5)]
    pub perturb: f64,
    #[arg(long)]
    pub out: PathBuf,
}

fn suites(name: &str) -> anyhow::Result<Vec<Suite>> {
    if name == "all" {
        return Ok(vec![Suite::Spatial, Suite::Object, Suite::Goal]);
    }
    Ok(vec![Suite::parse(name)?])
}

pub fn run(cmd: SimCommand) -> anyhow::Result<ExitCode> {
    match cmd {
        SimCommand::Tabletop(a) => tabletop_cmd(a),
        SimCommand::Driving(a) => driving_cmd(a),
        #[cfg(feature = "ros2")]
        SimCommand::Ur5Driver(a) => ur5_driver::run(a),
    }
}

fn tabletop_cmd(a: TabletopArgs) -> anyhow::Result<ExitCode> {
    if a.policy != "scripted" {
        anyhow::bail!(
            "--policy {}: `sim tabletop` runs the scripted experts only; evaluate a trained VLA with `rudder eval --policy {}`",
            a.policy,
            a.policy
        );
    }
    let mut reports = Vec::new();
    for s in suites(&a.suite)? {
        let r = tabletop::run_suite(s, a.episodes, a.seed, a.render)?;
        if !a.json {
            println!(
                "{:10} success {:.3} ({}/{}) over {} tasks, {:.0} steps/s",
                r.suite,
                r.success_rate,
                r.successes,
                r.episodes,
                r.tasks.len(),
                r.steps_per_s
            );
        }
        reports.push(r);
    }
    if a.json {
        if reports.len() == 1 {
            println!("{}", serde_json::to_string(&reports[0])?);
        } else {
            let episodes: usize = reports.iter().map(|r| r.episodes).sum();
            let successes: usize = reports.iter().map(|r| r.successes).sum();
            println!(
                "{}",
                serde_json::json!({
                    "success_rate": successes as f64 / episodes.max(1) as f64,
                    "episodes": episodes,
                    "suites": reports,
                })
            );
        }
    }
    Ok(ExitCode::SUCCESS)
}

pub fn demos(a: DemosArgs) -> anyhow::Result<ExitCode> {
    if let Some(DemosKind::Driving(d)) = a.kind {
        return driving_demos(d);
    }
    let Some(out_dir) = a.out.clone() else {
        anyhow::bail!("--out DIR: where to write the demonstrations");
    };
    let cams = CameraConfig {
        width: a.size,
        height: a.size,
    };
    let chosen = suites(&a.suite)?;
    if a.with_backward && chosen != [Suite::Goal] {
        anyhow::bail!(
            "--with-backward: backward tasks exist for the goal suite only (got --suite {})",
            a.suite
        );
    }
    for s in chosen {
        let out = if a.suite == "all" {
            out_dir.join(format!("{s:?}").to_lowercase())
        } else {
            out_dir.clone()
        };
        let summary = tabletop::write_demos_with(
            s,
            a.episodes,
            &out,
            a.seed,
            cams,
            tabletop::DemoOptions {
                action_noise: a.action_noise,
                with_backward: a.with_backward,
            },
        )?;
        println!(
            "{}: {} episodes ({} tasks, expert success {:.1}%) -> {}",
            summary.suite,
            summary.episodes.len(),
            summary.tasks.len(),
            summary.success_rate * 100.0,
            out.display()
        );
    }
    Ok(ExitCode::SUCCESS)
}

fn driving_cmd(a: DrivingArgs) -> anyhow::Result<ExitCode> {
    use rudder_sim::driving::{run_campaign, run_campaign_with, Mode, PlannerKind};
    let diffusion = a.planner == "diffusion";
    let planner = PlannerKind::parse(&a.planner);
    if planner.is_none() && !diffusion && a.write_db.is_none() {
        anyhow::bail!(
            "--planner {}: expected log-replay, constant-velocity, idm or diffusion",
            a.planner
        );
    }
    if !diffusion && a.sampling.checkpoint.is_some() {
        anyhow::bail!("--checkpoint is for --planner diffusion");
    }
    let mode = Mode::parse(&a.mode)
        .ok_or_else(|| anyhow::anyhow!("--mode {}: expected nonreactive or reactive", a.mode))?;
    if let Some(dir) = &a.write_db {
        let written =
            rudder_sim::driving::campaign::write_generated_logs(dir, a.scenarios, a.seed)?;
        println!(
            "wrote {} nuPlan-schema logs (seed {}) into {}; score them with --db {}",
            written.len(),
            a.seed,
            dir.display(),
            dir.display()
        );
        return Ok(ExitCode::SUCCESS);
    }
    let mut plans = None;
    let r = match planner {
        Some(p) => run_campaign(p, a.scenarios, mode, a.seed, a.db.as_deref())?,
        None => {
            let model = a.sampling.load()?;
            let opts = a.sampling.options()?;
            let log = std::sync::Arc::new(std::sync::Mutex::new(Default::default()));
            let make = super::planner::factory(model, opts, log.clone());
            let r = run_campaign_with(
                "diffusion",
                &make,
                a.scenarios,
                mode,
                a.seed,
                a.db.as_deref(),
            )?;
            plans = Some(
                log.lock()
                    .map(|l| super::planner::log_summary(&l))
                    .unwrap_or_default(),
            );
            r
        }
    };
    if a.json {
        let mut v = serde_json::to_value(&r)?;
        if let (Some(p), Some(o)) = (plans, v.as_object_mut()) {
            o.insert("plans".into(), p);
            o.insert(
                "sampling".into(),
                serde_json::to_value(a.sampling.options()?)?,
            );
        }
        println!("{v}");
        return Ok(ExitCode::SUCCESS);
    }
    println!("{:55} {:>5} {:>6}", "scenario type", "n", "score");
    for (t, g) in &r.per_type {
        println!("{t:55} {:>5} {:>6.3}", g.count, g.score);
    }
    println!("{:55} {:>5} {:>6.3}", "overall", r.scenarios, r.score);
    println!();
    for (m, v) in &r.metrics {
        println!("  {m:40} {v:.3}");
    }
    println!(
        "simulated {:.0} s in {:.2} s ({:.0}x real time)",
        r.simulated_s, r.wall_s, r.sim_speed
    );
    if let Some(p) = plans {
        println!("plans: {p}");
    }
    Ok(ExitCode::SUCCESS)
}

/// The driving planner's demonstrations: for every scenario and every `stride` steps, the scene
/// as the planner would see it with the ego on its logged pose, and the logged future.
fn driving_demos(a: DrivingDemosArgs) -> anyhow::Result<ExitCode> {
    use rudder_policy::driving::augment::{perturb, Perturbation};
    use rudder_policy::driving::{DrivingDemoWriter, DrivingSample, SceneConfig};
    use rudder_sim::driving::scenario::{Scenario, HISTORY_STEPS};

    let cfg = SceneConfig::default();
    let (scenarios, source): (Vec<Scenario>, String) = match &a.db {
        Some(p) => {
            let mut v = rudder_sim::driving::campaign::load_logs(p)?;
            if a.scenarios > 0 {
                v.truncate(a.scenarios);
            }
            (v, format!("log {}", p.display()))
        }
        None => (
            (0..a.scenarios)
                .map(|i| rudder_sim::driving::generator::generate(a.seed, i))
                .collect(),
            format!("generated, seed {}", a.seed),
        ),
    };
    if scenarios.is_empty() {
        anyhow::bail!("no scenarios to write (--scenarios 0 without --db)");
    }
    if !(0.0..=1.0).contains(&a.perturb) {
        anyhow::bail!("--perturb {}: expected a fraction in 0..=1", a.perturb);
    }
    let source = format!("{source}, {:.0} % perturbed", a.perturb * 100.0);
    let mut rng = rudder_tune::train::Rng::new(a.seed ^ 0xA76_3E27);
    let mut w = DrivingDemoWriter::create(&a.out, cfg, &source)?;
    let bar = super::progress::bar(scenarios.len() as u64, false);
    for s in &scenarios {
        for k in (0..s.num_steps().saturating_sub(1)).step_by(a.stride as usize) {
            let logged = s.logged_ego(k);
            let future = &s.expert[HISTORY_STEPS + k + 1..];
            let (ego, future) = if rng.next_f64() < a.perturb {
                perturb(&logged, future, &Perturbation::default(), &mut rng)
            } else {
                (logged, future.to_vec())
            };
            // Frames since the scenario's start only, as a planner in the simulator sees
            // them (it is handed no log history), so training and closed loop agree.
            w.push(DrivingSample::from_log(
                &cfg,
                &ego,
                &s.frames_up_to(k, cfg.history),
                s.lights_at(k),
                s.map.as_ref(),
                &s.route,
                &future,
                &s.scenario_type,
            ))?;
        }
        bar.inc(1);
    }
    bar.finish_and_clear();
    let meta = w.finish()?;
    println!(
        "{} samples from {} scenarios ({} types) -> {}",
        meta.samples,
        scenarios.len(),
        meta.scenario_types.len(),
        a.out.display()
    );
    Ok(ExitCode::SUCCESS)
}
