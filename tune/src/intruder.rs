//! Intruder dimensions of an adapted weight (REFERENCE §7): singular vectors of W0 + dW among
//! the top k whose largest |cosine| with every singular vector of W0 is below a threshold.
//! Left singular vectors (the output space) are compared.

use candle_core::{DType, Tensor};
use nalgebra::DMatrix;
use serde::Serialize;

#[derive(Debug, Clone, Serialize)]
pub struct IntruderReport {
    pub module: String,
    /// Indices (0 = largest singular value) of the intruding vectors among the top k.
    pub intruders: Vec<usize>,
    /// Per top-k vector: max |cos| with W0's singular vectors.
    pub max_cos: Vec<f64>,
    pub singular_values: Vec<f64>,
}

fn to_matrix(t: &Tensor) -> candle_core::Result<DMatrix<f64>> {
    let (r, c) = t.dims2()?;
    let v: Vec<f64> = t.to_dtype(DType::F64)?.flatten_all()?.to_vec1()?;
    Ok(DMatrix::from_row_slice(r, c, &v))
}

/// Left singular vectors sorted by singular value, largest first.
fn left_singular(m: &DMatrix<f64>) -> (Vec<f64>, DMatrix<f64>) {
    let svd = m.clone().svd(true, false);
    let u = svd.u.unwrap_or_else(|| DMatrix::zeros(m.nrows(), 0));
    let mut idx: Vec<usize> = (0..svd.singular_values.len()).collect();
    idx.sort_by(|&a, &b| svd.singular_values[b].total_cmp(&svd.singular_values[a]));
    let s: Vec<f64> = idx.iter().map(|&i| svd.singular_values[i]).collect();
    let cols: Vec<_> = idx.iter().map(|&i| u.column(i).into_owned()).collect();
    (s, DMatrix::from_columns(&cols))
}

/// `w0` and `delta` are `[out, in]`.
pub fn intruder_dimensions(
    module: &str,
    w0: &Tensor,
    delta: &Tensor,
    k: usize,
    threshold: f64,
) -> candle_core::Result<IntruderReport> {
    let a = to_matrix(w0)?;
    let b = &a + to_matrix(delta)?;
    let (_, ua) = left_singular(&a);
    let (sb, ub) = left_singular(&b);
    let k = k.min(ub.ncols());
    let mut max_cos = Vec::with_capacity(k);
    let mut intruders = Vec::new();
    for j in 0..k {
        let v = ub.column(j);
        let m = (0..ua.ncols())
            .map(|i| v.dot(&ua.column(i)).abs())
            .fold(0f64, f64::max);
        if m < threshold {
            intruders.push(j);
        }
        max_cos.push(m);
    }
    Ok(IntruderReport {
        module: module.to_string(),
        intruders,
        max_cos,
        singular_values: sb.into_iter().take(k).collect(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    fn diag(n: usize) -> Tensor {
        let mut v = vec![0f32; n * n];
        for i in 0..n {
            v[i * n + i] = (i + 1) as f32;
        }
        Tensor::from_vec(v, (n, n), &Device::Cpu).unwrap()
    }

    #[test]
    fn no_update_has_no_intruders() {
        let n = 16;
        let r = intruder_dimensions(
            "m",
            &diag(n),
            &Tensor::zeros((n, n), DType::F32, &Device::Cpu).unwrap(),
            10,
            0.5,
        )
        .unwrap();
        assert!(r.intruders.is_empty());
        assert!(r.max_cos.iter().all(|&c| c > 0.999));
    }

    #[test]
    fn a_large_update_along_a_new_direction_intrudes() {
        // W0's singular vectors are the axes; the update adds a dominant direction (1,...,1)/sqrt(n),
        // whose best match among the axes is 1/sqrt(n) = 0.25.
        let n = 16;
        let u = vec![1f32 / (n as f32).sqrt(); n];
        let mut dw = vec![0f32; n * n];
        for i in 0..n {
            for j in 0..n {
                dw[i * n + j] = 100.0 * u[i] * u[j];
            }
        }
        let dw = Tensor::from_vec(dw, (n, n), &Device::Cpu).unwrap();
        let r = intruder_dimensions("m", &diag(n), &dw, 10, 0.5).unwrap();
        assert_eq!(r.intruders.first(), Some(&0), "{r:?}");
        assert!((r.max_cos[0] - 0.25).abs() < 0.05, "{r:?}");
        // A small update of the same shape does not change the top directions.
        let small = (dw * 1e-4).unwrap();
        let r = intruder_dimensions("m", &diag(n), &small, 10, 0.5).unwrap();
        assert!(r.intruders.is_empty(), "{r:?}");
    }
}
