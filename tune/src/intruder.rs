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
