//! How a VLA run starts: a fresh model initialised from a seed, or PEFT-style adapters on a
//! trained checkpoint.

use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Var};
use rudder_tune::candle_nn::{VarBuilder, VarMap};
use rudder_tune::load::{load_model, AnyModel};
use rudder_tune::peft::{self, LoraConfig};
use rudder_tune::train::{init_from_scratch, Rng};

use super::family::{LoraRun, Vla};
use super::spec::{HeadKind, ModelConfig, ModelSpec, TrainConfig, TrainingInfo};
use crate::dataset::{DemoDataset, ACTION_DIM};
use crate::tokenizer::PromptTokenizer;
use crate::tokens::{self, ActionTokens};
use crate::FlowError;

/// A family and its trainable variables, and the run's generator (which may have drawn from
/// it already): what the trainer is built on.
pub(crate) struct Start {
    pub vla: Vla,
    pub params: Vec<(String, Var)>,
    pub rng: Rng,
}

/// The tokens head's bins: q01 / q99 from the demos' `meta.json` (computed from the frames
/// when absent), every dimension but the gripper normalised.
fn action_tokens(spec: &ModelSpec, data: &DemoDataset) -> Result<ActionTokens, FlowError> {
    let (mut q01, mut q99) = (data.meta.action_q01.clone(), data.meta.action_q99.clone());
    if q01.len() != ACTION_DIM || q99.len() != ACTION_DIM {
        q01.clear();
        q99.clear();
        for d in 0..ACTION_DIM {
            let mut v: Vec<f64> = data
                .episodes
                .iter()
                .flat_map(|e| e.actions.chunks_exact(ACTION_DIM).map(move |a| a[d] as f64))
                .collect();
            v.sort_by(f64::total_cmp);
            let q = |p: f64| v[((v.len() - 1) as f64 * p).round() as usize];
            q01.push(q(0.01));
            q99.push(q(0.99));
        }
    }
    let mut mask = vec![true; ACTION_DIM];
    mask[ACTION_DIM - 1] = false;
    Ok(ActionTokens {
        n_bins: tokens::N_BINS,
        q01,
        q99,
        mask,
        chunk: spec.chunk,
        decoding: spec.decoding,
    })
}

/// A freshly initialised model for `data`: its variables, sorted by name, go through
/// [`init_from_scratch`] (LeCun-normal matrices, normal(0, 0.02) embedding tables, zero biases,
/// LayerNorm weights 1, Gemma RMSNorm weights 0 (scale 1), drawn from `seed ^ 0x5EED_1417`);
/// the run's generator is `Rng::new(seed)`.
pub(crate) fn from_scratch(cfg: TrainConfig, data: &DemoDataset) -> Result<Start, FlowError> {
    if cfg.batch_size == 0 {
        return Err(FlowError::input("batch_size", "must be > 0"));
    }
    let tokenizer = cfg
        .model
        .tokenizer(data.episodes.iter().map(|e| e.instruction.as_str()))?;
    let model_cfg = match cfg.model.head {
        HeadKind::Flow => {
            ModelConfig::Flow(Box::new(cfg.model.pi0_config(tokenizer.vocab_size())?))
        }
        HeadKind::Tokens => ModelConfig::Tokens(Box::new(
            cfg.model.paligemma_config(tokenizer.vocab_size())?,
        )),
    };
    let device = Device::Cpu;
    let varmap = VarMap::new();
    // Creates every variable (zeros) under its Hub name.
    model_cfg.build(VarBuilder::from_varmap(&varmap, DType::F32, &device))?;
    let mut params: Vec<(String, Var)> = varmap
        .data()
        .lock()
        .map_err(|_| FlowError::input("varmap", "poisoned lock"))?
        .iter()
        .map(|(n, v)| (n.clone(), v.clone()))
        .collect();
    params.sort_by(|a, b| a.0.cmp(&b.0));
    init_from_scratch(&params, cfg.seed)?;
    let action_tokens = match cfg.model.head {
        HeadKind::Flow => None,
        HeadKind::Tokens => Some(action_tokens(&cfg.model, data)?),
    };
    let stats = data.stats();
    let rng = Rng::new(cfg.seed);
    Ok(Start {
        vla: Vla {
            cfg,
            model_cfg,
            varmap,
            stats,
            action_tokens,
            tokenizer,
            lora: None,
            last_loss: None,
            device,
        },
        params,
        rng,
    })
}

/// LoRA on the checkpoint `base` (trained by `rudder train vla`: its `training.json` gives
/// the architecture, which `cfg.model` is replaced by), keeping the base's tokenizer,
/// normalisation and action bins. The adapters' A are drawn from the run's generator
/// `Rng::new(seed)` before it shuffles the data.
pub(crate) fn lora(
    mut cfg: TrainConfig,
    data: &DemoDataset,
    base: &Path,
    lora: LoraConfig,
) -> Result<Start, FlowError> {
    if cfg.batch_size == 0 {
        return Err(FlowError::input("batch_size", "must be > 0"));
    }
    let file_err = |path: PathBuf, problem: String| FlowError::File { path, problem };
    let ip = base.join("training.json");
    let text = std::fs::read_to_string(&ip).map_err(|e| {
        file_err(
            ip.clone(),
            format!("{e} (LoRA needs a checkpoint written by `rudder train vla`)"),
        )
    })?;
    let info: TrainingInfo = serde_json::from_str(&text)
        .map_err(|e| file_err(ip.clone(), format!("not a training.json: {e}")))?;
    cfg.model = info.config.model;
    let device = Device::Cpu;
    let mut model = load_model(base, &device)?.model;
    let (model_cfg, image_id) = match &model {
        AnyModel::Pi0(m) => (
            ModelConfig::Flow(Box::new(m.cfg.clone())),
            m.cfg.vlm.image_token_id,
        ),
        AnyModel::PaliGemma(m) => (
            ModelConfig::Tokens(Box::new(m.cfg.clone())),
            m.cfg.image_token_id,
        ),
        _ => {
            return Err(file_err(
                base.join("config.json"),
                "not a VLA checkpoint (pi0 or PaliGemma)".into(),
            ))
        }
    };
    let tokenizer = PromptTokenizer::load(base, image_id as usize)?;
    let stats = match cfg.model.head {
        HeadKind::Flow => {
            let np = base.join("normalization.json");
            let text =
                std::fs::read_to_string(&np).map_err(|e| file_err(np.clone(), e.to_string()))?;
            serde_json::from_str(&text)
                .map_err(|e| file_err(np.clone(), format!("not a normalization.json: {e}")))?
        }
        HeadKind::Tokens => data.stats(),
    };
    let action_tokens = match cfg.model.head {
        HeadKind::Flow => None,
        HeadKind::Tokens => Some(ActionTokens::load(
            &base.join("action_tokens.json"),
            model_cfg.vocab_size(),
        )?),
    };
    let mut rng = Rng::new(cfg.seed);
    let mut lora = lora;
    lora.base_model_name_or_path = Some(base.display().to_string());
    let params = peft::attach_new(&mut model, &lora, "default", &mut rng, None)?;
    Ok(Start {
        vla: Vla {
            cfg,
            model_cfg,
            varmap: VarMap::new(),
            stats,
            action_tokens,
            tokenizer,
            lora: Some(LoraRun {
                base: base.to_path_buf(),
                config: lora,
                model,
            }),
            last_loss: None,
            device,
        },
        params,
        rng,
    })
}
