//! The gripper and what it does to the scene: contact (the hand and what it carries never
//! enter the table or another object: such a motion is refused), grasping (closing fingers stop
//! on an object between them and hold it), releasing (the object drops onto the highest support
//! below it), and the articulations a grasp drives (drawer slide, stove knob).

use super::geom::Aabb;
use super::scene::{Joint, Role, Scene, Support, SLIDE_AXIS};
use nalgebra::{Isometry3, Vector3};
use robot::ur5::wrap_pi;
use rudder_robot as robot;
use serde::Serialize;

/// Flange to fingertip centre (the TCP) along the flange's z axis.
pub const FLANGE_TO_TCP: f64 = 0.16;
pub const MAX_OPENING: f64 = 0.09;
/// Finger travel per control step (0.2 m/s at 20 Hz).
pub const FINGER_STEP: f64 = 0.01;
const FINGER_THICK: f64 = 0.012;
const FINGER_WIDTH: f64 = 0.02;
const FINGER_LEN: f64 = 0.05;
/// A drawer handle or knob slips out of the fingers when the hand strays this far.
const SLIP: f64 = 0.02;

/// What the fingers hold.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub enum Held {
    /// A loose object; `offset` is its position minus the TCP at the grasp.
    Object { obj: usize, offset: [f64; 3] },
    Handle {
        obj: usize,
        tcp0: [f64; 3],
        value0: f64,
    },
    Knob {
        obj: usize,
        tcp0: [f64; 3],
        yaw0: f64,
        value0: f64,
    },
}

impl Held {
    pub fn obj(&self) -> usize {
        match *self {
            Held::Object { obj, .. } | Held::Handle { obj, .. } | Held::Knob { obj, .. } => obj,
        }
    }
}

/// Why a hand motion was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum Refusal {
    Table,
    Object(usize),
    /// The drawer is at the end of its travel.
    JointStop(usize),
}

/// The TCP of a flange pose.
pub fn tcp_of(flange: &Isometry3<f64>) -> Vector3<f64> {
    flange.translation.vector + flange.rotation * Vector3::new(0.0, 0.0, FLANGE_TO_TCP)
}

/// Heading of the hand about the world z axis (0 when the fingers close along world y).
pub fn yaw_of(flange: &Isometry3<f64>) -> f64 {
    let x = flange.rotation * Vector3::x();
    x.y.atan2(x.x)
}

/// World boxes of the two fingers, the palm and the wrist for a flange pose and opening.
pub fn hand_boxes(flange: &Isometry3<f64>, width: f64) -> [Aabb; 4] {
    let l = FLANGE_TO_TCP;
    let yo = width / 2.0 + FINGER_THICK / 2.0;
    let fz = l - FINGER_LEN / 2.0;
    let wrist_h = (l - FINGER_LEN - 0.03) / 2.0;
    // (centre, half extents) in the flange frame.
    let local = [
        (
            [0.0, yo, fz],
            [FINGER_WIDTH / 2.0, FINGER_THICK / 2.0, FINGER_LEN / 2.0],
        ),
        (
            [0.0, -yo, fz],
            [FINGER_WIDTH / 2.0, FINGER_THICK / 2.0, FINGER_LEN / 2.0],
        ),
        ([0.0, 0.0, l - FINGER_LEN - 0.015], [0.015, 0.06, 0.015]),
        ([0.0, 0.0, wrist_h], [0.03, 0.03, wrist_h]),
    ];
    let r = flange.rotation.to_rotation_matrix();
    let m = r.matrix();
    local.map(|(c, h)| {
        let wc = flange * nalgebra::Point3::new(c[0], c[1], c[2]);
        let wh: [f64; 3] =
            std::array::from_fn(|i| (0..3).map(|j| m[(i, j)].abs() * h[j]).sum::<f64>());
        Aabb::new(
            [wc.x - wh[0], wc.y - wh[1], wc.z - wh[2]],
            [wc.x + wh[0], wc.y + wh[1], wc.z + wh[2]],
        )
    })
}

/// The scene plus the gripper's state.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct World {
    pub scene: Scene,
    /// Distance between the fingers' inner faces.
    pub width: f64,
    pub held: Option<Held>,
}

impl World {
    pub fn new(scene: Scene) -> Self {
        Self {
            scene,
            width: MAX_OPENING,
            held: None,
        }
    }

    /// First part of the scene (outside `skip`) that `b` enters, or the table.
    fn hit(&self, b: &Aabb, skip: &dyn Fn(usize, usize) -> bool) -> Option<Refusal> {
        if b.min[2] < -super::geom::TOUCH_EPS {
            return Some(Refusal::Table);
        }
        for (i, o) in self.scene.objects.iter().enumerate() {
            if !o.bounds().penetrates(b) {
                continue;
            }
            for (pi, pb) in o.boxes() {
                if !skip(i, pi) && pb.penetrates(b) {
                    return Some(Refusal::Object(i));
                }
            }
        }
        None
    }

    /// Whether the empty hand at `flange` with `width` enters anything.
    pub fn hand_hits(&self, flange: &Isometry3<f64>, width: f64) -> Option<Refusal> {
        let group = self.moving_group();
        let skip = |i: usize, pi: usize| self.skip_part(&group, i, pi);
        hand_boxes(flange, width)
            .iter()
            .find_map(|b| self.hit(b, &skip))
    }

    /// Objects that move with the hand (the held one and what rests on it).
    fn moving_group(&self) -> Vec<usize> {
        match self.held {
            Some(Held::Object { obj, .. }) => self.scene.carried_by(obj),
            Some(Held::Handle { obj, .. }) => self.scene.carried_by_joint(obj),
            _ => Vec::new(),
        }
    }

    fn skip_part(&self, group: &[usize], i: usize, pi: usize) -> bool {
        if group.contains(&i) {
            return true;
        }
        match self.held {
            Some(Held::Handle { obj, .. }) => obj == i && self.scene.objects[i].parts[pi].jointed,
            Some(Held::Knob { obj, .. }) => {
                obj == i && self.scene.objects[i].parts[pi].role == Role::Knob
            }
            _ => false,
        }
    }

    /// Moves the hand to `to` with everything it drives, or refuses (and changes
    /// nothing) if the hand, what it carries or a driven drawer would enter something.
    pub fn move_hand(&mut self, to: &Isometry3<f64>) -> Result<(), Refusal> {
        let t1 = tcp_of(to);
        // A handle or knob slips out when the hand leaves it.
        let slipped = match self.held {
            Some(Held::Handle { tcp0, .. }) => {
                (t1.y - tcp0[1]).abs() > SLIP || (t1.z - tcp0[2]).abs() > SLIP
            }
            Some(Held::Knob { tcp0, .. }) => (t1 - Vector3::from(tcp0)).norm() > SLIP,
            _ => false,
        };
        if slipped {
            self.held = None;
        }
        let group = self.moving_group();
        let skip = |i: usize, pi: usize| self.skip_part(&group, i, pi);
        for b in hand_boxes(to, self.width) {
            if let Some(r) = self.hit(&b, &skip) {
                return Err(r);
            }
        }
        match self.held {
            None => Ok(()),
            Some(Held::Object { obj, offset }) => {
                let p = self.scene.objects[obj].pos;
                let d: [f64; 3] = std::array::from_fn(|k| t1[k] + offset[k] - p[k]);
                for &g in &group {
                    for (_, b) in self.scene.objects[g].boxes() {
                        if let Some(r) = self.hit(&b.translated(d), &skip) {
                            return Err(r);
                        }
                    }
                }
                self.scene.translate(&group, d);
                Ok(())
            }
            Some(Held::Handle { obj, tcp0, value0 }) => {
                let Joint::Slide { value, max } = self.scene.objects[obj].joint else {
                    return Ok(());
                };
                let along: f64 = (0..3).map(|k| (t1[k] - tcp0[k]) * SLIDE_AXIS[k]).sum();
                let new = value0 + along;
                if !(0.0..=max).contains(&new) {
                    return Err(Refusal::JointStop(obj));
                }
                let d = SLIDE_AXIS.map(|a| a * (new - value));
                let o = &self.scene.objects[obj];
                let fixed_skip =
                    |i: usize, pi: usize| i == obj || group.contains(&i) || skip(i, pi);
                for (pi, b) in o.boxes() {
                    if o.parts[pi].jointed {
                        if let Some(r) = self.hit(&b.translated(d), &fixed_skip) {
                            return Err(r);
                        }
                    }
                }
                let o = &self.scene.objects[obj];
                let carried_skip =
                    |i: usize, pi: usize| group.contains(&i) || (i == obj && o.parts[pi].jointed);
                for &g in &group {
                    for (_, b) in self.scene.objects[g].boxes() {
                        if let Some(r) = self.hit(&b.translated(d), &carried_skip) {
                            return Err(r);
                        }
                    }
                }
                self.scene.objects[obj].joint = Joint::Slide { value: new, max };
                self.scene.translate(&group, d);
                Ok(())
            }
            Some(Held::Knob {
                obj, yaw0, value0, ..
            }) => {
                if let Joint::Knob { max, .. } = self.scene.objects[obj].joint {
                    let turned = wrap_pi(yaw_of(to) - yaw0);
                    let value = (value0 + turned).clamp(0.0, max);
                    self.scene.objects[obj].joint = Joint::Knob { value, max };
                }
                Ok(())
            }
        }
    }

    /// Drives the fingers one step: `g > 0` closes, `g < 0` opens (LIBERO's sign), near zero
    /// keeps them. Opening lets go of whatever is held.
    pub fn actuate(&mut self, flange: &Isometry3<f64>, g: f64) {
        if g < -0.1 {
            if let Some(Held::Object { obj, .. }) = self.held.take() {
                self.scene.objects[obj].support = Support::Table;
                self.scene.settle(obj);
            }
            let w = (self.width + FINGER_STEP).min(MAX_OPENING);
            if self.hand_hits(flange, w).is_none() {
                self.width = w;
            }
        } else if g > 0.1 && self.held.is_none() {
            let target = (self.width - FINGER_STEP).max(0.0);
            if let Some((h, w)) = self.grasp_candidate(flange, target) {
                self.width = w;
                self.held = Some(h);
                if let Held::Object { obj, offset } = h {
                    let tcp = tcp_of(flange);
                    let p = self.scene.objects[obj].pos;
                    let d: [f64; 3] = std::array::from_fn(|k| tcp[k] + offset[k] - p[k]);
                    let group = self.scene.carried_by(obj);
                    self.scene.translate(&group, d);
                    self.scene.objects[obj].support = Support::Held;
                }
            } else if self.hand_hits(flange, target).is_none() {
                self.width = target;
            }
        }
    }

    /// Something the closing fingers reach this step: what they would hold, at what width.
    fn grasp_candidate(&self, flange: &Isometry3<f64>, target: f64) -> Option<(Held, f64)> {
        let tcp = tcp_of(flange);
        let u = flange.rotation * Vector3::y();
        let v = flange.rotation * Vector3::x();
        let mut best: Option<(Held, f64)> = None;
        for (i, o) in self.scene.objects.iter().enumerate() {
            let (b, part) = if o.graspable() {
                (o.bounds(), None)
            } else if let Some(p) = o.grip_part() {
                (o.part_box(p), Some(p))
            } else {
                continue;
            };
            let s = b.size();
            let c = Vector3::from(b.centre()) - tcp;
            let eu = u.x.abs() * s[0] + u.y.abs() * s[1] + u.z.abs() * s[2];
            let ev = v.x.abs() * s[0] + v.y.abs() * s[1] + v.z.abs() * s[2];
            let cu = c.dot(&u);
            // Inside the open fingers, and the closing ones get to it this step; an object off
            // centre is pushed to the middle by the first finger that touches it.
            let between = cu.abs() + eu / 2.0 <= self.width / 2.0 + super::geom::TOUCH_EPS;
            let reached = cu.abs() + eu / 2.0 >= target / 2.0;
            let along = c.dot(&v).abs() <= ev / 2.0 + FINGER_WIDTH / 2.0 - 0.005;
            let zo = (tcp.z + FINGER_LEN).min(b.max[2]) - tcp.z.max(b.min[2]);
            if between && reached && along && zo >= 0.008 && best.is_none_or(|(_, w)| eu > w) {
                let t = [tcp.x, tcp.y, tcp.z];
                let h = match (part, o.joint) {
                    (None, _) => {
                        let shift = u * -cu;
                        let group = self.scene.carried_by(i);
                        let skip = |j: usize, _: usize| group.contains(&j);
                        let d = [shift.x, shift.y, shift.z];
                        let blocked = group.iter().any(|&g| {
                            self.scene.objects[g]
                                .boxes()
                                .any(|(_, b)| self.hit(&b.translated(d), &skip).is_some())
                        });
                        if blocked {
                            continue;
                        }
                        Held::Object {
                            obj: i,
                            offset: std::array::from_fn(|k| o.pos[k] + d[k] - t[k]),
                        }
                    }
                    (Some(_), Joint::Slide { value, .. }) => Held::Handle {
                        obj: i,
                        tcp0: t,
                        value0: value,
                    },
                    (Some(_), Joint::Knob { value, .. }) => Held::Knob {
                        obj: i,
                        tcp0: t,
                        yaw0: yaw_of(flange),
                        value0: value,
                    },
                    (Some(_), Joint::None) => continue,
                };
                best = Some((h, eu));
            }
        }
        best
    }

    /// Deepest interpenetration of the hand (and carried objects) with the rest, for checks.
    pub fn hand_penetration(&self, flange: &Isometry3<f64>) -> f64 {
        let group = self.moving_group();
        let mut worst: f64 = 0.0;
        for hb in hand_boxes(flange, self.width) {
            worst = worst.max(-hb.min[2]);
            for (i, o) in self.scene.objects.iter().enumerate() {
                for (pi, b) in o.boxes() {
                    if !self.skip_part(&group, i, pi) {
                        worst = worst.max(hb.overlap(&b));
                    }
                }
            }
        }
        worst
    }
}
