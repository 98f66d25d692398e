//! The planner trait and what it receives: once per scenario a [`PlannerSetup`], then every
//! step an [`Observation`].
//!
//! Both are generic over the map type `M` so that a planner that lives beside a concrete map
//! (the simulator's IDM baseline walks its lane graph) can name it, while a planner that lives
//! elsewhere implements `Planner<M>` for every `M: MapView` and reads the map only through
//! [`MapView`]. The simulator drives `dyn Planner<ItsMap>`; both kinds fit.

use super::map_view::{LaneId, LightStatus, MapView};
use super::state::{AgentObs, EgoPose, EgoState};
use super::trajectory::Trajectory;

/// What a planner learns once, before the first step of a scenario.
pub struct PlannerSetup<'a, M: MapView + ?Sized> {
    pub map: &'a M,
    /// The route as a sequence of lanes and connectors.
    pub route: &'a [LaneId],
    /// The logged ego from the initial sample on, one sample every `dt`. This is the expert's
    /// future: only the log-replay baseline may read it; any other planner must not.
    pub expert: &'a [EgoPose],
    /// Simulation step (s).
    pub dt: f64,
}

/// What a planner sees each step (map frame).
pub struct Observation<'a, M: MapView + ?Sized> {
    pub step: usize,
    pub time_s: f64,
    pub ego: &'a EgoState,
    /// Simulated ego states so far, the current one last.
    pub ego_history: &'a [EgoState],
    /// Tracked objects now: agents and static objects.
    pub agents: &'a [AgentObs],
    /// Traffic-light states now, per controlled connector.
    pub lights: &'a [(LaneId, LightStatus)],
    pub map: &'a M,
    pub route: &'a [LaneId],
}

/// A driving policy: from an observation, a trajectory of rear-axle states at absolute times
/// starting at `obs.time_s`, which the simulator's tracker follows until the next step.
pub trait Planner<M: MapView + ?Sized>: Send {
    fn name(&self) -> &'static str;
    fn initialize(&mut self, _setup: &PlannerSetup<'_, M>) {}
    fn plan(&mut self, obs: &Observation<'_, M>) -> Trajectory;
}

#[cfg(test)]
mod tests {
    use super::super::geom::P2;
    use super::super::map_view::{LaneKind, LaneView};
    use super::super::trajectory::TrajectoryPoint;
    use super::*;

    /// One straight lane along x, 4 m wide, 10 m/s.
    struct OneLane {
        centre: [P2; 2],
        left: [P2; 2],
        right: [P2; 2],
    }

    impl MapView for OneLane {
        fn lane_view(&self, id: LaneId) -> Option<LaneView<'_>> {
            (id == 1).then_some(LaneView {
                id: 1,
                kind: LaneKind::Lane,
                roadblock: 1,
                centerline: &self.centre,
                left: &self.left,
                right: &self.right,
                speed_limit: Some(10.0),
                successors: &[],
                predecessors: &[],
            })
        }
        fn lane_ids_at(&self, p: P2) -> Vec<LaneId> {
            let inside = (0.0..=100.0).contains(&p.x) && p.y.abs() <= 2.0;
            if inside {
                vec![1]
            } else {
                vec![]
            }
        }
        fn lane_ids_near(&self, p: P2, radius: f64) -> Vec<LaneId> {
            let inside = (-radius..=100.0 + radius).contains(&p.x) && p.y.abs() <= 2.0 + radius;
            if inside {
                vec![1]
            } else {
                vec![]
            }
        }
        fn speed_limit(&self, id: LaneId) -> Option<f64> {
            self.lane_view(id).and_then(|l| l.speed_limit)
        }
    }

    /// A planner written only against this module, as one in `policy/` would be: one second
    /// ahead at the speed limit of the lane under the ego.
    #[derive(Default)]
    struct AtTheLimit {
        route_len: usize,
    }

    impl<M: MapView + ?Sized> Planner<M> for AtTheLimit {
        fn name(&self) -> &'static str {
            "at_the_limit"
        }
        fn initialize(&mut self, setup: &PlannerSetup<'_, M>) {
            self.route_len = setup.route.len();
        }
        fn plan(&mut self, obs: &Observation<'_, M>) -> Trajectory {
            let v = obs.ego.vehicle;
            let lane = obs.map.lane_ids_at(obs.ego.rear_axle()).first().copied();
            let limit = lane.and_then(|id| obs.map.speed_limit(id)).unwrap_or(0.0);
            let now = TrajectoryPoint {
                t: obs.time_s,
                x: v.x,
                y: v.y,
                heading: v.heading,
                speed: v.speed,
            };
            let next = TrajectoryPoint {
                t: obs.time_s + 1.0,
                x: v.x + limit,
                speed: limit,
                ..now
            };
            Trajectory {
                points: vec![now, next],
            }
        }
    }

    #[test]
    fn a_planner_needs_only_this_module() {
        let map = OneLane {
            centre: [P2::new(0.0, 0.0), P2::new(100.0, 0.0)],
            left: [P2::new(0.0, 2.0), P2::new(100.0, 2.0)],
            right: [P2::new(0.0, -2.0), P2::new(100.0, -2.0)],
        };
        let ego = EgoState::from_pose(0.0, 5.0, 0.0, 0.0, 3.0, 0.0);
        let route = [1];
        // Through the object-safe view, as a planner taking `&dyn MapView` would see it.
        let map_dyn: &dyn MapView = &map;
        let mut p: Box<dyn Planner<dyn MapView>> = Box::new(AtTheLimit::default());
        p.initialize(&PlannerSetup {
            map: map_dyn,
            route: &route,
            expert: &[],
            dt: 0.1,
        });
        let tr = p.plan(&Observation {
            step: 0,
            time_s: 0.0,
            ego: &ego,
            ego_history: std::slice::from_ref(&ego),
            agents: &[],
            lights: &[],
            map: map_dyn,
            route: &route,
        });
        assert!(tr.is_valid());
        assert_eq!(tr.points[1].speed, 10.0);
        assert_eq!(tr.points[1].x, 15.0);
        assert_eq!(map.lane_view(1).map(|l| l.centerline.len()), Some(2));
        assert!(map.lane_ids_near(P2::new(-1.0, 0.0), 2.0) == vec![1]);
        // The same planner against the concrete map type.
        let mut concrete: Box<dyn Planner<OneLane>> = Box::new(AtTheLimit::default());
        let obs = Observation {
            step: 0,
            time_s: 2.0,
            ego: &ego,
            ego_history: &[],
            agents: &[],
            lights: &[],
            map: &map,
            route: &route,
        };
        assert_eq!(concrete.plan(&obs).points[0].t, 2.0);
    }
}
