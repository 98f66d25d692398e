//! The three baselines, implementing the robot crate's planner interface: log replay (the
//! expert) and constant velocity for any map, nuPlan's IDM planner on sim's own map (it walks
//! the lane graph with the IDM machinery the reactive agents share).

use super::geometry::wrap_angle;
use super::idm::{find_leader, follow_lanes, IdmParams, LanePath, Obstacle};
use super::map::{LaneId, LightStatus, Map};
use super::scenario::AgentBox;
use super::vehicle::{Pacifica, EGO_LENGTH, EGO_WIDTH, REAR_TO_CENTER};
use rudder_robot::driving::{
    MapView, Observation, Planner, PlannerSetup, Trajectory, TrajectoryPoint,
};
use std::collections::HashSet;

/// Replays the expert's logged trajectory.
#[derive(Default)]
pub struct LogReplayPlanner {
    expert: Vec<TrajectoryPoint>,
}

impl<M: MapView + ?Sized> Planner<M> for LogReplayPlanner {
    fn name(&self) -> &'static str {
        "log_replay"
    }
    fn initialize(&mut self, s: &PlannerSetup<'_, M>) {
        self.expert = s
            .expert
            .iter()
            .enumerate()
            .map(|(k, e)| TrajectoryPoint {
                t: k as f64 * s.dt,
                x: e.x,
                y: e.y,
                heading: e.heading,
                speed: e.speed,
            })
            .collect();
    }
    fn plan(&mut self, obs: &Observation<'_, M>) -> Trajectory {
        let from = obs.step.min(self.expert.len().saturating_sub(1));
        Trajectory {
            points: self.expert[from..].to_vec(),
        }
    }
}

/// Keeps the current speed and heading for 8 s.
#[derive(Default)]
pub struct ConstantVelocityPlanner;

impl<M: MapView + ?Sized> Planner<M> for ConstantVelocityPlanner {
    fn name(&self) -> &'static str {
        "constant_velocity"
    }
    fn plan(&mut self, obs: &Observation<'_, M>) -> Trajectory {
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

// On sim's own map, not any `MapView`: the IDM machinery it shares with the reactive agents
// (`follow_lanes`, `LanePath`) walks `Map`'s lanes and polylines.
impl Planner<Map> for IdmPlanner {
    fn name(&self) -> &'static str {
        "idm"
    }
    fn initialize(&mut self, s: &PlannerSetup<'_, Map>) {
        self.route_order = s
            .route
            .iter()
            .filter_map(|id| s.map.lane(*id).map(|l| l.roadblock))
            .collect();
        self.roadblocks = self.route_order.iter().copied().collect();
    }
    fn plan(&mut self, obs: &Observation<'_, Map>) -> Trajectory {
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
        Trajectory { points }
    }
}
