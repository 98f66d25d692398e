//! Training on candle autograd: AdamW as PyTorch computes it, the cosine schedule with warmup,
//! gradient clipping and accumulation, a supervised fine-tuning loop, and resumable
//! checkpoints written atomically.

pub mod adamw;
pub mod checkpoint;
pub mod cross_entropy;
pub mod lora_backprop;
pub mod rng;
pub mod schedule;
pub mod sft;

pub use adamw::{AdamW, AdamWConfig};
pub use rng::Rng;
pub use schedule::CosineSchedule;
pub use sft::{SftConfig, SftExample, SftTrainer, StepStats};
