//! Savitzky-Golay smoothing and differentiation with SciPy's default `mode="interp"`: interior
//! samples use the window around them, the first and last half-windows are evaluated on the
//! polynomial fitted to the first / last full window. nuPlan's comfort metrics are defined
//! through `scipy.signal.savgol_filter`, so the edge handling matters for the score.
//!
//! Known difference: for an even window SciPy evaluates the fit half a sample off the centre;
//! here the fit over samples [i - (w-1)/2, i + w/2] is evaluated at sample i itself.

/// Smoothed value (`deriv` = 0) or derivative of `y` sampled every `delta` seconds. The window
/// is shortened to `y.len()` like nuPlan does; `None` if it is then not longer than `order`.
pub fn savgol(
    y: &[f64],
    window: usize,
    order: usize,
    deriv: usize,
    delta: f64,
) -> Option<Vec<f64>> {
    let n = y.len();
    let w = window.min(n);
    if w <= order || deriv > order || delta.is_nan() || delta <= 0.0 {
        return None;
    }
    // Coefficients for evaluating at each offset r within a window (the pattern is the same
    // for every window position, so at most w distinct coefficient vectors are needed).
    let coeffs: Vec<Vec<f64>> = (0..w)
        .map(|r| fit_coeffs(w, order, deriv, r, delta))
        .collect::<Option<_>>()?;
    let lead = (w - 1) / 2;
    Some(
        (0..n)
            .map(|i| {
                let start = i.saturating_sub(lead).min(n - w);
                let c = &coeffs[i - start];
                (0..w).map(|j| c[j] * y[start + j]).sum()
            })
            .collect(),
    )
}

#[allow(clippy::needless_range_loop)]
fn fit_coeffs(w: usize, order: usize, deriv: usize, r: usize, delta: f64) -> Option<Vec<f64>> {
    let m = order + 1;
    // Normal matrix of the Vandermonde system in coordinates centred on the evaluation point.
    let mut a = vec![vec![0.0; m]; m];
    for j in 0..w {
        let x = j as f64 - r as f64;
        for p in 0..m {
            for q in 0..m {
                a[p][q] += x.powi((p + q) as i32);
            }
        }
    }
    // Row `deriv` of the inverse: solve A z = e_deriv (A symmetric).
    let mut rhs = vec![0.0; m];
    rhs[deriv] = 1.0;
    let z = solve(a, rhs)?;
    let fact: f64 = (1..=deriv).map(|k| k as f64).product();
    let scale = fact / delta.powi(deriv as i32);
    Some(
        (0..w)
            .map(|j| {
                let x = j as f64 - r as f64;
                scale * (0..m).map(|p| z[p] * x.powi(p as i32)).sum::<f64>()
            })
            .collect(),
    )
}

#[allow(clippy::needless_range_loop)]
fn solve(mut a: Vec<Vec<f64>>, mut b: Vec<f64>) -> Option<Vec<f64>> {
    let n = b.len();
    for c in 0..n {
        let p = (c..n).max_by(|&i, &j| a[i][c].abs().total_cmp(&a[j][c].abs()))?;
        if a[p][c].abs() < 1e-12 {
            return None;
        }
        a.swap(c, p);
        b.swap(c, p);
        for r in 0..n {
            if r != c {
                let f = a[r][c] / a[c][c];
                for k in c..n {
                    a[r][k] -= f * a[c][k];
                }
                b[r] -= f * b[c];
            }
        }
    }
    Some((0..n).map(|i| b[i] / a[i][i]).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exact_on_quadratics_including_edges() {
        let dt = 0.1;
        let y: Vec<f64> = (0..30)
            .map(|i| {
                let t = i as f64 * dt;
                3.0 * t * t - 2.0 * t + 1.0
            })
            .collect();
        let d1 = savgol(&y, 5, 2, 1, dt).unwrap();
        for (i, d) in d1.iter().enumerate() {
            assert!((d - (6.0 * i as f64 * dt - 2.0)).abs() < 1e-9, "{i} {d}");
        }
        let d2 = savgol(&y, 15, 2, 2, dt).unwrap();
        assert!(d2.iter().all(|d| (d - 6.0).abs() < 1e-8));
        let s = savgol(&y, 8, 2, 0, dt).unwrap();
        assert!(s.iter().zip(&y).all(|(a, b)| (a - b).abs() < 1e-9));
    }

    #[test]
    fn smooths_noise_and_rejects_short_input() {
        // SciPy: savgol_filter([0,0,1,0,0], 5, 2) centre = 17/35 (coefficients -3,12,17,12,-3).
        let s = savgol(&[0.0, 0.0, 1.0, 0.0, 0.0], 5, 2, 0, 1.0).unwrap();
        assert!((s[2] - 17.0 / 35.0).abs() < 1e-12);
        assert!(savgol(&[1.0, 2.0], 5, 2, 0, 0.1).is_none());
    }
}
