//! The tanh-squashed Gaussian policy head (SAC's, Cal-QL's actor): `a = scale * tanh(u)`,
//! `u = mean + exp(log_std) * eps`, `eps ~ N(0, I)`, sampled with the reparameterisation so
//! that gradients reach `mean` and `log_std`, with the log-density of `a` (tanh and scale
//! Jacobians included).

use candle_core::{Tensor, D};

use crate::error::{Context, Result, TuneError};
use crate::train::Rng;

/// The range `log_std` is clamped to (outside it the clamp passes no gradient).
pub const LOG_STD_MIN: f64 = -5.0;
pub const LOG_STD_MAX: f64 = 2.0;

/// How close to ±1 [`TanhGaussian::log_prob`] lets a squashed action come before `atanh`.
pub const ATANH_EPS: f64 = 1e-6;

/// A diagonal Gaussian over `u` squashed by `tanh` and scaled: per row, `D` independent
/// dimensions with `mean` and `log_std` `[B, D]`.
#[derive(Debug, Clone)]
pub struct TanhGaussian {
    mean: Tensor,
    log_std: Tensor,
    scale: f64,
}

/// `log(1 + e^x)`, stably: `max(x, 0) + log(1 + e^{-|x|})`.
fn softplus(x: &Tensor) -> candle_core::Result<Tensor> {
    x.relu()? + (x.abs()?.neg()?.exp()? + 1.0)?.log()?
}

/// `log(1 - tanh(u)^2) = 2 (log 2 - u - softplus(-2u))`, finite for every finite `u`.
fn log1m_tanh_sq(u: &Tensor) -> candle_core::Result<Tensor> {
    let sp = softplus(&(u * -2.0)?)?;
    ((u.neg()? - sp)? + std::f64::consts::LN_2)? * 2.0
}

impl TanhGaussian {
    /// `mean` and `log_std` of the same shape `[B, D]`; `log_std` is clamped to
    /// [[`LOG_STD_MIN`], [`LOG_STD_MAX`]]; `scale > 0` is the action bound.
    pub fn new(mean: &Tensor, log_std: &Tensor, scale: f64) -> Result<Self> {
        if mean.dims() != log_std.dims() || mean.rank() != 2 {
            return Err(TuneError::input(
                "tanh-gaussian",
                format!(
                    "mean {:?} and log_std {:?}, expected the same [B, D]",
                    mean.dims(),
                    log_std.dims()
                ),
            ));
        }
        if !(scale.is_finite() && scale > 0.0) {
            return Err(TuneError::input("scale", format!("{scale}, must be > 0")));
        }
        let log_std = log_std
            .clamp(LOG_STD_MIN, LOG_STD_MAX)
            .context("clamping log_std")?;
        Ok(Self {
            mean: mean.clone(),
            log_std,
            scale,
        })
    }

    pub fn mean(&self) -> &Tensor {
        &self.mean
    }

    /// The clamped `log_std`.
    pub fn log_std(&self) -> &Tensor {
        &self.log_std
    }

    pub fn scale(&self) -> f64 {
        self.scale
    }

    /// The deterministic action `scale * tanh(mean)` `[B, D]` (for evaluation).
    pub fn mode(&self) -> Result<Tensor> {
        (self.mean.tanh().context("tanh-gaussian mode")? * self.scale).context("tanh-gaussian mode")
    }

    /// `mean` and `log_std` shaped for `noise`: `[B, D]` as they are, `[B, N, D]` repeated
    /// over the `N` samples of each row.
    fn params_for(&self, shape: &[usize]) -> Result<(Tensor, Tensor)> {
        let md = self.mean.dims();
        match shape {
            [b, d] if [*b, *d] == md => Ok((self.mean.clone(), self.log_std.clone())),
            [b, n, d] if [*b, *d] == md => {
                let rep = |t: &Tensor| t.unsqueeze(1).and_then(|t| t.broadcast_as((*b, *n, *d)));
                Ok((
                    rep(&self.mean).context("repeating the mean")?,
                    rep(&self.log_std).context("repeating log_std")?,
                ))
            }
            _ => Err(TuneError::input(
                "noise / action",
                format!("shape {shape:?}, expected {md:?} or [B, N, D] with [B, D] = {md:?}"),
            )),
        }
    }

    /// Sum over the last dimension of the log-density of `a = scale * tanh(u)` given `u` and
    /// the standardised `eps = (u - mean) / std`.
    fn log_density(
        &self,
        u: &Tensor,
        eps: &Tensor,
        log_std: &Tensor,
    ) -> candle_core::Result<Tensor> {
        let half_log_2pi = 0.5 * (2.0 * std::f64::consts::PI).ln();
        let gauss = ((eps.sqr()? * -0.5)? - log_std)?;
        let per_dim = ((gauss - log1m_tanh_sq(u)?)? - (half_log_2pi + self.scale.ln()))?;
        per_dim.sum(D::Minus1)
    }

    /// The reparameterised sample for standard-normal `noise` `[B, D]` (one action per row) or
    /// `[B, N, D]` (`N` per row): the action, shaped as `noise`, and its log-density, shaped as
    /// `noise` without the last dimension. Both carry gradients to `mean` and `log_std`.
    pub fn sample_with(&self, noise: &Tensor) -> Result<(Tensor, Tensor)> {
        let (mean, log_std) = self.params_for(noise.dims())?;
        let what = "tanh-gaussian sample";
        let noise = noise.to_dtype(mean.dtype()).context(what)?;
        let u = (mean + (log_std.exp().context(what)? * &noise).context(what)?).context(what)?;
        let action = (u.tanh().context(what)? * self.scale).context(what)?;
        let logp = self.log_density(&u, &noise, &log_std).context(what)?;
        Ok((action, logp))
    }

    /// [`TanhGaussian::sample_with`] noise drawn from `rng` (`Rng::gaussian`, row-major):
    /// one action per row, `[B, D]` and `[B]`.
    pub fn sample(&self, rng: &mut Rng) -> Result<(Tensor, Tensor)> {
        let (b, d) = (self.mean.dims()[0], self.mean.dims()[1]);
        let noise = Tensor::from_vec(rng.gaussian(b * d), (b, d), self.mean.device())
            .context("tanh-gaussian noise")?;
        self.sample_with(&noise)
    }

    /// `n` actions per row, `[B, n, D]`, and their log-densities `[B, n]` (Cal-QL's sampled
    /// policy actions).
    pub fn sample_n(&self, rng: &mut Rng, n: usize) -> Result<(Tensor, Tensor)> {
        let (b, d) = (self.mean.dims()[0], self.mean.dims()[1]);
        let noise = Tensor::from_vec(rng.gaussian(b * n * d), (b, n, d), self.mean.device())
            .context("tanh-gaussian noise")?;
        self.sample_with(&noise)
    }

    /// The log-density of given actions `[B, D]` or `[B, N, D]` (e.g. the data's, for a BC
    /// term): `a / scale` is clipped to within [`ATANH_EPS`] of ±1 before `atanh`.
    pub fn log_prob(&self, action: &Tensor) -> Result<Tensor> {
        let (mean, log_std) = self.params_for(action.dims())?;
        let what = "tanh-gaussian log_prob";
        let y = (action.to_dtype(mean.dtype()).context(what)? / self.scale)
            .and_then(|y| y.clamp(-1.0 + ATANH_EPS, 1.0 - ATANH_EPS))
            .context(what)?;
        // atanh(y) = (log(1 + y) - log(1 - y)) / 2
        let u = ((y.clone() + 1.0).and_then(|p| p.log()).context(what)?
            - (y.neg().context(what)? + 1.0)
                .and_then(|m| m.log())
                .context(what)?)
        .and_then(|d| d * 0.5)
        .context(what)?;
        let eps = (u.clone() - mean)
            .and_then(|c| c / log_std.exp()?)
            .context(what)?;
        self.log_density(&u, &eps, &log_std).context(what)
    }
}
