//! Training on candle autograd: AdamW as PyTorch computes it, the cosine schedule with warmup,
//! gradient clipping and accumulation, one trainer loop ([`Trainer`]) that every model family
//! plugs into ([`Family`]), resumable checkpoints written atomically, the supervised
//! fine-tuning family, and seeded from-scratch initialisation ([`init_from_scratch`]).

pub mod adamw;
pub mod checkpoint;
pub mod cross_entropy;
pub mod init;
pub mod lm_batch;
pub mod lora_backprop;
pub mod rng;
pub mod schedule;
pub mod sft;
pub mod trainer;

pub use adamw::{AdamW, AdamWConfig};
pub use init::init_from_scratch;
pub use lm_batch::{LmBatch, SftExample};
pub use rng::Rng;
pub use schedule::CosineSchedule;
pub use sft::{SftConfig, SftInput, SftTrainer};
pub use trainer::{Family, Gradients, MicroBatch, Snapshot, StepStats, Trainer, TrainerConfig};
