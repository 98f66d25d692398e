//! Multi-head attention with MHA / GQA / MQA, head_dim independent of hidden/heads, optional
//! rotary embeddings, an additive mask (causal, prefix-LM, padding) and a KV cache.

use std::sync::OnceLock;

use candle_core::{DType, Result, Tensor, D};
use candle_nn::VarBuilder;

use super::linear::Linear;
use super::qkv::PackedQkv;
use super::rope::{apply_rope, rope_thd, RopeTables};
use crate::hooks::{HookPoint, Hooks, Site};
use crate::kernels::fused_attention::{FusedAttention, MaskRows};

/// Softmax over the last dimension, differentiable when needed.
pub fn softmax_last(x: &Tensor) -> Result<Tensor> {
    if x.track_op() {
        candle_nn::ops::softmax(x, D::Minus1)
    } else {
        candle_nn::ops::softmax_last_dim(x)
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct AttentionConfig {
    pub hidden: usize,
    pub heads: usize,
    pub kv_heads: usize,
    pub head_dim: usize,
    /// Bias on q, k, v.
    pub qkv_bias: bool,
    /// Bias on the output projection.
    pub out_bias: bool,
    /// Name of the output projection on the Hub (`o_proj` for LMs, `out_proj` for SigLIP).
    pub out_name: &'static str,
    pub scale: f64,
}

/// Keys and values of earlier positions, `[batch, kv_heads, seq, head_dim]`.
#[derive(Debug, Clone, Default)]
pub struct KvCache {
    pub k: Option<Tensor>,
    pub v: Option<Tensor>,
}

impl KvCache {
    pub fn len(&self) -> usize {
        self.k
            .as_ref()
            .and_then(|k| k.dims().get(2).copied())
            .unwrap_or(0)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[derive(Debug, Clone)]
pub struct Attention {
    pub cfg: AttentionConfig,
    pub q_proj: Linear,
    pub k_proj: Linear,
    pub v_proj: Linear,
    pub o_proj: Linear,
    /// q, k and v packed side by side for the CPU inference kernel, made on first use.
    packed_qkv: OnceLock<Option<PackedQkv>>,
}

impl Attention {
    pub fn new(cfg: AttentionConfig, vb: VarBuilder) -> Result<Self> {
        if cfg.kv_heads == 0 || !cfg.heads.is_multiple_of(cfg.kv_heads) {
            candle_core::bail!(
                "num_attention_heads ({}) must be a multiple of num_key_value_heads ({})",
                cfg.heads,
                cfg.kv_heads
            );
        }
        let q = cfg.heads * cfg.head_dim;
        let kv = cfg.kv_heads * cfg.head_dim;
        Ok(Self {
            q_proj: Linear::new(cfg.hidden, q, cfg.qkv_bias, vb.pp("q_proj"))?,
            k_proj: Linear::new(cfg.hidden, kv, cfg.qkv_bias, vb.pp("k_proj"))?,
            v_proj: Linear::new(cfg.hidden, kv, cfg.qkv_bias, vb.pp("v_proj"))?,
            o_proj: Linear::new(q, cfg.hidden, cfg.out_bias, vb.pp(cfg.out_name))?,
            packed_qkv: OnceLock::new(),
            cfg,
        })
    }

    /// The joint q/k/v packing, when `x` goes through the plain inference path: untracked CPU
    /// f32 input and weights, no bias, no active adapter.
    fn packed_qkv(&self, x: &Tensor) -> Option<&PackedQkv> {
        let projs = [&self.q_proj, &self.k_proj, &self.v_proj];
        if !projs.iter().all(|p| p.plain_inference_for(x)) {
            return None;
        }
        let (q, k, v) = (
            self.q_proj.weight_t(),
            self.k_proj.weight_t(),
            self.v_proj.weight_t(),
        );
        self.packed_qkv
            .get_or_init(|| PackedQkv::new(q, k, v))
            .as_ref()
            .filter(|p| p.matches(q, k, v))
    }

    /// `x: [batch, seq, hidden]`; `rope`: cos/sin for the new positions; `mask`: additive,
    /// broadcastable to `[batch, 1, seq, kv_len]` (kv_len includes cached positions).
    pub fn forward(
        &self,
        x: &Tensor,
        rope: Option<(&Tensor, &Tensor)>,
        mask: Option<&Tensor>,
        cache: Option<&mut KvCache>,
        hooks: Option<&mut Hooks>,
        point: HookPoint,
    ) -> Result<Tensor> {
        self.forward_with(x, None, rope, mask, cache, hooks, point, true)
    }

    /// `residual + self.forward(..)`, the sum formed inside the output projection's kernel
    /// where it can be (see [`Linear::forward_residual`]).
    #[allow(clippy::too_many_arguments)]
    pub fn forward_residual(
        &self,
        x: &Tensor,
        residual: &Tensor,
        rope: Option<(&Tensor, &Tensor)>,
        mask: Option<&Tensor>,
        cache: Option<&mut KvCache>,
        hooks: Option<&mut Hooks>,
        point: HookPoint,
    ) -> Result<Tensor> {
        self.forward_with(x, Some(residual), rope, mask, cache, hooks, point, true)
    }

    /// The composition of candle ops the fused CPU kernel replaces: the reference its tests
    /// compare against, and the path on other devices.
    #[doc(hidden)]
    pub fn forward_unfused(
        &self,
        x: &Tensor,
        rope: Option<(&Tensor, &Tensor)>,
        mask: Option<&Tensor>,
        cache: Option<&mut KvCache>,
    ) -> Result<Tensor> {
        self.forward_with(
            x,
            None,
            rope,
            mask,
            cache,
            None,
            HookPoint::new(0, Site::AttnHeadOut),
            false,
        )
    }

    #[allow(clippy::too_many_arguments)]
    fn forward_with(
        &self,
        x: &Tensor,
        residual: Option<&Tensor>,
        rope: Option<(&Tensor, &Tensor)>,
        mask: Option<&Tensor>,
        cache: Option<&mut KvCache>,
        hooks: Option<&mut Hooks>,
        point: HookPoint,
        allow_fused: bool,
    ) -> Result<Tensor> {
        let (b, t, hidden) = x.dims3()?;
        let c = &self.cfg;
        let fused = allow_fused
            && x.device().is_cpu()
            && x.dtype() == DType::F32
            && mask.is_none_or(|m| fused_mask_fits(m, b, t));
        let joint = if fused { self.packed_qkv(x) } else { None };
        let (q, k, v, tracked) = if let Some(joint) = joint {
            let tables = match rope {
                Some((cos, sin)) => Some(RopeTables::of(cos, sin, b, t, c.head_dim)?),
                None => None,
            };
            // [b, t, heads + 2 kv_heads, d]: q, k and v are views of it, q and k rotated.
            let qkv = joint
                .forward(
                    &x.reshape((b * t, hidden))?.contiguous()?,
                    c.head_dim,
                    tables,
                )?
                .reshape((b, t, c.heads + 2 * c.kv_heads, c.head_dim))?;
            (
                qkv.narrow(2, 0, c.heads)?.transpose(1, 2)?,
                qkv.narrow(2, c.heads, c.kv_heads)?.transpose(1, 2)?,
                qkv.narrow(2, c.heads + c.kv_heads, c.kv_heads)?
                    .transpose(1, 2)?,
                false,
            )
        } else {
            self.project(x, rope, fused)?
        };
        self.attend(
            q,
            k,
            v,
            tracked,
            (b, t),
            mask,
            cache,
            hooks,
            point,
            fused,
            residual,
        )
    }

    /// q, k and v (`[b, heads, t, d]` views, rotated) through the separate projections, and
    /// whether autograd tracks any of them.
    #[allow(clippy::type_complexity)]
    fn project(
        &self,
        x: &Tensor,
        rope: Option<(&Tensor, &Tensor)>,
        fused: bool,
    ) -> Result<(Tensor, Tensor, Tensor, bool)> {
        let (b, t, _) = x.dims3()?;
        let c = &self.cfg;
        // [b, t, heads, d]: the projections' own layout; the unfused path transposes it.
        let q = self
            .q_proj
            .forward(x)?
            .reshape((b, t, c.heads, c.head_dim))?;
        let k = self
            .k_proj
            .forward(x)?
            .reshape((b, t, c.kv_heads, c.head_dim))?;
        let v = self
            .v_proj
            .forward(x)?
            .reshape((b, t, c.kv_heads, c.head_dim))?;
        let tracked = q.track_op() || k.track_op() || v.track_op();
        let (q, k, v) = if fused {
            // The projections' own layout; our rope op has a backward pass for training and
            // runs about twice as fast as candle's `rope_thd` here.
            match rope {
                Some((cos, sin)) => (
                    rope_thd(&q, cos, sin)?.transpose(1, 2)?,
                    rope_thd(&k, cos, sin)?.transpose(1, 2)?,
                    v.transpose(1, 2)?,
                ),
                None => (q.transpose(1, 2)?, k.transpose(1, 2)?, v.transpose(1, 2)?),
            }
        } else {
            let (q, k) = (q.transpose(1, 2)?, k.transpose(1, 2)?);
            let v = v.transpose(1, 2)?.contiguous()?;
            match rope {
                Some((cos, sin)) => (apply_rope(&q, cos, sin)?, apply_rope(&k, cos, sin)?, v),
                None => (q.contiguous()?, k.contiguous()?, v),
            }
        };
        Ok((q, k, v, tracked))
    }

    /// Attention over rotated `q`, `k`, `v` (`[b, heads, t, d]`, any strides) and the output
    /// projection, plus `residual` when given.
    #[allow(clippy::too_many_arguments)]
    fn attend(
        &self,
        q: Tensor,
        k: Tensor,
        v: Tensor,
        tracked: bool,
        (b, t): (usize, usize),
        mask: Option<&Tensor>,
        cache: Option<&mut KvCache>,
        hooks: Option<&mut Hooks>,
        point: HookPoint,
        fused: bool,
        residual: Option<&Tensor>,
    ) -> Result<Tensor> {
        let c = &self.cfg;
        let (k, v) = match cache {
            Some(cache) => {
                let k = match &cache.k {
                    Some(prev) => Tensor::cat(&[prev, &k], 2)?,
                    None => k.contiguous()?,
                };
                let v = match &cache.v {
                    Some(prev) => Tensor::cat(&[prev, &v], 2)?,
                    None => v.contiguous()?,
                };
                cache.k = Some(k.clone());
                cache.v = Some(v.clone());
                (k, v)
            }
            None => (k, v),
        };
        let s = k.dim(2)?;
        let out = if fused {
            let mask = match mask {
                Some(m) => {
                    let mb = m.dim(0)?;
                    Some(MaskRows::of_tensor(m, mb, t, s)?)
                }
                None => None,
            };
            let op = FusedAttention {
                scale: c.scale as f32,
                mask,
            };
            // [b, t, heads * d], ready for the output projection.
            let out = if tracked {
                q.apply_op3(&k, &v, op)?
            } else {
                q.apply_op3_no_bwd(&k, &v, &op)?
            };
            match hooks {
                Some(hooks) => {
                    let heads = out.reshape((b, t, c.heads, c.head_dim))?.transpose(1, 2)?;
                    let heads = hooks.apply(
                        HookPoint {
                            site: Site::AttnHeadOut,
                            ..point
                        },
                        heads,
                    )?;
                    heads
                        .transpose(1, 2)?
                        .reshape((b, t, c.heads * c.head_dim))?
                }
                None => out,
            }
        } else {
            let rep = c.heads / c.kv_heads;
            // Grouped heads share K/V: fold the group into the query length instead of copying
            // K/V.
            let q = (q * c.scale)?.reshape((b, c.kv_heads, rep * t, c.head_dim))?;
            let scores = q.matmul(&k.t()?)?.reshape((b, c.heads, t, s))?;
            let scores = match mask {
                Some(m) => scores.broadcast_add(m)?,
                None => scores,
            };
            let probs = softmax_last(&scores)?.reshape((b, c.kv_heads, rep * t, s))?;
            let mut out = probs.matmul(&v)?.reshape((b, c.heads, t, c.head_dim))?;
            if let Some(hooks) = hooks {
                out = hooks.apply(
                    HookPoint {
                        site: Site::AttnHeadOut,
                        ..point
                    },
                    out,
                )?;
            }
            out.transpose(1, 2)?.reshape((b, t, c.heads * c.head_dim))?
        };
        match residual {
            Some(r) => self.o_proj.forward_residual(&out, r),
            None => self.o_proj.forward(&out),
        }
    }
}

/// The fused kernel takes f32 masks shaped `[1 or batch, 1, q_len, k_len]`, the shape
/// [`mask::build`] makes; anything else goes through the unfused path.
fn fused_mask_fits(m: &Tensor, b: usize, t: usize) -> bool {
    match m.dims() {
        &[mb, 1, mq, _] => m.dtype() == DType::F32 && (mb == 1 || mb == b) && mq == t,
        _ => false,
    }
}

/// Additive masks: 0 where attention is allowed, -inf-like where it is not.
pub mod mask {
    use candle_core::{Device, Result, Tensor};

    /// A large negative number instead of -inf so fully masked rows (padding) give finite output
    /// (the value the fused attention kernel takes for a hidden key).
    pub const NEG: f32 = crate::kernels::fused_attention::NEG;

    /// `allowed(b, q, k)` decides each entry; returns `[batch, 1, q_len, k_len]`.
    pub fn build(
        batch: usize,
        q_len: usize,
        k_len: usize,
        device: &Device,
        allowed: impl Fn(usize, usize, usize) -> bool,
    ) -> Result<Tensor> {
        let mut data = Vec::with_capacity(batch * q_len * k_len);
        for b in 0..batch {
            for q in 0..q_len {
                for k in 0..k_len {
                    data.push(if allowed(b, q, k) { 0.0 } else { NEG });
                }
            }
        }
        Tensor::from_vec(data, (batch, 1, q_len, k_len), device)
    }

    /// Causal over `q_len` new positions after `past` cached ones, with optional key padding
    /// (`key_valid[b][k]`, over all `past + q_len` keys) and prefix-LM (`bidirectional[b][k]`:
    /// key k is visible from every query, as token_type_ids == 0 does in PaliGemma).
    pub fn causal(
        batch: usize,
        q_len: usize,
        past: usize,
        device: &Device,
        key_valid: Option<&[Vec<bool>]>,
        bidirectional: Option<&[Vec<bool>]>,
    ) -> Result<Tensor> {
        let k_len = past + q_len;
        if key_valid.is_none() && bidirectional.is_none() {
            // Plain causal: each row is a run of zeros then NEG, filled as two slices.
            let mut data = vec![NEG; batch * q_len * k_len];
            for (i, row) in data.chunks_exact_mut(k_len.max(1)).enumerate() {
                let q = i % q_len.max(1);
                row[..(past + q + 1).min(k_len)].fill(0.0);
            }
            return Tensor::from_vec(data, (batch, 1, q_len, k_len), device);
        }
        build(batch, q_len, k_len, device, |b, q, k| {
            let valid = key_valid.map(|v| v[b][k]).unwrap_or(true);
            let causal_ok = k <= past + q;
            let bidi = bidirectional.map(|v| v[b][k]).unwrap_or(false);
            valid && (causal_ok || bidi)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Device, Var};
    use std::collections::HashMap;

    fn random(shape: &[usize], seed: u64) -> Tensor {
        let n: usize = shape.iter().product();
        let mut state = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
        let data: Vec<f32> = (0..n)
            .map(|_| {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                ((state >> 40) as f32 / (1u64 << 24) as f32 - 0.5) * 0.6
            })
            .collect();
        Tensor::from_vec(data, shape, &Device::Cpu).expect("shape matches data")
    }

    fn attention(heads: usize, kv_heads: usize, head_dim: usize, hidden: usize) -> Attention {
        let (q, kv) = (heads * head_dim, kv_heads * head_dim);
        let mut ws = HashMap::new();
        for (i, (name, shape)) in [
            ("q_proj.weight", [q, hidden]),
            ("k_proj.weight", [kv, hidden]),
            ("v_proj.weight", [kv, hidden]),
            ("o_proj.weight", [hidden, q]),
        ]
        .into_iter()
        .enumerate()
        {
            ws.insert(name.to_string(), random(&shape, 11 + i as u64));
        }
        let vb = VarBuilder::from_tensors(ws, DType::F32, &Device::Cpu);
        let cfg = AttentionConfig {
            hidden,
            heads,
            kv_heads,
            head_dim,
            qkv_bias: false,
            out_bias: false,
            out_name: "o_proj",
            scale: 1.0 / (head_dim as f64).sqrt(),
        };
        Attention::new(cfg, vb).expect("weights have the configured shapes")
    }

    /// The fused CPU kernel (the packed-panel path where the CPU has AVX-512) against the
    /// composition of candle ops, over several query blocks, GQA, a KV cache, per-batch masks
    /// and a head_dim that leaves panels partly filled.
    #[test]
    fn fused_kernel_matches_the_unfused_path() {
        // head_dim 16 tiles the kernel's 64-column panels (q and k rotate inside the projection
        // tasks); 24 does not (a separate rotary pass).
        for d in [16, 24] {
            fused_kernel_matches_the_unfused_path_at(d);
        }
    }

    fn fused_kernel_matches_the_unfused_path_at(d: usize) {
        let dev = Device::Cpu;
        let (b, t, past, hidden) = (2, 150, 37, 48);
        let rope = super::super::rope::RotaryEmbedding::new(
            &super::super::rope::RopeConfig {
                theta: 10_000.0,
                head_dim: d,
                scaling: super::super::rope::RopeScaling::None,
            },
            &dev,
        );
        let (cos, sin) = rope.cos_sin_range(past, t).expect("cos/sin");
        let valid: Vec<Vec<bool>> = (0..b)
            .map(|bi| (0..past + t).map(|k| !(bi == 1 && k < 5)).collect())
            .collect();
        let bidi: Vec<Vec<bool>> = (0..b)
            .map(|_| (0..past + t).map(|k| k < past + 20).collect())
            .collect();
        for (heads, kv_heads) in [(4, 4), (4, 2), (4, 1)] {
            let attn = attention(heads, kv_heads, d, hidden);
            let x = random(&[b, t, hidden], 3);
            let kv_shape = [b, kv_heads, past, d];
            let cache = KvCache {
                k: Some(random(&kv_shape, 5)),
                v: Some(random(&kv_shape, 6)),
            };
            let masks = [
                mask::causal(b, t, past, &dev, None, None).expect("mask"),
                mask::causal(b, t, past, &dev, Some(&valid), Some(&bidi)).expect("mask"),
            ];
            for m in &masks {
                let mut c1 = cache.clone();
                let fused = attn
                    .forward(
                        &x,
                        Some((&cos, &sin)),
                        Some(m),
                        Some(&mut c1),
                        None,
                        HookPoint::new(0, Site::AttnHeadOut),
                    )
                    .expect("fused forward");
                let mut c2 = cache.clone();
                let plain = attn
                    .forward_unfused(&x, Some((&cos, &sin)), Some(m), Some(&mut c2))
                    .expect("unfused forward");
                let diff = max_diff(&fused, &plain.detach());
                assert!(diff < 1e-5, "heads {heads}/{kv_heads}: max diff {diff}");
                let kd = max_diff(
                    c1.k.as_ref().expect("k"),
                    &c2.k.as_ref().expect("k").detach(),
                );
                assert!(kd < 1e-6, "cached keys differ by {kd}");
            }
            // No mask, no rope, no cache (SigLIP's case).
            let fused = attn
                .forward(
                    &x,
                    None,
                    None,
                    None,
                    None,
                    HookPoint::new(0, Site::AttnHeadOut),
                )
                .expect("fused");
            let plain = attn.forward_unfused(&x, None, None, None).expect("unfused");
            let diff = max_diff(&fused, &plain.detach());
            assert!(diff < 1e-5, "no mask: max diff {diff}");
        }
    }

    #[test]
    fn plain_causal_mask_equals_the_general_builder() {
        let dev = Device::Cpu;
        for (b, t, past) in [(1, 1, 0), (2, 5, 0), (1, 7, 3), (3, 4, 9)] {
            let fast = mask::causal(b, t, past, &dev, None, None).expect("mask");
            let general = mask::build(b, t, past + t, &dev, |_, q, k| k <= past + q).expect("mask");
            let v = |m: &Tensor| m.flatten_all().and_then(|m| m.to_vec1::<f32>());
            assert_eq!(fast.dims(), general.dims());
            assert_eq!(v(&fast).expect("values"), v(&general).expect("values"));
        }
    }

    fn max_diff(a: &Tensor, b: &Tensor) -> f32 {
        (a - b)
            .and_then(|d| d.abs())
            .and_then(|d| d.flatten_all())
            .and_then(|d| d.max(0))
            .and_then(|d| d.to_scalar::<f32>())
            .expect("same shapes")
    }

    /// Training through the fused kernel: the input's and the cached keys' gradients match
    /// candle's autograd through the unfused ops.
    #[test]
    fn fused_kernel_gradients_match_autograd() {
        let dev = Device::Cpu;
        let (b, t, past, hidden, d) = (2, 90, 11, 32, 8);
        let rope = super::super::rope::RotaryEmbedding::new(
            &super::super::rope::RopeConfig {
                theta: 10_000.0,
                head_dim: d,
                scaling: super::super::rope::RopeScaling::None,
            },
            &dev,
        );
        let (cos, sin) = rope.cos_sin_range(past, t).expect("cos/sin");
        let valid: Vec<Vec<bool>> = (0..b)
            .map(|bi| (0..past + t).map(|k| !(bi == 0 && k < 3)).collect())
            .collect();
        let bidi: Vec<Vec<bool>> = (0..b)
            .map(|_| (0..past + t).map(|k| k < past + 7).collect())
            .collect();
        let m = mask::causal(b, t, past, &dev, Some(&valid), Some(&bidi)).expect("mask");
        for (heads, kv_heads) in [(4, 4), (4, 2)] {
            let attn = attention(heads, kv_heads, d, hidden);
            let w = random(&[b, t, hidden], 9);
            let grads = |fused: bool| {
                let x = Var::from_tensor(&random(&[b, t, hidden], 3)).expect("var");
                let kv_shape = [b, kv_heads, past, d];
                let pk = Var::from_tensor(&random(&kv_shape, 5)).expect("var");
                let mut cache = KvCache {
                    k: Some(pk.as_tensor().clone()),
                    v: Some(random(&kv_shape, 6)),
                };
                let out = if fused {
                    attn.forward(
                        x.as_tensor(),
                        Some((&cos, &sin)),
                        Some(&m),
                        Some(&mut cache),
                        None,
                        HookPoint::new(0, Site::AttnHeadOut),
                    )
                } else {
                    attn.forward_unfused(
                        x.as_tensor(),
                        Some((&cos, &sin)),
                        Some(&m),
                        Some(&mut cache),
                    )
                }
                .expect("forward");
                let loss = (out * &w).and_then(|l| l.sum_all()).expect("loss");
                let g = loss.backward().expect("backward");
                (
                    loss.to_scalar::<f32>().expect("scalar"),
                    g.get(x.as_tensor()).expect("x grad").clone(),
                    g.get(pk.as_tensor()).expect("cache grad").clone(),
                )
            };
            let (l1, gx1, gk1) = grads(true);
            let (l2, gx2, gk2) = grads(false);
            assert!((l1 - l2).abs() < 1e-4, "loss {l1} vs {l2}");
            let (dx, dk) = (max_diff(&gx1, &gx2), max_diff(&gk1, &gk2));
            assert!(
                dx < 1e-5,
                "heads {heads}/{kv_heads}: x grad differs by {dx}"
            );
            assert!(
                dk < 1e-5,
                "heads {heads}/{kv_heads}: cached key grad differs by {dk}"
            );
        }
    }
}
