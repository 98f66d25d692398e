//! AdamW with decoupled weight decay and bias correction, computed in PyTorch's order so one
//! step matches `torch.optim.AdamW` to float rounding.

use candle_core::{backprop::GradStore, Result, Tensor, Var};

#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct AdamWConfig {
    pub lr: f64,
    pub beta1: f64,
    pub beta2: f64,
    pub eps: f64,
    pub weight_decay: f64,
}

impl Default for AdamWConfig {
    fn default() -> Self {
        Self {
            lr: 1e-3,
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
            weight_decay: 0.01,
        }
    }
}

#[derive(Debug)]
pub struct AdamW {
    pub cfg: AdamWConfig,
    pub params: Vec<(String, Var)>,
    pub m: Vec<Tensor>,
    pub v: Vec<Tensor>,
    /// Optimizer steps taken (PyTorch's per-parameter `step`).
    pub step: u64,
}

impl AdamW {
    pub fn new(params: Vec<(String, Var)>, cfg: AdamWConfig) -> Result<Self> {
        let m = params
            .iter()
            .map(|(_, p)| p.zeros_like())
            .collect::<Result<Vec<_>>>()?;
        let v = params
            .iter()
            .map(|(_, p)| p.zeros_like())
            .collect::<Result<Vec<_>>>()?;
        Ok(Self {
            cfg,
            params,
            m,
            v,
            step: 0,
        })
    }

    /// One update with learning rate `lr` from the gradients in `grads` (parameters without a
    /// gradient are left alone, as PyTorch skips `grad is None`).
    pub fn step(&mut self, grads: &[Option<Tensor>], lr: f64) -> Result<()> {
        self.step += 1;
        let c = self.cfg;
        let bc1 = 1.0 - c.beta1.powi(self.step as i32);
        let bc2 = 1.0 - c.beta2.powi(self.step as i32);
        let step_size = lr / bc1;
        let bc2_sqrt = bc2.sqrt();
        for (i, (_, p)) in self.params.iter().enumerate() {
            let Some(g) = grads.get(i).and_then(|g| g.as_ref()) else {
                continue;
            };
            // A variable's gradient keeps the op history it was computed with (candle detaches
            // only intermediate nodes' gradients): moments built on it would chain every
            // step's graph (measured: +1.3 GB per full fine-tuning step of the 29.5M Llama).
            let g = &g.detach();
            let theta = p.as_tensor().detach();
            let theta = if c.weight_decay != 0.0 {
                (theta * (1.0 - lr * c.weight_decay))?
            } else {
                theta
            };
            // m.lerp_(g, 1 - b1) == m + (1 - b1) (g - m)
            let m = (&self.m[i] + ((g - &self.m[i])? * (1.0 - c.beta1))?)?;
            let v = ((&self.v[i] * c.beta2)? + (g.sqr()? * (1.0 - c.beta2))?)?;
            let denom = ((v.sqrt()? / bc2_sqrt)? + c.eps)?;
            let theta = (theta - (m.div(&denom)? * step_size)?)?;
            p.set(&theta)?;
            self.m[i] = m;
            self.v[i] = v;
        }
        Ok(())
    }
}

/// Gradients of `params` from a backward pass (None where a parameter got none), detached
/// from the graph that computed them.
pub fn collect_grads(params: &[(String, Var)], store: &GradStore) -> Vec<Option<Tensor>> {
    params
        .iter()
        .map(|(_, p)| store.get(p.as_tensor()).map(Tensor::detach))
        .collect()
}

/// Scales gradients so their global L2 norm is at most `max_norm`, as
/// `torch.nn.utils.clip_grad_norm_`; returns the norm before clipping.
pub fn clip_grad_norm(grads: &mut [Option<Tensor>], max_norm: f64) -> Result<f64> {
    let mut total = 0f64;
    for g in grads.iter().flatten() {
        total += g
            .sqr()?
            .sum_all()?
            .to_dtype(candle_core::DType::F64)?
            .to_scalar::<f64>()?;
    }
    let norm = total.sqrt();
    let coef = (max_norm / (norm + 1e-6)).min(1.0);
    if coef < 1.0 {
        for g in grads.iter_mut().flatten() {
            *g = (&*g * coef)?;
        }
    }
    Ok(norm)
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{DType, Device};

    /// A weight's gradient through a matmul carries the activations' graph; the optimiser
    /// state must not keep it (it would chain every step's graph: an unbounded leak).
    #[test]
    fn moments_hold_no_graph_after_steps() {
        let dev = Device::Cpu;
        let w = Var::from_tensor(&Tensor::ones((4, 3), DType::F32, &dev).expect("w")).expect("var");
        let x0 =
            Var::from_tensor(&Tensor::ones((2, 4), DType::F32, &dev).expect("x")).expect("var");
        let mut opt =
            AdamW::new(vec![("w".into(), w.clone())], AdamWConfig::default()).expect("opt");
        for _ in 0..3 {
            let h = x0.as_tensor().matmul(w.as_tensor()).expect("matmul");
            let loss = h.sqr().and_then(|h| h.sum_all()).expect("loss");
            let store = loss.backward().expect("backward");
            let grads = collect_grads(&opt.params, &store);
            assert!(
                grads.iter().flatten().all(|g| !g.track_op()),
                "gradient keeps its graph"
            );
            // Even a gradient handed over with its graph leaves none in the moments.
            let raw: Vec<Option<Tensor>> = vec![store.get(w.as_tensor()).cloned()];
            opt.step(&raw, 1e-2).expect("step");
            assert!(
                opt.m.iter().chain(&opt.v).all(|t| !t.track_op()),
                "moments keep a graph"
            );
        }
    }
}
