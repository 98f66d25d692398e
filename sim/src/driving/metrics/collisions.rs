//! no_ego_at_fault_collisions: each step, every track not yet collided is tested against the
//! ego footprint; a collision is classified (stopped ego, stopped track, rear, front, lateral)
//! and counted when the ego is at fault: front and stopped-track collisions always, lateral
//! ones when the ego's corners are not in one lane (ego_lane_change's
//! timestamps_in_common_or_connected_route_objs, computed over the whole run).

use super::super::geometry::{relative_angle, P2};
use super::super::map::{LaneId, Map};
use super::super::scenario::{AgentBox, AgentObs, Category};
use super::super::vehicle::{EgoState, Pacifica};
use std::cell::OnceCell;
use std::collections::{BTreeSet, HashSet};

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
/// A track whose centre is more than this far from the ego heading, seen from the rear axle,
/// is behind (idm/utils.is_agent_behind).
pub const BEHIND_ANGLE_DEG: f64 = 150.0;

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

/// The ego's rear axle, the reference nuPlan measures relative angles from.
pub fn rear_axle(ego: &EgoState) -> P2 {
    P2::new(ego.vehicle.x, ego.vehicle.y)
}

/// Whether `to` is behind the ego: more than 150 deg off its heading, seen from the rear axle.
pub fn is_behind(ego: &EgoState, to: P2) -> bool {
    relative_angle(rear_axle(ego), ego.vehicle.heading, to)
        .is_some_and(|a| a > BEHIND_ANGLE_DEG.to_radians())
}

/// nuPlan's collision classification (no_ego_at_fault_collisions._get_collision_type).
pub fn classify(ego: &EgoState, track: &AgentObs) -> CollisionType {
    if ego.vehicle.speed <= STOPPED_SPEED {
        return CollisionType::StoppedEgo;
    }
    if !track.category.is_agent() || track.speed() <= STOPPED_SPEED {
        return CollisionType::StoppedTrack;
    }
    if is_behind(ego, track.bbox().center) {
        return CollisionType::ActiveRear;
    }
    let k = ego.footprint().corners();
    if track.bbox().intersects_segment(k[0], k[1]) {
        return CollisionType::ActiveFront;
    }
    CollisionType::ActiveLateral
}

/// The ego's corners in nuPlan's order: front-left, rear-left, rear-right, front-right.
pub fn corners_nuplan_order(ego: &EgoState) -> [P2; 4] {
    let k = ego.footprint().corners();
    [k[0], k[3], k[2], k[1]]
}

/// The lane(s) all four corners share or connect through
/// (route_extractor.extract_common_or_connecting_route_objs), given each corner's route
/// objects in nuPlan's order. `None` when some corners are off every lane/connector or the
/// corners are in unconnected lanes (a lane change); an empty set when all are off.
pub fn common_or_connected(map: &Map, corners: &[Vec<LaneId>; 4]) -> Option<BTreeSet<LaneId>> {
    let off = corners.iter().filter(|c| c.is_empty()).count();
    if off == 4 {
        return Some(BTreeSet::new());
    }
    if off > 0 {
        return None;
    }
    let sets: Vec<BTreeSet<LaneId>> = corners
        .iter()
        .map(|c| c.iter().copied().collect())
        .collect();
    let common: BTreeSet<LaneId> = sets[1..].iter().fold(sets[0].clone(), |acc, s| {
        acc.intersection(s).copied().collect()
    });
    if !common.is_empty() {
        return Some(common);
    }
    let connecting = connecting_objects(map, &sets);
    (!connecting.is_empty()).then_some(connecting)
}

/// route_extractor.get_connecting_route_object: the rear corners must share a lane or one
/// must be in the other's successor; then the lanes in both (front-left or its predecessors)
/// and (rear-right or its successors), and in both (front-right or its predecessors) and
/// (rear-left or its successors). Two connectors fed by the lane under the rear corners thus
/// connect through that lane.
fn connecting_objects(map: &Map, sets: &[BTreeSet<LaneId>]) -> BTreeSet<LaneId> {
    let (fl, rl, rr, fr) = (&sets[0], &sets[1], &sets[2], &sets[3]);
    let rr_ext = with_links(map, rr, |l| &l.successors);
    let rl_ext = with_links(map, rl, |l| &l.successors);
    let rear_linked =
        rl.intersection(&rr_ext).next().is_some() || rr.intersection(&rl_ext).next().is_some();
    if !rear_linked {
        return BTreeSet::new();
    }
    let fl_ext = with_links(map, fl, |l| &l.predecessors);
    let fr_ext = with_links(map, fr, |l| &l.predecessors);
    let left_diag: BTreeSet<LaneId> = fl_ext.intersection(&rr_ext).copied().collect();
    let right_diag: BTreeSet<LaneId> = fr_ext.intersection(&rl_ext).copied().collect();
    left_diag.intersection(&right_diag).copied().collect()
}

/// `ids` plus the lanes `links` names for each of them.
fn with_links(
    map: &Map,
    ids: &BTreeSet<LaneId>,
    links: impl Fn(&super::super::map::Lane) -> &Vec<LaneId>,
) -> BTreeSet<LaneId> {
    let mut out = ids.clone();
    for l in ids.iter().filter_map(|id| map.lane(*id)) {
        out.extend(links(l).iter().copied());
    }
    out
}

/// Per step, whether all four corners are in one lane or in connected lanes, over a whole run
/// (the corner route objects depend on the previous step, as in nuPlan).
pub fn in_one_lane_per_step(map: &Map, ego: &[EgoState]) -> Vec<bool> {
    let footprints: Vec<[P2; 4]> = ego.iter().map(corners_nuplan_order).collect();
    map.corners_route(&footprints)
        .iter()
        .map(|c| common_or_connected(map, c).is_some_and(|s| !s.is_empty()))
        .collect()
}

/// Whether all four corners lie in one lane or in connected lanes, for a single state (no
/// previous step to carry route objects from).
pub fn ego_in_one_lane(map: &Map, ego: &EgoState) -> bool {
    in_one_lane_per_step(map, std::slice::from_ref(ego))
        .first()
        .copied()
        .unwrap_or(false)
}

/// At fault given whether the ego was in one lane at the collision.
pub fn is_at_fault_when(kind: CollisionType, in_one_lane: bool) -> bool {
    match kind {
        CollisionType::ActiveFront | CollisionType::StoppedTrack => true,
        CollisionType::ActiveLateral => !in_one_lane,
        CollisionType::StoppedEgo | CollisionType::ActiveRear => false,
    }
}

/// At fault for a single state (lane membership without run history).
pub fn is_at_fault(kind: CollisionType, map: &Map, ego: &EgoState) -> bool {
    is_at_fault_when(kind, ego_in_one_lane(map, ego))
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

/// Per step, the tracks the ego touches for the first time in the run (a track collides once;
/// later overlaps with it are ignored, here and in TTC).
pub fn new_collisions<'a>(ego: &[EgoState], agents: &'a [Vec<AgentObs>]) -> Vec<Vec<&'a AgentObs>> {
    let mut collided: HashSet<u64> = HashSet::new();
    ego.iter()
        .zip(agents)
        .map(|(e, objs)| {
            let fp = e.footprint();
            let mut new = Vec::new();
            for o in objs {
                if collided.contains(&o.id) {
                    continue;
                }
                let b = o.bbox();
                if fp.center.dist(b.center) > fp.radius() + b.radius() || !fp.intersects(&b) {
                    continue;
                }
                collided.insert(o.id);
                new.push(o);
            }
            new
        })
        .collect()
}

pub fn evaluate(map: &Map, ego: &[EgoState], agents: &[Vec<AgentObs>]) -> CollisionResult {
    // Lane membership (corner routes over the whole run) only matters for lateral collisions.
    let in_lane: OnceCell<Vec<bool>> = OnceCell::new();
    let in_one_lane_at = |k: usize| {
        in_lane
            .get_or_init(|| in_one_lane_per_step(map, ego))
            .get(k)
            .copied()
            .unwrap_or(false)
    };
    let mut r = CollisionResult {
        at_fault_steps: vec![false; ego.len()],
        ..Default::default()
    };
    for (k, hits) in new_collisions(ego, agents).into_iter().enumerate() {
        let e = &ego[k];
        for o in hits {
            let kind = classify(e, o);
            let fault = match kind {
                CollisionType::ActiveLateral => is_at_fault_when(kind, in_one_lane_at(k)),
                _ => is_at_fault_when(kind, true),
            };
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
