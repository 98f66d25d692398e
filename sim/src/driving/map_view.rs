//! Sim's [`Map`] as a planner sees it: robot's [`MapView`], so planners written outside sim
//! (against `rudder_robot::driving` only) run in this simulator.

use super::geometry::P2;
use super::map::{Lane, Map};
use rudder_robot::driving::{LaneId, LaneView, MapView};

fn view(l: &Lane) -> LaneView<'_> {
    LaneView {
        id: l.id,
        kind: l.kind,
        roadblock: l.roadblock,
        centerline: &l.centerline.points,
        left: &l.left.points,
        right: &l.right.points,
        speed_limit: l.speed_limit,
        successors: &l.successors,
        predecessors: &l.predecessors,
    }
}

impl MapView for Map {
    fn lane_view(&self, id: LaneId) -> Option<LaneView<'_>> {
        self.lane(id).map(view)
    }
    fn lane_ids_at(&self, p: P2) -> Vec<LaneId> {
        self.lanes_at(p).map(|l| l.id).collect()
    }
    fn lane_ids_near(&self, p: P2, radius: f64) -> Vec<LaneId> {
        self.lanes_near(p, radius)
            .into_iter()
            .map(|l| l.id)
            .collect()
    }
    fn speed_limit(&self, id: LaneId) -> Option<f64> {
        self.lane(id).and_then(|l| self.speed_limit_of(l))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::driving::map::LaneKind;

    #[test]
    fn the_view_matches_the_map() {
        let m = crate::driving::map::tests::two_lanes();
        let v: &dyn MapView = &m;
        let c = v.lane_view(2).unwrap();
        assert_eq!(
            (c.kind, c.speed_limit, c.successors),
            (LaneKind::Connector, None, &[3][..])
        );
        // A connector's limit comes from its neighbours (nuPlan's rule).
        assert_eq!(v.speed_limit(2), Some(15.0));
        assert_eq!(v.lane_ids_at(P2::new(10.0, 1.0)), vec![1]);
        assert_eq!(v.lane_ids_near(P2::new(55.0, 0.0), 6.0), vec![1, 2, 3]);
        assert!(v.lane_ids_near(P2::new(55.0, 30.0), 5.0).is_empty());
        assert!(v.lane_view(99).is_none());
    }
}
