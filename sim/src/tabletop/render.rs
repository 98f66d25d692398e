//! A small software rasterizer: flat-shaded triangles, perspective projection, near-plane
//! clipping and a depth buffer. Enough for a recognisable tabletop at 128 px, fast enough that
//! rendering two cameras costs about as much as the physics.

use super::geom::Aabb;
use super::physics::{hand_boxes, World};
use super::scene::{Joint, Look, Role, TABLE};
use nalgebra::{Isometry3, Vector3};
use rudder_robot::ImageRgb8;

type V3 = Vector3<f64>;

/// A pinhole camera.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Camera {
    pub eye: V3,
    pub forward: V3,
    pub up: V3,
    /// Vertical field of view (rad).
    pub fov_y: f64,
}

impl Camera {
    /// Looks at `target` from `eye` with world z up.
    pub fn look_at(eye: V3, target: V3, fov_y: f64) -> Self {
        let forward = (target - eye).normalize();
        let right = forward.cross(&V3::z()).normalize();
        Self {
            eye,
            forward,
            up: right.cross(&forward),
            fov_y,
        }
    }

    /// LIBERO's agent view: from the far end of the table, facing the arm, looking down.
    pub fn agentview() -> Self {
        Self::look_at(V3::new(1.15, 0.0, 0.85), V3::new(0.42, 0.0, 0.0), 0.85)
    }

    /// The wrist camera: on the flange just past the palm, looking along the fingers.
    pub fn wrist(flange: &Isometry3<f64>) -> Self {
        let r = flange.rotation;
        let forward = (r * V3::new(-0.35, 0.0, 1.0)).normalize();
        let hint = r * V3::new(-1.0, 0.0, 0.0);
        let up = (hint - forward * hint.dot(&forward)).normalize();
        Self {
            eye: flange.translation.vector + r * V3::new(0.05, 0.0, 0.1),
            forward,
            up,
            fov_y: 1.4,
        }
    }
}

#[derive(Clone)]
struct Tri {
    p: [V3; 3],
    /// Outward normal (any length): faces turned away from the camera are skipped.
    n: V3,
    color: [f32; 3],
}

/// Reusable buffers.
#[derive(Default, Clone)]
pub struct Renderer {
    tris: Vec<Tri>,
    depth: Vec<f32>,
}

const LIGHT: [f64; 3] = [0.35, 0.25, 0.9];

impl Renderer {
    pub fn new() -> Self {
        Self::default()
    }

    fn push_box(&mut self, b: &Aabb, color: [f32; 3]) {
        let c = |i: usize| {
            V3::new(
                if i & 1 == 0 { b.min[0] } else { b.max[0] },
                if i & 2 == 0 { b.min[1] } else { b.max[1] },
                if i & 4 == 0 { b.min[2] } else { b.max[2] },
            )
        };
        const FACES: [([usize; 4], [f64; 3]); 6] = [
            ([0, 1, 3, 2], [0.0, 0.0, -1.0]),
            ([4, 5, 7, 6], [0.0, 0.0, 1.0]),
            ([0, 1, 5, 4], [0.0, -1.0, 0.0]),
            ([2, 3, 7, 6], [0.0, 1.0, 0.0]),
            ([0, 2, 6, 4], [-1.0, 0.0, 0.0]),
            ([1, 3, 7, 5], [1.0, 0.0, 0.0]),
        ];
        for (f, n) in FACES {
            self.quad(c(f[0]), c(f[1]), c(f[2]), c(f[3]), V3::from(n), color);
        }
    }

    fn quad(&mut self, a: V3, b: V3, c: V3, d: V3, n: V3, color: [f32; 3]) {
        self.tris.push(Tri {
            p: [a, b, c],
            n,
            color,
        });
        self.tris.push(Tri {
            p: [a, c, d],
            n,
            color,
        });
    }

    /// A vertical cylinder filling the box's footprint (an ellipse when it is not square).
    fn push_cylinder(&mut self, b: &Aabb, color: [f32; 3]) {
        const N: usize = 12;
        let c = b.centre();
        let (rx, ry) = (b.size()[0] / 2.0, b.size()[1] / 2.0);
        let dir = |k: usize| {
            let a = std::f64::consts::TAU * k as f64 / N as f64;
            (a.cos(), a.sin())
        };
        let pt = |k: usize, z: f64| {
            let (x, y) = dir(k);
            V3::new(c[0] + rx * x, c[1] + ry * y, z)
        };
        let top = V3::new(c[0], c[1], b.max[2]);
        for k in 0..N {
            let (p0, p1) = (pt(k, b.min[2]), pt(k + 1, b.min[2]));
            let (q0, q1) = (pt(k, b.max[2]), pt(k + 1, b.max[2]));
            let a = std::f64::consts::TAU * (k as f64 + 0.5) / N as f64;
            let (mx, my) = (a.cos() * ry, a.sin() * rx);
            self.quad(p0, p1, q1, q0, V3::new(mx, my, 0.0), color);
            self.tris.push(Tri {
                p: [top, q0, q1],
                n: V3::z(),
                color,
            });
        }
    }

    /// A round link between two points.
    fn push_link(&mut self, a: V3, b: V3, radius: f64, color: [f32; 3]) {
        const N: usize = 8;
        let axis = b - a;
        if axis.norm() < 1e-6 {
            return;
        }
        let d = axis.normalize();
        let helper = if d.z.abs() < 0.9 { V3::z() } else { V3::x() };
        let e1 = d.cross(&helper).normalize() * radius;
        let e2 = d.cross(&e1).normalize() * radius;
        let ring = |t: f64| e1 * t.cos() + e2 * t.sin();
        let step = std::f64::consts::TAU / N as f64;
        for k in 0..N {
            let t = k as f64 * step;
            let (r0, r1) = (ring(t), ring(t + step));
            let mid = ring(t + step / 2.0);
            self.quad(a + r0, a + r1, b + r1, b + r0, mid, color);
            self.tris.push(Tri {
                p: [b, b + r0, b + r1],
                n: d,
                color,
            });
            self.tris.push(Tri {
                p: [a, a + r0, a + r1],
                n: -d,
                color,
            });
        }
    }

    fn build(&mut self, world: &World, frames: &[Isometry3<f64>; 7]) {
        self.tris.clear();
        // The backdrop stands in for the room; the table is one box.
        let mut top = TABLE;
        top.min[0] -= 0.3;
        top.max[0] += 0.1;
        top.min[1] -= 0.1;
        top.max[1] += 0.1;
        self.push_box(&top, [0.72, 0.62, 0.48]);
        for o in &world.scene.objects {
            for (i, b) in o.boxes() {
                let p = &o.parts[i];
                let mut color = p.color;
                if p.role == Role::Burner && o.knob_on() {
                    color = [0.95, 0.25, 0.05];
                }
                match p.look {
                    Look::Box => self.push_box(&b, color),
                    Look::Cylinder => self.push_cylinder(&b, color),
                }
                if p.role == Role::Knob {
                    // A pointer on the knob shows its angle.
                    if let Joint::Knob { value, .. } = o.joint {
                        let c = V3::from(b.centre());
                        let dir = V3::new(-value.cos(), -value.sin(), 0.0) * 0.014;
                        let z = b.max[2] + 0.002;
                        let a = V3::new(c.x, c.y, z);
                        self.push_link(a, a + dir, 0.004, [0.8, 0.1, 0.1]);
                    }
                }
            }
        }
        // The arm: a pedestal, then one round link per DH frame step.
        let grey = [0.62, 0.65, 0.7];
        self.push_link(
            V3::new(0.0, 0.0, -0.05),
            V3::new(0.0, 0.0, 0.0),
            0.08,
            [0.3, 0.3, 0.32],
        );
        for i in 0..6 {
            let (a, b) = (
                frames[i].translation.vector,
                frames[i + 1].translation.vector,
            );
            let r = if i < 3 { 0.05 } else { 0.04 };
            self.push_link(a, b, r, if i % 2 == 0 { grey } else { [0.25, 0.45, 0.7] });
        }
        let hand = hand_boxes(&frames[6], world.width);
        for (k, b) in hand.iter().enumerate() {
            let c = if k < 2 {
                [0.2, 0.2, 0.22]
            } else {
                [0.45, 0.45, 0.48]
            };
            self.push_box(b, c);
        }
    }

    /// Renders the world as seen by `cam` into a `w` x `h` RGB image.
    pub fn render(
        &mut self,
        world: &World,
        frames: &[Isometry3<f64>; 7],
        cam: &Camera,
        w: u32,
        h: u32,
    ) -> ImageRgb8 {
        self.build(world, frames);
        let (wu, hu) = (w as usize, h as usize);
        let mut img = vec![0u8; wu * hu * 3];
        for y in 0..hu {
            // A wall fading into the floor: whatever the table does not cover.
            let t = y as f32 / hu.max(1) as f32;
            let c = [
                (205.0 - 120.0 * t) as u8,
                (210.0 - 125.0 * t) as u8,
                (220.0 - 130.0 * t) as u8,
            ];
            for x in 0..wu {
                img[(y * wu + x) * 3..(y * wu + x) * 3 + 3].copy_from_slice(&c);
            }
        }
        self.depth.clear();
        self.depth.resize(wu * hu, 0.0);
        let right = cam.forward.cross(&cam.up);
        let f = (h as f64 / 2.0) / (cam.fov_y / 2.0).tan();
        let light = V3::from(LIGHT).normalize();
        let tris = std::mem::take(&mut self.tris);
        for t in &tris {
            if t.n.dot(&(t.p[0] - cam.eye)) >= 0.0 {
                continue;
            }
            let nn = t.n.norm();
            if nn < 1e-12 {
                continue;
            }
            let shade = 0.5 + 0.5 * (t.n / nn).dot(&light).max(0.0);
            let col = t
                .color
                .map(|c| (c * shade as f32 * 255.0).clamp(0.0, 255.0) as u8);
            let cs = t.p.map(|p| {
                let d = p - cam.eye;
                V3::new(d.dot(&right), d.dot(&cam.up), d.dot(&cam.forward))
            });
            let mut poly = [V3::zeros(); 4];
            let m = clip_near(&cs, &mut poly);
            let proj = |v: &V3| {
                [
                    w as f64 / 2.0 + f * v.x / v.z,
                    h as f64 / 2.0 - f * v.y / v.z,
                    1.0 / v.z,
                ]
            };
            for k in 1..m.saturating_sub(1) {
                let tri = [proj(&poly[0]), proj(&poly[k]), proj(&poly[k + 1])];
                raster(&tri, col, wu, hu, &mut img, &mut self.depth);
            }
        }
        self.tris = tris;
        ImageRgb8 {
            width: w,
            height: h,
            data: img,
        }
    }
}

const NEAR: f64 = 0.01;

/// Clips a camera-space triangle against z = NEAR; returns how many vertices `out` holds.
fn clip_near(t: &[V3; 3], out: &mut [V3; 4]) -> usize {
    let mut n = 0;
    for i in 0..3 {
        let (a, b) = (t[i], t[(i + 1) % 3]);
        let (ina, inb) = (a.z >= NEAR, b.z >= NEAR);
        if ina {
            out[n] = a;
            n += 1;
        }
        if ina != inb {
            let s = (NEAR - a.z) / (b.z - a.z);
            out[n] = a + (b - a) * s;
            n += 1;
        }
    }
    n
}

/// Fills a screen-space triangle ([x, y, 1/z] per vertex), nearest surface wins. Each row
/// is filled over the span where all three edge functions agree, with 1/z interpolated as a
/// plane in screen space (exact under perspective).
fn raster(t: &[[f64; 3]; 3], col: [u8; 3], w: usize, h: usize, img: &mut [u8], depth: &mut [f32]) {
    let area =
        (t[1][0] - t[0][0]) * (t[2][1] - t[0][1]) - (t[2][0] - t[0][0]) * (t[1][1] - t[0][1]);
    if area.abs() < 1e-12 || !area.is_finite() {
        return;
    }
    let sgn = area.signum();
    // Edge k (from vertex k to k+1), oriented so the inside is >= 0: e = a x + b y + c.
    let edges: [[f64; 3]; 3] = std::array::from_fn(|k| {
        let (p, q) = (t[k], t[(k + 1) % 3]);
        let a = -(q[1] - p[1]) * sgn;
        let b = (q[0] - p[0]) * sgn;
        [a, b, -(a * p[0] + b * p[1])]
    });
    // 1/z = dx x + dy y + d0.
    let (e1, e2) = (
        [t[1][0] - t[0][0], t[1][1] - t[0][1], t[1][2] - t[0][2]],
        [t[2][0] - t[0][0], t[2][1] - t[0][1], t[2][2] - t[0][2]],
    );
    let nz = e1[0] * e2[1] - e1[1] * e2[0];
    let dzx = -(e1[1] * e2[2] - e1[2] * e2[1]) / nz;
    let dzy = -(e1[2] * e2[0] - e1[0] * e2[2]) / nz;
    let dz0 = t[0][2] - dzx * t[0][0] - dzy * t[0][1];
    let miny = t
        .iter()
        .map(|p| p[1])
        .fold(f64::INFINITY, f64::min)
        .floor()
        .max(0.0);
    let maxy = t
        .iter()
        .map(|p| p[1])
        .fold(f64::NEG_INFINITY, f64::max)
        .ceil()
        .min(h as f64 - 1.0);
    if miny.is_nan() || maxy.is_nan() || miny > maxy {
        return;
    }
    for y in miny as usize..=maxy as usize {
        let py = y as f64 + 0.5;
        let (mut lo, mut hi) = (0.0f64, w as f64 - 1.0);
        for e in &edges {
            let c = e[1] * py + e[2];
            // Pixel centres px = x + 0.5 with a px + c >= 0.
            if e[0].abs() < 1e-12 {
                if c < 0.0 {
                    hi = -1.0;
                }
            } else if e[0] > 0.0 {
                lo = lo.max((-c / e[0] - 0.5).ceil());
            } else {
                hi = hi.min((-c / e[0] - 0.5).floor());
            }
        }
        if lo > hi {
            continue;
        }
        let row = y * w;
        let mut iz = dzx * (lo + 0.5) + dzy * py + dz0;
        for x in lo as usize..=hi as usize {
            let i = row + x;
            let z = iz as f32;
            if z > depth[i] {
                depth[i] = z;
                img[i * 3..i * 3 + 3].copy_from_slice(&col);
            }
            iz += dzx;
        }
    }
}

/// Writes an image as PNG.
pub fn save_png(img: &ImageRgb8, path: &std::path::Path) -> Result<(), String> {
    image::save_buffer(
        path,
        &img.data,
        img.width,
        img.height,
        image::ExtendedColorType::Rgb8,
    )
    .map_err(|e| format!("{}: {e}", path.display()))
}
