//! Planar points and poses in the map frame, and angle wrapping: the vocabulary every other
//! driving type is written in.

use serde::{Deserialize, Serialize};

/// A point in the map frame (metres).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize, Default)]
pub struct P2 {
    pub x: f64,
    pub y: f64,
}

// Plain methods rather than operator traits keep the arithmetic explicit in hot loops.
#[allow(clippy::should_implement_trait)]
impl P2 {
    pub const fn new(x: f64, y: f64) -> Self {
        Self { x, y }
    }
    pub fn sub(self, o: P2) -> P2 {
        P2::new(self.x - o.x, self.y - o.y)
    }
    pub fn add(self, o: P2) -> P2 {
        P2::new(self.x + o.x, self.y + o.y)
    }
    pub fn scale(self, k: f64) -> P2 {
        P2::new(self.x * k, self.y * k)
    }
    pub fn dot(self, o: P2) -> f64 {
        self.x * o.x + self.y * o.y
    }
    pub fn cross(self, o: P2) -> f64 {
        self.x * o.y - self.y * o.x
    }
    pub fn norm(self) -> f64 {
        self.x.hypot(self.y)
    }
    pub fn dist(self, o: P2) -> f64 {
        self.sub(o).norm()
    }
    pub fn is_finite(self) -> bool {
        self.x.is_finite() && self.y.is_finite()
    }
}

/// Wraps an angle to (-pi, pi].
pub fn wrap_angle(a: f64) -> f64 {
    let two_pi = std::f64::consts::TAU;
    let mut r = a.rem_euclid(two_pi);
    if r > std::f64::consts::PI {
        r -= two_pi;
    }
    r
}

/// A pose in the plane.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize, Default)]
pub struct Pose {
    pub x: f64,
    pub y: f64,
    pub heading: f64,
}

impl Pose {
    pub fn p(&self) -> P2 {
        P2::new(self.x, self.y)
    }

    /// `q` (map frame) in this pose's frame: x ahead, y to the left. Learned planners read the
    /// scene in the ego frame, so that is the one transform every such planner needs.
    pub fn to_local(&self, q: P2) -> P2 {
        let (s, c) = self.heading.sin_cos();
        let d = q.sub(self.p());
        P2::new(c * d.x + s * d.y, -s * d.x + c * d.y)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wrap_and_local_frame() {
        assert_eq!(wrap_angle(std::f64::consts::PI), std::f64::consts::PI);
        assert!((wrap_angle(-std::f64::consts::PI) - std::f64::consts::PI).abs() < 1e-12);
        assert!((wrap_angle(7.0) - (7.0 - std::f64::consts::TAU)).abs() < 1e-12);
        let ego = Pose {
            x: 1.0,
            y: 2.0,
            heading: std::f64::consts::FRAC_PI_2,
        };
        // One metre north of a north-facing ego is one metre ahead; east is to its right.
        let ahead = ego.to_local(P2::new(1.0, 3.0));
        assert!((ahead.x - 1.0).abs() < 1e-12 && ahead.y.abs() < 1e-12);
        let right = ego.to_local(P2::new(2.0, 2.0));
        assert!(right.x.abs() < 1e-12 && (right.y + 1.0).abs() < 1e-12);
    }
}
