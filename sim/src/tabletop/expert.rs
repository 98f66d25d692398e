//! Scripted experts. One generic planner turns each goal predicate into a motion script
//! (pick and place, pull a drawer, turn a knob), re-planned from the current scene whenever
//! a predicate is still false after its script ran. Manner words in the instruction change the
//! script: speed words scale the speed profile, route words change the approach path, so the
//! demos tie those words to visibly different motion.

use super::env::{TabletopEnv, CONTROL_HZ};
use super::geom::Aabb;
use super::physics::{hand_boxes, Held, FINGER_STEP, MAX_OPENING};
use super::scene::{Kind, Role, Scene, TABLE};
use super::tasks::Predicate;
use nalgebra::{UnitQuaternion, Vector3};
use rudder_robot::control::EefDeltaScale;
use serde::Serialize;
use std::collections::VecDeque;
use std::f64::consts::PI;

/// Cruise speed of the TCP without manner words (m/s).
pub const BASE_SPEED: f64 = 0.3;

/// How the instruction asks the motion to be done.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Manner {
    /// Multiplies the cruise speed.
    pub speed: f64,
    /// Slow final approaches and extra clearance.
    pub careful: bool,
    /// Travel high and come straight down.
    pub from_above: bool,
    /// Come in sideways from +y.
    pub from_left: bool,
}

impl Manner {
    pub fn parse(instruction: &str) -> Self {
        let s = instruction.to_lowercase();
        let has = |w: &str| s.split(|c: char| !c.is_ascii_alphabetic()).any(|x| x == w);
        let mut m = Manner {
            speed: 1.0,
            careful: false,
            from_above: s.contains("from above"),
            from_left: s.contains("from the left"),
        };
        if has("slowly") {
            m.speed = 0.5;
        }
        if has("quickly") {
            m.speed = 1.7;
        }
        if has("carefully") {
            m.speed = 0.6;
            m.careful = true;
        }
        m
    }
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Cmd {
    /// Move the TCP to `to` with heading `yaw` at `speed` m/s; `tol` is how close counts.
    Move {
        to: [f64; 3],
        yaw: f64,
        speed: f64,
        tol: f64,
        grip: f64,
    },
    /// Close (or open) the fingers for up to `steps` steps, holding position.
    Grip { close: bool, steps: usize },
}

const OPEN: f64 = -1.0;
const CLOSE: f64 = 1.0;
/// Above the highest thing around when travelling.
const TRAVEL_CLEAR: f64 = 0.04;
/// Fingertips above an object's top before descending onto it.
const HOVER: f64 = 0.03;
const RELEASE_GAP: f64 = 0.012;
const SIDE_OFFSET: f64 = 0.15;
const ABOVE_EXTRA: f64 = 0.1;
const MAX_REPLANS: usize = 5;

#[derive(Debug, Clone)]
pub struct Expert {
    manner: Manner,
    goal: Vec<Predicate>,
    plan: VecDeque<Cmd>,
    stage: usize,
    replans: usize,
    cmd_steps: usize,
    grip: f64,
}

impl Expert {
    pub fn new(env: &TabletopEnv) -> Self {
        Self {
            manner: Manner::parse(env.instruction()),
            goal: env.task().goal.clone(),
            plan: VecDeque::new(),
            stage: 0,
            replans: 0,
            cmd_steps: 0,
            grip: OPEN,
        }
    }

    pub fn manner(&self) -> Manner {
        self.manner
    }

    /// The next 7-D action.
    pub fn act(&mut self, env: &TabletopEnv) -> [f64; 7] {
        if self.plan.is_empty() {
            let scene = &env.world().scene;
            while self.stage < self.goal.len() && self.goal[self.stage].holds(scene) {
                self.stage += 1;
                self.replans = 0;
            }
            if self.stage >= self.goal.len() || self.replans > MAX_REPLANS {
                return [0.0, 0.0, 0.0, 0.0, 0.0, 0.0, self.grip];
            }
            self.replans += 1;
            let pred = self.goal[self.stage].clone();
            self.plan = Planner {
                env,
                m: self.manner,
            }
            .plan(&pred);
            self.cmd_steps = 0;
        }
        let Some(cmd) = self.plan.front().copied() else {
            return [0.0, 0.0, 0.0, 0.0, 0.0, 0.0, self.grip];
        };
        self.cmd_steps += 1;
        match cmd {
            Cmd::Grip { close, steps } => {
                self.grip = if close { CLOSE } else { OPEN };
                let settled = if close {
                    env.world().held.is_some() && self.cmd_steps >= 2
                } else {
                    self.cmd_steps >= 3
                };
                if settled || self.cmd_steps >= steps {
                    self.next();
                }
                [0.0, 0.0, 0.0, 0.0, 0.0, 0.0, self.grip]
            }
            Cmd::Move {
                to,
                yaw,
                speed,
                tol,
                grip,
            } => {
                self.grip = grip;
                let scale = EefDeltaScale::default();
                let tcp = Vector3::from(env.tcp());
                let err = Vector3::from(to) - tcp;
                let f = env.flange();
                let want = UnitQuaternion::from_axis_angle(&Vector3::z_axis(), yaw)
                    * UnitQuaternion::from_axis_angle(&Vector3::x_axis(), PI);
                let rerr = (want * f.rotation.inverse()).scaled_axis();
                let dist = err.norm();
                if dist <= tol && rerr.norm() < 0.03 {
                    self.next();
                    return self.act(env);
                }
                // Proportional approach capped at the cruise speed: the arm lags its targets
                // by the safety filter's acceleration limit, and this keeps it from overshooting.
                let vmax = speed / CONTROL_HZ;
                let step_len = vmax.min(0.5 * dist);
                let dp = if dist > 1e-12 {
                    err * (step_len / dist)
                } else {
                    err
                };
                let rmax = 0.12;
                let dr = if rerr.norm() > rmax {
                    rerr * (rmax / rerr.norm())
                } else {
                    rerr
                };
                // The action moves the flange; with the fingers down a pure translation moves
                // the TCP the same, and rotation about the flange axis leaves the TCP in place.
                let a = |x: f64, s: f64| (x / s).clamp(-1.0, 1.0);
                [
                    a(dp.x, scale.position_m),
                    a(dp.y, scale.position_m),
                    a(dp.z, scale.position_m),
                    a(dr.x, scale.rotation_rad),
                    a(dr.y, scale.rotation_rad),
                    a(dr.z, scale.rotation_rad),
                    grip,
                ]
            }
        }
    }

    fn next(&mut self) {
        self.plan.pop_front();
        self.cmd_steps = 0;
    }
}

struct Planner<'a> {
    env: &'a TabletopEnv,
    m: Manner,
}

impl Planner<'_> {
    fn scene(&self) -> &Scene {
        &self.env.world().scene
    }

    fn speed(&self) -> f64 {
        BASE_SPEED * self.m.speed
    }

    /// Speed of the last few centimetres onto an object.
    fn fine_speed(&self) -> f64 {
        if self.m.careful {
            self.speed() * 0.4
        } else {
            self.speed() * 0.7
        }
    }

    fn mv(&self, to: [f64; 3], speed: f64, tol: f64, grip: f64) -> Cmd {
        Cmd::Move {
            to,
            yaw: 0.0,
            speed,
            tol,
            grip,
        }
    }

    /// Highest top of anything not in `skip` (the table counts as 0).
    fn max_top(&self, skip: &[usize], region: Option<&Aabb>) -> f64 {
        let mut top: f64 = 0.0;
        for (i, o) in self.scene().objects.iter().enumerate() {
            if skip.contains(&i) {
                continue;
            }
            for (_, b) in o.boxes() {
                if region.is_none_or(|r| r.xy_overlap(&b) > 0.0) {
                    top = top.max(b.max[2]);
                }
            }
        }
        top
    }

    /// Travel, then come down to `to`, following the manner's route. `below` is how far the
    /// lowest carried point sits under the TCP; `grip` what the fingers hold meanwhile.
    #[allow(clippy::too_many_arguments)]
    fn approach(
        &self,
        out: &mut VecDeque<Cmd>,
        cur: [f64; 3],
        to: [f64; 3],
        hover_z: f64,
        below: f64,
        skip: &[usize],
        grip: f64,
    ) {
        let clear = if self.m.careful {
            TRAVEL_CLEAR + 0.03
        } else {
            TRAVEL_CLEAR
        };
        let mut travel = (self.max_top(skip, None) + clear + below)
            .max(hover_z)
            .max(cur[2]);
        if self.m.from_above {
            travel += ABOVE_EXTRA;
        }
        travel = travel.min(0.45);
        // Near the edge of the arm's reach a high route may have no IK solution: come down
        // until both ends of the travel leg are reachable.
        let reachable = |p: [f64; 3]| {
            let f = super::env::down_pose(p, 0.0);
            let (lo, hi) = rudder_robot::Ur5Model::position_limits();
            self.env
                .model()
                .ik_nearest(&f, &self.env.joints(), &lo, &hi)
                .is_ok()
        };
        while travel > hover_z.max(cur[2]) + 0.02
            && !(reachable([to[0], to[1], travel]) && reachable([cur[0], cur[1], travel]))
        {
            travel -= 0.02;
        }
        let (v, via) = (self.speed(), 0.012);
        out.push_back(self.mv([cur[0], cur[1], travel], v, via, grip));
        if self.m.from_left {
            let side = [to[0], to[1] + SIDE_OFFSET, 0.0];
            // The sideways slide must clear everything in its corridor, hand included.
            let corridor = Aabb::new(
                [to[0] - 0.08, to[1] - 0.08, 0.0],
                [to[0] + 0.08, to[1] + SIDE_OFFSET + 0.08, 0.0],
            );
            let slide_z = (self.max_top(skip, Some(&corridor)) + 0.025 + below).max(hover_z);
            out.push_back(self.mv([side[0], side[1], travel], v, via, grip));
            out.push_back(self.mv([side[0], side[1], slide_z], v, via, grip));
            out.push_back(self.mv([to[0], to[1], slide_z], self.fine_speed(), 0.004, grip));
        } else {
            out.push_back(self.mv([to[0], to[1], travel], v, 0.004, grip));
            if self.m.from_above {
                out.push_back(self.mv([to[0], to[1], hover_z], v, 0.004, grip));
            }
        }
        out.push_back(self.mv([to[0], to[1], hover_z], v, 0.004, grip));
        out.push_back(self.mv(to, self.fine_speed(), 0.003, grip));
    }

    fn plan(&self, pred: &Predicate) -> VecDeque<Cmd> {
        let mut out = VecDeque::new();
        let s = self.scene();
        let idx = |n: &str| s.index(n);
        match pred {
            Predicate::On(a, b) | Predicate::In(a, b) | Predicate::Above(a, b) => {
                let (Some(ia), Some(ib)) = (idx(a), idx(b)) else {
                    return out;
                };
                let inside = matches!(pred, Predicate::In(..));
                if let Some(xy) = self.target_on(ia, ib, inside) {
                    self.pick_place(&mut out, ia, xy);
                }
            }
            Predicate::LeftOf(a, b) | Predicate::RightOf(a, b) | Predicate::Near(a, b, _) => {
                let (Some(ia), Some(ib)) = (idx(a), idx(b)) else {
                    return out;
                };
                if let Some(xy) = self.target_beside(ia, ib, pred) {
                    self.pick_place(&mut out, ia, xy);
                }
            }
            Predicate::Open(c) | Predicate::Closed(c) => {
                if let Some(ic) = idx(c) {
                    self.slide(&mut out, ic, matches!(pred, Predicate::Open(_)));
                }
            }
            Predicate::TurnedOn(c) | Predicate::TurnedOff(c) => {
                if let Some(ic) = idx(c) {
                    self.turn(&mut out, ic, matches!(pred, Predicate::TurnedOn(_)));
                }
            }
        }
        out
    }

    /// Where to set `a` down on (or in) `b`: the centre of the surface that counts.
    fn target_on(&self, _a: usize, b: usize, inside: bool) -> Option<[f64; 2]> {
        let o = &self.scene().objects[b];
        let part = o.parts.iter().enumerate().find(|(i, p)| match o.kind {
            Kind::Stove => p.role == Role::Burner,
            Kind::Cabinet if inside => p.role == Role::Floor,
            Kind::Cabinet => *i == 4,
            _ if inside || o.kind.is_container() => p.role == Role::Floor,
            _ => true,
        })?;
        let mut r = o.part_box(part.0);
        if o.kind == Kind::Cabinet && inside {
            r.max[0] = o.pos[0] - 0.085;
        }
        let c = r.centre();
        Some([c[0], c[1]])
    }

    /// A free table spot that makes the relation true.
    fn target_beside(&self, a: usize, b: usize, pred: &Predicate) -> Option<[f64; 2]> {
        let s = self.scene();
        let (ba, bb) = (s.objects[a].bounds(), s.objects[b].bounds());
        let cb = bb.centre();
        let (ha, hb) = (ba.size(), bb.size());
        // Offsets (dx, dy) from b's centre that make the relation true with margin,
        // nearest first.
        let mut cands: Vec<[f64; 2]> = Vec::new();
        for i in 0..9 {
            for j in 0..9 {
                let dx = (i as f64 - 4.0) * 0.02;
                let ring = (ha[1] + hb[1]) / 2.0 + 0.035 + j as f64 * 0.015;
                let ok = match pred {
                    Predicate::LeftOf(..) => Some([dx, ring.max(0.075)]),
                    Predicate::RightOf(..) => Some([dx, -ring.max(0.075)]),
                    Predicate::Near(_, _, d) => {
                        let r =
                            ((ha[0].max(ha[1]) + hb[0].max(hb[1])) / 2.0 + 0.035 + j as f64 * 0.01)
                                .min(d - 0.01);
                        let t = i as f64 * std::f64::consts::TAU / 9.0;
                        Some([r * t.cos(), r * t.sin()])
                    }
                    _ => None,
                };
                if let Some(c) = ok {
                    cands.push(c);
                }
            }
        }
        cands.sort_by(|p, q| p[0].hypot(p[1]).total_cmp(&q[0].hypot(q[1])));
        let carried = s.carried_by(a);
        for d in cands {
            let p = [cb[0] + d[0], cb[1] + d[1]];
            let fp = Aabb::new(
                [p[0] - ha[0] / 2.0, p[1] - ha[1] / 2.0, 0.0],
                [p[0] + ha[0] / 2.0, p[1] + ha[1] / 2.0, 0.0],
            );
            let on_table = TABLE.contains_xy([fp.min[0], fp.min[1]], 0.03)
                && TABLE.contains_xy([fp.max[0], fp.max[1]], 0.03);
            let free = s
                .objects
                .iter()
                .enumerate()
                .all(|(i, o)| carried.contains(&i) || o.bounds().xy_gap(&fp) >= 0.03);
            if on_table && free {
                return Some(p);
            }
        }
        None
    }

    /// Grasp height for an object: fingertips just above its base, palm clear of its top.
    fn grasp_z(b: &Aabb) -> f64 {
        (b.min[2] + 0.008).max(b.max[2] - 0.04)
    }

    fn pick_place(&self, out: &mut VecDeque<Cmd>, a: usize, xy: [f64; 2]) {
        let s = self.scene();
        let group = s.carried_by(a);
        let b = s.objects[a].bounds();
        let c = b.centre();
        let grasp = [c[0], c[1], Self::grasp_z(&b)];
        let holding = matches!(self.env.world().held, Some(Held::Object { obj, .. }) if obj == a);
        if !holding {
            if self.env.world().held.is_some() || self.env.world().width < MAX_OPENING - 1e-9 {
                out.push_back(Cmd::Grip {
                    close: false,
                    steps: (MAX_OPENING / FINGER_STEP) as usize + 1,
                });
            }
            self.approach(out, self.env.tcp(), grasp, b.max[2] + HOVER, 0.0, &[], OPEN);
            out.push_back(Cmd::Grip {
                close: true,
                steps: (MAX_OPENING / FINGER_STEP) as usize + 2,
            });
            // The place is planned once the object is in hand, from where it actually sits
            // between the fingers.
            return;
        }
        let tcp = self.env.tcp();
        let from = tcp;
        // The object's footprint centred on the target; the TCP goes where that puts it.
        let size = b.size();
        let fp = Aabb::new(
            [xy[0] - size[0] / 2.0, xy[1] - size[1] / 2.0, 0.0],
            [xy[0] + size[0] / 2.0, xy[1] + size[1] / 2.0, 0.0],
        );
        let xy = [xy[0] - (c[0] - tcp[0]), xy[1] - (c[1] - tcp[1])];
        // Where the TCP ends up when the object's bottom is `RELEASE_GAP` above the surface
        // under it, and the fingers clear everything around the release point.
        let below = tcp[2] - b.min[2];
        let surface = self.max_top(&group, Some(&fp));
        let mut release_z = surface + RELEASE_GAP + below;
        let flange = super::env::down_pose([xy[0], xy[1], release_z], 0.0);
        let width = self.env.world().width;
        let mut hand_fp = hand_boxes(&flange, width)[0];
        for hb in hand_boxes(&flange, width).iter().take(2) {
            hand_fp = hand_fp.union(hb);
        }
        let under_fingers = self.max_top(&group, Some(&hand_fp));
        release_z = release_z.max(under_fingers + 0.006);
        let hover = release_z + 0.03;
        self.approach(
            out,
            from,
            [xy[0], xy[1], release_z],
            hover,
            below,
            &group,
            CLOSE,
        );
        out.push_back(Cmd::Grip {
            close: false,
            steps: 4,
        });
        let top_after = surface + size[2];
        let lift = (top_after + HOVER).max(release_z + 0.05);
        out.push_back(self.mv([xy[0], xy[1], lift], self.fine_speed(), 0.01, OPEN));
    }

    /// Pull the drawer out (open) or push it in, holding the handle.
    fn slide(&self, out: &mut VecDeque<Cmd>, c: usize, open: bool) {
        let o = &self.scene().objects[c];
        let Some(hp) = o.grip_part() else { return };
        let hb = o.part_box(hp);
        let super::scene::Joint::Slide { value, max } = o.joint else {
            return;
        };
        let hc = hb.centre();
        let grasp = [hc[0], hc[1], hb.min[2] + 0.004];
        if self.env.world().held.is_some() || self.env.world().width < MAX_OPENING - 1e-9 {
            out.push_back(Cmd::Grip {
                close: false,
                steps: 10,
            });
        }
        self.approach(
            out,
            self.env.tcp(),
            grasp,
            hb.max[2] + HOVER,
            0.0,
            &[],
            OPEN,
        );
        out.push_back(Cmd::Grip {
            close: true,
            steps: 11,
        });
        let goal = if open { max - 0.004 } else { 0.002 };
        let to = [grasp[0] - (goal - value), grasp[1], grasp[2]];
        out.push_back(self.mv(to, self.fine_speed(), 0.003, CLOSE));
        out.push_back(Cmd::Grip {
            close: false,
            steps: 4,
        });
        out.push_back(self.mv([to[0], to[1], to[2] + 0.08], self.fine_speed(), 0.01, OPEN));
    }

    /// Grasp the knob and turn the wrist.
    fn turn(&self, out: &mut VecDeque<Cmd>, c: usize, on: bool) {
        let o = &self.scene().objects[c];
        let Some(kp) = o.grip_part() else { return };
        let kb = o.part_box(kp);
        let super::scene::Joint::Knob { value, .. } = o.joint else {
            return;
        };
        let kc = kb.centre();
        let grasp = [kc[0], kc[1], kb.min[2] + 0.006];
        if self.env.world().held.is_some() || self.env.world().width < MAX_OPENING - 1e-9 {
            out.push_back(Cmd::Grip {
                close: false,
                steps: 10,
            });
        }
        self.approach(
            out,
            self.env.tcp(),
            grasp,
            kb.max[2] + HOVER,
            0.0,
            &[],
            OPEN,
        );
        out.push_back(Cmd::Grip {
            close: true,
            steps: 11,
        });
        let turn = if on {
            1.0 - value.min(0.3)
        } else {
            -value - 0.05
        };
        out.push_back(Cmd::Move {
            to: grasp,
            yaw: turn,
            speed: self.fine_speed(),
            tol: 0.004,
            grip: CLOSE,
        });
        out.push_back(Cmd::Grip {
            close: false,
            steps: 4,
        });
        out.push_back(Cmd::Move {
            to: [grasp[0], grasp[1], grasp[2] + 0.08],
            yaw: turn,
            speed: self.fine_speed(),
            tol: 0.01,
            grip: OPEN,
        });
    }
}
