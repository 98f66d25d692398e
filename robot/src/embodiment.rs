//! What the control loop drives: a real arm behind ROS 2, a simulator, or the in-process
//! kinematic UR5. The loop does not know which.

use crate::safety::JointLimits;
use crate::types::{ArmStateLayout, JointCommand, JointState, Observation};
use thiserror::Error;

#[derive(Debug, Error, Clone, PartialEq)]
pub enum EmbodimentError {
    #[error("command field `{field}`: {reason}")]
    BadCommand { field: &'static str, reason: String },
    #[error("embodiment disconnected: {0}")]
    Disconnected(String),
    #[error("sensor `{sensor}` failed: {reason}")]
    Sensor { sensor: String, reason: String },
}

/// An arm the control loop can stream joint-position commands to.
///
/// `read_state` and `command` run on the control thread every tick and must not block for
/// long; `observe` (images included) is called on the control thread only when the inference
/// thread asks for a fresh observation, so an embodiment with slow cameras should render them
/// asynchronously and return the newest frames.
pub trait Embodiment: Send {
    fn name(&self) -> &str;
    fn joint_names(&self) -> Vec<String>;
    /// The rate the hardware (or simulator) expects commands at. The loop runs at this rate:
    /// `ControlLoop::start` and `LockstepDriver::new` refuse a config that asks for another
    /// (build it with `ControlConfig::for_embodiment`).
    fn control_rate_hz(&self) -> f64;
    /// Where each value of `observe().state` sits.
    fn state_layout(&self) -> ArmStateLayout;
    fn limits(&self) -> JointLimits;
    fn read_state(&mut self) -> Result<JointState, EmbodimentError>;
    fn observe(&mut self) -> Result<Observation, EmbodimentError>;
    fn command(&mut self, cmd: &JointCommand) -> Result<(), EmbodimentError>;
}
