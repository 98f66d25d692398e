//! Errors of the core. Every variant names the file and the tensor or field at fault, because a
//! user holding a broken checkpoint needs to know what to fix, not just that something failed.

use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum TuneError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: not valid JSON: {msg}")]
    Json { path: PathBuf, msg: String },
    #[error("{path}: field `{field}`: {problem}")]
    ConfigField {
        path: PathBuf,
        field: String,
        problem: String,
    },
    #[error("{path}: unknown architecture `{arch}` (supported: {supported})")]
    UnknownArchitecture {
        path: PathBuf,
        arch: String,
        supported: String,
    },
    #[error("{path}: not a valid safetensors file: {msg}")]
    Safetensors { path: PathBuf, msg: String },
    #[error("{path}: tensor `{tensor}`: {problem}")]
    Tensor {
        path: PathBuf,
        tensor: String,
        problem: String,
    },
    #[error("{context}: {source}")]
    Candle {
        context: String,
        #[source]
        source: candle_core::Error,
    },
    #[error("{path}: {problem}")]
    File { path: PathBuf, problem: String },
    /// Bad input to a function of the core; `input` names it (`tokenizer`, `vocab_size`, ...).
    #[error("input `{input}`: {problem}")]
    Input { input: String, problem: String },
    #[error("{0}")]
    Invalid(String),
}

impl TuneError {
    pub fn input(input: impl Into<String>, problem: impl Into<String>) -> Self {
        Self::Input {
            input: input.into(),
            problem: problem.into(),
        }
    }
}

pub type Result<T> = std::result::Result<T, TuneError>;

/// Attaches what was being done to a candle error (candle's own messages name tensors but not
/// which model or file was involved).
pub trait Context<T> {
    fn context(self, what: impl Into<String>) -> Result<T>;
}

impl<T> Context<T> for candle_core::Result<T> {
    fn context(self, what: impl Into<String>) -> Result<T> {
        self.map_err(|source| TuneError::Candle {
            context: what.into(),
            source,
        })
    }
}
