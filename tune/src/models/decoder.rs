//! The decoder-only transformer shared by Llama and Gemma (and the language halves of PaliGemma
//! and pi0): token embedding, pre-norm blocks with rotary attention and a gated MLP, final norm,
//! and an LM head (own or tied to the embedding).

use candle_core::{Device, Result, Tensor};
use candle_nn::VarBuilder;

use crate::blocks::{
    attention::mask, Activation, Attention, AttentionConfig, KvCache, Linear, Mlp, RmsNorm,
    RopeConfig, RotaryEmbedding,
};
use crate::hooks::{HookPoint, Hooks, Site, Tower};

#[derive(Debug, Clone, PartialEq)]
pub struct DecoderConfig {
    pub vocab_size: usize,
    pub hidden_size: usize,
    pub intermediate_size: usize,
    pub num_layers: usize,
    pub num_heads: usize,
    pub num_kv_heads: usize,
    pub head_dim: usize,
    pub rms_norm_eps: f64,
    /// 0 for Llama's `x * w`, 1 for Gemma's `x * (1 + w)`.
    pub norm_offset: f64,
    pub activation: Activation,
    /// Gemma multiplies token embeddings by sqrt(hidden_size) (rounded to the model dtype).
    pub embed_scale: Option<f64>,
    pub tie_word_embeddings: bool,
    pub attention_bias: bool,
    pub mlp_bias: bool,
    pub rope: RopeConfig,
    pub bos_token_id: Option<u32>,
    pub eos_token_ids: Vec<u32>,
    pub pad_token_id: Option<u32>,
}

#[derive(Debug, Clone)]
pub struct DecoderLayer {
    pub input_layernorm: RmsNorm,
    pub self_attn: Attention,
    pub post_attention_layernorm: RmsNorm,
    pub mlp: Mlp,
}

impl DecoderLayer {
    /// `vb` points at the layer (`model.layers.3`).
    pub fn new(cfg: &DecoderConfig, vb: VarBuilder) -> Result<Self> {
        let attn = AttentionConfig {
            hidden: cfg.hidden_size,
            heads: cfg.num_heads,
            kv_heads: cfg.num_kv_heads,
            head_dim: cfg.head_dim,
            qkv_bias: cfg.attention_bias,
            out_bias: cfg.attention_bias,
            out_name: "o_proj",
            scale: 1.0 / (cfg.head_dim as f64).sqrt(),
        };
        Ok(Self {
            input_layernorm: RmsNorm::new(
                cfg.hidden_size,
                cfg.rms_norm_eps,
                cfg.norm_offset,
                vb.pp("input_layernorm"),
            )?,
            self_attn: Attention::new(attn, vb.pp("self_attn"))?,
            post_attention_layernorm: RmsNorm::new(
                cfg.hidden_size,
                cfg.rms_norm_eps,
                cfg.norm_offset,
                vb.pp("post_attention_layernorm"),
            )?,
            mlp: Mlp::new_gated(
                cfg.hidden_size,
                cfg.intermediate_size,
                cfg.mlp_bias,
                cfg.activation,
                vb.pp("mlp"),
            )?,
        })
    }

    #[allow(clippy::too_many_arguments)]
    pub fn forward(
        &self,
        x: &Tensor,
        rope: (&Tensor, &Tensor),
        mask: Option<&Tensor>,
        cache: Option<&mut KvCache>,
        mut hooks: Option<&mut Hooks>,
        point: HookPoint,
    ) -> Result<Tensor> {
        let h = self.input_layernorm.forward(x)?;
        // The residual adds ride in the output projections' kernels where they can.
        let x = self.self_attn.forward_residual(
            &h,
            x,
            Some(rope),
            mask,
            cache,
            hooks.as_deref_mut(),
            point,
        )?;
        let mut h = self.post_attention_layernorm.forward(&x)?;
        if let Some(hk) = hooks.as_deref_mut() {
            h = hk.apply(
                HookPoint {
                    site: Site::MlpIn,
                    ..point
                },
                h,
            )?;
        }
        let mlp_out = HookPoint {
            site: Site::MlpOut,
            ..point
        };
        let mut out = match hooks.as_deref_mut() {
            Some(hk) if hk.has(&mlp_out) => {
                let h = self.mlp.forward(&h, Some(&mut *hk), point)?;
                let h = hk.apply(mlp_out, h)?;
                (x + h)?
            }
            hk => self.mlp.forward_residual(&h, &x, hk, point)?,
        };
        if let Some(hk) = hooks {
            out = hk.apply(
                HookPoint {
                    site: Site::ResidPost,
                    ..point
                },
                out,
            )?;
        }
        Ok(out)
    }
}

/// What a forward pass returns besides the logits.
#[derive(Debug, Clone, Default)]
pub struct DecoderOutput {
    /// Final hidden state after the last norm, `[batch, seq, hidden]`.
    pub last_hidden: Option<Tensor>,
    /// As transformers' `output_hidden_states`: embeddings, each block's output, and the last
    /// block's output after the final norm. Empty unless requested.
    pub hidden_states: Vec<Tensor>,
}

#[derive(Debug, Clone)]
pub struct Decoder {
    pub cfg: DecoderConfig,
    pub embed_tokens: Tensor,
    pub layers: Vec<DecoderLayer>,
    pub norm: RmsNorm,
    pub lm_head: Linear,
    pub rotary: RotaryEmbedding,
    pub tower: Tower,
    device: Device,
}

impl Decoder {
    /// `vb` points at the decoder's own level (`model.` for LlamaForCausalLM), `lm_head_vb` at
    /// where `lm_head` lives (the root for CausalLM checkpoints).
    pub fn new(
        cfg: &DecoderConfig,
        vb: VarBuilder,
        lm_head_vb: Option<VarBuilder>,
    ) -> Result<Self> {
        let embed_tokens = vb
            .pp("embed_tokens")
            .get((cfg.vocab_size, cfg.hidden_size), "weight")?;
        let layers = (0..cfg.num_layers)
            .map(|i| DecoderLayer::new(cfg, vb.pp(format!("layers.{i}"))))
            .collect::<Result<Vec<_>>>()?;
        let norm = RmsNorm::new(
            cfg.hidden_size,
            cfg.rms_norm_eps,
            cfg.norm_offset,
            vb.pp("norm"),
        )?;
        let lm_head = match (&lm_head_vb, cfg.tie_word_embeddings) {
            (Some(lvb), false) => {
                Linear::new(cfg.hidden_size, cfg.vocab_size, false, lvb.pp("lm_head"))?
            }
            (Some(lvb), true) if lvb.contains_tensor("lm_head.weight") => {
                Linear::new(cfg.hidden_size, cfg.vocab_size, false, lvb.pp("lm_head"))?
            }
            _ => Linear::from_weights(embed_tokens.clone(), None)?,
        };
        let device = vb.device().clone();
        Ok(Self {
            rotary: RotaryEmbedding::new(&cfg.rope, &device),
            cfg: cfg.clone(),
            embed_tokens,
            layers,
            norm,
            lm_head,
            tower: Tower::Main,
            device,
        })
    }

    pub fn device(&self) -> &Device {
        &self.device
    }

    /// Token embeddings, scaled as the family does; `ids: [batch, seq]` (u32).
    pub fn embed(&self, ids: &Tensor) -> Result<Tensor> {
        let (b, t) = ids.dims2()?;
        let ids_v = ids
            .flatten_all()?
            .to_dtype(candle_core::DType::U32)?
            .to_vec1::<u32>()?;
        if let Some(bad) = ids_v.iter().find(|&&i| i as usize >= self.cfg.vocab_size) {
            candle_core::bail!(
                "input_ids: token id {bad} is out of range for vocab_size {}",
                self.cfg.vocab_size
            );
        }
        let flat = Tensor::from_vec(ids_v, b * t, &self.device)?;
        let e = self
            .embed_tokens
            .embedding(&flat)?
            .reshape((b, t, self.cfg.hidden_size))?;
        match self.cfg.embed_scale {
            Some(s) => e * s,
            None => Ok(e),
        }
    }

    /// Runs the blocks over `embeds: [batch, seq, hidden]`.
    #[allow(clippy::too_many_arguments)]
    pub fn forward_embeds(
        &self,
        embeds: &Tensor,
        positions: &[Vec<i64>],
        mask: Option<&Tensor>,
        mut cache: Option<&mut Vec<KvCache>>,
        mut hooks: Option<&mut Hooks>,
        want_hidden: bool,
    ) -> Result<(Tensor, DecoderOutput)> {
        let (cos, sin) = self.rotary.cos_sin(positions)?;
        let mut out = DecoderOutput::default();
        if let Some(c) = cache.as_deref_mut() {
            if c.len() != self.layers.len() {
                c.clear();
                c.resize(self.layers.len(), KvCache::default());
            }
        }
        let mut x = embeds.clone();
        for (i, layer) in self.layers.iter().enumerate() {
            if want_hidden {
                out.hidden_states.push(x.clone());
            }
            let layer_cache = cache.as_deref_mut().and_then(|c| c.get_mut(i));
            let point = HookPoint {
                tower: self.tower,
                layer: i,
                site: Site::ResidPost,
            };
            x = layer.forward(
                &x,
                (&cos, &sin),
                mask,
                layer_cache,
                hooks.as_deref_mut(),
                point,
            )?;
        }
        let h = self.norm.forward(&x)?;
        if want_hidden {
            out.hidden_states.push(h.clone());
        }
        out.last_hidden = Some(h.clone());
        Ok((h, out))
    }

    pub fn logits(&self, h: &Tensor) -> Result<Tensor> {
        self.lm_head.forward(h)
    }

    /// Causal LM forward over `ids` after `past` cached positions.
    pub fn forward_ids(
        &self,
        ids: &Tensor,
        past: usize,
        cache: Option<&mut Vec<KvCache>>,
        hooks: Option<&mut Hooks>,
        want_hidden: bool,
    ) -> Result<(Tensor, DecoderOutput)> {
        let (b, t) = ids.dims2()?;
        let embeds = self.embed(ids)?;
        let positions: Vec<Vec<i64>> = vec![(past as i64..(past + t) as i64).collect(); b];
        let m = if t > 1 {
            Some(mask::causal(1, t, past, &self.device, None, None)?)
        } else {
            None
        };
        let (h, out) =
            self.forward_embeds(&embeds, &positions, m.as_ref(), cache, hooks, want_hidden)?;
        Ok((self.logits(&h)?, out))
    }

    /// Number of FFN neurons per layer (the width of `mlp.act`).
    pub fn d_ff(&self) -> usize {
        self.cfg.intermediate_size
    }
}
