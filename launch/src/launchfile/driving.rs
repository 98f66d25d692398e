//! Runs a `sim.driving` launch file: generated (or nuPlan-DB) scenarios driven by a planner in
//! the driving simulator's closed loop, scored with nuPlan's closed-loop metrics, and recorded
//! for Rerun (see `viz::driving`).

use super::LaunchFile;
use crate::viz::driving::{DrivingRecorder, PlannerTrace, METRIC_EVERY};
use crate::viz::VizOptions;
use anyhow::{bail, Context};
use rudder_policy::driving::planner::PlanLog;
use rudder_policy::driving::{DiffusionPlanner, PlannerModel, SamplerKind, SamplingOptions};
use rudder_robot::driving::{Observation, Planner, PlannerSetup, Trajectory};
use rudder_sim::driving::generator::{generate, SCENARIO_TYPES};
use rudder_sim::driving::map::Map;
use rudder_sim::driving::metrics::{evaluate, ScenarioMetrics};
use rudder_sim::driving::scenario::{Scenario, DT};
use rudder_sim::driving::simulation::{simulate, simulate_realtime, History, Mode, RealtimeReport};
use rudder_sim::driving::{nuplan_db, PlannerKind};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use std::time::Instant;

/// One scenario's outcome.
#[derive(Debug, Clone)]
pub struct ScenarioResult {
    pub token: String,
    pub scenario_type: String,
    pub metrics: ScenarioMetrics,
    pub simulated_s: f64,
    /// Simulated samples (the initial state included).
    pub samples: usize,
}

#[derive(Debug, Clone)]
pub struct DrivingReport {
    pub planner: String,
    /// Per scenario, what the wall-clock loop measured (kind = "diffusion" only).
    pub realtime: Vec<(String, RealtimeReport)>,
    pub mode: Mode,
    pub scenarios: Vec<ScenarioResult>,
    /// Mean score over the scenarios (nuPlan's CLS-NR or CLS-R).
    pub score: f64,
    pub wall_s: f64,
}

/// The per-step figures of a diffusion planner's log, for the recording.
fn planner_trace(
    log: &Mutex<PlanLog>,
    plans: Vec<Trajectory>,
    ages_s: &[f64],
    steps: usize,
) -> PlannerTrace {
    let mut t = PlannerTrace {
        plans,
        latency_ms: vec![None; steps],
        guidance: vec![None; steps],
        plan_age_ms: ages_s.iter().map(|a| a * 1e3).collect(),
    };
    if let Ok(l) = log.lock() {
        for r in &l.records {
            if r.step < steps {
                t.latency_ms[r.step] = Some(r.latency_s * 1e3);
                t.guidance[r.step] = r.guidance.map(|g| (g.before, g.after));
            }
        }
    }
    t
}

/// Where the plans come from.
enum PlannerSource {
    Scripted(PlannerKind),
    Diffusion(Arc<PlannerModel>, SamplingOptions),
}

impl PlannerSource {
    fn name(&self) -> &'static str {
        match self {
            PlannerSource::Scripted(p) => p.name(),
            PlannerSource::Diffusion(..) => "diffusion",
        }
    }
}

/// Keeps every trajectory the planner returned (what the recording draws as the plan).
struct PlanTap {
    inner: Box<dyn Planner<Map>>,
    plans: Vec<Trajectory>,
}

impl Planner<Map> for PlanTap {
    fn name(&self) -> &'static str {
        self.inner.name()
    }
    fn initialize(&mut self, setup: &PlannerSetup<'_, Map>) {
        self.plans.clear();
        self.inner.initialize(setup)
    }
    fn plan(&mut self, obs: &Observation<'_, Map>) -> Trajectory {
        let t = self.inner.plan(obs);
        self.plans.push(t.clone());
        t
    }
}

/// The scenarios a launch file names: `count` of each type (generated from `seed`), or the
/// first `count x types` of a nuPlan-schema DB.
pub fn scenarios(lf: &LaunchFile) -> anyhow::Result<Vec<Scenario>> {
    let Some(s) = &lf.scenarios else {
        bail!("sim.driving needs a [scenarios] section");
    };
    if let Some(db) = &s.db {
        let mut v = nuplan_db::load_scenarios(db, None)
            .with_context(|| format!("loading scenarios from {}", db.display()))?;
        if !s.types.is_empty() {
            v.retain(|sc| s.types.contains(&sc.scenario_type));
        }
        v.truncate(s.count.max(1) * s.types.len().max(1));
        return Ok(v);
    }
    let types: Vec<usize> = if s.types.is_empty() {
        (0..SCENARIO_TYPES.len()).collect()
    } else {
        s.types
            .iter()
            .filter_map(|t| SCENARIO_TYPES.iter().position(|k| k == t))
            .collect()
    };
    let mut out = Vec::with_capacity(types.len() * s.count);
    for k in 0..s.count {
        for &ty in &types {
            // The generator cycles through the types by index.
            out.push(generate(s.seed, ty + k * SCENARIO_TYPES.len()));
        }
    }
    Ok(out)
}

fn truncated(hist: &History, len: usize) -> History {
    History {
        ego: hist.ego[..len.min(hist.ego.len())].to_vec(),
        agents: hist.agents[..len.min(hist.agents.len())].to_vec(),
    }
}

/// Runs what `lf` describes; records to `viz` when given. A diffusion planner runs in the
/// wall-clock loop with asynchronous inference unless `lockstep` (each step waits for its
/// plan: reproducible, for batch scoring).
pub fn run_driving(
    lf: &LaunchFile,
    viz: Option<&VizOptions>,
    progress: bool,
    lockstep: bool,
) -> anyhow::Result<DrivingReport> {
    let Some(sec) = &lf.scenarios else {
        bail!("sim.driving needs a [scenarios] section");
    };
    let mode = match sec.mode.as_str() {
        "closed_loop_nonreactive" => Mode::NonReactive,
        "closed_loop_reactive" => Mode::Reactive,
        other => bail!(
            "scenarios.mode = \"{other}\": `rudder launch` runs the closed-loop modes \
             (closed_loop_nonreactive, closed_loop_reactive); open-loop scoring is not built"
        ),
    };
    let source = match lf.policy.kind {
        super::PolicyKind::Scripted => {
            let name = lf.policy.planner.as_deref().unwrap_or("idm");
            PlannerSource::Scripted(
                PlannerKind::parse(name)
                    .with_context(|| format!("policy.planner: unknown planner `{name}`"))?,
            )
        }
        super::PolicyKind::Checkpoint => bail!(
            "policy kind \"checkpoint\" is the VLA; the driving planner is kind = \"diffusion\" \
             (checkpoint from `rudder train planner`) or kind = \"scripted\""
        ),
        super::PolicyKind::Diffusion => {
            let Some(dir) = &lf.policy.checkpoint else {
                bail!("policy.checkpoint: kind = \"diffusion\" needs `checkpoint = \"DIR\"`");
            };
            let model = PlannerModel::load(dir)
                .with_context(|| format!("policy.checkpoint: {}", dir.display()))?;
            let opts = SamplingOptions {
                sampler: match lf.policy.sampler.as_deref() {
                    None => SamplerKind::DpmSolver,
                    Some(s) => SamplerKind::parse(s)
                        .with_context(|| format!("policy.sampler: unknown sampler `{s}`"))?,
                },
                steps: lf.policy.solver_steps.unwrap_or(10),
                seed: 0,
                guidance: lf.policy.guidance.unwrap_or(0.0),
                ..Default::default()
            };
            opts.validate()?;
            PlannerSource::Diffusion(Arc::new(model), opts)
        }
    };
    let rate_hz = lf.rate_hz();
    let list = scenarios(lf)?;
    let mut recorder = match viz {
        Some(v) => Some(DrivingRecorder::open(v)?),
        None => None,
    };
    let bar = progress.then(|| {
        let b = indicatif::ProgressBar::new(list.len() as u64);
        b.set_style(
            indicatif::ProgressStyle::with_template(
                "{spinner} [{elapsed_precise}] {bar:30} {pos}/{len} scenarios {msg}",
            )
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
        );
        b
    });
    let t0 = Instant::now();
    let mut results = Vec::with_capacity(list.len());
    let mut realtime = Vec::new();
    for (k, s) in list.iter().enumerate() {
        let (hist, name, trace) = match &source {
            PlannerSource::Scripted(p) => {
                let mut tap = PlanTap {
                    inner: p.build(),
                    plans: Vec::new(),
                };
                let hist = simulate(s, &mut tap, mode)
                    .with_context(|| format!("simulating scenario {}", s.token))?;
                let name = tap.name();
                let trace = PlannerTrace {
                    plans: tap.plans,
                    ..Default::default()
                };
                (hist, name, trace)
            }
            PlannerSource::Diffusion(model, opts) => {
                let log = Arc::new(Mutex::new(PlanLog::default()));
                let planner =
                    DiffusionPlanner::new(model.clone(), *opts, k as u64).with_log(log.clone());
                let (hist, plans, ages) = if lockstep {
                    let mut tap = PlanTap {
                        inner: Box::new(planner),
                        plans: Vec::new(),
                    };
                    let hist = simulate(s, &mut tap, mode)
                        .with_context(|| format!("simulating scenario {}", s.token))?;
                    (hist, tap.plans, Vec::new())
                } else {
                    let (hist, rt) = simulate_realtime(
                        s,
                        Box::new(planner),
                        mode,
                        rate_hz,
                        Duration::from_secs(30),
                    )
                    .with_context(|| format!("simulating scenario {} in real time", s.token))?;
                    let plans = rt.followed.clone();
                    let ages = rt.ages_s.clone();
                    realtime.push((s.token.clone(), rt));
                    (hist, plans, ages)
                };
                let trace = planner_trace(&log, plans, &ages, hist.ego.len());
                (hist, "diffusion", trace)
            }
        };
        let fin = evaluate(s, &hist);
        if let Some(r) = recorder.as_mut() {
            // The metrics as they stood every METRIC_EVERY steps (at least two samples).
            let partial: Vec<ScenarioMetrics> = (0..hist.ego.len())
                .step_by(METRIC_EVERY)
                .map(|k| evaluate(s, &truncated(&hist, (k + 1).max(2))))
                .collect();
            r.scenario(s, name, &hist, &trace, &partial, &fin)?;
        }
        results.push(ScenarioResult {
            token: s.token.clone(),
            scenario_type: s.scenario_type.clone(),
            metrics: fin,
            simulated_s: hist.ego.len().saturating_sub(1) as f64 * DT,
            samples: hist.ego.len(),
        });
        if let Some(b) = &bar {
            b.inc(1);
        }
    }
    if let Some(b) = &bar {
        b.finish_and_clear();
    }
    if let Some(r) = recorder {
        r.finish()?;
    }
    let score = if results.is_empty() {
        0.0
    } else {
        results.iter().map(|r| r.metrics.score).sum::<f64>() / results.len() as f64
    };
    Ok(DrivingReport {
        planner: source.name().to_string(),
        realtime,
        mode,
        scenarios: results,
        score,
        wall_s: t0.elapsed().as_secs_f64(),
    })
}
