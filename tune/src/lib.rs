//! rudder-tune: the transformer and fine-tuning core every Rudder model is built from.
//!
//! Blocks ([`blocks`]) with Hub-compatible parameter names, models ([`models`]) loaded from
//! `config.json` + safetensors, named hook points ([`hooks`]), greedy generation with a KV
//! cache ([`generate`]), checkpoint I/O ([`checkpoint`]), reference comparison ([`verify`]) and
//! prompt tokenizers ([`text`]).
//!
//! The CPU kernels behind the blocks (packed AVX-512 matmul, fused attention, vectorised
//! softmax and activations) and their spinning thread pool live in `kernels`, private to the
//! crate; [`bench`] is their only public face (thread count and FMA peak for benchmarks).

pub mod bench;
pub mod blocks;
pub mod checkpoint;
pub mod config;
pub mod diffusion;
pub mod error;
pub mod generate;
pub mod hooks;
pub mod image;
pub mod intruder;
mod kernels;
pub mod load;
pub mod lora;
pub mod models;
pub mod peft;
pub mod rl;
pub mod state;
pub mod text;
pub mod train;
pub mod verify;

pub use candle_core;
pub use candle_nn;
pub use error::{Result, TuneError};
