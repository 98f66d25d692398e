//! Seeded from-scratch initialisation of a model's variables.

use candle_core::{Tensor, Var};

use super::Rng;
use crate::error::{Context, Result};

/// The salt [`init_from_scratch`] mixes into the seed, so that a run's own generator
/// (`Rng::new(seed)`) and the initial weights draw different streams.
pub const INIT_SALT: u64 = 0x5EED_1417;

/// Whether a 1-D `*.weight` is a LayerNorm scale (init 1) rather than a Gemma RMSNorm offset
/// scale (init 0): the SigLIP vision tower's `layer_norm1`, `layer_norm2` and
/// `post_layernorm`.
pub fn is_layer_norm(name: &str) -> bool {
    name.contains("vision_tower")
        && (name.ends_with("layer_norm1.weight")
            || name.ends_with("layer_norm2.weight")
            || name.ends_with("post_layernorm.weight"))
}

/// Initialises every variable of `params` in place from `Rng::new(seed ^ INIT_SALT)`, in the
/// order given (callers pass them sorted by name, so the same seed and model give bit-identical
/// weights): LeCun-normal matrices (std `1 / sqrt(fan_in)`, fan-in the product of all dims but
/// the first), normal(0, 0.02) embedding tables (`embed_tokens.weight`,
/// `position_embedding.weight`), zero biases, LayerNorm weights 1 ([`is_layer_norm`]), Gemma
/// RMSNorm weights 0 (scale 1). Only matrices and embedding tables draw from the generator.
pub fn init_from_scratch(params: &[(String, Var)], seed: u64) -> Result<()> {
    let mut init = Rng::new(seed ^ INIT_SALT);
    for (name, var) in params {
        let shape = var.shape().clone();
        let n = shape.elem_count();
        let vals: Vec<f32> = if shape.rank() == 1 {
            let one = name.ends_with(".weight") && is_layer_norm(name);
            vec![if one { 1.0 } else { 0.0 }; n]
        } else {
            // Embedding tables: normal(0, 0.02); matrices: LeCun normal (1 / sqrt(fan_in)).
            let std = if name.ends_with("embed_tokens.weight")
                || name.ends_with("position_embedding.weight")
            {
                0.02
            } else {
                let fan_in: usize = shape.dims()[1..].iter().product();
                1.0 / (fan_in.max(1) as f32).sqrt()
            };
            init.gaussian(n).into_iter().map(|x| x * std).collect()
        };
        let t = Tensor::from_vec(vals, shape, var.device())
            .and_then(|t| t.to_dtype(var.dtype()))
            .context(format!("initialising `{name}`"))?;
        var.set(&t).context(format!("initialising `{name}`"))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{DType, Device};

    fn params() -> Vec<(String, Var)> {
        let dev = Device::Cpu;
        let v = |dims: &[usize]| Var::zeros(dims, DType::F32, &dev).unwrap();
        let mut p = vec![
            ("a.embed_tokens.weight".to_string(), v(&[10, 4])),
            ("b.proj.weight".to_string(), v(&[3, 4])),
            ("b.proj.bias".to_string(), v(&[3])),
            ("c.norm.weight".to_string(), v(&[4])),
            (
                "vision_tower.vision_model.encoder.layers.0.layer_norm1.weight".to_string(),
                v(&[4]),
            ),
        ];
        p.sort_by(|a, b| a.0.cmp(&b.0));
        p
    }

    #[test]
    fn draws_follow_the_names_and_the_seed() {
        let p = params();
        init_from_scratch(&p, 7).unwrap();
        let get = |i: usize| {
            p[i].1
                .as_tensor()
                .flatten_all()
                .unwrap()
                .to_vec1::<f32>()
                .unwrap()
        };
        // Same draws as the loop it replaces: the embedding table, then the matrix.
        let mut r = Rng::new(7 ^ INIT_SALT);
        let emb: Vec<f32> = r.gaussian(40).into_iter().map(|x| x * 0.02).collect();
        let w: Vec<f32> = r.gaussian(12).into_iter().map(|x| x * 0.5).collect();
        assert_eq!(get(0), emb);
        assert_eq!(get(2), w);
        assert_eq!(get(1), vec![0.0; 3]);
        assert_eq!(get(3), vec![0.0; 4]);
        assert_eq!(get(4), vec![1.0; 4]);
        let q = params();
        init_from_scratch(&q, 7).unwrap();
        let again = q[2]
            .1
            .as_tensor()
            .flatten_all()
            .unwrap()
            .to_vec1::<f32>()
            .unwrap();
        assert_eq!(again, w);
        assert!(is_layer_norm(&p[4].0) && !is_layer_norm(&p[3].0));
    }
}
