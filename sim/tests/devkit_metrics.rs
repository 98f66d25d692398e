//! Metric details where nuplan-devkit's definition is easy to get subtly wrong, each pinned with
//! numbers on a tiny hand-built map: TTC's rear-axle angles, wide cone, collided tracks and
//! static objects; rear-end classification; corners "in one lane"; driving direction's short
//! windows; progress off the route; connector speed limits; the drivable-area threshold.

use rudder_sim::driving::geometry::{relative_angle, Polyline, P2};
use rudder_sim::driving::map::{Lane, LaneKind, Map};
use rudder_sim::driving::metrics::collisions::{self, CollisionType};
use rudder_sim::driving::metrics::{drivable_area, driving_direction, progress, speed_limit, ttc};
use rudder_sim::driving::scenario::{AgentObs, AgentState, Category, EgoPose};
use rudder_sim::driving::vehicle::{EgoState, Pacifica, EGO_WIDTH, REAR_TO_CENTER};
use std::f64::consts::{FRAC_PI_2, PI};

fn straight(id: u64, kind: LaneKind, roadblock: u64, from: P2, to: P2, limit: Option<f64>) -> Lane {
    Lane::from_centerline(id, kind, roadblock, vec![from, to], 3.5, limit)
}

fn map_of(mut lanes: Vec<Lane>, links: &[(u64, u64)]) -> Map {
    for &(a, b) in links {
        Map::connect(&mut lanes, a, b);
    }
    Map::new("t", lanes, vec![], vec![], vec![], vec![]).expect("valid test map")
}

/// Two parallel lanes along +x, 3.5 m wide, 200 m long: ids 1 (y = 0) and 2 (y = 3.5).
fn two_lane_road() -> Map {
    map_of(
        vec![
            straight(
                1,
                LaneKind::Lane,
                1,
                P2::new(0.0, 0.0),
                P2::new(200.0, 0.0),
                Some(10.0),
            ),
            straight(
                2,
                LaneKind::Lane,
                1,
                P2::new(0.0, 3.5),
                P2::new(200.0, 3.5),
                Some(10.0),
            ),
        ],
        &[],
    )
}

/// Lane 1 (x 0..50), connector 2 (x 50..80), lane 3 (x 80..130), all at y = 0.
fn through_intersection() -> Map {
    map_of(
        vec![
            straight(
                1,
                LaneKind::Lane,
                1,
                P2::new(0.0, 0.0),
                P2::new(50.0, 0.0),
                Some(10.0),
            ),
            straight(
                2,
                LaneKind::Connector,
                2,
                P2::new(50.0, 0.0),
                P2::new(80.0, 0.0),
                None,
            ),
            straight(
                3,
                LaneKind::Lane,
                3,
                P2::new(80.0, 0.0),
                P2::new(130.0, 0.0),
                Some(10.0),
            ),
        ],
        &[(1, 2), (2, 3)],
    )
}

/// Ego whose *centre* is at (x, y).
fn ego_c(t: f64, x: f64, y: f64, h: f64, v: f64) -> EgoState {
    EgoState::from_pose(
        t,
        x - REAR_TO_CENTER * h.cos(),
        y - REAR_TO_CENTER * h.sin(),
        h,
        v,
        0.0,
    )
}

/// A 4 m x 2 m object centred at (x, y) moving at `v` along `h`.
fn obj(id: u64, cat: Category, x: f64, y: f64, h: f64, v: f64) -> AgentObs {
    AgentObs {
        id,
        category: cat,
        state: AgentState {
            x,
            y,
            heading: h,
            vx: v * h.cos(),
            vy: v * h.sin(),
        },
        length: 4.0,
        width: 2.0,
    }
}

/// A car 3.5 m to the left crossing towards the ego's path at 5 m/s.
fn crossing_car(x: f64, y: f64) -> AgentObs {
    obj(1, Category::Vehicle, x, y, -FRAC_PI_2, 5.0)
}

fn deg(rad: Option<f64>) -> f64 {
    rad.expect("distinct points").to_degrees()
}

fn close(a: Option<f64>, b: f64) -> bool {
    a.is_some_and(|a| (a - b).abs() < 1e-9)
}

#[test]
fn ttc_angles_are_measured_from_the_rear_axle() {
    let m = two_lane_road();
    let e = ego_c(0.0, 50.0, 0.0, 0.0, 10.0);
    let rear = P2::new(e.vehicle.x, e.vehicle.y);
    // Worked example: 5 m ahead of the centre, 3.5 m aside: 35 deg from the centre, 28 from
    // the rear axle (1.461 m behind it), so inside nuPlan's 30 deg "ahead" cone.
    let car = crossing_car(55.0, 3.5);
    let at = P2::new(55.0, 3.5);
    assert!((deg(relative_angle(e.center(), 0.0, at)) - 34.99).abs() < 0.01);
    assert!((deg(relative_angle(rear, 0.0, at)) - 28.44).abs() < 0.01);
    // It crosses the ego's path: first overlap at 0.2 s (ego front 54.588 m > its side 54 m).
    assert!(close(ttc::ttc_at(&m, &e, &[car]), 0.2));
    let ego = vec![e];
    assert_eq!(ttc::evaluate(&m, &ego, &[vec![car]], &[false]), 0.0);
    // 29 deg from the rear axle (36 from the centre) counts; 31 deg does not.
    let ahead_at = |angle: f64| rear.x + 3.5 / angle.to_radians().tan();
    let x29 = ahead_at(29.0);
    assert!(deg(relative_angle(e.center(), 0.0, P2::new(x29, 3.5))) > 35.0);
    assert!(close(ttc::ttc_at(&m, &e, &[crossing_car(x29, 3.5)]), 0.2));
    let far = ttc::ttc_at(&m, &e, &[crossing_car(ahead_at(31.0), 3.5)]);
    assert!(far.is_some_and(f64::is_infinite), "{far:?}");
}

#[test]
fn ttc_widens_to_150_deg_in_a_lane_change_or_an_intersection() {
    // A car 45 deg off the heading (3.5 m aside, 3.46 m ahead of the rear axle) crossing in.
    let beside = |e: &EgoState| crossing_car(e.vehicle.x + 3.461, e.vehicle.y + 3.5);
    let road = two_lane_road();
    let in_lane = ego_c(0.0, 50.0, 0.0, 0.0, 10.0);
    let t = ttc::ttc_at(&road, &in_lane, &[beside(&in_lane)]);
    assert!(t.is_some_and(f64::is_infinite), "{t:?}");
    // Straddling lanes 1 and 2: corners in unconnected lanes, the cone opens to 150 deg.
    let straddling = ego_c(0.0, 50.0, 1.75, 0.0, 10.0);
    assert!(!collisions::ego_in_one_lane(&road, &straddling));
    assert!(close(
        ttc::ttc_at(&road, &straddling, &[beside(&straddling)]),
        0.1
    ));
    // Wholly on a connector (in one lane) but with the rear axle in the "intersection".
    let m = through_intersection();
    let on_connector = ego_c(0.0, 65.0, 0.0, 0.0, 10.0);
    assert!(collisions::ego_in_one_lane(&m, &on_connector));
    assert!(close(
        ttc::ttc_at(&m, &on_connector, &[beside(&on_connector)]),
        0.1
    ));
    let on_lane = ego_c(0.0, 25.0, 0.0, 0.0, 10.0);
    let t = ttc::ttc_at(&m, &on_lane, &[beside(&on_lane)]);
    assert!(t.is_some_and(f64::is_infinite), "{t:?}");
    // The same over a run (one-step runs: lane membership from the run's corner routes).
    let score = |m: &Map, e: &EgoState| ttc::evaluate(m, &[*e], &[vec![beside(e)]], &[false]);
    assert_eq!(score(&road, &in_lane), 1.0);
    assert_eq!(score(&road, &straddling), 0.0);
    assert_eq!(score(&m, &on_connector), 0.0);
    assert_eq!(score(&m, &on_lane), 1.0);
}

#[test]
fn ttc_leaves_out_tracks_already_collided_with() {
    let m = two_lane_road();
    let ego = vec![
        ego_c(0.0, 50.0, 0.0, 0.0, 10.0),
        ego_c(0.1, 51.0, 0.0, 0.0, 10.0),
    ];
    // Step 0: car 7 scrapes the ego's left side (lateral, ego in its lane: not at fault).
    // Step 1: the same car stands 2.5 m ahead (TTC 0.3 s if it counted).
    let ahead = |id: u64| obj(id, Category::Vehicle, 53.588 + 2.5 + 2.0, 0.0, 0.0, 0.0);
    let agents = vec![
        vec![obj(7, Category::Vehicle, 50.0, 2.0, 0.0, 5.0)],
        vec![ahead(7)],
    ];
    let col = collisions::evaluate(&m, &ego, &agents);
    assert_eq!(col.events.len(), 1);
    assert_eq!(col.events[0].2, CollisionType::ActiveLateral);
    assert_eq!(col.score, 1.0);
    assert!(close(ttc::ttc_at(&m, &ego[1], &agents[1]), 0.3));
    assert_eq!(ttc::evaluate(&m, &ego, &agents, &col.at_fault_steps), 1.0);
    assert_eq!(ttc::evaluate_with_collisions(&m, &ego, &agents, &col), 1.0);
    // Another car in the same place still counts.
    let other = vec![agents[0].clone(), vec![ahead(8)]];
    assert_eq!(ttc::evaluate(&m, &ego, &other, &[false, false]), 0.0);
}

#[test]
fn ttc_projects_static_objects_at_speed_0() {
    let m = two_lane_road();
    let e = ego_c(0.0, 50.0, 0.0, 0.0, 10.0);
    // 11.95 m bumper gap; the object reports 5 m/s towards the ego.
    let x = 52.588 + 11.95 + 2.0;
    let cone = obj(1, Category::TrafficCone, x, 0.0, PI, 5.0);
    assert!(close(ttc::ttc_at(&m, &e, &[cone]), 1.2));
    assert_eq!(ttc::evaluate(&m, &[e], &[vec![cone]], &[false]), 1.0);
    // A vehicle with the same state closes at 15 m/s: 0.8 s.
    let car = obj(1, Category::Vehicle, x, 0.0, PI, 5.0);
    assert!(close(ttc::ttc_at(&m, &e, &[car]), 0.8));
    assert_eq!(ttc::evaluate(&m, &[e], &[vec![car]], &[false]), 0.0);
}

#[test]
fn rear_collisions_are_judged_from_the_rear_axle() {
    let m = two_lane_road();
    let e = ego_c(0.0, 50.0, 0.0, 0.0, 5.0);
    let rear = P2::new(e.vehicle.x, e.vehicle.y);
    // Overlapping the rear-left corner: 155.6 deg from the centre, 145.8 from the rear axle.
    let at = P2::new(45.6, 2.0);
    assert!((deg(relative_angle(e.center(), 0.0, at)) - 155.56).abs() < 0.01);
    assert!((deg(relative_angle(rear, 0.0, at)) - 145.77).abs() < 0.01);
    let car = obj(1, Category::Vehicle, at.x, at.y, 0.0, 8.0);
    assert_eq!(collisions::classify(&e, &car), CollisionType::ActiveLateral);
    let straddling = ego_c(0.0, 50.0, 1.75, 0.0, 5.0);
    let car_s = obj(1, Category::Vehicle, at.x, at.y + 1.75, 0.0, 8.0);
    let col = collisions::evaluate(&m, &[straddling], &[vec![car_s]]);
    assert_eq!(col.events[0].2, CollisionType::ActiveLateral);
    assert_eq!((col.at_fault, col.score), ([0, 1, 0], 0.0));
    // Straight behind (170.6 deg from the rear axle): rear, never at fault.
    let behind = obj(2, Category::Vehicle, 45.5, 0.5, 0.0, 8.0);
    assert_eq!(collisions::classify(&e, &behind), CollisionType::ActiveRear);
}

#[test]
fn corners_on_two_connectors_fed_by_one_lane_are_in_one_lane() {
    // Lane 1 (x 0..50) feeds connectors 2 (y -2..0) and 3 (y 0..2), side by side.
    let narrow = |id: u64, y: f64| {
        Lane::from_centerline(
            id,
            LaneKind::Connector,
            2,
            vec![P2::new(50.0, y), P2::new(70.0, y)],
            2.0,
            None,
        )
    };
    let m = map_of(
        vec![
            straight(
                1,
                LaneKind::Lane,
                1,
                P2::new(0.0, 0.0),
                P2::new(50.0, 0.0),
                Some(10.0),
            ),
            narrow(2, -1.0),
            narrow(3, 1.0),
        ],
        &[(1, 2), (1, 3)],
    );
    let e = ego_c(0.0, 50.0, 0.0, 0.0, 5.0);
    let corners = collisions::corners_nuplan_order(&e);
    let objects = corners.map(|c| m.route_objects_at(c));
    assert_eq!(objects, [vec![3], vec![1], vec![1], vec![2]]);
    let shared = collisions::common_or_connected(&m, &objects);
    assert_eq!(
        shared.map(|s| s.into_iter().collect::<Vec<_>>()),
        Some(vec![1])
    );
    assert!(collisions::ego_in_one_lane(&m, &e));
    assert!(!collisions::is_at_fault(
        CollisionType::ActiveLateral,
        &m,
        &e
    ));
    // Rear corners in two parallel lanes: a lane change, lateral collisions at fault.
    let road = two_lane_road();
    let straddling = ego_c(0.0, 50.0, 1.75, 0.0, 5.0);
    assert!(collisions::is_at_fault(
        CollisionType::ActiveLateral,
        &road,
        &straddling
    ));
}

#[test]
fn driving_direction_sums_the_short_windows_at_the_start() {
    let m = two_lane_road();
    // Backs 0.5 m per step for 5 steps, then drives on at 1 m per step.
    let x = |k: usize| {
        if k <= 5 {
            60.0 - 0.5 * k as f64
        } else {
            57.5 + (k - 5) as f64
        }
    };
    let ego: Vec<EgoState> = (0..21)
        .map(|k| ego_c(k as f64 * 0.1, x(k), 0.0, 0.0, 5.0))
        .collect();
    let p = driving_direction::per_step_progress(&m, &ego);
    assert_eq!(p[0], 0.0);
    assert!(p[1..6].iter().all(|d| (d + 0.5).abs() < 1e-9));
    // Every full 11-sample window sums to >= +2.5 m, but samples 0..=5 sum to -2.5 m.
    assert_eq!(driving_direction::horizon_steps(&ego), 10);
    assert!((driving_direction::max_wrong_way(&p) - 2.5).abs() < 1e-9);
    assert_eq!(driving_direction::evaluate(&m, &ego), 0.5);

    // Entering a new lane zeroes the entering step and the next (that one only records its
    // distance): lane 1 then its successor 11, at 1 m per step.
    let chain = map_of(
        vec![
            straight(
                1,
                LaneKind::Lane,
                1,
                P2::new(0.0, 0.0),
                P2::new(50.0, 0.0),
                None,
            ),
            straight(
                11,
                LaneKind::Lane,
                2,
                P2::new(50.0, 0.0),
                P2::new(100.0, 0.0),
                None,
            ),
        ],
        &[(1, 11)],
    );
    let ego: Vec<EgoState> = (0..6)
        .map(|k| ego_c(k as f64 * 0.1, 47.5 + k as f64, 0.0, 0.0, 10.0))
        .collect();
    let p = driving_direction::per_step_progress(&chain, &ego);
    let expect = [0.0, 1.0, 1.0, 0.0, 0.0, 1.0];
    assert!(
        p.iter().zip(expect).all(|(a, b)| (a - b).abs() < 1e-9),
        "{p:?}"
    );
}

/// Six roadblocks of one 20 m lane each along y = 0 (lane k spans x 20(k-1) .. 20k).
fn six_blocks() -> Map {
    let lanes = (1..=6u64)
        .map(|k| {
            let x0 = 20.0 * (k - 1) as f64;
            straight(
                k,
                LaneKind::Lane,
                k,
                P2::new(x0, 0.0),
                P2::new(x0 + 20.0, 0.0),
                None,
            )
        })
        .collect();
    map_of(lanes, &[(1, 2), (2, 3), (3, 4), (4, 5), (5, 6)])
}

#[test]
fn progress_off_the_route_adds_nothing_and_every_later_roadblock_is_searched() {
    let m = six_blocks();
    let route = [1, 2, 3, 4, 5, 6];
    let p = |x: f64, y: f64| P2::new(x, y);
    // Ends off the route: the last step adds 0, not its projection on lane 1 (+5 m).
    let off = [p(5.0, 0.0), p(10.0, 0.0), p(15.0, 10.0)];
    assert!((progress::route_progress(&m, &route, &off) - 5.0).abs() < 1e-9);
    // Leaves lane 1 and comes back in roadblock 5, four roadblocks on: 15 + 3 x 20 + 15 m.
    let back = [p(5.0, 0.0), p(30.0, 10.0), p(95.0, 0.0)];
    assert!((progress::route_progress(&m, &route, &back) - 90.0).abs() < 1e-9);
    // As a ratio against an expert that stays on the route: 5 / 10.
    let ego: Vec<EgoState> = off.iter().map(|q| ego_c(0.0, q.x, q.y, 0.0, 5.0)).collect();
    let expert: Vec<EgoPose> = [5.0, 10.0, 15.0]
        .iter()
        .map(|&x| EgoPose {
            x: x - REAR_TO_CENTER,
            y: 0.0,
            heading: 0.0,
            speed: 5.0,
            acceleration: 0.0,
        })
        .collect();
    let r = progress::progress_ratio(&m, &route, &ego, &expert);
    assert!((r - 0.5).abs() < 1e-9, "{r}");
}

#[test]
fn connector_speed_limits_come_from_the_neighbouring_lanes() {
    // Lane 1 (10 m/s) -> connector 2 (own limit 20 m/s) -> lane 3 (15 m/s); connector 4
    // overlaps connector 2 and leads to lane 5 (25 m/s).
    let m = map_of(
        vec![
            straight(
                1,
                LaneKind::Lane,
                1,
                P2::new(0.0, 0.0),
                P2::new(50.0, 0.0),
                Some(10.0),
            ),
            straight(
                2,
                LaneKind::Connector,
                2,
                P2::new(50.0, 0.0),
                P2::new(70.0, 0.0),
                Some(20.0),
            ),
            straight(
                3,
                LaneKind::Lane,
                3,
                P2::new(70.0, 0.0),
                P2::new(120.0, 0.0),
                Some(15.0),
            ),
            straight(
                4,
                LaneKind::Connector,
                4,
                P2::new(50.0, 0.0),
                P2::new(70.0, 1.0),
                None,
            ),
            straight(
                5,
                LaneKind::Lane,
                5,
                P2::new(70.0, 1.0),
                P2::new(120.0, 1.0),
                Some(25.0),
            ),
        ],
        &[(1, 2), (2, 3), (1, 4), (4, 5)],
    );
    let over = |x: f64, y: f64, v: f64| speed_limit::overspeed(&m, &[ego_c(0.0, x, y, 0.0, v)])[0];
    // On connector 2 alone (y = -1.5 is outside connector 4): max(10, 15) = 15, not its 20.
    assert_eq!(m.route_objects_at(P2::new(60.0, -1.5)), vec![2]);
    assert!((over(60.0, -1.5, 18.0) - 3.0).abs() < 1e-9);
    // Where connectors 2 and 4 overlap: max over both one's neighbours, 25.
    assert_eq!(m.route_objects_at(P2::new(60.0, 0.0)), vec![2, 4]);
    assert_eq!(over(60.0, 0.0, 18.0), 0.0);
    assert!((over(60.0, 0.0, 27.0) - 2.0).abs() < 1e-9);
    // Planners' rule is unchanged: the connector's own limit counts there.
    let c2 = m.lane(2).expect("connector 2");
    assert_eq!(m.speed_limit_of(c2), Some(20.0));

    // A neighbour without a limit voids the connector's limit.
    let m = map_of(
        vec![
            straight(
                1,
                LaneKind::Lane,
                1,
                P2::new(0.0, 0.0),
                P2::new(50.0, 0.0),
                Some(10.0),
            ),
            straight(
                2,
                LaneKind::Connector,
                2,
                P2::new(50.0, 0.0),
                P2::new(70.0, 0.0),
                Some(20.0),
            ),
            straight(
                3,
                LaneKind::Lane,
                3,
                P2::new(70.0, 0.0),
                P2::new(120.0, 0.0),
                None,
            ),
        ],
        &[(1, 2), (2, 3)],
    );
    assert_eq!(m.route_speed_limit(&[2]), None);
    assert_eq!(
        speed_limit::overspeed(&m, &[ego_c(0.0, 60.0, 0.0, 0.0, 22.0)]),
        vec![0.0]
    );
}

#[test]
fn drivable_area_tolerates_strictly_less_than_0_3_m() {
    assert_eq!(drivable_area::score_from_max_violation(0.3), 0.0);
    assert_eq!(drivable_area::score_from_max_violation(0.2999), 1.0);
    // A corner exactly 0.3 m (in floating point) outside the lane: a lane whose right edge is
    // at y_e = 0.3 - 1/32 and ego corners at y = -1/32, both chosen so the sums are exact.
    let y_e = 0.3 - 0.03125;
    let mut lane = Lane::from_centerline(
        1,
        LaneKind::Lane,
        1,
        vec![P2::new(0.0, y_e + 1.75), P2::new(100.0, y_e + 1.75)],
        3.5,
        Some(10.0),
    );
    lane.right = Polyline::new(vec![P2::new(0.0, y_e), P2::new(100.0, y_e)]);
    let m = map_of(vec![lane], &[]);
    let centre_y = EGO_WIDTH / 2.0 - 0.03125;
    let ego = vec![ego_c(0.0, 50.0, centre_y, 0.0, 5.0)];
    assert_eq!(
        drivable_area::max_violation(&m, &ego),
        drivable_area::TOLERANCE
    );
    assert_eq!(drivable_area::evaluate(&m, &ego), 0.0);
    // A hair inside the tolerance passes.
    let ego = vec![ego_c(0.0, 50.0, centre_y + 1e-9, 0.0, 5.0)];
    assert_eq!(drivable_area::evaluate(&m, &ego), 1.0);
}
