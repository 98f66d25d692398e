//! Axis-aligned boxes: the only collision shape. Everything in the tabletop world keeps its
//! axes aligned with the table (objects never tip or spin), so boxes are exact for blocks,
//! drawers and baskets and a conservative hull for round things.

use serde::Serialize;

/// Below this overlap (metres) two boxes count as touching, not interpenetrating: resting
/// contact produces exact zeros, rounding a few ulps more.
pub const TOUCH_EPS: f64 = 5e-4;

#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Aabb {
    pub min: [f64; 3],
    pub max: [f64; 3],
}

impl Aabb {
    pub fn new(min: [f64; 3], max: [f64; 3]) -> Self {
        Self { min, max }
    }

    /// A box of `size` whose bottom face is centred on `bottom_centre`.
    pub fn from_bottom(bottom_centre: [f64; 3], size: [f64; 3]) -> Self {
        let [x, y, z] = bottom_centre;
        let [sx, sy, sz] = size;
        Self::new(
            [x - sx / 2.0, y - sy / 2.0, z],
            [x + sx / 2.0, y + sy / 2.0, z + sz],
        )
    }

    pub fn translated(&self, d: [f64; 3]) -> Self {
        Self::new(
            [self.min[0] + d[0], self.min[1] + d[1], self.min[2] + d[2]],
            [self.max[0] + d[0], self.max[1] + d[1], self.max[2] + d[2]],
        )
    }

    pub fn centre(&self) -> [f64; 3] {
        std::array::from_fn(|k| 0.5 * (self.min[k] + self.max[k]))
    }

    pub fn size(&self) -> [f64; 3] {
        std::array::from_fn(|k| self.max[k] - self.min[k])
    }

    /// Smallest per-axis overlap: positive when the boxes interpenetrate by that much.
    pub fn overlap(&self, o: &Aabb) -> f64 {
        (0..3)
            .map(|k| self.max[k].min(o.max[k]) - self.min[k].max(o.min[k]))
            .fold(f64::INFINITY, f64::min)
    }

    pub fn penetrates(&self, o: &Aabb) -> bool {
        self.overlap(o) > TOUCH_EPS
    }

    /// Overlap of the xy footprints (smaller of the two axes); negative when apart.
    pub fn xy_overlap(&self, o: &Aabb) -> f64 {
        (0..2)
            .map(|k| self.max[k].min(o.max[k]) - self.min[k].max(o.min[k]))
            .fold(f64::INFINITY, f64::min)
    }

    /// Gap between xy footprints (0 when they overlap).
    pub fn xy_gap(&self, o: &Aabb) -> f64 {
        let dx = (self.min[0] - o.max[0])
            .max(o.min[0] - self.max[0])
            .max(0.0);
        let dy = (self.min[1] - o.max[1])
            .max(o.min[1] - self.max[1])
            .max(0.0);
        dx.hypot(dy)
    }

    pub fn contains_xy(&self, p: [f64; 2], margin: f64) -> bool {
        p[0] >= self.min[0] + margin
            && p[0] <= self.max[0] - margin
            && p[1] >= self.min[1] + margin
            && p[1] <= self.max[1] - margin
    }

    pub fn union(&self, o: &Aabb) -> Aabb {
        Aabb::new(
            std::array::from_fn(|k| self.min[k].min(o.min[k])),
            std::array::from_fn(|k| self.max[k].max(o.max[k])),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn overlap_and_gap() {
        let a = Aabb::from_bottom([0.0, 0.0, 0.0], [0.1, 0.1, 0.1]);
        let b = a.translated([0.08, 0.0, 0.0]);
        assert!((a.overlap(&b) - 0.02).abs() < 1e-12);
        assert!(a.penetrates(&b));
        let c = a.translated([0.0, 0.0, 0.1]);
        assert!(!a.penetrates(&c));
        assert!((a.xy_gap(&a.translated([0.13, 0.0, 0.0])) - 0.03).abs() < 1e-12);
    }
}
