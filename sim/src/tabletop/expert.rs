//! Scripted experts. One generic planner turns each goal predicate into a motion script
//! (pick and place, pull a drawer, turn a knob), re-planned from the current scene whenever
//! a predicate is still false after its script ran. Manner words in the instruction change the
//! script: speed words scale the speed profile, route words change the approach path, so the
//! demos tie those words to visibly different motion.

use super::env::{TabletopEnv, CONTROL_HZ};
use super::geom::Aabb;
use super::physics::{hand_boxes, yaw_of, Held, FINGER_STEP, MAX_OPENING};
use super::scene::{Joint, Kind, Object, Role, Scene, KNOB_ON, TABLE};
use super::tasks::{Placement, Predicate, Task};
use nalgebra::{UnitQuaternion, Vector3};
use rudder_robot::control::EefDeltaScale;
use serde::{Deserialize, Serialize};
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
    /// Bring the empty fingers to about `width` apart (up to `steps` steps), holding position.
    Width { width: f64, steps: usize },
}

const OPEN: f64 = -1.0;
const CLOSE: f64 = 1.0;
/// Gripper action that leaves the fingers as they are.
const KEEP: f64 = 0.0;
/// Above the highest thing around when travelling.
const TRAVEL_CLEAR: f64 = 0.04;
/// Fingertips above an object's top before descending onto it.
const HOVER: f64 = 0.03;
const RELEASE_GAP: f64 = 0.012;
const SIDE_OFFSET: f64 = 0.15;
const ABOVE_EXTRA: f64 = 0.1;
const MAX_REPLANS: usize = 5;
/// TCP speed out of and into snug spots (m/s): slow enough that the path stays straight.
const SNUG_SPEED: f64 = 0.04;
/// Gaps (m) beside a carried object and beside a finger below which a spot counts as snug.
const SNUG_OBJECT: f64 = 0.008;
const SNUG_FINGER: f64 = 0.005;
/// How far above its release point `HoldAbove` keeps the carried object's TCP.
const HOLD_ABOVE: f64 = 0.09;
/// Nearest and farthest centre distance `DropBeside` looks at from the release point.
const BESIDE_MIN: f64 = 0.06;
const BESIDE_MAX: f64 = 0.3;

/// A scripted failure that looks close to success (RoboFuME's hard negatives). Each changes
/// only the script of the task's last goal predicate; earlier stages run normally.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Perturbation {
    /// (On/In/Above) Pick the object, carry it over the target and stay there holding it,
    /// 9 cm above the release point; never release.
    HoldAbove,
    /// (On/In/Above) Set the object down on the table at the nearest free spot at least 6 cm
    /// from where it should go (clear of the target, so the predicate stays false).
    DropBeside,
    /// (On/In/Above) Never grasp: close the empty fingers, bring the TCP to where it would
    /// let go of the object and stay.
    EmptyGripper,
    /// (On/In/Above with another graspable object) Pick another movable object (one of the
    /// same kind first, else the nearest) and place it where the goal's object should go.
    WrongObject,
    /// (Open/Closed drawer, TurnedOn/TurnedOff knob) Move the articulation only half way from
    /// where it starts to the predicate's threshold, release and lift away.
    DrawerHalf,
}

impl Perturbation {
    pub const ALL: [Perturbation; 5] = [
        Perturbation::HoldAbove,
        Perturbation::DropBeside,
        Perturbation::EmptyGripper,
        Perturbation::WrongObject,
        Perturbation::DrawerHalf,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Perturbation::HoldAbove => "hold_above",
            Perturbation::DropBeside => "drop_beside",
            Perturbation::EmptyGripper => "empty_gripper",
            Perturbation::WrongObject => "wrong_object",
            Perturbation::DrawerHalf => "drawer_half",
        }
    }

    /// Whether the perturbation makes sense for `task`, judged on its last goal predicate
    /// (and, for `WrongObject` and `DrawerHalf`, on the task's objects and their start).
    pub fn applies_to(self, task: &Task) -> bool {
        let Some(last) = task.goal.last() else {
            return false;
        };
        let spec = |n: &str| task.objects.iter().find(|o| o.name == n);
        let place = matches!(
            last,
            Predicate::On(..) | Predicate::In(..) | Predicate::Above(..)
        );
        match self {
            Perturbation::HoldAbove | Perturbation::DropBeside | Perturbation::EmptyGripper => {
                place
            }
            Perturbation::WrongObject => {
                let (Predicate::On(a, b) | Predicate::In(a, b) | Predicate::Above(a, b)) = last
                else {
                    return false;
                };
                let named = |j: usize, n: &str| task.objects.get(j).is_some_and(|o| o.name == n);
                task.objects.iter().any(|o| {
                    o.name != *a
                        && o.name != *b
                        && Object::new(&o.name, o.kind, o.size, o.color, [0.0; 3]).graspable()
                        && !matches!(o.placement,
                            Placement::On(j) | Placement::In(j) if named(j, a) || named(j, b))
                })
            }
            Perturbation::DrawerHalf => match last {
                Predicate::Open(c) | Predicate::Closed(c) => spec(c).is_some_and(|o| {
                    o.kind == Kind::Cabinet
                        && if matches!(last, Predicate::Open(_)) {
                            o.joint <= 0.55
                        } else {
                            o.joint >= 0.3
                        }
                }),
                Predicate::TurnedOn(c) | Predicate::TurnedOff(c) => spec(c).is_some_and(|o| {
                    let v = o.joint * std::f64::consts::FRAC_PI_2;
                    o.kind == Kind::Stove
                        && if matches!(last, Predicate::TurnedOn(_)) {
                            v <= KNOB_ON / 4.0
                        } else {
                            v >= KNOB_ON
                        }
                }),
                _ => false,
            },
        }
    }
}

#[derive(Debug, Clone)]
pub struct Expert {
    manner: Manner,
    goal: Vec<Predicate>,
    plan: VecDeque<Cmd>,
    stage: usize,
    replans: usize,
    cmd_steps: usize,
    grip: f64,
    /// Applied to the last goal predicate (only where it applies to the task).
    perturbation: Option<Perturbation>,
    /// The perturbed script's last plan has been issued.
    script_done: bool,
    /// `WrongObject`'s choice, made once.
    wrong: Option<usize>,
    idle: bool,
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
            perturbation: None,
            script_done: false,
            wrong: None,
            idle: false,
        }
    }

    /// The expert with `p` applied to the task's last goal predicate (earlier stages run
    /// normally). Where `p` does not apply to the task (`Perturbation::applies_to`) this is
    /// the plain expert. Once its script has run it idles (zero motion, gripper as it was).
    pub fn with_perturbation(env: &TabletopEnv, p: Perturbation) -> Self {
        let mut e = Self::new(env);
        e.perturbation = p.applies_to(env.task()).then_some(p);
        e
    }

    /// The perturbation in effect (`None` for the plain expert or where it does not apply).
    pub fn perturbation(&self) -> Option<Perturbation> {
        self.perturbation
    }

    /// Whether the last action was the idle one: the script is over (goal reached, perturbed
    /// script done, or re-planning given up).
    pub fn is_idle(&self) -> bool {
        self.idle
    }

    pub fn manner(&self) -> Manner {
        self.manner
    }

    /// The next 7-D action.
    pub fn act(&mut self, env: &TabletopEnv) -> [f64; 7] {
        self.idle = false;
        if self.plan.is_empty() {
            let scene = &env.world().scene;
            let last = self.goal.len().saturating_sub(1);
            let perturbed = |stage: usize| self.perturbation.is_some() && stage == last;
            while self.stage < self.goal.len()
                && !perturbed(self.stage)
                && self.goal[self.stage].holds(scene)
            {
                self.stage += 1;
                self.replans = 0;
            }
            if self.stage >= self.goal.len() || self.replans > MAX_REPLANS || self.script_done {
                self.idle = true;
                return [0.0, 0.0, 0.0, 0.0, 0.0, 0.0, self.grip];
            }
            self.replans += 1;
            let pred = self.goal[self.stage].clone();
            let planner = Planner {
                env,
                m: self.manner,
            };
            match self.perturbation {
                Some(p) if self.stage == last => {
                    let (plan, last_plan) = planner.plan_perturbed(&pred, p, &mut self.wrong);
                    self.plan = plan;
                    self.script_done = last_plan;
                }
                _ => self.plan = planner.plan(&pred),
            }
            self.cmd_steps = 0;
        }
        let Some(cmd) = self.plan.front().copied() else {
            self.idle = self.script_done;
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
            Cmd::Width { width, steps } => {
                let w = env.world().width;
                self.grip = if w > width + FINGER_STEP / 2.0 {
                    CLOSE
                } else if w < width - FINGER_STEP / 2.0 {
                    OPEN
                } else {
                    KEEP
                };
                if self.grip == KEEP || self.cmd_steps >= steps {
                    self.grip = KEEP;
                    self.next();
                    return self.act(env);
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

/// A narrowed finger opening for a grasp (see `Planner::pregrasp`).
#[derive(Debug, Clone, Copy)]
struct Pregrasp {
    width: f64,
    /// Reached from the current opening in whole steps, without opening fully first.
    from_current: bool,
    /// No margin beside the object: the hover point must be met to a fraction of a millimetre.
    tight: bool,
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
            Predicate::At(a, x, y, r) => {
                if let Some(ia) = idx(a) {
                    let xy = self.target_at(ia, [*x, *y], *r);
                    self.pick_place(&mut out, ia, xy);
                }
            }
            Predicate::Open(c) | Predicate::Closed(c) => {
                if let Some(ic) = idx(c) {
                    if let Joint::Slide { max, .. } = s.objects[ic].joint {
                        let open = matches!(pred, Predicate::Open(_));
                        self.slide(&mut out, ic, if open { max - 0.004 } else { 0.002 });
                    }
                }
            }
            Predicate::TurnedOn(c) | Predicate::TurnedOff(c) => {
                if let Some(ic) = idx(c) {
                    if let Joint::Knob { value, .. } = s.objects[ic].joint {
                        let on = matches!(pred, Predicate::TurnedOn(_));
                        let turn = if on {
                            1.0 - value.min(0.3)
                        } else {
                            -value - 0.05
                        };
                        self.turn(&mut out, ic, turn);
                    }
                }
            }
        }
        out
    }

    /// The script of `p` for the last goal predicate and whether it is the script's last
    /// plan (pick-and-place scripts come in two plans: the pick, then from the grasp as it
    /// happened, the rest).
    fn plan_perturbed(
        &self,
        pred: &Predicate,
        p: Perturbation,
        wrong: &mut Option<usize>,
    ) -> (VecDeque<Cmd>, bool) {
        let mut out = VecDeque::new();
        let s = self.scene();
        let idx = |n: &str| s.index(n);
        match (pred, p) {
            (
                Predicate::On(a, b) | Predicate::In(a, b) | Predicate::Above(a, b),
                Perturbation::HoldAbove
                | Perturbation::DropBeside
                | Perturbation::EmptyGripper
                | Perturbation::WrongObject,
            ) => {
                let (Some(ia), Some(ib)) = (idx(a), idx(b)) else {
                    return (out, true);
                };
                let inside = matches!(pred, Predicate::In(..));
                let Some(xy) = self.target_on(ia, ib, inside) else {
                    return (out, true);
                };
                let obj = match p {
                    Perturbation::WrongObject => {
                        if wrong.is_none() {
                            *wrong = self.wrong_object(ia, ib);
                        }
                        match *wrong {
                            Some(iw) => iw,
                            None => return (out, true),
                        }
                    }
                    _ => ia,
                };
                if p == Perturbation::EmptyGripper {
                    self.empty_release(&mut out, ia, xy);
                    return (out, true);
                }
                if !self.holding(obj) {
                    self.pick_place(&mut out, obj, xy);
                    return (out, false);
                }
                match p {
                    Perturbation::HoldAbove => self.place(&mut out, obj, xy, Some(HOLD_ABOVE)),
                    Perturbation::DropBeside => {
                        if let Some(spot) = self.beside_spot(ia, xy) {
                            self.place(&mut out, obj, spot, None);
                        }
                    }
                    _ => self.place(&mut out, obj, xy, None),
                }
                (out, true)
            }
            (Predicate::Open(c) | Predicate::Closed(c), Perturbation::DrawerHalf) => {
                if let Some(ic) = idx(c) {
                    if let Joint::Slide { value, max } = s.objects[ic].joint {
                        let goal = if matches!(pred, Predicate::Open(_)) {
                            0.75 * max
                        } else {
                            0.05 * max
                        };
                        self.slide(&mut out, ic, (value + goal) / 2.0);
                    }
                }
                (out, true)
            }
            (Predicate::TurnedOn(c) | Predicate::TurnedOff(c), Perturbation::DrawerHalf) => {
                if let Some(ic) = idx(c) {
                    if let Joint::Knob { value, .. } = s.objects[ic].joint {
                        let goal = if matches!(pred, Predicate::TurnedOn(_)) {
                            KNOB_ON
                        } else {
                            0.1
                        };
                        self.turn(&mut out, ic, (goal - value) / 2.0);
                    }
                }
                (out, true)
            }
            _ => (self.plan(pred), false),
        }
    }

    fn holding(&self, a: usize) -> bool {
        matches!(self.env.world().held, Some(Held::Object { obj, .. }) if obj == a)
    }

    /// `WrongObject`'s pick: a graspable object other than `a` and `b`, not resting on either
    /// and not carrying `a`; one of `a`'s kind first, then the nearest to `a`.
    fn wrong_object(&self, a: usize, b: usize) -> Option<usize> {
        let s = self.scene();
        let (on_a, on_b) = (s.carried_by(a), s.carried_by(b));
        let ca = s.objects[a].bounds().centre();
        s.objects
            .iter()
            .enumerate()
            .filter(|&(i, o)| {
                i != a
                    && i != b
                    && o.graspable()
                    && !on_a.contains(&i)
                    && !on_b.contains(&i)
                    && !s.carried_by(i).contains(&a)
            })
            .min_by(|(_, o), (_, q)| {
                let key = |o: &Object| {
                    let c = o.bounds().centre();
                    (
                        o.kind != s.objects[a].kind,
                        (c[0] - ca[0]).hypot(c[1] - ca[1]),
                    )
                };
                let (ko, kq) = (key(o), key(q));
                ko.0.cmp(&kq.0).then(ko.1.total_cmp(&kq.1))
            })
            .map(|(i, _)| i)
    }

    /// `DropBeside`'s spot for `a`: a free table spot 6 to 30 cm from the release point `xy`,
    /// its footprint 2 cm clear of everything (the target included); near spots on the side
    /// `a` comes from are preferred (score: distance from `xy` plus half the distance from
    /// where `a` is), so the carry does not pass over the target.
    fn beside_spot(&self, a: usize, xy: [f64; 2]) -> Option<[f64; 2]> {
        let s = self.scene();
        let ba = s.objects[a].bounds();
        let (ha, ca) = (ba.size(), ba.centre());
        let carried = s.carried_by(a);
        let mut best: Option<([f64; 2], f64)> = None;
        let mut r = BESIDE_MIN;
        while r <= BESIDE_MAX + 1e-9 {
            for k in 0..24 {
                let t = k as f64 * std::f64::consts::TAU / 24.0;
                let p = [xy[0] + r * t.cos(), xy[1] + r * t.sin()];
                let score = r + 0.5 * (p[0] - ca[0]).hypot(p[1] - ca[1]);
                if best.is_some_and(|(_, b)| b <= score) {
                    continue;
                }
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
                    .all(|(i, o)| carried.contains(&i) || o.bounds().xy_gap(&fp) >= 0.02);
                if on_table && free {
                    best = Some((p, score));
                }
            }
            r += 0.01;
        }
        best.map(|(p, _)| p)
    }

    /// `EmptyGripper`: close the empty fingers and bring the TCP to where it would release
    /// `a` at `xy` (had it been grasped as the expert grasps it), then stay.
    fn empty_release(&self, out: &mut VecDeque<Cmd>, a: usize, xy: [f64; 2]) {
        let s = self.scene();
        let group = s.carried_by(a);
        let b = s.objects[a].bounds();
        let size = b.size();
        let fp = Aabb::new(
            [xy[0] - size[0] / 2.0, xy[1] - size[1] / 2.0, 0.0],
            [xy[0] + size[0] / 2.0, xy[1] + size[1] / 2.0, 0.0],
        );
        let below = Self::grasp_z(&b) - b.min[2];
        let mut release_z = self.max_top(&group, Some(&fp)) + RELEASE_GAP + below;
        let flange = super::env::down_pose([xy[0], xy[1], release_z], 0.0);
        let hands = hand_boxes(&flange, 0.0);
        let hand_fp = hands[0].union(&hands[1]);
        release_z = release_z.max(self.max_top(&group, Some(&hand_fp)) + 0.006);
        if self.env.world().held.is_some() || self.env.world().width > 1e-9 {
            if self.env.world().held.is_some() {
                out.push_back(Cmd::Grip {
                    close: false,
                    steps: (MAX_OPENING / FINGER_STEP) as usize + 1,
                });
            }
            out.push_back(Cmd::Grip {
                close: true,
                steps: (MAX_OPENING / FINGER_STEP) as usize + 2,
            });
        }
        self.approach(
            out,
            self.env.tcp(),
            [xy[0], xy[1], release_z],
            release_z + 0.03,
            0.0,
            &[],
            CLOSE,
        );
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

    /// Where to set `a` down for `At`: `xy` when its footprint is free there, else the nearest
    /// free table spot within 0.6 `r` of it (so the centre still lands inside the circle).
    fn target_at(&self, a: usize, xy: [f64; 2], r: f64) -> [f64; 2] {
        let s = self.scene();
        let ha = s.objects[a].bounds().size();
        let carried = s.carried_by(a);
        let free = |p: [f64; 2]| {
            let fp = Aabb::new(
                [p[0] - ha[0] / 2.0, p[1] - ha[1] / 2.0, 0.0],
                [p[0] + ha[0] / 2.0, p[1] + ha[1] / 2.0, 0.0],
            );
            TABLE.contains_xy([fp.min[0], fp.min[1]], 0.0)
                && TABLE.contains_xy([fp.max[0], fp.max[1]], 0.0)
                && s.objects
                    .iter()
                    .enumerate()
                    .all(|(i, o)| carried.contains(&i) || o.bounds().xy_gap(&fp) >= 0.01)
        };
        if free(xy) {
            return xy;
        }
        let mut d = 0.005;
        while d <= 0.6 * r {
            for k in 0..16 {
                let t = k as f64 * std::f64::consts::TAU / 16.0;
                let p = [xy[0] + d * t.cos(), xy[1] + d * t.sin()];
                if free(p) {
                    return p;
                }
            }
            d += 0.005;
        }
        xy
    }

    /// How wide the fingers come down from `hover` to `grasp` around `a`. `None`: fully open,
    /// the usual. Otherwise the widest opening the fingers can reach (whole finger steps from
    /// fully open, or from where they are) that enters nothing else on the way down: first with
    /// 5 mm beside `a` and 2 mm to the rest, else touching (`tight`, e.g. the cream cheese in
    /// the bowl, 59 mm of fingers and cheese in 63 mm).
    fn pregrasp(&self, a: usize, grasp: [f64; 3], hover: f64) -> Option<Pregrasp> {
        let s = self.scene();
        let world = self.env.world();
        // The fingers close along y (yaw 0).
        let size = s.objects[a].bounds().size()[1];
        let flange = super::env::down_pose(grasp, 0.0);
        let rise = (hover - grasp[2]).max(0.0);
        let carried = s.carried_by(a);
        let fits = |w: f64, beside: f64, inflate: f64| {
            let hands = hand_boxes(&flange, w);
            // What the closing fingers would meet first: nothing but `a` may stand between them.
            let (lo, hi) = if hands[0].min[1] < hands[1].min[1] {
                (hands[0], hands[1])
            } else {
                (hands[1], hands[0])
            };
            let gap = Aabb::new(
                [lo.min[0], lo.max[1], lo.min[2]],
                [lo.max[0], hi.min[1], lo.max[2]],
            );
            let other_between = s.objects.iter().enumerate().any(|(i, o)| {
                !carried.contains(&i) && o.boxes().any(|(_, pb)| pb.penetrates(&gap))
            });
            w >= size + 2.0 * beside - 1e-9
                && !other_between
                && !hands.iter().any(|hb| {
                    let mut swept = *hb;
                    swept.max[2] += rise;
                    for k in 0..2 {
                        swept.min[k] -= inflate;
                        swept.max[k] += inflate;
                    }
                    s.objects.iter().enumerate().any(|(i, o)| {
                        i != a
                            && o.bounds().penetrates(&swept)
                            && o.boxes().any(|(_, pb)| pb.penetrates(&swept))
                    })
                })
        };
        if fits(MAX_OPENING, 0.0, 0.0) {
            return None;
        }
        let steps = (MAX_OPENING / FINGER_STEP).round() as i32;
        let mut cands: Vec<(f64, bool)> = (1..=steps)
            .map(|k| (MAX_OPENING - k as f64 * FINGER_STEP, false))
            .collect();
        let w0 = world.width;
        if world.held.is_none() && w0 < MAX_OPENING - 1e-9 {
            for k in -steps..steps {
                let w = w0 + k as f64 * FINGER_STEP;
                if (0.0..MAX_OPENING - 1e-9).contains(&w) {
                    cands.push((w, true));
                }
            }
        }
        cands.sort_by(|p, q| q.0.total_cmp(&p.0));
        let pick = |beside: f64, inflate: f64, tight: bool| {
            cands
                .iter()
                .find(|(w, _)| fits(*w, beside, inflate))
                .map(|&(width, from_current)| Pregrasp {
                    width,
                    from_current,
                    tight,
                })
        };
        pick(0.005, 0.002, false).or_else(|| pick(0.0, 0.0, true))
    }

    /// The highest top of anything closer than `SNUG_OBJECT` to the sides of the carried
    /// `group` or `SNUG_FINGER` to the fingers', if any.
    fn snug_top(&self, group: &[usize]) -> Option<f64> {
        let s = self.scene();
        let hands = hand_boxes(&self.env.flange(), self.env.world().width);
        let carried = group
            .iter()
            .flat_map(|&g| s.objects[g].boxes().map(|(_, b)| (b, SNUG_OBJECT)))
            .chain(hands.into_iter().take(2).map(|b| (b, SNUG_FINGER)));
        let mut top: Option<f64> = None;
        for (b, margin) in carried {
            let mut near = b;
            for k in 0..2 {
                near.min[k] -= margin;
                near.max[k] += margin;
            }
            for (i, o) in s.objects.iter().enumerate() {
                if group.contains(&i) {
                    continue;
                }
                for (_, pb) in o.boxes() {
                    if pb.penetrates(&near) {
                        top = Some(top.map_or(pb.max[2], |t| t.max(pb.max[2])));
                    }
                }
            }
        }
        top
    }

    /// Whether closing the fingers where they are would take `a`: it sits between them, as
    /// where the forward expert just let go of it. The only way to get an object out of a
    /// container too narrow for the open fingers beside it (the cream cheese in the bowl).
    fn between_fingers(&self, a: usize) -> bool {
        let w = self.env.world();
        if w.held.is_some() || w.width <= 0.0 {
            return false;
        }
        let [f0, f1] = {
            let h = hand_boxes(&self.env.flange(), w.width);
            [h[0], h[1]]
        };
        let b = self.scene().objects[a].bounds();
        let z = (f0.max[2].min(b.max[2])) - (f0.min[2].max(b.min[2]));
        // Fingers apart along `k`, overlapping the object along the other axis `j`.
        let inside = |k: usize| {
            let j = 1 - k;
            let (lo, hi) = if f0.min[k] < f1.min[k] {
                (f0, f1)
            } else {
                (f1, f0)
            };
            let tcp = self.env.tcp();
            b.min[k] >= lo.max[k] - 1e-4
                && b.max[k] <= hi.min[k] + 1e-4
                && (b.centre()[j] - tcp[j]).abs() <= b.size()[j] / 2.0
        };
        z >= 0.009 && (inside(0) || inside(1))
    }

    /// Grasp height for an object: fingertips just above its base, palm clear of its top.
    fn grasp_z(b: &Aabb) -> f64 {
        (b.min[2] + 0.008).max(b.max[2] - 0.04)
    }

    fn pick_place(&self, out: &mut VecDeque<Cmd>, a: usize, xy: [f64; 2]) {
        let b = self.scene().objects[a].bounds();
        let c = b.centre();
        let grasp = [c[0], c[1], Self::grasp_z(&b)];
        if !self.holding(a) && self.between_fingers(a) {
            out.push_back(Cmd::Grip {
                close: true,
                steps: (MAX_OPENING / FINGER_STEP) as usize + 2,
            });
            return;
        }
        if !self.holding(a) {
            let hover = b.max[2] + HOVER;
            match self.pregrasp(a, grasp, hover) {
                None => {
                    if self.env.world().held.is_some()
                        || self.env.world().width < MAX_OPENING - 1e-9
                    {
                        out.push_back(Cmd::Grip {
                            close: false,
                            steps: (MAX_OPENING / FINGER_STEP) as usize + 1,
                        });
                    }
                    self.approach(out, self.env.tcp(), grasp, hover, 0.0, &[], OPEN);
                }
                Some(p) => {
                    if !p.from_current && self.env.world().held.is_some() {
                        out.push_back(Cmd::Grip {
                            close: false,
                            steps: (MAX_OPENING / FINGER_STEP) as usize + 1,
                        });
                    }
                    // Rise (opening fully unless the width comes from where the fingers are),
                    // set the width up there, come down keeping it.
                    let first = out.len();
                    self.approach(out, self.env.tcp(), grasp, hover, 0.0, &[], KEEP);
                    if let (false, Some(Cmd::Move { grip, .. })) =
                        (p.from_current, out.get_mut(first))
                    {
                        *grip = OPEN;
                    }
                    let steps = 2 * (MAX_OPENING / FINGER_STEP) as usize + 2;
                    out.insert(
                        first + 1,
                        Cmd::Width {
                            width: p.width,
                            steps,
                        },
                    );
                    if p.tight {
                        // Touching fingers leave no room for the usual 4 mm at the hover point,
                        // nor for a path bent by a fast start (see `place`).
                        let n = out.len();
                        if let Some(Cmd::Move { tol, .. }) = out.get_mut(n - 2) {
                            *tol = 0.0003;
                        }
                        if let Some(Cmd::Move { speed, .. }) = out.get_mut(n - 1) {
                            *speed = SNUG_SPEED;
                        }
                    }
                }
            }
            out.push_back(Cmd::Grip {
                close: true,
                steps: (MAX_OPENING / FINGER_STEP) as usize + 2,
            });
            // The place is planned once the object is in hand, from where it actually sits
            // between the fingers.
            return;
        }
        self.place(out, a, xy, None);
    }

    /// Carry the held `a` so that it comes down centred on `xy` and let go; with `hold_above`
    /// stop that far above the release point instead, still holding it.
    fn place(&self, out: &mut VecDeque<Cmd>, a: usize, xy: [f64; 2], hold_above: Option<f64>) {
        let s = self.scene();
        let group = s.carried_by(a);
        let b = s.objects[a].bounds();
        let c = b.centre();
        let tcp = self.env.tcp();
        let mut from = tcp;
        // Out of a snug spot (the cheese between the bowl's walls) slowly and straight up: a
        // fast start from rest bends the path by millimetres (the safety filter's acceleration
        // limits), enough to catch a wall.
        if let Some(top) = self.snug_top(&group) {
            let z = top + (tcp[2] - b.min[2]) + 0.01;
            if z > tcp[2] {
                from = [tcp[0], tcp[1], z];
                out.push_back(self.mv(from, SNUG_SPEED, 0.004, CLOSE));
            }
        }
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
        if let Some(h) = hold_above {
            let z = release_z + h;
            self.approach(out, from, [xy[0], xy[1], z], z, below, &group, CLOSE);
            return;
        }
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
    /// `goal` is the slide value to reach (metres pulled out).
    fn slide(&self, out: &mut VecDeque<Cmd>, c: usize, goal: f64) {
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
        let goal = goal.clamp(0.0, max);
        let to = [grasp[0] - (goal - value), grasp[1], grasp[2]];
        out.push_back(self.mv(to, self.fine_speed(), 0.003, CLOSE));
        out.push_back(Cmd::Grip {
            close: false,
            steps: 4,
        });
        out.push_back(self.mv([to[0], to[1], to[2] + 0.08], self.fine_speed(), 0.01, OPEN));
    }

    /// Grasp the knob and turn the wrist.
    /// `turn` is the wrist rotation to apply (radians, + turns on); a fresh grasp is made at
    /// yaw 0, so it is also the final yaw.
    fn turn(&self, out: &mut VecDeque<Cmd>, c: usize, turn: f64) {
        let o = &self.scene().objects[c];
        let Some(kp) = o.grip_part() else { return };
        let kb = o.part_box(kp);
        let super::scene::Joint::Knob { .. } = o.joint else {
            return;
        };
        let kc = kb.centre();
        let grasp = [kc[0], kc[1], kb.min[2] + 0.006];
        // Still holding it (where the forward expert turned it on): turn back from here.
        // Letting go at a turned yaw jams the fingers around the knob (its box and theirs).
        if matches!(self.env.world().held, Some(Held::Knob { obj, .. }) if obj == c) {
            let at = self.env.tcp();
            let yaw = yaw_of(&self.env.flange()) + turn;
            out.push_back(Cmd::Move {
                to: at,
                yaw,
                speed: self.fine_speed(),
                tol: 0.004,
                grip: CLOSE,
            });
            out.push_back(Cmd::Grip {
                close: false,
                steps: 4,
            });
            out.push_back(Cmd::Move {
                to: [at[0], at[1], at[2] + 0.08],
                yaw,
                speed: self.fine_speed(),
                tol: 0.01,
                grip: OPEN,
            });
            return;
        }
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
