//! Errors of the classifier. Each names the file, field, camera or input at fault.

use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum RewardError {
    #[error(transparent)]
    Core(#[from] rudder_tune::TuneError),
    #[error("{path}: {problem}")]
    File { path: PathBuf, problem: String },
    #[error("{path}: field `{field}`: {problem}")]
    Field {
        path: PathBuf,
        field: String,
        problem: String,
    },
    /// Bad input to a classification; `input` names it (a camera, `instruction`, ...).
    #[error("input `{input}`: {problem}")]
    Input { input: String, problem: String },
    /// Boxed: the data set's errors are large and rare.
    #[error(transparent)]
    Data(Box<crate::dataset::DatasetError>),
    #[error("inference: {0}")]
    Inference(#[from] candle_core::Error),
}

impl RewardError {
    pub fn input(input: impl Into<String>, problem: impl Into<String>) -> Self {
        Self::Input {
            input: input.into(),
            problem: problem.into(),
        }
    }

    pub fn field(path: impl Into<PathBuf>, field: &str, problem: impl Into<String>) -> Self {
        Self::Field {
            path: path.into(),
            field: field.into(),
            problem: problem.into(),
        }
    }
}

impl From<crate::dataset::DatasetError> for RewardError {
    fn from(e: crate::dataset::DatasetError) -> Self {
        Self::Data(Box::new(e))
    }
}
