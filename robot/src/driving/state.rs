//! The states a planner observes: the ego (rear axle, plus the rates the comfort metrics
//! need), its logged poses, and the tracked objects around it. Plain data; the vehicle model
//! that advances the ego and the footprints built from body dimensions live with the simulator.

use super::geom::P2;
use crate::types::VehicleState;
use serde::{Deserialize, Serialize};

/// Full ego state at one simulation sample.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize, Default)]
pub struct EgoState {
    pub time_s: f64,
    /// Rear-axle pose, longitudinal speed and acceleration, tyre angle.
    pub vehicle: VehicleState,
    pub steering_rate: f64,
    pub yaw_rate: f64,
    pub yaw_acceleration: f64,
}

impl EgoState {
    pub fn rear_axle(&self) -> P2 {
        P2::new(self.vehicle.x, self.vehicle.y)
    }

    /// An ego at a logged pose, steering angle inferred as zero (the log has no tyre angle).
    pub fn from_pose(
        time_s: f64,
        x: f64,
        y: f64,
        heading: f64,
        speed: f64,
        acceleration: f64,
    ) -> Self {
        EgoState {
            time_s,
            vehicle: VehicleState {
                x,
                y,
                heading,
                speed,
                acceleration,
                steering_angle: 0.0,
            },
            ..Default::default()
        }
    }
}

/// One sample of the logged ego (rear axle).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize, Default)]
pub struct EgoPose {
    pub x: f64,
    pub y: f64,
    pub heading: f64,
    pub speed: f64,
    pub acceleration: f64,
}

/// nuPlan's tracked-object categories, grouped as the collision metric groups them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, PartialOrd, Ord)]
#[serde(rename_all = "snake_case")]
pub enum Category {
    Vehicle,
    Pedestrian,
    Bicycle,
    TrafficCone,
    Barrier,
    CzoneSign,
    GenericObject,
}

impl Category {
    /// nuPlan's `category.name` strings.
    pub fn parse(s: &str) -> Option<Category> {
        Some(match s {
            "vehicle" => Category::Vehicle,
            "pedestrian" => Category::Pedestrian,
            "bicycle" => Category::Bicycle,
            "traffic_cone" => Category::TrafficCone,
            "barrier" => Category::Barrier,
            "czone_sign" => Category::CzoneSign,
            "generic_object" => Category::GenericObject,
            _ => return None,
        })
    }
    pub fn as_str(self) -> &'static str {
        match self {
            Category::Vehicle => "vehicle",
            Category::Pedestrian => "pedestrian",
            Category::Bicycle => "bicycle",
            Category::TrafficCone => "traffic_cone",
            Category::Barrier => "barrier",
            Category::CzoneSign => "czone_sign",
            Category::GenericObject => "generic_object",
        }
    }
    /// Agents move; objects are static by definition (nuPlan's STOPPED_TRACK rule).
    pub fn is_agent(self) -> bool {
        matches!(
            self,
            Category::Vehicle | Category::Pedestrian | Category::Bicycle
        )
    }
}

/// One sample of a tracked object (box centre, map frame).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize, Default)]
pub struct AgentState {
    pub x: f64,
    pub y: f64,
    pub heading: f64,
    pub vx: f64,
    pub vy: f64,
}

impl AgentState {
    pub fn speed(&self) -> f64 {
        self.vx.hypot(self.vy)
    }
}

/// What the simulator, planners and metrics see of an object at one step: static objects
/// (cones, barriers) are here too, told apart by [`Category::is_agent`].
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct AgentObs {
    pub id: u64,
    pub category: Category,
    pub state: AgentState,
    pub length: f64,
    pub width: f64,
}

impl AgentObs {
    /// Speed along the object's heading (nuPlan's constant-velocity projection in TTC).
    pub fn speed(&self) -> f64 {
        self.state.speed()
    }
}
