//! A linear layer `y = x W^T + b` with the Hub's `weight` / `bias` names, and an optional LoRA
//! adapter slot that the fine-tuning core fills.

use std::sync::{Arc, OnceLock};

use candle_core::{Result, Tensor};
use candle_nn::VarBuilder;

use crate::kernels::packed_gemm::{with_cpu_f32, PackedMatmul, PackedMatmulAdd, PackedWeight};

use crate::lora::LoraSlot;

#[derive(Debug, Clone)]
pub struct Linear {
    /// `W^T`, `[in, out]`, contiguous. Stored transposed because candle's gemm runs about twice
    /// as fast on a row-major right-hand side than on a transposed view for the short
    /// sequences a control loop sees; [`Linear::weight`] gives the Hub's `[out, in]` view.
    wt: Tensor,
    pub bias: Option<Tensor>,
    /// LoRA adapters attached to this layer (none by default).
    pub lora: LoraSlot,
    /// `wt` packed for the CPU inference kernel, made on the first untracked f32 forward. Only
    /// a frozen weight is packed (a training variable changes in place), and every method that
    /// replaces `wt` clears it.
    packed: OnceLock<Option<Arc<PackedWeight>>>,
}

impl Linear {
    pub fn new(in_dim: usize, out_dim: usize, bias: bool, vb: VarBuilder) -> Result<Self> {
        let weight = vb.get((out_dim, in_dim), "weight")?;
        let bias = if bias {
            Some(vb.get(out_dim, "bias")?)
        } else {
            None
        };
        Self::from_weights(weight, bias)
    }

    /// From a Hub-layout `[out, in]` weight.
    pub fn from_weights(weight: Tensor, bias: Option<Tensor>) -> Result<Self> {
        Ok(Self {
            wt: weight.t()?.contiguous()?,
            bias,
            lora: LoraSlot::default(),
            packed: OnceLock::new(),
        })
    }

    /// From an already transposed `[in, out]` weight (kept as is, e.g. a training variable).
    pub fn from_transposed(wt: Tensor, bias: Option<Tensor>) -> Self {
        Self {
            wt,
            bias,
            lora: LoraSlot::default(),
            packed: OnceLock::new(),
        }
    }

    /// The Hub-layout `[out, in]` weight (a view).
    pub fn weight(&self) -> Result<Tensor> {
        self.wt.t()
    }

    /// The stored `[in, out]` tensor.
    pub fn weight_t(&self) -> &Tensor {
        &self.wt
    }

    pub fn set_weight_t(&mut self, wt: Tensor) {
        self.wt = wt;
        self.packed = OnceLock::new();
    }

    /// The packed copy of a frozen, contiguous f32 CPU weight (made on first use), if this CPU
    /// runs the packed kernel and the packing budget allows.
    fn packed(&self) -> Option<&Arc<PackedWeight>> {
        self.packed
            .get_or_init(|| {
                let (k, n) = self.wt.dims2().ok()?;
                with_cpu_f32(&self.wt, |w| PackedWeight::new(w, k, n)).map(Arc::new)
            })
            .as_ref()
    }

    /// Whether `x` goes through this layer as plain inference, the case the fused CPU kernels
    /// (packed projections, residual adds, joint q/k/v, gated MLP) handle: an untracked CPU
    /// f32 input, a frozen contiguous f32 weight, no bias and no active adapter.
    pub fn plain_inference_for(&self, x: &Tensor) -> bool {
        x.device().is_cpu()
            && x.dtype() == candle_core::DType::F32
            && !x.track_op()
            && self.bias.is_none()
            && self.lora.active().is_none()
            && self.wt.dtype() == candle_core::DType::F32
            && !self.wt.track_op()
            && self.wt.is_contiguous()
    }

    pub fn in_dim(&self) -> usize {
        self.wt.dims().first().copied().unwrap_or(0)
    }

    pub fn out_dim(&self) -> usize {
        self.wt.dims().get(1).copied().unwrap_or(0)
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
        // With a tracked input and a frozen weight (LoRA training), candle's generic matmul
        // backward would also compute and store the weight's gradient: a full extra matmul per
        // layer. The frozen path only propagates to the input.
        let cpu_f32 = x2.device().is_cpu()
            && x2.dtype() == candle_core::DType::F32
            && self.wt.dtype() == candle_core::DType::F32;
        let mut y = if !cpu_f32 {
            x2.matmul(&self.wt)?
        } else if x2.track_op() && !self.wt.track_op() {
            // With a tracked input and a frozen weight (LoRA training), candle's generic matmul
            // backward would also compute and store the weight's gradient: a full extra matmul
            // per layer. The frozen path only propagates to the input.
            x2.contiguous()?.apply_op1(FrozenMatmul {
                wt: self.wt.clone(),
            })?
        } else if !x2.track_op() && !self.wt.track_op() && self.wt.is_contiguous() {
            match self.packed() {
                Some(pw) => x2
                    .contiguous()?
                    .apply_op1_no_bwd(&PackedMatmul(pw.clone()))?,
                None => x2
                    .contiguous()?
                    .apply_op2_no_bwd(&self.wt, &crate::kernels::matmul::ColumnSplitGemm)?,
            }
        } else {
            x2.matmul(&self.wt)?
        };
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

    /// `residual + self.forward(x)` (a residual connection), with the sum formed inside the
    /// packed kernel when the plain inference path applies: untracked CPU f32, no bias, no
    /// active adapter. Bit for bit the separate add's result either way.
    pub fn forward_residual(&self, x: &Tensor, residual: &Tensor) -> Result<Tensor> {
        let fused = self.plain_inference_for(x)
            && residual.dtype() == candle_core::DType::F32
            && !residual.track_op()
            && x.dims().last() == Some(&self.in_dim())
            && residual.dims().last() == Some(&self.out_dim())
            && x.dims()[..x.rank() - 1] == residual.dims()[..residual.rank() - 1];
        if let Some(pw) = fused.then(|| self.packed()).flatten() {
            let lead = x.elem_count() / self.in_dim().max(1);
            let y = x
                .reshape((lead, self.in_dim()))?
                .contiguous()?
                .apply_op2_no_bwd(
                    &residual.reshape((lead, self.out_dim()))?.contiguous()?,
                    &PackedMatmulAdd(pw.clone()),
                )?;
            return y.reshape(residual.shape());
        }
        residual + self.forward(x)?
    }

    /// Folds the active adapter into the weight (`W += s B A`); the forward pass then skips it.
    pub fn merge_active(&mut self) -> Result<bool> {
        if self.lora.merged().is_some() {
            return Ok(false);
        }
        let (Some(name), Some(a)) = (
            self.lora.active_name().map(str::to_string),
            self.lora.selected(),
        ) else {
            return Ok(false);
        };
        let delta_t = a.delta_weight()?.t()?.to_dtype(self.wt.dtype())?;
        self.wt = (self.wt.detach() + delta_t)?.contiguous()?;
        self.packed = OnceLock::new();
        self.lora.set_merged(Some(name));
        Ok(true)
    }

    /// Undoes [`Linear::merge_active`].
    pub fn unmerge(&mut self) -> Result<bool> {
        let Some(name) = self.lora.merged().map(str::to_string) else {
            return Ok(false);
        };
        let Some(a) = self.lora.get(&name) else {
            candle_core::bail!("merged adapter `{name}` is no longer loaded");
        };
        let delta_t = a.delta_weight()?.t()?.to_dtype(self.wt.dtype())?;
        self.wt = (self.wt.detach() - delta_t)?.contiguous()?;
        self.packed = OnceLock::new();
        self.lora.set_merged(None);
        Ok(true)
    }
}

/// `x @ W^T` with a weight that receives no gradient.
struct FrozenMatmul {
    wt: Tensor,
}

impl candle_core::CustomOp1 for FrozenMatmul {
    fn name(&self) -> &'static str {
        "frozen-matmul"
    }

    fn cpu_fwd(
        &self,
        storage: &candle_core::CpuStorage,
        layout: &candle_core::Layout,
    ) -> Result<(candle_core::CpuStorage, candle_core::Shape)> {
        let candle_core::CpuStorage::F32(data) = storage else {
            candle_core::bail!("frozen-matmul: expected f32 input");
        };
        let (m, k) = layout.shape().dims2()?;
        let Some((start, end)) = layout.contiguous_offsets() else {
            candle_core::bail!("frozen-matmul: input must be contiguous");
        };
        let x = Tensor::from_slice(&data[start..end], (m, k), &candle_core::Device::Cpu)?;
        let y = x.apply_op2_no_bwd(&self.wt, &crate::kernels::matmul::ColumnSplitGemm)?;
        let n = y.dim(1)?;
        let v = y.flatten_all()?.to_vec1::<f32>()?;
        Ok((
            candle_core::CpuStorage::F32(v),
            candle_core::Shape::from((m, n)),
        ))
    }

    fn bwd(&self, _arg: &Tensor, _res: &Tensor, grad_res: &Tensor) -> Result<Option<Tensor>> {
        Ok(Some(grad_res.matmul(&self.wt.t()?)?))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Device, Tensor};

    fn random(shape: &[usize], seed: u64) -> Tensor {
        let n: usize = shape.iter().product();
        let v: Vec<f32> = (0..n)
            .map(|i| {
                let h = (i as u64 + 1).wrapping_mul(6_364_136_223_846_793_005) ^ seed;
                ((h >> 40) % 2000) as f32 / 1000.0 - 1.0
            })
            .collect();
        Tensor::from_vec(v, shape, &Device::Cpu).expect("shape")
    }

    /// The residual add inside the packed kernel gives exactly the separate add's values,
    /// with and without a bias (which takes the unfused path), over ragged shapes.
    #[test]
    fn forward_residual_is_the_separate_add_bit_for_bit() {
        for (rows, k, n, bias) in [
            (1, 3, 5, false),
            (13, 64, 70, false),
            (40, 48, 200, false),
            (7, 32, 33, true),
        ] {
            let w = random(&[n, k], 1);
            let b = bias.then(|| random(&[n], 2));
            let lin = Linear::from_weights(w, b).expect("weights");
            let x = random(&[2, rows, k], 3);
            let res = random(&[2, rows, n], 4);
            let fused = lin.forward_residual(&x, &res).expect("fused");
            let separate = (&res + lin.forward(&x).expect("forward")).expect("add");
            assert_eq!(fused.dims(), separate.dims());
            let (a, b): (Vec<f32>, Vec<f32>) = (
                fused
                    .flatten_all()
                    .and_then(|t| t.to_vec1())
                    .expect("values"),
                separate
                    .flatten_all()
                    .and_then(|t| t.to_vec1())
                    .expect("values"),
            );
            assert!(
                a.iter().zip(&b).all(|(p, q)| p.to_bits() == q.to_bits()),
                "rows {rows} k {k} n {n} bias {bias}: the fused add differs"
            );
        }
    }
}
