//! The Q-function: an ensemble of MLPs over `concat(obs, action)`, its target copy, and the
//! minimum over the ensemble that targets and the actor use.

use candle_core::{DType, Device, Tensor};
use candle_nn::{VarBuilder, VarMap};
use serde::{Deserialize, Serialize};

use super::mlp::Mlp;
use super::params::copy_params;
use crate::error::{Context, Result, TuneError};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CriticConfig {
    pub obs_dim: usize,
    pub action_dim: usize,
    /// Hidden sizes of every Q-network (default `[256, 256]`, Cal-QL's).
    pub hidden: Vec<usize>,
    /// LayerNorm after each hidden layer (default on; Cal-QL's public code uses plain MLPs,
    /// `false` here).
    pub layer_norm: bool,
    /// Q-networks in the ensemble (default 2: clipped double Q).
    pub ensemble: usize,
}

impl CriticConfig {
    pub fn new(obs_dim: usize, action_dim: usize) -> Self {
        Self {
            obs_dim,
            action_dim,
            hidden: vec![256, 256],
            layer_norm: true,
            ensemble: 2,
        }
    }
}

/// `ensemble` Q-networks, `q{i}` under the builder's prefix (each an [`Mlp`] to one output).
#[derive(Debug, Clone)]
pub struct Critic {
    cfg: CriticConfig,
    nets: Vec<Mlp>,
    /// The builder's prefix, which the target copy reuses.
    prefix: String,
}

impl Critic {
    pub fn new(cfg: &CriticConfig, vb: VarBuilder) -> Result<Self> {
        if cfg.ensemble == 0 {
            return Err(TuneError::input("ensemble", "must be > 0"));
        }
        let nets = (0..cfg.ensemble)
            .map(|i| {
                Mlp::new(
                    cfg.obs_dim + cfg.action_dim,
                    &cfg.hidden,
                    1,
                    cfg.layer_norm,
                    vb.pp(format!("q{i}")),
                )
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(Self {
            cfg: cfg.clone(),
            nets,
            prefix: vb.prefix(),
        })
    }

    pub fn config(&self) -> &CriticConfig {
        &self.cfg
    }

    /// Q-values `[E, B]` of `obs` `[B, O]` and `action` `[B, A]`.
    pub fn forward(&self, obs: &Tensor, action: &Tensor) -> Result<Tensor> {
        let (o, a) = (self.cfg.obs_dim, self.cfg.action_dim);
        let (od, ad) = (obs.dims(), action.dims());
        if od.len() != 2 || od[1] != o || ad.len() != 2 || ad[1] != a || od[0] != ad[0] {
            return Err(TuneError::input(
                "critic input",
                format!("obs {od:?} and action {ad:?}, expected [B, {o}] and [B, {a}]"),
            ));
        }
        let x = Tensor::cat(&[obs, action], 1).context("critic input concat")?;
        let qs = self
            .nets
            .iter()
            .map(|n| n.forward(&x)?.squeeze(1).context("critic output"))
            .collect::<Result<Vec<_>>>()?;
        Tensor::stack(&qs, 0).context("critic ensemble")
    }

    /// Q-values `[E, B, N]` of `N` actions per state: `obs` `[B, O]`, `actions` `[B, N, A]`.
    pub fn forward_n(&self, obs: &Tensor, actions: &Tensor) -> Result<Tensor> {
        let (od, ad) = (obs.dims(), actions.dims());
        if od.len() != 2 || ad.len() != 3 || od[0] != ad[0] {
            return Err(TuneError::input(
                "critic input",
                format!(
                    "obs {od:?} and actions {ad:?}, expected [B, {}] and [B, N, {}]",
                    self.cfg.obs_dim, self.cfg.action_dim
                ),
            ));
        }
        let (b, n, a) = (ad[0], ad[1], ad[2]);
        let what = "critic over sampled actions";
        let obs_rep = obs
            .unsqueeze(1)
            .and_then(|t| t.broadcast_as((b, n, od[1])))
            .and_then(|t| t.reshape((b * n, od[1])))
            .context(what)?;
        let act = actions.reshape((b * n, a)).context(what)?;
        let q = self.forward(&obs_rep, &act)?;
        q.reshape((self.nets.len(), b, n)).context(what)
    }

    /// The minimum over the ensemble (dimension 0) of `q` `[E, ...]`.
    pub fn min_q(q: &Tensor) -> Result<Tensor> {
        q.min(0).context("minimum over the Q ensemble")
    }

    /// A target network: the same architecture and names on a fresh `VarMap`, holding an exact
    /// copy of this critic's variables in `online` (the map it was built on). Follow the online
    /// network with [`crate::rl::soft_update`]`(&target_vars, online, tau)`.
    pub fn target_copy(&self, online: &VarMap, device: &Device) -> Result<(Critic, VarMap)> {
        let vars = VarMap::new();
        let vb = VarBuilder::from_varmap(&vars, DType::F32, device);
        let vb = if self.prefix.is_empty() {
            vb
        } else {
            vb.pp(&self.prefix)
        };
        let target = Critic::new(&self.cfg, vb)?;
        copy_params(&vars, online)?;
        Ok((target, vars))
    }
}
