//! The discrete variance-preserving (VP) noise schedule both samplers read: x_t = alpha_t x0 +
//! sigma_t eps with alpha_t^2 = prod(1 - beta) over the training steps, as diffusers'
//! `alphas_cumprod`.

use crate::error::{Result, TuneError};

/// How the betas grow over the training steps (diffusers' `beta_schedule`).
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum BetaSchedule {
    /// Betas evenly spaced from `start` to `end` (DDPM's 1e-4 .. 0.02): the linear VP-SDE.
    Linear { start: f64, end: f64 },
    /// Square roots evenly spaced, then squared (Stable Diffusion's "scaled_linear").
    ScaledLinear { start: f64, end: f64 },
    /// Nichol and Dhariwal's cosine alpha-bar ("squaredcos_cap_v2"), betas capped at 0.999.
    Cosine,
}

#[derive(Debug, Clone, PartialEq)]
pub struct VpSchedule {
    /// alpha_t^2 for t = 0 .. train_steps - 1.
    pub alphas_cumprod: Vec<f64>,
}

impl VpSchedule {
    pub fn new(train_steps: usize, betas: BetaSchedule) -> Result<VpSchedule> {
        if train_steps < 2 {
            return Err(TuneError::input(
                "train_steps",
                format!("{train_steps}: a schedule needs at least 2 steps"),
            ));
        }
        let n = train_steps;
        let lin = |a: f64, b: f64, i: usize| a + (b - a) * i as f64 / (n - 1) as f64;
        let beta: Vec<f64> = match betas {
            BetaSchedule::Linear { start, end } => (0..n).map(|i| lin(start, end, i)).collect(),
            BetaSchedule::ScaledLinear { start, end } => (0..n)
                .map(|i| lin(start.sqrt(), end.sqrt(), i).powi(2))
                .collect(),
            BetaSchedule::Cosine => {
                let abar = |t: f64| {
                    ((t + 0.008) / 1.008 * std::f64::consts::FRAC_PI_2)
                        .cos()
                        .powi(2)
                };
                (0..n)
                    .map(|i| {
                        let (t1, t2) = (i as f64 / n as f64, (i + 1) as f64 / n as f64);
                        (1.0 - abar(t2) / abar(t1)).min(0.999)
                    })
                    .collect()
            }
        };
        if let Some(b) = beta
            .iter()
            .find(|b| !(b.is_finite() && **b > 0.0 && **b < 1.0))
        {
            return Err(TuneError::input(
                "beta_schedule",
                format!("beta {b} outside (0, 1)"),
            ));
        }
        // diffusers keeps betas and their running product in float32; so do we, so that a
        // schedule here is that schedule to the last bit (near t = T, where alpha is tiny, the
        // x0 estimate divides by it and f64 would drift from diffusers by more than 1e-5).
        let mut acc = 1.0f32;
        let alphas_cumprod = beta
            .iter()
            .map(|&b| {
                acc *= 1.0 - b as f32;
                acc as f64
            })
            .collect();
        Ok(VpSchedule { alphas_cumprod })
    }

    pub fn train_steps(&self) -> usize {
        self.alphas_cumprod.len()
    }

    /// (alpha_t, sigma_t) at training step `t`.
    pub fn alpha_sigma(&self, t: usize) -> (f64, f64) {
        let a = self.alphas_cumprod[t.min(self.alphas_cumprod.len() - 1)];
        (a.sqrt(), (1.0 - a).sqrt())
    }
}
