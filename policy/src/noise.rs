//! Standard normal noise from a seed: SplitMix64 (rudder-tune's training generator) and the
//! Box-Muller transform, so the same seed gives the same action chunk on every machine.

use rudder_tune::train::rng::Rng;

/// `n` independent N(0, 1) samples drawn from `seed`.
pub fn gaussian(seed: u64, n: usize) -> Vec<f32> {
    let mut rng = Rng::new(seed);
    let mut out = Vec::with_capacity(n + 1);
    while out.len() < n {
        // u1 in (0, 1] so that ln(u1) is finite.
        let u1 = 1.0 - rng.next_f64();
        let u2 = rng.next_f64();
        let r = (-2.0 * u1.ln()).sqrt();
        let a = 2.0 * std::f64::consts::PI * u2;
        out.push((r * a.cos()) as f32);
        out.push((r * a.sin()) as f32);
    }
    out.truncate(n);
    out
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
