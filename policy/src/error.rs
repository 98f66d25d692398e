//! Errors of the policies. Each names the file, field or input at fault.

use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum FlowError {
    #[error(transparent)]
    Load(#[from] rudder_tune::TuneError),
    #[error("{path}: {problem}")]
    File { path: PathBuf, problem: String },
    #[error("{path}: field `{field}`: {problem}")]
    Field {
        path: PathBuf,
        field: String,
        problem: String,
    },
    /// Bad input to [`crate::VlaPolicy::infer_raw`]; `input` names it (camera, `state`, ...).
    #[error("input `{input}`: {problem}")]
    Input { input: String, problem: String },
    #[error("inference: {0}")]
    Inference(#[from] candle_core::Error),
    /// A data set (or a sample for one) that does not match its own description.
    #[error("data set: {0}")]
    Data(String),
}

impl FlowError {
    pub fn input(input: impl Into<String>, problem: impl Into<String>) -> Self {
        Self::Input {
            input: input.into(),
            problem: problem.into(),
        }
    }
}
