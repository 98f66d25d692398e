//! The object library and the scene state: where every object is, what it rests on, and the
//! positions of the articulated parts (drawer slide, stove knob).
//!
//! Frame: the UR5's DH `base` frame (robot/ur5.rs), z up, the table top at z = 0, the work area
//! in front of the arm at +x. "Left" is +y, as seen from the arm looking down the table.

use super::geom::Aabb;
use serde::Serialize;

/// The table top the arm can reach and objects are placed on.
pub const TABLE: Aabb = Aabb {
    min: [0.2, -0.42, -0.05],
    max: [0.9, 0.42, 0.0],
};

/// What a part does for contact, support and grasping.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum Role {
    /// Blocks motion; objects can rest on its top.
    Solid,
    /// The inside bottom of a container: what `In` means.
    Floor,
    /// A container wall.
    Wall,
    /// The stove's cooking surface: `On(x, stove)` means resting on it.
    Burner,
    /// The drawer handle: grasping it drives the drawer slide.
    Handle,
    /// The stove knob: grasping and turning the wrist turns it.
    Knob,
}

/// How a part is drawn; collision always uses its box.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum Look {
    Box,
    Cylinder,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Part {
    /// In the object's frame (origin at the bottom centre of the object, axes of the world).
    pub local: Aabb,
    pub role: Role,
    pub look: Look,
    pub color: [f32; 3],
    /// Moves with the object's articulation (the drawer tray and its handle).
    pub jointed: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum Kind {
    Block,
    Cylinder,
    Bowl,
    Plate,
    Basket,
    Cabinet,
    Stove,
}

impl Kind {
    pub fn parse(s: &str) -> Option<Kind> {
        Some(match s {
            "block" | "box" => Kind::Block,
            "cylinder" | "bottle" | "can" => Kind::Cylinder,
            "bowl" => Kind::Bowl,
            "plate" => Kind::Plate,
            "basket" => Kind::Basket,
            "cabinet" => Kind::Cabinet,
            "stove" => Kind::Stove,
            _ => return None,
        })
    }

    pub const NAMES: &'static str = "block, cylinder, bowl, plate, basket, cabinet, stove";

    /// Default outer size (x, y, z) in metres.
    pub fn default_size(self) -> [f64; 3] {
        match self {
            Kind::Block => [0.04, 0.04, 0.04],
            Kind::Cylinder => [0.05, 0.05, 0.09],
            Kind::Bowl => [0.075, 0.075, 0.045],
            Kind::Plate => [0.13, 0.13, 0.015],
            Kind::Basket => [0.16, 0.16, 0.07],
            Kind::Cabinet => [0.16, 0.2, 0.19],
            Kind::Stove => [0.2, 0.2, 0.06],
        }
    }

    /// Whether a size may be given (fixtures have a fixed geometry).
    pub fn sizable(self) -> bool {
        !matches!(self, Kind::Cabinet | Kind::Stove)
    }

    pub fn is_container(self) -> bool {
        matches!(self, Kind::Bowl | Kind::Basket | Kind::Cabinet)
    }

    /// Things with a top or inside that another object can be set on.
    pub fn can_support(self) -> bool {
        !matches!(self, Kind::Cylinder)
    }
}

/// Named colours the task files may use.
pub fn named_color(s: &str) -> Option<[f32; 3]> {
    Some(match s {
        "red" => [0.8, 0.15, 0.12],
        "green" => [0.2, 0.65, 0.25],
        "blue" => [0.15, 0.3, 0.8],
        "yellow" => [0.9, 0.8, 0.15],
        "orange" => [0.95, 0.5, 0.1],
        "purple" => [0.5, 0.25, 0.65],
        "black" => [0.12, 0.12, 0.13],
        "white" => [0.92, 0.92, 0.9],
        "grey" | "gray" => [0.55, 0.55, 0.56],
        "brown" => [0.5, 0.32, 0.18],
        "wood" => [0.62, 0.45, 0.28],
        "cream" => [0.93, 0.88, 0.72],
        "pink" => [0.9, 0.5, 0.6],
        _ => return None,
    })
}

/// Articulation state of a fixture.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub enum Joint {
    None,
    /// Drawer: how far the tray is pulled out along -x (metres, 0 = closed).
    Slide {
        value: f64,
        max: f64,
    },
    /// Knob angle (rad, 0 = off).
    Knob {
        value: f64,
        max: f64,
    },
}

/// Where the drawer slides (towards the arm).
pub const SLIDE_AXIS: [f64; 3] = [-1.0, 0.0, 0.0];
/// Knob angle above which the stove counts as on.
pub const KNOB_ON: f64 = 0.6;

/// What an object rests on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum Support {
    Table,
    Part {
        obj: usize,
        part: usize,
    },
    /// In the gripper.
    Held,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Object {
    pub name: String,
    pub kind: Kind,
    pub parts: Vec<Part>,
    /// Bottom centre in the world.
    pub pos: [f64; 3],
    pub joint: Joint,
    /// Fixtures never move as a whole.
    pub fixed: bool,
    pub support: Support,
}

/// Widest object the open gripper (9 cm) can take with room to spare.
pub const MAX_GRASP_WIDTH: f64 = 0.078;

impl Object {
    /// Builds an object of the library at `pos` (bottom centre), sized `size`.
    pub fn new(name: &str, kind: Kind, size: [f64; 3], color: [f32; 3], pos: [f64; 3]) -> Self {
        let parts = build_parts(kind, size, color);
        let joint = match kind {
            Kind::Cabinet => Joint::Slide {
                value: 0.0,
                max: 0.12,
            },
            Kind::Stove => Joint::Knob {
                value: 0.0,
                max: std::f64::consts::FRAC_PI_2,
            },
            _ => Joint::None,
        };
        Self {
            name: name.to_string(),
            kind,
            parts,
            pos,
            joint,
            fixed: matches!(
                kind,
                Kind::Cabinet | Kind::Stove | Kind::Basket | Kind::Plate
            ),
            support: Support::Table,
        }
    }

    fn slide_offset(&self) -> [f64; 3] {
        match self.joint {
            Joint::Slide { value, .. } => SLIDE_AXIS.map(|a| a * value),
            _ => [0.0; 3],
        }
    }

    /// World box of part `i`.
    pub fn part_box(&self, i: usize) -> Aabb {
        let p = &self.parts[i];
        let b = p.local.translated(self.pos);
        if p.jointed {
            b.translated(self.slide_offset())
        } else {
            b
        }
    }

    pub fn boxes(&self) -> impl Iterator<Item = (usize, Aabb)> + '_ {
        (0..self.parts.len()).map(|i| (i, self.part_box(i)))
    }

    /// World box around every part.
    pub fn bounds(&self) -> Aabb {
        let mut b = self.part_box(0);
        for i in 1..self.parts.len() {
            b = b.union(&self.part_box(i));
        }
        b
    }

    /// Movable objects narrow enough for the gripper.
    pub fn graspable(&self) -> bool {
        if self.fixed {
            return false;
        }
        let s = self.bounds().size();
        s[0].min(s[1]) <= MAX_GRASP_WIDTH
    }

    /// The part a grasp takes on a fixture (handle or knob).
    pub fn grip_part(&self) -> Option<usize> {
        self.parts
            .iter()
            .position(|p| matches!(p.role, Role::Handle | Role::Knob))
    }

    pub fn knob_on(&self) -> bool {
        matches!(self.joint, Joint::Knob { value, .. } if value >= KNOB_ON)
    }
}

fn part(min: [f64; 3], max: [f64; 3], role: Role, look: Look, color: [f32; 3]) -> Part {
    Part {
        local: Aabb::new(min, max),
        role,
        look,
        color,
        jointed: false,
    }
}

fn shade(c: [f32; 3], f: f32) -> [f32; 3] {
    c.map(|v| (v * f).min(1.0))
}

/// Container walls around a floor: four boxes of thickness `t`.
fn walls(sx: f64, sy: f64, z0: f64, z1: f64, t: f64, color: [f32; 3]) -> Vec<Part> {
    let (hx, hy) = (sx / 2.0, sy / 2.0);
    vec![
        part(
            [-hx, -hy, z0],
            [hx, -hy + t, z1],
            Role::Wall,
            Look::Box,
            color,
        ),
        part(
            [-hx, hy - t, z0],
            [hx, hy, z1],
            Role::Wall,
            Look::Box,
            color,
        ),
        part(
            [-hx, -hy + t, z0],
            [-hx + t, hy - t, z1],
            Role::Wall,
            Look::Box,
            color,
        ),
        part(
            [hx - t, -hy + t, z0],
            [hx, hy - t, z1],
            Role::Wall,
            Look::Box,
            color,
        ),
    ]
}

fn build_parts(kind: Kind, size: [f64; 3], color: [f32; 3]) -> Vec<Part> {
    let [sx, sy, sz] = size;
    let (hx, hy) = (sx / 2.0, sy / 2.0);
    match kind {
        Kind::Block => vec![part(
            [-hx, -hy, 0.0],
            [hx, hy, sz],
            Role::Solid,
            Look::Box,
            color,
        )],
        Kind::Cylinder => vec![part(
            [-hx, -hy, 0.0],
            [hx, hy, sz],
            Role::Solid,
            Look::Cylinder,
            color,
        )],
        Kind::Plate => vec![part(
            [-hx, -hy, 0.0],
            [hx, hy, sz],
            Role::Solid,
            Look::Cylinder,
            color,
        )],
        Kind::Bowl => {
            let t = 0.006;
            let mut v = vec![part(
                [-hx + t, -hy + t, 0.0],
                [hx - t, hy - t, t],
                Role::Floor,
                Look::Cylinder,
                shade(color, 0.8),
            )];
            v.extend(walls(sx, sy, 0.0, sz, t, color));
            v
        }
        Kind::Basket => {
            let t = 0.008;
            let mut v = vec![part(
                [-hx + t, -hy + t, 0.0],
                [hx - t, hy - t, 0.01],
                Role::Floor,
                Look::Box,
                shade(color, 0.75),
            )];
            v.extend(walls(sx, sy, 0.0, sz, t, color));
            v
        }
        Kind::Cabinet => cabinet_parts(color),
        Kind::Stove => stove_parts(color),
    }
}

/// A cabinet 16 cm deep, 20 cm wide, 19 cm tall, front face at -x, with one drawer
/// (z 0.10..0.17) that slides out towards the arm, and a top to set things on.
fn cabinet_parts(color: [f32; 3]) -> Vec<Part> {
    let dark = shade(color, 0.7);
    let mut v = vec![
        part(
            [-0.08, -0.1, 0.0],
            [0.08, 0.1, 0.1],
            Role::Solid,
            Look::Box,
            color,
        ),
        part(
            [-0.08, -0.1, 0.1],
            [0.08, -0.095, 0.17],
            Role::Solid,
            Look::Box,
            color,
        ),
        part(
            [-0.08, 0.095, 0.1],
            [0.08, 0.1, 0.17],
            Role::Solid,
            Look::Box,
            color,
        ),
        part(
            [0.075, -0.095, 0.1],
            [0.08, 0.095, 0.17],
            Role::Solid,
            Look::Box,
            color,
        ),
        part(
            [-0.08, -0.1, 0.17],
            [0.08, 0.1, 0.19],
            Role::Solid,
            Look::Box,
            color,
        ),
    ];
    let tray = [
        part(
            [-0.07, -0.09, 0.1],
            [0.07, 0.09, 0.11],
            Role::Floor,
            Look::Box,
            dark,
        ),
        part(
            [-0.08, -0.095, 0.1],
            [-0.07, 0.095, 0.165],
            Role::Wall,
            Look::Box,
            color,
        ),
        part(
            [0.065, -0.09, 0.1],
            [0.075, 0.09, 0.165],
            Role::Wall,
            Look::Box,
            dark,
        ),
        part(
            [-0.07, -0.095, 0.1],
            [0.065, -0.09, 0.165],
            Role::Wall,
            Look::Box,
            dark,
        ),
        part(
            [-0.07, 0.09, 0.1],
            [0.065, 0.095, 0.165],
            Role::Wall,
            Look::Box,
            dark,
        ),
        part(
            [-0.115, -0.015, 0.125],
            [-0.08, 0.015, 0.145],
            Role::Handle,
            Look::Box,
            [0.75, 0.75, 0.78],
        ),
    ];
    for mut p in tray {
        p.jointed = true;
        v.push(p);
    }
    v
}

/// A flat stove 20 cm square, 3 cm tall, a burner plate on top and a knob at the front.
fn stove_parts(color: [f32; 3]) -> Vec<Part> {
    vec![
        part(
            [-0.1, -0.1, 0.0],
            [0.1, 0.1, 0.03],
            Role::Solid,
            Look::Box,
            color,
        ),
        part(
            [-0.035, -0.07, 0.03],
            [0.095, 0.07, 0.035],
            Role::Burner,
            Look::Cylinder,
            [0.2, 0.2, 0.22],
        ),
        part(
            [-0.1, -0.015, 0.03],
            [-0.07, 0.015, 0.06],
            Role::Knob,
            Look::Cylinder,
            [0.85, 0.85, 0.85],
        ),
    ]
}

/// Every object of one episode.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Scene {
    pub objects: Vec<Object>,
}

impl Scene {
    pub fn index(&self, name: &str) -> Option<usize> {
        self.objects.iter().position(|o| o.name == name)
    }

    /// `root` and everything resting on it, directly or through other objects.
    pub fn carried_by(&self, root: usize) -> Vec<usize> {
        let mut set = vec![root];
        let mut grew = true;
        while grew {
            grew = false;
            for (i, o) in self.objects.iter().enumerate() {
                if let Support::Part { obj, .. } = o.support {
                    if set.contains(&obj) && !set.contains(&i) {
                        set.push(i);
                        grew = true;
                    }
                }
            }
        }
        set
    }

    /// Objects resting (directly or not) on the jointed parts of fixture `fx`.
    pub fn carried_by_joint(&self, fx: usize) -> Vec<usize> {
        let mut out = Vec::new();
        for (i, o) in self.objects.iter().enumerate() {
            if let Support::Part { obj, part } = o.support {
                if obj == fx && self.objects[fx].parts[part].jointed {
                    for j in self.carried_by(i) {
                        if !out.contains(&j) {
                            out.push(j);
                        }
                    }
                }
            }
        }
        out
    }

    pub fn translate(&mut self, ids: &[usize], d: [f64; 3]) {
        for &i in ids {
            let p = &mut self.objects[i].pos;
            for k in 0..3 {
                p[k] += d[k];
            }
        }
    }

    /// Where an object with footprint `fp` (and bottom at or above `from_z`) comes to rest
    /// when let go: the highest top under it, ignoring `exclude`.
    pub fn rest_height(&self, fp: &Aabb, from_z: f64, exclude: &[usize]) -> (f64, Support) {
        let mut best = (0.0, Support::Table);
        for (i, o) in self.objects.iter().enumerate() {
            if exclude.contains(&i) || o.support == Support::Held {
                continue;
            }
            for (pi, b) in o.boxes() {
                if o.parts[pi].role == Role::Handle {
                    continue;
                }
                if fp.xy_overlap(&b) > 1e-3 && b.max[2] <= from_z + 1e-6 && b.max[2] > best.0 {
                    best = (b.max[2], Support::Part { obj: i, part: pi });
                }
            }
        }
        best
    }

    /// Lets object `i` (and what it carries) drop onto whatever is below it.
    pub fn settle(&mut self, i: usize) {
        let group = self.carried_by(i);
        let b = self.objects[i].bounds();
        let (z, sup) = self.rest_height(&b, b.min[2], &group);
        self.translate(&group, [0.0, 0.0, z - b.min[2]]);
        self.objects[i].support = sup;
    }

    /// The largest interpenetration between parts of different objects (0 when none).
    pub fn worst_penetration(&self) -> f64 {
        let mut worst: f64 = 0.0;
        let n = self.objects.len();
        for i in 0..n {
            for j in i + 1..n {
                let (a, b) = (&self.objects[i], &self.objects[j]);
                if a.bounds().overlap(&b.bounds()) <= 0.0 {
                    continue;
                }
                for (_, x) in a.boxes() {
                    for (_, y) in b.boxes() {
                        worst = worst.max(x.overlap(&y));
                    }
                }
            }
        }
        for o in &self.objects {
            for (_, b) in o.boxes() {
                worst = worst.max(-b.min[2]);
            }
        }
        worst
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn released_block_settles_in_bowl_and_moves_with_it() {
        let mut s = Scene {
            objects: vec![
                Object::new(
                    "bowl",
                    Kind::Bowl,
                    Kind::Bowl.default_size(),
                    [0.1; 3],
                    [0.5, 0.0, 0.0],
                ),
                Object::new(
                    "cube",
                    Kind::Block,
                    [0.03; 3],
                    [0.8, 0.1, 0.1],
                    [0.5, 0.0, 0.2],
                ),
            ],
        };
        s.settle(1);
        assert!((s.objects[1].pos[2] - 0.006).abs() < 1e-12);
        assert!(matches!(
            s.objects[1].support,
            Support::Part { obj: 0, part: 0 }
        ));
        let g = s.carried_by(0);
        s.translate(&g, [0.1, 0.0, 0.0]);
        assert!((s.objects[1].pos[0] - 0.6).abs() < 1e-12);
        assert_eq!(s.worst_penetration(), 0.0);
    }
}
