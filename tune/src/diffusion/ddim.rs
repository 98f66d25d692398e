//! DDIM (Song et al. 2021) on a [`VpSchedule`], step for step as diffusers' `DDIMScheduler`
//! with its defaults ("leading" timestep spacing, offset 0, the final alpha taken as 1): from
//! timestep t to t - T / n, the predicted clean sample and noise recombined at the next noise
//! level, plus eta-scaled fresh noise. With eta > 0 the step is a Gaussian whose mean and
//! standard deviation [`DdimStep`] returns, which DDPO needs for its likelihood ratios.

use super::schedule::VpSchedule;
use super::Prediction;
use crate::error::{Result, TuneError};
use candle_core::Tensor;

#[derive(Debug, Clone)]
pub struct Ddim {
    schedule: VpSchedule,
    timesteps: Vec<usize>,
    eta: f64,
    prediction: Prediction,
}

/// One DDIM transition.
#[derive(Debug, Clone)]
pub struct DdimStep {
    /// The next, less noisy sample (mean plus std x noise).
    pub prev_sample: Tensor,
    /// The model's clean-sample estimate at this step.
    pub pred_x0: Tensor,
    /// Mean and standard deviation of the transition p(x_{t-1} | x_t).
    pub mean: Tensor,
    pub std: f64,
}

impl Ddim {
    pub fn new(
        schedule: VpSchedule,
        steps: usize,
        eta: f64,
        prediction: Prediction,
    ) -> Result<Ddim> {
        let n = schedule.train_steps();
        if steps == 0 || steps > n {
            return Err(TuneError::input(
                "steps",
                format!("{steps}: DDIM needs 1 ..= {n} (the training steps)"),
            ));
        }
        if !(eta.is_finite() && (0.0..=1.0).contains(&eta)) {
            return Err(TuneError::input("eta", format!("{eta}: must be in [0, 1]")));
        }
        let ratio = n / steps;
        let timesteps = (0..steps).rev().map(|i| i * ratio).collect();
        Ok(Ddim {
            schedule,
            timesteps,
            eta,
            prediction,
        })
    }

    /// Training steps visited, from the noisiest.
    pub fn timesteps(&self) -> &[usize] {
        &self.timesteps
    }

    fn alphas_cumprod_at(&self, t: i64) -> f64 {
        if t < 0 {
            1.0
        } else {
            self.schedule.alphas_cumprod[t as usize]
        }
    }

    /// The step from `timesteps()[index]`; `noise` (standard normal, the sample's shape) is
    /// required when eta > 0 and ignored otherwise.
    pub fn step(
        &self,
        index: usize,
        model_output: &Tensor,
        sample: &Tensor,
        noise: Option<&Tensor>,
    ) -> Result<DdimStep> {
        let cx = |e| TuneError::Candle {
            context: "DDIM step".into(),
            source: e,
        };
        let t = *self.timesteps.get(index).ok_or_else(|| {
            TuneError::input(
                "index",
                format!("{index}: only {} DDIM steps", self.timesteps.len()),
            )
        })? as i64;
        let prev = t - (self.schedule.train_steps() / self.timesteps.len()) as i64;
        let a_t = self.alphas_cumprod_at(t);
        let a_prev = self.alphas_cumprod_at(prev);
        let b_t = 1.0 - a_t;
        let (pred_x0, pred_eps) = match self.prediction {
            Prediction::Epsilon => {
                let x0 = ((sample - model_output.affine(b_t.sqrt(), 0.0).map_err(cx)?)
                    .map_err(cx)?
                    .affine(1.0 / a_t.sqrt(), 0.0))
                .map_err(cx)?;
                (x0, model_output.clone())
            }
            Prediction::Sample => {
                let eps = ((sample - model_output.affine(a_t.sqrt(), 0.0).map_err(cx)?)
                    .map_err(cx)?
                    .affine(1.0 / b_t.sqrt(), 0.0))
                .map_err(cx)?;
                (model_output.clone(), eps)
            }
        };
        let variance = (1.0 - a_prev) / b_t * (1.0 - a_t / a_prev);
        let std = self.eta * variance.max(0.0).sqrt();
        let direction = (1.0 - a_prev - std * std).max(0.0).sqrt();
        let mean = (pred_x0.affine(a_prev.sqrt(), 0.0).map_err(cx)?
            + pred_eps.affine(direction, 0.0).map_err(cx)?)
        .map_err(cx)?;
        let prev_sample = if self.eta > 0.0 {
            let z = noise.ok_or_else(|| {
                TuneError::input("noise", "DDIM with eta > 0 needs a noise tensor")
            })?;
            (&mean + z.affine(std, 0.0).map_err(cx)?).map_err(cx)?
        } else {
            mean.clone()
        };
        Ok(DdimStep {
            prev_sample,
            pred_x0,
            mean,
            std,
        })
    }
}
