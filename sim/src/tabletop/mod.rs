//! Tabletop manipulation simulator (LIBERO-style). See sim/README.md.
//!
//! A UR5 (robot's kinematics, limits and safety filter) with a parallel gripper over a table,
//! an object library with containers and articulated fixtures, a declarative task format,
//! three embedded suites with scripted experts, a software rasterizer for the agent-view and
//! wrist cameras, a demo writer (safetensors shards + meta.json), the simulator as robot's
//! `Embodiment` and evaluation campaigns over it.

pub mod campaign;
pub mod demos;
pub mod embodiment;
pub mod env;
pub mod expert;
pub mod geom;
pub mod labelled;
pub mod physics;
pub mod render;
pub mod reset_free;
pub mod scene;
pub mod shadow;
pub mod suites;
pub mod tasks;

pub use campaign::{
    run_campaign, CampaignError, CampaignOptions, CampaignResult, EpisodeOutcome,
    EvaluatedTabletop, Instructions, TaskOutcome,
};
pub use demos::{write_demos, write_demos_with, DemoOptions, DemoSummary, DEMO_FORMAT_VERSION};
pub use embodiment::{command_joints, loop_observation, TabletopSim};
pub use env::{
    libero_state, width_of_closure, CameraConfig, EnvStats, StepInfo, TabletopEnv, TabletopObs,
    CONTROL_HZ,
};
pub use expert::{Expert, Manner, Perturbation};
pub use labelled::{expert_episode, FrameSampling, LabelledEpisode, LabelledFrame};
pub use shadow::ShadowExpert;
pub use suites::{
    benchmark, load_backward, load_suite, run_suite, run_tasks, Suite, SuiteError, SuiteReport,
    TaskReport, Throughput,
};
pub use tasks::{Predicate, Task, TaskError};
