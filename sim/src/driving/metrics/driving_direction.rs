//! driving_direction_compliance: per step, the progress of the ego centre along the baseline of
//! its current lane (0 at the first step, on a lane change, off-lane); sums over 1 s windows
//! (11 samples); m = the largest backwards progress in any window: m < 2 m -> 1, < 6 m -> 0.5,
//! else 0.

use super::super::map::Map;
use super::super::vehicle::{EgoState, Pacifica};

pub const COMPLIANCE_THRESHOLD: f64 = 2.0;
pub const VIOLATION_THRESHOLD: f64 = 6.0;
/// 1 s at 0.1 s steps, both ends included.
pub const WINDOW: usize = 11;

pub fn per_step_progress(map: &Map, ego: &[EgoState]) -> Vec<f64> {
    let mut out = Vec::with_capacity(ego.len());
    let mut prev: Option<(u64, super::super::geometry::P2)> = None;
    for e in ego {
        let c = e.center();
        let lane = map.best_lane_at(c, e.vehicle.heading);
        let p = match (lane, prev) {
            (Some(l), Some((pid, pc))) if pid == l.id => {
                l.centerline.project(c).s - l.centerline.project(pc).s
            }
            _ => 0.0,
        };
        out.push(p);
        prev = lane.map(|l| (l.id, c));
    }
    out
}

/// The largest backwards distance over any window.
pub fn max_wrong_way(progress: &[f64]) -> f64 {
    if progress.is_empty() {
        return 0.0;
    }
    let w = WINDOW.min(progress.len());
    let min = progress
        .windows(w)
        .map(|x| x.iter().sum::<f64>())
        .fold(f64::INFINITY, f64::min);
    (-min).max(0.0)
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
    score_from_wrong_way(max_wrong_way(&per_step_progress(map, ego)))
}
