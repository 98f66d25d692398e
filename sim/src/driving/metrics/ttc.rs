//! time_to_collision_within_bound: at each step, ego and relevant tracks are projected at
//! constant speed along their headings for 0.1 .. 2.9 s; the first overlap is the TTC. Tracks
//! count when ahead (< 30 deg from the ego heading), or, when the ego is off the common lanes
//! or in an intersection, when not behind (<= 150 deg). Steps with an at-fault collision have
//! TTC 0; steps with no tracks or a stopped ego (<= 0.005 m/s) are skipped. Score 1 iff every
//! TTC exceeds 0.95 s.

use super::super::geometry::wrap_angle;
use super::super::map::{LaneKind, Map};
use super::super::scenario::{AgentBox, AgentObs};
use super::super::vehicle::{EgoState, Pacifica};

pub const HORIZON: f64 = 3.0;
pub const STEP: f64 = 0.1;
pub const LEAST_MIN_TTC: f64 = 0.95;
pub const STOPPED_SPEED: f64 = 0.005;

/// TTC at one step (infinity when nothing is hit within the horizon), or `None` if skipped.
pub fn ttc_at(map: &Map, ego: &EgoState, agents: &[AgentObs]) -> Option<f64> {
    let v = ego.vehicle.speed;
    if agents.is_empty() || v <= STOPPED_SPEED {
        return None;
    }
    let c = ego.center();
    let h = ego.vehicle.heading;
    let lane = map.best_lane_at(c, h);
    let wide = lane.is_none_or(|l| l.kind == LaneKind::Connector);
    let max_angle = if wide { 150f64 } else { 30f64 }.to_radians();
    let fp = ego.footprint();
    let ego_swept = fp.elongated(v * HORIZON);
    let mut best = f64::INFINITY;
    for a in agents {
        let b = a.bbox();
        let to = b.center.sub(c);
        let angle = wrap_angle(to.y.atan2(to.x) - h).abs();
        let ok = if wide {
            angle <= max_angle
        } else {
            angle < max_angle
        };
        if !ok {
            continue;
        }
        let va = a.speed();
        if !ego_swept.intersects(&b.elongated(va * HORIZON)) {
            continue;
        }
        let steps = (HORIZON / STEP).round() as usize;
        for k in 1..steps {
            let t = k as f64 * STEP;
            if t >= best {
                break;
            }
            if fp.advanced(v * t).intersects(&b.advanced(va * t)) {
                best = t;
                break;
            }
        }
    }
    Some(best)
}

pub fn evaluate(
    map: &Map,
    ego: &[EgoState],
    agents: &[Vec<AgentObs>],
    at_fault_steps: &[bool],
) -> f64 {
    for (k, (e, objs)) in ego.iter().zip(agents).enumerate() {
        if at_fault_steps.get(k).copied().unwrap_or(false) {
            return 0.0;
        }
        if let Some(t) = ttc_at(map, e, objs) {
            if t <= LEAST_MIN_TTC {
                return 0.0;
            }
        }
    }
    1.0
}
