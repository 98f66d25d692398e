//! An in-process UR5 that follows position commands exactly: the joints become the commanded
//! positions at each command, the velocity is their difference over the period. Used by tests
//! and the benchmark; the tabletop simulator builds on it.

use crate::embodiment::{Embodiment, EmbodimentError};
use crate::safety::JointLimits;
use crate::types::{ArmStateLayout, JointCommand, JointState, Observation};
use crate::ur5::{Joints, Ur5Model, UR_JOINT_NAMES};
use std::time::Instant;

#[derive(Debug, Clone)]
pub struct KinematicUr5 {
    model: Ur5Model,
    rate_hz: f64,
    limits: JointLimits,
    q: Joints,
    qd: Joints,
    gripper: f64,
    instruction: String,
    commands: u64,
}

impl KinematicUr5 {
    /// Starts at rest at `q0`, at the model's native rate.
    pub fn new(model: Ur5Model, q0: Joints) -> Result<Self, EmbodimentError> {
        let limits = JointLimits::ur5();
        for (j, &x) in q0.iter().enumerate() {
            if !(x.is_finite() && x >= limits.lower[j] && x <= limits.upper[j]) {
                return Err(EmbodimentError::BadCommand {
                    field: "initial positions",
                    reason: format!("joint {j} = {x} outside its limits"),
                });
            }
        }
        Ok(Self {
            rate_hz: model.control_rate_hz(),
            model,
            limits,
            q: q0,
            qd: [0.0; 6],
            gripper: 0.0,
            instruction: String::new(),
            commands: 0,
        })
    }

    /// Runs at another rate (e.g. a simulator's step).
    pub fn with_rate(mut self, rate_hz: f64) -> Self {
        if rate_hz.is_finite() && rate_hz > 0.0 {
            self.rate_hz = rate_hz;
        }
        self
    }

    pub fn with_instruction(mut self, instruction: &str) -> Self {
        self.instruction = instruction.to_string();
        self
    }

    pub fn model(&self) -> &Ur5Model {
        &self.model
    }

    pub fn positions(&self) -> Joints {
        self.q
    }

    pub fn velocities(&self) -> Joints {
        self.qd
    }

    pub fn gripper(&self) -> f64 {
        self.gripper
    }

    pub fn commands_received(&self) -> u64 {
        self.commands
    }
}

impl Embodiment for KinematicUr5 {
    fn name(&self) -> &str {
        match self.model.variant {
            crate::ur5::Ur5Variant::Ur5 => "kinematic-ur5",
            crate::ur5::Ur5Variant::Ur5e => "kinematic-ur5e",
        }
    }

    fn joint_names(&self) -> Vec<String> {
        UR_JOINT_NAMES.iter().map(|s| s.to_string()).collect()
    }

    fn control_rate_hz(&self) -> f64 {
        self.rate_hz
    }

    fn state_layout(&self) -> ArmStateLayout {
        ArmStateLayout::ur5_joints()
    }

    fn limits(&self) -> JointLimits {
        self.limits.clone()
    }

    fn read_state(&mut self) -> Result<JointState, EmbodimentError> {
        Ok(JointState {
            positions: self.q.to_vec(),
            velocities: self.qd.to_vec(),
            gripper: Some(self.gripper),
            sampled_at: Instant::now(),
        })
    }

    fn observe(&mut self) -> Result<Observation, EmbodimentError> {
        let state = self
            .state_layout()
            .build(&self.q, &self.qd, self.gripper, None)
            .map_err(|e| EmbodimentError::Sensor {
                sensor: "joint state".into(),
                reason: e.to_string(),
            })?;
        Ok(Observation {
            images: Default::default(),
            state,
            instruction: self.instruction.clone(),
            timestamp: 0.0,
        })
    }

    fn command(&mut self, cmd: &JointCommand) -> Result<(), EmbodimentError> {
        if cmd.positions.len() != 6 {
            return Err(EmbodimentError::BadCommand {
                field: "positions",
                reason: format!("{} values, the UR5 has 6 joints", cmd.positions.len()),
            });
        }
        if let Some(j) = cmd.positions.iter().position(|x| !x.is_finite()) {
            return Err(EmbodimentError::BadCommand {
                field: "positions",
                reason: format!("joint {j} is not finite"),
            });
        }
        let dt = 1.0 / self.rate_hz;
        for j in 0..6 {
            let next = cmd.positions[j];
            self.qd[j] = (next - self.q[j]) / dt;
            self.q[j] = next;
        }
        if let Some(g) = cmd.gripper.filter(|g| g.is_finite()) {
            self.gripper = g.clamp(-1.0, 1.0);
        }
        self.commands += 1;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn follows_commands_and_rejects_bad_ones() {
        let mut u = KinematicUr5::new(Ur5Model::ur5e(), [0.0, -1.0, 1.0, 0.0, 0.5, 0.0])
            .expect("valid start");
        assert_eq!(u.control_rate_hz(), 500.0);
        let mut c = JointCommand {
            positions: vec![0.002, -1.0, 1.0, 0.0, 0.5, 0.0],
            gripper: Some(3.0),
        };
        u.command(&c).expect("valid");
        assert!((u.velocities()[0] - 1.0).abs() < 1e-9);
        assert_eq!(u.gripper(), 1.0);
        c.positions[2] = f64::NAN;
        assert!(u.command(&c).is_err());
        c.positions.pop();
        assert!(u.command(&c).is_err());
        assert_eq!(u.commands_received(), 1);
        let o = u.observe().expect("observe");
        assert_eq!(o.state.len(), 13);
        assert!(KinematicUr5::new(Ur5Model::ur5(), [0.0, 0.0, 4.0, 0.0, 0.0, 0.0]).is_err());
    }
}
