//! ROS 2 bridge (cargo feature `ros2`): the Universal Robots ROS 2 driver's topic interface
//! (REFERENCE §8) spoken through r2r.
//!
//! - [`Ros2Ur5`]: a [`crate::Embodiment`] over ROS 2, so [`crate::ControlLoop`] drives a real
//!   UR5 / UR5e (or `rudder-sim`'s simulated driver) exactly as it drives a simulator. It
//!   subscribes `/joint_states`, camera `sensor_msgs/Image` topics, the speed scaling, an e-stop
//!   (`std_msgs/Bool`), the instruction (`std_msgs/String`) and steering coefficients
//!   (`std_msgs/Float64MultiArray`); it commands either streaming
//!   `/forward_position_controller/commands`, `/forward_velocity_controller/commands` or
//!   `/scaled_joint_trajectory_controller/joint_trajectory`.
//! - [`convert`]: the message checks and conversions (pure functions, tested without ROS).
//! - [`spin`]: the node thread that spins r2r and drains subscriptions; it is stopped and joined
//!   before the node is dropped (r2r segfaults at exit otherwise).
//!
//! Bad input (unknown or missing joint names, wrong lengths, NaN, stale `/joint_states`,
//! unsupported image encodings) is logged with `tracing` and counted, and makes `read_state` /
//! `observe` fail so the control loop holds; nothing here panics on a message.

pub mod bridge;
pub mod convert;
pub mod spin;

pub use bridge::{
    CameraTopic, CommandMode, Ros2Counts, Ros2Error, Ros2Handle, Ros2Ur5, Ros2Ur5Config,
};
pub use convert::{InputError, JointMap};
pub use spin::{drain, Handler, Spinner};

/// The r2r crate this bridge is built on, so dependents (the simulated driver) use the same one.
pub use r2r;

/// Topic names of the Universal Robots ROS 2 driver (REFERENCE §8) and Rudder's own topics.
pub mod topics {
    pub const JOINT_STATES: &str = "/joint_states";
    pub const SPEED_SCALING: &str = "/speed_scaling_state_broadcaster/speed_scaling";
    pub const FORWARD_POSITION: &str = "/forward_position_controller/commands";
    pub const SCALED_TRAJECTORY: &str = "/scaled_joint_trajectory_controller/joint_trajectory";
    pub const FORWARD_VELOCITY: &str = "/forward_velocity_controller/commands";
    pub const ESTOP: &str = "/rudder/estop";
    pub const INSTRUCTION: &str = "/rudder/instruction";
    pub const STEERING: &str = "/rudder/steering";
    pub const GRIPPER_COMMAND: &str = "/rudder/gripper_command";
}

/// Seconds since the Unix epoch as a ROS time stamp (ROS time is the system clock unless a
/// simulation clock is used).
pub fn now_stamp() -> r2r::builtin_interfaces::msg::Time {
    let d = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    r2r::builtin_interfaces::msg::Time {
        sec: i32::try_from(d.as_secs()).unwrap_or(i32::MAX),
        nanosec: d.subsec_nanos(),
    }
}

/// Age in seconds of a stamp against the system clock (negative if it is in the future), or
/// `None` for an unset (zero) stamp.
pub fn stamp_age(stamp: &r2r::builtin_interfaces::msg::Time) -> Option<f64> {
    if stamp.sec == 0 && stamp.nanosec == 0 {
        return None;
    }
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs_f64();
    Some(now - (stamp.sec as f64 + stamp.nanosec as f64 * 1e-9))
}
