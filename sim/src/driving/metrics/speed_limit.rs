//! speed_limit_compliance: overspeed of the rear-axle speed over the limit of the route objects
//! under the ego centre (its driven route, nuPlan's get_route): a lane's own limit; on
//! connectors the largest limit of the lanes entering or leaving any of them, never a
//! connector's own, and none if one of those lanes has no limit ([`Map::route_speed_limit`]).
//! Score 1 without violations, else max(0, 1 - sum(overspeed) x mean dt / (2.23 x duration));
//! 1 when the run has no duration.

use super::super::geometry::P2;
use super::super::map::Map;
use super::super::vehicle::{EgoState, Pacifica};

pub const MAX_OVERSPEED_INTEGRAL: f64 = 2.23;

pub fn overspeed(map: &Map, ego: &[EgoState]) -> Vec<f64> {
    let centres: Vec<P2> = ego.iter().map(|e| e.center()).collect();
    ego.iter()
        .zip(map.driven_route(&centres))
        .map(|(e, objects)| {
            map.route_speed_limit(&objects)
                .map(|lim| (e.vehicle.speed.abs() - lim).max(0.0))
                .unwrap_or(0.0)
        })
        .collect()
}

pub fn score_from_overspeed(over: &[f64], mean_dt: f64, duration: f64) -> f64 {
    let sum: f64 = over.iter().sum();
    // No violation scores 1; so does a run without duration (nuPlan warns and returns 1).
    if sum <= 0.0 || duration <= 0.0 {
        return 1.0;
    }
    (1.0 - sum * mean_dt / (MAX_OVERSPEED_INTEGRAL * duration)).max(0.0)
}

pub fn evaluate(map: &Map, ego: &[EgoState]) -> f64 {
    let n = ego.len();
    if n < 2 {
        return 1.0;
    }
    let duration = ego[n - 1].time_s - ego[0].time_s;
    let mean_dt = duration / (n - 1) as f64;
    score_from_overspeed(&overspeed(map, ego), mean_dt, duration)
}
