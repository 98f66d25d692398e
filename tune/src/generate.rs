//! Greedy decoding with a KV cache, with transformers' stopping rule: a row that emitted an
//! end-of-sequence token is padded until every row is done.

use candle_core::{DType, Result, Tensor, D};

use crate::blocks::KvCache;
use crate::hooks::Hooks;
use crate::models::decoder::Decoder;

/// First index of the maximum (torch's argmax tie rule).
fn argmax(row: &[f32]) -> u32 {
    let mut best = 0usize;
    for (i, &v) in row.iter().enumerate() {
        if v > row[best] {
            best = i;
        }
    }
    best as u32
}

/// Prompts must share one length. Returns prompt + generated tokens per row.
pub fn greedy(
    decoder: &Decoder,
    prompts: &[Vec<u32>],
    max_new_tokens: usize,
    eos: &[u32],
    pad: u32,
    mut hooks: Option<&mut Hooks>,
) -> Result<Vec<Vec<u32>>> {
    let b = prompts.len();
    let t = prompts.first().map(|p| p.len()).unwrap_or(0);
    if b == 0 || t == 0 {
        candle_core::bail!("greedy: empty prompt");
    }
    if prompts.iter().any(|p| p.len() != t) {
        candle_core::bail!(
            "greedy: prompts of different lengths need padding, which is not supported"
        );
    }
    let dev = decoder.device();
    let flat: Vec<u32> = prompts.iter().flatten().copied().collect();
    let mut ids = Tensor::from_vec(flat, (b, t), dev)?;
    let mut out: Vec<Vec<u32>> = prompts.to_vec();
    let mut done = vec![false; b];
    let mut cache: Vec<KvCache> = Vec::new();
    let mut past = 0usize;
    for _ in 0..max_new_tokens {
        let (logits, _) =
            decoder.forward_ids(&ids, past, Some(&mut cache), hooks.as_deref_mut(), false)?;
        past += ids.dim(1)?;
        let last = logits.narrow(1, logits.dim(1)? - 1, 1)?.squeeze(1)?;
        let rows: Vec<Vec<f32>> = last.to_dtype(DType::F32)?.to_vec2()?;
        let mut next = Vec::with_capacity(b);
        for (i, row) in rows.iter().enumerate() {
            let tok = if done[i] { pad } else { argmax(row) };
            if eos.contains(&tok) {
                done[i] = true;
            }
            out[i].push(tok);
            next.push(tok);
        }
        if done.iter().all(|&d| d) {
            break;
        }
        ids = Tensor::from_vec(next, (b, 1), dev)?;
    }
    Ok(out)
}

/// Next-token log-probabilities of a whole sequence (used by tests and scoring).
pub fn log_probs(logits: &Tensor) -> Result<Tensor> {
    candle_nn::ops::log_softmax(logits, D::Minus1)
}
