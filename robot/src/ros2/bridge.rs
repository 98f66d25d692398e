//! `Ros2Ur5`: a UR5 / UR5e behind the Universal Robots ROS 2 driver's topics, as an
//! [`Embodiment`] for robot's `ControlLoop`.

use super::convert::{
    forward_command, image_to_rgb8, trajectory_msg, InputError, JointMap, JointSample,
};
use super::spin::{drain, Handler, Spinner};
use super::{now_stamp, stamp_age, topics};
use crate::embodiment::{Embodiment, EmbodimentError};
use crate::safety::{JointLimits, SafetyConfig, SafetyFilter};
use crate::types::{ArmStateLayout, ImageRgb8, JointCommand, JointState, Observation};
use crate::ur5::Ur5Model;
use r2r::sensor_msgs::msg::{Image, JointState as RosJointState};
use r2r::std_msgs::msg::{Bool, Float64, Float64MultiArray, String as RosString};
use r2r::trajectory_msgs::msg::JointTrajectory;
use r2r::QosProfile;
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};
use thiserror::Error;

#[derive(Debug, Error)]
pub enum Ros2Error {
    #[error("ros2: {what}: {source}")]
    R2r {
        what: String,
        #[source]
        source: r2r::Error,
    },
    #[error("ros2 config field `{field}`: {reason}")]
    Config { field: &'static str, reason: String },
    #[error("ros2: no valid {topic} within {secs:.1} s (last problem: {last})")]
    NoJointStates {
        topic: String,
        secs: f64,
        last: String,
    },
    #[error("ros2: could not start the node thread: {0}")]
    Thread(String),
}

pub(crate) fn r2r_err(what: impl Into<String>) -> impl FnOnce(r2r::Error) -> Ros2Error {
    let what = what.into();
    move |source| Ros2Error::R2r { what, source }
}

/// One camera: the name it gets in `Observation::images` and its `sensor_msgs/Image` topic.
#[derive(Debug, Clone, PartialEq)]
pub struct CameraTopic {
    pub name: String,
    pub topic: String,
}

/// How commands reach the arm.
#[derive(Debug, Clone, PartialEq)]
pub enum CommandMode {
    /// `std_msgs/Float64MultiArray` positions every tick (`forward_position_controller`).
    ForwardPosition { topic: String },
    /// `trajectory_msgs/JointTrajectory` every tick with the next command one period ahead
    /// (`scaled_joint_trajectory_controller`, which applies the speed scaling itself); whole
    /// chunks go out with [`Ros2Ur5::send_chunk`].
    ScaledTrajectory { topic: String },
    /// `std_msgs/Float64MultiArray` joint velocities every tick (`forward_velocity_controller`):
    /// the filtered position step divided by the period, so the arm integrates to the same
    /// positions the other modes send.
    ForwardVelocity { topic: String },
}

#[derive(Debug, Clone, PartialEq)]
pub struct Ros2Ur5Config {
    pub node_name: String,
    pub namespace: String,
    pub model: Ur5Model,
    /// Control rate (Hz): 125 for a UR5 (CB3), 500 for a UR5e.
    pub rate_hz: f64,
    /// Prefix of the driver's joint names (`tf_prefix` of the UR launch files).
    pub tf_prefix: String,
    /// A joint in `/joint_states` that carries the gripper closure, if any (without prefix).
    pub gripper_joint: Option<String>,
    /// Other joints `/joint_states` may carry (full names), ignored instead of refused.
    pub ignored_joints: Vec<String>,
    pub joint_states_topic: String,
    /// `/joint_states` older than this (by header stamp) is refused: the loop holds.
    pub stale_after: f64,
    pub speed_scaling_topic: String,
    pub cameras: Vec<CameraTopic>,
    pub command: CommandMode,
    /// `std_msgs/Float64` gripper command (-1 open .. 1 closed), if the arm has one.
    pub gripper_topic: Option<String>,
    pub estop_topic: String,
    pub instruction_topic: String,
    pub steering_topic: String,
    /// The instruction until one arrives on `instruction_topic`.
    pub instruction: String,
    /// `connect` waits this long for a first valid joint state.
    pub connect_timeout: Duration,
    /// Speed scaling below this counts as paused (hold).
    pub min_speed_scaling: f64,
}

impl Ros2Ur5Config {
    /// The UR driver's default topics for `model` at its native rate, streaming positions.
    pub fn ur5(model: Ur5Model) -> Self {
        Self {
            node_name: "rudder_ur5".into(),
            namespace: String::new(),
            rate_hz: model.control_rate_hz(),
            model,
            tf_prefix: String::new(),
            gripper_joint: None,
            ignored_joints: Vec::new(),
            joint_states_topic: topics::JOINT_STATES.into(),
            stale_after: 0.04,
            speed_scaling_topic: topics::SPEED_SCALING.into(),
            cameras: Vec::new(),
            command: CommandMode::ForwardPosition {
                topic: topics::FORWARD_POSITION.into(),
            },
            gripper_topic: None,
            estop_topic: topics::ESTOP.into(),
            instruction_topic: topics::INSTRUCTION.into(),
            steering_topic: topics::STEERING.into(),
            instruction: String::new(),
            connect_timeout: Duration::from_secs(10),
            min_speed_scaling: 0.01,
        }
    }
}

/// Counters of what the bridge received, refused and sent.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct Ros2Counts {
    pub joint_states: u64,
    pub joint_states_rejected: u64,
    pub images: u64,
    pub images_rejected: u64,
    pub speed_scaling_rejected: u64,
    pub commands_sent: u64,
    pub publish_errors: u64,
    pub estops: u64,
}

#[derive(Debug, Default)]
struct Inbox {
    joints: Option<(JointSample, Instant, Option<f64>)>,
    /// The newest joint state was refused: why.
    joint_error: Option<InputError>,
    images: BTreeMap<String, Result<ImageRgb8, InputError>>,
    speed_scaling: Option<f64>,
    estop: bool,
    estop_at: Option<Instant>,
    /// First command sent after the e-stop arrived (the loop was holding by then).
    hold_sent_at: Option<Instant>,
    instruction: Option<String>,
    steering: Vec<f64>,
    counts: Ros2Counts,
    /// Observation-to-command latency samples (s): header stamp of the joint state a command
    /// was computed from, to the command's publication.
    latency: Vec<f64>,
    /// DDS transit samples (s): header stamp of a joint state to its arrival in the handler.
    transit: Vec<f64>,
}

fn lock(m: &Mutex<Inbox>) -> MutexGuard<'_, Inbox> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Logs the first refusal of a kind and then every 100th, so a flood of bad messages does not
/// flood the log.
fn log_refusal(count: u64, e: &InputError) {
    if count <= 1 || count.is_multiple_of(100) {
        tracing::warn!("ros2: refused ({count} so far): {e}");
    }
}

/// A cheap, cloneable view of a running bridge (counters, e-stop timing, latency, steering).
#[derive(Clone)]
pub struct Ros2Handle {
    inbox: Arc<Mutex<Inbox>>,
}

impl Ros2Handle {
    pub fn counts(&self) -> Ros2Counts {
        lock(&self.inbox).counts
    }
    pub fn estopped(&self) -> bool {
        lock(&self.inbox).estop
    }
    /// Seconds from the e-stop message's arrival to the first (holding) command after it.
    pub fn estop_reaction(&self) -> Option<f64> {
        let g = lock(&self.inbox);
        Some(
            g.hold_sent_at?
                .saturating_duration_since(g.estop_at?)
                .as_secs_f64(),
        )
    }
    pub fn speed_scaling(&self) -> f64 {
        lock(&self.inbox).speed_scaling.unwrap_or(1.0)
    }
    pub fn steering(&self) -> Vec<f64> {
        lock(&self.inbox).steering.clone()
    }
    pub fn instruction(&self) -> Option<String> {
        lock(&self.inbox).instruction.clone()
    }
    /// The latest joint-state refusal, if the newest message was refused.
    pub fn joint_error(&self) -> Option<InputError> {
        lock(&self.inbox).joint_error.clone()
    }
    /// The refusal of a camera's newest image, if it was refused.
    pub fn image_error(&self, camera: &str) -> Option<InputError> {
        match lock(&self.inbox).images.get(camera) {
            Some(Err(e)) => Some(e.clone()),
            _ => None,
        }
    }
    /// Observation-to-command latency samples in seconds (joint-state stamp to command send).
    pub fn latency_samples(&self) -> Vec<f64> {
        lock(&self.inbox).latency.clone()
    }
    /// `/joint_states` transit samples in seconds (header stamp to arrival at the bridge).
    pub fn transit_samples(&self) -> Vec<f64> {
        lock(&self.inbox).transit.clone()
    }
}

enum Sender {
    Forward(r2r::Publisher<Float64MultiArray>),
    Velocity(r2r::Publisher<Float64MultiArray>),
    Trajectory(r2r::Publisher<JointTrajectory>),
}

/// A UR5 / UR5e driven over ROS 2. Create it with [`Ros2Ur5::connect`], hand it to
/// `ControlLoop::start`; dropping it stops and joins the node thread.
pub struct Ros2Ur5 {
    cfg: Ros2Ur5Config,
    limits: JointLimits,
    joint_names: Vec<String>,
    inbox: Arc<Mutex<Inbox>>,
    sender: Sender,
    gripper: Option<r2r::Publisher<r2r::std_msgs::msg::Float64>>,
    /// The last stage before the wire: every command passes robot's safety filter here too.
    filter: SafetyFilter,
    target: Vec<f64>,
    out: Vec<f64>,
    /// `read_state` refused this tick because of the e-stop (so this tick's command is a hold).
    estop_tick: bool,
    spinner: Spinner,
}

impl Ros2Ur5 {
    /// Creates the node, its subscriptions and publishers, starts the node thread and waits for
    /// a first valid joint state.
    pub fn connect(cfg: Ros2Ur5Config) -> Result<Self, Ros2Error> {
        if !(cfg.rate_hz.is_finite() && cfg.rate_hz > 0.0 && cfg.rate_hz <= 10_000.0) {
            return Err(Ros2Error::Config {
                field: "rate_hz",
                reason: format!("need 0 < rate <= 10000, got {}", cfg.rate_hz),
            });
        }
        let ctx = r2r::Context::create().map_err(r2r_err("creating the context"))?;
        let mut node = r2r::Node::create(ctx, &cfg.node_name, &cfg.namespace)
            .map_err(r2r_err(format!("creating node `{}`", cfg.node_name)))?;
        let mut map = JointMap::ur(&cfg.tf_prefix, cfg.gripper_joint.as_deref());
        map.ignored.clone_from(&cfg.ignored_joints);
        let inbox = Arc::new(Mutex::new(Inbox::default()));
        let qos = QosProfile::default;
        let mut handlers: Vec<Handler> = Vec::new();

        let sub = node
            .subscribe::<RosJointState>(&cfg.joint_states_topic, qos())
            .map_err(r2r_err(format!("subscribing {}", cfg.joint_states_topic)))?;
        let (ib, stale_after) = (Arc::clone(&inbox), cfg.stale_after);
        handlers.push(drain(sub, move |m: RosJointState| {
            let now = Instant::now();
            let age = stamp_age(&m.header.stamp);
            let parsed = map.parse(&m).and_then(|s| match age {
                Some(a) if a > stale_after => Err(InputError::Stale {
                    age: a,
                    limit: stale_after,
                }),
                _ => Ok(s),
            });
            let mut g = lock(&ib);
            g.counts.joint_states += 1;
            if let Some(a) = age {
                if g.transit.len() < 1_000_000 && a.is_finite() {
                    g.transit.push(a);
                }
            }
            match parsed {
                Ok(s) => {
                    // The sample's time is when the driver took it, if its stamp is plausible.
                    let back = age.filter(|a| *a >= 0.0 && *a < 1.0).unwrap_or(0.0);
                    let at = now
                        .checked_sub(Duration::from_secs_f64(back))
                        .unwrap_or(now);
                    let stamp = age
                        .map(|_| m.header.stamp.sec as f64 + m.header.stamp.nanosec as f64 * 1e-9);
                    g.joints = Some((s, at, stamp));
                    g.joint_error = None;
                }
                Err(e) => {
                    g.counts.joint_states_rejected += 1;
                    log_refusal(g.counts.joint_states_rejected, &e);
                    g.joint_error = Some(e);
                }
            }
        }));

        for cam in &cfg.cameras {
            let sub = node
                .subscribe::<Image>(&cam.topic, qos())
                .map_err(r2r_err(format!("subscribing {}", cam.topic)))?;
            let (ib, name) = (Arc::clone(&inbox), cam.name.clone());
            handlers.push(drain(sub, move |m: Image| {
                let r = image_to_rgb8(&name, &m);
                let mut g = lock(&ib);
                g.counts.images += 1;
                if let Err(e) = &r {
                    g.counts.images_rejected += 1;
                    log_refusal(g.counts.images_rejected, e);
                }
                g.images.insert(name.clone(), r);
            }));
        }

        let sub = node
            .subscribe::<Float64>(&cfg.speed_scaling_topic, qos())
            .map_err(r2r_err(format!("subscribing {}", cfg.speed_scaling_topic)))?;
        let (ib, topic) = (Arc::clone(&inbox), cfg.speed_scaling_topic.clone());
        handlers.push(drain(sub, move |m: Float64| {
            let mut g = lock(&ib);
            // The driver publishes 0..1 (some versions 0..100 %).
            let v = if m.data > 1.0 && m.data <= 100.0 {
                m.data / 100.0
            } else {
                m.data
            };
            if v.is_finite() && (0.0..=1.0).contains(&v) {
                g.speed_scaling = Some(v);
            } else {
                g.counts.speed_scaling_rejected += 1;
                let e = InputError::Value {
                    topic: topic.clone(),
                    reason: format!("speed scaling {} outside 0..1", m.data),
                };
                log_refusal(g.counts.speed_scaling_rejected, &e);
                // Unknown scaling: treat as paused until a valid value arrives.
                g.speed_scaling = Some(0.0);
            }
        }));

        let sub = node
            .subscribe::<Bool>(&cfg.estop_topic, qos())
            .map_err(r2r_err(format!("subscribing {}", cfg.estop_topic)))?;
        let ib = Arc::clone(&inbox);
        handlers.push(drain(sub, move |m: Bool| {
            let mut g = lock(&ib);
            if m.data && !g.estop {
                tracing::warn!("ros2: e-stop received: holding");
                g.counts.estops += 1;
                g.estop_at = Some(Instant::now());
                g.hold_sent_at = None;
            } else if !m.data && g.estop {
                tracing::info!("ros2: e-stop released");
            }
            g.estop = m.data;
        }));

        let sub = node
            .subscribe::<RosString>(&cfg.instruction_topic, qos())
            .map_err(r2r_err(format!("subscribing {}", cfg.instruction_topic)))?;
        let ib = Arc::clone(&inbox);
        handlers.push(drain(sub, move |m: RosString| {
            tracing::info!("ros2: instruction set to {:?}", m.data);
            lock(&ib).instruction = Some(m.data);
        }));

        let sub = node
            .subscribe::<Float64MultiArray>(&cfg.steering_topic, qos())
            .map_err(r2r_err(format!("subscribing {}", cfg.steering_topic)))?;
        let (ib, topic) = (Arc::clone(&inbox), cfg.steering_topic.clone());
        handlers.push(drain(sub, move |m: Float64MultiArray| {
            if m.data.iter().all(|x| x.is_finite()) {
                lock(&ib).steering = m.data;
            } else {
                tracing::warn!("ros2: {topic}: non-finite steering coefficients refused");
            }
        }));

        let sender = match &cfg.command {
            CommandMode::ForwardPosition { topic } => Sender::Forward(
                node.create_publisher(topic, qos())
                    .map_err(r2r_err(format!("advertising {topic}")))?,
            ),
            CommandMode::ScaledTrajectory { topic } => Sender::Trajectory(
                node.create_publisher(topic, qos())
                    .map_err(r2r_err(format!("advertising {topic}")))?,
            ),
            CommandMode::ForwardVelocity { topic } => Sender::Velocity(
                node.create_publisher(topic, qos())
                    .map_err(r2r_err(format!("advertising {topic}")))?,
            ),
        };
        let gripper = match &cfg.gripper_topic {
            Some(t) => Some(
                node.create_publisher(t, qos())
                    .map_err(r2r_err(format!("advertising {t}")))?,
            ),
            None => None,
        };
        let spinner = Spinner::start("rudder-ros2", node, handlers, Duration::from_millis(2))
            .map_err(|e| Ros2Error::Thread(e.to_string()))?;

        // Wait for the arm's state: the filter starts where the arm is.
        let t0 = Instant::now();
        let first = loop {
            if let Some((s, _, _)) = lock(&inbox).joints.clone() {
                break s;
            }
            if t0.elapsed() > cfg.connect_timeout {
                let last = lock(&inbox)
                    .joint_error
                    .as_ref()
                    .map_or("nothing received".to_string(), |e| e.to_string());
                return Err(Ros2Error::NoJointStates {
                    topic: cfg.joint_states_topic.clone(),
                    secs: cfg.connect_timeout.as_secs_f64(),
                    last,
                });
            }
            std::thread::sleep(Duration::from_millis(2));
        };
        let limits = JointLimits::ur5();
        let filter =
            SafetyFilter::new(SafetyConfig::ur5(cfg.rate_hz), &first.positions).map_err(|e| {
                Ros2Error::Config {
                    field: "initial joint state",
                    reason: e.to_string(),
                }
            })?;
        let joint_names = crate::ur5::UR_JOINT_NAMES
            .iter()
            .map(|n| format!("{}{n}", cfg.tf_prefix))
            .collect();
        Ok(Self {
            target: first.positions.clone(),
            out: first.positions.clone(),
            cfg,
            limits,
            joint_names,
            inbox,
            sender,
            gripper,
            filter,
            estop_tick: false,
            spinner,
        })
    }

    pub fn handle(&self) -> Ros2Handle {
        Ros2Handle {
            inbox: Arc::clone(&self.inbox),
        }
    }

    pub fn config(&self) -> &Ros2Ur5Config {
        &self.cfg
    }

    /// Publishes a whole chunk of joint-position points `dt` apart as one
    /// `trajectory_msgs/JointTrajectory` (point `k` at `time_from_start = (k + 1) dt`), every
    /// point through a safety filter at that `dt` starting from the last command sent. Only in
    /// `ScaledTrajectory` mode. Returns the message as sent.
    pub fn send_chunk(
        &mut self,
        points: &[Vec<f64>],
        dt: f64,
    ) -> Result<JointTrajectory, EmbodimentError> {
        let Sender::Trajectory(p) = &self.sender else {
            return Err(EmbodimentError::BadCommand {
                field: "mode",
                reason: "send_chunk needs CommandMode::ScaledTrajectory".into(),
            });
        };
        if self.inbox_blocked().is_some() {
            return Err(EmbodimentError::Disconnected(
                "holding (e-stop, paused or bad input): chunk not sent".into(),
            ));
        }
        let mut cfg = SafetyConfig::ur5(1.0 / dt);
        cfg.limits = self.limits.clone();
        cfg.max_step = std::f64::consts::PI * dt;
        let bad = |e: String| EmbodimentError::BadCommand {
            field: "chunk",
            reason: e,
        };
        if !(dt.is_finite() && dt > 0.0) {
            return Err(bad(format!("dt must be finite and > 0, got {dt}")));
        }
        let mut f = SafetyFilter::new(cfg, &self.out).map_err(|e| bad(e.to_string()))?;
        let mut safe = Vec::with_capacity(points.len());
        for (k, p) in points.iter().enumerate() {
            if p.len() != self.joint_names.len() {
                return Err(bad(format!("point {k} has {} joints, need 6", p.len())));
            }
            let mut o = vec![0.0; p.len()];
            f.apply(Some(p), None, &mut o);
            safe.push(o);
        }
        let msg = trajectory_msg(&self.joint_names, now_stamp(), &safe, dt);
        p.publish(&msg).map_err(|e| {
            EmbodimentError::Disconnected(format!("publishing the trajectory: {e}"))
        })?;
        lock(&self.inbox).counts.commands_sent += 1;
        Ok(msg)
    }

    /// Why motion must not go on now (e-stop, speed scaling 0, refused input), if it must not.
    fn inbox_blocked(&self) -> Option<String> {
        let g = lock(&self.inbox);
        if g.estop {
            return Some("e-stop".into());
        }
        if let Some(e) = &g.joint_error {
            return Some(e.to_string());
        }
        match g.speed_scaling {
            Some(s) if s < self.cfg.min_speed_scaling => {
                Some(format!("speed scaling {s:.3}: robot paused"))
            }
            _ => None,
        }
    }
}

impl Drop for Ros2Ur5 {
    fn drop(&mut self) {
        self.spinner.stop();
    }
}

impl Embodiment for Ros2Ur5 {
    fn name(&self) -> &str {
        "ros2-ur5"
    }

    fn joint_names(&self) -> Vec<String> {
        self.joint_names.clone()
    }

    fn control_rate_hz(&self) -> f64 {
        self.cfg.rate_hz
    }

    fn state_layout(&self) -> ArmStateLayout {
        ArmStateLayout::joints(self.joint_names.len())
    }

    fn limits(&self) -> JointLimits {
        self.limits.clone()
    }

    fn read_state(&mut self) -> Result<JointState, EmbodimentError> {
        if let Some(why) = self.inbox_blocked() {
            self.estop_tick = lock(&self.inbox).estop;
            return Err(EmbodimentError::Sensor {
                sensor: self.cfg.joint_states_topic.clone(),
                reason: why,
            });
        }
        let g = lock(&self.inbox);
        match &g.joints {
            Some((s, at, _)) => Ok(JointState {
                positions: s.positions.clone(),
                velocities: s.velocities.clone(),
                gripper: s.gripper,
                sampled_at: *at,
            }),
            None => Err(EmbodimentError::Sensor {
                sensor: self.cfg.joint_states_topic.clone(),
                reason: "no joint state yet".into(),
            }),
        }
    }

    fn observe(&mut self) -> Result<Observation, EmbodimentError> {
        let g = lock(&self.inbox);
        let Some((s, _, _)) = &g.joints else {
            return Err(EmbodimentError::Sensor {
                sensor: self.cfg.joint_states_topic.clone(),
                reason: "no joint state yet".into(),
            });
        };
        let mut images = BTreeMap::new();
        for cam in &self.cfg.cameras {
            match g.images.get(&cam.name) {
                Some(Ok(img)) => {
                    images.insert(cam.name.clone(), img.clone());
                }
                Some(Err(e)) => {
                    return Err(EmbodimentError::Sensor {
                        sensor: cam.topic.clone(),
                        reason: e.to_string(),
                    })
                }
                None => {
                    return Err(EmbodimentError::Sensor {
                        sensor: cam.topic.clone(),
                        reason: "no image yet".into(),
                    })
                }
            }
        }
        let state = ArmStateLayout::joints(s.positions.len())
            .build(&s.positions, &s.velocities, s.gripper.unwrap_or(0.0), None)
            .map_err(|e| EmbodimentError::Sensor {
                sensor: self.cfg.joint_states_topic.clone(),
                reason: e.to_string(),
            })?;
        Ok(Observation {
            images,
            state,
            instruction: g
                .instruction
                .clone()
                .unwrap_or_else(|| self.cfg.instruction.clone()),
            timestamp: 0.0,
        })
    }

    fn command(&mut self, cmd: &JointCommand) -> Result<(), EmbodimentError> {
        let n = self.joint_names.len();
        if cmd.positions.len() != n {
            return Err(EmbodimentError::BadCommand {
                field: "positions",
                reason: format!("{} values, the UR5 has {n} joints", cmd.positions.len()),
            });
        }
        let (scaling, blocked) = {
            let g = lock(&self.inbox);
            (g.speed_scaling.unwrap_or(1.0), g.estop)
        };
        // Speed scaling: the target may move at most `scaling * v_max * dt` per tick; the filter
        // then tracks it within the (unscaled) acceleration limits. On e-stop the target stays.
        let dt = 1.0 / self.cfg.rate_hz;
        for j in 0..n {
            let cap = scaling.clamp(0.0, 1.0) * self.limits.max_velocity[j] * dt;
            let want = if blocked {
                self.target[j]
            } else {
                cmd.positions[j]
            };
            self.target[j] += (want - self.target[j]).clamp(-cap, cap);
        }
        let before = self.out.clone();
        let (_, gripper) = self
            .filter
            .apply(Some(&self.target), cmd.gripper, &mut self.out);
        let stamp = now_stamp();
        let res = match &self.sender {
            Sender::Forward(p) => p.publish(&forward_command(&self.out)),
            Sender::Velocity(p) => {
                let v: Vec<f64> = self
                    .out
                    .iter()
                    .zip(&before)
                    .map(|(q, q0)| (q - q0) / dt)
                    .collect();
                p.publish(&forward_command(&v))
            }
            Sender::Trajectory(p) => p.publish(&trajectory_msg(
                &self.joint_names,
                stamp.clone(),
                std::slice::from_ref(&self.out),
                dt,
            )),
        };
        if let (Some(p), Some(g)) = (&self.gripper, gripper) {
            let _ = p.publish(&Float64 { data: g });
        }
        let sent = Instant::now();
        let mut g = lock(&self.inbox);
        if let Some((_, _, Some(st))) = &g.joints {
            let now = stamp.sec as f64 + stamp.nanosec as f64 * 1e-9;
            let lat = now - st;
            if g.latency.len() < 1_000_000 && lat.is_finite() {
                g.latency.push(lat);
            }
        }
        if std::mem::take(&mut self.estop_tick) && g.estop_at.is_some() && g.hold_sent_at.is_none()
        {
            g.hold_sent_at = Some(sent);
        }
        match res {
            Ok(()) => {
                g.counts.commands_sent += 1;
                Ok(())
            }
            Err(e) => {
                g.counts.publish_errors += 1;
                Err(EmbodimentError::Disconnected(format!(
                    "publishing the command: {e}"
                )))
            }
        }
    }
}
