//! One closed-loop run: every 0.1 s the planner sees the world, the LQR tracker turns its
//! trajectory into an acceleration and a steering rate, the bicycle model moves the ego, and the
//! agents replay their log or advance with IDM (CLS-R: [`super::reactive`]). The recorded history is what the metrics score.

use super::lqr::LqrTracker;
use super::map::Map;
use super::reactive::{replayed_in_reactive_mode, EgoView, ReactiveAgents};
use super::scenario::{AgentObs, Scenario, DT};
use super::vehicle::{EgoState, Pacifica};
use super::DrivingError;
use rudder_robot::driving::{Observation, Planner};
use rudder_robot::types::VehicleCommand;

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

/// Runs `scenario` to its end with `planner`.
pub fn simulate(
    scenario: &Scenario,
    planner: &mut dyn Planner<Map>,
    mode: Mode,
) -> Result<History, DrivingError> {
    scenario.validate()?;
    let n = scenario.num_steps();
    let e0 = scenario.ego_initial();
    let mut ego = EgoState::from_pose(0.0, e0.x, e0.y, e0.heading, e0.speed, e0.acceleration);
    let tracker = LqrTracker::default();
    let mut reactive = match mode {
        Mode::Reactive => Some(ReactiveAgents::new(scenario)),
        Mode::NonReactive => None,
    };
    planner.initialize(&scenario.planner_setup());
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
        let traj = planner.plan(&Observation {
            step,
            time_s: ego.time_s,
            ego: &ego,
            ego_history: &hist.ego,
            agents: &agents,
            lights,
            map: scenario.map.as_ref(),
            route: &scenario.route,
        });
        if !traj.is_valid() {
            return Err(DrivingError::Invalid(format!(
                "planner `{}` returned an unusable trajectory at step {step} of `{}`",
                planner.name(),
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
