//! The planner interface and the three baselines: log replay (the expert), constant velocity,
//! and nuPlan's IDM planner along the route.

use super::geometry::{wrap_angle, P2};
use super::idm::{find_leader, follow_lanes, IdmParams, LanePath, Obstacle};
use super::map::{LaneId, LightStatus, Map};
use super::scenario::{AgentObs, Scenario, DT, HISTORY_STEPS};
use super::vehicle::{EgoState, EGO_LENGTH, EGO_WIDTH, REAR_TO_CENTER};
use serde::{Deserialize, Serialize};
use std::collections::HashSet;

/// One planned rear-axle state at absolute simulation time `t` (s).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize, Default)]
pub struct TrajectoryPoint {
    pub t: f64,
    pub x: f64,
    pub y: f64,
    pub heading: f64,
    pub speed: f64,
}

/// A planned trajectory, time-ordered.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
pub struct Trajectory {
    pub points: Vec<TrajectoryPoint>,
}

impl Trajectory {
    pub fn end_time(&self) -> f64 {
        self.points.last().map(|p| p.t).unwrap_or(f64::NEG_INFINITY)
    }

    /// Linear interpolation in time (heading along the shorter arc), clamped to the ends.
    pub fn state_at(&self, t: f64) -> TrajectoryPoint {
        let pts = &self.points;
        match pts.len() {
            0 => TrajectoryPoint::default(),
            1 => pts[0],
            n => {
                if t <= pts[0].t {
                    return pts[0];
                }
                if t >= pts[n - 1].t {
                    return pts[n - 1];
                }
                let i = pts.partition_point(|p| p.t <= t).clamp(1, n - 1);
                let (a, b) = (pts[i - 1], pts[i]);
                let span = (b.t - a.t).max(1e-12);
                let u = (t - a.t) / span;
                TrajectoryPoint {
                    t,
                    x: a.x + u * (b.x - a.x),
                    y: a.y + u * (b.y - a.y),
                    heading: wrap_angle(a.heading + u * wrap_angle(b.heading - a.heading)),
                    speed: a.speed + u * (b.speed - a.speed),
                }
            }
        }
    }

    /// Usable by the tracker: at least one point, finite, strictly increasing times.
    pub fn is_valid(&self) -> bool {
        !self.points.is_empty()
            && self.points.iter().all(|p| {
                p.t.is_finite()
                    && p.x.is_finite()
                    && p.y.is_finite()
                    && p.heading.is_finite()
                    && p.speed.is_finite()
            })
            && self.points.windows(2).all(|w| w[1].t > w[0].t)
    }
}

/// What a planner sees each step.
pub struct Observation<'a> {
    pub step: usize,
    pub time_s: f64,
    pub ego: &'a EgoState,
    /// Simulated ego states so far, the current one last.
    pub ego_history: &'a [EgoState],
    pub agents: &'a [AgentObs],
    pub lights: &'a [(LaneId, LightStatus)],
    pub map: &'a Map,
    pub route: &'a [LaneId],
}

/// A driving policy. `initialize` receives the whole scenario because the log-replay baseline
/// needs the expert; other planners must use only the route and the map from it.
pub trait Planner: Send {
    fn name(&self) -> &'static str;
    fn initialize(&mut self, _scenario: &Scenario) {}
    fn plan(&mut self, obs: &Observation<'_>) -> Trajectory;
}

/// Replays the expert's logged trajectory.
#[derive(Default)]
pub struct LogReplayPlanner {
    expert: Vec<TrajectoryPoint>,
}

impl Planner for LogReplayPlanner {
    fn name(&self) -> &'static str {
        "log_replay"
    }
    fn initialize(&mut self, s: &Scenario) {
        self.expert = s.expert[HISTORY_STEPS.min(s.expert.len())..]
            .iter()
            .enumerate()
            .map(|(k, e)| TrajectoryPoint {
                t: k as f64 * DT,
                x: e.x,
                y: e.y,
                heading: e.heading,
                speed: e.speed,
            })
            .collect();
    }
    fn plan(&mut self, obs: &Observation<'_>) -> Trajectory {
        let from = obs.step.min(self.expert.len().saturating_sub(1));
        Trajectory {
            points: self.expert[from..].to_vec(),
        }
    }
}

/// Keeps the current speed and heading for 8 s.
#[derive(Default)]
pub struct ConstantVelocityPlanner;

impl Planner for ConstantVelocityPlanner {
    fn name(&self) -> &'static str {
        "constant_velocity"
    }
    fn plan(&mut self, obs: &Observation<'_>) -> Trajectory {
        let v = obs.ego.vehicle;
        let (s, c) = v.heading.sin_cos();
        Trajectory {
            points: (0..=16)
                .map(|k| {
                    let t = k as f64 * 0.5;
                    TrajectoryPoint {
                        t: obs.time_s + t,
                        x: v.x + c * v.speed * t,
                        y: v.y + s * v.speed * t,
                        heading: v.heading,
                        speed: v.speed,
                    }
                })
                .collect(),
        }
    }
}

/// nuPlan's IDM planner: follows the lane graph within the route's roadblocks, with the
/// nearest object in its path corridor (or a red light) as leader; 16 samples of 0.5 s.
#[derive(Default)]
pub struct IdmPlanner {
    roadblocks: HashSet<u64>,
    route_order: Vec<u64>,
}

const PLANNER_SAMPLES: usize = 16;
const PLANNER_SAMPLE_DT: f64 = 0.5;

impl Planner for IdmPlanner {
    fn name(&self) -> &'static str {
        "idm"
    }
    fn initialize(&mut self, s: &Scenario) {
        self.route_order = s
            .route
            .iter()
            .filter_map(|id| s.map.lane(*id).map(|l| l.roadblock))
            .collect();
        self.roadblocks = self.route_order.iter().copied().collect();
    }
    fn plan(&mut self, obs: &Observation<'_>) -> Trajectory {
        let ego = obs.ego;
        let map = obs.map;
        let c = ego.center();
        // The ego's lane: prefer one in the route, else the best-aligned one, else the route's
        // nearest lane (off-map ego still gets a path back to its route).
        let on_route = map
            .lanes_at(c)
            .filter(|l| self.roadblocks.contains(&l.roadblock))
            .min_by(|a, b| {
                let da = wrap_angle(a.centerline.project(c).heading - ego.vehicle.heading).abs();
                let db = wrap_angle(b.centerline.project(c).heading - ego.vehicle.heading).abs();
                da.total_cmp(&db)
            });
        let lane = on_route
            .or_else(|| map.best_lane_at(c, ego.vehicle.heading))
            .or_else(|| {
                obs.route
                    .iter()
                    .filter_map(|id| map.lane(*id))
                    .min_by(|a, b| {
                        a.centerline
                            .project(c)
                            .distance
                            .total_cmp(&b.centerline.project(c).distance)
                    })
            });
        let hold = || Trajectory {
            points: vec![TrajectoryPoint {
                t: obs.time_s,
                x: ego.vehicle.x,
                y: ego.vehicle.y,
                heading: ego.vehicle.heading,
                speed: 0.0,
            }],
        };
        let Some(lane) = lane else { return hold() };
        let rank = |rb: u64| {
            self.route_order
                .iter()
                .position(|r| *r == rb)
                .map(|p| p as f64)
                .unwrap_or(1e6)
        };
        let ids = follow_lanes(map, lane, 150.0, |l| rank(l.roadblock));
        let Some(path) = LanePath::from_lanes(map, &ids) else {
            return hold();
        };
        let s_rear = path.line.project(ego.rear_axle()).s;
        let front_offset = REAR_TO_CENTER + EGO_LENGTH / 2.0;
        let v0 = map
            .speed_limit_of(lane)
            .unwrap_or(10.0)
            .max(ego.vehicle.speed);
        let red: Vec<LaneId> = obs
            .lights
            .iter()
            .filter(|(_, s)| *s == LightStatus::Red)
            .map(|x| x.0)
            .collect();
        let lead = find_leader(
            &path,
            s_rear + front_offset,
            EGO_WIDTH / 2.0,
            100.0,
            obs.agents.iter().map(|a| Obstacle {
                bbox: a.bbox(),
                speed: a.speed(),
            }),
            &red,
        );
        let mut points = Vec::with_capacity(PLANNER_SAMPLES + 1);
        let v = ego.vehicle;
        points.push(TrajectoryPoint {
            t: obs.time_s,
            x: v.x,
            y: v.y,
            heading: v.heading,
            speed: v.speed,
        });
        let (mut s, mut speed) = (s_rear, v.speed.max(0.0));
        let mut lead = lead;
        for k in 1..=PLANNER_SAMPLES {
            let acc = IdmParams::PLANNER.accel(speed, v0, lead);
            speed = (speed + acc * PLANNER_SAMPLE_DT).max(0.0);
            s += speed * PLANNER_SAMPLE_DT;
            // The leader keeps its speed; the gap changes by the relative motion.
            lead =
                lead.map(|(g, vl)| ((g + (vl.max(0.0) - speed) * PLANNER_SAMPLE_DT).max(0.0), vl));
            let p = path.line.pose_at(s);
            points.push(TrajectoryPoint {
                t: obs.time_s + k as f64 * PLANNER_SAMPLE_DT,
                x: p.x,
                y: p.y,
                heading: p.heading,
                speed,
            });
        }
        let _ = P2::default();
        Trajectory { points }
    }
}
