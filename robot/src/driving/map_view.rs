//! What a planner may read of the map: lanes and connectors (baselines, boundaries, speed
//! limits, topology) by id and by place, and the traffic-light vocabulary. The map itself (its
//! storage, index, drivable areas and signal schedules) belongs to whoever simulates or
//! perceives the scene; it implements [`MapView`].

use super::geom::P2;
use serde::{Deserialize, Serialize};

/// Lane or lane connector id (nuPlan uses integer ids for both, in one namespace).
pub type LaneId = u64;

/// nuPlan distinguishes lanes (on road segments) from connectors (through intersections);
/// several metrics treat them differently (speed limit on connectors, TTC in intersections).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum LaneKind {
    Lane,
    Connector,
}

/// A traffic light's state, as a planner observes it on the connector the light controls.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LightStatus {
    Green,
    Yellow,
    Red,
    Unknown,
}

impl LightStatus {
    /// Parses nuPlan's `traffic_light_status.status` strings.
    pub fn parse(s: &str) -> Option<LightStatus> {
        match s.to_ascii_lowercase().as_str() {
            "green" => Some(LightStatus::Green),
            "yellow" => Some(LightStatus::Yellow),
            "red" => Some(LightStatus::Red),
            "unknown" => Some(LightStatus::Unknown),
            _ => None,
        }
    }
    pub fn as_str(self) -> &'static str {
        match self {
            LightStatus::Green => "green",
            LightStatus::Yellow => "yellow",
            LightStatus::Red => "red",
            LightStatus::Unknown => "unknown",
        }
    }
}

/// One lane or connector as the map holds it, borrowed (map frame).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LaneView<'a> {
    pub id: LaneId,
    pub kind: LaneKind,
    /// Roadblock (for lanes) or roadblock connector (for connectors) the lane belongs to.
    pub roadblock: u64,
    pub centerline: &'a [P2],
    pub left: &'a [P2],
    pub right: &'a [P2],
    /// The lane's own limit (m/s); see [`MapView::speed_limit`] for the one that applies.
    pub speed_limit: Option<f64>,
    pub successors: &'a [LaneId],
    pub predecessors: &'a [LaneId],
}

/// The planner-facing map. Object safe, so a planner can take `&dyn MapView`; the queries are
/// the ones a planner needs to build its scene (lanes near the ego, their polylines and limits,
/// the route's lanes by id), not the simulator's metric queries.
pub trait MapView {
    /// The lane or connector `id`, if the map has it.
    fn lane_view(&self, id: LaneId) -> Option<LaneView<'_>>;
    /// Lanes and connectors whose area contains `p`.
    fn lane_ids_at(&self, p: P2) -> Vec<LaneId>;
    /// Lanes and connectors that come within `radius` of `p` (by their bounding boxes, so a
    /// superset: callers crop the polylines themselves).
    fn lane_ids_near(&self, p: P2, radius: f64) -> Vec<LaneId>;
    /// The speed limit that applies on `id` (m/s): on a connector, nuPlan derives it from the
    /// lanes around it, which [`LaneView::speed_limit`] alone does not say.
    fn speed_limit(&self, id: LaneId) -> Option<f64>;
}
