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
    /// Proprioceptive state; its layout is the embodiment's (UR5: 6 joint positions, then the
    /// 6 joint velocities, then the gripper).
    pub state: Vec<f64>,
    pub instruction: String,
    /// Seconds on the control loop's monotonic clock when the state was sampled.
    pub timestamp: f64,
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
