//! rudder-steering: activation steering of decoder models (and the language model of VLAs)
//! through FFN neurons found by projecting their value vectors onto the vocabulary, as in Häon
//! et al., CoRL 2025 (REFERENCE §1).
//!
//! - [`projection`]: value vectors `W_down[:, i]` times the unembedding, top-k tokens per
//!   neuron, one matmul per layer;
//! - [`concepts`]: concept word lists, the concept score, clusters and random controls;
//! - [`dict`]: steering dictionaries (cluster name -> flat neuron ids) as TOML;
//! - [`intervene`]: the intervention of Eq. 2 on `blocks.{l}.mlp.act`, with alphas changeable
//!   live from another thread;
//! - [`sweep`]: a steering sweep's statistics (speed change, direction bias, intervals);
//! - [`vocab`]: token strings from `tokenizer.json`.
//!
//! Everything works on any model [`rudder_tune::load::load_model`] reads that has a language
//! model (Llama, Gemma, PaliGemma, pi0).

pub mod concepts;
pub mod dict;
pub mod error;
pub mod intervene;
pub mod projection;
pub mod sweep;
pub mod vocab;

use std::ops::Range;
use std::path::Path;

use rudder_tune::candle_core::Device;
use rudder_tune::load::{load_model, LoadedModel};
use rudder_tune::models::decoder::Decoder;

pub use concepts::{build_dictionary, default_concepts, Concept};
pub use dict::Dictionary;
pub use error::{Result, SteerError};
pub use intervene::{Geometry, Steerer, SteeringHandle};
pub use projection::{project_model, Projection};
pub use vocab::Vocab;

/// A loaded model with a language model, and its vocabulary strings.
#[derive(Debug, Clone)]
pub struct SteerModel {
    pub loaded: LoadedModel,
    pub vocab: Vocab,
}

impl SteerModel {
    /// Loads `dir` (config.json + safetensors [+ tokenizer.json]).
    pub fn open(dir: &Path, device: &Device) -> Result<Self> {
        let loaded = load_model(dir, device)?;
        let Some(dec) = loaded.model.decoder() else {
            return Err(SteerError::Invalid(format!(
                "{}: {} has no language model to steer (need Llama, Gemma, PaliGemma or pi0)",
                dir.join("config.json").display(),
                loaded.arch.name()
            )));
        };
        let vocab = Vocab::for_model_dir(dir, dec.cfg.vocab_size)?;
        Ok(Self { loaded, vocab })
    }

    pub fn decoder(&self) -> &Decoder {
        // `open` checked that there is one.
        self.loaded
            .model
            .decoder()
            .expect("SteerModel always has a decoder")
    }

    pub fn geometry(&self) -> Geometry {
        Geometry::of(self.decoder())
    }

    /// Parses a layer range against this model (see [`parse_layers`]).
    pub fn layers(&self, spec: Option<&str>) -> Result<Range<usize>> {
        let n = self.decoder().layers.len();
        let cfg = self.loaded.dir.join("config.json");
        parse_layers(spec, n).map_err(|e| {
            SteerError::Invalid(format!("{e} ({} has {n} decoder layers)", cfg.display()))
        })
    }
}

/// `a..b` (end exclusive), `a..=b`, `a..`, `..b`, or one layer `a`; None: every layer.
pub fn parse_layers(spec: Option<&str>, num_layers: usize) -> Result<Range<usize>> {
    let Some(s) = spec.map(str::trim) else {
        return Ok(0..num_layers);
    };
    let bad = |why: &str| SteerError::Invalid(format!("--layers `{s}`: {why}"));
    let num = |x: &str| -> Result<usize> {
        x.trim()
            .parse::<usize>()
            .map_err(|_| bad("expected a..b, a..=b, a.., ..b or a single layer"))
    };
    let r = if let Some((a, b)) = s.split_once("..") {
        let start = if a.trim().is_empty() { 0 } else { num(a)? };
        let end = if let Some(b) = b.strip_prefix('=') {
            num(b)? + 1
        } else if b.trim().is_empty() {
            num_layers
        } else {
            num(b)?
        };
        start..end
    } else {
        let a = num(s)?;
        a..a + 1
    };
    if r.start >= r.end {
        return Err(bad("empty range"));
    }
    if r.end > num_layers {
        return Err(bad(&format!(
            "reaches layer {}, but layers are 0..{num_layers}",
            r.end - 1
        )));
    }
    Ok(r)
}
