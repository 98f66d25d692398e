//! Models, one file each, with a `Config` read from `config.json` and `Model::new(cfg, vb)`
//! taking weights by their Hub names.

pub mod decoder;
pub(crate) mod decoder_cpu;
pub mod diffusion_planner;
pub mod gemma;
pub mod llama;
pub mod paligemma;
pub mod pi0;
pub mod siglip;
