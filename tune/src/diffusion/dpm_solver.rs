//! DPM-Solver++ (Lu et al. 2022), multistep, first or second order, in the data-prediction
//! (x0) form, step for step as diffusers' `DPMSolverMultistepScheduler` with its defaults
//! ("linspace" timestep spacing, the midpoint second-order update, the final noise level 0, and
//! a first-order last step). Works in half-log-SNR lambda = log(alpha / sigma): from s to t with
//! h = lambda_t - lambda_s, x_t = (sigma_t / sigma_s) x_s - alpha_t (e^-h - 1) D, where D is the
//! current x0 estimate (first order) or it corrected by the previous one (second order).

use super::schedule::VpSchedule;
use super::Prediction;
use crate::error::{Result, TuneError};
use candle_core::Tensor;

#[derive(Debug, Clone)]
pub struct DpmSolverPP {
    timesteps: Vec<usize>,
    /// Noise-to-signal ratio sigma / alpha at each timestep, then the final 0.
    ratios: Vec<f64>,
    order: usize,
    prediction: Prediction,
    /// The previous step's x0 estimate and its lambda, for the second-order update.
    previous: Option<(Tensor, f64)>,
    index: usize,
}

impl DpmSolverPP {
    pub fn new(
        schedule: VpSchedule,
        steps: usize,
        order: usize,
        prediction: Prediction,
    ) -> Result<DpmSolverPP> {
        let n = schedule.train_steps();
        if steps == 0 || steps > n {
            return Err(TuneError::input(
                "steps",
                format!("{steps}: DPM-Solver++ needs 1 ..= {n} (the training steps)"),
            ));
        }
        if !(order == 1 || order == 2) {
            return Err(TuneError::input("order", format!("{order}: 1 or 2")));
        }
        // linspace(0, n - 1, steps + 1), rounded, reversed, the last (0) dropped.
        let timesteps: Vec<usize> = (0..=steps)
            .map(|i| ((n - 1) as f64 * i as f64 / steps as f64).round() as usize)
            .rev()
            .take(steps)
            .collect();
        let mut ratios: Vec<f64> = timesteps
            .iter()
            .map(|&t| {
                let a = schedule.alphas_cumprod[t];
                // Stored as float32, as diffusers' `sigmas` are.
                ((1.0 - a) / a).sqrt() as f32 as f64
            })
            .collect();
        ratios.push(0.0);
        Ok(DpmSolverPP {
            timesteps,
            ratios,
            order,
            prediction,
            previous: None,
            index: 0,
        })
    }

    pub fn timesteps(&self) -> &[usize] {
        &self.timesteps
    }

    /// (alpha, sigma, lambda) for a noise-to-signal ratio; lambda is +inf at ratio 0.
    fn levels(ratio: f64) -> (f64, f64, f64) {
        let alpha = 1.0 / (ratio * ratio + 1.0).sqrt();
        let sigma = ratio * alpha;
        (alpha, sigma, alpha.ln() - sigma.ln())
    }

    /// Starts a new trajectory (drops the remembered x0 estimate).
    pub fn reset(&mut self) {
        self.previous = None;
        self.index = 0;
    }

    /// One step: `model_output` is the model's prediction at `timesteps()[k]` for the k-th
    /// call since [`Self::reset`] (or construction); returns the next sample.
    pub fn step(&mut self, model_output: &Tensor, sample: &Tensor) -> Result<Tensor> {
        let cx = |e| TuneError::Candle {
            context: "DPM-Solver++ step".into(),
            source: e,
        };
        let i = self.index;
        if i >= self.timesteps.len() {
            return Err(TuneError::input(
                "step",
                format!("all {} steps are done; reset() first", self.timesteps.len()),
            ));
        }
        let (alpha_s, sigma_s, lambda_s) = Self::levels(self.ratios[i]);
        let (alpha_t, sigma_t, lambda_t) = Self::levels(self.ratios[i + 1]);
        let x0 = match self.prediction {
            Prediction::Sample => model_output.clone(),
            Prediction::Epsilon => ((sample - model_output.affine(sigma_s, 0.0).map_err(cx)?)
                .map_err(cx)?
                .affine(1.0 / alpha_s, 0.0))
            .map_err(cx)?,
        };
        let h = lambda_t - lambda_s;
        // e^-h - 1, written so that the final step (lambda_t = inf, e^-h = 0) stays finite.
        let em1 = if h.is_infinite() { -1.0 } else { (-h).exp_m1() };
        let last = i + 1 == self.timesteps.len();
        let d = match (&self.previous, self.order == 2 && !last) {
            (Some((x0_prev, lambda_prev)), true) => {
                let r = (lambda_s - lambda_prev) / h;
                // D = x0 + (x0 - x0_prev) / (2 r): the midpoint form.
                let diff = (&x0 - x0_prev).map_err(cx)?;
                (&x0 + diff.affine(0.5 / r, 0.0).map_err(cx)?).map_err(cx)?
            }
            _ => x0.clone(),
        };
        let ratio = if sigma_s > 0.0 {
            sigma_t / sigma_s
        } else {
            0.0
        };
        let next = (sample.affine(ratio, 0.0).map_err(cx)?
            - d.affine(alpha_t * em1, 0.0).map_err(cx)?)
        .map_err(cx)?;
        self.previous = Some((x0, lambda_s));
        self.index += 1;
        Ok(next)
    }
}
