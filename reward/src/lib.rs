//! rudder-reward: a VLM success classifier that judges from camera frames whether an
//! instruction has been carried out (RoboFuME, REFERENCE §2): the reward and the task switch of
//! reset-free RL. It reads robot's observation types and knows no simulator. See README.md.

pub mod calibration;
pub mod dataset;
pub mod metrics;
