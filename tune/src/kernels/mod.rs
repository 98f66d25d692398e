//! The CPU kernels behind the blocks, private to the crate: nothing here is model API, and
//! nothing here imports from [`crate::blocks`] or [`crate::models`] (the dependency runs one
//! way, blocks -> kernels).
//!
//! - [`fastmath`]: vectorised exp, softmax rows, log-sum-exp and the gated activations of
//!   SwiGLU / GeGLU with their backward, and uninitialised output buffers.
//! - [`packed_gemm`]: the packed-panel AVX-512 f32 matmul (weight packed once, gated-MLP
//!   epilogue) and the FMA-peak measurement behind [`crate::bench`].
//! - [`matmul`]: the column-split gemm for the CPU f32 projections the packed kernel does not
//!   take.
//! - [`fused_attention`]: scaled dot-product attention in one pass, with its backward.
//! - [`spin_pool`]: the thread pool whose helpers poll before parking, shared by the kernels.
//!
//! Tuning knobs come from the environment, read once through [`env_number`]:
//! `RUDDER_SPIN_US` (spin window) and `RUDDER_PACKED_WEIGHTS_MIB` (packed-weight budget).

pub(crate) mod fastmath;
pub(crate) mod fused_attention;
pub(crate) mod matmul;
pub(crate) mod packed_gemm;
pub(crate) mod spin_pool;

/// A whole number from environment variable `name`; `None` when unset or unreadable (the
/// tuning knobs then keep their defaults).
pub(crate) fn env_number(name: &str) -> Option<u64> {
    std::env::var(name).ok()?.trim().parse().ok()
}
