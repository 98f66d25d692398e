//! rudder-reward: a VLM success classifier that judges from camera frames whether an
//! instruction has been carried out (RoboFuME, REFERENCE §2): the reward and the task switch of
//! reset-free RL. It reads robot's observation types and knows no simulator. See README.md.
//!
//! Modules: [`classifier`] (the model behind [`SuccessClassifier`], its checkpoint files),
//! [`train`] (its family on tune's trainer, calibration), [`dataset`] (the labelled-frame
//! format), [`calibration`] (temperature scaling, ECE, threshold, reliability diagrams),
//! [`metrics`] (accuracy, precision, recall, F1, per task and per hard-negative kind).

pub mod baseline;
pub mod calibration;
pub mod classifier;
pub mod dataset;
pub mod error;
pub mod metrics;
pub mod train;

pub use classifier::{RewardConfig, SuccessClassifier, Verdict};
pub use error::RewardError;
