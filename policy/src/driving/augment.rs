//! State perturbation for the planner's demos (Diffusion Planner's and PlanTF's augmentation
//! against compounding error): the ego is moved off its logged pose (sideways, along, turned,
//! faster or slower) and the target future leads back to the log within `RECOVERY_STEPS`
//! with a quintic blend, so the planner learns to return to the lane from the states a closed
//! loop drifts into, which a log never shows.

use rudder_robot::driving::{wrap_angle, EgoPose, EgoState};
use rudder_tune::train::Rng;

/// How far a perturbation goes (uniform in +/- each bound).
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Perturbation {
    /// Sideways, in the logged pose's frame (m).
    pub lateral: f64,
    /// Along the heading (m).
    pub longitudinal: f64,
    pub heading: f64,
    /// Relative speed change (0.2: 80 % .. 120 %).
    pub speed: f64,
}

impl Default for Perturbation {
    fn default() -> Self {
        Perturbation {
            lateral: 1.0,
            longitudinal: 0.75,
            heading: 0.15,
            speed: 0.2,
        }
    }
}

/// Future steps over which the target returns to the log (2 s at 10 Hz).
pub const RECOVERY_STEPS: usize = 20;

fn uniform(rng: &mut Rng, half: f64) -> f64 {
    (2.0 * rng.next_f64() - 1.0) * half
}

/// The quintic smoothstep's complement: 1 at u = 0, 0 at u >= 1, flat at both ends.
fn fade(u: f64) -> f64 {
    let u = u.clamp(0.0, 1.0);
    1.0 - u * u * u * (10.0 - 15.0 * u + 6.0 * u * u)
}

/// The ego moved off `ego` by a draw of `p`, and the logged future `future` bent to start from
/// it and rejoin the log after [`RECOVERY_STEPS`].
pub fn perturb(
    ego: &EgoState,
    future: &[EgoPose],
    p: &Perturbation,
    rng: &mut Rng,
) -> (EgoState, Vec<EgoPose>) {
    let v = ego.vehicle;
    let (lat, lon, dh) = (
        uniform(rng, p.lateral),
        uniform(rng, p.longitudinal),
        uniform(rng, p.heading),
    );
    let scale = 1.0 + uniform(rng, p.speed);
    let (s, c) = v.heading.sin_cos();
    let (dx, dy) = (c * lon - s * lat, s * lon + c * lat);
    let mut out = *ego;
    out.vehicle.x += dx;
    out.vehicle.y += dy;
    out.vehicle.heading = wrap_angle(v.heading + dh);
    out.vehicle.speed = (v.speed * scale).max(0.0);
    // The steering angle and rates describe the logged motion; keep them.
    let bent = future
        .iter()
        .enumerate()
        .map(|(k, e)| {
            let w = fade((k + 1) as f64 / RECOVERY_STEPS as f64);
            EgoPose {
                x: e.x + w * dx,
                y: e.y + w * dy,
                heading: wrap_angle(e.heading + w * dh),
                ..*e
            }
        })
        .collect();
    (out, bent)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_bent_future_starts_at_the_offset_and_rejoins_the_log() {
        let ego = EgoState::from_pose(0.0, 0.0, 0.0, 0.0, 10.0, 0.0);
        let future: Vec<EgoPose> = (1..=80)
            .map(|k| EgoPose {
                x: k as f64,
                y: 0.0,
                heading: 0.0,
                speed: 10.0,
                acceleration: 0.0,
            })
            .collect();
        let mut rng = Rng::new(5);
        for _ in 0..20 {
            let (e, f) = perturb(&ego, &future, &Perturbation::default(), &mut rng);
            let (dx, dy) = (e.vehicle.x, e.vehicle.y);
            assert!(dy.abs() <= 1.0 && dx.abs() <= 0.75 && e.vehicle.heading.abs() <= 0.15);
            assert!((8.0..=12.0).contains(&e.vehicle.speed));
            // Near the offset at first, on the log from RECOVERY_STEPS on.
            assert!((f[0].y - dy).abs() < 0.05 * dy.abs().max(0.01) + 1e-9);
            for (a, b) in f[RECOVERY_STEPS - 1..]
                .iter()
                .zip(&future[RECOVERY_STEPS - 1..])
            {
                assert!((a.x - b.x).abs() < 1e-12 && (a.y - b.y).abs() < 1e-12);
            }
            // Monotonic return: the offset never grows.
            for w in f[..RECOVERY_STEPS].windows(2) {
                assert!(w[1].y.abs() <= w[0].y.abs() + 1e-12);
            }
        }
    }
}
