//! The vector map: lanes and lane connectors (with baselines, boundaries, speed limits and
//! topology), drivable-area polygons, stop lines, crosswalks and traffic lights, plus a uniform
//! grid index so per-step queries (which lane is this corner on?) stay cheap. The JSON form of
//! [`Map`] is the "map file of ours" that sits beside a nuPlan log database.

use super::geometry::{point_in_polygon, point_polygon_distance, wrap_angle, Aabb, Polyline, P2};
use super::DrivingError;
use serde::{Deserialize, Serialize};
use std::collections::HashMap;

// Ids, lane kinds and light states are what planners see of the map (robot crate).
pub use rudder_robot::driving::{LaneId, LaneKind, LightStatus};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Lane {
    pub id: LaneId,
    pub kind: LaneKind,
    /// Roadblock (for lanes) or roadblock connector (for connectors) the lane belongs to;
    /// progress is measured per roadblock, as in nuPlan.
    pub roadblock: u64,
    pub centerline: Polyline,
    pub left: Polyline,
    pub right: Polyline,
    /// m/s; `None` where the map has no limit.
    pub speed_limit: Option<f64>,
    pub successors: Vec<LaneId>,
    pub predecessors: Vec<LaneId>,
    #[serde(skip)]
    pub polygon: Vec<P2>,
    #[serde(skip)]
    bounds: Option<Aabb>,
}

impl Lane {
    /// A lane of constant `width` around `centerline`.
    pub fn from_centerline(
        id: LaneId,
        kind: LaneKind,
        roadblock: u64,
        centerline: Vec<P2>,
        width: f64,
        speed_limit: Option<f64>,
    ) -> Lane {
        let c = Polyline::new(centerline);
        let n = c.points.len();
        let mut left = Vec::with_capacity(n);
        let mut right = Vec::with_capacity(n);
        for i in 0..n {
            // Normal from the averaged neighbouring segment directions so corners do not pinch.
            let a = c.points[i.saturating_sub(1)];
            let b = c.points[(i + 1).min(n - 1)];
            let d = b.sub(a);
            let len = d.norm().max(1e-12);
            let nrm = P2::new(-d.y / len, d.x / len).scale(width / 2.0);
            left.push(c.points[i].add(nrm));
            right.push(c.points[i].sub(nrm));
        }
        let mut lane = Lane {
            id,
            kind,
            roadblock,
            centerline: c,
            left: Polyline::new(left),
            right: Polyline::new(right),
            speed_limit,
            successors: Vec::new(),
            predecessors: Vec::new(),
            polygon: Vec::new(),
            bounds: None,
        };
        lane.finish();
        lane
    }

    fn finish(&mut self) {
        self.centerline.rebuild();
        self.left.rebuild();
        self.right.rebuild();
        let mut poly = self.left.points.clone();
        poly.extend(self.right.points.iter().rev());
        self.bounds = Some(Aabb::of(&poly));
        self.polygon = poly;
    }

    pub fn bounds(&self) -> Aabb {
        self.bounds.unwrap_or_else(|| Aabb::of(&self.polygon))
    }

    pub fn contains(&self, p: P2) -> bool {
        self.bounds().contains(p, 0.0) && point_in_polygon(&self.polygon, p)
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StopLine {
    pub id: u64,
    pub polygon: Vec<P2>,
    /// The connector this stop line guards (its traffic light decides when to stop).
    pub lane_connector: Option<LaneId>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Crosswalk {
    pub id: u64,
    pub polygon: Vec<P2>,
}

/// A signal controlling one connector, cycling through `phases` (status, seconds) from
/// `offset_s` into the cycle at t = 0.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TrafficLight {
    pub lane_connector: LaneId,
    pub phases: Vec<(LightStatus, f64)>,
    pub offset_s: f64,
}

impl TrafficLight {
    pub fn status_at(&self, t: f64) -> LightStatus {
        let cycle: f64 = self.phases.iter().map(|p| p.1.max(0.0)).sum();
        if cycle <= 0.0 {
            return LightStatus::Unknown;
        }
        let mut u = (t + self.offset_s).rem_euclid(cycle);
        for (st, d) in &self.phases {
            if u < *d {
                return *st;
            }
            u -= d;
        }
        LightStatus::Unknown
    }
}

/// Uniform grid over the map; each cell lists the lanes and drivable areas whose bounds
/// overlap it.
#[derive(Debug, Clone, Default)]
struct Grid {
    origin: P2,
    cell: f64,
    nx: usize,
    ny: usize,
    lanes: Vec<Vec<u32>>,
    areas: Vec<Vec<u32>>,
}

impl Grid {
    fn cell_of(&self, p: P2) -> Option<usize> {
        if !p.is_finite() || self.nx == 0 {
            return None;
        }
        let ix = ((p.x - self.origin.x) / self.cell).floor();
        let iy = ((p.y - self.origin.y) / self.cell).floor();
        if ix < 0.0 || iy < 0.0 || ix >= self.nx as f64 || iy >= self.ny as f64 {
            return None;
        }
        Some(iy as usize * self.nx + ix as usize)
    }
    fn cells_of(&self, b: Aabb) -> impl Iterator<Item = usize> + '_ {
        let c = |v: f64, o: f64, n: usize| {
            (((v - o) / self.cell).floor().max(0.0) as usize).min(n.saturating_sub(1))
        };
        let x0 = c(b.min.x, self.origin.x, self.nx);
        let x1 = c(b.max.x, self.origin.x, self.nx);
        let y0 = c(b.min.y, self.origin.y, self.ny);
        let y1 = c(b.max.y, self.origin.y, self.ny);
        (y0..=y1).flat_map(move |y| (x0..=x1).map(move |x| y * self.nx + x))
    }
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Map {
    pub name: String,
    pub lanes: Vec<Lane>,
    /// Road segments, intersections, generic drivable areas and car parks, merged into one
    /// layer as nuPlan's drivable-area metric does.
    pub drivable_areas: Vec<Vec<P2>>,
    pub stop_lines: Vec<StopLine>,
    pub crosswalks: Vec<Crosswalk>,
    pub traffic_lights: Vec<TrafficLight>,
    #[serde(skip)]
    index: HashMap<LaneId, usize>,
    #[serde(skip)]
    grid: Grid,
}

const GRID_CELL: f64 = 10.0;
/// How close (m) to the previous step's connectors a point landing on another connector must
/// be to stay on them (route_extractor.get_route's filter for a trajectory grazing a
/// neighbouring connector).
const CONNECTOR_STICKINESS_M: f64 = 5.0;

/// Appends the ids of `new` not yet in `to`, keeping first-seen order.
fn push_new(to: &mut Vec<LaneId>, new: &[LaneId]) {
    for id in new {
        if !to.contains(id) {
            to.push(*id);
        }
    }
}

impl Map {
    /// Validates and indexes a map (ids unique, topology pointing at existing lanes, finite
    /// coordinates, lanes with at least two points).
    pub fn new(
        name: impl Into<String>,
        mut lanes: Vec<Lane>,
        drivable_areas: Vec<Vec<P2>>,
        stop_lines: Vec<StopLine>,
        crosswalks: Vec<Crosswalk>,
        traffic_lights: Vec<TrafficLight>,
    ) -> Result<Map, DrivingError> {
        for l in &mut lanes {
            l.finish();
        }
        let mut map = Map {
            name: name.into(),
            lanes,
            drivable_areas,
            stop_lines,
            crosswalks,
            traffic_lights,
            index: HashMap::new(),
            grid: Grid::default(),
        };
        map.build_index()?;
        Ok(map)
    }

    /// Links `from` -> `to` in both directions of the topology.
    pub fn connect(lanes: &mut [Lane], from: LaneId, to: LaneId) {
        for l in lanes.iter_mut() {
            if l.id == from && !l.successors.contains(&to) {
                l.successors.push(to);
            }
            if l.id == to && !l.predecessors.contains(&from) {
                l.predecessors.push(from);
            }
        }
    }

    fn build_index(&mut self) -> Result<(), DrivingError> {
        let bad = |what: String| DrivingError::Map(what);
        self.index.clear();
        for (i, l) in self.lanes.iter_mut().enumerate() {
            if l.centerline.points.len() < 2 {
                return Err(bad(format!(
                    "lane {} has fewer than 2 centreline points",
                    l.id
                )));
            }
            if l.centerline
                .points
                .iter()
                .chain(&l.left.points)
                .chain(&l.right.points)
                .any(|p| !p.is_finite())
            {
                return Err(bad(format!("lane {} has a non-finite coordinate", l.id)));
            }
            if let Some(v) = l.speed_limit {
                if !(v.is_finite() && v > 0.0) {
                    return Err(bad(format!("lane {} has speed limit {v}", l.id)));
                }
            }
            if l.polygon.is_empty() {
                l.finish();
            }
            if self.index.insert(l.id, i).is_some() {
                return Err(bad(format!("lane id {} appears twice", l.id)));
            }
        }
        for l in &self.lanes {
            for s in l.successors.iter().chain(&l.predecessors) {
                if !self.index.contains_key(s) {
                    return Err(bad(format!("lane {} links to unknown lane {s}", l.id)));
                }
            }
        }
        for a in &self.drivable_areas {
            if a.len() < 3 || a.iter().any(|p| !p.is_finite()) {
                return Err(bad("a drivable-area polygon is degenerate".into()));
            }
        }
        for t in &self.traffic_lights {
            if !self.index.contains_key(&t.lane_connector) {
                return Err(bad(format!(
                    "traffic light on unknown connector {}",
                    t.lane_connector
                )));
            }
        }
        let mut all = Vec::new();
        for l in &self.lanes {
            let b = l.bounds();
            all.push(b.min);
            all.push(b.max);
        }
        for a in &self.drivable_areas {
            all.extend(a.iter().copied());
        }
        if all.is_empty() {
            return Err(bad("map has no lanes".into()));
        }
        let b = Aabb::of(&all);
        let nx = (((b.max.x - b.min.x) / GRID_CELL).ceil() as usize).max(1);
        let ny = (((b.max.y - b.min.y) / GRID_CELL).ceil() as usize).max(1);
        if nx.saturating_mul(ny) > 4_000_000 {
            return Err(bad(format!("map spans {nx}x{ny} grid cells; too large")));
        }
        let mut grid = Grid {
            origin: b.min,
            cell: GRID_CELL,
            nx,
            ny,
            lanes: vec![Vec::new(); nx * ny],
            areas: vec![Vec::new(); nx * ny],
        };
        for (i, l) in self.lanes.iter().enumerate() {
            let cells: Vec<usize> = grid.cells_of(l.bounds()).collect();
            for c in cells {
                grid.lanes[c].push(i as u32);
            }
        }
        for (i, a) in self.drivable_areas.iter().enumerate() {
            let cells: Vec<usize> = grid.cells_of(Aabb::of(a)).collect();
            for c in cells {
                grid.areas[c].push(i as u32);
            }
        }
        self.grid = grid;
        Ok(())
    }

    /// Parses the JSON map file and indexes it.
    pub fn from_json(text: &str) -> Result<Map, DrivingError> {
        let m: Map =
            serde_json::from_str(text).map_err(|e| DrivingError::Map(format!("map JSON: {e}")))?;
        Map::new(
            m.name,
            m.lanes,
            m.drivable_areas,
            m.stop_lines,
            m.crosswalks,
            m.traffic_lights,
        )
    }

    pub fn to_json(&self) -> String {
        serde_json::to_string(self).unwrap_or_default()
    }

    pub fn lane(&self, id: LaneId) -> Option<&Lane> {
        self.index.get(&id).map(|&i| &self.lanes[i])
    }

    /// Lanes and connectors whose polygon contains `p`.
    pub fn lanes_at(&self, p: P2) -> impl Iterator<Item = &Lane> + '_ {
        let cell = self.grid.cell_of(p);
        cell.into_iter()
            .flat_map(move |c| self.grid.lanes[c].iter())
            .map(move |&i| &self.lanes[i as usize])
            .filter(move |l| l.contains(p))
    }

    /// Lanes and connectors whose bounds come within `radius` of `p`, each once (what a
    /// planner gathers around the ego).
    pub fn lanes_near(&self, p: P2, radius: f64) -> Vec<&Lane> {
        let b = Aabb {
            min: P2::new(p.x - radius, p.y - radius),
            max: P2::new(p.x + radius, p.y + radius),
        };
        let mut seen: Vec<u32> = Vec::new();
        for c in self.grid.cells_of(b) {
            for &i in &self.grid.lanes[c] {
                if !seen.contains(&i) && self.lanes[i as usize].bounds().contains(p, radius) {
                    seen.push(i);
                }
            }
        }
        seen.sort_unstable();
        seen.into_iter().map(|i| &self.lanes[i as usize]).collect()
    }

    pub fn on_any_lane(&self, p: P2) -> bool {
        self.lanes_at(p).next().is_some()
    }

    pub fn in_drivable_area_layer(&self, p: P2) -> bool {
        match self.grid.cell_of(p) {
            None => false,
            Some(c) => self.grid.areas[c]
                .iter()
                .any(|&i| point_in_polygon(&self.drivable_areas[i as usize], p)),
        }
    }

    /// Distance to the drivable-area layer, searched over the cells within `max` of `p`
    /// (returns infinity beyond that; callers only compare with small tolerances).
    pub fn distance_to_drivable_layer(&self, p: P2, max: f64) -> f64 {
        let b = Aabb {
            min: P2::new(p.x - max, p.y - max),
            max: P2::new(p.x + max, p.y + max),
        };
        let mut d = f64::INFINITY;
        let mut seen = Vec::new();
        for c in self.grid.cells_of(b) {
            for &i in &self.grid.areas[c] {
                if !seen.contains(&i) {
                    seen.push(i);
                    d = d.min(point_polygon_distance(&self.drivable_areas[i as usize], p));
                }
            }
            for &i in &self.grid.lanes[c] {
                let l = &self.lanes[i as usize];
                if l.bounds().contains(p, max) {
                    d = d.min(point_polygon_distance(&l.polygon, p));
                }
            }
        }
        d
    }

    /// The lane containing `p` whose direction best matches `heading`, for planners choosing
    /// where they are when several overlap (e.g. in intersections). nuPlan's metrics do not
    /// choose by heading: they follow the driven route ([`Map::driven_route`]).
    pub fn best_lane_at(&self, p: P2, heading: f64) -> Option<&Lane> {
        self.lanes_at(p).min_by(|a, b| {
            let da = wrap_angle(a.centerline.project(p).heading - heading).abs();
            let db = wrap_angle(b.centerline.project(p).heading - heading).abs();
            da.total_cmp(&db)
        })
    }

    /// The speed limit a planner should respect on `lane`: its own, or on a connector the
    /// largest of its own and its incoming and outgoing lanes' limits, skipping missing ones.
    /// This is not the speed_limit_compliance metric's rule (that one ignores the connector's
    /// own limit and gives none when a neighbour lacks one): see [`Map::route_speed_limit`].
    pub fn speed_limit_of(&self, lane: &Lane) -> Option<f64> {
        match lane.kind {
            LaneKind::Lane => lane.speed_limit,
            LaneKind::Connector => lane
                .predecessors
                .iter()
                .chain(&lane.successors)
                .filter_map(|id| self.lane(*id).and_then(|l| l.speed_limit))
                .chain(lane.speed_limit)
                .reduce(f64::max),
        }
    }

    /// Whether `a` and `b` are the same lane or directly linked.
    pub fn connected(&self, a: LaneId, b: LaneId) -> bool {
        a == b
            || self
                .lane(a)
                .is_some_and(|l| l.successors.contains(&b) || l.predecessors.contains(&b))
    }

    /// nuPlan's route objects at `p` (route_extractor.get_current_route_objects): the lane
    /// containing it, else every connector containing it (so a point on a lane never lists the
    /// connectors overlapping it). nuPlan raises when two lanes contain the point; lanes here
    /// only touch along shared edges, so the first in map order is taken.
    pub fn route_objects_at(&self, p: P2) -> Vec<LaneId> {
        if let Some(l) = self.lanes_at(p).find(|l| l.kind == LaneKind::Lane) {
            return vec![l.id];
        }
        self.lanes_at(p)
            .filter(|l| l.kind == LaneKind::Connector)
            .map(|l| l.id)
            .collect()
    }

    /// Whether `p` is in an intersection. The map has no intersection polygons, so a lane
    /// connector's polygon stands in for one (nuPlan's connectors are what run through them).
    pub fn in_intersection(&self, p: P2) -> bool {
        self.lanes_at(p).any(|l| l.kind == LaneKind::Connector)
    }

    /// The lanes/connectors a sequence of points drives through, one list per point, as
    /// nuPlan's route_extractor.get_route assigns them: a point keeps the previous point's
    /// objects that still contain it, or (when there was a single one) that object's successors
    /// containing it; otherwise the map is searched again, preferring connectors of the previous
    /// step within 5 m when the point lands on another connector. Lists of several connectors
    /// are then narrowed to the one driven into ([`Map::narrow_connector_lists`]).
    pub fn driven_route(&self, points: &[P2]) -> Vec<Vec<LaneId>> {
        let mut route: Vec<Vec<LaneId>> = Vec::with_capacity(points.len());
        let mut current: Vec<LaneId> = Vec::new();
        for (i, &p) in points.iter().enumerate() {
            if !current.is_empty() {
                current = self.objects_with_candidates(p, &current);
            }
            if current.is_empty() {
                current = self.route_objects_at(p);
                // nuPlan only applies this proximity rule from the third point on (`ind > 1`).
                if i > 1 {
                    if let Some(prev) = route.last() {
                        let lands_on_connector = self.first_is_connector(&current)
                            || (current.is_empty() && self.in_intersection(p));
                        if self.first_is_connector(prev) && lands_on_connector {
                            let near = self.within(prev, p, CONNECTOR_STICKINESS_M);
                            if !near.is_empty() {
                                current = near;
                            }
                        }
                    }
                }
            }
            route.push(current.clone());
        }
        self.narrow_connector_lists(route)
    }

    /// route_extractor.get_route_obj_with_candidates: the candidates containing `p`, or, when
    /// there is exactly one candidate and none contains `p`, its successors containing `p`.
    pub fn objects_with_candidates(&self, p: P2, candidates: &[LaneId]) -> Vec<LaneId> {
        let contains = |id: &LaneId| self.lane(*id).is_some_and(|l| l.contains(p));
        let found: Vec<LaneId> = candidates.iter().copied().filter(contains).collect();
        if !found.is_empty() || candidates.len() != 1 {
            return found;
        }
        self.lane(candidates[0])
            .map(|l| l.successors.iter().copied().filter(contains).collect())
            .unwrap_or_default()
    }

    fn first_is_connector(&self, objects: &[LaneId]) -> bool {
        objects
            .first()
            .and_then(|id| self.lane(*id))
            .is_some_and(|l| l.kind == LaneKind::Connector)
    }

    fn within(&self, objects: &[LaneId], p: P2, dist: f64) -> Vec<LaneId> {
        objects
            .iter()
            .copied()
            .filter(|id| {
                self.lane(*id)
                    .is_some_and(|l| point_polygon_distance(&l.polygon, p) < dist)
            })
            .collect()
    }

    /// route_extractor.remove_extra_lane_connectors, walking from the last point back: a list
    /// longer than the one after it that contains all of that one's objects becomes that one
    /// (also when that one is empty, as in nuPlan); a list followed by a lane keeps only that
    /// lane's predecessors, if any of them are in it.
    pub fn narrow_connector_lists(&self, route: Vec<Vec<LaneId>>) -> Vec<Vec<LaneId>> {
        let mut rev: Vec<Vec<LaneId>> = route.into_iter().rev().collect();
        for i in 1..rev.len() {
            let original = rev[i].clone();
            if original.len() <= 1 {
                continue;
            }
            let next = rev[i - 1].clone();
            if original.len() > next.len() && next.iter().all(|id| original.contains(id)) {
                rev[i] = next.clone();
            }
            let next_lane = next
                .first()
                .and_then(|id| self.lane(*id))
                .filter(|l| l.kind == LaneKind::Lane);
            if let Some(lane) = next_lane {
                let keep: Vec<LaneId> = original
                    .iter()
                    .copied()
                    .filter(|id| lane.predecessors.contains(id))
                    .collect();
                if !keep.is_empty() {
                    rev[i] = keep;
                }
            }
        }
        rev.reverse();
        rev
    }

    /// The route objects of each footprint corner over a run, as route_extractor.
    /// extract_corners_route assigns them: a corner keeps the candidates (every object some
    /// corner was on at the previous step) containing it, or searches the map. Corners are
    /// given and returned in nuPlan's order: front-left, rear-left, rear-right, front-right.
    pub fn corners_route(&self, footprints: &[[P2; 4]]) -> Vec<[Vec<LaneId>; 4]> {
        let mut out = Vec::with_capacity(footprints.len());
        let mut candidates: Vec<LaneId> = Vec::new();
        for (i, corners) in footprints.iter().enumerate() {
            let mut next_candidates: Vec<LaneId> = Vec::new();
            let mut objects: [Vec<LaneId>; 4] = Default::default();
            for (slot, &c) in objects.iter_mut().zip(corners) {
                let mut found = if candidates.is_empty() {
                    Vec::new()
                } else {
                    self.objects_with_candidates(c, &candidates)
                };
                if found.is_empty() {
                    found = self.route_objects_at(c);
                    // nuPlan grows the candidate set mid-step at its second sample only
                    // (`ind == 1`); kept so the corner lists match its own.
                    if i == 1 {
                        push_new(&mut candidates, &found);
                    }
                }
                push_new(&mut next_candidates, &found);
                *slot = found;
            }
            out.push(objects);
            candidates = next_candidates;
        }
        out
    }

    /// The speed limit speed_limit_compliance applies to the route objects under the ego
    /// centre: a lane's own limit; on connectors the largest limit among the incoming and
    /// outgoing lanes of all of them (never a connector's own limit), and none when any of those
    /// lanes has no limit. None for no objects.
    pub fn route_speed_limit(&self, objects: &[LaneId]) -> Option<f64> {
        let first = self.lane(*objects.first()?)?;
        if first.kind == LaneKind::Lane {
            return first.speed_limit;
        }
        let mut limits = Vec::new();
        for l in objects.iter().filter_map(|id| self.lane(*id)) {
            for n in l.successors.iter().chain(&l.predecessors) {
                limits.push(self.lane(*n).and_then(|x| x.speed_limit));
            }
        }
        // nuPlan's `all(speed_limits)` then `max`: one missing limit voids them all.
        let limits: Option<Vec<f64>> = limits.into_iter().collect();
        limits?.into_iter().reduce(f64::max)
    }

    pub fn light_at(&self, connector: LaneId, t: f64) -> Option<LightStatus> {
        self.traffic_lights
            .iter()
            .find(|l| l.lane_connector == connector)
            .map(|l| l.status_at(t))
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A lane, a connector and a lane in a row (limits 10, none, 15 m/s), for the map's and
    /// its view's tests.
    pub(crate) fn two_lanes() -> Map {
        let mut lanes = vec![
            Lane::from_centerline(
                1,
                LaneKind::Lane,
                10,
                vec![P2::new(0.0, 0.0), P2::new(50.0, 0.0)],
                3.5,
                Some(10.0),
            ),
            Lane::from_centerline(
                2,
                LaneKind::Connector,
                20,
                vec![P2::new(50.0, 0.0), P2::new(60.0, 0.0)],
                3.5,
                None,
            ),
            Lane::from_centerline(
                3,
                LaneKind::Lane,
                30,
                vec![P2::new(60.0, 0.0), P2::new(100.0, 0.0)],
                3.5,
                Some(15.0),
            ),
        ];
        Map::connect(&mut lanes, 1, 2);
        Map::connect(&mut lanes, 2, 3);
        Map::new("t", lanes, vec![], vec![], vec![], vec![]).unwrap()
    }

    #[test]
    fn lane_queries_and_connector_limit() {
        let m = two_lanes();
        assert_eq!(
            m.lanes_at(P2::new(10.0, 1.0))
                .map(|l| l.id)
                .collect::<Vec<_>>(),
            vec![1]
        );
        assert!(!m.on_any_lane(P2::new(10.0, 1.8)));
        let c = m.lane(2).unwrap();
        assert_eq!(m.speed_limit_of(c), Some(15.0));
        assert!(m.connected(1, 2) && !m.connected(1, 3));
        let back = Map::from_json(&m.to_json()).unwrap();
        assert_eq!(back.lanes_at(P2::new(70.0, 0.0)).count(), 1);
    }

    #[test]
    fn bad_topology_is_an_error() {
        let mut l = Lane::from_centerline(
            1,
            LaneKind::Lane,
            1,
            vec![P2::new(0.0, 0.0), P2::new(1.0, 0.0)],
            3.0,
            None,
        );
        l.successors.push(99);
        let e = Map::new("t", vec![l], vec![], vec![], vec![], vec![]).unwrap_err();
        assert!(e.to_string().contains("unknown lane 99"), "{e}");
    }

    #[test]
    fn light_phases_cycle() {
        let t = TrafficLight {
            lane_connector: 2,
            phases: vec![(LightStatus::Red, 5.0), (LightStatus::Green, 10.0)],
            offset_s: 0.0,
        };
        assert_eq!(t.status_at(4.9), LightStatus::Red);
        assert_eq!(t.status_at(5.1), LightStatus::Green);
        assert_eq!(t.status_at(15.1), LightStatus::Red);
    }
}
