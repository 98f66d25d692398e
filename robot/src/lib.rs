//! rudder-robot: what an embodiment and a policy exchange, the UR5 / UR5e model, the safety
//! filter, and the real-time control loop. Knows no ML (see DESIGN.md).

pub mod bench;
pub mod control;
pub mod driving;
pub mod embodiment;
pub mod judge;
pub mod kinematic;
pub mod learner;
pub mod policy;
#[cfg(feature = "ros2")]
pub mod ros2;
pub mod safety;
pub mod stats;
pub mod types;
pub mod ur5;

pub use control::{
    ControlConfig, ControlError, ControlLoop, HoldReason, LockstepDriver, LoopMetrics, LoopState,
    WatchdogConfig,
};
pub use embodiment::{Embodiment, EmbodimentError};
pub use judge::{Debounce, Judgement, SuccessJudge};
pub use kinematic::KinematicUr5;
pub use learner::{AttemptEnd, Learner};
pub use policy::{Policy, PolicyError};
pub use safety::{JointLimits, SafetyConfig, SafetyFilter, SafetyReport, WorkspaceBox};
pub use types::{
    Action, ActionChunk, ActionSpace, ArmStateLayout, DataError, ImageRgb8, JointCommand,
    JointState, Observation, VehicleCommand, VehicleLimits, VehicleState,
};
pub use ur5::{IkError, Joints, Ur5Model, Ur5Variant};
