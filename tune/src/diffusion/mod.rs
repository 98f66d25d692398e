//! Diffusion sampling shared by every diffusion model (the driving planner first, DDPO's
//! likelihoods later): the VP noise schedule ([`VpSchedule`]), DDIM ([`Ddim`]) and multistep
//! DPM-Solver++ ([`DpmSolverPP`]), each step for step as diffusers' scheduler of the same name
//! (`tests/diffusion_samplers.rs` holds them to diffusers' own numbers).
//!
//! Files: `schedule.rs` (betas and alpha-bar), `ddim.rs`, `dpm_solver.rs`.

pub mod ddim;
pub mod dpm_solver;
pub mod schedule;

pub use ddim::{Ddim, DdimStep};
pub use dpm_solver::DpmSolverPP;
pub use schedule::{BetaSchedule, VpSchedule};

use crate::error::{Result, TuneError};
use candle_core::Tensor;

/// What the model predicts: the noise (DDPM's epsilon) or the clean sample x0 (the Diffusion
/// Planner's choice).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Prediction {
    Epsilon,
    Sample,
}

/// The forward process at training step `t`: alpha_t x0 + sigma_t noise.
pub fn add_noise(schedule: &VpSchedule, x0: &Tensor, noise: &Tensor, t: usize) -> Result<Tensor> {
    let (a, s) = schedule.alpha_sigma(t);
    let cx = |e| TuneError::Candle {
        context: "add_noise".into(),
        source: e,
    };
    (x0.affine(a, 0.0).map_err(cx)? + noise.affine(s, 0.0).map_err(cx)?).map_err(cx)
}
