//! The comfort inputs and the LQR tracker's speed / curvature fits against nuplan-devkit.
//!
//! Comfort: the devkit's `center_acceleration_2d` is (a + d (w^2 + alpha), a_lat) with a_lat = 0
//! from its kinematic bicycle, and its jerk differentiates |rear-axle acceleration|; these
//! tests pin those values where the physical ones differ.
//!
//! Tracker: the expected profiles below were computed once with numpy by building the
//! devkit's own least-squares problems (initial value + derivative unknowns, `pinv` of the
//! regularised normal matrix, then integration) and are pasted here.

use rudder_robot::driving::{Trajectory, TrajectoryPoint};
use rudder_robot::types::VehicleCommand;
use rudder_sim::driving::geometry::wrap_angle;
use rudder_sim::driving::lqr::{fit_curvature_profile, fit_speed_profile, LqrTracker};
use rudder_sim::driving::metrics::comfort;
use rudder_sim::driving::vehicle::{EgoState, Pacifica, REAR_TO_CENTER, WHEELBASE};

const DT: f64 = 0.1;

fn assert_close(actual: f64, expected: f64, tolerance: f64, what: &str) {
    assert!(
        (actual - expected).abs() <= tolerance,
        "{what}: got {actual}, expected {expected} (tolerance {tolerance})"
    );
}

#[test]
fn center_acceleration_is_the_devkit_shift() {
    let mut ego = EgoState::from_pose(0.0, 0.0, 0.0, 0.0, 8.0, 1.0);
    ego.yaw_rate = 0.4;
    ego.yaw_acceleration = 0.3;
    let (lon, lat) = ego.center_acceleration();
    // a + d (w^2 + alpha) = 1.0 + 1.461 * (0.16 + 0.3) = 1.67206. The physical value would be
    // a - w^2 d = 0.76624 along and v w + alpha d = 3.6383 across.
    assert_close(REAR_TO_CENTER, 1.461, 1e-12, "rear axle to centre");
    assert_close(lon, 1.67206, 1e-12, "longitudinal centre acceleration");
    assert_eq!(lat, 0.0, "the bicycle's rear-axle lateral acceleration");
    // |rear-axle acceleration|, whatever the yaw motion.
    ego.vehicle.acceleration = -3.0;
    assert_eq!(ego.acceleration_magnitude(), 3.0);
}

/// 15 s of a constant-speed turn at 10 m/s and 0.5 rad/s, driven through the vehicle model
/// with a held tyre angle.
fn constant_turn() -> Vec<EgoState> {
    let speed = 10.0;
    let steering_angle = (0.5 * WHEELBASE / speed).atan();
    let mut ego = EgoState::from_pose(0.0, 0.0, 0.0, 0.0, speed, 0.0);
    ego.vehicle.steering_angle = steering_angle;
    // As the model computes it, so that the first step sees no yaw acceleration.
    ego.yaw_rate = speed * steering_angle.tan() / WHEELBASE;
    let hold = VehicleCommand {
        acceleration: 0.0,
        steering_angle,
    };
    let mut history = vec![ego];
    for _ in 0..150 {
        ego = ego.propagate(hold, 0.0, DT);
        history.push(ego);
    }
    history
}

#[test]
fn constant_turn_passes_the_lateral_bound() {
    let history = constant_turn();
    assert_close(history[150].yaw_rate, 0.5, 1e-12, "held yaw rate");
    assert_close(history[150].vehicle.speed, 10.0, 1e-12, "held speed");
    let signals = comfort::signals(&history).expect("151 samples are enough for every window");
    // nuPlan's lateral signal is the rear axle's, which its bicycle sets to 0. The physical
    // centre value v w + alpha d = 10 * 0.5 = 5.0 > 4.89 made the old code fail this turn.
    assert!(signals.lat_accel.iter().all(|&a| a == 0.0));
    // Longitudinal: 0 + d (w^2 + 0) = 1.461 * 0.25 = 0.36525 at every sample.
    for (k, &lon) in signals.lon_accel.iter().enumerate() {
        assert_close(lon, 0.36525, 1e-9, &format!("lon accel [{k}]"));
    }
    // |a| = 0 throughout, so no jerk (the old centre hypot was constant here too).
    assert!(signals.jerk.iter().all(|j| j.abs() < 1e-9));
    for (k, &rate) in signals.yaw_rate.iter().enumerate() {
        assert_close(rate, 0.5, 1e-9, &format!("yaw rate [{k}]"));
    }
    assert!(comfort::within_bounds(&signals));
    assert_eq!(comfort::evaluate(&history), 1.0);
}

#[test]
fn jerk_is_the_derivative_of_the_rear_axle_acceleration_magnitude() {
    // a(t) = -2 + 0.5 t through zero at t = 4 s (sample 40), in a 0.3 rad/s turn, with the
    // speed its integral from 10 m/s (minimum 6 m/s at t = 4).
    let history: Vec<EgoState> = (0..151)
        .map(|k| {
            let t = k as f64 * DT;
            let acceleration = -2.0 + 0.5 * t;
            let speed = 10.0 - 2.0 * t + 0.25 * t * t;
            let mut ego =
                EgoState::from_pose(t, 0.0, 0.0, wrap_angle(0.3 * t), speed, acceleration);
            ego.yaw_rate = 0.3;
            ego
        })
        .collect();
    let signals = comfort::signals(&history).expect("151 samples are enough for every window");
    // |a| falls at 0.5 m/s^3 before the zero crossing and rises at 0.5 after it; the smoothing
    // and derivative windows (8 and 15 samples) reach the kink only from about sample 30 to 50.
    // The old input, hypot(a - w^2 d, v w + alpha d), starts near hypot(-2.13, 3.0) and has no
    // such slopes.
    for (k, &jerk) in signals.jerk.iter().enumerate() {
        if k <= 25 {
            assert_close(jerk, -0.5, 1e-9, &format!("jerk [{k}]"));
        } else if k >= 55 {
            assert_close(jerk, 0.5, 1e-9, &format!("jerk [{k}]"));
        }
    }
    // The longitudinal signal a + d w^2 is linear, so its jerk is 0.5 everywhere.
    for (k, &jerk) in signals.lon_jerk.iter().enumerate() {
        assert_close(jerk, 0.5, 1e-9, &format!("lon jerk [{k}]"));
    }
}

/// Straight plan along heading 0.3 rad: 10 m/s at t = 0, braking at 10 m/s^2 to a stop at
/// t = 1 s, then standing until t = 4 s; one point every 0.1 s.
fn sudden_stop_plan() -> Trajectory {
    let heading: f64 = 0.3;
    let points = (0..=40)
        .map(|k| {
            let t = k as f64 * DT;
            let braking_time = t.min(1.0);
            let distance = 10.0 * braking_time - 0.5 * 10.0 * braking_time * braking_time;
            TrajectoryPoint {
                t,
                x: distance * heading.cos(),
                y: distance * heading.sin(),
                heading,
                speed: 10.0 - 10.0 * braking_time,
            }
        })
        .collect();
    Trajectory { points }
}

/// The devkit's fitted speed profile (v_0 + cumulative accelerations) for `sudden_stop_plan`
/// with jerk_penalty 1e-4 and dt 0.1, from numpy.
const DEVKIT_SPEEDS: [f64; 40] = [
    9.499995733583807,
    8.500959906577174,
    7.5019283459869985,
    6.50194541165243,
    5.498127117425563,
    4.485644065505941,
    3.4615397406675434,
    2.437213562178343,
    1.4625252086387164,
    0.6501207964706488,
    0.15012123345731254,
    -0.03747336908875454,
    -0.06278413331228982,
    -0.0384588122693188,
    -0.014361025703518493,
    -0.0018955810892897773,
    0.0018937398025489216,
    0.001858736290458296,
    0.0009574678903483402,
    0.0002892578277347013,
    -4.0385621939975636e-06,
    -6.982377199982182e-05,
    -5.146173197800863e-05,
    -2.249260036002454e-05,
    -4.994803459723585e-06,
    1.445832920055068e-06,
    2.2382863669179187e-06,
    1.3457016905249475e-06,
    4.92937358487211e-07,
    5.915006795476074e-08,
    -6.944082464599433e-08,
    -6.57659882108419e-08,
    -3.331527587135952e-08,
    -9.812564982780714e-09,
    3.3364422336035204e-10,
    2.5274271564512674e-09,
    1.8391332901046553e-09,
    8.117080341207839e-10,
    1.490025880457324e-10,
    -2.568398826952034e-10,
];

#[test]
fn speed_fit_matches_the_devkit_least_squares() {
    let plan = sudden_stop_plan();
    let displacements: Vec<(f64, f64)> = plan
        .points
        .windows(2)
        .map(|w| (w[1].x - w[0].x, w[1].y - w[0].y))
        .collect();
    let headings: Vec<f64> = plan.points[..40].iter().map(|p| p.heading).collect();
    let speeds = fit_speed_profile(&displacements, &headings, DT, 1e-4);
    assert_eq!(speeds.len(), DEVKIT_SPEEDS.len());
    for (k, (&ours, &devkit)) in speeds.iter().zip(&DEVKIT_SPEEDS).enumerate() {
        assert_close(ours, devkit, 1e-9, &format!("speed [{k}]"));
    }
}

#[test]
fn tracker_brakes_earlier_than_with_the_old_jerk_scaling() {
    let plan = sudden_stop_plan();
    let ego = EgoState::from_pose(0.0, 0.0, 0.0, 0.3, 10.0, 0.0);
    let devkit = LqrTracker::default();
    // The old weight jerk_penalty / dt^4 on (v_{k+2} - 2 v_{k+1} + v_k)^2 is the devkit's
    // jerk_penalty / dt^2 with a penalty dt^-2 = 100 times larger.
    let old_scaling = LqrTracker {
        jerk_penalty: devkit.jerk_penalty / (DT * DT),
        ..devkit
    };
    // The reference speed is the fit one horizon (10 steps) ahead, where the plan has stopped.
    let (reference_speed, curvature) = devkit.reference(0.0, &plan);
    assert_close(reference_speed, DEVKIT_SPEEDS[10], 1e-9, "reference speed");
    assert!(curvature.iter().all(|c| c.abs() < 1e-9), "{curvature:?}");
    let (old_reference_speed, _) = old_scaling.reference(0.0, &plan);
    assert_close(
        old_reference_speed,
        0.8979531255347251,
        1e-9,
        "old reference speed",
    );
    // One-step longitudinal LQR: -(N dt q (v0 - v_ref)) / ((N dt)^2 q + r), N dt = 1, q = 10,
    // r = 1: -(10 (10 - v_ref)) / 11.
    let command = devkit.track(&ego, &plan);
    let old_command = old_scaling.track(&ego, &plan);
    assert_close(
        command.acceleration,
        -8.954435242311535,
        1e-9,
        "devkit command",
    );
    assert_close(
        old_command.acceleration,
        -8.274588067695705,
        1e-9,
        "old command",
    );
    assert!(command.acceleration < old_command.acceleration - 0.6);
    assert_close(
        command.steering_rate,
        0.0,
        1e-9,
        "steering rate on a straight plan",
    );
}

#[test]
fn curvature_fit_matches_the_devkit_least_squares() {
    // Pulling away from rest at 1 m/s^2 (v_k = 0.1 k) into a 0.1 1/m curve from step 6: the
    // first speed is 0, so only the devkit's 1e-10 weight on the initial curvature (not on the
    // others) pins it; the old 1e-9 on every curvature is off by 1.4e-8.
    let speeds: Vec<f64> = (0..20).map(|k| 0.1 * k as f64).collect();
    let heading_changes: Vec<f64> = speeds
        .iter()
        .enumerate()
        .map(|(k, v)| DT * v * if k >= 6 { 0.1 } else { 0.0 })
        .collect();
    let devkit_curvatures = [
        0.09377374701657222,
        0.0937737470259496,
        0.09378312441002956,
        0.09383001504387355,
        0.09396135269125701,
        0.09424302850294648,
        0.09476031188589333,
        0.09525873239162938,
        0.09573392068608443,
        0.0961818060729304,
        0.09659876408896713,
        0.09698170974589351,
        0.09732813409074521,
        0.09763608356650365,
        0.09790408285453599,
        0.09813100216651723,
        0.09831586902724511,
        0.09845762213507046,
        0.09855480052259936,
        0.09860515444706047,
    ];
    let curvatures = fit_curvature_profile(&heading_changes, &speeds, DT, 1e-2);
    assert_eq!(curvatures.len(), devkit_curvatures.len());
    for (k, (&ours, &devkit)) in curvatures.iter().zip(&devkit_curvatures).enumerate() {
        assert_close(ours, devkit, 1e-9, &format!("curvature [{k}]"));
    }
}
