//! drivable_area_compliance: a footprint corner is outside when it is on no lane or connector
//! and not in the drivable-area layer; an outside corner within 0.3 m of the lane under the
//! ego's centre or of the drivable layer is tolerated. Any corner beyond that, ever: 0.

use super::super::geometry::point_polygon_distance;
use super::super::map::Map;
use super::super::vehicle::{EgoState, Pacifica};

pub const TOLERANCE: f64 = 0.3;

/// Largest distance by which a corner left the drivable surface (0 if never).
pub fn max_violation(map: &Map, ego: &[EgoState]) -> f64 {
    let mut worst: f64 = 0.0;
    for e in ego {
        let centre_lane = map.best_lane_at(e.center(), e.vehicle.heading);
        for c in e.footprint().corners() {
            if map.on_any_lane(c) || map.in_drivable_area_layer(c) {
                continue;
            }
            let d_lane = centre_lane
                .map(|l| point_polygon_distance(&l.polygon, c))
                .unwrap_or(f64::INFINITY);
            let d = d_lane.min(map.distance_to_drivable_layer(c, 2.0 * TOLERANCE));
            worst = worst.max(d);
        }
    }
    worst
}

pub fn evaluate(map: &Map, ego: &[EgoState]) -> f64 {
    if max_violation(map, ego) > TOLERANCE {
        0.0
    } else {
        1.0
    }
}
