//! The Intelligent Driver Model along lane paths: the longitudinal law, lane-path building over
//! the lane graph, leader search along a path, and the reactive (CLS-R) agents that follow
//! their lanes with it.

use super::geometry::{wrap_angle, OrientedBox, Polyline, P2};
use super::map::{Lane, LaneId, LaneKind, LightStatus, Map};
use super::scenario::{AgentBox, AgentObs, AgentState, Category, Scenario};

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
    /// speed along the path), clipped to [-decel_max, accel_max] as nuPlan's policy does.
    pub fn accel(&self, v: f64, v0: f64, lead: Option<(f64, f64)>) -> f64 {
        let v0 = v0.max(1e-3);
        let free = 1.0 - (v.max(0.0) / v0).powf(self.exponent);
        let inter = match lead {
            None => 0.0,
            Some((gap, vl)) => {
                let dv = v - vl;
                let s_star = self.min_gap
                    + (v * self.headway
                        + v * dv / (2.0 * (self.accel_max * self.decel_max).sqrt()))
                    .max(0.0);
                let gap = gap.max(1e-2);
                (s_star / gap).powi(2)
            }
        };
        (self.accel_max * (free - inter)).clamp(-self.decel_max, self.accel_max)
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

/// Reactive agents: every vehicle observed at the start on a lane follows its lane path with
/// IDM; everything else replays its log (nuPlan's CLS-R makes vehicles only reactive).
pub struct ReactiveAgents {
    agents: Vec<IdmAgent>,
}

struct IdmAgent {
    track: usize,
    path: LanePath,
    s: f64,
    v: f64,
    v0: f64,
}

const AGENT_LOOKAHEAD: f64 = 60.0;

impl ReactiveAgents {
    pub fn new(scenario: &Scenario) -> ReactiveAgents {
        let map = &scenario.map;
        let mut agents = Vec::new();
        for (i, t) in scenario.tracks.iter().enumerate() {
            if t.category != Category::Vehicle {
                continue;
            }
            let Some(s0) = t.at(0) else { continue };
            let c = P2::new(s0.x, s0.y);
            let Some(lane) = map.best_lane_at(c, s0.heading) else {
                continue;
            };
            if wrap_angle(lane.centerline.project(c).heading - s0.heading).abs() > 1.0 {
                continue;
            }
            // Prefer the successor the logged track actually drove into.
            let end = t
                .states
                .iter()
                .rev()
                .flatten()
                .next()
                .copied()
                .unwrap_or(s0);
            let end_p = P2::new(end.x, end.y);
            let ids = follow_lanes(map, lane, 200.0, |l| l.centerline.project(end_p).distance);
            let Some(path) = LanePath::from_lanes(map, &ids) else {
                continue;
            };
            let s = path.line.project(c).s;
            let v0 = map.speed_limit_of(lane).unwrap_or(10.0);
            agents.push(IdmAgent {
                track: i,
                path,
                s,
                v: s0.speed(),
                v0,
            });
        }
        ReactiveAgents { agents }
    }

    /// The objects at `step`: reactive vehicles at their simulated states, the rest from the
    /// log. Reactive agents are advanced by [`Self::step`].
    pub fn observe(&self, scenario: &Scenario, step: usize) -> Vec<AgentObs> {
        let mut out = Vec::new();
        for (i, t) in scenario.tracks.iter().enumerate() {
            if let Some(a) = self.agents.iter().find(|a| a.track == i) {
                let p = a.path.line.pose_at(a.s);
                out.push(AgentObs {
                    id: t.id,
                    category: t.category,
                    state: AgentState {
                        x: p.x,
                        y: p.y,
                        heading: p.heading,
                        vx: a.v * p.heading.cos(),
                        vy: a.v * p.heading.sin(),
                    },
                    length: t.length,
                    width: t.width,
                });
            } else if let Some(s) = t.at(step) {
                out.push(AgentObs {
                    id: t.id,
                    category: t.category,
                    state: s,
                    length: t.length,
                    width: t.width,
                });
            }
        }
        out
    }

    /// Advances every reactive agent by `dt`, with the ego box and the current objects as
    /// potential leaders and red-light connectors as stops.
    pub fn step(
        &mut self,
        scenario: &Scenario,
        current: &[AgentObs],
        ego: OrientedBox,
        ego_speed: f64,
        lights: &[(LaneId, LightStatus)],
        dt: f64,
    ) {
        let red: Vec<LaneId> = lights
            .iter()
            .filter(|(_, s)| *s == LightStatus::Red)
            .map(|x| x.0)
            .collect();
        let mut updates = Vec::with_capacity(self.agents.len());
        for a in &self.agents {
            let t = &scenario.tracks[a.track];
            let others = current
                .iter()
                .filter(|o| o.id != t.id)
                .map(|o| Obstacle {
                    bbox: o.bbox(),
                    speed: o.speed(),
                })
                .chain(std::iter::once(Obstacle {
                    bbox: ego,
                    speed: ego_speed,
                }));
            let red_here: Vec<LaneId> = red
                .iter()
                .copied()
                .filter(|id| {
                    scenario
                        .map
                        .lane(*id)
                        .is_some_and(|l| l.kind == LaneKind::Connector)
                })
                .collect();
            let lead = find_leader(
                &a.path,
                a.s + t.length / 2.0,
                t.width / 2.0,
                AGENT_LOOKAHEAD,
                others,
                &red_here,
            );
            let acc = IdmParams::AGENTS.accel(a.v, a.v0, lead);
            let v = (a.v + acc * dt).max(0.0);
            updates.push((a.s + v * dt, v));
        }
        for (a, (s, v)) in self.agents.iter_mut().zip(updates) {
            a.s = s;
            a.v = v;
        }
    }
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
    }
}
