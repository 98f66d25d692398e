//! CLS-R's reactive agents against nuplan-devkit's `IDMAgents`: which objects exist, how
//! the route grows, where the gap is measured from and how an agent moves, with the worked
//! numbers of the issue that found the differences.

use rudder_sim::driving::geometry::OrientedBox;
use rudder_sim::driving::geometry::P2;
use rudder_sim::driving::idm::IdmParams;
use rudder_sim::driving::map::{Lane, LaneId, LaneKind, LightStatus, Map, StopLine};
use rudder_sim::driving::reactive::{EgoView, ReactiveAgents};
use rudder_sim::driving::scenario::{AgentObs, AgentState, Category, EgoPose, Scenario, Track};
use rudder_sim::driving::scenario::{HISTORY_STEPS, HORIZON_STEPS};
use rudder_sim::driving::vehicle::{EGO_LENGTH, EGO_WIDTH, REAR_TO_CENTER};
use std::sync::Arc;

const DT: f64 = 0.1;

fn straight(id: LaneId, x0: f64, x1: f64, y: f64, limit: Option<f64>) -> Lane {
    let n = ((x1 - x0) / 5.0).round() as usize;
    let pts = (0..=n)
        .map(|j| P2::new(x0 + (x1 - x0) * j as f64 / n as f64, y))
        .collect();
    Lane::from_centerline(id, LaneKind::Lane, id, pts, 3.5, limit)
}

/// A vehicle (or other object) standing still or moving along +x from step 0 on.
fn track(id: u64, category: Category, x: f64, y: f64, heading: f64, v: f64) -> Track {
    let n = HISTORY_STEPS + HORIZON_STEPS + 1;
    let states = (0..n)
        .map(|k| {
            let t = (k as f64 - HISTORY_STEPS as f64) * DT;
            Some(AgentState {
                x: x + v * t * heading.cos(),
                y: y + v * t * heading.sin(),
                heading,
                vx: v * heading.cos(),
                vy: v * heading.sin(),
            })
        })
        .collect();
    Track {
        id,
        category,
        length: 5.0,
        width: 2.0,
        height: 1.5,
        states,
    }
}

/// The ego parked at rear-axle (x, y) heading +x for the whole scenario.
fn scenario(map: Map, ego_x: f64, ego_y: f64, tracks: Vec<Track>) -> Scenario {
    let pose = EgoPose {
        x: ego_x,
        y: ego_y,
        heading: 0.0,
        speed: 0.0,
        acceleration: 0.0,
    };
    Scenario {
        token: "t".into(),
        scenario_type: "test".into(),
        map: Arc::new(map),
        expert: vec![pose; HISTORY_STEPS + HORIZON_STEPS + 1],
        tracks,
        lights: vec![vec![]; HORIZON_STEPS + 1],
        route: vec![],
    }
}

fn ego_view(s: &Scenario) -> EgoView {
    let e = s.ego_initial();
    EgoView {
        footprint: OrientedBox::new(
            P2::new(e.x + REAR_TO_CENTER, e.y),
            0.0,
            EGO_LENGTH,
            EGO_WIDTH,
        ),
        speed: 0.0,
        heading: 0.0,
    }
}

fn find(obs: &[AgentObs], id: u64) -> Option<&AgentObs> {
    obs.iter().find(|o| o.id == id)
}

fn step(r: &mut ReactiveAgents, s: &Scenario, k: usize, lights: &[(LaneId, LightStatus)]) {
    r.step(&s.map, ego_view(s), lights, &s.agents_at(k + 1), DT);
}

#[test]
fn end_of_path_is_a_stopped_car_and_the_agent_moves_with_its_old_speed() {
    // One 100 m lane with no successor, limit 10 m/s; a 5 m car at x = 65 doing 10 m/s has
    // 35 m of path left: the devkit's free-road leader is the path's end at 35 - 2.5 = 32.5 m,
    // s* = 1 + 15 + 100 / (2 sqrt 2) = 51.4 m, a = -2.50 clipped to -2 (it brakes; an agent that
    // only sees other objects cruises at 10 m/s).
    let map = Map::new(
        "m",
        vec![straight(1, 0.0, 100.0, 0.0, Some(10.0))],
        vec![],
        vec![],
        vec![],
        vec![],
    )
    .unwrap();
    let s = scenario(
        map,
        5.0,
        50.0,
        vec![track(7, Category::Vehicle, 65.0, 0.0, 0.0, 10.0)],
    );
    let mut r = ReactiveAgents::new(&s);
    assert_eq!(r.len(), 1);
    step(&mut r, &s, 0, &[]);
    let a = *find(&r.observe(&s, 1), 7).expect("the agent");
    // Forward Euler with the old speed: 65 + 0.1 * 10; the new speed 10 - 0.1 * 2.
    assert!((a.state.x - 66.0).abs() < 1e-9, "x {}", a.state.x);
    assert!((a.speed() - 9.8).abs() < 1e-9, "v {}", a.speed());
}

#[test]
fn which_agents_exist() {
    let map = Map::new(
        "m",
        vec![straight(1, 0.0, 200.0, 0.0, Some(10.0))],
        vec![],
        vec![],
        vec![],
        vec![],
    )
    .unwrap();
    let mut late = track(6, Category::Vehicle, 150.0, 0.0, 0.0, 0.0);
    for st in late.states.iter_mut().take(HISTORY_STEPS + 5) {
        *st = None;
    }
    let tracks = vec![
        track(1, Category::Vehicle, 40.0, 0.4, 0.5, 0.0), // misaligned: snapped to the lane
        track(2, Category::Vehicle, 43.0, 0.0, 0.0, 0.0), // overlaps 1 once snapped: dropped
        track(3, Category::Vehicle, 60.0, 30.0, 0.0, 0.0), // off every lane: absent
        track(4, Category::Bicycle, 80.0, 0.0, 0.0, 3.0), // no part in CLS-R
        track(5, Category::Pedestrian, 90.0, 5.0, 1.5, 1.0), // replayed from the log
        late,                                             // appears at step 5: absent
        track(8, Category::Vehicle, 7.0, 0.0, 0.0, 0.0),  // overlaps the ego: dropped
    ];
    let s = scenario(map, 5.0, 0.0, tracks);
    let r = ReactiveAgents::new(&s);
    assert_eq!(r.len(), 1);
    let obs = r.observe(&s, 10);
    let ids: Vec<u64> = obs.iter().map(|o| o.id).collect();
    assert_eq!(ids, vec![1, 5], "{ids:?}");
    let a = find(&obs, 1).unwrap();
    assert!(a.state.y.abs() < 1e-9 && a.state.heading.abs() < 1e-9);
    assert!((a.state.x - 40.0).abs() < 1e-9);
    // The pedestrian is where its log says at step 10.
    let p = find(&obs, 5).unwrap();
    assert!((p.state.y - (5.0 + 1.5f64.sin())).abs() < 1e-9);
}

#[test]
fn agents_beyond_100_m_are_removed() {
    let map = Map::new(
        "m",
        vec![straight(1, 0.0, 300.0, 0.0, Some(10.0))],
        vec![],
        vec![],
        vec![],
        vec![],
    )
    .unwrap();
    let tracks = vec![
        track(
            1,
            Category::Vehicle,
            5.0 + REAR_TO_CENTER + 95.0,
            0.0,
            0.0,
            0.0,
        ),
        track(
            2,
            Category::Vehicle,
            5.0 + REAR_TO_CENTER + 100.5,
            0.0,
            0.0,
            0.0,
        ),
    ];
    let s = scenario(map, 5.0, 0.0, tracks);
    let mut r = ReactiveAgents::new(&s);
    assert_eq!(r.len(), 2);
    step(&mut r, &s, 0, &[]);
    let ids: Vec<u64> = r.observe(&s, 1).iter().map(|o| o.id).collect();
    assert_eq!(ids, vec![1]);
}

/// A 40 m lane 1 into a fork: connector 2 straight on, connector 3 curving left (listed
/// first), each into its own lane.
fn fork(signalled: bool) -> Map {
    let mut lanes = vec![straight(1, 0.0, 40.0, 0.0, Some(10.0))];
    let curve: Vec<P2> = (0..=8)
        .map(|j| {
            let a = j as f64 / 8.0 * std::f64::consts::FRAC_PI_2;
            P2::new(40.0 + 20.0 * a.sin(), 20.0 - 20.0 * a.cos())
        })
        .collect();
    lanes.push(Lane::from_centerline(
        3,
        LaneKind::Connector,
        30,
        curve,
        3.5,
        None,
    ));
    lanes.push(Lane::from_centerline(
        2,
        LaneKind::Connector,
        20,
        (0..=4)
            .map(|j| P2::new(40.0 + 5.0 * j as f64, 0.0))
            .collect(),
        3.5,
        None,
    ));
    lanes.push(straight(4, 60.0, 200.0, 0.0, Some(10.0)));
    lanes.push(Lane::from_centerline(
        5,
        LaneKind::Lane,
        5,
        (0..=10)
            .map(|j| P2::new(60.0, 20.0 + 10.0 * j as f64))
            .collect(),
        3.5,
        Some(10.0),
    ));
    Map::connect(&mut lanes, 1, 3);
    Map::connect(&mut lanes, 1, 2);
    Map::connect(&mut lanes, 2, 4);
    Map::connect(&mut lanes, 3, 5);
    let stop_lines = if signalled {
        vec![StopLine {
            id: 1,
            polygon: vec![
                P2::new(40.0, -1.75),
                P2::new(40.5, -1.75),
                P2::new(40.5, 1.75),
                P2::new(40.0, 1.75),
            ],
            lane_connector: Some(2),
        }]
    } else {
        vec![]
    };
    Map::new("fork", lanes, vec![], stop_lines, vec![], vec![]).unwrap()
}

#[test]
fn route_takes_the_straightest_successor() {
    // 30 m of lane 1 left < 20 + 10 * 1.5: the route grows at once, through the straight
    // connector 2 although the curve is listed first, and the agent drives on along y = 0.
    let s = scenario(
        fork(false),
        0.0,
        -20.0,
        vec![track(1, Category::Vehicle, 10.0, 0.0, 0.0, 10.0)],
    );
    let mut r = ReactiveAgents::new(&s);
    for k in 0..60 {
        step(&mut r, &s, k, &[]);
    }
    let a = *find(&r.observe(&s, 60), 1).unwrap();
    assert!(a.state.x > 60.0 && a.state.y.abs() < 1e-6, "{:?}", a.state);
}

#[test]
fn red_stop_line_holds_and_a_signalled_connector_opens_only_on_green() {
    let s = scenario(
        fork(true),
        0.0,
        -20.0,
        vec![track(1, Category::Vehicle, 10.0, 0.0, 0.0, 8.0)],
    );
    // Red on the straight connector: the curve (unsignalled) is the only way on, so the
    // route turns left instead of waiting at the light.
    let mut r = ReactiveAgents::new(&s);
    for k in 0..80 {
        step(&mut r, &s, k, &[(2, LightStatus::Red)]);
    }
    let a = *find(&r.observe(&s, 80), 1).unwrap();
    assert!(a.state.y > 5.0, "turned left: {:?}", a.state);
    // Unknown (not green) on the signalled connector and the curve red: no way on; the agent
    // stops before the end of lane 1 (40 m), half a car length short at most.
    let mut r = ReactiveAgents::new(&s);
    for k in 0..150 {
        step(&mut r, &s, k, &[(3, LightStatus::Red)]);
    }
    let a = *find(&r.observe(&s, 150), 1).unwrap();
    assert!(
        a.speed() < 0.05 && a.state.x < 40.0 && a.state.x > 30.0,
        "{:?}",
        a.state
    );
    // Green: straight through.
    let mut r = ReactiveAgents::new(&s);
    for k in 0..80 {
        step(
            &mut r,
            &s,
            k,
            &[(2, LightStatus::Green), (3, LightStatus::Red)],
        );
    }
    let a = *find(&r.observe(&s, 80), 1).unwrap();
    assert!(a.state.x > 60.0 && a.state.y.abs() < 1e-6, "{:?}", a.state);
}

#[test]
fn gap_is_measured_from_the_projected_footprint() {
    // A follower at 5 m/s (target 10) behind a static generic object whose rear is at x = 45.
    // Step 1 measures from the follower's snapped box (front at 12.5: gap 32.5); after it the
    // follower holds its projected footprint (front + v T ahead), and step 2 measures from
    // there: gap = 45 - (10.5 + 2.5 + 1.5 v1).
    let map = Map::new(
        "m",
        vec![straight(1, 0.0, 200.0, 0.0, Some(10.0))],
        vec![],
        vec![],
        vec![],
        vec![],
    )
    .unwrap();
    let mut obstacle = track(2, Category::GenericObject, 47.5, 0.0, 0.0, 0.0);
    obstacle.length = 5.0;
    let s = scenario(
        map,
        -60.0,
        0.0,
        vec![track(1, Category::Vehicle, 10.0, 0.0, 0.0, 5.0), obstacle],
    );
    let p = IdmParams::AGENTS;
    let mut r = ReactiveAgents::new(&s);
    step(&mut r, &s, 0, &[]);
    let a1 = p.accel(5.0, 10.0, Some((32.5, 0.0)));
    let v1 = 5.0 + DT * a1;
    let f = *find(&r.observe(&s, 1), 1).unwrap();
    assert!((f.speed() - v1).abs() < 1e-9, "{} vs {v1}", f.speed());
    assert!((f.state.x - 10.5).abs() < 1e-9);
    step(&mut r, &s, 1, &[]);
    let gap2 = 45.0 - (10.5 + 2.5 + 1.5 * v1);
    let v2 = v1 + DT * p.accel(v1, 10.0, Some((gap2, 0.0)));
    let f = *find(&r.observe(&s, 2), 1).unwrap();
    assert!((f.speed() - v2).abs() < 1e-9, "{} vs {v2}", f.speed());
    // Measured from the bumper instead, the speed would differ.
    let bumper = v1 + DT * p.accel(v1, 10.0, Some((45.0 - 13.0, 0.0)));
    assert!((bumper - v2).abs() > 1e-3);
}

#[test]
fn a_replayed_object_at_step_0_keeps_a_vehicle_out() {
    // A cone touching a car's front bumper: the devkit's builder checks the snapped box against
    // the open-loop objects too, so no agent is made.
    let map = Map::new(
        "m",
        vec![straight(1, 0.0, 200.0, 0.0, Some(10.0))],
        vec![],
        vec![],
        vec![],
        vec![],
    )
    .unwrap();
    let mut cone = track(2, Category::TrafficCone, 52.6, 0.0, 0.0, 0.0);
    cone.length = 0.5;
    cone.width = 0.5;
    let s = scenario(
        map,
        0.0,
        -20.0,
        vec![track(1, Category::Vehicle, 50.0, 0.0, 0.0, 0.0), cone],
    );
    assert_eq!(ReactiveAgents::new(&s).len(), 0);
}

#[test]
fn straightest_by_the_devkit_curvature_estimate() {
    // Lane 1 forks into connector 2, which runs straight for 1 m and then turns hard (radius
    // 5 m), and connector 3, a gentle arc (radius 200 m). Through 0, 2 and 4 m the devkit's
    // estimate gives the hard turn ~0.1 /m and the arc 0.005 /m, so agents take the arc; a rule
    // that looks only at the first vertex would see the hard turn's straight start and take it.
    let mut lanes = vec![straight(1, 0.0, 40.0, 0.0, Some(10.0))];
    let mut hard = vec![P2::new(40.0, 0.0), P2::new(40.5, 0.0), P2::new(41.0, 0.0)];
    hard.extend((1..=8).map(|j| {
        let a = j as f64 / 8.0 * std::f64::consts::FRAC_PI_2;
        P2::new(41.0 + 5.0 * a.sin(), 5.0 - 5.0 * a.cos())
    }));
    lanes.push(Lane::from_centerline(
        2,
        LaneKind::Connector,
        20,
        hard,
        3.5,
        None,
    ));
    let arc: Vec<P2> = (0..=10)
        .map(|j| {
            let a = j as f64 / 10.0 * 0.15;
            P2::new(40.0 + 200.0 * a.sin(), -(200.0 - 200.0 * a.cos()))
        })
        .collect();
    let arc_end = *arc.last().unwrap();
    lanes.push(Lane::from_centerline(
        3,
        LaneKind::Connector,
        30,
        arc,
        3.5,
        None,
    ));
    lanes.push(Lane::from_centerline(
        4,
        LaneKind::Lane,
        4,
        vec![P2::new(46.0, 5.0), P2::new(46.0, 100.0)],
        3.5,
        Some(10.0),
    ));
    let dir = P2::new(0.15f64.cos(), -0.15f64.sin());
    lanes.push(Lane::from_centerline(
        5,
        LaneKind::Lane,
        5,
        vec![arc_end, arc_end.add(dir.scale(100.0))],
        3.5,
        Some(10.0),
    ));
    Map::connect(&mut lanes, 1, 2);
    Map::connect(&mut lanes, 1, 3);
    Map::connect(&mut lanes, 2, 4);
    Map::connect(&mut lanes, 3, 5);
    let map = Map::new("fork2", lanes, vec![], vec![], vec![], vec![]).unwrap();
    let s = scenario(
        map,
        0.0,
        -40.0,
        vec![track(1, Category::Vehicle, 10.0, 0.0, 0.0, 10.0)],
    );
    let mut r = ReactiveAgents::new(&s);
    for k in 0..60 {
        step(&mut r, &s, k, &[]);
    }
    let a = *find(&r.observe(&s, 60), 1).unwrap();
    assert!(
        a.state.y < -1.0 && a.state.x > 55.0,
        "took the arc: {:?}",
        a.state
    );
}

#[test]
fn a_cycle_of_tiny_lanes_does_not_hang_the_route() {
    let mut lanes = vec![
        straight(1, 0.0, 30.0, 0.0, Some(10.0)),
        Lane::from_centerline(
            2,
            LaneKind::Connector,
            2,
            vec![P2::new(30.0, 0.0), P2::new(30.0 + 1e-6, 0.0)],
            3.5,
            None,
        ),
    ];
    Map::connect(&mut lanes, 1, 2);
    Map::connect(&mut lanes, 2, 2);
    let map = Map::new("loop", lanes, vec![], vec![], vec![], vec![]).unwrap();
    let s = scenario(
        map,
        0.0,
        -20.0,
        vec![track(1, Category::Vehicle, 10.0, 0.0, 0.0, 5.0)],
    );
    let mut r = ReactiveAgents::new(&s);
    for k in 0..50 {
        step(&mut r, &s, k, &[]);
    }
    // It stops at the end of lane 1, the only way on being the degenerate loop.
    let a = *find(&r.observe(&s, 50), 1).unwrap();
    assert!(a.state.x < 30.0 && a.speed() < 1.0, "{:?}", a.state);
}
