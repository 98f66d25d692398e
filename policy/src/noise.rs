//! Standard normal noise from a seed: rudder-tune's training generator (SplitMix64) and its
//! Box-Muller transform ([`Rng::gaussian`], the one the trainer draws with), so the same seed
//! gives the same action chunk on every machine.

use rudder_tune::train::rng::Rng;

/// `n` independent N(0, 1) samples drawn from `seed`.
pub fn gaussian(seed: u64, n: usize) -> Vec<f32> {
    Rng::new(seed).gaussian(n)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deterministic_and_roughly_standard() {
        let a = gaussian(7, 10_001);
        assert_eq!(a, gaussian(7, 10_001));
        assert_ne!(a, gaussian(8, 10_001));
        let mean = a.iter().map(|&x| x as f64).sum::<f64>() / a.len() as f64;
        let var = a.iter().map(|&x| (x as f64 - mean).powi(2)).sum::<f64>() / a.len() as f64;
        assert!(mean.abs() < 0.05, "mean {mean}");
        assert!((var - 1.0).abs() < 0.05, "var {var}");
        assert!(a.iter().all(|x| x.is_finite()));
    }
}
