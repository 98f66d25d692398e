//! The safety filter every joint command passes through, and an independent checker of the
//! emitted stream.
//!
//! The filter works on velocities: from the last emitted position `q` and velocity `v` it picks
//! the next velocity inside the intersection of
//! - the speed cap `min(v_max, max_step / dt)`,
//! - the acceleration band `v +- a_max dt`,
//! - the braking band: the velocity from which braking at `a_max` still stops before the position
//!   limit (`v dt + v^2 / (2 a_max) <= q_max - q`, mirrored below).
//!
//! The braking band makes the set never empty: braking (`|v|` reduced by `a_max dt`) always lies
//! inside it, so the filter can always "hold" without breaking a limit. The workspace box is
//! kept the same way: a candidate is accepted only if the whole braking trajectory that starts
//! from it stays in the box, so braking from the last accepted state is always a safe fallback.
//! Clamping is used where it keeps the motion's direction (position, speed, step, acceleration);
//! non-finite or malformed commands and workspace exits make the filter hold (brake to a stop).

use crate::ur5::{Joints, Ur5Model};
use serde::{Deserialize, Serialize};
use std::f64::consts::PI;
use thiserror::Error;

#[derive(Debug, Error, Clone, PartialEq)]
pub enum SafetyError {
    #[error("safety config field `{field}`: {reason}")]
    Config { field: &'static str, reason: String },
    #[error("initial joint {joint} at {value} rad is outside [{lower}, {upper}]")]
    InitialOutsideLimits {
        joint: usize,
        value: f64,
        lower: f64,
        upper: f64,
    },
    #[error("initial TCP position {position:?} is outside the workspace box")]
    InitialOutsideWorkspace { position: [f64; 3] },
    #[error("initial state field `{field}`: {reason}")]
    InitialState { field: &'static str, reason: String },
}

/// Per-joint limits (radians, rad/s, rad/s^2).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct JointLimits {
    pub lower: Vec<f64>,
    pub upper: Vec<f64>,
    pub max_velocity: Vec<f64>,
    pub max_acceleration: Vec<f64>,
}

impl JointLimits {
    /// UR5 / UR5e: +-2 pi (elbow +-pi), 180 deg/s. REFERENCE §8 gives no acceleration limit;
    /// 10 rad/s^2 stops a joint from full speed in 0.31 s, well inside what the arm can do.
    pub fn ur5() -> Self {
        let (lo, hi) = Ur5Model::position_limits();
        Self {
            lower: lo.to_vec(),
            upper: hi.to_vec(),
            max_velocity: Ur5Model::max_velocity().to_vec(),
            max_acceleration: vec![10.0; 6],
        }
    }

    pub fn dof(&self) -> usize {
        self.lower.len()
    }

    /// Checks that the four vectors agree in length and describe a usable range.
    pub fn validate(&self) -> Result<(), SafetyError> {
        let n = self.lower.len();
        let fields: [(&'static str, &Vec<f64>); 3] = [
            ("upper", &self.upper),
            ("max_velocity", &self.max_velocity),
            ("max_acceleration", &self.max_acceleration),
        ];
        if n == 0 {
            return Err(SafetyError::Config {
                field: "lower",
                reason: "no joints".into(),
            });
        }
        for (field, v) in fields {
            if v.len() != n {
                return Err(SafetyError::Config {
                    field,
                    reason: format!("{} entries, `lower` has {n}", v.len()),
                });
            }
        }
        for j in 0..n {
            if !(self.lower[j].is_finite()
                && self.upper[j].is_finite()
                && self.lower[j] <= self.upper[j])
            {
                return Err(SafetyError::Config {
                    field: "lower",
                    reason: format!(
                        "joint {j}: need finite lower <= upper, got [{}, {}]",
                        self.lower[j], self.upper[j]
                    ),
                });
            }
            if !(self.max_velocity[j].is_finite() && self.max_velocity[j] > 0.0) {
                return Err(SafetyError::Config {
                    field: "max_velocity",
                    reason: format!("joint {j}: need finite > 0, got {}", self.max_velocity[j]),
                });
            }
            if !(self.max_acceleration[j].is_finite() && self.max_acceleration[j] > 0.0) {
                return Err(SafetyError::Config {
                    field: "max_acceleration",
                    reason: format!(
                        "joint {j}: need finite > 0, got {}",
                        self.max_acceleration[j]
                    ),
                });
            }
        }
        Ok(())
    }
}

/// An axis-aligned box the flange (TCP) position must stay in, in the DH `base` frame (metres).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct WorkspaceBox {
    pub min: [f64; 3],
    pub max: [f64; 3],
}

impl WorkspaceBox {
    pub fn contains(&self, p: &[f64; 3]) -> bool {
        (0..3).all(|k| p[k] >= self.min[k] && p[k] <= self.max[k])
    }
}

/// Everything the filter enforces.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SafetyConfig {
    pub limits: JointLimits,
    /// Largest position change of any joint in one tick (rad).
    pub max_step: f64,
    /// The control period (s): velocities are `dq / dt`.
    pub dt: f64,
    /// Optional workspace box; needs the kinematic model and 6 joints.
    pub workspace: Option<(Ur5Model, WorkspaceBox)>,
}

impl SafetyConfig {
    /// UR5 limits at the given rate, a step cap of 180 deg/s worth of motion per tick, no box.
    pub fn ur5(rate_hz: f64) -> Self {
        let dt = 1.0 / rate_hz;
        Self {
            limits: JointLimits::ur5(),
            max_step: PI * dt,
            dt,
            workspace: None,
        }
    }

    pub fn validate(&self) -> Result<(), SafetyError> {
        self.limits.validate()?;
        if !(self.dt.is_finite() && self.dt > 0.0) {
            return Err(SafetyError::Config {
                field: "dt",
                reason: format!("need finite > 0, got {}", self.dt),
            });
        }
        if !(self.max_step.is_finite() && self.max_step > 0.0) {
            return Err(SafetyError::Config {
                field: "max_step",
                reason: format!("need finite > 0, got {}", self.max_step),
            });
        }
        if let Some((_, b)) = &self.workspace {
            if self.limits.dof() != 6 {
                return Err(SafetyError::Config {
                    field: "workspace",
                    reason: format!("needs a 6-joint arm, limits have {}", self.limits.dof()),
                });
            }
            if (0..3)
                .any(|k| !(b.min[k].is_finite() && b.max[k].is_finite() && b.min[k] < b.max[k]))
            {
                return Err(SafetyError::Config {
                    field: "workspace",
                    reason: format!("need finite min < max, got {b:?}"),
                });
            }
        }
        Ok(())
    }
}

/// How many times each kind of intervention happened (one count per joint affected, per tick,
/// for the per-joint kinds).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct InterventionCounts {
    pub non_finite: u64,
    pub malformed: u64,
    pub position: u64,
    pub velocity: u64,
    pub step: u64,
    pub acceleration: u64,
    pub braking_distance: u64,
    pub workspace: u64,
    pub infeasible: u64,
    pub gripper: u64,
}

impl InterventionCounts {
    pub fn total(&self) -> u64 {
        self.non_finite
            + self.malformed
            + self.position
            + self.velocity
            + self.step
            + self.acceleration
            + self.braking_distance
            + self.workspace
            + self.infeasible
            + self.gripper
    }
}

/// What the filter did over its lifetime.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct SafetyReport {
    pub commands: u64,
    /// Commands changed by at least one clamp.
    pub clamped_commands: u64,
    /// Commands replaced by braking because the input was unusable or left the workspace.
    pub held_commands: u64,
    /// Commands where the caller asked for a hold (watchdog); not an intervention.
    pub requested_holds: u64,
    pub interventions: InterventionCounts,
}

/// What happened to one command.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    Passed,
    Clamped,
    Held,
    HoldRequested,
}

/// Stateful filter: remembers the last emitted position and velocity.
#[derive(Debug, Clone)]
pub struct SafetyFilter {
    cfg: SafetyConfig,
    q: Vec<f64>,
    v: Vec<f64>,
    gripper: Option<f64>,
    cand_q: Vec<f64>,
    cand_v: Vec<f64>,
    /// The previous (position-clamped) target, for the target's velocity.
    prev_desired: Vec<f64>,
    prev_valid: bool,
    report: SafetyReport,
}

impl SafetyFilter {
    /// A filter starting at rest at `initial`, which must satisfy every limit.
    pub fn new(cfg: SafetyConfig, initial: &[f64]) -> Result<Self, SafetyError> {
        cfg.validate()?;
        let n = cfg.limits.dof();
        let mut f = Self {
            cfg,
            q: vec![0.0; n],
            v: vec![0.0; n],
            gripper: None,
            cand_q: vec![0.0; n],
            cand_v: vec![0.0; n],
            prev_desired: vec![0.0; n],
            prev_valid: false,
            report: SafetyReport::default(),
        };
        f.reset(initial)?;
        Ok(f)
    }

    /// Restarts from rest at `initial` (e.g. the measured state when the loop starts).
    pub fn reset(&mut self, initial: &[f64]) -> Result<(), SafetyError> {
        let lim = &self.cfg.limits;
        if initial.len() != lim.dof() {
            return Err(SafetyError::InitialState {
                field: "positions",
                reason: format!("{} joints, limits have {}", initial.len(), lim.dof()),
            });
        }
        for (j, &x) in initial.iter().enumerate() {
            if !(x.is_finite() && x >= lim.lower[j] && x <= lim.upper[j]) {
                return Err(SafetyError::InitialOutsideLimits {
                    joint: j,
                    value: x,
                    lower: lim.lower[j],
                    upper: lim.upper[j],
                });
            }
        }
        if let Some((model, bx)) = &self.cfg.workspace {
            let p = tcp(model, initial);
            if !bx.contains(&p) {
                return Err(SafetyError::InitialOutsideWorkspace { position: p });
            }
        }
        self.q.copy_from_slice(initial);
        self.v.iter_mut().for_each(|v| *v = 0.0);
        self.prev_valid = false;
        Ok(())
    }

    pub fn config(&self) -> &SafetyConfig {
        &self.cfg
    }

    pub fn report(&self) -> SafetyReport {
        self.report
    }

    /// Last emitted position.
    pub fn position(&self) -> &[f64] {
        &self.q
    }

    /// Velocity of the last emitted step.
    pub fn velocity(&self) -> &[f64] {
        &self.v
    }

    /// Whether the last emitted command left every joint at rest.
    pub fn at_rest(&self) -> bool {
        self.v.iter().all(|v| *v == 0.0)
    }

    /// Filters one command. `desired = None` asks for a hold. The safe positions are written to
    /// `out` (same length as the joints; a shorter `out` gets a prefix) and the gripper value
    /// returned alongside the verdict.
    pub fn apply(
        &mut self,
        desired: Option<&[f64]>,
        gripper: Option<f64>,
        out: &mut [f64],
    ) -> (Verdict, Option<f64>) {
        self.report.commands += 1;
        let n = self.q.len();
        let mut verdict = Verdict::Passed;
        let mut hold = false;
        match desired {
            None => {
                hold = true;
                verdict = Verdict::HoldRequested;
                self.report.requested_holds += 1;
            }
            Some(d) if d.len() != n => {
                hold = true;
                self.report.interventions.malformed += 1;
            }
            Some(d) if d.iter().any(|x| !x.is_finite()) => {
                hold = true;
                self.report.interventions.non_finite += 1;
            }
            Some(d) => {
                let mut clamped = false;
                for (j, &target) in d.iter().enumerate() {
                    let (v, c) = self.limit_joint(j, target);
                    clamped |= c;
                    self.cand_v[j] = v;
                    self.cand_q[j] = self.advance(j, self.q[j], v);
                }
                if clamped {
                    verdict = Verdict::Clamped;
                }
                if !self.braking_stays_in_workspace() {
                    self.report.interventions.workspace += 1;
                    if self.scale_into_workspace() {
                        verdict = Verdict::Clamped;
                    } else {
                        hold = true;
                    }
                }
            }
        }
        self.prev_valid = !hold;
        if hold {
            if verdict != Verdict::HoldRequested {
                verdict = Verdict::Held;
            }
            for j in 0..n {
                let v = self.brake(j, self.v[j]);
                self.cand_v[j] = v;
                self.cand_q[j] = self.advance(j, self.q[j], v);
            }
        }
        match verdict {
            Verdict::Clamped => self.report.clamped_commands += 1,
            Verdict::Held => self.report.held_commands += 1,
            _ => {}
        }
        self.q.copy_from_slice(&self.cand_q);
        self.v.copy_from_slice(&self.cand_v);
        for (o, q) in out.iter_mut().zip(self.q.iter()) {
            *o = *q;
        }
        let g = match gripper {
            Some(g) if g.is_finite() => {
                let c = g.clamp(-1.0, 1.0);
                if c != g {
                    self.report.interventions.gripper += 1;
                }
                Some(c)
            }
            Some(_) => {
                self.report.interventions.gripper += 1;
                self.gripper
            }
            None => self.gripper,
        };
        self.gripper = g;
        (verdict, g)
    }

    /// The velocity for joint `j` closest to the one that reaches `target` this tick, inside the
    /// feasible band; counts each limit that had to act.
    fn limit_joint(&mut self, j: usize, target: f64) -> (f64, bool) {
        let lim = &self.cfg.limits;
        let dt = self.cfg.dt;
        let (lo_q, hi_q) = (lim.lower[j], lim.upper[j]);
        let q = self.q[j];
        let v_prev = self.v[j];
        let a = lim.max_acceleration[j];
        let dv = a * dt;
        let step_cap = self.cfg.max_step / dt;
        let vcap = lim.max_velocity[j].min(step_cap);
        let ic = &mut self.report.interventions;
        let mut clamped = false;

        let mut t = target;
        if t < lo_q || t > hi_q {
            ic.position += 1;
            clamped = true;
            t = t.clamp(lo_q, hi_q);
        }
        // Track a moving target instead of jumping onto it: move at the target's own velocity
        // plus a correction that could still stop on the target at half the acceleration
        // limit. A plain "reach it this tick" command overshoots as soon as the acceleration
        // clamp acts and then oscillates; this settles without overshoot.
        let v_target = if self.prev_valid {
            ((t - self.prev_desired[j]) / dt).clamp(-vcap, vcap)
        } else {
            0.0
        };
        self.prev_desired[j] = t;
        let e = t - (q + v_target * dt);
        let a_track = 0.5 * a;
        let approach = braking_speed(e.abs(), a_track, dt);
        // Close enough to land on the target and cancel the relative speed next tick.
        let v_rel = if e.abs() <= a_track * dt * dt {
            e / dt
        } else {
            clamped = true;
            ic.acceleration += 1;
            approach * e.signum()
        };
        let v = v_target + v_rel;
        let brake_hi = braking_speed(hi_q - q, a, dt);
        let brake_lo = -braking_speed(q - lo_q, a, dt);
        let hi = vcap.min(v_prev + dv).min(brake_hi);
        let lo = (-vcap).max(v_prev - dv).max(brake_lo);
        if lo > hi {
            // Only rounding (or limits changed under a moving arm) gets here: brake.
            ic.infeasible += 1;
            return (self.brake(j, v_prev), true);
        }
        let out = v.clamp(lo, hi);
        if out != v {
            clamped = true;
            let bound = if v > hi { hi } else { lo };
            let mag = bound.abs();
            if mag == vcap && (v > hi && hi == vcap || v < lo && lo == -vcap) {
                if step_cap < lim.max_velocity[j] * (1.0 - 1e-12) {
                    ic.step += 1;
                } else {
                    ic.velocity += 1;
                }
            } else if (v > hi && hi == v_prev + dv) || (v < lo && lo == v_prev - dv) {
                ic.acceleration += 1;
            } else {
                ic.braking_distance += 1;
            }
        }
        (out, clamped)
    }

    /// Replaces a candidate that leaves the box by the largest blend `brake + s (cand - brake)`
    /// that stays in it. Each joint's feasible band is an interval holding both ends, so every
    /// blend is feasible per joint; only the box needs checking. Returns false if only pure
    /// braking (s = 0) is safe.
    fn scale_into_workspace(&mut self) -> bool {
        let n = self.q.len();
        let wanted = self.cand_v.clone();
        let braking: Vec<f64> = (0..n).map(|j| self.brake(j, self.v[j])).collect();
        let (mut lo, mut hi) = (0.0f64, 1.0f64);
        for _ in 0..12 {
            let s = 0.5 * (lo + hi);
            self.set_blend(&braking, &wanted, s);
            if self.braking_stays_in_workspace() {
                lo = s;
            } else {
                hi = s;
            }
        }
        if lo == 0.0 {
            return false;
        }
        self.set_blend(&braking, &wanted, lo);
        true
    }

    fn set_blend(&mut self, from: &[f64], to: &[f64], s: f64) {
        for j in 0..self.q.len() {
            let v = from[j] + s * (to[j] - from[j]);
            self.cand_v[j] = v;
            self.cand_q[j] = self.advance(j, self.q[j], v);
        }
    }

    /// One tick of braking at the acceleration limit.
    fn brake(&self, j: usize, v: f64) -> f64 {
        let dv = self.cfg.limits.max_acceleration[j] * self.cfg.dt;
        if v.abs() <= dv {
            0.0
        } else {
            v - dv * v.signum()
        }
    }

    /// Position after one tick at velocity `v`; the final clamp only absorbs rounding.
    fn advance(&self, j: usize, q: f64, v: f64) -> f64 {
        (q + v * self.cfg.dt).clamp(self.cfg.limits.lower[j], self.cfg.limits.upper[j])
    }

    /// Whether the candidate and every point of braking from it stay in the workspace box.
    fn braking_stays_in_workspace(&self) -> bool {
        let Some((model, bx)) = &self.cfg.workspace else {
            return true;
        };
        let mut q: Joints = [0.0; 6];
        let mut v: Joints = [0.0; 6];
        q.copy_from_slice(&self.cand_q[..6]);
        v.copy_from_slice(&self.cand_v[..6]);
        // Bounds the loop even for a tiny acceleration limit; beyond it the move is refused.
        const MAX_BRAKING_TICKS: usize = 20_000;
        for _ in 0..MAX_BRAKING_TICKS {
            let p = model.tcp_position(&q);
            if !bx.contains(&[p.x, p.y, p.z]) {
                return false;
            }
            if v.iter().all(|x| *x == 0.0) {
                return true;
            }
            for j in 0..6 {
                v[j] = self.brake(j, v[j]);
                q[j] = self.advance(j, q[j], v[j]);
            }
        }
        false
    }
}

/// The largest speed from which braking at `a` (discretely, `a dt` per tick) after one more
/// tick at that speed stops within `room`: solves `v dt + v^2 / (2 a) = room`.
fn braking_speed(room: f64, a: f64, dt: f64) -> f64 {
    if room <= 0.0 {
        return 0.0;
    }
    a * (-dt + (dt * dt + 2.0 * room / a).sqrt())
}

fn tcp(model: &Ur5Model, q: &[f64]) -> [f64; 3] {
    let mut j: Joints = [0.0; 6];
    for (d, s) in j.iter_mut().zip(q.iter()) {
        *d = *s;
    }
    let p = model.tcp_position(&j);
    [p.x, p.y, p.z]
}

/// Counts of limit violations found by [`LimitMonitor`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct ViolationCounts {
    pub non_finite: u64,
    pub position: u64,
    pub velocity: u64,
    pub acceleration: u64,
    pub step: u64,
    pub workspace: u64,
}

impl ViolationCounts {
    pub fn total(&self) -> u64 {
        self.non_finite
            + self.position
            + self.velocity
            + self.acceleration
            + self.step
            + self.workspace
    }
}

/// Checks an emitted command stream against the limits with nothing but the stream itself
/// (velocity = dq/dt, acceleration = dv/dt), so it is independent of the filter's bookkeeping.
#[derive(Debug, Clone)]
pub struct LimitMonitor {
    cfg: SafetyConfig,
    prev_q: Option<Vec<f64>>,
    prev_v: Option<Vec<f64>>,
    counts: ViolationCounts,
    max_step_seen: f64,
}

/// Slack for floating-point rounding of differences divided by dt (and dt squared).
const POS_TOL: f64 = 1e-9;
const VEL_TOL: f64 = 1e-6;
const ACC_TOL: f64 = 1e-4;

impl LimitMonitor {
    /// `start` is the measured position the stream begins from, at rest.
    pub fn new(cfg: SafetyConfig, start: &[f64]) -> Self {
        Self {
            cfg,
            prev_q: Some(start.to_vec()),
            prev_v: Some(vec![0.0; start.len()]),
            counts: ViolationCounts::default(),
            max_step_seen: 0.0,
        }
    }

    pub fn counts(&self) -> ViolationCounts {
        self.counts
    }

    /// Largest `|dq|` of any joint between consecutive commands.
    pub fn max_step_seen(&self) -> f64 {
        self.max_step_seen
    }

    /// Checks one command; returns how many violations it had.
    pub fn check(&mut self, q: &[f64]) -> u64 {
        let before = self.counts.total();
        let lim = &self.cfg.limits;
        let dt = self.cfg.dt;
        if q.len() != lim.dof() || q.iter().any(|x| !x.is_finite()) {
            self.counts.non_finite += 1;
            return self.counts.total() - before;
        }
        for (j, &x) in q.iter().enumerate() {
            if x < lim.lower[j] - POS_TOL || x > lim.upper[j] + POS_TOL {
                self.counts.position += 1;
            }
        }
        if let Some((model, bx)) = &self.cfg.workspace {
            let p = tcp(model, q);
            let grown = WorkspaceBox {
                min: [
                    bx.min[0] - POS_TOL,
                    bx.min[1] - POS_TOL,
                    bx.min[2] - POS_TOL,
                ],
                max: [
                    bx.max[0] + POS_TOL,
                    bx.max[1] + POS_TOL,
                    bx.max[2] + POS_TOL,
                ],
            };
            if !grown.contains(&p) {
                self.counts.workspace += 1;
            }
        }
        let mut v_now = vec![0.0; q.len()];
        if let Some(prev) = &self.prev_q {
            for j in 0..q.len() {
                let step = q[j] - prev[j];
                self.max_step_seen = self.max_step_seen.max(step.abs());
                if step.abs() > self.cfg.max_step + POS_TOL {
                    self.counts.step += 1;
                }
                v_now[j] = step / dt;
                if v_now[j].abs() > lim.max_velocity[j] + VEL_TOL {
                    self.counts.velocity += 1;
                }
                if let Some(pv) = &self.prev_v {
                    let acc = (v_now[j] - pv[j]) / dt;
                    if acc.abs() > lim.max_acceleration[j] + ACC_TOL {
                        self.counts.acceleration += 1;
                    }
                }
            }
        }
        self.prev_q = Some(q.to_vec());
        self.prev_v = Some(v_now);
        self.counts.total() - before
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn home() -> Vec<f64> {
        vec![0.0, -1.2, 1.4, -1.8, -1.57, 0.3]
    }

    fn boxed(rate: f64) -> SafetyConfig {
        let mut c = SafetyConfig::ur5(rate);
        c.workspace = Some((
            Ur5Model::ur5(),
            WorkspaceBox {
                min: [-0.7, -0.7, -0.05],
                max: [0.7, 0.7, 0.9],
            },
        ));
        c
    }

    #[test]
    fn passes_small_moves_unchanged() {
        let cfg = SafetyConfig::ur5(500.0);
        let mut f = SafetyFilter::new(cfg, &home()).expect("valid");
        let mut out = vec![0.0; 6];
        let mut d = home();
        d[0] += 1e-6;
        let (v, _) = f.apply(Some(&d), None, &mut out);
        assert_eq!(v, Verdict::Passed);
        assert!((out[0] - d[0]).abs() < 1e-15);
    }

    #[test]
    fn nan_holds_and_is_counted() {
        let cfg = SafetyConfig::ur5(500.0);
        let mut f = SafetyFilter::new(cfg, &home()).expect("valid");
        let mut out = vec![0.0; 6];
        let mut d = home();
        d[3] = f64::NAN;
        let (v, _) = f.apply(Some(&d), Some(f64::INFINITY), &mut out);
        assert_eq!(v, Verdict::Held);
        assert_eq!(out, home());
        let r = f.report();
        assert_eq!(r.interventions.non_finite, 1);
        assert_eq!(r.interventions.gripper, 1);
        assert_eq!(r.held_commands, 1);
        let (v, _) = f.apply(Some(&[0.0; 3]), None, &mut out);
        assert_eq!(v, Verdict::Held);
        assert_eq!(f.report().interventions.malformed, 1);
    }

    #[test]
    fn jump_is_spread_over_ticks_within_limits() {
        let cfg = SafetyConfig::ur5(125.0);
        let mut f = SafetyFilter::new(cfg.clone(), &home()).expect("valid");
        let mut mon = LimitMonitor::new(cfg, &home());
        let mut out = vec![0.0; 6];
        let mut target = home();
        target[0] = 3.0;
        let mut reached = false;
        for _ in 0..2000 {
            f.apply(Some(&target), None, &mut out);
            assert_eq!(mon.check(&out), 0);
            if (out[0] - 3.0).abs() < 1e-12 && f.velocity().iter().all(|v| v.abs() < 1e-9) {
                reached = true;
                break;
            }
        }
        assert!(reached, "filter must converge onto a reachable target");
        let r = f.report();
        assert!(r.interventions.acceleration > 0 && r.interventions.velocity > 0);
    }

    #[test]
    fn rejects_bad_config_and_initial_state() {
        let mut cfg = SafetyConfig::ur5(500.0);
        cfg.limits.max_velocity[2] = -1.0;
        assert!(matches!(
            SafetyFilter::new(cfg, &home()),
            Err(SafetyError::Config {
                field: "max_velocity",
                ..
            })
        ));
        let mut q = home();
        q[2] = 4.0;
        assert!(matches!(
            SafetyFilter::new(SafetyConfig::ur5(500.0), &q),
            Err(SafetyError::InitialOutsideLimits { joint: 2, .. })
        ));
        assert!(matches!(
            SafetyFilter::new(boxed(500.0), &[0.0; 6]),
            Err(SafetyError::InitialOutsideWorkspace { .. })
        ));
    }

    #[test]
    fn workspace_exit_is_refused() {
        let cfg = boxed(125.0);
        let mut f = SafetyFilter::new(cfg.clone(), &home()).expect("valid");
        let mut mon = LimitMonitor::new(cfg, &home());
        let mut out = vec![0.0; 6];
        // Stretching the arm out (q2, q3 -> 0) leaves the 0.7 m box.
        let target = vec![0.0, 0.0, 0.0, -1.8, -1.57, 0.3];
        for _ in 0..1000 {
            f.apply(Some(&target), None, &mut out);
            assert_eq!(mon.check(&out), 0);
        }
        assert!(f.report().interventions.workspace > 0);
        // It got close to the boundary rather than stopping at the first refusal.
        let p = Ur5Model::ur5().tcp_position(&std::array::from_fn(|j| out[j]));
        assert!(p.x.abs() > 0.6 || p.y.abs() > 0.6 || p.z > 0.8, "{p:?}");
    }

    /// One adversarial value for a joint: NaN, infinities, huge, limit edges, or ordinary.
    fn joint_value() -> impl Strategy<Value = f64> {
        prop_oneof![
            1 => Just(f64::NAN),
            1 => Just(f64::INFINITY),
            1 => Just(f64::NEG_INFINITY),
            1 => prop_oneof![Just(1e300), Just(-1e300), Just(f64::MAX), Just(f64::MIN_POSITIVE)],
            2 => (-1e-6..1e-6f64).prop_map(|e| 2.0 * PI + e),
            2 => (-1e-6..1e-6f64).prop_map(|e| -2.0 * PI + e),
            2 => (-1e-6..1e-6f64).prop_map(|e| PI + e),
            2 => (-1e-6..1e-6f64).prop_map(|e| -PI + e),
            6 => -7.0..7.0f64,
            12 => -2.0..2.0f64,
        ]
    }

    /// A stream mixing arbitrary commands, holds, and runs of the same target (so the arm
    /// actually travels to edges before the next jump).
    fn stream() -> impl Strategy<Value = Vec<Option<Vec<f64>>>> {
        let cmd = prop_oneof![
            1 => Just(None),
            1 => prop::collection::vec(joint_value(), 0..8).prop_map(Some),
            14 => prop::collection::vec(joint_value(), 6).prop_map(Some),
        ];
        prop::collection::vec((cmd, 1usize..40), 1..40).prop_map(|runs| {
            runs.into_iter()
                .flat_map(|(c, k)| std::iter::repeat_n(c, k))
                .collect()
        })
    }

    fn run_stream(cfg: SafetyConfig, start: &[f64], cmds: &[Option<Vec<f64>>]) -> ViolationCounts {
        let Ok(mut f) = SafetyFilter::new(cfg.clone(), start) else {
            return ViolationCounts {
                non_finite: u64::MAX,
                ..Default::default()
            };
        };
        let mut mon = LimitMonitor::new(cfg, start);
        let mut out = vec![0.0; 6];
        for c in cmds {
            f.apply(c.as_deref(), Some(0.5), &mut out);
            mon.check(&out);
        }
        // Then hold to a stop: the stop itself must respect the limits too.
        for _ in 0..400 {
            f.apply(None, None, &mut out);
            mon.check(&out);
        }
        assert!(f.at_rest());
        mon.counts()
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 192, ..ProptestConfig::default() })]

        #[test]
        fn adversarial_streams_never_leave_limits_500hz(cmds in stream()) {
            let c = run_stream(SafetyConfig::ur5(500.0), &home(), &cmds);
            prop_assert_eq!(c, ViolationCounts::default());
        }

        #[test]
        fn adversarial_streams_never_leave_limits_or_box_125hz(cmds in stream()) {
            let c = run_stream(boxed(125.0), &home(), &cmds);
            prop_assert_eq!(c, ViolationCounts::default());
        }

        #[test]
        fn starting_at_a_limit_edge_is_safe(cmds in stream(), edge in 0usize..6, up in any::<bool>()) {
            let lim = JointLimits::ur5();
            let mut start = home();
            start[edge] = if up { lim.upper[edge] } else { lim.lower[edge] };
            let c = run_stream(SafetyConfig::ur5(500.0), &start, &cmds);
            prop_assert_eq!(c, ViolationCounts::default());
        }
    }
}
