//! The simulator as an `Embodiment`, so robot's `ControlLoop` (threaded or lockstep) drives it
//! like the real arm: joint-position commands in, joint state and LIBERO-style observations
//! out. It is the one tabletop embodiment; evaluation and recording wrap it (decorators in
//! `launch`), they do not copy it.

use super::env::{TabletopEnv, TabletopObs, CONTROL_HZ};
use rudder_robot::ur5::UR_JOINT_NAMES;
use rudder_robot::{
    ArmStateLayout, Embodiment, EmbodimentError, JointCommand, JointLimits, JointState, Observation,
};
use std::collections::BTreeMap;
use std::time::Instant;

/// A tabletop episode driven by joint commands. `observe` returns the state in
/// [`TabletopSim::LAYOUT`] (the UR5's joints, velocities and gripper, then LIBERO's 8-D
/// state) and both cameras when the env renders.
pub struct TabletopSim {
    env: TabletopEnv,
    /// The last observation the loop took, for a success detector reading the same frame.
    last: Option<Observation>,
}

impl TabletopSim {
    /// The simulator's step rate: one step per command.
    pub const RATE_HZ: f64 = CONTROL_HZ;
    /// The observation state's layout.
    pub const LAYOUT: ArmStateLayout = ArmStateLayout::ur5_libero();

    pub fn new(env: TabletopEnv) -> Self {
        Self { env, last: None }
    }

    /// The observation of the loop's latest tick (None before the first).
    pub fn last_observation(&self) -> Option<&Observation> {
        self.last.as_ref()
    }

    pub fn env(&self) -> &TabletopEnv {
        &self.env
    }

    /// The episode, for decorators that read more than the loop exchanges (the TCP, object
    /// poses, success).
    pub fn env_mut(&mut self) -> &mut TabletopEnv {
        &mut self.env
    }

    pub fn into_env(self) -> TabletopEnv {
        self.env
    }
}

impl Embodiment for TabletopSim {
    fn name(&self) -> &str {
        "sim-tabletop-ur5"
    }

    fn joint_names(&self) -> Vec<String> {
        UR_JOINT_NAMES.iter().map(|s| s.to_string()).collect()
    }

    fn control_rate_hz(&self) -> f64 {
        Self::RATE_HZ
    }

    fn state_layout(&self) -> ArmStateLayout {
        Self::LAYOUT
    }

    fn limits(&self) -> JointLimits {
        JointLimits::ur5()
    }

    fn read_state(&mut self) -> Result<JointState, EmbodimentError> {
        Ok(JointState {
            positions: self.env.joints().to_vec(),
            velocities: self.env.joint_velocities().to_vec(),
            gripper: Some(self.env.gripper_closure()),
            sampled_at: Instant::now(),
        })
    }

    fn observe(&mut self) -> Result<Observation, EmbodimentError> {
        let obs = loop_observation(&mut self.env)?;
        self.last = Some(obs.clone());
        Ok(obs)
    }

    fn command(&mut self, cmd: &JointCommand) -> Result<(), EmbodimentError> {
        let q = command_joints(cmd)?;
        self.env
            .command_joints(&q, cmd.gripper)
            .map_err(|reason| EmbodimentError::BadCommand {
                field: "positions",
                reason,
            })
    }
}

fn observation(state: Vec<f64>, o: TabletopObs) -> Observation {
    let mut images = BTreeMap::new();
    if let Some(a) = o.agentview {
        images.insert("agentview".to_string(), a);
    }
    if let Some(w) = o.wrist {
        images.insert("wrist".to_string(), w);
    }
    Observation {
        images,
        state,
        instruction: o.instruction,
        timestamp: 0.0,
    }
}

/// The observation the control loop's policies read: the state in [`TabletopSim::LAYOUT`],
/// both cameras when rendered.
pub fn loop_observation(env: &mut TabletopEnv) -> Result<Observation, EmbodimentError> {
    let o = env.observe();
    let state = TabletopSim::LAYOUT
        .build(
            &env.joints(),
            &env.joint_velocities(),
            env.gripper_closure(),
            Some(&o.state),
        )
        .map_err(|e| EmbodimentError::Sensor {
            sensor: "tabletop state".into(),
            reason: e.to_string(),
        })?;
    Ok(observation(state, o))
}

/// The 6 joint targets of a loop command, or an error naming the field.
pub fn command_joints(cmd: &JointCommand) -> Result<[f64; 6], EmbodimentError> {
    cmd.positions
        .as_slice()
        .try_into()
        .map_err(|_| EmbodimentError::BadCommand {
            field: "positions",
            reason: format!("{} values, the UR5 has 6 joints", cmd.positions.len()),
        })
}
