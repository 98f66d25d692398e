//! The simulator as an `Embodiment`, so robot's `ControlLoop` drives it like the real arm:
//! joint-position commands in, joint state and LIBERO-style observations out.

use super::env::{TabletopEnv, CONTROL_HZ};
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
        let mut images = BTreeMap::new();
        if let Some(a) = o.agentview {
            images.insert("agentview".to_string(), a);
        }
        if let Some(w) = o.wrist {
            images.insert("wrist".to_string(), w);
        }
        Ok(Observation {
            images,
            state: o.state.to_vec(),
            instruction: o.instruction,
            timestamp: 0.0,
        })
    }

    fn command(&mut self, cmd: &JointCommand) -> Result<(), EmbodimentError> {
        let q: [f64; 6] =
            cmd.positions
                .as_slice()
                .try_into()
                .map_err(|_| EmbodimentError::BadCommand {
                    field: "positions",
                    reason: format!("{} values, the UR5 has 6 joints", cmd.positions.len()),
                })?;
        self.env
            .command_joints(&q, cmd.gripper)
            .map_err(|reason| EmbodimentError::BadCommand {
                field: "positions",
                reason,
            })
    }
}
