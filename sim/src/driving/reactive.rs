//! The reactive agents of CLS-R, built and moved as nuplan-devkit's `IDMAgents` observation
//! does it (idm_agents_builder, idm_agent, idm_agent_manager):
//!
//! - Which agents exist: the vehicles present at step 0 whose centre lies on a lane (or, off
//!   the lanes, in an intersection: a connector's polygon here, since our maps have no
//!   intersection layer), snapped onto that lane's baseline, and dropped if the snapped box
//!   overlaps the ego or an agent already placed. Vehicles that appear later, or sit off the
//!   lanes, are not simulated and not replayed. Beside them only the open-loop types are
//!   replayed from the log (pedestrians, barriers, construction signs, cones, generic
//!   objects): bicycles take no part in CLS-R. An agent farther than 100 m from the ego is
//!   removed for good.
//! - Route: the starting segment, extended while less than 20 m + v0 T of path is left,
//!   each time by the successor with the lowest curvature at its start (straightest), taking a
//!   connector with a traffic light only while it is green and any other one unless it is red.
//! - Leader: among the shapes touching the agent's path ahead (buffered by half its width,
//!   flat caps): the ego's box, replayed objects, the other agents' projected footprints
//!   (their box stretched v T forward along their path) and the stop lines of red connectors
//!   on its route, the one nearest to the agent's own projected footprint; its speed along
//!   the agent's heading (0 for stop lines and replayed objects). With none, the end of the
//!   agent's path is a stopped leader half a car length ahead.
//! - Motion: the IDM law with the gap floored at s0 and s* unclamped ([`IdmParams::accel`]),
//!   forward Euler moving with the old speed, the target speed read from the route's last
//!   segment's speed limit.

use super::geometry::{OrientedBox, Polyline, P2};
use super::idm::IdmParams;
use super::map::{Lane, LaneId, LaneKind, LightStatus, Map};
use super::occupancy::{trimmed, Shape};
use super::scenario::{AgentBox, AgentObs, AgentState, Category, Scenario};
use super::vehicle::{EGO_LENGTH, EGO_WIDTH, REAR_TO_CENTER};
use std::collections::{HashSet, VecDeque};

/// Path an agent keeps ahead beyond v0 T (m), the devkit's `minimum_path_length`.
pub const MINIMUM_PATH_LENGTH: f64 = 20.0;
/// Agents farther than this from the ego's centre are removed (m).
pub const RADIUS: f64 = 100.0;
/// Target speed until a segment's speed limit is read (m/s), the devkit's configuration.
pub const TARGET_VELOCITY: f64 = 10.0;
/// Route segments an agent remembers (for its red-light stop lines).
const MAX_ROUTE_LEN: usize = 5;
/// Route extensions in one step at most.
const MAX_ROUTE_EXTENSIONS: usize = 32;
/// Depth of the stop line put at a connector's start where the map gives it no polygon (m).
const STOP_LINE_DEPTH: f64 = 0.5;

/// The object types the devkit's CLS-R replays from the log (`open_loop_detections_types`).
pub fn replayed_in_reactive_mode(c: Category) -> bool {
    matches!(
        c,
        Category::Pedestrian
            | Category::Barrier
            | Category::CzoneSign
            | Category::TrafficCone
            | Category::GenericObject
    )
}

/// The ego as the agents see it at one step.
#[derive(Debug, Clone, Copy)]
pub struct EgoView {
    pub footprint: OrientedBox,
    /// Rear-axle speed and heading.
    pub speed: f64,
    pub heading: f64,
}

struct IdmAgent {
    track: usize,
    length: f64,
    width: f64,
    route: VecDeque<LaneId>,
    path: Polyline,
    progress: f64,
    velocity: f64,
    target_velocity: f64,
    /// The shape it holds in the occupancy map: its snapped box at first, then its projected
    /// footprint after each step.
    occupancy: Shape,
}

impl IdmAgent {
    fn bounded_progress(&self) -> f64 {
        self.progress.clamp(0.0, self.path.length())
    }

    fn bbox(&self) -> OrientedBox {
        let p = self.path.pose_at(self.bounded_progress());
        OrientedBox::new(P2::new(p.x, p.y), p.heading, self.length, self.width)
    }

    fn heading(&self) -> f64 {
        self.path.pose_at(self.bounded_progress()).heading
    }

    fn progress_to_go(&self) -> f64 {
        self.path.length() - self.progress
    }

    fn projected_footprint(&self, headway: f64) -> Shape {
        let start = self.progress - self.length / 2.0;
        let end = self.progress + self.length / 2.0 + self.velocity * headway;
        Shape::corridor(&self.path, start, end, self.width / 2.0)
            .union(Shape::from_box(&self.bbox()))
    }

    fn path_to_go(&self) -> Vec<P2> {
        let s = self.bounded_progress();
        let pts = trimmed(&self.path, s, self.path.length());
        if pts.is_empty() {
            let p = self.path.pose_at(s);
            return vec![P2::new(p.x, p.y)];
        }
        pts
    }

    /// Extends the route while the path left is short, through the straightest allowed
    /// successor.
    fn plan_route(&mut self, map: &Map, lights: &Lights, headway: f64) {
        // The guard ends a walk around a cycle of (near) zero-length lanes, which would never
        // make the path long enough.
        for _ in 0..MAX_ROUTE_EXTENSIONS {
            if self.progress_to_go() >= MINIMUM_PATH_LENGTH + self.target_velocity * headway {
                break;
            }
            let Some(end) = self.route.back().and_then(|id| map.lane(*id)) else {
                break;
            };
            let next = end
                .successors
                .iter()
                .filter_map(|id| map.lane(*id))
                .filter(|l| lights.may_enter(l.id) && l.centerline.length() > 1e-3)
                .min_by(|a, b| {
                    start_curvature(&a.centerline)
                        .abs()
                        .total_cmp(&start_curvature(&b.centerline).abs())
                });
            let Some(next) = next else { break };
            let mut pts = self.path_to_go();
            pts.extend(next.centerline.points.iter().copied());
            self.path = Polyline::new(pts);
            self.progress = 0.0;
            if self.route.len() == MAX_ROUTE_LEN {
                self.route.pop_front();
            }
            self.route.push_back(next.id);
        }
    }
}

/// Curvature at a baseline's start as the devkit estimates it (`estimate_curvature_along_path`
/// at arc length 0 with a 2 m step): the circle through the points at 0, 2 and 4 m (or at 0,
/// L/2 and L on a baseline shorter than 4 m), 0 where the three are (nearly) collinear.
fn start_curvature(line: &Polyline) -> f64 {
    let len = line.length();
    let step = if len < 4.0 { len / 2.0 } else { 2.0 };
    let at = |s: f64| {
        let p = line.pose_at(s);
        P2::new(p.x, p.y)
    };
    let (a, b, c) = (at(0.0), at(step), at(2.0 * step));
    let (ab, bc, ca) = (a.dist(b), b.dist(c), c.dist(a));
    // Heron: 16 area^2 = (ab + bc + ca)(-ab + bc + ca)(ab - bc + ca)(ab + bc - ca).
    let heron = (ab + bc + ca) * (-ab + bc + ca) * (ab - bc + ca) * (ab + bc - ca);
    if heron < 1e-6 {
        return 0.0;
    }
    let sign = b.sub(a).cross(c.sub(b)).signum();
    sign * heron.sqrt() / (ab * bc * ca)
}

/// Light states at one step, and which connectors have a light at all.
struct Lights<'a> {
    now: &'a [(LaneId, LightStatus)],
    signalled: &'a HashSet<LaneId>,
}

impl Lights<'_> {
    fn status(&self, id: LaneId) -> Option<LightStatus> {
        self.now.iter().find(|(c, _)| *c == id).map(|x| x.1)
    }
    /// A signalled connector only on green; anything else unless red.
    fn may_enter(&self, id: LaneId) -> bool {
        if self.signalled.contains(&id) {
            self.status(id) == Some(LightStatus::Green)
        } else {
            self.status(id) != Some(LightStatus::Red)
        }
    }
    fn red(&self, id: LaneId) -> bool {
        self.status(id) == Some(LightStatus::Red)
    }
}

/// What holds a place in the occupancy map besides the agents.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Occupant {
    Ego,
    Replayed,
    StopLine,
    Agent(usize),
}

pub struct ReactiveAgents {
    agents: Vec<IdmAgent>,
    /// Connectors with a traffic light (in the map or in the scenario's light states).
    signalled: HashSet<LaneId>,
    params: IdmParams,
}

impl ReactiveAgents {
    pub fn new(scenario: &Scenario) -> ReactiveAgents {
        let map = &scenario.map;
        let e0 = scenario.ego_initial();
        let (sin, cos) = e0.heading.sin_cos();
        let ego_box = OrientedBox::new(
            P2::new(e0.x + REAR_TO_CENTER * cos, e0.y + REAR_TO_CENTER * sin),
            e0.heading,
            EGO_LENGTH,
            EGO_WIDTH,
        );
        // The ego and the replayed objects at step 0 hold their places before any vehicle is
        // put on its lane, as in the devkit's builder.
        let mut placed: Vec<Shape> = std::iter::once(Shape::from_box(&ego_box))
            .chain(
                scenario
                    .agents_at(0)
                    .iter()
                    .filter(|o| replayed_in_reactive_mode(o.category))
                    .map(|o| Shape::from_box(&o.bbox())),
            )
            .collect();
        let mut agents = Vec::new();
        for (i, t) in scenario.tracks.iter().enumerate() {
            if t.category != Category::Vehicle {
                continue;
            }
            let Some(s0) = t.at(0) else { continue };
            let c = P2::new(s0.x, s0.y);
            let Some(lane) = starting_segment(map, c, s0.heading) else {
                continue;
            };
            let progress = lane.centerline.project(c).s;
            let pose = lane.centerline.pose_at(progress);
            let snapped =
                OrientedBox::new(P2::new(pose.x, pose.y), pose.heading, t.length, t.width);
            let shape = Shape::from_box(&snapped);
            if placed.iter().any(|p| p.intersects(&shape)) {
                continue;
            }
            placed.push(shape.clone());
            agents.push(IdmAgent {
                track: i,
                length: t.length,
                width: t.width,
                route: VecDeque::from([lane.id]),
                path: lane.centerline.clone(),
                progress,
                velocity: s0.speed(),
                // The devkit's builder: the starting segment's limit, else the configured speed.
                target_velocity: lane
                    .speed_limit
                    .filter(|v| *v > 0.0)
                    .unwrap_or(TARGET_VELOCITY),
                occupancy: shape,
            });
        }
        let mut signalled: HashSet<LaneId> = map
            .traffic_lights
            .iter()
            .map(|l| l.lane_connector)
            .collect();
        // A map property in the devkit (a connector with traffic-light stop lines), not
        // whatever statuses a log happens to carry.
        signalled.extend(map.stop_lines.iter().filter_map(|s| s.lane_connector));
        ReactiveAgents {
            agents,
            signalled,
            params: IdmParams::AGENTS,
        }
    }

    /// How many vehicles are simulated now.
    pub fn len(&self) -> usize {
        self.agents.len()
    }

    pub fn is_empty(&self) -> bool {
        self.agents.is_empty()
    }

    /// The objects at `step`: the simulated vehicles where they are now, and the open-loop
    /// types from the log.
    pub fn observe(&self, scenario: &Scenario, step: usize) -> Vec<AgentObs> {
        let mut out: Vec<AgentObs> = self
            .agents
            .iter()
            .map(|a| {
                let t = &scenario.tracks[a.track];
                let b = a.bbox();
                AgentObs {
                    id: t.id,
                    category: t.category,
                    state: AgentState {
                        x: b.center.x,
                        y: b.center.y,
                        heading: b.heading,
                        vx: a.velocity * b.heading.cos(),
                        vy: a.velocity * b.heading.sin(),
                    },
                    length: a.length,
                    width: a.width,
                }
            })
            .collect();
        out.extend(
            scenario
                .agents_at(step)
                .into_iter()
                .filter(|o| replayed_in_reactive_mode(o.category)),
        );
        out
    }

    /// Advances every agent by `dt`. `lights` and `replayed` are the next step's, as the
    /// devkit's observation update reads them; `ego` is the ego before its own move.
    pub fn step(
        &mut self,
        map: &Map,
        ego: EgoView,
        lights: &[(LaneId, LightStatus)],
        replayed: &[AgentObs],
        dt: f64,
    ) {
        let ego_center = ego.footprint.center;
        self.agents
            .retain(|a| a.bbox().center.dist(ego_center) <= RADIUS);
        let lights = Lights {
            now: lights,
            signalled: &self.signalled,
        };
        let fixed: Vec<(Occupant, Shape)> =
            std::iter::once((Occupant::Ego, Shape::from_box(&ego.footprint)))
                .chain(
                    replayed
                        .iter()
                        .filter(|o| replayed_in_reactive_mode(o.category))
                        .map(|o| (Occupant::Replayed, Shape::from_box(&o.bbox()))),
                )
                .collect();
        let headway = self.params.headway;
        for i in 0..self.agents.len() {
            self.agents[i].plan_route(map, &lights, headway);
            let a = &self.agents[i];
            let stop_lines: Vec<(Occupant, Shape)> = a
                .route
                .iter()
                .filter(|id| lights.red(**id))
                .flat_map(|id| stop_line_shapes(map, *id))
                .map(|s| (Occupant::StopLine, s))
                .collect();
            let corridor = Shape::corridor(
                &Polyline::new(a.path_to_go()),
                0.0,
                f64::INFINITY,
                a.width / 2.0,
            );
            let others = self
                .agents
                .iter()
                .enumerate()
                .filter(|(j, _)| *j != i)
                .map(|(j, o)| (Occupant::Agent(j), &o.occupancy));
            let nearest = fixed
                .iter()
                .chain(&stop_lines)
                .map(|(k, s)| (*k, s))
                .chain(others)
                .filter(|(_, s)| s.intersects(&corridor))
                .map(|(k, s)| (k, a.occupancy.distance(s)))
                .min_by(|x, y| x.1.total_cmp(&y.1));
            let heading = a.heading();
            let (gap, lead_speed) = match nearest {
                Some((who, distance)) => {
                    let along = |v: f64, h: f64| v * super::geometry::wrap_angle(h - heading).cos();
                    let v = match who {
                        // The devkit takes the norm of the rear axle's velocity: never negative.
                        Occupant::Ego => along(ego.speed.abs(), ego.heading),
                        Occupant::Agent(j) => {
                            let o = &self.agents[j];
                            along(o.velocity, o.heading())
                        }
                        Occupant::Replayed | Occupant::StopLine => 0.0,
                    };
                    (distance, v)
                }
                // Free road: the path's end is a stopped car, measured from our centre less
                // half our length.
                None => (a.progress_to_go() - a.length / 2.0, 0.0),
            };
            let a = &mut self.agents[i];
            if let Some(limit) = a
                .route
                .back()
                .and_then(|id| map.lane(*id))
                .and_then(|l| l.speed_limit)
                .filter(|v| *v > 0.0)
            {
                a.target_velocity = limit;
            }
            let acc = self
                .params
                .accel(a.velocity, a.target_velocity, Some((gap, lead_speed)));
            a.progress += dt * a.velocity;
            a.velocity = (a.velocity + dt * acc).max(0.0);
            a.occupancy = a.projected_footprint(headway);
        }
    }
}

/// The segment an agent starts on: among the lanes containing its centre (or, on none, the
/// connectors containing it), the one whose baseline heading is closest to the agent's. The
/// devkit compares raw heading differences without wrapping them; so do we, to pick the same.
fn starting_segment(map: &Map, c: P2, heading: f64) -> Option<&Lane> {
    let here: Vec<&Lane> = map.lanes_at(c).collect();
    let lanes: Vec<&Lane> = here
        .iter()
        .copied()
        .filter(|l| l.kind == LaneKind::Lane)
        .collect();
    let pool = if lanes.is_empty() {
        here.into_iter()
            .filter(|l| l.kind == LaneKind::Connector)
            .collect()
    } else {
        lanes
    };
    pool.into_iter().min_by(|a, b| {
        let da = (a.centerline.project(c).heading - heading).abs();
        let db = (b.centerline.project(c).heading - heading).abs();
        da.total_cmp(&db)
    })
}

/// The stop lines guarding `connector`; where the map has none with a polygon, a strip across
/// the connector's start.
fn stop_line_shapes(map: &Map, connector: LaneId) -> Vec<Shape> {
    let own: Vec<Shape> = map
        .stop_lines
        .iter()
        .filter(|s| s.lane_connector == Some(connector) && s.polygon.len() >= 3)
        .map(|s| Shape::from_polygon(&s.polygon))
        .collect();
    if !own.is_empty() {
        return own;
    }
    let Some(lane) = map.lane(connector) else {
        return Vec::new();
    };
    let p = lane.centerline.pose_at(0.0);
    let (sin, cos) = p.heading.sin_cos();
    let half = STOP_LINE_DEPTH / 2.0;
    let width = lane.left.project(P2::new(p.x, p.y)).distance
        + lane.right.project(P2::new(p.x, p.y)).distance;
    vec![Shape::from_box(&OrientedBox::new(
        P2::new(p.x + half * cos, p.y + half * sin),
        p.heading,
        STOP_LINE_DEPTH,
        if width.is_finite() {
            width.max(1.0)
        } else {
            1.0
        },
    ))]
}
