//! The planner seam: a planner written against `rudder_robot::driving` alone (as one in
//! `policy/` will be) runs in sim's closed loop, reads sim's map through `MapView`, and drives
//! exactly as sim's own baseline with the same logic does.

use rudder_robot::driving::{
    MapView, Observation, Planner, PlannerSetup, Pose, Trajectory, TrajectoryPoint,
};
use rudder_sim::driving::generator::{generate, SCENARIO_TYPES};
use rudder_sim::driving::simulation::{simulate, Mode};
use rudder_sim::driving::PlannerKind;

/// Constant velocity for 8 s (sim's baseline, re-written here), noting what it saw of the map.
#[derive(Default)]
struct Outside {
    route: Vec<u64>,
    /// Per step: route lanes within 60 m of the ego, and the nearest one's centreline start in
    /// the ego frame.
    seen: Vec<(usize, Option<(f64, f64)>)>,
}

impl<M: MapView + ?Sized> Planner<M> for Outside {
    fn name(&self) -> &'static str {
        "outside"
    }
    fn initialize(&mut self, setup: &PlannerSetup<'_, M>) {
        self.route = setup.route.to_vec();
        self.seen.clear();
        for id in setup.route {
            let lane = setup
                .map
                .lane_view(*id)
                .expect("route lanes are in the map");
            assert!(lane.centerline.len() >= 2 && lane.left.len() >= 2);
        }
    }
    fn plan(&mut self, obs: &Observation<'_, M>) -> Trajectory {
        let v = obs.ego.vehicle;
        let near = obs.map.lane_ids_near(obs.ego.rear_axle(), 60.0);
        let on_route: Vec<u64> = near
            .iter()
            .copied()
            .filter(|id| self.route.contains(id))
            .collect();
        let ego = Pose {
            x: v.x,
            y: v.y,
            heading: v.heading,
        };
        let first = on_route
            .first()
            .and_then(|id| obs.map.lane_view(*id))
            .map(|l| {
                let p = ego.to_local(l.centerline[0]);
                (p.x, p.y)
            });
        self.seen.push((on_route.len(), first));
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

#[test]
fn a_planner_outside_sim_drives_in_sim() {
    for ty in 0..SCENARIO_TYPES.len() {
        let sc = generate(3, ty);
        for mode in [Mode::NonReactive, Mode::Reactive] {
            let mut outside = Outside::default();
            let ours = simulate(&sc, &mut outside, mode).expect("runs");
            let theirs =
                simulate(&sc, PlannerKind::ConstantVelocity.build().as_mut(), mode).expect("runs");
            assert_eq!(ours.ego, theirs.ego, "{} {mode:?}", sc.token);
            assert_eq!(ours.agents, theirs.agents, "{} {mode:?}", sc.token);
            // The ego starts on its route, so the map view finds a route lane beside it.
            let (n0, first) = outside.seen[0];
            assert!(n0 >= 1, "{}: no route lane near the start", sc.token);
            let (x, y) = first.expect("a route lane");
            assert!(x.is_finite() && y.is_finite());
            // It planned at every recorded step (the devkit records the iterations it plans at).
            assert_eq!(outside.seen.len(), ours.ego.len());
        }
    }
}

#[test]
fn the_map_view_agrees_with_the_map() {
    let sc = generate(5, 0);
    let e0 = sc.ego_initial();
    let p = rudder_robot::driving::P2::new(e0.x, e0.y);
    let view: &dyn MapView = sc.map.as_ref();
    let mut at = view.lane_ids_at(p);
    let mut direct: Vec<u64> = sc.map.lanes_at(p).map(|l| l.id).collect();
    at.sort_unstable();
    direct.sort_unstable();
    assert_eq!(at, direct);
    assert!(!at.is_empty(), "the generated ego starts on a lane");
    for id in &at {
        assert!(view.lane_ids_near(p, 1.0).contains(id));
        let lane = sc.map.lane(*id).expect("lane");
        assert_eq!(view.speed_limit(*id), sc.map.speed_limit_of(lane));
        assert_eq!(
            view.lane_view(*id).map(|l| l.centerline),
            Some(&lane.centerline.points[..])
        );
    }
}
