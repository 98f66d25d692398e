//! PaliGemmaForConditionalGeneration: SigLIP tower -> linear projector -> Gemma, with image
//! tokens replaced by projected patch features and a prefix-LM mask from `token_type_ids`.
//!
//! transformers v5 semantics: image features are not divided by sqrt(d) (the Gemma scale is
//! applied to text embeddings only) and positions start at 1.

use candle_core::{DType, Result, Tensor};
use candle_nn::VarBuilder;

use super::decoder::{Decoder, DecoderOutput};
use super::{gemma, siglip};
use crate::blocks::{attention::mask, KvCache, Linear};
use crate::config::JsonConfig;
use crate::hooks::{Hooks, Tower};

#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    pub text: gemma::Config,
    pub vision: siglip::Config,
    pub projection_dim: usize,
    pub image_token_id: u32,
}

impl Config {
    pub fn from_json(cfg: &JsonConfig) -> crate::Result<Self> {
        let text = gemma::Config::from_json(&cfg.sub("text_config")?)?;
        let vision = siglip::Config::from_json(&cfg.sub("vision_config")?)?;
        let image_token_id = match cfg.opt_usize("image_token_index")? {
            Some(i) => i,
            None => cfg.usize("image_token_id")?,
        } as u32;
        let projection_dim = match cfg.opt_usize("projection_dim")? {
            Some(p) => p,
            None => text.0.hidden_size,
        };
        if projection_dim != text.0.hidden_size {
            return Err(cfg.field_error(
                "projection_dim",
                format!(
                    "{projection_dim} differs from text_config.hidden_size {}",
                    text.0.hidden_size
                ),
            ));
        }
        Ok(Self {
            text,
            vision,
            projection_dim,
            image_token_id,
        })
    }
}

/// Inputs of one forward pass.
#[derive(Debug, Clone)]
pub struct Inputs {
    /// `[batch, seq]`, with `image_token_id` where image features go.
    pub input_ids: Tensor,
    /// `[batch, channels, size, size]`, one image per sequence.
    pub pixel_values: Tensor,
    /// `[batch, seq]`, 1 = real token; None = all real.
    pub attention_mask: Option<Vec<Vec<bool>>>,
    /// `[batch, seq]`, 0 = prefix (bidirectional), 1 = suffix (causal); None = fully causal.
    pub token_type_ids: Option<Vec<Vec<i64>>>,
}

#[derive(Debug, Clone)]
pub struct Output {
    pub logits: Tensor,
    pub image_features: Tensor,
    pub text: DecoderOutput,
    pub vision: siglip::VisionOutput,
}

#[derive(Debug, Clone)]
pub struct Model {
    pub cfg: Config,
    pub vision_tower: siglip::Model,
    pub projector: Linear,
    pub language_model: Decoder,
}

impl Model {
    /// Reads either the Hub layout (`vision_tower.vision_model.*`, `multi_modal_projector.*`,
    /// `language_model.model.*`) or transformers v5's own (`model.vision_tower.*`,
    /// `model.language_model.*`, `lm_head.*`).
    pub fn new(cfg: &Config, vb: VarBuilder) -> Result<Self> {
        let v5 = vb.contains_tensor("model.language_model.embed_tokens.weight");
        let (vision_vb, proj_vb, lm_vb, head_vb) = if v5 {
            let m = vb.pp("model");
            let vt = if m
                .contains_tensor("vision_tower.vision_model.embeddings.patch_embedding.weight")
            {
                m.pp("vision_tower").pp("vision_model")
            } else {
                m.pp("vision_tower")
            };
            (
                vt,
                m.pp("multi_modal_projector"),
                m.pp("language_model"),
                vb.clone(),
            )
        } else {
            (
                vb.pp("vision_tower").pp("vision_model"),
                vb.pp("multi_modal_projector"),
                vb.pp("language_model").pp("model"),
                vb.pp("language_model"),
            )
        };
        let mut vision_tower = siglip::Model::new(&cfg.vision, vision_vb)?;
        vision_tower.tower = Tower::Vision;
        let projector = Linear::new(
            cfg.vision.hidden_size,
            cfg.projection_dim,
            true,
            proj_vb.pp("linear"),
        )?;
        let language_model = Decoder::new(&cfg.text.0, lm_vb, Some(head_vb))?;
        Ok(Self {
            cfg: cfg.clone(),
            vision_tower,
            projector,
            language_model,
        })
    }

    pub fn image_features(
        &self,
        pixels: &Tensor,
        hooks: Option<&mut Hooks>,
        want_hidden: bool,
    ) -> Result<(Tensor, siglip::VisionOutput)> {
        let vis = self.vision_tower.forward(pixels, hooks, want_hidden)?;
        let feats = self.projector.forward(&vis.last_hidden_state)?;
        Ok((feats, vis))
    }

    /// Patch features of every camera, `[batch, cams * patches, hidden]`, from pixels
    /// `[batch, cams, 3, size, size]`: each camera through the vision tower and projector in
    /// turn, concatenated in camera order.
    pub fn camera_features(
        &self,
        pixels: &Tensor,
        mut hooks: Option<&mut Hooks>,
    ) -> Result<Tensor> {
        let (_, cams, _, _, _) = pixels.dims5()?;
        let mut per = Vec::with_capacity(cams);
        for c in 0..cams {
            let px = pixels.narrow(1, c, 1)?.squeeze(1)?;
            per.push(self.image_features(&px, hooks.as_deref_mut(), false)?.0);
        }
        Tensor::cat(&per, 1)
    }

    /// Logits `[batch, seq, vocab]` of `ids` with the image positions filled by `feats` (from
    /// [`Model::camera_features`]), under a prefix-LM mask: `valid[b][k]`: key k is real;
    /// `prefix[b][k]`: key k is visible from every query (the others are causal). Positions
    /// start at 1 (transformers v5); no KV cache.
    pub fn prefix_lm_logits(
        &self,
        ids: &Tensor,
        feats: &Tensor,
        valid: &[Vec<bool>],
        prefix: &[Vec<bool>],
        hooks: Option<&mut Hooks>,
    ) -> Result<Tensor> {
        let (b, t) = ids.dims2()?;
        let embeds = self.merge(ids, feats)?;
        let positions: Vec<Vec<i64>> = vec![(1..=t as i64).collect(); b];
        let m = mask::causal(
            b,
            t,
            0,
            self.language_model.device(),
            Some(valid),
            Some(prefix),
        )?;
        let (h, _) = self.language_model.forward_embeds(
            &embeds,
            &positions,
            Some(&m),
            None::<&mut Vec<KvCache>>,
            hooks,
            false,
        )?;
        self.language_model.logits(&h)
    }

    /// Text embeddings with image positions filled by image features, in order.
    pub fn merge(&self, ids: &Tensor, feats: &Tensor) -> Result<Tensor> {
        let (b, t) = ids.dims2()?;
        let text = self.language_model.embed(ids)?;
        let ids_v: Vec<Vec<u32>> = ids.to_dtype(DType::U32)?.to_vec2()?;
        let (fb, n, d) = feats.dims3()?;
        if fb != b {
            candle_core::bail!("pixel_values: batch {fb} differs from input_ids batch {b}");
        }
        // The usual layout (images first, then text) is one concatenation; per-token pieces
        // cost thousands of small ops, and as many again in a training step's backward pass.
        let img = self.cfg.image_token_id;
        if n <= t
            && ids_v
                .iter()
                .all(|r| r[..n].iter().all(|&x| x == img) && r[n..].iter().all(|&x| x != img))
        {
            return Tensor::cat(&[feats.clone(), text.narrow(1, n, t - n)?], 1);
        }
        let mut rows = Vec::with_capacity(b);
        for (bi, row) in ids_v.iter().enumerate() {
            let n_img = row
                .iter()
                .filter(|&&x| x == self.cfg.image_token_id)
                .count();
            if n_img != n {
                candle_core::bail!(
                    "input_ids row {bi}: {n_img} image tokens (id {}), but the image gives {n} features",
                    self.cfg.image_token_id
                );
            }
            let mut pieces = Vec::with_capacity(t);
            let mut k = 0;
            for (ti, &tok) in row.iter().enumerate() {
                if tok == self.cfg.image_token_id {
                    pieces.push(feats.get(bi)?.narrow(0, k, 1)?);
                    k += 1;
                } else {
                    pieces.push(text.get(bi)?.narrow(0, ti, 1)?);
                }
            }
            rows.push(Tensor::cat(&pieces, 0)?);
        }
        Tensor::stack(&rows, 0)?.reshape((b, t, d))
    }

    pub fn forward(
        &self,
        inp: &Inputs,
        mut hooks: Option<&mut Hooks>,
        want_hidden: bool,
    ) -> Result<Output> {
        let (b, t) = inp.input_ids.dims2()?;
        let (feats, vision) =
            self.image_features(&inp.pixel_values, hooks.as_deref_mut(), want_hidden)?;
        let embeds = self.merge(&inp.input_ids, &feats)?;
        let positions: Vec<Vec<i64>> = vec![(1..=t as i64).collect(); b];
        let bidi: Option<Vec<Vec<bool>>> = inp.token_type_ids.as_ref().map(|tt| {
            tt.iter()
                .map(|r| r.iter().map(|&x| x == 0).collect())
                .collect()
        });
        let m = mask::causal(
            b,
            t,
            0,
            self.language_model.device(),
            inp.attention_mask.as_deref(),
            bidi.as_deref(),
        )?;
        let (h, text) = self.language_model.forward_embeds(
            &embeds,
            &positions,
            Some(&m),
            None::<&mut Vec<KvCache>>,
            hooks,
            want_hidden,
        )?;
        let logits = self.language_model.logits(&h)?;
        Ok(Output {
            logits,
            image_features: feats,
            text,
            vision,
        })
    }
}
