//! Steering dictionaries: named clusters of flat neuron ids (`layer * d_ff + neuron`), the
//! paper's form (`dictionaries.yaml`: cluster name -> neuron ids), as TOML:
//!
//! ```toml
//! [meta]                 # optional; d_ff / num_layers are checked against the model
//! model = "fixtures/hf-tiny/llama"
//! d_ff = 176
//! num_layers = 2
//! layers = [0, 2]        # the range the clusters were picked from, end exclusive
//! top_k = 10
//! seed = 0
//!
//! [clusters]
//! fast = [188, 201, 17]  # flat ids
//! # the paper's annotated form is accepted too: flat id (as a string) -> its top tokens
//! up = { "237682" = ["up", "Up"], "302720" = ["raised", "raise"] }
//!
//! [controls]             # random clusters of the same sizes and layers
//! random_fast = [5, 99, 301]
//! ```

use std::collections::BTreeMap;
use std::path::Path;

use crate::error::{io_err, Result, SteerError};

#[derive(Debug, Clone, Default, PartialEq)]
pub struct DictMeta {
    pub model: Option<String>,
    pub d_ff: Option<usize>,
    pub num_layers: Option<usize>,
    pub layers: Option<(usize, usize)>,
    pub top_k: Option<usize>,
    pub seed: Option<u64>,
}

#[derive(Debug, Clone, Default, PartialEq)]
pub struct Dictionary {
    pub meta: DictMeta,
    /// Concept clusters by name, each a list of flat ids.
    pub clusters: BTreeMap<String, Vec<usize>>,
    /// Random control clusters by name.
    pub controls: BTreeMap<String, Vec<usize>>,
}

impl Dictionary {
    /// A cluster or control by name.
    pub fn get(&self, name: &str) -> Option<&Vec<usize>> {
        self.clusters.get(name).or_else(|| self.controls.get(name))
    }

    /// Every cluster then every control, by name.
    pub fn all(&self) -> impl Iterator<Item = (&String, &Vec<usize>)> {
        self.clusters.iter().chain(self.controls.iter())
    }

    pub fn load(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(io_err(path))?;
        Self::parse(path, &text)
    }

    pub fn parse(path: &Path, text: &str) -> Result<Self> {
        let table: toml::Table = text
            .parse()
            .map_err(|e: toml::de::Error| SteerError::Parse {
                path: path.to_path_buf(),
                format: "TOML",
                msg: e.to_string(),
            })?;
        let field = |f: &str, p: String| SteerError::Field {
            path: path.to_path_buf(),
            field: f.to_string(),
            problem: p,
        };
        for k in table.keys() {
            if !["meta", "clusters", "controls"].contains(&k.as_str()) {
                return Err(field(
                    k,
                    "unknown top-level key (expected [meta], [clusters], [controls])".into(),
                ));
            }
        }
        let mut d = Dictionary::default();
        if let Some(m) = table.get("meta") {
            let m = m
                .as_table()
                .ok_or_else(|| field("meta", "expected a table".into()))?;
            let uint = |k: &str| -> Result<Option<usize>> {
                match m.get(k) {
                    None => Ok(None),
                    Some(v) => v
                        .as_integer()
                        .filter(|i| *i >= 0)
                        .map(|i| Some(i as usize))
                        .ok_or_else(|| {
                            field(
                                &format!("meta.{k}"),
                                "expected a non-negative integer".into(),
                            )
                        }),
                }
            };
            d.meta.d_ff = uint("d_ff")?;
            d.meta.num_layers = uint("num_layers")?;
            d.meta.top_k = uint("top_k")?;
            d.meta.seed = uint("seed")?.map(|s| s as u64);
            d.meta.model = match m.get("model") {
                None => None,
                Some(v) => Some(
                    v.as_str()
                        .ok_or_else(|| field("meta.model", "expected a string".into()))?
                        .to_string(),
                ),
            };
            d.meta.layers = match m.get("layers") {
                None => None,
                Some(v) => {
                    let bad = || {
                        field(
                            "meta.layers",
                            "expected [start, end] (end exclusive)".into(),
                        )
                    };
                    let a = v.as_array().ok_or_else(bad)?;
                    let ints: Vec<i64> = a.iter().filter_map(|x| x.as_integer()).collect();
                    match ints[..] {
                        [s, e] if a.len() == 2 && 0 <= s && s < e => Some((s as usize, e as usize)),
                        _ => return Err(bad()),
                    }
                }
            };
        }
        for (section, dest) in [("clusters", &mut d.clusters), ("controls", &mut d.controls)] {
            let Some(t) = table.get(section) else {
                continue;
            };
            let t = t
                .as_table()
                .ok_or_else(|| field(section, "expected a table of name = [flat ids]".into()))?;
            for (name, v) in t {
                let f = format!("{section}.{name}");
                dest.insert(name.clone(), parse_ids(v, &f, &field)?);
            }
        }
        for name in d.clusters.keys() {
            if d.controls.contains_key(name) {
                return Err(field(
                    &format!("controls.{name}"),
                    "same name as a cluster".into(),
                ));
            }
        }
        Ok(d)
    }

    /// Checks every id against a model's shape; names the file and the cluster on error.
    pub fn check(&self, path: &Path, num_layers: usize, d_ff: usize) -> Result<()> {
        let field = |f: String, p: String| SteerError::Field {
            path: path.to_path_buf(),
            field: f,
            problem: p,
        };
        if let Some(m) = self.meta.d_ff.filter(|&m| m != d_ff) {
            return Err(field(
                "meta.d_ff".into(),
                format!("{m}, but the model has {d_ff} FFN neurons per layer"),
            ));
        }
        if let Some(m) = self.meta.num_layers.filter(|&m| m != num_layers) {
            return Err(field(
                "meta.num_layers".into(),
                format!("{m}, but the model has {num_layers} decoder layers"),
            ));
        }
        for (name, ids) in self.all() {
            if let Some(bad) = ids.iter().find(|&&i| i >= num_layers * d_ff) {
                return Err(field(
                    format!("clusters.{name}"),
                    format!(
                        "neuron {bad} (layer {}) is beyond the model's {num_layers} layers x {d_ff} neurons",
                        bad / d_ff.max(1)
                    ),
                ));
            }
        }
        Ok(())
    }

    /// TOML text; `annotate(flat)` may give a comment written after each id (its top tokens).
    pub fn to_toml(&self, annotate: &dyn Fn(usize) -> Option<String>) -> String {
        let mut s = String::from(
            "# Steering dictionary (rudder-steering): cluster name -> flat FFN neuron ids\n\
             # (layer * d_ff + neuron). Set with `rudder steer bench --clusters FILE --set NAME=ALPHA`.\n\n",
        );
        let m = &self.meta;
        let mut meta = String::new();
        if let Some(x) = &m.model {
            meta.push_str(&format!("model = {}\n", toml_str(x)));
        }
        if let Some(x) = m.d_ff {
            meta.push_str(&format!("d_ff = {x}\n"));
        }
        if let Some(x) = m.num_layers {
            meta.push_str(&format!("num_layers = {x}\n"));
        }
        if let Some((a, b)) = m.layers {
            meta.push_str(&format!("layers = [{a}, {b}]\n"));
        }
        if let Some(x) = m.top_k {
            meta.push_str(&format!("top_k = {x}\n"));
        }
        if let Some(x) = m.seed {
            meta.push_str(&format!("seed = {x}\n"));
        }
        if !meta.is_empty() {
            s.push_str("[meta]\n");
            s.push_str(&meta);
            s.push('\n');
        }
        for (section, map) in [("clusters", &self.clusters), ("controls", &self.controls)] {
            s.push_str(&format!("[{section}]\n"));
            for (name, ids) in map {
                s.push_str(&format!("{} = [\n", toml_key(name)));
                for &i in ids {
                    match annotate(i) {
                        Some(c) => {
                            s.push_str(&format!("  {i}, # {}\n", c.replace(['\n', '\r'], " ")))
                        }
                        None => s.push_str(&format!("  {i},\n")),
                    }
                }
                s.push_str("]\n");
            }
            s.push('\n');
        }
        s
    }

    /// Writes [`Dictionary::to_toml`] to `path` atomically.
    pub fn save(&self, path: &Path, annotate: &dyn Fn(usize) -> Option<String>) -> Result<()> {
        rudder_tune::checkpoint::write_atomic(path, self.to_toml(annotate).as_bytes())?;
        Ok(())
    }
}

fn parse_ids(
    v: &toml::Value,
    f: &str,
    field: &dyn Fn(&str, String) -> SteerError,
) -> Result<Vec<usize>> {
    match v {
        toml::Value::Array(a) => a
            .iter()
            .enumerate()
            .map(|(j, x)| {
                x.as_integer()
                    .filter(|i| *i >= 0)
                    .map(|i| i as usize)
                    .ok_or_else(|| {
                        field(
                            &format!("{f}[{j}]"),
                            format!("expected a non-negative integer neuron id, got {x}"),
                        )
                    })
            })
            .collect(),
        toml::Value::Table(t) => t
            .keys()
            .map(|k| {
                k.trim().parse::<usize>().map_err(|_| {
                    field(
                        &format!("{f}.{k}"),
                        "expected a flat neuron id as the key".into(),
                    )
                })
            })
            .collect(),
        other => Err(field(
            f,
            format!(
                "expected a list of flat neuron ids, got {}",
                other.type_str()
            ),
        )),
    }
}

fn toml_str(s: &str) -> String {
    toml::Value::String(s.to_string()).to_string()
}

fn toml_key(s: &str) -> String {
    if !s.is_empty()
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
    {
        s.to_string()
    } else {
        toml_str(s)
    }
}
