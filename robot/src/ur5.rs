//! UR5 / UR5e kinematics from the standard Denavit-Hartenberg parameters (REFERENCE §8).
//!
//! Frames: `base` is the DH frame 0 that the UR controller reports poses in; frame `i` sits at
//! the end of link `i`; frame 6 is the flange (`tool0`). Link transform
//! `T(i-1 -> i) = Rz(theta_i) Tz(d_i) Tx(a_i) Rx(alpha_i)`.
//!
//! ROS (URDF) uses `base_link`, which is `base` turned by pi about z (the URDF's
//! `base_link -> base` joint has rpy 0 0 pi): a point with coordinates `(x, y, z)` in `base` has
//! coordinates `(-x, -y, z)` in `base_link`. [`base_link_from_base`] gives that transform; all
//! functions here work in `base` unless their name says otherwise, so numbers match the teach
//! pendant and the UR documentation.
//!
//! Singularities (all three make the Jacobian lose rank, see [`Ur5Model::singularities`]):
//! - wrist: `sin(q5) = 0`, axes 4 and 6 align; IK keeps `q6` at the caller's hint and puts the
//!   rest of the rotation into `q4`;
//! - shoulder: the wrist centre (origin of frame 5) lies on the cylinder of radius `|d4|` around
//!   the base axis; the two shoulder solutions merge (IK returns them, flagged);
//! - elbow: `sin(q3) = 0`, the arm is fully stretched or folded (edge of reach); the two elbow
//!   solutions merge.
//!
//! Targets that no configuration reaches give [`IkError::Unreachable`] naming why; nothing here
//! returns NaN or panics on finite or non-finite input.

use nalgebra::{
    Isometry3, Matrix3, Matrix4, Matrix6, Rotation3, Translation3, UnitQuaternion, Vector3,
};
use serde::{Deserialize, Serialize};
use std::f64::consts::{PI, TAU};
use thiserror::Error;

/// Six joint angles in radians, in the driver's order (shoulder_pan .. wrist_3).
pub type Joints = [f64; 6];

pub const UR_JOINT_NAMES: [&str; 6] = [
    "shoulder_pan_joint",
    "shoulder_lift_joint",
    "elbow_joint",
    "wrist_1_joint",
    "wrist_2_joint",
    "wrist_3_joint",
];

/// Standard DH parameters of a 6-joint arm (metres, radians).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct DhParams {
    pub a: [f64; 6],
    pub d: [f64; 6],
    pub alpha: [f64; 6],
}

/// Which arm of the family; decides the DH numbers and the streaming rate.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Ur5Variant {
    /// CB3 controller, 125 Hz.
    Ur5,
    /// e-Series, 500 Hz.
    Ur5e,
}

/// Why an IK target cannot be reached.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub enum Unreachable {
    /// The target pose contains NaN or infinity.
    NonFiniteTarget,
    /// The wrist centre is closer to the base axis than the shoulder offset `|d4|` allows.
    WristCentreInsideShoulderCylinder { radius: f64, min_radius: f64 },
    /// The distance the upper arm and forearm must span is outside `[|a2 + a3|, |a2| + |a3|]`
    /// (too far: beyond the stretched arm; too near: inside the folded arm).
    BeyondElbowReach { distance: f64, min: f64, max: f64 },
    /// Analytic solutions exist but none has every joint within its limits.
    NoSolutionWithinLimits { solutions: usize },
}

#[derive(Debug, Error, Clone, Copy, PartialEq)]
pub enum IkError {
    #[error("IK target unreachable: {0:?}")]
    Unreachable(Unreachable),
}

/// Which singularities a configuration (or an IK target) is at, within the tolerance used.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct Singularities {
    pub wrist: bool,
    pub shoulder: bool,
    pub elbow: bool,
}

impl Singularities {
    pub fn any(&self) -> bool {
        self.wrist || self.shoulder || self.elbow
    }
}

/// All analytic IK solutions of one target (at most 8, duplicates at singularities removed),
/// each joint wrapped to (-pi, pi].
#[derive(Debug, Clone, PartialEq)]
pub struct IkSolutions {
    pub solutions: Vec<Joints>,
    pub singular: Singularities,
}

/// Below this, `sin(q5)` is treated as zero: `q6` is then not observable and comes from the hint.
const WRIST_EPS: f64 = 1e-9;
/// Rounding slack allowed before a cosine outside [-1, 1] counts as unreachable.
const REACH_EPS: f64 = 1e-9;
/// Tolerance for flagging a target or configuration as singular.
const SINGULAR_EPS: f64 = 1e-6;

#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Ur5Model {
    pub variant: Ur5Variant,
    pub dh: DhParams,
}

impl Ur5Model {
    pub fn ur5() -> Self {
        Self {
            variant: Ur5Variant::Ur5,
            dh: DhParams {
                a: [0.0, -0.425, -0.39225, 0.0, 0.0, 0.0],
                d: [0.089159, 0.0, 0.0, 0.10915, 0.09465, 0.0823],
                alpha: [PI / 2.0, 0.0, 0.0, PI / 2.0, -PI / 2.0, 0.0],
            },
        }
    }

    pub fn ur5e() -> Self {
        Self {
            variant: Ur5Variant::Ur5e,
            dh: DhParams {
                a: [0.0, -0.425, -0.3922, 0.0, 0.0, 0.0],
                d: [0.1625, 0.0, 0.0, 0.1333, 0.0997, 0.0996],
                alpha: [PI / 2.0, 0.0, 0.0, PI / 2.0, -PI / 2.0, 0.0],
            },
        }
    }

    /// The streaming rate of the arm's controller.
    pub fn control_rate_hz(&self) -> f64 {
        match self.variant {
            Ur5Variant::Ur5 => 125.0,
            Ur5Variant::Ur5e => 500.0,
        }
    }

    /// Position limits: +-2 pi on every joint but the elbow (+-pi).
    pub fn position_limits() -> (Joints, Joints) {
        let mut lo = [-TAU; 6];
        let mut hi = [TAU; 6];
        lo[2] = -PI;
        hi[2] = PI;
        (lo, hi)
    }

    /// 180 deg/s on every joint.
    pub fn max_velocity() -> Joints {
        [PI; 6]
    }

    /// Transform from frame `i` to frame `i + 1` for joint angle `theta` (`i` in 0..6).
    pub fn link_transform(&self, i: usize, theta: f64) -> Isometry3<f64> {
        let i = i.min(5);
        let (st, ct) = theta.sin_cos();
        let (sa, ca) = self.dh.alpha[i].sin_cos();
        let a = self.dh.a[i];
        let d = self.dh.d[i];
        // Rz(theta) Rx(alpha) has columns x = (c, s, 0), y = (-s ca, c ca, sa), z = (s sa, -c sa, ca).
        let r = Matrix3::new(ct, -st * ca, st * sa, st, ct * ca, -ct * sa, 0.0, sa, ca);
        Isometry3::from_parts(
            Translation3::new(a * ct, a * st, d),
            UnitQuaternion::from_rotation_matrix(&Rotation3::from_matrix_unchecked(r)),
        )
    }

    /// Pose of every frame in `base`: index 0 is `base` itself, index 6 the flange.
    pub fn fk_all(&self, q: &Joints) -> [Isometry3<f64>; 7] {
        let mut out = [Isometry3::identity(); 7];
        for i in 0..6 {
            out[i + 1] = out[i] * self.link_transform(i, q[i]);
        }
        out
    }

    /// Flange pose in `base`.
    pub fn fk(&self, q: &Joints) -> Isometry3<f64> {
        let mut t = Isometry3::identity();
        for (i, qi) in q.iter().enumerate() {
            t *= self.link_transform(i, *qi);
        }
        t
    }

    /// Flange position in `base`, with plain 4x4 products: this is what the safety filter calls
    /// many times per tick, so it skips the quaternion conversions of [`Self::fk`].
    pub fn tcp_position(&self, q: &Joints) -> Vector3<f64> {
        let mut t = Matrix4::identity();
        for (i, qi) in q.iter().enumerate() {
            let (st, ct) = qi.sin_cos();
            let (sa, ca) = self.dh.alpha[i].sin_cos();
            let (a, d) = (self.dh.a[i], self.dh.d[i]);
            let li = Matrix4::new(
                ct,
                -st * ca,
                st * sa,
                a * ct,
                st,
                ct * ca,
                -ct * sa,
                a * st,
                0.0,
                sa,
                ca,
                d,
                0.0,
                0.0,
                0.0,
                1.0,
            );
            t *= li;
        }
        Vector3::new(t[(0, 3)], t[(1, 3)], t[(2, 3)])
    }

    /// Flange pose in the URDF's `base_link`.
    pub fn fk_base_link(&self, q: &Joints) -> Isometry3<f64> {
        base_link_from_base() * self.fk(q)
    }

    /// Geometric Jacobian in `base`: rows 0..3 map joint rates to the flange's linear velocity,
    /// rows 3..6 to its angular velocity.
    pub fn jacobian(&self, q: &Joints) -> Matrix6<f64> {
        let frames = self.fk_all(q);
        let pe = frames[6].translation.vector;
        let mut j = Matrix6::zeros();
        for i in 0..6 {
            let z = frames[i].rotation * Vector3::z();
            let p = frames[i].translation.vector;
            let lin = z.cross(&(pe - p));
            for r in 0..3 {
                j[(r, i)] = lin[r];
                j[(r + 3, i)] = z[r];
            }
        }
        j
    }

    /// Signed distance of the wrist centre from the shoulder singularity: the component of the
    /// frame-5 origin along frame 1's x axis (it is zero exactly when the shoulder is singular).
    fn shoulder_radial(&self, q: &Joints) -> f64 {
        let frames = self.fk_all(q);
        let p5 = frames[5].translation.vector;
        let x1 = frames[1].rotation * Vector3::x();
        p5.dot(&x1)
    }

    /// Which singularities `q` is within `SINGULAR_EPS` of.
    pub fn singularities(&self, q: &Joints) -> Singularities {
        Singularities {
            wrist: q[4].sin().abs() < SINGULAR_EPS,
            shoulder: self.shoulder_radial(q).abs() < SINGULAR_EPS,
            elbow: q[2].sin().abs() < SINGULAR_EPS,
        }
    }

    /// Every analytic solution for the flange pose `target` (in `base`). `q6_hint` is used for
    /// `q6` at a wrist singularity, where any `q6` works.
    pub fn ik(&self, target: &Isometry3<f64>, q6_hint: f64) -> Result<IkSolutions, IkError> {
        let m = target.to_homogeneous();
        if m.iter().any(|v| !v.is_finite()) || !q6_hint.is_finite() {
            return Err(IkError::Unreachable(Unreachable::NonFiniteTarget));
        }
        let [_, a2, a3, _, _, _] = self.dh.a;
        let [_, _, _, d4, _, d6] = self.dh.d;
        let r06 = target.rotation.to_rotation_matrix();
        let r06 = r06.matrix();
        let x6 = r06.column(0).into_owned();
        let y6 = r06.column(1).into_owned();
        let z6 = r06.column(2).into_owned();
        let p = target.translation.vector;
        let p05 = p - d6 * z6;

        let radius = p05.x.hypot(p05.y);
        if radius < d4.abs() - REACH_EPS {
            return Err(IkError::Unreachable(
                Unreachable::WristCentreInsideShoulderCylinder {
                    radius,
                    min_radius: d4.abs(),
                },
            ));
        }
        let mut singular = Singularities::default();
        // The wrist centre seen along joint 1's axis must sit at d4 from the arm plane:
        // p05 . z1 = d4 with z1 = (sin q1, -cos q1, 0) gives q1 = psi + pi/2 +- acos(d4 / r).
        let psi = p05.y.atan2(p05.x);
        let phi = if radius > 0.0 {
            (d4 / radius).clamp(-1.0, 1.0).acos()
        } else {
            0.0
        };
        if radius * phi.sin() < SINGULAR_EPS {
            singular.shoulder = true;
        }
        let mut solutions: Vec<Joints> = Vec::with_capacity(8);
        let mut reach_failure = None;
        for q1 in [psi + PI / 2.0 + phi, psi + PI / 2.0 - phi] {
            let (s1, c1) = q1.sin_cos();
            // z1 seen in frame 6 is (cos q6 sin q5, -sin q6 sin q5, cos q5). Taking |sin q5|
            // from the first two components (rather than acos of the third) keeps q5 accurate
            // near the wrist singularity, where acos loses half the digits.
            let xz = x6.x * s1 - x6.y * c1;
            let yz = y6.x * s1 - y6.y * c1;
            let zz = z6.x * s1 - z6.y * c1;
            let a5 = xz.hypot(yz).atan2(zz);
            for q5 in [a5, -a5] {
                let s5 = q5.sin();
                let q6 = if s5.abs() < WRIST_EPS {
                    singular.wrist = true;
                    q6_hint
                } else {
                    (-yz / s5).atan2(xz / s5)
                };
                let t01 = self.link_transform(0, q1);
                let t45 = self.link_transform(4, q5);
                let t56 = self.link_transform(5, q6);
                let t14 = t01.inverse() * target * t56.inverse() * t45.inverse();
                let px = t14.translation.vector.x;
                let py = t14.translation.vector.y;
                let dist2 = px * px + py * py;
                let c3_raw = (dist2 - a2 * a2 - a3 * a3) / (2.0 * a2 * a3);
                if c3_raw.abs() > 1.0 + REACH_EPS {
                    reach_failure = Some(Unreachable::BeyondElbowReach {
                        distance: dist2.sqrt(),
                        min: (a2.abs() - a3.abs()).abs(),
                        max: a2.abs() + a3.abs(),
                    });
                    continue;
                }
                let c3 = c3_raw.clamp(-1.0, 1.0);
                let a3c = c3.acos();
                if a3c.sin().abs() < SINGULAR_EPS {
                    singular.elbow = true;
                }
                let r14 = t14.rotation.to_rotation_matrix();
                let q234 = r14[(1, 0)].atan2(r14[(0, 0)]);
                for q3 in [a3c, -a3c] {
                    let s3 = q3.sin();
                    let q2 = py.atan2(px) - (a3 * s3).atan2(a2 + a3 * c3);
                    let q4 = q234 - q2 - q3;
                    let sol = [
                        wrap_pi(q1),
                        wrap_pi(q2),
                        wrap_pi(q3),
                        wrap_pi(q4),
                        wrap_pi(q5),
                        wrap_pi(q6),
                    ];
                    if !solutions.iter().any(|s| same_config(s, &sol)) {
                        solutions.push(sol);
                    }
                }
            }
        }
        if solutions.is_empty() {
            // Only the elbow test can reject every branch once the shoulder test passed.
            let why = reach_failure.unwrap_or(Unreachable::BeyondElbowReach {
                distance: f64::INFINITY,
                min: (a2.abs() - a3.abs()).abs(),
                max: a2.abs() + a3.abs(),
            });
            return Err(IkError::Unreachable(why));
        }
        Ok(IkSolutions {
            solutions,
            singular,
        })
    }

    /// The IK solution closest (sum of squared joint differences) to `current`, each joint
    /// moved by whole turns to the equivalent angle nearest `current` that lies within
    /// `[lower, upper]`.
    pub fn ik_nearest(
        &self,
        target: &Isometry3<f64>,
        current: &Joints,
        lower: &Joints,
        upper: &Joints,
    ) -> Result<Joints, IkError> {
        let all = self.ik(target, current[5])?;
        let mut best: Option<(f64, Joints)> = None;
        for sol in &all.solutions {
            let mut cand = [0.0; 6];
            let mut ok = true;
            for j in 0..6 {
                match nearest_equivalent(sol[j], current[j], lower[j], upper[j]) {
                    Some(v) => cand[j] = v,
                    None => {
                        ok = false;
                        break;
                    }
                }
            }
            if !ok {
                continue;
            }
            let cost: f64 = cand
                .iter()
                .zip(current.iter())
                .map(|(a, b)| (a - b) * (a - b))
                .sum();
            if best.as_ref().is_none_or(|(c, _)| cost < *c) {
                best = Some((cost, cand));
            }
        }
        best.map(|(_, q)| q)
            .ok_or(IkError::Unreachable(Unreachable::NoSolutionWithinLimits {
                solutions: all.solutions.len(),
            }))
    }
}

/// `base` expressed in the URDF's `base_link`: a half turn about z.
pub fn base_link_from_base() -> Isometry3<f64> {
    Isometry3::from_parts(
        Translation3::identity(),
        UnitQuaternion::from_axis_angle(&Vector3::z_axis(), PI),
    )
}

/// Angle wrapped to (-pi, pi].
pub fn wrap_pi(a: f64) -> f64 {
    if !a.is_finite() {
        return a;
    }
    let mut w = a.rem_euclid(TAU);
    if w > PI {
        w -= TAU;
    }
    w
}

/// The angle `angle + 2 pi k` nearest to `current` that lies in `[lower, upper]`, if any.
pub fn nearest_equivalent(angle: f64, current: f64, lower: f64, upper: f64) -> Option<f64> {
    if !(angle.is_finite() && current.is_finite()) {
        return None;
    }
    // Joint limits given exactly at +-pi must accept the solver's +-pi output.
    const EDGE: f64 = 1e-12;
    let k = ((current - angle) / TAU).round();
    let base = angle + k * TAU;
    let mut best: Option<f64> = None;
    for cand in [base, base - TAU, base + TAU] {
        if cand >= lower - EDGE && cand <= upper + EDGE {
            let c = cand.clamp(lower, upper);
            if best.is_none_or(|b| (c - current).abs() < (b - current).abs()) {
                best = Some(c);
            }
        }
    }
    best
}

fn same_config(a: &Joints, b: &Joints) -> bool {
    a.iter()
        .zip(b.iter())
        .all(|(x, y)| wrap_pi(x - y).abs() < 1e-10)
}

/// Largest difference between two poses: translation (m) and rotation angle (rad).
pub fn pose_error(a: &Isometry3<f64>, b: &Isometry3<f64>) -> (f64, f64) {
    let dp = (a.translation.vector - b.translation.vector).norm();
    let dr = a.rotation.angle_to(&b.rotation);
    (dp, dr)
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{Rng, SeedableRng};

    fn assert_pos(t: &Isometry3<f64>, p: [f64; 3]) {
        let v = t.translation.vector;
        for k in 0..3 {
            assert!(
                (v[k] - p[k]).abs() < 1e-12,
                "axis {k}: {} vs {}",
                v[k],
                p[k]
            );
        }
    }

    fn assert_rot(t: &Isometry3<f64>, rows: [[f64; 3]; 3]) {
        let r = t.rotation.to_rotation_matrix();
        for i in 0..3 {
            for j in 0..3 {
                assert!((r[(i, j)] - rows[i][j]).abs() < 1e-12, "R[{i},{j}]");
            }
        }
    }

    #[test]
    fn fk_all_zero_matches_hand_derivation() {
        // Stretched along -x: x = a2 + a3, y = -(d4 + d6), z = d1 - d5; flange x along base x,
        // y along base z, z along -y.
        let m = Ur5Model::ur5();
        let t = m.fk(&[0.0; 6]);
        assert_pos(&t, [-0.81725, -0.19145, -0.005491]);
        assert_rot(&t, [[1.0, 0.0, 0.0], [0.0, 0.0, -1.0], [0.0, 1.0, 0.0]]);
        // Same pose in base_link: x and y flip sign.
        assert_pos(&m.fk_base_link(&[0.0; 6]), [0.81725, 0.19145, -0.005491]);
        let e = Ur5Model::ur5e().fk(&[0.0; 6]);
        assert_pos(&e, [-0.8172, -0.2329, 0.0628]);
    }

    #[test]
    fn fk_upright_and_turned_poses() {
        let m = Ur5Model::ur5();
        // Arm pointing up: height d1 + |a2| + |a3| + d5, sideways offset -(d4 + d6).
        let t = m.fk(&[0.0, -PI / 2.0, 0.0, -PI / 2.0, 0.0, 0.0]);
        assert_pos(&t, [0.0, -0.19145, 1.001059]);
        assert_rot(&t, [[-1.0, 0.0, 0.0], [0.0, 0.0, -1.0], [0.0, -1.0, 0.0]]);
        // Shoulder pan by +90 deg turns the zero pose about z: (x, y) -> (-y, x).
        let t = m.fk(&[PI / 2.0, 0.0, 0.0, 0.0, 0.0, 0.0]);
        assert_pos(&t, [0.19145, -0.81725, -0.005491]);
        // Every link frame: frame 1 sits at height d1, frame 3 at the elbow's far end.
        let f = m.fk_all(&[0.0; 6]);
        assert_pos(&f[1], [0.0, 0.0, 0.089159]);
        assert_pos(&f[2], [-0.425, 0.0, 0.089159]);
        assert_pos(&f[3], [-0.81725, 0.0, 0.089159]);
        assert_pos(&f[4], [-0.81725, -0.10915, 0.089159]);
        assert_pos(&f[5], [-0.81725, -0.10915, -0.005491]);
    }

    #[test]
    fn jacobian_matches_finite_differences() {
        let m = Ur5Model::ur5();
        let mut rng = rand::rngs::StdRng::seed_from_u64(3);
        for _ in 0..50 {
            let q: Joints = std::array::from_fn(|_| rng.random_range(-PI..PI));
            let j = m.jacobian(&q);
            let h = 1e-6;
            for i in 0..6 {
                let mut qp = q;
                let mut qm = q;
                qp[i] += h;
                qm[i] -= h;
                let (tp, tm) = (m.fk(&qp), m.fk(&qm));
                let dv = (tp.translation.vector - tm.translation.vector) / (2.0 * h);
                let dw = (tp.rotation * tm.rotation.inverse()).scaled_axis() / (2.0 * h);
                let tp = m.tcp_position(&q) - m.fk(&q).translation.vector;
                assert!(tp.norm() < 1e-12);
                for r in 0..3 {
                    assert!((j[(r, i)] - dv[r]).abs() < 1e-6);
                    assert!((j[(r + 3, i)] - dw[r]).abs() < 1e-6);
                }
            }
        }
    }

    fn far_from_singular(m: &Ur5Model, q: &Joints) -> bool {
        q[4].sin().abs() > 0.05 && q[2].sin().abs() > 0.05 && m.shoulder_radial(q).abs() > 0.02
    }

    #[test]
    fn ik_of_fk_reproduces_pose_for_10000_random_configurations() {
        for m in [Ur5Model::ur5(), Ur5Model::ur5e()] {
            let mut rng = rand::rngs::StdRng::seed_from_u64(42);
            let (lo, hi) = Ur5Model::position_limits();
            let mut tested = 0;
            let mut counts = [0usize; 4];
            while tested < 10_000 {
                let q: Joints = std::array::from_fn(|_| rng.random_range(-PI..PI));
                if !far_from_singular(&m, &q) {
                    continue;
                }
                tested += 1;
                let target = m.fk(&q);
                let sols = m.ik(&target, q[5]).expect("reachable by construction");
                assert!(!sols.singular.any(), "{q:?} flagged {:?}", sols.singular);
                // Branches whose elbow cannot reach drop out: up to 8, always in elbow pairs.
                let n = sols.solutions.len();
                assert!(n <= 8 && n % 2 == 0, "{q:?}: {n}");
                counts[n / 2 - 1] += 1;
                let found = sols.solutions.iter().any(|s| {
                    s.iter()
                        .zip(q.iter())
                        .all(|(a, b)| wrap_pi(a - b).abs() < 1e-7)
                });
                assert!(found, "{q:?} not among {:?}", sols.solutions);
                for s in &sols.solutions {
                    let (dp, dr) = pose_error(&m.fk(s), &target);
                    assert!(dp < 1e-9 && dr < 1e-9, "{q:?} -> {s:?}: {dp} m {dr} rad");
                }
                let near = m.ik_nearest(&target, &q, &lo, &hi).expect("within limits");
                for j in 0..6 {
                    assert!(
                        (near[j] - q[j]).abs() < 1e-7,
                        "joint {j}: {near:?} vs {q:?}"
                    );
                }
            }
            // Most random configurations have all eight.
            assert!(counts[3] > 5_000, "{counts:?}");
        }
    }

    #[test]
    fn ik_nearest_wraps_within_limits() {
        let m = Ur5Model::ur5();
        let (lo, hi) = Ur5Model::position_limits();
        let q = [5.0, -1.0, 1.2, -4.0, 1.0, -5.5];
        let near = m.ik_nearest(&m.fk(&q), &q, &lo, &hi).expect("reachable");
        for j in 0..6 {
            assert!((near[j] - q[j]).abs() < 1e-7, "{near:?}");
        }
        // An elbow range that no solution (q3 = +-1.2) falls in: a named error.
        let mut lo2 = lo;
        let mut hi2 = hi;
        lo2[2] = 2.9;
        hi2[2] = 3.0;
        let e = m.ik_nearest(&m.fk(&q), &q, &lo2, &hi2).unwrap_err();
        assert!(matches!(
            e,
            IkError::Unreachable(Unreachable::NoSolutionWithinLimits { solutions: 8 })
        ));
        assert_eq!(nearest_equivalent(PI, 3.0, -PI, PI), Some(PI));
        assert_eq!(nearest_equivalent(-PI, 3.0, -PI, PI), Some(PI));
    }

    #[test]
    fn wrist_singularity_uses_q6_hint() {
        let m = Ur5Model::ur5();
        let q = [0.3, -1.2, 1.4, -0.5, 0.0, 0.7];
        assert!(m.singularities(&q).wrist);
        assert!(m.jacobian(&q).determinant().abs() < 1e-9);
        let target = m.fk(&q);
        let sols = m.ik(&target, 0.7).expect("reachable");
        assert!(sols.singular.wrist);
        for s in &sols.solutions {
            assert!(s.iter().all(|v| v.is_finite()));
            let (dp, dr) = pose_error(&m.fk(s), &target);
            assert!(dp < 1e-9 && dr < 1e-9);
        }
        assert!(sols.solutions.iter().any(|s| (s[5] - 0.7).abs() < 1e-12));
        // A different hint gives a different but equally valid q6 (the sum q4 + q6 is fixed).
        let other = m.ik(&target, -1.0).expect("reachable");
        for s in &other.solutions {
            let (dp, dr) = pose_error(&m.fk(s), &target);
            assert!(dp < 1e-9 && dr < 1e-9);
        }
    }

    #[test]
    fn shoulder_and_elbow_singularities_are_flagged_and_finite() {
        let m = Ur5Model::ur5();
        // Upright arm with q2+q3+q4 = 0: wrist centre on the shoulder cylinder.
        let q = [0.2, -PI / 2.0, 0.0, PI / 2.0, 0.8, 0.1];
        let s = m.singularities(&q);
        assert!(s.shoulder && s.elbow && !s.wrist);
        assert!(m.jacobian(&q).determinant().abs() < 1e-9);
        let target = m.fk(&q);
        let sols = m.ik(&target, q[5]).expect("reachable");
        assert!(sols.singular.shoulder && sols.singular.elbow);
        for s in &sols.solutions {
            assert!(s.iter().all(|v| v.is_finite()));
            let (dp, dr) = pose_error(&m.fk(s), &target);
            assert!(dp < 1e-6 && dr < 1e-6, "{dp} {dr}");
        }
        // Duplicates merged: stretched elbow and merged shoulder leave at most 2 solutions.
        assert!(sols.solutions.len() <= 4);
    }

    #[test]
    fn unreachable_targets_name_the_reason() {
        let m = Ur5Model::ur5();
        let far = Isometry3::translation(2.0, 0.0, 0.3);
        assert!(matches!(
            m.ik(&far, 0.0),
            Err(IkError::Unreachable(Unreachable::BeyondElbowReach { .. }))
        ));
        // Flange pointing down right above the base: wrist centre on the base axis.
        let above = Isometry3::from_parts(
            Translation3::new(0.0, 0.0, 0.5 + 0.0823),
            UnitQuaternion::from_axis_angle(&Vector3::x_axis(), PI),
        );
        let e = m.ik(&above, 0.0).unwrap_err();
        assert!(matches!(
            e,
            IkError::Unreachable(Unreachable::WristCentreInsideShoulderCylinder { .. })
        ));
        assert!(e.to_string().contains("WristCentreInsideShoulderCylinder"));
        let nan = Isometry3::translation(f64::NAN, 0.0, 0.0);
        assert_eq!(
            m.ik(&nan, 0.0),
            Err(IkError::Unreachable(Unreachable::NonFiniteTarget))
        );
        assert!(m.ik(&m.fk(&[0.0; 6]), f64::INFINITY).is_err());
    }
}
