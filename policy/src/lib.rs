//! rudder-policy: policies built from rudder-tune models, behind rudder-robot's `Policy` trait.
//!
//! - [`vla`]: [`VlaPolicy`], a trained VLA behind `Policy`: pi0-style (PaliGemma prefix +
//!   flow-matching action expert) or OpenVLA-style action tokens.
//! - [`tokens`]: the action-token head (256 bins, autoregressive or parallel decoding).
//! - [`preprocess`]: camera images to the model's pixel tensor (re-exported from
//!   `rudder_tune::image`).
//! - [`prompt`]: the byte-level prompt mapping (re-exported from `rudder_tune::text`).
//! - [`tokenizer`]: prompt tokenizers: a BPE trained here (`tokenizer.json`) or bytes
//!   (re-exported from `rudder_tune::text`).
//! - [`normalize`]: pi0 mean/std normalisation of state and actions.
//! - [`noise`]: the seeded Gaussian noise the Euler sampler starts from.
//! - [`dataset`]: tabletop demo data sets (`rudder demos`) for training.
//! - [`train`]: training a small VLA (either head) from scratch with resumable checkpoints.

pub mod dataset;
pub mod driving;
pub mod error;
pub mod noise;
pub mod normalize;
pub mod rl;
pub mod tokens;
pub mod train;
pub mod vla;

pub use error::FlowError;
pub use rudder_tune::image as preprocess;
pub use rudder_tune::text::{prompt, tokenizer};
pub use tokenizer::PromptTokenizer;
pub use vla::{Inpainting, PolicySettings, VlaPolicy};
