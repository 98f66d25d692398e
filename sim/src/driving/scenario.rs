//! A scenario: the map, the ego's initial state and logged (expert) trajectory, the other
//! tracks, traffic-light states over time, the route and nuPlan's scenario-type tag. Sampled at
//! 0.1 s: index 0 is the start, `HISTORY_STEPS` samples of history precede it.

use super::geometry::{OrientedBox, P2};
use super::map::{LaneId, LightStatus, Map};
use super::DrivingError;
use rudder_robot::driving::PlannerSetup;
use serde::{Deserialize, Serialize};
use std::sync::Arc;

/// Simulation and log step (nuPlan's DB is 20 Hz, subsampled to 10 Hz).
pub const DT: f64 = 0.1;
/// 15 s horizon: 150 steps after the initial sample.
pub const HORIZON_STEPS: usize = 150;
/// 2 s of history before the initial sample.
pub const HISTORY_STEPS: usize = 20;

// The object and ego samples are what planners observe (robot crate).
pub use rudder_robot::driving::{AgentObs, AgentState, Category, EgoPose};

/// A tracked object over the scenario. `states[k]` is the sample at step
/// `k - HISTORY_STEPS`; `None` where the object was not observed.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Track {
    pub id: u64,
    pub category: Category,
    pub length: f64,
    pub width: f64,
    pub height: f64,
    pub states: Vec<Option<AgentState>>,
}

impl Track {
    /// The state at simulation step `step` (0 = scenario start).
    pub fn at(&self, step: usize) -> Option<AgentState> {
        self.states.get(step + HISTORY_STEPS).copied().flatten()
    }
}

/// An object's footprint. A sim-side trait because the box type is the simulator's geometry;
/// planners outside sim build theirs from `length` and `width`.
pub trait AgentBox {
    fn bbox(&self) -> OrientedBox;
}

impl AgentBox for AgentObs {
    fn bbox(&self) -> OrientedBox {
        OrientedBox::new(
            P2::new(self.state.x, self.state.y),
            self.state.heading,
            self.length,
            self.width,
        )
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Scenario {
    pub token: String,
    pub scenario_type: String,
    #[serde(skip)]
    pub map: Arc<Map>,
    /// `expert[k]` at step `k - HISTORY_STEPS`; `expert[HISTORY_STEPS]` is the initial state.
    pub expert: Vec<EgoPose>,
    pub tracks: Vec<Track>,
    /// `lights[k]` = (connector, status) at step k >= 0.
    pub lights: Vec<Vec<(LaneId, LightStatus)>>,
    /// The expert's route as a sequence of lanes/connectors.
    pub route: Vec<LaneId>,
}

impl Scenario {
    pub fn num_steps(&self) -> usize {
        self.expert.len().saturating_sub(HISTORY_STEPS)
    }

    pub fn ego_initial(&self) -> EgoPose {
        self.expert[HISTORY_STEPS.min(self.expert.len().saturating_sub(1))]
    }

    /// What a planner learns before the first step: the map, the route, and the expert from
    /// the initial sample on (for the log-replay baseline only).
    pub fn planner_setup(&self) -> PlannerSetup<'_, Map> {
        PlannerSetup {
            map: self.map.as_ref(),
            route: &self.route,
            expert: &self.expert[HISTORY_STEPS.min(self.expert.len())..],
            dt: DT,
        }
    }

    /// Expert pose at simulation step `step` (clamped to the last sample).
    pub fn expert_at(&self, step: usize) -> EgoPose {
        let i = (step + HISTORY_STEPS).min(self.expert.len().saturating_sub(1));
        self.expert[i]
    }

    pub fn lights_at(&self, step: usize) -> &[(LaneId, LightStatus)] {
        self.lights
            .get(step)
            .or(self.lights.last())
            .map(|v| v.as_slice())
            .unwrap_or(&[])
    }

    /// Logged objects present at `step`.
    pub fn agents_at(&self, step: usize) -> Vec<AgentObs> {
        self.objects_at_sample(step + HISTORY_STEPS)
    }

    /// The ego on its logged pose at simulation step `step`, as a planner would see it: the
    /// log has no tyre angle, so the yaw rate comes from the headings around the sample and
    /// the steering angle from the bicycle model for that yaw rate.
    pub fn logged_ego(&self, step: usize) -> rudder_robot::driving::EgoState {
        let last = self.expert.len().saturating_sub(1);
        let i = (step + HISTORY_STEPS).min(last);
        let e = self.expert[i];
        let (prev, next) = (
            self.expert[i.saturating_sub(1)],
            self.expert[(i + 1).min(last)],
        );
        let yaw_rate = super::geometry::wrap_angle(next.heading - prev.heading) / (2.0 * DT);
        let mut ego = rudder_robot::driving::EgoState::from_pose(
            step as f64 * DT,
            e.x,
            e.y,
            e.heading,
            e.speed,
            e.acceleration,
        );
        ego.yaw_rate = yaw_rate;
        if e.speed > 0.5 {
            ego.vehicle.steering_angle = (yaw_rate * super::vehicle::WHEELBASE / e.speed).atan();
        }
        ego
    }

    /// The logged objects of the last `frames` simulation steps up to `step` (oldest first),
    /// none from before step 0: what a planner that has run since the start has seen.
    pub fn frames_up_to(&self, step: usize, frames: usize) -> Vec<Vec<AgentObs>> {
        (step.saturating_sub(frames.max(1) - 1)..=step)
            .map(|k| self.agents_at(k))
            .collect()
    }

    /// Logged objects at log sample `i` (history included: `HISTORY_STEPS` is step 0).
    pub fn objects_at_sample(&self, i: usize) -> Vec<AgentObs> {
        self.tracks
            .iter()
            .filter_map(|t| {
                t.states.get(i).copied().flatten().map(|s| AgentObs {
                    id: t.id,
                    category: t.category,
                    state: s,
                    length: t.length,
                    width: t.width,
                })
            })
            .collect()
    }

    /// Checks the invariants the simulator relies on, so a malformed scenario (from a file or
    /// a DB) is an error rather than a panic or a silently wrong score.
    pub fn validate(&self) -> Result<(), DrivingError> {
        let bad = |m: String| DrivingError::Scenario {
            token: self.token.clone(),
            reason: m,
        };
        if self.expert.len() < HISTORY_STEPS + 2 {
            return Err(bad(format!(
                "expert trajectory has {} samples; need at least {}",
                self.expert.len(),
                HISTORY_STEPS + 2
            )));
        }
        if self.expert.iter().any(|e| {
            !(e.x.is_finite() && e.y.is_finite() && e.heading.is_finite() && e.speed.is_finite())
        }) {
            return Err(bad("expert trajectory has a non-finite value".into()));
        }
        for t in &self.tracks {
            if !(t.length > 0.0 && t.width > 0.0 && t.length.is_finite() && t.width.is_finite()) {
                return Err(bad(format!(
                    "track {} has a bad box {}x{}",
                    t.id, t.length, t.width
                )));
            }
            if t.states.iter().flatten().any(|s| {
                !(s.x.is_finite()
                    && s.y.is_finite()
                    && s.heading.is_finite()
                    && s.vx.is_finite()
                    && s.vy.is_finite())
            }) {
                return Err(bad(format!("track {} has a non-finite state", t.id)));
            }
        }
        for id in &self.route {
            if self.map.lane(*id).is_none() {
                return Err(bad(format!(
                    "route lane {id} is not in map `{}`",
                    self.map.name
                )));
            }
        }
        Ok(())
    }
}
