//! Reading Hugging Face `config.json` files with errors that name the file and the field.

use std::path::{Path, PathBuf};

use serde_json::Value;

use crate::error::{Result, TuneError};

/// A JSON object together with where it came from, so that every accessor can report
/// `config.json: field text_config.hidden_size: missing`.
#[derive(Debug, Clone)]
pub struct JsonConfig {
    pub path: PathBuf,
    prefix: String,
    value: Value,
}

impl JsonConfig {
    pub fn load(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|source| TuneError::Io {
            path: path.to_path_buf(),
            source,
        })?;
        Self::parse(path, &text)
    }

    pub fn parse(path: &Path, text: &str) -> Result<Self> {
        let value: Value = serde_json::from_str(text).map_err(|e| TuneError::Json {
            path: path.to_path_buf(),
            msg: e.to_string(),
        })?;
        if !value.is_object() {
            return Err(TuneError::Json {
                path: path.to_path_buf(),
                msg: "top level is not an object".into(),
            });
        }
        Ok(Self {
            path: path.to_path_buf(),
            prefix: String::new(),
            value,
        })
    }

    pub fn from_value(path: &Path, value: Value) -> Self {
        Self {
            path: path.to_path_buf(),
            prefix: String::new(),
            value,
        }
    }

    pub fn value(&self) -> &Value {
        &self.value
    }

    fn full(&self, field: &str) -> String {
        if self.prefix.is_empty() {
            field.to_string()
        } else {
            format!("{}.{field}", self.prefix)
        }
    }

    pub fn field_error(&self, field: &str, problem: impl Into<String>) -> TuneError {
        TuneError::ConfigField {
            path: self.path.clone(),
            field: self.full(field),
            problem: problem.into(),
        }
    }

    pub fn get(&self, field: &str) -> Option<&Value> {
        self.value.get(field).filter(|v| !v.is_null())
    }

    pub fn has(&self, field: &str) -> bool {
        self.get(field).is_some()
    }

    /// A nested object, e.g. `text_config`; errors keep the dotted path.
    pub fn sub(&self, field: &str) -> Result<JsonConfig> {
        match self.get(field) {
            Some(v) if v.is_object() => Ok(JsonConfig {
                path: self.path.clone(),
                prefix: self.full(field),
                value: v.clone(),
            }),
            Some(_) => Err(self.field_error(field, "expected an object")),
            None => Err(self.field_error(field, "missing")),
        }
    }

    /// A copy with `field` set to `value` where it is absent (for sub-configs whose parent fills
    /// a field in, as pi0 does for its expert's `vocab_size`); errors keep this object's path.
    pub fn with_default(&self, field: &str, value: Value) -> JsonConfig {
        let mut out = self.clone();
        if !out.has(field) {
            if let Some(obj) = out.value.as_object_mut() {
                obj.insert(field.to_string(), value);
            }
        }
        out
    }

    pub fn opt_sub(&self, field: &str) -> Result<Option<JsonConfig>> {
        if self.has(field) {
            self.sub(field).map(Some)
        } else {
            Ok(None)
        }
    }

    pub fn usize(&self, field: &str) -> Result<usize> {
        match self.get(field) {
            Some(v) => v.as_u64().map(|x| x as usize).ok_or_else(|| {
                self.field_error(field, format!("expected a non-negative integer, got {v}"))
            }),
            None => Err(self.field_error(field, "missing")),
        }
    }

    pub fn opt_usize(&self, field: &str) -> Result<Option<usize>> {
        if self.has(field) {
            self.usize(field).map(Some)
        } else {
            Ok(None)
        }
    }

    pub fn f64(&self, field: &str) -> Result<f64> {
        match self.get(field) {
            Some(v) => v
                .as_f64()
                .ok_or_else(|| self.field_error(field, format!("expected a number, got {v}"))),
            None => Err(self.field_error(field, "missing")),
        }
    }

    pub fn opt_f64(&self, field: &str) -> Result<Option<f64>> {
        if self.has(field) {
            self.f64(field).map(Some)
        } else {
            Ok(None)
        }
    }

    pub fn opt_bool(&self, field: &str) -> Result<Option<bool>> {
        match self.get(field) {
            Some(v) => v
                .as_bool()
                .map(Some)
                .ok_or_else(|| self.field_error(field, format!("expected true/false, got {v}"))),
            None => Ok(None),
        }
    }

    pub fn opt_str(&self, field: &str) -> Result<Option<String>> {
        match self.get(field) {
            Some(v) => v
                .as_str()
                .map(|s| Some(s.to_string()))
                .ok_or_else(|| self.field_error(field, format!("expected a string, got {v}"))),
            None => Ok(None),
        }
    }

    pub fn str(&self, field: &str) -> Result<String> {
        self.opt_str(field)?
            .ok_or_else(|| self.field_error(field, "missing"))
    }
}
