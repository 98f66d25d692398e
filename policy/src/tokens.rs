//! VLA-tokens (OpenVLA-style, REFERENCE §6): a PaliGemma-style VLM (SigLIP tower on both
//! cameras -> projector -> Gemma) that writes each action dimension as one of 256 bins, the
//! bins being the last 256 ids of its vocabulary.
//!
//! - Binning: `a = clip(2 (x - q01) / (q99 - q01) - 1, -1, 1)` per dimension where the mask
//!   says so (not the gripper); edges `linspace(-1, 1, 256)`, `bin = digitize(a)` in `1..=256`,
//!   `token = vocab_size - bin`. Decoding: `idx = clip(vocab_size - token - 1, 0, 254)`, the
//!   value is bin centre `idx` un-normalised. q01 / q99 come from the demos' `meta.json`.
//! - Sequence: `[agentview patches][wrist patches][BOS prompt][action tokens]`. Images and
//!   prompt form the bidirectional prefix (PaliGemma's prefix-LM mask); as OpenVLA, no robot
//!   state goes in.
//! - Autoregressive decoding (OpenVLA): `7 x chunk` greedy tokens, argmax over the 256 action
//!   ids, teacher forcing in training (cross-entropy of each token given those before).
//! - Parallel decoding (OpenVLA-OFT style, with OpenVLA's bins instead of OFT's L1 regression):
//!   the suffix is `7 x chunk` query slots ([`ACTION_QUERY`]) that see everything,
//!   and every action token is read from its own position in one pass.
//!
//! `action_tokens.json` beside the checkpoint holds the bins, decoding and chunk.

use std::path::Path;

use candle_core::{DType, Tensor, D};
use rudder_tune::hooks::Hooks;
use rudder_tune::models::paligemma;
use serde::{Deserialize, Serialize};

use crate::FlowError;

/// Bins per action dimension.
pub const N_BINS: usize = 256;
/// The input id of every action query slot in parallel decoding: the pad id, which never appears
/// inside a real sequence.
pub const ACTION_QUERY: u32 = crate::prompt::PAD;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum Decoding {
    /// One token at a time, each seeing the ones before (OpenVLA).
    #[default]
    Autoregressive,
    /// All tokens of the chunk in one pass (OpenVLA-OFT style).
    Parallel,
}

/// `action_tokens.json`: how actions become tokens and back.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ActionTokens {
    pub n_bins: usize,
    pub q01: Vec<f64>,
    pub q99: Vec<f64>,
    /// Dimensions normalised with q01 / q99 (OpenVLA leaves the gripper out).
    pub mask: Vec<bool>,
    /// Actions per chunk.
    pub chunk: usize,
    pub decoding: Decoding,
}

impl ActionTokens {
    pub fn action_dim(&self) -> usize {
        self.q01.len()
    }

    /// Tokens per chunk.
    pub fn len(&self) -> usize {
        self.chunk * self.action_dim()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Checks the file's numbers against a model of `vocab_size` ids.
    pub fn check(&self, path: &Path, vocab_size: usize) -> Result<(), FlowError> {
        let err = |field: &str, problem: String| FlowError::Field {
            path: path.to_path_buf(),
            field: field.into(),
            problem,
        };
        if self.n_bins != N_BINS {
            return Err(err(
                "n_bins",
                format!("{} (only {N_BINS} is built)", self.n_bins),
            ));
        }
        let d = self.q01.len();
        if d == 0 || self.q99.len() != d || self.mask.len() != d {
            return Err(err(
                "q01",
                format!(
                    "q01 / q99 / mask must have one entry per action dimension, got {} / {} / {}",
                    d,
                    self.q99.len(),
                    self.mask.len()
                ),
            ));
        }
        if let Some(i) = (0..d).find(|&i| {
            !(self.q01[i].is_finite() && self.q99[i].is_finite() && self.q99[i] >= self.q01[i])
        }) {
            return Err(err(
                "q99",
                format!(
                    "dimension {i}: q01 {} / q99 {} must be finite with q99 >= q01",
                    self.q01[i], self.q99[i]
                ),
            ));
        }
        if self.chunk == 0 {
            return Err(err("chunk", "must be > 0".into()));
        }
        if vocab_size < N_BINS + 4 {
            return Err(err(
                "n_bins",
                format!("the model's vocabulary ({vocab_size}) cannot hold {N_BINS} action ids"),
            ));
        }
        Ok(())
    }

    pub fn load(path: &Path, vocab_size: usize) -> Result<Self, FlowError> {
        let text = std::fs::read_to_string(path).map_err(|e| FlowError::File {
            path: path.to_path_buf(),
            problem: e.to_string(),
        })?;
        let t: Self = serde_json::from_str(&text).map_err(|e| FlowError::File {
            path: path.to_path_buf(),
            problem: format!("not an action-token spec: {e}"),
        })?;
        t.check(path, vocab_size)?;
        Ok(t)
    }

    fn step() -> f64 {
        2.0 / (N_BINS - 1) as f64
    }

    /// The token of value `x` in dimension `d`.
    pub fn token(&self, vocab_size: usize, d: usize, x: f64) -> u32 {
        let a = if self.mask[d] {
            let span = (self.q99[d] - self.q01[d]).max(1e-8);
            2.0 * (x - self.q01[d]) / span - 1.0
        } else {
            x
        };
        let a = if a.is_finite() {
            a.clamp(-1.0, 1.0)
        } else {
            0.0
        };
        // np.digitize over the edges: bins[i-1] <= a < bins[i] gives i; a = 1 gives N_BINS.
        let bin = (((a + 1.0) / Self::step()).floor() as usize + 1).clamp(1, N_BINS);
        (vocab_size - bin) as u32
    }

    /// The value of `token` in dimension `d` (bin centre, un-normalised).
    pub fn value(&self, vocab_size: usize, d: usize, token: u32) -> f64 {
        let dist = vocab_size as i64 - token as i64;
        let idx = (dist - 1).clamp(0, N_BINS as i64 - 2) as f64;
        let a = -1.0 + Self::step() * (idx + 0.5);
        if self.mask[d] {
            0.5 * (a + 1.0) * (self.q99[d] - self.q01[d]) + self.q01[d]
        } else {
            a
        }
    }

    /// First action id (the bins are `first..vocab_size`).
    pub fn first_id(vocab_size: usize) -> u32 {
        (vocab_size - N_BINS) as u32
    }
}

/// One training or inference row: prefix ids (images + prompt) and the action part.
#[derive(Debug, Clone)]
pub struct Row {
    pub prefix: Vec<u32>,
    /// Action tokens (targets); for autoregressive inputs the ones generated so far.
    pub actions: Vec<u32>,
}

/// A padded batch of rows: what the model reads and where the action logits are.
#[derive(Debug, Clone, PartialEq)]
pub struct Layout {
    /// `[rows, len]` ids, right-padded.
    pub ids: Vec<u32>,
    pub len: usize,
    /// `valid[b][k]`: key k is a real token.
    pub valid: Vec<Vec<bool>>,
    /// `prefix[b][k]`: key k is visible from every query.
    pub prefix: Vec<Vec<bool>>,
    /// For every row, the positions whose logits predict its action tokens.
    pub reads: Vec<Vec<usize>>,
}

/// `rows` right-padded to one length for `decoding`.
pub fn layout(rows: &[Row], decoding: Decoding, n_actions: usize) -> Layout {
    let seq_len = |r: &Row| match decoding {
        Decoding::Autoregressive => r.prefix.len() + r.actions.len(),
        Decoding::Parallel => r.prefix.len() + n_actions,
    };
    let t = rows.iter().map(seq_len).max().unwrap_or(1);
    let mut out = Layout {
        ids: Vec::with_capacity(rows.len() * t),
        len: t,
        valid: Vec::with_capacity(rows.len()),
        prefix: Vec::with_capacity(rows.len()),
        reads: Vec::with_capacity(rows.len()),
    };
    for r in rows {
        let p = r.prefix.len();
        let n = seq_len(r);
        out.ids.extend(&r.prefix);
        match decoding {
            Decoding::Autoregressive => {
                out.ids.extend(&r.actions);
                // Token j is predicted from the position before it.
                out.reads
                    .push((0..r.actions.len()).map(|j| p + j - 1).collect());
                let mut f = vec![true; p];
                f.resize(t, false);
                out.prefix.push(f);
            }
            Decoding::Parallel => {
                out.ids.extend(std::iter::repeat_n(ACTION_QUERY, n_actions));
                out.reads.push((0..n_actions).map(|j| p + j).collect());
                let mut f = vec![true; n];
                f.resize(t, false);
                out.prefix.push(f);
            }
        }
        out.ids
            .extend(std::iter::repeat_n(crate::prompt::PAD, t - n));
        let mut v = vec![true; n];
        v.resize(t, false);
        out.valid.push(v);
    }
    out
}

/// Mean cross-entropy of the action tokens of `rows` (teacher forcing for autoregressive
/// decoding).
pub fn loss(
    model: &paligemma::Model,
    pixels: &Tensor,
    rows: &[Row],
    decoding: Decoding,
    n_actions: usize,
) -> candle_core::Result<Tensor> {
    let dev = pixels.device();
    let b = rows.len();
    let Layout {
        ids,
        len: t,
        valid,
        prefix,
        reads,
    } = layout(rows, decoding, n_actions);
    let ids = Tensor::from_vec(ids, (b, t), dev)?;
    let feats = model.camera_features(pixels, None)?;
    let lg = model.prefix_lm_logits(&ids, &feats, &valid, &prefix, None)?;
    let vocab = lg.dim(D::Minus1)?;
    let mut at = Vec::with_capacity(b * n_actions);
    let mut targets = Vec::with_capacity(b * n_actions);
    for (bi, r) in rows.iter().enumerate() {
        for (j, &pos) in reads[bi].iter().enumerate() {
            at.push((bi * t + pos) as u32);
            targets.push(r.actions[j]);
        }
    }
    let n = at.len();
    let flat = lg.reshape((b * t, vocab))?;
    let picked = flat.index_select(&Tensor::from_vec(at, n, dev)?, 0)?;
    let weights = vec![1.0 / n.max(1) as f32; n];
    rudder_tune::train::cross_entropy::weighted_cross_entropy(&picked, &targets, &weights)
}

/// Greedy action tokens for one observation: `pixels` `[1, cams, 3, s, s]`, `prefix` ids,
/// `valid_prefix[k]` false for the patches of a missing camera.
pub fn decode(
    model: &paligemma::Model,
    pixels: &Tensor,
    prefix_ids: &[u32],
    valid_prefix: &[bool],
    spec: &ActionTokens,
    vocab_size: usize,
    mut hooks: Option<&mut Hooks>,
) -> candle_core::Result<Vec<u32>> {
    let dev = pixels.device();
    let n = spec.len();
    let first = ActionTokens::first_id(vocab_size) as usize;
    let feats = model.camera_features(pixels, hooks.as_deref_mut())?;
    let pick = |row: &Tensor| -> candle_core::Result<u32> {
        let ids = row
            .narrow(0, first, N_BINS)?
            .argmax(0)?
            .to_scalar::<u32>()?;
        Ok(ids + first as u32)
    };
    let p = prefix_ids.len();
    match spec.decoding {
        Decoding::Parallel => {
            let mut ids = prefix_ids.to_vec();
            ids.extend(std::iter::repeat_n(ACTION_QUERY, n));
            let mut valid = valid_prefix.to_vec();
            valid.resize(p + n, true);
            let all = vec![vec![true; p + n]];
            let ids_t = Tensor::from_vec(ids, (1, p + n), dev)?;
            let lg = model
                .prefix_lm_logits(&ids_t, &feats, &[valid], &all, hooks)?
                .squeeze(0)?
                .to_dtype(DType::F32)?;
            (0..n).map(|j| pick(&lg.get(p + j)?)).collect()
        }
        Decoding::Autoregressive => {
            let mut out: Vec<u32> = Vec::with_capacity(n);
            for _ in 0..n {
                let mut ids = prefix_ids.to_vec();
                ids.extend(&out);
                let t = ids.len();
                let mut valid = valid_prefix.to_vec();
                valid.resize(t, true);
                let mut pre = vec![true; p];
                pre.resize(t, false);
                let ids_t = Tensor::from_vec(ids, (1, t), dev)?;
                let lg = model
                    .prefix_lm_logits(&ids_t, &feats, &[valid], &[pre], hooks.as_deref_mut())?
                    .squeeze(0)?
                    .to_dtype(DType::F32)?;
                out.push(pick(&lg.get(t - 1)?)?);
            }
            Ok(out)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec() -> ActionTokens {
        ActionTokens {
            n_bins: N_BINS,
            q01: vec![-0.5, 0.0],
            q99: vec![0.5, 2.0],
            mask: vec![true, false],
            chunk: 1,
            decoding: Decoding::Autoregressive,
        }
    }

    #[test]
    fn bins_are_the_last_ids_and_round_trip_within_half_a_bin() {
        let s = spec();
        let vocab = 600;
        // Normalised extremes map to the first / last bin.
        assert_eq!(s.token(vocab, 0, -0.5), (vocab - 1) as u32);
        assert_eq!(s.token(vocab, 0, 0.5), (vocab - N_BINS) as u32);
        assert_eq!(s.token(vocab, 0, 9.0), (vocab - N_BINS) as u32);
        // Half a bin normalised (1 / 255; the top edge lands in the last centre, one half bin
        // away) is 0.5 / 255 here, where q99 - q01 = 1.
        for i in 0..=100 {
            let x = -0.5 + i as f64 / 100.0;
            let back = s.value(vocab, 0, s.token(vocab, 0, x));
            assert!((back - x).abs() <= 0.5 / 255.0 + 1e-9, "{x} -> {back}");
        }
        // The unmasked gripper dimension is binned as is.
        let g = s.value(vocab, 1, s.token(vocab, 1, -1.0));
        assert!((g + 1.0).abs() < 2.0 / 255.0, "{g}");
    }

    #[test]
    fn layout_reads_the_position_before_each_token_or_its_own() {
        let rows = vec![
            Row {
                prefix: vec![5, 6, 7],
                actions: vec![1, 2],
            },
            Row {
                prefix: vec![5, 6],
                actions: vec![3, 4],
            },
        ];
        let l = layout(&rows, Decoding::Autoregressive, 2);
        assert_eq!(l.len, 5);
        assert_eq!(&l.ids[..5], &[5, 6, 7, 1, 2]);
        assert_eq!(&l.ids[5..], &[5, 6, 3, 4, crate::prompt::PAD]);
        assert_eq!(l.reads, vec![vec![2, 3], vec![1, 2]]);
        assert_eq!(l.valid[1], vec![true, true, true, true, false]);
        assert_eq!(l.prefix[0], vec![true, true, true, false, false]);
        let l = layout(&rows, Decoding::Parallel, 2);
        assert_eq!(&l.ids[..5], &[5, 6, 7, ACTION_QUERY, ACTION_QUERY]);
        assert_eq!(l.reads, vec![vec![3, 4], vec![2, 3]]);
        assert_eq!(l.prefix[1], vec![true, true, true, true, false]);
    }
}
