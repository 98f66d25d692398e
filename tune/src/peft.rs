//! LoRA adapters in PEFT's file format: `adapter_config.json` + `adapter_model.safetensors`
//! with keys like `base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight` (A: r x in,
//! B: out x r). Attaching, loading, saving, merging.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;

use candle_core::{DType, Device, Tensor, Var};
use serde_json::json;

use crate::checkpoint::{save_safetensors_atomic, write_atomic, TensorStore};
use crate::config::JsonConfig;
use crate::error::{Context, Result, TuneError};
use crate::load::AnyModel;
use crate::lora::LoraAdapter;
use crate::train::rng::Rng;

const KEY_PREFIX: &str = "base_model.model.";

/// Which modules get an adapter: PEFT's list semantics (a module matches a name if its name is
/// the entry or ends with `.entry`) or a regular expression matched against the full name.
#[derive(Debug, Clone, PartialEq)]
pub enum TargetModules {
    Names(Vec<String>),
    Regex(String),
}

impl TargetModules {
    pub fn matches(&self, module: &str) -> bool {
        match self {
            Self::Names(ns) => ns
                .iter()
                .any(|n| module == n || module.ends_with(&format!(".{n}"))),
            Self::Regex(r) => regex::Regex::new(&format!("^(?:{r})$"))
                .map(|re| re.is_match(module))
                .unwrap_or(false),
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct LoraConfig {
    pub r: usize,
    pub lora_alpha: f64,
    pub lora_dropout: f64,
    pub use_rslora: bool,
    pub target_modules: TargetModules,
    /// Per-module rank / alpha overrides, keyed by a name suffix (PEFT's rank_pattern).
    pub rank_pattern: BTreeMap<String, usize>,
    pub alpha_pattern: BTreeMap<String, f64>,
    pub base_model_name_or_path: Option<String>,
    pub task_type: Option<String>,
}

impl LoraConfig {
    pub fn new(r: usize, lora_alpha: f64, targets: &[&str]) -> Self {
        Self {
            r,
            lora_alpha,
            lora_dropout: 0.0,
            use_rslora: false,
            target_modules: TargetModules::Names(targets.iter().map(|s| s.to_string()).collect()),
            rank_pattern: BTreeMap::new(),
            alpha_pattern: BTreeMap::new(),
            base_model_name_or_path: None,
            task_type: Some("CAUSAL_LM".into()),
        }
    }

    fn pattern<T: Copy>(map: &BTreeMap<String, T>, module: &str) -> Option<T> {
        map.iter()
            .find(|(k, _)| module == k.as_str() || module.ends_with(&format!(".{k}")))
            .map(|(_, v)| *v)
    }

    pub fn rank_for(&self, module: &str) -> usize {
        Self::pattern(&self.rank_pattern, module).unwrap_or(self.r)
    }

    /// alpha / r, or alpha / sqrt(r) with rsLoRA.
    pub fn scaling_for(&self, module: &str) -> f64 {
        let r = self.rank_for(module) as f64;
        let alpha = Self::pattern(&self.alpha_pattern, module).unwrap_or(self.lora_alpha);
        if self.use_rslora {
            alpha / r.sqrt()
        } else {
            alpha / r
        }
    }

    pub fn from_json(cfg: &JsonConfig) -> Result<Self> {
        if let Some(t) = cfg.opt_str("peft_type")? {
            if t != "LORA" {
                return Err(cfg.field_error("peft_type", format!("`{t}` is not LORA")));
            }
        }
        for unsupported in ["use_dora", "fan_in_fan_out", "use_qalora"] {
            if cfg.opt_bool(unsupported)? == Some(true) {
                return Err(cfg.field_error(unsupported, "true is not supported (plain LoRA only)"));
            }
        }
        let r = cfg.usize("r")?;
        if r == 0 {
            return Err(cfg.field_error("r", "must be > 0"));
        }
        let target_modules = match cfg.get("target_modules") {
            Some(serde_json::Value::Array(a)) => TargetModules::Names(
                a.iter()
                    .map(|v| {
                        v.as_str()
                            .map(str::to_string)
                            .ok_or_else(|| cfg.field_error("target_modules", "expected strings"))
                    })
                    .collect::<Result<_>>()?,
            ),
            Some(serde_json::Value::String(s)) => TargetModules::Regex(s.clone()),
            Some(_) => {
                return Err(cfg.field_error(
                    "target_modules",
                    "expected a list of names or a regex string",
                ))
            }
            None => return Err(cfg.field_error("target_modules", "missing")),
        };
        let map_usize = |field: &str| -> Result<BTreeMap<String, usize>> {
            match cfg.get(field).and_then(|v| v.as_object()) {
                None => Ok(BTreeMap::new()),
                Some(o) => o
                    .iter()
                    .map(|(k, v)| {
                        v.as_u64().map(|x| (k.clone(), x as usize)).ok_or_else(|| {
                            cfg.field_error(field, format!("{k}: expected an integer"))
                        })
                    })
                    .collect(),
            }
        };
        let alpha_pattern = match cfg.get("alpha_pattern").and_then(|v| v.as_object()) {
            None => BTreeMap::new(),
            Some(o) => o
                .iter()
                .map(|(k, v)| {
                    v.as_f64().map(|x| (k.clone(), x)).ok_or_else(|| {
                        cfg.field_error("alpha_pattern", format!("{k}: expected a number"))
                    })
                })
                .collect::<Result<_>>()?,
        };
        Ok(Self {
            r,
            lora_alpha: cfg.f64("lora_alpha")?,
            lora_dropout: cfg.opt_f64("lora_dropout")?.unwrap_or(0.0),
            use_rslora: cfg.opt_bool("use_rslora")?.unwrap_or(false),
            target_modules,
            rank_pattern: map_usize("rank_pattern")?,
            alpha_pattern,
            base_model_name_or_path: cfg.opt_str("base_model_name_or_path")?,
            task_type: cfg.opt_str("task_type")?,
        })
    }

    /// The fields PEFT writes, so that `PeftModel.from_pretrained` reads the file as its own.
    pub fn to_json(&self) -> serde_json::Value {
        let targets = match &self.target_modules {
            TargetModules::Names(n) => json!(n),
            TargetModules::Regex(r) => json!(r),
        };
        // PEFT writes integral alphas as integers.
        let alpha = if self.lora_alpha.fract() == 0.0 && self.lora_alpha.abs() < 1e15 {
            json!(self.lora_alpha as i64)
        } else {
            json!(self.lora_alpha)
        };
        json!({
            "alpha_pattern": self.alpha_pattern,
            "auto_mapping": null,
            "base_model_name_or_path": self.base_model_name_or_path,
            "bias": "none",
            "exclude_modules": null,
            "fan_in_fan_out": false,
            "inference_mode": true,
            "init_lora_weights": true,
            "layer_replication": null,
            "layers_pattern": null,
            "layers_to_transform": null,
            "loftq_config": {},
            "lora_alpha": alpha,
            "lora_bias": false,
            "lora_dropout": self.lora_dropout,
            "megatron_config": null,
            "megatron_core": "megatron.core",
            "modules_to_save": null,
            "peft_type": "LORA",
            "r": self.r,
            "rank_pattern": self.rank_pattern,
            "revision": null,
            "target_modules": targets,
            "task_type": self.task_type,
            "use_dora": false,
            "use_rslora": self.use_rslora,
        })
    }
}

/// Fresh trainable adapters on every targeted module, initialised as PEFT does (A uniform in
/// +-1/sqrt(in), i.e. kaiming-uniform with a = sqrt(5); B zero). Returns the variables by
/// their PEFT key names.
pub fn attach_new(
    model: &mut AnyModel,
    cfg: &LoraConfig,
    name: &str,
    rng: &mut Rng,
    dropout_rng: Option<std::sync::Arc<std::sync::Mutex<Rng>>>,
) -> Result<Vec<(String, Var)>> {
    let mut vars = Vec::new();
    let mut n_matched = 0;
    model.linears_mut(&mut |module, lin| {
        if !cfg.target_modules.matches(module) {
            return Ok(());
        }
        n_matched += 1;
        let r = cfg.rank_for(module);
        let (inp, out) = (lin.in_dim(), lin.out_dim());
        let dev = lin.weight_t().device().clone();
        let bound = 1.0 / (inp as f64).sqrt();
        let a: Vec<f32> = (0..r * inp)
            .map(|_| ((rng.next_f64() * 2.0 - 1.0) * bound) as f32)
            .collect();
        let a = Var::from_vec(a, (r, inp), &dev).context(module.to_string())?;
        let b = Var::zeros((out, r), DType::F32, &dev).context(module.to_string())?;
        lin.lora.insert(
            name,
            LoraAdapter {
                a: a.as_tensor().clone(),
                b: b.as_tensor().clone(),
                scaling: cfg.scaling_for(module),
                dropout: match (&dropout_rng, cfg.lora_dropout > 0.0) {
                    (Some(r), true) => Some(crate::lora::LoraDropout {
                        p: cfg.lora_dropout as f32,
                        rng: r.clone(),
                    }),
                    _ => None,
                },
            },
        );
        lin.lora.activate(Some(name));
        vars.push((format!("{KEY_PREFIX}{module}.lora_A.weight"), a));
        vars.push((format!("{KEY_PREFIX}{module}.lora_B.weight"), b));
        Ok(())
    })?;
    if n_matched == 0 {
        return Err(TuneError::Invalid(format!(
            "target_modules {:?} match no linear layer of the model",
            cfg.target_modules
        )));
    }
    Ok(vars)
}

/// Loads a PEFT adapter folder onto `model` under `name` and makes it active.
pub fn load_adapter(
    model: &mut AnyModel,
    dir: &Path,
    name: &str,
    device: &Device,
) -> Result<LoraConfig> {
    let cfg_path = dir.join("adapter_config.json");
    let jc = JsonConfig::load(&cfg_path)?;
    let cfg = LoraConfig::from_json(&jc)?;
    let wpath = dir.join("adapter_model.safetensors");
    let store = TensorStore::load_file(&wpath, device)?;
    // Group tensors by module.
    let mut by_module: HashMap<String, (Option<Tensor>, Option<Tensor>)> = HashMap::new();
    for key in store.names() {
        let rest = key.strip_prefix(KEY_PREFIX).ok_or_else(|| {
            store.tensor_error(
                key,
                format!("expected a PEFT key starting with `{KEY_PREFIX}`"),
            )
        })?;
        let (module, which) = if let Some(m) = rest.strip_suffix(".lora_A.weight") {
            (m, 0)
        } else if let Some(m) = rest.strip_suffix(".lora_B.weight") {
            (m, 1)
        } else {
            return Err(store.tensor_error(
                key,
                "not a lora_A / lora_B weight (only plain LoRA is supported)",
            ));
        };
        if !cfg.target_modules.matches(module) {
            return Err(store.tensor_error(
                key,
                format!(
                    "module `{module}` is not in the config's target_modules {:?}",
                    cfg.target_modules
                ),
            ));
        }
        let t = store.get(key)?.to_dtype(DType::F32).context(key.clone())?;
        let e = by_module.entry(module.to_string()).or_default();
        if which == 0 {
            e.0 = Some(t);
        } else {
            e.1 = Some(t);
        }
    }
    let mut seen = 0usize;
    let mut missing: Vec<String> = Vec::new();
    model.linears_mut(&mut |module, lin| {
        if !cfg.target_modules.matches(module) {
            return Ok(());
        }
        let Some((a, b)) = by_module.get(module) else {
            missing.push(module.to_string());
            return Ok(());
        };
        seen += 1;
        let ka = format!("{KEY_PREFIX}{module}.lora_A.weight");
        let kb = format!("{KEY_PREFIX}{module}.lora_B.weight");
        let a = a
            .clone()
            .ok_or_else(|| store.tensor_error(&ka, "missing (lora_B present)"))?;
        let b = b
            .clone()
            .ok_or_else(|| store.tensor_error(&kb, "missing (lora_A present)"))?;
        let r = cfg.rank_for(module);
        let (inp, out) = (lin.in_dim(), lin.out_dim());
        if a.dims() != [r, inp] {
            return Err(store.tensor_error(
                &ka,
                format!(
                    "shape {:?}, expected [r={r}, in={inp}] (rank or base model mismatch)",
                    a.dims()
                ),
            ));
        }
        if b.dims() != [out, r] {
            return Err(store.tensor_error(
                &kb,
                format!(
                    "shape {:?}, expected [out={out}, r={r}] (rank or base model mismatch)",
                    b.dims()
                ),
            ));
        }
        lin.lora.insert(
            name,
            LoraAdapter {
                a,
                b,
                scaling: cfg.scaling_for(module),
                dropout: None,
            },
        );
        lin.lora.activate(Some(name));
        Ok(())
    })?;
    if seen < by_module.len() {
        let mut known: Vec<String> = Vec::new();
        let _ = model.linears_mut(&mut |m, _| {
            known.push(m.to_string());
            Ok(())
        });
        let mut stray: Vec<&String> = by_module.keys().filter(|m| !known.contains(m)).collect();
        stray.sort();
        return Err(TuneError::Tensor {
            path: wpath,
            tensor: format!(
                "{KEY_PREFIX}{}.lora_A.weight",
                stray.first().map(|s| s.as_str()).unwrap_or("?")
            ),
            problem: format!("module(s) {stray:?} do not exist in the base model"),
        });
    }
    if !missing.is_empty() {
        missing.sort();
        return Err(TuneError::Tensor {
            path: wpath,
            tensor: format!("{KEY_PREFIX}{}.lora_A.weight", missing[0]),
            problem: format!(
                "missing: target_modules select {} module(s) of the base model without weights in the file",
                missing.len()
            ),
        });
    }
    Ok(cfg)
}

/// Writes the adapter `name` as a PEFT folder (both files atomically).
pub fn save_adapter(model: &mut AnyModel, cfg: &LoraConfig, name: &str, dir: &Path) -> Result<()> {
    let mut tensors: HashMap<String, Tensor> = HashMap::new();
    model.linears_mut(&mut |module, lin| {
        if let Some(a) = lin.lora.get(name) {
            tensors.insert(format!("{KEY_PREFIX}{module}.lora_A.weight"), a.a.detach());
            tensors.insert(format!("{KEY_PREFIX}{module}.lora_B.weight"), a.b.detach());
        }
        Ok(())
    })?;
    if tensors.is_empty() {
        return Err(TuneError::Invalid(format!(
            "no adapter named `{name}` is loaded"
        )));
    }
    let text = serde_json::to_vec_pretty(&cfg.to_json()).map_err(|e| TuneError::Json {
        path: dir.join("adapter_config.json"),
        msg: e.to_string(),
    })?;
    save_safetensors_atomic(&tensors, None, &dir.join("adapter_model.safetensors"))?;
    write_atomic(&dir.join("adapter_config.json"), &text)
}

/// Selects the adapter used by every adapted layer (None: base model).
pub fn activate(model: &mut AnyModel, name: Option<&str>) -> Result<()> {
    let mut missing = false;
    model.linears_mut(&mut |_, lin| {
        if !lin.lora.is_empty() && !lin.lora.activate(name) {
            missing = true;
        }
        Ok(())
    })?;
    if missing {
        return Err(TuneError::Invalid(format!(
            "adapter `{}` is not loaded on every adapted layer",
            name.unwrap_or("")
        )));
    }
    Ok(())
}

pub fn merge(model: &mut AnyModel) -> Result<usize> {
    let mut n = 0;
    model.linears_mut(&mut |m, lin| {
        if lin.merge_active().context(format!("merging {m}"))? {
            n += 1;
        }
        Ok(())
    })?;
    Ok(n)
}

pub fn unmerge(model: &mut AnyModel) -> Result<usize> {
    let mut n = 0;
    model.linears_mut(&mut |m, lin| {
        if lin.unmerge().context(format!("unmerging {m}"))? {
            n += 1;
        }
        Ok(())
    })?;
    Ok(n)
}

/// Turns the adapter `name`'s A and B into trainable variables (in place) and returns them by
/// PEFT key name, in module order.
pub fn make_trainable(
    model: &mut AnyModel,
    name: &str,
    dropout: Option<crate::lora::LoraDropout>,
) -> Result<Vec<(String, Var)>> {
    let mut vars = Vec::new();
    model.linears_mut(&mut |module, lin| {
        if let Some(a) = lin.lora.get_mut(name) {
            let va = Var::from_tensor(&a.a.detach()).context(module.to_string())?;
            let vb = Var::from_tensor(&a.b.detach()).context(module.to_string())?;
            a.a = va.as_tensor().clone();
            a.b = vb.as_tensor().clone();
            a.dropout = dropout.clone();
            vars.push((format!("{KEY_PREFIX}{module}.lora_A.weight"), va));
            vars.push((format!("{KEY_PREFIX}{module}.lora_B.weight"), vb));
        }
        Ok(())
    })?;
    if vars.is_empty() {
        return Err(TuneError::Invalid(format!(
            "no adapter named `{name}` is loaded"
        )));
    }
    Ok(vars)
}

/// The dense update `s B A` of every layer carrying adapter `name`, with the base weight.
pub fn adapted_weights(model: &mut AnyModel, name: &str) -> Result<Vec<(String, Tensor, Tensor)>> {
    let mut out = Vec::new();
    model.linears_mut(&mut |module, lin| {
        if let Some(a) = lin.lora.get(name) {
            let w0 = lin.weight().context(module.to_string())?;
            let dw = a.delta_weight().context(module.to_string())?;
            out.push((module.to_string(), w0, dw));
        }
        Ok(())
    })?;
    Ok(out)
}
