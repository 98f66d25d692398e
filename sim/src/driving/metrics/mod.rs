//! nuPlan's closed-loop metrics and the scenario score. Each submodule owns one metric and
//! follows nuplan-devkit's definition (REFERENCE §4a); this module combines them:
//! score = prod(multipliers) x (5 progress + 5 ttc + 4 speed + 2 comfort) / 16.

pub mod collisions;
pub mod comfort;
pub mod drivable_area;
pub mod driving_direction;
pub mod progress;
pub mod speed_limit;
pub mod ttc;

use super::scenario::Scenario;
use super::simulation::History;
use serde::Serialize;

/// Every metric's score for one scenario, and the combined score.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct ScenarioMetrics {
    pub no_ego_at_fault_collisions: f64,
    pub drivable_area_compliance: f64,
    pub driving_direction_compliance: f64,
    pub ego_is_making_progress: f64,
    pub ego_progress: f64,
    pub time_to_collision_within_bound: f64,
    pub speed_limit_compliance: f64,
    pub ego_is_comfortable: f64,
    pub score: f64,
}

pub const METRIC_NAMES: [&str; 9] = [
    "no_ego_at_fault_collisions",
    "drivable_area_compliance",
    "driving_direction_compliance",
    "ego_is_making_progress",
    "ego_progress",
    "time_to_collision_within_bound",
    "speed_limit_compliance",
    "ego_is_comfortable",
    "score",
];

impl ScenarioMetrics {
    pub fn values(&self) -> [f64; 9] {
        [
            self.no_ego_at_fault_collisions,
            self.drivable_area_compliance,
            self.driving_direction_compliance,
            self.ego_is_making_progress,
            self.ego_progress,
            self.time_to_collision_within_bound,
            self.speed_limit_compliance,
            self.ego_is_comfortable,
            self.score,
        ]
    }
}

/// Combines metric scores as nuPlan's closed-loop score does.
pub fn combine(multipliers: [f64; 4], progress: f64, ttc: f64, speed: f64, comfort: f64) -> f64 {
    let m: f64 = multipliers.iter().product();
    m * (5.0 * progress + 5.0 * ttc + 4.0 * speed + 2.0 * comfort) / 16.0
}

/// Scores one simulated run.
pub fn evaluate(scenario: &Scenario, hist: &History) -> ScenarioMetrics {
    let map = &scenario.map;
    let col = collisions::evaluate(map, &hist.ego, &hist.agents);
    let da = drivable_area::evaluate(map, &hist.ego);
    let dd = driving_direction::evaluate(map, &hist.ego);
    let n = hist.ego.len();
    let expert: Vec<_> = (0..n).map(|k| scenario.expert_at(k)).collect();
    let ratio = progress::progress_ratio(map, &scenario.route, &hist.ego, &expert);
    let making = progress::making_progress(ratio);
    let ttc = ttc::evaluate_with_collisions(map, &hist.ego, &hist.agents, &col);
    let sl = speed_limit::evaluate(map, &hist.ego);
    let cf = comfort::evaluate(&hist.ego);
    let score = combine([col.score, da, dd, making], ratio, ttc, sl, cf);
    ScenarioMetrics {
        no_ego_at_fault_collisions: col.score,
        drivable_area_compliance: da,
        driving_direction_compliance: dd,
        ego_is_making_progress: making,
        ego_progress: ratio,
        time_to_collision_within_bound: ttc,
        speed_limit_compliance: sl,
        ego_is_comfortable: cf,
        score,
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn weights() {
        assert_eq!(super::combine([1.0; 4], 1.0, 1.0, 1.0, 1.0), 1.0);
        assert_eq!(super::combine([1.0; 4], 1.0, 0.0, 1.0, 1.0), 11.0 / 16.0);
        assert_eq!(
            super::combine([1.0, 0.5, 1.0, 1.0], 1.0, 1.0, 1.0, 0.0),
            0.5 * 14.0 / 16.0
        );
        assert_eq!(
            super::combine([1.0, 1.0, 0.0, 1.0], 1.0, 1.0, 1.0, 1.0),
            0.0
        );
    }
}
