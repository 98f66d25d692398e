//! GemmaForCausalLM: Llama's layout with `(1 + w)` RMSNorm, GeGLU (tanh), sqrt(hidden)
//! embedding scale and tied embeddings.

use candle_nn::VarBuilder;

use super::decoder::{Decoder, DecoderConfig};
use super::llama::{activation, token_ids};
use crate::blocks::RopeConfig;
use crate::config::JsonConfig;
use crate::error::Result;

#[derive(Debug, Clone, PartialEq)]
pub struct Config(pub DecoderConfig);

/// transformers computes the normaliser as a tensor of the model dtype: sqrt rounded to f32.
pub fn embed_scale(hidden: usize) -> f64 {
    ((hidden as f64).sqrt() as f32) as f64
}

impl Config {
    pub fn from_json(cfg: &JsonConfig) -> Result<Self> {
        let hidden = cfg.usize("hidden_size")?;
        let heads = cfg.usize("num_attention_heads")?;
        let head_dim = cfg.opt_usize("head_dim")?.unwrap_or(256);
        let kv_heads = cfg.opt_usize("num_key_value_heads")?.unwrap_or(heads);
        if heads == 0 || kv_heads == 0 || heads % kv_heads != 0 {
            return Err(cfg.field_error(
                "num_key_value_heads",
                format!("{kv_heads} does not divide num_attention_heads {heads}"),
            ));
        }
        Ok(Self(DecoderConfig {
            vocab_size: cfg.usize("vocab_size")?,
            hidden_size: hidden,
            intermediate_size: cfg.usize("intermediate_size")?,
            num_layers: cfg.usize("num_hidden_layers")?,
            num_heads: heads,
            num_kv_heads: kv_heads,
            head_dim,
            rms_norm_eps: cfg.opt_f64("rms_norm_eps")?.unwrap_or(1e-6),
            norm_offset: 1.0,
            activation: activation(
                cfg,
                &["hidden_activation", "hidden_act"],
                "gelu_pytorch_tanh",
            )?,
            embed_scale: Some(embed_scale(hidden)),
            tie_word_embeddings: cfg.opt_bool("tie_word_embeddings")?.unwrap_or(true),
            attention_bias: cfg.opt_bool("attention_bias")?.unwrap_or(false),
            mlp_bias: false,
            rope: RopeConfig::from_config(cfg, head_dim, 10000.0)?,
            bos_token_id: token_ids(cfg, "bos_token_id")?.first().copied(),
            eos_token_ids: token_ids(cfg, "eos_token_id")?,
            pad_token_id: token_ids(cfg, "pad_token_id")?.first().copied(),
        }))
    }
}

/// `GemmaForCausalLM`: weights under `model.*` (lm_head tied unless present).
#[derive(Debug, Clone)]
pub struct Model {
    pub decoder: Decoder,
}

impl Model {
    pub fn new(cfg: &Config, vb: VarBuilder) -> candle_core::Result<Self> {
        Ok(Self {
            decoder: Decoder::new(&cfg.0, vb.pp("model"), Some(vb.clone()))?,
        })
    }
}
