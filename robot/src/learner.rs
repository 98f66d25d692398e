//! A policy that learns from its own experience: the loop asks it for chunks as it asks any
//! policy, and a reset-free run tells it how each attempt ended. Learning happens inside
//! `infer` (synchronously, in simulated time), so the loop stays the one stepped loop.

use crate::policy::{Policy, PolicyError};
use crate::types::Observation;

/// How an attempt of a reset-free run ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum AttemptEnd {
    /// The success detector said the task is done (a terminal state, reward 1).
    Success,
    /// The attempt used up its step budget (not terminal: the task could still be done).
    TimeOut,
    /// An object left the table and the scene was put back (not terminal).
    Intervention,
}

impl AttemptEnd {
    pub fn name(self) -> &'static str {
        match self {
            AttemptEnd::Success => "success",
            AttemptEnd::TimeOut => "time-out",
            AttemptEnd::Intervention => "intervention",
        }
    }
}

/// A policy that is told how its attempts end.
pub trait Learner: Policy {
    /// The attempt whose chunks the policy has been giving ended; `last` is its final
    /// observation (with the attempt's instruction).
    fn end_attempt(&mut self, last: &Observation, end: AttemptEnd) -> Result<(), PolicyError>;
}
