//! The token batches of causal-LM training, shared by the loss on candle's graph
//! ([`super::sft::causal_lm_loss`]) and the hand-written LoRA pass
//! ([`super::lora_backprop`]): one training sequence with its loss mask, and a right-padded
//! batch laid out for next-token prediction.

use serde::{Deserialize, Serialize};

/// One training sequence. `loss_mask[i]` says whether predicting `tokens[i]` (from the tokens
/// before it) counts; index 0 is never predicted. Empty mask = every token counts.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SftExample {
    pub tokens: Vec<u32>,
    #[serde(default)]
    pub loss_mask: Vec<bool>,
}

impl SftExample {
    /// Whether predicting `tokens[i]` counts towards the loss.
    pub fn counts(&self, i: usize) -> bool {
        self.loss_mask
            .get(i)
            .copied()
            .unwrap_or(self.loss_mask.is_empty())
    }
}

/// A right-padded batch laid out for next-token prediction: one target and loss weight per
/// position. The last position of each sequence predicts nothing (weight 0), so the logits
/// need no narrowing.
#[derive(Debug, Clone)]
pub struct LmBatch {
    pub batch: usize,
    pub seq: usize,
    /// `[batch * seq]` input ids, pads after each sequence.
    pub ids: Vec<u32>,
    pub targets: Vec<u32>,
    /// `1 / counted` where the position counts, else 0: the weighted sum is the mean loss.
    pub weights: Vec<f32>,
    pub counted: usize,
}

impl LmBatch {
    /// Sequences `seqs` of this batch, keeping the weights (so shard losses add up to the
    /// whole batch's mean).
    pub fn shard(&self, seqs: std::ops::Range<usize>) -> Self {
        let rows = seqs.start * self.seq..seqs.end * self.seq;
        Self {
            batch: seqs.len(),
            seq: self.seq,
            ids: self.ids[rows.clone()].to_vec(),
            targets: self.targets[rows.clone()].to_vec(),
            weights: self.weights[rows].to_vec(),
            counted: self.counted,
        }
    }

    pub fn new(batch: &[&SftExample], pad: u32) -> candle_core::Result<Self> {
        let b = batch.len();
        let t = batch.iter().map(|e| e.tokens.len()).max().unwrap_or(0);
        if b == 0 || t < 2 {
            candle_core::bail!("sft: a batch needs sequences of at least 2 tokens");
        }
        let mut ids = Vec::with_capacity(b * t);
        let mut targets = Vec::with_capacity(b * t);
        let mut counted = Vec::with_capacity(b * t);
        let mut n = 0usize;
        for e in batch {
            for i in 0..t {
                ids.push(e.tokens.get(i).copied().unwrap_or(pad));
            }
            for i in 1..=t {
                let real = i < e.tokens.len();
                targets.push(if real { e.tokens[i] } else { pad });
                let m = real && e.counts(i);
                n += m as usize;
                counted.push(m);
            }
        }
        if n == 0 {
            candle_core::bail!(
                "sft: no token in the batch counts towards the loss (check loss_mask)"
            );
        }
        let weights = counted
            .iter()
            .map(|&m| if m { 1.0 / n as f32 } else { 0.0 })
            .collect();
        Ok(Self {
            batch: b,
            seq: t,
            ids,
            targets,
            weights,
            counted: n,
        })
    }
}
