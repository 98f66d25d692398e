//! The learned driving planner's side of policy/ (issue 27, in progress): the scene arrays it
//! reads ([`scene`]) and the demonstration data sets it trains on ([`dataset`]). The samplers
//! are the shared core's (`rudder_tune::diffusion`).

pub mod dataset;
pub mod scene;

pub use dataset::{DrivingDemoWriter, DrivingMeta, DrivingSample};
pub use scene::{build_scene, future_target, EgoFrame, Scene, SceneConfig, SceneHistory};
