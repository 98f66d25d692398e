//! One closed-loop run: every 0.1 s the planner sees the world, the LQR tracker turns its
//! trajectory into an acceleration and a steering rate, the bicycle model moves the ego, and the
//! agents replay their log or advance with IDM (CLS-R: [`super::reactive`]). The recorded history is what the metrics score.

use super::lqr::LqrTracker;
use super::map::Map;
use super::reactive::{replayed_in_reactive_mode, EgoView, ReactiveAgents};
use super::scenario::{AgentObs, Scenario, DT};
use super::vehicle::{EgoState, Pacifica};
use super::DrivingError;
use rudder_robot::driving::{AsyncPlanner, Observation, PlanTimings, Planner, Trajectory};
use rudder_robot::types::VehicleCommand;
use std::time::{Duration, Instant};

/// Whether agents replay the log (CLS-NR) or follow their lanes with IDM (CLS-R).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    NonReactive,
    Reactive,
}

/// What happened in one run, sample by sample (index 0 = the initial state).
#[derive(Debug, Clone)]
pub struct History {
    pub ego: Vec<EgoState>,
    pub agents: Vec<Vec<AgentObs>>,
}

/// Runs `scenario` to its end with `planner`, in lockstep: each step waits for its plan.
pub fn simulate(
    scenario: &Scenario,
    planner: &mut dyn Planner<Map>,
    mode: Mode,
) -> Result<History, DrivingError> {
    scenario.validate()?;
    planner.initialize(&scenario.planner_setup());
    let name = planner.name();
    run_loop(scenario, mode, name, &mut |obs| Ok(planner.plan(obs)))
}

/// What the wall-clock loop measured.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct RealtimeReport {
    pub rate_hz: f64,
    /// Ticks that began more than one period after their deadline (the loop fell behind).
    pub missed_ticks: usize,
    pub planning: PlanTimings,
    /// The plan followed at each tick (what a recording draws) and its age (s).
    #[serde(skip)]
    pub followed: Vec<Trajectory>,
    #[serde(skip)]
    pub ages_s: Vec<f64>,
}

/// Runs `scenario` against the wall clock at `rate_hz` (the simulation's 0.1 s step per
/// tick; 10 Hz is real time, faster rates compress it) with the planner on its own thread:
/// each tick follows the newest plan that has arrived while the next one is computed. The
/// first tick waits for the first plan (up to `first_plan_timeout`).
pub fn simulate_realtime(
    scenario: &Scenario,
    planner: Box<dyn Planner<Map>>,
    mode: Mode,
    rate_hz: f64,
    first_plan_timeout: Duration,
) -> Result<(History, RealtimeReport), DrivingError> {
    scenario.validate()?;
    if !(rate_hz.is_finite() && (0.1..=10_000.0).contains(&rate_hz)) {
        return Err(DrivingError::Invalid(format!(
            "rate_hz {rate_hz}: expected 0.1..=10000"
        )));
    }
    let period = Duration::from_secs_f64(1.0 / rate_hz);
    let mut worker = AsyncPlanner::spawn(planner, scenario.map.clone());
    let name = worker.name();
    if !worker.initialize(&scenario.planner_setup()) {
        return Err(DrivingError::Invalid(format!(
            "planner `{name}`: its thread stopped before the scenario began"
        )));
    }
    let mut start: Option<Instant> = None;
    let mut missed = 0usize;
    let mut followed = Vec::new();
    let hist = run_loop(scenario, mode, name, &mut |obs| {
        // The clock starts once the first plan is in (loading and warm-up are not ticks).
        if let Some(t0) = start {
            let deadline = t0 + period * obs.step as u32;
            let now = Instant::now();
            if now < deadline {
                std::thread::sleep(deadline - now);
            } else if now > deadline + period {
                missed += 1;
            }
        }
        let plan = worker
            .tick(obs, first_plan_timeout)
            .cloned()
            .ok_or_else(|| {
                DrivingError::Invalid(format!(
                    "planner `{name}` gave no plan at step {} of `{}` (its thread stopped, or the \
                 first plan took longer than {:.1} s)",
                    obs.step,
                    scenario.token,
                    first_plan_timeout.as_secs_f64()
                ))
            })?;
        if start.is_none() {
            start = Some(Instant::now() - period * obs.step as u32);
        }
        followed.push(plan.clone());
        Ok(plan)
    })?;
    Ok((
        hist,
        RealtimeReport {
            rate_hz,
            missed_ticks: missed,
            planning: worker.timings(),
            ages_s: worker.ages().to_vec(),
            followed,
        },
    ))
}

/// The stepped loop both modes share; `plan` gives each step's trajectory.
fn run_loop(
    scenario: &Scenario,
    mode: Mode,
    name: &str,
    plan: &mut dyn FnMut(&Observation<'_, Map>) -> Result<Trajectory, DrivingError>,
) -> Result<History, DrivingError> {
    let n = scenario.num_steps();
    let e0 = scenario.ego_initial();
    let mut ego = EgoState::from_pose(0.0, e0.x, e0.y, e0.heading, e0.speed, e0.acceleration);
    let tracker = LqrTracker::default();
    let mut reactive = match mode {
        Mode::Reactive => Some(ReactiveAgents::new(scenario)),
        Mode::NonReactive => None,
    };
    let mut hist = History {
        ego: Vec::with_capacity(n),
        agents: Vec::with_capacity(n),
    };
    // The devkit plans and records iterations 0 .. N-2 of a scenario's N samples: its time
    // controller stops when the next iteration would be the last, so the final sample is
    // neither reached nor scored. So does this loop.
    for step in 0..n.saturating_sub(1) {
        let agents = match &reactive {
            Some(r) => r.observe(scenario, step),
            None => scenario.agents_at(step),
        };
        hist.ego.push(ego);
        let lights = scenario.lights_at(step);
        let traj = plan(&Observation {
            step,
            time_s: ego.time_s,
            ego: &ego,
            ego_history: &hist.ego,
            agents: &agents,
            lights,
            map: scenario.map.as_ref(),
            route: &scenario.route,
        })?;
        if !traj.is_valid() {
            return Err(DrivingError::Invalid(format!(
                "planner `{name}` returned an unusable trajectory at step {step} of `{}`",
                scenario.token
            )));
        }
        let cmd = tracker.track(&ego, &traj);
        if let Some(r) = &mut reactive {
            // The devkit updates its agents with the next step's lights and replayed objects
            // and the ego as it is before its own move.
            let replayed: Vec<AgentObs> = scenario
                .agents_at(step + 1)
                .into_iter()
                .filter(|o| replayed_in_reactive_mode(o.category))
                .collect();
            r.step(
                &scenario.map,
                EgoView {
                    footprint: ego.footprint(),
                    speed: ego.vehicle.speed,
                    heading: ego.vehicle.heading,
                },
                scenario.lights_at(step + 1),
                &replayed,
                DT,
            );
        }
        hist.agents.push(agents);
        ego = ego.propagate(
            VehicleCommand {
                acceleration: cmd.acceleration,
                steering_angle: ego.vehicle.steering_angle,
            },
            cmd.steering_rate,
            DT,
        );
    }
    Ok(hist)
}
