//! time_to_collision_within_bound: at each step, ego and relevant tracks are projected at
//! constant speed along their headings for 0.1 .. 2.9 s; the first overlap is the TTC.
//! Relative angles are measured from the ego's rear axle to the track's centre. Tracks count
//! when ahead (< 30 deg off the ego heading), or, when the ego's corners are not in one lane
//! (a lane change, or off the lanes) or its rear axle is in an intersection (here: on a lane
//! connector, the map having no intersection polygons), when not behind (<= 150 deg). Tracks
//! the ego has collided with, up to and including this step, are left out; static objects are
//! projected with speed 0. Steps with an at-fault collision have TTC 0; steps with no tracks
//! or a stopped ego (<= 0.005 m/s) keep the default of infinity. Score 1 iff every TTC
//! exceeds 0.95 s.

use super::super::geometry::{relative_angle, OrientedBox};
use super::super::map::Map;
use super::super::scenario::{AgentBox, AgentObs};
use super::super::vehicle::{EgoState, Pacifica};
use super::collisions::{self, rear_axle, CollisionResult};
use std::cell::OnceCell;
use std::collections::HashSet;

pub const HORIZON: f64 = 3.0;
pub const STEP: f64 = 0.1;
pub const LEAST_MIN_TTC: f64 = 0.95;
pub const STOPPED_SPEED: f64 = 0.005;
/// idm/utils.is_agent_ahead's default tolerance.
pub const AHEAD_ANGLE_DEG: f64 = 30.0;
/// idm/utils.is_agent_behind's default tolerance, shared with the collision classification.
pub use super::collisions::BEHIND_ANGLE_DEG;

/// Whether a track centred at `track` is one TTC looks at: ahead, or, with the wide cone,
/// anywhere not behind. Coincident points are neither (nuPlan's angle is NaN there).
pub fn in_view(ego: &EgoState, track: &AgentObs, wide_cone: bool) -> bool {
    let Some(angle) = relative_angle(rear_axle(ego), ego.vehicle.heading, track.bbox().center)
    else {
        return false;
    };
    angle < AHEAD_ANGLE_DEG.to_radians() || (wide_cone && angle <= BEHIND_ANGLE_DEG.to_radians())
}

/// Whether TTC widens to every track not behind: the ego's rear axle is in an intersection or
/// the ego is not in one lane (asked only when the first does not decide, as it is the costly
/// one over a run).
pub fn wide_cone(map: &Map, ego: &EgoState, in_one_lane: impl FnOnce() -> bool) -> bool {
    map.in_intersection(rear_axle(ego)) || !in_one_lane()
}

/// The speed a track is projected with: static objects (cones, barriers, ...) do not move
/// whatever velocity they report, as nuPlan projects only Agents with their speed.
pub fn projected_speed(track: &AgentObs) -> f64 {
    if track.category.is_agent() {
        track.speed()
    } else {
        0.0
    }
}

/// The projection times: numpy.arange(STEP, HORIZON, STEP), i.e. 0.1 .. 2.9 s.
fn projection_times() -> impl Iterator<Item = f64> {
    let n = ((HORIZON - STEP) / STEP).ceil() as usize;
    (0..n).map(|i| STEP + i as f64 * STEP)
}

/// The devkit's relevance prefilter: the track's box stretched over the horizon meets the
/// ego's (`ego_swept`).
fn may_meet(ego_swept: &OrientedBox, track: &AgentObs) -> bool {
    ego_swept.intersects(&track.bbox().elongated(projected_speed(track) * HORIZON))
}

/// TTC against `tracks` (already filtered): infinity when nothing is hit within the horizon,
/// `None` for a stopped ego.
pub fn ttc_among(ego: &EgoState, tracks: &[&AgentObs]) -> Option<f64> {
    let v = ego.vehicle.speed;
    if v <= STOPPED_SPEED {
        return None;
    }
    let fp = ego.footprint();
    let ego_swept = fp.elongated(v * HORIZON);
    let mut best = f64::INFINITY;
    for a in tracks {
        if !may_meet(&ego_swept, a) {
            continue;
        }
        let b = a.bbox();
        let va = projected_speed(a);
        for t in projection_times() {
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

/// TTC at one step for a single state, without run history: lane membership from this state
/// alone and no collided tracks left out. `None` if the ego is stopped or sees no objects;
/// otherwise infinity when nothing is hit (both score as infinity, as in nuPlan).
pub fn ttc_at(map: &Map, ego: &EgoState, agents: &[AgentObs]) -> Option<f64> {
    if agents.is_empty() {
        return None;
    }
    let wide = wide_cone(map, ego, || collisions::ego_in_one_lane(map, ego));
    let tracks: Vec<&AgentObs> = agents.iter().filter(|a| in_view(ego, a, wide)).collect();
    ttc_among(ego, &tracks)
}

/// The score over a run, given the steps with at-fault collisions; the collided tracks are
/// found again from the run (the same tracks the collision metric finds).
pub fn evaluate(
    map: &Map,
    ego: &[EgoState],
    agents: &[Vec<AgentObs>],
    at_fault_steps: &[bool],
) -> f64 {
    let collided: Vec<Vec<u64>> = collisions::new_collisions(ego, agents)
        .iter()
        .map(|hits| hits.iter().map(|o| o.id).collect())
        .collect();
    score(map, ego, agents, at_fault_steps, &collided)
}

/// The score over a run from the collision metric's result (its events name the collided
/// tracks, its at-fault steps force TTC 0).
pub fn evaluate_with_collisions(
    map: &Map,
    ego: &[EgoState],
    agents: &[Vec<AgentObs>],
    col: &CollisionResult,
) -> f64 {
    let mut collided: Vec<Vec<u64>> = vec![Vec::new(); ego.len()];
    for &(k, id, _, _) in &col.events {
        if let Some(v) = collided.get_mut(k) {
            v.push(id);
        }
    }
    score(map, ego, agents, &col.at_fault_steps, &collided)
}

fn score(
    map: &Map,
    ego: &[EgoState],
    agents: &[Vec<AgentObs>],
    at_fault_steps: &[bool],
    collided_at: &[Vec<u64>],
) -> f64 {
    // Lane membership needs the corner routes of the whole run; computed only if some step
    // has a track beside the ego that could be hit, the one case the wide cone decides.
    let in_lane: OnceCell<Vec<bool>> = OnceCell::new();
    let mut excluded: HashSet<u64> = HashSet::new();
    for (k, (e, objs)) in ego.iter().zip(agents).enumerate() {
        // A track collided with at this step is already out at this step.
        excluded.extend(collided_at.get(k).into_iter().flatten().copied());
        if at_fault_steps.get(k).copied().unwrap_or(false) {
            return 0.0;
        }
        if e.vehicle.speed <= STOPPED_SPEED {
            continue;
        }
        let ego_swept = e.footprint().elongated(e.vehicle.speed * HORIZON);
        let (mut tracks, side): (Vec<&AgentObs>, Vec<&AgentObs>) = objs
            .iter()
            .filter(|a| !excluded.contains(&a.id) && in_view(e, a, true))
            .partition(|a| in_view(e, a, false));
        let side_may_meet = side.iter().any(|a| may_meet(&ego_swept, a));
        let one_lane = || {
            in_lane
                .get_or_init(|| collisions::in_one_lane_per_step(map, ego))
                .get(k)
                .copied()
                .unwrap_or(false)
        };
        if side_may_meet && wide_cone(map, e, one_lane) {
            tracks.extend(side);
        }
        if tracks.is_empty() {
            continue;
        }
        if ttc_among(e, &tracks).is_some_and(|t| t <= LEAST_MIN_TTC) {
            return 0.0;
        }
    }
    1.0
}
