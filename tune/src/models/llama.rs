//! LlamaForCausalLM, loaded from the Hub's `config.json` + safetensors names.

use candle_nn::VarBuilder;

use super::decoder::{Decoder, DecoderConfig};
use crate::blocks::{Activation, RopeConfig};
use crate::config::JsonConfig;
use crate::error::Result;

/// The fields of a Llama `config.json` this model uses.
#[derive(Debug, Clone, PartialEq)]
pub struct Config(pub DecoderConfig);

pub(crate) fn token_ids(cfg: &JsonConfig, field: &str) -> Result<Vec<u32>> {
    match cfg.get(field) {
        None => Ok(vec![]),
        Some(v) if v.is_u64() => Ok(vec![v.as_u64().unwrap_or(0) as u32]),
        Some(serde_json::Value::Array(a)) => a
            .iter()
            .map(|x| {
                x.as_u64()
                    .map(|x| x as u32)
                    .ok_or_else(|| cfg.field_error(field, "expected integers"))
            })
            .collect(),
        Some(_) => Err(cfg.field_error(field, "expected an integer or a list of integers")),
    }
}

pub(crate) fn activation(cfg: &JsonConfig, fields: &[&str], default: &str) -> Result<Activation> {
    for f in fields {
        if let Some(name) = cfg.opt_str(f)? {
            return Activation::from_hf(&name)
                .ok_or_else(|| cfg.field_error(f, format!("unsupported activation `{name}`")));
        }
    }
    Activation::from_hf(default).ok_or_else(|| cfg.field_error(fields[0], "no default activation"))
}

impl Config {
    pub fn from_json(cfg: &JsonConfig) -> Result<Self> {
        let hidden = cfg.usize("hidden_size")?;
        let heads = cfg.usize("num_attention_heads")?;
        if heads == 0 {
            return Err(cfg.field_error("num_attention_heads", "must be > 0"));
        }
        let head_dim = cfg.opt_usize("head_dim")?.unwrap_or(hidden / heads);
        let kv_heads = cfg.opt_usize("num_key_value_heads")?.unwrap_or(heads);
        if kv_heads == 0 || heads % kv_heads != 0 {
            return Err(cfg.field_error(
                "num_key_value_heads",
                format!("{kv_heads} does not divide num_attention_heads {heads}"),
            ));
        }
        let attention_bias = cfg.opt_bool("attention_bias")?.unwrap_or(false);
        Ok(Self(DecoderConfig {
            vocab_size: cfg.usize("vocab_size")?,
            hidden_size: hidden,
            intermediate_size: cfg.usize("intermediate_size")?,
            num_layers: cfg.usize("num_hidden_layers")?,
            num_heads: heads,
            num_kv_heads: kv_heads,
            head_dim,
            rms_norm_eps: cfg.opt_f64("rms_norm_eps")?.unwrap_or(1e-6),
            norm_offset: 0.0,
            activation: activation(cfg, &["hidden_act"], "silu")?,
            embed_scale: None,
            tie_word_embeddings: cfg.opt_bool("tie_word_embeddings")?.unwrap_or(false),
            attention_bias,
            mlp_bias: cfg.opt_bool("mlp_bias")?.unwrap_or(false),
            rope: RopeConfig::from_config(cfg, head_dim, 10000.0)?,
            bos_token_id: token_ids(cfg, "bos_token_id")?.first().copied(),
            eos_token_ids: token_ids(cfg, "eos_token_id")?,
            pad_token_id: token_ids(cfg, "pad_token_id")?.first().copied(),
        }))
    }
}

/// `LlamaForCausalLM`: weights under `model.*` and `lm_head.*`.
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
