//! `rudder steer sweep`: how a steering cluster changes a running VLA's motion, measured.
//!
//! For the cluster and a random control of the same size and layers (from the dictionary's
//! `[controls]`), at every alpha, the VLA policy runs the same tabletop episodes through
//! the loop (lockstep, as `rudder eval --lockstep`) with the cluster's neurons set to alpha in
//! the prefix language model (REFERENCE §1, Eq. 2), next to one unsteered run of the same
//! episodes. Per condition: mean TCP speed, mean TCP velocity per axis (net displacement over
//! time) and success rate, each with a 95 % interval (normal approximation for means, Wilson
//! for rates), and the speed change against unsteered. Writes JSON, a PNG of speed change vs
//! alpha, and (with --record / --connect) the same curves to Rerun.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{bail, Context};
use clap::Args;
use rudder_robot::stats::{wilson95, MeanCi};
use rudder_steering::{Dictionary, SteeringHandle};
use serde::Serialize;

use super::eval::{evaluate_loaded, EvalOptions};
use super::RecordingFlags;
use crate::viz::plot::{LinePlot, Series};
use crate::viz::{Sink, VizOptions};
use crate::vla::{LoadedVla, DEFAULT_REPLAN_STEPS};
use rudder_sim::tabletop::{EpisodeOutcome, Instructions, Suite};

#[derive(Debug, Args)]
pub struct SweepArgs {
    /// VLA checkpoint (config.json, model.safetensors, tokenizer.json...) or a run folder.
    #[arg(long)]
    pub policy: PathBuf,
    /// Steering dictionary (`rudder steer clusters --model CKPT --out dict.toml`).
    #[arg(long)]
    pub dict: PathBuf,
    /// The cluster to sweep (a name under [clusters]).
    #[arg(long)]
    pub cluster: String,
    /// Random control cluster [default: random_<cluster> from the dictionary's [controls]];
    /// `none` skips it.
    #[arg(long)]
    pub control: Option<String>,
    /// Alphas, comma separated.
    #[arg(long, default_value = "0,2,4,8,16", value_delimiter = ',')]
    pub alphas: Vec<f32>,
    /// Tabletop suite.
    #[arg(long, default_value = "spatial")]
    pub suite: String,
    /// Episodes per task and condition.
    #[arg(long, default_value_t = 2)]
    pub episodes: usize,
    /// Task indices (comma separated) [default: all].
    #[arg(long, value_delimiter = ',')]
    pub tasks: Vec<usize>,
    /// First episode index [default: the first init state not trained on].
    #[arg(long)]
    pub first_episode: Option<usize>,
    /// Cap on simulator steps per episode.
    #[arg(long)]
    pub max_steps: Option<usize>,
    /// Chunk points the arm follows before the policy is asked again.
    #[arg(long, default_value_t = DEFAULT_REPLAN_STEPS)]
    pub replan_steps: usize,
    /// Manner phrase for every episode's instruction in every condition ("" = the plain
    /// instruction) [default: each episode's own, cycling through the task's manners].
    #[arg(long)]
    pub manner: Option<String>,
    /// Also run the unsteered policy with each of these manner phrases (comma separated, e.g.
    /// `slowly,quickly`): what the same words do when they are in the instruction.
    #[arg(long, value_delimiter = ',')]
    pub reference_manners: Vec<String>,
    /// Measure speed and velocity over each episode's first STEPS simulator steps (the approach:
    /// a failing episode's later wandering swamps the effect); success still counts whole
    /// episodes [default: whole episodes].
    #[arg(long, value_name = "STEPS")]
    pub speed_window: Option<usize>,
    /// Write the report here as JSON.
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Write the speed-change plot here.
    #[arg(long, default_value = "steer-sweep.png")]
    pub plot: PathBuf,
    /// Print the report as JSON instead of a table.
    #[arg(long)]
    pub json: bool,
}

fn mean_ci(v: &[f64]) -> MeanCi {
    MeanCi::of(v)
}

#[derive(Debug, Clone, Serialize)]
pub struct Condition {
    /// `unsteered`, the cluster's name or the control's.
    pub cluster: String,
    pub alpha: Option<f32>,
    pub episodes: usize,
    pub success_rate: f64,
    pub success_ci95: [f64; 2],
    /// m/s.
    pub mean_speed: MeanCi,
    /// m/s per base axis x, y, z.
    pub mean_velocity: [MeanCi; 3],
    /// Mean speed relative to unsteered, minus 1 (0.2 = 20 % faster).
    pub speed_change: f64,
    /// 95 % interval of `speed_change` from the per-episode differences to unsteered (every
    /// condition runs the same episodes with the same noise draws, so they pair up).
    pub speed_change_ci95: [f64; 2],
    /// Per base axis (x, y, z), m/s: the mean velocity minus the unsteered velocity of the same
    /// episode scaled by the speed ratio; positive z = more upward than a mere change of speed.
    pub direction_bias: [MeanCi; 3],
}

/// Sets `c`'s speed change and direction bias against the unsteered runs of the same episodes
/// (paired: d_i = (s_i - u_i) / mean(u), whose mean is mean(s) / mean(u) - 1).
fn relate_to_unsteered(c: &mut Condition, runs: &[EpisodeOutcome], unsteered: &[EpisodeOutcome]) {
    let base = (unsteered.iter().map(|u| u.mean_speed).sum::<f64>()
        / unsteered.len().max(1) as f64)
        .max(1e-12);
    let d: Vec<f64> = runs
        .iter()
        .zip(unsteered)
        .map(|(s, u)| (s.mean_speed - u.mean_speed) / base)
        .collect();
    let m = mean_ci(&d);
    c.speed_change = m.mean;
    c.speed_change_ci95 = m.ci95;
    // A cluster that only slows the arm scales its velocity; what is left after undoing the
    // episode's own speed ratio is a change of direction.
    c.direction_bias = std::array::from_fn(|k| {
        let d: Vec<f64> = runs
            .iter()
            .zip(unsteered)
            .map(|(s, u)| {
                let ratio = if u.mean_speed > 1e-9 {
                    s.mean_speed / u.mean_speed
                } else {
                    1.0
                };
                s.mean_velocity[k] - ratio * u.mean_velocity[k]
            })
            .collect();
        mean_ci(&d)
    });
}

fn condition(cluster: &str, alpha: Option<f32>, runs: &[EpisodeOutcome]) -> Condition {
    let n = runs.len();
    let s = runs.iter().filter(|r| r.success).count();
    let speeds: Vec<f64> = runs.iter().map(|r| r.mean_speed).collect();
    let axis = |i: usize| mean_ci(&runs.iter().map(|r| r.mean_velocity[i]).collect::<Vec<_>>());
    Condition {
        cluster: cluster.into(),
        alpha,
        episodes: n,
        success_rate: s as f64 / n.max(1) as f64,
        success_ci95: wilson95(s, n),
        mean_speed: mean_ci(&speeds),
        mean_velocity: [axis(0), axis(1), axis(2)],
        speed_change: 0.0,
        speed_change_ci95: [0.0, 0.0],
        direction_bias: [MeanCi::ZERO; 3],
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct SweepReport {
    pub policy: PathBuf,
    pub dict: PathBuf,
    pub cluster: String,
    pub cluster_size: usize,
    pub control: Option<String>,
    pub suite: String,
    pub episodes_per_condition: usize,
    /// The manner phrase every episode used (`None`: each episode's own).
    pub manner: Option<String>,
    /// Speeds cover each episode's first this many steps (`None`: whole episodes).
    pub speed_window: Option<usize>,
    pub unsteered: Condition,
    /// The unsteered policy with each `--reference-manners` phrase in its instruction.
    pub references: Vec<Condition>,
    pub conditions: Vec<Condition>,
    /// The cluster's speed change never reverses direction as alpha grows.
    pub monotonic: bool,
    /// The cluster's largest |speed change| among alphas that keep success >= 50 % of
    /// unsteered (None: no alpha does).
    pub best_speed_change: Option<f64>,
    /// The control's largest |speed change| over all alphas.
    pub control_max_change: Option<f64>,
    pub wall_s: f64,
}

fn monotonic(changes: &[f64]) -> bool {
    let up = changes.windows(2).all(|w| w[1] >= w[0]);
    let down = changes.windows(2).all(|w| w[1] <= w[0]);
    up || down
}

pub fn run(a: SweepArgs, rec: &RecordingFlags) -> anyhow::Result<ExitCode> {
    if a.alphas.is_empty() || a.alphas.iter().any(|x| !x.is_finite()) {
        bail!("--alphas: give finite numbers, e.g. 0,2,4,8,16");
    }
    if a.episodes == 0 {
        bail!("--episodes must be > 0");
    }
    let started = std::time::Instant::now();
    let suite = Suite::parse(&a.suite)?;
    // The checkpoint is read once: steering's geometry and every condition use this model.
    let vla = LoadedVla::load(&a.policy)?;
    let dir = vla.dir.clone();
    let geo = vla.geometry();
    let dict = Dictionary::load(&a.dict)?;
    dict.check(&a.dict, geo.num_layers, geo.d_ff)?;
    let size = dict
        .clusters
        .get(&a.cluster)
        .map(Vec::len)
        .with_context(|| {
            format!(
                "{}: no cluster `{}` under [clusters] (it has: {})",
                a.dict.display(),
                a.cluster,
                dict.clusters.keys().cloned().collect::<Vec<_>>().join(", ")
            )
        })?;
    let control = match a.control.as_deref() {
        Some("none") => None,
        Some(c) => Some(c.to_string()),
        None => Some(format!("random_{}", a.cluster)),
    };
    if let Some(c) = &control {
        if dict.get(c).is_none() {
            bail!(
                "{}: no control cluster `{c}` (pass --control NAME, or --control none)",
                a.dict.display()
            );
        }
    }
    // In pi0 the last prefix layer's FFN output reaches nothing (the action expert reads each
    // layer's input keys and values), so neurons there cannot steer.
    let last = geo.num_layers.saturating_sub(1) * geo.d_ff;
    let inert = dict
        .clusters
        .get(&a.cluster)
        .map_or(0, |v| v.iter().filter(|&&f| f >= last).count());
    if inert > 0 && crate::vla::lock_model(&vla).is_flow() {
        eprintln!(
            "warning: {inert} of the {size} neurons of `{}` are in the last prefix layer, which \
             the action expert never reads: they cannot change the actions",
            a.cluster
        );
    }
    let mut names = vec![a.cluster.clone()];
    names.extend(control.clone());
    let handle = SteeringHandle::from_dictionary(&dict, Some(&names), geo)?;
    let base = EvalOptions {
        suite,
        policy: dir.clone(),
        episodes: a.episodes,
        first_episode: a.first_episode,
        seed: None,
        tasks: a.tasks.clone(),
        lockstep: true,
        camera_size: None,
        max_steps: a.max_steps,
        replan_steps: Some(a.replan_steps.max(1)),
        steering: None,
        // The sweep keeps its recorded default: each episode's own manner, in turn.
        instructions: match &a.manner {
            Some(m) => Instructions::Manner(m.clone()),
            None => Instructions::CycleManners,
        },
        speed_window: a.speed_window,
        inpainting: None,
        frames: None,
    };
    let total = (1 + a.reference_manners.len() + names.len() * a.alphas.len()) as u64;
    let bar = (!a.json).then(|| {
        let b = indicatif::ProgressBar::new(total);
        b.set_style(
            indicatif::ProgressStyle::with_template(
                "{bar:30} {pos}/{len} conditions, {elapsed} ({msg})",
            )
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
        );
        b
    });
    // One condition: the cluster `label` at `alpha` (none: unsteered), optionally with another
    // manner phrase in every instruction.
    let run_condition = |label: &str,
                         alpha: Option<f32>,
                         manner: Option<&String>|
     -> anyhow::Result<(Condition, Vec<EpisodeOutcome>)> {
        if let Some(b) = &bar {
            b.set_message(format!(
                "{label} alpha {}",
                alpha.map_or("-".into(), |x| x.to_string())
            ));
        }
        handle.clear();
        let mut o = base.clone();
        if let Some(x) = alpha {
            handle.set(label, Some(x))?;
            o.steering = Some(handle.clone());
        }
        if let Some(m) = manner {
            o.instructions = Instructions::Manner(m.clone());
        }
        let r = evaluate_loaded(&o, &vla, |_| {})?;
        if let Some(b) = &bar {
            b.inc(1);
        }
        Ok((condition(label, alpha, &r.runs), r.runs))
    };
    let (unsteered, base_runs) = run_condition("unsteered", None, None)?;
    let mut references = Vec::new();
    for m in &a.reference_manners {
        let (mut c, runs) = run_condition(&format!("instruction: {m}"), None, Some(m))?;
        relate_to_unsteered(&mut c, &runs, &base_runs);
        references.push(c);
    }
    let mut conditions = Vec::new();
    for name in &names {
        for &alpha in &a.alphas {
            let (mut c, s) = run_condition(name, Some(alpha), None)?;
            relate_to_unsteered(&mut c, &s, &base_runs);
            conditions.push(c);
        }
    }
    if let Some(b) = &bar {
        b.finish_and_clear();
    }
    let of =
        |n: &str| -> Vec<&Condition> { conditions.iter().filter(|c| c.cluster == n).collect() };
    let main = of(&a.cluster);
    let changes: Vec<f64> = main.iter().map(|c| c.speed_change).collect();
    let keep = 0.5 * unsteered.success_rate;
    let best = main
        .iter()
        .filter(|c| c.success_rate >= keep)
        .map(|c| c.speed_change)
        .max_by(|x, y| x.abs().total_cmp(&y.abs()));
    let control_max = control.as_ref().and_then(|c| {
        of(c)
            .iter()
            .map(|x| x.speed_change.abs())
            .max_by(f64::total_cmp)
    });
    let report = SweepReport {
        policy: dir,
        dict: a.dict.clone(),
        cluster: a.cluster.clone(),
        cluster_size: size,
        control: control.clone(),
        suite: suite.name().into(),
        episodes_per_condition: unsteered.episodes,
        manner: a.manner.clone(),
        speed_window: a.speed_window,
        monotonic: monotonic(&changes),
        best_speed_change: best,
        control_max_change: control_max,
        unsteered,
        references,
        conditions,
        wall_s: started.elapsed().as_secs_f64(),
    };
    write_outputs(&a, &report, rec)?;
    Ok(ExitCode::SUCCESS)
}

fn write_outputs(a: &SweepArgs, r: &SweepReport, rec: &RecordingFlags) -> anyhow::Result<()> {
    let text = serde_json::to_string_pretty(r)?;
    if let Some(p) = &a.out {
        rudder_tune::checkpoint::write_atomic(p, text.as_bytes())
            .with_context(|| format!("writing {}", p.display()))?;
    }
    let colors = [[200, 40, 40], [90, 90, 90]];
    let mut series = Vec::new();
    let mut names = vec![r.cluster.clone()];
    names.extend(r.control.clone());
    for (i, n) in names.iter().enumerate() {
        let points = r
            .conditions
            .iter()
            .filter(|c| &c.cluster == n)
            .map(|c| {
                let half = c.speed_change_ci95[1] - c.speed_change;
                (
                    f64::from(c.alpha.unwrap_or(0.0)),
                    100.0 * c.speed_change,
                    100.0 * half,
                )
            })
            .collect();
        series.push(Series {
            label: n.clone(),
            color: colors[i.min(1)],
            points,
        });
    }
    LinePlot {
        title: format!("steering {}: speed change vs alpha", r.cluster),
        x_label: "alpha".into(),
        y_label: "mean tcp speed change (%)".into(),
        series,
    }
    .save_png(&a.plot)?;
    let sink = match (&rec.connect, &rec.record) {
        (Some(url), _) => Some(Sink::Connect(url.clone())),
        (None, Some(p)) => Some(Sink::File(p.clone())),
        (None, None) => None,
    };
    if let Some(sink) = sink {
        let stream = crate::viz::open_stream(&VizOptions {
            sink,
            application_id: "rudder-steer-sweep".into(),
            recording_id: None,
            wall_time: false,
            blueprint: false,
        })?;
        for c in &r.conditions {
            let alpha = f64::from(c.alpha.unwrap_or(0.0));
            stream.set_time_sequence("alpha_x100", (alpha * 100.0).round() as i64);
            let path = format!("steering/{}", c.cluster);
            stream.log(
                format!("{path}/speed_change_pct"),
                &rerun::Scalars::single(100.0 * c.speed_change),
            )?;
            stream.log(
                format!("{path}/success_rate"),
                &rerun::Scalars::single(c.success_rate),
            )?;
            for (k, axis) in ["x", "y", "z"].iter().enumerate() {
                stream.log(
                    format!("{path}/velocity_{axis}"),
                    &rerun::Scalars::single(c.mean_velocity[k].mean),
                )?;
                stream.log(
                    format!("{path}/direction_bias_{axis}"),
                    &rerun::Scalars::single(c.direction_bias[k].mean),
                )?;
            }
        }
        stream.flush_blocking()?;
    }
    if a.json {
        println!("{text}");
        return Ok(());
    }
    println!(
        "steering sweep: {} ({} neurons) vs {} on {} episodes per condition ({:.0} s)",
        r.cluster,
        r.cluster_size,
        r.control.as_deref().unwrap_or("no control"),
        r.episodes_per_condition,
        r.wall_s
    );
    let row = |c: &Condition| {
        println!(
            "{:<22} {:>6} {:>6.0}% [{:>3.0}, {:>3.0}]  {:.4} m/s [{:.4}, {:.4}]  {:>+6.1}% [{:>+6.1}, {:>+6.1}]  v = ({:+.4}, {:+.4}, {:+.4})  bias = ({:+.4}, {:+.4}, {:+.4})",
            c.cluster,
            c.alpha.map_or("-".into(), |x| x.to_string()),
            100.0 * c.success_rate,
            100.0 * c.success_ci95[0],
            100.0 * c.success_ci95[1],
            c.mean_speed.mean,
            c.mean_speed.ci95[0],
            c.mean_speed.ci95[1],
            100.0 * c.speed_change,
            100.0 * c.speed_change_ci95[0],
            100.0 * c.speed_change_ci95[1],
            c.mean_velocity[0].mean,
            c.mean_velocity[1].mean,
            c.mean_velocity[2].mean,
            c.direction_bias[0].mean,
            c.direction_bias[1].mean,
            c.direction_bias[2].mean,
        );
    };
    println!("cluster                 alpha  success          mean speed                   change (paired 95 %)     mean velocity (m/s)                 direction bias beyond the speed change (m/s)");
    row(&r.unsteered);
    for c in r.references.iter().chain(&r.conditions) {
        row(c);
    }
    println!(
        "monotonic in alpha: {}; best speed change with success >= 50% of unsteered: {}; \
         control's largest |change|: {}",
        r.monotonic,
        r.best_speed_change
            .map_or("none".into(), |x| format!("{:+.1}%", 100.0 * x)),
        r.control_max_change
            .map_or("-".into(), |x| format!("{:.1}%", 100.0 * x)),
    );
    println!("plot: {}", a.plot.display());
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use rudder_policy::dataset::DemoDataset;
    use rudder_policy::train::{ModelSpec, TrainConfig, VlaTrainer};
    use rudder_sim::tabletop::CameraConfig;
    use rudder_steering::{build_dictionary, default_concepts, project_model, SteerModel};
    use rudder_tune::candle_core::Device;

    /// A tiny trained VLA, its dictionary (concept clusters through the BPE vocabulary, plus
    /// random controls) and a short sweep: JSON fields, the PNG, the Rerun file, and the
    /// alpha-0 / unsteered conditions on the same episodes.
    #[test]
    fn sweep_runs_on_a_trained_vla_with_its_dictionary() {
        let data_dir = tempfile::tempdir().unwrap();
        let cams = CameraConfig {
            width: 32,
            height: 32,
        };
        rudder_sim::tabletop::write_demos(Suite::Spatial, 1, data_dir.path(), 0, cams).unwrap();
        let data = DemoDataset::load(data_dir.path(), true).unwrap();
        let cfg = TrainConfig {
            model: ModelSpec::tiny(),
            steps: 2,
            batch_size: 4,
            ..TrainConfig::default()
        };
        let mut tr = VlaTrainer::new(cfg, &data).unwrap();
        tr.step(&data).unwrap();
        let out = tempfile::tempdir().unwrap();
        let ckpt = tr.save(out.path(), 1, &data).unwrap();
        let m = SteerModel::open(&ckpt, &Device::Cpu).unwrap();
        let p = project_model(&m, 0..2, 10).unwrap();
        let (dict, _) = build_dictionary(&p, &m.vocab, &default_concepts(), &[4], 0..2, 0).unwrap();
        let dict_path = out.path().join("dict.toml");
        dict.save(&dict_path, &|_| None).unwrap();
        let cluster = dict.clusters.keys().next().unwrap().clone();
        let a = SweepArgs {
            policy: ckpt,
            dict: dict_path,
            cluster: cluster.clone(),
            control: None,
            alphas: vec![0.0, 8.0],
            suite: "spatial".into(),
            episodes: 1,
            tasks: vec![2],
            first_episode: None,
            max_steps: Some(6),
            replan_steps: DEFAULT_REPLAN_STEPS,
            manner: Some(String::new()),
            reference_manners: vec!["quickly".into()],
            speed_window: Some(4),
            out: Some(out.path().join("sweep.json")),
            plot: out.path().join("sweep.png"),
            json: true,
        };
        let rec = RecordingFlags {
            record: Some(out.path().join("sweep.rrd")),
            connect: None,
            no_viz: false,
        };
        run(a, &rec).unwrap();
        let v: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(out.path().join("sweep.json")).unwrap())
                .unwrap();
        let conds = v["conditions"].as_array().unwrap();
        assert_eq!(conds.len(), 4, "cluster and control at 2 alphas");
        assert_eq!(v["speed_window"], 4);
        assert_eq!(v["manner"], "");
        let refs = v["references"].as_array().unwrap();
        assert_eq!(refs.len(), 1);
        assert_eq!(refs[0]["cluster"], "instruction: quickly");
        assert_eq!(refs[0]["episodes"], 1);
        assert_eq!(v["cluster_size"], 4);
        assert_eq!(v["control"], format!("random_{cluster}"));
        for c in conds.iter().chain(std::iter::once(&v["unsteered"])) {
            assert_eq!(c["episodes"], 1);
            let ci = c["speed_change_ci95"].as_array().unwrap();
            assert_eq!(ci.len(), 2);
            let s = c["mean_speed"]["mean"].as_f64().unwrap();
            assert!(s.is_finite() && s >= 0.0, "{c}");
            assert_eq!(c["mean_velocity"].as_array().unwrap().len(), 3);
        }
        assert!(
            std::fs::metadata(out.path().join("sweep.png"))
                .unwrap()
                .len()
                > 1000
        );
        assert!(
            std::fs::metadata(out.path().join("sweep.rrd"))
                .unwrap()
                .len()
                > 100
        );
    }

    fn outcome(speed: f64, velocity: [f64; 3]) -> EpisodeOutcome {
        EpisodeOutcome {
            task_index: 0,
            episode: 0,
            instruction: String::new(),
            success: false,
            steps: 10,
            mean_speed: speed,
            mean_velocity: velocity,
        }
    }

    #[test]
    fn paired_speed_change_has_the_ratio_of_means_and_a_paired_interval() {
        let un: Vec<_> = [0.10, 0.20, 0.30]
            .iter()
            .map(|&s| outcome(s, [0.0, 0.0, -s]))
            .collect();
        let steered: Vec<_> = [0.12, 0.22, 0.32]
            .iter()
            .map(|&s| outcome(s, [0.0, 0.0, -s]))
            .collect();
        let mut c = condition("x", Some(1.0), &[]);
        relate_to_unsteered(&mut c, &steered, &un);
        // mean 0.22 / 0.20 - 1 = +10 %, and every episode moved by exactly +0.02: no spread.
        assert!((c.speed_change - 0.1).abs() < 1e-12);
        assert!((c.speed_change_ci95[0] - 0.1).abs() < 1e-9);
        assert!((c.speed_change_ci95[1] - 0.1).abs() < 1e-9);
        // Faster along the same direction: no direction bias.
        assert!(c.direction_bias.iter().all(|b| b.mean.abs() < 1e-12));
        let noisy: Vec<_> = [0.14, 0.18, 0.34]
            .iter()
            .map(|&s| outcome(s, [0.0, 0.0, -s]))
            .collect();
        relate_to_unsteered(&mut c, &noisy, &un);
        assert!((c.speed_change - 0.1).abs() < 1e-12);
        assert!(c.speed_change_ci95[0] < 0.1 && c.speed_change_ci95[1] > 0.1);
    }

    #[test]
    fn slowing_down_is_not_a_direction_but_turning_upward_is() {
        let un = vec![
            outcome(0.2, [0.0, 0.0, -0.2]),
            outcome(0.1, [0.0, 0.1, 0.0]),
        ];
        // Half the speed on the same headings.
        let slower = vec![
            outcome(0.1, [0.0, 0.0, -0.1]),
            outcome(0.05, [0.0, 0.05, 0.0]),
        ];
        let mut c = condition("x", Some(1.0), &[]);
        relate_to_unsteered(&mut c, &slower, &un);
        assert!(c.direction_bias.iter().all(|b| b.mean.abs() < 1e-12));
        // Same speeds, heading up instead.
        let up = vec![outcome(0.2, [0.0, 0.0, 0.2]), outcome(0.1, [0.0, 0.0, 0.1])];
        relate_to_unsteered(&mut c, &up, &un);
        assert!((c.direction_bias[2].mean - 0.25).abs() < 1e-12);
        assert!((c.direction_bias[1].mean + 0.05).abs() < 1e-12);
    }

    #[test]
    fn mean_interval_and_monotonicity() {
        let m = mean_ci(&[1.0, 2.0, 3.0, 4.0]);
        assert!((m.mean - 2.5).abs() < 1e-12);
        // sd = 1.29099, half = 1.96 * sd / 2
        assert!((m.ci95[1] - 2.5 - 1.96 * 1.290_994_4 / 2.0).abs() < 1e-6);
        assert!(monotonic(&[0.0, 0.1, 0.1, 0.3]));
        assert!(monotonic(&[0.0, -0.1, -0.2]));
        assert!(!monotonic(&[0.0, 0.2, 0.1]));
    }
}
