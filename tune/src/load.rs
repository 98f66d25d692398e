//! Loading any supported Hugging Face checkpoint folder by its `config.json`.

use std::path::{Path, PathBuf};

use candle_core::{DType, Device};

use crate::checkpoint::TensorStore;
use crate::config::JsonConfig;
use crate::error::{Context, Result, TuneError};
use crate::models::decoder::Decoder;
use crate::models::{gemma, llama, paligemma, pi0, siglip};
use crate::state;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Arch {
    Llama,
    Gemma,
    Siglip,
    PaliGemma,
    Pi0,
}

pub const SUPPORTED: &str = "LlamaForCausalLM, GemmaForCausalLM, SiglipVisionModel, \
     PaliGemmaForConditionalGeneration, PI0ForConditionalGeneration";

impl Arch {
    /// From `architectures[0]`, else `model_type`.
    pub fn detect(cfg: &JsonConfig) -> Result<Self> {
        let arch = cfg
            .get("architectures")
            .and_then(|a| a.as_array())
            .and_then(|a| a.first())
            .and_then(|a| a.as_str())
            .map(str::to_string);
        let model_type = cfg.opt_str("model_type")?;
        let by_arch = arch.as_deref().and_then(|a| match a {
            "LlamaForCausalLM" => Some(Self::Llama),
            "GemmaForCausalLM" => Some(Self::Gemma),
            "SiglipVisionModel" => Some(Self::Siglip),
            "PaliGemmaForConditionalGeneration" => Some(Self::PaliGemma),
            "PI0ForConditionalGeneration" => Some(Self::Pi0),
            _ => None,
        });
        if let Some(a) = by_arch {
            return Ok(a);
        }
        let by_type = model_type.as_deref().and_then(|m| match m {
            "llama" => Some(Self::Llama),
            "gemma" => Some(Self::Gemma),
            "siglip_vision_model" => Some(Self::Siglip),
            "paligemma" => Some(Self::PaliGemma),
            "pi0" => Some(Self::Pi0),
            _ => None,
        });
        match (by_type, arch, model_type) {
            (Some(a), _, _) => Ok(a),
            (None, Some(a), _) => Err(TuneError::UnknownArchitecture {
                path: cfg.path.clone(),
                arch: a,
                supported: SUPPORTED.into(),
            }),
            (None, None, Some(m)) => Err(TuneError::UnknownArchitecture {
                path: cfg.path.clone(),
                arch: format!("model_type {m}"),
                supported: SUPPORTED.into(),
            }),
            (None, None, None) => {
                Err(cfg.field_error("architectures", "missing (and no model_type either)"))
            }
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Self::Llama => "LlamaForCausalLM",
            Self::Gemma => "GemmaForCausalLM",
            Self::Siglip => "SiglipVisionModel",
            Self::PaliGemma => "PaliGemmaForConditionalGeneration",
            Self::Pi0 => "PI0ForConditionalGeneration",
        }
    }
}

#[derive(Debug, Clone)]
pub enum AnyModel {
    Llama(llama::Model),
    Gemma(gemma::Model),
    Siglip(Box<siglip::Model>),
    PaliGemma(Box<paligemma::Model>),
    Pi0(Box<pi0::Model>),
}

impl AnyModel {
    /// The language model, for models that have one.
    pub fn decoder(&self) -> Option<&Decoder> {
        match self {
            Self::Llama(m) => Some(&m.decoder),
            Self::Gemma(m) => Some(&m.decoder),
            Self::PaliGemma(m) => Some(&m.language_model),
            Self::Pi0(m) => Some(&m.vlm.language_model),
            Self::Siglip(_) => None,
        }
    }

    pub fn decoder_mut(&mut self) -> Option<&mut Decoder> {
        match self {
            Self::Llama(m) => Some(&mut m.decoder),
            Self::Gemma(m) => Some(&mut m.decoder),
            Self::PaliGemma(m) => Some(&mut m.language_model),
            Self::Pi0(m) => Some(&mut m.vlm.language_model),
            Self::Siglip(_) => None,
        }
    }
}

impl AnyModel {
    /// Every parameter under its Hub name (the layout this crate reads).
    pub fn named_tensors(&self) -> candle_core::Result<state::NamedTensors> {
        let mut out = Vec::new();
        match self {
            Self::Llama(m) => state::decoder(&mut out, "model", Some(""), &m.decoder)?,
            Self::Gemma(m) => state::decoder(&mut out, "model", Some(""), &m.decoder)?,
            Self::Siglip(m) => state::siglip(&mut out, "vision_model", m)?,
            Self::PaliGemma(m) => state::paligemma(&mut out, m)?,
            Self::Pi0(m) => state::pi0(&mut out, m)?,
        }
        Ok(out)
    }
}

impl AnyModel {
    /// Every linear layer of the language model (for pi0, of the action expert too) with its
    /// module name, as PEFT names them.
    pub fn linears_mut(
        &mut self,
        f: &mut dyn FnMut(&str, &mut crate::blocks::Linear) -> Result<()>,
    ) -> Result<()> {
        match self {
            Self::Llama(m) => state::decoder_linears_mut(&mut m.decoder, "model", Some(""), f),
            Self::Gemma(m) => state::decoder_linears_mut(&mut m.decoder, "model", Some(""), f),
            Self::PaliGemma(m) => {
                state::decoder_linears_mut(&mut m.language_model, "language_model.model", Some("language_model"), f)
            }
            Self::Siglip(_) => Err(TuneError::Invalid(
                "LoRA on a SigLIP vision tower alone is not supported; adapt a model with a language model".into(),
            )),
            // The prefix language model and the action expert, under the names
            // `named_tensors` writes (the loadable Hub layout).
            Self::Pi0(m) => {
                state::decoder_linears_mut(
                    &mut m.vlm.language_model,
                    "paligemma_with_expert.paligemma.model.language_model",
                    None,
                    f,
                )?;
                state::layers_linears_mut(
                    &mut m.expert.layers,
                    "paligemma_with_expert.gemma_expert.model",
                    f,
                )
            }
        }
    }
}

#[derive(Debug, Clone)]
pub struct LoadedModel {
    pub dir: PathBuf,
    pub arch: Arch,
    pub config: JsonConfig,
    pub model: AnyModel,
    pub weights: TensorStore,
    pub device: Device,
}

/// Loads `dir/config.json` and the folder's safetensors into the matching model.
pub fn load_model(dir: &Path, device: &Device) -> Result<LoadedModel> {
    let cfg_path = dir.join("config.json");
    let cfg = JsonConfig::load(&cfg_path)?;
    let arch = Arch::detect(&cfg)?;
    // Parse the configuration before touching weights: a bad field is reported as such.
    enum Parsed {
        L(llama::Config),
        G(gemma::Config),
        S(siglip::Config),
        P(Box<paligemma::Config>),
        Pi(Box<pi0::Config>),
    }
    let parsed = match arch {
        Arch::Llama => Parsed::L(llama::Config::from_json(&cfg)?),
        Arch::Gemma => Parsed::G(gemma::Config::from_json(&cfg)?),
        Arch::Siglip => Parsed::S(siglip::Config::from_json(&cfg)?),
        Arch::PaliGemma => Parsed::P(Box::new(paligemma::Config::from_json(&cfg)?)),
        Arch::Pi0 => Parsed::Pi(Box::new(pi0::Config::from_json(&cfg)?)),
    };
    let weights = TensorStore::load_model_dir(dir, device)?;
    let vb = weights.var_builder(DType::F32, device);
    let ctx = format!("{}: building {}", dir.display(), arch.name());
    let model = match parsed {
        Parsed::L(c) => AnyModel::Llama(llama::Model::new(&c, vb).context(ctx)?),
        Parsed::G(c) => AnyModel::Gemma(gemma::Model::new(&c, vb).context(ctx)?),
        Parsed::S(c) => {
            let vb = if vb.contains_tensor("vision_model.embeddings.patch_embedding.weight") {
                vb.pp("vision_model")
            } else {
                vb
            };
            AnyModel::Siglip(Box::new(siglip::Model::new(&c, vb).context(ctx)?))
        }
        Parsed::P(c) => AnyModel::PaliGemma(Box::new(paligemma::Model::new(&c, vb).context(ctx)?)),
        Parsed::Pi(c) => AnyModel::Pi0(Box::new(pi0::Model::new(&c, vb).context(ctx)?)),
    };
    Ok(LoadedModel {
        dir: dir.to_path_buf(),
        arch,
        config: cfg,
        model,
        weights,
        device: device.clone(),
    })
}

impl LoadedModel {
    /// Writes `config.json` and `model.safetensors` into `dir`, each atomically.
    pub fn save_pretrained(&self, dir: &Path) -> Result<()> {
        let named = self
            .model
            .named_tensors()
            .context(format!("{}: collecting parameters", self.dir.display()))?;
        let map: std::collections::HashMap<String, candle_core::Tensor> =
            named.into_iter().collect();
        let cfg = serde_json::to_vec_pretty(self.config.value()).map_err(|e| TuneError::Json {
            path: dir.join("config.json"),
            msg: e.to_string(),
        })?;
        crate::checkpoint::write_atomic(&dir.join("config.json"), &cfg)?;
        let meta = std::collections::HashMap::from([("format".to_string(), "pt".to_string())]);
        crate::checkpoint::save_safetensors_atomic(&map, Some(meta), &dir.join("model.safetensors"))
    }
}
