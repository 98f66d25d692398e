//! The building blocks every Rudder model is made of. Each block uses candle's fused CPU kernels
//! for inference and switches to differentiable compositions of primitive ops when its input
//! or its weights are tracked by autograd (training), because the fused kernels have no backward.

pub mod attention;
pub mod fastmath;
pub mod fused_attention;
pub mod linear;
pub mod matmul;
pub mod mlp;
pub mod norm;
pub mod packed_gemm;
pub mod qkv;
pub mod rope;
pub mod spin_pool;

pub use attention::{Attention, AttentionConfig, KvCache};
pub use linear::Linear;
pub use mlp::{Activation, Mlp, MlpKind};
pub use norm::{LayerNorm, RmsNorm};
pub use rope::{RopeConfig, RotaryEmbedding};

use candle_core::{Result, Tensor, D};

/// A whole number from environment variable `name`; `None` when unset or unreadable (the
/// tuning knobs then keep their defaults).
pub(crate) fn env_number(name: &str) -> Option<u64> {
    std::env::var(name).ok()?.trim().parse().ok()
}

/// Softmax over the last dimension, differentiable when needed.
pub fn softmax_last(x: &Tensor) -> Result<Tensor> {
    if x.track_op() {
        candle_nn::ops::softmax(x, D::Minus1)
    } else {
        candle_nn::ops::softmax_last_dim(x)
    }
}
