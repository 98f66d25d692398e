//! Errors of the steering crate. Each names the file and the field, layer or cluster at fault.

use std::path::PathBuf;

use rudder_tune::TuneError;

#[derive(Debug, thiserror::Error)]
pub enum SteerError {
    /// Loading the model (config, safetensors, missing `lm_head` / `embed_tokens`...).
    #[error("{0}")]
    Tune(#[from] TuneError),
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: not valid {format}: {msg}")]
    Parse {
        path: PathBuf,
        format: &'static str,
        msg: String,
    },
    #[error("{path}: `{field}`: {problem}")]
    Field {
        path: PathBuf,
        field: String,
        problem: String,
    },
    #[error("{context}: {source}")]
    Candle {
        context: String,
        #[source]
        source: rudder_tune::candle_core::Error,
    },
    #[error("{0}")]
    Invalid(String),
}

pub type Result<T> = std::result::Result<T, SteerError>;

pub(crate) fn io_err(path: &std::path::Path) -> impl FnOnce(std::io::Error) -> SteerError + '_ {
    move |source| SteerError::Io {
        path: path.to_path_buf(),
        source,
    }
}

pub(crate) trait CandleContext<T> {
    fn ctx(self, what: impl FnOnce() -> String) -> Result<T>;
}

impl<T> CandleContext<T> for rudder_tune::candle_core::Result<T> {
    fn ctx(self, what: impl FnOnce() -> String) -> Result<T> {
        self.map_err(|source| SteerError::Candle {
            context: what(),
            source,
        })
    }
}
