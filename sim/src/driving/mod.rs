//! Driving simulator with nuPlan's closed-loop score (CLS-NR / CLS-R) and log format.
//!
//! - [`map`], [`scenario`]: the world model; [`generator`] builds seeded scenarios of nuPlan's
//!   types, [`nuplan_db`] loads nuPlan-schema SQLite logs with a map file of ours beside them.
//! - [`vehicle`] (kinematic bicycle with actuator lags) driven by [`lqr`] (nuPlan's two-stage
//!   tracker); [`idm`] is the IDM law the IDM planner follows, [`reactive`] the CLS-R agents
//!   that follow it as the devkit's `IDMAgents` do (shapes in [`occupancy`]).
//! - [`simulation`] runs one scenario with a planner; [`metrics`] scores it exactly as
//!   nuplan-devkit does; [`campaign`] runs many and aggregates.
//! - The planner interface (`Planner`, `Observation`, `Trajectory`, the ego and object states)
//!   is `rudder_robot::driving`, so planners need not depend on sim; [`planners`] holds the
//!   three baselines and [`map_view`] lets them (and any other) read [`map::Map`].

pub mod campaign;
pub mod generator;
pub mod geometry;
pub mod idm;
pub mod lqr;
pub mod map;
pub mod map_view;
pub mod metrics;
pub mod nuplan_db;
pub mod occupancy;
pub mod planners;
pub mod reactive;
pub mod savgol;
pub mod scenario;
pub mod simulation;
pub mod vehicle;

pub use campaign::{
    run_campaign, run_campaign_with, CampaignReport, Mode, PlannerFactory, PlannerKind,
};

use thiserror::Error;

/// Everything that can go wrong with driving inputs; every variant says what and where.
#[derive(Debug, Error)]
pub enum DrivingError {
    #[error("map: {0}")]
    Map(String),
    #[error("scenario `{token}`: {reason}")]
    Scenario { token: String, reason: String },
    #[error("nuPlan DB {path}: {reason}")]
    Db { path: String, reason: String },
    #[error("nuPlan DB {path}: missing table `{table}`")]
    MissingTable { path: String, table: String },
    #[error("nuPlan DB {path}: {table}.{column} = {token} points at no row of {target}")]
    DanglingToken {
        path: String,
        table: String,
        column: String,
        token: String,
        target: String,
    },
    #[error("map `{map}` does not cover scenario `{token}`: {reason}")]
    MapCoverage {
        map: String,
        token: String,
        reason: String,
    },
    #[error("{0}")]
    Invalid(String),
}
