//! rudder-sim: simulated embodiments built on rudder-robot's models.
//!
//! - [`tabletop`]: UR5 manipulation with LIBERO-style suites, scripted experts and demos.
//! - [`driving`]: nuPlan-style driving scenarios with the closed-loop score.

pub mod driving;
#[cfg(feature = "ros2")]
pub mod ros2_driver;
pub mod tabletop;
