//! What a planner returns: rear-axle states at absolute simulation times, which the tracker
//! follows by interpolation.

use super::geom::wrap_angle;
use serde::{Deserialize, Serialize};

/// One planned rear-axle state at absolute simulation time `t` (s).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize, Default)]
pub struct TrajectoryPoint {
    pub t: f64,
    pub x: f64,
    pub y: f64,
    pub heading: f64,
    pub speed: f64,
}

/// A planned trajectory, time-ordered.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
pub struct Trajectory {
    pub points: Vec<TrajectoryPoint>,
}

impl Trajectory {
    pub fn end_time(&self) -> f64 {
        self.points.last().map(|p| p.t).unwrap_or(f64::NEG_INFINITY)
    }

    /// Linear interpolation in time (heading along the shorter arc), clamped to the ends.
    pub fn state_at(&self, t: f64) -> TrajectoryPoint {
        let pts = &self.points;
        match pts.len() {
            0 => TrajectoryPoint::default(),
            1 => pts[0],
            n => {
                if t <= pts[0].t {
                    return pts[0];
                }
                if t >= pts[n - 1].t {
                    return pts[n - 1];
                }
                let i = pts.partition_point(|p| p.t <= t).clamp(1, n - 1);
                let (a, b) = (pts[i - 1], pts[i]);
                let span = (b.t - a.t).max(1e-12);
                let u = (t - a.t) / span;
                TrajectoryPoint {
                    t,
                    x: a.x + u * (b.x - a.x),
                    y: a.y + u * (b.y - a.y),
                    heading: wrap_angle(a.heading + u * wrap_angle(b.heading - a.heading)),
                    speed: a.speed + u * (b.speed - a.speed),
                }
            }
        }
    }

    /// Usable by the tracker: at least one point, finite, strictly increasing times.
    pub fn is_valid(&self) -> bool {
        !self.points.is_empty()
            && self.points.iter().all(|p| {
                p.t.is_finite()
                    && p.x.is_finite()
                    && p.y.is_finite()
                    && p.heading.is_finite()
                    && p.speed.is_finite()
            })
            && self.points.windows(2).all(|w| w[1].t > w[0].t)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pt(t: f64, x: f64, heading: f64) -> TrajectoryPoint {
        TrajectoryPoint {
            t,
            x,
            y: 0.0,
            heading,
            speed: x,
        }
    }

    #[test]
    fn interpolates_and_validates() {
        let tr = Trajectory {
            points: vec![pt(0.0, 0.0, 3.0), pt(1.0, 2.0, -3.0)],
        };
        let mid = tr.state_at(0.5);
        assert!((mid.x - 1.0).abs() < 1e-12 && (mid.speed - 1.0).abs() < 1e-12);
        // Across +-pi the heading takes the short way round, not through zero.
        assert!(mid.heading.abs() > 3.0, "{}", mid.heading);
        assert_eq!(tr.state_at(-1.0), tr.points[0]);
        assert_eq!(tr.state_at(9.0), tr.points[1]);
        assert_eq!(tr.end_time(), 1.0);
        assert!(tr.is_valid());
        let back = Trajectory {
            points: vec![pt(1.0, 0.0, 0.0), pt(1.0, 1.0, 0.0)],
        };
        assert!(!back.is_valid() && !Trajectory::default().is_valid());
    }
}
