//! ego_progress and ego_is_making_progress: progress of the ego centre and of the expert along
//! the expert's route, a chain of roadblocks each with one baseline (the route lane in it).
//! Within a roadblock progress is the change of the projection; moving on to a later roadblock
//! adds what remained of the previous baselines. ratio = 0 if ego < -2 m, else
//! min(1, max(ego, 2) / max(expert, 2)); 1 without a route. Making progress: ratio >= 0.2.

use super::super::geometry::P2;
use super::super::map::{LaneId, Map};
use super::super::scenario::EgoPose;
use super::super::vehicle::{EgoState, Pacifica, REAR_TO_CENTER};

pub const MIN_PROGRESS: f64 = 2.0;
pub const MAKING_PROGRESS_RATIO: f64 = 0.2;
/// How many roadblocks ahead a pose may jump within one step.
const LOOKAHEAD: usize = 3;

struct RouteChain<'a> {
    /// (roadblock, baseline lane).
    blocks: Vec<(u64, &'a super::super::map::Lane)>,
}

impl<'a> RouteChain<'a> {
    fn new(map: &'a Map, route: &[LaneId]) -> RouteChain<'a> {
        let mut blocks: Vec<(u64, &super::super::map::Lane)> = Vec::new();
        for id in route {
            if let Some(l) = map.lane(*id) {
                if blocks.last().is_none_or(|b| b.0 != l.roadblock) {
                    blocks.push((l.roadblock, l));
                }
            }
        }
        RouteChain { blocks }
    }

    fn contains(&self, map: &Map, i: usize, p: P2) -> bool {
        let rb = self.blocks[i].0;
        map.lanes_at(p).any(|l| l.roadblock == rb)
    }

    /// Total progress of a sequence of points along the chain.
    fn progress(&self, map: &Map, pts: &[P2]) -> f64 {
        let Some(&p0) = pts.first() else { return 0.0 };
        let n = self.blocks.len();
        let mut idx = (0..n)
            .find(|&i| self.contains(map, i, p0))
            .unwrap_or_else(|| {
                // Off the route at the start: the nearest baseline.
                (0..n)
                    .min_by(|&a, &b| {
                        let da = self.blocks[a].1.centerline.project(p0).distance;
                        let db = self.blocks[b].1.centerline.project(p0).distance;
                        da.total_cmp(&db)
                    })
                    .unwrap_or(0)
            });
        let mut s_prev = self.blocks[idx].1.centerline.project(p0).s;
        let mut total = 0.0;
        for &p in &pts[1..] {
            let next = if self.contains(map, idx, p) {
                idx
            } else {
                (idx + 1..(idx + 1 + LOOKAHEAD).min(n))
                    .find(|&i| self.contains(map, i, p))
                    .unwrap_or(idx)
            };
            let s = self.blocks[next].1.centerline.project(p).s;
            if next == idx {
                total += s - s_prev;
            } else {
                total += self.blocks[idx].1.centerline.length() - s_prev;
                for i in idx + 1..next {
                    total += self.blocks[i].1.centerline.length();
                }
                total += s;
                idx = next;
            }
            s_prev = s;
        }
        total
    }
}

/// Progress ratio of the ego against the expert.
pub fn progress_ratio(map: &Map, route: &[LaneId], ego: &[EgoState], expert: &[EgoPose]) -> f64 {
    let chain = RouteChain::new(map, route);
    if chain.blocks.is_empty() {
        return 1.0;
    }
    let ego_pts: Vec<P2> = ego.iter().map(|e| e.center()).collect();
    let exp_pts: Vec<P2> = expert
        .iter()
        .map(|e| {
            P2::new(
                e.x + REAR_TO_CENTER * e.heading.cos(),
                e.y + REAR_TO_CENTER * e.heading.sin(),
            )
        })
        .collect();
    ratio(chain.progress(map, &ego_pts), chain.progress(map, &exp_pts))
}

pub fn ratio(ego: f64, expert: f64) -> f64 {
    if ego < -MIN_PROGRESS {
        return 0.0;
    }
    (ego.max(MIN_PROGRESS) / expert.max(MIN_PROGRESS)).min(1.0)
}

pub fn making_progress(ratio: f64) -> f64 {
    if ratio >= MAKING_PROGRESS_RATIO {
        1.0
    } else {
        0.0
    }
}
