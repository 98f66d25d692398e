//! One episode of a task: the simulated UR5 (robot's `Ur5Model`, `JointLimits` and
//! `SafetyFilter`), the world, the cameras and LIBERO's action and observation conventions.
//!
//! Action (7-D, 20 Hz, each in [-1, 1]): flange position delta (x 0.05 m) and axis-angle
//! rotation delta (x 0.5 rad, applied on the left, in the base frame) as robot's
//! `EefDeltaScale` and `ChunkConverter` read them, then the gripper (+1 close, -1 open). The
//! target pose goes through IK (nearest solution within limits) and the safety filter; the
//! resulting joint step is taken unless the hand would enter the table or an object, in which
//! case the arm stops where it is and the refusal is counted.
//!
//! State (8-D, as LIBERO): TCP position, flange orientation as axis-angle, finger positions
//! (+w/2, -w/2).

use super::physics::{tcp_of, Refusal, World, FLANGE_TO_TCP, MAX_OPENING};
use super::render::{Camera, Renderer};
use super::scene::TABLE;
use super::tasks::{Task, TaskError, INIT_STATES};
use nalgebra::{Isometry3, Translation3, UnitQuaternion, Vector3};
use rudder_robot::control::EefDeltaScale;
use rudder_robot::safety::WorkspaceBox;
use rudder_robot::{ImageRgb8, Joints, SafetyConfig, SafetyFilter, SafetyReport, Ur5Model};
use serde::Serialize;
use std::f64::consts::PI;

pub const CONTROL_HZ: f64 = 20.0;
/// LIBERO's 8-D state from a flange pose and the fingers' opening: TCP position, flange
/// orientation as axis-angle, the two finger positions.
pub fn libero_state(flange: &Isometry3<f64>, width: f64) -> [f64; 8] {
    let t = tcp_of(flange);
    let aa = flange.rotation.scaled_axis();
    let h = width / 2.0;
    [t.x, t.y, t.z, aa.x, aa.y, aa.z, h, -h]
}

/// The fingers' opening for the loop's gripper reading (-1 open .. +1 closed).
pub fn width_of_closure(closure: f64) -> f64 {
    (1.0 - closure.clamp(-1.0, 1.0)) * MAX_OPENING / 2.0
}

/// Where every episode starts: TCP 30 cm above the table, fingers down and open.
pub const HOME_TCP: [f64; 3] = [0.45, 0.0, 0.30];

/// The flange box the safety filter keeps (base frame): over the table, above its surface.
pub fn workspace() -> WorkspaceBox {
    WorkspaceBox {
        min: [0.1, -0.6, 0.12],
        max: [0.98, 0.6, 0.75],
    }
}

/// Flange pose with the fingers pointing down, closing along world y rotated by `yaw`.
pub fn down_pose(tcp: [f64; 3], yaw: f64) -> Isometry3<f64> {
    let rot = UnitQuaternion::from_axis_angle(&Vector3::z_axis(), yaw)
        * UnitQuaternion::from_axis_angle(&Vector3::x_axis(), PI);
    let flange = Vector3::from(tcp) - rot * Vector3::new(0.0, 0.0, FLANGE_TO_TCP);
    Isometry3::from_parts(Translation3::from(flange), rot)
}

/// The home joint configuration: the elbow-up IK solution of the home pose.
pub fn home_joints(model: &Ur5Model) -> Joints {
    let target = down_pose(HOME_TCP, 0.0);
    let sols = model
        .ik(&target, 0.0)
        .map(|s| s.solutions)
        .unwrap_or_default();
    let mut best = ([0.0, -1.2, 1.6, -1.97, -1.57, 0.0], f64::NEG_INFINITY);
    for q in sols {
        if q[4].sin().abs() < 0.3 {
            continue;
        }
        let elbow_z = model.fk_all(&q)[2].translation.vector.z;
        if elbow_z > best.1 {
            best = (q, elbow_z);
        }
    }
    best.0
}

#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct CameraConfig {
    pub width: u32,
    pub height: u32,
}

impl Default for CameraConfig {
    fn default() -> Self {
        Self {
            width: 128,
            height: 128,
        }
    }
}

/// Counters an episode keeps.
#[derive(Debug, Clone, Copy, PartialEq, Default, Serialize)]
pub struct EnvStats {
    pub steps: u64,
    /// Motions refused because the hand would have entered the table or an object.
    pub refused_contacts: u64,
    pub ik_failures: u64,
    pub non_finite_actions: u64,
    /// Deepest interpenetration seen after any step (metres); 0 is the invariant.
    pub max_penetration: f64,
}

/// What one step returns.
#[derive(Debug, Clone, PartialEq)]
pub struct StepInfo {
    pub success: bool,
    pub done: bool,
    pub refused: Option<Refusal>,
}

/// A LIBERO-style observation.
#[derive(Debug, Clone, PartialEq)]
pub struct TabletopObs {
    pub state: [f64; 8],
    pub agentview: Option<ImageRgb8>,
    pub wrist: Option<ImageRgb8>,
    pub instruction: String,
}

#[derive(Clone)]
pub struct TabletopEnv {
    model: Ur5Model,
    filter: SafetyFilter,
    lower: Joints,
    upper: Joints,
    q: Joints,
    qd: Joints,
    world: World,
    task: Task,
    instruction: String,
    steps: usize,
    success: bool,
    stats: EnvStats,
    render: Option<(Renderer, CameraConfig)>,
    check_penetration: bool,
}

impl TabletopEnv {
    /// Episode `k` of `task` with init state `k mod 50` drawn from `seed`; `cameras = None`
    /// renders nothing.
    pub fn new(
        task: &Task,
        seed: u64,
        k: usize,
        cameras: Option<CameraConfig>,
    ) -> Result<Self, TaskError> {
        Self::with_instruction(task, seed, k, &task.instruction_for(k), cameras)
    }

    /// Init state `k mod 50` of `seed` with any instruction (e.g. another manner phrase).
    pub fn with_instruction(
        task: &Task,
        seed: u64,
        k: usize,
        instruction: &str,
        cameras: Option<CameraConfig>,
    ) -> Result<Self, TaskError> {
        let scene = task.init_state(seed, k % INIT_STATES)?;
        let model = Ur5Model::ur5();
        let q = home_joints(&model);
        let mut cfg = SafetyConfig::ur5(CONTROL_HZ);
        cfg.workspace = Some((model, workspace()));
        let (lo, hi) = Ur5Model::position_limits();
        let filter = SafetyFilter::new(cfg, &q).map_err(|e| TaskError {
            file: task.file.clone(),
            line: 1,
            message: format!("home pose rejected by the safety filter: {e}"),
        })?;
        Ok(Self {
            model,
            filter,
            lower: lo,
            upper: hi,
            q,
            qd: [0.0; 6],
            world: World::new(scene),
            instruction: instruction.to_string(),
            task: task.clone(),
            steps: 0,
            success: false,
            stats: EnvStats::default(),
            render: cameras.map(|c| (Renderer::new(), c)),
            check_penetration: true,
        })
    }

    /// Reset-free continuation: `prev`'s world (objects, arm, gripper, drawer and knob) under
    /// another task of the same scene, e.g. a backward task from where the forward one ended.
    pub fn continuing(
        prev: TabletopEnv,
        task: &Task,
        instruction: &str,
    ) -> Result<Self, TaskError> {
        let mut env = prev;
        env.switch_task(task, instruction)?;
        Ok(env)
    }

    /// Switches to `task` and `instruction` without touching the world (objects, arm joints
    /// and velocities, gripper, what it holds, drawer and knob): the step counter, the success
    /// flag and the episode's counters start again. `task` must describe the same objects
    /// (names and kinds, in order) as the one the world came from.
    pub fn switch_task(&mut self, task: &Task, instruction: &str) -> Result<(), TaskError> {
        let objects = &self.world.scene.objects;
        let same = task.objects.len() == objects.len()
            && task
                .objects
                .iter()
                .zip(objects)
                .all(|(spec, o)| spec.name == o.name && spec.kind == o.kind);
        if !same {
            return Err(TaskError {
                file: task.file.clone(),
                line: 1,
                message: format!(
                    "task `{}` has other objects than the scene of `{}`; cannot continue without a reset",
                    task.id, self.task.id
                ),
            });
        }
        self.task = task.clone();
        self.instruction = instruction.to_string();
        self.steps = 0;
        self.success = false;
        self.stats = EnvStats::default();
        Ok(())
    }

    /// Names of the objects that left the workspace: centre below the table top or outside the
    /// table's xy extent (objects in the hand count where they are). In a reset-free run this
    /// is the only condition for [`TabletopEnv::intervene`].
    pub fn objects_off_table(&self) -> Vec<String> {
        self.world
            .scene
            .objects
            .iter()
            .filter(|o| {
                let c = o.bounds().centre();
                !(c.iter().all(|v| v.is_finite())
                    && c[2] >= TABLE.max[2]
                    && TABLE.contains_xy([c[0], c[1]], 0.0))
            })
            .map(|o| o.name.clone())
            .collect()
    }

    /// Puts the world back to init state `k mod 50` (drawn from `seed`) of the current task,
    /// the arm at home with open, empty fingers; the step counter, success flag and counters
    /// start again. A reset-free run must call this only when
    /// [`TabletopEnv::objects_off_table`] is non-empty: anything else is a reset.
    pub fn intervene(&mut self, seed: u64, k: usize) -> Result<(), TaskError> {
        let scene = self.task.init_state(seed, k % INIT_STATES)?;
        let q = home_joints(&self.model);
        self.filter.reset(&q).map_err(|e| TaskError {
            file: self.task.file.clone(),
            line: 1,
            message: format!("home pose rejected by the safety filter: {e}"),
        })?;
        self.world = World::new(scene);
        self.q = q;
        self.qd = [0.0; 6];
        self.steps = 0;
        self.success = false;
        self.stats = EnvStats::default();
        Ok(())
    }

    /// The world, for tests and hand-made scenes: changes bypass contacts and support.
    pub fn world_mut(&mut self) -> &mut World {
        &mut self.world
    }

    /// Skips the per-step interpenetration audit (it is an independent check, not physics).
    pub fn without_audit(mut self) -> Self {
        self.check_penetration = false;
        self
    }

    pub fn task(&self) -> &Task {
        &self.task
    }

    pub fn instruction(&self) -> &str {
        &self.instruction
    }

    pub fn world(&self) -> &World {
        &self.world
    }

    pub fn joints(&self) -> Joints {
        self.q
    }

    pub fn joint_velocities(&self) -> Joints {
        self.qd
    }

    pub fn model(&self) -> &Ur5Model {
        &self.model
    }

    pub fn flange(&self) -> Isometry3<f64> {
        self.model.fk(&self.q)
    }

    pub fn tcp(&self) -> [f64; 3] {
        let t = tcp_of(&self.flange());
        [t.x, t.y, t.z]
    }

    pub fn steps(&self) -> usize {
        self.steps
    }

    pub fn success(&self) -> bool {
        self.success
    }

    pub fn done(&self) -> bool {
        self.success || self.steps >= self.task.max_steps
    }

    /// Whether every goal predicate holds now (not latched like `success()`).
    pub fn goal_holds(&self) -> bool {
        self.task.goal.iter().all(|g| g.holds(&self.world.scene))
    }

    pub fn stats(&self) -> EnvStats {
        self.stats
    }

    pub fn safety_report(&self) -> SafetyReport {
        self.filter.report()
    }

    pub fn safety_config(&self) -> &SafetyConfig {
        self.filter.config()
    }

    /// LIBERO's 8-D state.
    pub fn state(&self) -> [f64; 8] {
        libero_state(&self.flange(), self.world.width)
    }

    /// Gripper as the control loop reads it: -1 fully open .. +1 closed.
    pub fn gripper_closure(&self) -> f64 {
        1.0 - 2.0 * self.world.width / MAX_OPENING
    }

    pub fn observe(&mut self) -> TabletopObs {
        let (agentview, wrist) = match &mut self.render {
            Some((r, c)) => {
                let frames = self.model.fk_all(&self.q);
                let agent = r.render(
                    &self.world,
                    &frames,
                    &Camera::agentview(),
                    c.width,
                    c.height,
                );
                let wrist = r.render(
                    &self.world,
                    &frames,
                    &Camera::wrist(&frames[6]),
                    c.width,
                    c.height,
                );
                (Some(agent), Some(wrist))
            }
            None => (None, None),
        };
        TabletopObs {
            state: self.state(),
            agentview,
            wrist,
            instruction: self.instruction.clone(),
        }
    }

    /// One 20 Hz step under a LIBERO 7-D action.
    pub fn step(&mut self, action: &[f64; 7]) -> StepInfo {
        if action.iter().any(|a| !a.is_finite()) {
            self.stats.non_finite_actions += 1;
            return self.advance(None, None);
        }
        let a = action.map(|x| x.clamp(-1.0, 1.0));
        let s = EefDeltaScale::default();
        let f = self.flange();
        let dp = Vector3::new(a[0], a[1], a[2]) * s.position_m;
        let dr = Vector3::new(a[3], a[4], a[5]) * s.rotation_rad;
        let target = Isometry3::from_parts(
            Translation3::from(f.translation.vector + dp),
            UnitQuaternion::from_scaled_axis(dr) * f.rotation,
        );
        let desired = match self
            .model
            .ik_nearest(&target, &self.q, &self.lower, &self.upper)
        {
            Ok(q) => Some(q),
            Err(_) => {
                self.stats.ik_failures += 1;
                None
            }
        };
        self.advance(desired, Some(a[6]))
    }

    /// One step towards joint positions `q` (through the same safety filter and contacts).
    pub fn step_joints(&mut self, q: &Joints, gripper: f64) -> StepInfo {
        if q.iter().any(|x| !x.is_finite()) || !gripper.is_finite() {
            self.stats.non_finite_actions += 1;
            return self.advance(None, None);
        }
        self.advance(Some(*q), Some(gripper.clamp(-1.0, 1.0)))
    }

    fn advance(&mut self, desired: Option<Joints>, gripper: Option<f64>) -> StepInfo {
        let mut out = [0.0; 6];
        self.filter
            .apply(desired.as_ref().map(|q| &q[..]), gripper, &mut out);
        let refused = self.apply_joints(out);
        self.world.actuate(&self.flange(), gripper.unwrap_or(0.0));
        self.finish_step(refused)
    }

    /// Takes the joint step unless it drives the hand into something; on refusal the arm
    /// stops (the filter restarts from rest where the arm is).
    fn apply_joints(&mut self, q: Joints) -> Option<Refusal> {
        let to = self.model.fk(&q);
        match self.world.move_hand(&to) {
            Ok(()) => {
                self.qd = std::array::from_fn(|j| (q[j] - self.q[j]) * CONTROL_HZ);
                self.q = q;
                None
            }
            Err(r) => {
                self.stats.refused_contacts += 1;
                self.qd = [0.0; 6];
                // The current position passed the filter's checks when it was emitted.
                let _ = self.filter.reset(&self.q);
                Some(r)
            }
        }
    }

    fn finish_step(&mut self, refused: Option<Refusal>) -> StepInfo {
        self.steps += 1;
        self.stats.steps += 1;
        if self.check_penetration {
            let p = self
                .world
                .scene
                .worst_penetration()
                .max(self.world.hand_penetration(&self.flange()));
            self.stats.max_penetration = self.stats.max_penetration.max(p);
        }
        if !self.success {
            self.success = self.goal_holds();
        }
        StepInfo {
            success: self.success,
            done: self.done(),
            refused,
        }
    }

    /// Moves the arm to `q` (carrying what it holds) and, when given, sets the gripper's
    /// closure (-1 open .. +1 closed, as `gripper_closure` reports it) without taking a step:
    /// how a copy of the scene is brought in line with an observation.
    pub fn repose(&mut self, q: &Joints, closure: Option<f64>) -> Result<(), String> {
        for (j, &x) in q.iter().enumerate() {
            if !(x.is_finite() && x >= self.lower[j] && x <= self.upper[j]) {
                return Err(format!("joint {j} = {x} outside its limits"));
            }
        }
        if self.apply_joints(*q).is_none() {
            let _ = self.filter.reset(&self.q);
        }
        if let Some(c) = closure.filter(|c| c.is_finite()) {
            self.world.width =
                ((1.0 - c.clamp(-1.0, 1.0)) * 0.5 * MAX_OPENING).clamp(0.0, MAX_OPENING);
        }
        Ok(())
    }

    /// A joint command already filtered elsewhere (robot's control loop): checked against the
    /// limits, then contacts, then the gripper. Used by the `Embodiment` implementation.
    pub fn command_joints(&mut self, q: &Joints, gripper: Option<f64>) -> Result<(), String> {
        for (j, &x) in q.iter().enumerate() {
            if !(x.is_finite() && x >= self.lower[j] && x <= self.upper[j]) {
                return Err(format!("joint {j} = {x} outside its limits"));
            }
        }
        let refused = self.apply_joints(*q);
        if refused.is_none() {
            let _ = self.filter.reset(&self.q);
        }
        let g = gripper.filter(|g| g.is_finite()).unwrap_or(0.0);
        self.world.actuate(&self.flange(), g);
        self.finish_step(refused);
        Ok(())
    }
}
