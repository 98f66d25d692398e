//! no_ego_at_fault_collisions: each step, every track not yet collided is tested against the
//! ego footprint; a collision is classified (stopped ego, stopped track, rear, front, lateral)
//! and counted when the ego is at fault.

use super::super::geometry::wrap_angle;
use super::super::map::Map;
use super::super::scenario::{AgentBox, AgentObs, Category};
use super::super::vehicle::{EgoState, Pacifica};
use std::collections::HashSet;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CollisionType {
    StoppedEgo,
    StoppedTrack,
    ActiveRear,
    ActiveFront,
    ActiveLateral,
}

/// The speed under which ego or track counts as stopped.
pub const STOPPED_SPEED: f64 = 0.05;

#[derive(Debug, Clone, Default)]
pub struct CollisionResult {
    pub score: f64,
    /// At-fault collisions per group: VRUs, vehicles, objects.
    pub at_fault: [usize; 3],
    /// Steps at which an at-fault collision started (TTC is 0 there).
    pub at_fault_steps: Vec<bool>,
    /// (step, track id, type, at fault) for every collision.
    pub events: Vec<(usize, u64, CollisionType, bool)>,
}

fn group(c: Category) -> usize {
    match c {
        Category::Pedestrian | Category::Bicycle => 0,
        Category::Vehicle => 1,
        _ => 2,
    }
}

/// nuPlan's collision classification.
pub fn classify(ego: &EgoState, track: &AgentObs) -> CollisionType {
    if ego.vehicle.speed <= STOPPED_SPEED {
        return CollisionType::StoppedEgo;
    }
    if !track.category.is_agent() || track.speed() <= STOPPED_SPEED {
        return CollisionType::StoppedTrack;
    }
    let c = ego.center();
    let to = track.bbox().center.sub(c);
    let angle = wrap_angle(to.y.atan2(to.x) - ego.vehicle.heading).abs();
    if angle > 150f64.to_radians() {
        return CollisionType::ActiveRear;
    }
    let k = ego.footprint().corners();
    if track.bbox().intersects_segment(k[0], k[1]) {
        return CollisionType::ActiveFront;
    }
    CollisionType::ActiveLateral
}

/// Whether all four ego corners lie on one lane/connector or on lanes directly connected to
/// one of them; otherwise the ego is changing lanes or off the road.
pub fn ego_in_one_lane(map: &Map, ego: &EgoState) -> bool {
    let corners = ego.footprint().corners();
    let sets: Vec<Vec<u64>> = corners
        .iter()
        .map(|c| map.lanes_at(*c).map(|l| l.id).collect())
        .collect();
    if sets.iter().any(|s| s.is_empty()) {
        return false;
    }
    sets[0].iter().any(|&cand| {
        sets.iter()
            .all(|s| s.iter().any(|&id| map.connected(cand, id)))
    })
}

pub fn is_at_fault(kind: CollisionType, map: &Map, ego: &EgoState) -> bool {
    match kind {
        CollisionType::ActiveFront | CollisionType::StoppedTrack => true,
        CollisionType::ActiveLateral => !ego_in_one_lane(map, ego),
        CollisionType::StoppedEgo | CollisionType::ActiveRear => false,
    }
}

/// Per-group thresholds: VRU 0, vehicle 0, object 1.
const THRESHOLDS: [f64; 3] = [0.0, 0.0, 1.0];

pub fn score_from_counts(at_fault: [usize; 3]) -> f64 {
    if at_fault.iter().all(|&n| n == 0) {
        return 1.0;
    }
    (0..3)
        .map(|g| (1.0 - at_fault[g] as f64 / (THRESHOLDS[g] + 1.0)).max(0.0))
        .product()
}

pub fn evaluate(map: &Map, ego: &[EgoState], agents: &[Vec<AgentObs>]) -> CollisionResult {
    let mut collided: HashSet<u64> = HashSet::new();
    let mut r = CollisionResult {
        at_fault_steps: vec![false; ego.len()],
        ..Default::default()
    };
    for (k, (e, objs)) in ego.iter().zip(agents).enumerate() {
        let fp = e.footprint();
        for o in objs {
            if collided.contains(&o.id) {
                continue;
            }
            let b = o.bbox();
            if fp.center.dist(b.center) > fp.radius() + b.radius() || !fp.intersects(&b) {
                continue;
            }
            collided.insert(o.id);
            let kind = classify(e, o);
            let fault = is_at_fault(kind, map, e);
            if fault {
                r.at_fault[group(o.category)] += 1;
                r.at_fault_steps[k] = true;
            }
            r.events.push((k, o.id, kind, fault));
        }
    }
    r.score = score_from_counts(r.at_fault);
    r
}
