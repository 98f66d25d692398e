//! The Intelligent Driver Model along lane paths: the longitudinal law, lane-path building over
//! the lane graph and leader search along a path (the IDM planner's); the reactive (CLS-R)
//! agents that follow their lanes with the same law are [`super::reactive`].

use super::geometry::{wrap_angle, OrientedBox, Polyline, P2};
use super::map::{Lane, LaneId, Map};

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct IdmParams {
    /// Minimum gap to the leader s0 (m).
    pub min_gap: f64,
    /// Desired time headway T (s).
    pub headway: f64,
    /// Maximum acceleration a (m/s^2).
    pub accel_max: f64,
    /// Comfortable/maximum deceleration b (m/s^2, positive).
    pub decel_max: f64,
    pub exponent: f64,
}

impl IdmParams {
    /// nuPlan's reactive IDM agents.
    pub const AGENTS: IdmParams = IdmParams {
        min_gap: 1.0,
        headway: 1.5,
        accel_max: 1.0,
        decel_max: 2.0,
        exponent: 4.0,
    };
    /// nuPlan's IDM planner baseline.
    pub const PLANNER: IdmParams = IdmParams {
        min_gap: 1.0,
        headway: 1.5,
        accel_max: 1.0,
        decel_max: 3.0,
        exponent: 4.0,
    };

    /// IDM acceleration at speed `v` toward `v0`, with an optional leader (bumper gap, leader
    /// speed along the path), clipped to [-decel_max, accel_max] as nuPlan's policy does. As
    /// in the devkit's `IDMPolicy`, s* is not clamped (a faster leader lowers it below s0) and
    /// the gap is floored at the minimum gap s0, not at zero.
    pub fn accel(&self, v: f64, v0: f64, lead: Option<(f64, f64)>) -> f64 {
        let v0 = v0.max(1e-3);
        let free = 1.0 - (v.max(0.0) / v0).powf(self.exponent);
        let inter = match lead {
            None => 0.0,
            Some((gap, vl)) => {
                let s_star = self.desired_gap(v, vl);
                (s_star / gap.max(self.min_gap)).powi(2)
            }
        };
        (self.accel_max * (free - inter)).clamp(-self.decel_max, self.accel_max)
    }

    /// The desired gap s* = s0 + v T + v (v - v_lead) / (2 sqrt(a b)).
    pub fn desired_gap(&self, v: f64, v_lead: f64) -> f64 {
        self.min_gap
            + v * self.headway
            + v * (v - v_lead) / (2.0 * (self.accel_max * self.decel_max).sqrt())
    }
}

/// A path along consecutive lanes: the concatenated baselines and where each lane lies on it.
#[derive(Debug, Clone)]
pub struct LanePath {
    pub line: Polyline,
    /// (lane, start s, end s).
    pub lanes: Vec<(LaneId, f64, f64)>,
}

impl LanePath {
    pub fn from_lanes(map: &Map, ids: &[LaneId]) -> Option<LanePath> {
        let mut pts: Vec<P2> = Vec::new();
        let mut spans = Vec::new();
        let mut s = 0.0;
        for id in ids {
            let l = map.lane(*id)?;
            let start = s;
            for p in &l.centerline.points {
                if let Some(q) = pts.last() {
                    s += q.dist(*p);
                }
                pts.push(*p);
            }
            spans.push((*id, start, s));
        }
        if pts.len() < 2 {
            return None;
        }
        Some(LanePath {
            line: Polyline::new(pts),
            lanes: spans,
        })
    }

    pub fn lane_at(&self, s: f64) -> Option<LaneId> {
        self.lanes
            .iter()
            .find(|(_, a, b)| s >= *a && s <= *b)
            .map(|x| x.0)
    }
}

/// Lanes from `start` following successors for at least `min_length` metres, choosing at each
/// fork the successor `prefer` ranks lowest (ties: the first listed).
pub fn follow_lanes(
    map: &Map,
    start: &Lane,
    min_length: f64,
    mut prefer: impl FnMut(&Lane) -> f64,
) -> Vec<LaneId> {
    let mut ids = vec![start.id];
    let mut len = start.centerline.length();
    let mut cur = start;
    while len < min_length && ids.len() < 64 {
        let next = cur
            .successors
            .iter()
            .filter_map(|id| map.lane(*id))
            .filter(|l| !ids.contains(&l.id))
            .min_by(|a, b| prefer(a).total_cmp(&prefer(b)));
        match next {
            Some(n) => {
                len += n.centerline.length();
                ids.push(n.id);
                cur = n;
            }
            None => break,
        }
    }
    ids
}

/// An object as the leader search sees it.
#[derive(Debug, Clone, Copy)]
pub struct Obstacle {
    pub bbox: OrientedBox,
    pub speed: f64,
}

/// The nearest obstacle ahead in the corridor of half-width `half_width` around `path`, as
/// (gap from `s_front`, speed along the path). Red lights on connectors not yet entered are
/// static obstacles at the connector's start.
pub fn find_leader(
    path: &LanePath,
    s_front: f64,
    half_width: f64,
    lookahead: f64,
    obstacles: impl Iterator<Item = Obstacle>,
    red_connectors: &[LaneId],
) -> Option<(f64, f64)> {
    let mut best: Option<(f64, f64)> = None;
    let mut consider = |gap: f64, v: f64| {
        if gap <= lookahead && best.is_none_or(|b| gap < b.0) {
            best = Some((gap, v));
        }
    };
    for o in obstacles {
        let c = o.bbox.center;
        let pr = path.line.project(c);
        if pr.s + o.bbox.radius() < s_front || pr.s - o.bbox.radius() > s_front + lookahead {
            continue;
        }
        let d = wrap_angle(o.bbox.heading - pr.heading);
        let along = 0.5 * (o.bbox.length * d.cos().abs() + o.bbox.width * d.sin().abs());
        let across = 0.5 * (o.bbox.length * d.sin().abs() + o.bbox.width * d.cos().abs());
        // Beyond the path ends the projection clamps; the distance then carries the offset.
        let lateral = if pr.s <= 0.0 || pr.s >= path.line.length() {
            pr.distance
        } else {
            pr.lateral.abs()
        };
        if lateral - across > half_width {
            continue;
        }
        let gap = pr.s - along - s_front;
        if gap < -along {
            // Its centre is behind our front: it is beside or behind us, not a leader.
            continue;
        }
        consider(gap.max(0.0), o.speed * d.cos());
    }
    for (id, a, _) in &path.lanes {
        if red_connectors.contains(id) && *a >= s_front - 0.5 {
            consider((*a - s_front).max(0.0), 0.0);
        }
    }
    best
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn idm_law() {
        let p = IdmParams::AGENTS;
        // Free road at rest: full acceleration; at v0: zero.
        assert!((p.accel(0.0, 10.0, None) - 1.0).abs() < 1e-12);
        assert!(p.accel(10.0, 10.0, None).abs() < 1e-12);
        // Leader at the equilibrium gap s0 + vT with equal speeds: free term only.
        let a = p.accel(5.0, 10.0, Some((1.0 + 5.0 * 1.5, 5.0)));
        assert!((a - (1.0 - (0.5f64).powi(4) - 1.0)).abs() < 1e-12);
        // Very close: clipped at the maximum deceleration.
        assert_eq!(p.accel(10.0, 10.0, Some((0.1, 0.0))), -2.0);
        // The devkit's worked case: v = v0 = 10 m/s, the end of a path 35 m ahead of a 5 m car
        // (a stopped leader at a 32.5 m gap): s* = 1 + 15 + 100 / (2 sqrt 2) = 51.36 m, so
        // 1 - 1 - (51.36 / 32.5)^2 = -2.50, clipped to -2.
        let s_star = p.desired_gap(10.0, 0.0);
        assert!((s_star - (16.0 + 100.0 / (2.0 * 2f64.sqrt()))).abs() < 1e-12);
        assert_eq!(p.accel(10.0, 10.0, Some((32.5, 0.0))), -2.0);
        // s* is not clamped: a leader much faster than us makes it negative.
        assert!(p.desired_gap(2.0, 20.0) < 0.0);
        // The gap is floored at s0 = 1 m: a 0.2 m gap weighs as 1 m would.
        let q = IdmParams {
            decel_max: 100.0,
            ..p
        };
        assert_eq!(
            q.accel(1.0, 10.0, Some((0.2, 1.0))),
            q.accel(1.0, 10.0, Some((1.0, 1.0)))
        );
    }
}
