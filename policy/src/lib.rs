//! rudder-policy: policies built from rudder-tune models, behind rudder-robot's `Policy` trait.
//!
//! - [`flow`]: [`FlowPolicy`], a pi0-style VLA (PaliGemma prefix + flow-matching action expert).
//! - [`preprocess`]: camera images to the model's pixel tensor.
//! - [`prompt`]: the byte-level prompt mapping.
//! - [`tokenizer`]: prompt tokenizers: a BPE trained here (`tokenizer.json`) or bytes.
//! - [`normalize`]: pi0 mean/std normalisation of state and actions.
//! - [`noise`]: the seeded Gaussian noise the Euler sampler starts from.
//! - [`dataset`]: tabletop demo data sets (`rudder demos`) for training.
//! - [`train`]: training a small VLA-flow policy from scratch with resumable checkpoints.

pub mod dataset;
pub mod error;
pub mod flow;
pub mod noise;
pub mod normalize;
pub mod preprocess;
pub mod prompt;
pub mod tokenizer;
pub mod train;

pub use error::FlowError;
pub use flow::{FlowPolicy, PolicySettings};
pub use tokenizer::PromptTokenizer;
