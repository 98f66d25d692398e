//! `rudder train rl`: reset-free RL fine-tuning of a flow VLA with the VLM success classifier
//! (RoboFuME): wiring only. The agent is `rudder_policy::rl`, the losses and buffers tune's
//! `rl`, the run `rudder_sim::tabletop::reset_free`.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::{bail, Context};
use clap::Args;
use rudder_policy::rl::{add_demos, LatentAgent, LatentRlConfig, OfflineOptions};
use rudder_policy::VlaPolicy;
use rudder_reward::SuccessClassifier;
use rudder_sim::tabletop::reset_free::{
    task_pairs, AttemptRecord, ResetFreeObserver, ResetFreeOptions, ResetFreeReport, ResetFreeRun,
};
use rudder_sim::tabletop::{CameraConfig, TabletopSim};

#[derive(Debug, Args)]
#[command(after_help = "Example:\n  \
rudder train rl --policy runs/goal --reward runs/reward --tasks 1,4 --steps 20000 --out runs/rl\n\n\
The VLA stays frozen: an actor picks the noise its flow head decodes (latent-noise RL) and a\n\
Cal-QL critic scores it. Forward and backward (reset) tasks alternate in one scene that is never\n\
reset; the classifier's verdict ends an attempt. OUT/checkpoint-N holds the agent, its replay\n\
buffers and report.json; a killed run resumes from OUT/latest when started again (its scene\n\
starts again from the first init state, counted in the report's `restarts`).")]
pub struct RlArgs {
    /// The flow VLA to fine-tune (`rudder train vla` run or checkpoint folder).
    #[arg(long)]
    pub policy: PathBuf,
    /// The success classifier (`rudder train reward` run or checkpoint folder).
    #[arg(long)]
    pub reward: PathBuf,
    /// Suite (reset-free pairs exist for `goal`).
    #[arg(long, default_value = "goal")]
    pub suite: String,
    /// Forward tasks by index or id, comma-separated (default: all ten).
    #[arg(long, value_delimiter = ',')]
    pub tasks: Vec<String>,
    /// Online simulator steps.
    #[arg(long, default_value_t = 50_000)]
    pub steps: u64,
    #[arg(long)]
    pub out: PathBuf,
    /// Demonstrations for offline pre-training (`rudder demos --with-backward`).
    #[arg(long)]
    pub demos: Option<PathBuf>,
    /// Demonstrations per task used offline.
    #[arg(long, default_value_t = 10)]
    pub demos_per_task: usize,
    /// Offline Cal-QL updates before the online phase.
    #[arg(long, default_value_t = 2000)]
    pub offline_updates: u64,
    /// Step budget of one attempt (default: the task's max_steps).
    #[arg(long)]
    pub attempt_steps: Option<usize>,
    #[arg(long, default_value_t = 2)]
    pub judge_every: usize,
    /// Consecutive "yes" verdicts that end an attempt.
    #[arg(long, default_value_t = 3)]
    pub debounce: usize,
    /// Replan every this many steps (default: the whole chunk).
    #[arg(long)]
    pub replan_steps: Option<usize>,
    /// Gradient updates per chunk.
    #[arg(long, default_value_t = 1)]
    pub utd: usize,
    #[arg(long, default_value_t = 64)]
    pub batch_size: usize,
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Checkpoint every this many online steps.
    #[arg(long, default_value_t = 2000)]
    pub checkpoint_every: u64,
    /// Record curves (reward probability, switches, interventions, Q) to this .rrd file.
    #[arg(long)]
    pub rerun: Option<PathBuf>,
    #[arg(long)]
    pub quiet: bool,
}

/// Task list: indices or ids of the goal suite.
fn task_indices(names: &[String]) -> anyhow::Result<Vec<usize>> {
    let all = rudder_sim::tabletop::load_suite(rudder_sim::tabletop::Suite::Goal)?;
    names
        .iter()
        .map(|n| {
            if let Ok(i) = n.parse::<usize>() {
                if i < all.len() {
                    return Ok(i);
                }
            }
            all.iter()
                .position(|t| t.id == *n || t.id == format!("goal_{n}"))
                .with_context(|| {
                    format!(
                        "--tasks: unknown task `{n}` (goal suite: {} or 0..{})",
                        all.iter()
                            .map(|t| t.id.as_str())
                            .collect::<Vec<_>>()
                            .join(", "),
                        all.len()
                    )
                })
        })
        .collect()
}

struct Curves {
    rec: Option<rerun::RecordingStream>,
    bar: indicatif::ProgressBar,
    forward: (usize, usize),
}

impl ResetFreeObserver for Curves {
    fn judged(&mut self, step: u64, p: f64, backward: bool) {
        if let Some(rec) = &self.rec {
            rec.set_time_sequence("step", step as i64);
            let path = if backward {
                "reward/p_backward"
            } else {
                "reward/p_forward"
            };
            let _ = rec.log(path, &rerun::Scalars::single(p));
        }
    }

    fn attempt(&mut self, r: &AttemptRecord) {
        if !r.backward {
            self.forward.1 += 1;
            self.forward.0 += (r.end == rudder_robot::AttemptEnd::Success) as usize;
        }
        self.bar.set_position(r.start_step + r.steps as u64);
        self.bar.set_message(format!(
            "attempt {} {} {}: {} | forward {}/{}",
            r.attempt,
            if r.backward { "back" } else { "fwd" },
            r.task,
            r.end.name(),
            self.forward.0,
            self.forward.1
        ));
        if let Some(rec) = &self.rec {
            rec.set_time_sequence("step", (r.start_step + r.steps as u64) as i64);
            let ok = (r.end == rudder_robot::AttemptEnd::Success) as u8 as f64;
            let _ = rec.log("attempts/switch_on_success", &rerun::Scalars::single(ok));
            let _ = rec.log(
                "attempts/intervention",
                &rerun::Scalars::single(
                    (r.end == rudder_robot::AttemptEnd::Intervention) as u8 as f64,
                ),
            );
            let rate = self.forward.0 as f64 / self.forward.1.max(1) as f64;
            let _ = rec.log(
                "attempts/forward_success_rate",
                &rerun::Scalars::single(rate),
            );
        }
    }
}

/// The tasks the classifier saw in training, from its data set's `samples.jsonl` (None when
/// the data set is not where `training.json` says).
fn trained_tasks(reward_dir: &Path) -> Option<std::collections::BTreeSet<String>> {
    let info: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(reward_dir.join("training.json")).ok()?)
            .ok()?;
    let data = PathBuf::from(info.get("data")?.as_str()?);
    let text = std::fs::read_to_string(data.join("samples.jsonl")).ok()?;
    Some(
        text.lines()
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
            .filter(|v| v.get("split").and_then(|s| s.as_str()) == Some("train"))
            .filter_map(|v| v.get("task")?.as_str().map(str::to_string))
            .collect(),
    )
}

/// Every forward and backward task of the run must be one the classifier was trained on: its
/// verdicts on an unseen task are near chance (reward/README.md), and they are the reward.
fn check_classifier_tasks(
    reward_dir: &Path,
    pairs: &[(
        usize,
        rudder_sim::tabletop::Task,
        rudder_sim::tabletop::Task,
    )],
) -> anyhow::Result<()> {
    let Some(known) = trained_tasks(reward_dir) else {
        tracing::warn!(
            "cannot list the tasks {} was trained on (its data set is not where training.json              says); its verdicts on tasks it never saw are near chance",
            reward_dir.display()
        );
        return Ok(());
    };
    for (_, f, b) in pairs {
        for t in [f, b] {
            if !known.contains(&t.id) {
                bail!(
                    "--reward {}: the classifier was not trained on task `{}` (it knows {} tasks;                      make its data with `rudder reward data --suite goal --with-backward`)",
                    reward_dir.display(),
                    t.id,
                    known.len()
                );
            }
        }
    }
    Ok(())
}

fn save(out: &Path, agent: &LatentAgent, report: &ResetFreeReport) -> anyhow::Result<()> {
    let name = format!("checkpoint-{}", report.steps);
    rudder_tune::train::checkpoint::save_dir_atomic(out, &name, |dir| {
        agent
            .save(dir)
            .map_err(|e| rudder_tune::TuneError::input("agent", e.to_string()))?;
        let json = serde_json::to_vec_pretty(report)
            .map_err(|e| rudder_tune::TuneError::input("report", e.to_string()))?;
        rudder_tune::checkpoint::write_atomic(&dir.join("report.json"), &json)
    })?;
    rudder_tune::train::checkpoint::prune(out, 2)?;
    Ok(())
}

pub fn train(a: RlArgs) -> anyhow::Result<ExitCode> {
    if a.suite != "goal" {
        bail!(
            "--suite {}: reset-free runs need backward tasks, which exist for the goal suite only",
            a.suite
        );
    }
    let tasks = task_indices(&a.tasks)?;
    task_pairs(&tasks)?;
    let policy_dir = rudder_tune::train::checkpoint::resolve(&a.policy)?;
    let vla = VlaPolicy::load(&policy_dir)
        .with_context(|| format!("loading the policy {}", policy_dir.display()))?;
    if !vla.is_flow() {
        bail!(
            "--policy {}: a tokens-head VLA; latent-noise RL needs the flow head (`rudder train vla --variant flow`)",
            policy_dir.display()
        );
    }
    if !policy_dir.join("normalization.json").exists() {
        bail!(
            "--policy {}: no normalization.json; the actor's noise must decode to actions in the \
             demos' units (retrain with `rudder train vla`)",
            policy_dir.display()
        );
    }
    let size = vla.image_size();
    let reward_dir = rudder_tune::train::checkpoint::resolve(&a.reward)?;
    let mut judge = SuccessClassifier::load(&reward_dir)
        .with_context(|| format!("loading the classifier {}", reward_dir.display()))?;
    let rc = judge.config().clone();
    if rc.image_size != size {
        bail!(
            "--reward {}: the classifier reads {}x{} images, the policy's cameras give {size}x{size}; \
             train both on the same camera size",
            reward_dir.display(),
            rc.image_size,
            rc.image_size
        );
    }
    if let Some(c) = rc.cameras.iter().find(|c| !vla.cameras().contains(c)) {
        bail!(
            "--reward {}: the classifier reads camera `{c}`, which the run does not render ({:?})",
            reward_dir.display(),
            vla.cameras()
        );
    }
    check_classifier_tasks(&reward_dir, &task_pairs(&tasks)?)?;
    if !rc.calibrated {
        tracing::warn!("the classifier is not calibrated: its threshold is 0.5 on raw margins");
    }
    let replan = a.replan_steps.unwrap_or(vla.action_horizon()).max(1);
    let vla = Arc::new(vla);
    let opts = ResetFreeOptions {
        tasks: tasks.clone(),
        seed: a.seed,
        first_init: 0,
        steps: a.steps,
        attempt_steps: a.attempt_steps,
        judge_every: a.judge_every,
        debounce: a.debounce,
        replan_steps: replan,
        cameras: CameraConfig {
            width: size as u32,
            height: size as u32,
        },
    };

    let resume = rudder_tune::train::checkpoint::latest(&a.out)?;
    let (agent, done) = match &resume {
        Some(dir) => {
            let agent = LatentAgent::load(Arc::clone(&vla), dir)
                .with_context(|| format!("resuming from {}", dir.display()))?;
            let path = dir.join("report.json");
            let text = std::fs::read_to_string(&path)
                .with_context(|| format!("reading {}", path.display()))?;
            let report: ResetFreeReport = serde_json::from_str(&text)
                .with_context(|| format!("parsing {}", path.display()))?;
            println!(
                "resuming {} at step {} ({} attempts)",
                dir.display(),
                report.steps,
                report.attempts.len()
            );
            (agent, Some(report))
        }
        None => {
            let mut cfg = LatentRlConfig {
                seed: a.seed,
                ..LatentRlConfig::default()
            };
            cfg.cal_ql.batch_size = a.batch_size.max(1);
            cfg.cal_ql.utd_ratio = a.utd.max(1);
            let mut agent = LatentAgent::new(Arc::clone(&vla), cfg)?;
            if let Some(d) = &a.demos {
                let data = rudder_policy::dataset::DemoDataset::load(d, true)
                    .with_context(|| format!("--demos {}", d.display()))?;
                let bar = crate::cli::progress::bar(0, a.quiet);
                let summary = add_demos(
                    &mut agent,
                    &data,
                    &mut judge,
                    &OfflineOptions {
                        replan_steps: replan,
                        episodes_per_task: a.demos_per_task,
                        debounce: a.debounce,
                    },
                    |k, n| {
                        bar.set_length(n as u64);
                        bar.set_position(k as u64);
                    },
                )?;
                bar.finish_and_clear();
                println!(
                    "offline: {} demos, {} transitions, {} judged successful, mean |noise| {:.3}",
                    summary.episodes,
                    summary.transitions,
                    summary.judged_successes,
                    summary.mean_abs_noise
                );
                let bar = crate::cli::progress::bar(a.offline_updates, a.quiet);
                for i in 0..a.offline_updates {
                    let s = agent.update(true)?;
                    bar.set_position(i + 1);
                    bar.set_message(format!(
                        "critic {:.4} actor {:.4} Q {:.3}",
                        s.critic_loss, s.actor_loss, s.q_data
                    ));
                }
                bar.finish_and_clear();
            }
            (agent, None)
        }
    };
    let mut agent = agent.with_layout(TabletopSim::LAYOUT);
    let mut run = ResetFreeRun::new(&opts, done)?;
    let rec = match &a.rerun {
        Some(p) => Some(
            rerun::RecordingStreamBuilder::new("rudder_train_rl")
                .save(p)
                .with_context(|| format!("--rerun {}", p.display()))?,
        ),
        None => None,
    };
    let bar = crate::cli::progress::bar(a.steps, a.quiet);
    bar.set_position(run.report().steps);
    let mut curves = Curves {
        rec,
        bar,
        forward: (0, 0),
    };
    while !run.finished() {
        run.advance(
            a.checkpoint_every.max(1),
            &mut agent,
            &mut judge,
            &mut curves,
        )?;
        if let Some(rec) = &curves.rec {
            rec.set_time_sequence("step", run.report().steps as i64);
            let s = agent.last_stats();
            let _ = rec.log(
                "learner/critic_loss",
                &rerun::Scalars::single(s.critic_loss as f64),
            );
            let _ = rec.log("learner/q_data", &rerun::Scalars::single(s.q_data as f64));
            for (decision, q) in agent.take_q_log() {
                rec.set_time_sequence("decision", decision as i64);
                let _ = rec.log("learner/q_chosen", &rerun::Scalars::single(q as f64));
            }
            let _ = rec.log(
                "attempts/interventions",
                &rerun::Scalars::single(run.report().interventions as f64),
            );
        }
        save(&a.out, &agent, run.report())?;
    }
    curves.bar.finish_and_clear();
    let r = run.report();
    let (fj, fp, fa) = r.rates(false);
    let (bj, bp, ba) = r.rates(true);
    println!(
        "{} steps, {} attempts: forward {fj}/{fa} by the classifier ({fp} by the predicate), \
         backward {bj}/{ba} ({bp}); interventions {}, manual resets {}, restarts {}; verdict \
         agreement {}/{}; wall {:.0} s (loop {:.0} s, classifier {:.0} s); {} updates",
        r.steps,
        r.attempts.len(),
        r.interventions,
        r.manual_resets,
        r.restarts,
        r.verdict_agreement,
        r.attempts.len(),
        r.wall_s,
        r.loop_s,
        r.judge_s,
        agent.updates
    );
    Ok(ExitCode::SUCCESS)
}
