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
use rudder_robot::stats::wilson95;
use rudder_steering::sweep::{monotonic, Condition, EpisodeMotion};
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

/// What the sweep's statistics read of an episode.
fn motion(runs: &[EpisodeOutcome]) -> Vec<EpisodeMotion> {
    runs.iter()
        .map(|r| EpisodeMotion {
            success: r.success,
            mean_speed: r.mean_speed,
            mean_velocity: r.mean_velocity,
        })
        .collect()
}

/// A condition's statistics over its episodes, with the Wilson interval of its success rate.
fn condition(cluster: &str, alpha: Option<f32>, runs: &[EpisodeMotion]) -> Condition {
    let s = runs.iter().filter(|r| r.success).count();
    Condition::new(cluster, alpha, runs, wilson95(s, runs.len()))
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
        steps_past_success: 0,
        rl: None,
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
     -> anyhow::Result<(Condition, Vec<EpisodeMotion>)> {
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
        let runs = motion(&r.runs);
        Ok((condition(label, alpha, &runs), runs))
    };
    let (unsteered, base_runs) = run_condition("unsteered", None, None)?;
    let mut references = Vec::new();
    for m in &a.reference_manners {
        let (mut c, runs) = run_condition(&format!("instruction: {m}"), None, Some(m))?;
        c.relate_to_unsteered(&runs, &base_runs);
        references.push(c);
    }
    let mut conditions = Vec::new();
    for name in &names {
        for &alpha in &a.alphas {
            let (mut c, s) = run_condition(name, Some(alpha), None)?;
            c.relate_to_unsteered(&s, &base_runs);
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
}
