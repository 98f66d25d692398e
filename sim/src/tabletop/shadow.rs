//! The scripted expert as a `robot::Policy` that sees the arm only through the observation.
//!
//! The expert is a 20 Hz proportional controller written against the simulator's own state.
//! Behind the real-time loop the arm keeps moving while a chunk is computed, so an expert that
//! read the live scene would plan from one pose while the loop applies its plan from another
//! (observed) pose, and the two disagree by a tick: the arm oscillates and fails. Instead the
//! policy keeps a private copy of the scene (a stand-in for perception), re-poses it to the
//! observed joints, lets the expert step that copy, and returns the copy's joint targets.

use super::env::TabletopEnv;
use super::expert::Expert;
use super::tasks::{Task, TaskError};
use super::CONTROL_HZ;
use rudder_robot::{Action, ActionChunk, ActionSpace, Observation, Policy, PolicyError};

pub struct ShadowExpert {
    shadow: TabletopEnv,
    expert: Expert,
    horizon: usize,
    period: f64,
    /// Real-time pacing (`paced`): the last inference's start.
    paced: Option<Option<std::time::Instant>>,
}

impl ShadowExpert {
    /// The expert for `task`'s episode `episode` under `seed` (the same arguments the simulated
    /// scene was built with), planning `horizon` steps ahead (at least 2: the loop follows a
    /// chunk from its second point).
    pub fn new(task: &Task, seed: u64, episode: usize, horizon: usize) -> Result<Self, TaskError> {
        let shadow = TabletopEnv::new(task, seed, episode, None)?.without_audit();
        Ok(Self {
            expert: Expert::new(&shadow),
            shadow,
            horizon: horizon.max(2),
            period: 1.0 / CONTROL_HZ,
            paced: None,
        })
    }

    /// For an arm that is not stepped by the loop (a ROS 2 driver moving on its own clock):
    /// the expert runs at its own 20 Hz (each inference waits out the rest of 50 ms) and its
    /// chunk starts one expert step after the observation, since the arm has not yet been
    /// commanded towards it.
    pub fn paced(mut self) -> Self {
        self.paced = Some(None);
        self.period = 1.0 / CONTROL_HZ;
        self
    }

    /// The expert's scene copy holds the task's goal.
    pub fn task_done(&self) -> bool {
        self.shadow.success()
    }

    /// The control period the loop runs at: the simulator takes one step per tick, so the
    /// expert's steps are this far apart (default: the simulator's own 20 Hz).
    pub fn with_period(mut self, period_s: f64) -> Self {
        if period_s.is_finite() && period_s > 0.0 {
            self.period = period_s;
        }
        self
    }

    /// One expert step on `env` from joints `q`: the joint target and the gripper command.
    fn step(
        env: &mut TabletopEnv,
        expert: &mut Expert,
        q: &[f64; 6],
        closure: Option<f64>,
    ) -> Result<([f64; 6], f64), String> {
        env.repose(q, closure)?;
        let a = expert.act(env);
        if a.iter().any(|x| !x.is_finite()) {
            return Err("the expert produced a non-finite action".into());
        }
        env.step(&a);
        Ok((env.joints(), a[6]))
    }
}

impl Policy for ShadowExpert {
    /// A joint-position chunk on the expert's own clock, starting at the observation: point
    /// `i` is where the expert's plan (rolled out on a copy of the scene) has the arm after
    /// the command of tick `k + i`. The simulator reaches a commanded position within its
    /// tick, so point 0 stands for the command the loop already sent at the observation's
    /// tick and the loop follows from point 1 on.
    fn infer(&mut self, obs: &Observation) -> Result<ActionChunk, PolicyError> {
        if let Some(last) = self.paced.as_mut() {
            if let Some(t) = last {
                let wait =
                    std::time::Duration::from_secs_f64(self.period).saturating_sub(t.elapsed());
                std::thread::sleep(wait);
            }
            *last = Some(std::time::Instant::now());
        }
        let q: [f64; 6] = obs.state.get(..6).and_then(|s| s.try_into().ok()).ok_or(
            PolicyError::BadObservation {
                field: "state",
                reason: format!(
                    "{} values, need the 6 joint positions first",
                    obs.state.len()
                ),
            },
        )?;
        // The gripper's closure follows the joints in the documented state layout. An arm on
        // its own clock reports it late (DDS and the driver's tick): taking it would reopen the
        // copy's fingers while the expert is closing them, so the copy never holds what the
        // real gripper holds and the two scenes part ways. Paced, the copy keeps its own
        // gripper, driven by the expert's commands.
        let closure = if self.paced.is_some() {
            None
        } else {
            obs.state.get(12).copied()
        };
        let (target, grip) = Self::step(&mut self.shadow, &mut self.expert, &q, closure)
            .map_err(PolicyError::Inference)?;
        let mut actions = Vec::with_capacity(self.horizon);
        actions.push(Action::JointPositions {
            q: target.to_vec(),
            gripper: Some(grip),
        });
        {
            let (mut env, mut expert) = (self.shadow.clone(), self.expert.clone());
            let mut q = target;
            for _ in 1..self.horizon {
                match Self::step(&mut env, &mut expert, &q, None) {
                    Ok((nq, g)) => {
                        q = nq;
                        actions.push(Action::JointPositions {
                            q: q.to_vec(),
                            gripper: Some(g),
                        });
                    }
                    // The plan is only a preview; after a failed preview step it holds the
                    // last point, so the chunk still covers the horizon and the loop does not
                    // run out of reference before the next inference.
                    Err(_) => {
                        if let Some(last) = actions.last().cloned() {
                            actions.resize(self.horizon, last);
                        }
                        break;
                    }
                }
            }
        }
        let dt = self.period;
        let start = if self.paced.is_some() {
            obs.timestamp + dt
        } else {
            obs.timestamp
        };
        ActionChunk::new(ActionSpace::JointPositions { dof: 6 }, start, dt, actions)
            .map_err(|e| PolicyError::Inference(e.to_string()))
    }
}
