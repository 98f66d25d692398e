//! The diffusion planner's view of a driving scene (REFERENCE §3a, Diffusion Planner's inputs):
//! fixed-size arrays in the ego frame (origin at the rear axle, x along its heading), zeros
//! where nothing is, built from what robot's planner interface gives (the ego, the objects now
//! and in the frames a [`SceneHistory`] kept, the lights, a `MapView` and the route).
//!
//! - ego: speed, acceleration, steering angle and rate, yaw rate and acceleration;
//! - neighbours: the nearest agents (vehicles, pedestrians, bicycles) within the radius, each
//!   over the last `history` frames (oldest first): x, y, cos, sin, vx, vy, width, length and
//!   a one-hot of the three kinds;
//! - static objects: the nearest cones, barriers, construction signs and generic objects: x, y,
//!   cos, sin, width, length and a one-hot of the four kinds;
//! - lanes: the nearest lanes and connectors, each resampled to `lane_points` points along its
//!   baseline: x, y, the step to the next point, the offsets to the left and right boundaries
//!   and a one-hot of its traffic light (green, yellow, red, unknown; zeros if it has none),
//!   with the speed limit that applies beside it (limit, present);
//! - route lanes: the route's lanes within the radius, in route order, with the same features.
//!
//! The future the planner learns to produce is [`future_target`]: the ego's next poses as (x, y,
//! cos, sin) in the same frame.

use rudder_robot::driving::{
    AgentObs, Category, EgoPose, EgoState, LaneId, LightStatus, MapView, P2,
};
use std::collections::VecDeque;

// The per-entity feature sizes are the network's contract; it owns them.
pub use rudder_tune::models::diffusion_planner::{
    EGO_FEATURES, FUTURE_FEATURES, LANE_FEATURES, NEIGHBOUR_FEATURES, STATIC_FEATURES,
};

/// Array sizes (Diffusion Planner's by default).
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct SceneConfig {
    pub neighbours: usize,
    /// Frames of neighbour history, the current one included (21 = 2 s at 10 Hz).
    pub history: usize,
    pub static_objects: usize,
    pub lanes: usize,
    pub route_lanes: usize,
    pub lane_points: usize,
    /// Objects and lanes farther than this from the ego are left out (m).
    pub radius: f64,
    /// Future poses the planner produces (80 = 8 s at 10 Hz).
    pub future: usize,
}

impl Default for SceneConfig {
    fn default() -> Self {
        SceneConfig {
            neighbours: 32,
            history: 21,
            static_objects: 5,
            lanes: 70,
            route_lanes: 25,
            lane_points: 20,
            radius: 100.0,
            future: 80,
        }
    }
}

impl SceneConfig {
    /// Shapes of the arrays of one scene, by name (the data set's and the model's contract).
    pub fn shapes(&self) -> Vec<(&'static str, Vec<usize>)> {
        vec![
            ("ego", vec![EGO_FEATURES]),
            (
                "neighbours",
                vec![self.neighbours, self.history, NEIGHBOUR_FEATURES],
            ),
            ("static_objects", vec![self.static_objects, STATIC_FEATURES]),
            ("lanes", vec![self.lanes, self.lane_points, LANE_FEATURES]),
            ("lane_limits", vec![self.lanes, 2]),
            (
                "route_lanes",
                vec![self.route_lanes, self.lane_points, LANE_FEATURES],
            ),
        ]
    }
}

/// One scene's arrays, row-major, in [`SceneConfig::shapes`] order.
#[derive(Debug, Clone, PartialEq)]
pub struct Scene {
    pub ego: Vec<f32>,
    pub neighbours: Vec<f32>,
    pub static_objects: Vec<f32>,
    pub lanes: Vec<f32>,
    pub lane_limits: Vec<f32>,
    pub route_lanes: Vec<f32>,
}

impl Scene {
    pub fn arrays(&self) -> [&[f32]; 6] {
        [
            &self.ego,
            &self.neighbours,
            &self.static_objects,
            &self.lanes,
            &self.lane_limits,
            &self.route_lanes,
        ]
    }
}

/// The objects of the last frames, newest last, as a planner sees them one step at a time.
#[derive(Debug, Clone, Default)]
pub struct SceneHistory {
    frames: VecDeque<Vec<AgentObs>>,
    capacity: usize,
}

impl SceneHistory {
    pub fn new(frames: usize) -> SceneHistory {
        SceneHistory {
            frames: VecDeque::with_capacity(frames),
            capacity: frames.max(1),
        }
    }

    pub fn push(&mut self, agents: &[AgentObs]) {
        if self.frames.len() == self.capacity {
            self.frames.pop_front();
        }
        self.frames.push_back(agents.to_vec());
    }

    pub fn current(&self) -> &[AgentObs] {
        self.frames.back().map(|v| v.as_slice()).unwrap_or(&[])
    }

    /// `id`'s state `back` frames ago (0 = now).
    fn state_of(&self, id: u64, back: usize) -> Option<&AgentObs> {
        let n = self.frames.len();
        if back >= n {
            return None;
        }
        self.frames[n - 1 - back].iter().find(|a| a.id == id)
    }
}

/// The ego frame: map points and headings to the rear axle's frame.
#[derive(Debug, Clone, Copy)]
pub struct EgoFrame {
    origin: P2,
    cos: f64,
    sin: f64,
    heading: f64,
}

impl EgoFrame {
    pub fn new(origin: P2, heading: f64) -> EgoFrame {
        EgoFrame {
            origin,
            cos: heading.cos(),
            sin: heading.sin(),
            heading,
        }
    }

    pub fn point(&self, p: P2) -> (f64, f64) {
        let d = p.sub(self.origin);
        (
            self.cos * d.x + self.sin * d.y,
            -self.sin * d.x + self.cos * d.y,
        )
    }

    pub fn vector(&self, x: f64, y: f64) -> (f64, f64) {
        (self.cos * x + self.sin * y, -self.sin * x + self.cos * y)
    }

    pub fn heading(&self, h: f64) -> f64 {
        h - self.heading
    }

    /// Back from the ego frame to the map frame.
    pub fn to_map(&self, x: f64, y: f64) -> P2 {
        P2::new(
            self.origin.x + self.cos * x - self.sin * y,
            self.origin.y + self.sin * x + self.cos * y,
        )
    }
}

/// Builds the scene around `ego`.
pub fn build_scene<M: MapView + ?Sized>(
    cfg: &SceneConfig,
    ego: &EgoState,
    history: &SceneHistory,
    lights: &[(LaneId, LightStatus)],
    map: &M,
    route: &[LaneId],
) -> Scene {
    let v = &ego.vehicle;
    let here = P2::new(v.x, v.y);
    let frame = EgoFrame::new(here, v.heading);
    let ego_features = vec![
        v.speed as f32,
        v.acceleration as f32,
        v.steering_angle as f32,
        ego.steering_rate as f32,
        ego.yaw_rate as f32,
        ego.yaw_acceleration as f32,
    ];
    let dist = |a: &AgentObs| P2::new(a.state.x, a.state.y).dist(here);
    let mut near: Vec<&AgentObs> = history
        .current()
        .iter()
        .filter(|a| dist(a) <= cfg.radius)
        .collect();
    near.sort_by(|a, b| dist(a).total_cmp(&dist(b)).then(a.id.cmp(&b.id)));

    let mut neighbours = vec![0f32; cfg.neighbours * cfg.history * NEIGHBOUR_FEATURES];
    for (i, a) in near
        .iter()
        .filter(|a| a.category.is_agent())
        .take(cfg.neighbours)
        .enumerate()
    {
        for h in 0..cfg.history {
            let back = cfg.history - 1 - h;
            let Some(s) = history.state_of(a.id, back) else {
                continue;
            };
            let row =
                &mut neighbours[(i * cfg.history + h) * NEIGHBOUR_FEATURES..][..NEIGHBOUR_FEATURES];
            let (x, y) = frame.point(P2::new(s.state.x, s.state.y));
            let hd = frame.heading(s.state.heading);
            let (vx, vy) = frame.vector(s.state.vx, s.state.vy);
            let kind = match s.category {
                Category::Vehicle => 0,
                Category::Pedestrian => 1,
                _ => 2,
            };
            row[..8].copy_from_slice(&[
                x as f32,
                y as f32,
                hd.cos() as f32,
                hd.sin() as f32,
                vx as f32,
                vy as f32,
                s.width as f32,
                s.length as f32,
            ]);
            row[8 + kind] = 1.0;
        }
    }

    let mut static_objects = vec![0f32; cfg.static_objects * STATIC_FEATURES];
    for (i, a) in near
        .iter()
        .filter(|a| !a.category.is_agent())
        .take(cfg.static_objects)
        .enumerate()
    {
        let row = &mut static_objects[i * STATIC_FEATURES..][..STATIC_FEATURES];
        let (x, y) = frame.point(P2::new(a.state.x, a.state.y));
        let hd = frame.heading(a.state.heading);
        let kind = match a.category {
            Category::TrafficCone => 0,
            Category::Barrier => 1,
            Category::CzoneSign => 2,
            _ => 3,
        };
        row[..6].copy_from_slice(&[
            x as f32,
            y as f32,
            hd.cos() as f32,
            hd.sin() as f32,
            a.width as f32,
            a.length as f32,
        ]);
        row[6 + kind] = 1.0;
    }

    // Lanes by the distance of their nearest baseline point.
    let lane_dist = |id: LaneId| {
        map.lane_view(id).map_or(f64::INFINITY, |l| {
            l.centerline
                .iter()
                .map(|p| p.dist(here))
                .fold(f64::INFINITY, f64::min)
        })
    };
    let mut ids: Vec<(f64, LaneId)> = map
        .lane_ids_near(here, cfg.radius)
        .into_iter()
        .map(|id| (lane_dist(id), id))
        .filter(|(d, _)| *d <= cfg.radius)
        .collect();
    ids.sort_by(|a, b| a.0.total_cmp(&b.0).then(a.1.cmp(&b.1)));
    let per_lane = cfg.lane_points * LANE_FEATURES;
    let mut lanes = vec![0f32; cfg.lanes * per_lane];
    let mut lane_limits = vec![0f32; cfg.lanes * 2];
    for (i, (_, id)) in ids.iter().take(cfg.lanes).enumerate() {
        write_lane(
            map,
            *id,
            lights,
            &frame,
            cfg.lane_points,
            &mut lanes[i * per_lane..][..per_lane],
        );
        if let Some(limit) = map.speed_limit(*id) {
            lane_limits[2 * i] = limit as f32;
            lane_limits[2 * i + 1] = 1.0;
        }
    }
    let mut route_lanes = vec![0f32; cfg.route_lanes * per_lane];
    let on_route = route
        .iter()
        .filter(|id| lane_dist(**id) <= cfg.radius)
        .take(cfg.route_lanes);
    for (i, id) in on_route.enumerate() {
        write_lane(
            map,
            *id,
            lights,
            &frame,
            cfg.lane_points,
            &mut route_lanes[i * per_lane..][..per_lane],
        );
    }
    Scene {
        ego: ego_features,
        neighbours,
        static_objects,
        lanes,
        lane_limits,
        route_lanes,
    }
}

/// `points` evenly spaced by arc length along `line` (its ends included).
pub fn resample(line: &[P2], points: usize) -> Vec<P2> {
    if line.is_empty() || points == 0 {
        return Vec::new();
    }
    let mut cum = vec![0.0];
    for w in line.windows(2) {
        cum.push(cum[cum.len() - 1] + w[0].dist(w[1]));
    }
    let total = cum[cum.len() - 1];
    (0..points)
        .map(|k| {
            let s = if points == 1 {
                0.0
            } else {
                total * k as f64 / (points - 1) as f64
            };
            let i = cum
                .partition_point(|c| *c <= s)
                .clamp(1, line.len().max(2) - 1);
            if line.len() == 1 {
                return line[0];
            }
            let (a, b) = (line[i - 1], line[i]);
            let seg = (cum[i] - cum[i - 1]).max(1e-12);
            let u = ((s - cum[i - 1]) / seg).clamp(0.0, 1.0);
            a.add(b.sub(a).scale(u))
        })
        .collect()
}

fn write_lane<M: MapView + ?Sized>(
    map: &M,
    id: LaneId,
    lights: &[(LaneId, LightStatus)],
    frame: &EgoFrame,
    points: usize,
    out: &mut [f32],
) {
    let Some(lane) = map.lane_view(id) else {
        return;
    };
    let c = resample(lane.centerline, points);
    let l = resample(lane.left, points);
    let r = resample(lane.right, points);
    if c.len() != points || l.len() != points || r.len() != points {
        return;
    }
    let light = lights.iter().find(|(lc, _)| *lc == id).map(|x| x.1);
    for k in 0..points {
        let row = &mut out[k * LANE_FEATURES..][..LANE_FEATURES];
        let (x, y) = frame.point(c[k]);
        // The step to the next point; the last point repeats the step into it.
        let (from, to) = if k + 1 < points {
            (c[k], c[k + 1])
        } else {
            (c[k.saturating_sub(1)], c[k])
        };
        let (dx, dy) = frame.vector(to.x - from.x, to.y - from.y);
        let (lx, ly) = frame.vector(l[k].x - c[k].x, l[k].y - c[k].y);
        let (rx, ry) = frame.vector(r[k].x - c[k].x, r[k].y - c[k].y);
        row[..8].copy_from_slice(&[
            x as f32, y as f32, dx as f32, dy as f32, lx as f32, ly as f32, rx as f32, ry as f32,
        ]);
        if let Some(st) = light {
            let j = match st {
                LightStatus::Green => 0,
                LightStatus::Yellow => 1,
                LightStatus::Red => 2,
                LightStatus::Unknown => 3,
            };
            row[8 + j] = 1.0;
        }
    }
}

/// The ego's next `cfg.future` poses after `now` as (x, y, cos, sin) in `now`'s frame, and a
/// mask that is 1 where the log has the pose (a scenario's last seconds have fewer).
pub fn future_target(cfg: &SceneConfig, now: &EgoPose, future: &[EgoPose]) -> (Vec<f32>, Vec<f32>) {
    let frame = EgoFrame::new(P2::new(now.x, now.y), now.heading);
    let mut target = vec![0f32; cfg.future * FUTURE_FEATURES];
    let mut mask = vec![0f32; cfg.future];
    for (k, p) in future.iter().take(cfg.future).enumerate() {
        let (x, y) = frame.point(P2::new(p.x, p.y));
        let h = frame.heading(p.heading);
        target[k * FUTURE_FEATURES..][..FUTURE_FEATURES].copy_from_slice(&[
            x as f32,
            y as f32,
            h.cos() as f32,
            h.sin() as f32,
        ]);
        mask[k] = 1.0;
    }
    (target, mask)
}
