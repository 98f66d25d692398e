//! Runs a `ros2.ur5` launch file (cargo feature `ros2`): the same real-time loop as in
//! simulation, with the arm behind the Universal Robots ROS 2 driver's topics (REFERENCE §8) —
//! a real UR5 / UR5e or `rudder sim ur5-driver`.
//!
//! Two policies: the scripted expert, which needs the task's scene and keeps a private copy of
//! it (see `ShadowExpert`; on a real arm that copy stands for perception), and a VLA checkpoint
//! (`policy.kind = "checkpoint"`), which sees the driver's camera topics and LIBERO's state
//! computed from the joint states. A checkpoint policy can be steered live: each
//! `std_msgs/Float64MultiArray` on `/rudder/steering` sets the `[steering] alphas` clusters in
//! the launch file's (sorted) order to the message's values. The run ends when the expert's copy
//! reports the task done (plus a second to settle), after `control.max_ticks` ticks, or after
//! `control.timeout_s`; a VLA run has no success signal of its own and runs to a limit.

use super::{LaunchFile, PolicyKind};
use crate::launchfile::run::{checkpoint_policy, LoggedPolicy};
use crate::viz::{self, LoopSample, Record, Recorder, VizOptions};
use anyhow::{bail, Context};
use rudder_robot::ros2::{topics, CameraTopic, CommandMode, Ros2Ur5, Ros2Ur5Config};
use rudder_robot::{
    ActionChunk, ArmStateLayout, ControlConfig, ControlLoop, Embodiment, LoopMetrics, Observation,
    Policy, PolicyError, Ur5Model,
};
use rudder_sim::tabletop::campaign::suite_task;
use rudder_sim::tabletop::{libero_state, width_of_closure, ShadowExpert, Suite};
use rudder_steering::SteeringHandle;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

#[derive(Debug, Clone)]
pub struct Ur5RunReport {
    pub metrics: LoopMetrics,
    /// The expert's own scene copy reached the goal (the arm's side decides real success);
    /// always false for a checkpoint policy.
    pub expert_done: bool,
    /// A checkpoint policy ran (no expert, no success signal).
    pub checkpoint: bool,
    /// Steering messages applied from `/rudder/steering`, and each cluster's alpha at the end.
    pub steering_updates: u64,
    pub steering_alphas: Vec<(String, Option<f32>)>,
    pub wall_s: f64,
    pub ticks: u64,
}

/// Marks `done` once the expert's scene copy holds the goal.
struct DoneWatch {
    inner: ShadowExpert,
    done: Arc<AtomicBool>,
}

impl Policy for DoneWatch {
    fn infer(&mut self, obs: &Observation) -> Result<ActionChunk, PolicyError> {
        let out = self.inner.infer(obs);
        if self.inner.task_done() {
            self.done.store(true, Ordering::Release);
        }
        out
    }
}

/// Feeds the checkpoint policy the tabletop loop's observation layout: the bridge's joint
/// layout (joints, velocities, gripper) extended with LIBERO's 8-D state, computed here from
/// the joint positions (forward kinematics) and the gripper reading.
struct LiberoStateView<P> {
    inner: P,
    model: Ur5Model,
    /// What the bridge observes.
    layout: ArmStateLayout,
}

impl<P: Policy> Policy for LiberoStateView<P> {
    fn infer(&mut self, obs: &Observation) -> Result<ActionChunk, PolicyError> {
        let bad = |e: rudder_robot::DataError| PolicyError::BadObservation {
            field: "state",
            reason: e.to_string(),
        };
        let joints = self.layout.joint_positions(&obs.state).map_err(bad)?;
        let q: [f64; 6] = joints.try_into().map_err(|_| PolicyError::BadObservation {
            field: "state",
            reason: format!("{} joints, the UR5 has 6", joints.len()),
        })?;
        let flange = self.model.fk(&q);
        let gripper = self.layout.gripper_of(&obs.state).map_err(bad)?;
        let libero = libero_state(&flange, width_of_closure(gripper));
        let state = self
            .layout
            .with_eef()
            .build(
                joints,
                self.layout.joint_velocities(&obs.state).map_err(bad)?,
                gripper,
                Some(&libero),
            )
            .map_err(bad)?;
        let view = Observation {
            images: obs.images.clone(),
            state,
            instruction: obs.instruction.clone(),
            timestamp: obs.timestamp,
        };
        self.inner.infer(&view)
    }

    fn reset(&mut self) {
        self.inner.reset()
    }
}

/// Applies `/rudder/steering` messages to the launch file's clusters.
struct RosSteering {
    handle: SteeringHandle,
    /// The `[steering] alphas` clusters, in the order message values map onto them.
    names: Vec<String>,
    last: Vec<f64>,
    updates: u64,
}

impl RosSteering {
    fn poll(&mut self, coefficients: Vec<f64>) {
        if coefficients.is_empty() || coefficients == self.last {
            return;
        }
        if coefficients.len() != self.names.len() {
            tracing::warn!(
                "/rudder/steering: {} values for {} clusters ({}); the extra ones are ignored, \
                 missing ones keep their alpha",
                coefficients.len(),
                self.names.len(),
                self.names.join(", ")
            );
        }
        for (name, &a) in self.names.iter().zip(&coefficients) {
            if let Err(e) = self.handle.set(name, Some(a as f32)) {
                tracing::warn!("/rudder/steering: {name}: {e}");
            }
        }
        tracing::info!(
            "steering set from ROS 2: {:?} = {coefficients:?}",
            self.names
        );
        self.last = coefficients;
        self.updates += 1;
    }

    fn alphas(&self) -> Vec<(String, Option<f32>)> {
        self.names
            .iter()
            .map(|n| (n.clone(), self.handle.alpha(n).ok().flatten()))
            .collect()
    }
}

/// The bridge configuration a launch file's `[ros2]` section describes.
pub fn bridge_config(lf: &LaunchFile) -> anyhow::Result<Ros2Ur5Config> {
    let Some(r) = &lf.ros2 else {
        bail!("ros2.ur5 needs a [ros2] section");
    };
    let model = match r.variant.as_str() {
        "ur5" => Ur5Model::ur5(),
        "ur5e" => Ur5Model::ur5e(),
        other => bail!("ros2.variant: unknown variant `{other}` (known: ur5, ur5e)"),
    };
    let mut cfg = Ros2Ur5Config::ur5(model);
    cfg.node_name = "rudder_launch".into();
    cfg.namespace = r.namespace.clone();
    if let Some(rate) = lf.control.rate_hz {
        cfg.rate_hz = rate;
    }
    cfg.command = match r.controller.as_str() {
        "scaled_joint_trajectory_controller" => CommandMode::ScaledTrajectory {
            topic: topics::SCALED_TRAJECTORY.into(),
        },
        "forward_position_controller" => CommandMode::ForwardPosition {
            topic: topics::FORWARD_POSITION.into(),
        },
        "forward_velocity_controller" => CommandMode::ForwardVelocity {
            topic: topics::FORWARD_VELOCITY.into(),
        },
        other => bail!(
            "ros2.controller: unknown controller `{other}` (known: \
             scaled_joint_trajectory_controller, forward_position_controller, \
             forward_velocity_controller)"
        ),
    };
    cfg.gripper_joint = Some("gripper".into());
    cfg.ignored_joints = Vec::new();
    cfg.gripper_topic = Some(topics::GRIPPER_COMMAND.into());
    if lf.task.as_ref().is_some_and(|t| t.camera_size > 0) {
        cfg.cameras = vec![
            CameraTopic {
                name: "agentview".into(),
                topic: "/camera/agentview/image_raw".into(),
            },
            CameraTopic {
                name: "wrist".into(),
                topic: "/camera/wrist/image_raw".into(),
            },
        ];
    }
    Ok(cfg)
}

pub fn run_ur5(
    lf: &LaunchFile,
    viz_opts: Option<&VizOptions>,
    progress: bool,
) -> anyhow::Result<Ur5RunReport> {
    let Some(t) = &lf.task else {
        bail!("ros2.ur5 needs a [task] section (the scripted expert's task, or the instruction)");
    };
    let task = suite_task(Suite::parse(&t.suite)?, t.index)?;
    let task = &task;
    let mut cfg = bridge_config(lf)?;
    cfg.instruction = task.instruction_for(t.episode);
    let vla = checkpoint_policy(lf, t.camera_size > 0)?;
    let arm = Ros2Ur5::connect(cfg).context(
        "connecting to the UR driver's topics (is the driver or `rudder sim ur5-driver` \
         running, with the same ROS_DOMAIN_ID?)",
    )?;
    // The loop runs at the arm's rate (the launch file's `control.rate_hz`, else the model's).
    let rate = arm.control_rate_hz();
    let layout = arm.state_layout();
    let logger = match viz_opts {
        Some(v) => Some(viz::spawn_logger(v, lf.recording.queue)?),
        None => None,
    };
    let rec = logger
        .as_ref()
        .map(|l| l.recorder.clone())
        .unwrap_or_else(Recorder::disabled);
    let done = Arc::new(AtomicBool::new(false));
    let (inner, mut ros_steering): (Box<dyn Policy>, Option<RosSteering>) = match vla {
        // The expert plans at the simulator's 20 Hz; the loop interpolates its chunk at `rate`.
        None => (
            Box::new(DoneWatch {
                inner: ShadowExpert::new(task, t.seed, t.episode, lf.policy.chunk_len.max(2))
                    .map_err(|e| anyhow::anyhow!("{e}"))?
                    .paced(),
                done: Arc::clone(&done),
            }),
            None,
        ),
        Some((model, steering)) => {
            let policy = LiberoStateView {
                inner: model.policy(steering.as_ref(), None),
                model: Ur5Model::ur5(),
                layout,
            };
            let ros = steering.map(|handle| RosSteering {
                handle,
                names: lf.steering.alphas.keys().cloned().collect(),
                last: Vec::new(),
                updates: 0,
            });
            (Box::new(policy), ros)
        }
    };
    let checkpoint = lf.policy.kind == PolicyKind::Checkpoint;
    let tick = Arc::new(AtomicU64::new(0));
    let epoch = Instant::now();
    let policy = LoggedPolicy {
        inner,
        model: Ur5Model::ur5(),
        rec: rec.clone(),
        images: lf.recording.images,
        tick: Arc::clone(&tick),
        rate_hz: rate,
        epoch,
        wall: true,
    };
    let mut lc = ControlConfig::for_embodiment(&arm, Ur5Model::ur5());
    // DDS and the 20 Hz expert: allow a slow first chunk before holding.
    lc.watchdog.inference_timeout = 1.0;
    let bridge = arm.handle();
    let lp = ControlLoop::start(arm, policy, lc)?;
    let started = Instant::now();
    let deadline = started + Duration::from_secs_f64(lf.control.timeout_s);
    let bar = progress.then(|| {
        let b = indicatif::ProgressBar::new_spinner();
        b.set_message("running over ROS 2");
        b
    });
    let mut done_at: Option<Instant> = None;
    loop {
        std::thread::sleep(Duration::from_millis(100));
        let m = lp.metrics();
        tick.store(m.ticks, Ordering::Release);
        rec.send(Record::Loop(LoopSample {
            sim_time: m.ticks as f64 / rate,
            wall_time: epoch.elapsed().as_secs_f64(),
            clamped_commands: m.safety.clamped_commands,
            held_commands: m.safety.held_commands,
            interventions: m.safety.interventions.total(),
            hold_ticks: m.hold_ticks,
            missed_ticks: m.missed_ticks,
            period_error_p99_us: m.period_error_us.p99,
            inference_latency_p50_ms: m.inference_latency_ms.p50,
        }));
        if let Some(b) = &bar {
            b.set_message(format!("{} ticks over ROS 2", m.ticks));
            b.tick();
        }
        if let Some(st) = ros_steering.as_mut() {
            st.poll(bridge.steering());
        }
        if done.load(Ordering::Acquire) && done_at.is_none() {
            done_at = Some(Instant::now());
        }
        let settled = done_at.is_some_and(|d| d.elapsed() >= Duration::from_secs(1));
        let ticks_out = lf.control.max_ticks.is_some_and(|mt| m.ticks >= mt);
        if settled || ticks_out || Instant::now() >= deadline {
            break;
        }
    }
    if let Some(b) = &bar {
        b.finish_and_clear();
    }
    let (_arm, metrics) = lp.stop()?;
    drop(rec);
    if let Some(l) = logger {
        l.finish()?;
    }
    Ok(Ur5RunReport {
        ticks: metrics.ticks,
        metrics,
        expert_done: done.load(Ordering::Acquire),
        checkpoint,
        steering_updates: ros_steering.as_ref().map_or(0, |s| s.updates),
        steering_alphas: ros_steering
            .as_ref()
            .map(RosSteering::alphas)
            .unwrap_or_default(),
        wall_s: started.elapsed().as_secs_f64(),
    })
}
