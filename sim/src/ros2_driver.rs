//! `Ros2SimDriver`: the tabletop simulator's UR5 behind the Universal Robots ROS 2 driver's topic
//! interface (feature `ros2`), so `rudder_robot::ros2::Ros2Ur5` and robot's control loop drive
//! it over real ROS 2 exactly as they would drive the real arm.
//!
//! Publishes `/joint_states` at the driver rate (125 Hz UR5, 500 Hz UR5e), the speed scaling,
//! and the scene's camera images; accepts `/forward_position_controller/commands`,
//! `/forward_velocity_controller/commands` (integrated over the driver's period) and
//! `/scaled_joint_trajectory_controller/joint_trajectory` (played with time scaled by the speed
//! scaling, like the scaled controller) and a gripper command. Each tick the arm moves towards
//! the newest target at most `scaling * v_max * dt` per joint, then the simulator steps
//! (contacts, grasping, goal checks). The task's step budget is scaled to the driver rate.

use crate::tabletop::{TabletopEnv, CONTROL_HZ};
use rudder_robot::ros2::convert::{duration_secs, rgb8_to_image, JointMap};
use rudder_robot::ros2::r2r;
use rudder_robot::ros2::r2r::sensor_msgs::msg::{Image, JointState as RosJointState};
use rudder_robot::ros2::r2r::std_msgs::msg::{Float64, Float64MultiArray};
use rudder_robot::ros2::r2r::trajectory_msgs::msg::JointTrajectory;
use rudder_robot::ros2::{drain, now_stamp, topics, Handler, Ros2Error, Spinner};
use rudder_robot::JointLimits;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

#[derive(Debug, Clone, PartialEq)]
pub struct SimDriverConfig {
    pub node_name: String,
    /// 125 (UR5) or 500 (UR5e).
    pub rate_hz: f64,
    pub tf_prefix: String,
    /// Name (without prefix) of the gripper joint added to `/joint_states`.
    pub gripper_joint: String,
    pub speed_scaling: f64,
    /// Camera name -> topic; images are rendered at `camera_hz` (needs an env with cameras).
    pub cameras: Vec<(String, String)>,
    pub camera_hz: f64,
    pub gripper_topic: String,
    /// The task's step budget (20 Hz steps) is stretched by this factor: a policy that reaches
    /// the arm through a real-time loop and DDS lags the in-process expert.
    pub budget_scale: f64,
}

impl Default for SimDriverConfig {
    fn default() -> Self {
        Self {
            node_name: "rudder_sim_ur5_driver".into(),
            rate_hz: 125.0,
            tf_prefix: String::new(),
            gripper_joint: "gripper".into(),
            speed_scaling: 1.0,
            cameras: vec![
                ("agentview".into(), "/camera/agentview/image_raw".into()),
                ("wrist".into(), "/camera/wrist/image_raw".into()),
            ],
            camera_hz: 10.0,
            gripper_topic: topics::GRIPPER_COMMAND.into(),
            budget_scale: 1.0,
        }
    }
}

/// How long a velocity command stays in force without a new one.
const VELOCITY_TIMEOUT_S: f64 = 0.1;

#[derive(Debug, Default)]
struct Commands {
    forward: Option<Vec<f64>>,
    /// Joint velocities from the forward velocity controller's topic and when they arrived
    /// (driver time, s): a velocity not renewed within `VELOCITY_TIMEOUT_S` counts as zero, so a
    /// silent client cannot leave the arm moving.
    velocity: Option<(Vec<f64>, f64)>,
    /// A trajectory, the time it arrived at (driver time, s) and the start pose.
    trajectory: Option<(JointTrajectory, f64)>,
    gripper: Option<f64>,
    received: u64,
    refused: u64,
    speed_scaling: f64,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct DriverStatus {
    pub ticks: u64,
    pub commands_received: u64,
    pub commands_refused: u64,
    pub success: bool,
    pub done: bool,
    pub env_steps: usize,
}

/// A running simulated driver. `stop` (or drop) ends its threads and returns the simulator.
pub struct Ros2SimDriver {
    stop: Arc<AtomicBool>,
    cmds: Arc<Mutex<Commands>>,
    status: Arc<Mutex<DriverStatus>>,
    thread: Option<JoinHandle<TabletopEnv>>,
    spinner: Spinner,
}

/// Starts the simulated UR5 driver on `env` (see the module docs).
pub fn run_sim_driver(env: TabletopEnv, cfg: SimDriverConfig) -> Result<Ros2SimDriver, Ros2Error> {
    Ros2SimDriver::start(env, cfg)
}

fn r2r_err(what: String) -> impl FnOnce(r2r::Error) -> Ros2Error {
    move |source| Ros2Error::R2r { what, source }
}

impl Ros2SimDriver {
    pub fn start(env: TabletopEnv, cfg: SimDriverConfig) -> Result<Self, Ros2Error> {
        if !(cfg.rate_hz.is_finite() && cfg.rate_hz >= 1.0 && cfg.rate_hz <= 2000.0) {
            return Err(Ros2Error::Config {
                field: "rate_hz",
                reason: format!("need 1..=2000 Hz, got {}", cfg.rate_hz),
            });
        }
        let ctx = r2r::Context::create().map_err(r2r_err("creating the context".into()))?;
        let mut node = r2r::Node::create(ctx, &cfg.node_name, "")
            .map_err(r2r_err(format!("creating node {}", cfg.node_name)))?;
        let qos = r2r::QosProfile::default;
        let cmds = Arc::new(Mutex::new(Commands {
            speed_scaling: cfg.speed_scaling.clamp(0.0, 1.0),
            ..Default::default()
        }));
        let t0 = Instant::now();
        let mut handlers: Vec<Handler> = Vec::new();
        let sub = node
            .subscribe::<Float64MultiArray>(topics::FORWARD_POSITION, qos())
            .map_err(r2r_err(format!("subscribing {}", topics::FORWARD_POSITION)))?;
        let c = Arc::clone(&cmds);
        handlers.push(drain(sub, move |m: Float64MultiArray| {
            let mut g = lock(&c);
            if m.data.len() == 6 && m.data.iter().all(|x| x.is_finite()) {
                g.forward = Some(m.data);
                g.trajectory = None;
                g.velocity = None;
                g.received += 1;
            } else {
                g.refused += 1;
                tracing::warn!("sim driver: refused a command of {} values", m.data.len());
            }
        }));
        let sub = node
            .subscribe::<JointTrajectory>(topics::SCALED_TRAJECTORY, qos())
            .map_err(r2r_err(format!(
                "subscribing {}",
                topics::SCALED_TRAJECTORY
            )))?;
        let (c, map) = (
            Arc::clone(&cmds),
            JointMap::ur(&cfg.tf_prefix, Some(&cfg.gripper_joint)),
        );
        handlers.push(drain(sub, move |m: JointTrajectory| {
            let mut g = lock(&c);
            let ok = m.joint_names == map.names
                && !m.points.is_empty()
                && m.points
                    .iter()
                    .all(|p| p.positions.len() == 6 && p.positions.iter().all(|x| x.is_finite()));
            if ok {
                g.trajectory = Some((m, t0.elapsed().as_secs_f64()));
                g.forward = None;
                g.velocity = None;
                g.received += 1;
            } else {
                g.refused += 1;
                tracing::warn!("sim driver: refused a trajectory (names or points malformed)");
            }
        }));
        let sub = node
            .subscribe::<Float64MultiArray>(topics::FORWARD_VELOCITY, qos())
            .map_err(r2r_err(format!("subscribing {}", topics::FORWARD_VELOCITY)))?;
        let c = Arc::clone(&cmds);
        handlers.push(drain(sub, move |m: Float64MultiArray| {
            let mut g = lock(&c);
            if m.data.len() == 6 && m.data.iter().all(|x| x.is_finite()) {
                g.velocity = Some((m.data, t0.elapsed().as_secs_f64()));
                g.forward = None;
                g.trajectory = None;
                g.received += 1;
            } else {
                g.refused += 1;
                tracing::warn!(
                    "sim driver: refused a velocity command of {} values",
                    m.data.len()
                );
            }
        }));
        let sub = node
            .subscribe::<Float64>(&cfg.gripper_topic, qos())
            .map_err(r2r_err(format!("subscribing {}", cfg.gripper_topic)))?;
        let c = Arc::clone(&cmds);
        handlers.push(drain(sub, move |m: Float64| {
            if m.data.is_finite() {
                lock(&c).gripper = Some(m.data.clamp(-1.0, 1.0));
            }
        }));
        let p_js = node
            .create_publisher::<RosJointState>(topics::JOINT_STATES, qos())
            .map_err(r2r_err(format!("advertising {}", topics::JOINT_STATES)))?;
        let p_ss = node
            .create_publisher::<Float64>(topics::SPEED_SCALING, qos())
            .map_err(r2r_err(format!("advertising {}", topics::SPEED_SCALING)))?;
        let mut p_cams = Vec::new();
        for (name, topic) in &cfg.cameras {
            p_cams.push((
                name.clone(),
                node.create_publisher::<Image>(topic, qos())
                    .map_err(r2r_err(format!("advertising {topic}")))?,
            ));
        }
        let spinner = Spinner::start("rudder-sim-ros2", node, handlers, Duration::from_millis(2))
            .map_err(|e| Ros2Error::Thread(e.to_string()))?;
        let stop = Arc::new(AtomicBool::new(false));
        let status = Arc::new(Mutex::new(DriverStatus::default()));
        let thread = {
            let (stop, cmds, status) = (Arc::clone(&stop), Arc::clone(&cmds), Arc::clone(&status));
            std::thread::Builder::new()
                .name("rudder-sim-driver".into())
                .spawn(move || {
                    let pubs = Pubs {
                        js: p_js,
                        ss: p_ss,
                        cams: p_cams,
                    };
                    driver_loop(env, cfg, pubs, &stop, &cmds, &status, t0)
                })
                .map_err(|e| Ros2Error::Thread(e.to_string()))?
        };
        Ok(Self {
            stop,
            cmds,
            status,
            thread: Some(thread),
            spinner,
        })
    }

    pub fn status(&self) -> DriverStatus {
        *lock(&self.status)
    }

    /// Sets the speed scaling the driver applies and publishes (0..1).
    pub fn set_speed_scaling(&self, s: f64) {
        if s.is_finite() {
            lock(&self.cmds).speed_scaling = s.clamp(0.0, 1.0);
        }
    }

    /// Stops the driver thread and the node thread; returns the simulator.
    pub fn stop(mut self) -> Option<TabletopEnv> {
        self.shutdown()
    }

    fn shutdown(&mut self) -> Option<TabletopEnv> {
        self.stop.store(true, Ordering::Release);
        let env = self.thread.take().and_then(|h| h.join().ok());
        self.spinner.stop();
        env
    }
}

impl Drop for Ros2SimDriver {
    fn drop(&mut self) {
        let _ = self.shutdown();
    }
}

struct Pubs {
    js: r2r::Publisher<RosJointState>,
    ss: r2r::Publisher<Float64>,
    cams: Vec<(String, r2r::Publisher<Image>)>,
}

/// Linear interpolation of a trajectory at `t` seconds after it arrived, from `start`.
fn sample(tr: &JointTrajectory, start: &[f64; 6], t: f64) -> [f64; 6] {
    let mut prev_t = 0.0;
    let mut prev: [f64; 6] = *start;
    for p in &tr.points {
        let pt = duration_secs(&p.time_from_start);
        let q: [f64; 6] = std::array::from_fn(|j| p.positions.get(j).copied().unwrap_or(prev[j]));
        if t <= pt {
            let a = if pt > prev_t {
                (t - prev_t) / (pt - prev_t)
            } else {
                1.0
            };
            return std::array::from_fn(|j| prev[j] + a.clamp(0.0, 1.0) * (q[j] - prev[j]));
        }
        prev_t = pt;
        prev = q;
    }
    prev
}

fn driver_loop(
    mut env: TabletopEnv,
    cfg: SimDriverConfig,
    pubs: Pubs,
    stop: &AtomicBool,
    cmds: &Mutex<Commands>,
    status: &Mutex<DriverStatus>,
    t0: Instant,
) -> TabletopEnv {
    let dt = 1.0 / cfg.rate_hz;
    let period = Duration::from_secs_f64(dt);
    let limits = JointLimits::ur5();
    let map = JointMap::ur(&cfg.tf_prefix, Some(&cfg.gripper_joint));
    // The simulator counts a step per command; its budget is in 20 Hz steps.
    let scale = if cfg.budget_scale.is_finite() && cfg.budget_scale > 0.0 {
        cfg.budget_scale
    } else {
        1.0
    };
    let budget = (env.task().max_steps as f64 * scale * cfg.rate_hz / CONTROL_HZ).ceil() as usize;
    let mut q = env.joints();
    let mut traj_start: Option<(f64, [f64; 6])> = None;
    let mut traj_clock = 0.0;
    let cam_every = (cfg.rate_hz / cfg.camera_hz.max(0.1)).round().max(1.0) as u64;
    let ss_every = (cfg.rate_hz / 50.0).round().max(1.0) as u64;
    let mut ticks: u64 = 0;
    let mut deadline = Instant::now();
    while !stop.load(Ordering::Acquire) {
        let (target, gripper, scaling) = {
            let g = lock(cmds);
            let s = g.speed_scaling;
            let target = if let Some(f) = &g.forward {
                traj_start = None;
                std::array::from_fn(|j| f[j])
            } else if let Some((v, at)) = &g.velocity {
                traj_start = None;
                if t0.elapsed().as_secs_f64() - at > VELOCITY_TIMEOUT_S {
                    q
                } else {
                    std::array::from_fn(|j| q[j] + v[j] * dt)
                }
            } else if let Some((tr, arrived)) = &g.trajectory {
                let (at, start) = match traj_start {
                    Some((a, st)) if a == *arrived => (a, st),
                    _ => {
                        traj_start = Some((*arrived, q));
                        traj_clock = 0.0;
                        (*arrived, q)
                    }
                };
                let _ = at;
                // The scaled controller: trajectory time runs at `scaling` x real time.
                traj_clock += s * dt;
                sample(tr, &start, traj_clock)
            } else {
                q
            };
            (target, g.gripper, s)
        };
        let qprev = q;
        for j in 0..6 {
            let cap = scaling * limits.max_velocity[j] * dt;
            q[j] += (target[j] - q[j]).clamp(-cap, cap);
            q[j] = q[j].clamp(limits.lower[j], limits.upper[j]);
        }
        if env.steps() < budget && !env.success() {
            if env.command_joints(&q, gripper).is_err() {
                tracing::warn!("sim driver: simulator refused {q:?}");
            }
            // Contacts may refuse the move: report where the arm really is.
            q = env.joints();
        }
        let qd: [f64; 6] = std::array::from_fn(|j| (q[j] - qprev[j]) / dt);
        let stamp = now_stamp();
        let _ = pubs
            .js
            .publish(&map.to_msg(stamp.clone(), &q, &qd, Some(env.gripper_closure())));
        if ticks.is_multiple_of(ss_every) {
            let _ = pubs.ss.publish(&Float64 { data: scaling });
        }
        if !pubs.cams.is_empty() && ticks.is_multiple_of(cam_every) {
            let o = env.observe();
            for (name, p) in &pubs.cams {
                let img = match name.as_str() {
                    "agentview" => o.agentview.as_ref(),
                    "wrist" => o.wrist.as_ref(),
                    _ => None,
                };
                if let Some(img) = img {
                    let _ = p.publish(&rgb8_to_image(img, stamp.clone(), name));
                }
            }
        }
        ticks += 1;
        {
            let c = lock(cmds);
            let mut s = lock(status);
            *s = DriverStatus {
                ticks,
                commands_received: c.received,
                commands_refused: c.refused,
                success: env.success(),
                done: env.success() || env.steps() >= budget,
                env_steps: env.steps(),
            };
        }
        let _ = t0;
        deadline += period;
        let now = Instant::now();
        if deadline > now {
            std::thread::sleep(deadline - now);
        } else {
            deadline = now;
        }
    }
    env
}
