//! Walking a model's parameters by their Hub names, for saving and for training.

use candle_core::{Result, Tensor};

use crate::blocks::{Attention, LayerNorm, Linear, Mlp, RmsNorm};
use crate::models::decoder::{Decoder, DecoderLayer};
use crate::models::{paligemma, pi0, siglip};

/// Parameters in Hub layout, each with its full name.
pub type NamedTensors = Vec<(String, Tensor)>;

fn p(prefix: &str, name: &str) -> String {
    if prefix.is_empty() {
        name.to_string()
    } else {
        format!("{prefix}.{name}")
    }
}

pub fn linear(out: &mut NamedTensors, prefix: &str, l: &Linear) -> Result<()> {
    out.push((p(prefix, "weight"), l.weight()?.contiguous()?));
    if let Some(b) = &l.bias {
        out.push((p(prefix, "bias"), b.clone()));
    }
    Ok(())
}

fn rms(out: &mut NamedTensors, prefix: &str, n: &RmsNorm) {
    out.push((p(prefix, "weight"), n.weight.clone()));
}

fn ln(out: &mut NamedTensors, prefix: &str, n: &LayerNorm) {
    out.push((p(prefix, "weight"), n.weight.clone()));
    out.push((p(prefix, "bias"), n.bias.clone()));
}

fn attention(out: &mut NamedTensors, prefix: &str, a: &Attention) -> Result<()> {
    linear(out, &p(prefix, "q_proj"), &a.q_proj)?;
    linear(out, &p(prefix, "k_proj"), &a.k_proj)?;
    linear(out, &p(prefix, "v_proj"), &a.v_proj)?;
    linear(out, &p(prefix, a.cfg.out_name), &a.o_proj)
}

fn mlp(out: &mut NamedTensors, prefix: &str, m: &Mlp) -> Result<()> {
    match &m.up {
        Some(up) => {
            linear(out, &p(prefix, "gate_proj"), &m.gate)?;
            linear(out, &p(prefix, "up_proj"), up)?;
            linear(out, &p(prefix, "down_proj"), &m.down)
        }
        None => {
            linear(out, &p(prefix, "fc1"), &m.gate)?;
            linear(out, &p(prefix, "fc2"), &m.down)
        }
    }
}

fn decoder_layer(out: &mut NamedTensors, lp: &str, l: &DecoderLayer) -> Result<()> {
    rms(out, &p(lp, "input_layernorm"), &l.input_layernorm);
    attention(out, &p(lp, "self_attn"), &l.self_attn)?;
    rms(
        out,
        &p(lp, "post_attention_layernorm"),
        &l.post_attention_layernorm,
    );
    mlp(out, &p(lp, "mlp"), &l.mlp)
}

/// `model_prefix` is where the decoder lives (`model`), `head_prefix` where `lm_head` lives
/// (None: tied, not saved).
pub fn decoder(
    out: &mut NamedTensors,
    model_prefix: &str,
    head_prefix: Option<&str>,
    d: &Decoder,
) -> Result<()> {
    out.push((
        p(model_prefix, "embed_tokens.weight"),
        d.embed_tokens.clone(),
    ));
    for (i, l) in d.layers.iter().enumerate() {
        decoder_layer(out, &p(model_prefix, &format!("layers.{i}")), l)?;
    }
    rms(out, &p(model_prefix, "norm"), &d.norm);
    if let Some(hp) = head_prefix {
        if !d.cfg.tie_word_embeddings {
            linear(out, &p(hp, "lm_head"), &d.lm_head)?;
        }
    }
    Ok(())
}

pub fn siglip(out: &mut NamedTensors, prefix: &str, m: &siglip::Model) -> Result<()> {
    let c = &m.cfg;
    let e = p(prefix, "embeddings");
    let w = m.patch_embedding.weight()?.reshape((
        c.hidden_size,
        c.num_channels,
        c.patch_size,
        c.patch_size,
    ))?;
    out.push((p(&e, "patch_embedding.weight"), w.contiguous()?));
    if let Some(b) = &m.patch_embedding.bias {
        out.push((p(&e, "patch_embedding.bias"), b.clone()));
    }
    out.push((
        p(&e, "position_embedding.weight"),
        m.position_embedding.clone(),
    ));
    for (i, l) in m.layers.iter().enumerate() {
        let lp = p(prefix, &format!("encoder.layers.{i}"));
        ln(out, &p(&lp, "layer_norm1"), &l.layer_norm1);
        attention(out, &p(&lp, "self_attn"), &l.self_attn)?;
        ln(out, &p(&lp, "layer_norm2"), &l.layer_norm2);
        mlp(out, &p(&lp, "mlp"), &l.mlp)?;
    }
    ln(out, &p(prefix, "post_layernorm"), &m.post_layernorm);
    if let Some(h) = &m.head {
        let hp = p(prefix, "head");
        out.push((p(&hp, "probe"), h.probe.clone()));
        let ws: Vec<Tensor> = h.qkv.iter().map(|l| l.weight()).collect::<Result<_>>()?;
        let bs: Vec<Tensor> = h.qkv.iter().filter_map(|l| l.bias.clone()).collect();
        out.push((
            p(&hp, "attention.in_proj_weight"),
            Tensor::cat(&ws, 0)?.contiguous()?,
        ));
        out.push((p(&hp, "attention.in_proj_bias"), Tensor::cat(&bs, 0)?));
        linear(out, &p(&hp, "attention.out_proj"), &h.out_proj)?;
        ln(out, &p(&hp, "layernorm"), &h.layernorm);
        mlp(out, &p(&hp, "mlp"), &h.mlp)?;
    }
    Ok(())
}

/// PaliGemma in the Hub layout.
pub fn paligemma(out: &mut NamedTensors, m: &paligemma::Model) -> Result<()> {
    siglip(out, "vision_tower.vision_model", &m.vision_tower)?;
    linear(out, "multi_modal_projector.linear", &m.projector)?;
    decoder(
        out,
        "language_model.model",
        Some("language_model"),
        &m.language_model,
    )
}

/// pi0 in the Hub layout (`paligemma_with_expert.*` and the action projections).
pub fn pi0(out: &mut NamedTensors, m: &pi0::Model) -> Result<()> {
    let vlm = "paligemma_with_expert.paligemma.model";
    siglip(
        out,
        &p(vlm, "vision_tower.vision_model"),
        &m.vlm.vision_tower,
    )?;
    linear(
        out,
        &p(vlm, "multi_modal_projector.linear"),
        &m.vlm.projector,
    )?;
    decoder(out, &p(vlm, "language_model"), None, &m.vlm.language_model)?;
    let expert = "paligemma_with_expert.gemma_expert";
    for (i, l) in m.expert.layers.iter().enumerate() {
        decoder_layer(out, &format!("{expert}.model.layers.{i}"), l)?;
    }
    rms(out, &format!("{expert}.model.norm"), &m.expert.norm);
    if let Some(h) = &m.expert.lm_head {
        out.push((format!("{expert}.lm_head.weight"), h.clone()));
    }
    linear(out, "state_proj", &m.state_proj)?;
    linear(out, "action_in_proj", &m.action_in_proj)?;
    linear(out, "action_time_mlp_in", &m.action_time_mlp_in)?;
    linear(out, "action_time_mlp_out", &m.action_time_mlp_out)?;
    linear(out, "action_out_proj", &m.action_out_proj)
}

/// Calls `f` with every linear layer of `layers` and its module name
/// (`{model_prefix}.layers.{i}.self_attn.q_proj`, ...).
pub fn layers_linears_mut(
    layers: &mut [DecoderLayer],
    model_prefix: &str,
    f: &mut dyn FnMut(&str, &mut Linear) -> crate::Result<()>,
) -> crate::Result<()> {
    for (i, l) in layers.iter_mut().enumerate() {
        let lp = p(model_prefix, &format!("layers.{i}"));
        let a = &mut l.self_attn;
        let out_name = a.cfg.out_name;
        f(&p(&lp, "self_attn.q_proj"), &mut a.q_proj)?;
        f(&p(&lp, "self_attn.k_proj"), &mut a.k_proj)?;
        f(&p(&lp, "self_attn.v_proj"), &mut a.v_proj)?;
        f(&p(&lp, &format!("self_attn.{out_name}")), &mut a.o_proj)?;
        let m = &mut l.mlp;
        match &mut m.up {
            Some(up) => {
                f(&p(&lp, "mlp.gate_proj"), &mut m.gate)?;
                f(&p(&lp, "mlp.up_proj"), up)?;
                f(&p(&lp, "mlp.down_proj"), &mut m.down)?;
            }
            None => {
                f(&p(&lp, "mlp.fc1"), &mut m.gate)?;
                f(&p(&lp, "mlp.fc2"), &mut m.down)?;
            }
        }
    }
    Ok(())
}

/// Calls `f` with every linear layer of a decoder and its module name (PEFT's naming:
/// `model.layers.0.self_attn.q_proj`).
pub fn decoder_linears_mut(
    d: &mut Decoder,
    model_prefix: &str,
    head_prefix: Option<&str>,
    f: &mut dyn FnMut(&str, &mut Linear) -> crate::Result<()>,
) -> crate::Result<()> {
    layers_linears_mut(&mut d.layers, model_prefix, f)?;
    if let Some(hp) = head_prefix {
        if !d.cfg.tie_word_embeddings {
            f(&p(hp, "lm_head"), &mut d.lm_head)?;
        }
    }
    Ok(())
}

/// Makes every parameter of a decoder a trainable variable (full fine-tuning), except those
/// whose Hub name `frozen` returns true for. Linear weights are trained in their stored
/// `[in, out]` layout and named `{module}.weight_t`. Tied embeddings stay tied: the LM head
/// reads the embedding variable.
pub fn decoder_full_trainable(
    d: &mut Decoder,
    model_prefix: &str,
    frozen: &dyn Fn(&str) -> bool,
) -> crate::Result<Vec<(String, candle_core::Var)>> {
    use crate::error::Context;
    use candle_core::Var;
    let mut vars: Vec<(String, Var)> = Vec::new();
    let embed_name = p(model_prefix, "embed_tokens.weight");
    if !frozen(&embed_name) {
        let v = Var::from_tensor(&d.embed_tokens.detach()).context(embed_name.clone())?;
        d.embed_tokens = v.as_tensor().clone();
        if d.cfg.tie_word_embeddings {
            d.lm_head = Linear::from_transposed(v.as_tensor().t().context("tied head")?, None);
        }
        vars.push((embed_name, v));
    }
    let norm =
        |name: String, n: &mut RmsNorm, vars: &mut Vec<(String, Var)>| -> crate::Result<()> {
            if frozen(&name) {
                return Ok(());
            }
            let v = Var::from_tensor(&n.weight.detach()).context(name.clone())?;
            *n = RmsNorm::from_weight(v.as_tensor().clone(), n.eps, n.offset)
                .context(name.clone())?;
            vars.push((name, v));
            Ok(())
        };
    for (i, l) in d.layers.iter_mut().enumerate() {
        let lp = p(model_prefix, &format!("layers.{i}"));
        norm(
            p(&lp, "input_layernorm.weight"),
            &mut l.input_layernorm,
            &mut vars,
        )?;
        norm(
            p(&lp, "post_attention_layernorm.weight"),
            &mut l.post_attention_layernorm,
            &mut vars,
        )?;
    }
    norm(p(model_prefix, "norm.weight"), &mut d.norm, &mut vars)?;
    decoder_linears_mut(d, model_prefix, Some(""), &mut |module, lin| {
        let name = format!("{module}.weight");
        if frozen(&name) {
            return Ok(());
        }
        let v = Var::from_tensor(&lin.weight_t().detach()).context(name.clone())?;
        lin.set_weight_t(v.as_tensor().clone());
        vars.push((format!("{module}.weight_t"), v));
        if let Some(b) = lin.bias.as_mut() {
            let bn = format!("{module}.bias");
            if !frozen(&bn) {
                let vb = Var::from_tensor(&b.detach()).context(bn.clone())?;
                *b = vb.as_tensor().clone();
                vars.push((bn, vb));
            }
        }
        Ok(())
    })?;
    Ok(vars)
}
