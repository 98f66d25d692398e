//! What a VLA run is: the architecture ([`ModelSpec`]) and its transformers configs, the
//! training hyper-parameters ([`TrainConfig`]), what a checkpoint was trained on
//! ([`TrainingInfo`]), and the model a spec builds by head ([`ModelConfig`]).

use std::path::{Path, PathBuf};

use rudder_tune::candle_nn::VarBuilder;
use rudder_tune::config::JsonConfig;
use rudder_tune::models::{paligemma, pi0};
use serde::{Deserialize, Serialize};
use serde_json::json;

use crate::dataset::{ACTION_DIM, STATE_DIM};
use crate::tokenizer::{train_bpe, PromptTokenizer};
use crate::tokens::{self, Decoding};
use crate::FlowError;

/// How prompts become ids.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum TokenizerKind {
    /// A BPE of at most `bpe_vocab` ids trained on the instructions (+ corpus).
    #[default]
    Bpe,
    /// The byte-level mapping (checkpoints from before the BPE).
    Bytes,
}

fn bytes_kind() -> TokenizerKind {
    TokenizerKind::Bytes
}

fn default_bpe_vocab() -> usize {
    512
}

/// Which action head the model carries (REFERENCE §6).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum HeadKind {
    /// pi0-style flow matching in an action expert.
    #[default]
    Flow,
    /// OpenVLA-style action tokens (256 bins, the last ids of the vocabulary).
    Tokens,
}

/// Byte-level prompts: text ids 0..=258 (pad, eos, bos, bytes), image token 259.
pub const BYTE_TEXT_IDS: usize = 259;
/// The cameras, in model slot order, under the names the tabletop embodiment uses.
pub const CAMERAS: [&str; 2] = ["agentview", "wrist"];

/// Architecture of a model trained from scratch.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ModelSpec {
    /// Width of the prefix language model (and the vision projector's output).
    pub hidden: usize,
    /// Layers of the language model and of the action expert (they must agree).
    pub layers: usize,
    pub heads: usize,
    pub head_dim: usize,
    /// Width of the action expert.
    pub expert_hidden: usize,
    pub vision_hidden: usize,
    pub vision_layers: usize,
    pub image_size: usize,
    pub patch_size: usize,
    /// Actions per chunk.
    pub chunk: usize,
    /// Prompt length limit in tokens, BOS included.
    pub max_prompt_tokens: usize,
    /// Euler steps at inference.
    pub inference_steps: usize,
    /// Absent in checkpoints from before the BPE, which used bytes.
    #[serde(default = "bytes_kind")]
    pub tokenizer: TokenizerKind,
    /// Upper bound of the BPE's size (specials included).
    #[serde(default = "default_bpe_vocab")]
    pub bpe_vocab: usize,
    /// Absent in checkpoints from before the tokens head, which were all flow.
    #[serde(default)]
    pub head: HeadKind,
    /// Token decoding of the tokens head.
    #[serde(default)]
    pub decoding: Decoding,
}

impl Default for ModelSpec {
    fn default() -> Self {
        Self {
            hidden: 128,
            layers: 4,
            heads: 4,
            head_dim: 32,
            expert_hidden: 128,
            vision_hidden: 128,
            vision_layers: 2,
            image_size: 64,
            patch_size: 16,
            chunk: 8,
            max_prompt_tokens: 48,
            inference_steps: 10,
            tokenizer: TokenizerKind::Bpe,
            bpe_vocab: default_bpe_vocab(),
            head: HeadKind::Flow,
            decoding: Decoding::Autoregressive,
        }
    }
}

impl ModelSpec {
    /// A model of ~0.1M parameters on 32 px images for tests and smoke runs: it trains in
    /// milliseconds per step, and its layer-0 FFN has 128 neurons.
    pub fn tiny() -> Self {
        Self {
            hidden: 32,
            layers: 2,
            heads: 2,
            head_dim: 16,
            expert_hidden: 32,
            vision_hidden: 32,
            vision_layers: 1,
            image_size: 32,
            patch_size: 16,
            chunk: 4,
            max_prompt_tokens: 24,
            inference_steps: 2,
            ..Self::default()
        }
    }

    /// The tokenizer this spec trains on `instructions`.
    pub fn tokenizer<'a>(
        &self,
        instructions: impl IntoIterator<Item = &'a str>,
    ) -> Result<PromptTokenizer, FlowError> {
        match self.tokenizer {
            TokenizerKind::Bytes => Ok(PromptTokenizer::Bytes {
                limit: BYTE_TEXT_IDS,
            }),
            TokenizerKind::Bpe => Ok(train_bpe(instructions, self.bpe_vocab)?),
        }
    }

    /// `config.json` in transformers' `PI0ForConditionalGeneration` layout, for `text_ids`
    /// text ids (the image token comes after them).
    pub fn config_json(&self, text_ids: usize) -> serde_json::Value {
        let vocab = text_ids + 1;
        let gemma = |hidden: usize| {
            json!({
                "model_type": "gemma",
                "hidden_size": hidden,
                "intermediate_size": hidden * 4,
                "num_hidden_layers": self.layers,
                "num_attention_heads": self.heads,
                "num_key_value_heads": 1,
                "head_dim": self.head_dim,
                "hidden_act": "gelu_pytorch_tanh",
                "hidden_activation": "gelu_pytorch_tanh",
                "max_position_embeddings": 1024,
                "rms_norm_eps": 1e-6,
                "rope_parameters": {"rope_theta": 10000.0, "rope_type": "default"},
                "tie_word_embeddings": true,
                "use_bidirectional_attention": true,
                "vocab_size": vocab,
                "pad_token_id": 0,
                "eos_token_id": 1,
                "bos_token_id": 2,
                "attention_bias": false
            })
        };
        let mut text = gemma(self.hidden);
        text["num_image_tokens"] = json!((self.image_size / self.patch_size.max(1)).pow(2));
        json!({
            "architectures": ["PI0ForConditionalGeneration"],
            "model_type": "pi0",
            "dtype": "float32",
            "chunk_size": self.chunk,
            "max_action_dim": ACTION_DIM,
            "max_state_dim": STATE_DIM,
            "num_inference_steps": self.inference_steps,
            "min_period": 0.004,
            "max_period": 4.0,
            "loss_reduction": "mean",
            "time_sampling_beta_alpha": 1.5,
            "time_sampling_beta_beta": 1.0,
            "time_sampling_offset": 0.001,
            "time_sampling_scale": 0.999,
            "dit_config": gemma(self.expert_hidden),
            "vlm_config": {
                "model_type": "paligemma",
                "image_token_index": text_ids,
                "projection_dim": self.hidden,
                "vocab_size": vocab,
                "tie_word_embeddings": true,
                "text_config": text,
                "vision_config": {
                    "model_type": "siglip_vision_model",
                    "hidden_size": self.vision_hidden,
                    "intermediate_size": self.vision_hidden * 4,
                    "num_hidden_layers": self.vision_layers,
                    "num_attention_heads": self.heads,
                    "num_channels": 3,
                    "image_size": self.image_size,
                    "patch_size": self.patch_size,
                    "hidden_act": "gelu_pytorch_tanh",
                    "layer_norm_eps": 1e-6,
                    "vision_use_head": false
                }
            }
        })
    }

    /// `config.json` of the tokens head: `PaliGemmaForConditionalGeneration` with `text_ids`
    /// text ids, the image token, then the 256 action ids.
    pub fn tokens_config_json(&self, text_ids: usize) -> serde_json::Value {
        let flow = self.config_json(text_ids);
        let vocab = text_ids + 1 + tokens::N_BINS;
        let mut vlm = flow["vlm_config"].clone();
        vlm["architectures"] = json!(["PaliGemmaForConditionalGeneration"]);
        vlm["vocab_size"] = json!(vocab);
        vlm["text_config"]["vocab_size"] = json!(vocab);
        // The prefix-LM mask comes from the image / prompt / action layout, not from a
        // config switch.
        vlm["text_config"]["use_bidirectional_attention"] = json!(false);
        vlm["dtype"] = json!("float32");
        vlm
    }

    pub fn paligemma_config(&self, text_ids: usize) -> Result<paligemma::Config, FlowError> {
        let jc = JsonConfig::from_value(
            Path::new("<generated config.json>"),
            self.tokens_config_json(text_ids),
        );
        Ok(paligemma::Config::from_json(&jc)?)
    }

    pub fn pi0_config(&self, text_ids: usize) -> Result<pi0::Config, FlowError> {
        let jc = JsonConfig::from_value(
            Path::new("<generated config.json>"),
            self.config_json(text_ids),
        );
        Ok(pi0::Config::from_json(&jc)?)
    }

    /// `policy.json` for [`crate::VlaPolicy`].
    pub fn policy_json(&self, seed: u64) -> serde_json::Value {
        json!({
            "cameras": CAMERAS,
            "max_prompt_tokens": self.max_prompt_tokens,
            "dt": 0.05,
            "action_space": "eef_delta7",
            "seed": seed
        })
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TrainConfig {
    pub model: ModelSpec,
    pub steps: u64,
    pub batch_size: usize,
    pub lr: f64,
    pub weight_decay: f64,
    pub warmup_steps: u64,
    /// Global L2 norm to clip gradients to (None: no clipping).
    pub max_grad_norm: Option<f64>,
    pub seed: u64,
}

impl Default for TrainConfig {
    fn default() -> Self {
        Self {
            model: ModelSpec::default(),
            steps: 1000,
            batch_size: 16,
            lr: 3e-4,
            weight_decay: 0.01,
            warmup_steps: 50,
            max_grad_norm: Some(1.0),
            seed: 0,
        }
    }
}

/// `training.json`: what a checkpoint was trained on (read by `rudder eval` for the split).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TrainingInfo {
    pub data: PathBuf,
    pub suite: String,
    /// The demos' init-state seed.
    pub demo_seed: u64,
    /// Episode indices (= init states) `0..episodes_per_task` of every task were used for
    /// training; held-out evaluation starts at this index.
    pub episodes_per_task: usize,
    pub frames: usize,
    pub config: TrainConfig,
    pub step: u64,
    pub loss: Option<f64>,
    /// For a LoRA fine-tune: the checkpoint the adapters sit on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lora_base: Option<PathBuf>,
}

/// The model a trainer builds, by head.
#[derive(Debug, Clone, PartialEq)]
pub enum ModelConfig {
    Flow(Box<pi0::Config>),
    Tokens(Box<paligemma::Config>),
}

/// A model over the trainer's current variables.
pub enum TrainModel {
    Flow(Box<pi0::Model>),
    Tokens(Box<paligemma::Model>),
}

impl ModelConfig {
    pub(crate) fn vision(&self) -> &rudder_tune::models::siglip::Config {
        match self {
            Self::Flow(c) => &c.vlm.vision,
            Self::Tokens(c) => &c.vision,
        }
    }
    /// The language model's vocabulary (text ids, image token and, for tokens, action ids).
    pub(crate) fn vocab_size(&self) -> usize {
        match self {
            Self::Flow(c) => c.vlm.text.0.vocab_size,
            Self::Tokens(c) => c.text.0.vocab_size,
        }
    }
    pub(crate) fn image_token_id(&self) -> u32 {
        match self {
            Self::Flow(c) => c.vlm.image_token_id,
            Self::Tokens(c) => c.image_token_id,
        }
    }
    pub(crate) fn build(&self, vb: VarBuilder) -> Result<TrainModel, FlowError> {
        Ok(match self {
            Self::Flow(c) => TrainModel::Flow(Box::new(pi0::Model::new(c, vb)?)),
            Self::Tokens(c) => TrainModel::Tokens(Box::new(paligemma::Model::new(c, vb)?)),
        })
    }
}
