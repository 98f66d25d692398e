//! pi0 mean/std normalisation (REFERENCE §6b): `x_norm = (x - mean) / (std + 1e-8)` for the
//! state going in and the inverse for the actions coming out.
//!
//! `normalization.json` beside the checkpoint:
//! ```json
//! {"state": {"mean": [...], "std": [...]}, "actions": {"mean": [...], "std": [...]}}
//! ```
//! Either entry may be absent (identity). A vector shorter than the data normalises only the
//! leading dimensions (the rest, e.g. padding, pass through unchanged); a longer one is an error.

use std::path::Path;

use serde::Deserialize;

use crate::FlowError;

pub const EPS: f64 = 1e-8;

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MeanStd {
    pub mean: Vec<f64>,
    pub std: Vec<f64>,
}

#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
pub struct Normalization {
    #[serde(default)]
    pub state: Option<MeanStd>,
    #[serde(default, alias = "action")]
    pub actions: Option<MeanStd>,
}

impl MeanStd {
    fn check(&self, path: &Path, field: &str, max_len: usize) -> Result<(), FlowError> {
        let err = |problem: String| FlowError::Field {
            path: path.to_path_buf(),
            field: field.to_string(),
            problem,
        };
        if self.mean.len() != self.std.len() {
            return Err(err(format!(
                "mean has {} entries, std {}",
                self.mean.len(),
                self.std.len()
            )));
        }
        if self.mean.len() > max_len {
            return Err(err(format!(
                "{} entries, more than the model's {max_len}",
                self.mean.len()
            )));
        }
        if let Some(i) = self.mean.iter().position(|v| !v.is_finite()) {
            return Err(err(format!("mean[{i}] is not finite")));
        }
        if let Some(i) = self.std.iter().position(|v| !(v.is_finite() && *v >= 0.0)) {
            return Err(err(format!("std[{i}] must be finite and >= 0")));
        }
        Ok(())
    }

    /// `(x - mean) / (std + eps)` on the leading dimensions.
    pub fn normalize(&self, x: &mut [f64]) {
        for ((v, m), s) in x.iter_mut().zip(&self.mean).zip(&self.std) {
            *v = (*v - m) / (s + EPS);
        }
    }

    /// `x * (std + eps) + mean` on the leading dimensions.
    pub fn unnormalize(&self, x: &mut [f64]) {
        for ((v, m), s) in x.iter_mut().zip(&self.mean).zip(&self.std) {
            *v = *v * (s + EPS) + m;
        }
    }
}

impl Normalization {
    /// Reads `path` when it exists; identity otherwise.
    pub fn load_optional(
        path: &Path,
        state_dim: usize,
        action_dim: usize,
    ) -> Result<Self, FlowError> {
        if !path.exists() {
            return Ok(Self::default());
        }
        let text = std::fs::read_to_string(path).map_err(|e| FlowError::File {
            path: path.to_path_buf(),
            problem: e.to_string(),
        })?;
        let n: Normalization = serde_json::from_str(&text).map_err(|e| FlowError::File {
            path: path.to_path_buf(),
            problem: format!("not a valid normalization file: {e}"),
        })?;
        if let Some(s) = &n.state {
            s.check(path, "state", state_dim)?;
        }
        if let Some(a) = &n.actions {
            a.check(path, "actions", action_dim)?;
        }
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_checks() {
        let ms = MeanStd {
            mean: vec![1.0, -2.0],
            std: vec![2.0, 0.5],
        };
        let mut x = vec![3.0, -1.0, 7.0];
        ms.normalize(&mut x);
        assert!((x[0] - 1.0).abs() < 1e-6 && (x[1] - 2.0).abs() < 1e-6 && x[2] == 7.0);
        ms.unnormalize(&mut x);
        assert!((x[0] - 3.0).abs() < 1e-9 && (x[1] + 1.0).abs() < 1e-9);

        let dir = std::env::temp_dir().join(format!("rudder-norm-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let p = dir.join("normalization.json");
        std::fs::write(&p, r#"{"state": {"mean": [0, 0], "std": [1]}}"#).unwrap();
        let e = Normalization::load_optional(&p, 8, 6)
            .unwrap_err()
            .to_string();
        assert!(e.contains("`state`") && e.contains("mean has 2"), "{e}");
        std::fs::write(&p, r#"{"actions": {"mean": [0], "std": [1]}}"#).unwrap();
        assert!(Normalization::load_optional(&p, 8, 6)
            .unwrap()
            .actions
            .is_some());
        assert_eq!(
            Normalization::load_optional(&dir.join("missing.json"), 8, 6).unwrap(),
            Normalization::default()
        );
        std::fs::remove_dir_all(&dir).ok();
    }
}
