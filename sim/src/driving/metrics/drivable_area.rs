//! drivable_area_compliance: a footprint corner is outside when it is on no lane or connector
//! and not in the drivable-area layer. An outside corner is tolerated when it is less than
//! 0.3 m from the route objects under the ego's centre (its driven route, nuPlan's get_route)
//! or from the drivable layer (here: the drivable-area polygons and the lanes, which stand in
//! for nuPlan's road segments); at 0.3 m or more, ever: 0.

use super::super::geometry::{point_polygon_distance, P2};
use super::super::map::{LaneId, Map};
use super::super::vehicle::{EgoState, Pacifica};

/// drivable_area_compliance's max_violation_threshold (m).
pub const TOLERANCE: f64 = 0.3;

/// Distance from `p` to the nearest of `objects`' polygons (infinity for none).
fn distance_to_objects(map: &Map, objects: &[LaneId], p: P2) -> f64 {
    objects
        .iter()
        .filter_map(|id| map.lane(*id))
        .map(|l| point_polygon_distance(&l.polygon, p))
        .fold(f64::INFINITY, f64::min)
}

/// Largest distance by which a corner left the drivable surface (0 if never).
pub fn max_violation(map: &Map, ego: &[EgoState]) -> f64 {
    let centres: Vec<P2> = ego.iter().map(|e| e.center()).collect();
    let mut worst: f64 = 0.0;
    for (e, centre_objects) in ego.iter().zip(map.driven_route(&centres)) {
        for c in e.footprint().corners() {
            if map.on_any_lane(c) || map.in_drivable_area_layer(c) {
                continue;
            }
            let d_centre = distance_to_objects(map, &centre_objects, c);
            let d = d_centre.min(map.distance_to_drivable_layer(c, 2.0 * TOLERANCE));
            worst = worst.max(d);
        }
    }
    worst
}

/// nuPlan tolerates a corner only strictly closer than the threshold.
pub fn score_from_max_violation(d: f64) -> f64 {
    if d >= TOLERANCE {
        0.0
    } else {
        1.0
    }
}

pub fn evaluate(map: &Map, ego: &[EgoState]) -> f64 {
    score_from_max_violation(max_violation(map, ego))
}
