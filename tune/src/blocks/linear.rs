//! A linear layer `y = x W^T + b` with the Hub's `weight` / `bias` names, and an optional LoRA
//! adapter slot that the fine-tuning core fills.

use candle_core::{Result, Tensor};
use candle_nn::VarBuilder;

use crate::lora::LoraSlot;

#[derive(Debug, Clone)]
pub struct Linear {
    pub weight: Tensor,
    pub bias: Option<Tensor>,
    /// LoRA adapters attached to this layer (none by default).
    pub lora: LoraSlot,
}

impl Linear {
    pub fn new(in_dim: usize, out_dim: usize, bias: bool, vb: VarBuilder) -> Result<Self> {
        let weight = vb.get((out_dim, in_dim), "weight")?;
        let bias = if bias {
            Some(vb.get(out_dim, "bias")?)
        } else {
            None
        };
        Ok(Self {
            weight,
            bias,
            lora: LoraSlot::default(),
        })
    }

    pub fn from_weights(weight: Tensor, bias: Option<Tensor>) -> Self {
        Self {
            weight,
            bias,
            lora: LoraSlot::default(),
        }
    }

    pub fn in_dim(&self) -> usize {
        self.weight.dims().get(1).copied().unwrap_or(0)
    }

    pub fn out_dim(&self) -> usize {
        self.weight.dims().first().copied().unwrap_or(0)
    }

    /// The base projection without any adapter.
    pub fn forward_base(&self, x: &Tensor) -> Result<Tensor> {
        let dims = x.dims();
        let in_dim = *dims.last().unwrap_or(&0);
        let lead: usize = dims[..dims.len().saturating_sub(1)].iter().product();
        let x2 = if x.rank() == 2 {
            x.clone()
        } else {
            x.reshape((lead, in_dim))?
        };
        let mut y = x2.matmul(&self.weight.t()?)?;
        if let Some(b) = &self.bias {
            y = y.broadcast_add(b)?;
        }
        if x.rank() == 2 {
            Ok(y)
        } else {
            let mut out_dims = dims[..dims.len() - 1].to_vec();
            out_dims.push(self.out_dim());
            y.reshape(out_dims)
        }
    }

    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let y = self.forward_base(x)?;
        match self.lora.active() {
            Some(a) => a.add_delta(x, y),
            None => Ok(y),
        }
    }
}
