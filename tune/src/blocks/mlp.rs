//! Feed-forward blocks: gated (SwiGLU / GeGLU: `down(act(gate(x)) * up(x))`) and plain
//! (`fc2(act(fc1(x)))`). The input of the down projection is the `mlp.act` hook point.

use candle_core::{Result, Tensor};
use candle_nn::VarBuilder;

use super::Linear;
use crate::hooks::{HookPoint, Hooks, Site};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Activation {
    Silu,
    /// tanh approximation (`gelu_pytorch_tanh`, `gelu_new`).
    GeluTanh,
    /// exact erf GELU (`gelu`).
    GeluErf,
    Relu,
    QuickGelu,
}

impl Activation {
    pub fn from_hf(name: &str) -> Option<Self> {
        Some(match name {
            "silu" | "swish" => Self::Silu,
            "gelu_pytorch_tanh" | "gelu_new" | "gelu_fast" | "gelu_python_tanh" => Self::GeluTanh,
            "gelu" => Self::GeluErf,
            "relu" => Self::Relu,
            "quick_gelu" => Self::QuickGelu,
            _ => return None,
        })
    }

    pub fn apply(self, x: &Tensor) -> Result<Tensor> {
        match self {
            Self::Silu => x.silu(),
            Self::GeluTanh => x.gelu(),
            Self::GeluErf => x.gelu_erf(),
            Self::Relu => x.relu(),
            Self::QuickGelu => x.broadcast_mul(&candle_nn::ops::sigmoid(&(x * 1.702)?)?),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MlpKind {
    /// `gate_proj`, `up_proj`, `down_proj`.
    Gated,
    /// `fc1`, `fc2`.
    Plain,
}

#[derive(Debug, Clone)]
pub struct Mlp {
    pub kind: MlpKind,
    pub act: Activation,
    /// gate_proj (gated) or fc1 (plain).
    pub gate: Linear,
    /// up_proj (gated only).
    pub up: Option<Linear>,
    /// down_proj (gated) or fc2 (plain).
    pub down: Linear,
}

impl Mlp {
    pub fn new_gated(
        hidden: usize,
        inter: usize,
        bias: bool,
        act: Activation,
        vb: VarBuilder,
    ) -> Result<Self> {
        Ok(Self {
            kind: MlpKind::Gated,
            act,
            gate: Linear::new(hidden, inter, bias, vb.pp("gate_proj"))?,
            up: Some(Linear::new(hidden, inter, bias, vb.pp("up_proj"))?),
            down: Linear::new(inter, hidden, bias, vb.pp("down_proj"))?,
        })
    }

    pub fn new_plain(hidden: usize, inter: usize, act: Activation, vb: VarBuilder) -> Result<Self> {
        Ok(Self {
            kind: MlpKind::Plain,
            act,
            gate: Linear::new(hidden, inter, true, vb.pp("fc1"))?,
            up: None,
            down: Linear::new(inter, hidden, true, vb.pp("fc2"))?,
        })
    }

    pub fn intermediate_size(&self) -> usize {
        self.gate.out_dim()
    }

    pub fn forward(
        &self,
        x: &Tensor,
        hooks: Option<&mut Hooks>,
        point: HookPoint,
    ) -> Result<Tensor> {
        let mut h = self.act.apply(&self.gate.forward(x)?)?;
        if let Some(up) = &self.up {
            h = (h * up.forward(x)?)?;
        }
        if let Some(hooks) = hooks {
            h = hooks.apply(
                HookPoint {
                    site: Site::MlpAct,
                    ..point
                },
                h,
            )?;
        }
        self.down.forward(&h)
    }
}
