//! Joint-space references the control thread follows: chunks converted to joint waypoints
//! (on the inference thread), sampled with cubic Hermite interpolation, and blended when a new
//! chunk replaces one still in use.

use crate::types::{Action, ActionChunk, ActionSpace};
use crate::ur5::{IkError, Joints, Ur5Model};
use nalgebra::{Translation3, UnitQuaternion, Vector3};
use serde::{Deserialize, Serialize};
use std::sync::Arc;
use thiserror::Error;

#[derive(Debug, Error, Clone, PartialEq)]
pub enum ConvertError {
    #[error("chunk in space {0:?} cannot drive a joint-space arm")]
    UnsupportedSpace(ActionSpace),
    #[error("chunk field `{field}`: {reason}")]
    Invalid { field: &'static str, reason: String },
    #[error("observation state has {got} values, need {need} joint positions")]
    ObservationState { got: usize, need: usize },
    #[error("end-effector chunk needs a kinematic model, the loop has none")]
    NoKinematics,
    #[error("first end-effector target unreachable: {0}")]
    FirstTargetUnreachable(IkError),
}

/// Timed joint waypoints: point `k` is the target at `start_time + k * dt`.
#[derive(Debug, Clone, PartialEq)]
pub struct JointTrajectory {
    pub start_time: f64,
    pub dt: f64,
    pub points: Vec<Vec<f64>>,
    pub gripper: Vec<Option<f64>>,
    /// Timestamp of the observation the chunk was computed from (for chunk-age metrics).
    pub observation_time: f64,
    /// The points came from deltas (end-effector deltas, velocities) added to the observed
    /// position: the loop re-anchors them on the position it commanded at `start_time`
    /// ([`crate::control::ControlCore::offer`]).
    pub relative: bool,
}

impl JointTrajectory {
    pub fn end_time(&self) -> f64 {
        self.start_time + self.dt * self.points.len().saturating_sub(1) as f64
    }

    pub fn dof(&self) -> usize {
        self.points.first().map_or(0, |p| p.len())
    }

    /// Catmull-Rom (cubic Hermite) sample at `t`, held at the ends. Velocity is continuous
    /// across waypoints, so a chunk does not ask for acceleration spikes at every point.
    pub fn sample(&self, t: f64, out: &mut [f64]) -> Option<f64> {
        let n = self.points.len();
        if n == 0 {
            return None;
        }
        let u = ((t - self.start_time) / self.dt).max(0.0);
        if n == 1 || u >= (n - 1) as f64 {
            let last = &self.points[n - 1];
            for (o, v) in out.iter_mut().zip(last.iter()) {
                *o = *v;
            }
            return self.gripper[n - 1];
        }
        let k = (u.floor() as usize).min(n - 2);
        let s = u - k as f64;
        let (s2, s3) = (s * s, s * s * s);
        let h00 = 2.0 * s3 - 3.0 * s2 + 1.0;
        let h10 = s3 - 2.0 * s2 + s;
        let h01 = -2.0 * s3 + 3.0 * s2;
        let h11 = s3 - s2;
        let p0 = &self.points[k];
        let p1 = &self.points[k + 1];
        let prev = &self.points[k.saturating_sub(1)];
        let next = &self.points[(k + 2).min(n - 1)];
        // Tangents in "per point" units (multiplied by dt already); one-sided at the ends.
        let span0 = if k == 0 { 1.0 } else { 2.0 };
        let span1 = if k + 2 > n - 1 { 1.0 } else { 2.0 };
        for (j, o) in out.iter_mut().enumerate().take(p0.len()) {
            let m0 = if k == 0 {
                p1[j] - p0[j]
            } else {
                (p1[j] - prev[j]) / span0
            };
            let m1 = if k + 2 > n - 1 {
                p1[j] - p0[j]
            } else {
                (next[j] - p0[j]) / span1
            };
            *o = h00 * p0[j] + h10 * m0 + h01 * p1[j] + h11 * m1;
        }
        let g = if s < 0.5 { k } else { k + 1 };
        self.gripper[g]
    }
}

/// How LIBERO-style normalised deltas map to metres and radians per step (robosuite's OSC_POSE
/// output range: 0.05 m and 0.5 rad for a unit input).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct EefDeltaScale {
    pub position_m: f64,
    pub rotation_rad: f64,
}

impl Default for EefDeltaScale {
    fn default() -> Self {
        Self {
            position_m: 0.05,
            rotation_rad: 0.5,
        }
    }
}

/// Turns chunks into joint trajectories; runs on the inference thread.
#[derive(Debug, Clone, PartialEq)]
pub struct ChunkConverter {
    pub dof: usize,
    pub model: Option<Ur5Model>,
    pub lower: Vec<f64>,
    pub upper: Vec<f64>,
    pub eef_scale: EefDeltaScale,
}

/// What a conversion had to drop or change.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct ConversionNotes {
    /// End-effector targets past the first unreachable one (the trajectory is cut there).
    pub unreachable_points: usize,
    /// Delta components outside [-1, 1] that were clamped.
    pub clamped_deltas: usize,
}

impl ChunkConverter {
    /// `obs_q` is the joint position at the observation the chunk was computed from.
    pub fn convert(
        &self,
        chunk: &ActionChunk,
        obs_q: &[f64],
        observation_time: f64,
    ) -> Result<(JointTrajectory, ConversionNotes), ConvertError> {
        chunk.validate().map_err(|e| ConvertError::Invalid {
            field: "chunk",
            reason: e.to_string(),
        })?;
        for (i, a) in chunk.actions.iter().enumerate() {
            if !a.is_finite() {
                return Err(ConvertError::Invalid {
                    field: "actions",
                    reason: format!("point {i} has a non-finite value"),
                });
            }
        }
        if obs_q.len() < self.dof {
            return Err(ConvertError::ObservationState {
                got: obs_q.len(),
                need: self.dof,
            });
        }
        let q0 = &obs_q[..self.dof];
        let mut notes = ConversionNotes::default();
        let mut points = Vec::with_capacity(chunk.actions.len() + 1);
        let mut gripper = Vec::with_capacity(chunk.actions.len() + 1);
        match chunk.space {
            ActionSpace::JointPositions { dof } => {
                if dof != self.dof {
                    return Err(ConvertError::Invalid {
                        field: "space",
                        reason: format!("{dof} joints, arm has {}", self.dof),
                    });
                }
                for a in &chunk.actions {
                    if let Action::JointPositions { q, gripper: g } = a {
                        points.push(q.clone());
                        gripper.push(*g);
                    }
                }
            }
            ActionSpace::JointVelocities { dof } => {
                if dof != self.dof {
                    return Err(ConvertError::Invalid {
                        field: "space",
                        reason: format!("{dof} joints, arm has {}", self.dof),
                    });
                }
                // Velocity k holds over [t_k, t_k+1]: N velocities give N + 1 positions.
                let mut q = q0.to_vec();
                points.push(q.clone());
                gripper.push(None);
                for a in &chunk.actions {
                    if let Action::JointVelocities { qd, gripper: g } = a {
                        for (qi, vi) in q.iter_mut().zip(qd.iter()) {
                            *qi += vi * chunk.dt;
                        }
                        points.push(q.clone());
                        gripper.push(*g);
                    }
                }
            }
            ActionSpace::EefDelta7 => {
                self.convert_eef(chunk, q0, &mut points, &mut gripper, &mut notes)?;
            }
            ActionSpace::VehicleAccelSteer => {
                return Err(ConvertError::UnsupportedSpace(chunk.space));
            }
        }
        let relative = matches!(
            chunk.space,
            ActionSpace::EefDelta7 | ActionSpace::JointVelocities { .. }
        );
        Ok((
            JointTrajectory {
                start_time: chunk.start_time,
                dt: chunk.dt,
                points,
                gripper,
                observation_time,
                relative,
            },
            notes,
        ))
    }

    /// Deltas accumulate from the observed flange pose: position added in `base`, rotation
    /// (axis-angle in `base`) applied on the left; each pose solved by IK nearest to the
    /// previous waypoint, so the chunk follows one continuous branch.
    fn convert_eef(
        &self,
        chunk: &ActionChunk,
        q0: &[f64],
        points: &mut Vec<Vec<f64>>,
        gripper: &mut Vec<Option<f64>>,
        notes: &mut ConversionNotes,
    ) -> Result<(), ConvertError> {
        let model = self.model.ok_or(ConvertError::NoKinematics)?;
        if self.dof != 6 || self.lower.len() != 6 || self.upper.len() != 6 {
            return Err(ConvertError::Invalid {
                field: "dof",
                reason: "end-effector chunks need the 6-joint UR model".into(),
            });
        }
        let mut q: Joints = std::array::from_fn(|j| q0[j]);
        let lower: Joints = std::array::from_fn(|j| self.lower[j]);
        let upper: Joints = std::array::from_fn(|j| self.upper[j]);
        let mut pose = model.fk(&q);
        points.push(q.to_vec());
        gripper.push(None);
        for (i, a) in chunk.actions.iter().enumerate() {
            let Action::EefDelta {
                dpos,
                drot,
                gripper: g,
            } = a
            else {
                continue;
            };
            let mut clamp = |x: f64| {
                let c = x.clamp(-1.0, 1.0);
                if c != x {
                    notes.clamped_deltas += 1;
                }
                c
            };
            let dp = Vector3::new(clamp(dpos[0]), clamp(dpos[1]), clamp(dpos[2]))
                * self.eef_scale.position_m;
            let dr = Vector3::new(clamp(drot[0]), clamp(drot[1]), clamp(drot[2]))
                * self.eef_scale.rotation_rad;
            let g = clamp(*g);
            let rot = UnitQuaternion::from_scaled_axis(dr) * pose.rotation;
            let next = nalgebra::Isometry3::from_parts(
                Translation3::from(pose.translation.vector + dp),
                rot,
            );
            match model.ik_nearest(&next, &q, &lower, &upper) {
                Ok(sol) => {
                    q = sol;
                    pose = next;
                    points.push(q.to_vec());
                    gripper.push(Some(g));
                }
                Err(e) => {
                    if i == 0 {
                        return Err(ConvertError::FirstTargetUnreachable(e));
                    }
                    notes.unreachable_points = chunk.actions.len() - i;
                    break;
                }
            }
        }
        Ok(())
    }
}

/// One layer of the reference: a fixed position or a trajectory, faded in from `since`.
#[derive(Debug, Clone)]
enum Layer {
    Hold(Vec<f64>, Option<f64>),
    Traj(Arc<JointTrajectory>),
}

/// The reference the control thread samples each tick: a stack of layers, each newer one faded
/// in over the one below with a smoothstep weight, so switching chunks changes the commanded
/// position continuously and with continuous velocity.
#[derive(Debug, Clone)]
pub struct Reference {
    layers: Vec<(Layer, f64)>,
    window: f64,
    scratch: Vec<f64>,
}

/// More layers than this only happen if chunks arrive faster than the blend window; the two
/// oldest are then merged into a hold at their current blend.
const MAX_LAYERS: usize = 6;

impl Reference {
    pub fn hold(q: &[f64], gripper: Option<f64>, window: f64) -> Self {
        Self {
            layers: vec![(Layer::Hold(q.to_vec(), gripper), f64::NEG_INFINITY)],
            window: window.max(0.0),
            scratch: vec![0.0; q.len()],
        }
    }

    /// Starts fading `traj` in at time `t`.
    pub fn push(&mut self, traj: Arc<JointTrajectory>, t: f64) {
        if self.layers.len() >= MAX_LAYERS {
            let dof = self.scratch.len();
            let mut merged = vec![0.0; dof];
            let g = self.sample_layers(&self.layers[..2], t, &mut merged);
            self.layers.drain(..2);
            self.layers
                .insert(0, (Layer::Hold(merged, g), f64::NEG_INFINITY));
        }
        self.layers.push((Layer::Traj(traj), t));
    }

    /// The newest trajectory, if any.
    pub fn newest(&self) -> Option<&Arc<JointTrajectory>> {
        self.layers.iter().rev().find_map(|(l, _)| match l {
            Layer::Traj(tr) => Some(tr),
            Layer::Hold(..) => None,
        })
    }

    /// Samples the blended reference at `t` into `out`; drops layers fully covered by a newer
    /// one.
    pub fn sample(&mut self, t: f64, out: &mut [f64]) -> Option<f64> {
        if let Some(last_full) = self
            .layers
            .iter()
            .rposition(|(_, since)| weight(t - since, self.window) >= 1.0)
        {
            self.layers.drain(..last_full);
        }
        let mut scratch = std::mem::take(&mut self.scratch);
        let g = sample_stack(&self.layers, self.window, t, out, &mut scratch);
        self.scratch = scratch;
        g
    }

    fn sample_layers(&self, layers: &[(Layer, f64)], t: f64, out: &mut [f64]) -> Option<f64> {
        let mut scratch = vec![0.0; out.len()];
        sample_stack(layers, self.window, t, out, &mut scratch)
    }
}

fn sample_stack(
    layers: &[(Layer, f64)],
    window: f64,
    t: f64,
    out: &mut [f64],
    scratch: &mut [f64],
) -> Option<f64> {
    let mut gripper = None;
    for (i, (layer, since)) in layers.iter().enumerate() {
        let g = match layer {
            Layer::Hold(q, g) => {
                for (s, v) in scratch.iter_mut().zip(q.iter()) {
                    *s = *v;
                }
                *g
            }
            Layer::Traj(tr) => tr.sample(t, scratch),
        };
        let w = if i == 0 {
            1.0
        } else {
            weight(t - since, window)
        };
        for (o, s) in out.iter_mut().zip(scratch.iter()) {
            *o = if i == 0 { *s } else { (1.0 - w) * *o + w * *s };
        }
        // The gripper is binary in practice; switch to the newer layer once it dominates.
        if i == 0 || w >= 0.5 {
            gripper = g.or(gripper);
        }
    }
    gripper
}

/// Smoothstep from 0 at `elapsed = 0` to 1 at `elapsed = window` (zero slope at both ends).
fn weight(elapsed: f64, window: f64) -> f64 {
    if window <= 0.0 || elapsed >= window {
        return 1.0;
    }
    if elapsed <= 0.0 {
        return 0.0;
    }
    let s = elapsed / window;
    s * s * (3.0 - 2.0 * s)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn traj(start: f64, pts: &[f64]) -> JointTrajectory {
        JointTrajectory {
            start_time: start,
            dt: 0.1,
            points: pts.iter().map(|p| vec![*p]).collect(),
            gripper: vec![None; pts.len()],
            observation_time: start,
            relative: false,
        }
    }

    #[test]
    fn hermite_passes_through_points_and_is_smooth() {
        let t = traj(1.0, &[0.0, 1.0, 4.0, 9.0]);
        let mut o = [0.0];
        for (k, want) in [0.0, 1.0, 4.0, 9.0].iter().enumerate() {
            t.sample(1.0 + 0.1 * k as f64, &mut o);
            assert!((o[0] - want).abs() < 1e-12);
        }
        t.sample(0.0, &mut o);
        assert_eq!(o[0], 0.0);
        t.sample(5.0, &mut o);
        assert_eq!(o[0], 9.0);
        // Slope continuity at an interior waypoint.
        let h = 1e-7;
        let f = |x: f64| {
            let mut o = [0.0];
            t.sample(x, &mut o);
            o[0]
        };
        let left = (f(1.1) - f(1.1 - h)) / h;
        let right = (f(1.1 + h) - f(1.1)) / h;
        assert!((left - right).abs() < 1e-4, "{left} {right}");
    }

    #[test]
    fn blend_is_continuous() {
        let mut r = Reference::hold(&[0.0], None, 0.2);
        r.push(Arc::new(traj(0.0, &[1.0, 1.0])), 0.0);
        let mut o = [0.0];
        r.sample(0.0, &mut o);
        assert_eq!(o[0], 0.0);
        let mut prev = 0.0;
        for i in 1..=300 {
            r.sample(i as f64 * 0.001, &mut o);
            assert!((o[0] - prev).abs() < 0.01);
            prev = o[0];
        }
        assert!((o[0] - 1.0).abs() < 1e-12);
        assert_eq!(r.layers.len(), 1);
    }

    #[test]
    fn eef_chunk_goes_through_ik() {
        let model = Ur5Model::ur5();
        let (lo, hi) = Ur5Model::position_limits();
        let conv = ChunkConverter {
            dof: 6,
            model: Some(model),
            lower: lo.to_vec(),
            upper: hi.to_vec(),
            eef_scale: EefDeltaScale::default(),
        };
        let q0 = [0.1, -1.2, 1.4, -1.8, -1.57, 0.3];
        let step = Action::EefDelta {
            dpos: [0.1, 0.0, 0.0],
            drot: [0.0, 0.0, 0.1],
            gripper: 1.0,
        };
        let chunk =
            ActionChunk::new(ActionSpace::EefDelta7, 2.0, 0.05, vec![step; 10]).expect("valid");
        let (tr, notes) = conv.convert(&chunk, &q0, 2.0).expect("reachable");
        assert_eq!(notes, ConversionNotes::default());
        assert_eq!(tr.points.len(), 11);
        let p0 = model.fk(&q0);
        let q_end: Joints = std::array::from_fn(|j| tr.points[10][j]);
        let p_end = model.fk(&q_end);
        let moved = p_end.translation.vector - p0.translation.vector;
        assert!((moved.x - 10.0 * 0.005).abs() < 1e-9, "{moved:?}");
        assert!(moved.y.abs() < 1e-9 && moved.z.abs() < 1e-9);
        let turned = p_end.rotation * p0.rotation.inverse();
        assert!((turned.angle() - 10.0 * 0.05).abs() < 1e-9);

        // A chunk that walks out of reach is cut at the first unreachable point.
        let away = Action::EefDelta {
            dpos: [-1.0, 0.0, 0.0],
            drot: [0.0; 3],
            gripper: 0.0,
        };
        let chunk =
            ActionChunk::new(ActionSpace::EefDelta7, 2.0, 0.05, vec![away; 40]).expect("valid");
        let (tr, notes) = conv
            .convert(&chunk, &q0, 2.0)
            .expect("first point reachable");
        assert!(notes.unreachable_points > 0);
        assert_eq!(tr.points.len(), 41 - notes.unreachable_points);
        let vehicle = ActionChunk::new(
            ActionSpace::VehicleAccelSteer,
            0.0,
            0.1,
            vec![Action::VehicleAccelSteer {
                acceleration: 1.0,
                steering_angle: 0.0,
            }],
        )
        .expect("valid");
        assert!(matches!(
            conv.convert(&vehicle, &q0, 0.0),
            Err(ConvertError::UnsupportedSpace(_))
        ));
    }
}
