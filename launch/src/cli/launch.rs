//! `rudder launch FILE`: runs a launch file and records it for the Rerun viewer.

use crate::launchfile::driving::run_driving;
use crate::launchfile::run::{run as run_launch, RunOptions};
use crate::launchfile::{EmbodimentKind, LaunchFile};
use crate::viz::{Sink, VizOptions};
use clap::Args;
use rudder_sim::driving::simulation::Mode;
use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(Debug, Args)]
#[command(after_help = "Examples:\n  \
rudder launch launch/tabletop.toml                      # writes rudder.rrd\n  \
rudder launch launch/tabletop.toml --episodes 3 --record out.rrd\n  \
rudder launch launch/tabletop.toml --connect rerun+http://127.0.0.1:9876/proxy\n  \
rudder launch launch/driving.toml                       # nuPlan-style scenarios, rudder-driving.rrd\n\n\
Open a recording with `rerun rudder.rrd` (rerun-sdk 0.36.3).")]
pub struct LaunchArgs {
    /// The launch file (launch/*.toml).
    #[arg(default_value = "launch/tabletop.toml")]
    pub file: PathBuf,
    /// Episodes to run (consecutive init states from the file's `episode`).
    #[arg(long, default_value_t = 1)]
    pub episodes: usize,
    /// Step the loop's tick logic on one thread with simulated time instead of in real time:
    /// a reproducible recording (sim-time timeline only, no wall-clock values).
    #[arg(long)]
    pub lockstep: bool,
    /// Fixed recording id (with --lockstep, byte-for-byte reproducible content).
    #[arg(long, hide = true)]
    pub recording_id: Option<String>,
    /// Do not send the viewer layout.
    #[arg(long)]
    pub no_blueprint: bool,
    /// No progress bar.
    #[arg(long)]
    pub quiet: bool,
    #[command(flatten)]
    pub recording: super::RecordingFlags,
}

pub fn run(a: LaunchArgs) -> anyhow::Result<ExitCode> {
    let rec = &a.recording;
    let lf = LaunchFile::load(&a.file)?;
    if a.episodes == 0 {
        anyhow::bail!("--episodes must be at least 1");
    }
    let sink = match (&rec.connect, &rec.record) {
        (Some(url), _) => Sink::Connect(url.clone()),
        (None, Some(p)) => Sink::File(p.clone()),
        (None, None) => Sink::File(lf.recording.rrd.clone()),
    };
    let viz = (!rec.no_viz).then(|| VizOptions {
        sink: sink.clone(),
        application_id: "rudder".into(),
        recording_id: a.recording_id.clone(),
        wall_time: !a.lockstep,
        blueprint: !a.no_blueprint,
    });
    let opts = RunOptions {
        viz,
        episodes: a.episodes,
        lockstep: a.lockstep,
        progress: !a.quiet && std::io::stderr().is_terminal(),
    };
    if lf.embodiment.kind == EmbodimentKind::SimDriving {
        return driving(&lf, &opts, &sink);
    }
    #[cfg(feature = "ros2")]
    if lf.embodiment.kind == EmbodimentKind::Ros2Ur5 {
        return ur5(&lf, &opts);
    }
    let report = run_launch(&lf, &opts)?;
    for e in &report.episodes {
        println!(
            "episode {} · {} · \"{}\": {} in {}/{} steps",
            e.episode,
            e.task,
            e.instruction,
            if e.success { "SUCCESS" } else { "failure" },
            e.steps,
            e.max_steps
        );
        println!(
            "  safety: {} interventions ({} clamped, {} held commands), {} contacts refused",
            e.safety_interventions, e.clamped_commands, e.held_commands, e.refused_contacts
        );
        if let Some(m) = &e.metrics {
            println!(
                "  loop @ {} Hz: {} ticks, {} missed, period error p50 {:.0} us / p99 {:.0} us / max {:.0} us, \
                 inference p50 {:.2} ms / max {:.2} ms ({} chunks), {} hold ticks",
                m.rate_hz,
                m.ticks,
                m.missed_ticks,
                m.period_error_us.p50,
                m.period_error_us.p99,
                m.period_error_us.max,
                m.inference_latency_ms.p50,
                m.inference_latency_ms.max,
                m.inferences,
                m.hold_ticks
            );
        } else {
            println!(
                "  lockstep @ {} Hz: {} ticks (simulated time)",
                report.rate_hz, e.ticks
            );
        }
        if opts.viz.is_some() {
            let period_us = 1e6 / report.rate_hz;
            println!(
                "  logging on the control thread: mean {:.2} us, p99 {:.2} us, max {:.1} us per tick \
                 ({:.3}% of the {:.0} us tick)",
                e.logging_us.0,
                e.logging_us.1,
                e.logging_us.2,
                100.0 * e.logging_us.0 / period_us,
                period_us
            );
        }
    }
    println!(
        "{}/{} episodes succeeded in {:.1} s",
        report.successes(),
        report.episodes.len(),
        report.wall_s
    );
    if let Some(w) = &report.reward {
        crate::reward_watch::print_watch(w);
    }
    match (&opts.viz, &sink) {
        (Some(_), Sink::File(p)) => println!(
            "recording: {} ({} ticks logged, {} records dropped)",
            p.display(),
            report.records_logged,
            report.records_dropped
        ),
        (Some(_), Sink::Connect(u)) => println!(
            "streamed to {u} ({} ticks logged, {} records dropped)",
            report.records_logged, report.records_dropped
        ),
        _ => {}
    }
    Ok(ExitCode::SUCCESS)
}

fn driving(lf: &LaunchFile, opts: &RunOptions, sink: &Sink) -> anyhow::Result<ExitCode> {
    let r = run_driving(lf, opts.viz.as_ref(), opts.progress, opts.lockstep)?;
    for s in &r.scenarios {
        let m = &s.metrics;
        println!(
            "{} · {}: score {:.3} (collisions {:.2}, drivable {:.2}, direction {:.2}, making \
             progress {:.2}, progress {:.2}, ttc {:.2}, speed limit {:.2}, comfort {:.2}), {:.1} s",
            s.token,
            s.scenario_type,
            m.score,
            m.no_ego_at_fault_collisions,
            m.drivable_area_compliance,
            m.driving_direction_compliance,
            m.ego_is_making_progress,
            m.ego_progress,
            m.time_to_collision_within_bound,
            m.speed_limit_compliance,
            m.ego_is_comfortable,
            s.simulated_s
        );
    }
    let simulated: f64 = r.scenarios.iter().map(|s| s.simulated_s).sum();
    println!(
        "{} scenarios, planner {}, {}: mean score {:.3} ({:.0} s simulated in {:.1} s)",
        r.scenarios.len(),
        r.planner,
        match r.mode {
            Mode::NonReactive => "CLS-NR",
            Mode::Reactive => "CLS-R",
        },
        r.score,
        simulated,
        r.wall_s
    );
    for (token, rt) in &r.realtime {
        let p = &rt.planning;
        println!(
            "{token}: wall-clock loop at {} Hz, {} ticks, {} missed, {} plans, {} ticks on an \
             older plan; inference p50 {:.1} ms / p99 {:.1} ms / max {:.1} ms; plan age p50 {:.0} \
             ms / p99 {:.0} ms / max {:.0} ms",
            rt.rate_hz,
            p.ticks,
            rt.missed_ticks,
            p.plans,
            p.stale_ticks,
            p.latency_ms_p50,
            p.latency_ms_p99,
            p.latency_ms_max,
            p.plan_age_ms_p50,
            p.plan_age_ms_p99,
            p.plan_age_ms_max
        );
    }
    match (&opts.viz, sink) {
        (Some(_), Sink::File(p)) => println!("recording: {}", p.display()),
        (Some(_), Sink::Connect(u)) => println!("streamed to {u}"),
        _ => {}
    }
    Ok(ExitCode::SUCCESS)
}

#[cfg(feature = "ros2")]
fn ur5(lf: &LaunchFile, opts: &RunOptions) -> anyhow::Result<ExitCode> {
    let r = crate::launchfile::ros2::run_ur5(lf, opts.viz.as_ref(), opts.progress)?;
    let m = &r.metrics;
    println!(
        "UR5 over ROS 2 @ {} Hz: {} ticks in {:.1} s, {} missed, period error p50 {:.0} us / p99 \
         {:.0} us, inference p50 {:.2} ms ({} chunks), {} hold ticks, safety {} interventions",
        m.rate_hz,
        r.ticks,
        r.wall_s,
        m.missed_ticks,
        m.period_error_us.p50,
        m.period_error_us.p99,
        m.inference_latency_ms.p50,
        m.inferences,
        m.hold_ticks,
        m.safety.interventions.total()
    );
    // Why the loop held (and the policy's last error), so a failed run says where to look.
    println!(
        "holds entered: {}; inference errors {}{}; chunks {} received, {} rejected, {} started late; \
         scheduler {}",
        m.holds.summary(),
        m.inference_errors,
        m.last_inference_error
            .as_deref()
            .map(|e| format!(" (last: {e})"))
            .unwrap_or_default(),
        m.chunks_received,
        m.chunks_rejected,
        m.chunks_late,
        m.timing.scheduler
    );
    if r.checkpoint {
        let alphas = r
            .steering_alphas
            .iter()
            .map(|(n, a)| match a {
                Some(a) => format!("{n}={a}"),
                None => format!("{n}=off"),
            })
            .collect::<Vec<_>>()
            .join(", ");
        println!(
            "VLA checkpoint: ran to its limit (a real arm gives no success signal; the driver \
             reports the outcome); steering: {} update(s) from /rudder/steering{}",
            r.steering_updates,
            if alphas.is_empty() {
                String::new()
            } else {
                format!(", final alphas {alphas}")
            }
        );
        return Ok(if m.ticks > 0 {
            ExitCode::SUCCESS
        } else {
            ExitCode::from(1)
        });
    }
    println!(
        "scripted expert: {}",
        if r.expert_done {
            "task done in its scene copy (the driver reports the real outcome)"
        } else {
            "stopped before its task was done"
        }
    );
    Ok(if r.expert_done {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}
