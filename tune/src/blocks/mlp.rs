//! Feed-forward blocks: gated (SwiGLU / GeGLU: `down(act(gate(x)) * up(x))`) and plain
//! (`fc2(act(fc1(x)))`). The input of the down projection is the `mlp.act` hook point.

use std::sync::{Arc, OnceLock};

use candle_core::{DType, Result, Tensor, TensorId};
use candle_nn::VarBuilder;

use super::linear::Linear;
use crate::hooks::{HookPoint, Hooks, Site};
use crate::kernels::fastmath;
use crate::kernels::packed_gemm::{with_cpu_f32, PackedMatmul, PackedWeight};

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

/// `act(gate) * up` in one vectorised pass on CPU f32, with its backward in one pass too.
struct FusedGate(Activation);

impl FusedGate {
    fn for_inputs(act: Activation, g: &Tensor, u: &Tensor) -> Option<Self> {
        let ok = matches!(act, Activation::Silu | Activation::GeluTanh)
            && g.device().is_cpu()
            && g.dtype() == DType::F32
            && u.dtype() == DType::F32
            && g.dims() == u.dims();
        ok.then_some(Self(act))
    }
}

impl candle_core::CustomOp2 for FusedGate {
    fn name(&self) -> &'static str {
        "fused-gate"
    }

    fn cpu_fwd(
        &self,
        s1: &candle_core::CpuStorage,
        l1: &candle_core::Layout,
        s2: &candle_core::CpuStorage,
        l2: &candle_core::Layout,
    ) -> Result<(candle_core::CpuStorage, candle_core::Shape)> {
        use candle_core::CpuStorage;
        let (CpuStorage::F32(g), CpuStorage::F32(u)) = (s1, s2) else {
            candle_core::bail!("fused-gate: f32 only");
        };
        let (Some((g0, g1)), Some((u0, u1))) = (l1.contiguous_offsets(), l2.contiguous_offsets())
        else {
            candle_core::bail!("fused-gate: inputs must be contiguous");
        };
        let (g, u) = (&g[g0..g1], &u[u0..u1]);
        let mut out = fastmath::uninit_buffer(g.len());
        // Rows split across threads in chunks big enough to be worth a task.
        const CHUNK: usize = 16 * 1024;
        let f = match self.0 {
            Activation::GeluTanh => fastmath::gelu_tanh_mul,
            _ => fastmath::silu_mul,
        };
        if g.len() <= CHUNK {
            f(g, u, &mut out);
        } else {
            use rayon::prelude::*;
            out.par_chunks_mut(CHUNK)
                .zip(g.par_chunks(CHUNK).zip(u.par_chunks(CHUNK)))
                .for_each(|(o, (g, u))| f(g, u, o));
        }
        // SAFETY: the kernel wrote every element of `out` (the chunks cover it).
        let out = unsafe { fastmath::assume_init(out) };
        Ok((CpuStorage::F32(out), l1.shape().clone()))
    }

    fn bwd(
        &self,
        g: &Tensor,
        u: &Tensor,
        _res: &Tensor,
        grad_res: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let shape = g.shape().clone();
        let flat = |t: &Tensor| t.flatten_all().and_then(|t| t.to_vec1::<f32>());
        let (gv, uv, dv) = (flat(g)?, flat(u)?, flat(grad_res)?);
        if uv.len() != gv.len() || dv.len() != gv.len() {
            candle_core::bail!("fused-gate backward: operands differ in size");
        }
        let mut dg = vec![0f32; gv.len()];
        let mut du = vec![0f32; gv.len()];
        let f = match self.0 {
            Activation::GeluTanh => fastmath::gelu_tanh_mul_bwd,
            _ => fastmath::silu_mul_bwd,
        };
        const CHUNK: usize = 16 * 1024;
        {
            use rayon::prelude::*;
            dg.par_chunks_mut(CHUNK)
                .zip(du.par_chunks_mut(CHUNK))
                .enumerate()
                .for_each(|(i, (dg, du))| {
                    let r = i * CHUNK..i * CHUNK + dg.len();
                    f(&gv[r.clone()], &uv[r.clone()], &dv[r], dg, du)
                });
        }
        let dev = g.device();
        Ok((
            Some(Tensor::from_vec(dg, shape.clone(), dev)?),
            Some(Tensor::from_vec(du, shape, dev)?),
        ))
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
    /// gate and up packed side by side for the CPU inference kernel, with the ids of the
    /// weights they were packed from: replaced weights (a merged adapter) no longer match.
    packed_gate_up: OnceLock<Option<PackedGateUp>>,
}

#[derive(Debug, Clone)]
struct PackedGateUp {
    gate: TensorId,
    up: TensorId,
    weight: Arc<PackedWeight>,
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
            packed_gate_up: OnceLock::new(),
        })
    }

    pub fn new_plain(hidden: usize, inter: usize, act: Activation, vb: VarBuilder) -> Result<Self> {
        Ok(Self {
            kind: MlpKind::Plain,
            act,
            gate: Linear::new(hidden, inter, true, vb.pp("fc1"))?,
            up: None,
            down: Linear::new(inter, hidden, true, vb.pp("fc2"))?,
            packed_gate_up: OnceLock::new(),
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
        let h = self.activation(x, hooks, point)?;
        self.down.forward(&h)
    }

    /// `residual + self.forward(..)`, the sum formed inside the down projection's kernel where
    /// it can be (see [`Linear::forward_residual`]).
    pub fn forward_residual(
        &self,
        x: &Tensor,
        residual: &Tensor,
        hooks: Option<&mut Hooks>,
        point: HookPoint,
    ) -> Result<Tensor> {
        let h = self.activation(x, hooks, point)?;
        self.down.forward_residual(&h, residual)
    }

    /// The input of the down projection (`mlp.act`), after its hooks.
    fn activation(
        &self,
        x: &Tensor,
        hooks: Option<&mut Hooks>,
        point: HookPoint,
    ) -> Result<Tensor> {
        let mut h = match self.gate_up_packed(x)? {
            Some(h) => h,
            None => self.gate_up(x)?,
        };
        if let Some(hooks) = hooks {
            h = hooks.apply(
                HookPoint {
                    site: Site::MlpAct,
                    ..point
                },
                h,
            )?;
        }
        Ok(h)
    }

    /// `act(gate(x)) * up(x)` (gated) or `act(fc1(x))`, through candle ops.
    fn gate_up(&self, x: &Tensor) -> Result<Tensor> {
        let g = self.gate.forward(x)?;
        let h = match &self.up {
            Some(up) => {
                let u = up.forward(x)?;
                match FusedGate::for_inputs(self.act, &g, &u) {
                    Some(op) if g.track_op() || u.track_op() => g.apply_op2(&u, op)?,
                    Some(op) => g.apply_op2_no_bwd(&u, &op)?,
                    None => (self.act.apply(&g)? * u)?,
                }
            }
            None => self.act.apply(&g)?,
        };
        Ok(h)
    }

    /// The gated activation in one packed-kernel pass, for untracked CPU f32 inference with
    /// frozen, bias-free gate and up weights and no active adapter; `None` otherwise.
    fn gate_up_packed(&self, x: &Tensor) -> Result<Option<Tensor>> {
        let Some(up) = &self.up else {
            return Ok(None);
        };
        let act: crate::kernels::packed_gemm::GateFn = match self.act {
            Activation::Silu => fastmath::silu_mul,
            Activation::GeluTanh => fastmath::gelu_tanh_mul,
            _ => return Ok(None),
        };
        let (gw, uw) = (self.gate.weight_t(), up.weight_t());
        if !(self.gate.plain_inference_for(x) && up.plain_inference_for(x)) {
            return Ok(None);
        }
        let packed = self.packed_gate_up.get_or_init(|| {
            let (k, n) = gw.dims2().ok()?;
            let weight = with_cpu_f32(gw, |g| {
                with_cpu_f32(uw, |u| PackedWeight::new_gated(g, u, k, n, act))
            })?;
            Some(PackedGateUp {
                gate: gw.id(),
                up: uw.id(),
                weight: Arc::new(weight),
            })
        });
        let Some(p) = packed
            .as_ref()
            .filter(|p| p.gate == gw.id() && p.up == uw.id())
        else {
            return Ok(None);
        };
        let dims = x.dims();
        let k = p.weight.k();
        let lead: usize = dims[..dims.len().saturating_sub(1)].iter().product();
        let h = x
            .reshape((lead, k))?
            .contiguous()?
            .apply_op1_no_bwd(&PackedMatmul(p.weight.clone()))?;
        let mut out_dims = dims[..dims.len().saturating_sub(1)].to_vec();
        out_dims.push(p.weight.n());
        Ok(Some(h.reshape(out_dims)?))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Device, Var};

    /// The one-pass packed gate/up path (AVX-512 CPUs) against candle's composition of ops,
    /// for both gated activations, a width that leaves the last panel partly filled, and a
    /// gate weight replaced after the first pass (the packed copy must not be reused).
    #[test]
    fn packed_gate_up_matches_candle_ops_and_follows_replaced_weights() {
        let dev = Device::Cpu;
        let (hidden, inter) = (40, 75);
        let mk = |rows: usize, cols: usize, seed: f32| {
            let v: Vec<f32> = (0..rows * cols)
                .map(|i| ((i as f32 * 0.37 + seed).sin()) * 0.5)
                .collect();
            Tensor::from_vec(v, (rows, cols), &dev).expect("shape")
        };
        let x = mk(2 * 13, hidden, 0.1)
            .reshape((2, 13, hidden))
            .expect("shape");
        for act in [Activation::Silu, Activation::GeluTanh] {
            let mut mlp = Mlp {
                kind: MlpKind::Gated,
                act,
                gate: Linear::from_weights(mk(inter, hidden, 1.0), None).expect("gate"),
                up: Some(Linear::from_weights(mk(inter, hidden, 2.0), None).expect("up")),
                down: Linear::from_weights(mk(hidden, inter, 3.0), None).expect("down"),
                packed_gate_up: OnceLock::new(),
            };
            let reference = |mlp: &Mlp| -> Tensor {
                let w = |l: &Linear| l.weight().expect("weight");
                let x2 = x.reshape((26, hidden)).expect("2d");
                let g = x2.matmul(&w(&mlp.gate).t().expect("t")).expect("gate");
                let up = mlp.up.as_ref().expect("up");
                let u = x2.matmul(&w(up).t().expect("t")).expect("up");
                let h = (act.apply(&g).expect("act") * u).expect("mul");
                h.matmul(&w(&mlp.down).t().expect("t"))
                    .expect("down")
                    .reshape((2, 13, hidden))
                    .expect("3d")
            };
            let pt = HookPoint::new(0, Site::MlpAct);
            let diff = |a: &Tensor, b: &Tensor| -> f32 {
                (a - b)
                    .and_then(|d| d.abs())
                    .and_then(|d| d.flatten_all())
                    .and_then(|d| d.max(0))
                    .and_then(|d| d.to_scalar::<f32>())
                    .expect("same shapes")
            };
            let out = mlp.forward(&x, None, pt).expect("forward");
            let d = diff(&out, &reference(&mlp));
            assert!(d < 1e-5, "{act:?}: max diff {d}");
            if crate::kernels::packed_gemm::available() {
                assert!(mlp.packed_gate_up.get().is_some_and(|p| p.is_some()));
            }
            mlp.gate.set_weight_t(
                mk(inter, hidden, 4.0)
                    .t()
                    .expect("t")
                    .contiguous()
                    .expect("c"),
            );
            let out = mlp.forward(&x, None, pt).expect("forward");
            let d = diff(&out, &reference(&mlp));
            assert!(d < 1e-5, "{act:?} after a new gate weight: max diff {d}");
        }
    }

    /// The fused gate's value and both gradients against candle's autograd through the
    /// activation and the product.
    #[test]
    fn fused_gate_matches_autograd() {
        let dev = Device::Cpu;
        // Several parallel chunks and a tail.
        let n = 7 * 7100;
        let mk = |f: &dyn Fn(f32) -> f32| {
            let v: Vec<f32> = (0..n).map(|i| f(i as f32 / n as f32)).collect();
            Tensor::from_vec(v, (n / 7, 7), &dev).expect("shape")
        };
        let g0 = mk(&|x| (x * 57.0).sin() * 6.0);
        let u0 = mk(&|x| (x * 13.0).cos() * 2.0);
        let w = mk(&|x| (x * 5.0).sin());
        assert_eq!(g0.elem_count(), n);
        for act in [Activation::Silu, Activation::GeluTanh] {
            let run = |fused: bool| {
                let (g, u) = (
                    Var::from_tensor(&g0).expect("var"),
                    Var::from_tensor(&u0).expect("var"),
                );
                let out = if fused {
                    let op =
                        FusedGate::for_inputs(act, g.as_tensor(), u.as_tensor()).expect("fusable");
                    g.as_tensor().apply_op2(u.as_tensor(), op)
                } else {
                    act.apply(g.as_tensor()).and_then(|a| a * u.as_tensor())
                }
                .expect("forward");
                let loss = (&out * &w).and_then(|l| l.sum_all()).expect("loss");
                let grads = loss.backward().expect("backward");
                (
                    out,
                    grads.get(g.as_tensor()).expect("g grad").clone(),
                    grads.get(u.as_tensor()).expect("u grad").clone(),
                )
            };
            let (o1, dg1, du1) = run(true);
            let (o2, dg2, du2) = run(false);
            for (name, a, b) in [("out", o1, o2), ("dg", dg1, dg2), ("du", du1, du2)] {
                let d = (a - b)
                    .and_then(|d| d.abs())
                    .and_then(|d| d.flatten_all())
                    .and_then(|d| d.max(0))
                    .and_then(|d| d.to_scalar::<f32>())
                    .expect("diff");
                assert!(d < 2e-5, "{act:?} {name}: max diff {d}");
            }
        }
    }
}
