//! Vocabulary projection of FFN value vectors (REFERENCE §1, Häon et al. 2025, after Geva et al.).
//!
//! For layer `l` and FFN neuron `i` the value vector is `v = W_down[:, i]` (`d_model`), and its
//! projection is `scores = W_U v` over the vocabulary, where `W_U` is `lm_head.weight` or, for
//! tied models (Gemma, PaliGemma, pi0), the input embedding. The projection is raw: no final
//! norm, no embedding scale, no bias — exactly what the paper's code does
//! (`value_vectors @ lm_head.weight.T`).
//!
//! Per layer this is one matmul `(d_ff x d) @ (d x V)`: [`Linear`](rudder_tune::blocks::Linear)
//! stores `W^T`, so `down_proj`'s stored `[d_ff, d]` tensor has the value vectors as rows and
//! `lm_head`'s stored `[d, V]` tensor is `W_U^T`. Rows are processed in chunks of at most
//! 2^26 scores so that a 16384 x 257152 layer (pi0) does not need 16 GB at once.

use std::ops::Range;

use rudder_tune::candle_core::{DType, Tensor};
use rudder_tune::load::LoadedModel;
use rudder_tune::models::decoder::Decoder;
use serde::{Deserialize, Serialize};

use crate::error::{CandleContext, Result, SteerError};
use crate::vocab::Vocab;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TokenScore {
    pub id: u32,
    pub token: String,
    pub score: f32,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NeuronTop {
    /// Index within the layer.
    pub neuron: usize,
    /// `layer * d_ff + neuron`, the paper's id.
    pub flat: usize,
    /// Highest-scoring tokens, best first (ties: lower id first).
    pub top: Vec<TokenScore>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LayerProjection {
    pub layer: usize,
    pub neurons: Vec<NeuronTop>,
}

/// What `rudder steer inspect` writes to `projection.json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Projection {
    pub model: String,
    pub architecture: String,
    /// Which matrix was the unembedding (`lm_head.weight` or the tied `embed_tokens.weight`).
    pub unembedding: String,
    pub num_layers: usize,
    pub d_ff: usize,
    pub vocab_size: usize,
    pub top_k: usize,
    pub layers: Vec<LayerProjection>,
}

impl Projection {
    pub fn layer(&self, l: usize) -> Option<&LayerProjection> {
        self.layers.iter().find(|x| x.layer == l)
    }

    pub fn neurons(&self) -> impl Iterator<Item = (usize, &NeuronTop)> {
        self.layers
            .iter()
            .flat_map(|l| l.neurons.iter().map(move |n| (l.layer, n)))
    }

    /// Neurons whose top-k contains a token standing for `word` (see [`Vocab::matches`]):
    /// `(layer, neuron, rank in its top-k)`, best rank first, then layer and neuron.
    pub fn find(&self, vocab: &Vocab, word: &str) -> Vec<(usize, &NeuronTop, usize)> {
        let mut out: Vec<(usize, &NeuronTop, usize)> = self
            .neurons()
            .filter_map(|(l, n)| {
                n.top
                    .iter()
                    .position(|t| vocab.matches(t.id, word))
                    .map(|r| (l, n, r))
            })
            .collect();
        out.sort_by_key(|(l, n, r)| (*r, *l, n.neuron));
        out
    }
}

/// The full `(d_ff, V)` score matrix of one layer: row `i` is `W_U W_down[:, i]`.
pub fn layer_scores(dec: &Decoder, layer: usize) -> Result<Tensor> {
    let (wd, u) = layer_factors(dec, layer)?;
    wd.matmul(&u)
        .ctx(|| format!("projecting layer {layer}'s value vectors"))
}

/// `(W_down^T [d_ff, d], W_U^T [d, V])` as f32.
fn layer_factors(dec: &Decoder, layer: usize) -> Result<(Tensor, Tensor)> {
    let n = dec.layers.len();
    let l = dec.layers.get(layer).ok_or_else(|| {
        SteerError::Invalid(format!(
            "layer {layer} does not exist: the model has {n} decoder layers (0..{n})"
        ))
    })?;
    let wd = l
        .mlp
        .down
        .weight_t()
        .to_dtype(DType::F32)
        .ctx(|| format!("layer {layer} down_proj"))?;
    let u = dec
        .lm_head
        .weight_t()
        .to_dtype(DType::F32)
        .ctx(|| "lm_head".to_string())?;
    Ok((wd, u))
}

/// Indices of the `k` largest values of `row`, best first; ties (and NaN, ranked last) by id.
pub fn top_k_row(row: &[f32], k: usize, buf: &mut Vec<u32>) -> Vec<(u32, f32)> {
    let key = |i: u32| {
        let v = row[i as usize];
        if v.is_nan() {
            f32::NEG_INFINITY
        } else {
            v
        }
    };
    let cmp = |a: &u32, b: &u32| key(*b).total_cmp(&key(*a)).then(a.cmp(b));
    buf.clear();
    buf.extend(0..row.len() as u32);
    let k = k.min(row.len());
    if k == 0 {
        return vec![];
    }
    if k < buf.len() {
        buf.select_nth_unstable_by(k - 1, cmp);
    }
    let mut top: Vec<u32> = buf[..k].to_vec();
    top.sort_by(cmp);
    top.into_iter().map(|i| (i, row[i as usize])).collect()
}

/// Projects the value vectors of `layers` and keeps `top_k` tokens per neuron.
pub fn project(
    dec: &Decoder,
    vocab: &Vocab,
    layers: Range<usize>,
    top_k: usize,
) -> Result<Vec<LayerProjection>> {
    let n = dec.layers.len();
    if layers.start >= layers.end || layers.end > n {
        return Err(SteerError::Invalid(format!(
            "layer range {}..{} is empty or outside the model's {n} decoder layers (0..{n})",
            layers.start, layers.end
        )));
    }
    if top_k == 0 {
        return Err(SteerError::Invalid("--top-k must be at least 1".into()));
    }
    let d_ff = dec.d_ff();
    let mut out = Vec::with_capacity(layers.len());
    let mut buf = Vec::new();
    for layer in layers {
        let (wd, u) = layer_factors(dec, layer)?;
        let v = u.dim(1).ctx(|| "lm_head".into())?;
        let rows = wd.dim(0).ctx(|| "down_proj".into())?;
        let chunk = ((1usize << 26) / v.max(1)).clamp(1, rows.max(1));
        let mut neurons = Vec::with_capacity(rows);
        let mut start = 0;
        while start < rows {
            let len = chunk.min(rows - start);
            let s = wd
                .narrow(0, start, len)
                .and_then(|w| w.matmul(&u))
                .and_then(|s| s.to_device(&rudder_tune::candle_core::Device::Cpu))
                .and_then(|s| s.flatten_all())
                .and_then(|s| s.to_vec1::<f32>())
                .ctx(|| format!("projecting layer {layer}'s value vectors"))?;
            for (r, row) in s.chunks(v).enumerate() {
                let i = start + r;
                let top = top_k_row(row, top_k, &mut buf)
                    .into_iter()
                    .map(|(id, score)| TokenScore {
                        id,
                        token: vocab.token(id),
                        score,
                    })
                    .collect();
                neurons.push(NeuronTop {
                    neuron: i,
                    flat: layer * d_ff + i,
                    top,
                });
            }
            start += len;
        }
        out.push(LayerProjection { layer, neurons });
    }
    Ok(out)
}

/// The name of the unembedding matrix a loaded model uses.
pub fn unembedding_name(m: &LoadedModel) -> String {
    let head = m.weights.names().find(|n| n.ends_with("lm_head.weight"));
    match head {
        Some(h) => h.clone(),
        None => m
            .weights
            .names()
            .find(|n| n.ends_with("embed_tokens.weight") && !n.contains("expert"))
            .map(|n| format!("{n} (tied)"))
            .unwrap_or_else(|| "embed_tokens.weight (tied)".into()),
    }
}

/// [`project`] with the model's description filled in.
pub fn project_model(
    m: &crate::SteerModel,
    layers: Range<usize>,
    top_k: usize,
) -> Result<Projection> {
    let dec = m.decoder();
    let layers_out = project(dec, &m.vocab, layers, top_k)?;
    Ok(Projection {
        model: m.loaded.dir.display().to_string(),
        architecture: m.loaded.arch.name().to_string(),
        unembedding: unembedding_name(&m.loaded),
        num_layers: dec.layers.len(),
        d_ff: dec.d_ff(),
        vocab_size: dec.cfg.vocab_size,
        top_k,
        layers: layers_out,
    })
}

/// One Markdown table for a layer: neuron, flat id, top tokens with scores.
pub fn layer_markdown(p: &Projection, layer: &LayerProjection) -> String {
    let mut s = format!(
        "# Layer {} value vectors projected on the vocabulary\n\nModel `{}` ({}), unembedding \
`{}`, top {} tokens per neuron, flat id = layer * {} + neuron.\n\n| neuron | flat id | top tokens (score) |\n|---:|---:|---|\n",
        layer.layer, p.model, p.architecture, p.unembedding, p.top_k, p.d_ff
    );
    for n in &layer.neurons {
        let toks: Vec<String> = n
            .top
            .iter()
            .map(|t| format!("`{}` {:.3}", md_escape(&t.token), t.score))
            .collect();
        s.push_str(&format!(
            "| {} | {} | {} |\n",
            n.neuron,
            n.flat,
            toks.join(", ")
        ));
    }
    s
}

fn md_escape(t: &str) -> String {
    t.replace('\\', "\\\\")
        .replace('|', "\\|")
        .replace('`', "'")
        .replace('\n', "\\n")
        .replace('\r', "\\r")
        .replace('\t', "\\t")
}
