//! Shapes as nuplan-devkit's occupancy map holds them for its IDM agents: boxes, paths
//! buffered with flat caps, and unions of those. Each shape is a union of convex pieces, which
//! is all the agents' queries (does it touch this corridor? how far is it?) need.

use super::geometry::{point_segment_distance, OrientedBox, Polyline, P2};

/// A union of convex polygons (each piece's vertices in order, either orientation), with each
/// piece's bounding box so queries reject far pieces before the separating-axis test (the
/// devkit's STRtree does the same with its index).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Shape {
    pieces: Vec<Vec<P2>>,
    bounds: Vec<Bounds>,
}

/// Axis-aligned bounds (min x, min y, max x, max y).
#[derive(Debug, Clone, Copy, PartialEq)]
struct Bounds([f64; 4]);

impl Bounds {
    fn of(points: &[P2]) -> Bounds {
        let mut b = [
            f64::INFINITY,
            f64::INFINITY,
            f64::NEG_INFINITY,
            f64::NEG_INFINITY,
        ];
        for p in points {
            b = [b[0].min(p.x), b[1].min(p.y), b[2].max(p.x), b[3].max(p.y)];
        }
        Bounds(b)
    }

    /// A lower bound of the distance between anything inside the two boxes.
    fn gap(&self, o: &Bounds) -> f64 {
        let dx = (o.0[0] - self.0[2]).max(self.0[0] - o.0[2]).max(0.0);
        let dy = (o.0[1] - self.0[3]).max(self.0[1] - o.0[3]).max(0.0);
        dx.hypot(dy)
    }
}

impl Shape {
    fn from_pieces(pieces: Vec<Vec<P2>>) -> Shape {
        let bounds = pieces.iter().map(|p| Bounds::of(p)).collect();
        Shape { pieces, bounds }
    }

    pub fn from_box(b: &OrientedBox) -> Shape {
        Shape::from_pieces(vec![b.corners().to_vec()])
    }

    /// A convex polygon given by its vertices; no vertex gives an empty shape.
    pub fn from_polygon(points: &[P2]) -> Shape {
        if points.is_empty() {
            return Shape::default();
        }
        Shape::from_pieces(vec![points.to_vec()])
    }

    pub fn pieces(&self) -> &[Vec<P2>] {
        &self.pieces
    }

    /// `line` between arc lengths `s0` and `s1`, buffered by `half_width` with flat caps (as
    /// shapely's `buffer(w / 2, cap_style=flat)`): one quadrilateral per segment. At a bend the
    /// outer joins leave a sliver out, narrower than any car, so queries do not notice it.
    pub fn corridor(line: &Polyline, s0: f64, s1: f64, half_width: f64) -> Shape {
        let pts = trimmed(line, s0, s1);
        let mut pieces = Vec::with_capacity(pts.len().saturating_sub(1));
        for w in pts.windows(2) {
            let (a, b) = (w[0], w[1]);
            let d = b.sub(a);
            let len = d.norm();
            if len < 1e-9 {
                continue;
            }
            let n = P2::new(-d.y / len, d.x / len).scale(half_width);
            pieces.push(vec![a.add(n), b.add(n), b.sub(n), a.sub(n)]);
        }
        Shape::from_pieces(pieces)
    }

    pub fn union(mut self, other: Shape) -> Shape {
        self.pieces.extend(other.pieces);
        self.bounds.extend(other.bounds);
        self
    }

    pub fn is_empty(&self) -> bool {
        self.pieces.is_empty()
    }

    /// Whether the shapes share a point (touching counts, as in shapely's `intersects`).
    pub fn intersects(&self, other: &Shape) -> bool {
        self.pieces.iter().zip(&self.bounds).any(|(a, ba)| {
            other
                .pieces
                .iter()
                .zip(&other.bounds)
                .any(|(b, bb)| ba.gap(bb) == 0.0 && convex_intersect(a, b))
        })
    }

    /// The smallest distance between the shapes (0 where they intersect); infinity if either
    /// is empty.
    pub fn distance(&self, other: &Shape) -> f64 {
        let mut best = f64::INFINITY;
        for (a, ba) in self.pieces.iter().zip(&self.bounds) {
            for (b, bb) in other.pieces.iter().zip(&other.bounds) {
                if ba.gap(bb) >= best {
                    continue;
                }
                best = best.min(convex_distance(a, b));
                if best == 0.0 {
                    return 0.0;
                }
            }
        }
        best
    }
}

/// The points of `line` from arc length `s0` to `s1` (clamped to the line): the two cut
/// points and every vertex between them.
pub fn trimmed(line: &Polyline, s0: f64, s1: f64) -> Vec<P2> {
    let len = line.length();
    let (s0, s1) = (s0.clamp(0.0, len), s1.clamp(0.0, len));
    if line.points.len() < 2 || s1 <= s0 {
        return Vec::new();
    }
    let at = |s: f64| {
        let p = line.pose_at(s);
        P2::new(p.x, p.y)
    };
    let mut out = vec![at(s0)];
    let mut acc = 0.0;
    for w in line.points.windows(2) {
        acc += w[0].dist(w[1]);
        if acc > s0 + 1e-9 && acc < s1 - 1e-9 {
            out.push(w[1]);
        }
    }
    out.push(at(s1));
    out
}

fn axes(poly: &[P2]) -> impl Iterator<Item = P2> + '_ {
    (0..poly.len()).map(move |i| {
        let d = poly[(i + 1) % poly.len()].sub(poly[i]);
        P2::new(-d.y, d.x)
    })
}

fn range(poly: &[P2], axis: P2) -> (f64, f64) {
    poly.iter()
        .map(|p| p.dot(axis))
        .fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), v| {
            (lo.min(v), hi.max(v))
        })
}

/// Separating-axis test for convex polygons (a single point or a segment works too).
fn convex_intersect(a: &[P2], b: &[P2]) -> bool {
    if a.is_empty() || b.is_empty() {
        return false;
    }
    for axis in axes(a).chain(axes(b)) {
        if axis.norm() < 1e-15 {
            continue;
        }
        let (amin, amax) = range(a, axis);
        let (bmin, bmax) = range(b, axis);
        if amax < bmin || bmax < amin {
            return false;
        }
    }
    true
}

fn convex_distance(a: &[P2], b: &[P2]) -> f64 {
    if a.is_empty() || b.is_empty() {
        return f64::INFINITY;
    }
    if convex_intersect(a, b) {
        return 0.0;
    }
    let to_edges = |p: P2, poly: &[P2]| {
        (0..poly.len())
            .map(|i| point_segment_distance(p, poly[i], poly[(i + 1) % poly.len()]))
            .fold(f64::INFINITY, f64::min)
    };
    let ab = a
        .iter()
        .map(|&p| to_edges(p, b))
        .fold(f64::INFINITY, f64::min);
    let ba = b
        .iter()
        .map(|&p| to_edges(p, a))
        .fold(f64::INFINITY, f64::min);
    ab.min(ba)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn boxes_corridors_and_distances() {
        let a = Shape::from_box(&OrientedBox::new(P2::new(0.0, 0.0), 0.0, 4.0, 2.0));
        let b = Shape::from_box(&OrientedBox::new(P2::new(10.0, 0.0), 0.0, 4.0, 2.0));
        assert!((a.distance(&b) - 6.0).abs() < 1e-12);
        assert!(!a.intersects(&b));
        // A corridor along x from 0 to 20, 1 m each side, with a bend at x = 10.
        let line = Polyline::new(vec![
            P2::new(0.0, 0.0),
            P2::new(10.0, 0.0),
            P2::new(20.0, 5.0),
        ]);
        let c = Shape::corridor(&line, 2.0, 30.0, 1.0);
        assert!(c.intersects(&b) && c.intersects(&a));
        // Flat cap: a box just behind the corridor's start does not touch it.
        let behind = Shape::from_box(&OrientedBox::new(P2::new(-0.6, 0.0), 0.0, 1.0, 1.0));
        assert!(!Shape::corridor(&line, 0.0, 5.0, 1.0).intersects(&behind));
        // Beside it, beyond the half-width: no; the distance is the gap.
        let beside = Shape::from_box(&OrientedBox::new(P2::new(5.0, 2.5), 0.0, 2.0, 1.0));
        assert!(!c.intersects(&beside));
        assert!((c.distance(&beside) - 1.0).abs() < 1e-12);
        assert_eq!(trimmed(&line, 5.0, 10.0).len(), 2);
        assert_eq!(trimmed(&line, 5.0, 12.0).len(), 3);
    }
}
