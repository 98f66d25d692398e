//! speed_limit_compliance: overspeed of the rear-axle speed over the limit of the lane under
//! the ego centre (on a connector, the largest limit of its neighbours); score 1 without
//! violations, else max(0, 1 - sum(overspeed) x mean dt / (2.23 x duration)).

use super::super::map::Map;
use super::super::vehicle::{EgoState, Pacifica};

pub const MAX_OVERSPEED_INTEGRAL: f64 = 2.23;

pub fn overspeed(map: &Map, ego: &[EgoState]) -> Vec<f64> {
    ego.iter()
        .map(|e| {
            map.best_lane_at(e.center(), e.vehicle.heading)
                .and_then(|l| map.speed_limit_of(l))
                .map(|lim| (e.vehicle.speed.abs() - lim).max(0.0))
                .unwrap_or(0.0)
        })
        .collect()
}

pub fn score_from_overspeed(over: &[f64], mean_dt: f64, duration: f64) -> f64 {
    let sum: f64 = over.iter().sum();
    if sum <= 0.0 {
        return 1.0;
    }
    if duration <= 0.0 {
        return 0.0;
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
