//! RMSNorm (Llama's `w`, Gemma's `1 + w`) and LayerNorm.

use candle_core::{DType, Result, Tensor, D};
use candle_nn::VarBuilder;

#[derive(Debug, Clone)]
pub struct RmsNorm {
    /// The stored parameter, as named on the Hub.
    pub weight: Tensor,
    /// 0 for Llama-style `x * w`, 1 for Gemma-style `x * (1 + w)`.
    pub offset: f64,
    pub eps: f64,
    effective: Tensor,
}

impl RmsNorm {
    pub fn new(dim: usize, eps: f64, offset: f64, vb: VarBuilder) -> Result<Self> {
        let weight = vb.get(dim, "weight")?;
        Self::from_weight(weight, eps, offset)
    }

    pub fn from_weight(weight: Tensor, eps: f64, offset: f64) -> Result<Self> {
        let effective = if offset == 0.0 {
            weight.clone()
        } else {
            (weight.detach() + offset)?
        };
        Ok(Self {
            weight,
            offset,
            eps,
            effective,
        })
    }

    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        if x.track_op() || self.weight.track_op() {
            let internal = match x.dtype() {
                DType::F16 | DType::BF16 => DType::F32,
                d => d,
            };
            let xf = x.to_dtype(internal)?;
            let ms = xf.sqr()?.mean_keepdim(D::Minus1)?;
            let normed = xf.broadcast_div(&(ms + self.eps)?.sqrt()?)?;
            let w = if self.offset == 0.0 {
                self.weight.clone()
            } else {
                (&self.weight + self.offset)?
            };
            normed.to_dtype(x.dtype())?.broadcast_mul(&w)
        } else {
            let x = if x.is_contiguous() {
                x.clone()
            } else {
                x.contiguous()?
            };
            candle_nn::ops::rms_norm(&x, &self.effective, self.eps as f32)
        }
    }
}

#[derive(Debug, Clone)]
pub struct LayerNorm {
    pub weight: Tensor,
    pub bias: Tensor,
    pub eps: f64,
}

impl LayerNorm {
    pub fn new(dim: usize, eps: f64, vb: VarBuilder) -> Result<Self> {
        Ok(Self {
            weight: vb.get(dim, "weight")?,
            bias: vb.get(dim, "bias")?,
            eps,
        })
    }

    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        if x.track_op() || self.weight.track_op() || self.bias.track_op() {
            let mean = x.mean_keepdim(D::Minus1)?;
            let xc = x.broadcast_sub(&mean)?;
            let var = xc.sqr()?.mean_keepdim(D::Minus1)?;
            xc.broadcast_div(&(var + self.eps)?.sqrt()?)?
                .broadcast_mul(&self.weight)?
                .broadcast_add(&self.bias)
        } else {
            let x = if x.is_contiguous() {
                x.clone()
            } else {
                x.contiguous()?
            };
            candle_nn::ops::layer_norm(&x, &self.weight, &self.bias, self.eps as f32)
        }
    }
}
