//! The learned driving planner's side of policy/ (issue 27): the scene arrays it reads
//! ([`scene`]), the demonstration data sets it trains on ([`dataset`]), their scaling
//! ([`normalize`]), training on the shared trainer ([`train`]) and the planner itself behind
//! robot's `Planner` interface ([`planner`]). The samplers are the shared core's
//! (`rudder_tune::diffusion`).

pub mod augment;
pub mod dataset;
pub mod guidance;
pub mod normalize;
pub mod planner;
pub mod scene;
pub mod train;

pub use dataset::{DrivingDemoWriter, DrivingMeta, DrivingSample};
pub use normalize::PlannerNormalization;
pub use planner::{DiffusionPlanner, PlannerModel, SamplerKind, SamplingOptions};
pub use scene::{build_scene, future_target, EgoFrame, Scene, SceneConfig, SceneHistory};
pub use train::{PlannerData, PlannerTrainConfig, PlannerTrainer};
