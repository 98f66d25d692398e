//! driving_direction_compliance: per step, the progress of the ego centre along the baseline of
//! the first lane/connector of its driven route (nuPlan's get_route); 0 off the lanes (where
//! the previous lane and its last distance are kept), at the first step, and at the first two
//! steps in a newly entered lane (entering resets, the next step only records its distance).
//! For each step the progress of that step and the `n` before it is summed (n = 1 s over the
//! mean step, 10 at 0.1 s; fewer at the start of the run); m = the largest backwards sum:
//! m < 2 m -> 1, < 6 m -> 0.5, else 0.

use super::super::geometry::P2;
use super::super::map::{LaneId, Map};
use super::super::vehicle::{EgoState, Pacifica};

pub const COMPLIANCE_THRESHOLD: f64 = 2.0;
pub const VIOLATION_THRESHOLD: f64 = 6.0;
/// 1 s at 0.1 s steps, both ends included.
pub const WINDOW: usize = 11;
/// The summing horizon (s).
pub const TIME_HORIZON: f64 = 1.0;

pub fn per_step_progress(map: &Map, ego: &[EgoState]) -> Vec<f64> {
    let centres: Vec<P2> = ego.iter().map(|e| e.center()).collect();
    let route = map.driven_route(&centres);
    progress_along_baselines(map, &centres, &route)
}

/// DrivingDirectionComplianceStatistics._extract_metric's per-step progress.
fn progress_along_baselines(map: &Map, points: &[P2], route: &[Vec<LaneId>]) -> Vec<f64> {
    let mut out = Vec::with_capacity(points.len());
    let mut prev_id: Option<LaneId> = route.first().and_then(|r| r.first().copied());
    let mut prev_distance: Option<f64> = None;
    for (&p, objects) in points.iter().zip(route) {
        let Some(&id) = objects.first() else {
            out.push(0.0);
            continue;
        };
        if prev_id != Some(id) {
            prev_id = Some(id);
            prev_distance = None;
            out.push(0.0);
            continue;
        }
        let distance = map.lane(id).map(|l| l.centerline.project(p).s);
        // nuPlan tests the distance for truth, so a point projecting onto the very start of
        // the baseline makes no progress.
        let progress = match (prev_distance, distance) {
            (Some(before), Some(now)) if now != 0.0 => now - before,
            _ => 0.0,
        };
        out.push(progress);
        prev_distance = distance;
    }
    out
}

/// The largest backwards distance over the windows of [`WINDOW`] samples and the shorter ones
/// at the start.
pub fn max_wrong_way(progress: &[f64]) -> f64 {
    max_wrong_way_over(progress, WINDOW - 1)
}

/// The largest backwards sum of a step's progress and that of the `n_horizon` steps before it.
pub fn max_wrong_way_over(progress: &[f64], n_horizon: usize) -> f64 {
    // Each window summed afresh (not as a running sum) so rounding matches nuPlan's.
    let min = (0..progress.len())
        .map(|i| {
            progress[i.saturating_sub(n_horizon)..=i]
                .iter()
                .sum::<f64>()
        })
        .fold(0.0f64, f64::min);
    -min
}

/// int(1 s / mean step) with times rounded to microseconds as nuPlan's are; the 0.1 s
/// default for fewer than two samples.
pub fn horizon_steps(ego: &[EgoState]) -> usize {
    let us = |e: &EgoState| (e.time_s * 1e6).round();
    match (ego.first(), ego.last()) {
        (Some(a), Some(b)) if ego.len() >= 2 && us(b) > us(a) => {
            let mean_dt_us = (us(b) - us(a)) / (ego.len() - 1) as f64;
            (TIME_HORIZON * 1e6 / mean_dt_us) as usize
        }
        _ => WINDOW - 1,
    }
}

pub fn score_from_wrong_way(m: f64) -> f64 {
    if m < COMPLIANCE_THRESHOLD {
        1.0
    } else if m < VIOLATION_THRESHOLD {
        0.5
    } else {
        0.0
    }
}

pub fn evaluate(map: &Map, ego: &[EgoState]) -> f64 {
    let progress = per_step_progress(map, ego);
    score_from_wrong_way(max_wrong_way_over(&progress, horizon_steps(ego)))
}
