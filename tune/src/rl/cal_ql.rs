//! Cal-QL's losses (Nakamoto et al. 2023, as RoboFuME trains with it) on candle tensors,
//! following the public JAX code: the TD target, the calibrated CQL penalty, the critic loss,
//! the actor loss with an optional BC term, and SAC's entropy-temperature loss.
//!
//! Shapes: `B` batch rows, `N` sampled actions per row (`n_actions`), `E` Q-networks. Q-values
//! of the ensemble are `[E, B]` / `[E, B, N]`; a single network's `[B]` / `[B, N]` work too.

use candle_core::{DType, Tensor, D};
use serde::{Deserialize, Serialize};

use crate::error::{Context, Result, TuneError};

/// Cal-QL's settings; defaults are the public run scripts' (REFERENCE 2a).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct CalQlConfig {
    /// Discount (0.99).
    pub gamma: f64,
    /// CQL weight alpha (5.0; 1.0 on Adroit).
    pub cql_alpha: f64,
    /// Random and policy actions sampled per state for the logsumexp (10).
    pub n_actions: usize,
    /// CQL temperature (1.0): `logsumexp(q / T) * T`.
    pub temperature: f64,
    /// Target-network Polyak rate (5e-3).
    pub tau: f64,
    /// Weight of the actor's BC regulariser (RoboFuME adds one; REFERENCE gives no weight, so
    /// 0 unless a run sets it).
    pub bc_weight: f64,
    /// Clip the policy actions' Q-values below by the MC return (Cal-QL); `false` is plain CQL.
    pub calibrate: bool,
    /// Importance-sampled logsumexp (subtract each sample's log-density; Cal-QL's default).
    pub importance_sample: bool,
    /// Actions lie in `[-action_scale, action_scale]^A`; random actions are uniform there.
    pub action_scale: f64,
    /// Optional clip of `logsumexp - q_data` (`cql_clip_diff_min/max`, unbounded by default).
    pub clip_diff_min: Option<f64>,
    pub clip_diff_max: Option<f64>,
    /// SAC's entropy target; `None` is `-action_dim`.
    pub target_entropy: Option<f64>,
    /// Learning rates of the actor (1e-4) and the critic (3e-4).
    pub policy_lr: f64,
    pub q_lr: f64,
    /// Batch size (256), offline share of each fine-tuning batch (0.5), updates per
    /// environment step (1).
    pub batch_size: usize,
    pub mixing_ratio: f64,
    pub utd_ratio: usize,
}

impl Default for CalQlConfig {
    fn default() -> Self {
        Self {
            gamma: 0.99,
            cql_alpha: 5.0,
            n_actions: 10,
            temperature: 1.0,
            tau: 5e-3,
            bc_weight: 0.0,
            calibrate: true,
            importance_sample: true,
            action_scale: 1.0,
            clip_diff_min: None,
            clip_diff_max: None,
            target_entropy: None,
            policy_lr: 1e-4,
            q_lr: 3e-4,
            batch_size: 256,
            mixing_ratio: 0.5,
            utd_ratio: 1,
        }
    }
}

impl CalQlConfig {
    /// The entropy target for `action_dim`-dimensional actions.
    pub fn target_entropy_for(&self, action_dim: usize) -> f64 {
        self.target_entropy.unwrap_or(-(action_dim as f64))
    }

    /// Log-density of the uniform distribution the random actions come from:
    /// `-A log(2 scale)` (`log(0.5^A)` for scale 1, the JAX code's `random_density`).
    pub fn random_log_density(&self, action_dim: usize) -> f64 {
        -(action_dim as f64) * (2.0 * self.action_scale).ln()
    }
}

fn shape_err(name: &str, got: &[usize], want: &[usize]) -> TuneError {
    TuneError::input(name, format!("shape {got:?}, expected {want:?}"))
}

fn check(name: &str, t: &Tensor, want: &[usize]) -> Result<()> {
    if t.dims() != want {
        return Err(shape_err(name, t.dims(), want));
    }
    Ok(())
}

fn scalar(t: &Tensor, what: &str) -> Result<f32> {
    t.detach()
        .to_dtype(DType::F32)
        .and_then(|t| t.to_scalar::<f32>())
        .context(what.to_string())
}

/// The Bellman target `reward + gamma * (1 - done) * next_q_min`, all `[B]`, detached (no
/// gradient reaches the target network). `next_q_min` is the ensemble minimum of the target
/// network at the policy's next actions; as in Cal-QL's default (`backup_entropy = False`)
/// it carries no entropy term.
pub fn td_target(
    reward: &Tensor,
    done: &Tensor,
    next_q_min: &Tensor,
    gamma: f64,
) -> Result<Tensor> {
    let b = reward.dims();
    if b.len() != 1 {
        return Err(shape_err("reward", b, &[reward.elem_count()]));
    }
    check("done", done, b)?;
    check("next_q_min", next_q_min, b)?;
    let what = "TD target";
    let cont = (done.detach().affine(-1.0, 1.0).context(what)? * gamma).context(what)?;
    let boot = (cont * next_q_min.detach()).context(what)?;
    (reward.detach() + boot).context(what)
}

/// The tensors of [`cal_ql_penalty`]. Every Q-value comes from the online critic at the
/// current observations `s`: `q_data` at the data actions `[E, B]`, `q_rand` at `N` uniform
/// random actions, `q_pi` at `N` actions the policy samples at `s`, and `q_next_pi` at `N`
/// actions the policy samples at the next observations `s'` (still evaluated at `s`, as CQL's
/// and Cal-QL's code do) (`[E, B, N]` each; `[B]` / `[B, N]` for one network). `logp_pi` / `logp_next` `[B, N]` are those actions' log-densities (detached
/// here), `mc_return` `[B]` the data's return-to-go.
#[derive(Debug, Clone, Copy)]
pub struct PenaltyInputs<'a> {
    pub q_data: &'a Tensor,
    pub q_rand: &'a Tensor,
    pub q_pi: &'a Tensor,
    pub logp_pi: &'a Tensor,
    pub q_next_pi: &'a Tensor,
    pub logp_next: &'a Tensor,
    pub mc_return: &'a Tensor,
}

/// The penalty and its diagnostics.
#[derive(Debug, Clone)]
pub struct Penalty {
    /// `cql_alpha * mean_B(logsumexp - q_data)`, summed over the ensemble: a scalar.
    pub loss: Tensor,
    /// Share of `q_pi` / `q_next_pi` entries below the MC return (raised to it when
    /// `calibrate`; the JAX code's `bound_rate`).
    pub clipped_pi: f32,
    pub clipped_next: f32,
    /// Mean over ensemble and batch of the (temperature-scaled) logsumexp.
    pub mean_logsumexp: f32,
}

/// Cal-QL's calibrated CQL penalty, as the public JAX code computes it:
/// 1. calibration: `q_pi` and `q_next_pi` become `max(q, mc_return)` (when `cfg.calibrate`);
///    an entry raised to the bound passes no gradient to the Q-network;
/// 2. importance-sampled logsumexp over the `3N` samples
///    `[q_rand - log U, q_pi - logp_pi, q_next_pi - logp_next]` (`log U`
///    [`CalQlConfig::random_log_density`]), as `T * logsumexp(x / T)`; without
///    `importance_sample`, over `[q_rand, q_data, q_next_pi, q_pi]` unweighted;
/// 3. `cql_alpha * mean_B(logsumexp - q_data)` (the difference optionally clipped), summed
///    over the ensemble.
pub fn cal_ql_penalty(x: &PenaltyInputs, action_dim: usize, cfg: &CalQlConfig) -> Result<Penalty> {
    let qd = x.q_data.dims().to_vec();
    if qd.is_empty() || qd.len() > 2 {
        return Err(TuneError::input(
            "q_data",
            format!("shape {qd:?}, expected [E, B] or [B]"),
        ));
    }
    if !(cfg.temperature.is_finite() && cfg.temperature > 0.0) {
        return Err(TuneError::input(
            "temperature",
            format!("{}, must be > 0", cfg.temperature),
        ));
    }
    let b = qd[qd.len() - 1];
    let n = x.q_rand.dims().last().copied().unwrap_or(0);
    if n == 0 || x.q_rand.rank() != qd.len() + 1 {
        return Err(TuneError::input(
            "q_rand",
            format!(
                "shape {:?}, expected q_data's {qd:?} and N > 0 sampled actions",
                x.q_rand.dims()
            ),
        ));
    }
    let mut qn = qd.clone();
    qn.push(n);
    check("q_rand", x.q_rand, &qn)?;
    check("q_pi", x.q_pi, &qn)?;
    check("q_next_pi", x.q_next_pi, &qn)?;
    check("logp_pi", x.logp_pi, &[b, n])?;
    check("logp_next", x.logp_next, &[b, n])?;
    check("mc_return", x.mc_return, &[b])?;
    let what = "Cal-QL penalty";
    let c = |r: candle_core::Result<Tensor>| r.context(what);

    // 1. Calibration against the MC return-to-go.
    let bound = c(x.mc_return.detach().unsqueeze(1))?; // [B, 1]
    let below = |q: &Tensor| -> Result<f32> {
        let lt = c(q.detach().broadcast_lt(&bound))?;
        scalar(&c(c(lt.to_dtype(DType::F32))?.mean_all())?, what)
    };
    let clipped_pi = below(x.q_pi)?;
    let clipped_next = below(x.q_next_pi)?;
    let (q_pi, q_next) = if cfg.calibrate {
        (
            c(x.q_pi.broadcast_maximum(&bound))?,
            c(x.q_next_pi.broadcast_maximum(&bound))?,
        )
    } else {
        (x.q_pi.clone(), x.q_next_pi.clone())
    };

    // 2. The logsumexp over the sampled actions.
    let last = qn.len() - 1;
    let cat = if cfg.importance_sample {
        let rand = c(x.q_rand - cfg.random_log_density(action_dim))?;
        let pi = c(q_pi.broadcast_sub(&x.logp_pi.detach()))?;
        let next = c(q_next.broadcast_sub(&x.logp_next.detach()))?;
        c(Tensor::cat(&[&rand, &pi, &next], last))?
    } else {
        let data = c(x.q_data.unsqueeze(last))?;
        c(Tensor::cat(&[x.q_rand, &data, &q_next, &q_pi], last))?
    };
    let t = cfg.temperature;
    let lse = c(c(c(cat / t)?.log_sum_exp(D::Minus1))? * t)?; // shaped as q_data

    // 3. Push down the sampled actions, up the data's.
    let mut diff = c(&lse - x.q_data)?;
    if cfg.clip_diff_min.is_some() || cfg.clip_diff_max.is_some() {
        let lo = cfg.clip_diff_min.unwrap_or(f64::NEG_INFINITY);
        let hi = cfg.clip_diff_max.unwrap_or(f64::INFINITY);
        diff = c(diff.clamp(lo, hi))?;
    }
    let loss = c(c(c(diff.mean(D::Minus1))?.sum_all())? * cfg.cql_alpha)?;
    let mean_logsumexp = scalar(&c(lse.mean_all())?, what)?;
    Ok(Penalty {
        loss,
        clipped_pi,
        clipped_next,
        mean_logsumexp,
    })
}

/// `0.5 * mean_B((q_data - target)^2)` summed over the ensemble, plus `penalty` (a scalar,
/// e.g. [`Penalty::loss`]). `q_data` `[E, B]` (or `[B]`), `target` `[B]` (detached here).
pub fn critic_loss(q_data: &Tensor, target: &Tensor, penalty: &Tensor) -> Result<Tensor> {
    let qd = q_data.dims();
    let b = qd.last().copied().unwrap_or(0);
    if qd.is_empty() || qd.len() > 2 {
        return Err(TuneError::input(
            "q_data",
            format!("shape {qd:?}, expected [E, B] or [B]"),
        ));
    }
    check("target", target, &[b])?;
    if penalty.rank() != 0 {
        return Err(shape_err("penalty", penalty.dims(), &[]));
    }
    let what = "critic loss";
    let c = |r: candle_core::Result<Tensor>| r.context(what);
    let err = c(q_data.broadcast_sub(&target.detach()))?;
    let td = c(c(c(err.sqr())?.mean(D::Minus1))?.sum_all())?;
    c(c(td * 0.5)? + penalty)
}

/// `mean_B(entropy_alpha * logp - q_pi_min) + bc_weight * bc_term`: `q_pi_min` `[B]` the
/// ensemble minimum at the policy's reparameterised actions, `logp` `[B]` their
/// log-densities, `bc_term` a scalar the caller chose (e.g. minus the mean log-density of the
/// data's actions, [`crate::rl::TanhGaussian::log_prob`]), required when `bc_weight != 0`.
pub fn actor_loss(
    q_pi_min: &Tensor,
    logp: &Tensor,
    entropy_alpha: f64,
    bc_term: Option<&Tensor>,
    bc_weight: f64,
) -> Result<Tensor> {
    let b = q_pi_min.dims();
    if b.len() != 1 {
        return Err(TuneError::input(
            "q_pi_min",
            format!("shape {b:?}, expected [B]"),
        ));
    }
    check("logp", logp, b)?;
    let what = "actor loss";
    let c = |r: candle_core::Result<Tensor>| r.context(what);
    let sac = c(c(c(logp * entropy_alpha)? - q_pi_min)?.mean_all())?;
    match bc_term {
        Some(bc) => {
            if bc.rank() != 0 {
                return Err(shape_err("bc_term", bc.dims(), &[]));
            }
            c(sac + c(bc * bc_weight)?)
        }
        None if bc_weight != 0.0 => Err(TuneError::input(
            "bc_term",
            format!("missing, with bc_weight {bc_weight}"),
        )),
        None => Ok(sac),
    }
}

/// SAC's entropy-temperature loss `-mean(log_alpha * (logp + target_entropy))` with `logp`
/// `[B]` detached; `log_alpha` is a scalar variable (`entropy_alpha = exp(log_alpha)`).
pub fn entropy_alpha_loss(
    log_alpha: &Tensor,
    logp: &Tensor,
    target_entropy: f64,
) -> Result<Tensor> {
    if log_alpha.rank() != 0 {
        return Err(shape_err("log_alpha", log_alpha.dims(), &[]));
    }
    let what = "entropy temperature loss";
    let c = |r: candle_core::Result<Tensor>| r.context(what);
    let gap = c(logp.detach() + target_entropy)?;
    c(c(c(gap.broadcast_mul(log_alpha))?.mean_all())?.neg())
}
