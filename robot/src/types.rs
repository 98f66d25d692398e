//! What an embodiment and a policy exchange: observations, actions, action chunks, joint and
//! vehicle state. Nothing here knows how a policy is computed.

use serde::{Deserialize, Serialize};
use std::time::Instant;
use thiserror::Error;

/// Errors raised when data coming from a policy or a sensor does not have the declared shape.
#[derive(Debug, Error, Clone, PartialEq)]
pub enum DataError {
    #[error("image `{name}`: {width}x{height} RGB8 needs {expected} bytes, got {got}")]
    ImageSize {
        name: String,
        width: u32,
        height: u32,
        expected: usize,
        got: usize,
    },
    #[error("action chunk field `{field}`: {reason}")]
    Chunk { field: &'static str, reason: String },
    #[error("observation state `{field}`: {reason}")]
    State { field: &'static str, reason: String },
}

/// A packed RGB8 image, row-major, no padding between rows.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ImageRgb8 {
    pub width: u32,
    pub height: u32,
    pub data: Vec<u8>,
}

impl ImageRgb8 {
    /// Builds an image, checking that `data` holds exactly `width * height * 3` bytes.
    pub fn new(name: &str, width: u32, height: u32, data: Vec<u8>) -> Result<Self, DataError> {
        let expected = (width as usize)
            .checked_mul(height as usize)
            .and_then(|n| n.checked_mul(3))
            .unwrap_or(usize::MAX);
        if data.len() != expected {
            return Err(DataError::ImageSize {
                name: name.to_string(),
                width,
                height,
                expected,
                got: data.len(),
            });
        }
        Ok(Self {
            width,
            height,
            data,
        })
    }

    /// A black image of the given size.
    pub fn black(width: u32, height: u32) -> Self {
        Self {
            width,
            height,
            data: vec![0; width as usize * height as usize * 3],
        }
    }

    /// The pixel at (x, y), or `None` outside the image or if `data` is short.
    pub fn pixel(&self, x: u32, y: u32) -> Option<[u8; 3]> {
        if x >= self.width || y >= self.height {
            return None;
        }
        let i = (y as usize * self.width as usize + x as usize) * 3;
        let p = self.data.get(i..i + 3)?;
        Some([p[0], p[1], p[2]])
    }
}

/// What a policy sees at one instant.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
pub struct Observation {
    /// Camera name (e.g. "agentview", "wrist") to image; ordered so serialisation is stable.
    pub images: std::collections::BTreeMap<String, ImageRgb8>,
    /// Proprioceptive state in the embodiment's `ArmStateLayout` (UR5: 6 joint positions, 6
    /// joint velocities, the gripper; the tabletop simulator appends LIBERO's 8-D state).
    pub state: Vec<f64>,
    pub instruction: String,
    /// Seconds on the control loop's monotonic clock when the state was sampled.
    pub timestamp: f64,
}

/// Where each value of an arm's `Observation::state` sits: `dof` joint positions (rad), `dof`
/// joint velocities (rad/s), the gripper closure (0 open .. 1 closed), then, when the
/// embodiment computes it, LIBERO's 8-D end-effector state (TCP position in metres, its
/// orientation as an axis-angle vector, the two finger positions).
///
/// The embodiment that fills an observation owns its layout (`Embodiment::state_layout`);
/// policies and bridges read and build states through it instead of counting offsets.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ArmStateLayout {
    dof: usize,
    eef: bool,
}

impl ArmStateLayout {
    /// LIBERO's end-effector state: TCP position (3), axis-angle (3), finger positions (2).
    pub const EEF_LEN: usize = 8;

    /// Joints, velocities and gripper only (a real arm's joint states).
    pub const fn joints(dof: usize) -> Self {
        Self { dof, eef: false }
    }

    /// The UR5's joints, velocities and gripper (13 values).
    pub const fn ur5_joints() -> Self {
        Self::joints(6)
    }

    /// The tabletop UR5's full layout: the 13 joint values, then LIBERO's 8-D state (21).
    pub const fn ur5_libero() -> Self {
        Self { dof: 6, eef: true }
    }

    /// This layout with LIBERO's end-effector state appended.
    pub const fn with_eef(self) -> Self {
        Self {
            dof: self.dof,
            eef: true,
        }
    }

    pub const fn dof(&self) -> usize {
        self.dof
    }

    /// Values in a state of this layout.
    pub const fn len(&self) -> usize {
        2 * self.dof + 1 + if self.eef { Self::EEF_LEN } else { 0 }
    }

    /// Never true: a layout has at least the gripper.
    pub const fn is_empty(&self) -> bool {
        false
    }

    pub const fn has_eef(&self) -> bool {
        self.eef
    }

    pub fn positions(&self) -> std::ops::Range<usize> {
        0..self.dof
    }

    pub fn velocities(&self) -> std::ops::Range<usize> {
        self.dof..2 * self.dof
    }

    pub fn gripper(&self) -> usize {
        2 * self.dof
    }

    /// Where LIBERO's 8-D state sits, if this layout has it.
    pub fn eef(&self) -> Option<std::ops::Range<usize>> {
        let start = 2 * self.dof + 1;
        self.eef.then_some(start..start + Self::EEF_LEN)
    }

    /// A state of this layout. `eef` must be given exactly when the layout has it.
    pub fn build(
        &self,
        positions: &[f64],
        velocities: &[f64],
        gripper: f64,
        eef: Option<&[f64]>,
    ) -> Result<Vec<f64>, DataError> {
        let check = |field: &'static str, got: usize, want: usize| {
            if got == want {
                Ok(())
            } else {
                Err(DataError::State {
                    field,
                    reason: format!("{got} values, the layout has {want}"),
                })
            }
        };
        check("positions", positions.len(), self.dof)?;
        check("velocities", velocities.len(), self.dof)?;
        match (eef, self.eef) {
            (Some(e), true) => check("eef", e.len(), Self::EEF_LEN)?,
            (None, false) => {}
            (Some(_), false) => {
                return Err(DataError::State {
                    field: "eef",
                    reason: "given, but the layout has no end-effector state".into(),
                })
            }
            (None, true) => {
                return Err(DataError::State {
                    field: "eef",
                    reason: "missing: the layout ends with LIBERO's 8-D state".into(),
                })
            }
        }
        let mut state = Vec::with_capacity(self.len());
        state.extend_from_slice(positions);
        state.extend_from_slice(velocities);
        state.push(gripper);
        if let Some(e) = eef {
            state.extend_from_slice(e);
        }
        Ok(state)
    }

    /// Checks that `state` has this layout's length.
    fn check_len(&self, state: &[f64]) -> Result<(), DataError> {
        if state.len() == self.len() {
            Ok(())
        } else {
            Err(DataError::State {
                field: "state",
                reason: format!(
                    "{} values, the layout ({} joints, velocities, gripper{}) has {}",
                    state.len(),
                    self.dof,
                    if self.eef { ", LIBERO's 8-D state" } else { "" },
                    self.len()
                ),
            })
        }
    }

    /// The joint positions of `state`.
    pub fn joint_positions<'a>(&self, state: &'a [f64]) -> Result<&'a [f64], DataError> {
        self.check_len(state)?;
        Ok(&state[self.positions()])
    }

    /// The joint velocities of `state`.
    pub fn joint_velocities<'a>(&self, state: &'a [f64]) -> Result<&'a [f64], DataError> {
        self.check_len(state)?;
        Ok(&state[self.velocities()])
    }

    /// The gripper closure of `state`.
    pub fn gripper_of(&self, state: &[f64]) -> Result<f64, DataError> {
        self.check_len(state)?;
        Ok(state[self.gripper()])
    }

    /// LIBERO's 8-D state at the end of `state` (an error if the layout has none).
    pub fn eef_state<'a>(&self, state: &'a [f64]) -> Result<&'a [f64], DataError> {
        self.check_len(state)?;
        match self.eef() {
            Some(r) => Ok(&state[r]),
            None => Err(DataError::State {
                field: "eef",
                reason: "the layout has no end-effector state".into(),
            }),
        }
    }

    /// The joint part of `state` (positions, velocities, gripper), for appending an
    /// end-effector state computed elsewhere.
    pub fn joint_part<'a>(&self, state: &'a [f64]) -> Result<&'a [f64], DataError> {
        self.check_len(state)?;
        Ok(&state[..2 * self.dof + 1])
    }
}

/// The action spaces a chunk can be declared in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum ActionSpace {
    /// LIBERO-style: delta end-effector position (3, metres after scaling), delta rotation as an
    /// axis-angle vector (3, radians after scaling), gripper in [-1, 1].
    EefDelta7,
    /// Absolute joint positions (rad) for `dof` joints, optional gripper.
    JointPositions { dof: usize },
    /// Joint velocities (rad/s) for `dof` joints, optional gripper.
    JointVelocities { dof: usize },
    /// Longitudinal acceleration (m/s^2) and front-wheel steering angle (rad).
    VehicleAccelSteer,
}

/// One point of an action chunk.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Action {
    EefDelta {
        dpos: [f64; 3],
        drot: [f64; 3],
        gripper: f64,
    },
    JointPositions {
        q: Vec<f64>,
        gripper: Option<f64>,
    },
    JointVelocities {
        qd: Vec<f64>,
        gripper: Option<f64>,
    },
    VehicleAccelSteer {
        acceleration: f64,
        steering_angle: f64,
    },
}

impl Action {
    /// Whether this action belongs to `space` (variant and dimension).
    pub fn matches(&self, space: ActionSpace) -> bool {
        match (self, space) {
            (Action::EefDelta { .. }, ActionSpace::EefDelta7) => true,
            (Action::JointPositions { q, .. }, ActionSpace::JointPositions { dof }) => {
                q.len() == dof
            }
            (Action::JointVelocities { qd, .. }, ActionSpace::JointVelocities { dof }) => {
                qd.len() == dof
            }
            (Action::VehicleAccelSteer { .. }, ActionSpace::VehicleAccelSteer) => true,
            _ => false,
        }
    }

    /// Whether every number in the action is finite.
    pub fn is_finite(&self) -> bool {
        let all = |v: &[f64]| v.iter().all(|x| x.is_finite());
        match self {
            Action::EefDelta {
                dpos,
                drot,
                gripper,
            } => all(dpos) && all(drot) && gripper.is_finite(),
            Action::JointPositions { q, gripper } => {
                all(q) && gripper.is_none_or(|g| g.is_finite())
            }
            Action::JointVelocities { qd, gripper } => {
                all(qd) && gripper.is_none_or(|g| g.is_finite())
            }
            Action::VehicleAccelSteer {
                acceleration,
                steering_angle,
            } => acceleration.is_finite() && steering_angle.is_finite(),
        }
    }
}

/// A sequence of targets: point `k` is the target for time `start_time + k * dt`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ActionChunk {
    pub space: ActionSpace,
    /// Seconds on the loop clock of point 0 (usually the observation's timestamp).
    pub start_time: f64,
    /// Seconds between consecutive points.
    pub dt: f64,
    pub actions: Vec<Action>,
}

impl ActionChunk {
    /// Builds a chunk after checking that it is usable: at least one point, `dt` finite and
    /// positive, every point of the declared space.
    pub fn new(
        space: ActionSpace,
        start_time: f64,
        dt: f64,
        actions: Vec<Action>,
    ) -> Result<Self, DataError> {
        let chunk = Self {
            space,
            start_time,
            dt,
            actions,
        };
        chunk.validate()?;
        Ok(chunk)
    }

    /// Checks a chunk that may have been built field by field (e.g. deserialised).
    pub fn validate(&self) -> Result<(), DataError> {
        if !(self.dt.is_finite() && self.dt > 0.0) {
            return Err(DataError::Chunk {
                field: "dt",
                reason: format!("must be finite and > 0, got {}", self.dt),
            });
        }
        if !self.start_time.is_finite() {
            return Err(DataError::Chunk {
                field: "start_time",
                reason: format!("must be finite, got {}", self.start_time),
            });
        }
        if self.actions.is_empty() {
            return Err(DataError::Chunk {
                field: "actions",
                reason: "empty chunk".into(),
            });
        }
        for (i, a) in self.actions.iter().enumerate() {
            if !a.matches(self.space) {
                return Err(DataError::Chunk {
                    field: "actions",
                    reason: format!("point {i} is not of the declared space {:?}", self.space),
                });
            }
        }
        Ok(())
    }

    /// Time of the last point.
    pub fn end_time(&self) -> f64 {
        self.start_time + self.dt * (self.actions.len().saturating_sub(1)) as f64
    }
}

/// Measured joint state, as the control thread reads it every tick.
#[derive(Debug, Clone, PartialEq)]
pub struct JointState {
    pub positions: Vec<f64>,
    pub velocities: Vec<f64>,
    pub gripper: Option<f64>,
    /// When the sample was taken; the watchdog compares it with the tick time.
    pub sampled_at: Instant,
}

/// What the control loop sends to an arm each tick (streamed position control).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct JointCommand {
    pub positions: Vec<f64>,
    pub gripper: Option<f64>,
}

/// State of a vehicle for the driving side (rear-axle reference point).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize, Default)]
pub struct VehicleState {
    pub x: f64,
    pub y: f64,
    /// Yaw in radians, counter-clockwise from +x.
    pub heading: f64,
    /// m/s, along the heading.
    pub speed: f64,
    /// m/s^2, longitudinal.
    pub acceleration: f64,
    /// Front-wheel angle in radians.
    pub steering_angle: f64,
}

/// What a driving policy commands each step.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize, Default)]
pub struct VehicleCommand {
    pub acceleration: f64,
    pub steering_angle: f64,
}

/// Physical limits of a vehicle command.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct VehicleLimits {
    pub max_acceleration: f64,
    /// Positive number: the strongest braking allowed.
    pub max_deceleration: f64,
    pub max_steering_angle: f64,
    /// rad/s.
    pub max_steering_rate: f64,
    pub max_speed: f64,
    pub wheelbase: f64,
}

impl Default for VehicleLimits {
    /// A mid-size car (roughly nuPlan's ego: 3.1 m wheelbase).
    fn default() -> Self {
        Self {
            max_acceleration: 3.0,
            max_deceleration: 8.0,
            max_steering_angle: 0.6,
            max_steering_rate: 0.7,
            max_speed: 30.0,
            wheelbase: 3.089,
        }
    }
}

impl VehicleLimits {
    /// Clamps a command given the previous steering angle and the current speed; non-finite
    /// fields become "brake gently, keep the wheel". Returns the command and whether anything
    /// was changed.
    pub fn clamp(
        &self,
        cmd: VehicleCommand,
        prev_steering: f64,
        speed: f64,
        dt: f64,
    ) -> (VehicleCommand, bool) {
        let mut changed = false;
        let mut acc = if cmd.acceleration.is_finite() {
            cmd.acceleration
        } else {
            changed = true;
            -self.max_deceleration.min(1.0)
        };
        let mut steer = if cmd.steering_angle.is_finite() {
            cmd.steering_angle
        } else {
            changed = true;
            prev_steering
        };
        let a = acc.clamp(-self.max_deceleration, self.max_acceleration);
        // Never command a speed above the cap, and never brake into reversing.
        let a = if speed + a * dt > self.max_speed {
            ((self.max_speed - speed) / dt).min(a)
        } else if speed + a * dt < 0.0 {
            (-speed / dt).max(a)
        } else {
            a
        };
        if a != acc {
            changed = true;
            acc = a;
        }
        let max_d = self.max_steering_rate * dt;
        let s = steer
            .clamp(prev_steering - max_d, prev_steering + max_d)
            .clamp(-self.max_steering_angle, self.max_steering_angle);
        if s != steer {
            changed = true;
            steer = s;
        }
        (
            VehicleCommand {
                acceleration: acc,
                steering_angle: steer,
            },
            changed,
        )
    }
}

impl VehicleState {
    /// Advances a kinematic bicycle model by `dt` under an already-clamped command.
    pub fn step_bicycle(&self, cmd: VehicleCommand, wheelbase: f64, dt: f64) -> VehicleState {
        let speed = (self.speed + cmd.acceleration * dt).max(0.0);
        let mean_speed = 0.5 * (self.speed + speed);
        let yaw_rate = mean_speed * cmd.steering_angle.tan() / wheelbase;
        let heading = self.heading + yaw_rate * dt;
        let mid_heading = self.heading + 0.5 * yaw_rate * dt;
        VehicleState {
            x: self.x + mean_speed * mid_heading.cos() * dt,
            y: self.y + mean_speed * mid_heading.sin() * dt,
            heading,
            speed,
            acceleration: cmd.acceleration,
            steering_angle: cmd.steering_angle,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn image_size_is_checked() {
        assert!(ImageRgb8::new("cam", 2, 2, vec![0; 12]).is_ok());
        let e = ImageRgb8::new("cam", 2, 2, vec![0; 11]).unwrap_err();
        assert!(e.to_string().contains("cam"));
    }

    #[test]
    fn chunk_validation_names_field() {
        let a = Action::JointPositions {
            q: vec![0.0; 6],
            gripper: None,
        };
        let ok = ActionChunk::new(
            ActionSpace::JointPositions { dof: 6 },
            0.0,
            0.05,
            vec![a.clone()],
        );
        assert!(ok.is_ok());
        let bad = ActionChunk::new(ActionSpace::JointPositions { dof: 7 }, 0.0, 0.05, vec![a]);
        assert!(matches!(
            bad,
            Err(DataError::Chunk {
                field: "actions",
                ..
            })
        ));
        let bad_dt = ActionChunk::new(ActionSpace::EefDelta7, 0.0, f64::NAN, vec![]);
        assert!(matches!(bad_dt, Err(DataError::Chunk { field: "dt", .. })));
    }

    #[test]
    fn arm_state_layout_builds_and_slices() {
        let full = ArmStateLayout::ur5_libero();
        assert_eq!((full.len(), ArmStateLayout::ur5_joints().len()), (21, 13));
        let q = [1.0, 2.0, 3.0, 4.0, 5.0, 6.0];
        let qd = [0.1; 6];
        let eef: Vec<f64> = (0..8).map(f64::from).collect();
        let s = full.build(&q, &qd, 0.5, Some(&eef)).expect("layout");
        assert_eq!(full.joint_positions(&s).expect("len"), &q);
        assert_eq!(full.joint_velocities(&s).expect("len"), &qd);
        assert_eq!(full.gripper_of(&s).expect("len"), 0.5);
        assert_eq!(full.eef_state(&s).expect("eef"), eef.as_slice());
        assert_eq!(full.joint_part(&s).expect("len").len(), 13);
        assert!(full.eef_state(&s[..20]).is_err());
        assert!(full.build(&q, &qd, 0.5, None).is_err());
        let j = ArmStateLayout::ur5_joints();
        assert!(j.eef_state(&s[..13]).is_err());
        assert_eq!(j.with_eef(), full);
    }

    #[test]
    fn vehicle_clamp_and_step() {
        let lim = VehicleLimits::default();
        let (c, changed) = lim.clamp(
            VehicleCommand {
                acceleration: 100.0,
                steering_angle: f64::NAN,
            },
            0.1,
            10.0,
            0.1,
        );
        assert!(changed);
        assert_eq!(c.acceleration, lim.max_acceleration);
        assert_eq!(c.steering_angle, 0.1);
        let s = VehicleState {
            speed: 10.0,
            ..Default::default()
        }
        .step_bicycle(c, lim.wheelbase, 0.1);
        assert!((s.speed - 10.3).abs() < 1e-12);
        assert!(s.heading > 0.0 && s.y > 0.0);
    }
}
