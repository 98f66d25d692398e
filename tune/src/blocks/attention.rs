//! Multi-head attention with MHA / GQA / MQA, head_dim independent of hidden/heads, optional
//! rotary embeddings, an additive mask (causal, prefix-LM, padding) and a KV cache.

use candle_core::{Result, Tensor};
use candle_nn::VarBuilder;

use super::rope::apply_rope;
use super::{softmax_last, Linear};
use crate::hooks::{HookPoint, Hooks, Site};

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
            cfg,
        })
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
        let (b, t, _) = x.dims3()?;
        let c = &self.cfg;
        let q = self
            .q_proj
            .forward(x)?
            .reshape((b, t, c.heads, c.head_dim))?
            .transpose(1, 2)?;
        let k = self
            .k_proj
            .forward(x)?
            .reshape((b, t, c.kv_heads, c.head_dim))?
            .transpose(1, 2)?;
        let v = self
            .v_proj
            .forward(x)?
            .reshape((b, t, c.kv_heads, c.head_dim))?
            .transpose(1, 2)?
            .contiguous()?;
        let (q, k) = match rope {
            Some((cos, sin)) => (apply_rope(&q, cos, sin)?, apply_rope(&k, cos, sin)?),
            None => (q.contiguous()?, k.contiguous()?),
        };
        let (k, v) = match cache {
            Some(cache) => {
                let k = match &cache.k {
                    Some(prev) => Tensor::cat(&[prev, &k], 2)?,
                    None => k,
                };
                let v = match &cache.v {
                    Some(prev) => Tensor::cat(&[prev, &v], 2)?,
                    None => v,
                };
                cache.k = Some(k.clone());
                cache.v = Some(v.clone());
                (k, v)
            }
            None => (k, v),
        };
        let s = k.dim(2)?;
        let rep = c.heads / c.kv_heads;
        // Grouped heads share K/V: fold the group into the query length instead of copying K/V.
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
        let out = out.transpose(1, 2)?.reshape((b, t, c.heads * c.head_dim))?;
        self.o_proj.forward(&out)
    }
}

/// Additive masks: 0 where attention is allowed, -inf-like where it is not.
pub mod mask {
    use candle_core::{Device, Result, Tensor};

    /// A large negative number instead of -inf so fully masked rows (padding) give finite output.
    pub const NEG: f32 = f32::MIN;

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
        build(batch, q_len, k_len, device, |b, q, k| {
            let valid = key_valid.map(|v| v[b][k]).unwrap_or(true);
            let causal_ok = k <= past + q;
            let bidi = bidirectional.map(|v| v[b][k]).unwrap_or(false);
            valid && (causal_ok || bidi)
        })
    }
}
