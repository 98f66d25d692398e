//! Weighted token cross-entropy over logits rows in one CPU pass forward and one backward.
//!
//! The composition it replaces on CPU f32 (`log_softmax` as max, subtract, exp, sum, log,
//! subtract; then `gather`, a mask product and a sum) makes about a dozen vocabulary-sized
//! temporaries forward and as many again backward, each through autograd's zero-then-add
//! accumulation. For a batch of 8 x 64 tokens and a 4096-id vocabulary that is 8 MB per pass.

use candle_core::{CpuStorage, CustomOp1, Layout, Result, Shape, Tensor, D};

use crate::kernels::fastmath;

/// `-sum_r weight[r] * log softmax(logits[r])[target[r]]` over the rows of a `[.., vocab]`
/// tensor, as a scalar. Rows with weight 0 (padding, the last position of a sequence) cost a
/// skipped row. Differentiable with respect to the logits.
pub fn weighted_cross_entropy(logits: &Tensor, targets: &[u32], weights: &[f32]) -> Result<Tensor> {
    let vocab = logits.dim(D::Minus1)?;
    let rows = logits.elem_count() / vocab.max(1);
    if targets.len() != rows || weights.len() != rows {
        candle_core::bail!(
            "cross-entropy: {rows} logits rows but {} targets and {} weights",
            targets.len(),
            weights.len()
        );
    }
    if let Some(&t) = targets
        .iter()
        .zip(weights)
        .find(|(&t, &w)| w != 0.0 && t as usize >= vocab)
        .map(|(t, _)| t)
    {
        candle_core::bail!("cross-entropy: target id {t} outside the vocabulary of {vocab}");
    }
    let fused = logits.device().is_cpu() && logits.dtype() == candle_core::DType::F32;
    if !fused {
        return composed(logits, targets, weights, vocab);
    }
    logits.contiguous()?.apply_op1(WeightedCrossEntropy {
        targets: targets.to_vec(),
        weights: weights.to_vec(),
    })
}

/// The same loss from primitive ops (other devices and dtypes).
fn composed(logits: &Tensor, targets: &[u32], weights: &[f32], vocab: usize) -> Result<Tensor> {
    let dev = logits.device();
    let rows = targets.len();
    let flat = logits.reshape((rows, vocab))?;
    let logp = candle_nn::ops::log_softmax(&flat, D::Minus1)?;
    // Rows with weight 0 may hold any id; point them at 0 so gather stays in range.
    let safe: Vec<u32> = targets
        .iter()
        .zip(weights)
        .map(|(&t, &w)| if w == 0.0 { 0 } else { t })
        .collect();
    let idx = Tensor::from_vec(safe, (rows, 1), dev)?;
    let picked = logp.gather(&idx, D::Minus1)?.squeeze(D::Minus1)?;
    let w = Tensor::from_vec(weights.to_vec(), rows, dev)?.to_dtype(picked.dtype())?;
    (picked * w)?.sum_all()?.neg()
}

struct WeightedCrossEntropy {
    targets: Vec<u32>,
    weights: Vec<f32>,
}

/// Rows per rayon task: a few rows of a 4096-id vocabulary are enough work to be worth one.
const ROWS_PER_TASK: usize = 8;

impl CustomOp1 for WeightedCrossEntropy {
    fn name(&self) -> &'static str {
        "weighted-cross-entropy"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let CpuStorage::F32(data) = s else {
            candle_core::bail!("cross-entropy: logits must be f32");
        };
        let Some((a, b)) = l.contiguous_offsets() else {
            candle_core::bail!("cross-entropy: logits must be contiguous");
        };
        let x = &data[a..b];
        let vocab = x.len() / self.targets.len().max(1);
        use rayon::prelude::*;
        // Per-row terms, summed afterwards in row order: the result must not depend on how
        // rayon splits the rows (resumed training is bit-exact).
        let mut terms = vec![0f64; self.targets.len()];
        terms
            .par_chunks_mut(ROWS_PER_TASK)
            .zip(x.par_chunks(vocab * ROWS_PER_TASK))
            .enumerate()
            .for_each(|(c, (terms, rows))| {
                for (i, (term, row)) in terms.iter_mut().zip(rows.chunks_exact(vocab)).enumerate() {
                    let r = c * ROWS_PER_TASK + i;
                    let w = self.weights[r];
                    if w == 0.0 {
                        continue;
                    }
                    let lse = fastmath::log_sum_exp(row);
                    let t = self.targets[r] as usize;
                    *term = w as f64 * (lse - row[t]) as f64;
                }
            });
        let loss = terms.iter().sum::<f64>() as f32;
        Ok((CpuStorage::F32(vec![loss]), Shape::from(())))
    }

    fn bwd(&self, logits: &Tensor, _res: &Tensor, grad: &Tensor) -> Result<Option<Tensor>> {
        let g = grad.to_dtype(candle_core::DType::F32)?.to_scalar::<f32>()?;
        let x = logits.flatten_all()?.to_vec1::<f32>()?;
        let vocab = x.len() / self.targets.len().max(1);
        let mut dx = fastmath::uninit_buffer(x.len());
        use rayon::prelude::*;
        dx.par_chunks_mut(vocab * ROWS_PER_TASK)
            .zip(x.par_chunks(vocab * ROWS_PER_TASK))
            .enumerate()
            .for_each(|(c, (drows, rows))| {
                let mut p = vec![0f32; vocab];
                for (i, (d, row)) in drows
                    .chunks_exact_mut(vocab)
                    .zip(rows.chunks_exact(vocab))
                    .enumerate()
                {
                    let r = c * ROWS_PER_TASK + i;
                    let w = self.weights[r];
                    if w == 0.0 {
                        for v in d.iter_mut() {
                            v.write(0.0);
                        }
                        continue;
                    }
                    // d loss / d x_j = g w (softmax_j - [j = target]).
                    p.copy_from_slice(row);
                    fastmath::softmax_row(&mut p, None);
                    let s = g * w;
                    for (v, &pj) in d.iter_mut().zip(&p) {
                        v.write(s * pj);
                    }
                    let t = self.targets[r] as usize;
                    d[t].write(s * (p[t] - 1.0));
                }
            });
        // SAFETY: every row of `dx` was written, by the zero branch or the softmax branch.
        let dx = unsafe { fastmath::assume_init(dx) };
        Ok(Some(Tensor::from_vec(dx, logits.shape(), logits.device())?))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Device, Var};

    fn case() -> (Var, Vec<u32>, Vec<f32>) {
        let dev = Device::Cpu;
        let rows = 19; // not a multiple of ROWS_PER_TASK
        let vocab = 37;
        let data: Vec<f32> = (0..rows * vocab)
            .map(|i| ((i * 7919 % 101) as f32 - 50.0) / 7.0)
            .collect();
        let logits = Var::from_vec(data, (rows, vocab), &dev).unwrap();
        let targets: Vec<u32> = (0..rows).map(|r| (r * 13 % vocab) as u32).collect();
        let weights: Vec<f32> = (0..rows)
            .map(|r| if r % 5 == 4 { 0.0 } else { 1.0 / 15.0 })
            .collect();
        (logits, targets, weights)
    }

    #[test]
    fn fused_loss_and_gradient_match_the_composed_ops() {
        let (logits, targets, weights) = case();
        let vocab = logits.dim(1).unwrap();
        let fused = weighted_cross_entropy(logits.as_tensor(), &targets, &weights).unwrap();
        let reference = composed(logits.as_tensor(), &targets, &weights, vocab).unwrap();
        let (f, r) = (
            fused.to_scalar::<f32>().unwrap(),
            reference.to_scalar::<f32>().unwrap(),
        );
        assert!((f - r).abs() < 1e-5, "loss {f} vs {r}");
        assert!(f > 0.1, "a non-trivial loss, got {f}");
        let gf = fused.backward().unwrap();
        let gr = reference.backward().unwrap();
        let a = gf.get(logits.as_tensor()).unwrap();
        let b = gr.get(logits.as_tensor()).unwrap();
        let diff = (a - b)
            .unwrap()
            .abs()
            .unwrap()
            .max_all()
            .unwrap()
            .to_scalar::<f32>()
            .unwrap();
        assert!(diff < 1e-6, "gradient max |diff| {diff}");
        // A zero-weight row gets no gradient at all.
        let row4 = a.get(4).unwrap().abs().unwrap().sum_all().unwrap();
        assert_eq!(row4.to_scalar::<f32>().unwrap(), 0.0);
    }

    #[test]
    fn a_target_outside_the_vocabulary_is_an_error_naming_it() {
        let (logits, mut targets, weights) = case();
        targets[0] = 1000;
        let e = weighted_cross_entropy(logits.as_tensor(), &targets, &weights).unwrap_err();
        assert!(e.to_string().contains("target id 1000"), "{e}");
    }
}
