//! ego_is_comfortable: six signals of the ego, each within its bound at every sample -> 1,
//! else 0. The accelerations are Savitzky-Golay smoothed (window min(8, n), order 2); jerks are
//! SG derivatives of those (window min(15, n), order 2); yaw rate and yaw acceleration are SG
//! derivatives 1 and 2 of the unwrapped heading (window 5, order 2 and 3).
//!
//! The inputs are nuPlan's, not the physical ones (see [`Pacifica::center_acceleration`]):
//! longitudinal = the devkit's centre value a + d (w^2 + alpha); lateral = the rear-axle
//! lateral acceleration, which its kinematic bicycle sets to 0 on every propagated state, so
//! the lateral bound cannot fail on them; the jerk is the derivative of |rear-axle
//! acceleration|, not of the centre acceleration's magnitude.

use super::super::savgol::savgol;
use super::super::vehicle::{EgoState, Pacifica};

pub const MIN_LON_ACCEL: f64 = -4.05;
pub const MAX_LON_ACCEL: f64 = 2.40;
pub const MAX_ABS_LAT_ACCEL: f64 = 4.89;
pub const MAX_ABS_JERK: f64 = 8.37;
pub const MAX_ABS_LON_JERK: f64 = 4.13;
pub const MAX_ABS_YAW_RATE: f64 = 0.95;
pub const MAX_ABS_YAW_ACCEL: f64 = 1.93;

/// The six signals, sample by sample.
#[derive(Debug, Clone, Default)]
pub struct ComfortSignals {
    pub lon_accel: Vec<f64>,
    pub lat_accel: Vec<f64>,
    pub jerk: Vec<f64>,
    pub lon_jerk: Vec<f64>,
    pub yaw_rate: Vec<f64>,
    pub yaw_accel: Vec<f64>,
}

pub fn signals(ego: &[EgoState]) -> Option<ComfortSignals> {
    let n = ego.len();
    if n < 2 {
        return None;
    }
    let dt = (ego[n - 1].time_s - ego[0].time_s) / (n - 1) as f64;
    let acc: Vec<(f64, f64)> = ego.iter().map(|e| e.center_acceleration()).collect();
    let lon: Vec<f64> = acc.iter().map(|a| a.0).collect();
    let lat: Vec<f64> = acc.iter().map(|a| a.1).collect();
    // nuPlan's value, not the physical one: its jerk metric differentiates the rear-axle
    // acceleration's magnitude, not the hypot of the centre components above.
    let mag: Vec<f64> = ego.iter().map(|e| e.acceleration_magnitude()).collect();
    let lon_s = savgol(&lon, 8, 2, 0, dt)?;
    let lat_s = savgol(&lat, 8, 2, 0, dt)?;
    let mag_s = savgol(&mag, 8, 2, 0, dt)?;
    let mut heading: Vec<f64> = ego.iter().map(|e| e.vehicle.heading).collect();
    unwrap(&mut heading);
    Some(ComfortSignals {
        jerk: savgol(&mag_s, 15, 2, 1, dt)?,
        lon_jerk: savgol(&lon_s, 15, 2, 1, dt)?,
        lon_accel: lon_s,
        lat_accel: lat_s,
        yaw_rate: savgol(&heading, 5, 2, 1, dt)?,
        yaw_accel: savgol(&heading, 5, 3, 2, dt)?,
    })
}

/// Removes 2 pi jumps (numpy.unwrap): each step is replaced by its wrapped difference.
pub fn unwrap(h: &mut [f64]) {
    let mut prev_raw = match h.first() {
        Some(&v) => v,
        None => return,
    };
    for i in 1..h.len() {
        let raw = h[i];
        h[i] = h[i - 1] + super::super::geometry::wrap_angle(raw - prev_raw);
        prev_raw = raw;
    }
}

pub fn within_bounds(s: &ComfortSignals) -> bool {
    s.lon_accel
        .iter()
        .all(|&a| a > MIN_LON_ACCEL && a < MAX_LON_ACCEL)
        && s.lat_accel.iter().all(|a| a.abs() < MAX_ABS_LAT_ACCEL)
        && s.jerk.iter().all(|a| a.abs() < MAX_ABS_JERK)
        && s.lon_jerk.iter().all(|a| a.abs() < MAX_ABS_LON_JERK)
        && s.yaw_rate.iter().all(|a| a.abs() < MAX_ABS_YAW_RATE)
        && s.yaw_accel.iter().all(|a| a.abs() < MAX_ABS_YAW_ACCEL)
}

pub fn evaluate(ego: &[EgoState]) -> f64 {
    match signals(ego) {
        Some(s) if within_bounds(&s) => 1.0,
        Some(_) => 0.0,
        None => 1.0,
    }
}
