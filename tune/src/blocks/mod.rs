//! The building blocks every Rudder model is made of. Each block uses fused CPU kernels
//! (`crate::kernels`, private to the crate) for inference and switches to differentiable
//! compositions of primitive ops when its input or its weights are tracked by autograd
//! (training), because the fused kernels have no backward.
//!
//! The public modules are the model API: [`attention`] (with its [`attention::mask`] builders),
//! [`linear`], [`mlp`], [`norm`] and [`rope`]. `qkv` (the q, k and v projections as one packed
//! pass, with the rotary embedding applied in place) is private to the crate.

pub mod attention;
pub mod linear;
pub mod mlp;
pub mod norm;
mod qkv;
pub mod rope;

pub use attention::{softmax_last, Attention, AttentionConfig, KvCache};
pub use linear::Linear;
pub use mlp::{Activation, Mlp, MlpKind};
pub use norm::{LayerNorm, RmsNorm};
pub use rope::{RopeConfig, RotaryEmbedding};
