//! Comparing a model against a reference file of `in.*` inputs and expected outputs, as
//! `rudder model verify` reports it.

use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor};
use serde::Serialize;

use crate::checkpoint::TensorStore;
use crate::error::{Context, Result, TuneError};
use crate::generate;
use crate::hooks::{HookAction, HookPoint, Hooks, Site, Tower};
use crate::load::{load_model, AnyModel, LoadedModel};
use crate::models::{paligemma, pi0};

#[derive(Debug, Clone, Serialize)]
pub struct OutputCheck {
    pub name: String,
    pub max_abs_diff: f64,
    pub pass: bool,
}

#[derive(Debug, Clone, Serialize)]
pub struct Skipped {
    pub name: String,
    pub reason: String,
}

#[derive(Debug, Clone, Serialize)]
pub struct VerifyReport {
    pub model: String,
    pub architecture: String,
    pub reference: String,
    pub atol: f64,
    pub pass: bool,
    pub outputs: Vec<OutputCheck>,
    pub skipped: Vec<Skipped>,
}

/// Largest |a - b|; shapes must match. NaN anywhere counts as infinitely different.
pub fn max_abs_diff(a: &Tensor, b: &Tensor) -> candle_core::Result<f64> {
    if a.dims() != b.dims() {
        candle_core::bail!("shape {:?} vs reference {:?}", a.dims(), b.dims());
    }
    let a = a.to_dtype(DType::F64)?.flatten_all()?.to_vec1::<f64>()?;
    let b = b.to_dtype(DType::F64)?.flatten_all()?.to_vec1::<f64>()?;
    let mut m = 0f64;
    for (x, y) in a.iter().zip(b.iter()) {
        let d = (x - y).abs();
        if d.is_nan() {
            return Ok(f64::INFINITY);
        }
        m = m.max(d);
    }
    Ok(m)
}

struct Checker<'a> {
    reference: &'a TensorStore,
    atol: f64,
    outputs: Vec<OutputCheck>,
    used: std::collections::HashSet<String>,
}

impl Checker<'_> {
    fn check(&mut self, name: &str, got: &Tensor) -> Result<()> {
        let Some(want) = self.reference.opt(name) else {
            return Ok(());
        };
        let d = max_abs_diff(got, want)
            .map_err(|e| self.reference.tensor_error(name, e.to_string()))?;
        self.outputs.push(OutputCheck {
            name: name.to_string(),
            max_abs_diff: d,
            pass: d <= self.atol,
        });
        self.used.insert(name.to_string());
        Ok(())
    }

    fn check_ids(&mut self, name: &str, got: &[Vec<u32>]) -> Result<()> {
        let Some(want) = self.reference.opt(name) else {
            return Ok(());
        };
        let want: Vec<Vec<i64>> = want
            .to_dtype(DType::I64)
            .and_then(|w| w.to_vec2())
            .map_err(|e| self.reference.tensor_error(name, e.to_string()))?;
        let mut worst = 0f64;
        if want.len() != got.len() || want.iter().zip(got).any(|(w, g)| w.len() != g.len()) {
            worst = f64::INFINITY;
        } else {
            for (w, g) in want.iter().zip(got) {
                for (a, b) in w.iter().zip(g) {
                    worst = worst.max((*a - *b as i64).abs() as f64);
                }
            }
        }
        // Token ids must match exactly, whatever the tolerance.
        self.outputs.push(OutputCheck {
            name: name.to_string(),
            max_abs_diff: worst,
            pass: worst == 0.0,
        });
        self.used.insert(name.to_string());
        Ok(())
    }
}

fn input<'a>(reference: &'a TensorStore, name: &str) -> Result<&'a Tensor> {
    reference.opt(name).ok_or_else(|| {
        reference.tensor_error(
            name,
            "missing input tensor (this model needs it in the reference file)",
        )
    })
}

fn ids_tensor(reference: &TensorStore, name: &str) -> Result<Tensor> {
    let t = input(reference, name)?;
    if t.rank() != 2 {
        return Err(
            reference.tensor_error(name, format!("expected [batch, seq], got {:?}", t.dims()))
        );
    }
    if t.dtype().is_float() {
        return Err(reference.tensor_error(
            name,
            format!("expected integer token ids, got {:?}", t.dtype()),
        ));
    }
    let v: Vec<i64> = t
        .to_dtype(DType::I64)
        .and_then(|x| x.flatten_all())
        .and_then(|x| x.to_vec1())
        .map_err(|e| reference.tensor_error(name, e.to_string()))?;
    if let Some(bad) = v.iter().find(|&&x| x < 0 || x > u32::MAX as i64) {
        return Err(
            reference.tensor_error(name, format!("token id {bad} is negative or too large"))
        );
    }
    t.to_dtype(DType::U32)
        .map_err(|e| reference.tensor_error(name, e.to_string()))
}

fn rows_i64(reference: &TensorStore, name: &str) -> Result<Option<Vec<Vec<i64>>>> {
    match reference.opt(name) {
        None => Ok(None),
        Some(t) => t
            .to_dtype(DType::I64)
            .and_then(|x| x.to_vec2())
            .map(Some)
            .map_err(|e| reference.tensor_error(name, e.to_string())),
    }
}

/// Capture hooks at every site a reference may hold, for `layers` blocks of `tower`.
fn capture_all(hooks: &mut Hooks, tower: Tower, layers: usize) {
    for l in 0..layers {
        for site in [Site::MlpIn, Site::MlpAct, Site::MlpOut, Site::ResidPost] {
            hooks.capture(HookPoint {
                tower,
                layer: l,
                site,
            });
        }
    }
}

fn check_layers(
    ck: &mut Checker,
    hooks: &Hooks,
    tower: Tower,
    prefix: &str,
    layers: usize,
) -> Result<()> {
    for l in 0..layers {
        for (site, suffix) in [
            (Site::ResidPost, "out"),
            (Site::MlpIn, "mlp.in"),
            (Site::MlpAct, "mlp.act"),
            (Site::MlpOut, "mlp.out"),
        ] {
            if let Some(t) = hooks.captured(&HookPoint {
                tower,
                layer: l,
                site,
            }) {
                ck.check(&format!("{prefix}layer.{l}.{suffix}"), t)?;
            }
        }
    }
    Ok(())
}

fn check_hidden(ck: &mut Checker, hs: &[Tensor]) -> Result<()> {
    for (i, h) in hs.iter().enumerate() {
        ck.check(&format!("hf.hidden_states.{i}"), h)?;
    }
    Ok(())
}

/// Reads `"layers.0 output += 4.0 * steer.vector"` from the reference metadata.
fn steer_spec(meta: &str) -> Option<(usize, f64)> {
    let rest = meta.split("layers.").nth(1)?;
    let layer: usize = rest
        .split(|c: char| !c.is_ascii_digit())
        .next()?
        .parse()
        .ok()?;
    let after = meta.split("+=").nth(1)?;
    let factor: f64 = after.split('*').next()?.trim().parse().ok()?;
    Some((layer, factor))
}

/// Runs `model` on the reference inputs and compares what it can produce.
pub fn verify_loaded(
    loaded: &LoadedModel,
    reference_path: &Path,
    atol: f64,
) -> Result<VerifyReport> {
    let device = loaded.device.clone();
    let reference = TensorStore::load_file(reference_path, &device)?;
    if !reference.names().any(|n| n.starts_with("in.")) {
        return Err(TuneError::Tensor {
            path: reference_path.to_path_buf(),
            tensor: "in.*".into(),
            problem: "the reference file holds no inputs (no tensor named in.*)".into(),
        });
    }
    let mut ck = Checker {
        reference: &reference,
        atol,
        outputs: vec![],
        used: Default::default(),
    };
    let ctx = |what: &str| format!("{}: {what}", loaded.dir.display());
    match &loaded.model {
        AnyModel::Llama(_) | AnyModel::Gemma(_) => {
            let Some(dec) = loaded.model.decoder() else {
                return Err(TuneError::Invalid("decoder missing".into()));
            };
            let ids = ids_tensor(&reference, "in.input_ids")?;
            let mut hooks = Hooks::new();
            capture_all(&mut hooks, Tower::Main, dec.layers.len());
            let (logits, out) = dec
                .forward_ids(&ids, 0, None, Some(&mut hooks), true)
                .context(ctx("forward on in.input_ids"))?;
            ck.check("out.logits", &logits)?;
            check_hidden(&mut ck, &out.hidden_states)?;
            check_layers(&mut ck, &hooks, Tower::Main, "", dec.layers.len())?;
            if let (Some(vec), true) = (
                reference.opt("steer.vector"),
                reference.contains("steer.logits"),
            ) {
                // The factor and layer come from the reference's metadata
                // ("layers.0 output += 4.0 * steer.vector"); without it steer.logits is skipped.
                if let Some((layer, factor)) = reference
                    .metadata()
                    .get("steer")
                    .and_then(|m| steer_spec(m))
                {
                    let add = (vec * factor).context(ctx("steer vector"))?;
                    let mut h = Hooks::new();
                    h.add(
                        HookPoint::new(layer, Site::ResidPost),
                        HookAction::AddVector(add),
                    );
                    let (sl, _) = dec
                        .forward_ids(&ids, 0, None, Some(&mut h), false)
                        .context(ctx("steered forward"))?;
                    ck.check("steer.logits", &sl)?;
                }
            }
            if reference.contains("gen.input_ids") && reference.contains("gen.output_ids") {
                let gin = ids_tensor(&reference, "gen.input_ids")?;
                let prompts: Vec<Vec<u32>> = gin.to_vec2().context(ctx("gen.input_ids"))?;
                let want = input(&reference, "gen.output_ids")?;
                let new = want
                    .dim(1)
                    .unwrap_or(0)
                    .saturating_sub(gin.dim(1).unwrap_or(0));
                let pad = dec.cfg.pad_token_id.unwrap_or(0);
                let got = generate::greedy(dec, &prompts, new, &dec.cfg.eos_token_ids, pad, None)
                    .context(ctx("greedy generation"))?;
                ck.check_ids("gen.output_ids", &got)?;
            }
        }
        AnyModel::Siglip(m) => {
            let px = input(&reference, "in.pixel_values")?
                .to_dtype(DType::F32)
                .context(ctx("in.pixel_values"))?;
            let mut hooks = Hooks::new();
            capture_all(&mut hooks, m.tower, m.layers.len());
            let out = m
                .forward(&px, Some(&mut hooks), true)
                .context(ctx("forward on in.pixel_values"))?;
            ck.check("out.last_hidden_state", &out.last_hidden_state)?;
            if let Some(p) = &out.pooler_output {
                ck.check("out.pooler_output", p)?;
            }
            check_hidden(&mut ck, &out.hidden_states)?;
            check_layers(&mut ck, &hooks, m.tower, "", m.layers.len())?;
        }
        AnyModel::PaliGemma(m) => {
            let ids = ids_tensor(&reference, "in.input_ids")?;
            let px = input(&reference, "in.pixel_values")?
                .to_dtype(DType::F32)
                .context(ctx("in.pixel_values"))?;
            let am = rows_i64(&reference, "in.attention_mask")?.map(|r| {
                r.into_iter()
                    .map(|row| row.into_iter().map(|x| x != 0).collect())
                    .collect()
            });
            let tt = rows_i64(&reference, "in.token_type_ids")?;
            let mut hooks = Hooks::new();
            capture_all(&mut hooks, Tower::Main, m.language_model.layers.len());
            capture_all(&mut hooks, Tower::Vision, m.vision_tower.layers.len());
            let inputs = paligemma::Inputs {
                input_ids: ids,
                pixel_values: px,
                attention_mask: am,
                token_type_ids: tt,
            };
            let out = m
                .forward(&inputs, Some(&mut hooks), true)
                .context(ctx("forward"))?;
            ck.check("out.logits", &out.logits)?;
            ck.check("out.image_features", &out.image_features)?;
            check_hidden(&mut ck, &out.text.hidden_states)?;
            check_layers(
                &mut ck,
                &hooks,
                Tower::Vision,
                "vision.",
                m.vision_tower.layers.len(),
            )?;
            if reference.contains("out.logits_causal_no_token_type_ids") {
                // The reference generator keeps its layer recorders attached while it runs this
                // second, fully causal pass, so the stored `layer.*` tensors are from this pass.
                let causal = paligemma::Inputs {
                    token_type_ids: None,
                    ..inputs
                };
                let mut ch = Hooks::new();
                capture_all(&mut ch, Tower::Main, m.language_model.layers.len());
                let o = m
                    .forward(&causal, Some(&mut ch), false)
                    .context(ctx("causal forward"))?;
                ck.check("out.logits_causal_no_token_type_ids", &o.logits)?;
                check_layers(&mut ck, &ch, Tower::Main, "", m.language_model.layers.len())?;
            } else {
                check_layers(
                    &mut ck,
                    &hooks,
                    Tower::Main,
                    "",
                    m.language_model.layers.len(),
                )?;
            }
        }
        AnyModel::Pi0(m) => verify_pi0(m, &reference, &mut ck, &ctx)?,
    }
    let mut skipped = Vec::new();
    for name in reference.names() {
        if name.starts_with("in.") || ck.used.contains(name) {
            continue;
        }
        let reason = if name.starts_with("gen.input_ids") || name == "steer.vector" {
            continue;
        } else {
            "not produced by this model's verification"
        };
        skipped.push(Skipped {
            name: name.clone(),
            reason: reason.into(),
        });
    }
    skipped.sort_by(|a, b| a.name.cmp(&b.name));
    ck.outputs.sort_by_key(|o| natural_key(&o.name));
    let pass = !ck.outputs.is_empty() && ck.outputs.iter().all(|o| o.pass);
    Ok(VerifyReport {
        model: loaded.dir.display().to_string(),
        architecture: loaded.arch.name().into(),
        reference: reference_path.display().to_string(),
        atol,
        pass,
        outputs: ck.outputs,
        skipped,
    })
}

/// pi0: `out.velocity` (with `in.actions`: at t * noise + (1 - t) * actions, else at the noise),
/// `out.loss`, `out.sample_actions_{N}steps` (N Euler steps from `in.noise`) and the action
/// expert's blocks as `dit.layer.{l}.*`.
fn verify_pi0(
    m: &pi0::Model,
    reference: &TensorStore,
    ck: &mut Checker,
    ctx: &dyn Fn(&str) -> String,
) -> Result<()> {
    let f32_input = |name: &str| -> Result<Tensor> {
        input(reference, name)?
            .to_dtype(DType::F32)
            .map_err(|e| reference.tensor_error(name, e.to_string()))
    };
    let bools = |name: &str| -> Result<Option<Vec<Vec<bool>>>> {
        reference
            .opt(name)
            .map(|t| pi0::bool_rows(t).map_err(|e| reference.tensor_error(name, e.to_string())))
            .transpose()
    };
    let inputs = pi0::Inputs {
        input_ids: ids_tensor(reference, "in.input_ids")?,
        pixel_values: f32_input("in.pixel_values")?,
        pixel_attention_mask: bools("in.pixel_attention_mask")?,
        attention_mask: bools("in.attention_mask")?,
    };
    let state = f32_input("in.state")?;
    let noise = f32_input("in.noise")?;
    let timestep = f32_input("in.timestep")?;
    let layers = m.expert.layers.len();
    let mut hooks = Hooks::new();
    capture_all(&mut hooks, Tower::Expert, layers);
    let cache = m
        .prefix_cache(&inputs, None)
        .context(ctx("prefix (images + prompt)"))?;
    if reference.contains("in.actions") {
        let actions = f32_input("in.actions")?;
        let out = m
            .loss(
                &inputs,
                &state,
                &noise,
                &actions,
                &timestep,
                Some(&mut hooks),
            )
            .context(ctx("flow-matching forward on in.actions"))?;
        ck.check("out.velocity", &out.velocity)?;
        if let Some(loss) = &out.loss {
            let loss = loss.reshape(1).context(ctx("loss"))?;
            ck.check("out.loss", &loss)?;
        }
    } else {
        let v = m
            .velocity_cached(&cache, &state, &noise, &timestep, Some(&mut hooks))
            .context(ctx("velocity on in.noise"))?;
        ck.check("out.velocity", &v)?;
    }
    check_layers(ck, &hooks, Tower::Expert, "dit.", layers)?;
    let sample_names: Vec<(String, usize)> = reference
        .names()
        .filter_map(|n| {
            let steps = n
                .strip_prefix("out.sample_actions_")?
                .strip_suffix("steps")?
                .parse()
                .ok()?;
            Some((n.clone(), steps))
        })
        .collect();
    for (name, steps) in sample_names {
        let got = m
            .sample_actions_cached(&cache, &state, &noise, Some(steps))
            .context(ctx(&format!("sample_actions ({steps} steps)")))?;
        ck.check(&name, &got)?;
    }
    Ok(())
}

/// Sorts `layer.10` after `layer.9`.
fn natural_key(s: &str) -> Vec<(String, u64)> {
    s.split('.')
        .map(|p| match p.parse::<u64>() {
            Ok(n) => (String::new(), n),
            Err(_) => (p.to_string(), 0),
        })
        .collect()
}

pub fn verify(model_dir: &Path, reference: &Path, atol: f64) -> Result<VerifyReport> {
    verify_on(model_dir, reference, atol, &Device::Cpu)
}

/// As [`verify`], with the model and inputs on `device` (e.g. CUDA).
pub fn verify_on(
    model_dir: &Path,
    reference: &Path,
    atol: f64,
    device: &Device,
) -> Result<VerifyReport> {
    let loaded = load_model(model_dir, device)?;
    verify_loaded(&loaded, reference, atol)
}

/// Parses `cpu`, `cuda` or `cuda:N`.
pub fn parse_device(s: &str) -> Result<Device> {
    match s {
        "cpu" => Ok(Device::Cpu),
        _ => {
            let ord = match s.strip_prefix("cuda") {
                Some("") => 0,
                Some(rest) => rest
                    .strip_prefix(':')
                    .and_then(|n| n.parse::<usize>().ok())
                    .ok_or_else(|| {
                        TuneError::Invalid(format!("device `{s}`: expected cpu, cuda or cuda:N"))
                    })?,
                None => {
                    return Err(TuneError::Invalid(format!(
                        "device `{s}`: expected cpu, cuda or cuda:N"
                    )))
                }
            };
            Device::new_cuda(ord).map_err(|e| {
                TuneError::Invalid(format!(
                    "device `{s}`: {e} (build with `--features cuda` on a machine with CUDA)"
                ))
            })
        }
    }
}

pub fn default_reference(model_dir: &Path) -> PathBuf {
    model_dir.join("reference.safetensors")
}

/// Verifies a base model with a PEFT adapter: `out.base_logits` (adapter off),
/// `out.lora_logits` (adapter on), `out.merged_logits` and `merged.*` weights (merged).
pub fn verify_adapter(
    model_dir: &Path,
    adapter_dir: &Path,
    reference_path: &Path,
    atol: f64,
    device: &Device,
) -> Result<VerifyReport> {
    let mut loaded = load_model(model_dir, device)?;
    crate::peft::load_adapter(&mut loaded.model, adapter_dir, "default", device)?;
    let reference = TensorStore::load_file(reference_path, device)?;
    if !reference.names().any(|n| n.starts_with("in.")) {
        return Err(TuneError::Tensor {
            path: reference_path.to_path_buf(),
            tensor: "in.*".into(),
            problem: "the reference file holds no inputs (no tensor named in.*)".into(),
        });
    }
    let ids = ids_tensor(&reference, "in.input_ids")?;
    let mut ck = Checker {
        reference: &reference,
        atol,
        outputs: vec![],
        used: Default::default(),
    };
    let ctx = |what: &str| {
        format!(
            "{} + {}: {what}",
            model_dir.display(),
            adapter_dir.display()
        )
    };
    let run = |m: &AnyModel| -> Result<Tensor> {
        let d = m
            .decoder()
            .ok_or_else(|| TuneError::Invalid("adapters need a language model".into()))?;
        Ok(d.forward_ids(&ids, 0, None, None, false)
            .context(ctx("forward"))?
            .0)
    };
    crate::peft::activate(&mut loaded.model, None)?;
    ck.check("out.base_logits", &run(&loaded.model)?)?;
    crate::peft::activate(&mut loaded.model, Some("default"))?;
    ck.check("out.lora_logits", &run(&loaded.model)?)?;
    crate::peft::merge(&mut loaded.model)?;
    ck.check("out.merged_logits", &run(&loaded.model)?)?;
    let merged_names: Vec<String> = reference
        .names()
        .filter(|n| n.starts_with("merged."))
        .cloned()
        .collect();
    let mut weights: Vec<(String, Tensor)> = Vec::new();
    loaded.model.linears_mut(&mut |module, lin| {
        if merged_names.contains(&format!("merged.{module}.weight")) {
            weights.push((
                format!("merged.{module}.weight"),
                lin.weight().context(module.to_string())?,
            ));
        }
        Ok(())
    })?;
    for (n, w) in &weights {
        ck.check(n, w)?;
    }
    let mut skipped = Vec::new();
    for name in reference.names() {
        if name.starts_with("in.") || ck.used.contains(name) {
            continue;
        }
        skipped.push(Skipped {
            name: name.clone(),
            reason: "not an inference output (training tensors are checked by the test suite)"
                .into(),
        });
    }
    skipped.sort_by(|a, b| a.name.cmp(&b.name));
    let pass = !ck.outputs.is_empty() && ck.outputs.iter().all(|o| o.pass);
    Ok(VerifyReport {
        model: format!(
            "{} + adapter {}",
            model_dir.display(),
            adapter_dir.display()
        ),
        architecture: loaded.arch.name().into(),
        reference: reference_path.display().to_string(),
        atol,
        pass,
        outputs: ck.outputs,
        skipped,
    })
}
