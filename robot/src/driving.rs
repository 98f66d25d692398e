//! The driving side of the embodiment interface: what a planner sees and what it returns.
//!
//! A planner ([`Planner`]) is set up once per scenario ([`PlannerSetup`]: the map, the route)
//! and then, every simulation step, turns an [`Observation`] (ego state and history, the tracked
//! objects, traffic-light states, the map, the route) into a [`Trajectory`] of rear-axle states.
//! The map reaches the planner through [`MapView`], a trait the simulator's map implements, so a
//! planner written against this module (a learned one in `policy/`) never depends on `sim/`.
//! Everything here is plain data in the map frame (metres, radians, seconds); [`Pose::to_local`]
//! moves points into the ego frame.

mod async_planner;
mod geom;
mod map_view;
mod planner;
mod state;
mod trajectory;

pub use async_planner::{AsyncPlanner, PlanTimings};
pub use geom::{wrap_angle, Pose, P2};
pub use map_view::{LaneId, LaneKind, LaneView, LightStatus, MapView};
pub use planner::{Observation, Planner, PlannerSetup};
pub use state::{AgentObs, AgentState, Category, EgoPose, EgoState};
pub use trajectory::{Trajectory, TrajectoryPoint};
