//! The interface the control loop calls to get actions. Implemented by `rudder-policy` (models)
//! and by the synthetic planners in this crate's benchmark and tests.

use crate::types::{ActionChunk, Observation};
use thiserror::Error;

#[derive(Debug, Error, Clone, PartialEq)]
pub enum PolicyError {
    #[error("observation field `{field}`: {reason}")]
    BadObservation { field: &'static str, reason: String },
    #[error("inference failed: {0}")]
    Inference(String),
    #[error("policy unavailable: {0}")]
    Unavailable(String),
}

/// A policy maps the newest observation to a chunk of future targets. It runs on the inference
/// thread, never on the control thread, so it may take as long as it needs; the loop's watchdog
/// decides what "too long" means.
pub trait Policy: Send {
    fn infer(&mut self, obs: &Observation) -> Result<ActionChunk, PolicyError>;

    /// Called when an episode restarts, so recurrent state can be cleared.
    fn reset(&mut self) {}
}

impl<P: Policy + ?Sized> Policy for Box<P> {
    fn infer(&mut self, obs: &Observation) -> Result<ActionChunk, PolicyError> {
        (**self).infer(obs)
    }
    fn reset(&mut self) {
        (**self).reset()
    }
}
