//! nuPlan's two-stage LQR trajectory tracker. Longitudinal: a one-step LQR on speed toward the
//! reference speed `horizon` steps ahead. Lateral: the error dynamics (lateral error, heading
//! error, tyre angle) linearised along the reference speed and curvature over the horizon,
//! accumulated into one step, then a one-step LQR for the steering rate. Reference speed and
//! curvature come from regularised least-squares fits to the planned poses (jerk and
//! curvature-rate penalties). Below the stopping speed a proportional controller takes over.

use super::geometry::wrap_angle;
use super::vehicle::{EgoState, WHEELBASE};
use rudder_robot::driving::Trajectory;

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LqrTracker {
    pub q_longitudinal: f64,
    pub r_longitudinal: f64,
    pub q_lateral: [f64; 3],
    pub r_lateral: f64,
    pub discretization_time: f64,
    pub tracking_horizon: usize,
    pub jerk_penalty: f64,
    pub curvature_rate_penalty: f64,
    pub stopping_proportional_gain: f64,
    pub stopping_velocity: f64,
}

impl Default for LqrTracker {
    /// nuPlan's default tracker configuration.
    fn default() -> Self {
        Self {
            q_longitudinal: 10.0,
            r_longitudinal: 1.0,
            q_lateral: [1.0, 10.0, 0.0],
            r_lateral: 1.0,
            discretization_time: 0.1,
            tracking_horizon: 10,
            jerk_penalty: 1e-4,
            curvature_rate_penalty: 1e-2,
            stopping_proportional_gain: 0.5,
            stopping_velocity: 0.2,
        }
    }
}

/// Solves `M x = b` for a symmetric positive-definite band matrix given by its lower band:
/// `band[i][j]` = M[i][i - j] for j in 0..=bw. Returns `None` if M is not positive definite.
fn solve_banded_spd(band: &mut [Vec<f64>], b: &mut [f64]) -> Option<()> {
    let n = b.len();
    let bw = band.first().map(|r| r.len() - 1).unwrap_or(0);
    // In-place banded Cholesky: M = L L^T, L stored in the same band.
    for i in 0..n {
        for j in (i.saturating_sub(bw))..=i {
            let mut sum = band[i][i - j];
            for k in (i.saturating_sub(bw)).max(j.saturating_sub(bw))..j {
                sum -= band[i][i - k] * band[j][j - k];
            }
            if i == j {
                if sum.is_nan() || sum <= 0.0 {
                    return None;
                }
                band[i][0] = sum.sqrt();
            } else {
                band[i][i - j] = sum / band[j][0];
            }
        }
    }
    for i in 0..n {
        let mut s = b[i];
        for k in i.saturating_sub(bw)..i {
            s -= band[i][i - k] * b[k];
        }
        b[i] = s / band[i][0];
    }
    for i in (0..n).rev() {
        let mut s = b[i];
        for k in i + 1..(i + bw + 1).min(n) {
            s -= band[k][k - i] * b[k];
        }
        b[i] = s / band[i][0];
    }
    Some(())
}

/// Adds `w * D^T D` to the band, D the `order`-th difference operator on n unknowns.
fn add_difference_penalty(band: &mut [Vec<f64>], order: usize, w: f64) {
    let n = band.len();
    let stencil: &[f64] = if order == 1 {
        &[-1.0, 1.0]
    } else {
        &[1.0, -2.0, 1.0]
    };
    let m = stencil.len();
    if n < m {
        return;
    }
    for r in 0..=(n - m) {
        for a in 0..m {
            for c in 0..=a {
                band[r + a][a - c] += w * stencil[a] * stencil[c];
            }
        }
    }
}

/// nuPlan's `INITIAL_CURVATURE_PENALTY`: a tiny weight on the initial curvature alone, so the
/// curvature fit stays positive definite when the plan starts at rest.
pub const INITIAL_CURVATURE_PENALTY: f64 = 1e-10;

/// Least-squares speed profile for displacements `disp` (dx, dy) starting at headings
/// `headings`, the devkit's problem (`_fit_initial_velocity_and_acceleration_profile`):
/// minimise sum_k |dt v_k u(h_k) - d_k|^2 + jerk_penalty * sum_k (a_{k+1} - a_k)^2, with v_k =
/// v_0 + dt (a_0 + ... + a_{k-1}). The penalty is on the raw step-to-step change of
/// acceleration, not on jerk (da/dt): that is nuPlan's choice. Penalising (da/dt)^2 instead
/// smooths 1/dt^2 = 100 times more at dt = 0.1 and rounds off a hard stop within the tracking
/// horizon, so the reference speed stays above the plan's and the ego brakes late. Solved in
/// speed variables (the map from (v_0, a) to v is invertible), where
/// a_{k+1} - a_k = (v_{k+2} - 2 v_{k+1} + v_k) / dt keeps the system banded; no other
/// regularisation, as in the devkit.
pub fn fit_speed_profile(
    disp: &[(f64, f64)],
    headings: &[f64],
    dt: f64,
    jerk_penalty: f64,
) -> Vec<f64> {
    let n = disp.len();
    let mut band = vec![vec![0.0; 3]; n];
    let mut rhs = vec![0.0; n];
    for k in 0..n {
        // |u(h)| = 1, so the x and y rows of step k add up to dt^2 on the diagonal.
        band[k][0] = dt * dt;
        let (s, c) = headings[k].sin_cos();
        rhs[k] = dt * (disp[k].0 * c + disp[k].1 * s);
    }
    add_difference_penalty(&mut band, 2, jerk_penalty / (dt * dt));
    if solve_banded_spd(&mut band, &mut rhs).is_none() {
        return disp.iter().map(|d| d.0.hypot(d.1) / dt).collect();
    }
    rhs
}

/// Least-squares curvature profile, the devkit's problem
/// (`_fit_initial_curvature_and_curvature_rate_profile`): minimise sum_k (dt v_k kappa_k -
/// dh_k)^2 + INITIAL_CURVATURE_PENALTY kappa_0^2 + penalty * sum_k kappa_rate_k^2, with
/// kappa_rate_k = (kappa_{k+1} - kappa_k) / dt. Unlike the jerk penalty, this one is on a rate
/// per second, so in curvature variables the weight on (kappa_{k+1} - kappa_k)^2 is
/// penalty / dt^2.
pub fn fit_curvature_profile(dh: &[f64], speeds: &[f64], dt: f64, penalty: f64) -> Vec<f64> {
    let n = dh.len();
    let mut band = vec![vec![0.0; 2]; n];
    let mut rhs = vec![0.0; n];
    for k in 0..n {
        let a = dt * speeds[k];
        band[k][0] = a * a;
        rhs[k] = a * dh[k];
    }
    if let Some(first) = band.first_mut() {
        first[0] += INITIAL_CURVATURE_PENALTY;
    }
    add_difference_penalty(&mut band, 1, penalty / (dt * dt));
    if solve_banded_spd(&mut band, &mut rhs).is_none() {
        return vec![0.0; n];
    }
    rhs
}

/// The tracker's output: the ideal longitudinal acceleration and steering rate.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct TrackerCommand {
    pub acceleration: f64,
    pub steering_rate: f64,
}

impl LqrTracker {
    /// Reference speed (at the horizon) and curvature profile (over the horizon) from the
    /// planned trajectory sampled every `discretization_time` from `t0`.
    pub fn reference(&self, t0: f64, traj: &Trajectory) -> (f64, Vec<f64>) {
        let dt = self.discretization_time;
        let h = self.tracking_horizon;
        let span = traj.end_time() - t0;
        let steps = if span.is_finite() && span > 0.0 {
            ((span / dt) + 1e-9).floor() as usize
        } else {
            0
        };
        if steps < 1 {
            let p = traj.state_at(t0);
            return (p.speed, vec![0.0; h]);
        }
        let poses: Vec<_> = (0..=steps)
            .map(|k| traj.state_at(t0 + k as f64 * dt))
            .collect();
        let disp: Vec<(f64, f64)> = poses
            .windows(2)
            .map(|w| (w[1].x - w[0].x, w[1].y - w[0].y))
            .collect();
        let headings: Vec<f64> = poses[..steps].iter().map(|p| p.heading).collect();
        let dh: Vec<f64> = poses
            .windows(2)
            .map(|w| wrap_angle(w[1].heading - w[0].heading))
            .collect();
        let v = fit_speed_profile(&disp, &headings, dt, self.jerk_penalty);
        let kappa = fit_curvature_profile(&dh, &v, dt, self.curvature_rate_penalty);
        let v_ref = v[h.min(v.len() - 1)];
        let mut curv: Vec<f64> = kappa.iter().take(h).copied().collect();
        let last = curv.last().copied().unwrap_or(0.0);
        curv.resize(h, last);
        (v_ref, curv)
    }

    /// One tracking step: ideal acceleration and steering rate for the ego at `ego.time_s`.
    pub fn track(&self, ego: &EgoState, traj: &Trajectory) -> TrackerCommand {
        let dt = self.discretization_time;
        let v0 = ego.vehicle.speed;
        let r = traj.state_at(ego.time_s);
        let dx = ego.vehicle.x - r.x;
        let dy = ego.vehicle.y - r.y;
        let (sh, ch) = r.heading.sin_cos();
        let lat0 = [
            -sh * dx + ch * dy,
            wrap_angle(ego.vehicle.heading - r.heading),
            ego.vehicle.steering_angle,
        ];
        let (v_ref, curvature) = self.reference(ego.time_s, traj);
        if v_ref <= self.stopping_velocity && v0 <= self.stopping_velocity {
            return TrackerCommand {
                acceleration: -self.stopping_proportional_gain * (v0 - v_ref),
                steering_rate: 0.0,
            };
        }
        // Longitudinal: state v, input a, one step of length horizon * dt.
        let b = self.tracking_horizon as f64 * dt;
        let accel = -(b * self.q_longitudinal * (v0 - v_ref))
            / (b * self.q_longitudinal * b + self.r_longitudinal);
        // Speeds over the horizon under that constant acceleration.
        let speeds: Vec<f64> = (0..self.tracking_horizon)
            .map(|k| v0 + accel * dt * k as f64)
            .collect();
        // Lateral: accumulate x_{k+1} = A_k x_k + B u + g_k over the horizon.
        let mut a_acc = [[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]];
        let mut b_acc = [0.0; 3];
        let mut g_acc = [0.0; 3];
        for (v, kappa) in speeds.iter().zip(&curvature) {
            let ak = [
                [1.0, v * dt, 0.0],
                [0.0, 1.0, v * dt / WHEELBASE],
                [0.0, 0.0, 1.0],
            ];
            let gk = [0.0, -v * kappa * dt, 0.0];
            a_acc = mat3_mul(&ak, &a_acc);
            let nb = mat3_vec(&ak, &b_acc);
            b_acc = [nb[0], nb[1], nb[2] + dt];
            let ng = mat3_vec(&ak, &g_acc);
            g_acc = [ng[0] + gk[0], ng[1] + gk[1], ng[2] + gk[2]];
        }
        let ax = mat3_vec(&a_acc, &lat0);
        let mut err = [ax[0] + g_acc[0], ax[1] + g_acc[1], ax[2] + g_acc[2]];
        err[1] = wrap_angle(err[1]);
        err[2] = wrap_angle(err[2]);
        let q = self.q_lateral;
        let btqb: f64 = (0..3).map(|i| b_acc[i] * q[i] * b_acc[i]).sum();
        let btqe: f64 = (0..3).map(|i| b_acc[i] * q[i] * err[i]).sum();
        let steering_rate = -btqe / (btqb + self.r_lateral);
        TrackerCommand {
            acceleration: accel,
            steering_rate,
        }
    }
}

fn mat3_mul(a: &[[f64; 3]; 3], b: &[[f64; 3]; 3]) -> [[f64; 3]; 3] {
    let mut r = [[0.0; 3]; 3];
    for i in 0..3 {
        for j in 0..3 {
            r[i][j] = (0..3).map(|k| a[i][k] * b[k][j]).sum();
        }
    }
    r
}

fn mat3_vec(a: &[[f64; 3]; 3], v: &[f64; 3]) -> [f64; 3] {
    [
        a[0][0] * v[0] + a[0][1] * v[1] + a[0][2] * v[2],
        a[1][0] * v[0] + a[1][1] * v[1] + a[1][2] * v[2],
        a[2][0] * v[0] + a[2][1] * v[1] + a[2][2] * v[2],
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn banded_solver_matches_dense() {
        // Tridiagonal 2 -1 system with known solution.
        let n = 5;
        let mut band = vec![vec![2.0, -1.0]; n];
        band[0][1] = 0.0;
        let x = [1.0, 2.0, 3.0, 4.0, 5.0];
        let mut b: Vec<f64> = (0..n)
            .map(|i| {
                2.0 * x[i]
                    - if i > 0 { x[i - 1] } else { 0.0 }
                    - if i + 1 < n { x[i + 1] } else { 0.0 }
            })
            .collect();
        solve_banded_spd(&mut band, &mut b).unwrap();
        for i in 0..n {
            assert!((b[i] - x[i]).abs() < 1e-12);
        }
    }

    #[test]
    fn fits_recover_constant_motion() {
        let dt = 0.1;
        let disp = vec![(1.0, 0.0); 20];
        let v = fit_speed_profile(&disp, &[0.0; 20], dt, 1e-4);
        assert!(v.iter().all(|x| (x - 10.0).abs() < 1e-6), "{v:?}");
        // Circle of radius 50 at 10 m/s: heading change 0.02 rad per step.
        let k = fit_curvature_profile(&[0.02; 20], &v, dt, 1e-2);
        assert!(k.iter().all(|x| (x - 0.02).abs() < 1e-6), "{k:?}");
    }
}
