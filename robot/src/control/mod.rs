//! The real-time control loop: a fixed-rate control thread that never waits on inference, an
//! inference thread publishing action chunks, interpolation and blending of chunks, a watchdog,
//! the safety filter on every command, and timing metrics; and the same tick logic stepped in
//! lockstep on one thread for reproducible runs.

pub mod core;
pub mod handoff;
pub mod inference;
pub mod lockstep;
pub mod metrics;
pub mod replan;
pub mod runner;
pub mod timing;
pub mod trajectory;

pub use self::core::{ControlCore, Health, HoldReason, LoopState, WatchdogConfig};
pub use handoff::Mailbox;
pub use inference::{plan, InferenceStats, Planned};
pub use lockstep::{LockstepDriver, MAX_LOCKSTEP_TICKS};
pub use metrics::{Histogram, HoldCounts, LoopMetrics, Percentiles, TimingSetup};
pub use replan::ReplanRule;
pub use runner::{ControlConfig, ControlError, ControlLoop};
pub use timing::{setup_current_thread, wait_until, TimingRequest};
pub use trajectory::{
    ChunkConverter, ConversionNotes, ConvertError, EefDeltaScale, JointTrajectory, Reference,
};
