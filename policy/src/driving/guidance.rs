//! Classifier guidance for the diffusion planner (REFERENCE §3a): an energy over a candidate
//! future that grows as the ego overlaps another agent (each agent rolled forward at its
//! current velocity) or leaves the lanes, and a gradient step on each x0 estimate the solver
//! sees, `x0 <- x0 - scale * dE/dx0`, so later solver steps start from a safer future.
//!
//! Everything is in the ego frame of the scene, in metres, and reads the scene's raw arrays,
//! so the energy sees what the network sees.
//!
//! - Collision: in each agent's own frame, the ego's rear-axle position at step k against an
//!   ellipse with the two boxes' half lengths and half widths summed (plus margins):
//!   `relu(1 - (dl / A)^2 - (dt / B)^2)^2`.
//! - Drivable area: the distance to the nearest lane baseline point beyond that lane's half
//!   width: `relu(d - w / 2)^2`.

use super::scene::{Scene, SceneConfig};
use super::scene::{LANE_FEATURES, NEIGHBOUR_FEATURES};
use crate::error::FlowError;
use candle_core::Tensor;

/// Half length and width of the ego (Chrysler Pacifica, metres).
const EGO_HALF_LENGTH: f64 = 2.6;
const EGO_HALF_WIDTH: f64 = 1.15;
const LONG_MARGIN: f64 = 1.0;
const LAT_MARGIN: f64 = 0.3;
/// No guidance step moves a pose by more than this (metres).
const MAX_SHIFT: f64 = 2.0;

#[derive(Debug, Clone, Copy)]
struct Track {
    x: f64,
    y: f64,
    vx: f64,
    vy: f64,
    cos: f64,
    sin: f64,
    a: f64,
    b: f64,
}

#[derive(Debug, Clone, Copy)]
struct LanePoint {
    x: f64,
    y: f64,
    half_width: f64,
}

/// What guidance did to the plans of one sampling.
#[derive(Debug, Clone, Copy, Default, PartialEq, serde::Serialize)]
pub struct GuidanceReport {
    /// Samples whose x0 estimate it moved (summed over solver steps).
    pub moved: usize,
    /// Their energy before and after the step (summed).
    pub before: f64,
    pub after: f64,
}

#[derive(Debug, Clone)]
pub struct Guidance {
    scale: f64,
    tracks: Vec<Track>,
    /// Each lane's baseline points, in order.
    lanes: Vec<Vec<LanePoint>>,
}

impl Guidance {
    /// The agents and lanes of `scene` (its raw arrays), with guidance `scale`.
    pub fn from_scene(cfg: &SceneConfig, scene: &Scene, scale: f64) -> Guidance {
        let mut tracks = Vec::new();
        for i in 0..cfg.neighbours {
            let row = &scene.neighbours[(i * cfg.history + cfg.history - 1) * NEIGHBOUR_FEATURES..]
                [..NEIGHBOUR_FEATURES];
            if row.iter().all(|v| *v == 0.0) {
                continue;
            }
            let f = |k: usize| row[k] as f64;
            let norm = f(2).hypot(f(3)).max(1e-6);
            tracks.push(Track {
                x: f(0),
                y: f(1),
                vx: f(4),
                vy: f(5),
                cos: f(2) / norm,
                sin: f(3) / norm,
                a: 0.5 * f(7) + EGO_HALF_LENGTH + LONG_MARGIN,
                b: 0.5 * f(6) + EGO_HALF_WIDTH + LAT_MARGIN,
            });
        }
        let mut lanes = Vec::new();
        for l in 0..cfg.lanes {
            let mut line = Vec::new();
            for p in 0..cfg.lane_points {
                let row =
                    &scene.lanes[(l * cfg.lane_points + p) * LANE_FEATURES..][..LANE_FEATURES];
                if row.iter().all(|v| *v == 0.0) {
                    continue;
                }
                let f = |k: usize| row[k] as f64;
                line.push(LanePoint {
                    x: f(0),
                    y: f(1),
                    half_width: 0.5 * (f(4).hypot(f(5)) + f(6).hypot(f(7))),
                });
            }
            if !line.is_empty() {
                lanes.push(line);
            }
        }
        Guidance {
            scale,
            tracks,
            lanes,
        }
    }

    /// The energy of one future (poses (x, y, ...) at 0.1 s, 0.2 s, ...) and its gradient
    /// with respect to each pose's (x, y).
    pub fn energy(&self, future: &[[f32; 4]]) -> (f64, Vec<[f64; 2]>) {
        let mut e = 0.0;
        let mut grad = vec![[0.0; 2]; future.len()];
        for (k, p) in future.iter().enumerate() {
            let (x, y) = (p[0] as f64, p[1] as f64);
            let t = (k + 1) as f64 * super::planner::FUTURE_DT;
            for a in &self.tracks {
                let (dx, dy) = (x - (a.x + a.vx * t), y - (a.y + a.vy * t));
                let dl = a.cos * dx + a.sin * dy;
                let dt = -a.sin * dx + a.cos * dy;
                let q = (dl / a.a).powi(2) + (dt / a.b).powi(2);
                if q < 1.0 {
                    let o = 1.0 - q;
                    e += o * o;
                    // d(o^2)/dq = -2o; dq/d(dl) = 2 dl / A^2, dq/d(dt) = 2 dt / B^2.
                    let gl = -2.0 * o * 2.0 * dl / (a.a * a.a);
                    let gt = -2.0 * o * 2.0 * dt / (a.b * a.b);
                    grad[k][0] += gl * a.cos - gt * a.sin;
                    grad[k][1] += gl * a.sin + gt * a.cos;
                }
            }
            if let Some((d, cx, cy, hw)) = self.nearest_baseline(x, y) {
                let over = d - hw;
                if over > 0.0 && d > 1e-9 {
                    e += over * over;
                    grad[k][0] += 2.0 * over * (x - cx) / d;
                    grad[k][1] += 2.0 * over * (y - cy) / d;
                }
            }
        }
        (e, grad)
    }

    /// The nearest point of any lane's baseline (segments between its points) to (x, y): its
    /// distance, the point, and the lane's half width there (interpolated).
    fn nearest_baseline(&self, x: f64, y: f64) -> Option<(f64, f64, f64, f64)> {
        let mut best: Option<(f64, f64, f64, f64)> = None;
        for line in &self.lanes {
            let segs: Vec<(&LanePoint, &LanePoint)> = if line.len() == 1 {
                vec![(&line[0], &line[0])]
            } else {
                line.windows(2).map(|w| (&w[0], &w[1])).collect()
            };
            for (a, b) in segs {
                let (vx, vy) = (b.x - a.x, b.y - a.y);
                let len2 = vx * vx + vy * vy;
                let u = if len2 > 1e-12 {
                    (((x - a.x) * vx + (y - a.y) * vy) / len2).clamp(0.0, 1.0)
                } else {
                    0.0
                };
                let (cx, cy) = (a.x + u * vx, a.y + u * vy);
                let d = (x - cx).hypot(y - cy);
                if best.is_none_or(|b| d < b.0) {
                    let hw = a.half_width + u * (b.half_width - a.half_width);
                    best = Some((d, cx, cy, hw));
                }
            }
        }
        best
    }

    /// One guidance step on x0 estimates [n, T, 4] in metres.
    pub fn apply(&self, x0: &Tensor, report: &mut GuidanceReport) -> Result<Tensor, FlowError> {
        let dims = x0.dims().to_vec();
        let flat: Vec<f32> = x0.flatten_all()?.to_vec1()?;
        let per = dims[1..].iter().product::<usize>().max(1);
        let mut out = flat;
        for chunk in out.chunks_mut(per) {
            let poses: Vec<[f32; 4]> = chunk.chunks(4).map(|p| [p[0], p[1], p[2], p[3]]).collect();
            let (before, grad) = self.energy(&poses);
            if before <= 0.0 {
                continue;
            }
            for (k, g) in grad.iter().enumerate() {
                let (mut sx, mut sy) = (-self.scale * g[0], -self.scale * g[1]);
                let n = sx.hypot(sy);
                if n > MAX_SHIFT {
                    sx *= MAX_SHIFT / n;
                    sy *= MAX_SHIFT / n;
                }
                chunk[4 * k] += sx as f32;
                chunk[4 * k + 1] += sy as f32;
            }
            let moved: Vec<[f32; 4]> = chunk.chunks(4).map(|p| [p[0], p[1], p[2], p[3]]).collect();
            report.moved += 1;
            report.before += before;
            report.after += self.energy(&moved).0;
        }
        Ok(Tensor::from_vec(out, dims, x0.device())?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn guidance_with(tracks: Vec<Track>, lanes: Vec<Vec<LanePoint>>) -> Guidance {
        Guidance {
            scale: 0.5,
            tracks,
            lanes,
        }
    }

    #[test]
    fn gradient_matches_finite_differences_and_a_step_lowers_the_energy() {
        let g = guidance_with(
            vec![Track {
                x: 6.0,
                y: 0.5,
                vx: 1.0,
                vy: 0.0,
                cos: 1.0,
                sin: 0.0,
                a: 5.0,
                b: 2.0,
            }],
            vec![(0..40)
                .map(|i| LanePoint {
                    x: i as f64,
                    y: 0.0,
                    half_width: 1.75,
                })
                .collect()],
        );
        // Straight ahead at 5 m/s, drifting left off the lane.
        let fut: Vec<[f32; 4]> = (1..=20)
            .map(|k| [0.5 * k as f32, 0.15 * k as f32, 1.0, 0.0])
            .collect();
        let (e, grad) = g.energy(&fut);
        assert!(e > 0.0);
        let h = 1e-3;
        for k in [0, 5, 12, 19] {
            for d in 0..2 {
                let mut p = fut.clone();
                p[k][d] += h as f32;
                let mut m = fut.clone();
                m[k][d] -= h as f32;
                let fd = (g.energy(&p).0 - g.energy(&m).0) / (2.0 * h);
                assert!(
                    (fd - grad[k][d]).abs() < 1e-2 * (1.0 + fd.abs()),
                    "pose {k} dim {d}: {fd} vs {}",
                    grad[k][d]
                );
            }
        }
        let x = Tensor::from_vec(
            fut.iter().flatten().copied().collect::<Vec<f32>>(),
            (1, fut.len(), 4),
            &candle_core::Device::Cpu,
        )
        .unwrap();
        let mut r = GuidanceReport::default();
        g.apply(&x, &mut r).unwrap();
        assert_eq!(r.moved, 1);
        assert!(r.after < r.before, "{r:?}");
    }
}
