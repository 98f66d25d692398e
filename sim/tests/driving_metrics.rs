//! Each nuPlan metric on hand-built cases at and around its thresholds.

use rudder_sim::driving::geometry::P2;
use rudder_sim::driving::map::{Lane, LaneKind, Map};
use rudder_sim::driving::metrics::{
    collisions, comfort, drivable_area, driving_direction, progress, speed_limit, ttc,
};
use rudder_sim::driving::scenario::{AgentObs, AgentState, Category, EgoPose};
use rudder_sim::driving::vehicle::{EgoState, REAR_TO_CENTER};

/// Two parallel lanes along +x (y = 0 and y = 3.5), 3.5 m wide, 200 m long, limit 10 m/s; a
/// drivable area strip from y = -3.5 to -1.75 (a shoulder) between x = 100 and 200.
fn road() -> Map {
    let mut lanes = Vec::new();
    for (i, y) in [(0u64, 0.0), (1, 3.5)] {
        for k in 0..2u64 {
            let pts = (0..=10)
                .map(|j| P2::new(k as f64 * 100.0 + j as f64 * 10.0, y))
                .collect();
            lanes.push(Lane::from_centerline(
                10 * k + i + 1,
                LaneKind::Lane,
                k + 1,
                pts,
                3.5,
                Some(10.0),
            ));
        }
        Map::connect(&mut lanes, i + 1, 10 + i + 1);
    }
    let shoulder = vec![
        P2::new(100.0, -3.5),
        P2::new(200.0, -3.5),
        P2::new(200.0, -1.75),
        P2::new(100.0, -1.75),
    ];
    Map::new("road", lanes, vec![shoulder], vec![], vec![], vec![]).unwrap()
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

fn agent(id: u64, cat: Category, x: f64, y: f64, h: f64, v: f64) -> AgentObs {
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

#[test]
fn collision_classification_and_fault() {
    let m = road();
    let e = ego_c(0.0, 50.0, 0.0, 0.0, 5.0);
    // Front: a car just ahead, overlapping the front edge.
    let front = agent(1, Category::Vehicle, 54.5, 0.0, 0.0, 2.0);
    assert_eq!(
        collisions::classify(&e, &front),
        collisions::CollisionType::ActiveFront
    );
    // Rear: a car hitting from behind (> 150 deg).
    let rear = agent(2, Category::Vehicle, 45.5, 0.0, 0.0, 8.0);
    assert_eq!(
        collisions::classify(&e, &rear),
        collisions::CollisionType::ActiveRear
    );
    // Lateral: a car beside, overlapping the side only.
    let side = agent(3, Category::Vehicle, 50.0, 2.0, 0.0, 5.0);
    assert_eq!(
        collisions::classify(&e, &side),
        collisions::CollisionType::ActiveLateral
    );
    // Ego in its lane: lateral not at fault; straddling two lanes: at fault.
    assert!(!collisions::is_at_fault(
        collisions::CollisionType::ActiveLateral,
        &m,
        &e
    ));
    let straddle = ego_c(0.0, 50.0, 1.75, 0.0, 5.0);
    assert!(collisions::is_at_fault(
        collisions::CollisionType::ActiveLateral,
        &m,
        &straddle
    ));
    // Stopped ego at 0.05 m/s is never at fault; at 0.06 hitting a parked car is.
    let slow = ego_c(0.0, 50.0, 0.0, 0.0, 0.05);
    assert_eq!(
        collisions::classify(&slow, &front),
        collisions::CollisionType::StoppedEgo
    );
    let parked = agent(4, Category::Vehicle, 54.5, 0.0, 0.0, 0.05);
    let e6 = ego_c(0.0, 50.0, 0.0, 0.0, 0.06);
    assert_eq!(
        collisions::classify(&e6, &parked),
        collisions::CollisionType::StoppedTrack
    );
    let cone = agent(5, Category::TrafficCone, 54.5, 0.0, 0.0, 3.0);
    assert_eq!(
        collisions::classify(&e6, &cone),
        collisions::CollisionType::StoppedTrack
    );
    // Scores: one object -> 0.5, two -> 0, one vehicle or VRU -> 0.
    assert_eq!(collisions::score_from_counts([0, 0, 0]), 1.0);
    assert_eq!(collisions::score_from_counts([0, 0, 1]), 0.5);
    assert_eq!(collisions::score_from_counts([0, 0, 2]), 0.0);
    assert_eq!(collisions::score_from_counts([0, 1, 0]), 0.0);
    assert_eq!(collisions::score_from_counts([1, 0, 0]), 0.0);
    // Over a run a track counts once even if it stays overlapped.
    let ego: Vec<_> = (0..5)
        .map(|k| ego_c(k as f64 * 0.1, 50.0, 0.0, 0.0, 5.0))
        .collect();
    let cones: Vec<_> = (0..5)
        .map(|_| vec![agent(9, Category::TrafficCone, 54.5, 0.0, 0.0, 0.0)])
        .collect();
    let r = collisions::evaluate(&m, &ego, &cones);
    assert_eq!((r.at_fault, r.score), ([0, 0, 1], 0.5));
    assert_eq!(r.at_fault_steps.iter().filter(|x| **x).count(), 1);
}

#[test]
fn drivable_area_tolerance_is_0_3_m() {
    let m = road();
    // Lane 1's right edge is y = -1.75; ego half-width 1.1485. Centre at y = -0.6015 - d puts
    // the right corners d beyond the edge.
    let at = |d: f64, x: f64| vec![ego_c(0.0, x, -1.75 + 1.1485 - d, 0.0, 5.0)];
    assert_eq!(drivable_area::evaluate(&m, &at(0.29, 50.0)), 1.0);
    assert_eq!(drivable_area::evaluate(&m, &at(0.31, 50.0)), 0.0);
    assert!((drivable_area::max_violation(&m, &at(0.2, 50.0)) - 0.2).abs() < 1e-9);
    // On the shoulder (drivable layer) the same offset is fine.
    assert_eq!(drivable_area::evaluate(&m, &at(1.0, 150.0)), 1.0);
}

#[test]
fn driving_direction_thresholds() {
    assert_eq!(driving_direction::score_from_wrong_way(1.99), 1.0);
    assert_eq!(driving_direction::score_from_wrong_way(2.0), 0.5);
    assert_eq!(driving_direction::score_from_wrong_way(5.99), 0.5);
    assert_eq!(driving_direction::score_from_wrong_way(6.0), 0.0);
    let m = road();
    // Reversing at 2.5 m/s for 2 s along lane 1 (heading pi: wrong way): 2.5 m per 1 s window.
    let back: Vec<_> = (0..21)
        .map(|k| {
            ego_c(
                k as f64 * 0.1,
                80.0 - 0.25 * k as f64,
                0.0,
                std::f64::consts::PI,
                2.5,
            )
        })
        .collect();
    let p = driving_direction::per_step_progress(&m, &back);
    assert_eq!(p[0], 0.0);
    // A window sums 11 samples: 10 steps of 0.25 m plus the zero of the first step, then 11 steps.
    assert!((driving_direction::max_wrong_way(&p) - 2.75).abs() < 1e-9);
    assert_eq!(driving_direction::evaluate(&m, &back), 0.5);
    let fwd: Vec<_> = (0..21)
        .map(|k| ego_c(k as f64 * 0.1, 20.0 + k as f64, 0.0, 0.0, 10.0))
        .collect();
    assert_eq!(driving_direction::evaluate(&m, &fwd), 1.0);
}

#[test]
fn progress_ratio_rules() {
    assert_eq!(progress::ratio(-2.1, 50.0), 0.0);
    assert_eq!(progress::ratio(-1.0, 50.0), 2.0 / 50.0);
    assert_eq!(progress::ratio(10.0, 50.0), 0.2);
    assert_eq!(progress::making_progress(0.2), 1.0);
    assert_eq!(progress::making_progress(0.1999), 0.0);
    assert_eq!(progress::ratio(80.0, 50.0), 1.0);
    assert_eq!(progress::ratio(1.0, 1.0), 1.0);
    let m = road();
    // Ego crosses from roadblock 1 into 2 and changes lanes; expert drives twice as far.
    let ego: Vec<_> = (0..11)
        .map(|k| {
            ego_c(
                k as f64,
                90.0 + 2.0 * k as f64,
                if k > 5 { 3.5 } else { 0.0 },
                0.0,
                2.0,
            )
        })
        .collect();
    let exp: Vec<_> = (0..11)
        .map(|k| EgoPose {
            x: 90.0 + 4.0 * k as f64 - REAR_TO_CENTER,
            y: 0.0,
            heading: 0.0,
            speed: 4.0,
            acceleration: 0.0,
        })
        .collect();
    let r = progress::progress_ratio(&m, &[1, 11], &ego, &exp);
    assert!((r - 0.5).abs() < 1e-9, "{r}");
    assert_eq!(progress::progress_ratio(&m, &[], &ego, &exp), 1.0);
}

#[test]
fn ttc_bound() {
    let m = road();
    // Ego 10 m/s, stopped car ahead with a bumper gap g: TTC = g / 10 in 0.1 s steps.
    // Bumper gap: car centre x_c - 2 - (ego centre 50 + 2.588).
    let run = |gap: f64| {
        let e = ego_c(0.0, 50.0, 0.0, 0.0, 10.0);
        let a = agent(
            1,
            Category::Vehicle,
            50.0 + 2.588 + 2.0 + gap,
            0.0,
            0.0,
            0.0,
        );
        ttc::ttc_at(&m, &e, &[a])
    };
    assert!((run(9.05).unwrap() - 1.0).abs() < 1e-9);
    assert!((run(9.95).unwrap() - 1.0).abs() < 1e-9);
    assert!((run(8.95).unwrap() - 0.9).abs() < 1e-9);
    assert!((run(0.5).unwrap() - 0.1).abs() < 1e-9);
    assert!(run(40.0).unwrap().is_infinite());
    // Stopped ego: skipped. Car beside, going the same way: not ahead, ignored.
    let still = ego_c(0.0, 50.0, 0.0, 0.0, 0.005);
    assert_eq!(
        ttc::ttc_at(
            &m,
            &still,
            &[agent(1, Category::Vehicle, 56.0, 0.0, 0.0, 0.0)]
        ),
        None
    );
    let e = ego_c(0.0, 50.0, 0.0, 0.0, 10.0);
    assert!(
        ttc::ttc_at(&m, &e, &[agent(2, Category::Vehicle, 50.0, 3.5, 0.0, 10.0)])
            .unwrap()
            .is_infinite()
    );
    // Score: 0.9 s violates, 1.0 s passes; an at-fault collision step forces 0.
    // (Centre offsets: ego half-length 2.588 + car half-length 2 = 4.588.)
    let ego = vec![e];
    let near = vec![vec![agent(
        1,
        Category::Vehicle,
        50.0 + 4.588 + 8.95,
        0.0,
        0.0,
        0.0,
    )]];
    let far = vec![vec![agent(
        1,
        Category::Vehicle,
        50.0 + 4.588 + 9.05,
        0.0,
        0.0,
        0.0,
    )]];
    assert_eq!(ttc::evaluate(&m, &ego, &near, &[false]), 0.0);
    assert_eq!(ttc::evaluate(&m, &ego, &far, &[false]), 1.0);
    assert_eq!(ttc::evaluate(&m, &ego, &far, &[true]), 0.0);
}

#[test]
fn speed_limit_integral() {
    // 1 m/s over the limit for 22.3 of 150 samples: sum 22.3, * 0.1 / (2.23 * 15) = 1/15.
    let mut over = vec![0.0; 151];
    for v in over.iter_mut().take(22) {
        *v = 1.0;
    }
    over[22] = 0.3;
    let s = speed_limit::score_from_overspeed(&over, 0.1, 15.0);
    assert!((s - (1.0 - 2.23 / (2.23 * 15.0))).abs() < 1e-12);
    assert_eq!(speed_limit::score_from_overspeed(&[0.0; 10], 0.1, 1.0), 1.0);
    assert_eq!(
        speed_limit::score_from_overspeed(&[100.0; 10], 0.1, 1.0),
        0.0
    );
    let m = road();
    let ego: Vec<_> = (0..11)
        .map(|k| ego_c(k as f64 * 0.1, 20.0 + k as f64, 0.0, 0.0, 11.0))
        .collect();
    let sc = speed_limit::evaluate(&m, &ego);
    assert!(
        (sc - (1.0 - 11.0 * 0.1 / (2.23 * 1.0))).abs() < 1e-9,
        "{sc}"
    );
}

fn ego_accel(a: f64) -> Vec<EgoState> {
    (0..151)
        .map(|k| {
            let t = k as f64 * 0.1;
            let mut e = EgoState::from_pose(t, 0.5 * a * t * t, 0.0, 0.0, 5.0 + a * t, a);
            e.vehicle.acceleration = a;
            e
        })
        .collect()
}

#[test]
fn comfort_bounds() {
    assert_eq!(comfort::evaluate(&ego_accel(2.39)), 1.0);
    assert_eq!(comfort::evaluate(&ego_accel(2.41)), 0.0);
    assert_eq!(comfort::evaluate(&ego_accel(-4.04)), 1.0);
    assert_eq!(comfort::evaluate(&ego_accel(-4.06)), 0.0);
    // Yaw rate: constant turn at 0.94 rad/s passes, 0.96 fails.
    let turn = |r: f64| -> Vec<EgoState> {
        (0..151)
            .map(|k| {
                let mut e =
                    EgoState::from_pose(k as f64 * 0.1, 0.0, 0.0, r * k as f64 * 0.1, 0.0, 0.0);
                e.vehicle.heading = rudder_sim::driving::geometry::wrap_angle(e.vehicle.heading);
                e
            })
            .collect()
    };
    assert_eq!(comfort::evaluate(&turn(0.94)), 1.0);
    assert_eq!(comfort::evaluate(&turn(0.96)), 0.0);
    // A longitudinal jerk of 4.0 m/s^3 (1.4 s ramp of acceleration, as long as the jerk
    // window) passes, 4.2 fails.
    let ramp = |j: f64| -> Vec<EgoState> {
        (0..151)
            .map(|k| {
                let t = k as f64 * 0.1;
                let mut e = EgoState::from_pose(t, 0.0, 0.0, 0.0, 5.0, 0.0);
                e.vehicle.acceleration = -3.5 + j * (t - 0.5).clamp(0.0, 1.4);
                e
            })
            .collect()
    };
    let s = comfort::signals(&ramp(4.2)).unwrap();
    assert!(s.lon_jerk.iter().any(|j| j.abs() > 4.13));
    assert_eq!(comfort::evaluate(&ramp(4.2)), 0.0);
    assert_eq!(comfort::evaluate(&ramp(4.0)), 1.0);
}
