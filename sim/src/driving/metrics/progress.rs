//! ego_progress and ego_is_making_progress: progress of the ego centre and of the expert along
//! the expert's route, a chain of roadblocks each with one baseline (the route lane in it), as
//! ego_progress_along_expert_route's PerFrameProgressAlongRouteComputer measures it. Within the
//! current roadblock progress is the change of the projection on its baseline. A point outside
//! it is looked for in every later roadblock of the route, in order; found, the step adds what
//! remained of the current baseline, the skipped roadblocks' baselines (between the projections
//! of the neighbouring baselines' end and start points) and the new baseline's projection
//! beyond the current baseline's end point; not found (off the route, or back in an earlier
//! roadblock), the step adds 0. ratio = 0 if ego < -2 m, else
//! min(1, max(ego, 2) / max(expert, 2)); 1 without a route. Making progress: ratio >= 0.2.

use super::super::geometry::P2;
use super::super::map::{Lane, LaneId, Map};
use super::super::scenario::EgoPose;
use super::super::vehicle::{EgoState, Pacifica, REAR_TO_CENTER};

pub const MIN_PROGRESS: f64 = 2.0;
pub const MAKING_PROGRESS_RATIO: f64 = 0.2;

struct RouteChain<'a> {
    /// (roadblock, baseline lane).
    blocks: Vec<(u64, &'a Lane)>,
}

fn first_point(l: &Lane) -> P2 {
    l.centerline.points.first().copied().unwrap_or_default()
}

fn last_point(l: &Lane) -> P2 {
    l.centerline.points.last().copied().unwrap_or_default()
}

/// Distance along `l`'s baseline of the point closest to `p` (shapely's project).
fn along(l: &Lane, p: P2) -> f64 {
    l.centerline.project(p).s
}

impl<'a> RouteChain<'a> {
    fn new(map: &'a Map, route: &[LaneId]) -> RouteChain<'a> {
        let mut blocks: Vec<(u64, &Lane)> = Vec::new();
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

    /// Where measuring starts: nuPlan's route begins at the expert's first pose, so the first
    /// roadblock containing the first point stands in for its head; off the route, the
    /// nearest baseline.
    fn start_block(&self, map: &Map, p0: P2) -> usize {
        (0..self.blocks.len())
            .find(|&i| self.contains(map, i, p0))
            .unwrap_or_else(|| {
                (0..self.blocks.len())
                    .min_by(|&a, &b| {
                        let da = self.blocks[a].1.centerline.project(p0).distance;
                        let db = self.blocks[b].1.centerline.project(p0).distance;
                        da.total_cmp(&db)
                    })
                    .unwrap_or(0)
            })
    }

    /// compute_progress_for_skipped_road_block for roadblock `i`, entered after `before`:
    /// from the projection of `before`'s end to that of the next baseline's start.
    fn skipped_progress(&self, before: usize, i: usize) -> f64 {
        let skipped = self.blocks[i].1;
        let entry = along(skipped, last_point(self.blocks[before].1));
        let exit = self
            .blocks
            .get(i + 1)
            .map(|b| along(skipped, first_point(b.1)))
            .unwrap_or(entry);
        exit - entry
    }

    /// Total progress of a sequence of points along the chain.
    fn progress(&self, map: &Map, pts: &[P2]) -> f64 {
        let Some(&p0) = pts.first() else { return 0.0 };
        let mut cur = self.start_block(map, p0);
        let mut prev = along(self.blocks[cur].1, p0);
        let mut total = 0.0;
        for &p in &pts[1..] {
            if self.contains(map, cur, p) {
                let now = along(self.blocks[cur].1, p);
                total += now - prev;
                prev = now;
                continue;
            }
            let Some(next) = (cur + 1..self.blocks.len()).find(|&i| self.contains(map, i, p))
            else {
                continue;
            };
            let skipped: f64 = (cur + 1..next)
                .map(|i| self.skipped_progress(i - 1, i))
                .sum();
            let (old, new) = (self.blocks[cur].1, self.blocks[next].1);
            let now = along(new, p);
            total +=
                (old.centerline.length() - prev) + (now - along(new, last_point(old))) + skipped;
            cur = next;
            prev = now;
        }
        total
    }
}

/// Progress along `route` (lanes, one per roadblock taken as its baseline) of a sequence of
/// points, in metres.
pub fn route_progress(map: &Map, route: &[LaneId], points: &[P2]) -> f64 {
    RouteChain::new(map, route).progress(map, points)
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
