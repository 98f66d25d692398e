//! Planar geometry the map, the simulator and the metrics share: points, polylines with arc-length
//! projection, polygons and oriented boxes. Kept free of map semantics so each metric reads as
//! its nuPlan definition rather than as geometry plumbing.

use serde::{Deserialize, Serialize};

// Points, poses and angle wrapping are the planner interface's vocabulary (robot crate).
pub use rudder_robot::driving::{wrap_angle, Pose, P2};

/// Axis-aligned bounds, used by the grid index and as a cheap prefilter.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Aabb {
    pub min: P2,
    pub max: P2,
}

impl Aabb {
    pub fn of(points: &[P2]) -> Aabb {
        let mut min = P2::new(f64::INFINITY, f64::INFINITY);
        let mut max = P2::new(f64::NEG_INFINITY, f64::NEG_INFINITY);
        for p in points {
            min.x = min.x.min(p.x);
            min.y = min.y.min(p.y);
            max.x = max.x.max(p.x);
            max.y = max.y.max(p.y);
        }
        Aabb { min, max }
    }
    pub fn contains(&self, p: P2, margin: f64) -> bool {
        p.x >= self.min.x - margin
            && p.x <= self.max.x + margin
            && p.y >= self.min.y - margin
            && p.y <= self.max.y + margin
    }
}

/// Where a point falls relative to a polyline.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Projection {
    /// Arc length of the closest point.
    pub s: f64,
    /// Signed lateral offset, positive to the left of the direction of travel.
    pub lateral: f64,
    /// Distance to the closest point.
    pub distance: f64,
    /// Tangent heading at the closest point.
    pub heading: f64,
}

/// An open polyline with cumulative arc lengths, the representation of every lane baseline and
/// every planned path.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Polyline {
    pub points: Vec<P2>,
    #[serde(skip)]
    cum: Vec<f64>,
}

impl Polyline {
    /// Builds a polyline, dropping consecutive duplicate points (they have no tangent).
    pub fn new(points: Vec<P2>) -> Polyline {
        let mut pts: Vec<P2> = Vec::with_capacity(points.len());
        for p in points {
            if pts.last().is_none_or(|q: &P2| q.dist(p) > 1e-9) {
                pts.push(p);
            }
        }
        let mut pl = Polyline {
            points: pts,
            cum: Vec::new(),
        };
        pl.rebuild();
        pl
    }

    /// Recomputes arc lengths (after deserialisation, which skips them).
    pub fn rebuild(&mut self) {
        self.cum.clear();
        let mut acc = 0.0;
        for (i, p) in self.points.iter().enumerate() {
            if i > 0 {
                acc += p.dist(self.points[i - 1]);
            }
            self.cum.push(acc);
        }
    }

    pub fn length(&self) -> f64 {
        self.cum.last().copied().unwrap_or(0.0)
    }

    /// Closest point on the polyline (clamped to its ends).
    pub fn project(&self, p: P2) -> Projection {
        let n = self.points.len();
        if n == 0 {
            return Projection {
                s: 0.0,
                lateral: 0.0,
                distance: f64::INFINITY,
                heading: 0.0,
            };
        }
        if n == 1 {
            return Projection {
                s: 0.0,
                lateral: 0.0,
                distance: p.dist(self.points[0]),
                heading: 0.0,
            };
        }
        let mut best = (f64::INFINITY, 0usize, 0.0f64);
        for i in 0..n - 1 {
            let a = self.points[i];
            let b = self.points[i + 1];
            let ab = b.sub(a);
            let l2 = ab.dot(ab);
            let t = if l2 > 0.0 {
                (p.sub(a).dot(ab) / l2).clamp(0.0, 1.0)
            } else {
                0.0
            };
            let d = p.dist(a.add(ab.scale(t)));
            if d < best.0 {
                best = (d, i, t);
            }
        }
        let (d, i, t) = best;
        let a = self.points[i];
        let ab = self.points[i + 1].sub(a);
        let seg = ab.norm();
        let lateral = if seg > 0.0 {
            ab.cross(p.sub(a)) / seg
        } else {
            0.0
        };
        Projection {
            s: self.cum[i] + t * seg,
            lateral,
            distance: d,
            heading: ab.y.atan2(ab.x),
        }
    }

    /// The pose at arc length `s`; beyond either end the polyline is extended straight, so that
    /// a vehicle driving off the end of its path keeps a defined pose.
    pub fn pose_at(&self, s: f64) -> Pose {
        let n = self.points.len();
        if n < 2 {
            let p = self.points.first().copied().unwrap_or_default();
            return Pose {
                x: p.x,
                y: p.y,
                heading: 0.0,
            };
        }
        let i = match self.cum.binary_search_by(|c| c.total_cmp(&s)) {
            Ok(i) => i.min(n - 2),
            Err(i) => i.saturating_sub(1).min(n - 2),
        };
        let a = self.points[i];
        let b = self.points[i + 1];
        let seg = (self.cum[i + 1] - self.cum[i]).max(1e-12);
        let t = (s - self.cum[i]) / seg;
        let h = (b.y - a.y).atan2(b.x - a.x);
        let p = a.add(b.sub(a).scale(t));
        Pose {
            x: p.x,
            y: p.y,
            heading: h,
        }
    }

    /// Heading at `s`, averaged over the two neighbouring segments near vertices so that a
    /// path follower does not see a step change.
    pub fn heading_at(&self, s: f64) -> f64 {
        self.pose_at(s).heading
    }
}

/// Unsigned angle (rad, 0..pi) between `heading` and the direction from `from` to `to`:
/// nuPlan's get_agent_relative_angle, whose ahead/behind tests (< 30 deg, > 150 deg) decide
/// which tracks TTC considers and which collisions are rear-end. `None` when the points
/// coincide, where nuPlan's normalised vector is NaN and both tests come out false.
pub fn relative_angle(from: P2, heading: f64, to: P2) -> Option<f64> {
    let d = to.sub(from);
    if d.x == 0.0 && d.y == 0.0 {
        return None;
    }
    Some(wrap_angle(d.y.atan2(d.x) - heading).abs())
}

/// Whether `p` is inside the simple polygon `poly` (even-odd rule; boundary counts as inside
/// only up to floating-point luck, which the 0.3 m tolerances of the metrics absorb).
pub fn point_in_polygon(poly: &[P2], p: P2) -> bool {
    let n = poly.len();
    if n < 3 {
        return false;
    }
    let mut inside = false;
    let mut j = n - 1;
    for i in 0..n {
        let a = poly[i];
        let b = poly[j];
        if (a.y > p.y) != (b.y > p.y) {
            let x = a.x + (p.y - a.y) * (b.x - a.x) / (b.y - a.y);
            if p.x < x {
                inside = !inside;
            }
        }
        j = i;
    }
    inside
}

/// Distance from `p` to segment `ab`.
pub fn point_segment_distance(p: P2, a: P2, b: P2) -> f64 {
    let ab = b.sub(a);
    let l2 = ab.dot(ab);
    let t = if l2 > 0.0 {
        (p.sub(a).dot(ab) / l2).clamp(0.0, 1.0)
    } else {
        0.0
    };
    p.dist(a.add(ab.scale(t)))
}

/// Distance from `p` to a polygon (0 inside).
pub fn point_polygon_distance(poly: &[P2], p: P2) -> f64 {
    if point_in_polygon(poly, p) {
        return 0.0;
    }
    let n = poly.len();
    let mut d = f64::INFINITY;
    for i in 0..n {
        d = d.min(point_segment_distance(p, poly[i], poly[(i + 1) % n]));
    }
    d
}

/// Whether segments `ab` and `cd` intersect (touching counts).
pub fn segments_intersect(a: P2, b: P2, c: P2, d: P2) -> bool {
    let o = |p: P2, q: P2, r: P2| q.sub(p).cross(r.sub(p));
    let d1 = o(c, d, a);
    let d2 = o(c, d, b);
    let d3 = o(a, b, c);
    let d4 = o(a, b, d);
    if ((d1 > 0.0 && d2 < 0.0) || (d1 < 0.0 && d2 > 0.0))
        && ((d3 > 0.0 && d4 < 0.0) || (d3 < 0.0 && d4 > 0.0))
    {
        return true;
    }
    let on = |p: P2, q: P2, r: P2| {
        o(p, q, r).abs() < 1e-12
            && r.x >= p.x.min(q.x) - 1e-12
            && r.x <= p.x.max(q.x) + 1e-12
            && r.y >= p.y.min(q.y) - 1e-12
            && r.y <= p.y.max(q.y) + 1e-12
    };
    on(c, d, a) || on(c, d, b) || on(a, b, c) || on(a, b, d)
}

/// An oriented rectangle: the footprint of the ego, of an agent or of an object.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct OrientedBox {
    pub center: P2,
    pub heading: f64,
    pub length: f64,
    pub width: f64,
}

impl OrientedBox {
    pub fn new(center: P2, heading: f64, length: f64, width: f64) -> Self {
        Self {
            center,
            heading,
            length,
            width,
        }
    }

    /// Corners in the order front-left, front-right, rear-right, rear-left.
    pub fn corners(&self) -> [P2; 4] {
        let (s, c) = self.heading.sin_cos();
        let f = P2::new(c, s).scale(self.length / 2.0);
        let l = P2::new(-s, c).scale(self.width / 2.0);
        let o = self.center;
        [
            o.add(f).add(l),
            o.add(f).sub(l),
            o.sub(f).sub(l),
            o.sub(f).add(l),
        ]
    }

    /// Radius of the circumscribed circle, for the centre-distance prefilter.
    pub fn radius(&self) -> f64 {
        0.5 * self.length.hypot(self.width)
    }

    /// Moves the box `d` metres along its heading.
    pub fn advanced(&self, d: f64) -> OrientedBox {
        let (s, c) = self.heading.sin_cos();
        OrientedBox {
            center: self.center.add(P2::new(c, s).scale(d)),
            ..*self
        }
    }

    /// The box stretched forward by `d` metres (its rear edge stays put): the region a moving
    /// object sweeps, used as TTC prefilter.
    pub fn elongated(&self, d: f64) -> OrientedBox {
        let d = d.max(0.0);
        let mut b = self.advanced(d / 2.0);
        b.length += d;
        b
    }

    /// Separating-axis test: rectangles intersect (touching counts) iff no edge normal of
    /// either separates their projections.
    pub fn intersects(&self, other: &OrientedBox) -> bool {
        let r = self.radius() + other.radius();
        if self.center.dist(other.center) > r {
            return false;
        }
        let a = self.corners();
        let b = other.corners();
        for h in [self.heading, other.heading] {
            for axis in [P2::new(h.cos(), h.sin()), P2::new(-h.sin(), h.cos())] {
                let (amin, amax) = proj_range(&a, axis);
                let (bmin, bmax) = proj_range(&b, axis);
                if amax < bmin || bmax < amin {
                    return false;
                }
            }
        }
        true
    }

    /// Whether segment `pq` touches this box.
    pub fn intersects_segment(&self, p: P2, q: P2) -> bool {
        let c = self.corners();
        if point_in_polygon(&c, p) || point_in_polygon(&c, q) {
            return true;
        }
        (0..4).any(|i| segments_intersect(p, q, c[i], c[(i + 1) % 4]))
    }
}

fn proj_range(c: &[P2; 4], axis: P2) -> (f64, f64) {
    let mut lo = f64::INFINITY;
    let mut hi = f64::NEG_INFINITY;
    for p in c {
        let v = p.dot(axis);
        lo = lo.min(v);
        hi = hi.max(v);
    }
    (lo, hi)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn polyline_projection_and_pose() {
        let pl = Polyline::new(vec![
            P2::new(0.0, 0.0),
            P2::new(10.0, 0.0),
            P2::new(10.0, 10.0),
        ]);
        assert!((pl.length() - 20.0).abs() < 1e-12);
        let pr = pl.project(P2::new(5.0, 1.0));
        assert!((pr.s - 5.0).abs() < 1e-12 && (pr.lateral - 1.0).abs() < 1e-12);
        let pr = pl.project(P2::new(11.0, 5.0));
        assert!((pr.s - 15.0).abs() < 1e-12 && (pr.lateral + 1.0).abs() < 1e-12);
        let p = pl.pose_at(25.0);
        assert!((p.y - 15.0).abs() < 1e-9 && (p.x - 10.0).abs() < 1e-9);
    }

    #[test]
    fn boxes_intersect_by_separating_axes() {
        let a = OrientedBox::new(P2::new(0.0, 0.0), 0.0, 4.0, 2.0);
        let b = OrientedBox::new(P2::new(4.01, 0.0), 0.0, 4.0, 2.0);
        assert!(!a.intersects(&b));
        let b = OrientedBox::new(P2::new(3.99, 0.0), 0.0, 4.0, 2.0);
        assert!(a.intersects(&b));
        // Rotated 45 degrees: the corner reaches further than the half-width.
        let b = OrientedBox::new(P2::new(3.3, 0.0), std::f64::consts::FRAC_PI_4, 2.0, 2.0);
        assert!(a.intersects(&b));
        assert!(a.intersects_segment(P2::new(1.0, -5.0), P2::new(1.0, 5.0)));
        assert!(!a.intersects_segment(P2::new(2.5, -5.0), P2::new(2.5, 5.0)));
    }

    #[test]
    fn polygon_queries() {
        let sq = [
            P2::new(0.0, 0.0),
            P2::new(2.0, 0.0),
            P2::new(2.0, 2.0),
            P2::new(0.0, 2.0),
        ];
        assert!(point_in_polygon(&sq, P2::new(1.0, 1.0)));
        assert!(!point_in_polygon(&sq, P2::new(3.0, 1.0)));
        assert!((point_polygon_distance(&sq, P2::new(2.3, 1.0)) - 0.3).abs() < 1e-12);
        assert!((wrap_angle(3.0 * std::f64::consts::PI) - std::f64::consts::PI).abs() < 1e-12);
    }
}
