//! Campaigns: many scenarios (generated, or from a nuPlan DB) run with one planner in one
//! mode, in parallel over the available cores; per-type and overall means of every metric
//! and of the score (CLS-NR or CLS-R), and the simulation speed.

use super::generator;
use super::map::Map;
use super::metrics::{self, ScenarioMetrics, METRIC_NAMES};
use super::nuplan_db;
use super::planners::{ConstantVelocityPlanner, IdmPlanner, LogReplayPlanner};
use super::scenario::{Scenario, DT};
use super::simulation::simulate;
pub use super::simulation::Mode;
use super::DrivingError;
use rudder_robot::driving::Planner;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::Path;
use std::time::Instant;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PlannerKind {
    LogReplay,
    ConstantVelocity,
    Idm,
}

impl PlannerKind {
    /// Accepts "log_replay" / "expert", "constant_velocity" / "cv", "idm".
    pub fn parse(s: &str) -> Option<PlannerKind> {
        match s {
            "log_replay" | "log-replay" | "expert" => Some(PlannerKind::LogReplay),
            "constant_velocity" | "constant-velocity" | "cv" => Some(PlannerKind::ConstantVelocity),
            "idm" => Some(PlannerKind::Idm),
            _ => None,
        }
    }
    /// The name reports use ("log_replay", "constant_velocity", "idm").
    pub fn name(self) -> &'static str {
        match self {
            PlannerKind::LogReplay => "log_replay",
            PlannerKind::ConstantVelocity => "constant_velocity",
            PlannerKind::Idm => "idm",
        }
    }
    pub fn build(self) -> Box<dyn Planner<Map>> {
        match self {
            PlannerKind::LogReplay => Box::<LogReplayPlanner>::default(),
            PlannerKind::ConstantVelocity => Box::<ConstantVelocityPlanner>::default(),
            PlannerKind::Idm => Box::<IdmPlanner>::default(),
        }
    }
}

impl Mode {
    pub fn parse(s: &str) -> Option<Mode> {
        match s {
            "nonreactive" | "non_reactive" | "nr" => Some(Mode::NonReactive),
            "reactive" | "r" => Some(Mode::Reactive),
            _ => None,
        }
    }
}

/// Means over a group of scenarios.
#[derive(Debug, Clone, Serialize)]
pub struct GroupReport {
    pub count: usize,
    pub score: f64,
    pub metrics: BTreeMap<String, f64>,
}

#[derive(Debug, Clone, Serialize)]
pub struct CampaignReport {
    /// The planner's name ("idm", "diffusion", ...).
    pub planner: String,
    pub mode: Mode,
    pub scenarios: usize,
    pub seed: u64,
    /// CLS-NR (non-reactive) or CLS-R (reactive): the plain mean of the scenario scores.
    pub score: f64,
    pub metrics: BTreeMap<String, f64>,
    pub per_type: BTreeMap<String, GroupReport>,
    pub simulated_s: f64,
    pub wall_s: f64,
    /// Simulated seconds per wall-clock second.
    pub sim_speed: f64,
    /// Per scenario: (token, type, metrics).
    #[serde(skip)]
    pub results: Vec<(String, String, ScenarioMetrics)>,
}

fn group(items: &[&ScenarioMetrics]) -> GroupReport {
    let n = items.len().max(1) as f64;
    let mut metrics = BTreeMap::new();
    for (i, name) in METRIC_NAMES.iter().enumerate() {
        metrics.insert(
            name.to_string(),
            items.iter().map(|m| m.values()[i]).sum::<f64>() / n,
        );
    }
    GroupReport {
        count: items.len(),
        score: metrics.get("score").copied().unwrap_or(0.0),
        metrics,
    }
}

/// Every scenario of the nuPlan-schema log at `path`, or of every `*.db` log in the folder
/// `path` (in file-name order), each with its map file beside it.
pub fn load_logs(path: &Path) -> Result<Vec<Scenario>, DrivingError> {
    if !path.is_dir() {
        return nuplan_db::load_scenarios(path, None);
    }
    let entries = std::fs::read_dir(path).map_err(|e| DrivingError::Db {
        path: path.display().to_string(),
        reason: format!("cannot list the folder: {e}"),
    })?;
    let mut dbs: Vec<std::path::PathBuf> = entries
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "db"))
        .collect();
    dbs.sort();
    if dbs.is_empty() {
        return Err(DrivingError::Db {
            path: path.display().to_string(),
            reason: "the folder holds no *.db log".into(),
        });
    }
    let mut out = Vec::new();
    for db in dbs {
        out.extend(nuplan_db::load_scenarios(&db, None)?);
    }
    Ok(out)
}

/// Writes `count` generated scenarios (from `seed`) as nuPlan-schema logs, one
/// `<index>_<type>.db` and its map per scenario, into `dir`; returns the paths written.
pub fn write_generated_logs(
    dir: &Path,
    count: usize,
    seed: u64,
) -> Result<Vec<std::path::PathBuf>, DrivingError> {
    std::fs::create_dir_all(dir).map_err(|e| DrivingError::Db {
        path: dir.display().to_string(),
        reason: format!("cannot create the folder: {e}"),
    })?;
    let mut written = Vec::with_capacity(count);
    for i in 0..count {
        let s = generator::generate(seed, i);
        let db = dir.join(format!("{i:04}_{}.db", s.scenario_type));
        if db.exists() {
            return Err(DrivingError::Db {
                path: db.display().to_string(),
                reason: "already exists; write the logs into an empty folder".into(),
            });
        }
        nuplan_db::write_db(&db, &s)?;
        written.push(db);
    }
    Ok(written)
}

/// Runs `scenarios` scenarios: generated from `seed`, or the first ones of the log(s) at `db`
/// (a DB file or a folder of them, maps beside them; 0 = all of them).
pub fn run_campaign(
    planner: PlannerKind,
    scenarios: usize,
    mode: Mode,
    seed: u64,
    db: Option<&Path>,
) -> Result<CampaignReport, DrivingError> {
    let make = move || planner.build();
    run_campaign_with(planner.name(), &make, scenarios, mode, seed, db)
}

/// Makes a fresh planner for each scenario (a learned planner shares its weights between the
/// ones it makes).
pub type PlannerFactory<'a> = dyn Fn() -> Box<dyn Planner<Map>> + Sync + 'a;

/// [`run_campaign`] with any planner: `make` builds one per scenario, `name` goes in the report.
pub fn run_campaign_with(
    name: &str,
    make: &PlannerFactory<'_>,
    scenarios: usize,
    mode: Mode,
    seed: u64,
    db: Option<&Path>,
) -> Result<CampaignReport, DrivingError> {
    let t0 = Instant::now();
    let loaded = match db {
        Some(p) => {
            let mut v = load_logs(p)?;
            if scenarios > 0 {
                v.truncate(scenarios);
            }
            Some(v)
        }
        None => None,
    };
    let count = loaded.as_ref().map_or(scenarios, |v| v.len());
    let threads = std::thread::available_parallelism()
        .map_or(1, |n| n.get())
        .clamp(1, count.max(1));
    let results: Vec<Result<(String, String, ScenarioMetrics, f64), DrivingError>> =
        std::thread::scope(|sc| {
            let handles: Vec<_> = (0..threads)
                .map(|w| {
                    let loaded = &loaded;
                    sc.spawn(move || {
                        let mut out = Vec::new();
                        for i in (w..count).step_by(threads) {
                            let generated;
                            let s: &Scenario = match loaded {
                                Some(v) => &v[i],
                                None => {
                                    generated = generator::generate(seed, i);
                                    &generated
                                }
                            };
                            out.push(run_with(s, make(), mode).map(|(m, secs)| {
                                (s.token.clone(), s.scenario_type.clone(), m, secs)
                            }));
                        }
                        out
                    })
                })
                .collect();
            handles
                .into_iter()
                .flat_map(|h| {
                    h.join().unwrap_or_else(|_| {
                        vec![Err(DrivingError::Invalid(
                            "a worker thread panicked".into(),
                        ))]
                    })
                })
                .collect()
        });
    let mut ok = Vec::with_capacity(results.len());
    for r in results {
        ok.push(r?);
    }
    ok.sort_by(|a, b| a.0.cmp(&b.0));
    let wall = t0.elapsed().as_secs_f64();
    let simulated: f64 = ok.iter().map(|r| r.3).sum();
    let all: Vec<&ScenarioMetrics> = ok.iter().map(|r| &r.2).collect();
    let overall = group(&all);
    let mut types: BTreeMap<String, Vec<&ScenarioMetrics>> = BTreeMap::new();
    for r in &ok {
        types.entry(r.1.clone()).or_default().push(&r.2);
    }
    Ok(CampaignReport {
        planner: name.to_string(),
        mode,
        scenarios: ok.len(),
        seed,
        score: overall.score,
        metrics: overall.metrics,
        per_type: types.into_iter().map(|(k, v)| (k, group(&v))).collect(),
        simulated_s: simulated,
        wall_s: wall,
        sim_speed: if wall > 0.0 { simulated / wall } else { 0.0 },
        results: ok.into_iter().map(|r| (r.0, r.1, r.2)).collect(),
    })
}

/// Simulates and scores one scenario; returns the metrics and the simulated duration.
pub fn run_one(
    s: &Scenario,
    planner: PlannerKind,
    mode: Mode,
) -> Result<(ScenarioMetrics, f64), DrivingError> {
    run_with(s, planner.build(), mode)
}

/// Simulates and scores one scenario with `planner`.
pub fn run_with(
    s: &Scenario,
    mut planner: Box<dyn Planner<Map>>,
    mode: Mode,
) -> Result<(ScenarioMetrics, f64), DrivingError> {
    let hist = simulate(s, planner.as_mut(), mode)?;
    let secs = hist.ego.len().saturating_sub(1) as f64 * DT;
    Ok((metrics::evaluate(s, &hist), secs))
}
