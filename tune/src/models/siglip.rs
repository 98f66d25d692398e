//! SigLIP vision tower (`SiglipVisionModel`): patch embedding, pre-norm encoder, post-layernorm
//! and the multi-head attention pooling head. Weights live under `vision_model.*` on the Hub.

use candle_core::{Result, Tensor};
use candle_nn::VarBuilder;

use crate::blocks::{softmax_last, Activation, Attention, AttentionConfig, LayerNorm, Linear, Mlp};
use crate::config::JsonConfig;
use crate::hooks::{HookPoint, Hooks, Site, Tower};

#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    pub hidden_size: usize,
    pub intermediate_size: usize,
    pub num_layers: usize,
    pub num_heads: usize,
    pub num_channels: usize,
    pub image_size: usize,
    pub patch_size: usize,
    pub layer_norm_eps: f64,
    pub activation: Activation,
    pub use_head: bool,
}

impl Config {
    pub fn from_json(cfg: &JsonConfig) -> crate::Result<Self> {
        let heads = cfg.usize("num_attention_heads")?;
        let hidden = cfg.usize("hidden_size")?;
        if heads == 0 || hidden % heads != 0 {
            return Err(cfg.field_error(
                "num_attention_heads",
                format!("{heads} does not divide hidden_size {hidden}"),
            ));
        }
        let patch = cfg.usize("patch_size")?;
        let image = cfg.usize("image_size")?;
        if patch == 0 || image % patch != 0 {
            return Err(cfg.field_error(
                "patch_size",
                format!("{patch} does not divide image_size {image}"),
            ));
        }
        Ok(Self {
            hidden_size: hidden,
            intermediate_size: cfg.usize("intermediate_size")?,
            num_layers: cfg.usize("num_hidden_layers")?,
            num_heads: heads,
            num_channels: cfg.opt_usize("num_channels")?.unwrap_or(3),
            image_size: image,
            patch_size: patch,
            layer_norm_eps: cfg.opt_f64("layer_norm_eps")?.unwrap_or(1e-6),
            activation: super::llama::activation(cfg, &["hidden_act"], "gelu_pytorch_tanh")?,
            use_head: cfg.opt_bool("vision_use_head")?.unwrap_or(true),
        })
    }

    pub fn num_patches(&self) -> usize {
        (self.image_size / self.patch_size).pow(2)
    }
}

#[derive(Debug, Clone)]
pub struct EncoderLayer {
    pub layer_norm1: LayerNorm,
    pub self_attn: Attention,
    pub layer_norm2: LayerNorm,
    pub mlp: Mlp,
}

/// The attention-pooling head: one learned probe attends over all patches.
#[derive(Debug, Clone)]
pub struct PoolingHead {
    pub probe: Tensor,
    /// q, k and v projections, split from `attention.in_proj_weight` / `in_proj_bias`.
    pub qkv: [Linear; 3],
    pub out_proj: Linear,
    pub layernorm: LayerNorm,
    pub mlp: Mlp,
    heads: usize,
}

impl PoolingHead {
    fn new(cfg: &Config, vb: VarBuilder) -> Result<Self> {
        let d = cfg.hidden_size;
        let w = vb.pp("attention").get((3 * d, d), "in_proj_weight")?;
        let b = vb.pp("attention").get(3 * d, "in_proj_bias")?;
        let part =
            |i: usize| Linear::from_weights(w.narrow(0, i * d, d)?, Some(b.narrow(0, i * d, d)?));
        Ok(Self {
            probe: vb.get((1, 1, d), "probe")?,
            qkv: [part(0)?, part(1)?, part(2)?],
            out_proj: Linear::new(d, d, true, vb.pp("attention").pp("out_proj"))?,
            layernorm: LayerNorm::new(d, cfg.layer_norm_eps, vb.pp("layernorm"))?,
            mlp: Mlp::new_plain(d, cfg.intermediate_size, cfg.activation, vb.pp("mlp"))?,
            heads: cfg.num_heads,
        })
    }

    fn forward(&self, h: &Tensor) -> Result<Tensor> {
        let (b, n, d) = h.dims3()?;
        let hd = d / self.heads;
        let proj = |x: &Tensor, i: usize| self.qkv[i].forward(x);
        let probe = self.probe.broadcast_as((b, 1, d))?.contiguous()?;
        let q = proj(&probe, 0)?
            .reshape((b, 1, self.heads, hd))?
            .transpose(1, 2)?
            .contiguous()?;
        let k = proj(h, 1)?
            .reshape((b, n, self.heads, hd))?
            .transpose(1, 2)?
            .contiguous()?;
        let v = proj(h, 2)?
            .reshape((b, n, self.heads, hd))?
            .transpose(1, 2)?
            .contiguous()?;
        let scores = (q.matmul(&k.t()?)? * (1.0 / (hd as f64).sqrt()))?;
        let attn = softmax_last(&scores)?.matmul(&v)?;
        let attn = attn.transpose(1, 2)?.reshape((b, 1, d))?;
        let attn = self.out_proj.forward(&attn)?;
        let x = self.layernorm.forward(&attn)?;
        let x = (attn
            + self
                .mlp
                .forward(&x, None, HookPoint::new(0, Site::MlpAct))?)?;
        x.squeeze(1)
    }
}

/// Outputs of the vision tower.
#[derive(Debug, Clone)]
pub struct VisionOutput {
    /// After `post_layernorm`, `[batch, patches, hidden]`.
    pub last_hidden_state: Tensor,
    /// `[batch, hidden]` when the model has its pooling head.
    pub pooler_output: Option<Tensor>,
    /// Embeddings, then each layer's output (no final norm), as transformers returns them.
    pub hidden_states: Vec<Tensor>,
}

#[derive(Debug, Clone)]
pub struct Model {
    pub cfg: Config,
    /// The patch convolution as a linear map of flattened `[channels, p, p]` patches.
    pub patch_embedding: Linear,
    pub position_embedding: Tensor,
    pub layers: Vec<EncoderLayer>,
    pub post_layernorm: LayerNorm,
    pub head: Option<PoolingHead>,
    /// Which hook namespace this tower's blocks use.
    pub tower: Tower,
}

impl Model {
    /// `vb` points at the `vision_model` level.
    pub fn new(cfg: &Config, vb: VarBuilder) -> Result<Self> {
        let d = cfg.hidden_size;
        let p = cfg.patch_size;
        let emb = vb.pp("embeddings");
        let patch_weight = emb
            .pp("patch_embedding")
            .get((d, cfg.num_channels, p, p), "weight")?;
        let patch_bias = emb.pp("patch_embedding").get(d, "bias")?;
        let position_embedding = emb
            .pp("position_embedding")
            .get((cfg.num_patches(), d), "weight")?;
        let mut layers = Vec::with_capacity(cfg.num_layers);
        for i in 0..cfg.num_layers {
            let lvb = vb.pp(format!("encoder.layers.{i}"));
            let attn = AttentionConfig {
                hidden: d,
                heads: cfg.num_heads,
                kv_heads: cfg.num_heads,
                head_dim: d / cfg.num_heads,
                qkv_bias: true,
                out_bias: true,
                out_name: "out_proj",
                scale: 1.0 / ((d / cfg.num_heads) as f64).sqrt(),
            };
            layers.push(EncoderLayer {
                layer_norm1: LayerNorm::new(d, cfg.layer_norm_eps, lvb.pp("layer_norm1"))?,
                self_attn: Attention::new(attn, lvb.pp("self_attn"))?,
                layer_norm2: LayerNorm::new(d, cfg.layer_norm_eps, lvb.pp("layer_norm2"))?,
                mlp: Mlp::new_plain(d, cfg.intermediate_size, cfg.activation, lvb.pp("mlp"))?,
            });
        }
        let post_layernorm = LayerNorm::new(d, cfg.layer_norm_eps, vb.pp("post_layernorm"))?;
        let head = if cfg.use_head {
            Some(PoolingHead::new(cfg, vb.pp("head"))?)
        } else {
            None
        };
        let patch_embedding = Linear::from_weights(
            patch_weight.reshape((d, cfg.num_channels * p * p))?,
            Some(patch_bias),
        )?;
        Ok(Self {
            cfg: cfg.clone(),
            patch_embedding,
            position_embedding,
            layers,
            post_layernorm,
            head,
            tower: Tower::Main,
        })
    }

    /// Patch embedding as one matmul: a stride-p convolution with a p x p kernel is a linear
    /// map of each flattened patch.
    fn embed(&self, pixels: &Tensor) -> Result<Tensor> {
        let (b, c, h, w) = pixels.dims4()?;
        let p = self.cfg.patch_size;
        if c != self.cfg.num_channels || h != self.cfg.image_size || w != self.cfg.image_size {
            candle_core::bail!(
                "pixel_values: shape {:?}, expected [batch, {}, {}, {}]",
                pixels.dims(),
                self.cfg.num_channels,
                self.cfg.image_size,
                self.cfg.image_size
            );
        }
        let (gh, gw) = (h / p, w / p);
        let patches = pixels
            .reshape((b, c, gh, p, gw, p))?
            .permute((0, 2, 4, 1, 3, 5))?
            .reshape((b * gh * gw, c * p * p))?;
        let d = self.cfg.hidden_size;
        let x = self.patch_embedding.forward(&patches)?;
        x.reshape((b, gh * gw, d))?
            .broadcast_add(&self.position_embedding.unsqueeze(0)?)
    }

    pub fn forward(
        &self,
        pixels: &Tensor,
        mut hooks: Option<&mut Hooks>,
        want_hidden: bool,
    ) -> Result<VisionOutput> {
        let mut x = self.embed(pixels)?;
        let mut hidden_states = Vec::new();
        if want_hidden {
            hidden_states.push(x.clone());
        }
        for (i, layer) in self.layers.iter().enumerate() {
            let point = HookPoint {
                tower: self.tower,
                layer: i,
                site: Site::ResidPost,
            };
            let h = layer.layer_norm1.forward(&x)?;
            let h = layer
                .self_attn
                .forward(&h, None, None, None, hooks.as_deref_mut(), point)?;
            x = (x + h)?;
            let mut h = layer.layer_norm2.forward(&x)?;
            if let Some(hk) = hooks.as_deref_mut() {
                h = hk.apply(
                    HookPoint {
                        site: Site::MlpIn,
                        ..point
                    },
                    h,
                )?;
            }
            let mut h = layer.mlp.forward(&h, hooks.as_deref_mut(), point)?;
            if let Some(hk) = hooks.as_deref_mut() {
                h = hk.apply(
                    HookPoint {
                        site: Site::MlpOut,
                        ..point
                    },
                    h,
                )?;
            }
            x = (x + h)?;
            if let Some(hk) = hooks.as_deref_mut() {
                x = hk.apply(point, x)?;
            }
            if want_hidden {
                hidden_states.push(x.clone());
            }
        }
        let last = self.post_layernorm.forward(&x)?;
        let pooler_output = match &self.head {
            Some(h) => Some(h.forward(&last)?),
            None => None,
        };
        Ok(VisionOutput {
            last_hidden_state: last,
            pooler_output,
            hidden_states,
        })
    }
}
