//! The simulator as an `Embodiment`, so robot's `ControlLoop` drives it like the real arm:
//! joint-position commands in, joint state and LIBERO-style observations out.

use super::env::{TabletopEnv, TabletopObs, CONTROL_HZ};
use rudder_robot::ur5::UR_JOINT_NAMES;
use rudder_robot::{
    Embodiment, EmbodimentError, JointCommand, JointLimits, JointState, Observation,
};
use std::collections::BTreeMap;
use std::time::Instant;

/// A tabletop episode driven by joint commands. `observe` returns the 8-D LIBERO state (not
/// the joint state) and both cameras when the env renders.
pub struct TabletopSim {
    env: TabletopEnv,
}

impl TabletopSim {
    pub fn new(env: TabletopEnv) -> Self {
        Self { env }
    }

    pub fn env(&self) -> &TabletopEnv {
        &self.env
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
        CONTROL_HZ
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
        let o = self.env.observe();
        Ok(observation(o.state.to_vec(), o))
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

/// The observation in the UR5 layout the control loop's policies read: 6 joint positions, 6
/// joint velocities, the gripper closure, then LIBERO's 8-D state; both cameras when rendered.
pub fn loop_observation(env: &mut TabletopEnv) -> Observation {
    let o = env.observe();
    let mut state = Vec::with_capacity(21);
    state.extend_from_slice(&env.joints());
    state.extend_from_slice(&env.joint_velocities());
    state.push(env.gripper_closure());
    state.extend_from_slice(&o.state);
    observation(state, o)
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
